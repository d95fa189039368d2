//! Issue 14 item 1-2: the admin API on its two doors and the operator commands through it while
//! `serve` runs. Real server process, real curl over the Unix socket and over mutual TLS, the
//! CLI through the socket and through `--server`; the OpenAPI file against the router.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::{DevEnv, assert_success, curl_json as curl, stdout};
use matter_est::profile::dev;
use matter_est::store::Ledger as _;
use serve::matter_est;

#[test]
fn operator_commands_and_the_admin_api_while_serve_runs() {
    // init-dev's config: the socket, the HTTPS listener (on a free port here), one certificate
    // per role. The operator is narrowed to label dev, and a second label "other" shares the PAI.
    let env = DevEnv::new(|t| {
        let t = t.replace("127.0.0.1:8443", "127.0.0.1:0").replace(
            "match = \"cn:dev-operator\"\nrole = \"operator\"\n",
            "match = \"cn:dev-operator\"\nrole = \"operator\"\nlabels = [\"dev\"]\n",
        );
        let at = t.find("[labels.dev]").unwrap();
        let other = t[at..]
            .replace("labels.dev", "labels.other")
            .replace("crl/dev.crl", "crl/other.crl");
        format!("{t}\n{other}")
    });
    let config = env.path(dev::files::CONFIG);
    let cfg = config.to_str().unwrap();
    let clients = env.path("clients");
    let dir = clients.to_str().unwrap();
    // A certificate of the admin CA that no [[admin.identities]] entry names.
    assert_success(&matter_est(&[
        "clients",
        "issue",
        "--ca-cert",
        &format!("{dir}/admin-ca.pem"),
        "--ca-key",
        &format!("{dir}/admin-ca.key"),
        "--cn",
        "mallory",
        "--out",
        dir,
        "--file-name",
        "mallory",
    ]));
    let csr = env.path("d.csr");
    let (der, _) = common::csr(&common::subject(
        Some("admin-1"),
        Some("FFF1"),
        Some("8000"),
    ));
    std::fs::write(&csr, der).unwrap();
    let other_csr = env.path("o.csr");
    let (der, _) = common::csr(&common::subject(
        Some("other-1"),
        Some("FFF1"),
        Some("8000"),
    ));
    std::fs::write(&other_csr, der).unwrap();
    let token_csr = env.path("t.csr");
    let (der, _) = common::csr(&common::subject(
        Some("tok-dev-1"),
        Some("FFF1"),
        Some("8000"),
    ));
    std::fs::write(&token_csr, der).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config", cfg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (est_port, admin_port) = loop {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["fields"]["message"] == "matter-est serving" {
            let port = |f: &str| {
                let a = v["fields"][f].as_str().unwrap();
                a.rsplit(':').next().unwrap().to_string()
            };
            break (port("addr"), port("admin"));
        }
    };
    let socket = env.path("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is for its owner only");

    // The ledger is held by serve: each command goes through the socket.
    let created: serde_json::Value = serde_json::from_str(
        stdout(&matter_est(&[
            "token", "create", "--config", cfg, "--label", "dev", "--json",
        ]))
        .trim(),
    )
    .unwrap();
    let token_id = created["id"].as_str().unwrap().to_string();
    assert!(token_id.starts_with("tok-"));
    // A device enrolls with it, and `token list` (through the socket) shows it spent.
    let (code, _) = {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(env.path(dev::files::TLS_CA_CERT))
            .args([
                "-u",
                &format!("{token_id}:{}", created["secret"].as_str().unwrap()),
            ])
            .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
            .arg(format!("@{}", token_csr.display()))
            .arg(format!(
                "https://localhost:{est_port}/.well-known/est/dev/simpleenroll"
            ))
            .output()
            .unwrap();
        (stdout(&out), ())
    };
    assert_eq!(code, "200");
    let listed = stdout(&matter_est(&["token", "list", "--config", cfg, "--json"]));
    let token: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(token["state"], "spent");
    assert!(token["spentBy"].as_str().unwrap().len() >= 16);
    let dac = env.path("d.der");
    let issued = stdout(&matter_est(&[
        "issue",
        "--config",
        cfg,
        "--csr",
        csr.to_str().unwrap(),
        "--out",
        dac.to_str().unwrap(),
    ]));
    assert!(issued.starts_with("issued DAC serial"), "{issued}");
    let parsed = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-subject", "-in"])
        .arg(&dac)
        .output()
        .unwrap();
    assert!(stdout(&parsed).contains("admin-1"));
    let other_dac = env.path("o.der");
    stdout(&matter_est(&[
        "issue",
        "--config",
        cfg,
        "--label",
        "other",
        "--csr",
        other_csr.to_str().unwrap(),
        "--out",
        other_dac.to_str().unwrap(),
    ]));
    let other_serial = {
        let out = Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-serial", "-in"])
            .arg(&other_dac)
            .output()
            .unwrap();
        stdout(&out)
            .trim()
            .trim_start_matches("serial=")
            .to_string()
    };
    let via_socket = stdout(&matter_est(&["certs", "stats", "--config", cfg, "--json"]));
    assert!(via_socket.contains("\"total\":3"), "{via_socket}");

    // curl on the socket: role admin, named by the peer's uid.
    let sock = socket.to_str().unwrap();
    let (code, me) = curl(&["--unix-socket", sock, "http://localhost/v1/whoami"]);
    assert_eq!(code, 200);
    assert_eq!(me["role"], "admin");
    assert!(me["identity"].as_str().unwrap().starts_with("socket:uid="));

    // Mutual TLS: each identity gets its role; the unknown and the certificate-less are refused.
    let url = format!("https://localhost:{admin_port}");
    let tls_ca = env.path(dev::files::TLS_CA_CERT);
    let as_ = |who: &str, method: &str, path: &str, body: Option<&str>| {
        let cert = format!("{dir}/{who}.pem");
        let key = format!("{dir}/{who}.key");
        let mut args = vec![
            "--cacert",
            tls_ca.to_str().unwrap(),
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
        ];
        if who != "nobody" {
            args.extend(["--cert", &cert, "--key", &key]);
        }
        if let Some(b) = body {
            args.extend(["--data", b]);
        }
        let target = format!("{url}{path}");
        args.push(&target);
        curl(&args)
    };
    let (code, me) = as_("admin", "GET", "/v1/whoami", None);
    assert_eq!((code, me["role"].as_str()), (200, Some("admin")));
    assert_eq!(me["identity"], "admin:cn:dev-admin");
    let (code, page) = as_("auditor", "GET", "/v1/certs", None);
    assert_eq!(code, 200);
    assert_eq!(page["records"].as_array().unwrap().len(), 3);
    // An auditor cannot revoke, nor mint tokens.
    let revoke = format!("/v1/certs/{other_serial}/revoke");
    let reason = Some(r#"{"reason":"superseded"}"#);
    let (code, refused) = as_("auditor", "POST", &revoke, reason);
    assert_eq!(code, 403);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("needs role operator")
    );
    let (code, _) = as_("auditor", "POST", "/v1/tokens", Some(r#"{"label":"dev"}"#));
    assert_eq!(code, 403);
    // The operator of label dev neither sees nor touches label other.
    let (code, page) = as_("operator", "GET", "/v1/certs", None);
    assert_eq!(code, 200);
    assert!(
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["label"] == "dev")
    );
    let (code, _) = as_("operator", "GET", "/v1/certs?label=other", None);
    assert_eq!(code, 403);
    let (code, _) = as_(
        "operator",
        "GET",
        &format!("/v1/certs/{other_serial}"),
        None,
    );
    assert_eq!(
        code, 404,
        "another tenant's serial is not confirmed to exist"
    );
    let (code, _) = as_("operator", "POST", &revoke, reason);
    assert_eq!(code, 404);
    let (code, refused) = as_(
        "operator",
        "POST",
        "/v1/tokens",
        Some(r#"{"label":"other"}"#),
    );
    assert_eq!(code, 403);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("may not see label")
    );
    let (code, made) = as_("operator", "POST", "/v1/tokens", Some(r#"{"label":"dev"}"#));
    assert_eq!(code, 200, "{made}");
    // Unknown certificates and none at all are refused; a wrong method is 405.
    let (code, _) = as_("mallory", "GET", "/v1/whoami", None);
    assert_eq!(code, 403, "a certificate no identity names");
    let (code, _) = as_("nobody", "GET", "/v1/whoami", None);
    assert_eq!(code, 401);
    let (code, _) = as_("admin", "DELETE", "/v1/tokens", None);
    assert_eq!(code, 405);
    // Metrics need a role on this door; the health checks answer a load balancer without one.
    let (code, _) = as_("auditor", "GET", "/metrics", None);
    assert_eq!(code, 200);
    let (code, _) = as_("nobody", "GET", "/metrics", None);
    assert_eq!(code, 401);
    let (code, health) = as_("nobody", "GET", "/healthz", None);
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    let (code, ready) = as_("nobody", "GET", "/readyz", None);
    assert_eq!(code, 200, "{ready}");

    // The CLI against the remote listener: the same answer as through the socket.
    let remote = |args: &[&str]| {
        let mut all = args.to_vec();
        let (cert, key) = (format!("{dir}/admin.pem"), format!("{dir}/admin.key"));
        all.extend([
            "--server",
            &url,
            "--admin-cert",
            &cert,
            "--admin-key",
            &key,
            "--admin-ca",
            tls_ca.to_str().unwrap(),
        ]);
        stdout(&matter_est(&all))
    };
    assert_eq!(remote(&["certs", "stats", "--json"]), via_socket);

    // An online backup through the API while serving.
    let backup = env.path("backup.redb");
    let (code, b) = curl(&[
        "--unix-socket",
        sock,
        "-H",
        "Content-Type: application/json",
        "--data",
        &format!(r#"{{"out":"{}"}}"#, backup.display()),
        "http://localhost/v1/ledger/backup",
    ]);
    assert_eq!((code, b["records"].as_u64()), (200, Some(3)), "{b}");

    // The CLI's backup goes through the socket too (a relative --out is the caller's).
    let out = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .current_dir(env.path("."))
        .args(["ledger", "backup", "--config", cfg, "--out", "backup2.redb"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("(3 DACs)"));
    assert!(env.path("backup2.redb").exists());

    // Refusals and changes are in the audit chain with who asked.
    let refusals = stdout(&matter_est(&[
        "audit",
        "list",
        "--config",
        cfg,
        "--json",
        "--event",
        "admin_refused",
    ]));
    assert!(refusals.lines().count() >= 4, "{refusals}");
    assert!(refusals.contains("admin:cn:dev-auditor"), "{refusals}");
    let actions = stdout(&matter_est(&[
        "audit",
        "list",
        "--config",
        cfg,
        "--json",
        "--event",
        "admin_action",
    ]));
    assert!(actions.contains("POST /v1/tokens") && actions.contains("socket:uid="));

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket goes with the server");
    // The server stopped: the same command on the ledger directly, the same output.
    assert_eq!(
        stdout(&matter_est(&["certs", "stats", "--config", cfg, "--json"])),
        via_socket
    );
    // And the backup opens as a ledger with the DAC.
    let copy = matter_est::store::redb::RedbLedger::open(&backup).unwrap();
    assert_eq!(copy.list(0, 10).unwrap().len(), 3);
}

/// docs/admin-api.json documents exactly the routes of the router, with their least role.
#[test]
fn the_openapi_file_matches_the_router() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.json"))
            .unwrap(),
    )
    .unwrap();
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            documented.push((
                method.to_uppercase(),
                path.clone(),
                op["x-min-role"].as_str().unwrap().to_string(),
            ));
        }
    }
    let mut routed: Vec<_> = matter_est::admin::ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.to_string(),
                r.role.name().to_string(),
            )
        })
        .collect();
    documented.sort();
    routed.sort();
    assert_eq!(documented, routed);
}

/// Issue 14 item 2: `batch` while `serve` holds the ledger streams one CSR per device through
/// the socket; killed midway and rerun, it finishes with every device once and no DAC on record
/// without its key (each key and CSR are durable before the CSR is sent; a rerun resends it and
/// gets the DAC on record back).
#[test]
fn batch_streams_through_the_running_server_and_resumes_after_a_kill() {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let config = env.path(dev::files::CONFIG);
    let cfg = config.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config", cfg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("matter-est serving") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let batch = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "batch", "--config", cfg, "--label", "dev", "--pid", "8000", "--out",
        ];
        let out = env.path(out);
        args.push(out.to_str().unwrap());
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_matter-est"))
            .args(&args)
            .env("BATCH_PASS", "correct horse battery staple")
            .output()
            .unwrap()
    };
    let manifest = |out: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(env.path(out).join("manifest.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let done = stdout(&batch("line-1", &["--count", "40"]));
    assert!(done.starts_with("batch complete:"), "{done}");
    assert_eq!(manifest("line-1").len(), 40);
    let first = &manifest("line-1")[0];
    let dac = env
        .path("line-1/devices")
        .join(format!("{}.dac.pem", first["device_id"].as_str().unwrap()));
    let verified = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(env.path("line-1/paa.pem"))
        .arg("-untrusted")
        .arg(env.path("line-1/pai.pem"))
        .arg(&dac)
        .output()
        .unwrap();
    assert!(stdout(&verified).contains(": OK"));
    let ids = env.path("ids.csv");
    std::fs::write(&ids, "device_id\nhw-1\nhw-2\nhw-3\n").unwrap();
    let listed = stdout(&batch(
        "line-2",
        &[
            "--devices",
            ids.to_str().unwrap(),
            "--encrypt-passphrase-env",
            "BATCH_PASS",
        ],
    ));
    assert!(listed.starts_with("batch complete:"), "{listed}");
    assert!(env.path("line-2/devices/hw-2.key-encrypted.der").exists());

    // Killed midway, then rerun: every device once, and the ledger holds exactly the batch.
    let mut killed = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args([
            "batch", "--config", cfg, "--label", "dev", "--pid", "8000", "--count", "400", "--out",
        ])
        .arg(env.path("line-3"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let _ = killed.kill();
    let _ = killed.wait();
    let rerun = stdout(&batch("line-3", &["--count", "400"]));
    assert!(rerun.starts_with("batch complete:"), "{rerun}");
    let lines = manifest("line-3");
    assert_eq!(lines.len(), 400);
    let serials: std::collections::BTreeSet<_> = lines
        .iter()
        .map(|l| l["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), 400, "no device twice");
    let leftovers: Vec<_> = std::fs::read_dir(env.path("line-3/devices"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".csr.der"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let stats: serde_json::Value = serde_json::from_str(
        stdout(&matter_est(&["certs", "stats", "--config", cfg, "--json"])).trim(),
    )
    .unwrap();
    assert_eq!(
        stats["total"],
        40 + 3 + 400,
        "no DAC on record outside a manifest"
    );

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}
