//! Issue 17: abuse while the line runs. A gateway (127.0.0.2) enrolls on keep-alive connections,
//! flat out and then paced, while strangers on other loopback addresses, in a process of their
//! own with a CPU quota of their own (see tests/common/abuse.rs), hold idle half-open
//! connections (slowloris), flood TLS handshakes, send 10 MiB bodies, flood headers and storm
//! the server with invalid CSRs. The gateway is served throughout (every one of its requests
//! succeeds), every abuser gets its refusal, and the server's memory stays bounded. Bounded in
//! count and time; loopback only. The rates the gateway keeps are measured by
//! `cargo bench --bench abuse` (speed is measured in benchmarks, not timed tests).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

pub mod abuse {
    include!("common/abuse.rs");
}

const TEST: &str = "the_gateway_is_served_while_strangers_abuse_the_server";

#[test]
fn the_gateway_is_served_while_strangers_abuse_the_server() {
    // This test binary, run again by `abuse::run` as the abusers' process, lands here.
    if abuse::abuser_mode() {
        return;
    }
    let report = abuse::run(
        &abuse::Plan {
            slowloris: 600,
            seconds: 3,
            ..abuse::Plan::default()
        },
        &["--exact", TEST, "--nocapture", "--test-threads=1"],
    );
    println!("{report}");
    assert!(report.paced_abused.ok > 0, "{report}");
    assert!(report.unpaced_abused.ok > 0, "{report}");
    assert_eq!(report.gateway_failures(), 0, "{report}");
    assert_eq!(report.abuse.slowloris_open, 600, "{report}");
    assert!(report.abuse.handshakes > 0, "{report}");
    assert!(report.abuse.body_refusals > 0, "{report}");
    assert!(report.abuse.header_refusals > 0, "{report}");
    assert!(report.abuse.garbage_refusals > 0, "{report}");
    assert_eq!(report.abuse.garbage_accepted, 0, "{report}");
    // 600 idle connections and the floods: tens of MiB, not hundreds.
    assert!(report.peak_rss_mib < 200.0, "{report}");
}
