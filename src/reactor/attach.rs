//! Descriptors the user already has: `attach` one as a full connection, `watch` one for
//! readiness notifications only (EventMachine's `EM.attach` and `EM.watch`), and
//! `detach` to hand either back.
//!
//! An attached descriptor is closed by the reactor only if it was attached with
//! [`Reactor::attach_owned`]. A watched descriptor is never read or written by the
//! reactor, and never closed by it. Watches behave level-triggered, as EventMachine's
//! do: after each notification the descriptor is re-armed, so a handler that leaves
//! bytes unread is told again on the next tick.

use std::io;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};

use mio::{Interest, Token};

use super::lifecycle::Life;
use super::{Descriptor, Reactor, Readiness};
use crate::handler::{Handler, UnbindReason};
use crate::id::ConnId;
use crate::sys::pipes::AttachedFd;
use crate::sys::socket::Stream;

pub(crate) struct Watch {
    pub(crate) serial: u64,
    fd: AttachedFd,
    pub(crate) handler: Option<Box<dyn Handler>>,
    notify_readable: bool,
    notify_writable: bool,
    registered: bool,
    pub(crate) closing: Option<UnbindReason>,
}

impl Watch {
    fn interest(&self) -> Option<Interest> {
        match (self.notify_readable, self.notify_writable) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

impl Reactor {
    /// Makes a connection of a descriptor the caller keeps owning (a pipe, a tty, a
    /// socket made elsewhere): full connection behaviour, but the reactor never closes
    /// it; [`detach`](Self::detach) hands it back. The descriptor is made non-blocking.
    pub fn attach<H: Handler>(&mut self, fd: RawFd, handler: H) -> io::Result<ConnId> {
        let stream = Stream::Fd(AttachedFd::new(fd, false)?);
        self.adopt(Some(stream), Box::new(handler), Life::open())
    }

    /// Like [`attach`](Self::attach), but the reactor owns the descriptor and closes it
    /// when the connection ends.
    pub fn attach_owned<H: Handler>(&mut self, fd: OwnedFd, handler: H) -> io::Result<ConnId> {
        let stream = Stream::Fd(AttachedFd::new(fd.into_raw_fd(), true)?);
        self.adopt(Some(stream), Box::new(handler), Life::open())
    }

    /// Watches `fd` for readiness without reading or writing it: the handler's
    /// `notify_readable` / `notify_writable` run while the descriptor is ready and the
    /// matching notification is on (readable on, writable off at first).
    pub fn watch<H: Handler>(&mut self, fd: RawFd, handler: H) -> io::Result<ConnId> {
        let fd = AttachedFd::borrowed(fd);
        let serial = self.next_serial();
        let entry = self.descriptors.vacant_entry();
        let slot = entry.key();
        fd.register(self.poll.registry(), Token(slot), Interest::READABLE)?;
        entry.insert(Descriptor::Watch(Watch {
            serial,
            fd,
            handler: Some(Box::new(handler)),
            notify_readable: true,
            notify_writable: false,
            registered: true,
            closing: None,
        }));
        let id = ConnId { slot, serial };
        self.notify(id, |h, cx| h.post_init(cx));
        Ok(id)
    }

    /// Turns `notify_readable` calls for watch `id` on or off.
    pub fn set_notify_readable(&mut self, id: ConnId, on: bool) {
        self.update_watch(id, |w| w.notify_readable = on);
    }

    /// Turns `notify_writable` calls for watch `id` on or off.
    pub fn set_notify_writable(&mut self, id: ConnId, on: bool) {
        self.update_watch(id, |w| w.notify_writable = on);
    }

    /// Hands a descriptor back to the caller without closing it (EventMachine's
    /// `detach`): an attached or watched one, or a plain TCP or Unix connection's socket
    /// (not one speaking TLS, whose session cannot go with it). Bytes still queued for
    /// it are not sent. `unbind` follows with [`UnbindReason::Detached`]. `None` if `id`
    /// is none of these.
    pub fn detach(&mut self, id: ConnId) -> Option<RawFd> {
        let registry = self.poll.registry();
        let fd = match self.descriptors.get_mut(id.slot) {
            Some(Descriptor::Conn(c)) if c.serial == id.serial => {
                let plain_socket =
                    matches!(c.stream, Some(Stream::Tcp(_) | Stream::Unix(_))) && c.tls.is_none();
                if !plain_socket && !matches!(c.stream, Some(Stream::Fd(_))) {
                    return None;
                }
                let mut stream = c.stream.take()?;
                stream.deregister(registry);
                match stream {
                    Stream::Fd(fd) => fd.release(),
                    socket => socket.into_socket_fd()?,
                }
            }
            Some(Descriptor::Watch(w)) if w.serial == id.serial => {
                if w.registered {
                    w.fd.deregister(registry);
                    w.registered = false;
                }
                w.fd.fd()
            }
            _ => return None,
        };
        self.close_descriptor(id, UnbindReason::Detached);
        Some(fd)
    }

    fn watch_mut(&mut self, id: ConnId) -> Option<&mut Watch> {
        match self.descriptors.get_mut(id.slot) {
            Some(Descriptor::Watch(w)) if w.serial == id.serial => Some(w),
            _ => None,
        }
    }

    fn update_watch(&mut self, id: ConnId, change: impl FnOnce(&mut Watch)) {
        let registry = self.poll.registry();
        let Some(Descriptor::Watch(w)) = self.descriptors.get_mut(id.slot) else {
            return;
        };
        if w.serial != id.serial || w.closing.is_some() {
            return;
        }
        change(w);
        rearm(w, registry, Token(id.slot));
    }

    pub(crate) fn on_watch_event(&mut self, id: ConnId, ready: Readiness) {
        let Some(w) = self.watch_mut(id) else { return };
        let (readable, writable) = (
            (ready.readable || ready.hangup) && w.notify_readable,
            ready.writable && w.notify_writable,
        );
        if readable {
            self.notify(id, |h, cx| h.notify_readable(cx));
        }
        if writable {
            self.notify(id, |h, cx| h.notify_writable(cx));
        }
        // Re-arm: epoll re-checks readiness on modification, which makes the edge-triggered
        // registration behave level-triggered for watches.
        let registry = self.poll.registry();
        if let Some(Descriptor::Watch(w)) = self.descriptors.get_mut(id.slot)
            && w.serial == id.serial
            && w.closing.is_none()
        {
            rearm(w, registry, Token(id.slot));
        }
    }

    pub(crate) fn retire_watch(&mut self, id: ConnId, mut w: Watch) {
        if w.registered {
            w.fd.deregister(self.poll.registry());
        }
        let reason = w.closing.unwrap_or(UnbindReason::ClosedByUs);
        if let Some(handler) = w.handler.take() {
            self.run_unbind(id, handler, reason);
        }
    }
}

fn rearm(w: &mut Watch, registry: &mio::Registry, token: Token) {
    match (w.interest(), w.registered) {
        (Some(interest), true) => {
            let _ = w.fd.reregister(registry, token, interest);
        }
        (Some(interest), false) => {
            w.registered = w.fd.register(registry, token, interest).is_ok();
        }
        (None, true) => {
            w.fd.deregister(registry);
            w.registered = false;
        }
        (None, false) => {}
    }
}
