//! Starting a proxy: [`Options`], [`start`] / [`start_with_state`], and the
//! [`ProxyServer`] they return (em-proxy's `Proxy.start`).
//!
//! A proxy server is an ordinary reactor server whose handler factory makes one client
//! connection per accepted socket and runs the user's setup closure on it. The settings
//! live here as the user writes them; what a running server derives from them and
//! shares with its clients and backends is `config.rs`.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::{IntoSocketAddr, Reactor, ServerId};

use super::client::Client;
use super::config::Config;
use super::record::SessionRecord;
use super::session::{Setup, SharedSetup};
use super::stats::Stats;

/// The default [`Options::shadow_buffer`]: 4 MiB.
pub const DEFAULT_SHADOW_BUFFER: usize = 4 * 1024 * 1024;
/// The default [`Options::drain_timeout`]: 30 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`Options::fin_timeout`]: 5 s.
pub const DEFAULT_FIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The default [`Options::shadow_drain_timeout`]: 2 s.
pub const DEFAULT_SHADOW_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The default [`Options::shadow_connect_timeout`]: 3 s.
pub const DEFAULT_SHADOW_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What a shadow may queue while it is still connecting, when that is more than
/// [`Options::shadow_buffer`]: a burst sent before the connect completes is not the
/// shadow falling behind.
pub const SHADOW_CONNECT_ALLOWANCE: usize = 1024 * 1024;
/// The default buffer size for the descriptor-level relay (em-proxy passes 10240).
pub const DEFAULT_RELAY_BUFSIZE: usize = 64 * 1024;

/// How a proxy server treats its clients and backends. `Options::default()` is what
/// [`start`] uses.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) verbose: bool,
    pub(crate) label: String,
    pub(crate) shadow_buffer: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) relay_bufsize: usize,
    pub(crate) nodelay: bool,
    pub(crate) fin_timeout: Option<Duration>,
    pub(crate) shadow_max_connections: Option<usize>,
    pub(crate) shadow_max_memory: Option<usize>,
    pub(crate) shadow_drain_timeout: Duration,
    pub(crate) shadow_connect_timeout: Duration,
    pub(crate) client_timeout: Option<Duration>,
    pub(crate) server_timeout: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) session_log: Option<SessionLog>,
    pub(crate) stats: Option<Stats>,
    pub(crate) accept_proxy: bool,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Where a proxy server's listener comes from.
enum Listening {
    Bind(SocketAddr),
    Adopt(std::net::TcpListener),
}

/// What [`Options::on_session_end`] calls.
#[derive(Clone)]
pub(crate) struct SessionLog(pub(crate) Arc<dyn Fn(&SessionRecord) + Send + Sync>);

impl fmt::Debug for SessionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionLog")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verbose: false,
            label: "ember-proxy".into(),
            shadow_buffer: DEFAULT_SHADOW_BUFFER,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            connect_timeout: None,
            relay_bufsize: DEFAULT_RELAY_BUFSIZE,
            nodelay: true,
            fin_timeout: Some(DEFAULT_FIN_TIMEOUT),
            shadow_max_connections: None,
            shadow_max_memory: None,
            shadow_drain_timeout: DEFAULT_SHADOW_DRAIN_TIMEOUT,
            shadow_connect_timeout: DEFAULT_SHADOW_CONNECT_TIMEOUT,
            client_timeout: None,
            server_timeout: None,
            max_connections: None,
            session_log: None,
            stats: None,
            accept_proxy: false,
            tls: None,
        }
    }
}

impl Options {
    /// The defaults.
    pub fn new() -> Options {
        Options::default()
    }

    /// Whether verbose logging is on.
    pub fn is_verbose(&self) -> bool {
        self.verbose
    }

    /// Logs connections, backend outcomes and shadow cut-offs on stderr (em-proxy's
    /// `:debug`, the binary's `-v`).
    pub fn verbose(mut self, on: bool) -> Options {
        self.verbose = on;
        self
    }

    /// The prefix of every log line (default `ember-proxy`).
    pub fn label(mut self, label: impl Into<String>) -> Options {
        self.label = label.into();
        self
    }

    /// How many bytes may wait for one shadow backend before it is cut off (closed,
    /// counted in [`Stats::shadow_cutoffs`], logged when verbose). A shadow never slows
    /// the client; this bound is what it costs in memory instead. What was queued while
    /// the shadow was still connecting does not count as falling behind (up to
    /// [`SHADOW_CONNECT_ALLOWANCE`]), as long as the shadow works it off.
    pub fn shadow_buffer(mut self, bytes: usize) -> Options {
        self.shadow_buffer = bytes;
        self
    }

    /// How long backends may take, once their client is gone, to take the rest of what
    /// was sent to them and close; after that they are closed regardless.
    pub fn drain_timeout(mut self, timeout: Duration) -> Options {
        self.drain_timeout = timeout;
        self
    }

    /// The pending-connect timeout for backends (the reactor's default otherwise, 20 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = Some(timeout);
        self
    }

    /// At most `n` clients at once (HAProxy's `maxconn`): at the limit the proxy stops
    /// accepting, so new clients wait in the kernel's listen backlog (1024 by default)
    /// and are accepted as others leave. Default: no limit.
    pub fn max_connections(mut self, n: usize) -> Options {
        self.max_connections = Some(n.max(1));
        self
    }

    /// Closes a client connection with
    /// [`UnbindReason::InactivityTimeout`](crate::UnbindReason::InactivityTimeout) after
    /// this long without a byte either way (HAProxy's `timeout client`; default none).
    pub fn client_timeout(mut self, timeout: Option<Duration>) -> Options {
        self.client_timeout = timeout;
        self
    }

    /// Closes a backend connection after this long without a byte either way (HAProxy's
    /// `timeout server`; default none).
    pub fn server_timeout(mut self, timeout: Option<Duration>) -> Options {
        self.server_timeout = timeout;
        self
    }

    /// The buffer size used by the descriptor-level relay for `relay_client` and
    /// `relay_server` backends.
    pub fn relay_bufsize(mut self, bytes: usize) -> Options {
        self.relay_bufsize = bytes.max(1);
        self
    }

    /// `TCP_NODELAY` on clients and backends (default on, as HAProxy does): a proxy must
    /// never hold a small segment back waiting for an ACK (Nagle's algorithm against a
    /// delayed ACK costs up to 40 ms per request).
    pub fn nodelay(mut self, on: bool) -> Options {
        self.nodelay = on;
        self
    }

    /// How long a client or backend connection may stay idle once one direction has
    /// ended (a FIN either way) before it is closed (HAProxy's `timeout client-fin` and
    /// `server-fin`; default 5 s). Any byte moving restarts the clock. `None` waits
    /// forever, so a peer that half-closes and goes silent pins two descriptors.
    pub fn fin_timeout(mut self, timeout: Option<Duration>) -> Options {
        self.fin_timeout = timeout;
        self
    }

    /// At most this many shadow connections at once, across all clients; sessions that
    /// start beyond it skip their shadows (counted in [`Stats::shadows_skipped`]). Default:
    /// a quarter of the descriptor limit when the proxy starts.
    pub fn shadow_max_connections(mut self, connections: usize) -> Options {
        self.shadow_max_connections = Some(connections);
        self
    }

    /// At most this much memory for shadow queues, across all clients; each shadow
    /// reserves what it may hold (`shadow_buffer`, or [`SHADOW_CONNECT_ALLOWANCE`] if
    /// that is more: a shadow that is still connecting may queue that much, and once
    /// connected it may work that backlog off), and sessions that would exceed the total
    /// skip their shadows. Default: an eighth of physical memory.
    pub fn shadow_max_memory(mut self, bytes: usize) -> Options {
        self.shadow_max_memory = Some(bytes);
        self
    }

    /// How long a shadow may take, once its client is gone, to take what was sent to it
    /// (default 2 s; primaries get [`drain_timeout`](Self::drain_timeout)).
    pub fn shadow_drain_timeout(mut self, timeout: Duration) -> Options {
        self.shadow_drain_timeout = timeout;
        self
    }

    /// The pending-connect timeout for shadows (default 3 s): a blackholed shadow gives
    /// up its descriptor quickly.
    pub fn shadow_connect_timeout(mut self, timeout: Duration) -> Options {
        self.shadow_connect_timeout = timeout;
        self
    }

    /// Calls `log` with each client session's [`SessionRecord`] when the client is gone:
    /// the facts of an access-log line (addresses, backends and retries, connect time,
    /// bytes each way, duration, how every side ended, shadow outcomes). It runs on the
    /// reactor thread: hand the record off (format it into a buffer), don't block.
    /// (`Send + Sync` so that `Options` stay `Send`: build them on any thread.)
    pub fn on_session_end(
        mut self,
        log: impl Fn(&SessionRecord) + Send + Sync + 'static,
    ) -> Options {
        self.session_log = Some(SessionLog(Arc::new(log)));
        self
    }

    /// Every client must start with a PROXY protocol header, v1 or v2 (HAProxy's
    /// `accept-proxy`: the proxy sits behind a balancer that sends one). The setup runs
    /// once the header is in, and the client's address everywhere (`peer`, `sock`, logs,
    /// `source` balancing, headers sent on with [`Backend::send_proxy`](super::Backend::send_proxy))
    /// is the header's. A client whose first bytes are not a valid header is closed with
    /// a warning; one that sends nothing meets the client timeout.
    pub fn accept_proxy(mut self, on: bool) -> Options {
        self.accept_proxy = on;
        self
    }

    /// Terminates TLS on the listener: every client's bytes are decrypted before the hooks
    /// (and the backends) see them; see [`crate::tls::ServerTls`] for certificates chosen by
    /// SNI and client certificates. With [`accept_proxy`](Self::accept_proxy), the PROXY
    /// header comes first, in the clear, as from HAProxy.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Options {
        self.tls = Some(config);
        self
    }

    /// Counts into `stats` instead of a fresh set of counters: several servers (one per
    /// worker thread, say) sharing one `Stats` report their sum.
    pub fn stats(mut self, stats: Stats) -> Options {
        self.stats = Some(stats);
        self
    }

    /// Starts a proxy on `addr`; `setup` runs for every accepted client, the way
    /// em-proxy's `Proxy.start` block does.
    pub fn start(
        self,
        r: &mut Reactor,
        addr: impl IntoSocketAddr,
        setup: impl FnMut(&mut Setup<'_, ()>) + 'static,
    ) -> io::Result<ProxyServer> {
        self.start_with_state(r, addr, || (), setup)
    }

    /// Starts a proxy whose clients each carry a state `S`, made by `init` when the client
    /// is accepted and reachable from every hook through [`Session::state`](super::Session::state).
    pub fn start_with_state<S: 'static>(
        self,
        r: &mut Reactor,
        addr: impl IntoSocketAddr,
        init: impl FnMut() -> S + 'static,
        setup: impl FnMut(&mut Setup<'_, S>) + 'static,
    ) -> io::Result<ProxyServer> {
        let addr = addr.into_socket_addr()?;
        self.start_listening(r, Listening::Bind(addr), init, setup)
    }

    /// [`start_with_state`](Self::start_with_state) on a socket that is already
    /// listening (passed by systemd's socket activation, say; see
    /// [`Reactor::attach_server`]).
    pub fn start_on<S: 'static>(
        self,
        r: &mut Reactor,
        listener: std::net::TcpListener,
        init: impl FnMut() -> S + 'static,
        setup: impl FnMut(&mut Setup<'_, S>) + 'static,
    ) -> io::Result<ProxyServer> {
        self.start_listening(r, Listening::Adopt(listener), init, setup)
    }

    fn start_listening<S: 'static>(
        self,
        r: &mut Reactor,
        listening: Listening,
        mut init: impl FnMut() -> S + 'static,
        setup: impl FnMut(&mut Setup<'_, S>) + 'static,
    ) -> io::Result<ProxyServer> {
        let stats = self.stats.clone().unwrap_or_default();
        let config = Rc::new(Config::new(self, stats.clone()));
        let setup: SharedSetup<S> = Rc::new(RefCell::new(setup));
        let shared = Rc::clone(&config);
        let factory = move || Client::new(Rc::clone(&shared), Rc::clone(&setup), init());
        let id = match listening {
            Listening::Bind(addr) => r.start_server(addr, factory)?,
            Listening::Adopt(listener) => r.attach_server(listener, factory)?,
        };
        config.server.set(Some(id));
        Ok(ProxyServer {
            id,
            local_addr: r.server_addr(id),
            stats,
        })
    }
}

/// Starts a proxy on `addr` with default [`Options`]; `setup` runs for every accepted
/// client (em-proxy's `Proxy.start(host:, port:) { |conn| ... }`).
///
/// ```no_run
/// use ember::Reactor;
/// use ember::proxy::{self, Relay};
///
/// Reactor::run(|r| {
///     proxy::start(r, "0.0.0.0:8080", |conn| {
///         conn.server("srv", "127.0.0.1:8081");
///         conn.on_data(|_, data| Relay::All(data.to_vec()));
///         conn.on_response(|_, _backend, resp| Some(resp.to_vec()));
///     })?;
///     r.stop_on_signals()
/// })
/// .unwrap();
/// ```
pub fn start(
    r: &mut Reactor,
    addr: impl IntoSocketAddr,
    setup: impl FnMut(&mut Setup<'_, ()>) + 'static,
) -> io::Result<ProxyServer> {
    Options::default().start(r, addr, setup)
}

/// [`start`] with a per-client state `S` (see [`Options::start_with_state`]).
pub fn start_with_state<S: 'static>(
    r: &mut Reactor,
    addr: impl IntoSocketAddr,
    init: impl FnMut() -> S + 'static,
    setup: impl FnMut(&mut Setup<'_, S>) + 'static,
) -> io::Result<ProxyServer> {
    Options::default().start_with_state(r, addr, init, setup)
}

/// A running proxy server.
#[derive(Clone, Debug)]
pub struct ProxyServer {
    id: ServerId,
    local_addr: Option<SocketAddr>,
    stats: Stats,
}

impl ProxyServer {
    /// The reactor server behind it (for [`Reactor::stop_server`]).
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// The address it listens on, with the real port if it asked for port 0.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Its counters; clones can be sent to other threads.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}
