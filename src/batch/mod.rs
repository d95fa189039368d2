//! Offline batch DAC generation (`matter-est batch`): keys and DACs made ahead of time for a
//! production line without a network, through the same issuance core (profile, signer,
//! self-check, ledger).
//!
//! Layout: flat, `devices/<id>.dac.der`, `<id>.dac.pem` and `<id>.key.der` (or `.key.cms`,
//! `.key-encrypted.der`): a directory per device would cost the file system an inode, a
//! directory block and a rename more per device (measured: a sixth of the batch's time on ext4).
//!
//! Order per device, and why nothing is lost: the key pair and the DAC are made in memory and
//! written under `devices/`, the files are made durable (one `syncfs` per group), then the DAC
//! is committed to the ledger (one group commit), then the manifest line is appended: a device
//! is done when it is in the manifest. A crash before the commit leaves files of a device whose
//! DAC is not on record: resume deletes them (that key was never certified). A crash after the
//! commit leaves files whose DAC is on record: resume adds them to the manifest. So no recorded
//! DAC lacks its key, and no kept key lacks its record.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use cbc::cipher::{BlockModeEncrypt, KeyIvInit, block_padding::Pkcs7};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod remote;

use crate::asn1::{self, tag};
use crate::error::{Error, ErrorKind, Result};
use crate::issuance::{IssueOptions, Issuer, Label, Prepared};
use crate::matter::Pid;
use crate::profile::{self, DacSubject, dev};
use crate::signer;
use crate::store::{Committed, Pending};

/// Devices finished per group: one `syncfs` and one ledger commit per group. 512 keeps a
/// group's wait under ~0.1 s at 5,000 DACs/s while amortising the fsyncs.
const GROUP: usize = 512;

/// Devices per job handed to a worker thread (and per result handed back).
const CHUNK: usize = 32;

/// PBKDF2-SHA256 iterations for the batch passphrase (OWASP 2023 recommends 600,000 for
/// PBKDF2-HMAC-SHA256); derived once per batch, so it costs well under a second.
const PBKDF2_ROUNDS: u32 = 600_000;

/// Which devices a batch makes.
#[derive(Clone, Debug)]
pub enum Devices {
    /// This many, named by the label's `cn_prefix` and the DAC serial.
    Count(u64),
    /// One hardware ID per line (first CSV column; `#` comments and a `device_id` header
    /// skipped); the ID is the DAC's CN and its files' name.
    List(PathBuf),
}

/// What `matter-est batch` was asked to do.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub label: String,
    pub pid: Pid,
    pub devices: Devices,
    pub out: PathBuf,
    /// Encrypt each private key (PKCS#8 PBES2, PBKDF2-SHA256 + AES-256-CBC) with the
    /// passphrase in this environment variable.
    pub passphrase_env: Option<String>,
    /// Encrypt each private key to the line's P-256 public key or certificate (PEM) as CMS
    /// EnvelopedData (`key.cms`).
    pub encrypt_to: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Also write the finished batch as one archive, `<out>.tar` (mode 0600).
    pub archive: bool,
    /// Set (by a Ctrl-C or SIGTERM handler) to stop: no new device is started; the ones under
    /// way are finished, recorded and in the manifest before the run returns.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// One line of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub index: u64,
    pub device_id: String,
    pub serial: String,
    pub subject: String,
    pub dac_der_sha256: String,
    pub dac_pem_sha256: String,
    pub key_file: String,
    pub key_sha256: String,
}

/// `batch.json`: what the batch is and whether it finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub label: String,
    pub vid: String,
    pub pid: String,
    /// "count" or the device list's path.
    pub devices: String,
    /// SHA-256 of the device list's IDs (one per line), for a list: a rerun must bring the
    /// same list.
    #[serde(default)]
    pub devices_sha256: Option<String>,
    /// Devices requested.
    pub requested: u64,
    /// Devices done (in the manifest).
    pub count: u64,
    pub first_serial: Option<String>,
    pub last_serial: Option<String>,
    pub created_at: i64,
    /// "partial" until every requested device is done, then "complete".
    pub status: String,
    pub key_encryption: String,
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    pub summary: Summary,
    /// Devices made by this run.
    pub made: u64,
    /// Devices recovered from an interrupted run.
    pub recovered: u64,
    /// Per-device failures.
    pub failures: Vec<Failure>,
}

/// A device the batch could not make.
#[derive(Debug)]
pub struct Failure {
    pub device_id: String,
    pub reason: String,
    /// A rerun cannot fix it (the device's subject is taken, its ID breaks a rule): the input
    /// must change. Otherwise (a disk or ledger error) a rerun retries it.
    pub permanent: bool,
}

impl Failure {
    fn new(device_id: String, e: &Error) -> Self {
        Self {
            device_id,
            reason: e.to_string(),
            permanent: !matches!(
                e.kind(),
                ErrorKind::Internal
                    | ErrorKind::Unavailable
                    | ErrorKind::TooManyRequests
                    | ErrorKind::Timeout
            ),
        }
    }
}

/// Runs (or resumes) a batch. Everything it is given is checked before anything is created:
/// the label and PID, the device list, the key protection, the quota, and, in an existing
/// output directory, that `batch.json` describes this same batch.
pub fn run(issuer: &Issuer, opts: &BatchOptions) -> Result<Report> {
    run_with(&Engine::Local(issuer), opts)
}

/// Where a batch's DACs come from.
pub enum Engine<'a> {
    /// Signed here by the label's signer and committed to the ledger in groups (the ledger is
    /// this process's).
    Local(&'a Issuer),
    /// Issued by a running server through its admin API, one CSR per device, the device's key
    /// and CSR durable before the CSR is sent (so a rerun resends it and gets the same DAC).
    Remote(&'a dyn remote::Enroll),
}

impl Engine<'_> {
    /// What the batch needs of its label, with the PID checked against it.
    fn facts(&self, label: &str, pid: Pid) -> Result<Facts> {
        match self {
            Engine::Local(issuer) => {
                let l = issuer.label(label)?.clone();
                l.profile.check_pid(&l.pai, pid)?;
                Ok(Facts {
                    vid: l.pai.vid.to_string(),
                    cn_prefix: l.profile.cn_prefix.clone(),
                    pai: l.pai.der.clone(),
                    paa: l.chain.last().cloned(),
                    quota: l.config.quota,
                    used: issuer.ledger().count(label)?,
                    local: Some(l),
                })
            }
            Engine::Remote(enroll) => enroll.label(label, pid),
        }
    }

    /// The DAC for `csr` on `label`: a new one, or the one on record for this key and subject.
    fn issue_csr(&self, label: &str, csr: &[u8]) -> Result<Vec<u8>> {
        match self {
            Engine::Local(issuer) => Ok(issuer
                .issue(
                    label,
                    &crate::csr::parse_der(csr)?,
                    &IssueOptions {
                        requester: "batch".into(),
                        ..Default::default()
                    },
                )?
                .dac
                .der),
            Engine::Remote(enroll) => enroll.issue(label, csr),
        }
    }
}

/// What a batch needs to know of its label.
pub struct Facts {
    pub vid: String,
    pub cn_prefix: String,
    /// The PAI's certificate, DER, and the PAA's above it if known.
    pub pai: Vec<u8>,
    pub paa: Option<Vec<u8>>,
    pub quota: Option<u64>,
    /// DACs on record under the label.
    pub used: u64,
    /// The label itself, when this process signs.
    local: Option<Arc<Label>>,
}

/// Runs (or resumes) a batch whose DACs come from `engine`; see [`run`].
pub fn run_with(engine: &Engine, opts: &BatchOptions) -> Result<Report> {
    let facts = engine.facts(&opts.label, opts.pid)?;
    let out = &opts.out;
    let key_encryption = match (&opts.passphrase_env, &opts.encrypt_to) {
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest(
                "choose one of --encrypt-passphrase-env and --encrypt-to".into(),
            ));
        }
        (Some(_), None) => "pkcs8-pbes2-pbkdf2-sha256-aes256cbc".to_string(),
        (None, Some(_)) => "cms-enveloped-ecdh-p256-aes256".to_string(),
        (None, None) => "none".to_string(),
    };
    let (source, ids) = match &opts.devices {
        Devices::Count(_) => ("count".to_string(), None),
        Devices::List(p) => (p.display().to_string(), Some(read_device_ids(p)?)),
    };
    let requested = match (&opts.devices, &ids) {
        (_, Some(ids)) => ids.len() as u64,
        (Devices::Count(n), None) => *n,
        (Devices::List(_), None) => 0,
    };
    let devices_sha256 = ids
        .as_ref()
        .map(|ids| sha256_hex(ids.join("\n").as_bytes()));
    let encryptor = match (&opts.passphrase_env, &opts.encrypt_to) {
        (Some(var), _) => {
            let pass = std::env::var(var).map_err(|_| Error::KeyFile {
                path: PathBuf::from(format!("${var}")),
                problem: "the batch passphrase environment variable is not set".into(),
            })?;
            Some(Arc::new(KeyProtection::Passphrase(KeyEncryptor::new(
                pass.as_bytes(),
            )?)))
        }
        (None, Some(path)) => Some(Arc::new(KeyProtection::Line(
            crate::envelope::Recipient::from_pem_file(path)?,
        ))),
        (None, None) => None,
    };
    let summary_path = out.join("batch.json");
    let mut summary = match fs::read(&summary_path) {
        Ok(bytes) => {
            let s: Summary = serde_json::from_slice(&bytes)
                .map_err(|e| Error::io(&summary_path, format!("unreadable: {e}")))?;
            // The same device list is the same IDs, wherever the file is now (its SHA-256).
            if s.label != opts.label
                || s.pid != opts.pid.to_string()
                || s.key_encryption != key_encryption
                || s.requested != requested
                || s.devices_sha256 != devices_sha256
            {
                let what = match &s.devices_sha256 {
                    Some(_) => format!("the device list {}", s.devices),
                    None => format!("--count {}", s.requested),
                };
                return Err(Error::io(
                    out,
                    format!(
                        "holds a batch of {} devices for label {} PID {} ({what}, keys {}); \
                         rerun it with exactly the same options to resume it, or use another --out",
                        s.requested, s.label, s.pid, s.key_encryption
                    ),
                ));
            }
            s
        }
        Err(_) => Summary {
            label: opts.label.clone(),
            vid: facts.vid.clone(),
            pid: opts.pid.to_string(),
            devices: source,
            devices_sha256,
            requested,
            count: 0,
            first_serial: None,
            last_serial: None,
            created_at: asn1::now(),
            status: "partial".into(),
            key_encryption,
        },
    };
    // Quota: a batch that cannot fit is refused before anything is made (resumed devices are
    // already counted, so a rerun needs only what is left).
    let already_done = Manifest::load(out)?.entries.len() as u64;
    if let Some(quota) = facts.quota {
        let used = facts.used;
        let left = requested.saturating_sub(already_done);
        if used + left > quota {
            return Err(Error::Forbidden(format!(
                "label {:?} has {} of its quota of {quota} DACs left; this batch needs {left}",
                opts.label,
                quota.saturating_sub(used)
            )));
        }
    }

    mkdir_private(out)?;
    mkdir_private(&out.join("devices"))?;
    // batch.json first, "partial" until the last device is done, so that an interrupted batch
    // says what it is.
    write_summary(out, &summary)?;
    write_chain(out, &facts)?;

    // Recover what an interrupted run left.
    let mut manifest = Manifest::load(out)?;
    let recovered = recover(engine, &opts.label, out, &mut manifest)?;
    manifest.rewrite(out)?;

    // What is left to do.
    let done: BTreeSet<String> = manifest
        .entries
        .iter()
        .map(|e| e.device_id.clone())
        .collect();
    let todo: Box<dyn Iterator<Item = Result<Option<String>>> + Send> = match ids {
        None => {
            let left = requested.saturating_sub(done.len() as u64);
            Box::new((0..left).map(|_| Ok(None)))
        }
        Some(ids) => {
            let left: Vec<_> = ids.into_iter().filter(|id| !done.contains(id)).collect();
            Box::new(left.into_iter().map(|id| Ok(Some(id))))
        }
    };
    let left = requested.saturating_sub(done.len() as u64);

    let progress = if opts.progress {
        // As `est-client gateway`'s bar: devices done, whole devices a second, ETA, failures.
        let bar = indicatif::ProgressBar::new(left);
        let rate = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", s.per_sec());
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} devices  {rate}  ETA {eta}  {msg}",
            )
            .map_err(|e| Error::Internal(e.to_string()))?
            .with_key("rate", rate),
        );
        bar.set_message("0 failed");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let made = produce(
        engine,
        &facts,
        opts,
        todo,
        encryptor,
        &mut manifest,
        &mut summary,
        &progress,
    )?;
    progress.finish_and_clear();

    summary.count = manifest.entries_written;
    if summary.first_serial.is_none() {
        summary.first_serial = manifest.first_serial.clone();
    }
    summary.last_serial = manifest.last_serial.clone().or(summary.last_serial);
    summary.status = if summary.count >= requested && made.1.is_empty() {
        "complete".into()
    } else {
        "partial".into()
    };
    write_summary(out, &summary)?;
    if opts.archive && summary.status == "complete" {
        write_archive(out)?;
    }
    Ok(Report {
        summary,
        made: made.0,
        recovered,
        failures: made.1,
    })
}

/// Writes `batch.json` (0600).
fn write_summary(out: &Path, summary: &Summary) -> Result<()> {
    dev::write_file(
        out,
        "batch.json",
        &serde_json::to_vec_pretty(summary).map_err(|e| Error::Internal(e.to_string()))?,
        0o600,
    )
}

/// A device whose key (and DAC, or CSR) are written, on its way to the ledger.
struct Made {
    device_id: String,
    index: u64,
    work: Work,
}

/// What is left to do for a made device.
enum Work {
    /// Signed here: the record to commit and the manifest line to write once it is.
    Signed {
        prepared: Box<Prepared>,
        entry: ManifestEntry,
    },
    /// The CSR to send (its key and it are on disk).
    Csr(Vec<u8>),
}

#[allow(clippy::too_many_arguments)] // reason: one call site; a struct would only rename them
fn produce(
    engine: &Engine,
    facts: &Facts,
    opts: &BatchOptions,
    todo: Box<dyn Iterator<Item = Result<Option<String>>> + Send>,
    encryptor: Option<Arc<KeyProtection>>,
    manifest: &mut Manifest,
    summary: &mut Summary,
    progress: &indicatif::ProgressBar,
) -> Result<(u64, Vec<Failure>)> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Jobs and results travel in chunks: one channel hand-off (and at most one wake-up) per
    // chunk instead of per device.
    let (job_tx, job_rx) = mpsc::sync_channel::<Vec<(u64, Option<String>)>>(GROUP * 4 / CHUNK);
    let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
    let (done_tx, done_rx) =
        mpsc::sync_channel::<Vec<std::result::Result<Made, (String, Error)>>>(GROUP * 4 / CHUNK);
    let mut failures = Vec::new();
    let mut made = 0u64;
    let first_index = manifest.next_index();
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            let (job_rx, done_tx, encryptor) = (job_rx.clone(), done_tx.clone(), encryptor.clone());
            let devices = opts.out.join("devices");
            scope.spawn(move || {
                loop {
                    let jobs = job_rx.lock().ok().and_then(|rx| rx.recv().ok());
                    let Some(jobs) = jobs else { break };
                    let results = jobs
                        .into_iter()
                        .map(|(index, id)| {
                            make_device(
                                engine,
                                facts,
                                opts.pid,
                                &devices,
                                index,
                                id.clone(),
                                encryptor.as_deref(),
                            )
                            .map_err(|e| (id.unwrap_or_else(|| format!("#{index}")), e))
                        })
                        .collect();
                    if done_tx.send(results).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Feed jobs from another scoped thread so that the finisher below never blocks on them.
        let feeder = scope.spawn(move || -> Result<()> {
            let mut chunk = Vec::with_capacity(CHUNK);
            for (i, item) in todo.enumerate() {
                if opts
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
                {
                    break;
                }
                chunk.push((first_index + i as u64, item?));
                if chunk.len() == CHUNK && job_tx.send(std::mem::take(&mut chunk)).is_err() {
                    return Ok(());
                }
            }
            if !chunk.is_empty() {
                let _ = job_tx.send(chunk);
            }
            Ok(())
        });

        // The finisher: groups, syncfs, ledger commit, manifest; one group's commit overlaps the
        // next group's collection and syncfs.
        let mut group: Vec<Made> = Vec::with_capacity(GROUP + CHUNK);
        let mut in_flight: Option<InFlight> = None;
        let devices_dir = opts.out.join("devices");
        loop {
            // Groups are full but for the last: flushing a partial group whenever no result was
            // ready made 800 `syncfs` calls instead of 100 per 50,000 devices (measured), and on
            // a real disk each one is a cache flush.
            let next = done_rx.recv().ok();
            // All results are in once the channel is closed and drained.
            let all_in = match next {
                Some(results) => {
                    for result in results {
                        match result {
                            Ok(m) => group.push(m),
                            Err((id, e)) => {
                                progress.inc(1);
                                failures.push(Failure::new(id, &e));
                                progress.set_message(format!("{} failed", failures.len()));
                            }
                        }
                    }
                    if group.len() < GROUP {
                        continue;
                    }
                    false
                }
                None => true,
            };
            let next = if group.is_empty() {
                None
            } else {
                Some(make_durable(
                    engine,
                    &opts.label,
                    &devices_dir,
                    std::mem::take(&mut group),
                )?)
            };
            if let Some(previous) = std::mem::replace(&mut in_flight, next) {
                let finished = publish(previous, &devices_dir, manifest, &mut failures)?;
                made += finished;
                progress.inc(finished);
                progress.set_message(format!("{} failed", failures.len()));
                summary.count = manifest.entries_written;
            }
            if all_in && in_flight.is_none() {
                break;
            }
        }
        feeder
            .join()
            .map_err(|_| Error::Internal("batch feeder panicked".into()))??;
        Ok(())
    })?;
    manifest.sync()?;
    Ok((made, failures))
}

/// One device: key pair and its file under `devices/`; then, signing here, its DAC (built,
/// signed, self-checked) and files; for a server, its CSR file.
fn make_device(
    engine: &Engine,
    facts: &Facts,
    pid: Pid,
    devices: &Path,
    index: u64,
    id: Option<String>,
    encryptor: Option<&KeyProtection>,
) -> Result<Made> {
    let (pkcs8, point) = signer::generate_p256()?;
    let serial = profile::random_serial()?;
    let cn = match id {
        Some(id) => id,
        None => format!("{}{}", facts.cn_prefix, asn1::hex(&serial).to_uppercase()),
    };
    let (key_file, key_bytes) = match encryptor {
        Some(KeyProtection::Passphrase(enc)) => ("key-encrypted.der", enc.encrypt(&pkcs8)?),
        Some(KeyProtection::Line(to)) => ("key.cms", crate::envelope::seal(&pkcs8, to)?),
        None => ("key.der", pkcs8.clone()),
    };
    let files = DeviceFiles::new(devices, &cn);
    let label = match (engine, &facts.local) {
        (Engine::Local(_), Some(label)) => label,
        _ => {
            // For a server: the key and the CSR, made durable by the group before it is sent.
            let name = dev::name(&[
                (asn1::oid::COMMON_NAME, &cn),
                (asn1::oid::MATTER_VID, &facts.vid),
                (asn1::oid::MATTER_PID, &pid.to_string()),
            ]);
            let csr = crate::csr::build(&name, &signer::KeySigner::from_pkcs8(&pkcs8)?)?;
            write_private(&files.key(key_file), &key_bytes)?;
            write_private(&files.csr, &csr)?;
            return Ok(Made {
                device_id: cn,
                index,
                work: Work::Csr(csr),
            });
        }
    };
    let Engine::Local(issuer) = engine else {
        return Err(Error::Internal(
            "a local label without a local issuer".into(),
        ));
    };
    let subject = DacSubject {
        cn: cn.clone(),
        vid: label.pai.vid,
        pid,
    };
    let prepared = issuer.prepare_subject(
        label,
        &subject,
        &serial,
        &point,
        &IssueOptions {
            requester: "batch".into(),
            ..Default::default()
        },
    )?;
    let der = &prepared.issued.dac.der;
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
        .map_err(|e| Error::Internal(e.to_string()))?;
    write_private(&files.dac_der, der)?;
    write_private(&files.dac_pem, pem.as_bytes())?;
    write_private(&files.key(key_file), &key_bytes)?;
    let entry = ManifestEntry {
        index,
        device_id: cn.clone(),
        serial: asn1::hex(&serial).to_uppercase(),
        subject: subject.to_string(),
        dac_der_sha256: sha256_hex(der),
        dac_pem_sha256: sha256_hex(pem.as_bytes()),
        key_file: format!("{cn}.{key_file}"),
        key_sha256: sha256_hex(&key_bytes),
    };
    Ok(Made {
        device_id: cn,
        index,
        work: Work::Signed {
            prepared: Box::new(prepared),
            entry,
        },
    })
}

/// A group whose files are durable and whose records are submitted to the ledger (or whose
/// DACs the server returned).
struct InFlight {
    items: Vec<(String, Outcome)>,
}

enum Outcome {
    /// Committing in this process's ledger; the manifest line to write once it is.
    Pending(Pending<Committed>, Box<ManifestEntry>),
    /// Issued by the server and its files written (or why not).
    Done(Result<ManifestEntry>),
}

/// How many requests a batch has in flight to a server at once.
const REMOTE_IN_FLIGHT: usize = 4;

/// Makes a group's files durable, then submits its records (one group commit; the finisher
/// goes on to the next group while the ledger commits this one), or sends its CSRs to the
/// server and writes the DACs it returns (made durable before the manifest names them).
fn make_durable(
    engine: &Engine,
    label: &str,
    devices: &Path,
    group: Vec<Made>,
) -> Result<InFlight> {
    // 1. Every key (and DAC or CSR) file of the group on disk before any DAC is recorded.
    syncfs(devices)?;
    let mut items = Vec::with_capacity(group.len());
    let mut csrs = Vec::new();
    for m in group {
        match (m.work, engine) {
            // 2. One group commit in the ledger.
            (Work::Signed { prepared, entry }, Engine::Local(issuer)) => items.push((
                m.device_id,
                Outcome::Pending(issuer.submit(&prepared), Box::new(entry)),
            )),
            (Work::Signed { .. }, Engine::Remote(_)) => items.push((
                m.device_id,
                Outcome::Done(Err(Error::Internal("signed here for a server".into()))),
            )),
            (Work::Csr(csr), _) => csrs.push((m.device_id, m.index, csr)),
        }
    }
    if !csrs.is_empty() {
        // 2'. The CSRs to the server, a few at a time; each DAC written as it comes.
        let per = csrs.len().div_ceil(REMOTE_IN_FLIGHT);
        let done: Vec<Vec<(String, Outcome)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = csrs
                .chunks(per)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|(id, index, csr)| {
                                let entry = engine.issue_csr(label, csr).and_then(|der| {
                                    write_dac(&DeviceFiles::new(devices, id), &der)?;
                                    entry_from_files(&DeviceFiles::new(devices, id), id, *index)
                                });
                                (id.clone(), Outcome::Done(entry))
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        items.extend(done.into_iter().flatten());
        // 3'. The DAC files durable before the manifest names them.
        syncfs(devices)?;
    }
    Ok(InFlight { items })
}

/// Writes a device's DAC files (DER and PEM).
fn write_dac(files: &DeviceFiles, der: &[u8]) -> Result<()> {
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
        .map_err(|e| Error::Internal(e.to_string()))?;
    write_private(&files.dac_der, der)?;
    write_private(&files.dac_pem, pem.as_bytes())
}

/// Writes a device's DAC files again: an interrupted run may have left them torn or half
/// written (a DAC file not named in the manifest was never handed out).
fn replace_dac(files: &DeviceFiles, der: &[u8]) -> Result<()> {
    for path in [&files.dac_der, &files.dac_pem] {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    write_dac(files, der)
}

/// Waits for a group's commit, then publishes each recorded device (its manifest line).
fn publish(
    in_flight: InFlight,
    devices: &Path,
    manifest: &mut Manifest,
    failures: &mut Vec<Failure>,
) -> Result<u64> {
    let mut finished = 0;
    for (device_id, outcome) in in_flight.items {
        let files = DeviceFiles::new(devices, &device_id);
        let recorded = match outcome {
            Outcome::Pending(pending, entry) => match pending.wait() {
                Ok(Committed::Recorded) => Ok(*entry),
                // A fresh key cannot already hold a subject; refuse rather than keep a stray key.
                Ok(Committed::AlreadyOnRecord(_)) => Err(Failure {
                    device_id,
                    reason: "already on record".into(),
                    permanent: true,
                }),
                Err(e) => Err(Failure::new(device_id, &e)),
            },
            Outcome::Done(Ok(entry)) => Ok(entry),
            Outcome::Done(Err(e)) => Err(Failure::new(device_id, &e)),
        };
        match recorded {
            Ok(entry) => {
                // 3. Published: the manifest line.
                manifest.append(entry)?;
                files.remove_csr()?;
                finished += 1;
            }
            Err(failure) => {
                // A CSR the server may still answer stays with its key, so that a rerun sends
                // it again (and gets the DAC if it was issued); anything else goes.
                if failure.permanent || !files.csr.exists() {
                    files.remove()?;
                }
                failures.push(failure);
            }
        }
    }
    manifest.flush()?;
    Ok(finished)
}

/// Finishes or removes what an interrupted run left under `devices/`: the files of a device
/// not in the manifest are added to it when its DAC is on record, and deleted otherwise.
fn recover(engine: &Engine, label: &str, out: &Path, manifest: &mut Manifest) -> Result<u64> {
    let devices = out.join("devices");
    let listed: BTreeSet<String> = manifest
        .entries
        .iter()
        .map(|e| e.device_id.clone())
        .collect();
    let unlisted: BTreeSet<String> = fs::read_dir(&devices)
        .map_err(|e| Error::io(&devices, e))?
        .filter_map(|d| d.ok()?.file_name().into_string().ok())
        .filter_map(|name| DeviceFiles::id_of(&name).map(str::to_string))
        .filter(|id| !listed.contains(id))
        .collect();
    let mut recovered = 0;
    for id in unlisted {
        let files = DeviceFiles::new(&devices, &id);
        let on_record = fs::read(&files.dac_der)
            .ok()
            .and_then(|der| {
                let parsed = profile::cert::Parsed::from_der(&der).ok()?;
                let serial = parsed
                    .cert
                    .tbs_certificate()
                    .serial_number()
                    .as_bytes()
                    .to_vec();
                match engine {
                    Engine::Local(issuer) => {
                        let record = issuer.ledger().by_serial(&serial).ok()??;
                        (record.der == der).then_some(())
                    }
                    // The server recorded it before it answered with it.
                    Engine::Remote(_) => Some(()),
                }
            })
            .is_some();
        let has_key = DeviceFiles::KEYS.iter().any(|k| files.key(k).exists());
        if !on_record
            && has_key
            && let Ok(csr) = fs::read(&files.csr)
        {
            // Its key and CSR were durable before the CSR was sent: send it again (the DAC
            // on record for this key and subject comes back if it had been issued).
            match engine.issue_csr(label, &csr) {
                Ok(der) => replace_dac(&files, &der)?,
                Err(e) if Failure::new(id.clone(), &e).permanent => {
                    files.remove()?;
                    continue;
                }
                // Left as it is: the next rerun tries again.
                Err(_) => continue,
            }
        } else if !on_record {
            // Never recorded: the key was never certified; nothing is lost by removing it.
            files.remove()?;
            continue;
        } else {
            // On record: the run may have died between the DER and the PEM file; both are
            // written again from the DER that parsed.
            let der = fs::read(&files.dac_der).map_err(|e| Error::io(&files.dac_der, e))?;
            replace_dac(&files, &der)?;
        }
        let entry = entry_from_files(&files, &id, manifest.next_index())?;
        manifest.append(entry)?;
        files.remove_csr()?;
        recovered += 1;
    }
    if recovered > 0 {
        // DACs written by the resends durable before the manifest names them.
        syncfs(&devices)?;
    }
    manifest.flush()?;
    Ok(recovered)
}

/// The files of one device under `devices/`.
struct DeviceFiles {
    dir: PathBuf,
    id: String,
    dac_der: PathBuf,
    dac_pem: PathBuf,
    /// The CSR sent to a server (until the device is in the manifest).
    csr: PathBuf,
}

impl DeviceFiles {
    /// The key file names, plain or encrypted (`--encrypt-passphrase-env`, `--encrypt-to`).
    const KEYS: [&str; 3] = ["key.der", "key-encrypted.der", "key.cms"];

    fn new(devices: &Path, id: &str) -> Self {
        Self {
            dir: devices.to_path_buf(),
            id: id.to_string(),
            dac_der: devices.join(format!("{id}.dac.der")),
            dac_pem: devices.join(format!("{id}.dac.pem")),
            csr: devices.join(format!("{id}.csr.der")),
        }
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.{name}", self.id))
    }

    /// The device ID a file under `devices/` belongs to (IDs may hold dots; suffixes are fixed).
    fn id_of(name: &str) -> Option<&str> {
        ["dac.der", "dac.pem", "csr.der"]
            .into_iter()
            .chain(Self::KEYS)
            .find_map(|suffix| name.strip_suffix(suffix)?.strip_suffix('.'))
            .filter(|id| !id.is_empty())
    }

    fn remove(&self) -> Result<()> {
        let keys = Self::KEYS.map(|k| self.key(k));
        for path in [&self.dac_der, &self.dac_pem, &self.csr]
            .into_iter()
            .chain(&keys)
        {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(path, e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl DeviceFiles {
    fn remove_csr(&self) -> Result<()> {
        match fs::remove_file(&self.csr) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&self.csr, e)),
            _ => Ok(()),
        }
    }
}

fn entry_from_files(files: &DeviceFiles, id: &str, index: u64) -> Result<ManifestEntry> {
    let der = fs::read(&files.dac_der).map_err(|e| Error::io(&files.dac_der, e))?;
    let pem = fs::read(&files.dac_pem).map_err(|e| Error::io(&files.dac_pem, e))?;
    let key_file = DeviceFiles::KEYS
        .into_iter()
        .find(|f| files.key(f).exists())
        .unwrap_or("key.der");
    let key_path = files.key(key_file);
    let key = fs::read(&key_path).map_err(|e| Error::io(&key_path, e))?;
    let parsed = profile::cert::Parsed::from_der(&der)?;
    let tbs = parsed.cert.tbs_certificate();
    let ids = crate::matter::read_subject(tbs.subject())?;
    Ok(ManifestEntry {
        index,
        device_id: id.to_string(),
        serial: asn1::hex(tbs.serial_number().as_bytes()).to_uppercase(),
        subject: format!(
            "CN={},VID={},PID={}",
            ids.cn.unwrap_or_default(),
            ids.vid.map(|v| v.to_string()).unwrap_or_default(),
            ids.pid.map(|p| p.to_string()).unwrap_or_default()
        ),
        dac_der_sha256: sha256_hex(&der),
        dac_pem_sha256: sha256_hex(&pem),
        key_file: format!("{id}.{key_file}"),
        key_sha256: sha256_hex(&key),
    })
}

/// `manifest.jsonl` and `manifest.csv`, appended per group.
struct Manifest {
    entries: Vec<ManifestEntry>,
    jsonl: Option<fs::File>,
    csv: Option<fs::File>,
    entries_written: u64,
    first_serial: Option<String>,
    last_serial: Option<String>,
}

const CSV_HEADER: &str =
    "index,device_id,serial,subject,dac_der_sha256,dac_pem_sha256,key_file,key_sha256\n";

impl Manifest {
    /// Reads the JSON-lines manifest, ignoring a torn last line.
    fn load(out: &Path) -> Result<Self> {
        let mut entries = Vec::new();
        if let Ok(f) = fs::File::open(out.join("manifest.jsonl")) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ManifestEntry>(&line) {
                    Ok(e) => entries.push(e),
                    Err(_) => break,
                }
            }
        }
        Ok(Self {
            entries_written: entries.len() as u64,
            first_serial: entries.first().map(|e| e.serial.clone()),
            last_serial: entries.last().map(|e| e.serial.clone()),
            entries,
            jsonl: None,
            csv: None,
        })
    }

    fn next_index(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.index + 1)
    }

    /// Rewrites both files from the entries (drops torn lines) and opens them for appending.
    fn rewrite(&mut self, out: &Path) -> Result<()> {
        let mut jsonl = String::new();
        let mut csv = String::from(CSV_HEADER);
        for e in &self.entries {
            jsonl.push_str(&json_line(e)?);
            csv.push_str(&csv_line(e));
        }
        dev::write_file(out, "manifest.jsonl", jsonl.as_bytes(), 0o600)?;
        dev::write_file(out, "manifest.csv", csv.as_bytes(), 0o600)?;
        let open = |name: &str| {
            fs::OpenOptions::new()
                .append(true)
                .open(out.join(name))
                .map_err(|e| Error::io(out.join(name), e))
        };
        self.jsonl = Some(open("manifest.jsonl")?);
        self.csv = Some(open("manifest.csv")?);
        // Entries are only needed for recovery; appends from here on are streamed.
        self.entries_written = self.entries.len() as u64;
        Ok(())
    }

    fn append(&mut self, e: ManifestEntry) -> Result<()> {
        if self.first_serial.is_none() {
            self.first_serial = Some(e.serial.clone());
        }
        self.last_serial = Some(e.serial.clone());
        self.entries_written += 1;
        let (jsonl, csv) = (json_line(&e)?, csv_line(&e));
        if let (Some(j), Some(c)) = (self.jsonl.as_mut(), self.csv.as_mut()) {
            j.write_all(jsonl.as_bytes())
                .and_then(|_| c.write_all(csv.as_bytes()))
                .map_err(|err| Error::io("manifest", err))?;
        } else {
            // Before `rewrite` (recovery): keep it for the rewrite.
            self.entries.push(e);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        for f in [self.jsonl.as_mut(), self.csv.as_mut()]
            .into_iter()
            .flatten()
        {
            f.flush().map_err(|e| Error::io("manifest", e))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        for f in [self.jsonl.as_mut(), self.csv.as_mut()]
            .into_iter()
            .flatten()
        {
            f.sync_all().map_err(|e| Error::io("manifest", e))?;
        }
        Ok(())
    }
}

fn json_line(e: &ManifestEntry) -> Result<String> {
    let mut s = serde_json::to_string(e).map_err(|err| Error::Internal(err.to_string()))?;
    s.push('\n');
    Ok(s)
}

fn csv_line(e: &ManifestEntry) -> String {
    // Device IDs are restricted to [A-Za-z0-9._-] and subjects built from them, so no quoting
    // is needed except for the subject's commas.
    format!(
        "{},{},{},\"{}\",{},{},{},{}\n",
        e.index,
        e.device_id,
        e.serial,
        e.subject,
        e.dac_der_sha256,
        e.dac_pem_sha256,
        e.key_file,
        e.key_sha256
    )
}

/// Reads one hardware ID per line: first CSV column, `#` comments, blank lines and a
/// `device_id` header skipped. IDs become CNs and file names, so they are limited to
/// letters, digits, '.', '_' and '-', at most 64 characters, and must be unique.
pub fn read_device_ids(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut ids = Vec::new();
    let mut seen = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let id = line
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if id.is_empty() || id.starts_with('#') || (n == 0 && id.eq_ignore_ascii_case("device_id"))
        {
            continue;
        }
        let bad = |problem: &str| Error::io(path, format!("line {}: {id:?}: {problem}", n + 1));
        crate::matter::check_cn(id).map_err(|e| bad(&e.to_string()))?;
        // Stricter than the CN rule: an ID also names the device's files.
        if id.len() > crate::matter::MAX_CN_CHARS
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
            || id.starts_with('.')
        {
            return Err(bad(
                "a device ID is 1-64 of letters, digits, '.', '_' or '-' (not starting with '.')",
            ));
        }
        if id.contains("Mvid") || id.contains("Mpid") {
            return Err(bad("a device ID may not contain Matter CN tags"));
        }
        if !seen.insert(id.to_string()) {
            return Err(bad("listed twice"));
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// How device keys are protected for the line.
pub enum KeyProtection {
    /// PKCS#8 PBES2 under a passphrase.
    Passphrase(KeyEncryptor),
    /// CMS EnvelopedData to the line's public key.
    Line(crate::envelope::Recipient),
}

/// Encrypts PKCS#8 keys for the line: PBES2 (RFC 8018 §6.2) with PBKDF2-HMAC-SHA256 and
/// AES-256-CBC, the key derived once per batch (one salt), a fresh IV per key. OpenSSL reads it:
/// `openssl pkcs8 -inform DER -in key-encrypted.der -passin env:VAR`.
pub struct KeyEncryptor {
    key: [u8; 32],
    salt: [u8; 16],
    rng: SystemRandom,
}

impl KeyEncryptor {
    pub fn new(passphrase: &[u8]) -> Result<Self> {
        if passphrase.len() < 12 {
            return Err(Error::KeyFile {
                path: PathBuf::from("(batch passphrase)"),
                problem: "use at least 12 characters".into(),
            });
        }
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        rng.fill(&mut salt)
            .map_err(|_| Error::Internal("the system random generator failed".into()))?;
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(passphrase, &salt, PBKDF2_ROUNDS, &mut key);
        Ok(Self { key, salt, rng })
    }

    /// The DER `EncryptedPrivateKeyInfo` of `pkcs8` (RFC 5208 §6).
    pub fn encrypt(&self, pkcs8: &[u8]) -> Result<Vec<u8>> {
        let mut iv = [0u8; 16];
        self.rng
            .fill(&mut iv)
            .map_err(|_| Error::Internal("the system random generator failed".into()))?;
        let ciphertext = cbc::Encryptor::<aes::Aes256>::new_from_slices(&self.key, &iv)
            .map_err(|e| Error::Internal(e.to_string()))?
            .encrypt_padded_vec::<Pkcs7>(pkcs8);
        // OIDs: PBES2 1.2.840.113549.1.5.13, PBKDF2 1.2.840.113549.1.5.12,
        // hmacWithSHA256 1.2.840.113549.2.9, aes256-CBC 2.16.840.1.101.3.4.1.42.
        const PBES2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
        const PBKDF2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c];
        const HMAC_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
        const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
        let oid = |o: &[u8]| asn1::tlv(tag::OID, &[o]);
        let prf = asn1::tlv(tag::SEQUENCE, &[&oid(HMAC_SHA256), &[0x05, 0x00]]);
        let kdf_params = asn1::tlv(
            tag::SEQUENCE,
            &[
                &asn1::tlv(tag::OCTET_STRING, &[&self.salt]),
                &asn1::unsigned_integer(&PBKDF2_ROUNDS.to_be_bytes()),
                &prf,
            ],
        );
        let kdf = asn1::tlv(tag::SEQUENCE, &[&oid(PBKDF2), &kdf_params]);
        let enc = asn1::tlv(
            tag::SEQUENCE,
            &[&oid(AES256_CBC), &asn1::tlv(tag::OCTET_STRING, &[&iv])],
        );
        let alg = asn1::tlv(
            tag::SEQUENCE,
            &[&oid(PBES2), &asn1::tlv(tag::SEQUENCE, &[&kdf, &enc])],
        );
        Ok(asn1::tlv(
            tag::SEQUENCE,
            &[&alg, &asn1::tlv(tag::OCTET_STRING, &[&ciphertext])],
        ))
    }
}

/// `<out>.tar`: the whole batch directory as one uncompressed tar (what a line loads when it
/// takes one file), written to a temporary name, synced, then renamed.
fn write_archive(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::io(out, "the batch directory has no name"))?;
    let archive = out.with_extension("tar");
    let partial = out.with_extension("tar.partial");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| Error::io(&partial, e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(name, out)
        .map_err(|e| Error::io(&archive, e))?;
    let file = tar
        .into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(|e| Error::io(&archive, e))?;
    file.sync_all().map_err(|e| Error::io(&archive, e))?;
    fs::rename(&partial, &archive).map_err(|e| Error::io(&archive, e))?;
    Ok(archive)
}

fn write_chain(out: &Path, facts: &Facts) -> Result<()> {
    let mut certs: Vec<(&str, &[u8])> = vec![("pai", &facts.pai)];
    if let Some(paa) = &facts.paa {
        certs.push(("paa", paa));
    }
    for (name, der) in certs {
        dev::write_file(out, &format!("{name}.der"), der, 0o600)?;
        dev::write_pem(out, &format!("{name}.pem"), "CERTIFICATE", &[der])?;
        std::fs::set_permissions(
            out.join(format!("{name}.pem")),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

fn mkdir_private(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| Error::io(path, e))
}

/// Flushes every dirty page of the file system holding `dir` (one call per group instead of
/// an fsync per file).
fn syncfs(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io(dir, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    asn1::hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_keys_decrypt_with_the_passphrase() {
        use p256::pkcs8::DecodePrivateKey;
        let enc = KeyEncryptor::new(b"line passphrase 1").expect("derive");
        let (pkcs8, _) = signer::generate_p256().expect("keygen");
        let der = enc.encrypt(&pkcs8).expect("encrypt");
        let key = p256::SecretKey::from_pkcs8_encrypted_der(&der, b"line passphrase 1")
            .expect("decrypts");
        let plain = p256::SecretKey::from_pkcs8_der(&pkcs8).expect("plain");
        assert_eq!(key.to_bytes(), plain.to_bytes());
        assert!(p256::SecretKey::from_pkcs8_encrypted_der(&der, b"wrong passphrase").is_err());
    }

    #[test]
    fn device_lists_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("d.csv");
        fs::write(&p, "device_id,notes\nhw-1,x\n# comment\n\nhw-2\n").expect("write");
        assert_eq!(read_device_ids(&p).expect("ok"), ["hw-1", "hw-2"]);
        fs::write(&p, "hw-1\nhw-1\n").expect("write");
        assert!(read_device_ids(&p).is_err());
        fs::write(&p, "../etc\n").expect("write");
        assert!(read_device_ids(&p).is_err());
    }
}
