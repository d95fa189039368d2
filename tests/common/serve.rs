//! A real `matter-est serve` process for a test: started on the environment's config, its
//! address read from its JSON log, stopped (SIGTERM, then waited for) when dropped. Included by
//! the server package's tests only (`#[path = "common/serve.rs"] mod serve;`, beside `mod
//! common;`): it names the matter-est binary, which est-client's tests (they share `common`)
//! do not build.
#![allow(dead_code)] // reason: test helpers; not every test file uses every one

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use matter_est::profile::dev;

use crate::common::DevEnv;

/// `matter-est ARGS`.
pub fn matter_est(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(args)
        .output()
        .unwrap()
}

/// `matter-est ARGS --config CONFIG` of `env` (through the running server's socket, when one
/// runs).
pub fn cli(env: &DevEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(args)
        .arg("--config")
        .arg(env.path(dev::files::CONFIG))
        .output()
        .unwrap()
}

pub struct Server {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    /// The admin listener's address, if `[admin] listen` is set.
    pub admin: Option<std::net::SocketAddr>,
    /// The `message` of every log line after "matter-est serving", so far.
    pub messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `serve` with extra environment variables.
    pub fn start(env: &DevEnv, vars: &[(&str, &Path)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_matter-est"));
        cmd.args(["serve", "--log-json", "--config"])
            .arg(env.path(dev::files::CONFIG))
            .env("RUST_LOG", "warn,matter_est=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let serving = lines
            .by_ref()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .find(|v| v["fields"]["message"] == "matter-est serving")
            .expect("the server started");
        let field = |f: &str| serving["fields"][f].as_str().and_then(|a| a.parse().ok());
        let (addr, admin) = (field("addr").expect("its address"), field("admin"));
        // Keep draining its log so that it never blocks on a full pipe.
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = messages.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(m) = v["fields"]["message"].as_str()
                {
                    keep.lock().unwrap().push(m.to_string());
                }
            }
        });
        Self {
            child,
            addr,
            admin,
            messages,
        }
    }

    /// How many log lines so far said `message`.
    pub fn logged(&self, message: &str) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == message)
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The serial numbers on record for label `dev` (`certs list --format json`), uppercase hex,
/// in order; panics if the command fails.
pub fn serials_on_record(env: &DevEnv) -> Vec<String> {
    let out = cli(
        env,
        &[
            "certs", "list", "--label", "dev", "--limit", "10000", "--format", "json",
        ],
    );
    crate::common::assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut serials = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let records = v
            .get("records")
            .and_then(|r| r.as_array().cloned())
            .unwrap_or_else(|| vec![v.clone()]);
        for r in records {
            if let Some(s) = r["serial"].as_str() {
                serials.push(s.to_uppercase());
            }
        }
    }
    serials
}

/// The serial of a DAC (DER), uppercase hex as `certs list` prints it.
pub fn serial_of(dac: &[u8]) -> String {
    let cert = <x509_cert::Certificate as der::Decode>::from_der(dac).unwrap();
    let bytes = cert.tbs_certificate().serial_number().as_bytes();
    let bytes = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
