//! The admin HTTP server over real loopback sockets, on a reactor it shares with an echo
//! server standing in for the proxied traffic: what it answers, how it frames answers on
//! one connection, and that no admin client — stalled, flooding, over-long, never
//! reading — holds up another client or the traffic beside it.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ember::Reactor;
use ember::admin::{
    self, AdminServer, AdminStats, DEFAULT_MAX_CONNECTIONS, DEFAULT_RESPONSE_HIGH_WATER,
    Exposition, Histogram, Limits, PROMETHEUS_CONTENT_TYPE, Response, Routes,
};

use support::IO_TIMEOUT;
use support::backends::{self, Echo};
use support::clients::{self, wait_until};
use support::reactor_thread::{ReactorThread, watch_peak_queue};

const HELLO: &str = "hello, admin\n";
/// The size of `/big`'s body.
const BIG: usize = 32 * 1024;

/// An admin server and an echo server on one reactor.
struct Site {
    admin: AdminServer,
    addr: SocketAddr,
    echo: SocketAddr,
}

fn routes(stats: Rc<OnceCell<AdminStats>>) -> Routes {
    Routes::new()
        .get("/hello", |_| Response::text(200, HELLO))
        .get("/echo", |req| {
            Response::text(
                200,
                format!("{} {}", req.method(), req.query().unwrap_or("-")),
            )
        })
        .get("/whoami", |req| {
            Response::text(200, format!("{:?}", req.peer_addr()))
        })
        .get("/big", |_| {
            Response::new(200, "application/octet-stream", vec![b'x'; BIG])
        })
        .get("/panic", |_| panic!("this route fails on purpose"))
        .get("/metrics", move |_| {
            let latency = Histogram::new(&[0.001, 0.01, 0.1]);
            for ms in [0, 2, 5, 50, 500] {
                latency.observe(Duration::from_millis(ms));
            }
            let mut page = Exposition::new();
            page.counter("app_requests_total", "Requests.\nAll of them.", 12u64)
                .gauge_with("app_backend_up", "Up.", &[("backend", "10.0.0.1:80")], true)
                .histogram_with(
                    "app_latency_seconds",
                    "Latency.",
                    &[("pool", "a")],
                    &latency,
                )
                .gauge_with(
                    "app_backend_up",
                    "Up.",
                    &[("backend", "odd \"name\" \\ with\nnewline")],
                    false,
                )
                .histogram_with(
                    "app_latency_seconds",
                    "Latency.",
                    &[("pool", "b")],
                    &latency,
                )
                .gauge("app_temperature", "A float.", -1.5);
            if let Some(stats) = stats.get() {
                stats.expose(&mut page);
            }
            Response::prometheus(page.finish())
        })
}

fn start(limits: Limits) -> ReactorThread<Site> {
    ReactorThread::spawn(move |r: &mut Reactor| {
        let stats = Rc::new(OnceCell::new());
        let admin = admin::serve_with(r, "127.0.0.1:0", routes(Rc::clone(&stats)), limits)?;
        let _ = stats.set(admin.stats().clone());
        let echo = backends::serve(r, || Echo)?;
        Ok(Site {
            addr: admin.local_addr().expect("a TCP server has an address"),
            admin,
            echo,
        })
    })
}

/// One answer as a client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }
}

/// A blocking HTTP client reading answers off one connection, every read bounded.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = clients::connect(addr);
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send a request");
    }

    fn get(&mut self, path: &str) -> Answer {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes());
        self.answer()
    }

    /// An answer with a body of its `Content-Length`.
    fn answer(&mut self) -> Answer {
        let mut answer = self.answer_head();
        let length: usize = answer
            .header("content-length")
            .expect("every answer has a Content-Length")
            .parse()
            .unwrap();
        answer.body = vec![0; length];
        self.reader.read_exact(&mut answer.body).expect("the body");
        answer
    }

    /// An answer's status line and headers (all an answer to `HEAD` has).
    fn answer_head(&mut self) -> Answer {
        let status_line = self.line();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line:?}");
        let status = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(": ").expect("name: value");
            headers.push((name.to_owned(), value.to_owned()));
        }
        Answer {
            status,
            headers,
            body: Vec::new(),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        assert!(line.ends_with("\r\n"), "a whole CRLF line, got {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    /// Whether the server has closed: EOF or a reset, with nothing before it.
    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
            Ok(_) => panic!("more bytes where the connection should have ended"),
            Err(e) => panic!("no close: {e}"),
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    Client::connect(addr).get(path)
}

/// One echo round trip: the traffic sharing the reactor still flows.
fn echo_round_trip(addr: SocketAddr) {
    let mut stream = clients::connect(addr);
    stream.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

#[test]
fn get_answers_with_the_routes_body_status_length_and_type() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    let answer = client.get("/hello");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(answer.header("content-length"), Some("13"));
    assert_eq!(answer.header("connection"), None);
    assert_eq!(answer.text(), HELLO);
    // Keep-alive: the same connection takes another request.
    assert_eq!(client.get("/hello").text(), HELLO);
    assert_eq!(site.value.admin.stats().requests_answered(), 2);
}

#[test]
fn head_sends_the_get_headers_and_no_body() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    client.send(b"HEAD /hello HTTP/1.1\r\nHost: admin\r\n\r\n");
    let head = client.answer_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("13"));
    assert_eq!(
        head.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    // Had a body followed, this would read it as the next status line.
    assert_eq!(client.get("/echo?after-head").text(), "GET after-head");
}

#[test]
fn the_query_string_reaches_the_route_but_is_not_part_of_the_match() {
    let site = start(Limits::default());
    assert_eq!(get(site.value.addr, "/echo?a=1&b").text(), "GET a=1&b");
    assert_eq!(get(site.value.addr, "/hello?x=y").text(), HELLO);
}

#[test]
fn the_route_sees_the_clients_address() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    let me = client.stream.local_addr().unwrap();
    assert_eq!(client.get("/whoami").text(), format!("{:?}", Some(me)));
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    let missing = client.get("/nope");
    assert_eq!(missing.status, 404);
    client.send(b"POST /hello HTTP/1.1\r\nHost: admin\r\nContent-Length: 3\r\n\r\nabc");
    let wrong_method = client.answer();
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));
    // The body was skipped: the connection goes on at the next request.
    assert_eq!(client.get("/hello").status, 200);
}

#[test]
fn garbage_is_400_and_closes_the_connection() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    client.send(b"\x16\x03\x01\x00\xa5 not http\r\n\r\n");
    let answer = client.answer();
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.is_closed());
    // HTTP/1.1 without Host is refused the same way.
    let mut client = Client::connect(site.value.addr);
    client.send(b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(client.answer().status, 400);
    assert!(client.is_closed());
    assert_eq!(site.value.admin.stats().requests_refused(), 2);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    client.send(
        b"GET /echo?first HTTP/1.1\r\nHost: admin\r\n\r\n\
          GET /echo?second HTTP/1.1\r\nHost: admin\r\n\r\n",
    );
    assert_eq!(client.answer().text(), "GET first");
    assert_eq!(client.answer().text(), "GET second");

    // Many more than one turn's worth, the last closing the connection.
    let mut burst = String::new();
    for i in 0..200 {
        burst.push_str(&format!("GET /echo?{i} HTTP/1.1\r\nHost: admin\r\n\r\n"));
    }
    burst.push_str("GET /echo?last HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    client.send(burst.as_bytes());
    for i in 0..200 {
        assert_eq!(client.answer().text(), format!("GET {i}"));
    }
    let last = client.answer();
    assert_eq!(
        (last.text(), last.header("connection")),
        ("GET last", Some("close"))
    );
    assert!(client.is_closed());
}

#[test]
fn a_request_sent_one_byte_at_a_time_is_answered() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    client.stream.set_nodelay(true).unwrap();
    for byte in b"GET /echo?slowly HTTP/1.1\r\nHost: admin\r\n\r\n" {
        client.send(&[*byte]);
    }
    assert_eq!(client.answer().text(), "GET slowly");
}

#[test]
fn connection_close_and_http_1_0_close_after_the_response() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    client.send(b"GET /hello HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let answer = client.answer();
    assert_eq!(
        (answer.status, answer.header("connection")),
        (200, Some("close"))
    );
    assert!(client.is_closed());

    let mut client = Client::connect(site.value.addr);
    client.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let answer = client.answer();
    assert_eq!(
        (answer.text(), answer.header("connection")),
        (HELLO, Some("close"))
    );
    assert!(client.is_closed());
}

#[test]
fn expect_continue_gets_an_interim_answer_before_the_body() {
    let site = start(Limits::default());
    let mut client = Client::connect(site.value.addr);
    client.send(
        b"POST /hello HTTP/1.1\r\nHost: admin\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    assert_eq!(client.answer_head().status, 100);
    client.send(b"body");
    assert_eq!(client.answer().status, 405);
}

#[test]
fn over_long_requests_get_414_or_431_and_others_are_still_served() {
    let site = start(Limits::default());
    let addr = site.value.addr;

    let mut long_line = Client::connect(addr);
    long_line.send(format!("GET /{} HTTP/1.1\r\n", "a".repeat(9 * 1024)).as_bytes());
    let answer = long_line.answer();
    assert_eq!(
        (answer.status, answer.header("connection")),
        (414, Some("close"))
    );
    assert!(long_line.is_closed());

    // The whole over-long head in one write: written piecemeal, the pieces after the
    // server's answer would meet a closed socket (a reset), as with any server.
    let mut long_headers = Client::connect(addr);
    let mut head = b"GET /hello HTTP/1.1\r\nHost: admin\r\n".to_vec();
    for i in 0..100 {
        head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "b".repeat(100)).as_bytes());
    }
    long_headers.send(&head);
    assert_eq!(long_headers.answer().status, 431);
    assert!(long_headers.is_closed());

    let mut big_body = Client::connect(addr);
    big_body.send(b"POST /hello HTTP/1.1\r\nHost: admin\r\nContent-Length: 1000000\r\n\r\n");
    assert_eq!(big_body.answer().status, 413);
    assert!(big_body.is_closed());

    assert_eq!(get(addr, "/hello").text(), HELLO);
    assert_eq!(site.value.admin.stats().requests_refused(), 3);
}

#[test]
fn a_stalled_half_request_does_not_delay_another_client() {
    let site = start(Limits::default());
    let addr = site.value.addr;
    let mut stalled = Client::connect(addr);
    stalled.send(b"GET /echo?stalled HTTP/1.1\r\nHo");
    wait_until("the stalled client to be accepted", IO_TIMEOUT, || {
        site.value.admin.stats().connections_active() == 1
    });

    // The stalled request holds nothing up: were the server waiting for it, this would
    // wait out its 10 s request timeout.
    let started = Instant::now();
    assert_eq!(get(addr, "/hello").text(), HELLO);
    echo_round_trip(site.value.echo);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "another client waited {took:?}"
    );

    stalled.send(b"st: admin\r\n\r\n");
    assert_eq!(stalled.answer().text(), "GET stalled");
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once_and_a_later_client_is_served() {
    support::sys::raise_fd_limit();
    let site = start(Limits::default());
    let (addr, stats) = (site.value.addr, site.value.admin.stats().clone());

    let idle: Vec<Client> = (0..DEFAULT_MAX_CONNECTIONS)
        .map(|_| Client::connect(addr))
        .collect();
    wait_until("every idle client to be admitted", IO_TIMEOUT, || {
        stats.connections_active() == DEFAULT_MAX_CONNECTIONS as u64
    });

    // 200 more: each is closed as soon as it is accepted, and the reactor carries on.
    let mut extras: Vec<Client> = (0..200).map(|_| Client::connect(addr)).collect();
    for extra in &mut extras {
        assert!(extra.is_closed());
    }
    assert_eq!(stats.connections_over_limit(), 200);
    echo_round_trip(site.value.echo);
    // At the limit a normal client is turned away too: that is what a limit is.
    assert!(Client::connect(addr).is_closed());

    // Once the idle ones leave, a client is served again.
    drop(idle);
    wait_until("the idle clients to be gone", IO_TIMEOUT, || {
        stats.connections_active() == 0
    });
    assert_eq!(get(addr, "/hello").text(), HELLO);
    assert_eq!(
        stats.connections_accepted(),
        DEFAULT_MAX_CONNECTIONS as u64 + 1
    );
}

#[test]
fn a_client_that_never_reads_is_held_at_the_high_water_mark_while_traffic_goes_on() {
    const REQUESTS: usize = 1000; // 32 MB of answers: more than any socket buffers
    let site = ReactorThread::spawn(|r: &mut Reactor| {
        let peak = watch_peak_queue(r);
        let admin = admin::serve(r, "127.0.0.1:0", routes(Rc::new(OnceCell::new())))?;
        let echo = backends::serve(r, || Echo)?;
        Ok((admin, echo, peak))
    });
    let (admin, echo, peak) = (&site.value.0, site.value.1, &site.value.2);
    let addr = admin.local_addr().unwrap();

    let mut hog = Client::connect(addr);
    let pipelined = "GET /big HTTP/1.1\r\nHost: admin\r\n\r\n".repeat(REQUESTS);
    hog.send(pipelined.as_bytes());
    wait_until("the hog's answers to fill its queue", IO_TIMEOUT, || {
        site.on_reactor(|r| {
            r.connection_ids()
                .iter()
                .any(|&id| r.is_above_high_water(id))
        })
    });
    let answered = admin.stats().requests_answered();
    assert!(
        answered < REQUESTS as u64,
        "all {answered} answered into memory"
    );

    // Others are served meanwhile.
    assert_eq!(get(addr, "/hello").text(), HELLO);
    echo_round_trip(echo);

    // What waits for the hog is at most the mark plus one answer.
    let bound = DEFAULT_RESPONSE_HIGH_WATER + BIG + 256;
    let queued = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        queued <= bound,
        "{queued} bytes queued for one client, bound {bound}"
    );

    // Reading resumes the answers, all of them, in order.
    for _ in 0..REQUESTS {
        let answer = hog.answer();
        assert_eq!((answer.status, answer.body.len()), (200, BIG));
    }
    assert_eq!(admin.stats().requests_answered(), REQUESTS as u64 + 1);
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let site = start(Limits::new().idle_timeout(Duration::from_millis(200)));
    let mut client = Client::connect(site.value.addr);
    assert_eq!(client.get("/hello").status, 200);
    assert!(client.is_closed());
    wait_until("the idle client to be gone", IO_TIMEOUT, || {
        site.value.admin.stats().connections_active() == 0
    });
}

#[test]
fn a_request_not_whole_in_time_gets_408() {
    let site = start(
        Limits::new()
            .request_timeout(Duration::from_millis(200))
            .idle_timeout(Duration::from_secs(60)),
    );
    let mut client = Client::connect(site.value.addr);
    client.send(b"GET /hello HTTP/1.1\r\n");
    let answer = client.answer();
    assert_eq!(
        (answer.status, answer.header("connection")),
        (408, Some("close"))
    );
    assert!(client.is_closed());
}

#[test]
fn a_panicking_route_closes_only_its_connection() {
    let site = start(Limits::default());
    let addr = site.value.addr;
    let mut doomed = Client::connect(addr);
    doomed.send(b"GET /panic HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert!(doomed.is_closed());
    assert_eq!(get(addr, "/hello").text(), HELLO);
    // Its place was given back.
    wait_until("the clients to be gone", IO_TIMEOUT, || {
        site.value.admin.stats().connections_active() == 0
    });
}

#[test]
fn the_metrics_page_is_valid_prometheus_text() {
    let site = start(Limits::default());
    let answer = get(site.value.addr, "/metrics");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
    let families = check_exposition(answer.text());
    assert_eq!(families["app_requests_total"], "counter");
    assert_eq!(families["app_backend_up"], "gauge");
    assert_eq!(families["app_latency_seconds"], "histogram");
    assert_eq!(families["ember_admin_connections_active"], "gauge");
    assert!(
        answer
            .text()
            .contains("app_backend_up{backend=\"odd \\\"name\\\" \\\\ with\\nnewline\"} 0\n")
    );
}

/// Checks a page of Prometheus text format 0.0.4 and returns each family's type: every
/// line is a comment or `name{labels} value`; every family has exactly one HELP and one
/// TYPE, both before its samples, which are contiguous; label values use only the three
/// escapes; a histogram's buckets are cumulative and end at `+Inf` with its `_count`.
fn check_exposition(page: &str) -> HashMap<String, String> {
    assert!(page.ends_with('\n'), "a page ends with a newline");
    let mut help = HashMap::<String, usize>::new();
    let mut types = HashMap::<String, String>::new();
    let mut finished = Vec::<String>::new(); // families whose samples are over
    let mut current: Option<String> = None;
    let mut buckets = HashMap::<String, Vec<(String, f64)>>::new(); // series -> (le, count)
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            *help.entry(name.to_owned()).or_default() += 1;
            assert_eq!(help[name], 1, "HELP repeated for {name}");
            assert!(!types.contains_key(name), "HELP after TYPE for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(help.contains_key(name), "TYPE before HELP for {name}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE repeated for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "an unknown comment: {line}");
        let (name, labels, value) = split_sample(line);
        let family = family_of(&name, &types);
        assert!(
            types.contains_key(&family),
            "a sample before its TYPE: {line}"
        );
        if current.as_ref() != Some(&family) {
            assert!(!finished.contains(&family), "{family}'s samples are split");
            finished.extend(current.replace(family.clone()));
        }
        if types[&family] == "histogram" {
            let series: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            let key = format!("{family}{series:?}");
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .expect("le")
                    .1
                    .clone();
                buckets.entry(key).or_default().push((le, value));
            } else if name.ends_with("_count") {
                let series_buckets = &buckets[&key];
                assert!(series_buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{key}");
                let last = series_buckets.last().unwrap();
                assert_eq!((last.0.as_str(), last.1), ("+Inf", value), "{key}");
            }
        }
    }
    assert_eq!(help.len(), types.len(), "a HELP without a TYPE");
    types
}

/// A histogram's `_bucket`, `_sum` and `_count` samples belong to its family.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

/// `name{a="x",b="y"} value` → its parts; panics on anything else.
fn split_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    assert!(
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(is_name_char),
        "bad metric name in {line}"
    );
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inside) = rest.strip_prefix('{') {
        loop {
            let (label, after) = inside.split_once("=\"").expect("label=\"value\"");
            let is_label_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
            assert!(
                !label.is_empty() && label.chars().all(is_label_char),
                "{line}"
            );
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("unterminated label value") {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().expect("an escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other} in {line}"),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_owned(), value));
            let after_value = &after[end + 1..];
            if let Some(next) = after_value.strip_prefix(',') {
                inside = next;
            } else if let Some(tail) = after_value.strip_prefix('}') {
                rest = tail;
                break;
            } else {
                panic!("{after_value:?} after a label value in {line}");
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no value: {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line}")),
    };
    (name.to_owned(), labels, value)
}
