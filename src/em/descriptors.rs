//! [`set_descriptor_table_size`]: EventMachine's way to ask for more descriptors.
//!
//! This module owns only the mapping from EM's call to the process's soft
//! `RLIMIT_NOFILE`; the `setrlimit` call is at the syscall edge (`sys::limits`).

use std::io;

use crate::sys::limits as sys;

/// Sets this process's soft descriptor limit (`RLIMIT_NOFILE`) to `size`, capped at the
/// hard limit, and returns the limit now in force, which may be less than asked for
/// (EventMachine's `EM.set_descriptor_table_size(n)`). Unlike
/// [`raise_descriptor_limit`](crate::raise_descriptor_limit), which only ever raises the
/// soft limit to the hard one, this sets exactly what is asked, lower included.
///
/// EM's call without an argument, which only reads the size, is
/// [`descriptor_table_size`].
///
/// ```
/// let now = ember::em::descriptor_table_size().unwrap();
/// assert_eq!(ember::em::set_descriptor_table_size(now).unwrap(), now);
/// ```
#[doc(alias = "set_rlimit_nofile")]
pub fn set_descriptor_table_size(size: u64) -> io::Result<u64> {
    let (_, hard) = sys::descriptor_limits()?;
    sys::set_soft_descriptor_limit(size.min(hard))?;
    descriptor_table_size()
}

/// This process's soft descriptor limit: how many descriptors it may have open
/// (EventMachine's `EM.set_descriptor_table_size` called with no argument).
pub fn descriptor_table_size() -> io::Result<u64> {
    Ok(sys::descriptor_limits()?.0)
}
