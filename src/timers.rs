//! The timer queue: a binary heap of deadlines over a slab of timer slots.
//!
//! Insert is O(log n). Cancel is O(1): it frees the slot at once and leaves a stale heap
//! entry behind, which is skipped when it reaches the top (its serial no longer matches)
//! and swept out in bulk if stale entries ever outnumber live ones. A periodic timer keeps
//! its slot (and so its id) while its callback runs, so it can cancel itself.
//!
//! This module owns only the bookkeeping; what a task does when it fires is the reactor's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::id::TimerId;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: Instant,
    /// Insertion order, so timers due at the same instant fire in the order they were added.
    seq: u64,
    slot: usize,
    serial: u64,
}

struct Slot<T> {
    serial: u64,
    at: Instant,
    /// `None` while a periodic task is running.
    task: Option<T>,
    period: Option<Duration>,
}

/// A fired timer handed to the reactor.
pub(crate) struct Fired<T> {
    pub(crate) id: TimerId,
    pub(crate) task: T,
    /// The deadline it was due at (periodic timers reschedule from here, not from now).
    pub(crate) due: Instant,
    pub(crate) period: Option<Duration>,
}

/// `from + delay`, saturating far in the future instead of overflowing: a timeout of
/// `Duration::MAX` means "never", not a panic.
pub(crate) fn deadline(from: Instant, delay: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    from.checked_add(delay.min(CENTURY)).unwrap_or(from)
}

pub(crate) struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<Deadline>>,
    slots: Slab<Slot<T>>,
    next_serial: u64,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            slots: Slab::new(),
            next_serial: 1,
            next_seq: 0,
        }
    }
}

impl<T> TimerQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn insert(&mut self, at: Instant, period: Option<Duration>, task: T) -> TimerId {
        let serial = self.next_serial;
        self.next_serial += 1;
        let slot = self.slots.insert(Slot {
            serial,
            at,
            task: Some(task),
            period,
        });
        self.push_deadline(at, slot, serial);
        TimerId { slot, serial }
    }

    /// Removes a timer. Returns whether it was still pending (or running, for a periodic one).
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        match self.slots.get(id.slot) {
            Some(slot) if slot.serial == id.serial => {
                self.slots.remove(id.slot);
                if self.heap.len() > 64 && self.heap.len() > 2 * self.slots.len() {
                    let slots = &self.slots;
                    self.heap.retain(|Reverse(d)| is_live(slots, d));
                }
                true
            }
            _ => false,
        }
    }

    /// The earliest live deadline, dropping stale heap entries on the way.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(top)) = self.heap.peek() {
            if is_live(&self.slots, top) {
                return Some(top.at);
            }
            self.heap.pop();
        }
        None
    }

    /// Pops one timer due at or before `now`. A one-shot timer leaves the queue; a periodic
    /// one keeps its slot until `rearm` or `cancel`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Fired<T>> {
        loop {
            let Reverse(top) = self.heap.peek()?;
            if !is_live(&self.slots, top) {
                self.heap.pop();
                continue;
            }
            if top.at > now {
                return None;
            }
            let Reverse(top) = self.heap.pop()?;
            let id = TimerId {
                slot: top.slot,
                serial: top.serial,
            };
            let slot = &mut self.slots[top.slot];
            let period = slot.period;
            let task = if period.is_some() {
                slot.task.take()
            } else {
                self.slots.remove(top.slot).task
            };
            // A live deadline always has its task: a running periodic timer has no deadline.
            let task = task.expect("live timer without a task");
            return Some(Fired {
                id,
                task,
                due: top.at,
                period,
            });
        }
    }

    /// Puts a periodic timer's task back after it ran, due one period after its last
    /// deadline (so it does not drift); if it fell more than a period behind, it skips to
    /// the next multiple after `now` rather than firing in a burst. A timer cancelled while
    /// it ran stays cancelled.
    pub(crate) fn rearm(&mut self, fired: Fired<T>, now: Instant) {
        let Some(period) = fired.period else { return };
        let Some(slot) = self.slots.get_mut(fired.id.slot) else {
            return;
        };
        if slot.serial != fired.id.serial {
            return;
        }
        let mut at = deadline(fired.due, period);
        if at <= now && !period.is_zero() {
            let behind = now.duration_since(at).as_nanos() / period.as_nanos() + 1;
            let skip = period.saturating_mul(u32::try_from(behind).unwrap_or(u32::MAX));
            at = deadline(at, skip);
        }
        slot.at = at;
        slot.task = Some(fired.task);
        self.push_deadline(at, fired.id.slot, fired.id.serial);
    }

    fn push_deadline(&mut self, at: Instant, slot: usize, serial: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Deadline {
            at,
            seq,
            slot,
            serial,
        }));
    }
}

fn is_live<T>(slots: &Slab<Slot<T>>, d: &Deadline) -> bool {
    matches!(slots.get(d.slot), Some(s) if s.serial == d.serial && s.at == d.at && s.task.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_then_insertion_order() {
        let mut q = TimerQueue::default();
        let t0 = Instant::now();
        q.insert(t0 + Duration::from_millis(30), None, "c");
        q.insert(t0 + Duration::from_millis(10), None, "a");
        q.insert(t0 + Duration::from_millis(10), None, "b");
        let later = t0 + Duration::from_secs(1);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_due(later).map(|f| f.task)).collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn cancel_frees_the_slot_and_skips_the_stale_deadline() {
        let mut q = TimerQueue::default();
        let t0 = Instant::now();
        let id = q.insert(t0, None, 1);
        assert!(q.cancel(id));
        assert_eq!(q.len(), 0);
        assert!(!q.cancel(id));
        let reused = q.insert(t0 + Duration::from_millis(5), None, 2);
        assert_eq!(reused.slot, id.slot);
        assert_ne!(reused, id);
        assert!(
            !q.cancel(id),
            "a stale id must not cancel the slot's new timer"
        );
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(5)));
    }

    #[test]
    fn periodic_rearms_from_its_deadline_not_from_now() {
        let mut q = TimerQueue::default();
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        q.insert(t0 + period, Some(period), ());
        let fired = q.pop_due(t0 + Duration::from_millis(130)).unwrap();
        q.rearm(fired, t0 + Duration::from_millis(130));
        assert_eq!(q.next_deadline(), Some(t0 + 2 * period));
        let fired = q.pop_due(t0 + Duration::from_millis(450)).unwrap();
        q.rearm(fired, t0 + Duration::from_millis(450));
        assert_eq!(q.next_deadline(), Some(t0 + 5 * period));
    }

    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let t0 = Instant::now();
        let far = deadline(t0, Duration::MAX);
        assert!(far > t0 + Duration::from_secs(50 * 365 * 24 * 3600));
        let mut q = TimerQueue::default();
        q.insert(far, Some(Duration::MAX), ());
        assert!(q.pop_due(t0).is_none());
    }

    #[test]
    fn cancelled_stale_entries_are_swept() {
        let mut q = TimerQueue::default();
        let t0 = Instant::now();
        let ids: Vec<_> = (0..10_000)
            .map(|i| q.insert(t0 + Duration::from_millis(i), None, i))
            .collect();
        for id in &ids[..9_990] {
            q.cancel(*id);
        }
        assert!(q.heap.len() <= 2 * q.len() + 64);
    }
}
