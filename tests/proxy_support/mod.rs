//! Helpers for the proxy tests: a reactor on its own thread that a watchdog stops, small
//! ember backends (echo, recorder, one-shot HTTP-ish answer, a backend that never reads),
//! a deterministic byte stream, blocking std clients with timeouts, and the libc edges
//! (descriptor limit, reset-on-close).

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ember::{Context, Handler, PeerClosed, Reactor, ReactorHandle};

pub mod toxics;

/// How long a blocking client waits on one read or write before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any reactor thread may run before its watchdog stops it.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// A reactor running on its own thread; stopped and joined when dropped.
pub struct Running<T> {
    pub value: T,
    handle: ReactorHandle,
    thread: Option<JoinHandle<()>>,
}

impl<T> Running<T> {
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// Stops the reactor and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `setup` on a fresh reactor on a new thread and returns what it returned.
pub fn spawn_reactor<T: Send + 'static>(
    setup: impl FnOnce(&mut Reactor) -> io::Result<T> + Send + 'static,
) -> Running<T> {
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let result = Reactor::run(|r| {
            r.add_timer(WATCHDOG, |r| {
                eprintln!("watchdog: reactor stopped after {WATCHDOG:?}");
                r.stop();
            });
            let value = setup(r)?;
            let _ = tx.send(Ok((value, r.handle())));
            Ok(())
        });
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    let (value, handle) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("reactor thread started")
        .expect("reactor setup succeeded");
    Running {
        value,
        handle,
        thread: Some(thread),
    }
}

/// Runs `f` on the reactor thread and returns its result.
pub fn on_reactor<R: Send + 'static>(
    handle: &ReactorHandle,
    f: impl FnOnce(&mut Reactor) -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    handle.schedule(move |r| {
        let _ = tx.send(f(r));
    });
    rx.recv_timeout(IO_TIMEOUT).expect("reactor ran the task")
}

/// Starts a TCP server on a free loopback port and returns its address.
pub fn serve<H: Handler>(
    r: &mut Reactor,
    factory: impl FnMut() -> H + 'static,
) -> io::Result<SocketAddr> {
    let id = r.start_server("127.0.0.1:0", factory)?;
    Ok(r.server_addr(id).expect("TCP servers have an address"))
}

/// A loopback address nothing listens on.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Echoes everything; on FIN, finishes writing and closes.
pub struct Echo;

impl Handler for Echo {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}

/// Bytes a recorder backend saw, shared with the test thread.
pub type Record = Arc<Mutex<Vec<u8>>>;

pub fn record_of(record: &Record) -> Vec<u8> {
    record.lock().unwrap().clone()
}

/// Records every byte; answers each chunk with `PREFIX:<bytes so far>\n`; on FIN, sends
/// `PREFIX:end` and closes.
pub struct Recorder {
    pub prefix: &'static str,
    pub record: Record,
}

impl Handler for Recorder {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let total = {
            let mut record = self.record.lock().unwrap();
            record.extend_from_slice(data);
            record.len()
        };
        cx.send_data(format!("{}:{total}\n", self.prefix).as_bytes());
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        cx.send_data(format!("{}:end\n", self.prefix).as_bytes());
        PeerClosed::Close
    }
}

/// Accepts and never reads a byte.
pub struct NeverReads;

impl Handler for NeverReads {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.pause();
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
}

/// Waits for the client's FIN, then sends `size` pattern bytes (seed 7) and closes.
pub struct AnswerAfterFin {
    pub size: usize,
    pub received: Arc<AtomicUsize>,
}

impl Handler for AnswerAfterFin {
    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.received.fetch_add(data.len(), Ordering::SeqCst);
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        let mut pattern = Pattern::new(7);
        let mut left = self.size;
        let mut chunk = vec![0; 64 * 1024];
        while left > 0 {
            let n = left.min(chunk.len());
            pattern.fill(&mut chunk[..n]);
            cx.send_data(&chunk[..n]);
            left -= n;
        }
        PeerClosed::Close
    }
}

/// A deterministic, continuous byte stream (xorshift64): `fill` with any split of a
/// buffer yields the same bytes, so a producer and a verifier can chunk differently.
pub struct Pattern {
    state: u64,
    spare: [u8; 8],
    spare_at: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            spare: [0; 8],
            spare_at: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x.to_le_bytes()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while self.spare_at < 8 && i < buf.len() {
            buf[i] = self.spare[self.spare_at];
            self.spare_at += 1;
            i += 1;
        }
        let mut words = buf[i..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.spare = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&self.spare[..n]);
            self.spare_at = n;
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// Whether `data` is exactly the next `data.len()` bytes of the stream.
    pub fn matches(&mut self, data: &[u8]) -> bool {
        let mut expected = [0u8; 8192];
        let mut ok = true;
        for chunk in data.chunks(expected.len()) {
            let expected = &mut expected[..chunk.len()];
            self.fill(expected);
            ok &= expected == chunk;
        }
        ok
    }
}

/// A blocking client with read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the proxy");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Sends `request`, half-closes, and reads until the other side closes.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    read_all(&mut stream)
}

/// Reads until EOF; panics on an error (a reset included) or a timeout.
pub fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream
        .read_to_end(&mut out)
        .expect("read until the proxy closes");
    out
}

/// Reads until `needle` has arrived (or EOF); returns everything read.
pub fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&out, needle).is_none() {
        let n = stream.read(&mut buf).expect("read from the proxy");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Makes `close` send RST instead of FIN (`SO_LINGER` with a zero timeout).
pub fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a pointer to a properly sized linger value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// Raises the soft descriptor limit to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// The peak of every live connection's outbound queue in a reactor, sampled every
/// millisecond by a periodic timer: what the proxy buffers in user space.
pub fn watch_peak_queue(r: &mut Reactor) -> Arc<AtomicUsize> {
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&peak);
    r.add_periodic_timer(Duration::from_millis(1), move |r| {
        for id in r.connection_ids() {
            seen.fetch_max(r.outbound_size(id), Ordering::Relaxed);
        }
    });
    peak
}

/// Writes `size` pattern bytes and FIN on one thread, reads and checks the echo on this
/// one; returns how many bytes came back.
pub fn pump(addr: SocketAddr, size: usize, seed: u64) -> usize {
    let mut client = connect(addr);
    let mut writer_side = client.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut pattern = Pattern::new(seed);
        let mut chunk = vec![0; 256 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            pattern.fill(&mut chunk[..n]);
            writer_side.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        writer_side.shutdown(Shutdown::Write).unwrap();
    });
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        let n = client.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(pattern.matches(&buf[..n]), "bytes differ at offset {total}");
        total += n;
    }
    writer.join().unwrap();
    total
}
