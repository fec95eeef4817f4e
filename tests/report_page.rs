//! `ember-proxy report FILE`: a compare log of a known pattern (1,000 requests over three
//! routes: one with 40% body differences at `$.user.email`, a noisy `date` header judged
//! noise everywhere else, ten shadow timeouts spread over the run, three lines that are
//! not comparisons) read by the real binary; the text summary's numbers checked exactly,
//! the HTML page checked as a file and as a real headless Chromium renders it (Debian's
//! `chromium`, installed by `.ci/run`), and its screenshot taken (saved as `docs/report.png` with
//! `EMBER_UPDATE_SCREENSHOTS=1`).
//! Then the ways it refuses: a missing log, a log with nothing to compare.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::child::{Child, EMBER_PROXY};

/// Comparisons in the log.
const REQUESTS: u64 = 1000;
/// How long the binary and Chromium may take.
const LIMIT: Duration = Duration::from_secs(60);

/// A scratch directory of this test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ember-report-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Comparison `i` of the pattern, as `ember::proxy::compare` writes it (one second
/// apart from 15:00:00 UTC):
/// - `i % 10` in 0..4: `GET /users/{i}?x=1`; `(i / 10) % 5 < 2` of them (40%) differ in
///   the body at `$.user.email`, the others only in the `date` header (noise);
/// - `i % 10` in 4..7: `GET /orders/{uuid}/items`, noise, except `i % 100 == 55`: a
///   shadow timeout (ten of them, 100 s apart);
/// - `i % 10` in 7..10: `POST /search?q=…`, the same answer.
///
/// The primary takes 1.0 to 10.9 ms (`i % 100`), the shadow twice as long.
fn comparison(i: u64) -> Value {
    let primary_ms = 1.0 + (i % 100) as f64 / 10.0;
    let noisy_date = json!({
        "header": "date",
        "primary": "Mon, 30 Nov 2026 15:00:00 GMT",
        "shadow": "Mon, 30 Nov 2026 15:00:01 GMT",
    });
    let (method, path, verdict, diff, excerpt) = match i % 10 {
        0..4 if (i / 10) % 5 < 2 => {
            let body = |email: &str| {
                format!(
                    r#"{{"user":{{"id":{i},"email":"{email}","name":"<script>alert(1)</script>"}}}}"#
                )
            };
            let (primary, shadow) = (
                body(&format!("u{i}@example.com")),
                body(&format!("U{i}@EXAMPLE.COM")),
            );
            let diff = json!({
                "offset": primary.find('@').map_or(0, |at| at - 1 - i.to_string().len()),
                "primary_len": primary.len(),
                "shadow_len": shadow.len(),
                "json_path": "$.user.email",
                "hashed": false,
            });
            let excerpt = json!({"primary": primary, "shadow": shadow});
            ("GET", format!("/users/{i}?x=1"), "body", diff, excerpt)
        }
        0..4 => (
            "GET",
            format!("/users/{i}?x=1"),
            "noise",
            noisy_date,
            Value::Null,
        ),
        4..7 => {
            let path = format!("/orders/{i:08x}-0000-4000-8000-{:012x}/items", i * 7);
            if i % 100 == 55 {
                (
                    "GET",
                    path,
                    "shadow_error",
                    json!({"error": "timeout"}),
                    Value::Null,
                )
            } else {
                ("GET", path, "noise", noisy_date, Value::Null)
            }
        }
        _ => (
            "POST",
            format!("/search?q=w{i}"),
            "same",
            Value::Null,
            Value::Null,
        ),
    };
    let shadow = if verdict == "shadow_error" {
        json!({"status": null, "ms": 5000.0, "bytes": 0, "error": "timeout"})
    } else {
        json!({"status": 200, "ms": primary_ms * 2.0, "bytes": 512, "error": null})
    };
    json!({
        "time": format!("2026-11-30T15:{:02}:{:02}.{:03}Z", i / 60, i % 60, i * 37 % 1000),
        "session": i / 4,
        "request": i % 4 + 1,
        "mode": "http",
        "method": method,
        "path": path,
        "shadow_name": "duplex_0",
        "verdict": verdict,
        "noise_of": if verdict == "noise" { json!("header") } else { Value::Null },
        "primary": {"status": 200, "ms": primary_ms, "bytes": 512},
        "shadow": shadow,
        "diff": diff,
        "excerpt": excerpt,
    })
}

/// The pattern's log, with a blank line, a line of text and a line with an unknown
/// verdict after the 500th comparison (lines 501 to 503).
fn write_log(path: &Path) {
    let mut log = String::new();
    for i in 0..REQUESTS {
        if i == 500 {
            log.push_str("\nnot json at all\n{\"verdict\":\"maybe\"}\n");
        }
        log.push_str(&comparison(i).to_string());
        log.push('\n');
    }
    std::fs::write(path, log).expect("write the compare log");
}

/// Runs `ember-proxy ARGS`; its exit status, stdout and stderr.
fn ember_proxy(args: &[&Path]) -> (ExitStatus, String, String) {
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let status = child.wait_exit(LIMIT);
    (status, child.stdout(), child.stderr())
}

/// `line` with its runs of spaces made one (the summary aligns its columns).
fn squashed(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Chromium, headless, on `url` with `args`, with a profile of its own (named after
/// `what` it does); its stdout.
fn chromium(what: &str, args: &[&str], url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "ember-chromium-report-{what}-{}",
        std::process::id()
    ));
    let mut child = Child::spawn(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let status = child.wait_exit(LIMIT);
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium: {}", child.describe());
    child.stdout()
}

#[test]
fn the_report_of_a_known_log_gives_its_numbers_in_text_and_in_chromium() {
    let scratch = Scratch::new("known");
    let (log, page) = (scratch.path("compare.log"), scratch.path("out.html"));
    write_log(&log);
    let (status, stdout, stderr) =
        ember_proxy(&[Path::new("report"), &log, Path::new("--html"), &page]);
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert_eq!(
        stderr,
        format!(
            "ember-proxy: skipped 3 of 1,003 lines of {} that are not comparisons (the first: line 501)\n",
            log.display()
        )
    );

    let lines: Vec<&str> = stdout.lines().collect();
    let latency_at = lines
        .iter()
        .position(|l| l.starts_with("latency ms"))
        .unwrap_or_else(|| panic!("no latency table:\n{stdout}"));
    let expected_before_latency = [
        "REGRESSIONS: 17% of requests differ, worst route GET /users/{id} 40%",
        "1,000 requests compared, 2026-11-30 15:00:00 to 2026-11-30 15:16:39 UTC",
        "duplex_0: 1,000 requests, 170 differ (17%), 530 noise",
        "mismatch rate: 17% (170 of 1,000: 160 body, 10 shadow_error); noise, not counted: 530",
        "routes, worst first:",
        "GET /users/{id} 400 requests 160 differ (40%)",
        "GET /orders/{uuid}/items 300 requests 10 differ (3.3%)",
        "POST /search 300 requests 0 differ (0%)",
        "top differences:",
        "160 body at $.user.email",
        "10 shadow error: timeout",
        "noise (not counted):",
        "530 header date",
    ];
    let got: Vec<String> = lines[..latency_at].iter().map(|l| squashed(l)).collect();
    assert_eq!(got, expected_before_latency, "\n{stdout}");
    assert_eq!(squashed(lines[latency_at]), "latency ms p50 p90 p99");
    // The histogram keeps each latency to within about 2.2%.
    for (row, name, want) in [
        (latency_at + 1, "primary", [5.9, 9.9, 10.8]),
        (latency_at + 2, "duplex_0", [11.8, 20.0, 21.8]),
    ] {
        let cells: Vec<&str> = lines[row].split_whitespace().collect();
        assert_eq!(cells.first(), Some(&name), "{}", lines[row]);
        for (cell, want) in cells[1..].iter().zip(want) {
            let got: f64 = cell.parse().unwrap_or_else(|_| panic!("{}", lines[row]));
            assert!(
                (got - want).abs() <= want * 0.025,
                "{name}: {got} is not {want}: {}",
                lines[row]
            );
        }
        assert_eq!(cells.len(), 4, "{}", lines[row]);
    }
    assert_eq!(
        &lines[latency_at + 3..],
        [
            "shadow errors: 10 (timeout 10)".to_string(),
            format!("HTML: {}", page.display())
        ]
    );

    // The page as written: complete without its script, everything from the log escaped.
    let html = std::fs::read_to_string(&page).expect("the page was written");
    let shown = [
        "id=\"verdict\">REGRESSIONS: 17% of requests differ, worst route GET /users/{id} 40%<",
        "id=\"compared\">1,000<",
        "id=\"regressions\">170<",
        "id=\"mismatch-rate\">17%<",
        "id=\"noise\">530<",
        "id=\"shadow-errors\">10<",
        "id=\"skipped\">3<",
        "<tr><td>GET /users/{id}</td><td data-v=\"400\">400</td><td data-v=\"160\">160</td>\
         <td class=\"rate\" data-v=\"0.400000\">40%",
        "<tr><td>GET /orders/{uuid}/items</td><td data-v=\"300\">300</td><td data-v=\"10\">10</td>\
         <td class=\"rate\" data-v=\"0.033333\">3.3%",
        "<span class=\"n\">160</span> body at $.user.email",
        "<mark>u0@example.com</mark>",
        "<mark>U0@EXAMPLE.COM</mark>",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "<tr><td>header date</td><td data-v=\"530\">530</td><td>53%</td>",
        "<tr><td>timeout</td><td data-v=\"10\">10</td><td>1%</td></tr>",
        "<svg class=\"chart\" id=\"latency-chart\"",
        ">latency, ms (log scale)<",
        "<svg class=\"chart\" id=\"errors-chart\"",
        ">shadow errors per 30 s<",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
    ];
    for part in shown {
        assert!(html.contains(part), "{part} not in the page:\n{html}");
    }
    assert!(
        !html.contains("<script>alert"),
        "unescaped excerpt:\n{html}"
    );
    for outside in ["src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(outside),
            "{outside}: the page must stand alone"
        );
    }

    // The page as a person sees it: rendered by Chromium, its script run.
    let url = format!("file://{}", page.display());
    let dom = chromium("dom", &["--virtual-time-budget=2000", "--dump-dom"], &url);
    for part in shown.iter().filter(|p| !p.starts_with("<meta")) {
        assert!(
            dom.contains(part),
            "{part} not in the rendered page:\n{dom}"
        );
    }
    assert!(!dom.contains("<script>alert"), "unescaped excerpt:\n{dom}");
    assert_eq!(dom.matches("<polyline").count(), 2, "a curve per side");
    assert_eq!(
        dom.matches("<rect class=\"error\"").count(),
        10,
        "a bar per timeout"
    );

    // Into the test's directory; `EMBER_UPDATE_SCREENSHOTS=1` writes docs/report.png
    // instead (how the one in docs/ was made).
    let screenshot = if std::env::var_os("EMBER_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.png")
    } else {
        page.with_extension("png")
    };
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        "screenshot",
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1200,1600",
        ],
        &url,
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a screenshot: {} bytes",
        png.len()
    );
}

#[test]
fn without_html_the_page_goes_next_to_the_log_and_a_safe_log_says_safe() {
    let scratch = Scratch::new("safe");
    let log = scratch.path("safe.log");
    let mut lines = String::new();
    for i in 0..10_000u64 {
        let mut line = comparison(i % REQUESTS);
        line["verdict"] = json!("same");
        line["diff"] = Value::Null;
        line["excerpt"] = Value::Null;
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::write(&log, lines).expect("write the compare log");
    let (status, stdout, stderr) = ember_proxy(&[Path::new("report"), &log]);
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert_eq!(stderr, "");
    let page = scratch.path("safe.log.html");
    assert_eq!(
        stdout.lines().next(),
        Some("SAFE: 0 regressions in 10,000 requests")
    );
    assert_eq!(
        stdout.lines().last().map(str::to_owned),
        Some(format!("HTML: {}", page.display()))
    );
    let html = std::fs::read_to_string(&page).expect("the page was written next to the log");
    assert!(html.contains(
        "<p class=\"verdict safe\" id=\"verdict\">SAFE: 0 regressions in 10,000 requests</p>"
    ));
}

#[test]
fn a_missing_log_is_one_line_on_stderr_and_exit_1() {
    let scratch = Scratch::new("missing");
    let log = scratch.path("nowhere.log");
    let (status, stdout, stderr) = ember_proxy(&[Path::new("report"), &log]);
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "ember-proxy: cannot read {}: No such file or directory (os error 2)\n",
            log.display()
        )
    );
}

#[test]
fn a_log_without_comparisons_has_nothing_to_report_and_writes_no_page() {
    let scratch = Scratch::new("empty");
    let (log, page) = (scratch.path("garbage.log"), scratch.path("garbage.html"));
    std::fs::write(&log, "\n{\"no\":\"verdict\"}\n\u{1b}[2J binary junk\n").expect("write");
    let (status, stdout, stderr) =
        ember_proxy(&[Path::new("report"), &log, Path::new("--html"), &page]);
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stdout, "");
    let shown = log.display();
    assert_eq!(
        stderr,
        format!(
            "ember-proxy: skipped 3 of 3 lines of {shown} that are not comparisons (the first: line 1)\n\
             ember-proxy: nothing to report: {shown} holds no comparison\n"
        )
    );
    assert!(!page.exists());
}
