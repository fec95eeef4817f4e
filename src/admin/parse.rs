//! Reading one request off the front of a connection's input: bytes in, a decision out.
//!
//! Pure and unit-tested without sockets (the shape of `timers.rs`): it owns no state and
//! never looks past the request it decides on, so pipelined requests behind it are left
//! for the next call. What it decides, in order:
//!
//! 1. Not a whole head yet: wait — unless the input is already longer than the head
//!    limit: 414 when no line ended within the limit (the request line is too long),
//!    431 otherwise. More than [`MAX_HEADERS`] headers is 431 too.
//! 2. Not HTTP/1.x, bytes HTTP forbids, a missing or repeated `Host` in HTTP/1.1, a
//!    bad or conflicting `Content-Length`, a target that is not a path: 400.
//! 3. `Transfer-Encoding` (a chunked body): 411. Its end cannot be found without
//!    decoding it, and an admin server has no use for a body.
//! 4. `Content-Length` above the body limit: 413. A smaller body is waited for and
//!    skipped, so the next pipelined request is found after it.
//!
//! Every refusal closes the connection (the caller's part): after one, where the next
//! request would start is not known.

use httparse::Status;

use super::message::Request;

/// Headers one request may have; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// What the front of the input holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not a whole request yet, and within the limits: read more. `expects_continue`:
    /// the head is whole, asks for `100 Continue`, and its body has not all arrived.
    Incomplete { expects_continue: bool },
    /// A whole request (with any body) in the first `consumed` bytes. `keep_alive`:
    /// the connection may carry another request after it (HTTP/1.1 without
    /// `Connection: close`).
    Complete {
        request: Request,
        consumed: usize,
        keep_alive: bool,
    },
    /// Not a request this server takes: answer with the refusal's status and close.
    Refused(Refusal),
}

/// Why a request is refused; each is one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400: not HTTP/1.x, or not a request this server can read safely.
    Malformed,
    /// 411: a body framed by `Transfer-Encoding` rather than `Content-Length`.
    LengthRequired,
    /// 413: a `Content-Length` above the body limit.
    BodyTooLarge,
    /// 414: the request line alone is longer than the head limit.
    TargetTooLong,
    /// 431: the head is longer than the limit, or has too many headers.
    HeadTooLarge,
}

impl Refusal {
    pub(crate) fn status(self) -> u16 {
        match self {
            Refusal::Malformed => 400,
            Refusal::LengthRequired => 411,
            Refusal::BodyTooLarge => 413,
            Refusal::TargetTooLong => 414,
            Refusal::HeadTooLarge => 431,
        }
    }
}

/// Decides on the request at the front of `input`: a head of at most `max_head` bytes and
/// a body of at most `max_body`. The request's peer address is left for the caller.
pub(crate) fn parse(input: &[u8], max_head: usize, max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(input) {
        Ok(Status::Complete(len)) if len <= max_head => len,
        Ok(Status::Partial) if input.len() <= max_head => {
            return Parsed::Incomplete {
                expects_continue: false,
            };
        }
        Ok(_) => return Parsed::Refused(oversized(input, max_head)),
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refused(Refusal::HeadTooLarge),
        Err(_) => return Parsed::Refused(Refusal::Malformed),
    };
    let (Some(method), Some(target), Some(minor_version)) = (head.method, head.path, head.version)
    else {
        return Parsed::Refused(Refusal::Malformed);
    };
    let headers: &[httparse::Header<'_>] = head.headers;
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };

    let hosts = named("host").count();
    if hosts > 1 || (minor_version == 1 && hosts == 0) {
        return Parsed::Refused(Refusal::Malformed);
    }
    if named("transfer-encoding").next().is_some() {
        return Parsed::Refused(Refusal::LengthRequired);
    }
    let mut body_len = None;
    for header in named("content-length") {
        match (content_length(header.value), body_len) {
            (None, _) => return Parsed::Refused(Refusal::Malformed),
            (Some(len), Some(earlier)) if len != earlier => {
                return Parsed::Refused(Refusal::Malformed);
            }
            (Some(len), _) => body_len = Some(len),
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > max_body as u64 {
        return Parsed::Refused(Refusal::BodyTooLarge);
    }
    let Some((path, query)) = split_target(target) else {
        return Parsed::Refused(Refusal::Malformed);
    };

    // Within `max_body`, so it fits a usize.
    let consumed = head_len + body_len as usize;
    if input.len() < consumed {
        let expects_continue = minor_version == 1
            && named("expect").any(|h| h.value.eq_ignore_ascii_case(b"100-continue"));
        return Parsed::Incomplete { expects_continue };
    }
    let wants_close = named("connection").any(|h| has_token(h.value, "close"));
    let request = Request {
        method: method.to_owned(),
        path,
        query,
        minor_version,
        headers: headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        peer: None,
    };
    Parsed::Complete {
        request,
        consumed,
        // HTTP/1.0 closes after the response, keep-alive asked for or not.
        keep_alive: minor_version == 1 && !wants_close,
    }
}

/// Which limit an over-long head broke: the request line's, or the headers'.
fn oversized(input: &[u8], max_head: usize) -> Refusal {
    if input[..max_head.min(input.len())].contains(&b'\n') {
        Refusal::HeadTooLarge
    } else {
        Refusal::TargetTooLong
    }
}

/// A `Content-Length` value: digits only (an overflowing one is `u64::MAX`, too large).
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = std::str::from_utf8(digits).ok()?;
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The path and query of a request target: origin form (`/a?b`), absolute form
/// (`http://host/a?b`, which a server must accept) or `*`. `None` for anything else.
fn split_target(target: &str) -> Option<(String, Option<String>)> {
    let origin_form = if target.starts_with('/') || target == "*" {
        target
    } else {
        let scheme_end = target.find("://")?;
        let scheme = &target[..scheme_end];
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
            return None;
        }
        let after_authority = &target[scheme_end + 3..];
        after_authority
            .find(['/', '?'])
            .map_or("", |at| &after_authority[at..])
    };
    let (path, query) = match origin_form.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (origin_form, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Some((path.to_owned(), query))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: usize = 8 * 1024;
    const BODY: usize = 1024;

    fn parse_all(input: &[u8]) -> Parsed {
        parse(input, HEAD, BODY)
    }

    fn complete(input: &[u8]) -> (Request, usize, bool) {
        match parse_all(input) {
            Parsed::Complete {
                request,
                consumed,
                keep_alive,
            } => (request, consumed, keep_alive),
            other => panic!("expected a whole request, got {other:?}"),
        }
    }

    fn refused(input: &[u8]) -> u16 {
        match parse_all(input) {
            Parsed::Refused(why) => why.status(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const WAIT: Parsed = Parsed::Incomplete {
        expects_continue: false,
    };

    #[test]
    fn a_get_is_read_with_its_path_query_and_headers() {
        let input = b"GET /metrics?name=x HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n";
        let (request, consumed, keep_alive) = complete(input);
        assert_eq!(consumed, input.len());
        assert!(keep_alive);
        assert_eq!(request.method(), "GET");
        assert_eq!(request.path(), "/metrics");
        assert_eq!(request.query(), Some("name=x"));
        assert_eq!(request.header("accept"), Some("text/plain"));
        assert_eq!(request.version(), (1, 1));
    }

    #[test]
    fn a_partial_head_waits_and_pipelined_requests_are_left_alone() {
        let one = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..one.len() {
            assert_eq!(parse_all(&one[..end]), WAIT, "after {end} bytes");
        }
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\nHo");
        assert_eq!(complete(&two).1, one.len());
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection() {
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").2);
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").2);
        assert!(!complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").2);
        assert!(complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").2);
    }

    #[test]
    fn a_small_body_is_waited_for_and_skipped() {
        let input = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_all(&input[..input.len() - 1]), WAIT);
        assert_eq!(complete(input).1, input.len());
    }

    #[test]
    fn expect_continue_is_reported_while_the_body_is_missing() {
        let input =
            b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            parse_all(input),
            Parsed::Incomplete {
                expects_continue: true
            }
        );
    }

    #[test]
    fn garbage_and_broken_framing_are_400() {
        assert_eq!(refused(b"\x16\x03\x01\x02\x00"), 400); // a TLS hello
        assert_eq!(refused(b"GET / HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n"), 400); // no Host
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400
        );
        assert_eq!(refused(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(refused(b"GET nopath HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn chunked_bodies_are_411_and_long_ones_413() {
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(chunked), 411);
        let long = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            BODY + 1
        );
        assert_eq!(refused(long.as_bytes()), 413);
        let huge = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(refused(huge), 413);
    }

    #[test]
    fn an_over_long_request_line_is_414_and_over_long_headers_431() {
        let mut line = b"GET /".to_vec();
        line.resize(HEAD + 1, b'a');
        assert_eq!(refused(&line), 414);
        let mut headers = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        headers.resize(HEAD + 1, b'a');
        assert_eq!(refused(&headers), 431);
        // A whole head that arrived at once is measured too.
        headers.extend_from_slice(b"\r\n\r\n");
        assert_eq!(refused(&headers), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut input = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(refused(&input), 431);
    }

    #[test]
    fn absolute_form_and_star_targets_become_paths() {
        let (r, _, _) = complete(b"GET http://host:80/status?x=1 HTTP/1.1\r\nHost: host\r\n\r\n");
        assert_eq!((r.path(), r.query()), ("/status", Some("x=1")));
        let (r, _, _) = complete(b"GET https://host HTTP/1.1\r\nHost: host\r\n\r\n");
        assert_eq!((r.path(), r.query()), ("/", None));
        let (r, _, _) = complete(b"OPTIONS * HTTP/1.1\r\nHost: host\r\n\r\n");
        assert_eq!(r.path(), "*");
        assert_eq!(refused(b"GET ftp://host/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }
}
