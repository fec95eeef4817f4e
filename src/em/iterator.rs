//! [`EachLimited`]: an asynchronous step over every item of a list, at most N at a time
//! (EventMachine's `EM::Iterator` with `concurrency`, and its `each`).
//!
//! This module owns the items not yet started, the count of steps in flight and the
//! completion callback, and starts steps from the next-tick queue. It never holds its
//! cell borrowed while user code runs (the step, the completion, the item iterator's
//! `next`) or a user value is dropped.
//!
//! Named `EachLimited`, not `Iterator` as in EventMachine, so that it never shadows
//! `std::iter::Iterator` in a `use ember::em::*`, and because it is not one: nothing pulls
//! items from it; it pushes them to a step.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use crate::{LocalHandle, Reactor};

type Done = Box<dyn FnOnce(&mut Reactor)>;
/// Starts the next item's step and returns true, or returns false once the items run out.
type StartNext = Box<dyn FnMut(&mut Reactor, Next) -> bool>;

/// Runs `step` on every item, with at most `concurrency` steps in flight, then `done`
/// once.
///
/// Each step is handed a [`Next`]; the step is finished when that `Next` is consumed
/// ([`Next::next`]) or dropped, at once or from a later callback (a reply on a
/// connection, a timer). The next item's step then starts at the end of the tick, as in
/// EventMachine. Treating a dropped `Next` as finished means a step that panics, or whose
/// callback is dropped unrun (its connection closed), frees its place instead of
/// stalling the iteration forever.
///
/// `done` runs once, at the end of the tick in which the last step finished (at the end
/// of the first tick for an empty list). Steps start in item order from the end of the
/// tick `start` is called in, at most `concurrency` of them per tick, so a list whose
/// steps finish at once still lets the reactor serve everyone else between batches. A step that panics is reported to the reactor's error
/// handler (as a timer's would be); its `Next` is dropped, so the iteration goes on. An
/// item iterator whose `next` panics is reported the same way and ends the iteration
/// there (`done` still runs once the steps in flight finish).
///
/// ```
/// use ember::Reactor;
/// use ember::em::EachLimited;
///
/// Reactor::run(|r| {
///     EachLimited::start(
///         r,
///         1..=10,
///         3,
///         |r, n, next| {
///             // An asynchronous step: finished when the timer fires.
///             r.add_timer(std::time::Duration::from_millis(n), move |_| next.next());
///         },
///         |r| r.stop(),
///     );
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct EachLimited {
    state: Rc<RefCell<State>>,
}

/// What [`EachLimited`] tracks, the items type-erased into a closure that starts the next
/// step (so `EachLimited` and [`Next`] carry no type parameter).
struct State {
    ticks: LocalHandle,
    /// `None` while it runs, and once the items ran out.
    start_next: Option<StartNext>,
    exhausted: bool,
    in_flight: usize,
    concurrency: usize,
    /// `None` once it has run (or while it runs).
    done: Option<Done>,
    /// A pump is in the next-tick queue.
    scheduled: bool,
}

/// Tells an [`EachLimited`] that one step is finished: consume it with
/// [`next`](Self::next), or drop it.
pub struct Next {
    state: Rc<RefCell<State>>,
}

impl Next {
    /// This step is finished; the next item's step may start (EventMachine's
    /// `iter.next`). The same as dropping it, said out loud.
    pub fn next(self) {}
}

impl Drop for Next {
    fn drop(&mut self) {
        let schedule = {
            let mut state = self.state.borrow_mut();
            state.in_flight -= 1;
            !std::mem::replace(&mut state.scheduled, true)
        };
        if schedule {
            schedule_pump(&self.state);
        }
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").finish_non_exhaustive()
    }
}

impl EachLimited {
    /// Starts the iteration: `step` runs on each of `items`, at most `concurrency` at a
    /// time, and `done` once after the last step finished.
    ///
    /// # Panics
    /// If `concurrency` is zero (nothing could ever run).
    pub fn start<I: 'static>(
        r: &mut Reactor,
        items: impl IntoIterator<Item = I> + 'static,
        concurrency: usize,
        mut step: impl FnMut(&mut Reactor, I, Next) + 'static,
        done: impl FnOnce(&mut Reactor) + 'static,
    ) -> EachLimited {
        assert!(
            concurrency > 0,
            "EachLimited needs a concurrency of at least 1"
        );
        let mut items = items.into_iter();
        let start_next = move |r: &mut Reactor, next: Next| match items.next() {
            Some(item) => {
                // Contained here, not around `start_next`, so a panicking step leaves the
                // item iterator in place for the next one.
                r.contain(None, |r| step(r, item, next));
                true
            }
            None => {
                // Dropping `next` gives back the place reserved for this step.
                drop(next);
                false
            }
        };
        let state = Rc::new(RefCell::new(State {
            ticks: r.local_handle(),
            start_next: Some(Box::new(start_next)),
            exhausted: false,
            in_flight: 0,
            concurrency,
            done: Some(Box::new(done)),
            scheduled: true,
        }));
        schedule_pump(&state);
        EachLimited { state }
    }

    /// Steps started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.state.borrow().in_flight
    }

    /// The most steps in flight at once.
    pub fn concurrency(&self) -> usize {
        self.state.borrow().concurrency
    }

    /// Changes the concurrency (EventMachine's `concurrency=`); raising it starts more
    /// steps at the end of the tick, lowering it lets the steps in flight finish.
    ///
    /// # Panics
    /// If `concurrency` is zero.
    pub fn set_concurrency(&self, concurrency: usize) {
        assert!(
            concurrency > 0,
            "EachLimited needs a concurrency of at least 1"
        );
        let schedule = {
            let mut state = self.state.borrow_mut();
            state.concurrency = concurrency;
            !state.exhausted && !std::mem::replace(&mut state.scheduled, true)
        };
        if schedule {
            schedule_pump(&self.state);
        }
    }

    /// Whether every item was started and every step finished (`done` has run or is
    /// about to, at the end of this tick).
    pub fn is_finished(&self) -> bool {
        let state = self.state.borrow();
        state.exhausted && state.in_flight == 0
    }
}

fn schedule_pump(state: &Rc<RefCell<State>>) {
    let ticks = state.borrow().ticks.clone();
    let state = Rc::clone(state);
    ticks.next_tick(move |r| pump(&state, r));
}

/// Starts steps until `concurrency` are in flight or the items run out; runs `done` if
/// everything is finished.
fn pump(state: &Rc<RefCell<State>>, r: &mut Reactor) {
    // At most `concurrency` starts per tick, so steps that finish at once cannot run a
    // long list in one tick. A step that finished in the meantime has scheduled the next
    // pump (its `Next` found `scheduled` false).
    let mut budget = {
        let mut s = state.borrow_mut();
        s.scheduled = false;
        s.concurrency
    };
    while budget > 0 {
        budget -= 1;
        let start_next = {
            let mut s = state.borrow_mut();
            if s.exhausted || s.in_flight >= s.concurrency {
                break;
            }
            let Some(start_next) = s.start_next.take() else {
                break;
            };
            // Reserved before the step runs, so a step that finishes at once (dropping
            // its `Next` inside the call) cannot let the count go below zero.
            s.in_flight += 1;
            start_next
        };
        let mut start_next = start_next;
        let next = Next {
            state: Rc::clone(state),
        };
        // `None`: the item iterator itself panicked (reported like a step's panic); it
        // may be broken, so the iteration ends there, as when the items run out.
        let started = r.contain(None, |r| start_next(r, next)) == Some(true);
        let spent = {
            let mut s = state.borrow_mut();
            if started {
                s.start_next = Some(start_next);
                None
            } else {
                s.exhausted = true;
                Some(start_next)
            }
        };
        // The step closure and what it captured go once the items run out.
        drop(spent);
    }
    let done = {
        let mut s = state.borrow_mut();
        if s.exhausted && s.in_flight == 0 {
            s.done.take()
        } else {
            None
        }
    };
    if let Some(done) = done {
        r.contain(None, done);
    }
}

impl fmt::Debug for EachLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("EachLimited")
            .field("in_flight", &state.in_flight)
            .field("concurrency", &state.concurrency)
            .field("exhausted", &state.exhausted)
            .field("done", &state.done.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::*;
    use crate::em::run_reactor;

    #[test]
    #[should_panic(expected = "concurrency of at least 1")]
    fn a_concurrency_of_zero_is_refused() {
        let mut r = Reactor::new().unwrap();
        EachLimited::start(&mut r, [1], 0, |_, _, _| {}, |_| {});
    }

    #[test]
    fn steps_kept_waiting_are_counted_once_each_when_their_next_goes() {
        let kept: Rc<RefCell<Vec<Next>>> = Rc::new(RefCell::new(Vec::new()));
        let done = Rc::new(Cell::new(0));
        run_reactor(|r| {
            let k = Rc::clone(&kept);
            let d = Rc::clone(&done);
            let each = EachLimited::start(
                r,
                0..6,
                3,
                move |_, _, next| k.borrow_mut().push(next),
                move |r| {
                    d.set(d.get() + 1);
                    r.stop();
                },
            );
            let k = Rc::clone(&kept);
            r.add_periodic_timer(std::time::Duration::from_millis(1), move |_| {
                assert!(each.in_flight() <= 3, "{each:?}");
                // Finish them all, from outside any step.
                let finished: Vec<Next> = k.borrow_mut().drain(..).collect();
                assert!(finished.len() <= 3);
                finished.into_iter().for_each(Next::next);
            });
        });
        assert_eq!(done.get(), 1);
    }

    #[test]
    fn steps_that_finish_at_once_start_at_most_concurrency_per_tick() {
        let per_tick: Rc<RefCell<Vec<u32>>> = Rc::new(RefCell::new(vec![0]));
        run_reactor(|r| {
            fn new_tick(r: &mut Reactor, per_tick: Rc<RefCell<Vec<u32>>>) {
                per_tick.borrow_mut().push(0);
                r.next_tick(move |r| new_tick(r, per_tick));
            }
            let p = Rc::clone(&per_tick);
            EachLimited::start(
                r,
                0..100,
                2,
                move |_, _, next| {
                    *p.borrow_mut().last_mut().unwrap() += 1;
                    next.next();
                },
                |r| r.stop(),
            );
            new_tick(r, Rc::clone(&per_tick));
        });
        let per_tick = per_tick.borrow();
        assert_eq!(per_tick.iter().sum::<u32>(), 100);
        assert!(per_tick.iter().all(|&n| n <= 2), "{per_tick:?}");
    }
}
