//! The non-Matter part of a deployment's PKI (`certs/README.md`): a CA for the EST listener's
//! TLS certificate, CAs for gateway and operator client certificates, and the certificates
//! they issue. P-256 keys in PKCS#8 PEM files, mode 0600. The Matter PAA/PAI are `profile` and
//! the PAI ceremony's.

use std::net::IpAddr;
use std::path::Path;

use crate::asn1::{self, oid, tag};
use crate::error::{Error, Result};
use crate::issuance::read_cert;
use crate::profile::cert::{self, CertFields, Parsed, key_usage};
use crate::profile::{BACKDATE_SECS, dev, random_serial};
use crate::signer::{self, KeySigner};

/// Default validity of a CA: ten years (a CA outlives the leaves it signs many times over).
pub const CA_DAYS: u32 = 3650;

/// Default validity of a TLS server or client certificate: 397 days, the CA/Browser Forum's
/// limit for TLS server certificates (BR §6.3.2), which clients increasingly enforce.
pub const LEAF_DAYS: u32 = 397;

/// A subjectAltName of a leaf (RFC 5280 §4.2.1.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AltName {
    Dns(String),
    Ip(IpAddr),
    Uri(String),
    Email(String),
}

/// A CA whose key is in memory: made here, or loaded from its certificate and key files.
pub struct Ca {
    /// The CA certificate, DER.
    pub cert: Vec<u8>,
    subject: Vec<u8>,
    point: [u8; 65],
    signer: KeySigner,
}

impl Ca {
    /// A new self-signed CA named `cn`, valid `days`, allowed to sign leaves only
    /// (pathLenConstraint 0). Returns it and its key (PKCS#8 DER).
    pub fn create(cn: &str, days: u32) -> Result<(Self, Vec<u8>)> {
        let (pkcs8, point) = signer::generate_p256()?;
        let subject = dev::name(&[(oid::COMMON_NAME, cn)]);
        let signer = KeySigner::from_pkcs8(&pkcs8)?;
        let mut ca = Self {
            cert: Vec::new(),
            subject: subject.clone(),
            point,
            signer,
        };
        ca.cert = ca.sign(
            &subject,
            &point,
            days,
            vec![
                cert::basic_constraints_ext(Some(Some(0))),
                cert::key_usage_ext(key_usage::SIGN_AND_CERT_SIGN),
            ],
        )?;
        Ok((ca, pkcs8))
    }

    /// Loads a CA from its certificate (PEM or DER) and its key (PKCS#8 PEM, mode 0600).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let der = read_cert(cert_path)?;
        let parsed = Parsed::from_der(&der)?;
        crate::signer::file::check_private_mode(key_path)?;
        let pem = std::fs::read_to_string(key_path).map_err(|e| Error::io(key_path, e))?;
        let (label, pkcs8) = der::pem::decode_vec(pem.as_bytes()).map_err(|e| Error::KeyFile {
            path: key_path.to_path_buf(),
            problem: format!("not a PEM key: {e}"),
        })?;
        if label != "PRIVATE KEY" {
            return Err(Error::KeyFile {
                path: key_path.to_path_buf(),
                problem: format!("PEM label {label}, expected PRIVATE KEY (PKCS#8)"),
            });
        }
        let signer = KeySigner::from_pkcs8(&pkcs8)?;
        if crate::signer::Signer::public_key(&signer) != &parsed.public_key {
            return Err(Error::KeyFile {
                path: key_path.to_path_buf(),
                problem: format!("does not match the CA certificate {}", cert_path.display()),
            });
        }
        Ok(Self {
            cert: der,
            subject: parsed.subject_der,
            point: parsed.public_key,
            signer,
        })
    }

    /// A TLS server certificate for `names` (at least one; the first DNS name is also the CN),
    /// serverAuth. Returns it and its key (PKCS#8 DER).
    pub fn issue_server(&self, names: &[AltName], days: u32) -> Result<(Vec<u8>, Vec<u8>)> {
        let cn = names
            .iter()
            .find_map(|n| match n {
                AltName::Dns(d) => Some(d.clone()),
                _ => None,
            })
            .or_else(|| names.first().map(alt_text))
            .ok_or_else(|| Error::BadRequest("a server certificate needs a name".into()))?;
        self.issue_leaf(&cn, names, oid::KP_SERVER_AUTH, days)
    }

    /// A TLS client certificate for `cn` (and `names`), clientAuth: a gateway's or an
    /// operator's. Returns it and its key (PKCS#8 DER).
    pub fn issue_client(
        &self,
        cn: &str,
        names: &[AltName],
        days: u32,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        self.issue_leaf(cn, names, oid::KP_CLIENT_AUTH, days)
    }

    fn issue_leaf(
        &self,
        cn: &str,
        names: &[AltName],
        usage: &[u8],
        days: u32,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let (pkcs8, point) = signer::generate_p256()?;
        let mut extensions = vec![
            cert::basic_constraints_ext(None),
            cert::key_usage_ext(key_usage::DIGITAL_SIGNATURE),
            asn1::extension(
                oid::EXT_KEY_USAGE,
                false,
                &asn1::tlv(tag::SEQUENCE, &[&asn1::tlv(tag::OID, &[usage])]),
            ),
        ];
        if !names.is_empty() {
            extensions.push(alt_names_ext(names));
        }
        let der = self.sign(
            &dev::name(&[(oid::COMMON_NAME, cn)]),
            &point,
            days,
            extensions,
        )?;
        Ok((der, pkcs8))
    }

    /// Signs a certificate for `subject`/`point`, adding SKID and AKID after `extensions`.
    fn sign(
        &self,
        subject: &[u8],
        point: &[u8; 65],
        days: u32,
        mut extensions: Vec<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        extensions.push(cert::subject_key_id_ext(&cert::key_id(point)));
        extensions.push(cert::authority_key_id_ext(&cert::key_id(&self.point)));
        let now = asn1::now();
        cert::build_and_sign(
            &CertFields {
                serial: &random_serial()?,
                issuer: &self.subject,
                not_before: now - BACKDATE_SECS,
                not_after: now + i64::from(days) * 86_400,
                subject,
                public_key: point,
                extensions: &extensions,
            },
            &self.signer,
        )
    }
}

/// Parses a subjectAltName given on the command line: an IP address, `uri:…`, `email:…`, or a
/// DNS name.
pub fn parse_alt_name(text: &str) -> AltName {
    if let Ok(ip) = text.parse::<IpAddr>() {
        AltName::Ip(ip)
    } else if let Some(uri) = text.strip_prefix("uri:") {
        AltName::Uri(uri.to_string())
    } else if let Some(email) = text.strip_prefix("email:") {
        AltName::Email(email.to_string())
    } else {
        AltName::Dns(text.to_string())
    }
}

fn alt_text(name: &AltName) -> String {
    match name {
        AltName::Dns(s) | AltName::Uri(s) | AltName::Email(s) => s.clone(),
        AltName::Ip(ip) => ip.to_string(),
    }
}

/// subjectAltName (RFC 5280 §4.2.1.6): GeneralNames with [1] rfc822Name, [2] dNSName,
/// [6] uniformResourceIdentifier, [7] iPAddress (IMPLICIT).
fn alt_names_ext(names: &[AltName]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = names
        .iter()
        .map(|n| match n {
            AltName::Email(s) => asn1::tlv(0x81, &[s.as_bytes()]),
            AltName::Dns(s) => asn1::tlv(0x82, &[s.as_bytes()]),
            AltName::Uri(s) => asn1::tlv(0x86, &[s.as_bytes()]),
            AltName::Ip(IpAddr::V4(a)) => asn1::tlv(0x87, &[&a.octets()]),
            AltName::Ip(IpAddr::V6(a)) => asn1::tlv(0x87, &[&a.octets()]),
        })
        .collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    asn1::extension(
        oid::SUBJECT_ALT_NAME,
        false,
        &asn1::tlv(tag::SEQUENCE, &refs),
    )
}

/// Writes a certificate (PEM, 0644) and its key (PKCS#8 PEM, 0600) under `dir` as
/// `NAME.pem` and `NAME.key`, refusing to overwrite either.
pub fn write_pair(dir: &Path, name: &str, cert_der: &[u8], pkcs8: &[u8]) -> Result<()> {
    for file in [format!("{name}.pem"), format!("{name}.key")] {
        let path = dir.join(&file);
        if path.exists() {
            return Err(Error::io(
                &path,
                "exists; choose another name or move it away",
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    dev::write_pem(dir, &format!("{name}.pem"), "CERTIFICATE", &[cert_der])?;
    dev::write_key(dir, &format!("{name}.key"), pkcs8)
}
