//! JSON paths: `$.items[3].price`, `$["odd key"]`, `$.items[*].ts` — the patterns of
//! `--compare-ignore-json`, and the concrete paths a comparison reports.

use super::*;

/// One step of a path pattern (`--compare-ignore-json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PatternStep {
    Key(String),
    Index(usize),
    /// `[*]`: any array index.
    AnyIndex,
}

/// A parsed `--compare-ignore-json` pattern. It ignores the value at its path and
/// everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JsonPattern(pub(super) Vec<PatternStep>);

/// One step of a concrete path while walking two JSON documents.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step<'v> {
    Key(&'v str),
    Index(usize),
}

/// A `--compare-ignore-json` pattern that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPathError {
    /// The pattern as given.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for JsonPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JSON path `{}`: {} (the form is $.key[2].other, [*] for any index, [\"odd key\"])",
            self.path, self.reason
        )
    }
}

impl std::error::Error for JsonPathError {}

impl JsonPattern {
    pub(super) fn parse(text: &str) -> Result<JsonPattern, JsonPathError> {
        let fail = |reason| JsonPathError {
            path: text.to_owned(),
            reason,
        };
        let rest = text.trim();
        let rest = rest
            .strip_prefix('$')
            .ok_or(fail("it must start with `$`"))?;
        let bytes = rest.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'.' => {
                    let start = i + 1;
                    let end = rest[start..]
                        .find(['.', '['])
                        .map_or(rest.len(), |n| start + n);
                    if end == start {
                        return Err(fail("a `.` must be followed by a key"));
                    }
                    steps.push(PatternStep::Key(rest[start..end].to_owned()));
                    i = end;
                }
                b'[' => {
                    let inner = i + 1;
                    let step;
                    let close;
                    match bytes.get(inner) {
                        Some(b'*') => {
                            step = PatternStep::AnyIndex;
                            close = inner + 1;
                        }
                        Some(b'"') => {
                            let end = closing_quote(bytes, inner)
                                .ok_or(fail("a quoted key is not closed"))?;
                            let key: String = serde_json::from_str(&rest[inner..=end])
                                .map_err(|_| fail("a quoted key is not a JSON string"))?;
                            step = PatternStep::Key(key);
                            close = end + 1;
                        }
                        _ => {
                            let digits = rest[inner..]
                                .find(|c: char| !c.is_ascii_digit())
                                .map_or(rest.len(), |n| inner + n);
                            let index = rest[inner..digits]
                                .parse()
                                .map_err(|_| fail("`[` must hold an index, `*` or a quoted key"))?;
                            step = PatternStep::Index(index);
                            close = digits;
                        }
                    }
                    if bytes.get(close) != Some(&b']') {
                        return Err(fail("a `[` is not closed by `]`"));
                    }
                    steps.push(step);
                    i = close + 1;
                }
                _ => return Err(fail("expected `.` or `[` after a step")),
            }
        }
        Ok(JsonPattern(steps))
    }

    /// Whether this pattern names exactly `path` (patterns ignore their whole subtree, so
    /// the walk checks every node on the way down).
    pub(super) fn matches(&self, path: &[Step<'_>]) -> bool {
        self.0.len() == path.len()
            && self
                .0
                .iter()
                .zip(path)
                .all(|(pattern, step)| match (pattern, step) {
                    (PatternStep::Key(k), Step::Key(s)) => k == s,
                    (PatternStep::Index(i), Step::Index(j)) => i == j,
                    (PatternStep::AnyIndex, Step::Index(_)) => true,
                    _ => false,
                })
    }
}

/// The index of the `"` that closes the JSON string opening at `open`.
pub(super) fn closing_quote(bytes: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Appends one step as the log and the patterns write it.
pub(super) fn push_step(out: &mut String, step: Step<'_>) {
    match step {
        Step::Key(key)
            if !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            out.push('.');
            out.push_str(key);
        }
        Step::Key(key) => {
            out.push('[');
            push_json_string(out, key);
            out.push(']');
        }
        Step::Index(i) => {
            let _ = write!(out, "[{i}]");
        }
    }
}

pub(super) fn render_path(path: &[Step<'_>]) -> String {
    let mut out = String::from("$");
    for &step in path {
        push_step(&mut out, step);
    }
    out
}
