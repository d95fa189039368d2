//! The dashboard's HTML: one escaping helper ([`esc`]) that every piece of text from the ledger,
//! the request or the API goes through, the page layout, and inline SVG bar charts.

use std::fmt::Write as _;

use crate::admin::Caller;

/// `text` made safe in HTML element content and in double- or single-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded as one query-string value (for links we build).
pub fn url_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#222}\
header{background:#1d3557;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#eef}.num{text-align:right}.err{color:#b00020;font-weight:bold}.ok{color:#006400;font-weight:bold}\
section{margin-bottom:1.5em}.charts{display:flex;flex-wrap:wrap;gap:2em}\
form.inline{display:inline}label{margin-right:.8em}";

/// A whole page: `title`, the viewer, the navigation, `body` (already HTML). `csrf`: the
/// session's token for the log-out form.
pub fn page(title: &str, caller: &Caller, csrf: &str, body: &str) -> String {
    let labels = match &caller.labels {
        None => "every label".to_string(),
        Some(l) => l.iter().cloned().collect::<Vec<_>>().join(", "),
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · matter-est</title><style>{STYLE}</style></head><body>\
         <header><strong>matter-est</strong><a href=\"/dashboard\">Overview</a>\
         <a href=\"/dashboard/certs\">Inventory</a>\
         <span id=\"whoami\" data-role=\"{role}\">{identity} · role {role} · {labels}</span>\
         <form method=\"post\" action=\"/dashboard/logout\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{csrf}\"><button type=\"submit\">Log out</button></form></header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
        role = caller.role.name(),
        identity = esc(&caller.identity),
        labels = esc(&labels),
        csrf = esc(csrf),
    )
}

/// A page for someone not logged in, or an error before any session.
pub fn bare(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · matter-est</title><style>{STYLE}</style></head><body><main>\
         <h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
    )
}

/// A horizontal bar chart as inline SVG: one bar per `(key, value)`, each a `<g class="bar"
/// data-key data-value>` with a `<title>` tooltip.
pub fn bar_chart(id: &str, caption: &str, bars: &[(String, u64)]) -> String {
    const ROW: usize = 22;
    const KEY_W: usize = 90;
    const BAR_W: usize = 300;
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let height = ROW * bars.len().max(1) + 4;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg id=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{}\" height=\"{height}\" role=\"img\">",
        esc(caption),
        esc(id),
        KEY_W + BAR_W + 70,
    );
    if bars.is_empty() {
        svg.push_str("<text x=\"4\" y=\"16\">none</text>");
    }
    for (i, (key, value)) in bars.iter().enumerate() {
        let y = i * ROW + 2;
        let w = ((*value as f64 / max as f64) * BAR_W as f64)
            .round()
            .max(1.0) as usize;
        let _ = write!(
            svg,
            "<g class=\"bar\" data-key=\"{k}\" data-value=\"{value}\"><title>{k}: {value}</title>\
             <text x=\"0\" y=\"{ty}\" font-size=\"13\">{k}</text>\
             <rect x=\"{KEY_W}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"#457b9d\"/>\
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"13\">{value}</text></g>",
            k = esc(key),
            ty = y + 14,
            h = ROW - 6,
            tx = KEY_W + w + 6,
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminRole;

    #[test]
    fn escaping_covers_element_content_and_both_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("CN=dev-1,VID=FFF1"), "CN=dev-1,VID=FFF1");
        assert_eq!(esc("ü"), "ü");
    }

    #[test]
    fn hostile_text_never_reaches_a_page_as_markup() {
        let caller = Caller {
            identity: "admin:cn:<img src=x onerror=alert(1)>".into(),
            role: AdminRole::Auditor,
            labels: Some(["a\"><b>".to_string()].into()),
        };
        let html = page("t<i>", &caller, "c\"srf", "");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("<i>"), "{html}");
        assert!(html.contains("value=\"c&quot;srf\""), "{html}");
        let chart = bar_chart("x\"y", "<c>", &[("<k>".into(), 3)]);
        assert!(!chart.contains("<k>") && !chart.contains("<c>"), "{chart}");
        assert!(
            chart.contains("data-key=\"&lt;k&gt;\" data-value=\"3\""),
            "{chart}"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(url_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
