//! Issue 15 item 3: the dashboard, in Debian's headless Chromium driven over WebDriver
//! (chromedriver), against a real `serve` process. Logging in with one-time links minted by
//! `matter-est dashboard login` over the admin socket; the numbers on the overview against the
//! admin API's own answers; an auditor sees no revoke button and its POST is refused; the
//! operator of label dev sees nothing of label other; a revoke clicked and confirmed in the page
//! is in `certs show` and in the label's CRL. `scripts/test` installs chromium and
//! chromium-driver. The same test runs again with the ledger on PostgreSQL (issue 16 item 6:
//! the dashboard works the same on either backend).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{DevEnv, stdout};
use matter_est::profile::dev;
use serde_json::{Value, json};
use serve::matter_est;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// --- A small WebDriver client (W3C WebDriver over HTTP/1.1 to chromedriver on loopback) ---

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    process: Child,
    port: u16,
    profiles: tempfile::TempDir,
}

struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; scripts/test installs it)");
        let driver = Self {
            process,
            port,
            profiles: tempfile::tempdir().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, v)) = driver.try_call("GET", "/status", None)
                && v["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        // Read the head, then exactly the body (chromedriver may keep the connection open).
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed in the head"));
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("no Content-Length"))?;
        while raw.len() < head_end + length {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed in the body"));
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).to_string();
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    /// A new headless Chromium that trusts exactly the server certificate with this SPKI hash.
    fn browser(&self, spki_sha256_b64: &str) -> Browser<'_> {
        let profile = tempfile::Builder::new()
            .prefix("chromium-")
            .tempdir_in(self.profiles.path())
            .unwrap()
            .keep();
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1600",
            format!("--user-data-dir={}", profile.display()),
            format!("--ignore-certificate-errors-spki-list={spki_sha256_b64}"),
        ]);
        let (status, v) = self
            .try_call(
                "POST",
                "/session",
                Some(&json!({ "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
                }}})),
            )
            .unwrap();
        assert_eq!(status, 200, "new WebDriver session: {v}");
        Browser {
            driver: self,
            session: v["value"]["sessionId"].as_str().unwrap().to_string(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Browser<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (status, v) = self.driver.try_call(method, &path, body.as_ref()).unwrap();
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn source(&self) -> String {
        self.call("GET", "/source", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    fn all(&self, css: &str) -> Vec<String> {
        self.call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[ELEMENT].as_str().unwrap().to_string())
        .collect()
    }

    fn one(&self, css: &str) -> String {
        let found = self.all(css);
        assert_eq!(found.len(), 1, "{css}: {}", self.source());
        found[0].clone()
    }

    fn attr(&self, element: &str, name: &str) -> String {
        self.call("GET", &format!("/element/{element}/attribute/{name}"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// `data-key` → `data-value` of a chart's bars.
    fn chart(&self, id: &str) -> BTreeMap<String, u64> {
        self.all(&format!("svg#{id} g.bar"))
            .iter()
            .map(|g| {
                (
                    self.attr(g, "data-key"),
                    self.attr(g, "data-value").parse().unwrap(),
                )
            })
            .collect()
    }

    /// Waits until the page's URL contains `part` (a form post or refresh navigates).
    fn wait_url(&self, part: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.url().contains(part) {
            assert!(
                Instant::now() < deadline,
                "never reached {part}: {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cookie(&self, name: &str) -> Value {
        self.call("GET", &format!("/cookie/{name}"), None)
    }

    fn screenshot(&self, to: &Path) -> usize {
        let b64 = self.call("GET", "/screenshot", None);
        let png = B64.decode(b64.as_str().unwrap()).unwrap();
        std::fs::write(to, &png).unwrap();
        png.len()
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .try_call("DELETE", &format!("/session/{}", self.session), None);
    }
}

// --- The test ---

/// base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in a PEM file: what
/// `--ignore-certificate-errors-spki-list` names.
fn spki_hash(pem: &Path) -> String {
    use der::{Decode as _, Encode as _};
    let text = std::fs::read_to_string(pem).unwrap();
    let (_, der) = der::pem::decode_vec(text.as_bytes()).unwrap();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    B64.encode(digest.as_ref())
}

/// curl on the admin socket: (status, JSON).
fn socket_api(socket: &Path, method: &str, path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap();
    let text = stdout(&out);
    let (body, code) = text.trim_end().rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap())
}

/// A login link from `matter-est dashboard login` (through the running server's socket).
fn login_link(cfg: &str, extra: &[&str]) -> String {
    let mut args = vec!["dashboard", "login", "--config", cfg];
    args.extend(extra);
    let url = stdout(&matter_est(&args)).trim().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert!(url.contains("/dashboard/login?code="), "{url}");
    url
}

fn issue(env: &DevEnv, cfg: &str, label: &str, cn: &str, pid: &str) -> String {
    let csr = env.path(&format!("{cn}.csr"));
    let (der, _) = common::csr(&common::subject(Some(cn), Some("FFF1"), Some(pid)));
    std::fs::write(&csr, der).unwrap();
    let out = env.path(&format!("{cn}.der"));
    let printed = stdout(&matter_est(&[
        "issue",
        "--config",
        cfg,
        "--label",
        label,
        "--csr",
        csr.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    // "issued DAC serial HEX …"
    printed
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(|c: char| !c.is_ascii_hexdigit())
        .to_uppercase()
}

/// This file's test again with the ledger on PostgreSQL (tests/common/pg.rs): the overview's
/// numbers, the inventory, the revoke and the new tokens against that backend's admin API.
#[test]
fn on_postgres() {
    common::pg::rerun_on_postgres("on_postgres", &[]);
}

#[test]
fn the_dashboard_in_headless_chromium() {
    let env = DevEnv::new(|t| {
        let t = t
            .replace("127.0.0.1:8443", "127.0.0.1:0")
            .replace("127.0.0.1:8444\"\n", "127.0.0.1:0\"\n")
            .replace("listen = \"127.0.0.1:8445\"", "listen = \"127.0.0.1:0\"")
            .replace(
                "match = \"cn:dev-operator\"\nrole = \"operator\"\n",
                "match = \"cn:dev-operator\"\nrole = \"operator\"\nlabels = [\"dev\"]\n",
            );
        let at = t.find("[labels.dev]").unwrap();
        // Label dev's tables: to the end, or to the `[store]` table that the child of
        // `on_postgres` appends.
        let dev = &t[at..];
        let dev = &dev[..dev.find("\n[store]").unwrap_or(dev.len())];
        let other = dev
            .replace("labels.dev", "labels.other")
            .replace("crl/dev.crl", "crl/other.crl");
        // Label dev has a quota, label other none.
        let t = t.replacen(
            "cn_prefix = \"dev-\"\n",
            "cn_prefix = \"dev-\"\nquota = 50\n",
            1,
        );
        format!("{t}\n{other}")
    });
    let config = env.path(dev::files::CONFIG);
    let cfg = config.to_str().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config", cfg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let (est_port, admin_port) = loop {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["fields"]["message"] == "matter-est serving" {
            let port = |f: &str| {
                let a = v["fields"][f].as_str().unwrap();
                a.rsplit(':').next().unwrap().to_string()
            };
            break (port("addr"), port("admin"));
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let socket = env.path("admin.sock");

    // Records: three DACs of label dev on two PIDs, one of label other; tokens; a refusal.
    let dev_serials = [
        issue(&env, cfg, "dev", "dash-1", "8000"),
        issue(&env, cfg, "dev", "dash-2", "8000"),
        issue(&env, cfg, "dev", "dash-3", "8001"),
    ];
    let other_serial = issue(&env, cfg, "other", "secret-other-device", "8002");
    for label in ["dev", "dev", "other"] {
        stdout(&matter_est(&[
            "token", "create", "--config", cfg, "--label", label,
        ]));
    }
    let refused = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(env.path(dev::files::TLS_CA_CERT))
        .args([
            "-u",
            "tok-nosuch:wrong",
            "-H",
            "Content-Type: application/pkcs10",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", env.path("dash-1.csr").display()))
        .arg(format!(
            "https://localhost:{est_port}/.well-known/est/dev/simpleenroll"
        ))
        .output()
        .unwrap();
    assert_ne!(stdout(&refused), "200");

    let spki = spki_hash(&env.path(dev::files::SERVER_CERT));
    let base = format!("https://127.0.0.1:{admin_port}");
    let driver = Driver::start();

    // --- An auditor (minted by the host's operator, narrowed to role auditor) ---
    let link = login_link(cfg, &["--role", "auditor"]);
    let b = driver.browser(&spki);
    b.go(&link);
    b.wait_url("/dashboard");
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.all("table#labels").is_empty() {
        assert!(Instant::now() < deadline, "{}", b.source());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.attr(&b.one("#whoami"), "data-role"), "auditor");
    let shot = env.path("overview.png");
    let size = b.screenshot(&shot);
    assert!(size > 1000, "a screenshot of {size} bytes");
    assert_eq!(
        &std::fs::read(&shot).unwrap()[..8],
        b"\x89PNG\r\n\x1a\n",
        "a PNG"
    );
    if let Ok(keep) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    // The session cookie is HttpOnly, Secure and SameSite=Strict.
    let cookie = b.cookie("matter_est_session");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(cookie["path"], "/dashboard", "{cookie}");

    // The numbers shown are the API's.
    let (_, labels) = socket_api(&socket, "GET", "/v1/labels");
    for l in labels["labels"].as_array().unwrap() {
        let name = l["label"].as_str().unwrap();
        let row = b.one(&format!(
            "tr[data-label=\"{name}\"] td[data-stat=\"issued\"]"
        ));
        assert_eq!(b.text(&row), l["issued"].to_string(), "issued on {name}");
        let quota = b.one(&format!(
            "tr[data-label=\"{name}\"] td[data-stat=\"quota\"]"
        ));
        let want = match &l["quota"] {
            Value::Null => "none".to_string(),
            q => q.to_string(),
        };
        assert_eq!(b.text(&quota), want, "quota of {name}");
    }
    let (_, stats) = socket_api(&socket, "GET", "/v1/certs/stats");
    let as_map = |v: &Value| -> BTreeMap<String, u64> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect()
    };
    assert_eq!(stats["total"], 4);
    assert_eq!(b.chart("per-pid"), as_map(&stats["by_pid"]));
    assert_eq!(b.chart("per-day"), as_map(&stats["by_day"]));
    let (_, tokens) = socket_api(&socket, "GET", "/v1/tokens");
    let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
    for t in tokens["tokens"].as_array().unwrap() {
        *by_state
            .entry((
                t["label"].as_str().unwrap().into(),
                t["state"].as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    for label in ["dev", "other"] {
        for state in ["unused", "spent", "expired", "revoked"] {
            let cell = b.one(&format!(
                "table#tokens tr[data-label=\"{label}\"] td[data-state=\"{state}\"]"
            ));
            let want = by_state
                .get(&(label.to_string(), state.to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(b.text(&cell), want.to_string(), "{label} {state}");
        }
    }
    let (_, audit) = socket_api(&socket, "GET", "/v1/audit?event=enrollment_refused");
    let mut rules: BTreeMap<String, u64> = BTreeMap::new();
    for r in audit["records"].as_array().unwrap() {
        *rules.entry(r["rule"].as_str().unwrap().into()).or_default() += 1;
    }
    assert!(!rules.is_empty(), "the refused enrollment is audited");
    let shown: BTreeMap<String, u64> = b
        .all("table#refusals tr[data-rule]")
        .iter()
        .map(|tr| {
            let cells = b.text(tr);
            let n = cells.split_whitespace().last().unwrap().parse().unwrap();
            (b.attr(tr, "data-rule"), n)
        })
        .collect();
    assert_eq!(shown, rules);
    let recent: Vec<String> = b
        .all("table#recent tr[data-serial]")
        .iter()
        .map(|tr| b.attr(tr, "data-serial"))
        .collect();
    assert_eq!(recent.len(), 4);
    assert!(
        recent.contains(&other_serial),
        "the auditor sees every label"
    );

    // The auditor's inventory has no revoke button, its confirmation page is refused, and its
    // POST (with the session's own cookie and CSRF token) is refused by the server too.
    b.go(&format!("{base}/dashboard/certs?label=dev"));
    assert_eq!(b.all("table#certs tr[data-serial]").len(), 3);
    assert!(b.all("a.revoke").is_empty(), "an auditor sees no revoke");
    assert!(b.all("form#new-tokens").is_empty());
    b.go(&format!(
        "{base}/dashboard/revoke?serial={}",
        dev_serials[0]
    ));
    assert_eq!(b.attr(&b.one("#error"), "data-status"), "403");
    b.go(&format!("{base}/dashboard"));
    let csrf = b.attr(&b.one("header form input[name=csrf]"), "value");
    let session = b.cookie("matter_est_session")["value"]
        .as_str()
        .unwrap()
        .to_string();
    let post = |cookie: &str, form: &str, origin: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(env.path(dev::files::TLS_CA_CERT))
            .args(["-H", &format!("Cookie: matter_est_session={cookie}")])
            .args(["-H", &format!("Origin: {origin}")])
            .args(["--data", form])
            .arg(format!("https://localhost:{admin_port}/dashboard/revoke"))
            .output()
            .unwrap();
        stdout(&out)
    };
    let origin = format!("https://localhost:{admin_port}");
    let form = format!("csrf={csrf}&serial={}&reason=keyCompromise", dev_serials[0]);
    assert_eq!(post(&session, &form, &origin), "403", "an auditor's POST");
    let (_, shown) = socket_api(&socket, "GET", &format!("/v1/certs/{}", dev_serials[0]));
    assert_eq!(shown["status"], "issued", "nothing changed");
    // A login link is good once.
    b.go(&link);
    assert_eq!(b.attr(&b.one("#error"), "data-status"), "401");
    drop(b);

    // --- The operator of label dev: nothing of label other ---
    let link = login_link(cfg, &["--role", "operator", "--label", "dev"]);
    let b = driver.browser(&spki);
    b.go(&link);
    b.wait_url("/dashboard");
    while b.all("table#labels").is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = b.source();
    for secret in ["other", &other_serial, "secret-other-device"] {
        assert!(
            !page.contains(secret),
            "{secret:?} on the dev operator's overview"
        );
    }
    assert_eq!(b.chart("per-pid").values().sum::<u64>(), 3);
    b.go(&format!("{base}/dashboard/certs?label=other"));
    assert_eq!(b.attr(&b.one("#error"), "data-status"), "403");
    b.go(&format!("{base}/dashboard/revoke?serial={other_serial}"));
    assert_eq!(b.attr(&b.one("#error"), "data-status"), "404");
    // The operator's own session: without its CSRF token, or from another origin, its POST is
    // refused too, and nothing changes.
    b.go(&format!("{base}/dashboard"));
    let csrf = b.attr(&b.one("header form input[name=csrf]"), "value");
    let session = b.cookie("matter_est_session")["value"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = &dev_serials[2];
    let form = format!("csrf={csrf}&serial={victim}&reason=keyCompromise");
    assert_eq!(
        post(
            &session,
            &format!("serial={victim}&reason=keyCompromise"),
            &origin
        ),
        "403",
        "no CSRF token"
    );
    assert_eq!(
        post(&session, &form.replace(&csrf, "x"), &origin),
        "403",
        "another CSRF token"
    );
    assert_eq!(
        post(&session, &form, "https://evil.example"),
        "403",
        "another origin"
    );
    let (_, shown) = socket_api(&socket, "GET", &format!("/v1/certs/{victim}"));
    assert_eq!(shown["status"], "issued", "nothing changed");
    // Revoke in the page: the button, the confirmation, the reason, confirm.
    b.go(&format!("{base}/dashboard/certs"));
    let page = b.source();
    assert!(!page.contains(&other_serial));
    let target = &dev_serials[1];
    b.click(&b.one(&format!("tr[data-serial=\"{target}\"] a.revoke")));
    b.wait_url("/dashboard/revoke");
    b.click(&b.one("select[name=reason] option[value=keyCompromise]"));
    b.click(&b.one("#confirm-revoke"));
    b.wait_url("/dashboard/revoke");
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.all("#revoked").is_empty() {
        assert!(Instant::now() < deadline, "{}", b.source());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.attr(&b.one("#revoked"), "data-serial"), *target);
    // `certs show` has it revoked, by the dashboard session of the host's operator.
    let shown: Value = serde_json::from_str(&stdout(&matter_est(&[
        "certs", "show", "--config", cfg, target, "--json",
    ])))
    .unwrap();
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["reason"], "keyCompromise");
    // The label's CRL lists it.
    let (code, crl) = socket_api(&socket, "GET", "/v1/labels/dev/crl");
    assert_eq!(code, 200);
    let crl_file = env.path("dev.crl");
    std::fs::write(&crl_file, B64.decode(crl["der"].as_str().unwrap()).unwrap()).unwrap();
    let text = stdout(
        &Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&crl_file)
            .output()
            .unwrap(),
    );
    assert!(
        text.to_uppercase()
            .contains(&format!("SERIAL NUMBER: {target}")),
        "{target} not in\n{text}"
    );
    // Audited as the API's own revocation, by the dashboard session.
    let (_, audit) = socket_api(&socket, "GET", "/v1/audit?event=admin_action");
    let action = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == format!("POST /v1/certs/{target}/revoke"))
        .expect("the revoke is audited as an admin action");
    assert!(
        action["identity"]
            .as_str()
            .unwrap()
            .starts_with("dashboard:socket:uid="),
        "{action}"
    );
    // The overview shows it among the revocations.
    b.go(&format!("{base}/dashboard"));
    assert_eq!(
        b.all(&format!("table#revocations tr[data-serial=\"{target}\"]"))
            .len(),
        1
    );

    // New tokens through the page: the form, the confirmation, the secrets once.
    let before = socket_api(&socket, "GET", "/v1/tokens?label=dev").1["tokens"]
        .as_array()
        .unwrap()
        .len();
    let count = b.one("form#new-tokens input[name=count]");
    b.call("POST", &format!("/element/{count}/clear"), Some(json!({})));
    b.call(
        "POST",
        &format!("/element/{count}/value"),
        Some(json!({ "text": "2" })),
    );
    b.click(&b.one("form#new-tokens button"));
    b.wait_url("/dashboard/tokens/new");
    b.click(&b.one("#confirm-tokens"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.all("tr.new-token").len() != 2 {
        assert!(Instant::now() < deadline, "{}", b.source());
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = socket_api(&socket, "GET", "/v1/tokens?label=dev").1["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before + 2);
    drop(b);

    // A browser presenting an admin certificate gets a session without a link.
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(env.path(dev::files::TLS_CA_CERT))
        .arg("--cert")
        .arg(env.path("clients/auditor.pem"))
        .arg("--key")
        .arg(env.path("clients/auditor.key"))
        .arg(format!("https://localhost:{admin_port}/dashboard"))
        .output()
        .unwrap();
    let headers = stdout(&out).to_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(
        headers.contains("set-cookie: matter_est_session=") && headers.contains("samesite=strict"),
        "{headers}"
    );

    // Login links never widen: an operator of dev cannot mint role admin, nor label other.
    let mint = |who: &str, body: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(env.path(dev::files::TLS_CA_CERT))
            .arg("--cert")
            .arg(env.path(&format!("clients/{who}.pem")))
            .arg("--key")
            .arg(env.path(&format!("clients/{who}.key")))
            .args(["-H", "Content-Type: application/json", "--data", body])
            .arg(format!("https://localhost:{admin_port}/v1/dashboard/login"))
            .output()
            .unwrap();
        let text = stdout(&out);
        let (body, code) = text.trim_end().rsplit_once('\n').unwrap();
        (
            code.to_string(),
            serde_json::from_str::<Value>(body).unwrap(),
        )
    };
    let (code, v) = mint("operator", r#"{"role":"admin"}"#);
    assert_eq!(code, "403", "{v}");
    let (code, v) = mint("operator", r#"{"labels":["other"]}"#);
    assert_eq!(code, "403", "{v}");
    let (code, v) = mint("operator", r#"{"sessionSecs":5}"#);
    assert_eq!(code, "400", "{v}");
    let (code, v) = mint("operator", "{}");
    assert_eq!(code, "200", "{v}");
    assert_eq!(
        (v["role"].as_str(), &v["labels"]),
        (Some("operator"), &json!(["dev"]))
    );
    let (code, v) = mint("auditor", r#"{"role":"auditor"}"#);
    assert_eq!(code, "200", "{v}");

    let _ = server.kill();
    let _ = server.wait();
}
