//! What one client connection knows about its backends and its waiting jobs, and the
//! rules that hold whatever the hooks do: relaying to backends, backpressure both ways,
//! cutting off a shadow that falls behind, passing the client's FIN on, and when the
//! client closes. `Core` is the only owner of the count of deferred jobs and timers in
//! flight (`job_started` / `job_finished`).
//!
//! Not generic over the user's state, so the rules are written (and compiled) once;
//! `Client<S>` wraps this with the hooks. Everything here acts through the public
//! reactor API on connection ids; nothing here calls a hook.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use crate::{ConnId, Reactor, UnbindReason};

use super::config::Config;
use super::hooks::{Finish, Relay};
use super::record::{BackendRecord, SessionRecord};
use super::target::Backend;

/// How many deferred jobs and timers one client may have waiting before it stops being
/// read: a hook that defers once per chunk cannot queue work without bound.
const MAX_OUTSTANDING_JOBS: usize = 64;

/// One live backend of a client.
pub(crate) struct BackendEntry {
    pub(crate) name: Rc<str>,
    pub(crate) id: ConnId,
    pub(crate) shadow: bool,
    /// Its bytes go to the client without `on_response`.
    pub(crate) relay_server: bool,
    /// It sent FIN: it will answer nothing more, but may still read.
    pub(crate) sent_fin: bool,
    /// A shadow's backlog that does not count as falling behind: everything while it
    /// connects (up to `Config::shadow_reservation`), then the smallest queue seen since
    /// (what was queued before the connect, as the shadow works it off).
    pub(crate) forgiven: usize,
    /// How it was opened: what a retry reopens, and who hears how the connect ends.
    pub(crate) spec: Backend,
    /// Its connect has completed.
    pub(crate) connected: bool,
    /// While a backend with retries is still connecting: everything sent to it, to
    /// replay to the next try if this one fails. `None` once connected (or without
    /// retries). Bounded like the backend's queue it mirrors: the client is paused when
    /// that is above its high-water mark.
    pub(crate) replay: Option<Vec<u8>>,
    /// Take the client's bytes through the descriptor relay once connected (a
    /// `relay_client` backend with retries copies until then, so it can replay).
    pub(crate) relay_client_on_connect: bool,
    /// When its first try started (a retry keeps it): connect times count retries.
    pub(crate) opened_at: Instant,
    /// How long the connect took, once it succeeded.
    pub(crate) connect_time: Option<Duration>,
    /// Retries made before this try.
    pub(crate) retries: u32,
    /// Bytes copied to it (the descriptor relay's are added when it ends).
    pub(crate) bytes_sent: u64,
    /// Bytes copied from it (likewise).
    pub(crate) bytes_received: u64,
    /// A shadow cut off for falling behind.
    pub(crate) cut_off: bool,
}

/// The session's record while it runs (see `record.rs`).
pub(crate) struct Tally {
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) listener: Option<SocketAddr>,
    pub(crate) bytes_from_client: u64,
    pub(crate) bytes_to_client: u64,
    pub(crate) tls: Option<crate::tls::TlsInfo>,
    /// Backends done so far.
    pub(crate) backends: Vec<BackendRecord>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            started: Instant::now(),
            started_at: SystemTime::now(),
            client: None,
            listener: None,
            bytes_from_client: 0,
            bytes_to_client: 0,
            tls: None,
            backends: Vec::new(),
        }
    }
}

impl Tally {
    /// The finished record, for a session `id` whose client ended with `end`.
    pub(crate) fn finish(&mut self, id: u64, end: UnbindReason) -> SessionRecord {
        SessionRecord {
            id,
            client: self.client,
            listener: self.listener,
            started: self.started_at,
            duration: self.started.elapsed(),
            bytes_from_client: self.bytes_from_client,
            bytes_to_client: self.bytes_to_client,
            client_end: end,
            tls: self.tls.take(),
            backends: std::mem::take(&mut self.backends),
        }
    }
}

pub(crate) struct Core {
    pub(crate) client: ConnId,
    /// The session's id in log lines (`#id`) and its record.
    pub(crate) session: u64,
    /// What the access log will say about the session, filled in as it runs.
    pub(crate) record: Tally,
    pub(crate) config: Rc<Config>,
    pub(crate) backends: Vec<BackendEntry>,
    /// The backend that takes the client's bytes unchanged (`relay_client`).
    pub(crate) relay_client: Option<ConnId>,
    /// The backend whose bytes the reactor relays to the client (`relay_server`).
    pub(crate) relay_server: Option<ConnId>,
    /// The client sent FIN.
    pub(crate) client_eof: bool,
    /// We asked the client to close once its queue is written.
    pub(crate) closing: bool,
    /// The last relay decision was `Relay::Later`: bytes are held back, so the client's
    /// FIN must wait.
    pub(crate) held: bool,
    /// Deferred jobs, timers and failure reports whose callbacks have not run yet. Only
    /// `job_started` and `job_finished` change it.
    outstanding: usize,
    /// `Finish::WhenAllDone` found no primary left while bytes were held or jobs were
    /// outstanding: close the client once they are done.
    pub(crate) close_when_done: bool,
    /// Primary backends are paused because the client's queue is above its high-water mark.
    pub(crate) backends_paused: bool,
    /// A hook paused the client (`Session::pause_client`) until it resumes it.
    pub(crate) parked: bool,
    /// With `accept_proxy`, until the PROXY header is in: what the client sent so far.
    /// The setup has not run yet.
    pub(crate) pending_header: Option<Vec<u8>>,
}

impl Core {
    pub(crate) fn new(client: ConnId, config: Rc<Config>) -> Core {
        Core {
            client,
            config,
            backends: Vec::new(),
            relay_client: None,
            relay_server: None,
            client_eof: false,
            closing: false,
            held: false,
            outstanding: 0,
            close_when_done: false,
            backends_paused: false,
            parked: false,
            pending_header: None,
            session: 0,
            record: Tally::default(),
        }
    }

    /// A routine event of this session, for the log (see `Config::event`).
    pub(crate) fn event(&self, line: std::fmt::Arguments<'_>) {
        self.config.event(self.session, line);
    }

    /// A warning about this session, for the log (see `Config::warn`).
    pub(crate) fn warn(&self, line: std::fmt::Arguments<'_>) {
        self.config.warn(Some(self.session), line);
    }

    /// Backend entry `backend` is done (ended, or the client left while it was open):
    /// its part of the session's record, with what the descriptor relay carried for it.
    pub(crate) fn retire(&mut self, r: &Reactor, backend: &BackendEntry, end: &UnbindReason) {
        let from_backend = r.proxied_bytes(backend.id);
        let to_backend = if self.relay_client == Some(backend.id) {
            r.proxied_bytes(self.client)
        } else {
            0
        };
        if !backend.shadow {
            self.record.bytes_to_client += from_backend;
        }
        if self.config.options.session_log.is_none() {
            return; // nobody reads the record: no strings to build per backend
        }
        self.record.backends.push(BackendRecord {
            name: backend.name.to_string(),
            target: backend.spec.target_text(),
            shadow: backend.shadow,
            retries: backend.retries,
            connect_time: backend.connect_time,
            bytes_sent: backend.bytes_sent + to_backend,
            bytes_received: backend.bytes_received + from_backend,
            end: end.clone(),
            cut_off: backend.cut_off,
        });
    }

    /// The position in `backends` of the backend with connection id `id`.
    pub(crate) fn by_id(&self, id: ConnId) -> Option<usize> {
        self.backends.iter().position(|b| b.id == id)
    }

    /// The position in `backends` of the live backend called `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
    }

    fn primaries(&self) -> impl Iterator<Item = &BackendEntry> {
        self.backends.iter().filter(|b| !b.shadow)
    }

    /// Acts on what `on_data` returned (or what a hook passed to `relay_to_servers`).
    pub(crate) fn apply(&mut self, r: &mut Reactor, relay: Relay) {
        match relay {
            Relay::All(data) => {
                self.held = false;
                self.send_all(r, &data);
            }
            Relay::To(data, names) => {
                self.held = false;
                // A name given twice still gets the bytes once.
                let mut chosen: Vec<usize> =
                    names.iter().filter_map(|name| self.by_name(name)).collect();
                chosen.sort_unstable();
                chosen.dedup();
                // Sending may cut off a shadow, but never removes an entry (that waits for
                // its unbind), so the positions stay valid.
                for i in chosen {
                    self.send_to_backend(r, i, &data);
                }
            }
            Relay::Drop | Relay::Unchanged => self.held = false,
            Relay::Later => self.held = true,
        }
    }

    pub(crate) fn send_all(&mut self, r: &mut Reactor, data: &[u8]) {
        for i in 0..self.backends.len() {
            self.send_to_backend(r, i, data);
        }
    }

    /// Queues `data` for backend `i` and applies the backend's side of the rules: a full
    /// primary pauses the client; a shadow over its buffer is cut off.
    pub(crate) fn send_to_backend(&mut self, r: &mut Reactor, i: usize, data: &[u8]) {
        let backend = &mut self.backends[i];
        if !r.send_to(backend.id, data) {
            return; // closing or gone; its unbind will report it
        }
        backend.bytes_sent += data.len() as u64;
        if let Some(replay) = backend.replay.as_mut() {
            replay.extend_from_slice(data);
        }
        if backend.shadow {
            let queued = r.outbound_size(backend.id);
            let limit = if r.is_connected(backend.id) {
                backend.forgiven = backend.forgiven.min(queued);
                self.config.options.shadow_buffer.max(backend.forgiven)
            } else {
                self.config.shadow_reservation
            };
            let stats = &self.config.stats;
            stats.shadow_queue(queued);
            if queued > limit {
                r.close_connection(backend.id);
                backend.cut_off = true;
                stats.shadow_cut_off();
                self.config.warn(
                    Some(self.session),
                    format_args!(
                        "shadow `{}` cut off: {queued} bytes waiting, limit {limit} (cut-offs so far: {})",
                        backend.name,
                        stats.shadow_cutoffs()
                    ),
                );
            }
        } else if r.is_above_high_water(backend.id) {
            self.pause_client(r);
        }
    }

    /// Sends bytes to the client. If that filled its queue, the primary backends are
    /// paused, and so is the client itself: a hook that answers the client from its own
    /// bytes must not grow the queue of a client that does not read.
    pub(crate) fn send_to_client(&mut self, r: &mut Reactor, data: &[u8]) -> bool {
        if !r.send_to(self.client, data) {
            return false;
        }
        self.record.bytes_to_client += data.len() as u64;
        self.config.stats.queued_for_client(data.len());
        if r.is_above_high_water(self.client) {
            self.pause_backends(r);
            self.pause_client(r);
        }
        true
    }

    fn pause_client(&mut self, r: &mut Reactor) {
        if !r.is_paused(self.client) {
            r.pause_connection(self.client);
        }
    }

    /// Whether the client must not be read now: a hook paused it, a primary backend's
    /// queue or its own is above the high-water mark, or too many jobs are waiting.
    fn client_must_wait(&self, r: &Reactor) -> bool {
        self.parked
            || r.is_above_high_water(self.client)
            || self.outstanding > MAX_OUTSTANDING_JOBS
            || self.primaries().any(|b| r.is_above_high_water(b.id))
    }

    /// Resumes reading the client unless something still holds it back.
    pub(crate) fn maybe_resume_client(&mut self, r: &mut Reactor) {
        if self.closing || !r.is_paused(self.client) || self.client_must_wait(r) {
            return;
        }
        r.resume_connection(self.client);
    }

    /// A deferred job, timer or failure report was started for this client: until
    /// `job_finished`, it holds the client's FIN back and a `WhenAllDone` waits, and too
    /// many of them stop the client being read.
    pub(crate) fn job_started(&mut self, r: &mut Reactor) {
        self.outstanding += 1;
        if self.outstanding > MAX_OUTSTANDING_JOBS {
            self.pause_client(r);
        }
    }

    /// A job from `job_started` ran its callback or was called off. Whoever calls this
    /// runs `after_hook` (directly or through `after_finish`) before returning to the
    /// loop, which resumes the client and passes its FIN on if that was all it waited for.
    pub(crate) fn job_finished(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    fn pause_backends(&mut self, r: &mut Reactor) {
        if self.backends_paused {
            return;
        }
        self.backends_paused = true;
        for b in self.backends.iter().filter(|b| !b.shadow) {
            r.pause_connection(b.id);
        }
    }

    /// The client's queue drained to its low-water mark: read the primaries again.
    pub(crate) fn resume_backends(&mut self, r: &mut Reactor) {
        if !self.backends_paused {
            return;
        }
        self.backends_paused = false;
        for b in self.backends.iter().filter(|b| !b.shadow) {
            r.resume_connection(b.id);
        }
    }

    pub(crate) fn close_client(&mut self, r: &mut Reactor) {
        if !self.closing {
            self.closing = true;
            r.close_connection_after_writing(self.client);
        }
    }

    /// Backend `id` sent FIN. Once every primary has, the client gets FIN (after what is
    /// queued for it) but stays open for reading: what it sends still reaches the
    /// backends, which end when both their halves are shut.
    pub(crate) fn backend_sent_fin(&mut self, r: &mut Reactor, id: ConnId) {
        if let Some(i) = self.by_id(id) {
            self.backends[i].sent_fin = true;
        }
        self.pass_backends_fin(r);
    }

    fn pass_backends_fin(&mut self, r: &mut Reactor) {
        let mut primaries = self.primaries().peekable();
        if primaries.peek().is_some() && primaries.all(|b| b.sent_fin) {
            r.close_write(self.client);
        }
    }

    /// After any hook or job: close the client if a `WhenAllDone` was waiting for it,
    /// pass the client's FIN on, and read the client again if nothing holds it back.
    pub(crate) fn after_hook(&mut self, r: &mut Reactor) {
        self.close_if_done(r);
        self.pass_client_fin(r);
        self.maybe_resume_client(r);
    }

    fn waiting_for_hooks(&self) -> bool {
        self.held || self.outstanding > 0
    }

    /// A `WhenAllDone` that had to wait for held bytes or jobs: close now if they are
    /// done and no primary came along meanwhile.
    fn close_if_done(&mut self, r: &mut Reactor) {
        if self.close_when_done && !self.waiting_for_hooks() && self.primaries().next().is_none() {
            self.close_client(r);
        }
    }

    /// Once the client has sent FIN and nothing is held back, passes the FIN on to every
    /// backend (each sends it after what is queued), or closes the client if it has no
    /// backend left.
    fn pass_client_fin(&mut self, r: &mut Reactor) {
        if !self.client_eof || self.waiting_for_hooks() || self.closing {
            return;
        }
        if self.backends.is_empty() {
            self.close_client(r);
            return;
        }
        for b in &self.backends {
            r.close_write(b.id);
        }
    }

    /// A backend is gone (already removed from the table) and `on_finish` said `finish`.
    pub(crate) fn after_finish(&mut self, r: &mut Reactor, was_shadow: bool, finish: Finish) {
        match finish {
            Finish::Close => self.close_client(r),
            Finish::Keep => {}
            Finish::WhenAllDone => {
                let primaries_left = self.primaries().next().is_some();
                let done = !primaries_left && (!was_shadow || self.backends.is_empty());
                if done {
                    // Held bytes or a pending job may still relay or answer: close once
                    // they are done (`close_if_done`).
                    self.close_when_done = true;
                }
            }
        }
        if !was_shadow {
            // The primaries still open may all have sent FIN already.
            self.pass_backends_fin(r);
        }
        self.after_hook(r);
    }
}
