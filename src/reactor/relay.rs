//! The descriptor-level relay (EventMachine's `proxy_incoming_to`): bytes read from a
//! source connection go straight to a target connection, with no handler call per chunk.
//!
//! On Linux, when the target has nothing queued in user space, the source is spliced into
//! a kernel pipe owned by the target and the pipe into the target's socket: zero copies.
//! Otherwise (or with [`Reactor::set_splice`] off) bytes are read into a reactor buffer
//! and queued like `send_data`. A copying relay stops reading the source while the target
//! holds `bufsize` bytes or more; a splicing one once the pipe is full (`bufsize`, kept
//! within 256 KiB – 1 MiB: kernel pages moved from the source's socket, not process
//! memory). Either way the target's writes wake the source once it is back
//! under `bufsize`. A source's FIN becomes the target's FIN (half-close passes
//! through); a length-limited relay stops after exactly `length` bytes and calls
//! `proxy_completed`.
//!
//! The relay starts by copying and splices once a copy fills what it asked for (a bulk
//! transfer); a splice that finds the source short, under 16 KiB, turns it back to
//! copying (small messages). Splicing saves the proxy both copies, but the reader gets
//! the writer's pages as they are: when it shares the proxy's core, its own copy of
//! them (written on another core, megabytes of queue earlier) costs it more than a
//! copying proxy's fresh, cache-warm write would, so the gain in throughput there is
//! smaller than the gain in the proxy's CPU, and on a busy host a loss. Under
//! [`RelayMode::Auto`](super::RelayMode::Auto) a long relay therefore times both paths
//! on its own stream and keeps the faster (`path_trial.rs`).

use std::io::{self, Read};

use super::Reactor;
use super::path_trial::{Path, PathTrial};
use crate::buffer::PageAligned;
use crate::id::ConnId;
use crate::sys::socket::Stream;
use crate::sys::splice::{SPLICE_SUPPORTED, SplicePipe};
use crate::sys::{Io, classify};

/// Bytes in a GiB, for rates in the log.
const GIB: f64 = (1u64 << 30) as f64;
/// Bytes moved per relay step: larger than a handler read, since no handler sees them.
const RELAY_CHUNK: usize = 64 * 1024;
/// A splice that moves less than this, though the pipe had room for more, turns the
/// relay back to copying: for small messages two splices cost more than one read and
/// one write.
const SPLICE_WORTHWHILE: usize = 16 * 1024;

/// What the reactor keeps for all relays: whether they may splice, and the scratch
/// buffer of the copying path.
pub(crate) struct Relays {
    /// Off with `set_splice(false)`, where the platform lacks splice, or once a pipe
    /// could not be made.
    splice_enabled: bool,
    /// Scratch for the copying path, starting on a page boundary (see `PageAligned`);
    /// allocated on first use.
    copy_buf: PageAligned,
    /// Whether long relays time splicing against copying and keep the faster
    /// ([`RelayMode::Auto`](super::RelayMode::Auto), see `path_trial.rs`); otherwise
    /// bulk transfers always splice.
    pub(crate) timed: bool,
}

impl Default for Relays {
    fn default() -> Self {
        Relays {
            splice_enabled: SPLICE_SUPPORTED,
            copy_buf: PageAligned::default(),
            timed: false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RelayState {
    pub(crate) target: ConnId,
    pub(crate) bufsize: usize,
    /// `Some` for a length-limited relay: bytes still to move.
    pub(crate) remaining: Option<u64>,
    /// Adaptive path choice: a relay starts by copying and switches to splicing when a
    /// copy fills a whole chunk (a bulk transfer), and back when splices come up small.
    pub(crate) splicing: bool,
    /// Under [`RelayMode::Auto`](super::RelayMode::Auto): whether bulk goes by splice
    /// or copy, timed on this relay's own stream.
    pub(crate) path: PathTrial,
}

impl Reactor {
    /// Relays everything `source` receives to `target` without calling its
    /// `receive_data`; `source` is not read while `target` has `bufsize` or more bytes
    /// pending (a splicing relay: while its pipe is full, see the module docs). Returns
    /// `false` if either is gone, they are the same connection, or another source
    /// already relays into `target` (one source per target).
    pub fn proxy_incoming_to(&mut self, source: ConnId, target: ConnId, bufsize: usize) -> bool {
        self.start_relay(source, target, bufsize, None)
    }

    /// Relays exactly `length` bytes from `source` to `target`, then calls
    /// `proxy_completed` on `source`; later bytes reach its `receive_data`.
    pub fn proxy_incoming_to_length(
        &mut self,
        source: ConnId,
        target: ConnId,
        bufsize: usize,
        length: u64,
    ) -> bool {
        self.start_relay(source, target, bufsize, Some(length))
    }

    /// Ends `source`'s relay; its input reaches `receive_data` again.
    pub fn stop_proxying(&mut self, source: ConnId) {
        let Some(relay) = self.conn_mut(source).and_then(|c| c.relay.take()) else {
            return;
        };
        if let Some(target) = self.conn_mut(relay.target)
            && target.relayed_from == Some(source)
        {
            target.relayed_from = None;
        }
        self.schedule_read(source);
    }

    /// Bytes `source` has relayed so far (across all its relays); also answers inside
    /// `source`'s own `unbind`.
    pub fn proxied_bytes(&self, source: ConnId) -> u64 {
        match self.conn(source) {
            Some(c) => c.proxied_bytes,
            None => match self.unbinding {
                Some((id, bytes)) if id == source => bytes,
                _ => 0,
            },
        }
    }

    /// Whether relays may use `splice(2)` (default: on, where the platform has it).
    pub fn set_splice(&mut self, on: bool) {
        self.relays.splice_enabled = on && SPLICE_SUPPORTED;
    }

    fn start_relay(
        &mut self,
        source: ConnId,
        target: ConnId,
        bufsize: usize,
        length: Option<u64>,
    ) -> bool {
        if source == target || self.conn(target).is_none() || self.conn(source).is_none() {
            return false;
        }
        if self.is_tls(source) || self.is_tls(target) {
            return false; // its bytes must pass through rustls
        }
        // One source per target: a second would steal the first one's wake-ups.
        if let Some(existing) = self.conn(target).and_then(|t| t.relayed_from)
            && existing != source
            && self
                .conn(existing)
                .and_then(|c| c.relay)
                .is_some_and(|r| r.target == target)
        {
            return false;
        }
        if let Some(old) = self.conn(source).and_then(|c| c.relay)
            && let Some(t) = self.conn_mut(old.target)
        {
            t.relayed_from = None;
        }
        if let Some(src) = self.conn_mut(source) {
            src.relay = Some(RelayState {
                target,
                bufsize: bufsize.max(1),
                remaining: length,
                splicing: false,
                path: PathTrial::default(),
            });
        }
        if let Some(tgt) = self.conn_mut(target) {
            tgt.relayed_from = Some(source);
        }
        if length == Some(0) {
            // Nothing to move: complete on the next tick, outside the caller's callback.
            self.next_tick(move |r| r.finish_length_relay(source));
        }
        self.schedule_read(source);
        self.kernel_relay_idle(source, false);
        true
    }

    /// The target's pending bytes fell to `pending`: let its source read again if room.
    pub(crate) fn wake_relay_source(&mut self, source: ConnId, pending: usize) {
        if pending == 0 {
            self.kernel_relay_target_emptied(source);
        }
        if let Some(src) = self.conn(source)
            && let Some(relay) = src.relay
            && src.unread
            && pending < relay.bufsize
        {
            self.carry_over.add(source.slot, source.serial);
        }
    }

    /// Moves bytes from relay source `id` to its target, up to the per-event budget.
    pub(crate) fn relay_some(&mut self, id: ConnId) {
        if self.kernel_relay_step(id) {
            return; // the kernel has this direction (see kernel_relay.rs)
        }
        let now = self.now;
        let budget = self.conn(id).map_or(0, |c| c.reads_per_event);
        for _ in 0..budget {
            let Some(src) = self.conn(id) else { return };
            if !src.unread || !src.may_read() {
                return;
            }
            let Some(relay) = src.relay else {
                // A length relay just completed: the rest goes to receive_data.
                self.read_some(id);
                return;
            };
            let hangup = src.hangup;
            let Some(src_fd) = src.stream.as_ref().map(|s| s.read_fd()) else {
                return;
            };
            let Some(tgt) = self.conn(relay.target) else {
                return;
            };
            if !tgt.life.accepts_output() {
                // The target can take nothing more; its unbind will end the relay.
                return;
            }
            let mut want = relay.bufsize.saturating_sub(tgt.pending_out());
            let timed = self.relays.timed;
            let splice = self.relays.splice_enabled
                && relay.splicing
                && (!timed || relay.path.path() == Path::Splice)
                && self.may_splice_from(id)
                && tgt.life.is_connected()
                && tgt.outbound.is_empty()
                && tgt.file_streams.is_empty()
                && self.ensure_pipe(relay.target, relay.bufsize);
            if splice {
                let pipe = self.conn(relay.target).and_then(|t| t.pipe.as_ref());
                // A splicing relay fills its whole pipe, past bufsize if the pipe is
                // bigger: it holds the source's own kernel pages, not ours. The source
                // is woken again only below bufsize (`wake_relay_source`), so a slow
                // target is refilled in large steps rather than a few KiB at a time.
                want = pipe.map_or(0, SplicePipe::room);
            } else {
                want = want.min(RELAY_CHUNK);
            }
            if let Some(remaining) = relay.remaining {
                want = want.min(usize::try_from(remaining).unwrap_or(usize::MAX));
            }
            if want == 0 {
                return; // target full: its writes wake us (wake_relay_source)
            }
            let moved = classify(if splice {
                let pipe = self
                    .conn_mut(relay.target)
                    .and_then(|t| t.pipe.as_mut())
                    .expect("ensure_pipe made the pipe");
                pipe.fill_from(src_fd, want)
            } else {
                self.read_for_relay(id, want)
            });
            if splice
                && matches!(moved, Io::Eof | Io::Drained | Io::Failed(_))
                && self.stops_at_urgent_mark(id)
            {
                continue; // the next step copies, which steps over the mark
            }
            match moved {
                Io::Eof if !self.kernel_relay_end_is_real(id) => {
                    if let Some(src) = self.conn_mut(id) {
                        src.unread = false;
                    }
                    return; // bytes the kernel kept are still to come
                }
                Io::Eof => {
                    if let Some(src) = self.conn_mut(id) {
                        src.unread = false;
                    }
                    self.on_peer_eof(id);
                    return;
                }
                Io::Progress(n) => {
                    let src = self.conn_mut(id).expect("source checked above");
                    src.last_activity = now;
                    src.proxied_bytes += n as u64;
                    // A short splice proves nothing (the pipe may have run out of
                    // buffer slots before bytes), so only a copy ends the drain early.
                    if n < want && !hangup && !splice {
                        src.unread = false;
                    }
                    let mut completed = false;
                    if let Some(relay) = src.relay.as_mut() {
                        // Small messages are told by a step that found the source short:
                        // a splice that filled all the room the pipe had says the target
                        // is slow, not that the messages are small (it used to turn the
                        // relay to copying about 400 times per GiB of a bulk stream).
                        relay.splicing = if splice {
                            n >= SPLICE_WORTHWHILE || n == want
                        } else {
                            n == want && n >= SPLICE_WORTHWHILE
                        };
                        if timed && let Some(verdict) = relay.path.record(n as u64, now) {
                            log::debug!(
                                "relay {}: splicing moved {:.2} GiB/s, copying {:.2}: {:?} it is",
                                id.slot,
                                verdict.splice_rate / GIB,
                                verdict.copy_rate / GIB,
                                verdict.path
                            );
                        }
                        if let Some(remaining) = relay.remaining.as_mut() {
                            *remaining -= n as u64;
                            completed = *remaining == 0;
                        }
                    }
                    if splice {
                        self.flush(relay.target);
                    } else {
                        let buf = std::mem::take(&mut self.relays.copy_buf);
                        self.enqueue(relay.target, &buf[..n]);
                        self.relays.copy_buf = buf;
                    }
                    if completed {
                        self.finish_length_relay(id);
                        self.schedule_read(id);
                        return;
                    }
                }
                Io::Drained => {
                    // With bytes still in the pipe, EAGAIN may mean "pipe full" rather
                    // than "source empty": stay unread; draining the pipe wakes us.
                    let pipe_busy = splice
                        && self
                            .conn(relay.target)
                            .and_then(|t| t.pipe.as_ref())
                            .is_some_and(|p| p.len > 0);
                    if !pipe_busy && let Some(src) = self.conn_mut(id) {
                        src.unread = false;
                        self.kernel_relay_drained(id);
                    }
                    return;
                }
                Io::Retry => {}
                Io::Failed(e) => {
                    self.io_failed(id, &e);
                    return;
                }
            }
        }
        self.schedule_read(id);
    }

    /// A splice that moved nothing may have stopped at a TCP urgent mark: splice never
    /// steps over one (it even calls the stream ended once the FIN is in, losing what
    /// follows the mark), a read does. If so, turns the relay to copying.
    fn stops_at_urgent_mark(&mut self, id: ConnId) -> bool {
        let Some(src) = self.conn_mut(id) else {
            return false;
        };
        let Some(fd) = src.stream.as_ref().map(Stream::read_fd) else {
            return false;
        };
        if !crate::sys::socket::at_urgent_mark(fd) {
            return false;
        }
        if let Some(relay) = src.relay.as_mut() {
            relay.splicing = false;
        }
        true
    }

    /// Reads up to `want` bytes of source `id` into the relay buffer.
    fn read_for_relay(&mut self, id: ConnId, want: usize) -> io::Result<usize> {
        if self.relays.copy_buf.len() < RELAY_CHUNK {
            self.relays.copy_buf = PageAligned::new(RELAY_CHUNK);
        }
        let Reactor {
            descriptors,
            relays,
            ..
        } = self;
        match descriptors.get_mut(id.slot) {
            Some(super::Descriptor::Conn(c)) => match c.stream.as_mut() {
                Some(stream) => stream.read(&mut relays.copy_buf[..want]),
                None => Ok(0),
            },
            _ => Ok(0),
        }
    }

    /// Gives `target` a splice pipe if it has none. `false` if one cannot be made (then
    /// splicing is turned off for this reactor and relays copy), or if the one it has is
    /// too small to be worth splicing through (relays into it copy).
    fn ensure_pipe(&mut self, target: ConnId, size: usize) -> bool {
        let Some(tgt) = self.conn_mut(target) else {
            return false;
        };
        if let Some(pipe) = tgt.pipe.as_ref() {
            return pipe.capacity >= SPLICE_WORTHWHILE;
        }
        match SplicePipe::new(size) {
            Ok(pipe) => {
                // Past the user's pipe quota the kernel hands out pipes of a page or
                // two: kept (so no new one is tried per step), never spliced through.
                let usable = pipe.capacity >= SPLICE_WORTHWHILE;
                tgt.pipe = Some(pipe);
                usable
            }
            Err(_) => {
                self.relays.splice_enabled = false;
                false
            }
        }
    }

    /// A length relay moved its last byte (or had none to move).
    fn finish_length_relay(&mut self, source: ConnId) {
        let Some(relay) = self.conn_mut(source).and_then(|c| c.relay.take()) else {
            return;
        };
        if let Some(tgt) = self.conn_mut(relay.target)
            && tgt.relayed_from == Some(source)
        {
            tgt.relayed_from = None;
        }
        self.notify(source, |h, cx| h.proxy_completed(cx));
    }

    /// A reaped connection was a relay source (`target`) and/or target (`source`).
    pub(crate) fn relay_endpoint_gone(
        &mut self,
        gone: ConnId,
        target: Option<ConnId>,
        source: Option<ConnId>,
    ) {
        if let Some(target) = target
            && let Some(tgt) = self.conn_mut(target)
            && tgt.relayed_from == Some(gone)
        {
            tgt.relayed_from = None;
        }
        if let Some(source) = source
            && let Some(src) = self.conn_mut(source)
            && src.relay.is_some_and(|r| r.target == gone)
        {
            src.relay = None;
            self.notify(source, |h, cx| h.proxy_target_unbound(cx));
            self.schedule_read(source);
        }
    }
}
