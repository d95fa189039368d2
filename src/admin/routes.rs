//! The handlers of [`super::ROUTES`]: each checks the caller's labels, calls one service
//! (ledger, CRL service, issuer) and answers JSON. Field names are camelCase, times RFC 3339
//! UTC, serials uppercase hex, as the CLI prints them.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{Caller, Ctx, Params};
use crate::asn1;
use crate::error::{Error, Result};
use crate::policy::{self, TokenOptions};
use crate::revocation::RevocationReason;
use crate::store::audit::{AuditRecord, Head};
use crate::store::{CertQuery, DacRecord, Ledger, Position, Status, TokenRecord, TokenState};

/// Largest `certs` page: 10,000 records (~10 MB of JSON) per ledger read.
pub const MAX_PAGE: usize = 10_000;

/// Records per page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 50;

/// Records read per step by `certs stats` and the audit listing.
const STEP: usize = 10_000;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn whoami(_: &Ctx, caller: &Caller, _: &Params) -> Result<Value> {
    Ok(json!({
        "identity": caller.identity,
        "role": caller.role.name(),
        "labels": caller.labels,
    }))
}

pub fn labels(ctx: &Ctx, caller: &Caller, _: &Params) -> Result<Value> {
    let issuer = ctx.issuer()?;
    let mut out = Vec::new();
    for label in issuer.labels() {
        let l = &label.config;
        if !caller.may_see(&l.name) {
            continue;
        }
        let chain: Vec<String> = std::iter::once(&label.pai.der)
            .chain(&label.chain)
            .map(|der| B64.encode(der))
            .collect();
        out.push(json!({
            "label": l.name,
            "vid": label.pai.vid.to_string(),
            "pids": l.pids.to_string(),
            "cnPrefix": label.profile.cn_prefix,
            "issued": ctx.ledger().count(&l.name)?,
            "quota": l.quota,
            "crlUrl": l.crl.as_ref().and_then(|c| c.url.as_ref()).map(|u| u.as_str().to_string()),
            "chain": chain,
        }));
    }
    Ok(json!({ "labels": out }))
}

// ---- tokens ----

pub fn token_list(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let state = p.query("state");
    if let Some(s) = state
        && !["unused", "spent", "expired", "revoked"].contains(&s)
    {
        return Err(Error::BadRequest(format!(
            "state {s:?}: expected unused, spent, expired or revoked"
        )));
    }
    let label = p.query("label");
    if let Some(l) = label {
        caller.check_label(l)?;
    }
    let now = asn1::now();
    let mut tokens = ctx.ledger().tokens()?;
    tokens.sort_by_key(|t| (t.created_at, t.id.clone()));
    let tokens: Vec<Value> = tokens
        .iter()
        .filter(|t| {
            caller.may_see(&t.label)
                && label.is_none_or(|l| t.label == l)
                && state.is_none_or(|s| state_name(t, now).0 == s)
        })
        .map(|t| token_json(t, now))
        .collect();
    Ok(json!({ "tokens": tokens }))
}

pub fn token_create(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let label = p
        .body_str("label")?
        .ok_or_else(|| Error::BadRequest("label: required".into()))?;
    ctx.config().label(label)?;
    caller.check_label(label)?;
    let pid = p
        .body_str("pid")?
        .map(crate::matter::Pid::parse)
        .transpose()?;
    let cn = p.body_str("cn")?.map(str::to_string);
    let count = p.body_u64("count")?.unwrap_or(1);
    if !(1..=10_000).contains(&count) {
        return Err(Error::BadRequest(format!("count {count}: 1 to 10000")));
    }
    if cn.is_some() && count != 1 {
        return Err(Error::BadRequest(
            "cn binds a token to one device: use it with count 1".into(),
        ));
    }
    let secs = match p.body_u64("expiresInSecs")? {
        Some(0) => return Err(Error::BadRequest("expiresInSecs: at least 1".into())),
        Some(s) => s,
        None => ctx.config().token_expiry.as_secs(),
    };
    let opts = TokenOptions {
        pid,
        cn,
        expires_at: Some(asn1::now().saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))),
    };
    let mut tokens = Vec::new();
    for _ in 0..count {
        let (id, secret) = policy::create_token_with(ctx.ledger().as_ref(), label, &opts)?;
        tokens.push(json!({
            "id": id,
            "secret": secret,
            "label": label,
            "expiresAt": opts.expires_at.map(asn1::format_time),
        }));
    }
    Ok(json!({ "label": label, "tokens": tokens }))
}

pub fn token_revoke(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let id = p.path(0);
    let token = ctx
        .ledger()
        .tokens()?
        .into_iter()
        .find(|t| t.id == id && caller.may_see(&t.label))
        .ok_or_else(|| Error::NotFound(format!("no token {id:?}")))?;
    let t = ctx
        .ledger()
        .revoke_token(&token.id, asn1::now(), &caller.identity)?;
    Ok(token_json(&t, asn1::now()))
}

/// (state, spent-by serial) of a token.
fn state_name(t: &TokenRecord, now: i64) -> (&'static str, Option<String>) {
    match t.state(now) {
        TokenState::Unused => ("unused", None),
        TokenState::Spent(s) => ("spent", Some(serial_hex(&s))),
        TokenState::Expired => ("expired", None),
        TokenState::Revoked => ("revoked", None),
    }
}

fn token_json(t: &TokenRecord, now: i64) -> Value {
    let (state, spent_by) = state_name(t, now);
    json!({
        "id": t.id,
        "label": t.label,
        "pid": t.pid.map(|p| format!("{p:04X}")),
        "cn": t.cn,
        "createdAt": asn1::format_time(t.created_at),
        "expiresAt": t.expires_at.map(asn1::format_time),
        "revokedAt": t.revoked_at.map(asn1::format_time),
        "state": state,
        "spentBy": spent_by,
    })
}

// ---- inventory ----

pub fn cert_list(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let limit = match p.query("limit") {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| Error::BadRequest(format!("limit {l:?}: 1 to {MAX_PAGE}")))?,
    };
    let hex16 = |what: &str| {
        p.query(what)
            .map(|t| {
                u16::from_str_radix(t, 16)
                    .map_err(|_| Error::BadRequest(format!("{what} {t:?}: expected 4 hex digits")))
            })
            .transpose()
    };
    let revoked = match p.query("status") {
        None => None,
        Some("issued") => Some(false),
        Some("revoked") => Some(true),
        Some(s) => {
            return Err(Error::BadRequest(format!(
                "status {s:?}: expected issued or revoked"
            )));
        }
    };
    let label = match (p.query("label"), &caller.labels) {
        (Some(l), _) => {
            caller.check_label(l)?;
            Some(l.to_string())
        }
        (None, None) => None,
        (None, Some(seen)) if seen.len() == 1 => seen.iter().next().cloned(),
        (None, Some(seen)) => {
            return Err(Error::BadRequest(format!(
                "name a label: admin identity {} sees {}",
                caller.identity,
                seen.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let query = CertQuery {
        label,
        vid: hex16("vid")?,
        pid: hex16("pid")?,
        revoked,
        since: p.query("since").map(parse_time).transpose()?,
        until: p.query("until").map(parse_time).transpose()?,
        contains: p.query("contains").map(str::to_string),
        requester: p.query("requester").map(str::to_string),
        after: p
            .query("after")
            .map(|a| {
                Position::parse(a).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "after {a:?}: expected TIME:SEQ, as a previous page's next"
                    ))
                })
            })
            .transpose()?,
        limit,
    };
    let page = ctx.ledger().list_page(&query)?;
    let records: Vec<Value> = page.records.iter().map(|(s, r)| row(*s, r)).collect();
    Ok(json!({
        "records": records,
        "next": page.next.map(|n| n.to_string()),
    }))
}

pub fn cert_show(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let wanted = parse_serial(p.path(0))?;
    let ledger = ctx.ledger().as_ref();
    let record = visible_record(ledger, caller, &wanted)?;
    let lineage = lineage(ledger, &record)?;
    let rekey = ledger
        .rekey_mark(&record.serial)?
        .map(|(at, by)| json!({ "markedAt": asn1::format_time(at), "by": by }));
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &record.der)
        .map_err(|e| Error::Internal(e.to_string()))?;
    let lineage: Vec<Value> = lineage
        .iter()
        .map(|r| {
            json!({
                "serial": serial_hex(&r.serial),
                "issued": asn1::format_time(r.issued_at),
                "status": status_name(r),
                "requester": r.requester,
            })
        })
        .collect();
    let mut v = row(0, &record);
    if let Some(map) = v.as_object_mut() {
        map.remove("seq");
        map.insert("pem".into(), pem.into());
        map.insert("lineage".into(), lineage.into());
        map.insert("rekey".into(), rekey.unwrap_or_default());
    }
    Ok(v)
}

pub fn cert_stats(ctx: &Ctx, caller: &Caller, _: &Params) -> Result<Value> {
    let mut by: [BTreeMap<String, u64>; 4] = Default::default();
    let mut total = 0u64;
    let labels: Vec<Option<String>> = match &caller.labels {
        None => vec![None],
        Some(seen) => seen.iter().cloned().map(Some).collect(),
    };
    for label in labels {
        let mut after = None;
        loop {
            let page = ctx.ledger().list_page(&CertQuery {
                label: label.clone(),
                after,
                limit: STEP,
                ..CertQuery::default()
            })?;
            for (_, r) in &page.records {
                total += 1;
                let day = asn1::format_time(r.issued_at)[..10].to_string();
                let keys = [
                    r.label.clone(),
                    format!("{:04X}", r.pid),
                    status_name(r).to_string(),
                    day,
                ];
                for (map, key) in by.iter_mut().zip(keys) {
                    *map.entry(key).or_default() += 1;
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    let [by_label, by_pid, by_status, by_day] = by;
    Ok(json!({
        "total": total,
        "by_label": by_label,
        "by_pid": by_pid,
        "by_status": by_status,
        "by_day": by_day,
    }))
}

pub fn cert_rekey(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let wanted = parse_serial(p.path(0))?;
    visible_record(ctx.ledger().as_ref(), caller, &wanted)?;
    let r = ctx
        .ledger()
        .mark_rekey(&wanted, asn1::now(), &caller.identity)?;
    Ok(json!({
        "serial": serial_hex(&r.serial),
        "label": r.label,
        "subject": r.subject,
    }))
}

// ---- revocation and CRLs ----

pub fn cert_revoke(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let wanted = parse_serial(p.path(0))?;
    let reason =
        RevocationReason::parse(p.body_str("reason")?.ok_or_else(|| {
            Error::BadRequest("reason: required (an RFC 5280 reason name)".into())
        })?)?;
    visible_record(ctx.ledger().as_ref(), caller, &wanted)?;
    let revoked = ctx
        .crls()?
        .revoke(&wanted, reason, asn1::now(), &caller.identity)?;
    let r = &revoked.record;
    let crl = match &revoked.crl {
        None => Value::Null,
        Some(Ok(crl)) => json!({
            "number": crl.number,
            "entries": crl.entries,
            "nextUpdate": asn1::format_time(crl.next_update),
        }),
        Some(Err(e)) => json!({ "error": e.to_string() }),
    };
    Ok(json!({
        "serial": serial_hex(&r.serial),
        "label": r.label,
        "subject": r.subject,
        "reason": reason.name(),
        "crl": crl,
    }))
}

pub fn crl_current(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    crl(ctx, caller, p, false)
}

pub fn crl_new(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    crl(ctx, caller, p, true)
}

/// The label's current CRL (issued if it has none or it is due), or a new one.
fn crl(ctx: &Ctx, caller: &Caller, p: &Params, new: bool) -> Result<Value> {
    let label = p.path(0);
    ctx.config().label(label)?;
    caller.check_label(label)?;
    let now = asn1::now();
    let service = ctx.crls()?;
    let crl = if new {
        service.issue(label, now)?
    } else {
        service.current_or_issue(label, now)?
    };
    Ok(json!({
        "label": label,
        "number": crl.number,
        "entries": crl.entries,
        "thisUpdate": asn1::format_time(crl.this_update),
        "nextUpdate": asn1::format_time(crl.next_update),
        "bytes": crl.der.len(),
        "der": B64.encode(&crl.der),
    }))
}

pub fn dcl_info(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let label = p.path(0);
    ctx.config().label(label)?;
    caller.check_label(label)?;
    let info = crate::revocation::dcl_info(ctx.issuer()?.label(label)?)?;
    serde_json::to_value(info).map_err(|e| Error::Internal(e.to_string()))
}

// ---- issuance ----

pub fn issue(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let label = p.path(0);
    ctx.config().label(label)?;
    caller.check_label(label)?;
    let csr = p
        .body_str("csr")?
        .ok_or_else(|| Error::BadRequest("csr: required (PEM, or base64 DER)".into()))?;
    let req = crate::csr::parse(csr.as_bytes())?;
    let issued = ctx.issuer()?.issue(
        label,
        &req,
        &crate::issuance::IssueOptions {
            requester: caller.identity.clone(),
            ..Default::default()
        },
    )?;
    Ok(json!({
        "label": label,
        "serial": serial_hex(&issued.dac.serial),
        "subject": issued.dac.subject.to_string(),
        "repeat": issued.repeat,
        "der": B64.encode(&issued.dac.der),
    }))
}

// ---- manual approval (RFC 7030 §4.2.3, `approval`) ----

pub fn held_list(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let state = p.query("state");
    if let Some(s) = state
        && !["waiting", "approved", "rejected", "expired"].contains(&s)
    {
        return Err(Error::BadRequest(format!(
            "state {s:?}: expected waiting, approved, rejected or expired"
        )));
    }
    let label = p.query("label");
    if let Some(l) = label {
        caller.check_label(l)?;
    }
    let now = asn1::now();
    let requests: Vec<Value> = ctx
        .ledger()
        .held_list()?
        .iter()
        .filter(|h| {
            caller.may_see(&h.label)
                && label.is_none_or(|l| h.label == l)
                && state.is_none_or(|s| h.state_name(now) == s)
        })
        .map(|h| held_json(h, now))
        .collect();
    Ok(json!({ "requests": requests }))
}

pub fn held_approve(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    decide(ctx, caller, p, true)
}

pub fn held_reject(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    decide(ctx, caller, p, false)
}

/// Approves or rejects a held request the caller may see (another tenant's ids are 404).
fn decide(ctx: &Ctx, caller: &Caller, p: &Params, approved: bool) -> Result<Value> {
    let id = p.path(0);
    let reason = match (approved, p.body_str("reason")?.map(str::trim)) {
        (false, None | Some("")) => {
            return Err(Error::BadRequest(
                "reason: required to reject (the client is told it)".into(),
            ));
        }
        (_, r) => r.filter(|r| !r.is_empty()).map(str::to_string),
    };
    if reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(Error::BadRequest("reason: at most 500 characters".into()));
    }
    let ledger = ctx.ledger();
    ledger
        .held(id)?
        .filter(|h| caller.may_see(&h.label))
        .ok_or_else(|| Error::NotFound(format!("no held request {id:?}")))?;
    let decision = crate::store::Decision {
        approved,
        at: asn1::now(),
        by: caller.identity.clone(),
        reason,
    };
    let h = ledger.decide(id, &decision)?;
    Ok(held_json(&h, decision.at))
}

fn held_json(h: &crate::store::HeldRequest, now: i64) -> Value {
    let d = h.decision.as_ref();
    json!({
        "id": h.id,
        "label": h.label,
        "subject": h.subject,
        "kind": h.kind,
        "requester": h.requester,
        "csrSha256": h.csr_sha256,
        "requestedAt": asn1::format_time(h.requested_at),
        "expiresAt": asn1::format_time(h.expires_at),
        "state": h.state_name(now),
        "decidedAt": d.map(|d| asn1::format_time(d.at)),
        "decidedBy": d.map(|d| d.by.clone()),
        "reason": d.and_then(|d| d.reason.clone()),
    })
}

// ---- audit ----

pub fn audit_list(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let since = p.query("since").map(parse_time).transpose()?;
    let until = p.query("until").map(parse_time).transpose()?;
    let label = p.query("label");
    if let Some(l) = label {
        caller.check_label(l)?;
    }
    let event = p.query("event");
    let identity = p.query("identity");
    let limit: usize = match p.query("limit") {
        None => 100,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| Error::BadRequest(format!("limit {l:?}: 1 to {MAX_PAGE}")))?,
    };
    let keep = |r: &AuditRecord| {
        // A record without a label (config loaded, admin refusals) is for unrestricted callers.
        let visible = match r.event.label() {
            Some(l) => caller.may_see(l),
            None => caller.labels.is_none(),
        };
        visible
            && since.is_none_or(|t| r.time >= t)
            && until.is_none_or(|t| r.time < t)
            && label.is_none_or(|l| r.event.label() == Some(l))
            && event.is_none_or(|e| r.event.name() == e)
            && identity.is_none_or(|i| r.event.identity().is_some_and(|id| id.contains(i)))
    };
    let mut from = 0;
    let mut out = Vec::new();
    loop {
        let page = ctx.ledger().audit_records(from, STEP)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for r in page.into_iter().filter(|r| keep(r)) {
            if out.len() == limit {
                break;
            }
            out.push(serde_json::to_value(&r).map_err(|e| Error::Internal(e.to_string()))?);
        }
        if out.len() == limit {
            break;
        }
    }
    Ok(json!({ "records": out }))
}

pub fn audit_verify(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    if caller.labels.is_some() {
        return Err(Error::Forbidden(format!(
            "the audit chain spans every label; admin identity {} sees only some",
            caller.identity
        )));
    }
    let head = p
        .query("head")
        .map(|h| {
            Head::parse(h).ok_or_else(|| {
                Error::BadRequest(format!(
                    "head {h:?}: expected SEQ:HASH (64 hex digits), as the log's \"audit head\" \
                     lines print it"
                ))
            })
        })
        .transpose()?;
    Ok(match ctx.ledger().audit_verify(head)? {
        Ok((count, end)) => json!({
            "ok": true,
            "records": count,
            "head": end.map(|h| h.to_string()),
        }),
        Err(broken) => json!({
            "ok": false,
            "broken_at": broken.seq,
            "problem": broken.problem,
        }),
    })
}

// ---- ledger ----

pub fn backup(ctx: &Ctx, _: &Caller, p: &Params) -> Result<Value> {
    let out = p.body_str("out")?.ok_or_else(|| {
        Error::BadRequest("out: required (a new file on the server's host)".into())
    })?;
    let out = std::path::Path::new(out);
    if !out.is_absolute() {
        return Err(Error::BadRequest(format!(
            "out {}: give an absolute path (it is written by the server process)",
            out.display()
        )));
    }
    let records = ctx.ledger().backup_to(out)?;
    Ok(json!({
        "ledger": ctx.config().store.describe(),
        "out": out.display().to_string(),
        "records": records,
    }))
}

// ---- shared ----

/// The record with `serial`, if the caller may see its label; 404 otherwise (another tenant's
/// serials are not confirmed to exist).
fn visible_record(ledger: &dyn Ledger, caller: &Caller, serial: &[u8]) -> Result<DacRecord> {
    ledger
        .by_serial(serial)?
        .filter(|r| caller.may_see(&r.label))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no DAC with serial {} is on record",
                serial_hex(serial)
            ))
        })
}

/// `record`'s renewal lineage, oldest first: back through `renews`, and forward from the
/// subject's current holder back to it.
fn lineage(ledger: &dyn Ledger, record: &DacRecord) -> Result<Vec<DacRecord>> {
    let mut older = Vec::new();
    let mut at = record.renews.clone();
    while let Some(s) = at {
        let Some(r) = ledger.by_serial(&s)? else {
            break;
        };
        at = r.renews.clone();
        older.push(r);
    }
    older.reverse();
    let mut newer = Vec::new();
    if let Some(holder) = ledger.by_subject(&record.issuer_key, &record.subject_der)?
        && holder.serial != record.serial
    {
        let mut cur = Some(holder);
        let mut reached = false;
        while let Some(r) = cur.take() {
            if r.serial == record.serial {
                reached = true;
                break;
            }
            cur = match &r.renews {
                Some(s) => ledger.by_serial(s)?,
                None => None,
            };
            newer.push(r);
        }
        // Not in this lineage (the subject was taken over another way): show none.
        if !reached {
            newer.clear();
        }
        newer.reverse();
    }
    let mut all = older;
    all.push(record.clone());
    all.extend(newer);
    Ok(all)
}

/// A serial number typed by an operator: hex digits, either case, colons or spaces allowed.
pub fn parse_serial(text: &str) -> Result<Vec<u8>> {
    let digits: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    match asn1::unhex(&digits) {
        Some(bytes) if !bytes.is_empty() && bytes.len() <= 20 => Ok(bytes),
        _ => Err(Error::BadRequest(format!(
            "serial {text:?}: expected the DAC's serial number as hex (an even number of hex \
             digits, at most 20 bytes)"
        ))),
    }
}

fn serial_hex(serial: &[u8]) -> String {
    asn1::hex(serial).to_uppercase()
}

fn status_name(r: &DacRecord) -> &'static str {
    match r.status {
        Status::Issued => "issued",
        Status::Revoked { .. } => "revoked",
    }
}

fn row(seq: u64, r: &DacRecord) -> Value {
    json!({
        "seq": seq,
        "serial": serial_hex(&r.serial),
        "label": r.label,
        "vid": format!("{:04X}", r.vid),
        "pid": format!("{:04X}", r.pid),
        "subject": r.subject,
        "status": status_name(r),
        "revokedAt": match &r.status {
            Status::Revoked { at, .. } => Some(asn1::format_time(*at)),
            Status::Issued => None,
        },
        "reason": match &r.status {
            Status::Revoked { reason, .. } => Some(reason.clone()),
            Status::Issued => None,
        },
        "issued": asn1::format_time(r.issued_at),
        "requester": r.requester,
        "renews": r.renews.as_ref().map(|s| serial_hex(s)),
    })
}

/// Unix seconds, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(text: &str) -> Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    let bad = || {
        Error::BadRequest(format!(
            "time {text:?}: expected Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"
        ))
    };
    let (date, clock) = match text.split_once('T') {
        Some((d, c)) => (d, c.strip_suffix('Z').ok_or_else(bad)?),
        None => (text, "00:00:00"),
    };
    let num = |s: Option<&str>| s.and_then(|v| v.parse::<i64>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    let mut c = clock.split(':');
    let (h, mi, s) = (num(c.next())?, num(c.next())?, num(c.next())?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil (the inverse of asn1::civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + h * 3600 + mi * 60 + s)
}
