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
use support::clients::{exchange, wait_until};
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
    tls.write_all(request).unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
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
    assert!(exchange(untrusted.value.0, b"secret").is_empty());
    let stats = untrusted.value.1.clone();
    wait_until("the failed backend counted", IO_TIMEOUT, || {
        stats.backends_failed() == 1
    });
}

#[test]
fn a_proxy_header_goes_in_the_clear_before_the_backends_handshake() {
    let ca = TestCa::new("test CA");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let config = server_config(&ca);
    // The backend: reads the PROXY header in the clear, then speaks TLS and echoes.
    let backend = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut received = Vec::new();
        let (header, consumed) = loop {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).unwrap();
            received.push(byte[0]);
            if let Parsed::Done { header, consumed } = proxy_protocol::parse(&received) {
                break (header, consumed);
            }
        };
        assert_eq!(consumed, received.len());
        let session = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(session, tcp);
        let mut request = [0u8; 5];
        tls.read_exact(&mut request).unwrap();
        tls.write_all(&request).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        header
    });
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
