//! Where a backend lives ([`Target`]) and how to open it ([`Backend`]): what
//! `server(name, backend)` takes, em-proxy's `:host`/`:port`/`:socket`/`:bind_host`/
//! `:bind_port`/`:relay_client`/`:relay_server` options plus ember's `shadow`.
//!
//! Parsing never resolves a name: `"db.internal:5432"` becomes [`Target::Host`], which the
//! reactor resolves on its defer pool when the backend opens.

use std::rc::Rc;

use super::dispatch::Dispatch;
use super::proxy_protocol;
use rustls::ClientConfig;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// A backend's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A numeric TCP address (`127.0.0.1:8081`, `[::1]:8081`).
    Tcp(SocketAddr),
    /// A host name and port, resolved off the reactor thread when the backend opens.
    Host(String, u16),
    /// A Unix-domain stream socket (em-proxy's `:socket`).
    Unix(PathBuf),
}

/// A string that names no [`Target`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError(String);

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TargetError {}

impl Target {
    /// Parses `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT`, `unix:PATH`, or a path that starts
    /// with `/` or `.` (a Unix socket). Never resolves a name.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(TargetError("`unix:` needs a socket path".into()));
            }
            return Ok(Target::Unix(path.into()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Target::Unix(s.into()));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Tcp(addr));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(TargetError(format!("`{s}` is not HOST:PORT")));
        };
        let port = parse_port(port).map_err(|why| TargetError(format!("`{s}`: {why}")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(TargetError(format!("`{s}` has no valid host name")));
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(Target::Tcp(SocketAddr::new(ip, port))),
            Err(_) => Ok(Target::Host(host.to_owned(), port)),
        }
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "{addr}"),
            Target::Host(host, port) => write!(f, "{host}:{port}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Parses a TCP port, 1 to 65535, with a reason when it is not one.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("port 0 is not a port to connect to".into()),
        Ok(p) if p <= u32::from(u16::MAX) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range (1-65535)")),
        Err(_) => Err(format!("`{s}` is not a port number")),
    }
}

/// One backend as `server(name, backend)` opens it: a target and its options.
///
/// ```
/// use ember::proxy::Backend;
///
/// let prod = Backend::from("127.0.0.1:8100").relay_server();
/// let shadow = Backend::from("127.0.0.1:8200").shadow();
/// let local = Backend::unix("/tmp/app.sock");
/// # let _ = (prod, shadow, local);
/// ```
#[derive(Clone, Debug)]
pub struct Backend {
    pub(crate) target: Result<Target, TargetError>,
    pub(crate) bind: Option<SocketAddr>,
    pub(crate) relay_client: bool,
    pub(crate) relay_server: bool,
    pub(crate) shadow: bool,
    /// Connect failures that are retried before `on_finish` hears of one.
    pub(crate) retries: u32,
    pub(crate) dispatch: Option<Rc<dyn Dispatch>>,
    /// Start the connection with a PROXY protocol header of this version.
    pub(crate) send_proxy: Option<proxy_protocol::Version>,
    /// Speak TLS to it (`Backend::tls`).
    pub(crate) tls: Option<BackendTls>,
}

/// TLS to a backend: the client configuration and the name to verify (and send as SNI).
#[derive(Clone, Debug)]
pub(crate) struct BackendTls {
    pub(crate) config: Arc<ClientConfig>,
    /// `None`: the target's host name, or its IP address.
    pub(crate) server_name: Option<String>,
}

impl Backend {
    /// A backend at `target`, with no options.
    pub fn new(target: Target) -> Backend {
        Backend {
            target: Ok(target),
            bind: None,
            relay_client: false,
            relay_server: false,
            shadow: false,
            retries: 0,
            dispatch: None,
            send_proxy: None,
            tls: None,
        }
    }

    /// A TCP backend at a numeric address.
    pub fn tcp(addr: SocketAddr) -> Backend {
        Backend::new(Target::Tcp(addr))
    }

    /// A TCP backend by host name, resolved off the reactor thread when it opens.
    pub fn host(host: &str, port: u16) -> Backend {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Backend::tcp(SocketAddr::new(ip, port)),
            Err(_) => Backend::new(Target::Host(host.to_owned(), port)),
        }
    }

    /// A Unix-domain socket backend (em-proxy's `:socket`).
    pub fn unix(path: impl Into<PathBuf>) -> Backend {
        Backend::new(Target::Unix(path.into()))
    }

    /// Binds the outgoing socket to `local` before connecting: a chosen source address,
    /// port, or both (em-proxy's `:bind_host`/`:bind_port`; port 0 lets the kernel
    /// choose). Applies to TCP targets, numeric or named (a name's addresses of the other
    /// family are skipped).
    pub fn bind(mut self, local: SocketAddr) -> Backend {
        self.bind = Some(local);
        self
    }

    /// The client's bytes go to this backend unchanged and to no other, without calling
    /// `on_data` (em-proxy's `:relay_client`). One backend per client can take this role;
    /// it uses the reactor's descriptor-level relay when available. Ignored on a
    /// [`shadow`](Self::shadow): a shadow never takes the client's bytes for itself.
    pub fn relay_client(mut self) -> Backend {
        self.relay_client = true;
        self
    }

    /// This backend's bytes go to the client unchanged, without calling `on_response`
    /// (em-proxy's `:relay_server`). They take the reactor's descriptor-level relay only
    /// while this backend is the client's only primary; otherwise they are copied. Ignored
    /// on a [`shadow`](Self::shadow), whose bytes never reach the client.
    pub fn relay_server(mut self) -> Backend {
        self.relay_server = true;
        self
    }

    /// A shadow (duplex) backend: it receives what the client sends, but its responses
    /// never reach the client (`on_response` still sees them, to record or compare), it
    /// never slows the client or the primary backends, and it is cut off if it falls more
    /// than the shadow buffer behind (see [`Options::shadow_buffer`](super::Options::shadow_buffer)).
    pub fn shadow(mut self) -> Backend {
        self.shadow = true;
        self
    }

    /// Retries a connect that fails (refused, timed out, reset or unresolvable before it
    /// ever connected) up to `n` times before `on_finish` hears of it (HAProxy's
    /// `retries`; default 0). What the client sent meanwhile is held and replayed to the
    /// connection that finally succeeds; a backend that connected is never retried, so
    /// nothing is sent twice to one that accepted it. Each retry goes where the
    /// [`dispatch`](Self::dispatch) says, or to the same target.
    pub fn retries(mut self, n: u32) -> Backend {
        self.retries = n;
        self
    }

    /// Tells `dispatch` how each connect ends and lets it choose where a retry goes
    /// (another backend: HAProxy's `option redispatch`), or give up.
    pub fn dispatch(mut self, dispatch: Rc<dyn Dispatch>) -> Backend {
        self.dispatch = Some(dispatch);
        self
    }

    /// The same backend at another target (a retry's destination).
    pub(crate) fn at(&self, target: Target) -> Backend {
        Backend {
            target: Ok(target),
            ..self.clone()
        }
    }

    /// Starts the connection with a PROXY protocol header (HAProxy's `send-proxy` /
    /// `send-proxy-v2`) telling the backend the client's address and the address it
    /// connected to (those an upstream's header gave, with
    /// [`Options::accept_proxy`](super::Options::accept_proxy)). The header goes first,
    /// on every try of a retried connect.
    pub fn send_proxy(mut self, version: proxy_protocol::Version) -> Backend {
        self.send_proxy = Some(version);
        self
    }

    /// Speaks TLS to this backend (after a [`send_proxy`](Self::send_proxy) header, which
    /// goes in the clear), verifying it as `config` says (see [`crate::tls::ClientTls`]:
    /// verification is on unless it was built with `dangerous_accept_any_server`) under
    /// `server_name`, also sent as SNI; `None` uses the target's host name, or its IP
    /// address. A backend that fails verification ends with
    /// [`UnbindReason::TlsFailed`](crate::UnbindReason::TlsFailed), like any failed
    /// connect (retried if it has retries).
    pub fn tls(mut self, config: Arc<ClientConfig>, server_name: Option<&str>) -> Backend {
        self.tls = Some(BackendTls {
            config,
            server_name: server_name.map(str::to_owned),
        });
        self
    }

    /// The target, or why the string it was made from names none.
    pub fn target(&self) -> Result<&Target, &TargetError> {
        self.target.as_ref()
    }

    /// The target as the access log writes it, or why there is none.
    pub(crate) fn target_text(&self) -> String {
        match &self.target {
            Ok(target) => target.to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// Whether this is a shadow backend.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }
}

impl From<Target> for Backend {
    fn from(target: Target) -> Backend {
        Backend::new(target)
    }
}

impl From<SocketAddr> for Backend {
    fn from(addr: SocketAddr) -> Backend {
        Backend::tcp(addr)
    }
}

/// Parses with [`Target::parse`]; a string that names no target makes a backend that
/// fails when opened, reported through `on_finish` with
/// [`UnbindReason::Unresolvable`](crate::UnbindReason::Unresolvable).
impl From<&str> for Backend {
    fn from(s: &str) -> Backend {
        let mut backend = Backend::new(Target::Unix(PathBuf::new()));
        backend.target = Target::parse(s);
        backend
    }
}

impl From<String> for Backend {
    fn from(s: String) -> Backend {
        Backend::from(s.as_str())
    }
}

impl From<&String> for Backend {
    fn from(s: &String) -> Backend {
        Backend::from(s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_target_without_resolving() {
        assert_eq!(
            Target::parse("127.0.0.1:80").unwrap(),
            Target::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            Target::parse("[::1]:80").unwrap(),
            Target::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            Target::parse("example.com:443").unwrap(),
            Target::Host("example.com".into(), 443)
        );
        assert_eq!(
            Target::parse("/tmp/s.sock").unwrap(),
            Target::Unix("/tmp/s.sock".into())
        );
        assert_eq!(
            Target::parse("unix:rel.sock").unwrap(),
            Target::Unix("rel.sock".into())
        );
    }

    #[test]
    fn refuses_bad_targets_with_a_reason() {
        for bad in [
            "nohost",
            "host:",
            "host:0",
            "host:70000",
            ":80",
            "a b:80",
            "unix:",
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
        assert!(Backend::from("x:y").target().is_err());
    }
}
