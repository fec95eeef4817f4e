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

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

use crate::{Reactor, TimerId, UnbindReason};

use super::balance::{Balancer, Lease};
use super::dispatch::Dispatch;
use super::health::{Change, Ejection, Health};
use super::probe::{self, Check};
use super::target::Target;

type ChangeLog = Box<dyn Fn(&Target, Change)>;

struct Inner {
    balancer: Balancer,
    health: Health,
    on_change: Option<ChangeLog>,
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
        let health = Health::new(balancer.targets().len(), ejection);
        Pool(Rc::new(Inner {
            balancer,
            health,
            on_change,
        }))
    }

    /// A backend in rotation for a client from `client` (the address matters to the
    /// `source` strategy), or `None` when every backend is out.
    pub fn pick(&self, client: Option<IpAddr>) -> Option<Lease> {
        let now = Instant::now();
        let health = &self.0.health;
        self.0
            .balancer
            .pick_among(client, |i| health.in_rotation(i, now))
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
        if let (Some(change), Some(log)) = (change, &self.on_change) {
            log(target, change);
        }
    }
}

impl Dispatch for Inner {
    fn connected(&self, target: &Target) {
        if let Some(i) = self.index_of(target) {
            self.changed(target, self.health.connect_succeeded(i));
        }
    }

    fn available(&self, target: &Target) -> bool {
        self.index_of(target)
            .is_some_and(|i| self.health.in_rotation(i, Instant::now()))
    }

    fn failed(&self, target: &Target, _reason: &UnbindReason) -> Option<Target> {
        let i = self.index_of(target)?;
        let now = Instant::now();
        self.changed(target, self.health.connect_failed(i, now));
        let elsewhere = self
            .balancer
            .pick_among(None, |j| j != i && self.health.in_rotation(j, now));
        match elsewhere {
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
