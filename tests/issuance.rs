//! The issuance core (issue 2): CSR in, conformant DAC out, on record.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{DevEnv, assert_matter_dac, assert_success, csr, openssl_verify, subject};
use matter_est::Error;
use matter_est::issuance::IssueOptions;
use matter_est::profile::dev;
use ring::rand::{SecureRandom, SystemRandom};

fn opts() -> IssueOptions {
    IssueOptions {
        requester: "test".into(),
        ..Default::default()
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).unwrap();
    b
}

#[test]
fn random_valid_csrs_give_conformant_dacs_that_openssl_verifies() {
    let env = DevEnv::new(|t| t);
    let (issuer, _ledger) = env.issuer();
    let pai = env.pai_der();
    let alphabet: Vec<char> = "abcXYZ019 -_.:äé漢".chars().collect();
    let mut dacs = Vec::new();
    for i in 0..200u32 {
        let r = random_bytes::<70>();
        let len = 1 + usize::from(r[0]) % 40;
        let mut cn: String = r[1..=len]
            .iter()
            .map(|b| alphabet[usize::from(*b) % alphabet.len()])
            .collect();
        cn = cn.replace("Mvid:", "").replace("Mpid:", "");
        cn.push_str(&format!("-{i}"));
        let pid = format!("{:04X}", 1 + u16::from_be_bytes([r[60], r[61]]) % 0xfffe);
        let name = match i % 3 {
            0 => subject(Some(&cn), Some("FFF1"), Some(&pid)),
            1 => subject(Some(&format!("{cn} Mvid:FFF1 Mpid:{pid}")), None, None),
            _ => subject(Some(&cn), None, Some(&pid)), // VID from the PAI
        };
        let (body, _) = csr(&name);
        let req = matter_est::csr::parse(&body).unwrap();
        let issued = issuer.issue("dev", &req, &opts()).unwrap();
        assert_matter_dac(&issued.dac.der, &pai);
        assert_eq!(issued.dac.subject.pid.to_string(), pid);
        dacs.push(issued.dac.der);
    }
    openssl_verify(&env, &dacs);
}

#[test]
fn sdk_placeholder_csr_takes_pid_from_a_single_product_label() {
    let ou_csa = dev::name(&[(&[0x55, 0x04, 0x0b], "CSA")]);
    let (body, _) = csr(&ou_csa);
    let req = matter_est::csr::parse(&body).unwrap();

    let any = DevEnv::new(|t| t);
    let (issuer, _l) = any.issuer();
    let err = issuer.issue("dev", &req, &opts()).unwrap_err();
    assert!(matches!(err, Error::MissingPid { .. }), "{err}");
    assert!(err.to_string().contains("no PID"), "{err}");

    let single =
        DevEnv::new(|t| t.replace("pids = \"any\"\nvalidity", "pids = [\"8000\"]\nvalidity"));
    let (issuer, _l) = single.issuer();
    let issued = issuer.issue("dev", &req, &opts()).unwrap();
    assert_eq!(issued.dac.subject.pid.to_string(), "8000");
    assert!(
        issued.dac.subject.cn.starts_with("dev-"),
        "{}",
        issued.dac.subject.cn
    );
    assert_matter_dac(&issued.dac.der, &single.pai_der());
}

fn openssl_csr(dir: &std::path::Path, keygen: &[&str], digest: &str) -> Vec<u8> {
    let key = dir.join("k.pem");
    let out = Command::new("openssl")
        .args(keygen)
        .arg("-out")
        .arg(&key)
        .output()
        .unwrap();
    assert_success(&out);
    let out = Command::new("openssl")
        .args(["req", "-new", "-subj", "/CN=dev1", digest, "-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert_success(&out);
    out.stdout
}

#[test]
fn each_csr_refusal_names_its_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good, _) = csr(&subject(Some("dev"), Some("FFF1"), Some("8000")));
    let mut bad_sig = good.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last - 3] ^= 0x01;
    // The signed bytes themselves bent (the CN "dev" becomes "eev"): still a well-formed CSR.
    let mut bent_info = good.clone();
    let at = bent_info
        .windows(3)
        .position(|w| w == b"dev")
        .expect("the CN in the CSR");
    bent_info[at] = b'e';
    let rsa = openssl_csr(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        "-sha256",
    );
    let p384 = openssl_csr(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ],
        "-sha256",
    );
    let sha384 = openssl_csr(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        "-sha384",
    );
    let long_cn = "x".repeat(65);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"hello world".to_vec(), "not a PKCS#10 CSR"),
        (bad_sig, "signature does not verify"),
        (bent_info, "signature does not verify"),
        (rsa, "EC P-256 (prime256v1), found rsaEncryption"),
        (p384, "found EC curve secp384r1"),
        (sha384, "ecdsa-with-SHA256, found ecdsa-with-SHA384"),
        (
            csr(&dev::name(&[
                (matter_est::asn1::oid::MATTER_VID, "FFF1"),
                (matter_est::asn1::oid::MATTER_VID, "FFF1"),
            ]))
            .0,
            "more than one Matter VID",
        ),
        (
            csr(&subject(Some("d"), Some("fff1"), Some("8000"))).0,
            "uppercase",
        ),
        (
            csr(&subject(Some("d"), Some("FFF1"), Some("800"))).0,
            "exactly 4 hex digits",
        ),
        (
            csr(&subject(Some("d"), Some("FFF1"), Some("80001"))).0,
            "exactly 4 hex digits",
        ),
        (
            csr(&subject(Some("d"), Some("0000"), Some("8000"))).0,
            "VID \"0000\" is not valid",
        ),
        (
            csr(&subject(Some("d"), Some("FFF1"), Some("0000"))).0,
            "PID \"0000\" is not valid",
        ),
        (
            csr(&subject(Some("dev Mvid:FF"), Some("FFF1"), Some("8000"))).0,
            "contains \"Mvid:\" not followed by 4 uppercase hex digits",
        ),
        (
            csr(&subject(Some("dev Mpid:80g0"), Some("FFF1"), Some("8000"))).0,
            "contains \"Mpid:\"",
        ),
        (
            csr(&subject(Some(&long_cn), Some("FFF1"), Some("8000"))).0,
            "65 characters long",
        ),
    ];
    for (body, expected) in cases {
        match matter_est::csr::parse(&body) {
            Ok(_) if expected.is_empty() => {}
            Ok(_) => panic!("accepted; expected refusal {expected:?}"),
            Err(e) => {
                assert!(!expected.is_empty(), "refused a valid CSR: {e}");
                assert!(
                    e.to_string().contains(expected),
                    "{e} does not say {expected:?}"
                );
                assert_eq!(e.kind(), matter_est::error::ErrorKind::BadRequest, "{e}");
            }
        }
    }
    // Duplicate PID too.
    let dup = dev::name(&[
        (matter_est::asn1::oid::MATTER_PID, "8000"),
        (matter_est::asn1::oid::MATTER_PID, "8001"),
    ]);
    let e = matter_est::csr::parse(&csr(&dup).0).unwrap_err();
    assert!(e.to_string().contains("more than one Matter PID"), "{e}");
}

#[test]
fn csr_bodies_in_der_base64_and_pem_are_accepted() {
    let (der, _) = csr(&subject(Some("d"), Some("FFF1"), Some("8000")));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
    let wrapped: String = b64
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{wrapped}-----END CERTIFICATE REQUEST-----\n"
    );
    use matter_est::csr::BodyForm;
    for (body, form) in [
        (der.clone(), BodyForm::Der),
        (b64.into_bytes(), BodyForm::Base64),
        (wrapped.into_bytes(), BodyForm::Base64),
        (pem.into_bytes(), BodyForm::Pem),
    ] {
        assert_eq!(matter_est::csr::parse(&body).unwrap().form, form);
    }
}

#[test]
fn each_profile_refusal_names_its_problem_and_records_nothing() {
    let env = DevEnv::new(|t| {
        t.replace(
            "pids = \"any\"\nvalidity",
            "pids = [\"8000\"]\nother_subject_attributes = \"refuse\"\nvalidity",
        )
    });
    let (issuer, ledger) = env.issuer();
    let big_cn = "漢".repeat(64);
    let with_ou = dev::name(&[
        (matter_est::asn1::oid::COMMON_NAME, "d"),
        (&[0x55, 0x04, 0x0b], "line 2"),
        (matter_est::asn1::oid::MATTER_PID, "8000"),
    ]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            subject(Some("d"), Some("FFF2"), Some("8000")),
            "VID FFF2 does not match the PAI's VID FFF1",
        ),
        (
            subject(Some("d"), Some("FFF1"), Some("8001")),
            "PID 8001 is not allowed on label \"dev\" (allowed: 8000)",
        ),
        (
            subject(Some(&big_cn), Some("FFF1"), Some("8000")),
            "Matter allows at most 600",
        ),
        (with_ou, "attribute ou, which label \"dev\" refuses"),
    ];
    for (name, expected) in cases {
        let req = matter_est::csr::parse(&csr(&name).0).unwrap();
        let err = issuer.issue("dev", &req, &opts()).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{err} does not say {expected:?}"
        );
    }
    assert_eq!(ledger.count("dev").unwrap(), 0);
    assert!(ledger.list(0, 10).unwrap().is_empty());
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let env = DevEnv::new(|t| t);
    std::fs::set_permissions(
        env.path(dev::files::PAI_KEY),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let config = env.config();
    let ledger = std::sync::Arc::new(
        matter_est::store::redb::RedbLedger::open(config.store.redb_path().unwrap()).unwrap(),
    );
    let err = matter_est::issuance::Issuer::new(&config, ledger)
        .err()
        .unwrap();
    assert!(err.to_string().contains("mode 0644"), "{err}");
}

#[test]
fn key_that_does_not_match_the_pai_is_refused() {
    let env = DevEnv::new(|t| t.replace("file = \"pki/pai.key\"", "file = \"pki/paa.key\""));
    let config = env.config();
    let ledger = std::sync::Arc::new(
        matter_est::store::redb::RedbLedger::open(config.store.redb_path().unwrap()).unwrap(),
    );
    let err = matter_est::issuance::Issuer::new(&config, ledger)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("does not match the public key of the PAI"),
        "{err}"
    );
}

#[test]
fn encrypted_key_loads_with_its_passphrase_from_a_file_or_env() {
    let env = DevEnv::new(|t| {
        t.replace(
            "file = \"pki/pai.key\"",
            "file = \"pki/pai-enc.key\"\npassphrase_file = \"pki/pass\"",
        )
    });
    let out = Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:s3cret",
            "-in",
        ])
        .arg(env.path(dev::files::PAI_KEY))
        .arg("-out")
        .arg(env.path("pki/pai-enc.key"))
        .output()
        .unwrap();
    assert_success(&out);
    let private = |rel: &str| {
        std::fs::set_permissions(env.path(rel), std::fs::Permissions::from_mode(0o600)).unwrap()
    };
    private("pki/pai-enc.key");
    let config = env.config();
    let ledger = std::sync::Arc::new(
        matter_est::store::redb::RedbLedger::open(config.store.redb_path().unwrap()).unwrap(),
    );
    std::fs::write(env.path("pki/pass"), "wrong\n").unwrap();
    private("pki/pass");
    let err = matter_est::issuance::Issuer::new(&config, ledger.clone())
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot decrypt"), "{err}");
    std::fs::write(env.path("pki/pass"), "s3cret\n").unwrap();
    matter_est::issuance::Issuer::new(&config, ledger.clone()).unwrap();
    drop(ledger);

    // From the environment, through the CLI (a child process gets its own environment).
    let cfg = env.path(dev::files::CONFIG);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "passphrase_file = \"pki/pass\"",
            "passphrase_env = \"PAI_PASS\"",
        ),
    )
    .unwrap();
    let csr_path = env.path("d.csr");
    std::fs::write(
        &csr_path,
        csr(&subject(Some("enc"), Some("FFF1"), Some("8000"))).0,
    )
    .unwrap();
    let issue = |pass: &str| {
        Command::new(env!("CARGO_BIN_EXE_matter-est"))
            .env("PAI_PASS", pass)
            .args(["issue", "--config"])
            .arg(&cfg)
            .arg("--csr")
            .arg(&csr_path)
            .arg("--out")
            .arg(env.path("dac.der"))
            .output()
            .unwrap()
    };
    let out = issue("nope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot decrypt"), "{stderr}");
    assert!(issue("s3cret").status.success());
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let env = DevEnv::new(|t| t.replace("[labels.dev]\n", "[labels.dev]\ncolour = \"red\"\n"));
    let err = matter_est::config::Config::load(&env.path(dev::files::CONFIG)).unwrap_err();
    assert!(err.to_string().contains("unknown field `colour`"), "{err}");
}

#[test]
fn ten_thousand_issuances_have_unique_serials() {
    let env = DevEnv::new(|t| t);
    let (issuer, ledger) = env.issuer();
    let issuer = std::sync::Arc::new(issuer);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let issuer = issuer.clone();
            std::thread::spawn(move || {
                (0..1250)
                    .map(|i| {
                        let (body, _) = csr(&subject(
                            Some(&format!("dev-{t}-{i}")),
                            Some("FFF1"),
                            Some("8000"),
                        ));
                        let req = matter_est::csr::parse(&body).unwrap();
                        issuer.issue("dev", &req, &opts()).unwrap().dac.serial
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let serials: HashSet<Vec<u8>> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(serials.len(), 10_000);
    assert_eq!(ledger.list(0, 20_000).unwrap().len(), 10_000);
    assert_eq!(ledger.count("dev").unwrap(), 10_000);
}

#[test]
fn same_subject_twice_quota_and_reopen() {
    let env = DevEnv::new(|t| common::label_keys(t, "quota = 5"));
    let serials = {
        let (issuer, ledger) = env.issuer();
        let name = subject(Some("same"), Some("FFF1"), Some("8000"));
        let first = issuer
            .issue(
                "dev",
                &matter_est::csr::parse(&csr(&name).0).unwrap(),
                &opts(),
            )
            .unwrap();
        let err = issuer
            .issue(
                "dev",
                &matter_est::csr::parse(&csr(&name).0).unwrap(),
                &opts(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("already issued"), "{err}");
        let mut serials = vec![first.dac.serial];
        for i in 0..4 {
            let req = matter_est::csr::parse(
                &csr(&subject(Some(&format!("d{i}")), None, Some("8000"))).0,
            )
            .unwrap();
            serials.push(issuer.issue("dev", &req, &opts()).unwrap().dac.serial);
        }
        let req = matter_est::csr::parse(&csr(&subject(Some("d5"), None, Some("8000"))).0).unwrap();
        let err = issuer.issue("dev", &req, &opts()).unwrap_err();
        assert!(err.to_string().contains("used its quota of 5"), "{err}");
        assert_eq!(ledger.count("dev").unwrap(), 5);
        ledger.close();
        serials
    };
    let (_issuer, ledger) = env.issuer();
    assert_eq!(ledger.count("dev").unwrap(), 5);
    let listed: Vec<Vec<u8>> = ledger
        .list(0, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.serial)
        .collect();
    assert_eq!(listed, serials, "list is in issue order");
    for s in &serials {
        let rec = ledger.by_serial(s).unwrap().unwrap();
        assert_eq!(rec.requester, "test");
        assert_eq!(rec.vid, 0xfff1);
    }
}

#[test]
fn cli_init_dev_keeps_keys_and_issue_writes_a_dac() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_matter-est");
    let dev_dir = dir.path().join("dev");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let out = run(&["init-dev", "--dir", dev_dir.to_str().unwrap()]);
    assert!(out.status.success());
    let key = std::fs::read(dev_dir.join(dev::files::PAI_KEY)).unwrap();
    assert_eq!(
        std::fs::metadata(dev_dir.join(dev::files::PAI_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let out = run(&["init-dev", "--dir", dev_dir.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept it"));
    assert_eq!(
        std::fs::read(dev_dir.join(dev::files::PAI_KEY)).unwrap(),
        key
    );
    let out = run(&["init-dev", "--dir", dev_dir.to_str().unwrap(), "--force"]);
    assert!(out.status.success());
    assert_ne!(
        std::fs::read(dev_dir.join(dev::files::PAI_KEY)).unwrap(),
        key
    );

    // openssl makes the key and a Matter CSR (PEM); `issue` turns it into a PEM DAC.
    let cnf = dir.path().join("req.cnf");
    std::fs::write(&cnf, "oid_section = oids\n[oids]\nmatterVID = 1.3.6.1.4.1.37244.2.1\nmatterPID = 1.3.6.1.4.1.37244.2.2\n[req]\ndistinguished_name = dn\nprompt = no\nstring_mask = utf8only\n[dn]\nCN = line1-0001\nmatterVID = FFF1\nmatterPID = 8000\n").unwrap();
    let csr_path = dir.path().join("d.csr");
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
        ])
        .arg(dir.path().join("d.key"))
        .arg("-config")
        .arg(&cnf)
        .arg("-out")
        .arg(&csr_path)
        .output()
        .unwrap();
    assert_success(&out);
    let dac = dir.path().join("dac.pem");
    let config = dev_dir.join(dev::files::CONFIG);
    let out = run(&[
        "issue",
        "--config",
        config.to_str().unwrap(),
        "--label",
        "dev",
        "--csr",
        csr_path.to_str().unwrap(),
        "--out",
        dac.to_str().unwrap(),
        "--pem",
    ]);
    assert_success(&out);
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dev_dir.join(dev::files::PAA_CERT))
        .arg("-untrusted")
        .arg(dev_dir.join(dev::files::PAI_CERT))
        .arg(&dac)
        .output()
        .unwrap();
    assert_success(&out);
    // The same CSR again (same key, same subject): the DAC on record, not a second one.
    let first = std::fs::read(&dac).unwrap();
    let out = run(&[
        "issue",
        "--config",
        config.to_str().unwrap(),
        "--csr",
        csr_path.to_str().unwrap(),
        "--out",
        dac.to_str().unwrap(),
        "--pem",
    ]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&dac).unwrap(), first);
    // Another key for the same subject: refused with the reason, exit code non-zero.
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
        ])
        .arg(dir.path().join("d2.key"))
        .arg("-config")
        .arg(&cnf)
        .arg("-out")
        .arg(&csr_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = run(&[
        "issue",
        "--config",
        config.to_str().unwrap(),
        "--csr",
        csr_path.to_str().unwrap(),
        "--out",
        dac.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already issued"));
}

/// Every test above again, the PAI key in a SoftHSM2 token and signed through the PKCS#11 signer
/// (STYLE.md "a small signer seam": the same tests over both signers).
#[test]
fn the_same_tests_over_the_pkcs11_signer() {
    common::hsm::rerun_over_pkcs11(
        "the_same_tests_over_the_pkcs11_signer",
        &[
            "key_file_readable_by_others_is_refused",
            "key_that_does_not_match_the_pai_is_refused",
            "encrypted_key_loads_with_its_passphrase_from_a_file_or_env",
        ],
    );
}
