//! Passive health: which backends of a pool are in rotation, judged from how connects to
//! them end (HAProxy's `observe layer4` with `error-limit`/`on-error mark-down`).
//!
//! `fall` consecutive failed connects take a backend out for a back-off that starts at
//! `backoff` and doubles (up to `max_backoff`) each time it fails again right after
//! coming back; one successful connect puts it back for good. When the back-off is over
//! the backend is eligible again: the next client tries it, and that connect decides.
//!
//! Active checks (HAProxy's `check`, see `probe.rs`) add a second verdict: `fall`
//! consecutive failed checks take a backend down, `rise` consecutive passed checks bring
//! it up; a backend is in rotation only while neither verdict has it out. This module
//! only keeps the score; the [`Pool`](super::Pool) asks and logs.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How failures take a backend out of rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Consecutive failed connects that take a backend out (default 3).
    pub fall: u32,
    /// How long it stays out the first time (default 10 s).
    pub backoff: Duration,
    /// The longest it stays out, however often it fails (default 5 min).
    pub max_backoff: Duration,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            fall: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// A change of a backend's state, for one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Out of rotation for this long.
    Down(Duration),
    /// Back in rotation.
    Up,
    /// Out of rotation: active checks failed `fall` times in a row.
    CheckedDown,
}

#[derive(Default)]
struct Score {
    /// Active checks have it down (`fall` failed checks; `rise` passed ones end it).
    checked_down: Cell<bool>,
    /// Consecutive check results that point away from the current verdict.
    check_streak: Cell<u32>,
    /// Consecutive failed connects.
    failures: Cell<u32>,
    /// Out of rotation until then.
    out_until: Cell<Option<Instant>>,
    /// The back-off the next ejection gets (0: the first one).
    next_backoff: Cell<Duration>,
}

/// The health of each backend of a pool, by index.
pub(crate) struct Health {
    policy: Ejection,
    scores: Vec<Score>,
}

impl Health {
    pub(crate) fn new(backends: usize, policy: Ejection) -> Health {
        Health {
            policy,
            scores: (0..backends).map(|_| Score::default()).collect(),
        }
    }

    /// Whether backend `i` takes new clients at `now`.
    pub(crate) fn in_rotation(&self, i: usize, now: Instant) -> bool {
        self.scores.get(i).is_some_and(|s| {
            !s.checked_down.get() && s.out_until.get().is_none_or(|until| now >= until)
        })
    }

    /// An active check of backend `i` passed (`true`) or failed; `rise`/`fall` are how
    /// many in a row change its state.
    pub(crate) fn checked(&self, i: usize, passed: bool, rise: u32, fall: u32) -> Option<Change> {
        let score = self.scores.get(i)?;
        if passed != score.checked_down.get() {
            score.check_streak.set(0); // agrees with the current verdict
            return None;
        }
        let streak = score.check_streak.get() + 1;
        score.check_streak.set(streak);
        if passed && streak >= rise.max(1) {
            score.checked_down.set(false);
            score.check_streak.set(0);
            // A backend the checks found alive is worth a try now, whatever the
            // passive back-off said.
            score.failures.set(0);
            score.out_until.set(None);
            score.next_backoff.set(Duration::ZERO);
            Some(Change::Up)
        } else if !passed && streak >= fall.max(1) {
            score.checked_down.set(true);
            score.check_streak.set(0);
            Some(Change::CheckedDown)
        } else {
            None
        }
    }

    /// A connect to backend `i` failed at `now`.
    pub(crate) fn connect_failed(&self, i: usize, now: Instant) -> Option<Change> {
        let score = self.scores.get(i)?;
        if !self.in_rotation(i, now) {
            return None; // already out: a client that picked it before it went down
        }
        let failures = score.failures.get() + 1;
        score.failures.set(failures);
        let was_out_before = score.next_backoff.get() > Duration::ZERO;
        // Back from a back-off, one failure is enough to go out again, for longer.
        if failures < self.policy.fall && !was_out_before {
            return None;
        }
        let backoff = if was_out_before {
            score.next_backoff.get()
        } else {
            self.policy.backoff
        };
        score.out_until.set(Some(now + backoff));
        score
            .next_backoff
            .set((backoff * 2).min(self.policy.max_backoff));
        Some(Change::Down(backoff))
    }

    /// A connect to backend `i` succeeded.
    pub(crate) fn connect_succeeded(&self, i: usize) -> Option<Change> {
        let score = self.scores.get(i)?;
        score.failures.set(0);
        score.out_until.set(None);
        let was_ejected = score.next_backoff.replace(Duration::ZERO) > Duration::ZERO;
        was_ejected.then_some(Change::Up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_take_a_backend_out_and_a_success_brings_it_back() {
        let health = Health::new(2, Ejection::default());
        let t0 = Instant::now();
        assert_eq!(health.connect_failed(0, t0), None);
        assert_eq!(health.connect_failed(0, t0), None);
        assert_eq!(
            health.connect_failed(0, t0),
            Some(Change::Down(Duration::from_secs(10)))
        );
        assert!(!health.in_rotation(0, t0));
        assert!(health.in_rotation(1, t0), "the others stay in");
        assert!(health.in_rotation(0, t0 + Duration::from_secs(10)));
        assert_eq!(health.connect_succeeded(0), Some(Change::Up));
        assert_eq!(health.connect_succeeded(0), None);
    }

    #[test]
    fn checks_take_a_backend_down_after_fall_and_up_after_rise() {
        let health = Health::new(1, Ejection::default());
        let now = Instant::now();
        assert_eq!(health.checked(0, false, 2, 3), None);
        assert_eq!(
            health.checked(0, true, 2, 3),
            None,
            "a pass breaks the streak"
        );
        assert_eq!(health.checked(0, false, 2, 3), None);
        assert_eq!(health.checked(0, false, 2, 3), None);
        assert_eq!(health.checked(0, false, 2, 3), Some(Change::CheckedDown));
        assert!(!health.in_rotation(0, now));
        assert_eq!(health.checked(0, true, 2, 3), None);
        assert_eq!(health.checked(0, true, 2, 3), Some(Change::Up));
        assert!(health.in_rotation(0, now));
    }

    #[test]
    fn a_backend_that_stays_dead_stays_out_longer_each_time() {
        let health = Health::new(1, Ejection::default());
        let mut now = Instant::now();
        for _ in 0..3 {
            health.connect_failed(0, now);
        }
        let mut expected = Duration::from_secs(10);
        for _ in 0..8 {
            now += expected;
            assert!(health.in_rotation(0, now));
            expected = (expected * 2).min(Duration::from_secs(300));
            assert_eq!(health.connect_failed(0, now), Some(Change::Down(expected)));
        }
        assert_eq!(expected, Duration::from_secs(300), "capped");
    }
}
