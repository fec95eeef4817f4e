//! Watching any process for its exit (EventMachine's `EM.watch_process` and its
//! `process_exited`): the process's descriptor (`pidfd_open`) is watched like a socket,
//! and the callback runs on the reactor thread once the process has exited.
//!
//! The process need not be ours: nothing here reaps it or reads its exit status (only its
//! parent can), it only learns that it ended. For children the reactor started itself,
//! [`Reactor::popen`] reports the exit status. EventMachine's `process_forked` has no
//! Linux counterpart and is not offered.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::Reactor;
use crate::handler::{Context, Handler};
use crate::id::ConnId;

/// What runs once the process has exited: with the reactor and the pid.
type OnExit = Box<dyn FnOnce(&mut Reactor, u32)>;

/// The handler of one process watch: owns the process descriptor (the watch only
/// borrows it) and the callback, run once.
struct ExitWatch {
    pid: u32,
    _process: OwnedFd,
    on_exit: Option<OnExit>,
}

impl Handler for ExitWatch {
    fn notify_readable(&mut self, cx: &mut Context<'_>) {
        cx.close();
        if let Some(on_exit) = self.on_exit.take() {
            on_exit(cx.reactor(), self.pid);
        }
    }
}

impl Reactor {
    /// Calls `on_exit(reactor, pid)` once process `pid` has exited (EventMachine's
    /// `watch_process`). Returns the watch's id ([`close_connection`](Self::close_connection)
    /// stops watching), or an error for a process that does not exist or where
    /// process descriptors are not available.
    #[doc(alias = "process_exited")]
    pub fn watch_process(
        &mut self,
        pid: u32,
        on_exit: impl FnOnce(&mut Reactor, u32) + 'static,
    ) -> io::Result<ConnId> {
        let process = crate::sys::pidfd::open(pid)?;
        let fd = process.as_raw_fd();
        self.watch(
            fd,
            ExitWatch {
                pid,
                _process: process,
                on_exit: Some(Box::new(on_exit)),
            },
        )
    }
}
