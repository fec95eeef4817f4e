//! The syscall edge: every `unsafe` block and raw `libc` call of the crate lives in this
//! directory, each with its `// SAFETY:` line (mio's `src/sys` is the model). Above it,
//! the reactor sees safe types and functions: sockets and listeners ([`socket`]),
//! attached descriptors and child pipes ([`pipes`]), splice pipes ([`splice`]), the
//! signal self-pipe ([`signals`]), inotify ([`inotify`]), `sendfile(2)` ([`sendfile`]),
//! process signals and limits.
//!
//! It also owns the one place an I/O result is classified for the loop ([`classify`]):
//! progress, drained, end of stream, or failure.

pub(crate) mod inotify;
pub(crate) mod limits;
pub(crate) mod pidfd;
pub(crate) mod pipes;
pub(crate) mod sendfile;
pub(crate) mod signals;
pub(crate) mod socket;
pub(crate) mod sockmap;
pub(crate) mod splice;

use std::io;
use std::os::fd::RawFd;

/// Calls `libc::$fn` (which the caller has checked is sound: a `// SAFETY:` line goes
/// above every use) and turns a negative return into the `errno` as an `io::Error`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        let result = unsafe { libc::$fn($($arg),*) };
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }};
}
pub(crate) use syscall;

/// What one read, write, splice or accept attempt means for the loop.
#[derive(Debug)]
pub(crate) enum Io {
    /// This many bytes (or one accepted socket) moved; more may follow.
    Progress(usize),
    /// Nothing to do until the next readiness edge (`WouldBlock`).
    Drained,
    /// A read returned 0: the peer's FIN.
    Eof,
    /// Interrupted by a signal: try again at once.
    Retry,
    /// Any other error.
    Failed(io::Error),
}

/// Classifies the result of a read-like call (`Ok(0)` is end of stream).
pub(crate) fn classify(result: io::Result<usize>) -> Io {
    match result {
        Ok(0) => Io::Eof,
        Ok(n) => Io::Progress(n),
        Err(e) => classify_error(e),
    }
}

/// Classifies the result of a write-like call (`Ok(0)`: the kernel took nothing now).
pub(crate) fn classify_write(result: io::Result<usize>) -> Io {
    match result {
        Ok(0) => Io::Drained,
        Ok(n) => Io::Progress(n),
        Err(e) => classify_error(e),
    }
}

/// Classifies an error from any non-blocking call.
pub(crate) fn classify_error(e: io::Error) -> Io {
    match e.kind() {
        io::ErrorKind::WouldBlock => Io::Drained,
        io::ErrorKind::Interrupted => Io::Retry,
        _ => Io::Failed(e),
    }
}

/// Sets `O_NONBLOCK` on a descriptor.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments; an invalid descriptor fails with EBADF.
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    // SAFETY: as above.
    syscall!(fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    Ok(())
}

/// Sets `FD_CLOEXEC` on a descriptor (a child process does not inherit it).
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments; an invalid descriptor fails with EBADF.
    syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
    Ok(())
}

/// Sends signal `signo` to process `pid` (`kill(2)`).
pub(crate) fn send_signal(pid: u32, signo: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes two integers; the callers pass a child they spawned and have
    // not reaped, so the pid cannot have been reused.
    syscall!(kill(pid, signo))?;
    Ok(())
}
