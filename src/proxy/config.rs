//! What every client and backend of one proxy server shares (`Config`): the server's
//! [`Options`], its [`Stats`], the limits derived from them once at start (how many
//! shadows may be open at once, what each one reserves), and the verbose log.
//!
//! Built once per server (`server.rs`), then only read (but for the server's id, learnt
//! once it listens): a client or backend holds an `Rc<Config>`. It also owns the
//! connection limit (`Options::max_connections`): pausing and resuming accepts.

use std::cell::Cell;
use std::fmt;
use std::time::Duration;

use log::Level;

use crate::{Reactor, ServerId};

use super::server::{Options, SHADOW_CONNECT_ALLOWANCE};
use super::stats::Stats;
use super::throttle::Throttle;

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
    /// Sessions started so far: the last session id handed out.
    sessions: Cell<u64>,
    /// The budget for warnings.
    warnings: Throttle,
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
            sessions: Cell::new(0),
            warnings: Throttle::new(WARNINGS_PER_SECOND, Duration::from_secs(1)),
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
            log::info!(target: LOG_TARGET, "{}: {max} clients, the limit: new ones wait in the backlog", self.options.label);
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

    /// The next client's session id (1 for the first).
    pub(crate) fn next_session(&self) -> u64 {
        let id = self.sessions.get() + 1;
        self.sessions.set(id);
        id
    }

    /// A routine event of session `session` (connected, FIN, finished): logged at `Info`
    /// when the server is verbose, at `Debug` otherwise.
    pub(crate) fn event(&self, session: u64, line: fmt::Arguments<'_>) {
        let level = if self.options.verbose {
            Level::Info
        } else {
            Level::Debug
        };
        if log::log_enabled!(target: LOG_TARGET, level) {
            log::log!(target: LOG_TARGET, level, "{} #{session}: {line}", self.options.label);
        }
    }

    /// Something an operator must see without asking (a backend failing, a shadow cut
    /// off): logged at `Warn`, at most [`WARNINGS_PER_SECOND`] a second; the lines over
    /// that are counted and the count goes out with the next one.
    pub(crate) fn warn(&self, session: Option<u64>, line: fmt::Arguments<'_>) {
        if !log::log_enabled!(target: LOG_TARGET, Level::Warn) {
            return;
        }
        let Some(suppressed) = self.warnings.admit() else {
            return;
        };
        let label = &self.options.label;
        let session = session.map(|id| format!(" #{id}")).unwrap_or_default();
        if suppressed > 0 {
            log::warn!(target: LOG_TARGET, "{label}{session}: {line} ({suppressed} more warnings were not logged)");
        } else {
            log::warn!(target: LOG_TARGET, "{label}{session}: {line}");
        }
    }
}

/// The `log` target of every line the proxy library writes.
pub const LOG_TARGET: &str = "ember::proxy";

/// How many warnings a proxy server logs per second at most (see `Config::warn`).
pub const WARNINGS_PER_SECOND: u32 = 10;

/// How many shadows, each reserving `reservation` bytes, may be open at once, from the
/// limits or their defaults.
fn max_shadows(options: &Options, reservation: usize) -> usize {
    let by_descriptors = options.shadow_max_connections.unwrap_or_else(|| {
        usize::try_from(crate::limits::descriptor_limit() / 4).unwrap_or(usize::MAX)
    });
    let memory = options
        .shadow_max_memory
        .unwrap_or_else(super::shadowing::default_max_memory);
    by_descriptors.min(memory / reservation.max(1))
}
