//! `matter-est serve` as an operator runs it: a real process, JSON log lines, and SIGTERM
//! handled gracefully (stop accepting, close the ledger, exit 0).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{DevEnv, csr, subject};
use matter_est::profile::dev;

/// This file's tests again with the ledger on PostgreSQL (tests/common/pg.rs).
#[test]
fn on_postgres() {
    common::pg::rerun_on_postgres("on_postgres", &["the_same_tests_over_the_pkcs11_signer"]);
}

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
    // A line says where it listens (after the signer's and the CRL publisher's start-up lines).
    let first = next_message(&mut lines, "matter-est serving");
    let ledger = first["fields"]["ledger"].as_str().unwrap();
    if common::pg::suite().is_some() {
        assert!(
            ledger.starts_with("postgresql://matter_est@127.0.0.1:"),
            "{ledger}"
        );
    } else {
        assert!(ledger.ends_with("ledger.redb"), "{ledger}");
    }
    let addr = first["fields"]["addr"].as_str().unwrap().to_string();
    let port = addr.rsplit(':').next().unwrap();
    // Then one line per label: what it serves.
    let label: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let f = &label["fields"];
    assert_eq!(f["message"], "label served");
    assert_eq!(f["label"], "dev");
    assert_eq!(f["vid"], "FFF1");
    assert_eq!(f["pids"], "any");
    assert!(f["pai"].as_str().unwrap().contains("Matter Dev PAI"), "{f}");

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
    assert_eq!(v["fields"]["message"], "request", "{line}");
    let f = &v["fields"];
    assert_eq!(f["message"], "request");
    assert_eq!(f["op"], "simpleenroll");
    assert_eq!(f["label"], "dev");
    assert_eq!(f["status"], 200);
    assert_eq!(f["identity"], "client:cn:gw-line-1");
    assert_eq!(f["serial"].as_str().unwrap().len(), 32);
    // Durations are integer microseconds.
    assert!(f["duration_us"].is_u64(), "{f}");
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

/// Issue 12: every refusal's log line names who asked (the authenticated identity, and what was
/// presented), a TLS handshake refused for its client certificate names that certificate, and
/// a client sending an IP address as SNI (libest's does) puts nothing in the default log.
#[test]
fn refusals_say_who_asked_and_ip_sni_is_not_logged() {
    let env = DevEnv::new(|t| {
        t.replace("127.0.0.1:8443", "127.0.0.1:0")
            .replace("pids = \"any\"\n", "pids = [\"8001\"]\n")
            + "\n[labels.dev.rate_limit]\nper_identity_per_sec = 1\n"
    });
    let (token_id, secret) = {
        let (_issuer, ledger) = env.issuer();
        matter_est::policy::create_token(ledger.as_ref(), "dev", None).unwrap()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_message(&mut lines, "matter-est serving");
    let addr = first["fields"]["addr"].as_str().unwrap().to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}/.well-known/est/dev/simpleenroll");
    let csr_file = |name: &str, pid: &str| {
        let path = env.path(name);
        let (der, _) = csr(&subject(Some(name), Some("FFF1"), Some(pid)));
        std::fs::write(
            &path,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der),
        )
        .unwrap();
        format!("@{}", path.display())
    };
    let curl = |extra: &[&str], body: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(env.path(dev::files::TLS_CA_CERT))
            .args(extra)
            .args([
                "-H",
                "Content-Type: application/pkcs10",
                "--data-binary",
                body,
            ])
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let gw_cert = env.path(dev::files::GATEWAY_CERT).display().to_string();
    let gw_key = env.path(dev::files::GATEWAY_KEY).display().to_string();
    // 403: PID 8000 is not allowed (the label and the gateway rule both list 8001 only).
    let gw = ["--cert", gw_cert.as_str(), "--key", gw_key.as_str()];
    assert_eq!(curl(&gw, &csr_file("pid-8000", "8000")), "403");
    // 429: the gateway over its rate (one a second); new CSRs in a row until one is held back.
    let limited = (0..6)
        .map(|i| curl(&gw, &csr_file(&format!("gw-{i}"), "8001")))
        .collect::<Vec<_>>();
    assert!(limited.iter().any(|s| s == "429"), "{limited:?}");
    assert!(
        limited.iter().all(|s| s == "200" || s == "429"),
        "{limited:?}"
    );
    // 401: an unknown token.
    assert_eq!(
        curl(&["-u", "tok-unknown:nope"], &csr_file("bad-token", "8000")),
        "401"
    );
    // 200 with the token, then 401 for another CSR with the spent token.
    let user = format!("{token_id}:{secret}");
    assert_eq!(curl(&["-u", &user], &csr_file("tok-a", "8001")), "200");
    assert_eq!(curl(&["-u", &user], &csr_file("tok-b", "8001")), "401");
    // A client certificate from no trusted CA: the handshake fails.
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=intruder/O=Nowhere", "-keyout"])
        .arg(env.path("intruder.key"))
        .arg("-out")
        .arg(env.path("intruder.pem"))
        .output()
        .unwrap();
    common::assert_success(&ok);
    let intruder = [
        "--cert".to_string(),
        env.path("intruder.pem").display().to_string(),
        "--key".to_string(),
        env.path("intruder.key").display().to_string(),
    ];
    let intruder: Vec<&str> = intruder.iter().map(String::as_str).collect();
    assert_eq!(curl(&intruder, &csr_file("intruder-dev", "8001")), "000");
    // An IP address as SNI, as libest's client sends it.
    let sni = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "127.0.0.1", "-brief"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&sni.stderr).contains("Protocol version"),
        "{sni:?}"
    );

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    let requests: Vec<serde_json::Value> = rest
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request")
        .map(|v| v["fields"].clone())
        .collect();
    let by_status = |status: u64| -> Vec<&serde_json::Value> {
        requests.iter().filter(|f| f["status"] == status).collect()
    };
    let forbidden = by_status(403);
    assert_eq!(forbidden.len(), 1, "{requests:?}");
    assert_eq!(forbidden[0]["identity"], "client:cn:gw-line-1");
    assert!(
        forbidden[0]["presented"]
            .as_str()
            .unwrap()
            .contains("CN=gw-line-1")
    );
    let too_many = by_status(429);
    assert!(!too_many.is_empty(), "{requests:?}");
    for r in too_many {
        assert_eq!(r["identity"], "client:cn:gw-line-1", "{r}");
    }
    let unauthorised = by_status(401);
    assert_eq!(unauthorised.len(), 2, "{requests:?}");
    assert_eq!(unauthorised[0]["identity"], "-");
    assert_eq!(unauthorised[0]["presented"], "basic:tok-unknown");
    assert_eq!(unauthorised[1]["identity"], format!("token:{token_id}"));
    let handshake = rest
        .iter()
        .find(|l| l.contains("TLS handshake failed") && l.contains("CN=intruder"))
        .unwrap_or_else(|| panic!("no handshake line naming the certificate: {rest:?}"));
    assert!(handshake.contains("O=Nowhere"), "{handshake}");
    assert!(
        !rest.iter().any(|l| l.contains("SNI") || l.contains("WARN")),
        "{rest:?}"
    );
}

/// Issue 18: SIGHUP reloads the TLS certificate and the policy without dropping a connection;
/// a configuration that does not load is refused and the running one stays.
#[test]
fn sighup_reloads_tls_and_policy_without_dropping_connections() {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let config = env.path(dev::files::CONFIG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && tx.send(v["fields"].clone()).is_err()
            {
                break;
            }
        }
    });
    let wait_for = |message: &str| -> serde_json::Value {
        loop {
            let f = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no {message:?} log line"));
            if f["message"] == message {
                return f;
            }
        }
    };
    let addr: std::net::SocketAddr = wait_for("matter-est serving")["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let serial = || {
        let shown = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null \
                 | openssl x509 -noout -serial"
            ))
            .output()
            .unwrap();
        common::assert_success(&shown);
        String::from_utf8_lossy(&shown.stdout).trim().to_string()
    };
    let before = serial();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let identity = common::est::identity_from_files(
        &env.path(dev::files::GATEWAY_CERT),
        &env.path(dev::files::GATEWAY_KEY),
    );
    let tls = common::est::client_config(
        &env.path(dev::files::TLS_CA_CERT),
        Some(identity),
        common::est::ALL,
    );
    let mut gw = runtime
        .block_on(common::est::Client::connect(addr, tls))
        .unwrap();
    let mut enroll = |cn: &str, pid: &str| {
        let (der, _) = csr(&subject(Some(cn), Some("FFF1"), Some(pid)));
        runtime
            .block_on(gw.enroll("/.well-known/est/dev/simpleenroll", &der))
            .status
    };
    assert_eq!(enroll("before-reload", "8000"), 200);

    // The operator narrows the label to PID 8001 and renews the TLS certificate (openssl,
    // signed by the same TLS CA), then sends SIGHUP.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("pids = \"any\"", "pids = [\"8001\"]")).unwrap();
    let tls_dir = env.path("tls");
    let made = Command::new("sh")
        .current_dir(&tls_dir)
        .arg("-c")
        .arg(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -keyout new.key -subj /CN=localhost -out new.csr 2>/dev/null && \
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext && \
             openssl x509 -req -in new.csr -CA ca.pem -CAkey ca.key -days 1 -extfile ext \
               -out new.pem 2>/dev/null && \
             chmod 600 new.key && mv new.key server.key && mv new.pem server.pem",
        )
        .output()
        .unwrap();
    common::assert_success(&made);
    let hup = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    hup(child.id());
    wait_for("configuration reloaded");
    // The same keep-alive connection: the new policy applies to it.
    assert_eq!(enroll("after-reload", "8000"), 403);
    assert_eq!(enroll("after-reload", "8001"), 200);
    // A new connection gets the new certificate.
    assert_ne!(serial(), before);

    // A broken configuration: refused, the running one stays.
    std::fs::write(&config, "this is not toml = [").unwrap();
    hup(child.id());
    let refused = wait_for("reload refused; still serving the previous configuration");
    assert!(
        refused["error"].as_str().unwrap().contains("line 1"),
        "{refused}"
    );
    assert_eq!(enroll("still-serving", "8001"), 200);

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}

/// Every test above again, the PAI key in a SoftHSM2 token and signed through the PKCS#11 signer
/// (STYLE.md "a small signer seam": the same tests over both signers).
#[test]
fn the_same_tests_over_the_pkcs11_signer() {
    common::hsm::rerun_over_pkcs11("the_same_tests_over_the_pkcs11_signer", &[]);
}

/// The next JSON log line whose message is `message`, skipping the others.
fn next_message(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    message: &str,
) -> serde_json::Value {
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["fields"]["message"] == message {
            return v;
        }
    }
    panic!("no log line {message:?}");
}
