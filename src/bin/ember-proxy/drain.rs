//! Stopping without refusing anyone: how one worker stops accepting and lets its clients
//! finish, and what a restart on the same port needs from the kernel.
//!
//! Every `ember-proxy` listener has `SO_REUSEPORT`, so a new process can listen on the
//! same address while the old one drains (docs/operations.md). The catch: closing a
//! listener resets the connections still in its accept queue. Two defences:
//!
//! - [`stop_accepting`]: before closing its listener, a worker accepts what is queued
//!   (one more accept pass, repeated while passes fill their budget), and closes it in
//!   the same tick as the pass that found the queue empty. That leaves only the
//!   connections that complete their handshake within that tick.
//! - `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+, per network namespace): the kernel
//!   moves a closing listener's queued and half-open connections to another listener
//!   of the group. [`warn_without_migration`] says so at start when it is off; the
//!   proxy never sets sysctls itself.
//!
//! It never decides *when* to drain (that is the signal handler's, in `workers`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ember::{ACCEPTS_PER_EVENT, Reactor, ServerId};

/// The sysctl that lets a closing `SO_REUSEPORT` listener hand its connections over.
pub const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// How often a draining worker looks whether its clients are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// One line at start if a restart on this address could reset a few connections: the
/// kernel does not migrate a closing listener's queue (`tcp_migrate_req` is 0, or the
/// kernel predates it).
pub fn warn_without_migration() {
    match std::fs::read_to_string(MIGRATE_REQ) {
        Ok(value) if value.trim() != "0" => {}
        Ok(_) => log::warn!(
            "ember-proxy: net.ipv4.tcp_migrate_req is 0: when this process stops while another \
             takes over its port, clients still in its accept queue may be refused; set it to 1 \
             for restarts without refusals (see docs/operations.md)"
        ),
        Err(_) => log::warn!(
            "ember-proxy: this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+): when this \
             process stops while another takes over its port, clients still in its accept \
             queue may be refused"
        ),
    }
}

/// Stops `server` accepting without dropping what is queued: one more accept pass (and
/// another while a pass fills its whole budget, so more may be waiting), then the
/// listener is closed in the same tick as the pass that found the queue empty; then
/// `then` runs.
///
/// The pass is the reactor's own accept (pausing and resuming the server carries it
/// over to the next tick, where it accepts until `EAGAIN` or its budget), so every
/// client accepted here is a proxy session like any other.
pub fn stop_accepting(
    r: &mut Reactor,
    server: ServerId,
    then: impl FnOnce(&mut Reactor) + 'static,
) {
    let Some((before, _)) = r.server_stats(server) else {
        then(r);
        return;
    };
    r.pause_accepting(server);
    r.resume_accepting(server);
    // This tick's next-tick closures run before the carried-over pass (it comes in the
    // next tick), so look one tick later: after the pass.
    r.next_tick(move |r| {
        r.next_tick(move |r| {
            let accepted = r.server_stats(server).map_or(0, |(n, _)| n - before);
            if accepted >= ACCEPTS_PER_EVENT as u64 {
                stop_accepting(r, server, then);
            } else {
                r.stop_server(server);
                then(r);
            }
        });
    });
}

/// [`stop_accepting`] on every one of `servers` at once; `then` runs when the last has
/// closed its listener.
pub fn stop_accepting_all(
    r: &mut Reactor,
    servers: Vec<ServerId>,
    then: impl FnOnce(&mut Reactor) + 'static,
) {
    if servers.is_empty() {
        then(r);
        return;
    }
    let left = Rc::new(Cell::new(servers.len()));
    let then = Rc::new(RefCell::new(Some(then)));
    for server in servers {
        let (left, then) = (Rc::clone(&left), Rc::clone(&then));
        stop_accepting(r, server, move |r| {
            left.set(left.get() - 1);
            if left.get() == 0
                && let Some(then) = then.borrow_mut().take()
            {
                then(r);
            }
        });
    }
}

/// Stops the reactor once `live()` is 0 or at `deadline`, whichever comes first.
pub fn stop_when_done(r: &mut Reactor, deadline: Instant, live: impl Fn() -> u64 + 'static) {
    if live() == 0 {
        r.stop();
        return;
    }
    r.add_periodic_timer(DRAIN_POLL, move |r| {
        if live() == 0 || Instant::now() >= deadline {
            r.stop();
        }
    });
}
