//! Abuse while the line runs (issue 17): the rate a gateway keeps while strangers hold 1,000
//! idle connections, flood TLS handshakes, send 10 MiB bodies, flood headers and storm invalid
//! CSRs, against its rate alone; paced (a production line's steady rate, by default half the
//! unpaced rate measured alone in the same run) and unpaced (flat out); and the server's peak
//! RSS. The abusers run in a process of their own with a CPU quota (see tests/common/abuse.rs).
//! `cargo bench --bench abuse` (`ABUSE_SECONDS` sets each phase's length, default 10;
//! `ABUSE_RATE` the paced rate per second; `ABUSE_SERVER_LIMITS` lines for the server's
//! `[server]` table, e.g. `max_new_connections_per_peer_per_sec = 1000000` to compare a limit
//! against its default).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: benchmark harness; shares test helpers

#[path = "../tests/common/mod.rs"]
mod common;

pub mod abuse {
    include!("../tests/common/abuse.rs");
}

fn main() {
    // This binary, run again by `abuse::run` as the abusers' process, lands here.
    if abuse::abuser_mode() {
        return;
    }
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
    let report = abuse::run(
        &abuse::Plan {
            seconds: env("ABUSE_SECONDS").map_or(10, |s: f64| s as u64),
            paced_rate: env("ABUSE_RATE"),
            server_limits: std::env::var("ABUSE_SERVER_LIMITS").unwrap_or_default(),
            ..abuse::Plan::default()
        },
        &[],
    );
    println!(
        "machine: {} cores shared by the server, the gateway and the abusers' process; release \
         build; load average {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("{report}");
}
