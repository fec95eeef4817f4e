//! Defects production users hit, each pinned by one test over real loopback sockets: a
//! keep-alive client stalled 40 ms per request by Nagle against a delayed ACK, the bytes a
//! backend sent before its reset lost, half-closed peers pinning descriptors forever, a
//! blackholed shadow exhausting descriptors under connection churn, a flooding shadow
//! taking the loop from the primaries, one panicking hook taking down every client, and
//! the binary dying on a closed stderr or stdout, on SIGHUP or on SIGUSR1.
//!
//! The tests time things (round trips, throughput, timeouts), so they run one at a time
//! (`one_at_a_time`), each under a watchdog.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ember::proxy::{Backend, Finish, Options, Relay, Setup, Stats};
use ember::{Context, Handler};

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::child::{Child, EMBER_PROXY};
use support::clients::{closed_port, connect, exchange, find, read_all, read_until, wait_until};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;
use support::sys::{raise_fd_limit, reset_on_close};
use support::toxics::{Toxic, ToxicProxy};
use support::watchdog::Watchdog;

/// How often the threads of a [`StdServer`] look up from a blocking call to see whether
/// to stop.
const TICK: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// Harness: one test at a time, a watchdog, bounded waits.

static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the whole of a test: the other tests of this file wait, and the watchdog
/// aborts the run if the test is still going after `limit`.
struct TestGuard {
    _watchdog: Watchdog,
    _serial: MutexGuard<'static, ()>,
}

fn one_at_a_time(limit: Duration) -> TestGuard {
    let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    TestGuard {
        _watchdog: Watchdog::abort_after(limit),
        _serial: serial,
    }
}

// ---------------------------------------------------------------------------------------
// Proxies, as the binary builds them.

/// Which of the proxy's paths carries the bytes.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// `relay_client().relay_server()`: the reactor's descriptor relay, as `ember-proxy -r`
    /// without shadows builds it.
    Relay,
    /// `on_data` and `on_response` passing the bytes through unchanged.
    Hooks,
}

/// The binary's `on_finish`: the relay's end closes the client.
fn relay_decides(setup: &mut Setup<'_, ()>) {
    setup.on_finish(|_, name, _| {
        if name == "relay" {
            Finish::Close
        } else {
            Finish::Keep
        }
    });
}

/// A proxy in front of `backend` on `path`; returns its address and stats.
fn proxy_to(
    backend: SocketAddr,
    path: Path,
    options: Options,
) -> ReactorThread<(SocketAddr, Stats)> {
    ReactorThread::spawn(move |r| {
        let p = options.start(r, "127.0.0.1:0", move |conn| {
            match path {
                Path::Relay => {
                    conn.server("relay", Backend::tcp(backend).relay_client().relay_server());
                }
                Path::Hooks => {
                    conn.server("relay", backend);
                    conn.on_data(|_, data| Relay::All(data.to_vec()));
                    conn.on_response(|_, _, data| Some(data.to_vec()));
                }
            }
            relay_decides(conn);
        })?;
        Ok((p.local_addr().unwrap(), p.stats().clone()))
    })
}

/// A duplex proxy as `ember-proxy -r PRIMARY -d SHADOW` builds it: a `relay_server`
/// primary whose end closes the client, and a shadow; `shadow` picks the shadow's
/// address per client. Returns the proxy's address, its stats and the peak of its
/// connection count (sampled every millisecond).
fn duplex_proxy(
    primary: SocketAddr,
    shadow: impl Fn() -> SocketAddr + 'static + Send,
    options: Options,
) -> ReactorThread<(SocketAddr, Stats, Arc<AtomicUsize>)> {
    ReactorThread::spawn(move |r| {
        let peak = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&peak);
        r.add_periodic_timer(Duration::from_millis(1), move |r| {
            seen.fetch_max(r.connection_count(), Ordering::Relaxed);
        });
        let p = options.start(r, "127.0.0.1:0", move |conn| {
            conn.server("relay", Backend::tcp(primary).relay_server());
            conn.server("duplex_0", Backend::tcp(shadow()).shadow());
            relay_decides(conn);
        })?;
        Ok((p.local_addr().unwrap(), p.stats().clone(), peak))
    })
}

// ---------------------------------------------------------------------------------------
// Plain std servers, for backends whose socket-level behaviour must be exact.

type Serve = dyn Fn(TcpStream, &AtomicBool) + Send + Sync;

/// A std TCP server on 127.0.0.1:0. Each accepted socket (`TCP_NODELAY`, read and write
/// timeouts of [`TICK`]) goes to `serve` on a thread of its own, with the stop flag to
/// look at when a call times out, or with [`StdServer::hold`] is kept, never read and
/// never closed. Dropping it stops accepting, raises the flag, joins every thread and
/// closes every socket.
struct StdServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl StdServer {
    fn start(serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static) -> StdServer {
        StdServer::new(Some(Arc::new(serve)))
    }

    /// Accepts and then does nothing at all: a black hole that completes handshakes.
    fn hold() -> StdServer {
        StdServer::new(None)
    }

    fn new(serve: Option<Arc<Serve>>) -> StdServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let acceptor = thread::spawn(move || {
            let mut held = Vec::new();
            let mut threads = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                let Ok((socket, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                };
                socket.set_nonblocking(false).unwrap();
                socket.set_nodelay(true).unwrap();
                socket.set_read_timeout(Some(TICK)).unwrap();
                socket.set_write_timeout(Some(TICK)).unwrap();
                match &serve {
                    None => held.push(socket),
                    Some(serve) => {
                        let (serve, stop) = (Arc::clone(serve), Arc::clone(&stopped));
                        threads.push(thread::spawn(move || serve(socket, &stop)));
                    }
                }
            }
            for thread in threads {
                let _ = thread.join();
            }
        });
        StdServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for StdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// One read, retried on timeouts; `None` once stopped or on an error, `Some(0)` at EOF.
fn read_or_stop(s: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    while !stop.load(Ordering::SeqCst) {
        match s.read(buf) {
            Ok(n) => return Some(n),
            Err(e) if timed_out(&e) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Fills `buf`; false at EOF, on an error or once stopped.
fn read_exact_or_stop(s: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut at = 0;
    while at < buf.len() {
        match read_or_stop(s, &mut buf[at..], stop) {
            Some(0) | None => return false,
            Some(n) => at += n,
        }
    }
    true
}

/// Writes all of `data` with as many write(2) calls as it takes; false on an error or
/// once stopped.
fn write_all_or_stop(s: &mut TcpStream, mut data: &[u8], stop: &AtomicBool) -> bool {
    while !data.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match s.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if timed_out(&e) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Reads and discards until the peer closes (or the server stops).
fn until_peer_closes(s: &mut TcpStream, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while let Some(n) = read_or_stop(s, &mut buf, stop) {
        if n == 0 {
            return;
        }
    }
}

/// A blocking client with `TCP_NODELAY`, as a latency-minded client sets it.
fn nodelay_client(addr: SocketAddr) -> TcpStream {
    let client = connect(addr);
    client.set_nodelay(true).unwrap();
    client
}

// ---------------------------------------------------------------------------------------
// 1. Nagle against a delayed ACK.

const REQUEST: &[u8] = b"GET /item HTTP/1.1\r\nHost: backend\r\n\r\n";
const HEADER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n";
const BODY: &[u8] = b"hello, world\n";
const ROUND_TRIPS: usize = 300;
/// Nagle holding the body for the client's delayed ACK costs 40 ms on Linux; a round
/// trip this long is a stall (or, rarely, a busy machine descheduling someone).
const STALL: Duration = Duration::from_millis(35);
/// Stalls tolerated in `ROUND_TRIPS` for scheduling hiccups on a loaded 2-core machine;
/// Nagle against a delayed ACK stalls nearly every round trip (299 of 300 before the fix).
const HICCUPS: usize = ROUND_TRIPS / 100;

/// Answers each request as nginx does: the header with one write(2), then the body with
/// another, a moment later, so that the two leave as two segments and the proxy reads
/// them separately. Its own socket has `TCP_NODELAY`: Nagle, if any, is the proxy's.
fn two_write_backend() -> StdServer {
    StdServer::start(|mut s, stop| {
        let mut request = [0u8; REQUEST.len()];
        while read_exact_or_stop(&mut s, &mut request, stop) {
            assert_eq!(&request[..], REQUEST);
            if !write_all_or_stop(&mut s, HEADER, stop) {
                return;
            }
            // The backend's own pace between header and body (nginx computes the body
            // after sending the header); nothing waits on this.
            thread::sleep(Duration::from_millis(1));
            if !write_all_or_stop(&mut s, BODY, stop) {
                return;
            }
        }
    })
}

/// Runs `ROUND_TRIPS` request/response round trips on one connection; returns each one's
/// duration.
fn keep_alive_round_trips(addr: SocketAddr) -> Vec<Duration> {
    let mut client = nodelay_client(addr);
    let mut response = vec![0u8; HEADER.len() + BODY.len()];
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        client.write_all(REQUEST).unwrap();
        client.read_exact(&mut response).unwrap();
        times.push(start.elapsed());
        assert!(response.starts_with(HEADER) && response.ends_with(BODY));
    }
    times
}

#[test]
fn a_keep_alive_client_never_waits_for_a_delayed_ack() {
    let _guard = one_at_a_time(Duration::from_secs(60));
    let backend = two_write_backend();
    for path in [Path::Relay, Path::Hooks] {
        let proxy = proxy_to(backend.addr, path, Options::new());
        let mut times = keep_alive_round_trips(proxy.value.0);
        let stalled: Vec<Duration> = times.iter().copied().filter(|&t| t > STALL).collect();
        let stalls = format!("{:?}", &stalled[..stalled.len().min(10)]);
        times.sort();
        eprintln!(
            "{path:?}: {ROUND_TRIPS} round trips: median {:?}, max {:?}, over {STALL:?}: {}",
            times[ROUND_TRIPS / 2],
            times[ROUND_TRIPS - 1],
            stalled.len()
        );
        assert!(
            stalled.len() <= HICCUPS,
            "{path:?}: {} of {ROUND_TRIPS} round trips took over {STALL:?} (the first: {stalls})",
            stalled.len(),
        );
        let median = times[ROUND_TRIPS / 2];
        assert!(
            median < Duration::from_millis(5),
            "{path:?}: the median round trip took {median:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Bytes before a reset.

const BEFORE_RESET: usize = 1000;
/// `SIOCOUTQNSD` (linux/sockios.h): bytes in a socket's send queue not yet sent.
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

fn unsent(socket: &TcpStream) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCOUTQNSD as _, &mut n) };
    assert_eq!(rc, 0, "SIOCOUTQNSD: {}", io::Error::last_os_error());
    n
}

/// Reads the request (`go\n`), writes `BEFORE_RESET` pattern bytes and closes with a
/// reset the moment they have left (`SO_LINGER` 0; a reset drops unsent bytes, so it
/// waits for the send queue to be empty, not for an ACK: the proxy gets the bytes and the
/// reset together).
fn writes_then_resets() -> StdServer {
    StdServer::start(|mut s, stop| {
        let mut request = [0u8; 3];
        if !read_exact_or_stop(&mut s, &mut request, stop) {
            return;
        }
        if !write_all_or_stop(&mut s, &Pattern::new(5).bytes(BEFORE_RESET), stop) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while unsent(&s) > 0 && Instant::now() < deadline {
            thread::yield_now();
        }
        reset_on_close(&s);
    })
}

#[test]
fn bytes_a_backend_sent_before_its_reset_reach_the_client() {
    let _guard = one_at_a_time(Duration::from_secs(60));
    let backend = writes_then_resets();
    let expected = Pattern::new(5).bytes(BEFORE_RESET);
    for path in [Path::Relay, Path::Hooks] {
        let proxy = proxy_to(backend.addr, path, Options::new());
        let mut ends = Vec::new();
        for attempt in 0..50 {
            let mut client = connect(proxy.value.0);
            client.write_all(b"go\n").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let end = loop {
                match client.read(&mut buf) {
                    Ok(0) => break "EOF",
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
                    Err(e) => panic!("{path:?}, try {attempt}: {e} after {} bytes", got.len()),
                }
            };
            assert!(
                got == expected,
                "{path:?}, try {attempt}: the client got {} of the {BEFORE_RESET} bytes, then {end}",
                got.len()
            );
            ends.push(end);
        }
        eprintln!(
            "{path:?}: 50 of 50 got all {BEFORE_RESET} bytes; then EOF {} times, reset {} times",
            ends.iter().filter(|e| **e == "EOF").count(),
            ends.iter().filter(|e| **e == "reset").count()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. Half-closed and silent.

const FIN_TIMEOUT: Duration = Duration::from_millis(200);
/// How long after the fin timeout the descriptors may take to go.
const FIN_SLACK: Duration = Duration::from_secs(3);

/// (a) The client sends a request and FIN; the backend never answers, never closes.
fn client_half_closes_and_the_backend_goes_silent(path: Path) {
    let backend = StdServer::hold();
    let proxy = proxy_to(
        backend.addr,
        path,
        Options::new().fin_timeout(Some(FIN_TIMEOUT)),
    );
    assert_eq!(proxy.connection_count(), 0);
    let mut client = connect(proxy.value.0);
    let start = Instant::now();
    client.write_all(b"request, then FIN").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    wait_until("the client and its backend", FIN_SLACK, || {
        proxy.connection_count() == 2
    });
    wait_until(
        "the descriptors to be released",
        FIN_TIMEOUT + FIN_SLACK,
        || proxy.connection_count() == 0,
    );
    let released = start.elapsed();
    assert!(
        released >= FIN_TIMEOUT,
        "{path:?}: released after {released:?}, before the fin timeout"
    );
    assert_eq!(read_all(&mut client), b"", "{path:?}");
    eprintln!("{path:?} (a): released {released:?} after the client's request and FIN");
}

/// (b) The backend answers and sends FIN; the client never sends its FIN.
fn backend_half_closes_and_the_client_goes_silent(path: Path) {
    let backend = StdServer::start(|mut s, stop| {
        let mut request = [0u8; 7];
        if read_exact_or_stop(&mut s, &mut request, stop)
            && write_all_or_stop(&mut s, b"answer", stop)
        {
            let _ = s.shutdown(Shutdown::Write);
            until_peer_closes(&mut s, stop);
        }
    });
    let proxy = proxy_to(
        backend.addr,
        path,
        Options::new().fin_timeout(Some(FIN_TIMEOUT)),
    );
    let mut client = connect(proxy.value.0);
    let start = Instant::now();
    client.write_all(b"request").unwrap();
    // The answer, then the backend's FIN passed through; the client keeps its side open.
    assert_eq!(read_all(&mut client), b"answer", "{path:?}");
    wait_until(
        "the descriptors to be released",
        FIN_TIMEOUT + FIN_SLACK,
        || proxy.connection_count() == 0,
    );
    let released = start.elapsed();
    assert!(
        released >= FIN_TIMEOUT,
        "{path:?}: released after {released:?}, before the fin timeout"
    );
    eprintln!("{path:?} (b): released {released:?} after the request");
    drop(client);
}

/// (c) No premature close: an answer streamed in steps shorter than the fin timeout,
/// after the client's FIN, arrives whole.
fn an_answer_streamed_after_the_clients_fin_arrives_whole(path: Path) {
    const STEPS: u64 = 10;
    const STEP: Duration = Duration::from_millis(50);
    let backend = StdServer::start(|mut s, stop| {
        until_peer_closes(&mut s, stop);
        let mut pattern = Pattern::new(9);
        for _ in 0..STEPS {
            thread::sleep(STEP); // the backend's own pace: one chunk every 50 ms
            if !write_all_or_stop(&mut s, &pattern.bytes(1000), stop) {
                return;
            }
        }
    });
    let proxy = proxy_to(
        backend.addr,
        path,
        Options::new().fin_timeout(Some(FIN_TIMEOUT)),
    );
    let start = Instant::now();
    let answer = exchange(proxy.value.0, b"request");
    assert!(
        answer == Pattern::new(9).bytes(1000 * STEPS as usize),
        "{path:?}: got {} of {} bytes in {:?}",
        answer.len(),
        1000 * STEPS,
        start.elapsed()
    );
    assert!(start.elapsed() >= STEP * STEPS as u32);
}

#[test]
fn a_silent_half_closed_peer_releases_its_descriptors_after_the_fin_timeout() {
    let _guard = one_at_a_time(Duration::from_secs(60));
    for path in [Path::Relay, Path::Hooks] {
        client_half_closes_and_the_backend_goes_silent(path);
        backend_half_closes_and_the_client_goes_silent(path);
        an_answer_streamed_after_the_clients_fin_arrives_whole(path);
    }
}

// ---------------------------------------------------------------------------------------
// 4. A blackholed shadow under connection churn.

const CHURN_THREADS: usize = 4;
const CHURN_PER_THREAD: usize = 250;
const SHADOW_CAP: usize = 32;
const SHADOW_TIMEOUT: Duration = Duration::from_millis(300);

/// `CHURN_THREADS` threads each make `CHURN_PER_THREAD` short connections: request, FIN,
/// the whole echo, close. Returns the failures.
fn churn(addr: SocketAddr) -> Vec<String> {
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..CHURN_PER_THREAD {
                    let request = Pattern::new((t * CHURN_PER_THREAD + i) as u64).bytes(200);
                    let attempt = || -> io::Result<Vec<u8>> {
                        let mut client = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                        client.set_read_timeout(Some(IO_TIMEOUT))?;
                        client.write_all(&request)?;
                        client.shutdown(Shutdown::Write)?;
                        let mut answer = Vec::new();
                        client.read_to_end(&mut answer)?;
                        Ok(answer)
                    };
                    match attempt() {
                        Ok(answer) if answer == request => {}
                        Ok(answer) => failures.push(format!(
                            "client {t}/{i}: {} bytes back, not the {} sent",
                            answer.len(),
                            request.len()
                        )),
                        Err(e) => failures.push(format!("client {t}/{i}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn churn_past_a_blackholed_shadow(kind: &str, shadow: SocketAddr, echo: SocketAddr) {
    let options = Options::new()
        .shadow_max_connections(SHADOW_CAP)
        .shadow_connect_timeout(SHADOW_TIMEOUT)
        .shadow_drain_timeout(SHADOW_TIMEOUT);
    let proxy = duplex_proxy(echo, move || shadow, options);
    let (addr, stats, peak) = proxy.value.clone();
    let start = Instant::now();
    let failures = churn(addr);
    let took = start.elapsed();
    assert!(failures.is_empty(), "{kind}: {failures:#?}");
    let bound = 2 * CHURN_THREADS + SHADOW_CAP + 16;
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{kind}: {} connections in {took:?}; peak {peak} proxy connections (bound {bound}); {} shadows skipped",
        CHURN_THREADS * CHURN_PER_THREAD,
        stats.shadows_skipped()
    );
    assert!(
        peak <= bound,
        "{kind}: the proxy held {peak} connections at once"
    );
    assert!(stats.shadows_skipped() > 0, "{kind}: {stats:?}");
    let settled = wait_until(
        "the proxy's connections back to none",
        SHADOW_TIMEOUT + Duration::from_secs(3),
        || proxy.connection_count() == 0,
    );
    assert_eq!(stats.shadows_active(), 0, "{kind}: {stats:?}");
    eprintln!("{kind}: back to no connections {settled:?} after the last client");
}

#[test]
fn a_blackholed_shadow_under_connection_churn_leaves_the_primary_unharmed() {
    let _guard = one_at_a_time(Duration::from_secs(90));
    raise_fd_limit();
    let backends = ReactorThread::spawn(|r| serve(r, || Echo));
    // Connects to it never complete: its accept queue is full and SYNs are dropped.
    let syn_drop = ToxicProxy::start(closed_port(), Toxic::SynDrop, Toxic::SynDrop);
    churn_past_a_blackholed_shadow("SYNs dropped", syn_drop.addr(), backends.value);
    // Connects complete; nothing is ever read, nothing ever closed.
    let hole = StdServer::hold();
    churn_past_a_blackholed_shadow("accepts, never reads", hole.addr, backends.value);
}

// ---------------------------------------------------------------------------------------
// 5. A flooding shadow.

/// Reads and drops everything: a healthy shadow that answers nothing.
struct Sink;

impl Handler for Sink {
    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
}

/// Keeps the calling thread on one CPU, the last this process may use (when it may use
/// more than one). A real shadow floods from its own machine; on a small test machine a
/// flood left to roam takes the cores the primary's client, backend and proxy need, and
/// they then wait for a CPU whatever the proxy does (on 2 cores, a flood drained outside
/// the proxy costs about as many round trips as one through it). Confined, the flood
/// leaves the other cores alone, and the proxy's own share of its cost shows: receiving
/// it (loopback's receive path runs on the writer's CPU) and dropping it.
fn confine_to_one_cpu() {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: sched_getaffinity/sched_setaffinity on the calling thread (0), with
    // pointers to a properly sized cpu_set_t; CPU_ISSET/CPU_SET index within it.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .collect();
        if let [_, .., last] = cpus[..] {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(last, &mut one);
            libc::sched_setaffinity(0, size, &one);
        }
    }
}

/// Once connected, writes 64 KiB at a time as fast as the socket takes them, until the
/// socket errors (the proxy closed it) or the server stops; on one CPU
/// ([`confine_to_one_cpu`]).
fn flooding_shadow() -> StdServer {
    StdServer::start(|mut s, stop| {
        confine_to_one_cpu();
        let flood = vec![0x5a; 64 * 1024];
        while write_all_or_stop(&mut s, &flood, stop) {}
    })
}

/// One keep-alive client, so one flood: each shadow connection floods, and two floods
/// would take both cores of a 2-core machine.
const FLOOD_CLIENTS: usize = 1;
const FLOOD_ROUND_TRIPS: usize = 5000;
/// Healthy, healthy beside a flood and flooding, interleaved this many times.
const ROUNDS: usize = 5;

/// `FLOOD_CLIENTS` keep-alive clients each doing up to `FLOOD_ROUND_TRIPS` 64-byte round
/// trips; returns how many were done and how long they took (giving up at `limit`).
fn keep_alive_load(addr: SocketAddr, limit: Duration) -> (usize, Duration) {
    let start = Instant::now();
    let clients: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let mut client = nodelay_client(addr);
                let mut answer = [0u8; 64];
                for i in 0..FLOOD_ROUND_TRIPS {
                    if start.elapsed() > limit {
                        return i;
                    }
                    let request = Pattern::new((c * FLOOD_ROUND_TRIPS + i) as u64).bytes(64);
                    client.write_all(&request).unwrap();
                    client.read_exact(&mut answer).unwrap();
                    assert!(answer[..] == request[..], "client {c}, round trip {i}");
                }
                FLOOD_ROUND_TRIPS
            })
        })
        .collect();
    let done = clients.into_iter().map(|c| c.join().unwrap()).sum();
    (done, start.elapsed())
}

/// A flood from `flooder` that does not go through the proxy: drained (dropped in the
/// kernel, as the proxy drops a shadow's answers) by a thread on the flood's CPU, until
/// the returned guard is dropped. It costs the machine what a flooding shadow costs it,
/// and costs the proxy nothing.
struct FloodElsewhere {
    stop: Arc<AtomicBool>,
    drain: Option<JoinHandle<()>>,
}

impl FloodElsewhere {
    fn start(flooder: SocketAddr) -> FloodElsewhere {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let socket = connect(flooder);
        socket.set_read_timeout(Some(TICK)).unwrap();
        let drain = thread::spawn(move || {
            confine_to_one_cpu();
            while !stopped.load(Ordering::SeqCst) {
                // SAFETY: with MSG_TRUNC, TCP's recv discards up to `len` bytes and never
                // touches the (null) buffer (tcp(7)).
                let n = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        std::ptr::null_mut(),
                        1 << 20,
                        libc::MSG_TRUNC,
                    )
                };
                if n == 0 || (n < 0 && !timed_out(&io::Error::last_os_error())) {
                    return;
                }
            }
        });
        FloodElsewhere {
            stop,
            drain: Some(drain),
        }
    }
}

impl Drop for FloodElsewhere {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

/// What the shadow is in one phase of the flood test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ShadowKind {
    /// Reads and answers nothing.
    Healthy,
    /// Healthy, while the same flood runs on the machine outside the proxy: the baseline.
    HealthyBesideAFlood,
    /// Floods the proxy.
    Flooding,
}

#[test]
fn a_flooding_shadow_does_not_take_the_loop() {
    let _guard = one_at_a_time(Duration::from_secs(90));
    let backends = ReactorThread::spawn(|r| Ok((serve(r, || Echo)?, serve(r, || Sink)?)));
    let (echo, healthy) = backends.value;
    let flood = flooding_shadow();
    let flooding = Arc::new(AtomicBool::new(false));
    let choice = Arc::clone(&flooding);
    let flood_addr = flood.addr;
    let proxy = duplex_proxy(
        echo,
        move || {
            if choice.load(Ordering::SeqCst) {
                flood_addr
            } else {
                healthy
            }
        },
        Options::new().shadow_drain_timeout(Duration::from_millis(200)),
    );
    let (addr, stats, _) = proxy.value.clone();
    let expected = FLOOD_CLIENTS * FLOOD_ROUND_TRIPS;
    let kinds = [
        ShadowKind::Healthy,
        ShadowKind::HealthyBesideAFlood,
        ShadowKind::Flooding,
    ];
    let mut totals = [Duration::ZERO; 3];
    for round in 0..ROUNDS {
        for (k, kind) in kinds.into_iter().enumerate() {
            flooding.store(kind == ShadowKind::Flooding, Ordering::SeqCst);
            let elsewhere = (kind == ShadowKind::HealthyBesideAFlood)
                .then(|| FloodElsewhere::start(flood.addr));
            // Give up well before the watchdog if the flood has the loop.
            let limit = (totals[0] * 20).max(Duration::from_secs(5));
            let (done, took) = keep_alive_load(addr, limit);
            drop(elsewhere);
            eprintln!("round {round}, {kind:?}: {done} round trips in {took:?}");
            assert_eq!(
                done, expected,
                "round {round}, {kind:?}: {done} of {expected} round trips in {took:?}"
            );
            totals[k] += took;
            // The next phase starts with no shadow of this one left.
            wait_until("the shadows to be gone", Duration::from_secs(5), || {
                stats.shadows_active() == 0
            });
        }
    }
    let [healthy, beside, flooded] = totals.map(|t| t.as_secs_f64());
    let (ratio, plain) = (beside / flooded, healthy / flooded);
    eprintln!(
        "throughput with a flooding shadow: {ratio:.2} of a healthy shadow's beside the same \
         flood, {plain:.2} of a healthy shadow's alone ({} round trips each: {totals:?})",
        ROUNDS * expected
    );
    assert!(
        ratio >= 0.5,
        "a flooding shadow cut the primary's throughput to {ratio:.2} of a healthy shadow's \
         with the same flood elsewhere on the machine"
    );
}

// ---------------------------------------------------------------------------------------
// 6. A panicking hook.

#[test]
fn a_panicking_hook_closes_only_its_own_session() {
    let _guard = one_at_a_time(Duration::from_secs(60));
    let panics = Arc::new(Mutex::new(Vec::<(bool, String)>::new()));
    let seen = Arc::clone(&panics);
    let proxy = ReactorThread::spawn(move |r| {
        r.set_error_handler(move |_, panic| {
            seen.lock()
                .unwrap()
                .push((panic.connection.is_some(), panic.message.to_string()));
        });
        let echo = serve(r, || Echo)?;
        let p = Options::new().start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", echo);
            conn.on_data(|_, data| {
                if find(data, b"boom").is_some() {
                    panic!("boom: the hook cannot parse this");
                }
                Relay::All(data.to_vec())
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let addr = proxy.value;
    assert_eq!(exchange(addr, b"before"), b"before");
    let mut during = connect(addr);
    during.write_all(b"ping").unwrap();
    assert_eq!(read_until(&mut during, b"ping"), b"ping");

    let mut boom = connect(addr);
    boom.write_all(b"kaboom!").unwrap();
    let mut got = Vec::new();
    match boom.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "the panicking session echoed {got:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }

    during.write_all(b"pong").unwrap();
    assert_eq!(read_until(&mut during, b"pong"), b"pong");
    during.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut during), b"");
    assert_eq!(exchange(addr, b"after"), b"after");

    // Every session's backend is released, the panicking one's included.
    wait_until(
        "the proxy's connections back to none",
        Duration::from_secs(5),
        || proxy.connection_count() == 0,
    );
    let panics = panics.lock().unwrap().clone();
    assert_eq!(panics.len(), 1, "{panics:?}");
    assert!(panics[0].0, "the panic was not tied to its connection");
    assert!(panics[0].1.contains("boom"), "{panics:?}");
    // The reactor keeps running: it still answers.
    assert_eq!(exchange(addr, b"still here"), b"still here");
}

// ---------------------------------------------------------------------------------------
// 7. The binary, a closed stderr or stdout, SIGHUP, SIGUSR1.

/// The write end of a pipe whose read end is already closed.
fn pipe_nobody_reads() -> Stdio {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills both descriptors, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: fresh descriptors from pipe2, owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// A few round trips through the proxy, each logged with `-v`.
fn round_trips(addr: SocketAddr, what: &str) {
    for i in 0..5 {
        let request = format!("{what} #{i}");
        assert_eq!(
            exchange(addr, request.as_bytes()),
            request.as_bytes(),
            "{what}"
        );
    }
}

/// `-v`, stderr read for one line and then closed: every line after it meets EPIPE. Then
/// SIGHUP and SIGUSR1, then SIGTERM.
fn stderr_closed_then_sighup_and_sigusr1(echo: &str) {
    let mut proxy = Command::new(EMBER_PROXY)
        .args(["-l", "127.0.0.1:0", "-r", echo, "-v", "--grace", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(proxy.stderr.take().unwrap());
    let mut child = Child::adopt(proxy);
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.contains("ember-proxy"), "{first:?}");
    drop(stderr);
    let addr = child.listening_addr(IO_TIMEOUT);
    round_trips(addr, "stderr closed");
    child.assert_alive("logging to a closed stderr");
    child.signal(libc::SIGHUP);
    round_trips(addr, "after SIGHUP");
    child.assert_alive("SIGHUP");
    child.signal(libc::SIGUSR1);
    round_trips(addr, "after SIGUSR1");
    child.assert_alive("SIGUSR1");
    child.signal(libc::SIGTERM);
    assert_eq!(
        child.wait_exit(IO_TIMEOUT).code(),
        Some(0),
        "exit after SIGTERM"
    );
}

/// stdout: nobody reads it from the start, so the listening line meets EPIPE (the port
/// is chosen here, then).
fn stdout_closed_from_the_start(echo: &str) {
    let port = closed_port();
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .args(["-l", &port.to_string(), "-r", echo])
            .stdout(pipe_nobody_reads())
            .stderr(Stdio::piped()),
    );
    let started = Instant::now();
    while TcpStream::connect(port).is_err() {
        if child.has_exited() {
            child.wait_exit(IO_TIMEOUT);
            panic!(
                "ember-proxy exited with its stdout closed: {}",
                child.stderr()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ember-proxy never listened"
        );
        thread::sleep(Duration::from_millis(5));
    }
    round_trips(port, "stdout closed");
    child.assert_alive("writing to a closed stdout");
    child.signal(libc::SIGTERM);
    assert_eq!(
        child.wait_exit(IO_TIMEOUT).code(),
        Some(0),
        "exit after SIGTERM"
    );
    let errors = child.stderr();
    assert!(!errors.contains("panicked"), "{errors}");
}

#[test]
fn ember_proxy_keeps_serving_after_its_stderr_closes() {
    let _guard = one_at_a_time(Duration::from_secs(60));
    let backend = ReactorThread::spawn(|r| serve(r, || Echo));
    let echo = backend.value.to_string();
    stderr_closed_then_sighup_and_sigusr1(&echo);
    stdout_closed_from_the_start(&echo);
}
