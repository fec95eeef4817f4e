//! One line of the compare log read into a [`Comparison`]: what was compared, on which
//! route and shadow, what the verdict was, and (read only when an example is kept) the
//! evidence. Every field is untrusted: strings are cut to a bound, numbers checked, and a
//! line that is not a JSON object with a known `verdict` is not a comparison.
//!
//! The fields (one JSON object per line):
//! `time`, `session`, `request`, `mode` (`http`|`tcp`), `method`, `path`, `shadow` (the
//! shadow's name), `verdict` (`same`|`status`|`header`|`body`|`shadow_error`|`noise`),
//! `noise_of`, `primary` and `shadow` (`{status, ms, bytes, error}`), `diff`, `excerpt`.
//!
//! The shadow's name is `shadow_name` (as `ember::proxy::compare` writes it). The first
//! sketch of the schema put it under `shadow` too, next to the response object; a JSON
//! map keeps only the last of duplicate keys, so for such a line [`top_level_values`]
//! finds every top-level `shadow` in the raw line and takes the string as the name and
//! the object as the response, in either order.

use serde_json::{Map, Value};

use super::format::bounded;
use super::route::route_of;
use super::time;

/// The longest shadow name, header name, error reason or JSON path kept.
const MAX_NAME_CHARS: usize = 120;
/// The longest excerpt side kept for an example.
pub const MAX_EXCERPT_CHARS: usize = 2000;

/// What kind of difference a regression (or a difference judged noise) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Status,
    Header,
    Body,
    ShadowError,
    /// Noise whose kind the line does not say.
    Other,
}

impl Kind {
    /// The regression kinds, in the order the report lists them.
    pub const REGRESSIONS: [Kind; 4] = [Kind::Status, Kind::Header, Kind::Body, Kind::ShadowError];

    /// The name the log uses (`shadow_error`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Header => "header",
            Kind::Body => "body",
            Kind::ShadowError => "shadow_error",
            Kind::Other => "other",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "status" => Kind::Status,
            "header" => Kind::Header,
            "body" => Kind::Body,
            "shadow_error" => Kind::ShadowError,
            _ => return None,
        })
    }

    /// Index into per-kind counters of the regression kinds.
    pub fn index(self) -> Option<usize> {
        Kind::REGRESSIONS.iter().position(|&k| k == self)
    }
}

/// One distinct difference: its kind and what it is about (a header's name, a JSON
/// path with array indexes as `[*]`, a status pair, an error reason). Examples and counts
/// are kept per difference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Difference {
    pub kind: Kind,
    pub detail: String,
}

impl Difference {
    /// `body at $.user.email`, `header x-foo`, `status 200 → 500`, `shadow error: timeout`.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Body if self.detail.starts_with('$') => format!("body at {}", self.detail),
            Kind::Body => format!("body ({})", self.detail),
            Kind::Header => format!("header {}", self.detail),
            Kind::Status => format!("status {}", self.detail),
            Kind::ShadowError => format!("shadow error: {}", self.detail),
            Kind::Other => format!("difference {}", self.detail),
        }
    }
}

/// What the comparison concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Same,
    /// The shadow answered differently (or not at all): counts against it.
    Regression(Difference),
    /// A difference judged noise (a `Date` header, a request id): shown, not counted.
    Noise(Difference),
}

/// One side's response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub status: Option<u64>,
    pub ms: Option<f64>,
    pub bytes: Option<u64>,
    pub error: Option<String>,
}

/// One line of the log, read.
#[derive(Debug)]
pub struct Comparison {
    pub time_ms: Option<i64>,
    pub session: Option<u64>,
    pub request: Option<u64>,
    pub shadow_name: String,
    /// `GET /users/{id}`, or `TCP`.
    pub route: String,
    /// `GET /users/42?x=1` as the client sent it (cut), or `TCP`.
    pub target: String,
    pub verdict: Verdict,
    pub primary: Response,
    pub shadow: Response,
    diff: Value,
    excerpt: Value,
}

/// What an example shows: each side's text, and a note on where they differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub primary: String,
    pub shadow: String,
    pub note: String,
}

/// The comparison on `line`; `None` if the line is not one (blank, not JSON, not an
/// object, no known verdict).
pub fn parse(line: &[u8]) -> Option<Comparison> {
    let raw = line;
    let Ok(Value::Object(mut line)) = serde_json::from_slice::<Value>(raw) else {
        return None;
    };
    let primary = response(line.get("primary"));
    let mut shadow_name = text(&line, "shadow_name")
        .or_else(|| text(&line, "shadow"))
        .map(str::to_owned);
    let mut shadow = None;
    if line.get("shadow").is_some_and(Value::is_object) {
        shadow = Some(response(line.get("shadow")));
    }
    if line.contains_key("shadow") && (shadow_name.is_none() || shadow.is_none()) {
        for value in top_level_values(raw, b"\"shadow\"") {
            match value {
                Value::String(name) => shadow_name = shadow_name.or(Some(name)),
                Value::Object(_) => shadow = shadow.or_else(|| Some(response(Some(&value)))),
                _ => {}
            }
        }
    }
    let shadow = shadow.unwrap_or_default();
    let diff = line.remove("diff").unwrap_or(Value::Null);
    let verdict = match text(&line, "verdict")? {
        "same" => Verdict::Same,
        "noise" => {
            let kind = text(&line, "noise_of")
                .and_then(Kind::from_name)
                .or_else(|| kind_of_diff(&diff))
                .unwrap_or(Kind::Other);
            Verdict::Noise(difference(kind, &diff, &primary, &shadow))
        }
        regression => {
            let kind = Kind::from_name(regression)?;
            Verdict::Regression(difference(kind, &diff, &primary, &shadow))
        }
    };
    let (route, target) = if text(&line, "mode") == Some("tcp") {
        ("TCP".to_owned(), "TCP".to_owned())
    } else {
        let method = text(&line, "method").unwrap_or("-");
        let path = text(&line, "path").unwrap_or("/");
        (
            route_of(method, path),
            bounded(&format!("{method} {path}"), 300),
        )
    };
    Some(Comparison {
        time_ms: text(&line, "time").and_then(time::parse),
        session: line.get("session").and_then(Value::as_u64),
        request: line.get("request").and_then(Value::as_u64),
        shadow_name: shadow_name.map_or_else(
            || "shadow".to_owned(),
            |name| bounded(&name, MAX_NAME_CHARS),
        ),
        route,
        target,
        verdict,
        primary,
        shadow,
        excerpt: line.remove("excerpt").unwrap_or(Value::Null),
        diff,
    })
}

impl Comparison {
    /// Each side's text for an example: the excerpt if the line has one, else what the
    /// diff says (a header's values, the statuses, the error).
    pub fn evidence(&self) -> Evidence {
        let side = |name: &str| {
            self.excerpt
                .get(name)
                .and_then(Value::as_str)
                .map(|s| bounded(s, MAX_EXCERPT_CHARS))
        };
        let difference = match &self.verdict {
            Verdict::Same => None,
            Verdict::Regression(d) | Verdict::Noise(d) => Some(d),
        };
        let kind = difference.map_or(Kind::Other, |d| d.kind);
        let (primary, shadow) = match (side("primary"), side("shadow")) {
            (Some(p), Some(s)) => (p, s),
            _ => self.sides_from_diff(kind),
        };
        Evidence {
            primary,
            shadow,
            note: self.note(kind),
        }
    }

    fn sides_from_diff(&self, kind: Kind) -> (String, String) {
        let diff = &self.diff;
        let value = |side: &str| match diff.get(side) {
            Some(Value::String(s)) => bounded(s, MAX_EXCERPT_CHARS),
            None | Some(Value::Null) => "(absent)".into(),
            Some(other) => bounded(&other.to_string(), MAX_EXCERPT_CHARS),
        };
        let status = |r: &Response| r.status.map_or("-".into(), |s| s.to_string());
        match kind {
            Kind::Header => {
                let name = text_of(diff, "header").unwrap_or("?");
                let name = bounded(name, MAX_NAME_CHARS);
                (
                    format!("{name}: {}", value("primary")),
                    format!("{name}: {}", value("shadow")),
                )
            }
            Kind::Status => match diff.get("status").and_then(Value::as_array) {
                Some(pair) if pair.len() == 2 => (number(&pair[0]), number(&pair[1])),
                _ => (status(&self.primary), status(&self.shadow)),
            },
            Kind::ShadowError => (
                format!(
                    "status {}, {} bytes",
                    status(&self.primary),
                    self.primary.bytes.unwrap_or(0)
                ),
                self.shadow
                    .error
                    .clone()
                    .or_else(|| text_of(diff, "error").map(|e| bounded(e, MAX_NAME_CHARS)))
                    .unwrap_or_else(|| "error".into()),
            ),
            Kind::Body | Kind::Other => ("(no excerpt)".into(), "(no excerpt)".into()),
        }
    }

    /// Where the bodies differ: `at byte 17 ($.items[3].price); 512 vs 498 bytes`.
    fn note(&self, kind: Kind) -> String {
        if kind != Kind::Body {
            return String::new();
        }
        let diff = &self.diff;
        let mut note = Vec::new();
        if let Some(offset) = diff.get("offset").and_then(Value::as_u64) {
            note.push(format!("first difference at byte {offset}"));
        }
        if let Some(path) = text_of(diff, "json_path") {
            note.push(format!("at {}", bounded(path, MAX_NAME_CHARS)));
        }
        let lens = (
            diff.get("primary_len").and_then(Value::as_u64),
            diff.get("shadow_len").and_then(Value::as_u64),
        );
        if let (Some(p), Some(s)) = lens {
            note.push(format!("primary {p} bytes, shadow {s} bytes"));
        }
        if diff.get("hashed").and_then(Value::as_bool) == Some(true) {
            note.push("compared by digest".into());
        }
        note.join("; ")
    }
}

fn text<'a>(line: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    line.get(key).and_then(Value::as_str)
}

fn text_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn number(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        _ => "-".into(),
    }
}

/// A `primary`/`shadow` object; anything else (the shadow's name) reads as nothing.
fn response(value: Option<&Value>) -> Response {
    let Some(Value::Object(r)) = value else {
        return Response::default();
    };
    Response {
        status: r.get("status").and_then(Value::as_u64),
        ms: r
            .get("ms")
            .and_then(Value::as_f64)
            .filter(|ms| ms.is_finite() && *ms >= 0.0),
        bytes: r.get("bytes").and_then(Value::as_u64),
        error: r
            .get("error")
            .and_then(Value::as_str)
            .map(|e| bounded(e, MAX_NAME_CHARS)),
    }
}

/// Every value of the top-level key `quoted_key` (with its quotes, as raw JSON) in the
/// JSON object `line`, duplicates included, in order. `line` has parsed as an object
/// already; the scan only needs to tell keys of the top level from everything nested or
/// quoted.
fn top_level_values(line: &[u8], quoted_key: &[u8]) -> Vec<Value> {
    let mut values = Vec::new();
    let mut depth = 0usize;
    let mut at_key = false;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'"' => {
                let Some(end) = string_end(line, i) else {
                    break;
                };
                let is_key = depth == 1 && at_key;
                at_key = false;
                if is_key && &line[i..=end] == quoted_key {
                    let value_at = line[end + 1..]
                        .iter()
                        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
                        .map_or(line.len(), |skip| end + 1 + skip);
                    let mut stream = serde_json::Deserializer::from_slice(&line[value_at..])
                        .into_iter::<Value>();
                    if let Some(Ok(value)) = stream.next() {
                        values.push(value);
                        i = value_at + stream.byte_offset();
                        continue;
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' => {
                depth += 1;
                at_key = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => at_key = depth == 1,
            _ => {}
        }
        i += 1;
    }
    values
}

/// The index of the quote that closes the JSON string opening at `start`.
fn string_end(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The kind a diff's shape says, for noise lines without `noise_of`.
fn kind_of_diff(diff: &Value) -> Option<Kind> {
    let diff = diff.as_object()?;
    if diff.contains_key("header") {
        Some(Kind::Header)
    } else if diff.contains_key("status") {
        Some(Kind::Status)
    } else if diff.contains_key("offset") || diff.contains_key("json_path") {
        Some(Kind::Body)
    } else if diff.contains_key("error") {
        Some(Kind::ShadowError)
    } else {
        None
    }
}

fn difference(kind: Kind, diff: &Value, primary: &Response, shadow: &Response) -> Difference {
    let detail = match kind {
        Kind::Header => text_of(diff, "header").map_or_else(
            || "(unnamed)".into(),
            |h| bounded(&h.to_ascii_lowercase(), MAX_NAME_CHARS),
        ),
        Kind::Status => {
            let (p, s) = match diff.get("status").and_then(Value::as_array) {
                Some(pair) if pair.len() == 2 => (number(&pair[0]), number(&pair[1])),
                _ => (
                    primary.status.map_or("-".into(), |s| s.to_string()),
                    shadow.status.map_or("-".into(), |s| s.to_string()),
                ),
            };
            bounded(&format!("{p} → {s}"), MAX_NAME_CHARS)
        }
        Kind::Body => match text_of(diff, "json_path") {
            Some(path) => bounded(&any_index(path), MAX_NAME_CHARS),
            None if diff.get("hashed").and_then(Value::as_bool) == Some(true) => {
                "digest differs".into()
            }
            None => "bytes differ".into(),
        },
        Kind::ShadowError => text_of(diff, "error")
            .or(shadow.error.as_deref())
            .map_or_else(|| "unknown".into(), |e| bounded(e, MAX_NAME_CHARS)),
        Kind::Other => String::new(),
    };
    Difference { kind, detail }
}

/// `$.items[*].price` for `$.items[3].price`: one difference however many items show it.
fn any_index(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest.as_bytes().get(digits) == Some(&b']') {
            out.push('*');
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regression(line: &str) -> Difference {
        match parse(line.as_bytes()).expect("a comparison").verdict {
            Verdict::Regression(d) => d,
            other => panic!("not a regression: {other:?}"),
        }
    }

    #[test]
    fn report_record_reads_each_kind_of_difference() {
        let body = regression(
            r#"{"verdict":"body","method":"GET","path":"/a/1","diff":{"offset":17,"primary_len":5,"shadow_len":6,"json_path":"$.items[3].price","hashed":false}}"#,
        );
        assert_eq!(body.label(), "body at $.items[*].price");
        let header = regression(
            r#"{"verdict":"header","diff":{"header":"X-Foo","primary":"a","shadow":"b"}}"#,
        );
        assert_eq!(header.label(), "header x-foo");
        let status = regression(r#"{"verdict":"status","diff":{"status":[200,500]}}"#);
        assert_eq!(status.label(), "status 200 → 500");
        let error = regression(
            r#"{"verdict":"shadow_error","shadow":{"status":null,"error":"timeout"},"diff":{"error":"timeout"}}"#,
        );
        assert_eq!(error.label(), "shadow error: timeout");
        let hashed = regression(r#"{"verdict":"body","diff":{"offset":0,"hashed":true}}"#);
        assert_eq!(hashed.label(), "body (digest differs)");
    }

    #[test]
    fn report_record_reads_routes_shadows_and_times() {
        let c = parse(
            br#"{"time":"2026-11-30T15:00:00.123Z","session":12,"request":3,"mode":"http","method":"GET","path":"/users/42?x=1","shadow_name":"duplex_0","verdict":"same","noise_of":null,"primary":{"status":200,"ms":1.25,"bytes":512},"shadow":{"status":200,"ms":3.5,"bytes":512,"error":null},"diff":null,"excerpt":null}"#,
        )
        .expect("a comparison");
        assert_eq!(c.route, "GET /users/{id}");
        assert_eq!(c.target, "GET /users/42?x=1");
        assert_eq!(c.shadow_name, "duplex_0");
        assert_eq!(c.time_ms, time::parse("2026-11-30T15:00:00.123Z"));
        assert_eq!((c.session, c.request), (Some(12), Some(3)));
        assert_eq!(c.primary.ms, Some(1.25));
        assert_eq!(c.shadow.ms, Some(3.5));
        assert_eq!(c.verdict, Verdict::Same);
        let tcp =
            parse(br#"{"mode":"tcp","shadow_name":"duplex_1","verdict":"same","shadow":{"ms":2}}"#)
                .expect("tcp");
        assert_eq!(
            (tcp.route.as_str(), tcp.shadow_name.as_str()),
            ("TCP", "duplex_1")
        );
    }

    #[test]
    fn report_record_reads_the_shadow_name_and_response_under_one_key_in_either_order() {
        for line in [
            r#"{"shadow":"duplex_1","verdict":"same","shadow":{"status":500,"ms":3.5,"error":null}}"#,
            r#"{"verdict":"same","shadow" : {"status":500,"ms":3.5,"x":{"shadow":"no"}}, "shadow":"duplex_1"}"#,
            r#"{"excerpt":{"shadow":"no"},"diff":["shadow","no"],"verdict":"same","shadow":"duplex_1","shadow":{"status":500,"ms":3.5}}"#,
        ] {
            let c = parse(line.as_bytes()).expect("a comparison");
            assert_eq!(c.shadow_name, "duplex_1", "{line}");
            assert_eq!(
                (c.shadow.status, c.shadow.ms),
                (Some(500), Some(3.5)),
                "{line}"
            );
        }
        let only_name = parse(br#"{"verdict":"same","shadow":"duplex_2"}"#).expect("name only");
        assert_eq!(
            (only_name.shadow_name.as_str(), only_name.shadow.status),
            ("duplex_2", None)
        );
        let only_response =
            parse(br#"{"verdict":"same","shadow":{"status":204}}"#).expect("response only");
        assert_eq!(
            (
                only_response.shadow_name.as_str(),
                only_response.shadow.status
            ),
            ("shadow", Some(204))
        );
    }

    #[test]
    fn report_record_noise_keeps_its_kind() {
        let c = parse(br#"{"verdict":"noise","noise_of":"header","diff":{"header":"Date"}}"#)
            .expect("noise");
        let expected = Difference {
            kind: Kind::Header,
            detail: "date".into(),
        };
        assert_eq!(c.verdict, Verdict::Noise(expected.clone()));
        let c = parse(br#"{"verdict":"noise","noise_of":null,"diff":{"header":"date"}}"#)
            .expect("noise without noise_of");
        assert_eq!(c.verdict, Verdict::Noise(expected));
    }

    #[test]
    fn report_record_refuses_lines_that_are_not_comparisons() {
        for line in [
            "",
            "   ",
            "not json",
            "[1,2]",
            "{}",
            r#"{"verdict":"maybe"}"#,
            r#"{"verdict":17}"#,
            "{\"verdict\":\"same\"",
        ] {
            assert!(parse(line.as_bytes()).is_none(), "{line}");
        }
        assert!(parse(b"{\"verdict\":\"same\",\"path\":\"\xff\"}").is_none());
    }

    #[test]
    fn report_record_evidence_comes_from_the_excerpt_or_the_diff() {
        let c = parse(
            br#"{"verdict":"body","diff":{"offset":9,"primary_len":20,"shadow_len":20,"json_path":"$.a"},"excerpt":{"primary":"{\"a\":1}","shadow":"{\"a\":2}"}}"#,
        )
        .expect("body");
        let e = c.evidence();
        assert_eq!(
            (e.primary.as_str(), e.shadow.as_str()),
            ("{\"a\":1}", "{\"a\":2}")
        );
        assert_eq!(
            e.note,
            "first difference at byte 9; at $.a; primary 20 bytes, shadow 20 bytes"
        );
        let c =
            parse(br#"{"verdict":"header","diff":{"header":"x-v","primary":"1","shadow":null}}"#)
                .expect("header");
        let e = c.evidence();
        assert_eq!(
            (e.primary.as_str(), e.shadow.as_str()),
            ("x-v: 1", "x-v: (absent)")
        );
    }

    #[test]
    fn report_record_bounds_what_it_keeps() {
        let huge = "x".repeat(100_000);
        let line = format!(
            r#"{{"verdict":"header","shadow":"{huge}","diff":{{"header":"{huge}"}},"excerpt":{{"primary":"{huge}","shadow":"{huge}"}}}}"#
        );
        let c = parse(line.as_bytes()).expect("a comparison");
        assert!(c.shadow_name.chars().count() <= MAX_NAME_CHARS);
        let Verdict::Regression(d) = &c.verdict else {
            panic!("a regression")
        };
        assert!(d.detail.chars().count() <= MAX_NAME_CHARS);
        assert!(c.evidence().primary.chars().count() <= MAX_EXCERPT_CHARS);
    }
}
