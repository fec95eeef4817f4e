//! [`Queue`]: items matched with callbacks waiting for them (EventMachine's `EM::Queue`).
//!
//! This module owns the items, the waiting pops and the matches not yet handed over, and
//! hands them over at the end of the tick. It never holds its cell borrowed while a
//! callback runs or a callback or item is dropped.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use crate::{LocalHandle, Reactor};

type Popper<T> = Box<dyn FnOnce(&mut Reactor, T)>;

/// A FIFO of items and a FIFO of callbacks waiting for one ([`pop`](Self::pop)).
///
/// The rules:
/// - An item and a pop are matched as soon as both exist, first item with first pop: a
///   [`push`](Self::push) with pops waiting goes to the oldest of them, a `pop` with items
///   queued takes the oldest. So [`len`](Self::len) and [`waiting`](Self::waiting) are
///   never both non-zero.
/// - The callback runs at the end of the tick (from the next-tick queue, with the reactor
///   at hand), never inside `push` or `pop`, in the order matches were made. The item is
///   moved into it: each item reaches exactly one callback, so no `Clone` is needed.
/// - A callback that panics is reported to the reactor's error handler (as a timer's
///   would be) and its item is dropped; the other callbacks still run.
///
/// Cloning shares the queue. Unlike EventMachine's, nothing bounds it: a producer that
/// can outrun its consumers should watch `len`.
///
/// ```
/// use ember::Reactor;
/// use ember::em::Queue;
///
/// Reactor::run(|r| {
///     let jobs: Queue<u32> = Queue::new(r.local_handle());
///     jobs.pop(|r, job| {
///         assert_eq!(job, 1);
///         r.stop();
///     });
///     jobs.push(1);
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct Queue<T> {
    state: Rc<RefCell<State<T>>>,
}

struct State<T> {
    ticks: LocalHandle,
    items: VecDeque<T>,
    poppers: VecDeque<Popper<T>>,
    /// Matched pairs whose callbacks run at the end of the tick.
    matched: VecDeque<(Popper<T>, T)>,
    /// A hand-over is in the next-tick queue.
    scheduled: bool,
}

impl<T: 'static> Queue<T> {
    /// An empty queue handing items over through `ticks` (from
    /// [`Reactor::local_handle`]).
    pub fn new(ticks: LocalHandle) -> Queue<T> {
        Queue {
            state: Rc::new(RefCell::new(State {
                ticks,
                items: VecDeque::new(),
                poppers: VecDeque::new(),
                matched: VecDeque::new(),
                scheduled: false,
            })),
        }
    }

    /// Adds an item: the oldest waiting pop gets it at the end of the tick, or it waits
    /// for one.
    pub fn push(&self, item: T) {
        let schedule = {
            let mut state = self.state.borrow_mut();
            match state.poppers.pop_front() {
                Some(popper) => {
                    state.matched.push_back((popper, item));
                    !std::mem::replace(&mut state.scheduled, true)
                }
                None => {
                    state.items.push_back(item);
                    false
                }
            }
        };
        if schedule {
            self.schedule();
        }
    }

    /// Runs `f` with the next item: at the end of the tick if one is queued, otherwise
    /// at the end of the tick in which one is pushed (after the pops that were waiting
    /// before it).
    pub fn pop(&self, f: impl FnOnce(&mut Reactor, T) + 'static) {
        let schedule = {
            let mut state = self.state.borrow_mut();
            match state.items.pop_front() {
                Some(item) => {
                    state.matched.push_back((Box::new(f), item));
                    !std::mem::replace(&mut state.scheduled, true)
                }
                None => {
                    state.poppers.push_back(Box::new(f));
                    false
                }
            }
        };
        if schedule {
            self.schedule();
        }
    }

    /// Items queued that no pop has taken yet (EventMachine's `size`).
    pub fn len(&self) -> usize {
        self.state.borrow().items.len()
    }

    /// Whether no item is queued (EventMachine's `empty?`).
    pub fn is_empty(&self) -> bool {
        self.state.borrow().items.is_empty()
    }

    /// Pops waiting for an item (EventMachine's `num_waiting`).
    pub fn waiting(&self) -> usize {
        self.state.borrow().poppers.len()
    }

    fn schedule(&self) {
        let ticks = self.state.borrow().ticks.clone();
        let queue = self.clone();
        ticks.next_tick(move |r| queue.hand_over(r));
    }

    /// Runs the callbacks of every match made before this hand-over began; matches made
    /// while they run are handed over next tick.
    fn hand_over(&self, r: &mut Reactor) {
        let matched = {
            let mut state = self.state.borrow_mut();
            state.scheduled = false;
            std::mem::take(&mut state.matched)
        };
        for (popper, item) in matched {
            r.contain(None, move |r| popper(r, item));
        }
    }
}

impl<T> Clone for Queue<T> {
    /// Another handle on the same queue.
    fn clone(&self) -> Self {
        Queue {
            state: Rc::clone(&self.state),
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("Queue")
            .field("len", &state.items.len())
            .field("waiting", &state.poppers.len())
            .field("matched", &state.matched.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::em::run_reactor;

    #[test]
    fn matches_made_during_a_hand_over_wait_for_the_next_tick() {
        // (tick the callback ran in, item); a next-tick closure re-adding itself counts.
        let log = Rc::new(RefCell::new(Vec::new()));
        run_reactor(|r| {
            let tick = Rc::new(std::cell::Cell::new(0));
            fn count(r: &mut Reactor, tick: Rc<std::cell::Cell<u32>>) {
                tick.set(tick.get() + 1);
                r.next_tick(move |r| count(r, tick));
            }
            let q: Queue<u32> = Queue::new(r.local_handle());
            let (q2, l, t) = (q.clone(), Rc::clone(&log), Rc::clone(&tick));
            q.pop(move |_, item| {
                l.borrow_mut().push((t.get(), item));
                q2.push(2);
                let (l, t) = (Rc::clone(&l), Rc::clone(&t));
                q2.pop(move |r, item| {
                    l.borrow_mut().push((t.get(), item));
                    r.stop();
                });
            });
            q.push(1);
            count(r, tick);
        });
        let log = log.borrow();
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].1, log[1].1), (1, 2));
        assert_eq!(log[1].0, log[0].0 + 1, "one tick later: {log:?}");
    }
}
