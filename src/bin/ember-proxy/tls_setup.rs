//! The TLS flags into rustls configurations, read once at start: `--tls-cert`/`--tls-key`
//! (the first pair the default, the others chosen by the DNS names their certificates
//! carry), `--tls-client-ca`, and `--backend-tls` with its CA, SNI name or the loud
//! `--backend-tls-insecure`. A file that can't be read or a key that doesn't fit is one
//! line at start, never a surprise at the first client.

use std::sync::Arc;

use ember::tls::rustls::{ClientConfig, ServerConfig};
use ember::tls::{ClientTls, Identity, ServerTls};

use crate::args::{BackendTls, ListenerTls};

/// The listener's TLS configuration.
pub fn listener(tls: &ListenerTls) -> Result<Arc<ServerConfig>, String> {
    let mut identities = tls.identities.iter().map(|(cert, key)| {
        Identity::from_pem_files(cert, key).map_err(|e| format!("--tls-cert: {e}"))
    });
    let Some(first) = identities.next() else {
        return Err("--tls-cert: no certificate".into());
    };
    let mut server = ServerTls::new(first?);
    for identity in identities {
        server = server
            .sni_by_certificate(identity?)
            .map_err(|e| format!("--tls-cert: {e}"))?;
    }
    if let Some(ca) = &tls.client_ca {
        let pem =
            std::fs::read(ca).map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
        server = server
            .require_client_certificate(&pem)
            .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
    }
    server.build().map_err(|e| format!("--tls-cert: {e}"))
}

/// The backends' TLS configuration, and the name to verify them under (`None`: each
/// backend's own host name).
pub fn backends(tls: &BackendTls) -> Result<(Arc<ClientConfig>, Option<String>), String> {
    let client = if tls.insecure {
        log::warn!(
            "ember-proxy: --backend-tls-insecure: backend certificates are NOT verified; \
             anyone between the proxy and its backends can read and change the traffic"
        );
        ClientTls::dangerous_accept_any_server()
    } else if let Some(ca) = &tls.ca {
        ClientTls::with_ca_file(ca).map_err(|e| format!("--backend-ca: {e}"))?
    } else {
        ClientTls::system_roots().map_err(|e| format!("--backend-tls: {e}"))?
    };
    let config = client.build().map_err(|e| format!("--backend-tls: {e}"))?;
    Ok((config, tls.sni.clone()))
}
