//! UDP sockets: one handler per socket, one callback per datagram with its sender.
//!
//! Datagrams are received whole into a 64 KiB buffer (EventMachine truncates at 16 KiB).
//! Sends go straight out; when the socket's buffer is full they wait in a queue bounded by
//! the high-water mark, and datagrams beyond it are dropped and counted — UDP promises no
//! delivery, and a queue that grows without bound would be worse.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;
use mio::{Interest, Token};

use super::{Descriptor, Reactor, Readiness};
use crate::addr::IntoSocketAddr;
use crate::handler::{Handler, UnbindReason};
use crate::id::ConnId;

/// Large enough for any UDP payload (65,507 bytes over IPv4).
const DATAGRAM_BUFFER: usize = 64 * 1024;
/// Datagrams received per socket per event before the others get a turn.
const DATAGRAMS_PER_EVENT: usize = 64;

pub(crate) struct Datagram {
    pub(crate) serial: u64,
    pub(crate) socket: UdpSocket,
    pub(crate) handler: Option<Box<dyn Handler>>,
    queue: VecDeque<(Vec<u8>, SocketAddr)>,
    queued_bytes: usize,
    high_water: usize,
    pub(crate) last_sender: Option<SocketAddr>,
    pub(crate) closing: Option<UnbindReason>,
    dropped: u64,
}

impl Reactor {
    /// Opens a UDP socket bound to `addr` (port 0 picks one; see
    /// [`local_addr`](Self::local_addr)). Each datagram reaches
    /// [`Handler::receive_datagram`].
    pub fn open_datagram_socket<H: Handler>(
        &mut self,
        addr: impl IntoSocketAddr,
        handler: H,
    ) -> io::Result<ConnId> {
        let addr = addr.into_socket_addr()?;
        let mut socket = UdpSocket::bind(addr)?;
        let serial = self.next_serial();
        let entry = self.descriptors.vacant_entry();
        let slot = entry.key();
        self.poll.registry().register(
            &mut socket,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Descriptor::Datagram(Datagram {
            serial,
            socket,
            handler: Some(Box::new(handler)),
            queue: VecDeque::new(),
            queued_bytes: 0,
            high_water: self.defaults.high_water,
            last_sender: None,
            closing: None,
            dropped: 0,
        }));
        let id = ConnId { slot, serial };
        self.notify(id, |h, cx| h.post_init(cx));
        Ok(id)
    }

    /// Sends `data` as one datagram from socket `id` to `to`. Returns `false` if the
    /// socket is gone, the datagram is too large, or the send queue is full (then the
    /// datagram is dropped and counted in [`datagrams_dropped`](Self::datagrams_dropped)).
    pub fn send_datagram(&mut self, id: ConnId, data: &[u8], to: impl IntoSocketAddr) -> bool {
        let Ok(to) = to.into_socket_addr() else {
            return false;
        };
        let Some(d) = self.datagram_mut(id) else {
            return false;
        };
        if d.closing.is_some() {
            return false;
        }
        if d.queue.is_empty() {
            match d.socket.send_to(data, to) {
                Ok(_) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        if d.queued_bytes + data.len() > d.high_water {
            d.dropped += 1;
            return false;
        }
        d.queued_bytes += data.len();
        d.queue.push_back((data.to_vec(), to));
        true
    }

    /// Datagrams dropped because socket `id`'s send queue was full.
    pub fn datagrams_dropped(&self, id: ConnId) -> u64 {
        self.datagram(id).map_or(0, |d| d.dropped)
    }

    pub(crate) fn datagram(&self, id: ConnId) -> Option<&Datagram> {
        match self.descriptors.get(id.slot) {
            Some(Descriptor::Datagram(d)) if d.serial == id.serial => Some(d),
            _ => None,
        }
    }

    fn datagram_mut(&mut self, id: ConnId) -> Option<&mut Datagram> {
        match self.descriptors.get_mut(id.slot) {
            Some(Descriptor::Datagram(d)) if d.serial == id.serial => Some(d),
            _ => None,
        }
    }

    /// For `send_to` on a datagram socket: where a reply goes.
    pub(crate) fn datagram_reply_address(&self, id: ConnId) -> Option<SocketAddr> {
        self.datagram(id)?.last_sender
    }

    pub(crate) fn on_datagram_event(&mut self, id: ConnId, ready: Readiness) {
        if ready.writable {
            self.flush_datagrams(id);
        }
        if ready.readable || ready.hangup {
            self.receive_datagrams(id);
        }
    }

    fn flush_datagrams(&mut self, id: ConnId) {
        let Some(d) = self.datagram_mut(id) else {
            return;
        };
        while let Some((data, to)) = d.queue.front() {
            match d.socket.send_to(data, *to) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Sent, or failed for this datagram alone (unreachable port, too big).
                _ => {
                    d.queued_bytes -= data.len();
                    d.queue.pop_front();
                }
            }
        }
    }

    pub(crate) fn receive_datagrams(&mut self, id: ConnId) {
        if self.datagram_buf.len() < DATAGRAM_BUFFER {
            self.datagram_buf.resize(DATAGRAM_BUFFER, 0);
        }
        for _ in 0..DATAGRAMS_PER_EVENT {
            let Reactor {
                descriptors,
                datagram_buf,
                ..
            } = self;
            let Some(Descriptor::Datagram(d)) = descriptors.get_mut(id.slot) else {
                return;
            };
            if d.serial != id.serial || d.closing.is_some() {
                return;
            }
            match d.socket.recv_from(datagram_buf) {
                Ok((n, from)) => {
                    d.last_sender = Some(from);
                    let buf = std::mem::take(&mut self.datagram_buf);
                    self.notify(id, |h, cx| h.receive_datagram(cx, &buf[..n], from));
                    self.datagram_buf = buf;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here (port unreachable); they concern one datagram.
                Err(_) => {}
            }
        }
        self.carry_over.add(id.slot, id.serial);
    }

    pub(crate) fn retire_datagram(&mut self, id: ConnId, mut d: Datagram) {
        let _ = self.poll.registry().deregister(&mut d.socket);
        let reason = d.closing.unwrap_or(UnbindReason::ClosedByUs);
        if let Some(handler) = d.handler.take() {
            self.run_unbind(id, handler, reason);
        }
    }
}
