//! The public per-connection API on [`Reactor`]: opening outbound connections, sending,
//! closing, pausing, socket options and timeouts. Each takes a [`ConnId`]; the same
//! operations on a callback's own connection are on [`Context`](crate::Context).
//! Operations on an id whose connection is gone do nothing and report so.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::connect_race::interleave_families;
use super::connection::Inactivity;
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

    /// Connects to whichever of `addrs` answers first, racing them in the order given,
    /// happy-eyeballs style (RFC 8305): the first address is tried at once; while no
    /// attempt has connected, the next address is tried *beside* the earlier ones when
    /// the latest attempt has neither connected nor failed within the
    /// [connection attempt delay](Self::set_connection_attempt_delay) (250 ms), and at
    /// once when an attempt fails. The first attempt to connect becomes the connection's
    /// socket and every other is closed, so a blackholed address costs one delay, not the
    /// whole pending-connect timeout. If every attempt fails, `unbind` reports the last
    /// failure ([`UnbindReason::Refused`]...); the pending-connect timeout bounds the
    /// whole race ([`UnbindReason::ConnectTimeout`]). An empty list ends in
    /// [`UnbindReason::Unresolvable`].
    ///
    /// The connection exists at once, with one id and one handler whichever address wins:
    /// data sent before it connects is queued and delivered on the winner. Until then a
    /// connection racing several addresses has no socket (`peer_addr`, socket options:
    /// none yet); one address is not raced, and its socket is the connection's at once.
    /// What
    /// [`connect_host`](Self::connect_host) does with every address a name resolves to.
    pub fn connect_any<H: Handler>(&mut self, addrs: &[SocketAddr], handler: H) -> ConnId {
        let id = self
            .adopt(None, Box::new(handler), Life::resolving())
            .expect("adopting a connection without a socket cannot fail");
        self.resolved(id, None, addrs.to_vec());
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
    /// Every address the name resolves to is raced as in
    /// [`connect_any`](Self::connect_any), the families interleaved (RFC 8305): the
    /// resolver's first address, then one of the other family (IPv4 after IPv6, or the
    /// reverse), and so on, so a blackholed family delays the connect by one
    /// [attempt delay](Self::set_connection_attempt_delay) only. `unbind` reports the last
    /// failure if every address fails.
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
        let race = move |r: &mut Reactor, addrs| r.resolved(id, local, interleave_families(addrs));
        match self.resolver.lookup(host, port, self.now) {
            Lookup::Known(addrs) => race(self, addrs),
            Lookup::Stale(addrs) => {
                race(self, addrs);
                self.resolve_in_background(host, port, |_, _| {});
            }
            Lookup::Unknown => self.resolve_in_background(host, port, race),
        }
        id
    }

    /// A resolving connection's addresses are known: race them (only those of `local`'s
    /// family if it binds first).
    fn resolved(&mut self, id: ConnId, local: Option<SocketAddr>, mut addrs: Vec<SocketAddr>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        // A close-after-writing still wants its queue delivered: connect anyway.
        if !matches!(conn.life, Life::Resolving { .. }) {
            return;
        }
        if let Some(local) = local {
            addrs.retain(|a| a.is_ipv4() == local.is_ipv4());
        }
        if addrs.is_empty() {
            self.close_now(id, UnbindReason::Unresolvable);
            return;
        }
        conn.life.resolved();
        self.race(id, addrs, local);
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

    /// [`close_connection_after_writing`](Self::close_connection_after_writing), with
    /// the reason `unbind` will get (unless the connection fails or is closed otherwise
    /// first: the first close wins).
    pub fn close_connection_after_writing_with(&mut self, id: ConnId, reason: UnbindReason) {
        if self.conn(id).is_some() {
            self.close_after_writing(id, reason);
        }
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
            Some(conn) => conn
                .addrs
                .peer
                .or_else(|| conn.stream.as_ref()?.peer_addr()),
            None => self.datagram(id)?.last_sender,
        }
    }

    /// The local address of TCP connection or datagram socket `id`.
    pub fn local_addr(&self, id: ConnId) -> Option<SocketAddr> {
        match self.conn(id) {
            Some(conn) => conn
                .addrs
                .local
                .or_else(|| conn.stream.as_ref()?.local_addr()),
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

    /// A raw integer `getsockopt(level, name)` on `id`'s socket (see
    /// [`Context::sock_opt`](crate::Context::sock_opt)).
    pub fn sock_opt(&self, id: ConnId, level: i32, name: i32) -> io::Result<i32> {
        self.with_stream(id, |s| socket::int_option(s.read_fd(), level, name))
    }

    fn with_stream<T>(
        &self,
        id: ConnId,
        f: impl FnOnce(&Stream) -> io::Result<T>,
    ) -> io::Result<T> {
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
        let due = timeout.map(|t| deadline(conn.last_activity, t));
        match (conn.inactivity.as_mut(), timeout, due) {
            // The timer fires no later than the new deadline: it re-arms for the rest
            // then, so a proxy switching timeouts per request touches no timer here.
            (Some(current), Some(timeout), Some(due)) if current.armed_for <= due => {
                current.timeout = timeout;
            }
            _ => {
                if let Some(old) = conn.inactivity.take() {
                    self.timers.cancel(old.timer);
                }
                if let (Some(timeout), Some(due)) = (timeout, due) {
                    self.arm_inactivity(id, timeout, due);
                }
            }
        }
    }

    fn arm_inactivity(&mut self, id: ConnId, timeout: Duration, due: Instant) {
        let timer = self.timers.insert(due, None, TimerTask::Inactivity(id));
        if let Some(conn) = self.conn_mut(id) {
            conn.inactivity = Some(Inactivity {
                timeout,
                timer,
                armed_for: due,
            });
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

    /// Replaces the pending-connect timeout of `id` if it is still connecting (resolving
    /// its name, or racing its addresses), counting from now; once connected it is
    /// ignored.
    pub fn set_pending_connect_timeout(&mut self, id: ConnId, timeout: Duration) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.life.is_connected() {
            return;
        }
        conn.connect_timeout = timeout;
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

    /// The pending-connect timeout of connection `id` (EventMachine's
    /// `get_pending_connect_timeout`): the default it started with, or the last
    /// [`set_pending_connect_timeout`](Self::set_pending_connect_timeout) made while it
    /// was connecting. An accepted connection reports the default it started with, which
    /// never applied to it. `None` if `id` is no stream connection.
    #[doc(alias = "get_pending_connect_timeout")]
    pub fn pending_connect_timeout(&self, id: ConnId) -> Option<Duration> {
        self.conn(id).map(|c| c.connect_timeout)
    }

    /// The pending-connect timeout connections made from now on start with.
    pub fn set_default_pending_connect_timeout(&mut self, timeout: Duration) {
        self.defaults.connect_timeout = timeout;
    }

    /// The pending-connect timeout connections made from now on start with (default
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT), 20 s).
    pub fn default_pending_connect_timeout(&self) -> Duration {
        self.defaults.connect_timeout
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
        let Some(Inactivity { timeout, .. }) = conn.inactivity.take() else {
            return;
        };
        let due = deadline(conn.last_activity, timeout);
        if now >= due {
            self.close_now(id, UnbindReason::InactivityTimeout);
        } else {
            self.arm_inactivity(id, timeout, due);
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
