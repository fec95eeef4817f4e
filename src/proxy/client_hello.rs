//! Reading the server name (SNI) and the ALPN offers from the first bytes of a TLS
//! connection without terminating TLS, for pass-through routing: what HAProxy's
//! `req.ssl_sni` and `req.ssl_alpn` do in `mode tcp` behind `tcp-request inspect-delay`.
//!
//! This module owns the reading of one TLS ClientHello and nothing else. [`peek`] never
//! touches a socket, never consumes or changes the bytes it is shown, keeps no state
//! between calls, and allocates only the [`ClientHello`] it returns.
//!
//! ## Use
//! - Call [`peek`] with everything the client has sent so far each time more arrives, one
//!   byte at a time if need be. [`Peek::Incomplete`] means wait (the inspect delay, a
//!   timeout, is the caller's); [`Peek::Hello`] means the whole ClientHello is in: route on
//!   it, then relay *every* byte received, the hello included, to the chosen backend, which
//!   terminates TLS itself; [`Peek::NotTls`] means these bytes are no ClientHello: close, or
//!   route to a default that expects something else.
//! - [`peek`] answers by [`MAX_HELLO`] bytes at the latest: a caller never buffers more than
//!   that before it knows.
//! - An answer never changes as more bytes arrive: `Hello` and `NotTls` are decided by the
//!   bytes already shown, so a caller may stop calling once it has one.
//!
//! ## What is read
//! - The record layer (RFC 8446 §5.1): handshake records (content type 22), version major
//!   3 (any minor: clients write 3.1 or 3.3 there), 1 to 16384 bytes of payload each.
//! - The handshake message may be fragmented across any number of consecutive handshake
//!   records, its 4-byte header included; it is reassembled as it is read, without a copy.
//!   A record of another type before its last byte rejects it: the RFC forbids interleaving.
//!   Whatever follows the hello's last byte is not looked at.
//! - The ClientHello (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2): version major 3, random, session
//!   id of at most 32 bytes, a non-empty even-length cipher suite list, at least one
//!   compression method, then either nothing (an SSL 3.0/TLS 1.0-era hello without
//!   extensions, still valid) or an extensions block filling the rest of the message
//!   exactly. Every length is checked against the one enclosing it.
//! - Extensions: `server_name` (0), `application_layer_protocol_negotiation` (16) and
//!   `supported_versions` (43) are parsed and must each appear at most once (a second
//!   `server_name` would let a client show the router one name and the backend another);
//!   every other extension is skipped by its length.
//!
//! ## Server names
//! What [`ClientHello::server_name`] holds is what a router can compare with a configured
//! name: the name lower-cased (DNS names are case-insensitive), one trailing dot removed
//! (RFC 6066 says the name is sent without one; some clients send it anyway). The rules
//! follow those of rustls (its `DnsName`), so that a name the router accepts is the name a
//! rustls backend terminating the same connection sees:
//! - The extension holds exactly one entry, of type `host_name` (0). An empty list, an
//!   entry of another type, or a second entry rejects the hello.
//! - Bytes `A-Z a-z 0-9 - _ .` only: no spaces, no non-ASCII (an internationalised name
//!   travels as its `xn--` A-label, which passes), no NUL. The underscore is accepted
//!   because real host names have one (`_acme-challenge`, Windows hosts) and rustls takes
//!   them.
//! - 1 to 253 bytes without the trailing dot; labels of 1 to 63 bytes (no `a..b`, no leading
//!   dot), none starting or ending with `-`; the last label not a number (`123`, `0x1f`),
//!   which would read as an IPv4 address.
//! - An IP address (`192.0.2.1`, `2001:db8::1`) is not a host name: RFC 6066 forbids it,
//!   rustls ignores it. It gives `server_name: None`, as if the client had sent no name,
//!   rather than a rejection, because some clients do send one.
//! - With Encrypted Client Hello, the name read is the outer, public name.
//!
//! ## Limits
//! [`MAX_HELLO`] is 16 KiB for the handshake message and room for 256 record headers. A
//! ClientHello fits one record (2^14 bytes of plaintext), and clients send it in one (a
//! Chrome hello with a post-quantum key share is about 1.8 KiB); fragmenting one into many
//! small records is a trick to slip past middleboxes rather than something a proxy must
//! follow to any length. So: a message longer than 16 KiB, its
//! header included, is rejected as soon as its header says so; a message whose records,
//! headers included, would not end within [`MAX_HELLO`] bytes is rejected as soon as that
//! is certain. A hello of the full 16 KiB may come in 256 records; a smaller one in more (a
//! 2 KiB hello even one byte per record).
//!
//! Not read: SSLv2-compatible hellos (rejected: they carry no extensions, and no mainstream
//! client has sent one by default for over a decade), DTLS, QUIC.

use std::fmt;
use std::net::IpAddr;

/// How many bytes [`peek`] ever needs before it answers: a 16 KiB ClientHello message
/// and 256 record headers of 5 bytes (see the module docs). With this many bytes or more,
/// [`peek`] returns [`Peek::Hello`] or [`Peek::NotTls`], never [`Peek::Incomplete`].
pub const MAX_HELLO: usize = MAX_MESSAGE + MAX_FULL_SIZE_RECORDS * RECORD_HEADER_LEN;

/// The longest ClientHello message accepted, its 4-byte handshake header included: one
/// full record's plaintext.
const MAX_MESSAGE: usize = 16 * 1024;
/// How many records a message of [`MAX_MESSAGE`] bytes may be fragmented into.
const MAX_FULL_SIZE_RECORDS: usize = 256;

/// Content type, version (2 bytes), length (2 bytes).
const RECORD_HEADER_LEN: usize = 5;
/// The most plaintext a record may carry (RFC 8446 §5.1).
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const TLS_MAJOR: u8 = 3;

/// Handshake type (1 byte), length (3 bytes).
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RANDOM_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 32;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// The longest host name, without a trailing dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// What [`peek`] made of the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Everything so far can start a ClientHello: call again when more bytes arrive.
    Incomplete,
    /// The whole ClientHello has arrived. Nothing is consumed: relay every byte received.
    Hello(ClientHello),
    /// These bytes are not a TLS ClientHello this module accepts.
    NotTls(NotTls),
}

/// What a ClientHello offered, as far as routing needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name of the `server_name` extension (RFC 6066), lower-cased and without a
    /// trailing dot. `None` when the hello has no such extension, or when it names an IP
    /// address (see the module docs).
    pub server_name: Option<String>,
    /// The protocols of the ALPN extension (RFC 7301), in the client's order of
    /// preference, GREASE values (RFC 8701) left out. Empty without the extension.
    pub alpn: Vec<Vec<u8>>,
    /// The hello's own version field: `0x0303` (TLS 1.2) from every TLS 1.3 client, which
    /// lists what it really speaks in `supported_versions`.
    pub legacy_version: u16,
    /// The versions of the `supported_versions` extension (RFC 8446 §4.2.1), `0x0304` for
    /// TLS 1.3, in the client's order, GREASE values left out. Empty without the extension
    /// (a client of TLS 1.2 or older).
    pub supported_versions: Vec<u16>,
}

/// Why the bytes received cannot be a ClientHello. The `Display` is one line, starting
/// `not TLS:` when the record layer is wrong and `bad TLS ClientHello:` when a hello's
/// content is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotTls {
    /// A record of a content type other than handshake (22) where the hello starts (`at`
    /// 0) or continues.
    NotHandshakeRecord {
        /// Where the record starts in the bytes received.
        at: usize,
        /// Its first byte.
        content_type: u8,
    },
    /// A first byte with its high bit set: an SSLv2-style record header (the byte).
    Sslv2Hello(u8),
    /// A record whose version major byte is not 3 (SSL 3.0 and every TLS).
    RecordVersion {
        /// Where the record starts in the bytes received.
        at: usize,
        /// Its version major byte.
        major: u8,
    },
    /// A record with no payload or with more than 2^14 bytes.
    RecordLength {
        /// Where the record starts in the bytes received.
        at: usize,
        /// Its announced length.
        len: usize,
    },
    /// A first handshake message that is not a ClientHello (1): its type.
    NotClientHello(u8),
    /// A ClientHello longer than 16 KiB: its length, handshake header included.
    HelloTooLong(usize),
    /// A ClientHello whose records, headers included, would not end within [`MAX_HELLO`]
    /// bytes.
    TooFragmented,
    /// A ClientHello version whose major byte is not 3: the version.
    HelloVersion(u16),
    /// A ClientHello whose lengths or fields are inconsistent: what is wrong.
    Malformed(&'static str),
    /// An extension parsed here (`server_name`, ALPN, `supported_versions`) that appears
    /// twice: its type.
    DuplicateExtension(u16),
    /// A `server_name` entry of a type other than `host_name` (0): the type.
    ServerNameType(u8),
    /// A host name with a byte outside `A-Z a-z 0-9 - _ .`: the byte.
    ServerNameByte(u8),
    /// A host name that breaks a rule of the module docs: which.
    BadServerName(&'static str),
}

impl fmt::Display for NotTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NotTls::NotHandshakeRecord {
                at: 0,
                content_type,
            } => write!(
                f,
                "not TLS: first byte {content_type:#04x} is not a handshake record"
            ),
            NotTls::NotHandshakeRecord { at, content_type } => write!(
                f,
                "not TLS: record at byte {at} has content type {content_type:#04x}, not a \
                 handshake record continuing the ClientHello"
            ),
            NotTls::Sslv2Hello(byte) => write!(
                f,
                "not TLS: first byte {byte:#04x} starts an SSLv2-style hello, which is not \
                 accepted"
            ),
            NotTls::RecordVersion { at, major } => write!(
                f,
                "not TLS: record at byte {at} has version major {major}, not 3"
            ),
            NotTls::RecordLength { at, len } => write!(
                f,
                "not TLS: record at byte {at} is {len} bytes long, not 1 to \
                 {MAX_RECORD_PAYLOAD}"
            ),
            NotTls::NotClientHello(kind) => write!(
                f,
                "not TLS: handshake message type {kind} is not client_hello (1)"
            ),
            NotTls::HelloTooLong(len) => write!(
                f,
                "bad TLS ClientHello: {len} bytes long, more than the {MAX_MESSAGE} accepted"
            ),
            NotTls::TooFragmented => write!(
                f,
                "bad TLS ClientHello: with its record headers it would not end within \
                 {MAX_HELLO} bytes"
            ),
            NotTls::HelloVersion(version) => write!(
                f,
                "bad TLS ClientHello: version {version:#06x} is not SSL 3.0 or TLS"
            ),
            NotTls::Malformed(what) => write!(f, "bad TLS ClientHello: {what}"),
            NotTls::DuplicateExtension(kind) => {
                write!(f, "bad TLS ClientHello: extension {kind} appears twice")
            }
            NotTls::ServerNameType(kind) => write!(
                f,
                "bad TLS ClientHello: server_name entry of type {kind}, not host_name (0)"
            ),
            NotTls::ServerNameByte(byte) => write!(
                f,
                "bad TLS ClientHello: server name has byte {byte:#04x}, outside \
                 [A-Za-z0-9._-]"
            ),
            NotTls::BadServerName(what) => write!(f, "bad TLS ClientHello: server name {what}"),
        }
    }
}

impl std::error::Error for NotTls {}

/// Reads a TLS ClientHello from the first bytes a client sent, `buf`: everything received
/// so far, from the connection's first byte. See the module docs for what is accepted.
///
/// ```
/// use ember::proxy::client_hello::{self, Peek};
///
/// assert_eq!(client_hello::peek(b"\x16\x03\x01"), Peek::Incomplete);
/// let Peek::NotTls(why) = client_hello::peek(b"GET / HTTP/1.1\r\n") else { panic!() };
/// assert_eq!(why.to_string(), "not TLS: first byte 0x47 is not a handshake record");
/// ```
pub fn peek(buf: &[u8]) -> Peek {
    // The first reading only checks, so a hello still arriving costs no allocation; the
    // second, over bytes now known to be a whole good hello, collects what it offers.
    match read_hello(buf, None) {
        Ok(()) => {
            let mut hello = ClientHello::default();
            match read_hello(buf, Some(&mut hello)) {
                Ok(()) => Peek::Hello(hello),
                Err(stop) => stop.into(),
            }
        }
        Err(stop) => stop.into(),
    }
}

/// Why a reading stopped before the end of the hello.
enum Stop {
    /// The bytes ran out.
    Incomplete,
    NotTls(NotTls),
}

impl From<NotTls> for Stop {
    fn from(why: NotTls) -> Stop {
        Stop::NotTls(why)
    }
}

impl From<Stop> for Peek {
    fn from(stop: Stop) -> Peek {
        match stop {
            Stop::Incomplete => Peek::Incomplete,
            Stop::NotTls(why) => Peek::NotTls(why),
        }
    }
}

type Read<T> = Result<T, Stop>;

/// Reads the ClientHello in `buf`, checking every length, and fills `out` if given.
fn read_hello(buf: &[u8], mut out: Option<&mut ClientHello>) -> Read<()> {
    let mut r = Fragments::new(buf);
    let kind = r.u8()?;
    if kind != HANDSHAKE_CLIENT_HELLO {
        return Err(NotTls::NotClientHello(kind).into());
    }
    let len = r.u24()?;
    if HANDSHAKE_HEADER_LEN + len > MAX_MESSAGE {
        return Err(NotTls::HelloTooLong(HANDSHAKE_HEADER_LEN + len).into());
    }
    r.start_message(len)?;

    let mut body = len;
    take(&mut body, 2, "it ends inside its version")?;
    let version = r.u16()?;
    if version >> 8 != u16::from(TLS_MAJOR) {
        return Err(NotTls::HelloVersion(version).into());
    }
    take(&mut body, RANDOM_LEN, "it ends inside its random")?;
    r.skip(RANDOM_LEN)?;
    take(&mut body, 1, "it ends before its session id")?;
    let session_id = usize::from(r.u8()?);
    if session_id > MAX_SESSION_ID_LEN {
        return Err(NotTls::Malformed("session id longer than 32 bytes").into());
    }
    take(&mut body, session_id, "session id runs past the end")?;
    r.skip(session_id)?;
    take(&mut body, 2, "it ends before its cipher suites")?;
    let suites = usize::from(r.u16()?);
    if suites == 0 || suites % 2 != 0 {
        return Err(NotTls::Malformed("cipher suite list empty or of odd length").into());
    }
    take(&mut body, suites, "cipher suites run past the end")?;
    r.skip(suites)?;
    take(&mut body, 1, "it ends before its compression methods")?;
    let methods = usize::from(r.u8()?);
    if methods == 0 {
        return Err(NotTls::Malformed("no compression method").into());
    }
    take(&mut body, methods, "compression methods run past the end")?;
    r.skip(methods)?;
    if let Some(hello) = out.as_deref_mut() {
        hello.legacy_version = version;
    }
    if body == 0 {
        return Ok(());
    }

    take(&mut body, 2, "it ends inside its extensions length")?;
    let mut block = usize::from(r.u16()?);
    if block != body {
        return Err(
            NotTls::Malformed("extensions length differs from what the message has left").into(),
        );
    }
    let mut seen = Seen::default();
    while block > 0 {
        take(
            &mut block,
            4,
            "an extension header runs past the extensions",
        )?;
        let kind = r.u16()?;
        let len = usize::from(r.u16()?);
        take(&mut block, len, "an extension runs past the extensions")?;
        match kind {
            EXT_SERVER_NAME => {
                seen.first(kind)?;
                read_server_name(&mut r, len, out.as_deref_mut().map(|h| &mut h.server_name))?;
            }
            EXT_ALPN => {
                seen.first(kind)?;
                read_alpn(&mut r, len, out.as_deref_mut().map(|h| &mut h.alpn))?;
            }
            EXT_SUPPORTED_VERSIONS => {
                seen.first(kind)?;
                read_supported_versions(
                    &mut r,
                    len,
                    out.as_deref_mut().map(|h| &mut h.supported_versions),
                )?;
            }
            _ => r.skip(len)?,
        }
    }
    Ok(())
}

/// Takes `n` bytes from what is `left` of an enclosing length-prefixed part, or says
/// `what` ran past it.
fn take(left: &mut usize, n: usize, what: &'static str) -> Read<()> {
    *left = left.checked_sub(n).ok_or(NotTls::Malformed(what))?;
    Ok(())
}

/// Reads a `server_name` extension of `left` bytes (RFC 6066 §3).
fn read_server_name(
    r: &mut Fragments<'_>,
    mut left: usize,
    out: Option<&mut Option<String>>,
) -> Read<()> {
    take(
        &mut left,
        2,
        "server_name extension shorter than its list length",
    )?;
    let list = usize::from(r.u16()?);
    if list != left {
        return Err(
            NotTls::Malformed("server_name list length differs from its extension's").into(),
        );
    }
    if list == 0 {
        return Err(NotTls::BadServerName("list is empty").into());
    }
    take(&mut left, 1, "server_name entry shorter than its type")?;
    let kind = r.u8()?;
    if kind != NAME_TYPE_HOST_NAME {
        return Err(NotTls::ServerNameType(kind).into());
    }
    take(
        &mut left,
        2,
        "server_name entry shorter than its name length",
    )?;
    let len = usize::from(r.u16()?);
    take(&mut left, len, "host_name runs past the server_name list")?;
    if left != 0 {
        // Another entry follows: a second host_name, which RFC 6066 forbids, or a name of
        // another type, which is rejected like a first one.
        return Err(NotTls::BadServerName("list has more than one entry").into());
    }
    // One byte more than the longest name, for a trailing dot.
    let mut name = [0; MAX_NAME_LEN + 1];
    let Some(name) = name.get_mut(..len) else {
        return Err(NotTls::BadServerName("is longer than 253 bytes").into());
    };
    for slot in name.iter_mut() {
        let byte = r.u8()?;
        // Reject a bad byte as soon as it arrives (':' may be part of an IPv6 address).
        if !is_host_name_byte(byte) && byte != b':' {
            return Err(NotTls::ServerNameByte(byte).into());
        }
        *slot = byte;
    }
    if let (Some(name), Some(out)) = (host_name(name)?, out) {
        *out = Some(name.to_ascii_lowercase());
    }
    Ok(())
}

/// The host name a `host_name` entry holds, without its trailing dot; `None` for an IP
/// address. The rules are in the module docs.
fn host_name(raw: &[u8]) -> Result<Option<&str>, NotTls> {
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    if name.is_empty() {
        return Err(NotTls::BadServerName("is empty"));
    }
    if let Some(&byte) = raw.iter().find(|&&b| !is_host_name_byte(b) && b != b':') {
        return Err(NotTls::ServerNameByte(byte));
    }
    // Every byte is ASCII, so this never fails.
    let Ok(text) = std::str::from_utf8(name) else {
        return Err(NotTls::BadServerName("is not ASCII"));
    };
    if text.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    if name.contains(&b':') {
        return Err(NotTls::ServerNameByte(b':'));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NotTls::BadServerName("is longer than 253 bytes"));
    }
    let mut last = name;
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(NotTls::BadServerName("has an empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NotTls::BadServerName("has a label longer than 63 bytes"));
        }
        if label.starts_with(b"-") || label.ends_with(b"-") {
            return Err(NotTls::BadServerName(
                "has a label starting or ending with '-'",
            ));
        }
        last = label;
    }
    if is_number(last) {
        return Err(NotTls::BadServerName(
            "ends in a number but is not an IP address",
        ));
    }
    Ok(Some(text))
}

fn is_host_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
}

/// Whether a label reads as a number, decimal or `0x` hex, as the last label of an IPv4
/// address may (the WHATWG URL standard's "ends in a number", which rustls follows).
fn is_number(label: &[u8]) -> bool {
    match label {
        [b'0', b'x' | b'X', hex @ ..] => hex.iter().all(u8::is_ascii_hexdigit),
        _ => label.iter().all(u8::is_ascii_digit),
    }
}

/// Reads an `application_layer_protocol_negotiation` extension of `left` bytes (RFC 7301
/// §3.1).
fn read_alpn(
    r: &mut Fragments<'_>,
    mut left: usize,
    mut out: Option<&mut Vec<Vec<u8>>>,
) -> Read<()> {
    take(&mut left, 2, "ALPN extension shorter than its list length")?;
    let list = usize::from(r.u16()?);
    if list != left {
        return Err(NotTls::Malformed("ALPN list length differs from its extension's").into());
    }
    if list == 0 {
        return Err(NotTls::Malformed("ALPN list is empty").into());
    }
    while left > 0 {
        take(&mut left, 1, "ALPN list shorter than a name length")?;
        let len = usize::from(r.u8()?);
        if len == 0 {
            return Err(NotTls::Malformed("ALPN protocol name is empty").into());
        }
        take(&mut left, len, "ALPN protocol name runs past its list")?;
        match out.as_deref_mut() {
            Some(protocols) => {
                let mut name = Vec::with_capacity(len);
                for _ in 0..len {
                    name.push(r.u8()?);
                }
                if !is_grease_protocol(&name) {
                    protocols.push(name);
                }
            }
            None => r.skip(len)?,
        }
    }
    Ok(())
}

/// Reads a ClientHello's `supported_versions` extension of `left` bytes (RFC 8446
/// §4.2.1).
fn read_supported_versions(
    r: &mut Fragments<'_>,
    mut left: usize,
    mut out: Option<&mut Vec<u16>>,
) -> Read<()> {
    take(&mut left, 1, "supported_versions extension is empty")?;
    let list = usize::from(r.u8()?);
    if list != left {
        return Err(NotTls::Malformed(
            "supported_versions list length differs from its extension's",
        )
        .into());
    }
    if list == 0 || list % 2 != 0 {
        return Err(NotTls::Malformed("supported_versions list empty or of odd length").into());
    }
    while left > 0 {
        take(&mut left, 2, "supported_versions list of odd length")?;
        let version = r.u16()?;
        if let Some(versions) = out.as_deref_mut()
            && !is_grease(version)
        {
            versions.push(version);
        }
    }
    Ok(())
}

/// Whether a 16-bit value is one RFC 8701 reserves for GREASE: `0x0a0a`, `0x1a1a`, …,
/// `0xfafa`.
fn is_grease(value: u16) -> bool {
    let [high, low] = value.to_be_bytes();
    high == low && low & 0x0f == 0x0a
}

/// Whether an ALPN name is a GREASE value: the same two bytes as [`is_grease`].
fn is_grease_protocol(name: &[u8]) -> bool {
    matches!(name, &[high, low] if is_grease(u16::from_be_bytes([high, low])))
}

/// Which of the parsed extensions have been read, to reject a second one.
#[derive(Default)]
struct Seen {
    server_name: bool,
    alpn: bool,
    supported_versions: bool,
}

impl Seen {
    fn first(&mut self, kind: u16) -> Read<()> {
        let seen = match kind {
            EXT_SERVER_NAME => &mut self.server_name,
            EXT_ALPN => &mut self.alpn,
            _ => &mut self.supported_versions,
        };
        if std::mem::replace(seen, true) {
            return Err(NotTls::DuplicateExtension(kind).into());
        }
        Ok(())
    }
}

/// The handshake message as one stream of bytes, read in place through the handshake
/// records it is fragmented into, each record header checked as it is reached.
struct Fragments<'a> {
    buf: &'a [u8],
    /// Where the next byte is in `buf`: in the current record's payload while
    /// `in_record > 0`, else the next record's header.
    pos: usize,
    /// Bytes of the current record's payload not read yet.
    in_record: usize,
    /// Bytes of the message body not read yet, once its header has been read.
    message_left: Option<usize>,
}

impl<'a> Fragments<'a> {
    fn new(buf: &'a [u8]) -> Fragments<'a> {
        Fragments {
            buf,
            pos: 0,
            in_record: 0,
            message_left: None,
        }
    }

    /// The byte at `at` of `buf`. Past [`MAX_HELLO`] the hello is too fragmented, whether
    /// the byte has arrived or not: that is what bounds the caller's buffer.
    fn byte_at(&self, at: usize) -> Read<u8> {
        if at >= MAX_HELLO {
            return Err(NotTls::TooFragmented.into());
        }
        self.buf.get(at).copied().ok_or(Stop::Incomplete)
    }

    /// Reads the header of the record at `pos`, rejecting it at its first wrong byte.
    fn next_record(&mut self) -> Read<()> {
        let at = self.pos;
        let content_type = self.byte_at(at)?;
        if content_type != CONTENT_TYPE_HANDSHAKE {
            if at == 0 && content_type & 0x80 != 0 {
                return Err(NotTls::Sslv2Hello(content_type).into());
            }
            return Err(NotTls::NotHandshakeRecord { at, content_type }.into());
        }
        let major = self.byte_at(at + 1)?;
        if major != TLS_MAJOR {
            return Err(NotTls::RecordVersion { at, major }.into());
        }
        let len = usize::from(u16::from_be_bytes([
            self.byte_at(at + 3)?,
            self.byte_at(at + 4)?,
        ]));
        if len == 0 || len > MAX_RECORD_PAYLOAD {
            return Err(NotTls::RecordLength { at, len }.into());
        }
        self.pos = at + RECORD_HEADER_LEN;
        self.in_record = len;
        self.check_fits()
    }

    /// Notes that the message header has been read and `len` bytes of body follow.
    fn start_message(&mut self, len: usize) -> Read<()> {
        self.message_left = Some(len);
        self.check_fits()
    }

    /// Rejects the hello as soon as it is certain not to end within [`MAX_HELLO`] bytes:
    /// the rest of the message, and another record header if it is longer than what is
    /// left of this record.
    fn check_fits(&self) -> Read<()> {
        if let Some(left) = self.message_left {
            let next_header = if left > self.in_record {
                RECORD_HEADER_LEN
            } else {
                0
            };
            if self.pos + left + next_header > MAX_HELLO {
                return Err(NotTls::TooFragmented.into());
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.in_record);
        self.pos += n;
        self.in_record -= n;
        if let Some(left) = &mut self.message_left {
            *left = left.saturating_sub(n);
        }
    }

    fn u8(&mut self) -> Read<u8> {
        if self.in_record == 0 {
            self.next_record()?;
        }
        let byte = self.byte_at(self.pos)?;
        self.advance(1);
        Ok(byte)
    }

    fn u16(&mut self) -> Read<u16> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u24(&mut self) -> Read<usize> {
        let bytes = [self.u8()?, self.u8()?, self.u8()?];
        Ok(bytes.iter().fold(0, |n, &b| n << 8 | usize::from(b)))
    }

    fn skip(&mut self, mut n: usize) -> Read<()> {
        while n > 0 {
            if self.in_record == 0 {
                self.next_record()?;
            }
            // At least one byte has arrived (or this says why not).
            self.byte_at(self.pos)?;
            let arrived = self.buf.len() - self.pos;
            let step = n.min(self.in_record).min(arrived);
            self.advance(step);
            n -= step;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Extension = (u16, Vec<u8>);

    fn u16_len(bytes: &[u8]) -> [u8; 2] {
        u16::try_from(bytes.len()).unwrap().to_be_bytes()
    }

    /// A `u16`-length-prefixed vector.
    fn vec16(bytes: &[u8]) -> Vec<u8> {
        [&u16_len(bytes)[..], bytes].concat()
    }

    /// A ClientHello body as TLS 1.3 clients write it, with these extensions (none at all,
    /// not even the block's length, for `None`).
    fn body(extensions: Option<&[Extension]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([0x11; RANDOM_LEN]);
        body.push(32);
        body.extend([0x22; 32]);
        body.extend(vec16(&[0x13, 0x01, 0x13, 0x02, 0x00, 0xff]));
        body.extend([1, 0]);
        if let Some(extensions) = extensions {
            let mut block = Vec::new();
            for (kind, data) in extensions {
                block.extend(kind.to_be_bytes());
                block.extend(vec16(data));
            }
            body.extend(vec16(&block));
        }
        body
    }

    /// A handshake message: type, 24-bit length, body.
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        [&[kind, len[1], len[2], len[3]][..], body].concat()
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        [
            &[CONTENT_TYPE_HANDSHAKE, 3, 1][..],
            &u16_len(payload),
            payload,
        ]
        .concat()
    }

    /// `message` in handshake records of `sizes` bytes each, the rest in one more record.
    fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        for &size in sizes {
            let (fragment, after) = rest.split_at(size);
            out.extend(record(fragment));
            rest = after;
        }
        if !rest.is_empty() {
            out.extend(record(rest));
        }
        out
    }

    /// A whole ClientHello in one record.
    fn hello(extensions: &[Extension]) -> Vec<u8> {
        records(
            &message(HANDSHAKE_CLIENT_HELLO, &body(Some(extensions))),
            &[],
        )
    }

    fn sni(name: &[u8]) -> Extension {
        let entry = [&[NAME_TYPE_HOST_NAME][..], &vec16(name)].concat();
        (EXT_SERVER_NAME, vec16(&entry))
    }

    fn alpn(protocols: &[&[u8]]) -> Extension {
        let mut list = Vec::new();
        for protocol in protocols {
            list.push(u8::try_from(protocol.len()).unwrap());
            list.extend_from_slice(protocol);
        }
        (EXT_ALPN, vec16(&list))
    }

    fn versions(versions: &[u16]) -> Extension {
        let list: Vec<u8> = versions.iter().flat_map(|v| v.to_be_bytes()).collect();
        let data = [&[u8::try_from(list.len()).unwrap()][..], &list].concat();
        (EXT_SUPPORTED_VERSIONS, data)
    }

    /// An extension this module skips (key_share with garbage).
    fn other(len: usize) -> Extension {
        (51, vec![0xee; len])
    }

    /// The extensions of a typical TLS 1.3 hello.
    fn typical() -> Vec<Extension> {
        vec![
            other(10),
            sni(b"api.example.com"),
            alpn(&[b"h2", b"http/1.1"]),
            versions(&[0x0304, 0x0303]),
            other(40),
        ]
    }

    fn typical_answer() -> ClientHello {
        ClientHello {
            server_name: Some("api.example.com".into()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            legacy_version: 0x0303,
            supported_versions: vec![0x0304, 0x0303],
        }
    }

    fn hello_of(bytes: &[u8]) -> ClientHello {
        match peek(bytes) {
            Peek::Hello(hello) => hello,
            other => panic!("want a hello, got {other:?}"),
        }
    }

    fn not_tls(bytes: &[u8]) -> NotTls {
        match peek(bytes) {
            Peek::NotTls(why) => why,
            other => panic!("want NotTls, got {other:?}"),
        }
    }

    /// Asserts that every prefix of `bytes` shorter than `answer_at` is `Incomplete` and
    /// every longer one gives the same answer as `bytes`; returns that answer.
    fn assert_answers_at(bytes: &[u8], answer_at: usize) -> Peek {
        for len in 0..answer_at {
            assert_eq!(peek(&bytes[..len]), Peek::Incomplete, "after {len} bytes");
        }
        let answer = peek(bytes);
        assert_ne!(answer, Peek::Incomplete);
        for len in answer_at..=bytes.len() {
            assert_eq!(peek(&bytes[..len]), answer, "after {len} bytes");
        }
        answer
    }

    #[test]
    fn a_hello_fed_one_byte_at_a_time_is_incomplete_until_its_last_byte() {
        let bytes = hello(&typical());
        let answer = assert_answers_at(&bytes, bytes.len());
        assert_eq!(answer, Peek::Hello(typical_answer()));
    }

    #[test]
    fn bytes_after_the_hello_are_not_looked_at() {
        let mut bytes = hello(&typical());
        let end = bytes.len();
        // A TLS 1.3 middlebox-compatibility change_cipher_spec, then garbage.
        bytes.extend([20, 3, 3, 0, 1, 1]);
        bytes.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            assert_answers_at(&bytes, end),
            Peek::Hello(typical_answer())
        );
    }

    #[test]
    fn a_hello_split_across_two_records_is_reassembled() {
        let message = message(HANDSHAKE_CLIENT_HELLO, &body(Some(&typical())));
        // The split falls inside the server name.
        let bytes = records(&message, &[message.len() - 60]);
        assert_eq!(bytes.len(), message.len() + 2 * RECORD_HEADER_LEN);
        assert_eq!(
            assert_answers_at(&bytes, bytes.len()),
            Peek::Hello(typical_answer())
        );
    }

    #[test]
    fn a_hello_split_across_three_records_with_its_handshake_header_split_too() {
        let message = message(HANDSHAKE_CLIENT_HELLO, &body(Some(&typical())));
        let bytes = records(&message, &[2, 70]);
        assert_eq!(
            assert_answers_at(&bytes, bytes.len()),
            Peek::Hello(typical_answer())
        );
    }

    #[test]
    fn a_hello_one_byte_per_record_is_reassembled() {
        let message = message(HANDSHAKE_CLIENT_HELLO, &body(Some(&typical())));
        let bytes = records(&message, &vec![1; message.len() - 1]);
        assert_eq!(bytes.len(), 6 * message.len());
        assert_eq!(
            assert_answers_at(&bytes, bytes.len()),
            Peek::Hello(typical_answer())
        );
    }

    #[test]
    fn a_hello_without_sni_has_no_server_name() {
        let hello = hello_of(&hello(&[alpn(&[b"h2"]), versions(&[0x0304])]));
        assert_eq!(hello.server_name, None);
        assert_eq!(hello.alpn, [b"h2"]);
        assert_eq!(hello.supported_versions, [0x0304]);
    }

    #[test]
    fn a_hello_without_extensions_is_valid() {
        let bytes = records(&message(HANDSHAKE_CLIENT_HELLO, &body(None)), &[]);
        let want = ClientHello {
            legacy_version: 0x0303,
            ..ClientHello::default()
        };
        assert_eq!(assert_answers_at(&bytes, bytes.len()), Peek::Hello(want));
        // And with an empty extensions block.
        assert_eq!(hello_of(&hello(&[])).server_name, None);
    }

    #[test]
    fn alpn_offers_and_versions_are_listed_in_the_clients_order_without_grease() {
        let hello = hello_of(&hello(&[
            alpn(&[&[0x3a, 0x3a], b"http/1.1", b"h2", b"spdy/3", &[0x3a, 0x3b]]),
            versions(&[0x7a7a, 0x0304, 0x0303, 0x0302]),
        ]));
        let want: [&[u8]; 4] = [b"http/1.1", b"h2", b"spdy/3", &[0x3a, 0x3b]];
        assert_eq!(hello.alpn, want);
        assert_eq!(hello.supported_versions, [0x0304, 0x0303, 0x0302]);
    }

    #[test]
    fn server_names_are_lower_cased_without_a_trailing_dot() {
        for (sent, want) in [
            (&b"API.Example.COM"[..], "api.example.com"),
            (b"www.example.org.", "www.example.org"),
            (b"localhost", "localhost"),
            (
                b"_acme-challenge.example.com",
                "_acme-challenge.example.com",
            ),
            (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
            (b"a-b.c1.example", "a-b.c1.example"),
            (b"1.2.3.example", "1.2.3.example"),
            (b"example.com1", "example.com1"),
        ] {
            let hello = hello_of(&hello(&[sni(sent)]));
            assert_eq!(hello.server_name.as_deref(), Some(want), "{sent:?}");
        }
        let longest = [
            &[b'a'; 63][..],
            b".",
            &[b'b'; 63],
            b".",
            &[b'c'; 63],
            b".",
            &[b'd'; 61],
        ]
        .concat();
        assert_eq!(longest.len(), MAX_NAME_LEN);
        let with_dot = [&longest[..], b"."].concat();
        for name in [&longest, &with_dot] {
            let hello = hello_of(&hello(&[sni(name)]));
            assert_eq!(
                hello.server_name.as_deref().map(str::as_bytes),
                Some(&longest[..])
            );
        }
    }

    #[test]
    fn an_ip_address_as_server_name_counts_as_no_name() {
        for address in [&b"192.0.2.1"[..], b"192.0.2.1.", b"2001:db8::1", b"::1"] {
            let hello = hello_of(&hello(&[sni(address), alpn(&[b"h2"])]));
            assert_eq!(hello.server_name, None, "{address:?}");
            assert_eq!(hello.alpn, [b"h2"]);
        }
    }

    #[test]
    fn invalid_server_names_are_rejected() {
        let long_label = [&[b'a'; 64][..], b".example"].concat();
        let too_long = [
            &[b'a'; 63][..],
            b".",
            &[b'b'; 63],
            b".",
            &[b'c'; 63],
            b".",
            &[b'd'; 62],
        ]
        .concat();
        let cases: [(&[u8], NotTls); 15] = [
            (b"", NotTls::BadServerName("is empty")),
            (b".", NotTls::BadServerName("is empty")),
            (b"a..b", NotTls::BadServerName("has an empty label")),
            (b".example.com", NotTls::BadServerName("has an empty label")),
            (
                b"example.com..",
                NotTls::BadServerName("has an empty label"),
            ),
            (
                &long_label,
                NotTls::BadServerName("has a label longer than 63 bytes"),
            ),
            (&too_long, NotTls::BadServerName("is longer than 253 bytes")),
            (
                b"-a.example",
                NotTls::BadServerName("has a label starting or ending with '-'"),
            ),
            (
                b"a-.example",
                NotTls::BadServerName("has a label starting or ending with '-'"),
            ),
            (b"bad name.example", NotTls::ServerNameByte(b' ')),
            ("bücher.example".as_bytes(), NotTls::ServerNameByte(0xc3)),
            (b"a\0.example", NotTls::ServerNameByte(0)),
            (b"a:b.example", NotTls::ServerNameByte(b':')),
            (
                b"1.2.3.999",
                NotTls::BadServerName("ends in a number but is not an IP address"),
            ),
            (
                b"example.0x1f",
                NotTls::BadServerName("ends in a number but is not an IP address"),
            ),
        ];
        for (name, want) in cases {
            assert_eq!(not_tls(&hello(&[sni(name)])), want, "{name:?}");
        }
    }

    #[test]
    fn a_bad_byte_in_a_server_name_is_rejected_before_the_rest_arrives() {
        let bytes = hello(&[sni(b"a b.example.com"), other(100)]);
        let space = find(&bytes, b"a b") + 1;
        let answer = assert_answers_at(&bytes, space + 1);
        assert_eq!(answer, Peek::NotTls(NotTls::ServerNameByte(b' ')));
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    #[test]
    fn server_name_lists_other_than_one_host_name_are_rejected() {
        let empty_list = (EXT_SERVER_NAME, vec16(&[]));
        assert_eq!(
            not_tls(&hello(&[empty_list])),
            NotTls::BadServerName("list is empty")
        );
        let other_type = (EXT_SERVER_NAME, vec16(&[1, 0, 1, b'a']));
        assert_eq!(not_tls(&hello(&[other_type])), NotTls::ServerNameType(1));
        let two = [&[0][..], &vec16(b"a.example"), &[0], &vec16(b"b.example")].concat();
        assert_eq!(
            not_tls(&hello(&[(EXT_SERVER_NAME, vec16(&two))])),
            NotTls::BadServerName("list has more than one entry")
        );
        let then_other = [&[0][..], &vec16(b"a.example"), &[1], &vec16(b"x")].concat();
        assert_eq!(
            not_tls(&hello(&[(EXT_SERVER_NAME, vec16(&then_other))])),
            NotTls::BadServerName("list has more than one entry")
        );
    }

    #[test]
    fn a_parsed_extension_sent_twice_is_rejected() {
        let twice = hello(&[sni(b"a.example"), other(3), sni(b"b.example")]);
        assert_eq!(not_tls(&twice), NotTls::DuplicateExtension(EXT_SERVER_NAME));
        let twice = hello(&[alpn(&[b"h2"]), alpn(&[b"h2"])]);
        assert_eq!(not_tls(&twice), NotTls::DuplicateExtension(EXT_ALPN));
        let twice = hello(&[versions(&[0x0304]), versions(&[0x0304])]);
        assert_eq!(
            not_tls(&twice),
            NotTls::DuplicateExtension(EXT_SUPPORTED_VERSIONS)
        );
        // Extensions not parsed here are only skipped.
        assert_eq!(hello_of(&hello(&[other(1), other(2)])).server_name, None);
    }

    #[test]
    fn http_is_rejected_at_its_first_byte() {
        let bytes = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let answer = assert_answers_at(bytes, 1);
        let Peek::NotTls(why) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(
            why,
            NotTls::NotHandshakeRecord {
                at: 0,
                content_type: b'G'
            }
        );
        assert_eq!(
            why.to_string(),
            "not TLS: first byte 0x47 is not a handshake record"
        );
        // Nor is an empty buffer anything yet.
        assert_eq!(peek(b""), Peek::Incomplete);
    }

    #[test]
    fn an_sslv2_hello_is_rejected_at_its_first_byte() {
        // An SSLv2-compatible CLIENT-HELLO: 2-byte header with the high bit, type 1,
        // version 3.1, then lengths and cipher specs.
        let bytes = [
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, 0x01, 0x00, 0x80,
        ];
        let answer = assert_answers_at(&bytes, 1);
        assert_eq!(answer, Peek::NotTls(NotTls::Sslv2Hello(0x80)));
    }

    #[test]
    fn a_record_version_other_than_3_is_rejected_at_that_byte() {
        let mut bytes = hello(&typical());
        bytes[1] = 2;
        let answer = assert_answers_at(&bytes, 2);
        assert_eq!(
            answer,
            Peek::NotTls(NotTls::RecordVersion { at: 0, major: 2 })
        );
    }

    #[test]
    fn a_handshake_message_other_than_client_hello_is_rejected() {
        // A ServerHello (2) where the ClientHello belongs.
        let bytes = records(&message(2, &body(Some(&typical()))), &[]);
        let answer = assert_answers_at(&bytes, RECORD_HEADER_LEN + 1);
        assert_eq!(answer, Peek::NotTls(NotTls::NotClientHello(2)));
    }

    #[test]
    fn a_record_of_another_type_inside_the_hello_is_rejected() {
        let message = message(HANDSHAKE_CLIENT_HELLO, &body(Some(&typical())));
        let mut bytes = records(&message, &[50]);
        let second = RECORD_HEADER_LEN + 50;
        bytes[second] = 23; // application_data
        let answer = assert_answers_at(&bytes, second + 1);
        assert_eq!(
            answer,
            Peek::NotTls(NotTls::NotHandshakeRecord {
                at: second,
                content_type: 23
            })
        );
        assert!(answer_text(&answer).contains("record at byte 55 has content type 0x17"));
    }

    fn answer_text(answer: &Peek) -> String {
        match answer {
            Peek::NotTls(why) => why.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_and_oversized_records_are_rejected_from_their_header() {
        assert_eq!(
            assert_answers_at(&[22, 3, 1, 0, 0, 1], RECORD_HEADER_LEN),
            Peek::NotTls(NotTls::RecordLength { at: 0, len: 0 })
        );
        assert_eq!(
            assert_answers_at(&[22, 3, 1, 0x40, 0x01, 1], RECORD_HEADER_LEN),
            Peek::NotTls(NotTls::RecordLength { at: 0, len: 0x4001 })
        );
    }

    /// A body padded with an unparsed extension to make the message `len` bytes long.
    fn message_of_len(len: usize) -> Vec<u8> {
        let base = message(
            HANDSHAKE_CLIENT_HELLO,
            &body(Some(&[sni(b"big.example"), other(0)])),
        );
        let padded = message(
            HANDSHAKE_CLIENT_HELLO,
            &body(Some(&[sni(b"big.example"), other(len - base.len())])),
        );
        assert_eq!(padded.len(), len);
        padded
    }

    #[test]
    fn the_largest_hello_in_256_records_fits_in_max_hello_bytes() {
        let message = message_of_len(MAX_MESSAGE);
        let bytes = records(&message, &[MAX_MESSAGE / 256; 255]);
        assert_eq!(bytes.len(), MAX_HELLO);
        assert_eq!(hello_of(&bytes).server_name.as_deref(), Some("big.example"));
        assert_eq!(peek(&bytes[..MAX_HELLO - 1]), Peek::Incomplete);
    }

    #[test]
    fn a_hello_needing_more_than_max_hello_bytes_is_rejected_before_it_ends() {
        let message = message_of_len(MAX_MESSAGE);
        // 256 records of 63 bytes and a 257th for the rest: one header too many. Known at
        // the 256th header, which leaves more of the message than its record holds.
        let bytes = records(&message, &[63; 256]);
        assert_eq!(bytes.len(), MAX_HELLO + RECORD_HEADER_LEN);
        let answer = assert_answers_at(&bytes, 255 * (RECORD_HEADER_LEN + 63) + RECORD_HEADER_LEN);
        assert_eq!(answer, Peek::NotTls(NotTls::TooFragmented));
        // A smaller hello one byte per record: answered by MAX_HELLO bytes.
        let message = message_of_len(4000);
        let bytes = records(&message, &vec![1; message.len() - 1]);
        assert!(bytes.len() > MAX_HELLO);
        assert_eq!(
            peek(&bytes[..MAX_HELLO]),
            Peek::NotTls(NotTls::TooFragmented)
        );
    }

    #[test]
    fn a_hello_longer_than_16_kib_is_rejected_from_its_header() {
        let message = message_of_len(MAX_MESSAGE + 1);
        let bytes = records(&message, &[MAX_MESSAGE]);
        let answer = assert_answers_at(&bytes, RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN);
        assert_eq!(answer, Peek::NotTls(NotTls::HelloTooLong(MAX_MESSAGE + 1)));
    }

    /// `bytes` with the big-endian `u16` at `at` changed by `delta`.
    fn bump_u16(bytes: &[u8], at: usize, delta: i32) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        let old = i32::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        let new = u16::try_from(old + delta).unwrap().to_be_bytes();
        bytes[at..at + 2].copy_from_slice(&new);
        bytes
    }

    #[test]
    fn truncated_and_inconsistent_lengths_are_rejected() {
        let good = hello(&[sni(b"a.example"), alpn(&[b"h2"]), versions(&[0x0304])]);
        let session_id_at = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 2 + RANDOM_LEN;
        let suites_at = session_id_at + 1 + 32;
        let extensions_at = suites_at + 2 + 6 + 2;

        // A record one byte shorter than the hello: its last byte reads as the next
        // record's header.
        let short_record = bump_u16(&good, 3, -1);
        assert_eq!(
            not_tls(&short_record),
            NotTls::NotHandshakeRecord {
                at: good.len() - 1,
                content_type: good[good.len() - 1]
            }
        );
        // A message length one byte longer than what was sent: the extensions no longer
        // fill the message, which is known before any byte more is waited for.
        let long_message = bump_u16(&good, RECORD_HEADER_LEN + 2, 1);
        assert_eq!(
            not_tls(&long_message),
            NotTls::Malformed("extensions length differs from what the message has left")
        );
        let mut bad_session_id = good.clone();
        bad_session_id[session_id_at] = 33;
        assert_eq!(
            not_tls(&bad_session_id),
            NotTls::Malformed("session id longer than 32 bytes")
        );
        assert_eq!(
            not_tls(&bump_u16(&good, suites_at, 1)),
            NotTls::Malformed("cipher suite list empty or of odd length")
        );
        assert_eq!(
            not_tls(&bump_u16(&good, suites_at, 100)),
            NotTls::Malformed("cipher suites run past the end")
        );
        assert_eq!(
            not_tls(&bump_u16(&good, extensions_at, 1)),
            NotTls::Malformed("extensions length differs from what the message has left")
        );
        assert_eq!(
            not_tls(&bump_u16(&good, extensions_at, -1)),
            NotTls::Malformed("extensions length differs from what the message has left")
        );
        // The server_name extension's own length one too long, then one too short.
        let sni_len_at = extensions_at + 2 + 2;
        assert_eq!(
            not_tls(&bump_u16(&good, sni_len_at, 1)),
            NotTls::Malformed("server_name list length differs from its extension's")
        );
        assert_eq!(
            not_tls(&bump_u16(&good, sni_len_at, -1)),
            NotTls::Malformed("server_name list length differs from its extension's")
        );
        // The list length, then the name length.
        assert_eq!(
            not_tls(&bump_u16(&good, sni_len_at + 2, -1)),
            NotTls::Malformed("server_name list length differs from its extension's")
        );
        assert_eq!(
            not_tls(&bump_u16(&good, sni_len_at + 5, 1)),
            NotTls::Malformed("host_name runs past the server_name list")
        );
        assert_eq!(
            not_tls(&bump_u16(&good, sni_len_at + 5, -1)),
            NotTls::BadServerName("list has more than one entry")
        );
        // ALPN: an empty list, an empty name, a name past its list.
        let empty = hello(&[(EXT_ALPN, vec16(&[]))]);
        assert_eq!(not_tls(&empty), NotTls::Malformed("ALPN list is empty"));
        let empty_name = hello(&[(EXT_ALPN, vec16(&[2, b'h', b'2', 0]))]);
        assert_eq!(
            not_tls(&empty_name),
            NotTls::Malformed("ALPN protocol name is empty")
        );
        let past = hello(&[(EXT_ALPN, vec16(&[3, b'h', b'2']))]);
        assert_eq!(
            not_tls(&past),
            NotTls::Malformed("ALPN protocol name runs past its list")
        );
        // supported_versions: odd, empty, list length wrong.
        let odd = hello(&[(EXT_SUPPORTED_VERSIONS, vec![3, 3, 4, 3])]);
        assert_eq!(
            not_tls(&odd),
            NotTls::Malformed("supported_versions list empty or of odd length")
        );
        let empty = hello(&[(EXT_SUPPORTED_VERSIONS, vec![])]);
        assert_eq!(
            not_tls(&empty),
            NotTls::Malformed("supported_versions extension is empty")
        );
        let wrong = hello(&[(EXT_SUPPORTED_VERSIONS, vec![4, 3, 4])]);
        assert_eq!(
            not_tls(&wrong),
            NotTls::Malformed("supported_versions list length differs from its extension's")
        );
        // An extension header cut by the end of the block.
        let mut cut = body(Some(&[]));
        cut.truncate(cut.len() - 2);
        cut.extend(vec16(&[0, 51, 0]));
        assert_eq!(
            not_tls(&records(&message(HANDSHAKE_CLIENT_HELLO, &cut), &[])),
            NotTls::Malformed("an extension header runs past the extensions")
        );
        // A hello version of SSL 2.
        let mut sslv2 = good.clone();
        sslv2[RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN] = 2;
        assert_eq!(not_tls(&sslv2), NotTls::HelloVersion(0x0203));
    }

    #[test]
    fn errors_read_as_one_line() {
        let all = [
            NotTls::NotHandshakeRecord {
                at: 0,
                content_type: 0x47,
            },
            NotTls::NotHandshakeRecord {
                at: 60,
                content_type: 0x17,
            },
            NotTls::Sslv2Hello(0x80),
            NotTls::RecordVersion { at: 0, major: 2 },
            NotTls::RecordLength { at: 0, len: 0 },
            NotTls::NotClientHello(2),
            NotTls::HelloTooLong(20_000),
            NotTls::TooFragmented,
            NotTls::HelloVersion(0x0200),
            NotTls::Malformed("ALPN list is empty"),
            NotTls::DuplicateExtension(0),
            NotTls::ServerNameType(1),
            NotTls::ServerNameByte(b' '),
            NotTls::BadServerName("is empty"),
        ];
        for why in all {
            let text = why.to_string();
            assert!(
                text.starts_with("not TLS: ") || text.starts_with("bad TLS ClientHello: "),
                "{text}"
            );
            assert!(!text.contains('\n') && !text.contains("  "), "{text}");
        }
        assert_eq!(
            NotTls::TooFragmented.to_string(),
            "bad TLS ClientHello: with its record headers it would not end within 17664 bytes"
        );
    }

    /// xorshift64: enough randomness to mutate bytes, reproducible from its seed.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    fn mutate(rng: &mut XorShift, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            bytes.push(rng.byte());
            return;
        }
        let at = rng.below(bytes.len());
        match rng.below(7) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.byte(),
            // Length extremes.
            2 => bytes[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            3 => bytes.truncate(at),
            4 => {
                bytes.remove(at);
            }
            5 => bytes.insert(at, rng.byte()),
            _ => {
                // A length nudged by a little, as an off-by-one sender would.
                if at + 1 < bytes.len() {
                    let old = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
                    let delta = [1, 2, 3, u16::MAX, u16::MAX - 1][rng.below(5)];
                    bytes[at..at + 2].copy_from_slice(&old.wrapping_add(delta).to_be_bytes());
                }
            }
        }
    }

    #[test]
    fn thousands_of_mutated_hellos_never_panic_and_answers_never_change_with_more_bytes() {
        let message = message(HANDSHAKE_CLIENT_HELLO, &body(Some(&typical())));
        let seeds = [
            hello(&typical()),
            records(&message, &[3, 40, 1, 70]),
            hello(&[sni(b"192.0.2.1"), alpn(&[b"h2"])]),
            records(&message_of_len(600), &[300]),
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut answers = [0usize; 3];
        for round in 0..6000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..=rng.below(3) {
                mutate(&mut rng, &mut bytes);
            }
            // Every prefix: Incomplete up to some length, then one answer for good.
            let mut answer: Option<Peek> = None;
            for len in 0..=bytes.len() {
                let now = peek(&bytes[..len]);
                match &answer {
                    Some(first) => assert_eq!(&now, first, "round {round}, {len} bytes"),
                    None if now != Peek::Incomplete => answer = Some(now),
                    None => {}
                }
            }
            answers[match answer {
                None => 0,
                Some(Peek::Hello(_)) => 1,
                Some(_) => 2,
            }] += 1;
        }
        // The mutations reached every outcome, not just the first byte's.
        assert!(answers.iter().all(|&n| n > 100), "{answers:?}");
    }
}
