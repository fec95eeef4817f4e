//! The byte streams and listeners a connection or server can sit on, and the socket-level
//! calls std and mio don't offer (`bind` before `connect`, raw `setsockopt`, keepalive).
//!
//! Part of the syscall edge (`sys`): every `unsafe` block here carries its `SAFETY`
//! justification, and nothing above `sys` touches a raw descriptor.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::sys::pipes::{AttachedFd, ChildPipes};

/// A connected (or connecting) byte stream.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A descriptor the user attached.
    Fd(AttachedFd),
    /// A child process's pipes.
    Child(ChildPipes),
}

impl Stream {
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        // Edge-triggered, both directions, once: a connection is never re-registered, so
        // pausing and resuming cost no system call. See docs/architecture.md.
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            // Priority events announce TCP urgent data, which `discard_urgent` drops.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Stream::Tcp(s) => registry.register(s, token, interest | Interest::PRIORITY),
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Stream::Tcp(s) => registry.register(s, token, interest),
            Stream::Unix(s) => registry.register(s, token, interest),
            Stream::Fd(f) => f.register(registry, token, interest),
            Stream::Child(c) => c.register(registry, token),
        }
    }

    /// The socket's descriptor, handed over (`detach`): nothing here closes it any more.
    /// `None` for what is not a socket (an attached descriptor, a child's pipes).
    pub(crate) fn into_socket_fd(self) -> Option<RawFd> {
        use std::os::fd::IntoRawFd;
        match self {
            Stream::Tcp(s) => Some(s.into_raw_fd()),
            Stream::Unix(s) => Some(s.into_raw_fd()),
            Stream::Fd(_) | Stream::Child(_) => None,
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Stream::Tcp(s) => registry.deregister(s),
            Stream::Unix(s) => registry.deregister(s),
            Stream::Fd(f) => {
                f.deregister(registry);
                Ok(())
            }
            Stream::Child(c) => {
                c.deregister(registry);
                Ok(())
            }
        };
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
            Stream::Fd(_) | Stream::Child(_) => Ok(None),
        }
    }

    /// Whether a non-blocking connect has finished (`Ok(false)` while still in progress).
    pub(crate) fn is_connected(&self) -> io::Result<bool> {
        let result = match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
            Stream::Fd(_) | Stream::Child(_) => Ok(()),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How a non-blocking connect stands after an event on it: `Ok(true)` connected,
    /// `Ok(false)` still in progress (the event was not about the connect), `Err` the
    /// connect's failure (refused, unreachable...).
    pub(crate) fn connect_outcome(&self) -> io::Result<bool> {
        match self.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => self.is_connected(),
        }
    }

    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Fd(f) => f.shutdown_write(),
            Stream::Child(c) => {
                c.close_stdin();
                Ok(())
            }
        }
    }

    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            _ => None,
        }
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            _ => None,
        }
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(on),
            _ => Ok(()),
        }
    }

    /// Whether a socket has received bytes not yet read (always `false` for pipes and
    /// attached descriptors, where the question has no cheap answer). `in_sockmap`: the
    /// socket is linked in the kernel relay's sockmap, where `FIONREAD` counts only the
    /// sockmap's own queue and answers 0 for bytes still in the socket's receive queue
    /// (never handed to the program): then a 0 is checked with a one-byte peek.
    pub(crate) fn has_unread_input(&self, in_sockmap: bool) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => {
                let fd = self.read_fd();
                bytes_waiting(fd) > 0 || (in_sockmap && peek_finds_a_byte(fd))
            }
            Stream::Fd(_) | Stream::Child(_) => false,
        }
    }

    /// Reads and throws away up to `max` bytes; `Ok(0)` is end of stream. On Linux a TCP
    /// socket drops them inside the kernel (`recv` with `MSG_TRUNC`: no copy at all);
    /// elsewhere they are read into `scratch`.
    pub(crate) fn discard(&mut self, max: usize, scratch: &mut [u8]) -> io::Result<usize> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Stream::Tcp(s) = self {
            // SAFETY: with MSG_TRUNC, TCP's recvmsg never touches the buffer; a null
            // pointer with any length is what the man page (tcp(7)) describes.
            let n = unsafe {
                libc::recv(
                    s.as_raw_fd(),
                    std::ptr::null_mut(),
                    max,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            return if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            };
        }
        let len = max.min(scratch.len());
        self.read(&mut scratch[..len])
    }

    /// Drops the pending TCP urgent byte, if any. Urgent data is out of band: it never
    /// belongs in the byte stream (HAProxy drops it too), and an unread urgent byte is
    /// what lets the kernel put a later one inline.
    pub(crate) fn discard_urgent(&mut self) {
        if let Stream::Tcp(s) = self {
            let mut byte = 0u8;
            // SAFETY: recv writes at most one byte into the live local we pass.
            unsafe {
                libc::recv(
                    s.as_raw_fd(),
                    (&raw mut byte).cast(),
                    1,
                    libc::MSG_OOB | libc::MSG_DONTWAIT,
                )
            };
        }
    }

    /// The descriptor bytes are read from (and socket options set on).
    pub(crate) fn read_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Fd(f) => f.fd(),
            Stream::Child(c) => c.stdout_fd(),
        }
    }

    /// The descriptor bytes are written to (-1 if it is closed).
    pub(crate) fn write_fd(&self) -> RawFd {
        match self {
            Stream::Child(c) => c.stdin_fd(),
            other => other.read_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Fd(f) => f.read(buf),
            Stream::Child(c) => c.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Fd(f) => f.write(buf),
            Stream::Child(c) => c.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds and listens with our own backlog (mio's is 128, too short for a proxy
    /// taking bursts of connections) and, if asked, `SO_REUSEPORT` so several worker
    /// processes can share one port.
    pub(crate) fn bind_tcp(
        addr: SocketAddr,
        backlog: i32,
        reuse_port: bool,
    ) -> io::Result<Listener> {
        let fd = new_socket(addr)?;
        // SAFETY: `fd` is a fresh descriptor we own; the std listener closes it on every
        // early return below.
        let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if reuse_port {
            set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        let (raw, len) = sockaddr_from(addr);
        // SAFETY: `raw` is a properly initialised sockaddr of `len` bytes.
        if unsafe { libc::bind(fd, (&raw const raw).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen(2) on a bound socket we own.
        if unsafe { libc::listen(fd, backlog) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Listener::Tcp(TcpListener::from_std(std_listener)))
    }

    pub(crate) fn bind_unix(path: &Path) -> io::Result<Listener> {
        UnixListener::bind(path).map(Listener::Unix)
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => registry.register(l, token, Interest::READABLE),
            Listener::Unix(l) => registry.register(l, token, Interest::READABLE),
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Listener::Tcp(l) => registry.deregister(l),
            Listener::Unix(l) => registry.deregister(l),
        };
    }

    /// The next connection, with its peer's address for TCP (`accept4` returns it: no
    /// `getpeername` needed).
    pub(crate) fn accept(&self) -> io::Result<(Stream, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, peer)| (Stream::Tcp(s), Some(peer))),
            Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), None)),
        }
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// A second descriptor for the same listening TCP socket (`F_DUPFD_CLOEXEC`): the
    /// socket, and its accept queue, live until both are closed. `None` for a Unix one.
    pub(crate) fn duplicate_tcp(&self) -> Option<io::Result<std::net::TcpListener>> {
        let Listener::Tcp(listener) = self else {
            return None;
        };
        Some(
            super::syscall!(fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)).map(|fd| {
                // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` just returned `fd`, a new descriptor
                // nothing else owns, for the listening socket; the std listener takes
                // sole ownership of it and closes it when dropped.
                unsafe { std::net::TcpListener::from_raw_fd(fd) }
            }),
        )
    }
}

/// Bytes received and not yet read on a socket (`FIONREAD`); 0 if unknown.
pub(crate) fn bytes_waiting(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into the live variable we pass.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc < 0 {
        0
    } else {
        usize::try_from(n).unwrap_or(0)
    }
}

/// Whether a socket has a byte to read, wherever it waits: a one-byte
/// `recv(MSG_PEEK | MSG_DONTWAIT)`, which leaves it there. An end of stream, nothing
/// yet, or an error (which this consumes, as any `recv` does) are all `false`.
fn peek_finds_a_byte(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into the live local we pass; MSG_PEEK leaves
    // it in the socket and MSG_DONTWAIT keeps the call from blocking.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Whether the next byte to read on a TCP socket is an urgent mark (`SIOCATMARK`, which
/// the libc crate does not name on Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn at_urgent_mark(fd: RawFd) -> bool {
    const SIOCATMARK: libc::Ioctl = 0x8905;
    let mut at_mark: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int into the live variable we pass.
    let rc = unsafe { libc::ioctl(fd, SIOCATMARK, &mut at_mark) };
    rc == 0 && at_mark != 0
}

/// Splice exists only on Linux, so no relay elsewhere ever needs to ask.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn at_urgent_mark(_fd: RawFd) -> bool {
    false
}

/// Whether an accept error means "out of descriptors or memory": back off, don't spin.
pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Starts a non-blocking TCP connect to `remote`, optionally bound first to `local`.
pub(crate) fn tcp_connect(remote: SocketAddr, local: Option<SocketAddr>) -> io::Result<Stream> {
    let Some(local) = local else {
        return TcpStream::connect(remote).map(Stream::Tcp);
    };
    let fd = new_socket(remote)?;
    // SAFETY: `fd` is a fresh descriptor we own; the std stream takes ownership and closes
    // it on every early return below.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let (local_raw, local_len) = sockaddr_from(local);
    // SAFETY: `local_raw` is a properly initialised sockaddr of `local_len` bytes.
    let rc = unsafe { libc::bind(fd, (&raw const local_raw).cast(), local_len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let (remote_raw, remote_len) = sockaddr_from(remote);
    // SAFETY: as above, for the remote address.
    let rc = unsafe { libc::connect(fd, (&raw const remote_raw).cast(), remote_len) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(Stream::Tcp(TcpStream::from_std(std_stream)))
}

pub(crate) fn unix_connect(path: &Path) -> io::Result<Stream> {
    UnixStream::connect(path).map(Stream::Unix)
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
fn new_socket(addr: SocketAddr) -> io::Result<RawFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl with integer arguments on the descriptor just created; on failure we
    // close it ourselves since no owner holds it yet.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0
            || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            || libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0
        {
            let err = io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
    }
    Ok(fd)
}

/// `setsockopt(fd, level, name, &value, sizeof(int))`.
pub(crate) fn set_int_option(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value points at a live `c_int` whose exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt(fd, level, name, &value, &len)` for an option whose value is one `int`;
/// an option of another size (a struct such as `SO_LINGER`) is `InvalidInput`.
pub(crate) fn int_option(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the live `c_int` we pass and
    // stores the option's real size in the live `len`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != mem::size_of::<libc::c_int>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket option's value is not an int",
        ));
    }
    Ok(value)
}

/// Turns TCP keepalive on with the given idle time before the first probe, or off.
pub(crate) fn set_keepalive(fd: RawFd, idle: Option<Duration>) -> io::Result<()> {
    set_int_option(
        fd,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        idle.is_some() as i32,
    )?;
    if let Some(idle) = idle {
        let secs = idle.as_secs().clamp(1, i32::MAX as u64) as i32;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs)?;
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPALIVE, secs)?;
        #[cfg(not(any(
            target_os = "linux",
            target_os = "android",
            target_os = "macos",
            target_os = "ios"
        )))]
        let _ = secs;
    }
    Ok(())
}

fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr type.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
