//! Process limits a server wants raised before it starts: the descriptor table
//! (EventMachine's `EM.set_descriptor_table_size`). With the usual soft limit of 1024, a
//! proxy (two descriptors per client) tops out near 500 clients; the hard limit is often
//! far higher and needs no privilege to reach.

use std::io;

fn descriptor_rlimit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// This process's soft descriptor limit (1024 if it cannot be read).
pub(crate) fn descriptor_limit() -> u64 {
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    descriptor_rlimit().map_or(1024, |l| l.rlim_cur as u64)
}

/// The machine's physical memory in bytes (1 GiB if it cannot be read).
pub(crate) fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return 1 << 30;
    }
    (pages as u64).saturating_mul(page_size as u64)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and returns the new soft
/// limit. Never lowers it.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = descriptor_rlimit()?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from the live struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } < 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    Ok(limit.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn raising_the_descriptor_limit_reaches_the_hard_limit() {
        let soft = super::raise_descriptor_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the live struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        #[allow(clippy::unnecessary_cast)]
        let current = limit.rlim_cur as u64;
        assert_eq!(soft, current);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
