//! [`MemoryBudget`]: the bytes one worker's waiting comparisons may hold, and the
//! [`Reservation`]s taken from it.
//!
//! It owns one count: the bytes reserved now. A mirrored request reserves, when it is
//! admitted, what its pair could come to hold (each answer's digest at its largest); as
//! each answer comes in, the reservation shrinks to what that answer's digest really
//! holds. A [`Reservation`] gives its bytes back when it is dropped, however its pair
//! ends (compared, given up, its client gone), so the count cannot leak.

use std::cell::Cell;
use std::rc::Rc;

/// Bytes that reservations may hold together; shared by a worker's clients (`Rc`).
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: usize,
    reserved: Cell<usize>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none reserved.
    pub(crate) fn new(limit: usize) -> Rc<MemoryBudget> {
        Rc::new(MemoryBudget {
            limit,
            reserved: Cell::new(0),
        })
    }

    /// Reserves `bytes`, or `None` if they do not fit in what is left.
    pub(crate) fn reserve(self: &Rc<Self>, bytes: usize) -> Option<Reservation> {
        let reserved = self.reserved.get().checked_add(bytes)?;
        if reserved > self.limit {
            return None;
        }
        self.reserved.set(reserved);
        Some(Reservation {
            budget: Rc::clone(self),
            bytes,
        })
    }

    /// The bytes reserved now.
    #[cfg(test)]
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.get()
    }
}

/// Bytes held from a [`MemoryBudget`] until this is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Rc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    /// Part of what was reserved, `expected`, turned out to need `actual`: the
    /// reservation follows (it may grow past the budget: the bytes are already held).
    pub(crate) fn settle(&mut self, expected: usize, actual: usize) {
        let bytes = self.bytes.saturating_sub(expected).saturating_add(actual);
        let count = &self.budget.reserved;
        count.set(count.get() - self.bytes + bytes);
        self.bytes = bytes;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let count = &self.budget.reserved;
        count.set(count.get() - self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryBudget;

    #[test]
    fn reservations_fit_the_limit_settle_and_give_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.reserve(60).unwrap();
        assert!(budget.reserve(41).is_none(), "over the limit");
        let second = budget.reserve(40).unwrap();
        assert_eq!(budget.reserved(), 100);
        // An answer expected at 30 bytes at most held 5.
        first.settle(30, 5);
        assert_eq!(budget.reserved(), 75);
        drop(second);
        assert_eq!(budget.reserved(), 35);
        drop(first);
        assert_eq!(budget.reserved(), 0);
    }
}
