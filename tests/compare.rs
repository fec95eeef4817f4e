//! The comparison engine of `--compare` (issue 12), through its public API only: response
//! digests fed in pieces, verdicts with and without a reference, the plain TCP comparison,
//! and the compare-log line read back as JSON.

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use ember::proxy::compare::{
    BodyDifference, CompareLine, DEFAULT_MAX_BODY, Difference, Excerpt, Exchange, ResponseDigest,
    Rules, ShadowFailure, SideSummary, TcpComparison, Verdict, VerdictCounts, VerdictKind,
};
use serde_json::Value;

const MIB: usize = 1 << 20;

/// Deterministic bytes that don't repeat over short distances (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A digest of `status`, `headers` and `body`, the body fed in pieces of `piece` bytes.
fn response(
    rules: &Rules,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    piece: usize,
) -> ResponseDigest {
    let mut digest = rules.digest(status);
    for (name, value) in headers {
        digest.add_header(name, value.as_bytes());
    }
    for chunk in body.chunks(piece.max(1)) {
        digest.add_body(chunk);
    }
    digest
}

fn json(rules: &Rules, body: &str) -> ResponseDigest {
    response(
        rules,
        200,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        64,
    )
}

fn body_difference(verdict: &Verdict) -> &BodyDifference {
    match verdict {
        Verdict::Differs(Difference::Body(body)) => body,
        other => panic!("expected a body difference, got {other:?}"),
    }
}

#[test]
fn the_same_body_fed_in_different_piece_sizes_gives_the_same_digest() {
    let rules = Rules::new();
    let body = pattern(300_000, 1);
    let whole = response(&rules, 200, &[], &body, body.len());
    for piece in [1, 7, 4096, 65_536] {
        let split = response(&rules, 200, &[], &body, piece);
        assert_eq!(split.body_hash(), whole.body_hash(), "pieces of {piece}");
        assert_eq!(split.body_len(), 300_000);
        assert_eq!(split.kept_body(), whole.kept_body());
        assert_eq!(rules.classify(&whole, Ok(&split), None), Verdict::Same);
    }
    let other = response(&rules, 200, &[], &pattern(300_000, 2), 4096);
    assert_ne!(other.body_hash(), whole.body_hash());
}

#[test]
fn a_different_status_gives_both_codes() {
    let rules = Rules::new();
    let primary = response(&rules, 200, &[], b"ok", 2);
    let shadow = response(&rules, 500, &[], b"oops", 2);
    assert_eq!(
        rules.classify(&primary, Ok(&shadow), None),
        Verdict::Differs(Difference::Status {
            primary: 200,
            shadow: 500
        })
    );
}

#[test]
fn date_and_the_other_default_noise_headers_are_not_compared() {
    let rules = Rules::new();
    let primary = response(
        &rules,
        200,
        &[
            ("Date", "Mon, 30 Nov 2026 15:00:00 GMT"),
            ("X-Request-Id", "a1"),
            ("Content-Length", "2"),
            ("Connection", "keep-alive"),
        ],
        b"ok",
        2,
    );
    let shadow = response(
        &rules,
        200,
        &[
            ("date", "Mon, 30 Nov 2026 15:00:01 GMT"),
            ("x-request-id", "b2"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"ok",
        1,
    );
    assert!(rules.ignores_header("DATE"));
    assert_eq!(rules.classify(&primary, Ok(&shadow), None), Verdict::Same);
}

#[test]
fn a_header_not_ignored_is_named_with_both_values() {
    let rules = Rules::new();
    let primary = response(&rules, 200, &[("X-Foo", "a"), ("Vary", "Accept")], b"", 1);
    let shadow = response(&rules, 200, &[("x-foo", "b"), ("Vary", "Accept")], b"", 1);
    assert_eq!(
        rules.classify(&primary, Ok(&shadow), None),
        Verdict::Differs(Difference::Header {
            name: "x-foo".into(),
            primary: Some("a".into()),
            shadow: Some("b".into()),
        })
    );
}

#[test]
fn a_header_sent_by_one_side_only_counts() {
    let rules = Rules::new();
    let primary = response(&rules, 200, &[], b"", 1);
    let shadow = response(&rules, 200, &[("X-Debug", "on")], b"", 1);
    assert_eq!(
        rules.classify(&primary, Ok(&shadow), None),
        Verdict::Differs(Difference::Header {
            name: "x-debug".into(),
            primary: None,
            shadow: Some("on".into()),
        })
    );
    // And the other way round.
    assert_eq!(
        rules.classify(&shadow, Ok(&primary), None).kind(),
        VerdictKind::Header
    );
}

#[test]
fn a_list_header_split_over_two_lines_equals_the_same_list_on_one() {
    let rules = Rules::new();
    let primary = response(
        &rules,
        200,
        &[("Vary", "Accept"), ("Vary", "Origin")],
        b"",
        1,
    );
    let shadow = response(&rules, 200, &[("Vary", "Accept, Origin")], b"", 1);
    assert_eq!(rules.classify(&primary, Ok(&shadow), None), Verdict::Same);
}

#[test]
fn a_user_ignored_header_is_matched_in_any_case() {
    let rules = Rules::new().ignore_header("X-Build-Host");
    let primary = response(&rules, 200, &[("x-build-host", "web-1")], b"", 1);
    let shadow = response(&rules, 200, &[("X-BUILD-HOST", "web-7")], b"", 1);
    assert_eq!(rules.classify(&primary, Ok(&shadow), None), Verdict::Same);
    // Without the rule it is a difference.
    assert_eq!(
        Rules::new().classify(&primary, Ok(&shadow), None).kind(),
        VerdictKind::Header
    );
}

#[test]
fn clearing_the_ignored_headers_compares_date_too() {
    let rules = Rules::new().clear_ignored_headers();
    let primary = response(&rules, 200, &[("Date", "one")], b"", 1);
    let shadow = response(&rules, 200, &[("Date", "two")], b"", 1);
    assert_eq!(
        rules.classify(&primary, Ok(&shadow), None).kind(),
        VerdictKind::Header
    );
}

#[test]
fn json_bodies_differing_only_at_ignored_paths_are_the_same() {
    let rules = Rules::new()
        .ignore_json("$.meta.request_id")
        .and_then(|r| r.ignore_json("$.items[*].ts"))
        .expect("valid paths");
    let primary = json(
        &rules,
        r#"{"meta":{"request_id":"abc","v":1},"items":[{"id":1,"ts":5},{"id":2,"ts":6}]}"#,
    );
    let shadow = json(
        &rules,
        r#"{"meta":{"request_id":"xyz","v":1},"items":[{"id":1,"ts":9},{"id":2,"ts":3}]}"#,
    );
    assert_eq!(rules.classify(&primary, Ok(&shadow), None), Verdict::Same);
    // Not ignored: the first difference in key order is reported.
    let verdict = Rules::new().classify(&primary, Ok(&shadow), None);
    assert_eq!(
        body_difference(&verdict).json_path.as_deref(),
        Some("$.items[0].ts")
    );
}

#[test]
fn a_json_difference_reports_its_path_offset_and_lengths() {
    let rules = Rules::new();
    let p = r#"{"items":[{"id":1,"price":10},{"id":2,"price":20}],"total":30}"#;
    let s = r#"{"items":[{"id":1,"price":10},{"id":2,"price":25}],"total":30}"#;
    let verdict = rules.classify(&json(&rules, p), Ok(&json(&rules, s)), None);
    let body = body_difference(&verdict);
    assert_eq!(body.json_path.as_deref(), Some("$.items[1].price"));
    let offset = p.bytes().zip(s.bytes()).position(|(a, b)| a != b);
    assert_eq!(body.offset, offset.map(|o| o as u64));
    assert_eq!(
        (body.primary_len, body.shadow_len),
        (p.len() as u64, s.len() as u64)
    );
    let excerpt = body.excerpt.as_ref().expect("an excerpt at the offset");
    assert!(excerpt.primary.contains("\"price\":20"), "{excerpt:?}");
    assert!(excerpt.shadow.contains("\"price\":25"), "{excerpt:?}");
}

#[test]
fn json_key_order_whitespace_and_number_spelling_never_matter() {
    let rules = Rules::new();
    let primary = json(&rules, r#"{"a":1,"b":[1,2,{"x":null,"y":true}],"c":"s"}"#);
    let shadow = json(
        &rules,
        "{ \"c\": \"s\",\n  \"b\": [1, 2.0, {\"y\": true, \"x\": null}], \"a\": 1 }",
    );
    assert_eq!(rules.classify(&primary, Ok(&shadow), None), Verdict::Same);
    // Without a JSON Content-Type, a body that parses as JSON is still compared as JSON.
    let plain = |body: &str| response(&rules, 200, &[], body.as_bytes(), 3);
    assert_eq!(
        rules.classify(
            &plain(r#"{"a":1,"b":2}"#),
            Ok(&plain(r#"{"b":2,"a":1}"#)),
            None
        ),
        Verdict::Same
    );
}

#[test]
fn a_missing_key_or_a_shorter_array_is_a_path_too() {
    let rules = Rules::new();
    let verdict = rules.classify(
        &json(&rules, r#"{"a":{"b":1,"c":2}}"#),
        Ok(&json(&rules, r#"{"a":{"b":1}}"#)),
        None,
    );
    assert_eq!(
        body_difference(&verdict).json_path.as_deref(),
        Some("$.a.c")
    );
    let verdict = rules.classify(
        &json(&rules, r#"{"list":[1,2,3]}"#),
        Ok(&json(&rules, r#"{"list":[1,2]}"#)),
        None,
    );
    assert_eq!(
        body_difference(&verdict).json_path.as_deref(),
        Some("$.list[2]")
    );
}

#[test]
fn a_body_that_is_not_json_is_compared_as_bytes() {
    let rules = Rules::new();
    let primary = response(&rules, 200, &[], b"hello world", 4);
    let shadow = response(&rules, 200, &[], b"hello there!", 5);
    let verdict = rules.classify(&primary, Ok(&shadow), None);
    let body = body_difference(&verdict);
    assert_eq!(body.offset, Some(6));
    assert_eq!(body.json_path, None);
    assert_eq!((body.primary_len, body.shadow_len), (11, 12));
    assert_eq!(
        body.excerpt,
        Some(Excerpt {
            primary: "hello world".into(),
            shadow: "hello there!".into()
        })
    );
    // One body a prefix of the other: they part where the shorter ends.
    let short = response(&rules, 200, &[], b"hello", 5);
    let verdict = rules.classify(&primary, Ok(&short), None);
    assert_eq!(body_difference(&verdict).offset, Some(5));
}

#[test]
fn a_5_mib_body_keeps_1_mib_and_a_difference_past_it_is_found_by_hash() {
    let rules = Rules::new();
    assert_eq!(rules.body_limit(), DEFAULT_MAX_BODY);
    let body = pattern(5 * MIB, 3);
    let primary = response(&rules, 200, &[], &body, 16_384);
    assert_eq!(primary.body_len(), 5 * MIB as u64);
    assert_eq!(primary.kept_body().len(), MIB);
    assert!(primary.kept_capacity() <= MIB);
    assert!(primary.is_body_truncated());

    let same = response(&rules, 200, &[], &body, 1000);
    assert_eq!(rules.classify(&primary, Ok(&same), None), Verdict::Same);

    // One byte changed at 3 MiB: only the hash can tell.
    let mut changed = body.clone();
    changed[3 * MIB] ^= 0x40;
    let shadow = response(&rules, 200, &[], &changed, 4096);
    let verdict = rules.classify(&primary, Ok(&shadow), None);
    let difference = body_difference(&verdict);
    assert!(difference.is_hashed());
    assert_eq!(difference.offset, None);
    assert_eq!(difference.excerpt, None);
    assert!(verdict.to_string().contains("hash"), "{verdict}");

    // Shorter past the kept part: hash and length tell, no offset.
    let shorter = response(&rules, 200, &[], &body[..4 * MIB], 4096);
    let verdict = rules.classify(&primary, Ok(&shorter), None);
    assert_eq!(body_difference(&verdict).offset, None);
    assert_eq!(body_difference(&verdict).shadow_len, 4 * MIB as u64);

    // A difference inside the kept part still has its exact offset.
    let mut early = body.clone();
    early[1000] ^= 1;
    let shadow = response(&rules, 200, &[], &early, 4096);
    let verdict = rules.classify(&primary, Ok(&shadow), None);
    assert_eq!(body_difference(&verdict).offset, Some(1000));
}

#[test]
fn json_past_max_body_is_compared_by_hash_not_parsed() {
    let rules = Rules::new().max_body(16);
    let primary = json(&rules, r#"{"a":1,"b":2,"c":3}"#);
    let shadow = json(&rules, r#"{"a":1,"b":2,"c":4}"#);
    let verdict = rules.classify(&primary, Ok(&shadow), None);
    let body = body_difference(&verdict);
    assert_eq!((body.offset, body.json_path.as_deref()), (None, None));
}

#[test]
fn a_header_that_differs_against_the_reference_too_is_noise() {
    let rules = Rules::new();
    let with_nonce = |nonce: &str, version: &str| {
        response(
            &rules,
            200,
            &[("X-Nonce", nonce), ("X-Version", version)],
            b"body",
            2,
        )
    };
    let primary = with_nonce("n1", "7");
    let reference = with_nonce("n2", "7");

    let shadow = with_nonce("n3", "7");
    assert_eq!(
        rules.classify(&primary, Ok(&shadow), Some(&reference)),
        Verdict::Noise(Difference::Header {
            name: "x-nonce".into(),
            primary: Some("n1".into()),
            shadow: Some("n3".into()),
        })
    );
    // Without the reference the same pair is a header difference.
    assert_eq!(
        rules.classify(&primary, Ok(&shadow), None).kind(),
        VerdictKind::Header
    );

    // A header that differs only on the shadow is real, even after a noisy one.
    let regressed = with_nonce("n4", "8");
    assert_eq!(
        rules.classify(&primary, Ok(&regressed), Some(&reference)),
        Verdict::Differs(Difference::Header {
            name: "x-version".into(),
            primary: Some("7".into()),
            shadow: Some("8".into()),
        })
    );
}

#[test]
fn a_status_that_flaps_against_the_reference_too_is_noise() {
    let rules = Rules::new();
    let primary = response(&rules, 200, &[], b"ok", 2);
    let reference = response(&rules, 503, &[], b"busy", 2);
    let shadow = response(&rules, 503, &[], b"busy", 2);
    let verdict = rules.classify(&primary, Ok(&shadow), Some(&reference));
    assert_eq!(
        verdict,
        Verdict::Noise(Difference::Status {
            primary: 200,
            shadow: 503
        })
    );
    // A reference that agrees with the primary excuses nothing.
    let other = response(&rules, 200, &[], b"no", 2);
    assert_eq!(
        rules.classify(
            &primary,
            Ok(&other),
            Some(&response(&rules, 200, &[], b"ok", 1))
        ),
        rules.classify(&primary, Ok(&other), None)
    );
}

#[test]
fn json_noise_is_cancelled_by_path_and_a_real_change_elsewhere_still_shows() {
    let rules = Rules::new();
    let primary = json(&rules, r#"{"token":"t1","price":10,"z":1}"#);
    let reference = json(&rules, r#"{"token":"t2","price":10,"z":1}"#);

    let noisy = json(&rules, r#"{"token":"t3","price":10,"z":1}"#);
    let verdict = rules.classify(&primary, Ok(&noisy), Some(&reference));
    assert_eq!(verdict.kind(), VerdictKind::Noise);
    match &verdict {
        Verdict::Noise(Difference::Body(body)) => {
            assert_eq!(body.json_path.as_deref(), Some("$.token"))
        }
        other => panic!("{other:?}"),
    }

    // The token is noise, `z` (after it in key order) is not.
    let regressed = json(&rules, r#"{"token":"t3","price":10,"z":2}"#);
    let verdict = rules.classify(&primary, Ok(&regressed), Some(&reference));
    assert_eq!(body_difference(&verdict).json_path.as_deref(), Some("$.z"));
}

#[test]
fn raw_bodies_are_noise_when_the_reference_differs_too() {
    let rules = Rules::new();
    let primary = response(&rules, 200, &[], b"<p>rendered at 10:00:01</p>", 5);
    let reference = response(&rules, 200, &[], b"<p>rendered at 10:00:02</p>", 5);
    let shadow = response(&rules, 200, &[], b"<p>rendered at 10:00:03</p>", 5);
    assert_eq!(
        rules
            .classify(&primary, Ok(&shadow), Some(&reference))
            .kind(),
        VerdictKind::Noise
    );
    // A reference that agrees with the primary makes the same difference real.
    let agreeing = response(&rules, 200, &[], b"<p>rendered at 10:00:01</p>", 5);
    assert_eq!(
        rules
            .classify(&primary, Ok(&shadow), Some(&agreeing))
            .kind(),
        VerdictKind::Body
    );
}

#[test]
fn a_failed_shadow_is_a_shadow_error_with_its_reason() {
    let rules = Rules::new();
    let primary = response(&rules, 200, &[], b"ok", 2);
    let failure = ShadowFailure::from_unbind(&ember::UnbindReason::InactivityTimeout);
    assert_eq!(failure, ShadowFailure::Timeout);
    let verdict = rules.classify(&primary, Err(&failure), None);
    assert_eq!(verdict, Verdict::ShadowFailed(ShadowFailure::Timeout));
    assert_eq!(verdict.kind().as_str(), "shadow_error");
    assert_eq!(
        ShadowFailure::from_code(ShadowFailure::CutOff.code()),
        ShadowFailure::CutOff
    );
}

/// Feeds `primary` and `shadow` to a comparison, interleaved, in pieces of the given sizes.
fn tcp_compare(
    cap: usize,
    primary: &[u8],
    p_piece: usize,
    shadow: &[u8],
    s_piece: usize,
) -> TcpComparison {
    let mut comparison = TcpComparison::with_cap(cap);
    let mut p = primary.chunks(p_piece);
    let mut s = shadow.chunks(s_piece);
    let mut max_buffered = 0;
    loop {
        // The primary runs ahead: several of its pieces for each of the shadow's.
        let mut fed = false;
        for piece in p.by_ref().take(3) {
            comparison.primary_sent(piece);
            max_buffered = max_buffered.max(comparison.buffered());
            fed = true;
        }
        if let Some(piece) = s.next() {
            comparison.shadow_sent(piece);
            max_buffered = max_buffered.max(comparison.buffered());
            fed = true;
        }
        if !fed {
            break;
        }
    }
    assert!(max_buffered <= cap, "buffered {max_buffered} > cap {cap}");
    comparison
}

#[test]
fn tcp_streams_fed_in_different_slices_compare_the_same() {
    let stream = pattern(200_000, 5);
    for (p_piece, s_piece) in [(1, 4096), (4096, 1), (4096, 4096), (13, 7)] {
        let comparison = tcp_compare(64 * 1024, &stream, p_piece, &stream, s_piece);
        assert_eq!(comparison.verdict(), Verdict::Same, "{p_piece}/{s_piece}");
        assert_eq!(comparison.primary_len(), 200_000);
        assert_eq!(comparison.shadow_len(), 200_000);
        assert_eq!(comparison.buffered(), 0);
    }
}

#[test]
fn tcp_streams_that_differ_at_n_report_n() {
    let primary = pattern(50_000, 6);
    let mut shadow = primary.clone();
    shadow[31_337] ^= 0xff;
    for (p_piece, s_piece) in [(1, 4096), (4096, 1)] {
        let comparison = tcp_compare(64 * 1024, &primary, p_piece, &shadow, s_piece);
        let verdict = comparison.verdict();
        let body = body_difference(&verdict);
        assert_eq!(body.offset, Some(31_337), "{p_piece}/{s_piece}");
        assert_eq!((body.primary_len, body.shadow_len), (50_000, 50_000));
        let excerpt = body.excerpt.as_ref().expect("an excerpt");
        assert_ne!(excerpt.primary, excerpt.shadow);
    }
    // A shorter shadow parts where it ends.
    let comparison = tcp_compare(64 * 1024, &primary, 4096, &primary[..20_000], 1);
    assert_eq!(body_difference(&comparison.verdict()).offset, Some(20_000));
}

#[test]
fn tcp_past_the_cap_falls_back_to_hashes() {
    let cap = 4096;
    let stream = pattern(100_000, 7);
    // The primary's whole stream arrives before the shadow's first byte: far past the cap.
    let mut comparison = TcpComparison::with_cap(cap);
    for piece in stream.chunks(1000) {
        comparison.primary_sent(piece);
        assert!(comparison.buffered() <= cap);
    }
    for piece in stream.chunks(1) {
        comparison.shadow_sent(piece);
    }
    assert_eq!(comparison.verdict(), Verdict::Same);

    let mut changed = stream.clone();
    changed[90_000] ^= 1;
    let mut comparison = TcpComparison::with_cap(cap);
    comparison.primary_sent(&stream);
    comparison.shadow_sent(&changed);
    let verdict = comparison.verdict();
    let body = body_difference(&verdict);
    assert_eq!(body.offset, None, "no offset once hashed");
    assert!(body.is_hashed());
    assert_eq!((body.primary_len, body.shadow_len), (100_000, 100_000));
}

fn http_line(verdict: Verdict) -> CompareLine {
    CompareLine {
        time: UNIX_EPOCH + Duration::from_millis(1_796_050_800_123),
        session: 12,
        exchange: Exchange::Http {
            request: 3,
            method: "GET".into(),
            path: "/users/42?x=1&q=\"quoted\"\n".into(),
        },
        shadow_name: "duplex_0".into(),
        verdict,
        primary: SideSummary {
            status: Some(200),
            elapsed: Duration::from_micros(1250),
            bytes: 512,
        },
        shadow: SideSummary {
            status: Some(200),
            elapsed: Duration::from_micros(3500),
            bytes: 498,
        },
    }
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn the_log_line_is_json_with_exactly_the_schema_fields() {
    let rules = Rules::new();
    let p = r#"{"items":[{"price":10},{"price":20}]}"#;
    let s = r#"{"items":[{"price":10},{"price":25}]}"#;
    let verdict = rules.classify(&json(&rules, p), Ok(&json(&rules, s)), None);
    let line = http_line(verdict.clone());
    let text = line.render();
    assert!(!text.contains('\n'), "one line: {text}");
    let value: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(
        keys(&value),
        BTreeSet::from([
            "time",
            "session",
            "request",
            "mode",
            "method",
            "path",
            "shadow_name",
            "verdict",
            "noise_of",
            "primary",
            "shadow",
            "diff",
            "excerpt"
        ])
    );
    assert_eq!(value["time"], "2026-11-30T15:00:00.123Z");
    assert_eq!(value["session"], 12);
    assert_eq!(value["request"], 3);
    assert_eq!(value["mode"], "http");
    assert_eq!(value["path"], "/users/42?x=1&q=\"quoted\"\n");
    assert_eq!(value["shadow_name"], "duplex_0");
    assert_eq!(value["verdict"], "body");
    assert_eq!(value["noise_of"], Value::Null);
    assert_eq!(
        keys(&value["primary"]),
        BTreeSet::from(["status", "ms", "bytes"])
    );
    assert_eq!(value["primary"]["ms"], 1.25);
    assert_eq!(
        keys(&value["shadow"]),
        BTreeSet::from(["status", "ms", "bytes", "error"])
    );
    assert_eq!(value["shadow"]["error"], Value::Null);
    assert_eq!(
        keys(&value["diff"]),
        BTreeSet::from(["offset", "primary_len", "shadow_len", "json_path", "hashed"])
    );
    assert_eq!(value["diff"]["json_path"], "$.items[1].price");
    assert_eq!(value["diff"]["hashed"], false);
    assert_eq!(
        keys(&value["excerpt"]),
        BTreeSet::from(["primary", "shadow"])
    );

    assert_eq!(CompareLine::parse(&text), Ok(line));
}

#[test]
fn every_verdict_renders_its_diff_shape_and_reads_back() {
    let header = Difference::Header {
        name: "x-foo".into(),
        primary: None,
        shadow: Some("b\u{7}é".into()),
    };
    let hashed = Difference::Body(BodyDifference {
        offset: None,
        primary_len: 5 << 20,
        shadow_len: 5 << 20,
        json_path: None,
        excerpt: None,
    });
    let cases = [
        (Verdict::Same, "null"),
        (
            Verdict::Differs(Difference::Status {
                primary: 200,
                shadow: 500,
            }),
            r#"{"status":[200,500]}"#,
        ),
        (
            Verdict::Differs(header.clone()),
            r#"{"header":"x-foo","primary":null,"shadow":"b\u0007é"}"#,
        ),
        (
            Verdict::Differs(hashed),
            r#"{"offset":null,"primary_len":5242880,"shadow_len":5242880,"json_path":null,"hashed":true}"#,
        ),
        (
            Verdict::ShadowFailed(ShadowFailure::Reset),
            r#"{"error":"reset"}"#,
        ),
        (
            Verdict::Noise(header),
            r#"{"header":"x-foo","primary":null,"shadow":"b\u0007é"}"#,
        ),
    ];
    for (verdict, diff) in cases {
        let line = http_line(verdict.clone());
        let text = line.render();
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        let expected: Value = serde_json::from_str(diff).expect("test JSON");
        assert_eq!(value["diff"], expected, "{text}");
        assert_eq!(value["verdict"], verdict.kind().as_str());
        let noise_of = match &verdict {
            Verdict::Noise(d) => Value::from(d.kind().as_str()),
            _ => Value::Null,
        };
        assert_eq!(value["noise_of"], noise_of);
        if let Verdict::ShadowFailed(failure) = &verdict {
            assert_eq!(value["shadow"]["error"], failure.code());
        }
        assert_eq!(CompareLine::parse(&text), Ok(line), "{text}");
    }
}

#[test]
fn a_tcp_line_has_no_request_method_path_or_status() {
    let primary = pattern(1000, 8);
    let mut shadow = primary.clone();
    shadow[17] ^= 1;
    let comparison = tcp_compare(1024, &primary, 100, &shadow, 100);
    let line = CompareLine {
        time: UNIX_EPOCH + Duration::from_secs(1_796_050_800),
        session: 4,
        exchange: Exchange::Tcp,
        shadow_name: "redis-next".into(),
        verdict: comparison.verdict(),
        primary: SideSummary::of_bytes(comparison.primary_len(), Duration::from_millis(2)),
        shadow: SideSummary::of_bytes(comparison.shadow_len(), Duration::from_millis(3)),
    };
    let text = line.render();
    let value: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(
        keys(&value),
        BTreeSet::from([
            "time",
            "session",
            "mode",
            "shadow_name",
            "verdict",
            "noise_of",
            "primary",
            "shadow",
            "diff",
            "excerpt"
        ])
    );
    assert_eq!(value["mode"], "tcp");
    assert_eq!(keys(&value["primary"]), BTreeSet::from(["ms", "bytes"]));
    assert_eq!(
        keys(&value["shadow"]),
        BTreeSet::from(["ms", "bytes", "error"])
    );
    assert_eq!(value["diff"]["offset"], 17);
    assert_eq!(CompareLine::parse(&text), Ok(line));
}

#[test]
fn lines_that_are_not_compare_lines_are_refused() {
    let good = http_line(Verdict::Same).render();
    for bad in [
        "",
        "not json",
        "[1,2]",
        &good.replace("\"mode\":\"http\"", "\"mode\":\"udp\""),
        &good.replace("\"verdict\":\"same\"", "\"verdict\":\"status\""),
        &good.replace("2026-11-30T15:00:00.123Z", "yesterday"),
        &good.replace("\"session\":12", "\"session\":-1"),
    ] {
        assert!(CompareLine::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn verdict_counts_count_by_kind() {
    let counts = VerdictCounts::new();
    counts.count(&Verdict::Same);
    counts.count(&Verdict::Same);
    counts.count(&Verdict::ShadowFailed(ShadowFailure::Refused));
    counts.count(&Verdict::Noise(Difference::Status {
        primary: 200,
        shadow: 502,
    }));
    assert_eq!(counts.get(VerdictKind::Same), 2);
    assert_eq!(counts.get(VerdictKind::ShadowError), 1);
    assert_eq!(counts.get(VerdictKind::Noise), 1);
    assert_eq!(counts.get(VerdictKind::Status), 0);
    let snapshot = counts.snapshot();
    assert_eq!(snapshot.iter().map(|(_, n)| n).sum::<u64>(), 4);
    assert_eq!(snapshot[0], (VerdictKind::Same, 2));
    fn shareable<T: Send + Sync>(_: &T) {}
    shareable(&counts);
}
