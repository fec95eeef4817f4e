//! [`system`]: run a command, collect what it writes, and call back on the reactor thread
//! when it has exited (EventMachine's `EM.system`).
//!
//! This module owns one child connection's collected output and its limit; spawning,
//! reading the pipes and waiting for the exit status without blocking are the reactor's
//! (`Reactor::popen`). It never blocks the loop and never holds more than the limit.

use std::error::Error;
use std::fmt;
use std::io;
use std::process::{Command, Output};

use crate::{ConnId, Context, Handler, Reactor, UnbindReason};

/// What [`system`] collects by default before it gives up on a command: 64 MiB of stdout
/// and stderr together.
pub const DEFAULT_MAX_OUTPUT: usize = 64 * 1024 * 1024;

/// How a command run by [`system`] failed after it started.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SystemFailed {
    /// Its stdout and stderr together passed `limit` bytes: it was killed (`SIGKILL`) and
    /// what it wrote was dropped.
    OutputOverLimit {
        /// The limit it passed ([`SystemOptions::max_output`]).
        limit: usize,
    },
    /// It ended without an exit status to report: the reactor stopped before it exited
    /// and it could not be reaped, or waiting for it failed.
    NoExitStatus(UnbindReason),
}

impl fmt::Display for SystemFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SystemFailed::OutputOverLimit { limit } => {
                write!(
                    f,
                    "the command wrote more than {limit} bytes and was killed"
                )
            }
            SystemFailed::NoExitStatus(reason) => {
                write!(f, "the command ended without an exit status ({reason})")
            }
        }
    }
}

impl Error for SystemFailed {}

/// What [`system_with`] gives a command and how much of its output it keeps.
#[derive(Clone, Debug)]
pub struct SystemOptions {
    input: Vec<u8>,
    max_output: usize,
}

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            input: Vec::new(),
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

impl SystemOptions {
    /// No input (the command's stdin is closed at once) and [`DEFAULT_MAX_OUTPUT`].
    pub fn new() -> Self {
        SystemOptions::default()
    }

    /// Bytes written to the command's stdin before it is closed (EM's
    /// `EM.system(cmd) { |process| process.send_data(...) }`).
    pub fn input(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.input = input.into();
        self
    }

    /// The most bytes of stdout and stderr together kept; a command that writes more is
    /// killed and reported as [`SystemFailed::OutputOverLimit`].
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }
}

/// What [`system`]'s callback gets: the command's stdout, stderr and exit status, or why
/// there is none.
pub type SystemResult = Result<Output, SystemFailed>;

type Done = Box<dyn FnOnce(&mut Reactor, SystemResult)>;

/// Runs `command` as a child of the reactor (on [`Reactor::popen`]) with its stdin closed,
/// collects its stdout and stderr, and once it has exited calls `done` on the reactor
/// thread with a [`std::process::Output`] (EventMachine's `EM.system(cmd) { |output,
/// status| }`). The loop never waits for it.
///
/// `Err` at once if the command cannot start (no such program, not executable, out of
/// descriptors); `done` is then never called. Otherwise `done` runs exactly once: with
/// the output, or with [`SystemFailed`] if the command wrote more than
/// [`DEFAULT_MAX_OUTPUT`] (see [`system_with`] for another limit, or for input).
///
/// The command counts as finished when its stdout closes; a command that closes its
/// stdout and goes on running gets the reactor's child grace
/// ([`Reactor::set_child_grace`]) to exit before it is sent `SIGTERM`. If the reactor
/// stops first, the command is killed and `done` still runs, during the stop, with the
/// status that says so (killed by `SIGKILL`).
///
/// ```
/// use std::process::Command;
/// use ember::Reactor;
///
/// Reactor::run(|r| {
///     ember::em::system(r, Command::new("echo").arg("hello"), |r, result| {
///         let output = result.expect("echo exits");
///         assert!(output.status.success());
///         assert_eq!(output.stdout, b"hello\n");
///         r.stop();
///     })?;
///     Ok(())
/// })
/// .unwrap();
/// ```
#[doc(alias = "EM.system")]
pub fn system(
    r: &mut Reactor,
    command: &mut Command,
    done: impl FnOnce(&mut Reactor, SystemResult) + 'static,
) -> io::Result<ConnId> {
    system_with(r, command, SystemOptions::default(), done)
}

/// [`system`] with input for the command's stdin and a chosen output limit.
pub fn system_with(
    r: &mut Reactor,
    command: &mut Command,
    options: SystemOptions,
    done: impl FnOnce(&mut Reactor, SystemResult) + 'static,
) -> io::Result<ConnId> {
    r.popen(
        command,
        SystemCommand {
            input: options.input,
            limit: options.max_output,
            stdout: Vec::new(),
            stderr: Vec::new(),
            over_limit: false,
            done: Some(Box::new(done)),
        },
    )
}

/// The child connection's handler: feeds the input, keeps the output, reports the end.
struct SystemCommand {
    input: Vec<u8>,
    limit: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The output passed `limit`: the child was killed and nothing more is kept.
    over_limit: bool,
    /// Taken by `unbind`, which runs exactly once.
    done: Option<Done>,
}

impl SystemCommand {
    /// Whether `more` bytes still fit; if not, kills the child and forgets its output.
    fn room_for(&mut self, cx: &mut Context<'_>, more: usize) -> bool {
        if self.over_limit {
            return false;
        }
        if self.stdout.len() + self.stderr.len() + more <= self.limit {
            return true;
        }
        self.over_limit = true;
        self.stdout = Vec::new();
        self.stderr = Vec::new();
        let id = cx.id();
        // Killed rather than only closed: a child that ignores SIGPIPE would otherwise
        // run until the child grace is over.
        let _ = cx.kill_child(id, libc::SIGKILL);
        cx.close();
        false
    }
}

impl Handler for SystemCommand {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        // Reading stdout never adds to the input queue, and `limit` bounds what is kept:
        // with backpressure on, input above the high-water mark would stop the reads, the
        // child would block writing its stdout and never read the rest of its stdin.
        cx.set_read_backpressure(false);
        let input = std::mem::take(&mut self.input);
        if !input.is_empty() {
            cx.send_data(&input);
        }
        cx.close_write();
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        if self.room_for(cx, data.len()) {
            self.stdout.extend_from_slice(data);
        }
    }

    fn receive_stderr(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        if self.room_for(cx, data.len()) {
            self.stderr.extend_from_slice(data);
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let Some(done) = self.done.take() else {
            return;
        };
        let result = match reason {
            _ if self.over_limit => Err(SystemFailed::OutputOverLimit { limit: self.limit }),
            UnbindReason::ProcessExited(status) => Ok(Output {
                status,
                stdout: std::mem::take(&mut self.stdout),
                stderr: std::mem::take(&mut self.stderr),
            }),
            other => Err(SystemFailed::NoExitStatus(other)),
        };
        done(cx.reactor(), result);
    }
}

impl fmt::Debug for SystemCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemCommand")
            .field("stdout", &self.stdout.len())
            .field("stderr", &self.stderr.len())
            .field("limit", &self.limit)
            .field("over_limit", &self.over_limit)
            .finish()
    }
}
