//! What every client and backend of one proxy server shares (`Config`): the server's
//! [`Options`], its [`Stats`], the limits derived from them once at start (how many
//! shadows may be open at once, what each one reserves), and the verbose log.
//!
//! Built once per server (`server.rs`), then only read (but for the server's id, learnt
//! once it listens): a client or backend holds an `Rc<Config>`. It also owns the
//! connection limit (`Options::max_connections`): pausing and resuming accepts.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Write};

use crate::{Reactor, ServerId};

use super::server::{Options, SHADOW_CONNECT_ALLOWANCE};
use super::stats::Stats;

/// What every client and backend of one proxy server shares.
pub(crate) struct Config {
    pub(crate) options: Options,
    pub(crate) stats: Stats,
    /// What one shadow reserves of `shadow_max_memory`, and may queue while it is still
    /// connecting: `shadow_buffer`, or [`SHADOW_CONNECT_ALLOWANCE`] if that is more.
    pub(crate) shadow_reservation: usize,
    /// Shadows beyond this many open at once are skipped (see `max_shadows`).
    pub(crate) max_shadows: usize,
    /// The listening server, once started (for pausing accepts at the connection limit).
    pub(crate) server: Cell<Option<ServerId>>,
}

impl Config {
    pub(crate) fn new(options: Options, stats: Stats) -> Config {
        let shadow_reservation = options.shadow_buffer.max(SHADOW_CONNECT_ALLOWANCE);
        Config {
            max_shadows: max_shadows(&options, shadow_reservation),
            shadow_reservation,
            options,
            stats,
            server: Cell::new(None),
        }
    }

    /// A client arrived: at the connection limit, stop accepting (new clients wait in
    /// the kernel's backlog, as with HAProxy's `maxconn`).
    pub(crate) fn client_arrived(&self, r: &mut Reactor) {
        self.stats.client_accepted();
        if let (Some(max), Some(server)) = (self.options.max_connections, self.server.get())
            && self.stats.clients_active() >= max as u64
            && r.pause_accepting(server)
        {
            self.log(format_args!("{max} clients: the limit; new ones wait"));
        }
    }

    /// A client left: below the limit again, accept again.
    pub(crate) fn client_left(&self, r: &mut Reactor) {
        self.stats.client_gone();
        if let (Some(max), Some(server)) = (self.options.max_connections, self.server.get())
            && self.stats.clients_active() < max as u64
            && r.is_accepting_paused(server)
        {
            r.resume_accepting(server);
        }
    }

    pub(crate) fn verbose(&self) -> bool {
        self.options.verbose
    }

    /// One line on stderr, in verbose mode only. A closed or full stderr loses the line,
    /// never the proxy.
    pub(crate) fn log(&self, line: fmt::Arguments<'_>) {
        if self.options.verbose {
            let _ = writeln!(io::stderr().lock(), "{}: {line}", self.options.label);
        }
    }
}

/// How many shadows, each reserving `reservation` bytes, may be open at once, from the
/// limits or their defaults.
fn max_shadows(options: &Options, reservation: usize) -> usize {
    let by_descriptors = options.shadow_max_connections.unwrap_or_else(|| {
        usize::try_from(crate::limits::descriptor_limit() / 4).unwrap_or(usize::MAX)
    });
    let memory = options.shadow_max_memory.unwrap_or_else(|| {
        usize::try_from(crate::limits::physical_memory() / 8).unwrap_or(usize::MAX)
    });
    by_descriptors.min(memory / reservation.max(1))
}
