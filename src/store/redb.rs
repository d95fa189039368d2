//! The embedded ledger on redb: one file, fsync'd on every commit (DESIGN.md: why not sled).
//!
//! Writes go through one writer thread that commits whatever is queued in one transaction
//! (group commit): each record is still checked and acknowledged only after the fsync that makes
//! it durable, but many concurrent enrollments share one fsync. A single writer also makes the
//! quota, uniqueness and token checks atomic with the insert.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Admission, DacRecord, Ledger, Status, TokenRecord};
use crate::error::{Error, Result};

/// serial → record (JSON).
const DACS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dacs");
/// issuer SKID ‖ subject DER → serial of the current holder.
const SUBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("subjects");
/// issue sequence number → serial (the list in issue order).
const SEQUENCE: TableDefinition<u64, &[u8]> = TableDefinition::new("sequence");
/// label → DACs issued.
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
/// SHA-256 of a token secret → token (JSON).
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
/// token id → SHA-256 of its secret.
const TOKEN_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("token_ids");

/// Most writes folded into one transaction; bounds the latency one commit adds to the first
/// waiter. 256 × ~1 KiB records stays well inside one redb page batch.
const MAX_GROUP: usize = 256;

/// redb's page cache. Its default (1 GiB) lets a busy server's RSS grow with the ledger; the
/// hot set here is the tail of the tables, so 16 MiB keeps lookups in memory and RSS flat.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The embedded ledger.
pub struct RedbLedger {
    db: std::sync::Arc<Database>,
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

enum Op {
    Commit(Box<DacRecord>, Admission),
    Revoke {
        serial: Vec<u8>,
        reason: String,
        at: i64,
    },
    PutToken([u8; 32], TokenRecord),
}

struct Job {
    op: Op,
    reply: mpsc::SyncSender<Result<bool>>,
}

fn le(e: impl std::fmt::Display) -> Error {
    Error::Ledger(e.to_string())
}

impl RedbLedger {
    /// Opens (or creates) the ledger file.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => Error::Ledger(format!(
                    "{} is in use by another matter-est process (a running `serve`?); stop it first",
                    path.display()
                )),
                e => Error::Ledger(format!("{}: {e}", path.display())),
            })?;
        let txn = db.begin_write().map_err(le)?;
        {
            txn.open_table(DACS).map_err(le)?;
            txn.open_table(SUBJECTS).map_err(le)?;
            txn.open_table(SEQUENCE).map_err(le)?;
            txn.open_table(COUNTS).map_err(le)?;
            txn.open_table(TOKENS).map_err(le)?;
            txn.open_table(TOKEN_IDS).map_err(le)?;
        }
        txn.commit().map_err(le)?;
        let db = std::sync::Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(&writer_db, &rx))
            .map_err(le)?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The file behind it.
    pub fn path(&self) -> &Path {
        &self.path
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

    fn submit(&self, op: Op) -> Result<bool> {
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let jobs = self.jobs.lock().map_err(le)?;
            let sender = jobs
                .as_ref()
                .ok_or_else(|| Error::Ledger("the ledger is closed".into()))?;
            sender
                .send(Job { op, reply })
                .map_err(|_| Error::Ledger("the ledger writer stopped".into()))?;
        }
        answer
            .recv()
            .map_err(|_| Error::Ledger("the ledger writer stopped".into()))?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, Error>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(le)?;
        f(&txn)
    }
}

impl Drop for RedbLedger {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let outcome = apply_group(db, &group);
        match outcome {
            Ok(results) => {
                for (job, result) in group.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in group {
                    let _ = job.reply.send(Err(Error::Ledger(msg.clone())));
                }
            }
        }
    }
}

/// Applies each job in one write transaction; a job whose checks fail changes nothing and
/// gets its own error, the others proceed. Nothing is acknowledged before the commit returns.
fn apply_group(db: &Database, group: &[Job]) -> Result<Vec<Result<bool>>> {
    let txn = db.begin_write().map_err(le)?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut dacs = txn.open_table(DACS).map_err(le)?;
        let mut subjects = txn.open_table(SUBJECTS).map_err(le)?;
        let mut sequence = txn.open_table(SEQUENCE).map_err(le)?;
        let mut counts = txn.open_table(COUNTS).map_err(le)?;
        let mut tokens = txn.open_table(TOKENS).map_err(le)?;
        let mut token_ids = txn.open_table(TOKEN_IDS).map_err(le)?;
        let mut next_seq = sequence
            .last()
            .map_err(le)?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(0);
        for job in group {
            let result = match &job.op {
                Op::Commit(record, admission) => (|| {
                    if dacs.get(record.serial.as_slice()).map_err(le)?.is_some() {
                        return Err(Error::Ledger(format!(
                            "serial {} is already on record",
                            crate::asn1::hex(&record.serial)
                        )));
                    }
                    let subject_key = [record.issuer_key.as_slice(), &record.subject_der].concat();
                    if let Some(holder) = subjects.get(subject_key.as_slice()).map_err(le)? {
                        // RFC 7030 §4.2.2 renewal: only the link to the holder is exempt.
                        if record.renews.as_deref() != Some(holder.value()) {
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
                        token.spent_by = Some(record.serial.clone());
                        tokens
                            .insert(hash.as_slice(), encode(&token)?.as_slice())
                            .map_err(le)?;
                    }
                    dacs.insert(
                        record.serial.as_slice(),
                        encode(record.as_ref())?.as_slice(),
                    )
                    .map_err(le)?;
                    subjects
                        .insert(subject_key.as_slice(), record.serial.as_slice())
                        .map_err(le)?;
                    sequence
                        .insert(next_seq, record.serial.as_slice())
                        .map_err(le)?;
                    next_seq += 1;
                    counts
                        .insert(record.label.as_str(), issued + 1)
                        .map_err(le)?;
                    Ok(true)
                })(),
                Op::Revoke { serial, reason, at } => (|| {
                    let Some(mut record): Option<DacRecord> = dacs
                        .get(serial.as_slice())
                        .map_err(le)?
                        .map(|v| decode(v.value()))
                        .transpose()?
                    else {
                        return Ok(false);
                    };
                    if record.status == Status::Issued {
                        record.status = Status::Revoked {
                            at: *at,
                            reason: reason.clone(),
                        };
                        dacs.insert(serial.as_slice(), encode(&record)?.as_slice())
                            .map_err(le)?;
                    }
                    Ok(true)
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
                    Ok(true)
                })(),
            };
            results.push(result);
        }
    }
    // Durability::Immediate (redb's default): fsync before we acknowledge anything.
    txn.commit().map_err(le)?;
    Ok(results)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(le)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(le)
}

impl Ledger for RedbLedger {
    fn commit(&self, record: &DacRecord, admission: &Admission) -> Result<()> {
        self.submit(Op::Commit(Box::new(record.clone()), admission.clone()))
            .map(|_| ())
    }

    fn by_serial(&self, serial: &[u8]) -> Result<Option<DacRecord>> {
        self.read(|txn| {
            let t = txn.open_table(DACS).map_err(le)?;
            t.get(serial)
                .map_err(le)?
                .map(|v| decode(v.value()))
                .transpose()
        })
    }

    fn by_subject(&self, issuer_key: &[u8], subject_der: &[u8]) -> Result<Option<DacRecord>> {
        let serial = self.read(|txn| {
            let t = txn.open_table(SUBJECTS).map_err(le)?;
            let key = [issuer_key, subject_der].concat();
            Ok(t.get(key.as_slice())
                .map_err(le)?
                .map(|v| v.value().to_vec()))
        })?;
        match serial {
            Some(s) => self.by_serial(&s),
            None => Ok(None),
        }
    }

    fn list(&self, skip: usize, limit: usize) -> Result<Vec<DacRecord>> {
        self.read(|txn| {
            let seq = txn.open_table(SEQUENCE).map_err(le)?;
            let dacs = txn.open_table(DACS).map_err(le)?;
            let mut out = Vec::new();
            for entry in seq.iter().map_err(le)?.skip(skip).take(limit) {
                let (_, serial) = entry.map_err(le)?;
                if let Some(v) = dacs.get(serial.value()).map_err(le)? {
                    out.push(decode(v.value())?);
                }
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

    fn revoke(&self, serial: &[u8], reason: &str, at: i64) -> Result<bool> {
        self.submit(Op::Revoke {
            serial: serial.to_vec(),
            reason: reason.to_string(),
            at,
        })
    }

    fn put_token(&self, secret_hash: &[u8; 32], token: &TokenRecord) -> Result<()> {
        self.submit(Op::PutToken(*secret_hash, token.clone()))
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
    /// Number of DACs on record.
    pub fn len(&self) -> Result<u64> {
        self.read(|txn| txn.open_table(DACS).map_err(le)?.len().map_err(le))
    }

    /// True when nothing is on record.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn uniqueness_quota_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.redb");
        let ledger = RedbLedger::open(&path).expect("open");
        let quota = Admission {
            quota: Some(2),
            token: None,
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
        assert!(ledger.revoke(&[1], "keyCompromise", 5).expect("revoke"));
        drop(ledger);

        let ledger = RedbLedger::open(&path).expect("reopen");
        assert_eq!(ledger.count("x").expect("count"), 2);
        let list = ledger.list(0, 10).expect("list");
        assert_eq!(list.iter().map(|r| r.serial[0]).collect::<Vec<_>>(), [1, 3]);
        assert!(matches!(list[0].status, Status::Revoked { .. }));
        let holder = ledger.by_subject(&[9; 20], b"a").expect("lookup");
        assert_eq!(holder.map(|r| r.serial), Some(vec![3]));
    }
}
