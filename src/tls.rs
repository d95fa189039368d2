//! TLS: the rustls server configuration (TLS 1.3 and 1.2, ring), and client-certificate
//! verification.
//!
//! `/cacerts` must work without a client certificate (RFC 7030 §4.1) and rustls cannot ask per
//! route, so the handshake allows unauthenticated clients and verifies any chain presented
//! against the union of every label's anchors (gateway/bootstrap CAs and PAIs). Which anchors
//! count for a request is decided per label and operation in `policy`, with [`Anchors`].

use std::path::Path;
use std::sync::Arc;

use der::Decode;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

use crate::error::{Error, Result};
use crate::signer::file::check_private_mode;

/// The one TLS crypto provider of the tree (DESIGN.md: ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A set of trust anchors and a verifier for client chains against them.
#[derive(Clone)]
pub struct Anchors {
    /// The handshake's verifier (rustls).
    verifier: Arc<dyn ClientCertVerifier>,
    /// The anchors as webpki takes them, and each one's pathLenConstraint, which webpki does
    /// not apply to anchors.
    trust: Arc<Vec<(rustls_pki_types::TrustAnchor<'static>, Option<u8>)>>,
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
        let trust = certs
            .iter()
            .map(|c| {
                let anchor = webpki::anchor_from_trusted_cert(c)
                    .map_err(|e| Error::Internal(format!("trust anchor: {e}")))?
                    .to_owned();
                let cert = Certificate::from_der(c.as_ref())
                    .map_err(|e| Error::Internal(format!("trust anchor: {e}")))?;
                let path_len =
                    extension::<BasicConstraints>(&cert).and_then(|b| b.path_len_constraint);
                Ok((anchor, path_len))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Self {
            verifier: Arc::new(PresentedLogger(verifier)),
            trust: Arc::new(trust),
        }))
    }

    /// True when `chain` (leaf first) verifies to one of these anchors now (RFC 5280 §6, by
    /// webpki, for client authentication) along a path that also meets what webpki leaves out
    /// ([`Anchors::path_holds`]). The check runs on the path webpki verified (a path that
    /// fails it makes webpki try another), so certificates that merely share a name with one
    /// on the path cannot stand in for it.
    pub fn verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, rest)) = chain.split_first() else {
            return false;
        };
        let Ok(end_entity) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        let anchors: Vec<_> = self.trust.iter().map(|(a, _)| a.clone()).collect();
        let check = |path: &webpki::VerifiedPath<'_>| {
            if self.path_holds(leaf, path) {
                Ok(())
            } else {
                Err(webpki::Error::PathLenConstraintViolated)
            }
        };
        end_entity
            .verify_for_usage(
                provider().signature_verification_algorithms.all,
                &anchors,
                rest,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                Some(&check),
            )
            .is_ok()
    }

    /// What webpki does not check, on a path it verified: a leaf with keyUsage has
    /// digitalSignature (RFC 5280 §4.2.1.3: it signs the TLS handshake); an intermediate with
    /// keyUsage has keyCertSign (§4.2.1.3, §6.1.4 (n)); and the anchor's pathLenConstraint
    /// bounds the intermediates below it (§4.2.1.9; webpki ignores an anchor's constraints).
    fn path_holds(&self, leaf: &CertificateDer<'_>, path: &webpki::VerifiedPath<'_>) -> bool {
        let Ok(leaf) = Certificate::from_der(leaf.as_ref()) else {
            return false;
        };
        if extension::<KeyUsage>(&leaf).is_some_and(|ku| !ku.digital_signature()) {
            return false;
        }
        let mut intermediates = 0usize;
        for cert in path.intermediate_certificates() {
            intermediates += 1;
            let Ok(cert) = Certificate::from_der(cert.der().as_ref()) else {
                return false;
            };
            if extension::<KeyUsage>(&cert).is_some_and(|ku| !ku.key_cert_sign()) {
                return false;
            }
        }
        let anchor = path.anchor();
        self.trust
            .iter()
            .find(|(a, _)| {
                a.subject.as_ref() == anchor.subject.as_ref()
                    && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
            })
            .is_some_and(|(_, path_len)| path_len.is_none_or(|n| intermediates <= usize::from(n)))
    }
}

/// The decoded extension of type `T` in `cert`, if present and well-formed.
fn extension<T: der::DecodeOwned + const_oid::AssociatedOid>(cert: &Certificate) -> Option<T> {
    cert.tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id == T::OID)
        .and_then(|e| T::from_der(e.extn_value.as_bytes()).ok())
}

tokio::task_local! {
    /// What the client presented in the handshake this task is running, when the chain was
    /// refused: the accept loop logs it with the handshake failure.
    pub static REFUSED_CHAIN: std::cell::RefCell<Option<String>>;
}

/// The handshake's client-certificate verifier, which also notes the presented subject and
/// issuer when it refuses a chain (in [`REFUSED_CHAIN`], when the task has one).
#[derive(Debug)]
struct PresentedLogger(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for PresentedLogger {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let outcome = self.0.verify_client_cert(end_entity, intermediates, now);
        if outcome.is_err() {
            let presented = match Certificate::from_der(end_entity.as_ref()) {
                Ok(c) => format!(
                    "subject \"{}\", issuer \"{}\"",
                    c.tbs_certificate().subject(),
                    c.tbs_certificate().issuer()
                ),
                Err(_) => "an undecodable certificate".into(),
            };
            let _ = REFUSED_CHAIN.try_with(|slot| *slot.borrow_mut() = Some(presented));
        }
        outcome
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
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
