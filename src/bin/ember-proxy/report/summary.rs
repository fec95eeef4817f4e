//! The text summary on stdout: the verdict first, then who was compared, the mismatch
//! rate, the worst routes, the top differences, the noise, latencies and shadow errors.
//! Short enough to read in ten seconds; the page has the rest. Names from the log are
//! made printable (no control characters reach the terminal).

use std::fmt::Write;

use super::format::{count, millis, pad, percent, printable};
use super::latency::Histogram;
use super::record::Kind;
use super::tally::{RouteTally, ShadowTally, Tally, most_frequent, worst_first};
use super::time;

/// Routes and differences listed in the summary; the page lists more.
const TOP: usize = 10;
/// Noise differences listed in the summary.
const TOP_NOISE: usize = 5;

/// The verdict: safe or not, in one line.
#[derive(Debug, PartialEq, Eq)]
pub struct Headline {
    pub safe: bool,
    pub text: String,
}

/// `SAFE: 0 regressions in 10,000 requests` or `REGRESSIONS: 2.1% of requests differ,
/// worst route GET /users/{id} 40%`.
pub fn headline(t: &Tally) -> Headline {
    let regressions = t.regressions();
    if regressions == 0 {
        return Headline {
            safe: true,
            text: format!("SAFE: 0 regressions in {} requests", count(t.compared)),
        };
    }
    let mut text = format!(
        "REGRESSIONS: {} of requests differ",
        percent(regressions, t.compared)
    );
    if let Some((route, r)) = worst_routes(t).first() {
        let _ = write!(
            text,
            ", worst route {route} {}",
            percent(r.regressions(), r.compared)
        );
    }
    Headline { safe: false, text }
}

pub fn worst_routes(t: &Tally) -> Vec<(&String, &RouteTally)> {
    worst_first(t.routes.iter(), |r| r.compared, RouteTally::regressions)
}

pub fn worst_shadows(t: &Tally) -> Vec<(&String, &ShadowTally)> {
    worst_first(t.shadows.iter(), |s| s.compared, |s| s.regressions)
}

/// `160 body, 10 shadow_error`: the regressions by kind, the kinds seen only.
pub fn by_kind(by_kind: &[u64; 4]) -> String {
    Kind::REGRESSIONS
        .iter()
        .zip(by_kind)
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| format!("{} {}", count(*n), kind.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The summary, every line ending in `\n`; the caller adds where the page went.
pub fn text(t: &Tally) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", printable(&headline(t).text));
    let span = t.timeline.span().map_or(String::new(), |(first, last)| {
        format!(", {} to {} UTC", time::utc(first), time::utc(last))
    });
    let _ = writeln!(out, "{} requests compared{span}", count(t.compared));
    for (name, s) in worst_shadows(t) {
        let _ = writeln!(
            out,
            "  {}: {} requests, {} differ ({}), {} noise",
            printable(name),
            count(s.compared),
            count(s.regressions),
            percent(s.regressions, s.compared),
            count(s.noise)
        );
    }
    let regressions = t.regressions();
    let kinds = if regressions > 0 {
        format!(": {}", by_kind(&t.by_kind))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "mismatch rate: {} ({} of {}{kinds}); noise, not counted: {}",
        percent(regressions, t.compared),
        count(regressions),
        count(t.compared),
        count(t.noise)
    );
    routes(&mut out, t);
    differences(&mut out, t);
    latency(&mut out, t);
    errors(&mut out, t);
    out
}

fn routes(out: &mut String, t: &Tally) {
    let routes = worst_routes(t);
    let _ = writeln!(out, "routes, worst first:");
    let shown: Vec<_> = routes.iter().take(TOP).collect();
    let width = shown
        .iter()
        .map(|(name, _)| printable(name).chars().count())
        .max()
        .unwrap_or(0);
    for (name, r) in &shown {
        let _ = writeln!(
            out,
            "  {}  {:>9} requests  {:>9} differ ({})",
            pad(&printable(name), width),
            count(r.compared),
            count(r.regressions()),
            percent(r.regressions(), r.compared)
        );
    }
    if routes.len() > shown.len() {
        let _ = writeln!(
            out,
            "  … and {} more routes (see the page)",
            count((routes.len() - shown.len()) as u64)
        );
    }
}

fn differences(out: &mut String, t: &Tally) {
    for (title, table, top) in [
        ("top differences", &t.differences, TOP),
        ("noise (not counted)", &t.noise_differences, TOP_NOISE),
    ] {
        let rows = most_frequent(table);
        if rows.is_empty() {
            let _ = writeln!(out, "{title}: none");
            continue;
        }
        let _ = writeln!(out, "{title}:");
        for (difference, d) in rows.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:>9}  {}",
                count(d.count),
                printable(&difference.label())
            );
        }
        if rows.len() > top {
            let _ = writeln!(out, "  … and {} more", count((rows.len() - top) as u64));
        }
    }
}

fn latency(out: &mut String, t: &Tally) {
    let mut rows: Vec<(String, &Histogram)> = vec![("primary".into(), &t.primary_latency)];
    for (name, s) in t.shadows.iter() {
        rows.push((printable(name), &s.latency));
    }
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0)
        .max(10);
    let _ = writeln!(
        out,
        "{}  {:>8}  {:>8}  {:>8}",
        pad("latency ms", width + 2),
        "p50",
        "p90",
        "p99"
    );
    for (name, h) in rows {
        let at = |q: f64| h.percentile(q).map_or("-".into(), millis);
        let _ = writeln!(
            out,
            "  {}  {:>8}  {:>8}  {:>8}",
            pad(&name, width),
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
}

fn errors(out: &mut String, t: &Tally) {
    if t.shadow_errors() == 0 {
        let _ = writeln!(out, "shadow errors: none");
        return;
    }
    let mut reasons: Vec<_> = t.error_reasons.iter().collect();
    reasons.sort_by(|(a_name, a), (b_name, b)| b.cmp(a).then(a_name.cmp(b_name)));
    let reasons: Vec<_> = reasons
        .iter()
        .map(|(reason, n)| format!("{} {}", printable(reason), count(**n)))
        .collect();
    let _ = writeln!(
        out,
        "shadow errors: {} ({})",
        count(t.shadow_errors()),
        reasons.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(lines: &[String]) -> Tally {
        let mut t = Tally::default();
        for line in lines {
            t.add_line(line.as_bytes());
        }
        t
    }

    fn line(verdict: &str, path: &str) -> String {
        format!(
            r#"{{"verdict":"{verdict}","method":"GET","path":"{path}","shadow_name":"duplex_0","diff":{{"json_path":"$.a"}}}}"#
        )
    }

    #[test]
    fn report_summary_says_safe_when_nothing_regressed() {
        let mut lines: Vec<_> = (0..10_000)
            .map(|i| line("same", &format!("/u/{i}")))
            .collect();
        lines.push(r#"{"verdict":"noise","noise_of":"header","diff":{"header":"date"}}"#.into());
        let t = tally(&lines);
        assert_eq!(
            headline(&t),
            Headline {
                safe: true,
                text: "SAFE: 0 regressions in 10,001 requests".into()
            }
        );
        let text = text(&t);
        assert!(
            text.starts_with("SAFE: 0 regressions in 10,001 requests\n"),
            "{text}"
        );
        assert!(
            text.contains("\nmismatch rate: 0% (0 of 10,001); noise, not counted: 1\n"),
            "{text}"
        );
        assert!(text.contains("\ntop differences: none\n"), "{text}");
        assert!(text.contains("\nshadow errors: none\n"), "{text}");
    }

    #[test]
    fn report_summary_names_the_worst_route() {
        let mut lines = Vec::new();
        for i in 0..100 {
            lines.push(line(
                if i < 40 { "body" } else { "same" },
                &format!("/users/{i}"),
            ));
            lines.push(line(if i < 2 { "body" } else { "same" }, "/health"));
        }
        let t = tally(&lines);
        assert_eq!(
            headline(&t).text,
            "REGRESSIONS: 21% of requests differ, worst route GET /users/{id} 40%"
        );
        let text = text(&t);
        let routes: Vec<_> = text
            .lines()
            .skip_while(|l| *l != "routes, worst first:")
            .skip(1)
            .take(2)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            routes,
            [
                "GET /users/{id} 100 requests 40 differ (40%)",
                "GET /health 100 requests 2 differ (2%)"
            ]
        );
        assert!(text.contains("\n         42  body at $.a\n"), "{text}");
    }

    #[test]
    fn report_summary_keeps_control_characters_off_the_terminal() {
        // A JSON escape: the log carries the control character, the terminal must not.
        let t = tally(&[line("body", "/\\u001b[2J")]);
        let text = text(&t);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("GET /\\u{1b}[2J"), "{text}");
    }
}
