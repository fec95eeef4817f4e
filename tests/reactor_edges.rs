//! Edge cases of the reactor found in review, each pinned over real sockets and
//! processes: a relay started from inside `receive_data`, raising the water marks of a
//! throttled connection, a burst of child stderr larger than one read budget, and
//! `close_after_writing` while a host name is still resolving.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use ember::{ConnId, Context, Handler, Reactor, UnbindReason};

/// Stops the reactor if a test has not finished by then, so a bug fails instead of hanging.
fn watchdog(r: &mut Reactor) {
    r.add_timer(Duration::from_secs(15), |r| r.stop());
}

struct Target;
impl Handler for Target {}

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
    source_peer.shutdown(std::net::Shutdown::Write).unwrap();
    let seen = Rc::new(RefCell::new(0));
    let mut r = Reactor::new().unwrap();
    watchdog(&mut r);
    let target_id = r.attach(target.as_raw_fd(), Target).unwrap();
    r.attach(
        source.as_raw_fd(),
        StartsRelayOnFirstBytes {
            target: target_id,
            handed_to_receive_data: Rc::clone(&seen),
        },
    )
    .unwrap();
    r.run_loop().unwrap();
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

/// Queues more than its high-water mark for a peer that never reads, so it is not read
/// itself (read backpressure); then, on the next tick, raises its marks.
struct ThrottledThenRaised {
    read: usize,
    expected: usize,
    all_read: Rc<std::cell::Cell<bool>>,
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
    let all_read = Rc::new(std::cell::Cell::new(false));
    let mut r = Reactor::new().unwrap();
    watchdog(&mut r);
    r.attach(
        server.as_raw_fd(),
        ThrottledThenRaised {
            read: 0,
            expected: INPUT,
            all_read: Rc::clone(&all_read),
        },
    )
    .unwrap();
    r.run_loop().unwrap();
    assert!(
        all_read.get(),
        "reading stalled after the marks were raised"
    );
}

#[derive(Default)]
struct StderrCounter {
    bytes: Rc<RefCell<usize>>,
    expected: usize,
}

impl Handler for StderrCounter {
    fn receive_stderr(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        *self.bytes.borrow_mut() += data.len();
        if *self.bytes.borrow() == self.expected {
            cx.stop();
        }
    }
}

#[test]
fn a_stderr_burst_larger_than_one_read_budget_arrives_whole() {
    let path = std::env::temp_dir().join(format!("ember-stderr-{}", std::process::id()));
    std::fs::write(&path, vec![b'x'; 60_000]).unwrap();
    let bytes = Rc::new(RefCell::new(0));
    let mut r = Reactor::new().unwrap();
    watchdog(&mut r);
    // The child stays alive after the burst, so only the carry-over can deliver the rest.
    let script = format!("cat {} >&2; exec sleep 30", path.display());
    r.popen(
        std::process::Command::new("sh").args(["-c", &script]),
        StderrCounter {
            bytes: Rc::clone(&bytes),
            expected: 60_000,
        },
    )
    .unwrap();
    r.run_loop().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(*bytes.borrow(), 60_000);
}

struct SendThenClose(Rc<RefCell<Option<UnbindReason>>>);

impl Handler for SendThenClose {
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    let reason = Rc::new(RefCell::new(None));
    let mut r = Reactor::new().unwrap();
    watchdog(&mut r);
    r.connect_host("localhost", port, SendThenClose(Rc::clone(&reason)));
    r.run_loop().unwrap();
    assert_eq!(server.join().unwrap(), b"hello");
    assert!(
        reason.borrow().as_ref().is_some_and(|r| r.is_orderly()),
        "unbind said {:?}",
        reason.borrow()
    );
}
