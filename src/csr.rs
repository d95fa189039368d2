//! CSR intake: raw bytes from a stranger become a verified [`EnrollmentRequest`].
//!
//! Accepts DER, base64 (any wrapping, RFC 8951 §3) or PEM; verifies the PKCS#10 signature (proof
//! of possession, RFC 2986 §3); requires P-256 and ecdsa-with-SHA256 (MATTER.md "CSRs"); reads
//! VID/PID the way Matter verifiers do ([`crate::matter::read_subject`]). Requested extensions
//! are never read: the profile decides every extension.

use base64::Engine;
use const_oid::ObjectIdentifier;
use der::Decode;
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use crate::asn1;
use crate::error::{Error, Result};
use crate::matter::{self, SubjectIds};
use crate::signer;

/// id-ecPublicKey.
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// prime256v1 / secp256r1.
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// ecdsa-with-SHA256.
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// How the CSR arrived; logged, never a reason to refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyForm {
    Der,
    Base64,
    Pem,
}

/// A CSR whose signature verified, with a P-256 key and a readable Matter subject.
#[derive(Clone, Debug)]
pub struct EnrollmentRequest {
    /// The CSR's public key, re-encoded as an uncompressed SEC1 point.
    pub public_key: [u8; 65],
    /// CN, VID and PID as a Matter verifier would read them.
    pub ids: SubjectIds,
    /// The subject as sent (for the re-enrollment comparison, RFC 7030 §4.2.2).
    pub subject: Name,
    /// How the body was encoded.
    pub form: BodyForm,
    /// `serverkeygen` (RFC 7030 §4.4.1.2): the identifier of the key to encrypt the generated
    /// private key to, from the AsymmetricDecryptKeyIdentifier attribute, if the CSR has one.
    pub decrypt_key_id: Option<Vec<u8>>,
    /// SHA-256 of the CSR's DER, whatever its body form: what a request held for manual
    /// approval is known by (`approval`), so that the client's retry finds it.
    pub der_sha256: [u8; 32],
}

/// id-aa-asymmDecryptKeyID 1.2.840.113549.1.9.16.2.54 (RFC 7030 §4.4.1.2).
const OID_ASYMM_DECRYPT_KEY_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.54");
/// id-aa-decryptKeyID 1.2.840.113549.1.9.16.2.37 (RFC 7030 §4.4.1.1: a pre-shared symmetric key).
const OID_DECRYPT_KEY_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.37");

/// Decodes and verifies a CSR body in any accepted form.
pub fn parse(body: &[u8]) -> Result<EnrollmentRequest> {
    let (der, form) = decode_body(body)?;
    let mut req = parse_der(&der)?;
    req.form = form;
    Ok(req)
}

/// Turns a body into DER: DER as is, PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`),
/// or base64 with any mix of CR, LF and spaces (RFC 8951 §3: decode whatever CTE says).
pub fn decode_body(body: &[u8]) -> Result<(Vec<u8>, BodyForm)> {
    // A DER CSR starts with SEQUENCE and a long-form length (a CSR is over 127 bytes); base64
    // text never has a byte >= 0x80 in second place.
    if body.len() > 2 && body[0] == 0x30 && body[1] & 0x80 != 0 {
        return Ok((body.to_vec(), BodyForm::Der));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::NotACsr("neither DER nor base64 text".into()))?;
    let (payload, form) = match text.find("-----BEGIN") {
        Some(start) => (pem_payload(&text[start..])?, BodyForm::Pem),
        None => (text.to_string(), BodyForm::Base64),
    };
    let compact: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(Error::NotACsr("the body is empty".into()));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| Error::NotACsr(format!("the body is not valid base64 ({e})")))?;
    Ok((der, form))
}

fn pem_payload(text: &str) -> Result<String> {
    let mut lines = text.lines();
    let begin = lines.next().unwrap_or_default().trim();
    let label = begin
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| Error::NotACsr("malformed PEM header".into()))?;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(Error::NotACsr(format!(
            "PEM label {label:?}; expected CERTIFICATE REQUEST"
        )));
    }
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines {
        if line.trim() == end {
            return Ok(body);
        }
        body.push_str(line);
    }
    Err(Error::NotACsr(format!("PEM without {end:?}")))
}

/// Parses and verifies a DER PKCS#10 CSR.
pub fn parse_der(der: &[u8]) -> Result<EnrollmentRequest> {
    let csr = CertReq::from_der(der).map_err(|e| Error::NotACsr(e.to_string()))?;

    // MATTER.md "CSRs": EC P-256 key.
    let spki = &csr.info.public_key;
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
        return Err(Error::CsrKeyNotP256(oid_name(&spki.algorithm.oid)));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if curve != Some(OID_P256) {
        return Err(Error::CsrKeyNotP256(match curve {
            Some(c) => format!("EC curve {}", oid_name(&c)),
            None => "an EC key without a named curve".into(),
        }));
    }
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| Error::NotACsr("public key bit string is not octet-aligned".into()))?;
    let public_key = uncompressed_point(key_bytes)?;

    // MATTER.md "CSRs": ecdsa-with-SHA256, no parameters.
    if csr.algorithm.oid != OID_ECDSA_SHA256 || csr.algorithm.parameters.is_some() {
        return Err(Error::CsrHashNotSha256(oid_name(&csr.algorithm.oid)));
    }

    // RFC 2986 §4.2: the signature covers the DER of certificationRequestInfo, as received.
    let info = asn1::signed_part(der).map_err(|e| Error::NotACsr(e.to_string()))?;
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| Error::NotACsr("signature bit string is not octet-aligned".into()))?;
    if !signer::verify(&public_key, info, signature) {
        return Err(Error::CsrBadSignature);
    }

    let mut decrypt_key_id = None;
    for attr in csr.info.attributes.iter() {
        if attr.oid == OID_DECRYPT_KEY_ID {
            return Err(Error::BadRequest(
                "RFC 7030 §4.4.1.1: a symmetric DecryptKeyIdentifier is not supported (no \
                 keys are pre-shared); ask for the key encrypted to your own key with \
                 AsymmetricDecryptKeyIdentifier"
                    .into(),
            ));
        }
        if attr.oid == OID_ASYMM_DECRYPT_KEY_ID {
            let id = attr
                .values
                .iter()
                .next()
                .and_then(|v| v.decode_as::<der::asn1::OctetString>().ok())
                .ok_or_else(|| {
                    Error::NotACsr("AsymmetricDecryptKeyIdentifier is not an OCTET STRING".into())
                })?;
            decrypt_key_id = Some(id.as_bytes().to_vec());
        }
    }
    let ids = matter::read_subject(&csr.info.subject)?;
    if let Some(cn) = &ids.cn {
        matter::check_cn(cn)?;
    }
    Ok(EnrollmentRequest {
        public_key,
        ids,
        subject: csr.info.subject,
        form: BodyForm::Der,
        decrypt_key_id,
        der_sha256: sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(der))
            .into(),
    })
}

/// A valid P-256 point, compressed or not, re-encoded uncompressed (MATTER.md "Every
/// certificate": uncompressed point).
fn uncompressed_point(sec1: &[u8]) -> Result<[u8; 65]> {
    use p256::elliptic_curve::sec1::ToSec1Point;
    let key = p256::PublicKey::from_sec1_bytes(sec1)
        .map_err(|_| Error::NotACsr("the public key is not a valid P-256 point".into()))?;
    key.to_sec1_point(false)
        .as_bytes()
        .try_into()
        .map_err(|_| Error::NotACsr("the public key is not a valid P-256 point".into()))
}

/// A readable name for an OID ("rsaEncryption", "secp384r1"), else its dotted form.
pub fn oid_name(oid: &ObjectIdentifier) -> String {
    const_oid::db::DB
        .by_oid(oid)
        .map(str::to_string)
        .unwrap_or_else(|| oid.to_string())
}

/// Builds a PKCS#10 CSR (RFC 2986 §4) for `subject` (Name DER) signed by `signer`, with no
/// attributes. Used by tests, benchmarks and tools that need a CSR without openssl.
pub fn build(subject: &[u8], signer: &dyn signer::Signer) -> Result<Vec<u8>> {
    build_with_attributes(subject, &[], signer)
}

/// As [`build`], with `attributes` (each a DER `Attribute`).
pub fn build_with_attributes(
    subject: &[u8],
    attributes: &[&[u8]],
    signer: &dyn signer::Signer,
) -> Result<Vec<u8>> {
    use crate::asn1::{self, tag};
    let info = asn1::tlv(
        tag::SEQUENCE,
        &[
            &[tag::INTEGER, 1, 0],
            subject,
            &asn1::p256_spki(signer.public_key()),
            &asn1::tlv(0xa0, attributes),
        ],
    );
    let sig = signer.sign(&info)?;
    let bits = [&[0u8][..], &sig].concat();
    Ok(asn1::tlv(
        tag::SEQUENCE,
        &[
            &info,
            asn1::ECDSA_WITH_SHA256,
            &asn1::tlv(tag::BIT_STRING, &[&bits]),
        ],
    ))
}
