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
//! Each has its file: `digest.rs`, `rules.rs` (with the JSON walk), `json_path.rs`,
//! `verdict.rs`, `tcp.rs`, `line.rs`; the counters and the shared limits are here.
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

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Number, Value};

use crate::UnbindReason;
use crate::timestamp::{parse_rfc3339, push_rfc3339};

mod digest;
mod json_path;
mod line;
mod rules;
mod tcp;
mod verdict;

pub use digest::ResponseDigest;
pub use json_path::JsonPathError;
pub use line::{CompareLine, Exchange, LineError, SideSummary};
pub use rules::Rules;
pub use tcp::TcpComparison;
pub use verdict::{
    BodyDifference, Difference, DifferenceKind, Excerpt, ShadowFailure, Verdict, VerdictKind,
};
#[allow(unused_imports)] // each submodule takes what it needs of these through `super::*`
use {digest::*, json_path::*, line::*, rules::*, tcp::*, verdict::*};

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
    fn log_strings_are_escaped_as_serde_json_escapes_them() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        for text in [
            "",
            "/users/42?x=1",
            "quote \" backslash \\ slash / del \u{7f}",
            "caf\u{e9} \u{2028} \u{1f600}",
            &every_control,
            "\"\"\n",
        ] {
            let mut out = String::from("x");
            push_json_string(&mut out, text);
            assert_eq!(out, format!("x{}", Value::from(text)), "{text:?}");
        }
    }

    #[test]
    fn milliseconds_are_written_as_serde_json_writes_them() {
        let samples = (0..20_000u128)
            .chain((0..2000).map(|i| i * 7_777_777 + i % 1000))
            .chain((40..50).map(|bits| (1u128 << bits) + 1))
            .chain([999, 1000, 1001, 100_000, (1 << 50) - 1, 1 << 50, 1 << 60]);
        for micros in samples {
            let mut out = String::new();
            push_ms(&mut out, micros);
            assert_eq!(
                out,
                Value::from(micros as f64 / 1000.0).to_string(),
                "{micros}"
            );
        }
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
