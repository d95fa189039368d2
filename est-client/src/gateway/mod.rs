//! Gateway mode: every device of a CSV enrolled over keep-alive connections, a pipeline of three
//! stages so that no stage waits for another's chunk.
//! 1. keys: one thread makes (or, on a rerun, reads) each device's key and CSR; a chunk of keys
//!    is made durable with one `syncfs` before any of its CSRs is sent (a DAC must never exist
//!    for a key we lost);
//! 2. enrollment: one task per keep-alive connection sends CSRs (network only);
//! 3. manifest: one blocking step per chunk writes the DAC files and makes them durable before
//!    their manifest lines are appended, so a device in the manifest is complete on disk and a
//!    rerun skips exactly those.
//!
//! A stop ([`Stop`]: Ctrl-C, SIGTERM, or a server that stopped answering) ends stage 1 and stops
//! stage 2 from taking new CSRs; requests in flight get [`STOP_GRACE`] to finish and go through
//! stage 3 like any other. Then the manifest is compacted ([`manifest::compact`]) and one summary
//! says what is done, what failed and what was not attempted.

mod manifest;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use der::Decode;
use est_client::files::{self, io_err as file_err};
use est_client::matter::{self, DeviceSubject};
use est_client::wire::{self, Issued};
use est_client::{Client, Enrolled, Error, Result};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// What a gateway run enrolls, and where.
pub struct Job<'a> {
    pub devices: &'a Path,
    pub label: Option<&'a str>,
    pub vid: &'a str,
    pub pid: &'a str,
    pub out: &'a Path,
    /// Hold each certificate to the Matter DAC rules ([`matter::check_dac`]).
    pub matter_only: bool,
}

/// Runs the gateway with one keep-alive connection per client of `clients`; `spare` fetches
/// `/cacerts` at the end when no response carried the chain.
pub async fn run(job: &Job<'_>, clients: Vec<Client>, spare: &Client) -> Result<ExitCode> {
    let ids = read_devices(job.devices)?;
    files::create_private_dir(job.out)?;
    let _lock = lock_dir(job.out)?;
    let manifest_path = job.out.join(manifest::FILE);
    // A run killed before it compacted left earlier states (and maybe a torn line): compacted
    // before anything is appended.
    let previous = manifest::compact(&manifest_path)?;
    let before = ids.iter().filter(|id| previous.done.contains(*id)).count();
    let todo: Vec<String> = ids
        .iter()
        .filter(|id| !previous.done.contains(*id))
        .cloned()
        .collect();
    let attempted_max = todo.len();
    let manifest = files::open_private_append(&manifest_path)?;
    let connections = clients.len();
    let bar = progress_bar(attempted_max);
    let (stop_tx, stop_rx) = watch::channel(None::<Stop>);
    let stop_tx = Arc::new(stop_tx);
    let signals = watch_signals(stop_tx.clone(), bar.clone(), connections)?;
    let start = Instant::now();

    let (csr_tx, csr_rx) = tokio::sync::mpsc::channel::<DeviceCsr>(2 * CHUNK);
    let keys = {
        let (out, stop) = (job.out.to_path_buf(), stop_rx.clone());
        let (vid, pid) = (job.vid.to_string(), job.pid.to_string());
        tokio::task::spawn_blocking(move || -> Result<()> {
            for chunk in todo.chunks(CHUNK) {
                if stop.borrow().is_some() {
                    return Ok(());
                }
                let mut csrs = Vec::with_capacity(chunk.len());
                for id in chunk {
                    let csr = device_key(&out, id).and_then(|key| {
                        matter::csr(
                            &key,
                            &DeviceSubject {
                                cn: Some(id.clone()),
                                vid: Some(vid.clone()),
                                pid: Some(pid.clone()),
                                serial_number: None,
                            },
                        )
                    });
                    csrs.push((id.clone(), csr));
                }
                sync_dir(&out)?;
                for item in csrs {
                    if csr_tx.blocking_send(item).is_err() {
                        return Ok(()); // the enrollment stage stopped
                    }
                }
            }
            Ok(())
        })
    };

    let (done_tx, done_rx) = tokio::sync::mpsc::channel::<(String, Result<Issued>)>(2 * CHUNK);
    let csr_rx = Arc::new(tokio::sync::Mutex::new(csr_rx));
    let given_up = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let sender = Sender {
                client,
                csrs: csr_rx.clone(),
                results: done_tx.clone(),
                stop: (stop_tx.clone(), stop_rx.clone()),
                failures_in_a_row: 0,
                given_up: given_up.clone(),
                connections,
                matter_only: job.matter_only,
            };
            tokio::spawn(sender.run())
        })
        .collect();
    // The senders hold the only ends left: when they stop, the key stage sees it.
    drop((csr_rx, done_tx));

    let (tally, chain) = finish_devices(job.out, done_rx, manifest, &manifest_path, &bar).await?;
    let mut abandoned = 0;
    for s in senders {
        abandoned += s.await.map_err(|e| Error::Usage(e.to_string()))?;
    }
    keys.await.map_err(|e| Error::Usage(e.to_string()))??;
    signals.abort();
    bar.finish_and_clear();
    if !chain.written
        && let Some(leaf) = chain.leaf
    {
        let issued = Issued {
            certificate: leaf,
            chain: Vec::new(),
        };
        // An older run's chain.pem stays: its devices' DACs need it.
        let path = job.out.join("chain.pem");
        crate::write_chain(spare, &issued, &path, false, path.exists()).await?;
    }
    manifest::compact(&manifest_path)?;
    let stop = stop_rx.borrow().clone();
    let report = Report {
        job,
        total: ids.len(),
        before,
        tally,
        not_attempted: attempted_max - tally.attempted(),
        abandoned,
        elapsed: start.elapsed(),
        stop,
        manifest: &manifest_path,
    };
    report.print();
    Ok(report.exit_code())
}

/// Why a run stopped before its end.
#[derive(Clone, Debug)]
enum Stop {
    /// Ctrl-C (SIGINT) or SIGTERM.
    Signal { name: &'static str, exit: u8 },
    /// No answer from the server for [`SERVER_GONE_AFTER`] requests in a row on every
    /// connection; the last error.
    ServerGone(String),
}

/// How long requests in flight at a stop may take to finish. A matter-est enrollment answers in
/// milliseconds (the keep-alive benchmark runs thousands a second); one still unanswered after
/// this long is stuck, and an operator who pressed Ctrl-C will not wait longer. An abandoned
/// request is sent again by a rerun, with the same key, and gets the same DAC back.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Network failures in a row (no answer, no success between) on one connection, after which that
/// connection sends no more; when every connection has given up, the server is taken to be gone
/// and the run stops. `Client` already reconnects once when a kept connection was closed, so one
/// failure per connection is what a server restart costs; two in a row on every connection is a
/// server that is not there. Counted per connection: while a stopping server finishes the
/// requests in flight on other connections, their successes say nothing about this one.
const SERVER_GONE_AFTER: usize = 2;

/// Devices per chunk of the gateway: one syncfs for the keys and one for the DACs per chunk.
const CHUNK: usize = 256;

/// The manifest stage syncs a partial chunk when no result came for this long, so the manifest
/// keeps up with a slow line.
const FLUSH_AFTER: Duration = Duration::from_millis(250);

/// Ctrl-C or SIGTERM: the first stops the run ([`Stop::Signal`]); a second exits at once (the
/// manifest lists only devices whose DAC file is durable, and the next run compacts it).
fn watch_signals(
    stop: Arc<watch::Sender<Option<Stop>>>,
    bar: indicatif::ProgressBar,
    connections: usize,
) -> Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen =
        |kind| signal(kind).map_err(|e| Error::Usage(format!("cannot handle signals: {e}")));
    let (mut int, mut term) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::terminate())?,
    );
    Ok(tokio::spawn(async move {
        let first = next_signal(&mut int, &mut term).await;
        bar.suspend(|| {
            eprintln!(
                "est-client: stopping: no new requests; waiting up to {} s for the {connections} \
                 or fewer in flight (press Ctrl-C again to quit at once)",
                STOP_GRACE.as_secs()
            )
        });
        stop.send_if_modified(|s| s.is_none() && s.replace(first).is_none());
        if let Stop::Signal { name, exit } = next_signal(&mut int, &mut term).await {
            bar.suspend(|| {
                eprintln!(
                    "est-client: {name} again: quit at once; the manifest lists only devices \
                     whose DAC file is durable; rerun the same command to continue"
                )
            });
            std::process::exit(i32::from(exit));
        }
    }))
}

/// The next SIGINT or SIGTERM.
async fn next_signal(
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) -> Stop {
    tokio::select! {
        _ = int.recv() => Stop::Signal { name: "SIGINT", exit: 130 },
        _ = term.recv() => Stop::Signal { name: "SIGTERM", exit: 143 },
    }
}

/// A device ID and its CSR, or why it has none (its key could not be made or read).
type DeviceCsr = (String, Result<Vec<u8>>);

/// One keep-alive connection of the enrollment stage.
struct Sender {
    client: Client,
    csrs: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<DeviceCsr>>>,
    results: tokio::sync::mpsc::Sender<(String, Result<Issued>)>,
    stop: (
        Arc<watch::Sender<Option<Stop>>>,
        watch::Receiver<Option<Stop>>,
    ),
    /// Network failures in a row on this connection.
    failures_in_a_row: usize,
    /// Connections that gave up after [`SERVER_GONE_AFTER`] failures in a row.
    given_up: Arc<AtomicUsize>,
    connections: usize,
    matter_only: bool,
}

impl Sender {
    /// Sends CSRs until there are none left or the run stops; returns how many requests it
    /// abandoned in flight (at most one).
    async fn run(mut self) -> usize {
        loop {
            let next = tokio::select! {
                biased;
                () = stopped(&mut self.stop.1) => break,
                next = async { self.csrs.lock().await.recv().await } => next,
            };
            let Some((id, csr)) = next else { break };
            if self.stop.1.borrow().is_some() {
                break; // taken as the stop came: not sent
            }
            // A device whose key could not be made or read fails alone.
            let result = match csr {
                Ok(csr) => {
                    let enroll = enroll_device(&self.client, &csr, self.matter_only);
                    let grace = async {
                        stopped(&mut self.stop.1).await;
                        tokio::time::sleep(STOP_GRACE).await;
                    };
                    tokio::select! {
                        r = enroll => r,
                        () = grace => return 1,
                    }
                }
                Err(e) => Err(e),
            };
            let give_up = self.count(&result);
            if self.results.send((id, result)).await.is_err() || give_up {
                break;
            }
        }
        0
    }

    /// Counts this connection's network failures in a row; true when it gives up. The last
    /// connection to give up stops the run: the server seems gone.
    fn count(&mut self, result: &Result<Issued>) -> bool {
        match result {
            Err(e) if e.is_network() => {
                self.failures_in_a_row += 1;
                if self.failures_in_a_row < SERVER_GONE_AFTER {
                    return false;
                }
                if self.given_up.fetch_add(1, Ordering::Relaxed) + 1 == self.connections {
                    let gone = Stop::ServerGone(e.to_string());
                    self.stop
                        .0
                        .send_if_modified(|s| s.is_none() && s.replace(gone).is_none());
                }
                true
            }
            _ => {
                self.failures_in_a_row = 0;
                false
            }
        }
    }
}

/// Returns once the run is stopped.
async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) {
    // Err: the sender is gone, so no stop will come.
    if stop.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The outcome of the devices attempted in this run.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    enrolled: usize,
    permanent: usize,
    retryable: usize,
}

impl Tally {
    fn failed(&self) -> usize {
        self.permanent + self.retryable
    }

    fn attempted(&self) -> usize {
        self.enrolled + self.failed()
    }
}

/// What a run did, for its summary.
struct Report<'a> {
    job: &'a Job<'a>,
    /// Devices in the list.
    total: usize,
    /// Done by an earlier run.
    before: usize,
    tally: Tally,
    not_attempted: usize,
    /// Of those not attempted: requests abandoned in flight after [`STOP_GRACE`].
    abandoned: usize,
    elapsed: Duration,
    stop: Option<Stop>,
    manifest: &'a Path,
}

impl Report<'_> {
    /// One line on stdout, in the form of `matter-est batch`'s; advice, if any, on stderr.
    fn print(&self) {
        let t = &self.tally;
        let secs = self.elapsed.as_secs_f64();
        let done = self.before + t.enrolled;
        let status = match (&self.stop, done == self.total) {
            (_, true) => "complete",
            (Some(Stop::Signal { .. }), _) => "stopped",
            _ => "partial",
        };
        println!(
            "gateway {status}: label {} VID {} PID {}: {done} of {} devices ({} enrolled now at \
             {:.0}/s, {} already done), {} failed ({} permanent, {} retryable), {} not \
             attempted, in {secs:.1} s; manifest {} is durable",
            self.job.label.unwrap_or("(default)"),
            self.job.vid,
            self.job.pid,
            self.total,
            t.enrolled,
            t.enrolled as f64 / secs.max(1e-9),
            self.before,
            t.failed(),
            t.permanent,
            t.retryable,
            self.not_attempted,
            self.manifest.display(),
        );
        match &self.stop {
            Some(Stop::Signal { name, .. }) => eprintln!("est-client: stopped by {name}"),
            Some(Stop::ServerGone(e)) => {
                eprintln!("est-client: stopped sending: the server is not answering (last: {e})")
            }
            None => {}
        }
        if self.abandoned > 0 {
            eprintln!(
                "est-client: {} requests unanswered {} s after the stop were abandoned: a rerun \
                 sends them again with the same keys and gets the same DACs back",
                self.abandoned,
                STOP_GRACE.as_secs()
            );
        }
        if t.permanent > 0 {
            eprintln!(
                "est-client: {} devices failed permanently (\"failure\": \"permanent\" in the \
                 manifest): the server will refuse them again, or a file must be fixed; change \
                 the policy or the device list before a rerun",
                t.permanent
            );
        }
        match (t.retryable, self.not_attempted) {
            (0, 0) => {}
            (r, 0) => eprintln!(
                "est-client: {r} devices failed and may succeed: rerun the same command to retry them"
            ),
            (0, n) => eprintln!(
                "est-client: {n} devices not attempted: rerun the same command to continue"
            ),
            (r, n) => eprintln!(
                "est-client: {r} devices failed and may succeed, {n} were not attempted: rerun the same command to retry and continue"
            ),
        }
    }

    /// 0 when every device is done; 130 (SIGINT) or 143 (SIGTERM) after a signal; else 1.
    fn exit_code(&self) -> ExitCode {
        match &self.stop {
            Some(Stop::Signal { exit, .. }) => ExitCode::from(*exit),
            _ if self.tally.failed() + self.not_attempted == 0 => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        }
    }
}

/// On a terminal: devices done of those to do, rate, ETA and failures; hidden otherwise.
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(len as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} devices  {rate}  ETA {eta}  {msg}",
    ) {
        // Whole devices a second, as in the summary (indicatif's {per_sec} prints 4 decimals).
        let rate = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", s.per_sec());
        };
        bar.set_style(style.with_key("rate", rate));
    }
    bar.set_message("0 failed");
    bar
}

/// Holds an exclusive lock on the output directory for the run: two gateways writing one
/// manifest would interleave, and a compaction would drop the other's lines.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::open(dir).map_err(|e| file_err(dir, e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        Error::File {
            path: dir.display().to_string(),
            problem: "another est-client gateway is using this directory".into(),
        }
    })?;
    Ok(f)
}

/// The gateway's `chain.pem`: written from the first response that carries a chain; when none
/// did (a server answering with the DAC alone), from `/cacerts` for `leaf` at the end.
#[derive(Default)]
struct ChainFile {
    written: bool,
    leaf: Option<Vec<u8>>,
}

/// The gateway's last stage, off the async threads: a chunk's DAC files written and made
/// durable (a chunk at a time, or after a short pause in the results), then their manifest
/// lines. Returns the tally, and the state of `chain.pem`.
async fn finish_devices(
    out: &Path,
    mut results: tokio::sync::mpsc::Receiver<(String, Result<Issued>)>,
    manifest: std::fs::File,
    manifest_path: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(Tally, ChainFile)> {
    let mut tally = Tally::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut state = (manifest, ChainFile::default());
    loop {
        let next = tokio::time::timeout(FLUSH_AFTER, results.recv()).await;
        let closed = matches!(next, Ok(None));
        if let Ok(Some(result)) = next {
            chunk.push(result);
            if chunk.len() < CHUNK {
                continue;
            }
        }
        if !chunk.is_empty() {
            let (dir, path, work) = (
                out.to_path_buf(),
                manifest_path.to_path_buf(),
                std::mem::take(&mut chunk),
            );
            let done;
            (state, done) = tokio::task::spawn_blocking(move || {
                let (mut manifest, mut chain) = state;
                let done = write_chunk(&dir, work, &mut chain)?;
                let lines: String = done.iter().map(|(_, line)| format!("{line}\n")).collect();
                manifest
                    .write_all(lines.as_bytes())
                    .map_err(|e| file_err(&path, e))?;
                Ok::<_, Error>(((manifest, chain), done))
            })
            .await
            .map_err(|e| Error::Usage(e.to_string()))??;
            for (failure, _) in done {
                match failure {
                    None => tally.enrolled += 1,
                    Some((id, e)) => {
                        let kind = manifest::failure_kind(&e);
                        if e.is_retryable() {
                            tally.retryable += 1;
                        } else {
                            tally.permanent += 1;
                        }
                        bar.set_message(format!("{} failed", tally.failed()));
                        bar.suspend(|| eprintln!("device {id}: {kind}: {e}"));
                    }
                }
                bar.inc(1);
            }
        }
        if closed {
            break;
        }
    }
    state.0.sync_all().map_err(|e| file_err(manifest_path, e))?;
    Ok((tally, state.1))
}

/// A device's manifest line, with its failure if it has one.
type ManifestLine = (Option<(String, Error)>, serde_json::Value);

/// One chunk of enrollment results: each DAC written to `<id>.dac.pem` (the chain, the same for
/// every device of a label, to `chain.pem` once), all made durable with one `syncfs`; then the
/// manifest line of each device.
fn write_chunk(
    out: &Path,
    chunk: Vec<(String, Result<Issued>)>,
    chain: &mut ChainFile,
) -> Result<Vec<ManifestLine>> {
    let mut done = Vec::with_capacity(chunk.len());
    for (id, result) in chunk {
        let dac_file = format!("{id}.dac.pem");
        let written = result.and_then(|issued| {
            let dac_pem = wire::pem(std::slice::from_ref(&issued.certificate))?;
            let serial = x509_cert::Certificate::from_der(&issued.certificate)
                .map(|c| crate::hex(c.tbs_certificate().serial_number().as_bytes()))
                .map_err(|e| Error::BadResponse(format!("the DAC does not parse: {e}")))?;
            files::write_new_file(&out.join(&dac_file), dac_pem.as_bytes(), files::PUBLIC)?;
            if !chain.written && !issued.chain.is_empty() {
                files::write_file(
                    &out.join("chain.pem"),
                    wire::pem(&issued.chain)?.as_bytes(),
                    files::PUBLIC,
                )?;
                chain.written = true;
            }
            chain.leaf.get_or_insert(issued.certificate);
            Ok((serial, crate::hex(&Sha256::digest(dac_pem.as_bytes()))))
        });
        done.push(match written {
            Ok((serial, sha)) => (None, manifest::ok_line(&id, &serial, &dac_file, &sha)),
            Err(e) => {
                let line = manifest::failed_line(&id, &e);
                (Some((id, e)), line)
            }
        });
    }
    sync_dir(out)?;
    Ok(done)
}

/// The device's key: the one a previous, interrupted run wrote (so a lost response is retried
/// with the same key and subject and gets the same DAC back), else a new one (not yet synced).
/// A key file that exists but cannot be read, or that we did not make (another owner, group or
/// other permissions, not a regular file: [`files::read_own_key`]), is the device's error,
/// never replaced: its CSR may have been sent. One that is read but is not PEM was torn by an
/// interrupted run before it was synced, so its CSR was never sent: it is replaced.
fn device_key(out: &Path, id: &str) -> Result<Vec<u8>> {
    let key_path = out.join(format!("{id}.key.pem"));
    if let Some(pem) = files::read_own_key(&key_path)?
        && let Ok(k) = matter::parse_key(&pem)
    {
        return Ok(k);
    }
    let k = matter::generate_key()?;
    files::write_new_file(&key_path, matter::key_pem(&k)?.as_bytes(), files::PRIVATE)?;
    Ok(k)
}

/// One device of the gateway: simpleenroll; the certificate for the device's key (held to the
/// Matter DAC rules unless `matter_only` is off) and its chain.
async fn enroll_device(client: &Client, csr: &[u8], matter_only: bool) -> Result<Issued> {
    match client.simpleenroll(csr).await? {
        Enrolled::Issued(issued) => {
            if matter_only {
                matter::check_dac(csr, &issued.certificate)?;
            }
            Ok(issued)
        }
        Enrolled::Pending { retry_after } => Err(Error::Status {
            status: 202,
            message: format!(
                "held by the server; rerun after {} s",
                retry_after.as_secs()
            ),
        }),
    }
}

/// Makes every file written under `dir` durable: one syncfs instead of an fsync per file.
fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| file_err(dir, e))?;
    rustix::fs::syncfs(&f).map_err(|e| file_err(dir, e.into()))
}

/// The device IDs of a CSV: the first column; empty lines, `#` lines and a `device_id` header
/// skipped. An ID is 1-64 of letters, digits, '.', '_', '-' (it names files), listed once.
fn read_devices(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let mut ids = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let bad = |n: usize, problem: String| Error::File {
        path: path.display().to_string(),
        problem: format!("line {}: {problem}", n + 1),
    };
    for (n, line) in text.lines().enumerate() {
        let id = line.split(',').next().unwrap_or("").trim();
        if id.is_empty() || id.starts_with('#') || (n == 0 && id.eq_ignore_ascii_case("device_id"))
        {
            continue;
        }
        if id.len() > 64
            || id.starts_with('.')
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(bad(
                n,
                format!("{id:?}: a device ID is 1-64 of letters, digits, '.', '_', '-'"),
            ));
        }
        if let Some(first) = seen.insert(id, n) {
            return Err(bad(n, format!("{id:?} is already on line {}", first + 1)));
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests

    use super::*;

    #[test]
    fn a_device_list_names_each_device_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.csv");
        std::fs::write(&path, "device_id,batch\n# line 7\nd-1,a\n\nd-2,a\n").unwrap();
        assert_eq!(read_devices(&path).unwrap(), ["d-1", "d-2"]);
        std::fs::write(&path, "d-1\nd-2\nd-1\n").unwrap();
        let e = read_devices(&path).unwrap_err().to_string();
        assert!(e.ends_with("line 3: \"d-1\" is already on line 1"), "{e}");
        std::fs::write(&path, "d-1\n../d-2\n").unwrap();
        let e = read_devices(&path).unwrap_err().to_string();
        assert!(e.contains("line 2: \"../d-2\": a device ID is"), "{e}");
    }
}
