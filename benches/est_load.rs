//! Load benchmark of `matter-est serve` (issue 3): a real server process on loopback and a load
//! generator in this process, on the same machine. Prints new-connection and keep-alive
//! enrollments/s, p50/p99 latency at 2,500/s (half the 5,000/s target), and the RSS with 1,000
//! open keep-alive connections. Run: `cargo bench --bench est_load`. Phase `metrics` (issue 15,
//! not in the default set: `EST_LOAD_PHASES=metrics`) compares the keep-alive rate of a server
//! with metrics on and one with `[admin] metrics = false`, alternately, in the same run. Phase
//! `builds` (`EST_LOAD_PHASES=builds EST_LOAD_BASELINE_BIN=path/to/other/matter-est`) compares
//! this build's server with another build's the same way (issue 14: the audit chain's cost).
//! Phase `pkcs11` (`EST_LOAD_PHASES=pkcs11`; `EST_LOAD_PKCS11_SESSIONS` sets the session pool)
//! measures SoftHSM2's raw `C_Sign` rate and compares a PKCS#11-signer server with a
//! file-signer server the same way, in one run (issue 13). `EST_LOAD_ROUNDS` and `EST_LOAD_N`
//! set the rounds and the enrollments per round of these alternating phases.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: benchmark harness; shares test helpers

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::est::{ALL, Client, client_config, identity_from_files};
use matter_est::profile::dev;

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";

async fn post(c: &mut Client, body: Vec<u8>) {
    let r = c
        .request(
            "POST",
            ENROLL,
            &[("Content-Type", "application/pkcs10")],
            body,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What the server's ledger writer thread has written so far: (bytes, write calls), from
/// /proc/PID/task/TID/io (`wchar`, `syscw`).
fn writer_io(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "ledger-writer" {
            continue;
        }
        let io = std::fs::read_to_string(path.join("io")).unwrap_or_default();
        let field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        return (field("wchar:"), field("syscw:"));
    }
    (0, 0)
}

/// Moves the development PAI onto a key generated in a fresh SoftHSM2 token under `dir`
/// (`matter-est pai keygen` in a process whose `SOFTHSM2_CONF` names it), and points the
/// config's signer at it. Returns the `softhsm2.conf` to give the server.
fn pkcs11_signer(
    dir: &std::path::Path,
    config: &std::path::Path,
    sessions: usize,
) -> std::path::PathBuf {
    let hsm_dir = dir.join("softhsm");
    std::fs::create_dir(&hsm_dir).unwrap();
    let conf = common::hsm::make_softhsm_dir(&hsm_dir, &["load"]);
    let public = dir.join("pai-public.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["pai", "keygen", "--module"])
        .arg(common::hsm::module())
        .args(["--token-label", "load", "--key-label", "pai", "--pin-file"])
        .arg(hsm_dir.join("user.pin"))
        .arg("--public-out")
        .arg(&public)
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    common::assert_success(&out);
    let (_, spki) = der::pem::decode_vec(std::fs::read(&public).unwrap().as_slice()).unwrap();
    let point: [u8; 65] = spki[spki.len() - 65..].try_into().unwrap();
    dev::reissue_pai(dir, &point).unwrap();
    let text = std::fs::read_to_string(config).unwrap().replace(
        "file = \"pki/pai.key\"\n",
        &format!(
            "module = \"{}\"\ntoken_label = \"load\"\npin_file = \"{}\"\nsessions = {sessions}\n",
            common::hsm::module().display(),
            hsm_dir.join("user.pin").display()
        ),
    );
    std::fs::write(config, text).unwrap();
    println!("signer: PKCS#11, SoftHSM2 ({sessions} sessions)");
    conf
}

/// A `matter-est serve` on a fresh development PKI, on a free port of loopback, and the
/// client configurations to reach it.
struct Setup {
    dir: tempfile::TempDir,
    child: Server,
    addr: std::net::SocketAddr,
    /// As the development gateway (mutual TLS).
    tls: Arc<rustls::ClientConfig>,
    /// Without a client certificate.
    anon: Arc<rustls::ClientConfig>,
}

/// Where the server's PAI key is.
#[derive(Clone, Copy, PartialEq)]
enum Key {
    File,
    /// In a SoftHSM2 token, used through this many sessions.
    Pkcs11 {
        sessions: usize,
    },
}

/// `EST_LOAD_PKCS11_SESSIONS` (default two per core): the PKCS#11 signer's session pool.
fn pkcs11_sessions() -> usize {
    std::env::var("EST_LOAD_PKCS11_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 * std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Starts this build's server; `edit` may change its config text.
fn start_server(edit: impl FnOnce(String) -> String) -> Setup {
    // EST_LOAD_SIGNER=pkcs11 keeps the PAI key in a SoftHSM2 token (the PKCS#11 signer).
    let key = match std::env::var("EST_LOAD_SIGNER").as_deref() {
        Ok("pkcs11") => Key::Pkcs11 {
            sessions: pkcs11_sessions(),
        },
        _ => Key::File,
    };
    // EST_LOAD_SERVER_BIN=path runs another build of the server instead (to compare builds).
    match std::env::var_os("EST_LOAD_SERVER_BIN") {
        Some(bin) => start_server_of(Some(std::path::Path::new(&bin)), key, edit),
        None => start_server_of(None, key, edit),
    }
}

/// Starts a server: this build's, or the binary `other` (another build, which makes its
/// development PKI with its own `init-dev`, so that its config is one it accepts). The start
/// fails at once, with the end of the server's log, if the server exits instead of listening.
fn start_server_of(
    other: Option<&std::path::Path>,
    key: Key,
    edit: impl FnOnce(String) -> String,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_bin = match other {
        Some(bin) => {
            let out = std::process::Command::new(bin)
                .args(["init-dev", "--dir"])
                .arg(dir.path())
                .output()
                .unwrap();
            common::assert_success(&out);
            bin.to_path_buf()
        }
        None => {
            dev::init(dir.path(), false).unwrap();
            env!("CARGO_BIN_EXE_matter-est").into()
        }
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join(dev::files::CONFIG);
    let text = std::fs::read_to_string(&config).unwrap();
    // ... and the new-connection phase opens ~1,500 a second from it (a key another build may
    // not know).
    let lift = match other {
        None => "\nmax_new_connections_per_peer_per_sec = 1000000",
        Some(_) => "",
    };
    // All the load comes from one address (127.0.0.1): lift the per-peer connection cap above
    // the 1,000 keep-alive connections of the RSS phase.
    std::fs::write(
        &config,
        edit(
            text.replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
                .replace(
                    "tls_key = \"tls/server.key\"",
                    &format!("tls_key = \"tls/server.key\"\nmax_connections_per_peer = 2048{lift}"),
                )
                // The CRL and admin listeners on any free port.
                .replace("listen = \"127.0.0.1:8444\"", "listen = \"127.0.0.1:0\"")
                .replace("listen = \"127.0.0.1:8445\"", "listen = \"127.0.0.1:0\""),
        ),
    )
    .unwrap();
    let softhsm_conf = match key {
        Key::File => None,
        Key::Pkcs11 { sessions } => Some(pkcs11_signer(dir.path(), &config, sessions)),
    };
    let mut command = std::process::Command::new(&server_bin);
    if let Some(conf) = &softhsm_conf {
        command.env("SOFTHSM2_CONF", conf);
    }
    let log = dir.path().join("serve.log");
    let mut child = Server(
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = child.0.try_wait().unwrap() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            panic!(
                "{} serve exited ({status}) instead of listening on {addr}; its log ends:\n{}",
                server_bin.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let identity = identity_from_files(
        &dir.path().join(dev::files::GATEWAY_CERT),
        &dir.path().join(dev::files::GATEWAY_KEY),
    );
    let tls = client_config(
        &dir.path().join(dev::files::TLS_CA_CERT),
        Some(identity),
        ALL,
    );
    let anon = client_config(&dir.path().join(dev::files::TLS_CA_CERT), None, ALL);
    Setup {
        dir,
        child,
        addr,
        tls,
        anon,
    }
}

/// Enrolls `bodies` over `conns` keep-alive connections, back to back: enrollments/s.
fn keepalive(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    bodies: Vec<Vec<u8>>,
    conns: usize,
) -> f64 {
    let n = bodies.len();
    let work = Arc::new(std::sync::Mutex::new(bodies));
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (work, tls) = (work.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut c = Client::connect(addr, tls).await.unwrap();
                    loop {
                        let Some(body) = work.lock().unwrap().pop() else {
                            break;
                        };
                        post(&mut c, body).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// The mean ledger commit group of a server since it started, from its metrics on the admin
/// socket (`None` for a build without them, or with metrics off).
fn mean_commit_group(s: &Setup) -> Option<f64> {
    let (sum, count) = common::commit_group_totals(&s.dir.path().join("admin.sock"))?;
    Some(sum / count)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// `EST_LOAD_ROUNDS` (default 5, at least 3) and `EST_LOAD_N` (enrollments per server and
/// round, default 10,000) for the alternating phases (`EST_LOAD_METRICS_ROUNDS` and
/// `EST_LOAD_METRICS_N` are still read, for the runs written in docs/performance.md).
fn rounds_and_n() -> (usize, usize) {
    let env_num = |names: [&str; 2], default: usize| {
        names
            .iter()
            .find_map(|name| std::env::var(name).ok().and_then(|v| v.parse().ok()))
            .unwrap_or(default)
    };
    (
        env_num(["EST_LOAD_ROUNDS", "EST_LOAD_METRICS_ROUNDS"], 5).max(3),
        env_num(["EST_LOAD_N", "EST_LOAD_METRICS_N"], 10_000).max(100),
    )
}

/// Keep-alive enrollments/s of two servers in the same run: each round loads one, then the
/// other (the order flips every round, so neither always goes first into a quieter or busier
/// minute), with fresh CSRs each time. Prints every rate and the server's CPU per enrollment,
/// the medians, and the first server's difference in % against the second's.
fn alternate(
    rt: &tokio::runtime::Runtime,
    title: &str,
    servers: [(&str, &Setup); 2],
) -> (f64, f64) {
    let (rounds, n) = rounds_and_n();
    let conns = 64;
    println!(
        "{title}: {rounds} rounds of {n} keep-alive enrollments over {conns} connections on each of two servers, alternating"
    );
    // Warm-up, not counted: the first connections' handshakes, page cache, allocator arenas.
    for (name, s) in servers {
        let bodies = common::enroll_bodies(n / 10, &format!("warm-{name}"));
        keepalive(rt, s.addr, &s.tls, bodies, conns);
    }
    let mut rates = [Vec::new(), Vec::new()];
    let mut cpus = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round.is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        let mut line = format!("  round {}:", round + 1);
        for i in order {
            let (name, s) = servers[i];
            let bodies = common::enroll_bodies(n, &format!("{name}-{round}"));
            let cpu_before = common::cpu_secs(s.child.0.id());
            let rate = keepalive(rt, s.addr, &s.tls, bodies, conns);
            let cpu_us = (common::cpu_secs(s.child.0.id()) - cpu_before) * 1e6 / n as f64;
            line.push_str(&format!(" {name} {rate:>5.0} /s ({cpu_us:.0} µs CPU);"));
            rates[i].push(rate);
            cpus[i].push(cpu_us);
        }
        println!("{}", line.trim_end_matches(';'));
    }
    for (name, s) in servers {
        if let Some(mean) = mean_commit_group(s) {
            println!("  {name}: {mean:.1} DACs per ledger commit on average");
        }
    }
    let [(a, _), (b, _)] = servers;
    let (rate_a, rate_b) = (median(&rates[0]), median(&rates[1]));
    let (cpu_a, cpu_b) = (median(&cpus[0]), median(&cpus[1]));
    println!(
        "  medians: {a} {rate_a:.0} /s, {b} {rate_b:.0} /s: {a} is {:+.1} % against {b} (server CPU per enrollment: {a} {cpu_a:.0} µs, {b} {cpu_b:.0} µs, {:+.1} %)",
        (rate_a - rate_b) * 100.0 / rate_b,
        (cpu_a - cpu_b) * 100.0 / cpu_b
    );
    (rate_a, rate_b)
}

/// Issue 15: metrics on and off (`[admin] metrics = false`), alternately in one run.
fn metrics_on_vs_off(rt: &tokio::runtime::Runtime) {
    let on = start_server(|text| text);
    let off = start_server(|text| {
        let edited = text.replace("[admin]\n", "[admin]\nmetrics = false\n");
        assert_ne!(edited, text, "no [admin] table to turn metrics off in");
        edited
    });
    alternate(
        rt,
        "metrics on vs off (issue 15)",
        [("on", &on), ("off", &off)],
    );
}

/// This build's server against another build (`EST_LOAD_BASELINE_BIN`, its `matter-est`
/// binary), alternately in one run, each on its own development PKI and default config (issue
/// 14: the enrollment rate with the audit chain against the build before it).
fn builds(rt: &tokio::runtime::Runtime) {
    let Some(other) = std::env::var_os("EST_LOAD_BASELINE_BIN") else {
        panic!("phase builds: set EST_LOAD_BASELINE_BIN to the other build's matter-est binary");
    };
    // EST_LOAD_SERVER_BIN stands in for this build, as in the other phases.
    let this_bin = std::env::var_os("EST_LOAD_SERVER_BIN");
    let this = start_server_of(
        this_bin.as_deref().map(std::path::Path::new),
        Key::File,
        |t| t,
    );
    let baseline = start_server_of(Some(std::path::Path::new(&other)), Key::File, |text| text);
    println!("baseline: {}", std::path::Path::new(&other).display());
    alternate(
        rt,
        "this build vs the baseline build",
        [("this", &this), ("baseline", &baseline)],
    );
}

/// Issue 13: SoftHSM2's raw `C_Sign` rate and the keep-alive rates of a server with the PAI key
/// in a SoftHSM2 token and of one with it in a file, in one run: raw rate, then the two servers
/// alternately, then the raw rate again. The target: the PKCS#11 server at 80 % of the lower of
/// the raw rate and the file-signer server's rate.
fn pkcs11(rt: &tokio::runtime::Runtime) {
    let hsm = start_server_of(
        None,
        Key::Pkcs11 {
            sessions: pkcs11_sessions(),
        },
        |text| text,
    );
    let file = start_server_of(None, Key::File, |text| text);
    let raw = || raw_sign_rate(&hsm.dir.path().join("softhsm"));
    let raw_before = raw();
    println!("SoftHSM2 raw C_Sign (CKM_ECDSA, cryptoki, one session per core): {raw_before:.0} /s");
    let (rate_hsm, rate_file) = alternate(
        rt,
        "PKCS#11 (SoftHSM2) vs file signer (issue 13)",
        [("pkcs11", &hsm), ("file", &file)],
    );
    let raw_after = raw();
    println!("SoftHSM2 raw C_Sign again: {raw_after:.0} /s");
    let reference = rate_file.min(raw_before.min(raw_after));
    println!(
        "  the PKCS#11 server reaches {:.0} % of the lower of the file signer's rate and the raw C_Sign rate ({reference:.0} /s; target 80 %)",
        rate_hsm * 100.0 / reference
    );
}

/// Set in the child that measures the raw `C_Sign` rate: the SoftHSM2 directory. SoftHSM2 reads
/// `SOFTHSM2_CONF` at `C_Initialize` only, so the measurement runs in a process of its own.
const RAW_SIGN_DIR: &str = "EST_LOAD_RAW_SIGN_DIR";

/// SoftHSM2's raw `C_Sign` rate on the server's token (in `dir`): this program re-executed.
fn raw_sign_rate(dir: &std::path::Path) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(RAW_SIGN_DIR, dir)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .output()
        .unwrap();
    common::assert_success(&out);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// In the child: signs SHA-256-sized digests with raw CKM_ECDSA on the server's key ("pai" in
/// token "load"), one session and thread per core, for about two seconds, three times; prints
/// the best rate (other work on the machine only slows a run).
fn raw_sign_child(dir: &std::path::Path) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let ctx = Pkcs11::new(common::hsm::module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let pin = std::fs::read_to_string(dir.join("user.pin")).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == "load")
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = 10_000;
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| {
                    let session = ctx.open_ro_session(slot).unwrap();
                    let pin = AuthPin::from(pin.trim().to_string());
                    // CKR_USER_ALREADY_LOGGED_IN for every session after the first.
                    let _ = session.login(UserType::User, Some(&pin));
                    let key = session
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Label(b"pai".to_vec()),
                        ])
                        .unwrap()[0];
                    for i in 0..per_thread {
                        let digest = [i as u8; 32];
                        session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                    }
                });
            }
        });
        best = best.max((cores * per_thread) as f64 / start.elapsed().as_secs_f64());
    }
    println!("{best}");
}

fn main() {
    if let Some(dir) = std::env::var_os(RAW_SIGN_DIR) {
        raw_sign_child(std::path::Path::new(&dir));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // EST_LOAD_PHASES=keepalive (say) runs only the named phases: new, keepalive, latency, rss,
    // and metrics, builds and pkcs11 (not in the default set).
    let phases =
        std::env::var("EST_LOAD_PHASES").unwrap_or_else(|_| "new,keepalive,latency,rss".into());
    let run = |p: &str| phases.split(',').any(|x| x == p);
    let cores = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1);
    println!(
        "machine: {cores} cores shared by the server and this load generator; release build; info logs to /dev/null"
    );
    if run("metrics") {
        metrics_on_vs_off(&rt);
    }
    if run("builds") {
        builds(&rt);
    }
    if run("pkcs11") {
        pkcs11(&rt);
    }
    if !["new", "keepalive", "latency", "rss"]
        .iter()
        .any(|p| run(p))
    {
        return;
    }
    let Setup {
        dir: _dir,
        child,
        addr,
        tls,
        anon,
    } = start_server(|text| text);

    // 1. New connection per enrollment (full TLS 1.3 handshake with a client certificate).
    let (n_new, conc_new) = (if run("new") { 4000 } else { 0 }, 32);
    let work = Arc::new(std::sync::Mutex::new(common::enroll_bodies(
        n_new, "load-new",
    )));
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..conc_new)
            .map(|_| {
                let (work, tls) = (work.clone(), tls.clone());
                tokio::spawn(async move {
                    loop {
                        let Some(body) = work.lock().unwrap().pop() else {
                            break;
                        };
                        let mut c = Client::connect(addr, tls.clone()).await.unwrap();
                        post(&mut c, body).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let new_rate = n_new as f64 / start.elapsed().as_secs_f64();
    println!(
        "new-connection enrollments:  {new_rate:>7.0} /s  ({n_new} over {conc_new} concurrent clients)"
    );

    // 2. Keep-alive: 64 connections, back to back.
    let (n_ka, conns) = (if run("keepalive") { 40_000 } else { 0 }, 64);
    let bodies = common::enroll_bodies(n_ka, "load-ka");
    let cpu_before = common::cpu_secs(child.0.id());
    let own_before = common::cpu_secs(std::process::id());
    let io_before = writer_io(child.0.id());
    let ka_rate = if n_ka > 0 {
        keepalive(&rt, addr, &tls, bodies, conns)
    } else {
        0.0
    };
    println!("keep-alive enrollments:      {ka_rate:>7.0} /s  ({n_ka} over {conns} connections)");
    // The server's CPU per enrollment: steadier than the rate on a VM with busy neighbours.
    if n_ka > 0 {
        let cpu = common::cpu_secs(child.0.id()) - cpu_before;
        let own = common::cpu_secs(std::process::id()) - own_before;
        println!(
            "  server CPU per keep-alive enrollment: {:.0} µs (user + system, all threads); load generator {:.0} µs",
            cpu * 1e6 / n_ka as f64,
            own * 1e6 / n_ka as f64
        );
        let io = writer_io(child.0.id());
        println!(
            "  ledger writer per keep-alive enrollment: {:.1} KiB in {:.2} write calls",
            (io.0 - io_before.0) as f64 / 1024.0 / n_ka as f64,
            (io.1 - io_before.1) as f64 / n_ka as f64
        );
    }

    // 3. Latency at half the 5,000/s target (issue 3: "p99 under 10 ms at half that rate"),
    // paced (open loop per connection), after the keep-alive burst has settled: a percentile is a
    // steady-state figure, and right after 40,000 back-to-back commits this VM's disk still
    // answers fsyncs slowly for a few seconds (measured: p99 8–24 ms then, 8–11 ms after 10 s).
    // EST_LOAD_LATENCY_RATE and EST_LOAD_SETTLE_SECS change both.
    if ka_rate > 0.0 && run("latency") {
        let settle = std::env::var("EST_LOAD_SETTLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        std::thread::sleep(Duration::from_secs(settle));
    }
    let target: f64 = std::env::var("EST_LOAD_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2500.0);
    let secs = if run("latency") { 5.0 } else { 0.0 };
    let n_lat = (target * secs) as usize;
    let per_conn = n_lat / conns;
    let interval = Duration::from_secs_f64(conns as f64 / target.max(1.0));
    // One more body per connection for its untimed first request.
    let sets: Vec<Vec<Vec<u8>>> = (0..conns)
        .map(|i| common::enroll_bodies(per_conn + 1, &format!("load-lat{i}")))
        .collect();
    let all_ready = Arc::new(tokio::sync::Barrier::new(conns));
    let latencies = rt.block_on(async {
        let tasks: Vec<_> = sets
            .into_iter()
            .enumerate()
            .map(|(i, mut set)| {
                let tls = tls.clone();
                let all_ready = all_ready.clone();
                tokio::spawn(async move {
                    // Timing starts once every connection is open and has made its first request
                    // (the server checks a connection's client chain then): the figure is the
                    // paced steady state, not 64 TLS handshakes landing at once. When each
                    // connection started its clock as soon as it was open, its first requests
                    // queued behind the other connections' handshakes: 35–56 of the ~125
                    // requests over the p99, up to 36 ms (docs/performance.md).
                    let mut c = Client::connect(addr, tls).await.unwrap();
                    post(&mut c, set.pop().unwrap()).await;
                    all_ready.wait().await;
                    tokio::time::sleep(interval.mul_f64(i as f64 / conns as f64)).await;
                    let mut tick = tokio::time::interval(interval);
                    let mut out = Vec::new();
                    for body in set {
                        tick.tick().await;
                        let t = Instant::now();
                        post(&mut c, body).await;
                        out.push(t.elapsed());
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let mut sorted = latencies;
    sorted.sort();
    if !sorted.is_empty() {
        println!(
            "latency at {target:.0}/s:         p50 {:.2} ms, p99 {:.2} ms ({} requests)",
            percentile(&sorted, 0.50).as_secs_f64() * 1e3,
            percentile(&sorted, 0.99).as_secs_f64() * 1e3,
            sorted.len()
        );
    }

    // 4. RSS with 1,000 open keep-alive connections.
    let (idle_rss, _) = rss_kib(child.0.id());
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..if run("rss") { 1000 } else { 0 } {
            let mut c = Client::connect(addr, anon.clone()).await.unwrap();
            assert_eq!(c.get("/.well-known/est/cacerts").await.status, 200);
            held.push(c);
        }
        held
    });
    let (rss, hwm) = rss_kib(child.0.id());
    if run("rss") {
        println!(
            "server RSS: {:.1} MiB with 1,000 open keep-alive connections (before opening them: {:.1} MiB; peak over the run: {:.1} MiB)",
            rss as f64 / 1024.0,
            idle_rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    drop(held);
    drop(child);
}

/// The server process, stopped however the benchmark ends (a panic included).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
