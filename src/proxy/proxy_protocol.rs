//! HAProxy's PROXY protocol, versions 1 and 2
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>): the header a proxy
//! puts in front of a relayed connection to tell the server who the client really was.
//!
//! This module owns the header's bytes and nothing else. [`v1_header`], [`v2_header`] and
//! [`v2_local_header`] write a header exactly as HAProxy's `send-proxy` and `send-proxy-v2`
//! do; [`parse`] reads one from the front of what a connection has received so far. It
//! never touches a socket, keeps no state between calls, and allocates only the header it
//! returns (and the text of a [`ParseError`]).
//!
//! ## Writing
//! - Both ends IPv4: `TCP4` / `\x11`. Anything else: `TCP6` / `\x21`, an IPv4 end written
//!   as its IPv4-mapped IPv6 address (`::ffff:192.0.2.1`). That is what HAProxy does when
//!   the families differ (its `make_proxy_line_v1`/`_v2` call `v4tov6` on the IPv4 end),
//!   so a server sees the same header from ember as from HAProxy. An IPv6 end is written
//!   as it is, IPv4-mapped or not: nothing is turned back into `TCP4`.
//! - IPv6 text in a v1 line is what glibc's `inet_ntop` writes, as HAProxy on Linux does.
//!   It differs from Rust's `Display` only for the deprecated IPv4-compatible addresses,
//!   `::a.b.c.d`, which Rust writes in hex.
//! - An IPv6 scope id and flow label are not part of the protocol and are dropped.
//! - No TLVs: HAProxy sends none on a plain TCP connection unless configured to.
//!
//! ## Reading
//! - Call [`parse`] with everything received so far each time more arrives, one byte at a
//!   time if need be. [`Parsed::Incomplete`] means wait; [`Parsed::Done`] says how many
//!   bytes the header took (whatever follows is the client's); [`Parsed::Invalid`] means
//!   close the connection, as the spec asks.
//! - Garbage is rejected at the first byte that rules out every valid header, not after
//!   107 bytes: `GET / HTTP/1.1` at the `G`, `PROXY TCP4 01.2.3.4` at the first `1`.
//! - Addresses are `None` where the header carries none a TCP server can use: v1
//!   `UNKNOWN`, v2 `LOCAL` (health checks), and v2 `PROXY` over `AF_UNSPEC`, `AF_UNIX` or a
//!   datagram transport (the spec's "fall back to UNSPEC" for what a receiver does not
//!   implement). The server then uses the connection's real endpoints.
//! - Limits: a v1 line is at most [`V1_MAX_LEN`] bytes with its CRLF, as the spec says. A
//!   v2 header is at most [`V2_MAX_LEN`] bytes: the spec sets no limit beyond its 16-bit
//!   length, HAProxy's is its buffer size; 4 KiB of addresses and TLVs is far more than any
//!   sender writes, and bounds what a receiver buffers before it knows whom it talks to.
//! - v2 TLVs are skipped, neither read nor checked (a CRC32C TLV is not verified).
//! - A port reading PROXY headers must only take PROXY-protocol connections: the spec
//!   forbids guessing whether a header is there, or anyone could claim any address.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The longest v1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses).
pub const V1_MAX_LEN: usize = 107;

/// The longest v2 header [`parse`] accepts: the 16 fixed bytes and 4 KiB of addresses and
/// TLVs.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + 4096;

/// The 12 bytes every v2 header starts with. Its `\0` and `QUIT` make it something no
/// HTTP, TLS, SMTP or FTP server accepts.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a v1 line starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The signature, the version and command, the family and transport, the length.
const V2_FIXED_LEN: usize = 16;

// The 13th byte of a v2 header: the version in the high nibble, the command in the low.
const V2_VERSION: u8 = 0x2;
const V2_LOCAL: u8 = 0x0;
const V2_PROXY: u8 = 0x1;

// The 14th byte: the address family in the high nibble, the transport in the low.
const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;
const STREAM: u8 = 0x1;
const DGRAM: u8 = 0x2;
const TCP_OVER_IPV4: u8 = AF_INET << 4 | STREAM;
const TCP_OVER_IPV6: u8 = AF_INET6 << 4 | STREAM;

/// Both addresses and both ports of TCP over IPv4 / IPv6.
const IPV4_BLOCK_LEN: u16 = 4 + 4 + 2 + 2;
const IPV6_BLOCK_LEN: u16 = 16 + 16 + 2 + 2;

/// Which version of the header a sender writes (HAProxy's `send-proxy` or
/// `send-proxy-v2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl Version {
    /// The header of this version for a connection from `source` to `destination`.
    pub fn header(self, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        match self {
            Version::V1 => v1_header(source, destination),
            Version::V2 => v2_header(source, destination),
        }
    }
}

/// The v1 line HAProxy's `send-proxy` writes for a client at `source` that connected to
/// `destination`: `PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n`. `TCP6` unless both
/// are IPv4, with an IPv4 end mapped to IPv6 (see the module docs).
pub fn v1_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut line = String::with_capacity(V1_MAX_LEN);
    let (sport, dport) = (source.port(), destination.port());
    let written = match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            write!(line, "PROXY TCP4 {src} {dst} {sport} {dport}\r\n")
        }
        (src, dst) => {
            let (src, dst) = (InetNtop(as_ipv6(src)), InetNtop(as_ipv6(dst)));
            write!(line, "PROXY TCP6 {src} {dst} {sport} {dport}\r\n")
        }
    };
    written.expect("a String takes any text");
    line.into_bytes()
}

/// The v2 header HAProxy's `send-proxy-v2` writes for a client at `source` that connected
/// to `destination`, without TLVs: the signature, `\x21` (version 2, `PROXY`), `\x11` (TCP
/// over IPv4) or `\x21` (TCP over IPv6, an IPv4 end mapped as in [`v1_header`]), the
/// big-endian length of what follows, both addresses, both ports.
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = Vec::with_capacity(V2_FIXED_LEN + usize::from(IPV6_BLOCK_LEN));
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(V2_VERSION << 4 | V2_PROXY);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            header.push(TCP_OVER_IPV4);
            header.extend_from_slice(&IPV4_BLOCK_LEN.to_be_bytes());
            header.extend_from_slice(&src.octets());
            header.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            header.push(TCP_OVER_IPV6);
            header.extend_from_slice(&IPV6_BLOCK_LEN.to_be_bytes());
            header.extend_from_slice(&as_ipv6(src).octets());
            header.extend_from_slice(&as_ipv6(dst).octets());
        }
    }
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

/// The v2 header of a connection the proxy opened for itself, such as a health check:
/// command `LOCAL`, family `AF_UNSPEC`, no addresses. What HAProxy sends on the health
/// checks of a `send-proxy-v2` server. The receiver uses the connection's real endpoints.
pub fn v2_local_header() -> [u8; V2_FIXED_LEN] {
    let mut header = [0; V2_FIXED_LEN];
    header[..12].copy_from_slice(&V2_SIGNATURE);
    header[12] = V2_VERSION << 4 | V2_LOCAL;
    header[13] = AF_UNSPEC << 4;
    header
}

/// What a PROXY header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProxyHeader {
    /// The client, as the proxy saw it. `None` for v1 `UNKNOWN` and v2 `LOCAL`, or when a
    /// v2 header names no TCP endpoint (see the module docs).
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the proxy; `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
    /// The protocol version: 1 (text) or 2 (binary).
    pub version: u8,
}

/// What [`parse`] made of the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid header may still follow: call again when more bytes arrive.
    Incomplete,
    /// A whole header: the first `consumed` bytes; the rest belongs to the client.
    Done {
        /// What the header said.
        header: ProxyHeader,
        /// The header's length in bytes.
        consumed: usize,
    },
    /// No valid header starts like this: close the connection.
    Invalid(ParseError),
}

/// Why the bytes received cannot start a PROXY header. A field's text is quoted as far as
/// it had arrived, with bytes that are not printable ASCII escaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Neither `PROXY ` nor the v2 signature.
    NotProxy,
    /// A v1 line with no CRLF in its first [`V1_MAX_LEN`] bytes.
    V1TooLong,
    /// A CR not followed by LF, or an LF not preceded by CR, in a v1 line.
    V1LoneCrOrLf,
    /// A v1 protocol other than `TCP4`, `TCP6` and `UNKNOWN`.
    V1BadProtocol(String),
    /// A v1 source address that is not an address of the line's family.
    V1BadSourceAddress(String),
    /// A v1 destination address that is not an address of the line's family.
    V1BadDestinationAddress(String),
    /// A v1 source port that is not a decimal number up to 65535 without leading zeros.
    V1BadSourcePort(String),
    /// A v1 destination port that is not a decimal number up to 65535 without leading
    /// zeros.
    V1BadDestinationPort(String),
    /// A v1 line that ended before this field (`"source address"`, …, `"destination
    /// port"`).
    V1EndsEarly(&'static str),
    /// Text after a v1 line's destination port.
    V1TrailingText(String),
    /// A v2 version nibble other than 2: the nibble.
    V2BadVersion(u8),
    /// A v2 command other than `LOCAL` (0) and `PROXY` (1): the nibble.
    V2BadCommand(u8),
    /// A v2 family or transport the spec does not define: the whole 14th byte.
    V2BadFamily(u8),
    /// A v2 address block shorter than its family and transport need.
    V2ShortAddresses {
        /// The 14th byte: family and transport.
        family: u8,
        /// The announced length of the address block.
        len: u16,
    },
    /// A v2 header longer than [`V2_MAX_LEN`]: its announced length in bytes.
    V2TooLong(usize),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotProxy => f.write_str("not a PROXY protocol header"),
            ParseError::V1TooLong => write!(f, "PROXY v1 line longer than {V1_MAX_LEN} bytes"),
            ParseError::V1LoneCrOrLf => f.write_str("PROXY v1 line with a lone CR or LF"),
            ParseError::V1BadProtocol(text) => {
                write!(f, "bad v1 protocol `{text}` (want TCP4, TCP6 or UNKNOWN)")
            }
            ParseError::V1BadSourceAddress(text) => write!(f, "bad v1 source address `{text}`"),
            ParseError::V1BadDestinationAddress(text) => {
                write!(f, "bad v1 destination address `{text}`")
            }
            ParseError::V1BadSourcePort(text) => write!(f, "bad v1 source port `{text}`"),
            ParseError::V1BadDestinationPort(text) => {
                write!(f, "bad v1 destination port `{text}`")
            }
            ParseError::V1EndsEarly(field) => write!(f, "PROXY v1 line ends before its {field}"),
            ParseError::V1TrailingText(text) => {
                write!(f, "unexpected `{text}` after the v1 destination port")
            }
            ParseError::V2BadVersion(version) => {
                write!(f, "PROXY v2 header with version {version:#x} (want 0x2)")
            }
            ParseError::V2BadCommand(command) => write!(
                f,
                "PROXY v2 header with command {command:#x} (want LOCAL 0x0 or PROXY 0x1)"
            ),
            ParseError::V2BadFamily(family) => write!(
                f,
                "PROXY v2 header with unknown address family and transport {family:#04x}"
            ),
            ParseError::V2ShortAddresses { family, len } => write!(
                f,
                "PROXY v2 address block of {len} bytes too short for family {family:#04x}"
            ),
            ParseError::V2TooLong(len) => {
                write!(f, "PROXY v2 header of {len} bytes (at most {V2_MAX_LEN})")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads a PROXY header, v1 or v2, from the start of `buf`, everything a connection has
/// received so far. Call it again with the longer buffer whenever more arrives; it keeps
/// nothing between calls. See the module docs for what is accepted.
pub fn parse(buf: &[u8]) -> Parsed {
    let read = match buf.first() {
        None => Ok(None),
        Some(&b'P') => parse_v1(buf),
        Some(&b'\r') => parse_v2(buf),
        Some(_) => Err(ParseError::NotProxy),
    };
    match read {
        Ok(None) => Parsed::Incomplete,
        Ok(Some((header, consumed))) => Parsed::Done { header, consumed },
        Err(why) => Parsed::Invalid(why),
    }
}

/// A whole header and its length, `None` if a valid one may still follow, or why none can.
type Reading = Result<Option<(ProxyHeader, usize)>, ParseError>;

/// A v1 line is read in full only once its CRLF is there, but each field is checked as far
/// as it has arrived: a finished field must be valid, the one still arriving must be the
/// start of a valid one.
fn parse_v1(buf: &[u8]) -> Reading {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf[..seen] != V1_PREFIX[..seen] {
        return Err(ParseError::NotProxy);
    }
    if buf.len() == seen {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let crlf = window.windows(2).position(|pair| pair == b"\r\n");
    // A CR as the last byte so far can only be followed by LF: the line ends there.
    let (line, ends) = match crlf {
        Some(at) => (&window[..at], true),
        None => match window.strip_suffix(b"\r") {
            Some(line) => (line, true),
            None => (window, false),
        },
    };
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(ParseError::V1LoneCrOrLf);
    }
    let addresses = v1_fields(&line[V1_PREFIX.len()..], ends)?;
    if line.len() > V1_MAX_LEN - 2 {
        return Err(ParseError::V1TooLong);
    }
    let Some(at) = crlf else { return Ok(None) };
    let (source, destination) = match addresses {
        Some((source, destination)) => (Some(source), Some(destination)),
        None => (None, None),
    };
    let header = ProxyHeader {
        source,
        destination,
        version: 1,
    };
    Ok(Some((header, at + 2)))
}

/// The v1 fields after `PROXY `, all of them if `ends` (the line ends after them): the two
/// endpoints, or `None` for `UNKNOWN` (and for a line still arriving).
fn v1_fields(fields: &[u8], ends: bool) -> Result<Option<(SocketAddr, SocketAddr)>, ParseError> {
    const PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
    let (protocol, rest) = match fields.iter().position(|&b| b == b' ') {
        Some(space) => (&fields[..space], Some(&fields[space + 1..])),
        None => (fields, None),
    };
    let protocol_ended = rest.is_some() || ends;
    let known = if protocol_ended {
        PROTOCOLS.contains(&protocol)
    } else {
        PROTOCOLS.iter().any(|p| p.starts_with(protocol))
    };
    if !known {
        return Err(ParseError::V1BadProtocol(quote(protocol)));
    }
    if protocol == b"UNKNOWN" {
        // The rest of an UNKNOWN line, if any, is ignored.
        return Ok(None);
    }
    let Some(rest) = rest else {
        return if ends {
            Err(ParseError::V1EndsEarly(V1_FIELDS[0]))
        } else {
            Ok(None)
        };
    };
    let ipv6 = protocol == b"TCP6";
    let mut ips = [None; 2];
    let mut ports = [None; 2];
    let mut count = 0;
    let mut texts = rest.split(|&b| b == b' ').enumerate().peekable();
    while let Some((index, text)) = texts.next() {
        count = index + 1;
        let ended = texts.peek().is_some() || ends;
        let valid = match (index, std::str::from_utf8(text)) {
            (4.., _) => return Err(ParseError::V1TrailingText(quote(text))),
            (_, Err(_)) => false,
            (0 | 1, Ok(text)) => {
                ips[index] = read_ip(text, ipv6);
                ips[index].is_some() || (!ended && could_become_ip(text, ipv6))
            }
            (_, Ok(text)) => {
                ports[index - 2] = read_port(text);
                ports[index - 2].is_some() || (!ended && text.is_empty())
            }
        };
        if !valid {
            return Err(v1_field_error(index, text));
        }
    }
    if !ends {
        return Ok(None);
    }
    match (ips, ports) {
        ([Some(src), Some(dst)], [Some(sport), Some(dport)]) => Ok(Some((
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
        ))),
        _ => Err(ParseError::V1EndsEarly(V1_FIELDS[count])),
    }
}

/// The fields after the protocol, in order.
const V1_FIELDS: [&str; 4] = [
    "source address",
    "destination address",
    "source port",
    "destination port",
];

/// The error for v1 field `index` (counted from the source address) reading `text`.
fn v1_field_error(index: usize, text: &[u8]) -> ParseError {
    let text = quote(text);
    match index {
        0 => ParseError::V1BadSourceAddress(text),
        1 => ParseError::V1BadDestinationAddress(text),
        2 => ParseError::V1BadSourcePort(text),
        _ => ParseError::V1BadDestinationPort(text),
    }
}

/// An address of the line's family: a dotted quad without leading zeros (std's parser
/// rejects them, as the spec asks) or IPv6 text.
fn read_ip(text: &str, ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// Whether some text could follow `start` to make an address of the family. A start that
/// can be completed at all can be completed by one of a few endings: none, `0` after a
/// colon or dot, `:`/`::` after a group, and zeros for the octets an IPv4 part still lacks.
fn could_become_ip(start: &str, ipv6: bool) -> bool {
    const ENDINGS: [&str; 9] = ["", "0", ":", "::", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0"];
    if start.is_empty() {
        return true;
    }
    let mut scratch = [0u8; V1_MAX_LEN + 8];
    let Some(room) = scratch.get_mut(..start.len()) else {
        return false;
    };
    room.copy_from_slice(start.as_bytes());
    ENDINGS.iter().any(|ending| {
        let end = start.len() + ending.len();
        scratch[start.len()..end].copy_from_slice(ending.as_bytes());
        let candidate = std::str::from_utf8(&scratch[..end]).expect("ASCII added to a str");
        if ipv6 {
            candidate.parse::<Ipv6Addr>().is_ok()
        } else {
            candidate.parse::<Ipv4Addr>().is_ok()
        }
    })
}

/// A port as the spec writes it: decimal, at most 65535, no leading zero.
fn read_port(text: &str) -> Option<u16> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if !digits_only || leading_zero {
        return None;
    }
    text.parse().ok()
}

/// `text` for an error message: printable ASCII as is, anything else escaped.
fn quote(text: &[u8]) -> String {
    text.escape_ascii().to_string()
}

/// A v2 header is checked byte by byte up to its 16th, which gives its length; then only
/// its end is waited for.
fn parse_v2(buf: &[u8]) -> Reading {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..seen] != V2_SIGNATURE[..seen] {
        return Err(ParseError::NotProxy);
    }
    let Some(&version_command) = buf.get(12) else {
        return Ok(None);
    };
    let (version, command) = (version_command >> 4, version_command & 0x0f);
    if version != V2_VERSION {
        return Err(ParseError::V2BadVersion(version));
    }
    if command != V2_LOCAL && command != V2_PROXY {
        return Err(ParseError::V2BadCommand(command));
    }
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    let (address_family, transport) = (family >> 4, family & 0x0f);
    if address_family > AF_UNIX || transport > DGRAM {
        return Err(ParseError::V2BadFamily(family));
    }
    let Some(&[high, low]) = buf.get(14..16) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([high, low]);
    let total = V2_FIXED_LEN + usize::from(len);
    if total > V2_MAX_LEN {
        return Err(ParseError::V2TooLong(total));
    }
    let needed = match (command, family) {
        (V2_PROXY, TCP_OVER_IPV4) => IPV4_BLOCK_LEN,
        (V2_PROXY, TCP_OVER_IPV6) => IPV6_BLOCK_LEN,
        _ => 0,
    };
    if len < needed {
        return Err(ParseError::V2ShortAddresses { family, len });
    }
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(None);
    };
    let endpoints = match (command, family) {
        (V2_PROXY, TCP_OVER_IPV4) => Some(ipv4_endpoints(block)),
        (V2_PROXY, TCP_OVER_IPV6) => Some(ipv6_endpoints(block)),
        // LOCAL: the real endpoints count, whatever the block says. The rest: see the
        // module docs.
        _ => None,
    };
    let header = ProxyHeader {
        source: endpoints.map(|(source, _)| source),
        destination: endpoints.map(|(_, destination)| destination),
        version: 2,
    };
    Ok(Some((header, total)))
}

/// The endpoints in a TCP-over-IPv4 address block of at least 12 bytes.
fn ipv4_endpoints(block: &[u8]) -> (SocketAddr, SocketAddr) {
    let ip = |at: usize| Ipv4Addr::from(array::<4>(&block[at..]));
    let port = |at: usize| u16::from_be_bytes(array::<2>(&block[at..]));
    (
        SocketAddrV4::new(ip(0), port(8)).into(),
        SocketAddrV4::new(ip(4), port(10)).into(),
    )
}

/// The endpoints in a TCP-over-IPv6 address block of at least 36 bytes.
fn ipv6_endpoints(block: &[u8]) -> (SocketAddr, SocketAddr) {
    let ip = |at: usize| Ipv6Addr::from(array::<16>(&block[at..]));
    let port = |at: usize| u16::from_be_bytes(array::<2>(&block[at..]));
    (
        SocketAddrV6::new(ip(0), port(32), 0, 0).into(),
        SocketAddrV6::new(ip(16), port(34), 0, 0).into(),
    )
}

/// The first `N` bytes of `bytes`, which has at least that many.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes[..N].try_into().expect("caller checked the length")
}

/// An IPv4 address as HAProxy's `v4tov6` turns it into IPv6: IPv4-mapped.
fn as_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

/// An IPv6 address as glibc's `inet_ntop` writes it: like `Display`, except that an
/// IPv4-compatible address (the first 96 bits zero, the next 16 not, so not `::` or `::1`)
/// is written `::a.b.c.d`.
struct InetNtop(Ipv6Addr);

impl fmt::Display for InetNtop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segments = self.0.segments();
        if segments[..6] == [0; 6] && segments[6] != 0 {
            let [.., a, b, c, d] = self.0.octets();
            write!(f, "::{a}.{b}.{c}.{d}")
        } else {
            fmt::Display::fmt(&self.0, f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn endpoints(source: &str, destination: &str, version: u8) -> ProxyHeader {
        ProxyHeader {
            source: Some(addr(source)),
            destination: Some(addr(destination)),
            version,
        }
    }

    fn no_endpoints(version: u8) -> ProxyHeader {
        ProxyHeader {
            source: None,
            destination: None,
            version,
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// A v2 header with this 13th and 14th byte and this address block.
    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([version_command, family]);
        header.extend(u16::try_from(block.len()).unwrap().to_be_bytes());
        header.extend_from_slice(block);
        header
    }

    /// Feeds `header` and then a request one byte at a time, as a slow network would:
    /// every prefix of the header is `Incomplete`, and from the header's last byte on the
    /// answer is `want` with the header's length, however much of the request follows.
    fn assert_parses_byte_by_byte(header: &[u8], want: ProxyHeader) {
        let mut stream = header.to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        for len in 0..header.len() {
            assert_eq!(
                parse(&stream[..len]),
                Parsed::Incomplete,
                "after {len} bytes of {:?}",
                header.escape_ascii().to_string()
            );
        }
        for len in header.len()..=stream.len() {
            let done = Parsed::Done {
                header: want,
                consumed: header.len(),
            };
            assert_eq!(parse(&stream[..len]), done, "after {len} bytes");
        }
    }

    /// How many bytes of `bytes`, fed one at a time, it takes to get `Invalid`, and the
    /// error; asserts that every shorter prefix is `Incomplete`.
    fn first_invalid(bytes: &[u8]) -> (usize, ParseError) {
        for len in 0..=bytes.len() {
            match parse(&bytes[..len]) {
                Parsed::Incomplete => {}
                Parsed::Invalid(why) => return (len, why),
                done => panic!("{done:?} after {len} bytes of {bytes:?}"),
            }
        }
        panic!("{:?} is still incomplete", bytes.escape_ascii().to_string());
    }

    #[test]
    fn v1_writes_tcp4_exactly_like_haproxy_send_proxy() {
        let line = v1_header(addr("192.0.2.1:56324"), addr("198.51.100.2:443"));
        assert_eq!(line, b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n");
        let line = v1_header(addr("255.255.255.255:65535"), addr("0.0.0.0:0"));
        assert_eq!(line, b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n");
    }

    #[test]
    fn v1_writes_tcp6_in_inet_ntop_form() {
        let line = v1_header(addr("[2001:db8::1]:56324"), addr("[2001:db8::2]:443"));
        assert_eq!(line, b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n");
        let full = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let line = v1_header(addr(full), addr(full));
        let want = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                    ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(line, want.as_bytes());
        assert_eq!(line.len(), 104, "the spec's longest TCP6 line");
    }

    #[test]
    fn v1_maps_an_ipv4_end_to_ipv6_when_the_families_differ_as_haproxy_does() {
        // Captured from HAProxy 2.6 with `tcp-request connection set-dst ipv6(::1.2.3.4)`:
        // the IPv4 client becomes IPv4-mapped, and the IPv4-compatible destination keeps
        // the dotted form glibc's inet_ntop gives it.
        let line = v1_header(addr("127.0.0.1:40964"), addr("[::1.2.3.4]:18401"));
        assert_eq!(
            line,
            b"PROXY TCP6 ::ffff:127.0.0.1 ::1.2.3.4 40964 18401\r\n"
        );
        let line = v1_header(addr("[2001:db8::1]:1"), addr("192.0.2.1:2"));
        assert_eq!(line, b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 1 2\r\n");
    }

    #[test]
    fn ipv6_text_differs_from_display_only_for_ipv4_compatible_addresses() {
        // (address, what glibc's inet_ntop writes)
        let cases = [
            ("::1.2.3.4", "::1.2.3.4"),
            ("::0.1.0.0", "::0.1.0.0"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::ffff:0.0.0.0", "::ffff:0.0.0.0"),
            ("::ffff", "::ffff"),
            ("::1", "::1"),
            ("::", "::"),
            ("1::", "1::"),
            ("0:0:0:0:0:1::", "::1:0:0"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ];
        for (ip, want) in cases {
            let ip: Ipv6Addr = ip.parse().unwrap();
            assert_eq!(InetNtop(ip).to_string(), want);
        }
        let compatible: Ipv6Addr = "::1.2.3.4".parse().unwrap();
        assert_eq!(
            compatible.to_string(),
            "::102:304",
            "std's Display, for contrast"
        );
    }

    #[test]
    fn v2_writes_tcp_over_ipv4_byte_for_byte() {
        let header = v2_header(addr("192.0.2.1:56324"), addr("198.51.100.2:443"));
        let want = hex("0d0a0d0a 000d0a51 5549540a 21 11 000c
                        c0000201 c6336402 dc04 01bb");
        assert_eq!(header, want);
    }

    #[test]
    fn v2_writes_tcp_over_ipv6_byte_for_byte() {
        // Captured from HAProxy 2.6 `send-proxy-v2` with set-src / set-dst to these.
        let header = v2_header(addr("[2001:db8::1]:33022"), addr("[2001:db8::2]:18411"));
        let want = hex("0d0a0d0a000d0a515549540a 21 21 0024
                        20010db8000000000000000000000001 20010db8000000000000000000000002
                        80fe 47eb");
        assert_eq!(header, want);
    }

    #[test]
    fn v2_maps_an_ipv4_end_to_ipv6_when_the_families_differ() {
        let header = v2_header(addr("192.0.2.1:1"), addr("[2001:db8::2]:2"));
        let want = hex("0d0a0d0a000d0a515549540a 21 21 0024
                        00000000000000000000ffffc0000201 20010db8000000000000000000000002
                        0001 0002");
        assert_eq!(header, want);
    }

    #[test]
    fn v2_local_header_is_what_haproxy_health_checks_send() {
        assert_eq!(
            v2_local_header().to_vec(),
            hex("0d0a0d0a000d0a515549540a 20 00 0000")
        );
        assert_parses_byte_by_byte(&v2_local_header(), no_endpoints(2));
    }

    #[test]
    fn written_headers_parse_back_to_their_endpoints() {
        let pairs = [
            ("192.0.2.1:56324", "198.51.100.2:443"),
            ("0.0.0.0:0", "255.255.255.255:65535"),
            ("[2001:db8::1]:56324", "[2001:db8::2]:443"),
            ("[::ffff:192.0.2.1]:1", "[::1]:65535"),
            ("[::1.2.3.4]:80", "[fe80::1:2:3:4]:8080"),
        ];
        for (source, destination) in pairs {
            let (src, dst) = (addr(source), addr(destination));
            assert_parses_byte_by_byte(&v1_header(src, dst), endpoints(source, destination, 1));
            assert_parses_byte_by_byte(&v2_header(src, dst), endpoints(source, destination, 2));
        }
        // Mixed families come back as IPv6, the IPv4 end mapped.
        let (src, dst) = (addr("192.0.2.1:1"), addr("[2001:db8::2]:2"));
        let mapped = endpoints("[::ffff:192.0.2.1]:1", "[2001:db8::2]:2", 1);
        assert_parses_byte_by_byte(&v1_header(src, dst), mapped);
        let mapped = ProxyHeader {
            version: 2,
            ..mapped
        };
        assert_parses_byte_by_byte(&v2_header(src, dst), mapped);
    }

    #[test]
    fn the_specs_example_lines_parse() {
        let request = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n\
                        GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
        let want = endpoints("192.168.0.1:56324", "192.168.0.11:443", 1);
        assert_eq!(
            parse(request),
            Parsed::Done {
                header: want,
                consumed: 47
            }
        );
        let longest_tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(longest_tcp4.len(), 56);
        let want = endpoints("255.255.255.255:65535", "255.255.255.255:65535", 1);
        assert_parses_byte_by_byte(longest_tcp4, want);
        let all_f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let longest_tcp6 = format!("PROXY TCP6 {all_f} {all_f} 65535 65535\r\n");
        assert_eq!(longest_tcp6.len(), 104);
        let full = format!("[{all_f}]:65535");
        assert_parses_byte_by_byte(longest_tcp6.as_bytes(), endpoints(&full, &full, 1));
        assert_parses_byte_by_byte(b"PROXY UNKNOWN\r\n", no_endpoints(1));
        let worst_case = format!("PROXY UNKNOWN {all_f} {all_f} 65535 65535\r\n");
        assert_eq!(worst_case.len(), V1_MAX_LEN);
        assert_parses_byte_by_byte(worst_case.as_bytes(), no_endpoints(1));
    }

    #[test]
    fn every_form_of_an_address_is_accepted_one_byte_at_a_time() {
        let ipv6_forms = [
            ("::ffff:1.2.3.4", "[::ffff:1.2.3.4]"),
            ("::1.2.3.4", "[::1.2.3.4]"),
            ("1:2:3:4:5:6:1.2.3.4", "[1:2:3:4:5:6:102:304]"),
            ("1:2:3:4:5:6:7::", "[1:2:3:4:5:6:7:0]"),
            ("::2:3:4:5:6:7:8", "[0:2:3:4:5:6:7:8]"),
            ("0001:0DB8:0000::0001", "[1:db8::1]"),
            ("::", "[::]"),
        ];
        for (text, bracketed) in ipv6_forms {
            let line = format!("PROXY TCP6 {text} ::1 1 2\r\n");
            let want = endpoints(&format!("{bracketed}:1"), "[::1]:2", 1);
            assert_parses_byte_by_byte(line.as_bytes(), want);
        }
        let line = b"PROXY TCP4 10.0.0.255 0.10.100.0 0 9\r\n";
        assert_parses_byte_by_byte(line, endpoints("10.0.0.255:0", "0.10.100.0:9", 1));
        let unknown_with_text = b"PROXY UNKNOWN whatever a sender put here\r\n";
        assert_parses_byte_by_byte(unknown_with_text, no_endpoints(1));
    }

    #[test]
    fn garbage_is_invalid_at_the_first_byte_that_rules_it_out() {
        // (bytes, the shortest prefix that is invalid, the error)
        let cases: [(&[u8], &[u8], ParseError); 16] = [
            (b"GET / HTTP/1.1\r\n", b"G", ParseError::NotProxy),
            (b"POST / HTTP/1.1\r\n", b"PO", ParseError::NotProxy),
            (b"\x16\x03\x01\x02\x00", b"\x16", ParseError::NotProxy),
            (b"PROXYTCP4", b"PROXYT", ParseError::NotProxy),
            (
                b"\r\n\r\n\0\r\nQUIX",
                b"\r\n\r\n\0\r\nQUIX",
                ParseError::NotProxy,
            ),
            (
                b"PROXY GET / HTTP/1.1\r\n",
                b"PROXY G",
                ParseError::V1BadProtocol("G".into()),
            ),
            (
                b"PROXY TCP5 1.2.3.4",
                b"PROXY TCP5",
                ParseError::V1BadProtocol("TCP5".into()),
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                b"PROXY TCP4 01",
                ParseError::V1BadSourceAddress("01".into()),
            ),
            (
                b"PROXY TCP4 ::1 ::1 1 2\r\n",
                b"PROXY TCP4 :",
                ParseError::V1BadSourceAddress(":".into()),
            ),
            (
                b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
                b"PROXY TCP6 1.",
                ParseError::V1BadSourceAddress("1.".into()),
            ),
            (
                b"PROXY TCP6 2001:db8:::1 ::1 1 2\r\n",
                b"PROXY TCP6 2001:db8:::",
                ParseError::V1BadSourceAddress("2001:db8:::".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4\r\n",
                b"PROXY TCP4 1.2.3.4\r",
                ParseError::V1EndsEarly("destination address"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                ParseError::V1LoneCrOrLf,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
                ParseError::V1LoneCrOrLf,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
                ParseError::V1TrailingText("".into()),
            ),
            (
                b"PROXY TCP4 \xff",
                b"PROXY TCP4 \xff",
                ParseError::V1BadSourceAddress("\\xff".into()),
            ),
        ];
        for (bytes, invalid_prefix, error) in cases {
            assert!(bytes.starts_with(invalid_prefix));
            assert_eq!(
                first_invalid(bytes),
                (invalid_prefix.len(), error),
                "{:?}",
                bytes.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn ports_above_65535_or_with_leading_zeros_are_invalid() {
        let cases = [
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n",
                ParseError::V1BadSourcePort("65536".into()),
            ),
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
                ParseError::V1BadDestinationPort("70000".into()),
            ),
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 00 1\r\n",
                ParseError::V1BadSourcePort("00".into()),
            ),
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n",
                ParseError::V1BadDestinationPort("+".into()),
            ),
        ];
        for (line, error) in cases {
            assert_eq!(first_invalid(line.as_bytes()).1, error, "{line:?}");
        }
        let top = b"PROXY TCP4 1.2.3.4 5.6.7.8 65535 0\r\n";
        assert_parses_byte_by_byte(top, endpoints("1.2.3.4:65535", "5.6.7.8:0", 1));
    }

    #[test]
    fn bad_ip_addresses_are_invalid() {
        let cases = [
            ("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "1.2.3.256", true),
            ("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "1.2.3", true),
            ("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "1.2.3.4.", true),
            ("PROXY TCP4 1.2.3.4 1.2..3 1 2\r\n", "1.2..", false),
            ("PROXY TCP6 ::1 gggg::1 1 2\r\n", "g", false),
            ("PROXY TCP6 12345:: ::1 1 2\r\n", "12345", true),
            (
                "PROXY TCP6 ::1 1:2:3:4:5:6:7:8:9 1 2\r\n",
                "1:2:3:4:5:6:7:8:",
                false,
            ),
        ];
        for (line, text, is_source) in cases {
            let error = if is_source {
                ParseError::V1BadSourceAddress(text.into())
            } else {
                ParseError::V1BadDestinationAddress(text.into())
            };
            assert_eq!(first_invalid(line.as_bytes()).1, error, "{line:?}");
        }
    }

    #[test]
    fn a_v1_line_is_invalid_once_its_crlf_can_no_longer_fit_in_107_bytes() {
        let endless = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(
            first_invalid(endless.as_bytes()),
            (V1_MAX_LEN - 1, ParseError::V1TooLong)
        );
        let one_too_many = format!("PROXY UNKNOWN {}\r\n", "x".repeat(92));
        assert_eq!(one_too_many.len(), V1_MAX_LEN + 1);
        // Its 106th byte is an `x` where the CR must be at the latest.
        assert_eq!(
            first_invalid(one_too_many.as_bytes()),
            (V1_MAX_LEN - 1, ParseError::V1TooLong)
        );
        let long = "0000:0000:0000:0000:0000:ffff:255.255.255.255";
        let too_long_tcp6 = format!("PROXY TCP6 {long} {long} 1 2\r\n");
        assert_eq!(
            first_invalid(too_long_tcp6.as_bytes()).1,
            ParseError::V1TooLong
        );
    }

    #[test]
    fn v2_rejects_a_wrong_version_nibble_at_the_13th_byte() {
        for (version_command, version) in [(0x11, 1), (0x31, 3), (0x01, 0), (0xf1, 0xf)] {
            let header = v2(version_command, TCP_OVER_IPV4, &[0; 12]);
            assert_eq!(
                first_invalid(&header),
                (13, ParseError::V2BadVersion(version))
            );
        }
    }

    #[test]
    fn v2_rejects_unknown_commands_families_and_transports() {
        let header = v2(0x22, TCP_OVER_IPV4, &[0; 12]);
        assert_eq!(first_invalid(&header), (13, ParseError::V2BadCommand(2)));
        for family in [0x41, 0x13, 0xff] {
            let header = v2(0x21, family, &[0; 12]);
            assert_eq!(
                first_invalid(&header),
                (14, ParseError::V2BadFamily(family))
            );
        }
        let short = v2(0x21, TCP_OVER_IPV6, &[0; 12]);
        let error = ParseError::V2ShortAddresses {
            family: TCP_OVER_IPV6,
            len: 12,
        };
        assert_eq!(first_invalid(&short), (16, error));
    }

    #[test]
    fn v2_skips_tlvs_and_bounds_the_header_at_4_kib_of_addresses() {
        let mut block = hex("c0000201 c6336402 dc04 01bb");
        block.extend(hex("04 0003 000000")); // PP2_TYPE_NOOP, 3 bytes
        block.extend(hex("05 0002 abcd")); // PP2_TYPE_UNIQUE_ID, 2 bytes
        let header = v2(0x21, TCP_OVER_IPV4, &block);
        let want = endpoints("192.0.2.1:56324", "198.51.100.2:443", 2);
        assert_parses_byte_by_byte(&header, want);

        let largest = v2(0x21, TCP_OVER_IPV4, &[0; 4096]);
        assert_eq!(largest.len(), V2_MAX_LEN);
        assert_eq!(parse(&largest[..V2_MAX_LEN - 1]), Parsed::Incomplete);
        let want = endpoints("0.0.0.0:0", "0.0.0.0:0", 2);
        let done = Parsed::Done {
            header: want,
            consumed: V2_MAX_LEN,
        };
        assert_eq!(parse(&largest), done);
        let too_large = v2(0x21, TCP_OVER_IPV4, &[0; 4097]);
        let error = ParseError::V2TooLong(V2_MAX_LEN + 1);
        assert_eq!(first_invalid(&too_large), (16, error));
    }

    #[test]
    fn v2_names_no_endpoints_for_local_unspec_unix_or_udp() {
        let ipv4_block = hex("c0000201 c6336402 dc04 01bb");
        let cases = [
            v2(0x20, TCP_OVER_IPV4, &ipv4_block), // LOCAL: the block is ignored
            v2(0x21, AF_UNSPEC << 4, &[]),
            v2(0x21, AF_UNIX << 4 | STREAM, &[b'/'; 216]),
            v2(0x21, AF_INET << 4 | DGRAM, &ipv4_block),
        ];
        for header in cases {
            assert_parses_byte_by_byte(&header, no_endpoints(2));
        }
    }

    #[test]
    fn errors_read_as_one_line() {
        let cases = [
            (ParseError::NotProxy, "not a PROXY protocol header"),
            (ParseError::V1TooLong, "PROXY v1 line longer than 107 bytes"),
            (
                ParseError::V1BadSourceAddress("1.2.3.256".into()),
                "bad v1 source address `1.2.3.256`",
            ),
            (
                ParseError::V1EndsEarly("source port"),
                "PROXY v1 line ends before its source port",
            ),
            (
                ParseError::V2BadVersion(1),
                "PROXY v2 header with version 0x1 (want 0x2)",
            ),
            (
                ParseError::V2BadFamily(0x41),
                "PROXY v2 header with unknown address family and transport 0x41",
            ),
            (
                ParseError::V2TooLong(5000),
                "PROXY v2 header of 5000 bytes (at most 4112)",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
        let from_bytes = first_invalid(b"PROXY TCP4 1.2.3.4\n").1.to_string();
        assert!(!from_bytes.contains('\n'), "{from_bytes}");
        let boxed: Box<dyn std::error::Error> = Box::new(ParseError::NotProxy);
        assert_eq!(boxed.to_string(), "not a PROXY protocol header");
    }
}
