//! Matter DAC keys and CSRs: a P-256 key from the operating system's CSPRNG and a PKCS#10 CSR
//! whose subject carries the device identity (CN and/or serialNumber) and the Matter VID and PID
//! attributes (Matter Core §6.2.2.2: 4 uppercase hex digits, UTF8String).

use std::path::Path;

use der::Decode;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

use crate::{Error, Result, files};

/// What goes into a device's subject.
#[derive(Clone, Debug, Default)]
pub struct DeviceSubject {
    /// commonName: the device identity (at most 64 characters).
    pub cn: Option<String>,
    /// serialNumber attribute (X.520), e.g. a hardware serial.
    pub serial_number: Option<String>,
    /// 4 uppercase hex digits.
    pub vid: Option<String>,
    /// 4 uppercase hex digits.
    pub pid: Option<String>,
}

/// A fresh P-256 key pair as PKCS#8 DER.
pub fn generate_key() -> Result<Vec<u8>> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| Error::Usage("P-256 key generation failed".into()))
}

/// A VID or PID as a DAC subject carries it (Matter Core §6.2.2.2): 4 uppercase hex digits, not
/// 0000; else what is wrong with it.
pub fn check_id(v: &str) -> std::result::Result<(), String> {
    let ok = v.len() == 4
        && v.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        && v != "0000";
    if ok {
        Ok(())
    } else {
        Err(format!("{v:?} must be 4 uppercase hex digits, not 0000"))
    }
}

/// A PKCS#10 CSR (RFC 2986) for `subject`, signed with `pkcs8`.
pub fn csr(pkcs8: &[u8], subject: &DeviceSubject) -> Result<Vec<u8>> {
    for (name, v) in [("VID", &subject.vid), ("PID", &subject.pid)] {
        if let Some(v) = v {
            check_id(v).map_err(|problem| Error::Usage(format!("{name} {problem}")))?;
        }
    }
    if subject
        .cn
        .as_ref()
        .is_some_and(|cn| cn.chars().count() > 64)
    {
        return Err(Error::Usage(
            "the device ID (CN) is at most 64 characters".into(),
        ));
    }
    let mut rdns = Vec::new();
    let mut rdn = |oid: &[u8], string_tag: u8, value: &str| {
        let atv = tlv(
            0x30,
            &[&tlv(0x06, &[oid]), &tlv(string_tag, &[value.as_bytes()])],
        );
        rdns.push(tlv(0x31, &[&atv]));
    };
    if let Some(cn) = &subject.cn {
        rdn(CN, 0x0c, cn);
    }
    if let Some(sn) = &subject.serial_number {
        rdn(SERIAL, 0x13, sn); // X.520: serialNumber is a PrintableString
    }
    if let Some(v) = &subject.vid {
        rdn(VID, 0x0c, v);
    }
    if let Some(p) = &subject.pid {
        rdn(PID, 0x0c, p);
    }
    let refs: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
    csr_for_name(pkcs8, &tlv(0x30, &refs))
}

/// A PKCS#10 CSR for a subject Name given as DER (re-enrollment copies the old subject).
pub fn csr_for_name(pkcs8: &[u8], name: &[u8]) -> Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
        .map_err(|e| Error::Usage(format!("not a P-256 PKCS#8 key: {e}")))?;
    let spki_prefix: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let spki = [spki_prefix, key.public_key().as_ref()].concat();
    let info = tlv(0x30, &[&[0x02, 0x01, 0x00], name, &spki, &[0xa0, 0x00]]);
    let sig = key
        .sign(&rng, &info)
        .map_err(|_| Error::Usage("signing the CSR failed".into()))?;
    let ecdsa_sha256: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    let bits = [&[0u8][..], sig.as_ref()].concat();
    Ok(tlv(0x30, &[&info, ecdsa_sha256, &tlv(0x03, &[&bits])]))
}

/// Reads a PKCS#8 PEM private key given on the command line (refused when group or others may
/// read it: [`files::read_private`]).
pub fn read_key(path: &Path) -> Result<Vec<u8>> {
    let text = files::read_private(path)?;
    parse_key(&text).map_err(|problem| Error::File {
        path: path.display().to_string(),
        problem,
    })
}

/// The PKCS#8 DER of a PEM `PRIVATE KEY`, or what is wrong with it.
pub fn parse_key(pem: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let (label, der) = der::pem::decode_vec(pem).map_err(|e| format!("not PEM: {e}"))?;
    if label != "PRIVATE KEY" {
        return Err(format!("PEM label {label}; expected PRIVATE KEY (PKCS#8)"));
    }
    Ok(der)
}

/// A PKCS#8 key as PEM text.
pub fn key_pem(pkcs8: &[u8]) -> Result<String> {
    der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, pkcs8)
        .map_err(|e| Error::Usage(e.to_string()))
}

/// Writes a PKCS#8 key as PEM, mode 0600 from creation.
pub fn write_key(path: &Path, pkcs8: &[u8]) -> Result<()> {
    files::write_file(path, key_pem(pkcs8)?.as_bytes(), files::PRIVATE)
}

/// Holds a returned certificate to what a Matter DAC answering `csr_der` must show (Matter Core
/// §6.2.2.2, MATTER.md "VID and PID in the subject" and "DAC"): a VID and a PID, and the CN, VID
/// and PID the CSR asked for. Attributes a DAC subject does not carry (serialNumber) may be
/// dropped by the server; the key is matched before this, when the certificate is found.
pub fn check_dac(csr_der: &[u8], cert_der: &[u8]) -> Result<()> {
    let csr = x509_cert::request::CertReq::from_der(csr_der)
        .map_err(|e| Error::Usage(format!("the CSR does not parse: {e}")))?;
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| Error::BadResponse(format!("the certificate does not parse: {e}")))?;
    let tbs = cert.tbs_certificate();
    let asked = Identity::of(&csr.info.subject);
    let got = Identity::of(tbs.subject());
    let mut problems = Vec::new();
    for (name, asked, got) in [
        ("VID", &asked.vid, &got.vid),
        ("PID", &asked.pid, &got.pid),
        ("CN", &asked.cn, &got.cn),
    ] {
        match (asked, got) {
            (Some(a), Some(g)) if a != g => problems.push(format!("{name} {g}, not {a}")),
            (Some(a), None) => problems.push(format!("no {name} (asked for {a})")),
            (None, None) if name != "CN" => problems.push(format!("no {name}")),
            _ => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::NotMatter {
        serial: tbs
            .serial_number()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        problem: problems.join(", "),
    })
}

/// The CN, VID and PID of a Name, read as a Matter verifier reads them.
#[derive(Default)]
struct Identity {
    cn: Option<String>,
    vid: Option<String>,
    pid: Option<String>,
}

impl Identity {
    fn of(name: &x509_cert::name::Name) -> Self {
        let mut id = Self::default();
        for atv in name.iter() {
            let value = || Some(String::from_utf8_lossy(atv.value.value()).into_owned());
            match atv.oid.as_bytes() {
                CN => id.cn = value(),
                VID => id.vid = value(),
                PID => id.pid = value(),
                _ => {}
            }
        }
        // MATTER.md: the legacy `Mvid:XXXX` / `Mpid:XXXX` in the CN, only when neither
        // attribute is present.
        if id.vid.is_none()
            && id.pid.is_none()
            && let Some(cn) = &id.cn
        {
            let tag = |t: &str| {
                let at = cn.find(t)? + t.len();
                cn.get(at..at + 4).map(str::to_string)
            };
            (id.vid, id.pid) = (tag("Mvid:"), tag("Mpid:"));
        }
        id
    }
}

/// commonName, 2.5.4.3, as DER contents.
const CN: &[u8] = &[0x55, 0x04, 0x03];
/// serialNumber, 2.5.4.5.
const SERIAL: &[u8] = &[0x55, 0x04, 0x05];
/// Matter VID, 1.3.6.1.4.1.37244.2.1 (Matter Core §6.2.2.2).
const VID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xa2, 0x7c, 0x02, 0x01];
/// Matter PID, 1.3.6.1.4.1.37244.2.2.
const PID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xa2, 0x7c, 0x02, 0x02];

fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}
