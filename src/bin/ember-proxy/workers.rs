//! Running the proxy: `--workers N` reactors, one per thread, each running every
//! listener of the configuration on a `SO_REUSEPORT` socket of its own on the listener's
//! address, so the kernel spreads new connections over them (with systemd's sockets,
//! they share those). Each worker's listeners are a [`Listeners`], changed as a whole by
//! a reload.
//!
//! Worker 0 runs on the main thread and owns what the process has once: the signals, the
//! admin server, the notifications to systemd, the drain and the reload. The workers
//! share the proxy counters (one [`Stats`]), the session-end hook ([`Observed`], the
//! access log) and nothing else: each has its own pools, health and queues, and publishes
//! them on the [`Board`] for the admin pages. A worker never touches another's reactor
//! except through its [`ReactorHandle`]; a closure scheduled that way finds the worker's
//! listeners in a thread-local ([`this_worker`]).
//!
//! SIGINT/SIGTERM: every worker accepts what is queued and closes its listeners
//! ([`drain::stop_accepting_all`]), then lets its clients finish for up to `--grace`;
//! worker 0, which serves `/health`, waits for all of them. A second signal stops every
//! worker at once. The process exits when every worker has stopped. SIGHUP with
//! `--config`: worker 0 reads the file and applies it to its listeners; if that worked,
//! every other worker applies it to its own.

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
use ember::{Reactor, ReactorHandle};

use crate::access;
use crate::board::{self, Board, PUBLISH_EVERY, Tally};
use crate::config::Process;
use crate::drain;
use crate::listeners::{Changes, Listeners};
use crate::logging::LogHandle;
use crate::plan::{Plan, ShadowReport, Socket, Started, Worker};
use crate::status::{self, LivePools, Observed, Pools};
use crate::systemd;

/// How often a worker looks whether a backend changed state (to publish at once).
const ROTATION_CHECK: Duration = Duration::from_millis(50);

/// How often a worker paused at `--max-conn` looks whether the others made room.
const MAX_CONN_CHECK: Duration = Duration::from_millis(20);

/// What the process runs, as the command line or the config file gave it.
pub struct Launch {
    /// One per listener.
    pub plans: Vec<Plan>,
    pub process: Process,
    pub log: LogHandle,
    /// The socket systemd passed for each listener, if any (`-l` is then ignored).
    pub passed: Vec<Option<TcpListener>>,
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
    /// Where `--http` shadows report: the compare log, the verdict counters.
    shadows: ShadowReport,
}

/// A started worker, as worker 0 knows it.
struct Peer {
    handle: ReactorHandle,
    thread: JoinHandle<io::Result<()>>,
}

/// One worker, as its own thread knows it: who it is and what it runs.
struct Local {
    worker: usize,
    role: Worker,
    shared: Shared,
    listeners: RefCell<Listeners>,
}

thread_local! {
    /// The worker running on this thread (set once it has started).
    static THIS_WORKER: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

/// The worker running on this thread: what a closure scheduled on it through its
/// [`ReactorHandle`] works on.
fn this_worker() -> Option<Rc<Local>> {
    THIS_WORKER.with(|w| w.borrow().clone())
}

impl Local {
    /// Makes `plans` this worker's listeners ([`Listeners::apply`]).
    fn apply(&self, r: &mut Reactor, plans: Vec<(Plan, Option<Socket>)>) -> io::Result<Changes> {
        let mut start = |r: &mut Reactor, plan: &Plan, socket| {
            start_listener(r, self.worker, plan, &self.role, socket, &self.shared)
        };
        self.listeners.borrow_mut().apply(r, plans, &mut start)
    }

    fn pools(&self) -> LivePools {
        self.listeners.borrow().pools()
    }
}

/// Runs the proxy until it has drained (or failed); every worker has stopped on return.
pub fn run(launch: Launch) -> io::Result<()> {
    let n = launch.process.workers.max(1);
    let roles: Vec<Worker> = (0..n).map(|w| Worker::new(w, n)).collect();
    let shared = Shared {
        workers: n,
        stats: Stats::default(),
        observed: Arc::new(Observed::default()),
        board: (n > 1).then(|| Arc::new(Board::new(n))),
        tallies: roles.iter().map(|w| Arc::clone(&w.tally)).collect(),
        log: launch.log.clone(),
        log_format: launch.process.log_format,
        admin: launch.process.admin.is_some(),
        max_conn: launch.process.max_conn,
        shadows: ShadowReport {
            log: launch
                .process
                .compare_log
                .is_some()
                .then(|| launch.log.clone()),
            counts: Arc::default(),
        },
    };
    let socket_activated = launch.passed.iter().any(Option::is_some);
    let mut peers: Vec<Peer> = Vec::new();
    let served = Reactor::run(|r| {
        let first = for_worker(&launch.plans, 0, n, |i| passed(&launch.passed, i))?;
        let (local, changes) = start_worker(r, 0, first, roles[0].clone(), shared.clone())?;
        for (w, role) in roles.iter().enumerate().skip(1) {
            // Port 0 picked a port for worker 0: the others share it.
            let plans = for_worker(&launch.plans, w, n, |i| match passed(&launch.passed, i)? {
                Some(socket) => Ok(Some(socket)),
                None => Ok(Some(Socket::Bind(changes.bound[i]))),
            });
            match plans.and_then(|p| spawn_worker(w, p, role.clone(), shared.clone(), r.handle())) {
                Ok(peer) => peers.push(peer),
                Err(e) => {
                    stop_peers(&peers);
                    return Err(e);
                }
            }
        }
        let crew = Rc::new(Crew {
            reload: launch.config.clone().map(|path| Reload {
                path,
                process: launch.process.clone(),
            }),
            handles: peers.iter().map(|p| p.handle.clone()).collect(),
            tallies: shared.tallies.clone(),
            stats: shared.stats.clone(),
            grace: launch.process.grace,
            draining: Rc::new(Cell::new(false)),
            local,
        });
        // The signals first: whoever reads the lines below may signal at once.
        handle_signals(r, &crew, &launch.log)?;
        announce(&launch.plans, &changes.bound, n, socket_activated);
        if let Some(addr) = launch.process.admin {
            serve_admin(
                r,
                addr,
                crew.local.pools(),
                &shared,
                Rc::clone(&crew.draining),
            )?;
        }
        let bound: Vec<String> = changes.bound.iter().map(ToString::to_string).collect();
        systemd::tell(&format!(
            "READY=1\nSTATUS=listening on {}",
            bound.join(", ")
        ));
        Ok(())
    });
    stop_peers(&peers);
    join(served, peers)
}

/// Every plan as worker `worker` of `workers` runs it, each with its socket.
fn for_worker(
    plans: &[Plan],
    worker: usize,
    workers: usize,
    mut socket: impl FnMut(usize) -> io::Result<Option<Socket>>,
) -> io::Result<Vec<(Plan, Option<Socket>)>> {
    plans
        .iter()
        .enumerate()
        .map(|(i, plan)| Ok((plan.for_worker(worker, workers), socket(i)?)))
        .collect()
}

/// A duplicate of the socket systemd passed for listener `i`, if it passed one: every
/// worker adopts its own duplicate (one accept queue, which they all wait on).
fn passed(passed: &[Option<TcpListener>], i: usize) -> io::Result<Option<Socket>> {
    match passed.get(i) {
        Some(Some(listener)) => Ok(Some(Socket::Adopt(listener.try_clone()?))),
        _ => Ok(None),
    }
}

/// Starts worker `worker` on `r`: its listeners, the timers that keep the others
/// informed, and its place in the thread-local.
fn start_worker(
    r: &mut Reactor,
    worker: usize,
    plans: Vec<(Plan, Option<Socket>)>,
    role: Worker,
    shared: Shared,
) -> io::Result<(Rc<Local>, Changes)> {
    let local = Rc::new(Local {
        worker,
        role,
        shared,
        listeners: RefCell::default(),
    });
    let changes = local.apply(r, plans)?;
    if let Some(board) = &local.shared.board {
        publish_pools(r, worker, local.pools(), Arc::clone(board));
    }
    if let Some(max) = local.shared.max_conn {
        resume_below_max_conn(r, Rc::clone(&local), max);
    }
    THIS_WORKER.with(|w| *w.borrow_mut() = Some(Rc::clone(&local)));
    Ok((local, changes))
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

/// Starts `plan` on `r` as worker `worker`'s: its listener (with `SO_REUSEPORT`:
/// workers, a reload, and a new process during a restart share the address), its share
/// of the counters, and its session-end hook.
fn start_listener(
    r: &mut Reactor,
    worker: usize,
    plan: &Plan,
    role: &Worker,
    socket: Socket,
    shared: &Shared,
) -> io::Result<Started> {
    let mut plan = plan.clone();
    plan.options = plan
        .options
        .stats(shared.stats.clone())
        .on_session_end(session_end(worker, &role.tally, shared));
    plan.report = Some(shared.shadows.clone());
    r.set_reuse_port(true);
    let started = plan.start_on(r, socket, role);
    // The admin server (worker 0's) keeps its port to itself.
    r.set_reuse_port(false);
    started
}

/// Starts worker `worker` on a thread of its own and waits until it listens (or failed).
fn spawn_worker(
    worker: usize,
    plans: Vec<(Plan, Option<Socket>)>,
    role: Worker,
    shared: Shared,
    first: ReactorHandle,
) -> io::Result<Peer> {
    let (ready, started) = mpsc::channel::<Result<ReactorHandle, io::Error>>();
    let thread = thread::Builder::new()
        .name(format!("ember-proxy/{worker}"))
        .spawn(move || {
            let mut listening = false;
            let served = Reactor::run(|r| {
                start_worker(r, worker, plans, role, shared)?;
                listening = true;
                let _ = ready.send(Ok(r.handle()));
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
    let handle = started
        .recv()
        .map_err(|_| io::Error::other(format!("worker {worker} died while starting")))?
        .map_err(|e| io::Error::new(e.kind(), format!("worker {worker}: {e}")))?;
    Ok(Peer { handle, thread })
}

fn stop_peers(peers: &[Peer]) {
    for peer in peers {
        peer.handle.stop();
    }
}

/// The startup lines: where each listener listens (stdout, as ever), and what an
/// operator should know about restarts.
fn announce(plans: &[Plan], bound: &[SocketAddr], workers: usize, socket_activated: bool) {
    for (plan, &bound) in plans.iter().zip(bound) {
        let mut line = plan.describe(bound);
        if workers > 1 {
            line.push_str(&format!("; {workers} workers"));
        }
        let _ = writeln!(io::stdout().lock(), "{line}");
        if socket_activated {
            log::info!(
                "ember-proxy: socket activation: serving on the listener systemd passed, \
                 {bound} (-l {} ignored)",
                plan.listen
            );
        }
    }
    if !socket_activated {
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
/// enters or leaves its rotation (or a reload replaced them).
fn publish_pools(r: &mut Reactor, worker: usize, pools: LivePools, board: Arc<Board>) {
    board.publish(worker, board::snapshot(&pools.borrow()));
    let mut rotation = in_rotation(&pools.borrow());
    let mut published = Instant::now();
    r.add_periodic_timer(ROTATION_CHECK, move |_| {
        let pools = pools.borrow();
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

/// `--max-conn` over several workers or listeners: the limit counts every client of the
/// process, and a listener pauses accepting when a client of its own takes the sum to the
/// limit; it resumes when one of its own leaves. A listener whose own clients all left
/// while the others kept the sum at the limit would wait for nothing: this resumes it
/// once the sum is below the limit again.
fn resume_below_max_conn(r: &mut Reactor, local: Rc<Local>, max: usize) {
    r.add_periodic_timer(MAX_CONN_CHECK, move |r| {
        if local.shared.stats.clients_active() < max as u64 {
            for server in local.listeners.borrow().servers() {
                if r.is_accepting_paused(server) {
                    r.resume_accepting(server);
                }
            }
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
        shadowing: Arc::clone(&shared.shadows.counts),
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

/// What worker 0 needs to drain and reload the process.
struct Crew {
    /// Worker 0 itself (the reactor the signals arrive on).
    local: Rc<Local>,
    /// With `--config`: what SIGHUP needs to read the file again.
    reload: Option<Reload>,
    /// Workers 1..
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
    for (w, handle) in crew.handles.iter().enumerate().map(|(i, h)| (i + 1, h)) {
        let tally = Arc::clone(&crew.tallies[w]);
        handle.schedule(move |r| {
            let servers = this_worker().map_or_else(Vec::new, |w| w.listeners.borrow().servers());
            drain::stop_accepting_all(r, servers, move |r| {
                drain::stop_when_done(r, deadline, move || tally.active());
            });
        });
    }
    // Worker 0 serves /health: it stays until every worker's clients are done.
    let stats = crew.stats.clone();
    let servers = crew.local.listeners.borrow().servers();
    drain::stop_accepting_all(r, servers, move |r| {
        drain::stop_when_done(r, deadline, move || stats.clients_active());
    });
}

/// What a reload needs: the file, and the process-wide settings it started with (which
/// a reload cannot change).
struct Reload {
    path: PathBuf,
    process: Process,
}

/// SIGHUP with `--config`: reads the file again; if it loads, worker 0 makes its
/// listeners the file's ([`Listeners::apply`]: new clients get the new configuration,
/// live ones finish on the old; listeners added open, listeners dropped close), then
/// every other worker does the same. A file that does not load, or a listener that cannot
/// start, is refused with one line and the running configuration stays. Process-wide
/// settings (`workers`, `admin`, ...) change only with a restart: a file that changes
/// them is applied without them, with a warning.
fn reload_config(r: &mut Reactor, crew: &Crew, reload: &Reload) {
    let path = reload.path.display();
    if crew.draining.get() {
        return;
    }
    let loaded = crate::config::load(&reload.path)
        .and_then(|runs| Ok((Process::of(&runs[0]), Plan::resolve_all(&runs)?)));
    let (process, plans) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            log::error!("ember-proxy: SIGHUP: {e}; still serving the running configuration");
            return;
        }
    };
    let changed = reload.process.differences(&process);
    if !changed.is_empty() {
        log::warn!(
            "ember-proxy: SIGHUP: {path} changes {}: these belong to the whole process and \
             change only with a restart; reloading the listeners without them",
            changed.join(", ")
        );
    }
    let n = crew.handles.len() + 1;
    let first = plans.iter().map(|p| (p.for_worker(0, n), None)).collect();
    let changes = match crew.local.apply(r, first) {
        Ok(changes) => changes,
        Err(e) => {
            log::error!(
                "ember-proxy: SIGHUP: {path}: could not start it: {e}; still serving the running configuration"
            );
            return;
        }
    };
    for (w, handle) in crew.handles.iter().enumerate().map(|(i, h)| (i + 1, h)) {
        // Worker 0 bound any new listener: the others join it on the same port.
        let plans: Vec<(Plan, Option<Socket>)> = plans
            .iter()
            .zip(&changes.bound)
            .map(|(plan, &bound)| (plan.for_worker(w, n), Some(Socket::Bind(bound))))
            .collect();
        handle.schedule(move |r| {
            let applied = this_worker().map(|local| local.apply(r, plans));
            if let Some(Err(e)) = applied {
                log::error!(
                    "ember-proxy/{w}: SIGHUP: {e}; this worker still serves the running configuration"
                );
            }
        });
    }
    for &i in &changes.added {
        let _ = writeln!(
            io::stdout().lock(),
            "{}",
            plans[i].describe(changes.bound[i])
        );
    }
    for listen in &changes.removed {
        log::info!(
            "ember-proxy: SIGHUP: listener {listen} closed (not in {path}); its clients finish"
        );
    }
    log::info!(
        "ember-proxy: SIGHUP: {path} reloaded ({} listeners, {} added, {} removed): new clients get it, live ones finish on the old configuration",
        changes.bound.len(),
        changes.added.len(),
        changes.removed.len()
    );
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
