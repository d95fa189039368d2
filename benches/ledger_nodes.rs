//! Keep-alive enrollments/s on each ledger backend, in one run (issue 16): one `serve` node on
//! redb, one node on PostgreSQL, two nodes on one PostgreSQL, the database a local server
//! started here (tests/common/pg.rs). Also the ledger commit latency p50/p99 each node reports
//! (`matter_est_ledger_commit_duration_seconds`, read from the admin socket's /metrics: a
//! bucket's upper bound). Run: `cargo bench --bench ledger_nodes`
//! (LEDGER_NODES_ENROLLMENTS, default 1,200 per setup; LEDGER_NODES_CONNECTIONS, default 16;
//! LEDGER_NODES_PG_OPTIONS, more PostgreSQL server options such as `-c shared_buffers=16MB`).
//! Each setup also prints where the CPU went per enrollment (the nodes, PostgreSQL's processes,
//! this load generator; from /proc, so Linux only) and the mean DACs per ledger commit.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: benchmark harness; shares test helpers

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::est::{ALL, Client, client_config, identity_from_files};
use matter_est::profile::dev;

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";

struct Node(Child, SocketAddr, PathBuf);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `serve` on `config`, listening on a free port, its admin socket at `socket`.
fn start(config: &Path, socket: &Path) -> Node {
    let port = free_port();
    let text = std::fs::read_to_string(config).unwrap();
    let text = text
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .replace(
            "tls_key = \"tls/server.key\"",
            "tls_key = \"tls/server.key\"\nmax_connections_per_peer = 2048\n\
                     max_new_connections_per_peer_per_sec = 1000000",
        );
    let text = if text.contains("socket = ") {
        text
    } else {
        text.replace(
            "\n[admin]\n",
            &format!("\n[admin]\nsocket = \"{}\"\n", socket.display()),
        )
    };
    let own = config.with_extension(format!("{port}.toml"));
    std::fs::write(&own, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--config"])
        .arg(&own)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Node(child, addr, socket.to_path_buf())
}

/// Cumulative bucket counts of the commit-duration histogram on `socket`'s /metrics.
fn commit_buckets(socket: &Path) -> Vec<(f64, u64)> {
    common::metrics_text(socket)
        .lines()
        .filter(|l| l.starts_with("matter_est_ledger_commit_duration_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// CPU seconds of every running process named `postgres` (the server and its backends).
fn postgres_cpu_secs() -> f64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|e| common::cpu_secs(e.file_name().to_string_lossy()))
        .sum()
}

/// The upper bound of the bucket that holds quantile `p` of the summed histograms.
fn quantile(hists: &[Vec<(f64, u64)>], p: f64) -> f64 {
    let mut sum: Vec<(f64, u64)> = hists[0].clone();
    for h in &hists[1..] {
        for (s, (_, c)) in sum.iter_mut().zip(h) {
            s.1 += c;
        }
    }
    let total = sum.last().map_or(0, |b| b.1);
    let want = (total as f64 * p).ceil() as u64;
    sum.iter()
        .find(|(_, c)| *c >= want)
        .map_or(f64::NAN, |b| b.0)
}

/// Keep-alive load over `conns` connections spread across `nodes`: enrollments/s.
fn load(nodes: &[&Node], env: &Path, conns: usize, n: usize, tag: &str) -> f64 {
    let identity = identity_from_files(
        &env.join(dev::files::GATEWAY_CERT),
        &env.join(dev::files::GATEWAY_KEY),
    );
    let tls = client_config(&env.join(dev::files::TLS_CA_CERT), Some(identity), ALL);
    let all = common::enroll_bodies(n, &format!("b-{tag}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.1).collect();
    rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..conns {
            clients.push(
                Client::connect(addrs[i % addrs.len()], tls.clone())
                    .await
                    .unwrap(),
            );
        }
        // Warm-up: one enrollment per connection is not counted.
        let warm = common::enroll_bodies(conns, &format!("b-{tag}-warm"));
        let mut tasks = Vec::new();
        for (mut c, body) in clients.into_iter().zip(warm) {
            tasks.push(tokio::spawn(async move {
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
                c
            }));
        }
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.unwrap());
        }
        let per = n / conns;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (i, mut c) in clients.into_iter().enumerate() {
            let mine: Vec<Vec<u8>> = all[i * per..(i + 1) * per].to_vec();
            tasks.push(tokio::spawn(async move {
                for body in mine {
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
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (per * conns) as f64 / start.elapsed().as_secs_f64()
    })
}

fn main() {
    let n: usize = std::env::var("LEDGER_NODES_ENROLLMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_200);
    let conns: usize = std::env::var("LEDGER_NODES_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    // More server options after tests/common/pg.rs's own (a later `-c` wins): to compare
    // settings in one build, e.g. LEDGER_NODES_PG_OPTIONS="-c shared_buffers=16MB".
    let server = match std::env::var("LEDGER_NODES_PG_OPTIONS") {
        Ok(options) => common::pg::PgServer::start_with(|_| options),
        Err(_) => common::pg::PgServer::start(),
    };
    let mut rows = Vec::new();

    for setup in [
        "one node, redb",
        "one node, PostgreSQL",
        "two nodes, one PostgreSQL",
    ] {
        let dir = tempfile::tempdir().unwrap();
        dev::init(dir.path(), false).unwrap();
        let config = dir.path().join(dev::files::CONFIG);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("listen = \"127.0.0.1:8444\"", "listen = \"127.0.0.1:0\"")
            .replace("listen = \"127.0.0.1:8445\"", "listen = \"127.0.0.1:0\"");
        let text = if setup.contains("PostgreSQL") {
            let db = server.create_database();
            common::pg::adopt_to(text, dir.path(), server.port, &db).replace(
                &format!("socket = \"{}\"\n", dir.path().join("admin.sock").display()),
                "",
            )
        } else {
            text
        };
        std::fs::write(&config, text).unwrap();
        let count = if setup.starts_with("two") { 2 } else { 1 };
        let nodes: Vec<Node> = (0..count)
            .map(|i| start(&config, &dir.path().join(format!("admin{i}.sock"))))
            .collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        let node_cpu = || -> f64 { nodes.iter().map(|n| common::cpu_secs(n.0.id())).sum() };
        let before = (node_cpu(), postgres_cpu_secs(), common::cpu_secs("self"));
        let rate = load(&refs, dir.path(), conns, n, &setup.replace(' ', ""));
        let after = (node_cpu(), postgres_cpu_secs(), common::cpu_secs("self"));
        // Per enrollment, the warm-up's one per connection included.
        let per = |a: f64, b: f64| (a - b) / (n + conns) as f64 * 1e6;
        let groups = nodes
            .iter()
            .filter_map(|n| common::commit_group_totals(&n.2))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let hists: Vec<_> = nodes.iter().map(|n| commit_buckets(&n.2)).collect();
        let (p50, p99) = (quantile(&hists, 0.5), quantile(&hists, 0.99));
        println!(
            "{setup}: {rate:.0} keep-alive enrollments/s ({conns} connections, {n} enrollments); \
             ledger commit p50 <= {:.1} ms, p99 <= {:.1} ms",
            p50 * 1e3,
            p99 * 1e3
        );
        println!(
            "  CPU per enrollment: nodes {:.0} µs, PostgreSQL {:.0} µs, load generator {:.0} µs; \
             {:.1} DACs per ledger commit",
            per(after.0, before.0),
            per(after.1, before.1),
            per(after.2, before.2),
            groups.0 / groups.1
        );
        rows.push((setup, rate));
        drop(nodes);
    }
    let redb = rows[0].1;
    for (setup, rate) in &rows[1..] {
        println!("{setup}: {:.0}% of one node on redb", rate / redb * 100.0);
    }
}
