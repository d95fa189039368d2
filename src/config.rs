//! The one TOML file an operator edits, parsed into checked values (STYLE.md "parse, don't
//! validate"). Every message names the file, the key and the problem. `config/example.toml`
//! documents each key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::matter::{Pid, Vid};
use crate::profile::{OtherAttributes, PidPolicy, Validity};
use crate::revocation::CrlUrl;
use crate::signer::PassphraseSource;
use crate::signer::pkcs11::{self, Pkcs11Config, TokenSelector};

/// Operation names, which a label may not take (EST-WIRE.md "Routes").
pub const OPERATIONS: [&str; 5] = [
    "cacerts",
    "simpleenroll",
    "simplereenroll",
    "csrattrs",
    "serverkeygen",
];

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Where the ledger is (`ledger` and `[store]`).
    pub store: StoreConfig,
    /// The label served on the unlabeled EST path.
    pub default_label: String,
    /// The operator accepts development material (test VIDs) in this deployment.
    pub danger_development_pki: bool,
    pub server: ServerConfig,
    /// `[crl] listen`: the plain-HTTP listener that serves each label's CRL at the path of its
    /// `labels.NAME.crl.url`; `None` = no listener (the CRL files are still written).
    pub crl_listen: Option<SocketAddr>,
    /// `[tokens] expires_in_secs`: how long a new enrollment token is valid unless
    /// `token create --expires-in` says otherwise. Default 7 days: a token is minted for a
    /// device about to be made or set up, and a week covers handing it to the line; a leaked
    /// one stops working by itself.
    pub token_expiry: Duration,
    /// `[approval] held_retention_secs`: how long a held request is kept once settled (decided,
    /// or expired undecided) before `serve` removes it (`crate::approval::prune`). Default
    /// [`DEFAULT_HELD_RETENTION`].
    pub held_retention: Duration,
    /// `[admin]`: the operator plane's listeners and who may use them.
    pub admin: AdminConfig,
    pub labels: BTreeMap<String, LabelConfig>,
}

/// The ledger's backend (`[store] kind`, DESIGN.md "Storage").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded ledger file (`ledger`), held by one process.
    Redb(PathBuf),
    /// A PostgreSQL database that several nodes share.
    Postgres(Box<PostgresConfig>),
}

impl StoreConfig {
    /// The redb file, when the ledger is one.
    pub fn redb_path(&self) -> Option<&Path> {
        match self {
            StoreConfig::Redb(p) => Some(p),
            StoreConfig::Postgres(_) => None,
        }
    }

    /// Where the ledger is, for logs and answers (never a password: the URL holds none).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Redb(p) => p.display().to_string(),
            StoreConfig::Postgres(pg) => pg.url.clone(),
        }
    }
}

/// `[store]` with `kind = "postgres"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `store.url`: a libpq URL or key=value string, without a password.
    pub url: String,
    /// Where the password comes from (`store.password_env` or `store.password_file`).
    pub password: Option<PassphraseSource>,
    /// `store.pool_size`: most connections this node opens. Default 16.
    pub pool_size: usize,
    /// `store.statement_timeout_ms`: the server cancels a statement running longer, or waiting
    /// longer for one lock. Default 5000.
    pub statement_timeout: Duration,
    /// `store.connect_timeout_ms`: how long to wait for a connection. Default 5000.
    pub connect_timeout: Duration,
    /// `store.tls` and `store.ca_file`.
    pub tls: PostgresTls,
}

/// TLS to the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostgresTls {
    /// `tls = "disable"`: plain TCP (a Unix socket or a trusted link only).
    Disable,
    /// `tls = "verify-full"`: TLS, the server's certificate chained to `ca_file` and naming the
    /// URL's host.
    VerifyFull { ca_file: PathBuf },
}

const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// `[admin]` (DESIGN.md "The operator plane").
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The admin API over HTTPS with mutual TLS against `client_ca`; `None` = no listener (the
    /// default: the API is then on the local socket only).
    pub listen: Option<SocketAddr>,
    /// The CA certificates (PEM) admin client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// The local Unix socket (mode 0600, role admin); `None` = none. Default `admin.sock` beside
    /// the ledger file, so operator commands work while `serve` runs.
    pub socket: Option<PathBuf>,
    /// Who may use the HTTPS listener, first match wins.
    pub identities: Vec<AdminIdentity>,
    /// Prometheus metrics (`GET /metrics` on both doors). Default on; off installs no recorder,
    /// so nothing is counted, and `/metrics` answers 404 saying so.
    pub metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            client_ca: None,
            socket: None,
            identities: Vec::new(),
            metrics: true,
        }
    }
}

/// One `[[admin.identities]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminIdentity {
    pub matcher: IdentityMatch,
    pub role: AdminRole,
    /// The labels (tenants) it may see; `None` = all.
    pub labels: Option<BTreeSet<String>>,
}

/// What an admin identity may do, each role including the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdminRole {
    /// Read only: inventory, tokens, audit, CRLs, metrics.
    Auditor,
    /// Also tokens (create, revoke), revocation, re-key marks, new CRLs.
    Operator,
    /// Everything, including issuing DACs and backups.
    Admin,
}

impl AdminRole {
    pub fn name(self) -> &'static str {
        match self {
            AdminRole::Auditor => "auditor",
            AdminRole::Operator => "operator",
            AdminRole::Admin => "admin",
        }
    }

    /// `admin`, `operator` or `auditor`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text {
            "admin" => Ok(AdminRole::Admin),
            "operator" => Ok(AdminRole::Operator),
            "auditor" => Ok(AdminRole::Auditor),
            other => Err(format!("{other:?}: expected admin, operator or auditor")),
        }
    }
}

/// The default of [`Config::token_expiry`].
pub const DEFAULT_TOKEN_EXPIRY: Duration = Duration::from_secs(7 * 86_400);

/// The default of [`Config::held_retention`]: 30 days. A client has its answer within
/// `pending_expiry_secs` (a day by default) and est-client stops asking long before; a month
/// leaves the decided requests in `pending list` for the month's review. The audit chain keeps
/// each request and its decision whatever this is.
pub const DEFAULT_HELD_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// `[server]`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub limits: Limits,
}

/// Limits with provenance; each default says where its number comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request body cap, checked before decoding or authenticating. Default 64 KiB, as
    /// globalsign/est's `maxBodySize`; a Matter CSR is under 1 KiB.
    pub max_body_bytes: usize,
    /// Open connections at most; further ones wait in the kernel's accept queue. Default 4096,
    /// enough for the 1,000-keep-alive-connection target with headroom and well under the
    /// default `ulimit -n` of 1024 raised by systemd's LimitNOFILE (set it higher with this).
    pub max_connections: usize,
    /// Open connections at most from one peer address, so that one client (or one attacker)
    /// cannot take every slot while others wait. Default 256: a gateway uses one to a few
    /// dozen keep-alive connections (`est-client gateway --connections`, default 16), so 256
    /// leaves room for several gateways behind one NAT, and 16 such peers fit under
    /// `max_connections`. A connection over the cap is closed at once.
    pub max_connections_per_peer: usize,
    /// New connections per second at most from one peer address, over a burst of
    /// `max_connections_per_peer` (a peer may open all its connections at once); one over it
    /// is closed at once, before TLS. Every new connection costs the server a TLS handshake
    /// (key exchange and a signature, a fifth of its CPU under a ~400/s flood measured in
    /// docs/performance.md), while a gateway keeps its connections alive. Default 200: a flood
    /// from one address is held to that, far above what keep-alive clients behind one NAT
    /// open.
    pub max_new_connections_per_peer_per_sec: u32,
    /// TLS handshake deadline. Default 10 s: a handshake takes < 10 ms on loopback and a few
    /// round trips on a factory LAN; longer means a stalled or hostile peer.
    pub handshake_timeout: Duration,
    /// Deadline to receive a request's headers on a connection (hyper's
    /// `header_read_timeout`); also bounds idle keep-alive. Default 30 s, like nginx's
    /// `client_header_timeout` of 60 s halved for a service that gets only tiny requests.
    pub header_timeout: Duration,
    /// Deadline for a whole request once its headers are in (body read + issuance). Default
    /// 30 s, as nginx's `client_body_timeout`.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_connections: 4096,
            max_connections_per_peer: 256,
            max_new_connections_per_peer_per_sec: 200,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[labels.NAME]`: one PAI and its policy.
#[derive(Clone, Debug)]
pub struct LabelConfig {
    pub name: String,
    pub pai: PathBuf,
    pub chain: Vec<PathBuf>,
    pub signer: SignerConfig,
    pub pids: PidPolicy,
    pub validity: Validity,
    pub quota: Option<u64>,
    pub cn_prefix: String,
    pub other_subject_attributes: OtherAttributes,
    /// RFC 7030 §4.2.3 strict form: the enroll response holds the DAC only (default: DAC+PAI).
    pub dac_only: bool,
    /// Trust anchors for gateway/bootstrap client certificates.
    pub client_cas: Vec<PathBuf>,
    /// Which client-certificate identities may enroll, and for what.
    pub clients: Vec<ClientRule>,
    /// simplereenroll may send an empty or `OU=CSA` subject and keep the old one.
    pub reenroll_placeholder_subject: bool,
    /// `[labels.NAME.renewal]`: how often one DAC lineage may renew, and whether renewals use
    /// up the quota.
    pub renewal: RenewalPolicy,
    /// `/serverkeygen` (RFC 7030 §4.4) is offered: the server makes the device's key. Off by
    /// default: a key made off the device has left the device's sole control.
    pub serverkeygen: bool,
    /// `[labels.NAME.rate_limit]`: enrollments a second, label-wide and per client identity.
    pub rate_limit: Option<RateLimit>,
    /// `[labels.NAME.crl]`: publish a CRL for this label.
    pub crl: Option<CrlConfig>,
    /// `approval`: whether enrollments wait for an operator (RFC 7030 §4.2.3); a client rule
    /// may say otherwise for its clients.
    pub approval: Approval,
    /// `pending_expiry_secs`: how long a held request waits for a decision before it expires.
    pub pending_expiry: Duration,
    /// `pending_retry_after_secs`: the `Retry-After` of a 202 (how soon a held client asks
    /// again).
    pub pending_retry_after: Duration,
}

/// Whether an enrollment is issued at once or held for an operator's decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Approval {
    /// Issued at once if policy allows (the default).
    #[default]
    Auto,
    /// Recorded as held and answered 202 until an operator approves it (RFC 7030 §4.2.3).
    Manual,
}

impl Approval {
    /// The default time a held request waits for a decision: one day, an operator's working
    /// day with margin; a request older than that is stale (the device has likely left the
    /// line) and must be sent again.
    pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(86_400);
    /// The default `Retry-After` of a 202: one minute. A person approves in minutes, and a
    /// client asking once a minute costs the server nothing.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

    fn parse(text: &str) -> std::result::Result<Self, String> {
        match text {
            "auto" => Ok(Approval::Auto),
            "manual" => Ok(Approval::Manual),
            o => Err(format!("{o:?}: expected \"auto\" or \"manual\"")),
        }
    }
}

/// `[labels.NAME.rate_limit]`: token buckets refilled at this many enrollments a second, each
/// holding at most one second's worth (the burst). None: no limit of that kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_label: Option<u32>,
    pub per_identity: Option<u32>,
}

/// `[labels.NAME.crl]`: the label's CRL (MATTER.md "Revocation").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlConfig {
    /// Where commissioners fetch it: the DCL revocation point's `dataURL`; the `[crl]` listener
    /// serves the CRL at this URL's path.
    pub url: Option<CrlUrl>,
    /// Where each new CRL is written (DER).
    pub file: PathBuf,
    /// nextUpdate − thisUpdate. Default 7 days, the CA/Browser Forum Baseline Requirements'
    /// (§4.9.7) longest interval between CRLs for end-entity certificates; a CRL is reissued
    /// when half of it has passed (`revocation::REFRESH_AT`) and on every revocation.
    pub next_update: Duration,
    /// Put `url` into new DACs as their CRL distribution point (MATTER.md: optional; one
    /// http(s) URI of at most 100 characters).
    pub in_dacs: bool,
}

impl CrlConfig {
    /// The default period, see [`CrlConfig::next_update`].
    pub const DEFAULT_NEXT_UPDATE: Duration = Duration::from_secs(7 * 86_400);
}

/// `[labels.NAME.renewal]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// Least time between two renewals of one DAC lineage, counted from the lineage's previous
    /// renewal (a lineage's first renewal is never held back). Default one day: a device
    /// renews when its DAC nears expiry or is to be re-keyed, not several times a day, and a
    /// device stuck in a renewal loop then costs its label at most one DAC a day.
    pub min_interval: Duration,
    /// Whether a renewal counts against the label's quota. Default true: the quota bounds how
    /// many certificates the PAI signs, and a renewal is one; `min_interval` keeps one device
    /// from using the quota up.
    pub counts_against_quota: bool,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(86_400),
            counts_against_quota: true,
        }
    }
}

/// How the label's PAI key is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerConfig {
    File {
        key: PathBuf,
        passphrase: Option<PassphraseSource>,
    },
    /// The key in a PKCS#11 token (an HSM).
    Pkcs11(Pkcs11Config),
}

/// One client-certificate identity and what it may obtain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRule {
    pub matcher: IdentityMatch,
    /// VIDs it may obtain; `None` = the PAI's VID.
    pub vids: Option<BTreeSet<Vid>>,
    pub pids: PidPolicy,
    /// `approval`: this rule's clients' enrollments are issued at once or held, whatever the
    /// label says; `None` = the label's.
    pub approval: Option<Approval>,
}

/// How a client certificate is recognised: each form matches one name type only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Subject commonName equals.
    Cn(String),
    /// A dNSName subjectAltName equals (`san:`; ASCII case-insensitive, RFC 5280 §7.2).
    Dns(String),
    /// A uniformResourceIdentifier subjectAltName equals (`uri:`, exact).
    Uri(String),
    /// An rfc822Name subjectAltName equals (`email:`; the domain case-insensitive, RFC 5280
    /// §7.5).
    Email(String),
    /// An iPAddress subjectAltName equals (`ip:`).
    Ip(std::net::IpAddr),
    /// SHA-256 of the certificate DER (lowercase hex).
    Sha256(String),
}

impl std::fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityMatch::Cn(v) => write!(f, "cn:{v}"),
            IdentityMatch::Dns(v) => write!(f, "san:{v}"),
            IdentityMatch::Uri(v) => write!(f, "uri:{v}"),
            IdentityMatch::Email(v) => write!(f, "email:{v}"),
            IdentityMatch::Ip(v) => write!(f, "ip:{v}"),
            IdentityMatch::Sha256(v) => write!(f, "sha256:{v}"),
        }
    }
}

impl Config {
    /// `KEY (line N)` as this config's file has it, for an error found after loading (a
    /// signer that will not open); `KEY` alone if the file no longer says it.
    pub fn locate(&self, key: &str) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        match line_of(&text, key) {
            Some(line) => format!("{key} (line {line})"),
            None => key.to_string(),
        }
    }

    /// Reads and checks `path`. Relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Checks `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            key: e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(the whole file)".into()),
            problem: e.message().to_string(),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let err = |key: &str, problem: String| Error::Config {
            file: path.to_path_buf(),
            key: match line_of(text, key) {
                Some(line) => format!("{key} (line {line})"),
                None => key.to_string(),
            },
            problem,
        };
        let resolve = |p: &Path| base.join(p);

        if raw.labels.is_empty() {
            return Err(err(
                "labels",
                "at least one [labels.NAME] is required".into(),
            ));
        }
        let mut labels = BTreeMap::new();
        for (name, l) in raw.labels {
            let key = |k: &str| format!("labels.{name}.{k}");
            if OPERATIONS.contains(&name.as_str()) {
                return Err(err(
                    &format!("labels.{name}"),
                    "a label may not be an EST operation name".into(),
                ));
            }
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(err(
                    &format!("labels.{name}"),
                    "a label is letters, digits, '-', '_' or '.' (it is a URL path segment)".into(),
                ));
            }
            let pids = parse_pids(&l.pids).map_err(|p| err(&key("pids"), p))?;
            let validity = match &l.validity {
                RawValidity::Text(t) if t == "no-expiry" => Validity::NoExpiry,
                RawValidity::Text(t) => {
                    return Err(err(
                        &key("validity"),
                        format!("{t:?}: expected \"no-expiry\" or a number of days"),
                    ));
                }
                RawValidity::Days(d) if *d >= 1 && *d <= 36_500 => Validity::Days(*d as u32),
                RawValidity::Days(d) => {
                    return Err(err(
                        &key("validity"),
                        format!("{d} days: expected 1 to 36500"),
                    ));
                }
            };
            if l.quota == Some(0) {
                return Err(err(
                    &key("quota"),
                    "a quota of 0 issues nothing; omit it for no quota".into(),
                ));
            }
            // The generated CN is the prefix and 32 hex digits; CN ≤ 64 (MATTER.md "DAC").
            if l.cn_prefix.chars().count() > 32
                || l.cn_prefix.contains("Mvid:")
                || l.cn_prefix.contains("Mpid:")
            {
                return Err(err(
                    &key("cn_prefix"),
                    "at most 32 characters, without Mvid:/Mpid: tags".into(),
                ));
            }
            let other = match l.other_subject_attributes.as_str() {
                "drop" => OtherAttributes::Drop,
                "refuse" => OtherAttributes::Refuse,
                o => {
                    return Err(err(
                        &key("other_subject_attributes"),
                        format!("{o:?}: expected \"drop\" or \"refuse\""),
                    ));
                }
            };
            let signer = parse_signer(&l.signer, &base)
                .map_err(|(k, p)| err(&key(&format!("signer.{k}")), p))?;
            let mut clients = Vec::new();
            for (i, c) in l.clients.iter().enumerate() {
                let ckey = format!("labels.{name}.clients[{i}]");
                let matcher =
                    parse_match(&c.matcher).map_err(|p| err(&format!("{ckey}.match"), p))?;
                let vids = c
                    .vids
                    .as_ref()
                    .map(|v| {
                        v.iter()
                            .map(|s| Vid::parse(s).map_err(|e| e.to_string()))
                            .collect::<std::result::Result<BTreeSet<_>, _>>()
                    })
                    .transpose()
                    .map_err(|p| err(&format!("{ckey}.vids"), p))?;
                let pids = parse_pids(&c.pids).map_err(|p| err(&format!("{ckey}.pids"), p))?;
                let approval = c
                    .approval
                    .as_deref()
                    .map(Approval::parse)
                    .transpose()
                    .map_err(|p| err(&format!("{ckey}.approval"), p))?;
                clients.push(ClientRule {
                    matcher,
                    vids,
                    pids,
                    approval,
                });
            }
            if !clients.is_empty() && l.client_cas.is_empty() {
                return Err(err(
                    &key("client_cas"),
                    "clients are listed but no client_cas trust anchor is configured".into(),
                ));
            }
            let approval = Approval::parse(&l.approval).map_err(|p| err(&key("approval"), p))?;
            // serverkeygen makes the key when it signs: there is no CSR key for a held request
            // to be known by, so it is not offered where requests may be held.
            if l.serverkeygen
                && (approval == Approval::Manual
                    || clients.iter().any(|c| c.approval == Some(Approval::Manual)))
            {
                return Err(err(
                    &key("serverkeygen"),
                    "serverkeygen cannot be combined with approval = \"manual\" (on the label \
                     or a client rule)"
                        .into(),
                ));
            }
            let secs = |k: &str, v: Option<u64>, default: Duration| match v {
                None => Ok(default),
                Some(0) => Err(err(&key(k), "at least 1 second".into())),
                Some(s) => Ok(Duration::from_secs(s)),
            };
            let pending_expiry = secs(
                "pending_expiry_secs",
                l.pending_expiry_secs,
                Approval::DEFAULT_EXPIRY,
            )?;
            let pending_retry_after = secs(
                "pending_retry_after_secs",
                l.pending_retry_after_secs,
                Approval::DEFAULT_RETRY_AFTER,
            )?;
            let rate_limit = match &l.rate_limit {
                None => None,
                Some(r) => {
                    for (k, v) in [
                        ("per_label_per_sec", r.per_label_per_sec),
                        ("per_identity_per_sec", r.per_identity_per_sec),
                    ] {
                        if v == Some(0) {
                            return Err(err(
                                &key(&format!("rate_limit.{k}")),
                                "0 allows nothing; omit it for no limit".into(),
                            ));
                        }
                    }
                    Some(RateLimit {
                        per_label: r.per_label_per_sec,
                        per_identity: r.per_identity_per_sec,
                    })
                }
            };
            let renewal = match &l.renewal {
                None => RenewalPolicy::default(),
                Some(r) => RenewalPolicy {
                    min_interval: r
                        .min_interval_secs
                        .map(Duration::from_secs)
                        .unwrap_or(RenewalPolicy::default().min_interval),
                    counts_against_quota: r.counts_against_quota.unwrap_or(true),
                },
            };
            let crl = match &l.crl {
                None => None,
                Some(c) => {
                    let url = c
                        .url
                        .as_deref()
                        .map(CrlUrl::parse)
                        .transpose()
                        .map_err(|p| err(&key("crl.url"), p))?;
                    if c.in_dacs {
                        let url = url.as_ref().ok_or_else(|| {
                            err(
                                &key("crl.in_dacs"),
                                "needs crl.url, the URI to put in DACs".into(),
                            )
                        })?;
                        crate::profile::check_crl_distribution_point(url.as_str())
                            .map_err(|p| err(&key("crl.url"), p))?;
                    }
                    let next_update = match c.next_update_secs {
                        None => CrlConfig::DEFAULT_NEXT_UPDATE,
                        // RFC 5280 §5.1.2.5: nextUpdate is after thisUpdate; a CRL refreshed
                        // more than once a minute would only burn cRLNumbers.
                        Some(s) if s >= 120 => Duration::from_secs(s),
                        Some(s) => {
                            return Err(err(
                                &key("crl.next_update_secs"),
                                format!("{s}: at least 120 seconds"),
                            ));
                        }
                    };
                    let file = c
                        .file
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(format!("crl/{name}.crl")));
                    Some(CrlConfig {
                        url,
                        file: resolve(&file),
                        next_update,
                        in_dacs: c.in_dacs,
                    })
                }
            };
            labels.insert(
                name.clone(),
                LabelConfig {
                    pai: resolve(&l.pai),
                    chain: l.chain.iter().map(|p| resolve(p)).collect(),
                    signer,
                    pids,
                    validity,
                    quota: l.quota,
                    cn_prefix: l.cn_prefix,
                    other_subject_attributes: other,
                    dac_only: l.dac_only,
                    client_cas: l.client_cas.iter().map(|p| resolve(p)).collect(),
                    clients,
                    reenroll_placeholder_subject: l.reenroll_placeholder_subject,
                    renewal,
                    serverkeygen: l.serverkeygen,
                    rate_limit,
                    crl,
                    approval,
                    pending_expiry,
                    pending_retry_after,
                    name,
                },
            );
        }
        let default_label = match raw.default_label {
            Some(d) if labels.contains_key(&d) => d,
            Some(d) => return Err(err("default_label", format!("no label named {d:?}"))),
            None if labels.len() == 1 => labels.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(err(
                    "default_label",
                    "required when more than one label is configured".into(),
                ));
            }
        };
        let server = raw.server.unwrap_or_default();
        let defaults = Limits::default();
        let secs = |v: Option<u64>, d: Duration, k: &str| match v {
            Some(0) => Err(err(
                &format!("server.{k}"),
                "must be at least 1 second".into(),
            )),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(d),
        };
        let limits = Limits {
            max_body_bytes: server.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_connections: server.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_peer: server
                .max_connections_per_peer
                .unwrap_or(defaults.max_connections_per_peer),
            max_new_connections_per_peer_per_sec: server
                .max_new_connections_per_peer_per_sec
                .unwrap_or(defaults.max_new_connections_per_peer_per_sec),
            handshake_timeout: secs(
                server.handshake_timeout_secs,
                defaults.handshake_timeout,
                "handshake_timeout_secs",
            )?,
            header_timeout: secs(
                server.header_timeout_secs,
                defaults.header_timeout,
                "header_timeout_secs",
            )?,
            request_timeout: secs(
                server.request_timeout_secs,
                defaults.request_timeout,
                "request_timeout_secs",
            )?,
        };
        if limits.max_body_bytes < 1024 || limits.max_connections == 0 {
            return Err(err(
                "server",
                "max_body_bytes must be at least 1024 and max_connections at least 1".into(),
            ));
        }
        if limits.max_connections_per_peer == 0 {
            return Err(err(
                "server.max_connections_per_peer",
                "must be at least 1".into(),
            ));
        }
        if limits.max_new_connections_per_peer_per_sec == 0 {
            return Err(err(
                "server.max_new_connections_per_peer_per_sec",
                "must be at least 1".into(),
            ));
        }
        let listen = server
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:8443")
            .parse()
            .map_err(|e| {
                err(
                    "server.listen",
                    format!("{e}; expected e.g. \"0.0.0.0:8443\""),
                )
            })?;
        // One URL path serves one label's CRL.
        let mut crl_paths: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, l) in &labels {
            if let Some(url) = l.crl.as_ref().and_then(|c| c.url.as_ref())
                && let Some(other) = crl_paths.insert(url.path(), name)
            {
                return Err(err(
                    &format!("labels.{name}.crl.url"),
                    format!("path {} is also label {other:?}'s CRL URL path", url.path()),
                ));
            }
        }
        let crl_listen = raw
            .crl
            .as_ref()
            .and_then(|c| c.listen.as_deref())
            .map(|l| {
                l.parse()
                    .map_err(|e| err("crl.listen", format!("{e}; expected e.g. \"0.0.0.0:8080\"")))
            })
            .transpose()?;
        let token_expiry = match raw.tokens.as_ref().and_then(|t| t.expires_in_secs) {
            None => DEFAULT_TOKEN_EXPIRY,
            Some(0) => {
                return Err(err(
                    "tokens.expires_in_secs",
                    "must be at least 1 second".into(),
                ));
            }
            Some(s) => Duration::from_secs(s),
        };
        let held_retention = match raw.approval.as_ref().and_then(|a| a.held_retention_secs) {
            None => DEFAULT_HELD_RETENTION,
            Some(0) => {
                return Err(err(
                    "approval.held_retention_secs",
                    "must be at least 1 second".into(),
                ));
            }
            Some(s) => Duration::from_secs(s),
        };
        let store = store_config(raw.ledger.as_deref(), raw.store.as_ref(), &resolve, &err)?;
        let admin = admin_config(raw.admin.as_ref(), &labels, &store, &resolve, &err)?;
        Ok(Config {
            token_expiry,
            held_retention,
            crl_listen,
            admin,
            path: path.to_path_buf(),
            store,
            default_label,
            danger_development_pki: raw.danger_development_pki,
            server: ServerConfig {
                listen,
                tls_cert: resolve(
                    server
                        .tls_cert
                        .as_deref()
                        .unwrap_or(Path::new("tls/server.pem")),
                ),
                tls_key: resolve(
                    server
                        .tls_key
                        .as_deref()
                        .unwrap_or(Path::new("tls/server.key")),
                ),
                limits,
            },
            labels,
        })
    }

    /// The label named `name`.
    pub fn label(&self, name: &str) -> Result<&LabelConfig> {
        self.labels
            .get(name)
            .ok_or_else(|| Error::UnknownLabel(name.to_string()))
    }
}

/// The dotted key and line of the TOML text at byte `offset` (where a parse error points), for
/// messages: `labels.dev.quota (line 12)`. Tables and arrays of tables are tracked by their
/// headers; the key is the one assigned on that line, if any.
/// The line (1-based) where `key` (a dotted path as the errors name it: `labels.dev.quota`,
/// `labels.dev.clients[1].match`, or a table: `labels.dev.crl`) is written in `text`, when it is
/// written there as `key = …` under its table header, or is a table header itself.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = format!("{name}[{n}]");
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        } else if let Some((k, _)) = t.split_once('=').filter(|_| !t.starts_with('#')) {
            let k = k.trim().trim_matches('"');
            let full = if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            };
            if full == key {
                return Some(i + 1);
            }
            continue;
        } else {
            continue;
        }
        if header.is_none() && table == key {
            header = Some(i + 1);
        }
    }
    header
}

fn key_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines().take(line_no) {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = format!("{name}[{n}]");
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let assigned = (!line.starts_with('['))
        .then(|| line.split_once('='))
        .flatten()
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty());
    match (table.is_empty(), assigned) {
        (_, None) if table.is_empty() => format!("line {line_no}"),
        (_, None) => format!("{table} (line {line_no})"),
        (true, Some(k)) => format!("{k} (line {line_no})"),
        (false, Some(k)) => format!("{table}.{k} (line {line_no})"),
    }
}

fn parse_pids(raw: &RawPids) -> std::result::Result<PidPolicy, String> {
    match raw {
        RawPids::Any(s) if s == "any" => Ok(PidPolicy::Any),
        RawPids::Any(s) => Err(format!("{s:?}: expected \"any\" or a list like [\"8000\"]")),
        RawPids::List(list) if list.is_empty() => Err("an empty list allows nothing".into()),
        RawPids::List(list) => list
            .iter()
            .map(|p| Pid::parse(p).map_err(|e| e.to_string()))
            .collect::<std::result::Result<BTreeSet<_>, _>>()
            .map(PidPolicy::Only),
    }
}

const MATCH_FORMS: &str =
    "expected cn:NAME, san:DNS-NAME, uri:URI, email:ADDRESS, ip:ADDRESS or sha256:HEX";

fn parse_match(text: &str) -> std::result::Result<IdentityMatch, String> {
    let (kind, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: {MATCH_FORMS}"))?;
    if value.is_empty() {
        return Err(format!("{text:?}: the value after {kind}: is empty"));
    }
    match kind {
        "cn" => Ok(IdentityMatch::Cn(value.to_string())),
        "san" | "dns" => Ok(IdentityMatch::Dns(value.to_string())),
        "uri" => Ok(IdentityMatch::Uri(value.to_string())),
        "email" if value.contains('@') => Ok(IdentityMatch::Email(value.to_string())),
        "email" => Err(format!("{text:?}: an email address has an '@'")),
        "ip" => value
            .parse()
            .map(IdentityMatch::Ip)
            .map_err(|e| format!("{text:?}: {e}")),
        "sha256" => {
            let hex = value.replace(':', "").to_ascii_lowercase();
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(IdentityMatch::Sha256(hex))
            } else {
                Err(format!("{text:?}: a SHA-256 fingerprint is 64 hex digits"))
            }
        }
        other => Err(format!("{other:?}: {MATCH_FORMS}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    ledger: Option<PathBuf>,
    store: Option<RawStore>,
    default_label: Option<String>,
    #[serde(default)]
    danger_development_pki: bool,
    server: Option<RawServer>,
    crl: Option<RawCrlListener>,
    tokens: Option<RawTokens>,
    approval: Option<RawApproval>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    labels: BTreeMap<String, RawLabel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    url: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    pool_size: Option<usize>,
    statement_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    tls: Option<String>,
    ca_file: Option<PathBuf>,
}

/// `ledger` and `[store]`, checked: redb needs `ledger`; postgres needs `store.url` without a
/// password in it (the password comes from `password_env` or `password_file`, never the file).
fn store_config(
    ledger: Option<&Path>,
    raw: Option<&RawStore>,
    resolve: &dyn Fn(&Path) -> PathBuf,
    err: &dyn Fn(&str, String) -> Error,
) -> Result<StoreConfig> {
    let kind = raw.and_then(|r| r.kind.as_deref()).unwrap_or("redb");
    match kind {
        "redb" => {
            if let Some(raw) = raw {
                let pg_only = [
                    ("store.url", raw.url.is_some()),
                    ("store.password_env", raw.password_env.is_some()),
                    ("store.password_file", raw.password_file.is_some()),
                    ("store.pool_size", raw.pool_size.is_some()),
                    (
                        "store.statement_timeout_ms",
                        raw.statement_timeout_ms.is_some(),
                    ),
                    ("store.connect_timeout_ms", raw.connect_timeout_ms.is_some()),
                    ("store.tls", raw.tls.is_some()),
                    ("store.ca_file", raw.ca_file.is_some()),
                ];
                if let Some((key, _)) = pg_only.iter().find(|(_, set)| *set) {
                    return Err(err(
                        key,
                        "only for kind = \"postgres\" (this ledger is redb)".into(),
                    ));
                }
            }
            let path = ledger.ok_or_else(|| {
                err(
                    "ledger",
                    "required: the embedded ledger file (or [store] kind = \"postgres\")".into(),
                )
            })?;
            Ok(StoreConfig::Redb(resolve(path)))
        }
        "postgres" => {
            let raw = raw.ok_or_else(|| err("store", "required".into()))?;
            if ledger.is_some() {
                return Err(err(
                    "ledger",
                    "the redb ledger file; with [store] kind = \"postgres\" leave it out".into(),
                ));
            }
            let url = raw
                .url
                .clone()
                .ok_or_else(|| err("store.url", "required with kind = \"postgres\"".into()))?;
            let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
                err(
                    "store.url",
                    format!(
                        "{e}; expected e.g. \"postgresql://matter_est@db.example:5432/matter_est\""
                    ),
                )
            })?;
            if parsed.get_password().is_some() {
                return Err(err(
                    "store.url",
                    "holds a password; a configuration file never does: put it in the environment \
                     variable store.password_env names, or in store.password_file (mode 0600)"
                        .into(),
                ));
            }
            if parsed.get_user().is_none() {
                return Err(err(
                    "store.url",
                    "names no user; e.g. \"postgresql://matter_est@db.example/matter_est\"".into(),
                ));
            }
            let password = match (&raw.password_env, &raw.password_file) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        "store.password_file",
                        "give password_env or password_file, not both".into(),
                    ));
                }
                (Some(var), None) if var.is_empty() => {
                    return Err(err("store.password_env", "empty variable name".into()));
                }
                (Some(var), None) => Some(PassphraseSource::Env(var.clone())),
                (None, Some(file)) => Some(PassphraseSource::File(resolve(file))),
                (None, None) => None,
            };
            let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
            if !(1..=1024).contains(&pool_size) {
                return Err(err("store.pool_size", "must be 1 to 1024".into()));
            }
            let ms = |key: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
                0 => Err(err(key, "must be at least 1 ms".into())),
                v => Ok(Duration::from_millis(v)),
            };
            let statement_timeout = ms(
                "store.statement_timeout_ms",
                raw.statement_timeout_ms,
                DEFAULT_STATEMENT_TIMEOUT_MS,
            )?;
            let connect_timeout = ms(
                "store.connect_timeout_ms",
                raw.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?;
            let tls = match raw.tls.as_deref() {
                None => {
                    return Err(err(
                        "store.tls",
                        "required with kind = \"postgres\": \"verify-full\" (with ca_file) or \
                         \"disable\""
                            .into(),
                    ));
                }
                Some("disable") => {
                    if raw.ca_file.is_some() {
                        return Err(err(
                            "store.ca_file",
                            "only with tls = \"verify-full\"".into(),
                        ));
                    }
                    PostgresTls::Disable
                }
                Some("verify-full") => PostgresTls::VerifyFull {
                    ca_file: resolve(raw.ca_file.as_deref().ok_or_else(|| {
                        err(
                            "store.ca_file",
                            "required with tls = \"verify-full\"".into(),
                        )
                    })?),
                },
                Some(other) => {
                    return Err(err(
                        "store.tls",
                        format!("{other:?}: expected \"verify-full\" or \"disable\""),
                    ));
                }
            };
            Ok(StoreConfig::Postgres(Box::new(PostgresConfig {
                url,
                password,
                pool_size,
                statement_timeout,
                connect_timeout,
                tls,
            })))
        }
        other => Err(err(
            "store.kind",
            format!("{other:?}: expected \"redb\" or \"postgres\""),
        )),
    }
}

/// The admin socket's default on PostgreSQL, where there is no ledger file to sit beside: the
/// runtime directory systemd makes for the unit (`RuntimeDirectory=matter-est`).
pub const POSTGRES_DEFAULT_SOCKET: &str = "/run/matter-est/admin.sock";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    client_ca: Option<PathBuf>,
    socket: Option<PathBuf>,
    #[serde(default)]
    identities: Vec<RawAdminIdentity>,
    #[serde(default = "metrics_on")]
    metrics: bool,
}

fn metrics_on() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminIdentity {
    #[serde(rename = "match")]
    matcher: String,
    role: String,
    labels: Option<Vec<String>>,
}

/// `[admin]`, checked: a listener needs a client CA and at least one identity; identities name
/// known labels.
fn admin_config(
    raw: Option<&RawAdmin>,
    labels: &BTreeMap<String, LabelConfig>,
    store: &StoreConfig,
    resolve: &dyn Fn(&Path) -> PathBuf,
    err: &dyn Fn(&str, String) -> Error,
) -> Result<AdminConfig> {
    // Beside the ledger: the server writes there anyway (its state directory), where a config
    // directory may be read-only to it (deploy/matter-est.service). On PostgreSQL: the unit's
    // runtime directory.
    let default_socket = || {
        Some(match store {
            StoreConfig::Redb(ledger) => ledger.with_file_name("admin.sock"),
            StoreConfig::Postgres(_) => PathBuf::from(POSTGRES_DEFAULT_SOCKET),
        })
    };
    let Some(raw) = raw else {
        return Ok(AdminConfig {
            socket: default_socket(),
            ..AdminConfig::default()
        });
    };
    let listen = raw
        .listen
        .as_deref()
        .map(|l| {
            l.parse().map_err(|e| {
                err(
                    "admin.listen",
                    format!("{e}; expected e.g. \"0.0.0.0:9443\""),
                )
            })
        })
        .transpose()?;
    let socket = match raw.socket.as_deref() {
        None => default_socket(),
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(resolve(p)),
    };
    // sun_path holds 108 bytes with its NUL (unix(7)).
    if let Some(s) = &socket
        && s.as_os_str().len() > 107
    {
        return Err(err(
            "admin.socket",
            format!(
                "{} is {} bytes long; a Unix socket path is at most 107: choose a shorter path",
                s.display(),
                s.as_os_str().len()
            ),
        ));
    }
    let mut identities = Vec::new();
    for (i, id) in raw.identities.iter().enumerate() {
        let key = format!("admin.identities[{i}]");
        let matcher = parse_match(&id.matcher).map_err(|p| err(&format!("{key}.match"), p))?;
        let role = AdminRole::parse(&id.role).map_err(|p| err(&format!("{key}.role"), p))?;
        let seen = match &id.labels {
            None => None,
            Some(names) => {
                for n in names {
                    if !labels.contains_key(n) {
                        return Err(err(
                            &format!("{key}.labels"),
                            format!("no label {n:?} in this file"),
                        ));
                    }
                }
                Some(names.iter().cloned().collect())
            }
        };
        identities.push(AdminIdentity {
            matcher,
            role,
            labels: seen,
        });
    }
    let client_ca = raw.client_ca.as_deref().map(resolve);
    if listen.is_some() && client_ca.is_none() {
        return Err(err(
            "admin.client_ca",
            "the admin listener needs the CA that issues admin client certificates \
             (`matter-est clients ca`)"
                .into(),
        ));
    }
    if listen.is_some() && identities.is_empty() {
        return Err(err(
            "admin.identities",
            "the admin listener needs at least one [[admin.identities]] entry (match and role)"
                .into(),
        ));
    }
    Ok(AdminConfig {
        listen,
        client_ca,
        socket,
        identities,
        metrics: raw.metrics,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    expires_in_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    held_retention_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrlListener {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelCrl {
    url: Option<String>,
    file: Option<PathBuf>,
    next_update_secs: Option<u64>,
    #[serde(default)]
    in_dacs: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    max_new_connections_per_peer_per_sec: Option<u32>,
    handshake_timeout_secs: Option<u64>,
    header_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    pai: PathBuf,
    #[serde(default)]
    chain: Vec<PathBuf>,
    signer: RawSigner,
    #[serde(default = "any_pids")]
    pids: RawPids,
    #[serde(default = "no_expiry")]
    validity: RawValidity,
    quota: Option<u64>,
    #[serde(default = "default_cn_prefix")]
    cn_prefix: String,
    #[serde(default = "drop_others")]
    other_subject_attributes: String,
    #[serde(default)]
    dac_only: bool,
    #[serde(default)]
    client_cas: Vec<PathBuf>,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    reenroll_placeholder_subject: bool,
    renewal: Option<RawRenewal>,
    #[serde(default)]
    serverkeygen: bool,
    rate_limit: Option<RawRateLimit>,
    crl: Option<RawLabelCrl>,
    #[serde(default = "auto_approval")]
    approval: String,
    pending_expiry_secs: Option<u64>,
    pending_retry_after_secs: Option<u64>,
}

fn auto_approval() -> String {
    "auto".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_label_per_sec: Option<u32>,
    per_identity_per_sec: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRenewal {
    min_interval_secs: Option<u64>,
    counts_against_quota: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigner {
    // The file signer.
    file: Option<PathBuf>,
    passphrase_env: Option<String>,
    passphrase_file: Option<PathBuf>,
    // The PKCS#11 signer.
    module: Option<PathBuf>,
    token_label: Option<String>,
    token_serial: Option<String>,
    key_label: Option<String>,
    key_id: Option<String>,
    uri: Option<String>,
    pin_env: Option<String>,
    pin_file: Option<PathBuf>,
    sessions: Option<usize>,
}

/// `[labels.NAME.signer]`: `file` (+ passphrase) or `module` / `uri` (+ token, key, PIN). A
/// refusal is (key under `signer`, problem).
fn parse_signer(
    raw: &RawSigner,
    base: &Path,
) -> std::result::Result<SignerConfig, (String, String)> {
    let bad = |k: &str, p: &str| (k.to_string(), p.to_string());
    let resolve = |p: &Path| base.join(p);
    let is_pkcs11 = raw.module.is_some() || raw.uri.is_some();
    match (&raw.file, is_pkcs11) {
        (Some(_), true) => {
            return Err(bad(
                "file",
                "set file (a key file) or module/uri (a PKCS#11 token), not both",
            ));
        }
        (None, false) => {
            return Err(bad(
                "file",
                "missing: set file (a key file) or module/uri (a PKCS#11 token)",
            ));
        }
        (Some(file), false) => {
            let pkcs11_keys = [
                raw.token_label.is_some(),
                raw.token_serial.is_some(),
                raw.key_label.is_some(),
                raw.key_id.is_some(),
                raw.pin_env.is_some(),
                raw.pin_file.is_some(),
                raw.sessions.is_some(),
            ];
            if pkcs11_keys.contains(&true) {
                return Err(bad(
                    "module",
                    "token, key, PIN and sessions keys belong to a PKCS#11 signer; set module",
                ));
            }
            let passphrase = match (&raw.passphrase_env, &raw.passphrase_file) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "passphrase_env",
                        "set passphrase_env or passphrase_file, not both",
                    ));
                }
                (Some(v), None) => Some(PassphraseSource::Env(v.clone())),
                (None, Some(f)) => Some(PassphraseSource::File(resolve(f))),
                (None, None) => None,
            };
            return Ok(SignerConfig::File {
                key: resolve(file),
                passphrase,
            });
        }
        (None, true) => {}
    }
    if raw.passphrase_env.is_some() || raw.passphrase_file.is_some() {
        return Err(bad(
            "passphrase_env",
            "a PKCS#11 token takes a PIN: use pin_env or pin_file",
        ));
    }
    let uri = raw
        .uri
        .as_deref()
        .map(pkcs11::parse_uri)
        .transpose()
        .map_err(|p| ("uri".to_string(), p))?
        .unwrap_or_default();
    let one = |k: &str, a: Option<String>, b: Option<String>| match (a, b) {
        (Some(_), Some(_)) => Err(bad(k, "given both here and in uri; give it once")),
        (a, b) => Ok(a.or(b)),
    };
    let module = match (&raw.module, &uri.module_path) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "module",
                "given both here and as the uri's module-path",
            ));
        }
        // A bare file name is left to the dynamic loader's search path.
        (Some(m), None) | (None, Some(m)) if m.components().count() == 1 => m.clone(),
        (Some(m), None) | (None, Some(m)) => resolve(m),
        (None, None) => {
            return Err(bad(
                "module",
                "missing: the PKCS#11 library path (e.g. /usr/lib/softhsm/libsofthsm2.so)",
            ));
        }
    };
    let token = TokenSelector {
        label: one("token_label", raw.token_label.clone(), uri.token.clone())?,
        serial: one("token_serial", raw.token_serial.clone(), uri.serial.clone())?,
    };
    if token.label.is_none() && token.serial.is_none() {
        return Err(bad(
            "token_label",
            "missing: set token_label or token_serial",
        ));
    }
    let key_id = raw
        .key_id
        .as_deref()
        .map(|h| {
            let h = h.replace(':', "");
            (0..h.len())
                .step_by(2)
                .map(|i| h.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| bad("key_id", "expected hex bytes, e.g. \"01a2\""))
        })
        .transpose()?;
    let key_id = match (key_id, uri.id.clone()) {
        (Some(_), Some(_)) => {
            return Err(bad("key_id", "given both here and in uri; give it once"));
        }
        (a, b) => a.or(b),
    };
    let pin = match (&raw.pin_env, &raw.pin_file, &uri.pin_source) {
        (Some(v), None, None) => PassphraseSource::Env(v.clone()),
        (None, Some(f), None) | (None, None, Some(f)) => PassphraseSource::File(resolve(f)),
        (None, None, None) => {
            return Err(bad(
                "pin_env",
                "missing: the user PIN comes from pin_env or pin_file (never the config itself)",
            ));
        }
        _ => {
            return Err(bad(
                "pin_env",
                "set one of pin_env, pin_file, the uri's pin-source",
            ));
        }
    };
    let sessions = raw.sessions.unwrap_or(pkcs11::DEFAULT_SESSIONS);
    if !(1..=pkcs11::MAX_SESSIONS).contains(&sessions) {
        return Err(bad(
            "sessions",
            &format!("{sessions}: expected 1 to {}", pkcs11::MAX_SESSIONS),
        ));
    }
    Ok(SignerConfig::Pkcs11(Pkcs11Config {
        module,
        token,
        key_label: one("key_label", raw.key_label.clone(), uri.object.clone())?,
        key_id,
        pin,
        sessions,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    #[serde(rename = "match")]
    matcher: String,
    vids: Option<Vec<String>>,
    #[serde(default = "any_pids")]
    pids: RawPids,
    approval: Option<String>,
}

enum RawPids {
    Any(String),
    List(Vec<String>),
}

enum RawValidity {
    Text(String),
    Days(u64),
}

/// `pids`: "any" or a list of PIDs, with a message that says so (serde's untagged enums say
/// only "data did not match any variant").
impl<'de> Deserialize<'de> for RawPids {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawPids;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"any\" or a list of PIDs like [\"8000\", \"8001\"]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<RawPids, E> {
                Ok(RawPids::Any(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<RawPids, A::Error> {
                let mut list = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    list.push(p);
                }
                Ok(RawPids::List(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// `validity`: "no-expiry" or a number of days, with a message that says so.
impl<'de> Deserialize<'de> for RawValidity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawValidity;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"no-expiry\" or a number of days")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<RawValidity, E> {
                Ok(RawValidity::Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<RawValidity, E> {
                u64::try_from(v)
                    .map(RawValidity::Days)
                    .map_err(|_| E::custom(format!("{v} days: expected 1 to 36500")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<RawValidity, E> {
                Ok(RawValidity::Days(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn any_pids() -> RawPids {
    RawPids::Any("any".into())
}
fn no_expiry() -> RawValidity {
    RawValidity::Text("no-expiry".into())
}
fn default_cn_prefix() -> String {
    "matter-est-".into()
}
fn drop_others() -> String {
    "drop".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
ledger = "l.redb"
[labels.a]
pai = "pai.pem"
signer = { file = "pai.key" }
"#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/etc/matter-est/x.toml"), text)
    }

    #[test]
    fn approval_keys_are_checked() {
        let c = parse(MINIMAL).expect("valid");
        let a = &c.labels["a"];
        assert_eq!(a.approval, Approval::Auto);
        assert_eq!(a.pending_expiry, Approval::DEFAULT_EXPIRY);
        assert_eq!(a.pending_retry_after, Approval::DEFAULT_RETRY_AFTER);
        let with = |keys: &str| parse(&MINIMAL.replace("signer =", &format!("{keys}\nsigner =")));
        let c =
            with("approval = \"manual\"\npending_expiry_secs = 3600\npending_retry_after_secs = 5")
                .expect("valid");
        let a = &c.labels["a"];
        assert_eq!(a.approval, Approval::Manual);
        assert_eq!(a.pending_expiry, Duration::from_secs(3600));
        assert_eq!(a.pending_retry_after, Duration::from_secs(5));
        let refused = |text: String, key: &str, problem: &str| {
            let e = parse(&text).expect_err("refused").to_string();
            assert!(e.contains(key) && e.contains(problem), "{e}");
        };
        refused(
            MINIMAL.replace("signer =", "approval = \"maybe\"\nsigner ="),
            "labels.a.approval",
            "\"auto\" or \"manual\"",
        );
        refused(
            MINIMAL.replace("signer =", "pending_expiry_secs = 0\nsigner ="),
            "labels.a.pending_expiry_secs",
            "at least 1 second",
        );
        refused(
            MINIMAL.replace(
                "signer =",
                "approval = \"manual\"\nserverkeygen = true\nsigner =",
            ),
            "labels.a.serverkeygen",
            "approval",
        );
        // A client rule overrides the label for its clients.
        let rules = format!(
            "{MINIMAL}client_cas = [\"ca.pem\"]\n[[labels.a.clients]]\nmatch = \"cn:x\"\n\
             approval = \"manual\"\n[[labels.a.clients]]\nmatch = \"cn:y\"\n"
        );
        let c = parse(&rules).expect("valid");
        let clients = &c.labels["a"].clients;
        assert_eq!(clients[0].approval, Some(Approval::Manual));
        assert_eq!(clients[1].approval, None);
        refused(
            rules.replace("approval = \"manual\"", "approval = \"later\""),
            "labels.a.clients[0].approval",
            "\"auto\" or \"manual\"",
        );
    }

    #[test]
    fn errors_found_after_parsing_name_the_line() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n\n[labels.a]\nquota = 0\n\
                    [[labels.a.clients]]\nmatch = \"cn:x\"\n[[labels.a.clients]]\nmatch = \"x\"\n";
        assert_eq!(line_of(text, "labels.a.quota"), Some(5));
        assert_eq!(line_of(text, "labels.a.clients[1].match"), Some(9));
        assert_eq!(line_of(text, "labels.a"), Some(4));
        assert_eq!(line_of(text, "labels.b"), None);
        let err = parse(&MINIMAL.replace("[labels.a]", "[labels.a]\nquota = 0"))
            .expect_err("quota 0")
            .to_string();
        let line = MINIMAL
            .lines()
            .position(|l| l.trim() == "[labels.a]")
            .expect("the label")
            + 2;
        assert!(
            err.contains(&format!("labels.a.quota (line {line})")),
            "{err}"
        );
    }

    /// The key an error names, without the line it adds.
    fn unlined(key: &str) -> &str {
        key.split(" (line ").next().unwrap_or(key)
    }

    #[test]
    fn store_keys_are_checked() {
        let pg = |keys: &str| {
            parse(&format!(
                "{}[store]\nkind = \"postgres\"\n{keys}\n",
                MINIMAL.replace("ledger = \"l.redb\"\n", "")
            ))
        };
        let problem = |keys: &str| match pg(keys) {
            Err(Error::Config { key, problem, .. }) => format!("{}: {problem}", unlined(&key)),
            other => panic!("{other:?}"),
        };
        let c = pg(
            "url = \"postgresql://me@db.example/m\"\npassword_file = \"db.pw\"\n\
                    tls = \"verify-full\"\nca_file = \"db-ca.pem\"",
        )
        .expect("valid");
        let StoreConfig::Postgres(p) = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(p.pool_size, 16);
        assert_eq!(p.statement_timeout, Duration::from_millis(5000));
        assert_eq!(
            p.password,
            Some(PassphraseSource::File("/etc/matter-est/db.pw".into()))
        );
        assert_eq!(
            p.tls,
            PostgresTls::VerifyFull {
                ca_file: "/etc/matter-est/db-ca.pem".into()
            }
        );
        assert_eq!(c.admin.socket, Some(PathBuf::from(POSTGRES_DEFAULT_SOCKET)));
        assert!(
            problem("url = \"postgresql://me:secret@db/m\"\ntls = \"disable\"")
                .starts_with("store.url: holds a password")
        );
        assert!(
            problem("url = \"host=db user=me password=secret\"\ntls = \"disable\"")
                .starts_with("store.url: holds a password")
        );
        assert!(problem("url = \"postgresql://me@db/m\"").starts_with("store.tls: required"));
        assert!(
            problem("url = \"postgresql://me@db/m\"\ntls = \"verify-full\"")
                .starts_with("store.ca_file: required")
        );
        assert!(
            problem("url = \"postgresql://me@db/m\"\ntls = \"disable\"\npool_size = 0")
                .starts_with("store.pool_size")
        );
        assert!(
            problem(
                "url = \"postgresql://me@db/m\"\ntls = \"disable\"\npassword_env = \"A\"\n\
                 password_file = \"b\""
            )
            .starts_with("store.password_file")
        );
        assert!(problem("tls = \"disable\"").starts_with("store.url: required"));
        // redb: pg keys refused, `ledger` required; postgres: `ledger` refused.
        let redb = parse(&format!("{MINIMAL}[store]\nkind = \"redb\"\nurl = \"x\"\n"));
        assert!(matches!(redb, Err(Error::Config { key, .. }) if unlined(&key) == "store.url"));
        let no_ledger = parse(&MINIMAL.replace("ledger = \"l.redb\"\n", ""));
        assert!(matches!(no_ledger, Err(Error::Config { key, .. }) if unlined(&key) == "ledger"));
        let both = parse(&format!(
            "{MINIMAL}[store]\nkind = \"postgres\"\nurl = \"postgresql://me@db/m\"\ntls = \"disable\"\n"
        ));
        assert!(matches!(both, Err(Error::Config { key, .. }) if unlined(&key) == "ledger"));
        let kind = parse(&format!("{MINIMAL}[store]\nkind = \"sqlite\"\n"));
        assert!(matches!(kind, Err(Error::Config { key, .. }) if unlined(&key) == "store.kind"));
    }

    #[test]
    fn admin_keys_are_checked() {
        let c = parse(&MINIMAL.replace("l.redb", "/var/lib/m/l.redb")).expect("valid");
        assert_eq!(
            c.admin.socket,
            Some(PathBuf::from("/var/lib/m/admin.sock")),
            "beside the ledger"
        );
        assert!(c.admin.listen.is_none());
        assert!(c.admin.metrics, "metrics are on by default");
        let with = |admin: &str| parse(&format!("{MINIMAL}[admin]\n{admin}\n"));
        let c = with("socket = \"\"").expect("valid");
        assert_eq!(c.admin.socket, None);
        assert!(c.admin.metrics, "on unless [admin] turns them off");
        assert!(!with("metrics = false").expect("valid").admin.metrics);
        assert!(with("metrics = true").expect("valid").admin.metrics);
        // A value that is not a boolean names the key and its line; a misspelt key is refused.
        let msg = with("metrics = \"off\"").expect_err("a string").to_string();
        assert!(
            msg.contains("admin.metrics (line 7)") && msg.contains("expected a boolean"),
            "{msg}"
        );
        let msg = with("metric = false").expect_err("unknown").to_string();
        assert!(
            msg.contains("metric") && msg.contains("unknown field"),
            "{msg}"
        );
        let c = with(
            "listen = \"127.0.0.1:9443\"\nclient_ca = \"ca.pem\"\n[[admin.identities]]\n\
             match = \"cn:x\"\nrole = \"operator\"\nlabels = [\"a\"]",
        )
        .expect("valid");
        assert_eq!(c.admin.identities[0].role, AdminRole::Operator);
        assert_eq!(
            c.admin.client_ca,
            Some(PathBuf::from("/etc/matter-est/ca.pem"))
        );
        let long = format!("socket = \"/{}\"", "s".repeat(120));
        let cases = [
            ("listen = \"127.0.0.1:9443\"", "admin.client_ca"),
            (
                "listen = \"127.0.0.1:9443\"\nclient_ca = \"ca.pem\"",
                "admin.identities",
            ),
            ("listen = \"nowhere\"", "admin.listen"),
            (long.as_str(), "admin.socket"),
            (
                "[[admin.identities]]\nmatch = \"cn:x\"\nrole = \"root\"",
                "admin.identities[0].role",
            ),
            (
                "[[admin.identities]]\nmatch = \"cn:x\"\nrole = \"admin\"\nlabels = [\"b\"]",
                "admin.identities[0].labels",
            ),
            (
                "[[admin.identities]]\nmatch = \"name:x\"\nrole = \"admin\"",
                "admin.identities[0].match",
            ),
        ];
        for (text, key) in cases {
            let msg = with(text).expect_err(text).to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.default_label, "a");
        assert_eq!(
            c.store,
            StoreConfig::Redb(PathBuf::from("/etc/matter-est/l.redb"))
        );
        let l = c.label("a").expect("label");
        assert_eq!(l.pids, PidPolicy::Any);
        assert_eq!(l.validity, Validity::NoExpiry);
        assert_eq!(c.server.limits, Limits::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}colour = \"red\"\n")).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("colour") && msg.contains("x.toml"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("pids = [\"80\"]", "labels.a.pids"),
            ("pids = \"some\"", "labels.a.pids"),
            ("validity = \"forever\"", "labels.a.validity"),
            ("validity = 0", "labels.a.validity"),
            ("quota = 0", "labels.a.quota"),
            (
                "other_subject_attributes = \"keep\"",
                "labels.a.other_subject_attributes",
            ),
        ];
        for (line, key) in cases {
            let text = MINIMAL.replace("signer =", &format!("{line}\nsigner ="));
            let msg = parse(&text).expect_err(line).to_string();
            assert!(msg.contains(key), "{line}: {msg}");
        }
    }

    #[test]
    fn parse_errors_name_the_key_and_line() {
        let cases = [
            (
                MINIMAL.replace(
                    "[labels.a]",
                    "[server]\nmax_connections = \"4096\"\n[labels.a]",
                ),
                "server.max_connections (line 4)",
                "expected usize",
            ),
            (
                MINIMAL.replace("signer =", "pids = 8000\nsigner ="),
                "labels.a.pids (line 5)",
                "\"any\" or a list of PIDs",
            ),
            (
                MINIMAL.replace("signer =", "validity = [1]\nsigner ="),
                "labels.a.validity (line 5)",
                "\"no-expiry\" or a number of days",
            ),
            (
                format!(
                    "{MINIMAL}[[labels.a.clients]]\nmatch = \"cn:x\"\n[[labels.a.clients]]\nmatch = 3\n"
                ),
                "labels.a.clients[1].match (line 9)",
                "expected a string",
            ),
            (
                MINIMAL.replace(
                    "[labels.a]",
                    "[server]\nmax_new_connections_per_peer_per_sec = 0\n[labels.a]",
                ),
                "server.max_new_connections_per_peer_per_sec (line 4)",
                "at least 1",
            ),
            (
                MINIMAL.replace(
                    "[labels.a]",
                    "[approval]\nheld_retention_secs = 0\n[labels.a]",
                ),
                "approval.held_retention_secs (line 4)",
                "at least 1 second",
            ),
            (
                MINIMAL.replace(
                    "[labels.a]",
                    "[approval]\nheld_retention_secs = -1\n[labels.a]",
                ),
                "approval.held_retention_secs (line 4)",
                "expected u64",
            ),
        ];
        for (text, key, problem) in cases {
            let msg = parse(&text).expect_err(key).to_string();
            assert!(msg.contains(key) && msg.contains(problem), "{key}: {msg}");
            assert!(!msg.contains("variant"), "{msg}");
        }
        let msg = Config::load(Path::new("/nonexistent/matter-est.toml"))
            .expect_err("missing")
            .to_string();
        assert!(
            msg.starts_with("/nonexistent/matter-est.toml: No such file"),
            "{msg}"
        );
    }

    #[test]
    fn held_retention_defaults_to_30_days() {
        assert_eq!(
            parse(MINIMAL).expect("parses").held_retention,
            DEFAULT_HELD_RETENTION
        );
        let text = MINIMAL.replace(
            "[labels.a]",
            "[approval]\nheld_retention_secs = 60\n[labels.a]",
        );
        assert_eq!(
            parse(&text).expect("parses").held_retention,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn shipped_configs_parse() {
        for (name, text) in [
            ("example.toml", include_str!("../config/example.toml")),
            ("dev.toml", include_str!("../config/dev.toml")),
        ] {
            Config::parse(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn pkcs11_signer_from_keys_or_uri() {
        let keys = MINIMAL.replace(
            "signer = { file = \"pai.key\" }",
            "signer = { module = \"/usr/lib/softhsm/libsofthsm2.so\", token_label = \"pai\", \
             key_id = \"01:ab\", pin_file = \"pin\", sessions = 3 }",
        );
        let uri = MINIMAL.replace(
            "signer = { file = \"pai.key\" }",
            "signer = { uri = \"pkcs11:token=pai;id=%01%ab?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=pin\", sessions = 3 }",
        );
        for text in [keys, uri] {
            let c = parse(&text).expect("valid");
            let SignerConfig::Pkcs11(p) = &c.label("a").expect("label").signer else {
                panic!("not pkcs11")
            };
            assert_eq!(p.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
            assert_eq!(p.token.label.as_deref(), Some("pai"));
            assert_eq!(p.key_id, Some(vec![0x01, 0xab]));
            assert_eq!(
                p.pin,
                PassphraseSource::File(PathBuf::from("/etc/matter-est/pin"))
            );
            assert_eq!(p.sessions, 3);
        }
    }

    #[test]
    fn pkcs11_signer_refusals_name_their_key() {
        let cases = [
            (
                "{ file = \"k\", module = \"/m.so\" }",
                "labels.a.signer.file",
            ),
            (
                "{ module = \"/m.so\", pin_env = \"P\" }",
                "signer.token_label",
            ),
            (
                "{ module = \"/m.so\", token_label = \"t\" }",
                "signer.pin_env",
            ),
            (
                "{ module = \"/m.so\", token_label = \"t\", pin_env = \"P\", sessions = 0 }",
                "signer.sessions",
            ),
            (
                "{ uri = \"pkcs11:token=t?pin-value=1\", module = \"/m.so\" }",
                "signer.uri",
            ),
            ("{ file = \"k\", pin_env = \"P\" }", "signer.module"),
        ];
        for (signer, key) in cases {
            let text = MINIMAL.replace("{ file = \"pai.key\" }", signer);
            let msg = parse(&text).expect_err(signer).to_string();
            assert!(msg.contains(key), "{signer}: {msg}");
        }
    }

    #[test]
    fn crl_keys_are_checked() {
        let with = |lines: &str| {
            parse(
                &format!(
                    "{MINIMAL}[labels.a.crl]\n{lines}\n[labels.a.signer]\nfile = \"pai.key\"\n"
                )
                .replace("signer = { file = \"pai.key\" }\n", ""),
            )
        };
        let c = with("url = \"http://crl.example.com/a.crl\"\nin_dacs = true").expect("valid");
        let crl = c.label("a").expect("label").crl.clone().expect("crl");
        assert_eq!(crl.url.as_ref().map(|u| u.path()), Some("/a.crl"));
        assert_eq!(crl.file, PathBuf::from("/etc/matter-est/crl/a.crl"));
        assert_eq!(crl.next_update, CrlConfig::DEFAULT_NEXT_UPDATE);
        let long = format!(
            "url = \"http://crl.example.com/{}\"\nin_dacs = true",
            "x".repeat(80)
        );
        let cases = [
            (long.as_str(), "100"),
            ("url = \"ftp://crl.example.com/a.crl\"", "http"),
            ("in_dacs = true", "crl.in_dacs"),
            (
                "url = \"http://x/a.crl\"\nnext_update_secs = 5",
                "next_update_secs",
            ),
        ];
        for (lines, needle) in cases {
            let msg = with(lines).expect_err(lines).to_string();
            assert!(
                msg.contains(needle) && msg.contains("labels.a.crl"),
                "{lines}: {msg}"
            );
        }
        // A long dataURL is fine when it does not go into DACs (the DCL allows 256).
        with(&format!(
            "url = \"http://crl.example.com/{}\"",
            "x".repeat(150)
        ))
        .expect("valid");
    }

    #[test]
    fn label_may_not_be_an_operation() {
        let text = MINIMAL.replace("[labels.a]", "[labels.cacerts]");
        let msg = parse(&text).expect_err("refused").to_string();
        assert!(msg.contains("operation"), "{msg}");
    }
}
