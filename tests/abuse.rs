//! Issue 17: abuse while the line runs. A gateway (127.0.0.2) enrolls on keep-alive connections
//! while strangers on other loopback addresses hold idle half-open connections (slowloris),
//! flood TLS handshakes, send 10 MiB bodies, flood headers and storm the server with invalid
//! CSRs. The gateway is served throughout (every one of its requests succeeds), the abusers get
//! their refusals, and the server's memory stays bounded. Bounded in count and time; loopback
//! only. The rate the gateway keeps is measured by `cargo bench --bench abuse` (speed is
//! measured in benchmarks, not timed tests).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

pub mod abuse {
    include!("common/abuse.rs");
}

#[test]
fn the_gateway_is_served_while_strangers_abuse_the_server() {
    let report = abuse::run(&abuse::Plan {
        slowloris: 600,
        seconds: 4,
        ..abuse::Plan::default()
    });
    println!("{report}");
    assert!(report.gateway_during > 0, "{report}");
    assert_eq!(report.gateway_failures, 0, "{report}");
    assert!(report.body_refusals > 0, "{report}");
    assert!(report.garbage_refusals > 0, "{report}");
    assert!(report.handshakes > 0, "{report}");
    // 600 idle connections and the floods: tens of MiB, not hundreds.
    assert!(report.peak_rss_mib < 200.0, "{report}");
}
