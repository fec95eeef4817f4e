//! TLS in the proxy: terminated on the listener (`Options::tls`), originated to backends
//! (`Backend::tls`, verified), a PROXY header in the clear ahead of the backend's
//! handshake, and a PROXY header ahead of the client's. Clients here are blocking rustls
//! streams over std sockets; backends are ember TLS servers or std listeners.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use ember::proxy::proxy_protocol::{self, Parsed};
use ember::proxy::{Backend, Finish, Options, Stats};
use ember::tls::rustls::{self, ClientConfig, ServerConfig};
use ember::tls::{ClientTls, Identity, ServerTls};
use ember::{Context, Handler};

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::certs::{Leaf, TestCa};
use support::child::EmberProxy;
use support::clients::{exchange, exchange_with_a_closing_server, wait_until};
use support::haproxy::{Haproxy, haproxy_binary};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;

fn identity(leaf: &Leaf) -> Identity {
    Identity::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()
}

fn server_config(ca: &TestCa) -> Arc<ServerConfig> {
    ServerTls::new(identity(&ca.server(&["localhost"])))
        .build()
        .unwrap()
}

fn client_config(ca: &TestCa) -> Arc<ClientConfig> {
    ClientTls::with_ca(ca.cert_pem.as_bytes())
        .unwrap()
        .build()
        .unwrap()
}

/// A blocking TLS client: sends `request` after `preamble` (in the clear), then reads
/// until the server closes.
fn tls_exchange(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    preamble: &[u8],
    request: &[u8],
) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.write_all(preamble).unwrap();
    let name = "localhost".try_into().unwrap();
    let session = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(session, tcp);
    // A server that refuses the handshake (no client certificate, say) may have closed
    // by the time the request goes out: a failed write means no answer.
    if tls.write_all(request).is_err() {
        return Vec::new();
    }
    tls.conn.send_close_notify();
    if tls.flush().is_err() {
        return Vec::new();
    }
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    answer
}

/// A proxy that relays every client cut-through to the backend `backend` makes (on the
/// reactor thread: a `Backend` is not `Send`).
fn proxy(
    options: Options,
    backend: impl FnOnce() -> Backend + Send + 'static,
) -> ReactorThread<(SocketAddr, Stats)> {
    ReactorThread::spawn(move |r| {
        let backend = backend();
        let server = options.start(r, "127.0.0.1:0", move |conn| {
            conn.server("app", backend.clone().relay_client().relay_server());
            conn.on_finish(|_, _, _| Finish::Close);
        })?;
        Ok((server.local_addr().unwrap(), server.stats().clone()))
    })
}

#[test]
fn tls_terminated_on_the_listener_reaches_a_plain_backend_in_the_clear() {
    let ca = TestCa::new("test CA");
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let running = proxy(Options::new().tls(server_config(&ca)), move || {
        Backend::tcp(echo.value)
    });
    let request = Pattern::new(5).bytes(300_000);
    let answer = tls_exchange(running.value.0, client_config(&ca), b"", &request);
    assert!(answer == request, "the echo came back whole through TLS");
    // Plaintext is refused: the first bytes are not a ClientHello. The answer is at most
    // a TLS alert record (content type 21), never the request relayed.
    let refused = exchange(running.value.0, b"GET / HTTP/1.1\r\n\r\n");
    assert!(refused.is_empty() || refused[0] == 21, "{refused:?}");
}

/// An ember TLS echo server.
struct TlsEcho(Arc<ServerConfig>);

impl Handler for TlsEcho {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_server(Arc::clone(&self.0)).unwrap();
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}

#[test]
fn tls_originated_to_a_backend_is_verified() {
    let ca = TestCa::new("test CA");
    let config = server_config(&ca);
    let backend = ReactorThread::spawn(move |r| serve(r, move || TlsEcho(Arc::clone(&config))));
    // Verified against the right CA under the certificate's name: served.
    let trusted = proxy(Options::new(), {
        let (addr, config) = (backend.value, client_config(&ca));
        move || Backend::tcp(addr).tls(config, Some("localhost"))
    });
    let request = Pattern::new(9).bytes(200_000);
    assert!(exchange(trusted.value.0, &request) == request);
    // Another CA: the backend fails verification and the client is closed, unanswered.
    let stranger = TestCa::new("another CA");
    let untrusted = proxy(Options::new(), {
        let (addr, config) = (backend.value, client_config(&stranger));
        move || Backend::tcp(addr).tls(config, Some("localhost"))
    });
    // The verification may fail before the client has even sent: the proxy then closes
    // a client whose bytes it never read, which resets it; either way nothing comes back.
    assert!(exchange_with_a_closing_server(untrusted.value.0, b"secret").is_empty());
    let stats = untrusted.value.1.clone();
    wait_until("the failed backend counted", IO_TIMEOUT, || {
        stats.backends_failed() == 1
    });
}

/// A backend on a std thread for one connection: reads a PROXY header in the clear, then
/// speaks TLS as `config` says and echoes `len` bytes. Gives the header it read.
fn proxy_header_then_tls_backend(
    config: Arc<ServerConfig>,
    len: usize,
) -> (
    SocketAddr,
    std::thread::JoinHandle<proxy_protocol::ProxyHeader>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = std::thread::spawn(move || {
        // A connection that closes without a byte (a health check, say) is not the client.
        let (mut tcp, first) = loop {
            let (mut tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut byte = [0u8; 1];
            if tcp.read_exact(&mut byte).is_ok() {
                break (tcp, byte[0]);
            }
        };
        let mut received = vec![first];
        let header = loop {
            if let Parsed::Done { header, consumed } = proxy_protocol::parse(&received) {
                assert_eq!(
                    consumed,
                    received.len(),
                    "nothing after the header in the clear"
                );
                break header;
            }
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).unwrap();
            received.push(byte[0]);
        };
        let session = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(session, tcp);
        let mut request = vec![0u8; len];
        tls.read_exact(&mut request).unwrap();
        tls.write_all(&request).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        header
    });
    (addr, backend)
}

#[test]
fn a_proxy_header_goes_in_the_clear_before_the_backends_handshake() {
    let ca = TestCa::new("test CA");
    let (backend_addr, backend) = proxy_header_then_tls_backend(server_config(&ca), 5);
    let running = proxy(Options::new(), {
        let config = client_config(&ca);
        move || {
            Backend::tcp(backend_addr)
                .send_proxy(proxy_protocol::Version::V2)
                .tls(config, Some("localhost"))
        }
    });
    let mut client = TcpStream::connect(running.value.0).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.write_all(b"hello").unwrap();
    let mut answer = [0u8; 5];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"hello");
    let header = backend.join().unwrap();
    assert_eq!(header.source, Some(client.local_addr().unwrap()));
    assert_eq!(header.destination, Some(running.value.0));
}

#[test]
fn a_client_may_send_a_proxy_header_then_tls() {
    let ca = TestCa::new("test CA");
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let running = proxy(
        Options::new().accept_proxy(true).tls(server_config(&ca)),
        move || Backend::tcp(echo.value),
    );
    let header = proxy_protocol::v1_header(
        "203.0.113.9:5555".parse().unwrap(),
        "198.51.100.1:443".parse().unwrap(),
    );
    let answer = tls_exchange(
        running.value.0,
        client_config(&ca),
        &header,
        b"through both",
    );
    assert_eq!(answer, b"through both");
}

// ---------------------------------------------------------------------------------------
// The binary's flags.

/// Writes `files` (name, contents) into a fresh directory for this test.
fn files(test: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-tls-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    dir
}

/// A TLS client that verifies the proxy as `name` and checks the echo of `request`.
fn tls_echo_as(addr: SocketAddr, ca: &TestCa, name: &str, request: &[u8]) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let session =
        rustls::ClientConnection::new(client_config(ca), name.to_owned().try_into().unwrap())
            .unwrap();
    let mut tls = rustls::StreamOwned::new(session, tcp);
    tls.write_all(request).unwrap();
    let mut answer = vec![0; request.len()];
    tls.read_exact(&mut answer).unwrap();
    answer
}

#[test]
fn the_binary_terminates_tls_choosing_the_certificate_by_sni() {
    let ca = TestCa::new("test CA");
    let (a, b) = (ca.server(&["a.test"]), ca.server(&["b.test"]));
    let dir = files(
        "terminate",
        &[
            ("a.pem", &a.cert_pem),
            ("a.key", &a.key_pem),
            ("b.pem", &b.cert_pem),
            ("b.key", &b.key_pem),
        ],
    );
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let proxy = EmberProxy::start(&[
        "-r",
        &echo.value.to_string(),
        "--tls-cert",
        &path("a.pem"),
        "--tls-key",
        &path("a.key"),
        "--tls-cert",
        &path("b.pem"),
        "--tls-key",
        &path("b.key"),
        "--access-log",
        &path("access.log"),
    ]);
    for name in ["a.test", "b.test"] {
        assert_eq!(
            tls_echo_as(proxy.addr, &ca, name, name.as_bytes()),
            name.as_bytes()
        );
    }
    // Each session's access-log line says what its handshake settled.
    wait_until("both sessions logged", IO_TIMEOUT, || {
        let log = std::fs::read_to_string(path("access.log")).unwrap_or_default();
        ["a.test", "b.test"]
            .iter()
            .all(|name| log.contains(&format!(" tls=TLSv1_3 sni={name} alpn=- client_cert=no")))
    });
}

#[test]
fn the_binary_routes_by_server_name_without_terminating() {
    let ca = TestCa::new("test CA");
    let backend = |name: &'static str| {
        let config = ServerTls::new(identity(&ca.server(&[name])))
            .build()
            .unwrap();
        ReactorThread::spawn(move |r| serve(r, move || TlsEcho(Arc::clone(&config))))
    };
    let (a, b) = (backend("a.test"), backend("b.test"));
    let proxy = EmberProxy::start(&[
        "--sni-route",
        &format!("a.test={}", a.value),
        "--sni-route",
        &format!("B.TEST={}", b.value),
        "-r",
        &a.value.to_string(),
    ]);
    // Each name verifies only against its own backend's certificate: reaching it proves
    // the route, and the bytes went through untouched (the handshake is end to end).
    for name in ["a.test", "b.test"] {
        let request = Pattern::new(3).bytes(100_000);
        assert!(
            tls_echo_as(proxy.addr, &ca, name, &request) == request,
            "{name}"
        );
    }
    // Not TLS at all: closed.
    assert!(exchange(proxy.addr, b"GET / HTTP/1.1\r\n\r\n").is_empty());
}

#[test]
fn the_binary_sends_a_proxy_header_then_tls_to_its_backend() {
    let ca = TestCa::new("test CA");
    let dir = files("originate", &[("ca.pem", &ca.cert_pem)]);
    let (backend_addr, backend) = proxy_header_then_tls_backend(server_config(&ca), 4);
    let proxy = EmberProxy::start(&[
        "-r",
        &backend_addr.to_string(),
        "--send-proxy",
        "--backend-ca",
        dir.join("ca.pem").to_str().unwrap(),
        "--backend-sni",
        "localhost",
    ]);
    let mut client = TcpStream::connect(proxy.addr).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.write_all(b"ping").unwrap();
    let mut answer = [0u8; 4];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"ping");
    let header = backend.join().unwrap();
    assert_eq!(header.version, 1);
    assert_eq!(header.source, Some(client.local_addr().unwrap()));
}

#[test]
fn tls_mistakes_are_one_line_at_start() {
    for (args, want) in [
        (
            vec![
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.key",
            ],
            "--tls-cert: /nonexistent.pem",
        ),
        (
            vec!["--tls-cert", "/x.pem"],
            "--tls-cert and --tls-key come in pairs",
        ),
        (
            vec!["--backend-tls-insecure", "--backend-ca", "/x.pem"],
            "--backend-tls-insecure verifies nothing",
        ),
        (vec!["--sni-route", "a.test"], "not NAME=HOST:PORT"),
    ] {
        let out = std::process::Command::new(support::child::EMBER_PROXY)
            .args(["-l", "127.0.0.1:0", "-r", "127.0.0.1:1"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

/// A TLS client on a reactor: sends `payload`, expects it back, then counts itself done.
struct EchoingClient {
    config: Arc<ClientConfig>,
    payload: Vec<u8>,
    received: usize,
    done: std::rc::Rc<std::cell::Cell<usize>>,
}

impl Handler for EchoingClient {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_client(Arc::clone(&self.config), "localhost")
            .unwrap();
        cx.send_data(&self.payload);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        assert_eq!(
            data,
            &self.payload[self.received..self.received + data.len()]
        );
        self.received += data.len();
        if self.received == self.payload.len() {
            self.done.set(self.done.get() + 1);
            cx.close_after_writing();
        }
    }
}

#[test]
fn two_thousand_concurrent_tls_clients_through_a_terminating_proxy() {
    const CLIENTS: usize = 2000;
    let ca = TestCa::new("test CA");
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let running = proxy(Options::new().tls(server_config(&ca)), move || {
        Backend::tcp(echo.value)
    });
    let config = client_config(&ca);
    let done = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = std::rc::Rc::clone(&done);
    let proxy_addr = running.value.0;
    let (_, fired) =
        support::reactor_thread::run_bounded(std::time::Duration::from_secs(60), move |r| {
            for i in 0..CLIENTS {
                r.connect(
                    proxy_addr,
                    EchoingClient {
                        config: Arc::clone(&config),
                        payload: Pattern::new(i as u64).bytes(1000 + i),
                        received: 0,
                        done: std::rc::Rc::clone(&counted),
                    },
                )?;
            }
            let counted = std::rc::Rc::clone(&counted);
            r.add_periodic_timer(std::time::Duration::from_millis(10), move |r| {
                if counted.get() == CLIENTS {
                    r.stop();
                }
            });
            Ok(())
        });
    assert!(
        !fired,
        "only {} of {CLIENTS} clients were answered",
        done.get()
    );
    assert_eq!(done.get(), CLIENTS);
}

// ---------------------------------------------------------------------------------------
// Interop with HAProxy's TLS (OpenSSL), both ways.

#[test]
fn ember_verifies_haproxys_tls_frontend_and_haproxy_verifies_embers() {
    let binary = haproxy_binary().unwrap();
    let ca = TestCa::new("test CA");
    let leaf = ca.server(&["localhost"]);
    // HAProxy wants the certificate and its key in one file.
    let dir = files(
        "haproxy",
        &[
            ("crt.pem", &format!("{}{}", leaf.cert_pem, leaf.key_pem)),
            ("ca.pem", &ca.cert_pem),
        ],
    );
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));

    // ember speaks TLS to HAProxy's `bind ... ssl`, which relays to the echo in the clear.
    let mut haproxy = Haproxy::start_with_bind(
        &binary,
        &format!("ssl crt {}", dir.join("crt.pem").display()),
        "",
        &echo.value.to_string(),
    );
    drop(haproxy.connect()); // waits until HAProxy listens
    let front = haproxy.frontend;
    let ember = proxy(Options::new(), {
        let config = client_config(&ca);
        move || Backend::tcp(front).tls(config, Some("localhost"))
    });
    let request = Pattern::new(21).bytes(500_000);
    assert!(
        exchange(ember.value.0, &request) == request,
        "through ember's TLS client and HAProxy's TLS frontend"
    );

    // HAProxy speaks TLS, verifying, to ember's TLS listener, which relays in the clear.
    let ember_tls = proxy(Options::new().tls(server_config(&ca)), move || {
        Backend::tcp(echo.value)
    });
    let mut haproxy = Haproxy::start(
        &binary,
        "",
        &format!(
            "{} ssl verify required ca-file {} sni str(localhost)",
            ember_tls.value.0,
            dir.join("ca.pem").display()
        ),
    );
    let mut client = haproxy.connect();
    client.write_all(&request).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    assert!(
        answer == request,
        "through HAProxy's TLS client and ember's TLS listener"
    );
}

#[test]
fn a_gibibyte_byte_for_byte_through_tls_originated_then_terminated() {
    const SIZE: usize = 1 << 30;
    let ca = TestCa::new("test CA");
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    // B terminates TLS in front of a plaintext echo; A, in front of B, originates it.
    let terminating = proxy(Options::new().tls(server_config(&ca)), move || {
        Backend::tcp(echo.value)
    });
    let b = terminating.value.0;
    let originating = proxy(Options::new(), {
        let config = client_config(&ca);
        move || Backend::tcp(b).tls(config, Some("localhost"))
    });
    let echoed = support::clients::pump(originating.value.0, SIZE, 77);
    assert_eq!(
        echoed, SIZE,
        "every byte back, in order (checked as it came)"
    );
}

#[test]
fn the_binary_refuses_an_untrusted_backend_and_a_client_without_a_certificate_with_reasons() {
    let ca = TestCa::new("test CA");
    let stranger = TestCa::new("another CA");
    let client_leaf = ca.client("client-1");
    let leaf = ca.server(&["localhost"]);
    let dir = files(
        "refusals",
        &[
            ("stranger.pem", &stranger.cert_pem),
            ("ca.pem", &ca.cert_pem),
            ("cert.pem", &leaf.cert_pem),
            ("key.pem", &leaf.key_pem),
        ],
    );
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();

    // A backend whose certificate does not verify: the client is closed, and the reason
    // is a warning, with or without -v.
    let config = server_config(&ca);
    let backend = ReactorThread::spawn(move |r| serve(r, move || TlsEcho(Arc::clone(&config))));
    let proxy = EmberProxy::start(&[
        "-r",
        &backend.value.to_string(),
        "--backend-ca",
        &path("stranger.pem"),
        "--backend-sni",
        "localhost",
    ]);
    assert!(exchange_with_a_closing_server(proxy.addr, b"secret").is_empty());
    wait_until("the warning", IO_TIMEOUT, || {
        let stderr = proxy.child.stderr();
        stderr.contains(" WARN ") && stderr.contains("TLS failed: invalid peer certificate")
    });

    // --tls-client-ca: a client without a certificate fails its handshake; one with a
    // certificate from the CA is served.
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let proxy = EmberProxy::start(&[
        "-r",
        &echo.value.to_string(),
        "--tls-cert",
        &path("cert.pem"),
        "--tls-key",
        &path("key.pem"),
        "--tls-client-ca",
        &path("ca.pem"),
    ]);
    let anonymous = tls_exchange(proxy.addr, client_config(&ca), b"", b"hello");
    assert!(anonymous.is_empty(), "served without a certificate");
    let with_cert = ClientTls::with_ca(ca.cert_pem.as_bytes())
        .unwrap()
        .identity(identity(&client_leaf))
        .build()
        .unwrap();
    assert_eq!(tls_exchange(proxy.addr, with_cert, b"", b"hello"), b"hello");
    // Its access-log line (stderr by default) names it by its subject.
    let wanted = " client_cert=yes client_subject=\"CN=client-1,O=ember tests\"";
    let found = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        proxy.child.stderr().contains(wanted)
    });
    assert!(found, "{}", proxy.child.stderr());
}
