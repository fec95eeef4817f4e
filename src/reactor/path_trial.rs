//! Which path a long relay takes under [`RelayMode::Auto`](super::RelayMode::Auto):
//! splicing or copying, chosen by timing both on the relay's own stream.
//!
//! Splicing saves the proxy both copies, but the reader is handed the writer's pages as
//! they are, and copies them out itself. Whether that is cheaper for the machine as a
//! whole depends on where the reader runs and how cold those pages are by then: on a
//! quiet host with the reader on the proxy's core, splicing moved an iperf3 stream
//! 2.18 GiB/s against copying's 1.72 (its buffer wherever malloc had put it); on the
//! same machine with a busier host it moved less than copying and cost more CPU per
//! GiB, the reader's copy out of cold pages outweighing the two copies the proxy saved
//! (docs/benchmarks.md, "Splice or copy, timed"). The relay cannot see the reader's cost, but it sees its result: the rate its
//! bytes move at. So a relay that has moved [`FIRST_TRIAL_AFTER`] bytes times the two
//! paths on alternating stretches of its own stream, keeps splicing unless copying was
//! clearly faster, and times them again every [`TRIAL_EVERY`] bytes, since a host's
//! state changes.
//!
//! A [`PathTrial`] owns only the bookkeeping: the relay asks it which path to take
//! ([`PathTrial::path`]) and tells it what each step moved ([`PathTrial::record`]).

use std::time::{Duration, Instant};

/// The two ways a relay moves bytes in user space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Source socket into a kernel pipe, pipe into the target socket.
    Splice = 0,
    /// Read into the reactor's buffer, write to the target.
    Copy = 1,
}

/// Bytes a relay moves before its first trial: shorter relays (a request, most
/// answers) never pay for one.
pub(crate) const FIRST_TRIAL_AFTER: u64 = 64 * 1024 * 1024;
/// Bytes between the end of one trial and the start of the next: a trial moves
/// 6 × 48 MiB, half of it on the slower path, so a settled stream spends at most 144
/// MiB in every 4.3 GiB (about 3 %) on that path.
pub(crate) const TRIAL_EVERY: u64 = 4 * 1024 * 1024 * 1024;
/// Bytes a stretch moves on its path before its clock starts: more than the socket
/// buffers on either side of the relay hold (4–11 MB seen on loopback).
const SETTLE: u64 = 16 * 1024 * 1024;
/// Bytes timed per stretch: at 1 GiB/s about 30 ms, hundreds of relay steps.
const STRETCH: u64 = 32 * 1024 * 1024;
/// The paths of a trial's stretches, in order. Each path is timed first, last and in
/// the middle, so a host that speeds up or slows down during the trial favours
/// neither.
const PLAN: [Path; 6] = [
    Path::Copy,
    Path::Splice,
    Path::Splice,
    Path::Copy,
    Path::Copy,
    Path::Splice,
];
/// How much faster copying must have been for the relay to copy, in percent: below
/// that the two are taken as level, and splicing, cheaper for the proxy, stays.
const COPY_MARGIN_PERCENT: u128 = 5;

/// One relay's choice between splicing and copying (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PathTrial {
    stage: Stage,
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Between trials: `path` is taken until `moved` reaches `until`.
    Settled { path: Path, moved: u64, until: u64 },
    /// Stretch `index` of [`PLAN`], which has moved `moved`; `timed`: when its clock
    /// started and what it had moved by then (`None` while it settles).
    Timing {
        index: usize,
        moved: u64,
        timed: Option<(Instant, u64)>,
        /// Bytes and time so far per path, indexed by `Path as usize`.
        totals: [(u64, Duration); 2],
    },
}

impl Default for PathTrial {
    fn default() -> Self {
        PathTrial {
            stage: Stage::Settled {
                path: Path::Splice,
                moved: 0,
                until: FIRST_TRIAL_AFTER,
            },
        }
    }
}

impl PathTrial {
    /// The path the relay's next step takes.
    pub(crate) fn path(&self) -> Path {
        match self.stage {
            Stage::Settled { path, .. } => path,
            Stage::Timing { index, .. } => PLAN[index],
        }
    }

    /// Whether a trial is under way (both paths are being timed).
    #[cfg(test)]
    fn timing(&self) -> bool {
        matches!(self.stage, Stage::Timing { .. })
    }

    /// A relay step taken at `now` moved `bytes`. Returns the verdict of the trial this
    /// step ended, if it ended one.
    pub(crate) fn record(&mut self, bytes: u64, now: Instant) -> Option<Verdict> {
        match &mut self.stage {
            Stage::Settled { moved, until, .. } => {
                *moved += bytes;
                if *moved >= *until {
                    self.stage = Stage::Timing {
                        index: 0,
                        moved: 0,
                        timed: None,
                        totals: [(0, Duration::ZERO); 2],
                    };
                }
                None
            }
            Stage::Timing {
                index,
                moved,
                timed,
                totals,
            } => {
                *moved += bytes;
                // The first SETTLE bytes of a stretch are not timed: the queues on both
                // sides take that long to reach the new path's pace (timed from the
                // switch, splicing drained what had queued at the source and looked
                // faster than it was).
                let Some((since, from)) = *timed else {
                    if *moved >= SETTLE {
                        *timed = Some((now, *moved));
                    }
                    return None;
                };
                if *moved - from < STRETCH {
                    return None;
                }
                let total = &mut totals[PLAN[*index] as usize];
                total.0 += *moved - from;
                total.1 += now.saturating_duration_since(since);
                if *index + 1 < PLAN.len() {
                    *index += 1;
                    *moved = 0;
                    *timed = None;
                    return None;
                }
                let verdict =
                    Verdict::of(totals[Path::Splice as usize], totals[Path::Copy as usize]);
                self.stage = Stage::Settled {
                    path: verdict.path,
                    moved: 0,
                    until: TRIAL_EVERY,
                };
                Some(verdict)
            }
        }
    }
}

/// What a trial measured, and the path it chose: copying only if its rate beat
/// splicing's by [`COPY_MARGIN_PERCENT`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verdict {
    pub(crate) path: Path,
    /// Bytes per second each path moved while timed.
    pub(crate) splice_rate: f64,
    pub(crate) copy_rate: f64,
}

impl Verdict {
    /// Judges the two paths by their bytes and time.
    fn of(splice: (u64, Duration), copy: (u64, Duration)) -> Verdict {
        let (splice_bytes, splice_time) = (u128::from(splice.0), splice.1.as_nanos().max(1));
        let (copy_bytes, copy_time) = (u128::from(copy.0), copy.1.as_nanos().max(1));
        // copy_bytes / copy_time > (1 + margin) × splice_bytes / splice_time, in integers.
        let copy_wins =
            copy_bytes * splice_time * 100 > (100 + COPY_MARGIN_PERCENT) * splice_bytes * copy_time;
        Verdict {
            path: if copy_wins { Path::Copy } else { Path::Splice },
            splice_rate: splice_bytes as f64 * 1e9 / splice_time as f64,
            copy_rate: copy_bytes as f64 * 1e9 / copy_time as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Feeds `trial` 1 MiB steps from `*now` until `bytes` are moved, each step taking
    /// `splice_step` or `copy_step` by the path the trial asked for; returns the paths
    /// taken, one entry per run of steps on the same path.
    fn run(
        trial: &mut PathTrial,
        now: &mut Instant,
        bytes: u64,
        splice_step: Duration,
        copy_step: Duration,
    ) -> Vec<Path> {
        let mut paths = Vec::new();
        let mut moved = 0;
        while moved < bytes {
            let path = trial.path();
            if paths.last() != Some(&path) {
                paths.push(path);
            }
            *now += match path {
                Path::Splice => splice_step,
                Path::Copy => copy_step,
            };
            trial.record(MIB, *now);
            moved += MIB;
        }
        paths
    }

    /// A fresh relay run up to the start of its first trial, and the time then.
    fn at_first_trial(splice_step: Duration, copy_step: Duration) -> (PathTrial, Instant) {
        let mut trial = PathTrial::default();
        let mut now = Instant::now();
        run(
            &mut trial,
            &mut now,
            FIRST_TRIAL_AFTER,
            splice_step,
            copy_step,
        );
        assert!(
            trial.timing(),
            "a trial starts after {FIRST_TRIAL_AFTER} bytes"
        );
        (trial, now)
    }

    /// Runs a fresh relay through its first trial; returns it settled.
    fn settle(splice_step: Duration, copy_step: Duration) -> PathTrial {
        let (mut trial, mut now) = at_first_trial(splice_step, copy_step);
        while trial.timing() {
            run(&mut trial, &mut now, MIB, splice_step, copy_step);
        }
        trial
    }

    #[test]
    fn a_short_relay_splices_and_is_never_timed() {
        let mut trial = PathTrial::default();
        let mut now = Instant::now();
        let ms = Duration::from_millis(1);
        let paths = run(&mut trial, &mut now, FIRST_TRIAL_AFTER - MIB, ms, ms);
        assert_eq!(paths, [Path::Splice]);
        assert!(!trial.timing());
    }

    #[test]
    fn a_trial_takes_each_path_in_turn_then_settles() {
        let ms = Duration::from_millis(1);
        let (mut trial, mut now) = at_first_trial(ms, ms);
        let mut paths = Vec::new();
        while trial.timing() {
            for path in run(&mut trial, &mut now, MIB, ms, ms) {
                if paths.last() != Some(&path) {
                    paths.push(path);
                }
            }
        }
        // Copy, splice twice, copy twice, splice: the plan's stretches, merged where a
        // path follows itself.
        assert_eq!(paths, [Path::Copy, Path::Splice, Path::Copy, Path::Splice]);
    }

    #[test]
    fn copying_wins_only_when_clearly_faster() {
        let ms = Duration::from_millis(1);
        let copy_faster = Duration::from_micros(900); // 11 % faster
        let copy_barely = Duration::from_micros(970); // 3 % faster
        assert_eq!(settle(ms, copy_faster).path(), Path::Copy);
        assert_eq!(settle(ms, copy_barely).path(), Path::Splice);
        assert_eq!(settle(ms, ms).path(), Path::Splice);
        assert_eq!(settle(copy_faster, ms).path(), Path::Splice);
    }

    #[test]
    fn the_verdict_reports_each_path_s_rate() {
        let (splice_step, copy_step) = (Duration::from_millis(2), Duration::from_millis(1));
        let (mut trial, mut now) = at_first_trial(splice_step, copy_step);
        let verdict = loop {
            let path = trial.path();
            now += if path == Path::Splice {
                splice_step
            } else {
                copy_step
            };
            if let Some(verdict) = trial.record(MIB, now) {
                break verdict;
            }
        };
        assert_eq!(verdict.path, Path::Copy);
        // 1 MiB per 2 ms and per 1 ms.
        assert!((verdict.splice_rate - 500.0 * MIB as f64).abs() < 1.0);
        assert!((verdict.copy_rate - 1000.0 * MIB as f64).abs() < 1.0);
    }

    #[test]
    fn a_settled_relay_is_timed_again_later() {
        let ms = Duration::from_millis(1);
        let slower = Duration::from_micros(1200);
        let mut trial = settle(ms, Duration::from_micros(800));
        assert_eq!(trial.path(), Path::Copy);
        let mut now = Instant::now();
        run(&mut trial, &mut now, TRIAL_EVERY - MIB, ms, ms);
        assert!(!trial.timing() && trial.path() == Path::Copy);
        run(&mut trial, &mut now, MIB, ms, ms);
        assert!(trial.timing(), "timed again after {TRIAL_EVERY} bytes");
        // The host changed: now splicing is the faster one.
        while trial.timing() {
            run(&mut trial, &mut now, MIB, ms, slower);
        }
        assert_eq!(trial.path(), Path::Splice);
    }
}
