//! Comparisons and shadow errors over time, in at most [`MAX_SLOTS`] time slots however
//! long the log: slots start a second wide and, when there would be more, widen along a
//! ladder of round widths (1 s, 2 s, 10 s, 30 s, 1 min, … 1 day, then doubling), each a
//! multiple of the one before, so merging is exact and the chart's bars stay round.
//! Lines may come in any order.

use std::collections::BTreeMap;

/// The most slots kept while reading.
const MAX_SLOTS: usize = 1000;

/// Slot widths in milliseconds, each a multiple of the one before.
const LADDER_MS: [i64; 13] = [
    1_000, 2_000, 10_000, 30_000, 60_000, 120_000, 600_000, 1_800_000, 3_600_000, 7_200_000,
    21_600_000, 43_200_000, 86_400_000,
];

/// What happened in one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub compared: u64,
    pub errors: u64,
}

/// Slots by start time, `width_ms` wide, keyed by `start / width_ms`.
#[derive(Debug)]
pub struct Timeline {
    width_ms: i64,
    slots: BTreeMap<i64, Slot>,
    /// The earliest and latest moment seen.
    span: Option<(i64, i64)>,
}

/// The timeline cut into equal bars for a chart.
#[derive(Debug, PartialEq, Eq)]
pub struct Bars {
    pub start_ms: i64,
    pub width_ms: i64,
    pub slots: Vec<Slot>,
}

impl Default for Timeline {
    fn default() -> Timeline {
        Timeline {
            width_ms: LADDER_MS[0],
            slots: BTreeMap::new(),
            span: None,
        }
    }
}

impl Timeline {
    /// Counts a comparison made at `at_ms`, a shadow error if `error`.
    pub fn add(&mut self, at_ms: i64, error: bool) {
        self.span = Some(match self.span {
            None => (at_ms, at_ms),
            Some((first, last)) => (first.min(at_ms), last.max(at_ms)),
        });
        let slot = self
            .slots
            .entry(at_ms.div_euclid(self.width_ms))
            .or_default();
        slot.compared += 1;
        slot.errors += u64::from(error);
        while self.slots.len() > MAX_SLOTS {
            self.widen();
        }
    }

    /// The earliest and latest moment seen, in ms since the epoch.
    pub fn span(&self) -> Option<(i64, i64)> {
        self.span
    }

    /// The timeline in equal bars of the narrowest ladder width that needs at most
    /// `max_bars`; `None` if nothing had a time.
    pub fn bars(&self, max_bars: usize) -> Option<Bars> {
        let (first, last) = self.span?;
        let mut width = self.width_ms;
        while last.div_euclid(width) - first.div_euclid(width) + 1 > max_bars.max(1) as i64 {
            width = wider(width);
        }
        let origin = first.div_euclid(width);
        let len = (last.div_euclid(width) - origin + 1) as usize;
        let mut slots = vec![Slot::default(); len];
        for (&key, slot) in &self.slots {
            let at = (key * self.width_ms).div_euclid(width) - origin;
            if let Some(bar) = usize::try_from(at).ok().and_then(|at| slots.get_mut(at)) {
                bar.compared += slot.compared;
                bar.errors += slot.errors;
            }
        }
        Some(Bars {
            start_ms: origin * width,
            width_ms: width,
            slots,
        })
    }

    fn widen(&mut self) {
        let width = wider(self.width_ms);
        let mut merged = BTreeMap::new();
        for (key, slot) in std::mem::take(&mut self.slots) {
            let into: &mut Slot = merged
                .entry((key * self.width_ms).div_euclid(width))
                .or_default();
            into.compared += slot.compared;
            into.errors += slot.errors;
        }
        self.width_ms = width;
        self.slots = merged;
    }
}

fn wider(width_ms: i64) -> i64 {
    LADDER_MS
        .iter()
        .copied()
        .find(|&w| w > width_ms)
        .unwrap_or(width_ms.saturating_mul(2))
}

/// `30 s`, `10 min`, `6 h`, `2 days`: a slot width for a label.
pub fn width_label(width_ms: i64) -> String {
    let secs = width_ms / 1000;
    match secs {
        _ if secs % 86_400 == 0 && secs >= 86_400 => match secs / 86_400 {
            1 => "1 day".into(),
            days => format!("{days} days"),
        },
        _ if secs % 3600 == 0 && secs >= 3600 => format!("{} h", secs / 3600),
        _ if secs % 60 == 0 && secs >= 60 => format!("{} min", secs / 60),
        _ => format!("{secs} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_timeline_counts_errors_per_bar() {
        let mut t = Timeline::default();
        for i in 0..1000 {
            t.add(1_000_000 + i * 1000, i % 100 == 55);
        }
        assert_eq!(t.span(), Some((1_000_000, 1_999_000)));
        let bars = t.bars(60).expect("bars");
        assert_eq!(bars.width_ms, 30_000);
        assert_eq!(bars.start_ms, 990_000);
        assert_eq!(bars.slots.iter().map(|s| s.compared).sum::<u64>(), 1000);
        assert_eq!(bars.slots.iter().map(|s| s.errors).sum::<u64>(), 10);
        assert!(bars.slots.len() <= 60);
        assert_eq!(width_label(bars.width_ms), "30 s");
    }

    #[test]
    fn report_timeline_stays_bounded_over_years_in_any_order() {
        let mut t = Timeline::default();
        let year_ms = 365 * 86_400_000i64;
        for i in 0..50_000i64 {
            // Jumping back and forth across ten years.
            let at = (i * 7_919_000_003) % (10 * year_ms);
            t.add(at, i % 2 == 0);
        }
        assert!(t.slots.len() <= MAX_SLOTS);
        let bars = t.bars(60).expect("bars");
        assert!(bars.slots.len() <= 60);
        assert_eq!(bars.slots.iter().map(|s| s.compared).sum::<u64>(), 50_000);
        assert_eq!(bars.slots.iter().map(|s| s.errors).sum::<u64>(), 25_000);
    }

    #[test]
    fn report_timeline_without_times_has_no_bars() {
        assert_eq!(Timeline::default().bars(60), None);
        assert_eq!(width_label(86_400_000 * 4), "4 days");
        assert_eq!(width_label(7_200_000), "2 h");
        assert_eq!(width_label(600_000), "10 min");
    }
}
