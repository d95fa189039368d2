//! SoftHSM2 for the PKCS#11 tests, with nothing shared with the host: each run gets a fresh
//! token directory and its own `softhsm2.conf`.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, at `C_Initialize`, and sees tokens created afterwards
//! only after `C_Finalize` + `C_Initialize`; setting the variable inside a running test process
//! is `unsafe` (and forbidden here). So a test that needs SoftHSM2 re-runs itself (or a whole
//! test binary) as a child process whose environment names the fresh directory:
//! [`in_softhsm`] for one test, [`rerun_over_pkcs11`] for a file's tests over the PKCS#11 signer.

use std::path::{Path, PathBuf};
use std::process::Command;

use matter_est::signer::PassphraseSource;
use matter_est::signer::pkcs11::{self, TokenSelector};

/// The user PIN of every test token.
pub const USER_PIN: &str = "1234-user";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "5678-so";
/// The token [`rerun_over_pkcs11`] creates and `DevEnv` puts PAI keys in.
pub const SUITE_TOKEN: &str = "matter-est-suite";

/// Set in the child: the SoftHSM2 directory (config, tokens, PIN file).
const CHILD_DIR: &str = "MATTER_EST_TEST_SOFTHSM_DIR";
/// Set in the child of [`rerun_over_pkcs11`]: `DevEnv` keeps its PAI key in the suite token.
const SUITE_MODE: &str = "MATTER_EST_TEST_PKCS11_SUITE";

/// Where Debian/Ubuntu install SoftHSM2's PKCS#11 module.
const MODULE_PATHS: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

/// A SoftHSM2 directory this (child) process is configured for.
pub struct Hsm {
    pub dir: PathBuf,
    pub module: PathBuf,
}

/// SoftHSM2's module. Panics (never skips) when it is missing: scripts/test installs it.
pub fn module() -> PathBuf {
    MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("SoftHSM2 is not installed: run scripts/test (it installs softhsm2) or `apt-get install softhsm2`")
        })
}

/// Runs test `test` of this binary in a child process whose `SOFTHSM2_CONF` names a fresh
/// SoftHSM2 directory with the tokens `tokens` (user PIN [`USER_PIN`]). In the parent: runs the
/// child, asserts it passed, and returns `None`. In the child: returns the directory.
pub fn in_softhsm(test: &str, tokens: &[&str]) -> Option<Hsm> {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        return Some(Hsm {
            dir: PathBuf::from(dir),
            module: module(),
        });
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = make_softhsm_dir(tmp.path(), tokens);
    run_child(
        &[test, "--exact", "--nocapture", "--test-threads=1"],
        &conf,
        tmp.path(),
        &[],
        Some("1 passed"),
    );
    None
}

/// Runs every test of this binary but `skip` again, in a child process where `DevEnv` keeps the
/// PAI key in a SoftHSM2 token and the label signs through the PKCS#11 signer (STYLE.md: the
/// same tests over both signers).
pub fn rerun_over_pkcs11(this_test: &str, skip: &[&str]) {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = make_softhsm_dir(tmp.path(), &[SUITE_TOKEN]);
    // One test at a time: each test adds a key to the suite's token, which rewrites the token's
    // file, and a server another test starts at that moment finds no token ("tokens present:
    // none": SoftHSM2 skips a token whose file it cannot read).
    let mut args = vec!["--skip", this_test, "--test-threads=1"];
    for s in skip {
        args.extend(["--skip", s]);
    }
    // Each skipped name is matched as a substring; the output says how many ran.
    run_child(&args, &conf, tmp.path(), &[(SUITE_MODE, "1")], None);
}

/// In the child of [`rerun_over_pkcs11`]: the suite's SoftHSM2 directory.
pub fn suite() -> Option<Hsm> {
    std::env::var(SUITE_MODE).ok()?;
    let dir = std::env::var(CHILD_DIR).ok()?;
    Some(Hsm {
        dir: PathBuf::from(dir),
        module: module(),
    })
}

impl Hsm {
    /// The user PIN in a 0600 file.
    pub fn pin_file(&self) -> PathBuf {
        self.dir.join("user.pin")
    }

    /// Generates a P-256 key in `token` (label and CKA_ID `label`); its public point.
    pub fn generate(&self, token: &str, label: &str) -> [u8; 65] {
        pkcs11::generate_key(
            &self.module,
            &TokenSelector {
                label: Some(token.into()),
                serial: None,
            },
            &PassphraseSource::File(self.pin_file()),
            label,
            label.as_bytes(),
        )
        .unwrap()
    }

    /// The `[labels.X.signer]` keys for `token`, with `extra` lines.
    pub fn signer_keys(&self, token: &str, extra: &str) -> String {
        format!(
            "module = \"{}\"\ntoken_label = \"{token}\"\npin_file = \"{}\"\n{extra}",
            self.module.display(),
            self.pin_file().display()
        )
    }

    /// Moves the development PKI under `dir` onto a new key in `token`: the PAI is re-issued for
    /// it, the PAI key file removed, and `config` (the `init-dev` text) signs through PKCS#11.
    pub fn adopt_dev_pki(&self, dir: &Path, token: &str, config: &str) -> String {
        let label = format!("pai-{}", hex(&random::<6>()));
        let point = self.generate(token, &label);
        matter_est::profile::dev::reissue_pai(dir, &point).unwrap();
        assert!(!dir.join(matter_est::profile::dev::files::PAI_KEY).exists());
        let keys = self.signer_keys(token, "sessions = 4\n");
        assert!(config.contains("file = \"pki/pai.key\"\n"));
        config.replace("file = \"pki/pai.key\"\n", &keys)
    }

    /// The token directory SoftHSM2 made for `token` (to take it away and bring it back).
    pub fn token_dir(&self, token: &str) -> PathBuf {
        for entry in std::fs::read_dir(self.dir.join("tokens")).unwrap() {
            let path = entry.unwrap().path();
            let conf = std::fs::read(path.join("token.object")).unwrap_or_default();
            if conf.windows(token.len()).any(|w| w == token.as_bytes()) {
                return path;
            }
        }
        panic!("no token directory for {token}");
    }
}

pub fn make_softhsm_dir(dir: &Path, tokens: &[&str]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let conf = dir.join("softhsm2.conf");
    std::fs::create_dir(dir.join("tokens")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    let pin = dir.join("user.pin");
    std::fs::write(&pin, format!("{USER_PIN}\n")).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    for token in tokens {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", token])
            .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap_or_else(|e| {
                panic!("softhsm2-util: {e}; run scripts/test (it installs softhsm2)")
            });
        super::assert_success(&out);
    }
    conf
}

fn run_child(args: &[&str], conf: &Path, dir: &Path, env: &[(&str, &str)], expect: Option<&str>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(args)
        .env("SOFTHSM2_CONF", conf)
        .env(CHILD_DIR, dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("---- child {args:?} ----\n{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "the SoftHSM2 child failed:\n{stdout}\n{stderr}"
    );
    if let Some(expect) = expect {
        assert!(
            stdout.contains(expect),
            "the child did not run the test: {stdout}"
        );
    }
}

pub fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
