//! Prometheus metrics (issue 15): the `metrics` facade's macros where things happen (EST
//! requests, signatures, ledger commits, TLS handshakes, connections), and the exporter's
//! recorder handle renders the text exposition format for `GET /metrics` on the admin listener.
//! Gauges that need ledger reads (DACs on record, quota, unused tokens, CRL age) are set at
//! scrape time from [`Ctx`], never per request.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::Ctx;
use crate::error::ErrorKind;
use crate::store::TokenState;

/// EST requests by operation: `matter_est_request_duration_seconds{operation}` (histogram).
pub const REQUEST_DURATION: &str = "matter_est_request_duration_seconds";
/// Enrollments finished: `{label, operation, result = issued|refused|error, rule}`.
pub const ENROLLMENTS: &str = "matter_est_enrollments_total";
/// PAI signatures: `{signer = file|pkcs11}` (histogram) and failures (counter).
pub const SIGNER_DURATION: &str = "matter_est_signer_duration_seconds";
pub const SIGNER_ERRORS: &str = "matter_est_signer_errors_total";
/// Ledger group commits: duration (histogram) and records per group (histogram).
pub const LEDGER_COMMIT_DURATION: &str = "matter_est_ledger_commit_duration_seconds";
pub const LEDGER_COMMIT_GROUP_SIZE: &str = "matter_est_ledger_commit_group_size";
/// TLS handshakes the EST listener failed, `{reason}`.
pub const TLS_HANDSHAKE_FAILURES: &str = "matter_est_tls_handshake_failures_total";
/// EST connections open now.
pub const OPEN_CONNECTIONS: &str = "matter_est_open_connections";

/// Latency buckets in seconds: an issuance is ~1 ms with a file key, tens of ms with an HSM.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Group commit sizes (the writer groups at most `MAX_GROUP` records).
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often histogram samples are folded into their buckets between scrapes (the exporter's own
/// default).
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls are no-ops) and records build info.
/// Until it is installed the macros cost a relaxed load and record nothing.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(LEDGER_COMMIT_GROUP_SIZE.into()),
                        GROUP_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    return None;
                }
            };
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "metrics recorder not installed");
                return None;
            }
            // The recorder keeps every histogram sample until upkeep folds it into the buckets,
            // and with `build_recorder` upkeep is ours to run: at each scrape, and at intervals
            // here, so that a server nobody scrapes does not pile up samples without end.
            let upkeep = handle.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                })
            {
                tracing::warn!(error = %e, "metrics upkeep thread not started");
            }
            metrics::gauge!("matter_est_build_info", "version" => env!("CARGO_PKG_VERSION"))
                .set(1.0);
            metrics::gauge!(OPEN_CONNECTIONS).set(0.0);
            Some(handle)
        })
        .as_ref()
}

/// The text exposition (format 0.0.4), after setting the scrape-time gauges.
pub fn render(ctx: &Ctx) -> String {
    let Some(handle) = install() else {
        return String::new();
    };
    scrape_gauges(ctx);
    handle.run_upkeep();
    handle.render()
}

fn scrape_gauges(ctx: &Ctx) {
    let ledger = ctx.ledger();
    let now = crate::asn1::now();
    let tokens = ledger.tokens().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics: tokens not read");
        Vec::new()
    });
    for (name, lc) in &ctx.config().labels {
        let label = name.clone();
        match ledger.count(name) {
            Ok(n) => {
                metrics::gauge!("matter_est_ledger_dacs", "label" => label.clone()).set(n as f64);
                if let Some(quota) = lc.quota {
                    metrics::gauge!("matter_est_quota_used", "label" => label.clone())
                        .set(n as f64);
                    metrics::gauge!("matter_est_quota_left", "label" => label.clone())
                        .set(quota.saturating_sub(n) as f64);
                }
            }
            Err(e) => tracing::warn!(label = %name, error = %e, "metrics: DAC count not read"),
        }
        let unused = tokens
            .iter()
            .filter(|t| t.label == *name && t.state(now) == TokenState::Unused)
            .count();
        metrics::gauge!("matter_est_tokens_unused", "label" => label.clone()).set(unused as f64);
        if let Ok(Some(crl)) = ledger.crl(name) {
            metrics::gauge!("matter_est_crl_age_seconds", "label" => label.clone())
                .set((now - crl.this_update) as f64);
            metrics::gauge!("matter_est_crl_next_update_seconds", "label" => label)
                .set((crl.next_update - now) as f64);
        }
    }
}

/// Counts one finished EST request: its latency, and for the enrollment operations its result.
/// `kind` is the error's kind when it failed.
pub fn est_request(
    label: Option<&str>,
    op: Option<&'static str>,
    kind: Option<ErrorKind>,
    secs: f64,
) {
    let op = op.unwrap_or("unknown");
    metrics::histogram!(REQUEST_DURATION, "operation" => op).record(secs);
    if !matches!(op, "simpleenroll" | "simplereenroll" | "serverkeygen") {
        return;
    }
    let (result, rule) = match kind {
        None => ("issued", ""),
        // RFC 7030 §4.2.3: held for an operator (202), neither issued nor refused.
        Some(ErrorKind::Held) => ("held", ""),
        Some(k @ (ErrorKind::Internal | ErrorKind::Unavailable | ErrorKind::Timeout)) => {
            ("error", kind_name(k))
        }
        Some(k) => ("refused", kind_name(k)),
    };
    metrics::counter!(
        ENROLLMENTS,
        "label" => label.unwrap_or("-").to_string(),
        "operation" => op,
        "result" => result,
        "rule" => rule,
    )
    .increment(1);
}

/// The error kind's name, as a label value.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Conflict => "conflict",
        ErrorKind::QuotaExhausted => "quota_exhausted",
        ErrorKind::MethodNotAllowed => "method_not_allowed",
        ErrorKind::PayloadTooLarge => "payload_too_large",
        ErrorKind::UnsupportedMediaType => "unsupported_media_type",
        ErrorKind::Timeout => "timeout",
        ErrorKind::TooManyRequests => "too_many_requests",
        ErrorKind::Internal => "internal",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Held => "held",
    }
}

/// Why a TLS handshake failed, as a label value.
pub fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::AlertReceived(_)) => "alert_received",
        Some(E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. }) => "invalid_message",
        Some(_) => "other",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

/// Counts an EST connection open while it lives.
pub struct OpenConnection(());

impl OpenConnection {
    /// Counts one more open connection until the value is dropped.
    pub fn open() -> Self {
        metrics::gauge!(OPEN_CONNECTIONS).increment(1.0);
        Self(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_CONNECTIONS).decrement(1.0);
    }
}
