//! A latency histogram of fixed size, however many samples: log-spaced buckets, 16 per
//! doubling (each about 4.4% wide), from 1 µs to about 71 minutes. Percentiles are read
//! from it to within half a bucket (about 2.2%), clamped to the exact minimum and
//! maximum seen; the CDF chart is drawn from its buckets.

/// The lower edge of the first bucket, in milliseconds (1 µs); smaller values count there.
const LOWEST_MS: f64 = 0.001;
/// Buckets per doubling of the latency.
const PER_DOUBLING: f64 = 16.0;
/// 32 doublings above [`LOWEST_MS`]: about 71 minutes; larger values count in the last.
const BUCKETS: usize = 32 * 16;

/// Latencies seen, in milliseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: f64,
    max: f64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: f64::INFINITY,
            max: 0.0,
        }
    }
}

impl Histogram {
    /// Counts one latency; a negative, infinite or NaN one is not a latency and is ignored.
    pub fn record(&mut self, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        self.counts[bucket_of(ms)] += 1;
        self.total += 1;
        self.min = self.min.min(ms);
        self.max = self.max.max(ms);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest and largest latency seen; `None` before any.
    pub fn range(&self) -> Option<(f64, f64)> {
        (self.total > 0).then_some((self.min, self.max))
    }

    /// The latency `q` (0 to 1) of the samples are at or below; `None` without samples.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min);
        }
        if rank == self.total {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let middle = (lower_edge(i).max(LOWEST_MS) * upper_edge(i)).sqrt();
                return Some(middle.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The cumulative distribution as `(ms, share of samples at or below)` points, from
    /// the smallest sample (share 0) to the largest (share 1); empty without samples.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let Some((min, max)) = self.range() else {
            return Vec::new();
        };
        let mut points = vec![(min, 0.0)];
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            seen += n;
            let at = upper_edge(i).clamp(min, max);
            points.push((at, seen as f64 / self.total as f64));
        }
        points
    }
}

fn bucket_of(ms: f64) -> usize {
    if ms <= LOWEST_MS {
        return 0;
    }
    let index = ((ms / LOWEST_MS).log2() * PER_DOUBLING).floor();
    (index as usize).min(BUCKETS - 1)
}

fn lower_edge(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        LOWEST_MS * (i as f64 / PER_DOUBLING).exp2()
    }
}

fn upper_edge(i: usize) -> f64 {
    LOWEST_MS * ((i + 1) as f64 / PER_DOUBLING).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|got| (got - want).abs() <= want * 0.023)
    }

    #[test]
    fn report_latency_percentiles_are_within_half_a_bucket() {
        let mut h = Histogram::default();
        // 1.0, 1.1, ... 10.9 ms, ten times each.
        for i in 0..1000 {
            h.record(1.0 + (i % 100) as f64 / 10.0);
        }
        assert_eq!(h.count(), 1000);
        assert!(close(h.percentile(0.5), 5.9), "{:?}", h.percentile(0.5));
        assert!(close(h.percentile(0.9), 9.9), "{:?}", h.percentile(0.9));
        assert!(close(h.percentile(0.99), 10.8), "{:?}", h.percentile(0.99));
        assert_eq!(h.percentile(1.0), Some(10.9));
        assert_eq!(h.percentile(0.0), Some(1.0));
        assert_eq!(h.range(), Some((1.0, 10.9)));
    }

    #[test]
    fn report_latency_ignores_what_is_not_a_latency_and_clamps_extremes() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        assert!(h.cdf().is_empty());
        for ms in [f64::NAN, f64::INFINITY, -1.0] {
            h.record(ms);
        }
        assert_eq!(h.count(), 0);
        h.record(0.0);
        h.record(1e12);
        assert_eq!(h.percentile(0.5), Some(0.0));
        assert_eq!(h.percentile(1.0), Some(1e12));
    }

    #[test]
    fn report_latency_cdf_rises_from_zero_to_one() {
        let mut h = Histogram::default();
        for ms in [1.0, 2.0, 4.0, 4.0] {
            h.record(ms);
        }
        let cdf = h.cdf();
        assert_eq!(cdf.first(), Some(&(1.0, 0.0)));
        assert_eq!(cdf.last(), Some(&(4.0, 1.0)));
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(cdf.len(), 4);
    }
}
