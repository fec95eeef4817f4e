//! Starting an admin server: [`serve`] / [`serve_with`], its [`Limits`], and the
//! [`AdminServer`] they return.
//!
//! An admin server is an ordinary reactor server whose handler factory makes one
//! [`AdminConnection`](super::connection::AdminConnection) per accepted socket. What its
//! connections share — the routes, the limits, how many of them are open — is
//! [`ServerState`], owned here and only read or counted by the connections.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::{IntoSocketAddr, Reactor, ServerId};

use super::connection::AdminConnection;
use super::routes::Routes;
use super::stats::AdminStats;

/// The default [`Limits::max_connections`]: 64.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// The default [`Limits::idle_timeout`]: 10 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [`Limits::request_timeout`]: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [`Limits::max_request_head`]: 8 KiB.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The default [`Limits::max_request_body`]: 8 KiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 8 * 1024;
/// The default high-water mark of [`Limits::response_water_marks`]: 64 KiB.
pub const DEFAULT_RESPONSE_HIGH_WATER: usize = 64 * 1024;
/// The default low-water mark of [`Limits::response_water_marks`]: 16 KiB.
pub const DEFAULT_RESPONSE_LOW_WATER: usize = 16 * 1024;
/// Pipelined requests one connection may have answered before the loop turns to other
/// descriptors; the rest are answered on the next turn.
pub const REQUESTS_PER_TURN: usize = 16;

/// What one admin server allows its clients, so that none of them can slow the traffic
/// sharing its reactor. `Limits::default()` is what [`serve`] uses; the
/// [module docs](super) explain each limit.
#[derive(Clone, Debug)]
pub struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_request_head: usize,
    pub(crate) max_request_body: usize,
    pub(crate) response_high_water: usize,
    pub(crate) response_low_water: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            response_high_water: DEFAULT_RESPONSE_HIGH_WATER,
            response_low_water: DEFAULT_RESPONSE_LOW_WATER,
        }
    }
}

impl Limits {
    /// The defaults.
    pub fn new() -> Limits {
        Limits::default()
    }

    /// At most `n` (at least 1) connections open at once; one accepted beyond them is
    /// closed at once, without an answer.
    pub fn max_connections(mut self, n: usize) -> Limits {
        self.max_connections = n.max(1);
        self
    }

    /// Closes a connection after this long without a byte moving either way (the
    /// reactor's comm-inactivity timeout).
    pub fn idle_timeout(mut self, timeout: Duration) -> Limits {
        self.idle_timeout = timeout;
        self
    }

    /// A request must arrive whole within this long of its first byte; otherwise it is
    /// answered with 408 and the connection closed.
    pub fn request_timeout(mut self, timeout: Duration) -> Limits {
        self.request_timeout = timeout;
        self
    }

    /// The longest request line plus headers, in bytes (at least 1); longer is 414 or 431.
    pub fn max_request_head(mut self, bytes: usize) -> Limits {
        self.max_request_head = bytes.max(1);
        self
    }

    /// The longest request body, in bytes; a longer `Content-Length` is 413.
    pub fn max_request_body(mut self, bytes: usize) -> Limits {
        self.max_request_body = bytes;
        self
    }

    /// While more than `high` bytes of responses wait for a client to read them, its
    /// further requests are neither read nor answered, until no more than `low` wait.
    pub fn response_water_marks(mut self, high: usize, low: usize) -> Limits {
        self.response_high_water = high;
        self.response_low_water = low.min(high);
        self
    }
}

/// What every connection of one admin server shares.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) routes: Routes,
    pub(crate) limits: Limits,
    /// Connections holding one of the `max_connections` places.
    pub(crate) open: Cell<usize>,
    pub(crate) stats: AdminStats,
}

impl ServerState {
    /// Takes a place for a new connection, if one is free.
    pub(crate) fn admit(&self) -> bool {
        let open = self.open.get();
        if open >= self.limits.max_connections {
            self.stats.connection_over_limit();
            return false;
        }
        self.open.set(open + 1);
        self.stats.connection_opened();
        true
    }

    /// Gives back the place of a connection that [`admit`](Self::admit) let in.
    pub(crate) fn leave(&self) {
        self.open.set(self.open.get() - 1);
        self.stats.connection_closed();
    }
}

/// Starts an admin server on `addr` with [`Limits::default`]; `routes` answer its
/// requests, on the reactor thread.
///
/// ```no_run
/// use ember::Reactor;
/// use ember::admin::{self, Response, Routes};
///
/// Reactor::run(|r| {
///     admin::serve(r, "127.0.0.1:9090", Routes::new().get("/healthz", |_| Response::text(200, "ok\n")))?;
///     r.stop_on_signals()
/// })
/// .unwrap();
/// ```
pub fn serve(
    r: &mut Reactor,
    addr: impl IntoSocketAddr,
    routes: Routes,
) -> io::Result<AdminServer> {
    serve_with(r, addr, routes, Limits::default())
}

/// [`serve`] with other [`Limits`].
pub fn serve_with(
    r: &mut Reactor,
    addr: impl IntoSocketAddr,
    routes: Routes,
    limits: Limits,
) -> io::Result<AdminServer> {
    let stats = AdminStats::default();
    let state = Rc::new(ServerState {
        routes,
        limits,
        open: Cell::new(0),
        stats: stats.clone(),
    });
    let id = r.start_server(addr, move || AdminConnection::new(Rc::clone(&state)))?;
    Ok(AdminServer {
        id,
        local_addr: r.server_addr(id),
        stats,
    })
}

/// A running admin server.
#[derive(Clone, Debug)]
pub struct AdminServer {
    id: ServerId,
    local_addr: Option<SocketAddr>,
    stats: AdminStats,
}

impl AdminServer {
    /// The reactor server behind it (for [`Reactor::stop_server`]).
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// The address it listens on, with the real port if it asked for port 0.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Its counters; clones can be sent to other threads.
    pub fn stats(&self) -> &AdminStats {
        &self.stats
    }
}
