//! The client connection (em-proxy's `ProxyServer::Connection`, the "plexer"): it runs
//! the user's setup when a client is accepted, calls the hooks as bytes and backend
//! events arrive, and wraps every hook call with the rules in `core` (relay, backpressure,
//! FIN, closing). Backends reach it by id through [`Reactor::with_handler`](crate::Reactor::with_handler).
//!
//! It owns the hooks its setup installed, the user's per-client state, and the client's
//! `Core`. Hooks never run after the client's connection has ended.

use std::rc::Rc;

use crate::{ConnId, Context, Handler, PeerClosed, Reactor, UnbindReason};

use super::backend::{self, BackendConn};
use super::config::Config;
use super::core::{BackendEntry, Core};
use super::dispatch::is_connect_failure;
use super::hooks::{Finish, Relay};
use super::proxy_protocol::{self, Parsed};
use super::session::{Hooks, Session, Setup, SharedSetup};

pub(crate) struct Client<S> {
    pub(crate) core: Core,
    hooks: Hooks<S>,
    state: S,
    setup: SharedSetup<S>,
}

impl<S: 'static> Client<S> {
    pub(crate) fn new(config: Rc<Config>, setup: SharedSetup<S>, state: S) -> Client<S> {
        // The real id is only known in post_init; until then nothing uses it.
        let unborn = ConnId {
            slot: usize::MAX,
            serial: 0,
        };
        Client {
            core: Core::new(unborn, config),
            hooks: Hooks::default(),
            state,
            setup,
        }
    }

    /// Splits the client into a session for a hook and the hooks themselves.
    fn session<'a>(&'a mut self, r: &'a mut Reactor) -> (Session<'a, S>, &'a mut Hooks<S>) {
        let Client {
            core, hooks, state, ..
        } = self;
        (
            Session {
                reactor: r,
                core,
                state,
            },
            hooks,
        )
    }

    /// Runs the user's setup for this client: it names the backends and installs hooks.
    fn run_setup(&mut self, cx: &mut Context<'_>) {
        // Setups never nest: a client is accepted by the loop, never inside a callback.
        let setup = Rc::clone(&self.setup);
        let (session, hooks) = self.session(cx);
        (*setup.borrow_mut())(&mut Setup { session, hooks });
        self.core.after_hook(cx);
    }

    /// With `accept_proxy`: gathers the client's first bytes until they make a PROXY
    /// header, then takes the addresses it names, runs the setup and hands on whatever
    /// followed the header. Anything else closes the client.
    fn read_proxy_header(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let Some(received) = self.core.pending_header.as_mut() else {
            return;
        };
        received.extend_from_slice(data);
        match proxy_protocol::parse(received) {
            Parsed::Incomplete => {}
            Parsed::Invalid(e) => {
                self.core.pending_header = None;
                let peer = self.core.record.client.map(|a| a.to_string());
                self.core.warn(format_args!(
                    "client {} closed: no PROXY protocol header ({e})",
                    peer.as_deref().unwrap_or("-")
                ));
                cx.close();
            }
            Parsed::Done { header, consumed } => {
                let rest = received.split_off(consumed);
                self.core.pending_header = None;
                let record = &mut self.core.record;
                let via = record.client;
                // A LOCAL header (the balancer's own health check) names no one: keep ours.
                record.client = header.source.or(record.client);
                record.listener = header.destination.or(record.listener);
                if let (Some(client), Some(via)) = (self.core.record.client, via) {
                    self.core
                        .event(format_args!("client {client} (PROXY header from {via})"));
                }
                if self.core.config.options.tls.is_some() {
                    // What followed the header is the start of the TLS handshake.
                    if self.start_tls(cx, &rest) {
                        self.run_setup(cx);
                    }
                    return;
                }
                self.run_setup(cx);
                if !rest.is_empty() {
                    self.receive_data(cx, &rest);
                }
            }
        }
    }

    /// With `Options::tls`: starts terminating TLS, `early` being ciphertext already read.
    /// Returns `false` (the client closed, with a warning) if it could not start.
    fn start_tls(&mut self, cx: &mut Context<'_>, early: &[u8]) -> bool {
        let Some(tls) = self.core.config.options.tls.clone() else {
            return true;
        };
        let id = cx.id();
        match cx.start_tls_server(tls) {
            Ok(()) => {
                if !early.is_empty() {
                    cx.tls_received_early(id, early);
                }
                true
            }
            Err(e) => {
                self.core.warn(format_args!("TLS could not start: {e}"));
                cx.close();
                false
            }
        }
    }

    /// Runs the callback of a deferred job or timer a hook started.
    pub(crate) fn run_job(&mut self, cx: &mut Context<'_>, job: impl FnOnce(&mut Session<'_, S>)) {
        self.core.job_finished();
        self.run_in_session(cx, job);
    }

    /// Runs `job` with this client's session, as a hook (a `SessionHandle` came back).
    pub(crate) fn run_in_session(
        &mut self,
        cx: &mut Context<'_>,
        job: impl FnOnce(&mut Session<'_, S>),
    ) {
        let (mut session, _) = self.session(cx);
        job(&mut session);
        self.core.after_hook(cx);
    }

    pub(crate) fn backend_connected(&mut self, cx: &mut Context<'_>, id: ConnId) {
        let Some(i) = self.core.by_id(id) else {
            return;
        };
        let backend = &mut self.core.backends[i];
        backend.replay = None; // connected: a failure from here on is not retried
        backend.connected = true;
        let took = backend.opened_at.elapsed();
        backend.connect_time = Some(took);
        if let (Some(dispatch), Ok(target)) = (&backend.spec.dispatch, &backend.spec.target) {
            dispatch.connected(target);
        }
        if backend.relay_client_on_connect && self.core.relay_client.is_none() {
            backend.relay_client_on_connect = false;
            let bufsize = self.core.config.options.relay_bufsize;
            cx.reactor()
                .proxy_incoming_to(self.core.client, id, bufsize);
            self.core.relay_client = Some(id);
        }
        let name = Rc::clone(&self.core.backends[i].name);
        self.core.event(format_args!(
            "server `{name}` connected in {:.1} ms",
            took.as_secs_f64() * 1000.0
        ));
        let (mut session, hooks) = self.session(cx);
        if let Some(hook) = hooks.on_connect.as_mut() {
            hook(&mut session, &name);
        }
        self.core.after_hook(cx);
    }

    /// Hands backend `id`'s bytes to `on_response` or the client. Returns whether
    /// anything wants them: `false` for a shadow nobody inspects, whose later bytes can be
    /// dropped unread.
    pub(crate) fn backend_data(&mut self, cx: &mut Context<'_>, id: ConnId, data: &[u8]) -> bool {
        let Some(i) = self.core.by_id(id) else {
            return true;
        };
        self.core.backends[i].bytes_received += data.len() as u64;
        let backend = &self.core.backends[i];
        let (name, shadow) = (Rc::clone(&backend.name), backend.shadow);
        // A `relay_server` backend the descriptor relay does not carry (not the only
        // primary) is copied here, still without `on_response`.
        let unhooked = backend.relay_server && !shadow;
        let (mut session, hooks) = self.session(cx);
        let wanted = !(shadow && hooks.on_response.is_none());
        match hooks.on_response.as_mut() {
            _ if unhooked => {
                session.core.send_to_client(session.reactor, data);
            }
            None if shadow => {}
            None => {
                session.core.send_to_client(session.reactor, data);
            }
            Some(hook) => {
                let answer = hook(&mut session, &name, data);
                if let (Some(answer), false) = (answer, shadow) {
                    session.core.send_to_client(session.reactor, &answer);
                }
            }
        }
        self.core.after_hook(cx);
        wanted
    }

    /// Backend `id` sent FIN (see `Core::backend_sent_fin`).
    pub(crate) fn backend_sent_fin(&mut self, cx: &mut Context<'_>, id: ConnId) {
        if let Some(i) = self.core.by_id(id) {
            let name = &self.core.backends[i].name;
            self.core.event(format_args!("server `{name}` sent FIN"));
        }
        self.core.backend_sent_fin(cx, id);
    }

    pub(crate) fn backend_finished(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        reason: UnbindReason,
    ) {
        let Some(i) = self.core.by_id(id) else {
            return;
        };
        let backend = self.core.backends.remove(i);
        // A connect that failed may be retried: it goes in the record only if not.
        let may_retry = !backend.connected && is_connect_failure(&reason);
        if !may_retry {
            self.core.retire(cx, &backend, &reason);
        }
        if self.core.relay_client == Some(id) {
            self.core.relay_client = None;
        }
        if self.core.relay_server == Some(id) {
            self.core.relay_server = None;
        }
        if may_retry {
            if self.retry(cx, &backend, &reason) {
                return;
            }
            self.core.retire(cx, &backend, &reason);
        }
        if let UnbindReason::TlsFailed(why) = &reason {
            // A backend that fails verification is a misconfiguration to hear about.
            let name = &backend.name;
            self.core
                .warn(format_args!("server `{name}`: TLS failed: {why}"));
        }
        self.finish(cx, &backend.name, backend.shadow, reason);
    }

    /// A backend that never connected failed: tell its dispatch, and if tries remain,
    /// open the next one (where the dispatch says) under the same name and replay what
    /// the client sent. Returns whether a retry is under way.
    fn retry(
        &mut self,
        cx: &mut Context<'_>,
        failed: &BackendEntry,
        reason: &UnbindReason,
    ) -> bool {
        let spec = &failed.spec;
        let Ok(target) = &spec.target else {
            return false;
        };
        let next = match &spec.dispatch {
            Some(dispatch) => dispatch.failed(target, reason),
            None => Some(target.clone()),
        };
        let (Some(replay), Some(next)) = (&failed.replay, next) else {
            return false;
        };
        if spec.retries == 0 || self.core.closing {
            return false;
        }
        let name = &failed.name;
        let left = spec.retries - 1;
        self.core.warn(format_args!(
            "server `{name}` at {target} failed to connect ({reason}); retrying at {next} ({left} retries left)"
        ));
        self.core.config.stats.backend_retried();
        let retry = spec.at(next).retries(left);
        let Some(id) = backend::open::<S>(cx, &mut self.core, name, retry) else {
            return false;
        };
        if let Some(i) = self.core.by_id(id) {
            let next_try = &mut self.core.backends[i];
            next_try.retries = failed.retries + 1;
            next_try.opened_at = failed.opened_at;
            self.core.send_to_backend(cx, i, replay);
        }
        self.core.after_hook(cx);
        true
    }

    /// A backend is gone (or never came): `on_finish`, then what it decided.
    pub(crate) fn finish(
        &mut self,
        cx: &mut Context<'_>,
        name: &str,
        shadow: bool,
        reason: UnbindReason,
    ) {
        self.core
            .event(format_args!("server `{name}` finished: {reason}"));
        let (mut session, hooks) = self.session(cx);
        let finish = match hooks.on_finish.as_mut() {
            Some(hook) => hook(&mut session, name, reason),
            None => Finish::WhenAllDone,
        };
        self.core.after_finish(cx, shadow, finish);
    }
}

impl<S: 'static> Handler for Client<S> {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.core.client = cx.id();
        // Reading the client is governed by the primary backends' queues (core.rs), not
        // by the client's own queue.
        cx.set_read_backpressure(false);
        let config = Rc::clone(&self.core.config);
        if config.options.nodelay {
            let _ = cx.set_nodelay(true);
        }
        cx.set_half_close_timeout(config.options.fin_timeout);
        cx.set_comm_inactivity_timeout(config.options.client_timeout);
        config.client_arrived(cx);
        self.core.session = config.next_session();
        let record = &mut self.core.record;
        record.client = cx.peer_addr();
        record.listener = cx.local_addr();
        match record.client {
            Some(peer) => self.core.event(format_args!("client {peer} connected")),
            None => self
                .core
                .event(format_args!("client {} connected", cx.id())),
        }
        if config.options.accept_proxy {
            // The setup waits for the PROXY header: it may use the client's address.
            self.core.pending_header = Some(Vec::new());
            return;
        }
        if !self.start_tls(cx, &[]) {
            return;
        }
        self.run_setup(cx);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        if self.core.pending_header.is_some() {
            self.read_proxy_header(cx, data);
            return;
        }
        self.core.config.stats.read_from_client(data.len());
        self.core.record.bytes_from_client += data.len() as u64;
        if let Some(i) = self.core.relay_client.and_then(|id| self.core.by_id(id)) {
            // The reactor refused the descriptor relay: copy, still without `on_data`.
            self.core.send_to_backend(cx, i, data);
            self.core.after_hook(cx);
            return;
        }
        let (mut session, hooks) = self.session(cx);
        match hooks.on_data.as_mut() {
            None => session.core.send_all(session.reactor, data),
            Some(hook) => {
                let relay = hook(&mut session, data);
                if relay == Relay::Unchanged {
                    session.core.send_all(session.reactor, data);
                }
                session.core.apply(session.reactor, relay);
            }
        }
        self.core.after_hook(cx);
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        self.core.client_eof = true;
        self.core.event(format_args!("client sent FIN"));
        self.core.after_hook(cx);
        PeerClosed::KeepWriting
    }

    fn tls_handshake_completed(&mut self, cx: &mut Context<'_>) {
        let info = cx.tls_info();
        if let Some(info) = &info {
            let sni = info.server_name.as_deref().unwrap_or("-");
            let protocol = info.protocol.as_deref().unwrap_or("-");
            self.core.event(format_args!(
                "client TLS handshake done ({protocol}, SNI {sni})"
            ));
        }
        self.core.record.tls = info;
    }

    fn outbound_drained(&mut self, cx: &mut Context<'_>) {
        self.core.resume_backends(cx);
        self.core.maybe_resume_client(cx);
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let config = Rc::clone(&self.core.config);
        config.client_left(cx);
        // What the descriptor relay carried from this client (`relay_client`).
        let relayed = cx.proxied_bytes();
        config.stats.relayed_from_client(relayed);
        self.core.record.bytes_from_client += relayed;
        self.core.event(format_args!("client gone: {reason}"));
        for backend in std::mem::take(&mut self.core.backends) {
            let _ = cx.with_handler::<BackendConn<S>, _>(backend.id, |b, bcx| b.detach(bcx));
            // As in em-proxy, every backend gets its `on_finish`: one still attached when
            // the client goes is finished as far as this client is concerned (it drains
            // on its own: FIN after its queue).
            let reason = if backend.sent_fin {
                UnbindReason::PeerClosed
            } else {
                UnbindReason::ClosedByUs
            };
            self.core.retire(cx, &backend, &reason);
            self.finish(cx, &backend.name, backend.shadow, reason);
        }
        if let Some(log) = &config.options.session_log {
            let record = self.core.record.finish(self.core.session, reason);
            (log.0)(&record);
        }
    }
}
