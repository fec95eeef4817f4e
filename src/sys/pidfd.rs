//! Process descriptors (`pidfd_open(2)`, Linux 5.3+): a descriptor that becomes readable
//! when its process exits, so a process can be watched like a socket.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A descriptor for process `pid`, readable once it has exited.
#[cfg(target_os = "linux")]
pub(crate) fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Elsewhere there are no process descriptors.
#[cfg(not(target_os = "linux"))]
pub(crate) fn open(_pid: u32) -> io::Result<OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "watching a process needs pidfd_open (Linux 5.3+)",
    ))
}
