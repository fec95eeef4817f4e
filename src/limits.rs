//! Process limits a server wants raised before it starts: the descriptor table
//! (EventMachine's `EM.set_descriptor_table_size`). With the usual soft limit of 1024, a
//! proxy (two descriptors per client) tops out near 500 clients; the hard limit is often
//! far higher and needs no privilege to reach.

use std::io;

use crate::sys::limits as sys;

/// This process's soft descriptor limit (1024 if it cannot be read).
pub(crate) fn descriptor_limit() -> u64 {
    sys::descriptor_limits().map_or(1024, |(soft, _)| soft)
}

/// The machine's physical memory in bytes (1 GiB if it cannot be read).
pub(crate) fn physical_memory() -> u64 {
    sys::physical_memory().unwrap_or(1 << 30)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and returns the new soft
/// limit. Never lowers it.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let (soft, hard) = sys::descriptor_limits()?;
    if soft < hard {
        sys::set_soft_descriptor_limit(hard)?;
    }
    Ok(soft.max(hard))
}

#[cfg(test)]
mod tests {
    #[test]
    fn raising_the_descriptor_limit_reaches_the_hard_limit() {
        let soft = super::raise_descriptor_limit().unwrap();
        let (current, hard) = crate::sys::limits::descriptor_limits().unwrap();
        assert_eq!(soft, current);
        assert_eq!(current, hard);
    }
}
