//! Process limits: the descriptor table (`RLIMIT_NOFILE`) and physical memory.

use std::io;

use super::syscall;

fn rlimit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live struct we pass.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
    Ok(limit)
}

/// The soft and hard descriptor limits.
pub(crate) fn descriptor_limits() -> io::Result<(u64, u64)> {
    let limit = rlimit()?;
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// Sets the soft descriptor limit to `soft` (the caller keeps it at or below the hard one).
pub(crate) fn set_soft_descriptor_limit(soft: u64) -> io::Result<()> {
    let limit = rlimit()?;
    let wanted = libc::rlimit {
        rlim_cur: libc::rlim_t::try_from(soft).unwrap_or(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit from the live struct we pass.
    syscall!(setrlimit(libc::RLIMIT_NOFILE, &wanted))?;
    Ok(())
}

/// The machine's physical memory in bytes, if it can be read.
pub(crate) fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return None;
    }
    Some((pages as u64).saturating_mul(page_size as u64))
}

/// User plus system CPU time this process has used, all its threads counted.
pub(crate) fn cpu_time() -> io::Result<std::time::Duration> {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the live struct we pass.
    syscall!(getrusage(libc::RUSAGE_SELF, &mut usage))?;
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok(std::time::Duration::from_micros(
        micros(usage.ru_utime) + micros(usage.ru_stime),
    ))
}

/// The size of a memory page in bytes (4096 if it cannot be read).
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}
