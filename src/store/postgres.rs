//! The shared ledger on PostgreSQL (DESIGN.md "Decisions already taken": tokio-postgres +
//! deadpool-postgres): several `serve` nodes, and the CLI beside them, on one database.
//!
//! Every rule of [`Ledger`] is enforced by the database inside one transaction, never by a
//! check-then-insert here: the serial is the `dacs.serial` unique key; the subject per issuer
//! is the `subjects` primary key, which only a renewal takes over (a conditional update of its
//! holder); the quota is `UPDATE labels SET used = used + 1 WHERE used < quota`; a token is
//! spent by `UPDATE tokens ... WHERE spent_by IS NULL`; the audit chain's head row is locked
//! (`SELECT ... FOR UPDATE`) by every transaction that appends, so records follow one sequence
//! across nodes; a cRLNumber is an upsert that adds one.
//!
//! As in the redb ledger, writes are queued to one writer task per node that applies whatever
//! is queued in one transaction (group commit), so that one refusal leaves the others; the
//! head of the audit chain is locked last, after the group's own row locks, so that two nodes
//! never wait on each other through it. A run of issuances in a group is one call of the
//! schema's `matter_est_commit_dacs` function (migration 6), taking an array per column: it
//! locks the runs' labels' count rows first (so runs of one label on several nodes take turns),
//! decides each issuance on the rows it has locked as if alone after the ones before it, and
//! writes the recorded ones with a statement per table; any other job runs in its own
//! savepoint. The call is pipelined with the group's `BEGIN` and the head lock, as are the
//! audit append and `COMMIT`, so that a group costs a few round trips (issue 16). A wait on a
//! label's count row that ends in a statement timeout (another session holds it) fails that
//! label's issuances alone with 503, not the group.
//!
//! Faults: a database that is down, restarting or unreachable gives
//! [`Error::LedgerUnavailable`] (503 with `Retry-After`); the pool opens new connections by
//! itself. A commit whose outcome is unknown (the connection was lost after `COMMIT` was sent)
//! is resolved by looking the group's DAC serial (or its first audit record) up before any
//! answer is given; until that lookup succeeds nobody is told "recorded".
//!
//! The [`Ledger`] trait is synchronous with completion callbacks: the backend runs its own
//! small tokio runtime, so `est` and `admin` do not know which backend they talk to.

mod tls;

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::audit::{self, AuditEvent, AuditRecord, Head};
use super::job::{Job, Op, Outcome, Reply};
use super::migrate::Item;
use super::{
    Admission, CertPage, CertQuery, Committed, Completer, CrlRecord, DacRecord, Decision,
    HeldRequest, Ledger, Pending, Position, RevokedEntry, Status, TokenRecord,
};
use crate::config::{PostgresConfig, PostgresTls};
use crate::error::{Error, Result};
use crate::revocation::RevocationReason;

/// The schema, one migration per version, applied in order (never edited once released: a
/// change is a new file).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("postgres/migrations/0001_ledger.sql")),
    (2, include_str!("postgres/migrations/0002_held.sql")),
    (3, include_str!("postgres/migrations/0003_commit_dac.sql")),
    (
        4,
        include_str!("postgres/migrations/0004_commit_timeout.sql"),
    ),
    (5, include_str!("postgres/migrations/0005_commit_count.sql")),
    (6, include_str!("postgres/migrations/0006_commit_dacs.sql")),
];

/// The advisory lock key under which migrations run ("matter-e" in ASCII), so that nodes
/// starting together apply each migration once.
const MIGRATION_LOCK: i64 = 0x6d61_7474_6572_2d65;

/// Most writes folded into one transaction (as [`super::redb`]).
const MAX_GROUP: usize = 256;

/// `Retry-After` when the database is unavailable: about a restart's time.
const RETRY_AFTER_SECS: u64 = 5;

/// How long a commit of unknown outcome is looked up for before the client is told to retry
/// (its retry then finds the DAC on record, if the commit took place).
const RESOLVE_FOR: Duration = Duration::from_secs(30);

/// A page of audit records or DACs read at once while streaming.
const CHUNK: i64 = 5_000;

/// The columns of a DAC row, in [`dac_from_row`]'s order.
macro_rules! dac_cols {
    () => {
        "d.seq, d.serial, d.label, d.issuer_key, d.subject, d.subject_der, d.vid, d.pid, \
         d.requester, d.issued_at, d.der, d.revoked_at, d.revoked_reason, d.renews, \
         d.server_keygen"
    };
}

/// The columns of a token row, in [`token_from_row`]'s order.
macro_rules! token_cols {
    () => {
        "id, label, pid, created_at, spent_by, expires_at, cn, revoked_at"
    };
}

/// The shared ledger.
pub struct PgLedger {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    jobs: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    writer_done: Mutex<Option<Pending<bool>>>,
}

/// The database could not be used for a reason that passes.
fn unavailable(reason: impl std::fmt::Display) -> Error {
    Error::LedgerUnavailable {
        reason: format!("PostgreSQL: {reason}"),
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

/// Whether a database error passes by itself (the server down or restarting, the connection
/// lost, a lock conflict or timeout): the client may retry.
fn transient(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || code.code().starts_with("57P")
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::QUERY_CANCELED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::LOCK_NOT_AVAILABLE,
        ]
        .contains(code)
}

/// The error and its causes, `: `-separated (the driver's own text names only the step).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// One classification of a driver error.
fn pg_err(e: tokio_postgres::Error) -> Error {
    let io = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match e.code() {
        Some(code) if transient(code) => unavailable(chain(&e)),
        Some(_) => Error::Ledger(format!("PostgreSQL: {}", chain(&e))),
        // A TLS handshake that failed on the certificate: the operator's to fix, not passing.
        None if io.is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) => {
            Error::Ledger(format!("PostgreSQL: {}", chain(&e)))
        }
        // No SQLSTATE: the connection is closed, an I/O error or a timeout, unless it is a
        // conversion of ours.
        None if e.is_closed() || io.is_some() || e.to_string().contains("timed out") => {
            unavailable(chain(&e))
        }
        None => Error::Ledger(format!("PostgreSQL: {}", chain(&e))),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match e.code() {
            // A refused login is the operator's to fix, not a passing outage.
            Some(code) if code.code().starts_with("28") => {
                Error::Ledger(format!("PostgreSQL refused the login: {e}"))
            }
            _ => pg_err(e),
        },
        e => unavailable(chain(&e)),
    }
}

/// The same error again, for each job of a failed group.
fn again(e: &Error) -> Error {
    match e {
        Error::LedgerUnavailable {
            reason,
            retry_after_secs,
        } => Error::LedgerUnavailable {
            reason: reason.clone(),
            retry_after_secs: *retry_after_secs,
        },
        Error::Ledger(m) => Error::Ledger(m.clone()),
        other => Error::Ledger(other.to_string()),
    }
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::Ledger(format!("PostgreSQL: column {i}: {e}")))
}

fn u16_of(v: i32) -> Result<u16> {
    u16::try_from(v).map_err(|_| Error::Ledger(format!("{v} is not a 16-bit value")))
}

/// A DAC from [`dac_cols`]: (sequence number, record).
fn dac_from_row(row: &Row) -> Result<(u64, DacRecord)> {
    let revoked_at: Option<i64> = get(row, 11)?;
    let revoked_reason: Option<String> = get(row, 12)?;
    Ok((
        get::<i64>(row, 0)? as u64,
        DacRecord {
            serial: get(row, 1)?,
            label: get(row, 2)?,
            issuer_key: get(row, 3)?,
            subject: get(row, 4)?,
            subject_der: get(row, 5)?,
            vid: u16_of(get(row, 6)?)?,
            pid: u16_of(get(row, 7)?)?,
            requester: get(row, 8)?,
            issued_at: get(row, 9)?,
            der: get(row, 10)?,
            status: match (revoked_at, revoked_reason) {
                (Some(at), Some(reason)) => Status::Revoked { at, reason },
                _ => Status::Issued,
            },
            renews: get(row, 13)?,
            server_keygen: get(row, 14)?,
        },
    ))
}

fn token_from_row(row: &Row) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: get(row, 0)?,
        label: get(row, 1)?,
        pid: get::<Option<i32>>(row, 2)?.map(u16_of).transpose()?,
        created_at: get(row, 3)?,
        spent_by: get(row, 4)?,
        expires_at: get(row, 5)?,
        cn: get(row, 6)?,
        revoked_at: get(row, 7)?,
    })
}

fn crl_from_row(row: &Row) -> Result<CrlRecord> {
    Ok(CrlRecord {
        number: get::<i64>(row, 0)? as u64,
        this_update: get(row, 1)?,
        next_update: get(row, 2)?,
        entries: get::<i64>(row, 3)? as u64,
        der: get(row, 4)?,
    })
}

/// The same public key asking again for an unrevoked DAC of the same label (as
/// [`super::redb`]).
fn same_request(holder: &DacRecord, record: &DacRecord) -> bool {
    holder.status == Status::Issued
        && holder.label == record.label
        && holder.public_key().is_some()
        && holder.public_key() == record.public_key()
}

/// Runs `future` on the ledger's runtime and waits for it (callable from any thread, a tokio
/// worker included, like the redb ledger's reads).
fn wait_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    future: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (done, pending) = Pending::new();
    handle.spawn(async move { done.complete(future.await) });
    pending.wait()
}

impl PgLedger {
    /// Connects (checking the login at once), applies the migrations this node knows under an
    /// advisory lock, and starts the writer. A schema newer than this build is refused.
    pub fn open(config: &PostgresConfig) -> Result<Self> {
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| Error::Ledger(format!("store.url: {e}")))?;
        if let Some(source) = &config.password {
            let password = crate::signer::file::read_passphrase(source).map_err(|e| match e {
                Error::KeyFile { path, problem } => Error::Ledger(format!(
                    "the database password ({}): {problem}",
                    path.display()
                )),
                e => e.in_key("store.password_file"),
            })?;
            pg.password(password);
        }
        let mut options = pg.get_options().unwrap_or_default().to_string();
        if !options.is_empty() {
            options.push(' ');
        }
        // The same bound on each wait for a lock: a statement that waits twice (a run of
        // issuances waiting on two labels' rows) is bounded at every wait, not once.
        options.push_str(&format!(
            "-c statement_timeout={ms} -c lock_timeout={ms}",
            ms = config.statement_timeout.as_millis()
        ));
        pg.options(options);
        pg.connect_timeout(config.connect_timeout);
        pg.application_name("matter-est");
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &config.tls {
            PostgresTls::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(pg, NoTls, manager_config)
            }
            PostgresTls::VerifyFull { ca_file } => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tls::MakeRustls::new(ca_file).map_err(|e| e.in_key("store.ca_file"))?;
                Manager::from_config(pg, tls, manager_config)
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ledger-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("the ledger's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| Error::Internal(format!("the database pool: {e}")))?;
        let migrating = pool.clone();
        wait_on(&handle, async move { migrate(&migrating).await })?;
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let (done, writer_done) = Pending::new();
        let writer_pool = pool.clone();
        handle.spawn(async move {
            writer(writer_pool, rx).await;
            done.complete(Ok(true));
        });
        Ok(Self {
            runtime: Mutex::new(Some(runtime)),
            handle,
            pool,
            jobs: Mutex::new(Some(tx)),
            writer_done: Mutex::new(Some(writer_done)),
        })
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32> {
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one("SELECT max(version) FROM matter_est_schema", &[])
                .await
                .map_err(pg_err)?;
            Ok(get::<Option<i32>>(&row, 0)?.unwrap_or(0))
        })
    }

    /// The newest schema version this build knows.
    pub fn known_schema_version() -> i32 {
        MIGRATIONS.last().map_or(0, |(v, _)| *v)
    }

    fn read<T, F>(&self, f: impl FnOnce(Pool) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        wait_on(&self.handle, f(self.pool.clone()))
    }

    fn submit_op(&self, op: Op, reply: Reply) {
        let Ok(jobs) = self.jobs.lock() else {
            return reply.complete(Err(Error::Ledger("the ledger lock is poisoned".into())));
        };
        match jobs.as_ref() {
            Some(tx) => {
                if let Err(unsent) = tx.send(Job { op, reply }) {
                    unsent
                        .0
                        .reply
                        .complete(Err(Error::Ledger("the ledger writer stopped".into())));
                }
            }
            None => reply.complete(Err(Error::Ledger("the ledger is closed".into()))),
        }
    }

    fn op<T: Send + 'static>(
        &self,
        op: Op,
        reply: impl FnOnce(Completer<T>) -> Reply,
    ) -> Result<T> {
        let (done, pending) = Pending::new();
        self.submit_op(op, reply(done));
        pending.wait()
    }

    /// Finishes what was queued and stops the writer: further writes fail; reads go on (as the
    /// redb ledger's) until the ledger is dropped.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(done) = self.writer_done.lock().ok().and_then(|mut w| w.take()) {
            let _ = done.wait();
        }
    }
}

impl Drop for PgLedger {
    /// Closes, then the pool's connections and the runtime.
    fn drop(&mut self) {
        self.close();
        self.pool.close();
        if let Some(runtime) = self.runtime.lock().ok().and_then(|mut r| r.take()) {
            runtime.shutdown_background();
        }
    }
}

/// Applies the migrations this build knows and the database lacks, under the advisory lock;
/// refuses a database whose schema is newer than this build.
async fn migrate(pool: &Pool) -> Result<()> {
    let client = pool.get().await.map_err(pool_err)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS matter_est_schema (\
                     version integer PRIMARY KEY, \
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(pg_err)?;
        let row = client
            .query_one("SELECT max(version) FROM matter_est_schema", &[])
            .await
            .map_err(pg_err)?;
        let at = get::<Option<i32>>(&row, 0)?.unwrap_or(0);
        let known = PgLedger::known_schema_version();
        if at > known {
            return Err(Error::Ledger(format!(
                "the database's ledger schema is version {at}, newer than this matter-est \
                 knows ({known}): upgrade this node before it uses the ledger"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > at) {
            client
                .batch_execute(&format!(
                    "BEGIN;\n{sql}\nINSERT INTO matter_est_schema (version) VALUES ({version});\n\
                     COMMIT;"
                ))
                .await
                .map_err(|e| {
                    Error::Ledger(format!("applying ledger schema version {version}: {e}"))
                })?;
            tracing::info!(version, "ledger schema migrated");
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        // A failed migration leaves its transaction open; end it before unlocking.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    result
}

async fn writer(pool: Pool, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<Op>, Vec<Reply>) =
            group.into_iter().map(|j| (j.op, j.reply)).unzip();
        let start = Instant::now();
        let results = apply_group(&pool, &ops).await;
        metrics::histogram!(crate::admin::metrics::LEDGER_COMMIT_DURATION)
            .record(start.elapsed().as_secs_f64());
        metrics::histogram!(crate::admin::metrics::LEDGER_COMMIT_GROUP_SIZE)
            .record(ops.len() as f64);
        for (reply, result) in replies.into_iter().zip(results) {
            reply.complete(result);
        }
    }
}

/// How a group's transaction ended when it did not commit cleanly.
enum GroupFailure {
    /// Nothing was committed.
    NotCommitted(Error),
    /// `COMMIT` was sent and the connection failed before its answer: the outcome is unknown.
    Unknown {
        error: Error,
        results: Vec<Result<Outcome>>,
        first_audit: Option<(i64, Vec<u8>)>,
    },
}

async fn apply_group(pool: &Pool, group: &[Op]) -> Vec<Result<Outcome>> {
    let fail_all = |e: Error| group.iter().map(|_| Err(again(&e))).collect();
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return fail_all(pool_err(e)),
    };
    match group_transaction(&client, group).await {
        Ok(results) => results,
        Err(GroupFailure::NotCommitted(e)) => {
            // The connection may be in a failed transaction; never hand it back in one.
            if !client.is_closed() && client.batch_execute("ROLLBACK").await.is_err() {
                let _ = deadpool_postgres::Object::take(client);
            }
            fail_all(e)
        }
        Err(GroupFailure::Unknown {
            error,
            results,
            first_audit,
        }) => {
            let _ = deadpool_postgres::Object::take(client);
            tracing::warn!(%error, "the ledger lost its connection during COMMIT; looking the outcome up");
            match resolve(pool, group, &results, first_audit).await {
                Ok(true) => results,
                Ok(false) => fail_all(unavailable(format!(
                    "the commit did not take place ({error})"
                ))),
                Err(e) => fail_all(Error::LedgerUnavailable {
                    reason: format!(
                        "the outcome of a commit is unknown (the connection was lost after \
                         COMMIT and the database has not answered since): {e}"
                    ),
                    retry_after_secs: RETRY_AFTER_SECS,
                }),
            }
        }
    }
}

/// Whether a group whose `COMMIT` got no answer was committed: its first recorded DAC's serial
/// (with the same certificate) or else its first audit record (the same bytes) is on record.
/// The lookup first takes the audit chain's head lock, which the interrupted transaction held
/// until it ended: so it sees that transaction's outcome, never the moment before it. Retries
/// until [`RESOLVE_FOR`] passes.
async fn resolve(
    pool: &Pool,
    group: &[Op],
    results: &[Result<Outcome>],
    first_audit: Option<(i64, Vec<u8>)>,
) -> Result<bool> {
    let probe_dac = group.iter().zip(results).find_map(|(op, r)| match (op, r) {
        (Op::Commit(record, _), Ok(Outcome::Commit(Committed::Recorded))) => Some(record),
        _ => None,
    });
    let Some((seq, bytes)) = &first_audit else {
        // Only cRLNumbers taken (no head lock, nothing to look up): not answered as done.
        return Err(unavailable(
            "the outcome of a commit that took only cRLNumbers is unknown",
        ));
    };
    let deadline = Instant::now() + RESOLVE_FOR;
    loop {
        let attempt = async {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await.map_err(pg_err)?;
            txn.query_one("SELECT next FROM audit_head WHERE id = 1 FOR UPDATE", &[])
                .await
                .map_err(pg_err)?;
            let committed = match probe_dac {
                Some(record) => {
                    let row = txn
                        .query_opt("SELECT der FROM dacs WHERE serial = $1", &[&record.serial])
                        .await
                        .map_err(pg_err)?;
                    match row {
                        Some(row) => get::<Vec<u8>>(&row, 0)? == record.der,
                        None => false,
                    }
                }
                None => {
                    let row = txn
                        .query_opt("SELECT bytes FROM audit WHERE seq = $1", &[seq])
                        .await
                        .map_err(pg_err)?;
                    match row {
                        Some(row) => get::<Vec<u8>>(&row, 0)? == *bytes,
                        None => false,
                    }
                }
            };
            txn.rollback().await.map_err(pg_err)?;
            Ok::<bool, Error>(committed)
        }
        .await;
        match attempt {
            Ok(committed) => {
                tracing::info!(committed, "the outcome of the interrupted commit is known");
                return Ok(committed);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The audit chain's head, locked until the transaction ends (rule: one sequence across nodes).
const HEAD_LOCK: &str = "SELECT next, prev FROM audit_head WHERE id = 1 FOR UPDATE";

/// A run of issuances (schema 6, `matter_est_commit_dacs`): the DACs, their subjects, the
/// quota counts and the tokens in one call taking one array per column; a row per issuance in
/// the run's order, with the holder's columns in [`dac_from_row`]'s order (NULL unless the
/// subject is held), then the outcome and, for `failed`, the error's SQLSTATE and text.
const COMMIT_DACS: &str = concat!(
    "SELECT ",
    dac_cols!(),
    ", c.outcome, c.error_state, c.error_message \
     FROM matter_est_commit_dacs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
     $15, $16, $17, $18, $19) c, LATERAL (SELECT (c.holder_dac).*) d ORDER BY c.ord"
);

/// Polls `futures` together and gives their outputs in order. tokio-postgres sends a request
/// when its future is first polled and answers them in order, so requests polled together go
/// to the database at once (pipelined) instead of one round trip each.
async fn pipelined<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// One transaction for the group. A run of issuances is one `matter_est_commit_dacs` call,
/// pipelined with the group's `BEGIN` when it opens the group and with the audit head lock
/// when it ends it; any other job runs in its own savepoint. Then the audit
/// records of the jobs that succeeded are appended under the head's row lock — taken last,
/// after the group's own row locks — and the insert, head update and `COMMIT` are sent
/// together.
async fn group_transaction(
    client: &deadpool_postgres::Object,
    group: &[Op],
) -> std::result::Result<Vec<Result<Outcome>>, GroupFailure> {
    let broken = |e: tokio_postgres::Error| GroupFailure::NotCommitted(pg_err(e));
    // Prepared once per connection (the driver's cache), so that they can be pipelined.
    let begin = client.prepare_cached("BEGIN").await.map_err(broken)?;
    let head_lock = client.prepare_cached(HEAD_LOCK).await.map_err(broken)?;
    // Every job but a cRLNumber's and a pruning may append to the audit chain.
    let appends = group
        .iter()
        .any(|op| !matches!(op, Op::NextCrlNumber(_) | Op::PruneHeld(_)));
    // Every issuance's label, which the group's first run locks (in one order on every node).
    let mut group_labels: Vec<&str> = group
        .iter()
        .filter_map(|op| match op {
            Op::Commit(record, _) => Some(record.label.as_str()),
            _ => None,
        })
        .collect();
    group_labels.sort_unstable();
    group_labels.dedup();
    let mut begun = false;
    let mut head = None;
    let mut results = Vec::with_capacity(group.len());
    let mut events = Vec::new();
    let mut at = 0;
    while at < group.len() {
        let run: Vec<(&DacRecord, &Admission)> = group[at..]
            .iter()
            .map_while(|op| match op {
                Op::Commit(record, admission) => Some((&**record, admission)),
                _ => None,
            })
            .collect();
        if run.is_empty() {
            if !begun {
                client.batch_execute("BEGIN").await.map_err(broken)?;
                begun = true;
            }
            let op = &group[at];
            client
                .batch_execute("SAVEPOINT job")
                .await
                .map_err(broken)?;
            let mut job_events = Vec::new();
            match apply_job(client, op, &mut job_events).await {
                Ok((outcome, true)) => {
                    client
                        .batch_execute("RELEASE SAVEPOINT job")
                        .await
                        .map_err(broken)?;
                    events.extend(job_events);
                    results.push(Ok(outcome));
                }
                Ok((outcome, false)) => {
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                        .await
                        .map_err(broken)?;
                    results.push(Ok(outcome));
                }
                Err(e) => {
                    // A lost connection fails here too, and with it the group.
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                        .await
                        .map_err(broken)?;
                    results.push(Err(e));
                }
            }
            at += 1;
            continue;
        }
        at += run.len();
        let lock_head = at == group.len() && appends;
        let commit_dacs = client.prepare_cached(COMMIT_DACS).await.map_err(broken)?;
        let columns = CommitColumns::new(&run, &group_labels);
        let args = columns.refs();
        let mut requests = Vec::with_capacity(3);
        if !begun {
            requests.push(client.query(&begin, &[]));
        }
        requests.push(client.query(&commit_dacs, &args));
        if lock_head {
            requests.push(client.query(&head_lock, &[]));
        }
        let mut answers = pipelined(requests).await.into_iter();
        if !begun {
            answers.next().transpose().map_err(broken)?;
            begun = true;
        }
        // The function answers every refusal itself: an error here (a lost connection, a
        // cancelled statement, a rule broken by a concurrent writer) has aborted the
        // transaction, and the group with it.
        let rows = answers
            .next()
            .transpose()
            .map_err(broken)?
            .unwrap_or_default();
        if rows.len() != run.len() {
            return Err(GroupFailure::NotCommitted(Error::Ledger(format!(
                "matter_est_commit_dacs answered {} rows for {} issuances",
                rows.len(),
                run.len()
            ))));
        }
        for ((record, admission), row) in run.iter().zip(&rows) {
            let mut job_events = Vec::new();
            let result = commit_outcome(record, admission, row, &mut job_events);
            if matches!(result, Ok((_, true))) {
                events.extend(job_events);
            }
            results.push(result.map(|(outcome, _)| outcome));
        }
        if lock_head {
            let rows = answers
                .next()
                .transpose()
                .map_err(broken)?
                .unwrap_or_default();
            head = rows.into_iter().next();
        }
    }
    let (answers, first_audit) = if events.is_empty() {
        (vec![client.batch_execute("COMMIT").await], None)
    } else {
        append_and_commit(client, &head_lock, head, events).await?
    };
    // An error the server answered means it did not commit (a `COMMIT` after a failed
    // statement rolls back); an answer lost with the connection after `COMMIT` was sent leaves
    // the outcome unknown, to be looked up.
    let mut lost = None;
    for answer in answers {
        match answer {
            Ok(()) => {}
            Err(e) if e.code().is_some() => return Err(GroupFailure::NotCommitted(pg_err(e))),
            Err(e) => {
                lost.get_or_insert(e);
            }
        }
    }
    match lost {
        None => Ok(results),
        Some(e) => Err(GroupFailure::Unknown {
            error: pg_err(e),
            results,
            first_audit,
        }),
    }
}

/// Appends the audit records of `events` after the chain's head (`head`, the locked head row
/// when the group's last pipeline took it, else locked here), then sends the records' insert,
/// the head's update and `COMMIT` together: their answers in that order, and the group's first
/// record (for the lookup of an unknown outcome).
async fn append_and_commit(
    client: &deadpool_postgres::Object,
    head_lock: &tokio_postgres::Statement,
    head: Option<Row>,
    events: Vec<AuditEvent>,
) -> std::result::Result<
    (
        Vec<std::result::Result<(), tokio_postgres::Error>>,
        Option<(i64, Vec<u8>)>,
    ),
    GroupFailure,
> {
    let broken = |e: tokio_postgres::Error| GroupFailure::NotCommitted(pg_err(e));
    let head = match head {
        Some(row) => row,
        None => client.query_one(head_lock, &[]).await.map_err(broken)?,
    };
    let mut next: i64 = get(&head, 0).map_err(GroupFailure::NotCommitted)?;
    let prev: Vec<u8> = get(&head, 1).map_err(GroupFailure::NotCommitted)?;
    let mut prev: [u8; 32] = prev.try_into().map_err(|_| {
        GroupFailure::NotCommitted(Error::Ledger(
            "the audit head's hash is not 32 bytes".into(),
        ))
    })?;
    let time = crate::asn1::now();
    let mut seqs = Vec::with_capacity(events.len());
    let mut blobs = Vec::with_capacity(events.len());
    for event in events {
        let bytes = AuditRecord {
            seq: next as u64,
            time,
            event,
            prev: crate::asn1::hex(&prev),
        }
        .encode();
        prev = audit::hash(&bytes);
        seqs.push(next);
        blobs.push(bytes);
        next += 1;
    }
    let first_audit = Some((seqs[0], blobs[0].clone()));
    let insert = client
        .prepare_cached(
            "INSERT INTO audit (seq, bytes) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        )
        .await
        .map_err(broken)?;
    let update = client
        .prepare_cached("UPDATE audit_head SET next = $1, prev = $2 WHERE id = 1")
        .await
        .map_err(broken)?;
    let prev = prev.as_slice();
    let insert_args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&seqs, &blobs];
    let update_args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&next, &prev];
    // biased: first polled, so sent, in this order.
    let (inserted, updated, committed) = tokio::join!(
        biased;
        client.execute(&insert, &insert_args),
        client.execute(&update, &update_args),
        client.batch_execute("COMMIT"),
    );
    Ok((
        vec![inserted.map(drop), updated.map(drop), committed],
        first_audit,
    ))
}

/// The arguments of one `matter_est_commit_dacs` call: a column per parameter, an element per
/// issuance of the run (the call borrows them).
struct CommitColumns<'a> {
    serial: Vec<&'a [u8]>,
    label: Vec<&'a str>,
    issuer_key: Vec<&'a [u8]>,
    subject: Vec<&'a str>,
    subject_der: Vec<&'a [u8]>,
    vid: Vec<i32>,
    pid: Vec<i32>,
    requester: Vec<&'a str>,
    issued_at: Vec<i64>,
    der: Vec<&'a [u8]>,
    revoked_at: Vec<Option<i64>>,
    revoked_reason: Vec<Option<String>>,
    revoked_code: Vec<Option<i16>>,
    renews: Vec<Option<&'a [u8]>>,
    server_keygen: Vec<bool>,
    quota: Vec<Option<i64>>,
    uncounted: Vec<bool>,
    token: Vec<Option<&'a str>>,
    /// The labels of every issuance of the group (the first run locks them all).
    group_labels: &'a [&'a str],
}

impl<'a> CommitColumns<'a> {
    fn new(run: &[(&'a DacRecord, &'a Admission)], group_labels: &'a [&'a str]) -> Self {
        let mut c = Self {
            serial: Vec::with_capacity(run.len()),
            label: Vec::with_capacity(run.len()),
            issuer_key: Vec::with_capacity(run.len()),
            subject: Vec::with_capacity(run.len()),
            subject_der: Vec::with_capacity(run.len()),
            vid: Vec::with_capacity(run.len()),
            pid: Vec::with_capacity(run.len()),
            requester: Vec::with_capacity(run.len()),
            issued_at: Vec::with_capacity(run.len()),
            der: Vec::with_capacity(run.len()),
            revoked_at: Vec::with_capacity(run.len()),
            revoked_reason: Vec::with_capacity(run.len()),
            revoked_code: Vec::with_capacity(run.len()),
            renews: Vec::with_capacity(run.len()),
            server_keygen: Vec::with_capacity(run.len()),
            quota: Vec::with_capacity(run.len()),
            uncounted: Vec::with_capacity(run.len()),
            token: Vec::with_capacity(run.len()),
            group_labels,
        };
        for (r, admission) in run {
            let (revoked_at, revoked_reason, revoked_code) = revoked_columns(&r.status);
            c.serial.push(&r.serial);
            c.label.push(&r.label);
            c.issuer_key.push(&r.issuer_key);
            c.subject.push(&r.subject);
            c.subject_der.push(&r.subject_der);
            c.vid.push(i32::from(r.vid));
            c.pid.push(i32::from(r.pid));
            c.requester.push(&r.requester);
            c.issued_at.push(r.issued_at);
            c.der.push(&r.der);
            c.revoked_at.push(revoked_at);
            c.revoked_reason.push(revoked_reason);
            c.revoked_code.push(revoked_code);
            c.renews.push(r.renews.as_deref());
            c.server_keygen.push(r.server_keygen);
            c.quota.push(admission.quota.map(|q| q as i64));
            c.uncounted.push(admission.uncounted);
            c.token.push(admission.token.as_deref());
        }
        c
    }

    /// In the function's parameter order.
    fn refs(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 19] {
        [
            &self.serial,
            &self.label,
            &self.issuer_key,
            &self.subject,
            &self.subject_der,
            &self.vid,
            &self.pid,
            &self.requester,
            &self.issued_at,
            &self.der,
            &self.revoked_at,
            &self.revoked_reason,
            &self.revoked_code,
            &self.renews,
            &self.server_keygen,
            &self.quota,
            &self.uncounted,
            &self.token,
            &self.group_labels,
        ]
    }
}

/// Runs `sql` (prepared once per connection) with `params`.
async fn exec(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
    client.execute(&stmt, params).await.map_err(pg_err)
}

async fn query_opt(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Row>> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
    client.query_opt(&stmt, params).await.map_err(pg_err)
}

/// One job inside its savepoint: its outcome, whether its writes are kept (a repeat answered
/// with the DAC on record writes nothing), and its audit events in `events`.
async fn apply_job(
    client: &deadpool_postgres::Object,
    op: &Op,
    events: &mut Vec<AuditEvent>,
) -> Result<(Outcome, bool)> {
    match op {
        // Issuances are runs, each one call of matter_est_commit_dacs (group_transaction).
        Op::Commit(..) => Err(Error::Internal(
            "an issuance outside the writer's pipelined calls".into(),
        )),
        Op::Revoke {
            serial,
            reason,
            at,
            by,
        } => {
            let hex = crate::asn1::hex(serial);
            let row = query_opt(
                client,
                concat!(
                    "UPDATE dacs d SET revoked_at = $2, revoked_reason = $3, revoked_code = $4 \
                     WHERE d.serial = $1 AND d.revoked_at IS NULL RETURNING ",
                    dac_cols!()
                ),
                &[serial, at, &reason.name(), &i16::from(reason.code())],
            )
            .await?;
            let Some(row) = row else {
                let held = query_opt(
                    client,
                    "SELECT revoked_at, revoked_reason FROM dacs WHERE serial = $1",
                    &[serial],
                )
                .await?;
                return Err(match held {
                    None => Error::NotFound(format!("no DAC with serial {hex} is on record")),
                    Some(row) => Error::AlreadyRevoked {
                        serial: hex,
                        reason: get::<Option<String>>(&row, 1)?.unwrap_or_default(),
                        at: crate::asn1::format_time(get::<Option<i64>>(&row, 0)?.unwrap_or(0)),
                    },
                });
            };
            let (_, record) = dac_from_row(&row)?;
            events.push(AuditEvent::Revocation {
                label: record.label.clone(),
                serial: hex,
                reason: reason.name().into(),
                identity: by.clone(),
            });
            Ok((Outcome::Record(Box::new(record)), true))
        }
        Op::MarkRekey { serial, at, by } => {
            let hex = crate::asn1::hex(serial).to_uppercase();
            // FOR SHARE: a revocation of this DAC waits for this transaction.
            let row = query_opt(
                client,
                concat!(
                    "SELECT ",
                    dac_cols!(),
                    " FROM dacs d WHERE d.serial = $1 FOR SHARE"
                ),
                &[serial],
            )
            .await?
            .ok_or_else(|| Error::NotFound(format!("no DAC with serial {hex} is on record")))?;
            let (_, record) = dac_from_row(&row)?;
            if let Status::Revoked { .. } = record.status {
                return Err(Error::BadRequest(format!(
                    "DAC serial {hex} is revoked: it will not renew at all"
                )));
            }
            let marked = exec(
                client,
                "INSERT INTO rekey (serial, marked_at, marked_by) VALUES ($1, $2, $3) \
                 ON CONFLICT (serial) DO NOTHING",
                &[serial, at, by],
            )
            .await?;
            if marked == 0 {
                return Err(Error::BadRequest(format!(
                    "DAC serial {hex} is already marked for re-key"
                )));
            }
            events.push(AuditEvent::RekeyMarked {
                label: record.label.clone(),
                serial: crate::asn1::hex(serial),
                identity: by.clone(),
            });
            Ok((Outcome::Record(Box::new(record)), true))
        }
        Op::Audit(event) => {
            events.push((**event).clone());
            Ok((Outcome::Flag(true), true))
        }
        Op::PutToken(hash, token) => {
            let stored = exec(
                client,
                "INSERT INTO tokens (secret_hash, id, label, pid, created_at, spent_by, \
                 expires_at, cn, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT DO NOTHING",
                &[
                    &hash.as_slice(),
                    &token.id,
                    &token.label,
                    &token.pid.map(i32::from),
                    &token.created_at,
                    &token.spent_by,
                    &token.expires_at,
                    &token.cn,
                    &token.revoked_at,
                ],
            )
            .await?;
            if stored == 0 {
                return Err(Error::Ledger(format!("token id {} exists", token.id)));
            }
            events.push(AuditEvent::TokenCreated {
                label: token.label.clone(),
                token: token.id.clone(),
                pid: token.pid.map(|p| format!("{p:04X}")),
            });
            Ok((Outcome::Flag(true), true))
        }
        Op::RevokeToken { id, at, by } => {
            let row = query_opt(
                client,
                concat!(
                    "UPDATE tokens SET revoked_at = $2 \
                     WHERE id = $1 AND spent_by IS NULL AND revoked_at IS NULL RETURNING ",
                    token_cols!()
                ),
                &[id, at],
            )
            .await?;
            let Some(row) = row else {
                let held = query_opt(
                    client,
                    concat!("SELECT ", token_cols!(), " FROM tokens WHERE id = $1"),
                    &[id],
                )
                .await?;
                return Err(match held.as_ref().map(token_from_row).transpose()? {
                    None => Error::NotFound(format!("no token {id}")),
                    Some(TokenRecord {
                        spent_by: Some(serial),
                        ..
                    }) => Error::BadRequest(format!(
                        "token {id} was spent by DAC serial {}; revoke that DAC instead",
                        crate::asn1::hex(&serial).to_uppercase()
                    )),
                    Some(_) => Error::BadRequest(format!("token {id} is already revoked")),
                });
            };
            let token = token_from_row(&row)?;
            events.push(AuditEvent::TokenRevoked {
                label: token.label.clone(),
                token: id.clone(),
                identity: by.clone(),
            });
            Ok((Outcome::Token(Box::new(token)), true))
        }
        Op::NextCrlNumber(label) => {
            let row = query_opt(
                client,
                "INSERT INTO crl_numbers (label, last) VALUES ($1, 1) \
                 ON CONFLICT (label) DO UPDATE SET last = crl_numbers.last + 1 RETURNING last",
                &[label],
            )
            .await?
            .ok_or_else(|| Error::Ledger("no cRLNumber returned".into()))?;
            Ok((Outcome::Number(get::<i64>(&row, 0)? as u64), true))
        }
        Op::PutCrl(label, crl) => {
            let stored = exec(
                client,
                "INSERT INTO crls (label, number, this_update, next_update, entries, der) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (label) DO UPDATE SET number = EXCLUDED.number, \
                 this_update = EXCLUDED.this_update, next_update = EXCLUDED.next_update, \
                 entries = EXCLUDED.entries, der = EXCLUDED.der \
                 WHERE crls.number < EXCLUDED.number",
                &[
                    label,
                    &(crl.number as i64),
                    &crl.this_update,
                    &crl.next_update,
                    &(crl.entries as i64),
                    &crl.der,
                ],
            )
            .await?;
            if stored == 0 {
                let kept = query_opt(client, "SELECT number FROM crls WHERE label = $1", &[label])
                    .await?
                    .map(|r| get::<i64>(&r, 0))
                    .transpose()?
                    .unwrap_or_default();
                return Err(Error::Ledger(format!(
                    "CRL number {} of label {label:?} is not newer than the kept {kept}",
                    crl.number
                )));
            }
            events.push(AuditEvent::CrlIssued {
                label: label.clone(),
                number: crl.number,
                entries: crl.entries,
            });
            Ok((Outcome::Flag(true), true))
        }
        Op::Hold(request) => {
            // The first request under an id stays (a retry of the same CSR finds it).
            let stored = exec(
                client,
                "INSERT INTO held (id, label, requested_at, expires_at, approved, body) \
                 VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (id) DO NOTHING",
                &[
                    &request.id,
                    &request.label,
                    &request.requested_at,
                    &request.expires_at,
                    &held_body(request)?,
                ],
            )
            .await?;
            if stored == 0 {
                let kept = held_row(client, &request.id, false).await?.ok_or_else(|| {
                    Error::Ledger(format!("held request {} vanished", request.id))
                })?;
                return Ok((Outcome::Held(Box::new(kept)), false));
            }
            events.push(AuditEvent::EnrollmentHeld {
                label: request.label.clone(),
                identity: request.requester.clone(),
                id: request.id.clone(),
                subject: request.subject.clone(),
            });
            Ok((Outcome::Held(request.clone()), true))
        }
        Op::PruneHeld(before) => {
            // Settled as `HeldRequest::settled_at` says: the decision's time is in the body
            // only (`approved` says whether there is one).
            let gone = exec(
                client,
                "DELETE FROM held WHERE CASE WHEN approved IS NULL THEN expires_at \
                 ELSE ((body::jsonb) #>> '{decision,at}')::bigint END < $1",
                &[before],
            )
            .await?;
            Ok((Outcome::Number(gone), gone > 0))
        }
        Op::Decide(id, decision) => {
            // FOR UPDATE: two operators deciding at once on two nodes are serialised here.
            let mut request = held_row(client, id, true)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no held request {id}")))?;
            request.decide(decision)?;
            let decided = exec(
                client,
                "UPDATE held SET approved = $2, body = $3 WHERE id = $1 AND approved IS NULL",
                &[id, &decision.approved, &held_body(&request)?],
            )
            .await?;
            if decided == 0 {
                return Err(Error::BadRequest(format!(
                    "held request {id} is already decided"
                )));
            }
            events.push(if decision.approved {
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
            });
            Ok((Outcome::Held(Box::new(request)), true))
        }
    }
}

/// A held request as stored: the store's own JSON.
fn held_body(request: &HeldRequest) -> Result<String> {
    serde_json::to_string(request).map_err(|e| Error::Internal(format!("held request: {e}")))
}

fn held_from_body(body: &str) -> Result<HeldRequest> {
    serde_json::from_str(body)
        .map_err(|e| Error::Ledger(format!("a held request is unreadable: {e}")))
}

/// The held request `id`, locked for this transaction when `lock`.
async fn held_row(
    client: &deadpool_postgres::Object,
    id: &str,
    lock: bool,
) -> Result<Option<HeldRequest>> {
    let sql = if lock {
        "SELECT body FROM held WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT body FROM held WHERE id = $1"
    };
    query_opt(client, sql, &[&id])
        .await?
        .map(|row| held_from_body(&get::<String>(&row, 0)?))
        .transpose()
}

/// An issuance's answer from `matter_est_commit_dacs` (a [`COMMIT_DACS`] row), mapped to the
/// same outcomes and errors as the redb ledger's, with its audit events in `events`. The
/// function checks the serial's unique key, the subject's row (taken, or taken over by a
/// renewal), the quota's conditional update and the token's, in that order (as the redb ledger
/// checks them); a subject held by another DAC comes back here for the repeat rule.
fn commit_outcome(
    record: &DacRecord,
    admission: &Admission,
    row: &Row,
    events: &mut Vec<AuditEvent>,
) -> Result<(Outcome, bool)> {
    let serial_hex = crate::asn1::hex(&record.serial);
    let outcome: String = get(row, 15)?;
    match outcome.as_str() {
        "recorded" => {}
        // Unique serial: on record, or recorded earlier in the run.
        "serial" => {
            return Err(Error::Ledger(format!(
                "serial {serial_hex} is already on record"
            )));
        }
        "held" => {
            let (_, holder) = dac_from_row(row)?;
            // A repeat: the same key asking again for the same subject, or, for a renewal,
            // the same renewal retried while the first was committing (possibly on another
            // node). Nothing was written.
            if same_request(&holder, record)
                && (record.renews.is_none() || holder.renews == record.renews)
            {
                return Ok((
                    Outcome::Commit(Committed::AlreadyOnRecord(Box::new(holder))),
                    false,
                ));
            }
            // One holder per subject and issuer; a renewal of the holder took it over in the
            // function instead.
            return Err(Error::SubjectTaken {
                subject: record.subject.clone(),
                label: record.label.clone(),
            });
        }
        "quota" => {
            return Err(Error::QuotaExhausted {
                label: record.label.clone(),
                quota: admission.quota.unwrap_or_default(),
            });
        }
        "token unknown" => return Err(Error::Unauthenticated("unknown token".into())),
        "token spent" => {
            return Err(Error::Unauthenticated(
                "this enrollment token was already used".into(),
            ));
        }
        "token revoked" => {
            return Err(Error::Unauthenticated(
                "this enrollment token was revoked".into(),
            ));
        }
        "token expired" => {
            return Err(Error::Unauthenticated(
                "this enrollment token has expired".into(),
            ));
        }
        "failed" => {
            let state: Option<String> = get(row, 16)?;
            let message: Option<String> = get(row, 17)?;
            let state = state.unwrap_or_default();
            let text = format!("{} ({state})", message.unwrap_or_default());
            return Err(if transient(&SqlState::from_code(&state)) {
                unavailable(text)
            } else {
                Error::Ledger(format!("PostgreSQL: {text}"))
            });
        }
        other => {
            return Err(Error::Ledger(format!(
                "matter_est_commit_dacs answered {other:?}"
            )));
        }
    }
    events.extend(AuditEvent::issued(record, admission.token.as_deref()));
    Ok((Outcome::Commit(Committed::Recorded), true))
}

/// A read-only transaction that sees one snapshot of every table.
async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)
}

/// A DAC's status as its `revoked_at`, `revoked_reason` and `revoked_code` columns.
fn revoked_columns(status: &Status) -> (Option<i64>, Option<String>, Option<i16>) {
    match status {
        Status::Issued => (None, None, None),
        Status::Revoked { at, reason } => (
            Some(*at),
            Some(reason.clone()),
            RevocationReason::parse(reason)
                .ok()
                .map(|r| i16::from(r.code())),
        ),
    }
}

/// Inserts a DAC row, returning its sequence number; the `dacs.serial` unique key refuses a
/// serial already on record.
async fn insert_dac(
    client: &impl deadpool_postgres::GenericClient,
    record: &DacRecord,
) -> std::result::Result<i64, tokio_postgres::Error> {
    let (revoked_at, revoked_reason, revoked_code) = revoked_columns(&record.status);
    let stmt = client
        .prepare_cached(
            "INSERT INTO dacs (serial, label, issuer_key, subject, subject_der, vid, pid, \
             requester, issued_at, der, revoked_at, revoked_reason, revoked_code, renews, \
             server_keygen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15) RETURNING seq",
        )
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &record.serial,
                &record.label,
                &record.issuer_key,
                &record.subject,
                &record.subject_der,
                &i32::from(record.vid),
                &i32::from(record.pid),
                &record.requester,
                &record.issued_at,
                &record.der,
                &revoked_at,
                &revoked_reason,
                &revoked_code,
                &record.renews,
                &record.server_keygen,
            ],
        )
        .await?;
    row.try_get(0)
}

/// `list_page`'s index range: from the later of the cursor and `since`.
fn page_start(q: &CertQuery) -> (i64, i64) {
    let mut from = (q.since.unwrap_or(i64::MIN), i64::MIN);
    if let Some(after) = q.after {
        let next = match (after.seq as i64).checked_add(1) {
            Some(seq) => (after.time, seq),
            None => (after.time.saturating_add(1), i64::MIN),
        };
        from = from.max(next);
    }
    from
}

impl Ledger for PgLedger {
    fn submit_then(&self, record: DacRecord, admission: Admission, done: Completer<Committed>) {
        self.submit_op(Op::Commit(Box::new(record), admission), Reply::Commit(done));
    }

    fn by_serial(&self, serial: &[u8]) -> Result<Option<DacRecord>> {
        let serial = serial.to_vec();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = query_opt(
                &client,
                concat!("SELECT ", dac_cols!(), " FROM dacs d WHERE d.serial = $1"),
                &[&serial],
            )
            .await?;
            row.map(|r| dac_from_row(&r).map(|(_, d)| d)).transpose()
        })
    }

    fn by_subject(&self, issuer_key: &[u8], subject_der: &[u8]) -> Result<Option<DacRecord>> {
        let (issuer_key, subject_der) = (issuer_key.to_vec(), subject_der.to_vec());
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = query_opt(
                &client,
                concat!(
                    "SELECT ",
                    dac_cols!(),
                    " FROM subjects s JOIN dacs d ON d.seq = s.holder \
                     WHERE s.issuer_key = $1 AND s.subject_der = $2"
                ),
                &[&issuer_key, &subject_der],
            )
            .await?;
            row.map(|r| dac_from_row(&r).map(|(_, d)| d)).transpose()
        })
    }

    fn list(&self, skip: usize, limit: usize) -> Result<Vec<DacRecord>> {
        let (skip, limit) = (skip as i64, limit.min(i64::MAX as usize) as i64);
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(concat!(
                    "SELECT ",
                    dac_cols!(),
                    " FROM dacs d ORDER BY d.seq OFFSET $1 LIMIT $2"
                ))
                .await
                .map_err(pg_err)?;
            let rows = client
                .query(&stmt, &[&skip, &limit])
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| dac_from_row(r).map(|(_, d)| d))
                .collect()
        })
    }

    fn list_page(&self, q: &CertQuery) -> Result<CertPage> {
        let q = q.clone();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            // The label and the time range in SQL (indexes dacs_by_label_time, dacs_by_time);
            // the other filters on the rows visited, as the redb ledger.
            let sql = match q.label {
                Some(_) => concat!(
                    "SELECT ",
                    dac_cols!(),
                    " FROM dacs d WHERE d.label = $1 AND (d.issued_at, d.seq) >= ($2, $3) \
                     AND d.issued_at < $4 ORDER BY d.label, d.issued_at, d.seq LIMIT $5"
                ),
                None => concat!(
                    "SELECT ",
                    dac_cols!(),
                    " FROM dacs d WHERE $1::text IS NULL AND (d.issued_at, d.seq) >= ($2, $3) \
                     AND d.issued_at < $4 ORDER BY d.issued_at, d.seq LIMIT $5"
                ),
            };
            let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
            let limit = q.limit.max(1);
            let until = q.until.unwrap_or(i64::MAX);
            let (mut time, mut seq) = page_start(&q);
            let mut out = Vec::new();
            let mut next = None;
            'pages: loop {
                let rows = client
                    .query(&stmt, &[&q.label, &time, &seq, &until, &CHUNK])
                    .await
                    .map_err(pg_err)?;
                let full = rows.len() as i64 == CHUNK;
                for row in &rows {
                    let (s, r) = dac_from_row(row)?;
                    (time, seq) = (r.issued_at, s as i64);
                    if q.matches(&r) {
                        let pos = Position {
                            time: r.issued_at,
                            seq: s,
                        };
                        out.push((s, r));
                        if out.len() == limit {
                            next = Some(pos);
                            break 'pages;
                        }
                    }
                }
                if !full {
                    break;
                }
                match seq.checked_add(1) {
                    Some(s) => seq = s,
                    None => (time, seq) = (time.saturating_add(1), i64::MIN),
                }
            }
            Ok(CertPage { records: out, next })
        })
    }

    fn count(&self, label: &str) -> Result<u64> {
        let label = label.to_string();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = query_opt(
                &client,
                "SELECT used FROM labels WHERE label = $1",
                &[&label],
            )
            .await?;
            Ok(row.map(|r| get::<i64>(&r, 0)).transpose()?.unwrap_or(0) as u64)
        })
    }

    fn revoke(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        at: i64,
        by: &str,
    ) -> Result<DacRecord> {
        self.op(
            Op::Revoke {
                serial: serial.to_vec(),
                reason,
                at,
                by: by.to_string(),
            },
            Reply::Record,
        )
    }

    fn mark_rekey(&self, serial: &[u8], at: i64, by: &str) -> Result<DacRecord> {
        self.op(
            Op::MarkRekey {
                serial: serial.to_vec(),
                at,
                by: by.to_string(),
            },
            Reply::Record,
        )
    }

    fn rekey_mark(&self, serial: &[u8]) -> Result<Option<(i64, String)>> {
        let serial = serial.to_vec();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = query_opt(
                &client,
                "SELECT marked_at, marked_by FROM rekey WHERE serial = $1",
                &[&serial],
            )
            .await?;
            row.map(|r| Ok((get(&r, 0)?, get(&r, 1)?))).transpose()
        })
    }

    fn revoked(&self, label: &str) -> Result<Vec<RevokedEntry>> {
        let label = label.to_string();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(
                    "SELECT serial, revoked_at, revoked_code FROM dacs \
                     WHERE label = $1 AND revoked_at IS NOT NULL ORDER BY serial",
                )
                .await
                .map_err(pg_err)?;
            let rows = client.query(&stmt, &[&label]).await.map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    let code: i16 = get(r, 2)?;
                    Ok(RevokedEntry {
                        serial: get(r, 0)?,
                        at: get(r, 1)?,
                        reason: u8::try_from(code)
                            .ok()
                            .and_then(RevocationReason::from_code)
                            .ok_or_else(|| {
                                Error::Ledger(format!("unknown revocation reason code {code}"))
                            })?,
                    })
                })
                .collect()
        })
    }

    fn next_crl_number(&self, label: &str) -> Result<u64> {
        self.op(Op::NextCrlNumber(label.to_string()), Reply::Number)
    }

    fn put_crl(&self, label: &str, crl: &CrlRecord) -> Result<()> {
        self.op(
            Op::PutCrl(label.to_string(), Box::new(crl.clone())),
            Reply::Flag,
        )
        .map(|_| ())
    }

    fn crl(&self, label: &str) -> Result<Option<CrlRecord>> {
        let label = label.to_string();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = query_opt(
                &client,
                "SELECT number, this_update, next_update, entries, der FROM crls \
                 WHERE label = $1",
                &[&label],
            )
            .await?;
            row.map(|r| crl_from_row(&r)).transpose()
        })
    }

    fn audit(&self, event: AuditEvent) {
        let name = event.name();
        self.submit_op(Op::Audit(Box::new(event)), Reply::logged(name));
    }

    fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let (from, limit) = (from as i64, limit.min(i64::MAX as usize) as i64);
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(
                    "SELECT seq, bytes FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                )
                .await
                .map_err(pg_err)?;
            let rows = client
                .query(&stmt, &[&from, &limit])
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    let seq: i64 = get(r, 0)?;
                    AuditRecord::decode(&get::<Vec<u8>>(r, 1)?)
                        .ok_or_else(|| Error::Ledger(format!("audit record {seq} is unreadable")))
                })
                .collect()
        })
    }

    fn audit_head(&self) -> Result<Option<Head>> {
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            read_head(&client).await
        })
    }

    fn audit_verify(
        &self,
        head: Option<Head>,
    ) -> Result<std::result::Result<(u64, Option<Head>), audit::Broken>> {
        self.read(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            // One snapshot: the kept head and the records it names.
            let txn = snapshot(&mut client).await?;
            let mut heads = Vec::new();
            let row = txn
                .query_one("SELECT next, prev FROM audit_head WHERE id = 1", &[])
                .await
                .map_err(pg_err)?;
            if let Some(kept) = head_from_row(&row)? {
                heads.push(("head kept in the ledger".to_string(), kept));
            }
            if let Some(given) = head {
                heads.push(("head given with --head".to_string(), given));
            }
            let mut v = audit::Verifier::new(heads);
            let mut from = 0i64;
            loop {
                let rows = txn
                    .query(
                        "SELECT seq, bytes FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                        &[&from, &CHUNK],
                    )
                    .await
                    .map_err(pg_err)?;
                for r in &rows {
                    let seq: i64 = get(r, 0)?;
                    let bytes: Vec<u8> = get(r, 1)?;
                    if let Err(broken) = v.feed(seq as u64, &bytes) {
                        return Ok(Err(broken));
                    }
                    from = seq + 1;
                }
                if (rows.len() as i64) < CHUNK {
                    break;
                }
            }
            txn.commit().await.map_err(pg_err)?;
            Ok(v.finish().map(|end| (v.count(), end)))
        })
    }

    fn put_token(&self, secret_hash: &[u8; 32], token: &TokenRecord) -> Result<()> {
        self.op(Op::PutToken(*secret_hash, token.clone()), Reply::Flag)
            .map(|_| ())
    }

    fn token(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        let hash = secret_hash.to_vec();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = query_opt(
                &client,
                concat!(
                    "SELECT ",
                    token_cols!(),
                    " FROM tokens WHERE secret_hash = $1"
                ),
                &[&hash],
            )
            .await?;
            row.map(|r| token_from_row(&r)).transpose()
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(concat!(
                    "SELECT ",
                    token_cols!(),
                    " FROM tokens ORDER BY id"
                ))
                .await
                .map_err(pg_err)?;
            let rows = client.query(&stmt, &[]).await.map_err(pg_err)?;
            rows.iter().map(token_from_row).collect()
        })
    }

    fn revoke_token(&self, id: &str, at: i64, by: &str) -> Result<TokenRecord> {
        self.op(
            Op::RevokeToken {
                id: id.to_string(),
                at,
                by: by.to_string(),
            },
            Reply::Token,
        )
    }

    fn recent(&self, label: Option<&str>, limit: usize) -> Result<Vec<DacRecord>> {
        let label = label.map(str::to_string);
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            // Backwards along dacs_by_label_time / dacs_by_time: a bounded window.
            let rows = match &label {
                Some(label) => {
                    let stmt = client
                        .prepare_cached(concat!(
                            "SELECT ",
                            dac_cols!(),
                            " FROM dacs d WHERE d.label = $1 \
                             ORDER BY d.issued_at DESC, d.seq DESC LIMIT $2"
                        ))
                        .await
                        .map_err(pg_err)?;
                    client.query(&stmt, &[label, &limit]).await
                }
                None => {
                    let stmt = client
                        .prepare_cached(concat!(
                            "SELECT ",
                            dac_cols!(),
                            " FROM dacs d ORDER BY d.issued_at DESC, d.seq DESC LIMIT $1"
                        ))
                        .await
                        .map_err(pg_err)?;
                    client.query(&stmt, &[&limit]).await
                }
            }
            .map_err(pg_err)?;
            rows.iter()
                .map(|r| dac_from_row(r).map(|(_, d)| d))
                .collect()
        })
    }

    fn hold(&self, request: &HeldRequest) -> Result<HeldRequest> {
        self.op(Op::Hold(Box::new(request.clone())), Reply::Held)
    }

    fn held(&self, id: &str) -> Result<Option<HeldRequest>> {
        let id = id.to_string();
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            held_row(&client, &id, false).await
        })
    }

    fn held_list(&self) -> Result<Vec<HeldRequest>> {
        self.read(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query("SELECT body FROM held ORDER BY requested_at, id", &[])
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|row| held_from_body(&get::<String>(row, 0)?))
                .collect()
        })
    }

    fn decide(&self, id: &str, decision: &Decision) -> Result<HeldRequest> {
        self.op(
            Op::Decide(id.to_string(), Box::new(decision.clone())),
            Reply::Held,
        )
    }

    fn prune_held(&self, before: i64) -> Result<u64> {
        self.op(Op::PruneHeld(before), Reply::Number)
    }

    fn close(&self) {
        PgLedger::close(self);
    }

    fn export(&self) -> Result<Vec<Item>> {
        self.read(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            // One snapshot of every table.
            let txn = snapshot(&mut client).await?;
            let q = |sql: &'static str| {
                let txn = &txn;
                async move { txn.query(sql, &[]).await.map_err(pg_err) }
            };
            let mut out = Vec::new();
            for r in q(concat!(
                "SELECT ",
                dac_cols!(),
                " FROM dacs d ORDER BY d.seq"
            ))
            .await?
            {
                out.push(Item::Dac(Box::new(dac_from_row(&r)?.1)));
            }
            for r in q(
                "SELECT s.issuer_key, s.subject_der, d.serial FROM subjects s \
                        JOIN dacs d ON d.seq = s.holder",
            )
            .await?
            {
                out.push(Item::Holder {
                    issuer_key: get(&r, 0)?,
                    subject_der: get(&r, 1)?,
                    serial: get(&r, 2)?,
                });
            }
            for r in q("SELECT label, used FROM labels").await? {
                out.push(Item::Count {
                    label: get(&r, 0)?,
                    used: get::<i64>(&r, 1)? as u64,
                });
            }
            for r in q(concat!(
                "SELECT ",
                token_cols!(),
                ", secret_hash FROM tokens"
            ))
            .await?
            {
                out.push(Item::Token {
                    secret_hash: get::<Vec<u8>>(&r, 8)?
                        .try_into()
                        .map_err(|_| Error::Ledger("a token hash is not 32 bytes".into()))?,
                    record: token_from_row(&r)?,
                });
            }
            for r in q("SELECT serial, marked_at, marked_by FROM rekey").await? {
                out.push(Item::Rekey {
                    serial: get(&r, 0)?,
                    at: get(&r, 1)?,
                    by: get(&r, 2)?,
                });
            }
            for r in q("SELECT label, last FROM crl_numbers").await? {
                out.push(Item::CrlNumber {
                    label: get(&r, 0)?,
                    last: get::<i64>(&r, 1)? as u64,
                });
            }
            for r in
                q("SELECT number, this_update, next_update, entries, der, label FROM crls").await?
            {
                out.push(Item::Crl {
                    label: get(&r, 5)?,
                    record: crl_from_row(&r)?,
                });
            }
            for r in q("SELECT seq, bytes FROM audit ORDER BY seq").await? {
                out.push(Item::Audit {
                    seq: get::<i64>(&r, 0)? as u64,
                    bytes: get(&r, 1)?,
                });
            }
            let head = q("SELECT next, prev FROM audit_head WHERE id = 1").await?;
            if let Some(h) = head.first().map(head_from_row).transpose()?.flatten() {
                out.push(Item::AuditHead(h));
            }
            for r in q("SELECT body FROM held ORDER BY requested_at, id").await? {
                out.push(Item::Held(Box::new(held_from_body(&get::<String>(
                    &r, 0,
                )?)?)));
            }
            txn.commit().await.map_err(pg_err)?;
            Ok(out)
        })
    }

    fn import(&self, items: &[Item]) -> Result<()> {
        let items = items.to_vec();
        self.read(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await.map_err(pg_err)?;
            // The chain head first: every writer of any node waits for this import.
            let head = txn
                .query_one("SELECT next FROM audit_head WHERE id = 1 FOR UPDATE", &[])
                .await
                .map_err(pg_err)?;
            let used = txn
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM dacs) OR EXISTS (SELECT 1 FROM tokens)",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            if get::<i64>(&head, 0)? != 0 || get::<bool>(&used, 0)? {
                return Err(Error::BadRequest(
                    "the target ledger is not empty: a migration copies into an empty one".into(),
                ));
            }
let mut audit_seqs: Vec<i64> = Vec::new();
            let mut audit_bytes: Vec<Vec<u8>> = Vec::new();
            for item in &items {
                match item {
                    Item::Dac(r) => {
                        insert_dac(&txn, r).await.map_err(pg_err)?;
                    }
                    Item::Holder {
                        issuer_key,
                        subject_der,
                        serial,
                    } => {
                        let n = txn
                            .execute(
                                "INSERT INTO subjects (issuer_key, subject_der, holder) \
                                 SELECT $1, $2, seq FROM dacs WHERE serial = $3",
                                &[issuer_key, subject_der, serial],
                            )
                            .await
                            .map_err(pg_err)?;
                        if n != 1 {
                            return Err(Error::Ledger(format!(
                                "subject holder {} is not among the DACs",
                                crate::asn1::hex(serial)
                            )));
                        }
                    }
                    Item::Count { label, used } => {
                        txn.execute(
                            "INSERT INTO labels (label, used) VALUES ($1, $2)",
                            &[label, &(*used as i64)],
                        )
                        .await
                        .map_err(pg_err)?;
                    }
                    Item::Token {
                        secret_hash,
                        record,
                    } => {
                        txn.execute(
                            "INSERT INTO tokens (secret_hash, id, label, pid, created_at, \
                             spent_by, expires_at, cn, revoked_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                            &[
                                &secret_hash.as_slice(),
                                &record.id,
                                &record.label,
                                &record.pid.map(i32::from),
                                &record.created_at,
                                &record.spent_by,
                                &record.expires_at,
                                &record.cn,
                                &record.revoked_at,
                            ],
                        )
                        .await
                        .map_err(pg_err)?;
                    }
                    Item::Rekey { serial, at, by } => {
                        txn.execute(
                            "INSERT INTO rekey (serial, marked_at, marked_by) VALUES ($1, $2, $3)",
                            &[serial, at, by],
                        )
                        .await
                        .map_err(pg_err)?;
                    }
                    Item::CrlNumber { label, last } => {
                        txn.execute(
                            "INSERT INTO crl_numbers (label, last) VALUES ($1, $2)",
                            &[label, &(*last as i64)],
                        )
                        .await
                        .map_err(pg_err)?;
                    }
                    Item::Crl { label, record } => {
                        txn.execute(
                            "INSERT INTO crls (label, number, this_update, next_update, \
                             entries, der) VALUES ($1, $2, $3, $4, $5, $6)",
                            &[
                                label,
                                &(record.number as i64),
                                &record.this_update,
                                &record.next_update,
                                &(record.entries as i64),
                                &record.der,
                            ],
                        )
                        .await
                        .map_err(pg_err)?;
                    }
                    Item::Audit { seq, bytes } => {
                        audit_seqs.push(*seq as i64);
                        audit_bytes.push(bytes.clone());
                    }
                    Item::AuditHead(head) => {
                        txn.execute(
                            "UPDATE audit_head SET next = $1, prev = $2 WHERE id = 1",
                            &[&(head.seq as i64 + 1), &head.hash.as_slice()],
                        )
                        .await
                        .map_err(pg_err)?;
                    }
                    Item::Held(request) => {
                        txn.execute(
                            "INSERT INTO held (id, label, requested_at, expires_at, approved, \
                             body) VALUES ($1, $2, $3, $4, $5, $6)",
                            &[
                                &request.id,
                                &request.label,
                                &request.requested_at,
                                &request.expires_at,
                                &request.decision.as_ref().map(|d| d.approved),
                                &held_body(request)?,
                            ],
                        )
                        .await
                        .map_err(pg_err)?;
                    }
                }
            }
            for (seqs, bytes) in audit_seqs.chunks(1000).zip(audit_bytes.chunks(1000)) {
                txn.execute(
                    "INSERT INTO audit (seq, bytes) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                    &[&seqs, &bytes],
                )
                .await
                .map_err(pg_err)?;
            }
            txn.commit().await.map_err(pg_err)
        })
    }

    fn backup_to(&self, _to: &std::path::Path) -> Result<u64> {
        Err(Error::BadRequest(
            "the ledger is on PostgreSQL: back it up with the database's own tools (pg_dump, \
             or continuous archiving; docs/operations.md), or copy it to a redb file with \
             `matter-est ledger migrate`"
                .into(),
        ))
    }
}

fn head_from_row(row: &Row) -> Result<Option<Head>> {
    let next: i64 = get(row, 0)?;
    let prev: Vec<u8> = get(row, 1)?;
    if next == 0 {
        return Ok(None);
    }
    Ok(Some(Head {
        seq: (next - 1) as u64,
        hash: prev
            .try_into()
            .map_err(|_| Error::Ledger("the audit head's hash is not 32 bytes".into()))?,
    }))
}

async fn read_head(client: &deadpool_postgres::Object) -> Result<Option<Head>> {
    let row = client
        .query_one("SELECT next, prev FROM audit_head WHERE id = 1", &[])
        .await
        .map_err(pg_err)?;
    head_from_row(&row)
}
