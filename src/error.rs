//! The one error type of matter-est.
//!
//! Every refusal carries the data a person needs to fix the request. Which HTTP status a variant
//! becomes is decided in one place, [`Error::kind`], and the EST layer maps that kind to a status
//! code; [`Error::public_message`] is the only text a client ever sees.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failure is presented to a client; the EST layer turns it into a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or its CSR is malformed or breaks a format rule (400).
    BadRequest,
    /// No credentials, or wrong ones (401).
    Unauthenticated,
    /// Authenticated, but policy does not allow it (403).
    Forbidden,
    /// No such label or record (404).
    NotFound,
    /// The request conflicts with what is on record (409 on the wire is not used by EST
    /// clients, so this maps to 403 with the reason; see `est::status_for`).
    Conflict,
    /// A quota is used up (403 with the reason).
    QuotaExhausted,
    /// Wrong HTTP method for the route (405, with `Allow`).
    MethodNotAllowed,
    /// Body over the cap (413).
    PayloadTooLarge,
    /// Wrong request media type (415).
    UnsupportedMediaType,
    /// The request took longer than its deadline (408).
    Timeout,
    /// Too many requests of this kind for now (429, with `Retry-After`).
    TooManyRequests,
    /// Not refused: held for an operator's approval; the client asks again later (202 with
    /// `Retry-After`, RFC 7030 §4.2.3).
    Held,
    /// Our own fault; the client sees a generic message (500).
    Internal,
    /// A dependency (the PAI signer's token) is unreachable for now; the client should retry
    /// later (503 with `Retry-After`, RFC 9110 §15.6.4).
    Unavailable,
}

/// Everything that can go wrong, with the data that explains it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- CSR intake (csr module) ----
    #[error("the body is not a PKCS#10 CSR: {0}")]
    NotACsr(String),
    #[error("the CSR signature does not verify (proof of possession failed)")]
    CsrBadSignature,
    #[error("the CSR key must be EC P-256 (prime256v1), found {0}")]
    CsrKeyNotP256(String),
    #[error("the CSR must be signed with ecdsa-with-SHA256, found {0}")]
    CsrHashNotSha256(String),
    #[error("the subject carries more than one Matter {0} attribute")]
    DuplicateId(&'static str),
    #[error("Matter {which} {value:?} is not valid: {problem}")]
    BadId {
        which: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error(
        "the CN {cn:?} contains {tag:?} not followed by 4 uppercase hex digits; Matter verifiers then reject the whole attestation"
    )]
    BadLegacyTag { cn: String, tag: &'static str },
    #[error("the CN is {len} characters long; a DAC CN is at most 64")]
    CnTooLong { len: usize },
    #[error("the CN \"{cn}\" is refused: {rule}")]
    BadCn { cn: String, rule: String },
    #[error(
        "the CSR carries no PID and label {label:?} is not fixed to one product; put a PID in the subject"
    )]
    MissingPid { label: String },
    #[error("the CSR subject carries attribute {oid}, which label {label:?} refuses")]
    SubjectAttributeRefused { oid: String, label: String },

    // ---- DAC profile and label policy ----
    #[error("VID {vid} does not match the PAI's VID {pai_vid} on label {label:?}")]
    VidMismatch {
        vid: String,
        pai_vid: String,
        label: String,
    },
    #[error("PID {pid} is not allowed on label {label:?}{reason}")]
    PidNotAllowed {
        pid: String,
        label: String,
        reason: String,
    },
    #[error("the DAC would be {size} bytes; Matter allows at most 600 (shorten the CN)")]
    DacTooLarge { size: usize },
    #[error("a DAC with subject {subject} was already issued by label {label:?}'s PAI")]
    SubjectTaken { subject: String, label: String },
    #[error("label {label:?} has used its quota of {quota} DACs")]
    QuotaExhausted { label: String, quota: u64 },
    #[error("unknown label {0:?}")]
    UnknownLabel(String),
    #[error(
        "DAC serial {serial} was renewed less than the label's renewal.min_interval_secs ago; retry in {retry_after} s"
    )]
    RenewalTooSoon { serial: String, retry_after: u64 },
    #[error(
        "label {label:?} is over its enrollment rate limit (labels.{label}.rate_limit); retry in {retry_after} s"
    )]
    RateLimited { label: String, retry_after: u64 },

    // ---- manual approval (RFC 7030 §4.2.3) ----
    #[error(
        "enrollment request {id} on label {label:?} awaits an operator's approval; ask again in {retry_after_secs} s with the same CSR"
    )]
    AwaitingApproval {
        id: String,
        label: String,
        retry_after_secs: u64,
    },
    #[error("enrollment request {id} was rejected by an operator: {reason}")]
    ApprovalRejected { id: String, reason: String },
    #[error(
        "enrollment request {id} was not decided within labels.{label}.pending_expiry_secs and expired at {at}; send a new CSR to ask again"
    )]
    ApprovalExpired {
        id: String,
        label: String,
        at: String,
    },

    #[error("DAC serial {serial} is already revoked ({reason}, {at})")]
    AlreadyRevoked {
        serial: String,
        reason: String,
        at: String,
    },

    /// `GET /metrics` on a server whose configuration turned metrics off.
    #[error(
        "metrics are off on this server ([admin] metrics = false); set [admin] metrics = true (or remove the key) and restart it to serve /metrics"
    )]
    MetricsOff,

    /// A running server's admin API refused or failed the request (the CLI over its socket or
    /// `--server`): its status and message, kept so the exit is the same as on the ledger.
    #[error("{message}")]
    Api { status: u16, message: String },

    // ---- authentication and policy (EST) ----
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("the request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be {expected}, not {found:?}")]
    UnsupportedMediaType {
        expected: &'static str,
        found: String,
    },
    #[error("the request was not completed within {secs} s")]
    Timeout { secs: u64 },

    // ---- operator-facing: configuration and key material ----
    #[error("{file}: {key}: {problem}")]
    Config {
        file: PathBuf,
        key: String,
        problem: String,
    },
    #[error("key file {path}: {problem}")]
    KeyFile { path: PathBuf, problem: String },
    #[error("{path}: {problem}")]
    Io { path: PathBuf, problem: String },

    // ---- our own faults ----
    #[error("self-check refused the DAC: {0}")]
    SelfCheck(String),
    #[error("signer failed: {0}")]
    Signer(String),
    #[error("PKCS#11 module {module}, token {token}, key {key}: {problem}")]
    Pkcs11 {
        module: PathBuf,
        token: String,
        key: String,
        problem: String,
    },
    #[error("PAI signer ({signer}) is unavailable: {reason}; retry in {retry_after_secs} s")]
    SignerUnavailable {
        signer: String,
        reason: String,
        retry_after_secs: u64,
    },
    #[error("ledger: {0}")]
    Ledger(String),
    /// The ledger cannot serve for now: the embedded one cannot write (disk full, I/O error) and
    /// is being reopened, or the shared one (PostgreSQL) is unreachable or refused for a reason
    /// that passes (down, restarting, a lock conflict). Nothing was recorded, or what was is
    /// looked up before an answer; the client should retry (503 with `Retry-After`).
    #[error("the ledger is unavailable: {reason}; retry in {retry_after_secs} s")]
    LedgerUnavailable {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The one classification of every error, from which the wire status follows.
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            NotACsr(_)
            | CsrBadSignature
            | CsrKeyNotP256(_)
            | CsrHashNotSha256(_)
            | DuplicateId(_)
            | BadId { .. }
            | BadLegacyTag { .. }
            | CnTooLong { .. }
            | BadCn { .. }
            | MissingPid { .. }
            | SubjectAttributeRefused { .. }
            | DacTooLarge { .. }
            | BadRequest(_) => ErrorKind::BadRequest,
            VidMismatch { .. }
            | PidNotAllowed { .. }
            | Forbidden(_)
            | ApprovalRejected { .. }
            | ApprovalExpired { .. } => ErrorKind::Forbidden,
            AwaitingApproval { .. } => ErrorKind::Held,
            SubjectTaken { .. } | AlreadyRevoked { .. } => ErrorKind::Conflict,
            QuotaExhausted { .. } => ErrorKind::QuotaExhausted,
            UnknownLabel(_) | NotFound(_) | MetricsOff => ErrorKind::NotFound,
            Unauthenticated(_) => ErrorKind::Unauthenticated,
            MethodNotAllowed { .. } => ErrorKind::MethodNotAllowed,
            PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            UnsupportedMediaType { .. } => ErrorKind::UnsupportedMediaType,
            Timeout { .. } => ErrorKind::Timeout,
            RenewalTooSoon { .. } | RateLimited { .. } => ErrorKind::TooManyRequests,
            Config { .. }
            | KeyFile { .. }
            | Io { .. }
            | SelfCheck(_)
            | Signer(_)
            | Pkcs11 { .. }
            | Ledger(_)
            | Internal(_) => ErrorKind::Internal,
            SignerUnavailable { .. } | LedgerUnavailable { .. } => ErrorKind::Unavailable,
            Api { status, .. } => match status {
                202 => ErrorKind::Held,
                400 => ErrorKind::BadRequest,
                401 => ErrorKind::Unauthenticated,
                403 => ErrorKind::Forbidden,
                404 => ErrorKind::NotFound,
                405 => ErrorKind::MethodNotAllowed,
                413 => ErrorKind::PayloadTooLarge,
                429 => ErrorKind::TooManyRequests,
                503 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// The text a client may see: the full message for its own mistakes, nothing internal.
    pub fn public_message(&self) -> String {
        match self.kind() {
            ErrorKind::Internal => "internal error; the operator's log has the details".into(),
            // Which token failed and why is for the operator's log only.
            ErrorKind::Unavailable => match self {
                Error::SignerUnavailable {
                    retry_after_secs, ..
                } => {
                    format!("the signer is temporarily unavailable; retry in {retry_after_secs} s")
                }
                Error::LedgerUnavailable {
                    retry_after_secs, ..
                } => {
                    format!("the ledger is temporarily unavailable; retry in {retry_after_secs} s")
                }
                _ => "temporarily unavailable; retry later".into(),
            },
            _ => self.to_string(),
        }
    }

    /// Seconds after which a refused request may succeed (`Retry-After`, RFC 9110 §10.2.3).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::RenewalTooSoon { retry_after, .. } | Error::RateLimited { retry_after, .. } => {
                Some(*retry_after)
            }
            // RFC 7030 §4.2.3: 202 carries Retry-After.
            Error::AwaitingApproval {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            // Until the signer's next reconnection attempt.
            Error::SignerUnavailable {
                retry_after_secs, ..
            }
            | Error::LedgerUnavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// Names the config key that pointed at the file this error is about (an I/O or key-file
    /// error while loading what the config names): `FILE: KEY: problem`.
    pub fn in_key(self, key: impl Into<String>) -> Self {
        match self {
            Error::Io { path, problem } => Error::Config {
                file: path,
                key: key.into(),
                problem,
            },
            Error::KeyFile { path, problem } => Error::Config {
                file: path,
                key: key.into(),
                problem: format!("key file: {problem}"),
            },
            other => other,
        }
    }

    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Error::Io {
            path: path.into(),
            problem: e.to_string(),
        }
    }
}
