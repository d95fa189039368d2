//! The PKCS#11 signer on a real SoftHSM2 token (issue 13): DACs signed in the token, refusals at
//! start, and a token that goes away and comes back while the server runs. Each test runs in a
//! child process with its own SoftHSM2 directory (common::hsm explains why).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::est::{TestServer, pkcs7_certs};
use common::hsm::{self, Hsm};
use common::{DevEnv, assert_matter_dac, csr, openssl_verify, subject};
use matter_est::issuance::{IssueOptions, Issuer};
use matter_est::profile::dev;
use matter_est::store::redb::RedbLedger;

const TOKEN: &str = "pai-token";

fn hsm_env(hsm: &Hsm) -> DevEnv {
    DevEnv::new_in(|dir, text| hsm.adopt_dev_pki(dir, TOKEN, &text))
}

fn opts() -> IssueOptions {
    IssueOptions {
        requester: "test".into(),
        ..Default::default()
    }
}

#[test]
fn dacs_signed_in_softhsm_verify_under_the_pai_and_pass_every_rule() {
    let Some(hsm) = hsm::in_softhsm(
        "dacs_signed_in_softhsm_verify_under_the_pai_and_pass_every_rule",
        &[TOKEN],
    ) else {
        return;
    };
    let env = hsm_env(&hsm);
    assert!(!env.path(dev::files::PAI_KEY).exists(), "no PAI key file");
    let (issuer, ledger) = env.issuer();
    let issuer = Arc::new(issuer);
    let pai = env.pai_der();
    // Eight threads at once through a pool of four sessions.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let issuer = issuer.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        let name =
                            subject(Some(&format!("hsm-{t}-{i}")), Some("FFF1"), Some("8000"));
                        let req = matter_est::csr::parse(&csr(&name).0).unwrap();
                        issuer.issue("dev", &req, &opts()).unwrap().dac.der
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let dacs: Vec<Vec<u8>> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(dacs.len(), 200);
    for dac in &dacs {
        assert_matter_dac(dac, &pai);
    }
    openssl_verify(&env, &dacs);
    assert_eq!(ledger.count("dev").unwrap(), 200);
}

#[test]
fn start_is_refused_with_a_message_naming_module_token_and_key() {
    let Some(hsm) = hsm::in_softhsm(
        "start_is_refused_with_a_message_naming_module_token_and_key",
        &[TOKEN, "empty-token", "never-logged-in"],
    ) else {
        return;
    };
    let refusal = |signer_keys: String, pai_from_token: bool| -> String {
        let env = DevEnv::new_in(|dir, text| {
            let text = if pai_from_token {
                hsm.adopt_dev_pki(dir, TOKEN, &text)
            } else {
                text
            };
            // Replace whatever signer the label has with `signer_keys`.
            let start = text.find("[labels.dev.signer]\n").unwrap() + "[labels.dev.signer]\n".len();
            let end = start + text[start..].find("\n\n").unwrap();
            format!("{}{}{}", &text[..start], signer_keys, &text[end..])
        });
        let config = env.config();
        let ledger = Arc::new(RedbLedger::open(config.store.redb_path().unwrap()).unwrap());
        let err = Issuer::new(&config, ledger)
            .err()
            .expect("refused")
            .to_string();
        println!("refused: {err}");
        // The config key to fix, with its line (issue 18 item 3).
        assert!(err.contains("labels.dev.signer (line "), "{err}");
        err
    };
    let module = hsm.module.display().to_string();

    // A token without the key.
    let err = refusal(hsm.signer_keys("empty-token", ""), true);
    for says in [module.as_str(), "\"empty-token\"", "no EC public key"] {
        assert!(err.contains(says), "{err} does not say {says:?}");
    }

    // A key that does not match the PAI (the PAI's key is a file; the token holds another key).
    hsm.generate(TOKEN, "not-the-pai");
    // A second key under the same label would make the search ambiguous: refused.
    let again = matter_est::signer::pkcs11::generate_key(
        &hsm.module,
        &matter_est::signer::pkcs11::TokenSelector {
            label: Some(TOKEN.into()),
            serial: None,
        },
        &matter_est::signer::PassphraseSource::File(hsm.pin_file()),
        "not-the-pai",
        b"another-id",
    )
    .expect_err("same label refused");
    assert!(again.to_string().contains("already holds"), "{again}");
    let err = refusal(hsm.signer_keys(TOKEN, ""), false);
    for says in [module.as_str(), TOKEN, "does not match the PAI"] {
        assert!(err.contains(says), "{err} does not say {says:?}");
    }
    // Narrowed to that key by label: the message names the key too.
    let err = refusal(
        hsm.signer_keys(TOKEN, "key_label = \"not-the-pai\"\n"),
        false,
    );
    assert!(
        err.contains("label \"not-the-pai\"") && err.contains("does not match the PAI"),
        "{err}"
    );

    // A wrong PIN (on a token nobody in this process logged in to: PKCS#11 login is per token
    // and application, and a second C_Login answers CKR_USER_ALREADY_LOGGED_IN).
    let wrong = hsm.dir.join("wrong.pin");
    std::fs::write(&wrong, "0000\n").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let keys = format!(
        "module = \"{module}\"\ntoken_label = \"never-logged-in\"\npin_file = \"{}\"\n",
        wrong.display()
    );
    let err = refusal(keys, true);
    for says in [module.as_str(), "never-logged-in", "CKR_PIN_INCORRECT"] {
        assert!(err.contains(says), "{err} does not say {says:?}");
    }

    // A missing module.
    let keys = hsm
        .signer_keys(TOKEN, "")
        .replace(&module, "/nonexistent/libvendor-pkcs11.so");
    let err = refusal(keys, true);
    for says in ["/nonexistent/libvendor-pkcs11.so", TOKEN, "does not exist"] {
        assert!(err.contains(says), "{err} does not say {says:?}");
    }

    // A token that is not there.
    let err = refusal(hsm.signer_keys("no-such-token", ""), true);
    assert!(
        err.contains("no token with label \"no-such-token\"") && err.contains("empty-token"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollments_over_tls_sign_in_the_token() {
    let Some(hsm) = hsm::in_softhsm("enrollments_over_tls_sign_in_the_token", &[TOKEN]) else {
        return;
    };
    let mut server = TestServer::start_env(hsm_env(&hsm)).await;
    let pai = server.env.pai_der();
    // Four keep-alive gateway connections at once, ten enrollments each.
    let mut tasks = Vec::new();
    for c in 0..4 {
        let mut client = server.gateway().await;
        tasks.push(tokio::spawn(async move {
            let mut dacs = Vec::new();
            for i in 0..10 {
                let name = subject(Some(&format!("tls-{c}-{i}")), Some("FFF1"), Some("8000"));
                let reply = client
                    .enroll("/.well-known/est/dev/simpleenroll", &csr(&name).0)
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                dacs.push(reply.body);
            }
            dacs
        }));
    }
    let mut dacs = Vec::new();
    for t in tasks {
        for body in t.await.unwrap() {
            let certs = pkcs7_certs(&body);
            assert_eq!(certs.len(), 2, "DAC and PAI");
            let dac = certs.into_iter().find(|c| *c != pai).unwrap();
            assert_matter_dac(&dac, &pai);
            dacs.push(dac);
        }
    }
    openssl_verify(&server.env, &dacs);
    assert_eq!(server.ledger.count("dev").unwrap(), 40);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_outage_gives_503_with_retry_after_and_recovers_in_the_same_process() {
    let Some(hsm) = hsm::in_softhsm(
        "token_outage_gives_503_with_retry_after_and_recovers_in_the_same_process",
        &[TOKEN],
    ) else {
        return;
    };
    let logs = LogBuf::install();
    let mut server = TestServer::start_env(hsm_env(&hsm)).await;
    let mut client = server.gateway().await;
    let enroll = |cn: String| {
        let (der, _) = csr(&subject(Some(&cn), Some("FFF1"), Some("8000")));
        der
    };
    let path = "/.well-known/est/dev/simpleenroll";
    let reply = client.enroll(path, &enroll("before".into())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(server.ledger.count("dev").unwrap(), 1);

    // The token goes away.
    let token_dir = hsm.token_dir(TOKEN);
    let away = hsm.dir.join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    for i in 0..3 {
        let reply = client.enroll(path, &enroll(format!("during-{i}"))).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        let retry: u64 = reply
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry), "Retry-After {retry}");
        // The client sees no detail of the token.
        assert!(
            reply.text().contains("temporarily unavailable"),
            "{}",
            reply.text()
        );
        assert!(!reply.text().contains("softhsm"), "{}", reply.text());
    }
    assert_eq!(server.ledger.count("dev").unwrap(), 1, "nothing recorded");
    // Longer than the first backoffs: the signer keeps trying and failing meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply = client.enroll(path, &enroll("still-down".into())).await;
    assert_eq!(reply.status, 503);

    // Back: the same server signs again once its signer reconnected.
    std::fs::rename(&away, &token_dir).unwrap();
    let back = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let reply = client.enroll(path, &enroll(format!("after-{i}"))).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            back.elapsed() < Duration::from_secs(40),
            "the signer did not reconnect within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "reconnected {:.1} s after the token came back",
        back.elapsed().as_secs_f64()
    );
    for i in 0..5 {
        let reply = client.enroll(path, &enroll(format!("again-{i}"))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(server.ledger.count("dev").unwrap(), 7);
    server.stop().await;
    // The log says the signer went down, kept trying, and came back; the PIN is in no line.
    let logs = logs.text();
    for says in [
        "PAI signer is down",
        "CKR_OBJECT_HANDLE_INVALID",
        "PAI signer still down",
        "PAI signer reconnected",
    ] {
        assert!(
            logs.contains(says),
            "the log does not say {says:?}:\n{logs}"
        );
    }
    assert!(!logs.contains(hsm::USER_PIN));
    // Durations are integers with their unit in the name (README "Logs").
    let line = logs
        .lines()
        .find(|l| l.contains("PAI signer reconnected"))
        .unwrap();
    let down = line
        .split_once("down_ms=")
        .map(|(_, v)| v.split(|c: char| !c.is_ascii_digit()).next().unwrap())
        .unwrap_or_else(|| panic!("no down_ms in {line:?}"));
    assert!(
        !down.is_empty() && !line.contains(&format!("down_ms={down}.")),
        "down_ms is not an integer: {line:?}"
    );
}

/// Log lines of this (child) process, captured.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuf {
    fn install() -> Self {
        let buf = LogBuf::default();
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buf
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_refused_while_reconnecting_is_not_retried() {
    let Some(hsm) = hsm::in_softhsm("a_pin_refused_while_reconnecting_is_not_retried", &[TOKEN])
    else {
        return;
    };
    let mut server = TestServer::start_env(hsm_env(&hsm)).await;
    let mut client = server.gateway().await;
    let path = "/.well-known/est/dev/simpleenroll";
    let der = |cn: &str| csr(&subject(Some(cn), Some("FFF1"), Some("8000"))).0;
    assert_eq!(client.enroll(path, &der("before")).await.status, 200);

    // The token goes away and another one with the same label but another user PIN appears.
    let token_dir = hsm.token_dir(TOKEN);
    let away = hsm.dir.join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    assert_eq!(client.enroll(path, &der("down")).await.status, 503);
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN])
        .args(["--so-pin", hsm::SO_PIN, "--pin", "another-pin"])
        .output()
        .unwrap();
    common::assert_success(&out);
    let impostor = hsm.token_dir(TOKEN);

    // The reconnection meets CKR_PIN_INCORRECT and stops: Retry-After becomes the longest wait.
    let start = Instant::now();
    loop {
        let reply = client.enroll(path, &der("pin")).await;
        assert_eq!(reply.status, 503);
        if reply.header("retry-after") == Some("30") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no attempt met the PIN"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The right token back: no further attempt is made (a PIN retried in a loop locks a real
    // token), so it stays down until the operator restarts it.
    std::fs::remove_dir_all(&impostor).unwrap();
    std::fs::rename(&away, &token_dir).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(client.enroll(path, &der("still")).await.status, 503);
    assert_eq!(server.ledger.count("dev").unwrap(), 1);
    server.stop().await;
}

#[test]
fn init_dev_hsm_makes_a_pki_whose_pai_key_is_only_in_the_token_and_serve_runs_on_it() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    hsm::module(); // SoftHSM2 is installed (panics with how to install it otherwise)
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let bin = env!("CARGO_BIN_EXE_matter-est");
    let out = Command::new(bin)
        .args(["init-dev", "--hsm", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    common::assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let conf = dir.join(dev::files::SOFTHSM_CONF).canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("SOFTHSM2_CONF={}", conf.display())),
        "{stdout}"
    );

    // No file under DIR holds the PAI private key: no pki/pai.key, and no PEM key anywhere
    // whose public key is the PAI's.
    assert!(!dir.join(dev::files::PAI_KEY).exists());
    let pai_der = matter_est::issuance::read_cert(&dir.join(dev::files::PAI_CERT)).unwrap();
    let pai_point = matter_est::profile::cert::Parsed::from_der(&pai_der)
        .unwrap()
        .public_key;
    let mut keys = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            if text.contains("PRIVATE KEY-----") {
                let (_, der) = der::pem::decode_vec(text.as_bytes()).unwrap();
                let key = matter_est::signer::KeySigner::from_pkcs8(&der).unwrap();
                use matter_est::signer::Signer;
                assert_ne!(
                    key.public_key(),
                    &pai_point,
                    "{} holds the PAI key",
                    path.display()
                );
                keys += 1;
            }
        }
    }
    assert_eq!(
        keys, 9,
        "PAA, TLS CA, server, client CA, gateway, admin CA and three admin role keys"
    );
    for secret in [
        dev::files::USER_PIN,
        dev::files::SO_PIN,
        dev::files::SOFTHSM_CONF,
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(secret)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }

    // `serve` runs on that config unchanged but for a free port, with SOFTHSM2_CONF as printed.
    let config = dir.join(dev::files::CONFIG);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.1:8443", "127.0.0.1:0")).unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--log-json", "--config"])
        .arg(&config)
        .env("SOFTHSM2_CONF", &conf)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut signer_ready = false;
    let serving = loop {
        let Some(line) = lines.next() else {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("serve exited: {err}");
        };
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["fields"]["message"] == "PKCS#11 signer ready" {
            signer_ready = true;
        }
        if v["fields"]["message"] == "matter-est serving" {
            break v;
        }
    };
    assert!(signer_ready);
    let port = serving["fields"]["addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let csr_path = tmp.path().join("d.csr");
    let (der, _) = csr(&subject(Some("hsm-dev-0001"), Some("FFF1"), Some("8000")));
    std::fs::write(
        &csr_path,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der),
    )
    .unwrap();
    let body = tmp.path().join("reply.b64");
    let out = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(dir.join(dev::files::TLS_CA_CERT))
        .arg("--cert")
        .arg(dir.join(dev::files::GATEWAY_CERT))
        .arg("--key")
        .arg(dir.join(dev::files::GATEWAY_KEY))
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", csr_path.display()))
        .arg(format!(
            "https://localhost:{port}/.well-known/est/dev/simpleenroll"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let certs = pkcs7_certs(&std::fs::read(&body).unwrap());
    let dac = certs.into_iter().find(|c| *c != pai_der).unwrap();
    assert_matter_dac(&dac, &pai_der);
    // openssl: DAC -> PAI -> PAA from DIR.
    let dac_pem = tmp.path().join("dac.pem");
    common::write_pem(&dac_pem, &dac);
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join(dev::files::PAA_CERT))
        .arg("-untrusted")
        .arg(dir.join(dev::files::PAI_CERT))
        .arg(&dac_pem)
        .output()
        .unwrap();
    common::assert_success(&out);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pai_ceremony_keygen_csr_paa_import_then_serve_and_enroll() {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use std::process::Command;

    let Some(hsm) = hsm::in_softhsm(
        "pai_ceremony_keygen_csr_paa_import_then_serve_and_enroll",
        &[TOKEN],
    ) else {
        return;
    };
    let env = DevEnv::new(|t| t);
    let work = env.path("ceremony");
    std::fs::create_dir(&work).unwrap();
    let bin = env!("CARGO_BIN_EXE_matter-est");
    let token_args = |key: &str| -> Vec<String> {
        vec![
            "--module".into(),
            hsm.module.display().to_string(),
            "--token-label".into(),
            TOKEN.into(),
            "--pin-file".into(),
            hsm.pin_file().display().to_string(),
            "--key-label".into(),
            key.into(),
        ]
    };
    let run = |args: &[&str], extra: Vec<String>| {
        let out = Command::new(bin).args(args).args(extra).output().unwrap();
        common::assert_success(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let path = |rel: &str| work.join(rel).display().to_string();

    // keygen -> csr -> (the development PAA signs) -> import.
    run(
        &["pai", "keygen", "--public-out", &path("pai-public.pem")],
        token_args("line2-pai"),
    );
    run(
        &["pai", "csr", "--vid", "FFF1", "--pid", "8000"],
        [
            vec![
                "--cn".into(),
                "Line 2 PAI".into(),
                "--out".into(),
                path("pai.csr"),
            ],
            token_args("line2-pai"),
        ]
        .concat(),
    );
    run(
        &[
            "pai",
            "dev-paa-sign",
            "--dir",
            &env.dir.path().display().to_string(),
        ],
        vec![
            "--csr".into(),
            path("pai.csr"),
            "--out".into(),
            path("pai.pem"),
        ],
    );
    let paa = env.path(dev::files::PAA_CERT).display().to_string();
    let section = run(
        &[
            "pai",
            "import",
            &path("pai.pem"),
            "--chain",
            &paa,
            "--label",
            "line2",
        ],
        token_args("line2-pai"),
    );
    assert!(section.contains("[labels.line2.signer]"), "{section}");
    assert!(section.contains("pids = [\"8000\"]"), "{section}");

    // Refused: a PAI whose key is not in the token, and a chain that is not its PAA.
    let out = Command::new(bin)
        .args(["pai", "import"])
        .arg(env.path(dev::files::PAI_CERT))
        .args(["--chain", &paa, "--label", "x"])
        .args(token_args("line2-pai"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the PAI"), "{err}");
    let out = Command::new(bin)
        .args(["pai", "import", &path("pai.pem"), "--chain"])
        .arg(env.path(dev::files::TLS_CA_CERT))
        .args(["--label", "x"])
        .args(token_args("line2-pai"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not chain to the PAA"), "{err}");

    // Serve the imported label next to the development one and enroll on it.
    let config = env.path(dev::files::CONFIG);
    let text = std::fs::read_to_string(&config).unwrap();
    let section = section.replace(
        "[labels.line2]\n",
        "[labels.line2]\nclient_cas = [\"clients/ca.pem\"]\n",
    );
    std::fs::write(
        &config,
        format!("{text}\n{section}\n[[labels.line2.clients]]\nmatch = \"cn:gw-line-1\"\npids = \"any\"\n"),
    )
    .unwrap();
    let mut server = TestServer::start_env(env).await;
    let mut client = server.gateway().await;
    let (der, _) = csr(&subject(Some("line2-0001"), Some("FFF1"), Some("8000")));
    let reply = client
        .enroll("/.well-known/est/line2/simpleenroll", &der)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let pai = matter_est::issuance::read_cert(&work.join("pai.pem")).unwrap();
    let dac = pkcs7_certs(&reply.body)
        .into_iter()
        .find(|c| *c != pai)
        .unwrap();
    let dac_pem = work.join("dac.pem");
    common::write_pem(&dac_pem, &dac);
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", &paa, "-untrusted", &path("pai.pem")])
        .arg(&dac_pem)
        .output()
        .unwrap();
    common::assert_success(&out);
    server.stop().await;

    // The key never left the token: sensitive and not extractable.
    let ctx = cryptoki::context::Pkcs11::new(&hsm.module).unwrap();
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    let _ = session.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::from(hsm::USER_PIN.to_string())),
    );
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"line2-pai".to_vec()),
        ])
        .unwrap();
    assert_eq!(key.len(), 1);
    let attrs = session
        .get_attributes(
            key[0],
            &[
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::Sign,
            ],
        )
        .unwrap();
    assert_eq!(
        attrs,
        [
            Attribute::Extractable(false),
            Attribute::Sensitive(true),
            Attribute::Sign(true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pai_ceremony_with_an_encrypted_key_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    let env = DevEnv::new(|t| t);
    let work = env.path("ceremony");
    std::fs::create_dir(&work).unwrap();
    let path = |rel: &str| work.join(rel).display().to_string();
    let pass = work.join("pass");
    std::fs::write(&pass, "ceremony passphrase 2026\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bin = env!("CARGO_BIN_EXE_matter-est");
    let key_args = [
        "--key-file".to_string(),
        path("pai.key"),
        "--passphrase-file".into(),
        pass.display().to_string(),
    ];
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .args(&key_args)
            .output()
            .unwrap();
        common::assert_success(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["pai", "keygen", "--public-out", &path("pai-public.pem")]);
    let key_pem = std::fs::read_to_string(work.join("pai.key")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let mode = std::fs::metadata(work.join("pai.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // keygen never overwrites a key file.
    let out = Command::new(bin)
        .args(["pai", "keygen", "--public-out", &path("p2.pem")])
        .args(&key_args)
        .output()
        .unwrap();
    assert!(!out.status.success());

    run(&[
        "pai",
        "csr",
        "--vid",
        "FFF1",
        "--cn",
        "File PAI",
        "--out",
        &path("pai.csr"),
    ]);
    let out = Command::new(bin)
        .args(["pai", "dev-paa-sign", "--dir"])
        .arg(env.dir.path())
        .args(["--csr", &path("pai.csr"), "--out", &path("pai.pem")])
        .output()
        .unwrap();
    common::assert_success(&out);
    let paa = env.path(dev::files::PAA_CERT).display().to_string();
    let section = run(&[
        "pai",
        "import",
        &path("pai.pem"),
        "--chain",
        &paa,
        "--label",
        "line3",
    ]);
    assert!(
        section.contains("file = ") && section.contains("passphrase_file = "),
        "{section}"
    );

    let config = env.path(dev::files::CONFIG);
    let text = std::fs::read_to_string(&config).unwrap();
    let section = section.replace(
        "[labels.line3]\n",
        "[labels.line3]\nclient_cas = [\"clients/ca.pem\"]\n",
    );
    std::fs::write(
        &config,
        format!("{text}\n{section}\n[[labels.line3.clients]]\nmatch = \"cn:gw-line-1\"\npids = \"any\"\n"),
    )
    .unwrap();
    let mut server = TestServer::start_env(env).await;
    let mut client = server.gateway().await;
    let (der, _) = csr(&subject(Some("line3-0001"), Some("FFF1"), Some("8001")));
    let reply = client
        .enroll("/.well-known/est/line3/simpleenroll", &der)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    server.stop().await;
}
