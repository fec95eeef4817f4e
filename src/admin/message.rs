//! An admin request as a route sees it ([`Request`]), what a route answers
//! ([`Response`]), and how an answer becomes HTTP/1.1 bytes.
//!
//! The framing of a response is this module's, not the route's: it always writes
//! `Content-Length` (except where HTTP forbids one: 204 and 304), writes
//! `Connection: close` when the connection will close, and leaves the body out of an
//! answer to `HEAD`. Headers a route adds that would contradict that framing, or that
//! could split the response (CR, LF, NUL), are left out.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::exposition::PROMETHEUS_CONTENT_TYPE;

/// One parsed request: method, target, version and headers. Any body was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor_version: u8,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) peer: Option<SocketAddr>,
}

impl Request {
    /// The method, as sent (`GET`, `HEAD`, …; methods are case-sensitive).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query string, as sent (not percent-decoded). Routes match
    /// it exactly.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string after `?`, if there was one (not percent-decoded).
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The value of the first `name=value` pair of the query string called `name`
    /// (`Some("")` for a bare `name`), not percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The first header called `name` (case-insensitive), if its value is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every header, in the order sent, values as bytes.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// `(1, 0)` or `(1, 1)`.
    pub fn version(&self) -> (u8, u8) {
        (1, self.minor_version)
    }

    /// The client's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What a route answers. `Content-Length` and `Connection` are the server's to write;
/// see [`with_header`](Self::with_header) for the headers a route may add.
///
/// ```
/// use ember::admin::Response;
///
/// let ok = Response::json(200, r#"{"status":"ok"}"#).with_header("Cache-Control", "no-store");
/// assert_eq!(ok.content_type, "application/json");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code. One outside 200–599 is sent as 500: a route answers with a
    /// final status, and 1xx would break the framing.
    pub status: u16,
    /// The `Content-Type` header; left out when empty.
    pub content_type: String,
    /// The body (not sent in answer to `HEAD`, nor with 204 or 304).
    pub body: Vec<u8>,
    /// More headers, in order.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// A response with this status, content type and body.
    pub fn new(status: u16, content_type: impl Into<String>, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type: content_type.into(),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// `text/html; charset=utf-8`.
    pub fn html(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/html; charset=utf-8", body.into())
    }

    /// `application/json`; `body` is JSON text already.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "application/json", body.into())
    }

    /// A 200 with a Prometheus text page ([`Exposition::finish`](super::Exposition::finish)).
    pub fn prometheus(page: String) -> Response {
        Response::new(200, PROMETHEUS_CONTENT_TYPE, page)
    }

    /// Adds a header. Left out when sent: a name that is not an HTTP token, a value with
    /// CR, LF or NUL, and `Content-Length`, `Transfer-Encoding`, `Connection` and
    /// `Content-Type` (the server's, or the field's).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The status actually sent.
    pub(crate) fn sent_status(&self) -> u16 {
        if (200..=599).contains(&self.status) {
            self.status
        } else {
            500
        }
    }

    /// The response as HTTP/1.1 bytes, head and body in one buffer (one write).
    /// `head_only` answers `HEAD`: the same headers, no body. `close` adds
    /// `Connection: close`.
    pub(crate) fn encode(&self, head_only: bool, close: bool) -> Vec<u8> {
        let status = self.sent_status();
        let bodiless = status == 204 || status == 304;
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
        if !self.content_type.is_empty() && is_header_value(&self.content_type) {
            let _ = write!(head, "Content-Type: {}\r\n", self.content_type);
        }
        if !bodiless {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        for (name, value) in &self.headers {
            if is_token(name) && is_header_value(value) && !is_framing_header(name) {
                let _ = write!(head, "{name}: {value}\r\n");
            }
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only && !bodiless {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn is_framing_header(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "content-type",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// An HTTP token (RFC 9110 §5.6.2): what a header name must be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// The reason phrase for the statuses this server and its routes are likely to send;
/// empty for others (a reason phrase is optional).
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_response_has_status_type_length_then_body() {
        let r = Response::text(200, "hello");
        assert_eq!(
            text(r.encode(false, false)),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\n\r\nhello"
        );
    }

    #[test]
    fn head_gets_the_same_headers_and_no_body() {
        let r = Response::html(200, "<p>hi</p>");
        assert_eq!(
            text(r.encode(true, false)),
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: 9\r\n\r\n"
        );
    }

    #[test]
    fn closing_adds_connection_close_after_the_extra_headers() {
        let r = Response::json(503, "{}").with_header("Retry-After", "1");
        assert_eq!(
            text(r.encode(false, true)),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn framing_and_splitting_headers_from_a_route_are_left_out() {
        let r = Response::new(200, "", "x")
            .with_header("Content-Length", "99")
            .with_header("connection", "keep-alive")
            .with_header("X-Split", "a\r\nSet-Cookie: b")
            .with_header("Bad Name", "v")
            .with_header("X-Ok", "fine");
        assert_eq!(
            text(r.encode(false, false)),
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Ok: fine\r\n\r\nx"
        );
    }

    #[test]
    fn no_content_has_neither_length_nor_body() {
        let r = Response::new(204, "", "ignored");
        assert_eq!(
            text(r.encode(false, false)),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
    }

    #[test]
    fn a_status_outside_200_to_599_is_sent_as_500() {
        for status in [0, 101, 600] {
            let r = Response::text(status, "x");
            assert!(text(r.encode(false, false)).starts_with("HTTP/1.1 500 "));
        }
        assert!(
            text(Response::text(299, "").encode(false, false)).starts_with("HTTP/1.1 299 \r\n")
        );
    }

    #[test]
    fn query_params_are_found_by_name() {
        let request = Request {
            method: "GET".into(),
            path: "/metrics".into(),
            query: Some("a=1&flag&b=x%20y&a=2".into()),
            minor_version: 1,
            headers: vec![("X-Thing".into(), b"v".to_vec())],
            peer: None,
        };
        assert_eq!(request.query_param("a"), Some("1"));
        assert_eq!(request.query_param("flag"), Some(""));
        assert_eq!(request.query_param("b"), Some("x%20y"));
        assert_eq!(request.query_param("c"), None);
        assert_eq!(request.header("x-thing"), Some("v"));
    }
}
