//! Descriptors beyond TCP: UDP datagrams, attached and watched descriptors, child
//! processes, and file watches — each over real sockets, pipes, processes and files.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::rc::Rc;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ember::{ConnId, Context, Handler, Reactor, UnbindReason};

use support::pattern::Pattern;
use support::reactor_thread::{ReactorThread, run_bounded};

/// `popen` forks this multi-threaded process, and until it has exec'd the child holds a
/// copy of every descriptor, pipes included (`O_CLOEXEC` closes them only at exec). So a
/// test that must see a pipe's other end close holds [`no_forks`], and a test that starts a
/// child holds [`forking`]: they never overlap.
static FORKS: RwLock<()> = RwLock::new(());

fn no_forks() -> RwLockWriteGuard<'static, ()> {
    FORKS.write().unwrap_or_else(PoisonError::into_inner)
}

fn forking() -> RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(PoisonError::into_inner)
}

// ---- datagrams ----

struct UdpEcho;

impl Handler for UdpEcho {
    fn receive_datagram(&mut self, cx: &mut Context<'_>, data: &[u8], _from: SocketAddr) {
        // send_data on a datagram socket replies to the last sender.
        assert!(cx.send_data(data));
    }
}

#[test]
fn datagrams_of_1_b_16_kib_plus_1_and_65507_b_arrive_whole() {
    let sizes = [1usize, 16 * 1024 + 1, 65_507];
    let echo = ReactorThread::spawn(|r| {
        let id = r.open_datagram_socket("127.0.0.1:0", UdpEcho)?;
        Ok(r.local_addr(id).unwrap())
    });
    let server = echo.value;
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    for (i, &size) in sizes.iter().enumerate() {
        let payload = Pattern::new(i as u64).bytes(size);
        client.send_to(&payload, server).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, server);
        assert_eq!(n, size, "datagram of {size} bytes came back as {n}");
        assert_eq!(&buf[..n], &payload[..]);
    }
    echo.stop();
}

#[derive(Default)]
struct Collected {
    datagrams: Vec<(Vec<u8>, SocketAddr)>,
}

struct UdpCollector(Rc<RefCell<Collected>>, usize);

impl Handler for UdpCollector {
    fn receive_datagram(&mut self, cx: &mut Context<'_>, data: &[u8], from: SocketAddr) {
        let mut c = self.0.borrow_mut();
        c.datagrams.push((data.to_vec(), from));
        if c.datagrams.len() == self.1 {
            cx.stop();
        }
    }
}

#[test]
fn send_datagram_reaches_another_reactor_socket_with_its_source_address() {
    let seen = Rc::new(RefCell::new(Collected::default()));
    let collector = UdpCollector(Rc::clone(&seen), 2);
    let mut sender_addr = None;
    run_bounded(Duration::from_secs(10), |r| {
        let rx = r.open_datagram_socket("127.0.0.1:0", collector)?;
        let to = r.local_addr(rx).unwrap();
        let tx = r.open_datagram_socket("127.0.0.1:0", UdpEcho)?;
        sender_addr = r.local_addr(tx);
        assert!(r.send_datagram(tx, b"first", to));
        assert!(r.send_datagram(tx, b"second", to));
        Ok(())
    });
    let seen = seen.borrow();
    let payloads: Vec<&[u8]> = seen.datagrams.iter().map(|(d, _)| d.as_slice()).collect();
    assert_eq!(payloads, [b"first".as_slice(), b"second".as_slice()]);
    assert!(
        seen.datagrams
            .iter()
            .all(|(_, from)| Some(*from) == sender_addr)
    );
}

// ---- attach, detach, watch ----

fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().unwrap();
    (OwnedFd::from(r), OwnedFd::from(w))
}

struct LineReader {
    got: Rc<RefCell<Vec<u8>>>,
    unbound: Rc<RefCell<Option<UnbindReason>>>,
}

impl Handler for LineReader {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        if self.got.borrow().ends_with(b"\n") {
            let id = cx.id();
            cx.detach(id).expect("an attached fd can be detached");
            cx.stop();
        }
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        *self.unbound.borrow_mut() = Some(reason);
    }
}

#[test]
fn attached_pipe_delivers_bytes_and_detach_hands_it_back_open() {
    let _no_forks = no_forks();
    let (read_end, write_end) = pipe();
    let mut writer = std::fs::File::from(write_end);
    writer.write_all(b"through a pipe\n").unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let unbound = Rc::new(RefCell::new(None));
    let raw = read_end.as_raw_fd();
    run_bounded(Duration::from_secs(10), |r| {
        r.attach(
            raw,
            LineReader {
                got: Rc::clone(&got),
                unbound: Rc::clone(&unbound),
            },
        )?;
        Ok(())
    });
    assert_eq!(&*got.borrow(), b"through a pipe\n");
    assert_eq!(*unbound.borrow(), Some(UnbindReason::Detached));
    // Still open after detach and reactor stop: more bytes can be read through it.
    writer.write_all(b"after").unwrap();
    drop(writer);
    let mut rest = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut rest)
        .unwrap();
    assert_eq!(rest, "after");
}

struct Owned(Rc<RefCell<Option<UnbindReason>>>);

impl Handler for Owned {
    fn receive_data(&mut self, cx: &mut Context<'_>, _data: &[u8]) {
        cx.close();
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        *self.0.borrow_mut() = Some(reason);
        cx.stop();
    }
}

#[test]
fn attach_owned_closes_the_descriptor_when_the_connection_ends() {
    let _no_forks = no_forks();
    let (read_end, write_end) = pipe();
    let mut writer = std::fs::File::from(write_end);
    writer.write_all(b"x").unwrap();
    let unbound = Rc::new(RefCell::new(None));
    run_bounded(Duration::from_secs(10), |r| {
        r.attach_owned(read_end, Owned(Rc::clone(&unbound)))?;
        Ok(())
    });
    assert_eq!(*unbound.borrow(), Some(UnbindReason::ClosedByUs));
    // The read end is closed, so writing to the pipe now fails with EPIPE.
    let err = writer.write_all(b"y").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

struct Watcher {
    fd: std::os::fd::RawFd,
    notified: Rc<RefCell<Vec<&'static str>>>,
}

impl Handler for Watcher {
    fn notify_readable(&mut self, cx: &mut Context<'_>) {
        self.notified.borrow_mut().push("readable");
        // The watch never reads: we do. Read one byte only; being level-triggered, the
        // watch must tell us again about the byte left behind.
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte from a pipe this test owns into a live buffer.
        let n = unsafe { libc::read(self.fd, byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 1);
        if self.notified.borrow().len() == 2 {
            let me = cx.id();
            cx.set_notify_readable(me, false);
            // Silence must follow: stop a little later and count no third call.
            cx.add_timer(Duration::from_millis(50), |r| r.stop());
        }
    }
}

#[test]
fn watch_is_level_triggered_and_never_reads_for_you() {
    let _no_forks = no_forks();
    let (read_end, write_end) = pipe();
    let mut writer = std::fs::File::from(write_end);
    writer.write_all(b"abc").unwrap();
    let notified = Rc::new(RefCell::new(Vec::new()));
    let fd = read_end.as_raw_fd();
    run_bounded(Duration::from_secs(10), |r| {
        r.watch(
            fd,
            Watcher {
                fd,
                notified: Rc::clone(&notified),
            },
        )?;
        Ok(())
    });
    // Told twice about bytes it left unread, then nothing once notification was off.
    assert_eq!(*notified.borrow(), ["readable", "readable"]);
    // The watch never read: the third byte is still in the pipe.
    let mut rest = Vec::new();
    drop(writer);
    std::fs::File::from(read_end)
        .read_to_end(&mut rest)
        .unwrap();
    assert_eq!(rest, b"c");
}

// ---- child processes ----

/// What a child wrote to stdout and stderr, and how it ended.
type ChildOutcome = Rc<RefCell<Option<(Vec<u8>, Vec<u8>, UnbindReason)>>>;

struct ChildCollector {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    result: ChildOutcome,
}

impl Handler for ChildCollector {
    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.stdout.extend_from_slice(data);
    }

    fn receive_stderr(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.stderr.extend_from_slice(data);
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        *self.result.borrow_mut() = Some((
            std::mem::take(&mut self.stdout),
            std::mem::take(&mut self.stderr),
            reason,
        ));
        cx.stop();
    }
}

#[test]
fn child_echoes_through_cat_and_its_exit_status_reaches_unbind() {
    let _forking = forking();
    let result = Rc::new(RefCell::new(None));
    let payload = Pattern::new(251).bytes(300_000);
    let sent = payload.clone();
    run_bounded(Duration::from_secs(20), |r| {
        let id = r.popen(
            &mut Command::new("cat"),
            ChildCollector {
                stdout: Vec::new(),
                stderr: Vec::new(),
                result: Rc::clone(&result),
            },
        )?;
        assert!(r.child_pid(id).is_some());
        assert!(r.send_to(id, &sent));
        r.close_write(id); // cat sees EOF, writes the rest and exits 0
        Ok(())
    });
    let (stdout, stderr, reason) = result.borrow_mut().take().expect("unbind ran");
    assert_eq!(stdout.len(), payload.len());
    assert!(stdout == payload, "cat's output differs from its input");
    assert!(stderr.is_empty());
    match reason {
        UnbindReason::ProcessExited(status) => assert_eq!(status.code(), Some(0)),
        other => panic!("expected ProcessExited, got {other:?}"),
    }
}

#[test]
fn child_stderr_and_nonzero_exit_code_are_delivered() {
    let _forking = forking();
    let result = Rc::new(RefCell::new(None));
    run_bounded(Duration::from_secs(20), |r| {
        r.popen(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            ChildCollector {
                stdout: Vec::new(),
                stderr: Vec::new(),
                result: Rc::clone(&result),
            },
        )?;
        Ok(())
    });
    let (stdout, stderr, reason) = result.borrow_mut().take().expect("unbind ran");
    assert_eq!(stdout, b"out\n");
    assert_eq!(stderr, b"err\n");
    assert!(matches!(reason, UnbindReason::ProcessExited(s) if s.code() == Some(3)));
}

struct Stuck(Rc<RefCell<Option<(UnbindReason, Instant)>>>);

impl Handler for Stuck {
    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        *self.0.borrow_mut() = Some((reason, Instant::now()));
    }
}

#[test]
fn closing_a_stuck_child_escalates_to_sigkill_without_stalling_the_loop() {
    use std::os::unix::process::ExitStatusExt;
    let _forking = forking();
    let unbound = Rc::new(RefCell::new(None));
    let beats: Rc<RefCell<Vec<Instant>>> = Rc::default();
    let started = Instant::now();
    run_bounded(Duration::from_secs(20), |r| {
        r.set_child_grace(Duration::from_millis(200));
        // Ignores stdin EOF and SIGTERM: only SIGKILL ends it.
        let id = r.popen(
            Command::new("sh").args(["-c", "trap '' TERM; while :; do sleep 1; done"]),
            Stuck(Rc::clone(&unbound)),
        )?;
        r.close_connection(id);
        let beats = Rc::clone(&beats);
        let unbound = Rc::clone(&unbound);
        r.add_periodic_timer(Duration::from_millis(10), move |r| {
            beats.borrow_mut().push(Instant::now());
            if unbound.borrow().is_some() && beats.borrow().len() >= 10 {
                r.stop();
            }
        });
        Ok(())
    });
    let (reason, at) = unbound
        .borrow_mut()
        .take()
        .expect("the stuck child was unbound");
    match reason {
        UnbindReason::ProcessExited(status) => assert_eq!(status.signal(), Some(libc::SIGKILL)),
        other => panic!("expected a SIGKILLed exit, got {other:?}"),
    }
    let waited = at.duration_since(started);
    assert!(
        waited >= Duration::from_millis(400),
        "killed before its grace: {waited:?}"
    );
    // The timer kept its 10 ms beat throughout: no gap anywhere near the grace periods.
    let beats = beats.borrow();
    let worst = beats
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap();
    assert!(beats.len() >= 30, "only {} beats", beats.len());
    assert!(
        worst < Duration::from_millis(150),
        "the loop stalled for {worst:?}"
    );
}

/// Counts the bytes its child writes to stderr; stops the reactor once `expected` came.
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
    let _forking = forking();
    let path = std::env::temp_dir().join(format!("ember-stderr-{}", std::process::id()));
    std::fs::write(&path, vec![b'x'; 60_000]).unwrap();
    let bytes = Rc::new(RefCell::new(0));
    // The child stays alive after the burst, so only the carry-over can deliver the rest.
    let script = format!("cat {} >&2; exec sleep 30", path.display());
    run_bounded(Duration::from_secs(15), |r| {
        r.popen(
            Command::new("sh").args(["-c", &script]),
            StderrCounter {
                bytes: Rc::clone(&bytes),
                expected: 60_000,
            },
        )?;
        Ok(())
    });
    let _ = std::fs::remove_file(&path);
    assert_eq!(*bytes.borrow(), 60_000);
}

// ---- file watches ----

#[derive(Default)]
struct FileEvents {
    seen: Vec<&'static str>,
    reason: Option<UnbindReason>,
}

struct FileWatcher(Rc<RefCell<FileEvents>>, std::path::PathBuf);

impl Handler for FileWatcher {
    fn file_modified(&mut self, cx: &mut Context<'_>) {
        let mut e = self.0.borrow_mut();
        if e.seen.last() != Some(&"modified") {
            e.seen.push("modified");
            // Next: rename it.
            let from = self.1.clone();
            cx.next_tick(move |_| std::fs::rename(&from, from.with_extension("moved")).unwrap());
        }
    }

    fn file_moved(&mut self, cx: &mut Context<'_>) {
        self.0.borrow_mut().seen.push("moved");
        let moved = self.1.with_extension("moved");
        cx.next_tick(move |_| std::fs::remove_file(moved).unwrap());
    }

    fn file_deleted(&mut self, _cx: &mut Context<'_>) {
        self.0.borrow_mut().seen.push("deleted");
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.0.borrow_mut().reason = Some(reason);
        cx.stop();
    }
}

#[test]
fn file_watch_reports_modified_moved_deleted_then_unbinds() {
    let dir = std::env::temp_dir().join(format!("ember-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("watched.txt");
    std::fs::write(&path, b"v1").unwrap();
    let events = Rc::new(RefCell::new(FileEvents::default()));
    run_bounded(Duration::from_secs(10), |r| {
        r.watch_file(&path, FileWatcher(Rc::clone(&events), path.clone()))?;
        let p = path.clone();
        r.next_tick(move |_| std::fs::write(p, b"v2").unwrap());
        Ok(())
    });
    let events = events.borrow();
    assert_eq!(events.seen, ["modified", "moved", "deleted"]);
    assert_eq!(events.reason, Some(UnbindReason::FileGone));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watching_a_missing_file_is_a_clear_error() {
    let mut r = Reactor::new().unwrap();
    let err = r
        .watch_file(
            "/definitely/not/here",
            FileWatcher(Rc::default(), "x".into()),
        )
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("/definitely/not/here"));
}

#[test]
fn ids_of_closed_descriptors_do_nothing() {
    let mut r = Reactor::new().unwrap();
    let id: ConnId = r.open_datagram_socket("127.0.0.1:0", UdpEcho).unwrap();
    r.close_connection(id);
    r.stop();
    r.run_loop().unwrap();
    assert!(!r.is_alive(id));
    assert!(!r.send_datagram(id, b"x", "127.0.0.1:9"));
    assert!(r.detach(id).is_none());
}

/// EventMachine's `detach` on a TCP connection: the reactor stops reading it and hands
/// the socket back open; whoever takes it talks to the same peer.
#[test]
fn a_tcp_connection_detached_hands_its_socket_back_open() {
    struct DetachOnLine {
        handed: std::sync::mpsc::Sender<(Vec<u8>, std::os::fd::RawFd)>,
        got: Vec<u8>,
        unbound: std::sync::mpsc::Sender<UnbindReason>,
    }
    impl Handler for DetachOnLine {
        fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
            self.got.extend_from_slice(data);
            if self.got.ends_with(b"\n") {
                let id = cx.id();
                let fd = cx.detach(id).expect("a TCP connection can be detached");
                let _ = self.handed.send((std::mem::take(&mut self.got), fd));
            }
        }
        fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
            let _ = self.unbound.send(reason);
        }
    }
    let (handed_tx, handed_rx) = std::sync::mpsc::channel();
    let (unbound_tx, unbound_rx) = std::sync::mpsc::channel();
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || DetachOnLine {
            handed: handed_tx.clone(),
            got: Vec::new(),
            unbound: unbound_tx.clone(),
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let mut client = std::net::TcpStream::connect(server.value).unwrap();
    client.write_all(b"hello\n").unwrap();
    let (line, fd) = handed_rx.recv_timeout(support::IO_TIMEOUT).unwrap();
    assert_eq!(line, b"hello\n");
    assert_eq!(
        unbound_rx.recv_timeout(support::IO_TIMEOUT).unwrap(),
        UnbindReason::Detached
    );
    // SAFETY: `detach` handed this descriptor over; nothing else owns or closes it.
    let mut detached = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    detached.set_nonblocking(false).unwrap();
    detached.write_all(b"from the detached socket\n").unwrap();
    let mut reply = [0u8; 25];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"from the detached socket\n");
    // The reactor reads it no more: what the client sends now reaches the new owner.
    client.write_all(b"second line\n").unwrap();
    let mut again = [0u8; 12];
    detached.read_exact(&mut again).unwrap();
    assert_eq!(&again, b"second line\n");
}
