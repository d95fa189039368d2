//! The operator plane's API (DESIGN.md "The operator plane"): JSON routes over the ledger, the
//! CRL service and the issuer, for operators. The same [`dispatch`] serves the mutual-TLS
//! listener, the local Unix socket ([`listener`]) and the CLI when nothing holds the ledger (it
//! calls [`dispatch`] in process), so a command's output is the same whichever way it went.
//!
//! Every route is in [`ROUTES`] with the least role it needs; `docs/admin-api.json` (OpenAPI)
//! documents each one, and a test holds the two to each other. `admin` knows nothing of keys.

pub mod dashboard;
pub mod health;
pub mod listener;
pub mod metrics;
mod routes;

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::config::{AdminRole, Config};
use crate::error::{Error, ErrorKind, Result};
use crate::issuance::{Issuer, Labels};
use crate::revocation::CrlService;
use crate::store::Ledger;
use crate::store::audit::AuditEvent;

/// Who is asking, and what they may see.
#[derive(Clone, Debug)]
pub struct Caller {
    /// As audited: `cli:USER`, `socket:uid=N`, or the matched rule of an admin certificate
    /// (`client:cn:alice`).
    pub identity: String,
    pub role: AdminRole,
    /// The labels (tenants) it may see; `None` = all.
    pub labels: Option<BTreeSet<String>>,
}

impl Caller {
    /// The host's operator (the CLI on the ledger, or the local socket): role admin, every label.
    pub fn local(identity: String) -> Self {
        Self {
            identity,
            role: AdminRole::Admin,
            labels: None,
        }
    }

    pub fn may_see(&self, label: &str) -> bool {
        self.labels.as_ref().is_none_or(|l| l.contains(label))
    }

    /// 403 unless `label` is one this caller may see.
    fn check_label(&self, label: &str) -> Result<()> {
        if self.may_see(label) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "admin identity {} may not see label {label:?}",
                self.identity
            )))
        }
    }
}

/// What the routes work on. In `serve`, the running issuer and CRL service; in the CLI, the
/// ledger opened directly and the labels loaded on first use (signers are only loaded by the
/// routes that sign).
pub struct Ctx {
    config: Arc<Config>,
    ledger: Arc<dyn Ledger>,
    issuer: IssuerSource,
    crls: OnceLock<Arc<CrlService>>,
    /// The dashboard's login links and sessions (in memory).
    dashboard: Arc<dashboard::Sessions>,
}

enum IssuerSource {
    /// The running server's current issuer (it changes on reload).
    Serving(Box<dyn Fn() -> Arc<Issuer> + Send + Sync>),
    /// Loaded from the config on first use; `danger_dev`: the development PKI is accepted.
    Local {
        loaded: OnceLock<Arc<Issuer>>,
        danger_dev: bool,
    },
}

impl Ctx {
    /// For `serve`: `issuer` returns the issuer serving now; `crls` publishes the CRLs.
    pub fn serving(
        config: Arc<Config>,
        ledger: Arc<dyn Ledger>,
        issuer: Box<dyn Fn() -> Arc<Issuer> + Send + Sync>,
        crls: Arc<CrlService>,
    ) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(crls);
        Self {
            config,
            ledger,
            issuer: IssuerSource::Serving(issuer),
            crls: cell,
            dashboard: Arc::default(),
        }
    }

    /// For the CLI on a ledger nothing else holds. `labels`: already loaded (and checked) by a
    /// command that signs, else loaded on first use; `danger_dev`: then, accept a development
    /// PAI although the config does not (`--danger-allow-development-pki`).
    pub fn local(
        config: Arc<Config>,
        ledger: Arc<dyn Ledger>,
        labels: Option<Labels>,
        danger_dev: bool,
    ) -> Self {
        let loaded = OnceLock::new();
        if let Some(labels) = labels {
            let _ = loaded.set(Arc::new(labels.with_ledger(ledger.clone())));
        }
        Self {
            config,
            ledger,
            issuer: IssuerSource::Local { loaded, danger_dev },
            crls: OnceLock::new(),
            dashboard: Arc::default(),
        }
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The issuer: the server's current one, or the labels loaded from the config.
    pub fn issuer(&self) -> Result<Arc<Issuer>> {
        match &self.issuer {
            IssuerSource::Serving(current) => Ok(current()),
            IssuerSource::Local { loaded, danger_dev } => {
                if let Some(i) = loaded.get() {
                    return Ok(i.clone());
                }
                let labels = Issuer::load(&self.config)?;
                labels.refuse_development_pki(&self.config, *danger_dev)?;
                let issuer = Arc::new(labels.with_ledger(self.ledger.clone()));
                Ok(loaded.get_or_init(|| issuer).clone())
            }
        }
    }

    fn crls(&self) -> Result<Arc<CrlService>> {
        if let Some(c) = self.crls.get() {
            return Ok(c.clone());
        }
        let service = Arc::new(CrlService::new(self.issuer()?)?);
        Ok(self.crls.get_or_init(|| service).clone())
    }
}

/// One API request, however it arrived.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query, e.g. `/v1/certs/0A1B`.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The JSON body (`null` when there is none).
    pub body: Value,
}

impl Request {
    pub fn get(path: &str, query: Vec<(String, String)>) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            query,
            body: Value::Null,
        }
    }

    pub fn post(path: &str, body: Value) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
            query: Vec::new(),
            body,
        }
    }

    /// Splits `target` (`/v1/certs?label=a&pid=8000`) into path and decoded query.
    pub fn from_target(method: &str, target: &str, body: Value) -> Result<Self> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((percent_decode(k)?, percent_decode(v)?));
        }
        Ok(Self {
            method: method.into(),
            path: path.into(),
            query: pairs,
            body,
        })
    }

    /// The path and query as one request target, percent-encoded.
    pub fn target(&self) -> String {
        let mut t = self.path.clone();
        for (i, (k, v)) in self.query.iter().enumerate() {
            t.push(if i == 0 { '?' } else { '&' });
            t.push_str(&percent_encode(k));
            t.push('=');
            t.push_str(&percent_encode(v));
        }
        t
    }
}

/// The path parameters and the request, for a route's handler.
pub(crate) struct Params<'a> {
    /// `{name}` segments of the route's path, in order.
    path: Vec<&'a str>,
    req: &'a Request,
}

impl Params<'_> {
    fn path(&self, i: usize) -> &str {
        self.path.get(i).copied().unwrap_or_default()
    }

    /// The query parameter `name` (the last one given).
    fn query(&self, name: &str) -> Option<&str> {
        self.req
            .query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's field `name`, as a string.
    fn body_str(&self, name: &str) -> Result<Option<&str>> {
        match self.req.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::BadRequest(format!("{name}: expected a string"))),
        }
    }

    fn body_u64(&self, name: &str) -> Result<Option<u64>> {
        match self.req.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Error::BadRequest(format!("{name}: expected a whole number"))),
        }
    }
}

type Handler = fn(&Ctx, &Caller, &Params) -> Result<Value>;

/// One route: method, path (`{x}` is a parameter), the least role it needs, and its handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub role: AdminRole,
    handler: Handler,
}

macro_rules! route {
    ($method:literal, $path:literal, $role:ident, $handler:path) => {
        Route {
            method: $method,
            path: $path,
            role: AdminRole::$role,
            handler: $handler,
        }
    };
}

/// Every route of the API. A literal segment wins over a parameter (`/v1/certs/stats` before
/// `/v1/certs/{serial}`): the first match in this order is taken.
pub static ROUTES: &[Route] = &[
    route!("GET", "/v1/whoami", Auditor, routes::whoami),
    route!("GET", "/v1/labels", Auditor, routes::labels),
    route!("GET", "/v1/tokens", Auditor, routes::token_list),
    route!("POST", "/v1/tokens", Operator, routes::token_create),
    route!(
        "POST",
        "/v1/tokens/{id}/revoke",
        Operator,
        routes::token_revoke
    ),
    route!("GET", "/v1/certs", Auditor, routes::cert_list),
    route!("GET", "/v1/certs/stats", Auditor, routes::cert_stats),
    route!("GET", "/v1/certs/{serial}", Auditor, routes::cert_show),
    route!(
        "POST",
        "/v1/certs/{serial}/revoke",
        Operator,
        routes::cert_revoke
    ),
    route!(
        "POST",
        "/v1/certs/{serial}/rekey",
        Operator,
        routes::cert_rekey
    ),
    route!(
        "GET",
        "/v1/labels/{label}/crl",
        Auditor,
        routes::crl_current
    ),
    route!("POST", "/v1/labels/{label}/crl", Operator, routes::crl_new),
    route!(
        "GET",
        "/v1/labels/{label}/dcl-info",
        Auditor,
        routes::dcl_info
    ),
    route!("POST", "/v1/labels/{label}/issue", Admin, routes::issue),
    route!("GET", "/v1/pending", Auditor, routes::held_list),
    route!(
        "POST",
        "/v1/pending/{id}/approve",
        Operator,
        routes::held_approve
    ),
    route!(
        "POST",
        "/v1/pending/{id}/reject",
        Operator,
        routes::held_reject
    ),
    route!("GET", "/v1/audit", Auditor, routes::audit_list),
    route!("GET", "/v1/audit/verify", Auditor, routes::audit_verify),
    route!("POST", "/v1/ledger/backup", Admin, routes::backup),
    route!(
        "POST",
        "/v1/dashboard/login",
        Auditor,
        dashboard::login_link
    ),
];

/// The route for `method` and `path` and its path parameters; 404 when no route has the path,
/// 405 (naming the methods it has) when the path exists with other methods.
fn find<'a>(method: &str, path: &'a str) -> Result<(&'static Route, Vec<&'a str>)> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut allowed = Vec::new();
    for route in ROUTES {
        let pattern: Vec<&str> = route.path.split('/').collect();
        if pattern.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        let matched = pattern.iter().zip(&segments).all(|(p, s)| {
            if p.starts_with('{') {
                params.push(*s);
                !s.is_empty()
            } else {
                p == s
            }
        });
        if !matched {
            continue;
        }
        if route.method == method {
            return Ok((route, params));
        }
        allowed.push(route.method);
    }
    let allow = match (allowed.contains(&"GET"), allowed.contains(&"POST")) {
        (false, false) => return Err(Error::NotFound(format!("no admin API route {path}"))),
        (true, false) => "GET",
        (false, true) => "POST",
        (true, true) => "GET, POST",
    };
    Err(Error::MethodNotAllowed {
        method: method.to_string(),
        allow,
    })
}

/// Runs `req` for `caller`: (HTTP status, JSON body). Refusals (401, 403) are audited; so is
/// every change (any POST that succeeds), with the caller's identity.
pub fn dispatch(ctx: &Ctx, caller: &Caller, req: &Request) -> (u16, Value) {
    let action = format!("{} {}", req.method, req.path);
    let result = find(&req.method, &req.path).and_then(|(route, path)| {
        if caller.role < route.role {
            return Err(Error::Forbidden(format!(
                "{} {} needs role {} or above; admin identity {} has role {}",
                route.method,
                route.path,
                route.role.name(),
                caller.identity,
                caller.role.name()
            )));
        }
        let value = (route.handler)(ctx, caller, &Params { path, req })?;
        if route.method != "GET" {
            ctx.ledger.audit(AuditEvent::AdminAction {
                identity: caller.identity.clone(),
                action: action.clone(),
                label: value
                    .get("label")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        Ok(value)
    });
    match result {
        Ok(v) => (200, v),
        Err(e) => {
            let status = crate::est::status_for(e.kind()).as_u16();
            if matches!(e.kind(), ErrorKind::Forbidden | ErrorKind::Unauthenticated) {
                ctx.ledger.audit(AuditEvent::AdminRefused {
                    identity: caller.identity.clone(),
                    action,
                    status,
                    reason: e.to_string(),
                });
            }
            if e.kind() == ErrorKind::Internal {
                tracing::error!(error = %e, "admin API: internal error");
            }
            (status, serde_json::json!({ "error": e.to_string() }))
        }
    }
}

/// A refusal before any route runs (no or unknown admin certificate): 401/403, audited.
pub fn refuse(ctx: &Ctx, identity: &str, req: &Request, e: &Error) -> (u16, Value) {
    let status = crate::est::status_for(e.kind()).as_u16();
    ctx.ledger.audit(AuditEvent::AdminRefused {
        identity: identity.to_string(),
        action: format!("{} {}", req.method, req.path),
        status,
        reason: e.to_string(),
    });
    (status, serde_json::json!({ "error": e.to_string() }))
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Error::BadRequest(format!("bad percent-encoding in {text:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Error::BadRequest(format!("{text:?} is not UTF-8")))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_queries() {
        let (r, p) = find("GET", "/v1/certs/stats").expect("stats");
        assert_eq!((r.path, p.len()), ("/v1/certs/stats", 0));
        let (r, p) = find("POST", "/v1/certs/0A1B/revoke").expect("revoke");
        assert_eq!((r.path, p), ("/v1/certs/{serial}/revoke", vec!["0A1B"]));
        assert!(matches!(
            find("DELETE", "/v1/tokens").map(|_| ()),
            Err(Error::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            find("GET", "/v1/nothing").map(|_| ()),
            Err(Error::NotFound(_))
        ));
        let req = Request {
            query: vec![("contains".into(), "a b&c=d/é".into())],
            ..Request::get("/v1/certs", Vec::new())
        };
        let back = Request::from_target("GET", &req.target(), Value::Null).expect("parse");
        assert_eq!(back.query, req.query);
        assert_eq!(back.path, "/v1/certs");
    }
}
