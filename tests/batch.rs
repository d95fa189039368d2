//! Offline batches (issue 5): conformant DACs with matching keys, a manifest that matches the
//! files, the ledger holding exactly the batch, quota refusal up front, resume after a kill.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::{DevEnv, assert_matter_dac, assert_success};
use matter_est::batch::ManifestEntry;
use matter_est::profile::dev;
use sha2::{Digest, Sha256};

fn batch(env: &DevEnv, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["batch", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .args(["--label", "dev", "--pid", "8000", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// `batch` with only `--config` and `--out` given; `args` says the rest.
fn batch_with(
    env: &DevEnv,
    out: &Path,
    args: &[&str],
    vars: &[(&str, &str)],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["batch", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .arg("--out")
        .arg(out)
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

fn manifest(out: &Path) -> Vec<ManifestEntry> {
    std::fs::read_to_string(out.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    matter_est::asn1::hex(bytes)
}

/// Every entry's files exist with the listed hashes, the key matches the DAC, and the DAC
/// passes MATTER.md.
fn check_files(env: &DevEnv, out: &Path, entries: &[ManifestEntry], check_rules: bool) {
    use p256::elliptic_curve::sec1::ToSec1Point;
    use p256::pkcs8::DecodePrivateKey;
    let pai = env.pai_der();
    for e in entries {
        let dir = out.join("devices");
        let der = std::fs::read(dir.join(format!("{}.dac.der", e.device_id))).unwrap();
        let pem = std::fs::read(dir.join(format!("{}.dac.pem", e.device_id))).unwrap();
        let key = std::fs::read(dir.join(&e.key_file)).unwrap();
        assert_eq!(hex(&Sha256::digest(&der)), e.dac_der_sha256);
        assert_eq!(hex(&Sha256::digest(&pem)), e.dac_pem_sha256);
        assert_eq!(hex(&Sha256::digest(&key)), e.key_sha256);
        if check_rules {
            assert_matter_dac(&der, &pai);
        }
        let cert: x509_cert::Certificate = der::Decode::from_der(&der).unwrap();
        let point = cert
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
            .to_vec();
        if e.key_file == format!("{}.key.der", e.device_id) {
            let secret = p256::SecretKey::from_pkcs8_der(&key).unwrap();
            assert_eq!(
                secret.public_key().to_sec1_point(false).as_bytes(),
                point.as_slice(),
                "key matches DAC"
            );
        }
        assert_eq!(
            hex(cert.tbs_certificate().serial_number().as_bytes()).to_uppercase(),
            e.serial
        );
    }
}

#[test]
fn a_batch_of_ten_thousand() {
    let env = DevEnv::new(|t| t);
    let out = env.path("batch-1");
    let run = batch(&env, &out, &["--count", "10000"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let entries = manifest(&out);
    assert_eq!(entries.len(), 10_000);
    // The one-line summary, in the form of `est-client gateway`'s (issue 15 item 4).
    let line = String::from_utf8_lossy(&run.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let (head, tail) = line.split_once(" made now at ").unwrap();
    assert_eq!(
        head,
        "batch complete: label dev VID FFF1 PID 8000: 10000 of 10000 devices (10000"
    );
    let (_, tail) = tail.split_once("/s, ").unwrap();
    let (counts, tail) = tail.split_once(" s; serials ").unwrap();
    let (counts, secs) = counts.rsplit_once(", in ").unwrap();
    assert_eq!(
        counts,
        "0 recovered), 0 failed (0 permanent, 0 retryable), 0 not attempted"
    );
    assert!(secs.parse::<f64>().unwrap() > 0.0, "{line}");
    assert!(
        tail.ends_with(&format!(
            ", keys none; manifest {} is durable",
            out.join("manifest.jsonl").display()
        )),
        "{line}"
    );
    let subjects: HashSet<_> = entries.iter().map(|e| e.subject.clone()).collect();
    assert_eq!(subjects.len(), 10_000, "subjects unique");
    check_files(&env, &out, &entries, true);
    let csv = std::fs::read_to_string(out.join("manifest.csv")).unwrap();
    assert_eq!(csv.lines().count(), 10_001, "CSV manifest with header");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("batch.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "complete");
    assert_eq!(summary["count"], 10_000);
    assert_eq!(summary["vid"], "FFF1");
    assert_eq!(std::fs::read(out.join("pai.der")).unwrap(), env.pai_der());
    // Files 0600, directories 0700.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("devices")), 0o700);
    for suffix in ["key.der", "dac.der", "dac.pem"] {
        let file = format!("{}.{suffix}", entries[0].device_id);
        assert_eq!(mode(&out.join("devices").join(file)), 0o600, "{suffix}");
    }
    // The ledger holds exactly the batch.
    let (issuer, ledger) = env.issuer();
    assert_eq!(ledger.count("dev").unwrap(), 10_000);
    let on_record: HashSet<String> = ledger
        .list(0, 20_000)
        .unwrap()
        .iter()
        .map(|r| hex(&r.serial).to_uppercase())
        .collect();
    let in_batch: HashSet<String> = entries.iter().map(|e| e.serial.clone()).collect();
    assert_eq!(on_record, in_batch);
    drop((issuer, ledger));

    // A second batch never reuses a subject or a serial; a rerun of the first does nothing.
    let out2 = env.path("batch-2");
    assert!(batch(&env, &out2, &["--count", "500"]).status.success());
    let second = manifest(&out2);
    assert!(
        second
            .iter()
            .all(|e| !in_batch.contains(&e.serial) && !subjects.contains(&e.subject))
    );
    let rerun = batch(&env, &out, &["--count", "10000"]);
    assert!(rerun.status.success());
    assert!(
        String::from_utf8_lossy(&rerun.stdout).contains("0 made now"),
        "{}",
        String::from_utf8_lossy(&rerun.stdout)
    );
}

#[test]
fn device_list_batch_with_encrypted_keys() {
    let env = DevEnv::new(|t| t);
    let list = env.path("devices.csv");
    std::fs::write(&list, "device_id\nhw-0001\nhw-0002\nhw-0003\n").unwrap();
    let out = env.path("line-7");
    let run = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .env("LINE_PASS", "line seven passphrase")
        .args(["batch", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .args(["--label", "dev", "--pid", "8000", "--devices"])
        .arg(&list)
        .arg("--out")
        .arg(&out)
        .args(["--encrypt-passphrase-env", "LINE_PASS", "--archive"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let entries = manifest(&out);
    let ids: Vec<_> = entries
        .iter()
        .map(|e| e.device_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 3);
    check_files(&env, &out, &entries, true);
    // The archive holds the whole batch directory.
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(env.path("line-7.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "line-7/batch.json",
        "line-7/manifest.csv",
        "line-7/pai.der",
        "line-7/devices/hw-0002.key-encrypted.der",
        "line-7/devices/hw-0003.dac.pem",
    ] {
        assert!(
            listing.lines().any(|l| l == f),
            "{f} not in the archive:\n{listing}"
        );
    }
    // The documented decryption command.
    let key = Command::new("openssl")
        .env("LINE_PASS", "line seven passphrase")
        .args(["pkcs8", "-inform", "DER", "-passin", "env:LINE_PASS", "-in"])
        .arg(out.join("devices/hw-0002.key-encrypted.der"))
        .output()
        .unwrap();
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    std::fs::write(env.path("k.pem"), &key.stdout).unwrap();
    let pubkey = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(env.path("k.pem"))
        .output()
        .unwrap();
    let dac_pub = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(out.join("devices/hw-0002.dac.pem"))
        .output()
        .unwrap();
    assert_eq!(pubkey.stdout, dac_pub.stdout);
    // The same devices again in another batch: refused per device, nothing recorded twice.
    let again = batch(
        &env,
        &env.path("line-7b"),
        &["--devices", list.to_str().unwrap()],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already issued"));
    let (_issuer, ledger) = env.issuer();
    assert_eq!(ledger.count("dev").unwrap(), 3);
}

#[test]
fn quota_refuses_the_whole_batch_before_any_work() {
    let env = DevEnv::new(|t| common::label_keys(t, "quota = 50"));
    let out = env.path("too-big");
    let run = batch(&env, &out, &["--count", "51"]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("has 50 of its quota of 50 DACs left; this batch needs 51"),
        "{err}"
    );
    assert!(!out.exists(), "nothing created");
    let (_issuer, ledger) = env.issuer();
    assert_eq!(ledger.count("dev").unwrap(), 0);
}

/// Issue 18: input is checked before anything is created; a rerun must be the same batch;
/// permanent failures are named as such.
#[test]
fn batch_input_is_checked_first_and_a_rerun_must_match() {
    let env = DevEnv::new(|t| t);
    let bad = env.path("bad.csv");
    std::fs::write(&bad, "device_id\nhw-1\nhw 2\n").unwrap();
    let out = env.path("bad-batch");
    let run = batch(&env, &out, &["--devices", bad.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("line 3") && err.contains("hw 2"), "{err}");
    assert!(!out.exists(), "nothing created for a bad list");

    let out = env.path("ten");
    assert_success(&batch(&env, &out, &["--count", "10"]));
    for other in ["20", "5"] {
        let run = batch(&env, &out, &["--count", other]);
        assert!(!run.status.success(), "--count {other} accepted");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains("holds a batch of 10 devices") && err.contains("--count 10"),
            "{err}"
        );
    }
    assert_eq!(manifest(&out).len(), 10);
    // The same command again: nothing to do, still complete.
    assert_success(&batch(&env, &out, &["--count", "10"]));
    assert_eq!(manifest(&out).len(), 10);

    // Another PID, key protection or device list is another batch; the same list under another
    // path is the same batch.
    let refused = |args: &[&str], vars: &[(&str, &str)]| {
        let run = batch_with(&env, &out, args, vars);
        assert!(!run.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains("holds a batch of 10 devices"), "{err}");
    };
    refused(&["--label", "dev", "--pid", "8001", "--count", "10"], &[]);
    refused(
        &[
            "--label",
            "dev",
            "--pid",
            "8000",
            "--count",
            "10",
            "--encrypt-passphrase-env",
            "P",
        ],
        &[("P", "correct horse battery")],
    );
    let listed = env.path("listed");
    let ids = env.path("ids.csv");
    std::fs::write(&ids, "hw-a\nhw-b\n").unwrap();
    assert_success(&batch(&env, &listed, &["--devices", ids.to_str().unwrap()]));
    let moved = env.path("moved-ids.csv");
    std::fs::copy(&ids, &moved).unwrap();
    assert_success(&batch(
        &env,
        &listed,
        &["--devices", moved.to_str().unwrap()],
    ));
    std::fs::write(&moved, "hw-a\nhw-c\n").unwrap();
    let run = batch(&env, &listed, &["--devices", moved.to_str().unwrap()]);
    assert!(!run.status.success(), "another list accepted");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("the device list"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(manifest(&listed).len(), 2);

    // A device whose subject is already taken fails permanently.
    let first = env.path("first.csv");
    std::fs::write(&first, "hw-1\nhw-2\n").unwrap();
    assert_success(&batch(
        &env,
        &env.path("first"),
        &["--devices", first.to_str().unwrap()],
    ));
    let second = env.path("second.csv");
    std::fs::write(&second, "hw-1\nhw-3\n").unwrap();
    let run = batch(
        &env,
        &env.path("second"),
        &["--devices", second.to_str().unwrap()],
    );
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("device hw-1: permanent:"), "{err}");
    assert!(err.contains("failed permanently"), "{err}");
    assert!(!err.contains("rerun the same command"), "{err}");
}

#[test]
fn a_killed_batch_resumes_without_loss_or_duplicates() {
    let env = DevEnv::new(|t| t);
    let out = env.path("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["batch", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .args([
            "--label", "dev", "--pid", "8000", "--count", "6000", "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL) once it is well under way.
    let manifest_path = out.join("manifest.jsonl");
    for _ in 0..400 {
        if std::fs::metadata(&manifest_path)
            .map(|m| m.len() > 100_000)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // batch.json is written at the start, so a killed batch says what it is.
    let partial: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("batch.json")).unwrap()).unwrap();
    assert_eq!(partial["status"], "partial");
    let before = manifest(&out).len();
    assert!(before < 6_000, "killed before the end ({before})");

    let rerun = batch(&env, &out, &["--count", "6000"]);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let entries = manifest(&out);
    assert_eq!(entries.len(), 6_000);
    let ids: HashSet<_> = entries.iter().map(|e| e.device_id.clone()).collect();
    assert_eq!(ids.len(), 6_000, "no device twice in the manifest");
    // Exactly the three files of each device in the manifest: the unrecorded ones the kill
    // left were deleted, the recorded ones were added to the manifest.
    let mut files: Vec<_> = std::fs::read_dir(out.join("devices"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<_> = entries
        .iter()
        .flat_map(|e| ["dac.der", "dac.pem", "key.der"].map(|s| format!("{}.{s}", e.device_id)))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
    check_files(&env, &out, &entries, false);
    let (_issuer, ledger) = env.issuer();
    assert_eq!(
        ledger.count("dev").unwrap(),
        6_000,
        "every recorded DAC is in the batch, once"
    );
}

/// `openssl ecparam` making a P-256 key at `path`.
fn p256_key(path: &Path) -> std::process::Output {
    Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn keys_encrypted_to_the_line_public_key() {
    let env = DevEnv::new(|t| t);
    let line_key = env.path("line.key");
    let line_pub = env.path("line.pub");
    assert_success(&p256_key(&line_key));
    assert_success(
        &Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&line_key)
            .arg("-out")
            .arg(&line_pub)
            .output()
            .unwrap(),
    );
    let out = env.path("line-9");
    let run = batch(
        &env,
        &out,
        &["--count", "20", "--encrypt-to", line_pub.to_str().unwrap()],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let entries = manifest(&out);
    assert_eq!(entries.len(), 20);
    check_files(&env, &out, &entries, true);
    // The documented decryption command, on the line, for every key.
    for e in &entries {
        assert_eq!(e.key_file, format!("{}.key.cms", e.device_id));
        let dir = out.join("devices");
        let key = env.path("k.der");
        assert_success(
            &Command::new("openssl")
                .args(["cms", "-decrypt", "-inform", "DER", "-in"])
                .arg(dir.join(&e.key_file))
                .arg("-inkey")
                .arg(&line_key)
                .arg("-out")
                .arg(&key)
                .output()
                .unwrap(),
        );
        let pubkey = Command::new("openssl")
            .args(["pkey", "-inform", "DER", "-pubout", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        let dac_pub = Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(dir.join(format!("{}.dac.pem", e.device_id)))
            .output()
            .unwrap();
        assert_eq!(pubkey.stdout, dac_pub.stdout, "{}", e.device_id);
    }
    // Another key cannot open it.
    let other = env.path("other.key");
    assert_success(&p256_key(&other));
    let denied = Command::new("openssl")
        .args(["cms", "-decrypt", "-inform", "DER", "-in"])
        .arg(out.join("devices").join(&entries[0].key_file))
        .arg("-inkey")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!denied.status.success());
}

#[test]
fn resume_adds_recorded_devices_and_deletes_unrecorded_ones() {
    let env = DevEnv::new(|t| t);
    let out = env.path("resume");
    assert!(batch(&env, &out, &["--count", "5"]).status.success());
    let entries = manifest(&out);
    // As after a crash between the ledger commit and the manifest line: the last device's
    // files are on disk and its DAC on record, but it is not in the manifest.
    let jsonl = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let kept: String = jsonl.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(out.join("manifest.jsonl"), kept).unwrap();
    // As after a crash before the commit: files of a device whose DAC is not on record (an ID
    // with dots, as a device list may hold).
    let devices = out.join("devices");
    for suffix in ["dac.der", "dac.pem", "key.der"] {
        std::fs::write(devices.join(format!("hw.7.{suffix}")), b"torn").unwrap();
    }
    std::fs::write(devices.join("notes.txt"), b"not ours").unwrap();

    let rerun = batch(&env, &out, &["--count", "5"]);
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(
        stdout.contains("0 made now") && stdout.contains("1 recovered"),
        "{stdout}"
    );
    let after = manifest(&out);
    assert_eq!(after.len(), 5);
    assert_eq!(after[4].device_id, entries[4].device_id);
    assert_eq!(after[4].dac_der_sha256, entries[4].dac_der_sha256);
    check_files(&env, &out, &after, true);
    for suffix in ["dac.der", "dac.pem", "key.der"] {
        assert!(!devices.join(format!("hw.7.{suffix}")).exists(), "{suffix}");
    }
    assert!(
        devices.join("notes.txt").exists(),
        "files not of a device are left alone"
    );
    let (_issuer, ledger) = env.issuer();
    assert_eq!(ledger.count("dev").unwrap(), 5);
}

/// Every test above again, the PAI key in a SoftHSM2 token and signed through the PKCS#11 signer
/// (STYLE.md "a small signer seam": the same tests over both signers).
#[test]
fn the_same_tests_over_the_pkcs11_signer() {
    common::hsm::rerun_over_pkcs11("the_same_tests_over_the_pkcs11_signer", &[]);
}

/// Issue 15 item 4: Ctrl-C (SIGINT) stops a batch cleanly: no new device is started, the ones
/// under way are recorded and in the manifest, the summary line says `stopped` and what is
/// durable, the exit code is 130, and the rerun has nothing to repair.
#[test]
fn ctrl_c_stops_a_batch_cleanly_with_a_summary() {
    let env = DevEnv::new(|t| t);
    let out = env.path("interrupted");
    let child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["batch", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .args([
            "--label", "dev", "--pid", "8000", "--count", "100000", "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let manifest_path = out.join("manifest.jsonl");
    for _ in 0..2000 {
        if std::fs::metadata(&manifest_path)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let done = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    let entries = manifest(&out);
    let n = entries.len();
    assert!(n > 0 && n < 100_000, "{n}");
    let line = stdout.lines().next().unwrap();
    assert!(
        line.starts_with(&format!(
            "batch stopped: label dev VID FFF1 PID 8000: {n} of 100000 devices ({n} made now at "
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            ", 0 recovered), 0 failed (0 permanent, 0 retryable), {} not attempted, in ",
            100_000 - n
        )),
        "{line}"
    );
    assert!(line.ends_with(" is durable"), "{line}");
    // Exactly the manifest's devices are on record, each with its files.
    check_files(&env, &out, &entries, false);
    let (_issuer, ledger) = env.issuer();
    assert_eq!(ledger.count("dev").unwrap(), n as u64);
    let files = std::fs::read_dir(out.join("devices")).unwrap().count();
    assert_eq!(files, 3 * n, "no files of devices left unrecorded");
}
