//! The dashboard's pages (overview, inventory, confirmations) and its actions, each answered
//! from [`summary`](super::summary) or through the admin API's own routes.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::html::{bar_chart, bare, esc, page, url_value};
use super::{COOKIE, Session, WebResponse, api, error_page, need, summary};
use crate::admin::{Caller, Ctx, Request};
use crate::asn1;
use crate::config::AdminRole;
use crate::revocation::REASON_NAMES;

pub(super) fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

pub(super) type Page = std::result::Result<String, (u16, String)>;

pub(super) fn overview(ctx: &Ctx, s: &Session) -> Page {
    let labels: Vec<(String, Option<u64>)> = ctx
        .config()
        .labels
        .iter()
        .map(|(n, l)| (n.clone(), l.quota))
        .collect();
    let now = asn1::now();
    let sum = summary::gather(ctx.ledger().as_ref(), &labels, &s.caller, now)
        .map_err(|e| (500, e.to_string()))?;
    Ok(page(
        "Overview",
        &s.caller,
        &s.csrf,
        &render_overview(&sum, &s.caller),
    ))
}

/// The overview's body for `sum`.
pub fn render_overview(sum: &summary::Summary, caller: &Caller) -> String {
    let operator = caller.role >= AdminRole::Operator;
    let mut b = String::new();
    b.push_str(
        "<section><h2>Labels</h2><table id=\"labels\"><tr><th>Label</th><th>Issued</th>\
                <th>Quota</th><th>Quota left</th><th>CRL</th><th>CRL entries</th>\
                <th>CRL next update</th></tr>",
    );
    for l in &sum.labels {
        let (quota, left) = match l.quota {
            Some(q) => (q.to_string(), q.saturating_sub(l.issued).to_string()),
            None => ("none".into(), "-".into()),
        };
        let (crl, entries, next) = match l.crl {
            Some((n, e, t)) => (n.to_string(), e.to_string(), asn1::format_time(t)),
            None => ("none yet".into(), "-".into(), "-".into()),
        };
        let _ = write!(
            b,
            "<tr data-label=\"{n}\"><td>{n}</td><td class=\"num\" data-stat=\"issued\">{}</td>\
             <td class=\"num\" data-stat=\"quota\">{quota}</td><td class=\"num\" \
             data-stat=\"quota-left\">{left}</td><td class=\"num\" data-stat=\"crl\">{crl}</td>\
             <td class=\"num\" data-stat=\"crl-entries\">{entries}</td><td>{next}</td></tr>",
            l.issued,
            n = esc(&l.name),
        );
    }
    b.push_str("</table></section>");

    let basis = if sum.window_complete {
        format!("all {} DACs on record", sum.window)
    } else {
        format!("the newest {} DACs", sum.window)
    };
    let days: Vec<(String, u64)> = sum.per_day.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let pids: Vec<(String, u64)> = sum.per_pid.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let _ = write!(
        b,
        "<section><h2>Issued</h2><p id=\"chart-basis\" data-complete=\"{}\">Charts from {basis}.</p>\
         <div class=\"charts\">{}{}</div></section>",
        sum.window_complete,
        bar_chart("per-day", "Issued per day (UTC)", &days),
        bar_chart("per-pid", "Issued per PID", &pids),
    );

    b.push_str("<section><h2>Recent enrollments</h2><table id=\"recent\"><tr><th>Issued</th>\
                <th>Label</th><th>Serial</th><th>Subject</th><th>Requester</th><th>Status</th></tr>");
    for r in &sum.recent {
        let serial = asn1::hex(&r.serial).to_uppercase();
        let status = match r.status {
            crate::store::Status::Issued => "issued",
            crate::store::Status::Revoked { .. } => "revoked",
        };
        let _ = write!(
            b,
            "<tr data-serial=\"{serial}\"><td>{}</td><td>{}</td><td><a href=\"/dashboard/certs?contains={serial}{}\">{serial}</a></td>\
             <td>{}</td><td>{}</td><td>{status}</td></tr>",
            asn1::format_time(r.issued_at),
            esc(&r.label),
            if caller.labels.is_some() {
                format!("&amp;label={}", esc(&url_value(&r.label)))
            } else {
                String::new()
            },
            esc(&r.subject),
            esc(&r.requester),
        );
    }
    b.push_str("</table></section>");

    let audit_basis = if sum.audit_complete {
        "the whole audit log".to_string()
    } else {
        format!("audit records from number {} on", sum.audit_from)
    };
    let _ = write!(
        b,
        "<section><h2>Refusals by reason</h2><p>From {}.</p><table id=\"refusals\">\
         <tr><th>Reason</th><th>Refused</th></tr>",
        esc(&audit_basis)
    );
    for (rule, n) in &sum.refusals {
        let _ = write!(
            b,
            "<tr data-rule=\"{r}\"><td>{r}</td><td class=\"num\">{n}</td></tr>",
            r = esc(rule)
        );
    }
    b.push_str(
        "</table></section><section><h2>Revocations</h2><table id=\"revocations\"><tr>\
                <th>When</th><th>Label</th><th>Serial</th><th>Reason</th><th>By</th></tr>",
    );
    for r in &sum.revocations {
        let _ = write!(
            b,
            "<tr data-serial=\"{s}\"><td>{}</td><td>{}</td><td>{s}</td><td>{}</td><td>{}</td></tr>",
            asn1::format_time(r.time),
            esc(&r.label),
            esc(&r.reason),
            esc(&r.identity),
            s = esc(&r.serial),
        );
    }
    b.push_str(
        "</table></section><section><h2>Tokens</h2><table id=\"tokens\"><tr><th>Label</th>\
                <th>Unused</th><th>Spent</th><th>Expired</th><th>Revoked</th></tr>",
    );
    for (label, states) in &sum.tokens {
        let n = |k: &str| states.get(k).copied().unwrap_or(0);
        let _ = write!(
            b,
            "<tr data-label=\"{l}\"><td>{l}</td><td class=\"num\" data-state=\"unused\">{}</td>\
             <td class=\"num\" data-state=\"spent\">{}</td><td class=\"num\" data-state=\"expired\">{}</td>\
             <td class=\"num\" data-state=\"revoked\">{}</td></tr>",
            n("unused"),
            n("spent"),
            n("expired"),
            n("revoked"),
            l = esc(label),
        );
    }
    b.push_str("</table><h3>Unused tokens</h3><table id=\"unused-tokens\"><tr><th>Id</th>\
                <th>Label</th><th>PID</th><th>CN</th><th>Created</th><th>Expires</th><th></th></tr>");
    for t in &sum.unused_tokens {
        let action = if operator {
            format!(
                "<a class=\"revoke-token\" href=\"/dashboard/tokens/revoke?id={}\">Revoke…</a>",
                esc(&url_value(&t.id))
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr data-token=\"{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{action}</td></tr>",
            esc(&t.label),
            t.pid.map(|p| format!("{p:04X}")).unwrap_or_default(),
            esc(t.cn.as_deref().unwrap_or_default()),
            asn1::format_time(t.created_at),
            t.expires_at.map(asn1::format_time).unwrap_or_default(),
            id = esc(&t.id),
        );
    }
    b.push_str("</table>");
    if operator {
        b.push_str(
            "<h3>New tokens</h3><form id=\"new-tokens\" method=\"get\" \
                    action=\"/dashboard/tokens/new\">",
        );
        b.push_str(&label_select(
            sum.labels.iter().map(|l| l.name.as_str()),
            None,
            false,
        ));
        b.push_str(
            "<label>PID <input name=\"pid\" size=\"5\"></label>\
                    <label>CN <input name=\"cn\" size=\"16\"></label>\
                    <label>Count <input name=\"count\" value=\"1\" size=\"5\"></label>\
                    <label>Expires in (s) <input name=\"expiresInSecs\" size=\"8\"></label>\
                    <button type=\"submit\">Create…</button></form>",
        );
    }
    b.push_str("</section>");
    b
}

pub(super) fn label_select<'a>(
    labels: impl Iterator<Item = &'a str>,
    chosen: Option<&str>,
    any: bool,
) -> String {
    let mut s = String::from("<label>Label <select name=\"label\">");
    if any {
        s.push_str("<option value=\"\">(any)</option>");
    }
    for l in labels {
        let _ = write!(
            s,
            "<option value=\"{v}\"{}>{v}</option>",
            if chosen == Some(l) { " selected" } else { "" },
            v = esc(l),
        );
    }
    s.push_str("</select></label>");
    s
}

/// The filters of `certs list` (`GET /v1/certs`), as form fields.
const FILTERS: &[(&str, &str)] = &[
    ("vid", "VID"),
    ("pid", "PID"),
    ("status", "Status (issued, revoked)"),
    ("since", "Since"),
    ("until", "Until"),
    ("contains", "Subject or serial contains"),
    ("requester", "Requester contains"),
    ("limit", "Per page"),
];

pub(super) fn inventory(ctx: &Ctx, s: &Session, req: &Request) -> Page {
    let q = |name: &str| {
        req.query
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let visible: Vec<&str> = ctx
        .config()
        .labels
        .keys()
        .map(String::as_str)
        .filter(|l| s.caller.may_see(l))
        .collect();
    // An identity that sees several labels (but not all) picks one, as `certs list` asks.
    let label = q("label").or_else(|| match &s.caller.labels {
        Some(_) => visible.first().map(|l| l.to_string()),
        None => None,
    });
    let mut query: Vec<(String, String)> = Vec::new();
    if let Some(l) = &label {
        query.push(("label".into(), l.clone()));
    }
    for (name, _) in FILTERS.iter().chain(&[("after", "")]) {
        if let Some(v) = q(name) {
            query.push((name.to_string(), v));
        }
    }
    let mut b = String::from("<form id=\"search\" method=\"get\" action=\"/dashboard/certs\">");
    b.push_str(&label_select(
        visible.iter().copied(),
        label.as_deref(),
        s.caller.labels.is_none(),
    ));
    for (name, title) in FILTERS {
        let _ = write!(
            b,
            "<label>{title} <input name=\"{name}\" value=\"{}\" size=\"12\"></label>",
            esc(&q(name).unwrap_or_default())
        );
    }
    b.push_str("<button type=\"submit\">Search</button></form>");
    let page_v = match api(ctx, s, &Request::get("/v1/certs", query.clone())) {
        Ok(v) => v,
        Err((status, message)) => {
            let _ = write!(
                b,
                "<p class=\"err\" id=\"error\" data-status=\"{status}\">{}</p>",
                esc(&message)
            );
            return Ok(page("Inventory", &s.caller, &s.csrf, &b));
        }
    };
    let operator = s.caller.role >= AdminRole::Operator;
    b.push_str(
        "<table id=\"certs\"><tr><th>Issued</th><th>Label</th><th>Serial</th><th>VID</th>\
                <th>PID</th><th>Subject</th><th>Requester</th><th>Status</th><th></th></tr>",
    );
    let empty = Vec::new();
    let records = page_v["records"].as_array().unwrap_or(&empty);
    for r in records {
        let t = |k: &str| esc(r[k].as_str().unwrap_or_default());
        let action = if operator && r["status"] == "issued" {
            format!(
                "<a class=\"revoke\" href=\"/dashboard/revoke?serial={}\">Revoke…</a>",
                t("serial")
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr data-serial=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"status\">{}</td><td>{action}</td></tr>",
            t("serial"),
            t("issued"),
            t("label"),
            t("serial"),
            t("vid"),
            t("pid"),
            t("subject"),
            t("requester"),
            t("status"),
        );
    }
    b.push_str("</table>");
    if let Some(next) = page_v["next"].as_str() {
        let mut link = String::from("/dashboard/certs?");
        for (k, v) in query.iter().filter(|(k, _)| k != "after") {
            let _ = write!(link, "{}={}&", url_value(k), url_value(v));
        }
        let _ = write!(link, "after={}", url_value(next));
        let _ = write!(
            b,
            "<p><a id=\"next\" href=\"{}\">Next page</a></p>",
            esc(&link)
        );
    }
    Ok(page("Inventory", &s.caller, &s.csrf, &b))
}

pub(super) fn query_of<'a>(req: &'a Request, name: &str) -> &'a str {
    req.query
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

pub(super) fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

pub(super) fn confirm_revoke(ctx: &Ctx, s: &Session, req: &Request) -> Page {
    need(ctx, s, AdminRole::Operator, req)?;
    let serial = query_of(req, "serial");
    let path = format!("/v1/certs/{}", url_value(serial));
    let cert = api(ctx, s, &Request::get(&path, vec![]))?;
    let t = |k: &str| esc(cert[k].as_str().unwrap_or_default());
    let mut reasons = String::new();
    for name in REASON_NAMES.split(',').map(str::trim) {
        let _ = write!(reasons, "<option value=\"{name}\">{name}</option>");
    }
    let body = format!(
        "<p>Revoke this DAC? Its label's CRL lists it from the next CRL on; this cannot be \
         undone.</p><table id=\"cert\"><tr><th>Serial</th><td>{}</td></tr><tr><th>Label</th>\
         <td>{}</td></tr><tr><th>Subject</th><td>{}</td></tr><tr><th>Issued</th><td>{}</td></tr>\
         <tr><th>Status</th><td>{}</td></tr></table>\
         <form id=\"confirm\" method=\"post\" action=\"/dashboard/revoke\">{}{}\
         <label>Reason <select name=\"reason\">{reasons}</select></label>\
         <button type=\"submit\" id=\"confirm-revoke\">Revoke this DAC</button></form>\
         <p><a href=\"/dashboard/certs\">Cancel</a></p>",
        t("serial"),
        t("label"),
        t("subject"),
        t("issued"),
        t("status"),
        hidden("csrf", &s.csrf),
        hidden("serial", cert["serial"].as_str().unwrap_or_default()),
    );
    Ok(page("Confirm revocation", &s.caller, &s.csrf, &body))
}

/// The token fields of a form or query, as `POST /v1/tokens` takes them.
pub(super) fn token_body(
    get: impl Fn(&str) -> String,
) -> std::result::Result<Value, (u16, String)> {
    let mut body = serde_json::Map::new();
    body.insert("label".into(), get("label").into());
    for key in ["pid", "cn"] {
        let v = get(key);
        if !v.is_empty() {
            body.insert(key.into(), v.into());
        }
    }
    for key in ["count", "expiresInSecs"] {
        let v = get(key);
        if !v.is_empty() {
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| (400, format!("{key} {v:?}: expected a whole number")))?;
            body.insert(key.into(), n.into());
        }
    }
    Ok(Value::Object(body))
}

pub(super) fn confirm_tokens(ctx: &Ctx, s: &Session, req: &Request) -> Page {
    need(ctx, s, AdminRole::Operator, req)?;
    let body = token_body(|k| query_of(req, k).to_string())?;
    let label = body["label"].as_str().unwrap_or_default();
    if !s.caller.may_see(label) || ctx.config().label(label).is_err() {
        return Err((400, format!("label {label:?}: not one of yours")));
    }
    let mut fields = hidden("csrf", &s.csrf);
    let mut rows = String::new();
    for (k, v) in body.as_object().into_iter().flatten() {
        let text = match v {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        fields.push_str(&hidden(k, &text));
        let _ = write!(rows, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&text));
    }
    let page_body = format!(
        "<p>Create these one-time enrollment tokens? Their secrets are shown once, on the next \
         page.</p><table id=\"request\">{rows}</table>\
         <form id=\"confirm\" method=\"post\" action=\"/dashboard/tokens\">{fields}\
         <button type=\"submit\" id=\"confirm-tokens\">Create</button></form>\
         <p><a href=\"/dashboard\">Cancel</a></p>"
    );
    Ok(page("Confirm new tokens", &s.caller, &s.csrf, &page_body))
}

pub(super) fn confirm_token_revoke(ctx: &Ctx, s: &Session, req: &Request) -> Page {
    need(ctx, s, AdminRole::Operator, req)?;
    let id = query_of(req, "id");
    let tokens = api(ctx, s, &Request::get("/v1/tokens", vec![]))?;
    let token = tokens["tokens"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["id"] == id))
        .ok_or_else(|| (404, format!("no token {id:?}")))?;
    let t = |k: &str| esc(token[k].as_str().unwrap_or_default());
    let body = format!(
        "<p>Revoke this token? A device can no longer enroll with it.</p><table id=\"token\">\
         <tr><th>Id</th><td>{}</td></tr><tr><th>Label</th><td>{}</td></tr><tr><th>State</th>\
         <td>{}</td></tr></table><form id=\"confirm\" method=\"post\" \
         action=\"/dashboard/tokens/revoke\">{}{}<button type=\"submit\" \
         id=\"confirm-token-revoke\">Revoke this token</button></form>\
         <p><a href=\"/dashboard\">Cancel</a></p>",
        t("id"),
        t("label"),
        t("state"),
        hidden("csrf", &s.csrf),
        hidden("id", id),
    );
    Ok(page("Confirm token revocation", &s.caller, &s.csrf, &body))
}

pub(super) fn post(
    ctx: &Ctx,
    s: &Session,
    cookie: Option<&str>,
    path: &str,
    form: &[(String, String)],
) -> WebResponse {
    let done =
        |title: &str, body: String| WebResponse::html(200, page(title, &s.caller, &s.csrf, &body));
    let result = match path {
        "/dashboard/logout" => {
            if let Some(c) = cookie {
                ctx.dashboard.close(c);
            }
            let mut r = WebResponse::html(
                200,
                bare("Logged out", "<p id=\"logged-out\">Logged out.</p>"),
            );
            r.headers.push((
                "set-cookie",
                format!("{COOKIE}=; Path=/dashboard; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
            ));
            return r;
        }
        "/dashboard/revoke" => {
            let serial = field(form, "serial");
            let req = Request::post(
                &format!("/v1/certs/{}/revoke", url_value(serial)),
                json!({ "reason": field(form, "reason") }),
            );
            api(ctx, s, &req).map(|v| {
                let crl = match &v["crl"] {
                    Value::Null => "no CRL is published for this label".to_string(),
                    c if c.get("error").is_some() => {
                        format!("the new CRL failed: {}", c["error"].as_str().unwrap_or_default())
                    }
                    c => format!("CRL number {} lists {} entries", c["number"], c["entries"]),
                };
                done(
                    "Revoked",
                    format!(
                        "<p class=\"ok\" id=\"revoked\" data-serial=\"{}\">Revoked {} ({}), \
                         reason {}; {}.</p><p><a href=\"/dashboard/certs\">Inventory</a></p>",
                        esc(v["serial"].as_str().unwrap_or_default()),
                        esc(v["serial"].as_str().unwrap_or_default()),
                        esc(v["subject"].as_str().unwrap_or_default()),
                        esc(v["reason"].as_str().unwrap_or_default()),
                        esc(&crl),
                    ),
                )
            })
        }
        "/dashboard/tokens" => token_body(|k| field(form, k).to_string()).and_then(|body| {
            api(ctx, s, &Request::post("/v1/tokens", body)).map(|v| {
                let mut rows = String::new();
                for t in v["tokens"].as_array().into_iter().flatten() {
                    let _ = write!(
                        rows,
                        "<tr class=\"new-token\"><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                        esc(t["id"].as_str().unwrap_or_default()),
                        esc(t["secret"].as_str().unwrap_or_default()),
                        esc(t["expiresAt"].as_str().unwrap_or_default()),
                    );
                }
                done(
                    "New tokens",
                    format!(
                        "<p class=\"ok\">Created for label {}. The secrets are shown only \
                         now.</p><table id=\"new-tokens\"><tr><th>Id</th><th>Secret</th>\
                         <th>Expires</th></tr>{rows}</table>",
                        esc(v["label"].as_str().unwrap_or_default())
                    ),
                )
            })
        }),
        "/dashboard/tokens/revoke" => {
            let id = field(form, "id");
            let req = Request::post(&format!("/v1/tokens/{}/revoke", url_value(id)), Value::Null);
            api(ctx, s, &req).map(|v| {
                done(
                    "Token revoked",
                    format!(
                        "<p class=\"ok\" id=\"token-revoked\">Token {} is {}.</p>",
                        esc(v["id"].as_str().unwrap_or_default()),
                        esc(v["state"].as_str().unwrap_or_default())
                    ),
                )
            })
        }
        _ => Err((404, format!("no dashboard action {path}"))),
    };
    result.unwrap_or_else(|(status, message)| error_page(status, &message))
}
