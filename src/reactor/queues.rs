//! The tick's queues, each with one way in. The loop drains them at fixed points of the
//! tick (see the module docs of `reactor`); everything else only adds to them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use super::Task;
use crate::Reactor;
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

/// Closures for the end of the tick (`next_tick`), shared with every [`LocalHandle`] so
/// code on the reactor thread without a `&mut Reactor` (a `Drop`, say) can add to it.
/// The cell is borrowed only to push or to take the whole list, never while a closure
/// runs, so no closure can find it borrowed.
#[derive(Clone, Default)]
pub(crate) struct NextTicks(Rc<RefCell<Vec<Task>>>);

impl NextTicks {
    pub(crate) fn add(&self, task: Task) {
        self.0.borrow_mut().push(task);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// Everything queued so far; what is added while these run waits for the next tick.
    pub(crate) fn take(&self) -> Vec<Task> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

/// A same-thread handle on the reactor's next-tick queue: for code that runs on the
/// reactor thread but holds no `&mut Reactor` (a `Drop` impl, a value shared between
/// handlers). The counterpart of [`ReactorHandle`](crate::ReactorHandle), which other
/// threads use; this one is neither `Send` nor `Sync`, and costs a push.
///
/// ```
/// use ember::Reactor;
///
/// Reactor::run(|r| {
///     let ticks = r.local_handle();
///     // Later, somewhere without the reactor at hand:
///     ticks.next_tick(|r| r.stop());
///     Ok(())
/// })
/// .unwrap();
/// ```
#[derive(Clone)]
pub struct LocalHandle(pub(crate) NextTicks);

impl LocalHandle {
    /// Runs `task` at the end of the current tick, like [`Reactor::next_tick`]
    /// (or of the next one, if the tick's next-tick closures are already running).
    pub fn next_tick(&self, task: impl FnOnce(&mut Reactor) + 'static) {
        self.0.add(Box::new(task));
    }
}

impl fmt::Debug for LocalHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalHandle").finish_non_exhaustive()
    }
}
