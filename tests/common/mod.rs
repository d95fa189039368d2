//! Shared test material: a development PKI made by `init-dev` in a temporary directory, CSRs
//! made by our own code, and an independent check of the MATTER.md DAC rules (written from the
//! rules, not from the self-check, so that a bug in one is caught by the other).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // reason: test helpers; not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use der::{Decode, Encode};
use matter_est::asn1::oid;
use matter_est::config::Config;
use matter_est::issuance::Issuer;
use matter_est::profile::dev;
use matter_est::signer::{self, KeySigner};
use matter_est::store::Ledger;
use x509_cert::Certificate;

pub struct DevEnv {
    pub dir: tempfile::TempDir,
}

impl DevEnv {
    /// A fresh development PKI; `edit` may change the generated config text. Run by
    /// [`hsm::rerun_over_pkcs11`], its PAI key is in a SoftHSM2 token instead of a file.
    pub fn new(edit: impl FnOnce(String) -> String) -> Self {
        Self::new_in(|dir, text| {
            let text = match hsm::suite() {
                Some(hsm) => hsm.adopt_dev_pki(dir, hsm::SUITE_TOKEN, &text),
                None => text,
            };
            edit(text)
        })
    }

    /// As [`DevEnv::new`], `edit` also given the directory (to move the PAI key elsewhere).
    pub fn new_in(edit: impl FnOnce(&Path, String) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        dev::init(dir.path(), false).unwrap();
        let path = dir.path().join(dev::files::CONFIG);
        // The CRL listener on a free port: tests run in parallel.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("listen = \"127.0.0.1:8444\"", "listen = \"127.0.0.1:0\"")
            .replace("listen = \"127.0.0.1:8445\"", "listen = \"127.0.0.1:0\"");
        // Run by pg::rerun_on_postgres: the ledger in a fresh database.
        let text = pg::adopt(text, dir.path());
        std::fs::write(&path, edit(dir.path(), text)).unwrap();
        Self { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config(&self) -> Config {
        Config::load(&self.path(dev::files::CONFIG)).unwrap()
    }

    pub fn issuer(&self) -> (Issuer, Arc<dyn Ledger>) {
        let config = self.config();
        let ledger = matter_est::store::open(&config).unwrap();
        (Issuer::new(&config, ledger.clone()).unwrap(), ledger)
    }

    pub fn pai_der(&self) -> Vec<u8> {
        matter_est::issuance::read_cert(&self.path(dev::files::PAI_CERT)).unwrap()
    }
}

/// Adds `lines` to the development config's `[labels.dev]` table (an `init-dev` config edit).
pub fn label_keys(config: String, lines: &str) -> String {
    config.replace(
        "cn_prefix = \"dev-\"",
        &format!("cn_prefix = \"dev-\"\n{lines}"),
    )
}

/// Adds `lines` to the development config's `[server]` table.
pub fn server_keys(config: String, lines: &str) -> String {
    config.replace(
        "tls_key = \"tls/server.key\"",
        &format!("tls_key = \"tls/server.key\"\n{lines}"),
    )
}

/// A subject Name with the given attributes, in order.
pub fn subject(cn: Option<&str>, vid: Option<&str>, pid: Option<&str>) -> Vec<u8> {
    let mut attrs: Vec<(&[u8], &str)> = Vec::new();
    if let Some(cn) = cn {
        attrs.push((oid::COMMON_NAME, cn));
    }
    if let Some(v) = vid {
        attrs.push((oid::MATTER_VID, v));
    }
    if let Some(p) = pid {
        attrs.push((oid::MATTER_PID, p));
    }
    dev::name(&attrs)
}

/// A fresh key and a CSR for `subject`.
pub fn csr(subject: &[u8]) -> (Vec<u8>, KeySigner) {
    let (pkcs8, _) = signer::generate_p256().unwrap();
    let key = KeySigner::from_pkcs8(&pkcs8).unwrap();
    (matter_est::csr::build(subject, &key).unwrap(), key)
}

/// `n` simpleenroll bodies (base64 DER CSRs, fresh keys) for devices `PREFIX-i` of VID FFF1,
/// PID 8000.
pub fn enroll_bodies(n: usize, prefix: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let cn = format!("{prefix}-{i}");
            let (der, _) = csr(&subject(Some(&cn), Some("FFF1"), Some("8000")));
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der).into_bytes()
        })
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// MATTER.md's DAC rules, checked from the bytes.
pub fn assert_matter_dac(der: &[u8], pai_der: &[u8]) {
    assert!(der.len() <= 600, "DAC is {} bytes", der.len());
    let sig_alg = [
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    assert_eq!(
        der.windows(12).filter(|w| *w == sig_alg).count(),
        2,
        "ecdsa-with-SHA256 twice"
    );
    let bc = [
        0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00,
    ];
    assert!(find(der, &bc), "basicConstraints critical cA FALSE");
    let ku = [
        0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x07,
        0x80,
    ];
    assert!(find(der, &ku), "keyUsage critical digitalSignature");
    assert!(
        find(der, b"\x18\x0f99991231235959Z"),
        "notAfter 99991231235959Z"
    );

    let cert = Certificate::from_der(der).unwrap();
    let pai = Certificate::from_der(pai_der).unwrap();
    let tbs = cert.tbs_certificate();
    let serial = tbs.serial_number().as_bytes();
    assert!(
        (16..=20).contains(&serial.len()) && (1..=0x7f).contains(&serial[0]),
        "serial {serial:02x?}"
    );
    assert_eq!(
        tbs.issuer().to_der().unwrap(),
        pai.tbs_certificate().subject().to_der().unwrap()
    );
    let nb = tbs.validity().not_before.to_unix_duration().as_secs();
    let pai_nb = pai
        .tbs_certificate()
        .validity()
        .not_before
        .to_unix_duration()
        .as_secs();
    assert!(nb >= pai_nb, "notBefore before the PAI's");
    let oids: Vec<String> = tbs.subject().iter().map(|a| a.oid.to_string()).collect();
    assert_eq!(
        oids,
        ["2.5.4.3", "1.3.6.1.4.1.37244.2.1", "1.3.6.1.4.1.37244.2.2"]
    );
    assert!(tbs.subject().iter_rdn().all(|r| r.iter().count() == 1));
    for atv in tbs.subject().iter() {
        assert_eq!(atv.value.tag(), der::Tag::Utf8String);
    }
    let vid = tbs.subject().iter().nth(1).unwrap().value.value().to_vec();
    assert_eq!(vid, b"FFF1");
    let spki = tbs.subject_public_key_info().to_der().unwrap();
    assert_eq!(spki.len(), 91, "uncompressed P-256 SPKI");
    let exts = tbs.extensions().unwrap();
    assert_eq!(exts.len(), 4);
    let akid = exts
        .iter()
        .find(|e| e.extn_id.as_bytes() == oid::AUTHORITY_KEY_ID)
        .unwrap();
    let pai_skid = pai
        .tbs_certificate()
        .extensions()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.as_bytes() == oid::SUBJECT_KEY_ID)
        .unwrap();
    assert_eq!(
        &akid.extn_value.as_bytes()[4..],
        &pai_skid.extn_value.as_bytes()[2..]
    );
}

use der::Tagged;

/// `openssl verify` of DAC → PAI → PAA, with a real openssl.
pub fn openssl_verify(env: &DevEnv, dacs: &[Vec<u8>]) {
    let dir = env.dir.path().join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec![
        "verify".to_string(),
        "-CAfile".into(),
        env.path(dev::files::PAA_CERT).display().to_string(),
        "-untrusted".into(),
        env.path(dev::files::PAI_CERT).display().to_string(),
    ];
    for (i, der) in dacs.iter().enumerate() {
        let p = dir.join(format!("dac{i}.pem"));
        write_pem(&p, der);
        args.push(p.display().to_string());
    }
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .expect("openssl is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openssl verify failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(": OK").count(), dacs.len(), "{stdout}");
}

pub fn write_pem(path: &Path, der: &[u8]) {
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap();
    std::fs::write(path, pem).unwrap();
}
pub mod est;
pub mod hsm;
pub mod pg;

/// A command's standard output, once it exited 0.
pub fn stdout(out: &Output) -> String {
    assert_success(out);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// curl's (status, JSON body) for `ARGS`; panics if curl itself fails.
pub fn curl_json(args: &[&str]) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = stdout(&out);
    let (body, code) = text.trim_end().rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

/// A server's Prometheus text from `GET /metrics` on its admin socket (curl); empty when nothing
/// answers there.
pub fn metrics_text(socket: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(socket)
        .arg("http://localhost/metrics")
        .output()
        .unwrap();
    stdout(&out)
}

/// User + system CPU seconds of process `pid` (a number, or `self`) so far, from
/// /proc/PID/stat (clock ticks of 1/100 s); 0 for a process that is gone.
pub fn cpu_secs(pid: impl std::fmt::Display) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, the 14th and 15th fields of the whole line.
    (ticks(11) + ticks(12)) / 100.0
}

/// The (sum, count) of DACs per ledger commit that the server on `socket` reports
/// (`matter_est_ledger_commit_group_size`); `None` for a build without the metric.
pub fn commit_group_totals(socket: &Path) -> Option<(f64, f64)> {
    let text = metrics_text(socket);
    let value = |suffix: &str| -> Option<f64> {
        let name = format!(
            "{}{suffix} ",
            matter_est::admin::metrics::LEDGER_COMMIT_GROUP_SIZE
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((value("_sum")?, value("_count")?))
}

/// Asserts that a command (openssl, curl, the CLI) exited 0, showing what it printed if not.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
