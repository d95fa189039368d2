//! Revocation: a ledger status plus a CRL per label, signed by the label's signer (file or HSM)
//! and published where the vendor's DCL revocation point says (MATTER.md "Revocation";
//! DESIGN.md "The operator plane").
//!
//! [`CrlService`] is the one path for both: [`CrlService::revoke`] marks the DAC revoked in the
//! ledger and reissues its label's CRL; [`CrlService::refresh`] reissues every CRL that is due.
//! [`publish`] serves the current CRLs over plain HTTP.

pub mod crl;
pub mod publish;
pub mod reason;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::asn1;
use crate::config::CrlConfig;
use crate::error::{Error, Result};
use crate::issuance::{Issuer, Label};
use crate::store::{CrlRecord, DacRecord};

pub use reason::{REASON_NAMES, RevocationReason};

/// Longest DCL `dataURL` (MATTER.md "Revocation": http or https, ≤ 256).
pub const MAX_DATA_URL_CHARS: usize = 256;

/// Longest DCL revocation point `label` (MATTER.md "Revocation": ≤ 64).
pub const MAX_DCL_LABEL_CHARS: usize = 64;

/// A CRL is reissued once this fraction of its validity (thisUpdate → nextUpdate) has passed,
/// so that a fetched CRL is always valid for at least the other half: a commissioner's
/// revocation tooling that fetches at any moment never gets one about to lapse.
pub const REFRESH_AT: (i64, i64) = (1, 2);

/// The URL a label's CRL is published at (the DCL revocation point's `dataURL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlUrl {
    text: String,
    /// Byte offset of the path in `text`.
    path_at: usize,
}

impl CrlUrl {
    /// Parses an `http://` or `https://` URL of at most [`MAX_DATA_URL_CHARS`] characters with a
    /// host, a path (default `/`), and no query or fragment (the listener matches on the path).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
            .ok_or_else(|| format!("{text:?}: the CRL URL must be http:// or https://"))?;
        if text.chars().count() > MAX_DATA_URL_CHARS {
            return Err(format!(
                "{text:?}: a DCL dataURL is at most {MAX_DATA_URL_CHARS} characters"
            ));
        }
        if !text.is_ascii()
            || text
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
        {
            return Err(format!(
                "{text:?}: printable ASCII without spaces, query or fragment"
            ));
        }
        let host_len = rest.find('/').unwrap_or(rest.len());
        if host_len == 0 {
            return Err(format!("{text:?}: the URL has no host"));
        }
        let path_at = text.len() - rest.len() + host_len;
        Ok(Self {
            text: text.to_string(),
            path_at,
        })
    }

    /// The whole URL.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its path (`/` when the URL has none).
    pub fn path(&self) -> &str {
        match &self.text[self.path_at..] {
            "" => "/",
            p => p,
        }
    }
}

/// What a revocation did.
#[derive(Debug)]
pub struct Revoked {
    /// The DAC's record, now revoked.
    pub record: DacRecord,
    /// The label's reissued CRL; `None` when the label publishes none (no `[labels.NAME.crl]`);
    /// an error when reissuing failed (the revocation stands and the next refresh retries).
    pub crl: Option<Result<Arc<CrlRecord>>>,
}

/// The DCL revocation point fields for a label (MATTER.md "Revocation"), ready to paste into
/// `dcld tx pki add-revocation-point`. Field names are the DCL's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DclRevocationPoint {
    pub vid: u16,
    /// The PAI's PID, or 0.
    pub pid: u16,
    #[serde(rename = "isPAA")]
    pub is_paa: bool,
    pub label: String,
    /// The CRL signer: the PAI itself, PEM.
    pub crl_signer_certificate: String,
    /// The PAI's SKID, uppercase hex.
    #[serde(rename = "issuerSubjectKeyID")]
    pub issuer_subject_key_id: String,
    #[serde(rename = "dataURL")]
    pub data_url: String,
    /// 1 = a DER CRL (the only type the DCL defines).
    pub revocation_type: u8,
}

/// Revocations and CRLs over the labels of an [`Issuer`].
pub struct CrlService {
    issuer: Arc<Issuer>,
    /// The current CRL of each label that has one, as published.
    current: RwLock<BTreeMap<String, Arc<CrlRecord>>>,
    /// One CRL is made at a time, so that numbers reach the ledger in order.
    issuing: Mutex<()>,
}

impl CrlService {
    /// The service over `issuer`'s labels, with the CRLs kept in its ledger.
    pub fn new(issuer: Arc<Issuer>) -> Result<Self> {
        let mut current = BTreeMap::new();
        for label in issuer.labels() {
            if let Some(crl) = issuer.ledger().crl(&label.config.name)? {
                current.insert(label.config.name.clone(), Arc::new(crl));
            }
        }
        Ok(Self {
            issuer,
            current: RwLock::new(current),
            issuing: Mutex::new(()),
        })
    }

    /// Revokes the DAC with `serial` for `reason` and reissues its label's CRL (when the label
    /// publishes one). An unknown or already revoked serial changes nothing.
    /// `by` names who asked (audited with the revocation).
    pub fn revoke(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        now: i64,
        by: &str,
    ) -> Result<Revoked> {
        let record = self.issuer.ledger().revoke(serial, reason, now, by)?;
        let label = self.issuer.label(&record.label)?;
        let crl = label
            .config
            .crl
            .is_some()
            .then(|| self.issue(&record.label, now));
        if let Some(Err(e)) = &crl {
            tracing::error!(label = %record.label, error = %e,
                "the DAC is revoked but its CRL could not be reissued; the next refresh retries");
        }
        Ok(Revoked { record, crl })
    }

    /// Issues a new CRL for `label`: the next cRLNumber, every revoked DAC of the label, signed
    /// by its signer, checked, kept in the ledger and written to the label's CRL file.
    pub fn issue(&self, label: &str, now: i64) -> Result<Arc<CrlRecord>> {
        let label = self.issuer.label(label)?.clone();
        let _one = self
            .issuing
            .lock()
            .map_err(|_| Error::Internal("the CRL lock is poisoned".into()))?;
        let ledger = self.issuer.ledger();
        let entries = ledger.revoked(&label.config.name)?;
        let number = ledger.next_crl_number(&label.config.name)?;
        let period = label
            .config
            .crl
            .as_ref()
            .map_or(CrlConfig::DEFAULT_NEXT_UPDATE, |c| c.next_update);
        let content = crl::CrlContent {
            number,
            this_update: now,
            next_update: now + period.as_secs() as i64,
            entries: &entries,
        };
        let der = crl::build(&label.pai, label.signer.as_ref(), &content)?;
        let record = CrlRecord {
            number,
            this_update: content.this_update,
            next_update: content.next_update,
            entries: entries.len() as u64,
            der,
        };
        ledger.put_crl(&label.config.name, &record)?;
        if let Some(c) = &label.config.crl {
            write_atomically(&c.file, &record.der)?;
        }
        let record = Arc::new(record);
        if let Ok(mut current) = self.current.write() {
            current.insert(label.config.name.clone(), record.clone());
        }
        tracing::info!(label = %label.config.name, number, entries = record.entries,
            bytes = record.der.len(), next_update = %asn1::format_time(record.next_update),
            "CRL issued");
        Ok(record)
    }

    /// The label's current CRL, issuing one first if it has none or it is due
    /// ([`CrlService::is_due`]).
    pub fn current_or_issue(&self, label: &str, now: i64) -> Result<Arc<CrlRecord>> {
        match self.current(label) {
            Some(crl) if !self.is_due(label, &crl, now)? => Ok(crl),
            _ => self.issue(label, now),
        }
    }

    /// Whether `crl` should be replaced: [`REFRESH_AT`] of its validity has passed, or the
    /// label's revoked DACs are not the ones it lists (a revocation whose reissue failed, or
    /// one made while this process was not running).
    pub fn is_due(&self, label: &str, crl: &CrlRecord, now: i64) -> Result<bool> {
        let (num, den) = REFRESH_AT;
        let refresh = crl.this_update + (crl.next_update - crl.this_update) * num / den;
        Ok(now >= refresh || self.issuer.ledger().revoked(label)?.len() as u64 != crl.entries)
    }

    /// Reissues the CRL of every label that publishes one and has none or a due one. Returns
    /// what was issued and what failed, per label.
    pub fn refresh(&self, now: i64) -> Vec<(String, Result<Arc<CrlRecord>>)> {
        let mut done = Vec::new();
        for label in self.issuer.labels() {
            let name = &label.config.name;
            if label.config.crl.is_none() {
                continue;
            }
            let due = match self.current(name) {
                None => Ok(true),
                Some(crl) => self.is_due(name, &crl, now),
            };
            match due {
                Ok(false) => {}
                Ok(true) => done.push((name.clone(), self.issue(name, now))),
                Err(e) => done.push((name.clone(), Err(e))),
            }
        }
        done
    }

    /// The label's current CRL.
    pub fn current(&self, label: &str) -> Option<Arc<CrlRecord>> {
        self.current.read().ok()?.get(label).cloned()
    }

    /// The current CRL published at URL path `path`.
    pub fn by_path(&self, path: &str) -> Option<Arc<CrlRecord>> {
        let label = self.issuer.labels().find(|l| {
            l.config
                .crl
                .as_ref()
                .and_then(|c| c.url.as_ref())
                .is_some_and(|u| u.path() == path)
        })?;
        self.current(&label.config.name)
    }

    /// The DCL revocation point of `label` (MATTER.md "Revocation").
    pub fn dcl_info(&self, label: &str) -> Result<DclRevocationPoint> {
        dcl_info(self.issuer.label(label)?)
    }
}

/// The DCL revocation point of a loaded label.
pub fn dcl_info(label: &Label) -> Result<DclRevocationPoint> {
    let name = &label.config.name;
    let url = label
        .config
        .crl
        .as_ref()
        .and_then(|c| c.url.as_ref())
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "label {name:?} has no labels.{name}.crl.url: the dataURL to register"
            ))
        })?;
    if name.chars().count() > MAX_DCL_LABEL_CHARS {
        return Err(Error::BadRequest(format!(
            "label {name:?} is longer than the DCL's {MAX_DCL_LABEL_CHARS}-character label"
        )));
    }
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &label.pai.der)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(DclRevocationPoint {
        vid: label.pai.vid.value(),
        pid: label.pai.pid.map_or(0, |p| p.value()),
        is_paa: false,
        label: name.clone(),
        crl_signer_certificate: pem,
        issuer_subject_key_id: asn1::hex(&label.pai.skid).to_uppercase(),
        data_url: url.as_str().to_string(),
        revocation_type: 1,
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader (a web
/// server publishing the file) never sees half a CRL.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_urls() {
        let u = CrlUrl::parse("http://crl.example.com:8080/matter/pai.crl").expect("valid");
        assert_eq!(u.path(), "/matter/pai.crl");
        assert_eq!(CrlUrl::parse("https://h").expect("valid").path(), "/");
        for bad in [
            "ftp://h/x",
            "http:///x",
            "http://h/a b",
            "http://h/x?y=1",
            "crl.example.com/x",
        ] {
            assert!(CrlUrl::parse(bad).is_err(), "{bad}");
        }
        let long = format!("http://h/{}", "x".repeat(MAX_DATA_URL_CHARS));
        assert!(CrlUrl::parse(&long).is_err());
    }
}
