//! The listeners one worker runs — one per `[[listener]]` of the configuration file, or
//! the one the command line describes — and how a reload changes them.
//!
//! A listener is known by the address its configuration gives (`listen`), not by where
//! it ended up (port 0 picks one): a reload matches the file's listeners to the running
//! ones by that address. [`Listeners::apply`] is the whole story, at start as at reload:
//!
//! - a listener the file keeps is started again with its new settings on the same socket
//!   (a duplicate of its descriptor, or of the one systemd passed), and the old server
//!   stops accepting once it has taken what was queued: new clients get the new
//!   settings, live ones finish on the old, and no client can land in a queue that
//!   closes;
//! - a listener the file adds is opened; one it drops stops accepting, and its clients
//!   finish;
//! - if any of them cannot start (a port in use), the ones this call started are closed
//!   again and every running listener stays as it was: a reload is all or nothing.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;

use ember::proxy::Pool;
use ember::{Reactor, ServerId, TimerId};

use crate::drain;
use crate::plan::{Plan, Socket, Started};
use crate::status::LivePools;

/// One listener as a worker runs it.
struct Listening {
    /// The address the configuration gave: what a reload matches on.
    listen: SocketAddr,
    /// Where it listens (the port picked, for port 0).
    bound: SocketAddr,
    server: ServerId,
    /// Its pools' health-check timers (stopped when it is replaced or dropped).
    checks: Vec<TimerId>,
    pools: Vec<(String, Pool)>,
    /// The socket systemd passed for it, if it came from one: a reload adopts it again
    /// (a duplicate) instead of binding.
    passed: Option<TcpListener>,
}

/// Every listener of one worker, and their pools for the admin pages.
#[derive(Default)]
pub struct Listeners {
    running: Vec<Listening>,
    pools: LivePools,
}

/// How to start one listener on a reactor: the worker's own dressing of the plan (its
/// counters, its access log) around [`Plan::start_on`].
pub type Start<'a> = dyn FnMut(&mut Reactor, &Plan, Socket) -> io::Result<Started> + 'a;

/// What [`Listeners::apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Where each listener of the new set listens, in its order.
    pub bound: Vec<SocketAddr>,
    /// The listeners that were not running before (their indexes in the new set).
    pub added: Vec<usize>,
    /// The configured addresses of the listeners that are no longer in the set.
    pub removed: Vec<SocketAddr>,
}

impl Listeners {
    /// Every listener's pools, named for the admin pages (`relay`, `duplex_0`; prefixed
    /// with the listener's address when there are several). A reload replaces the
    /// contents, so a reader holding this sees the new pools.
    pub fn pools(&self) -> LivePools {
        Rc::clone(&self.pools)
    }

    /// The proxy servers, one per listener (the ones a drain stops).
    pub fn servers(&self) -> Vec<ServerId> {
        self.running.iter().map(|l| l.server).collect()
    }

    /// Makes `plans` the running listeners (see the module doc). Each comes with the
    /// socket to take if it is not running yet (`None`: bind its `listen` address); a
    /// running one keeps its own. On error nothing has changed.
    pub fn apply(
        &mut self,
        r: &mut Reactor,
        plans: Vec<(Plan, Option<Socket>)>,
        start: &mut Start<'_>,
    ) -> io::Result<Changes> {
        let several = plans.len() > 1;
        let mut started: Vec<Listening> = Vec::with_capacity(plans.len());
        let mut added = Vec::new();
        for (i, (plan, socket)) in plans.into_iter().enumerate() {
            let running = self.running.iter().find(|l| l.listen == plan.listen);
            if running.is_none() {
                added.push(i);
            }
            let opened = open(r, &plan, running, socket, start);
            match opened {
                Ok(mut listening) => {
                    if several {
                        for (name, _) in &mut listening.pools {
                            *name = format!("{} {name}", plan.listen);
                        }
                    }
                    started.push(listening);
                }
                Err(e) => {
                    for undone in started {
                        retire(r, undone, false);
                    }
                    return Err(io::Error::new(
                        e.kind(),
                        format!("listener {}: {e}", plan.listen),
                    ));
                }
            }
        }
        let old = std::mem::take(&mut self.running);
        let removed = old
            .iter()
            .filter(|o| started.iter().all(|n| n.listen != o.listen))
            .map(|o| o.listen)
            .collect();
        for listening in old {
            retire(r, listening, true);
        }
        *self.pools.borrow_mut() = started
            .iter()
            .flat_map(|l| l.pools.iter().cloned())
            .collect();
        let bound = started.iter().map(|l| l.bound).collect();
        self.running = started;
        Ok(Changes {
            bound,
            added,
            removed,
        })
    }
}

/// Starts `plan`: on the running listener's socket if there is one, else on `socket`
/// (or its own address).
fn open(
    r: &mut Reactor,
    plan: &Plan,
    running: Option<&Listening>,
    socket: Option<Socket>,
    start: &mut Start<'_>,
) -> io::Result<Listening> {
    let socket = match running {
        Some(Listening {
            passed: Some(passed),
            ..
        }) => Socket::Adopt(passed.try_clone()?),
        // The same socket, so its accept queue too: the old server's stop then refuses
        // nobody (a second socket on the port would leave the kernel free to hash a
        // client into the old one's queue just before it closes).
        Some(running) => match r.duplicate_listener(running.server) {
            Some(listener) => Socket::Adopt(listener?),
            None => Socket::Bind(running.bound),
        },
        None => socket.unwrap_or(Socket::Bind(plan.listen)),
    };
    let passed = match &socket {
        Socket::Adopt(listener) => Some(listener.try_clone()?),
        Socket::Bind(_) => None,
    };
    let Started {
        server,
        pools,
        checks,
    } = start(r, plan, socket)?;
    Ok(Listening {
        listen: plan.listen,
        bound: server.local_addr().unwrap_or(plan.listen),
        server: server.id(),
        checks,
        pools,
        passed,
    })
}

/// Stops a listener's health checks and its accepting: `gently` after taking what its
/// queue holds (it is being replaced or dropped), or at once (it never served: a reload
/// that failed further on). Its live clients finish either way.
fn retire(r: &mut Reactor, listening: Listening, gently: bool) {
    for timer in listening.checks {
        r.cancel_timer(timer);
    }
    if gently {
        drain::stop_accepting(r, listening.server, |_| {});
    } else {
        r.stop_server(listening.server);
    }
}
