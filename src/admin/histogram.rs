//! A latency histogram with fixed bucket bounds, in seconds, as Prometheus counts them.
//!
//! [`Histogram`] owns its per-bucket counts and the sum of what it observed. Observing
//! takes `&self` (relaxed atomics), so one histogram can be shared by every callback that
//! times something — through an `Rc`, or an `Arc` when a thread other than the reactor's
//! reads it — without a `RefCell`. It never renders itself: [`Exposition`] writes it.
//!
//! [`Exposition`]: super::Exposition

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Prometheus' default bucket bounds, in seconds: 5 ms to 10 s.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counts durations into buckets with fixed upper bounds (inclusive, in seconds), plus
/// their sum. Written with [`Exposition::histogram`](super::Exposition::histogram) as
/// cumulative `_bucket{le="…"}` lines, `+Inf` included, then `_sum` and `_count`.
///
/// ```
/// use std::time::Duration;
/// use ember::admin::Histogram;
///
/// let latency = Histogram::new(&[0.01, 0.1]);
/// latency.observe(Duration::from_millis(3));
/// latency.observe(Duration::from_millis(40));
/// assert_eq!(latency.count(), 2);
/// assert_eq!(latency.sum(), Duration::from_millis(43));
/// ```
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, finite and strictly increasing.
    bounds: Box<[f64]>,
    /// Observations per bucket, not cumulative; one more than `bounds`, the last
    /// counting those above every bound (`+Inf`).
    counts: Box<[AtomicU64]>,
    /// The sum of every observation, in nanoseconds (each one saturating at `u64::MAX`).
    sum_nanos: AtomicU64,
}

/// A histogram's counts at one moment, made cumulative: what one exposition writes.
#[derive(Debug)]
pub(crate) struct Snapshot<'h> {
    pub(crate) bounds: &'h [f64],
    /// Cumulative counts, one per bound and a last one for `+Inf` (the total).
    pub(crate) cumulative: Vec<u64>,
    pub(crate) sum_seconds: f64,
}

impl Histogram {
    /// A histogram with these upper bounds, in seconds.
    ///
    /// # Panics
    /// If a bound is not finite or the bounds are not strictly increasing: bucket
    /// bounds are fixed when the program is written, so this is a bug, not input.
    pub fn new(bounds: &[f64]) -> Histogram {
        assert!(
            bounds.iter().all(|b| b.is_finite()),
            "histogram bounds must be finite (+Inf is always added): {bounds:?}"
        );
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be strictly increasing: {bounds:?}"
        );
        Histogram {
            bounds: bounds.into(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one duration into the first bucket whose bound it does not exceed.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The upper bounds, in seconds (`+Inf` not included).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The sum of every observed duration.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }

    /// The counts now. `_count` is taken from the buckets, so it always equals the
    /// `+Inf` bucket even while another thread observes.
    pub(crate) fn snapshot(&self) -> Snapshot<'_> {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        Snapshot {
            bounds: &self.bounds,
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl Default for Histogram {
    /// A histogram with [`DEFAULT_BUCKETS`].
    fn default() -> Histogram {
        Histogram::new(&DEFAULT_BUCKETS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bucket() {
        let h = Histogram::new(&[0.005, 0.01]);
        h.observe(ms(5));
        h.observe(ms(10));
        h.observe(Duration::from_micros(10_001));
        assert_eq!(h.snapshot().cumulative, [1, 2, 3]);
    }

    #[test]
    fn snapshot_counts_are_cumulative_and_end_with_the_total() {
        let h = Histogram::new(&[0.1, 1.0]);
        for d in [ms(1), ms(2), ms(500), ms(5000)] {
            h.observe(d);
        }
        let snapshot = h.snapshot();
        assert_eq!(snapshot.cumulative, [2, 3, 4]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum(), ms(5503));
        assert_eq!(snapshot.sum_seconds, 5.503);
    }

    #[test]
    fn no_bounds_means_one_inf_bucket() {
        let h = Histogram::new(&[]);
        h.observe(ms(7));
        assert_eq!(h.snapshot().cumulative, [1]);
    }

    #[test]
    fn default_uses_the_prometheus_buckets() {
        assert_eq!(Histogram::default().bounds(), DEFAULT_BUCKETS);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn unordered_bounds_are_refused() {
        Histogram::new(&[1.0, 0.5]);
    }

    #[test]
    #[should_panic(expected = "finite")]
    fn an_infinite_bound_is_refused() {
        Histogram::new(&[1.0, f64::INFINITY]);
    }
}
