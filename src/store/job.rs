//! A write queued to a backend's single writer (group commit), and where its answer goes:
//! the same for [`super::redb`] and [`super::postgres`], so both apply one set of operations.

use super::audit::AuditEvent;
use super::{
    Admission, Committed, Completer, CrlRecord, DacRecord, Decision, HeldRequest, TokenRecord,
};
use crate::error::{Error, Result};
use crate::revocation::RevocationReason;

/// One write, applied inside the writer's transaction.
pub(super) enum Op {
    Commit(Box<DacRecord>, Admission),
    Revoke {
        serial: Vec<u8>,
        reason: RevocationReason,
        at: i64,
        by: String,
    },
    Audit(Box<AuditEvent>),
    MarkRekey {
        serial: Vec<u8>,
        at: i64,
        by: String,
    },
    PutToken([u8; 32], TokenRecord),
    RevokeToken {
        id: String,
        at: i64,
        by: String,
    },
    NextCrlNumber(String),
    PutCrl(String, Box<CrlRecord>),
    Hold(Box<HeldRequest>),
    Decide(String, Box<Decision>),
    /// [`super::Ledger::prune_held`].
    PruneHeld(i64),
}

pub(super) struct Job {
    pub op: Op,
    pub reply: Reply,
}

/// Where a job's answer goes.
pub(super) enum Reply {
    Commit(Completer<Committed>),
    Flag(Completer<bool>),
    Record(Completer<DacRecord>),
    Number(Completer<u64>),
    Token(Completer<TokenRecord>),
    Held(Completer<HeldRequest>),
}

/// A job's answer.
pub(super) enum Outcome {
    Commit(Committed),
    Flag(bool),
    Record(Box<DacRecord>),
    Number(u64),
    Token(Box<TokenRecord>),
    Held(Box<HeldRequest>),
}

impl Reply {
    /// Hands `result` to whoever waits; an answer of the wrong kind (a writer bug) is an
    /// internal error, never a wrong value.
    pub fn complete(self, result: Result<Outcome>) {
        fn give<T>(c: Completer<T>, result: Result<Outcome>, take: fn(Outcome) -> Option<T>) {
            c.complete(result.and_then(|outcome| {
                take(outcome).ok_or_else(|| Error::Internal("ledger reply mismatch".into()))
            }))
        }
        match self {
            Reply::Commit(c) => give(c, result, |o| match o {
                Outcome::Commit(v) => Some(v),
                _ => None,
            }),
            Reply::Flag(c) => give(c, result, |o| match o {
                Outcome::Flag(v) => Some(v),
                _ => None,
            }),
            Reply::Record(c) => give(c, result, |o| match o {
                Outcome::Record(v) => Some(*v),
                _ => None,
            }),
            Reply::Number(c) => give(c, result, |o| match o {
                Outcome::Number(v) => Some(v),
                _ => None,
            }),
            Reply::Token(c) => give(c, result, |o| match o {
                Outcome::Token(v) => Some(*v),
                _ => None,
            }),
            Reply::Held(c) => give(c, result, |o| match o {
                Outcome::Held(v) => Some(*v),
                _ => None,
            }),
        }
    }

    /// For an audit record nobody waits for: a failure to append it is logged.
    pub fn logged(event: &'static str) -> Reply {
        Reply::Flag(Completer::new(move |r| {
            if let Err(e) = r {
                tracing::error!(event, error = %e, "audit record not appended");
            }
        }))
    }

    pub fn fail(self, e: Error) {
        self.complete(Err(e));
    }
}
