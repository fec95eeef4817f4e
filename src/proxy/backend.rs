//! One backend connection (em-proxy's `Backend`): opening it for a client, and its
//! handler, which hands every event to the client it serves through
//! [`Reactor::with_handler`] — no shared pointers between the two, only connection ids.
//!
//! Once the client is gone a backend is *detached*: it gets FIN after what was relayed to
//! it, its answers are read and dropped (so it is never reset for unread data), and it is
//! closed when it closes its side or when the drain timeout runs out.
//!
//! Every event a backend passes on goes through one path, `BackendConn::call_client`:
//! the client now if it can be reached, on the next tick if it is only busy in one of its
//! own callbacks, and if it is gone, detach.

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;

use crate::{ConnId, Context, Handler, PeerClosed, Reactor, TimerId, UnbindReason, Unreachable};

use super::client::Client;
use super::config::Config;
use super::core::{BackendEntry, Core};
use super::record::BackendRecord;
use super::target::{Backend, Target};

/// Opens backend `name` for the client `core` belongs to. See `Session::server`.
pub(crate) fn open<S: 'static>(
    r: &mut Reactor,
    core: &mut Core,
    name: &str,
    spec: Backend,
) -> Option<ConnId> {
    if core.closing {
        return None;
    }
    if core.by_name(name).is_some() {
        core.warn(format_args!(
            "server `{name}` not opened: a live backend already has that name"
        ));
        return None;
    }
    if spec.shadow && core.config.stats.shadows_active() as usize >= core.config.max_shadows {
        // Memory and descriptors for shadows are capped across all clients: past the cap
        // a session simply goes without, and the primary never notices.
        core.config.stats.shadow_skipped();
        core.event(format_args!(
            "shadow `{name}` skipped: {} shadows open, the limit (skipped so far: {})",
            core.config.max_shadows,
            core.config.stats.shadows_skipped()
        ));
        return None;
    }
    let unavailable = match (&spec.dispatch, &spec.target) {
        (Some(dispatch), Ok(target)) => !dispatch.available(target),
        _ => false,
    };
    if unavailable && spec.shadow {
        // A shadow whose target is out of rotation is never tried at the client's expense.
        core.config.stats.shadow_skipped();
        core.event(format_args!("shadow `{name}` skipped: its backend is down"));
        return None;
    }
    if unavailable {
        core.event(format_args!(
            "server `{name}` not opened: its backend is down"
        ));
        report_unreachable::<S>(r, core, name, &spec, UnbindReason::Refused);
        return None;
    }
    core.config.stats.backend_opened();
    let preamble = match (spec.send_proxy, core.record.client, core.record.listener) {
        (Some(version), Some(client), Some(listener)) => Some(version.header(client, listener)),
        _ => None,
    };
    let tls = spec.tls.as_ref().map(|tls| {
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| match &spec.target {
                Ok(Target::Host(host, _)) => host.clone(),
                Ok(Target::Tcp(addr)) => addr.ip().to_string(),
                _ => String::from("localhost"),
            });
        (Arc::clone(&tls.config), name)
    });
    let handler = BackendConn::<S> {
        client: core.client,
        shadow: spec.shadow,
        config: Rc::clone(&core.config),
        detached: false,
        deadline: None,
        preamble,
        tls,
        _state: PhantomData,
    };
    let opened = match &spec.target {
        Ok(Target::Tcp(addr)) => match spec.bind {
            Some(local) => r.bind_connect(local, *addr, handler),
            None => r.connect(*addr, handler),
        },
        Ok(Target::Host(host, port)) => Ok(match spec.bind {
            Some(local) => r.bind_connect_host(local, host, *port, handler),
            None => r.connect_host(host, *port, handler),
        }),
        Ok(Target::Unix(path)) => r.connect_unix(path, handler),
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e.to_string(),
        )),
    };
    let id = match opened {
        Ok(id) => id,
        Err(e) => {
            let reason = match spec.target {
                Err(_) => UnbindReason::Unresolvable,
                Ok(_) => UnbindReason::from_io_error(&e),
            };
            core.warn(format_args!("server `{name}` could not be opened: {e}"));
            report_unreachable::<S>(r, core, name, &spec, reason);
            return None;
        }
    };
    if let Ok(target) = &spec.target {
        core.event(format_args!("server `{name}` opening to {target}"));
    }
    if spec.shadow {
        core.config.stats.shadow_opened();
    }
    if core.backends_paused && !spec.shadow {
        r.pause_connection(id);
    }
    let bufsize = core.config.options.relay_bufsize;
    // A shadow never takes the client's bytes for itself alone (it would become the only
    // receiver and throttle the primaries), so `relay_client` is ignored on a shadow.
    let retrying = spec.retries > 0 && !spec.shadow;
    let wants_relay_client = spec.relay_client && !spec.shadow && core.relay_client.is_none();
    if wants_relay_client && !retrying {
        // The client's bytes go straight to this backend; `Client::receive_data` copies
        // them itself if the reactor refuses the relay.
        r.proxy_incoming_to(core.client, id, bufsize);
        core.relay_client = Some(id);
    }
    let first_primary = !core.backends.iter().any(|b| !b.shadow);
    if !spec.shadow
        && let Some(other) = core.relay_server.take()
    {
        // The descriptor relay passes its source's FIN to the client, which would cut off
        // this new primary: the other backend is copied from now on (still without
        // `on_response`).
        r.stop_proxying(other);
    }
    // The descriptor relay into the client is used only for the client's only primary;
    // any other `relay_server` backend is copied, still without `on_response`.
    if spec.relay_server
        && !spec.shadow
        && first_primary
        && r.proxy_incoming_to(id, core.client, bufsize)
    {
        core.relay_server = Some(id);
    }
    core.backends.push(BackendEntry {
        name: name.into(),
        id,
        shadow: spec.shadow,
        relay_server: spec.relay_server && !spec.shadow,
        sent_fin: false,
        forgiven: usize::MAX,
        replay: retrying.then(Vec::new),
        relay_client_on_connect: wants_relay_client && retrying,
        spec,
        connected: false,
        opened_at: Instant::now(),
        connect_time: None,
        retries: 0,
        bytes_sent: 0,
        bytes_received: 0,
        cut_off: false,
    });
    Some(id)
}

/// A backend that never got a connection reports through `on_finish` on the next tick,
/// never from inside the hook that asked for it (and goes in the session's record now).
fn report_unreachable<S: 'static>(
    r: &mut Reactor,
    core: &mut Core,
    name: &str,
    spec: &Backend,
    reason: UnbindReason,
) {
    let (name, shadow): (Rc<str>, bool) = (name.into(), spec.shadow);
    if core.config.options.session_log.is_some() {
        core.record.backends.push(BackendRecord {
            name: name.to_string(),
            target: spec.target_text(),
            shadow,
            retries: 0,
            connect_time: None,
            bytes_sent: 0,
            bytes_received: 0,
            end: reason.clone(),
            cut_off: false,
        });
    }
    core.config.stats.backend_failed();
    core.job_started(r);
    let client = core.client;
    r.next_tick(move |r| {
        let _ = r.with_handler::<Client<S>, _>(client, |c, cx| {
            c.core.job_finished();
            c.finish(cx, &name, shadow, reason);
        });
    });
}

/// What a backend does when an event finds its client gone (its unbind has not detached
/// the backend yet).
#[derive(Clone, Copy, PartialEq, Eq)]
enum IfClientGone {
    /// Detach now: FIN, read and drop until it closes or the drain timeout.
    Detach,
    /// Nothing: the event mattered only to the client.
    Ignore,
}

/// The handler of one backend connection.
pub(crate) struct BackendConn<S> {
    client: ConnId,
    shadow: bool,
    config: Rc<Config>,
    detached: bool,
    deadline: Option<TimerId>,
    /// What goes first, in the clear: a PROXY protocol header (`Backend::send_proxy`).
    preamble: Option<Vec<u8>>,
    /// TLS to start once the preamble is queued (`Backend::tls`).
    tls: Option<(Arc<ClientConfig>, String)>,
    _state: PhantomData<fn() -> S>,
}

impl<S: 'static> BackendConn<S> {
    /// The client is gone: FIN after what is queued, keep reading (and dropping) until the
    /// backend closes, but no longer than the drain timeout.
    pub(crate) fn detach(&mut self, cx: &mut Context<'_>) {
        if self.detached {
            return;
        }
        self.detached = true;
        cx.close_write();
        cx.resume();
        let id = cx.id();
        let options = &self.config.options;
        let timeout = if self.shadow {
            options.shadow_drain_timeout
        } else {
            options.drain_timeout
        };
        self.deadline = Some(cx.add_timer(timeout, move |r| r.close_connection(id)));
    }

    /// Passes one event from this backend to its client: `event(client, cx, this
    /// backend's id, payload)`, now if the client can be reached, returning what `event`
    /// returned. If the client is busy in one of its own callbacks (this event fired from
    /// inside one), `event` runs on the next tick with a copy of `payload`, once the
    /// client has returned; if the client is gone, `if_gone` says what this backend does.
    fn call_client<P, R>(
        &mut self,
        cx: &mut Context<'_>,
        if_gone: IfClientGone,
        payload: &P,
        event: fn(&mut Client<S>, &mut Context<'_>, ConnId, &P) -> R,
    ) -> Option<R>
    where
        P: ToOwned + ?Sized + 'static,
        P::Owned: 'static,
        R: 'static,
    {
        let (client, id) = (self.client, cx.id());
        match cx.with_handler::<Client<S>, _>(client, |c, ccx| event(c, ccx, id, payload)) {
            Ok(value) => return Some(value),
            Err(Unreachable::Busy) => {
                let payload = payload.to_owned();
                cx.next_tick(move |r| {
                    let _ = r.with_handler::<Client<S>, _>(client, |c, ccx| {
                        event(c, ccx, id, payload.borrow());
                    });
                });
            }
            Err(Unreachable::Gone) if if_gone == IfClientGone::Detach => self.detach(cx),
            Err(_) => {}
        }
        None
    }
}

impl<S: 'static> Handler for BackendConn<S> {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        // The client is paused when this backend's queue is full, and this backend when
        // the client's is: each direction is throttled by its own sink, never by the
        // reverse one (which could deadlock a backend that echoes as it reads).
        cx.set_read_backpressure(false);
        let options = &self.config.options;
        cx.set_half_close_timeout(options.fin_timeout);
        cx.set_comm_inactivity_timeout(options.server_timeout);
        if self.shadow {
            cx.set_pending_connect_timeout(options.shadow_connect_timeout);
            // Its answers are worth less than anyone's: a shadow that floods cannot take
            // the loop from the primaries.
            cx.set_read_budget(1);
        } else if let Some(timeout) = options.connect_timeout {
            cx.set_pending_connect_timeout(timeout);
        }
        // First in the queue, in the clear, on every try: the PROXY header, then TLS.
        if let Some(preamble) = self.preamble.take() {
            cx.send_data(&preamble);
        }
        if let Some((config, name)) = self.tls.take()
            && let Err(e) = cx.start_tls_client(config, &name)
        {
            self.config
                .warn(None, format_args!("TLS to a backend as `{name}`: {e}"));
            cx.close();
        }
    }

    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        if self.config.options.nodelay {
            // Here rather than in post_init: a backend named by host has no socket before.
            let _ = cx.set_nodelay(true);
        }
        let id = cx.id();
        let _ = cx.with_handler::<Client<S>, _>(self.client, |c, ccx| c.backend_connected(ccx, id));
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        if self.detached {
            return;
        }
        let wanted = self.call_client(cx, IfClientGone::Detach, data, Client::backend_data);
        if wanted == Some(false) {
            // A shadow's answers with no hook to read them: let the kernel drop them.
            cx.set_discard_input(true);
        }
    }

    /// Half-close passes through: the backend's FIN is not a close. The client gets FIN
    /// once every primary has sent one (`Core::backend_sent_fin`), and this backend ends
    /// when its write side is shut too (the client's FIN passed on, or `detach`).
    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        if self.detached {
            return PeerClosed::Close;
        }
        self.call_client(cx, IfClientGone::Detach, &(), |c, ccx, id, ()| {
            c.backend_sent_fin(ccx, id);
        });
        PeerClosed::KeepWriting
    }

    fn outbound_drained(&mut self, cx: &mut Context<'_>) {
        if self.shadow || self.detached {
            return;
        }
        self.call_client(cx, IfClientGone::Ignore, &(), |c, ccx, _, ()| {
            c.core.maybe_resume_client(ccx);
        });
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        if let Some(timer) = self.deadline.take() {
            cx.cancel_timer(timer);
        }
        if !reason.is_orderly() {
            self.config.stats.backend_failed();
        }
        if self.shadow {
            self.config.stats.shadow_closed();
        }
        let id = cx.id();
        // What the descriptor relay carried from this backend to the client.
        self.config.stats.relayed_to_client(cx.proxied_bytes());
        let _ = cx.with_handler::<Client<S>, _>(self.client, |c, ccx| {
            c.backend_finished(ccx, id, reason);
        });
    }
}
