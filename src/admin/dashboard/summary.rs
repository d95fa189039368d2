//! What the dashboard's overview shows, gathered from bounded reads so that a page costs the
//! same on a ledger of a thousand DACs or of millions: totals from the ledger's per-label
//! counters, charts and recent enrollments from the newest [`WINDOW`] DACs of each visible label
//! (read backwards along the inventory's time index), refusals and revocations from the newest
//! [`AUDIT_WINDOW`] audit records, CRLs from the record kept per label, tokens from the token
//! table.

use std::collections::BTreeMap;

use crate::admin::Caller;
use crate::asn1;
use crate::error::Result;
use crate::store::audit::AuditEvent;
use crate::store::{DacRecord, Ledger, TokenRecord, TokenState};

/// DACs read per visible label for the charts and the recent enrollments.
pub const WINDOW: usize = 5_000;
/// Audit records read (newest first) for refusals and revocations.
pub const AUDIT_WINDOW: u64 = 5_000;
/// Rows of the "recent" tables.
pub const RECENT_ROWS: usize = 20;
/// Days of the per-day chart (the newest ones present in the window).
pub const CHART_DAYS: usize = 31;

/// A label as the overview shows it.
#[derive(Clone, Debug)]
pub struct LabelInfo {
    pub name: String,
    /// DACs on record (the ledger's counter).
    pub issued: u64,
    pub quota: Option<u64>,
    /// The current CRL: number, entries, nextUpdate.
    pub crl: Option<(u64, u64, i64)>,
}

/// A revocation from the audit window.
#[derive(Clone, Debug)]
pub struct Revocation {
    pub time: i64,
    pub label: String,
    pub serial: String,
    pub reason: String,
    pub identity: String,
}

/// Everything the overview shows, for one caller.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub labels: Vec<LabelInfo>,
    /// DACs the charts were computed from, and whether that is all of them.
    pub window: u64,
    pub window_complete: bool,
    /// Issued per day (`YYYY-MM-DD`) and per PID (4 hex digits), over the window.
    pub per_day: BTreeMap<String, u64>,
    pub per_pid: BTreeMap<String, u64>,
    /// Newest first.
    pub recent: Vec<DacRecord>,
    /// Enrollment refusals by rule, over the audit window; the window's first sequence number.
    pub refusals: BTreeMap<String, u64>,
    pub audit_from: u64,
    pub audit_complete: bool,
    /// Newest first.
    pub revocations: Vec<Revocation>,
    /// label → state → tokens.
    pub tokens: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Unused tokens, newest first.
    pub unused_tokens: Vec<TokenRecord>,
}

/// The state names of the token API (`GET /v1/tokens`).
pub fn token_state(t: &TokenRecord, now: i64) -> &'static str {
    match t.state(now) {
        TokenState::Unused => "unused",
        TokenState::Spent(_) => "spent",
        TokenState::Expired => "expired",
        TokenState::Revoked => "revoked",
    }
}

/// Gathers the overview of `labels` (name, quota: the configured labels) that `caller` may see.
pub fn gather(
    ledger: &dyn Ledger,
    labels: &[(String, Option<u64>)],
    caller: &Caller,
    now: i64,
) -> Result<Summary> {
    let mut s = Summary::default();
    for (name, quota) in labels.iter().filter(|(n, _)| caller.may_see(n)) {
        s.labels.push(LabelInfo {
            name: name.clone(),
            issued: ledger.count(name)?,
            quota: *quota,
            crl: ledger
                .crl(name)?
                .map(|c| (c.number, c.entries, c.next_update)),
        });
    }
    let total: u64 = s.labels.iter().map(|l| l.issued).sum();

    // The window: one backwards read over every label, or one per visible label.
    let mut window = match &caller.labels {
        None => ledger.recent(None, WINDOW)?,
        Some(_) => {
            let mut all = Vec::new();
            for l in &s.labels {
                all.extend(ledger.recent(Some(&l.name), WINDOW)?);
            }
            all.sort_by_key(|r| std::cmp::Reverse(r.issued_at));
            all
        }
    };
    // Unrestricted: DACs of labels no longer configured count too (as `certs stats`).
    window.retain(|r| caller.may_see(&r.label));
    s.window = window.len() as u64;
    s.window_complete = match &caller.labels {
        None => (window.len() as u64) < WINDOW as u64,
        Some(_) => s.window == total,
    };
    for r in &window {
        let day = asn1::format_time(r.issued_at)[..10].to_string();
        *s.per_day.entry(day).or_default() += 1;
        *s.per_pid.entry(format!("{:04X}", r.pid)).or_default() += 1;
    }
    while s.per_day.len() > CHART_DAYS {
        s.per_day.pop_first();
    }
    window.truncate(RECENT_ROWS);
    s.recent = window;

    // The audit window, newest records last.
    if let Some(head) = ledger.audit_head()? {
        let end = head.seq + 1;
        s.audit_from = end.saturating_sub(AUDIT_WINDOW);
        s.audit_complete = s.audit_from == 0;
        let mut from = s.audit_from;
        while from < end {
            let page = ledger.audit_records(from, 2_000)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for r in page {
                match r.event {
                    AuditEvent::EnrollmentRefused { label, rule, .. } if caller.may_see(&label) => {
                        *s.refusals.entry(rule).or_default() += 1;
                    }
                    AuditEvent::Revocation {
                        label,
                        serial,
                        reason,
                        identity,
                    } if caller.may_see(&label) => s.revocations.push(Revocation {
                        time: r.time,
                        label,
                        serial: serial.to_uppercase(),
                        reason,
                        identity,
                    }),
                    _ => {}
                }
            }
        }
        s.revocations.reverse();
        s.revocations.truncate(RECENT_ROWS);
    }

    let mut tokens: Vec<TokenRecord> = ledger
        .tokens()?
        .into_iter()
        .filter(|t| caller.may_see(&t.label))
        .collect();
    tokens.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    for t in &tokens {
        *s.tokens
            .entry(t.label.clone())
            .or_default()
            .entry(token_state(t, now))
            .or_default() += 1;
    }
    s.unused_tokens = tokens
        .into_iter()
        .filter(|t| t.state(now) == TokenState::Unused)
        .take(RECENT_ROWS)
        .collect();
    Ok(s)
}
