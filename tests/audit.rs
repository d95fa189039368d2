//! The audit log (DESIGN.md "The operator plane"): each event type lands in the hash chain,
//! `audit verify` passes on an untouched ledger, and editing a record, deleting one or cutting
//! the tail in the ledger file (through redb itself) makes it fail and name where. A real
//! `serve` process, curl, and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{DevEnv, assert_success};
use matter_est::profile::dev;
use redb::{ReadableTable, TableDefinition};
use serve::cli;

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const AUDIT_HEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_head");

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `serve` while `during(est_port)` runs, then stops it with SIGTERM; returns the audit
/// head it logged on shutdown.
fn serving(env: &DevEnv, during: impl FnOnce(&str)) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let v: serde_json::Value =
            serde_json::from_str(&lines.next().expect("serve exited").unwrap()).unwrap();
        if v["fields"]["message"] == "matter-est serving" {
            let addr = v["fields"]["addr"].as_str().unwrap();
            break addr.rsplit(':').next().unwrap().to_string();
        }
    };
    during(&port);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut head = None;
    for line in lines.map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == "audit head" {
            head = Some(v["fields"]["head"].as_str().unwrap().to_string());
        }
    }
    assert!(child.wait().unwrap().success());
    head.expect("an audit head line on shutdown")
}

/// Applies `edit` to the ledger file's audit tables through redb, runs `audit verify` (with
/// `--head` if given), then puts the original file back.
fn verify_tampered(
    env: &DevEnv,
    head: Option<&str>,
    edit: impl FnOnce(&redb::WriteTransaction),
) -> Output {
    let ledger = env.path("ledger.redb");
    let backup = env.path("ledger.redb.orig");
    std::fs::copy(&ledger, &backup).unwrap();
    {
        let db = redb::Database::open(&ledger).unwrap();
        let txn = db.begin_write().unwrap();
        edit(&txn);
        txn.commit().unwrap();
    }
    let mut args = vec!["audit", "verify"];
    if let Some(h) = head {
        args.extend(["--head", h]);
    }
    let out = cli(env, &args);
    std::fs::rename(&backup, &ledger).unwrap();
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_event_is_chained_and_tampering_is_named() {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let d = env.dir.path();
    // A token, made before serving (the ledger is free).
    let out = cli(&env, &["token", "create", "--label", "dev"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let token_line = text.lines().find(|l| l.starts_with("tok-")).unwrap();
    let (token_id, secret) = token_line.split_once(' ').unwrap();
    let (token_id, secret) = (token_id.to_string(), secret.to_string());

    let head = serving(&env, |port| {
        let (csr, _) = common::csr(&common::subject(
            Some("audit-1"),
            Some("FFF1"),
            Some("8000"),
        ));
        std::fs::write(d.join("a1.csr"), base64_std(&csr)).unwrap();
        let (csr, _) = common::csr(&common::subject(
            Some("audit-2"),
            Some("FFF1"),
            Some("8000"),
        ));
        std::fs::write(d.join("a2.csr"), base64_std(&csr)).unwrap();
        let url = format!("https://localhost:{port}/.well-known/est/dev/simpleenroll");
        let post = "curl -sS -o /dev/null -w '%{http_code}' --cacert tls/ca.pem \
                    -H 'Content-Type: application/pkcs10'";
        // Granted (gateway), granted with the token (spends it), refused (no credentials).
        let codes = sh(
            d,
            &format!(
                "{post} --cert clients/gateway.pem --key clients/gateway.key --data-binary @a1.csr {url}
                 echo
                 {post} -u {token_id}:{secret} --data-binary @a2.csr {url}
                 echo
                 {post} --data-binary @a1.csr {url}"
            ),
        );
        assert_eq!(codes.lines().collect::<Vec<_>>(), ["200", "200", "401"]);
    });

    // A revocation (and the CRL it reissues), by the CLI.
    let granted = cli(
        &env,
        &["audit", "list", "--event", "enrollment_granted", "--json"],
    );
    assert_success(&granted);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&granted.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["identity"], "client:cn:gw-line-1");
    let serial = first["serial"].as_str().unwrap().to_string();
    assert_success(&cli(
        &env,
        &["revoke", "--serial", &serial, "--reason", "superseded"],
    ));

    let out = cli(&env, &["audit", "list", "--json", "--limit", "1000"]);
    assert_success(&out);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    for e in [
        "token_created",
        "config_loaded",
        "crl_issued",
        "enrollment_granted",
        "token_spent",
        "enrollment_refused",
        "revocation",
    ] {
        assert!(events.contains(&e), "{e} missing from {events:?}");
    }
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64, "sequence numbers without gaps");
    }
    let refused = records
        .iter()
        .find(|r| r["event"] == "enrollment_refused")
        .unwrap();
    assert_eq!(refused["status"], 401);
    assert!(
        refused["rule"]
            .as_str()
            .unwrap()
            .contains("client certificate or an enrollment token")
    );
    let spent = records
        .iter()
        .find(|r| r["event"] == "token_spent")
        .unwrap();
    assert_eq!(spent["token"], token_id.as_str());
    let revocation = records.iter().find(|r| r["event"] == "revocation").unwrap();
    assert_eq!(revocation["serial"], serial.as_str());
    assert!(revocation["identity"].as_str().unwrap().starts_with("cli:"));
    // The operator's action closes what it caused: revocation, the new CRL, then who did it.
    let n = records.len();
    assert_eq!(records[n - 2]["event"], "crl_issued");
    let action = &records[n - 1];
    assert_eq!(action["event"], "admin_action");
    assert_eq!(
        action["action"],
        format!("POST /v1/certs/{}/revoke", serial.replace(':', ""))
    );
    assert!(action["identity"].as_str().unwrap().starts_with("cli:"));
    // Filters.
    let out = cli(
        &env,
        &["audit", "list", "--json", "--identity", "gw-line-1"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = cli(
        &env,
        &["audit", "list", "--json", "--label", "dev", "--until", "1"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 0);

    // Untouched: OK, against the head logged at shutdown too.
    let out = cli(&env, &["audit", "verify", "--head", &head]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain OK"));
    let head_seq: u64 = head.split(':').next().unwrap().parse().unwrap();
    let last = records.len() as u64 - 1;
    assert!(head_seq < last, "the CLI appended after serve stopped");

    // Editing record 2 (a byte of its event): named.
    let out = verify_tampered(&env, None, |txn| {
        let mut t = txn.open_table(AUDIT).unwrap();
        let bytes = t.get(2).unwrap().unwrap().value().to_vec();
        let edited = String::from_utf8(bytes)
            .unwrap()
            .replacen("\"time\":", "\"time\":1", 1);
        t.insert(2, edited.as_bytes()).unwrap();
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("broken at record 2:"),
        "{}",
        stderr(&out)
    );

    // Deleting record 3: named.
    let out = verify_tampered(&env, None, |txn| {
        txn.open_table(AUDIT).unwrap().remove(3).unwrap();
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("broken at record 3: record 3 is missing"),
        "{}",
        stderr(&out)
    );

    // Cutting the last two records: the head kept in the ledger names it.
    let out = verify_tampered(&env, None, |txn| {
        let mut t = txn.open_table(AUDIT).unwrap();
        t.remove(last).unwrap();
        t.remove(last - 1).unwrap();
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("broken at record {}", last - 1)),
        "{}",
        stderr(&out)
    );

    // A careful cut that also rewrites the kept head past the logged head: only the head from
    // the log catches it, and it names the first record cut.
    let cut_from = head_seq;
    let careful = |txn: &redb::WriteTransaction| {
        let mut t = txn.open_table(AUDIT).unwrap();
        for seq in cut_from..=last {
            t.remove(seq).unwrap();
        }
        let prev = t.get(cut_from - 1).unwrap().unwrap().value().to_vec();
        let mut h = txn.open_table(AUDIT_HEAD).unwrap();
        let mut bytes = (cut_from - 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(&matter_est::store::audit::hash(&prev));
        h.insert("head", bytes.as_slice()).unwrap();
    };
    assert_success(&verify_tampered(&env, None, careful));
    let out = verify_tampered(&env, Some(&head), careful);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("broken at record {cut_from}")),
        "{}",
        stderr(&out)
    );

    // And the untouched ledger is back and still verifies.
    assert_success(&cli(&env, &["audit", "verify", "--head", &head]));
}

fn base64_std(der: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
}
