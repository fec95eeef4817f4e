//! The watchdog. A thread waits out a limit unless the [`Watchdog`] is dropped first, and
//! then raises its alarm: it stops a reactor through its handle (the loop returns and the
//! test reports what it saw), or, where there is no reactor to stop or a stop might not
//! reach it, aborts the test binary, naming the test. Either way a hung test fails instead
//! of hanging the suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ember::ReactorHandle;

/// Armed until dropped.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the watchdog does when its limit passes.
enum Alarm {
    Stop(ReactorHandle),
    /// Abort the process; the test's name.
    Abort(String),
}

impl Watchdog {
    /// Stops the reactor behind `handle` if the watchdog is still armed after `limit`.
    pub fn stop_after(handle: ReactorHandle, limit: Duration) -> Watchdog {
        Watchdog::arm(limit, Alarm::Stop(handle))
    }

    /// Aborts the process if the watchdog is still armed after `limit`: for a test that
    /// blocks its own thread, or whose stop is what is under test. The message names the
    /// test (libtest names each test's thread after it).
    pub fn abort_after(limit: Duration) -> Watchdog {
        let test = thread::current().name().unwrap_or("a test").to_owned();
        Watchdog::arm(limit, Alarm::Abort(test))
    }

    fn arm(limit: Duration, alarm: Alarm) -> Watchdog {
        let (disarm, armed) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        let thread = thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                match alarm {
                    Alarm::Stop(handle) => {
                        eprintln!("watchdog: stopping the reactor after {limit:?}");
                        handle.stop();
                    }
                    Alarm::Abort(test) => {
                        eprintln!("watchdog: {test} still running after {limit:?}; aborting");
                        std::process::abort();
                    }
                }
            }
        });
        Watchdog {
            disarm: Some(disarm),
            fired,
            thread: Some(thread),
        }
    }

    /// Whether the alarm went off.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
