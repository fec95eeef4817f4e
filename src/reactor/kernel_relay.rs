//! The in-kernel relay: two connections that relay to each other (each the other's
//! `proxy_incoming_to` target) are handed to a BPF sockmap (`sys::sockmap`), and from
//! then on the kernel moves their bytes; this process reads and writes none of them.
//!
//! The reactor still owns both sockets. Each direction of a linked pair is in one of
//! these states ([`Flow`]):
//!
//! - **Redirecting**: the kernel sends what the source receives out of its target. The
//!   source's readable interest is off (the kernel would wake us after every buffer);
//!   its peer's FIN, errors, and the program's signals still wake the reactor.
//! - **Passing**: the source went past its hard limit; the program keeps its bytes
//!   with it from then on, for good (they wait in the sockmap's own queue of the
//!   socket, charged to its receive buffer, so TCP throttles the sender). The reactor
//!   waits until every byte the kernel redirected has been taken by the target's socket
//!   (its sent-byte count, from `TCP_INFO` and `SIOCOUTQ`, reaches the program's count).
//! - **Held**: the peer sent its FIN; the source was taken out of the redirecting map
//!   (safe only now: detaching the program while bytes arrive can lose one buffer, as
//!   the kernel clears the program before it restores the socket's own callback). It
//!   waits like Passing.
//! - **Copying**: the ordinary relay (`relay.rs`) reads the source and writes the
//!   target, which passes an EOF on as a FIN. A direction that left the kernel never
//!   goes back: the handover is safe only one way.
//!
//! Memory stays bounded: the kernel queues redirected bytes for the target's kernel
//! worker without any limit, so a target that stops reading would let one client fill
//! the machine (measured: 2 GB in two seconds). The program counts each source's bytes
//! against two limits the reactor sets. Past the soft one it signals through a ring
//! buffer; the reactor compares with what left the target and, if the target keeps up,
//! moves both limits on by [`KERNEL_BUDGET`]. If not, it leaves them: past the hard one
//! the direction is Passing, then Copying, throttled by the relay's own bound. So a
//! stalled target holds at most two budgets in the kernel plus the socket buffers.
//!
//! Relayed bytes count in `proxied_bytes` when a direction leaves the kernel (always
//! before its `unbind`). The inactivity and half-close timers ask `TCP_INFO` when the
//! kernel last moved a byte for a linked connection.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use std::os::fd::AsRawFd;

use super::{KERNEL_RELAY_TOKEN, Reactor};
use crate::id::{ConnId, TimerId};
use crate::sys::sockmap::{self, Limits, Paired, Redirector};

/// Bytes one direction may redirect before the reactor looks again (its soft limit
/// moves on by this much; the hard one stays one budget further). At 1 GB/s, a look
/// every 4 ms.
pub const KERNEL_BUDGET: u64 = 4 * 1024 * 1024;
/// Sockets the kernel relay's maps have room for, per reactor; past it, relays copy.
const KERNEL_CAPACITY: u32 = 65_536;
/// First and longest wait between checks that a held direction's bytes left the target.
const DRAIN_FIRST_WAIT: Duration = Duration::from_millis(1);
const DRAIN_LONGEST_WAIT: Duration = Duration::from_millis(50);

/// How relays move bytes ([`Reactor::set_relay_mode`]; `--relay-mode` of the binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// The best measured mode: adaptive splice, with each long relay timing splicing
    /// against copying on its own stream and keeping the faster (splicing unless
    /// copying is clearly faster; see `path_trial.rs`). The kernel relay takes the
    /// bytes out of the process, but the kernel sends each buffer it redirects from a
    /// worker thread woken for it, which under load costs the machine more CPU per
    /// small request than the reactor's own relay, and moves bulk slower than splice
    /// (docs/benchmarks.md, "The in-kernel relay").
    Auto,
    /// The in-kernel relay (BPF sockmap) for connection pairs relaying to each other;
    /// splice or copying for the rest. Falls back to splice where unavailable.
    Kernel,
    /// Adaptive splice: copy small messages, always splice bulk transfers (the
    /// default).
    #[default]
    Splice,
    /// Always copy through a reactor buffer.
    Copy,
}

impl FromStr for RelayMode {
    type Err = String;

    fn from_str(text: &str) -> Result<RelayMode, String> {
        match text {
            "auto" => Ok(RelayMode::Auto),
            "kernel" => Ok(RelayMode::Kernel),
            "splice" => Ok(RelayMode::Splice),
            "copy" => Ok(RelayMode::Copy),
            other => Err(format!(
                "unknown relay mode `{other}` (expected auto, kernel, splice or copy)"
            )),
        }
    }
}

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayMode::Auto => "auto",
            RelayMode::Kernel => "kernel",
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
        })
    }
}

/// The reactor's kernel relay: the maps and program, once opened.
pub(crate) struct KernelRelays {
    redirector: Option<Redirector>,
    /// Linked connections by socket cookie (the program's signals name cookies).
    by_cookie: std::collections::HashMap<u64, ConnId>,
    /// Scratch for the signals of one wake-up.
    signals: Vec<u64>,
    /// Linked sockets now (two per pair).
    linked: usize,
    /// `set_relay_mode(Kernel)` was asked for (and is on if `redirector` opened).
    wanted: bool,
    /// Whether the mode chosen allows splicing (what `relay_mode` reports without the
    /// kernel relay).
    splice: bool,
}

impl Default for KernelRelays {
    fn default() -> Self {
        KernelRelays {
            redirector: None,
            by_cookie: std::collections::HashMap::new(),
            signals: Vec::new(),
            linked: 0,
            wanted: false,
            splice: crate::sys::splice::SPLICE_SUPPORTED,
        }
    }
}

/// One linked socket's side of a pair.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelSide {
    me: Paired,
    peer: ConnId,
    /// What happens to this socket's input.
    flow: Flow,
    /// The program's count of this socket's redirected bytes when it started
    /// redirecting (the count runs from the link on).
    count_at_redirect: u64,
    /// This socket's sent-byte count when its peer started redirecting into it.
    inbound_base: u64,
    /// Bytes the peer redirected into it: known once the peer left the kernel (`None`
    /// while it still redirects); `Some(0)` once they all left through this socket.
    inbound_total: Option<u64>,
    drain_timer: Option<TimerId>,
    drain_wait: Duration,
    /// Its `proxied_bytes` when it started passing: what the relay has read of the
    /// bytes the program kept is the difference.
    proxied_at_pass: u64,
    /// Whether its readable and writable interest are on (see `refresh_interest`).
    watching: (bool, bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Linked, not yet handed over: the ordinary relay moves its input for now.
    Fresh,
    /// The kernel redirects its input.
    Redirecting,
    /// Past its hard limit: its bytes stay with it; waiting for the target to send
    /// what the kernel redirected.
    Passing,
    /// Past its peer's FIN, out of the redirecting map; waiting likewise.
    Held,
    /// The ordinary relay moves its input, for good. `in_map`: still in the
    /// redirecting map (it left by Passing), so its bytes wait in the sockmap's own
    /// queue, which splice cannot see.
    Copying { in_map: bool },
}

impl Reactor {
    /// Chooses how relays move bytes; returns why the mode asked for could not be had,
    /// if it could not (the relay then splices: never a failure). Connections already
    /// linked stay linked.
    pub fn set_relay_mode(&mut self, mode: RelayMode) -> Result<(), String> {
        self.set_splice(mode != RelayMode::Copy);
        self.relays.timed = mode == RelayMode::Auto;
        self.kernel.splice = mode != RelayMode::Copy && crate::sys::splice::SPLICE_SUPPORTED;
        if mode != RelayMode::Kernel {
            self.kernel.wanted = false;
            return Ok(());
        }
        self.kernel.wanted = true;
        if self.kernel.redirector.is_some() {
            return Ok(());
        }
        let opened = Redirector::open(KERNEL_CAPACITY).and_then(|redirector| {
            let fd = redirector.signal_fd();
            self.poll.registry().register(
                &mut mio::unix::SourceFd(&fd),
                KERNEL_RELAY_TOKEN,
                mio::Interest::READABLE,
            )?;
            Ok(redirector)
        });
        match opened {
            Ok(redirector) => {
                self.kernel.redirector = Some(redirector);
                Ok(())
            }
            Err(e) => Err(kernel_refusal(&e)),
        }
    }

    /// The mode relays use now: `Kernel` only if the kernel relay is on.
    pub fn relay_mode(&self) -> RelayMode {
        if self.kernel_relay_on() {
            RelayMode::Kernel
        } else if self.kernel.splice && self.relays.timed {
            RelayMode::Auto
        } else if self.kernel.splice {
            RelayMode::Splice
        } else {
            RelayMode::Copy
        }
    }

    /// Connections linked in the kernel relay now, and entries in its maps. For tests
    /// and leak checks: both fall to zero once every relayed connection has closed.
    pub fn kernel_relay_entries(&self) -> (usize, usize) {
        let entries = self
            .kernel
            .redirector
            .as_ref()
            .map_or(0, Redirector::entries);
        (self.kernel.linked, entries)
    }

    fn kernel_relay_on(&self) -> bool {
        self.kernel.wanted && self.kernel.redirector.is_some()
    }

    /// The program signalled: some directions passed a limit.
    pub(crate) fn kernel_relay_signals(&mut self) {
        let mut signals = std::mem::take(&mut self.kernel.signals);
        if let Some(r) = self.kernel.redirector.as_mut() {
            r.take_signals(&mut signals);
        }
        for cookie in signals.drain(..) {
            if let Some(&source) = self.kernel.by_cookie.get(&cookie) {
                self.limit_reached(source);
            }
        }
        self.kernel.signals = signals;
    }

    /// A direction passed its soft limit (or its hard one). If it went past the hard
    /// one, it leaves the kernel. Else, if its target keeps up, both limits move on;
    /// if not, they stay, and this looks again in a while.
    fn limit_reached(&mut self, source: ConnId) {
        let Some(side) = self.conn(source).and_then(|c| c.kernel) else {
            return;
        };
        if side.flow != Flow::Redirecting {
            return;
        }
        let (Some(redirector), Some(target)) = (
            self.kernel.redirector.as_ref(),
            self.conn(side.peer).and_then(|c| c.kernel),
        ) else {
            return;
        };
        let (count, passing) = redirector.count(&side.me);
        if passing {
            self.leave_kernel(source, Flow::Passing);
            return;
        }
        let redirected = count.saturating_sub(side.count_at_redirect);
        let left_target = sockmap::bytes_written(target.me.fd)
            .map_or(0, |now| now.wrapping_sub(target.inbound_base));
        let keeping_up = redirected.saturating_sub(left_target) < KERNEL_BUDGET;
        if keeping_up {
            let _ = redirector.set_limits(&side.me, limits_from(count));
        } else {
            // The hard limit stays: if the target does not catch up, the direction
            // passes it and leaves the kernel.
            self.add_timer(DRAIN_FIRST_WAIT * 10, move |r| r.limit_reached(source));
        }
    }

    /// Any event on a connection: one whose input the kernel redirects has its readable
    /// interest off, so its peer's FIN arrives as a bare `EPOLLRDHUP` that mio reports
    /// as nothing. `true` if that is what happened (the FIN is then read as usual).
    pub(crate) fn kernel_relay_event(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        match conn.kernel {
            Some(side) if side.flow == Flow::Redirecting && sockmap::peer_finished(side.me.fd) => {
                conn.hangup = true;
                true
            }
            _ => false,
        }
    }

    /// Called by the relay before it reads `source`: `true` if it must not (the kernel
    /// has its input, or is still sending what it took).
    pub(crate) fn kernel_relay_step(&mut self, source: ConnId) -> bool {
        let Some(side) = self.conn(source).and_then(|c| c.kernel) else {
            return false;
        };
        if side.flow == Flow::Redirecting {
            // News while redirecting: the peer's FIN, an error, or bytes the program
            // kept with the socket (past its hard limit, or its peer gone).
            let hangup = self.conn(source).is_some_and(|c| c.hangup);
            let kept = crate::sys::socket::bytes_waiting(side.me.fd) > 0;
            if hangup {
                self.leave_kernel(source, Flow::Held);
            } else if kept {
                self.leave_kernel(source, Flow::Passing);
            } else {
                if let Some(c) = self.conn_mut(source) {
                    c.unread = false;
                }
                return true;
            }
        }
        let Some(side) = self.conn(source).and_then(|c| c.kernel) else {
            return false;
        };
        if !matches!(side.flow, Flow::Passing | Flow::Held) {
            return false;
        }
        if !self.inbound_settled(side.peer) {
            self.await_drain(side.peer);
            return true;
        }
        let in_map = side.flow == Flow::Passing;
        self.set_flow(source, Flow::Copying { in_map });
        false
    }

    /// Called by the relay when a read of `source` found its end: `false` if that is
    /// too early — a passing socket's kept bytes can wait in a queue `recv` does not
    /// see (past the receive buffer) while the FIN is already in: then the relay reads
    /// again shortly.
    pub(crate) fn kernel_relay_end_is_real(&mut self, source: ConnId) -> bool {
        let Some(conn) = self.conn(source) else {
            return true;
        };
        let Some(side) = conn.kernel else {
            return true;
        };
        if side.flow != (Flow::Copying { in_map: true }) {
            return true;
        }
        let kept = self
            .kernel
            .redirector
            .as_ref()
            .map_or(0, |r| r.kept(&side.me));
        if conn.proxied_bytes.saturating_sub(side.proxied_at_pass) >= kept {
            return true;
        }
        self.add_timer(DRAIN_FIRST_WAIT, move |r| {
            if let Some(c) = r.conn_mut(source) {
                c.unread = true;
            }
            r.schedule_read(source);
        });
        false
    }

    /// Called by the relay when `source` read all it had (no buffer of it is half
    /// read): a fresh direction may go to the kernel.
    pub(crate) fn kernel_relay_drained(&mut self, source: ConnId) {
        self.kernel_relay_idle(source, true);
    }

    /// Hands the direction out of `source` (and the pair, on first use) to the kernel
    /// if it may go there: the kernel relay on, both ends connected plain TCP relaying
    /// to each other, the target's queue empty, and no buffer of the source half read
    /// (the kernel would send its read part again): `drained` says a read just found
    /// it empty; else only a source with nothing waiting may go. Called when a relay
    /// starts, a connect completes, or the source drained.
    pub(crate) fn kernel_relay_idle(&mut self, source: ConnId, drained: bool) {
        if !self.kernel_relay_on() {
            return;
        }
        let Some(src) = self.conn(source) else { return };
        let Some(relay) = src.relay else { return };
        let target = relay.target;
        if relay.remaining.is_some() || !plain_tcp(src) {
            return;
        }
        let Some(tgt) = self.conn(target) else { return };
        let mutual = tgt
            .relay
            .is_some_and(|r| r.target == source && r.remaining.is_none());
        if !mutual || !plain_tcp(tgt) || !tgt.life.accepts_output() || tgt.pending_out() > 0 {
            return;
        }
        let (Some(src_fd), Some(tgt_fd)) = (
            src.stream.as_ref().map(|s| s.read_fd()),
            tgt.stream.as_ref().map(|s| s.read_fd()),
        ) else {
            return;
        };
        use crate::sys::socket::bytes_waiting;
        if src.kernel.is_none() {
            if !drained && bytes_waiting(src_fd) > 0 {
                return;
            }
            let target_clean = bytes_waiting(tgt_fd) == 0 && src.pending_out() == 0;
            if !self.link(source, target) {
                return;
            }
            if target_clean {
                self.redirect(target, source);
            }
        } else if !drained {
            // Linked, FIONREAD counts only the sockmap's own queue: it cannot tell
            // whether the relay left a buffer half read. Only a drained read can.
            return;
        }
        if self.conn(source).and_then(|c| c.kernel).map(|s| s.flow) == Some(Flow::Fresh) {
            self.redirect(source, target);
        }
    }

    /// The target of `source` wrote all it had: a fresh direction may go to the kernel.
    /// Not from here (the relay may be in the middle of reading `source`): the relay
    /// reads it once more, and hands it over when it finds nothing.
    pub(crate) fn kernel_relay_target_emptied(&mut self, source: ConnId) {
        if let Some(c) = self.conn_mut(source)
            && c.kernel.is_some_and(|s| s.flow == Flow::Fresh)
        {
            c.unread = true;
            self.schedule_read(source);
        }
    }

    /// A connect completed: a relay pair waiting for it may go to the kernel.
    pub(crate) fn kernel_relay_connected(&mut self, id: ConnId) {
        if !self.kernel_relay_on() {
            return;
        }
        if let Some(target) = self.conn(id).and_then(|c| c.relay).map(|r| r.target) {
            self.kernel_relay_idle(id, false);
            self.kernel_relay_idle(target, false);
        }
    }

    /// Whether the relay may splice from `id`: not while its bytes may wait in the
    /// sockmap's own queue (splice reads only the TCP queue), nor while the kernel has
    /// its input.
    pub(crate) fn may_splice_from(&self, id: ConnId) -> bool {
        self.conn(id)
            .and_then(|c| c.kernel)
            .is_none_or(|s| matches!(s.flow, Flow::Fresh | Flow::Copying { in_map: false }))
    }

    /// Whether every byte the kernel redirected into `target` has left through its
    /// socket. `false` while its source still redirects (then the source is told to
    /// stop at its next buffer: its hard limit drops to what it has counted). `true`
    /// for a connection that is gone or not linked.
    pub(crate) fn inbound_settled(&mut self, target: ConnId) -> bool {
        let Some(side) = self.conn(target).and_then(|c| c.kernel) else {
            return true;
        };
        let expected = match side.inbound_total {
            Some(0) => return true,
            Some(n) => n,
            None => {
                self.stop_redirecting(side.peer);
                return false;
            }
        };
        let sent = match sockmap::bytes_written(side.me.fd) {
            Ok(now) => now.wrapping_sub(side.inbound_base),
            Err(_) => return true, // the socket failed: its unbind is coming
        };
        if sent < expected {
            return false;
        }
        if let Some(s) = self.conn_mut(target).and_then(|c| c.kernel.as_mut()) {
            s.inbound_total = Some(0);
            s.drain_wait = DRAIN_FIRST_WAIT;
        }
        true
    }

    /// Whether `id` may close now: not while bytes the kernel redirected into it and
    /// that are known are still on their way out (a source still redirecting is not
    /// waited for: a close cuts its stream wherever it is, as it would cut bytes in
    /// the socket buffer).
    pub(crate) fn kernel_relay_may_close(&mut self, id: ConnId) -> bool {
        match self.conn(id).and_then(|c| c.kernel) {
            Some(side) if side.inbound_total.is_some() => self.inbound_settled(id),
            _ => true,
        }
    }

    /// A linked connection is being reaped (its socket is closed, which took it out of
    /// the socket maps): counts what it redirected into its `proxied_bytes`, drops the
    /// rest of its entries, and tells its peer how many bytes are still to leave. The
    /// peer keeps its own link (the kernel would drop what is queued for it otherwise);
    /// if it was redirecting, its input comes back to the ordinary relay (what it sends
    /// has nowhere to go now).
    pub(crate) fn kernel_relay_gone(&mut self, conn: &mut super::Connection) {
        let Some(side) = conn.kernel.take() else {
            return;
        };
        if let Some(timer) = side.drain_timer {
            self.timers.cancel(timer);
        }
        self.kernel.by_cookie.remove(&side.me.cookie);
        self.kernel.linked -= 1;
        let count = self.kernel.redirector.as_ref().map(|r| r.forget(&side.me));
        if let (Flow::Redirecting, Some(count)) = (side.flow, count) {
            let moved = count.saturating_sub(side.count_at_redirect);
            conn.proxied_bytes += moved;
            if let Some(s) = self.conn_mut(side.peer).and_then(|c| c.kernel.as_mut()) {
                s.inbound_total = Some(moved);
            }
            self.refresh_interest(side.peer);
        }
        let peer_redirecting = self
            .conn(side.peer)
            .and_then(|c| c.kernel)
            .is_some_and(|s| s.flow == Flow::Redirecting);
        if peer_redirecting {
            self.leave_kernel(side.peer, Flow::Held);
            if let Some(c) = self.conn_mut(side.peer) {
                c.unread = true;
            }
            self.schedule_read(side.peer);
        }
    }

    /// For the idle timers: when the kernel last moved a byte through a linked
    /// connection (its own `last_activity` does not see those bytes).
    pub(crate) fn refresh_kernel_activity(&mut self, id: ConnId) {
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(side) = conn.kernel else { return };
        if let Ok(idle) = sockmap::idle_time(side.me.fd)
            && let Some(moved) = now.checked_sub(idle)
            && moved > conn.last_activity
        {
            conn.last_activity = moved;
        }
    }

    /// Links `a` and `b` in the maps (each direction still with the ordinary relay).
    fn link(&mut self, a: ConnId, b: ConnId) -> bool {
        let fd = |r: &Reactor, id| {
            r.conn(id)
                .and_then(|c| c.stream.as_ref())
                .map(|s| s.read_fd())
        };
        let (Some(fa), Some(fb)) = (fd(self, a), fd(self, b)) else {
            return false;
        };
        let Some(redirector) = self.kernel.redirector.as_ref() else {
            return false;
        };
        let (Ok(pa), Ok(pb)) = (Paired::of(fa), Paired::of(fb)) else {
            return false;
        };
        if redirector.link(&pa, &pb).is_err() {
            return false; // the maps are full, or a socket is past ESTABLISHED: copy
        }
        for (id, me, peer) in [(a, pa, b), (b, pb, a)] {
            self.kernel.by_cookie.insert(me.cookie, id);
            if let Some(c) = self.conn_mut(id) {
                c.kernel = Some(KernelSide {
                    me,
                    peer,
                    flow: Flow::Fresh,
                    count_at_redirect: 0,
                    inbound_base: 0,
                    inbound_total: Some(0),
                    drain_timer: None,
                    drain_wait: DRAIN_FIRST_WAIT,
                    proxied_at_pass: 0,
                    watching: (true, true),
                });
            }
        }
        self.kernel.linked += 2;
        true
    }

    /// Starts the kernel redirecting `source`'s input into `target` (whose queue is
    /// empty). `false` if the kernel refused (a socket past ESTABLISHED, say): the
    /// relay goes on.
    fn redirect(&mut self, source: ConnId, target: ConnId) -> bool {
        let (Some(side), Some(tgt_fd)) = (
            self.conn(source).and_then(|c| c.kernel),
            self.conn(target).and_then(|c| c.kernel).map(|s| s.me.fd),
        ) else {
            return false;
        };
        let Ok(base) = sockmap::bytes_written(tgt_fd) else {
            return false;
        };
        let Some(redirector) = self.kernel.redirector.as_ref() else {
            return false;
        };
        let (count, _) = redirector.count(&side.me);
        if redirector.redirect(&side.me, limits_from(count)).is_err() {
            return false;
        }
        if let Some(s) = self.conn_mut(target).and_then(|c| c.kernel.as_mut()) {
            s.inbound_base = base;
            s.inbound_total = None;
        }
        if let Some(s) = self.conn_mut(source).and_then(|c| c.kernel.as_mut()) {
            s.flow = Flow::Redirecting;
            s.count_at_redirect = count;
        }
        self.refresh_interest(source);
        self.refresh_interest(target);
        true
    }

    /// Sets what wakes the reactor for linked socket `id`: readable only while the
    /// relay, not the kernel, has its input; writable only while someone in this
    /// process may write it — the relay, while its peer's direction is not with the
    /// kernel, or a queue of its own. A socket the kernel both reads and writes then
    /// wakes the reactor only for its peer's FIN, an error or urgent data (each
    /// acknowledgement would otherwise be a wake-up, and a `TCP_INFO` to rule out a
    /// FIN: measured as 25 `getsockopt`s per `epoll_wait` under load).
    fn refresh_interest(&mut self, id: ConnId) {
        let epoll = self.poll.as_raw_fd();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let queued = conn.pending_out() > 0;
        let Some(side) = conn.kernel.as_mut() else {
            return;
        };
        let wanted = (
            side.flow != Flow::Redirecting,
            side.inbound_total.is_some() || queued,
        );
        if wanted != side.watching
            && sockmap::watch(epoll, side.me.fd, id.slot, wanted.0, wanted.1).is_ok()
        {
            side.watching = wanted;
        }
    }

    /// Bytes wait in linked `id`'s own queue: its writable interest must be on (the
    /// kernel may have had it off while only the kernel wrote it).
    pub(crate) fn kernel_output_queued(&mut self, id: ConnId) {
        if self
            .conn(id)
            .and_then(|c| c.kernel)
            .is_some_and(|s| !s.watching.1)
        {
            self.refresh_interest(id);
        }
    }

    /// The kernel no longer takes `source`'s input (`flow` says why: Passing, the
    /// program keeps its bytes; Held, past the peer's FIN, it leaves the redirecting
    /// map): records how much it redirected, and waits for that to leave the target.
    fn leave_kernel(&mut self, source: ConnId, flow: Flow) {
        let Some(side) = self.conn(source).and_then(|c| c.kernel) else {
            return;
        };
        if side.flow != Flow::Redirecting {
            return;
        }
        let Some(redirector) = self.kernel.redirector.as_ref() else {
            return;
        };
        let count = if flow == Flow::Held {
            redirector.hold(&side.me)
        } else {
            redirector.count(&side.me).0
        };
        let moved = count.saturating_sub(side.count_at_redirect);
        if let Some(c) = self.conn_mut(source) {
            c.proxied_bytes += moved;
            let proxied = c.proxied_bytes;
            if let Some(s) = c.kernel.as_mut() {
                s.flow = flow;
                s.count_at_redirect = count;
                s.proxied_at_pass = proxied;
            }
        }
        if let Some(s) = self.conn_mut(side.peer).and_then(|c| c.kernel.as_mut()) {
            s.inbound_total = Some(moved);
        }
        self.refresh_interest(source);
        self.refresh_interest(side.peer);
        if let Some(c) = self.conn_mut(source) {
            c.unread = true;
        }
        self.schedule_read(source);
    }

    /// Makes the program stop redirecting `source` at its next buffer (its hard limit
    /// drops to its count): it then signals, and the direction leaves the kernel.
    fn stop_redirecting(&mut self, source: ConnId) {
        let Some(side) = self.conn(source).and_then(|c| c.kernel) else {
            return;
        };
        if side.flow != Flow::Redirecting {
            return;
        }
        if let Some(redirector) = self.kernel.redirector.as_ref() {
            let (count, _) = redirector.count(&side.me);
            let _ = redirector.set_limits(
                &side.me,
                Limits {
                    soft: count,
                    hard: count,
                },
            );
        }
    }

    fn set_flow(&mut self, id: ConnId, flow: Flow) {
        if let Some(s) = self.conn_mut(id).and_then(|c| c.kernel.as_mut()) {
            s.flow = flow;
        }
    }

    /// Checks again, after a growing wait, whether `target`'s inbound bytes have left.
    pub(crate) fn await_drain(&mut self, target: ConnId) {
        let Some(side) = self.conn(target).and_then(|c| c.kernel) else {
            return;
        };
        if side.drain_timer.is_some() {
            return;
        }
        let wait = side.drain_wait;
        let timer = self.add_timer(wait, move |r| {
            if let Some(s) = r.conn_mut(target).and_then(|c| c.kernel.as_mut()) {
                s.drain_timer = None;
            }
            if r.inbound_settled(target) {
                r.drain_check(target);
            } else {
                r.await_drain(target);
            }
        });
        if let Some(s) = self.conn_mut(target).and_then(|c| c.kernel.as_mut()) {
            s.drain_timer = Some(timer);
            s.drain_wait = (wait * 2).min(DRAIN_LONGEST_WAIT);
        }
    }

    /// `target`'s inbound bytes have all left: its source may go on through the
    /// relay, and the target may write (or close) again.
    fn drain_check(&mut self, target: ConnId) {
        let Some(side) = self.conn(target).and_then(|c| c.kernel) else {
            return;
        };
        if let Some(c) = self.conn_mut(side.peer) {
            c.unread = true;
        }
        self.schedule_read(side.peer);
        self.flush(target);
    }
}

/// The limits for a direction whose program count is `count`.
fn limits_from(count: u64) -> Limits {
    Limits {
        soft: count + KERNEL_BUDGET,
        hard: count + 2 * KERNEL_BUDGET,
    }
}

/// A connection the kernel relay can take: connected TCP without TLS.
fn plain_tcp(conn: &super::Connection) -> bool {
    conn.life.is_connected()
        && conn.tls.is_none()
        && matches!(conn.stream, Some(crate::sys::socket::Stream::Tcp(_)))
}

/// The one line said when the kernel relay cannot be had.
fn kernel_refusal(e: &io::Error) -> String {
    let why = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "the process lacks CAP_BPF and CAP_NET_ADMIN".to_string()
        }
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            format!("this kernel has no BPF sockmap ({e})")
        }
        _ => e.to_string(),
    };
    format!("in-kernel relay unavailable: {why}; relaying with splice/copy")
}
