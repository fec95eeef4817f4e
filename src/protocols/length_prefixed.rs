//! Frames preceded by their length: a big-endian prefix of 1, 2, 4 or 8 bytes, then that
//! many bytes. See the [module docs](super) for how a handler uses it.

use super::TooLong;

/// How wide a frame's length prefix is. The prefix is big-endian (network order) and counts
/// the payload only, not itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// One byte: frames of at most 255 bytes.
    U8,
    /// Two bytes: at most 65,535.
    U16,
    /// Four bytes: the usual choice of RPC protocols (Thrift's framed transport, Kafka,
    /// PostgreSQL messages after their type byte).
    U32,
    /// Eight bytes.
    U64,
}

impl Prefix {
    /// The prefix's width in bytes.
    pub fn width(self) -> usize {
        match self {
            Prefix::U8 => 1,
            Prefix::U16 => 2,
            Prefix::U32 => 4,
            Prefix::U64 => 8,
        }
    }

    /// The largest length the prefix can say.
    pub fn max_len(self) -> u64 {
        match self {
            Prefix::U8 => u8::MAX.into(),
            Prefix::U16 => u16::MAX.into(),
            Prefix::U32 => u32::MAX.into(),
            Prefix::U64 => u64::MAX,
        }
    }
}

/// Reads frames that each start with their length (and writes them:
/// [`encode`](Self::encode)).
///
/// Feed it each read with [`next_frame`](Self::next_frame) until it returns `None`; each
/// frame is its payload, without the prefix. A frame that arrived whole in one read is a
/// slice of it (no copy); one that comes in pieces is assembled, so at most `max_frame`
/// bytes are ever held ([`buffered_len`](Self::buffered_len)). A prefix announcing more
/// than `max_frame` is [`TooLong`] at once, before any of the payload is read; the payload
/// is then skipped without being kept, and the next frame read after it.
///
/// ```
/// use ember::protocols::{LengthPrefixed, Prefix};
///
/// let mut framer = LengthPrefixed::new(Prefix::U16, 1024);
/// let mut wire = Vec::new();
/// framer.encode(b"hello", &mut wire).unwrap();
/// framer.encode(b"", &mut wire).unwrap();
/// assert_eq!(wire, b"\0\x05hello\0\0");
///
/// let mut frames = Vec::new();
/// for mut read in wire.chunks(3) {
///     while let Some(frame) = framer.next_frame(&mut read) {
///         frames.push(frame.unwrap().to_vec());
///     }
/// }
/// assert_eq!(frames, [&b"hello"[..], b""]);
/// ```
#[derive(Clone, Debug)]
pub struct LengthPrefixed {
    prefix: Prefix,
    max_frame: usize,
    state: State,
    /// The prefix's bytes, when it came in pieces.
    header: [u8; 8],
    header_len: usize,
    /// The frame being assembled when it came in pieces; while `handed_out`, the frame last
    /// handed back, until the next call.
    buf: Vec<u8>,
    handed_out: bool,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Reading a prefix (`header_len` bytes of it so far).
    Prefix,
    /// Reading a payload of `len` bytes (`buf` holds the part that came in earlier reads).
    Payload { len: usize },
    /// Dropping the `left` remaining bytes of a payload over the limit.
    Skipping { left: u64 },
}

impl LengthPrefixed {
    /// Frames with a `prefix`-wide length, at most `max_frame` bytes of payload each.
    pub fn new(prefix: Prefix, max_frame: usize) -> LengthPrefixed {
        LengthPrefixed {
            prefix,
            max_frame,
            state: State::Prefix,
            header: [0; 8],
            header_len: 0,
            buf: Vec::new(),
            handed_out: false,
        }
    }

    /// The prefix's width.
    pub fn prefix(&self) -> Prefix {
        self.prefix
    }

    /// The longest payload read or written.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The next frame's payload, reading from `input` as far as needed and advancing it
    /// past what was read. `None` once `input` is used up with no frame complete (what came
    /// of it is kept). `Some(Err(TooLong))` for a frame over the limit, said as soon as its
    /// prefix is read, with the length it announced.
    ///
    /// The frame borrows the framer or the input, so it must be dropped before the next
    /// call.
    pub fn next_frame<'s, 'i: 's>(
        &'s mut self,
        input: &mut &'i [u8],
    ) -> Option<Result<&'s [u8], TooLong>> {
        if self.handed_out {
            self.buf.clear();
            self.handed_out = false;
        }
        loop {
            match self.state {
                State::Prefix => {
                    let width = self.prefix.width();
                    let n = (width - self.header_len).min(input.len());
                    let (bytes, rest) = input.split_at(n);
                    self.header[self.header_len..self.header_len + n].copy_from_slice(bytes);
                    self.header_len += n;
                    *input = rest;
                    if self.header_len < width {
                        return None;
                    }
                    self.header_len = 0;
                    let mut be = [0; 8];
                    be[8 - width..].copy_from_slice(&self.header[..width]);
                    let len = u64::from_be_bytes(be);
                    match usize::try_from(len) {
                        Ok(len) if len <= self.max_frame => self.state = State::Payload { len },
                        _ => {
                            self.state = State::Skipping { left: len };
                            return Some(Err(TooLong {
                                limit: self.max_frame,
                                length: Some(len),
                            }));
                        }
                    }
                }
                State::Payload { len } => {
                    if self.buf.is_empty() && input.len() >= len {
                        let (frame, rest) = input.split_at(len);
                        *input = rest;
                        self.state = State::Prefix;
                        return Some(Ok(frame));
                    }
                    let n = (len - self.buf.len()).min(input.len());
                    let (bytes, rest) = input.split_at(n);
                    self.buf.extend_from_slice(bytes);
                    *input = rest;
                    if self.buf.len() < len {
                        return None;
                    }
                    self.state = State::Prefix;
                    self.handed_out = true;
                    return Some(Ok(&self.buf));
                }
                State::Skipping { left } => {
                    if input.is_empty() {
                        return None;
                    }
                    let n = usize::try_from(left).map_or(input.len(), |l| l.min(input.len()));
                    *input = &input[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Prefix
                    } else {
                        State::Skipping { left }
                    };
                }
            }
        }
    }

    /// Appends `payload` as one frame, prefix first, to `out`. [`TooLong`] (and nothing
    /// appended) if it is longer than `max_frame` or than the prefix can say.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), TooLong> {
        let len = payload.len() as u64;
        let limit = self.prefix.max_len().min(self.max_frame as u64);
        if len > limit {
            return Err(TooLong {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
                length: Some(len),
            });
        }
        out.extend_from_slice(&len.to_be_bytes()[8 - self.prefix.width()..]);
        out.extend_from_slice(payload);
        Ok(())
    }

    /// Bytes held: a prefix or a frame that came in pieces. Never more than `max_frame`
    /// plus the prefix.
    pub fn buffered_len(&self) -> usize {
        self.header_len + self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(
        framer: &mut LengthPrefixed,
        stream: &[u8],
        size: usize,
    ) -> Vec<Result<Vec<u8>, TooLong>> {
        let mut out = Vec::new();
        for mut read in stream.chunks(size) {
            while let Some(frame) = framer.next_frame(&mut read) {
                out.push(frame.map(<[u8]>::to_vec));
                assert!(framer.buffered_len() <= framer.max_frame() + framer.prefix().width());
            }
        }
        out
    }

    #[test]
    fn every_prefix_width_round_trips_in_any_split() {
        for prefix in [Prefix::U8, Prefix::U16, Prefix::U32, Prefix::U64] {
            let framer = LengthPrefixed::new(prefix, 300);
            let payloads: [&[u8]; 4] = [b"a", b"", &[7; 200], b"last one"];
            let mut wire = Vec::new();
            for p in payloads {
                framer.encode(p, &mut wire).unwrap();
            }
            for size in [1, 2, 3, 5, 64, wire.len()] {
                let mut framer = framer.clone();
                let got = frames(&mut framer, &wire, size);
                let want: Vec<_> = payloads.iter().map(|p| Ok(p.to_vec())).collect();
                assert_eq!(got, want, "{prefix:?}, reads of {size}");
                assert_eq!(framer.buffered_len(), 0);
            }
        }
    }

    #[test]
    fn an_oversized_frame_is_reported_from_its_prefix_and_skipped() {
        let mut wire = vec![0, 0, 0x10, 0];
        wire.extend_from_slice(&[1; 0x1000]);
        wire.extend_from_slice(b"\0\0\0\x02ok");
        for size in [1, 100, wire.len()] {
            let mut framer = LengthPrefixed::new(Prefix::U32, 64);
            let got = frames(&mut framer, &wire, size);
            let too_long = TooLong {
                limit: 64,
                length: Some(0x1000),
            };
            assert_eq!(got, [Err(too_long), Ok(b"ok".to_vec())], "reads of {size}");
        }
    }

    #[test]
    fn encode_refuses_what_the_prefix_or_the_limit_cannot_carry() {
        let mut out = Vec::new();
        let small = LengthPrefixed::new(Prefix::U8, 1000);
        assert_eq!(small.encode(&[0; 256], &mut out).unwrap_err().limit, 255);
        let limited = LengthPrefixed::new(Prefix::U32, 10);
        assert_eq!(limited.encode(&[0; 11], &mut out).unwrap_err().limit, 10);
        assert!(out.is_empty());
    }
}
