// The abuse scenario shared by tests/abuse.rs and benches/abuse.rs (issue 17): a gateway
// enrolling on 127.0.0.2 while strangers on other loopback addresses abuse the server. Included
// with `include!` so that each user compiles it with its own `common` module in scope.

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

/// How hard to push.
pub struct Plan {
    /// Idle half-open connections (a TLS record header, then nothing), 200 per address.
    pub slowloris: usize,
    /// Length of the baseline and of the abuse phase.
    pub seconds: u64,
    /// The gateway's keep-alive connections.
    pub gateway_connections: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            slowloris: 1000,
            seconds: 10,
            gateway_connections: 8,
        }
    }
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    pub gateway_baseline: u64,
    pub gateway_during: u64,
    pub gateway_failures: u64,
    pub seconds: u64,
    pub slowloris_open: u64,
    pub handshakes: u64,
    pub body_refusals: u64,
    pub header_refusals: u64,
    pub garbage_refusals: u64,
    pub peak_rss_mib: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = |n: u64| n as f64 / self.seconds as f64;
        write!(
            f,
            "gateway: {:.0}/s alone, {:.0}/s under abuse ({:.0}%), {} failures; abuse: {} idle \
             connections held, {} TLS handshakes, {} 10 MiB bodies refused, {} header floods \
             refused, {} invalid CSRs refused; server peak RSS {:.1} MiB",
            rate(self.gateway_baseline),
            rate(self.gateway_during),
            100.0 * self.gateway_during as f64 / self.gateway_baseline.max(1) as f64,
            self.gateway_failures,
            self.slowloris_open,
            self.handshakes,
            self.body_refusals,
            self.header_refusals,
            self.garbage_refusals,
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

/// Enrolls fresh devices on `connections` keep-alive connections until `stop`; returns
/// (successes, failures).
async fn gateway(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    connections: usize,
    stop: Arc<AtomicBool>,
    tag: &'static str,
) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (tls, stop, ok, failed) = (tls.clone(), stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = tcp_from("127.0.0.2", addr).await.unwrap();
            let mut client = Client::over(tcp, tls).await.unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let cn = format!("gw-{tag}-{c}-{i}");
                i += 1;
                let (der, _) = csr(&subject(Some(&cn), Some("FFF1"), Some("8000")));
                let r = client.enroll("/.well-known/est/dev/simpleenroll", &der).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
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

/// Runs the scenario against a fresh `matter-est serve` process on its default limits.
pub fn run(plan: &Plan) -> Report {
    let env = DevEnv::new(|t| t.replace("127.0.0.1:8443", "127.0.0.1:0"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .env("RUST_LOG", "warn,matter_est=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
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
    let ca = env.path(dev::files::TLS_CA_CERT);
    let gw_tls = client_config(
        &ca,
        Some(identity_from_files(
            &env.path(dev::files::GATEWAY_CERT),
            &env.path(dev::files::GATEWAY_KEY),
        )),
        ALL,
    );
    let anon = client_config(&ca, None, ALL);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut report = Report {
        seconds: plan.seconds,
        ..Report::default()
    };
    let phase = Duration::from_secs(plan.seconds);
    runtime.block_on(async {
        // Baseline: the gateway alone.
        let stop = Arc::new(AtomicBool::new(false));
        let timer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                stop.store(true, Ordering::Relaxed);
            })
        };
        let (ok, failed) =
            gateway(addr, gw_tls.clone(), plan.gateway_connections, stop, "alone").await;
        timer.await.unwrap();
        report.gateway_baseline = ok;
        report.gateway_failures += failed;

        // The abusers.
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Vec<Arc<AtomicU64>> = (0..6).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let mut abusers = Vec::new();
        let mut idle = Vec::new();
        for i in 0..plan.slowloris {
            let from = format!("127.0.0.{}", 10 + i / 200);
            if let Ok(mut tcp) = tcp_from(&from, addr).await {
                // The start of a TLS record, then silence until the handshake deadline.
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16, 0x03, 0x01]).await;
                idle.push(tcp);
                counters[0].fetch_add(1, Ordering::Relaxed);
            }
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
            let (stop, n) = (stop.clone(), counters[4].clone());
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
                        Ok(Ok(r)) => panic!("invalid CSR answered {}", r.status),
                        _ => return,
                    }
                }
            }));
        }

        // The gateway again, under abuse.
        let gw_stop = Arc::new(AtomicBool::new(false));
        let timer = {
            let gw_stop = gw_stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                gw_stop.store(true, Ordering::Relaxed);
            })
        };
        let (ok, failed) =
            gateway(addr, gw_tls.clone(), plan.gateway_connections, gw_stop, "abused").await;
        timer.await.unwrap();
        stop.store(true, Ordering::Relaxed);
        for a in abusers {
            let _ = a.await;
        }
        report.gateway_during = ok;
        report.gateway_failures += failed;
        report.slowloris_open = counters[0].load(Ordering::Relaxed);
        report.handshakes = counters[1].load(Ordering::Relaxed);
        report.body_refusals = counters[2].load(Ordering::Relaxed);
        report.header_refusals = counters[3].load(Ordering::Relaxed);
        report.garbage_refusals = counters[4].load(Ordering::Relaxed);
        drop(idle);
    });
    report.peak_rss_mib = peak_rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    report
}
