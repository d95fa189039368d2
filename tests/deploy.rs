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
