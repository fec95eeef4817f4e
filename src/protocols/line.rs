//! EventMachine's `LineText2`: lines, and blocks of binary data between them. See the
//! [module docs](super) for how a handler uses it.

use super::tokenizer::Tokenizer;
use super::{DEFAULT_LIMIT, TooLong};

/// What a [`LineProtocol`] reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lines (EventMachine's line mode, `receive_line`).
    Lines,
    /// A binary block with this many bytes still to come, then [`Frame::BinaryEnd`] and
    /// lines again (EventMachine's `set_binary_mode(size)`).
    Binary {
        /// Bytes of the block not yet handed back.
        left: u64,
    },
    /// Binary data with no end, until [`LineProtocol::set_line_mode`] (EventMachine's
    /// `set_binary_mode` with no size).
    Raw,
}

/// One frame of a [`LineProtocol`] stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A line, without its delimiter (EventMachine's `receive_line`).
    Line(&'a [u8]),
    /// Bytes of a binary block or of raw mode, as they arrived: a block comes in as many
    /// pieces as it took reads (EventMachine's `receive_binary_data`).
    Binary(&'a [u8]),
    /// The block set with [`LineProtocol::set_binary_mode`] is complete and lines follow
    /// (EventMachine's `receive_end_of_binary_data`). A block of 0 bytes is this alone.
    BinaryEnd,
}

/// Lines, with binary blocks between them (EventMachine's `LineText2`): the framing of
/// SMTP, POP3, memcached's text protocol, beanstalkd, Redis's inline commands, STOMP.
///
/// Feed it each read with [`next_frame`](Self::next_frame) until it returns `None`.
/// Between two frames, a handler may switch what comes next:
/// [`set_binary_mode(n)`](Self::set_binary_mode) (the next `n` bytes are a binary block),
/// [`set_raw_mode`](Self::set_raw_mode), [`set_line_mode`](Self::set_line_mode),
/// [`set_delimiter`](Self::set_delimiter). The switch takes effect at the exact byte where
/// the last frame ended, even in the middle of a read: the rest of the read goes to the
/// new mode. A switch made between reads applies to any unfinished line too: its bytes
/// become the start of what the new mode reads.
///
/// A line is handed back without its delimiter; with the delimiter `\n` (the default) a
/// `\r` before it goes too, so `\r\n` and `\n` lines read alike (EventMachine's `chomp`).
/// Any other delimiter is removed alone: a proxy that must pass lines on byte for byte
/// uses `\r\n` as the delimiter and appends it again. A line longer than the limit is
/// [`TooLong`] ([`Tokenizer`] says how it is then skipped). Binary data is never buffered:
/// it is handed back in the pieces it came in.
///
/// ```
/// use ember::protocols::{Frame, LineProtocol};
///
/// // "DATA n" announces n bytes of binary data; all of it arrives in one read.
/// let mut protocol = LineProtocol::new();
/// let mut read = &b"HELLO\r\nDATA 5\r\n\0\n\r\n\0BYE\n"[..];
/// let mut seen = Vec::new();
/// while let Some(frame) = protocol.next_frame(&mut read) {
///     match frame.expect("short lines") {
///         Frame::Line(line) => {
///             seen.push(format!("line {}", String::from_utf8_lossy(line)));
///             if let Some(n) = line.strip_prefix(b"DATA ") {
///                 let n = std::str::from_utf8(n).unwrap().parse().unwrap();
///                 protocol.set_binary_mode(n);
///             }
///         }
///         Frame::Binary(bytes) => seen.push(format!("binary {bytes:?}")),
///         Frame::BinaryEnd => seen.push("end".to_owned()),
///     }
/// }
/// assert_eq!(
///     seen,
///     ["line HELLO", "line DATA 5", "binary [0, 10, 13, 10, 0]", "end", "line BYE"]
/// );
/// ```
#[derive(Clone, Debug)]
pub struct LineProtocol {
    lines: Tokenizer,
    mode: Mode,
    /// Bytes a switch took back from `lines` (an unfinished line): they come before the
    /// next input and are read first, in the new mode. Only ever non-empty while `lines`
    /// holds nothing, so the two never need ordering.
    replay: Vec<u8>,
    /// How much of `replay` has been read; the rest is cleared lazily, on the call after
    /// the last of it was handed back.
    replayed: usize,
}

impl Default for LineProtocol {
    fn default() -> Self {
        LineProtocol::new()
    }
}

impl LineProtocol {
    /// Lines ending in `\n` (a `\r` before it stripped too), at most [`DEFAULT_LIMIT`]
    /// bytes each.
    pub fn new() -> LineProtocol {
        LineProtocol::with_delimiter(b"\n", DEFAULT_LIMIT)
    }

    /// Lines ending in `delimiter`, at most `limit` bytes each (without the delimiter).
    ///
    /// # Panics
    /// If `delimiter` is empty.
    pub fn with_delimiter(delimiter: &[u8], limit: usize) -> LineProtocol {
        LineProtocol {
            lines: Tokenizer::new(delimiter, limit),
            mode: Mode::Lines,
            replay: Vec::new(),
            replayed: 0,
        }
    }

    /// What comes next.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The line delimiter.
    pub fn delimiter(&self) -> &[u8] {
        self.lines.delimiter()
    }

    /// The next `len` bytes are a binary block: handed back as [`Frame::Binary`] pieces,
    /// then [`Frame::BinaryEnd`], then lines again (EventMachine's
    /// `set_binary_mode(size)`, also spelled `set_text_mode(size)` there). Replaces the
    /// current mode at once: a block not finished yet gets no `BinaryEnd`.
    pub fn set_binary_mode(&mut self, len: u64) {
        self.take_back_unfinished_line();
        self.mode = Mode::Binary { left: len };
    }

    /// Everything from here on is binary data, until [`set_line_mode`](Self::set_line_mode)
    /// (EventMachine's `set_binary_mode` with no size).
    pub fn set_raw_mode(&mut self) {
        self.take_back_unfinished_line();
        self.mode = Mode::Raw;
    }

    /// Lines from here on (EventMachine's `set_line_mode`); what is left of a binary block
    /// is read as lines.
    pub fn set_line_mode(&mut self) {
        self.mode = Mode::Lines;
    }

    /// Lines end in `delimiter` from here on; an unfinished line is read again with it
    /// (EventMachine's `set_delimiter`).
    ///
    /// # Panics
    /// If `delimiter` is empty.
    pub fn set_delimiter(&mut self, delimiter: &[u8]) {
        self.take_back_unfinished_line();
        self.lines = Tokenizer::new(delimiter, self.lines.limit());
    }

    /// Bytes held and not handed back yet: the start of a line, or bytes a switch took back.
    /// Never more than the line limit plus the delimiter's length.
    pub fn buffered_len(&self) -> usize {
        self.lines.buffered_len() + (self.replay.len() - self.replayed)
    }

    /// Hands back the bytes of an unfinished line and forgets them: at the end of a stream,
    /// the last line when it had no delimiter.
    pub fn flush(&mut self) -> Vec<u8> {
        self.take_back_unfinished_line();
        let rest = self.replay.split_off(self.replayed);
        self.replay.clear();
        self.replayed = 0;
        rest
    }

    /// The next frame, reading from `input` as far as needed and advancing it past what
    /// was read. `None` once `input` is used up with no frame complete (the start of a line
    /// is kept for the next call). `Some(Err(TooLong))` for a line over the limit.
    ///
    /// The frame borrows the protocol or the input, so it must be dropped before the next
    /// call or a switch of mode.
    pub fn next_frame<'s, 'i: 's>(
        &'s mut self,
        input: &mut &'i [u8],
    ) -> Option<Result<Frame<'s>, TooLong>> {
        if self.replayed == self.replay.len() && self.replayed > 0 {
            self.replay.clear();
            self.replayed = 0;
        }
        let strip_cr = self.lines.delimiter() == b"\n";
        let line = move |token: Result<&'s [u8], TooLong>| {
            token.map(|mut line| {
                if strip_cr && let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                Frame::Line(line)
            })
        };
        let left = match self.mode {
            Mode::Binary { left: 0 } => {
                self.mode = Mode::Lines;
                return Some(Ok(Frame::BinaryEnd));
            }
            Mode::Binary { left } => left,
            Mode::Raw => u64::MAX,
            Mode::Lines => {
                if self.replayed < self.replay.len() {
                    let mut replay = &self.replay[self.replayed..];
                    if self.lines.delimiter_end(replay).is_some() {
                        let token = self.lines.next_token(&mut replay);
                        debug_assert!(token.is_some(), "a whole line is in the replay");
                        self.replayed = self.replay.len() - replay.len();
                        return token.map(line);
                    }
                    // The replay starts a line that ends in `input` (or later).
                    let absorbed = self.lines.next_token(&mut replay);
                    debug_assert!(absorbed.is_none() && replay.is_empty());
                    self.replayed = self.replay.len();
                }
                return self.lines.next_token(input).map(line);
            }
        };
        let piece: &'s [u8] = if self.replayed < self.replay.len() {
            let n = clamp(self.replay.len() - self.replayed, left);
            let piece = &self.replay[self.replayed..self.replayed + n];
            self.replayed += n;
            piece
        } else if !input.is_empty() {
            let (piece, rest) = input.split_at(clamp(input.len(), left));
            *input = rest;
            piece
        } else {
            return None;
        };
        if let Mode::Binary { left } = &mut self.mode {
            *left -= piece.len() as u64;
        }
        Some(Ok(Frame::Binary(piece)))
    }

    /// Takes an unfinished line out of the tokenizer, to be read first by the next mode.
    fn take_back_unfinished_line(&mut self) {
        let mut unfinished = self.lines.flush();
        if !unfinished.is_empty() {
            // `lines` only holds bytes once the replay has been read, so this is the
            // whole of what is not yet framed.
            debug_assert_eq!(self.replayed, self.replay.len());
            unfinished.extend_from_slice(&self.replay[self.replayed..]);
            self.replay = unfinished;
            self.replayed = 0;
        }
    }
}

/// `available`, but no more than `wanted`.
fn clamp(available: usize, wanted: u64) -> usize {
    usize::try_from(wanted).map_or(available, |wanted| available.min(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler's loop over `reads`: `DATA n` switches to a block of `n` bytes, `RAW` to
    /// raw mode, `DELIM x` to the delimiter `x`; binary pieces are joined into one entry.
    fn frames(protocol: &mut LineProtocol, reads: &[&[u8]]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut in_binary = false;
        for read in reads {
            let mut read = *read;
            while let Some(frame) = protocol.next_frame(&mut read) {
                match frame {
                    Ok(Frame::Line(line)) => {
                        in_binary = false;
                        let line = String::from_utf8(line.to_vec()).unwrap();
                        out.push(format!("line:{line}"));
                        if let Some(n) = line.strip_prefix("DATA ") {
                            protocol.set_binary_mode(n.parse().unwrap());
                        } else if line == "RAW" {
                            protocol.set_raw_mode();
                        } else if let Some(d) = line.strip_prefix("DELIM ") {
                            protocol.set_delimiter(d.as_bytes());
                        }
                    }
                    Ok(Frame::Binary(bytes)) => {
                        let bytes = String::from_utf8_lossy(bytes);
                        match out.last_mut() {
                            Some(last) if in_binary => last.push_str(&bytes),
                            _ => out.push(format!("bin:{bytes}")),
                        }
                        in_binary = true;
                    }
                    Ok(Frame::BinaryEnd) => {
                        in_binary = false;
                        out.push("end".to_owned());
                    }
                    Err(e) => {
                        in_binary = false;
                        out.push(format!("too long ({})", e.limit));
                    }
                }
            }
            assert!(protocol.buffered_len() <= 64 + protocol.delimiter().len());
        }
        out
    }

    fn in_pieces(stream: &[u8], size: usize) -> Vec<&[u8]> {
        stream.chunks(size).collect()
    }

    #[test]
    fn a_binary_block_announced_by_a_line_is_read_from_the_same_read() {
        let stream = b"HELO x\r\nDATA 5\r\nab\ncdQUIT\nDATA 0\nnext\n";
        let want = [
            "line:HELO x",
            "line:DATA 5",
            "bin:ab\ncd",
            "end",
            "line:QUIT",
            "line:DATA 0",
            "end",
            "line:next",
        ];
        for size in 1..=stream.len() {
            let mut p = LineProtocol::with_delimiter(b"\n", 64);
            assert_eq!(
                frames(&mut p, &in_pieces(stream, size)),
                want,
                "size {size}"
            );
            assert_eq!(p.mode(), Mode::Lines);
        }
    }

    #[test]
    fn raw_mode_takes_everything_until_line_mode() {
        let mut p = LineProtocol::with_delimiter(b"\n", 64);
        let got = frames(&mut p, &[b"RAW\nabc\n", b"def"]);
        assert_eq!(got, ["line:RAW", "bin:abc\ndef"]);
        p.set_line_mode();
        assert_eq!(frames(&mut p, &[b"x\n"]), ["line:x"]);
    }

    #[test]
    fn a_switch_between_reads_makes_the_unfinished_line_the_start_of_the_block() {
        let mut p = LineProtocol::with_delimiter(b"\n", 64);
        assert_eq!(frames(&mut p, &[b"one\ntw"]), ["line:one"]);
        p.set_binary_mode(3);
        assert_eq!(
            frames(&mut p, &[b"o", b"three\n"]),
            ["bin:two", "end", "line:three"]
        );
        // A block shorter than what was taken back: the rest is lines again.
        assert_eq!(frames(&mut p, &[b"abc\ndef"]), ["line:abc"]);
        p.set_binary_mode(1);
        assert_eq!(
            frames(&mut p, &[b"", b"\ngh\ni"]),
            ["bin:d", "end", "line:ef", "line:gh"]
        );
        assert_eq!(p.flush(), b"i");
        assert_eq!(p.buffered_len(), 0);
    }

    #[test]
    fn the_delimiter_changes_mid_read() {
        let stream = b"a\nDELIM ;;\nb;;c\nd;;";
        for size in 1..=stream.len() {
            let mut p = LineProtocol::with_delimiter(b"\n", 64);
            assert_eq!(
                frames(&mut p, &in_pieces(stream, size)),
                ["line:a", "line:DELIM ;;", "line:b", "line:c\nd"],
                "size {size}"
            );
        }
    }

    #[test]
    fn crlf_is_stripped_with_the_default_delimiter_only() {
        let mut p = LineProtocol::new();
        let mut read = &b"a\r\nb\n"[..];
        assert_eq!(p.next_frame(&mut read), Some(Ok(Frame::Line(b"a"))));
        assert_eq!(p.next_frame(&mut read), Some(Ok(Frame::Line(b"b"))));
        let mut p = LineProtocol::with_delimiter(b"\r\n", 64);
        let mut read = &b"a\r\r\n"[..];
        assert_eq!(p.next_frame(&mut read), Some(Ok(Frame::Line(b"a\r"))));
    }

    #[test]
    fn an_overlong_line_is_reported_and_lines_resume_after_it() {
        let mut long = vec![b'x'; 1000];
        long.extend_from_slice(b"\nok\n");
        for size in [1, 7, 64, 1004] {
            let mut p = LineProtocol::with_delimiter(b"\n", 64);
            assert_eq!(
                frames(&mut p, &in_pieces(&long, size)),
                ["too long (64)", "line:ok"],
                "size {size}"
            );
        }
    }
}
