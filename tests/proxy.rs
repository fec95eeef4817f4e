//! The proxy DSL's rules over real loopback sockets: pass-through, half-close, buffering
//! for a backend still connecting, failures reported through `on_finish`, backpressure
//! both ways, graceful backend close when the client disappears, the cut-through relay,
//! and what each hook return value does; and duplex ("fork production traffic to a second
//! environment"): both backends see the same bytes, the client only the primary's answers,
//! and a shadow that is dead, never reads, or dies never slows or breaks the primary, with
//! memory bounded.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use ember::proxy::{self, Backend, Finish, Options, Relay, Stats};
use ember::{Context, DEFAULT_HIGH_WATER, Handler, READ_CHUNK, UnbindReason};

use support::IO_TIMEOUT;
use support::backends::{
    AnswerAfterFin, Echo, NeverReads, Record, Recorder, record_of, serve, serve_recorder,
};
use support::clients::{closed_port, connect, exchange, pump, read_all, read_until, wait_until};
use support::pattern::Pattern;
use support::reactor_thread::{ReactorThread, watch_peak_queue};
use support::sys::reset_on_close;

#[test]
fn without_hooks_bytes_pass_through_both_ways() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", echo);
        })?;
        Ok(p.local_addr().unwrap())
    });
    assert_eq!(
        exchange(running.value, b"hello through the proxy"),
        b"hello through the proxy"
    );
}

#[test]
fn client_fin_reaches_the_backend_and_the_whole_response_still_flows_back() {
    const RESPONSE: usize = 8 << 20;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&received);
    let running = ReactorThread::spawn(move |r| {
        let backend = serve(r, move || AnswerAfterFin {
            size: RESPONSE,
            received: Arc::clone(&seen),
        })?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("slow", backend);
        })?;
        Ok(p.local_addr().unwrap())
    });
    let request = Pattern::new(1).bytes(100_000);
    let response = exchange(running.value, &request);
    assert_eq!(received.load(Ordering::SeqCst), request.len());
    assert_eq!(response.len(), RESPONSE);
    assert!(Pattern::new(7).matches(&response), "response bytes differ");
}

#[test]
fn bytes_for_a_backend_still_connecting_are_queued_and_sent_on_connect() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            // Open the backend only when the first bytes arrive, and relay them at once:
            // the connect has only just started.
            conn.on_data(move |s, data| {
                if s.servers().is_empty() {
                    let id = s.server("late", echo).expect("opened");
                    assert!(!s.reactor().is_connected(id), "still connecting");
                }
                Relay::All(data.to_vec())
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let request = Pattern::new(2).bytes(1 << 20);
    assert_eq!(exchange(running.value, &request), request);
}

#[test]
fn unreachable_backends_report_their_reason_through_on_finish() {
    let dead = closed_port();
    let running = ReactorThread::spawn(move |r| {
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            assert!(conn.server("refused", dead).is_some());
            assert!(conn.server("typo", "not a target").is_none());
            conn.on_finish(|s, name, reason| {
                s.send_data(format!("{name}: {reason:?}\n").as_bytes());
                Finish::WhenAllDone
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    let text = String::from_utf8(read_all(&mut client)).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["refused: Refused", "typo: Unresolvable"]);
}

/// A backend on a std thread: signals when accepted, waits for `go`, then runs `then`.
fn gated_backend<T: Send + 'static>(
    then: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
) -> (SocketAddr, mpsc::Sender<()>, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, wait) = mpsc::channel();
    let thread = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        wait.recv_timeout(IO_TIMEOUT).expect("released");
        then(stream)
    });
    (addr, go, thread)
}

#[test]
fn a_full_backend_pauses_the_client_and_memory_stays_bounded() {
    const SIZE: usize = 32 << 20;
    let (backend, go, reader) = gated_backend(|mut stream| {
        let mut pattern = Pattern::new(3);
        let mut buf = vec![0; 256 * 1024];
        let mut total = 0;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            assert!(
                pattern.matches(&buf[..n]),
                "backend got wrong bytes at {total}"
            );
            total += n;
        }
    });
    let running = ReactorThread::spawn(move |r| {
        let peak = watch_peak_queue(r);
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("slow", backend);
        })?;
        Ok((p.local_addr().unwrap(), peak))
    });
    let (addr, peak) = (running.value.0, Arc::clone(&running.value.1));
    let writer = thread::spawn(move || {
        let mut client = connect(addr);
        let mut pattern = Pattern::new(3);
        let mut chunk = vec![0; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            pattern.fill(&mut chunk);
            client.write_all(&chunk).unwrap();
        }
        client.shutdown(Shutdown::Write).unwrap();
        read_all(&mut client)
    });
    // The backend reads nothing until the proxy's queue for it is full.
    wait_until("the backend's queue to fill", IO_TIMEOUT, || {
        peak.load(Ordering::Relaxed) >= DEFAULT_HIGH_WATER
    });
    go.send(()).unwrap();
    assert_eq!(reader.join().unwrap(), SIZE);
    assert_eq!(writer.join().unwrap(), b"");
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= DEFAULT_HIGH_WATER + READ_CHUNK,
        "queued {peak} bytes"
    );
}

#[test]
fn a_slow_client_pauses_the_backend_and_memory_stays_bounded() {
    const SIZE: usize = 32 << 20;
    let (backend, go, writer) = gated_backend(|mut stream| {
        let mut pattern = Pattern::new(4);
        let mut chunk = vec![0; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            pattern.fill(&mut chunk);
            stream.write_all(&chunk).unwrap();
        }
    });
    let running = ReactorThread::spawn(move |r| {
        let peak = watch_peak_queue(r);
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("fast", backend);
        })?;
        Ok((p.local_addr().unwrap(), peak))
    });
    let peak = Arc::clone(&running.value.1);
    let mut client = connect(running.value.0);
    go.send(()).unwrap();
    read_late_and_check_the_queue(&mut client, 4, SIZE, &peak);
    writer.join().unwrap();
}

/// The client reads nothing until the proxy's queue for it is full, then reads `size`
/// pattern bytes from `seed`; the queue must never have held more than the high-water
/// mark plus one read.
fn read_late_and_check_the_queue(
    client: &mut std::net::TcpStream,
    seed: u64,
    size: usize,
    peak: &AtomicUsize,
) {
    wait_until("the client's queue to fill", IO_TIMEOUT, || {
        peak.load(Ordering::Relaxed) >= DEFAULT_HIGH_WATER
    });
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0; 256 * 1024];
    let mut total = 0;
    while total < size {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "proxy closed after {total} bytes");
        assert!(
            pattern.matches(&buf[..n]),
            "client got wrong bytes at {total}"
        );
        total += n;
    }
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= DEFAULT_HIGH_WATER + READ_CHUNK,
        "queued {peak} bytes"
    );
}

#[test]
fn a_client_that_disappears_leaves_its_backend_a_fin_after_the_pending_bytes() {
    let (backend, go, reader) = gated_backend(|mut stream| {
        let mut data = Vec::new();
        let outcome = stream.read_to_end(&mut data);
        (outcome.map(|_| ()), data)
    });
    let running = ReactorThread::spawn(move |r| {
        let peak = watch_peak_queue(r);
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("backend", backend);
        })?;
        Ok((p.local_addr().unwrap(), peak))
    });
    let peak = Arc::clone(&running.value.1);
    let mut client = connect(running.value.0);
    client
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut pattern = Pattern::new(5);
    let mut chunk = vec![0; 64 * 1024];
    // Write until the whole path is full: backend not reading, proxy paused.
    loop {
        pattern.fill(&mut chunk);
        match client.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("client write: {e}"),
        }
    }
    wait_until("the backend's queue to fill", IO_TIMEOUT, || {
        peak.load(Ordering::Relaxed) >= DEFAULT_HIGH_WATER
    });
    reset_on_close(&client);
    drop(client);
    go.send(()).unwrap();
    let (outcome, data) = reader.join().unwrap();
    outcome.expect("the backend sees FIN, not a reset");
    assert!(
        data.len() >= DEFAULT_HIGH_WATER,
        "only {} bytes arrived",
        data.len()
    );
    assert!(Pattern::new(5).matches(&data), "backend got wrong bytes");
}

#[test]
fn a_backend_dying_mid_response_closes_that_client_and_others_are_served() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    // Answers `die` with half a response and a reset, anything else in full.
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut request = [0u8; 3];
                if stream.read_exact(&mut request).is_err() {
                    return;
                }
                let body = Pattern::new(6).bytes(1 << 20);
                if &request == b"die" {
                    let _ = stream.write_all(&body[..body.len() / 2]);
                    reset_on_close(&stream);
                } else {
                    let _ = stream.write_all(&body);
                }
            });
        }
    });
    let running = ReactorThread::spawn(move |r| {
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("app", backend);
        })?;
        Ok(p.local_addr().unwrap())
    });
    let addr = running.value;
    let healthy = thread::spawn(move || {
        let mut client = connect(addr);
        client.write_all(b"get").unwrap();
        read_all(&mut client)
    });
    let mut dying = connect(addr);
    dying.write_all(b"die").unwrap();
    let partial = read_all(&mut dying);
    assert!(
        partial.len() < 1 << 20,
        "got the whole response from a dying backend"
    );
    assert!(
        Pattern::new(6).matches(&partial),
        "partial response has wrong bytes"
    );
    let full = healthy.join().unwrap();
    assert_eq!(full.len(), 1 << 20);
    assert!(Pattern::new(6).matches(&full));
    // And the proxy keeps serving new clients.
    let mut again = connect(addr);
    again.write_all(b"get").unwrap();
    assert_eq!(read_all(&mut again).len(), 1 << 20);
}

#[test]
fn cut_through_backends_skip_the_hooks() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let running = ReactorThread::spawn(move |r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", Backend::tcp(echo).relay_client().relay_server());
            let on_data = Arc::clone(&counted);
            conn.on_data(move |_, data| {
                on_data.fetch_add(1, Ordering::SeqCst);
                Relay::All(data.to_vec())
            });
            let on_response = Arc::clone(&counted);
            conn.on_response(move |_, _, data| {
                on_response.fetch_add(1, Ordering::SeqCst);
                Some(data.to_vec())
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let request = Pattern::new(8).bytes(4 << 20);
    let reply = exchange(running.value, &request);
    assert!(reply == request, "echo through the relay differs");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_later_relay_from_a_deferred_job_arrives_before_the_clients_fin() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", echo);
            conn.on_data(|s, data| {
                let data = data.to_vec();
                s.defer(
                    move || {
                        thread::sleep(Duration::from_millis(30)); // a blocking lookup
                        data.to_ascii_uppercase()
                    },
                    |s, checked| s.relay_to_servers(Relay::All(checked.unwrap())),
                );
                Relay::Later
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    assert_eq!(exchange(running.value, b"hello, later"), b"HELLO, LATER");
}

#[test]
fn relay_to_names_only_the_chosen_backends() {
    let running = ReactorThread::spawn(|r| {
        let (a, a_record) = serve_recorder(r, "a")?;
        let (b, b_record) = serve_recorder(r, "b")?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("a", a);
            conn.server("b", b);
            conn.on_data(|_, data| Relay::to(data, &["a", "nobody"]));
            conn.on_response(|_, name, data| (name == "a").then(|| data.to_vec()));
            conn.on_finish(|_, name, _| {
                if name == "a" {
                    Finish::Close
                } else {
                    Finish::Keep
                }
            });
        })?;
        Ok((p.local_addr().unwrap(), a_record, b_record))
    });
    let (addr, a, b) = running.value.clone();
    let reply = exchange(addr, b"only for a");
    assert_eq!(reply, b"a:10\na:end\n");
    assert_eq!(record_of(&a), b"only for a");
    assert_eq!(record_of(&b), b"");
}

#[test]
fn finish_keep_holds_the_client_open_for_a_timer_to_answer() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", echo);
            conn.on_finish(|s, _, reason| {
                assert_eq!(reason, UnbindReason::PeerClosed);
                s.add_timer(Duration::from_millis(20), |s| {
                    s.send_data(b" and goodbye from the proxy");
                    s.close();
                });
                Finish::Keep
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    assert_eq!(
        exchange(running.value, b"hello"),
        b"hello and goodbye from the proxy"
    );
}

#[test]
fn hooks_see_names_addresses_and_can_answer_the_client_themselves() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            assert!(conn.server("echo", echo).is_some());
            assert!(conn.server("echo", echo).is_none(), "names are unique");
            let peer = conn.peer().unwrap();
            let sock = conn.sock().unwrap();
            conn.on_connect(move |s, name| {
                s.send_data(format!("{name} connected for {peer} via {sock}\n").as_bytes());
            });
            conn.on_data(|s, data| {
                if data.starts_with(b"secret") {
                    s.send_data(b"denied\n");
                    return Relay::Drop;
                }
                Relay::All(data.to_vec())
            });
            conn.on_response(|_, _, data| Some(data.to_ascii_uppercase()));
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    let (me, proxy) = (client.local_addr().unwrap(), running.value);
    let greeting = read_until(&mut client, b"\n");
    assert_eq!(
        greeting,
        format!("echo connected for {me} via {proxy}\n").as_bytes()
    );
    client.write_all(b"secret").unwrap();
    assert_eq!(read_until(&mut client, b"\n"), b"denied\n");
    client.write_all(b"public\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut client), b"PUBLIC\n");
}

#[test]
fn per_client_state_is_shared_by_the_hooks_of_one_client() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start_with_state(
            r,
            "127.0.0.1:0",
            || 0usize,
            move |conn| {
                conn.server("echo", echo);
                conn.on_data(|s, data| {
                    *s.state() += data.len();
                    Relay::All(data.to_vec())
                });
                conn.on_finish(|s, _, _| {
                    let total = *s.state();
                    s.send_data(format!("|{total} bytes").as_bytes());
                    Finish::Close
                });
            },
        )?;
        Ok(p.local_addr().unwrap())
    });
    assert_eq!(exchange(running.value, b"12345"), b"12345|5 bytes");
    assert_eq!(exchange(running.value, b"123"), b"123|3 bytes");
}

#[test]
fn a_unix_socket_backend_works_like_a_tcp_one() {
    let dir = std::env::temp_dir().join(format!("ember-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let socket = path.clone();
    let running = ReactorThread::spawn(move |r| {
        r.start_unix_server(&socket, || Echo)?;
        let p = Options::new().start(r, "127.0.0.1:0", move |conn| {
            conn.server("unix", Backend::unix(&socket));
        })?;
        Ok(p.local_addr().unwrap())
    });
    assert_eq!(
        exchange(running.value, b"over a unix socket"),
        b"over a unix socket"
    );
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_count_clients_and_failures() {
    let dead = closed_port();
    let stats = Arc::new(Mutex::new(None));
    let out = Arc::clone(&stats);
    let running = ReactorThread::spawn(move |r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", echo);
            conn.server("dead", Backend::tcp(dead).shadow());
        })?;
        *out.lock().unwrap() = Some(p.stats().clone());
        Ok(p.local_addr().unwrap())
    });
    for _ in 0..3 {
        assert_eq!(exchange(running.value, b"ping"), b"ping");
    }
    let stats = stats.lock().unwrap().clone().unwrap();
    wait_until("clients to close", IO_TIMEOUT, || {
        stats.clients_active() == 0
    });
    assert_eq!(stats.clients_accepted(), 3);
    assert_eq!(stats.backends_opened(), 6);
    assert_eq!(stats.backends_failed(), 3);
    assert_eq!(stats.bytes_from_clients(), 12);
}

#[test]
fn a_later_relay_holds_the_clients_fin_until_the_held_bytes_are_relayed() {
    // The held bytes are relayed when another backend says "go", which the test only lets
    // happen after the client has sent FIN.
    let (gate, go, gate_thread) = gated_backend(|mut stream| {
        stream.write_all(b"go").unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).map(|_| rest)
    });
    let running = ReactorThread::spawn(move |r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start_with_state(r, "127.0.0.1:0", Vec::<u8>::new, move |conn| {
            conn.server("echo", echo);
            conn.server("gate", gate);
            conn.on_data(|s, data| {
                s.state().extend_from_slice(data);
                Relay::Later
            });
            conn.on_response(|s, name, data| {
                if name == "gate" {
                    let held = std::mem::take(s.state());
                    s.relay_to_servers(Relay::to(held, &["echo"]));
                    return None;
                }
                Some(data.to_vec())
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    client.write_all(b"held until the gate opens").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    go.send(()).unwrap();
    assert_eq!(read_all(&mut client), b"held until the gate opens");
    assert_eq!(
        gate_thread.join().unwrap().unwrap(),
        b"",
        "the gate got FIN, nothing else"
    );
}

/// Greets, half-closes, then counts what it reads; reports the count when it ends.
struct GreetThenCount {
    count: usize,
    report: mpsc::Sender<(usize, UnbindReason)>,
}

impl ember::Handler for GreetThenCount {
    fn post_init(&mut self, cx: &mut ember::Context<'_>) {
        cx.send_data(b"ready\n");
        cx.close_write();
    }
    fn receive_data(&mut self, _cx: &mut ember::Context<'_>, data: &[u8]) {
        self.count += data.len();
    }
    fn unbind(&mut self, _cx: &mut ember::Context<'_>, reason: UnbindReason) {
        let _ = self.report.send((self.count, reason));
    }
}

/// The backend greets and half-closes; the client reads to EOF, then uploads and sends FIN.
fn upload_after_the_backends_fin(backend: fn(SocketAddr) -> Backend) {
    const UPLOAD: usize = 100_000;
    let (report, counted) = mpsc::channel();
    let report = Mutex::new(report);
    let running = ReactorThread::spawn(move |r| {
        let report = report.into_inner().unwrap();
        let greeter = serve(r, move || GreetThenCount {
            count: 0,
            report: report.clone(),
        })?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("greeter", backend(greeter));
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    assert_eq!(
        read_all(&mut client),
        b"ready\n",
        "the backend's FIN passed on"
    );
    client.write_all(&Pattern::new(9).bytes(UPLOAD)).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        counted.recv_timeout(IO_TIMEOUT),
        Ok((UPLOAD, UnbindReason::PeerClosed)),
        "every byte, then the client's FIN"
    );
}

#[test]
fn a_backends_half_close_passes_through_and_the_client_can_still_send() {
    upload_after_the_backends_fin(Backend::tcp);
}

#[test]
fn a_backends_half_close_passes_through_on_the_cut_through_relay() {
    upload_after_the_backends_fin(|addr| Backend::tcp(addr).relay_client().relay_server());
}

#[test]
fn a_hook_answering_the_client_itself_pauses_a_client_that_does_not_read() {
    const SIZE: usize = 32 << 20;
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&peak);
    let running = ReactorThread::spawn(move |r| {
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            let seen = Arc::clone(&seen);
            conn.on_data(move |s, data| {
                s.send_data(data);
                let client = s.client_id();
                seen.fetch_max(s.reactor().outbound_size(client), Ordering::Relaxed);
                Relay::Drop
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    let mut writing = client.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut pattern = Pattern::new(5);
        let mut chunk = vec![0; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            pattern.fill(&mut chunk);
            writing.write_all(&chunk).unwrap();
        }
        writing.shutdown(Shutdown::Write).unwrap();
    });
    read_late_and_check_the_queue(&mut client, 5, SIZE, &peak);
    writer.join().unwrap();
}

#[test]
fn when_all_done_waits_for_held_bytes_and_jobs_then_closes_the_client() {
    let dead = closed_port();
    let running = ReactorThread::spawn(move |r| {
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            let (finished, on_finish_ran) = mpsc::channel::<()>();
            let mut on_finish_ran = Some(on_finish_ran);
            // The only backend is opened, refused and finished while the bytes are held
            // and a job is still running: the job waits until on_finish has run.
            conn.on_data(move |s, data| {
                s.server("refused", dead);
                let data = data.to_vec();
                let ran = on_finish_ran.take().expect("one chunk");
                s.defer(
                    move || ran.recv_timeout(IO_TIMEOUT).map(|()| data),
                    |s, data| s.relay_to_servers(Relay::All(data.unwrap().unwrap())),
                );
                Relay::Later
            });
            conn.on_finish(move |s, name, reason| {
                assert_eq!((name, reason), ("refused", UnbindReason::Refused));
                s.send_data(b"finished\n");
                finished.send(()).unwrap();
                Finish::WhenAllDone
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    client.write_all(b"held").unwrap();
    assert_eq!(
        read_all(&mut client),
        b"finished\n",
        "closed once the job ran"
    );
}

#[test]
fn a_relay_server_backends_fin_does_not_cut_off_another_primary() {
    let (late, go, late_thread) = gated_backend(|mut stream| {
        let mut request = [0u8; 1];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(b"late answer\n").unwrap();
    });
    let running = ReactorThread::spawn(move |r| {
        let quick = serve(r, || QuickAnswerThenClose)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("quick", Backend::tcp(quick).relay_server());
            conn.server("late", late);
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    client.write_all(b"x").unwrap();
    assert_eq!(read_until(&mut client, b"\n"), b"quick\n");
    go.send(()).unwrap();
    late_thread.join().unwrap();
    assert_eq!(read_all(&mut client), b"late answer\n");
}

/// Answers the first bytes and closes.
struct QuickAnswerThenClose;

impl ember::Handler for QuickAnswerThenClose {
    fn receive_data(&mut self, cx: &mut ember::Context<'_>, _data: &[u8]) {
        cx.send_data(b"quick\n");
        cx.close_after_writing();
    }
}

#[test]
fn a_cancelled_session_timer_no_longer_holds_the_clients_fin() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start_with_state(
            r,
            "127.0.0.1:0",
            || None,
            move |conn| {
                conn.server("echo", echo);
                conn.on_data(|s, data| {
                    if data == b"start" {
                        let timer = s.add_timer(Duration::from_secs(3600), |s| {
                            s.send_data(b"never");
                        });
                        *s.state() = Some(timer);
                    } else if let Some(timer) = s.state().take() {
                        assert!(s.cancel_timer(timer));
                        assert!(!s.cancel_timer(timer), "cancelled once");
                    }
                    Relay::All(data.to_vec())
                });
            },
        )?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    client.write_all(b"start").unwrap();
    assert_eq!(read_until(&mut client, b"start"), b"start");
    client.write_all(b"cancel").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut client), b"cancel");
}

#[test]
fn relay_to_a_name_given_twice_sends_once() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", echo);
            conn.on_data(|_, data| Relay::to(data, &["echo", "echo"]));
        })?;
        Ok(p.local_addr().unwrap())
    });
    assert_eq!(exchange(running.value, b"once"), b"once");
}

#[test]
fn stats_count_the_bytes_the_descriptor_relay_carries() {
    let stats = Arc::new(Mutex::new(None));
    let out = Arc::clone(&stats);
    let running = ReactorThread::spawn(move |r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", Backend::tcp(echo).relay_client().relay_server());
        })?;
        *out.lock().unwrap() = Some(p.stats().clone());
        Ok(p.local_addr().unwrap())
    });
    let request = Pattern::new(6).bytes(300_000);
    assert_eq!(exchange(running.value, &request), request);
    let stats = stats.lock().unwrap().clone().unwrap();
    wait_until("the relayed bytes to be counted", IO_TIMEOUT, || {
        stats.clients_active() == 0 && stats.bytes_to_clients() == request.len() as u64
    });
    assert_eq!(stats.bytes_from_clients(), request.len() as u64);
}

#[test]
fn every_backend_gets_on_finish_once_even_when_the_client_vanishes_first() {
    let (tx, rx) = mpsc::channel();
    let running = ReactorThread::spawn(move |r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", echo);
            let tx = tx.clone();
            conn.on_finish(move |_, name, reason| {
                tx.send((name.to_string(), reason)).unwrap();
                Finish::WhenAllDone
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let mut client = connect(running.value);
    client.write_all(b"ping").unwrap();
    assert_eq!(read_until(&mut client, b"ping"), b"ping");
    // The client resets: it is gone while its backend is still open and attached.
    reset_on_close(&client);
    drop(client);
    let (name, reason) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(name, "echo");
    assert_eq!(reason, UnbindReason::ClosedByUs);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "on_finish ran twice for one backend"
    );
}

// ---------------------------------------------------------------------------------------
// Duplex

/// A proxy with a recording primary and a shadow made by `shadow` (given the shadow
/// record); returns the proxy address, its stats and both records.
fn duplex<H: Handler>(
    options: Options,
    shadow: impl Fn(Record) -> H + Send + 'static,
) -> ReactorThread<(std::net::SocketAddr, Stats, Record, Record)> {
    ReactorThread::spawn(move |r| {
        let (prod, prod_record) = serve_recorder(r, "prod")?;
        let shadow_record = Record::default();
        let sr = Arc::clone(&shadow_record);
        let shadow = serve(r, move || shadow(Arc::clone(&sr)))?;
        let p = options.start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", prod);
            conn.server("shadow", Backend::tcp(shadow).shadow());
        })?;
        Ok((
            p.local_addr().unwrap(),
            p.stats().clone(),
            prod_record,
            shadow_record,
        ))
    })
}

#[test]
fn duplex_backends_see_identical_bytes_and_the_client_gets_the_primarys_answers_only() {
    let running = duplex(Options::new(), |record| Recorder {
        prefix: "shadow",
        record,
    });
    let (addr, _, prod, shadow) = running.value.clone();
    let mut client = connect(addr);
    let mut sent = Vec::new();
    let mut pattern = Pattern::new(11);
    let mut answers = Vec::new();
    for size in [1, 100, 5000, 70_000, 3] {
        let chunk = pattern.bytes(size);
        client.write_all(&chunk).unwrap();
        sent.extend_from_slice(&chunk);
        // Wait for prod's answer to this chunk so chunks stay distinct.
        let expect = format!("prod:{}\n", sent.len());
        let mut got = read_until(&mut client, expect.as_bytes());
        answers.append(&mut got);
    }
    client.shutdown(Shutdown::Write).unwrap();
    answers.extend(read_all(&mut client));
    let answers = String::from_utf8(answers).unwrap();
    assert!(answers.lines().all(|l| l.starts_with("prod:")), "{answers}");
    assert!(
        answers.ends_with(&format!("prod:{}\nprod:end\n", sent.len())),
        "{answers}"
    );
    wait_until("the shadow to get everything", IO_TIMEOUT, || {
        record_of(&shadow).len() >= sent.len()
    });
    assert!(record_of(&prod) == sent, "prod got different bytes");
    assert!(record_of(&shadow) == sent, "shadow got different bytes");
}

#[test]
fn a_dead_shadow_leaves_the_primarys_answers_intact() {
    let dead = closed_port();
    let running = ReactorThread::spawn(move |r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", echo);
            conn.server("shadow", Backend::tcp(dead).shadow());
        })?;
        Ok((p.local_addr().unwrap(), p.stats().clone()))
    });
    let (addr, stats) = running.value.clone();
    for round in 0..20u64 {
        let request = Pattern::new(round).bytes(50_000);
        assert!(exchange(addr, &request) == request, "round {round}");
    }
    assert_eq!(stats.backends_failed(), 20);
}

/// Streams `size` bytes through the proxy to an echoing primary and checks the echo,
/// writing and reading at the same time.
fn stream_through(addr: std::net::SocketAddr, size: usize, seed: u64) {
    assert_eq!(pump(addr, size, seed), size, "echo length");
}

#[test]
fn a_shadow_that_never_reads_is_cut_off_and_memory_stays_bounded() {
    const SHADOW_BUFFER: usize = 1 << 20;
    const SIZE: usize = 64 << 20;
    let running = ReactorThread::spawn(|r| {
        let peak = watch_peak_queue(r);
        let echo = serve(r, || Echo)?;
        let stuck = serve(r, || NeverReads)?;
        let p =
            Options::new()
                .shadow_buffer(SHADOW_BUFFER)
                .start(r, "127.0.0.1:0", move |conn| {
                    conn.server("prod", echo);
                    conn.server("shadow", Backend::tcp(stuck).shadow());
                })?;
        Ok((p.local_addr().unwrap(), p.stats().clone(), peak))
    });
    let (addr, stats, peak) = running.value.clone();
    stream_through(addr, SIZE, 21);
    assert_eq!(stats.shadow_cutoffs(), 1);
    assert!(stats.peak_shadow_queue() as usize <= SHADOW_BUFFER + READ_CHUNK);
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= SHADOW_BUFFER.max(DEFAULT_HIGH_WATER) + READ_CHUNK,
        "some connection queued {peak} bytes"
    );
}

/// Reads a little, then closes on its own, mid-stream.
struct QuitsEarly {
    seen: usize,
}

impl Handler for QuitsEarly {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.seen += data.len();
        if self.seen > 100_000 {
            cx.close();
        }
    }
}

#[test]
fn a_shadow_that_dies_mid_stream_does_not_disturb_the_primary() {
    let running = ReactorThread::spawn(|r| {
        let echo = serve(r, || Echo)?;
        let quitter = serve(r, || QuitsEarly { seen: 0 })?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", echo);
            conn.server("shadow", Backend::tcp(quitter).shadow());
        })?;
        Ok(p.local_addr().unwrap())
    });
    stream_through(running.value, 8 << 20, 22);
}

#[test]
fn a_shadow_whose_answers_are_recorded_still_never_reaches_the_client() {
    let answers = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&answers);
    let running = ReactorThread::spawn(move |r| {
        let (prod, _) = serve_recorder(r, "prod")?;
        let (shadow, _) = serve_recorder(r, "shadow")?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", prod);
            conn.server("shadow", Backend::tcp(shadow).shadow());
            let seen = Arc::clone(&seen);
            // Returns every answer, the shadow's included: shadows still never reach the
            // client.
            conn.on_response(move |_, name, data| {
                seen.lock()
                    .unwrap()
                    .push(format!("{name}={}", String::from_utf8_lossy(data)));
                Some(data.to_vec())
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let reply = exchange(running.value, b"abc");
    assert_eq!(reply, b"prod:3\nprod:end\n");
    let answers = answers.lock().unwrap().join("");
    assert!(answers.contains("prod=prod:3"), "{answers}");
}

/// Answers each connection with the address it came from, then closes.
struct SaysYourAddress;

impl Handler for SaysYourAddress {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let peer = cx
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        cx.send_data(peer.as_bytes());
        cx.close_after_writing();
    }
}

#[test]
fn a_named_backend_connects_from_the_bound_source_address() {
    let running = ReactorThread::spawn(|r| {
        let backend = serve(r, || SaysYourAddress)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            // `localhost` may resolve to ::1 first: an IPv4 source skips it.
            let named = Backend::host("localhost", backend.port())
                .bind(SocketAddr::from(([127, 0, 0, 2], 0)));
            conn.server("named", named);
        })?;
        Ok(p.local_addr().unwrap())
    });
    assert_eq!(exchange(running.value, b""), b"127.0.0.2");
}
