//! Shared helpers for the integration tests: a deterministic byte generator, reactors that
//! cannot hang a test (a watchdog stops them), a reactor on its own thread, blocking std
//! clients with timeouts, and a few libc helpers (fd limit, RSS, linger, TIOCOUTQ).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ember::{Reactor, ReactorHandle};

/// How long a blocking std client waits on one read or write before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// xorshift64: a deterministic, continuous byte stream. `fill` called with any split of a
/// buffer yields the same bytes as one call, so a producer and a verifier can chunk
/// differently.
pub struct Rng {
    state: u64,
    spare: u64,
    spare_len: usize,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; xorshift's state must not be zero.
        let state = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Rng {
            state,
            spare: 0,
            spare_len: 0,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while self.spare_len > 0 && i < buf.len() {
            buf[i] = self.spare as u8;
            self.spare >>= 8;
            self.spare_len -= 1;
            i += 1;
        }
        let mut words = buf[i..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let v = self.next_u64();
            tail.copy_from_slice(&v.to_le_bytes()[..tail.len()]);
            self.spare = v >> (8 * tail.len());
            self.spare_len = 8 - tail.len();
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// Whether `data` is exactly the next `data.len()` bytes of the stream.
    pub fn matches(&mut self, data: &[u8]) -> bool {
        let mut expected = [0u8; 4096];
        let mut ok = true;
        for chunk in data.chunks(expected.len()) {
            self.fill(&mut expected[..chunk.len()]);
            ok &= chunk == &expected[..chunk.len()];
        }
        ok
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

/// The process's resident set size, from `/proc/self/status`.
pub fn vm_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// Stops a reactor through its handle if it is still running after `limit`.
pub struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn arm(handle: ReactorHandle, limit: Duration) -> Watchdog {
        let (cancel, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        let thread = thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                handle.stop();
            }
        });
        Watchdog {
            cancel: Some(cancel),
            fired,
            thread: Some(thread),
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a reactor on this thread: `setup`, then the loop, stopped by a watchdog after
/// `limit` at the latest. Returns the reactor (for post-mortem queries) and whether the
/// watchdog had to stop it.
pub fn run_bounded(
    limit: Duration,
    setup: impl FnOnce(&mut Reactor) -> io::Result<()>,
) -> (Reactor, bool) {
    let mut reactor = Reactor::new().expect("create reactor");
    let watchdog = Watchdog::arm(reactor.handle(), limit);
    setup(&mut reactor).expect("reactor setup");
    reactor.run_loop().expect("reactor loop");
    let fired = watchdog.fired();
    drop(watchdog);
    (reactor, fired)
}

/// A reactor running on its own thread until stopped.
pub struct ReactorThread {
    handle: ReactorHandle,
    done: Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ReactorThread {
    /// Starts a thread that creates a reactor, runs `setup` (whose value is returned here
    /// once setup has finished) and then the loop.
    pub fn spawn<T: Send + 'static>(
        setup: impl FnOnce(&mut Reactor) -> io::Result<T> + Send + 'static,
    ) -> (ReactorThread, T) {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut reactor = match Reactor::new() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            match setup(&mut reactor) {
                Ok(value) => {
                    let _ = ready_tx.send(Ok((reactor.handle(), value)));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = done_tx.send(reactor.run_loop());
        });
        let (handle, value) = recv(&ready_rx, IO_TIMEOUT, "the reactor thread's setup")
            .expect("reactor thread setup");
        let rt = ReactorThread {
            handle,
            done,
            thread: Some(thread),
        };
        (rt, value)
    }

    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// Stops the loop and waits (bounded) for the thread; panics if the loop failed, the
    /// thread panicked or it did not stop in time.
    pub fn stop(mut self) {
        self.handle.stop();
        match self.done.recv_timeout(IO_TIMEOUT) {
            Ok(result) => result.expect("reactor loop returned an error"),
            Err(RecvTimeoutError::Timeout) => {
                self.thread.take(); // leak it: it is stuck
                panic!("the reactor thread did not stop within {IO_TIMEOUT:?}");
            }
            Err(RecvTimeoutError::Disconnected) => {}
        }
        if let Some(t) = self.thread.take()
            && let Err(panic) = t.join()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for ReactorThread {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.handle.stop();
        if self.done.recv_timeout(IO_TIMEOUT).is_ok() || t.is_finished() {
            let _ = t.join();
        }
    }
}

/// Receives from `rx` or panics naming `what` after `limit`.
pub fn recv<T>(rx: &Receiver<T>, limit: Duration, what: &str) -> T {
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("timed out after {limit:?} waiting for {what}"),
        Err(RecvTimeoutError::Disconnected) => {
            panic!("channel closed (reactor thread gone?) while waiting for {what}")
        }
    }
}

/// A blocking std client whose reads and writes fail instead of hanging.
pub fn connect_std(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("std client connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads until EOF (each read bounded by the socket's timeout).
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read to EOF");
    out
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// `SO_LINGER {on, 0}`: closing the socket then sends RST instead of FIN.
pub fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live descriptor with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// Bytes this socket has sent that the peer's kernel has not yet acknowledged.
pub fn unacked_outbound(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "TIOCOUTQ: {}", io::Error::last_os_error());
    n as usize
}

/// Waits (bounded) until the peer's kernel holds every byte written on `s`. There is no
/// event for this, so it polls the socket's send queue.
pub fn wait_until_peer_kernel_has_everything(s: &TcpStream, limit: Duration) {
    let deadline = Instant::now() + limit;
    while unacked_outbound(s) > 0 {
        assert!(
            Instant::now() < deadline,
            "peer kernel did not acknowledge our bytes within {limit:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Environment variable set when a test re-runs itself in a child process.
pub const CHILD_ENV: &str = "EMBER_STREAMS_CHILD";

pub fn in_child_process() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Re-runs test `name` of this binary alone in a child process (for measurements that
/// other tests running in parallel would disturb) and asserts that it passed.
pub fn run_in_child_process(name: &str, limit: Duration) {
    let exe = std::env::current_exe().expect("current test binary");
    let child = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test process");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for child test process"),
        Err(_) => {
            // SAFETY: kill(2) on the child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child test `{name}` did not finish within {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "child test `{name}` failed ({})",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "child process did not run `{name}`"
    );
}
