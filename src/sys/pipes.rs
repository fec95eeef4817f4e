//! Streams that are not sockets mio knows: a descriptor the user attached (pipe, tty,
//! socket from elsewhere) and a child process's stdin/stdout/stderr pipes.
//!
//! Both are read and written with plain `read(2)`/`write(2)` on non-blocking descriptors.
//! An attached descriptor is closed on drop only if the reactor was asked to own it.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::{set_nonblocking, syscall};

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a live buffer of exactly the length passed.
    let n = syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: writing from a live buffer of exactly the length passed.
    let n = syscall!(write(fd, buf.as_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// A descriptor handed to the reactor with `attach`.
pub(crate) struct AttachedFd {
    fd: RawFd,
    owned: bool,
}

impl AttachedFd {
    pub(crate) fn new(fd: RawFd, owned: bool) -> io::Result<AttachedFd> {
        set_nonblocking(fd)?;
        Ok(AttachedFd { fd, owned })
    }

    /// Wraps `fd` without changing its flags and without owning it (for watches, which
    /// never read or write it).
    pub(crate) fn borrowed(fd: RawFd) -> AttachedFd {
        AttachedFd { fd, owned: false }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Gives the descriptor back without closing it.
    pub(crate) fn release(mut self) -> RawFd {
        self.owned = false;
        self.fd
    }

    pub(crate) fn register(
        &self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        registry.register(&mut SourceFd(&self.fd), token, interest)
    }

    pub(crate) fn reregister(
        &self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        registry.reregister(&mut SourceFd(&self.fd), token, interest)
    }

    pub(crate) fn deregister(&self, registry: &Registry) {
        let _ = registry.deregister(&mut SourceFd(&self.fd));
    }

    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: shutdown on a descriptor we hold; a non-socket fails with ENOTSOCK.
        if unsafe { libc::shutdown(self.fd, libc::SHUT_WR) } < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOTSOCK) {
                return Err(err);
            }
        }
        Ok(())
    }
}

impl Read for AttachedFd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.fd, buf)
    }
}

impl Write for AttachedFd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_fd(self.fd, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for AttachedFd {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we own the descriptor and close it exactly once.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// A child process's pipes: we write its stdin, read its stdout and stderr.
pub(crate) struct ChildPipes {
    pub(crate) child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: Option<ChildStderr>,
}

impl ChildPipes {
    pub(crate) fn new(mut child: Child) -> io::Result<ChildPipes> {
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("child has no stdout pipe"))?;
        let stderr = child.stderr.take();
        set_nonblocking(stdout.as_raw_fd())?;
        if let Some(s) = &stdin {
            set_nonblocking(s.as_raw_fd())?;
        }
        if let Some(s) = &stderr {
            set_nonblocking(s.as_raw_fd())?;
        }
        Ok(ChildPipes {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Registers every pipe under the connection's one token: stdout and stderr for
    /// reading, stdin for writing.
    pub(crate) fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.stdout.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        if let Some(s) = &self.stderr {
            registry.register(&mut SourceFd(&s.as_raw_fd()), token, Interest::READABLE)?;
        }
        if let Some(s) = &self.stdin {
            registry.register(&mut SourceFd(&s.as_raw_fd()), token, Interest::WRITABLE)?;
        }
        Ok(())
    }

    pub(crate) fn deregister(&self, registry: &Registry) {
        let _ = registry.deregister(&mut SourceFd(&self.stdout.as_raw_fd()));
        if let Some(s) = &self.stderr {
            let _ = registry.deregister(&mut SourceFd(&s.as_raw_fd()));
        }
        if let Some(s) = &self.stdin {
            let _ = registry.deregister(&mut SourceFd(&s.as_raw_fd()));
        }
    }

    /// Closes the child's stdin: it sees EOF.
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub(crate) fn stdout_fd(&self) -> RawFd {
        self.stdout.as_raw_fd()
    }

    pub(crate) fn stdin_fd(&self) -> RawFd {
        self.stdin.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    /// Reads stderr if the child has one; `Ok(None)` when it has none or it is exhausted.
    pub(crate) fn read_stderr(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(stderr) = self.stderr.as_mut() else {
            return Ok(None);
        };
        match stderr.read(buf) {
            Ok(0) => {
                self.stderr = None;
                Ok(None)
            }
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn into_child(self) -> Child {
        self.child
    }
}

impl Read for ChildPipes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Write for ChildPipes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.stdin.as_mut() {
            Some(s) => s.write(buf),
            None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
