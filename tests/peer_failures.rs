//! What the reactor does when a peer or a callback fails: bytes a peer sent before its
//! reset are delivered before `unbind(Reset)`, half-closed connections that go silent are
//! closed after the half-close timeout, input nobody wants is dropped unread, and a
//! panicking callback closes only its own connection while the loop serves on.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ember::{CallbackPanic, ConnId, Context, Handler, PeerClosed, TimerAction, UnbindReason};

use support::IO_TIMEOUT;
use support::clients::{connect, read_all, recv};
use support::reactor_thread::{ReactorThread, run_bounded};
use support::sys::reset_on_close;

/// What a client connection saw: every byte, then how it ended.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    reason: Option<UnbindReason>,
}

type SeenLog = Rc<RefCell<Vec<Seen>>>;

/// Records bytes and the unbind reason into slot `index` of a shared log; optionally
/// sends `request` on connect and keeps sending it while the peer is alive.
struct Recorder {
    log: SeenLog,
    index: usize,
    request: Option<Vec<u8>>,
}

impl Handler for Recorder {
    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        if let Some(request) = &self.request {
            cx.send_data(request);
        }
    }

    fn receive_data(&mut self, _: &mut Context<'_>, data: &[u8]) {
        self.log.borrow_mut()[self.index]
            .bytes
            .extend_from_slice(data);
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.log.borrow_mut()[self.index].reason = Some(reason);
        if self.log.borrow().iter().all(|s| s.reason.is_some()) {
            cx.stop();
        }
    }
}

/// A std server thread: for each of `n` connections, reads `read_first` bytes, writes
/// `answer`, and closes with RST (SO_LINGER 0).
fn resetting_server(n: usize, read_first: usize, answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut buf = vec![0; read_first];
            if s.read_exact(&mut buf).is_err() {
                continue;
            }
            s.write_all(answer).unwrap();
            reset_on_close(&s);
            drop(s);
        }
    });
    addr
}

fn run_clients(n: usize, addr: std::net::SocketAddr, request: Option<&[u8]>) -> Vec<Seen> {
    let log: SeenLog = Rc::new(RefCell::new((0..n).map(|_| Seen::default()).collect()));
    let setup_log = Rc::clone(&log);
    let (_, stopped_by_watchdog) = run_bounded(Duration::from_secs(20), move |r| {
        for index in 0..n {
            let handler = Recorder {
                log: Rc::clone(&setup_log),
                index,
                request: request.map(<[u8]>::to_vec),
            };
            r.connect(addr, handler)?;
        }
        Ok(())
    });
    assert!(!stopped_by_watchdog, "the clients did not all end in time");
    Rc::try_unwrap(log).ok().unwrap().into_inner()
}

#[test]
fn bytes_a_peer_sent_before_its_reset_arrive_before_unbind() {
    const ANSWER: &[u8] = b"the last words before a reset";
    const TRIES: usize = 50;
    let addr = resetting_server(TRIES, 5, ANSWER);
    for (i, seen) in run_clients(TRIES, addr, Some(b"hello")).iter().enumerate() {
        assert_eq!(seen.bytes, ANSWER, "try {i}: bytes before the reset");
        assert_eq!(seen.reason, Some(UnbindReason::Reset), "try {i}");
    }
}

#[test]
fn bytes_before_a_reset_arrive_even_while_we_are_still_writing() {
    // The client floods; the peer reads a little, answers, and resets. Our next write
    // fails with EPIPE/ECONNRESET, yet the answer sitting in our receive queue still
    // reaches receive_data.
    const ANSWER: &[u8] = b"stop sending, goodbye";
    const TRIES: usize = 20;
    let addr = resetting_server(TRIES, 1024, ANSWER);
    let flood = vec![7u8; 4 * 1024 * 1024];
    for (i, seen) in run_clients(TRIES, addr, Some(&flood)).iter().enumerate() {
        assert_eq!(seen.bytes, ANSWER, "try {i}: bytes before the reset");
        assert_eq!(seen.reason, Some(UnbindReason::Reset), "try {i}");
    }
}

/// A std thread that accepts one connection and sends everything it reads, at EOF.
fn sink() -> (std::net::SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tx.send(read_all(&mut s)).unwrap();
    });
    (addr, rx)
}

/// A connection that needs no callbacks.
struct Quiet;
impl Handler for Quiet {}

/// Relays what it reads to `target` (set once both ends exist) with the descriptor relay.
struct RelaySource {
    log: SeenLog,
}

impl Handler for RelaySource {
    fn unbind(&mut self, _: &mut Context<'_>, reason: UnbindReason) {
        self.log.borrow_mut()[0].reason = Some(reason);
    }
}

#[test]
fn the_relay_delivers_bytes_sent_before_a_reset_on_both_paths() {
    const ANSWER: &[u8] = b"relayed, then reset";
    for splice in [false, true] {
        let source_addr = resetting_server(1, 1, ANSWER);
        let (sink_addr, rx) = sink();
        let log: SeenLog = Rc::new(RefCell::new(vec![Seen::default()]));
        let setup_log = Rc::clone(&log);
        let (_, stopped_by_watchdog) = run_bounded(Duration::from_secs(10), move |r| {
            r.set_splice(splice);
            let source = r.connect(source_addr, RelaySource { log: setup_log })?;
            let target = r.connect(sink_addr, Quiet)?;
            r.send_to(source, b"x");
            assert!(r.proxy_incoming_to(source, target, 64 * 1024));
            r.add_periodic_timer(Duration::from_millis(5), move |r| {
                if !r.is_alive(source) && r.outbound_size(target) == 0 {
                    r.stop();
                }
            });
            Ok(())
        });
        assert!(
            !stopped_by_watchdog,
            "splice {splice}: the source never ended"
        );
        let got = recv(&rx, IO_TIMEOUT, "the sink's bytes");
        assert_eq!(got, ANSWER, "splice {splice}");
        assert_eq!(log.borrow()[0].reason, Some(UnbindReason::Reset));
    }
}

/// The server side of a half-close test: keeps its write side open after the client's
/// FIN, writes `drip` every `every` (if any), and reports how long it lived and why it
/// ended.
struct HalfClosed {
    timeout: Duration,
    drip: Option<(Duration, usize)>,
    started: Instant,
    done: mpsc::Sender<(UnbindReason, Duration)>,
}

impl Handler for HalfClosed {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.set_half_close_timeout(Some(self.timeout));
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        if let Some((every, times)) = self.drip {
            let id = cx.id();
            let mut left = times;
            cx.add_periodic_timer(every, move |r| {
                if left == 0 {
                    r.close_connection_after_writing(id);
                } else {
                    left -= 1;
                    r.send_to(id, b"drip");
                }
            });
        }
        PeerClosed::KeepWriting
    }

    fn unbind(&mut self, _: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.done.send((reason, self.started.elapsed()));
    }
}

fn half_closed_server(
    timeout: Duration,
    drip: Option<(Duration, usize)>,
) -> (
    ReactorThread<std::net::SocketAddr>,
    std::net::SocketAddr,
    mpsc::Receiver<(UnbindReason, Duration)>,
) {
    let (tx, rx) = mpsc::channel();
    let rt = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || HalfClosed {
            timeout,
            drip,
            started: Instant::now(),
            done: tx.clone(),
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let addr = rt.value;
    (rt, addr, rx)
}

#[test]
fn a_peer_that_half_closes_and_goes_silent_is_closed_after_the_half_close_timeout() {
    let timeout = Duration::from_millis(150);
    let (rt, addr, ended) = half_closed_server(timeout, None);
    let mut client = connect(addr);
    client.shutdown(Shutdown::Write).unwrap();
    // The server closes its side: our read sees EOF instead of hanging.
    assert_eq!(read_all(&mut client), b"");
    let (reason, lived) = recv(&ended, IO_TIMEOUT, "the server's unbind");
    assert_eq!(reason, UnbindReason::HalfCloseTimeout);
    assert!(
        lived >= timeout,
        "closed after {lived:?}, before the timeout"
    );
    rt.stop();
}

#[test]
fn traffic_after_a_half_close_keeps_the_connection_alive() {
    // 8 drips 50 ms apart: 400 ms in all, far past the 150 ms timeout, but never idle
    // for that long.
    let (rt, addr, ended) = half_closed_server(
        Duration::from_millis(150),
        Some((Duration::from_millis(50), 8)),
    );
    let mut client = connect(addr);
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut client), b"drip".repeat(8));
    let (reason, _) = recv(&ended, IO_TIMEOUT, "the server's unbind");
    assert_eq!(reason, UnbindReason::PeerClosed);
    rt.stop();
}

/// Counts what reaches `receive_data` on a connection that discards its input.
struct Discarder {
    delivered: Rc<RefCell<usize>>,
    reason: Rc<RefCell<Option<UnbindReason>>>,
}

impl Handler for Discarder {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.set_discard_input(true);
    }

    fn receive_data(&mut self, _: &mut Context<'_>, data: &[u8]) {
        *self.delivered.borrow_mut() += data.len();
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        *self.reason.borrow_mut() = Some(reason);
        cx.stop();
    }
}

#[test]
fn discarded_input_is_drained_without_reaching_the_handler() {
    const TOTAL: usize = 32 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            s.write_all(&chunk).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        // Our FIN was answered by the reactor's close: a reset here would mean it
        // closed with unread input.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
    });
    let delivered = Rc::new(RefCell::new(0));
    let reason = Rc::new(RefCell::new(None));
    let handler = Discarder {
        delivered: Rc::clone(&delivered),
        reason: Rc::clone(&reason),
    };
    let (_, stopped_by_watchdog) = run_bounded(Duration::from_secs(20), move |r| {
        r.connect(addr, handler).map(drop)
    });
    assert!(!stopped_by_watchdog);
    assert_eq!(
        *delivered.borrow(),
        0,
        "discarded bytes reached receive_data"
    );
    assert_eq!(*reason.borrow(), Some(UnbindReason::PeerClosed));
    let writer_end = writer.join().unwrap();
    assert!(writer_end.is_ok(), "the writer was reset: {writer_end:?}");
}

/// Echoes, but panics on "boom".
struct Fragile {
    unbound: Rc<RefCell<Vec<(ConnId, UnbindReason)>>>,
}

impl Handler for Fragile {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        assert!(!data.starts_with(b"boom"), "boom in receive_data");
        cx.send_data(data);
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.unbound.borrow_mut().push((cx.id(), reason));
    }
}

#[test]
fn a_panicking_callback_closes_only_its_own_connection() {
    let (tx, rx) = mpsc::channel();
    let rt = ReactorThread::spawn(move |r| {
        let unbound = Rc::new(RefCell::new(Vec::new()));
        let reported = Rc::new(RefCell::new(Vec::<CallbackPanic>::new()));
        let seen = Rc::clone(&reported);
        let tx_unbound = Rc::clone(&unbound);
        r.set_error_handler(move |_, panic| {
            seen.borrow_mut().push(panic.clone());
        });
        // Report both logs to the test whenever asked (a "report" next-tick).
        let id = r.start_server("127.0.0.1:0", move || Fragile {
            unbound: Rc::clone(&unbound),
        })?;
        let addr = r.server_addr(id).unwrap();
        r.add_periodic_timer(Duration::from_millis(5), move |_| {
            let unbound = tx_unbound.borrow().clone();
            let reported = reported.borrow().clone();
            let _ = tx.send((unbound, reported));
        });
        Ok(addr)
    });
    let addr = rt.value;
    let mut before = connect(addr);
    let mut victim = connect(addr);
    before.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    before.read_exact(&mut buf).unwrap();
    victim.write_all(b"boom").unwrap();
    // The victim's connection is closed: EOF, no answer.
    assert_eq!(read_all(&mut victim), b"");
    // Everyone else is still served, old and new connections alike.
    let mut after = connect(addr);
    for client in [&mut before, &mut after] {
        client.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    let (unbound, reported) = loop {
        let (unbound, reported) = recv(&rx, IO_TIMEOUT, "the reactor's logs");
        if !unbound.is_empty() || Instant::now() > deadline {
            break (unbound, reported);
        }
    };
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(reported[0].message.contains("boom in receive_data"));
    assert_eq!(unbound.len(), 1, "only the victim is unbound: {unbound:?}");
    let (victim_id, reason) = &unbound[0];
    assert_eq!(reported[0].connection, Some(*victim_id));
    assert!(
        matches!(reason, UnbindReason::Panicked(m) if m.contains("boom")),
        "{reason:?}"
    );
    rt.stop();
}

#[test]
fn panics_in_timers_next_ticks_and_unbind_are_reported_and_the_loop_runs_on() {
    let reported = Rc::new(RefCell::new(Vec::<CallbackPanic>::new()));
    let seen = Rc::clone(&reported);
    let periodic_runs = Rc::new(RefCell::new(0));
    let runs = Rc::clone(&periodic_runs);
    let (_, stopped_by_watchdog) = run_bounded(Duration::from_secs(10), move |r| {
        r.set_error_handler(move |_, panic| seen.borrow_mut().push(panic.clone()));
        r.add_timer(Duration::from_millis(1), |_| panic!("in a timer"));
        r.next_tick(|_| panic!("in a next tick"));
        r.add_periodic_timer(Duration::from_millis(1), move |_| -> TimerAction {
            *runs.borrow_mut() += 1;
            panic!("in a periodic timer");
        });
        r.handle().schedule(|_| panic!("in a remote task"));
        r.defer(|| (), |_, _| panic!("in a deferred completion"));
        // A connection whose unbind panics: refused at once, so unbind runs soon.
        struct PanicsInUnbind;
        impl Handler for PanicsInUnbind {
            fn unbind(&mut self, _: &mut Context<'_>, _: UnbindReason) {
                panic!("in unbind");
            }
        }
        let refused = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        r.connect(refused, PanicsInUnbind)?;
        r.add_timer(Duration::from_millis(100), |r| r.stop());
        Ok(())
    });
    assert!(!stopped_by_watchdog, "the loop stopped serving");
    let messages: Vec<String> = reported
        .borrow()
        .iter()
        .map(|p| p.message.to_string())
        .collect();
    for expected in [
        "in a timer",
        "in a next tick",
        "in a periodic timer",
        "in a remote task",
        "in a deferred completion",
        "in unbind",
    ] {
        assert_eq!(
            messages.iter().filter(|m| *m == expected).count(),
            1,
            "{expected}: {messages:?}"
        );
    }
    assert_eq!(
        *periodic_runs.borrow(),
        1,
        "a panicking periodic timer is not re-armed"
    );
}

/// Sends `before`, one urgent byte, `after`, then FIN, to whoever connects first.
fn urgent_sender(before: Vec<u8>, after: Vec<u8>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&before).unwrap();
        // SAFETY: send on a live socket from a live one-byte buffer.
        let sent = unsafe { libc::send(s.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(sent, 1);
        s.write_all(&after).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
    addr
}

#[test]
fn tcp_urgent_data_never_enters_the_relayed_stream_and_nothing_after_it_is_lost() {
    let before = vec![b'a'; 300_000];
    let after = vec![b'b'; 100_000];
    for splice in [false, true] {
        let source_addr = urgent_sender(before.clone(), after.clone());
        let (sink_addr, rx) = sink();
        let (_, stopped_by_watchdog) = run_bounded(Duration::from_secs(10), move |r| {
            r.set_splice(splice);
            let source = r.connect(source_addr, Quiet)?;
            let target = r.connect(sink_addr, Quiet)?;
            assert!(r.proxy_incoming_to(source, target, 64 * 1024));
            r.add_periodic_timer(Duration::from_millis(5), move |r| {
                if !r.is_alive(target) {
                    r.stop();
                }
            });
            Ok(())
        });
        assert!(
            !stopped_by_watchdog,
            "splice {splice}: the relay never ended"
        );
        let got = recv(&rx, IO_TIMEOUT, "the sink's bytes");
        let expected = [before.as_slice(), after.as_slice()].concat();
        assert_eq!(got.len(), expected.len(), "splice {splice}");
        assert!(got == expected, "splice {splice}: the stream differs");
    }
}
