//! The audit chain (DESIGN.md "The operator plane": everything that changes trust is audited):
//! append-only records in the ledger, each holding its sequence number, time, event and the
//! SHA-256 of the previous record's stored bytes, so that editing or deleting a record breaks
//! the link to it, and cutting the tail is seen against a head (sequence number and hash) kept
//! beside the chain and written to the server's log.
//!
//! The ledger appends these records in the same write transaction as the change they describe
//! (an enrollment's DAC record and its audit record commit together, under one fsync).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::asn1;

/// The `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// What happened. The tag (`event`) is the name `audit list --event` filters on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A DAC was issued and recorded (`kind`: enrollment, renewal).
    EnrollmentGranted {
        label: String,
        identity: String,
        kind: String,
        serial: String,
        subject: String,
    },
    /// An enrollment request was refused; `rule` is the refusal as the client saw it.
    EnrollmentRefused {
        label: String,
        identity: Option<String>,
        presented: Option<String>,
        op: String,
        status: u16,
        rule: String,
    },
    TokenCreated {
        label: String,
        token: String,
        pid: Option<String>,
    },
    TokenSpent {
        label: String,
        token: String,
        serial: String,
    },
    TokenRevoked {
        label: String,
        token: String,
        identity: String,
    },
    Revocation {
        label: String,
        serial: String,
        reason: String,
        identity: String,
    },
    CrlIssued {
        label: String,
        number: u64,
        entries: u64,
    },
    /// A DAC was marked for re-key (its next renewal must bring a new key).
    RekeyMarked {
        label: String,
        serial: String,
        identity: String,
    },
    /// An enrollment was held for an operator's approval (RFC 7030 §4.2.3); `id` is what the
    /// operator approves or rejects.
    EnrollmentHeld {
        label: String,
        identity: String,
        id: String,
        subject: String,
    },
    /// An operator approved a held enrollment (the client's retry is then issued).
    RequestApproved {
        label: String,
        id: String,
        identity: String,
    },
    /// An operator rejected a held enrollment; the client gets 403 with `reason`.
    RequestRejected {
        label: String,
        id: String,
        identity: String,
        reason: String,
    },
    /// `serve` started with this config file (its SHA-256).
    ConfigLoaded { path: String, sha256: String },
    /// An operator changed something through the admin API or the CLI (`action`: the route,
    /// e.g. `POST /v1/tokens`), written after the change's own records (token_created,
    /// revocation, …) once it succeeded.
    AdminAction {
        identity: String,
        action: String,
        label: Option<String>,
    },
    /// The admin API refused a request (401 or 403): who, what, why.
    AdminRefused {
        identity: String,
        action: String,
        status: u16,
        reason: String,
    },
}

impl AuditEvent {
    /// What a recorded issuance appends, in order: the token it spent (if any), then the
    /// grant. Both ledgers append these in the transaction that records the DAC.
    pub fn issued(record: &super::DacRecord, token: Option<&str>) -> Vec<AuditEvent> {
        let serial = asn1::hex(&record.serial);
        let mut events = Vec::with_capacity(2);
        if let Some(token) = token {
            events.push(AuditEvent::TokenSpent {
                label: record.label.clone(),
                token: token.to_string(),
                serial: serial.clone(),
            });
        }
        events.push(AuditEvent::EnrollmentGranted {
            label: record.label.clone(),
            identity: record.requester.clone(),
            kind: if record.renews.is_some() {
                "renewal"
            } else {
                "enrollment"
            }
            .into(),
            serial,
            subject: record.subject.clone(),
        });
        events
    }

    /// The event's name (its serde tag).
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::EnrollmentGranted { .. } => "enrollment_granted",
            AuditEvent::EnrollmentRefused { .. } => "enrollment_refused",
            AuditEvent::TokenCreated { .. } => "token_created",
            AuditEvent::TokenSpent { .. } => "token_spent",
            AuditEvent::TokenRevoked { .. } => "token_revoked",
            AuditEvent::Revocation { .. } => "revocation",
            AuditEvent::CrlIssued { .. } => "crl_issued",
            AuditEvent::RekeyMarked { .. } => "rekey_marked",
            AuditEvent::EnrollmentHeld { .. } => "enrollment_held",
            AuditEvent::RequestApproved { .. } => "request_approved",
            AuditEvent::RequestRejected { .. } => "request_rejected",
            AuditEvent::ConfigLoaded { .. } => "config_loaded",
            AuditEvent::AdminAction { .. } => "admin_action",
            AuditEvent::AdminRefused { .. } => "admin_refused",
        }
    }

    /// The label it concerns, if any.
    pub fn label(&self) -> Option<&str> {
        match self {
            AuditEvent::EnrollmentGranted { label, .. }
            | AuditEvent::EnrollmentRefused { label, .. }
            | AuditEvent::TokenCreated { label, .. }
            | AuditEvent::TokenSpent { label, .. }
            | AuditEvent::TokenRevoked { label, .. }
            | AuditEvent::Revocation { label, .. }
            | AuditEvent::CrlIssued { label, .. }
            | AuditEvent::RekeyMarked { label, .. }
            | AuditEvent::EnrollmentHeld { label, .. }
            | AuditEvent::RequestApproved { label, .. }
            | AuditEvent::RequestRejected { label, .. } => Some(label),
            AuditEvent::AdminAction { label, .. } => label.as_deref(),
            AuditEvent::ConfigLoaded { .. } | AuditEvent::AdminRefused { .. } => None,
        }
    }

    /// Who acted, if known.
    pub fn identity(&self) -> Option<&str> {
        match self {
            AuditEvent::EnrollmentGranted { identity, .. }
            | AuditEvent::Revocation { identity, .. }
            | AuditEvent::TokenRevoked { identity, .. }
            | AuditEvent::RekeyMarked { identity, .. }
            | AuditEvent::EnrollmentHeld { identity, .. }
            | AuditEvent::RequestApproved { identity, .. }
            | AuditEvent::RequestRejected { identity, .. }
            | AuditEvent::AdminAction { identity, .. }
            | AuditEvent::AdminRefused { identity, .. } => Some(identity),
            AuditEvent::EnrollmentRefused {
                identity,
                presented,
                ..
            } => identity.as_deref().or(presented.as_deref()),
            AuditEvent::TokenSpent { token, .. } => Some(token),
            _ => None,
        }
    }
}

/// One record of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// SHA-256 of the previous record's stored bytes, hex ([`GENESIS`] for the first).
    pub prev: String,
}

impl AuditRecord {
    /// The bytes stored (and hashed): JSON with the fields in declaration order.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads stored bytes back.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// SHA-256 of a record's stored bytes: what the next record's `prev` holds.
pub fn hash(stored: &[u8]) -> [u8; 32] {
    Sha256::digest(stored).into()
}

/// The end of the chain: the last record's sequence number and hash. Written to the log as
/// `SEQ:HASH` (what `audit verify --head` takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Head {
    /// `SEQ:HEX`.
    pub fn parse(text: &str) -> Option<Self> {
        let (seq, hex) = text.split_once(':')?;
        let hash = asn1::unhex(hex.trim())?.try_into().ok()?;
        Some(Self {
            seq: seq.trim().parse().ok()?,
            hash,
        })
    }

    /// 40 bytes: sequence number (big-endian), hash.
    pub fn to_bytes(self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self {
            seq: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            hash: b.get(8..40)?.try_into().ok()?,
        })
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, asn1::hex(&self.hash))
    }
}

/// Where the chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The first record that is missing, altered or unreadable.
    pub seq: u64,
    pub problem: String,
}

/// Checks records fed in key order, one at a time (a ledger of millions is streamed).
pub struct Verifier {
    expected: u64,
    prev: [u8; 32],
    /// Heads the chain must pass through, with where each came from ("head kept in the
    /// ledger", "head given with --head").
    heads: Vec<(String, Head)>,
}

impl Verifier {
    /// A verifier that also holds the chain against `heads`.
    pub fn new(heads: Vec<(String, Head)>) -> Self {
        Self {
            expected: 0,
            prev: GENESIS,
            heads,
        }
    }

    /// Feeds the record stored under `key`.
    pub fn feed(&mut self, key: u64, stored: &[u8]) -> Result<(), Broken> {
        if key != self.expected {
            return Err(Broken {
                seq: self.expected,
                problem: format!(
                    "record {} is missing (deleted): the next one on file is {key}",
                    self.expected
                ),
            });
        }
        let record = AuditRecord::decode(stored).ok_or_else(|| Broken {
            seq: key,
            problem: format!("record {key} is unreadable (altered)"),
        })?;
        if record.seq != key {
            return Err(Broken {
                seq: key,
                problem: format!("record {key} says it is record {} (altered)", record.seq),
            });
        }
        if record.prev != asn1::hex(&self.prev) {
            // Record key-1's bytes no longer hash to what record key holds: key-1 was altered
            // (or, less likely, record key's link itself).
            let seq = key.saturating_sub(1);
            return Err(Broken {
                seq,
                problem: format!(
                    "record {seq} was altered: its hash is not the previous-record hash that \
                     record {key} holds"
                ),
            });
        }
        self.prev = hash(stored);
        if let Some((source, _)) = self
            .heads
            .iter()
            .find(|(_, h)| h.seq == key && h.hash != self.prev)
        {
            return Err(Broken {
                seq: key,
                problem: format!("record {key} was altered: it does not hash to the {source}"),
            });
        }
        self.expected += 1;
        Ok(())
    }

    /// After the last record: every head must have been reached. Returns the chain's head.
    pub fn finish(&self) -> Result<Option<Head>, Broken> {
        let last = self.expected.checked_sub(1).map(|seq| Head {
            seq,
            hash: self.prev,
        });
        for (source, head) in &self.heads {
            match last {
                Some(l) if l.seq >= head.seq => {}
                _ => {
                    return Err(Broken {
                        seq: self.expected,
                        problem: format!(
                            "the chain ends before record {} that the {source} names: records {} \
                             to {} were cut off",
                            head.seq, self.expected, head.seq
                        ),
                    });
                }
            }
        }
        Ok(last)
    }

    /// How many records passed.
    pub fn count(&self) -> u64 {
        self.expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS;
        (0..n)
            .map(|seq| {
                let bytes = AuditRecord {
                    seq,
                    time: 1,
                    event: AuditEvent::CrlIssued {
                        label: "a".into(),
                        number: seq,
                        entries: 0,
                    },
                    prev: asn1::hex(&prev),
                }
                .encode();
                prev = hash(&bytes);
                bytes
            })
            .collect()
    }

    fn verify(records: &[(u64, Vec<u8>)], heads: Vec<(String, Head)>) -> Result<u64, Broken> {
        let mut v = Verifier::new(heads);
        for (k, b) in records {
            v.feed(*k, b)?;
        }
        v.finish()?;
        Ok(v.count())
    }

    #[test]
    fn edits_deletions_and_cuts_are_named() {
        let c: Vec<(u64, Vec<u8>)> = chain(5)
            .into_iter()
            .enumerate()
            .map(|(i, b)| (i as u64, b))
            .collect();
        let head = Head {
            seq: 4,
            hash: hash(&c[4].1),
        };
        assert_eq!(verify(&c, vec![("head".into(), head)]), Ok(5));
        assert_eq!(Head::parse(&head.to_string()), Some(head));

        let mut edited = c.clone();
        edited[2].1 = String::from_utf8(edited[2].1.clone())
            .expect("utf-8")
            .replace("\"number\":2", "\"number\":9")
            .into_bytes();
        assert_eq!(verify(&edited, vec![]).expect_err("broken").seq, 2);

        let mut deleted = c.clone();
        deleted.remove(3);
        assert_eq!(verify(&deleted, vec![]).expect_err("broken").seq, 3);

        // The tail cut: invisible without a head, named with one.
        let cut = c[..3].to_vec();
        assert_eq!(verify(&cut, vec![]), Ok(3));
        assert_eq!(
            verify(&cut, vec![("head".into(), head)])
                .expect_err("broken")
                .seq,
            3
        );

        // The last record edited: named against the head.
        let mut last = c.clone();
        last[4].1 = String::from_utf8(last[4].1.clone())
            .expect("utf-8")
            .replace("\"number\":4", "\"number\":7")
            .into_bytes();
        assert_eq!(
            verify(&last, vec![("head".into(), head)])
                .expect_err("broken")
                .seq,
            4
        );
    }
}
