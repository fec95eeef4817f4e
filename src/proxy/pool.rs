//! A pool of interchangeable backends for one role (the primary of every client): picked
//! by a [`Balancer`], kept in rotation by passive health ([`Ejection`]), and a
//! [`Dispatch`] that sends a failed connect's retry to another backend in rotation
//! (HAProxy's `balance` + `observe layer4` + `retries` + `option redispatch`).
//!
//! ```no_run
//! use ember::Reactor;
//! use ember::proxy::{self, Backend, Balancer, Ejection, Pool, Strategy, Target};
//!
//! Reactor::run(|r| {
//!     let targets = vec![Target::parse("127.0.0.1:8081").unwrap(), Target::parse("127.0.0.1:8082").unwrap()];
//!     let pool = Pool::new(Balancer::new(targets, Strategy::RoundRobin), Ejection::default());
//!     proxy::start_with_state(r, "0.0.0.0:8080", || None, move |conn| {
//!         let Some(lease) = pool.pick(conn.peer().map(|a| a.ip())) else {
//!             conn.close(); // every backend is out of rotation
//!             return;
//!         };
//!         let backend = Backend::new(lease.target().clone()).retries(3).dispatch(pool.dispatch());
//!         conn.server("app", backend);
//!         *conn.state() = Some(lease);
//!     })?;
//!     r.stop_on_signals()
//! })
//! .unwrap();
//! ```

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::{LocalHandle, Reactor, TimerId, UnbindReason};

use super::balance::{Balancer, Lease};
use super::dispatch::Dispatch;
use super::health::{Change, Ejection, Health};
use super::probe::{self, Check};
use super::target::Target;

type ChangeLog = Box<dyn Fn(&Target, Change)>;

/// How long a client waits in a pool's queue for a free slot by default (HAProxy's
/// `timeout queue`; it falls back to the connect timeout, 5 s in most configurations).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many clients a pool's queue holds by default; beyond that a client is refused at
/// once instead of waiting.
pub const DEFAULT_QUEUE_LENGTH: usize = 4096;

/// Why a pool gave a client no backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every backend is out of rotation.
    AllDown,
    /// Every backend in rotation is at its connection limit and the queue is full.
    QueueFull,
    /// The client waited the queue timeout and no slot came free.
    TimedOut,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::AllDown => "every backend is down",
            Refused::QueueFull => "every backend is full and the queue is full",
            Refused::TimedOut => "no backend slot came free within the queue timeout",
        })
    }
}

/// What a queued client hears: its lease, or why there is none.
type Waiter = Box<dyn FnOnce(&mut Reactor, Result<Lease, Refused>)>;

/// Clients waiting for a backend under its connection limit, first come first served.
struct Queue {
    waiting: RefCell<VecDeque<(Instant, Waiter)>>,
    timeout: Duration,
    capacity: usize,
    /// Set once the first client waits: how a released lease (or a backend back in
    /// rotation) schedules a look at the queue, and the pool to look at.
    ticks: OnceCell<(LocalHandle, Weak<Inner>)>,
    /// A look at the queue is already scheduled for the end of this tick.
    wake_pending: Cell<bool>,
}

/// What a pool counts about one backend, for a status page.
#[derive(Default)]
struct Counters {
    connects: Cell<u64>,
    failures: Cell<u64>,
    last_check: Cell<Option<(SystemTime, bool)>>,
}

/// One backend of a pool as a status page shows it ([`Pool::status`]).
#[derive(Clone, Debug)]
pub struct BackendStatus {
    /// Where it is.
    pub target: Target,
    /// In rotation: takes new clients.
    pub up: bool,
    /// Clients it has now (live leases).
    pub active: usize,
    /// Its weight.
    pub weight: u32,
    /// Its connection limit, if any.
    pub max_connections: Option<usize>,
    /// Connects to it that succeeded.
    pub connects: u64,
    /// Connects to it that failed (refused, timed out, reset before connecting).
    pub connect_failures: u64,
    /// When its last active check ended, and whether it passed.
    pub last_check: Option<(SystemTime, bool)>,
}

struct Inner {
    balancer: Balancer,
    health: Health,
    on_change: Option<ChangeLog>,
    counters: Vec<Counters>,
    /// `limits[i]`: the most clients backend `i` takes at once (HAProxy's `maxconn`).
    limits: Vec<Option<usize>>,
    queue: Queue,
}

/// Backends in rotation, shared by every client of a proxy (clones share the state).
#[derive(Clone)]
pub struct Pool(Rc<Inner>);

impl Pool {
    /// A pool over the balancer's targets, all in rotation to begin with.
    pub fn new(balancer: Balancer, ejection: Ejection) -> Pool {
        Pool::with_log(balancer, ejection, None)
    }

    /// [`new`](Self::new), calling `on_change` whenever a backend leaves or rejoins the
    /// rotation (one log line, say).
    pub fn logging(
        balancer: Balancer,
        ejection: Ejection,
        on_change: impl Fn(&Target, Change) + 'static,
    ) -> Pool {
        Pool::with_log(balancer, ejection, Some(Box::new(on_change)))
    }

    fn with_log(balancer: Balancer, ejection: Ejection, on_change: Option<ChangeLog>) -> Pool {
        let n = balancer.targets().len();
        Pool(Rc::new(Inner {
            health: Health::new(n, ejection),
            counters: (0..n).map(|_| Counters::default()).collect(),
            balancer,
            on_change,
            limits: vec![None; n],
            queue: Queue {
                waiting: RefCell::new(VecDeque::new()),
                timeout: DEFAULT_QUEUE_TIMEOUT,
                capacity: DEFAULT_QUEUE_LENGTH,
                ticks: OnceCell::new(),
                wake_pending: Cell::new(false),
            },
        }))
    }

    /// Caps how many clients each backend takes at once (HAProxy's per-server
    /// `maxconn`): `limits[i]` for backend `i`, `None` for no cap. A client that finds
    /// every backend in rotation at its cap can [`wait`](Self::wait) for a free slot.
    ///
    /// # Panics
    /// If there is not one limit per backend, or the pool was already cloned.
    pub fn max_connections(mut self, limits: Vec<Option<usize>>) -> Pool {
        let inner = Rc::get_mut(&mut self.0).expect("limit a pool before sharing it");
        assert_eq!(limits.len(), inner.limits.len(), "one limit per backend");
        inner.limits = limits;
        self
    }

    /// How long a client may [`wait`](Self::wait) for a free slot (default
    /// [`DEFAULT_QUEUE_TIMEOUT`]) and how many may wait at once (default
    /// [`DEFAULT_QUEUE_LENGTH`]).
    ///
    /// # Panics
    /// If the pool was already cloned.
    pub fn queue(mut self, timeout: Duration, capacity: usize) -> Pool {
        let inner = Rc::get_mut(&mut self.0).expect("configure a pool before sharing it");
        inner.queue.timeout = timeout;
        inner.queue.capacity = capacity;
        self
    }

    /// A backend in rotation and under its connection limit for a client from `client`
    /// (the address matters to the `source` strategy), or `None` when there is none, or
    /// when clients are already [`wait`](Self::wait)ing (they come first).
    pub fn pick(&self, client: Option<IpAddr>) -> Option<Lease> {
        if !self.0.queue.waiting.borrow().is_empty() {
            return None;
        }
        self.0.pick_free(client, None)
    }

    /// After [`pick`](Self::pick) found nothing: queues a client from `client` for the
    /// next backend slot to come free, in arrival order. `then` runs on the reactor
    /// with a lease as soon as one is free, or with [`Refused::TimedOut`] after the
    /// queue timeout (or [`Refused::AllDown`] if every backend leaves the rotation
    /// meanwhile). Returns at once, without queueing, if every backend is out of
    /// rotation or the queue is full.
    ///
    /// ```no_run
    /// use ember::Reactor;
    /// use ember::proxy::{self, Backend, Balancer, Ejection, Lease, Pool, Strategy, Target};
    ///
    /// Reactor::run(|r| {
    ///     let targets = vec![Target::parse("127.0.0.1:8081").unwrap()];
    ///     let pool = Pool::new(Balancer::new(targets, Strategy::RoundRobin), Ejection::default())
    ///         .max_connections(vec![Some(100)]);
    ///     proxy::start_with_state(r, "0.0.0.0:8080", || None::<Lease>, move |conn| {
    ///         let open = |conn: &mut proxy::Session<'_, Option<Lease>>, lease: Lease| {
    ///             conn.server("app", Backend::new(lease.target().clone()));
    ///             *conn.state() = Some(lease);
    ///         };
    ///         if let Some(lease) = pool.pick(None) {
    ///             return open(conn, lease);
    ///         }
    ///         let handle = conn.handle();
    ///         let queued = pool.wait(conn.reactor(), None, move |r, outcome| {
    ///             handle.run(r, |conn| match outcome {
    ///                 Ok(lease) => {
    ///                     conn.resume_client();
    ///                     open(conn, lease);
    ///                 }
    ///                 Err(_) => conn.close(),
    ///             });
    ///         });
    ///         match queued {
    ///             Ok(()) => conn.pause_client(), // nothing is read until a slot is free
    ///             Err(_) => conn.close(),
    ///         }
    ///     })?;
    ///     r.stop_on_signals()
    /// })
    /// .unwrap();
    /// ```
    pub fn wait(
        &self,
        r: &mut Reactor,
        client: Option<IpAddr>,
        then: impl FnOnce(&mut Reactor, Result<Lease, Refused>) + 'static,
    ) -> Result<(), Refused> {
        let _ = client; // a queued client takes any free slot, as in HAProxy's backend queue
        if self.0.none_in_rotation() {
            return Err(Refused::AllDown);
        }
        let queue = &self.0.queue;
        if queue.waiting.borrow().len() >= queue.capacity {
            return Err(Refused::QueueFull);
        }
        if queue.ticks.get().is_none() {
            let _ = queue.ticks.set((r.local_handle(), Rc::downgrade(&self.0)));
            let pool = Rc::downgrade(&self.0);
            self.0.balancer.on_release(move |_| {
                if let Some(pool) = pool.upgrade() {
                    pool.wake();
                }
            });
        }
        queue
            .waiting
            .borrow_mut()
            .push_back((Instant::now() + queue.timeout, Box::new(then)));
        let pool = Rc::downgrade(&self.0);
        r.add_timer(queue.timeout, move |r| {
            if let Some(pool) = pool.upgrade() {
                pool.serve_queue(r);
            }
        });
        // A slot may already be free (the queue was ahead of this client's pick).
        self.0.wake();
        Ok(())
    }

    /// Clients waiting for a free slot now.
    pub fn queued(&self) -> usize {
        self.0.queue.waiting.borrow().len()
    }

    /// Every backend's state and counts, in the order given.
    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        let inner = &self.0;
        let targets = inner.balancer.targets();
        (0..targets.len())
            .map(|i| BackendStatus {
                target: targets[i].clone(),
                up: inner.health.in_rotation(i, now),
                active: inner.balancer.active(i),
                weight: inner.balancer.weight(i),
                max_connections: inner.limits[i],
                connects: inner.counters[i].connects.get(),
                connect_failures: inner.counters[i].failures.get(),
                last_check: inner.counters[i].last_check.get(),
            })
            .collect()
    }

    /// Whether backend `index` takes new clients now.
    pub fn in_rotation(&self, index: usize) -> bool {
        self.0.health.in_rotation(index, Instant::now())
    }

    /// The balancer behind the pool.
    pub fn balancer(&self) -> &Balancer {
        &self.0.balancer
    }

    /// Starts active health checks of every backend (HAProxy's `check`): a first round
    /// now, then one every `check.interval`. `check.fall` failed checks in a row take a
    /// backend out of rotation, `check.rise` passed ones bring it back (logged like any
    /// change). Cancel the returned timer to stop them.
    pub fn start_checks(&self, r: &mut Reactor, check: Check) -> TimerId {
        let round = CheckRound {
            pool: Rc::clone(&self.0),
            running: Rc::new(
                (0..self.0.balancer.targets().len())
                    .map(|_| Cell::new(false))
                    .collect(),
            ),
            interval: check.interval,
            check: Rc::new(check),
        };
        round.run(r);
        let interval = round.interval;
        r.add_periodic_timer(interval, move |r| round.run(r))
    }

    /// What to hang on each [`Backend`](super::Backend) opened from this pool, with
    /// [`Backend::retries`](super::Backend::retries): it scores every connect, and sends
    /// a retry to another backend in rotation (or the same one if it is the only one
    /// left), or gives up when none is.
    pub fn dispatch(&self) -> Rc<dyn Dispatch> {
        Rc::clone(&self.0) as Rc<dyn Dispatch>
    }
}

/// One round of active checks: a probe per backend not already being probed.
struct CheckRound {
    pool: Rc<Inner>,
    /// A probe of backend `i` is still running.
    running: Rc<Vec<Cell<bool>>>,
    check: Rc<Check>,
    interval: std::time::Duration,
}

impl CheckRound {
    fn run(&self, r: &mut Reactor) {
        for (i, target) in self.pool.balancer.targets().iter().enumerate() {
            if self.running[i].replace(true) {
                continue;
            }
            let (pool, running, check) = (
                Rc::clone(&self.pool),
                Rc::clone(&self.running),
                Rc::clone(&self.check),
            );
            let verdict = Box::new(move |_: &mut Reactor, passed: bool| {
                running[i].set(false);
                pool.counters[i]
                    .last_check
                    .set(Some((SystemTime::now(), passed)));
                let change = pool.health.checked(i, passed, check.rise, check.fall);
                pool.changed(&pool.balancer.targets()[i], change);
            });
            probe::probe(r, target, &self.check, verdict);
        }
    }
}

impl Inner {
    fn index_of(&self, target: &Target) -> Option<usize> {
        self.balancer.targets().iter().position(|t| t == target)
    }

    fn changed(&self, target: &Target, change: Option<Change>) {
        if change == Some(Change::Up) {
            self.wake(); // a backend back in rotation has room for waiting clients
        }
        if let (Some(change), Some(log)) = (change, &self.on_change) {
            log(target, change);
        }
    }

    /// Schedules a look at the queue for the end of this tick, once however many leases
    /// are released in it.
    fn wake(&self) {
        let queue = &self.queue;
        if queue.waiting.borrow().is_empty() || queue.wake_pending.get() {
            return;
        }
        if let Some((ticks, me)) = queue.ticks.get() {
            queue.wake_pending.set(true);
            let me = me.clone();
            ticks.next_tick(move |r| {
                if let Some(pool) = me.upgrade() {
                    pool.queue.wake_pending.set(false);
                    pool.serve_queue(r);
                }
            });
        }
    }

    /// Backend `i` is under its connection limit.
    fn has_room(&self, i: usize) -> bool {
        self.limits[i].is_none_or(|limit| self.balancer.active(i) < limit)
    }

    /// A lease on a backend in rotation with room, other than `except`.
    fn pick_free(&self, client: Option<IpAddr>, except: Option<usize>) -> Option<Lease> {
        let now = Instant::now();
        self.balancer.pick_among(client, |i| {
            Some(i) != except && self.health.in_rotation(i, now) && self.has_room(i)
        })
    }

    fn none_in_rotation(&self) -> bool {
        let now = Instant::now();
        (0..self.limits.len()).all(|i| !self.health.in_rotation(i, now))
    }

    /// Hands free slots to waiting clients in order, and turns away those whose time is
    /// up (or all of them, if every backend has left the rotation). The queue is never
    /// borrowed while a client's callback runs: the callback may drop its lease (a
    /// client gone meanwhile), which wakes the queue again.
    fn serve_queue(&self, r: &mut Reactor) {
        loop {
            let now = Instant::now();
            let outcome = {
                let mut waiting = self.queue.waiting.borrow_mut();
                let Some((deadline, _)) = waiting.front() else {
                    return;
                };
                let outcome = if self.none_in_rotation() {
                    Err(Refused::AllDown)
                } else if let Some(lease) = self.pick_free(None, None) {
                    Ok(lease)
                } else if *deadline <= now {
                    Err(Refused::TimedOut)
                } else {
                    return;
                };
                let (_, then) = waiting.pop_front().expect("a front entry was just seen");
                (then, outcome)
            };
            let (then, outcome) = outcome;
            then(r, outcome);
        }
    }
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

impl Dispatch for Inner {
    fn connected(&self, target: &Target) {
        if let Some(i) = self.index_of(target) {
            bump(&self.counters[i].connects);
            self.changed(target, self.health.connect_succeeded(i));
        }
    }

    fn available(&self, target: &Target) -> bool {
        self.index_of(target)
            .is_some_and(|i| self.health.in_rotation(i, Instant::now()))
    }

    fn failed(&self, target: &Target, _reason: &UnbindReason) -> Option<Target> {
        let i = self.index_of(target)?;
        bump(&self.counters[i].failures);
        let now = Instant::now();
        self.changed(target, self.health.connect_failed(i, now));
        // The client's lease stays on the backend it was first given: a retry elsewhere
        // is not counted against that backend's limit.
        match self.pick_free(None, Some(i)) {
            Some(lease) => Some(lease.target().clone()),
            None => self.health.in_rotation(i, now).then(|| target.clone()),
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = Instant::now();
        let states: Vec<String> = self
            .0
            .balancer
            .targets()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let state = if self.0.health.in_rotation(i, now) {
                    "up"
                } else {
                    "down"
                };
                format!("{t} {state}")
            })
            .collect();
        f.debug_tuple("Pool").field(&states).finish()
    }
}
