//! What a hook can do ([`Session`]), what the per-client setup closure can do on top of
//! that ([`Setup`]: install the hooks), and the hooks it installs (`Hooks`).
//!
//! em-proxy's hooks are Ruby blocks closing over `conn`; here every hook receives a
//! `&mut Session` for the client it serves: its addresses, its per-client state, sending
//! to the client, relaying to backends, opening more backends, deferring work. A session
//! only lives for one hook call; it borrows the client's bookkeeping and the reactor.
//! The client connection (`client.rs`) owns the `Hooks` and calls them.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::time::Duration;

use crate::{ConnId, DeferPanic, Reactor, TimerId, UnbindReason};

use super::backend;
use super::client::Client;
use super::core::Core;
use super::hooks::{Finish, Relay};
use super::target::Backend;

/// A timer started with [`Session::add_timer`]; call it off with
/// [`Session::cancel_timer`] (not through the reactor, which would leave the client's
/// FIN held back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimer(TimerId);

/// One client connection as its hooks see it.
pub struct Session<'a, S = ()> {
    pub(crate) reactor: &'a mut Reactor,
    pub(crate) core: &'a mut Core,
    pub(crate) state: &'a mut S,
}

impl<S: 'static> Session<'_, S> {
    /// This client's state, made when it was accepted (see
    /// [`start_with_state`](super::start_with_state)).
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// The client connection's id.
    pub fn client_id(&self) -> ConnId {
        self.core.client
    }

    /// The client's address (em-proxy's `peer`): the one a PROXY header gave, with
    /// [`Options::accept_proxy`](super::Options::accept_proxy).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.core.record.client
    }

    /// The local address the client connected to (em-proxy's `sock`); with
    /// [`Options::accept_proxy`](super::Options::accept_proxy), the destination the
    /// PROXY header gave.
    pub fn sock(&self) -> Option<SocketAddr> {
        self.core.record.listener
    }

    /// Sends bytes to the client. Returns `false` if it is closing or gone.
    pub fn send_data(&mut self, data: &[u8]) -> bool {
        self.core.send_to_client(self.reactor, data)
    }

    /// Relays bytes to backends as [`Relay`] says, now (em-proxy's `relay_to_servers`).
    /// [`Relay::Later`] holds the client's FIN back until the next `All`, `To` or `Drop`.
    pub fn relay_to_servers(&mut self, relay: Relay) {
        self.core.apply(self.reactor, relay);
    }

    /// Opens a backend named `name` (em-proxy's `server(name, opts)`), now or at any later
    /// point of the client's life. Bytes relayed to it before it has connected are queued
    /// (bounded: the client is paused while a primary backend's queue is full) and sent
    /// on connect. Returns its connection id, or `None` if `name` is already taken by a
    /// live backend, the client is closing, or no socket could be made; a backend that
    /// cannot be reached reports through `on_finish` with the reason.
    pub fn server(&mut self, name: &str, backend: impl Into<Backend>) -> Option<ConnId> {
        backend::open::<S>(self.reactor, self.core, name, backend.into())
    }

    /// Half-closes backend `name`: it gets FIN once what was relayed to it is written; its
    /// answers still reach `on_response` until it closes, then `on_finish` runs.
    pub fn close_server(&mut self, name: &str) {
        if let Some(id) = self.backend_id(name) {
            self.reactor.close_write(id);
        }
    }

    /// The connection id of the live backend called `name`.
    pub fn backend_id(&self, name: &str) -> Option<ConnId> {
        self.core.by_name(name).map(|i| self.core.backends[i].id)
    }

    /// The names of the live backends, in the order they were opened.
    pub fn servers(&self) -> Vec<&str> {
        self.core.backends.iter().map(|b| &*b.name).collect()
    }

    /// Whether the client has sent FIN (it will send nothing more).
    pub fn client_finished_sending(&self) -> bool {
        self.core.client_eof
    }

    /// Closes the client once everything queued for it is written; its backends then get
    /// FIN after what was relayed to them.
    pub fn close(&mut self) {
        self.core.close_client(self.reactor);
    }

    /// Runs blocking `work` on the reactor's defer pool, then `then` with its result on
    /// the reactor thread, with this client's session again (`EM.defer` from a hook).
    /// Until `then` has run, the client's FIN is held back from the backends. If the
    /// client is gone by then, `then` does not run. While more than 64 jobs and timers
    /// are waiting, the client is not read.
    pub fn defer<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
        then: impl FnOnce(&mut Session<'_, S>, Result<T, DeferPanic>) + 'static,
    ) {
        self.core.job_started(self.reactor);
        let client = self.core.client;
        self.reactor.defer(work, move |r, result| {
            let _ = r.with_handler::<Client<S>, _>(client, move |c, cx| {
                c.run_job(cx, move |s| then(s, result));
            });
        });
    }

    /// Runs `then` with this client's session after `delay`. Until it has run (or is
    /// called off with [`cancel_timer`](Self::cancel_timer)), the client's FIN is held
    /// back from the backends. If the client is gone by then, `then` does not run.
    pub fn add_timer(
        &mut self,
        delay: Duration,
        then: impl FnOnce(&mut Session<'_, S>) + 'static,
    ) -> SessionTimer {
        self.core.job_started(self.reactor);
        let client = self.core.client;
        SessionTimer(self.reactor.add_timer(delay, move |r| {
            let _ = r.with_handler::<Client<S>, _>(client, move |c, cx| c.run_job(cx, then));
        }))
    }

    /// Calls off a timer from [`add_timer`](Self::add_timer): its callback will not run
    /// and it no longer holds the client's FIN back. Returns whether it was still pending.
    pub fn cancel_timer(&mut self, timer: SessionTimer) -> bool {
        if !self.reactor.cancel_timer(timer.0) {
            return false;
        }
        self.core.job_finished();
        // The session's owner runs `after_hook` when the hook returns.
        true
    }

    /// What the client's TLS handshake settled, on a listener that terminates TLS
    /// ([`Options::tls`](super::Options::tls)): protocol, ALPN, the SNI name asked for,
    /// the client's certificate chain with mutual TLS. `None` before the handshake is
    /// done (a hook runs once it is, since the client's bytes arrive after it).
    pub fn tls_info(&self) -> Option<crate::tls::TlsInfo> {
        self.reactor.tls_info(self.core.client)
    }

    /// This session's id: 1 for the server's first client, then in order of arrival;
    /// every log line about the session says `#id`, and its
    /// [`SessionRecord`](super::SessionRecord) carries it.
    pub fn session_id(&self) -> u64 {
        self.core.session
    }

    /// The reactor, for anything else (timers, other connections, stop).
    pub fn reactor(&mut self) -> &mut Reactor {
        self.reactor
    }

    /// Stops reading the client until [`resume_client`](Self::resume_client): what it
    /// sends waits in the kernel (and backpressure reaches it through TCP). For a setup
    /// that must wait for something before it opens a backend (a free slot, say), so
    /// that no byte arrives with nowhere to go.
    pub fn pause_client(&mut self) {
        self.core.parked = true;
        if !self.reactor.is_paused(self.core.client) {
            self.reactor.pause_connection(self.core.client);
        }
    }

    /// Reads the client again after [`pause_client`](Self::pause_client), unless
    /// backpressure still holds it back.
    pub fn resume_client(&mut self) {
        self.core.parked = false;
        self.core.maybe_resume_client(self.reactor);
    }

    /// A handle to come back to this session later from anywhere on the reactor thread
    /// (a pool's queue, another client's hook): see [`SessionHandle::run`].
    pub fn handle(&self) -> SessionHandle<S> {
        SessionHandle {
            client: self.core.client,
            state: PhantomData,
        }
    }
}

/// A way back into one client's session from outside its hooks, on the reactor thread.
/// Unlike [`Session::defer`] and [`Session::add_timer`], holding one does not hold the
/// client's FIN back.
pub struct SessionHandle<S> {
    client: ConnId,
    state: PhantomData<fn(S)>,
}

impl<S: 'static> SessionHandle<S> {
    /// Runs `job` with the session, as a hook; returns `false` (without running it) if
    /// the client is gone or is in a hook right now.
    pub fn run(&self, r: &mut Reactor, job: impl FnOnce(&mut Session<'_, S>)) -> bool {
        r.with_handler::<Client<S>, _>(self.client, move |c, cx| c.run_in_session(cx, job))
            .is_ok()
    }

    /// The client's connection id.
    pub fn client_id(&self) -> ConnId {
        self.client
    }
}

impl<S> Clone for SessionHandle<S> {
    fn clone(&self) -> Self {
        SessionHandle {
            client: self.client,
            state: PhantomData,
        }
    }
}

impl<S> fmt::Debug for SessionHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionHandle").field(&self.client).finish()
    }
}

impl<S> fmt::Debug for Session<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("client", &self.core.client)
            .field("backends", &self.core.backends.len())
            .finish()
    }
}

/// `on_data`: bytes from the client.
pub(crate) type OnData<S> = Box<dyn FnMut(&mut Session<'_, S>, &[u8]) -> Relay>;
/// `on_response`: bytes from a backend, by name; `None` drops them.
pub(crate) type OnResponse<S> = Box<dyn FnMut(&mut Session<'_, S>, &str, &[u8]) -> Option<Vec<u8>>>;
/// `on_connect`: a backend, by name, finished connecting.
pub(crate) type OnConnect<S> = Box<dyn FnMut(&mut Session<'_, S>, &str)>;
/// `on_finish`: a backend, by name, is gone, for a reason.
pub(crate) type OnFinish<S> = Box<dyn FnMut(&mut Session<'_, S>, &str, UnbindReason) -> Finish>;

/// The hooks a client connection's setup installed. A missing hook has a default:
/// pass-through for `on_data` and `on_response`, nothing for `on_connect`,
/// [`Finish::WhenAllDone`] for `on_finish`.
pub(crate) struct Hooks<S> {
    pub(crate) on_data: Option<OnData<S>>,
    pub(crate) on_response: Option<OnResponse<S>>,
    pub(crate) on_connect: Option<OnConnect<S>>,
    pub(crate) on_finish: Option<OnFinish<S>>,
}

impl<S> Default for Hooks<S> {
    fn default() -> Self {
        Hooks {
            on_data: None,
            on_response: None,
            on_connect: None,
            on_finish: None,
        }
    }
}

/// The setup closure of one proxy server, shared by all its clients.
pub(crate) type SharedSetup<S> = Rc<RefCell<dyn FnMut(&mut Setup<'_, S>)>>;

/// What the setup closure gets for each accepted client (em-proxy's `conn` in the
/// `Proxy.start` block): everything a [`Session`] can do, plus installing the hooks.
///
/// A hook not installed has a default: without `on_data` the client's bytes go to every
/// backend unchanged (pass-through), without `on_response` backend bytes go to the
/// client unchanged, without `on_finish` the client closes when no primary backend is
/// left ([`Finish::WhenAllDone`]).
pub struct Setup<'a, S = ()> {
    pub(crate) session: Session<'a, S>,
    pub(crate) hooks: &'a mut Hooks<S>,
}

impl<S: 'static> Setup<'_, S> {
    /// Called with each chunk of bytes from the client; returns what to relay.
    pub fn on_data(
        &mut self,
        hook: impl FnMut(&mut Session<'_, S>, &[u8]) -> Relay + 'static,
    ) -> &mut Self {
        self.hooks.on_data = Some(Box::new(hook));
        self
    }

    /// Called with each chunk of bytes from a backend, by name; returns what reaches the
    /// client (`None`: nothing). A shadow backend's bytes come here too, but never reach
    /// the client whatever this returns.
    pub fn on_response(
        &mut self,
        hook: impl FnMut(&mut Session<'_, S>, &str, &[u8]) -> Option<Vec<u8>> + 'static,
    ) -> &mut Self {
        self.hooks.on_response = Some(Box::new(hook));
        self
    }

    /// Called when a backend, by name, has connected.
    pub fn on_connect(
        &mut self,
        hook: impl FnMut(&mut Session<'_, S>, &str) + 'static,
    ) -> &mut Self {
        self.hooks.on_connect = Some(Box::new(hook));
        self
    }

    /// Called when a backend, by name, is gone — closed, refused, reset, unresolvable,
    /// timed out — with the reason; returns what happens to the client.
    pub fn on_finish(
        &mut self,
        hook: impl FnMut(&mut Session<'_, S>, &str, UnbindReason) -> Finish + 'static,
    ) -> &mut Self {
        self.hooks.on_finish = Some(Box::new(hook));
        self
    }
}

impl<'a, S> Deref for Setup<'a, S> {
    type Target = Session<'a, S>;

    fn deref(&self) -> &Session<'a, S> {
        &self.session
    }
}

impl<'a, S> DerefMut for Setup<'a, S> {
    fn deref_mut(&mut self) -> &mut Session<'a, S> {
        &mut self.session
    }
}

impl<S> fmt::Debug for Setup<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup")
            .field("session", &self.session)
            .finish()
    }
}
