//! A budget for log lines ([`Throttle`]): so many per window, the rest counted and
//! reported with the next line that gets through, so a dead backend failing a thousand
//! connects a second costs a few lines, not a thousand.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// At most `per_window` admissions per `window`; the ones refused are counted.
///
/// ```
/// use std::time::Duration;
/// use ember::proxy::Throttle;
///
/// let throttle = Throttle::new(2, Duration::from_secs(3600));
/// assert_eq!(throttle.admit(), Some(0));
/// assert_eq!(throttle.admit(), Some(0));
/// assert_eq!(throttle.admit(), None); // over budget: counted
/// assert_eq!(throttle.suppressed(), 1);
/// ```
#[derive(Debug)]
pub struct Throttle {
    per_window: u32,
    window: Duration,
    /// When the current window began; `None` before the first admission.
    window_start: Cell<Option<Instant>>,
    admitted: Cell<u32>,
    suppressed: Cell<u64>,
}

impl Throttle {
    /// A budget of `per_window` lines every `window`.
    pub fn new(per_window: u32, window: Duration) -> Throttle {
        Throttle {
            per_window,
            window,
            window_start: Cell::new(None),
            admitted: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Whether one more line may go out now: `Some(n)` with how many were refused since
    /// the last one admitted (say so in the line), or `None` (counted).
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let fresh = self
            .window_start
            .get()
            .is_none_or(|start| now.duration_since(start) >= self.window);
        if fresh {
            self.window_start.set(Some(now));
            self.admitted.set(0);
        }
        if self.admitted.get() >= self.per_window {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.admitted.set(self.admitted.get() + 1);
        Some(self.suppressed.replace(0))
    }

    /// Lines refused since the last one admitted.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.get()
    }
}
