//! Framing: cutting the bytes of a connection into the messages of a protocol, as
//! EventMachine's `BufferedTokenizer` and `EM::Protocols::LineText2` do, plus a
//! length-prefixed framer.
//!
//! This module owns the reading of frames and nothing else: it is pure code that a handler
//! owns and feeds from [`Handler::receive_data`](crate::Handler::receive_data). It touches
//! no socket, keeps no timer and decides nothing about a connection; and it never holds
//! more than its limit, whatever the peer sends.
//!
//! ## Why a handler needs framing
//! TCP delivers a stream of bytes, not messages. `receive_data` gets whatever one read
//! returned: half a line, three lines and the start of a fourth, or a line one byte at a
//! time. A protocol handler therefore keeps the start of an unfinished message between
//! calls and cuts complete ones out as their ends arrive. Written by hand, that code is
//! where the bugs are: a delimiter split across two reads, a message that grows without
//! bound because its end never comes, the bytes after a "switch" (`DATA 5` and then five
//! binary bytes) read in the old mode. The framers here do it once.
//!
//! | EventMachine | here |
//! |---|---|
//! | `BufferedTokenizer.new(delimiter)`, `extract(data)` → array of tokens | [`Tokenizer::new`]`(delimiter, limit)`, [`Tokenizer::next_token`] in a loop |
//! | `BufferedTokenizer#flush` | [`Tokenizer::flush`] |
//! | `include LineText2`, `receive_line(line)` | a [`LineProtocol`] field, [`Frame::Line`] |
//! | `set_binary_mode(size)` / `set_text_mode(size)`, `receive_binary_data`, `receive_end_of_binary_data` | [`LineProtocol::set_binary_mode`], [`Frame::Binary`], [`Frame::BinaryEnd`] |
//! | `set_binary_mode` / `set_text_mode` with no size | [`LineProtocol::set_raw_mode`] |
//! | `set_line_mode`, `set_delimiter` | [`LineProtocol::set_line_mode`], [`LineProtocol::set_delimiter`] |
//! | (no limit; LineText2's `MaxBinaryLength` is not enforced) | every framer has a limit; going over it is [`TooLong`] |
//! | (none) | [`LengthPrefixed`]: a 1-, 2-, 4- or 8-byte big-endian length, then the frame |
//!
//! ## How a handler uses a framer
//! EventMachine pushes: `LineText2` calls `receive_line` for each line it finds. Here the
//! handler pulls: it calls `next_frame` (or `next_token`) with the read until it returns
//! `None`, each call taking one frame off the front of the read. Between two calls the
//! handler may do anything, including switch the framer's mode; the next call reads on
//! from exactly where the last frame ended. That is what makes a switch in the middle of
//! a read correct without any help: the bytes after the switch point have not been read
//! yet, so they are read in the new mode.
//!
//! ```
//! use ember::protocols::{Frame, LineProtocol};
//! use ember::{Context, Handler};
//!
//! /// `SET <n>` is followed by n bytes of value; `GET` answers the last value.
//! #[derive(Default)]
//! struct TinyStore {
//!     protocol: LineProtocol,
//!     incoming: Vec<u8>,
//!     value: Vec<u8>,
//! }
//!
//! impl Handler for TinyStore {
//!     fn receive_data(&mut self, cx: &mut Context<'_>, mut data: &[u8]) {
//!         while let Some(frame) = self.protocol.next_frame(&mut data) {
//!             match frame {
//!                 Ok(Frame::Line(b"GET")) => {
//!                     cx.send_data(&self.value);
//!                     cx.send_data(b"\r\n");
//!                 }
//!                 Ok(Frame::Line(line)) => match parse_set(line) {
//!                     // The next n bytes, in this read or later ones, are the value.
//!                     Some(n) if n <= 1 << 20 => self.protocol.set_binary_mode(n),
//!                     _ => {
//!                         cx.send_data(b"ERROR\r\n");
//!                     }
//!                 },
//!                 Ok(Frame::Binary(bytes)) => self.incoming.extend_from_slice(bytes),
//!                 Ok(Frame::BinaryEnd) => {
//!                     self.value = std::mem::take(&mut self.incoming);
//!                     cx.send_data(b"STORED\r\n");
//!                 }
//!                 Err(too_long) => {
//!                     // The peer went over the limit: say why, and close.
//!                     cx.send_data(format!("ERROR {too_long}\r\n").as_bytes());
//!                     cx.close_after_writing();
//!                     return;
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! fn parse_set(line: &[u8]) -> Option<u64> {
//!     std::str::from_utf8(line.strip_prefix(b"SET ")?).ok()?.parse().ok()
//! }
//! ```
//!
//! A frame borrows the framer (or the read), so it lives until the next call: copy what
//! must outlive it. A frame that arrived whole in one read is a slice of that read, not a
//! copy; only a frame that spans reads is assembled in the framer's buffer.
//!
//! ## Limits, and closing on overflow
//! EventMachine's tokenizer grows its buffer for as long as the peer sends bytes without a
//! delimiter; a peer that never sends one takes all the memory there is. Every framer here
//! has a limit instead (for lines, [`DEFAULT_LIMIT`] unless given), and holds at most the
//! limit plus a delimiter or a prefix ([`Tokenizer::buffered_len`]): bytes past it are not
//! kept. Going over is reported once, as soon as it is certain (for a line, when the limit
//! is passed, not when its delimiter finally arrives; for a length prefix, when the prefix
//! is read), as `Err(`[`TooLong`]`)`. The framer then skips the rest of the oversized frame
//! and reads on after it, so a handler may answer an error and continue; most close the
//! connection, as in the example above: the error line is written, then the connection
//! closes and [`Handler::unbind`](crate::Handler::unbind) says
//! [`UnbindReason::ClosedByUs`](crate::UnbindReason::ClosedByUs). Keep the [`TooLong`] in
//! the handler's state if `unbind` must know why.
//!
//! Binary blocks ([`Frame::Binary`]) and raw mode are never buffered: their bytes are
//! handed back as they arrive, so a block of any size costs no memory here, and a handler
//! that wants a block whole collects it itself, up to a limit it chooses.

mod length_prefixed;
mod line;
mod tokenizer;

use std::fmt;

pub use length_prefixed::{LengthPrefixed, Prefix};
pub use line::{Frame, LineProtocol, Mode};
pub use tokenizer::Tokenizer;

/// The line limit of [`Tokenizer::default`] and [`LineProtocol::new`]: 64 KiB.
pub const DEFAULT_LIMIT: usize = 64 * 1024;

/// A frame over its framer's limit. None of it past the limit was kept, and the framer
/// skips the rest of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLong {
    /// The limit, in bytes (a line's without its delimiter, a frame's without its prefix).
    pub limit: usize,
    /// How long the frame is, when known: a length prefix says it, and a line over the
    /// limit that arrived whole in one read shows it. `None` when the limit was passed
    /// before the frame's end arrived.
    pub length: Option<u64>,
}

/// The reason a connection closed for a frame over the limit ends with
/// ([`Context::close_after_writing_with`](crate::Context::close_after_writing_with)).
impl From<TooLong> for crate::UnbindReason {
    fn from(too_long: TooLong) -> Self {
        crate::UnbindReason::ProtocolError(too_long.to_string().into())
    }
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.length {
            Some(length) => write!(
                f,
                "frame of {length} bytes over the limit of {} bytes",
                self.limit
            ),
            None => write!(f, "frame over the limit of {} bytes", self.limit),
        }
    }
}

impl std::error::Error for TooLong {}
