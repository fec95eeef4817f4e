//! [`Channel`]: publish/subscribe on the reactor thread (EventMachine's `EM::Channel`).
//!
//! This module owns the subscribers and the items not yet delivered, and delivers them at
//! the end of the tick. It never holds its cell borrowed while a subscriber runs or a
//! subscriber or item is dropped, so a subscriber may subscribe, unsubscribe (itself or
//! another) and push from inside a delivery.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use crate::{LocalHandle, Reactor};

type Subscriber<T> = Box<dyn FnMut(&mut Reactor, &T)>;

/// Names one subscription of one [`Channel`], for [`Channel::unsubscribe`]. Ids are never
/// reused, so unsubscribing a stale id does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(u64);

/// A broadcast channel: every item [`push`](Self::push)ed reaches every subscriber.
///
/// The rules:
/// - **Delivery is at the end of the tick**, from the reactor's next-tick queue, with the
///   reactor at hand (`FnMut(&mut Reactor, &T)`): never inside `push`, so a subscriber
///   never runs nested inside another callback, and `push` needs no reactor. (EventMachine
///   delivers at once when pushed on the reactor thread and next tick otherwise; ember
///   always delivers next tick.) Items are delivered in the order pushed, each to the
///   subscribers in the order they subscribed. Items pushed during a delivery are
///   delivered next tick, so a subscriber that pushes cannot keep one tick going forever.
/// - **A subscriber gets exactly the items pushed while it is subscribed**: every item
///   pushed after `subscribe` returned, once, and none pushed before it subscribed (even
///   if not yet delivered).
/// - **Unsubscribing takes effect at once**, also during a delivery, of the running
///   subscriber itself or of another: an unsubscribed subscriber is never called again,
///   not even for items already pushed. Its closure is dropped when `unsubscribe` returns,
///   or after its current call if it unsubscribed itself.
/// - **Panics are contained per subscriber**: a subscriber that panics is unsubscribed and
///   the reactor's error handler is told (as for a timer that panics); the item still
///   reaches everyone else.
///
/// Items reach subscribers by reference, so one item reaches a thousand subscribers
/// without `T: Clone` or a thousand copies; a subscriber that keeps it clones it.
///
/// Cloning shares the channel. A subscriber that holds a clone of its own channel makes
/// an `Rc` cycle that lives until it is unsubscribed; unsubscribe it when its owner goes
/// (in `unbind`, as `examples/chat.rs` does).
///
/// ```
/// use ember::Reactor;
/// use ember::em::Channel;
///
/// Reactor::run(|r| {
///     let news: Channel<String> = Channel::new(r.local_handle());
///     news.subscribe(|r, item| {
///         assert_eq!(item, "hello");
///         r.stop();
///     });
///     news.push("hello".to_string());
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct Channel<T> {
    state: Rc<RefCell<State<T>>>,
}

struct Slot<T> {
    /// The sequence number of the first item this subscriber is owed.
    since: u64,
    /// `None` while it runs (taken out so the cell is free during the call).
    subscriber: Option<Subscriber<T>>,
}

struct State<T> {
    ticks: LocalHandle,
    /// Keyed by id, so iteration is in subscription order and lookups are cheap while
    /// the map changes under a delivery.
    subscribers: BTreeMap<u64, Slot<T>>,
    /// Pushed and not yet delivered, with their sequence numbers.
    pending: VecDeque<(u64, T)>,
    /// A delivery is in the next-tick queue.
    scheduled: bool,
    next_id: u64,
    next_seq: u64,
}

impl<T: 'static> Channel<T> {
    /// An empty channel delivering through `ticks` (from [`Reactor::local_handle`]).
    pub fn new(ticks: LocalHandle) -> Channel<T> {
        Channel {
            state: Rc::new(RefCell::new(State {
                ticks,
                subscribers: BTreeMap::new(),
                pending: VecDeque::new(),
                scheduled: false,
                next_id: 0,
                next_seq: 0,
            })),
        }
    }

    /// Adds a subscriber for every item pushed from now on, until it is unsubscribed.
    pub fn subscribe(&self, f: impl FnMut(&mut Reactor, &T) + 'static) -> SubscriptionId {
        let mut state = self.state.borrow_mut();
        let id = state.next_id;
        state.next_id += 1;
        let since = state.next_seq;
        state.subscribers.insert(
            id,
            Slot {
                since,
                subscriber: Some(Box::new(f)),
            },
        );
        SubscriptionId(id)
    }

    /// Removes a subscriber: it is never called again. Returns whether it was subscribed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let removed = self.state.borrow_mut().subscribers.remove(&id.0);
        // Dropped here, after the borrow: the closure's captures may use the channel.
        removed.is_some()
    }

    /// Queues `item` for every current subscriber; it is delivered at the end of the tick.
    pub fn push(&self, item: T) {
        let schedule = {
            let mut state = self.state.borrow_mut();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.pending.push_back((seq, item));
            !std::mem::replace(&mut state.scheduled, true)
        };
        if schedule {
            let ticks = self.state.borrow().ticks.clone();
            let channel = self.clone();
            ticks.next_tick(move |r| channel.deliver(r));
        }
    }

    /// The number of subscribers (EventMachine's `num_subscribers`).
    pub fn subscriber_count(&self) -> usize {
        self.state.borrow().subscribers.len()
    }

    /// Items pushed and not yet delivered.
    pub fn pending(&self) -> usize {
        self.state.borrow().pending.len()
    }

    /// Delivers everything pushed before this delivery began.
    fn deliver(&self, r: &mut Reactor) {
        let items = {
            let mut state = self.state.borrow_mut();
            state.scheduled = false;
            std::mem::take(&mut state.pending)
        };
        for (seq, item) in items {
            self.deliver_one(r, seq, &item);
        }
    }

    fn deliver_one(&self, r: &mut Reactor, seq: u64, item: &T) {
        // Walks the map by key rather than holding an iterator, so the map may change
        // between calls; the cursor only moves forward, so no one is called twice.
        let mut cursor = 0;
        loop {
            let next = {
                let mut state = self.state.borrow_mut();
                let next = state
                    .subscribers
                    .range_mut(cursor..)
                    .find(|(_, slot)| slot.since <= seq && slot.subscriber.is_some());
                next.map(|(&id, slot)| (id, slot.subscriber.take()))
            };
            let Some((id, Some(mut subscriber))) = next else {
                return;
            };
            cursor = id + 1;
            let ok = r.contain(None, |r| subscriber(r, item)).is_some();
            let unwanted = {
                let mut state = self.state.borrow_mut();
                match state.subscribers.get_mut(&id) {
                    Some(slot) if ok => {
                        slot.subscriber = Some(subscriber);
                        None
                    }
                    Some(_) => {
                        state.subscribers.remove(&id);
                        Some(subscriber)
                    }
                    // It unsubscribed (itself, or was by another) during the call.
                    None => Some(subscriber),
                }
            };
            drop(unwanted);
        }
    }
}

impl<T> Clone for Channel<T> {
    /// Another handle on the same channel.
    fn clone(&self) -> Self {
        Channel {
            state: Rc::clone(&self.state),
        }
    }
}

impl<T> fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("Channel")
            .field("subscribers", &state.subscribers.len())
            .field("pending", &state.pending.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::*;
    use crate::em::run_reactor;

    /// Uses the channel when dropped, as a subscriber's captures might.
    struct UsesChannelOnDrop(Channel<u32>, Rc<Cell<usize>>);

    impl Drop for UsesChannelOnDrop {
        fn drop(&mut self) {
            self.1.set(self.0.subscriber_count());
            self.0.push(99);
        }
    }

    #[test]
    fn a_subscriber_may_use_the_channel_while_its_closure_is_dropped() {
        let seen_by_drop = Rc::new(Cell::new(usize::MAX));
        let received = Rc::new(RefCell::new(Vec::new()));
        run_reactor(|r| {
            let channel: Channel<u32> = Channel::new(r.local_handle());
            let rec = Rc::clone(&received);
            channel.subscribe(move |_, &item| rec.borrow_mut().push(item));
            let guard = UsesChannelOnDrop(channel.clone(), Rc::clone(&seen_by_drop));
            let (me, ch) = (Rc::new(Cell::new(None)), channel.clone());
            let me2 = Rc::clone(&me);
            let id = channel.subscribe(move |_, _| {
                let _keep = &guard;
                // Unsubscribing itself: its closure (and the guard) is dropped after
                // this call returns, outside the channel's borrow.
                assert!(ch.unsubscribe(me2.get().expect("set before any push")));
            });
            me.set(Some(id));
            channel.push(1);
            r.add_timer(std::time::Duration::from_millis(5), |r| r.stop());
        });
        assert_eq!(
            seen_by_drop.get(),
            1,
            "the guard saw the channel after removal"
        );
        assert_eq!(
            *received.borrow(),
            [1, 99],
            "its push from the drop was delivered"
        );
    }

    #[test]
    fn an_item_pushed_before_a_subscription_does_not_reach_it() {
        let received = Rc::new(RefCell::new(Vec::new()));
        run_reactor(|r| {
            let channel: Channel<&str> = Channel::new(r.local_handle());
            channel.push("before");
            let rec = Rc::clone(&received);
            channel.subscribe(move |r, &item| {
                rec.borrow_mut().push(item);
                r.stop();
            });
            channel.push("after");
            assert!(!channel.unsubscribe(SubscriptionId(12345)));
        });
        assert_eq!(*received.borrow(), ["after"]);
    }
}
