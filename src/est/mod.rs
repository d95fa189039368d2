//! The EST HTTP layer (RFC 7030 §3.2.2): one router with an optional label, thin handlers that
//! decode, call one service function, and encode. `est` knows nothing of keys.

pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::approval;
use crate::asn1;
use crate::config::Limits;
use crate::csr;
use crate::error::{Error, ErrorKind, Result};
use crate::issuance::{IssueOptions, Issued, Issuer, Label, Prepared, RepeatCheck};
use crate::policy::{Basic, Enroller, PeerChain, Policy, Renewal};
use crate::store::audit::AuditEvent;
use crate::store::{Committed, Pending};

/// The realm of the HTTP Basic challenge (RFC 7617 §2).
pub const REALM: &str = "matter-est";

/// The EST operations we serve (RFC 7030 §3.2.2). serverkeygen only on labels that enable it
/// (`labels.NAME.serverkeygen`): a DAC key generated off the device has left the device's sole
/// control, which Matter attestation otherwise assumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CaCerts,
    SimpleEnroll,
    SimpleReenroll,
    CsrAttrs,
    ServerKeyGen,
}

impl Op {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "cacerts" => Some(Op::CaCerts),
            "simpleenroll" => Some(Op::SimpleEnroll),
            "simplereenroll" => Some(Op::SimpleReenroll),
            "csrattrs" => Some(Op::CsrAttrs),
            "serverkeygen" => Some(Op::ServerKeyGen),
            _ => None,
        }
    }

    fn method(self) -> Method {
        match self {
            Op::CaCerts | Op::CsrAttrs => Method::GET,
            Op::SimpleEnroll | Op::SimpleReenroll | Op::ServerKeyGen => Method::POST,
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Op::CaCerts | Op::CsrAttrs => "GET",
            Op::SimpleEnroll | Op::SimpleReenroll | Op::ServerKeyGen => "POST",
        }
    }

    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Op::CaCerts => "cacerts",
            Op::SimpleEnroll => "simpleenroll",
            Op::SimpleReenroll => "simplereenroll",
            Op::CsrAttrs => "csrattrs",
            Op::ServerKeyGen => "serverkeygen",
        }
    }
}

/// What one connection knows about its peer.
#[derive(Debug)]
pub struct Conn {
    pub addr: SocketAddr,
    pub peer: Option<PeerChain>,
}

/// The application: issuance, policy, and precomputed responses.
pub struct App {
    pub issuer: Arc<Issuer>,
    pub policy: Policy,
    pub default_label: String,
    pub limits: Limits,
    /// `[labels.NAME.rate_limit]`, in memory.
    rate_limits: crate::ratelimit::RateLimits,
    cacerts: BTreeMap<String, Bytes>,
    csrattrs: Bytes,
}

impl App {
    /// Builds the application over a loaded issuer.
    pub fn new(issuer: Arc<Issuer>, default_label: String, limits: Limits) -> Result<Self> {
        let policy = Policy::new(&issuer)?;
        let cacerts = issuer
            .labels()
            .map(|l| {
                // EST-WIRE.md: /cacerts is PAI then PAA.
                let mut certs: Vec<&[u8]> = vec![&l.pai.der];
                certs.extend(l.chain.iter().map(Vec::as_slice));
                let body = wire::base64_wrapped(&wire::certs_only(&certs));
                (l.config.name.clone(), Bytes::from(body))
            })
            .collect();
        let rate_limits = crate::ratelimit::RateLimits::new(issuer.labels().map(|l| &l.config));
        Ok(Self {
            issuer,
            policy,
            default_label,
            limits,
            rate_limits,
            cacerts,
            csrattrs: Bytes::from(wire::base64_wrapped(&wire::matter_csr_attrs())),
        })
    }
}

/// What a handler answers, before it becomes a hyper response.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    base64: bool,
    body: Bytes,
    extra: Option<(header::HeaderName, HeaderValue)>,
}

/// Facts for the request's log line.
#[derive(Default)]
struct Outcome {
    label: Option<String>,
    op: Option<&'static str>,
    /// Who the request authenticated as (also on a refusal after authentication).
    identity: Option<String>,
    /// The credential presented, authenticated or not: a client certificate's subject, or an
    /// HTTP Basic user name.
    presented: Option<String>,
    serial: Option<String>,
    error: Option<String>,
    /// The error's kind, for the metrics.
    kind: Option<ErrorKind>,
}

/// Serves one request. Never fails: every error becomes a response with its status.
pub async fn handle(
    app: Arc<App>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let deadline = app.limits.request_timeout;
    let reply = match tokio::time::timeout(deadline, route(&app, &conn, req, &mut outcome)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => error_reply(&e, &mut outcome),
        Err(_) => error_reply(
            &Error::Timeout {
                secs: deadline.as_secs(),
            },
            &mut outcome,
        ),
    };
    let status = reply.status.as_u16();
    // DESIGN.md "The operator plane": a refused enrollment is audited with the rule that
    // refused it (the message the client got) and who asked.
    // A request held for approval (202) is no refusal: the ledger audited it as held.
    if let (Some(op @ ("simpleenroll" | "simplereenroll")), Some(rule), false) = (
        outcome.op,
        outcome.error.as_ref(),
        outcome.kind == Some(ErrorKind::Held),
    ) {
        app.issuer.ledger().audit(AuditEvent::EnrollmentRefused {
            label: outcome.label.clone().unwrap_or_default(),
            identity: outcome.identity.clone(),
            presented: outcome.presented.clone(),
            op: op.to_string(),
            status,
            rule: rule.clone(),
        });
    }
    tracing::info!(
        peer = %conn.addr,
        identity = outcome.identity.as_deref().unwrap_or("-"),
        presented = outcome.presented.as_deref().unwrap_or("-"),
        label = outcome.label.as_deref().unwrap_or("-"),
        op = outcome.op.unwrap_or("-"),
        status,
        serial = outcome.serial.as_deref().unwrap_or("-"),
        error = outcome.error.as_deref().unwrap_or("-"),
        duration_us = start.elapsed().as_micros() as u64,
        "request"
    );
    crate::admin::metrics::est_request(
        outcome.label.as_deref(),
        outcome.op,
        outcome.kind,
        start.elapsed().as_secs_f64(),
    );
    Ok(into_response(reply))
}

async fn route(
    app: &Arc<App>,
    conn: &Arc<Conn>,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Result<Reply> {
    let path = req.uri().path();
    let rest = path
        .strip_prefix("/.well-known/est/")
        .ok_or_else(|| Error::NotFound(format!("no EST resource at {path}")))?;
    let (label, op_name) = match rest.split_once('/') {
        Some((label, op)) if !op.contains('/') => (label, op),
        Some(_) => return Err(Error::NotFound(format!("no EST resource at {path}"))),
        None => (app.default_label.as_str(), rest),
    };
    let op = Op::parse(op_name).ok_or_else(|| {
        Error::NotFound(format!("{op_name:?} is not an EST operation served here"))
    })?;
    outcome.op = Some(op.name());
    let label = app.issuer.label(label)?.clone();
    outcome.label = Some(label.config.name.clone());
    if req.method() != op.method() {
        return Err(Error::MethodNotAllowed {
            method: req.method().to_string(),
            allow: op.allow(),
        });
    }
    match op {
        Op::CaCerts => Ok(Reply::base64(
            wire::CT_CACERTS,
            app.cacerts
                .get(&label.config.name)
                .cloned()
                .unwrap_or_default(),
        )),
        Op::CsrAttrs => Ok(Reply::base64(wire::CT_CSRATTRS, app.csrattrs.clone())),
        Op::SimpleEnroll | Op::SimpleReenroll | Op::ServerKeyGen => {
            let basic = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(Basic::parse);
            outcome.presented = match (&conn.peer, &basic) {
                (Some(peer), _) => Some(peer.display.clone()),
                (None, Some(b)) => Some(format!("basic:{}", b.user)),
                (None, None) => None,
            };
            let body = read_body(app, req).await?;
            let (app, conn, for_task) = (app.clone(), conn.clone(), label.clone());
            // The issuing thread hands its DAC to the ledger, and the ledger's thread hands the
            // DAC and the commit's outcome here: one wake-up of this task per enrollment. Who
            // asked comes back on a refusal too, for the log.
            let (done, answer) = Pending::<Attempt>::new();
            tokio::task::spawn_blocking(move || {
                let peer = conn.peer.as_ref();
                let mut who = None;
                match enroll(&app, &for_task, op, peer, basic.as_ref(), &body, &mut who) {
                    Ok((prepared, key)) => app.issuer.submit_then(prepared, move |issued, r| {
                        done.complete(Ok((who, r.map(|committed| (issued, committed, key)))));
                    }),
                    Err(e) => done.complete(Ok((who, Err(e)))),
                }
            });
            let (who, result) = answer.await?;
            outcome.identity = who;
            // Recorded durably before anything is returned (DESIGN.md step 7).
            let (issued, committed, key) = result?;
            let issued = issued.settle(committed)?;
            outcome.serial = Some(asn1::hex(&issued.dac.serial));
            let certs = issued_certs(&label, &issued);
            match key {
                None => Ok(Reply::base64(
                    wire::CT_CERTS_ONLY,
                    Bytes::from(wire::base64_wrapped(&certs)),
                )),
                // RFC 7030 §4.4.2: the key and the certificate, each a base64 part.
                Some(key) => Ok(Reply {
                    status: StatusCode::OK,
                    content_type: wire::CT_SERVERKEYGEN,
                    base64: false,
                    body: Bytes::from(wire::serverkeygen_body(&key.part()?, &certs)),
                    extra: None,
                }),
            }
        }
    }
}

/// Checks the media type and reads the body under the cap (EST-WIRE.md: cap before parsing or
/// authenticating).
async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes> {
    let limit = app.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    // Read the (capped) body before judging its media type, so a 415 keeps the keep-alive
    // connection usable.
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Error::PayloadTooLarge { limit });
        }
        Err(e) => return Err(Error::BadRequest(format!("could not read the body: {e}"))),
    };
    if !wire::is_pkcs10(&content_type) {
        return Err(Error::UnsupportedMediaType {
            expected: "application/pkcs10",
            found: content_type,
        });
    }
    Ok(body)
}

/// What an enrollment attempt comes to: who it authenticated as (if it got that far), and the
/// DAC with its commit's outcome (and, for serverkeygen, the key made for it), or why it was
/// refused.
type Attempt = (
    Option<String>,
    Result<(Issued, Committed, Option<ServerKey>)>,
);

/// A key made by `serverkeygen`: returned once, in the response, never stored or logged.
struct ServerKey {
    pkcs8: Vec<u8>,
    /// RFC 7030 §4.4.1.2: encrypt it to this key (CMS EnvelopedData).
    seal_to: Option<crate::envelope::Recipient>,
}

impl ServerKey {
    /// The response part: its content type and its DER.
    fn part(&self) -> Result<(&'static str, Vec<u8>)> {
        match &self.seal_to {
            None => Ok((wire::CT_PKCS8, self.pkcs8.clone())),
            Some(to) => Ok((
                wire::CT_SERVER_GENERATED_KEY,
                crate::envelope::seal(&self.pkcs8, to)?,
            )),
        }
    }
}

/// The enrollment service call, off the async runtime: authenticate, decode, authorise, then
/// either find the DAC on record that the request repeats or sign and self-check a new one.
/// Sets `who` as soon as the requester is authenticated.
fn enroll(
    app: &App,
    label: &Arc<Label>,
    op: Op,
    peer: Option<&PeerChain>,
    basic: Option<&Basic>,
    body: &[u8],
    who: &mut Option<String>,
) -> Result<(Prepared, Option<ServerKey>)> {
    let ledger = app.issuer.ledger().as_ref();
    let name = &label.config.name;
    match op {
        Op::ServerKeyGen => {
            // Only over mutual TLS: the key goes to the holder of an authenticated client
            // certificate, never to a bearer of a password.
            let Some(peer) = peer else {
                return Err(Error::Unauthenticated(
                    "serverkeygen requires a client certificate (mutual TLS)".into(),
                ));
            };
            let enroller =
                app.policy
                    .authenticate_enroll(&label.config, Some(peer), None, ledger)?;
            *who = Some(enroller.requester());
            app.rate_limits.take(name, &enroller.requester())?;
            if !label.config.serverkeygen {
                return Err(Error::Forbidden(format!(
                    "label {name:?} does not offer serverkeygen (labels.{name}.serverkeygen)"
                )));
            }
            let mut req = csr::parse(body)?;
            let seal_to = match &req.decrypt_key_id {
                None => None,
                Some(id) => Some(seal_recipient(id, &req.public_key, peer)?),
            };
            // The CSR authenticated the request and names the subject; the DAC certifies a
            // key made here.
            let (pkcs8, point) = crate::signer::generate_p256()?;
            req.public_key = point;
            let opts = IssueOptions {
                requester: enroller.requester(),
                token: None,
                renews: None,
                server_keygen: true,
                // The key was made here just now: no DAC on record can hold it.
                repeat: RepeatCheck::AtCommit,
            };
            let prepared = app
                .issuer
                .prepare_with(name, &req, &opts, |subject, repeat| {
                    Policy::authorize(&enroller, name, subject, repeat)
                })?;
            Ok((prepared, Some(ServerKey { pkcs8, seal_to })))
        }
        Op::SimpleReenroll => {
            if peer.is_none() {
                // Cheap refusal before decoding (RFC 7030 §4.2.2 needs the old certificate).
                return Err(Error::Unauthenticated(
                    "simplereenroll requires the DAC being renewed as the TLS client certificate"
                        .into(),
                ));
            }
            let req = csr::parse(body)?;
            match app
                .policy
                .authenticate_renewal(label, peer, &req, ledger, who)?
            {
                Renewal::Repeat(record) => {
                    *who = record
                        .renews
                        .as_deref()
                        .map(|s| format!("dac:{}", asn1::hex(s)));
                    Ok((Prepared::on_record(record)?, None))
                }
                Renewal::Renew { old, subject } => {
                    let requester = format!("dac:{}", asn1::hex(&old.serial));
                    *who = Some(requester.clone());
                    let opts = IssueOptions {
                        requester,
                        token: None,
                        renews: Some((old, subject)),
                        server_keygen: false,
                        repeat: RepeatCheck::Before,
                    };
                    let prepared = app.issuer.prepare_with(name, &req, &opts, |subject, _| {
                        Policy::authorize_renewal(label, subject)?;
                        approval::gate(
                            ledger,
                            &approval::Asking {
                                label: &label.config,
                                approval: label.config.approval,
                                request: &req,
                                subject,
                                requester: &opts.requester,
                                kind: "renewal",
                            },
                            asn1::now(),
                        )?;
                        // Held renewals (202) take nothing from the rate limit either.
                        app.rate_limits.take(name, &opts.requester)
                    })?;
                    Ok((prepared, None))
                }
            }
        }
        _ => {
            let enroller = app
                .policy
                .authenticate_enroll(&label.config, peer, basic, ledger)?;
            *who = Some(enroller.requester());
            let req = csr::parse(body)?;
            if req.form == csr::BodyForm::Pem {
                tracing::debug!(label = %name, "CSR arrived PEM-armoured");
            }
            let opts = IssueOptions {
                requester: enroller.requester(),
                token: enroller.token(),
                renews: None,
                server_keygen: false,
                repeat: repeat_check(app, &label.config, &enroller),
            };
            let prepared = app
                .issuer
                .prepare_with(name, &req, &opts, |subject, repeat| {
                    Policy::authorize(&enroller, name, subject, repeat)?;
                    // A repeat is answered whatever the rate or approval: it issues nothing.
                    if repeat.is_some() {
                        return Ok(());
                    }
                    // Held requests (202) take nothing from the rate limit.
                    approval::gate(
                        ledger,
                        &approval::Asking {
                            label: &label.config,
                            approval: enroller.approval(&label.config),
                            request: &req,
                            subject,
                            requester: &opts.requester,
                            kind: "enrollment",
                        },
                        asn1::now(),
                    )?;
                    app.rate_limits.take(name, &enroller.requester())
                })?;
            Ok((prepared, None))
        }
    }
}

/// Where an enrollment's repeat is found ([`RepeatCheck`]): before signing when the answer
/// before the commit depends on it — a spent token is accepted only for its repeat
/// ([`Policy::authorize`]), and a repeat is answered whatever the rate limit or approval (the
/// `prepare_with` closure in [`enroll`]) — else at the commit, which answers a repeat with the
/// DAC on record by itself (issue 16: one ledger read less per enrollment).
fn repeat_check(app: &App, label: &crate::config::LabelConfig, enroller: &Enroller) -> RepeatCheck {
    let spent_token = matches!(enroller, Enroller::Token(t) if t.spent_by.is_some());
    if spent_token
        || enroller.approval(label) != crate::config::Approval::Auto
        || app.rate_limits.limits(&label.name)
    {
        RepeatCheck::Before
    } else {
        RepeatCheck::AtCommit
    }
}

/// The enroll response's certs-only PKCS#7: the DAC and the PAI (DESIGN.md step 8), or the DAC
/// alone with `dac_only` (RFC 7030 §4.2.3).
fn issued_certs(label: &Label, issued: &Issued) -> Vec<u8> {
    if label.config.dac_only {
        wire::certs_only(&[&issued.dac.der])
    } else {
        wire::certs_only(&[&issued.dac.der, &label.pai.der])
    }
}

/// RFC 7030 §4.4.1.2: the key the client named by its AsymmetricDecryptKeyIdentifier, to
/// encrypt the generated key to: the CSR's own key, or the client certificate's (by its
/// subjectKeyIdentifier or the SHA-1 of its key).
fn seal_recipient(
    id: &[u8],
    csr_key: &[u8; 65],
    peer: &PeerChain,
) -> Result<crate::envelope::Recipient> {
    use crate::profile::cert::{Parsed, key_id};
    if id == key_id(csr_key) {
        return Ok(crate::envelope::Recipient::from_point(csr_key, id));
    }
    if let Some(leaf) = peer.certs.first()
        && let Ok(cert) = Parsed::from_der(leaf.as_ref())
        && (id == key_id(&cert.public_key) || cert.skid().as_deref() == Some(id))
    {
        return Ok(crate::envelope::Recipient::from_point(&cert.public_key, id));
    }
    Err(Error::BadRequest(format!(
        "the AsymmetricDecryptKeyIdentifier {} names neither the CSR's key nor the client \
         certificate's P-256 key (RFC 7030 §4.4.1.2)",
        asn1::hex(id)
    )))
}

impl Reply {
    fn base64(content_type: &'static str, body: Bytes) -> Self {
        Self {
            status: StatusCode::OK,
            content_type,
            base64: true,
            body,
            extra: None,
        }
    }
}

/// The one mapping from error kind to HTTP status (EST-WIRE.md "Status codes").
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden | ErrorKind::Conflict | ErrorKind::QuotaExhausted => {
            StatusCode::FORBIDDEN
        }
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Held => StatusCode::ACCEPTED,
    }
}

fn error_reply(e: &Error, outcome: &mut Outcome) -> Reply {
    let kind = e.kind();
    outcome.error = Some(e.to_string());
    outcome.kind = Some(kind);
    if kind == ErrorKind::Internal {
        tracing::error!(error = %e, "internal error");
    }
    if kind == ErrorKind::Unavailable {
        tracing::warn!(error = %e, "unavailable");
    }
    let extra = match e {
        Error::Unauthenticated(_) => Some((
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"matter-est\""),
        )),
        Error::MethodNotAllowed { allow, .. } => {
            Some((header::ALLOW, HeaderValue::from_static(allow)))
        }
        // The rest of an oversized body is not read: close rather than wait for it.
        Error::PayloadTooLarge { .. } => {
            Some((header::CONNECTION, HeaderValue::from_static("close")))
        }
        // EST-WIRE.md "Status codes": 429 and 503 carry Retry-After; so does 202 (RFC 7030
        // §4.2.3).
        e => e
            .retry_after()
            .map(|secs| (header::RETRY_AFTER, HeaderValue::from(secs))),
    };
    let mut body = e.public_message();
    body.push('\n');
    Reply {
        status: status_for(kind),
        content_type: wire::CT_TEXT,
        base64: false,
        body: Bytes::from(body),
        extra,
    }
}

/// Content-Type and Content-Length first, few headers, never chunked (EST-WIRE.md "HTTP
/// framing").
fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let len = reply.body.len();
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if reply.base64 {
        h.insert(
            header::HeaderName::from_static("content-transfer-encoding"),
            HeaderValue::from_static("base64"),
        );
    }
    if let Some((name, value)) = reply.extra {
        h.insert(name, value);
    }
    resp
}
