//! systemd, without a crate: readiness notifications (`sd_notify(3)`: `READY=1` once the
//! proxy listens, `STOPPING=1` when the drain starts) and socket activation
//! (`sd_listen_fds(3)`: a listening socket passed as descriptor 3).
//!
//! Both are no-ops outside systemd: without `NOTIFY_SOCKET` nothing is sent, and without
//! `LISTEN_FDS`/`LISTEN_PID` naming this process nothing is adopted. This module holds
//! the binary's only `unsafe` (taking descriptor 3), and never touches the environment
//! (other threads may be reading it).

use std::ffi::OsStr;
use std::io;
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// More passed sockets than this is a mistake, not a configuration.
const MAX_LISTEN_FDS: i32 = 1024;

/// Descriptor 3 has been looked at (and taken, if it was ours): never twice.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`, `STATUS=…`, one per
/// line) if it asked to be told (`NOTIFY_SOCKET`). Returns whether it was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = notify_addr(&socket)?;
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// [`notify`], with a failure logged instead of returned: a lost notification must not
/// stop the proxy (systemd then times the start out and says why).
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        log::warn!("ember-proxy: cannot notify the service manager ({state:?}): {e}");
    }
}

/// `NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace.
fn notify_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    match socket.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "NOTIFY_SOCKET={} is neither a path nor @name",
                socket.display()
            ),
        )),
    }
}

/// The listening sockets systemd passed, if it passed any to this process: `LISTEN_PID`
/// is our pid and `LISTEN_FDS` says how many, from descriptor 3 on. Only the first call
/// can return them; later ones return nothing.
pub fn listen_fds() -> Result<Vec<TcpListener>, String> {
    if CLAIMED.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let (Some(pid), Some(fds)) = (
        std::env::var_os("LISTEN_PID"),
        std::env::var_os("LISTEN_FDS"),
    ) else {
        return Ok(Vec::new());
    };
    // Meant for another process (a parent that exec'd us without unsetting them).
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count = fds
        .to_str()
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| (0..=MAX_LISTEN_FDS).contains(n))
        .ok_or_else(|| format!("LISTEN_FDS={} is not a number of sockets", fds.display()))?;
    (LISTEN_FDS_START..LISTEN_FDS_START + count)
        .map(|fd| {
            // SAFETY: systemd (or anything speaking its protocol) passes descriptors 3 to
            // 3+LISTEN_FDS-1 open across exec, and LISTEN_PID (checked above) says they are
            // this process's. Nothing has run yet that could have closed or taken them
            // (`serve` calls this before it opens anything), and `CLAIMED` lets this line
            // run once per descriptor per process, so each listener is its only owner.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            // A descriptor that is no IP socket (a Unix socket, a file) fails here and is
            // closed.
            match listener.local_addr() {
                Ok(_) => Ok(listener),
                Err(e) => Err(format!(
                    "socket activation: descriptor {fd} is not a listening TCP socket ({e})"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        let path = notify_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = notify_addr(OsStr::new("@ember/notify")).unwrap();
        assert_eq!(abstract_name.as_abstract_name(), Some(&b"ember/notify"[..]));
        assert!(notify_addr(OsStr::new("vsock:2:1")).is_err());
    }
}
