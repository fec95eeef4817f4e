//! Backends that fail: a connect that fails is retried on another backend in rotation
//! with what the client already sent replayed, a backend that keeps failing leaves the
//! rotation and comes back once it answers, a backend that accepted is never sent the
//! same bytes twice, and with every backend down a new client is closed at once.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ember::proxy::{
    Backend, Balancer, Check, Ejection, Finish, Lease, Options, Pool, Stats, Strategy, Target,
};

use support::IO_TIMEOUT;
use support::backends::StdEcho;
use support::child::EmberProxy;
use support::clients::{closed_port, recv, wait_until};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;

/// What a pool proxy's setup returns: where it listens and its stats.
struct PoolProxy {
    addr: SocketAddr,
    stats: Stats,
}

/// A proxy on its own reactor thread in front of a pool of `targets`, as the binary's
/// `-b` builds it: retries with redispatch, passive ejection, and clients closed at once
/// when every backend is out.
fn pool_proxy(
    targets: Vec<SocketAddr>,
    ejection: Ejection,
    options: Options,
) -> ReactorThread<PoolProxy> {
    checked_pool_proxy(targets, ejection, options, None)
}

/// [`pool_proxy`] with active health checks.
fn checked_pool_proxy(
    targets: Vec<SocketAddr>,
    ejection: Ejection,
    options: Options,
    check: Option<Check>,
) -> ReactorThread<PoolProxy> {
    ReactorThread::spawn(move |r| {
        let targets = targets.into_iter().map(Target::Tcp).collect();
        let pool = Pool::new(Balancer::new(targets, Strategy::RoundRobin), ejection);
        if let Some(check) = check {
            pool.start_checks(r, check);
        }
        let server = options.start_with_state(
            r,
            "127.0.0.1:0",
            || None::<Lease>,
            move |conn| {
                let Some(lease) = pool.pick(None) else {
                    conn.close();
                    return;
                };
                let backend = Backend::new(lease.target().clone())
                    .retries(3)
                    .dispatch(pool.dispatch())
                    .relay_client()
                    .relay_server();
                conn.server("relay", backend);
                *conn.state() = Some(lease);
                conn.on_finish(|_, _, _| Finish::Close);
            },
        )?;
        Ok(PoolProxy {
            addr: server.local_addr().unwrap(),
            stats: server.stats().clone(),
        })
    })
}

/// One request/response through `addr`: sends `request`, half-closes, reads to EOF. A
/// proxy that closes the client at once makes the write or the shutdown fail: that is
/// an empty answer.
fn round_trip(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    if s.write_all(request).is_err() || s.shutdown(Shutdown::Write).is_err() {
        return Vec::new();
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer
}

#[test]
fn a_dead_backend_in_the_pool_costs_no_client() {
    let live = StdEcho::start();
    let proxy = pool_proxy(
        vec![closed_port(), live.addr],
        Ejection::default(),
        Options::new(),
    );
    for i in 0..100 {
        let request = format!("request {i}");
        assert_eq!(
            round_trip(proxy.value.addr, request.as_bytes()),
            request.as_bytes()
        );
    }
    let retried = proxy.value.stats.backends_retried();
    // Three failed connects take the dead one out; after that nobody pays for it.
    assert!((1..=3).contains(&retried), "{retried} retries");
    assert_eq!(live.accepted(), 100);
}

#[test]
fn a_retry_replays_exactly_what_the_client_already_sent() {
    let live = StdEcho::start();
    let proxy = pool_proxy(
        vec![closed_port(), live.addr],
        Ejection::default(),
        Options::new(),
    );
    // The first client goes to the dead backend first (round-robin starts there) and
    // sends its whole request before the connect has even failed.
    let request = Pattern::new(251).bytes(200_000);
    assert!(round_trip(proxy.value.addr, &request) == request);
    assert_eq!(live.bytes(), request.len(), "sent once");
    assert_eq!(proxy.value.stats.backends_retried(), 1);
}

#[test]
fn a_backend_that_accepted_is_never_retried() {
    // It accepts, reads the request, and closes without a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.read(&mut [0u8; 64]);
        }
    });
    let live = StdEcho::start();
    let proxy = pool_proxy(vec![mute, live.addr], Ejection::default(), Options::new());
    assert_eq!(round_trip(proxy.value.addr, b"charge my card once"), b"");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(live.accepted(), 0, "never sent elsewhere");
    assert_eq!(proxy.value.stats.backends_retried(), 0);
}

#[test]
fn with_every_backend_down_a_new_client_is_closed_at_once_until_one_comes_back() {
    let backoff = Duration::from_millis(300);
    let ejection = Ejection {
        fall: 1,
        backoff,
        max_backoff: backoff,
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let revived = listener.local_addr().unwrap();
    drop(listener);
    let proxy = pool_proxy(vec![revived], ejection, Options::new());
    // The first client finds it dead (every retry refused) and is closed.
    assert_eq!(round_trip(proxy.value.addr, b"hello"), b"");
    // Now it is out: the next client is closed without any connect being tried.
    let retried_before = proxy.value.stats.backends_retried();
    let opened_before = proxy.value.stats.backends_opened();
    let started = Instant::now();
    assert_eq!(round_trip(proxy.value.addr, b"hello"), b"");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "closed at once"
    );
    assert_eq!(
        proxy.value.stats.backends_opened(),
        opened_before,
        "no connect tried"
    );
    assert_eq!(proxy.value.stats.backends_retried(), retried_before);
    // It comes back; once its back-off is over, clients are served with no restart.
    let back = StdEcho::on(TcpListener::bind(revived).expect("port still free"));
    let deadline = Instant::now() + IO_TIMEOUT;
    while round_trip(proxy.value.addr, b"again") != b"again" {
        assert!(Instant::now() < deadline, "the backend never came back");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(back.accepted() >= 1);
}

#[test]
fn a_backend_that_never_answers_meets_the_server_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s); // accepted, never read, never answered, never closed
        }
    });
    let timeout = Duration::from_millis(300);
    let proxy = pool_proxy(
        vec![silent],
        Ejection::default(),
        Options::new().server_timeout(Some(timeout)),
    );
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.value.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"anyone there?").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(answer.is_empty());
    assert!(waited >= timeout, "closed after {waited:?}");
    assert!(waited < timeout * 10, "closed only after {waited:?}");
}

/// Passive ejection off: only active checks may take a backend out.
fn checks_only() -> Ejection {
    Ejection {
        fall: u32::MAX,
        ..Ejection::default()
    }
}

fn fast_check(http_path: Option<&str>) -> Check {
    Check {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(100),
        http_path: http_path.map(str::to_owned),
        rise: 2,
        fall: 2,
    }
}

/// Waits until `n` clients in a row went through without a retry: no client was sent
/// to the dead backend, so the checks have it out of rotation.
fn wait_until_no_client_is_retried(proxy: &ReactorThread<PoolProxy>, n: usize) {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut clean = 0;
    while clean < n {
        assert!(
            Instant::now() < deadline,
            "the checks never took the backend out"
        );
        let before = proxy.value.stats.backends_retried();
        assert_eq!(round_trip(proxy.value.addr, b"ping"), b"ping");
        clean = if proxy.value.stats.backends_retried() == before {
            clean + 1
        } else {
            0
        };
    }
}

#[test]
fn a_refusing_backend_is_checked_out_of_rotation_and_back_in_when_it_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let revived = listener.local_addr().unwrap();
    drop(listener);
    let live = StdEcho::start();
    let proxy = checked_pool_proxy(
        vec![revived, live.addr],
        checks_only(),
        Options::new(),
        Some(fast_check(None)),
    );
    wait_until_no_client_is_retried(&proxy, 10);
    // It comes back: after `rise` passed checks it gets clients again.
    let back = StdEcho::on(TcpListener::bind(revived).expect("port still free"));
    let deadline = Instant::now() + IO_TIMEOUT;
    while back.accepted() <= 2 * 2 {
        // Its own checks connect too (rise = 2): wait for real clients beyond those.
        assert!(Instant::now() < deadline, "the backend never came back");
        assert_eq!(round_trip(proxy.value.addr, b"pong"), b"pong");
    }
}

#[test]
fn a_backend_that_never_answers_its_http_check_is_taken_out() {
    const OK: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    // Accepts the check's connection and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    // Answers every request, checks included, with 200 OK.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let healthy = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(OK);
        }
    });
    let proxy = checked_pool_proxy(
        vec![blackhole, healthy],
        checks_only(),
        Options::new().server_timeout(Some(Duration::from_millis(300))),
        Some(fast_check(Some("/health"))),
    );
    // Once the checks have it down, every client goes to the healthy backend.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut served_in_a_row = 0;
    while served_in_a_row < 10 {
        assert!(
            Instant::now() < deadline,
            "the blackhole stayed in rotation"
        );
        served_in_a_row = if round_trip(proxy.value.addr, b"GET / HTTP/1.0\r\n\r\n") == OK {
            served_in_a_row + 1
        } else {
            0
        };
    }
}

#[test]
fn the_connection_limit_holds_clients_in_the_backlog_and_serves_them_all() {
    const LIMIT: usize = 10;
    const CLIENTS: usize = 20;
    // A slow backend: each answer takes 50 ms, so the clients overlap.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow = listener.local_addr().unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (now_live, most) = (Arc::clone(&live), Arc::clone(&peak));
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let (now_live, most) = (Arc::clone(&now_live), Arc::clone(&most));
            thread::spawn(move || {
                let mut s = s;
                most.fetch_max(
                    now_live.fetch_add(1, Ordering::SeqCst) + 1,
                    Ordering::SeqCst,
                );
                let mut request = [0u8; 4];
                let ok = s.read_exact(&mut request).is_ok();
                thread::sleep(Duration::from_millis(50));
                if ok {
                    let _ = s.write_all(&request);
                }
                now_live.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let proxy = pool_proxy(
        vec![slow],
        Ejection::default(),
        Options::new().max_connections(LIMIT),
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = proxy.value.addr;
            thread::spawn(move || round_trip(addr, b"ping"))
        })
        .collect();
    let stats = proxy.value.stats.clone();
    let mut most_clients = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        most_clients = most_clients.max(stats.clients_active());
        thread::yield_now();
    }
    for client in clients {
        assert_eq!(client.join().unwrap(), b"ping", "every client served");
    }
    assert!(
        most_clients <= LIMIT as u64,
        "{most_clients} clients at once"
    );
    assert!(peak.load(Ordering::SeqCst) <= LIMIT, "the backend saw more");
    assert_eq!(stats.clients_accepted(), CLIENTS as u64);
}

#[test]
fn a_dead_shadow_leaves_the_rotation_and_is_skipped_not_retried() {
    let live = StdEcho::start();
    let dead_shadow = closed_port();
    let proxy = ReactorThread::spawn(move |r| {
        let one = |addr| Balancer::new(vec![Target::Tcp(addr)], Strategy::RoundRobin);
        let shadow_pool = Pool::new(one(dead_shadow), Ejection::default());
        let server = Options::new().start(r, "127.0.0.1:0", move |conn| {
            conn.server("relay", Backend::tcp(live.addr).relay_server());
            let shadow = Backend::tcp(dead_shadow)
                .shadow()
                .dispatch(shadow_pool.dispatch());
            conn.server("shadow", shadow);
            conn.on_finish(|_, name, _| {
                if name == "relay" {
                    Finish::Close
                } else {
                    Finish::Keep
                }
            });
        })?;
        Ok(PoolProxy {
            addr: server.local_addr().unwrap(),
            stats: server.stats().clone(),
        })
    });
    for i in 0..20 {
        let request = format!("request {i}");
        assert_eq!(
            round_trip(proxy.value.addr, request.as_bytes()),
            request.as_bytes(),
            "the primary answers whatever the shadow does"
        );
    }
    let stats = &proxy.value.stats;
    // Three refused connects take it out; the other clients skip it without a connect
    // (a client or two may pick it before a refusal is scored: refusals are async).
    let tried = 20 - stats.shadows_skipped();
    assert!(
        (3..=6).contains(&tried),
        "{tried} shadow connects tried: {stats:?}"
    );
    assert_eq!(stats.backends_retried(), 0);
}

/// A backend on a std thread that hands each connection, once its 4-byte request is in,
/// to the test, which answers when it likes. Counts the connections holding a request
/// now and at most.
struct HeldBackend {
    addr: SocketAddr,
    requests: mpsc::Receiver<(TcpStream, [u8; 4])>,
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl HeldBackend {
    fn start() -> HeldBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::channel();
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (now_live, most) = (Arc::clone(&live), Arc::clone(&peak));
        thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut request = [0u8; 4];
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                // A connection that closes without a request (a health check, say) is
                // not a client.
                if s.read_exact(&mut request).is_err() {
                    continue;
                }
                most.fetch_max(
                    now_live.fetch_add(1, Ordering::SeqCst) + 1,
                    Ordering::SeqCst,
                );
                if tx.send((s, request)).is_err() {
                    return;
                }
            }
        });
        HeldBackend {
            addr,
            requests,
            live,
            peak,
        }
    }

    /// The next request to arrive (panics if none does in time).
    fn next(&self) -> (TcpStream, [u8; 4]) {
        recv(&self.requests, IO_TIMEOUT, "a request at the backend")
    }

    /// Answers a held request with its own bytes and closes the connection.
    fn answer(&self, (mut s, request): (TcpStream, [u8; 4])) {
        s.write_all(&request).unwrap();
        drop(s);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    fn nothing_arrives(&self, within: Duration) -> bool {
        self.requests.recv_timeout(within).is_err()
    }
}

/// Connects through `addr` and sends a 4-byte request; the answer is read later.
fn send_request(addr: SocketAddr, request: &[u8; 4]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    s
}

fn answer_of(mut s: TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer
}

#[test]
fn per_backend_maxconn_queues_clients_until_a_slot_frees() {
    let (a, b) = (HeldBackend::start(), HeldBackend::start());
    let proxy = EmberProxy::start(&[
        "-b",
        &format!("{} maxconn=1,{} maxconn=2", a.addr, b.addr),
        "--strategy",
        "least-conn",
    ]);
    // Three clients fill both backends' slots.
    let mut clients: Vec<Option<TcpStream>> = (0..3u8)
        .map(|i| Some(send_request(proxy.addr, &[b'r', b'e', b'q', b'0' + i])))
        .collect();
    let held_a = a.next();
    let mut held_b = vec![b.next(), b.next()];
    // Two more wait in the proxy's queue: neither backend sees them.
    clients.push(Some(send_request(proxy.addr, b"req3")));
    clients.push(Some(send_request(proxy.addr, b"req4")));
    let quiet = Duration::from_millis(300);
    assert!(a.nothing_arrives(quiet) && b.nothing_arrives(quiet));
    // Answers a held request; its client reads the answer and leaves, freeing the slot.
    let finish = |backend: &HeldBackend,
                  held: (TcpStream, [u8; 4]),
                  clients: &mut Vec<Option<TcpStream>>| {
        let request = held.1;
        backend.answer(held);
        let client = clients[usize::from(request[3] - b'0')].take().unwrap();
        assert_eq!(answer_of(client), request, "the answer to its own request");
    };
    // A slot on A frees: the first waiter takes it; the second still waits.
    finish(&a, held_a, &mut clients);
    let next_at_a = a.next();
    assert_eq!(&next_at_a.1, b"req3", "first come, first served");
    assert!(b.nothing_arrives(quiet));
    // A slot on B frees: the second waiter takes it.
    finish(&b, held_b.remove(0), &mut clients);
    let next_at_b = b.next();
    assert_eq!(&next_at_b.1, b"req4");
    finish(&a, next_at_a, &mut clients);
    finish(&b, next_at_b, &mut clients);
    finish(&b, held_b.remove(0), &mut clients);
    assert_eq!(a.peak.load(Ordering::SeqCst), 1, "A's maxconn held");
    assert_eq!(b.peak.load(Ordering::SeqCst), 2, "B's maxconn held");
}

#[test]
fn a_client_queued_past_the_queue_timeout_is_closed_and_logged() {
    let backend = HeldBackend::start();
    let mut proxy = EmberProxy::start(&[
        "-b",
        &format!("{} maxconn=1", backend.addr),
        "--queue-timeout",
        "0.3",
    ]);
    let holder = send_request(proxy.addr, b"hold");
    let held = backend.next();
    let started = Instant::now();
    let late = send_request(proxy.addr, b"late");
    assert_eq!(answer_of(late), b"", "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(300));
    wait_until("the queue timeout's log line", IO_TIMEOUT, || {
        proxy
            .child
            .stderr()
            .contains("no backend slot came free within the queue timeout")
    });
    // The client holding the slot is untouched, and the late one never reached the backend.
    backend.answer(held);
    assert_eq!(answer_of(holder), b"hold");
    assert!(backend.nothing_arrives(Duration::from_millis(100)));
    proxy.child.assert_alive("a queue timeout");
}
