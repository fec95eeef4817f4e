//! TLS end to end, on one reactor, with a certificate made at run time:
//! `cargo run --example tls_proxy`.
//!
//! A throwaway CA signs a certificate for `localhost` (rcgen); a proxy terminates TLS with
//! it in front of a plaintext echo server; a client speaks TLS to the proxy, verifying it
//! against that CA under the name `localhost`, sends a few lines, prints the echo and what
//! the handshake settled, and the example exits (status 1 if anything went wrong).

use std::process::ExitCode;
use std::sync::Arc;

use ember::proxy::{self, Options};
use ember::tls::rustls::ClientConfig;
use ember::tls::{ClientTls, Identity, ServerTls};
use ember::{Context, Handler, PeerClosed, Reactor, UnbindReason};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const LINES: [&str; 3] = [
    "hello over TLS",
    "the proxy decrypts",
    "and the echo encrypts back",
];

struct Echo;

impl Handler for Echo {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}

/// Speaks TLS to the proxy, sends the lines, half-closes, and checks the echo.
struct Client {
    config: Arc<ClientConfig>,
    received: Vec<u8>,
    ok: Arc<std::sync::atomic::AtomicBool>,
}

impl Handler for Client {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        if let Err(e) = cx.start_tls_client(Arc::clone(&self.config), "localhost") {
            println!("could not start TLS: {e}");
            cx.close();
            return;
        }
        for line in LINES {
            println!("client -> {line}");
            cx.send_data(format!("{line}\n").as_bytes());
        }
        cx.close_write();
    }

    fn tls_handshake_completed(&mut self, cx: &mut Context<'_>) {
        if let Some(info) = cx.tls_info() {
            println!(
                "handshake: {} with {}, server certificate verified against the example's CA",
                info.protocol.as_deref().unwrap_or("?"),
                info.cipher_suite.as_deref().unwrap_or("?")
            );
        }
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.received.extend_from_slice(data);
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        PeerClosed::Close
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let text = String::from_utf8_lossy(&self.received);
        for line in text.lines() {
            println!("client <- {line}");
        }
        let sent: String = LINES.iter().map(|l| format!("{l}\n")).collect();
        let ok = text == sent;
        println!("{} ({reason})", if ok { "all echoed" } else { "MISMATCH" });
        self.ok.store(ok, std::sync::atomic::Ordering::Relaxed);
        cx.stop();
    }
}

/// A CA and a certificate it signs for `localhost`: (CA certificate PEM, server identity).
fn certificates() -> Result<(String, Identity), Box<dyn std::error::Error>> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".into()])?.signed_by(&key, &issuer)?;
    let identity = Identity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
    Ok((ca_pem, identity))
}

fn main() -> ExitCode {
    let (ca_pem, identity) = match certificates() {
        Ok(made) => made,
        Err(e) => {
            eprintln!("tls_proxy: making the certificates: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::clone(&ok);
    let ran = Reactor::run(move |r| {
        let server = ServerTls::new(identity).build()?;
        let client = ClientTls::with_ca(ca_pem.as_bytes())?.build()?;
        let echo = r.start_server("127.0.0.1:0", || Echo)?;
        let echo = r.server_addr(echo).expect("TCP servers have an address");
        let proxy = Options::new()
            .tls(server)
            .start(r, "127.0.0.1:0", move |conn| {
                conn.server("echo", proxy::Backend::tcp(echo));
            })?;
        let at = proxy.local_addr().expect("TCP servers have an address");
        println!("TLS proxy on {at}, relaying in the clear to the echo server on {echo}");
        r.connect(
            at,
            Client {
                config: client,
                received: Vec::new(),
                ok: done,
            },
        )?;
        Ok(())
    });
    match ran {
        Ok(()) if ok.load(std::sync::atomic::Ordering::Relaxed) => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tls_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
