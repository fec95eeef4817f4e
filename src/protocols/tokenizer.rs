//! EventMachine's `BufferedTokenizer`: a byte stream cut into tokens at a delimiter, with a
//! limit on a token's length. See the [module docs](super) for how a handler uses it.

use super::{DEFAULT_LIMIT, TooLong};

/// Cuts a byte stream into tokens ending at a delimiter (EventMachine's
/// `BufferedTokenizer`), none longer than a limit.
///
/// Feed it the bytes of each read with [`next_token`](Self::next_token) until it returns
/// `None`. A token is handed back without its delimiter. A token that arrived whole in one
/// read is a slice of that read (no copy); only the start of a token still waiting for its
/// delimiter is kept, and never more than the limit plus the delimiter's length
/// ([`buffered_len`](Self::buffered_len)).
///
/// A token longer than the limit is reported once as [`TooLong`], as soon as the
/// tokenizer knows (when the limit is passed, without waiting for the delimiter); its bytes
/// are then skipped, not kept, up to its delimiter, and tokenizing resumes after it.
///
/// ```
/// use ember::protocols::Tokenizer;
///
/// let mut tokens = Tokenizer::new(b"\r\n", 16);
/// let mut seen = Vec::new();
/// for mut read in [&b"GET a\r"[..], b"\nGET b\r\nGE", b"T c\r\n"] {
///     while let Some(token) = tokens.next_token(&mut read) {
///         seen.push(token.expect("short tokens").to_vec());
///     }
/// }
/// assert_eq!(seen, [b"GET a", b"GET b", b"GET c"]);
///
/// let mut read = &b"far too long for sixteen bytes\r\nok\r\n"[..];
/// assert!(tokens.next_token(&mut read).unwrap().is_err());
/// assert_eq!(tokens.next_token(&mut read).unwrap(), Ok(&b"ok"[..]));
/// ```
#[derive(Clone, Debug)]
pub struct Tokenizer {
    delimiter: Box<[u8]>,
    limit: usize,
    /// The start of a token whose delimiter has not arrived yet; it never holds a whole
    /// delimiter. While `skipping`, only the last `delimiter.len() - 1` bytes of the
    /// oversized token instead, to find a delimiter that straddles two reads. While
    /// `handed_out`, the token last handed back, until the next call.
    buf: Vec<u8>,
    /// `buf` is a token the caller may still be reading; clear it on the next call.
    handed_out: bool,
    /// A token longer than the limit was reported; its bytes are dropped up to its
    /// delimiter.
    skipping: bool,
}

impl Default for Tokenizer {
    /// Lines ending in `\n`, at most [`DEFAULT_LIMIT`] bytes each.
    fn default() -> Self {
        Tokenizer::new(b"\n", DEFAULT_LIMIT)
    }
}

impl Tokenizer {
    /// Tokens ending in `delimiter` (any bytes: `\n`, `\r\n`, `\0`, `--boundary`), at most
    /// `limit` bytes long, the delimiter not counted.
    ///
    /// # Panics
    /// If `delimiter` is empty.
    pub fn new(delimiter: &[u8], limit: usize) -> Tokenizer {
        assert!(!delimiter.is_empty(), "a tokenizer needs a delimiter");
        Tokenizer {
            delimiter: delimiter.into(),
            limit,
            buf: Vec::new(),
            handed_out: false,
            skipping: false,
        }
    }

    /// The delimiter tokens end in.
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// The longest token handed back, in bytes, its delimiter not counted.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The next token in the stream, reading from `input` as far as needed and advancing
    /// it past what was read. `None` once `input` is used up without ending a token: its
    /// bytes are kept for the next call. `Some(Err(TooLong))` for a token over the limit
    /// (said once per such token; the caller usually closes the connection).
    ///
    /// The token borrows the tokenizer or the input, so it must be dropped before the
    /// next call.
    pub fn next_token<'s, 'i: 's>(
        &'s mut self,
        input: &mut &'i [u8],
    ) -> Option<Result<&'s [u8], TooLong>> {
        if self.handed_out {
            self.buf.clear();
            self.handed_out = false;
        }
        let d = self.delimiter.len();
        loop {
            if input.is_empty() {
                return None;
            }
            let Some(end) = self.delimiter_end(input) else {
                // Every byte belongs to the current token, though its last `d - 1` may
                // still turn out to begin the delimiter.
                let data = std::mem::take(input);
                if self.skipping {
                    self.keep_tail(data);
                    return None;
                }
                if self.buf.len() + data.len() >= self.limit + d {
                    // `limit + d` bytes and no delimiter: the token has more than `limit`.
                    self.skipping = true;
                    self.keep_tail(data);
                    return Some(Err(TooLong {
                        limit: self.limit,
                        length: None,
                    }));
                }
                self.buf.extend_from_slice(data);
                return None;
            };
            let (through_delimiter, rest) = input.split_at(end);
            *input = rest;
            if self.skipping {
                self.skipping = false;
                self.buf.clear();
                continue;
            }
            // `end < d` when the delimiter began in `buf`.
            let len = self.buf.len() + end - d;
            if len > self.limit {
                self.buf.clear();
                return Some(Err(TooLong {
                    limit: self.limit,
                    length: Some(len as u64),
                }));
            }
            if self.buf.is_empty() {
                return Some(Ok(&through_delimiter[..len]));
            }
            self.buf
                .extend_from_slice(&through_delimiter[..end.saturating_sub(d)]);
            self.buf.truncate(len);
            self.handed_out = true;
            return Some(Ok(&self.buf));
        }
    }

    /// Hands back the bytes kept of an unfinished token and forgets them (EventMachine's
    /// `flush`): at the end of a stream, the last token when it had no delimiter; or to
    /// read what follows differently. Empty while an oversized token is being skipped.
    pub fn flush(&mut self) -> Vec<u8> {
        let pending = if self.handed_out || self.skipping {
            self.buf.clear();
            Vec::new()
        } else {
            std::mem::take(&mut self.buf)
        };
        self.handed_out = false;
        self.skipping = false;
        pending
    }

    /// Bytes the tokenizer holds: the start of an unfinished token, or the token last
    /// handed back when it came in pieces. Never more than the limit plus the delimiter's
    /// length.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Where the first delimiter ends in `input` (the index just past it), counting one
    /// that began at the end of `buf`.
    pub(super) fn delimiter_end(&self, input: &[u8]) -> Option<usize> {
        let delimiter = &*self.delimiter;
        let d = delimiter.len();
        // `j` bytes of the delimiter at the end of `buf`, the rest at the start of `input`;
        // the largest `j` ends earliest.
        let straddling = (1..d.min(self.buf.len() + 1))
            .rev()
            .find(|&j| self.buf.ends_with(&delimiter[..j]) && input.starts_with(&delimiter[j..]));
        match straddling {
            Some(j) => Some(d - j),
            None => find(input, delimiter).map(|at| at + d),
        }
    }

    /// While skipping: keeps the last `d - 1` bytes of `buf` followed by `data`, where a
    /// delimiter that ends in the next read may begin.
    fn keep_tail(&mut self, data: &[u8]) {
        let keep = self.delimiter.len() - 1;
        if data.len() >= keep {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.buf.extend_from_slice(data);
            let excess = self.buf.len().saturating_sub(keep);
            self.buf.drain(..excess);
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `size` bytes; returns tokens (`Err` for an overflow,
    /// as `!`) and checks the buffer bound after every call.
    fn tokens(tokenizer: &mut Tokenizer, stream: &[u8], size: usize) -> Vec<String> {
        let bound = tokenizer.limit() + tokenizer.delimiter().len();
        let mut out = Vec::new();
        for mut read in stream.chunks(size) {
            while let Some(token) = tokenizer.next_token(&mut read) {
                out.push(match token {
                    Ok(t) => String::from_utf8(t.to_vec()).unwrap(),
                    Err(_) => "!".to_owned(),
                });
                assert!(tokenizer.buffered_len() <= bound);
            }
            assert!(tokenizer.buffered_len() <= bound);
        }
        out
    }

    #[test]
    fn every_split_of_the_stream_gives_the_same_tokens() {
        let stream = b"one\r\ntwo\r\n\r\nthree \r\r\n\rfour\r\n";
        for size in 1..=stream.len() {
            let mut t = Tokenizer::new(b"\r\n", 64);
            assert_eq!(
                tokens(&mut t, stream, size),
                ["one", "two", "", "three \r", "\rfour"],
                "reads of {size}"
            );
            assert_eq!(t.flush(), b"");
        }
    }

    #[test]
    fn a_long_delimiter_straddling_reads_is_found() {
        let stream = b"a--b---c--";
        for size in 1..=stream.len() {
            let mut t = Tokenizer::new(b"--", 64);
            assert_eq!(
                tokens(&mut t, stream, size),
                ["a", "b", "-c"],
                "size {size}"
            );
        }
        for size in 1..=12 {
            let mut t = Tokenizer::new(b"<eom>", 64);
            let got = tokens(&mut t, b"x<eo<eom><<eom>y<eom", size);
            assert_eq!(got, ["x<eo", "<"], "size {size}");
            assert_eq!(t.flush(), b"y<eom");
        }
    }

    #[test]
    fn a_token_at_the_limit_passes_and_one_over_is_reported_once_and_skipped() {
        for size in 1..=40 {
            let mut t = Tokenizer::new(b"\r\n", 4);
            let got = tokens(&mut t, b"abcd\r\nabcde\r\nabcdefghij\r\nok\r\n", size);
            assert_eq!(got, ["abcd", "!", "!", "ok"], "size {size}");
        }
    }

    #[test]
    fn an_overflow_is_reported_before_the_delimiter_arrives() {
        let mut t = Tokenizer::new(b"\n", 8);
        let mut read = &b"12345678"[..];
        assert_eq!(t.next_token(&mut read), None);
        let mut read = &b"9"[..];
        assert_eq!(
            t.next_token(&mut read),
            Some(Err(TooLong {
                limit: 8,
                length: None
            }))
        );
        for _ in 0..1000 {
            let mut read = &[b'x'; 1000][..];
            assert_eq!(t.next_token(&mut read), None);
            assert!(t.buffered_len() <= 1);
        }
        let mut read = &b"x\nnext\n"[..];
        assert_eq!(t.next_token(&mut read), Some(Ok(&b"next"[..])));
    }

    #[test]
    fn random_streams_in_random_reads_match_a_plain_split() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        for _ in 0..2000 {
            let stream: Vec<u8> = (0..next(60)).map(|_| b"ab\r\n"[next(4)]).collect();
            let limit = next(8);
            // What a tokenizer must say: the tokens of a plain split, `!` for those over
            // the limit; the tail (no delimiter) is `!` once it is sure to be over.
            let mut want = Vec::new();
            let mut rest = &stream[..];
            while let Some(at) = find(rest, b"\r\n") {
                let token = &rest[..at];
                want.push(if token.len() > limit {
                    "!".to_owned()
                } else {
                    String::from_utf8(token.to_vec()).unwrap()
                });
                rest = &rest[at + 2..];
            }
            let tail_over = rest.len() >= limit + 2;
            if tail_over {
                want.push("!".to_owned());
            }
            let mut t = Tokenizer::new(b"\r\n", limit);
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let size = 1 + next(stream.len() - at);
                got.extend(tokens(&mut t, &stream[at..at + size], size));
                at += size;
            }
            assert_eq!(got, want, "{stream:?}, limit {limit}");
            assert_eq!(t.flush(), if tail_over { &[][..] } else { rest });
        }
    }

    #[test]
    fn flush_hands_back_the_unfinished_token() {
        let mut t = Tokenizer::default();
        let mut read = &b"done\nhalf"[..];
        assert_eq!(t.next_token(&mut read), Some(Ok(&b"done"[..])));
        assert_eq!(t.next_token(&mut read), None);
        assert_eq!(t.buffered_len(), 4);
        assert_eq!(t.flush(), b"half");
        assert_eq!(t.buffered_len(), 0);
    }
}
