//! `ember::proxy::client_hello` on real ClientHellos: the first flight of a rustls client
//! (whole, one byte at a time, and re-fragmented into small records), and what a real
//! `openssl s_client` sends to a loopback listener, with a server name and without one.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ember::proxy::client_hello::{self, ClientHello, MAX_HELLO, Peek};
use ember::tls::ClientTls;
use ember::tls::rustls::ClientConnection;
use ember::tls::rustls::pki_types::ServerName;

use support::IO_TIMEOUT;
use support::child::Child;
use support::clients::recv;

const LIMIT: Duration = Duration::from_secs(20);
const TLS13: u16 = 0x0304;

/// The first flight of a rustls client offering h2 and http/1.1 to `name`.
fn rustls_first_flight(name: &str) -> Vec<u8> {
    let config = ClientTls::dangerous_accept_any_server()
        .alpn(&[b"h2", b"http/1.1"])
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut client = ClientConnection::new(config, name).unwrap();
    let mut flight = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut flight).unwrap();
    }
    flight
}

fn hello_of(bytes: &[u8]) -> ClientHello {
    match client_hello::peek(bytes) {
        Peek::Hello(hello) => hello,
        other => panic!("want a ClientHello, got {other:?}"),
    }
}

/// The handshake payload of the TLS records in `flight`, all of them handshake records.
fn handshake_payload(flight: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut rest = flight;
    while !rest.is_empty() {
        assert_eq!(rest[0], 22, "a handshake record");
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        payload.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    payload
}

/// `payload` again as handshake records of at most `size` bytes.
fn refragment(payload: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for fragment in payload.chunks(size) {
        out.extend([22, 3, 1]);
        out.extend(u16::try_from(fragment.len()).unwrap().to_be_bytes());
        out.extend_from_slice(fragment);
    }
    out
}

#[test]
fn a_rustls_hello_gives_its_server_name_alpn_and_tls13() {
    let flight = rustls_first_flight("api.example.com");
    let hello = hello_of(&flight);
    assert_eq!(hello.server_name.as_deref(), Some("api.example.com"));
    assert_eq!(hello.alpn, [&b"h2"[..], b"http/1.1"]);
    assert!(hello.supported_versions.contains(&TLS13), "{hello:?}");
    assert_eq!(hello.legacy_version, 0x0303);
}

#[test]
fn a_rustls_hello_one_byte_at_a_time_is_incomplete_until_its_last_byte() {
    let flight = rustls_first_flight("api.example.com");
    for len in 0..flight.len() {
        assert_eq!(
            client_hello::peek(&flight[..len]),
            Peek::Incomplete,
            "after {len} bytes"
        );
    }
    assert_eq!(
        hello_of(&flight).server_name.as_deref(),
        Some("api.example.com")
    );
}

#[test]
fn a_rustls_hello_refragmented_into_small_records_reads_the_same() {
    let flight = rustls_first_flight("API.Example.com");
    let whole = hello_of(&flight);
    assert_eq!(whole.server_name.as_deref(), Some("api.example.com"));
    let payload = handshake_payload(&flight);
    for size in [1, 7, 100, payload.len() / 2 + 1] {
        let fragmented = refragment(&payload, size);
        assert!(fragmented.len() <= MAX_HELLO);
        assert_eq!(hello_of(&fragmented), whole, "records of {size} bytes");
    }
}

/// What `openssl s_client -connect 127.0.0.1:PORT <args>` sends first, read by a listener
/// this test binds until `peek` answers; the connection is then dropped and `openssl`
/// killed.
fn openssl_hello(args: &[&str]) -> ClientHello {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (answer, answered) = mpsc::channel();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept openssl's connection");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut received = Vec::new();
        let mut chunk = [0; 4096];
        let peeked = loop {
            match client_hello::peek(&received) {
                Peek::Incomplete => {}
                peeked => break peeked,
            }
            match stream.read(&mut chunk) {
                Ok(0) => break Peek::Incomplete,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading openssl's hello: {e}"),
            }
        };
        let _ = answer.send((peeked, received));
    });
    let child = Child::spawn(
        Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (peeked, received) = recv(&answered, LIMIT, "openssl's ClientHello");
    match peeked {
        Peek::Hello(hello) => hello,
        other => panic!(
            "{other:?} after {} bytes from openssl\n{}",
            received.len(),
            child.describe()
        ),
    }
    // `child` is killed and reaped here, the connection already closed.
}

#[test]
fn an_openssl_s_client_hello_gives_its_server_name_and_alpn() {
    let hello = openssl_hello(&["-servername", "www.example.org", "-alpn", "http/1.1"]);
    assert_eq!(hello.server_name.as_deref(), Some("www.example.org"));
    assert_eq!(hello.alpn, [b"http/1.1"]);
    assert!(hello.supported_versions.contains(&TLS13), "{hello:?}");
}

/// Without `-servername`, OpenSSL 3 takes the name from `-connect`, and an IP address is no
/// name: the hello has no `server_name` extension (an IP address in one would read as
/// `None` too).
#[test]
fn an_openssl_s_client_to_an_ip_address_sends_no_server_name() {
    let hello = openssl_hello(&[]);
    assert_eq!(hello.server_name, None);
    assert_eq!(hello.alpn, Vec::<Vec<u8>>::new());
    assert!(hello.supported_versions.contains(&TLS13), "{hello:?}");
}
