//! Prometheus metrics and health checks on the admin listener (issue 15), on a real `serve`
//! process: `/metrics` scraped over the admin Unix socket with curl and parsed by a strict
//! text-format parser, counters compared across real enrollments (issued, refused) and a failed
//! TLS handshake; `/healthz`, and `/readyz` going 503 while the PKCS#11 token is away and 200
//! again when it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::hsm::{self, Hsm};
use common::{DevEnv, assert_success};
use matter_est::profile::dev;
use serve::cli;

// --- A strict parser of the Prometheus text exposition format (0.0.4) ---

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parses `text`; any line that is not a HELP, TYPE or comment line or a well-formed sample of a
/// family whose TYPE came before is an error.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_name(name, true) {
                        return Err(err("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err("bad type".into()));
                    }
                    if types.insert(name.into(), kind.into()).is_some() {
                        return Err(err("second TYPE line".into()));
                    }
                }
                (Some("TYPE"), _, _) => return Err(err("incomplete TYPE".into())),
                (Some("HELP"), Some(name), _) if is_name(name, true) => {}
                (Some("HELP"), _, _) => return Err(err("bad HELP".into())),
                _ => {} // a comment
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(err("bad metric name".into()));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                // label name
                let start = chars
                    .peek()
                    .map(|&(i, _)| i)
                    .ok_or_else(|| err("open {".into()))?;
                if body[start..].starts_with('}') {
                    end = start + 1;
                    break;
                }
                let eq = body[start..].find('=').ok_or_else(|| err("no =".into()))? + start;
                let lname = &body[start..eq];
                if !is_name(lname, false) {
                    return Err(err(format!("bad label name {lname:?}")));
                }
                while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted".into()));
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            _ => return Err(err("bad escape".into())),
                        },
                        Some('\n') | None => return Err(err("unterminated label value".into())),
                        Some(c) => value.push(c),
                    }
                }
                if labels.insert(lname.to_string(), value).is_some() {
                    return Err(err("label repeated".into()));
                }
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        end = i + 1;
                        break;
                    }
                    _ => return Err(err("expected , or }".into())),
                }
            }
            rest = &body[end..];
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|f| {
                    types
                        .get(*f)
                        .is_some_and(|t| t == "histogram" || t == "summary")
                })
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(err("sample before its TYPE line".into()));
        }
        samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The value of `name` with (at least) `labels`, summed over the other labels; 0 when absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn the_parser_reads_the_format_and_rejects_malformed_lines() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n\
                # TYPE g gauge\ng NaN 1700000000\n";
    let s = parse_exposition(good).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s[0].labels["y"], "q\"\\");
    assert_eq!(value(&s, "h_count", &[]), 2.0);
    for bad in [
        "# TYPE a counter\na 1 2 3\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na{x=\"1\" 1\n",
        "# TYPE a counter\na{1x=\"1\"} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na\n",
        "b 1\n",
        "# TYPE a countr\n",
        "# TYPE 9a counter\n",
        "# TYPE a counter\na{x=\"\\q\"} 1\n",
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",
        "# TYPE a counter\na  1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// --- A real `serve` process ---

struct Serve {
    child: Child,
    port: String,
    socket: PathBuf,
    /// The messages logged up to "matter-est serving".
    startup: Vec<String>,
}

impl Serve {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
            .args(["serve", "--log-json", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut startup = Vec::new();
        let port = loop {
            let line = lines.next().expect("serve exited").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            startup.extend(v["fields"]["message"].as_str().map(str::to_string));
            if v["fields"]["message"] == "matter-est serving" {
                break v["fields"]["addr"]
                    .as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .to_string();
            }
        };
        // The rest of the log is drained so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let socket = config.parent().unwrap().join("admin.sock");
        assert!(socket.exists(), "no admin socket at {}", socket.display());
        Self {
            child,
            port,
            socket,
            startup,
        }
    }

    /// `GET path` over the admin socket: (status, body).
    fn admin_get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&self.socket)
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        assert_success(&out);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    fn scrape(&self) -> Vec<Sample> {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "{body}");
        parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(self.child.wait().unwrap().success());
    }
}

/// A test that fails leaves no server behind.
impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn token(env: &DevEnv) -> (String, String) {
    let out = cli(env, &["token", "create", "--label", "dev", "--json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["id"].as_str().unwrap().into(),
        v["secret"].as_str().unwrap().into(),
    )
}

/// Enrolls a fresh CSR with `cn` over HTTPS with curl and token `(id, secret)`: the status.
fn enroll(env: &DevEnv, port: &str, token: &(String, String), cn: &str) -> String {
    let (der, _) = common::csr(&common::subject(Some(cn), Some("FFF1"), Some("8000")));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let file = env.path(&format!("{cn}.csr"));
    std::fs::write(&file, b64).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(env.path(dev::files::TLS_CA_CERT))
        .args(["-u", &format!("{}:{}", token.0, token.1)])
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "https://localhost:{port}/.well-known/est/dev/simpleenroll"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const ENROLLMENTS: &str = "matter_est_enrollments_total";

#[test]
fn metrics_count_enrollments_refusals_and_handshake_failures() {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let (good, spare) = (token(&env), token(&env));
    let server = Serve::start(&env.path(dev::files::CONFIG));
    assert!(
        !server.startup.iter().any(|m| m.starts_with("metrics off")),
        "{:?}",
        server.startup
    );

    let before = server.scrape();
    assert_eq!(
        value(
            &before,
            "matter_est_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        value(&before, "matter_est_ledger_dacs", &[("label", "dev")]),
        0.0
    );
    assert_eq!(
        value(&before, "matter_est_tokens_unused", &[("label", "dev")]),
        2.0
    );
    assert_eq!(value(&before, "matter_est_open_connections", &[]), 0.0);
    let issued = [
        ("label", "dev"),
        ("operation", "simpleenroll"),
        ("result", "issued"),
    ];
    let refused = [
        ("label", "dev"),
        ("operation", "simpleenroll"),
        ("result", "refused"),
        ("rule", "unauthenticated"),
    ];
    assert_eq!(value(&before, ENROLLMENTS, &issued), 0.0);

    assert_eq!(enroll(&env, &server.port, &good, "metrics-1"), "200");
    let wrong = (spare.0.clone(), "not-the-secret".to_string());
    assert_eq!(enroll(&env, &server.port, &wrong, "metrics-2"), "401");
    assert_eq!(enroll(&env, &server.port, &wrong, "metrics-3"), "401");
    // A client that does not trust the server's certificate aborts the handshake.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(format!(
            "https://localhost:{}/.well-known/est/dev/cacerts",
            server.port
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());

    let after = server.scrape();
    assert_eq!(value(&after, ENROLLMENTS, &issued), 1.0);
    assert_eq!(value(&after, ENROLLMENTS, &refused), 2.0);
    assert_eq!(
        value(&after, "matter_est_ledger_dacs", &[("label", "dev")]),
        1.0
    );
    assert_eq!(
        value(&after, "matter_est_tokens_unused", &[("label", "dev")]),
        1.0
    );
    let op = [("operation", "simpleenroll")];
    assert_eq!(
        value(&after, "matter_est_request_duration_seconds_count", &op)
            - value(&before, "matter_est_request_duration_seconds_count", &op),
        3.0
    );
    assert!(
        value(
            &after,
            "matter_est_signer_duration_seconds_count",
            &[("signer", "file")]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "matter_est_ledger_commit_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(value(&after, "matter_est_ledger_commit_group_size_count", &[]) >= 1.0);
    assert!(
        value(&after, "matter_est_tls_handshake_failures_total", &[])
            > value(&before, "matter_est_tls_handshake_failures_total", &[]),
    );
    // Every metric of ours is named per the conventions.
    let names: BTreeSet<_> = after.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.iter().all(|n| n.starts_with("matter_est_")),
        "{names:?}"
    );

    let (status, body) = server.admin_get("/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = server.admin_get("/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert!(
        checks.contains(&"ledger") && checks.contains(&"signer:dev"),
        "{body}"
    );
    server.stop();
}

/// `[admin] metrics = false`, as an operator would run it: the start-up log says metrics are
/// off, the server issues, `GET /metrics` answers 404 with what turns them on, and the health
/// checks still answer.
#[test]
fn with_metrics_off_metrics_answers_404_naming_the_key_and_the_server_still_issues() {
    let env = DevEnv::new(|t| {
        t.replace("127.0.0.1:8443", "127.0.0.1:0")
            .replace("[admin]\n", "[admin]\nmetrics = false\n")
    });
    assert!(!env.config().admin.metrics);
    let (first, second) = (token(&env), token(&env));
    let server = Serve::start(&env.path(dev::files::CONFIG));
    let off = server
        .startup
        .iter()
        .find(|m| m.starts_with("metrics off"))
        .unwrap_or_else(|| panic!("no metrics-off line in {:?}", server.startup));
    assert!(off.contains("[admin] metrics = true"), "{off}");

    assert_eq!(enroll(&env, &server.port, &first, "metrics-off-1"), "200");
    let (status, body) = server.admin_get("/metrics");
    assert_eq!(status, 404, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = v["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(
        error.contains("metrics are off") && error.contains("set [admin] metrics = true"),
        "{error}"
    );
    assert!(!body.contains("matter_est_"), "{body}");

    let (status, body) = server.admin_get("/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = server.admin_get("/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready", "{body}");

    // Still issuing after the refused scrape, and both DACs are on record.
    assert_eq!(enroll(&env, &server.port, &second, "metrics-off-2"), "200");
    let (status, body) = server.admin_get("/metrics");
    assert_eq!(status, 404, "{body}");
    server.stop();
    let out = cli(&env, &["certs", "list", "--format", "csv"]);
    assert_success(&out);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("metrics-off-1") && listed.contains("metrics-off-2"),
        "{listed}"
    );
}

const TOKEN: &str = "pai-token";

fn readyz(server: &Serve) -> (u16, serde_json::Value) {
    let (status, body) = server.admin_get("/readyz");
    (status, serde_json::from_str(&body).unwrap())
}

#[test]
fn readyz_is_503_while_the_signer_token_is_away_and_200_when_it_is_back() {
    let Some(hsm) = hsm::in_softhsm(
        "readyz_is_503_while_the_signer_token_is_away_and_200_when_it_is_back",
        &[TOKEN],
    ) else {
        return;
    };
    let hsm: Hsm = hsm;
    let env = DevEnv::new_in(|dir, text| {
        hsm.adopt_dev_pki(dir, TOKEN, &text)
            .replace("127.0.0.1:8443", "127.0.0.1:0")
    });
    let server = Serve::start(&env.path(dev::files::CONFIG));
    let (status, v) = readyz(&server);
    assert_eq!(status, 200, "{v}");

    let token_dir = hsm.token_dir(TOKEN);
    let away = hsm.dir.join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    let (status, v) = readyz(&server);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "not ready");
    let signer = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "signer:dev")
        .unwrap();
    assert_eq!(signer["ok"], false, "{v}");
    assert!(
        signer["problem"].as_str().is_some_and(|p| !p.is_empty()),
        "{v}"
    );
    let ledger = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "ledger")
        .unwrap();
    assert_eq!(ledger["ok"], true, "{v}");
    assert!(
        value(
            &server.scrape(),
            "matter_est_signer_errors_total",
            &[("signer", "pkcs11")]
        ) >= 1.0
    );

    std::fs::rename(&away, &token_dir).unwrap();
    let back = Instant::now();
    loop {
        let (status, v) = readyz(&server);
        if status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "still not ready: {v}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    server.stop();
}
