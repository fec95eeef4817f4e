//! The public per-connection API on [`Reactor`]: opening outbound connections, sending,
//! closing, pausing, socket options and timeouts. Each takes a [`ConnId`]; the same
//! operations on a callback's own connection are on [`Context`](crate::Context).
//! Operations on an id whose connection is gone do nothing and report so.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::lifecycle::Life;
use super::resolver::Lookup;
use super::{Reactor, TimerTask};
use crate::addr::IntoSocketAddr;
use crate::handler::{Handler, UnbindReason};
use crate::id::ConnId;
use crate::sys::socket::{self, Stream};
use crate::timers::deadline;

impl Reactor {
    /// Opens a TCP connection to `remote` (a numeric address; see
    /// [`connect_host`](Self::connect_host) for names). The handler's `post_init` runs at
    /// once, `connection_completed` when the connect finishes; a refused or timed-out
    /// connect ends in `unbind` with [`UnbindReason::Refused`] or
    /// [`UnbindReason::ConnectTimeout`]. `Err` only when no socket could be created.
    pub fn connect<H: Handler>(
        &mut self,
        remote: impl IntoSocketAddr,
        handler: H,
    ) -> io::Result<ConnId> {
        let remote = remote.into_socket_addr()?;
        self.open_outbound(socket::tcp_connect(remote, None), Box::new(handler))
    }

    /// Like [`connect`](Self::connect), but binds the socket to `local` first (a chosen
    /// source address and/or port; port 0 lets the kernel pick).
    pub fn bind_connect<H: Handler>(
        &mut self,
        local: impl IntoSocketAddr,
        remote: impl IntoSocketAddr,
        handler: H,
    ) -> io::Result<ConnId> {
        let local = local.into_socket_addr()?;
        let remote = remote.into_socket_addr()?;
        self.open_outbound(socket::tcp_connect(remote, Some(local)), Box::new(handler))
    }

    /// Connects to the first of `addrs` that accepts, trying them in order: a connect
    /// that fails (refused, unreachable) moves on to the next; `unbind` reports the last
    /// failure. What [`connect_host`](Self::connect_host) does with every address a name
    /// resolves to.
    pub fn connect_any<H: Handler>(&mut self, addrs: &[SocketAddr], handler: H) -> ConnId {
        let id = self
            .adopt(None, Box::new(handler), Life::resolving())
            .expect("adopting a connection without a socket cannot fail");
        self.resolved(id, addrs.to_vec());
        id
    }

    /// Opens a Unix-domain stream connection to the socket at `path`.
    pub fn connect_unix<H: Handler>(
        &mut self,
        path: impl AsRef<Path>,
        handler: H,
    ) -> io::Result<ConnId> {
        self.open_outbound(socket::unix_connect(path.as_ref()), Box::new(handler))
    }

    /// Connects to `host:port`, resolving `host` on the defer pool so the reactor thread
    /// never blocks on DNS. The connection exists at once (data sent now is queued); a
    /// name that does not resolve ends in `unbind` with [`UnbindReason::Unresolvable`].
    /// Every address the name resolves to is tried in turn (IPv6 and IPv4, in the
    /// resolver's order) until one accepts; `unbind` reports the last one's failure.
    pub fn connect_host<H: Handler>(&mut self, host: &str, port: u16, handler: H) -> ConnId {
        self.open_to_host(None, host, port, Box::new(handler))
    }

    /// Like [`connect_host`](Self::connect_host), but each attempt binds its socket to
    /// `local` first (a chosen source address and/or port), and only the addresses of
    /// `local`'s family are tried; a name with none ends in `unbind` with
    /// [`UnbindReason::Unresolvable`].
    pub fn bind_connect_host<H: Handler>(
        &mut self,
        local: SocketAddr,
        host: &str,
        port: u16,
        handler: H,
    ) -> ConnId {
        self.open_to_host(Some(local), host, port, Box::new(handler))
    }

    fn open_to_host(
        &mut self,
        local: Option<SocketAddr>,
        host: &str,
        port: u16,
        handler: Box<dyn Handler>,
    ) -> ConnId {
        let id = self
            .adopt(None, handler, Life::resolving())
            .expect("adopting a connection without a socket cannot fail");
        if let Some(conn) = self.conn_mut(id) {
            conn.bind_to = local;
        }
        match self.resolver.lookup(host, port, self.now) {
            Lookup::Known(addrs) => self.resolved(id, addrs),
            Lookup::Stale(addrs) => {
                self.resolved(id, addrs);
                self.resolve_in_background(host, port, |_, _| {});
            }
            Lookup::Unknown => {
                self.resolve_in_background(host, port, move |r, addrs| r.resolved(id, addrs));
            }
        }
        id
    }

    fn resolved(&mut self, id: ConnId, addrs: Vec<SocketAddr>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        // A close-after-writing still wants its queue delivered: connect anyway.
        if !matches!(conn.life, Life::Resolving { .. }) {
            return;
        }
        let mut addrs = addrs;
        if let Some(local) = conn.bind_to {
            addrs.retain(|a| a.is_ipv4() == local.is_ipv4());
        }
        if addrs.is_empty() {
            self.close_now(id, UnbindReason::Unresolvable);
            return;
        }
        conn.untried_addrs = addrs;
        conn.life.resolved();
        if let Err(reason) = self.connect_next_address(id) {
            // Every address failed at once (unreachable, out of descriptors...).
            self.close_now(id, reason);
        }
    }

    /// Replaces a resolved connection's socket with one connecting to its next untried
    /// address. `Err` if none is left, with the last attempt's reason (`Refused` if
    /// there was none to try).
    pub(crate) fn connect_next_address(&mut self, id: ConnId) -> Result<(), UnbindReason> {
        let nodelay = self.defaults.nodelay;
        let Reactor {
            descriptors, poll, ..
        } = self;
        let Some(super::Descriptor::Conn(conn)) = descriptors.get_mut(id.slot) else {
            return Err(UnbindReason::ClosedByUs);
        };
        if conn.serial != id.serial {
            return Err(UnbindReason::ClosedByUs);
        }
        let mut last = UnbindReason::Refused;
        while !conn.untried_addrs.is_empty() {
            let addr = conn.untried_addrs.remove(0);
            if let Some(mut old) = conn.stream.take() {
                old.deregister(poll.registry());
            }
            let attempt = socket::tcp_connect(addr, conn.bind_to).and_then(|mut s| {
                s.register(poll.registry(), mio::Token(id.slot))?;
                if nodelay {
                    let _ = s.set_nodelay(true);
                }
                Ok(s)
            });
            match attempt {
                Ok(stream) => {
                    conn.stream = Some(stream);
                    return Ok(());
                }
                Err(e) => last = UnbindReason::from_io_error(&e),
            }
        }
        Err(last)
    }

    fn open_outbound(
        &mut self,
        attempt: io::Result<Stream>,
        handler: Box<dyn Handler>,
    ) -> io::Result<ConnId> {
        match attempt {
            Ok(stream) => self.adopt(Some(stream), handler, Life::connecting()),
            Err(e) if is_connect_outcome(&e) => {
                // Refused (or unreachable) before the call even returned: still a
                // connection from the user's point of view, ending in unbind.
                let id = self.adopt(None, handler, Life::connecting())?;
                self.close_now(id, UnbindReason::from_io_error(&e));
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    /// Queues bytes for connection `id`. Returns `false` if it is closing or gone. On a
    /// datagram socket, sends one datagram to the sender of the last one received.
    pub fn send_to(&mut self, id: ConnId, data: &[u8]) -> bool {
        if let Some(to) = self.datagram_reply_address(id) {
            return self.send_datagram(id, data, to);
        }
        if data.is_empty() {
            return self.conn(id).is_some();
        }
        self.enqueue(id, data)
    }

    /// Closes `id` (any kind of descriptor) now, dropping its queue; `unbind` follows at
    /// the end of the tick with [`UnbindReason::ClosedByUs`].
    pub fn close_connection(&mut self, id: ConnId) {
        self.close_descriptor(id, UnbindReason::ClosedByUs);
    }

    /// Stops reading `id` and closes it once its queue is written.
    pub fn close_connection_after_writing(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let reason = conn.life.after_writing_reason();
        self.close_after_writing(id, reason);
    }

    /// Half-closes `id`: FIN once its queue is written; reading goes on until the peer's
    /// FIN, after which the connection ends with [`UnbindReason::PeerClosed`].
    pub fn close_write(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.life.close_write() && conn.life.is_connected() {
            self.after_write_progress(id);
        }
    }

    /// Stops reading `id` (the kernel buffers, then the peer's sends block: backpressure).
    pub fn pause_connection(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.paused = true;
        }
    }

    /// Resumes reading `id`; anything that arrived while paused is read next tick.
    pub fn resume_connection(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id)
            && conn.paused
        {
            conn.paused = false;
            self.schedule_read(id);
        }
    }

    /// Whether `id` is paused.
    pub fn is_paused(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.paused)
    }

    /// Whether `id` names a live descriptor (not yet unbound).
    pub fn is_alive(&self, id: ConnId) -> bool {
        matches!(self.descriptors.get(id.slot), Some(d) if d.serial() == id.serial)
    }

    /// Whether `id` has finished connecting (always true for accepted connections).
    pub fn is_connected(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.life.is_connected())
    }

    /// The peer address of TCP connection `id` (for a datagram socket, the sender of
    /// the last datagram).
    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        match self.conn(id) {
            Some(conn) => conn.stream.as_ref()?.peer_addr(),
            None => self.datagram(id)?.last_sender,
        }
    }

    /// The local address of TCP connection or datagram socket `id`.
    pub fn local_addr(&self, id: ConnId) -> Option<SocketAddr> {
        match self.conn(id) {
            Some(conn) => conn.stream.as_ref()?.local_addr(),
            None => self.datagram(id)?.socket.local_addr().ok(),
        }
    }

    /// Bytes accepted for `id` and not yet written: its queue plus relayed bytes waiting
    /// in its splice pipe.
    pub fn outbound_size(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.pending_out())
    }

    /// Whether `id`'s queue is above its high-water mark.
    pub fn is_above_high_water(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.above_high_water)
    }

    /// Sets `id`'s high- and low-water marks (`low` is capped at `high`).
    pub fn set_water_marks(&mut self, id: ConnId, high: usize, low: usize) {
        if let Some(conn) = self.conn_mut(id) {
            let was_above = conn.above_high_water;
            conn.high_water = high;
            conn.low_water = low.min(high);
            conn.above_high_water = conn.pending_out() > high;
            if was_above && !conn.above_high_water {
                // Reading was throttled by the old mark: replay what is waiting.
                self.schedule_read(id);
            }
        }
        self.after_write_progress(id);
    }

    /// The water marks connections made from now on start with.
    pub fn set_default_water_marks(&mut self, high: usize, low: usize) {
        self.defaults.high_water = high;
        self.defaults.low_water = low.min(high);
    }

    /// Whether `id` stops being read while its own queue is above the high-water mark.
    pub fn set_read_backpressure(&mut self, id: ConnId, on: bool) {
        if let Some(conn) = self.conn_mut(id) {
            conn.read_backpressure = on;
            if !on {
                self.schedule_read(id);
            }
        }
    }

    /// `TCP_NODELAY` on `id`.
    pub fn set_nodelay(&mut self, id: ConnId, on: bool) -> io::Result<()> {
        self.with_stream(id, |s| s.set_nodelay(on))
    }

    /// TCP keepalive on `id`, with the idle time before probes; `None` turns it off.
    pub fn set_keepalive(&mut self, id: ConnId, idle: Option<Duration>) -> io::Result<()> {
        self.with_stream(id, |s| socket::set_keepalive(s.read_fd(), idle))
    }

    /// A raw integer `setsockopt(level, name, value)` on `id`.
    pub fn set_sock_opt(
        &mut self,
        id: ConnId,
        level: i32,
        name: i32,
        value: i32,
    ) -> io::Result<()> {
        self.with_stream(id, |s| {
            socket::set_int_option(s.read_fd(), level, name, value)
        })
    }

    fn with_stream(&self, id: ConnId, f: impl FnOnce(&Stream) -> io::Result<()>) -> io::Result<()> {
        match self.conn(id).and_then(|c| c.stream.as_ref()) {
            Some(s) => f(s),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no such connection",
            )),
        }
    }

    /// Closes `id` with [`UnbindReason::InactivityTimeout`] after `timeout` without
    /// traffic either way; `None` turns it off.
    pub fn set_comm_inactivity_timeout(&mut self, id: ConnId, timeout: Option<Duration>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let old = conn.inactivity.take();
        let last = conn.last_activity;
        if let Some((_, timer)) = old {
            self.timers.cancel(timer);
        }
        if let Some(timeout) = timeout {
            let timer =
                self.timers
                    .insert(deadline(last, timeout), None, TimerTask::Inactivity(id));
            if let Some(conn) = self.conn_mut(id) {
                conn.inactivity = Some((timeout, timer));
            }
        }
    }

    /// Closes `id` with [`UnbindReason::HalfCloseTimeout`] once one direction has ended
    /// (the peer's FIN arrived, or ours went out) and nothing then moved either way for
    /// `timeout` (HAProxy's `timeout client-fin` / `server-fin`). A peer that half-closes
    /// and goes silent, or never answers our FIN, cannot pin the descriptor. `None` turns
    /// it off (the default).
    pub fn set_half_close_timeout(&mut self, id: ConnId, timeout: Option<Duration>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.half_close_timeout = timeout;
        if let Some(timer) = conn.half_close_timer.take() {
            self.timers.cancel(timer);
        }
        self.arm_half_close_timer(id);
    }

    /// How many reads `id` gets per readable event before the loop turns to other
    /// connections (default [`READS_PER_EVENT`](crate::READS_PER_EVENT); at least 1). A
    /// connection whose input matters less (a shadow's answers) can get a smaller share.
    pub fn set_read_budget(&mut self, id: ConnId, reads: usize) {
        if let Some(conn) = self.conn_mut(id) {
            conn.reads_per_event = reads.max(1);
        }
    }

    /// Throws `id`'s input away unread: `receive_data` no longer runs, but EOF, errors and
    /// `unbind` still do, and the peer is never reset for unread data. On Linux TCP the
    /// kernel drops the bytes without copying them (`MSG_TRUNC`).
    pub fn set_discard_input(&mut self, id: ConnId, on: bool) {
        if let Some(conn) = self.conn_mut(id) {
            conn.discard_input = on;
        }
    }

    /// Whether TCP connections accepted or opened from now on get `TCP_NODELAY` (default
    /// off, as in EventMachine). Turn it on for request/response traffic: with Nagle's
    /// algorithm a small write waits for the peer's (delayed) ACK, up to 40 ms.
    pub fn set_default_nodelay(&mut self, on: bool) {
        self.defaults.nodelay = on;
    }

    /// Replaces the pending-connect timeout of `id` if it is still connecting, counting
    /// from now.
    pub fn set_pending_connect_timeout(&mut self, id: ConnId, timeout: Duration) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.life.is_connected() {
            return;
        }
        let old = conn.connect_timer.take();
        if let Some(timer) = old {
            self.timers.cancel(timer);
        }
        let timer = self.timers.insert(
            deadline(Instant::now(), timeout),
            None,
            TimerTask::ConnectTimeout(id),
        );
        if let Some(conn) = self.conn_mut(id) {
            conn.connect_timer = Some(timer);
        }
    }

    /// The pending-connect timeout connections made from now on start with.
    pub fn set_default_pending_connect_timeout(&mut self, timeout: Duration) {
        self.defaults.connect_timeout = timeout;
    }

    /// A connect timer fired.
    pub(crate) fn connect_timed_out(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.connect_timer = None;
            if !conn.life.is_connected() {
                self.close_now(id, UnbindReason::ConnectTimeout);
            }
        }
    }

    /// An inactivity timer fired: close, or re-arm for the time still left.
    pub(crate) fn inactivity_check(&mut self, id: ConnId) {
        self.refresh_kernel_activity(id);
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some((timeout, _)) = conn.inactivity else {
            return;
        };
        let due = deadline(conn.last_activity, timeout);
        if now >= due {
            conn.inactivity = None;
            self.close_now(id, UnbindReason::InactivityTimeout);
        } else {
            let timer = self.timers.insert(due, None, TimerTask::Inactivity(id));
            if let Some(conn) = self.conn_mut(id) {
                conn.inactivity = Some((timeout, timer));
            }
        }
    }
}

/// Errors from `connect(2)` that are the connection's outcome rather than a failure to
/// create a socket.
fn is_connect_outcome(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}
