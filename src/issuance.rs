//! The one issuance path every front end calls (EST, `issue`, `batch`): policy → profile →
//! signer → self-check → ledger. Nothing is returned that is not checked and on record.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::asn1;
use crate::config::{Config, LabelConfig, SignerConfig};
use crate::csr::EnrollmentRequest;
use crate::error::{Error, Result};
use crate::matter;
use crate::profile::cert::Parsed;
use crate::profile::check::{self, CaRole};
use crate::profile::{self, Dac, DacProfile, DacSubject, Pai};
use crate::signer::{self, FileSigner, PassphraseSource, Pkcs11Signer, Signer};
use crate::store::{Admission, Committed, Completer, DacRecord, Ledger, Pending, Status};

/// A label, loaded: its PAI, chain, signer and policy.
pub struct Label {
    pub config: LabelConfig,
    pub pai: Pai,
    /// Certificates above the PAI (PAA last), DER.
    pub chain: Vec<Vec<u8>>,
    pub signer: Arc<dyn Signer>,
    pub profile: DacProfile,
}

/// A DAC issued and recorded.
#[derive(Clone, Debug)]
pub struct Issued {
    pub dac: Dac,
    /// The DAC was already on record (the request repeated one): nothing new was issued.
    pub repeat: bool,
}

impl Issued {
    /// The DAC of a record: what a repeated request is answered with.
    pub fn from_record(record: DacRecord) -> Result<Issued> {
        let parsed = Parsed::from_der(&record.der)?;
        let ids = matter::read_subject(parsed.cert.tbs_certificate().subject())?;
        let missing = |what: &str| {
            Error::Ledger(format!(
                "DAC serial {} on record has no {what}",
                asn1::hex(&record.serial)
            ))
        };
        let subject = DacSubject {
            cn: ids.cn.unwrap_or_default(),
            vid: ids.vid.ok_or_else(|| missing("VID"))?,
            pid: ids.pid.ok_or_else(|| missing("PID"))?,
        };
        let DacRecord { der, serial, .. } = record;
        Ok(Issued {
            dac: Dac {
                der,
                serial,
                subject,
                not_before: parsed.not_before,
                not_after: parsed.not_after,
            },
            repeat: true,
        })
    }

    /// The DAC to return once its commit resolved: this one, or, when the same key already held
    /// the subject (a retry after a lost response), the one on record (idempotent retry).
    pub fn settle(self, committed: Committed) -> Result<Issued> {
        match committed {
            Committed::Recorded => Ok(self),
            Committed::AlreadyOnRecord(record) => Issued::from_record(*record),
        }
    }
}

/// A DAC ready to be returned once on record: built, signed and self-checked with its ledger
/// record, or the DAC already on record that the request repeats.
pub struct Prepared {
    pub issued: Issued,
    /// What to commit; `None` when the DAC is already on record.
    commit: Option<(DacRecord, Admission)>,
}

impl Prepared {
    /// The DAC on record that a request repeats (a client that lost the response): returned
    /// as it is, nothing signed or written.
    pub fn on_record(record: DacRecord) -> Result<Self> {
        Ok(Self {
            issued: Issued::from_record(record)?,
            commit: None,
        })
    }

    /// True when this is a DAC already on record, not a new one.
    pub fn is_repeat(&self) -> bool {
        self.commit.is_none()
    }
}

/// What a caller asks for beyond the CSR.
#[derive(Clone, Debug, Default)]
pub struct IssueOptions {
    /// Who is asking (logged and recorded).
    pub requester: String,
    /// A token id this issuance spends.
    pub token: Option<String>,
    /// simplereenroll: the DAC being renewed and the subject it keeps.
    pub renews: Option<(DacRecord, DacSubject)>,
    /// serverkeygen: the server made the key (recorded with the DAC).
    pub server_keygen: bool,
    /// Where a repeat of a DAC on record is found (ignored for a renewal, whose repeat
    /// `policy` finds).
    pub repeat: RepeatCheck,
}

/// Where a request that repeats the DAC on record (a client that lost its response asking
/// again: the same key, subject and label) is found; either way it gets that DAC, and nothing
/// new is recorded or counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RepeatCheck {
    /// Looked up in the ledger before anything is signed, for a caller whose decision before
    /// the commit depends on it (a spent token, approval, a rate limit: see
    /// `est::repeat_check`); and a full quota refuses before signing.
    #[default]
    Before,
    /// Left to the commit, which finds the same key holding the subject and answers
    /// [`Committed::AlreadyOnRecord`] (the newly signed DAC is then not recorded): no ledger
    /// read before signing, neither the repeat nor the quota count (the commit enforces the
    /// quota); one round trip less per enrollment on PostgreSQL (issue 16).
    AtCommit,
}

/// The labels of a configuration, loaded and checked ([`Issuer::load`]).
pub struct Labels(BTreeMap<String, Arc<Label>>);

impl Labels {
    /// The issuer over these labels and `ledger`.
    pub fn with_ledger(self, ledger: Arc<dyn Ledger>) -> Issuer {
        Issuer {
            labels: self.0,
            ledger,
        }
    }

    /// MATTER.md "Test VIDs": a PAI with a test VID (FFF1–FFF4) is development material, refused
    /// unless the config says `danger_development_pki = true` or the caller passed the danger
    /// switch. Every command that signs applies it (`serve`, `issue`, `batch`).
    pub fn refuse_development_pki(&self, config: &Config, danger_switch: bool) -> Result<()> {
        let test_vid = self
            .0
            .values()
            .find(|l| (0xfff1..=0xfff4).contains(&l.pai.vid.value()));
        match test_vid {
            Some(label) if !config.danger_development_pki && !danger_switch => Err(Error::Config {
                file: config.path.clone(),
                key: format!("labels.{}.pai", label.config.name),
                problem: format!(
                    "the PAI has test VID {}: development material; set \
                         danger_development_pki = true or pass --danger-allow-development-pki \
                         if that is intended",
                    label.pai.vid
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// The issuance service.
pub struct Issuer {
    labels: BTreeMap<String, Arc<Label>>,
    ledger: Arc<dyn Ledger>,
}

impl Issuer {
    /// Loads every label of `config`: PAI and chain checked against MATTER.md, signer loaded and
    /// matched to the PAI's public key.
    pub fn new(config: &Config, ledger: Arc<dyn Ledger>) -> Result<Self> {
        Ok(Self::load(config)?.with_ledger(ledger))
    }

    /// Loads and checks every label of `config` without touching the ledger, so that a refused
    /// configuration changes nothing; [`Labels::with_ledger`] completes the issuer.
    pub fn load(config: &Config) -> Result<Labels> {
        let mut labels = BTreeMap::new();
        for (name, lc) in &config.labels {
            let label = load_label(lc).map_err(|e| match e {
                // Issue 18 item 3: a token that will not open names the key to fix, not only
                // the module, token and key it tried.
                Error::Pkcs11 { .. } => Error::Config {
                    file: config.path.clone(),
                    key: config.locate(&format!("labels.{name}.signer")),
                    problem: e.to_string(),
                },
                e => e,
            })?;
            labels.insert(name.clone(), Arc::new(label));
        }
        Ok(Labels(labels))
    }

    /// The label named `name`.
    pub fn label(&self, name: &str) -> Result<&Arc<Label>> {
        self.labels
            .get(name)
            .ok_or_else(|| Error::UnknownLabel(name.to_string()))
    }

    /// All labels.
    pub fn labels(&self) -> impl Iterator<Item = &Arc<Label>> {
        self.labels.values()
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Issues a DAC for `req` on `label`. Blocking (signing, fsync): call off the async runtime.
    pub fn issue(
        &self,
        label: &str,
        req: &EnrollmentRequest,
        opts: &IssueOptions,
    ) -> Result<Issued> {
        self.issue_with(label, req, opts, |_, _| Ok(()))
    }

    /// As [`Issuer::issue`], asking `authorize` about the subject the profile decided before
    /// anything is signed (the requester's VID/PID policy).
    pub fn issue_with(
        &self,
        label: &str,
        req: &EnrollmentRequest,
        opts: &IssueOptions,
        authorize: impl FnOnce(&DacSubject, Option<&DacRecord>) -> Result<()>,
    ) -> Result<Issued> {
        let prepared = self.prepare_with(label, req, opts, authorize)?;
        let committed = self.submit(&prepared).wait()?;
        prepared.issued.settle(committed)
    }

    /// The CPU part of [`Issuer::issue_with`]: decides the subject, looks for the DAC on record
    /// that the request repeats, asks `authorize` (with that DAC, if any), then either returns
    /// the DAC on record or signs and self-checks a new one, without recording anything
    /// ([`Issuer::submit`] or [`Issuer::submit_then`] does).
    ///
    /// A repeat is answered here, before the quota and the ledger's uniqueness and token rules,
    /// which would refuse a new DAC: a client whose response was lost can always get the DAC
    /// that is on record and counted.
    pub fn prepare_with(
        &self,
        label: &str,
        req: &EnrollmentRequest,
        opts: &IssueOptions,
        authorize: impl FnOnce(&DacSubject, Option<&DacRecord>) -> Result<()>,
    ) -> Result<Prepared> {
        let label = self.label(label)?;
        let subject = match &opts.renews {
            Some((_, keep)) => keep.clone(),
            None => label
                .profile
                .subject(&label.pai, &req.ids, &req.public_key)?,
        };
        // A renewal's repeat is its successor, which `policy` finds; here the holder of the
        // subject is the DAC being renewed.
        let repeat = match (&opts.renews, opts.repeat) {
            (Some(_), _) | (None, RepeatCheck::AtCommit) => None,
            (None, RepeatCheck::Before) => self.repeat_of(label, &subject, &req.public_key)?,
        };
        authorize(&subject, repeat.as_ref())?;
        if let Some(record) = repeat {
            return Prepared::on_record(record);
        }
        let serial = profile::random_serial()?;
        match self.prepare_subject(label, &subject, &serial, &req.public_key, opts) {
            // The quota filled between the look-up above and this check; if it was this very
            // request (its first attempt committing meanwhile), answer with its DAC.
            Err(Error::QuotaExhausted { .. }) if opts.renews.is_none() => {
                match self.repeat_of(label, &subject, &req.public_key)? {
                    Some(record) => Prepared::on_record(record),
                    None => Err(Error::QuotaExhausted {
                        label: label.config.name.clone(),
                        quota: label.config.quota.unwrap_or(0),
                    }),
                }
            }
            other => other,
        }
    }

    /// The DAC on record that a request for `subject` with `public_key` on `label` repeats: the
    /// same key holding the same subject on the same label, unrevoked.
    pub fn repeat_of(
        &self,
        label: &Label,
        subject: &DacSubject,
        public_key: &[u8; 65],
    ) -> Result<Option<DacRecord>> {
        let holder = self.ledger.by_subject(&label.pai.skid, &subject.to_der())?;
        Ok(holder.filter(|h| {
            h.label == label.config.name
                && h.status == Status::Issued
                && h.public_key().as_ref() == Some(public_key)
        }))
    }

    /// Submits a prepared DAC to the ledger. Its DAC must not leave before the [`Pending`]
    /// resolves `Ok`.
    pub fn submit(&self, prepared: &Prepared) -> Pending<Committed> {
        match &prepared.commit {
            Some((record, admission)) => self.ledger.submit(record, admission),
            None => {
                let (done, pending) = Pending::new();
                done.complete(Ok(Committed::Recorded));
                pending
            }
        }
    }

    /// Submits a prepared DAC to the ledger and hands it, with the commit's outcome, to `then`
    /// on the ledger's thread (keep it short: it delays the next commit). The DAC must not leave
    /// unless that outcome is `Ok`. For async callers: the outcome reaches them in one wake-up.
    /// A DAC already on record goes to `then` at once, on this thread.
    pub fn submit_then(
        &self,
        prepared: Prepared,
        then: impl FnOnce(Issued, Result<Committed>) + Send + 'static,
    ) {
        let Prepared { issued, commit } = prepared;
        match commit {
            Some((record, admission)) => self.ledger.submit_then(
                record,
                admission,
                Completer::new(move |outcome| then(issued, outcome)),
            ),
            None => then(issued, Ok(Committed::Recorded)),
        }
    }

    /// Builds, signs and self-checks a DAC and its ledger record, without recording it (the
    /// batch writes the key first, then submits; see [`Issuer::submit`]).
    pub fn prepare_subject(
        &self,
        label: &Label,
        subject: &DacSubject,
        serial: &[u8],
        public_key: &[u8; 65],
        opts: &IssueOptions,
    ) -> Result<Prepared> {
        let subject_der = subject.to_der();
        let renews = opts.renews.as_ref().map(|(r, _)| r.serial.clone());
        // A renewal counts against the quota unless the label says otherwise.
        let counted = renews.is_none() || label.config.renewal.counts_against_quota;
        let quota = label.config.quota.filter(|_| counted);
        // A cheap refusal before signing when the quota is used up (many requests arrive at once
        // at the end of a quota); the ledger re-checks it, and subject uniqueness, atomically at
        // commit, so a refused DAC is signed but never recorded or returned. Not when the commit
        // finds the repeat: a repeat on a full quota must reach it.
        if let Some(quota) = quota
            && opts.repeat == RepeatCheck::Before
            && self.ledger.count(&label.config.name)? >= quota
        {
            return Err(Error::QuotaExhausted {
                label: label.config.name.clone(),
                quota,
            });
        }
        let now = asn1::now();
        let dac = label.profile.build(
            &label.pai,
            subject,
            serial,
            public_key,
            label.signer.as_ref(),
            now,
        )?;
        let record = DacRecord {
            serial: dac.serial.clone(),
            label: label.config.name.clone(),
            issuer_key: label.pai.skid.clone(),
            subject: subject.to_string(),
            subject_der,
            vid: subject.vid.value(),
            pid: subject.pid.value(),
            requester: opts.requester.clone(),
            issued_at: now,
            der: dac.der.clone(),
            status: Status::Issued,
            renews,
            server_keygen: opts.server_keygen,
        };
        Ok(Prepared {
            issued: Issued { dac, repeat: false },
            commit: Some((
                record,
                Admission {
                    quota,
                    token: opts.token.clone(),
                    uncounted: !counted,
                },
            )),
        })
    }
}

/// Loads one label and checks its material.
pub fn load_label(lc: &LabelConfig) -> Result<Label> {
    let key = |k: &str| format!("labels.{}.{k}", lc.name);
    let pai_der = read_cert(&lc.pai).map_err(|e| e.in_key(key("pai")))?;
    let pai = Pai::from_der(&pai_der).map_err(|e| Error::Config {
        file: lc.pai.clone(),
        key: format!("labels.{}.pai", lc.name),
        problem: e.to_string(),
    })?;
    let mut chain = Vec::new();
    for path in &lc.chain {
        chain.push(read_cert(path).map_err(|e| e.in_key(key("chain")))?);
    }
    check_chain(&pai, &chain).map_err(|e| Error::Config {
        file: lc.chain.first().cloned().unwrap_or_else(|| lc.pai.clone()),
        key: format!("labels.{}.chain", lc.name),
        problem: e.to_string(),
    })?;
    let signer: Arc<dyn Signer> = match &lc.signer {
        SignerConfig::File { key, passphrase } => {
            Arc::new(FileSigner::load(key, passphrase.as_ref()).map_err(|e| {
                // The key named by the file the error is about: the key file or the passphrase.
                let which = match (&e, passphrase) {
                    (Error::KeyFile { path, .. } | Error::Io { path, .. }, Some(source))
                        if path != key =>
                    {
                        match source {
                            PassphraseSource::Env(_) => "passphrase_env",
                            PassphraseSource::File(_) => "passphrase_file",
                        }
                    }
                    _ => "file",
                };
                e.in_key(format!("labels.{}.signer.{which}", lc.name))
            })?)
        }
        // Finds the key by the PAI's public key and refuses to open otherwise.
        SignerConfig::Pkcs11(config) => Arc::new(Pkcs11Signer::open(config, pai.public_key())?),
    };
    let kind = match &lc.signer {
        SignerConfig::File { .. } => "file",
        SignerConfig::Pkcs11(_) => "pkcs11",
    };
    let signer: Arc<dyn Signer> = Arc::new(signer::Measured::new(signer, kind));
    if signer.public_key() != pai.public_key() {
        let path = match &lc.signer {
            SignerConfig::File { key, .. } => key.clone(),
            SignerConfig::Pkcs11(config) => config.module.clone(),
        };
        return Err(Error::KeyFile {
            path,
            problem: format!(
                "this key does not match the public key of the PAI {}",
                lc.pai.display()
            ),
        });
    }
    let profile = DacProfile {
        label: lc.name.clone(),
        pids: lc.pids.clone(),
        validity: lc.validity,
        cn_prefix: lc.cn_prefix.clone(),
        other_attributes: lc.other_subject_attributes,
        crl_distribution_point: lc
            .crl
            .as_ref()
            .filter(|c| c.in_dacs)
            .and_then(|c| c.url.as_ref())
            .map(|u| u.as_str().to_string()),
    };
    Ok(Label {
        config: lc.clone(),
        pai,
        chain,
        signer,
        profile,
    })
}

/// PAI → … → PAA: each certificate signed by the next, the last a PAA per MATTER.md, and the
/// PAI's VID equal to the PAA's when it has one.
pub fn check_chain(pai: &Pai, chain: &[Vec<u8>]) -> Result<()> {
    let mut child_der = pai.der.clone();
    for (i, parent_der) in chain.iter().enumerate() {
        let child = Parsed::from_der(&child_der)?;
        let parent = Parsed::from_der(parent_der)?;
        if child.issuer_der != parent.subject_der
            || !signer::verify(&parent.public_key, &child.tbs_der, child.signature())
        {
            return Err(Error::BadRequest(format!(
                "certificate {} of the chain did not sign the one below it",
                i + 1
            )));
        }
        if i + 1 == chain.len() {
            let facts = check::ca(&parent, CaRole::Paa)?;
            if facts.vid.is_some_and(|v| v != pai.vid) {
                return Err(Error::BadRequest(
                    "the PAI's VID differs from the PAA's VID".into(),
                ));
            }
        }
        child_der = parent_der.clone();
    }
    Ok(())
}

/// Reads one PEM or DER certificate.
pub fn read_cert(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(b"-----BEGIN") {
        let text = String::from_utf8_lossy(&bytes);
        let (label, der) = der::pem::decode_vec(text.as_bytes())
            .map_err(|e| Error::io(path, format!("bad PEM: {e}")))?;
        if label != "CERTIFICATE" {
            return Err(Error::io(
                path,
                format!("PEM label {label}, expected CERTIFICATE"),
            ));
        }
        Ok(der)
    } else {
        Ok(bytes)
    }
}
