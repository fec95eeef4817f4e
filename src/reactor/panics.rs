//! Panics stop at the callback that raised them (EventMachine's `EM.error_handler`).
//!
//! Every user callback the loop runs — a handler's, a timer's, a next-tick or remote
//! task, a deferred job's completion, a signal handler, a server's handler factory — runs
//! inside [`Reactor::contain`]. A panic there is caught: the descriptor concerned (if any)
//! closes with [`UnbindReason::Panicked`], the error handler sees a [`CallbackPanic`], and
//! the loop carries on serving everyone else. This module owns the error handler and
//! nothing else; it never decides what a callback does.

use std::any::Any;
use std::fmt;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use super::Reactor;
use crate::handler::UnbindReason;
use crate::id::ConnId;

/// A callback panicked; what [`Reactor::set_error_handler`]'s handler is given.
#[derive(Clone, Debug)]
pub struct CallbackPanic {
    /// The descriptor whose callback panicked (closed with [`UnbindReason::Panicked`]),
    /// or `None` for a timer, next-tick, remote task, deferred completion or signal
    /// handler that belongs to no descriptor.
    pub connection: Option<ConnId>,
    /// The panic's message (`"(no message)"` if the payload was not a string).
    pub message: Arc<str>,
}

impl fmt::Display for CallbackPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.connection {
            Some(id) => write!(
                f,
                "a callback of {id} panicked ({}); that connection was closed",
                self.message
            ),
            None => write!(f, "a callback panicked ({})", self.message),
        }
    }
}

pub(crate) type ErrorHandler = Box<dyn FnMut(&mut Reactor, &CallbackPanic)>;

impl Reactor {
    /// Calls `handler` whenever a callback panics, after the descriptor concerned has been
    /// asked to close (its `unbind` follows at the end of the tick). Without one, a line
    /// goes to stderr. A panic inside the error handler itself is reported on stderr and
    /// otherwise ignored.
    pub fn set_error_handler(
        &mut self,
        handler: impl FnMut(&mut Reactor, &CallbackPanic) + 'static,
    ) {
        self.error_handler = Some(Box::new(handler));
    }

    /// Runs `f`; if it panics, closes `owner` (when given) with
    /// [`UnbindReason::Panicked`] and reports the panic. `None` if it panicked.
    pub(crate) fn contain<R>(
        &mut self,
        owner: Option<ConnId>,
        f: impl FnOnce(&mut Reactor) -> R,
    ) -> Option<R> {
        match panic::catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(value) => Some(value),
            Err(payload) => {
                self.callback_panicked(owner, payload);
                None
            }
        }
    }

    /// A callback of `owner` (or of no descriptor) panicked with `payload`.
    pub(crate) fn callback_panicked(
        &mut self,
        owner: Option<ConnId>,
        payload: Box<dyn Any + Send>,
    ) {
        let report = CallbackPanic {
            connection: owner,
            message: panic_message(payload.as_ref()),
        };
        if let Some(id) = owner {
            self.close_descriptor(id, UnbindReason::Panicked(Arc::clone(&report.message)));
        }
        let Some(mut handler) = self.error_handler.take() else {
            write_stderr(&format!("ember: {report}"));
            return;
        };
        if panic::catch_unwind(AssertUnwindSafe(|| handler(self, &report))).is_err() {
            write_stderr("ember: the error handler itself panicked");
        }
        // Keep a handler the error handler installed in its place.
        self.error_handler.get_or_insert(handler);
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("(no message)")
    }
}

/// One line on stderr; a closed or broken stderr is not a reason to fail.
fn write_stderr(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
