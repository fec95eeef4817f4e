//! A stream connection's life as one enum ([`Life`]), and every change to it as a plain
//! function that returns what the loop must do. No sockets, no timers, no handlers:
//! `connection.rs` asks, this module answers, and `connection.rs` carries the answer out.
//! Impossible combinations (reading while queued for reap, lingering while connecting,
//! a reset remembered on a connection that already closed) cannot be written down.
//!
//! `LIFECYCLE.md` beside this file tells the same story as a diagram.

use crate::handler::UnbindReason;
use crate::id::TimerId;

/// Where a connection is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    /// Waiting for the defer pool to resolve a host name; no socket yet. Sends queue.
    Resolving { write: WriteHalf },
    /// A non-blocking connect is in flight. Sends queue.
    Connecting { write: WriteHalf },
    /// Connected; each half ends on its own.
    Open { read: ReadHalf, write: WriteHalf },
    /// Everything is written and our FIN sent, but the peer had sent input we never
    /// read (closing now would answer it with a reset that can destroy the tail of what
    /// we wrote): input is read and discarded until the peer's FIN or `timer`.
    Lingering {
        reason: UnbindReason,
        timer: TimerId,
    },
    /// Queued for `reap`; `unbind` will say `reason`. Nothing is read or written.
    Reaping { reason: UnbindReason },
}

/// Our sending half.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WriteHalf {
    Open,
    /// `close_write`: FIN goes out once the outbound queue is empty.
    FinAfterFlush,
    /// Our FIN is out (or the socket failed and nothing more can be written).
    Shut,
    /// `close_after_writing`: reading has stopped, and the connection closes (or
    /// lingers) with this reason once the queue is written.
    CloseAfterFlush(UnbindReason),
}

/// The peer's sending half, as we read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReadHalf {
    Open,
    /// The peer's FIN arrived.
    Eof,
    /// An I/O error (a reset) arrived while bytes the peer sent before it were still
    /// unread: they are read and delivered, then the connection closes with this reason.
    Failed(UnbindReason),
}

/// What to do after the peer's FIN ([`Life::peer_eof`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OnEof {
    /// Close now with this reason.
    Close(UnbindReason),
    /// Ask the handler (`peer_closed`): close after writing, or keep writing.
    AskHandler,
    /// Nothing yet: our own FIN or close is still waiting for the queue to drain.
    Wait,
}

/// What to do once the outbound queue is empty ([`Life::queue_emptied`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OnEmptied {
    Nothing,
    /// Send our FIN (shut the write side); if `then_close`, the peer's FIN is already in,
    /// so close with [`UnbindReason::PeerClosed`] too.
    SendFin {
        then_close: bool,
    },
    /// Close now with this reason.
    Close(UnbindReason),
    /// Send our FIN, arm the linger timer, and call [`Life::linger`] with it.
    Linger(UnbindReason),
}

/// What to do after an I/O error ([`Life::io_failed`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// Close now with this reason.
    Close(UnbindReason),
    /// The peer's earlier bytes are still unread: keep reading them; the next EOF or
    /// error closes the connection with the recorded reason.
    DeliverFirst,
}

impl Life {
    /// A connection that starts connected (accepted, attached, a child's pipes).
    pub(crate) fn open() -> Life {
        Life::Open {
            read: ReadHalf::Open,
            write: WriteHalf::Open,
        }
    }

    /// An outbound connection whose connect is in flight.
    pub(crate) fn connecting() -> Life {
        Life::Connecting {
            write: WriteHalf::Open,
        }
    }

    /// An outbound connection waiting for its host name.
    pub(crate) fn resolving() -> Life {
        Life::Resolving {
            write: WriteHalf::Open,
        }
    }

    /// The write half while it still matters (not lingering, not reaping).
    fn write_half(&mut self) -> Option<&mut WriteHalf> {
        match self {
            Life::Resolving { write } | Life::Connecting { write } | Life::Open { write, .. } => {
                Some(write)
            }
            Life::Lingering { .. } | Life::Reaping { .. } => None,
        }
    }

    /// Whether the connect has finished (this side's socket is connected).
    pub(crate) fn is_connected(&self) -> bool {
        matches!(self, Life::Open { .. } | Life::Lingering { .. })
    }

    /// Queued for `reap`.
    pub(crate) fn is_reaping(&self) -> bool {
        matches!(self, Life::Reaping { .. })
    }

    pub(crate) fn is_lingering(&self) -> bool {
        matches!(self, Life::Lingering { .. })
    }

    /// Any close has been asked for: after writing, lingering, or queued for reap.
    pub(crate) fn is_closing(&self) -> bool {
        match self {
            Life::Resolving { write } | Life::Connecting { write } | Life::Open { write, .. } => {
                matches!(write, WriteHalf::CloseAfterFlush(_))
            }
            Life::Lingering { .. } | Life::Reaping { .. } => true,
        }
    }

    /// Whether the peer's FIN has arrived.
    pub(crate) fn peer_finished(&self) -> bool {
        self.read_half() == Some(&ReadHalf::Eof)
    }

    /// Whether the peer is still sending: open, no FIN, no error.
    pub(crate) fn peer_sending(&self) -> bool {
        self.read_half() == Some(&ReadHalf::Open)
    }

    /// Whether a failure is waiting for the bytes before it to be read.
    pub(crate) fn delivering_before_failure(&self) -> bool {
        matches!(self.read_half(), Some(ReadHalf::Failed(_)))
    }

    fn read_half(&self) -> Option<&ReadHalf> {
        match self {
            Life::Open { read, .. } => Some(read),
            _ => None,
        }
    }

    /// Whether new bytes may be queued (`send_data`): our write half is open.
    pub(crate) fn accepts_output(&self) -> bool {
        match self {
            Life::Resolving { write } | Life::Connecting { write } | Life::Open { write, .. } => {
                *write == WriteHalf::Open
            }
            Life::Lingering { .. } | Life::Reaping { .. } => false,
        }
    }

    /// Closing after writing while the peer still sends: reading has stopped, but may go
    /// on where the queue cannot go out without it (a TLS handshake to finish).
    pub(crate) fn closing_with_peer_sending(&self) -> bool {
        matches!(
            self,
            Life::Open {
                read: ReadHalf::Open,
                write: WriteHalf::CloseAfterFlush(_)
            }
        )
    }

    /// Whether the queue may be written to the socket now.
    pub(crate) fn may_flush(&self) -> bool {
        match self {
            Life::Open { read, .. } => !matches!(read, ReadHalf::Failed(_)),
            Life::Lingering { .. } => true,
            _ => false,
        }
    }

    /// Whether the lifecycle allows reading (pause and backpressure are the read
    /// gate's business). A lingering connection reads, to discard.
    pub(crate) fn may_read(&self) -> bool {
        match self {
            Life::Open { read, write } => {
                *read != ReadHalf::Eof && !matches!(write, WriteHalf::CloseAfterFlush(_))
            }
            Life::Lingering { .. } => true,
            _ => false,
        }
    }

    /// One direction has ended (the peer's FIN or error came, or our FIN went out) and
    /// no close is under way: what the half-close timeout watches.
    pub(crate) fn is_half_closed(&self) -> bool {
        match self {
            Life::Open { read, write } => {
                !matches!(write, WriteHalf::CloseAfterFlush(_))
                    && (*read != ReadHalf::Open || *write == WriteHalf::Shut)
            }
            _ => false,
        }
    }

    /// The reason a close-after-writing started now should give: the peer's FIN makes
    /// it an orderly end on their part.
    pub(crate) fn after_writing_reason(&self) -> UnbindReason {
        if self.peer_finished() {
            UnbindReason::PeerClosed
        } else {
            UnbindReason::ClosedByUs
        }
    }

    /// The name resolved: now connecting.
    pub(crate) fn resolved(&mut self) {
        if let Life::Resolving { write } = self {
            *self = Life::Connecting {
                write: std::mem::replace(write, WriteHalf::Open),
            };
        }
    }

    /// The connect finished: now open, keeping what was asked of the write half.
    pub(crate) fn connected(&mut self) {
        if let Life::Resolving { write } | Life::Connecting { write } = self {
            *self = Life::Open {
                read: ReadHalf::Open,
                write: std::mem::replace(write, WriteHalf::Open),
            };
        }
    }

    /// `close_write`: FIN after the queue. Returns whether it changed anything.
    pub(crate) fn close_write(&mut self) -> bool {
        match self.write_half() {
            Some(write @ WriteHalf::Open) => {
                *write = WriteHalf::FinAfterFlush;
                true
            }
            _ => false,
        }
    }

    /// `close_after_writing`: stop reading, close once the queue is written. The first
    /// close wins. Returns whether it changed anything.
    pub(crate) fn close_after_writing(&mut self, reason: UnbindReason) -> bool {
        match self.write_half() {
            Some(WriteHalf::CloseAfterFlush(_)) | None => false,
            Some(write) => {
                *write = WriteHalf::CloseAfterFlush(reason);
                true
            }
        }
    }

    /// Close now, dropping the queue: queued for reap. A close-now overrides a pending
    /// close-after-writing or a linger (whose timer is returned to be cancelled); once
    /// reaping, the first reason stays. `None` if it was already reaping.
    pub(crate) fn close_now(&mut self, reason: UnbindReason) -> Option<Option<TimerId>> {
        let linger_timer = match self {
            Life::Reaping { .. } => return None,
            Life::Lingering { timer, .. } => Some(*timer),
            _ => None,
        };
        *self = Life::Reaping { reason };
        Some(linger_timer)
    }

    /// Whether the write half ends once the queue is written (a FIN or a close is due):
    /// TLS puts its close_notify ahead of that.
    pub(crate) fn ends_writing(&self) -> bool {
        matches!(
            self,
            Life::Open {
                write: WriteHalf::FinAfterFlush | WriteHalf::CloseAfterFlush(_),
                ..
            }
        )
    }

    /// The outbound queue is empty. `unread_input` says whether the socket holds bytes we
    /// never read; it costs a system call, so it is asked only by a close after writing.
    pub(crate) fn queue_emptied(&mut self, unread_input: impl FnOnce() -> bool) -> OnEmptied {
        let Life::Open { read, write } = self else {
            return OnEmptied::Nothing;
        };
        match write {
            WriteHalf::CloseAfterFlush(reason) => {
                if *read == ReadHalf::Open && unread_input() {
                    OnEmptied::Linger(reason.clone())
                } else {
                    OnEmptied::Close(reason.clone())
                }
            }
            WriteHalf::FinAfterFlush => {
                *write = WriteHalf::Shut;
                OnEmptied::SendFin {
                    then_close: *read == ReadHalf::Eof,
                }
            }
            WriteHalf::Open | WriteHalf::Shut => OnEmptied::Nothing,
        }
    }

    /// Our FIN is out after a close-after-writing, and the linger timer armed.
    pub(crate) fn linger(&mut self, reason: UnbindReason, timer: TimerId) {
        *self = Life::Lingering { reason, timer };
    }

    /// The linger timer fired: the reason to close with, if still lingering.
    pub(crate) fn linger_expired(&self) -> Option<UnbindReason> {
        match self {
            Life::Lingering { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }

    /// The peer's FIN arrived (a read returned 0).
    pub(crate) fn peer_eof(&mut self) -> OnEof {
        match self {
            Life::Lingering { reason, .. } => OnEof::Close(reason.clone()),
            Life::Open { read, write } => match std::mem::replace(read, ReadHalf::Eof) {
                ReadHalf::Failed(reason) => OnEof::Close(reason),
                ReadHalf::Eof => OnEof::Wait,
                ReadHalf::Open => match write {
                    WriteHalf::Open => OnEof::AskHandler,
                    // Both halves are done once our FIN is out.
                    WriteHalf::Shut => OnEof::Close(UnbindReason::PeerClosed),
                    WriteHalf::FinAfterFlush | WriteHalf::CloseAfterFlush(_) => OnEof::Wait,
                },
            },
            _ => OnEof::Wait,
        }
    }

    /// An I/O error: `reason` is its classification, `unread_input` whether bytes the
    /// peer sent before it wait unread.
    pub(crate) fn io_failed(&mut self, reason: UnbindReason, unread_input: bool) -> OnFailure {
        match self {
            Life::Open { read, write }
                if *read == ReadHalf::Open
                    && !matches!(write, WriteHalf::CloseAfterFlush(_))
                    && unread_input =>
            {
                *read = ReadHalf::Failed(reason);
                *write = WriteHalf::Shut;
                OnFailure::DeliverFirst
            }
            Life::Open {
                read: ReadHalf::Failed(first),
                ..
            } => OnFailure::Close(first.clone()),
            _ => OnFailure::Close(reason),
        }
    }

    /// The reason `unbind` gives for a connection taken out of the slab.
    pub(crate) fn unbind_reason(&self) -> UnbindReason {
        match self {
            Life::Reaping { reason } | Life::Lingering { reason, .. } => reason.clone(),
            _ => UnbindReason::ClosedByUs,
        }
    }

    /// The linger timer, if lingering (to cancel when the connection goes).
    pub(crate) fn linger_timer(&self) -> Option<TimerId> {
        match self {
            Life::Lingering { timer, .. } => Some(*timer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer() -> TimerId {
        TimerId { slot: 7, serial: 7 }
    }

    fn open() -> Life {
        Life::open()
    }

    #[test]
    fn a_close_after_writing_while_resolving_still_connects_and_then_drains() {
        // becb8c5: close_after_writing while a name was resolving dropped the queue.
        let mut life = Life::Resolving {
            write: WriteHalf::Open,
        };
        assert!(life.close_after_writing(UnbindReason::ClosedByUs));
        assert!(!life.is_reaping(), "resolving goes on");
        assert!(!life.accepts_output(), "nothing more may be queued");
        life.resolved();
        life.connected();
        assert!(life.may_flush(), "the queue is written once connected");
        assert!(!life.may_read());
        assert_eq!(
            life.queue_emptied(|| false),
            OnEmptied::Close(UnbindReason::ClosedByUs)
        );
    }

    #[test]
    fn close_write_before_connecting_sends_fin_once_connected_and_flushed() {
        let mut life = Life::Connecting {
            write: WriteHalf::Open,
        };
        assert!(life.close_write());
        assert!(!life.close_write(), "once");
        life.connected();
        assert!(life.may_read(), "a half-close keeps reading");
        assert_eq!(
            life.queue_emptied(|| false),
            OnEmptied::SendFin { then_close: false }
        );
        assert!(life.is_half_closed());
        assert_eq!(life.peer_eof(), OnEof::Close(UnbindReason::PeerClosed));
    }

    #[test]
    fn the_peers_fin_asks_the_handler_only_while_we_still_write() {
        let mut life = open();
        assert_eq!(life.peer_eof(), OnEof::AskHandler);
        assert!(life.is_half_closed());
        assert!(!life.may_read(), "nothing more to read after EOF");
        assert_eq!(life.after_writing_reason(), UnbindReason::PeerClosed);

        let mut life = open();
        life.close_write();
        assert_eq!(life.peer_eof(), OnEof::Wait, "our FIN is still queued");
        assert_eq!(
            life.queue_emptied(|| false),
            OnEmptied::SendFin { then_close: true }
        );
    }

    #[test]
    fn closing_after_writing_with_unread_input_lingers_instead_of_resetting() {
        let mut life = open();
        life.close_after_writing(UnbindReason::ClosedByUs);
        assert_eq!(
            life.queue_emptied(|| true),
            OnEmptied::Linger(UnbindReason::ClosedByUs)
        );
        life.linger(UnbindReason::ClosedByUs, timer());
        assert!(life.may_read(), "lingering reads, to discard");
        assert!(life.is_closing() && !life.is_reaping());
        assert_eq!(life.peer_eof(), OnEof::Close(UnbindReason::ClosedByUs));
        assert_eq!(life.linger_expired(), Some(UnbindReason::ClosedByUs));
        assert_eq!(life.close_now(UnbindReason::Reset), Some(Some(timer())));
        assert_eq!(life.unbind_reason(), UnbindReason::Reset);
    }

    #[test]
    fn the_first_close_now_wins_and_overrides_a_close_after_writing() {
        let mut life = open();
        life.close_after_writing(UnbindReason::ClosedByUs);
        assert!(
            !life.close_after_writing(UnbindReason::PeerClosed),
            "first wins"
        );
        assert_eq!(life.close_now(UnbindReason::Reset), Some(None));
        assert_eq!(life.close_now(UnbindReason::ClosedByUs), None);
        assert_eq!(life.unbind_reason(), UnbindReason::Reset);
        assert!(!life.may_read() && !life.may_flush() && !life.accepts_output());
    }

    #[test]
    fn a_reset_with_bytes_unread_delivers_them_then_closes_with_the_reset() {
        let mut life = open();
        assert_eq!(
            life.io_failed(UnbindReason::Reset, true),
            OnFailure::DeliverFirst
        );
        assert!(life.may_read(), "the earlier bytes are still read");
        assert!(
            !life.may_flush() && !life.accepts_output(),
            "no more writing"
        );
        assert!(life.is_half_closed(), "the half-close timeout bounds it");
        assert_eq!(
            life.io_failed(UnbindReason::Error(std::io::ErrorKind::Other), true),
            OnFailure::Close(UnbindReason::Reset),
            "a second error closes with the first reason"
        );
        let mut life = open();
        life.io_failed(UnbindReason::Reset, true);
        assert_eq!(life.peer_eof(), OnEof::Close(UnbindReason::Reset));
    }

    #[test]
    fn a_reset_with_nothing_unread_closes_at_once() {
        let mut life = open();
        assert_eq!(
            life.io_failed(UnbindReason::Reset, false),
            OnFailure::Close(UnbindReason::Reset)
        );
        let mut life = open();
        life.close_after_writing(UnbindReason::ClosedByUs);
        assert_eq!(
            life.io_failed(UnbindReason::Reset, true),
            OnFailure::Close(UnbindReason::Reset),
            "a connection already closing does not wait for input it won't read"
        );
    }
}
