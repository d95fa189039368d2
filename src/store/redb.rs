//! The embedded ledger on redb: one file, fsync'd on every commit (DESIGN.md: why not sled).
//!
//! Writes go through one writer thread that commits whatever is queued in one transaction
//! (group commit; under load it first waits up to [`GATHER`] for more): each record is still
//! checked and acknowledged only after the fsync that makes it durable, but many concurrent
//! enrollments share one fsync. A single writer also makes the
//! quota, uniqueness and token checks atomic with the insert.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::audit::{self, AuditEvent, AuditRecord, Head};
use super::job::{Job, Op, Outcome, Reply};
use super::migrate::Item;
use super::{
    Admission, CertPage, CertQuery, Committed, Completer, CrlRecord, DacRecord, Decision,
    HeldRequest, Ledger, Pending, RevokedEntry, Status, TokenRecord,
};
use crate::error::{Error, Result};
use crate::revocation::RevocationReason;

/// issue sequence number → record ([`codec`]). Keyed by sequence so that a commit appends to
/// the end of the tree instead of rewriting pages all over it (serials are only roughly ordered).
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// serial → sequence number. Our serials start with their issuance time
/// (`profile::random_serial`), so inserts land at the end of this tree as well.
const SERIALS: TableDefinition<&[u8], u64> = TableDefinition::new("serials");
/// SHA-256(issuer SKID ‖ subject DER)[..16] → sequence number of the current holder. A short
/// fixed-size key keeps this random-access index small; the record's own subject is compared
/// on lookup.
const SUBJECTS: TableDefinition<&[u8], u64> = TableDefinition::new("subjects");
/// label → DACs issued.
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
/// SHA-256 of a token secret → token (JSON).
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
/// token id → SHA-256 of its secret.
const TOKEN_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("token_ids");
/// label ‖ 0x00 ‖ serial → revocation time (8 bytes, big-endian) ‖ RFC 5280 reason code: a
/// label's revoked DACs are one range scan, which is what building its CRL needs. (A label is
/// ASCII without NUL, `config`, so the separator cannot occur in it.)
const REVOKED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("revoked");
/// label → the last cRLNumber taken.
const CRL_NUMBERS: TableDefinition<&str, u64> = TableDefinition::new("crl_numbers");
/// label → its current CRL: number, thisUpdate, nextUpdate, entries (8 bytes each, big-endian),
/// DER.
const CRLS: TableDefinition<&str, &[u8]> = TableDefinition::new("crls");

/// [`position_key`] → (): every DAC by issue time, then sequence number; `certs list` pages
/// through it, `--since`/`--until` as a key range.
const BY_TIME: TableDefinition<&[u8], ()> = TableDefinition::new("by_time");
/// label ‖ 0x00 ‖ [`position_key`] → (): one label's DACs in the same order, so that `certs
/// list --label` visits that label only. Both indexes append near their end (issue times grow).
const BY_LABEL: TableDefinition<&[u8], ()> = TableDefinition::new("by_label_time");

/// serial → when it was marked for re-key (8 bytes, big-endian) ‖ who marked it (UTF-8).
const REKEY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rekey");

/// held request id → [`HeldRequest`] (JSON): enrollments waiting for, or given, an operator's
/// decision (manual approval).
const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held");

/// The audit chain (`store::audit`): sequence number → record (JSON), appended in the write
/// transaction of the change it describes.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// "head" → the chain's last sequence number and hash (`audit::Head::to_bytes`): where the next
/// record links to, and what a cut tail is seen against.
const AUDIT_HEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_head");
const HEAD_KEY: &str = "head";

/// Most writes folded into one transaction; with [`GATHER`], bounds the latency one commit adds
/// to the first waiter. 256 × ~1 KiB records stays well inside one redb page batch.
const MAX_GROUP: usize = 256;

/// redb's page cache. Its default (1 GiB) lets a busy server's RSS grow with the ledger; the
/// hot set here is the tail of the tables, so 16 MiB keeps lookups in memory and RSS flat.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The first wait between two attempts to reopen a ledger that failed an I/O operation; it
/// doubles up to [`REOPEN_BACKOFF_MAX`]. Short, because a transient error (a stalled disk
/// that recovers) should cost the line little.
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait between two reopen attempts. A full disk stays full until someone frees
/// space; attempting every 5 s costs nothing and brings the line back within 5 s of that.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// `Retry-After` (RFC 9110 §10.2.3) while the ledger is being reopened: one longest wait, by
/// then the next attempt was made.
pub const RETRY_AFTER_SECS: u64 = REOPEN_BACKOFF_MAX.as_secs();

/// The environment variable of the danger switch that makes the ledger fail its writes with
/// EIO while the file it names exists, or its reads instead while that file says `reads`
/// ([`faulty::FaultyFile`]). For tests of disk errors on a machine without device-mapper's
/// `error` target; never set it in production.
pub const DANGER_FAULT_ENV: &str = "MATTER_EST_DANGER_INJECT_LEDGER_EIO_WHILE";

/// The embedded ledger.
///
/// Disk full and disk errors (issue 17 item 6): once a write fails with an I/O error, redb
/// refuses every later operation ("Previous I/O error occurred") until the database is closed
/// and opened again. The writer thread does that by itself: it takes the database out of
/// service, waits for the reads in flight, drops it and reopens the file (redb's repair brings
/// it back to its last durable commit), retrying with backoff until the disk lets it. Meanwhile
/// every request gets [`Error::LedgerUnavailable`] (503 with `Retry-After`). A commit whose
/// fsync failed was never acknowledged; if it reached the disk anyway, the client's retry finds
/// its DAC on record (the repeat rule), so nothing is lost or duplicated.
pub struct RedbLedger {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the writer thread is sent.
enum Msg {
    Job(Job),
    /// A read failed with an I/O error on the database opened `generation`-th: reopen it,
    /// unless that was done already.
    Reopen {
        generation: u64,
    },
}

/// What the writer and the readers share: the open database, or none while it is reopened.
struct Shared {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
    /// How many times the database was reopened (changed under `db`'s write lock).
    generation: AtomicU64,
    /// [`DANGER_FAULT_ENV`]'s trigger file, if the switch is on.
    fault: Option<PathBuf>,
}

impl Shared {
    /// The database, unless it is out of service.
    fn current(&self) -> Result<Arc<Database>> {
        match self.db.read() {
            Ok(db) => db.clone().ok_or_else(reopening),
            Err(_) => Err(Error::Ledger("the ledger lock is poisoned".into())),
        }
    }

    /// The database, unless it is out of service, and its generation.
    fn current_generation(&self) -> Result<(Arc<Database>, u64)> {
        match self.db.read() {
            Ok(db) => {
                let generation = self.generation.load(Ordering::Acquire);
                Ok((db.clone().ok_or_else(reopening)?, generation))
            }
            Err(_) => Err(Error::Ledger("the ledger lock is poisoned".into())),
        }
    }
}

/// The refusal while the ledger is out of service.
fn reopening() -> Error {
    Error::LedgerUnavailable {
        reason: "the ledger failed an I/O operation and is being reopened".into(),
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

/// A redb error as ours: an I/O error (the disk's, or redb's memory of one) makes the ledger
/// unavailable (503 with `Retry-After`; a read that meets one has the ledger reopened, see
/// [`RedbLedger::read`]), anything else is a ledger fault (500).
fn le(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo) => Error::LedgerUnavailable {
            reason: format!("the ledger failed an I/O operation ({e})"),
            retry_after_secs: RETRY_AFTER_SECS,
        },
        e => Error::Ledger(e.to_string()),
    }
}

impl RedbLedger {
    /// Opens (or creates) the ledger file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, None)
    }

    /// [`RedbLedger::open`], failing writes with EIO while `fault` exists when given (the
    /// danger switch [`DANGER_FAULT_ENV`]; tests only).
    pub fn open_with(path: &Path, fault: Option<PathBuf>) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let db = open_database(path, fault.as_deref())?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            generation: AtomicU64::new(0),
            fault,
        });
        let (tx, rx) = mpsc::channel::<Msg>();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(&writer_shared, &rx))
            .map_err(|e| Error::Ledger(format!("cannot start the ledger writer: {e}")))?;
        Ok(Self {
            shared,
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Stops the writer after the queued writes are committed. Further writes fail.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }

    fn submit_op(&self, op: Op, reply: Reply) {
        let Ok(jobs) = self.jobs.lock() else {
            return reply.fail(Error::Ledger("the ledger lock is poisoned".into()));
        };
        match jobs.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(Msg::Job(unsent))) = tx.send(Msg::Job(Job { op, reply }))
                {
                    unsent
                        .reply
                        .fail(Error::Ledger("the ledger writer stopped".into()));
                }
            }
            None => reply.fail(Error::Ledger("the ledger is closed".into())),
        }
    }

    fn flag_op(&self, op: Op) -> Result<bool> {
        let (reply, pending) = Pending::new();
        self.submit_op(op, Reply::Flag(reply));
        pending.wait()
    }

    fn record_op(&self, op: Op) -> Result<DacRecord> {
        let (reply, pending) = Pending::new();
        self.submit_op(op, Reply::Record(reply));
        pending.wait()
    }

    fn number_op(&self, op: Op) -> Result<u64> {
        let (reply, pending) = Pending::new();
        self.submit_op(op, Reply::Number(reply));
        pending.wait()
    }

    /// Runs `f` on a read transaction. A read that fails with an I/O error (`le` makes it
    /// [`Error::LedgerUnavailable`]) is refused with 503 and has the writer reopen the ledger,
    /// as a failed write does: redb may hold on to the failure, and a disk that failed a read
    /// may have failed more.
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, Error>,
    ) -> Result<T> {
        let (db, generation) = self.shared.current_generation()?;
        let result = db.begin_read().map_err(le).and_then(|txn| f(&txn));
        drop(db);
        match result {
            Err(e @ Error::LedgerUnavailable { .. }) => {
                tracing::error!(error = %e, ledger = %self.shared.path.display(),
                    "ledger read failed with an I/O error; reopening the ledger");
                if let Ok(jobs) = self.jobs.lock()
                    && let Some(tx) = jobs.as_ref()
                {
                    let _ = tx.send(Msg::Reopen { generation });
                }
                Err(reopening())
            }
            other => other,
        }
    }
}

impl Drop for RedbLedger {
    fn drop(&mut self) {
        self.close();
    }
}

/// Opens (or creates) the database file and makes sure every table exists.
fn open_database(path: &Path, fault: Option<&Path>) -> Result<Database> {
    let builder = {
        let mut b = Database::builder();
        // Under the danger switch no page is cached, so that an injected read error reaches
        // every read rather than only those of pages not cached yet.
        b.set_cache_size(if fault.is_some() { 0 } else { CACHE_BYTES });
        b
    };
    let opened = match fault {
        None => builder.create(path),
        Some(trigger) => faulty::FaultyFile::open(path, trigger)
            .map_err(redb::DatabaseError::from)
            .and_then(|backend| builder.create_with_backend(backend)),
    };
    let db = opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Ledger(format!(
            "{} is in use by another matter-est process (a running `serve`?); stop it first",
            path.display()
        )),
        e => Error::Ledger(format!("{}: {e}", path.display())),
    })?;
    let txn = db.begin_write().map_err(le)?;
    {
        txn.open_table(RECORDS).map_err(le)?;
        txn.open_table(SERIALS).map_err(le)?;
        txn.open_table(SUBJECTS).map_err(le)?;
        txn.open_table(COUNTS).map_err(le)?;
        txn.open_table(TOKENS).map_err(le)?;
        txn.open_table(TOKEN_IDS).map_err(le)?;
        txn.open_table(REVOKED).map_err(le)?;
        txn.open_table(CRL_NUMBERS).map_err(le)?;
        txn.open_table(CRLS).map_err(le)?;
        txn.open_table(AUDIT).map_err(le)?;
        txn.open_table(AUDIT_HEAD).map_err(le)?;
        txn.open_table(REKEY).map_err(le)?;
        txn.open_table(HELD).map_err(le)?;
        // A ledger made before the inventory indexes: build them once.
        let records = txn.open_table(RECORDS).map_err(le)?;
        let mut by_time = txn.open_table(BY_TIME).map_err(le)?;
        let mut by_label = txn.open_table(BY_LABEL).map_err(le)?;
        if by_time.len().map_err(le)? < records.len().map_err(le)? {
            for entry in records.iter().map_err(le)? {
                let (seq, bytes) = entry.map_err(le)?;
                let r = codec::decode(bytes.value())?;
                let pos = position_key(r.issued_at, seq.value());
                by_time.insert(pos.as_slice(), ()).map_err(le)?;
                by_label
                    .insert(label_key(&r.label, &pos).as_slice(), ())
                    .map_err(le)?;
            }
        }
    }
    txn.commit().map_err(le)?;
    Ok(db)
}

/// Reopens the ledger for a reader that met an I/O error on the `generation`-th database,
/// unless it was reopened since (or is out of service). False when the ledger was closed.
fn reopen_for_reader(shared: &Shared, rx: &mpsc::Receiver<Msg>, generation: u64) -> bool {
    match shared.current_generation() {
        Ok((db, current)) if current == generation => {
            drop(db);
            reopen(shared, rx)
        }
        _ => true,
    }
}

fn writer_loop(shared: &Shared, rx: &mpsc::Receiver<Msg>) {
    let mut arrivals = Arrivals::new();
    while let Ok(first) = rx.recv() {
        let first = match first {
            Msg::Job(job) => job,
            Msg::Reopen { generation } => {
                if !reopen_for_reader(shared, rx, generation) {
                    return;
                }
                continue;
            }
        };
        let (group, reopen_asked) = gather(rx, first, &arrivals.wait());
        arrivals.committing(group.len());
        let db = match shared.current() {
            Ok(db) => db,
            Err(e) => {
                for job in group {
                    job.reply.fail(clone_error(&e));
                }
                // Out of service: a reader's reopen request, if any, finds nothing to do.
                continue;
            }
        };
        let start = std::time::Instant::now();
        let outcome = apply_group(&db, &group);
        metrics::histogram!(crate::admin::metrics::LEDGER_COMMIT_DURATION)
            .record(start.elapsed().as_secs_f64());
        metrics::histogram!(crate::admin::metrics::LEDGER_COMMIT_GROUP_SIZE)
            .record(group.len() as f64);
        match outcome {
            Ok(results) => {
                for (job, result) in group.into_iter().zip(results) {
                    job.reply.complete(result);
                }
            }
            Err(e) if failed_io(&db) => {
                // Nothing of this group was acknowledged: each client gets 503 and retries.
                tracing::error!(error = %e, ledger = %shared.path.display(),
                    "ledger write failed with an I/O error; reopening the ledger");
                for job in group {
                    job.reply.fail(reopening());
                }
                drop(db);
                if !reopen(shared, rx) {
                    return;
                }
            }
            Err(e) => {
                for job in group {
                    job.reply.complete(Err(clone_error(&e)));
                }
            }
        }
        if let Some(generation) = reopen_asked
            && !reopen_for_reader(shared, rx, generation)
        {
            return;
        }
    }
}

/// The longest the writer waits for more jobs before a commit, when jobs arrive fast enough to
/// expect more within it ([`Arrivals::wait`]). A commit costs the writer about as much CPU for
/// one job as for twenty (every touched table's pages, their checksums, the fsync), so under
/// load a wait of a fraction of the fsync's own time trades up to a millisecond of latency for
/// several times fewer commits per enrollment (PostgreSQL's `commit_delay` does the same). At a
/// low rate a request is committed at once (after a burst, the first lone one may wait one gap);
/// the wait ends after a gap with no job (every client may be waiting on this commit). The cost:
/// a few clients in a closed loop just over the rate bar wait up to a gap per commit for jobs
/// that will not come.
const GATHER: Duration = Duration::from_millis(1);

/// How long to wait for more jobs before a commit: at most `window` in all, and at most `gap`
/// for each next job.
#[derive(Debug, PartialEq)]
struct Wait {
    window: Duration,
    gap: Duration,
}

/// `first` and whatever else arrives within `wait` (at most [`MAX_GROUP`] jobs). A reader's
/// request to reopen the ledger ends the gathering; it is returned, to be done after the
/// commit.
fn gather(rx: &mpsc::Receiver<Msg>, first: Job, wait: &Wait) -> (Vec<Job>, Option<u64>) {
    let until = Instant::now() + wait.window;
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        let next = match rx.try_recv() {
            Ok(msg) => Some(msg),
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) => {
                let left = until.saturating_duration_since(Instant::now());
                match left.min(wait.gap) {
                    d if d.is_zero() => None,
                    d => rx.recv_timeout(d).ok(),
                }
            }
        };
        match next {
            Some(Msg::Job(job)) => group.push(job),
            Some(Msg::Reopen { generation }) => return (group, Some(generation)),
            None => break,
        }
    }
    (group, None)
}

/// The writer's estimate of how fast jobs arrive: the jobs of its last group over the time
/// since the group before it was gathered (idle time included). One sample, no smoothing: a
/// backlog fills a group by itself.
struct Arrivals {
    since: Instant,
    per_sec: f64,
}

impl Arrivals {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            per_sec: 0.0,
        }
    }

    /// Gather for [`GATHER`] when at least two more jobs are expected within it, each next job
    /// waited for up to twice the mean time between jobs; else commit at once. (A few clients
    /// that all wait on the same commit send no more jobs: with a lower bar the writer would
    /// wait for nothing.)
    fn wait(&self) -> Wait {
        if self.per_sec * GATHER.as_secs_f64() >= 2.0 {
            Wait {
                window: GATHER,
                gap: Duration::from_secs_f64(2.0 / self.per_sec),
            }
        } else {
            Wait {
                window: Duration::ZERO,
                gap: Duration::ZERO,
            }
        }
    }

    fn committing(&mut self, jobs: usize) {
        self.committing_at(jobs, Instant::now());
    }

    fn committing_at(&mut self, jobs: usize, now: Instant) {
        let elapsed = now.duration_since(self.since).as_secs_f64().max(1e-6);
        self.per_sec = jobs as f64 / elapsed;
        self.since = now;
    }
}

/// Whether `db` is refusing work after an I/O error (redb's `PreviousIo`), which only closing
/// and reopening it clears.
fn failed_io(db: &Database) -> bool {
    match db.begin_write() {
        Ok(txn) => {
            let _ = txn.abort();
            false
        }
        Err(redb::TransactionError::Storage(
            redb::StorageError::PreviousIo | redb::StorageError::Io(_),
        )) => true,
        Err(_) => false,
    }
}

/// Takes the database out of service, closes it and opens it again, with backoff, failing the
/// jobs that arrive meanwhile. False when the ledger was closed meanwhile.
fn reopen(shared: &Shared, rx: &mpsc::Receiver<Msg>) -> bool {
    let taken = match shared.db.write() {
        Ok(mut db) => db.take(),
        Err(_) => return false,
    };
    // redb keeps a file open once per process: the reads in flight (each holds the database
    // for one transaction; a backup for its copy) must end before it can be opened again.
    if let Some(mut db) = taken {
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => break drop(db),
                Err(still_shared) => {
                    db = still_shared;
                    if !refuse_for(rx, Duration::from_millis(5)) {
                        return false;
                    }
                }
            }
        }
    }
    let started = Instant::now();
    let mut backoff = REOPEN_BACKOFF_MIN;
    loop {
        match open_database(&shared.path, shared.fault.as_deref()) {
            Ok(db) => {
                if let Ok(mut slot) = shared.db.write() {
                    shared.generation.fetch_add(1, Ordering::AcqRel);
                    *slot = Some(Arc::new(db));
                }
                tracing::warn!(ledger = %shared.path.display(),
                    out_of_service_ms = started.elapsed().as_millis() as u64,
                    "ledger reopened after an I/O error");
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, ledger = %shared.path.display(),
                    retry_in_ms = backoff.as_millis() as u64, "ledger reopen failed");
            }
        }
        if !refuse_for(rx, backoff) {
            return false;
        }
        backoff = (backoff * 2).min(REOPEN_BACKOFF_MAX);
    }
}

/// Answers every job that arrives within `wait` with [`reopening`]; false if the ledger was
/// closed.
fn refuse_for(rx: &mpsc::Receiver<Msg>, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Msg::Job(job)) => job.reply.fail(reopening()),
            // Being reopened already.
            Ok(Msg::Reopen { .. }) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// A copy of a ledger refusal for each job of a group.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::LedgerUnavailable {
            reason,
            retry_after_secs,
        } => Error::LedgerUnavailable {
            reason: reason.clone(),
            retry_after_secs: *retry_after_secs,
        },
        e => Error::Ledger(e.to_string()),
    }
}

/// Applies each job in one write transaction; a job whose checks fail changes nothing and
/// gets its own error, the others proceed. Nothing is acknowledged before the commit returns.
fn apply_group(db: &Database, group: &[Job]) -> Result<Vec<Result<Outcome>>> {
    let txn = db.begin_write().map_err(le)?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut records = txn.open_table(RECORDS).map_err(le)?;
        let mut serials = txn.open_table(SERIALS).map_err(le)?;
        let mut subjects = txn.open_table(SUBJECTS).map_err(le)?;
        let mut counts = txn.open_table(COUNTS).map_err(le)?;
        let mut tokens = txn.open_table(TOKENS).map_err(le)?;
        let mut token_ids = txn.open_table(TOKEN_IDS).map_err(le)?;
        let mut revoked = txn.open_table(REVOKED).map_err(le)?;
        let mut crl_numbers = txn.open_table(CRL_NUMBERS).map_err(le)?;
        let mut crls = txn.open_table(CRLS).map_err(le)?;
        let mut by_time = txn.open_table(BY_TIME).map_err(le)?;
        let mut by_label = txn.open_table(BY_LABEL).map_err(le)?;
        let mut rekey = txn.open_table(REKEY).map_err(le)?;
        let mut held = txn.open_table(HELD).map_err(le)?;
        let mut audit_table = txn.open_table(AUDIT).map_err(le)?;
        let mut audit_head = txn.open_table(AUDIT_HEAD).map_err(le)?;
        let kept_head = audit_head
            .get(HEAD_KEY)
            .map_err(le)?
            .and_then(|v| Head::from_bytes(v.value()));
        let mut chain = Chain {
            next: kept_head.map_or(0, |h| h.seq + 1),
            prev: kept_head.map_or(audit::GENESIS, |h| h.hash),
            table: &mut audit_table,
            time: crate::asn1::now(),
        };
        let mut next_seq = records
            .last()
            .map_err(le)?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(0);
        for job in group {
            let result = match &job.op {
                Op::Commit(record, admission) => (|| {
                    if serials.get(record.serial.as_slice()).map_err(le)?.is_some() {
                        return Err(Error::Ledger(format!(
                            "serial {} is already on record",
                            crate::asn1::hex(&record.serial)
                        )));
                    }
                    let subject_key = subject_key(&record.issuer_key, &record.subject_der);
                    if let Some(holder) = subjects.get(subject_key.as_slice()).map_err(le)? {
                        let holder = codec::decode(
                            records
                                .get(holder.value())
                                .map_err(le)?
                                .ok_or_else(|| Error::Ledger("dangling subject index".into()))?
                                .value(),
                        )?;
                        // A repeat: the same key asking again for the same subject, or, for
                        // a renewal, the same renewal retried while the first was committing.
                        if same_request(&holder, record)
                            && (record.renews.is_none() || holder.renews == record.renews)
                        {
                            return Ok(Outcome::Commit(Committed::AlreadyOnRecord(Box::new(
                                holder,
                            ))));
                        }
                        // RFC 7030 §4.2.2 renewal: only the link to the holder is exempt.
                        if record.renews.as_deref() != Some(holder.serial.as_slice()) {
                            return Err(Error::SubjectTaken {
                                subject: record.subject.clone(),
                                label: record.label.clone(),
                            });
                        }
                    }
                    let issued = counts
                        .get(record.label.as_str())
                        .map_err(le)?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    if let Some(quota) = admission.quota
                        && issued >= quota
                    {
                        return Err(Error::QuotaExhausted {
                            label: record.label.clone(),
                            quota,
                        });
                    }
                    if let Some(id) = &admission.token {
                        let hash = token_ids
                            .get(id.as_str())
                            .map_err(le)?
                            .map(|h| h.value().to_vec())
                            .ok_or_else(|| Error::Unauthenticated("unknown token".into()))?;
                        let mut token: TokenRecord = decode(
                            tokens
                                .get(hash.as_slice())
                                .map_err(le)?
                                .ok_or_else(|| Error::Unauthenticated("unknown token".into()))?
                                .value(),
                        )?;
                        if token.spent_by.is_some() {
                            return Err(Error::Unauthenticated(
                                "this enrollment token was already used".into(),
                            ));
                        }
                        // Checked again here, atomically with spending it: a `token revoke`
                        // or the expiry may have come after policy looked.
                        if token.revoked_at.is_some() {
                            return Err(Error::Unauthenticated(
                                "this enrollment token was revoked".into(),
                            ));
                        }
                        if token.expires_at.is_some_and(|t| record.issued_at >= t) {
                            return Err(Error::Unauthenticated(
                                "this enrollment token has expired".into(),
                            ));
                        }
                        token.spent_by = Some(record.serial.clone());
                        tokens
                            .insert(hash.as_slice(), encode(&token)?.as_slice())
                            .map_err(le)?;
                    }
                    records
                        .insert(next_seq, codec::encode(record).as_slice())
                        .map_err(le)?;
                    serials
                        .insert(record.serial.as_slice(), next_seq)
                        .map_err(le)?;
                    subjects
                        .insert(subject_key.as_slice(), next_seq)
                        .map_err(le)?;
                    let pos = position_key(record.issued_at, next_seq);
                    by_time.insert(pos.as_slice(), ()).map_err(le)?;
                    by_label
                        .insert(label_key(&record.label, &pos).as_slice(), ())
                        .map_err(le)?;
                    next_seq += 1;
                    if !admission.uncounted {
                        counts
                            .insert(record.label.as_str(), issued + 1)
                            .map_err(le)?;
                    }
                    for event in AuditEvent::issued(record, admission.token.as_deref()) {
                        chain.append(event)?;
                    }
                    Ok(Outcome::Commit(Committed::Recorded))
                })(),
                Op::Revoke {
                    serial,
                    reason,
                    at,
                    by,
                } => (|| {
                    let Some(seq) = serials
                        .get(serial.as_slice())
                        .map_err(le)?
                        .map(|v| v.value())
                    else {
                        return Err(Error::NotFound(format!(
                            "no DAC with serial {} is on record",
                            crate::asn1::hex(serial)
                        )));
                    };
                    let mut record = codec::decode(
                        records
                            .get(seq)
                            .map_err(le)?
                            .ok_or_else(|| Error::Ledger("dangling serial index".into()))?
                            .value(),
                    )?;
                    if let Status::Revoked { at, reason } = &record.status {
                        return Err(Error::AlreadyRevoked {
                            serial: crate::asn1::hex(serial),
                            reason: reason.clone(),
                            at: crate::asn1::format_time(*at),
                        });
                    }
                    record.status = Status::Revoked {
                        at: *at,
                        reason: reason.name().to_string(),
                    };
                    records
                        .insert(seq, codec::encode(&record).as_slice())
                        .map_err(le)?;
                    let mut value = at.to_be_bytes().to_vec();
                    value.push(reason.code());
                    revoked
                        .insert(
                            revoked_key(&record.label, serial).as_slice(),
                            value.as_slice(),
                        )
                        .map_err(le)?;
                    chain.append(AuditEvent::Revocation {
                        label: record.label.clone(),
                        serial: crate::asn1::hex(serial),
                        reason: reason.name().into(),
                        identity: by.clone(),
                    })?;
                    Ok(Outcome::Record(Box::new(record)))
                })(),
                Op::NextCrlNumber(label) => (|| {
                    let last = crl_numbers
                        .get(label.as_str())
                        .map_err(le)?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    let next = last + 1;
                    crl_numbers.insert(label.as_str(), next).map_err(le)?;
                    Ok(Outcome::Number(next))
                })(),
                Op::PutCrl(label, crl) => (|| {
                    if let Some(kept) = crls.get(label.as_str()).map_err(le)? {
                        let kept = decode_crl(kept.value())?;
                        if kept.number >= crl.number {
                            return Err(Error::Ledger(format!(
                                "CRL number {} of label {label:?} is not newer than the kept {}",
                                crl.number, kept.number
                            )));
                        }
                    }
                    crls.insert(label.as_str(), encode_crl(crl).as_slice())
                        .map_err(le)?;
                    chain.append(AuditEvent::CrlIssued {
                        label: label.clone(),
                        number: crl.number,
                        entries: crl.entries,
                    })?;
                    Ok(Outcome::Flag(true))
                })(),
                Op::RevokeToken { id, at, by } => (|| {
                    let hash = token_ids
                        .get(id.as_str())
                        .map_err(le)?
                        .map(|h| h.value().to_vec())
                        .ok_or_else(|| Error::NotFound(format!("no token {id}")))?;
                    let mut token: TokenRecord = decode(
                        tokens
                            .get(hash.as_slice())
                            .map_err(le)?
                            .ok_or_else(|| Error::Ledger("dangling token id".into()))?
                            .value(),
                    )?;
                    if let Some(serial) = &token.spent_by {
                        return Err(Error::BadRequest(format!(
                            "token {id} was spent by DAC serial {}; revoke that DAC instead",
                            crate::asn1::hex(serial).to_uppercase()
                        )));
                    }
                    if token.revoked_at.is_some() {
                        return Err(Error::BadRequest(format!("token {id} is already revoked")));
                    }
                    token.revoked_at = Some(*at);
                    tokens
                        .insert(hash.as_slice(), encode(&token)?.as_slice())
                        .map_err(le)?;
                    chain.append(AuditEvent::TokenRevoked {
                        label: token.label.clone(),
                        token: id.clone(),
                        identity: by.clone(),
                    })?;
                    Ok(Outcome::Token(Box::new(token)))
                })(),
                Op::MarkRekey { serial, at, by } => (|| {
                    let hex = crate::asn1::hex(serial).to_uppercase();
                    let seq = serials
                        .get(serial.as_slice())
                        .map_err(le)?
                        .map(|v| v.value())
                        .ok_or_else(|| {
                            Error::NotFound(format!("no DAC with serial {hex} is on record"))
                        })?;
                    let record = codec::decode(
                        records
                            .get(seq)
                            .map_err(le)?
                            .ok_or_else(|| Error::Ledger("dangling serial index".into()))?
                            .value(),
                    )?;
                    if let Status::Revoked { .. } = record.status {
                        return Err(Error::BadRequest(format!(
                            "DAC serial {hex} is revoked: it will not renew at all"
                        )));
                    }
                    if rekey.get(serial.as_slice()).map_err(le)?.is_some() {
                        return Err(Error::BadRequest(format!(
                            "DAC serial {hex} is already marked for re-key"
                        )));
                    }
                    let mut value = at.to_be_bytes().to_vec();
                    value.extend_from_slice(by.as_bytes());
                    rekey
                        .insert(serial.as_slice(), value.as_slice())
                        .map_err(le)?;
                    chain.append(AuditEvent::RekeyMarked {
                        label: record.label.clone(),
                        serial: crate::asn1::hex(serial),
                        identity: by.clone(),
                    })?;
                    Ok(Outcome::Record(Box::new(record)))
                })(),
                Op::Audit(event) => chain.append((**event).clone()).map(|_| Outcome::Flag(true)),
                Op::Hold(request) => (|| {
                    if let Some(kept) = held.get(request.id.as_str()).map_err(le)? {
                        return Ok(Outcome::Held(Box::new(decode(kept.value())?)));
                    }
                    held.insert(request.id.as_str(), encode(request)?.as_slice())
                        .map_err(le)?;
                    chain.append(AuditEvent::EnrollmentHeld {
                        label: request.label.clone(),
                        identity: request.requester.clone(),
                        id: request.id.clone(),
                        subject: request.subject.clone(),
                    })?;
                    Ok(Outcome::Held(request.clone()))
                })(),
                Op::Decide(id, decision) => (|| {
                    let mut request: HeldRequest = decode(
                        held.get(id.as_str())
                            .map_err(le)?
                            .ok_or_else(|| Error::NotFound(format!("no held request {id}")))?
                            .value(),
                    )?;
                    request.decide(decision)?;
                    held.insert(id.as_str(), encode(&request)?.as_slice())
                        .map_err(le)?;
                    chain.append(if decision.approved {
                        AuditEvent::RequestApproved {
                            label: request.label.clone(),
                            id: id.clone(),
                            identity: decision.by.clone(),
                        }
                    } else {
                        AuditEvent::RequestRejected {
                            label: request.label.clone(),
                            id: id.clone(),
                            identity: decision.by.clone(),
                            reason: decision.reason.clone().unwrap_or_default(),
                        }
                    })?;
                    Ok(Outcome::Held(Box::new(request)))
                })(),
                Op::PruneHeld(before) => (|| {
                    let mut gone = Vec::new();
                    for entry in held.iter().map_err(le)? {
                        let (id, v) = entry.map_err(le)?;
                        if decode::<HeldRequest>(v.value())?.settled_at() < *before {
                            gone.push(id.value().to_string());
                        }
                    }
                    for id in &gone {
                        held.remove(id.as_str()).map_err(le)?;
                    }
                    Ok(Outcome::Number(gone.len() as u64))
                })(),
                Op::PutToken(hash, token) => (|| {
                    if token_ids.get(token.id.as_str()).map_err(le)?.is_some() {
                        return Err(Error::Ledger(format!("token id {} exists", token.id)));
                    }
                    tokens
                        .insert(hash.as_slice(), encode(token)?.as_slice())
                        .map_err(le)?;
                    token_ids
                        .insert(token.id.as_str(), hash.as_slice())
                        .map_err(le)?;
                    chain.append(AuditEvent::TokenCreated {
                        label: token.label.clone(),
                        token: token.id.clone(),
                        pid: token.pid.map(|p| format!("{p:04X}")),
                    })?;
                    Ok(Outcome::Flag(true))
                })(),
            };
            results.push(result);
        }
        let end = chain.next.checked_sub(1).map(|seq| Head {
            seq,
            hash: chain.prev,
        });
        if let Some(end) = end.filter(|e| Some(*e) != kept_head) {
            audit_head
                .insert(HEAD_KEY, end.to_bytes().as_slice())
                .map_err(le)?;
        }
    }
    // Durability::Immediate (redb's default): fsync before we acknowledge anything.
    txn.commit().map_err(le)?;
    Ok(results)
}

/// The end of the audit chain while a group is applied.
struct Chain<'a, 't> {
    next: u64,
    prev: [u8; 32],
    table: &'a mut redb::Table<'t, u64, &'static [u8]>,
    time: i64,
}

impl Chain<'_, '_> {
    /// Appends `event` as the next record, linked to the previous one.
    fn append(&mut self, event: AuditEvent) -> Result<()> {
        let bytes = AuditRecord {
            seq: self.next,
            time: self.time,
            event,
            prev: crate::asn1::hex(&self.prev),
        }
        .encode();
        self.table.insert(self.next, bytes.as_slice()).map_err(le)?;
        self.prev = audit::hash(&bytes);
        self.next += 1;
        Ok(())
    }
}

/// The same public key asking again for an unrevoked DAC of the same label (a retry after a lost
/// response).
fn same_request(holder: &DacRecord, record: &DacRecord) -> bool {
    holder.status == Status::Issued
        && holder.label == record.label
        && holder.public_key().is_some()
        && holder.public_key() == record.public_key()
}

/// Copies every entry of `table` from a snapshot into a write transaction (for backups).
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<()> {
    let source = match from.open_table(table) {
        Ok(t) => t,
        // An older ledger without this table: nothing to copy.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(le(e)),
    };
    let mut target = to.open_table(table).map_err(le)?;
    for entry in source.iter().map_err(le)? {
        let (k, v) = entry.map_err(le)?;
        target.insert(k.value(), v.value()).map_err(le)?;
    }
    Ok(())
}

/// A [`BY_TIME`] key: issue time (sign bit flipped, so that the bytes sort as the numbers do)
/// then sequence number, big-endian.
fn position_key(time: i64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The [`Position`](super::Position) of a [`position_key`] (the last 16 bytes of `key`).
fn key_position(key: &[u8]) -> Result<super::Position> {
    let tail = key
        .get(key.len().saturating_sub(16)..)
        .filter(|t| t.len() == 16)
        .ok_or_else(|| Error::Ledger("malformed inventory index key".into()))?;
    let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
    Ok(super::Position {
        time: (word(&tail[..8]) ^ (1 << 63)) as i64,
        seq: word(&tail[8..]),
    })
}

/// The [`BY_LABEL`] key of position `pos` under `label`.
fn label_key(label: &str, pos: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(label.len() + 1 + pos.len());
    key.extend_from_slice(label.as_bytes());
    key.push(0);
    key.extend_from_slice(pos);
    key
}

/// The [`REVOKED`] key of `serial` under `label`.
fn revoked_key(label: &str, serial: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(label.len() + 1 + serial.len());
    key.extend_from_slice(label.as_bytes());
    key.push(0);
    key.extend_from_slice(serial);
    key
}

fn encode_crl(crl: &CrlRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + crl.der.len());
    out.extend_from_slice(&crl.number.to_be_bytes());
    out.extend_from_slice(&crl.this_update.to_be_bytes());
    out.extend_from_slice(&crl.next_update.to_be_bytes());
    out.extend_from_slice(&crl.entries.to_be_bytes());
    out.extend_from_slice(&crl.der);
    out
}

fn decode_crl(bytes: &[u8]) -> Result<CrlRecord> {
    let word = |i: usize| -> Result<[u8; 8]> {
        bytes
            .get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Ledger("truncated CRL record".into()))
    };
    Ok(CrlRecord {
        number: u64::from_be_bytes(word(0)?),
        this_update: i64::from_be_bytes(word(1)?),
        next_update: i64::from_be_bytes(word(2)?),
        entries: u64::from_be_bytes(word(3)?),
        der: bytes.get(32..).unwrap_or_default().to_vec(),
    })
}

/// The subject index key: unique subjects per issuer (MATTER.md "DAC").
fn subject_key(issuer_key: &[u8], subject_der: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((issuer_key.len() as u32).to_be_bytes());
    h.update(issuer_key);
    h.update(subject_der);
    let digest = h.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// A compact binary form of [`DacRecord`] (length-prefixed fields, version byte first); JSON
/// and hex cost more than the B-tree insert on the commit path.
mod codec {
    use super::{DacRecord, Status};
    use crate::error::{Error, Result};

    const VERSION: u8 = 1;

    pub fn encode(r: &DacRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + r.der.len() + r.subject_der.len() + r.subject.len());
        out.push(VERSION);
        bytes(&mut out, &r.serial);
        bytes(&mut out, r.label.as_bytes());
        bytes(&mut out, &r.issuer_key);
        bytes(&mut out, r.subject.as_bytes());
        bytes(&mut out, &r.subject_der);
        out.extend_from_slice(&r.vid.to_be_bytes());
        out.extend_from_slice(&r.pid.to_be_bytes());
        bytes(&mut out, r.requester.as_bytes());
        out.extend_from_slice(&r.issued_at.to_be_bytes());
        bytes(&mut out, &r.der);
        match &r.status {
            Status::Issued => out.push(0),
            Status::Revoked { at, reason } => {
                out.push(1);
                out.extend_from_slice(&at.to_be_bytes());
                bytes(&mut out, reason.as_bytes());
            }
        }
        match &r.renews {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                bytes(&mut out, s);
            }
        }
        // Appended fields: a record written before them ends here, and reads as the default.
        out.push(u8::from(r.server_keygen));
        out
    }

    pub fn decode(mut input: &[u8]) -> Result<DacRecord> {
        let r = &mut input;
        if take(r, 1)? != [VERSION] {
            return Err(Error::Ledger("unknown record version".into()));
        }
        Ok(DacRecord {
            serial: field(r)?.to_vec(),
            label: text(r)?,
            issuer_key: field(r)?.to_vec(),
            subject: text(r)?,
            subject_der: field(r)?.to_vec(),
            vid: u16::from_be_bytes(array(r)?),
            pid: u16::from_be_bytes(array(r)?),
            requester: text(r)?,
            issued_at: i64::from_be_bytes(array(r)?),
            der: field(r)?.to_vec(),
            status: match take(r, 1)?[0] {
                0 => Status::Issued,
                _ => Status::Revoked {
                    at: i64::from_be_bytes(array(r)?),
                    reason: text(r)?,
                },
            },
            renews: match take(r, 1)?[0] {
                0 => None,
                _ => Some(field(r)?.to_vec()),
            },
            server_keygen: r.first().is_some_and(|b| *b == 1),
        })
    }

    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }

    fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if r.len() < n {
            return Err(Error::Ledger("truncated record".into()));
        }
        let (head, tail) = r.split_at(n);
        *r = tail;
        Ok(head)
    }

    fn array<const N: usize>(r: &mut &[u8]) -> Result<[u8; N]> {
        take(r, N)?
            .try_into()
            .map_err(|_| Error::Ledger("truncated record".into()))
    }

    fn field<'a>(r: &mut &'a [u8]) -> Result<&'a [u8]> {
        let len = u32::from_be_bytes(array(r)?) as usize;
        take(r, len)
    }

    fn text(r: &mut &[u8]) -> Result<String> {
        String::from_utf8(field(r)?.to_vec())
            .map_err(|_| Error::Ledger("bad text in record".into()))
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Ledger(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Ledger(e.to_string()))
}

impl Ledger for RedbLedger {
    fn submit_then(&self, record: DacRecord, admission: Admission, done: Completer<Committed>) {
        self.submit_op(Op::Commit(Box::new(record), admission), Reply::Commit(done));
    }

    fn by_serial(&self, serial: &[u8]) -> Result<Option<DacRecord>> {
        self.read(|txn| {
            let serials = txn.open_table(SERIALS).map_err(le)?;
            let Some(seq) = serials.get(serial).map_err(le)?.map(|v| v.value()) else {
                return Ok(None);
            };
            let records = txn.open_table(RECORDS).map_err(le)?;
            records
                .get(seq)
                .map_err(le)?
                .map(|v| codec::decode(v.value()))
                .transpose()
        })
    }

    fn by_subject(&self, issuer_key: &[u8], subject_der: &[u8]) -> Result<Option<DacRecord>> {
        self.read(|txn| {
            let subjects = txn.open_table(SUBJECTS).map_err(le)?;
            let key = subject_key(issuer_key, subject_der);
            let Some(seq) = subjects.get(key.as_slice()).map_err(le)?.map(|v| v.value()) else {
                return Ok(None);
            };
            let records = txn.open_table(RECORDS).map_err(le)?;
            let record = records
                .get(seq)
                .map_err(le)?
                .map(|v| codec::decode(v.value()))
                .transpose()?;
            Ok(record.filter(|r| r.issuer_key == issuer_key && r.subject_der == subject_der))
        })
    }

    fn list(&self, skip: usize, limit: usize) -> Result<Vec<DacRecord>> {
        self.read(|txn| {
            let records = txn.open_table(RECORDS).map_err(le)?;
            let mut out = Vec::new();
            for entry in records.iter().map_err(le)?.skip(skip).take(limit) {
                let (_, bytes) = entry.map_err(le)?;
                out.push(codec::decode(bytes.value())?);
            }
            Ok(out)
        })
    }

    fn list_page(&self, q: &CertQuery) -> Result<CertPage> {
        self.read(|txn| {
            let records = txn.open_table(RECORDS).map_err(le)?;
            // The key range: from the later of the cursor and `since`, to `until`.
            let mut from = position_key(q.since.unwrap_or(i64::MIN), 0);
            if let Some(after) = q.after {
                from = from.max(match after.seq.checked_add(1) {
                    Some(seq) => position_key(after.time, seq),
                    None => position_key(after.time.saturating_add(1), 0),
                });
            }
            let to = q.until.map(|t| position_key(t, 0));
            let (from, to): (Vec<u8>, Vec<u8>) = match &q.label {
                Some(label) => (
                    label_key(label, &from),
                    match to {
                        Some(to) => label_key(label, &to),
                        None => {
                            let mut end = label.as_bytes().to_vec();
                            end.push(1);
                            end
                        }
                    },
                ),
                None => (
                    from.to_vec(),
                    to.map_or_else(|| vec![0xff; 17], |t| t.to_vec()),
                ),
            };
            let limit = q.limit.max(1);
            let mut out = Vec::new();
            let mut next = None;
            if from < to {
                let index = txn
                    .open_table(if q.label.is_some() { BY_LABEL } else { BY_TIME })
                    .map_err(le)?;
                for entry in index.range(from.as_slice()..to.as_slice()).map_err(le)? {
                    let (k, _) = entry.map_err(le)?;
                    let pos = key_position(k.value())?;
                    let Some(bytes) = records.get(pos.seq).map_err(le)? else {
                        return Err(Error::Ledger("dangling inventory index".into()));
                    };
                    let r = codec::decode(bytes.value())?;
                    if q.matches(&r) {
                        out.push((pos.seq, r));
                        if out.len() == limit {
                            next = Some(pos);
                            break;
                        }
                    }
                }
            }
            Ok(CertPage { records: out, next })
        })
    }

    fn recent(&self, label: Option<&str>, limit: usize) -> Result<Vec<DacRecord>> {
        self.read(|txn| {
            let records = txn.open_table(RECORDS).map_err(le)?;
            let (from, to) = match label {
                Some(label) => {
                    let mut end = label.as_bytes().to_vec();
                    end.push(1);
                    (label_key(label, &[]), end)
                }
                None => (Vec::new(), vec![0xff; 17]),
            };
            let index = txn
                .open_table(if label.is_some() { BY_LABEL } else { BY_TIME })
                .map_err(le)?;
            let mut out = Vec::with_capacity(limit.min(16_384));
            for entry in index
                .range(from.as_slice()..to.as_slice())
                .map_err(le)?
                .rev()
                .take(limit)
            {
                let (k, _) = entry.map_err(le)?;
                let pos = key_position(k.value())?;
                let Some(bytes) = records.get(pos.seq).map_err(le)? else {
                    return Err(Error::Ledger("dangling inventory index".into()));
                };
                out.push(codec::decode(bytes.value())?);
            }
            Ok(out)
        })
    }

    fn count(&self, label: &str) -> Result<u64> {
        self.read(|txn| {
            let t = txn.open_table(COUNTS).map_err(le)?;
            Ok(t.get(label).map_err(le)?.map(|v| v.value()).unwrap_or(0))
        })
    }

    fn revoke(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        at: i64,
        by: &str,
    ) -> Result<DacRecord> {
        self.record_op(Op::Revoke {
            serial: serial.to_vec(),
            reason,
            at,
            by: by.to_string(),
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|txn| {
            let ids = txn.open_table(TOKEN_IDS).map_err(le)?;
            let tokens = txn.open_table(TOKENS).map_err(le)?;
            let mut out = Vec::new();
            for entry in ids.iter().map_err(le)? {
                let (_, hash) = entry.map_err(le)?;
                if let Some(t) = tokens.get(hash.value()).map_err(le)? {
                    out.push(decode(t.value())?);
                }
            }
            Ok(out)
        })
    }

    fn close(&self) {
        RedbLedger::close(self);
    }

    fn hold(&self, request: &HeldRequest) -> Result<HeldRequest> {
        let (reply, pending) = Pending::new();
        self.submit_op(Op::Hold(Box::new(request.clone())), Reply::Held(reply));
        pending.wait()
    }

    fn held(&self, id: &str) -> Result<Option<HeldRequest>> {
        self.read(|txn| {
            let t = txn.open_table(HELD).map_err(le)?;
            t.get(id)
                .map_err(le)?
                .map(|v| decode(v.value()))
                .transpose()
        })
    }

    fn held_list(&self) -> Result<Vec<HeldRequest>> {
        let mut out: Vec<HeldRequest> = self.read(|txn| {
            let t = txn.open_table(HELD).map_err(le)?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(le)? {
                let (_, v) = entry.map_err(le)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })?;
        out.sort_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
        Ok(out)
    }

    fn decide(&self, id: &str, decision: &Decision) -> Result<HeldRequest> {
        let (reply, pending) = Pending::new();
        self.submit_op(
            Op::Decide(id.to_string(), Box::new(decision.clone())),
            Reply::Held(reply),
        );
        pending.wait()
    }

    fn prune_held(&self, before: i64) -> Result<u64> {
        self.number_op(Op::PruneHeld(before))
    }

    fn backup_to(&self, to: &Path) -> Result<u64> {
        RedbLedger::backup_to(self, to)
    }

    fn export(&self) -> Result<Vec<Item>> {
        self.read(|txn| {
            let mut out = Vec::new();
            let records = txn.open_table(RECORDS).map_err(le)?;
            for entry in records.iter().map_err(le)? {
                let (_, bytes) = entry.map_err(le)?;
                out.push(Item::Dac(Box::new(codec::decode(bytes.value())?)));
            }
            for entry in txn.open_table(SUBJECTS).map_err(le)?.iter().map_err(le)? {
                let (_, seq) = entry.map_err(le)?;
                let holder = records
                    .get(seq.value())
                    .map_err(le)?
                    .ok_or_else(|| Error::Ledger("dangling subject index".into()))?;
                let holder = codec::decode(holder.value())?;
                out.push(Item::Holder {
                    issuer_key: holder.issuer_key,
                    subject_der: holder.subject_der,
                    serial: holder.serial,
                });
            }
            for entry in txn.open_table(COUNTS).map_err(le)?.iter().map_err(le)? {
                let (label, used) = entry.map_err(le)?;
                out.push(Item::Count {
                    label: label.value().to_string(),
                    used: used.value(),
                });
            }
            for entry in txn.open_table(TOKENS).map_err(le)?.iter().map_err(le)? {
                let (hash, token) = entry.map_err(le)?;
                out.push(Item::Token {
                    secret_hash: hash
                        .value()
                        .try_into()
                        .map_err(|_| Error::Ledger("a token hash is not 32 bytes".into()))?,
                    record: decode(token.value())?,
                });
            }
            for entry in txn.open_table(REKEY).map_err(le)?.iter().map_err(le)? {
                let (serial, v) = entry.map_err(le)?;
                let v = v.value();
                let at: [u8; 8] = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Error::Ledger("malformed re-key mark".into()))?;
                out.push(Item::Rekey {
                    serial: serial.value().to_vec(),
                    at: i64::from_be_bytes(at),
                    by: String::from_utf8_lossy(&v[8..]).into_owned(),
                });
            }
            for entry in txn
                .open_table(CRL_NUMBERS)
                .map_err(le)?
                .iter()
                .map_err(le)?
            {
                let (label, last) = entry.map_err(le)?;
                out.push(Item::CrlNumber {
                    label: label.value().to_string(),
                    last: last.value(),
                });
            }
            for entry in txn.open_table(CRLS).map_err(le)?.iter().map_err(le)? {
                let (label, crl) = entry.map_err(le)?;
                out.push(Item::Crl {
                    label: label.value().to_string(),
                    record: decode_crl(crl.value())?,
                });
            }
            for entry in txn.open_table(AUDIT).map_err(le)?.iter().map_err(le)? {
                let (seq, bytes) = entry.map_err(le)?;
                out.push(Item::Audit {
                    seq: seq.value(),
                    bytes: bytes.value().to_vec(),
                });
            }
            if let Some(head) = txn
                .open_table(AUDIT_HEAD)
                .map_err(le)?
                .get(HEAD_KEY)
                .map_err(le)?
                .and_then(|v| Head::from_bytes(v.value()))
            {
                out.push(Item::AuditHead(head));
            }
            for entry in txn.open_table(HELD).map_err(le)?.iter().map_err(le)? {
                let (_, v) = entry.map_err(le)?;
                out.push(Item::Held(Box::new(decode(v.value())?)));
            }
            Ok(out)
        })
    }

    fn import(&self, items: &[Item]) -> Result<()> {
        // Through the writer's lock: one write transaction at a time.
        let _jobs = self
            .jobs
            .lock()
            .map_err(|_| Error::Ledger("the ledger lock is poisoned".into()))?;
        let db = self.shared.current()?;
        let txn = db.begin_write().map_err(le)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(le)?;
            let mut serials = txn.open_table(SERIALS).map_err(le)?;
            let mut subjects = txn.open_table(SUBJECTS).map_err(le)?;
            let mut counts = txn.open_table(COUNTS).map_err(le)?;
            let mut tokens = txn.open_table(TOKENS).map_err(le)?;
            let mut token_ids = txn.open_table(TOKEN_IDS).map_err(le)?;
            let mut revoked = txn.open_table(REVOKED).map_err(le)?;
            let mut crl_numbers = txn.open_table(CRL_NUMBERS).map_err(le)?;
            let mut held = txn.open_table(HELD).map_err(le)?;
            let mut crls = txn.open_table(CRLS).map_err(le)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(le)?;
            let mut by_label = txn.open_table(BY_LABEL).map_err(le)?;
            let mut rekey = txn.open_table(REKEY).map_err(le)?;
            let mut audit_table = txn.open_table(AUDIT).map_err(le)?;
            let mut audit_head = txn.open_table(AUDIT_HEAD).map_err(le)?;
            if !records.is_empty().map_err(le)?
                || !tokens.is_empty().map_err(le)?
                || !audit_table.is_empty().map_err(le)?
            {
                return Err(Error::BadRequest(
                    "the target ledger is not empty: a migration copies into an empty one".into(),
                ));
            }
            let mut next_seq = 0u64;
            for item in items {
                match item {
                    Item::Dac(r) => {
                        records
                            .insert(next_seq, codec::encode(r).as_slice())
                            .map_err(le)?;
                        serials.insert(r.serial.as_slice(), next_seq).map_err(le)?;
                        let pos = position_key(r.issued_at, next_seq);
                        by_time.insert(pos.as_slice(), ()).map_err(le)?;
                        by_label
                            .insert(label_key(&r.label, &pos).as_slice(), ())
                            .map_err(le)?;
                        if let Status::Revoked { at, reason } = &r.status {
                            let mut value = at.to_be_bytes().to_vec();
                            value.push(RevocationReason::parse(reason)?.code());
                            revoked
                                .insert(
                                    revoked_key(&r.label, &r.serial).as_slice(),
                                    value.as_slice(),
                                )
                                .map_err(le)?;
                        }
                        next_seq += 1;
                    }
                    Item::Holder {
                        issuer_key,
                        subject_der,
                        serial,
                    } => {
                        let seq = serials
                            .get(serial.as_slice())
                            .map_err(le)?
                            .map(|v| v.value())
                            .ok_or_else(|| {
                                Error::Ledger(format!(
                                    "subject holder {} is not among the DACs",
                                    crate::asn1::hex(serial)
                                ))
                            })?;
                        subjects
                            .insert(subject_key(issuer_key, subject_der).as_slice(), seq)
                            .map_err(le)?;
                    }
                    Item::Count { label, used } => {
                        counts.insert(label.as_str(), *used).map_err(le)?;
                    }
                    Item::Token {
                        secret_hash,
                        record,
                    } => {
                        tokens
                            .insert(secret_hash.as_slice(), encode(record)?.as_slice())
                            .map_err(le)?;
                        token_ids
                            .insert(record.id.as_str(), secret_hash.as_slice())
                            .map_err(le)?;
                    }
                    Item::Rekey { serial, at, by } => {
                        let mut value = at.to_be_bytes().to_vec();
                        value.extend_from_slice(by.as_bytes());
                        rekey
                            .insert(serial.as_slice(), value.as_slice())
                            .map_err(le)?;
                    }
                    Item::CrlNumber { label, last } => {
                        crl_numbers.insert(label.as_str(), *last).map_err(le)?;
                    }
                    Item::Crl { label, record } => {
                        crls.insert(label.as_str(), encode_crl(record).as_slice())
                            .map_err(le)?;
                    }
                    Item::Audit { seq, bytes } => {
                        audit_table.insert(*seq, bytes.as_slice()).map_err(le)?;
                    }
                    Item::AuditHead(head) => {
                        audit_head
                            .insert(HEAD_KEY, head.to_bytes().as_slice())
                            .map_err(le)?;
                    }
                    Item::Held(request) => {
                        held.insert(request.id.as_str(), encode(request.as_ref())?.as_slice())
                            .map_err(le)?;
                    }
                }
            }
        }
        txn.commit().map_err(le)?;
        Ok(())
    }

    fn revoke_token(&self, id: &str, at: i64, by: &str) -> Result<TokenRecord> {
        let (reply, pending) = Pending::new();
        self.submit_op(
            Op::RevokeToken {
                id: id.to_string(),
                at,
                by: by.to_string(),
            },
            Reply::Token(reply),
        );
        pending.wait()
    }

    fn audit(&self, event: AuditEvent) {
        let name = event.name();
        self.submit_op(Op::Audit(Box::new(event)), Reply::logged(name));
    }

    fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.read(|txn| {
            let t = txn.open_table(AUDIT).map_err(le)?;
            let mut out = Vec::new();
            for entry in t.range(from..).map_err(le)?.take(limit) {
                let (k, v) = entry.map_err(le)?;
                out.push(AuditRecord::decode(v.value()).ok_or_else(|| {
                    Error::Ledger(format!("audit record {} is unreadable", k.value()))
                })?);
            }
            Ok(out)
        })
    }

    fn audit_head(&self) -> Result<Option<Head>> {
        self.read(|txn| {
            let t = txn.open_table(AUDIT_HEAD).map_err(le)?;
            Ok(t.get(HEAD_KEY)
                .map_err(le)?
                .and_then(|v| Head::from_bytes(v.value())))
        })
    }

    fn audit_verify(
        &self,
        head: Option<Head>,
    ) -> Result<std::result::Result<(u64, Option<Head>), audit::Broken>> {
        let mut heads = Vec::new();
        if let Some(kept) = self.audit_head()? {
            heads.push(("head kept in the ledger".to_string(), kept));
        }
        if let Some(given) = head {
            heads.push(("head given with --head".to_string(), given));
        }
        let mut v = audit::Verifier::new(heads);
        self.read(|txn| {
            let t = txn.open_table(AUDIT).map_err(le)?;
            for entry in t.iter().map_err(le)? {
                let (k, bytes) = entry.map_err(le)?;
                if let Err(broken) = v.feed(k.value(), bytes.value()) {
                    return Ok(Err(broken));
                }
            }
            Ok(v.finish().map(|end| (v.count(), end)))
        })
    }

    fn mark_rekey(&self, serial: &[u8], at: i64, by: &str) -> Result<DacRecord> {
        self.record_op(Op::MarkRekey {
            serial: serial.to_vec(),
            at,
            by: by.to_string(),
        })
    }

    fn rekey_mark(&self, serial: &[u8]) -> Result<Option<(i64, String)>> {
        self.read(|txn| {
            let t = txn.open_table(REKEY).map_err(le)?;
            Ok(t.get(serial).map_err(le)?.and_then(|v| {
                let v = v.value();
                let at = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
                Some((at, String::from_utf8_lossy(&v[8..]).into_owned()))
            }))
        })
    }

    fn revoked(&self, label: &str) -> Result<Vec<RevokedEntry>> {
        self.read(|txn| {
            let t = txn.open_table(REVOKED).map_err(le)?;
            let start = revoked_key(label, &[]);
            let mut end = start.clone();
            if let Some(last) = end.last_mut() {
                *last = 1;
            }
            let mut out = Vec::new();
            for entry in t.range(start.as_slice()..end.as_slice()).map_err(le)? {
                let (k, v) = entry.map_err(le)?;
                let (k, v) = (k.value(), v.value());
                let bad = || Error::Ledger("malformed revocation index entry".into());
                let at: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
                let code = *v.get(8).ok_or_else(bad)?;
                out.push(RevokedEntry {
                    serial: k.get(start.len()..).ok_or_else(bad)?.to_vec(),
                    at: i64::from_be_bytes(at),
                    reason: RevocationReason::from_code(code).ok_or_else(bad)?,
                });
            }
            Ok(out)
        })
    }

    fn next_crl_number(&self, label: &str) -> Result<u64> {
        self.number_op(Op::NextCrlNumber(label.to_string()))
    }

    fn put_crl(&self, label: &str, crl: &CrlRecord) -> Result<()> {
        self.flag_op(Op::PutCrl(label.to_string(), Box::new(crl.clone())))
            .map(|_| ())
    }

    fn crl(&self, label: &str) -> Result<Option<CrlRecord>> {
        self.read(|txn| {
            let t = txn.open_table(CRLS).map_err(le)?;
            t.get(label)
                .map_err(le)?
                .map(|v| decode_crl(v.value()))
                .transpose()
        })
    }

    fn put_token(&self, secret_hash: &[u8; 32], token: &TokenRecord) -> Result<()> {
        self.flag_op(Op::PutToken(*secret_hash, token.clone()))
            .map(|_| ())
    }

    fn token(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        self.read(|txn| {
            let t = txn.open_table(TOKENS).map_err(le)?;
            t.get(secret_hash.as_slice())
                .map_err(le)?
                .map(|v| decode(v.value()))
                .transpose()
        })
    }
}

impl RedbLedger {
    /// Writes a consistent copy of the whole ledger to a new file at `to` (refused if it
    /// exists), from one read transaction: a snapshot as of one commit, taken while the writer
    /// goes on committing (redb's readers never block its writer). Returns the DACs copied.
    pub fn backup_to(&self, to: &Path) -> Result<u64> {
        if to.exists() {
            return Err(Error::io(to, "exists; a backup never overwrites a file"));
        }
        let copied = self.copy_into(to);
        if copied.is_err() {
            // A half-written copy must not pass for a backup.
            let _ = std::fs::remove_file(to);
        }
        let records = copied?;
        // The copy's contents are durable (redb fsyncs its commit); make its directory entry
        // durable too.
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(dir, e))?;
        }
        Ok(records)
    }

    /// [`RedbLedger::backup_to`]'s copy, table by table, from one snapshot.
    fn copy_into(&self, to: &Path) -> Result<u64> {
        let copy = Database::create(to).map_err(|e| Error::io(to, e))?;
        let db = self.shared.current()?;
        let snapshot = db.begin_read().map_err(le)?;
        let txn = copy.begin_write().map_err(le)?;
        copy_table(&snapshot, &txn, RECORDS)?;
        copy_table(&snapshot, &txn, SERIALS)?;
        copy_table(&snapshot, &txn, SUBJECTS)?;
        copy_table(&snapshot, &txn, COUNTS)?;
        copy_table(&snapshot, &txn, TOKENS)?;
        copy_table(&snapshot, &txn, TOKEN_IDS)?;
        copy_table(&snapshot, &txn, REVOKED)?;
        copy_table(&snapshot, &txn, CRL_NUMBERS)?;
        copy_table(&snapshot, &txn, CRLS)?;
        copy_table(&snapshot, &txn, BY_TIME)?;
        copy_table(&snapshot, &txn, BY_LABEL)?;
        copy_table(&snapshot, &txn, REKEY)?;
        copy_table(&snapshot, &txn, HELD)?;
        copy_table(&snapshot, &txn, AUDIT)?;
        copy_table(&snapshot, &txn, AUDIT_HEAD)?;
        // A table added to the ledger but not above would be lost silently: compare.
        use redb::TableHandle as _;
        let names = |tables: Box<dyn Iterator<Item = redb::UntypedTableHandle>>| {
            let mut n: Vec<String> = tables.map(|t| t.name().to_string()).collect();
            n.sort();
            n
        };
        let source = names(Box::new(snapshot.list_tables().map_err(le)?));
        let copied = names(Box::new(txn.list_tables().map_err(le)?));
        if source != copied {
            return Err(Error::Ledger(format!(
                "backup incomplete: the ledger has tables {source:?}, the copy {copied:?}"
            )));
        }
        txn.commit().map_err(le)?;
        let records = snapshot
            .open_table(RECORDS)
            .map_err(le)?
            .len()
            .map_err(le)?;
        drop(copy);
        Ok(records)
    }

    /// Number of DACs on record.
    pub fn records(&self) -> Result<u64> {
        self.read(|txn| txn.open_table(RECORDS).map_err(le)?.len().map_err(le))
    }
}

/// The danger switch's storage: redb's own file backend, except that writes, length changes
/// and syncs fail with EIO while a trigger file exists (`DANGER_FAULT_ENV`), reads passing, as
/// on a disk whose writes fail; or, while the trigger file says `reads`, reads fail with EIO
/// and writes pass. Tests of disk errors use it where no device-mapper `error` target is
/// available; it is off unless that environment variable is set.
mod faulty {
    use std::ops::Bound;
    use std::path::{Path, PathBuf};

    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};

    /// EIO on Linux (`errno.h`).
    const EIO: i32 = 5;

    #[derive(Debug)]
    pub struct FaultyFile {
        inner: FileBackend,
        trigger: PathBuf,
    }

    impl FaultyFile {
        /// Opens (or creates) the file at `path`.
        pub fn open(path: &Path, trigger: &Path) -> std::io::Result<Self> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            Ok(Self {
                inner: FileBackend::new(file).map_err(std::io::Error::other)?,
                trigger: trigger.to_path_buf(),
            })
        }

        /// EIO for a write (`reading` false) or a read while the trigger file says so.
        fn check(&self, reading: bool) -> std::io::Result<()> {
            match std::fs::read(&self.trigger) {
                Ok(says) if says.starts_with(b"reads") == reading => {
                    Err(std::io::Error::from_raw_os_error(EIO))
                }
                _ => Ok(()),
            }
        }
    }

    impl StorageBackend for FaultyFile {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.check(true)?;
            self.inner.read(offset, out)
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check(false)?;
            self.inner.set_len(len)
        }

        fn sync_data(&self) -> std::io::Result<()> {
            self.check(false)?;
            self.inner.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check(false)?;
            self.inner.write(offset, data)
        }

        fn close(&self) -> std::io::Result<()> {
            self.inner.close()
        }

        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(start, end)
        }

        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }

        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_range(start, end)
        }

        fn lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), BackendError> {
            self.inner.lock_shared_range(start, end)
        }

        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(start, end)
        }

        fn query_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.query_lock_range(start, end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_gathers_only_when_jobs_come_fast() {
        let at_once = Wait {
            window: Duration::ZERO,
            gap: Duration::ZERO,
        };
        let mut arrivals = Arrivals::new();
        let t0 = arrivals.since;
        // A first, lone request is committed at once.
        assert_eq!(arrivals.wait(), at_once);
        // Twenty jobs in 2 ms (10,000/s): more are expected within the window, each soon.
        arrivals.committing_at(20, t0 + Duration::from_millis(2));
        let wait = arrivals.wait();
        assert_eq!(wait.window, GATHER);
        assert_eq!(wait.gap, Duration::from_micros(200));
        // Three jobs in 2 ms (1,500/s): under two expected within the window.
        arrivals.committing_at(3, t0 + Duration::from_millis(4));
        assert_eq!(arrivals.wait(), at_once);
        // One job after a quiet spell: commit at once.
        arrivals.committing_at(1, t0 + Duration::from_millis(30));
        assert_eq!(arrivals.wait(), at_once);
    }

    fn record(serial: u8, subject: &str, label: &str) -> DacRecord {
        DacRecord {
            serial: vec![serial],
            label: label.into(),
            issuer_key: vec![9; 20],
            subject: subject.into(),
            subject_der: subject.as_bytes().to_vec(),
            vid: 0xfff1,
            pid: 0x8000,
            requester: "test".into(),
            issued_at: 1,
            der: vec![0x30, 0],
            status: Status::Issued,
            renews: None,
            server_keygen: false,
        }
    }

    /// EIO from the disk (the danger switch's backend): the commit is refused as unavailable,
    /// the ledger is out of service until the error clears, then reopens by itself with every
    /// record before the error intact.
    #[test]
    fn an_io_error_takes_the_ledger_out_of_service_until_it_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.redb");
        let trigger = dir.path().join("eio");
        let ledger = RedbLedger::open_with(&path, Some(trigger.clone())).expect("open");
        let any = Admission::default();
        ledger.commit(&record(1, "a", "x"), &any).expect("first");
        std::fs::write(&trigger, b"").expect("trigger");
        assert!(matches!(
            ledger.commit(&record(2, "b", "x"), &any),
            Err(Error::LedgerUnavailable {
                retry_after_secs: RETRY_AFTER_SECS,
                ..
            })
        ));
        // While the disk fails, the reopen fails too: reads and writes are refused the same way.
        std::thread::sleep(Duration::from_millis(200));
        assert!(matches!(
            ledger.count("x"),
            Err(Error::LedgerUnavailable { .. })
        ));
        assert!(matches!(
            ledger.commit(&record(3, "c", "x"), &any),
            Err(Error::LedgerUnavailable { .. })
        ));
        std::fs::remove_file(&trigger).expect("clear");
        let start = Instant::now();
        loop {
            match ledger.commit(&record(4, "d", "x"), &any) {
                Ok(_) => break,
                Err(Error::LedgerUnavailable { .. }) => {
                    assert!(start.elapsed() < Duration::from_secs(20), "never reopened");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let serials: Vec<u8> = ledger
            .list(0, 10)
            .expect("list")
            .iter()
            .map(|r| r.serial[0])
            .collect();
        assert_eq!(serials, [1, 4], "nothing unacknowledged is on record");
        assert!(matches!(ledger.audit_verify(None), Ok(Ok(_))));
    }

    /// A read that fails with EIO (the danger switch's `reads`): refused as unavailable (503),
    /// never a ledger fault (500), and the ledger is reopened once the disk reads again.
    #[test]
    fn a_read_io_error_is_unavailable_and_reopens_the_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.redb");
        let trigger = dir.path().join("eio");
        let ledger = RedbLedger::open_with(&path, Some(trigger.clone())).expect("open");
        let any = Admission::default();
        ledger.commit(&record(1, "a", "x"), &any).expect("first");
        std::fs::write(&trigger, b"reads").expect("trigger");
        for _ in 0..3 {
            assert!(matches!(
                ledger.count("x"),
                Err(Error::LedgerUnavailable {
                    retry_after_secs: RETRY_AFTER_SECS,
                    ..
                })
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(ledger.shared.generation.load(Ordering::Acquire), 0);
        std::fs::remove_file(&trigger).expect("clear");
        let start = Instant::now();
        loop {
            match ledger.count("x") {
                Ok(n) => break assert_eq!(n, 1),
                Err(Error::LedgerUnavailable { .. }) => {
                    assert!(start.elapsed() < Duration::from_secs(20), "never reopened");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            ledger.shared.generation.load(Ordering::Acquire),
            1,
            "the read error had the ledger reopened, once"
        );
        ledger.commit(&record(2, "b", "x"), &any).expect("after");
        assert!(matches!(ledger.audit_verify(None), Ok(Ok(_))));
    }

    #[test]
    fn uniqueness_quota_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.redb");
        let ledger = RedbLedger::open(&path).expect("open");
        let quota = Admission {
            quota: Some(2),
            ..Admission::default()
        };
        ledger.commit(&record(1, "a", "x"), &quota).expect("first");
        assert!(matches!(
            ledger.commit(&record(1, "b", "x"), &quota),
            Err(Error::Ledger(m)) if m.contains("serial")
        ));
        assert!(matches!(
            ledger.commit(&record(2, "a", "x"), &quota),
            Err(Error::SubjectTaken { .. })
        ));
        let mut renewal = record(3, "a", "x");
        renewal.renews = Some(vec![1]);
        ledger.commit(&renewal, &quota).expect("renewal takes over");
        assert!(matches!(
            ledger.commit(&record(4, "c", "x"), &quota),
            Err(Error::QuotaExhausted { quota: 2, .. })
        ));
        let revoked = ledger
            .revoke(&[1], RevocationReason::KeyCompromise, 5, "test")
            .expect("revoke");
        assert_eq!(revoked.serial, [1]);
        // Again: refused, nothing changes; an unknown serial: not found.
        assert!(matches!(
            ledger.revoke(&[1], RevocationReason::Superseded, 6, "test"),
            Err(Error::AlreadyRevoked { .. })
        ));
        assert!(matches!(
            ledger.revoke(&[99], RevocationReason::Superseded, 6, "test"),
            Err(Error::NotFound(_))
        ));
        assert_eq!(
            ledger.revoked("x").expect("revoked"),
            [RevokedEntry {
                serial: vec![1],
                at: 5,
                reason: RevocationReason::KeyCompromise
            }]
        );
        assert!(ledger.revoked("y").expect("revoked").is_empty());
        assert_eq!(ledger.next_crl_number("x").expect("n"), 1);
        assert_eq!(ledger.next_crl_number("x").expect("n"), 2);
        let crl = CrlRecord {
            number: 2,
            this_update: 1,
            next_update: 2,
            entries: 1,
            der: vec![0x30, 0],
        };
        ledger.put_crl("x", &crl).expect("put");
        assert!(ledger.put_crl("x", &crl).is_err(), "not newer");
        drop(ledger);

        let ledger = RedbLedger::open(&path).expect("reopen");
        assert_eq!(ledger.count("x").expect("count"), 2);
        let list = ledger.list(0, 10).expect("list");
        assert_eq!(list.iter().map(|r| r.serial[0]).collect::<Vec<_>>(), [1, 3]);
        assert!(matches!(list[0].status, Status::Revoked { .. }));
        let holder = ledger.by_subject(&[9; 20], b"a").expect("lookup");
        assert_eq!(holder.map(|r| r.serial), Some(vec![3]));

        // A backup taken while the ledger is open holds the same records and indexes.
        let copy = dir.path().join("backup.redb");
        assert_eq!(ledger.backup_to(&copy).expect("backup"), 2);
        assert!(ledger.backup_to(&copy).is_err(), "never overwrites");
        drop(ledger);
        let restored = RedbLedger::open(&copy).expect("open the backup");
        assert_eq!(restored.count("x").expect("count"), 2);
        assert_eq!(restored.list(0, 10).expect("list"), list);
        let holder = restored.by_subject(&[9; 20], b"a").expect("lookup");
        assert_eq!(holder.map(|r| r.serial), Some(vec![3]));
        assert_eq!(restored.crl("x").expect("crl").map(|c| c.number), Some(2));
        assert_eq!(restored.next_crl_number("x").expect("n"), 3);
    }
}
