//! Child processes as connections (`popen`): we write the child's stdin, its stdout
//! reaches `receive_data`, its stderr `receive_stderr`, and its exit status arrives in
//! `unbind` as [`UnbindReason::ProcessExited`].
//!
//! Tearing a child down never blocks the loop (EventMachine's can block it for seconds).
//! When the connection closes, the child's stdin is closed and a timer polls `waitpid`
//! without blocking, 1 ms at first and backing off to 50 ms. A child still running after
//! the grace period gets SIGTERM, and SIGKILL after another; `unbind` runs when it has
//! exited. Only when the reactor itself stops are stragglers killed and reaped at once.

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::lifecycle::Life;
use super::{Reactor, TimerTask};
use crate::handler::{Handler, UnbindReason};
use crate::id::{ConnId, TimerId};
use crate::sys::pipes::ChildPipes;
use crate::sys::send_signal;
use crate::sys::socket::Stream;

/// Default time a closed child gets to exit before SIGTERM, and again before SIGKILL.
pub const DEFAULT_CHILD_GRACE: Duration = Duration::from_secs(2);
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(50);

pub(crate) struct ExitingChild {
    id: ConnId,
    child: Child,
    handler: Box<dyn Handler>,
    closed_at: Instant,
    term_sent: bool,
    kill_sent: bool,
}

/// The exit watcher's timer and its current interval.
pub(crate) struct ExitPoll {
    timer: TimerId,
    interval: Duration,
}

/// What the reactor keeps about child processes: those closed and not yet exited, the
/// timer that polls them, and how long they get before SIGTERM and SIGKILL.
pub(crate) struct Children {
    /// Closed child connections whose exit status (and so `unbind`) is still awaited.
    exiting: Vec<ExitingChild>,
    /// Armed while `exiting` is not empty.
    exit_poll: Option<ExitPoll>,
    /// Time a closed child gets to exit before SIGTERM, and again before SIGKILL.
    grace: Duration,
}

impl Default for Children {
    fn default() -> Self {
        Children {
            exiting: Vec::new(),
            exit_poll: None,
            grace: DEFAULT_CHILD_GRACE,
        }
    }
}

impl Reactor {
    /// Spawns `command` with its stdin, stdout and stderr piped to a new connection.
    ///
    /// ```no_run
    /// # use ember::{Context, Handler, Reactor, UnbindReason};
    /// struct Cat;
    /// impl Handler for Cat {
    ///     fn post_init(&mut self, cx: &mut Context<'_>) {
    ///         cx.send_data(b"hello\n");
    ///         cx.close_write(); // cat sees EOF and exits
    ///     }
    ///     fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
    ///         print!("{}", String::from_utf8_lossy(data));
    ///     }
    ///     fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
    ///         println!("cat ended: {reason}");
    ///         cx.stop();
    ///     }
    /// }
    /// Reactor::run(|r| r.popen(&mut std::process::Command::new("cat"), Cat).map(drop)).unwrap();
    /// ```
    pub fn popen<H: Handler>(&mut self, command: &mut Command, handler: H) -> io::Result<ConnId> {
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pipes = ChildPipes::new(child)?;
        self.adopt(Some(Stream::Child(pipes)), Box::new(handler), Life::open())
    }

    /// The process id of child connection `id`.
    pub fn child_pid(&self, id: ConnId) -> Option<u32> {
        match self.conn(id)?.stream.as_ref()? {
            Stream::Child(pipes) => Some(pipes.child.id()),
            _ => None,
        }
    }

    /// Sends signal `signo` to child connection `id` (for example `libc::SIGKILL` for a
    /// stuck child); its `unbind` follows once it has exited and its pipes are closed.
    pub fn kill_child(&mut self, id: ConnId, signo: i32) -> io::Result<()> {
        let pid = self
            .child_pid(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such child connection"))?;
        send_signal(pid, signo)
    }

    /// How long a closed child may take to exit before SIGTERM (and again before SIGKILL).
    pub fn set_child_grace(&mut self, grace: Duration) {
        self.children.grace = grace;
    }

    /// Drains a child connection's stderr into `receive_stderr`, up to the per-event
    /// budget; if that runs out, the rest is read next tick (carry-over).
    pub(crate) fn read_child_stderr(&mut self, id: ConnId) {
        let mut buf = [0u8; 4096];
        for _ in 0..super::READS_PER_EVENT {
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            conn.stderr_unread = false;
            let Some(Stream::Child(pipes)) = conn.stream.as_mut() else {
                return;
            };
            match pipes.read_stderr(&mut buf) {
                Ok(Some(n)) => {
                    self.notify(id, |h, cx| h.receive_stderr(cx, &buf[..n]));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return,
            }
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.stderr_unread = true;
            self.carry_over.add(id.slot, id.serial);
        }
    }

    /// A child connection was closed: wait for its exit without blocking.
    pub(crate) fn await_child_exit(&mut self, id: ConnId, child: Child, handler: Box<dyn Handler>) {
        self.children.exiting.push(ExitingChild {
            id,
            child,
            handler,
            closed_at: Instant::now(),
            term_sent: false,
            kill_sent: false,
        });
        // Start polling fast again for the newcomer.
        if let Some(poll) = self.children.exit_poll.take() {
            self.timers.cancel(poll.timer);
        }
        self.poll_exiting_children();
    }

    /// The exit watcher: unbinds children that exited, escalates signals to the ones that
    /// outstay their grace, and re-arms itself while any remain.
    pub(crate) fn poll_exiting_children(&mut self) {
        let now = Instant::now();
        let grace = self.children.grace;
        let mut i = 0;
        while i < self.children.exiting.len() {
            let c = &mut self.children.exiting[i];
            let reason = match c.child.try_wait() {
                Ok(Some(status)) => UnbindReason::ProcessExited(status),
                Ok(None) => {
                    let waited = now.duration_since(c.closed_at);
                    if !c.kill_sent && waited >= grace * 2 {
                        c.kill_sent = c.child.kill().is_ok();
                    } else if !c.term_sent && waited >= grace {
                        c.term_sent = send_signal(c.child.id(), libc::SIGTERM).is_ok();
                    }
                    i += 1;
                    continue;
                }
                Err(e) => UnbindReason::Error(e.kind()),
            };
            let c = self.children.exiting.swap_remove(i);
            self.run_unbind(c.id, c.handler, reason);
        }
        self.rearm_exit_poll();
    }

    fn rearm_exit_poll(&mut self) {
        let previous = self.children.exit_poll.take();
        if let Some(poll) = &previous {
            self.timers.cancel(poll.timer);
        }
        if self.children.exiting.is_empty() {
            return;
        }
        let interval = previous.map_or(FIRST_POLL, |p| (p.interval * 2).min(MAX_POLL));
        let timer = self
            .timers
            .insert(Instant::now() + interval, None, TimerTask::ChildExitPoll);
        self.children.exit_poll = Some(ExitPoll { timer, interval });
    }

    /// At reactor stop: kill what is still running and unbind every child now.
    pub(crate) fn abandon_exiting_children(&mut self) {
        for mut c in std::mem::take(&mut self.children.exiting) {
            let status = match c.child.try_wait() {
                Ok(Some(status)) => Some(status),
                _ => {
                    let _ = c.child.kill();
                    c.child.wait().ok()
                }
            };
            let reason = status.map_or(UnbindReason::ReactorStopped, UnbindReason::ProcessExited);
            self.run_unbind(c.id, c.handler, reason);
        }
    }
}
