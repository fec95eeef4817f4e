//! The descriptor-level relay (`proxy_incoming_to`): bytes cut through from one connection
//! to another without handler calls, over real loopback sockets, with the splice path and
//! with the copying path; and a relay started from inside `receive_data`.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ember::{ConnId, Context, Handler, PeerClosed, UnbindReason};

use support::pattern::Pattern;
use support::reactor_thread::{ReactorThread, run_bounded};
use support::sys::vm_rss;

/// Front connection: on accept, connects to `backend` and relays its input there.
struct Front {
    backend: SocketAddr,
    bufsize: usize,
    length: Option<u64>,
    after: Vec<u8>,
    report: mpsc::Sender<Event>,
}

#[derive(Debug)]
enum Event {
    ProxyCompleted(u64),
    AfterRelay(Vec<u8>),
    FrontUnbound(UnbindReason, u64),
}

/// The backend side of the relay: a plain connection; its peer is the sink.
struct Back;

impl Handler for Back {
    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
}

impl Handler for Front {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let back: ConnId = cx.connect(self.backend, Back).expect("socket");
        let me = cx.id();
        let started = match self.length {
            None => cx.reactor().proxy_incoming_to(me, back, self.bufsize),
            Some(n) => cx
                .reactor()
                .proxy_incoming_to_length(me, back, self.bufsize, n),
        };
        assert!(started);
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.after.extend_from_slice(data);
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        let _ = self
            .report
            .send(Event::AfterRelay(std::mem::take(&mut self.after)));
        PeerClosed::Close
    }

    fn proxy_completed(&mut self, cx: &mut Context<'_>) {
        let _ = self.report.send(Event::ProxyCompleted(cx.proxied_bytes()));
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self
            .report
            .send(Event::FrontUnbound(reason, cx.proxied_bytes()));
    }
}

/// A sink on a std thread: checks every byte against the pattern until EOF; returns the
/// count, or the offset of the first wrong byte.
fn spawn_sink(listener: TcpListener, seed: u64) -> thread::JoinHandle<Result<u64, u64>> {
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut expected = Pattern::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut want = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                return Ok(total);
            }
            expected.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                let first = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b);
                return Err(total + first.unwrap_or(0) as u64);
            }
            total += n as u64;
        }
    })
}

/// A reactor thread serving `Front`s on a loopback port (its `value`), and their events.
fn run_relay_reactor(
    backend: SocketAddr,
    splice: bool,
    bufsize: usize,
    length: Option<u64>,
) -> (ReactorThread<SocketAddr>, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let relay = ReactorThread::spawn(move |r| {
        r.set_splice(splice);
        let server = r.start_server("127.0.0.1:0", move || Front {
            backend,
            bufsize,
            length,
            after: Vec::new(),
            report: tx.clone(),
        })?;
        Ok(r.server_addr(server).unwrap())
    });
    (relay, rx)
}

fn relay_one_gib(splice: bool) {
    const TOTAL: u64 = 1 << 30;
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = sink.local_addr().unwrap();
    let checker = spawn_sink(sink, 0x9E37_79B9_7F4A_7C15);
    let (relay, events) = run_relay_reactor(backend, splice, 1 << 20, None);
    let front = relay.value;

    let mut client = TcpStream::connect(front).unwrap();
    let mut pattern = Pattern::new(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < TOTAL {
        pattern.fill(&mut buf);
        client.write_all(&buf).unwrap();
        sent += buf.len() as u64;
    }
    client.shutdown(Shutdown::Write).unwrap();
    let received = checker.join().unwrap();
    assert_eq!(
        received,
        Ok(TOTAL),
        "sink saw a wrong byte or a short stream"
    );
    // The sink closed after EOF: the backend's close ends the relay, and the client's FIN
    // (already passed on) closes the front.
    let mut tail = Vec::new();
    client.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty());
    loop {
        match events.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::FrontUnbound(reason, proxied) => {
                assert_eq!(proxied, TOTAL, "proxied_bytes inside unbind");
                assert!(reason.is_orderly(), "front unbound with {reason}");
                break;
            }
            Event::AfterRelay(rest) => assert!(rest.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
    }
    relay.stop();
}

#[test]
fn one_gib_through_a_splice_relay_arrives_byte_for_byte() {
    relay_one_gib(true);
}

#[test]
fn one_gib_through_a_copying_relay_arrives_byte_for_byte() {
    relay_one_gib(false);
}

fn length_relay_hands_the_rest_to_receive_data(splice: bool) {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = sink.local_addr().unwrap();
    let checker = thread::spawn(move || {
        let (mut conn, _) = sink.accept().unwrap();
        let mut got = vec![0u8; 100_000];
        conn.read_exact(&mut got).unwrap();
        // Nothing past the limit may arrive: the relay ended exactly at 100 000 bytes.
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut extra = [0u8; 1];
        let more = conn.read(&mut extra);
        (got, more.map_err(|e| e.kind()))
    });
    let (relay, events) = run_relay_reactor(backend, splice, 64 * 1024, Some(100_000));
    let front = relay.value;
    let payload = Pattern::new(7).bytes(150_000);
    let mut client = TcpStream::connect(front).unwrap();
    client.write_all(&payload).unwrap();
    client.shutdown(Shutdown::Write).unwrap();

    let (relayed, more) = checker.join().unwrap();
    assert_eq!(relayed, payload[..100_000]);
    assert!(
        matches!(
            more,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "bytes past the length limit reached the target: {more:?}"
    );
    let mut completed = None;
    let mut rest = None;
    while completed.is_none() || rest.is_none() {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::ProxyCompleted(n) => completed = Some(n),
            Event::AfterRelay(bytes) => rest = Some(bytes),
            Event::FrontUnbound(..) => {}
        }
    }
    assert_eq!(completed, Some(100_000));
    assert_eq!(rest.unwrap(), payload[100_000..]);
    relay.stop();
}

#[test]
fn length_relay_hands_exactly_the_remaining_bytes_to_receive_data_splice() {
    length_relay_hands_the_rest_to_receive_data(true);
}

#[test]
fn length_relay_hands_exactly_the_remaining_bytes_to_receive_data_copy() {
    length_relay_hands_the_rest_to_receive_data(false);
}

fn relay_to_a_stalled_target_keeps_memory_bounded(splice: bool) {
    const PUSHED: usize = 256 << 20;
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = sink.local_addr().unwrap();
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let stalled = thread::spawn(move || {
        let (mut conn, _) = sink.accept().unwrap();
        accepted_tx.send(()).unwrap();
        // Read nothing until told to, then drain and count.
        release_rx.recv().unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let (relay, _events) = run_relay_reactor(backend, splice, 256 * 1024, None);
    let front = relay.value;
    let before = vm_rss() / 1024;
    let client = TcpStream::connect(front).unwrap();
    accepted_rx.recv().unwrap();
    // The client writes until the kernel buffers and the relay's bound are all full; a
    // write timeout tells us the relay stopped reading.
    let mut writer = client.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut pushed = 0usize;
    while pushed < PUSHED {
        match writer.write(&chunk) {
            Ok(n) => pushed += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("client write failed: {e}"),
        }
    }
    assert!(
        pushed < PUSHED,
        "the relay never pushed back ({pushed} bytes accepted)"
    );
    let grown = (vm_rss() / 1024).saturating_sub(before);
    assert!(
        grown < 24 * 1024,
        "process grew by {grown} KiB while the target was stalled (accepted {pushed} bytes)"
    );
    writer.shutdown(Shutdown::Write).unwrap();
    release_tx.send(()).unwrap();
    assert_eq!(
        stalled.join().unwrap(),
        pushed,
        "bytes lost after the stall"
    );
    relay.stop();
}

#[test]
fn relay_to_a_target_that_stops_reading_keeps_memory_bounded_splice() {
    relay_to_a_stalled_target_keeps_memory_bounded(true);
}

#[test]
fn relay_to_a_target_that_stops_reading_keeps_memory_bounded_copy() {
    relay_to_a_stalled_target_keeps_memory_bounded(false);
}

/// A plain connection for the relay to write to.
struct Target;
impl Handler for Target {}

/// Starts relaying its input to `target` from its first `receive_data`; stops the reactor
/// when it unbinds.
struct StartsRelayOnFirstBytes {
    target: ConnId,
    handed_to_receive_data: Rc<RefCell<usize>>,
}

impl Handler for StartsRelayOnFirstBytes {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let mut seen = self.handed_to_receive_data.borrow_mut();
        if *seen == 0 {
            assert!(cx.proxy_incoming_to(self.target, 1 << 20));
        }
        *seen += data.len();
    }

    fn unbind(&mut self, cx: &mut Context<'_>, _reason: UnbindReason) {
        cx.stop();
    }
}

#[test]
fn a_relay_started_inside_receive_data_takes_every_later_read() {
    let (mut source_peer, source) = UnixStream::pair().unwrap();
    let (target, mut target_peer) = UnixStream::pair().unwrap();
    source_peer.write_all(&[7u8; 100_000]).unwrap();
    source_peer.shutdown(Shutdown::Write).unwrap();
    let seen = Rc::new(RefCell::new(0));
    run_bounded(Duration::from_secs(15), |r| {
        let target_id = r.attach(target.as_raw_fd(), Target)?;
        r.attach(
            source.as_raw_fd(),
            StartsRelayOnFirstBytes {
                target: target_id,
                handed_to_receive_data: Rc::clone(&seen),
            },
        )?;
        Ok(())
    });
    target_peer.set_nonblocking(true).unwrap();
    let mut relayed = Vec::new();
    let _ = target_peer.read_to_end(&mut relayed);
    let seen = *seen.borrow();
    assert!(
        seen <= ember::READ_CHUNK,
        "receive_data got {seen} bytes after the relay began"
    );
    assert_eq!(
        seen + relayed.len(),
        100_000,
        "bytes lost between handler and relay"
    );
}
