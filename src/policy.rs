//! Who may get what: client-certificate identities and one-time tokens for `simpleenroll`,
//! the renewed DAC for `simplereenroll`, and the VID/PID each may obtain. Quotas and subject
//! uniqueness are enforced atomically by the ledger (`store`).

use std::collections::BTreeMap;

use base64::Engine;
use der::{Decode, Tagged};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::name::Name;

use crate::asn1;
use crate::config::{ClientRule, IdentityMatch, LabelConfig};
use crate::csr::EnrollmentRequest;
use crate::error::{Error, Result};
use crate::issuance::{Issuer, Label};
use crate::matter;
use crate::profile::{DacSubject, PidPolicy};
use crate::store::{DacRecord, Ledger, Status, TokenRecord, TokenState};
use crate::tls::{Anchors, read_pem_certs};

/// A presented client certificate chain, leaf first, already verified by the TLS layer against
/// the union of all anchors.
#[derive(Debug)]
pub struct PeerChain {
    pub certs: Vec<CertificateDer<'static>>,
    /// A name for logs: the leaf's subject.
    pub display: String,
    /// The leaf's subject commonName.
    pub cn: Option<String>,
    /// The leaf's subjectAltNames of the types a client rule can match.
    pub sans: Vec<San>,
    /// The latest notBefore and the earliest notAfter of the presented certificates (Unix
    /// seconds): the chain is valid between them, checked on every request.
    valid_from: i64,
    valid_until: i64,
    /// SHA-256 of the leaf certificate DER, lowercase hex.
    pub fingerprint: String,
    /// Per-label outcome of verifying this chain against the label's anchors. A connection
    /// keeps its chain, so a gateway enrolling thousands of devices on one keep-alive
    /// connection pays for the chain verification once per label, not once per request.
    /// Keyed by the policy's generation too: a reload (SIGHUP) that changes a label's anchors
    /// makes a connection's earlier outcome count for nothing.
    verified: std::sync::Mutex<Vec<(u64, String, Anchor, bool)>>,
}

/// A subjectAltName a client rule can match (RFC 5280 §4.2.1.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Email(String),
    Uri(String),
    Ip(std::net::IpAddr),
}

/// Which anchors of a label a chain was verified against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    Clients,
    Pai,
}

impl PeerChain {
    /// Wraps the certificates rustls reports for a connection.
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Option<Self> {
        let leaf_der = certs.first()?.as_ref();
        let leaf = Certificate::from_der(leaf_der).ok()?;
        let cn = leaf
            .tbs_certificate()
            .subject()
            .iter()
            .find(|a| a.oid == matter::OID_CN)
            .and_then(|a| {
                std::str::from_utf8(a.value.value())
                    .ok()
                    .map(str::to_string)
            });
        let (mut valid_from, mut valid_until) = (i64::MIN, i64::MAX);
        for der in &certs {
            let v = Certificate::from_der(der.as_ref()).ok()?;
            let v = v.tbs_certificate().validity();
            valid_from = valid_from.max(crate::profile::cert::unix(v.not_before));
            valid_until = valid_until.min(crate::profile::cert::unix(v.not_after));
        }
        Some(Self {
            display: leaf.tbs_certificate().subject().to_string(),
            cn,
            sans: subject_alt_names(&leaf),
            valid_from,
            valid_until,
            fingerprint: asn1::hex(&Sha256::digest(leaf_der)),
            verified: std::sync::Mutex::new(Vec::new()),
            certs,
        })
    }

    /// RFC 5280 §6.1.3 (a)(2), on every request: a certificate that expires during a
    /// keep-alive connection (or a resumed TLS session) stops authorising from that moment,
    /// although the chain's verification is cached per connection.
    fn check_time(&self, now: i64) -> Result<()> {
        if now < self.valid_from {
            return Err(Error::Forbidden(format!(
                "client certificate {} is not valid until {}",
                self.display,
                asn1::format_time(self.valid_from)
            )));
        }
        if now > self.valid_until {
            return Err(Error::Forbidden(format!(
                "client certificate {} expired at {}",
                self.display,
                asn1::format_time(self.valid_until)
            )));
        }
        Ok(())
    }

    /// Whether the chain verifies to `anchors` (cached per label and kind of anchor).
    fn verifies(
        &self,
        generation: u64,
        label: &str,
        kind: Anchor,
        anchors: Option<&Anchors>,
    ) -> bool {
        let Some(anchors) = anchors else {
            return false;
        };
        if let Ok(cache) = self.verified.lock()
            && let Some((_, _, _, ok)) = cache
                .iter()
                .find(|(g, l, k, _)| *g == generation && l == label && *k == kind)
        {
            return *ok;
        }
        let ok = anchors.verifies(&self.certs);
        if let Ok(mut cache) = self.verified.lock() {
            cache.push((generation, label.to_string(), kind, ok));
        }
        ok
    }
}

/// HTTP Basic credentials (RFC 7617).
#[derive(Clone)]
pub struct Basic {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the secret.
        write!(f, "Basic({})", self.user)
    }
}

impl Basic {
    /// Parses an `Authorization: Basic …` header value.
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some(Self {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

/// An authenticated enroller and what bounds it.
#[derive(Clone, Debug)]
pub enum Enroller {
    /// A client certificate that matched a rule of the label.
    Client { identity: String, rule: ClientRule },
    /// A one-time token.
    Token(TokenRecord),
}

impl Enroller {
    /// How the ledger and the logs name the requester.
    pub fn requester(&self) -> String {
        match self {
            Enroller::Client { identity, .. } => format!("client:{identity}"),
            Enroller::Token(t) => format!("token:{}", t.id),
        }
    }

    /// Whether its enrollments on `label` wait for an operator: its client rule's `approval`,
    /// else the label's.
    pub fn approval(&self, label: &LabelConfig) -> crate::config::Approval {
        match self {
            Enroller::Client { rule, .. } => rule.approval.unwrap_or(label.approval),
            Enroller::Token(_) => label.approval,
        }
    }

    /// The token this enrollment spends, if any.
    pub fn token(&self) -> Option<String> {
        match self {
            Enroller::Token(t) => Some(t.id.clone()),
            Enroller::Client { .. } => None,
        }
    }
}

/// Per-label trust: anchors for enrollment clients and for renewing DACs (the PAI).
struct LabelTrust {
    clients: Option<Anchors>,
    dacs: Anchors,
}

/// The policy service.
pub struct Policy {
    labels: BTreeMap<String, LabelTrust>,
    /// Which policy this is: each one built (at start, at each reload) gets the next number.
    generation: u64,
}

impl Policy {
    /// Loads each label's anchors: its `client_cas`, and its PAI for renewals.
    pub fn new(issuer: &Issuer) -> Result<Self> {
        let mut labels = BTreeMap::new();
        for label in issuer.labels() {
            let cas = client_cas(&label.config)?;
            let pai = CertificateDer::from(label.pai.der.clone());
            let dacs =
                Anchors::new(&[pai])?.ok_or_else(|| Error::Internal("no PAI anchor".into()))?;
            labels.insert(
                label.config.name.clone(),
                LabelTrust {
                    clients: Anchors::new(&cas)?,
                    dacs,
                },
            );
        }
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Self {
            labels,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Every anchor any label trusts, for the TLS layer.
    pub fn all_anchors(issuer: &Issuer) -> Result<Vec<CertificateDer<'static>>> {
        let mut all = Vec::new();
        for label in issuer.labels() {
            all.extend(client_cas(&label.config)?);
            all.push(CertificateDer::from(label.pai.der.clone()));
        }
        Ok(all)
    }

    fn trust(&self, label: &str) -> Result<&LabelTrust> {
        self.labels
            .get(label)
            .ok_or_else(|| Error::UnknownLabel(label.to_string()))
    }

    /// `simpleenroll`: who is asking? A client certificate trusted for the label and matching
    /// one of its rules, else a valid unspent token for the label.
    pub fn authenticate_enroll(
        &self,
        label: &LabelConfig,
        peer: Option<&PeerChain>,
        basic: Option<&Basic>,
        ledger: &dyn Ledger,
    ) -> Result<Enroller> {
        let trust = self.trust(&label.name)?;
        let mut cert_refusal = None;
        if let Some(peer) = peer {
            match self.match_client(label, trust, peer) {
                Ok(e) => return Ok(e),
                Err(e) => cert_refusal = Some(e),
            }
        }
        if let Some(basic) = basic {
            return authenticate_token(label, basic, ledger);
        }
        Err(cert_refusal.unwrap_or_else(|| {
            Error::Unauthenticated(format!(
                "label {:?} requires a client certificate or an enrollment token (HTTP Basic)",
                label.name
            ))
        }))
    }

    fn match_client(
        &self,
        label: &LabelConfig,
        trust: &LabelTrust,
        peer: &PeerChain,
    ) -> Result<Enroller> {
        // The time first: an expired chain (say, on a resumed TLS session) is refused as
        // expired, not as untrusted.
        peer.check_time(asn1::now())?;
        if !peer.verifies(
            self.generation,
            &label.name,
            Anchor::Clients,
            trust.clients.as_ref(),
        ) {
            return Err(Error::Forbidden(format!(
                "client certificate {} is not issued by a CA trusted for label {:?}",
                peer.display, label.name
            )));
        }
        let rule = label
            .clients
            .iter()
            .find(|r| rule_matches(&r.matcher, peer));
        match rule {
            Some(rule) => Ok(Enroller::Client {
                identity: rule.matcher.to_string(),
                rule: rule.clone(),
            }),
            None => Err(Error::Forbidden(format!(
                "client certificate {} matches no client rule on label {:?}",
                peer.display, label.name
            ))),
        }
    }

    /// May `enroller` obtain `subject`? (After the profile decided VID/PID from the CSR.)
    /// `repeat` is the DAC on record that the request repeats, if any: a spent token still
    /// gets the DAC it was spent on (a device that lost the response), and nothing else.
    pub fn authorize(
        enroller: &Enroller,
        label: &str,
        subject: &DacSubject,
        repeat: Option<&DacRecord>,
    ) -> Result<()> {
        if let Enroller::Token(t) = enroller
            && let Some(spent) = &t.spent_by
            && repeat.map(|r| &r.serial) != Some(spent)
        {
            return Err(Error::Unauthenticated(
                "this enrollment token was already used".into(),
            ));
        }
        match enroller {
            Enroller::Client { identity, rule } => {
                if let Some(vids) = &rule.vids
                    && !vids.contains(&subject.vid)
                {
                    return Err(Error::Forbidden(format!(
                        "VID {} is not allowed for client {identity} on label {label:?}",
                        subject.vid
                    )));
                }
                if let PidPolicy::Only(pids) = &rule.pids
                    && !pids.contains(&subject.pid)
                {
                    return Err(Error::Forbidden(format!(
                        "PID {} is not allowed for client {identity} on label {label:?}",
                        subject.pid
                    )));
                }
                Ok(())
            }
            Enroller::Token(t) => match (t.pid, &t.cn) {
                (Some(pid), _) if pid != subject.pid.value() => Err(Error::Forbidden(format!(
                    "PID {} is not allowed for token {} (bound to PID {pid:04X})",
                    subject.pid, t.id
                ))),
                // A token bound to a device's CN obtains that identity only.
                (_, Some(cn)) if *cn != subject.cn => Err(Error::Forbidden(format!(
                    "CN {:?} is not allowed for token {} (bound to CN {cn:?})",
                    subject.cn, t.id
                ))),
                _ => Ok(()),
            },
        }
    }

    /// `simplereenroll` (RFC 7030 §4.2.2): the client authenticates with the DAC it renews,
    /// which must chain to the label's PAI, be on record under this label, be valid now and not
    /// be revoked. Returns what to do: renew it, or return the renewal already on record that
    /// this request repeats (a client that lost the response).
    pub fn authenticate_renewal(
        &self,
        label: &Label,
        peer: Option<&PeerChain>,
        req: &EnrollmentRequest,
        ledger: &dyn Ledger,
        who: &mut Option<String>,
    ) -> Result<Renewal> {
        let name = &label.config.name;
        let trust = self.trust(name)?;
        let peer = peer.ok_or_else(|| {
            Error::Unauthenticated(
                "simplereenroll requires the DAC being renewed as the TLS client certificate"
                    .into(),
            )
        })?;
        let now = asn1::now();
        peer.check_time(now)?;
        if !peer.verifies(self.generation, name, Anchor::Pai, Some(&trust.dacs)) {
            return Err(Error::Forbidden(format!(
                "client certificate {} is not a DAC of label {name:?}'s PAI",
                peer.display
            )));
        }
        let leaf_der = peer.certs[0].as_ref();
        let leaf = Certificate::from_der(leaf_der)
            .map_err(|e| Error::BadRequest(format!("client certificate: {e}")))?;
        let serial = leaf.tbs_certificate().serial_number().as_bytes();
        let record = ledger
            .by_serial(serial)?
            .filter(|r| r.der == leaf_der)
            .ok_or_else(|| {
                Error::Forbidden(format!(
                    "DAC serial {} is not in this server's ledger",
                    asn1::hex(serial)
                ))
            })?;
        // Authenticated as this DAC from here on: refusals below are logged with it.
        *who = Some(format!("dac:{}", asn1::hex(serial)));
        // A renewal belongs to the label that issued the DAC: another label sharing the PAI
        // has its own PID allow-list, quota and clients.
        if record.label != *name {
            return Err(Error::Forbidden(format!(
                "DAC serial {} was issued on label {:?}; renew it there, not on label {name:?}",
                asn1::hex(serial),
                record.label
            )));
        }
        if let Status::Revoked { .. } = record.status {
            return Err(Error::Forbidden(format!(
                "DAC serial {} is revoked and cannot be renewed",
                asn1::hex(serial)
            )));
        }
        // An operator marked this DAC for re-key (issue 14): its renewal must bring a new key.
        if ledger.rekey_mark(serial)?.is_some() && record.public_key() == Some(req.public_key) {
            return Err(Error::Forbidden(format!(
                "DAC serial {} is marked for re-key: the renewal CSR must carry a new key",
                asn1::hex(serial)
            )));
        }
        let old_subject = leaf.tbs_certificate().subject();
        let same = names_equal(&req.subject, old_subject);
        let placeholder = label.config.reenroll_placeholder_subject && is_placeholder(&req.subject);
        if !same && !placeholder {
            return Err(Error::Forbidden(format!(
                "RFC 7030 §4.2.2: the CSR subject {} must equal the renewed DAC's subject {}",
                req.subject, old_subject
            )));
        }
        let ids = matter::read_subject(old_subject)?;
        let subject = DacSubject {
            cn: ids.cn.unwrap_or_default(),
            vid: ids
                .vid
                .ok_or_else(|| Error::Internal("renewed DAC without VID".into()))?,
            pid: ids
                .pid
                .ok_or_else(|| Error::Internal("renewed DAC without PID".into()))?,
        };
        Self::authorize_renewal(label, &subject)?;
        if let Some(holder) = ledger.by_subject(&record.issuer_key, &record.subject_der)?
            && holder.serial != record.serial
        {
            // The same CSR again after a lost response: the renewal on record.
            if holder.renews.as_deref() == Some(record.serial.as_slice())
                && holder.status == Status::Issued
                && holder.public_key().as_ref() == Some(&req.public_key)
            {
                return Ok(Renewal::Repeat(holder));
            }
            return Err(Error::Forbidden(format!(
                "DAC serial {} was already renewed by serial {}; renew with the newest DAC",
                asn1::hex(serial),
                asn1::hex(&holder.serial)
            )));
        }
        // One lineage renews at most once per `min_interval`, counted from its previous
        // renewal: the DAC presented is that renewal when it renews another.
        if record.renews.is_some() {
            let interval = label.config.renewal.min_interval.as_secs() as i64;
            let wait = record.issued_at.saturating_add(interval) - now;
            if wait > 0 {
                return Err(Error::RenewalTooSoon {
                    serial: asn1::hex(serial),
                    retry_after: wait as u64,
                });
            }
        }
        Ok(Renewal::Renew {
            old: record,
            subject,
        })
    }

    /// May a renewal on `label` keep `subject`? The label's current policy must still allow
    /// its product: an operator who removed a PID (or narrowed the PAI) stops its renewals.
    pub fn authorize_renewal(label: &Label, subject: &DacSubject) -> Result<()> {
        label.profile.check_pid(&label.pai, subject.pid)
    }
}

/// What a `simplereenroll` that passed [`Policy::authenticate_renewal`] gets.
#[derive(Debug)]
pub enum Renewal {
    /// Renew `old`, keeping `subject`.
    Renew { old: DacRecord, subject: DacSubject },
    /// The renewal already on record for this request.
    Repeat(DacRecord),
}

/// Whether `rule` names `peer`: each form matches its own name type only.
pub(crate) fn rule_matches(rule: &IdentityMatch, peer: &PeerChain) -> bool {
    match rule {
        IdentityMatch::Cn(v) => peer.cn.as_deref() == Some(v.as_str()),
        IdentityMatch::Dns(v) => peer
            .sans
            .iter()
            .any(|s| matches!(s, San::Dns(d) if d.eq_ignore_ascii_case(v))),
        IdentityMatch::Uri(v) => peer.sans.iter().any(|s| matches!(s, San::Uri(u) if u == v)),
        IdentityMatch::Email(v) => peer
            .sans
            .iter()
            .any(|s| matches!(s, San::Email(e) if emails_equal(e, v))),
        IdentityMatch::Ip(v) => peer
            .sans
            .iter()
            .any(|s| matches!(s, San::Ip(ip) if ip == v)),
        IdentityMatch::Sha256(v) => *v == peer.fingerprint,
    }
}

/// RFC 5280 §7.5: the local part compares exactly, the domain case-insensitively.
fn emails_equal(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => false,
    }
}

/// The certificates of a label's `client_cas` files.
fn client_cas(label: &LabelConfig) -> Result<Vec<CertificateDer<'static>>> {
    let mut cas = Vec::new();
    for path in &label.client_cas {
        cas.extend(
            read_pem_certs(path)
                .map_err(|e| e.in_key(format!("labels.{}.client_cas", label.name)))?,
        );
    }
    Ok(cas)
}

fn authenticate_token(label: &LabelConfig, basic: &Basic, ledger: &dyn Ledger) -> Result<Enroller> {
    let hash: [u8; 32] = Sha256::digest(basic.password.as_bytes()).into();
    let token = ledger
        .token(&hash)?
        .filter(|t| t.id == basic.user)
        .ok_or_else(|| Error::Unauthenticated("unknown enrollment token".into()))?;
    // A spent token is refused by [`Policy::authorize`] unless the request repeats the
    // enrollment that spent it.
    if token.label != label.name {
        return Err(Error::Forbidden(format!(
            "token {} is for label {:?}, not {:?}",
            token.id, token.label, label.name
        )));
    }
    // Revoked or expired: 401, as an unknown token (the ledger re-checks both when spending).
    match token.state(asn1::now()) {
        TokenState::Revoked => Err(Error::Unauthenticated(format!(
            "enrollment token {} was revoked",
            token.id
        ))),
        TokenState::Expired => Err(Error::Unauthenticated(format!(
            "enrollment token {} expired at {}",
            token.id,
            asn1::format_time(token.expires_at.unwrap_or_default())
        ))),
        TokenState::Unused | TokenState::Spent(_) => Ok(Enroller::Token(token)),
    }
}

/// What a new token is bound to.
#[derive(Clone, Debug, Default)]
pub struct TokenOptions {
    /// The only PID it may obtain.
    pub pid: Option<matter::Pid>,
    /// The only CN it may obtain.
    pub cn: Option<String>,
    /// Unix seconds after which it is refused unless spent.
    pub expires_at: Option<i64>,
}

/// A new one-time token bound to `pid` only, without expiry: (id, secret).
pub fn create_token(
    ledger: &dyn Ledger,
    label: &str,
    pid: Option<matter::Pid>,
) -> Result<(String, String)> {
    create_token_with(
        ledger,
        label,
        &TokenOptions {
            pid,
            ..TokenOptions::default()
        },
    )
}

/// A new one-time token: (id, secret). Only the SHA-256 of the secret is stored.
pub fn create_token_with(
    ledger: &dyn Ledger,
    label: &str,
    opts: &TokenOptions,
) -> Result<(String, String)> {
    if let Some(cn) = &opts.cn {
        matter::check_cn(cn)?;
    }
    let rng = SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    rng.fill(&mut id)
        .and_then(|_| rng.fill(&mut secret))
        .map_err(|_| Error::Internal("the system random generator failed".into()))?;
    let id = format!("tok-{}", asn1::hex(&id));
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    ledger.put_token(
        &hash,
        &TokenRecord {
            id: id.clone(),
            label: label.to_string(),
            pid: opts.pid.map(matter::Pid::value),
            created_at: asn1::now(),
            spent_by: None,
            expires_at: opts.expires_at,
            cn: opts.cn.clone(),
            revoked_at: None,
        },
    )?;
    Ok((id, secret))
}

/// RFC 5280 §7.1 comparison: same RDN structure and attribute types; string values compared
/// after trimming, collapsing inner white space and case folding (LDAP StringPrep, simplified).
pub fn names_equal(a: &Name, b: &Name) -> bool {
    let rdns = |n: &Name| -> Vec<Vec<(String, String)>> {
        n.iter_rdn()
            .map(|rdn| {
                let mut atvs: Vec<(String, String)> = rdn
                    .iter()
                    .map(|atv| {
                        let value = match atv.value.tag() {
                            der::Tag::Utf8String
                            | der::Tag::PrintableString
                            | der::Tag::Ia5String
                            | der::Tag::TeletexString => {
                                let text = String::from_utf8_lossy(atv.value.value());
                                text.split_whitespace()
                                    .collect::<Vec<_>>()
                                    .join(" ")
                                    .to_lowercase()
                            }
                            _ => asn1::hex(atv.value.value()),
                        };
                        (atv.oid.to_string(), value)
                    })
                    .collect();
                atvs.sort();
                atvs
            })
            .collect()
    };
    rdns(a) == rdns(b)
}

/// An empty subject, or the Matter SDK's placeholder `OU=CSA`.
fn is_placeholder(name: &Name) -> bool {
    const OU: const_oid::ObjectIdentifier = const_oid::ObjectIdentifier::new_unwrap("2.5.4.11");
    let atvs: Vec<_> = name.iter().collect();
    atvs.is_empty() || (atvs.len() == 1 && atvs[0].oid == OU && atvs[0].value.value() == b"CSA")
}

/// The dNSName, rfc822Name, URI and iPAddress subjectAltNames.
fn subject_alt_names(cert: &Certificate) -> Vec<San> {
    let Some(ext) = cert.tbs_certificate().extensions().and_then(|e| {
        e.iter()
            .find(|e| e.extn_id.as_bytes() == asn1::oid::SUBJECT_ALT_NAME)
    }) else {
        return Vec::new();
    };
    let Ok(san) = x509_cert::ext::pkix::SubjectAltName::from_der(ext.extn_value.as_bytes()) else {
        return Vec::new();
    };
    use x509_cert::ext::pkix::name::GeneralName;
    san.0
        .iter()
        .filter_map(|g| match g {
            GeneralName::DnsName(s) => Some(San::Dns(s.to_string())),
            GeneralName::Rfc822Name(s) => Some(San::Email(s.to_string())),
            GeneralName::UniformResourceIdentifier(s) => Some(San::Uri(s.to_string())),
            GeneralName::IpAddress(o) => match o.as_bytes() {
                b if b.len() == 4 => <[u8; 4]>::try_from(b).ok().map(|a| San::Ip(a.into())),
                b if b.len() == 16 => <[u8; 16]>::try_from(b).ok().map(|a| San::Ip(a.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_parses() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("tok-1:s3cret")
        );
        let b = Basic::parse(&h).expect("parses");
        assert_eq!((b.user.as_str(), b.password.as_str()), ("tok-1", "s3cret"));
        assert!(format!("{b:?}").contains("tok-1") && !format!("{b:?}").contains("s3cret"));
        assert!(Basic::parse("Bearer x").is_none());
    }

    #[test]
    fn names_compare_normalised() {
        let a: Name = "CN=Device  One,O=Acme".parse().expect("name");
        let b: Name = "CN=device one,O=ACME".parse().expect("name");
        let c: Name = "CN=device two,O=ACME".parse().expect("name");
        assert!(names_equal(&a, &b));
        assert!(!names_equal(&a, &c));
    }
}
