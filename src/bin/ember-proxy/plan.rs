//! From parsed flags to a running proxy: resolve every name once (blocking, before the
//! reactor starts), then start the DSL proxy the flags describe — em-proxy's
//! `bin/em-proxy` block: a `relay` backend that answers and closes the client when it
//! finishes, and `duplex_N` shadows whose answers are discarded.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ember::proxy::{
    Backend, Balancer, Finish, Lease, Options, ProxyServer, Session, Strategy, Target,
};
use ember::{Reactor, UnbindReason};

use crate::args::{self, RunArgs, Upstream};

/// Where clients go, resolved.
#[derive(Debug)]
pub enum Relay {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Balance(Vec<SocketAddr>, Strategy),
}

/// A proxy ready to start.
#[derive(Debug)]
pub struct Plan {
    pub listen: SocketAddr,
    pub relay: Relay,
    pub duplex: Vec<SocketAddr>,
    pub options: Options,
    pub grace: Duration,
    pub splice: bool,
}

impl Plan {
    pub fn resolve(run: &RunArgs) -> Result<Plan, String> {
        let listen = args::resolve_listen(&run.listen)?;
        let relay = match &run.upstream {
            Upstream::Relay(target) => Relay::Tcp(args::resolve(target, "--relay")?),
            Upstream::Socket(path) => Relay::Unix(path.clone()),
            Upstream::Balance(targets, strategy) => Relay::Balance(
                targets
                    .iter()
                    .map(|t| args::resolve(t, "--balance"))
                    .collect::<Result<_, _>>()?,
                *strategy,
            ),
        };
        let duplex = run
            .duplex
            .iter()
            .map(|t| args::resolve(t, "--duplex"))
            .collect::<Result<_, _>>()?;
        let mut options = Options::new()
            .verbose(run.verbose)
            .shadow_buffer(run.shadow_buffer)
            .fin_timeout(run.fin_timeout);
        if let Some(n) = run.shadow_max_conns {
            options = options.shadow_max_connections(n);
        }
        if let Some(bytes) = run.shadow_max_memory {
            options = options.shadow_max_memory(bytes);
        }
        Ok(Plan {
            listen,
            relay,
            duplex,
            options,
            grace: run.grace,
            splice: run.splice,
        })
    }

    /// One line for stdout: where the proxy listens and where it sends what.
    pub fn describe(&self, bound: SocketAddr) -> String {
        let relay = match &self.relay {
            Relay::Tcp(addr) => format!("relay {addr}"),
            Relay::Unix(path) => format!("relay unix:{}", path.display()),
            Relay::Balance(addrs, strategy) => format!(
                "balance {} ({strategy})",
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let mut line = format!("ember-proxy: listening on {bound}, {relay}");
        if !self.duplex.is_empty() {
            let duplex: Vec<String> = self.duplex.iter().map(ToString::to_string).collect();
            line.push_str(&format!(", duplex {}", duplex.join(",")));
        }
        line
    }

    /// Starts the proxy on `r`.
    pub fn start(&self, r: &mut Reactor) -> io::Result<ProxyServer> {
        r.set_splice(self.splice);
        let duplex = self.duplex.clone();
        // Alone, the relay takes both directions on the cut-through path; with shadows,
        // the client's bytes are copied to every backend, so only the answers are.
        let cut_through = duplex.is_empty();
        let options = self.options.clone();
        match &self.relay {
            Relay::Tcp(_) | Relay::Unix(_) => {
                let relay = match &self.relay {
                    Relay::Unix(path) => Backend::unix(path),
                    Relay::Tcp(addr) => Backend::tcp(*addr),
                    Relay::Balance(..) => unreachable!("matched above"),
                };
                let relay = with_relay_paths(relay, cut_through);
                options.start(r, self.listen, move |conn| {
                    conn.server("relay", relay.clone());
                    open_shadows(conn, &duplex);
                    conn.on_finish(relay_decides);
                })
            }
            Relay::Balance(addrs, strategy) => {
                let targets = addrs.iter().map(|a| Target::Tcp(*a)).collect();
                let balancer = Balancer::new(targets, *strategy);
                options.start_with_state(
                    r,
                    self.listen,
                    || None::<Lease>,
                    move |conn| {
                        let lease = balancer.pick();
                        let relay =
                            with_relay_paths(Backend::new(lease.target().clone()), cut_through);
                        conn.server("relay", relay);
                        *conn.state() = Some(lease);
                        open_shadows(conn, &duplex);
                        conn.on_finish(relay_decides);
                    },
                )
            }
        }
    }
}

fn with_relay_paths(relay: Backend, cut_through: bool) -> Backend {
    if cut_through {
        relay.relay_client().relay_server()
    } else {
        relay.relay_server()
    }
}

fn open_shadows<S: 'static>(conn: &mut Session<'_, S>, duplex: &[SocketAddr]) {
    for (i, addr) in duplex.iter().enumerate() {
        conn.server(&format!("duplex_{i}"), Backend::tcp(*addr).shadow());
    }
}

/// The client is answered from the relay only, and closed when the relay finishes.
fn relay_decides<S>(_: &mut Session<'_, S>, name: &str, _: UnbindReason) -> Finish {
    if name == "relay" {
        Finish::Close
    } else {
        Finish::Keep
    }
}
