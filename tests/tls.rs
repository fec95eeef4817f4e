//! TLS in the reactor over real loopback sockets, with certificates made at test time:
//! a rustls client and server on one reactor moving bytes both ways byte for byte, the
//! handshake's facts (protocol, ALPN, SNI, peer chain), half-close through close_notify,
//! verification on by default (unknown issuer, wrong name), mutual TLS, SNI choosing the
//! certificate, the handshake timeout, and a real `openssl s_client` / `s_server` on the
//! other end.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ember::tls::rustls::{ClientConfig, ServerConfig};
use ember::tls::{ClientTls, Identity, ServerTls, TlsInfo};
use ember::{Context, Handler, PeerClosed, Reactor, UnbindReason};

use support::certs::{Leaf, TestCa};
use support::child::Child;
use support::pattern::Pattern;
use support::reactor_thread::run_bounded;

const LIMIT: Duration = Duration::from_secs(20);

fn identity(leaf: &Leaf) -> Identity {
    Identity::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()
}

/// A server config with a certificate for `localhost` from `ca`, and nothing else.
fn localhost_server(ca: &TestCa) -> Arc<ServerConfig> {
    ServerTls::new(identity(&ca.server(&["localhost"])))
        .build()
        .unwrap()
}

/// What one side saw.
#[derive(Default, Debug)]
struct Seen {
    info: Option<TlsInfo>,
    received: Vec<u8>,
    peer_closed: bool,
    unbind: Option<UnbindReason>,
}

type Shared = Rc<RefCell<Seen>>;

/// Echoes over TLS; closes after writing when the client's side ends.
struct EchoServer {
    config: Arc<ServerConfig>,
    seen: Shared,
}

impl Handler for EchoServer {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_server(Arc::clone(&self.config)).unwrap();
    }

    fn tls_handshake_completed(&mut self, cx: &mut Context<'_>) {
        self.seen.borrow_mut().info = cx.tls_info();
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.seen.borrow_mut().received.extend_from_slice(data);
        cx.send_data(data);
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        self.seen.borrow_mut().peer_closed = true;
        PeerClosed::Close
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        self.seen.borrow_mut().unbind = Some(reason);
    }
}

/// Sends `payload` at once (before the handshake is even done), then ends its side;
/// stops the reactor when it is closed.
struct Client {
    config: Arc<ClientConfig>,
    name: String,
    payload: Vec<u8>,
    seen: Shared,
}

impl Handler for Client {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_client(Arc::clone(&self.config), &self.name)
            .unwrap();
        cx.send_data(&self.payload);
        cx.close_write();
    }

    fn tls_handshake_completed(&mut self, cx: &mut Context<'_>) {
        self.seen.borrow_mut().info = cx.tls_info();
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.seen.borrow_mut().received.extend_from_slice(data);
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        self.seen.borrow_mut().peer_closed = true;
        PeerClosed::Close
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.seen.borrow_mut().unbind = Some(reason);
        // Let the server's unbind run in the same tick or the next, then stop.
        cx.add_timer(Duration::from_millis(50), |r| r.stop());
    }
}

/// One client against one echo server on a reactor; what each saw.
fn exchange(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
    payload: Vec<u8>,
) -> (Seen, Seen) {
    let (server_seen, client_seen) = (Shared::default(), Shared::default());
    let (s, c) = (Rc::clone(&server_seen), Rc::clone(&client_seen));
    let name = name.to_owned();
    let (_, fired) = run_bounded(LIMIT, move |r| {
        let id = r.start_server("127.0.0.1:0", move || EchoServer {
            config: Arc::clone(&server),
            seen: Rc::clone(&s),
        })?;
        let addr = r.server_addr(id).unwrap();
        r.connect(
            addr,
            Client {
                config: client,
                name,
                payload,
                seen: c,
            },
        )?;
        Ok(())
    });
    assert!(!fired, "the exchange did not finish in {LIMIT:?}");
    let take = |seen: Shared| Rc::try_unwrap(seen).unwrap().into_inner();
    (take(server_seen), take(client_seen))
}

#[test]
fn a_mebibyte_each_way_byte_for_byte_with_the_handshakes_facts() {
    let ca = TestCa::new("test CA");
    let server = ServerTls::new(identity(&ca.server(&["localhost"])))
        .alpn(&[b"h2", b"http/1.1"])
        .build()
        .unwrap();
    let client = ClientTls::with_ca(ca.cert_pem.as_bytes())
        .unwrap()
        .alpn(&[b"http/1.1"])
        .build()
        .unwrap();
    let payload = Pattern::new(11).bytes(1 << 20);
    let (server_seen, client_seen) = exchange(server, client, "localhost", payload.clone());
    assert!(server_seen.received == payload, "the server got every byte");
    assert!(client_seen.received == payload, "the echo came back whole");
    // Half-close: the client's close_notify + FIN reached the server as the end of its
    // input, and the server still answered everything before closing its side the same
    // way, which ended the client (whose own side was already shut).
    assert!(server_seen.peer_closed);
    assert_eq!(client_seen.unbind, Some(UnbindReason::PeerClosed));
    assert_eq!(server_seen.unbind, Some(UnbindReason::PeerClosed));
    let info = client_seen.info.expect("the client's handshake completed");
    assert_eq!(info.protocol.as_deref(), Some("TLSv1_3"));
    // The client (ring's order) lists AES-256-GCM first; the server prefers its own
    // order, AES-128-GCM with SHA-256 (the cheaper handshake).
    assert_eq!(
        info.cipher_suite.as_deref(),
        Some("TLS13_AES_128_GCM_SHA256")
    );
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(info.peer_certificates.len(), 1, "the server's leaf");
    assert_eq!(
        info.peer_subject().as_deref(),
        Some("CN=rcgen self signed cert"),
        "rcgen's default name"
    );
    let info = server_seen.info.expect("the server's handshake completed");
    assert_eq!(info.server_name.as_deref(), Some("localhost"), "SNI");
    assert!(
        info.peer_certificates.is_empty(),
        "no client certificate asked"
    );
}

#[test]
fn verification_is_on_by_default_an_unknown_issuer_or_a_wrong_name_fails_the_handshake() {
    let ca = TestCa::new("test CA");
    let stranger = TestCa::new("some other CA");
    let server = || localhost_server(&ca);
    for (client, name, why) in [
        (
            ClientTls::with_ca(stranger.cert_pem.as_bytes()).unwrap(),
            "localhost",
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            ClientTls::with_ca(ca.cert_pem.as_bytes()).unwrap(),
            "wrong.example",
            "not valid for name \"wrong.example\"",
        ),
    ] {
        let (server_seen, client_seen) =
            exchange(server(), client.build().unwrap(), name, b"secret".to_vec());
        match &client_seen.unbind {
            Some(UnbindReason::TlsFailed(e)) => assert!(e.contains(why), "{e}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(client_seen.received.is_empty() && server_seen.received.is_empty());
        assert!(
            matches!(&server_seen.unbind, Some(UnbindReason::TlsFailed(_))),
            "the server heard the alert: {:?}",
            server_seen.unbind
        );
    }
    // The clearly named opt-out connects to the same server.
    let (_, client_seen) = exchange(
        server(),
        ClientTls::dangerous_accept_any_server().build().unwrap(),
        "wrong.example",
        b"ok".to_vec(),
    );
    assert_eq!(client_seen.received, b"ok");
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let ca = TestCa::new("test CA");
    let server = || {
        ServerTls::new(identity(&ca.server(&["localhost"])))
            .require_client_certificate(ca.cert_pem.as_bytes())
            .unwrap()
            .build()
            .unwrap()
    };
    let anonymous = ClientTls::with_ca(ca.cert_pem.as_bytes()).unwrap();
    let (server_seen, _) = exchange(
        server(),
        anonymous.build().unwrap(),
        "localhost",
        b"x".to_vec(),
    );
    match &server_seen.unbind {
        Some(UnbindReason::TlsFailed(e)) => assert!(e.contains("no certificates"), "{e}"),
        other => panic!("{other:?}"),
    }
    let known = ClientTls::with_ca(ca.cert_pem.as_bytes())
        .unwrap()
        .identity(identity(&ca.client("client-1")));
    let (server_seen, client_seen) = exchange(
        server(),
        known.build().unwrap(),
        "localhost",
        b"hello".to_vec(),
    );
    assert_eq!(client_seen.received, b"hello");
    let info = server_seen.info.unwrap();
    assert_eq!(info.peer_certificates.len(), 1, "the client's certificate");
    assert_eq!(
        info.peer_subject().as_deref(),
        Some("CN=client-1,O=ember tests"),
        "the subject as RFC 4514 text"
    );
}

#[test]
fn sni_chooses_the_certificate() {
    let ca = TestCa::new("test CA");
    let server = ServerTls::new(identity(&ca.server(&["default.test"])))
        .sni("api.test", identity(&ca.server(&["api.test"])))
        .sni("www.test", identity(&ca.server(&["www.test"])))
        .build()
        .unwrap();
    for name in ["api.test", "www.test", "default.test"] {
        let client = ClientTls::with_ca(ca.cert_pem.as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let (server_seen, client_seen) =
            exchange(Arc::clone(&server), client, name, b"hi".to_vec());
        assert_eq!(client_seen.received, b"hi", "{name}: verified and served");
        assert_eq!(server_seen.info.unwrap().server_name.as_deref(), Some(name));
    }
}

#[test]
fn sni_by_certificate_takes_every_name_the_certificate_carries() {
    let ca = TestCa::new("test CA");
    let multi = identity(&ca.server(&["api.test", "alt.test"]));
    assert_eq!(multi.dns_names(), ["api.test", "alt.test"]);
    let server = ServerTls::new(identity(&ca.server(&["default.test"])))
        .sni_by_certificate(multi)
        .unwrap()
        .build()
        .unwrap();
    for name in ["alt.test", "api.test"] {
        let client = ClientTls::with_ca(ca.cert_pem.as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let (_, client_seen) = exchange(Arc::clone(&server), client, name, b"hi".to_vec());
        assert_eq!(client_seen.received, b"hi", "{name}");
    }
    // A certificate naming no DNS name cannot be chosen by one.
    assert!(
        ServerTls::new(identity(&ca.server(&["x.test"])))
            .sni_by_certificate(identity(&ca.server(&["127.0.0.1"])))
            .is_err()
    );
}

/// Accepts TLS and records how it ended.
struct Recorded {
    config: Arc<ServerConfig>,
    seen: Shared,
}

impl Handler for Recorded {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_server(Arc::clone(&self.config)).unwrap();
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.seen.borrow_mut().unbind = Some(reason);
        cx.stop();
    }
}

#[test]
fn a_client_that_never_finishes_the_handshake_meets_the_handshake_timeout() {
    let ca = TestCa::new("test CA");
    let config = localhost_server(&ca);
    let seen = Shared::default();
    let recorded = Rc::clone(&seen);
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    // A client that connects and says nothing, on its own thread.
    let silent = std::thread::spawn(move || {
        let addr = rx.recv().unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let (_, fired) = run_bounded(LIMIT, move |r: &mut Reactor| {
        r.set_tls_handshake_timeout(Duration::from_millis(200));
        let id = r.start_server("127.0.0.1:0", move || Recorded {
            config: Arc::clone(&config),
            seen: Rc::clone(&recorded),
        })?;
        tx.send(r.server_addr(id).unwrap()).unwrap();
        Ok(())
    });
    assert!(!fired);
    silent.join().unwrap();
    match &seen.borrow().unbind {
        Some(UnbindReason::TlsFailed(e)) => assert!(e.contains("timed out"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// Runs `openssl` with `args`, feeding `input` on stdin; its stdout.
fn openssl(args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (Debian's openssl package) runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn openssl_s_client_talks_to_an_ember_server() {
    let ca = TestCa::new("test CA");
    let dir = std::env::temp_dir().join(format!("ember-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let config = localhost_server(&ca);
    let seen = Shared::default();
    let recorded = Rc::clone(&seen);
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let ca_path = ca_file.to_str().unwrap().to_owned();
    let client = std::thread::spawn(move || {
        let addr = rx.recv().unwrap();
        openssl(
            &[
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
                &ca_path,
                "-verify_return_error",
                "-quiet",
            ],
            b"ping over openssl\n",
        )
    });
    let (_, fired) = run_bounded(LIMIT, move |r| {
        let id = r.start_server("127.0.0.1:0", move || OneShot {
            server: EchoServer {
                config: Arc::clone(&config),
                seen: Rc::clone(&recorded),
            },
        })?;
        tx.send(r.server_addr(id).unwrap()).unwrap();
        Ok(())
    });
    assert!(!fired);
    let answer = client.join().unwrap();
    assert_eq!(answer, "ping over openssl\n", "s_client printed the echo");
    assert_eq!(seen.borrow().received, b"ping over openssl\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An echo server for one line that stops the reactor once its one client is gone.
struct OneShot {
    server: EchoServer,
}

impl Handler for OneShot {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.server.post_init(cx);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.server.receive_data(cx, data);
        if data.ends_with(b"\n") {
            cx.close_after_writing(); // one line, then close_notify and FIN
        }
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        self.server.peer_closed(cx)
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.server.unbind(cx, reason);
        cx.stop();
    }
}

#[test]
fn an_ember_client_verifies_openssl_s_server() {
    let ca = TestCa::new("test CA");
    let leaf = ca.server(&["localhost"]);
    let dir = std::env::temp_dir().join(format!("ember-tls-s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let port = support::clients::closed_port().port();
    let mut server = Child::spawn(
        Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &port.to_string(),
                "-naccept",
                "1",
                "-rev",
            ])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // s_server listens once it printed ACCEPT.
    let deadline = std::time::Instant::now() + LIMIT;
    while !server
        .next_line(deadline)
        .is_some_and(|line| line.contains("ACCEPT"))
    {}
    let client = ClientTls::with_ca(ca.cert_pem.as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let seen = Shared::default();
    let recorded = Rc::clone(&seen);
    let (_, fired) = run_bounded(LIMIT, move |r| {
        r.connect(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Reverser {
                config: client,
                seen: recorded,
            },
        )?;
        Ok(())
    });
    assert!(!fired);
    // `-rev` answers each line reversed.
    assert_eq!(seen.borrow().received, b"lessu-s\n");
    assert!(seen.borrow().info.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a line to `openssl s_server -rev` and stops once the reversed line is back.
struct Reverser {
    config: Arc<ClientConfig>,
    seen: Shared,
}

impl Handler for Reverser {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_client(Arc::clone(&self.config), "localhost")
            .unwrap();
        cx.send_data(b"s-ussel\n");
    }

    fn tls_handshake_completed(&mut self, cx: &mut Context<'_>) {
        self.seen.borrow_mut().info = cx.tls_info();
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let mut seen = self.seen.borrow_mut();
        seen.received.extend_from_slice(data);
        if seen.received.ends_with(b"\n") {
            cx.close_after_writing();
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, _reason: UnbindReason) {
        cx.stop();
    }
}

/// Greets in `post_init`, before its handshake has even started, and closes after
/// writing (a server-speaks-first protocol over implicit TLS: SMTPS, IMAPS, FTPS).
struct Greeter {
    config: Arc<ServerConfig>,
}

impl Handler for Greeter {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_server(Arc::clone(&self.config)).unwrap();
        cx.send_data(b"220 ember ready\r\n");
        cx.close_after_writing();
    }
}

#[test]
fn a_server_that_speaks_first_is_heard_once_the_handshake_is_done() {
    // The greeting waits for the handshake, whose records must not queue behind it (they
    // did: the handshake stalled); closing after writing must still read the client's
    // half of the handshake; and the client, which has nothing to send and ends its side
    // at once, must not send its close_notify into the middle of the handshake (it did:
    // the server answered with a DecodeError alert).
    let ca = TestCa::new("test CA");
    let server = localhost_server(&ca);
    let client = ClientTls::with_ca(ca.cert_pem.as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let seen = Shared::default();
    let c = Rc::clone(&seen);
    let (_, fired) = run_bounded(LIMIT, move |r| {
        let id = r.start_server("127.0.0.1:0", move || Greeter {
            config: Arc::clone(&server),
        })?;
        let addr = r.server_addr(id).unwrap();
        r.connect(
            addr,
            Client {
                config: client,
                name: "localhost".into(),
                payload: Vec::new(),
                seen: c,
            },
        )?;
        Ok(())
    });
    assert!(!fired, "the greeting did not arrive in {LIMIT:?}");
    let seen = seen.borrow();
    assert_eq!(seen.received, b"220 ember ready\r\n");
    assert!(
        seen.unbind.as_ref().is_some_and(UnbindReason::is_orderly),
        "{:?}",
        seen.unbind
    );
}
