//! The loop: one `mio::Poll`, one slab of descriptors, and the order of a tick.
//!
//! [`Reactor`] owns every descriptor (connections and servers share one slab, and a
//! descriptor's slab slot is its mio token; the sockets of racing connect attempts have
//! tokens of their own, see `connect_race`), the timer queue, the next-tick queue, the
//! defer pool's callbacks, the signal pipe and the queue of pending closes. One tick
//! ([`Reactor::run_loop`] repeats it) goes, in order:
//!
//! 1. poll, for as long as the earliest timer allows (not at all if work is already due);
//! 2. dispatch I/O events: each connection reads a bounded amount, each server accepts a
//!    bounded number, the waker runs remote tasks and deferred callbacks, the signal pipe
//!    runs signal handlers;
//! 3. continue descriptors whose read or accept budget ran out last tick (fairness);
//! 4. fire due timers; 5. run the next-tick queue as it stood when this step began;
//! 6. between steps, close what callbacks asked to close and run their `unbind`s.
//!
//! The module never calls a handler while another callback of the same connection runs,
//! and never runs `unbind` anywhere but in step 6 (`reap`).

mod attach;
mod connect_race;
mod connection;
mod connection_api;
mod datagram;
mod file_stream;
mod file_watch;
mod kernel_relay;
mod lifecycle;
mod panics;
mod path_trial;
mod process;
mod process_watch;
mod queues;
mod relay;
mod resolver;
mod scheduling;
mod server;
mod signals;
mod tls;

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use slab::Slab;

use crate::defer::DeferPool;
use crate::handler::{Context, Handler};
use crate::id::ConnId;
use crate::remote::{ReactorHandle, Shared};
use crate::timers::TimerQueue;

pub use connect_race::{DEFAULT_CONNECTION_ATTEMPT_DELAY, MIN_CONNECTION_ATTEMPT_DELAY};
pub(crate) use connection::Connection;
pub use file_stream::{FileStreamFailed, FileStreamResult};
pub use kernel_relay::{KERNEL_BUDGET, RelayMode};
pub use panics::CallbackPanic;
pub use queues::LocalHandle;
use queues::{CarryOver, NextTicks, PendingCloses};
pub use resolver::DEFAULT_RESOLVE_INTERVAL;
pub use scheduling::TimerAction;
use scheduling::TimerTask;
pub(crate) use server::Server;
pub use tls::{DEFAULT_TLS_HANDSHAKE_TIMEOUT, TlsInfo};

/// Bytes read per `read(2)`, as in EventMachine.
pub const READ_CHUNK: usize = 16 * 1024;
/// Reads per connection per readable event before yielding to the others.
pub const READS_PER_EVENT: usize = 10;
/// Accepts per server per readable event before yielding to the others.
pub const ACCEPTS_PER_EVENT: usize = 64;
/// Default outbound high-water mark, bytes.
pub const DEFAULT_HIGH_WATER: usize = 256 * 1024;
/// Default outbound low-water mark, bytes.
pub const DEFAULT_LOW_WATER: usize = 64 * 1024;
/// Default `listen(2)` backlog for servers.
pub const DEFAULT_LISTEN_BACKLOG: i32 = 1024;
/// Default pending-connect timeout, as in EventMachine.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

const WAKER_TOKEN: Token = Token(usize::MAX);
const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
const INOTIFY_TOKEN: Token = Token(usize::MAX - 2);
/// The in-kernel relay's signal ring (`kernel_relay.rs`).
const KERNEL_RELAY_TOKEN: Token = Token(usize::MAX - 3);

/// Everything the reactor can hold a descriptor for.
// Connections are by far the most common entry and the hot one: boxing them to shrink
// the other variants would cost an allocation each and a pointer chase per event.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Descriptor {
    Conn(Connection),
    Server(Server),
    Datagram(datagram::Datagram),
    Watch(attach::Watch),
    FileWatch(file_watch::FileWatch),
}

impl Descriptor {
    fn serial(&self) -> u64 {
        match self {
            Descriptor::Conn(c) => c.serial,
            Descriptor::Server(s) => s.serial,
            Descriptor::Datagram(d) => d.serial,
            Descriptor::Watch(w) => w.serial,
            Descriptor::FileWatch(f) => f.serial,
        }
    }

    /// The handler slot of a descriptor that has one (all but servers).
    fn handler_mut(&mut self) -> Option<&mut Option<Box<dyn Handler>>> {
        match self {
            Descriptor::Conn(c) => Some(&mut c.handler),
            Descriptor::Server(_) => None,
            Descriptor::Datagram(d) => Some(&mut d.handler),
            Descriptor::Watch(w) => Some(&mut w.handler),
            Descriptor::FileWatch(f) => Some(&mut f.handler),
        }
    }

    /// Whether it is already queued for `reap` (a connection still flushing before its
    /// close is not: stopping the reactor must still close it).
    fn is_closing(&self) -> bool {
        match self {
            Descriptor::Conn(c) => c.life.is_reaping(),
            Descriptor::Server(_) => false,
            Descriptor::Datagram(d) => d.closing.is_some(),
            Descriptor::Watch(w) => w.closing.is_some(),
            Descriptor::FileWatch(f) => f.closing.is_some(),
        }
    }
}

/// Why [`Reactor::with_handler`] could not run its closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// No live connection has this id (it was unbound, or never was one).
    Gone,
    /// The connection is inside one of its own callbacks (callbacks never nest); try
    /// again later, for example from `next_tick`.
    Busy,
    /// Its handler is not of the type asked for.
    OtherType,
    /// The closure was called and panicked; the connection is closing
    /// ([`UnbindReason::Panicked`](crate::UnbindReason::Panicked)).
    Panicked,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unreachable::Gone => "no such connection",
            Unreachable::Busy => "the connection is in one of its own callbacks",
            Unreachable::OtherType => "the handler is of another type",
            Unreachable::Panicked => "the callback panicked",
        })
    }
}

impl std::error::Error for Unreachable {}

/// Per-connection settings new connections start with.
#[derive(Clone, Copy)]
pub(crate) struct ConnDefaults {
    pub(crate) high_water: usize,
    pub(crate) low_water: usize,
    pub(crate) connect_timeout: Duration,
    /// `TCP_NODELAY` on every TCP connection accepted or opened.
    pub(crate) nodelay: bool,
}

type Task = Box<dyn FnOnce(&mut Reactor)>;

/// The single-threaded event loop. See the [crate docs](crate) for an overview.
///
/// ```
/// use ember::{Context, Handler, Reactor};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
///         cx.send_data(data);
///     }
/// }
///
/// Reactor::run(|r| {
///     let server = r.start_server("127.0.0.1:0", || Echo)?;
///     println!("echo on {}", r.server_addr(server).unwrap());
///     r.stop(); // a real server would keep running
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct Reactor {
    // The loop itself.
    /// Readiness for every descriptor, registered once under its slab slot as token.
    poll: Poll,
    /// The poll's event buffer; taken out while a tick dispatches it.
    events: Option<Events>,
    /// Every descriptor with a slot: connections, servers, datagram sockets, watches.
    /// A slot is freed only by `reap`, never inside a callback.
    pub(crate) descriptors: Slab<Descriptor>,
    /// The serial the next descriptor gets; never reused, so ids never alias.
    next_serial: u64,
    /// One-shot and periodic timers, user and internal (timeouts, back-off, polls).
    timers: TimerQueue<TimerTask>,
    /// Closures for the end of this tick (`next_tick`); ones they add wait a tick.
    next_ticks: NextTicks,
    /// Descriptors to continue next tick without a new edge.
    carry_over: CarryOver,
    /// Descriptors whose close is due; `reap` unbinds them between the steps of a tick.
    pending_close: PendingCloses,
    /// `stop` was called; the loop ends after this tick.
    stopping: bool,
    /// What other threads share with the loop: remote tasks, deferred results, the
    /// waker, a stop request.
    shared: Arc<Shared>,
    /// The thread pool for blocking work, and the callbacks waiting for its results.
    defer: DeferPool,
    /// When this tick started (activity times, timeouts).
    now: Instant,
    /// Live connections (servers not counted).
    connections: usize,
    /// The connection whose `unbind` is running, with its relayed byte count, so
    /// `proxied_bytes` answers for it.
    unbinding: Option<(ConnId, u64)>,
    /// Told about every panic a callback raises (`set_error_handler`); `None` writes a
    /// line to stderr.
    error_handler: Option<panics::ErrorHandler>,

    // What new connections start with, and the read buffer they share.
    /// Water marks, connect timeout and `TCP_NODELAY` for new connections.
    defaults: ConnDefaults,
    /// One read's worth (16 KiB); `receive_data` borrows the filled part.
    read_buf: crate::buffer::PageAligned,
    /// Scratch for plaintext decrypted by TLS connections; allocated on first use.
    tls_buf: Vec<u8>,
    /// Scratch for the ciphertext rustls hands over before it is queued or written.
    tls_out: Vec<u8>,
    /// How long TLS handshakes may take (`set_tls_handshake_timeout`).
    tls_handshake_timeout: Duration,

    // The rooms: each owned by the file of the same name.
    /// Listen backlog and `SO_REUSEPORT` for new servers (`server.rs`).
    listen: server::ListenSettings,
    /// Splice on or off, and the copying path's buffer (`relay.rs`).
    relays: relay::Relays,
    /// The in-kernel relay's maps and program, once opened (`kernel_relay.rs`).
    kernel: kernel_relay::KernelRelays,
    /// One datagram's worth (64 KiB), allocated on first use (`datagram.rs`).
    datagram_buf: Vec<u8>,
    /// Closed children awaiting exit, their poll timer and grace (`process.rs`).
    children: process::Children,
    /// The self-pipe and `on_signal` handlers (`signals.rs`).
    signals: signals::Signals,
    /// The inotify instance, opened on the first `watch_file` (`file_watch.rs`).
    file_watches: Option<file_watch::Inotify>,
    /// Host names `connect_host` resolved, and for how long they are trusted (`resolver.rs`).
    resolver: resolver::Resolver,
    /// Connects racing a name's addresses, their attempts' sockets and the attempt delay
    /// (`connect_race.rs`).
    races: connect_race::Races,
}

impl Reactor {
    /// Creates a reactor; nothing runs until [`run_loop`](Self::run_loop).
    pub fn new() -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        Ok(Reactor {
            poll,
            events: Some(Events::with_capacity(1024)),
            descriptors: Slab::new(),
            next_serial: 1,
            timers: TimerQueue::default(),
            next_ticks: NextTicks::default(),
            carry_over: CarryOver::default(),
            pending_close: PendingCloses::default(),
            stopping: false,
            shared: Arc::new(Shared::new(waker)),
            defer: DeferPool::new(),
            now: Instant::now(),
            connections: 0,
            unbinding: None,
            error_handler: None,
            read_buf: crate::buffer::PageAligned::new(READ_CHUNK),
            tls_buf: Vec::new(),
            tls_out: Vec::new(),
            tls_handshake_timeout: tls::DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            defaults: ConnDefaults {
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_LOW_WATER,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                nodelay: false,
            },
            listen: server::ListenSettings::default(),
            relays: relay::Relays::default(),
            kernel: kernel_relay::KernelRelays::default(),
            datagram_buf: Vec::new(),
            children: process::Children::default(),
            signals: signals::Signals::default(),
            file_watches: None,
            resolver: resolver::Resolver::default(),
            races: connect_race::Races::default(),
        })
    }

    /// Creates a reactor, runs `setup` on it, then runs the loop until stopped
    /// (EventMachine's `EM.run { ... }`).
    pub fn run(setup: impl FnOnce(&mut Reactor) -> io::Result<()>) -> io::Result<()> {
        let mut reactor = Reactor::new()?;
        setup(&mut reactor)?;
        reactor.run_loop()
    }

    /// Runs ticks until [`stop`](Self::stop) (or a handle's stop), then unbinds every
    /// live connection with [`UnbindReason::ReactorStopped`](crate::UnbindReason) and
    /// closes every server.
    pub fn run_loop(&mut self) -> io::Result<()> {
        self.shared
            .set_loop_thread(Some(std::thread::current().id()));
        let result = loop {
            if self.is_stopping() {
                break Ok(());
            }
            if let Err(e) = self.run_once() {
                break Err(e);
            }
        };
        self.shutdown();
        self.shared.set_loop_thread(None);
        result
    }

    /// Asks the loop to stop at the end of the current tick.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Whether a stop has been requested, here or through a handle.
    pub fn is_stopping(&self) -> bool {
        self.stopping || self.shared.stop_requested()
    }

    /// A `Send` handle for stopping the loop or scheduling work onto it from other threads.
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs `task` at the start of the next tick's tail, after I/O and timers.
    pub fn next_tick(&mut self, task: impl FnOnce(&mut Reactor) + 'static) {
        self.next_ticks.add(Box::new(task));
    }

    /// A same-thread handle that can add next-tick closures without a `&mut Reactor`
    /// (from a `Drop`, say); see [`LocalHandle`].
    pub fn local_handle(&self) -> LocalHandle {
        LocalHandle(self.next_ticks.clone())
    }

    /// The number of live connections (servers not counted).
    pub fn connection_count(&self) -> usize {
        self.connections
    }

    /// The ids of every live stream connection (not closing), for broadcasts.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.descriptors
            .iter()
            .filter_map(|(slot, d)| match d {
                Descriptor::Conn(c) if !c.life.is_closing() => Some(ConnId {
                    slot,
                    serial: c.serial,
                }),
                _ => None,
            })
            .collect()
    }

    /// Every descriptor with a handler that is not already queued for `reap`.
    fn handler_ids(&self) -> Vec<ConnId> {
        self.descriptors
            .iter()
            .filter(|(_, d)| !matches!(d, Descriptor::Server(_)) && !d.is_closing())
            .map(|(slot, d)| ConnId {
                slot,
                serial: d.serial(),
            })
            .collect()
    }

    /// The time the current tick started (cheaper than `Instant::now()` in hot paths).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Calls `f` with connection `id`'s handler, if it is alive, of type `H`, and not
    /// already in one of its own callbacks; otherwise says why not ([`Unreachable`]).
    /// Lets timers and other connections reach a handler's state without shared
    /// pointers.
    pub fn with_handler<H: Handler, R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut H, &mut Context<'_>) -> R,
    ) -> Result<R, Unreachable> {
        let mut out = Err(Unreachable::OtherType);
        self.with_handler_dyn(id, |handler, cx| {
            let handler: &mut dyn Any = handler;
            if let Some(h) = handler.downcast_mut::<H>() {
                out = Ok(f(h, cx));
            }
        })?;
        out
    }

    /// One tick. See the module docs for the order.
    fn run_once(&mut self) -> io::Result<()> {
        let timeout = self.poll_timeout();
        let mut events = self
            .events
            .take()
            .expect("events buffer is always returned");
        if let Err(e) = self.poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            self.events = Some(events);
            return Err(e);
        }
        self.now = Instant::now();
        let carried = self.carry_over.take();
        for event in events.iter() {
            match event.token() {
                WAKER_TOKEN => self.run_remote_work(),
                SIGNAL_TOKEN => self.run_signal_handlers(),
                INOTIFY_TOKEN => self.read_file_events(),
                KERNEL_RELAY_TOKEN => self.kernel_relay_signals(),
                token => match connect_race::attempt_of(token) {
                    Some(attempt) => self.on_attempt_event(attempt),
                    None => self.dispatch(token.0, Readiness::of(event)),
                },
            }
        }
        self.events = Some(events);
        for (slot, serial) in carried {
            self.continue_descriptor(slot, serial);
        }
        self.reap();
        self.run_timers();
        self.reap();
        let ticks = self.next_ticks.take();
        for task in ticks {
            self.contain(None, task);
        }
        self.reap();
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.carry_over.is_empty()
            || !self.next_ticks.is_empty()
            || !self.pending_close.is_empty()
            || self.is_stopping()
        {
            return Some(Duration::ZERO);
        }
        self.timers
            .next_deadline()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn dispatch(&mut self, slot: usize, ready: Readiness) {
        match self.descriptors.get(slot) {
            Some(Descriptor::Conn(c)) => {
                let id = ConnId {
                    slot,
                    serial: c.serial,
                };
                self.on_connection_event(id, ready);
            }
            Some(Descriptor::Server(s)) => {
                let serial = s.serial;
                self.accept_some(slot, serial);
            }
            Some(Descriptor::Datagram(d)) => {
                let id = ConnId {
                    slot,
                    serial: d.serial,
                };
                self.on_datagram_event(id, ready);
            }
            Some(Descriptor::Watch(w)) => {
                let id = ConnId {
                    slot,
                    serial: w.serial,
                };
                self.on_watch_event(id, ready);
            }
            Some(Descriptor::FileWatch(_)) | None => {}
        }
    }

    fn continue_descriptor(&mut self, slot: usize, serial: u64) {
        match self.descriptors.get(slot) {
            Some(Descriptor::Conn(c)) if c.serial == serial => {
                let id = ConnId { slot, serial };
                if c.stderr_unread {
                    self.read_child_stderr(id);
                }
                self.read_some(id);
            }
            Some(Descriptor::Server(s)) if s.serial == serial => self.accept_some(slot, serial),
            Some(Descriptor::Datagram(d)) if d.serial == serial => {
                self.receive_datagrams(ConnId { slot, serial });
            }
            _ => {}
        }
    }

    /// Remote tasks from handles, then completed deferred jobs.
    fn run_remote_work(&mut self) {
        for task in self.shared.take_tasks() {
            self.contain(None, task);
        }
        for (job, result) in self.shared.take_deferred() {
            if let Some(completion) = self.defer.take_completion(job) {
                self.contain(None, |r| completion(r, result));
            }
        }
    }

    pub(crate) fn next_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    /// Runs `f` with the connection's handler taken out of the slab, so the callback can
    /// borrow the whole reactor. Returns false if the connection is gone or already inside
    /// one of its own callbacks (no re-entrancy). A panic in `f` closes the connection
    /// (see `panics`).
    pub(crate) fn with_handler_dyn(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut dyn Handler, &mut Context<'_>),
    ) -> Result<(), Unreachable> {
        let slot = self.handler_slot(id).ok_or(Unreachable::Gone)?;
        let mut handler = slot.take().ok_or(Unreachable::Busy)?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&mut *handler, &mut Context::new(self, id));
        }));
        // Descriptors are only removed by `reap`, which never runs inside a callback.
        if let Some(slot) = self.handler_slot(id) {
            *slot = Some(handler);
        }
        if let Err(payload) = outcome {
            self.callback_panicked(Some(id), payload);
            return Err(Unreachable::Panicked);
        }
        Ok(())
    }

    /// Calls a handler for an event it is told about (see `with_handler_dyn`); a handler
    /// that is gone or inside one of its own callbacks simply misses it.
    pub(crate) fn notify(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut dyn Handler, &mut Context<'_>),
    ) {
        let _ = self.with_handler_dyn(id, f);
    }

    fn handler_slot(&mut self, id: ConnId) -> Option<&mut Option<Box<dyn Handler>>> {
        match self.descriptors.get_mut(id.slot) {
            Some(d) if d.serial() == id.serial => d.handler_mut(),
            _ => None,
        }
    }

    /// Runs `unbind` for a descriptor already out of the slab.
    pub(crate) fn run_unbind(
        &mut self,
        id: ConnId,
        mut handler: Box<dyn Handler>,
        reason: crate::UnbindReason,
    ) {
        self.contain(Some(id), |r| {
            handler.unbind(&mut Context::new(r, id), reason)
        });
    }

    /// Removes every descriptor whose close is due and runs its `unbind`. Only called
    /// between the steps of a tick, never from inside a callback.
    pub(crate) fn reap(&mut self) {
        while let Some(id) = self.pending_close.next() {
            match self.descriptors.get(id.slot) {
                Some(d) if d.serial() == id.serial && !matches!(d, Descriptor::Server(_)) => {}
                _ => continue,
            }
            match self.descriptors.remove(id.slot) {
                Descriptor::Conn(conn) => {
                    // Closed while its connect was racing: the attempts go first.
                    self.end_race(id);
                    self.retire_connection(id, conn);
                }
                Descriptor::Datagram(d) => self.retire_datagram(id, d),
                Descriptor::Watch(w) => self.retire_watch(id, w),
                Descriptor::FileWatch(f) => self.retire_file_watch(id, f),
                Descriptor::Server(_) => unreachable!("servers are never queued for close"),
            }
        }
    }

    /// Asks any handler-bearing descriptor to close now with `reason`.
    pub(crate) fn close_descriptor(&mut self, id: ConnId, reason: crate::UnbindReason) {
        let closing = match self.descriptors.get_mut(id.slot) {
            Some(d) if d.serial() == id.serial => match d {
                Descriptor::Conn(_) => {
                    self.close_now(id, reason);
                    return;
                }
                Descriptor::Server(_) => return,
                Descriptor::Datagram(d) => &mut d.closing,
                Descriptor::Watch(w) => &mut w.closing,
                Descriptor::FileWatch(f) => &mut f.closing,
            },
            _ => return,
        };
        if closing.is_none() {
            *closing = Some(reason);
            self.pending_close.add(id);
        }
    }

    /// Closes every connection and server when the loop ends.
    fn shutdown(&mut self) {
        // Unbind callbacks may open new connections; close those too, but don't loop forever.
        for _ in 0..8 {
            let ids = self.handler_ids();
            if ids.is_empty() && self.pending_close.is_empty() {
                break;
            }
            for id in ids {
                self.close_descriptor(id, crate::UnbindReason::ReactorStopped);
            }
            self.reap();
        }
        self.abandon_exiting_children();
        let servers: Vec<_> = self
            .descriptors
            .iter()
            .filter_map(|(slot, d)| match d {
                Descriptor::Server(s) => Some(crate::ServerId {
                    slot,
                    serial: s.serial,
                }),
                _ => None,
            })
            .collect();
        for id in servers {
            self.stop_server(id);
        }
        drop(self.next_ticks.take());
    }
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("connections", &self.connections)
            .field("descriptors", &self.descriptors.len())
            .field("timers", &self.timers.len())
            .field("deferred_pending", &self.defer.pending())
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

/// What an event said, copied out of mio's event so the events buffer can be released.
#[derive(Clone, Copy)]
pub(crate) struct Readiness {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// Read-closed or error: a short read must not end the drain (see `read_some`).
    pub(crate) hangup: bool,
    /// The socket has a pending error (a reset): act on it even if reading is paused.
    pub(crate) error: bool,
    /// TCP urgent data arrived (see `Stream::discard_urgent`).
    pub(crate) priority: bool,
}

impl Readiness {
    fn of(event: &mio::event::Event) -> Readiness {
        Readiness {
            readable: event.is_readable(),
            writable: event.is_writable(),
            hangup: event.is_read_closed() || event.is_error() || event.is_write_closed(),
            error: event.is_error(),
            priority: event.is_priority(),
        }
    }
}
