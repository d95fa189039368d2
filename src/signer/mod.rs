//! The signer seam: a public key and a way to sign with the matching private key.
//!
//! A signer knows nothing of certificates (DESIGN.md "Layout"): it signs bytes with ECDSA P-256
//! over SHA-256 and hands back a DER `Ecdsa-Sig-Value`. The PAI key never leaves it. The file
//! signer lives in [`file`], the PKCS#11 signer (HSM) in [`pkcs11`].

pub mod file;
pub mod fixed_key;
pub mod pkcs11;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

use crate::error::{Error, Result};

pub use file::{FileSigner, PassphraseSource};
pub use pkcs11::{Pkcs11Config, Pkcs11Signer};

/// Signs with a P-256 private key it never reveals.
pub trait Signer: Send + Sync {
    /// The SEC1 uncompressed public point (65 bytes, `04 || X || Y`).
    fn public_key(&self) -> &[u8; 65];

    /// ECDSA P-256 with SHA-256 over `message`; the DER `Ecdsa-Sig-Value` (RFC 5480 §2.2.3... /
    /// RFC 5758 §3.2).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}

/// A signer whose signatures are timed and whose failures are counted, by signer kind
/// (`matter_est_signer_duration_seconds`, `matter_est_signer_errors_total`).
pub struct Measured {
    inner: std::sync::Arc<dyn Signer>,
    kind: &'static str,
}

impl Measured {
    /// `kind`: `file` or `pkcs11`.
    pub fn new(inner: std::sync::Arc<dyn Signer>, kind: &'static str) -> Self {
        Self { inner, kind }
    }
}

impl Signer for Measured {
    fn public_key(&self) -> &[u8; 65] {
        self.inner.public_key()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let start = std::time::Instant::now();
        let result = self.inner.sign(message);
        metrics::histogram!("matter_est_signer_duration_seconds", "signer" => self.kind)
            .record(start.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("matter_est_signer_errors_total", "signer" => self.kind).increment(1);
        }
        result
    }
}

/// Verifies a DER ECDSA P-256/SHA-256 signature over `message` by `public_key` (SEC1 point).
pub fn verify(public_key: &[u8], message: &[u8], der_signature: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, public_key)
        .verify(message, der_signature)
        .is_ok()
}

/// A fresh P-256 key pair from the operating system's CSPRNG: (PKCS#8 v1 DER with the public key
/// embedded, SEC1 uncompressed public point).
pub fn generate_p256() -> Result<(Vec<u8>, [u8; 65])> {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &SystemRandom::new(),
    )
    .map_err(|_| Error::Internal("P-256 key generation failed".into()))?;
    // The point is read back from the document (ECPrivateKey's publicKey, RFC 5915 §3): loading
    // the pair would recompute it from the private key, a scalar multiplication (~17 µs, more
    // than generating the key) that a batch pays once per device.
    let point = pkcs8_public_key(pkcs8.as_ref())?;
    Ok((pkcs8.as_ref().to_vec(), point))
}

fn pkcs8_public_key(der: &[u8]) -> Result<[u8; 65]> {
    let bad = |e: &dyn std::fmt::Display| Error::Internal(format!("generated PKCS#8 key: {e}"));
    let info = pkcs8::PrivateKeyInfoRef::try_from(der).map_err(|e| bad(&e))?;
    let key = sec1::EcPrivateKey::try_from(info.private_key.as_bytes()).map_err(|e| bad(&e))?;
    point(key.public_key.ok_or_else(|| bad(&"no public key"))?)
}

/// An in-memory P-256 signer (ring), used by the file signer and for keys we generate.
pub struct KeySigner {
    pair: EcdsaKeyPair,
    point: [u8; 65],
    rng: SystemRandom,
}

impl KeySigner {
    /// Loads a PKCS#8 DER P-256 key whose ECPrivateKey embeds its public key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
            .map_err(|e| Error::Signer(format!("not a P-256 PKCS#8 key: {e}")))?;
        let point = point(pair.public_key().as_ref())?;
        Ok(Self { pair, point, rng })
    }
}

impl Signer for KeySigner {
    fn public_key(&self) -> &[u8; 65] {
        &self.point
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Signer("ECDSA signing failed".into()))
    }
}

fn point(bytes: &[u8]) -> Result<[u8; 65]> {
    bytes
        .try_into()
        .map_err(|_| Error::Internal("P-256 public key is not 65 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let (pkcs8, point) = generate_p256().expect("keygen");
        let signer = KeySigner::from_pkcs8(&pkcs8).expect("load");
        // The point read from the document is the one ring derives from the private key.
        assert_eq!(signer.public_key(), &point);
        let sig = signer.sign(b"tbs").expect("sign");
        assert!(verify(&point, b"tbs", &sig));
        assert!(!verify(&point, b"other", &sig));
    }
}
