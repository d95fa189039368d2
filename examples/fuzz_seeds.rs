//! Writes the seed corpus of the fuzz targets (fuzz/, docs/fuzzing.md): real inputs made by
//! this code, never pasted blobs (STYLE.md "Generated test material"). `scripts/fuzz seeds`
//! runs it, then adds CSRs made by openssl. The corpus directories are not checked in.
//!
//! `cargo run --example fuzz_seeds -- DIR` writes `DIR/<target>/<name>` for the targets csr,
//! http_headers, config, client_cert and pkcs7_response.

use std::path::{Path, PathBuf};

use base64::Engine;
use p256::pkcs8::EncodePrivateKey;

use matter_est::asn1::{self, oid, tag};
use matter_est::config::Config;
use matter_est::est::wire;
use matter_est::issuance::{IssueOptions, Issuer};
use matter_est::profile::dev;
use matter_est::signer::{self, KeySigner};
use matter_est::store::redb::RedbLedger;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A subject attribute: its OID's contents and its value.
type Attr = (&'static [u8], String);

/// Every byte of the scalar of the key whose DAC the client seeds carry: the same key
/// fuzz/fuzz_targets/pkcs7_response.rs builds its CSR from (fuzzing input, not a secret).
const FIXED_SCALAR: u8 = 0x17;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let pki = tempfile::tempdir()?;
    dev::init(pki.path(), false)?;
    let config_path = pki.path().join(dev::files::CONFIG);

    let mut written = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        written += 1;
        Ok(())
    };

    // csr: what /simpleenroll receives, in every accepted body form.
    for (name, csr) in csrs()? {
        for (form, body) in body_forms(&csr) {
            put("csr", &format!("{name}.{form}"), &body)?;
        }
    }

    // http_headers: Content-Type and Authorization values as clients send them.
    let basic = |creds: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    };
    let headers = [
        ("ct-pkcs10", "application/pkcs10".to_string()),
        (
            "ct-pkcs10-params",
            "Application/PKCS10; charset=binary".into(),
        ),
        ("ct-pkcs7", wire::CT_CERTS_ONLY.into()),
        ("ct-text", "text/plain".into()),
        (
            "basic-token",
            basic("tok-0123456789abcdef:s3cret-0123456789"),
        ),
        ("basic-colon", basic("user:pass:with:colons")),
        ("basic-empty", basic(":")),
        ("basic-lower", format!("basic {}", &basic("u:p")[6..])),
        ("bearer", "Bearer abc.def.ghi".into()),
        ("content-length", "1234".into()),
    ];
    for (name, value) in headers {
        put("http_headers", name, value.as_bytes())?;
    }

    // config: the checked-in examples and what init-dev writes.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["example.toml", "dev.toml"] {
        put(
            "config",
            name,
            &std::fs::read(repo.join("config").join(name))?,
        )?;
    }
    put("config", "init-dev.toml", &std::fs::read(&config_path)?)?;

    // client_cert: every certificate of the development PKI, and a DAC.
    let config = Config::load(&config_path)?;
    let ledger = std::sync::Arc::new(RedbLedger::open(
        config
            .store
            .redb_path()
            .ok_or("the dev config keeps a redb ledger")?,
    )?);
    let issuer = Issuer::new(&config, ledger)?;
    let pem = |rel: &str| matter_est::issuance::read_cert(&pki.path().join(rel));
    let pai = pem(dev::files::PAI_CERT)?;
    let paa = pem(dev::files::PAA_CERT)?;
    for (name, rel) in [
        ("gateway", dev::files::GATEWAY_CERT),
        ("server", dev::files::SERVER_CERT),
        ("client-ca", dev::files::CLIENT_CA_CERT),
        ("pai", dev::files::PAI_CERT),
        ("paa", dev::files::PAA_CERT),
    ] {
        put("client_cert", name, &pem(rel)?)?;
    }
    let req = matter_est::csr::parse(&fixed_key_csr()?)?;
    let opts = IssueOptions {
        requester: "fuzz-seeds".into(),
        ..Default::default()
    };
    let dac = issuer.issue("dev", &req, &opts)?.dac.der;
    put("client_cert", "dac", &dac)?;

    // pkcs7_response: what est-client receives from /simpleenroll, /cacerts and /csrattrs.
    let responses = [
        ("enroll", wire::certs_only(&[&dac, &pai])),
        ("enroll-dac-only", wire::certs_only(&[&dac])),
        ("cacerts", wire::certs_only(&[&pai, &paa])),
        ("csrattrs", wire::matter_csr_attrs()),
    ];
    for (name, der) in responses {
        put(
            "pkcs7_response",
            &format!("{name}.b64"),
            wire::base64_wrapped(&der).as_bytes(),
        )?;
        put("pkcs7_response", &format!("{name}.der"), &der)?;
    }

    println!("{written} seeds in {}", out.display());
    Ok(())
}

/// Real CSRs: the shapes Matter devices send (VID and PID attributes, the legacy CN form, the
/// SDK's `OU=CSA` placeholder), one asking for serverkeygen's encrypted key, and some the server
/// refuses for their content (a wrong VID, a CN too long).
fn csrs() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let cn = |v: &str| (oid::COMMON_NAME, v.to_string());
    let vid = |v: &str| (oid::MATTER_VID, v.to_string());
    let pid = |v: &str| (oid::MATTER_PID, v.to_string());
    let subjects: Vec<(&str, Vec<Attr>)> = vec![
        (
            "cn-vid-pid",
            vec![cn("dev-device-1"), vid("FFF1"), pid("8000")],
        ),
        ("cn-pid", vec![cn("dev-device-2"), pid("8001")]),
        ("legacy-cn", vec![cn("dev-device-3 Mvid:FFF1 Mpid:8002")]),
        ("ou-csa", vec![(&[0x55, 0x04, 0x0b], "CSA".to_string())]),
        ("empty-subject", vec![]),
        ("bad-vid", vec![cn("dev-x"), vid("fff1x"), pid("0000")]),
        ("long-cn", vec![cn(&"n".repeat(80))]),
    ];
    let mut out = Vec::new();
    for (name, attrs) in subjects {
        let attrs: Vec<(&[u8], &str)> = attrs.iter().map(|(o, v)| (*o, v.as_str())).collect();
        out.push((
            name,
            matter_est::csr::build(&dev::name(&attrs), &fresh_key()?)?,
        ));
    }
    // RFC 7030 §4.4.1.2: AsymmetricDecryptKeyIdentifier (id-aa 54), an OCTET STRING.
    const ASYMM_DECRYPT_KEY_ID: &[u8] = &[
        0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02, 0x36,
    ];
    let attr = asn1::tlv(
        tag::SEQUENCE,
        &[
            &asn1::tlv(tag::OID, &[ASYMM_DECRYPT_KEY_ID]),
            &asn1::tlv(tag::SET, &[&asn1::tlv(0x04, &[&[0x42; 20]])]),
        ],
    );
    let subject = dev::name(&[(oid::COMMON_NAME, "dev-keygen"), (oid::MATTER_PID, "8003")]);
    out.push((
        "serverkeygen",
        matter_est::csr::build_with_attributes(&subject, &[&attr], &fresh_key()?)?,
    ));
    out.push(("fixed-key", fixed_key_csr()?));
    Ok(out)
}

/// DER, base64 in 64-column CRLF lines, base64 on one line, base64 in 76-column LF lines
/// (globalsign/est), PEM under both labels RFC 7030 clients use.
fn body_forms(der: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let wrapped76: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
        .collect();
    let pem = |label: &str| {
        format!(
            "-----BEGIN {label}-----\n{}-----END {label}-----\n",
            wire::base64_wrapped(der).replace("\r\n", "\n")
        )
    };
    vec![
        ("der", der.to_vec()),
        ("b64", wire::base64_wrapped(der).into_bytes()),
        ("b64-one-line", b64.into_bytes()),
        ("b64-76", wrapped76.into_bytes()),
        ("pem", pem("CERTIFICATE REQUEST").into_bytes()),
        ("pem-new", pem("NEW CERTIFICATE REQUEST").into_bytes()),
    ]
}

fn fresh_key() -> Result<KeySigner> {
    Ok(KeySigner::from_pkcs8(&signer::generate_p256()?.0)?)
}

/// The CSR of the fixed key, as fuzz/fuzz_targets/pkcs7_response.rs builds it.
fn fixed_key_csr() -> Result<Vec<u8>> {
    let secret = p256::SecretKey::from_slice(&[FIXED_SCALAR; 32])?;
    let key = KeySigner::from_pkcs8(secret.to_pkcs8_der()?.as_bytes())?;
    let subject = dev::name(&[(oid::COMMON_NAME, "dev-fuzz"), (oid::MATTER_PID, "8000")]);
    Ok(matter_est::csr::build(&subject, &key)?)
}
