//! Fault injection: every toxic of `support::toxics` (latency, a bandwidth limit,
//! 1–7 byte segments, a reset of the request or of the answer midway, a black hole, a
//! slow close, dropped SYNs), placed between the client and the proxy or between the
//! proxy and a backend (the primary, and for duplex also the shadow), on each of the
//! proxy's three paths: the descriptor-level relay (`relay_client().relay_server()`),
//! hooks that pass bytes through unchanged, and duplex (a `relay_server` primary and a
//! shadow, as `ember-proxy -r … -d …` builds it).
//!
//! Every cell streams pattern bytes to echo backends and checks that the client gets
//! exactly what it should (the whole echo, or an exact prefix before a reset) or a clean
//! close (EOF or reset: never a hang, never a wrong byte); that no queue in the proxy
//! grew past its bound; and that the proxy's and the backends' connections are back to
//! their baseline once the client is done, within a bounded wait. A toxic on the shadow's
//! leg never changes what the client gets.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::RefCell;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ember::proxy::{Backend, Finish, Options, Relay, SHADOW_CONNECT_ALLOWANCE, Setup, Stats};
use ember::{ConnId, DEFAULT_HIGH_WATER, READ_CHUNK, Reactor};

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::clients::{connect, is_timeout, write_pattern};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;
use support::toxics::{Toxic, ToxicProxy};

/// Bytes each client sends, and gets back from the echo: more than a shadow may queue
/// while it connects (`SHADOW_CONNECT_ALLOWANCE`), so one that never connects is cut off…
const SIZE: usize = 3 << 19;
/// …or, through the slicer and the bandwidth limit, this many.
const SMALL: usize = 64 * 1024;
/// Where a reset cuts the request or the answer.
const CUT: usize = 100_000;
/// How long a client waits on a silent connection before it gives up.
const PATIENCE: Duration = Duration::from_millis(500);
/// How long connections may take to be back at their baseline once the client is done.
const SETTLE: Duration = Duration::from_secs(5);
const SHADOW_BUFFER: usize = 128 * 1024;
/// Small, so a primary that never closes is let go quickly (the default is 30 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Small, so a client that half-closed and left is let go quickly (the default is 5 s):
/// the proxy cannot tell it from a client still waiting for a silent backend.
const FIN_TIMEOUT: Duration = Duration::from_secs(1);
/// So a backend whose SYNs are dropped fails well within `SETTLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Which of the proxy's paths carries the bytes.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// One backend with `relay_client().relay_server()`: the reactor's descriptor relay.
    Relay,
    /// One backend, `on_data` and `on_response` passing bytes through unchanged.
    Hooks,
    /// A `relay_server` primary and a shadow; the primary's end closes the client.
    Duplex,
}

/// Where the toxic sits.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Leg {
    /// Between the client and the proxy.
    Client,
    /// Between the proxy and the (primary) backend.
    Backend,
    /// Between the proxy and the shadow.
    Shadow,
}

/// What the toxic does; `Fault::toxics` gives the exact toxics.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// 10 ms on every chunk, both ways.
    Latency,
    /// 512 KiB/s, both ways.
    Bandwidth,
    /// 1–7 byte segments, both ways.
    Slicer,
    /// The request is reset after `CUT` bytes.
    ResetRequest,
    /// The answer is reset after `CUT` bytes.
    ResetAnswer,
    /// The request and its FIN vanish: no answer, no close, until the toxic is dropped.
    Blackhole,
    /// Each FIN passed on 100 ms late.
    SlowClose,
    /// Connects to the toxic never complete.
    SynDrop,
}

/// What the client must see.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The whole echo, then EOF.
    Everything,
    /// Exactly the first `n` bytes of the echo, then EOF or a reset.
    Exactly(usize),
    /// At most the first `n` bytes of the echo, then EOF or a reset.
    AtMost(usize),
    /// Not a byte, and no close, until it gives up.
    Silence,
    /// Its connect never completes.
    NoConnect,
}

impl Fault {
    /// The toxics (upstream, downstream) of this fault.
    fn toxics(self) -> (Toxic, Toxic) {
        let both = |t: Toxic| (t.clone(), t);
        match self {
            Fault::Latency => both(Toxic::Latency(Duration::from_millis(10))),
            Fault::Bandwidth => both(Toxic::Bandwidth(512 * 1024)),
            Fault::Slicer => both(Toxic::Slicer { min: 1, max: 7 }),
            Fault::ResetRequest => (Toxic::ResetAfter(CUT), Toxic::Pass),
            Fault::ResetAnswer => (Toxic::Pass, Toxic::ResetAfter(CUT)),
            Fault::Blackhole => (Toxic::Blackhole, Toxic::Pass),
            Fault::SlowClose => both(Toxic::SlowClose(Duration::from_millis(100))),
            Fault::SynDrop => both(Toxic::SynDrop),
        }
    }

    fn size(self) -> usize {
        match self {
            Fault::Bandwidth | Fault::Slicer => SMALL,
            _ => SIZE,
        }
    }

    fn expect(self, leg: Leg) -> Expect {
        match (self, leg) {
            (_, Leg::Shadow) => Expect::Everything,
            (Fault::Latency | Fault::Bandwidth | Fault::Slicer | Fault::SlowClose, _) => {
                Expect::Everything
            }
            (Fault::ResetRequest, _) => Expect::AtMost(CUT),
            (Fault::ResetAnswer, _) => Expect::Exactly(CUT),
            (Fault::Blackhole, _) => Expect::Silence,
            (Fault::SynDrop, Leg::Client) => Expect::NoConnect,
            (Fault::SynDrop, _) => Expect::AtMost(0),
        }
    }
}

/// The proxy's settings: small timeouts for primaries and clients, so every close
/// happens well within `SETTLE`; shadows keep their defaults (drain and connect timeouts
/// of a few seconds).
fn options() -> Options {
    Options::new()
        .shadow_buffer(SHADOW_BUFFER)
        .drain_timeout(DRAIN_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .fin_timeout(Some(FIN_TIMEOUT))
}

/// A proxy on `path` in front of `primary` (and `shadow`, for duplex) that names each
/// backend on `connected` once it has connected; returns its address, its stats and the
/// peak of its connections' queues.
fn start_proxy(
    path: Path,
    primary: SocketAddr,
    shadow: SocketAddr,
    connected: mpsc::Sender<String>,
) -> ReactorThread<(SocketAddr, Stats, Arc<Peaks>)> {
    ReactorThread::spawn(move |r| {
        let shadows = Rc::new(RefCell::new(Vec::new()));
        let peaks = watch_peaks(r, Rc::clone(&shadows));
        let p = options().start(r, "127.0.0.1:0", move |conn| {
            let connected = connected.clone();
            conn.on_connect(move |_, name| {
                let _ = connected.send(name.to_string());
            });
            if let Some(id) = open_backends(conn, path, primary, shadow) {
                shadows.borrow_mut().push(id);
            }
        })?;
        Ok((p.local_addr().unwrap(), p.stats().clone(), peaks))
    })
}

/// The most bytes any connection of the proxy had queued, shadows apart.
#[derive(Default)]
struct Peaks {
    shadow: AtomicUsize,
    other: AtomicUsize,
}

/// Samples every connection's outbound queue every millisecond.
fn watch_peaks(r: &mut Reactor, shadows: Rc<RefCell<Vec<ConnId>>>) -> Arc<Peaks> {
    let peaks = Arc::new(Peaks::default());
    let seen = Arc::clone(&peaks);
    r.add_periodic_timer(Duration::from_millis(1), move |r| {
        for id in r.connection_ids() {
            let queued = r.outbound_size(id);
            let peak = if shadows.borrow().contains(&id) {
                &seen.shadow
            } else {
                &seen.other
            };
            peak.fetch_max(queued, Ordering::Relaxed);
        }
    });
    peaks
}

/// Opens the backends of `path`; returns the shadow's id.
fn open_backends(
    conn: &mut Setup<'_, ()>,
    path: Path,
    primary: SocketAddr,
    shadow: SocketAddr,
) -> Option<ConnId> {
    match path {
        Path::Relay => {
            conn.server("relay", Backend::tcp(primary).relay_client().relay_server());
            None
        }
        Path::Hooks => {
            conn.server("app", primary);
            conn.on_data(|_, data| Relay::All(data.to_vec()));
            conn.on_response(|_, _, data| Some(data.to_vec()));
            None
        }
        Path::Duplex => {
            conn.server("relay", Backend::tcp(primary).relay_server());
            conn.on_finish(|_, name, _| {
                if name == "relay" {
                    Finish::Close
                } else {
                    Finish::Keep
                }
            });
            conn.server("shadow", Backend::tcp(shadow).shadow())
        }
    }
}

/// How the client's connection ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Eof,
    Reset,
    GaveUp,
    NeverConnected,
}

#[derive(Debug)]
struct Seen {
    received: usize,
    end: End,
    sent_everything: bool,
}

/// Connects, sends `size` pattern bytes and FIN from one thread and reads on this one,
/// checking every byte against the echo, until EOF, a reset, or `patience` without a byte
/// (then it gives up and closes).
fn run_client(addr: SocketAddr, size: usize, seed: u64, patience: Duration) -> Seen {
    let mut stream = match TcpStream::connect_timeout(&addr, patience) {
        Ok(stream) => stream,
        Err(e) if is_timeout(&e) => {
            return Seen {
                received: 0,
                end: End::NeverConnected,
                sent_everything: false,
            };
        }
        Err(e) => panic!("client connect: {e}"),
    };
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let writing = stream.try_clone().unwrap();
    let writer = thread::spawn(move || send(writing, size, seed).is_ok());
    let (received, end) = receive(&mut stream, seed);
    if end == End::GaveUp {
        let _ = stream.shutdown(Shutdown::Both); // the writer stops too
    }
    Seen {
        received,
        end,
        sent_everything: writer.join().unwrap(),
    }
}

fn send(mut stream: TcpStream, size: usize, seed: u64) -> io::Result<()> {
    write_pattern(&mut stream, seed, size, 16 * 1024)?;
    stream.shutdown(Shutdown::Write)
}

fn receive(stream: &mut TcpStream, seed: u64) -> (usize, End) {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0; 64 * 1024];
    let mut received = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (received, End::Eof),
            Ok(n) => {
                assert!(
                    pattern.matches(&buf[..n]),
                    "the client got a wrong byte in {received}..{}",
                    received + n
                );
                received += n;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (received, End::Reset),
            Err(e) if is_timeout(&e) => return (received, End::GaveUp),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("client read after {received} bytes: {e}"),
        }
    }
}

fn check(seen: &Seen, expect: Expect, size: usize) {
    let closed = matches!(seen.end, End::Eof | End::Reset);
    let ok = match expect {
        Expect::Everything => seen.received == size && seen.end == End::Eof && seen.sent_everything,
        Expect::Exactly(n) => seen.received == n && closed,
        Expect::AtMost(n) => seen.received <= n && closed,
        Expect::Silence => seen.received == 0 && seen.end == End::GaveUp,
        Expect::NoConnect => seen.end == End::NeverConnected,
    };
    assert!(
        ok,
        "expected {expect:?} of {size} bytes, the client saw {seen:?}"
    );
}

/// Waits until `state` says done, polling; panics with its last detail after `SETTLE`.
fn settle(what: &str, mut state: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (done, detail) = state();
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE:?} ({detail})"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn addr_or(toxic: Option<&ToxicProxy>, direct: SocketAddr) -> SocketAddr {
    toxic.map_or(direct, ToxicProxy::addr)
}

/// One cell of the matrix: `fault` on `leg` of `path`.
fn cell(path: Path, leg: Leg, fault: Fault) {
    let (size, seed, expect) = (fault.size(), fault as u64, fault.expect(leg));
    let (up, down) = fault.toxics();
    let toxic = |upstream| ToxicProxy::start(upstream, up.clone(), down.clone());

    let backends = ReactorThread::spawn(|r| Ok((serve(r, || Echo)?, serve(r, || Echo)?)));
    let (primary, shadow) = backends.value;
    let primary_toxic = (leg == Leg::Backend).then(|| toxic(primary));
    let shadow_toxic = (leg == Leg::Shadow).then(|| toxic(shadow));
    let proxy = start_proxy(
        path,
        addr_or(primary_toxic.as_ref(), primary),
        addr_or(shadow_toxic.as_ref(), shadow),
        mpsc::channel().0,
    );
    let proxy_addr = proxy.value.0;
    let client_toxic = (leg == Leg::Client).then(|| toxic(proxy_addr));
    let baseline = (proxy.connection_count(), backends.connection_count());

    let patience = match expect {
        Expect::Silence | Expect::NoConnect => PATIENCE,
        _ => IO_TIMEOUT,
    };
    let seen = run_client(
        addr_or(client_toxic.as_ref(), proxy_addr),
        size,
        seed,
        patience,
    );
    check(&seen, expect, size);

    // A toxic in front of the proxy is part of the client: it goes with the client.
    drop(client_toxic);
    proxy_back_to_baseline(&proxy, baseline.0);
    // A toxic behind the proxy ends a connection once both ends have closed theirs; a
    // black hole holds it until it is dropped.
    for toxic in [&primary_toxic, &shadow_toxic].into_iter().flatten() {
        if fault != Fault::Blackhole {
            settle("the toxic's connections closed", || {
                (toxic.live() == 0, format!("{} live", toxic.live()))
            });
        }
    }
    drop((primary_toxic, shadow_toxic));
    settle("the backends' connections back to baseline", || {
        let n = backends.connection_count();
        (
            n == baseline.1,
            format!("{n} open, baseline {}", baseline.1),
        )
    });
}

/// Waits (bounded) until the proxy has no client and only `baseline` connections, then
/// checks that no queue in it grew past its bound: the high-water mark for clients and
/// primaries, the shadow buffer (or the connect allowance, while a shadow is catching up
/// with what was sent before it connected) for shadows, plus one read.
fn proxy_back_to_baseline(proxy: &ReactorThread<(SocketAddr, Stats, Arc<Peaks>)>, baseline: usize) {
    let (_, stats, peaks) = &proxy.value;
    settle("the proxy's connections back to baseline", || {
        let n = proxy.connection_count();
        let done = n == baseline && stats.clients_active() == 0;
        (done, format!("{n} open, baseline {baseline}, {stats:?}"))
    });
    let peak = peaks.other.load(Ordering::Relaxed);
    assert!(
        peak <= DEFAULT_HIGH_WATER + READ_CHUNK,
        "a client or primary queue in the proxy held {peak} bytes"
    );
    let shadow_limit = SHADOW_BUFFER.max(SHADOW_CONNECT_ALLOWANCE) + READ_CHUNK;
    let peak = peaks.shadow.load(Ordering::Relaxed);
    assert!(peak <= shadow_limit, "a shadow queue held {peak} bytes");
    assert!(
        stats.peak_shadow_queue() as usize <= shadow_limit,
        "{stats:?}"
    );
}

macro_rules! cells {
    ($($(#[$attr:meta])* $name:ident: $path:ident, $leg:ident, $fault:ident;)*) => {$(
        $(#[$attr])*
        #[test]
        fn $name() {
            cell(Path::$path, Leg::$leg, Fault::$fault);
        }
    )*};
}

cells! {
    relay_path_delivers_every_byte_through_latency_between_client_and_proxy: Relay, Client, Latency;
    relay_path_delivers_every_byte_through_latency_between_proxy_and_backend: Relay, Backend, Latency;
    relay_path_delivers_every_byte_through_a_bandwidth_limit_between_client_and_proxy: Relay, Client, Bandwidth;
    relay_path_delivers_every_byte_through_a_bandwidth_limit_between_proxy_and_backend: Relay, Backend, Bandwidth;
    relay_path_delivers_every_byte_through_1_to_7_byte_segments_between_client_and_proxy: Relay, Client, Slicer;
    relay_path_delivers_every_byte_through_1_to_7_byte_segments_between_proxy_and_backend: Relay, Backend, Slicer;
    relay_path_delivers_every_byte_through_a_slow_close_between_client_and_proxy: Relay, Client, SlowClose;
    relay_path_delivers_every_byte_through_a_slow_close_between_proxy_and_backend: Relay, Backend, SlowClose;
    relay_path_closes_cleanly_when_the_request_is_reset_between_client_and_proxy: Relay, Client, ResetRequest;
    relay_path_closes_cleanly_when_the_request_is_reset_between_proxy_and_backend: Relay, Backend, ResetRequest;
    relay_path_passes_on_every_byte_before_the_answer_is_reset_between_client_and_proxy: Relay, Client, ResetAnswer;
    relay_path_passes_on_every_byte_before_the_answer_is_reset_between_proxy_and_backend: Relay, Backend, ResetAnswer;
    relay_path_frees_its_descriptors_after_a_black_hole_between_client_and_proxy: Relay, Client, Blackhole;
    relay_path_frees_its_descriptors_after_a_black_hole_between_proxy_and_backend: Relay, Backend, Blackhole;
    relay_path_survives_dropped_syns_between_client_and_proxy: Relay, Client, SynDrop;
    relay_path_survives_dropped_syns_between_proxy_and_backend: Relay, Backend, SynDrop;

    hook_path_delivers_every_byte_through_latency_between_client_and_proxy: Hooks, Client, Latency;
    hook_path_delivers_every_byte_through_latency_between_proxy_and_backend: Hooks, Backend, Latency;
    hook_path_delivers_every_byte_through_a_bandwidth_limit_between_client_and_proxy: Hooks, Client, Bandwidth;
    hook_path_delivers_every_byte_through_a_bandwidth_limit_between_proxy_and_backend: Hooks, Backend, Bandwidth;
    hook_path_delivers_every_byte_through_1_to_7_byte_segments_between_client_and_proxy: Hooks, Client, Slicer;
    hook_path_delivers_every_byte_through_1_to_7_byte_segments_between_proxy_and_backend: Hooks, Backend, Slicer;
    hook_path_delivers_every_byte_through_a_slow_close_between_client_and_proxy: Hooks, Client, SlowClose;
    hook_path_delivers_every_byte_through_a_slow_close_between_proxy_and_backend: Hooks, Backend, SlowClose;
    hook_path_closes_cleanly_when_the_request_is_reset_between_client_and_proxy: Hooks, Client, ResetRequest;
    hook_path_closes_cleanly_when_the_request_is_reset_between_proxy_and_backend: Hooks, Backend, ResetRequest;
    hook_path_passes_on_every_byte_before_the_answer_is_reset_between_client_and_proxy: Hooks, Client, ResetAnswer;
    hook_path_passes_on_every_byte_before_the_answer_is_reset_between_proxy_and_backend: Hooks, Backend, ResetAnswer;
    hook_path_frees_its_descriptors_after_a_black_hole_between_client_and_proxy: Hooks, Client, Blackhole;
    hook_path_frees_its_descriptors_after_a_black_hole_between_proxy_and_backend: Hooks, Backend, Blackhole;
    hook_path_survives_dropped_syns_between_client_and_proxy: Hooks, Client, SynDrop;
    hook_path_survives_dropped_syns_between_proxy_and_backend: Hooks, Backend, SynDrop;

    duplex_delivers_every_byte_through_latency_between_client_and_proxy: Duplex, Client, Latency;
    duplex_delivers_every_byte_through_latency_between_proxy_and_primary: Duplex, Backend, Latency;
    duplex_delivers_every_byte_despite_latency_between_proxy_and_shadow: Duplex, Shadow, Latency;
    duplex_delivers_every_byte_through_a_bandwidth_limit_between_client_and_proxy: Duplex, Client, Bandwidth;
    duplex_delivers_every_byte_through_a_bandwidth_limit_between_proxy_and_primary: Duplex, Backend, Bandwidth;
    duplex_delivers_every_byte_despite_a_bandwidth_limit_between_proxy_and_shadow: Duplex, Shadow, Bandwidth;
    duplex_delivers_every_byte_through_1_to_7_byte_segments_between_client_and_proxy: Duplex, Client, Slicer;
    duplex_delivers_every_byte_through_1_to_7_byte_segments_between_proxy_and_primary: Duplex, Backend, Slicer;
    duplex_delivers_every_byte_despite_1_to_7_byte_segments_between_proxy_and_shadow: Duplex, Shadow, Slicer;
    duplex_delivers_every_byte_through_a_slow_close_between_client_and_proxy: Duplex, Client, SlowClose;
    duplex_delivers_every_byte_through_a_slow_close_between_proxy_and_primary: Duplex, Backend, SlowClose;
    duplex_delivers_every_byte_despite_a_slow_close_between_proxy_and_shadow: Duplex, Shadow, SlowClose;
    duplex_closes_cleanly_when_the_request_is_reset_between_client_and_proxy: Duplex, Client, ResetRequest;
    duplex_closes_cleanly_when_the_request_is_reset_between_proxy_and_primary: Duplex, Backend, ResetRequest;
    duplex_delivers_every_byte_despite_a_reset_request_between_proxy_and_shadow: Duplex, Shadow, ResetRequest;
    duplex_passes_on_every_byte_before_the_answer_is_reset_between_client_and_proxy: Duplex, Client, ResetAnswer;
    duplex_passes_on_every_byte_before_the_answer_is_reset_between_proxy_and_primary: Duplex, Backend, ResetAnswer;
    duplex_delivers_every_byte_despite_a_reset_answer_between_proxy_and_shadow: Duplex, Shadow, ResetAnswer;
    duplex_frees_its_descriptors_after_a_black_hole_between_client_and_proxy: Duplex, Client, Blackhole;
    duplex_frees_its_descriptors_after_a_black_hole_between_proxy_and_primary: Duplex, Backend, Blackhole;
    duplex_delivers_every_byte_and_frees_its_descriptors_despite_a_black_hole_shadow: Duplex, Shadow, Blackhole;
    duplex_survives_dropped_syns_between_client_and_proxy: Duplex, Client, SynDrop;
    duplex_survives_dropped_syns_between_proxy_and_primary: Duplex, Backend, SynDrop;
    duplex_delivers_every_byte_despite_dropped_syns_between_proxy_and_shadow: Duplex, Shadow, SynDrop;
}

/// The backend's last bytes and its reset reach the proxy while its reactor is busy, so
/// both are waiting when it next looks: every byte sent before the reset must still reach
/// the client, then a clean close.
fn last_bytes_before_a_reset_arriving_together(path: Path) {
    const ANSWER: usize = 32 * 1024; // within the receive window: acknowledged unread
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let (go, released) = mpsc::channel::<()>();
    let backend_thread = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        released.recv_timeout(IO_TIMEOUT).expect("released");
        // More than the toxic lets through: it resets both sides after `ANSWER`.
        let _ = stream.write_all(&Pattern::new(9).bytes(2 * ANSWER));
        let _ = stream.read_to_end(&mut Vec::new());
    });
    let toxic = ToxicProxy::start(backend, Toxic::Pass, Toxic::ResetAfter(ANSWER));
    let shadow = ReactorThread::spawn(|r| serve(r, || Echo));
    let (connected_tx, connected) = mpsc::channel();
    let proxy = start_proxy(path, toxic.addr(), shadow.value, connected_tx);
    let mut client = connect(proxy.value.0);
    let primary = match path {
        Path::Hooks => "app",
        Path::Relay | Path::Duplex => "relay",
    };
    while connected
        .recv_timeout(IO_TIMEOUT)
        .expect("the backend connected")
        != primary
    {}

    // Hold the proxy's reactor while the answer and the reset arrive.
    let (stalled_tx, stalled) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    proxy.handle().schedule(move |_| {
        stalled_tx.send(()).unwrap();
        let _ = held.recv_timeout(IO_TIMEOUT);
    });
    stalled
        .recv_timeout(IO_TIMEOUT)
        .expect("the reactor stalled");
    go.send(()).unwrap();
    settle("the toxic's reset", || {
        (toxic.live() == 0, format!("{} live", toxic.live()))
    });
    release.send(()).unwrap();

    let (received, end) = receive(&mut client, 9);
    assert!(
        received == ANSWER && matches!(end, End::Eof | End::Reset),
        "expected the {ANSWER} bytes sent before the reset, then a close; got {received} bytes, {end:?}"
    );
    drop(client);
    proxy_back_to_baseline(&proxy, 0);
    backend_thread.join().unwrap();
}

#[test]
fn relay_path_passes_on_a_backends_last_bytes_that_arrive_together_with_its_reset() {
    last_bytes_before_a_reset_arriving_together(Path::Relay);
}

#[test]
fn hook_path_passes_on_a_backends_last_bytes_that_arrive_together_with_its_reset() {
    last_bytes_before_a_reset_arriving_together(Path::Hooks);
}

#[test]
fn duplex_passes_on_the_primarys_last_bytes_that_arrive_together_with_its_reset() {
    last_bytes_before_a_reset_arriving_together(Path::Duplex);
}
