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

/// The README's server port, 8443: one test at a time.
static README_PORT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `sh` blocks between the two headings, in order.
fn blocks(readme: &str, from: &str, to: &str) -> Vec<String> {
    let start = readme.find(from).expect("the start heading");
    let end = readme[start..].find(to).expect("the end heading") + start;
    let mut out = Vec::new();
    let mut rest = &readme[start..end];
    // A top-level block in another language would be skipped silently: every one runs, so
    // every one is `sh` (indented examples inside lists show commands with placeholders).
    for line in rest.lines() {
        if let Some(lang) = line.strip_prefix("```") {
            assert!(
                lang.is_empty() || lang == "sh",
                "a ```{lang} block between {from:?} and {to:?}: make it ```sh and runnable"
            );
        }
    }
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
    let _port = README_PORT.lock().unwrap_or_else(|e| e.into_inner());
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

/// Issue 18: the README's two set-up commands. The second, `scripts/test`, is what CI runs, so
/// this test runs under it. The first, `cargo run --release -- serve`, is run as the binary this
/// test run built, from a fresh directory (a release build would add minutes and test the same
/// code); the commands it prints to try it are then run as printed, from another directory.
#[test]
fn the_set_up_commands_run_and_the_servers_hints_work() {
    let set_up = blocks(
        include_str!("../README.md"),
        "\n## Set-up",
        "\n## Walk-through",
    );
    assert_eq!(set_up.len(), 1);
    let commands: Vec<&str> = set_up[0]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(commands, ["cargo run --release -- serve", "scripts/test"]);
    let ci = include_str!("../.ci/run");
    assert!(ci.lines().any(|l| l.trim() == "scripts/test"), "{ci}");

    let _port = README_PORT.lock().unwrap_or_else(|e| e.into_inner());
    std::net::TcpListener::bind(("127.0.0.1", 8443))
        .expect("port 8443, which the embedded default uses, is in use: stop what listens there");
    let home = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .arg("serve")
        .current_dir(home.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let _stop = KillGroup(server.id());
    // Lines as they come, so the hint can be read while the server runs.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = server.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let mut hint = Vec::new();
    let mut in_hint = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = Command::new("kill")
                .arg(format!("-{}", server.id()))
                .status();
            panic!("serve printed no hint within 120 s: {:?}", reader.join());
        };
        if line.starts_with("Try it from another terminal") {
            in_hint = true;
        } else if in_hint {
            let last = line.contains("--out device-0002");
            hint.push(line);
            if last {
                break;
            }
        }
    }
    let hint = hint.join("\n");
    assert!(hint.contains(&home.path().join("matter-est-dev").display().to_string()));
    let try_dir = tempfile::tempdir().unwrap();
    let ran = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{hint}\n")])
        .current_dir(try_dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{hint}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(ran.status.success(), "the printed commands failed:\n{said}");
    let cacerts = String::from_utf8_lossy(&ran.stdout)
        .matches("subject=")
        .count();
    assert_eq!(cacerts, 2, "cacerts prints the PAI and the PAA\n{said}");
    let chain = std::fs::read_to_string(try_dir.path().join("dac-chain.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "DAC and PAI\n{said}"
    );
    assert!(
        try_dir.path().join("device-0002.dac.pem").exists(),
        "{said}"
    );
    // Nothing was written where the server runs but its own directory.
    let names: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["matter-est-dev"], "{said}");

    // Ctrl-C: the server stops cleanly and says its ledger is closed.
    Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .unwrap();
    let status = server.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(status.success(), "{status}\n{out}");
    assert!(out.contains("ledger closed"), "{out}");
}

/// Kills a process group when dropped, so that a failed assertion leaves no server holding
/// port 8443 for the next run (after a clean stop there is nothing left to kill).
struct KillGroup(u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}
