//! Issue 18: what an operator sees when a command refuses to run: the file, the key and the
//! problem, and nothing created or changed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::process::{Command, Output};

use common::{DevEnv, csr, subject};
use matter_est::profile::dev;

fn matter_est(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_pai_names_its_key_and_creates_no_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("example.toml");
    std::fs::write(
        &config,
        include_str!("../config/example.toml")
            .replace("/var/lib/matter-est/ledger.redb", "state/ledger.redb"),
    )
    .unwrap();
    let out = matter_est(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains("pki/pai.pem: labels.fff1-lights.pai: No such file"),
        "{msg}"
    );
    assert!(!dir.path().join("state").exists(), "nothing created");
}

#[test]
fn a_config_type_error_names_key_and_line() {
    let env = DevEnv::new(|t| t.replace("tls_key = ", "max_connections = \"4096\"\ntls_key = "));
    let config = env.path(dev::files::CONFIG);
    let out = matter_est(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(msg.contains("server.max_connections (line"), "{msg}");
    assert!(msg.contains("expected usize"), "{msg}");
}

#[test]
fn a_port_in_use_names_server_listen_and_listen_overrides_it() {
    let env = DevEnv::new(|t| t);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = env.path(dev::files::CONFIG);
    let out = matter_est(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(msg.contains("server.listen"), "{msg}");
    assert!(msg.contains(&addr), "{msg}");
    assert!(msg.contains("--listen"), "{msg}");
}

#[test]
fn issue_and_batch_apply_the_development_pki_rule() {
    let env = DevEnv::new(|t| t.replace("danger_development_pki = true", ""));
    let config = env.path(dev::files::CONFIG);
    let config = config.to_str().unwrap();
    let (der, _) = csr(&subject(Some("dev-rule"), Some("FFF1"), Some("8000")));
    let csr_path = env.path("d.csr");
    std::fs::write(&csr_path, der).unwrap();
    let dac = env.path("d.der");
    let issue = |extra: &[&str]| {
        let mut args = vec![
            "issue",
            "--config",
            config,
            "--csr",
            csr_path.to_str().unwrap(),
            "--out",
            dac.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        matter_est(&args)
    };
    let out = issue(&[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("test VID FFF1"), "{}", stderr(&out));
    assert!(!dac.exists());
    let out = matter_est(&[
        "batch",
        "--config",
        config,
        "--label",
        "dev",
        "--pid",
        "8000",
        "--count",
        "2",
        "--out",
        env.path("batch").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("test VID FFF1"), "{}", stderr(&out));
    assert!(!env.path("batch").exists(), "nothing created");
    let first = issue(&["--danger-allow-development-pki"]);
    common::assert_success(&first);
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("issued DAC serial"));
    assert!(dac.exists());
    // The same CSR again: the DAC on record, and it says so.
    let again = issue(&["--danger-allow-development-pki"]);
    common::assert_success(&again);
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("the DAC on record"), "{said}");
    assert!(!said.starts_with("issued"), "{said}");
    // batch without --count or --devices names both.
    let out = matter_est(&[
        "batch", "--config", config, "--label", "dev", "--pid", "8000", "--out", "x",
    ]);
    assert!(
        stderr(&out).contains("--count <COUNT>|--devices <DEVICES>"),
        "{}",
        stderr(&out)
    );
}

/// Issue 18 item 3: a passphrase that cannot be read is named by its own key, not the key
/// file's; an error found after parsing names its line.
#[test]
fn a_missing_passphrase_names_its_key() {
    let env = DevEnv::new(|t| {
        t.replace(
            "file = \"pki/pai.key\"",
            "file = \"pki/pai-encrypted.key\"\npassphrase_env = \"MATTER_EST_TEST_NO_SUCH_VAR\"",
        )
    });
    let encrypted = env.path("pki/pai-encrypted.key");
    let made = Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:twelve-chars-at-least",
            "-in",
        ])
        .arg(env.path(dev::files::PAI_KEY))
        .arg("-out")
        .arg(&encrypted)
        .output()
        .unwrap();
    common::assert_success(&made);
    std::fs::set_permissions(
        &encrypted,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = env.path(dev::files::CONFIG);
    let out = matter_est(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(msg.contains("labels.dev.signer.passphrase_env"), "{msg}");
    assert!(msg.contains("MATTER_EST_TEST_NO_SUCH_VAR"), "{msg}");

    // A rule broken after parsing (quota 0): the key and its line.
    let env = DevEnv::new(|t| t.replace("[labels.dev]\n", "[labels.dev]\nquota = 0\n"));
    let config = env.path(dev::files::CONFIG);
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l == "quota = 0")
        .unwrap()
        + 1;
    let out = matter_est(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("labels.dev.quota (line {line})")),
        "{msg}"
    );
}
