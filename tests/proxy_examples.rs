//! Every em-proxy example port, run against real loopback backends. Each example's source
//! is compiled into this test (`#[path]`), so the test calls the same `start` its `main`
//! does; only the command-line parsing is left out.

// Each example brings its own copy of `examples/support` (its command-line plumbing).
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

#[allow(dead_code)]
#[path = "../examples/balancing.rs"]
mod balancing;
#[allow(dead_code)]
#[path = "../examples/balancing_client.rs"]
mod balancing_client;
#[allow(dead_code)]
#[path = "../examples/beanstalkd_interceptor.rs"]
mod beanstalkd_interceptor;
#[allow(dead_code)]
#[path = "../examples/duplex.rs"]
mod duplex;
#[allow(dead_code)]
#[path = "../examples/http_proxy.rs"]
mod http_proxy;
#[allow(dead_code)]
#[path = "../examples/line_interceptor.rs"]
mod line_interceptor;
#[allow(dead_code)]
#[path = "../examples/mysql_interceptor.rs"]
mod mysql_interceptor;
#[allow(dead_code)]
#[path = "../examples/port_forward.rs"]
mod port_forward;
#[allow(dead_code)]
#[path = "../examples/relay_port_forward.rs"]
mod relay_port_forward;
#[allow(dead_code)]
#[path = "../examples/selective_forward.rs"]
mod selective_forward;
#[allow(dead_code)]
#[path = "../examples/simple.rs"]
mod simple;
#[allow(dead_code)]
#[path = "../examples/smtp_spam_filter.rs"]
mod smtp_spam_filter;
#[allow(dead_code)]
#[path = "../examples/smtp_whitelist.rs"]
mod smtp_whitelist;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ember::proxy::{ProxyServer, Strategy};
use ember::{Context, Handler, PeerClosed, Reactor};

use support::IO_TIMEOUT;
use support::backends::{Echo, Record, record_of, serve, serve_recorder};
use support::clients::{closed_port, connect, exchange, find, read_all, read_until};
use support::pattern::Pattern;
use support::reactor_thread::{ReactorThread, run_bounded};

// balancing.rs includes appserver.rs for its embedded backends; use that copy.
use balancing::appserver;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn app(r: &mut Reactor, label: &str) -> io::Result<SocketAddr> {
    appserver::start(r, any_port(), Duration::ZERO, label)
}

fn addr_of(proxy: io::Result<ProxyServer>) -> io::Result<SocketAddr> {
    Ok(proxy?.local_addr().expect("TCP proxies have an address"))
}

/// Reads one HTTP answer: by `Content-Length`, or to the end if it has none.
fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while find(&raw, b"\r\n\r\n").is_none() {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "answer ended in its head: {raw:?}"
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let length = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    });
    let body = match length {
        Some(n) => {
            let mut body = vec![0; n];
            stream.read_exact(&mut body).unwrap();
            body
        }
        None => read_all(stream),
    };
    (head, String::from_utf8(body).unwrap())
}

fn get(host: &str, close: bool) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.0\r\n{connection}\r\n")
}

fn http_get(proxy: SocketAddr) -> (String, String) {
    let mut client = connect(proxy);
    client.write_all(get("app", true).as_bytes()).unwrap();
    read_response(&mut client)
}

#[test]
fn appserver_answers_after_its_delay_and_in_order_when_pipelined() {
    let running = ReactorThread::spawn(|r| {
        appserver::start(r, any_port(), Duration::from_millis(200), "slow")
    });
    let mut client = connect(running.value);
    let started = Instant::now();
    client
        .write_all(format!("{}{}", get("a", false), get("a", true)).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut client).1, "hello world: slow");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let (head, body) = read_response(&mut client);
    assert!(head.contains("Connection: close"));
    assert_eq!(body, "hello world: slow");
}

#[test]
fn simple_forwards_and_closes_when_srv_is_done() {
    let running = ReactorThread::spawn(|r| {
        let backend = app(r, "0")?;
        addr_of(simple::start(r, any_port(), backend))
    });
    let (head, body) = http_get(running.value);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, "hello world: 0");
}

#[test]
fn port_forward_forwards_both_ways() {
    let running = ReactorThread::spawn(|r| {
        let backend = app(r, "0")?;
        addr_of(port_forward::start(r, any_port(), backend))
    });
    assert_eq!(http_get(running.value).1, "hello world: 0");
}

#[test]
fn relay_port_forward_forwards_on_the_relay() {
    let running = ReactorThread::spawn(|r| {
        let backend = app(r, "0")?;
        let echo = serve(r, || Echo)?;
        Ok((
            addr_of(relay_port_forward::start(r, any_port(), backend))?,
            addr_of(relay_port_forward::start(r, any_port(), echo))?,
        ))
    });
    let (to_app, to_echo) = running.value;
    assert_eq!(http_get(to_app).1, "hello world: 0");
    let bulk = Pattern::new(51).bytes(8 << 20);
    assert!(exchange(to_echo, &bulk) == bulk);
}

fn two_recorders(r: &mut Reactor) -> io::Result<(SocketAddr, SocketAddr, Record, Record)> {
    let (prod, prod_record) = serve_recorder(r, "prod")?;
    let (test, test_record) = serve_recorder(r, "test")?;
    Ok((prod, test, prod_record, test_record))
}

const BROWSER_REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: shop\r\nUser-Agent: Mozilla/5.0 (X11)\r\nAccept: */*\r\n\r\n";
const REWRITTEN_REQUEST: &[u8] =
    b"GET /index.html HTTP/1.1\r\nHost: shop\r\nUser-Agent: ember-proxy/0.1\r\nAccept: */*\r\n\r\n";

#[test]
fn duplex_sends_the_rewritten_request_to_both_and_answers_from_prod() {
    let running = ReactorThread::spawn(|r| {
        let (prod, test, prod_record, test_record) = two_recorders(r)?;
        let proxy = addr_of(duplex::start(r, any_port(), prod, test))?;
        Ok((proxy, prod_record, test_record))
    });
    let (proxy, prod, test) = running.value.clone();
    let reply = String::from_utf8(exchange(proxy, BROWSER_REQUEST)).unwrap();
    assert_eq!(
        reply,
        format!("prod:{}\nprod:end\n", REWRITTEN_REQUEST.len())
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    while record_of(&test).len() < REWRITTEN_REQUEST.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(record_of(&prod), REWRITTEN_REQUEST);
    assert_eq!(record_of(&test), REWRITTEN_REQUEST);
}

#[test]
fn selective_forward_sends_to_prod_only() {
    let running = ReactorThread::spawn(|r| {
        let (prod, test, prod_record, test_record) = two_recorders(r)?;
        let proxy = addr_of(selective_forward::start(r, any_port(), prod, test))?;
        Ok((proxy, prod_record, test_record))
    });
    let (proxy, prod, test) = running.value.clone();
    let reply = String::from_utf8(exchange(proxy, BROWSER_REQUEST)).unwrap();
    assert_eq!(
        reply,
        format!("prod:{}\nprod:end\n", REWRITTEN_REQUEST.len())
    );
    assert_eq!(record_of(&prod), REWRITTEN_REQUEST);
    assert_eq!(record_of(&test), b"");
}

#[test]
fn line_interceptor_rewrites_answers_even_across_chunks() {
    // A backend that splits `hello` across two writes with a pause between them.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let splitting = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 1];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"say hel");
            thread::sleep(Duration::from_millis(50));
            let _ = stream.write_all(b"lo to the hello world, hel");
        }
    });
    let running = ReactorThread::spawn(move |r| {
        let backend = app(r, "hello there")?;
        Ok((
            addr_of(line_interceptor::start(r, any_port(), backend))?,
            addr_of(line_interceptor::start(r, any_port(), splitting))?,
        ))
    });
    let (to_app, to_splitter) = running.value;
    assert_eq!(http_get(to_app).1, "good bye world: good bye there");
    assert_eq!(
        exchange(to_splitter, b"?"),
        b"say good bye to the good bye world, hel"
    );
}

/// Enough of beanstalkd: `put` answers `INSERTED n` and records the job body.
struct FakeBeanstalkd {
    unparsed: Vec<u8>,
    jobs: Record,
    inserted: usize,
}

impl Handler for FakeBeanstalkd {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.unparsed.extend_from_slice(data);
        while let Some(end) = find(&self.unparsed, b"\r\n") {
            let line = String::from_utf8_lossy(&self.unparsed[..end]).into_owned();
            let bytes: usize = match line.strip_prefix("put ") {
                Some(args) => args.split(' ').nth(3).unwrap().parse().unwrap(),
                None => {
                    self.unparsed.drain(..end + 2);
                    cx.send_data(b"UNKNOWN_COMMAND\r\n");
                    continue;
                }
            };
            if self.unparsed.len() < end + 2 + bytes + 2 {
                return;
            }
            let job: Vec<u8> = self
                .unparsed
                .drain(..end + 2 + bytes + 2)
                .skip(end + 2)
                .take(bytes)
                .collect();
            let mut jobs = self.jobs.lock().unwrap();
            jobs.extend_from_slice(&job);
            jobs.push(b'|');
            self.inserted += 1;
            cx.send_data(format!("INSERTED {}\r\n", self.inserted).as_bytes());
        }
    }
}

#[test]
fn beanstalkd_interceptor_archives_far_jobs_and_forwards_the_rest_whole() {
    let jobs = Record::default();
    let recorded = Arc::clone(&jobs);
    let running = ReactorThread::spawn(move |r| {
        let beanstalkd = serve(r, move || FakeBeanstalkd {
            unparsed: Vec::new(),
            jobs: Arc::clone(&recorded),
            inserted: 0,
        })?;
        addr_of(beanstalkd_interceptor::start(r, any_port(), beanstalkd))
    });
    let mut client = connect(running.value);
    let mut command = |parts: &[&[u8]]| {
        for part in parts {
            client.write_all(part).unwrap();
        }
        String::from_utf8(read_until(&mut client, b"\r\n")).unwrap()
    };
    assert_eq!(command(&[b"put 0 0 60 5\r\nhello\r\n"]), "INSERTED 1\r\n");
    assert_eq!(
        command(&[b"put 0 900 60 5\r\n", b"la", b"ter\r\n"]),
        "INSERTED 9999\r\n"
    );
    // A forwarded job whose body looks like a command, split across writes.
    assert_eq!(
        command(&[b"put 0 0 60 16\r\nput 1 700 ", b"1 1\r\nz\r\n"]),
        "INSERTED 2\r\n"
    );
    assert_eq!(record_of(&jobs), b"hello|put 1 700 1 1\r\nz|");
}

/// Enough of an SMTP server: greets, answers each command, takes a message after DATA,
/// records everything it receives.
struct FakeSmtp {
    unparsed: Vec<u8>,
    in_data: bool,
    record: Record,
}

impl Handler for FakeSmtp {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.send_data(b"220 fake ESMTP ready\r\n");
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.record.lock().unwrap().extend_from_slice(data);
        self.unparsed.extend_from_slice(data);
        loop {
            if self.in_data {
                let Some(end) = find(&self.unparsed, b"\r\n.\r\n") else {
                    return;
                };
                self.unparsed.drain(..end + 5);
                self.in_data = false;
                cx.send_data(b"250 OK queued\r\n");
                continue;
            }
            let Some(end) = find(&self.unparsed, b"\r\n") else {
                return;
            };
            let line: Vec<u8> = self.unparsed.drain(..end + 2).collect();
            match line.to_ascii_uppercase().as_slice() {
                b"DATA\r\n" => {
                    self.in_data = true;
                    cx.send_data(b"354 Start your message\r\n");
                }
                b"QUIT\r\n" => {
                    cx.send_data(b"221 Bye\r\n");
                    cx.close_after_writing();
                }
                _ => {
                    cx.send_data(b"250 OK\r\n");
                }
            }
        }
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        PeerClosed::Close
    }
}

fn fake_smtp(r: &mut Reactor) -> io::Result<(SocketAddr, Record)> {
    let record = Record::default();
    let recorded = Arc::clone(&record);
    let addr = serve(r, move || FakeSmtp {
        unparsed: Vec::new(),
        in_data: false,
        record: Arc::clone(&recorded),
    })?;
    Ok((addr, record))
}

/// Sends one SMTP command and returns the answer line.
fn smtp(client: &mut TcpStream, command: &str) -> String {
    client.write_all(command.as_bytes()).unwrap();
    String::from_utf8(read_until(client, b"\r\n")).unwrap()
}

#[test]
fn smtp_whitelist_refuses_unknown_recipients_at_the_proxy() {
    let running = ReactorThread::spawn(|r| {
        let (server, record) = fake_smtp(r)?;
        let allowed = vec!["ilya@igvita.com".to_owned()];
        Ok((
            addr_of(smtp_whitelist::start(r, any_port(), server, allowed))?,
            record,
        ))
    });
    let (proxy, record) = running.value.clone();
    let mut client = connect(proxy);
    assert_eq!(
        String::from_utf8(read_until(&mut client, b"\r\n")).unwrap(),
        "220 fake ESMTP ready\r\n"
    );
    assert_eq!(smtp(&mut client, "EHLO client\r\n"), "250 OK\r\n");
    assert_eq!(
        smtp(&mut client, "MAIL FROM:<ilya@aiderss.com>\r\n"),
        "250 OK\r\n"
    );
    assert_eq!(
        smtp(&mut client, "RCPT TO:<missing_user@igvita.com>\r\n"),
        "550 No such user here\r\n"
    );
    assert_eq!(
        smtp(&mut client, "RCPT TO:<ilya@igvita.com>\r\n"),
        "250 OK\r\n"
    );
    assert_eq!(smtp(&mut client, "QUIT\r\n"), "221 Bye\r\n");
    assert_eq!(read_all(&mut client), b"");
    let seen = String::from_utf8(record_of(&record)).unwrap();
    assert!(seen.contains("RCPT TO:<ilya@igvita.com>"));
    assert!(!seen.contains("missing_user"), "{seen}");
}

#[test]
fn smtp_spam_filter_checks_each_message_off_the_reactor_before_the_server_sees_it() {
    let running = ReactorThread::spawn(|r| {
        let (server, record) = fake_smtp(r)?;
        Ok((
            addr_of(smtp_spam_filter::start(r, any_port(), server))?,
            record,
        ))
    });
    let (proxy, record) = running.value.clone();
    let mut client = connect(proxy);
    read_until(&mut client, b"\r\n");
    assert_eq!(
        smtp(&mut client, "MAIL FROM:<ilya@aiderss.com>\r\n"),
        "250 OK\r\n"
    );
    assert_eq!(
        smtp(&mut client, "RCPT TO:<ilya@igvita.com>\r\n"),
        "250 OK\r\n"
    );
    assert!(smtp(&mut client, "DATA\r\n").starts_with("354"));
    client
        .write_all(b"Subject: hi\r\n\r\nHello World!\r\n")
        .unwrap();
    assert_eq!(smtp(&mut client, ".\r\n"), "250 OK queued\r\n");
    // A second message, spam this time, on the same connection.
    assert_eq!(
        smtp(&mut client, "MAIL FROM:<ilya@aiderss.com>\r\n"),
        "250 OK\r\n"
    );
    assert!(smtp(&mut client, "DATA\r\n").starts_with("354"));
    client
        .write_all(b"Subject: you won\r\n\r\nClaim your LOTTERY prize\r\n")
        .unwrap();
    assert_eq!(
        smtp(&mut client, ".\r\n"),
        "550 5.7.1 Message rejected as spam\r\n"
    );
    assert_eq!(smtp(&mut client, "QUIT\r\n"), "221 Bye\r\n");
    assert_eq!(read_all(&mut client), b"");
    let seen = String::from_utf8(record_of(&record)).unwrap();
    assert!(
        seen.contains("DATA\r\nSubject: hi\r\n\r\nHello World!\r\n.\r\n"),
        "{seen}"
    );
    assert!(!seen.contains("LOTTERY"), "{seen}");
    assert_eq!(seen.matches("DATA\r\n").count(), 1, "{seen}");
}

#[test]
fn http_proxy_routes_by_host_and_keeps_answers_in_order_across_keep_alive_and_pipelining() {
    let running = ReactorThread::spawn(|r| {
        let a = appserver::start(r, any_port(), Duration::from_millis(30), "A")?;
        let b = app(r, "B")?;
        Ok((addr_of(http_proxy::start(r, any_port()))?, a, b))
    });
    let (proxy, a, b) = running.value;
    let mut client = connect(proxy);
    // Pipelined: A is slower than B, yet B's answer must come second.
    let burst = format!(
        "{}{}{}",
        get(&a.to_string(), false),
        get(&b.to_string(), false),
        get(&a.to_string(), false)
    );
    client.write_all(burst.as_bytes()).unwrap();
    for want in ["A", "B", "A"] {
        assert_eq!(read_response(&mut client).1, format!("hello world: {want}"));
    }
    // Keep-alive, one at a time, absolute-form target as a forward proxy gets it.
    let absolute = format!("GET http://{b}/x HTTP/1.1\r\nHost: {b}\r\n\r\n");
    client.write_all(absolute.as_bytes()).unwrap();
    assert_eq!(read_response(&mut client).1, "hello world: B");
    client
        .write_all(get(&a.to_string(), true).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut client).1, "hello world: A");
    // A garbage request is refused.
    let mut bad = connect(proxy);
    bad.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    assert!(read_response(&mut bad).0.starts_with("HTTP/1.1 400"));
    // An unreachable host is a 502.
    let dead = closed_port();
    let mut unreachable = connect(proxy);
    unreachable
        .write_all(get(&dead.to_string(), false).as_bytes())
        .unwrap();
    assert!(
        read_response(&mut unreachable)
            .0
            .starts_with("HTTP/1.1 502")
    );
}

fn balanced(strategy: Strategy) -> ReactorThread<(SocketAddr, ember::proxy::Stats)> {
    ReactorThread::spawn(move |r| {
        let backends = [app(r, "A")?, app(r, "B")?, app(r, "C")?];
        let proxy = balancing::start(r, any_port(), &backends, strategy)?;
        Ok((proxy.local_addr().unwrap(), proxy.stats().clone()))
    })
}

#[test]
fn balancing_round_robin_takes_turns() {
    let running = balanced(Strategy::RoundRobin);
    let answers: Vec<String> = (0..4).map(|_| http_get(running.value.0).1).collect();
    assert_eq!(
        answers,
        [
            "hello world: A",
            "hello world: B",
            "hello world: C",
            "hello world: A"
        ]
    );
}

#[test]
fn balancing_least_conn_avoids_busy_backends() {
    let running = balanced(Strategy::LeastConn);
    let (proxy, stats) = running.value.clone();
    let ask = |client: &mut TcpStream| {
        client.write_all(get("app", false).as_bytes()).unwrap();
        read_response(client).1
    };
    let mut clients: Vec<TcpStream> = Vec::new();
    for want in ["A", "B", "C"] {
        let mut client = connect(proxy);
        assert_eq!(ask(&mut client), format!("hello world: {want}"));
        clients.push(client);
    }
    // B's client leaves: B is now the only idle backend (round-robin would pick A).
    let mut leaving = clients.remove(1);
    leaving.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut leaving), b"");
    let deadline = Instant::now() + IO_TIMEOUT;
    while stats.clients_active() > 2 {
        assert!(Instant::now() < deadline, "B's client never went away");
        thread::sleep(Duration::from_millis(1));
    }
    let mut next = connect(proxy);
    assert_eq!(ask(&mut next), "hello world: B");
}

#[test]
fn balancing_random_only_picks_real_backends() {
    let running = balanced(Strategy::Random);
    for _ in 0..12 {
        let body = http_get(running.value.0).1;
        assert!(
            ["hello world: A", "hello world: B", "hello world: C"].contains(&body.as_str()),
            "{body}"
        );
    }
}

#[test]
fn balancing_client_sends_every_request_at_once_and_gets_each_answer_through_the_balancer() {
    let answers = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let got = std::rc::Rc::clone(&answers);
    let (_, watchdog_fired) = run_bounded(IO_TIMEOUT, move |r| {
        let backends = [app(r, "A")?, app(r, "B")?, app(r, "C")?];
        let proxy = balancing::start(r, any_port(), &backends, Strategy::RoundRobin)?;
        let proxy = proxy.local_addr().unwrap();
        balancing_client::start(r, proxy, 6, move |r, answers| {
            *got.borrow_mut() = answers;
            r.stop();
        });
        Ok(())
    });
    assert!(!watchdog_fired, "the client never finished");
    let answers = answers.take();
    let numbers: Vec<usize> = answers.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
    let mut bodies: Vec<String> = answers
        .into_iter()
        .map(|a| a.body.expect("every request is answered"))
        .collect();
    // Connections open in order but may be accepted in any: round-robin gives each
    // backend two of the six, whichever they are.
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "hello world: A",
            "hello world: A",
            "hello world: B",
            "hello world: B",
            "hello world: C",
            "hello world: C"
        ]
    );
}

#[test]
fn balancing_client_reports_a_proxy_that_is_not_there() {
    let answers = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let got = std::rc::Rc::clone(&answers);
    let (_, watchdog_fired) = run_bounded(IO_TIMEOUT, move |r| {
        balancing_client::start(r, closed_port(), 2, move |r, answers| {
            *got.borrow_mut() = answers;
            r.stop();
        });
        Ok(())
    });
    assert!(!watchdog_fired);
    let answers = answers.take();
    assert_eq!(answers.len(), 2);
    for answer in answers {
        let why = answer.body.expect_err("nobody answers");
        assert!(why.contains("refused"), "{why}");
    }
}

// ---------------------------------------------------------------------------------------
// mysql_interceptor, against a fake MySQL server speaking the wire protocol
// ---------------------------------------------------------------------------------------

/// A MySQL 8 server's greeting (protocol 10, sequence id 0): version, connection id,
/// the two halves of the scramble, capabilities, charset, status, auth plugin.
const GREETING: &[u8] = b"\x4f\x00\x00\x00\
    \x0a8.0.36-fake\x00\
    \x2a\x00\x00\x00\
    \x3b\x2f\x5c\x11\x6e\x7f\x41\x0c\x00\
    \xff\xff\xff\x02\x00\xff\xdf\x15\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
    \x29\x44\x13\x62\x0f\x5a\x7e\x33\x55\x08\x4d\x1c\x00\
    mysql_native_password\x00";

/// A client's HandshakeResponse41 (sequence id 1): capabilities (CLIENT_PROTOCOL_41,
/// no SSL), max packet, charset, 23 zero bytes, user `root`, an empty auth response.
const HANDSHAKE_RESPONSE: &[u8] = b"\x3c\x00\x00\x01\
    \x05\xa6\x0f\x00\
    \x00\x00\x00\x01\
    \x21\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
    root\x00\
    \x00\
    mysql_native_password\x00";

/// OK_Packet: 0 rows, no insert id, autocommit on, no warnings.
fn ok_packet(seq: u8) -> Vec<u8> {
    vec![7, 0, 0, seq, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]
}

/// ERR_Packet 1146 (42S02), "Table '...' doesn't exist".
fn no_such_table(seq: u8, table: &str) -> Vec<u8> {
    let mut payload = vec![0xff, 0x7a, 0x04, b'#'];
    payload.extend_from_slice(b"42S02");
    payload.extend_from_slice(format!("Table 'noschema.{table}' doesn't exist").as_bytes());
    mysql_interceptor::encode(&payload, seq)
}

fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).ok()?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    Some((header[3], payload))
}

/// A one-connection MySQL server: greets, checks the handshake response arrived byte for
/// byte, then answers every query OK, except an insert into a table it has not seen
/// created (ERR 1146). Returns every query it was sent, in order.
fn fake_mysql() -> (SocketAddr, thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        conn.write_all(GREETING).unwrap();
        let mut response = vec![0u8; HANDSHAKE_RESPONSE.len()];
        conn.read_exact(&mut response).unwrap();
        assert_eq!(
            response, HANDSHAKE_RESPONSE,
            "the handshake passes unchanged"
        );
        conn.write_all(&ok_packet(2)).unwrap();
        let mut tables = vec!["posts".to_owned()];
        let mut queries = Vec::new();
        while let Some((seq, payload)) = read_packet(&mut conn) {
            assert_eq!(seq, 0, "every command starts a sequence");
            match payload.split_first() {
                Some((&mysql_interceptor::COM_QUERY, sql)) => {
                    let sql = String::from_utf8(sql.to_vec()).unwrap();
                    let words: Vec<&str> = sql.split_whitespace().collect();
                    let answer = match words[..] {
                        ["create", "table", name, ..] => {
                            tables.push(name.to_owned());
                            ok_packet(1)
                        }
                        ["insert", "into", table, ..] if !tables.iter().any(|t| t == table) => {
                            no_such_table(1, table)
                        }
                        _ => ok_packet(1),
                    };
                    queries.push(sql);
                    conn.write_all(&answer).unwrap();
                }
                Some((&1, _)) => break, // COM_QUIT
                _ => {
                    queries.push(format!("command {:?}", payload));
                    conn.write_all(&ok_packet(1)).unwrap();
                }
            }
        }
        queries
    });
    (addr, server)
}

/// Sends `packet` one byte per write, as slow networks split it.
fn write_bytewise(client: &mut TcpStream, packet: &[u8]) {
    client.set_nodelay(true).unwrap();
    for byte in packet {
        client.write_all(std::slice::from_ref(byte)).unwrap();
    }
}

#[test]
fn mysql_interceptor_makes_tables_schemaless_in_the_wire_protocol() {
    for packet in [GREETING, HANDSHAKE_RESPONSE] {
        assert_eq!(
            usize::from(packet[0]),
            packet.len() - 4,
            "a well-formed header"
        );
    }
    let (mysql, server) = fake_mysql();
    let running =
        ReactorThread::spawn(move |r| addr_of(mysql_interceptor::start(r, any_port(), mysql)));
    let mut client = connect(running.value);

    // The handshake passes byte for byte both ways.
    let mut greeting = vec![0u8; GREETING.len()];
    client.read_exact(&mut greeting).unwrap();
    assert_eq!(greeting, GREETING);
    client.write_all(HANDSHAKE_RESPONSE).unwrap();
    assert_eq!(
        read_packet(&mut client),
        Some((2, ok_packet(2)[4..].to_vec()))
    );

    let query = |client: &mut TcpStream, sql: &str, bytewise: bool| {
        let packet = mysql_interceptor::query_packet(sql);
        if bytewise {
            write_bytewise(client, &packet);
        } else {
            client.write_all(&packet).unwrap();
        }
        // Exactly one answer comes back, the one for the client's own statement.
        read_packet(client).expect("an answer")
    };
    let ok = (1, ok_packet(1)[4..].to_vec());
    assert_eq!(query(&mut client, "CREATE TABLE comments", true), ok);
    assert_eq!(
        query(
            &mut client,
            "insert into posts (id, author, nickname) values ('ilya', 'Ilya Grigorik', 'igrigorik')",
            false,
        ),
        ok
    );
    assert_eq!(
        query(
            &mut client,
            "insert into posts (id, author) values ('bob', 'Bob')",
            false
        ),
        ok
    );
    assert_eq!(
        query(
            &mut client,
            "select author, nickname from posts where id = 'ilya'",
            true
        ),
        ok
    );
    assert_eq!(query(&mut client, "select * from posts", false), ok);
    // A ping (not a query) passes unchanged.
    client.write_all(&[1, 0, 0, 0, 0x0e]).unwrap();
    assert_eq!(read_packet(&mut client), Some(ok));
    // Nothing more is waiting for the client: no answer of the proxy's own leaked.
    client.write_all(&[1, 0, 0, 0, 0x01]).unwrap(); // COM_QUIT
    let queries = server.join().unwrap();
    assert_eq!(read_all(&mut client), b"", "nothing after the answers");

    assert_eq!(
        queries,
        [
            "create table comments (id varchar(255), UNIQUE(id));",
            // The first attribute's table is missing: created, then the insert again.
            "insert into posts_author values('ilya', 'Ilya Grigorik')",
            "create table posts_author (id varchar(255), value varchar(255), UNIQUE(id))",
            "insert into posts_author values('ilya', 'Ilya Grigorik')",
            "insert into posts_nickname values('ilya', 'igrigorik')",
            "create table posts_nickname (id varchar(255), value varchar(255), UNIQUE(id))",
            "insert into posts_nickname values('ilya', 'igrigorik')",
            "insert into posts values('ilya')",
            // Now the table exists: no create.
            "insert into posts_author values('bob', 'Bob')",
            "insert into posts values('bob')",
            "select posts.id as id, posts_author.value as author, \
             posts_nickname.value as nickname from posts \
             left outer join posts_author on posts_author.id = posts.id \
             left outer join posts_nickname on posts_nickname.id = posts.id \
             where posts.id = 'ilya'",
            "select * from posts",
            "command [14]",
        ]
    );
}

#[test]
fn mysql_packets_are_cut_whole_from_any_split_and_long_ones_stream_through() {
    use mysql_interceptor::{Packet, Packets, Piece, encode};
    let stream = [
        encode(b"\x03select 1", 0),
        encode(b"", 1),
        encode(&[7u8; 300], 2),
    ]
    .concat();
    for split in [1, 3, 5, stream.len()] {
        let mut reader = Packets::new(1024);
        let pieces: Vec<Piece> = stream.chunks(split).flat_map(|c| reader.feed(c)).collect();
        assert_eq!(
            pieces,
            [
                Piece::Packet(Packet {
                    seq: 0,
                    payload: b"\x03select 1".to_vec()
                }),
                Piece::Packet(Packet {
                    seq: 1,
                    payload: Vec::new()
                }),
                Piece::Packet(Packet {
                    seq: 2,
                    payload: vec![7u8; 300]
                }),
            ],
            "split every {split} bytes"
        );
    }
    // Over the limit: passed on as it arrives, header first, nothing held.
    let mut reader = Packets::new(100);
    let long = encode(&[9u8; 300], 0);
    let raw: Vec<u8> = long
        .chunks(64)
        .flat_map(|c| reader.feed(c))
        .flat_map(|p| match p {
            Piece::Raw(bytes) => bytes,
            Piece::Packet(p) => panic!("held a packet over the limit: {} bytes", p.payload.len()),
        })
        .collect();
    assert_eq!(raw, long);
    // A payload of exactly the longest packet ends with an empty one.
    let max = vec![0u8; mysql_interceptor::MAX_PACKET_LENGTH];
    let packets = encode(&max, 0);
    assert_eq!(packets.len(), max.len() + 8);
    assert_eq!(&packets[packets.len() - 4..], &[0, 0, 0, 1]);
}
