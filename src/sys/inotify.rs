//! inotify (Linux): one instance per reactor, a watch per watched path, and its event
//! records read back as `(watch descriptor, mask)` pairs.
#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::syscall;

/// What a file watch is told about: modified, moved, deleted.
pub(crate) const WATCHED: u32 = libc::IN_MODIFY | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF;
const EVENT_HEADER: usize = std::mem::size_of::<libc::inotify_event>();

/// A new non-blocking inotify instance.
pub(crate) fn init() -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 takes only flags.
    let fd = syscall!(inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches `path` for [`WATCHED`] events; returns the watch descriptor.
pub(crate) fn add_watch(inotify: &OwnedFd, path: &Path) -> io::Result<i32> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives the call.
    syscall!(inotify_add_watch(
        inotify.as_raw_fd(),
        cpath.as_ptr(),
        WATCHED
    ))
}

/// Removes a watch; if the kernel already dropped it (file deleted) this fails harmlessly.
pub(crate) fn rm_watch(inotify: &OwnedFd, wd: i32) {
    // SAFETY: two integers; a stale watch descriptor fails with EINVAL.
    let _ = syscall!(inotify_rm_watch(inotify.as_raw_fd(), wd));
}

/// Reads one batch of pending events into `buf` and calls `each(wd, mask)` per event.
/// Returns `false` when nothing was pending (or the read failed).
pub(crate) fn read_events(
    inotify: &OwnedFd,
    buf: &mut [u8],
    mut each: impl FnMut(i32, u32),
) -> bool {
    // SAFETY: reading into a live buffer of the length given.
    let n = match syscall!(read(
        inotify.as_raw_fd(),
        buf.as_mut_ptr().cast(),
        buf.len()
    )) {
        Ok(n) if n > 0 => n as usize,
        _ => return false,
    };
    let mut offset = 0;
    while offset + EVENT_HEADER <= n {
        // SAFETY: the kernel wrote a whole inotify_event at `offset`; it may be unaligned
        // in our byte buffer, hence read_unaligned.
        let event: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf.as_ptr().add(offset).cast()) };
        offset += EVENT_HEADER + event.len as usize;
        each(event.wd, event.mask);
    }
    true
}

/// Room for 16 events with names of up to 256 bytes.
pub(crate) fn event_buffer() -> Vec<u8> {
    vec![0u8; 16 * (EVENT_HEADER + 256)]
}
