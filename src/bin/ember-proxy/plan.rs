//! From parsed flags to a running proxy: resolve every name once (blocking, before the
//! reactor starts), then start the DSL proxy the flags describe — em-proxy's
//! `bin/em-proxy` block: a `relay` backend that answers and closes the client when it
//! finishes, and `duplex_N` shadows whose answers are discarded. TCP relays (`-r`, `-b`)
//! come from a [`Pool`]: a failed connect is retried on another backend in rotation, a
//! backend that keeps failing leaves the rotation for a while (one log line each way),
//! and with every backend out a new client is closed at once.
//!
//! A plan is plain data (`Clone + Send`): with `--workers N` every worker starts its own
//! copy on its own reactor ([`Plan::for_worker`] gives each its share of the `maxconn`
//! limits; a [`Worker`] is who runs it: the label of its lines, the tally of its clients),
//! listening on a [`Socket`] of its own or an adopted one.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ember::proxy::client_hello::{self, Peek};
use ember::proxy::compare::{CompareLine, Rules, ShadowFailure, VerdictCounts};
use ember::proxy::http1::HeadRewrite;
use ember::proxy::mirror::{Mirror, MirrorOptions};
use ember::proxy::shadowing::{
    self, ByteComparing, DEFAULT_MAX_REQUEST, HttpShadowing, ShadowEvents, ShadowingSpec,
};
use ember::proxy::{
    Backend, Balancer, Change, Check, DEFAULT_QUEUE_LENGTH, Ejection, Finish, Lease, Options, Pool,
    ProxyServer, Refused, Relay as Relaying, Sampler, Session, Setup, Strategy, Target, Throttle,
    WARNINGS_PER_SECOND, proxy_protocol,
};
use ember::tls::rustls::ClientConfig;
use ember::{Reactor, UnbindReason};

use crate::args::{self, RunArgs, Upstream};
use crate::board::Tally;
use crate::tls_setup;

/// Where clients go. A name was checked to resolve at start, and stays a name: the
/// reactor resolves it again in the background every `--resolve-interval`, and tries every
/// address it has.
#[derive(Clone, Debug)]
pub enum Relay {
    Tcp(Target),
    Unix(PathBuf),
    Balance(Vec<Member>, Strategy),
}

/// One `-b` backend, its name kept.
#[derive(Clone, Debug)]
pub struct Member {
    pub target: Target,
    pub weight: u32,
    /// At most this many clients at once; more wait in the pool's queue.
    pub max_conn: Option<usize>,
}

/// A proxy ready to start.
#[derive(Clone, Debug)]
pub struct Plan {
    pub listen: SocketAddr,
    pub relay: Relay,
    pub duplex: Vec<Target>,
    pub options: Options,
    pub relay_mode: ember::RelayMode,
    pub retries: u32,
    /// How long a client waits for a backend under its `maxconn`.
    pub queue_timeout: Duration,
    /// Active health checks of the relay backends, if asked for.
    pub check: Option<Check>,
    /// How long a backend name's addresses are trusted before they are looked up again.
    pub resolve_interval: Duration,
    /// For the startup line: what the timeouts are.
    pub timeouts: String,
    /// What every backend connection (relay and shadows) starts with: a PROXY header,
    /// TLS.
    pub backends: BackendSetup,
    /// `--sni-route`: pass-through routes by the ClientHello's server name.
    pub sni_routes: Vec<(String, Target)>,
    /// `--shadow-sample`: the share of clients (or, with `--http`, requests) mirrored.
    pub shadow_sample: f64,
    /// `--http`: the shadows get whole requests on connections of their own.
    pub http: Option<HttpPlan>,
    /// `--compare-tcp`: each shadow's bytes against the primary's, per client; the most
    /// one side may run ahead before the comparison falls back to hashes.
    pub compare_bytes: Option<usize>,
    /// Where comparisons are reported (set by whoever runs the plan).
    pub report: Option<ShadowReport>,
}

/// `--http` and `--compare`, resolved.
#[derive(Clone, Debug)]
pub struct HttpPlan {
    pub methods: Option<Vec<String>>,
    pub rewrite: HeadRewrite,
    pub timeout: Duration,
    /// `--shadow-max-memory`: what waiting comparisons may hold (this worker's share).
    pub max_memory: usize,
    /// `--compare`: the rules' settings and the reference.
    pub compare: Option<ComparePlan>,
}

/// `--compare`, resolved.
#[derive(Clone, Debug)]
pub struct ComparePlan {
    pub ignore_headers: Vec<String>,
    pub ignore_json: Vec<String>,
    pub max_body: usize,
    pub reference: Option<Target>,
}

impl ComparePlan {
    fn rules(&self) -> Rules {
        let mut rules = Rules::new().max_body(self.max_body);
        for name in &self.ignore_headers {
            rules = rules.ignore_header(name);
        }
        for path in &self.ignore_json {
            // Checked when the plan was resolved.
            if let Ok(with) = rules.clone().ignore_json(path) {
                rules = with;
            }
        }
        rules
    }
}

/// Where HTTP shadows report, for every worker: the compare log and the counters of
/// `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ShadowReport {
    /// `--compare-log`'s writer; `None`: no compare log.
    pub log: Option<crate::logging::LogHandle>,
    pub counts: Arc<ShadowCounts>,
}

/// What `/metrics` says about HTTP shadowing.
#[derive(Debug, Default)]
pub struct ShadowCounts {
    pub verdicts: VerdictCounts,
    /// Clients whose stream stopped being HTTP the proxy can frame.
    pub gave_up: AtomicU64,
    /// Requests not mirrored (too big, too many waiting, over the memory budget, the
    /// shadow's queue full).
    pub skipped: AtomicU64,
    /// Mirrored requests the shadow did not answer (refused, timed out, reset...).
    pub mirror_failed: AtomicU64,
}

/// One worker's [`ShadowEvents`]: the shared report, and its own log budget.
struct Reporter {
    report: ShadowReport,
    label: String,
    warnings: Throttle,
}

impl ShadowEvents for Reporter {
    fn compared(&self, line: &CompareLine) {
        self.report.counts.verdicts.count(&line.verdict);
        if let Some(log) = &self.report.log {
            log.compare(line.render());
        }
    }

    fn gave_up(&self, session: u64, reason: &'static str) {
        self.report.counts.gave_up.fetch_add(1, Ordering::Relaxed);
        if self.warnings.admit().is_some() {
            log::info!(
                "{} #{session}: not HTTP/1.1 the proxy can frame ({reason}): relayed, no longer mirrored",
                self.label
            );
        }
    }

    fn skipped(&self, _why: &'static str) {
        self.report.counts.skipped.fetch_add(1, Ordering::Relaxed);
    }

    fn mirror_failed(&self, _shadow: &str, _failure: &ShadowFailure) {
        self.report
            .counts
            .mirror_failed
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Who runs one copy of a plan: what the binary's own lines about it start with, and
/// the tally of the clients it accepts.
#[derive(Clone, Debug)]
pub struct Worker {
    /// `ember-proxy`, or `ember-proxy/N` for worker N of several.
    pub label: String,
    pub tally: Arc<Tally>,
}

impl Worker {
    /// Worker `worker` of `workers`.
    pub fn new(worker: usize, workers: usize) -> Worker {
        Worker {
            label: label(worker, workers),
            tally: Arc::default(),
        }
    }
}

/// `ember-proxy`, or `ember-proxy/N` for worker N of several.
fn label(worker: usize, workers: usize) -> String {
    if workers > 1 {
        format!("ember-proxy/{worker}")
    } else {
        "ember-proxy".into()
    }
}

/// Where a started plan takes its clients from.
#[derive(Debug)]
pub enum Socket {
    /// Listen on this address (with `SO_REUSEPORT` if the reactor says so).
    Bind(SocketAddr),
    /// A socket that is already listening: passed by systemd, or shared by workers.
    Adopt(std::net::TcpListener),
}

/// `--send-proxy` and `--backend-tls`, for every backend connection.
#[derive(Clone, Debug, Default)]
pub struct BackendSetup {
    pub send_proxy: Option<proxy_protocol::Version>,
    /// The client configuration, and the name to verify (`None`: each backend's host).
    pub tls: Option<(Arc<ClientConfig>, Option<String>)>,
}

impl BackendSetup {
    fn dress(&self, mut backend: Backend) -> Backend {
        if let Some(version) = self.send_proxy {
            backend = backend.send_proxy(version);
        }
        if let Some((config, name)) = &self.tls {
            backend = backend.tls(Arc::clone(config), name.as_deref());
        }
        backend
    }
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
        options = options.accept_proxy(run.accept_proxy);
        if let Some(tls) = &run.tls {
            options = options.tls(tls_setup::listener(tls)?);
        }
        let backends = BackendSetup {
            send_proxy: run.send_proxy,
            tls: run
                .backend_tls
                .as_ref()
                .map(tls_setup::backends)
                .transpose()?,
        };
        let sni_routes = run
            .sni_routes
            .iter()
            .map(|(name, target)| Ok((name.clone(), args::resolve_target(target, "--sni-route")?)))
            .collect::<Result<_, String>>()?;
        let http = match &run.http {
            Some(http) => Some(http_plan(
                http,
                run.compare.as_ref(),
                run.shadow_max_memory,
            )?),
            None => None,
        };
        Ok(Plan {
            compare_bytes: run
                .compare
                .as_ref()
                .filter(|_| run.http.is_none())
                .map(|c| c.max_body),
            report: None,
            http,
            shadow_sample: run.shadow_sample,
            backends,
            sni_routes,
            listen,
            relay,
            duplex,
            options,
            relay_mode: run.relay_mode,
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

    /// One plan per listener (a config file's `[[listener]]`s); two on one address are
    /// refused.
    pub fn resolve_all(runs: &[RunArgs]) -> Result<Vec<Plan>, String> {
        let plans: Vec<Plan> = runs.iter().map(Plan::resolve).collect::<Result<_, _>>()?;
        for (i, plan) in plans.iter().enumerate() {
            if plans[..i].iter().any(|p| p.listen == plan.listen) {
                return Err(format!("two listeners on {}", plan.listen));
            }
        }
        Ok(plans)
    }

    /// Every backend the plan names (relay or pool, shadows, SNI routes), for the check
    /// at start.
    pub fn backend_targets(&self) -> Vec<Target> {
        let mut targets = match &self.relay {
            Relay::Tcp(target) => vec![target.clone()],
            Relay::Unix(path) => vec![Target::Unix(path.clone())],
            Relay::Balance(members, _) => members.iter().map(|m| m.target.clone()).collect(),
        };
        targets.extend(self.duplex.iter().cloned());
        targets.extend(self.sni_routes.iter().map(|(_, t)| t.clone()));
        targets
    }

    /// This plan as worker `worker` of `workers` runs it: the library's lines carry the
    /// worker's label (`ember-proxy/N`, when there are several), and each backend's
    /// `maxconn=` is shared out (the shares add up to the limit given, each at least 1),
    /// so that the workers together never send a backend more clients than it was given.
    pub fn for_worker(&self, worker: usize, workers: usize) -> Plan {
        let mut plan = self.clone();
        if workers > 1 {
            plan.options = plan.options.label(label(worker, workers));
        }
        if let Relay::Balance(members, _) = &mut plan.relay {
            for m in members {
                m.max_conn = m.max_conn.map(|n| share(n, worker, workers));
            }
        }
        if let Some(http) = &mut plan.http {
            http.max_memory = share(http.max_memory, worker, workers);
        }
        plan
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

    /// `--http`'s shadowing for one worker: a mirror per shadow (and the reference),
    /// reporting to the plan's report.
    fn http_shadowing(&self, worker: &Worker) -> Option<HttpShadowing> {
        let http = self.http.as_ref()?;
        let compare = http.compare.as_ref();
        let rules = compare.map(ComparePlan::rules);
        let mirror = |target: &Target| {
            let options = MirrorOptions {
                timeout: http.timeout,
                digest: compare.is_some(),
                max_body: compare.map_or(0, |c| c.max_body),
                // --backend-tls: the shadows too, verified as the name given or their own.
                tls: self.backends.tls.as_ref().map(|(config, name)| {
                    let name = name.clone().unwrap_or_else(|| match target {
                        Target::Host(host, _) => host.clone(),
                        Target::Tcp(addr) => addr.ip().to_string(),
                        Target::Unix(_) => "localhost".to_owned(),
                    });
                    (Arc::clone(config), name)
                }),
                ..MirrorOptions::default()
            };
            Mirror::new(target.clone(), options)
        };
        let spec = ShadowingSpec {
            shadows: self
                .duplex
                .iter()
                .enumerate()
                .map(|(i, target)| (format!("duplex_{i}"), mirror(target)))
                .collect(),
            reference: compare.and_then(|c| c.reference.as_ref()).map(&mirror),
            sample: self.shadow_sample,
            methods: http.methods.clone(),
            rewrite: http.rewrite.clone(),
            max_request: DEFAULT_MAX_REQUEST,
            rules,
            max_memory: http.max_memory,
        };
        Some(HttpShadowing::new(spec, self.reporter(worker)))
    }

    /// `--compare-tcp` for one worker.
    fn byte_comparing(&self, worker: &Worker) -> Option<ByteComparing> {
        let cap = self.compare_bytes?;
        Some(ByteComparing::new(cap, self.reporter(worker)))
    }

    /// Where one worker's comparisons go.
    fn reporter(&self, worker: &Worker) -> Rc<Reporter> {
        Rc::new(Reporter {
            report: self.report.clone().unwrap_or_default(),
            label: worker.label.clone(),
            warnings: Throttle::new(WARNINGS_PER_SECOND, Duration::from_secs(1)),
        })
    }

    /// Starts the proxy on `r`, listening on `self.listen`.
    pub fn start(&self, r: &mut Reactor) -> io::Result<Started> {
        self.start_on(r, Socket::Bind(self.listen), &Worker::new(0, 1))
    }

    /// Starts the proxy on `r` as `worker`, taking clients from `socket`.
    pub fn start_on(
        &self,
        r: &mut Reactor,
        socket: Socket,
        worker: &Worker,
    ) -> io::Result<Started> {
        if let Err(why) = r.set_relay_mode(self.relay_mode) {
            // Said once per process: every worker and listener falls back alike.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| log::warn!("{why}"));
        }
        r.set_resolve_interval(self.resolve_interval);
        let on_change = change_log(&worker.label);
        let http = self.http_shadowing(worker);
        // With --http the shadows are mirrors, not backends of the client's session.
        let duplex = match &http {
            Some(_) => Vec::new(),
            None => shadow_pools(&self.duplex, &on_change),
        };
        let mut pools: Vec<(String, Pool)> = duplex
            .iter()
            .enumerate()
            .map(|(i, pool)| (format!("duplex_{i}"), pool.clone()))
            .collect();
        let mut checks = Vec::new();
        if let Some(check) = &self.check {
            for pool in &duplex {
                checks.push(pool.start_checks(r, check.clone()));
            }
        }
        // Alone, the relay takes both directions on the cut-through path; with shadows,
        // the client's bytes are copied to every backend (or read for requests), so only
        // the answers are, unless they are compared.
        let bytes = self.byte_comparing(worker);
        let paths = RelayPaths {
            client: duplex.is_empty() && http.is_none(),
            server: !http.as_ref().is_some_and(HttpShadowing::reads_responses) && bytes.is_none(),
        };
        let decide = Ending {
            bytes,
            http,
            shadows: (0..self.duplex.len())
                .map(|i| format!("duplex_{i}"))
                .collect(),
        };
        let options = self.options.clone();
        let retries = self.retries;
        let balancer = match &self.relay {
            Relay::Unix(path) => {
                // One socket, no pool: retries go to the same path.
                let relay = paths.dress(self.backends.dress(Backend::unix(path).retries(retries)));
                let shadows = Shadows {
                    pools: duplex,
                    setup: self.backends.clone(),
                    sample: Rc::new(Sampler::new(self.shadow_sample)),
                };
                let server = listen(
                    r,
                    options,
                    socket,
                    worker,
                    || (),
                    move |conn| {
                        decide.install(conn);
                        conn.server("relay", relay.clone());
                        shadows.open(conn);
                    },
                )?;
                return Ok(Started {
                    server,
                    pools,
                    checks,
                });
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
        let on_change = Rc::clone(&on_change);
        let pool = Pool::logging(balancer, Ejection::default(), move |t, c| on_change(t, c))
            .max_connections(limits)
            .queue(self.queue_timeout, DEFAULT_QUEUE_LENGTH);
        if let Some(check) = &self.check {
            checks.push(pool.start_checks(r, check.clone()));
        }
        pools.insert(0, ("relay".into(), pool.clone()));
        let relay = Rc::new(RelaySpec {
            retries,
            pool: pool.clone(),
            paths,
            shadows: Shadows {
                pools: duplex,
                setup: self.backends.clone(),
                sample: Rc::new(Sampler::new(self.shadow_sample)),
            },
            routes: self.sni_routes.clone(),
            refusals: Throttle::new(WARNINGS_PER_SECOND, Duration::from_secs(1)),
            label: worker.label.clone(),
        });
        let server = listen(
            r,
            options,
            socket,
            worker,
            || None::<Lease>,
            move |conn| {
                decide.install(conn);
                if !relay.routes.is_empty() {
                    route_by_server_name(conn, &relay);
                    return;
                }
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
                        Err(refused) => refuse(conn, refused, &waiting),
                    });
                });
                match queued {
                    Ok(()) => conn.pause_client(),
                    Err(refused) => refuse(conn, refused, &relay),
                }
            },
        )?;
        Ok(Started {
            server,
            pools,
            checks,
        })
    }
}

/// `--http` and `--compare` from the flags: the head rewrite checked, the reference
/// resolved.
fn http_plan(
    http: &args::HttpShadowing,
    compare: Option<&args::CompareArgs>,
    max_memory: Option<usize>,
) -> Result<HttpPlan, String> {
    let mut rewrite = HeadRewrite::new();
    if let Some(host) = &http.host {
        rewrite
            .set_host(host)
            .map_err(|e| format!("--shadow-host `{host}`: {e}"))?;
    }
    for (name, value) in &http.headers {
        rewrite
            .add_header(&format!("{name}: {value}"))
            .map_err(|e| format!("--shadow-header `{name}: {value}`: {e}"))?;
    }
    let compare = match compare {
        Some(c) => {
            for path in &c.ignore_json {
                Rules::new()
                    .ignore_json(path)
                    .map_err(|e| format!("--compare-ignore-json `{path}`: {e}"))?;
            }
            Some(ComparePlan {
                ignore_headers: c.ignore_headers.clone(),
                ignore_json: c.ignore_json.clone(),
                max_body: c.max_body,
                reference: c
                    .reference
                    .as_ref()
                    .map(|r| args::resolve_target(r, "--reference"))
                    .transpose()?,
            })
        }
        None => None,
    };
    Ok(HttpPlan {
        methods: http.methods.clone(),
        rewrite,
        timeout: http.timeout,
        // Over all workers: each gets its share (`Plan::for_worker`).
        max_memory: max_memory.unwrap_or_else(shadowing::default_max_memory),
        compare,
    })
}

/// Starts `options` on `socket` (binds it, or adopts a listening one), counting every
/// client `worker` accepts. The count is taken where each client's state is made, as it
/// is accepted: every client counted there ends in the session-end hook.
fn listen<S: 'static>(
    r: &mut Reactor,
    options: Options,
    socket: Socket,
    worker: &Worker,
    mut init: impl FnMut() -> S + 'static,
    setup: impl FnMut(&mut ember::proxy::Setup<'_, S>) + 'static,
) -> io::Result<ProxyServer> {
    let tally = Arc::clone(&worker.tally);
    let init = move || {
        tally.accepted();
        init()
    };
    match socket {
        Socket::Bind(addr) => options.start_with_state(r, addr, init, setup),
        Socket::Adopt(listener) => options.start_on(r, listener, init, setup),
    }
}

/// `limit` split over `workers`: worker `worker`'s part, at least 1; the parts add up to
/// `limit` when it is at least `workers`.
fn share(limit: usize, worker: usize, workers: usize) -> usize {
    let workers = workers.max(1);
    let part = limit / workers + usize::from(worker < limit % workers);
    part.max(1)
}

/// A started proxy: its server, and its pools by role (`relay`, `duplex_N`) for the
/// status page.
pub struct Started {
    pub server: ProxyServer,
    pub pools: Vec<(String, Pool)>,
    /// The health-check timers of its pools (a reload stops the old ones).
    pub checks: Vec<ember::TimerId>,
}

/// What every client of a pool gets once it has a backend: the relay (with its retries
/// and redispatch) and the shadows.
struct RelaySpec {
    retries: u32,
    pool: Pool,
    paths: RelayPaths,
    shadows: Shadows,
    /// `--sni-route`: by server name; the pool takes the rest.
    routes: Vec<(String, Target)>,
    /// The budget for "client refused" lines.
    refusals: Throttle,
    /// What those lines start with.
    label: String,
}

/// The relay backend for a client holding `lease`: retried and redispatched in the pool.
fn pooled_backend(spec: &RelaySpec, lease: &Lease) -> Backend {
    Backend::new(lease.target().clone())
        .retries(spec.retries)
        .dispatch(spec.pool.dispatch())
}

fn open_relay(conn: &mut Session<'_, Option<Lease>>, lease: Lease, spec: &RelaySpec) {
    let relay = spec.shadows.setup.dress(pooled_backend(spec, &lease));
    conn.server("relay", spec.paths.dress(relay));
    *conn.state() = Some(lease);
    spec.shadows.open(conn);
}

/// `--sni-route`: holds the client's first bytes until its TLS ClientHello is whole, then
/// relays them, untouched, to the backend its server name routes to (the pool's pick for
/// any other name, or none), and the rest of the stream after them. Anything that is not
/// a ClientHello closes the client with a warning.
fn route_by_server_name(conn: &mut Setup<'_, Option<Lease>>, spec: &Rc<RelaySpec>) {
    let spec = Rc::clone(spec);
    let mut hello = Vec::new();
    conn.on_data(move |s, data| {
        if s.backend_id("relay").is_some() {
            return Relaying::All(data.to_vec()); // routed already (copy path)
        }
        hello.extend_from_slice(data);
        let name = match client_hello::peek(&hello) {
            Peek::Incomplete => return Relaying::Drop, // kept in `hello`
            Peek::Hello(h) => h.server_name,
            Peek::NotTls(why) => {
                let id = s.session_id();
                log::warn!("{} #{id}: client closed: {why}", spec.label);
                s.close();
                return Relaying::Drop;
            }
        };
        let routed = name
            .as_deref()
            .and_then(|n| spec.routes.iter().find(|(route, _)| route == n));
        let backend = match routed {
            Some((_, target)) => Backend::new(target.clone()).retries(spec.retries),
            None => match spec.pool.pick(s.peer().map(|a| a.ip())) {
                Some(lease) => {
                    let backend = pooled_backend(&spec, &lease);
                    *s.state() = Some(lease);
                    backend
                }
                None => {
                    refuse(s, Refused::AllDown, &spec);
                    return Relaying::Drop;
                }
            },
        };
        let backend = spec.shadows.setup.dress(backend);
        s.server("relay", spec.paths.dress(backend));
        spec.shadows.open(s);
        Relaying::All(std::mem::take(&mut hello))
    });
}

/// No backend for this client: close it, with a warning (at most
/// [`WARNINGS_PER_SECOND`] a second: with every backend down, every client is refused).
fn refuse<S: 'static>(conn: &mut Session<'_, S>, refused: Refused, spec: &RelaySpec) {
    if let Some(suppressed) = spec.refusals.admit() {
        let more = match suppressed {
            0 => String::new(),
            n => format!(" ({n} more clients refused meanwhile)"),
        };
        let client = conn.peer().map_or_else(|| "-".into(), |a| a.to_string());
        let id = conn.session_id();
        let label = &spec.label;
        log::warn!("{label} #{id}: client {client} closed: {refused}{more}");
    }
    conn.close();
}

type ChangeLog = Rc<dyn Fn(&Target, Change)>;

/// A backend left or rejoined the rotation: one line, verbose or not.
fn change_log(label: &str) -> ChangeLog {
    let label = label.to_owned();
    Rc::new(move |target, change| match change {
        Change::Down(out_for) => log::warn!(
            "{label}: backend {target} is DOWN (connects keep failing); out of rotation for {}",
            seconds(Some(out_for))
        ),
        Change::CheckedDown => {
            log::warn!("{label}: backend {target} is DOWN (health checks fail)")
        }
        Change::Up => log::warn!("{label}: backend {target} is UP again"),
    })
}

/// `5s`, `0.2s`, or `never`.
fn seconds(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{}s", d.as_secs_f64()),
        None => "never".into(),
    }
}

/// How a client's end is decided: by the relay ([`relay_decides`]), watched by the HTTP
/// shadowing (`--http`: it also taps the client's requests and the relay's answers, and
/// the relay's end ends an answer read until close) or the byte comparison
/// (`--compare-tcp`) when one is on.
struct Ending {
    bytes: Option<ByteComparing>,
    http: Option<HttpShadowing>,
    /// The shadows' names, for the comparison.
    shadows: Vec<String>,
}

impl Ending {
    fn install<S: 'static>(&self, conn: &mut Setup<'_, S>) {
        match (&self.http, &self.bytes) {
            (Some(http), _) => http.attach(conn, "relay", relay_decides),
            (None, Some(bytes)) => bytes.attach(conn, "relay", &self.shadows, relay_decides),
            (None, None) => {
                conn.on_finish(relay_decides);
            }
        }
    }
}

/// Which directions of the relay take the descriptor-level path (no hook sees them).
#[derive(Clone, Copy, Debug)]
struct RelayPaths {
    /// Client to relay: only when nothing else needs the client's bytes.
    client: bool,
    /// Relay to client: unless its answers are compared.
    server: bool,
}

impl RelayPaths {
    fn dress(self, relay: Backend) -> Backend {
        let relay = if self.client {
            relay.relay_client()
        } else {
            relay
        };
        if self.server {
            relay.relay_server()
        } else {
            relay
        }
    }
}

/// One pool per shadow: its failed connects (and checks, with `--check`) take it out of
/// rotation, and a shadow out of rotation is skipped, never tried at the client's expense.
fn shadow_pools(duplex: &[Target], on_change: &ChangeLog) -> Vec<Pool> {
    duplex
        .iter()
        .map(|target| {
            let one = Balancer::new(vec![target.clone()], Strategy::RoundRobin);
            let on_change = Rc::clone(on_change);
            Pool::logging(one, Ejection::default(), move |t, c| on_change(t, c))
        })
        .collect()
}

/// The shadows a client gets (every client, or `--shadow-sample` of them), each in its
/// pool, dressed like the relay.
#[derive(Clone)]
struct Shadows {
    pools: Vec<Pool>,
    setup: BackendSetup,
    sample: Rc<Sampler>,
}

impl Shadows {
    fn open<S: 'static>(&self, conn: &mut Session<'_, S>) {
        if self.pools.is_empty() || !self.sample.admit() {
            return;
        }
        for (i, pool) in self.pools.iter().enumerate() {
            let target = pool.balancer().targets()[0].clone();
            let shadow = Backend::new(target).shadow().dispatch(pool.dispatch());
            conn.server(&format!("duplex_{i}"), self.setup.dress(shadow));
        }
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

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn maxconn_shares_add_up_to_the_limit() {
        for (limit, workers) in [(100, 2), (7, 3), (2, 2), (1000, 7)] {
            let parts: Vec<usize> = (0..workers).map(|w| share(limit, w, workers)).collect();
            assert_eq!(parts.iter().sum::<usize>(), limit, "{limit}/{workers}");
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
        // Fewer slots than workers: each still takes a client.
        assert_eq!(share(1, 1, 4), 1);
        assert_eq!(share(5, 0, 1), 5);
    }
}
