//! Issue 18: the systemd unit in deploy/ is one systemd accepts, sandboxed as docs/deploy.md
//! says (checked with systemd's own `systemd-analyze`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

use std::process::Command;

const UNIT: &str = include_str!("../deploy/matter-est.service");

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    for line in [
        "User=matter-est",
        "StateDirectory=matter-est",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(UNIT.lines().any(|l| l == line), "missing {line}");
    }
    // The unit as installed, but pointing at the binary this test run built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("matter-est.service");
    std::fs::write(
        &unit,
        UNIT.replace(
            "/usr/local/bin/matter-est",
            env!("CARGO_BIN_EXE_matter-est"),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for matter-est.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    // systemd rates 0-10, "OK" up to 3.9; keep it well inside.
    assert!(level <= 2.0, "exposure {level}:\n{report}");
}

/// Issue 18 item 4: the shell completions and manual pages the README and docs/deploy.md point
/// at are produced, and name every subcommand.
#[test]
fn completions_and_manual_pages_are_written() {
    let bin = env!("CARGO_BIN_EXE_matter-est");
    let out = Command::new(bin)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in [
        "complete -F _matter__est",
        "serve",
        "init-dev",
        "--danger-allow-development-pki",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let refused = Command::new(bin)
        .args(["completions", "cmd"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values"));

    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let out = Command::new(bin)
        .args(["man", "--out"])
        .arg(&man)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "matter-est.1",
        "matter-est-serve.1",
        "matter-est-certs-list.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is no man page"
        );
    }
    let top = std::fs::read_to_string(man.join("matter-est.1")).unwrap();
    assert!(top.contains("serve"), "the top page names its subcommands");
}
