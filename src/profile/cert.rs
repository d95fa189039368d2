//! Assembling and reading X.509 v3 certificates (RFC 5280 §4.1), for every profile we build.

use der::{Decode, Encode};
use sha1::{Digest, Sha1};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::time::Time;

use crate::asn1::{self, oid, tag};
use crate::error::{Error, Result};
use crate::signer::Signer;

/// What goes into one certificate; every field is already DER.
pub struct CertFields<'a> {
    /// Serial magnitude (first byte 0x01–0x7F for ours, so no pad is ever needed).
    pub serial: &'a [u8],
    /// The issuer Name, DER, copied verbatim from the issuing certificate's subject.
    pub issuer: &'a [u8],
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds ([`asn1::NO_EXPIRY`] for none).
    pub not_after: i64,
    /// The subject Name, DER.
    pub subject: &'a [u8],
    /// The subject's public key (uncompressed P-256 point).
    pub public_key: &'a [u8; 65],
    /// Extensions in order, each a DER `Extension`.
    pub extensions: &'a [Vec<u8>],
}

/// Builds the TBSCertificate, signs it with `signer`, and returns the certificate DER.
pub fn build_and_sign(fields: &CertFields<'_>, signer: &dyn Signer) -> Result<Vec<u8>> {
    let tbs = tbs(fields);
    let signature = signer.sign(&tbs)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    Ok(asn1::tlv(
        tag::SEQUENCE,
        &[
            &tbs,
            asn1::ECDSA_WITH_SHA256,
            &asn1::tlv(tag::BIT_STRING, &[&bits]),
        ],
    ))
}

/// The DER TBSCertificate (RFC 5280 §4.1.2).
fn tbs(f: &CertFields<'_>) -> Vec<u8> {
    let version = [0xa0, 0x03, 0x02, 0x01, 0x02]; // [0] EXPLICIT INTEGER 2 = v3
    let serial = asn1::unsigned_integer(f.serial);
    let validity = asn1::tlv(
        tag::SEQUENCE,
        &[&asn1::time(f.not_before), &asn1::time(f.not_after)],
    );
    let spki = asn1::p256_spki(f.public_key);
    let ext_refs: Vec<&[u8]> = f.extensions.iter().map(Vec::as_slice).collect();
    let exts = asn1::tlv(tag::SEQUENCE, &ext_refs);
    let exts = asn1::tlv(0xa3, &[&exts]);
    asn1::tlv(
        tag::SEQUENCE,
        &[
            &version,
            &serial,
            asn1::ECDSA_WITH_SHA256,
            f.issuer,
            &validity,
            f.subject,
            &spki,
            &exts,
        ],
    )
}

/// RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey bit string's bytes.
pub fn key_id(public_key: &[u8]) -> [u8; 20] {
    Sha1::digest(public_key).into()
}

/// subjectKeyIdentifier extension, non-critical (RFC 5280 §4.2.1.2).
pub fn subject_key_id_ext(skid: &[u8]) -> Vec<u8> {
    asn1::extension(
        oid::SUBJECT_KEY_ID,
        false,
        &asn1::tlv(tag::OCTET_STRING, &[skid]),
    )
}

/// authorityKeyIdentifier extension, non-critical, keyIdentifier only (RFC 5280 §4.2.1.1;
/// MATTER.md: copy the issuer's SKID value).
pub fn authority_key_id_ext(issuer_skid: &[u8]) -> Vec<u8> {
    asn1::extension(
        oid::AUTHORITY_KEY_ID,
        false,
        &asn1::tlv(tag::SEQUENCE, &[&asn1::tlv(0x80, &[issuer_skid])]),
    )
}

/// cRLDistributionPoints, non-critical (RFC 5280 §4.2.1.13 "SHOULD be non-critical"), holding
/// one DistributionPoint whose fullName is one uniformResourceIdentifier (MATTER.md
/// "Revocation"): `30 (30 (a0 (a0 (86 uri))))`.
pub fn crl_distribution_points_ext(uri: &str) -> Vec<u8> {
    let general_name = asn1::tlv(0x86, &[uri.as_bytes()]); // [6] IMPLICIT IA5String
    let full_name = asn1::tlv(0xa0, &[&general_name]); // fullName [0] IMPLICIT GeneralNames
    let dp_name = asn1::tlv(0xa0, &[&full_name]); // distributionPoint [0] (a CHOICE: explicit)
    let dp = asn1::tlv(tag::SEQUENCE, &[&dp_name]);
    asn1::extension(
        oid::CRL_DISTRIBUTION_POINTS,
        false,
        &asn1::tlv(tag::SEQUENCE, &[&dp]),
    )
}

/// basicConstraints, critical (MATTER.md). `None` = end entity (cA FALSE omitted in DER).
pub fn basic_constraints_ext(ca_path_len: Option<Option<u8>>) -> Vec<u8> {
    let value = match ca_path_len {
        None => asn1::tlv(tag::SEQUENCE, &[]),
        Some(None) => asn1::tlv(tag::SEQUENCE, &[&[tag::BOOLEAN, 1, 0xff]]),
        Some(Some(n)) => asn1::tlv(
            tag::SEQUENCE,
            &[&[tag::BOOLEAN, 1, 0xff], &asn1::unsigned_integer(&[n])],
        ),
    };
    asn1::extension(oid::BASIC_CONSTRAINTS, true, &value)
}

/// keyUsage bits, as the minimally encoded BIT STRING MATTER.md requires.
pub mod key_usage {
    /// digitalSignature only: `03 02 07 80`.
    pub const DIGITAL_SIGNATURE: &[u8] = &[0x03, 0x02, 0x07, 0x80];
    /// keyCertSign + cRLSign: `03 02 01 06`.
    pub const CERT_SIGN: &[u8] = &[0x03, 0x02, 0x01, 0x06];
    /// digitalSignature + keyCertSign + cRLSign: `03 02 01 86`.
    pub const SIGN_AND_CERT_SIGN: &[u8] = &[0x03, 0x02, 0x01, 0x86];
}

/// keyUsage, critical (MATTER.md), `bits` one of [`key_usage`].
pub fn key_usage_ext(bits: &[u8]) -> Vec<u8> {
    asn1::extension(oid::KEY_USAGE, true, bits)
}

/// Facts read back from a parsed certificate.
pub struct Parsed {
    pub cert: Certificate,
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
    pub tbs_der: Vec<u8>,
    pub public_key: [u8; 65],
    pub not_before: i64,
    pub not_after: i64,
}

impl Parsed {
    /// Parses a certificate and pulls out the raw pieces the checks compare.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let cert = Certificate::from_der(der)
            .map_err(|e| Error::BadRequest(format!("not an X.509 certificate: {e}")))?;
        let tbs = cert.tbs_certificate();
        let enc = |r: der::Result<Vec<u8>>| r.map_err(|e| Error::Internal(e.to_string()));
        let subject_der = enc(tbs.subject().to_der())?;
        let issuer_der = enc(tbs.issuer().to_der())?;
        let tbs_der = asn1::signed_part(der)
            .map_err(|e| Error::BadRequest(format!("not an X.509 certificate: {e}")))?
            .to_vec();
        let spki = tbs.subject_public_key_info();
        let public_key: [u8; 65] = spki
            .subject_public_key
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                Error::BadRequest("the certificate key is not an uncompressed P-256 point".into())
            })?;
        let v = tbs.validity();
        Ok(Self {
            not_before: unix(v.not_before),
            not_after: unix(v.not_after),
            cert,
            subject_der,
            issuer_der,
            tbs_der,
            public_key,
        })
    }

    /// The extension with `oid` (content bytes of the OID), if present.
    pub fn extension(&self, oid: &[u8]) -> Option<&Extension> {
        self.cert
            .tbs_certificate()
            .extensions()?
            .iter()
            .find(|e| e.extn_id.as_bytes() == oid)
    }

    /// The subjectKeyIdentifier value.
    pub fn skid(&self) -> Option<Vec<u8>> {
        let ext = self.extension(oid::SUBJECT_KEY_ID)?;
        der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
            .ok()
            .map(|o| o.as_bytes().to_vec())
    }

    /// The signature's DER bytes.
    pub fn signature(&self) -> &[u8] {
        self.cert.signature().raw_bytes()
    }
}

/// Unix seconds of a certificate time.
pub fn unix(t: Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}
