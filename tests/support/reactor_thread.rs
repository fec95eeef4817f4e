//! A reactor under test, always under the [watchdog](super::watchdog): on a thread of its
//! own ([`ReactorThread`], for a test that talks to it with blocking std clients), or on
//! the test thread ([`run_bounded`], for a test whose handlers share `Rc`s it reads once the
//! loop has ended). And probes into a running reactor.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ember::{Reactor, ReactorHandle};

use super::IO_TIMEOUT;
use super::clients::recv;
use super::watchdog::Watchdog;

/// How long a reactor thread may run before the watchdog stops it.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// A reactor running on its own thread until stopped or dropped.
pub struct ReactorThread<T> {
    /// What the setup returned: addresses, shared records, stats.
    pub value: T,
    handle: ReactorHandle,
    done: Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> ReactorThread<T> {
    /// Starts a thread that creates a reactor, runs `setup` on it and then the loop;
    /// returns once setup has finished, with what it returned.
    pub fn spawn(
        setup: impl FnOnce(&mut Reactor) -> io::Result<T> + Send + 'static,
    ) -> ReactorThread<T> {
        let (ready_tx, ready) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut reactor = match Reactor::new() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _watchdog = Watchdog::stop_after(reactor.handle(), WATCHDOG);
            match setup(&mut reactor) {
                Ok(value) => {
                    let _ = ready_tx.send(Ok((reactor.handle(), value)));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = done_tx.send(reactor.run_loop());
        });
        let (handle, value) =
            recv(&ready, IO_TIMEOUT, "the reactor thread's setup").expect("reactor thread setup");
        ReactorThread {
            value,
            handle,
            done,
            thread: Some(thread),
        }
    }
}

impl<T> ReactorThread<T> {
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// Runs `f` on the reactor thread and returns its result.
    pub fn on_reactor<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reactor) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        self.handle.schedule(move |r| {
            let _ = tx.send(f(r));
        });
        recv(&rx, IO_TIMEOUT, "the reactor to run a task")
    }

    /// The reactor's live connections.
    pub fn connection_count(&self) -> usize {
        self.on_reactor(|r| r.connection_count())
    }

    /// Stops the loop and waits (bounded) for the thread; panics if the loop failed, the
    /// thread panicked or it did not stop in time.
    pub fn stop(mut self) {
        self.handle.stop();
        match self.done.recv_timeout(IO_TIMEOUT) {
            Ok(result) => result.expect("reactor loop returned an error"),
            Err(RecvTimeoutError::Timeout) => {
                self.thread.take(); // leak it: it is stuck
                panic!("the reactor thread did not stop within {IO_TIMEOUT:?}");
            }
            Err(RecvTimeoutError::Disconnected) => {}
        }
        if let Some(t) = self.thread.take()
            && let Err(panic) = t.join()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl<T> Drop for ReactorThread<T> {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.handle.stop();
        if self.done.recv_timeout(IO_TIMEOUT).is_ok() || t.is_finished() {
            let _ = t.join();
        }
    }
}

/// Runs a reactor on this thread: `setup`, then the loop, stopped by the watchdog after
/// `limit` at the latest. Returns the reactor (for post-mortem queries) and whether the
/// watchdog had to stop it.
pub fn run_bounded(
    limit: Duration,
    setup: impl FnOnce(&mut Reactor) -> io::Result<()>,
) -> (Reactor, bool) {
    let mut reactor = Reactor::new().expect("create reactor");
    let watchdog = Watchdog::stop_after(reactor.handle(), limit);
    setup(&mut reactor).expect("reactor setup");
    reactor.run_loop().expect("reactor loop");
    let fired = watchdog.fired();
    drop(watchdog);
    (reactor, fired)
}

/// The peak of every live connection's outbound queue in a reactor, sampled every
/// millisecond by a periodic timer: what the reactor buffers in user space.
pub fn watch_peak_queue(r: &mut Reactor) -> Arc<AtomicUsize> {
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&peak);
    r.add_periodic_timer(Duration::from_millis(1), move |r| {
        for id in r.connection_ids() {
            seen.fetch_max(r.outbound_size(id), Ordering::Relaxed);
        }
    });
    peak
}
