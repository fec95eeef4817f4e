//! The only doors into the reactor from other threads: [`ReactorHandle`] (stop, schedule a
//! closure) and the defer pool's completed results. Both push onto a mutex-guarded queue
//! and wake the loop through a `mio::Waker`; the reactor drains the queues on its own
//! thread, so handlers never see another thread.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use mio::Waker;

use crate::reactor::Reactor;

/// A closure sent from another thread to run on the reactor thread.
pub(crate) type RemoteTask = Box<dyn FnOnce(&mut Reactor) + Send>;

/// A finished deferred job: its number and what `work` returned (or its panic).
pub(crate) type DeferOutcome = (u64, thread::Result<Box<dyn Any + Send>>);

pub(crate) struct Shared {
    waker: Waker,
    stop: AtomicBool,
    /// The thread running the loop, while it runs (`run_loop`).
    loop_thread: Mutex<Option<thread::ThreadId>>,
    tasks: Mutex<Vec<RemoteTask>>,
    deferred: Mutex<Vec<DeferOutcome>>,
}

impl Shared {
    pub(crate) fn new(waker: Waker) -> Shared {
        Shared {
            waker,
            stop: AtomicBool::new(false),
            loop_thread: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            deferred: Mutex::new(Vec::new()),
        }
    }

    /// `run_loop` started (`Some`: on the calling thread) or ended (`None`).
    pub(crate) fn set_loop_thread(&self, thread: Option<thread::ThreadId>) {
        *lock(&self.loop_thread) = thread;
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(crate) fn take_tasks(&self) -> Vec<RemoteTask> {
        std::mem::take(&mut *lock(&self.tasks))
    }

    pub(crate) fn take_deferred(&self) -> Vec<DeferOutcome> {
        std::mem::take(&mut *lock(&self.deferred))
    }

    pub(crate) fn complete_deferred(&self, outcome: DeferOutcome) {
        lock(&self.deferred).push(outcome);
        let _ = self.waker.wake();
    }

    fn push_task(&self, task: RemoteTask) {
        lock(&self.tasks).push(task);
        let _ = self.waker.wake();
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// Locks a queue mutex; a panic elsewhere cannot leave these queues inconsistent (each
/// operation is a single push or swap), so a poisoned lock is simply taken over.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `Send + Clone` handle to a reactor: stop it or run a closure on it from any thread.
///
/// ```
/// use ember::Reactor;
///
/// Reactor::run(|r| {
///     let handle = r.handle();
///     std::thread::spawn(move || handle.schedule(|r| r.stop()));
///     Ok(())
/// })
/// .unwrap();
/// ```
#[derive(Clone)]
pub struct ReactorHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ReactorHandle {
    /// Asks the reactor to stop at the end of its current tick.
    pub fn stop(&self) {
        self.shared.request_stop();
    }

    /// Runs `task` on the reactor thread during its next tick. Tasks scheduled after the
    /// reactor has stopped are dropped without running.
    ///
    /// EventMachine's `schedule` runs its block at once when called on the reactor
    /// thread; there, code already holds the `&mut Reactor` (a handler's
    /// [`Context::reactor`](crate::Context::reactor)) and calls the closure itself. Use
    /// [`is_reactor_thread`](Self::is_reactor_thread) to tell the two apart.
    pub fn schedule(&self, task: impl FnOnce(&mut Reactor) + Send + 'static) {
        self.shared.push_task(Box::new(task));
    }

    /// Whether the reactor's loop is running (EventMachine's `reactor_running?`).
    #[doc(alias = "reactor_running")]
    pub fn is_running(&self) -> bool {
        lock(&self.shared.loop_thread).is_some()
    }

    /// Whether the calling thread is the one running the loop (EventMachine's
    /// `reactor_thread?`).
    #[doc(alias = "reactor_thread")]
    pub fn is_reactor_thread(&self) -> bool {
        *lock(&self.shared.loop_thread) == Some(thread::current().id())
    }
}

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("stop_requested", &self.shared.stop_requested())
            .finish()
    }
}
