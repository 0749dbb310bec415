//! HTTPS on the listener when a certificate and key are configured: the rustls configuration
//! (ring provider, TLS 1.2 and 1.3, HTTP/1.1). The connection loop in [`crate::http`] does the
//! handshakes and serves the same router either way.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Loads the PEM certificate chain and private key into a rustls server configuration.
///
/// # Errors
/// A file cannot be read, holds no certificate or key, or the key does not fit the
/// certificate.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("failed to read the TLS certificate at {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no PEM certificate",
        cert.display()
    );
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("failed to read the TLS private key at {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("the ring provider supports no TLS version")?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .context("the TLS private key does not fit the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
