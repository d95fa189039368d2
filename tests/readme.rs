//! Issue 18: the README runs as written. Every `sh` block from "Walk-through" to
//! "Configuration" is taken from README.md itself (so the two cannot drift) and run, in order,
//! in one bash process in a scratch directory, as a user pasting them into one terminal would.
//!
//! One step is not run by this test: the blocks' first command, `cargo build --release
//! --workspace`, which the test checks is there and stands in for with the binaries this test
//! run already built (linked as `target/release/` in the scratch directory). The server listens
//! on the README's port, 8443, which must be free.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole walk-through takes a few seconds; past this something hangs.
const DEADLINE: Duration = Duration::from_secs(300);

const BUILD: &str = "cargo build --release --workspace";

/// The `sh` blocks between the two headings, in order.
fn blocks(readme: &str, from: &str, to: &str) -> Vec<String> {
    let start = readme.find(from).expect("the start heading");
    let end = readme[start..].find(to).expect("the end heading") + start;
    let mut out = Vec::new();
    let mut rest = &readme[start..end];
    while let Some(at) = rest.find("\n```sh\n") {
        let body = &rest[at + 7..];
        let close = body.find("\n```\n").expect("a closed block");
        out.push(body[..close].to_string());
        rest = &body[close + 5..];
    }
    out
}

/// Runs `script` with bash in a scratch directory that has the built binaries in
/// `target/release/`; returns what it printed (with the server log) and the directory. Panics
/// with all of it if the script fails or hangs.
fn run_blocks(script: &str, port: u16) -> (String, tempfile::TempDir) {
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|_| {
        panic!("port {port}, which the walk-through uses, is in use: stop what listens there")
    });
    let scratch = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_matter-est"))
        .parent()
        .unwrap();
    let release = scratch.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    for bin in ["matter-est", "est-client"] {
        let built = bin_dir.join(bin);
        assert!(
            built.exists(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            built.display()
        );
        std::os::unix::fs::symlink(&built, release.join(bin)).unwrap();
    }
    std::fs::write(scratch.path().join("walkthrough.sh"), script).unwrap();

    // Its own process group, so that a server it started is stopped whatever happens.
    let mut child = Command::new("bash")
        .arg("walkthrough.sh")
        .current_dir(scratch.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > DEADLINE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let log: String = ["walkthrough/serve.log", "certs-walkthrough/serve.log"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(scratch.path().join(f)).ok())
        .collect();
    let context = format!("stdout:\n{out}\nstderr:\n{err}\nserve.log:\n{log}");
    let status = status.unwrap_or_else(|| panic!("the walk-through hung\n{context}"));
    assert!(
        status.success(),
        "the walk-through failed ({status})\n{context}"
    );
    (format!("{out}\n{context}"), scratch)
}

#[test]
fn the_readme_walk_through_runs_as_written() {
    let readme = include_str!("../README.md");
    let blocks = blocks(readme, "\n## Walk-through", "\n## Configuration");
    assert!(blocks.len() >= 5, "found {} blocks", blocks.len());
    let first_line = blocks[0].lines().next().unwrap();
    assert!(
        first_line.starts_with(BUILD),
        "the walk-through starts with the build: {first_line}"
    );
    let script = format!(
        "set -euo pipefail\n{}\n",
        blocks.join("\n").replacen(first_line, "", 1)
    );
    let (context, scratch) = run_blocks(&script, 8443);
    let out = &context;
    // What the README says each step shows.
    assert!(out.contains("dac.pem: OK"), "{context}");
    assert!(out.contains("the same DAC"), "{context}");
    assert!(out.contains("(HTTP 403)"), "{context}");
    assert!(out.contains("dac3.pem: OK"), "{context}");
    let w = scratch.path().join("walkthrough");
    for file in [
        "dac2.pem",
        "line-7/batch.json",
        "line-8/batch.json",
        "ca-chain.pem",
    ] {
        assert!(w.join(file).exists(), "{file}\n{context}");
    }
    let manifest = std::fs::read_to_string(w.join("line1/manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 200, "{context}");
}

/// Issue 18: certs/README.md's path from a PAI certificate and key to a running server, run as
/// written (its first block stands in for the PAA operator, with openssl).
#[test]
fn the_certs_walk_through_runs_as_written() {
    let blocks = blocks(
        include_str!("../certs/README.md"),
        "\n## From",
        "\n## Rotating",
    );
    assert_eq!(blocks.len(), 4, "the four steps");
    let script = format!("set -euo pipefail\n{}\n", blocks.join("\n"));
    let (context, scratch) = run_blocks(&script, 9443);
    assert!(context.contains("dac.pem: OK"), "{context}");
    assert!(context.contains("server.pem: OK"), "{context}");
    let w = scratch.path().join("certs-walkthrough/acme");
    for key in [
        "tls/ca.key",
        "tls/server.key",
        "clients/ca.key",
        "clients/gw-line-2.key",
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(w.join(key)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}
