//! The ledger: every DAC we issue, on record before it leaves (DESIGN.md step 7).
//!
//! [`Ledger`] is the seam; [`redb::RedbLedger`] is the embedded default,
//! [`postgres::PgLedger`] the shared ledger of several nodes; both run the same test suite
//! (tests/ledger.rs). The ledger itself enforces the rules
//! that must hold under concurrency: unique serials, unique subjects per issuer (Matter Core
//! §6.2.2.3 via MATTER.md "DAC"), quotas per label, and one-time tokens.
//!
//! `store` knows nothing of HTTP.

pub mod audit;
mod job;
pub mod migrate;
pub mod postgres;
pub mod redb;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::revocation::RevocationReason;

/// Status of a DAC on record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Issued,
    Revoked { at: i64, reason: String },
}

/// One issued DAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DacRecord {
    /// Serial number magnitude bytes.
    #[serde(with = "hex_bytes")]
    pub serial: Vec<u8>,
    pub label: String,
    /// The issuing PAI's SKID: subjects are unique per issuer.
    #[serde(with = "hex_bytes")]
    pub issuer_key: Vec<u8>,
    /// Subject as text (`CN=…,VID=…,PID=…`).
    pub subject: String,
    /// Subject DER, the key of the uniqueness rule.
    #[serde(with = "hex_bytes")]
    pub subject_der: Vec<u8>,
    pub vid: u16,
    pub pid: u16,
    /// Who asked: client identity, token id, or the operator's CLI.
    pub requester: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// The certificate.
    #[serde(with = "hex_bytes")]
    pub der: Vec<u8>,
    pub status: Status,
    /// The serial of the DAC this one renews (simplereenroll), if any.
    #[serde(default, with = "opt_hex_bytes")]
    pub renews: Option<Vec<u8>>,
    /// The server generated the DAC's key (`/serverkeygen`); the key itself is never stored.
    #[serde(default)]
    pub server_keygen: bool,
}

impl DacRecord {
    /// The DAC's public key (SEC1 uncompressed). Every DAC on record is ours, so the key is the
    /// 65 bytes after the P-256 SPKI prefix.
    pub fn public_key(&self) -> Option<[u8; 65]> {
        let prefix = crate::asn1::P256_SPKI_PREFIX;
        let at = self.der.windows(prefix.len()).position(|w| w == prefix)?;
        self.der.get(at + 26..at + 26 + 65)?.try_into().ok()
    }
}

/// A one-time enrollment token, stored by the SHA-256 of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (the HTTP Basic user name).
    pub id: String,
    pub label: String,
    pub pid: Option<u16>,
    pub created_at: i64,
    /// Serial of the DAC that spent it.
    #[serde(default, with = "opt_hex_bytes")]
    pub spent_by: Option<Vec<u8>>,
    /// Unix seconds after which an unspent token is refused.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// The only DAC CN it may obtain (so that a leaked token cannot claim any identity).
    #[serde(default)]
    pub cn: Option<String>,
    /// When an operator revoked it.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// Where a token stands (`token list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenState {
    Unused,
    Spent(Vec<u8>),
    Expired,
    Revoked,
}

impl TokenRecord {
    /// Its state at `now`. Spent wins: a spent token stays answerable for the DAC it was spent
    /// on (policy's repeat rule).
    pub fn state(&self, now: i64) -> TokenState {
        match (&self.spent_by, self.revoked_at, self.expires_at) {
            (Some(serial), _, _) => TokenState::Spent(serial.clone()),
            (None, Some(_), _) => TokenState::Revoked,
            (None, None, Some(t)) if now >= t => TokenState::Expired,
            _ => TokenState::Unused,
        }
    }
}

/// An enrollment held for an operator's decision (manual approval, RFC 7030 §4.2.3). Nothing
/// is signed for it; the client's retry with the same CSR is issued once it is approved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRequest {
    /// What it is known by: `crate::approval::held_id` of its label and CSR.
    pub id: String,
    pub label: String,
    /// The DAC subject it asks for, as text (`CN=…,VID=…,PID=…`), for the operator.
    pub subject: String,
    /// SHA-256 of the CSR's DER, hex.
    pub csr_sha256: String,
    /// Who asked: client identity, token id, or the DAC being renewed (`dac:SERIAL`).
    pub requester: String,
    /// `enrollment` or `renewal`.
    pub kind: String,
    /// Unix seconds.
    pub requested_at: i64,
    /// Unix seconds after which an undecided request is refused as expired.
    pub expires_at: i64,
    /// The operator's decision, once made.
    pub decision: Option<Decision>,
}

/// An operator's decision on a [`HeldRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub approved: bool,
    /// Unix seconds.
    pub at: i64,
    /// The operator, as audited.
    pub by: String,
    /// Why it was rejected (required then; the client sees it).
    pub reason: Option<String>,
}

/// Where a held request stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldState {
    Waiting,
    Approved,
    Rejected(String),
    Expired,
}

impl HeldRequest {
    /// Its state at `now`: a decision stands whenever it was made; an undecided request
    /// expires at `expires_at`.
    pub fn state(&self, now: i64) -> HeldState {
        match &self.decision {
            Some(d) if d.approved => HeldState::Approved,
            Some(d) => HeldState::Rejected(d.reason.clone().unwrap_or_default()),
            None if now >= self.expires_at => HeldState::Expired,
            None => HeldState::Waiting,
        }
    }

    /// When it was settled: decided (the decision's time) or, undecided, expired (its
    /// `expires_at`, which may still be ahead). [`Ledger::prune_held`] counts its retention
    /// from here.
    pub fn settled_at(&self) -> i64 {
        self.decision.as_ref().map_or(self.expires_at, |d| d.at)
    }

    /// The state's name, as the CLI and the admin API show it.
    pub fn state_name(&self, now: i64) -> &'static str {
        match self.state(now) {
            HeldState::Waiting => "waiting",
            HeldState::Approved => "approved",
            HeldState::Rejected(_) => "rejected",
            HeldState::Expired => "expired",
        }
    }

    /// Records `decision`: only a waiting request can be decided, once (an operator who comes
    /// second, or after it expired, is told why). Both backends call this under their lock.
    pub fn decide(&mut self, decision: &Decision) -> Result<()> {
        match self.state(decision.at) {
            HeldState::Waiting => {
                self.decision = Some(decision.clone());
                Ok(())
            }
            HeldState::Expired => Err(Error::BadRequest(format!(
                "held request {} expired at {}; the client must send a new CSR",
                self.id,
                crate::asn1::format_time(self.expires_at)
            ))),
            _ => Err(Error::BadRequest(format!(
                "held request {} is already {}",
                self.id,
                self.state_name(decision.at)
            ))),
        }
    }
}

/// One revoked DAC of a label, as its CRL lists it (RFC 5280 §5.1.2.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial number magnitude bytes, exactly as issued (MATTER.md "Revocation": compared as
    /// bytes, never re-encoded).
    pub serial: Vec<u8>,
    /// Unix seconds.
    pub at: i64,
    pub reason: RevocationReason,
}

/// The last CRL issued for a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlRecord {
    /// cRLNumber (RFC 5280 §5.2.3), increasing per label.
    pub number: u64,
    /// thisUpdate and nextUpdate, Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
    /// How many revoked DACs it lists.
    pub entries: u64,
    /// The signed CRL, DER.
    pub der: Vec<u8>,
}

/// A `certs list` query: every filter optional, results by issue time (then sequence number)
/// after `after`. The label and the time range are served by indexes; the other filters are
/// applied to the records those visit.
#[derive(Clone, Debug, Default)]
pub struct CertQuery {
    /// Indexed: only this label's DACs are visited.
    pub label: Option<String>,
    pub vid: Option<u16>,
    pub pid: Option<u16>,
    /// `Some(false)`: not revoked; `Some(true)`: revoked.
    pub revoked: Option<bool>,
    /// Issued at or after (Unix seconds). Indexed.
    pub since: Option<i64>,
    /// Issued before (Unix seconds). Indexed.
    pub until: Option<i64>,
    /// Text contained in the subject, or hex digits in the serial (case-insensitive).
    pub contains: Option<String>,
    /// Text contained in the requester.
    pub requester: Option<String>,
    /// The cursor: only records after this position (a page's `next`).
    pub after: Option<Position>,
    pub limit: usize,
}

/// Where a record stands in the inventory's order: issue time, then sequence number. Written
/// `TIME:SEQ` (the `certs list --after` cursor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub time: i64,
    pub seq: u64,
}

impl Position {
    /// Parses `TIME:SEQ`.
    pub fn parse(text: &str) -> Option<Self> {
        let (t, s) = text.split_once(':')?;
        Some(Self {
            time: t.parse().ok()?,
            seq: s.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.time, self.seq)
    }
}

/// One page of a [`CertQuery`].
#[derive(Clone, Debug)]
pub struct CertPage {
    /// (sequence number, record), by issue time then sequence number.
    pub records: Vec<(u64, DacRecord)>,
    /// The cursor for the next page, if there may be more.
    pub next: Option<Position>,
}

impl CertQuery {
    /// Whether `r` passes the filters that are not indexes (all of them, re-checked).
    pub fn matches(&self, r: &DacRecord) -> bool {
        self.label.as_ref().is_none_or(|l| r.label == *l)
            && self.vid.is_none_or(|v| r.vid == v)
            && self.pid.is_none_or(|p| r.pid == p)
            && self
                .revoked
                .is_none_or(|want| matches!(r.status, Status::Revoked { .. }) == want)
            && self.since.is_none_or(|t| r.issued_at >= t)
            && self.until.is_none_or(|t| r.issued_at < t)
            && self.contains.as_ref().is_none_or(|c| {
                let c = c.to_lowercase();
                r.subject.to_lowercase().contains(&c)
                    || crate::asn1::hex(&r.serial).contains(&c.replace(':', ""))
            })
            && self
                .requester
                .as_ref()
                .is_none_or(|q| r.requester.contains(q.as_str()))
    }
}

/// What the ledger must check atomically with the insert.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// The label's quota, if any.
    pub quota: Option<u64>,
    /// A token id that this issuance spends (refused if already spent).
    pub token: Option<String>,
    /// Not counted against the label's quota (a renewal on a label whose
    /// `renewal.counts_against_quota` is false).
    pub uncounted: bool,
}

/// A commit in progress: await it (async) or [`Pending::wait`] for it (blocking). It resolves
/// once the record is durable or refused; a DAC is returned only after it resolved `Ok`.
pub struct Pending<T = Committed>(tokio::sync::oneshot::Receiver<Result<T>>);

/// What receives a commit's outcome: the writing side of a [`Pending`], or a continuation
/// ([`Completer::new`]) that the ledger calls on its own thread.
pub struct Completer<T = Committed>(Box<dyn FnOnce(Result<T>) + Send>);

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// The record is now on record, durably.
    Recorded,
    /// The same public key already holds this subject (a client retrying after a lost
    /// response): nothing was written; this is the DAC on record, to be returned instead.
    AlreadyOnRecord(Box<DacRecord>),
}

impl<T: Send + 'static> Pending<T> {
    /// A new pending result and the completer that resolves it.
    pub fn new() -> (Completer<T>, Pending<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Completer::new(move |result| {
                // A dropped waiter is fine.
                let _ = tx.send(result);
            }),
            Pending(rx),
        )
    }

    /// Blocks the calling thread until the commit resolves (works inside or outside a runtime;
    /// call it off the async runtime's worker threads).
    pub fn wait(self) -> Result<T> {
        block_on(self)
    }
}

impl<T> Completer<T> {
    /// A completer that hands the outcome to `then`; it runs on the ledger's thread, so it must
    /// be short and must not block.
    pub fn new(then: impl FnOnce(Result<T>) + Send + 'static) -> Self {
        Self(Box::new(then))
    }

    /// Resolves the pending result.
    pub fn complete(self, result: Result<T>) {
        (self.0)(result)
    }
}

impl<T> std::future::Future for Pending<T> {
    type Output = Result<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(crate::Error::Ledger(
                    "no answer from the ledger: its writer or the issuing task stopped".into(),
                ))
            })
        })
    }
}

/// Polls a future to completion on this thread, parking between wake-ups.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = std::pin::pin!(future);
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The ledger seam. Reads block briefly; writes are submitted and resolve through [`Pending`],
/// so an async caller never holds a thread while a commit is made durable.
pub trait Ledger: Send + Sync {
    /// Submits `record` to be recorded durably (fsync'd) and gives `done` the outcome. It is
    /// recorded if, atomically: its serial is new, its subject is not held by another DAC of the
    /// same issuer (a renewal may take over its predecessor's subject; the same public key
    /// asking again gets [`Committed::AlreadyOnRecord`]), the label's quota has room, and the
    /// admission's token is unspent.
    fn submit_then(&self, record: DacRecord, admission: Admission, done: Completer<Committed>);
    /// [`Ledger::submit_then`], resolving a [`Pending`].
    fn submit(&self, record: &DacRecord, admission: &Admission) -> Pending<Committed> {
        let (done, pending) = Pending::new();
        self.submit_then(record.clone(), admission.clone(), done);
        pending
    }
    /// [`Ledger::submit`] and wait for it.
    fn commit(&self, record: &DacRecord, admission: &Admission) -> Result<Committed> {
        self.submit(record, admission).wait()
    }
    /// The DAC with this serial.
    fn by_serial(&self, serial: &[u8]) -> Result<Option<DacRecord>>;
    /// The current DAC with this subject under this issuer.
    fn by_subject(&self, issuer_key: &[u8], subject_der: &[u8]) -> Result<Option<DacRecord>>;
    /// Up to `limit` DACs in issue order, starting after the first `skip`.
    fn list(&self, skip: usize, limit: usize) -> Result<Vec<DacRecord>>;
    /// One page of DACs matching `query` (see [`CertQuery`] for what is indexed).
    fn list_page(&self, query: &CertQuery) -> Result<CertPage>;
    /// The newest DACs (of `label`, or of every label), newest first, at most `limit`: a
    /// bounded window read backwards along the inventory's time index (the dashboard's charts).
    fn recent(&self, label: Option<&str>, limit: usize) -> Result<Vec<DacRecord>>;
    /// How many DACs `label` has issued.
    fn count(&self, label: &str) -> Result<u64>;
    /// Marks a DAC revoked and lists it among its label's revoked DACs; returns the record as
    /// revoked. [`crate::Error::NotFound`] when no DAC has this serial,
    /// [`crate::Error::AlreadyRevoked`] when it is revoked already (nothing changes).
    /// `by` names who revoked it, for the audit record committed with it.
    fn revoke(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        at: i64,
        by: &str,
    ) -> Result<DacRecord>;
    /// Marks a DAC for re-key: its next renewal must bring a new key (audited as done `by`).
    /// [`crate::Error::NotFound`] for an unknown serial; a revoked or already marked DAC is
    /// refused and nothing changes.
    fn mark_rekey(&self, serial: &[u8], at: i64, by: &str) -> Result<DacRecord>;
    /// When and by whom the DAC with `serial` was marked for re-key, if it was.
    fn rekey_mark(&self, serial: &[u8]) -> Result<Option<(i64, String)>>;
    /// The revoked DACs of `label`, in serial order.
    fn revoked(&self, label: &str) -> Result<Vec<RevokedEntry>>;
    /// The next cRLNumber of `label` (1 for its first CRL), taken for good: numbers only grow,
    /// also when a CRL that took one is never stored.
    fn next_crl_number(&self, label: &str) -> Result<u64>;
    /// Keeps `crl` as the label's current CRL; refused if it is not newer (by cRLNumber) than
    /// the one kept.
    fn put_crl(&self, label: &str, crl: &CrlRecord) -> Result<()>;
    /// The label's current CRL.
    fn crl(&self, label: &str) -> Result<Option<CrlRecord>>;
    /// Appends `event` to the audit chain (with the next write transaction) and returns at once:
    /// for events that change nothing else in the ledger (a refusal, a config load). Changes
    /// the ledger makes itself (a DAC, a token, a revocation, a CRL) are audited in their own
    /// transaction. A failure to append is logged.
    fn audit(&self, event: audit::AuditEvent);
    /// Up to `limit` audit records from sequence number `from` on, in order.
    fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<audit::AuditRecord>>;
    /// The head of the audit chain as the ledger keeps it.
    fn audit_head(&self) -> Result<Option<audit::Head>>;
    /// Checks the whole audit chain (and that it reaches `head`, if given); the head it ends at.
    fn audit_verify(
        &self,
        head: Option<audit::Head>,
    ) -> Result<std::result::Result<(u64, Option<audit::Head>), audit::Broken>>;
    /// Stores a new token under the SHA-256 of its secret.
    fn put_token(&self, secret_hash: &[u8; 32], token: &TokenRecord) -> Result<()>;
    /// The token whose secret hashes to `secret_hash`.
    fn token(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>>;
    /// Every token, by id.
    fn tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Revokes an unspent token (audited as done `by`); [`crate::Error::NotFound`] for an
    /// unknown id, a refusal for a spent or already revoked one (nothing changes).
    fn revoke_token(&self, id: &str, at: i64, by: &str) -> Result<TokenRecord>;

    /// Manual approval (RFC 7030 §4.2.3): records `request` as held, unless a request with its
    /// id is on record already, atomically; returns the one on record (the new one, or the
    /// earlier one with its decision). A new one is audited (`enrollment_held`) in the same
    /// transaction.
    fn hold(&self, request: &HeldRequest) -> Result<HeldRequest>;
    /// The held request with this id (decided or not).
    fn held(&self, id: &str) -> Result<Option<HeldRequest>>;
    /// Every held request (decided or not), by request time.
    fn held_list(&self) -> Result<Vec<HeldRequest>>;
    /// Records an operator's decision on held request `id`, atomically with the checks that
    /// it is undecided and not expired at `decision.at`, and audits it (`request_approved` or
    /// `request_rejected`, by `decision.by`). [`crate::Error::NotFound`] for an unknown id; a
    /// decided or expired request is refused ([`crate::Error::BadRequest`]) and nothing
    /// changes.
    fn decide(&self, id: &str, decision: &Decision) -> Result<HeldRequest>;
    /// Removes every held request settled ([`HeldRequest::settled_at`]) before `before` (Unix
    /// seconds), atomically; returns how many. A waiting request is never removed (it settles
    /// at its expiry, which is ahead). The audit chain keeps each one's `enrollment_held` and
    /// decision records; a client that sends a removed request's CSR again is held anew.
    fn prune_held(&self, before: i64) -> Result<u64>;

    /// Finishes what was submitted and releases the ledger (another process may open it next).
    fn close(&self);

    /// Writes a consistent copy of the whole ledger to a new file at `to` (never overwriting),
    /// while it keeps serving; returns the DACs copied.
    fn backup_to(&self, to: &std::path::Path) -> Result<u64>;

    /// Every record, from one snapshot (`ledger migrate`): DACs in issue order, then subject
    /// holders, quota counts, tokens, re-key marks, cRLNumbers, CRLs, the audit chain in order
    /// and its head. Held in memory.
    fn export(&self) -> Result<Vec<migrate::Item>>;
    /// Writes `items` (an [`Ledger::export`]) into this ledger in one transaction; refused,
    /// changing nothing, unless the ledger is empty (no DAC, token or audit record).
    fn import(&self, items: &[migrate::Item]) -> Result<()>;
}

/// Opens the ledger the configuration names.
pub fn open(config: &crate::config::Config) -> Result<std::sync::Arc<dyn Ledger>> {
    open_store(&config.store)
}

/// Opens the ledger `store` names (`ledger migrate` opens two).
pub fn open_store(store: &crate::config::StoreConfig) -> Result<std::sync::Arc<dyn Ledger>> {
    Ok(match store {
        crate::config::StoreConfig::Redb(path) => {
            let fault = std::env::var_os(redb::DANGER_FAULT_ENV).map(std::path::PathBuf::from);
            if let Some(trigger) = &fault {
                tracing::warn!(
                    trigger = %trigger.display(),
                    "DANGER: {} is set: ledger writes fail with EIO while this file exists (tests only)",
                    redb::DANGER_FAULT_ENV
                );
            }
            std::sync::Arc::new(redb::RedbLedger::open_with(path, fault)?)
        }
        crate::config::StoreConfig::Postgres(pg) => {
            std::sync::Arc::new(postgres::PgLedger::open(pg)?)
        }
    })
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::asn1::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        crate::asn1::unhex(&text).ok_or_else(|| serde::de::Error::custom("bad hex"))
    }
}

mod opt_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&crate::asn1::hex(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| crate::asn1::unhex(&t).ok_or_else(|| serde::de::Error::custom("bad hex")))
            .transpose()
    }
}
