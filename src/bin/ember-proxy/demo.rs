//! `ember-proxy demo`: shadow testing told in one process, then exit (issue 12).
//!
//! The reactor thread runs three copies of a small JSON app on ember: "prod", a second
//! prod (the *reference*) and a "candidate" whose `GET /orders/{id}` forgets the bulk
//! discount — the deliberate regression. All three stamp every answer with
//! `X-Served-At: <nanoseconds>`, a header that differs every time and that no default
//! rule ignores: only the reference can tell it is noise. In front of them runs the proxy
//! that `ember-proxy -r PROD -d CANDIDATE --compare --reference PROD2 --compare-log FILE`
//! starts, built from that very command line. A client thread sends keep-alive
//! requests over the routes through the proxy, waits until every comparison is counted,
//! and stops the reactor; then `ember-proxy report` reads the log, prints its summary
//! and writes the page, in a fresh directory under the system's temp dir.
//!
//! The demo owns its apps, its client and its checks; the proxy, the comparison and the
//! report are the binary's own, unchanged. It checks that the story happened and exits 1
//! if not: the clients got prod's answers only, every request was compared,
//! `GET /orders/{id}` is the only route that regressed, and the noisy header was
//! cancelled (no header regression).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember::proxy::compare::{CompareLine, Exchange, Verdict, VerdictKind};
use ember::{Context, Handler, Reactor, ReactorHandle};

use crate::args::{Command, DemoArgs, ReportArgs};
use crate::logging::{AccessLog, LogWriter};
use crate::plan::{Plan, ShadowCounts, ShadowReport};

/// The routes the client sends, in turn; `-n` requests go to each.
const ROUTES: [&str; 3] = ["/users/{id}", "/orders/{id}", "/health"];
/// The route whose answers the candidate gets wrong.
const REGRESSED_ROUTE: &str = "GET /orders/{id}";
/// The noisy header every copy sends (not in the default ignored list).
const NOISY_HEADER: &str = "x-served-at";
/// Keep-alive client connections the requests are spread over.
const CONNECTIONS: usize = 4;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the comparisons may take to arrive after the last answer.
const COMPARE_WAIT: Duration = Duration::from_secs(5);

/// Which code an app runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Prod,
    /// Prod with one bug: orders of 4 items or more lose their discount in the total.
    Candidate,
}

/// The JSON answer of `version` to `GET path`: the status and the body.
fn respond(version: Version, path: &str) -> (u16, String) {
    let id = |prefix: &str| path.strip_prefix(prefix)?.parse::<u64>().ok();
    if path == "/health" {
        return (200, r#"{"status":"ok"}"#.into());
    }
    if let Some(id) = id("/users/") {
        let plan = if id % 3 == 0 { "pro" } else { "free" };
        return (
            200,
            format!(
                r#"{{"id":{id},"name":"user {id}","email":"u{id}@example.com","plan":"{plan}"}}"#
            ),
        );
    }
    if let Some(id) = id("/orders/") {
        let items = id % 5 + 1;
        let subtotal = items * (1250 + id % 7 * 100);
        let discount = if items >= 4 { subtotal / 10 } else { 0 };
        let total = match version {
            Version::Prod => subtotal - discount,
            Version::Candidate => subtotal,
        };
        return (
            200,
            format!(
                r#"{{"id":{id},"user_id":{},"items":{items},"subtotal_cents":{subtotal},"discount_cents":{discount},"total_cents":{total},"status":"shipped"}}"#,
                id % 97 + 1
            ),
        );
    }
    (404, r#"{"error":"not found"}"#.into())
}

/// The id of the `k`th request to a route: over five requests, two orders are big enough
/// for the discount, the first among them.
fn id_of(k: usize) -> u64 {
    1003 + 37 * k as u64
}

/// One connection to an app: answers each whole request in turn, keep-alive.
struct App {
    /// What `X-Served-By` says (a host name, as in production; ignored by default).
    name: &'static str,
    version: Version,
    clock: Stamps,
    served: Arc<AtomicU64>,
    input: Vec<u8>,
}

/// The `X-Served-At` clock every copy shares: nanoseconds since the epoch, never the same
/// twice, so the header differs on every pair of answers.
#[derive(Clone, Default)]
struct Stamps(Rc<Cell<u128>>);

impl Stamps {
    fn next(&self) -> u128 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let stamp = now.max(self.0.get() + 1);
        self.0.set(stamp);
        stamp
    }
}

impl Handler for App {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.input.extend_from_slice(data);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            let head_len = match request.parse(&self.input) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return,
                Err(_) => {
                    cx.send_data(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                    cx.close_after_writing();
                    return;
                }
            };
            let header = |name: &str| header_value(request.headers, name);
            let body_len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if self.input.len() < head_len + body_len {
                return; // the body is still coming
            }
            let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let (status, body) = respond(self.version, request.path.unwrap_or("/"));
            self.input.drain(..head_len + body_len);
            self.served.fetch_add(1, Ordering::Relaxed);
            let reason = match status {
                200 => "OK",
                _ => "Not Found",
            };
            let answer = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nX-Served-By: {}\r\nX-Served-At: {}\r\nContent-Length: {}\r\n\r\n{body}",
                self.name,
                self.clock.next(),
                body.len()
            );
            cx.send_data(answer.as_bytes());
            if closes {
                cx.close_after_writing();
                return;
            }
        }
    }
}

/// The three apps' request counters.
#[derive(Clone, Default)]
struct Served {
    prod: Arc<AtomicU64>,
    candidate: Arc<AtomicU64>,
    reference: Arc<AtomicU64>,
}

/// What the reactor thread tells the client once everything listens.
struct Running {
    prod: SocketAddr,
    candidate: SocketAddr,
    reference: SocketAddr,
    proxy: SocketAddr,
    /// The proxy's command line, as a user would type it.
    command: String,
    reactor: ReactorHandle,
}

/// What the client thread saw.
struct Outcome {
    sent: u64,
    /// Answers with prod's status and body, from prod's host.
    from_prod: u64,
    /// Comparisons counted by the proxy when the client stopped waiting.
    counted: u64,
    /// Requests not mirrored, by the proxy's count.
    skipped: u64,
}

pub fn run(args: &DemoArgs) -> ExitCode {
    let dir = match fresh_dir() {
        Ok(dir) => dir,
        Err(e) => return fail(&format!("cannot make a directory for the log: {e}")),
    };
    let log = dir.join("compare.log");
    let page = dir.join("report.html");
    let writer = match LogWriter::start(&AccessLog::Off, Some(&log)) {
        Ok(writer) => writer,
        Err(e) => return fail(&e.to_string()),
    };
    let counts = Arc::new(ShadowCounts::default());
    let report = ShadowReport {
        log: Some(writer.handle()),
        counts: Arc::clone(&counts),
    };
    let served = Served::default();
    let (tx, rx) = mpsc::channel::<Running>();
    let per_route = args.requests;
    let client = thread::spawn({
        let counts = Arc::clone(&counts);
        move || -> Result<Outcome, String> {
            let running = rx
                .recv()
                .map_err(|_| "the reactor did not start".to_owned())?;
            let outcome = drive(&running, per_route, &counts);
            running.reactor.stop();
            outcome
        }
    });

    let verbose = args.verbose;
    let log_path = log.clone();
    let apps = served.clone();
    let started = Reactor::run(move |r| {
        let clock = Stamps::default();
        let mut app = |name: &'static str, version, served: &Arc<AtomicU64>| {
            let (clock, served) = (clock.clone(), Arc::clone(served));
            let id = r.start_server("127.0.0.1:0", move || App {
                name,
                version,
                clock: clock.clone(),
                served: Arc::clone(&served),
                input: Vec::new(),
            })?;
            Ok::<_, io::Error>(r.server_addr(id).expect("TCP servers have an address"))
        };
        let prod = app("prod-1", Version::Prod, &apps.prod)?;
        let reference = app("prod-2", Version::Prod, &apps.reference)?;
        let candidate = app("candidate-1", Version::Candidate, &apps.candidate)?;
        let mut command = vec![
            "-l".to_owned(),
            "127.0.0.1:0".to_owned(),
            "-r".to_owned(),
            prod.to_string(),
            "-d".to_owned(),
            candidate.to_string(),
            "--compare".to_owned(),
            "--reference".to_owned(),
            reference.to_string(),
            "--compare-log".to_owned(),
            log_path.display().to_string(),
        ];
        if verbose {
            command.push("-v".to_owned());
        }
        let mut plan = match crate::args::parse(&command) {
            Ok(Command::Run(run)) => Plan::resolve(&run).map_err(io::Error::other)?,
            Ok(_) => return Err(io::Error::other("the proxy's command line is not a run")),
            Err(e) => return Err(io::Error::other(e)),
        };
        plan.report = Some(report);
        let proxy = plan.start(r)?.server;
        let proxy = proxy.local_addr().expect("TCP servers have an address");
        let _ = tx.send(Running {
            prod,
            candidate,
            reference,
            proxy,
            command: format!("ember-proxy {}", command.join(" ")),
            reactor: r.handle(),
        });
        Ok(())
    });
    let outcome = match (started, client.join()) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(()), Ok(outcome)) => outcome,
        (Ok(()), Err(_)) => Err("the client thread panicked".into()),
    };
    // Every comparison the reactor made is queued: written once this returns.
    writer.finish();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => return fail(&e),
    };
    tell(&outcome, &served, &log, &page)
}

/// The client thread: tells what runs, sends `per_route` requests to each route, waits
/// for their comparisons.
fn drive(running: &Running, per_route: usize, counts: &ShadowCounts) -> Result<Outcome, String> {
    say(&format!(
        "ember-proxy demo: shadow testing a candidate against prod, all in this process\n\
         \x20 prod       {}  answers the clients\n\
         \x20 candidate  {}  the new version; its bug: {REGRESSED_ROUTE} forgets the bulk discount\n\
         \x20 reference  {}  a second copy of prod: what two prods disagree on is noise\n\
         \x20 all three stamp every answer with X-Served-At: <nanoseconds>, which always differs\n\
         \x20 proxy      {}  {}\n",
        running.prod, running.candidate, running.reference, running.proxy, running.command
    ));
    let started = Instant::now();
    let total = per_route * ROUTES.len();
    let connections = CONNECTIONS.min(total);
    let mut clients = (0..connections)
        .map(|_| Client::connect(running.proxy))
        .collect::<Result<Vec<_>, _>>()?;
    let mut from_prod = 0;
    for i in 0..total {
        let path = ROUTES[i % ROUTES.len()].replace("{id}", &id_of(i / ROUTES.len()).to_string());
        let answer = clients[i % connections].get(&path)?;
        let (status, body) = respond(Version::Prod, &path);
        if answer.status == status && answer.body == body.as_bytes() && answer.served_by == "prod-1"
        {
            from_prod += 1;
        }
    }
    let sent = started.elapsed();
    // Each comparison waits for the candidate's and the reference's answers too.
    let deadline = Instant::now() + COMPARE_WAIT;
    let counted = || {
        counts
            .verdicts
            .snapshot()
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    while counted() < total as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    let routes: Vec<&str> = ROUTES.iter().map(|r| r.trim_start_matches('/')).collect();
    say(&format!(
        "\nsent {total} requests through the proxy in {:.2} s: {per_route} to each of GET /{}, on {connections} keep-alive connections\n",
        sent.as_secs_f64(),
        routes.join(", /"),
    ));
    Ok(Outcome {
        sent: total as u64,
        from_prod,
        counted: counted(),
        skipped: counts.skipped.load(Ordering::Relaxed),
    })
}

/// One keep-alive client connection.
struct Client {
    stream: TcpStream,
    input: Vec<u8>,
}

/// One answer, as the client saw it.
struct Answer {
    status: u16,
    served_by: String,
    body: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client, String> {
        let failed = |e: io::Error| format!("cannot connect to the proxy at {addr}: {e}");
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(failed)?;
        stream.set_nodelay(true).map_err(failed)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(failed)?;
        Ok(Client {
            stream,
            input: Vec::new(),
        })
    }

    /// `GET path`, and its answer (a Content-Length body).
    fn get(&mut self, path: &str) -> Result<Answer, String> {
        let failed = |e: io::Error| format!("GET {path} through the proxy: {e}");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: ember-proxy-demo\r\nAccept: application/json\r\n\r\n"
        );
        self.stream.write_all(request.as_bytes()).map_err(failed)?;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(answer) = self.take_answer(path)? {
                return Ok(answer);
            }
            match self.stream.read(&mut chunk).map_err(failed)? {
                0 => {
                    return Err(format!(
                        "GET {path} through the proxy: closed before the answer"
                    ));
                }
                n => self.input.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The first answer in `input`, once it is whole.
    fn take_answer(&mut self, path: &str) -> Result<Option<Answer>, String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&self.input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("GET {path} through the proxy: a bad answer: {e}")),
        };
        let header = |name: &str| header_value(response.headers, name);
        let body_len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("GET {path} through the proxy: no Content-Length"))?;
        if self.input.len() < head_len + body_len {
            return Ok(None);
        }
        let answer = Answer {
            status: response.code.unwrap_or(0),
            served_by: header("x-served-by").unwrap_or_default(),
            body: self.input[head_len..head_len + body_len].to_vec(),
        };
        self.input.drain(..head_len + body_len);
        Ok(Some(answer))
    }
}

/// One route's comparisons, read back from the log.
#[derive(Default)]
struct RouteCount {
    compared: u64,
    regressions: u64,
}

/// What the compare log says, read with the proxy's own reader.
#[derive(Default)]
struct LogCount {
    lines: u64,
    unreadable: u64,
    routes: BTreeMap<String, RouteCount>,
    header_regressions: u64,
    noise: u64,
    noisy_header: u64,
}

fn count_log(log: &Path) -> io::Result<LogCount> {
    let text = std::fs::read_to_string(log)?;
    let mut count = LogCount::default();
    for line in text.lines() {
        count.lines += 1;
        let Ok(line) = CompareLine::parse(line) else {
            count.unreadable += 1;
            continue;
        };
        let Exchange::Http { method, path, .. } = &line.exchange else {
            count.unreadable += 1;
            continue;
        };
        let route = count.routes.entry(route_of(method, path)).or_default();
        route.compared += 1;
        match &line.verdict {
            Verdict::Same => {}
            Verdict::Noise(difference) => {
                count.noise += 1;
                if difference
                    .to_string()
                    .starts_with(&format!("header {NOISY_HEADER}:"))
                {
                    count.noisy_header += 1;
                }
            }
            Verdict::Differs(_) | Verdict::ShadowFailed(_) => route.regressions += 1,
        }
        if line.verdict.kind() == VerdictKind::Header {
            count.header_regressions += 1;
        }
    }
    Ok(count)
}

/// `GET /orders/{id}` for `GET /orders/1003`, as the report names routes.
fn route_of(method: &str, path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                s
            }
        })
        .collect();
    format!("{method} {}", segments.join("/"))
}

/// The checks, then the report: its summary, the page's path last.
fn tell(outcome: &Outcome, served: &Served, log: &Path, page: &Path) -> ExitCode {
    let count = match count_log(log) {
        Ok(count) => count,
        Err(e) => return fail(&format!("cannot read {}: {e}", log.display())),
    };
    let sent = outcome.sent;
    let prod = served.prod.load(Ordering::Relaxed);
    let candidate = served.candidate.load(Ordering::Relaxed);
    let reference = served.reference.load(Ordering::Relaxed);
    let regressed: Vec<(&String, &RouteCount)> = count
        .routes
        .iter()
        .filter(|(_, r)| r.regressions > 0)
        .collect();
    let only_route = match regressed.as_slice() {
        [(route, r)] if *route == REGRESSED_ROUTE => Some(*r),
        _ => None,
    };
    let others: Vec<String> = regressed
        .iter()
        .map(|(route, r)| format!("{route} {} of {}", r.regressions, r.compared))
        .collect();
    let checks = [
        (
            outcome.from_prod == sent && prod == sent,
            format!(
                "the clients got prod's answers only ({} of {sent})",
                outcome.from_prod
            ),
        ),
        (
            count.lines == sent && count.unreadable == 0 && candidate == sent && reference == sent,
            format!(
                "every request was mirrored to the candidate and the reference and compared \
                 ({} comparisons in the log, {} counted by the proxy, {} not mirrored)",
                count.lines, outcome.counted, outcome.skipped
            ),
        ),
        (
            only_route.is_some(),
            match only_route {
                Some(r) => format!(
                    "{REGRESSED_ROUTE} is the worst route and the only one that regressed \
                     ({} of {} differ)",
                    r.regressions, r.compared
                ),
                None => format!(
                    "{REGRESSED_ROUTE} should be the only route that regressed; regressed: {}",
                    if others.is_empty() {
                        "none".into()
                    } else {
                        others.join(", ")
                    }
                ),
            },
        ),
        (
            count.header_regressions == 0 && count.noisy_header > 0,
            format!(
                "the noise was cancelled by the reference: {} header regressions, {} answers \
                 differing only in X-Served-At set aside as noise",
                count.header_regressions, count.noisy_header
            ),
        ),
    ];
    let mut lines = String::new();
    for (ok, line) in &checks {
        let mark = if *ok { "ok  " } else { "FAIL" };
        lines.push_str(&format!("  [{mark}] {line}\n"));
    }
    lines.push_str(&format!(
        "\nember-proxy report {} --html {}\n",
        log.display(),
        page.display()
    ));
    say(&lines);
    // The summary, the page, and its path last (the report's own output).
    let reported = crate::report::run(&ReportArgs {
        log: log.to_path_buf(),
        html: page.to_path_buf(),
    });
    let on_the_page =
        std::fs::read_to_string(page).is_ok_and(|html| html.contains(REGRESSED_ROUTE));
    let failed = checks.iter().filter(|(ok, _)| !ok).count();
    if failed > 0 {
        return fail(&format!("{failed} of {} checks failed", checks.len()));
    }
    if reported != ExitCode::SUCCESS || !on_the_page {
        return fail(&format!(
            "the page {} does not name {REGRESSED_ROUTE}",
            page.display()
        ));
    }
    ExitCode::SUCCESS
}

/// A new directory under the system's temp dir for the log and the page.
fn fresh_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let pid = std::process::id();
    let mut n = 0u32;
    loop {
        let dir = base.join(match n {
            0 => format!("ember-proxy-demo-{pid}"),
            n => format!("ember-proxy-demo-{pid}-{n}"),
        });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
}

/// Lines on stdout; a closed stdout loses them instead of panicking.
fn say(text: &str) {
    let _ = io::stdout().lock().write_all(text.as_bytes());
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(io::stderr().lock(), "ember-proxy demo: {message}");
    ExitCode::from(1)
}

/// The value of header `name` (any case) among parsed `headers`, trimmed.
fn header_value(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_candidate_differs_from_prod_only_on_big_orders() {
        let differs =
            |path: &str| respond(Version::Prod, path) != respond(Version::Candidate, path);
        let orders: Vec<bool> = (0..5)
            .map(|k| differs(&format!("/orders/{}", id_of(k))))
            .collect();
        assert_eq!(orders, [true, false, false, true, false]);
        for k in 0..20 {
            assert!(!differs(&format!("/users/{}", id_of(k))));
        }
        assert!(!differs("/health"));
        assert_eq!(respond(Version::Prod, "/nope").0, 404);
    }

    #[test]
    fn demo_routes_are_named_as_the_report_names_them() {
        assert_eq!(route_of("GET", "/orders/1003"), REGRESSED_ROUTE);
        assert_eq!(route_of("GET", "/health"), "GET /health");
    }
}
