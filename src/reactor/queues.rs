//! The tick's queues, each with one way in. The loop drains them at fixed points of the
//! tick (see the module docs of `reactor`); everything else only adds to them.

use std::collections::VecDeque;

use crate::id::ConnId;

/// Descriptors to continue next tick without waiting for a new readiness edge: their
/// read or accept budget ran out, or reading was just allowed again. Entries are slab
/// slot and serial, so one for a descriptor that closed meanwhile is skipped.
#[derive(Default)]
pub(crate) struct CarryOver(Vec<(usize, u64)>);

impl CarryOver {
    /// Continue descriptor `slot` (if it still has `serial`) next tick.
    pub(crate) fn add(&mut self, slot: usize, serial: u64) {
        self.0.push((slot, serial));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Everything queued so far; what is added while these run waits for the next tick.
    pub(crate) fn take(&mut self) -> Vec<(usize, u64)> {
        std::mem::take(&mut self.0)
    }
}

/// Descriptors whose close is due: `reap` takes them out of the slab and runs their
/// `unbind`, in the order they were closed.
#[derive(Default)]
pub(crate) struct PendingCloses(VecDeque<ConnId>);

impl PendingCloses {
    pub(crate) fn add(&mut self, id: ConnId) {
        self.0.push_back(id);
    }

    pub(crate) fn next(&mut self) -> Option<ConnId> {
        self.0.pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
