//! HTTP/1.1 message framing: where each request and each response starts and ends on a
//! byte stream, so that the proxy can mirror requests one by one to a shadow and pair
//! each primary response with the shadow's answer to the same request (issue 12).
//!
//! This module owns the reading of HTTP/1.1 framing and nothing else: it is pure code,
//! touches no socket, keeps no timer, and decides nothing about what happens to a message.
//! It never changes a byte, and it never loses one: whatever it cannot read is handed back
//! untouched.
//!
//! ## Use
//! A [`RequestSplitter`] reads the client's stream, a [`ResponseSplitter`] the server's.
//! Both are fed slices of the stream as they arrive, in any sizes (one byte at a time reads
//! exactly like the whole stream at once), and hand back [`Piece`]s:
//!
//! - a [`Piece::Head`] per message, parsed: method and target or status, version, header
//!   fields, and how its body is framed;
//! - [`Piece::Body`] pieces: the body's bytes as they came (`raw`, chunk framing included)
//!   and the payload they carry (`data`: the same bytes, or for a chunked body the chunk
//!   contents only);
//! - [`Piece::End`] where the message ends, or [`Piece::Truncated`] when the stream ended
//!   first;
//! - [`Piece::GaveUp`] once, with a [`Reason`], if the stream stops being HTTP/1.1 this
//!   module can frame, then only [`Piece::Opaque`] pieces.
//!
//! [`Piece::raw`] is the exact input each piece covers: the raw bytes of every piece, in
//! order, are the input stream, byte for byte. Bodies and opaque bytes are slices of the
//! input (no copy); only a head is copied, into the [`Head`] that owns it.
//!
//! A [`ResponseSplitter`] must be told, in order, the method of each request sent on the
//! connection ([`ResponseSplitter::expect`]): a response to `HEAD` has no body whatever its
//! fields say, and a 2xx to `CONNECT` turns the connection into a tunnel. At the end of a
//! stream call `finish`: a response read until the server closes ends there, and a message
//! still incomplete is reported [`Piece::Truncated`].
//!
//! ```
//! use ember::proxy::http1::{Piece, RequestSplitter, ResponseSplitter};
//!
//! let mut requests = RequestSplitter::new();
//! let mut responses = ResponseSplitter::new();
//!
//! // The client's bytes: one chunked upload, arriving in two reads.
//! let mut payload = Vec::new();
//! for mut input in [
//!     &b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
//!     &b"lo\r\n0\r\n\r\n"[..],
//! ] {
//!     while let Some(piece) = requests.next_piece(&mut input) {
//!         match piece {
//!             Piece::Head(head) => {
//!                 assert_eq!(head.header("host"), Some(&b"example.com"[..]));
//!                 responses.expect(head.method());
//!             }
//!             Piece::Body { data, .. } => payload.extend_from_slice(data),
//!             Piece::End => println!("request done"),
//!             other => panic!("not expected here: {other:?}"),
//!         }
//!     }
//! }
//! assert_eq!(payload, b"hello");
//!
//! // The server's bytes: no length, so the body runs until the server closes.
//! let mut input = &b"HTTP/1.0 200 OK\r\n\r\nbye"[..];
//! let mut status = 0;
//! while let Some(piece) = responses.next_piece(&mut input) {
//!     if let Piece::Head(head) = piece {
//!         status = head.status();
//!     }
//! }
//! responses.finish();
//! assert!(matches!(responses.next_piece(&mut &b""[..]), Some(Piece::End)));
//! assert_eq!(status, 200);
//! ```
//!
//! ## How HTTP/1.1 says where a message ends (RFC 9112)
//! A message is a head, then maybe a body. The head is a start line (`GET /a HTTP/1.1` or
//! `HTTP/1.1 200 OK`), header fields one per line, and an empty line: it ends at the first
//! empty line (empty lines before the start line are skipped, §2.2). Where the body ends is
//! decided in this order (§6.3):
//!
//! 1. No body, whatever the fields say: a response to `HEAD`; an interim response (1xx:
//!    `100 Continue`, `103 Early Hints`), which is followed by another response to the same
//!    request; `204 No Content`; `304 Not Modified`.
//! 2. Not HTTP any more after this message: `101 Switching Protocols` and a 2xx response to
//!    `CONNECT` (a tunnel).
//! 3. `Transfer-Encoding` with `chunked` as the last coding: the body is a series of chunks
//!    (§7.1), each a size in hex, optional `;extensions`, CRLF, that many bytes, CRLF;
//!    a chunk of size 0 ends it, followed by trailer fields and an empty line. With another
//!    coding last, a response runs until the server closes; a request cannot be framed.
//! 4. `Content-Length`: exactly that many bytes.
//! 5. Neither: a request has no body; a response runs until the server closes (which is why
//!    a splitter needs to know where the stream ends).
//!
//! `Expect: 100-continue` ([`RequestHead::expects_continue`]) and `Connection: close`
//! ([`Head::closes_connection`]) do not change the framing; they are reported on the head
//! for the caller to act on.
//!
//! ## Giving up
//! Whatever cannot be framed for certain makes a splitter switch to opaque, permanently: it
//! reports [`Piece::GaveUp`] with the [`Reason`] once, then hands every byte through as
//! [`Piece::Opaque`], starting with any it had buffered. What gives up: a malformed head;
//! HTTP/0.9, HTTP/2's preface or any version but 1.0 and 1.1; a head above the limit or
//! with more than [`MAX_HEADERS`] fields; a `Content-Length` that is not a number or several
//! that disagree; `Content-Length` together with `Transfer-Encoding` (RFC 9112 §6.3 allows
//! a recipient to treat the message as faulty, and for a mirror that is the safe reading);
//! `Transfer-Encoding` in an HTTP/1.0 message, or without `chunked` last on a request; any
//! deviation from the chunked grammar (a bare LF where CRLF belongs included); `CONNECT`
//! and `Upgrade` (after the message that asked for them, since what follows depends on the
//! peer's answer; but not an `Upgrade: h2c` probe, see `offers_only_h2c`); a response
//! when no request is queued.
//!
//! The rules lean strict on purpose: the bytes reach the primary unchanged whatever this
//! module reads, so a doubt costs only the mirroring of one connection, while a guess could
//! pair the wrong request with the wrong response.
//!
//! ## Limits
//! The only bytes ever buffered are those of a head that arrives in several slices, at most
//! the head limit ([`DEFAULT_HEAD_LIMIT`], or `with_head_limit`); the same limit bounds a
//! chunked body's trailer section. A [`ResponseSplitter`] queues at most
//! [`MAX_QUEUED_REQUESTS`] methods. Nothing is allocated per body byte.

use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Range;

/// The longest head (start line, fields and the empty line, with any empty lines before
/// it) a splitter reads by default: 64 KiB, well above what browsers and servers send.
pub const DEFAULT_HEAD_LIMIT: usize = 64 * 1024;

/// The most header fields a head may have; more gives up with [`Reason::TooManyHeaders`].
pub const MAX_HEADERS: usize = 128;

/// The most request methods a [`ResponseSplitter`] holds waiting for their responses;
/// beyond it, it gives up with [`Reason::TooManyQueued`] once the requests it holds are
/// answered.
pub const MAX_QUEUED_REQUESTS: usize = 1024;

// ---------------------------------------------------------------------------------------
// What a splitter hands back.

/// One piece of a stream, in stream order. `L` is the kind of start line: [`RequestLine`]
/// or [`StatusLine`].
///
/// Each message comes as one `Head`, any number of `Body` pieces, then `End` (or
/// `Truncated` when the stream ends first). An interim response (1xx) is a message with no
/// body: `Head`, `End`. After `GaveUp`, only `Opaque` pieces come.
#[derive(Debug)]
pub enum Piece<'a, L> {
    /// A message's head; its raw bytes are [`Head::as_bytes`].
    Head(Head<L>),
    /// Some of a message's body. `raw` is the input these bytes were; `data` is the payload
    /// they carry, a part of `raw`: all of it for a `Content-Length` or read-until-close
    /// body, the chunk contents without the chunk framing for a chunked one (so `data` may
    /// be empty: a piece of chunk-size line or trailers).
    Body {
        /// The input bytes of this piece, exactly as they came.
        raw: &'a [u8],
        /// The payload in `raw`.
        data: &'a [u8],
    },
    /// The message whose pieces came last ended here. Covers no bytes.
    End,
    /// The stream ended in the middle of a message: a body shorter than its length, a
    /// chunked body without its last chunk, or a head not finished. Holds the bytes of the
    /// unfinished head if there was one, and is empty otherwise. Nothing comes after it.
    Truncated(&'a [u8]),
    /// From here on the stream is not framed, for this reason; said once. Covers no bytes.
    GaveUp(Reason),
    /// Bytes handed through without framing: after [`Piece::GaveUp`]; and, with no
    /// `GaveUp`, empty lines left at the end of the stream (a stray CRLF after a request)
    /// or bytes given after the stream ended.
    Opaque(&'a [u8]),
}

/// A piece of a client's stream.
pub type RequestPiece<'a> = Piece<'a, RequestLine>;

/// A piece of a server's stream.
pub type ResponsePiece<'a> = Piece<'a, StatusLine>;

impl<L> Piece<'_, L> {
    /// The input bytes this piece covers: concatenated in order, the raw bytes of every
    /// piece are the stream.
    pub fn raw(&self) -> &[u8] {
        match self {
            Piece::Head(head) => head.as_bytes(),
            Piece::Body { raw, .. } | Piece::Truncated(raw) | Piece::Opaque(raw) => raw,
            Piece::End | Piece::GaveUp(_) => &[],
        }
    }
}

/// Why a splitter stopped framing. Each is a stable name ([`Reason::as_str`]) to count and
/// log by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A head that is not HTTP/1.x syntax: bad bytes, a bad start line, a bad field.
    Malformed,
    /// A request line without a version (HTTP/0.9), or a version other than 1.0 and 1.1.
    UnsupportedVersion,
    /// HTTP/2's connection preface, `PRI * HTTP/2.0` (h2c with prior knowledge).
    Http2Preface,
    /// A head longer than the head limit.
    HeadTooLarge,
    /// A head with more than [`MAX_HEADERS`] fields.
    TooManyHeaders,
    /// A `Content-Length` that is not a decimal number of bytes.
    InvalidContentLength,
    /// Several `Content-Length` values that disagree.
    ConflictingContentLength,
    /// `Content-Length` together with `Transfer-Encoding`: RFC 9112 §6.3 calls it a sign of
    /// request smuggling; there is no safe reading of where the message ends.
    LengthAndTransferEncoding,
    /// `Transfer-Encoding` that cannot be framed: in an HTTP/1.0 message, `chunked` twice,
    /// an empty list, or (in a request) a last coding other than `chunked`.
    TransferEncoding,
    /// A chunked body that breaks the chunk grammar (size, extension, CRLF, trailers).
    InvalidChunk,
    /// A chunked body's trailer section longer than the head limit.
    TrailersTooLarge,
    /// A `CONNECT` request, or a 2xx response to one: a tunnel follows.
    Connect,
    /// A request asking for `Upgrade`, or a `101 Switching Protocols`: another protocol
    /// may follow.
    Upgrade,
    /// A response when no request was waiting for one.
    UnexpectedResponse,
    /// More than [`MAX_QUEUED_REQUESTS`] requests waiting for their responses.
    TooManyQueued,
}

impl Reason {
    /// A short, stable, snake_case name, for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::Http2Preface => "http2_preface",
            Reason::HeadTooLarge => "head_too_large",
            Reason::TooManyHeaders => "too_many_headers",
            Reason::InvalidContentLength => "invalid_content_length",
            Reason::ConflictingContentLength => "conflicting_content_length",
            Reason::LengthAndTransferEncoding => "length_and_transfer_encoding",
            Reason::TransferEncoding => "transfer_encoding",
            Reason::InvalidChunk => "invalid_chunk",
            Reason::TrailersTooLarge => "trailers_too_large",
            Reason::Connect => "connect",
            Reason::Upgrade => "upgrade",
            Reason::UnexpectedResponse => "unexpected_response",
            Reason::TooManyQueued => "too_many_queued",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a message's body is delimited, as its splitter decided from the head (and, for a
/// response, the request's method).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: `End` follows the head.
    NoBody,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response with no length: the body runs until the server closes.
    UntilClose,
}

// ---------------------------------------------------------------------------------------
// Heads.

/// A parsed message head, owning its exact bytes. `L` is its start line: a
/// [`RequestHead`] has a method and a target, a [`ResponseHead`] a status.
#[derive(Clone, PartialEq, Eq)]
pub struct Head<L> {
    /// The head as it came: any empty lines before the start line, the start line, the
    /// fields, the empty line.
    bytes: Box<[u8]>,
    line: L,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor_version: u8,
    /// Where each field's name and value are in `bytes`, in order.
    fields: Vec<Field>,
    framing: Framing,
}

/// A request's start line (`GET /index.html HTTP/1.1`), read through [`RequestHead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLine {
    method: Span,
    target: Span,
}

/// A response's start line (`HTTP/1.1 200 OK`), read through [`ResponseHead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusLine {
    status: u16,
    reason: Span,
}

/// A request head.
pub type RequestHead = Head<RequestLine>;

/// A response head.
pub type ResponseHead = Head<StatusLine>;

/// Where a part of a head is in its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// Where `part`, a slice of `whole`, lies in it. Empty for a slice from elsewhere
    /// (httparse answers a missing reason phrase with a static `""`).
    fn within(whole: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
        match start.checked_add(part.len()) {
            Some(end) if end <= whole.len() => Span { start, end },
            _ => Span::default(),
        }
    }

    fn of(self, bytes: &[u8]) -> &[u8] {
        bytes.get(self.start..self.end).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    name: Span,
    value: Span,
}

impl<L> Head<L> {
    fn new(bytes: &[u8], line: L, minor_version: u8, fields: &[httparse::Header<'_>]) -> Self {
        Head {
            bytes: bytes.into(),
            line,
            minor_version,
            fields: fields
                .iter()
                .map(|field| Field {
                    name: Span::within(bytes, field.name.as_bytes()),
                    value: Span::within(bytes, field.value),
                })
                .collect(),
            framing: Framing::NoBody,
        }
    }

    /// The head's exact bytes, as they came (the raw bytes of its [`Piece::Head`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The head's length in bytes, its final empty line included.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// How the body after this head is delimited.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Every header field in order, as (name, value): the name as sent (field names are
    /// ASCII tokens), the value's raw bytes without surrounding whitespace.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(|field| {
            let name = std::str::from_utf8(field.name.of(&self.bytes)).unwrap_or_default();
            (name, field.value.of(&self.bytes))
        })
    }

    /// The value of the first field named `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).next()
    }

    /// The values of every field named `name` (case-insensitively), in order.
    pub fn header_values<'h>(&'h self, name: &str) -> impl Iterator<Item = &'h [u8]> {
        // Names compared as bytes: no field name needs reading as text to be found.
        self.fields
            .iter()
            .filter(move |field| {
                field
                    .name
                    .of(&self.bytes)
                    .eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|field| field.value.of(&self.bytes))
    }

    /// Whether the sender closes the connection after this message (RFC 9112 §9.3):
    /// `Connection: close`, or an HTTP/1.0 message without `Connection: keep-alive`.
    pub fn closes_connection(&self) -> bool {
        let (mut close, mut keep_alive) = (false, false);
        // Two plain loops: as one `flat_map` this was 4% of a mirrored request's
        // instructions (the mirror asks it of every shadow answer).
        for value in self.header_values("connection") {
            for element in list_elements(value) {
                close |= element.eq_ignore_ascii_case(b"close");
                keep_alive |= element.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        close || (self.minor_version == 0 && !keep_alive)
    }
}

impl Head<RequestLine> {
    /// The method, as sent (methods are case-sensitive: `GET`, not `get`).
    pub fn method(&self) -> &str {
        std::str::from_utf8(self.line.method.of(&self.bytes)).unwrap_or_default()
    }

    /// The request target: a path and query, an absolute URI, `host:port` for `CONNECT`,
    /// or `*`.
    pub fn target(&self) -> &str {
        std::str::from_utf8(self.line.target.of(&self.bytes)).unwrap_or_default()
    }

    /// Whether the client waits for `100 Continue` before sending the body
    /// (`Expect: 100-continue` on HTTP/1.1; HTTP/1.0's is ignored, RFC 9110 §10.1.1).
    pub fn expects_continue(&self) -> bool {
        self.minor_version == 1
            && self
                .header_values("expect")
                .flat_map(list_elements)
                .any(|element| element.eq_ignore_ascii_case(b"100-continue"))
    }
}

impl Head<StatusLine> {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.line.status
    }

    /// The reason phrase (`OK`), raw; may be empty.
    pub fn reason(&self) -> &[u8] {
        self.line.reason.of(&self.bytes)
    }

    /// Whether this is an interim response (1xx but 101): another response to the same
    /// request follows it.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.line.status) && self.line.status != 101
    }
}

impl<L> fmt::Debug for Head<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Head")
            .field("bytes", &String::from_utf8_lossy(&self.bytes))
            .field("framing", &self.framing)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// The splitters.

/// Splits a client's byte stream into requests. See the [module docs](self).
#[derive(Debug)]
pub struct RequestSplitter {
    framer: Framer,
}

impl RequestSplitter {
    /// A splitter for a new connection, with the [`DEFAULT_HEAD_LIMIT`].
    pub fn new() -> Self {
        Self::with_head_limit(DEFAULT_HEAD_LIMIT)
    }

    /// A splitter that gives up on a head (or trailer section) longer than `head_limit`.
    pub fn with_head_limit(head_limit: usize) -> Self {
        RequestSplitter {
            framer: Framer::new(head_limit),
        }
    }

    /// The next piece of the stream, taking the bytes it covers off the front of `input`;
    /// `None` when every byte of `input` is used and more are needed. Call it until `None`
    /// for each slice that arrives (a piece may still come with `input` empty).
    pub fn next_piece<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<RequestPiece<'s>> {
        self.framer.next_piece(input, request_framing)
    }

    /// The stream ends after the bytes given so far (the client closed or half-closed):
    /// the next calls to [`next_piece`](Self::next_piece) report a request cut short as
    /// [`Piece::Truncated`].
    pub fn finish(&mut self) {
        self.framer.end_of_stream = true;
    }

    /// Why the splitter stopped framing, once it has.
    pub fn gave_up(&self) -> Option<Reason> {
        self.framer.gave_up
    }
}

impl Default for RequestSplitter {
    fn default() -> Self {
        Self::new()
    }
}

/// Splits a server's byte stream into responses, told the method of each request sent.
/// See the [module docs](self).
#[derive(Debug)]
pub struct ResponseSplitter {
    framer: Framer,
    waiting: Waiting,
}

/// The requests sent whose responses have not begun, oldest first.
#[derive(Debug, Default)]
struct Waiting {
    methods: VecDeque<Method>,
    /// A method was not queued for lack of room: the responses after those queued cannot
    /// be paired.
    overflowed: bool,
}

/// What a response's framing needs to know of its request's method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Head,
    Connect,
    Other,
}

impl ResponseSplitter {
    /// A splitter for a new connection, with the [`DEFAULT_HEAD_LIMIT`].
    pub fn new() -> Self {
        Self::with_head_limit(DEFAULT_HEAD_LIMIT)
    }

    /// A splitter that gives up on a head (or trailer section) longer than `head_limit`.
    pub fn with_head_limit(head_limit: usize) -> Self {
        ResponseSplitter {
            framer: Framer::new(head_limit),
            waiting: Waiting::default(),
        }
    }

    /// A request with this method was sent on the connection: its response comes after
    /// those of the requests sent before it. Call it in the order requests were sent, and
    /// before feeding the bytes of its response.
    pub fn expect(&mut self, method: &str) {
        let waiting = &mut self.waiting;
        if self.framer.gave_up.is_some() || waiting.overflowed {
            return;
        }
        if waiting.methods.len() >= MAX_QUEUED_REQUESTS {
            waiting.overflowed = true;
            return;
        }
        waiting.methods.push_back(match method {
            "HEAD" => Method::Head,
            "CONNECT" => Method::Connect,
            _ => Method::Other,
        });
    }

    /// How many requests wait for their response (the one being read is not counted once
    /// its head is).
    pub fn waiting(&self) -> usize {
        self.waiting.methods.len()
    }

    /// The next piece of the stream, taking the bytes it covers off the front of `input`;
    /// `None` when every byte of `input` is used and more are needed. Call it until `None`
    /// for each slice that arrives (a piece may still come with `input` empty).
    pub fn next_piece<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<ResponsePiece<'s>> {
        let waiting = &mut self.waiting;
        self.framer
            .next_piece(input, |head| response_framing(waiting, head))
    }

    /// The stream ends after the bytes given so far (the server closed or half-closed):
    /// the next calls to [`next_piece`](Self::next_piece) end a read-until-close body with
    /// [`Piece::End`] and report anything else cut short as [`Piece::Truncated`].
    pub fn finish(&mut self) {
        self.framer.end_of_stream = true;
    }

    /// Why the splitter stopped framing, once it has.
    pub fn gave_up(&self) -> Option<Reason> {
        self.framer.gave_up
    }
}

impl Default for ResponseSplitter {
    fn default() -> Self {
        Self::new()
    }
}

/// How a request's body is framed, and what follows it (§6.3 for requests).
fn request_framing(head: &RequestHead) -> Result<(Framing, After), Reason> {
    if head.method() == "CONNECT" {
        // What follows is a tunnel if the server agrees; a request splitter cannot know.
        return Ok((Framing::NoBody, After::GiveUp(Reason::Connect)));
    }
    let framing = match body_fields(head)? {
        BodyFields::Neither => Framing::NoBody,
        BodyFields::Length(length) => Framing::Length(length),
        BodyFields::Chunked => Framing::Chunked,
        BodyFields::OtherCoding => return Err(Reason::TransferEncoding),
    };
    let after = match head.header("upgrade") {
        Some(_) if offers_only_h2c(head) => After::NextMessage,
        Some(_) => After::GiveUp(Reason::Upgrade),
        None => After::NextMessage,
    };
    Ok((framing, after))
}

/// Whether a request's `Upgrade` offers nothing but `h2c` (HTTP/2 in the clear), the
/// probe curl and other clients put on a first request. Framing goes on after it: a
/// server that declines (most do) answers in HTTP/1.1 and the stream stays HTTP/1.1, and
/// after a server's `101` the client must send HTTP/2's preface, which gives up then.
/// Any other protocol (`websocket`...) could follow the request with anything.
fn offers_only_h2c(head: &RequestHead) -> bool {
    let mut offered = false;
    for protocol in head.header_values("upgrade").flat_map(list_elements) {
        if !protocol.eq_ignore_ascii_case(b"h2c") {
            return false;
        }
        offered = true;
    }
    offered
}

/// How a response's body is framed, and what follows it (§6.3, in its order); takes the
/// request a final response answers off `waiting`.
fn response_framing(
    waiting: &mut Waiting,
    head: &ResponseHead,
) -> Result<(Framing, After), Reason> {
    let Some(&method) = waiting.methods.front() else {
        return Err(if waiting.overflowed {
            Reason::TooManyQueued
        } else {
            Reason::UnexpectedResponse
        });
    };
    if head.is_interim() {
        return Ok((Framing::NoBody, After::NextMessage));
    }
    waiting.methods.pop_front();
    let status = head.status();
    if status == 101 {
        return Ok((Framing::NoBody, After::GiveUp(Reason::Upgrade)));
    }
    if method == Method::Head || status == 204 || status == 304 {
        return Ok((Framing::NoBody, After::NextMessage));
    }
    if method == Method::Connect && (200..300).contains(&status) {
        return Ok((Framing::NoBody, After::GiveUp(Reason::Connect)));
    }
    let framing = match body_fields(head)? {
        BodyFields::Chunked => Framing::Chunked,
        BodyFields::Length(length) => Framing::Length(length),
        BodyFields::OtherCoding | BodyFields::Neither => Framing::UntilClose,
    };
    Ok((framing, After::NextMessage))
}

/// What `Transfer-Encoding` and `Content-Length` say about a body.
enum BodyFields {
    Neither,
    Length(u64),
    Chunked,
    /// `Transfer-Encoding` whose last coding is not `chunked` (`gzip`, say).
    OtherCoding,
}

fn body_fields<L>(head: &Head<L>) -> Result<BodyFields, Reason> {
    let mut length = None;
    for field in head.header_values("content-length") {
        // `1*DIGIT`, or a list of equal ones (RFC 9110 §8.6): an empty value is no length.
        let mut elements = list_elements(field).peekable();
        if elements.peek().is_none() {
            return Err(Reason::InvalidContentLength);
        }
        for element in elements {
            let value = decimal(element).ok_or(Reason::InvalidContentLength)?;
            if length.is_some_and(|earlier| earlier != value) {
                return Err(Reason::ConflictingContentLength);
            }
            length = Some(value);
        }
    }
    if head.header("transfer-encoding").is_none() {
        return Ok(length.map_or(BodyFields::Neither, BodyFields::Length));
    }
    if length.is_some() {
        return Err(Reason::LengthAndTransferEncoding);
    }
    if head.minor_version == 0 {
        return Err(Reason::TransferEncoding);
    }
    let (mut codings, mut chunked, mut last_is_chunked) = (0, 0, false);
    for coding in head
        .header_values("transfer-encoding")
        .flat_map(list_elements)
    {
        codings += 1;
        last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
        chunked += usize::from(last_is_chunked);
    }
    match (codings, chunked, last_is_chunked) {
        (0, _, _) => Err(Reason::TransferEncoding),
        (_, 0, _) | (_, 1, false) => Ok(BodyFields::OtherCoding),
        (_, 1, true) => Ok(BodyFields::Chunked),
        _ => Err(Reason::TransferEncoding),
    }
}

// ---------------------------------------------------------------------------------------
// The framer: the state machine both splitters share.

/// One direction of a connection, between two of its bytes.
#[derive(Debug)]
struct Framer {
    state: State,
    /// The head read so far, when it came in more than one slice; at most `head_limit`
    /// bytes. After a give-up, the bytes to hand out first.
    buffer: Vec<u8>,
    /// `buffer` was lent out in the last piece: empty it before the next.
    buffer_lent: bool,
    head_limit: usize,
    /// `finish` was called: the stream ends where the input runs out.
    end_of_stream: bool,
    gave_up: Option<Reason>,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Reading a head (or waiting for one): its bytes so far are in `buffer`.
    Head(HeadScan),
    /// Reading a body; `After` it ends, what comes.
    Body(Body, After),
    /// The last byte of a message was read: `End` comes next.
    Ended(After),
    /// Framing stops: `GaveUp` comes next, then the buffered bytes.
    GivingUp(Reason),
    /// `buffer` goes out as opaque next.
    LendBuffer,
    /// Every byte goes out as opaque.
    Opaque,
    /// The stream ended; any byte given after it goes out as opaque.
    Closed,
}

#[derive(Clone, Copy, Debug)]
enum Body {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// What follows a message.
#[derive(Clone, Copy, Debug)]
enum After {
    NextMessage,
    GiveUp(Reason),
}

/// A head parsed for framing: a start line of one kind.
trait StartLine: Sized {
    /// Checks a start line as soon as it has ended (`bytes` ends with it), so a stream
    /// that is not HTTP gives up at its first line rather than at the head limit.
    fn check(bytes: &[u8]) -> Result<(), Reason>;
    /// Parses a whole head.
    fn parse(bytes: &[u8]) -> Result<Head<Self>, Reason>;
}

impl StartLine for RequestLine {
    fn check(bytes: &[u8]) -> Result<(), Reason> {
        let mut request = httparse::Request::new(&mut []);
        match request.parse(bytes) {
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Ok(()),
            Err(error) => Err(refusal(error, bytes, RequestLine::other_version)),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Head<Self>, Reason> {
        // Left uninitialised: zeroing room for MAX_HEADERS fields cost more than parsing a
        // small head's.
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            bytes,
            &mut fields,
        );
        let refused = |error| refusal(error, bytes, RequestLine::other_version);
        if parsed.map_err(refused)? != httparse::Status::Complete(bytes.len()) {
            return Err(Reason::Malformed);
        }
        let (Some(method), Some(target), Some(minor_version)) =
            (request.method, request.path, request.version)
        else {
            return Err(Reason::Malformed);
        };
        let line = RequestLine {
            method: Span::within(bytes, method.as_bytes()),
            target: Span::within(bytes, target.as_bytes()),
        };
        Ok(Head::new(bytes, line, minor_version, request.headers))
    }
}

impl RequestLine {
    /// Whether a request line that httparse refused is one of another HTTP version: a
    /// method and a target only (HTTP/0.9), or a version after them that is not 1.x.
    fn other_version(line: &[u8]) -> bool {
        let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        match parts[..] {
            [method, target] => {
                !method.is_empty() && method.iter().all(|&b| is_token(b)) && !target.is_empty()
            }
            [_, _, version] => version.starts_with(b"HTTP/") && !is_http1(version),
            _ => false,
        }
    }
}

impl StartLine for StatusLine {
    fn check(bytes: &[u8]) -> Result<(), Reason> {
        let mut response = httparse::Response::new(&mut []);
        match response.parse(bytes) {
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Ok(()),
            Err(error) => Err(refusal(error, bytes, StatusLine::other_version)),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Head<Self>, Reason> {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            bytes,
            &mut fields,
        );
        let refused = |error| refusal(error, bytes, StatusLine::other_version);
        if parsed.map_err(refused)? != httparse::Status::Complete(bytes.len()) {
            return Err(Reason::Malformed);
        }
        let (Some(status), Some(minor_version)) = (response.code, response.version) else {
            return Err(Reason::Malformed);
        };
        // `HTTP/1.1 200 OK`: the reason phrase starts after the 13th byte. Read from the
        // bytes rather than from httparse, which hides one with bytes beyond ASCII.
        let line = start_line(bytes);
        let reason = match line.get(13..) {
            Some(reason) => Span::within(bytes, reason),
            None => Span::default(),
        };
        let line = StatusLine { status, reason };
        Ok(Head::new(bytes, line, minor_version, response.headers))
    }
}

impl StatusLine {
    /// Whether a status line that httparse refused names another HTTP version.
    fn other_version(line: &[u8]) -> bool {
        let version = line.split(|&b| b == b' ').next().unwrap_or_default();
        version.starts_with(b"HTTP/") && !is_http1(version)
    }
}

/// Why httparse refused `head`, as a [`Reason`].
fn refusal(error: httparse::Error, head: &[u8], other_version: fn(&[u8]) -> bool) -> Reason {
    let line = start_line(head);
    if error == httparse::Error::TooManyHeaders {
        Reason::TooManyHeaders
    } else if line == b"PRI * HTTP/2.0" {
        Reason::Http2Preface
    } else if other_version(line) {
        Reason::UnsupportedVersion
    } else {
        Reason::Malformed
    }
}

/// The start line of a head: its first line that is not empty, without CR LF.
fn start_line(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line = head[start..]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_http1(version: &[u8]) -> bool {
    version == b"HTTP/1.0" || version == b"HTTP/1.1"
}

impl Framer {
    fn new(head_limit: usize) -> Self {
        Framer {
            state: State::Head(HeadScan::default()),
            buffer: Vec::new(),
            buffer_lent: false,
            head_limit,
            end_of_stream: false,
            gave_up: None,
        }
    }

    fn give_up(&mut self, reason: Reason) {
        self.gave_up = Some(reason);
        self.state = State::GivingUp(reason);
    }

    /// The next piece (see `RequestSplitter::next_piece`). `decide` frames a head's body,
    /// or refuses to.
    fn next_piece<'s, 'i: 's, L: StartLine>(
        &'s mut self,
        input: &mut &'i [u8],
        mut decide: impl FnMut(&Head<L>) -> Result<(Framing, After), Reason>,
    ) -> Option<Piece<'s, L>> {
        if self.buffer_lent {
            self.buffer.clear();
            self.buffer_lent = false;
        }
        loop {
            match self.state {
                State::Head(scan) => {
                    if input.is_empty() {
                        if !self.end_of_stream {
                            return None;
                        }
                        self.state = State::Closed;
                        if self.buffer.is_empty() {
                            return None;
                        }
                        self.buffer_lent = true;
                        // Empty lines with no message after them are no message cut short.
                        if self.buffer.iter().all(|&b| b == b'\r' || b == b'\n') {
                            return Some(Piece::Opaque(&self.buffer));
                        }
                        return Some(Piece::Truncated(&self.buffer));
                    }
                    if let Some(head) = self.read_head(scan, input, &mut decide) {
                        return Some(Piece::Head(head));
                    }
                }
                State::Body(body, after) => {
                    if input.is_empty() {
                        if !self.end_of_stream {
                            return None;
                        }
                        self.state = State::Closed;
                        return Some(match body {
                            Body::UntilClose => Piece::End,
                            Body::Length(_) | Body::Chunked(_) => Piece::Truncated(&[]),
                        });
                    }
                    if let Some(piece) = self.read_body(body, after, input) {
                        return Some(piece);
                    }
                }
                State::Ended(after) => {
                    match after {
                        After::NextMessage => self.state = State::Head(HeadScan::default()),
                        After::GiveUp(reason) => self.give_up(reason),
                    }
                    return Some(Piece::End);
                }
                State::GivingUp(reason) => {
                    self.state = if self.buffer.is_empty() {
                        State::Opaque
                    } else {
                        State::LendBuffer
                    };
                    return Some(Piece::GaveUp(reason));
                }
                State::LendBuffer => {
                    self.state = State::Opaque;
                    self.buffer_lent = true;
                    return Some(Piece::Opaque(&self.buffer));
                }
                State::Opaque | State::Closed => {
                    if input.is_empty() {
                        return None;
                    }
                    return Some(Piece::Opaque(std::mem::take(input)));
                }
            }
        }
    }

    /// Reads the head at the front of `input`. Returns it when it is whole and framed;
    /// otherwise uses all of `input` (buffering it) or gives up, leaving unread what is
    /// not buffered.
    fn read_head<L: StartLine>(
        &mut self,
        mut scan: HeadScan,
        input: &mut &[u8],
        decide: &mut impl FnMut(&Head<L>) -> Result<(Framing, After), Reason>,
    ) -> Option<Head<L>> {
        let bytes = *input;
        let earlier = self.buffer.len();
        // How many bytes of `bytes` are in `buffer`: a head's bytes are read where they
        // lie while it all comes in one slice, and gathered into `buffer` otherwise.
        let mut buffered = 0;
        let mut next = 0;
        while next < bytes.len() {
            // After the start line, only line ends matter: go straight to the next one
            // (a state step per byte made the scan most of a small head's cost). What is
            // skipped lies before the byte stepped next, whose limit check covers it.
            if scan.started {
                next += scan.skip_line(&bytes[next..]);
                if next == bytes.len() {
                    if earlier + next > self.head_limit {
                        *input = &bytes[buffered..];
                        self.give_up(Reason::HeadTooLarge);
                        return None;
                    }
                    break;
                }
            }
            let (at, byte) = (next, bytes[next]);
            next += 1;
            let refused = if earlier + at >= self.head_limit {
                Reason::HeadTooLarge
            } else {
                match scan.step(byte) {
                    HeadStep::More => continue,
                    HeadStep::Invalid => Reason::Malformed,
                    HeadStep::StartLineEnded => {
                        match L::check(self.gather(bytes, &mut buffered, at + 1)) {
                            Ok(()) => continue,
                            Err(reason) => reason,
                        }
                    }
                    HeadStep::HeadEnded => {
                        let head = L::parse(self.gather(bytes, &mut buffered, at + 1));
                        match head.and_then(|head| frame(head, &mut *decide)) {
                            Ok((head, after)) => {
                                *input = &bytes[at + 1..];
                                self.buffer.clear();
                                self.state = body_state(head.framing, after);
                                return Some(head);
                            }
                            Err(reason) => reason,
                        }
                    }
                }
            };
            // What is buffered goes out as opaque first, then the rest of `input`.
            *input = &bytes[buffered..];
            self.give_up(refused);
            return None;
        }
        self.buffer.extend_from_slice(&bytes[buffered..]);
        *input = &[];
        self.state = State::Head(scan);
        None
    }

    /// The head so far, up to `bytes[..end]`: `bytes` itself while nothing is buffered,
    /// `buffer` with the rest of it appended otherwise.
    fn gather<'a>(&'a mut self, bytes: &'a [u8], buffered: &mut usize, end: usize) -> &'a [u8] {
        if self.buffer.is_empty() {
            return &bytes[..end];
        }
        self.buffer.extend_from_slice(&bytes[*buffered..end]);
        *buffered = end;
        &self.buffer
    }

    /// Reads body bytes off the front of `input` (not empty). `None` when it used none
    /// and gave up instead.
    fn read_body<'i, L>(
        &mut self,
        body: Body,
        after: After,
        input: &mut &'i [u8],
    ) -> Option<Piece<'i, L>> {
        let (raw, data) = match body {
            Body::Length(left) => {
                let len = usize::try_from(left).map_or(input.len(), |left| left.min(input.len()));
                let raw = take(input, len);
                let left = left - len as u64;
                self.state = match left {
                    0 => State::Ended(after),
                    left => State::Body(Body::Length(left), after),
                };
                (raw, raw)
            }
            Body::UntilClose => {
                let raw = std::mem::take(input);
                (raw, raw)
            }
            Body::Chunked(chunk) => {
                let read = read_chunked(chunk, input, self.head_limit);
                let raw = take(input, read.used);
                match read.next {
                    ChunkNext::More(chunk) => self.state = State::Body(Body::Chunked(chunk), after),
                    ChunkNext::Done => self.state = State::Ended(after),
                    ChunkNext::Invalid(reason) => self.give_up(reason),
                }
                (raw, raw.get(read.data).unwrap_or_default())
            }
        };
        if raw.is_empty() {
            return None;
        }
        Some(Piece::Body { raw, data })
    }
}

/// The state after a head whose body is framed so.
fn body_state(framing: Framing, after: After) -> State {
    match framing {
        Framing::NoBody | Framing::Length(0) => State::Ended(after),
        Framing::Length(length) => State::Body(Body::Length(length), after),
        Framing::Chunked => State::Body(Body::Chunked(Chunk::START), after),
        Framing::UntilClose => State::Body(Body::UntilClose, after),
    }
}

/// Frames a parsed head with `decide`.
fn frame<L>(
    mut head: Head<L>,
    decide: impl FnOnce(&Head<L>) -> Result<(Framing, After), Reason>,
) -> Result<(Head<L>, After), Reason> {
    let (framing, after) = decide(&head)?;
    head.framing = framing;
    Ok((head, after))
}

/// Takes `len` bytes (at most `input.len()`) off the front of `input`.
fn take<'i>(input: &mut &'i [u8], len: usize) -> &'i [u8] {
    let (front, rest) = input.split_at(len.min(input.len()));
    *input = rest;
    front
}

// ---------------------------------------------------------------------------------------
// Where a head ends.

/// Finds a head's end, one byte at a time, so that a head split across slices is found
/// exactly as a whole one: at the first empty line after the start line.
#[derive(Clone, Copy, Debug, Default)]
struct HeadScan {
    line: Line,
    /// The start line has ended (empty lines before it do not count).
    started: bool,
}

/// The line being read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Line {
    /// Nothing yet.
    #[default]
    Empty,
    /// Only a CR: with LF, an empty line.
    Cr,
    /// Anything else.
    Text,
}

enum HeadStep {
    More,
    /// The start line ended with this byte: check it.
    StartLineEnded,
    /// The head ended with this byte: parse it.
    HeadEnded,
    /// A byte no start line has (a control byte: a TLS handshake, binary garbage).
    Invalid,
}

impl HeadScan {
    /// Once the start line has ended: takes the bytes of `bytes` before its first LF as
    /// [`step`](Self::step) would (none of them ends a line), and says how many they are.
    fn skip_line(&mut self, bytes: &[u8]) -> usize {
        debug_assert!(self.started);
        let len = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
        self.line = match (self.line, &bytes[..len]) {
            (line, []) => line,
            (Line::Empty, b"\r") => Line::Cr,
            _ => Line::Text,
        };
        len
    }

    fn step(&mut self, byte: u8) -> HeadStep {
        if byte == b'\n' {
            let empty = self.line != Line::Text;
            self.line = Line::Empty;
            return match (empty, self.started) {
                (true, true) => HeadStep::HeadEnded,
                (false, false) => {
                    self.started = true;
                    HeadStep::StartLineEnded
                }
                _ => HeadStep::More,
            };
        }
        if !self.started && byte != b'\r' && is_control(byte) {
            return HeadStep::Invalid;
        }
        self.line = match (self.line, byte) {
            (Line::Empty, b'\r') => Line::Cr,
            _ => Line::Text,
        };
        HeadStep::More
    }
}

// ---------------------------------------------------------------------------------------
// Chunked bodies (RFC 9112 §7.1):
//
//   chunked-body = *chunk last-chunk trailer-section CRLF
//   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//   last-chunk   = 1*("0") [ chunk-ext ] CRLF
//
// Read one byte at a time, except chunk data, which is taken in one slice: nothing is
// buffered, so a chunk-size line or a trailer section split across slices costs nothing.

/// Where a chunked body is, between two of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In the chunk size's hex digits; `digits`: at least one was read.
    Size { size: u64, digits: bool },
    /// Whitespace after the size, before `;` or CR.
    AfterSize { size: u64 },
    /// In a chunk extension (`;name=value`), until CR.
    Extension { size: u64 },
    /// The size line's CR was read: LF next.
    SizeLf { size: u64 },
    /// In chunk data, `left` bytes to go.
    Data { left: u64 },
    /// Chunk data ended: CR next.
    DataCr,
    /// LF next.
    DataLf,
    /// At the start of a trailer field line, or of the empty line that ends the body;
    /// `seen` bytes of trailers so far.
    TrailerStart { seen: usize },
    /// In a trailer field line.
    TrailerLine { seen: usize },
    /// A trailer line's CR was read: LF next.
    TrailerLf { seen: usize },
    /// The final CR was read: LF ends the body.
    FinalLf,
}

impl Chunk {
    const START: Chunk = Chunk::Size {
        size: 0,
        digits: false,
    };
}

/// What one call of [`read_chunked`] read: the first `used` bytes, of which `data` were
/// chunk data.
struct ChunkRead {
    used: usize,
    data: Range<usize>,
    next: ChunkNext,
}

enum ChunkNext {
    More(Chunk),
    Done,
    /// The byte at `used` breaks the grammar.
    Invalid(Reason),
}

/// What one framing byte does.
enum ChunkStep {
    Next(Chunk),
    /// A chunk ended (its data's CRLF).
    ChunkEnded,
    /// The body ended.
    BodyEnded,
}

/// Reads a chunked body from `at` through `bytes`, stopping after a chunk (so a piece
/// holds at most one chunk's data), at the body's end, or at a byte that breaks it.
fn read_chunked(mut at: Chunk, bytes: &[u8], trailer_limit: usize) -> ChunkRead {
    let mut used = 0;
    let mut data = 0..0;
    loop {
        if let Chunk::Data { left } = at {
            let len = usize::try_from(left)
                .map_or(bytes.len() - used, |left| left.min(bytes.len() - used));
            data = used..used + len;
            used += len;
            at = match left - len as u64 {
                0 => Chunk::DataCr,
                left => Chunk::Data { left },
            };
        }
        let Some(&byte) = bytes.get(used) else {
            return ChunkRead {
                used,
                data,
                next: ChunkNext::More(at),
            };
        };
        let next = match chunk_step(at, byte, trailer_limit) {
            Ok(ChunkStep::Next(next)) => {
                at = next;
                used += 1;
                continue;
            }
            Ok(ChunkStep::ChunkEnded) => ChunkNext::More(Chunk::START),
            Ok(ChunkStep::BodyEnded) => ChunkNext::Done,
            Err(reason) => {
                return ChunkRead {
                    used,
                    data,
                    next: ChunkNext::Invalid(reason),
                };
            }
        };
        return ChunkRead {
            used: used + 1,
            data,
            next,
        };
    }
}

/// One framing byte of a chunked body, read at `at`.
fn chunk_step(at: Chunk, byte: u8, trailer_limit: usize) -> Result<ChunkStep, Reason> {
    use Chunk::*;
    let trailer_byte = |seen: usize| {
        if seen < trailer_limit {
            Ok(seen + 1)
        } else {
            Err(Reason::TrailersTooLarge)
        }
    };
    if let Size { size, digits } = at {
        if let Some(digit) = hex_digit(byte) {
            if size > u64::MAX >> 4 {
                return Err(Reason::InvalidChunk);
            }
            return Ok(ChunkStep::Next(Size {
                size: size << 4 | digit,
                digits: true,
            }));
        }
        if !digits {
            return Err(Reason::InvalidChunk);
        }
    }
    let next = match (at, byte) {
        (Size { size, .. } | AfterSize { size }, b' ' | b'\t') => AfterSize { size },
        (Size { size, .. } | AfterSize { size }, b';') => Extension { size },
        (Size { size, .. } | AfterSize { size } | Extension { size }, b'\r') => SizeLf { size },
        (Extension { size }, _) if !is_control(byte) => Extension { size },
        (SizeLf { size: 0 }, b'\n') => TrailerStart { seen: 0 },
        (SizeLf { size }, b'\n') => Data { left: size },
        (DataCr, b'\r') => DataLf,
        (DataLf, b'\n') => return Ok(ChunkStep::ChunkEnded),
        (TrailerStart { .. }, b'\r') => FinalLf,
        (FinalLf, b'\n') => return Ok(ChunkStep::BodyEnded),
        (TrailerStart { seen } | TrailerLine { seen }, _) if !is_control(byte) => TrailerLine {
            seen: trailer_byte(seen)?,
        },
        (TrailerLine { seen }, b'\r') => TrailerLf {
            seen: trailer_byte(seen)?,
        },
        (TrailerLf { seen }, b'\n') => TrailerStart {
            seen: trailer_byte(seen)?,
        },
        _ => return Err(Reason::InvalidChunk),
    };
    Ok(ChunkStep::Next(next))
}

fn hex_digit(byte: u8) -> Option<u64> {
    let digit = match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => return None,
    };
    Some(u64::from(digit))
}

// ---------------------------------------------------------------------------------------
// Field syntax (RFC 9110 §5).

/// A control byte (CTL but HTAB): never in a start line, a field or a chunk extension.
fn is_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// A `tchar`: the bytes of methods and field names.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The elements of a comma-separated field value (`#element`), trimmed, empty ones
/// skipped.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|element| element.trim_ascii())
        .filter(|element| !element.is_empty())
}

/// `1*DIGIT` as a number; `None` for anything else or an overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        value.checked_mul(10)?.checked_add(digit)
    })
}

// ---------------------------------------------------------------------------------------
// Rewriting a request head for a shadow.

/// How a request head is rewritten before it goes to a shadow (`--shadow-host NAME`,
/// `--shadow-header 'Name: value'`): `Host` replaced, fields added. Checked once when
/// built, so applying it cannot fail.
///
/// ```
/// use ember::proxy::http1::{HeadRewrite, Piece, RequestSplitter};
///
/// let mut rewrite = HeadRewrite::new();
/// rewrite.set_host("shadow.internal")?.add_header("X-Shadow: 1")?;
///
/// let mut input = &b"GET /a HTTP/1.1\r\nhost: example.com\r\nAccept: */*\r\n\r\n"[..];
/// let Some(Piece::Head(head)) = RequestSplitter::new().next_piece(&mut input) else {
///     unreachable!()
/// };
/// assert_eq!(
///     rewrite.apply(&head),
///     b"GET /a HTTP/1.1\r\nhost: shadow.internal\r\nAccept: */*\r\nX-Shadow: 1\r\n\r\n"
/// );
/// # Ok::<(), ember::proxy::http1::InvalidField>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct HeadRewrite {
    host: Option<Box<[u8]>>,
    /// The added fields, serialised: `Name: value\r\n` each.
    added: Vec<u8>,
}

/// A host or header line a [`HeadRewrite`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidField {
    /// A host that is empty or has whitespace or control bytes.
    Host,
    /// A header line without `:` between name and value.
    NoColon,
    /// A field name that is empty or not a token (letters, digits, ``!#$%&'*+-.^_`|~``).
    Name,
    /// A field value with a control byte (CR, LF, NUL...).
    Value,
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidField::Host => "a host must be non-empty, without spaces or control bytes",
            InvalidField::NoColon => "a header must be written 'Name: value'",
            InvalidField::Name => "a header name must be a token (letters, digits, -, _ ...)",
            InvalidField::Value => "a header value must not hold control bytes (CR, LF, NUL)",
        })
    }
}

impl std::error::Error for InvalidField {}

impl HeadRewrite {
    /// A rewrite that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the value of every `Host` field with `host`, or adds `Host: host` after
    /// the fields when there is none (HTTP/1.0); and the host of an absolute-form target
    /// (`GET http://prod.example/a`), which a server goes by before the `Host` field.
    pub fn set_host(&mut self, host: &str) -> Result<&mut Self, InvalidField> {
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidField::Host);
        }
        self.host = Some(host.as_bytes().into());
        Ok(self)
    }

    /// Adds a field, written `Name: value`, after the head's own fields (and after the
    /// ones added before). A field of that name already in the head stays.
    pub fn add_header(&mut self, line: &str) -> Result<&mut Self, InvalidField> {
        let (name, value) = line.split_once(':').ok_or(InvalidField::NoColon)?;
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(InvalidField::Name);
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(is_control) {
            return Err(InvalidField::Value);
        }
        for part in [name, ": ", value, "\r\n"] {
            self.added.extend_from_slice(part.as_bytes());
        }
        Ok(self)
    }

    /// `head` rewritten: every byte as it came, in order, but the `Host` values and the
    /// added fields (written with CRLF, before the head's final empty line).
    pub fn apply(&self, head: &RequestHead) -> Vec<u8> {
        let mut out = Vec::with_capacity(head.byte_len() + self.added.len() + 64);
        self.write(head, &mut out);
        out
    }

    /// [`apply`](Self::apply), appending to `out`.
    pub fn write(&self, head: &RequestHead, out: &mut Vec<u8>) {
        let bytes = head.as_bytes();
        // The final empty line: LF, or CR LF.
        let empty_line = if bytes.ends_with(b"\r\n") { 2 } else { 1 };
        let fields_end = bytes.len().saturating_sub(empty_line);
        let mut copied = 0;
        let mut host_replaced = false;
        if let Some(host) = &self.host {
            // An absolute-form target names the host too, and a server goes by it rather
            // than by the Host field (RFC 9112 §3.2.2): it is replaced as well.
            if let Some(authority) = absolute_form_authority(head.line.target, bytes) {
                out.extend_from_slice(&bytes[..authority.start]);
                out.extend_from_slice(host);
                copied = authority.end;
            }
            for field in &head.fields {
                let name = field.name.of(bytes);
                if name.eq_ignore_ascii_case(b"host") && field.value.start >= copied {
                    out.extend_from_slice(&bytes[copied..field.value.start]);
                    out.extend_from_slice(host);
                    copied = field.value.end;
                    host_replaced = true;
                }
            }
        }
        out.extend_from_slice(&bytes[copied.min(fields_end)..fields_end]);
        if let (Some(host), false) = (&self.host, host_replaced) {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(host);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.added);
        out.extend_from_slice(&bytes[fields_end..]);
    }
}

/// Where the authority (`host[:port]`, with any `userinfo@`) of an absolute-form request
/// target lies in `bytes`: after `http://` or `https://` (any case), up to the path,
/// query or end. `None` for origin-form (`/path`), `*` and `CONNECT`'s `host:port`.
fn absolute_form_authority(target: Span, bytes: &[u8]) -> Option<Span> {
    let text = target.of(bytes);
    let scheme_end = text.windows(3).position(|w| w == b"://")?;
    let scheme = &text[..scheme_end];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    let start = scheme_end + 3;
    let len = text[start..]
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(text.len() - start);
    Some(Span {
        start: target.start + start,
        end: target.start + start + len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // -- The harness: every stream is fed whole, a byte at a time and at random cuts, and
    // -- every way must give the same pieces, whose raw bytes are the stream.

    /// A piece with its bytes copied, so that runs that cut the stream differently can be
    /// compared. Consecutive body (and opaque) pieces are merged: how a body is cut into
    /// pieces depends on the slices, what it holds does not.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Seen<L> {
        Head(Head<L>),
        Body { raw: Vec<u8>, data: Vec<u8> },
        End,
        Truncated(Vec<u8>),
        GaveUp(Reason),
        Opaque(Vec<u8>),
    }

    fn record<L>(seen: &mut Vec<Seen<L>>, piece: Piece<'_, L>) {
        match piece {
            Piece::Body { raw, data } => {
                assert!(!raw.is_empty(), "a body piece covers at least one byte");
                let raw_range = raw.as_ptr_range();
                let data_range = data.as_ptr_range();
                assert!(
                    raw_range.start <= data_range.start && data_range.end <= raw_range.end,
                    "a body piece's data is a part of its raw bytes"
                );
                if let Some(Seen::Body { raw: r, data: d }) = seen.last_mut() {
                    r.extend_from_slice(raw);
                    d.extend_from_slice(data);
                } else {
                    seen.push(Seen::Body {
                        raw: raw.to_vec(),
                        data: data.to_vec(),
                    });
                }
            }
            Piece::Opaque(raw) => {
                assert!(!raw.is_empty(), "an opaque piece covers at least one byte");
                if let Some(Seen::Opaque(r)) = seen.last_mut() {
                    r.extend_from_slice(raw);
                } else {
                    seen.push(Seen::Opaque(raw.to_vec()));
                }
            }
            Piece::Head(head) => seen.push(Seen::Head(head)),
            Piece::End => seen.push(Seen::End),
            Piece::Truncated(raw) => seen.push(Seen::Truncated(raw.to_vec())),
            Piece::GaveUp(reason) => {
                assert!(
                    !seen.iter().any(|s| matches!(s, Seen::GaveUp(_))),
                    "a splitter gives up once"
                );
                seen.push(Seen::GaveUp(reason));
            }
        }
    }

    /// The stream again, from the raw bytes of the pieces.
    fn raw_of<L>(seen: &[Seen<L>]) -> Vec<u8> {
        let mut raw = Vec::new();
        for piece in seen {
            match piece {
                Seen::Head(head) => raw.extend_from_slice(head.as_bytes()),
                Seen::Body { raw: bytes, .. } | Seen::Truncated(bytes) | Seen::Opaque(bytes) => {
                    raw.extend_from_slice(bytes)
                }
                Seen::End | Seen::GaveUp(_) => {}
            }
        }
        raw
    }

    /// splitmix64: a fixed-seed generator for the random cuts.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A number in `1..=max`.
        fn up_to(&mut self, max: usize) -> usize {
            1 + (self.next() % max.max(1) as u64) as usize
        }
    }

    /// Slice lengths that add up to `len`: short ones for some seeds, long for others.
    fn random_lengths(len: usize, seed: u64) -> Vec<usize> {
        let mut rng = Rng(seed);
        let longest = [2, 3, 7, 16, 64, len.max(1)][(seed % 6) as usize];
        let mut lengths = Vec::new();
        let mut left = len;
        while left > 0 {
            let next = rng.up_to(longest).min(left);
            lengths.push(next);
            left -= next;
        }
        lengths
    }

    /// Runs `run` with the stream whole, a byte at a time and at 32 random cuts; checks
    /// that the pieces cover the stream exactly and that every way agrees. Returns them.
    fn every_way<L: PartialEq + fmt::Debug>(
        stream: &[u8],
        run: impl Fn(&[usize]) -> Vec<Seen<L>>,
    ) -> Vec<Seen<L>> {
        let whole = run(&[stream.len()]);
        assert_eq!(
            raw_of(&whole).escape_ascii().to_string(),
            stream.escape_ascii().to_string(),
            "the raw bytes of the pieces are the stream"
        );
        assert_eq!(run(&vec![1; stream.len()]), whole, "fed a byte at a time");
        for seed in 0..32 {
            let lengths = random_lengths(stream.len(), seed);
            assert_eq!(run(&lengths), whole, "fed in slices of {lengths:?}");
        }
        whole
    }

    /// Feeds `stream` in slices of `lengths`, then ends it if `finish`.
    fn feed<L>(
        stream: &[u8],
        lengths: &[usize],
        finish: bool,
        mut next: impl FnMut(&mut &[u8], &mut dyn FnMut(Piece<'_, L>)),
        end: impl FnOnce(),
        mut after_end: impl FnMut(&mut dyn FnMut(Piece<'_, L>)),
    ) -> Vec<Seen<L>> {
        let mut seen = Vec::new();
        let mut rest = stream;
        for &len in lengths {
            let (mut slice, tail) = rest.split_at(len);
            rest = tail;
            next(&mut slice, &mut |piece| record(&mut seen, piece));
            assert!(slice.is_empty(), "a splitter uses every byte it is given");
        }
        if finish {
            end();
            after_end(&mut |piece| record(&mut seen, piece));
        }
        seen
    }

    fn split_requests(stream: &[u8], limit: usize, finish: bool) -> Vec<Seen<RequestLine>> {
        every_way(stream, |lengths| {
            let splitter = std::cell::RefCell::new(RequestSplitter::with_head_limit(limit));
            feed(
                stream,
                lengths,
                finish,
                |input, out| {
                    while let Some(piece) = splitter.borrow_mut().next_piece(input) {
                        out(piece);
                    }
                },
                || splitter.borrow_mut().finish(),
                |out| {
                    while let Some(piece) = splitter.borrow_mut().next_piece(&mut &b""[..]) {
                        out(piece);
                    }
                },
            )
        })
    }

    fn split_responses(
        stream: &[u8],
        methods: &[&str],
        limit: usize,
        finish: bool,
    ) -> Vec<Seen<StatusLine>> {
        every_way(stream, |lengths| {
            let mut splitter = ResponseSplitter::with_head_limit(limit);
            for method in methods {
                splitter.expect(method);
            }
            let splitter = std::cell::RefCell::new(splitter);
            feed(
                stream,
                lengths,
                finish,
                |input, out| {
                    while let Some(piece) = splitter.borrow_mut().next_piece(input) {
                        out(piece);
                    }
                },
                || splitter.borrow_mut().finish(),
                |out| {
                    while let Some(piece) = splitter.borrow_mut().next_piece(&mut &b""[..]) {
                        out(piece);
                    }
                },
            )
        })
    }

    fn requests(stream: &[u8]) -> Vec<Seen<RequestLine>> {
        split_requests(stream, DEFAULT_HEAD_LIMIT, false)
    }

    fn responses(stream: &[u8], methods: &[&str]) -> Vec<Seen<StatusLine>> {
        split_responses(stream, methods, DEFAULT_HEAD_LIMIT, false)
    }

    fn responses_to_the_end(stream: &[u8], methods: &[&str]) -> Vec<Seen<StatusLine>> {
        split_responses(stream, methods, DEFAULT_HEAD_LIMIT, true)
    }

    /// The pieces in words: a head by its start line, a body by its payload, bytes escaped.
    fn summary<L>(seen: &[Seen<L>]) -> Vec<String> {
        seen.iter()
            .map(|piece| match piece {
                Seen::Head(head) => start_line(head.as_bytes()).escape_ascii().to_string(),
                Seen::Body { data, .. } => {
                    format!("body {}", data.escape_ascii()).trim().to_owned()
                }
                Seen::End => "end".to_owned(),
                Seen::Truncated(raw) => format!("truncated {}", raw.escape_ascii())
                    .trim()
                    .to_owned(),
                Seen::GaveUp(reason) => format!("gave up: {reason}"),
                Seen::Opaque(raw) => format!("opaque {}", raw.escape_ascii()),
            })
            .collect()
    }

    fn heads<L>(seen: &[Seen<L>]) -> Vec<&Head<L>> {
        seen.iter()
            .filter_map(|piece| match piece {
                Seen::Head(head) => Some(head),
                _ => None,
            })
            .collect()
    }

    fn bodies<L>(seen: &[Seen<L>]) -> Vec<(&[u8], &[u8])> {
        seen.iter()
            .filter_map(|piece| match piece {
                Seen::Body { raw, data } => Some((&raw[..], &data[..])),
                _ => None,
            })
            .collect()
    }

    /// A request head of exactly `len` bytes (at least 22), padded in one field.
    fn request_head_of(len: usize) -> Vec<u8> {
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(len - 4, b'p');
        head.extend_from_slice(b"\r\n\r\n");
        head
    }

    // -- Requests.

    #[test]
    fn a_content_length_body_comes_out_as_sent() {
        let seen =
            requests(b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world");
        assert_eq!(
            summary(&seen),
            ["POST /form HTTP/1.1", "body hello world", "end"]
        );
        let head = heads(&seen)[0];
        assert_eq!((head.method(), head.target()), ("POST", "/form"));
        assert_eq!(head.framing(), Framing::Length(11));
        assert_eq!(head.byte_len(), 52);
        assert_eq!(bodies(&seen), [(&b"hello world"[..], &b"hello world"[..])]);
    }

    #[test]
    fn a_chunked_body_is_decoded_and_its_framing_kept_in_the_raw_bytes() {
        let body = b"5;name=value\r\nhello\r\n00A ; q=\"a b\"\r\n world and\r\n0;last\r\n\
                     Expires: never\r\nX-Sum: abc\r\n\r\n";
        let mut stream =
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        let seen = requests(&stream);
        assert_eq!(
            summary(&seen),
            [
                "POST /up HTTP/1.1",
                "body hello world and",
                "end",
                "GET /next HTTP/1.1",
                "end"
            ]
        );
        assert_eq!(heads(&seen)[0].framing(), Framing::Chunked);
        assert_eq!(bodies(&seen), [(&body[..], &b"hello world and"[..])]);
    }

    #[test]
    fn a_chunked_body_comes_one_chunk_per_piece_when_whole() {
        let mut splitter = RequestSplitter::new();
        let mut input = &b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..];
        let mut pieces = Vec::new();
        while let Some(piece) = splitter.next_piece(&mut input) {
            if let Piece::Body { raw, data } = piece {
                pieces.push((raw.to_vec(), data.to_vec()));
            }
        }
        assert_eq!(
            pieces,
            [
                (b"3\r\nabc\r\n".to_vec(), b"abc".to_vec()),
                (b"2\r\nde\r\n".to_vec(), b"de".to_vec()),
                (b"0\r\n\r\n".to_vec(), b"".to_vec()),
            ]
        );
    }

    #[test]
    fn pipelined_get_post_get_come_out_in_order() {
        let seen = requests(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody\
              GET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!(
            summary(&seen),
            [
                "GET /1 HTTP/1.1",
                "end",
                "POST /2 HTTP/1.1",
                "body body",
                "end",
                "GET /3 HTTP/1.1",
                "end"
            ]
        );
        assert_eq!(heads(&seen)[0].framing(), Framing::NoBody);
    }

    #[test]
    fn empty_lines_before_a_request_belong_to_its_head() {
        let seen = requests(b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(summary(&seen), ["GET / HTTP/1.1", "end"]);
        assert_eq!(
            heads(&seen)[0].as_bytes(),
            b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        assert_eq!(heads(&seen)[0].method(), "GET");
    }

    #[test]
    fn a_head_ending_in_bare_line_feeds_is_read() {
        let seen = requests(b"GET / HTTP/1.1\nHost: a\n\nGET /b HTTP/1.0\r\n\n");
        assert_eq!(
            summary(&seen),
            ["GET / HTTP/1.1", "end", "GET /b HTTP/1.0", "end"]
        );
        assert_eq!(heads(&seen)[1].minor_version(), 0);
    }

    #[test]
    fn expect_100_continue_is_noted_on_http_1_1_requests_only() {
        let seen = requests(
            b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx\
              POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\ny\
              POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nz",
        );
        let expects: Vec<bool> = heads(&seen).iter().map(|h| h.expects_continue()).collect();
        assert_eq!(expects, [true, false, false]);
    }

    #[test]
    fn connection_close_is_reported_and_http_1_0_closes_unless_kept_alive() {
        let seen = requests(
            b"GET /1 HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n\
              GET /2 HTTP/1.1\r\n\r\n\
              GET /3 HTTP/1.0\r\n\r\n\
              GET /4 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        );
        let closes: Vec<bool> = heads(&seen).iter().map(|h| h.closes_connection()).collect();
        assert_eq!(closes, [true, false, true, false]);
    }

    #[test]
    fn header_lookup_ignores_case_and_keeps_raw_values_in_order() {
        let seen = requests(
            b"GET / HTTP/1.1\r\nHOST: example.com\r\nX-Raw:  caf\xc3\xa9 \xff \r\nAccept: a\r\naccept: b\r\n\r\n",
        );
        let head = heads(&seen)[0];
        assert_eq!(head.header("host"), Some(&b"example.com"[..]));
        assert_eq!(head.header("x-raw"), Some(&b"caf\xc3\xa9 \xff"[..]));
        assert_eq!(head.header("missing"), None);
        assert_eq!(
            head.header_values("ACCEPT").collect::<Vec<_>>(),
            [b"a", b"b"]
        );
        let names: Vec<&str> = head.headers().map(|(name, _)| name).collect();
        assert_eq!(names, ["HOST", "X-Raw", "Accept", "accept"]);
    }

    #[test]
    fn a_request_cut_short_is_truncated_at_the_end_of_the_stream() {
        let cut_body = split_requests(
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            DEFAULT_HEAD_LIMIT,
            true,
        );
        assert_eq!(
            summary(&cut_body),
            ["POST / HTTP/1.1", "body short", "truncated"]
        );

        let cut_head = split_requests(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHo",
            DEFAULT_HEAD_LIMIT,
            true,
        );
        assert_eq!(
            summary(&cut_head),
            ["GET / HTTP/1.1", "end", "truncated GET /b HTTP/1.1\\r\\nHo"]
        );

        let between = split_requests(b"GET / HTTP/1.1\r\n\r\n", DEFAULT_HEAD_LIMIT, true);
        assert_eq!(summary(&between), ["GET / HTTP/1.1", "end"]);

        // A stray CRLF after a body (RFC 9112 §2.2) is no request cut short.
        let stray = split_requests(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n",
            DEFAULT_HEAD_LIMIT,
            true,
        );
        assert_eq!(
            summary(&stray),
            ["POST / HTTP/1.1", "body x", "end", "opaque \\r\\n"]
        );
    }

    #[test]
    fn an_upgrade_request_ends_framing_after_its_body() {
        let seen = requests(
            b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Content-Length: 2\r\n\r\nhi\x81\x85frame",
        );
        assert_eq!(
            summary(&seen),
            [
                "GET /chat HTTP/1.1",
                "body hi",
                "end",
                "gave up: upgrade",
                "opaque \\x81\\x85frame"
            ]
        );
    }

    #[test]
    fn an_h2c_probe_goes_on_framing_until_the_preface_of_an_accepted_upgrade() {
        let probe = "GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                     Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
        // Declined (answered in HTTP/1.1): the next request is framed as usual.
        let declined = requests(format!("{probe}GET /b HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        assert_eq!(
            summary(&declined),
            ["GET /a HTTP/1.1", "end", "GET /b HTTP/1.1", "end"]
        );
        // Accepted: the client's next bytes are HTTP/2's preface.
        let accepted = requests(format!("{probe}PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").as_bytes());
        assert_eq!(
            summary(&accepted)[..3],
            ["GET /a HTTP/1.1", "end", "gave up: http2_preface"]
        );
        // h2c among other protocols is an upgrade like any other.
        let mixed = requests(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, websocket\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        );
        assert_eq!(
            summary(&mixed)[..3],
            ["GET / HTTP/1.1", "end", "gave up: upgrade"]
        );
    }

    #[test]
    fn a_connect_request_ends_framing_after_its_head() {
        let seen = requests(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x00",
        );
        assert_eq!(
            summary(&seen),
            [
                "CONNECT example.com:443 HTTP/1.1",
                "end",
                "gave up: connect",
                "opaque \\x16\\x03\\x01\\x00"
            ]
        );
        assert_eq!(heads(&seen)[0].target(), "example.com:443");
    }

    // -- Giving up.

    #[test]
    fn garbage_gives_up_as_malformed_and_every_byte_passes_through() {
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert_eq!(
            summary(&requests(tls)),
            [
                "gave up: malformed",
                "opaque \\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03"
            ]
        );
        let json = b"{\"not\": \"http\"}\r\n\r\n";
        assert_eq!(
            summary(&requests(json)),
            [
                "gave up: malformed",
                "opaque {\\\"not\\\": \\\"http\\\"}\\r\\n\\r\\n"
            ]
        );
        let ssh = b"SSH-2.0-OpenSSH_9.2\r\nrest";
        assert_eq!(
            summary(&responses(ssh, &["GET"])),
            ["gave up: malformed", "opaque SSH-2.0-OpenSSH_9.2\\r\\nrest"]
        );
        let after_a_request = b"GET / HTTP/1.1\r\n\r\n\x00\x01GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            summary(&requests(after_a_request)),
            [
                "GET / HTTP/1.1",
                "end",
                "gave up: malformed",
                "opaque \\x00\\x01GET / HTTP/1.1\\r\\n\\r\\n"
            ]
        );
        let bad_field = b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n";
        assert_eq!(summary(&requests(bad_field))[0], "gave up: malformed");
    }

    #[test]
    fn other_http_versions_give_up_at_their_first_line() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(summary(&requests(preface))[0], "gave up: http2_preface");
        // HTTP/0.9 has no head to end: the first line decides.
        assert_eq!(
            summary(&requests(b"GET /index.html\r\n")),
            [
                "gave up: unsupported_version",
                "opaque GET /index.html\\r\\n"
            ]
        );
        assert_eq!(
            summary(&requests(b"GET / HTTP/2.0\r\n"))[0],
            "gave up: unsupported_version"
        );
        assert_eq!(
            summary(&responses(b"HTTP/2 200\r\n", &["GET"]))[0],
            "gave up: unsupported_version"
        );
    }

    #[test]
    fn content_lengths_that_disagree_give_up() {
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
        assert_eq!(
            summary(&requests(stream)),
            [
                "gave up: conflicting_content_length".to_owned(),
                format!("opaque {}", stream.escape_ascii())
            ]
        );
        let list = b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!";
        assert_eq!(
            summary(&requests(list))[0],
            "gave up: conflicting_content_length"
        );
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(
            summary(&responses(response, &["GET"]))[0],
            "gave up: conflicting_content_length"
        );
    }

    #[test]
    fn repeated_equal_content_lengths_are_one_length() {
        let seen = requests(
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 005\r\n\r\nhello",
        );
        assert_eq!(summary(&seen), ["POST / HTTP/1.1", "body hello", "end"]);
    }

    #[test]
    fn a_content_length_that_is_not_a_number_gives_up() {
        for value in ["-1", "+5", "5 5", "0x10", "", "18446744073709551616"] {
            let stream = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                summary(&requests(stream.as_bytes()))[0],
                "gave up: invalid_content_length",
                "Content-Length: {value}"
            );
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_gives_up() {
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                       3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            summary(&requests(stream))[0],
            "gave up: length_and_transfer_encoding"
        );
        let response =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            summary(&responses(response, &["GET"]))[0],
            "gave up: length_and_transfer_encoding"
        );
    }

    #[test]
    fn transfer_encodings_that_cannot_be_framed_give_up() {
        for (stream, why) in [
            (
                &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
                "chunked not last",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "chunked not last",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "chunked twice",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n",
                "an empty list",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.0",
            ),
        ] {
            assert_eq!(
                summary(&requests(stream))[0],
                "gave up: transfer_encoding",
                "{why}"
            );
        }
    }

    #[test]
    fn a_head_over_the_limit_gives_up_and_one_at_the_limit_does_not() {
        let at_limit = request_head_of(64);
        assert_eq!(summary(&split_requests(&at_limit, 64, false))[1], "end");

        let mut over = request_head_of(65);
        over.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let seen = split_requests(&over, 64, false);
        assert_eq!(
            summary(&seen),
            [
                "gave up: head_too_large".to_owned(),
                format!("opaque {}", over.escape_ascii())
            ]
        );

        let no_line_end = vec![b'A'; 100];
        assert_eq!(
            summary(&split_requests(&no_line_end, 64, false))[0],
            "gave up: head_too_large"
        );
    }

    #[test]
    fn the_default_head_limit_is_64_kib() {
        let fits = request_head_of(DEFAULT_HEAD_LIMIT);
        assert_eq!(summary(&requests(&fits))[1], "end");
        let over = request_head_of(DEFAULT_HEAD_LIMIT + 1);
        assert_eq!(summary(&requests(&over))[0], "gave up: head_too_large");
    }

    #[test]
    fn more_fields_than_the_maximum_give_up() {
        let mut stream = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            stream.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        stream.extend_from_slice(b"\r\n");
        assert_eq!(summary(&requests(&stream))[0], "gave up: too_many_headers");
    }

    #[test]
    fn a_bad_chunk_gives_up_after_the_bytes_that_were_good() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // The good bytes before the bad one come as body (with or without payload).
        for (body, after_head) in [
            ("zz\r\n", &["opaque zz\\r\\n"][..]),
            ("5\r\nhelloXX\r\n", &["body hello", "opaque XX\\r\\n"]),
            ("5\nhello\r\n", &["body", "opaque \\nhello\\r\\n"]),
            (
                "5\r\nhello\r\n3;a\x00b\r\n",
                &["body hello", "opaque \\x00b\\r\\n"],
            ),
            ("fffffffffffffffff\r\n", &["body", "opaque f\\r\\n"]),
            (";ext\r\n", &["opaque ;ext\\r\\n"]),
            ("0\r\nTrailer: x\n\r\n", &["body", "opaque \\n\\r\\n"]),
            ("0\r\n\rX", &["body", "opaque X"]),
        ] {
            let seen = summary(&requests(format!("{head}{body}").as_bytes()));
            let (opaque, framed) = after_head.split_last().expect("an opaque piece");
            let mut expected = vec!["POST / HTTP/1.1", "gave up: invalid_chunk", opaque];
            expected.splice(1..1, framed.iter().copied());
            assert_eq!(seen, expected, "body {body:?}");
        }
    }

    #[test]
    fn a_trailer_section_over_the_limit_gives_up() {
        let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        stream.extend_from_slice(format!("X-Long: {}\r\n\r\n", "t".repeat(80)).as_bytes());
        let seen = split_requests(&stream, 64, false);
        assert_eq!(summary(&seen)[2], "gave up: trailers_too_large");

        let mut fits = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        fits.extend_from_slice(format!("X-Long: {}\r\n\r\n", "t".repeat(50)).as_bytes());
        assert_eq!(summary(&split_requests(&fits, 64, false))[2], "end");
    }

    #[test]
    fn bytes_given_after_the_end_of_the_stream_pass_through() {
        let mut splitter = RequestSplitter::new();
        let mut input = &b"GET / HTTP/1.1\r\n\r\n"[..];
        while splitter.next_piece(&mut input).is_some() {}
        splitter.finish();
        assert!(splitter.next_piece(&mut &b""[..]).is_none());
        let mut late = &b"late"[..];
        assert!(matches!(
            splitter.next_piece(&mut late),
            Some(Piece::Opaque(b"late"))
        ));
        assert_eq!(splitter.gave_up(), None);
    }

    #[test]
    fn gave_up_names_the_reason_for_the_caller_to_count() {
        let mut splitter = RequestSplitter::new();
        let mut input = &b"\x16\x03\x01"[..];
        while splitter.next_piece(&mut input).is_some() {}
        assert_eq!(splitter.gave_up(), Some(Reason::Malformed));
        assert_eq!(Reason::Malformed.as_str(), "malformed");
    }

    // -- Responses.

    #[test]
    fn a_response_to_head_has_no_body_whatever_its_length() {
        let seen = responses(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            &["HEAD", "GET"],
        );
        assert_eq!(
            summary(&seen),
            [
                "HTTP/1.1 200 OK",
                "end",
                "HTTP/1.1 200 OK",
                "body hello",
                "end"
            ]
        );
        assert_eq!(heads(&seen)[0].framing(), Framing::NoBody);
        assert_eq!(heads(&seen)[1].framing(), Framing::Length(5));
    }

    #[test]
    fn continue_100_comes_before_the_final_response_to_the_same_request() {
        let requests_seen = requests(
            b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert!(heads(&requests_seen)[0].expects_continue());

        let seen = responses(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            &["POST"],
        );
        assert_eq!(
            summary(&seen),
            [
                "HTTP/1.1 100 Continue",
                "end",
                "HTTP/1.1 201 Created",
                "body ok",
                "end"
            ]
        );
        let interim: Vec<bool> = heads(&seen).iter().map(|h| h.is_interim()).collect();
        assert_eq!(interim, [true, false]);
    }

    #[test]
    fn early_hints_103_do_not_use_up_the_request() {
        // Were the 103 taken for GET's answer, the 200 would be framed as HEAD's.
        let seen = responses(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
              HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            &["GET", "HEAD"],
        );
        assert_eq!(
            summary(&seen),
            [
                "HTTP/1.1 103 Early Hints",
                "end",
                "HTTP/1.1 200 OK",
                "body abc",
                "end",
                "HTTP/1.1 200 OK",
                "end"
            ]
        );
    }

    #[test]
    fn no_content_and_not_modified_ignore_their_content_length() {
        let seen = responses(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n\
              HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            &["DELETE", "GET", "GET"],
        );
        assert_eq!(
            summary(&seen),
            [
                "HTTP/1.1 204 No Content",
                "end",
                "HTTP/1.1 304 Not Modified",
                "end",
                "HTTP/1.1 200 OK",
                "body ok",
                "end"
            ]
        );
    }

    #[test]
    fn a_body_without_length_runs_until_the_stream_ends() {
        let stream = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of this, to the end";
        let open = responses(stream, &["GET"]);
        assert_eq!(
            summary(&open),
            ["HTTP/1.1 200 OK", "body all of this, to the end"]
        );
        let ended = responses_to_the_end(stream, &["GET"]);
        assert_eq!(
            summary(&ended),
            ["HTTP/1.1 200 OK", "body all of this, to the end", "end"]
        );
        let head = heads(&ended)[0];
        assert_eq!(head.framing(), Framing::UntilClose);
        assert!(head.closes_connection());

        let http_1_0 = responses_to_the_end(b"HTTP/1.0 200 OK\r\n\r\nold", &["GET"]);
        assert_eq!(summary(&http_1_0), ["HTTP/1.0 200 OK", "body old", "end"]);
        let empty = responses_to_the_end(b"HTTP/1.1 200 OK\r\n\r\n", &["GET"]);
        assert_eq!(summary(&empty), ["HTTP/1.1 200 OK", "end"]);
    }

    #[test]
    fn a_response_coded_otherwise_than_chunked_runs_until_the_stream_ends() {
        let seen = responses_to_the_end(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b",
            &["GET"],
        );
        assert_eq!(
            summary(&seen),
            ["HTTP/1.1 200 OK", "body \\x1f\\x8b", "end"]
        );
        let chunked_last = responses(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\n\x1f\x8b\r\n0\r\n\r\n",
            &["GET"],
        );
        assert_eq!(
            summary(&chunked_last),
            ["HTTP/1.1 200 OK", "body \\x1f\\x8b", "end"]
        );
    }

    #[test]
    fn a_content_length_body_cut_short_is_truncated_not_ended() {
        let seen = responses_to_the_end(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
            &["GET"],
        );
        assert_eq!(
            summary(&seen),
            ["HTTP/1.1 200 OK", "body only this", "truncated"]
        );
        let chunked = responses_to_the_end(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            &["GET"],
        );
        assert_eq!(
            summary(&chunked),
            ["HTTP/1.1 200 OK", "body hel", "truncated"]
        );
    }

    #[test]
    fn switching_protocols_passes_the_rest_through() {
        let seen = responses(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
              \x81\x05helloHTTP/1.1 200 OK\r\n\r\n",
            &["GET"],
        );
        assert_eq!(
            summary(&seen),
            [
                "HTTP/1.1 101 Switching Protocols",
                "end",
                "gave up: upgrade",
                "opaque \\x81\\x05helloHTTP/1.1 200 OK\\r\\n\\r\\n"
            ]
        );
        assert!(!heads(&seen)[0].is_interim());
    }

    #[test]
    fn a_2xx_to_connect_is_a_tunnel_and_a_refusal_is_not() {
        let tunnel = responses(
            b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03",
            &["CONNECT"],
        );
        assert_eq!(
            summary(&tunnel),
            [
                "HTTP/1.1 200 Connection Established",
                "end",
                "gave up: connect",
                "opaque \\x16\\x03\\x03"
            ]
        );
        let refused = responses(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno\
              HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            &["CONNECT", "GET"],
        );
        assert_eq!(
            summary(&refused),
            [
                "HTTP/1.1 407 Proxy Authentication Required",
                "body no",
                "end",
                "HTTP/1.1 200 OK",
                "end"
            ]
        );
    }

    #[test]
    fn a_response_with_no_request_waiting_gives_up() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        let seen = responses(stream, &["GET"]);
        assert_eq!(
            summary(&seen),
            [
                "HTTP/1.1 200 OK",
                "end",
                "gave up: unexpected_response",
                "opaque HTTP/1.1 200 OK\\r\\n\\r\\n"
            ]
        );
        let none_at_all = responses(b"HTTP/1.1 100 Continue\r\n\r\n", &[]);
        assert_eq!(summary(&none_at_all)[0], "gave up: unexpected_response");
    }

    #[test]
    fn more_requests_waiting_than_the_queue_holds_give_up_once_those_are_answered() {
        let methods = vec!["GET"; MAX_QUEUED_REQUESTS + 1];
        let one = b"HTTP/1.1 204 No Content\r\n\r\n";
        let stream = one.repeat(MAX_QUEUED_REQUESTS + 1);
        let seen = responses(&stream, &methods);
        assert_eq!(heads(&seen).len(), MAX_QUEUED_REQUESTS);
        assert_eq!(
            summary(&seen[seen.len() - 2..]),
            [
                "gave up: too_many_queued".to_owned(),
                format!("opaque {}", one.escape_ascii())
            ]
        );
    }

    #[test]
    fn expect_counts_the_requests_waiting() {
        let mut splitter = ResponseSplitter::new();
        splitter.expect("GET");
        splitter.expect("HEAD");
        assert_eq!(splitter.waiting(), 2);
        let mut input =
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..];
        while splitter.next_piece(&mut input).is_some() {}
        assert_eq!(splitter.waiting(), 1);
    }

    #[test]
    fn the_status_line_is_read_with_its_reason_phrase_raw() {
        let seen = responses(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n\
              HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n\
              HTTP/1.1 500 Erreur \xe9\r\nContent-Length: 0\r\n\r\n",
            &["GET", "GET", "GET"],
        );
        let lines: Vec<(u16, &[u8])> = heads(&seen)
            .iter()
            .map(|h| (h.status(), h.reason()))
            .collect();
        assert_eq!(
            lines,
            [(404, &b"Not Found"[..]), (200, b""), (500, b"Erreur \xe9")]
        );
    }

    // -- Whatever the bytes, no panic, and the pieces cover them.

    #[test]
    fn random_and_mangled_streams_are_covered_exactly_every_way() {
        let valid: [&[u8]; 3] = [
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;x=y\r\nwiki\r\n0\r\nT: 1\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbodyHTTP/1.0 200 OK\r\n\r\nuntil close",
        ];
        let alphabet = b"\r\n:; 0129aAfF\x00\xffHTTP/1.";
        let mut rng = Rng(12);
        for round in 0..150 {
            let mut stream = valid[round % valid.len()].to_vec();
            match round % 3 {
                0 => {
                    for _ in 0..rng.up_to(4) {
                        let at = rng.up_to(stream.len()) - 1;
                        stream[at] = alphabet[rng.up_to(alphabet.len()) - 1];
                    }
                }
                1 => {
                    let at = rng.up_to(stream.len()) - 1;
                    stream.insert(at, alphabet[rng.up_to(alphabet.len()) - 1]);
                }
                _ => stream = (0..rng.up_to(60)).map(|_| rng.next() as u8).collect(),
            }
            split_requests(&stream, 48, true);
            split_responses(&stream, &["GET", "HEAD", "POST"], 48, true);
        }
    }

    // -- Rewriting a head for a shadow.

    fn request_head(stream: &[u8]) -> RequestHead {
        let mut input = stream;
        match RequestSplitter::new().next_piece(&mut input) {
            Some(Piece::Head(head)) => head,
            other => panic!("no head in {}: {other:?}", stream.escape_ascii()),
        }
    }

    #[test]
    fn a_rewrite_replaces_host_adds_fields_and_keeps_every_other_byte() {
        let head = request_head(
            b"POST /p?q=1 HTTP/1.1\r\nhost:  prod.example:8080 \r\nX-Order: 1\r\n\
              Content-Length: 0\r\n\r\n",
        );
        let mut rewrite = HeadRewrite::new();
        rewrite
            .set_host("shadow.internal:81")
            .and_then(|r| r.add_header("X-Shadow: yes"))
            .and_then(|r| r.add_header("X-Empty:"))
            .expect("valid fields");
        assert_eq!(
            rewrite.apply(&head).escape_ascii().to_string(),
            "POST /p?q=1 HTTP/1.1\\r\\nhost:  shadow.internal:81 \\r\\nX-Order: 1\\r\\n\
             Content-Length: 0\\r\\nX-Shadow: yes\\r\\nX-Empty: \\r\\n\\r\\n"
        );
    }

    #[test]
    fn a_rewrite_adds_host_when_there_is_none_and_keeps_bare_line_feeds() {
        let head = request_head(b"GET / HTTP/1.0\nAccept: */*\n\n");
        let mut rewrite = HeadRewrite::new();
        rewrite.set_host("shadow").expect("valid host");
        assert_eq!(
            rewrite.apply(&head),
            b"GET / HTTP/1.0\nAccept: */*\nHost: shadow\r\n\n"
        );
    }

    #[test]
    fn a_rewrite_replaces_the_host_of_an_absolute_form_target_too() {
        let mut rewrite = HeadRewrite::new();
        rewrite.set_host("shadow:81").expect("valid host");
        for (target, rewritten) in [
            ("http://prod.example/a?b", "http://shadow:81/a?b"),
            ("HTTPS://user@prod.example:8443?x", "HTTPS://shadow:81?x"),
            ("http://prod.example", "http://shadow:81"),
            // Not absolute-form: left as they are.
            ("/http://prod.example/", "/http://prod.example/"),
            ("ftp://prod.example/", "ftp://prod.example/"),
            ("*", "*"),
        ] {
            let head = request_head(
                format!("OPTIONS {target} HTTP/1.1\r\nHost: prod.example\r\n\r\n").as_bytes(),
            );
            assert_eq!(
                String::from_utf8(rewrite.apply(&head)).unwrap(),
                format!("OPTIONS {rewritten} HTTP/1.1\r\nHost: shadow:81\r\n\r\n"),
                "{target}"
            );
        }
        // CONNECT's authority-form target is where the tunnel goes, not the server's
        // name: it is left alone.
        let head = request_head(b"CONNECT prod.example:443 HTTP/1.1\r\nHost: prod.example\r\n\r\n");
        assert!(
            rewrite
                .apply(&head)
                .starts_with(b"CONNECT prod.example:443 ")
        );
    }

    #[test]
    fn an_empty_rewrite_gives_the_head_back_unchanged() {
        let bytes = b"\r\nGET / HTTP/1.1\r\nHost:\r\nA: b\r\n\r\n";
        let head = request_head(bytes);
        assert_eq!(HeadRewrite::new().apply(&head), bytes);
        let mut out = b"before".to_vec();
        let mut rewrite = HeadRewrite::new();
        rewrite.set_host("h").expect("valid host");
        rewrite.write(&head, &mut out);
        assert_eq!(out, b"before\r\nGET / HTTP/1.1\r\nHost:h\r\nA: b\r\n\r\n");
    }

    #[test]
    fn a_rewrite_refuses_fields_that_would_break_the_head() {
        let mut rewrite = HeadRewrite::new();
        assert_eq!(rewrite.set_host("").err(), Some(InvalidField::Host));
        assert_eq!(rewrite.set_host("a b").err(), Some(InvalidField::Host));
        assert_eq!(
            rewrite.set_host("a\r\nX: y").err(),
            Some(InvalidField::Host)
        );
        assert_eq!(
            rewrite.add_header("no colon").err(),
            Some(InvalidField::NoColon)
        );
        assert_eq!(rewrite.add_header(": v").err(), Some(InvalidField::Name));
        assert_eq!(
            rewrite.add_header("Bad Name: v").err(),
            Some(InvalidField::Name)
        );
        assert_eq!(
            rewrite.add_header("X: a\r\nY: b").err(),
            Some(InvalidField::Value)
        );
        assert_eq!(
            rewrite.add_header("X: a\0").err(),
            Some(InvalidField::Value)
        );
        let head = request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            rewrite.apply(&head),
            head.as_bytes(),
            "refused fields leave no trace"
        );
    }
}
