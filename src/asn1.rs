//! A minimal DER writer for the certificates we build.
//!
//! Parsing goes through `x509-cert`; building goes through these few functions so that every
//! byte of a Matter certificate is the one MATTER.md prescribes (x509-cert 0.3's builder decides
//! extension encodings itself, and Matter verifiers are byte-sensitive, e.g. keyUsage).

/// The signed part of a SIGNED{...} structure exactly as it appears in `der`: its first element
/// (a certificate's TBSCertificate, RFC 5280 §4.1.1.3; a CSR's CertificationRequestInfo,
/// RFC 2986 §4.2). A signature covers these bytes, so they are taken from the input, never from
/// a re-encoding of the decoded value.
pub fn signed_part(der: &[u8]) -> der::Result<&[u8]> {
    use der::{Decode, Reader};
    let mut reader = der::SliceReader::new(der)?;
    der::Header::decode(&mut reader)?;
    reader.tlv_bytes()
}

/// DER tags used here (X.690 §8).
pub mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const ENUMERATED: u8 = 0x0a;
}

/// Content bytes of the object identifiers we emit.
pub mod oid {
    /// id-at-commonName 2.5.4.3
    pub const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    /// Matter VID 1.3.6.1.4.1.37244.2.1 (Matter Core §6.2.2.2)
    pub const MATTER_VID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xa2, 0x7c, 0x02, 0x01];
    /// Matter PID 1.3.6.1.4.1.37244.2.2 (Matter Core §6.2.2.2)
    pub const MATTER_PID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xa2, 0x7c, 0x02, 0x02];
    /// id-ce-basicConstraints 2.5.29.19
    pub const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    /// id-ce-keyUsage 2.5.29.15
    pub const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    /// id-ce-subjectKeyIdentifier 2.5.29.14
    pub const SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
    /// id-ce-authorityKeyIdentifier 2.5.29.35
    pub const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
    /// id-ce-cRLNumber 2.5.29.20 (RFC 5280 §5.2.3)
    pub const CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];
    /// id-ce-cRLReasons 2.5.29.21 (RFC 5280 §5.3.1)
    pub const CRL_REASON: &[u8] = &[0x55, 0x1d, 0x15];
    /// id-ce-cRLDistributionPoints 2.5.29.31 (RFC 5280 §4.2.1.13)
    pub const CRL_DISTRIBUTION_POINTS: &[u8] = &[0x55, 0x1d, 0x1f];
    /// id-ce-subjectAltName 2.5.29.17
    pub const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    /// id-ce-extKeyUsage 2.5.29.37
    pub const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    /// id-kp-serverAuth 1.3.6.1.5.5.7.3.1
    pub const KP_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    /// id-kp-clientAuth 1.3.6.1.5.5.7.3.2
    pub const KP_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
}

/// AlgorithmIdentifier ecdsa-with-SHA256, no parameters (MATTER.md "Every certificate").
pub const ECDSA_WITH_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// SubjectPublicKeyInfo prefix for id-ecPublicKey / prime256v1 with a 65-byte uncompressed point.
pub const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends tag, length and the concatenation of `parts`.
pub fn push_tlv(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum();
    out.push(tag);
    push_len(out, len);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// One TLV made of the concatenation of `parts`.
pub fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 4);
    push_tlv(&mut out, tag, parts);
    out
}

/// An INTEGER from unsigned big-endian magnitude bytes (adds the 0x00 pad when needed).
pub fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = {
        let skip = magnitude.iter().take_while(|b| **b == 0).count();
        let t = &magnitude[skip.min(magnitude.len().saturating_sub(1))..];
        if t.is_empty() { &[0u8][..] } else { t }
    };
    if trimmed[0] & 0x80 != 0 {
        tlv(tag::INTEGER, &[&[0], trimmed])
    } else {
        tlv(tag::INTEGER, &[trimmed])
    }
}

/// A SubjectPublicKeyInfo for a P-256 uncompressed point.
pub fn p256_spki(point: &[u8; 65]) -> Vec<u8> {
    let mut out = Vec::with_capacity(91);
    out.extend_from_slice(P256_SPKI_PREFIX);
    out.extend_from_slice(point);
    out
}

/// One `Extension` (RFC 5280 §4.1): OID, critical flag when true, OCTET STRING of `value`.
pub fn extension(oid: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let oid = tlv(tag::OID, &[oid]);
    let octets = tlv(tag::OCTET_STRING, &[value]);
    if critical {
        tlv(tag::SEQUENCE, &[&oid, &[tag::BOOLEAN, 1, 0xff], &octets])
    } else {
        tlv(tag::SEQUENCE, &[&oid, &octets])
    }
}

/// One RDN holding a single attribute of type `oid` and a UTF8String value.
pub fn rdn_utf8(oid: &[u8], value: &str) -> Vec<u8> {
    let atv = tlv(
        tag::SEQUENCE,
        &[
            &tlv(tag::OID, &[oid]),
            &tlv(tag::UTF8_STRING, &[value.as_bytes()]),
        ],
    );
    tlv(tag::SET, &[&atv])
}

/// Seconds since the Unix epoch of `99991231235959Z`, "no well-defined expiration" (RFC 5280
/// §4.1.2.5, used by every Matter SDK fixture).
pub const NO_EXPIRY: i64 = 253_402_300_799;

/// A Validity time (RFC 5280 §4.1.2.5): UTCTime through 2049, GeneralizedTime from 2050.
pub fn time(unix: i64) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = civil(unix);
    if (1950..2050).contains(&y) {
        let text = format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100);
        tlv(tag::UTC_TIME, &[text.as_bytes()])
    } else {
        let text = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z");
        tlv(tag::GENERALIZED_TIME, &[text.as_bytes()])
    }
}

/// Calendar fields of a Unix time (proleptic Gregorian, UTC); Howard Hinnant's civil_from_days.
pub fn civil(unix: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        ((secs % 3600) / 60) as u32,
        (secs % 60) as u32,
    )
}

/// A Unix time as RFC 3339 UTC text, for messages.
pub fn format_time(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Lowercase hex of `bytes` (a table lookup per nibble: `write!` per byte was 3 % of a batch).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Bytes of a hex string (either case), or `None`.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_switch_encoding_at_2050() {
        assert_eq!(time(0), tlv(tag::UTC_TIME, &[b"700101000000Z"]));
        assert_eq!(
            time(NO_EXPIRY),
            tlv(tag::GENERALIZED_TIME, &[b"99991231235959Z"])
        );
        // 2050-01-01T00:00:00Z
        assert_eq!(
            time(2_524_608_000),
            tlv(tag::GENERALIZED_TIME, &[b"20500101000000Z"])
        );
        assert_eq!(time(2_524_607_999), tlv(tag::UTC_TIME, &[b"491231235959Z"]));
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0, 5]), vec![2, 1, 5]);
        assert_eq!(unsigned_integer(&[0]), vec![2, 1, 0]);
    }

    #[test]
    fn long_lengths() {
        let v = tlv(tag::SEQUENCE, &[&[0u8; 300]]);
        assert_eq!(&v[..4], &[0x30, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0x00, 0x0f, 0xf0, 0xff, 0x5a]), "000ff0ff5a");
        assert_eq!(hex(&[]), "");
        assert_eq!(unhex(&hex(&[1, 0xab])), Some(vec![1, 0xab]));
        assert_eq!(unhex("zz"), None);
    }
}
