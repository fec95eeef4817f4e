//! Unix signals delivered on the reactor thread, through a self-pipe.
//!
//! The process-wide handler does the one async-signal-safe thing: it writes the signal
//! number as a byte into the write end of every registered reactor's pipe. Each reactor
//! watches its read end like any other descriptor and runs its `on_signal` closures from
//! the loop, where they may touch anything. Up to [`MAX_REACTORS`] reactors in a process
//! can listen for signals at once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// How many reactors in one process can watch signals at the same time.
pub const MAX_REACTORS: usize = 16;

static PIPES: [AtomicI32; MAX_REACTORS] = [const { AtomicI32::new(-1) }; MAX_REACTORS];

/// One reactor's end of the signal fan-out.
pub(crate) struct SignalPipe {
    read: OwnedFd,
    /// Never closed; see `Drop`.
    write: std::mem::ManuallyDrop<OwnedFd>,
    index: usize,
}

impl SignalPipe {
    pub(crate) fn open() -> io::Result<SignalPipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe(2) writes two descriptors into the two-element array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [read.as_raw_fd(), write.as_raw_fd()] {
            set_flags(fd)?;
        }
        let index = PIPES
            .iter()
            .position(|slot| {
                slot.compare_exchange(-1, write.as_raw_fd(), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or_else(|| io::Error::other("too many reactors watching signals"))?;
        Ok(SignalPipe {
            read,
            write: std::mem::ManuallyDrop::new(write),
            index,
        })
    }

    pub(crate) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Installs the process-wide handler for `signo` (idempotent).
    pub(crate) fn install(signo: i32) -> io::Result<()> {
        // SAFETY: sigaction is zero-initialisable plain data; we fill in the handler and
        // an empty mask before passing it to the kernel.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signo, &action, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Reads the signal numbers that arrived since the last call.
    pub(crate) fn drain(&self) -> Vec<i32> {
        let mut arrived = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a live stack buffer of the length given.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            arrived.extend(buf[..n as usize].iter().map(|&b| i32::from(b)));
        }
        arrived
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        let _ = PIPES[self.index].compare_exchange(
            self.write.as_raw_fd(),
            -1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        // The write end stays open (`ManuallyDrop`): a handler on another thread may have
        // loaded this descriptor just before the slot was cleared, and closing it could
        // let that write land in whatever reuses the number. One descriptor per dropped
        // signal-watching reactor is the price.
    }
}

extern "C" fn forward_signal(signo: libc::c_int) {
    let byte = signo as u8;
    // The interrupted code may be about to read errno: keep it as it was.
    let saved = errno();
    for slot in &PIPES {
        let fd = slot.load(Ordering::Acquire);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; the byte lives on this stack frame.
            // A full pipe drops the byte, which is fine: the reader is already woken. The
            // descriptor stays valid: write ends are never closed (see `Drop`).
            unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
        }
    }
    set_errno(saved);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; async-signal-safe.
    unsafe { libc::__errno_location() }
}

#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; async-signal-safe.
    unsafe { libc::__error() }
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
))]
fn errno() -> libc::c_int {
    // SAFETY: the pointer is this thread's errno, valid for the thread's life.
    unsafe { *errno_location() }
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
))]
fn set_errno(value: libc::c_int) {
    // SAFETY: as in `errno`.
    unsafe { *errno_location() = value };
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
)))]
fn errno() -> libc::c_int {
    0
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
)))]
fn set_errno(_value: libc::c_int) {}

fn set_flags(fd: RawFd) -> io::Result<()> {
    super::set_nonblocking(fd)?;
    super::set_cloexec(fd)
}
