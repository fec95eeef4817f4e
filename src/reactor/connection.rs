//! One stream connection's state, and the machinery that moves its bytes: bounded reads,
//! writes that drain the outbound queue, half-close, backpressure and closing.
//!
//! The edge-triggered rules live here. A connection is registered once for both
//! directions and never re-registered. Reading stops at `WouldBlock`, at a short read
//! (unless the event reported a hangup), or when the read budget is spent, in which
//! case the connection is carried over to the next tick with `unread` set. Whenever
//! reading is suppressed (paused, throttled) the readiness is remembered in `unread`
//! and replayed through the carry-over list when reading is allowed again, because no
//! new edge will come for bytes already waiting.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::file_stream::FileStream;
use super::lifecycle::{Life, OnEmptied, OnEof, OnFailure};
use super::{ConnDefaults, Descriptor, READS_PER_EVENT, Reactor, Readiness};
use crate::buffer::OutBuffer;
use crate::handler::{Handler, PeerClosed, UnbindReason};
use crate::id::{ConnId, TimerId};
use crate::sys::socket::Stream;
use crate::sys::splice::SplicePipe;
use crate::sys::{Io, classify, classify_write};
use crate::timers::deadline;

/// How much of a closing child's remaining stderr is still delivered.
const STDERR_DRAIN_LIMIT: usize = 1024 * 1024;

/// Bytes dropped per `recv` by a connection that discards its input: no copy is made, so
/// one call can take a lot (a flood still spends only its read budget per event).
const DISCARD_CHUNK: usize = 1024 * 1024;

/// How long a lingering close waits for the peer's FIN.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Connection {
    /// With the slab slot, the connection's id; never reused (see `id.rs`).
    pub(crate) serial: u64,
    /// The socket, pipes or attached descriptor; `None` while resolving a name (and for
    /// a connect refused before a socket existed).
    pub(crate) stream: Option<Stream>,
    /// `None` only while one of its own callbacks runs.
    pub(crate) handler: Option<Box<dyn Handler>>,
    /// Where it is in its life: connecting, open (each half), lingering, reaping.
    pub(crate) life: Life,
    /// Bytes accepted by `send_data` and not yet written (after `pipe`'s).
    pub(crate) outbound: OutBuffer,
    /// Above this many pending bytes the connection is "full" (`above_high_water`).
    pub(crate) high_water: usize,
    /// Draining to this many pending bytes calls `outbound_drained`.
    pub(crate) low_water: usize,
    /// Pending bytes went above `high_water` and have not yet drained to `low_water`.
    pub(crate) above_high_water: bool,
    /// Stop reading while `above_high_water` (default on; the proxy turns it off and
    /// throttles by the other side's queue instead).
    pub(crate) read_backpressure: bool,
    /// `pause`d by the user: not read until `resume`.
    pub(crate) paused: bool,
    /// Readable data (or EOF) may be waiting that no future edge will announce.
    pub(crate) unread: bool,
    /// The last event reported read-closed or an error: a short read does not prove the
    /// socket drained, keep reading to see the EOF or error.
    pub(crate) hangup: bool,
    /// When a byte last moved either way (for the inactivity and half-close timeouts).
    pub(crate) last_activity: Instant,
    /// The comm-inactivity timeout and its timer, if set.
    pub(crate) inactivity: Option<Inactivity>,
    /// The pending-connect timer while resolving or connecting.
    pub(crate) connect_timer: Option<TimerId>,
    /// The pending-connect timeout in force: the default it started with, or the last
    /// `set_pending_connect_timeout` while connecting.
    pub(crate) connect_timeout: Duration,
    /// Set while this connection's input is relayed to another (it is the source).
    pub(crate) relay: Option<super::relay::RelayState>,
    /// The source relaying into this connection, if any (this is its target).
    pub(crate) relayed_from: Option<ConnId>,
    /// Relayed bytes waiting in a kernel pipe to be spliced into this socket; they go out
    /// before anything in `outbound`.
    pub(crate) pipe: Option<SplicePipe>,
    /// Bytes this connection has relayed as a source (`proxied_bytes`).
    pub(crate) proxied_bytes: u64,
    /// A child's stderr spent its read budget with bytes left (see `read_child_stderr`).
    pub(crate) stderr_unread: bool,
    /// How long the connection may stay idle once one direction has ended.
    pub(crate) half_close_timeout: Option<Duration>,
    /// The timer enforcing `half_close_timeout`, armed once the connection is half-closed.
    pub(crate) half_close_timer: Option<TimerId>,
    /// Reads per readable event before yielding to other connections.
    pub(crate) reads_per_event: usize,
    /// Input is thrown away unread (in the kernel where possible); `receive_data` never runs.
    pub(crate) discard_input: bool,
    /// TLS, once `start_tls_*` ran: what is read is ciphertext for it, what is sent
    /// plaintext for it (see `tls.rs`).
    pub(crate) tls: Option<Box<super::tls::TlsLayer>>,
    /// Its side of an in-kernel relay pair, once linked (see `kernel_relay.rs`).
    pub(crate) kernel: Option<super::kernel_relay::KernelSide>,
    /// Files on their way to the peer (`stream_file`), in order, each after everything
    /// queued before it.
    pub(crate) file_streams: VecDeque<FileStream>,
    /// Its addresses, where known without asking the kernel.
    pub(crate) addrs: KnownAddrs,
}

/// A connection's addresses as its listener learnt them: `accept4` returns the peer's,
/// and a listener bound to one IP address gives every connection that local address.
/// `None` is asked of the socket when wanted (`getpeername`, `getsockname`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KnownAddrs {
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) local: Option<std::net::SocketAddr>,
}

/// Registers a new connection's (or connect attempt's) socket under `token`, with
/// `TCP_NODELAY` if the reactor's default asks for it.
pub(crate) fn register_stream(
    registry: &mio::Registry,
    stream: &mut Stream,
    token: mio::Token,
    nodelay: bool,
) -> io::Result<()> {
    stream.register(registry, token)?;
    if nodelay {
        // Best effort: a socket that refuses it still works, only slower.
        let _ = stream.set_nodelay(true);
    }
    Ok(())
}

/// A comm-inactivity timeout and the timer that enforces it. The timer may be due before
/// the timeout's deadline (it was armed for a shorter timeout, or before the last
/// activity): when it fires it closes the connection or re-arms for the time still left,
/// so a timeout made longer, or set again, never costs a timer operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inactivity {
    pub(crate) timeout: Duration,
    pub(crate) timer: TimerId,
    /// When `timer` fires.
    pub(crate) armed_for: Instant,
}

impl Connection {
    pub(crate) fn new(
        serial: u64,
        stream: Option<Stream>,
        handler: Box<dyn Handler>,
        life: Life,
        defaults: &ConnDefaults,
        now: Instant,
    ) -> Connection {
        Connection {
            serial,
            stream,
            handler: Some(handler),
            life,
            outbound: OutBuffer::default(),
            high_water: defaults.high_water,
            low_water: defaults.low_water,
            above_high_water: false,
            read_backpressure: true,
            paused: false,
            unread: false,
            hangup: false,
            last_activity: now,
            inactivity: None,
            connect_timer: None,
            connect_timeout: defaults.connect_timeout,
            relay: None,
            relayed_from: None,
            pipe: None,
            proxied_bytes: 0,
            stderr_unread: false,
            half_close_timeout: None,
            half_close_timer: None,
            reads_per_event: READS_PER_EVENT,
            discard_input: false,
            tls: None,
            kernel: None,
            file_streams: VecDeque::new(),
            addrs: KnownAddrs::default(),
        }
    }

    /// Bytes accepted for this connection and not yet written: queue, splice pipe, TLS
    /// plaintext held for the handshake, and bytes waiting behind a streaming file (not
    /// the file itself).
    pub(crate) fn pending_out(&self) -> usize {
        let behind_files: usize = self.file_streams.iter().map(|f| f.after.len()).sum();
        self.pending_out_ahead_of_file() + behind_files
    }

    /// Bytes that go out before the first streaming file's next byte.
    pub(crate) fn pending_out_ahead_of_file(&self) -> usize {
        self.pending_on_wire() + self.tls.as_ref().map_or(0, |t| t.held())
    }

    /// Bytes ready for the socket and not yet written: the queue and the splice pipe
    /// (not TLS plaintext held for the handshake, which follows the handshake's records).
    fn pending_on_wire(&self) -> usize {
        self.outbound.len() + self.pipe.as_ref().map_or(0, |p| p.len)
    }

    /// Nothing is left to write: no queued bytes and no file streaming.
    pub(crate) fn output_done(&self) -> bool {
        self.pending_out() == 0 && self.file_streams.is_empty()
    }

    pub(crate) fn is_lingering(&self) -> bool {
        self.life.is_lingering()
    }

    pub(crate) fn may_read(&self) -> bool {
        if self.is_lingering() {
            return true; // discarding input until the peer's FIN, paused or not
        }
        // A TLS handshake must finish for anything queued to go, closing or not.
        let handshake_reads = self.life.closing_with_peer_sending()
            && self.tls.as_ref().is_some_and(|t| t.is_handshaking());
        (self.life.may_read() || handshake_reads)
            && !self.paused
            && !(self.read_backpressure && self.above_high_water)
    }

    /// Whether the socket holds bytes the peer sent that we have not read, in the
    /// kernel relay's sockmap too (where `FIONREAD` alone misses them).
    fn has_unread_input(&self) -> bool {
        let in_sockmap = self.kernel.is_some();
        self.stream
            .as_ref()
            .is_some_and(|s| s.has_unread_input(in_sockmap))
    }
}

impl Reactor {
    pub(crate) fn conn(&self, id: ConnId) -> Option<&Connection> {
        match self.descriptors.get(id.slot) {
            Some(Descriptor::Conn(c)) if c.serial == id.serial => Some(c),
            _ => None,
        }
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        match self.descriptors.get_mut(id.slot) {
            Some(Descriptor::Conn(c)) if c.serial == id.serial => Some(c),
            _ => None,
        }
    }

    /// Puts a stream (or, while resolving, none) into the slab, registers it and runs
    /// `post_init`.
    pub(crate) fn adopt(
        &mut self,
        stream: Option<Stream>,
        handler: Box<dyn Handler>,
        life: Life,
    ) -> io::Result<ConnId> {
        self.adopt_with(stream, handler, life, KnownAddrs::default())
    }

    /// [`adopt`](Self::adopt) for a connection whose addresses are (partly) known
    /// already: an accepted one.
    pub(crate) fn adopt_with(
        &mut self,
        mut stream: Option<Stream>,
        handler: Box<dyn Handler>,
        life: Life,
        addrs: KnownAddrs,
    ) -> io::Result<ConnId> {
        let serial = self.next_serial();
        let entry = self.descriptors.vacant_entry();
        let slot = entry.key();
        if let Some(stream) = stream.as_mut() {
            register_stream(
                self.poll.registry(),
                stream,
                mio::Token(slot),
                self.defaults.nodelay,
            )?;
        }
        let connecting = !life.is_connected();
        let mut conn = Connection::new(serial, stream, handler, life, &self.defaults, self.now);
        conn.addrs = addrs;
        entry.insert(Descriptor::Conn(conn));
        self.connections += 1;
        let id = ConnId { slot, serial };
        if connecting {
            let at = deadline(Instant::now(), self.defaults.connect_timeout);
            let timer = self
                .timers
                .insert(at, None, super::TimerTask::ConnectTimeout(id));
            if let Some(c) = self.conn_mut(id) {
                c.connect_timer = Some(timer);
            }
        }
        self.notify(id, |h, cx| h.post_init(cx));
        Ok(id)
    }

    pub(crate) fn on_connection_event(&mut self, id: ConnId, mut ready: Readiness) {
        if self.kernel_relay_event(id) {
            ready.readable = true;
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if ready.hangup {
            conn.hangup = true;
        }
        if ready.priority
            && let Some(stream) = conn.stream.as_mut()
        {
            stream.discard_urgent();
        }
        if matches!(conn.life, Life::Connecting { .. }) {
            self.finish_connect(id);
        } else if ready.error {
            // A reset is news even to a paused connection: nothing it queued can be
            // delivered and nothing more will arrive.
            let pending = conn.stream.as_ref().map(Stream::take_error);
            if let Some(Ok(Some(e)) | Err(e)) = pending {
                self.io_failed(id, &e);
                if !self
                    .conn(id)
                    .is_some_and(|c| c.life.delivering_before_failure())
                {
                    return;
                }
            }
        }
        if ready.writable || ready.hangup {
            self.flush(id);
        }
        if ready.readable || ready.hangup {
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            conn.unread = true;
            let is_child = matches!(conn.stream, Some(Stream::Child(_)));
            if is_child {
                self.read_child_stderr(id);
            }
            self.read_some(id);
        }
    }

    /// Completes (or fails) an in-flight connect after any event on it. A connection
    /// racing several addresses has no socket until one wins (`connect_race`).
    pub(crate) fn finish_connect(&mut self, id: ConnId) {
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(stream) = conn.stream.as_ref() else {
            return;
        };
        match stream.connect_outcome() {
            Ok(false) => {}
            Ok(true) => {
                conn.life.connected();
                conn.last_activity = now;
                if let Some(timer) = conn.connect_timer.take() {
                    self.timers.cancel(timer);
                }
                self.notify(id, |h, cx| h.connection_completed(cx));
                self.flush(id);
                self.kernel_relay_connected(id);
            }
            Err(e) => self.close_now(id, UnbindReason::from_io_error(&e)),
        }
    }

    /// Reads up to the per-event budget and hands each chunk to `receive_data`.
    pub(crate) fn read_some(&mut self, id: ConnId) {
        if self
            .conn(id)
            .is_some_and(|c| c.relay.is_some() && !c.is_lingering())
        {
            self.relay_some(id);
            return;
        }
        let now = self.now;
        let budget = self.conn(id).map_or(0, |c| c.reads_per_event);
        for _ in 0..budget {
            let Reactor {
                descriptors,
                read_buf,
                ..
            } = self;
            let Some(Descriptor::Conn(conn)) = descriptors.get_mut(id.slot) else {
                return;
            };
            if conn.serial != id.serial || !conn.unread || !conn.may_read() {
                return;
            }
            if conn.relay.is_some() && !conn.is_lingering() {
                // `receive_data` just started a relay: the rest is the relay's.
                self.relay_some(id);
                return;
            }
            let hangup = conn.hangup;
            let discard = conn.discard_input;
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            let result = if discard {
                stream.discard(DISCARD_CHUNK, read_buf)
            } else {
                stream.read(read_buf)
            };
            let asked = if discard {
                DISCARD_CHUNK
            } else {
                read_buf.len()
            };
            match classify(result) {
                Io::Eof => {
                    conn.unread = false;
                    self.on_peer_eof(id);
                    return;
                }
                Io::Progress(n) => {
                    conn.last_activity = now;
                    if n < asked && !hangup {
                        // The socket is drained; epoll and kqueue both report new
                        // arrivals as a new edge, so a short read ends the drain.
                        conn.unread = false;
                    }
                    if conn.is_lingering() || discard {
                        continue; // input after our close, or input nobody wants
                    }
                    if conn.tls.is_some() {
                        if !self.tls_received(id, n) {
                            return;
                        }
                        continue;
                    }
                    let buf = std::mem::take(&mut self.read_buf);
                    self.notify(id, |h, cx| h.receive_data(cx, &buf[..n]));
                    self.read_buf = buf;
                }
                Io::Drained => {
                    conn.unread = false;
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

    /// Queues `id` for reading next tick if readiness is waiting: the one way back in
    /// for a connection that could not (or may not) read everything now.
    pub(crate) fn schedule_read(&mut self, id: ConnId) {
        if self.conn(id).is_some_and(|c| c.unread) {
            self.carry_over.add(id.slot, id.serial);
        }
    }

    /// Writes as much of the outbound queue as the socket takes.
    pub(crate) fn flush(&mut self, id: ConnId) {
        if self
            .conn(id)
            .is_some_and(|c| c.kernel.is_some() && !c.outbound.is_empty())
            && !self.inbound_settled(id)
        {
            self.await_drain(id); // what the kernel relayed into it goes out first
            return;
        }
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn.life.may_flush() {
            return;
        }
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        if let Some(pipe) = conn.pipe.as_mut() {
            while pipe.len > 0 {
                match classify_write(pipe.drain_to(stream.write_fd())) {
                    Io::Progress(_) => conn.last_activity = now,
                    Io::Drained | Io::Eof => break,
                    Io::Retry => {}
                    Io::Failed(e) => {
                        self.io_failed(id, &e);
                        return;
                    }
                }
            }
            if pipe.len > 0 {
                self.kernel_output_queued(id);
                self.after_write_progress(id);
                return;
            }
        }
        while !conn.outbound.is_empty() {
            match classify_write(stream.write(conn.outbound.as_slice())) {
                Io::Progress(n) => {
                    conn.outbound.consume(n);
                    conn.last_activity = now;
                }
                Io::Drained | Io::Eof => break,
                Io::Retry => {}
                Io::Failed(e) => {
                    self.io_failed(id, &e);
                    return;
                }
            }
        }
        if conn.outbound.is_empty() && !conn.file_streams.is_empty() {
            self.pump_file(id);
        } else if !conn.outbound.is_empty() && conn.kernel.is_some() {
            self.kernel_output_queued(id);
        }
        self.after_write_progress(id);
    }

    /// Queues `data` from the handler or a relay: behind the last file if any is streaming,
    /// else for the wire now (through TLS if the connection speaks it).
    pub(crate) fn enqueue(&mut self, id: ConnId, data: &[u8]) -> bool {
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        if !conn.life.accepts_output() {
            return false;
        }
        if let Some(file) = conn.file_streams.back_mut() {
            file.after.push(data);
            if conn.pending_out() > conn.high_water {
                conn.above_high_water = true;
            }
            return true;
        }
        self.enqueue_accepted(id, data)
    }

    /// Queues bytes for the wire as they are, writing straight to the socket when nothing
    /// is queued ahead of them. TLS's own records (the rest of a handshake, its
    /// close_notify) are still taken while the write half is ending.
    pub(crate) fn enqueue_raw(&mut self, id: ConnId, data: &[u8]) -> bool {
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        let tls_while_ending = conn.tls.is_some() && conn.life.ends_writing();
        if !conn.life.accepts_output() && !tls_while_ending {
            return false;
        }
        self.write_or_queue(id, data)
    }

    /// Bytes already accepted (by `enqueue`, or before the write half began to end: a
    /// streaming file and what waited behind it) go out, through TLS if the connection
    /// speaks it.
    pub(crate) fn enqueue_accepted(&mut self, id: ConnId, data: &[u8]) -> bool {
        if self.conn(id).is_some_and(|c| c.tls.is_some()) {
            return self.tls_send(id, data);
        }
        self.write_or_queue(id, data)
    }

    /// Writes `data` to the socket if nothing is queued ahead of it, and queues the rest.
    fn write_or_queue(&mut self, id: ConnId, data: &[u8]) -> bool {
        let now = self.now;
        // Bytes the kernel relayed into a linked connection go out first (any other
        // connection is always settled).
        let settled = self.inbound_settled(id);
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        let mut rest = data;
        if conn.pending_on_wire() == 0 && conn.life.is_connected() && settled {
            let Some(stream) = conn.stream.as_mut() else {
                return false;
            };
            while !rest.is_empty() {
                match classify_write(stream.write(rest)) {
                    Io::Progress(n) => {
                        rest = &rest[n..];
                        conn.last_activity = now;
                    }
                    Io::Drained | Io::Eof => break,
                    Io::Retry => {}
                    Io::Failed(e) => {
                        self.io_failed(id, &e);
                        return false;
                    }
                }
            }
        }
        if !rest.is_empty() {
            conn.outbound.push(rest);
            if conn.pending_out() > conn.high_water {
                conn.above_high_water = true;
            }
            if conn.kernel.is_some() {
                self.kernel_output_queued(id);
            }
            if !settled {
                self.await_drain(id);
            }
        }
        true
    }

    /// After bytes left the queue: low-water notification, pending FIN, pending close.
    pub(crate) fn after_write_progress(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let pending = conn.pending_out();
        if let Some(source) = conn.relayed_from {
            self.wake_relay_source(source, pending);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.above_high_water && pending <= conn.low_water {
            conn.above_high_water = false;
            self.schedule_read(id);
            let told = self.with_handler_dyn(id, |h, cx| h.outbound_drained(cx));
            if told == Err(super::Unreachable::Busy) {
                // Reached from inside one of this connection's own callbacks (say
                // `set_water_marks`): tell it once that callback has returned.
                self.next_tick(move |r| {
                    let _ = r.with_handler_dyn(id, |h, cx| h.outbound_drained(cx));
                });
            }
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn.output_done() {
            return;
        }
        if conn.life.ends_writing() && conn.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            // A close_notify now would cut the handshake short: the end of our side
            // waits for it (its completion flushes again).
            return;
        }
        if conn.life.ends_writing() && conn.tls.is_some() && self.tls_close_notify(id) {
            // Our FIN waits for the close_notify ahead of it.
            self.flush(id);
            return;
        }
        if self
            .conn(id)
            .is_some_and(|c| c.kernel.is_some() && c.life.is_closing())
            && !self.kernel_relay_may_close(id)
        {
            // Bytes the kernel relayed into it are still on their way out: the close
            // (or FIN) waits for them.
            self.await_drain(id);
            return;
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let in_sockmap = conn.kernel.is_some();
        let stream = conn.stream.as_ref();
        let emptied = conn
            .life
            .queue_emptied(|| stream.is_some_and(|s| s.has_unread_input(in_sockmap)));
        match emptied {
            OnEmptied::Nothing => {}
            OnEmptied::Close(reason) => self.close_now(id, reason),
            OnEmptied::Linger(reason) => self.linger(id, reason),
            OnEmptied::SendFin { then_close } => {
                match conn.stream.as_mut().map(Stream::shutdown_write) {
                    Some(Err(e)) if e.kind() != io::ErrorKind::NotConnected => {
                        self.close_now(id, UnbindReason::from_io_error(&e));
                    }
                    _ if then_close => self.close_now(id, UnbindReason::PeerClosed),
                    _ => self.arm_half_close_timer(id),
                }
            }
        }
    }

    /// The queue of a connection closing after writing is empty, but the peer has sent
    /// input we never read (closing now would answer it with a reset): send FIN and
    /// linger, reading and discarding, until its FIN or `LINGER_TIMEOUT`.
    fn linger(&mut self, id: ConnId, reason: UnbindReason) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if let Some(Err(_)) = conn.stream.as_mut().map(Stream::shutdown_write) {
            self.close_now(id, reason);
            return;
        }
        let timer = self.timers.insert(
            Instant::now() + LINGER_TIMEOUT,
            None,
            super::TimerTask::Linger(id),
        );
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.life.linger(reason, timer);
        conn.unread = true;
        self.schedule_read(id);
    }

    /// A lingering close's timer fired.
    pub(crate) fn linger_expired(&mut self, id: ConnId) {
        if let Some(reason) = self.conn(id).and_then(|c| c.life.linger_expired()) {
            self.close_now(id, reason);
        }
    }

    pub(crate) fn on_peer_eof(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.life.peer_sending()
            && let Some(relay) = conn.relay
            && relay.remaining.is_none()
        {
            // Half-close passes through a relay: the target gets our peer's FIN.
            self.close_write(relay.target);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        match conn.life.peer_eof() {
            OnEof::Close(reason) => self.close_now(id, reason),
            OnEof::Wait => {}
            OnEof::AskHandler => {
                let mut action = PeerClosed::Close;
                self.notify(id, |h, cx| action = h.peer_closed(cx));
                if action == PeerClosed::Close {
                    self.close_after_writing(id, UnbindReason::PeerClosed);
                } else {
                    self.arm_half_close_timer(id);
                }
            }
        }
    }

    /// An I/O error ends the connection, but not before what the peer sent ahead of it:
    /// if received bytes are still unread (a peer that wrote, then reset), the write side
    /// is given up and reading carries on; the first EOF or error after them closes the
    /// connection with this error's reason (`failed`).
    pub(crate) fn io_failed(&mut self, id: ConnId, e: &io::Error) {
        let reason = UnbindReason::from_io_error(e);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let unread_input = conn.has_unread_input();
        if let OnFailure::Close(reason) = conn.life.io_failed(reason, unread_input) {
            self.close_now(id, reason);
            return;
        }
        conn.unread = true;
        conn.hangup = true;
        self.schedule_read(id);
        self.arm_half_close_timer(id);
    }

    /// Arms the half-close timer if the connection is half-closed and has a timeout.
    pub(crate) fn arm_half_close_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let Some(timeout) = conn.half_close_timeout else {
            return;
        };
        if conn.half_close_timer.is_some() || !conn.life.is_half_closed() {
            return;
        }
        let at = deadline(conn.last_activity, timeout);
        let timer = self
            .timers
            .insert(at, None, super::TimerTask::HalfClose(id));
        if let Some(conn) = self.conn_mut(id) {
            conn.half_close_timer = Some(timer);
        }
    }

    /// The half-close timer fired: close if nothing moved for the timeout, else re-arm
    /// for the time left.
    pub(crate) fn half_close_check(&mut self, id: ConnId) {
        self.refresh_kernel_activity(id);
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.half_close_timer = None;
        let Some(timeout) = conn.half_close_timeout else {
            return;
        };
        if now >= deadline(conn.last_activity, timeout) {
            self.close_now(id, UnbindReason::HalfCloseTimeout);
        } else {
            self.arm_half_close_timer(id);
        }
    }

    /// Closes now, dropping the queue: `unbind` follows when the tick reaps it. The
    /// first close-now wins; it overrides a close after writing and a linger.
    pub(crate) fn close_now(&mut self, id: ConnId, reason: UnbindReason) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(linger_timer) = conn.life.close_now(reason) else {
            return;
        };
        if let Some(timer) = linger_timer {
            self.timers.cancel(timer);
        }
        self.pending_close.add(id);
    }

    /// Stops reading and closes once the queue is written (lingering first if the peer
    /// sent input we never read). The first close wins.
    pub(crate) fn close_after_writing(&mut self, id: ConnId, reason: UnbindReason) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let nothing_queued = conn.output_done();
        if !conn.life.close_after_writing(reason.clone()) || !nothing_queued {
            return;
        }
        if conn.life.is_connected() {
            self.after_write_progress(id);
        } else {
            self.close_now(id, reason); // nothing to deliver: no need to connect first
        }
    }

    /// Tears down a connection `reap` took out of the slab, then runs its `unbind` (or,
    /// for a child process still running, hands it to the exit watcher).
    pub(crate) fn retire_connection(&mut self, id: ConnId, mut conn: Connection) {
        self.connections -= 1;
        let mut child = None;
        if let Some(mut stream) = conn.stream.take() {
            // A socket of ours leaves the poller as it closes, just below (its descriptor
            // is its only one: sockets are close-on-exec and never duplicated), so only
            // an attached descriptor and a child's pipes, which may outlive this, are
            // deregistered first: one `epoll_ctl` less per connection.
            if !matches!(stream, Stream::Tcp(_) | Stream::Unix(_)) {
                stream.deregister(self.poll.registry());
            }
            if let Stream::Child(mut pipes) = stream {
                // What the child wrote to stderr before its stdout closed still counts.
                if let Some(handler) = conn.handler.as_mut() {
                    let mut buf = [0u8; 4096];
                    let mut left = STDERR_DRAIN_LIMIT;
                    while left > 0 {
                        match pipes.read_stderr(&mut buf) {
                            Ok(Some(n)) => {
                                let stderr = &buf[..n];
                                let delivered = self.contain(Some(id), |r| {
                                    handler.receive_stderr(&mut crate::Context::new(r, id), stderr);
                                });
                                if delivered.is_none() {
                                    break;
                                }
                                left = left.saturating_sub(n);
                            }
                            _ => break,
                        }
                    }
                }
                child = Some(pipes.into_child());
            }
        }
        let linger_timer = conn.life.linger_timer();
        let handshake_timer = conn.tls.as_mut().and_then(|t| t.take_handshake_timer());
        for timer in [
            handshake_timer,
            conn.connect_timer,
            conn.inactivity.map(|i| i.timer),
            linger_timer,
            conn.half_close_timer,
        ]
        .into_iter()
        .flatten()
        {
            self.timers.cancel(timer);
        }
        self.kernel_relay_gone(&mut conn);
        let reason = conn.life.unbind_reason();
        for file in conn.file_streams.drain(..) {
            self.abandon_file_stream(file, reason.clone());
        }
        let relay_target = conn.relay.map(|r| r.target);
        if let Some(handler) = conn.handler.take() {
            // Let `proxied_bytes` answer for this id while its unbind runs.
            self.unbinding = Some((id, conn.proxied_bytes));
            match child {
                Some(child) => self.await_child_exit(id, child, handler),
                None => self.run_unbind(id, handler, reason),
            }
            self.unbinding = None;
        }
        self.relay_endpoint_gone(id, relay_target, conn.relayed_from);
    }
}
