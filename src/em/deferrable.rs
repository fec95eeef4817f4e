//! [`Deferrable`]: a result that arrives later, with callbacks for success and errbacks
//! for failure (EventMachine's `Deferrable` and `DefaultDeferrable`).
//!
//! This module owns the resolution state and the callbacks waiting on it. It never holds
//! its cell borrowed while a user callback runs or a user value is dropped, so a callback
//! may do anything with the same deferrable (add callbacks, resolve it again, drop the
//! last clone).

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use crate::id::TimerId;
use crate::{LocalHandle, Reactor};

type Callback<T> = Box<dyn FnOnce(&T)>;
/// What resolving hands back to run, drop and cancel once the cell is free again.
type Resolved<T, E> = (Vec<Callback<T>>, Vec<Callback<E>>, Option<Timeout>);

/// Where a [`Deferrable`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeferredStatus {
    /// Neither succeeded nor failed yet: callbacks and errbacks wait.
    Pending,
    /// [`Deferrable::succeed`] ran first; callbacks have run, errbacks never will.
    Succeeded,
    /// [`Deferrable::fail`] (or the timeout) ran first; errbacks have run, callbacks never
    /// will.
    Failed,
}

/// The error a [`Deferrable::timeout`] fails with (converted into the deferrable's error
/// type with `From`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the deferrable timed out")
    }
}

impl std::error::Error for TimedOut {}

impl From<TimedOut> for io::Error {
    fn from(e: TimedOut) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, e)
    }
}

/// A value of type `T` or an error of type `E` that arrives later, and the callbacks
/// waiting for it.
///
/// - [`callback`](Self::callback)s run when it [`succeed`](Self::succeed)s,
///   [`errback`](Self::errback)s when it [`fail`](Self::fail)s, each exactly once and in
///   the order they were added. The other list is dropped unrun.
/// - It resolves once: the first `succeed` or `fail` wins and later ones do nothing
///   (EventMachine lets a deferrable be resolved again; ember does not, so "exactly once"
///   holds).
/// - A callback added after resolution runs at once, inside the `callback` call, as in
///   EventMachine; one added while the callbacks are running also runs at once.
/// - Cloning shares it: every clone sees the same resolution and callbacks.
///
/// Callbacks see the value by reference (`&T`), so one value reaches any number of
/// callbacks without a `T: Clone` bound or a clone per callback; one that needs it owned
/// clones it. The value is kept (behind an `Rc`) for callbacks added later.
///
/// Callbacks are called where the deferrable is resolved, with no reactor: a deferrable
/// is resolved from a handler, a timer, a deferred job's completion or another
/// deferrable's callback alike. A callback that needs the reactor captures a
/// [`LocalHandle`] and uses [`next_tick`](LocalHandle::next_tick).
///
/// **Panics.** A panicking callback does not stop the others: every callback runs, then
/// the first panic continues out of `succeed`/`fail` (or `callback`), where the reactor
/// contains it like any panic of the code that resolved it (a handler's connection is
/// closed; for the timeout, which resolves from a timer, the error handler is told).
///
/// ```
/// use std::time::Duration;
/// use ember::Reactor;
/// use ember::em::{Deferrable, TimedOut};
///
/// Reactor::run(|r| {
///     let answer: Deferrable<u32, TimedOut> = Deferrable::new();
///     let ticks = r.local_handle();
///     answer.callback(move |n| {
///         assert_eq!(*n, 42);
///         ticks.next_tick(|r| r.stop());
///     });
///     answer.timeout(r, Duration::from_secs(5));
///     let later = answer.clone();
///     r.add_timer(Duration::from_millis(1), move |_| {
///         later.succeed(42);
///     });
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct Deferrable<T, E> {
    state: Rc<RefCell<State<T, E>>>,
}

enum Resolution<T, E> {
    Pending,
    Succeeded(Rc<T>),
    Failed(Rc<E>),
}

/// A timeout armed by [`Deferrable::timeout`]: the timer, and how to cancel it without a
/// reactor at hand.
struct Timeout {
    /// Tells the timer's closure it is still the current timeout (a newer `timeout` call
    /// replaces it).
    generation: u64,
    timer: TimerId,
    ticks: LocalHandle,
}

struct State<T, E> {
    resolution: Resolution<T, E>,
    callbacks: Vec<Callback<T>>,
    errbacks: Vec<Callback<E>>,
    timeout: Option<Timeout>,
    timeouts_armed: u64,
}

impl<T, E> Deferrable<T, E> {
    /// A pending deferrable with no callbacks.
    pub fn new() -> Deferrable<T, E> {
        Deferrable {
            state: Rc::new(RefCell::new(State {
                resolution: Resolution::Pending,
                callbacks: Vec::new(),
                errbacks: Vec::new(),
                timeout: None,
                timeouts_armed: 0,
            })),
        }
    }

    /// Runs `f` with the value when this succeeds; at once if it already has. Never runs
    /// if it fails.
    pub fn callback(&self, f: impl FnOnce(&T) + 'static) -> &Self {
        let value = {
            let mut state = self.state.borrow_mut();
            match &state.resolution {
                Resolution::Pending => {
                    state.callbacks.push(Box::new(f));
                    return self;
                }
                Resolution::Succeeded(value) => Rc::clone(value),
                Resolution::Failed(_) => return self,
            }
        };
        f(&value);
        self
    }

    /// Runs `f` with the error when this fails (the timeout included); at once if it
    /// already has. Never runs if it succeeds.
    pub fn errback(&self, f: impl FnOnce(&E) + 'static) -> &Self {
        let error = {
            let mut state = self.state.borrow_mut();
            match &state.resolution {
                Resolution::Pending => {
                    state.errbacks.push(Box::new(f));
                    return self;
                }
                Resolution::Failed(error) => Rc::clone(error),
                Resolution::Succeeded(_) => return self,
            }
        };
        f(&error);
        self
    }

    /// Resolves it with `value`: cancels the timeout, runs every callback in order and
    /// drops the errbacks. Returns false, and does nothing, if it was already resolved.
    pub fn succeed(&self, value: T) -> bool {
        let value = Rc::new(value);
        let Some((callbacks, errbacks, timeout)) =
            self.resolve(Resolution::Succeeded(Rc::clone(&value)))
        else {
            return false;
        };
        cancel(timeout);
        drop(errbacks);
        run_all(callbacks, &value);
        true
    }

    /// Resolves it with `error`: cancels the timeout, runs every errback in order and
    /// drops the callbacks. Returns false, and does nothing, if it was already resolved.
    pub fn fail(&self, error: E) -> bool {
        let error = Rc::new(error);
        let Some((callbacks, errbacks, timeout)) =
            self.resolve(Resolution::Failed(Rc::clone(&error)))
        else {
            return false;
        };
        cancel(timeout);
        drop(callbacks);
        run_all(errbacks, &error);
        true
    }

    /// Where it stands.
    pub fn status(&self) -> DeferredStatus {
        match self.state.borrow().resolution {
            Resolution::Pending => DeferredStatus::Pending,
            Resolution::Succeeded(_) => DeferredStatus::Succeeded,
            Resolution::Failed(_) => DeferredStatus::Failed,
        }
    }

    /// Cancels the pending timeout, if any (the timer itself is cancelled at the end of
    /// the tick; until then it can no longer fail this deferrable).
    pub fn cancel_timeout(&self) {
        let timeout = self.state.borrow_mut().timeout.take();
        cancel(timeout);
    }

    /// Marks it resolved and hands back what the resolution must run, drop and cancel;
    /// `None` if it was already resolved (then `resolution` is dropped, outside the cell).
    fn resolve(&self, resolution: Resolution<T, E>) -> Option<Resolved<T, E>> {
        let mut state = self.state.borrow_mut();
        if !matches!(state.resolution, Resolution::Pending) {
            return None;
        }
        state.resolution = resolution;
        Some((
            std::mem::take(&mut state.callbacks),
            std::mem::take(&mut state.errbacks),
            state.timeout.take(),
        ))
    }
}

impl<T: 'static, E: 'static> Deferrable<T, E> {
    /// Fails it with [`TimedOut`] if it is still pending `after` from now (EventMachine's
    /// `timeout`). Succeeding or failing first cancels the timer; a second call replaces
    /// the first timeout; on a resolved deferrable it does nothing. The timer holds the
    /// deferrable, so it fails on time even if every other handle has been dropped.
    pub fn timeout(&self, r: &mut Reactor, after: Duration) -> &Self
    where
        E: From<TimedOut>,
    {
        self.arm_timeout(r, after, || E::from(TimedOut))
    }

    /// Like [`timeout`](Self::timeout), failing it with `error` (for an error type with no
    /// `From<TimedOut>`).
    pub fn timeout_with(&self, r: &mut Reactor, after: Duration, error: E) -> &Self {
        self.arm_timeout(r, after, move || error)
    }

    fn arm_timeout(
        &self,
        r: &mut Reactor,
        after: Duration,
        error: impl FnOnce() -> E + 'static,
    ) -> &Self {
        let generation = {
            let mut state = self.state.borrow_mut();
            if !matches!(state.resolution, Resolution::Pending) {
                return self;
            }
            state.timeouts_armed += 1;
            state.timeouts_armed
        };
        // Strong, as in EventMachine: a deferrable no one else holds any more (whatever
        // would have resolved it went away) is exactly what the timeout is for.
        let state = Rc::clone(&self.state);
        let timer = r.add_timer(after, move |_| {
            let current = {
                let mut s = state.borrow_mut();
                match &s.timeout {
                    Some(t) if t.generation == generation => s.timeout.take().is_some(),
                    _ => false,
                }
            };
            if current {
                Deferrable { state }.fail(error());
            }
        });
        let replaced = self.state.borrow_mut().timeout.replace(Timeout {
            generation,
            timer,
            ticks: r.local_handle(),
        });
        if let Some(old) = replaced {
            r.cancel_timer(old.timer);
        }
        self
    }
}

/// Cancels a timeout's timer at the end of the tick (resolution has no reactor at hand).
fn cancel(timeout: Option<Timeout>) {
    if let Some(t) = timeout {
        let timer = t.timer;
        t.ticks.next_tick(move |r| {
            r.cancel_timer(timer);
        });
    }
}

/// Runs every callback with `value`, even if one panics; then re-raises the first panic.
fn run_all<V>(callbacks: Vec<Callback<V>>, value: &V) {
    let mut first_panic = None;
    for f in callbacks {
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(value))) {
            first_panic.get_or_insert(payload);
        }
    }
    if let Some(payload) = first_panic {
        panic::resume_unwind(payload);
    }
}

impl<T, E> Clone for Deferrable<T, E> {
    /// Another handle on the same deferrable.
    fn clone(&self) -> Self {
        Deferrable {
            state: Rc::clone(&self.state),
        }
    }
}

impl<T, E> Default for Deferrable<T, E> {
    fn default() -> Self {
        Deferrable::new()
    }
}

impl<T, E> fmt::Debug for Deferrable<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("Deferrable")
            .field("status", &self.status())
            .field("callbacks", &state.callbacks.len())
            .field("errbacks", &state.errbacks.len())
            .field("timeout", &state.timeout.as_ref().map(|t| t.timer))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::*;

    fn log() -> Rc<RefCell<Vec<String>>> {
        Rc::new(RefCell::new(Vec::new()))
    }

    #[test]
    fn callbacks_run_in_order_once_and_errbacks_are_dropped() {
        let d: Deferrable<u32, String> = Deferrable::new();
        let seen = log();
        for name in ["a", "b", "c"] {
            let seen = Rc::clone(&seen);
            d.callback(move |v| seen.borrow_mut().push(format!("{name}{v}")));
        }
        let seen2 = Rc::clone(&seen);
        d.errback(move |e| seen2.borrow_mut().push(format!("err {e}")));
        assert!(d.succeed(7));
        assert!(!d.succeed(8));
        assert!(!d.fail("late".into()));
        assert_eq!(*seen.borrow(), ["a7", "b7", "c7"]);
        assert_eq!(d.status(), DeferredStatus::Succeeded);
    }

    #[test]
    fn a_callback_added_after_resolution_runs_at_once_and_an_errback_never() {
        let d: Deferrable<&str, ()> = Deferrable::new();
        d.succeed("done");
        let ran = Rc::new(Cell::new(0));
        let r2 = Rc::clone(&ran);
        d.callback(move |v| {
            assert_eq!(*v, "done");
            r2.set(r2.get() + 1);
        });
        assert_eq!(ran.get(), 1);
        d.errback(|_| panic!("an errback of a success must not run"));
    }

    #[test]
    fn failing_runs_errbacks_and_late_errbacks_at_once() {
        let d: Deferrable<(), String> = Deferrable::default();
        let seen = log();
        let s = Rc::clone(&seen);
        d.callback(|_| panic!("a callback of a failure must not run"));
        d.errback(move |e| s.borrow_mut().push(e.clone()));
        assert!(d.fail("boom".into()));
        let s = Rc::clone(&seen);
        d.errback(move |e| s.borrow_mut().push(format!("late {e}")));
        assert_eq!(*seen.borrow(), ["boom", "late boom"]);
        assert_eq!(d.status(), DeferredStatus::Failed);
    }

    #[test]
    fn a_callback_may_use_its_own_deferrable() {
        let d: Deferrable<u32, ()> = Deferrable::new();
        let seen = log();
        let (inner, s) = (d.clone(), Rc::clone(&seen));
        d.callback(move |v| {
            // Resolving again, adding a callback and reading the status all borrow the
            // state: none of them may find it borrowed.
            assert!(!inner.succeed(v + 1));
            assert!(!inner.fail(()));
            assert_eq!(inner.status(), DeferredStatus::Succeeded);
            let s2 = Rc::clone(&s);
            inner.callback(move |v| s2.borrow_mut().push(format!("nested {v}")));
            s.borrow_mut().push(format!("{inner:?}"));
        });
        d.succeed(1);
        assert_eq!(seen.borrow().len(), 2);
        assert_eq!(seen.borrow()[0], "nested 1");
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_others_and_its_panic_continues() {
        let d: Deferrable<u32, ()> = Deferrable::new();
        let ran = Rc::new(Cell::new(0));
        let r1 = Rc::clone(&ran);
        d.callback(move |_| r1.set(r1.get() + 1));
        d.callback(|_| panic!("callback two"));
        let r3 = Rc::clone(&ran);
        d.callback(move |_| r3.set(r3.get() + 1));
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| d.succeed(5)));
        let payload = outcome.expect_err("the panic continues out of succeed");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"callback two"));
        assert_eq!(ran.get(), 2);
        assert_eq!(d.status(), DeferredStatus::Succeeded);
        // Still usable: the cell was not left borrowed.
        let r4 = Rc::clone(&ran);
        d.callback(move |_| r4.set(r4.get() + 1));
        assert_eq!(ran.get(), 3);
    }

    #[test]
    fn values_are_shared_by_reference_not_cloned() {
        struct NotClone(u32);
        let d: Deferrable<NotClone, ()> = Deferrable::new();
        let sum = Rc::new(Cell::new(0));
        for _ in 0..3 {
            let sum = Rc::clone(&sum);
            d.callback(move |v| sum.set(sum.get() + v.0));
        }
        d.succeed(NotClone(2));
        assert_eq!(sum.get(), 6);
    }

    #[test]
    fn timed_out_converts_into_io_errors() {
        let e: io::Error = TimedOut.into();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
