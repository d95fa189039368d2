//! TLS: the rustls server configuration (TLS 1.3 and 1.2, ring), and client-certificate
//! verification.
//!
//! `/cacerts` must work without a client certificate (RFC 7030 §4.1) and rustls cannot ask per
//! route, so the handshake allows unauthenticated clients and verifies any chain presented
//! against the union of every label's anchors (gateway/bootstrap CAs and PAIs). Which anchors
//! count for a request is decided per label and operation in `policy`, with [`Anchors`].

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::error::{Error, Result};
use crate::signer::file::check_private_mode;

/// The one TLS crypto provider of the tree (DESIGN.md: ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A set of trust anchors and a verifier for client chains against them.
#[derive(Clone)]
pub struct Anchors {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Anchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Anchors")
    }
}

impl Anchors {
    /// Anchors from DER certificates; `None` when `certs` is empty.
    pub fn new(certs: &[CertificateDer<'static>]) -> Result<Option<Self>> {
        if certs.is_empty() {
            return Ok(None);
        }
        let mut roots = RootCertStore::empty();
        for c in certs {
            roots
                .add(c.clone())
                .map_err(|e| Error::Internal(format!("trust anchor refused: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::Internal(format!("client verifier: {e}")))?;
        Ok(Some(Self { verifier }))
    }

    /// True when `chain` (leaf first) verifies to one of these anchors now (RFC 5280 §6, by
    /// webpki, for client authentication).
    pub fn verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        match chain.split_first() {
            Some((leaf, rest)) => self
                .verifier
                .verify_client_cert(leaf, rest, UnixTime::now())
                .is_ok(),
            None => false,
        }
    }
}

/// Reads every certificate of a PEM file.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::io(path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::io(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::io(path, "holds no certificate"));
    }
    Ok(certs)
}

/// The server's TLS configuration: `cert_path` (chain, leaf first) and `key_path` (mode 0600),
/// TLS 1.3 and 1.2 (EST-WIRE.md "TLS": libest's client stops at 1.2), optional client
/// certificates verified against `client_anchors`.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    client_anchors: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ServerConfig>> {
    let chain = read_pem_certs(cert_path)?;
    check_private_mode(key_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| Error::KeyFile {
        path: key_path.to_path_buf(),
        problem: format!("not a PEM private key: {e}"),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Internal(e.to_string()))?;
    let builder = match Anchors::new(client_anchors)? {
        Some(a) => builder.with_client_cert_verifier(a.verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::KeyFile {
            path: key_path.to_path_buf(),
            problem: format!("does not fit the certificate {}: {e}", cert_path.display()),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
