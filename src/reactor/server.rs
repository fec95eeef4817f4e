//! Listening servers: binding, bounded accepts, and backing off when descriptors run out.
//!
//! On `EMFILE`/`ENFILE` (or `ENOBUFS`/`ENOMEM`) the server stops accepting and a timer
//! resumes it after a back-off that doubles from 10 ms up to 1 s, so a process out of
//! descriptors sleeps instead of spinning on an accept that keeps failing. Connections
//! waiting in the kernel's backlog are accepted once descriptors free up.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::connection::KnownAddrs;
use super::{ACCEPTS_PER_EVENT, Descriptor, Reactor, TimerTask};
use crate::addr::IntoSocketAddr;
use crate::handler::Handler;
use crate::id::{ServerId, TimerId};
use crate::sys::socket::{self, Listener};

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

type Factory = Box<dyn FnMut() -> Box<dyn Handler>>;

/// How new listeners are set up (`set_listen_backlog`, `set_reuse_port`).
pub(crate) struct ListenSettings {
    backlog: i32,
    reuse_port: bool,
}

impl Default for ListenSettings {
    fn default() -> Self {
        ListenSettings {
            backlog: super::DEFAULT_LISTEN_BACKLOG,
            reuse_port: false,
        }
    }
}

pub(crate) struct Server {
    pub(crate) serial: u64,
    listener: Listener,
    factory: Factory,
    backoff: Duration,
    /// Accepting is suspended until this timer fires.
    resume_timer: Option<TimerId>,
    unix_path: Option<PathBuf>,
    /// The address every accepted connection has as its local one: the listener's, if
    /// it is bound to one IP address (on a wildcard address each connection's own local
    /// address is asked for when wanted).
    local_of_accepted: Option<SocketAddr>,
    /// `pause_accepting`: new connections wait in the kernel's backlog.
    paused: bool,
    accepted: u64,
    backoffs: u64,
}

impl Reactor {
    /// Listens on a numeric TCP address (IPv4 or IPv6; port 0 picks a free port, see
    /// [`server_addr`](Self::server_addr)) and makes a handler per accepted connection.
    pub fn start_server<H: Handler>(
        &mut self,
        addr: impl IntoSocketAddr,
        mut factory: impl FnMut() -> H + 'static,
    ) -> io::Result<ServerId> {
        let addr = addr.into_socket_addr()?;
        let listener = Listener::bind_tcp(addr, self.listen.backlog, self.listen.reuse_port)
            .map_err(|e| with_context(e, &addr.to_string()))?;
        self.add_server(listener, None, Box::new(move || Box::new(factory())))
    }

    /// Adopts a TCP socket that is already listening (EventMachine's `attach_server`): one
    /// passed by systemd socket activation (`LISTEN_FDS`), inherited from a parent, or
    /// bound with options of the caller's own. It is made non-blocking; the reactor owns
    /// it from now on and closes it in `stop_server`.
    pub fn attach_server<H: Handler>(
        &mut self,
        listener: std::net::TcpListener,
        mut factory: impl FnMut() -> H + 'static,
    ) -> io::Result<ServerId> {
        listener.set_nonblocking(true)?;
        let listener = Listener::Tcp(mio::net::TcpListener::from_std(listener));
        self.add_server(listener, None, Box::new(move || Box::new(factory())))
    }

    /// Listens on a Unix-domain socket at `path` (removed again by `stop_server`).
    pub fn start_unix_server<H: Handler>(
        &mut self,
        path: impl AsRef<Path>,
        mut factory: impl FnMut() -> H + 'static,
    ) -> io::Result<ServerId> {
        let path = path.as_ref();
        let listener =
            Listener::bind_unix(path).map_err(|e| with_context(e, &path.display().to_string()))?;
        self.add_server(
            listener,
            Some(path.to_path_buf()),
            Box::new(move || Box::new(factory())),
        )
    }

    fn add_server(
        &mut self,
        mut listener: Listener,
        unix_path: Option<PathBuf>,
        factory: Factory,
    ) -> io::Result<ServerId> {
        let serial = self.next_serial();
        let entry = self.descriptors.vacant_entry();
        let slot = entry.key();
        listener.register(self.poll.registry(), mio::Token(slot))?;
        let local_of_accepted = listener
            .local_addr()
            .filter(|addr| !addr.ip().is_unspecified());
        entry.insert(Descriptor::Server(Server {
            serial,
            local_of_accepted,
            listener,
            factory,
            backoff: Duration::ZERO,
            resume_timer: None,
            unix_path,
            paused: false,
            accepted: 0,
            backoffs: 0,
        }));
        Ok(ServerId { slot, serial })
    }

    /// The `listen(2)` backlog for servers started from now on (default 1024; the kernel
    /// caps it at `net.core.somaxconn`).
    pub fn set_listen_backlog(&mut self, backlog: u32) {
        self.listen.backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    }

    /// Whether TCP servers started from now on set `SO_REUSEPORT`, so that several
    /// processes (one reactor each) can accept on the same port.
    pub fn set_reuse_port(&mut self, on: bool) {
        self.listen.reuse_port = on;
    }

    /// The address a TCP server is bound to (with the real port if it asked for 0).
    pub fn server_addr(&self, id: ServerId) -> Option<SocketAddr> {
        self.server(id)?.listener.local_addr()
    }

    /// A new descriptor for server `id`'s listening TCP socket, to hand to
    /// [`attach_server`](Self::attach_server): a new server on the same socket and accept
    /// queue, so that stopping the old one afterwards refuses nobody (how a reload
    /// changes a listener's settings). `None` if there is no such TCP server.
    pub fn duplicate_listener(&self, id: ServerId) -> Option<io::Result<std::net::TcpListener>> {
        self.server(id)?.listener.duplicate_tcp()
    }

    /// How many connections a server has accepted, and how many times it backed off
    /// because descriptors or memory ran out.
    pub fn server_stats(&self, id: ServerId) -> Option<(u64, u64)> {
        self.server(id).map(|s| (s.accepted, s.backoffs))
    }

    /// Stops listening; connections already accepted carry on. Returns whether the
    /// server was running.
    pub fn stop_server(&mut self, id: ServerId) -> bool {
        if self.server(id).is_none() {
            return false;
        }
        let Descriptor::Server(mut server) = self.descriptors.remove(id.slot) else {
            unreachable!("server() checked the descriptor kind");
        };
        server.listener.deregister(self.poll.registry());
        if let Some(timer) = server.resume_timer {
            self.timers.cancel(timer);
        }
        if let Some(path) = server.unix_path {
            let _ = std::fs::remove_file(path);
        }
        true
    }

    /// Stops accepting on `id`: new connections wait in the kernel's listen backlog (a
    /// connection limit, like HAProxy's `maxconn`), until [`resume_accepting`]. Returns
    /// whether the server exists.
    ///
    /// [`resume_accepting`]: Self::resume_accepting
    pub fn pause_accepting(&mut self, id: ServerId) -> bool {
        self.server_mut(id).map(|s| s.paused = true).is_some()
    }

    /// Accepts again on a server paused with [`pause_accepting`](Self::pause_accepting);
    /// connections waiting in the backlog are accepted next tick.
    pub fn resume_accepting(&mut self, id: ServerId) {
        if let Some(server) = self.server_mut(id)
            && std::mem::replace(&mut server.paused, false)
        {
            self.carry_over.add(id.slot, id.serial);
        }
    }

    /// Whether `id` is paused with [`pause_accepting`](Self::pause_accepting).
    pub fn is_accepting_paused(&self, id: ServerId) -> bool {
        self.server(id).is_some_and(|s| s.paused)
    }

    fn server(&self, id: ServerId) -> Option<&Server> {
        match self.descriptors.get(id.slot) {
            Some(Descriptor::Server(s)) if s.serial == id.serial => Some(s),
            _ => None,
        }
    }

    fn server_mut(&mut self, id: ServerId) -> Option<&mut Server> {
        match self.descriptors.get_mut(id.slot) {
            Some(Descriptor::Server(s)) if s.serial == id.serial => Some(s),
            _ => None,
        }
    }

    /// Accepts up to the per-event budget; carries the server over if the budget ran out.
    pub(crate) fn accept_some(&mut self, slot: usize, serial: u64) {
        let id = ServerId { slot, serial };
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(server) = self.server_mut(id) else {
                return;
            };
            if server.resume_timer.is_some() || server.paused {
                return;
            }
            match server.listener.accept() {
                Ok((stream, peer)) => {
                    server.backoff = Duration::ZERO;
                    server.accepted += 1;
                    let addrs = KnownAddrs {
                        peer,
                        local: server.local_of_accepted,
                    };
                    let factory = &mut server.factory;
                    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(factory));
                    match made {
                        // A failed registration drops the stream: the peer sees a close.
                        Ok(handler) => {
                            let _ = self.adopt_with(
                                Some(stream),
                                handler,
                                super::lifecycle::Life::open(),
                                addrs,
                            );
                        }
                        // No handler, no connection: the peer sees a close.
                        Err(payload) => self.callback_panicked(None, payload),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends, or anything unexpected: sleep, don't spin.
                    server.backoffs += 1;
                    server.backoff = (server.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                    if !socket::is_resource_exhaustion(&e) {
                        server.backoff = MAX_BACKOFF;
                    }
                    let at = Instant::now() + server.backoff;
                    let timer = self.timers.insert(at, None, TimerTask::ResumeAccept(id));
                    if let Some(server) = self.server_mut(id) {
                        server.resume_timer = Some(timer);
                    }
                    return;
                }
            }
        }
        self.carry_over.add(slot, serial);
    }

    /// A back-off timer fired: try accepting again.
    pub(crate) fn backoff_over(&mut self, id: ServerId) {
        if let Some(server) = self.server_mut(id) {
            server.resume_timer = None;
            self.accept_some(id.slot, id.serial);
        }
    }
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {what}: {e}"))
}
