//! est-client against a real `matter-est serve` on loopback (issue 4).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: tests; shared helpers

#[path = "../../tests/common/mod.rs"]
mod common;
mod fake;

use std::path::Path;
use std::process::Command;

use common::est::TestServer;
use est_client::matter::{self, DeviceSubject};
use est_client::{Client, ClientConfig, Enrolled, Error};
use matter_est::profile::dev;

fn config(server: &TestServer, identity: Option<(&Path, &Path)>) -> ClientConfig {
    ClientConfig::new(
        &server.url(""),
        Some("dev"),
        &server.env.path(dev::files::TLS_CA_CERT),
        identity,
    )
    .unwrap()
}

fn gateway(server: &TestServer) -> Client {
    let (c, k) = (
        server.env.path(dev::files::GATEWAY_CERT),
        server.env.path(dev::files::GATEWAY_KEY),
    );
    Client::new(config(server, Some((&c, &k))))
}

fn device_csr(id: &str, pid: &str) -> (Vec<u8>, Vec<u8>) {
    let key = matter::generate_key().unwrap();
    let csr = matter::csr(
        &key,
        &DeviceSubject {
            cn: Some(id.into()),
            serial_number: Some("SN-42".into()),
            vid: Some("FFF1".into()),
            pid: Some(pid.into()),
        },
    )
    .unwrap();
    (key, csr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_against_the_server() {
    let server = TestServer::start(|t| t).await;
    let anon = Client::new(config(&server, None));
    // A SET OF certificates: PAI and PAA, in whatever order the server's encoder gives.
    let mut cas = anon.cacerts().await.unwrap();
    cas.sort();
    let mut expected = vec![
        server.env.pai_der(),
        matter_est::issuance::read_cert(&server.env.path(dev::files::PAA_CERT)).unwrap(),
    ];
    expected.sort();
    assert_eq!(cas, expected);
    let attrs = anon.csrattrs().await.unwrap().unwrap();
    assert_eq!(attrs[0], 0x30);

    // Enroll twice on one keep-alive connection; the CSR carries CN, serialNumber, VID, PID.
    let gw = gateway(&server);
    let mut last = None;
    for id in ["lib-0001", "lib-0002"] {
        let (key, csr) = device_csr(id, "8000");
        let Enrolled::Issued(issued) = gw.simpleenroll(&csr).await.unwrap() else {
            panic!("pending")
        };
        assert_eq!(issued.chain, [server.env.pai_der()]);
        common::assert_matter_dac(&issued.certificate, &server.env.pai_der());
        last = Some((key, issued.certificate));
    }

    // Re-enroll with the DAC as the TLS client certificate.
    let (key, dac) = last.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (dac_path, key_path) = (dir.path().join("dac.pem"), dir.path().join("key.pem"));
    std::fs::write(
        &dac_path,
        est_client::wire::pem(std::slice::from_ref(&dac)).unwrap(),
    )
    .unwrap();
    matter::write_key(&key_path, &key).unwrap();
    let device = Client::new(config(&server, Some((&dac_path, &key_path))));
    let subject = {
        use der::{Decode, Encode};
        x509_cert::Certificate::from_der(&dac)
            .unwrap()
            .tbs_certificate()
            .subject()
            .to_der()
            .unwrap()
    };
    let csr = matter::csr_for_name(&matter::generate_key().unwrap(), &subject).unwrap();
    let Enrolled::Issued(renewed) = device.simplereenroll(&csr).await.unwrap() else {
        panic!()
    };
    assert_ne!(renewed.certificate, dac);
    assert_eq!(server.ledger.count("dev").unwrap(), 3);

    // A device bootstrapping with a one-time token (HTTP Basic).
    let (id, secret) =
        matter_est::policy::create_token(server.ledger.as_ref(), "dev", None).unwrap();
    let mut cfg = config(&server, None);
    cfg.basic = Some((id, secret));
    let with_token = Client::new(cfg);
    let (_, csr) = device_csr("tok-0001", "8000");
    assert!(matches!(
        with_token.simpleenroll(&csr).await.unwrap(),
        Enrolled::Issued(_)
    ));
    let (_, csr) = device_csr("tok-0002", "8000");
    let err = with_token.simpleenroll(&csr).await.unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_their_cause() {
    let mut server = TestServer::start(|t| {
        t.replace(
            "match = \"cn:gw-line-1\"\npids = \"any\"",
            "match = \"cn:gw-line-1\"\npids = [\"8000\"]",
        )
    })
    .await;
    // Wrong trust anchor: the PAA is not the TLS CA.
    let wrong = ClientConfig::new(
        &server.url(""),
        None,
        &server.env.path(dev::files::PAA_CERT),
        None,
    )
    .unwrap();
    let err = Client::new(wrong).cacerts().await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("--cacert"), "{err}");
    // No client certificate: 401 with the server's reason.
    let (_, csr) = device_csr("nocert", "8000");
    let err = Client::new(config(&server, None))
        .simpleenroll(&csr)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(ref m) if m.contains("client certificate")),
        "{err}"
    );
    // Forbidden PID: 403 with the rule.
    let (_, csr) = device_csr("pid8001", "8001");
    let err = gateway(&server).simpleenroll(&csr).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "403 Forbidden: PID 8001 is not allowed for client cn:gw-line-1 on label \"dev\""
    );
    // Server down.
    let client = gateway(&server);
    server.stop().await;
    let err = client.cacerts().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[test]
fn decoders_accept_libest_and_globalsign_shapes() {
    use base64::Engine;
    let certs: Vec<Vec<u8>> = {
        let env = common::DevEnv::new(|t| t);
        vec![
            env.pai_der(),
            matter_est::issuance::read_cert(&env.path(dev::files::PAA_CERT)).unwrap(),
        ]
    };
    let refs: Vec<&[u8]> = certs.iter().map(Vec::as_slice).collect();
    let der = matter_est::est::wire::certs_only(&refs);
    // Decoded in wire order, which is the encoder's (DER sorts a SET OF).
    let in_wire_order = {
        let at = |c: &Vec<u8>| der.windows(c.len()).position(|w| w == c.as_slice());
        let mut v = certs.clone();
        v.sort_by_key(at);
        v
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let wrap = |n: usize, eol: &str| -> String {
        b64.as_bytes()
            .chunks(n)
            .map(|c| format!("{}{eol}", std::str::from_utf8(c).unwrap()))
            .collect()
    };
    for body in [
        wrap(64, "\n"),
        wrap(76, "\r\n"),
        b64.clone(),
        format!("{}\n", b64),
    ] {
        assert_eq!(
            est_client::wire::certs_only(body.as_bytes()).unwrap(),
            in_wire_order
        );
    }
    assert_eq!(
        est_client::wire::certs_only(&der).unwrap(),
        in_wire_order,
        "raw DER too"
    );
    assert!(est_client::wire::certs_only(b"not base64!").is_err());

    // What libest sends is made by OpenSSL: `openssl crl2pkcs7 -nocrl` gives the same chain.
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, est_client::wire::pem(&certs).unwrap()).unwrap();
    let out = Command::new("openssl")
        .args(["crl2pkcs7", "-nocrl", "-outform", "DER", "-certfile"])
        .arg(&chain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&out.stdout);
    assert_eq!(
        est_client::wire::certs_only(b64.as_bytes()).unwrap(),
        certs,
        "OpenSSL's certs-only PKCS#7"
    );
}

/// `est-client SUBCOMMAND` against `server`'s label dev as the development gateway, for VID
/// FFF1 and PID 8000; the caller adds what the subcommand needs.
fn as_gateway(server: &TestServer, subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_est-client"));
    cmd.args([
        subcommand,
        "--server",
        &server.url(""),
        "--label",
        "dev",
        "--cacert",
    ])
    .arg(server.env.path(dev::files::TLS_CA_CERT))
    .arg("--cert")
    .arg(server.env.path(dev::files::GATEWAY_CERT))
    .arg("--key")
    .arg(server.env.path(dev::files::GATEWAY_KEY))
    .args(["--vid", "FFF1", "--pid", "8000"]);
    cmd
}

fn gateway_cmd(server: &TestServer, devices: &Path, out: &Path) -> Command {
    let mut cmd = as_gateway(server, "gateway");
    cmd.arg("--devices").arg(devices).arg("--out").arg(out);
    cmd
}

/// The gateway's DAC for `id`, after checking that it certifies the gateway's key for `id`.
fn device_certified(out: &Path, id: &str) -> x509_cert::Certificate {
    fake::assert_certifies(
        &out.join(format!("{id}.dac.pem")),
        &out.join(format!("{id}.key.pem")),
    )
}

/// Runs `est-client gateway` to its end, off the test's async threads.
async fn run_gateway(server: &TestServer, devices: &Path, out: &Path) -> std::process::Output {
    let mut cmd = gateway_cmd(server, devices, out);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The manifest's lines that parse (while a run appends, the last one may be cut).
fn manifest_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("manifest.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

fn ok_lines(out: &Path) -> Vec<serde_json::Value> {
    manifest_lines(out)
        .into_iter()
        .filter(|v| v["status"] == "ok")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_over_a_thousand_devices() {
    let server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.csv");
    let mut csv = String::from("device_id\n");
    for i in 0..1000 {
        csv.push_str(&format!("line1-{i:05}\n"));
    }
    std::fs::write(&devices, csv).unwrap();
    let out = dir.path().join("out");
    let run = run_gateway(&server, &devices, &out).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = ok_lines(&out);
    assert_eq!(lines.len(), 1000);
    // Every device: its DAC file as listed, for its own key, with the serial listed.
    for v in &lines {
        let id = v["device_id"].as_str().unwrap();
        let pem = std::fs::read(out.join(format!("{id}.dac.pem"))).unwrap();
        use sha2::Digest;
        assert_eq!(
            matter_est::asn1::hex(&sha2::Sha256::digest(&pem)),
            v["sha256"].as_str().unwrap()
        );
        let cert = device_certified(&out, id);
        assert_eq!(
            matter_est::asn1::hex(cert.tbs_certificate().serial_number().as_bytes()),
            v["serial"].as_str().unwrap()
        );
    }
    let chain = std::fs::read_to_string(out.join("chain.pem")).unwrap();
    let pai = est_client::wire::pem(&[server.env.pai_der()]).unwrap();
    assert!(chain.starts_with(&pai), "chain.pem starts with the PAI");
    assert_eq!(server.ledger.count("dev").unwrap(), 1000);
    // A rerun does nothing.
    let rerun = run_gateway(&server, &devices, &out).await;
    assert!(rerun.status.success());
    assert_eq!(
        String::from_utf8_lossy(&rerun.stdout)
            .split(" in ")
            .next()
            .unwrap(),
        "gateway complete: label dev VID FFF1 PID 8000: 1000 of 1000 devices (0 enrolled now \
         at 0/s, 1000 already done), 0 failed (0 permanent, 0 retryable), 0 not attempted,"
    );
    assert_eq!(server.ledger.count("dev").unwrap(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_midway_finishes_on_rerun_without_duplicates() {
    let server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.csv");
    let csv: String = (0..1500).map(|i| format!("line2-{i:05}\n")).collect();
    std::fs::write(&devices, csv).unwrap();
    let out = dir.path().join("out");
    let mut child = gateway_cmd(&server, &devices, &out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if ok_lines(&out).len() > 300 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = ok_lines(&out).len();
    assert!(before < 1500, "killed midway ({before})");
    let rerun = run_gateway(&server, &devices, &out).await;
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let lines = ok_lines(&out);
    let ids: std::collections::HashSet<_> = lines
        .iter()
        .map(|v| v["device_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1500);
    assert_eq!(manifest_lines(&out).len(), 1500, "one line per device");
    // Requests in flight at the kill were retried with the same key: the server returned the
    // DAC on record instead of issuing a second one.
    assert_eq!(server.ledger.count("dev").unwrap(), 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_replaces_a_torn_key_and_fails_alone_on_an_unreadable_one() {
    let server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.csv");
    std::fs::write(&devices, "torn-1\nblocked-1\nplain-1\n").unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A key (created 0600, as est-client creates keys) torn by a kill before it was synced, so
    // its CSR was never sent...
    est_client::files::write_file(
        &out.join("torn-1.key.pem"),
        b"-----BEGIN PRIVATE KEY-----\nMIGH",
        est_client::files::PRIVATE,
    )
    .unwrap();
    // ...and one that cannot be read: never replaced, the device fails alone.
    std::fs::create_dir(out.join("blocked-1.key.pem")).unwrap();
    let first = run_gateway(&server, &devices, &out).await;
    assert!(
        !first.status.success(),
        "a failed device makes the exit non-zero"
    );
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("device blocked-1: permanent: ") && stderr.contains("blocked-1.key.pem"),
        "{stderr}"
    );
    let summary = String::from_utf8_lossy(&first.stdout);
    assert!(
        summary.contains("2 of 3 devices")
            && summary.contains("1 failed (1 permanent, 0 retryable)"),
        "{summary}"
    );
    let failed: Vec<serde_json::Value> = manifest_lines(&out)
        .into_iter()
        .filter(|v| v["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (&failed[0]["device_id"], &failed[0]["failure"]),
        (&"blocked-1".into(), &"permanent".into())
    );
    let ok: Vec<String> = ok_lines(&out)
        .iter()
        .map(|v| v["device_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ok.len(), 2, "{ok:?}");
    assert!(ok.contains(&"torn-1".to_string()) && ok.contains(&"plain-1".to_string()));
    assert!(out.join("blocked-1.key.pem").is_dir(), "left as it was");
    // The torn key was replaced by the key the DAC certifies.
    device_certified(&out, "torn-1");
    // Once the operator clears the way, a rerun does only that device.
    std::fs::remove_dir(out.join("blocked-1.key.pem")).unwrap();
    let second = run_gateway(&server, &devices, &out).await;
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let summary = String::from_utf8_lossy(&second.stdout);
    assert!(
        summary.starts_with(
            "gateway complete: label dev VID FFF1 PID 8000: 3 of 3 devices (1 enrolled now at "
        ) && summary.contains("2 already done), 0 failed (0 permanent, 0 retryable)"),
        "{summary}"
    );
    assert_eq!(server.ledger.count("dev").unwrap(), 3);
    // One line per device, in its final state: blocked-1's failure gave way to its success.
    let lines = manifest_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|v| v["status"] == "ok"), "{lines:?}");
}

/// The devices `prefix-00000` .. in a CSV of `n` lines.
fn device_list(dir: &Path, prefix: &str, n: usize) -> std::path::PathBuf {
    let devices = dir.join(format!("{prefix}.csv"));
    let csv: String = (0..n).map(|i| format!("{prefix}-{i:05}\n")).collect();
    std::fs::write(&devices, csv).unwrap();
    devices
}

/// Starts the gateway with its output captured, and waits until `ok` devices are in the manifest.
async fn gateway_until(
    server: &TestServer,
    devices: &Path,
    out: &Path,
    ok: usize,
) -> std::process::Child {
    let child = gateway_cmd(server, devices, out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..2000 {
        if ok_lines(out).len() >= ok {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child
}

/// Waits for a child off the test's async threads; (exit code, stdout lines, stderr lines).
async fn finish(child: std::process::Child) -> (Option<i32>, Vec<String>, Vec<String>) {
    let run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let lines = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::to_string)
            .collect()
    };
    (run.status.code(), lines(&run.stdout), lines(&run.stderr))
}

/// "N label" in a summary, e.g. `count(s, "not attempted")`.
fn count(summary: &str, what: &str) -> usize {
    let at = summary.find(&format!(" {what}")).unwrap();
    summary[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// Issue 18 item 6, issue 15 item 4: Ctrl-C stops sending, the requests in flight finish and are
// recorded, one summary; the manifest holds one line per device, each durable; a rerun finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stops_on_ctrl_c_with_one_summary() {
    let server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = device_list(dir.path(), "int", 4000);
    let out = dir.path().join("out");
    let child = gateway_until(&server, &devices, &out, 300).await;
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stdout, stderr) = finish(child).await;
    assert_eq!(code, Some(130), "{stdout:?} {stderr:?}");
    assert_eq!(stdout.len(), 1, "one summary: {stdout:?}");
    let summary = &stdout[0];
    assert!(
        summary.starts_with("gateway stopped: label dev VID FFF1 PID 8000: "),
        "{summary}"
    );
    assert!(summary.ends_with(&format!(
        "; manifest {} is durable",
        out.join("manifest.jsonl").display()
    )));
    assert!(
        summary.contains("0 failed (0 permanent, 0 retryable)"),
        "{summary}"
    );
    // The stop notice, the reason, and what a rerun does: no line per device.
    assert!(stderr.len() <= 3, "{stderr:#?}");
    assert!(
        stderr[0].starts_with("est-client: stopping: no new requests"),
        "{stderr:?}"
    );
    assert!(
        stderr.contains(&"est-client: stopped by SIGINT".to_string()),
        "{stderr:?}"
    );
    let done = count(summary, "of 4000 devices");
    assert!((300..4000).contains(&done), "stopped midway: {summary}");
    assert_eq!(count(summary, "not attempted"), 4000 - done, "{summary}");
    let lines = manifest_lines(&out);
    assert_eq!(lines.len(), done, "one line per device, all ok");
    assert_eq!(ok_lines(&out).len(), done);
    for v in &lines {
        device_certified(&out, v["device_id"].as_str().unwrap());
    }
    // The requests in flight at the signal finished: every DAC the server issued is listed.
    assert_eq!(server.ledger.count("dev").unwrap() as usize, done);

    let rerun = run_gateway(&server, &devices, &out).await;
    common::assert_success(&rerun);
    let summary = String::from_utf8_lossy(&rerun.stdout);
    assert!(summary.starts_with("gateway complete: "), "{summary}");
    assert_eq!(count(&summary, "already done"), done);
    assert_eq!(manifest_lines(&out).len(), 4000);
    assert_eq!(ok_lines(&out).len(), 4000);
    assert_eq!(server.ledger.count("dev").unwrap(), 4000);
}

// Issue 18 item 6: a server that goes away mid-run stops the gateway after a few failures per
// connection (one line each, retryable), not one line per remaining device; a rerun against the
// server back on the same ledger finishes, with one manifest line per device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stops_when_the_server_goes_away() {
    let mut server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = device_list(dir.path(), "gone", 4000);
    let out = dir.path().join("out");
    let child = gateway_until(&server, &devices, &out, 300).await;
    server.stop().await;
    let (code, stdout, stderr) = finish(child).await;
    assert_eq!(code, Some(1), "{stdout:?} {stderr:?}");
    assert_eq!(stdout.len(), 1, "one summary: {stdout:?}");
    let summary = &stdout[0];
    assert!(summary.starts_with("gateway partial: "), "{summary}");
    let failed = count(summary, "failed");
    assert_eq!(count(summary, "retryable"), failed, "{summary}");
    // 16 connections: each gives up after two failures in a row, and the last to give up stops
    // the run, so no connection fails more than twice (a success on another connection, while
    // the stopping server finishes what it has in flight, does not reset this one's count).
    assert!(failed <= 2 * 16, "{summary}");
    let device_lines: Vec<_> = stderr.iter().filter(|l| l.starts_with("device ")).collect();
    assert_eq!(device_lines.len(), failed, "{stderr:#?}");
    assert!(
        device_lines.iter().all(|l| l.contains(": retryable: ")),
        "{device_lines:#?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("est-client: stopped sending: the server is not answering")),
        "{stderr:#?}"
    );
    assert!(
        stderr
            .last()
            .unwrap()
            .ends_with("rerun the same command to retry and continue"),
        "{stderr:#?}"
    );
    let lines = manifest_lines(&out);
    let done = count(summary, "of 4000 devices");
    assert_eq!(lines.len(), done + failed, "one line per device attempted");
    assert!(
        lines
            .iter()
            .filter(|v| v["status"] == "failed")
            .all(|v| v["failure"] == "retryable"),
        "{lines:?}"
    );
    assert_eq!(count(summary, "not attempted"), 4000 - done - failed);

    // The server back, on its ledger: the rerun retries the failed and does the rest.
    let TestServer { env, ledger, .. } = server;
    drop(ledger);
    let server = TestServer::start_env(env).await;
    let rerun = run_gateway(&server, &devices, &out).await;
    common::assert_success(&rerun);
    let lines = manifest_lines(&out);
    assert_eq!(lines.len(), 4000);
    assert!(lines.iter().all(|v| v["status"] == "ok"));
    // Requests that reached the server before it stopped were answered again with their DAC.
    assert_eq!(server.ledger.count("dev").unwrap(), 4000);
}

// Issue 18: `cacerts` prints and writes the CA certificates in chain order (PAI, then PAA),
// whatever the order of the server's DER-sorted SET OF; `csrattrs` names what it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacerts_in_chain_order_and_csrattrs_named() {
    let server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cas.pem");
    let est = |args: &[&str]| {
        let mut cmd = fake::est_client(&server.env, &server.url(""));
        cmd.args(args);
        cmd
    };
    let mut cmd = est(&["cacerts", "--out"]);
    cmd.arg(&file);
    common::assert_success(&fake::run(cmd).await);
    let paa = matter_est::issuance::read_cert(&server.env.path(dev::files::PAA_CERT)).unwrap();
    let chain = [server.env.pai_der(), paa];
    assert_eq!(fake::pem_certs(&file), chain);
    let printed = fake::run(est(&["cacerts"])).await;
    common::assert_success(&printed);
    assert_eq!(
        printed.stdout,
        est_client::wire::pem(&chain).unwrap().into_bytes()
    );

    let attrs = fake::run(est(&["--label", "dev", "csrattrs"])).await;
    common::assert_success(&attrs);
    assert_eq!(
        String::from_utf8_lossy(&attrs.stdout),
        "1.2.840.10045.4.3.2 ecdsa-with-SHA256\n\
         1.2.840.10045.2.1 id-ecPublicKey (attribute): 1.2.840.10045.3.1.7 prime256v1\n\
         1.3.6.1.4.1.37244.2.1 Matter VID attribute\n\
         1.3.6.1.4.1.37244.2.2 Matter PID attribute\n"
    );
}

// Issue 15 item 4: on a terminal the gateway shows its progress, rate, ETA and failures, then the
// summary; a device whose subject is already taken is a permanent failure, and the advice does
// not say "rerun" for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_a_terminal_shows_progress_and_failures() {
    let server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    // Two devices enrolled by another gateway directory: their subjects are taken.
    let taken = device_list(dir.path(), "taken", 2);
    common::assert_success(&run_gateway(&server, &taken, &dir.path().join("other")).await);
    let devices = dir.path().join("devices.csv");
    let list = std::fs::read_to_string(&taken).unwrap()
        + &(0..600)
            .map(|i| format!("tty-{i:05}\n"))
            .collect::<String>();
    std::fs::write(&devices, list).unwrap();
    let out = dir.path().join("out");
    let gateway = gateway_cmd(&server, &devices, &out);
    let command = std::iter::once(gateway.get_program())
        .chain(gateway.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    // script(1) gives the gateway a terminal and keeps what it shows.
    let typescript = dir.path().join("typescript");
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &command]).arg(&typescript);
    let run = fake::run(cmd).await;
    assert_eq!(run.status.code(), Some(1), "two devices failed");
    let shown = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    let frame = shown
        .split(['\r', '\n', '\u{1b}'])
        .find(|f| f.contains("/602 devices") && f.contains("2 failed"))
        .unwrap_or_else(|| panic!("no progress with failures in {shown:?}"));
    assert!(frame.contains("/s  ETA "), "{frame}");
    for id in ["taken-00000", "taken-00001"] {
        assert!(
            shown.contains(&format!(
                "device {id}: permanent: 403 Forbidden: a DAC with subject"
            )),
            "{shown}"
        );
    }
    assert!(
        shown.contains("600 of 602 devices (600 enrolled now at ")
            && shown.contains("2 failed (2 permanent, 0 retryable), 0 not attempted"),
        "{shown}"
    );
    assert!(
        shown.contains("est-client: 2 devices failed permanently"),
        "{shown}"
    );
    assert!(!shown.contains("rerun the same command"), "{shown}");
}

/// Issue 13: `est-client serverkeygen` against a real server whose label offers it: the key it
/// writes (0600) is the one the DAC certifies; a label without serverkeygen is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverkeygen_writes_the_key_the_server_made_and_its_dac() {
    let server = TestServer::start(|t| common::label_keys(t, "serverkeygen = true")).await;
    let dir = tempfile::tempdir().unwrap();
    let keygen = |out: &Path| {
        let mut cmd = as_gateway(&server, "serverkeygen");
        cmd.args(["--device-id", "kg-0001", "--out"]).arg(out);
        cmd
    };
    let out = dir.path().join("kg-0001");
    let run = tokio::task::spawn_blocking({
        let mut cmd = keygen(&out);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    common::assert_success(&run);
    let cert = fake::assert_certifies(
        &dir.path().join("kg-0001.dac.pem"),
        &dir.path().join("kg-0001.key.pem"),
    );
    assert!(
        cert.tbs_certificate()
            .subject()
            .to_string()
            .contains("kg-0001")
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("kg-0001.key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let serial = cert.tbs_certificate().serial_number().as_bytes().to_vec();
    assert!(
        server
            .ledger
            .by_serial(&serial)
            .unwrap()
            .unwrap()
            .server_keygen
    );
}

/// Issue 12 item 5 for est-client's own `enroll`: a run whose response was lost (here: the DAC
/// file is gone, the key is on disk) is recovered by running the same command again. The key is
/// kept, not replaced, and the server answers with the DAC on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_rerun_after_a_lost_response_gets_the_dac_on_record() {
    let server = TestServer::start(|t| t).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("lost-1");
    let enroll = || {
        let mut cmd = as_gateway(&server, "enroll");
        cmd.args(["--device-id", "lost-1", "--out"]).arg(&prefix);
        cmd
    };
    let run = |mut cmd: Command| async move {
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    common::assert_success(&run(enroll()).await);
    let key = std::fs::read(dir.path().join("lost-1.key.pem")).unwrap();
    let dac = std::fs::read(dir.path().join("lost-1.dac.pem")).unwrap();
    std::fs::remove_file(dir.path().join("lost-1.dac.pem")).unwrap();

    let again = run(enroll()).await;
    common::assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("using the key an earlier run wrote"),
        "{again:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("lost-1.key.pem")).unwrap(),
        key
    );
    assert_eq!(
        std::fs::read(dir.path().join("lost-1.dac.pem")).unwrap(),
        dac
    );
    assert_eq!(server.ledger.count("dev").unwrap(), 1, "one DAC on record");
    fake::assert_certifies(
        &dir.path().join("lost-1.dac.pem"),
        &dir.path().join("lost-1.key.pem"),
    );

    // A file there that is no key is refused and left alone.
    std::fs::write(dir.path().join("lost-1.key.pem"), "not a key").unwrap();
    let refused = run(enroll()).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not a private key"),
        "{refused:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("lost-1.key.pem")).unwrap(),
        b"not a key"
    );
}
