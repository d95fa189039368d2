//! est-client's own files (issue 12, item 14): output directories 0700, keys and the manifest
//! 0600 whatever the umask; a key file it did not create is refused, never reused; a client key
//! that group or others may read is refused, as the server refuses one.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: tests; shared helpers

#[path = "../../tests/common/mod.rs"]
mod common;
mod fake;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use common::DevEnv;
use fake::{Pki, mode};

/// `cmd` run by a shell that first sets the umask to 000 (so only est-client's own modes count).
fn with_umask_000(cmd: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.args(["-c", "umask 000 && exec \"$@\"", "sh"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    sh
}

/// A stand-in server issuing real DACs (with the PAI) for whatever is asked.
async fn issuing_server(env: &DevEnv) -> fake::Fake {
    let pki = Arc::new(Pki::new(env));
    fake::serve(env, move |_, path, body| {
        if path.ends_with("/cacerts") {
            fake::certs_only(&[&pki.pai, &pki.paa])
        } else {
            fake::certs_only(&[&pki.dac(body), &pki.pai])
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_manifest_are_private_whatever_the_umask() {
    let env = DevEnv::new(|t| t);
    let fake = issuing_server(&env).await;
    let dir = tempfile::tempdir().unwrap();

    // Gateway: a new output directory (and its missing parent), 0700.
    let out = dir.path().join("new").join("line");
    let gateway = |ids: &[&str]| with_umask_000(&fake::gateway(&env, &fake.url(), ids, &out));
    let run = fake::run(gateway(&["um-1", "um-2"])).await;
    common::assert_success(&run);
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    assert_eq!(mode(&out.join("manifest.jsonl")), 0o600);
    for id in ["um-1", "um-2"] {
        assert_eq!(mode(&out.join(format!("{id}.key.pem"))), 0o600, "{id}");
        assert_eq!(mode(&out.join(format!("{id}.dac.pem"))), 0o644, "{id}");
    }
    assert_eq!(mode(&out.join("chain.pem")), 0o644);
    // A manifest an older version left readable by others is made private on the next run.
    std::fs::set_permissions(
        out.join("manifest.jsonl"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let run = fake::run(gateway(&["um-1", "um-3"])).await;
    common::assert_success(&run);
    assert_eq!(mode(&out.join("manifest.jsonl")), 0o600);
    assert_eq!(mode(&out.join("um-3.key.pem")), 0o600);

    // Enroll: PREFIX.key.pem 0600 (and a missing directory 0700), PEM or DER.
    let edir = dir.path().join("enrolled");
    for (id, der) in [("um-e1", false), ("um-e2", true)] {
        let mut cmd = fake::enroll(&env, &fake.url(), id, &edir.join(id));
        if der {
            cmd.arg("--der");
        }
        common::assert_success(&fake::run(with_umask_000(&cmd)).await);
        let ext = if der { "der" } else { "pem" };
        assert_eq!(mode(&edir.join(format!("{id}.key.{ext}"))), 0o600);
        assert_eq!(mode(&edir.join(format!("{id}.dac.{ext}"))), 0o644);
    }
    assert_eq!(mode(&edir), 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_it_did_not_create_are_refused_never_reused() {
    let env = DevEnv::new(|t| t);
    let fake = issuing_server(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("line");
    std::fs::create_dir(&out).unwrap();
    let pem = est_client::matter::key_pem(&est_client::matter::generate_key().unwrap()).unwrap();
    let plant = |id: &str, mode: u32| {
        let path = out.join(format!("{id}.key.pem"));
        std::fs::write(&path, &pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    // Readable by others: it may have leaked.
    let readable = plant("readable-1", 0o644);
    // A symbolic link to a key elsewhere.
    let elsewhere = dir.path().join("elsewhere.pem");
    std::fs::write(&elsewhere, &pem).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("linked-1.key.pem")).unwrap();
    // Another user's: only root can make one; this suite runs as root (scripts/test in CI).
    let root = rustix::process::geteuid().is_root();
    let foreign = plant("foreign-1", 0o600);
    if root {
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    } else {
        eprintln!("NOT TESTED: a key owned by another user (needs root to chown)");
    }
    let ids = ["readable-1", "linked-1", "foreign-1", "fresh-1"];
    let run = fake::run(fake::gateway(&env, &fake.url(), &ids, &out)).await;
    assert!(
        !run.status.success(),
        "refused devices make the exit non-zero"
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    let refused = |id: &str, why: &str| {
        stderr.lines().any(|l| {
            l.starts_with(&format!("device {id}: "))
                && l.contains(&format!("{id}.key.pem"))
                && l.contains(why)
                && l.ends_with("a key est-client did not create is refused, never reused")
        })
    };
    assert!(
        refused("readable-1", "mode 0644 lets group or others read it"),
        "{stderr}"
    );
    assert!(refused("linked-1", "a symbolic link"), "{stderr}");
    if root {
        assert!(
            refused("foreign-1", "owned by uid 65534, not by this user (uid 0)"),
            "{stderr}"
        );
    }
    // Left as they were, and no CSR went out for them: one request, for fresh-1.
    assert_eq!(std::fs::read_to_string(&readable).unwrap(), pem);
    assert_eq!(mode(&readable), 0o644);
    assert!(
        std::fs::symlink_metadata(out.join("linked-1.key.pem"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(fake.bodies("simpleenroll").len(), if root { 1 } else { 2 });
    assert!(out.join("fresh-1.dac.pem").exists());
    assert!(!out.join("readable-1.dac.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_others_can_read_is_refused() {
    let env = DevEnv::new(|t| t);
    let fake = issuing_server(&env).await;
    let dir = tempfile::tempdir().unwrap();
    // A client identity (the gateway's), its key readable by group.
    let key = dir.path().join("gateway.key");
    std::fs::copy(env.path(matter_est::profile::dev::files::GATEWAY_KEY), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cert = env.path(matter_est::profile::dev::files::GATEWAY_CERT);
    let expected = format!(
        "{}: mode 0640 lets group or others read it; run `chmod 600 {}`",
        key.display(),
        key.display()
    );
    let enroll = || {
        let mut cmd = fake::enroll(&env, &fake.url(), "k-1", &dir.path().join("k-1"));
        cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        cmd
    };
    // Re-enrollment presents the DAC's key, and --keep-key reuses it.
    let mut reenroll = fake::est_client(&env, &fake.url());
    reenroll
        .args(["reenroll", "--keep-key", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(dir.path().join("k-2"));
    for cmd in [enroll(), reenroll] {
        let run = fake::run(cmd).await;
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(&expected), "{stderr}");
    }
    assert!(
        fake.requests.lock().unwrap().is_empty(),
        "refused before any request"
    );
    // chmod 600, as the message says, and it is used.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::assert_success(&fake::run(enroll()).await);
}

// Issue 18 item 6: one gateway at a time in an output directory (two would interleave one
// manifest, and a compaction would drop the other's lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_at_a_time_in_a_directory() {
    let env = DevEnv::new(|t| t);
    let fake = issuing_server(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("line");
    std::fs::create_dir(&out).unwrap();
    // Another gateway holds the directory, as a running one does.
    let held = std::fs::File::open(&out).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let run = fake::run(fake::gateway(&env, &fake.url(), &["lk-1"], &out)).await;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: another est-client gateway is using this directory",
            out.display()
        )),
        "{stderr}"
    );
    assert!(fake.requests.lock().unwrap().is_empty());
    drop(held);
    common::assert_success(&fake::run(fake::gateway(&env, &fake.url(), &["lk-1"], &out)).await);
}
