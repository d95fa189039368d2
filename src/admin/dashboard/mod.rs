//! The dashboard (issue 15 item 3): server-rendered HTML on the admin HTTPS listener, for the
//! viewer's role and labels. docs/operations.md "Dashboard" is the operator's guide.
//!
//! **Logging in.** A browser either presents an admin client certificate (mapped by
//! `[[admin.identities]]` as for the API), or opens a one-time login link that an admin
//! identity minted with `POST /v1/dashboard/login` (`matter-est dashboard login`): the link's
//! code is good once, for [`LINK_SECS`], and is exchanged for a session cookie (`HttpOnly`,
//! `Secure`, `SameSite=Strict`, `Path=/dashboard`) that carries the minter's role and labels or
//! narrower ones, for at most [`MAX_SESSION_SECS`]. Sessions live in memory: a restart logs
//! everyone out.
//!
//! **Changes** (revoke a DAC, create or revoke tokens) take two steps: a confirmation page
//! (GET), then a POST that must carry the session's CSRF token in a hidden field, come from our
//! own origin (`Origin`, `Sec-Fetch-Site`) and the session cookie. The POST then runs the admin
//! API's own route through [`super::dispatch`], so the role check, the label scoping and the
//! audit records are the API's.

pub mod html;
mod pages;
pub mod summary;

pub use pages::render_overview;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use serde_json::{Value, json};

use self::html::{bare, esc};
use super::{Caller, Ctx, Params, Request};
use crate::asn1;
use crate::config::AdminRole;
use crate::error::{Error, Result};

/// How long a login link is good for (it is also good only once).
pub const LINK_SECS: i64 = 300;
/// A session's lifetime unless the link asked for less.
pub const DEFAULT_SESSION_SECS: u64 = 8 * 3600;
/// The longest session a link may ask for.
pub const MAX_SESSION_SECS: u64 = 24 * 3600;
/// Sessions and unused links kept at most; the oldest go first.
const MAX_ENTRIES: usize = 1024;
/// The session cookie's name.
pub const COOKIE: &str = "matter_est_session";

/// The dashboard's state: unused login links and sessions, by SHA-256 of their secret.
#[derive(Default)]
pub struct Sessions {
    /// The HTTPS admin listener's address, once it listens (login links point at it).
    addr: OnceLock<SocketAddr>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    links: HashMap<[u8; 32], Link>,
    sessions: HashMap<[u8; 32], Session>,
}

struct Link {
    caller: Caller,
    expires: i64,
    session_secs: u64,
}

#[derive(Clone)]
pub(super) struct Session {
    pub(super) caller: Caller,
    pub(super) csrf: String,
    expires: i64,
}

impl Sessions {
    /// Called by the listener once the HTTPS door is bound.
    pub fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint_link(&self, caller: Caller, session_secs: u64, now: i64) -> String {
        let secret = random_secret();
        let mut st = self.lock();
        st.prune(now);
        st.links.insert(
            hash(&secret),
            Link {
                caller,
                expires: now + LINK_SECS,
                session_secs,
            },
        );
        secret
    }

    /// Spends a login link: a new session (its secret and CSRF token), or `None` if the code is
    /// unknown, spent or expired.
    fn exchange(&self, code: &str, now: i64) -> Option<(String, Session)> {
        let mut st = self.lock();
        let link = st.links.remove(&hash(code))?;
        if link.expires <= now {
            return None;
        }
        let expires = now.saturating_add(i64::try_from(link.session_secs).unwrap_or(i64::MAX));
        Some(st.open(link.caller, expires, now))
    }

    /// A session for a browser that presented an admin certificate.
    fn open(&self, caller: Caller, now: i64) -> (String, Session) {
        let expires = now + DEFAULT_SESSION_SECS as i64;
        self.lock().open(caller, expires, now)
    }

    fn session(&self, secret: &str, now: i64) -> Option<Session> {
        self.lock()
            .sessions
            .get(&hash(secret))
            .filter(|s| s.expires > now)
            .cloned()
    }

    pub(super) fn close(&self, secret: &str) {
        self.lock().sessions.remove(&hash(secret));
    }
}

impl State {
    fn prune(&mut self, now: i64) {
        self.links.retain(|_, l| l.expires > now);
        self.sessions.retain(|_, s| s.expires > now);
        // Still full: drop the ones closest to expiring.
        while self.links.len() >= MAX_ENTRIES {
            let Some(k) = self
                .links
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.links.remove(&k);
        }
        while self.sessions.len() >= MAX_ENTRIES {
            let Some(k) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.sessions.remove(&k);
        }
    }

    fn open(&mut self, caller: Caller, expires: i64, now: i64) -> (String, Session) {
        self.prune(now);
        let secret = random_secret();
        let session = Session {
            caller,
            csrf: random_secret(),
            expires,
        };
        self.sessions.insert(hash(&secret), session.clone());
        (secret, session)
    }
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is not something to serve on.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        panic!("the system random number generator failed");
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

// ---- the API route ----

/// `POST /v1/dashboard/login`: a one-time login link for the caller, or for a narrower role or
/// fewer labels (`role`, `labels`), whose session lasts `sessionSecs`.
pub(crate) fn login_link(ctx: &Ctx, caller: &Caller, p: &Params) -> Result<Value> {
    let Some(addr) = ctx.dashboard.addr.get() else {
        return Err(Error::BadRequest(
            "the dashboard is on the HTTPS admin listener of a running `matter-est serve`: set \
             [admin] listen and [admin] client_ca, start serve, then ask again"
                .into(),
        ));
    };
    let role = match p.body_str("role")? {
        None => caller.role,
        Some(r) => AdminRole::parse(r).map_err(|e| Error::BadRequest(format!("role {e}")))?,
    };
    if role > caller.role {
        return Err(Error::Forbidden(format!(
            "admin identity {} has role {}: it cannot hand out role {}",
            caller.identity,
            caller.role.name(),
            role.name()
        )));
    }
    let labels = match p.req.body.get("labels") {
        None | Some(Value::Null) => caller.labels.clone(),
        Some(Value::Array(items)) => {
            let mut set = std::collections::BTreeSet::new();
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| Error::BadRequest("labels: expected strings".into()))?;
                ctx.config().label(name)?;
                caller.check_label(name)?;
                set.insert(name.to_string());
            }
            if set.is_empty() {
                return Err(Error::BadRequest(
                    "labels: name at least one, or leave it out for the caller's own".into(),
                ));
            }
            Some(set)
        }
        Some(_) => return Err(Error::BadRequest("labels: expected a list".into())),
    };
    let session_secs = p.body_u64("sessionSecs")?.unwrap_or(DEFAULT_SESSION_SECS);
    if !(60..=MAX_SESSION_SECS).contains(&session_secs) {
        return Err(Error::BadRequest(format!(
            "sessionSecs {session_secs}: 60 to {MAX_SESSION_SECS}"
        )));
    }
    let now = asn1::now();
    let session_caller = Caller {
        identity: format!("dashboard:{}", caller.identity),
        role,
        labels: labels.clone(),
    };
    let code = ctx.dashboard.mint_link(session_caller, session_secs, now);
    let path = format!("/dashboard/login?code={code}");
    Ok(json!({
        "url": format!("https://{addr}{path}"),
        "path": path,
        "expiresAt": asn1::format_time(now + LINK_SECS),
        "role": role.name(),
        "labels": labels,
        "sessionSecs": session_secs,
    }))
}

// ---- the HTTP side ----

/// One browser request to `/dashboard…`.
pub struct WebRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub cookie: Option<String>,
    pub origin: Option<String>,
    pub host: Option<String>,
    pub sec_fetch_site: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// The answer: status, extra headers, HTML.
pub struct WebResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl WebResponse {
    fn html(status: u16, body: String) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
        }
    }
}

/// The headers every dashboard answer carries: no caching, no framing, no scripts, no Referer
/// to other sites (login links carry a code). `same-origin`, not `no-referrer`: with the
/// latter Chromium sends `Origin: null` on our own form posts, which `check_post` refuses.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
];

/// Who presented which admin certificate, as the listener resolved it: `None` when the browser
/// presented none.
pub type CertCaller = Option<std::result::Result<Caller, (String, Error)>>;

/// Answers one browser request.
pub fn answer(ctx: &Ctx, cert: CertCaller, req: &WebRequest) -> WebResponse {
    let now = asn1::now();
    let parsed = match Request::from_target(&req.method, &req.target, Value::Null) {
        Ok(r) => r,
        Err(e) => return error_page(400, &e.to_string()),
    };
    let path = parsed.path.trim_end_matches('/');
    if path == "/dashboard/login" && req.method == "GET" {
        return login(ctx, &parsed, now);
    }
    // The session: the cookie's, else one opened for a valid admin certificate.
    let cookie = req.cookie.as_deref().and_then(cookie_value);
    let mut set_cookie = None;
    let session = match cookie.and_then(|c| ctx.dashboard.session(c, now)) {
        Some(s) => s,
        None => match cert {
            Some(Ok(caller)) => {
                let (secret, session) = ctx.dashboard.open(caller, now);
                set_cookie = Some(session_cookie(&secret, DEFAULT_SESSION_SECS));
                session
            }
            Some(Err((presented, e))) => {
                let (status, v) = super::refuse(ctx, &presented, &parsed, &e);
                return error_page(status, v["error"].as_str().unwrap_or_default());
            }
            None => {
                let e = Error::Unauthenticated(
                    "log in with a link from `matter-est dashboard login`, or present an admin \
                     client certificate"
                        .into(),
                );
                let (status, v) = super::refuse(ctx, "-", &parsed, &e);
                return error_page(status, v["error"].as_str().unwrap_or_default());
            }
        },
    };
    let mut resp = if req.method == "POST" {
        match check_post(req, &session) {
            Ok(form) => pages::post(ctx, &session, cookie, path, &form),
            Err(e) => {
                let (status, v) = super::refuse(ctx, &session.caller.identity, &parsed, &e);
                error_page(status, v["error"].as_str().unwrap_or_default())
            }
        }
    } else if req.method == "GET" {
        get(ctx, &session, path, &parsed)
    } else {
        let mut r = error_page(405, "the dashboard answers GET and POST");
        r.headers.push(("allow", "GET, POST".into()));
        r
    };
    if let Some(c) = set_cookie {
        resp.headers.push(("set-cookie", c));
    }
    resp
}

fn session_cookie(secret: &str, secs: u64) -> String {
    format!("{COOKIE}={secret}; Path=/dashboard; Secure; HttpOnly; SameSite=Strict; Max-Age={secs}")
}

fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

pub(super) fn error_page(status: u16, message: &str) -> WebResponse {
    WebResponse::html(
        status,
        bare(
            &format!("Error {status}"),
            &format!(
                "<p class=\"err\" id=\"error\" data-status=\"{status}\">{}</p>\
                 <p><a href=\"/dashboard\">Back to the overview</a></p>",
                esc(message)
            ),
        ),
    )
}

/// `GET /dashboard/login?code=…`: spends the link and sets the session cookie. The page then
/// moves on to the overview by itself (a same-origin refresh, so that the `SameSite=Strict`
/// cookie goes along even when the link was opened from another site).
fn login(ctx: &Ctx, req: &Request, now: i64) -> WebResponse {
    let code = req
        .query
        .iter()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    match ctx.dashboard.exchange(code, now) {
        Some((secret, session)) => {
            let secs = u64::try_from(session.expires - now).unwrap_or(0);
            let mut r = WebResponse::html(
                200,
                bare(
                    "Logged in",
                    &format!(
                        "<meta http-equiv=\"refresh\" content=\"0;url=/dashboard\">\
                         <p id=\"logged-in\">Logged in as {} (role {}). \
                         <a href=\"/dashboard\">Continue to the overview</a>.</p>",
                        esc(&session.caller.identity),
                        session.caller.role.name()
                    ),
                ),
            );
            r.headers
                .push(("set-cookie", session_cookie(&secret, secs)));
            r
        }
        None => {
            let e = Error::Unauthenticated(
                "this login link is unknown, used or expired: mint a new one with `matter-est \
                 dashboard login`"
                    .into(),
            );
            let (status, v) =
                super::refuse(ctx, "-", &Request::get("/dashboard/login", vec![]), &e);
            error_page(status, v["error"].as_str().unwrap_or_default())
        }
    }
}

/// The form of a POST, once it passed the cross-site checks: same origin (the browser's
/// `Origin` and `Sec-Fetch-Site` when it sends them), form-encoded, the session's CSRF token.
fn check_post(req: &WebRequest, session: &Session) -> Result<Vec<(String, String)>> {
    let cross = || Error::Forbidden("cross-site request refused".into());
    if let Some(site) = &req.sec_fetch_site
        && site != "same-origin"
    {
        return Err(cross());
    }
    if let Some(origin) = &req.origin {
        let host = req.host.as_deref().unwrap_or_default();
        if *origin != format!("https://{host}") {
            return Err(cross());
        }
    }
    if !req
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        return Err(Error::BadRequest(
            "expected a form (application/x-www-form-urlencoded)".into(),
        ));
    }
    let body = std::str::from_utf8(&req.body)
        .map_err(|_| Error::BadRequest("the form is not UTF-8".into()))?;
    let form = Request::from_target("POST", &format!("/?{body}"), Value::Null)?.query;
    let csrf = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    if !same(csrf, &session.csrf) {
        return Err(Error::Forbidden(
            "the form's CSRF token is missing or not this session's: reload the page".into(),
        ));
    }
    Ok(form)
}

fn get(ctx: &Ctx, s: &Session, path: &str, req: &Request) -> WebResponse {
    let result = match path {
        "/dashboard" => pages::overview(ctx, s),
        "/dashboard/certs" => pages::inventory(ctx, s, req),
        "/dashboard/revoke" => pages::confirm_revoke(ctx, s, req),
        "/dashboard/tokens/new" => pages::confirm_tokens(ctx, s, req),
        "/dashboard/tokens/revoke" => pages::confirm_token_revoke(ctx, s, req),
        _ => Err((404, format!("no dashboard page {path}"))),
    };
    match result {
        Ok(body) => WebResponse::html(200, body),
        Err((status, message)) => error_page(status, &message),
    }
}

/// Runs an API route as the session's caller: the API's role check, scoping and audit.
pub(super) fn api(
    ctx: &Ctx,
    s: &Session,
    req: &Request,
) -> std::result::Result<Value, (u16, String)> {
    match super::dispatch(ctx, &s.caller, req) {
        (200, v) => Ok(v),
        (status, v) => Err((status, v["error"].as_str().unwrap_or_default().to_string())),
    }
}

/// A confirmation page's refusal for a caller below `role`, audited like the API's.
pub(super) fn need(
    ctx: &Ctx,
    s: &Session,
    role: AdminRole,
    req: &Request,
) -> std::result::Result<(), (u16, String)> {
    if s.caller.role >= role {
        return Ok(());
    }
    let e = Error::Forbidden(format!(
        "this needs role {} or above; {} has role {}",
        role.name(),
        s.caller.identity,
        s.caller.role.name()
    ));
    let (status, v) = super::refuse(ctx, &s.caller.identity, req, &e);
    Err((status, v["error"].as_str().unwrap_or_default().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            identity: "t".into(),
            role: AdminRole::Operator,
            labels: None,
        }
    }

    #[test]
    fn a_login_link_is_good_once_and_not_after_it_expires() {
        let s = Sessions::default();
        let code = s.mint_link(caller(), 600, 1_000);
        assert!(s.exchange("wrong", 1_001).is_none());
        let (secret, session) = s.exchange(&code, 1_001).expect("first use");
        assert_eq!(session.expires, 1_601);
        assert!(s.exchange(&code, 1_002).is_none(), "second use");
        assert!(s.session(&secret, 1_600).is_some());
        assert!(s.session(&secret, 1_601).is_none(), "expired");
        let late = s.mint_link(caller(), 600, 1_000);
        assert!(s.exchange(&late, 1_000 + LINK_SECS).is_none());
    }

    #[test]
    fn a_post_needs_the_csrf_token_and_our_origin() {
        let session = Session {
            caller: caller(),
            csrf: "tok".into(),
            expires: i64::MAX,
        };
        let req = |origin: Option<&str>, site: Option<&str>, body: &str| WebRequest {
            method: "POST".into(),
            target: "/dashboard/revoke".into(),
            cookie: None,
            origin: origin.map(str::to_string),
            host: Some("127.0.0.1:9443".into()),
            sec_fetch_site: site.map(str::to_string),
            content_type: Some("application/x-www-form-urlencoded".into()),
            body: body.as_bytes().to_vec(),
        };
        let ours = Some("https://127.0.0.1:9443");
        assert!(check_post(&req(ours, Some("same-origin"), "csrf=tok&x=1"), &session).is_ok());
        assert!(check_post(&req(ours, None, "csrf=tok"), &session).is_ok());
        for bad in [
            req(ours, Some("same-origin"), "csrf=tox"),
            req(ours, Some("same-origin"), "x=1"),
            req(Some("https://evil.example"), None, "csrf=tok"),
            req(ours, Some("cross-site"), "csrf=tok"),
            req(Some("http://127.0.0.1:9443"), None, "csrf=tok"),
        ] {
            assert!(check_post(&bad, &session).is_err());
        }
        let mut json = req(ours, None, "csrf=tok");
        json.content_type = Some("application/json".into());
        assert!(check_post(&json, &session).is_err());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        assert_eq!(
            cookie_value("a=1; matter_est_session=xyz; b=2"),
            Some("xyz")
        );
        assert_eq!(cookie_value("matter_est_sessionx=1"), None);
        assert!(session_cookie("s", 60).contains("HttpOnly; SameSite=Strict"));
    }
}
