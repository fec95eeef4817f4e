//! What one client connection knows about its backends, and the rules that hold whatever
//! the hooks do: relaying to backends, backpressure both ways, cutting off a shadow that
//! falls behind, passing the client's FIN on, and when the client closes.
//!
//! Not generic over the user's state, so the rules are written (and compiled) once;
//! `Client<S>` wraps this with the hooks. Everything here acts through the public
//! reactor API on connection ids; nothing here calls a hook.

use std::rc::Rc;

use crate::{ConnId, Reactor};

use super::hooks::{Finish, Relay};
use super::server::Config;

/// One live backend of a client.
pub(crate) struct BackendEntry {
    pub(crate) name: Rc<str>,
    pub(crate) id: ConnId,
    pub(crate) shadow: bool,
    /// Its bytes go to the client without `on_response`.
    pub(crate) relay_server: bool,
}

pub(crate) struct Core {
    pub(crate) client: ConnId,
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
    /// Deferred jobs, timers and failure reports whose callbacks have not run yet.
    pub(crate) outstanding: usize,
    /// Primary backends are paused because the client's queue is above its high-water mark.
    pub(crate) backends_paused: bool,
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
            backends_paused: false,
        }
    }

    pub(crate) fn index_of(&self, id: ConnId) -> Option<usize> {
        self.backends.iter().position(|b| b.id == id)
    }

    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
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
                for name in &names {
                    if let Some(i) = self.position(name) {
                        self.send_to_backend(r, i, &data);
                    }
                }
            }
            Relay::Drop => self.held = false,
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
        let backend = &self.backends[i];
        if !r.send_to(backend.id, data) {
            return; // closing or gone; its unbind will report it
        }
        if backend.shadow {
            let queued = r.outbound_size(backend.id);
            let stats = &self.config.stats;
            stats.shadow_queue(queued);
            if queued > self.config.options.shadow_buffer {
                r.close_connection(backend.id);
                stats.shadow_cut_off();
                self.config.log(format_args!(
                    "shadow `{}` cut off: {queued} bytes waiting, limit {} (cut-offs so far: {})",
                    backend.name,
                    self.config.options.shadow_buffer,
                    stats.shadow_cutoffs()
                ));
            }
        } else if r.is_above_high_water(backend.id) && !r.is_paused(self.client) {
            r.pause_connection(self.client);
        }
    }

    /// Sends bytes to the client and pauses the primary backends if that filled it.
    pub(crate) fn send_to_client(&mut self, r: &mut Reactor, data: &[u8]) -> bool {
        if !r.send_to(self.client, data) {
            return false;
        }
        self.config.stats.queued_for_client(data.len());
        if r.is_above_high_water(self.client) {
            self.pause_backends(r);
        }
        true
    }

    /// Resumes reading the client if no primary backend is above its high-water mark.
    pub(crate) fn maybe_resume_client(&mut self, r: &mut Reactor) {
        if self.closing || !r.is_paused(self.client) {
            return;
        }
        let full = self
            .backends
            .iter()
            .any(|b| !b.shadow && r.is_above_high_water(b.id));
        if !full {
            r.resume_connection(self.client);
        }
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

    /// After any hook: once the client has sent FIN and nothing is held back, pass the
    /// FIN on to every backend (each sends it after what is queued), or close the client
    /// if it has no backend left.
    pub(crate) fn after_hook(&mut self, r: &mut Reactor) {
        if !self.client_eof || self.held || self.outstanding > 0 || self.closing {
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
                let primaries_left = self.backends.iter().any(|b| !b.shadow);
                let done = !primaries_left && (!was_shadow || self.backends.is_empty());
                if done && !self.held && self.outstanding == 0 {
                    self.close_client(r);
                }
            }
        }
        self.maybe_resume_client(r);
        self.after_hook(r);
    }
}
