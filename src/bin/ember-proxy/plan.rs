//! From parsed flags to a running proxy: resolve every name once (blocking, before the
//! reactor starts), then start the DSL proxy the flags describe — em-proxy's
//! `bin/em-proxy` block: a `relay` backend that answers and closes the client when it
//! finishes, and `duplex_N` shadows whose answers are discarded. TCP relays (`-r`, `-b`)
//! come from a [`Pool`]: a failed connect is retried on another backend in rotation, a
//! backend that keeps failing leaves the rotation for a while (one log line each way),
//! and with every backend out a new client is closed at once.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use ember::proxy::{
    Backend, Balancer, Change, Check, DEFAULT_QUEUE_LENGTH, Ejection, Finish, Lease, Options, Pool,
    ProxyServer, Refused, Session, Strategy, Target, Throttle, WARNINGS_PER_SECOND,
};
use ember::{Reactor, UnbindReason};

use crate::args::{self, RunArgs, Upstream};

/// Where clients go. A name was checked to resolve at start, and stays a name: the
/// reactor resolves it again in the background every `--resolve-interval`, and tries every
/// address it has.
#[derive(Debug)]
pub enum Relay {
    Tcp(Target),
    Unix(PathBuf),
    Balance(Vec<Member>, Strategy),
}

/// One `-b` backend, its name kept.
#[derive(Debug)]
pub struct Member {
    pub target: Target,
    pub weight: u32,
    /// At most this many clients at once; more wait in the pool's queue.
    pub max_conn: Option<usize>,
}

/// A proxy ready to start.
#[derive(Debug)]
pub struct Plan {
    pub listen: SocketAddr,
    pub relay: Relay,
    pub duplex: Vec<Target>,
    pub options: Options,
    pub grace: Duration,
    pub splice: bool,
    pub retries: u32,
    /// How long a client waits for a backend under its `maxconn`.
    pub queue_timeout: Duration,
    /// Active health checks of the relay backends, if asked for.
    pub check: Option<Check>,
    /// How long a backend name's addresses are trusted before they are looked up again.
    pub resolve_interval: Duration,
    /// For the startup line: what the timeouts are.
    pub timeouts: String,
}

impl Plan {
    pub fn resolve(run: &RunArgs) -> Result<Plan, String> {
        let listen = args::resolve_listen(&run.listen)?;
        let relay = match &run.upstream {
            Upstream::Relay(target) => Relay::Tcp(args::resolve_target(target, "--relay")?),
            Upstream::Socket(path) => Relay::Unix(path.clone()),
            Upstream::Balance(members, strategy) => Relay::Balance(
                members
                    .iter()
                    .map(|m| {
                        Ok(Member {
                            target: args::resolve_target(&m.target, "--balance")?,
                            weight: m.weight,
                            max_conn: m.max_conn,
                        })
                    })
                    .collect::<Result<_, String>>()?,
                *strategy,
            ),
        };
        let duplex = run
            .duplex
            .iter()
            .map(|t| args::resolve_target(t, "--duplex"))
            .collect::<Result<_, _>>()?;
        let mut options = Options::new()
            .verbose(run.verbose)
            .shadow_buffer(run.shadow_buffer)
            .fin_timeout(run.fin_timeout)
            .connect_timeout(run.connect_timeout)
            .client_timeout(run.client_timeout)
            .server_timeout(run.server_timeout);
        if let Some(n) = run.shadow_max_conns {
            options = options.shadow_max_connections(n);
        }
        if let Some(bytes) = run.shadow_max_memory {
            options = options.shadow_max_memory(bytes);
        }
        if let Some(n) = run.max_conn {
            options = options.max_connections(n);
        }
        Ok(Plan {
            listen,
            relay,
            duplex,
            options,
            grace: run.grace,
            splice: run.splice,
            retries: run.retries,
            queue_timeout: run.queue_timeout,
            check: run.check.clone(),
            resolve_interval: run.resolve_interval,
            timeouts: format!(
                "timeouts connect {}, client {}, server {}, fin {}; retries {}",
                seconds(Some(run.connect_timeout)),
                seconds(run.client_timeout),
                seconds(run.server_timeout),
                seconds(run.fin_timeout),
                run.retries
            ),
        })
    }

    /// One line for stdout: where the proxy listens and where it sends what.
    pub fn describe(&self, bound: SocketAddr) -> String {
        let relay = match &self.relay {
            Relay::Tcp(target) => format!("relay {target}"),
            Relay::Unix(path) => format!("relay unix:{}", path.display()),
            Relay::Balance(addrs, strategy) => format!(
                "balance {} ({strategy})",
                addrs
                    .iter()
                    .map(|m| {
                        let mut entry = m.target.to_string();
                        if m.weight != 1 {
                            entry.push_str(&format!(" weight={}", m.weight));
                        }
                        if let Some(n) = m.max_conn {
                            entry.push_str(&format!(" maxconn={n}"));
                        }
                        entry
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let mut line = format!("ember-proxy: listening on {bound}, {relay}");
        if !self.duplex.is_empty() {
            let duplex: Vec<String> = self.duplex.iter().map(ToString::to_string).collect();
            line.push_str(&format!(", duplex {}", duplex.join(",")));
        }
        line.push_str("; ");
        line.push_str(&self.timeouts);
        line
    }

    /// Starts the proxy on `r`.
    pub fn start(&self, r: &mut Reactor) -> io::Result<Started> {
        r.set_splice(self.splice);
        r.set_resolve_interval(self.resolve_interval);
        let duplex = shadow_pools(&self.duplex);
        let mut pools: Vec<(String, Pool)> = duplex
            .iter()
            .enumerate()
            .map(|(i, pool)| (format!("duplex_{i}"), pool.clone()))
            .collect();
        if let Some(check) = &self.check {
            for pool in &duplex {
                pool.start_checks(r, check.clone());
            }
        }
        // Alone, the relay takes both directions on the cut-through path; with shadows,
        // the client's bytes are copied to every backend, so only the answers are.
        let cut_through = duplex.is_empty();
        let options = self.options.clone();
        let retries = self.retries;
        let balancer = match &self.relay {
            Relay::Unix(path) => {
                // One socket, no pool: retries go to the same path.
                let relay = with_relay_paths(Backend::unix(path).retries(retries), cut_through);
                let server = options.start(r, self.listen, move |conn| {
                    conn.server("relay", relay.clone());
                    open_shadows(conn, &duplex);
                    conn.on_finish(relay_decides);
                })?;
                return Ok(Started { server, pools });
            }
            Relay::Tcp(target) => Balancer::new(vec![target.clone()], Strategy::RoundRobin),
            Relay::Balance(members, strategy) => {
                let targets = members.iter().map(|m| m.target.clone()).collect();
                let weights = members.iter().map(|m| m.weight).collect();
                Balancer::with_weights(targets, weights, *strategy)
            }
        };
        let limits = match &self.relay {
            Relay::Balance(members, _) => members.iter().map(|m| m.max_conn).collect(),
            _ => vec![None],
        };
        let pool = Pool::logging(balancer, Ejection::default(), log_change)
            .max_connections(limits)
            .queue(self.queue_timeout, DEFAULT_QUEUE_LENGTH);
        if let Some(check) = &self.check {
            pool.start_checks(r, check.clone());
        }
        pools.insert(0, ("relay".into(), pool.clone()));
        let relay = Rc::new(RelaySpec {
            retries,
            pool: pool.clone(),
            cut_through,
            duplex,
            refusals: Throttle::new(WARNINGS_PER_SECOND, Duration::from_secs(1)),
        });
        let server = options.start_with_state(
            r,
            self.listen,
            || None::<Lease>,
            move |conn| {
                conn.on_finish(relay_decides);
                let client = conn.peer().map(|a| a.ip());
                if let Some(lease) = pool.pick(client) {
                    open_relay(conn, lease, &relay);
                    return;
                }
                // Every backend in rotation is at its maxconn (or down): wait for a slot,
                // unread, or go now.
                let (handle, waiting) = (conn.handle(), Rc::clone(&relay));
                let queued = pool.wait(conn.reactor(), client, move |r, outcome| {
                    handle.run(r, |conn| match outcome {
                        Ok(lease) => {
                            conn.resume_client();
                            open_relay(conn, lease, &waiting);
                        }
                        Err(refused) => refuse(conn, refused, &waiting.refusals),
                    });
                });
                match queued {
                    Ok(()) => conn.pause_client(),
                    Err(refused) => refuse(conn, refused, &relay.refusals),
                }
            },
        )?;
        Ok(Started { server, pools })
    }
}

/// A started proxy: its server, and its pools by role (`relay`, `duplex_N`) for the
/// status page.
pub struct Started {
    pub server: ProxyServer,
    pub pools: Vec<(String, Pool)>,
}

/// What every client of a pool gets once it has a backend: the relay (with its retries
/// and redispatch) and the shadows.
struct RelaySpec {
    retries: u32,
    pool: Pool,
    cut_through: bool,
    duplex: Vec<Pool>,
    /// The budget for "client refused" lines.
    refusals: Throttle,
}

fn open_relay(conn: &mut Session<'_, Option<Lease>>, lease: Lease, spec: &RelaySpec) {
    let relay = Backend::new(lease.target().clone())
        .retries(spec.retries)
        .dispatch(spec.pool.dispatch());
    conn.server("relay", with_relay_paths(relay, spec.cut_through));
    *conn.state() = Some(lease);
    open_shadows(conn, &spec.duplex);
}

/// No backend for this client: close it, with a warning (at most
/// [`WARNINGS_PER_SECOND`] a second: with every backend down, every client is refused).
fn refuse<S: 'static>(conn: &mut Session<'_, S>, refused: Refused, warnings: &Throttle) {
    if let Some(suppressed) = warnings.admit() {
        let more = match suppressed {
            0 => String::new(),
            n => format!(" ({n} more clients refused meanwhile)"),
        };
        let client = conn.peer().map_or_else(|| "-".into(), |a| a.to_string());
        let id = conn.session_id();
        log::warn!("ember-proxy #{id}: client {client} closed: {refused}{more}");
    }
    conn.close();
}

/// A backend left or rejoined the rotation: one line, verbose or not.
fn log_change(target: &Target, change: Change) {
    match change {
        Change::Down(out_for) => log::warn!(
            "ember-proxy: backend {target} is DOWN (connects keep failing); out of rotation for {}",
            seconds(Some(out_for))
        ),
        Change::CheckedDown => {
            log::warn!("ember-proxy: backend {target} is DOWN (health checks fail)")
        }
        Change::Up => log::warn!("ember-proxy: backend {target} is UP again"),
    }
}

/// `5s`, `0.2s`, or `never`.
fn seconds(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{}s", d.as_secs_f64()),
        None => "never".into(),
    }
}

fn with_relay_paths(relay: Backend, cut_through: bool) -> Backend {
    if cut_through {
        relay.relay_client().relay_server()
    } else {
        relay.relay_server()
    }
}

/// One pool per shadow: its failed connects (and checks, with `--check`) take it out of
/// rotation, and a shadow out of rotation is skipped, never tried at the client's expense.
fn shadow_pools(duplex: &[Target]) -> Vec<Pool> {
    duplex
        .iter()
        .map(|target| {
            let one = Balancer::new(vec![target.clone()], Strategy::RoundRobin);
            Pool::logging(one, Ejection::default(), log_change)
        })
        .collect()
}

fn open_shadows<S: 'static>(conn: &mut Session<'_, S>, shadows: &[Pool]) {
    for (i, pool) in shadows.iter().enumerate() {
        let target = pool.balancer().targets()[0].clone();
        let shadow = Backend::new(target).shadow().dispatch(pool.dispatch());
        conn.server(&format!("duplex_{i}"), shadow);
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
