//! What `serve` adds to the audit log: the config it loaded, and the chain's head written to
//! the log at intervals and on shutdown (what `audit verify --head` checks a ledger against).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use matter_est::store::Ledger;
use matter_est::store::audit::AuditEvent;
use matter_est::{Error, Result, asn1};

/// How often the audit head is written to the log. Five minutes: a cut tail can hide at most
/// the records of the last interval from `audit verify --head`, and the log gains 12 lines an
/// hour.
pub const AUDIT_HEAD_INTERVAL: Duration = Duration::from_secs(300);

/// Audits the config file `serve` started with (its SHA-256).
pub fn config_loaded(ledger: &dyn Ledger, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    ledger.audit(AuditEvent::ConfigLoaded {
        path: path.display().to_string(),
        sha256: asn1::hex(&Sha256::digest(&bytes)),
    });
    Ok(())
}

/// Logs the audit head now.
pub fn log_audit_head(ledger: &dyn Ledger) {
    match ledger.audit_head() {
        Ok(Some(head)) => tracing::info!(head = %head, "audit head"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "audit head unreadable"),
    }
}

/// Logs the audit head every [`AUDIT_HEAD_INTERVAL`] (on the runtime; abort it to stop).
pub fn log_audit_heads(ledger: Arc<dyn Ledger>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(AUDIT_HEAD_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            log_audit_head(ledger.as_ref());
        }
    })
}
