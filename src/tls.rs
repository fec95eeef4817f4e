//! TLS configuration for [`Reactor::start_tls_server`](crate::Reactor::start_tls_server)
//! and [`Reactor::start_tls_client`](crate::Reactor::start_tls_client), on rustls with the
//! `ring` provider.
//!
//! - [`Identity`]: a certificate chain and its private key, from PEM.
//! - [`ServerTls`]: one identity, or several chosen by the name the client asks for
//!   (SNI); optionally client certificates required and verified against a CA (mutual
//!   TLS); ALPN.
//! - [`ClientTls`]: **verifies the server by default**, against the system's roots or a
//!   CA file, under the name given to `start_tls_client` (sent as SNI); ALPN; a client
//!   certificate. The one way around verification says what it is:
//!   [`ClientTls::dangerous_accept_any_server`], for tests.
//!
//! ```no_run
//! use ember::tls::{ClientTls, Identity, ServerTls};
//!
//! let server = ServerTls::new(Identity::from_pem_files("cert.pem", "key.pem")?)
//!     .alpn(&[b"h2", b"http/1.1"])
//!     .build()?;
//! let client = ClientTls::system_roots()?.build()?;
//! # let _ = (server, client);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ResolvesServerCertUsingSni, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

pub use crate::reactor::{DEFAULT_TLS_HANDSHAKE_TIMEOUT, TlsInfo};
pub use rustls;

mod subject;

/// The subject of a DER certificate as RFC 4514 text (`CN=client,O=Example Org,C=FR`:
/// the most specific name first); `None` if it is not a certificate. For the peer of a
/// connection, [`TlsInfo::peer_subject`].
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    subject::of_certificate(der)
}

impl TlsInfo {
    /// The subject of the peer's certificate (the leaf of
    /// [`peer_certificates`](Self::peer_certificates)) as RFC 4514 text, e.g.
    /// `CN=client.example,O=Example Org`; `None` when the peer sent none (a client
    /// without mutual TLS).
    pub fn peer_subject(&self) -> Option<String> {
        certificate_subject(self.peer_certificates.first()?)
    }
}

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From PEM text: the chain's certificates, and a PKCS#8, PKCS#1 or SEC1 key.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> io::Result<Identity> {
        let chain = certificates(chain)?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| invalid(format!("no private key in the PEM: {e}")))?;
        Ok(Identity { chain, key })
    }

    /// From PEM files.
    pub fn from_pem_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<Identity> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        Identity::from_pem(&read(chain)?, &read(key)?)
            .map_err(|e| invalid(format!("{} / {}: {e}", chain.display(), key.display())))
    }

    /// The DNS names the leaf certificate is valid for (its subject alternative names).
    pub fn dns_names(&self) -> Vec<String> {
        self.chain
            .first()
            .and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok())
            .map(|cert| cert.valid_dns_names().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn certified(&self) -> io::Result<CertifiedKey> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
            .map_err(|e| invalid(format!("the key does not fit the certificate: {e}")))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A TLS server's configuration, built into rustls's with [`build`](Self::build).
#[derive(Debug)]
pub struct ServerTls {
    default: Identity,
    by_name: Vec<(String, Identity)>,
    client_roots: Option<RootCertStore>,
    alpn: Vec<Vec<u8>>,
}

impl ServerTls {
    /// A server presenting `identity` (to every client, or to those whose SNI matches no
    /// name given to [`sni`](Self::sni)).
    pub fn new(identity: Identity) -> ServerTls {
        ServerTls {
            default: identity,
            by_name: Vec::new(),
            client_roots: None,
            alpn: Vec::new(),
        }
    }

    /// Presents `identity` to clients asking for `name` (SNI); its certificate must be
    /// valid for that name.
    pub fn sni(mut self, name: &str, identity: Identity) -> ServerTls {
        self.by_name.push((name.to_owned(), identity));
        self
    }

    /// Presents `identity` to clients asking for any DNS name its certificate is valid
    /// for ([`Identity::dns_names`]). `Err` if it names none.
    pub fn sni_by_certificate(self, identity: Identity) -> io::Result<ServerTls> {
        let names = identity.dns_names();
        let Some((last, others)) = names.split_last() else {
            return Err(invalid("the certificate names no DNS name to choose it by"));
        };
        let mut tls = self;
        for name in others {
            let copy = Identity {
                chain: identity.chain.clone(),
                key: identity.key.clone_key(),
            };
            tls = tls.sni(name, copy);
        }
        Ok(tls.sni(last, identity))
    }

    /// Requires a client certificate that verifies against the CA certificates in
    /// `ca_pem` (mutual TLS); a client without one fails its handshake.
    pub fn require_client_certificate(mut self, ca_pem: &[u8]) -> io::Result<ServerTls> {
        self.client_roots = Some(roots(ca_pem)?);
        Ok(self)
    }

    /// The protocols offered through ALPN, preferred first.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> ServerTls {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// The rustls configuration to hand to `start_tls_server`.
    pub fn build(self) -> io::Result<Arc<ServerConfig>> {
        let builder = ServerConfig::builder_with_provider(Arc::new(server_provider()))
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let builder = match self.client_roots {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::new(provider()),
                )
                .build()
                .map_err(invalid)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = if self.by_name.is_empty() {
            builder
                .with_single_cert(self.default.chain, self.default.key)
                .map_err(|e| invalid(format!("the key does not fit the certificate: {e}")))?
        } else {
            let mut sni = ResolvesServerCertUsingSni::new();
            for (name, identity) in &self.by_name {
                sni.add(name, identity.certified()?)
                    .map_err(|e| invalid(format!("certificate for `{name}`: {e}")))?;
            }
            let fallback = Arc::new(self.default.certified()?);
            builder.with_cert_resolver(Arc::new(WithFallback { sni, fallback }))
        };
        config.alpn_protocols = self.alpn;
        // Our order, not the client's: see `server_provider`.
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

/// SNI picks among the named identities; a client asking for another name, or none,
/// gets the default.
#[derive(Debug)]
struct WithFallback {
    sni: ResolvesServerCertUsingSni,
    fallback: Arc<CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for WithFallback {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name().is_some();
        let chosen = if named { self.sni.resolve(hello) } else { None };
        chosen.or_else(|| Some(Arc::clone(&self.fallback)))
    }
}

/// A TLS client's configuration, built into rustls's with [`build`](Self::build).
#[derive(Debug)]
pub struct ClientTls {
    roots: Option<RootCertStore>,
    alpn: Vec<Vec<u8>>,
    identity: Option<Identity>,
}

impl ClientTls {
    /// Verifies servers against the system's trusted roots (`/etc/ssl/certs` and the
    /// like). `Err` if none could be loaded.
    pub fn system_roots() -> io::Result<ClientTls> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(invalid("no trusted root certificates found on this system"));
        }
        Ok(ClientTls::with_roots(roots))
    }

    /// Verifies servers against the CA certificates in `ca_pem` only.
    pub fn with_ca(ca_pem: &[u8]) -> io::Result<ClientTls> {
        Ok(ClientTls::with_roots(roots(ca_pem)?))
    }

    /// Verifies servers against the CA certificates in the PEM file at `path`.
    pub fn with_ca_file(path: impl AsRef<Path>) -> io::Result<ClientTls> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        ClientTls::with_ca(&pem).map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    /// **Accepts any server certificate, verifying nothing**: anyone in the path can
    /// read and change the traffic. For tests against self-signed servers; never the
    /// default, and a proxy using it should say so loudly.
    pub fn dangerous_accept_any_server() -> ClientTls {
        ClientTls {
            roots: None,
            alpn: Vec::new(),
            identity: None,
        }
    }

    fn with_roots(roots: RootCertStore) -> ClientTls {
        ClientTls {
            roots: Some(roots),
            alpn: Vec::new(),
            identity: None,
        }
    }

    /// The protocols offered through ALPN, preferred first.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> ClientTls {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Presents `identity` to servers that ask for a client certificate.
    pub fn identity(mut self, identity: Identity) -> ClientTls {
        self.identity = Some(identity);
        self
    }

    /// The rustls configuration to hand to `start_tls_client`.
    pub fn build(self) -> io::Result<Arc<ClientConfig>> {
        let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let builder = match self.roots {
            Some(roots) => builder.with_root_certificates(roots),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(
                    provider().signature_verification_algorithms,
                ))),
        };
        let mut config = match self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| invalid(format!("the key does not fit the certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        Ok(Arc::new(config))
    }
}

/// `dangerous_accept_any_server`: checks the handshake's signatures (so the session is
/// at least consistent) but trusts any certificate.
#[derive(Debug)]
struct AcceptAnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The provider of a server, whose cipher-suite order it applies over the client's: the
/// AES-128-GCM suites first, then AES-256-GCM, then ChaCha20-Poly1305. Clients (OpenSSL's
/// among them) tend to list AES-256-GCM with SHA-384 first, and SHA-384 is what a
/// handshake pays for most after the key exchange: TLS 1.3's key schedule is a few dozen
/// HMACs, and SHA-384 has no instructions of its own on x86 where SHA-256 has SHA-NI.
/// Preferring the SHA-256 suite cut the CPU of a resumed handshake by about a fifth here
/// (docs/benchmarks.md, "where the time goes"); AES-128 is what Go and BoringSSL servers
/// prefer too.
fn server_provider() -> CryptoProvider {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384,
    };
    let mut provider = provider();
    // A stable sort: within a rank, ring's order stays.
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            TLS13_AES_128_GCM_SHA256
            | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384
            | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        });
    provider
}

fn certificates(pem: &[u8]) -> io::Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("bad certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("no certificate in the PEM"));
    }
    Ok(chain)
}

fn roots(ca_pem: &[u8]) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn invalid(e: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}
