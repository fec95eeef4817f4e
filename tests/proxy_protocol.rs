//! A real HAProxy in front of a std listener: the header its `send-proxy` and
//! `send-proxy-v2` put before a relayed connection is what `proxy_protocol::parse` reads, and byte
//! for byte what `proxy_protocol::v1_header` / `proxy_protocol::v2_header` write for the same two ends.
//!
//! Then ember itself: `Backend::send_proxy` puts the header first on every backend
//! connection (the cut-through relay and retries included), `Options::accept_proxy` reads
//! one from each client (byte by byte, garbage closed) and passes the real client on, and
//! a real HAProxy's `send-proxy`/`send-proxy-v2` in front of ember is understood.
//!
//! HAProxy is found on `PATH` or at `/usr/sbin/haproxy` (`.ci/run` installs Debian's
//! package); without it the tests fail, saying so.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ember::UnbindReason;
use ember::proxy::proxy_protocol::{self, Parsed, ProxyHeader};
use ember::proxy::{Backend, Dispatch, Finish, Options, Target};
use support::IO_TIMEOUT;
use support::clients::{closed_port, read_until};
use support::haproxy::{Haproxy, haproxy_binary};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;
use support::watchdog::Watchdog;

/// The longest any test here may take before the watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// What the backend got for one client relayed by haproxy.
struct Relayed {
    /// Everything up to and including the client's `hello`.
    received: Vec<u8>,
    /// The client's end of its connection to haproxy.
    client: SocketAddr,
    /// The frontend the client connected to.
    frontend: SocketAddr,
}

/// Runs haproxy with `frontend_rules` and `server s1 BACKEND {server_options}`, sends
/// `hello` through it, and returns what the backend read. `None` if there is no haproxy.
fn relay_hello(frontend_rules: &str, server_options: &str) -> Option<Relayed> {
    let binary = haproxy_binary()?;
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("{} {server_options}", backend.local_addr().unwrap());
    let mut haproxy = Haproxy::start(&binary, frontend_rules, &server);
    let mut client = haproxy.connect();
    client.write_all(b"hello").unwrap();
    let mut relayed = haproxy.accept_on(&backend);
    let received = read_until(&mut relayed, b"hello");
    Some(Relayed {
        received,
        client: client.local_addr().unwrap(),
        frontend: haproxy.frontend,
    })
}

/// `received` is a header that parses to `want` and is byte for byte `written` (ember's),
/// then `hello`; every shorter prefix of the header parses as `Incomplete`.
fn assert_header(received: &[u8], want: ProxyHeader, written: &[u8]) {
    let text = String::from_utf8_lossy(received);
    let Parsed::Done { header, consumed } = proxy_protocol::parse(received) else {
        panic!(
            "haproxy wrote {text:?}, parsed as {:?}",
            proxy_protocol::parse(received)
        );
    };
    assert_eq!(header, want, "haproxy wrote {text:?}");
    assert_eq!(&received[consumed..], b"hello");
    assert_eq!(
        &received[..consumed],
        written,
        "haproxy wrote {text:?}, ember writes {:?}",
        String::from_utf8_lossy(written)
    );
    for len in 0..consumed {
        assert_eq!(proxy_protocol::parse(&received[..len]), Parsed::Incomplete);
    }
}

fn from(source: SocketAddr, destination: SocketAddr, version: u8) -> ProxyHeader {
    ProxyHeader {
        source: Some(source),
        destination: Some(destination),
        version,
    }
}

#[test]
fn haproxy_send_proxy_writes_what_v1_header_writes() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let Some(r) = relay_hello("", "send-proxy") else {
        return;
    };
    assert!(r.received.starts_with(b"PROXY TCP4 127.0.0.1 127.0.0.1 "));
    let written = proxy_protocol::v1_header(r.client, r.frontend);
    assert_header(&r.received, from(r.client, r.frontend, 1), &written);
}

#[test]
fn haproxy_send_proxy_v2_writes_what_v2_header_writes() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let Some(r) = relay_hello("", "send-proxy-v2") else {
        return;
    };
    let written = proxy_protocol::v2_header(r.client, r.frontend);
    assert_header(&r.received, from(r.client, r.frontend, 2), &written);
}

#[test]
fn haproxy_writes_ipv6_ends_as_tcp6() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    // set-src and set-dst keep the ports; no IPv6 loopback needed.
    let rules = "tcp-request connection set-src ipv6(2001:db8::1)\n    \
                 tcp-request connection set-dst ipv6(2001:db8::2)";
    for (option, version) in [("send-proxy", 1), ("send-proxy-v2", 2)] {
        let Some(r) = relay_hello(rules, option) else {
            return;
        };
        let source = SocketAddr::new("2001:db8::1".parse().unwrap(), r.client.port());
        let destination = SocketAddr::new("2001:db8::2".parse().unwrap(), r.frontend.port());
        let written = match version {
            1 => proxy_protocol::v1_header(source, destination),
            _ => proxy_protocol::v2_header(source, destination),
        };
        assert_header(&r.received, from(source, destination, version), &written);
    }
}

#[test]
fn haproxy_maps_an_ipv4_client_to_ipv6_when_the_destination_is_ipv6() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let rules = "tcp-request connection set-dst ipv6(2001:db8::2)";
    for (option, version) in [("send-proxy", 1), ("send-proxy-v2", 2)] {
        let Some(r) = relay_hello(rules, option) else {
            return;
        };
        let destination = SocketAddr::new("2001:db8::2".parse().unwrap(), r.frontend.port());
        // Written from the IPv4 client: ember maps it as haproxy does.
        let written = match version {
            1 => proxy_protocol::v1_header(r.client, destination),
            _ => proxy_protocol::v2_header(r.client, destination),
        };
        let std::net::IpAddr::V4(client_ip) = r.client.ip() else {
            panic!("an IPv4 client: {}", r.client);
        };
        let mapped = SocketAddr::new(client_ip.to_ipv6_mapped().into(), r.client.port());
        assert_header(&r.received, from(mapped, destination, version), &written);
    }
}

#[test]
fn haproxy_writes_ipv4_compatible_addresses_in_dotted_form_as_v1_header_does() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let rules = "tcp-request connection set-dst ipv6(::1.2.3.4)";
    let Some(r) = relay_hello(rules, "send-proxy") else {
        return;
    };
    let text = String::from_utf8_lossy(&r.received);
    assert!(text.contains(" ::1.2.3.4 "), "{text:?}");
    let destination = SocketAddr::new("::1.2.3.4".parse().unwrap(), r.frontend.port());
    let std::net::IpAddr::V4(client_ip) = r.client.ip() else {
        panic!("an IPv4 client: {}", r.client);
    };
    let mapped = SocketAddr::new(client_ip.to_ipv6_mapped().into(), r.client.port());
    let written = proxy_protocol::v1_header(r.client, destination);
    assert_header(&r.received, from(mapped, destination, 1), &written);
}

#[test]
fn haproxy_health_checks_on_a_send_proxy_v2_server_send_v2_local_header() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let Some(binary) = haproxy_binary() else {
        return;
    };
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!(
        "{} send-proxy-v2 check inter 100ms",
        backend.local_addr().unwrap()
    );
    let mut haproxy = Haproxy::start(&binary, "", &server);
    // No client: the first connection is a health check.
    let mut check = haproxy.accept_on(&backend);
    let mut received = Vec::new();
    let mut buf = [0; 64];
    while matches!(proxy_protocol::parse(&received), Parsed::Incomplete) {
        let n = check.read(&mut buf).unwrap();
        assert!(n > 0, "the check closed after {received:?}");
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(received, proxy_protocol::v2_local_header());
    let local = ProxyHeader {
        source: None,
        destination: None,
        version: 2,
    };
    let done = Parsed::Done {
        header: local,
        consumed: 16,
    };
    assert_eq!(proxy_protocol::parse(&received), done);
}

// ---------------------------------------------------------------------------------------
// ember sending and accepting headers.

/// A proxy on its own reactor thread: every client to `backend` (relayed cut-through,
/// with `retries`), each backend connection starting with a `version` header; with
/// `accept`, clients must start with a header themselves.
fn ember_proxy(
    backend: Vec<SocketAddr>,
    version: proxy_protocol::Version,
    accept: bool,
) -> ReactorThread<SocketAddr> {
    ReactorThread::spawn(move |r| {
        let mut targets = backend.into_iter();
        let first = targets.next().unwrap();
        let then: Vec<SocketAddr> = targets.collect();
        let server = Options::new()
            .accept_proxy(accept)
            .start(r, "127.0.0.1:0", move |conn| {
                // The first target; a failed connect is retried on the next one.
                let next = then.clone();
                let backend = Backend::tcp(first)
                    .send_proxy(version)
                    .retries(next.len() as u32)
                    .dispatch(std::rc::Rc::new(InTurn(std::cell::RefCell::new(next))))
                    .relay_client()
                    .relay_server();
                conn.server("app", backend);
                conn.on_finish(|_, _, _| Finish::Close);
            })?;
        Ok(server.local_addr().unwrap())
    })
}

/// Retries go to the next address of a list.
struct InTurn(std::cell::RefCell<Vec<SocketAddr>>);

impl Dispatch for InTurn {
    fn failed(&self, _: &Target, _: &UnbindReason) -> Option<Target> {
        let mut left = self.0.borrow_mut();
        (!left.is_empty()).then(|| Target::Tcp(left.remove(0)))
    }
}

/// Reads from `s` until a whole PROXY header and `payload` after it are in.
fn read_header_then(s: &mut TcpStream, payload: &[u8]) -> (ProxyHeader, Vec<u8>) {
    let received = read_until(s, payload);
    match proxy_protocol::parse(&received) {
        Parsed::Done { header, consumed } => (header, received[consumed..].to_vec()),
        other => panic!("{other:?} from {:?}", String::from_utf8_lossy(&received)),
    }
}

fn accept_one(backend: &TcpListener) -> TcpStream {
    let (s, _) = backend.accept().unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

#[test]
fn ember_sends_the_header_first_even_on_the_cut_through_relay_and_after_a_retry() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    for version in [proxy_protocol::Version::V1, proxy_protocol::Version::V2] {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        // The first try is refused; the retry reaches `backend`.
        let proxy = ember_proxy(
            vec![closed_port(), backend.local_addr().unwrap()],
            version,
            false,
        );
        let mut client = TcpStream::connect(proxy.value).unwrap();
        let payload = Pattern::new(3).bytes(200_000);
        client.write_all(&payload).unwrap();
        let mut relayed = accept_one(&backend);
        let (header, rest) = read_header_then(&mut relayed, &payload[payload.len() - 64..]);
        assert_eq!(header.source, Some(client.local_addr().unwrap()));
        assert_eq!(header.destination, Some(proxy.value));
        assert!(
            rest == payload,
            "{version:?}: the payload follows the header, whole"
        );
        // And back.
        relayed.write_all(b"answer").unwrap();
        drop(relayed);
        client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(read_until(&mut client, b"answer"), b"answer");
    }
}

#[test]
fn ember_accepts_a_header_and_passes_the_real_client_on() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = ember_proxy(
        vec![backend.local_addr().unwrap()],
        proxy_protocol::Version::V2,
        true,
    );
    let real: SocketAddr = "203.0.113.7:4242".parse().unwrap();
    let public: SocketAddr = "198.51.100.1:443".parse().unwrap();
    let mut client = TcpStream::connect(proxy.value).unwrap();
    // The upstream's header, one byte at a time, then the payload in the same write as
    // its last byte.
    let header = proxy_protocol::v1_header(real, public);
    for byte in &header[..header.len() - 1] {
        client.write_all(&[*byte]).unwrap();
    }
    client
        .write_all(&[&header[header.len() - 1..], b"payload"].concat())
        .unwrap();
    let mut relayed = accept_one(&backend);
    let (passed_on, rest) = read_header_then(&mut relayed, b"payload");
    assert_eq!(passed_on.source, Some(real));
    assert_eq!(passed_on.destination, Some(public));
    assert_eq!(rest, b"payload");
}

#[test]
fn ember_closes_a_client_without_a_header_and_serves_the_next() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = ember_proxy(
        vec![backend.local_addr().unwrap()],
        proxy_protocol::Version::V1,
        true,
    );
    let mut garbage = TcpStream::connect(proxy.value).unwrap();
    garbage.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer); // closed: EOF or reset
    assert!(answer.is_empty());
    let mut good = TcpStream::connect(proxy.value).unwrap();
    let real: SocketAddr = "192.0.2.9:1000".parse().unwrap();
    good.write_all(&proxy_protocol::v2_header(real, proxy.value))
        .unwrap();
    good.write_all(b"next").unwrap();
    let mut relayed = accept_one(&backend);
    let (header, rest) = read_header_then(&mut relayed, b"next");
    assert_eq!(header.source, Some(real));
    assert_eq!(rest, b"next");
}

#[test]
fn haproxy_send_proxy_in_front_of_ember_accept_proxy() {
    let _watchdog = Watchdog::abort_after(TEST_LIMIT);
    let binary = haproxy_binary().unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let ember = ember_proxy(
        vec![backend.local_addr().unwrap()],
        proxy_protocol::Version::V1,
        true,
    );
    for option in ["send-proxy", "send-proxy-v2"] {
        let mut haproxy = Haproxy::start(&binary, "", &format!("{} {option}", ember.value));
        let mut client = haproxy.connect();
        client.write_all(b"hello").unwrap();
        let mut relayed = accept_one(&backend);
        let (header, rest) = read_header_then(&mut relayed, b"hello");
        // ember saw through haproxy: the header it sends on names the real client.
        assert_eq!(
            header.source,
            Some(client.local_addr().unwrap()),
            "{option}"
        );
        assert_eq!(header.destination, Some(haproxy.frontend), "{option}");
        assert_eq!(rest, b"hello");
    }
}
