//! The libc edges the tests need, each written once: a close that sends a reset, the
//! bytes a socket has sent that its peer has not acknowledged, a listener's accept queue
//! shrunk to one (and a blackholed address made of one), the process's RSS, and the descriptor limit (raised by the crate's own
//! [`ember::raise_descriptor_limit`]).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

/// Raises the soft descriptor limit to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    ember::raise_descriptor_limit().expect("raise the descriptor limit")
}

/// Makes `close` send RST instead of FIN (`SO_LINGER` with a zero timeout).
pub fn reset_on_close(stream: &TcpStream) {
    try_reset_on_close(stream).expect("SO_LINGER");
}

/// [`reset_on_close`] for a caller that must not panic (a toxic proxy's thread).
pub fn try_reset_on_close(stream: &TcpStream) -> io::Result<()> {
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
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes this socket has sent that the peer's kernel has not yet acknowledged (`TIOCOUTQ`).
pub fn unacked_outbound(stream: &TcpStream) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        Ok(n as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits (bounded) until the peer's kernel holds every byte written on `stream`. There is
/// no event for this, so it polls the socket's send queue.
pub fn wait_until_peer_kernel_has_everything(stream: &TcpStream, limit: Duration) {
    let deadline = Instant::now() + limit;
    while unacked_outbound(stream).expect("TIOCOUTQ") > 0 {
        assert!(
            Instant::now() < deadline,
            "peer kernel did not acknowledge our bytes within {limit:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Shrinks a listener's accept queue to its minimum (listen again, with a backlog of 0):
/// once one connection waits in it, Linux drops every further SYN.
pub fn shrink_accept_queue(listener: &TcpListener) {
    // SAFETY: listen(2) on a listening socket we own only changes its backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "listen(0): {}", io::Error::last_os_error());
}

/// A listener whose accept queue is full, so the kernel drops further SYNs: a connect to
/// `addr` hangs, as to a blackholed address, until a queued connection is accepted.
pub struct Blackhole {
    pub listener: TcpListener,
    /// The connections that fill the accept queue, never accepted.
    pub queued: Vec<TcpStream>,
    pub addr: SocketAddr,
}

impl Blackhole {
    /// A blackholed address on `ip` (a loopback address). `None` if this kernel does not
    /// leave connects to a full accept queue pending.
    pub fn on(ip: IpAddr) -> Option<Blackhole> {
        let listener = TcpListener::bind((ip, 0)).expect("bind a listener to blackhole");
        shrink_accept_queue(&listener);
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Some(Blackhole {
                        listener,
                        queued,
                        addr,
                    });
                }
                Err(e) => panic!("filling the backlog: {e}"),
            }
        }
        None
    }

    /// Accepts (and closes) every queued connection: the next SYN retransmitted to `addr`
    /// is answered. Returns what the accepts' peers were.
    pub fn open_up(&mut self) -> Vec<SocketAddr> {
        self.listener.set_nonblocking(true).unwrap();
        let mut peers = Vec::new();
        while let Ok((_, peer)) = self.listener.accept() {
            peers.push(peer);
        }
        self.listener.set_nonblocking(false).unwrap();
        self.queued.clear();
        peers
    }
}

/// The process's resident set size in bytes, from `/proc/self/status`.
pub fn vm_rss() -> usize {
    status_bytes("self", "VmRSS:")
}

/// The peak resident set size of process `pid`, in bytes (`VmHWM`).
pub fn peak_rss_of(pid: libc::pid_t) -> usize {
    status_bytes(&pid.to_string(), "VmHWM:")
}

/// A `kB` line of `/proc/PROC/status`, in bytes.
fn status_bytes(proc: &str, key: &str) -> usize {
    let path = format!("/proc/{proc}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} line in {path}"));
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} value in {path}"));
    kb * 1024
}
