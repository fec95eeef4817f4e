//! What one client session did, for an access log: who came, which backends it used,
//! how long the connects took, the bytes each way, and how every side ended
//! ([`SessionRecord`], [`BackendRecord`]). The core fills one in as the session runs and
//! hands it to [`Options::on_session_end`](super::Options::on_session_end) once the
//! client is gone; nothing here decides anything.
//!
//! Bytes are counted where the proxy moves them: copied through a hook or the core, and
//! carried by the descriptor relay (`splice`), read from the reactor when a side ends.
//! Bytes to the client are those handed to the client's connection (queued), which is
//! what was written unless the client vanished with a queue.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::UnbindReason;

/// One client session, from accept to the client's unbind.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// The session's id: 1 for the server's first client, then in order of arrival. Every
    /// log line about the session carries it as `#id`.
    pub id: u64,
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// The local address the client connected to.
    pub listener: Option<SocketAddr>,
    /// When the client was accepted.
    pub started: SystemTime,
    /// From accept to the client's unbind.
    pub duration: Duration,
    /// Bytes read from the client.
    pub bytes_from_client: u64,
    /// Bytes sent to the client.
    pub bytes_to_client: u64,
    /// How the client's connection ended.
    pub client_end: UnbindReason,
    /// What the client's TLS handshake settled, on a listener that terminates TLS.
    pub tls: Option<crate::tls::TlsInfo>,
    /// Every backend the session opened (or tried to), in the order they ended.
    pub backends: Vec<BackendRecord>,
}

impl SessionRecord {
    /// The primary backends (not shadows).
    pub fn primaries(&self) -> impl Iterator<Item = &BackendRecord> {
        self.backends.iter().filter(|b| !b.shadow)
    }

    /// The shadow backends.
    pub fn shadows(&self) -> impl Iterator<Item = &BackendRecord> {
        self.backends.iter().filter(|b| b.shadow)
    }
}

/// One backend of a session.
#[derive(Clone, Debug)]
pub struct BackendRecord {
    /// Its name in the session (`relay`, `duplex_0`, …).
    pub name: String,
    /// Where it went: the last address tried (after retries, the one that answered).
    pub target: String,
    /// A shadow: its answers never reached the client.
    pub shadow: bool,
    /// Connects retried (on this backend or, redispatched, another).
    pub retries: u32,
    /// From the first connect attempt until one succeeded; `None` if none did.
    pub connect_time: Option<Duration>,
    /// Bytes sent to it.
    pub bytes_sent: u64,
    /// Bytes received from it.
    pub bytes_received: u64,
    /// How its connection ended (for the client's purposes: `ClosedByUs` if the client
    /// left first and it was still open).
    pub end: UnbindReason,
    /// A shadow cut off for falling behind.
    pub cut_off: bool,
}
