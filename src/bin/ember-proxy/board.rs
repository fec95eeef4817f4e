//! What the workers of one process share with the admin pages, and how their numbers
//! add up: each worker's session counts ([`Tally`], live atomics) and each worker's
//! pools as it last published them ([`Board`]).
//!
//! Pools (health, live leases, queues) belong to one worker's reactor and never leave
//! its thread; what crosses threads is a [`PoolSnapshot`]: plain data, published every
//! [`PUBLISH_EVERY`] and whenever a backend goes up or down. [`combine`] makes one view
//! of all workers: counts are summed, a backend is UP while any worker sends it
//! clients, and its last check is the most recent of any worker's. Nothing here
//! decides anything; it only adds up.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ember::proxy::{BackendStatus, Pool};

/// How often a worker publishes its pools (and at once when a backend changes state).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// One worker's client sessions: accepted, and ended.
#[derive(Debug, Default)]
pub struct Tally {
    accepted: AtomicU64,
    finished: AtomicU64,
}

impl Tally {
    /// A client was accepted.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A client's session ended.
    pub fn finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Clients accepted so far.
    pub fn sessions(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Clients whose session has not ended yet.
    pub fn active(&self) -> u64 {
        // Read the ended count first: a session that ends between the two loads is then
        // still counted live, never as a negative.
        let finished = self.finished.load(Ordering::Relaxed);
        self.sessions().saturating_sub(finished)
    }
}

/// One pool as a status page shows it: by role (`relay`, `duplex_N`), every backend in
/// the plan's order, and the clients waiting for a slot.
#[derive(Clone, Debug)]
pub struct PoolSnapshot {
    pub name: String,
    pub backends: Vec<BackendView>,
    pub queued: usize,
}

/// A backend as the pages show it: its status (summed over workers) and in how many of
/// how many workers it is in rotation (1 of 1 with one worker).
#[derive(Clone, Debug)]
pub struct BackendView {
    pub status: BackendStatus,
    pub up_in: usize,
    pub workers: usize,
}

/// A worker's pools, now.
pub fn snapshot(pools: &[(String, Pool)]) -> Vec<PoolSnapshot> {
    pools
        .iter()
        .map(|(name, pool)| PoolSnapshot {
            name: name.clone(),
            backends: pool
                .status()
                .into_iter()
                .map(|status| BackendView {
                    up_in: usize::from(status.up),
                    workers: 1,
                    status,
                })
                .collect(),
            queued: pool.queued(),
        })
        .collect()
}

/// Every worker's last published pools, by worker index.
#[derive(Debug)]
pub struct Board {
    slots: Mutex<Vec<Vec<PoolSnapshot>>>,
}

impl Board {
    pub fn new(workers: usize) -> Board {
        Board {
            slots: Mutex::new(vec![Vec::new(); workers]),
        }
    }

    /// Worker `worker`'s pools as they are now.
    pub fn publish(&self, worker: usize, pools: Vec<PoolSnapshot>) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.get_mut(worker)
        {
            *slot = pools;
        }
    }

    /// All workers' pools as one (see [`combine`]).
    pub fn combined(&self) -> Vec<PoolSnapshot> {
        match self.slots.lock() {
            Ok(slots) => combine(&slots),
            Err(_) => Vec::new(),
        }
    }
}

/// The pools of several workers (each running the same plan, so the same pools and
/// backends in the same order) as one: `active`, `connects`, `connect_failures`,
/// `max_connections` (each worker has its share) and `queued` summed; UP if any worker
/// has the backend in rotation; the most recent check. A worker that has not published
/// yet counts for nothing.
pub fn combine(workers: &[Vec<PoolSnapshot>]) -> Vec<PoolSnapshot> {
    let mut out: Vec<PoolSnapshot> = Vec::new();
    for pools in workers.iter().filter(|p| !p.is_empty()) {
        for pool in pools {
            let Some(sum) = out.iter_mut().find(|p| p.name == pool.name) else {
                out.push(pool.clone());
                continue;
            };
            sum.queued += pool.queued;
            for (total, b) in sum.backends.iter_mut().zip(&pool.backends) {
                debug_assert_eq!(total.status.target, b.status.target);
                add(total, b);
            }
        }
    }
    out
}

fn add(total: &mut BackendView, b: &BackendView) {
    let (t, s) = (&mut total.status, &b.status);
    t.up |= s.up;
    t.active += s.active;
    t.connects += s.connects;
    t.connect_failures += s.connect_failures;
    t.max_connections = match (t.max_connections, s.max_connections) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    if s.last_check.map(|(at, _)| at) > t.last_check.map(|(at, _)| at) {
        t.last_check = s.last_check;
    }
    total.up_in += b.up_in;
    total.workers += b.workers;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn backend(up: bool, active: usize, connects: u64, check_at: u64) -> BackendView {
        BackendView {
            status: BackendStatus {
                target: "127.0.0.1:8081".parse().unwrap(),
                up,
                active,
                weight: 2,
                max_connections: Some(5),
                connects,
                connect_failures: connects / 2,
                last_check: Some((
                    SystemTime::UNIX_EPOCH + Duration::from_secs(check_at),
                    check_at.is_multiple_of(2),
                )),
            },
            up_in: usize::from(up),
            workers: 1,
        }
    }

    fn worker(b: BackendView, queued: usize) -> Vec<PoolSnapshot> {
        vec![PoolSnapshot {
            name: "relay".into(),
            backends: vec![b],
            queued,
        }]
    }

    #[test]
    fn counts_add_up_and_a_backend_is_up_while_any_worker_uses_it() {
        let all = combine(&[
            worker(backend(false, 3, 10, 100), 1),
            worker(backend(true, 4, 20, 101), 2),
            Vec::new(), // not published yet
        ]);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].queued, 3);
        let b = &all[0].backends[0];
        assert!(b.status.up);
        assert_eq!((b.up_in, b.workers), (1, 2));
        assert_eq!(b.status.active, 7);
        assert_eq!(b.status.connects, 30);
        assert_eq!(b.status.connect_failures, 15);
        assert_eq!(b.status.max_connections, Some(10));
        assert_eq!(b.status.weight, 2);
        let (at, passed) = b.status.last_check.unwrap();
        assert_eq!(at, SystemTime::UNIX_EPOCH + Duration::from_secs(101));
        assert!(!passed);
    }

    #[test]
    fn a_backend_down_in_every_worker_is_down() {
        let all = combine(&[
            worker(backend(false, 0, 1, 1), 0),
            worker(backend(false, 0, 1, 2), 0),
        ]);
        assert!(!all[0].backends[0].status.up);
        assert_eq!(all[0].backends[0].up_in, 0);
    }

    #[test]
    fn tally_counts_live_sessions() {
        let t = Tally::default();
        t.accepted();
        t.accepted();
        t.finished();
        assert_eq!((t.sessions(), t.active()), (2, 1));
    }
}
