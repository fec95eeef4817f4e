//! One access-log line per client session, from the library's [`SessionRecord`]: as
//! `key=value` pairs (logfmt, `--log-format text`, the default) or as one JSON object
//! (`--log-format json`). Both carry the same fields:
//!
//! - `time` (when the session ended, RFC 3339 UTC), `session` (the id in every other
//!   line about it), `client`, `listener`;
//! - the primary backend (`backend` name@address, `retries`, `connect_ms`, and how it
//!   ended: `backend_end`);
//! - `bytes_in` (client → backend) and `bytes_out` (backend → client), `duration_ms`,
//!   `client_end`;
//! - on a listener that terminates TLS: the protocol, the SNI name asked for, the ALPN
//!   protocol agreed on, and whether the client showed a certificate;
//! - each shadow: name@address, bytes sent and received, how it ended, cut off or not.
//!
//! Ends are [`UnbindReason::code`](ember::UnbindReason::code)s: `peer_closed`, `reset`,
//! `refused`, `connect_timeout`, `inactivity_timeout`, `closed_by_us`, …

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ember::proxy::{BackendRecord, SessionRecord};

use crate::logging::rfc3339;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The access-log line for `record`, ended now.
pub fn line(record: &SessionRecord, format: Format) -> String {
    let time = rfc3339(SystemTime::now());
    match format {
        Format::Text => text(record, &time),
        Format::Json => json(record, &time),
    }
}

fn addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".into(), |a| a.to_string())
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn text(r: &SessionRecord, time: &str) -> String {
    let mut line = format!(
        "{time} session={} client={} listener={}",
        r.id,
        addr(r.client),
        addr(r.listener)
    );
    match r.primaries().last() {
        Some(b) => {
            let _ = write!(
                line,
                " backend={}@{} retries={} connect_ms={} backend_end={}",
                b.name,
                b.target,
                b.retries,
                b.connect_time
                    .map_or_else(|| "-".into(), |d| millis(d).to_string()),
                b.end.code()
            );
        }
        None => line.push_str(" backend=-"),
    }
    let _ = write!(
        line,
        " bytes_in={} bytes_out={} duration_ms={} client_end={}",
        r.bytes_from_client,
        r.bytes_to_client,
        millis(r.duration),
        r.client_end.code()
    );
    if let Some(tls) = &r.tls {
        let _ = write!(
            line,
            " tls={} sni={} alpn={} client_cert={}",
            tls.protocol.as_deref().unwrap_or("-"),
            tls.server_name.as_deref().unwrap_or("-"),
            tls.alpn
                .as_deref()
                .map_or_else(|| "-".into(), |a| String::from_utf8_lossy(a).into_owned()),
            if tls.peer_certificates.is_empty() {
                "no"
            } else {
                "yes"
            }
        );
        // Quoted: a distinguished name has spaces and commas.
        if let Some(subject) = tls.peer_subject() {
            let _ = write!(line, " client_subject={}", quoted(&subject));
        }
    }
    for s in r.shadows() {
        let _ = write!(
            line,
            " shadow={}@{}:sent={},received={},end={},cut_off={}",
            s.name,
            s.target,
            s.bytes_sent,
            s.bytes_received,
            s.end.code(),
            if s.cut_off { "yes" } else { "no" }
        );
    }
    line
}

fn json(r: &SessionRecord, time: &str) -> String {
    let mut line = format!(
        "{{\"time\":{},\"session\":{},\"client\":{},\"listener\":{}",
        quoted(time),
        r.id,
        quoted(&addr(r.client)),
        quoted(&addr(r.listener))
    );
    line.push_str(",\"backend\":");
    match r.primaries().last() {
        Some(b) => json_backend(&mut line, b),
        None => line.push_str("null"),
    }
    let _ = write!(
        line,
        ",\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{},\"client_end\":{},\"shadows\":[",
        r.bytes_from_client,
        r.bytes_to_client,
        millis(r.duration),
        quoted(r.client_end.code())
    );
    for (i, s) in r.shadows().enumerate() {
        if i > 0 {
            line.push(',');
        }
        json_backend(&mut line, s);
    }
    line.push(']');
    if let Some(tls) = &r.tls {
        let text = |v: Option<&str>| v.map_or_else(|| "null".into(), quoted);
        let alpn = tls
            .alpn
            .as_deref()
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let _ = write!(
            line,
            ",\"tls\":{{\"protocol\":{},\"sni\":{},\"alpn\":{},\"client_cert\":{},\"client_subject\":{}}}",
            text(tls.protocol.as_deref()),
            text(tls.server_name.as_deref()),
            text(alpn.as_deref()),
            !tls.peer_certificates.is_empty(),
            text(tls.peer_subject().as_deref())
        );
    }
    line.push('}');
    line
}

fn json_backend(line: &mut String, b: &BackendRecord) {
    let _ = write!(
        line,
        "{{\"name\":{},\"target\":{},\"retries\":{},\"connect_ms\":{},\"bytes_sent\":{},\"bytes_received\":{},\"end\":{},\"cut_off\":{}}}",
        quoted(&b.name),
        quoted(&b.target),
        b.retries,
        b.connect_time
            .map_or_else(|| "null".into(), |d| millis(d).to_string()),
        b.bytes_sent,
        b.bytes_received,
        quoted(b.end.code()),
        b.cut_off
    );
}

/// `s` as a JSON string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember::UnbindReason;

    fn record() -> SessionRecord {
        let backend = |name: &str, shadow| BackendRecord {
            name: name.into(),
            target: "127.0.0.1:8081".into(),
            shadow,
            retries: 1,
            connect_time: Some(Duration::from_micros(1500)),
            bytes_sent: 5,
            bytes_received: 7,
            end: UnbindReason::PeerClosed,
            cut_off: shadow,
        };
        SessionRecord {
            id: 3,
            client: Some("127.0.0.1:5000".parse().unwrap()),
            listener: Some("127.0.0.1:8080".parse().unwrap()),
            started: SystemTime::now(),
            duration: Duration::from_millis(12),
            bytes_from_client: 5,
            bytes_to_client: 7,
            client_end: UnbindReason::ClosedByUs,
            tls: None,
            backends: vec![backend("relay", false), backend("duplex_0", true)],
        }
    }

    #[test]
    fn text_lines_are_key_value_pairs() {
        let line = text(&record(), "T");
        assert_eq!(
            line,
            "T session=3 client=127.0.0.1:5000 listener=127.0.0.1:8080 \
             backend=relay@127.0.0.1:8081 retries=1 connect_ms=1.5 backend_end=peer_closed \
             bytes_in=5 bytes_out=7 duration_ms=12 client_end=closed_by_us \
             shadow=duplex_0@127.0.0.1:8081:sent=5,received=7,end=peer_closed,cut_off=yes"
        );
    }

    #[test]
    fn json_lines_are_one_object() {
        let line = json(&record(), "T");
        assert_eq!(
            line,
            "{\"time\":\"T\",\"session\":3,\"client\":\"127.0.0.1:5000\",\"listener\":\"127.0.0.1:8080\",\
             \"backend\":{\"name\":\"relay\",\"target\":\"127.0.0.1:8081\",\"retries\":1,\"connect_ms\":1.5,\
             \"bytes_sent\":5,\"bytes_received\":7,\"end\":\"peer_closed\",\"cut_off\":false},\
             \"bytes_in\":5,\"bytes_out\":7,\"duration_ms\":12,\"client_end\":\"closed_by_us\",\
             \"shadows\":[{\"name\":\"duplex_0\",\"target\":\"127.0.0.1:8081\",\"retries\":1,\"connect_ms\":1.5,\
             \"bytes_sent\":5,\"bytes_received\":7,\"end\":\"peer_closed\",\"cut_off\":true}]}"
        );
        assert_eq!(quoted("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
    }
}
