//! `matter-est serve` as an operator runs it: a real process, JSON log lines, and SIGTERM
//! handled gracefully (stop accepting, close the ledger, exit 0).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{DevEnv, csr, subject};
use matter_est::profile::dev;

#[test]
fn serve_logs_json_and_stops_on_sigterm() {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // A line says where it listens (after the signer's, when it has one to say).
    let first: serde_json::Value = lines
        .by_ref()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l.unwrap()).unwrap())
        .find(|l| l["fields"]["message"] != "PKCS#11 signer ready")
        .unwrap();
    assert_eq!(first["fields"]["message"], "matter-est serving");
    let addr = first["fields"]["addr"].as_str().unwrap().to_string();
    let port = addr.rsplit(':').next().unwrap();

    // One enrollment with curl.
    let csr_path = env.path("d.csr");
    let (der, _) = csr(&subject(Some("json-log"), Some("FFF1"), Some("8000")));
    std::fs::write(
        &csr_path,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der),
    )
    .unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(env.path(dev::files::TLS_CA_CERT))
        .arg("--cert")
        .arg(env.path(dev::files::GATEWAY_CERT))
        .arg("--key")
        .arg(env.path(dev::files::GATEWAY_KEY))
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", csr_path.display()))
        .arg(format!(
            "https://localhost:{port}/.well-known/est/dev/simpleenroll"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // Its log line: one JSON object with the request's facts, no secrets.
    let line = lines.next().unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["message"], "request");
    assert_eq!(f["op"], "simpleenroll");
    assert_eq!(f["label"], "dev");
    assert_eq!(f["status"], 200);
    assert_eq!(f["identity"], "client:cn:gw-line-1");
    assert_eq!(f["serial"].as_str().unwrap().len(), 32);
    assert!(!line.contains("PRIVATE KEY"));

    // SIGTERM: graceful shutdown, ledger closed, exit 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.iter().any(|l| l.contains("ledger closed")), "{rest:?}");
    // The ledger is free again and holds the DAC.
    let (_issuer, ledger) = env.issuer();
    assert_eq!(
        matter_est::store::Ledger::count(ledger.as_ref(), "dev").unwrap(),
        1
    );
}

/// Every test above again, the PAI key in a SoftHSM2 token and signed through the PKCS#11 signer
/// (STYLE.md "a small signer seam": the same tests over both signers).
#[test]
fn the_same_tests_over_the_pkcs11_signer() {
    common::hsm::rerun_over_pkcs11("the_same_tests_over_the_pkcs11_signer", &[]);
}
