//! Issue 17 item 5: manual approval (RFC 7030 §4.2.3), over a real `matter-est serve` process,
//! the real `est-client` binary (which waits on 202) and the real `matter-est pending` CLI
//! (through the running server's admin socket). Approve: the waiting client finishes with its
//! DAC; reject: it fails with the operator's reason; expiry: 403 saying so; another CSR does not
//! pick up an approval; nothing is signed before approval; every decision is audited.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::est::{ALL, Client, client_config, identity_from_files, issued, pkcs7_certs};
use common::{DevEnv, csr, curl_json as curl, subject};
use matter_est::profile::dev;
use serve::{Server, cli, serial_of, serials_on_record};

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";
/// How long the test waits for a client or a held request to show up.
const WAIT: Duration = Duration::from_secs(60);

fn manual_env(expiry_secs: u64) -> DevEnv {
    DevEnv::new(|t| {
        common::label_keys(
            t.replace("127.0.0.1:8443", "127.0.0.1:0"),
            &format!(
                "approval = \"manual\"\npending_expiry_secs = {expiry_secs}\n\
                 pending_retry_after_secs = 1"
            ),
        )
    })
}

/// The real est-client binary, built beside matter-est (`cargo build --workspace`).
fn est_client_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_matter-est"))
        .parent()
        .unwrap()
        .join("est-client");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace; scripts/test does)",
        bin.display()
    );
    bin
}

/// `est-client enroll` for `device` as the gateway, in the background.
fn spawn_enroll(env: &DevEnv, server: &Server, device: &str, out: &Path) -> Child {
    Command::new(est_client_bin())
        .arg("--server")
        .arg(format!("https://{}", server.addr))
        .arg("--cacert")
        .arg(env.path(dev::files::TLS_CA_CERT))
        .arg("--cert")
        .arg(env.path(dev::files::GATEWAY_CERT))
        .arg("--key")
        .arg(env.path(dev::files::GATEWAY_KEY))
        .args(["--label", "dev", "--max-wait", "120", "enroll"])
        .args(["--vid", "FFF1", "--pid", "8000", "--device-id", device])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The held requests (`pending list --json`).
fn held(env: &DevEnv) -> Vec<serde_json::Value> {
    let out = cli(env, &["pending", "list", "--json"]);
    common::assert_success(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until a request whose subject contains `cn` is held; its id.
fn wait_held(env: &DevEnv, cn: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(h) = held(env)
            .into_iter()
            .find(|h| h["subject"].as_str().unwrap().contains(cn))
        {
            assert_eq!(h["state"], "waiting");
            assert_eq!(h["requester"], "client:cn:gw-line-1", "{h}");
            return h["id"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < WAIT, "no held request for {cn}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for `child` to exit; its status and stderr.
fn wait_exit(mut child: Child) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!("est-client did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gateway(env: &DevEnv) -> Arc<rustls::ClientConfig> {
    client_config(
        &env.path(dev::files::TLS_CA_CERT),
        Some(identity_from_files(
            &env.path(dev::files::GATEWAY_CERT),
            &env.path(dev::files::GATEWAY_KEY),
        )),
        ALL,
    )
}

/// The audit events of `name` (`audit list --event NAME --json`).
fn audit_events(env: &DevEnv, name: &str) -> Vec<serde_json::Value> {
    let out = cli(env, &["audit", "list", "--event", name, "--json"]);
    common::assert_success(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn approve_and_reject_through_the_cli_while_est_client_waits() {
    let env = manual_env(600);
    let server = Server::start(&env, &[]);
    let out = tempfile::tempdir().unwrap();

    // Approve: est-client waits on 202 until the operator approves, then gets its DAC.
    let approved_client = spawn_enroll(&env, &server, "approve-me", &out.path().join("a"));
    let id = wait_held(&env, "approve-me");
    // Held, not signed: nothing on record, and the client is still waiting.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(serials_on_record(&env).is_empty(), "signed before approval");
    let mut approved_client = approved_client;
    assert!(
        approved_client.try_wait().unwrap().is_none(),
        "est-client gave up"
    );
    let ok = cli(&env, &["pending", "approve", &id]);
    common::assert_success(&ok);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("approved"));
    let (status, err) = wait_exit(approved_client);
    assert!(status.success(), "est-client: {err}");
    assert!(
        err.contains("held by the server"),
        "it waited on 202: {err}"
    );
    let dac_pem = std::fs::read(out.path().join("a.dac.pem")).unwrap();
    let dac = der::pem::decode_vec(&dac_pem).unwrap().1;
    assert_eq!(serials_on_record(&env), [serial_of(&dac)]);
    common::assert_matter_dac(&dac, &env.pai_der());
    // Deciding again is refused and changes nothing.
    let again = cli(&env, &["pending", "reject", &id, "--reason", "too late"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already approved"));

    // Reject: the waiting client fails with the operator's reason; nothing is issued.
    let rejected_client = spawn_enroll(&env, &server, "reject-me", &out.path().join("r"));
    let rid = wait_held(&env, "reject-me");
    let no = cli(
        &env,
        &[
            "pending",
            "reject",
            &rid,
            "--reason",
            "not on today's work order",
        ],
    );
    common::assert_success(&no);
    let (status, err) = wait_exit(rejected_client);
    assert!(!status.success(), "a rejected enrollment succeeded");
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("not on today's work order"), "{err}");
    assert!(!out.path().join("r.dac.pem").exists());
    assert_eq!(serials_on_record(&env).len(), 1);

    // A rejection needs a reason; an unknown id is 404.
    let bare = cli(&env, &["pending", "reject", &rid, "--reason", " "]);
    assert!(!bare.status.success());
    let unknown = cli(
        &env,
        &["pending", "approve", "00112233445566778899aabbccddeeff"],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no held request"));

    // Audited: held twice, approved once, rejected once with the reason, by the CLI's operator.
    assert_eq!(audit_events(&env, "enrollment_held").len(), 2);
    let approved = audit_events(&env, "request_approved");
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["id"], id.as_str());
    let rejected = audit_events(&env, "request_rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reason"], "not on today's work order");
    let verify = cli(&env, &["audit", "verify"]);
    common::assert_success(&verify);

    // A renewal (simplereenroll with the DAC just issued) on the manual label is held too,
    // known by the DAC it renews, and est-client finishes once it is approved.
    let renewal = Command::new(est_client_bin())
        .arg("--server")
        .arg(format!("https://{}", server.addr))
        .arg("--cacert")
        .arg(env.path(dev::files::TLS_CA_CERT))
        .arg("--cert")
        .arg(out.path().join("a.dac.pem"))
        .arg("--key")
        .arg(out.path().join("a.key.pem"))
        .args(["--label", "dev", "--max-wait", "120", "reenroll", "--out"])
        .arg(out.path().join("renewed"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let old_serial = serial_of(&dac);
    let start = Instant::now();
    let renewal_id = loop {
        if let Some(h) = held(&env).into_iter().find(|h| h["kind"] == "renewal") {
            assert_eq!(h["state"], "waiting");
            assert_eq!(
                h["requester"].as_str().unwrap().to_uppercase(),
                format!("DAC:{old_serial}")
            );
            break h["id"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < WAIT, "no held renewal");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        serials_on_record(&env).len(),
        1,
        "a renewal signed before approval"
    );
    common::assert_success(&cli(&env, &["pending", "approve", &renewal_id]));
    let (status, err) = wait_exit(renewal);
    assert!(status.success(), "est-client reenroll: {err}");
    let renewed_pem = std::fs::read(out.path().join("renewed.dac.pem")).unwrap();
    let renewed = der::pem::decode_vec(&renewed_pem).unwrap().1;
    assert_eq!(
        serials_on_record(&env),
        [old_serial, serial_of(&renewed)],
        "the renewal is on record after its predecessor"
    );
}

#[test]
fn an_approval_covers_its_own_csr_only_and_nothing_is_signed_before_it() {
    let env = manual_env(600);
    let server = Server::start(&env, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tls, pai) = (gateway(&env), env.pai_der());
    let subject = subject(Some("same-device"), Some("FFF1"), Some("8000"));
    let (csr_a, _) = csr(&subject);
    // The same subject, another key: another CSR.
    let (csr_b, _) = csr(&subject);

    let first = rt.block_on(async {
        let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
        let a = c.enroll(ENROLL, &csr_a).await;
        let b = c.enroll(ENROLL, &csr_b).await;
        // Asking again while undecided: 202 again, the same request.
        let a2 = c.enroll(ENROLL, &csr_a).await;
        (a, b, a2)
    });
    for r in [&first.0, &first.1, &first.2] {
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.text().contains("awaits an operator's approval"));
    }
    let list = held(&env);
    assert_eq!(list.len(), 2, "two CSRs, two held requests: {list:?}");
    assert!(serials_on_record(&env).is_empty(), "signed before approval");
    let id_of = |text: &str| {
        list.iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .find(|id| text.contains(id.as_str()))
            .unwrap()
    };
    let (id_a, id_b) = (id_of(&first.0.text()), id_of(&first.1.text()));
    assert_ne!(id_a, id_b);
    common::assert_success(&cli(&env, &["pending", "approve", &id_a]));

    let (a, b, a_again) = rt.block_on(async {
        let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
        let b = c.enroll(ENROLL, &csr_b).await;
        let a = c.enroll(ENROLL, &csr_a).await;
        let a_again = c.enroll(ENROLL, &csr_a).await;
        (a, b, a_again)
    });
    // B is still held: A's approval is not B's.
    assert_eq!(b.status, 202, "{}", b.text());
    assert_eq!(a.status, 200, "{}", a.text());
    let dac = issued(&pkcs7_certs(&a.body), &pai);
    // A's retry after it was issued: the same DAC (idempotent by CSR), nothing new signed.
    assert_eq!(a_again.status, 200);
    assert_eq!(issued(&pkcs7_certs(&a_again.body), &pai), dac);
    assert_eq!(serials_on_record(&env), [serial_of(&dac)]);
    // Approving B now would have to give B the subject A holds: refused at issuance.
    common::assert_success(&cli(&env, &["pending", "approve", &id_b]));
    let b2 = rt.block_on(async {
        let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
        c.enroll(ENROLL, &csr_b).await
    });
    assert_eq!(b2.status, 403, "{}", b2.text());
    assert!(b2.text().contains("already issued"), "{}", b2.text());
    assert_eq!(serials_on_record(&env).len(), 1);

    // State filter.
    let out = cli(&env, &["pending", "list", "--state", "approved", "--json"]);
    common::assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let bad = cli(&env, &["pending", "list", "--state", "maybe"]);
    assert!(!bad.status.success());
}

#[test]
fn an_undecided_request_expires() {
    let env = manual_env(2);
    let server = Server::start(&env, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = gateway(&env);
    let (der, _) = csr(&subject(Some("slow-operator"), Some("FFF1"), Some("8000")));
    let first = rt.block_on(async {
        let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
        c.enroll(ENROLL, &der).await
    });
    assert_eq!(first.status, 202, "{}", first.text());
    let id = held(&env)[0]["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2500));
    let later = rt.block_on(async {
        let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
        c.enroll(ENROLL, &der).await
    });
    assert_eq!(later.status, 403, "{}", later.text());
    assert!(later.text().contains("expired"), "{}", later.text());
    assert_eq!(held(&env)[0]["state"], "expired");
    let approve = cli(&env, &["pending", "approve", &id]);
    assert!(!approve.status.success(), "an expired request was approved");
    assert!(String::from_utf8_lossy(&approve.stderr).contains("expired"));
    assert!(serials_on_record(&env).is_empty());
}

#[test]
fn the_admin_api_decides_for_operators_of_the_label_only() {
    // Two manual labels on one PAI; the operator sees label dev only.
    let env = DevEnv::new(|t| {
        let t = common::label_keys(
            t.replace("127.0.0.1:8443", "127.0.0.1:0").replace(
                "match = \"cn:dev-operator\"\nrole = \"operator\"\n",
                "match = \"cn:dev-operator\"\nrole = \"operator\"\nlabels = [\"dev\"]\n",
            ),
            "approval = \"manual\"\npending_retry_after_secs = 1",
        );
        let at = t.find("[labels.dev]").unwrap();
        let other = t[at..]
            .replace("labels.dev", "labels.other")
            .replace("crl/dev.crl", "crl/other.crl");
        format!("{t}\n{other}")
    });
    let server = Server::start(&env, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = gateway(&env);
    let (dev_csr, _) = csr(&subject(Some("api-dev"), Some("FFF1"), Some("8000")));
    let (other_csr, _) = csr(&subject(Some("api-other"), Some("FFF1"), Some("8000")));
    let (d, o) = rt.block_on(async {
        let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
        let d = c.enroll(ENROLL, &dev_csr).await;
        let o = c
            .enroll("/.well-known/est/other/simpleenroll", &other_csr)
            .await;
        (d, o)
    });
    assert_eq!(
        (d.status, o.status),
        (202, 202),
        "{} {}",
        d.text(),
        o.text()
    );

    let url = format!("https://localhost:{}", server.admin.unwrap().port());
    let tls_ca = env.path(dev::files::TLS_CA_CERT);
    let dir = env.path("clients");
    let as_ = |who: &str, method: &str, path: &str, body: Option<&str>| {
        let cert = dir.join(format!("{who}.pem"));
        let key = dir.join(format!("{who}.key"));
        let mut args = vec![
            "--cacert",
            tls_ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
        ];
        if let Some(b) = body {
            args.extend(["--data", b]);
        }
        let target = format!("{url}{path}");
        args.push(&target);
        curl(&args)
    };
    let (code, all) = as_("admin", "GET", "/v1/pending", None);
    assert_eq!(code, 200);
    let all = all["requests"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2);
    let id = |label: &str| {
        all.iter().find(|h| h["label"] == label).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (dev_id, other_id) = (id("dev"), id("other"));
    // The operator sees its label's request only, and may not look at the other label.
    let (code, seen) = as_("operator", "GET", "/v1/pending", None);
    assert_eq!(code, 200);
    let seen = seen["requests"].as_array().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["id"], dev_id.as_str());
    assert_eq!(seen[0]["state"], "waiting");
    assert_eq!(
        as_("operator", "GET", "/v1/pending?label=other", None).0,
        403
    );
    // Another tenant's request is not found; an auditor may read but not decide.
    let approve = |id: &str| format!("/v1/pending/{id}/approve");
    assert_eq!(as_("operator", "POST", &approve(&other_id), None).0, 404);
    assert_eq!(as_("auditor", "GET", "/v1/pending", None).0, 200);
    assert_eq!(as_("auditor", "POST", &approve(&dev_id), None).0, 403);
    // A rejection needs a reason.
    let reject = format!("/v1/pending/{dev_id}/reject");
    assert_eq!(as_("operator", "POST", &reject, Some("{}")).0, 400);
    let (code, r) = as_(
        "operator",
        "POST",
        &reject,
        Some(r#"{"reason":"unknown device"}"#),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["state"], "rejected");
    assert_eq!(r["decidedBy"], "admin:cn:dev-operator");
    let (code, r) = as_("admin", "POST", &approve(&other_id), None);
    assert_eq!(code, 200, "{r}");

    let (d, o) = rt.block_on(async {
        let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
        let d = c.enroll(ENROLL, &dev_csr).await;
        let o = c
            .enroll("/.well-known/est/other/simpleenroll", &other_csr)
            .await;
        (d, o)
    });
    assert_eq!(d.status, 403);
    assert!(d.text().contains("unknown device"), "{}", d.text());
    assert_eq!(o.status, 200, "{}", o.text());
}

/// `[approval] held_retention_secs`: `serve` removes a settled request once its retention has
/// passed (at start, then hourly); the audit chain keeps it, and the client's retry with the
/// same CSR is held anew for a new decision (202), not refused on a decision nobody can see.
#[test]
fn a_settled_request_is_pruned_after_its_retention_and_a_retry_is_held_anew() {
    let env = manual_env(3600);
    std::fs::OpenOptions::new()
        .append(true)
        .open(env.path(dev::files::CONFIG))
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, b"\n[approval]\nheld_retention_secs = 1\n")
        })
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = gateway(&env);
    let (der, _) = csr(&subject(Some("pruned"), Some("FFF1"), Some("8000")));
    let ask = |server: &Server| {
        rt.block_on(async {
            let mut c = Client::connect(server.addr, tls.clone()).await.unwrap();
            c.enroll(ENROLL, &der).await
        })
    };
    let server = Server::start(&env, &[]);
    assert_eq!(ask(&server).status, 202);
    let id = held(&env)[0]["id"].as_str().unwrap().to_string();
    let out = cli(
        &env,
        &["pending", "reject", &id, "--reason", "not on the plan"],
    );
    common::assert_success(&out);
    let refused = ask(&server);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.text().contains("not on the plan"),
        "{}",
        refused.text()
    );
    drop(server);

    // Past the retention (whole seconds: decided at second t, removed once t < now - 1), the
    // next start removes it.
    std::thread::sleep(Duration::from_millis(2100));
    let server = Server::start(&env, &[]);
    let start = Instant::now();
    while !held(&env).is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "the settled request was not removed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = ask(&server);
    assert_eq!(again.status, 202, "{}", again.text());
    let now = held(&env);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["id"], id.as_str(), "the same CSR, the same id");
    assert_eq!(now[0]["state"], "waiting");
    assert_eq!(audit_events(&env, "enrollment_held").len(), 2);
    assert_eq!(audit_events(&env, "request_rejected").len(), 1);
    assert!(serials_on_record(&env).is_empty());
}
