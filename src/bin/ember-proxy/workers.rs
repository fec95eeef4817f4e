//! Running the proxy: `--workers N` reactors, one per thread, each with its own copy of
//! the plan on its own `SO_REUSEPORT` listener on the same address, so the kernel spreads
//! new connections over them (with systemd's socket, they share that one listener).
//!
//! Worker 0 runs on the main thread and owns what the process has once: the signals, the
//! admin server, the notifications to systemd, and the drain. The workers share the
//! proxy counters (one [`Stats`]), the session-end hook ([`Observed`], the access log) and
//! nothing else: each has its own pools, health and queues, and publishes them on the
//! [`Board`] for the admin pages. A worker never touches another's reactor except through
//! its [`ReactorHandle`].
//!
//! SIGINT/SIGTERM: every worker accepts what is queued and closes its listener
//! ([`drain::stop_accepting`]), then lets its clients finish for up to `--grace`; worker 0,
//! which serves `/health`, waits for all of them. A second signal stops every worker at
//! once. The process exits when every worker has stopped.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ember::proxy::{Pool, Stats};
use ember::{Reactor, ReactorHandle, ServerId};

use crate::access;
use crate::board::{self, Board, PUBLISH_EVERY, Tally};
use crate::drain;
use crate::logging::LogHandle;
use crate::plan::{Plan, Socket, Started, Worker};
use crate::status::{self, LivePools, Observed, Pools};
use crate::systemd;

/// How often a worker looks whether a backend changed state (to publish at once).
const ROTATION_CHECK: Duration = Duration::from_millis(50);

/// How often a worker paused at `--max-conn` looks whether the others made room.
const MAX_CONN_CHECK: Duration = Duration::from_millis(20);

/// What the process runs, as the command line gave it.
pub struct Launch {
    pub plan: Plan,
    pub workers: usize,
    pub admin: Option<SocketAddr>,
    pub log: LogHandle,
    pub log_format: access::Format,
    /// `--max-conn`: the limit is on the sum over the workers.
    pub max_conn: Option<usize>,
    /// The listener systemd passed (socket activation); `-l` is then ignored.
    pub adopted: Option<TcpListener>,
    /// The `--config` file, re-read on SIGHUP.
    pub config: Option<PathBuf>,
}

/// What every worker shares.
#[derive(Clone)]
struct Shared {
    workers: usize,
    stats: Stats,
    observed: Arc<Observed>,
    /// `None` with one worker: the pages read its pools live.
    board: Option<Arc<Board>>,
    tallies: Vec<Arc<Tally>>,
    log: LogHandle,
    log_format: access::Format,
    admin: bool,
    max_conn: Option<usize>,
}

/// A started worker, as worker 0 knows it.
struct Peer {
    handle: ReactorHandle,
    server: ServerId,
    thread: JoinHandle<io::Result<()>>,
}

/// Runs the proxy until it has drained (or failed); every worker has stopped on return.
pub fn run(mut launch: Launch) -> io::Result<()> {
    let n = launch.workers.max(1);
    let plans: Vec<(Plan, Worker)> = (0..n)
        .map(|w| (launch.plan.for_worker(w, n), Worker::new(w, n)))
        .collect();
    let shared = Shared {
        workers: n,
        stats: Stats::default(),
        observed: Arc::new(Observed::default()),
        board: (n > 1).then(|| Arc::new(Board::new(n))),
        tallies: plans.iter().map(|(_, w)| Arc::clone(&w.tally)).collect(),
        log: launch.log.clone(),
        log_format: launch.log_format,
        admin: launch.admin.is_some(),
        max_conn: launch.max_conn,
    };
    let socket_activated = launch.adopted.is_some();
    let mut sockets = passed_sockets(launch.adopted.take(), n)?.into_iter();
    let mut peers: Vec<Peer> = Vec::new();
    let served = Reactor::run(|r| {
        let started = start_all(r, &launch.plan, &plans, &mut sockets, &shared, &mut peers)?;
        let bound = started.server.local_addr().unwrap_or(launch.plan.listen);
        announce(&launch.plan, bound, n, socket_activated);
        let crew = Rc::new(Crew {
            servers: RefCell::new(
                std::iter::once(started.server.id())
                    .chain(peers.iter().map(|p| p.server))
                    .collect(),
            ),
            pools: Rc::new(RefCell::new(started.pools.clone())),
            checks: RefCell::new(started.checks.clone()),
            reload: launch.config.clone().map(|path| Reload {
                path,
                listen: launch.plan.listen,
                role: plans[0].1.clone(),
                shared: shared.clone(),
            }),
            handles: peers.iter().map(|p| p.handle.clone()).collect(),
            tallies: shared.tallies.clone(),
            stats: shared.stats.clone(),
            grace: launch.plan.grace,
            draining: Rc::new(Cell::new(false)),
        });
        if let Some(addr) = launch.admin {
            serve_admin(
                r,
                addr,
                Rc::clone(&crew.pools),
                &shared,
                Rc::clone(&crew.draining),
            )?;
        }
        handle_signals(r, &crew, &launch.log)?;
        systemd::tell(&format!("READY=1\nSTATUS=listening on {bound}"));
        Ok(())
    });
    stop_peers(&peers);
    join(served, peers)
}

/// Starts worker 0 on `r`, then the others, each on a thread of its own, once worker 0
/// has bound (port 0 picks the port they all share). Returns worker 0's proxy; the others
/// are in `peers`. On failure, the workers already started are told to stop.
fn start_all(
    r: &mut Reactor,
    plan: &Plan,
    plans: &[(Plan, Worker)],
    sockets: &mut impl Iterator<Item = Socket>,
    shared: &Shared,
    peers: &mut Vec<Peer>,
) -> io::Result<Started> {
    let socket = sockets.next().unwrap_or(Socket::Bind(plan.listen));
    let started = start_worker(r, 0, &plans[0], socket, shared)?;
    let bound = started.server.local_addr().unwrap_or(plan.listen);
    for (w, plan) in plans.iter().enumerate().skip(1) {
        let socket = sockets.next().unwrap_or(Socket::Bind(bound));
        match spawn_worker(w, plan.clone(), socket, shared.clone(), r.handle()) {
            Ok(peer) => peers.push(peer),
            Err(e) => {
                stop_peers(peers);
                return Err(e);
            }
        }
    }
    Ok(started)
}

/// Waits for every other worker to end; the first failure (worker 0's first) is the
/// process's.
fn join(served: io::Result<()>, peers: Vec<Peer>) -> io::Result<()> {
    let mut outcome = served;
    for (w, peer) in peers.into_iter().enumerate() {
        let ended = peer
            .thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread panicked")));
        if let (Ok(()), Err(e)) = (&outcome, ended) {
            outcome = Err(io::Error::new(e.kind(), format!("worker {}: {e}", w + 1)));
        }
    }
    outcome
}

/// With systemd's listener, one socket per worker: the listener itself for worker 0 and
/// a duplicate for each other (one accept queue, which every worker waits on). Without,
/// none: each worker binds its own.
fn passed_sockets(adopted: Option<TcpListener>, workers: usize) -> io::Result<Vec<Socket>> {
    let Some(listener) = adopted else {
        return Ok(Vec::new());
    };
    let mut sockets = Vec::with_capacity(workers);
    for _ in 1..workers {
        sockets.push(Socket::Adopt(listener.try_clone()?));
    }
    sockets.insert(0, Socket::Adopt(listener));
    Ok(sockets)
}

/// Starts `plan` on `r` as worker `worker`: its listener (with `SO_REUSEPORT`: workers,
/// and a new process during a restart, share the address), its share of the counters,
/// its session-end hook, and the timers that keep the others informed.
fn start_worker(
    r: &mut Reactor,
    worker: usize,
    (plan, role): &(Plan, Worker),
    socket: Socket,
    shared: &Shared,
) -> io::Result<Started> {
    let mut plan = plan.clone();
    plan.options = plan
        .options
        .stats(shared.stats.clone())
        .on_session_end(session_end(worker, &role.tally, shared));
    r.set_reuse_port(true);
    let started = plan.start_on(r, socket, role);
    // The admin server (worker 0's) keeps its port to itself.
    r.set_reuse_port(false);
    let started = started?;
    if let Some(board) = &shared.board {
        publish_pools(r, worker, started.pools.clone(), Arc::clone(board));
    }
    if let (Some(max), true) = (shared.max_conn, shared.workers > 1) {
        resume_below_max_conn(r, started.server.id(), shared.stats.clone(), max);
    }
    Ok(started)
}

/// Starts worker `worker` on a thread of its own and waits until it listens (or failed).
fn spawn_worker(
    worker: usize,
    plan: (Plan, Worker),
    socket: Socket,
    shared: Shared,
    first: ReactorHandle,
) -> io::Result<Peer> {
    let (ready, started) = mpsc::channel::<Result<(ReactorHandle, ServerId), io::Error>>();
    let thread = thread::Builder::new()
        .name(format!("ember-proxy/{worker}"))
        .spawn(move || {
            let mut listening = false;
            let served = Reactor::run(|r| {
                let started = start_worker(r, worker, &plan, socket, &shared)?;
                listening = true;
                let _ = ready.send(Ok((r.handle(), started.server.id())));
                Ok(())
            });
            match &served {
                Err(e) if !listening => {
                    let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
                // A worker that fails while serving takes the process down with it (a
                // supervisor restarts it whole), rather than serving on with fewer.
                Err(e) => {
                    log::error!("ember-proxy/{worker}: stopped: {e}");
                    first.stop();
                }
                Ok(()) => {}
            }
            served
        })?;
    let (handle, server) = started
        .recv()
        .map_err(|_| io::Error::other(format!("worker {worker} died while starting")))?
        .map_err(|e| io::Error::new(e.kind(), format!("worker {worker}: {e}")))?;
    Ok(Peer {
        handle,
        server,
        thread,
    })
}

fn stop_peers(peers: &[Peer]) {
    for peer in peers {
        peer.handle.stop();
    }
}

/// The startup lines: where the proxy listens (stdout, as ever), and what an operator
/// should know about restarts.
fn announce(plan: &Plan, bound: SocketAddr, workers: usize, socket_activated: bool) {
    let mut line = plan.describe(bound);
    if workers > 1 {
        line.push_str(&format!("; {workers} workers"));
    }
    let _ = writeln!(io::stdout().lock(), "{line}");
    if socket_activated {
        log::info!(
            "ember-proxy: socket activation: serving on the listener systemd passed, {bound} \
             (-l {} ignored)",
            plan.listen
        );
    } else {
        // Restarts on a socket of our own are the ones that depend on the kernel.
        drain::warn_without_migration();
    }
}

/// The session-end hook of worker `worker`: count it, feed the admin pages, and write
/// its access-log line (tagged `worker=N` when there are several).
fn session_end(
    worker: usize,
    tally: &Arc<Tally>,
    shared: &Shared,
) -> impl Fn(&ember::proxy::SessionRecord) + Send + Sync + 'static {
    let tally = Arc::clone(tally);
    let observed = shared.admin.then(|| Arc::clone(&shared.observed));
    let (log, format) = (shared.log.clone(), shared.log_format);
    let tag = (shared.workers > 1).then_some(worker);
    move |record| {
        tally.finished();
        if let Some(observed) = &observed {
            observed.session_ended(record);
        }
        if log.wants_access() {
            let line = access::line(record, format);
            log.access(match tag {
                Some(worker) => with_worker(line, format, worker),
                None => line,
            });
        }
    }
}

/// An access-log line with `worker=N` (or `"worker":N`) right before its session id:
/// with several workers, session ids are counted per worker, and the pair names one
/// session.
fn with_worker(line: String, format: access::Format, worker: usize) -> String {
    let (at, tag) = match format {
        access::Format::Text => (" session=", format!(" worker={worker}")),
        access::Format::Json => (",\"session\":", format!(",\"worker\":{worker}")),
    };
    match line.find(at) {
        Some(i) => format!("{}{tag}{}", &line[..i], &line[i..]),
        None => line,
    }
}

/// Publishes worker `worker`'s pools every [`PUBLISH_EVERY`], and at once when a backend
/// enters or leaves its rotation.
fn publish_pools(r: &mut Reactor, worker: usize, pools: Vec<(String, Pool)>, board: Arc<Board>) {
    board.publish(worker, board::snapshot(&pools));
    let mut rotation = in_rotation(&pools);
    let mut published = Instant::now();
    r.add_periodic_timer(ROTATION_CHECK, move |_| {
        let now = in_rotation(&pools);
        if now != rotation || published.elapsed() >= PUBLISH_EVERY {
            board.publish(worker, board::snapshot(&pools));
            rotation = now;
            published = Instant::now();
        }
    });
}

fn in_rotation(pools: &[(String, Pool)]) -> Vec<bool> {
    pools
        .iter()
        .flat_map(|(_, pool)| {
            (0..pool.balancer().targets().len()).map(move |i| pool.in_rotation(i))
        })
        .collect()
}

/// `--max-conn` over several workers: the limit counts every worker's clients, and a
/// worker pauses accepting when a client of its own takes the sum to the limit; it
/// resumes when one of its own leaves. A worker whose own clients all left while the
/// others kept the sum at the limit would wait for nothing: this resumes it once the
/// sum is below the limit again.
fn resume_below_max_conn(r: &mut Reactor, server: ServerId, stats: Stats, max: usize) {
    r.add_periodic_timer(MAX_CONN_CHECK, move |r| {
        if stats.clients_active() < max as u64 && r.is_accepting_paused(server) {
            r.resume_accepting(server);
        }
    });
}

/// `--admin`, served by worker 0 for the whole process.
fn serve_admin(
    r: &mut Reactor,
    addr: SocketAddr,
    live: LivePools,
    shared: &Shared,
    draining: Rc<Cell<bool>>,
) -> io::Result<()> {
    let pools = match &shared.board {
        Some(board) => Pools::Board(Arc::clone(board)),
        None => Pools::Live(live),
    };
    let routes = status::routes(status::Sources {
        stats: shared.stats.clone(),
        pools,
        workers: shared.tallies.clone(),
        observed: Arc::clone(&shared.observed),
        draining,
        started: Instant::now(),
    });
    let admin = ember::admin::serve(r, addr, routes)
        .map_err(|e| io::Error::new(e.kind(), format!("--admin {addr}: {e}")))?;
    let at = admin.local_addr().unwrap_or(addr);
    let _ = writeln!(
        io::stdout().lock(),
        "ember-proxy: admin on http://{at}/ (/metrics, /stats, /health)"
    );
    Ok(())
}

/// What worker 0 needs to drain the process.
struct Crew {
    /// Each worker's proxy server, by worker index (worker 0's changes on a reload).
    servers: RefCell<Vec<ServerId>>,
    /// With `--config`: what SIGHUP needs to start the file's new version.
    reload: Option<Reload>,
    /// Worker 0's pools, for the admin pages (replaced by a reload).
    pools: LivePools,
    /// Worker 0's health-check timers (a reload stops them and starts the new ones).
    checks: RefCell<Vec<ember::TimerId>>,
    /// Workers 1.. (worker 0 is the reactor the signal arrives on).
    handles: Vec<ReactorHandle>,
    tallies: Vec<Arc<Tally>>,
    stats: Stats,
    grace: Duration,
    /// The drain has started (`/health` says 503).
    draining: Rc<Cell<bool>>,
}

/// Worker 0's signals: SIGINT/SIGTERM drain every worker, and a second one stops them
/// all at once; SIGUSR1 reopens the access log (logrotate); a closed terminal (SIGHUP)
/// must not stop the proxy.
fn handle_signals(r: &mut Reactor, crew: &Rc<Crew>, log: &LogHandle) -> io::Result<()> {
    // SIGHUP re-reads the config file (a closed terminal must not stop the proxy either).
    let reloading = Rc::clone(crew);
    r.on_signal(libc::SIGHUP, move |r| {
        if let Some(reload) = &reloading.reload {
            reload_config(r, &reloading, reload);
        }
    })?;
    let log = log.clone();
    r.on_signal(libc::SIGUSR1, move |_| log.reopen())?;
    for signo in [libc::SIGINT, libc::SIGTERM] {
        let crew = Rc::clone(crew);
        r.on_signal(signo, move |r| {
            if crew.draining.replace(true) {
                for handle in &crew.handles {
                    handle.stop();
                }
                r.stop();
                return;
            }
            drain_all(r, &crew);
        })?;
    }
    Ok(())
}

fn drain_all(r: &mut Reactor, crew: &Crew) {
    systemd::tell("STOPPING=1");
    let live = crew.stats.clients_active();
    if live > 0 {
        log::info!(
            "ember-proxy: stopping: not accepting; waiting up to {:.1}s for {live} client(s)",
            crew.grace.as_secs_f64()
        );
    }
    let deadline = Instant::now() + crew.grace;
    let servers = crew.servers.borrow().clone();
    for (w, handle) in crew.handles.iter().enumerate().map(|(i, h)| (i + 1, h)) {
        let (server, tally) = (servers[w], Arc::clone(&crew.tallies[w]));
        handle.schedule(move |r| {
            drain::stop_accepting(r, server, move |r| {
                drain::stop_when_done(r, deadline, move || tally.active());
            });
        });
    }
    // Worker 0 serves /health: it stays until every worker's clients are done.
    let stats = crew.stats.clone();
    drain::stop_accepting(r, servers[0], move |r| {
        drain::stop_when_done(r, deadline, move || stats.clients_active());
    });
}

/// What a reload needs: the file, the address the proxy listens on (which a reload cannot
/// move), and worker 0's place in the counters.
struct Reload {
    path: PathBuf,
    listen: SocketAddr,
    role: Worker,
    shared: Shared,
}

/// SIGHUP with `--config`: reads the file again; if it is valid, starts its plan on the
/// same address (`SO_REUSEPORT`: both listen for a moment) and stops the old listener
/// after taking what it had queued, so new clients get the new configuration and live
/// ones finish on the old. A file that does not load, or that moves the listener, is
/// refused with one line and the running configuration stays. One worker only, for now.
fn reload_config(r: &mut Reactor, crew: &Crew, reload: &Reload) {
    let path = reload.path.display();
    if crew.draining.get() {
        return;
    }
    if !crew.handles.is_empty() {
        log::error!(
            "ember-proxy: SIGHUP: reloading {path} with --workers above 1 is not supported yet; still serving the running configuration"
        );
        return;
    }
    let plan = match crate::config::load(&reload.path).and_then(|runs| match runs.as_slice() {
        [run] => Plan::resolve(run),
        _ => Err(format!(
            "{}: one [[listener]] per process for now",
            reload.path.display()
        )),
    }) {
        Ok(plan) => plan,
        Err(e) => {
            log::error!("ember-proxy: SIGHUP: {e}; still serving the running configuration");
            return;
        }
    };
    if plan.listen != reload.listen {
        log::error!(
            "ember-proxy: SIGHUP: {path} moves the listener from {} to {}: restart to move it; still serving the running configuration",
            reload.listen,
            plan.listen
        );
        return;
    }
    let old = crew.servers.borrow()[0];
    let bound = r.server_addr(old).unwrap_or(reload.listen);
    let role = (plan.for_worker(0, 1), reload.role.clone());
    match start_worker(r, 0, &role, Socket::Bind(bound), &reload.shared) {
        Ok(started) => {
            crew.servers.borrow_mut()[0] = started.server.id();
            *crew.pools.borrow_mut() = started.pools;
            // The old pools serve only clients already connected: no more checks.
            for timer in crew.checks.replace(started.checks) {
                r.cancel_timer(timer);
            }
            drain::stop_accepting(r, old, |_| {});
            log::info!(
                "ember-proxy: SIGHUP: {path} reloaded: new clients get it, live ones finish on the old configuration"
            );
        }
        Err(e) => log::error!(
            "ember-proxy: SIGHUP: {path}: could not start it: {e}; still serving the running configuration"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_goes_right_before_the_session_id() {
        let text = "2026-01-01T00:00:00Z session=3 client=-".to_owned();
        assert_eq!(
            with_worker(text, access::Format::Text, 1),
            "2026-01-01T00:00:00Z worker=1 session=3 client=-"
        );
        let json = "{\"time\":\"T\",\"session\":3,\"client\":\"-\"}".to_owned();
        assert_eq!(
            with_worker(json, access::Format::Json, 0),
            "{\"time\":\"T\",\"worker\":0,\"session\":3,\"client\":\"-\"}"
        );
    }
}
