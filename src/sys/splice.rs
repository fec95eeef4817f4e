//! Zero-copy relaying with `splice(2)` through a kernel pipe (Linux only).
//!
//! A [`SplicePipe`] sits in front of a relay target's socket: the source socket is
//! spliced into the pipe and the pipe into the target, so relayed bytes never enter user
//! space. The pipe counts its own contents (`len`), because `EAGAIN` from a non-blocking
//! splice cannot say whether the source was empty or the pipe full. Elsewhere the type
//! exists but cannot be created, and relays copy.

use std::io;
use std::os::fd::RawFd;

/// The largest pipe asked for with `F_SETPIPE_SZ` (the kernel may give less). A relay
/// whose bufsize is larger still fills at most this much.
#[cfg(target_os = "linux")]
const MAX_PIPE_SIZE: usize = 1024 * 1024;

/// The smallest pipe asked for, whatever the relay's bufsize. A pipe sized to the
/// proxy's 64 KiB bufsize moved a bulk stream 64 KiB per step, two splices each: 33 000
/// splices per GiB. At 256 KiB the same stream takes 10 000 and about a tenth less
/// proxy CPU. The pipe holds the source socket's own kernel pages, moved rather than
/// copied, never process memory. An unprivileged user past `pipe-user-pages-soft`
/// (64 MiB of pipes by default: 256 of these at once, see pipe(7)) gets smaller pipes,
/// which `F_GETPIPE_SZ` reports; a pipe too small for a worthwhile splice makes its
/// relay copy.
#[cfg(target_os = "linux")]
const MIN_PIPE_SIZE: usize = 256 * 1024;

#[cfg(target_os = "linux")]
pub(crate) struct SplicePipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    /// Bytes spliced in and not yet spliced out.
    pub(crate) len: usize,
    pub(crate) capacity: usize,
}

#[cfg(target_os = "linux")]
impl SplicePipe {
    pub(crate) fn new(wanted: usize) -> io::Result<SplicePipe> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl with integer arguments on a descriptor we own. Failure to grow the
        // pipe is harmless: F_GETPIPE_SZ below reports what we really have.
        let capacity = unsafe {
            let size = wanted.clamp(MIN_PIPE_SIZE, MAX_PIPE_SIZE) as libc::c_int;
            if size > 64 * 1024 {
                libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size);
            }
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).unwrap_or(64 * 1024).max(4096);
        Ok(SplicePipe {
            read,
            write,
            len: 0,
            capacity,
        })
    }

    /// Room left in the pipe.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len)
    }

    /// Moves up to `max` bytes from `source` into the pipe. `Ok(0)` is the source's EOF.
    pub(crate) fn fill_from(&mut self, source: RawFd, max: usize) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = splice(source, self.write.as_raw_fd(), max)?;
        self.len += n;
        Ok(n)
    }

    /// Moves as much of the pipe as `target` takes.
    pub(crate) fn drain_to(&mut self, target: RawFd) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = splice(self.read.as_raw_fd(), target, self.len)?;
        self.len -= n;
        Ok(n)
    }
}

#[cfg(target_os = "linux")]
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two descriptors we own, no offsets (both are streams).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Splice is Linux-only; elsewhere no pipe is ever made and relays copy.
#[cfg(not(target_os = "linux"))]
pub(crate) struct SplicePipe {
    pub(crate) len: usize,
    pub(crate) capacity: usize,
}

#[cfg(not(target_os = "linux"))]
impl SplicePipe {
    pub(crate) fn new(_wanted: usize) -> io::Result<SplicePipe> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "splice is Linux-only",
        ))
    }

    pub(crate) fn room(&self) -> usize {
        0
    }

    pub(crate) fn fill_from(&mut self, _source: RawFd, _max: usize) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "splice is Linux-only",
        ))
    }

    pub(crate) fn drain_to(&mut self, _target: RawFd) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "splice is Linux-only",
        ))
    }
}

/// Whether this platform can splice at all.
pub(crate) const SPLICE_SUPPORTED: bool = cfg!(target_os = "linux");
