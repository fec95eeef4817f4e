//! Which share of the traffic a shadow sees (`--shadow-sample`): a coin with a given
//! chance of heads, thrown once per request (HTTP mirroring) or per client (byte
//! mirroring). Envoy's `runtime_fraction` for mirroring does the same.
//!
//! The coin is xorshift64*, seeded from the clock: fast, allocation-free and good enough
//! for choosing traffic (not for anything secret). Each reactor thread keeps its own.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Admits each request (or client) with probability `fraction`.
#[derive(Debug)]
pub struct Sampler {
    /// `fraction` scaled to the whole `u64` range: admitted when a draw is below it.
    threshold: u64,
    all: bool,
    state: Cell<u64>,
}

impl Sampler {
    /// A sampler admitting `fraction` (clamped to 0..=1) of the draws.
    pub fn new(fraction: f64) -> Sampler {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Sampler::with_seed(fraction, seed)
    }

    /// The same, with a seed of your choice (for tests that want the same draws).
    pub fn with_seed(fraction: f64, seed: u64) -> Sampler {
        let fraction = fraction.clamp(0.0, 1.0);
        Sampler {
            threshold: (fraction * u64::MAX as f64) as u64,
            all: fraction >= 1.0,
            // Zero is xorshift's one fixed point.
            state: Cell::new(seed | 1),
        }
    }

    /// Throws the coin: `true` for this one.
    pub fn admit(&self) -> bool {
        if self.all {
            return true;
        }
        let mut x = self.state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) < self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::Sampler;

    #[test]
    fn a_tenth_of_ten_thousand_is_near_a_thousand() {
        // Binomial(10,000, 0.1): mean 1,000, standard deviation 30. Five sigmas either way
        // for every seed tried.
        for seed in [1, 42, 7_777, u64::MAX] {
            let sampler = Sampler::with_seed(0.1, seed);
            let admitted = (0..10_000).filter(|_| sampler.admit()).count();
            assert!((850..=1150).contains(&admitted), "seed {seed}: {admitted}");
        }
    }

    #[test]
    fn one_admits_all_and_zero_none() {
        let all = Sampler::new(1.0);
        assert!((0..1000).all(|_| all.admit()));
        let none = Sampler::new(0.0);
        assert!((0..1000).all(|_| !none.admit()));
    }
}
