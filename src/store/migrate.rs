//! `matter-est ledger migrate`: a whole ledger copied to another backend (redb ↔ PostgreSQL),
//! record for record, audit chain included, then verified: the copy is exported again and its
//! counts and digest must equal the source's.
//!
//! The digest covers every record in a form both backends share: DACs and audit records in
//! their order (sequence numbers themselves are the backend's), everything else sorted.

use sha2::{Digest, Sha256};

use super::audit::Head;
use super::{CrlRecord, DacRecord, Ledger, TokenRecord};
use crate::error::{Error, Result};

/// One stored fact of a ledger, as [`Ledger::export`] gives it and [`Ledger::import`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A DAC, in issue order.
    Dac(Box<DacRecord>),
    /// The current holder (by serial) of a subject under an issuer.
    Holder {
        issuer_key: Vec<u8>,
        subject_der: Vec<u8>,
        serial: Vec<u8>,
    },
    /// DACs counted against a label's quota.
    Count { label: String, used: u64 },
    /// A token under the SHA-256 of its secret.
    Token {
        secret_hash: [u8; 32],
        record: TokenRecord,
    },
    /// A re-key mark.
    Rekey {
        serial: Vec<u8>,
        at: i64,
        by: String,
    },
    /// The last cRLNumber a label took.
    CrlNumber { label: String, last: u64 },
    /// A label's current CRL.
    Crl { label: String, record: CrlRecord },
    /// An audit record, its stored bytes, in chain order.
    Audit { seq: u64, bytes: Vec<u8> },
    /// The head of the audit chain as kept.
    AuditHead(Head),
    /// An enrollment held for manual approval, with its decision if made.
    Held(Box<super::HeldRequest>),
}

/// What a ledger holds: counts per kind and one digest over every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub dacs: u64,
    pub holders: u64,
    pub counts: u64,
    pub tokens: u64,
    pub rekeys: u64,
    pub crl_numbers: u64,
    pub crls: u64,
    pub audit: u64,
    pub held: u64,
    /// SHA-256, hex.
    pub digest: String,
}

fn hex(b: &[u8]) -> String {
    crate::asn1::hex(b)
}

/// The encoding an item is hashed in.
fn encode(item: &Item) -> Vec<u8> {
    let value = match item {
        Item::Dac(r) => serde_json::json!(["dac", r]),
        Item::Holder {
            issuer_key,
            subject_der,
            serial,
        } => serde_json::json!(["holder", hex(issuer_key), hex(subject_der), hex(serial)]),
        Item::Count { label, used } => serde_json::json!(["count", label, used]),
        Item::Token {
            secret_hash,
            record,
        } => serde_json::json!(["token", hex(secret_hash), record]),
        Item::Rekey { serial, at, by } => serde_json::json!(["rekey", hex(serial), at, by]),
        Item::CrlNumber { label, last } => serde_json::json!(["crl_number", label, last]),
        Item::Crl { label, record } => serde_json::json!([
            "crl",
            label,
            record.number,
            record.this_update,
            record.next_update,
            record.entries,
            hex(&record.der)
        ]),
        Item::Audit { seq, bytes } => serde_json::json!(["audit", seq, hex(bytes)]),
        Item::AuditHead(h) => serde_json::json!(["audit_head", h.to_string()]),
        Item::Held(r) => serde_json::json!(["held", r]),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Counts and the digest of `items`.
pub fn summarize(items: &[Item]) -> Summary {
    let mut ordered = Sha256::new();
    let mut others: Vec<Vec<u8>> = Vec::new();
    let mut s = Summary {
        dacs: 0,
        holders: 0,
        counts: 0,
        tokens: 0,
        rekeys: 0,
        crl_numbers: 0,
        crls: 0,
        audit: 0,
        held: 0,
        digest: String::new(),
    };
    for item in items {
        match item {
            Item::Dac(_) => s.dacs += 1,
            Item::Holder { .. } => s.holders += 1,
            Item::Count { .. } => s.counts += 1,
            Item::Token { .. } => s.tokens += 1,
            Item::Rekey { .. } => s.rekeys += 1,
            Item::CrlNumber { .. } => s.crl_numbers += 1,
            Item::Crl { .. } => s.crls += 1,
            Item::Audit { .. } => s.audit += 1,
            Item::AuditHead(_) => {}
            Item::Held(_) => s.held += 1,
        }
        let bytes = encode(item);
        match item {
            Item::Dac(_) | Item::Audit { .. } => {
                ordered.update((bytes.len() as u64).to_be_bytes());
                ordered.update(&bytes);
            }
            _ => others.push(bytes),
        }
    }
    others.sort();
    for bytes in others {
        ordered.update((bytes.len() as u64).to_be_bytes());
        ordered.update(&bytes);
    }
    s.digest = hex(&ordered.finalize());
    s
}

/// Copies every record of `from` into `to` (which must be empty), then exports `to` again and
/// compares counts and digests; checks the copy's audit chain. Returns the summary.
pub fn migrate(from: &dyn Ledger, to: &dyn Ledger) -> Result<Summary> {
    let items = from.export()?;
    let source = summarize(&items);
    to.import(&items)?;
    let copied = summarize(&to.export()?);
    if copied != source {
        return Err(Error::Ledger(format!(
            "the copy does not match the source: source {source:?}, copy {copied:?}"
        )));
    }
    match to.audit_verify(None)? {
        Ok(_) => Ok(source),
        Err(broken) => Err(Error::Ledger(format!(
            "the copy's audit chain does not verify at record {}: {}",
            broken.seq, broken.problem
        ))),
    }
}
