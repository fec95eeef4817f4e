//! Comparing what a shadow answered with what production answered (`--compare`, issue 12),
//! the way Twitter's Diffy does: every primary response is paired with each shadow's
//! response to the same request, and the difference is classified, with noise cancelled.
//!
//! This module owns:
//! - [`ResponseDigest`]: what one HTTP response leaves behind for a comparison, built while
//!   it streams: status, headers, body length, a hash of the whole body, and a copy of the
//!   body's first [`Rules::max_body`] bytes. Its memory is O(max_body) however large the
//!   response is.
//! - [`Rules`]: what a comparison ignores (headers, JSON paths) and how much body it keeps,
//!   and [`Rules::classify`], which turns (primary, shadow, optional reference) into a
//!   [`Verdict`].
//! - [`TcpComparison`]: the byte-for-byte comparison of two streams for protocols that are
//!   not HTTP (Redis, memcached, SMTP), fed as each side's bytes arrive.
//! - [`CompareLine`]: one line of the `--compare-log` (a JSON object), written and read back.
//! - [`VerdictCounts`]: counters by verdict for `/metrics`.
//!
//! It is pure: no sockets, no reactor, no clock (the caller passes times in). It never
//! decides anything about traffic; a verdict is only reported.
//!
//! ## Noise
//! Two correct runs of the same code differ: a request id, a timestamp in the body, a
//! token. Diffy's answer is a third backend, a second copy of production (the
//! *reference*): a difference between primary and shadow that also shows between primary
//! and reference is [`Verdict::Noise`], not a regression. "Also shows" means: the status
//! differs in both; the same header differs in both; the body differs at the same JSON
//! path (or under it) in both; or, for bodies compared as bytes, both bodies differ.
//! Without a reference, [`Rules`] alone (default ignored headers, user-ignored headers and
//! JSON paths) cancels noise.
//!
//! ## What is compared, in order
//! 1. the status; 2. headers not ignored, by name (repeated headers joined with `, `, so a
//!    list split over two lines equals the same list on one); 3. the body: bytes, or JSON
//!    values when both bodies are JSON and kept whole (object key order and whitespace
//!    never matter; `1` equals `1.0`). A body longer than `max_body` is compared by its
//!    kept bytes first, then by hash and length: the verdict then has no offset and says
//!    `hashed`.
//!
//! The first real difference is the verdict; if there is none but some noise, the first
//! noisy difference is reported as noise.

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Number, Value};

use crate::UnbindReason;
use crate::timestamp::{parse_rfc3339, rfc3339};

/// How much of a body is kept for JSON comparison and excerpts by default
/// (`--compare-max-body`): 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// How far one side of a TCP comparison may run ahead of the other, buffered, before the
/// comparison falls back to hashes: 1 MiB.
pub const DEFAULT_TCP_LEAD: usize = 1 << 20;

/// The most bytes of each side an [`Excerpt`] shows.
pub const EXCERPT_LEN: usize = 96;

/// Of an excerpt, how many bytes come before the first difference.
const EXCERPT_BEFORE: usize = 32;

/// The most bytes of a header value a [`Difference::Header`] carries, so one huge header
/// can't make a huge log line.
const HEADER_VALUE_SHOWN: usize = 256;

/// The most JSON paths remembered as noise for one reference comparison; past it the whole
/// JSON body counts as noisy (a reference that differs everywhere tells nothing finer).
const MAX_NOISE_PATHS: usize = 1024;

/// Headers that differ between two correct runs of the same version, so they are not
/// compared unless the user clears this list ([`Rules::clear_ignored_headers`]).
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    // The clock: every response carries the second it was made.
    "date",
    // Seconds an answer spent in a cache: depends on when the cache filled.
    "age",
    // Mostly `now + max-age`, so it moves with Date (Cache-Control, the policy, is compared).
    "expires",
    // Dynamic pages stamp it with now; static files with their mtime, which differs between
    // two hosts deployed minutes apart. The body says whether the content changed.
    "last-modified",
    // nginx and Apache build it from the file's mtime and size, so two hosts serving the
    // same file disagree; the body is compared instead.
    "etag",
    // Session ids, CSRF tokens and balancer stickiness cookies are new on every response.
    "set-cookie",
    // Per-request ids, new every time: the de-facto ones and AWS's and Cloudflare's.
    "x-request-id",
    "x-correlation-id",
    "request-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-amz-id-2",
    "x-amz-cf-id",
    "cf-ray",
    // Trace context (W3C, Zipkin B3, AWS X-Ray, Google Cloud): a new trace per request.
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    // Time measured for this one response: Server-Timing, Rails's X-Runtime, the common
    // X-Response-Time, Envoy's upstream time.
    "server-timing",
    "x-runtime",
    "x-response-time",
    "x-envoy-upstream-service-time",
    // Which proxy, cache node or edge answered, and whether the cache hit: the path the
    // request took, not what the application said.
    "via",
    "x-served-by",
    "x-cache",
    "x-cache-hits",
    "x-timer",
    "x-amz-cf-pop",
    // Rate-limit counters are per instance: each server counts its own clients.
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit",
    // Hop-by-hop: how this connection is managed (a server closes after N requests), not
    // what was answered.
    "connection",
    "keep-alive",
    // Framing: chunked or not depends on buffering, and the body is compared decoded.
    "transfer-encoding",
    // The length is compared with the body itself, where the verdict can say where the
    // bodies part instead of stopping at the header.
    "content-length",
];

// ---------------------------------------------------------------------------------------
// The body hash

/// How many bytes [`BodyHasher`] hands SipHash per call.
const HASH_BLOCK: usize = 256;

/// The streaming hash of a body: SipHash-1-3 with fixed keys (std's `DefaultHasher::new()`),
/// deterministic within a build, which is all a comparison in one process needs.
///
/// std's `Hasher` promises the same hash only for the same sequence of `write` calls, not
/// for the same bytes split differently. So SipHash is fed whole blocks of
/// [`HASH_BLOCK`] bytes, the tail kept here until it fills: however the body arrives, the
/// calls are the same, and so is the hash. (FNV-1a, split-proof byte by byte, measured
/// 0.7 GB/s against 2.5 GB/s for this on the same machine.) A collision could only hide a
/// difference from a report, never change traffic, so a keyed hash is not needed.
#[derive(Clone, Debug)]
struct BodyHasher {
    sip: DefaultHasher,
    block: [u8; HASH_BLOCK],
    filled: usize,
}

impl BodyHasher {
    fn new() -> BodyHasher {
        BodyHasher {
            sip: DefaultHasher::new(),
            block: [0; HASH_BLOCK],
            filled: 0,
        }
    }

    fn write(&mut self, mut bytes: &[u8]) {
        if self.filled > 0 {
            let take = (HASH_BLOCK - self.filled).min(bytes.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < HASH_BLOCK {
                return;
            }
            self.sip.write(&self.block);
            self.filled = 0;
        }
        let mut blocks = bytes.chunks_exact(HASH_BLOCK);
        for block in &mut blocks {
            self.sip.write(block);
        }
        let tail = blocks.remainder();
        self.block[..tail.len()].copy_from_slice(tail);
        self.filled = tail.len();
    }

    fn finish(&self) -> u64 {
        let mut sip = self.sip.clone();
        sip.write(&self.block[..self.filled]);
        sip.finish()
    }
}

// ---------------------------------------------------------------------------------------
// The digest of one response

/// What one HTTP response leaves behind for a comparison, built while it streams.
///
/// The caller (the HTTP framing) adds the headers, then the decoded body in pieces of any
/// size (chunk framing already removed). Beyond `max_body` bytes only the length and the
/// hash grow: the kept copy never holds (or allocates) more than `max_body` bytes. The
/// headers kept are the ones the caller parsed, so its header-block limit bounds them.
#[derive(Clone)]
pub struct ResponseDigest {
    status: u16,
    /// Names lower-cased, values trimmed of surrounding whitespace, in arrival order.
    headers: Vec<(String, Vec<u8>)>,
    body_len: u64,
    /// Boxed: its block buffer would triple the size of a digest moved by value.
    body_hash: Box<BodyHasher>,
    /// The body's first `max_body` bytes; its capacity never exceeds `max_body`.
    kept: Vec<u8>,
    max_body: usize,
}

impl ResponseDigest {
    /// A digest of a response with this status, keeping at most `max_body` body bytes.
    pub fn new(status: u16, max_body: usize) -> ResponseDigest {
        ResponseDigest {
            status,
            headers: Vec::new(),
            body_len: 0,
            body_hash: Box::new(BodyHasher::new()),
            kept: Vec::new(),
            max_body,
        }
    }

    /// Adds a header (the name is lower-cased; order is kept, repeats too).
    pub fn add_header(&mut self, name: &str, value: &[u8]) {
        self.headers
            .push((name.to_ascii_lowercase(), value.trim_ascii().to_vec()));
    }

    /// Adds the next piece of the decoded body.
    pub fn add_body(&mut self, piece: &[u8]) {
        self.body_len += piece.len() as u64;
        self.body_hash.write(piece);
        let take = self
            .max_body
            .saturating_sub(self.kept.len())
            .min(piece.len());
        if take == 0 {
            return;
        }
        let needed = self.kept.len() + take;
        if needed > self.kept.capacity() {
            // Grow by doubling like Vec would, but never past max_body.
            let grown = self
                .kept
                .capacity()
                .saturating_mul(2)
                .max(needed)
                .min(self.max_body);
            self.kept.reserve_exact(grown - self.kept.len());
        }
        self.kept.extend_from_slice(&piece[..take]);
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers in arrival order: lower-cased name, value bytes.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The first value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The whole body's length, however much of it was kept.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The hash of the whole body (SipHash-1-3 with fixed keys: equal bodies hash
    /// equal within one build, however they were split).
    pub fn body_hash(&self) -> u64 {
        self.body_hash.finish()
    }

    /// The body's first bytes, at most `max_body` of them.
    pub fn kept_body(&self) -> &[u8] {
        &self.kept
    }

    /// Whether the body was longer than what was kept.
    pub fn is_body_truncated(&self) -> bool {
        self.body_len > self.kept.len() as u64
    }

    /// Heap bytes the kept body holds (its capacity): never above `max_body`.
    pub fn kept_capacity(&self) -> usize {
        self.kept.capacity()
    }
}

impl fmt::Debug for ResponseDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseDigest")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body_len)
            .field("body_hash", &format_args!("{:016x}", self.body_hash()))
            .field("kept", &self.kept.len())
            .field("max_body", &self.max_body)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// JSON paths: `$.items[3].price`, `$["odd key"]`, `$.items[*].ts`

/// One step of a path pattern (`--compare-ignore-json`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternStep {
    Key(String),
    Index(usize),
    /// `[*]`: any array index.
    AnyIndex,
}

/// A parsed `--compare-ignore-json` pattern. It ignores the value at its path and
/// everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JsonPattern(Vec<PatternStep>);

/// One step of a concrete path while walking two JSON documents.
#[derive(Debug, Clone, Copy)]
enum Step<'v> {
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
    fn parse(text: &str) -> Result<JsonPattern, JsonPathError> {
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
    fn matches(&self, path: &[Step<'_>]) -> bool {
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
fn closing_quote(bytes: &[u8], open: usize) -> Option<usize> {
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
fn push_step(out: &mut String, step: Step<'_>) {
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

fn render_path(path: &[Step<'_>]) -> String {
    let mut out = String::from("$");
    for &step in path {
        push_step(&mut out, step);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Rules

/// What a comparison ignores and how much body it keeps: the `--compare-*` flags.
#[derive(Debug, Clone)]
pub struct Rules {
    max_body: usize,
    /// Lower-cased names.
    ignored_headers: BTreeSet<String>,
    ignored_json: Vec<JsonPattern>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            max_body: DEFAULT_MAX_BODY,
            ignored_headers: DEFAULT_IGNORED_HEADERS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            ignored_json: Vec::new(),
        }
    }
}

impl Rules {
    /// The defaults: 1 MiB of body kept, [`DEFAULT_IGNORED_HEADERS`] ignored, no JSON path
    /// ignored.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Keeps the first `bytes` of each body (`--compare-max-body`) for JSON comparison and
    /// excerpts; longer bodies are compared past it by hash and length.
    pub fn max_body(mut self, bytes: usize) -> Rules {
        self.max_body = bytes;
        self
    }

    /// Also ignores header `name`, in any case (`--compare-ignore-header`).
    pub fn ignore_header(mut self, name: &str) -> Rules {
        self.ignored_headers
            .insert(name.trim().to_ascii_lowercase());
        self
    }

    /// Stops ignoring the [`DEFAULT_IGNORED_HEADERS`] (and any added so far).
    pub fn clear_ignored_headers(mut self) -> Rules {
        self.ignored_headers.clear();
        self
    }

    /// Also ignores the JSON value at `path` and everything under it
    /// (`--compare-ignore-json`): `$.a.b[2]`, `[*]` for any array index, `["odd key"]`
    /// for a key that is not letters, digits, `_` and `-`.
    pub fn ignore_json(mut self, path: &str) -> Result<Rules, JsonPathError> {
        self.ignored_json.push(JsonPattern::parse(path)?);
        Ok(self)
    }

    /// How many body bytes a digest made by [`Rules::digest`] keeps.
    pub fn body_limit(&self) -> usize {
        self.max_body
    }

    /// Whether header `name` (any case) is left out of comparisons.
    pub fn ignores_header(&self, name: &str) -> bool {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.ignored_headers.contains(&name.to_ascii_lowercase())
        } else {
            self.ignored_headers.contains(name)
        }
    }

    /// A new digest of a response with `status` that keeps [`Rules::body_limit`] bytes.
    pub fn digest(&self, status: u16) -> ResponseDigest {
        ResponseDigest::new(status, self.max_body)
    }

    /// Classifies what the shadow answered against what the primary answered.
    ///
    /// `shadow` is the shadow's digest, or why it has none. With a `reference` (a second
    /// copy of production that answered the same request), differences that also show
    /// between primary and reference are [`Verdict::Noise`]; with `None`, only the rules
    /// cancel noise.
    pub fn classify(
        &self,
        primary: &ResponseDigest,
        shadow: Result<&ResponseDigest, &ShadowFailure>,
        reference: Option<&ResponseDigest>,
    ) -> Verdict {
        let shadow = match shadow {
            Ok(digest) => digest,
            Err(failure) => return Verdict::ShadowFailed(failure.clone()),
        };
        let mut noise = None;

        if primary.status != shadow.status {
            let difference = Difference::Status {
                primary: primary.status,
                shadow: shadow.status,
            };
            if reference.is_some_and(|r| r.status != primary.status) {
                noise.get_or_insert(difference);
            } else {
                return Verdict::Differs(difference);
            }
        }

        let primary_headers = self.grouped_headers(primary);
        let shadow_headers = self.grouped_headers(shadow);
        let reference_headers = OnceCell::new();
        for (name, p, s) in header_differences(&primary_headers, &shadow_headers) {
            let noisy = reference.is_some_and(|r| {
                let r_headers = reference_headers.get_or_init(|| self.grouped_headers(r));
                p != group_value(r_headers, name)
            });
            let difference = Difference::Header {
                name: name.to_owned(),
                primary: p.map(shown_header_value),
                shadow: s.map(shown_header_value),
            };
            if noisy {
                noise.get_or_insert(difference);
            } else {
                return Verdict::Differs(difference);
            }
        }

        match self.body_difference(primary, shadow, reference) {
            BodyOutcome::Same => {}
            BodyOutcome::Differs(body) => return Verdict::Differs(Difference::Body(body)),
            BodyOutcome::Noise(body) => {
                noise.get_or_insert(Difference::Body(body));
            }
        }
        noise.map_or(Verdict::Same, Verdict::Noise)
    }

    /// The compared headers of `digest`: each name once, in first-seen order, repeated
    /// values joined with `, `.
    fn grouped_headers<'d>(&self, digest: &'d ResponseDigest) -> Vec<(&'d str, Vec<u8>)> {
        let mut groups: Vec<(&str, Vec<u8>)> = Vec::new();
        for (name, value) in &digest.headers {
            if self.ignored_headers.contains(name) {
                continue;
            }
            match groups.iter_mut().find(|(n, _)| *n == name.as_str()) {
                Some((_, joined)) => {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(value);
                }
                None => groups.push((name.as_str(), value.clone())),
            }
        }
        groups
    }

    fn body_difference(
        &self,
        primary: &ResponseDigest,
        shadow: &ResponseDigest,
        reference: Option<&ResponseDigest>,
    ) -> BodyOutcome {
        let raw = raw_difference(primary, shadow);
        if raw == RawDiff::Equal {
            return BodyOutcome::Same;
        }
        let primary_json = JsonBody::new(primary);
        let shadow_json = JsonBody::new(shadow);
        let noise = reference.map(|r| self.body_noise(&primary_json, r));

        let (Some(p), Some(s)) = (primary_json.value(), shadow_json.value()) else {
            let body = BodyDifference::raw(primary, shadow, raw, None);
            return match noise {
                Some(BodyNoise::Raw) => BodyOutcome::Noise(body),
                _ => BodyOutcome::Differs(body),
            };
        };

        let mut real = None;
        let mut noisy = None;
        walk_json(p, s, &mut Vec::new(), &self.ignored_json, &mut |path| {
            let is_noise = match &noise {
                None | Some(BodyNoise::None) => false,
                Some(BodyNoise::Raw | BodyNoise::JsonEverywhere) => true,
                Some(BodyNoise::JsonPaths(paths)) => covered_by(paths, path),
            };
            if is_noise {
                noisy.get_or_insert_with(|| render_path(path));
                Flow::Continue
            } else {
                real = Some(render_path(path));
                Flow::Stop
            }
        });
        match (real, noisy) {
            (Some(path), _) => {
                BodyOutcome::Differs(BodyDifference::raw(primary, shadow, raw, Some(path)))
            }
            (None, Some(path)) => {
                BodyOutcome::Noise(BodyDifference::raw(primary, shadow, raw, Some(path)))
            }
            // Different bytes, same JSON: key order, whitespace, ignored paths.
            (None, None) => BodyOutcome::Same,
        }
    }

    /// Where the primary's body differs from the reference's.
    fn body_noise(&self, primary: &JsonBody<'_>, reference: &ResponseDigest) -> BodyNoise {
        if raw_difference(primary.digest, reference) == RawDiff::Equal {
            return BodyNoise::None;
        }
        let reference_json = JsonBody::new(reference);
        let (Some(p), Some(r)) = (primary.value(), reference_json.value()) else {
            return BodyNoise::Raw;
        };
        let mut paths = HashSet::new();
        let mut everywhere = false;
        walk_json(p, r, &mut Vec::new(), &self.ignored_json, &mut |path| {
            if paths.len() == MAX_NOISE_PATHS {
                everywhere = true;
                return Flow::Stop;
            }
            paths.insert(render_path(path));
            Flow::Continue
        });
        if everywhere {
            BodyNoise::JsonEverywhere
        } else if paths.is_empty() {
            BodyNoise::None
        } else {
            BodyNoise::JsonPaths(paths)
        }
    }
}

/// Each compared header that differs: name, primary's value, shadow's value (`None`:
/// absent on that side). Primary's order first, then names only the shadow sent.
fn header_differences<'a, 'd>(
    primary: &'a [(&'d str, Vec<u8>)],
    shadow: &'a [(&'d str, Vec<u8>)],
) -> impl Iterator<Item = (&'d str, Option<&'a [u8]>, Option<&'a [u8]>)> {
    let from_primary = primary.iter().filter_map(move |(name, p)| {
        let s = group_value(shadow, name);
        (s != Some(p.as_slice())).then_some((*name, Some(p.as_slice()), s))
    });
    let only_shadow = shadow
        .iter()
        .filter(move |(name, _)| group_value(primary, name).is_none())
        .map(|(name, s)| (*name, None, Some(s.as_slice())));
    from_primary.chain(only_shadow)
}

fn group_value<'a>(groups: &'a [(&str, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    groups
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_slice())
}

/// A header value as the log shows it: lossy UTF-8, cut at [`HEADER_VALUE_SHOWN`] bytes.
fn shown_header_value(value: &[u8]) -> String {
    let cut = value.len().min(HEADER_VALUE_SHOWN);
    let mut text = String::from_utf8_lossy(&value[..cut]).into_owned();
    if cut < value.len() {
        text.push('…');
    }
    text
}

// ---------------------------------------------------------------------------------------
// Bodies

/// How two bodies compare as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawDiff {
    Equal,
    /// They first differ at this offset (one may end there).
    At(u64),
    /// The kept bytes agree; past them, hash or length differ.
    Hashed,
}

fn raw_difference(a: &ResponseDigest, b: &ResponseDigest) -> RawDiff {
    let common = a.kept.len().min(b.kept.len());
    if let Some(i) = first_mismatch(&a.kept[..common], &b.kept[..common]) {
        return RawDiff::At(i as u64);
    }
    let shorter = a.body_len.min(b.body_len);
    if common as u64 == shorter {
        // The shorter body was kept whole and is a prefix of the other.
        return if a.body_len == b.body_len {
            RawDiff::Equal
        } else {
            RawDiff::At(shorter)
        };
    }
    if a.body_len == b.body_len && a.body_hash() == b.body_hash() {
        RawDiff::Equal
    } else {
        RawDiff::Hashed
    }
}

/// The first index where `a` and `b` differ, over their common length.
fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    // Whole blocks compare with memcmp; only the block that differs is walked.
    const BLOCK: usize = 4096;
    let n = a.len().min(b.len());
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        if a[start..end] != b[start..end] {
            return a[start..end]
                .iter()
                .zip(&b[start..end])
                .position(|(x, y)| x != y)
                .map(|i| start + i);
        }
        start = end;
    }
    None
}

/// The bytes around `offset` of each kept body.
fn excerpt_at(primary: &[u8], shadow: &[u8], offset: u64) -> Excerpt {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .saturating_sub(EXCERPT_BEFORE);
    let window = |kept: &[u8]| {
        let from = start.min(kept.len());
        let to = start.saturating_add(EXCERPT_LEN).min(kept.len());
        String::from_utf8_lossy(&kept[from..to]).into_owned()
    };
    Excerpt {
        primary: window(primary),
        shadow: window(shadow),
    }
}

/// A body's JSON value, parsed at most once and only when the body is JSON and kept whole.
struct JsonBody<'d> {
    digest: &'d ResponseDigest,
    value: OnceCell<Option<Value>>,
}

impl<'d> JsonBody<'d> {
    fn new(digest: &'d ResponseDigest) -> JsonBody<'d> {
        JsonBody {
            digest,
            value: OnceCell::new(),
        }
    }

    fn value(&self) -> Option<&Value> {
        self.value
            .get_or_init(|| {
                let d = self.digest;
                let declared = d
                    .header("content-type")
                    .is_some_and(|v| v.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")));
                let looks = matches!(
                    d.kept.iter().find(|b| !b.is_ascii_whitespace()),
                    Some(b'{' | b'[')
                );
                // serde_json stops at 128 levels of nesting, so neither parsing nor the
                // recursive walk can exhaust the stack.
                (!d.is_body_truncated() && (declared || looks))
                    .then(|| serde_json::from_slice::<Value>(&d.kept).ok())
                    .flatten()
            })
            .as_ref()
    }
}

/// Where primary and reference bodies differ: what counts as noise in the shadow's body.
enum BodyNoise {
    None,
    /// Compared as bytes, and they differ: any byte difference of the shadow is noise.
    Raw,
    /// Compared as JSON; these paths (and what is under them) differ.
    JsonPaths(HashSet<String>),
    /// Compared as JSON, and they differ in more than [`MAX_NOISE_PATHS`] places.
    JsonEverywhere,
}

enum BodyOutcome {
    Same,
    Differs(BodyDifference),
    Noise(BodyDifference),
}

/// Whether `path`, or a value it is under, is among the noisy paths.
fn covered_by(noise: &HashSet<String>, path: &[Step<'_>]) -> bool {
    let mut text = String::from("$");
    if noise.contains(&text) {
        return true;
    }
    for &step in path {
        push_step(&mut text, step);
        if noise.contains(&text) {
            return true;
        }
    }
    false
}

enum Flow {
    Continue,
    Stop,
}

/// Walks two JSON values in a fixed order (object keys sorted, arrays by index) and calls
/// `found` with the path of each difference not under an ignored pattern: a value that
/// differs, a key on one side only, the first index one array has and the other lacks.
fn walk_json<'v>(
    a: &'v Value,
    b: &'v Value,
    path: &mut Vec<Step<'v>>,
    ignored: &[JsonPattern],
    found: &mut dyn FnMut(&[Step<'v>]) -> Flow,
) -> Flow {
    if ignored.iter().any(|p| p.matches(path)) {
        return Flow::Continue;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => walk_objects(x, y, path, ignored, found),
        (Value::Array(x), Value::Array(y)) => {
            for (i, (xv, yv)) in x.iter().zip(y).enumerate() {
                path.push(Step::Index(i));
                let flow = walk_json(xv, yv, path, ignored, found);
                path.pop();
                if let Flow::Stop = flow {
                    return Flow::Stop;
                }
            }
            if x.len() == y.len() {
                return Flow::Continue;
            }
            path.push(Step::Index(x.len().min(y.len())));
            let flow = report_unless_ignored(path, ignored, found);
            path.pop();
            flow
        }
        (Value::Number(x), Value::Number(y)) if numbers_equal(x, y) => Flow::Continue,
        _ if a == b => Flow::Continue,
        _ => found(path),
    }
}

fn walk_objects<'v>(
    x: &'v Map<String, Value>,
    y: &'v Map<String, Value>,
    path: &mut Vec<Step<'v>>,
    ignored: &[JsonPattern],
    found: &mut dyn FnMut(&[Step<'v>]) -> Flow,
) -> Flow {
    let mut keys: Vec<&'v str> = x.keys().chain(y.keys()).map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        path.push(Step::Key(key));
        let flow = match (x.get(key), y.get(key)) {
            (Some(xv), Some(yv)) => walk_json(xv, yv, path, ignored, found),
            _ => report_unless_ignored(path, ignored, found),
        };
        path.pop();
        if let Flow::Stop = flow {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

fn report_unless_ignored<'v>(
    path: &[Step<'v>],
    ignored: &[JsonPattern],
    found: &mut dyn FnMut(&[Step<'v>]) -> Flow,
) -> Flow {
    if ignored.iter().any(|p| p.matches(path)) {
        Flow::Continue
    } else {
        found(path)
    }
}

/// Numbers equal as numbers: integers exactly, anything with a fraction or exponent as f64
/// (`1` equals `1.0`, but two large integers that round to the same f64 do not).
fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    (a.is_f64() || b.is_f64()) && a.as_f64() == b.as_f64()
}

// ---------------------------------------------------------------------------------------
// Verdicts

/// Why a shadow has no response to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowFailure {
    /// No whole response in time (connect, inactivity or response timeout): `timeout`.
    Timeout,
    /// The shadow reset the connection: `reset`.
    Reset,
    /// The connect was refused: `refused`.
    Refused,
    /// The proxy dropped the shadow for falling behind (its buffer overflowed): `cut_off`.
    CutOff,
    /// The shadow closed before its response was complete: `incomplete`.
    Incomplete,
    /// What the shadow sent was not an HTTP response the framing could read:
    /// `unparseable`.
    Unparseable,
    /// Any other reason, as a short code (an [`UnbindReason::code`], say).
    Other(String),
}

impl ShadowFailure {
    /// The code the compare log writes: `timeout`, `reset`, `refused`, `cut_off`,
    /// `incomplete`, `unparseable`, or the [`ShadowFailure::Other`] code.
    pub fn code(&self) -> &str {
        match self {
            ShadowFailure::Timeout => "timeout",
            ShadowFailure::Reset => "reset",
            ShadowFailure::Refused => "refused",
            ShadowFailure::CutOff => "cut_off",
            ShadowFailure::Incomplete => "incomplete",
            ShadowFailure::Unparseable => "unparseable",
            ShadowFailure::Other(code) => code,
        }
    }

    /// The failure a log code stands for (the inverse of [`ShadowFailure::code`]).
    pub fn from_code(code: &str) -> ShadowFailure {
        match code {
            "timeout" => ShadowFailure::Timeout,
            "reset" => ShadowFailure::Reset,
            "refused" => ShadowFailure::Refused,
            "cut_off" => ShadowFailure::CutOff,
            "incomplete" => ShadowFailure::Incomplete,
            "unparseable" => ShadowFailure::Unparseable,
            other => ShadowFailure::Other(other.to_owned()),
        }
    }

    /// The failure of a shadow whose connection ended for `reason` before its response
    /// was whole. A cut-off shadow is [`ShadowFailure::CutOff`]: only the caller knows that.
    pub fn from_unbind(reason: &UnbindReason) -> ShadowFailure {
        match reason {
            UnbindReason::ConnectTimeout
            | UnbindReason::InactivityTimeout
            | UnbindReason::HalfCloseTimeout => ShadowFailure::Timeout,
            UnbindReason::Reset => ShadowFailure::Reset,
            UnbindReason::Refused => ShadowFailure::Refused,
            UnbindReason::PeerClosed => ShadowFailure::Incomplete,
            other => ShadowFailure::Other(other.code().to_owned()),
        }
    }
}

impl fmt::Display for ShadowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Bytes of each side around the first difference (up to [`EXCERPT_LEN`] each, lossy
/// UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// The primary's bytes.
    pub primary: String,
    /// The shadow's bytes.
    pub shadow: String,
}

/// How two bodies (or two TCP streams) differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDifference {
    /// The first differing byte, when known. `None` means both were longer than what was
    /// kept, agreed on it, and differ past it by hash or length ("hashed").
    pub offset: Option<u64>,
    /// The primary's whole length.
    pub primary_len: u64,
    /// The shadow's whole length.
    pub shadow_len: u64,
    /// Where the JSON values first differ, when both bodies were compared as JSON.
    pub json_path: Option<String>,
    /// The bytes around `offset`, when it is known.
    pub excerpt: Option<Excerpt>,
}

impl BodyDifference {
    fn raw(
        primary: &ResponseDigest,
        shadow: &ResponseDigest,
        raw: RawDiff,
        json_path: Option<String>,
    ) -> BodyDifference {
        let offset = match raw {
            RawDiff::At(offset) => Some(offset),
            RawDiff::Equal | RawDiff::Hashed => None,
        };
        BodyDifference {
            offset,
            primary_len: primary.body_len,
            shadow_len: shadow.body_len,
            json_path,
            excerpt: offset.map(|at| excerpt_at(&primary.kept, &shadow.kept, at)),
        }
    }

    /// Whether only hash and length could tell (no offset).
    pub fn is_hashed(&self) -> bool {
        self.offset.is_none()
    }
}

/// One difference between the primary's response and another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The status codes differ.
    Status {
        /// The primary's.
        primary: u16,
        /// The shadow's.
        shadow: u16,
    },
    /// The first compared header that differs (values as shown in the log: lossy UTF-8,
    /// repeats joined with `, `, cut at 256 bytes; `None`: not sent by that side).
    Header {
        /// Its lower-cased name.
        name: String,
        /// The primary's value.
        primary: Option<String>,
        /// The shadow's value.
        shadow: Option<String>,
    },
    /// The bodies differ.
    Body(BodyDifference),
}

/// Which part of a response a [`Difference`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DifferenceKind {
    /// `status`.
    Status,
    /// `header`.
    Header,
    /// `body`.
    Body,
}

impl DifferenceKind {
    /// Its name in the compare log.
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Status => "status",
            DifferenceKind::Header => "header",
            DifferenceKind::Body => "body",
        }
    }

    fn from_name(name: &str) -> Option<DifferenceKind> {
        match name {
            "status" => Some(DifferenceKind::Status),
            "header" => Some(DifferenceKind::Header),
            "body" => Some(DifferenceKind::Body),
            _ => None,
        }
    }
}

impl Difference {
    /// Which part of the response differs.
    pub fn kind(&self) -> DifferenceKind {
        match self {
            Difference::Status { .. } => DifferenceKind::Status,
            Difference::Header { .. } => DifferenceKind::Header,
            Difference::Body(_) => DifferenceKind::Body,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Status { primary, shadow } => write!(f, "status {primary} vs {shadow}"),
            Difference::Header {
                name,
                primary,
                shadow,
            } => {
                let side =
                    |v: &Option<String>| v.as_ref().map_or("(absent)".into(), |v| format!("{v:?}"));
                write!(f, "header {name}: {} vs {}", side(primary), side(shadow))
            }
            Difference::Body(body) => {
                match body.offset {
                    Some(at) => write!(f, "body differs at byte {at}")?,
                    None => write!(
                        f,
                        "body differs past the kept bytes (compared by hash and length, no offset)"
                    )?,
                }
                if let Some(path) = &body.json_path {
                    write!(f, ", JSON at {path}")?;
                }
                write!(f, " ({} vs {} bytes)", body.primary_len, body.shadow_len)
            }
        }
    }
}

/// What a comparison concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing compared differs.
    Same,
    /// A real difference: the first one (status, then headers, then body).
    Differs(Difference),
    /// Every difference also shows between primary and reference; the first of them.
    Noise(Difference),
    /// The shadow had no response to compare.
    ShadowFailed(ShadowFailure),
}

/// The verdict's name in the compare log and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerdictKind {
    /// `same`.
    Same,
    /// `status`.
    Status,
    /// `header`.
    Header,
    /// `body`.
    Body,
    /// `shadow_error`.
    ShadowError,
    /// `noise`.
    Noise,
}

impl VerdictKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [VerdictKind; 6] = [
        VerdictKind::Same,
        VerdictKind::Status,
        VerdictKind::Header,
        VerdictKind::Body,
        VerdictKind::ShadowError,
        VerdictKind::Noise,
    ];

    /// Its name in the compare log (`"verdict"`) and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Same => "same",
            VerdictKind::Status => "status",
            VerdictKind::Header => "header",
            VerdictKind::Body => "body",
            VerdictKind::ShadowError => "shadow_error",
            VerdictKind::Noise => "noise",
        }
    }

    fn from_name(name: &str) -> Option<VerdictKind> {
        VerdictKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Verdict {
    /// Its kind, as logged and counted.
    pub fn kind(&self) -> VerdictKind {
        match self {
            Verdict::Same => VerdictKind::Same,
            Verdict::Differs(d) => match d.kind() {
                DifferenceKind::Status => VerdictKind::Status,
                DifferenceKind::Header => VerdictKind::Header,
                DifferenceKind::Body => VerdictKind::Body,
            },
            Verdict::Noise(_) => VerdictKind::Noise,
            Verdict::ShadowFailed(_) => VerdictKind::ShadowError,
        }
    }

    /// The difference a `Differs` or `Noise` verdict is about.
    pub fn difference(&self) -> Option<&Difference> {
        match self {
            Verdict::Differs(d) | Verdict::Noise(d) => Some(d),
            Verdict::Same | Verdict::ShadowFailed(_) => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Same => f.write_str("same"),
            Verdict::Differs(d) => write!(f, "{d}"),
            Verdict::Noise(d) => write!(f, "noise: {d}"),
            Verdict::ShadowFailed(failure) => write!(f, "shadow failed: {failure}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plain TCP comparison

/// Which side sent bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    Primary,
    Shadow,
}

enum TcpState {
    /// Equal so far over `agreed` bytes; `lead` holds what the side `ahead` sent past them.
    Matching {
        agreed: u64,
        ahead: Sender,
        lead: VecDeque<u8>,
        /// The last few agreed bytes, for an excerpt's "before".
        recent: Vec<u8>,
    },
    /// They differ at `offset`; nothing more is kept.
    Differ { offset: u64, excerpt: Excerpt },
    /// The lead outgrew the cap: each side's bytes past the agreed prefix, hashed.
    Hashing {
        primary: Box<BodyHasher>,
        shadow: Box<BodyHasher>,
    },
}

/// Compares the bytes the primary sent back on a client connection with the bytes the
/// shadow sent back, as each side's bytes arrive at its own pace.
///
/// Only the unmatched lead of the faster side is kept, up to a cap; past it the comparison
/// hashes both sides instead and can then say "same" or "differs" but no offset.
pub struct TcpComparison {
    cap: usize,
    primary_len: u64,
    shadow_len: u64,
    state: TcpState,
}

impl Default for TcpComparison {
    fn default() -> TcpComparison {
        TcpComparison::with_cap(DEFAULT_TCP_LEAD)
    }
}

impl TcpComparison {
    /// A comparison that buffers at most [`DEFAULT_TCP_LEAD`] bytes.
    pub fn new() -> TcpComparison {
        TcpComparison::default()
    }

    /// A comparison that buffers at most `cap` bytes of the side ahead.
    pub fn with_cap(cap: usize) -> TcpComparison {
        TcpComparison {
            cap,
            primary_len: 0,
            shadow_len: 0,
            state: TcpState::Matching {
                agreed: 0,
                ahead: Sender::Primary,
                lead: VecDeque::new(),
                recent: Vec::new(),
            },
        }
    }

    /// The primary sent these bytes back.
    pub fn primary_sent(&mut self, bytes: &[u8]) {
        self.primary_len += bytes.len() as u64;
        self.feed(Sender::Primary, bytes);
    }

    /// The shadow sent these bytes back.
    pub fn shadow_sent(&mut self, bytes: &[u8]) {
        self.shadow_len += bytes.len() as u64;
        self.feed(Sender::Shadow, bytes);
    }

    /// Bytes the primary sent so far.
    pub fn primary_len(&self) -> u64 {
        self.primary_len
    }

    /// Bytes the shadow sent so far.
    pub fn shadow_len(&self) -> u64 {
        self.shadow_len
    }

    /// Bytes buffered now (the lead of the side ahead): never more than the cap.
    pub fn buffered(&self) -> usize {
        match &self.state {
            TcpState::Matching { lead, .. } => lead.len(),
            TcpState::Differ { .. } | TcpState::Hashing { .. } => 0,
        }
    }

    /// The verdict if both sides ended now: [`Verdict::Same`], or [`Verdict::Differs`] with
    /// a [`Difference::Body`] (offset `None` once the comparison fell back to hashes).
    pub fn verdict(&self) -> Verdict {
        let (offset, excerpt) = match &self.state {
            TcpState::Differ { offset, excerpt } => (Some(*offset), Some(excerpt.clone())),
            TcpState::Matching {
                agreed,
                ahead,
                lead,
                recent,
            } => {
                if lead.is_empty() {
                    return Verdict::Same;
                }
                // One side stopped where the other went on.
                let mut leader = recent.clone();
                leader.extend(lead.iter().take(EXCERPT_LEN - EXCERPT_BEFORE));
                let excerpt = excerpt_for(*ahead, &leader, recent);
                (Some(*agreed), Some(excerpt))
            }
            TcpState::Hashing { primary, shadow } => {
                if self.primary_len == self.shadow_len && primary.finish() == shadow.finish() {
                    return Verdict::Same;
                }
                (None, None)
            }
        };
        Verdict::Differs(Difference::Body(BodyDifference {
            offset,
            primary_len: self.primary_len,
            shadow_len: self.shadow_len,
            json_path: None,
            excerpt,
        }))
    }

    fn feed(&mut self, from: Sender, bytes: &[u8]) {
        let next = match &mut self.state {
            TcpState::Differ { .. } => None,
            TcpState::Hashing { primary, shadow } => {
                match from {
                    Sender::Primary => primary.write(bytes),
                    Sender::Shadow => shadow.write(bytes),
                }
                None
            }
            TcpState::Matching {
                agreed,
                ahead,
                lead,
                recent,
            } => 'matching: {
                let mut rest = bytes;
                if !lead.is_empty() && *ahead != from {
                    // The side behind catches up: check its bytes against the lead.
                    let n = rest.len().min(lead.len());
                    if let Some(i) = lead_mismatch(lead, &rest[..n]) {
                        let mut before = recent.clone();
                        remember(&mut before, &rest[..i]);
                        let mut leader = before.clone();
                        leader.extend(lead.iter().skip(i).take(EXCERPT_LEN - EXCERPT_BEFORE));
                        let mut follower = before;
                        let after = (i + EXCERPT_LEN - EXCERPT_BEFORE).min(rest.len());
                        follower.extend_from_slice(&rest[i..after]);
                        let excerpt = excerpt_for(*ahead, &leader, &follower);
                        break 'matching Some(TcpState::Differ {
                            offset: *agreed + i as u64,
                            excerpt,
                        });
                    }
                    remember(recent, &rest[..n]);
                    lead.drain(..n);
                    *agreed += n as u64;
                    rest = &rest[n..];
                }
                if rest.is_empty() {
                    None
                } else if lead.len() + rest.len() <= self.cap {
                    *ahead = from;
                    lead.extend(rest);
                    None
                } else {
                    // Too far ahead to buffer: from here on, hash what each side sends past
                    // the agreed prefix.
                    let mut leader = Box::new(BodyHasher::new());
                    let (front, back) = lead.as_slices();
                    leader.write(front);
                    leader.write(back);
                    leader.write(rest);
                    let (primary, shadow) = match from {
                        Sender::Primary => (leader, Box::new(BodyHasher::new())),
                        Sender::Shadow => (Box::new(BodyHasher::new()), leader),
                    };
                    Some(TcpState::Hashing { primary, shadow })
                }
            }
        };
        if let Some(state) = next {
            self.state = state;
        }
    }
}

/// The first index where `bytes` differs from the start of `lead` (`bytes` is no longer).
fn lead_mismatch(lead: &VecDeque<u8>, bytes: &[u8]) -> Option<usize> {
    let (front, back) = lead.as_slices();
    let k = front.len().min(bytes.len());
    if let Some(i) = first_mismatch(&front[..k], &bytes[..k]) {
        return Some(i);
    }
    let tail = &bytes[k..];
    first_mismatch(&back[..tail.len()], tail).map(|i| k + i)
}

/// Keeps the last [`EXCERPT_BEFORE`] agreed bytes in `recent`.
fn remember(recent: &mut Vec<u8>, agreed: &[u8]) {
    recent.extend_from_slice(&agreed[agreed.len().saturating_sub(EXCERPT_BEFORE)..]);
    let excess = recent.len().saturating_sub(EXCERPT_BEFORE);
    recent.drain(..excess);
}

fn excerpt_for(leader: Sender, leader_bytes: &[u8], follower_bytes: &[u8]) -> Excerpt {
    let (primary, shadow) = match leader {
        Sender::Primary => (leader_bytes, follower_bytes),
        Sender::Shadow => (follower_bytes, leader_bytes),
    };
    Excerpt {
        primary: String::from_utf8_lossy(primary).into_owned(),
        shadow: String::from_utf8_lossy(shadow).into_owned(),
    }
}

impl fmt::Debug for TcpComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            TcpState::Matching { agreed, .. } => format!("matching over {agreed} bytes"),
            TcpState::Differ { offset, .. } => format!("differ at {offset}"),
            TcpState::Hashing { .. } => "hashing".to_owned(),
        };
        f.debug_struct("TcpComparison")
            .field("cap", &self.cap)
            .field("primary_len", &self.primary_len)
            .field("shadow_len", &self.shadow_len)
            .field("buffered", &self.buffered())
            .field("state", &state)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// The compare-log line

/// What was exchanged: one HTTP request, or a whole TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// `"mode":"http"`, with the request.
    Http {
        /// The request's index within its client session, from 1.
        request: u64,
        /// The request method.
        method: String,
        /// The request target as sent (`/users/42?x=1`).
        path: String,
    },
    /// `"mode":"tcp"`: the bytes of one client connection.
    Tcp,
}

/// One side's numbers in the compare log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideSummary {
    /// The HTTP status (`None` in TCP mode, or for a shadow that failed).
    pub status: Option<u16>,
    /// From sending the request (or the first byte) to the whole answer, or to the failure.
    /// The log keeps microseconds.
    pub elapsed: Duration,
    /// Body bytes (HTTP) or bytes sent back (TCP).
    pub bytes: u64,
}

impl SideSummary {
    /// The numbers of an HTTP response.
    pub fn of_response(digest: &ResponseDigest, elapsed: Duration) -> SideSummary {
        SideSummary {
            status: Some(digest.status),
            elapsed,
            bytes: digest.body_len,
        }
    }

    /// The numbers of a side with no status: TCP mode, or a shadow that failed.
    pub fn of_bytes(bytes: u64, elapsed: Duration) -> SideSummary {
        SideSummary {
            status: None,
            elapsed,
            bytes,
        }
    }
}

/// One line of the `--compare-log`: one finished comparison.
///
/// ```text
/// {"time":"2026-11-30T15:00:00.123Z","session":12,"request":3,"mode":"http",
///  "method":"GET","path":"/users/42?x=1","shadow_name":"duplex_0","verdict":"body",
///  "noise_of":null,"primary":{"status":200,"ms":1.25,"bytes":512},
///  "shadow":{"status":200,"ms":3.5,"bytes":498,"error":null},
///  "diff":{"offset":17,"primary_len":512,"shadow_len":498,"json_path":"$.items[3].price","hashed":false},
///  "excerpt":{"primary":"…","shadow":"…"}}
/// ```
///
/// (on one line). In TCP mode `request`, `method`, `path` and both `status` fields are
/// absent. `diff` is `{"status":[p,s]}`, `{"header":name,"primary":v|null,"shadow":v|null}`,
/// the body form above (`offset` null and `hashed` true when only hashes could tell),
/// `{"error":code}`, or null for `same`; for `noise` it is the noisy difference and
/// `noise_of` its kind. `excerpt` is set for body differences with an offset.
///
/// The shadow's name is `shadow_name`, not `shadow`: `shadow` is its numbers object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareLine {
    /// When the comparison finished (written as RFC 3339 UTC, milliseconds).
    pub time: SystemTime,
    /// The client session's id.
    pub session: u64,
    /// The request, or TCP.
    pub exchange: Exchange,
    /// The shadow's name.
    pub shadow_name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The primary's numbers.
    pub primary: SideSummary,
    /// The shadow's numbers.
    pub shadow: SideSummary,
}

/// A compare-log line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError(String);

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compare log line: {}", self.0)
    }
}

impl std::error::Error for LineError {}

impl CompareLine {
    /// The line as JSON, fields in the documented order, without the newline.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(320);
        out.push_str("{\"time\":");
        push_json_string(&mut out, &rfc3339(self.time));
        let _ = write!(out, ",\"session\":{}", self.session);
        let http = match &self.exchange {
            Exchange::Http {
                request,
                method,
                path,
            } => {
                let _ = write!(out, ",\"request\":{request},\"mode\":\"http\",\"method\":");
                push_json_string(&mut out, method);
                out.push_str(",\"path\":");
                push_json_string(&mut out, path);
                true
            }
            Exchange::Tcp => {
                out.push_str(",\"mode\":\"tcp\"");
                false
            }
        };
        out.push_str(",\"shadow_name\":");
        push_json_string(&mut out, &self.shadow_name);
        let _ = write!(out, ",\"verdict\":\"{}\"", self.verdict.kind().as_str());
        match &self.verdict {
            Verdict::Noise(d) => {
                let _ = write!(out, ",\"noise_of\":\"{}\"", d.kind().as_str());
            }
            _ => out.push_str(",\"noise_of\":null"),
        }
        out.push_str(",\"primary\":");
        push_side(&mut out, &self.primary, http);
        out.push('}');
        out.push_str(",\"shadow\":");
        push_side(&mut out, &self.shadow, http);
        out.push_str(",\"error\":");
        match &self.verdict {
            Verdict::ShadowFailed(failure) => push_json_string(&mut out, failure.code()),
            _ => out.push_str("null"),
        }
        out.push('}');
        out.push_str(",\"diff\":");
        push_diff(&mut out, &self.verdict);
        out.push_str(",\"excerpt\":");
        match self.verdict.difference() {
            Some(Difference::Body(BodyDifference {
                excerpt: Some(excerpt),
                ..
            })) => {
                out.push_str("{\"primary\":");
                push_json_string(&mut out, &excerpt.primary);
                out.push_str(",\"shadow\":");
                push_json_string(&mut out, &excerpt.shadow);
                out.push('}');
            }
            _ => out.push_str("null"),
        }
        out.push('}');
        out
    }

    /// Reads a line [`CompareLine::render`] wrote. Unknown fields are ignored, so older
    /// readers survive newer lines.
    pub fn parse(line: &str) -> Result<CompareLine, LineError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| LineError(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| LineError("not a JSON object".into()))?;
        let time_text = str_field(obj, "time")?;
        let time = parse_rfc3339(time_text)
            .ok_or_else(|| LineError(format!("`time` is not RFC 3339 UTC: {time_text}")))?;
        let session = u64_field(obj, "session")?;
        let http = match str_field(obj, "mode")? {
            "http" => true,
            "tcp" => false,
            other => return Err(LineError(format!("unknown mode `{other}`"))),
        };
        let exchange = if http {
            Exchange::Http {
                request: u64_field(obj, "request")?,
                method: str_field(obj, "method")?.to_owned(),
                path: str_field(obj, "path")?.to_owned(),
            }
        } else {
            Exchange::Tcp
        };
        let shadow_name = str_field(obj, "shadow_name")?.to_owned();
        let primary = parse_side(field(obj, "primary")?, "primary", http)?;
        let shadow_value = field(obj, "shadow")?;
        let shadow = parse_side(shadow_value, "shadow", http)?;
        let verdict_name = str_field(obj, "verdict")?;
        let kind = VerdictKind::from_name(verdict_name)
            .ok_or_else(|| LineError(format!("unknown verdict `{verdict_name}`")))?;
        let diff = obj.get("diff").filter(|v| !v.is_null());
        let excerpt = obj.get("excerpt").filter(|v| !v.is_null());
        let difference = |kind| parse_difference(kind, diff, excerpt);
        let verdict = match kind {
            VerdictKind::Same => Verdict::Same,
            VerdictKind::Status => Verdict::Differs(difference(DifferenceKind::Status)?),
            VerdictKind::Header => Verdict::Differs(difference(DifferenceKind::Header)?),
            VerdictKind::Body => Verdict::Differs(difference(DifferenceKind::Body)?),
            VerdictKind::Noise => {
                let of = str_field(obj, "noise_of")?;
                let of = DifferenceKind::from_name(of)
                    .ok_or_else(|| LineError(format!("unknown noise_of `{of}`")))?;
                Verdict::Noise(difference(of)?)
            }
            VerdictKind::ShadowError => {
                let code = diff
                    .and_then(|d| d.get("error"))
                    .or_else(|| shadow_value.get("error"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| LineError("shadow_error without an error code".into()))?;
                Verdict::ShadowFailed(ShadowFailure::from_code(code))
            }
        };
        Ok(CompareLine {
            time,
            session,
            exchange,
            shadow_name,
            verdict,
            primary,
            shadow,
        })
    }
}

/// Appends `text` as a JSON string literal (serde_json does the escaping).
fn push_json_string(out: &mut String, text: &str) {
    let _ = write!(out, "{}", Value::from(text));
}

/// Appends a side's object, open: the caller adds fields and the `}`.
fn push_side(out: &mut String, side: &SideSummary, http: bool) {
    out.push('{');
    if http {
        match side.status {
            Some(status) => {
                let _ = write!(out, "\"status\":{status},");
            }
            None => out.push_str("\"status\":null,"),
        }
    }
    let ms = side.elapsed.as_micros() as f64 / 1000.0;
    let _ = write!(out, "\"ms\":{},\"bytes\":{}", Value::from(ms), side.bytes);
}

fn push_diff(out: &mut String, verdict: &Verdict) {
    match verdict {
        Verdict::Same => out.push_str("null"),
        Verdict::ShadowFailed(failure) => {
            out.push_str("{\"error\":");
            push_json_string(out, failure.code());
            out.push('}');
        }
        Verdict::Differs(d) | Verdict::Noise(d) => match d {
            Difference::Status { primary, shadow } => {
                let _ = write!(out, "{{\"status\":[{primary},{shadow}]}}");
            }
            Difference::Header {
                name,
                primary,
                shadow,
            } => {
                out.push_str("{\"header\":");
                push_json_string(out, name);
                for (key, value) in [("primary", primary), ("shadow", shadow)] {
                    let _ = write!(out, ",\"{key}\":");
                    match value {
                        Some(v) => push_json_string(out, v),
                        None => out.push_str("null"),
                    }
                }
                out.push('}');
            }
            Difference::Body(body) => {
                out.push_str("{\"offset\":");
                match body.offset {
                    Some(offset) => {
                        let _ = write!(out, "{offset}");
                    }
                    None => out.push_str("null"),
                }
                let _ = write!(
                    out,
                    ",\"primary_len\":{},\"shadow_len\":{},\"json_path\":",
                    body.primary_len, body.shadow_len
                );
                match &body.json_path {
                    Some(path) => push_json_string(out, path),
                    None => out.push_str("null"),
                }
                let _ = write!(out, ",\"hashed\":{}}}", body.is_hashed());
            }
        },
    }
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, LineError> {
    obj.get(name)
        .ok_or_else(|| LineError(format!("no `{name}`")))
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, LineError> {
    field(obj, name)?
        .as_str()
        .ok_or_else(|| LineError(format!("`{name}` is not a string")))
}

fn u64_field(obj: &Map<String, Value>, name: &str) -> Result<u64, LineError> {
    field(obj, name)?
        .as_u64()
        .ok_or_else(|| LineError(format!("`{name}` is not a count")))
}

fn opt_str_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, LineError> {
    match field(obj, name)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(LineError(format!("`{name}` is neither a string nor null"))),
    }
}

fn status_value(value: &Value, name: &str) -> Result<u16, LineError> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| LineError(format!("`{name}` is not a status code")))
}

fn parse_side(value: &Value, name: &str, http: bool) -> Result<SideSummary, LineError> {
    let obj = value
        .as_object()
        .ok_or_else(|| LineError(format!("`{name}` is not an object")))?;
    let status = match obj.get("status") {
        Some(Value::Null) | None if !http => None,
        Some(Value::Null) => None,
        Some(v) => Some(status_value(v, "status")?),
        None => return Err(LineError(format!("`{name}` has no `status`"))),
    };
    let ms = field(obj, "ms")?
        .as_f64()
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .ok_or_else(|| LineError(format!("`{name}.ms` is not a duration")))?;
    Ok(SideSummary {
        status,
        elapsed: Duration::from_micros((ms * 1000.0).round() as u64),
        bytes: u64_field(obj, "bytes")?,
    })
}

fn parse_difference(
    kind: DifferenceKind,
    diff: Option<&Value>,
    excerpt: Option<&Value>,
) -> Result<Difference, LineError> {
    let obj = diff
        .and_then(Value::as_object)
        .ok_or_else(|| LineError(format!("a {} verdict needs a `diff` object", kind.as_str())))?;
    match kind {
        DifferenceKind::Status => {
            let pair = field(obj, "status")?
                .as_array()
                .filter(|pair| pair.len() == 2)
                .ok_or_else(|| LineError("`diff.status` is not [primary, shadow]".into()))?;
            Ok(Difference::Status {
                primary: status_value(&pair[0], "diff.status")?,
                shadow: status_value(&pair[1], "diff.status")?,
            })
        }
        DifferenceKind::Header => Ok(Difference::Header {
            name: str_field(obj, "header")?.to_owned(),
            primary: opt_str_field(obj, "primary")?,
            shadow: opt_str_field(obj, "shadow")?,
        }),
        DifferenceKind::Body => {
            let offset = match field(obj, "offset")? {
                Value::Null => None,
                v => Some(
                    v.as_u64()
                        .ok_or_else(|| LineError("`diff.offset` is not a count".into()))?,
                ),
            };
            let excerpt = match excerpt {
                Some(v) => {
                    let e = v
                        .as_object()
                        .ok_or_else(|| LineError("`excerpt` is not an object".into()))?;
                    Some(Excerpt {
                        primary: str_field(e, "primary")?.to_owned(),
                        shadow: str_field(e, "shadow")?.to_owned(),
                    })
                }
                None => None,
            };
            Ok(Difference::Body(BodyDifference {
                offset,
                primary_len: u64_field(obj, "primary_len")?,
                shadow_len: u64_field(obj, "shadow_len")?,
                json_path: opt_str_field(obj, "json_path")?,
                excerpt,
            }))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Counters

/// How many comparisons ended in each verdict, for `/metrics`. Shareable across threads
/// (wrap it in an `Arc`); relaxed atomics, since the counts never decide anything.
#[derive(Debug, Default)]
pub struct VerdictCounts {
    by_kind: [AtomicU64; 6],
}

impl VerdictCounts {
    /// All counts at zero.
    pub fn new() -> VerdictCounts {
        VerdictCounts::default()
    }

    /// Counts one comparison that ended in `verdict`.
    pub fn count(&self, verdict: &Verdict) {
        self.by_kind[verdict.kind().index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Comparisons that ended in `kind`.
    pub fn get(&self, kind: VerdictKind) -> u64 {
        self.by_kind[kind.index()].load(Ordering::Relaxed)
    }

    /// Every kind with its count, in [`VerdictKind::ALL`] order.
    pub fn snapshot(&self) -> [(VerdictKind, u64); 6] {
        VerdictKind::ALL.map(|kind| (kind, self.get(kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_stays_small_enough_to_move_by_value() {
        assert!(std::mem::size_of::<ResponseDigest>() <= 96);
    }

    fn path_of(text: &str) -> Vec<PatternStep> {
        JsonPattern::parse(text).expect("a valid path").0
    }

    #[test]
    fn the_body_hash_ignores_how_the_bytes_were_split() {
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut whole = BodyHasher::new();
        whole.write(&bytes);
        for splits in [
            &[1usize, 255, 256, 257, 1000][..],
            &[0, 3],
            &[512, 4488],
            &[4999],
        ] {
            let mut split = BodyHasher::new();
            let mut at = 0;
            for &len in splits {
                let end = (at + len).min(bytes.len());
                split.write(&bytes[at..end]);
                at = end;
            }
            split.write(&bytes[at..]);
            assert_eq!(split.finish(), whole.finish(), "{splits:?}");
        }
        let mut other = BodyHasher::new();
        other.write(&bytes[1..]);
        assert_ne!(other.finish(), whole.finish());
    }

    #[test]
    fn json_patterns_read_keys_indexes_wildcards_and_quoted_keys() {
        assert_eq!(path_of("$"), vec![]);
        assert_eq!(
            path_of("$.items[3].price"),
            vec![
                PatternStep::Key("items".into()),
                PatternStep::Index(3),
                PatternStep::Key("price".into())
            ]
        );
        assert_eq!(
            path_of("$.items[*].ts"),
            vec![
                PatternStep::Key("items".into()),
                PatternStep::AnyIndex,
                PatternStep::Key("ts".into())
            ]
        );
        assert_eq!(
            path_of(r#"$["a.b"]["q\"]"][0]"#),
            vec![
                PatternStep::Key("a.b".into()),
                PatternStep::Key("q\"]".into()),
                PatternStep::Index(0)
            ]
        );
        for bad in [
            "items",
            "$.",
            "$..a",
            "$[",
            "$[1",
            "$[x]",
            "$[\"open]",
            "$a",
            "$[99999999999999999999999]",
        ] {
            assert!(JsonPattern::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn rendered_paths_read_back_as_the_same_pattern() {
        let path = [
            Step::Key("items"),
            Step::Index(2),
            Step::Key("odd key."),
            Step::Key(""),
            Step::Key("x-y_z9"),
        ];
        let text = render_path(&path);
        assert_eq!(text, r#"$.items[2]["odd key."][""].x-y_z9"#);
        assert!(
            JsonPattern::parse(&text)
                .expect("renders parse")
                .matches(&path)
        );
    }

    #[test]
    fn the_kept_body_never_allocates_past_max_body() {
        let mut digest = ResponseDigest::new(200, 1000);
        for _ in 0..100 {
            digest.add_body(&[7u8; 33]);
        }
        assert_eq!(digest.kept_body().len(), 1000);
        assert!(digest.kept_capacity() <= 1000, "{}", digest.kept_capacity());
        assert_eq!(digest.body_len(), 3300);
        assert!(digest.is_body_truncated());
    }
}
