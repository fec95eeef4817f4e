//! Active health checks (HAProxy's `check`): every `interval`, one probe connection per
//! backend of a [`Pool`](super::Pool) — a TCP connect, or an HTTP `GET` whose status must
//! be 2xx or 3xx — and its verdict handed to the pool's health score. Probes are ordinary
//! reactor connections with their own timeouts; a probe still running when the next
//! round starts is left to finish, never doubled.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::{Context, Handler, Reactor, UnbindReason};

use super::target::Target;

/// What an active check does, and how its results change a backend's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Time between two checks of a backend (default 2 s).
    pub interval: Duration,
    /// How long one check may take, connect and answer together (default: the interval).
    pub timeout: Duration,
    /// `None`: a TCP connect is the check. `Some(path)`: `GET path` must answer 2xx/3xx.
    pub http_path: Option<String>,
    /// Passed checks in a row that bring a backend up (default 2).
    pub rise: u32,
    /// Failed checks in a row that take a backend down (default 3).
    pub fall: u32,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            http_path: None,
            rise: 2,
            fall: 3,
        }
    }
}

/// Where a probe reports: called once with the verdict.
pub(crate) type Verdict = Box<dyn FnOnce(&mut Reactor, bool)>;

/// One probe connection. The verdict sits in a slot shared with `probe`, so that a
/// connect that fails before the probe exists still delivers it.
struct Probe {
    request: Option<Vec<u8>>,
    answer: Vec<u8>,
    verdict: Rc<Cell<Option<Verdict>>>,
    timeout: Duration,
}

impl Probe {
    fn decide(&mut self, cx: &mut Context<'_>, passed: bool) {
        if let Some(verdict) = self.verdict.take() {
            verdict(cx.reactor(), passed);
        }
        cx.close();
    }
}

/// The most of an answer a probe reads looking for the status line.
const STATUS_LINE_LIMIT: usize = 1024;

impl Handler for Probe {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.set_pending_connect_timeout(self.timeout);
        cx.set_comm_inactivity_timeout(Some(self.timeout));
    }

    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        match self.request.take() {
            None => self.decide(cx, true),
            Some(request) => {
                cx.send_data(&request);
            }
        }
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.answer.extend_from_slice(data);
        if let Some(end) = self.answer.windows(2).position(|w| w == b"\r\n") {
            let passed = http_status_is_healthy(&self.answer[..end]);
            self.decide(cx, passed);
        } else if self.answer.len() > STATUS_LINE_LIMIT {
            self.decide(cx, false);
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, _reason: UnbindReason) {
        // Refused, timed out, or closed before a status line: failed.
        if let Some(verdict) = self.verdict.take() {
            verdict(cx.reactor(), false);
        }
    }
}

/// `HTTP/1.x 2xx ...` or `3xx`.
fn http_status_is_healthy(status_line: &[u8]) -> bool {
    let line = String::from_utf8_lossy(status_line);
    let mut parts = line.split_whitespace();
    let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/"));
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    version_ok && code.is_some_and(|c| (200..400).contains(&c))
}

/// Starts one probe of `target` per `check`; `verdict` runs once with the result. A
/// target that is not plain TCP or Unix, or a socket that cannot be created, fails.
pub(crate) fn probe(r: &mut Reactor, target: &Target, check: &Check, verdict: Verdict) {
    let request = check.http_path.as_ref().map(|path| {
        let host = match target {
            Target::Tcp(addr) => addr.to_string(),
            Target::Host(host, port) => format!("{host}:{port}"),
            Target::Unix(_) => "localhost".to_owned(),
        };
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ember-proxy-check\r\n\r\n")
            .into_bytes()
    });
    let slot = Rc::new(Cell::new(Some(verdict)));
    let handler = Probe {
        request,
        answer: Vec::new(),
        verdict: Rc::clone(&slot),
        timeout: check.timeout,
    };
    let opened = match target {
        Target::Tcp(addr) => r.connect(*addr, handler).map(drop),
        Target::Host(host, port) => {
            r.connect_host(host, *port, handler);
            Ok(())
        }
        Target::Unix(path) => r.connect_unix(path, handler).map(drop),
    };
    if opened.is_err()
        && let Some(verdict) = slot.take()
    {
        // No socket at all (out of descriptors, say): that check failed.
        verdict(r, false);
    }
}

#[cfg(test)]
mod tests {
    use super::http_status_is_healthy;

    #[test]
    fn two_and_three_hundreds_are_healthy() {
        assert!(http_status_is_healthy(b"HTTP/1.1 200 OK"));
        assert!(http_status_is_healthy(b"HTTP/1.0 302 Found"));
        assert!(!http_status_is_healthy(b"HTTP/1.1 503 Service Unavailable"));
        assert!(!http_status_is_healthy(b"HTTP/1.1 404 Not Found"));
        assert!(!http_status_is_healthy(b"SSH-2.0-OpenSSH"));
        assert!(!http_status_is_healthy(b""));
    }
}
