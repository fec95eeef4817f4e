//! What the whole log adds up to, kept while it streams past: counts per shadow, per
//! route and per distinct difference, the first examples of each difference, latency
//! histograms, shadow errors by reason and over time. Nothing grows with the number of
//! lines: every map is capped (names past the cap are added up under one "other" name)
//! and every example is cut.

use std::collections::BTreeMap;

use super::latency::Histogram;
use super::record::{self, Comparison, Difference, Evidence, Kind, Verdict};
use super::timeline::Timeline;

/// The most routes told apart; the rest count as [`OTHER_ROUTES`].
const MAX_ROUTES: usize = 2000;
/// The most shadows told apart.
const MAX_SHADOWS: usize = 32;
/// The most distinct differences told apart (regressions and noise each).
const MAX_DIFFERENCES: usize = 1000;
/// The most shadow error reasons told apart.
const MAX_REASONS: usize = 64;
/// Examples kept per distinct difference: the first ones seen.
pub const EXAMPLES_PER_DIFFERENCE: usize = 2;

pub const OTHER_ROUTES: &str = "(other routes)";
const OTHER_SHADOWS: &str = "(other shadows)";
const OTHER_REASONS: &str = "(other reasons)";
const OTHER_DIFFERENCES: &str = "(others)";

/// Comparisons on one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTally {
    pub compared: u64,
    /// Regressions by [`Kind::REGRESSIONS`] order.
    pub by_kind: [u64; 4],
    pub noise: u64,
}

impl RouteTally {
    pub fn regressions(&self) -> u64 {
        self.by_kind.iter().sum()
    }
}

/// Comparisons against one shadow.
#[derive(Clone, Debug, Default)]
pub struct ShadowTally {
    pub compared: u64,
    pub regressions: u64,
    pub noise: u64,
    pub errors: u64,
    /// The shadow's latency, on lines where it answered.
    pub latency: Histogram,
}

/// One example of a difference.
#[derive(Clone, Debug)]
pub struct Example {
    pub time_ms: Option<i64>,
    pub session: Option<u64>,
    pub request: Option<u64>,
    pub shadow_name: String,
    /// `GET /users/42?x=1` as sent.
    pub target: String,
    pub evidence: Evidence,
}

/// How often one difference was seen, and its first examples.
#[derive(Clone, Debug, Default)]
pub struct DifferenceTally {
    pub count: u64,
    pub examples: Vec<Example>,
}

/// A map by name that tells at most `limit` names apart; later names count under
/// `other`.
#[derive(Debug)]
pub struct Capped<K: Ord, V> {
    map: BTreeMap<K, V>,
    limit: usize,
}

impl<K: Ord, V: Default> Capped<K, V> {
    fn new(limit: usize) -> Capped<K, V> {
        Capped {
            map: BTreeMap::new(),
            limit,
        }
    }

    /// The entry for `key`, or for `other(key)` once `limit` keys are known.
    fn entry(&mut self, key: K, other: impl FnOnce(K) -> K) -> &mut V {
        let key = if self.map.len() < self.limit || self.map.contains_key(&key) {
            key
        } else {
            other(key)
        };
        self.map.entry(key).or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }
}

/// The whole log, added up.
#[derive(Debug)]
pub struct Tally {
    /// Lines read, comparisons or not.
    pub lines: u64,
    /// Lines that were not comparisons (blank, not JSON, no verdict, too long).
    pub skipped: u64,
    /// The line number of the first of them.
    pub first_skipped: Option<u64>,
    pub compared: u64,
    /// Regressions by [`Kind::REGRESSIONS`] order.
    pub by_kind: [u64; 4],
    pub noise: u64,
    pub shadows: Capped<String, ShadowTally>,
    pub routes: Capped<String, RouteTally>,
    pub differences: Capped<Difference, DifferenceTally>,
    pub noise_differences: Capped<Difference, DifferenceTally>,
    pub error_reasons: Capped<String, u64>,
    /// The primary's latency, on every line that has it.
    pub primary_latency: Histogram,
    pub timeline: Timeline,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            lines: 0,
            skipped: 0,
            first_skipped: None,
            compared: 0,
            by_kind: [0; 4],
            noise: 0,
            shadows: Capped::new(MAX_SHADOWS),
            routes: Capped::new(MAX_ROUTES),
            differences: Capped::new(MAX_DIFFERENCES),
            noise_differences: Capped::new(MAX_DIFFERENCES),
            error_reasons: Capped::new(MAX_REASONS),
            primary_latency: Histogram::default(),
            timeline: Timeline::default(),
        }
    }
}

impl Tally {
    /// Counts the next line of the log: a comparison, or a line skipped.
    pub fn add_line(&mut self, line: &[u8]) {
        match record::parse(line) {
            Some(comparison) => {
                self.lines += 1;
                self.add(&comparison);
            }
            None => self.skip_line(),
        }
    }

    /// Counts the next line as skipped (not a comparison, or too long to read).
    pub fn skip_line(&mut self) {
        self.lines += 1;
        self.skipped += 1;
        self.first_skipped.get_or_insert(self.lines);
    }

    pub fn regressions(&self) -> u64 {
        self.by_kind.iter().sum()
    }

    pub fn shadow_errors(&self) -> u64 {
        self.by_kind[3]
    }

    fn add(&mut self, c: &Comparison) {
        self.compared += 1;
        let route = self
            .routes
            .entry(c.route.clone(), |_| OTHER_ROUTES.to_owned());
        route.compared += 1;
        let shadow = self
            .shadows
            .entry(c.shadow_name.clone(), |_| OTHER_SHADOWS.to_owned());
        shadow.compared += 1;
        if let Some(ms) = c.primary.ms {
            self.primary_latency.record(ms);
        }
        if let (Some(ms), None) = (c.shadow.ms, &c.shadow.error) {
            shadow.latency.record(ms);
        }
        let mut is_error = false;
        match &c.verdict {
            Verdict::Same => {}
            Verdict::Noise(difference) => {
                self.noise += 1;
                route.noise += 1;
                shadow.noise += 1;
                note(&mut self.noise_differences, difference, c);
            }
            Verdict::Regression(difference) => {
                let kind = difference.kind.index().unwrap_or(2);
                self.by_kind[kind] += 1;
                route.by_kind[kind] += 1;
                shadow.regressions += 1;
                if difference.kind == Kind::ShadowError {
                    is_error = true;
                    shadow.errors += 1;
                    *self
                        .error_reasons
                        .entry(difference.detail.clone(), |_| OTHER_REASONS.to_owned()) += 1;
                }
                note(&mut self.differences, difference, c);
            }
        }
        if let Some(at) = c.time_ms {
            self.timeline.add(at, is_error);
        }
    }
}

/// Counts `difference` and keeps `c` as an example while there are few.
fn note(table: &mut Capped<Difference, DifferenceTally>, difference: &Difference, c: &Comparison) {
    let tally = table.entry(difference.clone(), |d| Difference {
        kind: d.kind,
        detail: OTHER_DIFFERENCES.to_owned(),
    });
    tally.count += 1;
    if tally.examples.len() < EXAMPLES_PER_DIFFERENCE {
        tally.examples.push(Example {
            time_ms: c.time_ms,
            session: c.session,
            request: c.request,
            shadow_name: c.shadow_name.clone(),
            target: c.target.clone(),
            evidence: c.evidence(),
        });
    }
}

/// Rows of a table, worst first: the highest share of regressions, then the most
/// regressions, then the most comparisons, then by name.
pub fn worst_first<'a, T>(
    rows: impl Iterator<Item = (&'a String, &'a T)>,
    compared: impl Fn(&T) -> u64,
    regressions: impl Fn(&T) -> u64,
) -> Vec<(&'a String, &'a T)>
where
    T: 'a,
{
    let mut rows: Vec<_> = rows.collect();
    rows.sort_by(|(a_name, a), (b_name, b)| {
        // a_reg / a_cmp > b_reg / b_cmp, compared without division.
        let share = |t: &T, u: &T| u128::from(regressions(t)) * u128::from(compared(u).max(1));
        share(b, a)
            .cmp(&share(a, b))
            .then(regressions(b).cmp(&regressions(a)))
            .then(compared(b).cmp(&compared(a)))
            .then(a_name.cmp(b_name))
    });
    rows
}

/// Differences, the most frequent first.
pub fn most_frequent(
    table: &Capped<Difference, DifferenceTally>,
) -> Vec<(&Difference, &DifferenceTally)> {
    let mut rows: Vec<_> = table.iter().collect();
    rows.sort_by(|(a_key, a), (b_key, b)| b.count.cmp(&a.count).then(a_key.cmp(b_key)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(lines: &[&str]) -> Tally {
        let mut t = Tally::default();
        for line in lines {
            t.add_line(line.as_bytes());
        }
        t
    }

    #[test]
    fn report_tally_skips_and_counts_garbage_lines() {
        let t = tally(&[
            r#"{"verdict":"same","method":"GET","path":"/a","shadow_name":"duplex_0"}"#,
            "",
            "garbage {",
            r#"{"verdict":"body","method":"GET","path":"/a","shadow_name":"duplex_0","diff":{"json_path":"$.x"}}"#,
            r#"{"no":"verdict"}"#,
        ]);
        assert_eq!((t.lines, t.skipped, t.first_skipped), (5, 3, Some(2)));
        assert_eq!((t.compared, t.regressions()), (2, 1));
        let routes: Vec<_> = t.routes.iter().collect();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].0, "GET /a");
        assert_eq!(routes[0].1.compared, 2);
    }

    #[test]
    fn report_tally_counts_noise_apart_from_regressions() {
        let t = tally(&[
            r#"{"verdict":"noise","noise_of":"header","diff":{"header":"date"},"shadow_name":"s"}"#,
            r#"{"verdict":"noise","noise_of":"header","diff":{"header":"date"},"shadow_name":"s"}"#,
            r#"{"verdict":"shadow_error","shadow":{"error":"timeout"},"diff":{"error":"timeout"},"time":"2026-11-30T15:00:00Z"}"#,
        ]);
        assert_eq!(
            (t.compared, t.noise, t.regressions(), t.shadow_errors()),
            (3, 2, 1, 1)
        );
        let noise = most_frequent(&t.noise_differences);
        assert_eq!(noise[0].0.label(), "header date");
        assert_eq!(noise[0].1.count, 2);
        let reasons: Vec<_> = t.error_reasons.iter().collect();
        assert_eq!(reasons, [(&"timeout".to_owned(), &1)]);
        let bars = t.timeline.bars(60).expect("a timeline");
        assert_eq!(bars.slots.iter().map(|s| s.errors).sum::<u64>(), 1);
    }

    #[test]
    fn report_tally_stays_bounded_with_endless_distinct_routes_and_differences() {
        let mut t = Tally::default();
        for i in 0..20_000 {
            t.add_line(
                format!(
                    r#"{{"verdict":"header","method":"GET","path":"/x{i}/y","shadow_name":"s{i}","diff":{{"header":"h{i}"}},"excerpt":{{"primary":"a","shadow":"b"}}}}"#
                )
                .as_bytes(),
            );
        }
        assert_eq!(t.compared, 20_000);
        assert!(t.routes.iter().count() <= MAX_ROUTES + 1);
        assert!(t.shadows.iter().count() <= MAX_SHADOWS + 1);
        assert!(t.differences.iter().count() <= MAX_DIFFERENCES + 1);
        let others = t.routes.iter().find(|(name, _)| *name == OTHER_ROUTES);
        assert_eq!(
            others.map(|(_, r)| r.compared),
            Some(20_000 - MAX_ROUTES as u64)
        );
        let examples: usize = t.differences.iter().map(|(_, d)| d.examples.len()).sum();
        assert!(examples <= (MAX_DIFFERENCES + 1) * EXAMPLES_PER_DIFFERENCE);
    }

    #[test]
    fn report_tally_orders_routes_worst_first() {
        let mut t = Tally::default();
        for (path, n, bad) in [
            ("/a", 100, 10),
            ("/b", 10, 5),
            ("/c", 1000, 0),
            ("/d", 20, 10),
        ] {
            for i in 0..n {
                let verdict = if i < bad { "status" } else { "same" };
                t.add_line(
                    format!(r#"{{"verdict":"{verdict}","method":"GET","path":"{path}"}}"#)
                        .as_bytes(),
                );
            }
        }
        let order: Vec<_> = worst_first(t.routes.iter(), |r| r.compared, RouteTally::regressions)
            .into_iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(order, ["GET /d", "GET /b", "GET /a", "GET /c"]);
    }
}
