//! `sendfile(2)`: a file's page-cache pages handed to a socket (or pipe) without passing
//! through the process (Linux only; elsewhere files are streamed by reading and writing).

use std::io;
use std::os::fd::RawFd;

/// Whether [`send_file`] can work on this platform at all.
pub(crate) const SENDFILE_SUPPORTED: bool = cfg!(target_os = "linux");

/// Sends up to `count` bytes of `file` starting at `*offset` to the non-blocking `out`,
/// advancing `*offset` by what went. `Ok(0)` means the file ended before `*offset`.
#[cfg(target_os = "linux")]
pub(crate) fn send_file(
    out: RawFd,
    file: RawFd,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range"))?;
    // SAFETY: sendfile reads `off` and writes the new offset back into it; both
    // descriptors are owned by the caller for the duration of the call and a stale or
    // wrong one fails with EBADF rather than touching memory.
    let sent = super::syscall!(sendfile(out, file, &mut off, count))?;
    *offset = u64::try_from(off).unwrap_or(*offset);
    Ok(sent as usize)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn send_file(
    _out: RawFd,
    _file: RawFd,
    _offset: &mut u64,
    _count: usize,
) -> io::Result<usize> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether `e` from [`send_file`] means this pair of descriptors cannot use it (the file
/// or the target does not support it), so the bytes must be copied instead.
pub(crate) fn refused(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        )
}
