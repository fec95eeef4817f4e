//! Work that is not I/O on a descriptor: timers, deferred jobs and signal handlers,
//! as seen from the [`Reactor`]'s public API, and how each runs inside a tick.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use super::{Reactor, SIGNAL_TOKEN};
use crate::defer::{Completion, DeferPanic};
use crate::id::{ConnId, ServerId, TimerId};
use crate::sys::signals::SignalPipe;
use crate::timers::deadline;

/// What a timer does when it fires.
pub(crate) enum TimerTask {
    Once(Box<dyn FnOnce(&mut Reactor)>),
    Every(Box<dyn FnMut(&mut Reactor)>),
    ConnectTimeout(ConnId),
    Inactivity(ConnId),
    ResumeAccept(ServerId),
    ChildExitPoll,
    Linger(ConnId),
    HalfClose(ConnId),
}

type SignalHandler = Box<dyn FnMut(&mut Reactor)>;

#[derive(Default)]
pub(crate) struct SignalHandlers(HashMap<i32, Vec<SignalHandler>>);

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

    /// Runs `callback` every `period`, first `period` from now. Deadlines are kept on a
    /// fixed grid, so the timer does not drift; a tick that falls behind skips missed
    /// beats instead of firing them in a burst.
    pub fn add_periodic_timer(
        &mut self,
        period: Duration,
        callback: impl FnMut(&mut Reactor) + 'static,
    ) -> TimerId {
        let period = period.max(MIN_PERIOD);
        self.timers.insert(
            deadline(Instant::now(), period),
            Some(period),
            TimerTask::Every(Box::new(callback)),
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
                    if self.contain(None, |r| callback(r)).is_none() {
                        continue; // a periodic timer that panicked is not re-armed
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
                TimerTask::ResumeAccept(server) => self.resume_accepting(server),
                TimerTask::ChildExitPoll => self.poll_exiting_children(),
                TimerTask::Linger(conn) => self.linger_expired(conn),
                TimerTask::HalfClose(conn) => self.half_close_check(conn),
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

    /// Runs `handler` on the reactor thread each time signal `signo` arrives (for
    /// example `libc::SIGHUP` to reload). Installs a process-wide handler for `signo`.
    pub fn on_signal(
        &mut self,
        signo: i32,
        handler: impl FnMut(&mut Reactor) + 'static,
    ) -> io::Result<()> {
        if self.signals.is_none() {
            let pipe = SignalPipe::open()?;
            self.poll.registry().register(
                &mut mio::unix::SourceFd(&pipe.read_fd()),
                SIGNAL_TOKEN,
                mio::Interest::READABLE,
            )?;
            self.signals = Some(pipe);
        }
        SignalPipe::install(signo)?;
        self.signal_handlers
            .0
            .entry(signo)
            .or_default()
            .push(Box::new(handler));
        Ok(())
    }

    /// Stops the loop on SIGINT or SIGTERM.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        self.on_signal(libc::SIGINT, Reactor::stop)?;
        self.on_signal(libc::SIGTERM, Reactor::stop)
    }

    pub(crate) fn run_signal_handlers(&mut self) {
        let Some(pipe) = self.signals.as_ref() else {
            return;
        };
        for signo in pipe.drain() {
            let Some(mut handlers) = self.signal_handlers.0.remove(&signo) else {
                continue;
            };
            for handler in &mut handlers {
                self.contain(None, |r| handler(r));
            }
            // Keep handlers registered by the handlers themselves, after the old ones.
            let added = self.signal_handlers.0.remove(&signo).unwrap_or_default();
            handlers.extend(added);
            self.signal_handlers.0.insert(signo, handlers);
        }
    }
}
