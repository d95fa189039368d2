//! Manual approval (RFC 7030 §4.2.3; issue 17 item 5): a label, or one of its client rules,
//! may hold enrollments until an operator decides. The first request is recorded as held and
//! answered 202 with `Retry-After`; nothing is signed. The client asks again with the same CSR
//! (a held request is known by its label and the SHA-256 of its CSR, so another CSR never
//! finds someone else's approval): while undecided it gets 202 again; once approved, its retry
//! goes the whole way of any enrollment (policy, quota, signing, self-check, recording) and gets
//! its DAC; once rejected, 403 with the operator's reason; if nobody decided before
//! `pending_expiry_secs`, 403 saying it expired.
//!
//! The DAC is signed at the client's retry, not at approval: then it is made by the one
//! issuance path with everything checked at that moment (a quota used up since, a revoked
//! token), the signer needs no client present, and an approval never leaves a signed DAC that
//! nobody collects. An expired request is 403, not 410: EST clients treat every 4xx but 401
//! alike (a final refusal), and the message says it expired and what to do.
//!
//! Settled requests (decided, or expired undecided) are removed `[approval]
//! held_retention_secs` after they settled (default 30 days; [`prune`], run by `serve` at start
//! and hourly). The audit chain keeps each request and its decision. A client that sends a
//! removed request's CSR again starts over: its request is held anew (202) and an operator
//! decides again, as for any request not on record; a rejected device has long had its 403 by
//! then (est-client stops asking after `--max-wait`), and the new request shows the operator
//! that it is back.
//!
//! The rule lives here, apart from `store` (which keeps held requests atomically, on any
//! backend) and from `est` (which only calls [`gate`]).

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::asn1;
use crate::config::{Approval, LabelConfig};
use crate::csr::EnrollmentRequest;
use crate::error::{Error, Result};
use crate::profile::DacSubject;
use crate::store::{HeldRequest, HeldState, Ledger};

/// What a held request is known by: the first 16 bytes of SHA-256(label ‖ 0x00 ‖ SHA-256 of
/// the CSR DER), hex (32 digits). A label has no NUL (`config`), so the two parts cannot run
/// into each other; the label is in it so that the same CSR on another label is another
/// request.
pub fn held_id(label: &str, csr_sha256: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0]);
    h.update(csr_sha256);
    asn1::hex(&h.finalize()[..16])
}

/// The enrollment to gate: what the operator is shown and what it is known by.
pub struct Asking<'a> {
    pub label: &'a LabelConfig,
    /// The label's approval, or the matched client rule's.
    pub approval: Approval,
    pub request: &'a EnrollmentRequest,
    pub subject: &'a DacSubject,
    pub requester: &'a str,
    /// `enrollment` or `renewal`.
    pub kind: &'a str,
}

/// May this enrollment be issued now? `Ok` when approval is automatic or an operator approved
/// this very request; otherwise it is held (recorded on first sight) and refused with
/// [`Error::AwaitingApproval`] (202), [`Error::ApprovalRejected`] or [`Error::ApprovalExpired`]
/// (403). Call it after policy allowed the request and before anything is signed.
pub fn gate(ledger: &dyn Ledger, asking: &Asking<'_>, now: i64) -> Result<()> {
    if asking.approval == Approval::Auto {
        return Ok(());
    }
    let label = &asking.label.name;
    let id = held_id(label, &asking.request.der_sha256);
    let held = match ledger.held(&id)? {
        Some(h) => h,
        None => {
            let expiry = i64::try_from(asking.label.pending_expiry.as_secs()).unwrap_or(i64::MAX);
            ledger.hold(&HeldRequest {
                id: id.clone(),
                label: label.clone(),
                subject: asking.subject.to_string(),
                csr_sha256: asn1::hex(&asking.request.der_sha256),
                requester: asking.requester.to_string(),
                kind: asking.kind.to_string(),
                requested_at: now,
                expires_at: now.saturating_add(expiry),
                decision: None,
            })?
        }
    };
    // The decision was about this requester's request: the same CSR sent by anyone else (a
    // copied CSR) is not covered by it.
    if held.requester != asking.requester {
        return Err(Error::Forbidden(format!(
            "enrollment request {id} was made by another requester; it is decided for that one only"
        )));
    }
    match held.state(now) {
        HeldState::Approved => Ok(()),
        HeldState::Waiting => Err(Error::AwaitingApproval {
            id,
            label: label.clone(),
            retry_after_secs: asking.label.pending_retry_after.as_secs(),
        }),
        HeldState::Rejected(reason) => Err(Error::ApprovalRejected { id, reason }),
        HeldState::Expired => Err(Error::ApprovalExpired {
            id,
            label: label.clone(),
            at: asn1::format_time(held.expires_at),
        }),
    }
}

/// How often `serve` prunes settled held requests: hourly, so that a request is kept at most
/// an hour past its retention.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Removes the held requests settled more than `retention` before `now` (Unix seconds);
/// returns how many.
pub fn prune(ledger: &dyn Ledger, retention: Duration, now: i64) -> Result<u64> {
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    ledger.prune_held(now.saturating_sub(retention))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_depends_on_label_and_csr() {
        let a = held_id("dev", &[1; 32]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, held_id("dev", &[1; 32]));
        assert_ne!(a, held_id("dev2", &[1; 32]));
        assert_ne!(a, held_id("dev", &[2; 32]));
    }
}
