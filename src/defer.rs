//! The defer pool: native threads for blocking work (`EM.defer`).
//!
//! Threads start lazily on the first job (20 by default, as in EventMachine). A job's
//! `work` runs on a pool thread under `catch_unwind`; its result (or panic) is posted to
//! the reactor, which runs the job's callback on the reactor thread. Callbacks stay on the
//! reactor side in a map keyed by job number, so they need not be `Send`.
//! The pool never blocks the reactor: dropping it only tells the threads to finish.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use crate::reactor::Reactor;
use crate::remote::Shared;

/// The default number of pool threads, as in EventMachine.
pub const DEFAULT_DEFER_THREADS: usize = 20;

type Work = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;
pub(crate) type Completion = Box<dyn FnOnce(&mut Reactor, thread::Result<Box<dyn Any + Send>>)>;

/// A deferred job's `work` panicked; the message is the panic's, if it had one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeferPanic {
    /// The panic message.
    pub message: String,
}

impl fmt::Display for DeferPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deferred work panicked: {}", self.message)
    }
}

impl std::error::Error for DeferPanic {}

impl DeferPanic {
    pub(crate) fn from_payload(payload: Box<dyn Any + Send>) -> DeferPanic {
        let message = match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(s) => (*s).to_string(),
                Err(_) => "non-string panic payload".to_string(),
            },
        };
        DeferPanic { message }
    }
}

#[derive(Default)]
struct JobQueue {
    jobs: Mutex<(VecDeque<(u64, Work)>, bool)>,
    ready: Condvar,
}

pub(crate) struct DeferPool {
    threads: usize,
    started: bool,
    queue: Arc<JobQueue>,
    completions: HashMap<u64, Completion>,
    next_job: u64,
    /// Pool threads that actually started.
    running: usize,
}

impl DeferPool {
    pub(crate) fn new() -> DeferPool {
        DeferPool {
            threads: DEFAULT_DEFER_THREADS,
            started: false,
            queue: Arc::default(),
            completions: HashMap::new(),
            next_job: 0,
            running: 0,
        }
    }

    /// Sets the pool size; only effective before the first job starts the threads.
    pub(crate) fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    pub(crate) fn pending(&self) -> usize {
        self.completions.len()
    }

    pub(crate) fn submit(&mut self, shared: &Arc<Shared>, work: Work, completion: Completion) {
        if !self.started {
            self.start(shared);
        }
        let job = self.next_job;
        self.next_job += 1;
        self.completions.insert(job, completion);
        if self.running == 0 {
            // The OS refused every pool thread: block the loop for this job rather than
            // drop it; its callback still runs on a later tick, as usual.
            let result = panic::catch_unwind(AssertUnwindSafe(work));
            shared.complete_deferred((job, result));
            return;
        }
        let mut jobs = self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.0.push_back((job, work));
        drop(jobs);
        self.queue.ready.notify_one();
    }

    pub(crate) fn take_completion(&mut self, job: u64) -> Option<Completion> {
        self.completions.remove(&job)
    }

    fn start(&mut self, shared: &Arc<Shared>) {
        self.started = true;
        for n in 0..self.threads {
            let queue = Arc::clone(&self.queue);
            let shared = Arc::clone(shared);
            let spawned = thread::Builder::new()
                .name(format!("ember-defer-{n}"))
                .spawn(move || worker(&queue, &shared));
            if spawned.is_err() {
                // Fewer threads than asked is still a working pool; with none at all,
                // `submit` runs jobs inline rather than losing them.
                break;
            }
            self.running += 1;
        }
    }
}

impl Drop for DeferPool {
    fn drop(&mut self) {
        let mut jobs = self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.1 = true;
        jobs.0.clear();
        drop(jobs);
        self.queue.ready.notify_all();
    }
}

fn worker(queue: &JobQueue, shared: &Shared) {
    loop {
        let (job, work) = {
            let mut jobs = queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if jobs.1 {
                    return;
                }
                if let Some(next) = jobs.0.pop_front() {
                    break next;
                }
                jobs = queue.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = panic::catch_unwind(AssertUnwindSafe(work));
        shared.complete_deferred((job, result));
    }
}
