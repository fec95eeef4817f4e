//! Work that is not I/O on a descriptor: timers and deferred jobs, as seen from the
//! [`Reactor`]'s public API, and how each runs inside a tick (signals are in `signals`).

use std::time::{Duration, Instant};

use super::Reactor;
use crate::defer::{Completion, DeferPanic};
use crate::id::{ConnId, ServerId, TimerId};
use crate::timers::deadline;

/// What a timer does when it fires.
pub(crate) enum TimerTask {
    Once(Box<dyn FnOnce(&mut Reactor)>),
    Every(Box<dyn FnMut(&mut Reactor) -> TimerAction>),
    ConnectTimeout(ConnId),
    Inactivity(ConnId),
    ResumeAccept(ServerId),
    ChildExitPoll,
    Linger(ConnId),
    HalfClose(ConnId),
    TlsHandshake(ConnId),
    AttemptDelay(ConnId),
}

/// What a periodic timer's callback wants next (calloop's `TimeoutAction`, reduced to
/// what a fixed-period timer needs). A callback that returns `()` means `Continue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Fire again one period after the last deadline.
    Continue,
    /// Cancel the timer now.
    Stop,
}

impl From<()> for TimerAction {
    fn from((): ()) -> TimerAction {
        TimerAction::Continue
    }
}

/// The shortest period a periodic timer may have (a zero period would never let a tick end).
const MIN_PERIOD: Duration = Duration::from_micros(1);

impl Reactor {
    /// Runs `callback` once, `delay` from now.
    pub fn add_timer(
        &mut self,
        delay: Duration,
        callback: impl FnOnce(&mut Reactor) + 'static,
    ) -> TimerId {
        self.timers.insert(
            deadline(Instant::now(), delay),
            None,
            TimerTask::Once(Box::new(callback)),
        )
    }

    /// Runs `callback` every `period`, first `period` from now, until it returns
    /// [`TimerAction::Stop`] or is cancelled (a callback returning `()` goes on). Deadlines
    /// are kept on a fixed grid, so the timer does not drift; a tick that falls behind
    /// skips missed beats instead of firing them in a burst.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ember::{Reactor, TimerAction};
    ///
    /// Reactor::run(|r| {
    ///     let mut beats = 0;
    ///     r.add_periodic_timer(Duration::from_millis(1), move |r| {
    ///         beats += 1;
    ///         if beats < 3 {
    ///             return TimerAction::Continue;
    ///         }
    ///         r.stop();
    ///         TimerAction::Stop
    ///     });
    ///     Ok(())
    /// })
    /// .unwrap();
    /// ```
    pub fn add_periodic_timer<A: Into<TimerAction>>(
        &mut self,
        period: Duration,
        mut callback: impl FnMut(&mut Reactor) -> A + 'static,
    ) -> TimerId {
        let period = period.max(MIN_PERIOD);
        self.timers.insert(
            deadline(Instant::now(), period),
            Some(period),
            TimerTask::Every(Box::new(move |r| callback(r).into())),
        )
    }

    /// Cancels a timer (a periodic one may cancel itself from its callback). Returns
    /// whether it was still pending.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id)
    }

    /// The number of pending timers, internal ones (timeouts) included.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    pub(crate) fn run_timers(&mut self) {
        let now = Instant::now();
        self.now = now;
        // Bound the work of one tick: timers added by callbacks wait for the next one.
        let mut budget = self.timers.len();
        while budget > 0 {
            let Some(fired) = self.timers.pop_due(now) else {
                break;
            };
            budget -= 1;
            let crate::timers::Fired {
                id,
                task,
                due,
                period,
            } = fired;
            match task {
                TimerTask::Once(callback) => {
                    self.contain(None, callback);
                }
                TimerTask::Every(mut callback) => {
                    // A periodic timer that asked to stop, or panicked, is not re-armed.
                    if self.contain(None, |r| callback(r)) != Some(TimerAction::Continue) {
                        continue;
                    }
                    let fired = crate::timers::Fired {
                        id,
                        task: TimerTask::Every(callback),
                        due,
                        period,
                    };
                    self.timers.rearm(fired, now);
                }
                TimerTask::ConnectTimeout(conn) => self.connect_timed_out(conn),
                TimerTask::Inactivity(conn) => self.inactivity_check(conn),
                TimerTask::ResumeAccept(server) => self.backoff_over(server),
                TimerTask::ChildExitPoll => self.poll_exiting_children(),
                TimerTask::Linger(conn) => self.linger_expired(conn),
                TimerTask::HalfClose(conn) => self.half_close_check(conn),
                TimerTask::TlsHandshake(conn) => self.tls_handshake_expired(conn),
                TimerTask::AttemptDelay(conn) => self.attempt_delay_passed(conn),
            }
        }
    }

    /// Runs `work` on the defer pool and then `callback` with its result on the reactor
    /// thread (`EM.defer`). If `work` panics, `callback` gets a [`DeferPanic`]; the loop
    /// carries on.
    ///
    /// ```
    /// use ember::Reactor;
    ///
    /// Reactor::run(|r| {
    ///     r.defer(|| 6 * 7, |r, answer| {
    ///         assert_eq!(answer, Ok(42));
    ///         r.stop();
    ///     });
    ///     Ok(())
    /// })
    /// .unwrap();
    /// ```
    pub fn defer<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
        callback: impl FnOnce(&mut Reactor, Result<T, DeferPanic>) + 'static,
    ) {
        let completion: Completion = Box::new(move |r, outcome| {
            let result = match outcome {
                Ok(value) => Ok(*value
                    .downcast::<T>()
                    .expect("a deferred job's result has the type its work returns")),
                Err(payload) => Err(DeferPanic::from_payload(payload)),
            };
            callback(r, result);
        });
        self.defer.submit(
            &self.shared,
            Box::new(move || Box::new(work()) as Box<dyn std::any::Any + Send>),
            completion,
        );
    }

    /// Sets the defer pool's size (default 20); only effective before the first `defer`.
    pub fn set_defer_threads(&mut self, threads: usize) {
        self.defer.set_threads(threads);
    }

    /// Deferred jobs whose callbacks have not run yet.
    pub fn deferred_pending(&self) -> usize {
        self.defer.pending()
    }
}
