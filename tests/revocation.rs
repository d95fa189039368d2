//! Revocation and the CRL (MATTER.md "Revocation") as an operator meets them: a real `serve`
//! process, `matter-est revoke` and `crl`, the CRL fetched with curl from the plain-HTTP
//! listener, and read by openssl and pyca/cryptography (implementations independent of ours).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use common::{DevEnv, assert_success, label_keys};
use der::Decode;
use matter_est::profile::dev;
use serve::cli;
use x509_cert::Certificate;

/// A `serve` process and what its first log lines say.
struct Serve {
    child: Child,
    _lines: Lines<BufReader<ChildStdout>>,
    est_port: String,
    crl_addr: String,
}

impl Serve {
    fn start(env: &DevEnv) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
            .args(["serve", "--log-json", "--config"])
            .arg(env.path(dev::files::CONFIG))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let serving = loop {
            let line = lines.next().expect("serve exited").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["fields"]["message"] == "matter-est serving" {
                break v;
            }
        };
        let f = &serving["fields"];
        Self {
            child,
            _lines: lines,
            est_port: f["addr"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .into(),
            crl_addr: f["crl"].as_str().unwrap().into(),
        }
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(self.child.wait().unwrap().success());
    }
}

fn sh(dir: &Path, script: &str) -> Output {
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A device key and CSR made by openssl, enrolled over curl as the development gateway; the
/// DAC (DER) comes back.
fn enroll(env: &DevEnv, serve: &Serve, device: &str) -> Vec<u8> {
    let d = env.dir.path();
    let port = &serve.est_port;
    std::fs::write(d.join(format!("{device}.cnf")), req_config(device)).unwrap();
    let out = sh(
        d,
        &format!(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -keyout {device}.key -out {device}.csr -config {device}.cnf 2>/dev/null
             curl -sS --fail --cacert tls/ca.pem --cert clients/gateway.pem --key clients/gateway.key \
               -H 'Content-Type: application/pkcs10' --data-binary @{device}.csr \
               https://localhost:{port}/.well-known/est/dev/simpleenroll -o {device}.p7"
        ),
    );
    assert_success(&out);
    let body = std::fs::read(d.join(format!("{device}.p7"))).unwrap();
    let dac = common::est::issued(&common::est::pkcs7_certs(&body), &env.pai_der());
    common::write_pem(&d.join(format!("{device}.pem")), &dac);
    dac
}

/// An `openssl req` config for a Matter subject: CN, VID and PID attributes as UTF8String.
fn req_config(device: &str) -> String {
    format!(
        "oid_section = oids\n[oids]\nmatterVID = 1.3.6.1.4.1.37244.2.1\n\
         matterPID = 1.3.6.1.4.1.37244.2.2\n[req]\ndistinguished_name = dn\nprompt = no\n\
         string_mask = utf8only\n[dn]\nCN = {device}\nmatterVID = FFF1\nmatterPID = 8000\n"
    )
}

fn serial_hex(dac: &[u8]) -> String {
    let cert = Certificate::from_der(dac).unwrap();
    matter_est::asn1::hex(cert.tbs_certificate().serial_number().as_bytes()).to_uppercase()
}

/// GETs the CRL at the listener; returns (HTTP status, Content-Type, body).
fn fetch_crl(env: &DevEnv, serve: &Serve, path: &str) -> (String, String, Vec<u8>) {
    let out = sh(
        env.dir.path(),
        &format!(
            "curl -sS -o fetched.crl -w '%{{http_code}} %{{content_type}}' http://{}{path}",
            serve.crl_addr
        ),
    );
    assert_success(&out);
    let text = stdout(&out);
    let (status, ct) = text.split_once(' ').unwrap();
    let body = std::fs::read(env.path("fetched.crl")).unwrap_or_default();
    (status.into(), ct.into(), body)
}

/// openssl's reading of a DER CRL, verified against the PAI.
fn openssl_crl_text(env: &DevEnv, file: &str) -> String {
    let out = sh(
        env.dir.path(),
        &format!("openssl crl -inform DER -in {file} -noout -text -CAfile pki/pai.pem 2>&1"),
    );
    assert_success(&out);
    stdout(&out)
}

/// pyca/cryptography's reading of a DER CRL: the facts the Matter SDK's revocation tooling
/// (itself on pyca/cryptography) looks at.
fn pyca_crl(env: &DevEnv, file: &str) -> serde_json::Value {
    let script = r#"
import json, sys
from cryptography import x509
crl = x509.load_der_x509_crl(open(sys.argv[1], "rb").read())
pai = x509.load_pem_x509_certificate(open(sys.argv[2], "rb").read())
ski = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
entries = []
for r in crl:
    try:
        reason = r.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
    except x509.ExtensionNotFound:
        reason = None
    n = r.serial_number
    entries.append({"serial": n.to_bytes((n.bit_length() + 7) // 8, "big").hex().upper(),
                    "reason": reason})
print(json.dumps({
    "signature_valid": crl.is_signature_valid(pai.public_key()),
    "aki_is_pai_ski": aki == ski,
    "issuer_is_pai_subject": crl.issuer.public_bytes() == pai.subject.public_bytes(),
    "number": crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
    "algorithm": crl.signature_algorithm_oid.dotted_string,
    "entries": entries,
}))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(env.path(file))
        .arg(env.path(dev::files::PAI_CERT))
        .output()
        .unwrap();
    assert_success(&out);
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// This file's tests again with the ledger on PostgreSQL (tests/common/pg.rs).
#[test]
fn on_postgres() {
    common::pg::rerun_on_postgres("on_postgres", &[]);
}

#[test]
fn revoke_lists_the_dac_in_a_matter_crl_served_over_http_and_blocks_renewal() {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let serve = Serve::start(&env);
    let dac = enroll(&env, &serve, "rev-0001");
    let kept = enroll(&env, &serve, "rev-0002");
    let serial = serial_hex(&dac);

    // The first CRL is issued at start: DER at the configured URL path, nothing revoked.
    let (status, ct, first) = fetch_crl(&env, &serve, "/crl/dev.crl");
    assert_eq!(
        (status.as_str(), ct.as_str()),
        ("200", "application/pkix-crl")
    );
    let v = {
        std::fs::write(env.path("first.crl"), &first).unwrap();
        pyca_crl(&env, "first.crl")
    };
    assert_eq!(v["number"], 1);
    assert_eq!(v["entries"].as_array().unwrap().len(), 0);
    assert_eq!(fetch_crl(&env, &serve, "/other.crl").0, "404");

    // While serve holds the ledger, dcl-info (no ledger needed) already answers.
    let out = cli(&env, &["crl", "dcl-info", "--label", "dev"]);
    assert_success(&out);
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["dataURL"], "http://127.0.0.1:8444/crl/dev.crl");
    assert_eq!(info["vid"], 0xFFF1);
    assert_eq!(info["pid"], 0);
    assert_eq!(info["isPAA"], false);
    assert_eq!(info["revocationType"], 1);
    let skid = info["issuerSubjectKeyID"].as_str().unwrap();
    assert_eq!(skid.len(), 40);
    assert_eq!(skid, skid.to_uppercase());
    assert!(
        info["crlSignerCertificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE")
    );
    serve.stop();

    // Bad input: a clear error, nothing changes.
    let out = cli(
        &env,
        &["revoke", "--serial", &serial, "--reason", "certificateHold"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyCompromise"));
    let out = cli(
        &env,
        &["revoke", "--serial", "0102", "--reason", "keyCompromise"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no DAC with serial 0102"));

    let out = cli(
        &env,
        &[
            "revoke",
            "--serial",
            &serial,
            "--reason",
            "keyCompromise",
            "--json",
        ],
    );
    assert_success(&out);
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["serial"], serial.as_str());
    assert_eq!(r["crl"]["number"], 2);
    assert_eq!(r["crl"]["entries"], 1);
    // Twice: refused, and the CRL is not reissued.
    let out = cli(
        &env,
        &[
            "revoke",
            "--serial",
            &serial.to_lowercase(),
            "--reason",
            "superseded",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already revoked"));

    // The CRL file: openssl verifies it under the PAI and reads AKI, number, entry and reason.
    let text = openssl_crl_text(&env, "crl/dev.crl");
    assert!(text.contains("verify OK"), "{text}");
    assert!(text.contains("Version 2"), "{text}");
    assert!(text.contains("ecdsa-with-SHA256"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                2"),
        "{text}"
    );
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(
        !text.contains(&serial_hex(&kept)),
        "only the revoked DAC is listed"
    );
    // pyca/cryptography: signature, AKI = PAI SKID, issuer bytes, number, the serial as
    // uppercase hex of its magnitude (how the Matter tooling matches it).
    let v = pyca_crl(&env, "crl/dev.crl");
    assert_eq!(v["signature_valid"], true);
    assert_eq!(v["aki_is_pai_ski"], true);
    assert_eq!(v["issuer_is_pai_subject"], true);
    assert_eq!(v["algorithm"], "1.2.840.10045.4.3.2");
    assert_eq!(v["number"], 2);
    assert_eq!(
        v["entries"],
        serde_json::json!([{ "serial": serial, "reason": "key_compromise" }])
    );

    // Served again: the same CRL at its URL (not due, so not reissued at start).
    let serve = Serve::start(&env);
    let (status, _, served) = fetch_crl(&env, &serve, "/crl/dev.crl");
    assert_eq!(status, "200");
    assert_eq!(served, std::fs::read(env.path("crl/dev.crl")).unwrap());

    // The revoked DAC cannot renew; the other one can.
    let renew = |device: &str| {
        sh(
            env.dir.path(),
            &format!(
                "openssl req -new -key {device}.key -out {device}-2.csr -config {device}.cnf
                 curl -sS --cacert tls/ca.pem --cert {device}.pem --key {device}.key \
                   -H 'Content-Type: application/pkcs10' --data-binary @{device}-2.csr \
                   -w '\n%{{http_code}}' https://localhost:{}/.well-known/est/dev/simplereenroll",
                serve.est_port
            ),
        )
    };
    let out = renew("rev-0001");
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.ends_with("403"), "{text}");
    assert!(text.contains("revoked"), "{text}");
    let out = renew("rev-0002");
    assert!(stdout(&out).ends_with("200"), "{}", stdout(&out));
    serve.stop();

    // `crl --out`: the current CRL; `--new` issues the next number.
    let copy = env.path("copy.crl").display().to_string();
    let out = cli(&env, &["crl", "--label", "dev", "--out", &copy]);
    assert_success(&out);
    assert_eq!(
        std::fs::read(env.path("copy.crl")).unwrap(),
        std::fs::read(env.path("crl/dev.crl")).unwrap()
    );
    let out = cli(
        &env,
        &[
            "crl",
            "--label",
            "dev",
            "--out",
            &env.path("new.crl").display().to_string(),
            "--new",
            "--json",
        ],
    );
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["number"], 3);
    assert_eq!(pyca_crl(&env, "new.crl")["number"], 3);
}

#[test]
fn dacs_carry_the_crl_distribution_point_when_the_label_asks() {
    let env = DevEnv::new(|t| {
        label_keys(t, "").replace(
            "file = \"crl/dev.crl\"",
            "file = \"crl/dev.crl\"\nin_dacs = true",
        )
    });
    let (issuer, ledger) = env.issuer();
    let (csr_der, _) = common::csr(&common::subject(Some("dp-1"), Some("FFF1"), Some("8000")));
    let req = matter_est::csr::parse(&csr_der).unwrap();
    let issued = issuer
        .issue("dev", &req, &matter_est::issuance::IssueOptions::default())
        .unwrap();
    ledger.close();
    let der = issued.dac.der;
    assert!(der.len() <= 600, "{} bytes", der.len());
    common::write_pem(&env.path("dp.pem"), &der);
    let out = sh(env.dir.path(), "openssl x509 -in dp.pem -noout -text");
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains("X509v3 CRL Distribution Points"), "{text}");
    assert!(
        text.contains("URI:http://127.0.0.1:8444/crl/dev.crl"),
        "{text}"
    );
    common::openssl_verify(&env, &[der]);
}

#[test]
fn a_dac_crl_distribution_point_over_100_characters_is_refused_at_config_load() {
    let long = format!("http://crl.example.com/{}", "x".repeat(90));
    let env = DevEnv::new(|t| {
        t.replace("http://127.0.0.1:8444/crl/dev.crl", &long)
            .replace(
                "file = \"crl/dev.crl\"",
                "file = \"crl/dev.crl\"\nin_dacs = true",
            )
    });
    let out = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("labels.dev.crl.url") && err.contains("100"),
        "{err}"
    );
}
