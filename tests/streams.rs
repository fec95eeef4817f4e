//! Stream behaviour over real loopback sockets: echo at scale, backpressure and memory,
//! connect outcomes, timeouts, half-close, closing (lingering with unread input), Unix and
//! IPv6, ids, pause/resume, fairness, resets, shutdown, and connecting by host name.
//!
//! Every test is bounded: reactors on the test thread run under a watchdog, background
//! reactors are stopped on drop, and std clients have read/write timeouts, so a bug fails
//! a test instead of hanging it.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant};

use ember::{ConnId, Context, Handler, PeerClosed, Reactor, UnbindReason};

use support::backends::Echo;
use support::child;
use support::clients::{closed_port, connect, read_all, recv};
use support::pattern::Pattern;
use support::reactor_thread::{ReactorThread, run_bounded};
use support::sys::{
    Blackhole, raise_fd_limit, reset_on_close, vm_rss, wait_until_peer_kernel_has_everything,
};

const SECS_5: Duration = Duration::from_secs(5);
const SECS_10: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Shared handlers
// ---------------------------------------------------------------------------------------

/// What a server-side connection reports to a test on another thread.
#[derive(Debug)]
enum ServerEvent {
    Accepted(ConnId, Option<SocketAddr>),
    Unbound(ConnId, UnbindReason),
}

/// Echo server connection that reports accept and unbind over a channel.
struct ReportingEcho {
    events: Sender<ServerEvent>,
}

impl Handler for ReportingEcho {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let _ = self
            .events
            .send(ServerEvent::Accepted(cx.id(), cx.peer_addr()));
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.events.send(ServerEvent::Unbound(cx.id(), reason));
    }
}

/// Starts a `ReportingEcho` server on 127.0.0.1:0 in a background reactor.
fn echo_server_thread() -> (
    ReactorThread<SocketAddr>,
    SocketAddr,
    mpsc::Receiver<ServerEvent>,
) {
    let (tx, rx) = mpsc::channel();
    let rt = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || ReportingEcho { events: tx.clone() })?;
        Ok(r.server_addr(id).expect("a TCP server has an address"))
    });
    let addr = rt.value;
    (rt, addr, rx)
}

fn expect_accepted(rx: &mpsc::Receiver<ServerEvent>) -> (ConnId, Option<SocketAddr>) {
    match recv(rx, SECS_10, "the server to accept") {
        ServerEvent::Accepted(id, peer) => (id, peer),
        other => panic!("expected an accept, got {other:?}"),
    }
}

fn expect_unbound(rx: &mpsc::Receiver<ServerEvent>) -> (ConnId, UnbindReason) {
    match recv(rx, SECS_10, "the server connection's unbind") {
        ServerEvent::Unbound(id, reason) => (id, reason),
        other => panic!("expected an unbind, got {other:?}"),
    }
}

/// What a `Probe` client saw.
#[derive(Default, Debug)]
struct ProbeLog {
    post_init: usize,
    completed: usize,
    received: Vec<u8>,
    unbinds: Vec<UnbindReason>,
    local_addr: Option<SocketAddr>,
    /// What `send_data` returned when called from `post_init` (with `send_early`).
    early_send_queued: Option<bool>,
}

/// Something to do on the reactor after an event.
type Then = Box<dyn FnOnce(&mut Reactor)>;

/// A client for single-reactor tests: sends `send` once connected (or already in
/// `post_init` with `send_early`), closes once it has received `close_after` bytes, and
/// stops the reactor when it unbinds (if asked to).
struct Probe {
    log: Rc<RefCell<ProbeLog>>,
    send: Vec<u8>,
    send_early: bool,
    close_after: usize,
    stop_on_unbind: bool,
    on_unbind: Option<Then>,
}

impl Probe {
    fn new(send: &[u8], close_after: usize) -> (Probe, Rc<RefCell<ProbeLog>>) {
        let log = Rc::new(RefCell::new(ProbeLog::default()));
        let probe = Probe {
            log: Rc::clone(&log),
            send: send.to_vec(),
            send_early: false,
            close_after,
            stop_on_unbind: true,
            on_unbind: None,
        };
        (probe, log)
    }
}

impl Handler for Probe {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let mut log = self.log.borrow_mut();
        log.post_init += 1;
        if self.send_early {
            log.early_send_queued = Some(cx.send_data(&self.send));
        }
    }

    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        let mut log = self.log.borrow_mut();
        log.completed += 1;
        log.local_addr = cx.local_addr();
        if !self.send_early && !self.send.is_empty() {
            assert!(cx.send_data(&self.send));
        }
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let mut log = self.log.borrow_mut();
        log.received.extend_from_slice(data);
        if log.received.len() >= self.close_after {
            cx.close();
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.log.borrow_mut().unbinds.push(reason);
        if let Some(then) = self.on_unbind.take() {
            then(cx.reactor());
        }
        if self.stop_on_unbind {
            cx.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Many concurrent clients
// ---------------------------------------------------------------------------------------

const FLEET: usize = 1000;
const FLEET_PAYLOAD: usize = 64 * 1024;

/// Server side of the fleet test: echo, remember the peak number of live connections.
struct PeakEcho {
    peak: Arc<AtomicUsize>,
    unbound: Sender<UnbindReason>,
}

impl Handler for PeakEcho {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.peak.fetch_max(cx.connection_count(), Ordering::SeqCst);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.unbound.send(reason);
    }
}

#[derive(Default)]
struct FleetState {
    started: usize,
    completed: usize,
    open_when_all_connected: usize,
    echoed: usize,
    unbound: usize,
    failures: Vec<String>,
}

struct FleetClient {
    index: usize,
    server: SocketAddr,
    payload: Vec<u8>,
    received: usize,
    fleet: Rc<RefCell<FleetState>>,
}

/// Opens the next fleet client; at most `FLEET_CONNECTS_IN_FLIGHT` connects are pending so
/// the server's accept backlog (128) is not flooded into SYN retransmits.
fn start_fleet_client(r: &mut Reactor, server: SocketAddr, fleet: &Rc<RefCell<FleetState>>) {
    let index = {
        let mut f = fleet.borrow_mut();
        if f.started == FLEET {
            return;
        }
        f.started += 1;
        f.started - 1
    };
    let client = FleetClient {
        index,
        server,
        payload: Pattern::new(index as u64).bytes(FLEET_PAYLOAD),
        received: 0,
        fleet: Rc::clone(fleet),
    };
    r.connect(server, client).expect("create client socket");
}

const FLEET_CONNECTS_IN_FLIGHT: usize = 64;

impl Handler for FleetClient {
    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        let all_connected = {
            let mut f = self.fleet.borrow_mut();
            f.completed += 1;
            f.completed == FLEET
        };
        if all_connected {
            // Nobody sends before all connections are open, and nobody closes before
            // every echo is complete: the whole fleet is open at once.
            self.fleet.borrow_mut().open_when_all_connected = cx.connection_count();
            cx.next_tick(|r| {
                for id in r.connection_ids() {
                    let _ = r.with_handler(id, |c: &mut FleetClient, cx| {
                        assert!(cx.send_data(&c.payload));
                    });
                }
            });
        } else {
            start_fleet_client(cx, self.server, &self.fleet);
        }
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let end = self.received + data.len();
        if end > FLEET_PAYLOAD || data != &self.payload[self.received..end] {
            self.fleet.borrow_mut().failures.push(format!(
                "client {}: wrong bytes at offset {} (+{})",
                self.index,
                self.received,
                data.len()
            ));
            cx.stop();
            return;
        }
        self.received = end;
        if end == FLEET_PAYLOAD {
            let mut f = self.fleet.borrow_mut();
            f.echoed += 1;
            if f.echoed == FLEET {
                cx.stop();
            }
        }
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let mut f = self.fleet.borrow_mut();
        f.unbound += 1;
        if self.received != FLEET_PAYLOAD || reason != UnbindReason::ReactorStopped {
            f.failures.push(format!(
                "client {}: unbound ({reason}) after {} of {FLEET_PAYLOAD} bytes",
                self.index, self.received
            ));
        }
    }
}

#[test]
fn thousand_concurrent_clients_each_echo_64k_byte_for_byte() {
    raise_fd_limit();
    let peak = Arc::new(AtomicUsize::new(0));
    let (unbound_tx, unbound_rx) = mpsc::channel();
    let server_peak = Arc::clone(&peak);
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || PeakEcho {
            peak: Arc::clone(&server_peak),
            unbound: unbound_tx.clone(),
        })?;
        Ok(r.server_addr(id).expect("a TCP server has an address"))
    });
    let addr = server.value;

    let fleet = Rc::new(RefCell::new(FleetState::default()));
    let f = Rc::clone(&fleet);
    let started = Instant::now();
    let (client_reactor, timed_out) = run_bounded(Duration::from_secs(40), move |r| {
        for _ in 0..FLEET_CONNECTS_IN_FLIGHT {
            start_fleet_client(r, addr, &f);
        }
        Ok(())
    });
    let f = fleet.borrow();
    println!(
        "{FLEET} clients x {FLEET_PAYLOAD} bytes echoed in {:.2?}",
        started.elapsed()
    );
    assert!(
        f.failures.is_empty(),
        "failures: {:?}",
        &f.failures[..f.failures.len().min(10)]
    );
    assert!(
        !timed_out,
        "watchdog stopped the clients: {} connected, {} echoed",
        f.completed, f.echoed
    );
    assert_eq!(f.completed, FLEET);
    assert_eq!(
        f.open_when_all_connected, FLEET,
        "client connections open at once"
    );
    assert_eq!(f.echoed, FLEET);
    assert_eq!(f.unbound, FLEET, "each client unbinds exactly once");
    assert_eq!(client_reactor.connection_count(), 0);
    drop(client_reactor);

    let reasons: Vec<UnbindReason> = (0..FLEET)
        .map(|_| recv(&unbound_rx, SECS_10, "server-side unbinds"))
        .collect();
    let others: Vec<_> = reasons
        .iter()
        .filter(|r| **r != UnbindReason::PeerClosed)
        .collect();
    assert!(
        others.is_empty(),
        "server-side unbinds other than PeerClosed: {others:?}"
    );
    assert_eq!(
        peak.load(Ordering::SeqCst),
        FLEET,
        "server connections open at once"
    );
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 2. Backpressure keeps memory bounded
// ---------------------------------------------------------------------------------------

const FLOOD_TOTAL: usize = 100 * 1024 * 1024;
const FLOOD_CHUNK: usize = 64 * 1024;
const FLOOD_HIGH: usize = 1024 * 1024;
const FLOOD_LOW: usize = 256 * 1024;
const FLOOD_SEED: u64 = 0xF100D;
/// Growth allowed over the baseline: the queue (high water + one chunk, and a Vec that may
/// have doubled past it), plus allocator and stack slack.
const FLOOD_RSS_SLACK: usize = 2 * (FLOOD_HIGH + FLOOD_CHUNK) + 4 * 1024 * 1024;

#[derive(Debug)]
enum FloodEvent {
    /// The producer's first pause: it stalled on the high-water mark, or had nothing left.
    FirstStop { sent: usize, rss: usize },
    Unbound {
        reason: UnbindReason,
        sent: usize,
        max_outbound: usize,
        max_rss: usize,
        stalls: usize,
    },
}

/// Sends `FLOOD_TOTAL` bytes, producing only while below the high-water mark.
struct Flood {
    pattern: Pattern,
    chunk: Vec<u8>,
    sent: usize,
    max_outbound: usize,
    max_rss: usize,
    stalls: usize,
    reported_first_stop: bool,
    events: Sender<FloodEvent>,
}

impl Flood {
    fn pump(&mut self, cx: &mut Context<'_>) {
        while self.sent < FLOOD_TOTAL && !cx.is_above_high_water() {
            let n = FLOOD_CHUNK.min(FLOOD_TOTAL - self.sent);
            self.pattern.fill(&mut self.chunk[..n]);
            assert!(cx.send_data(&self.chunk[..n]));
            self.sent += n;
            self.max_outbound = self.max_outbound.max(cx.outbound_size());
        }
        self.max_rss = self.max_rss.max(vm_rss());
        if !self.reported_first_stop {
            self.reported_first_stop = true;
            let _ = self.events.send(FloodEvent::FirstStop {
                sent: self.sent,
                rss: self.max_rss,
            });
        }
        if self.sent == FLOOD_TOTAL {
            cx.close_after_writing();
        } else {
            self.stalls += 1;
        }
    }
}

impl Handler for Flood {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.set_water_marks(FLOOD_HIGH, FLOOD_LOW);
        self.pump(cx);
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}

    fn outbound_drained(&mut self, cx: &mut Context<'_>) {
        self.pump(cx);
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.events.send(FloodEvent::Unbound {
            reason,
            sent: self.sent,
            max_outbound: self.max_outbound,
            max_rss: self.max_rss,
            stalls: self.stalls,
        });
    }
}

#[test]
fn peer_that_stops_reading_keeps_memory_bounded() {
    // RSS is per process: measure in a child process that runs only this test.
    if !child::role_is(child::ALONE) {
        child::run_alone(
            "peer_that_stops_reading_keeps_memory_bounded",
            Duration::from_secs(50),
        );
        return;
    }
    let (tx, rx) = mpsc::channel();
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || Flood {
            pattern: Pattern::new(FLOOD_SEED),
            chunk: vec![0; FLOOD_CHUNK],
            sent: 0,
            max_outbound: 0,
            max_rss: 0,
            stalls: 0,
            reported_first_stop: false,
            events: tx.clone(),
        })?;
        Ok(r.server_addr(id).expect("a TCP server has an address"))
    });
    let addr = server.value;
    let mut verifier = Pattern::new(FLOOD_SEED);
    let mut buf = vec![0u8; 256 * 1024];
    let baseline = vm_rss();

    let mut client = connect(addr);
    let FloodEvent::FirstStop { sent, rss } = recv(&rx, SECS_10, "the producer to stall") else {
        panic!("expected the producer's first stop before its unbind");
    };
    assert!(
        sent < FLOOD_TOTAL / 4,
        "the producer queued {sent} bytes for a peer that is not reading (RSS +{})",
        rss.saturating_sub(baseline)
    );
    // The peer is not reading: watch the process for a while; nothing may grow.
    let mut max_rss = rss;
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(300) {
        max_rss = max_rss.max(vm_rss());
        thread::sleep(Duration::from_millis(10));
    }
    let growth = max_rss.saturating_sub(baseline);
    println!(
        "stalled after {sent} bytes; RSS baseline {baseline}, max {max_rss} (+{growth}) \
         while the peer was not reading"
    );
    assert!(
        growth <= FLOOD_RSS_SLACK,
        "RSS grew by {growth} bytes while the peer was not reading (bound {FLOOD_RSS_SLACK})"
    );

    // Now read everything and check it.
    let mut total = 0usize;
    loop {
        let n = client.read(&mut buf).expect("read flood");
        if n == 0 {
            break;
        }
        assert!(
            verifier.matches(&buf[..n]),
            "wrong bytes at offset {total} (+{n})"
        );
        total += n;
        assert!(total <= FLOOD_TOTAL, "more than {FLOOD_TOTAL} bytes");
    }
    assert_eq!(total, FLOOD_TOTAL);
    let FloodEvent::Unbound {
        reason,
        sent,
        max_outbound,
        max_rss,
        stalls,
    } = recv(&rx, SECS_10, "the producer's unbind")
    else {
        panic!("expected the producer's unbind");
    };
    let growth = max_rss.saturating_sub(baseline);
    println!(
        "{stalls} stalls, max outbound {max_outbound}, max RSS growth seen by the producer \
         {growth}"
    );
    assert_eq!(reason, UnbindReason::ClosedByUs);
    assert_eq!(sent, FLOOD_TOTAL);
    assert!(stalls > 0);
    assert!(
        max_outbound <= FLOOD_HIGH + FLOOD_CHUNK,
        "outbound queue reached {max_outbound} (high water {FLOOD_HIGH} + chunk {FLOOD_CHUNK})"
    );
    assert!(
        growth <= FLOOD_RSS_SLACK,
        "RSS grew by {growth} bytes during the transfer (bound {FLOOD_RSS_SLACK})"
    );
    server.stop();
}

/// Queues more than its high-water mark for a peer that never reads, so it is not read
/// itself (read backpressure); then, on the next tick, raises its marks.
struct ThrottledThenRaised {
    read: usize,
    expected: usize,
    all_read: Rc<Cell<bool>>,
}

impl Handler for ThrottledThenRaised {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.send_data(&vec![0u8; 4 << 20]);
        assert!(
            cx.is_above_high_water(),
            "setup: the queue must throttle reading"
        );
        let id = cx.id();
        cx.next_tick(move |r| r.set_water_marks(id, 64 << 20, 32 << 20));
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.read += data.len();
        if self.read == self.expected {
            self.all_read.set(true);
            cx.stop();
        }
    }
}

#[test]
fn raising_the_water_marks_of_a_throttled_connection_resumes_reading() {
    const INPUT: usize = 100_000;
    let (mut peer, server) = UnixStream::pair().unwrap();
    // Everything the peer will ever send is already waiting: no later arrival will bring
    // a new readable edge, so only the reactor's own bookkeeping can resume reading.
    peer.write_all(&[1u8; INPUT]).unwrap();
    let all_read = Rc::new(Cell::new(false));
    run_bounded(Duration::from_secs(15), |r| {
        r.attach(
            server.as_raw_fd(),
            ThrottledThenRaised {
                read: 0,
                expected: INPUT,
                all_read: Rc::clone(&all_read),
            },
        )?;
        Ok(())
    });
    assert!(
        all_read.get(),
        "reading stalled after the marks were raised"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Refused connect
// ---------------------------------------------------------------------------------------

#[test]
fn connect_to_closed_port_unbinds_refused_without_completing() {
    let closed = closed_port();
    let (probe, log) = Probe::new(b"never sent", usize::MAX);
    let (reactor, timed_out) = run_bounded(SECS_10, move |r| {
        r.connect(closed, probe)?;
        Ok(())
    });
    let log = log.borrow();
    assert!(!timed_out, "no unbind: {log:?}");
    assert_eq!(log.post_init, 1);
    assert_eq!(
        log.completed, 0,
        "connection_completed ran for a refused connect"
    );
    assert_eq!(log.unbinds, vec![UnbindReason::Refused]);
    assert_eq!(reactor.connection_count(), 0);
}

// ---------------------------------------------------------------------------------------
// 4. Inactivity timeout
// ---------------------------------------------------------------------------------------

const INACTIVITY: Duration = Duration::from_millis(300);
const TALK_ROUNDS: usize = 20;
const TALK_PAUSE: Duration = Duration::from_millis(50);

#[derive(Default)]
struct InactivityLog {
    /// Server side: peer address, reason, how long the connection lived.
    server_unbinds: Vec<(Option<SocketAddr>, UnbindReason, Duration)>,
    idle_local: Option<SocketAddr>,
    talker_local: Option<SocketAddr>,
    talker_echoes: usize,
    client_unbinds: Vec<(&'static str, UnbindReason)>,
}

struct TimedServer {
    log: Rc<RefCell<InactivityLog>>,
    peer: Option<SocketAddr>,
    accepted: Instant,
}

impl Handler for TimedServer {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.peer = cx.peer_addr();
        self.accepted = Instant::now();
        cx.set_comm_inactivity_timeout(Some(INACTIVITY));
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let mut log = self.log.borrow_mut();
        log.server_unbinds
            .push((self.peer, reason, self.accepted.elapsed()));
        if log.server_unbinds.len() == 2 {
            cx.stop();
        }
    }
}

/// `talker`: one byte, wait for its echo, pause, repeat; then close. Otherwise idle.
struct TimedClient {
    log: Rc<RefCell<InactivityLog>>,
    talker: bool,
}

impl Handler for TimedClient {
    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        let local = cx.local_addr();
        let mut log = self.log.borrow_mut();
        if self.talker {
            log.talker_local = local;
            cx.send_data(b"t");
        } else {
            log.idle_local = local;
        }
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let mut log = self.log.borrow_mut();
        log.talker_echoes += data.len();
        if log.talker_echoes == TALK_ROUNDS {
            cx.close();
        } else {
            let id = cx.id();
            cx.add_timer(TALK_PAUSE, move |r| {
                r.send_to(id, b"t");
            });
        }
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let who = if self.talker { "talker" } else { "idle" };
        self.log.borrow_mut().client_unbinds.push((who, reason));
    }
}

#[test]
fn comm_inactivity_timeout_closes_idle_connection_but_not_a_talking_one() {
    let log = Rc::new(RefCell::new(InactivityLog::default()));
    let l = Rc::clone(&log);
    let (_, timed_out) = run_bounded(SECS_10, move |r| {
        let server_log = Rc::clone(&l);
        let server = r.start_server("127.0.0.1:0", move || TimedServer {
            log: Rc::clone(&server_log),
            peer: None,
            accepted: Instant::now(),
        })?;
        let addr = r.server_addr(server).unwrap();
        for talker in [false, true] {
            r.connect(
                addr,
                TimedClient {
                    log: Rc::clone(&l),
                    talker,
                },
            )?;
        }
        Ok(())
    });
    let log = log.borrow();
    assert!(
        !timed_out,
        "server unbinds so far: {:?}",
        log.server_unbinds
    );
    let find = |local: Option<SocketAddr>| {
        log.server_unbinds
            .iter()
            .find(|(peer, _, _)| *peer == local && local.is_some())
            .map(|(_, reason, lived)| (reason.clone(), *lived))
            .expect("a server-side unbind for this client")
    };
    let (idle_reason, idle_lived) = find(log.idle_local);
    assert_eq!(idle_reason, UnbindReason::InactivityTimeout);
    assert!(
        idle_lived >= INACTIVITY && idle_lived < INACTIVITY * 5,
        "idle connection closed after {idle_lived:?} (timeout {INACTIVITY:?})"
    );
    let (talker_reason, talker_lived) = find(log.talker_local);
    assert_eq!(
        talker_reason,
        UnbindReason::PeerClosed,
        "the talking connection must end by the client's close, not the timeout"
    );
    assert!(
        talker_lived >= INACTIVITY * 3,
        "the talker only lived {talker_lived:?}; it should outlive several timeouts"
    );
    assert_eq!(log.talker_echoes, TALK_ROUNDS);
    let mut client_unbinds = log.client_unbinds.clone();
    client_unbinds.sort_by_key(|&(who, _)| who);
    assert_eq!(
        client_unbinds,
        vec![
            ("idle", UnbindReason::PeerClosed),
            ("talker", UnbindReason::ClosedByUs)
        ]
    );
}

/// Records when and why it ended.
struct EndTimer {
    ended: Rc<RefCell<Option<(UnbindReason, Instant)>>>,
}

impl Handler for EndTimer {
    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        *self.ended.borrow_mut() = Some((reason, Instant::now()));
        cx.reactor().stop();
    }
}

#[test]
fn a_comm_inactivity_timeout_made_longer_then_shorter_is_kept_each_time() {
    // A proxy switches timeouts per request: a longer one must not close at the shorter
    // one's deadline (its timer is kept and re-armed when it fires), and a shorter one
    // must close at its own.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ended = Rc::new(RefCell::new(None));
    let shortened_at = Rc::new(RefCell::new(None));
    let (e, s) = (Rc::clone(&ended), Rc::clone(&shortened_at));
    let (_, timed_out) = run_bounded(SECS_10, move |r| {
        let id = r.connect(addr, EndTimer { ended: e })?;
        r.set_comm_inactivity_timeout(id, Some(Duration::from_millis(100)));
        r.set_comm_inactivity_timeout(id, Some(Duration::from_secs(5)));
        r.add_timer(Duration::from_millis(400), move |r| {
            assert!(
                r.connection_ids().contains(&id),
                "closed at the old, shorter deadline"
            );
            *s.borrow_mut() = Some(Instant::now());
            r.set_comm_inactivity_timeout(id, Some(Duration::from_millis(50)));
        });
        Ok(())
    });
    assert!(!timed_out);
    let (reason, at) = ended.borrow().clone().expect("it ended");
    assert_eq!(reason, UnbindReason::InactivityTimeout);
    let after = at - shortened_at.borrow().expect("shortened");
    // Idle since the connect: the 50 ms timeout is already past when it is set.
    assert!(
        after < Duration::from_millis(500),
        "closed {after:?} after shortening"
    );
    drop(listener);
}

// ---------------------------------------------------------------------------------------
// 5. Pending-connect timeout
// ---------------------------------------------------------------------------------------

#[test]
fn pending_connect_timeout_fires_when_the_peer_never_answers() {
    let Some(blackhole) = Blackhole::on(IpAddr::from([127, 0, 0, 1])) else {
        println!("SKIPPED: this kernel does not leave connects to a full backlog pending");
        return;
    };
    let addr = blackhole.addr;
    struct Hanging {
        log: Rc<RefCell<ProbeLog>>,
        timeout: Option<Duration>,
        started: Instant,
        lived: Rc<RefCell<Vec<Duration>>>,
    }
    impl Handler for Hanging {
        fn post_init(&mut self, cx: &mut Context<'_>) {
            self.log.borrow_mut().post_init += 1;
            if let Some(t) = self.timeout {
                cx.set_pending_connect_timeout(t);
            }
        }
        fn connection_completed(&mut self, _cx: &mut Context<'_>) {
            self.log.borrow_mut().completed += 1;
        }
        fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
        fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
            let mut log = self.log.borrow_mut();
            log.unbinds.push(reason);
            self.lived.borrow_mut().push(self.started.elapsed());
            if log.unbinds.len() == 2 {
                cx.stop();
            }
        }
    }
    let log = Rc::new(RefCell::new(ProbeLog::default()));
    let lived = Rc::new(RefCell::new(Vec::new()));
    let (l, lv) = (Rc::clone(&log), Rc::clone(&lived));
    let (_, timed_out) = run_bounded(SECS_10, move |r| {
        // One with a per-connection timeout set in post_init, one with the default.
        r.connect(
            addr,
            Hanging {
                log: Rc::clone(&l),
                timeout: Some(Duration::from_millis(300)),
                started: Instant::now(),
                lived: Rc::clone(&lv),
            },
        )?;
        r.set_default_pending_connect_timeout(Duration::from_millis(600));
        r.connect(
            addr,
            Hanging {
                log: Rc::clone(&l),
                timeout: None,
                started: Instant::now(),
                lived: Rc::clone(&lv),
            },
        )?;
        Ok(())
    });
    let log = log.borrow();
    let lived = lived.borrow();
    assert!(!timed_out, "connects did not time out: {log:?}");
    assert_eq!(log.completed, 0, "a connect to a full backlog completed");
    assert_eq!(
        log.unbinds,
        vec![UnbindReason::ConnectTimeout, UnbindReason::ConnectTimeout]
    );
    // In unbind order: the per-connection 300 ms first, then the 600 ms default (both far
    // from the built-in 20 s).
    assert!(
        lived[0] >= Duration::from_millis(300) && lived[0] < Duration::from_secs(3),
        "per-connection timeout fired after {:?}",
        lived[0]
    );
    assert!(
        lived[1] >= Duration::from_millis(600) && lived[1] < Duration::from_secs(3),
        "default timeout fired after {:?}",
        lived[1]
    );
}

// ---------------------------------------------------------------------------------------
// 6. Half-close
// ---------------------------------------------------------------------------------------

const REQUEST_LEN: usize = 100 * 1024;
const RESPONSE_LEN: usize = 4 * 1024 * 1024;

#[derive(Debug)]
enum HalfCloseEvent {
    PeerClosed { request: Vec<u8> },
    Unbound(UnbindReason),
}

/// Reads a whole request until the peer's FIN, then streams a big response (reversed
/// request + generated bytes) at the pace of the water marks, then sends its own FIN.
struct RespondAfterFin {
    request: Vec<u8>,
    response: Vec<u8>,
    offset: usize,
    events: Sender<HalfCloseEvent>,
}

impl RespondAfterFin {
    fn pump(&mut self, cx: &mut Context<'_>) {
        while self.offset < self.response.len() && !cx.is_above_high_water() {
            let end = (self.offset + 32 * 1024).min(self.response.len());
            assert!(cx.send_data(&self.response[self.offset..end]));
            self.offset = end;
        }
        if self.offset == self.response.len() {
            cx.close_write();
        }
    }
}

fn half_close_response(request: &[u8]) -> Vec<u8> {
    let mut response: Vec<u8> = request.iter().rev().copied().collect();
    response.extend(Pattern::new(7).bytes(RESPONSE_LEN));
    response
}

impl Handler for RespondAfterFin {
    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.request.extend_from_slice(data);
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        let _ = self.events.send(HalfCloseEvent::PeerClosed {
            request: self.request.clone(),
        });
        self.response = half_close_response(&self.request);
        self.pump(cx);
        PeerClosed::KeepWriting
    }

    fn outbound_drained(&mut self, cx: &mut Context<'_>) {
        if !self.response.is_empty() {
            self.pump(cx);
        }
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.events.send(HalfCloseEvent::Unbound(reason));
    }
}

#[test]
fn half_closed_peer_still_gets_whole_response_when_handler_keeps_writing() {
    let (tx, rx) = mpsc::channel();
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || RespondAfterFin {
            request: Vec::new(),
            response: Vec::new(),
            offset: 0,
            events: tx.clone(),
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let addr = server.value;
    let request = Pattern::new(6).bytes(REQUEST_LEN);
    let mut client = connect(addr);
    client.write_all(&request).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = read_all(&mut client);
    let HalfCloseEvent::PeerClosed { request: seen } = recv(&rx, SECS_10, "peer_closed") else {
        panic!("expected peer_closed first");
    };
    assert!(seen == request, "server saw {} request bytes", seen.len());
    let expected = half_close_response(&request);
    assert_eq!(got.len(), expected.len(), "response length");
    assert!(got == expected, "response bytes differ");
    match recv(&rx, SECS_10, "the server's unbind") {
        HalfCloseEvent::Unbound(reason) => assert_eq!(reason, UnbindReason::PeerClosed),
        other => panic!("expected unbind, got {other:?}"),
    }
    server.stop();
}

#[test]
fn default_peer_closed_flushes_then_unbinds_peer_closed() {
    let (server, addr, events) = echo_server_thread();
    let request = Pattern::new(61).bytes(200 * 1024);
    let mut client = connect(addr);
    let (id, _) = expect_accepted(&events);
    client.write_all(&request).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = read_all(&mut client);
    assert_eq!(got.len(), request.len());
    assert!(got == request, "echo differs");
    assert_eq!(expect_unbound(&events), (id, UnbindReason::PeerClosed));
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 7. close_after_writing and close
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum CloseEvent {
    /// Right after the close call in post_init.
    Closing {
        queued_at_close: usize,
        send_after_close_accepted: bool,
    },
    Unbound(UnbindReason),
}

/// Sends `len` generated bytes in post_init, then closes (after writing, or at once).
struct SendThenClose {
    len: usize,
    after_writing: bool,
    events: Sender<CloseEvent>,
}

impl Handler for SendThenClose {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        assert!(cx.send_data(&Pattern::new(70).bytes(self.len)));
        let queued_at_close = cx.outbound_size();
        if self.after_writing {
            cx.close_after_writing();
        } else {
            cx.close();
        }
        let send_after_close_accepted = cx.send_data(b"too late");
        let _ = self.events.send(CloseEvent::Closing {
            queued_at_close,
            send_after_close_accepted,
        });
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.events.send(CloseEvent::Unbound(reason));
    }
}

/// Far more than the kernel buffers of a peer that is not reading can take, so most of it
/// is still queued when the server closes.
const CLOSE_PAYLOAD: usize = 16 * 1024 * 1024;

/// Connects to a `SendThenClose` server and returns the client (which has not read
/// anything yet) and how many bytes were queued when the server closed.
fn connect_to_send_then_close(
    after_writing: bool,
) -> (
    ReactorThread<SocketAddr>,
    TcpStream,
    mpsc::Receiver<CloseEvent>,
    usize,
) {
    let (tx, rx) = mpsc::channel();
    let rt = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || SendThenClose {
            len: CLOSE_PAYLOAD,
            after_writing,
            events: tx.clone(),
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let addr = rt.value;
    let client = connect(addr);
    let CloseEvent::Closing {
        queued_at_close,
        send_after_close_accepted,
    } = recv(&rx, SECS_10, "the server's close")
    else {
        panic!("expected the close before the unbind");
    };
    assert!(
        queued_at_close > 0,
        "precondition: bytes still queued when closing"
    );
    assert!(
        !send_after_close_accepted,
        "send_data after close was accepted"
    );
    (rt, client, rx, queued_at_close)
}

#[test]
fn close_after_writing_delivers_every_queued_byte_before_closing() {
    let (server, mut client, events, _) = connect_to_send_then_close(true);
    let got = read_all(&mut client);
    assert_eq!(got.len(), CLOSE_PAYLOAD);
    assert!(Pattern::new(70).matches(&got), "bytes differ");
    match recv(&events, SECS_10, "the server's unbind") {
        CloseEvent::Unbound(reason) => assert_eq!(reason, UnbindReason::ClosedByUs),
        other => panic!("expected the unbind, got {other:?}"),
    }
    server.stop();
}

#[test]
fn close_drops_queued_bytes_and_unbinds_closed_by_us() {
    let (server, mut client, events, queued_at_close) = connect_to_send_then_close(false);
    // The unbind comes without our reading anything: nothing waits for the queue.
    match recv(&events, SECS_10, "the server's unbind") {
        CloseEvent::Unbound(reason) => assert_eq!(reason, UnbindReason::ClosedByUs),
        other => panic!("expected the unbind, got {other:?}"),
    }
    let got = read_all(&mut client);
    assert!(
        got.len() <= CLOSE_PAYLOAD - queued_at_close,
        "got {} bytes although {queued_at_close} of {CLOSE_PAYLOAD} were still queued at close",
        got.len(),
    );
    assert!(
        Pattern::new(70).matches(&got),
        "the bytes that did arrive differ"
    );
    server.stop();
}

/// Pauses at once, so its peer's input is never read; reports its id and its unbind.
struct LeavesInputUnread {
    accepted: Sender<ConnId>,
    unbound: Sender<UnbindReason>,
}

impl Handler for LeavesInputUnread {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.pause();
        let _ = self.accepted.send(cx.id());
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.unbound.send(reason);
    }
}

/// Closing after writing while the peer has sent input we never read must not reset the
/// connection: the reset would destroy the response the peer has not read yet.
#[test]
fn close_after_writing_with_unread_input_delivers_everything_then_fin_not_reset() {
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let (unbound_tx, unbound_rx) = mpsc::channel();
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || LeavesInputUnread {
            accepted: accepted_tx.clone(),
            unbound: unbound_tx.clone(),
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let mut client = connect(server.value);
    let id = accepted_rx.recv_timeout(SECS_10).unwrap();
    // Input the server will never read, acknowledged by its kernel before it closes.
    client.write_all(&[b'x'; 4096]).unwrap();
    wait_until_peer_kernel_has_everything(&client, SECS_5);
    let response = Pattern::new(253).bytes(200_000);
    let sent = response.clone();
    server.handle().schedule(move |r| {
        assert!(r.send_to(id, &sent));
        r.close_connection_after_writing(id);
    });
    let mut got = Vec::new();
    client.set_read_timeout(Some(SECS_10)).unwrap();
    let outcome = client.read_to_end(&mut got);
    assert!(
        outcome.is_ok(),
        "expected FIN after the response, got {outcome:?}"
    );
    assert_eq!(got.len(), response.len());
    assert!(got == response);
    drop(client); // our FIN ends the server's lingering close
    let reason = unbound_rx.recv_timeout(SECS_10).unwrap();
    assert_eq!(reason, UnbindReason::ClosedByUs);
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 8. Unix-domain sockets
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct UnixOutcome {
    existed_while_running: bool,
    stop_server_returned: bool,
    exists_after_stop: bool,
}

#[test]
fn unix_socket_server_echoes_and_stop_server_removes_socket_file() {
    let path = std::env::temp_dir().join(format!("ember-streams-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let payload = Pattern::new(8).bytes(256 * 1024);
    let (mut probe, log) = Probe::new(&payload, payload.len());
    let outcome = Rc::new(RefCell::new(UnixOutcome::default()));
    let (p, out) = (path.clone(), Rc::clone(&outcome));
    let path_for_client = path.clone();
    let (_, timed_out) = run_bounded(SECS_10, move |r| {
        let server = r.start_unix_server(&p, || Echo)?;
        out.borrow_mut().existed_while_running = p.exists();
        // Once the client has its echo and has closed: stop the server, look for the file.
        probe.on_unbind = Some(Box::new(move |r| {
            let stopped = r.stop_server(server);
            let mut out = out.borrow_mut();
            out.stop_server_returned = stopped;
            out.exists_after_stop = p.exists();
        }));
        r.connect_unix(&path_for_client, probe)?;
        Ok(())
    });
    let log = log.borrow();
    let outcome = outcome.borrow();
    assert!(!timed_out, "{:?}", log.unbinds);
    assert!(
        outcome.existed_while_running,
        "no socket file while the server ran"
    );
    assert_eq!(log.completed, 1);
    assert_eq!(log.received.len(), payload.len());
    assert!(log.received == payload, "echo differs");
    assert_eq!(log.unbinds, vec![UnbindReason::ClosedByUs]);
    assert!(
        outcome.stop_server_returned,
        "stop_server said the server was not running"
    );
    assert!(
        !outcome.exists_after_stop,
        "stop_server left {} behind",
        path.display()
    );
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------------------
// 9. IPv6
// ---------------------------------------------------------------------------------------

#[test]
fn ipv6_loopback_server_reports_bound_port_and_echoes() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: IPv6 loopback is not available here");
        return;
    }
    let (probe, log) = Probe::new(b"hello over v6", 13);
    let bound = Rc::new(RefCell::new(None));
    let b = Rc::clone(&bound);
    let (_, timed_out) = run_bounded(SECS_10, move |r| {
        let server = r.start_server("[::1]:0", || Echo)?;
        let addr = r.server_addr(server).expect("server address");
        *b.borrow_mut() = Some(addr);
        r.connect(addr, probe)?;
        Ok(())
    });
    let addr = bound.borrow().expect("server started");
    assert_eq!(addr.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_ne!(
        addr.port(),
        0,
        "server_addr must report the kernel-chosen port"
    );
    let log = log.borrow();
    assert!(!timed_out, "{log:?}");
    assert_eq!(log.received, b"hello over v6");
    assert!(log.local_addr.is_some_and(|a| a.is_ipv6()));
    assert_eq!(log.unbinds, vec![UnbindReason::ClosedByUs]);
}

// ---------------------------------------------------------------------------------------
// 10. bind_connect
// ---------------------------------------------------------------------------------------

#[test]
fn bind_connect_uses_chosen_local_address_and_port() {
    let (server, addr, events) = echo_server_thread();
    // The freed port can be taken by someone else before we bind it: retry a few times.
    let mut outcome = None;
    for _ in 0..5 {
        let local = closed_port();
        let (probe, log) = Probe::new(b"from a chosen port", 18);
        let mut bind_error = None;
        let (_, timed_out) = run_bounded(SECS_10, |r| {
            if let Err(e) = r.bind_connect(local, addr, probe) {
                bind_error = Some(e);
                r.stop();
            }
            Ok(())
        });
        match bind_error {
            Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Some(e) => panic!("bind_connect: {e}"),
            None => {
                outcome = Some((local, log, timed_out));
                break;
            }
        }
    }
    let (local, log, timed_out) = outcome.expect("a free local port within 5 tries");
    let log = log.borrow();
    assert!(!timed_out, "{log:?}");
    assert_eq!(log.local_addr, Some(local));
    assert_eq!(log.received, b"from a chosen port");
    let (_, peer) = expect_accepted(&events);
    assert_eq!(peer, Some(local), "the server saw another peer address");
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 11. Stale ids
// ---------------------------------------------------------------------------------------

/// "conn#SLOT.SERIAL" -> "conn#SLOT".
fn slot_of(id: ConnId) -> String {
    let text = format!("{id:?}");
    text.split('.').next().unwrap().to_string()
}

#[test]
fn stale_id_after_slot_reuse_reaches_nothing() {
    let (server, addr, events) = echo_server_thread();
    let first = connect(addr);
    let (old, _) = expect_accepted(&events);
    drop(first);
    assert_eq!(expect_unbound(&events), (old, UnbindReason::PeerClosed));

    let mut second = connect(addr);
    let (new, _) = expect_accepted(&events);
    assert_ne!(old, new);
    assert_eq!(
        slot_of(old),
        slot_of(new),
        "precondition: the slot was reused"
    );

    let (tx, rx) = mpsc::channel();
    server.handle().schedule(move |r| {
        let alive = r.is_alive(old);
        let handler = r.with_handler(old, |_: &mut ReportingEcho, _| ()).is_ok();
        r.close_connection(old); // must not close the new connection
        r.pause_connection(old); // must not pause it either
        let stale = r.send_to(old, b"stale");
        let fresh = r.send_to(new, b"fresh");
        r.close_connection_after_writing(new);
        let _ = tx.send((alive, handler, stale, fresh));
    });
    let (alive, handler, stale, fresh) = recv(&rx, SECS_10, "the scheduled sends");
    assert!(!alive, "is_alive(old id) after its connection closed");
    assert!(!handler, "with_handler reached a handler through an old id");
    assert!(!stale, "send_to(old id) claimed to queue bytes");
    assert!(fresh, "send_to(new id) failed");
    assert_eq!(read_all(&mut second), b"fresh");
    assert_eq!(expect_unbound(&events), (new, UnbindReason::ClosedByUs));
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 12. pause / resume
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum PauseEvent {
    Accepted(ConnId),
    PeerClosed(Vec<u8>),
    Unbound(UnbindReason),
}

/// Paused from the start; collects everything, reports at the peer's FIN.
struct PausedSink {
    received: Vec<u8>,
    events: Sender<PauseEvent>,
}

impl Handler for PausedSink {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        // Room for the whole payload in the kernel while we are not reading.
        cx.set_sock_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 * 1024 * 1024)
            .unwrap();
        cx.pause();
        let _ = self.events.send(PauseEvent::Accepted(cx.id()));
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.received.extend_from_slice(data);
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        let _ = self
            .events
            .send(PauseEvent::PeerClosed(std::mem::take(&mut self.received)));
        PeerClosed::Close
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.events.send(PauseEvent::Unbound(reason));
    }
}

#[test]
fn resume_delivers_everything_that_arrived_while_paused() {
    // Several read budgets' worth, so delivery after resume spans ticks.
    const LEN: usize = 1024 * 1024;
    let (tx, rx) = mpsc::channel();
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || PausedSink {
            received: Vec::new(),
            events: tx.clone(),
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let addr = server.value;
    let mut client = connect(addr);
    let PauseEvent::Accepted(id) = recv(&rx, SECS_10, "the accept") else {
        panic!("expected the accept first");
    };
    let payload = Pattern::new(12).bytes(LEN);
    client.write_all(&payload).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // Every byte and the FIN now sit in the server's kernel buffer; the readiness edge
    // for them has been reported. A round trip through the loop makes sure the reactor
    // has seen that edge (while paused) before we resume.
    wait_until_peer_kernel_has_everything(&client, SECS_5);
    let (probe_tx, probe_rx) = mpsc::channel();
    server.handle().schedule(move |r| {
        let paused = r.is_paused(id);
        let received = r
            .with_handler(id, |h: &mut PausedSink, _| h.received.len())
            .ok();
        let _ = probe_tx.send((paused, received));
    });
    assert_eq!(
        recv(&probe_rx, SECS_10, "the paused probe"),
        (true, Some(0)),
        "(paused, bytes received) while paused"
    );
    assert!(rx.try_recv().is_err(), "an event arrived while paused");

    server.handle().schedule(move |r| r.resume_connection(id));
    match recv(&rx, SECS_10, "the data after resume") {
        PauseEvent::PeerClosed(got) => {
            assert_eq!(got.len(), LEN, "bytes delivered after resume");
            assert!(got == payload, "bytes differ");
        }
        other => panic!("expected everything then peer_closed, got {other:?}"),
    }
    match recv(&rx, SECS_10, "the unbind") {
        PauseEvent::Unbound(reason) => assert_eq!(reason, UnbindReason::PeerClosed),
        other => panic!("expected the unbind, got {other:?}"),
    }
    assert_eq!(read_all(&mut client), b"");
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 13. Fairness
// ---------------------------------------------------------------------------------------

/// First byte `B`: consume everything (counting it); anything else: echo.
struct SinkOrEcho {
    sink: Option<bool>,
    swallowed: Arc<AtomicU64>,
    flowing: Option<Sender<()>>,
}

const BLAST_FLOWING: u64 = 16 * 1024 * 1024;

impl Handler for SinkOrEcho {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        // A deep receive buffer: a blasting peer keeps it from ever running dry.
        cx.set_sock_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 * 1024 * 1024)
            .unwrap();
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let sink = *self.sink.get_or_insert(data[0] == b'B');
        if sink {
            // Work per byte, as a real consumer would do: the reactor then reads this
            // connection slower than the blaster writes, so its socket never runs dry and
            // only the read budget lets other connections in.
            let mut hash = 0u64;
            for _ in 0..4 {
                for &b in data {
                    hash = hash
                        .wrapping_mul(0x0100_0000_01B3)
                        .wrapping_add(u64::from(b));
                }
            }
            std::hint::black_box(hash);
            let total = self
                .swallowed
                .fetch_add(data.len() as u64, Ordering::SeqCst);
            if total + data.len() as u64 >= BLAST_FLOWING
                && let Some(tx) = self.flowing.take()
            {
                let _ = tx.send(());
            }
        } else {
            cx.send_data(data);
        }
    }
}

#[test]
fn blasting_client_does_not_starve_a_small_echo() {
    let swallowed = Arc::new(AtomicU64::new(0));
    let (flowing_tx, flowing_rx) = mpsc::channel();
    let s = Arc::clone(&swallowed);
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || SinkOrEcho {
            sink: None,
            swallowed: Arc::clone(&s),
            flowing: Some(flowing_tx.clone()),
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let addr = server.value;

    let stop = Arc::new(AtomicBool::new(false));
    let stop_blaster = Arc::clone(&stop);
    let blaster = thread::spawn(move || {
        let mut s = connect(addr);
        let mut chunk = Pattern::new(13).bytes(64 * 1024);
        chunk[0] = b'B';
        let mut sent = 0u64;
        while !stop_blaster.load(Ordering::SeqCst) {
            s.write_all(&chunk).expect("blaster write");
            sent += chunk.len() as u64;
        }
        sent
    });
    recv(&flowing_rx, SECS_10, "the blaster's data to flow");

    let before = swallowed.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut small = connect(addr);
    small.set_read_timeout(Some(SECS_5)).unwrap();
    let ping = b"ping: are you still there?";
    small.write_all(ping).unwrap();
    let mut echo = [0u8; 26];
    let read = small.read_exact(&mut echo);
    let round_trip = started.elapsed();
    let after = swallowed.load(Ordering::SeqCst);
    let blaster_still_running = !blaster.is_finished();
    stop.store(true, Ordering::SeqCst);
    let sent = blaster.join().expect("blaster thread");

    read.unwrap_or_else(|e| panic!("small echo starved ({e}) after {round_trip:?}"));
    assert_eq!(&echo, ping);
    assert!(
        blaster_still_running,
        "the blaster had stopped before the echo came back"
    );
    assert!(
        after > before,
        "the blaster made no progress during the round trip ({before} -> {after})"
    );
    println!(
        "small round trip {round_trip:?} while the blaster moved {} bytes ({sent} total)",
        after - before
    );
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 14. Reset
// ---------------------------------------------------------------------------------------

#[test]
fn peer_reset_with_linger_zero_unbinds_reset() {
    let (server, addr, events) = echo_server_thread();
    let mut client = connect(addr);
    let (id, _) = expect_accepted(&events);
    // A round trip: both sides established, nothing left unread anywhere.
    client.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");
    reset_on_close(&client);
    drop(client); // RST, no FIN
    assert_eq!(expect_unbound(&events), (id, UnbindReason::Reset));
    server.stop();
}

#[test]
fn peer_closing_with_unread_data_unbinds_reset() {
    let (server, addr, events) = echo_server_thread();
    let mut client = connect(addr);
    let (id, _) = expect_accepted(&events);
    client.write_all(b"echo me back").unwrap();
    // Make sure the echo sits unread in our kernel buffer before closing: the kernel
    // then answers the close with RST instead of FIN.
    let mut peek = [0u8; 12];
    let deadline = Instant::now() + SECS_5;
    while client.peek(&mut peek).unwrap() < peek.len() {
        assert!(Instant::now() < deadline, "echo never arrived");
    }
    drop(client);
    assert_eq!(expect_unbound(&events), (id, UnbindReason::Reset));
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 15. Stopping the reactor
// ---------------------------------------------------------------------------------------

const LIVE_CLIENTS: usize = 10;

#[derive(Default)]
struct StopLog {
    unbinds: HashMap<String, Vec<UnbindReason>>,
    echoed: usize,
    count_at_stop: usize,
}

struct Tracked {
    tag: String,
    client: bool,
    log: Rc<RefCell<StopLog>>,
}

impl Handler for Tracked {
    fn post_init(&mut self, _cx: &mut Context<'_>) {
        self.log
            .borrow_mut()
            .unbinds
            .insert(self.tag.clone(), Vec::new());
    }

    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        cx.send_data(b"hi");
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        if !self.client {
            cx.send_data(data);
            return;
        }
        let mut log = self.log.borrow_mut();
        log.echoed += 1;
        if log.echoed == LIVE_CLIENTS {
            log.count_at_stop = cx.connection_count();
            cx.stop();
        }
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        self.log
            .borrow_mut()
            .unbinds
            .entry(self.tag.clone())
            .or_default()
            .push(reason);
    }
}

#[test]
fn reactor_stop_unbinds_every_live_connection_exactly_once() {
    let log = Rc::new(RefCell::new(StopLog::default()));
    let l = Rc::clone(&log);
    let (reactor, timed_out) = run_bounded(SECS_10, move |r| {
        let server_log = Rc::clone(&l);
        let mut accepted = 0;
        let server = r.start_server("127.0.0.1:0", move || {
            accepted += 1;
            Tracked {
                tag: format!("server-{accepted}"),
                client: false,
                log: Rc::clone(&server_log),
            }
        })?;
        let addr = r.server_addr(server).unwrap();
        for i in 0..LIVE_CLIENTS {
            r.connect(
                addr,
                Tracked {
                    tag: format!("client-{i}"),
                    client: true,
                    log: Rc::clone(&l),
                },
            )?;
        }
        Ok(())
    });
    let log = log.borrow();
    assert!(!timed_out, "only {} echoes", log.echoed);
    assert_eq!(
        log.count_at_stop,
        2 * LIVE_CLIENTS,
        "live connections when stopping"
    );
    assert_eq!(log.unbinds.len(), 2 * LIVE_CLIENTS);
    for (tag, reasons) in &log.unbinds {
        assert_eq!(reasons, &vec![UnbindReason::ReactorStopped], "{tag}");
    }
    assert_eq!(reactor.connection_count(), 0);
}

#[test]
fn reactor_stop_unbinds_connection_still_flushing_close_after_writing() {
    struct Flusher {
        log: Rc<RefCell<(usize, Vec<UnbindReason>)>>,
    }
    impl Handler for Flusher {
        fn post_init(&mut self, cx: &mut Context<'_>) {
            // Far more than the kernel will take from a peer that does not read.
            cx.send_data(&vec![b'q'; 32 * 1024 * 1024]);
            self.log.borrow_mut().0 = cx.outbound_size();
            cx.close_after_writing();
            cx.next_tick(|r| r.stop());
        }
        fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
        fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
            self.log.borrow_mut().1.push(reason);
        }
    }
    let log = Rc::new(RefCell::new((0, Vec::new())));
    let l = Rc::clone(&log);
    let mut peer = None;
    let (reactor, timed_out) = run_bounded(SECS_10, |r| {
        let server = r.start_server("127.0.0.1:0", move || Flusher { log: Rc::clone(&l) })?;
        // A peer that never reads (connected through the backlog before the loop runs).
        peer = Some(connect(r.server_addr(server).unwrap()));
        Ok(())
    });
    let (queued, reasons) = &*log.borrow();
    assert!(!timed_out);
    assert!(
        *queued > 0,
        "precondition: bytes still queued at close_after_writing"
    );
    assert_eq!(
        reasons.len(),
        1,
        "unbind must run exactly once for a connection still flushing at stop, ran {} \
         times ({reasons:?})",
        reasons.len()
    );
    assert_eq!(
        reasons[0],
        UnbindReason::ReactorStopped,
        "its queued bytes were never written: the close did not complete"
    );
    assert_eq!(
        reactor.connection_count(),
        0,
        "connections left after the loop ended"
    );
    drop(peer);
}

// ---------------------------------------------------------------------------------------
// 16. connect_host
// ---------------------------------------------------------------------------------------

/// Makes the reactor stop once both probes have unbound (and neither stop it alone).
fn stop_once_both_unbound(good: &mut Probe, bad: &mut Probe) {
    let unbound = Rc::new(std::cell::Cell::new(0));
    for probe in [good, bad] {
        let unbound = Rc::clone(&unbound);
        probe.stop_on_unbind = false;
        probe.on_unbind = Some(Box::new(move |r| {
            unbound.set(unbound.get() + 1);
            if unbound.get() == 2 {
                r.stop();
            }
        }));
    }
}

#[test]
fn connect_host_resolves_localhost_and_reports_unresolvable_names() {
    // Listen on whatever "localhost" resolves to first, as connect_host will use that.
    let localhost = ("localhost", 0)
        .to_socket_addrs()
        .expect("resolve localhost")
        .next()
        .expect("localhost has an address")
        .ip();
    // Both send from post_init, before their names are resolved: the bytes are queued.
    let (mut good, good_log) = Probe::new(b"hello localhost", 15);
    let (mut bad, bad_log) = Probe::new(b"queued before resolving", usize::MAX);
    good.send_early = true;
    bad.send_early = true;
    stop_once_both_unbound(&mut good, &mut bad);
    let (_, timed_out) = run_bounded(Duration::from_secs(15), |r| {
        r.set_defer_threads(2);
        let server = r.start_server((localhost, 0), || Echo)?;
        let port = r.server_addr(server).unwrap().port();
        r.connect_host("localhost", port, good);
        r.connect_host("no-such-host.invalid", port, bad);
        Ok(())
    });
    let (good, bad) = (good_log.borrow(), bad_log.borrow());
    assert!(!timed_out, "good: {good:?}, bad: {bad:?}");
    assert_eq!(good.early_send_queued, Some(true));
    assert_eq!(good.completed, 1);
    assert_eq!(good.received, b"hello localhost");
    assert_eq!(good.unbinds, vec![UnbindReason::ClosedByUs]);
    assert_eq!(bad.post_init, 1);
    assert_eq!(bad.early_send_queued, Some(true));
    assert_eq!(
        bad.completed, 0,
        "connection_completed ran for an unresolvable name"
    );
    assert!(bad.received.is_empty());
    assert_eq!(bad.unbinds, vec![UnbindReason::Unresolvable]);
}

#[test]
fn connect_host_remembers_a_name_for_the_resolve_interval() {
    // (lookups made by the second connect, both connects completed)
    fn second_connect_lookups(interval: Duration) -> (usize, usize) {
        let completed = Rc::new(std::cell::Cell::new(0));
        let lookups = Rc::new(std::cell::Cell::new(usize::MAX));
        struct Count(Rc<std::cell::Cell<usize>>);
        impl Handler for Count {
            fn connection_completed(&mut self, cx: &mut Context<'_>) {
                self.0.set(self.0.get() + 1);
                cx.close();
            }
        }
        let (done, seen) = (Rc::clone(&completed), Rc::clone(&lookups));
        let (_, timed_out) = run_bounded(Duration::from_secs(15), move |r| {
            r.set_resolve_interval(interval);
            let server = r.start_server("127.0.0.1:0", || Echo)?;
            let port = r.server_addr(server).unwrap().port();
            r.connect_host("localhost", port, Count(Rc::clone(&done)));
            let done = Rc::clone(&done);
            r.add_periodic_timer(Duration::from_millis(1), move |r| {
                if done.get() == 1 && seen.get() == usize::MAX {
                    // The first answer is in: connect again and count the lookups it starts.
                    r.connect_host("localhost", port, Count(Rc::clone(&done)));
                    seen.set(r.deferred_pending());
                } else if done.get() == 2 {
                    r.stop();
                }
            });
            Ok(())
        });
        assert!(!timed_out);
        (lookups.get(), completed.get())
    }
    assert_eq!(
        second_connect_lookups(Duration::from_secs(30)),
        (0, 2),
        "a remembered name connects without a lookup"
    );
    assert_eq!(
        second_connect_lookups(Duration::ZERO),
        (1, 2),
        "interval zero looks up on every connect"
    );
}

#[test]
fn connect_any_tries_each_address_until_one_accepts() {
    let refused = [closed_port(), closed_port()];
    let (mut good, good_log) = Probe::new(b"third time lucky", 16);
    let (mut bad, bad_log) = Probe::new(b"nobody home", usize::MAX);
    stop_once_both_unbound(&mut good, &mut bad);
    let (_, timed_out) = run_bounded(Duration::from_secs(15), |r| {
        let server = r.start_server("127.0.0.1:0", || Echo)?;
        let live = r.server_addr(server).unwrap();
        r.connect_any(&[refused[0], refused[1], live], good);
        r.connect_any(&refused, bad);
        Ok(())
    });
    let (good, bad) = (good_log.borrow(), bad_log.borrow());
    assert!(!timed_out, "good: {good:?}, bad: {bad:?}");
    assert_eq!(good.completed, 1, "connected to the third address");
    assert_eq!(good.received, b"third time lucky");
    assert_eq!(bad.completed, 0);
    assert_eq!(bad.unbinds, vec![UnbindReason::Refused]);
}

/// Queues a greeting and closes after writing it, both from `post_init`, while its host
/// name is still resolving; stops the reactor when it unbinds.
struct GreetThenClose(Rc<RefCell<Option<UnbindReason>>>);

impl Handler for GreetThenClose {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.send_data(b"hello");
        cx.close_after_writing();
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        *self.0.borrow_mut() = Some(reason);
        cx.stop();
    }
}

#[test]
fn close_after_writing_while_a_name_resolves_still_connects_and_delivers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(SECS_10)).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    let reason = Rc::new(RefCell::new(None));
    run_bounded(Duration::from_secs(15), |r| {
        r.connect_host("localhost", port, GreetThenClose(Rc::clone(&reason)));
        Ok(())
    });
    assert_eq!(server.join().unwrap(), b"hello");
    assert!(
        reason.borrow().as_ref().is_some_and(|r| r.is_orderly()),
        "unbind said {:?}",
        reason.borrow()
    );
}
