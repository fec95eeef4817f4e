//! What a user implements ([`Handler`]), what a callback may do ([`Context`]), and why a
//! connection ended ([`UnbindReason`]).
//!
//! The vocabulary is EventMachine's `EM::Connection`: `post_init`, `connection_completed`,
//! `receive_data`, `unbind`. Every callback runs on the reactor thread, never re-entrantly
//! for the same connection, and `unbind` runs exactly once, at a safe point of the tick.

use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use crate::id::ConnId;
use crate::reactor::Reactor;

/// The callbacks of one connection. Every method has a default except `receive_data`.
///
/// ```
/// use ember::{Context, Handler};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
///         cx.send_data(data);
///     }
/// }
/// ```
pub trait Handler: Any {
    /// The connection exists (accepted, or an outbound connect has started). The peer may
    /// not be connected yet; data sent now is queued until it is.
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// An outbound connection finished connecting.
    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// Bytes arrived. `data` is only valid for the call. The default discards them
    /// (descriptors that never carry data, such as watches, need not implement it).
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let _ = (cx, data);
    }

    /// A datagram arrived on a UDP socket, whole, from `from`. The default passes it to
    /// `receive_data`; `send_data` on a datagram socket replies to the last sender.
    fn receive_datagram(&mut self, cx: &mut Context<'_>, data: &[u8], from: SocketAddr) {
        let _ = from;
        self.receive_data(cx, data);
    }

    /// A child process started with `popen` wrote to its stderr. The default discards it.
    fn receive_stderr(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let _ = (cx, data);
    }

    /// A watched descriptor (`watch`) is readable; read it yourself. Called again on the
    /// next tick while it stays readable and notification is on.
    fn notify_readable(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// A watched descriptor (`watch`) is writable. Called again on the next tick while it
    /// stays writable and notification is on.
    fn notify_writable(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// A watched file (`watch_file`) was modified.
    fn file_modified(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// A watched file was moved or renamed (the watch follows it).
    fn file_moved(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// A watched file was deleted; `unbind` follows.
    fn file_deleted(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// The peer sent FIN: it will send nothing more, but may still read. The default
    /// closes the connection once everything queued has been written (EventMachine's
    /// behaviour); return [`PeerClosed::KeepWriting`] to keep sending (half-close), then
    /// call [`Context::close_write`] or [`Context::close_after_writing`] when done.
    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        let _ = cx;
        PeerClosed::Close
    }

    /// The outbound queue went above the high-water mark and has now drained to the
    /// low-water mark: a producer that stopped sending may resume.
    fn outbound_drained(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// This connection was relaying its input to a target (`proxy_incoming_to`) and the
    /// target went away; input now reaches `receive_data` again.
    fn proxy_target_unbound(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// A length-limited relay (`proxy_incoming_to_length`) moved all its bytes; what
    /// arrives after them reaches `receive_data`.
    fn proxy_completed(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// The TLS handshake started with `start_tls_*` is done; [`Reactor::tls_info`] says
    /// what it settled (EventMachine's `ssl_handshake_completed`).
    fn tls_handshake_completed(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// The connection is gone, for `reason`. Runs exactly once per connection. The
    /// connection can no longer send; the rest of the reactor is still available.
    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = (cx, reason);
    }
}

/// What to do after the peer half-closed; returned by [`Handler::peer_closed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerClosed {
    /// Close once the outbound queue is written; unbind says [`UnbindReason::PeerClosed`].
    Close,
    /// Keep the connection open for writing.
    KeepWriting,
}

/// Why a connection ended, passed to [`Handler::unbind`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnbindReason {
    /// The peer closed its side (FIN) and the connection then ended.
    PeerClosed,
    /// The peer reset the connection, or a write hit a broken pipe.
    Reset,
    /// An outbound connect was refused.
    Refused,
    /// An outbound connect did not complete within the pending-connect timeout.
    ConnectTimeout,
    /// No bytes moved in either direction for the comm-inactivity timeout.
    InactivityTimeout,
    /// A host name could not be resolved.
    Unresolvable,
    /// This side closed it (`close`, `close_after_writing`, or both halves shut).
    ClosedByUs,
    /// The reactor stopped while the connection was still open.
    ReactorStopped,
    /// The descriptor was handed back to the user with `detach`.
    Detached,
    /// A child process (`popen`) exited with this status.
    ProcessExited(std::process::ExitStatus),
    /// A watched file was deleted or its file system unmounted.
    FileGone,
    /// Any other I/O error.
    Error(io::ErrorKind),
    /// A callback of this connection (or of the proxy session it belongs to) panicked;
    /// the panic's message. The reactor's error handler saw it too
    /// ([`Reactor::set_error_handler`](crate::Reactor::set_error_handler)).
    Panicked(Arc<str>),
    /// One direction had ended (a FIN either way) and no byte then moved in the other
    /// for the half-close timeout ([`Context::set_half_close_timeout`]).
    HalfCloseTimeout,
    /// TLS failed: the handshake (a certificate that does not verify, no protocol in
    /// common, an alert from the peer, the handshake timeout) or a record; what went
    /// wrong, as rustls says it.
    TlsFailed(Arc<str>),
    /// This side closed it because the peer broke the protocol (a line over the limit, a
    /// frame it could not parse); what was wrong, as the handler said it
    /// ([`Context::close_after_writing_with`], or `TooLong.into()`).
    ProtocolError(Arc<str>),
}

impl UnbindReason {
    /// Classifies an I/O error from a read, write or connect.
    pub fn from_io_error(e: &io::Error) -> UnbindReason {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => UnbindReason::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => UnbindReason::Reset,
            io::ErrorKind::TimedOut => UnbindReason::ConnectTimeout,
            kind => UnbindReason::Error(kind),
        }
    }

    /// Whether the connection ended without an error (either side closed it in order).
    pub fn is_orderly(&self) -> bool {
        matches!(
            self,
            UnbindReason::PeerClosed
                | UnbindReason::ClosedByUs
                | UnbindReason::ReactorStopped
                | UnbindReason::Detached
                | UnbindReason::FileGone
        ) || matches!(self, UnbindReason::ProcessExited(status) if status.success())
    }
}

impl UnbindReason {
    /// A short fixed name for the reason, for logs a machine reads: `peer_closed`,
    /// `reset`, `refused`, `connect_timeout`, `inactivity_timeout`, `unresolvable`,
    /// `closed_by_us`, `reactor_stopped`, `detached`, `process_exited`, `file_gone`,
    /// `io_error`, `panicked`, `half_close_timeout`, `tls_failed`, `protocol_error`.
    pub fn code(&self) -> &'static str {
        match self {
            UnbindReason::PeerClosed => "peer_closed",
            UnbindReason::Reset => "reset",
            UnbindReason::Refused => "refused",
            UnbindReason::ConnectTimeout => "connect_timeout",
            UnbindReason::InactivityTimeout => "inactivity_timeout",
            UnbindReason::Unresolvable => "unresolvable",
            UnbindReason::ClosedByUs => "closed_by_us",
            UnbindReason::ReactorStopped => "reactor_stopped",
            UnbindReason::Detached => "detached",
            UnbindReason::ProcessExited(_) => "process_exited",
            UnbindReason::FileGone => "file_gone",
            UnbindReason::Error(_) => "io_error",
            UnbindReason::Panicked(_) => "panicked",
            UnbindReason::HalfCloseTimeout => "half_close_timeout",
            UnbindReason::TlsFailed(_) => "tls_failed",
            UnbindReason::ProtocolError(_) => "protocol_error",
        }
    }
}

impl fmt::Display for UnbindReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnbindReason::PeerClosed => f.write_str("peer closed"),
            UnbindReason::Reset => f.write_str("connection reset"),
            UnbindReason::Refused => f.write_str("connection refused"),
            UnbindReason::ConnectTimeout => f.write_str("connect timed out"),
            UnbindReason::InactivityTimeout => f.write_str("inactivity timeout"),
            UnbindReason::Unresolvable => f.write_str("host name not resolved"),
            UnbindReason::ClosedByUs => f.write_str("closed by us"),
            UnbindReason::ReactorStopped => f.write_str("reactor stopped"),
            UnbindReason::Detached => f.write_str("detached"),
            UnbindReason::ProcessExited(status) => write!(f, "process exited ({status})"),
            UnbindReason::FileGone => f.write_str("watched file gone"),
            UnbindReason::Error(kind) => write!(f, "I/O error: {kind}"),
            UnbindReason::Panicked(message) => write!(f, "a callback panicked: {message}"),
            UnbindReason::HalfCloseTimeout => f.write_str("half-closed and idle too long"),
            UnbindReason::TlsFailed(why) => write!(f, "TLS failed: {why}"),
            UnbindReason::ProtocolError(why) => write!(f, "protocol error: {why}"),
        }
    }
}

/// What a callback can do: act on its own connection, and (through `Deref`) on the whole
/// [`Reactor`] — timers, connects, defer, other connections by id, stop.
pub struct Context<'r> {
    reactor: &'r mut Reactor,
    id: ConnId,
}

impl<'r> Context<'r> {
    pub(crate) fn new(reactor: &'r mut Reactor, id: ConnId) -> Self {
        Context { reactor, id }
    }

    /// This connection's id, to hand to other connections or timers.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The reactor, for operations on other connections.
    pub fn reactor(&mut self) -> &mut Reactor {
        self.reactor
    }

    /// Queues bytes for the peer (written at once when the socket has room). Returns
    /// `false` if the connection is closing or gone and the bytes were dropped.
    pub fn send_data(&mut self, data: &[u8]) -> bool {
        self.reactor.send_to(self.id, data)
    }

    /// Queues the whole file at `path` without reading it into memory (see
    /// [`Reactor::send_file_data`]); returns its length.
    pub fn send_file_data(&mut self, path: impl AsRef<std::path::Path>) -> io::Result<u64> {
        self.reactor.send_file_data(self.id, path)
    }

    /// Streams the file at `path` to the peer with `sendfile(2)` where it can, and calls
    /// `done` once it has gone or failed (see [`Reactor::stream_file`]); returns its length.
    pub fn stream_file_data(
        &mut self,
        path: impl AsRef<std::path::Path>,
        done: impl FnOnce(&mut Reactor, crate::FileStreamResult) + 'static,
    ) -> io::Result<u64> {
        self.reactor.stream_file_data(self.id, path, done)
    }

    /// Streams an open file from its current position (see [`Reactor::stream_file`]).
    pub fn stream_file(
        &mut self,
        file: std::fs::File,
        done: impl FnOnce(&mut Reactor, crate::FileStreamResult) + 'static,
    ) -> io::Result<u64> {
        self.reactor.stream_file(self.id, file, done)
    }

    /// Starts TLS as the server on this connection (see
    /// [`Reactor::start_tls_server`]); plaintext keeps flowing through `receive_data`
    /// and `send_data`.
    pub fn start_tls_server(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        self.reactor.start_tls_server(self.id, config)
    }

    /// Starts TLS as the client on this connection, verifying the server under
    /// `server_name` as `config` says (see [`Reactor::start_tls_client`]).
    pub fn start_tls_client(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<()> {
        self.reactor.start_tls_client(self.id, config, server_name)
    }

    /// What this connection's TLS handshake settled ([`Reactor::tls_info`]).
    pub fn tls_info(&self) -> Option<crate::tls::TlsInfo> {
        self.reactor.tls_info(self.id)
    }

    /// Closes now, dropping anything still queued; unbind follows at the end of the tick.
    pub fn close(&mut self) {
        self.reactor.close_connection(self.id);
    }

    /// Stops reading and closes once everything queued has been written.
    pub fn close_after_writing(&mut self) {
        self.reactor.close_connection_after_writing(self.id);
    }

    /// [`close_after_writing`](Self::close_after_writing), saying why: `unbind` gets
    /// `reason` (say [`UnbindReason::ProtocolError`]) instead of
    /// [`UnbindReason::ClosedByUs`].
    pub fn close_after_writing_with(&mut self, reason: UnbindReason) {
        self.reactor
            .close_connection_after_writing_with(self.id, reason);
    }

    /// Half-close: sends FIN once everything queued has been written, and keeps reading.
    pub fn close_write(&mut self) {
        self.reactor.close_write(self.id);
    }

    /// Stops reading from the peer until [`resume`](Self::resume).
    pub fn pause(&mut self) {
        self.reactor.pause_connection(self.id);
    }

    /// Starts reading again after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.reactor.resume_connection(self.id);
    }

    /// Whether reading is paused.
    pub fn is_paused(&self) -> bool {
        self.reactor.is_paused(self.id)
    }

    /// The peer's address (TCP only).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.reactor.peer_addr(self.id)
    }

    /// The local address (TCP only).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.reactor.local_addr(self.id)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn outbound_size(&self) -> usize {
        self.reactor.outbound_size(self.id)
    }

    /// Whether the outbound queue is above its high-water mark (stop producing until
    /// [`Handler::outbound_drained`]).
    pub fn is_above_high_water(&self) -> bool {
        self.reactor.is_above_high_water(self.id)
    }

    /// Sets this connection's outbound high- and low-water marks, in bytes.
    pub fn set_water_marks(&mut self, high: usize, low: usize) {
        self.reactor.set_water_marks(self.id, high, low);
    }

    /// Whether a connection whose own outbound queue is above the high-water mark stops
    /// being read until it drains (default on, so an echo-style handler talking to a peer
    /// that never reads cannot grow without bound).
    pub fn set_read_backpressure(&mut self, on: bool) {
        self.reactor.set_read_backpressure(self.id, on);
    }

    /// `TCP_NODELAY`.
    pub fn set_nodelay(&mut self, on: bool) -> io::Result<()> {
        self.reactor.set_nodelay(self.id, on)
    }

    /// TCP keepalive with the given idle time before probes, or `None` to turn it off.
    pub fn set_keepalive(&mut self, idle: Option<Duration>) -> io::Result<()> {
        self.reactor.set_keepalive(self.id, idle)
    }

    /// A raw integer `setsockopt(level, name, value)`.
    pub fn set_sock_opt(&mut self, level: i32, name: i32, value: i32) -> io::Result<()> {
        self.reactor.set_sock_opt(self.id, level, name, value)
    }

    /// A raw integer `getsockopt(level, name)`, for example
    /// `cx.sock_opt(libc::SOL_SOCKET, libc::SO_RCVBUF)` (EventMachine's `get_sock_opt`,
    /// which returns the raw bytes; ember reads options whose value is one `int`: an
    /// option the kernel answers with another size is `InvalidInput`). `NotConnected` if
    /// the connection has no socket (still resolving its name, or being unbound).
    #[doc(alias = "get_sock_opt")]
    pub fn sock_opt(&self, level: i32, name: i32) -> io::Result<i32> {
        self.reactor.sock_opt(self.id, level, name)
    }

    /// How long since a byte last moved on this connection, either way (EventMachine's
    /// `get_idle_time`); counted from when it was created if none has. The same clock
    /// the comm-inactivity timeout reads. `None` once the connection is gone (during
    /// `unbind`). Another connection's, from a timer:
    /// `r.with_handler::<H, _>(id, |_, cx| cx.idle_time())`.
    #[doc(alias = "get_idle_time")]
    pub fn idle_time(&self) -> Option<Duration> {
        let conn = self.reactor.conn(self.id)?;
        Some(std::time::Instant::now().saturating_duration_since(conn.last_activity))
    }

    /// Closes the connection with [`UnbindReason::InactivityTimeout`] after `timeout`
    /// without traffic in either direction; `None` turns it off.
    pub fn set_comm_inactivity_timeout(&mut self, timeout: Option<Duration>) {
        self.reactor.set_comm_inactivity_timeout(self.id, timeout);
    }

    /// The comm-inactivity timeout in force, if any (EventMachine's
    /// `comm_inactivity_timeout`, the reader of `set_comm_inactivity_timeout`).
    pub fn comm_inactivity_timeout(&self) -> Option<Duration> {
        self.reactor
            .conn(self.id)
            .and_then(|c| c.inactivity.map(|i| i.timeout))
    }

    /// See [`Reactor::set_half_close_timeout`].
    pub fn set_half_close_timeout(&mut self, timeout: Option<Duration>) {
        self.reactor.set_half_close_timeout(self.id, timeout);
    }

    /// See [`Reactor::set_read_budget`].
    pub fn set_read_budget(&mut self, reads: usize) {
        self.reactor.set_read_budget(self.id, reads);
    }

    /// See [`Reactor::set_discard_input`].
    pub fn set_discard_input(&mut self, on: bool) {
        self.reactor.set_discard_input(self.id, on);
    }

    /// Replaces the pending-connect timeout (default 20 s) of a connection still connecting.
    pub fn set_pending_connect_timeout(&mut self, timeout: Duration) {
        self.reactor.set_pending_connect_timeout(self.id, timeout);
    }

    /// The pending-connect timeout in force (EventMachine's `pending_connect_timeout`,
    /// the reader of `set_pending_connect_timeout`); see
    /// [`Reactor::pending_connect_timeout`]. `None` once the connection is gone.
    #[doc(alias = "get_pending_connect_timeout")]
    pub fn pending_connect_timeout(&self) -> Option<Duration> {
        self.reactor.pending_connect_timeout(self.id)
    }
}

impl Context<'_> {
    /// Relays everything this connection receives to `target` without calling
    /// `receive_data`, pausing while `target` has more than `bufsize` bytes queued
    /// (EventMachine's `proxy_incoming_to`). Uses `splice(2)` on Linux. Returns `false` if
    /// either connection is gone.
    pub fn proxy_incoming_to(&mut self, target: ConnId, bufsize: usize) -> bool {
        self.reactor.proxy_incoming_to(self.id, target, bufsize)
    }

    /// Like [`proxy_incoming_to`](Self::proxy_incoming_to) for exactly `length` bytes;
    /// then [`Handler::proxy_completed`] runs and later bytes reach `receive_data`.
    pub fn proxy_incoming_to_length(
        &mut self,
        target: ConnId,
        bufsize: usize,
        length: u64,
    ) -> bool {
        self.reactor
            .proxy_incoming_to_length(self.id, target, bufsize, length)
    }

    /// Ends this connection's relay; input reaches `receive_data` again.
    pub fn stop_proxying(&mut self) {
        self.reactor.stop_proxying(self.id);
    }

    /// Bytes this connection has relayed so far.
    pub fn proxied_bytes(&self) -> u64 {
        self.reactor.proxied_bytes(self.id)
    }
}

impl Deref for Context<'_> {
    type Target = Reactor;

    fn deref(&self) -> &Reactor {
        self.reactor
    }
}

impl DerefMut for Context<'_> {
    fn deref_mut(&mut self) -> &mut Reactor {
        self.reactor
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("id", &self.id).finish()
    }
}
