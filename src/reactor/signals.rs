//! Unix signals as reactor events: `on_signal` handlers, run on the reactor thread when
//! the self-pipe (`sys::signals`) reports a signal.

use std::collections::HashMap;
use std::io;

use super::{Reactor, SIGNAL_TOKEN};
use crate::sys::signals::SignalPipe;

type SignalHandler = Box<dyn FnMut(&mut Reactor)>;

/// The signal room: the self-pipe (opened on the first `on_signal`) and the handlers of
/// each signal, in the order they were added.
#[derive(Default)]
pub(crate) struct Signals {
    pipe: Option<SignalPipe>,
    handlers: HashMap<i32, Vec<SignalHandler>>,
}

impl Reactor {
    /// Runs `handler` on the reactor thread each time signal `signo` arrives (for
    /// example `libc::SIGHUP` to reload). Installs a process-wide handler for `signo`.
    pub fn on_signal(
        &mut self,
        signo: i32,
        handler: impl FnMut(&mut Reactor) + 'static,
    ) -> io::Result<()> {
        if self.signals.pipe.is_none() {
            let pipe = SignalPipe::open()?;
            self.poll.registry().register(
                &mut mio::unix::SourceFd(&pipe.read_fd()),
                SIGNAL_TOKEN,
                mio::Interest::READABLE,
            )?;
            self.signals.pipe = Some(pipe);
        }
        SignalPipe::install(signo)?;
        self.signals
            .handlers
            .entry(signo)
            .or_default()
            .push(Box::new(handler));
        Ok(())
    }

    /// Stops the loop on SIGINT or SIGTERM.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        self.on_signal(libc::SIGINT, Reactor::stop)?;
        self.on_signal(libc::SIGTERM, Reactor::stop)
    }

    pub(crate) fn run_signal_handlers(&mut self) {
        let Some(pipe) = self.signals.pipe.as_ref() else {
            return;
        };
        for signo in pipe.drain() {
            let Some(mut handlers) = self.signals.handlers.remove(&signo) else {
                continue;
            };
            for handler in &mut handlers {
                self.contain(None, |r| handler(r));
            }
            // Keep handlers registered by the handlers themselves, after the old ones.
            let added = self.signals.handlers.remove(&signo).unwrap_or_default();
            handlers.extend(added);
            self.signals.handlers.insert(signo, handlers);
        }
    }
}
