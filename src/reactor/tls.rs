//! TLS on a stream connection (EventMachine's `start_tls`), on rustls, which does no I/O
//! of its own: the reactor moves ciphertext between the socket and rustls, and the
//! handler keeps seeing plaintext in `receive_data` and writing it with `send_data`.
//!
//! Where it plugs in (everything else about a connection is unchanged):
//! - **Reading**: bytes read from the socket go into rustls; what it decrypts goes to
//!   `receive_data`; handshake replies and alerts it produces go out at once. The peer's
//!   `close_notify` (or a FIN without one) is the peer's EOF, as for plain TCP.
//! - **Writing**: `send_data` hands plaintext to rustls and queues the ciphertext it
//!   produces in the connection's outbound queue: water marks and backpressure count
//!   ciphertext, plus the plaintext rustls holds until the handshake is done.
//! - **Ending the write half**: before our FIN (`close_write`, `close_after_writing`)
//!   goes `close_notify`, after everything queued.
//! - **Failures**: a handshake or record error sends its alert and closes that
//!   connection alone with [`UnbindReason::TlsFailed`] naming the error; a handshake
//!   that does not finish within the handshake timeout (10 s by default) closes it the
//!   same way.
//! - The descriptor relay (`proxy_incoming_to`) refuses a TLS connection at either end:
//!   its bytes must pass through rustls.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::{Reactor, TimerTask};
use crate::handler::UnbindReason;
use crate::id::{ConnId, TimerId};

/// How long a TLS handshake may take by default.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Plaintext decrypted per step, at most.
const PLAINTEXT_CHUNK: usize = 16 * 1024;

/// One connection's TLS state.
pub(crate) struct TlsLayer {
    session: Connection,
    /// Until the handshake is done: the timer that ends it.
    handshake_timer: Option<TimerId>,
    /// Plaintext handed to rustls before the handshake completed (it holds it until then).
    held_plaintext: usize,
    /// Our `close_notify` is queued.
    close_notify_sent: bool,
}

impl TlsLayer {
    /// Bytes accepted from the handler and not yet in the outbound queue.
    pub(crate) fn held(&self) -> usize {
        self.held_plaintext
    }

    /// Whether the handshake is still going: until it ends, nothing queued can be sent.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    pub(crate) fn take_handshake_timer(&mut self) -> Option<TimerId> {
        self.handshake_timer.take()
    }
}

/// What a handshake settled, for `tls_handshake_completed` and [`Reactor::tls_info`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub protocol: Option<String>,
    /// The cipher suite, as rustls names it.
    pub cipher_suite: Option<String>,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<Vec<u8>>,
    /// On a server: the name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The peer's certificate chain, DER, leaf first (a client's only with mutual TLS).
    pub peer_certificates: Vec<Vec<u8>>,
}

impl Reactor {
    /// Starts TLS as the server on connection `id` (for a connection accepted by a
    /// server, typically in `post_init`). Bytes already queued go out in the clear
    /// first, as STARTTLS wants; everything after is encrypted. `Err` if the connection
    /// is gone or already speaks TLS.
    pub fn start_tls_server(&mut self, id: ConnId, config: Arc<ServerConfig>) -> io::Result<()> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        self.start_tls(id, Connection::Server(session))
    }

    /// Starts TLS as the client on connection `id`, verifying the server as `config`
    /// says (see [`crate::tls::ClientTls`]) under `server_name`, which is also sent as SNI
    /// when it is a DNS name.
    pub fn start_tls_client(
        &mut self,
        id: ConnId,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<()> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let session = ClientConnection::new(config, name).map_err(io::Error::other)?;
        self.start_tls(id, Connection::Client(session))
    }

    /// How long handshakes started from now on may take (default
    /// [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`]).
    pub fn set_tls_handshake_timeout(&mut self, timeout: Duration) {
        self.tls_handshake_timeout = timeout;
    }

    /// What connection `id`'s handshake settled; `None` before it completes, or without
    /// TLS.
    pub fn tls_info(&self, id: ConnId) -> Option<TlsInfo> {
        let tls = self.conn(id)?.tls.as_ref()?;
        let session = &tls.session;
        if session.is_handshaking() {
            return None;
        }
        Some(TlsInfo {
            protocol: session.protocol_version().map(|v| format!("{v:?}")),
            cipher_suite: session
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            server_name: match session {
                Connection::Server(s) => s.server_name().map(str::to_owned),
                Connection::Client(_) => None,
            },
            peer_certificates: session
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.as_ref().to_vec()).collect())
                .unwrap_or_default(),
        })
    }

    /// Whether connection `id` speaks TLS.
    pub fn is_tls(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.tls.is_some())
    }

    fn start_tls(&mut self, id: ConnId, mut session: Connection) -> io::Result<()> {
        // rustls buffers what it cannot send yet (before the handshake is done); the
        // limit is ours: the outbound queue's water marks.
        session.set_buffer_limit(None);
        let timeout = self.tls_handshake_timeout;
        let Some(conn) = self.conn_mut(id) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such connection",
            ));
        };
        if conn.tls.is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "already TLS"));
        }
        if conn.relay.is_some() || conn.relayed_from.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a relayed connection cannot start TLS",
            ));
        }
        let timer = self
            .timers
            .insert(Instant::now() + timeout, None, TimerTask::TlsHandshake(id));
        if let Some(conn) = self.conn_mut(id) {
            conn.tls = Some(Box::new(TlsLayer {
                session,
                handshake_timer: Some(timer),
                held_plaintext: 0,
                close_notify_sent: false,
            }));
        }
        // A client speaks first: its ClientHello is queued now.
        self.tls_push(id);
        Ok(())
    }

    /// The handshake timer fired.
    pub(crate) fn tls_handshake_expired(&mut self, id: ConnId) {
        if let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) {
            tls.handshake_timer = None;
            if tls.session.is_handshaking() {
                self.close_now(
                    id,
                    UnbindReason::TlsFailed("the handshake timed out".into()),
                );
            }
        }
    }

    /// Plaintext from the handler: into rustls, and the ciphertext out. Returns `false`
    /// if the connection is gone.
    pub(crate) fn tls_send(&mut self, id: ConnId, data: &[u8]) -> bool {
        let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) else {
            return false;
        };
        if tls.close_notify_sent {
            return false;
        }
        if tls.session.writer().write_all(data).is_err() {
            return false;
        }
        if tls.session.is_handshaking() {
            tls.held_plaintext += data.len();
        }
        self.tls_push(id);
        true
    }

    /// Moves every byte rustls has to send into the outbound queue (writing at once when
    /// nothing is queued ahead).
    pub(crate) fn tls_push(&mut self, id: ConnId) {
        let mut ciphertext = std::mem::take(&mut self.tls_out);
        while let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) {
            if !tls.session.wants_write() {
                break;
            }
            ciphertext.clear();
            if tls.session.write_tls(&mut ciphertext).is_err() || ciphertext.is_empty() {
                break;
            }
            if !self.enqueue_raw(id, &ciphertext) {
                break;
            }
        }
        self.tls_out = ciphertext;
    }

    /// `n` bytes just read from the socket into `read_buf` are ciphertext: decrypt them
    /// and hand the plaintext to `receive_data`. Returns `false` once the connection has
    /// failed or the peer has ended its side (stop reading).
    pub(crate) fn tls_received(&mut self, id: ConnId, n: usize) -> bool {
        let input = std::mem::take(&mut self.read_buf);
        let delivered = self.tls_feed(id, &input[..n]);
        self.read_buf = input;
        delivered
    }

    /// Ciphertext that was read before TLS started (after a PROXY header, say): handled
    /// as if it had just arrived.
    pub(crate) fn tls_received_early(&mut self, id: ConnId, input: &[u8]) {
        self.tls_feed(id, input);
    }

    fn tls_feed(&mut self, id: ConnId, mut input: &[u8]) -> bool {
        while !input.is_empty() {
            let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) else {
                return false;
            };
            match tls.session.read_tls(&mut input) {
                Ok(_) => {}
                Err(e) => {
                    self.tls_failed(id, e.to_string());
                    return false;
                }
            }
            if !self.tls_process(id) {
                return false;
            }
        }
        true
    }

    /// Lets rustls process what it received: handshake progress, plaintext for the
    /// handler, the peer's close_notify. Returns whether to keep reading.
    fn tls_process(&mut self, id: ConnId) -> bool {
        let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) else {
            return false;
        };
        let was_handshaking = tls.session.is_handshaking();
        let state = match tls.session.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // Queue the alert rustls prepared, then close.
                self.tls_push(id);
                self.flush(id);
                self.tls_failed(id, e.to_string());
                return false;
            }
        };
        let peer_closed = state.peer_has_closed();
        if was_handshaking && !tls.session.is_handshaking() {
            tls.held_plaintext = 0;
            if let Some(timer) = tls.handshake_timer.take() {
                self.timers.cancel(timer);
            }
            // Plaintext held during the handshake can go now, and a streaming file after it.
            self.tls_push(id);
            self.flush(id);
            self.notify(id, |h, cx| h.tls_handshake_completed(cx));
        }
        self.tls_push(id);
        let mut plain = std::mem::take(&mut self.tls_buf);
        plain.resize(PLAINTEXT_CHUNK, 0);
        while let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) {
            match tls.session.reader().read(&mut plain) {
                Ok(0) => break,
                Ok(n) => self.notify(id, |h, cx| h.receive_data(cx, &plain[..n])),
                Err(_) => break, // WouldBlock: nothing more decrypted for now
            }
        }
        self.tls_buf = plain;
        if peer_closed {
            self.on_peer_eof(id);
            return false;
        }
        self.conn(id).is_some()
    }

    fn tls_failed(&mut self, id: ConnId, why: String) {
        self.close_now(id, UnbindReason::TlsFailed(why.into()));
    }

    /// Before our FIN: the `close_notify`, once. Returns `true` if it was queued now (the
    /// caller waits for it to be written before the FIN).
    pub(crate) fn tls_close_notify(&mut self, id: ConnId) -> bool {
        let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) else {
            return false;
        };
        if tls.close_notify_sent {
            return false;
        }
        tls.close_notify_sent = true;
        tls.session.send_close_notify();
        self.tls_push(id);
        true
    }
}
