//! Enrollment tokens with a lifecycle (issue 14 item 3), as an operator meets them: `token
//! create` (expiry, CN binding), `token revoke`, `token list` with states, and a real `serve`
//! process refusing expired and revoked tokens with 401 over curl.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use common::{DevEnv, assert_success};
use matter_est::profile::dev;
use serve::cli;

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert_success(out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn create(env: &DevEnv, extra: &[&str]) -> (String, String) {
    let mut args = vec!["token", "create", "--label", "dev", "--json"];
    args.extend(extra);
    let v = &json_lines(&cli(env, &args))[0];
    (
        v["id"].as_str().unwrap().into(),
        v["secret"].as_str().unwrap().into(),
    )
}

/// This file's tests again with the ledger on PostgreSQL (tests/common/pg.rs).
#[test]
fn on_postgres() {
    common::pg::rerun_on_postgres("on_postgres", &[]);
}

#[test]
fn tokens_expire_bind_a_cn_are_revoked_and_listed() {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let d = env.dir.path();
    let bound = create(&env, &["--cn", "tok-cn-1"]);
    let plain = create(&env, &["--expires-in", "1h"]);
    let revoked = create(&env, &[]);
    let v = &json_lines(&cli(
        &env,
        &["token", "revoke", "--id", &revoked.0, "--json"],
    ))[0];
    assert_eq!(v["state"], "revoked");
    let out = cli(&env, &["token", "revoke", "--id", &revoked.0]);
    assert!(!out.status.success() && stderr(&out).contains("already revoked"));
    let out = cli(&env, &["token", "revoke", "--id", "tok-000000000000"]);
    assert!(!out.status.success() && stderr(&out).contains("no token"));
    let out = cli(
        &env,
        &["token", "create", "--label", "dev", "--expires-in", "soon"],
    );
    assert!(!out.status.success() && stderr(&out).contains("--expires-in"));
    // An expired token: made with an expiry in the past (a fixed clock, no sleeping).
    let expired = {
        let (_, ledger) = env.issuer();
        let t = matter_est::policy::create_token_with(
            ledger.as_ref(),
            "dev",
            &matter_est::policy::TokenOptions {
                expires_at: Some(matter_est::asn1::now() - 10),
                ..Default::default()
            },
        )
        .unwrap();
        ledger.close();
        t
    };

    for (name, cn) in [("a", "tok-cn-1"), ("b", "tok-cn-2"), ("c", "tok-plain")] {
        let (der, _) = common::csr(&common::subject(Some(cn), Some("FFF1"), Some("8000")));
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
        std::fs::write(d.join(format!("{name}.csr")), b64).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["fields"]["message"] == "matter-est serving" {
            break v["fields"]["addr"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_string();
        }
    };
    let enroll = |token: &(String, String), csr: &str| -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(env.path(dev::files::TLS_CA_CERT))
            .args(["-u", &format!("{}:{}", token.0, token.1)])
            .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
            .arg(format!("@{}", d.join(csr).display()))
            .arg(format!(
                "https://localhost:{port}/.well-known/est/dev/simpleenroll"
            ))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    // Bound to CN tok-cn-1: another CN is refused (and the token stays unspent), its own works.
    let (code, body) = enroll(&bound, "b.csr");
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("bound to CN"), "{body}");
    assert_eq!(enroll(&bound, "a.csr").0, "200");
    // Plain: spent, and the same CSR again gets the DAC on record (issue 12's repeat rule).
    assert_eq!(enroll(&plain, "c.csr").0, "200");
    assert_eq!(enroll(&plain, "c.csr").0, "200");
    assert_eq!(enroll(&plain, "b.csr").0, "401");
    // Revoked and expired: 401.
    let (code, body) = enroll(&revoked, "b.csr");
    assert_eq!(code, "401");
    assert!(body.contains("revoked"), "{body}");
    let (code, body) = enroll(&expired, "b.csr");
    assert_eq!(code, "401");
    assert!(body.contains("expired"), "{body}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());

    let list = json_lines(&cli(&env, &["token", "list", "--json"]));
    let state = |id: &str| {
        list.iter()
            .find(|t| t["id"] == id)
            .map(|t| {
                (
                    t["state"].as_str().unwrap().to_string(),
                    t["spentBy"].clone(),
                )
            })
            .unwrap()
    };
    assert_eq!(state(&bound.0).0, "spent");
    assert_eq!(state(&bound.0).1.as_str().unwrap().len(), 32);
    assert_eq!(state(&plain.0).0, "spent");
    assert_eq!(state(&revoked.0).0, "revoked");
    assert_eq!(state(&expired.0).0, "expired");
    assert_eq!(
        list.iter().find(|t| t["id"] == bound.0.as_str()).unwrap()["cn"],
        "tok-cn-1"
    );
    let only = json_lines(&cli(
        &env,
        &["token", "list", "--json", "--state", "expired"],
    ));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["id"], expired.0.as_str());
    // A spent token cannot be revoked: its DAC can.
    let out = cli(&env, &["token", "revoke", "--id", &bound.0]);
    assert!(!out.status.success() && stderr(&out).contains("revoke that DAC instead"));
    // The audit log has the revocation and the refused uses.
    let revokes = json_lines(&cli(
        &env,
        &["audit", "list", "--json", "--event", "token_revoked"],
    ));
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["token"], revoked.0.as_str());
    let refused = json_lines(&cli(
        &env,
        &["audit", "list", "--json", "--event", "enrollment_refused"],
    ));
    assert!(
        refused
            .iter()
            .any(|r| r["rule"].as_str().unwrap().contains("expired")
                && r["presented"] == format!("basic:{}", expired.0).as_str())
    );
}
