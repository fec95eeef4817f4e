//! Choosing one backend per client from a list: round-robin, least connections, random
//! (em-proxy's balancing example, as a reusable piece).
//!
//! A [`Balancer`] hands out [`Lease`]s; a lease counts as one live connection on its
//! backend until it is dropped, which is what least-connections balances on. Keep the
//! lease in the client's state and it is released when the client is gone.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use super::target::Target;

/// How a [`Balancer`] picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Each backend in turn.
    RoundRobin,
    /// The backend with the fewest live leases (ties in turn). em-proxy calls it
    /// `balanced`.
    LeastConn,
    /// Any backend, uniformly.
    Random,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        match s {
            "round-robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            "least-conn" | "leastconn" | "balanced" => Ok(Strategy::LeastConn),
            "random" => Ok(Strategy::Random),
            other => Err(format!(
                "unknown strategy `{other}` (round-robin, least-conn or random)"
            )),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastConn => "least-conn",
            Strategy::Random => "random",
        })
    }
}

struct Pool {
    targets: Vec<Target>,
    strategy: Strategy,
    next: Cell<usize>,
    active: Vec<Cell<usize>>,
    rng: Cell<u64>,
}

/// A list of backends and a strategy. Clones share the same counters. Lives on the
/// reactor thread.
///
/// ```
/// use ember::proxy::{Balancer, Strategy, Target};
///
/// let lb = Balancer::new(
///     vec![Target::parse("127.0.0.1:3000").unwrap(), Target::parse("127.0.0.1:3001").unwrap()],
///     Strategy::LeastConn,
/// );
/// let first = lb.pick();
/// let second = lb.pick();
/// assert_ne!(first.index(), second.index());
/// drop(first);
/// assert_eq!(lb.pick().index(), 0);
/// ```
#[derive(Clone)]
pub struct Balancer(Rc<Pool>);

impl Balancer {
    /// A balancer over `targets`.
    ///
    /// # Panics
    /// If `targets` is empty.
    pub fn new(targets: Vec<Target>, strategy: Strategy) -> Balancer {
        assert!(!targets.is_empty(), "a balancer needs at least one target");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
            | 1;
        Balancer(Rc::new(Pool {
            active: targets.iter().map(|_| Cell::new(0)).collect(),
            targets,
            strategy,
            next: Cell::new(0),
            rng: Cell::new(seed),
        }))
    }

    /// Picks a backend for one client.
    pub fn pick(&self) -> Lease {
        let pool = &self.0;
        let n = pool.targets.len();
        let index = match pool.strategy {
            Strategy::RoundRobin => self.take_turn(),
            Strategy::LeastConn => {
                let start = self.take_turn();
                (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&i| pool.active[i].get())
                    .unwrap_or(start)
            }
            Strategy::Random => (self.next_random() % n as u64) as usize,
        };
        pool.active[index].set(pool.active[index].get() + 1);
        Lease {
            balancer: self.clone(),
            index,
        }
    }

    /// The backends, in the order given.
    pub fn targets(&self) -> &[Target] {
        &self.0.targets
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.0.strategy
    }

    /// Live leases on backend `index`.
    pub fn active(&self, index: usize) -> usize {
        self.0.active.get(index).map_or(0, Cell::get)
    }

    fn take_turn(&self) -> usize {
        let turn = self.0.next.get();
        self.0.next.set((turn + 1) % self.0.targets.len());
        turn
    }

    /// xorshift64*: good enough to spread load, no dependency.
    fn next_random(&self) -> u64 {
        let mut x = self.0.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let active: Vec<usize> = self.0.active.iter().map(Cell::get).collect();
        f.debug_struct("Balancer")
            .field("targets", &self.0.targets)
            .field("strategy", &self.0.strategy)
            .field("active", &active)
            .finish()
    }
}

/// One client's claim on a backend; released when dropped.
pub struct Lease {
    balancer: Balancer,
    index: usize,
}

impl Lease {
    /// The backend's position in the balancer's list.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The backend's address.
    pub fn target(&self) -> &Target {
        &self.balancer.0.targets[self.index]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let count = &self.balancer.0.active[self.index];
        count.set(count.get().saturating_sub(1));
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("index", &self.index)
            .field("target", self.target())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(strategy: Strategy) -> Balancer {
        let targets = (0..3)
            .map(|i| Target::parse(&format!("127.0.0.1:{}", 3000 + i)).unwrap())
            .collect();
        Balancer::new(targets, strategy)
    }

    #[test]
    fn round_robin_takes_turns() {
        let lb = three(Strategy::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| lb.pick().index()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_conn_fills_the_emptiest_and_leases_release() {
        let lb = three(Strategy::LeastConn);
        let held: Vec<Lease> = (0..3).map(|_| lb.pick()).collect();
        assert_eq!((0..3).map(|i| lb.active(i)).collect::<Vec<_>>(), [1, 1, 1]);
        let busy = lb.pick();
        let freed = held[1].index();
        drop(held);
        assert_eq!(lb.active(freed), 0);
        assert_ne!(lb.pick().index(), busy.index());
    }

    #[test]
    fn random_stays_in_range_and_reaches_every_backend() {
        let lb = three(Strategy::Random);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[lb.pick().index()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    #[test]
    fn strategies_parse_by_their_names() {
        assert_eq!("least-conn".parse::<Strategy>(), Ok(Strategy::LeastConn));
        assert_eq!("balanced".parse::<Strategy>(), Ok(Strategy::LeastConn));
        assert!("fastest".parse::<Strategy>().is_err());
    }
}
