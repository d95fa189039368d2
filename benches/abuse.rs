//! Abuse while the line runs (issue 17): the rate a gateway keeps while strangers hold 1,000
//! idle connections, flood TLS handshakes, send 10 MiB bodies, flood headers and storm invalid
//! CSRs, against its rate alone; and the server's peak RSS. `cargo bench --bench abuse`
//! (`ABUSE_SECONDS` sets each phase's length, default 10).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: benchmark harness; shares test helpers

#[path = "../tests/common/mod.rs"]
mod common;

pub mod abuse {
    include!("../tests/common/abuse.rs");
}

fn main() {
    let seconds = std::env::var("ABUSE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let report = abuse::run(&abuse::Plan {
        seconds,
        ..abuse::Plan::default()
    });
    println!(
        "machine: {} cores shared by the server, the gateway and the abusers; release build",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{report}");
}
