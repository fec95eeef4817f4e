//! Choosing one backend per client from a list: round-robin, least connections, random
//! (em-proxy's balancing example, as a reusable piece), power of two choices, and
//! source-address hashing — each honouring per-backend weights.
//!
//! A [`Balancer`] hands out [`Lease`]s; a lease counts as one live connection on its
//! backend until it is dropped, which is what least-connections and power of two choices
//! balance on. Keep the lease in the client's state and it is released when the client is
//! gone. [`Balancer::pick_among`] picks only among the backends a caller (a health check,
//! say) allows.

use std::cell::{Cell, OnceCell};
use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::str::FromStr;

use super::target::Target;

/// How a [`Balancer`] picks. Every strategy honours the weights given to
/// [`Balancer::with_weights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Each backend in turn; with weights, smooth weighted round-robin (as nginx does it):
    /// weights 5, 1 and 1 give `a a b a c a a`, interleaved, not `a a a a a b c`.
    RoundRobin,
    /// The backend with the fewest live leases per unit of weight (ties in turn).
    /// em-proxy calls it `balanced`.
    LeastConn,
    /// Any backend, with a probability proportional to its weight.
    Random,
    /// Power of two choices: two distinct backends drawn at random (by weight), and the
    /// less loaded of the two (live leases per unit of weight) is picked.
    P2c,
    /// A hash of the client's IP address (weighted rendezvous hashing): one client always
    /// reaches the same backend, and when a backend leaves, only its own clients move.
    /// Without a client address it picks as [`Strategy::RoundRobin`] does.
    Source,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        match s {
            "round-robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            "least-conn" | "leastconn" | "balanced" => Ok(Strategy::LeastConn),
            "random" => Ok(Strategy::Random),
            "p2c" | "power-of-two" => Ok(Strategy::P2c),
            "source" | "hash" => Ok(Strategy::Source),
            other => Err(format!(
                "unknown strategy `{other}` (round-robin, least-conn, random, p2c or source)"
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
            Strategy::P2c => "p2c",
            Strategy::Source => "source",
        })
    }
}

struct Pool {
    targets: Vec<Target>,
    weights: Vec<u32>,
    strategy: Strategy,
    /// Where least-conn starts looking, so that ties go in turn.
    next: Cell<usize>,
    /// Smooth weighted round-robin's running scores.
    current: Vec<Cell<i64>>,
    active: Vec<Cell<usize>>,
    /// Each target's key for rendezvous hashing, from its address, not its position (a
    /// target listed twice gets one share: give it a weight instead).
    keys: Vec<u64>,
    rng: Cell<u64>,
    /// Told the index of each lease released (a [`Pool`](super::Pool) wakes its queue).
    on_release: OnceCell<Box<dyn Fn(usize)>>,
}

/// A list of backends, their weights and a strategy. Clones share the same counters.
/// Lives on the reactor thread.
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
///
/// // Only backend 1 is up: the filter is the caller's.
/// assert_eq!(lb.pick_among(None, |i| i == 1).unwrap().index(), 1);
/// assert!(lb.pick_among(None, |_| false).is_none());
/// ```
#[derive(Clone)]
pub struct Balancer(Rc<Pool>);

impl Balancer {
    /// A balancer over `targets`, all of weight 1.
    ///
    /// # Panics
    /// If `targets` is empty.
    pub fn new(targets: Vec<Target>, strategy: Strategy) -> Balancer {
        let weights = vec![1; targets.len()];
        Balancer::with_weights(targets, weights, strategy)
    }

    /// A balancer over `targets`, backend `i` getting a share of clients proportional to
    /// `weights[i]`.
    ///
    /// ```
    /// use ember::proxy::{Balancer, Strategy, Target};
    ///
    /// let targets = vec![Target::parse("10.0.0.1:80").unwrap(), Target::parse("10.0.0.2:80").unwrap()];
    /// let lb = Balancer::with_weights(targets, vec![3, 1], Strategy::RoundRobin);
    /// let picks: Vec<usize> = (0..4).map(|_| lb.pick().index()).collect();
    /// assert_eq!(picks, [0, 0, 1, 0]);
    /// ```
    ///
    /// # Panics
    /// If `targets` is empty, if there are not as many weights as targets, or if a weight
    /// is 0.
    pub fn with_weights(targets: Vec<Target>, weights: Vec<u32>, strategy: Strategy) -> Balancer {
        assert!(!targets.is_empty(), "a balancer needs at least one target");
        assert_eq!(targets.len(), weights.len(), "one weight per target");
        assert!(weights.iter().all(|&w| w > 0), "weights start at 1");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
            | 1;
        Balancer(Rc::new(Pool {
            active: targets.iter().map(|_| Cell::new(0)).collect(),
            current: targets.iter().map(|_| Cell::new(0)).collect(),
            keys: targets
                .iter()
                .map(|t| fnv1a(t.to_string().as_bytes()))
                .collect(),
            targets,
            weights,
            strategy,
            on_release: OnceCell::new(),
            next: Cell::new(0),
            rng: Cell::new(seed),
        }))
    }

    /// Picks a backend for one client. [`Strategy::Source`], with no address to hash,
    /// picks in turn; use [`pick_for`](Self::pick_for).
    pub fn pick(&self) -> Lease {
        self.pick_for(None)
    }

    /// Picks a backend for a client from `client` (the address [`Strategy::Source`]
    /// hashes; the other strategies ignore it).
    pub fn pick_for(&self, client: Option<IpAddr>) -> Lease {
        self.pick_among(client, |_| true)
            .expect("a balancer has at least one target")
    }

    /// Picks only among the backends `i` for which `eligible(i)` is true (those a health
    /// check has up, say); `None` if there is none.
    pub fn pick_among(
        &self,
        client: Option<IpAddr>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<Lease> {
        let pool = &self.0;
        let candidates: Vec<usize> = (0..pool.targets.len()).filter(|&i| eligible(i)).collect();
        if candidates.is_empty() {
            return None;
        }
        let index = match (pool.strategy, client) {
            (Strategy::RoundRobin, _) | (Strategy::Source, None) => {
                self.smooth_round_robin(&candidates)
            }
            (Strategy::LeastConn, _) => {
                let start = self.take_turn();
                let n = candidates.len();
                (0..n)
                    .map(|k| candidates[(start + k) % n])
                    .min_by(|&a, &b| self.compare_load(a, b))
                    .unwrap_or(candidates[0])
            }
            (Strategy::Random, _) => self.weighted_random(&candidates, None),
            (Strategy::P2c, _) => {
                let first = self.weighted_random(&candidates, None);
                if candidates.len() == 1 {
                    first
                } else {
                    let second = self.weighted_random(&candidates, Some(first));
                    match self.compare_load(second, first) {
                        Ordering::Less => second,
                        _ => first,
                    }
                }
            }
            (Strategy::Source, Some(ip)) => self.rendezvous(ip, &candidates),
        };
        pool.active[index].set(pool.active[index].get() + 1);
        Some(Lease {
            balancer: self.clone(),
            index,
        })
    }

    /// Calls `released(index)` whenever a lease is dropped, from then on. Only the first
    /// call takes effect (a pool installs it when it first queues a client).
    pub(crate) fn on_release(&self, released: impl Fn(usize) + 'static) {
        let _ = self.0.on_release.set(Box::new(released));
    }

    /// The backends, in the order given.
    pub fn targets(&self) -> &[Target] {
        &self.0.targets
    }

    /// Backend `index`'s weight (0 if there is no such backend).
    pub fn weight(&self, index: usize) -> u32 {
        self.0.weights.get(index).copied().unwrap_or(0)
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

    /// Smooth weighted round-robin: every candidate gains its weight, the highest score
    /// wins and pays back the total. Over any `sum(weights)` picks each backend gets its
    /// weight's worth, spread out.
    fn smooth_round_robin(&self, candidates: &[usize]) -> usize {
        let pool = &self.0;
        let mut total = 0;
        let mut best = candidates[0];
        for &i in candidates {
            let weight = i64::from(pool.weights[i]);
            pool.current[i].set(pool.current[i].get() + weight);
            total += weight;
            if pool.current[i].get() > pool.current[best].get() {
                best = i;
            }
        }
        pool.current[best].set(pool.current[best].get() - total);
        best
    }

    /// Backend `a`'s load (live leases per unit of weight) against `b`'s.
    /// (`active[a] / weight[a]` against `active[b] / weight[b]`, cross-multiplied.)
    fn compare_load(&self, a: usize, b: usize) -> Ordering {
        let pool = &self.0;
        let scaled =
            |i: usize, by: usize| pool.active[i].get() as u64 * u64::from(pool.weights[by]);
        scaled(a, b).cmp(&scaled(b, a))
    }

    /// A candidate drawn with probability proportional to its weight, `except` one.
    fn weighted_random(&self, candidates: &[usize], except: Option<usize>) -> usize {
        let weights = &self.0.weights;
        let drawable = || candidates.iter().copied().filter(|&i| Some(i) != except);
        let total: u64 = drawable().map(|i| u64::from(weights[i])).sum();
        let mut ticket = self.next_random() % total;
        for i in drawable() {
            match ticket.checked_sub(u64::from(weights[i])) {
                Some(rest) => ticket = rest,
                None => return i,
            }
        }
        unreachable!("the ticket is below the total weight")
    }

    /// Weighted rendezvous (highest random weight) hashing: every candidate scores
    /// `-weight / ln(u)`, `u` a uniform hash of (client, backend) in (0, 1), and the
    /// highest wins. Taking a backend out changes no other backend's score, so only its
    /// own clients move.
    fn rendezvous(&self, client: IpAddr, candidates: &[usize]) -> usize {
        let pool = &self.0;
        let client = match client.to_canonical() {
            IpAddr::V4(v4) => fnv1a(&v4.octets()),
            IpAddr::V6(v6) => fnv1a(&v6.octets()),
        };
        let score = |i: usize| {
            let unit =
                ((splitmix64(client ^ pool.keys[i]) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            -f64::from(pool.weights[i]) / unit.ln()
        };
        candidates
            .iter()
            .copied()
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap_or(candidates[0])
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

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// SplitMix64's finaliser: every input bit reaches every output bit.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let active: Vec<usize> = self.0.active.iter().map(Cell::get).collect();
        f.debug_struct("Balancer")
            .field("targets", &self.0.targets)
            .field("weights", &self.0.weights)
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
        if let Some(released) = self.balancer.0.on_release.get() {
            released(self.index);
        }
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
        assert_eq!("power-of-two".parse::<Strategy>(), Ok(Strategy::P2c));
        assert_eq!("hash".parse::<Strategy>(), Ok(Strategy::Source));
        assert!("fastest".parse::<Strategy>().is_err());
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastConn,
            Strategy::Random,
            Strategy::P2c,
            Strategy::Source,
        ] {
            assert_eq!(s.to_string().parse::<Strategy>(), Ok(s));
        }
    }

    fn weighted(weights: &[u32], strategy: Strategy) -> Balancer {
        let targets = (0..weights.len())
            .map(|i| Target::parse(&format!("10.0.0.{}:80", i + 1)).unwrap())
            .collect();
        Balancer::with_weights(targets, weights.to_vec(), strategy)
    }

    fn ip(n: u32) -> Option<IpAddr> {
        Some(IpAddr::from((0x0A00_0000 + n).to_be_bytes()))
    }

    #[test]
    fn weighted_round_robin_keeps_to_the_weights_and_interleaves() {
        let lb = weighted(&[5, 3, 2], Strategy::RoundRobin);
        let picks: Vec<usize> = (0..3000).map(|_| lb.pick().index()).collect();
        for (i, share) in [0.5, 0.3, 0.2].into_iter().enumerate() {
            let count = picks.iter().filter(|&&p| p == i).count() as f64;
            assert!(
                (count / 3000.0 - share).abs() < 0.02,
                "backend {i}: {count}"
            );
        }
        // Never a burst: backend 0, half the weight, never comes three times in a row,
        // and every 10 picks hold exactly 5, 3 and 2.
        assert!(
            picks.windows(3).all(|w| w != [0, 0, 0]),
            "{:?}",
            &picks[..10]
        );
        for window in picks.chunks(10) {
            let counts: Vec<usize> = (0..3)
                .map(|i| window.iter().filter(|&&p| p == i).count())
                .collect();
            assert_eq!(counts, [5, 3, 2]);
        }
        let lb = weighted(&[5, 1, 1], Strategy::RoundRobin);
        let picks: Vec<usize> = (0..7).map(|_| lb.pick().index()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_random_and_least_conn_follow_the_weights() {
        let lb = weighted(&[3, 1], Strategy::Random);
        let heavy = (0..4000).filter(|_| lb.pick().index() == 0).count();
        assert!((2800..3200).contains(&heavy), "{heavy} of 4000");
        let lb = weighted(&[3, 1], Strategy::LeastConn);
        let held: Vec<Lease> = (0..8).map(|_| lb.pick()).collect();
        assert_eq!((lb.active(0), lb.active(1)), (6, 2), "{held:?}");
    }

    #[test]
    fn p2c_never_picks_the_more_loaded_of_its_two() {
        let lb = three(Strategy::P2c);
        // Loads 4, 2, 0: a pair with backend 0 never picks it, the pair (1, 2) picks 2.
        let held: Vec<Lease> = [0, 0, 0, 0, 1, 1]
            .iter()
            .map(|&want| lb.pick_among(None, |i| i == want).unwrap())
            .collect();
        let mut seen = [0; 3];
        for _ in 0..600 {
            seen[lb.pick().index()] += 1;
        }
        assert_eq!(seen[0], 0, "{seen:?}");
        assert!(seen[1] > 100 && seen[2] > seen[1], "{seen:?}");
        drop(held);
        // Loaded alike, p2c still reaches every backend.
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[lb.pick().index()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    #[test]
    fn source_keeps_a_client_on_its_backend_and_spreads_clients() {
        let lb = three(Strategy::Source);
        for n in 0..50 {
            let first = lb.pick_for(ip(n)).index();
            assert!((0..5).all(|_| lb.pick_for(ip(n)).index() == first));
        }
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let first = lb.pick_for(Some(v6)).index();
        assert!((0..5).all(|_| lb.pick_for(Some(v6)).index() == first));
        let mut seen = [0; 3];
        for n in 0..3000 {
            seen[lb.pick_for(ip(n)).index()] += 1;
        }
        assert!(seen.iter().all(|&k| (850..1150).contains(&k)), "{seen:?}");
        // With weights 2, 1, 1 backend 0 takes about half.
        let lb = weighted(&[2, 1, 1], Strategy::Source);
        let heavy = (0..3000)
            .filter(|&n| lb.pick_for(ip(n)).index() == 0)
            .count();
        assert!((1350..1650).contains(&heavy), "{heavy} of 3000");
        // Without an address, in turn.
        let lb = three(Strategy::Source);
        let picks: Vec<usize> = (0..3).map(|_| lb.pick().index()).collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn source_moves_only_the_clients_of_a_backend_that_leaves() {
        let targets: Vec<Target> = (0..5)
            .map(|i| Target::parse(&format!("10.1.0.{i}:443")).unwrap())
            .collect();
        let lb = Balancer::new(targets, Strategy::Source);
        let before: Vec<usize> = (0..5000).map(|n| lb.pick_for(ip(n)).index()).collect();
        let after: Vec<usize> = (0..5000)
            .map(|n| lb.pick_among(ip(n), |i| i != 2).unwrap().index())
            .collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == 2 {
                moved += 1;
                assert_ne!(*a, 2);
            } else {
                assert_eq!(a, b, "a client of backend {b} moved");
            }
        }
        assert!((800..1200).contains(&moved), "{moved} of 5000 moved");
        // Back up: every client returns to where it was.
        let again: Vec<usize> = (0..5000).map(|n| lb.pick_for(ip(n)).index()).collect();
        assert_eq!(again, before);
    }

    #[test]
    fn pick_among_picks_only_the_eligible() {
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConn,
            Strategy::Random,
            Strategy::P2c,
            Strategy::Source,
        ] {
            let lb = three(strategy);
            assert!(lb.pick_among(ip(1), |_| false).is_none(), "{strategy}");
            for n in 0..30 {
                let lease = lb.pick_among(ip(n), |i| i != 1).unwrap();
                assert_ne!(lease.index(), 1, "{strategy}");
            }
            let only = lb.pick_among(ip(7), |i| i == 2).unwrap();
            assert_eq!(only.index(), 2, "{strategy}");
        }
    }
}
