// The abuse scenario shared by tests/abuse.rs and benches/abuse.rs (issue 17): a gateway
// enrolling on 127.0.0.2 while strangers on other loopback addresses abuse the server. Included
// with `include!` so that each user compiles it with its own `common` module in scope.
//
// Three processes stand in for three machines: the server (`matter-est serve`), the gateway
// (this process, its own tokio runtime) and the abusers (this same binary run again as a child
// in abuser mode, see `abuser_mode`). The abusers' process is put in a cgroup of its own with a
// CPU quota (cgroup v1 `cpu` controller, as root), so that generating the floods (client TLS
// handshakes, 10 MiB bodies) does not take the CPU that the gateway and the server need: in the
// field the abusers are other machines. Where no cgroup can be made it runs under `nice -n 19`
// instead; the report says which.

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::common::est::{ALL, Client, client_config, identity_from_files};
use super::common::{DevEnv, csr, subject};
use matter_est::profile::dev;

/// The longest an abuser waits for one answer before trying again (a refused request is
/// answered or closed at once; waiting longer would only measure the abuser).
const ABUSER_WAIT: Duration = Duration::from_secs(2);

/// The environment variable that puts this binary in abuser mode: its value is the server's
/// address, the CA, the gateway's certificate and key and the slowloris count, one a line.
const ABUSER_ENV: &str = "MATTER_EST_ABUSE_CHILD";

/// The abusers' CPU quota, in percent of one core (cgroup `cpu.cfs_quota_us` over
/// `cpu.cfs_period_us`): the CPU another machine's abusers would cost this one is none; half a
/// core still lets them open every slowloris connection and flood hundreds of TLS handshakes a
/// second.
const ABUSER_CPU_PERCENT: u64 = 50;

/// How hard to push.
pub struct Plan {
    /// Idle half-open connections (a TLS record header, then nothing), 200 per address.
    pub slowloris: usize,
    /// Length of each of the four gateway phases (unpaced and paced, alone and under abuse).
    pub seconds: u64,
    /// The gateway's keep-alive connections.
    pub gateway_connections: usize,
    /// The paced gateway's rate (enrollments per second); `None`: half of the unpaced rate
    /// measured alone in the same run.
    pub paced_rate: Option<f64>,
    /// Lines added to the server's `[server]` table (e.g. to compare a limit against its
    /// default); empty: the defaults.
    pub server_limits: String,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            slowloris: 1000,
            seconds: 10,
            gateway_connections: 8,
            paced_rate: None,
            server_limits: String::new(),
        }
    }
}

/// One phase of the gateway.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    pub ok: u64,
    pub failed: u64,
    /// Latency percentiles, ms. For the paced gateway measured from the request's scheduled
    /// start (a request started late because the one before it was slow counts the delay).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Phase {
    fn rate(&self, seconds: u64) -> f64 {
        self.ok as f64 / seconds as f64
    }
}

/// What the abusers did (counted in their own process).
#[derive(Debug, Default, Clone)]
pub struct AbuseCounts {
    pub slowloris_open: u64,
    pub handshakes: u64,
    pub body_refusals: u64,
    pub header_refusals: u64,
    pub garbage_refusals: u64,
    /// Invalid CSRs answered with anything but 400/401 (must stay 0).
    pub garbage_accepted: u64,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    pub seconds: u64,
    pub target_rate: f64,
    pub unpaced_alone: Phase,
    pub unpaced_abused: Phase,
    pub paced_alone: Phase,
    pub paced_abused: Phase,
    pub abuse: AbuseCounts,
    /// How the abusers' CPU was limited ("cgroup cpu quota 50% of one core" or "nice -n 19").
    pub abuser_cpu: String,
    pub peak_rss_mib: f64,
}

impl Report {
    pub fn gateway_failures(&self) -> u64 {
        self.unpaced_alone.failed
            + self.unpaced_abused.failed
            + self.paced_alone.failed
            + self.paced_abused.failed
    }

    /// The paced gateway's rate under abuse in percent of its rate alone.
    pub fn paced_percent(&self) -> f64 {
        100.0 * self.paced_abused.ok as f64 / self.paced_alone.ok.max(1) as f64
    }

    pub fn unpaced_percent(&self) -> f64 {
        100.0 * self.unpaced_abused.ok as f64 / self.unpaced_alone.ok.max(1) as f64
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.seconds;
        let line = |p: &Phase| {
            format!(
                "{:.0}/s (p50 {:.1} ms, p99 {:.1} ms)",
                p.rate(s),
                p.p50_ms,
                p.p99_ms
            )
        };
        writeln!(
            f,
            "paced gateway (target {:.0}/s = half the unpaced rate alone unless set): alone {}, \
             under abuse {} = {:.1}%",
            self.target_rate,
            line(&self.paced_alone),
            line(&self.paced_abused),
            self.paced_percent()
        )?;
        writeln!(
            f,
            "unpaced gateway (flat out): alone {}, under abuse {} = {:.1}%",
            line(&self.unpaced_alone),
            line(&self.unpaced_abused),
            self.unpaced_percent()
        )?;
        let a = &self.abuse;
        write!(
            f,
            "{} gateway failures; abusers ({}): {} idle connections held, {} TLS handshakes, {} \
             10 MiB bodies refused, {} header floods refused, {} invalid CSRs refused, {} \
             accepted; server peak RSS {:.1} MiB",
            self.gateway_failures(),
            self.abuser_cpu,
            a.slowloris_open,
            a.handshakes,
            a.body_refusals,
            a.header_refusals,
            a.garbage_refusals,
            a.garbage_accepted,
            self.peak_rss_mib
        )
    }
}

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(to).await
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Enrolls fresh devices on `connections` keep-alive connections for `length`. Unpaced
/// (`rate` `None`) each connection sends its next request as soon as the last is answered;
/// paced, request k is due at k / `rate` seconds after the start, spread over the connections
/// in turn, and is sent then (or at once if its connection is still busy with the last one).
async fn gateway(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    connections: usize,
    length: Duration,
    rate: Option<f64>,
    tag: &'static str,
) -> Phase {
    let mut clients = Vec::new();
    for _ in 0..connections {
        let tcp = tcp_from("127.0.0.2", addr).await.unwrap();
        clients.push(Client::over(tcp, tls.clone()).await.unwrap());
    }
    let start = tokio::time::Instant::now();
    let end = start + length;
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            for i in 0u64.. {
                let cn = format!("gw-{tag}-{c}-{i}");
                let (der, _) = csr(&subject(Some(&cn), Some("FFF1"), Some("8000")));
                let due = match rate {
                    Some(r) => {
                        let k = i * connections as u64 + c as u64;
                        start + Duration::from_secs_f64(k as f64 / r)
                    }
                    None => tokio::time::Instant::now(),
                };
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let r = client.enroll("/.well-known/est/dev/simpleenroll", &der).await;
                let done = tokio::time::Instant::now();
                if done > end {
                    // Answered after the phase: neither counted nor a failure.
                    break;
                }
                if r.status == 200 {
                    ok += 1;
                    latencies.push(done - due);
                } else {
                    failed += 1;
                }
            }
            (ok, failed, latencies)
        }));
    }
    let mut phase = Phase::default();
    let mut all = Vec::new();
    for t in tasks {
        let (ok, failed, latencies) = t.await.unwrap();
        phase.ok += ok;
        phase.failed += failed;
        all.extend(latencies);
    }
    all.sort();
    phase.p50_ms = percentile_ms(&all, 0.50);
    phase.p99_ms = percentile_ms(&all, 0.99);
    phase
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The abusers' process: killed and waited for, and its cgroup removed, when dropped (also
/// when the test panics).
struct Abusers {
    child: std::process::Child,
    cgroup: Option<std::path::PathBuf>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Abusers {
    /// Runs this binary again (`args`: what makes it reach `abuser_mode`) against the server at
    /// `addr`, in a cgroup of its own if one can be made, and waits until its idle connections
    /// are open.
    fn start(args: &[&str], spec: String) -> (Self, String) {
        let exe = std::env::current_exe().unwrap();
        let cgroup = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/cpu/matter-est-abuse-{}",
            std::process::id()
        ));
        let quota = ABUSER_CPU_PERCENT * 1000; // of the default 100,000 µs period
        let cgroup = (std::fs::create_dir(&cgroup).is_ok()
            && std::fs::write(cgroup.join("cpu.cfs_period_us"), "100000").is_ok()
            && std::fs::write(cgroup.join("cpu.cfs_quota_us"), quota.to_string()).is_ok())
        .then_some(cgroup.clone())
        .or_else(|| {
            let _ = std::fs::remove_dir(&cgroup);
            None
        });
        let mut command = if cgroup.is_some() {
            std::process::Command::new(&exe)
        } else {
            let mut nice = std::process::Command::new("nice");
            nice.args(["-n", "19"]).arg(&exe);
            nice
        };
        let mut child = command
            .args(args)
            .env(ABUSER_ENV, spec)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let how = match &cgroup {
            // cgroup.procs moves every thread of the process (its runtime's workers start
            // later, in its main, and inherit the cgroup anyway).
            Some(dir) => {
                std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
                format!("own process, cgroup cpu quota {ABUSER_CPU_PERCENT}% of one core")
            }
            None => "own process, nice -n 19 (no cgroup could be made)".to_string(),
        };
        let (send, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let abusers = Self {
            child,
            cgroup,
            lines,
        };
        abusers.expect("ABUSE-READY", Duration::from_secs(60));
        (abusers, how)
    }

    /// What follows `prefix` on the first line from the child that has it.
    fn expect(&self, prefix: &str, wait: Duration) -> String {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("the abusers' process did not say {prefix}: {e}"));
            // Not always at the start of a line: libtest's "test NAME ... " may come first.
            if let Some((_, rest)) = line.split_once(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    /// Stops the abusers (closes their stdin) and returns their counts.
    fn stop(mut self) -> AbuseCounts {
        drop(self.child.stdin.take());
        let counts = self.expect("ABUSE-COUNTS", Duration::from_secs(30));
        let n: Vec<u64> = counts
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        AbuseCounts {
            slowloris_open: n[0],
            handshakes: n[1],
            body_refusals: n[2],
            header_refusals: n[3],
            garbage_refusals: n[4],
            garbage_accepted: n[5],
        }
    }
}

impl Drop for Abusers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.cgroup {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// In the abusers' child process (`MATTER_EST_ABUSE_CHILD` set): runs the abusers until stdin
/// closes, prints their counts and returns true. Elsewhere returns false at once. Call it first
/// thing in the binary that `run` is given the arguments of.
pub fn abuser_mode() -> bool {
    let Ok(spec) = std::env::var(ABUSER_ENV) else {
        return false;
    };
    let spec: Vec<&str> = spec.lines().collect();
    let addr: SocketAddr = spec[0].parse().unwrap();
    let ca = std::path::Path::new(spec[1]);
    let gw_tls = client_config(
        ca,
        Some(identity_from_files(
            std::path::Path::new(spec[2]),
            std::path::Path::new(spec[3]),
        )),
        ALL,
    );
    let anon = client_config(ca, None, ALL);
    let slowloris: usize = spec[4].parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let counts = runtime.block_on(abuse(addr, anon, gw_tls, slowloris));
    println!(
        "ABUSE-COUNTS {} {} {} {} {} {}",
        counts.slowloris_open,
        counts.handshakes,
        counts.body_refusals,
        counts.header_refusals,
        counts.garbage_refusals,
        counts.garbage_accepted
    );
    std::io::stdout().flush().unwrap();
    true
}

/// Holds `slowloris` idle connections, says ABUSE-READY, floods until stdin closes.
async fn abuse(
    addr: SocketAddr,
    anon: Arc<rustls::ClientConfig>,
    gw_tls: Arc<rustls::ClientConfig>,
    slowloris: usize,
) -> AbuseCounts {
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..6).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut abusers = Vec::new();
    let mut idle = Vec::new();
    for i in 0..slowloris {
        let from = format!("127.0.0.{}", 10 + i / 200);
        if let Ok(mut tcp) = tcp_from(&from, addr).await {
            // The start of a TLS record, then silence until the handshake deadline.
            let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16, 0x03, 0x01]).await;
            idle.push(tcp);
            counters[0].fetch_add(1, Ordering::Relaxed);
        }
    }
    println!("ABUSE-READY");
    std::io::stdout().flush().unwrap();
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.store(true, Ordering::Relaxed);
        });
    }
    for _ in 0..2 {
        let (stop, n, anon) = (stop.clone(), counters[1].clone(), anon.clone());
        abusers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(tcp) = tcp_from("127.0.0.20", addr).await
                    && let Ok(Ok(_)) =
                        tokio::time::timeout(ABUSER_WAIT, Client::over(tcp, anon.clone())).await
                {
                    n.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Out of ports (TIME_WAIT) or refused: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    {
        let (stop, n, anon) = (stop.clone(), counters[2].clone(), anon.clone());
        abusers.push(tokio::spawn(async move {
            let big = vec![b'A'; 10 * 1024 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tcp_from("127.0.0.21", addr).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Ok(mut c) = Client::over(tcp, anon.clone()).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let r = tokio::time::timeout(
                    ABUSER_WAIT,
                    c.request(
                        "POST",
                        "/.well-known/est/dev/simpleenroll",
                        &[("Content-Type", "application/pkcs10")],
                        big.clone(),
                    ),
                )
                .await;
                if !matches!(r, Ok(Ok(r)) if r.status == 200) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    {
        let (stop, n, anon) = (stop.clone(), counters[3].clone(), anon.clone());
        abusers.push(tokio::spawn(async move {
            let value = "x".repeat(100);
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tcp_from("127.0.0.22", addr).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Ok(mut c) = Client::over(tcp, anon.clone()).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let names: Vec<String> = (0..500).map(|i| format!("X-Flood-{i}")).collect();
                let headers: Vec<(&str, &str)> =
                    names.iter().map(|h| (h.as_str(), value.as_str())).collect();
                let r = tokio::time::timeout(
                    ABUSER_WAIT,
                    c.request("GET", "/.well-known/est/cacerts", &headers, Vec::new()),
                )
                .await;
                if !matches!(r, Ok(Ok(r)) if r.status == 200) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for (from, tls) in [("127.0.0.23", anon.clone()), ("127.0.0.24", gw_tls.clone())] {
        let (stop, n, bad) = (stop.clone(), counters[4].clone(), counters[5].clone());
        abusers.push(tokio::spawn(async move {
            let Ok(tcp) = tcp_from(from, addr).await else {
                return;
            };
            let Ok(mut c) = Client::over(tcp, tls).await else {
                return;
            };
            let mut junk = 0u8;
            while !stop.load(Ordering::Relaxed) {
                junk = junk.wrapping_add(1);
                let body = vec![junk; 600];
                match tokio::time::timeout(
                    ABUSER_WAIT,
                    c.request(
                        "POST",
                        "/.well-known/est/dev/simpleenroll",
                        &[("Content-Type", "application/pkcs10")],
                        body,
                    ),
                )
                .await
                {
                    Ok(Ok(r)) if r.status == 400 || r.status == 401 => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => return,
                }
            }
        }));
    }
    for a in abusers {
        let _ = a.await;
    }
    drop(idle);
    let get = |i: usize| counters[i].load(Ordering::Relaxed);
    AbuseCounts {
        slowloris_open: get(0),
        handshakes: get(1),
        body_refusals: get(2),
        header_refusals: get(3),
        garbage_refusals: get(4),
        garbage_accepted: get(5),
    }
}

/// Runs the scenario against a fresh `matter-est serve` process on its default limits (and
/// `plan.server_limits`).
/// `abuser_args`: the arguments that make this binary, run again, call `abuser_mode` first.
/// Phases of `plan.seconds` each: the unpaced gateway alone, the paced gateway alone, then with
/// the abusers running the paced gateway and the unpaced gateway again.
pub fn run(plan: &Plan, abuser_args: &[&str]) -> Report {
    let env = DevEnv::new(|t| {
        t.replace("127.0.0.1:8443", "127.0.0.1:0").replace(
            "tls_key = \"tls/server.key\"",
            &format!("tls_key = \"tls/server.key\"\n{}", plan.server_limits),
        )
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .env("RUST_LOG", "warn,matter_est=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr: SocketAddr = lines
        .by_ref()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["fields"]["message"] == "matter-est serving")
        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_string))
        .unwrap()
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Server(child);
    let ca = env.path(dev::files::TLS_CA_CERT);
    let (gw_cert, gw_key) = (
        env.path(dev::files::GATEWAY_CERT),
        env.path(dev::files::GATEWAY_KEY),
    );
    let gw_tls = client_config(&ca, Some(identity_from_files(&gw_cert, &gw_key)), ALL);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let phase = Duration::from_secs(plan.seconds);
    let n = plan.gateway_connections;
    let mut report = Report {
        seconds: plan.seconds,
        ..Report::default()
    };
    report.unpaced_alone = runtime.block_on(gateway(addr, gw_tls.clone(), n, phase, None, "u0"));
    report.target_rate = plan
        .paced_rate
        .unwrap_or(report.unpaced_alone.rate(plan.seconds) / 2.0)
        .max(1.0);
    let rate = Some(report.target_rate);
    report.paced_alone = runtime.block_on(gateway(addr, gw_tls.clone(), n, phase, rate, "p0"));
    let spec = format!(
        "{addr}\n{}\n{}\n{}\n{}",
        ca.display(),
        gw_cert.display(),
        gw_key.display(),
        plan.slowloris
    );
    let (abusers, how) = Abusers::start(abuser_args, spec);
    report.abuser_cpu = how;
    report.paced_abused = runtime.block_on(gateway(addr, gw_tls.clone(), n, phase, rate, "p1"));
    report.unpaced_abused = runtime.block_on(gateway(addr, gw_tls, n, phase, None, "u1"));
    report.abuse = abusers.stop();
    report.peak_rss_mib = peak_rss_mib(server.0.id());
    report
}
