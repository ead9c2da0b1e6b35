//! The admin console: `GET /` on the admin listener, one self-contained
//! HTML page (inline CSS and one small inline script, both allowed by hash
//! in a strict Content-Security-Policy; nothing loaded from elsewhere) with
//! the policy, the live tunnels, the recent refusals and the proxy's
//! health; and the JSON behind its auto-refresh, `/tunnels` and
//! `/refusals`. It also owns who may see them: [`Console::authorized`].
//!
//! Everything shown is rendered on the server as of the request, so the
//! page is complete without its script; the script only adds sorting, the
//! role filter, a refresh every few seconds, and the bearer token (from a
//! login form or a `#token=` fragment, kept in `sessionStorage`, never in a
//! URL query or a cookie). Hosts, roles and reasons come from clients:
//! every value is HTML-escaped here ([`escape`]) and set as text by the
//! script. This module never changes any state of the proxy.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use egress_policy::policy::ports_text;
use sha2::{Digest, Sha256};

use crate::admin_auth::AdminToken;
use crate::config::Config;
use crate::live::{self, AdminTunnel, LiveTunnels, TunnelQuery};
use crate::metrics::Metrics;
use crate::refusals::{RECENT, RecentRefusals, RefusalJson};
use crate::reload::{PolicySource, PolicyState};

/// Tunnels the page lists (the JSON endpoints take `?limit=`).
const PAGE_TUNNELS: usize = 200;
/// Refusals the page lists.
const PAGE_REFUSALS: usize = 50;

const STYLE: &str = include_str!("console/console.css");
const SCRIPT: &str = include_str!("console/console.js");

/// The log sink's state, for the Health section: healthy, or stalled (for
/// how long), with the lines dropped since start and the bytes waiting.
/// Returns the text and whether it is bad (stalled or lines lost).
pub fn log_sink_state() -> (String, bool) {
    let state = crate::log::sink_state();
    let mut text = match state.stalled_for {
        Some(for_) if state.stalled => format!("stalled for {:.1} s", for_.as_secs_f64()),
        _ if state.stalled => "stalled".to_owned(),
        _ => "writing".to_owned(),
    };
    let _ = write!(
        text,
        "; {} lines dropped since start ({} decision, {} close); {} bytes buffered",
        state.dropped, state.dropped_decisions, state.dropped_closes, state.buffered_bytes
    );
    (text, state.stalled || state.dropped > 0)
}

/// What the console knows beyond the admin state: the live tunnels, the
/// refusals, the token, and the settings in force.
#[derive(Debug)]
pub struct Console {
    live: Option<Arc<LiveTunnels>>,
    refusals: Option<Arc<RecentRefusals>>,
    token: Option<AdminToken>,
    metrics_open: bool,
    started_at: SystemTime,
    started: Instant,
    workers: usize,
    max_tunnels: usize,
    /// `(name, value)` of every limit in force, fixed at start.
    limits: Vec<(&'static str, String)>,
}

/// Who may see a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// 401 with `WWW-Authenticate: Bearer`.
    NeedsToken,
}

impl Console {
    pub fn new(config: &Config, live: Option<Arc<LiveTunnels>>, refusals: Option<Arc<RecentRefusals>>) -> Self {
        let optional = |v: Option<String>| v.unwrap_or_else(|| "off".to_owned());
        let limits = vec![
            ("tunnel cap", config.max_tunnels.to_string()),
            ("tunnels per client", optional(config.max_tunnels_per_client.map(|n| n.to_string()))),
            (
                "requests per client per second",
                optional(config.max_requests_per_client_per_second.map(|n| n.to_string())),
            ),
            ("connect timeout", format!("{:?}", config.connect_timeout)),
            ("DNS timeout", format!("{:?}", config.dns_timeout)),
            ("header timeout", format!("{:?}", config.header_timeout)),
            ("idle timeout", optional(config.idle_timeout.map(|d| format!("{d:?}")))),
            ("shutdown grace", format!("{:?}", config.shutdown_grace)),
            ("allow missing role", config.allow_missing_role.to_string()),
            ("TLS", if config.tls.is_some() { "on" } else { "off" }.to_owned()),
            ("PROXY protocol", config.proxy_protocol.to_string()),
            ("proxy password", config.proxy_auth.as_ref().map_or("off".to_owned(), |a| format!("role {}", a.role))),
            (
                "stats socket",
                optional(config.stats_socket.as_ref().map(|s| s.path(std::process::id()).display().to_string())),
            ),
            ("admin token", if config.admin_token.is_some() { "required" } else { "none" }.to_owned()),
        ];
        Console {
            live,
            refusals,
            token: config.admin_token.clone(),
            metrics_open: config.admin_metrics_open,
            started_at: SystemTime::now(),
            started: Instant::now(),
            workers: config.workers,
            max_tunnels: config.max_tunnels,
            limits,
        }
    }

    /// Whether `path` may be served given the request's `Authorization`:
    /// probes always; `/metrics` when left open; everything else needs the
    /// token when one is configured.
    pub fn authorized(&self, path: &str, authorization: Option<&[u8]>) -> Access {
        let Some(token) = &self.token else { return Access::Allowed };
        let open = matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && self.metrics_open);
        if open || token.accepts(authorization) { Access::Allowed } else { Access::NeedsToken }
    }

    /// The `/tunnels` document, or why the query is refused.
    pub fn tunnels_json(&self, query: Option<&str>) -> Result<String, String> {
        let query = TunnelQuery::parse(query)?;
        let (tunnels, total) = match &self.live {
            Some(live) => live.snapshot(query.role.as_deref(), query.limit),
            None => (Vec::new(), 0),
        };
        let listed: Vec<AdminTunnel<'_>> = tunnels.iter().map(|t| AdminTunnel::of(t)).collect();
        let document = serde_json::json!({
            "total": total,
            "shown": listed.len(),
            "limit": query.limit,
            "role": query.role,
            "tunnels": listed,
        });
        Ok(serde_json::to_string_pretty(&document).unwrap_or_default() + "\n")
    }

    /// The `/refusals` document: the recent refusals, newest first, and
    /// the requests by outcome since start.
    pub fn refusals_json(&self, metrics: &Metrics, query: Option<&str>) -> Result<String, String> {
        let mut limit = RECENT;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("limit", n)) => {
                    limit = n.parse().map_err(|_| format!("limit must be a number from 0 to {RECENT}"))?;
                }
                _ => return Err(format!("unknown parameter {pair:?}: use limit")),
            }
        }
        let recent = self.refusals.as_ref().map(|r| r.recent(limit)).unwrap_or_default();
        let counts: serde_json::Map<String, serde_json::Value> = metrics
            .outcome_counts()
            .into_iter()
            .filter(|(outcome, _)| *outcome != "tunnel")
            .map(|(outcome, n)| (outcome.to_owned(), n.into()))
            .collect();
        let document = serde_json::json!({
            "capacity": RECENT,
            "recent": recent.iter().map(RefusalJson::of).collect::<Vec<_>>(),
            "counts_since_start": counts,
        });
        Ok(serde_json::to_string_pretty(&document).unwrap_or_default() + "\n")
    }

    /// The page for an authorized request.
    pub fn page(&self, view: &PageView<'_>, query: Option<&str>) -> String {
        let role_filter = TunnelQuery::parse(query).ok().and_then(|q| q.role);
        let mut html = String::with_capacity(32 * 1024);
        head(&mut html, "proxyd console");
        let _ = write!(
            html,
            "<body><header><h1>proxyd</h1><span class=\"muted\">{}</span><span id=\"status\" class=\"muted\" role=\"status\"></span></header><main>",
            escape(crate::VERSION)
        );
        self.health_section(&mut html, view);
        policy_section(&mut html, view.policy);
        self.tunnels_section(&mut html, view.policy, role_filter.as_deref());
        self.refusals_section(&mut html, view.metrics);
        html.push_str("</main>");
        let _ = writeln!(html, "<script>{SCRIPT}</script></body></html>");
        html
    }

    fn health_section(&self, html: &mut String, view: &PageView<'_>) {
        let uptime = self.started.elapsed();
        let open = view.metrics.tunnels_active();
        html.push_str("<section id=\"health\"><h2>Health</h2><dl class=\"grid\">");
        let mut item = |name: &str, value: &str, class: &str| {
            let _ = write!(html, "<div class=\"{class}\"><dt>{}</dt><dd>{}</dd></div>", escape(name), escape(value));
        };
        item("state", view.ready.unwrap_or("ready"), if view.ready.is_some() { "bad" } else { "good" });
        item("uptime", &human_duration(uptime), "");
        item("started", &crate::timefmt::rfc3339(self.started_at), "");
        item("version", crate::VERSION, "");
        item("workers", &self.workers.to_string(), "");
        item(
            "tunnels open",
            &format!("{open} of {}", self.max_tunnels),
            if open as f64 >= self.max_tunnels as f64 * 0.9 { "bad" } else { "" },
        );
        let (sink, bad) = log_sink_state();
        item("log sink", &sink, if bad { "bad" } else { "" });
        html.push_str("</dl><details><summary>Limits in force</summary><dl class=\"grid\">");
        for (name, value) in &self.limits {
            let _ = write!(html, "<div><dt>{}</dt><dd>{}</dd></div>", escape(name), escape(value));
        }
        html.push_str("</dl></details></section>");
    }

    fn tunnels_section(&self, html: &mut String, policy: Option<&PolicyState>, role: Option<&str>) {
        let (tunnels, total) = match &self.live {
            Some(live) => live.snapshot(role, PAGE_TUNNELS),
            None => (Vec::new(), 0),
        };
        let _ = write!(
            html,
            "<section id=\"tunnels\"><h2>Live tunnels <span class=\"count\" id=\"tunnel-count\">{total}</span></h2>"
        );
        // The filter works without the script too (a plain GET form).
        html.push_str("<form class=\"filter\" method=\"get\" action=\"/\"><label>role <select name=\"role\" id=\"role-filter\"><option value=\"\">all roles</option>");
        let mut names: Vec<&str> = Vec::new();
        let table = policy.map(PolicyState::current);
        if let Some(active) = &table {
            names.extend(active.table.policy.services.iter().map(|r| r.name.as_str()));
        }
        for name in names {
            let selected = if role == Some(name) { " selected" } else { "" };
            let _ = write!(html, "<option value=\"{0}\"{selected}>{0}</option>", escape(name));
        }
        html.push_str("</select></label> <button type=\"submit\">filter</button></form>");
        html.push_str(
            "<div class=\"scroll\"><table class=\"sortable\" id=\"tunnel-table\"><thead><tr>\
             <th data-type=\"text\">role</th><th data-type=\"text\">client</th><th data-type=\"text\">destination</th>\
             <th data-type=\"text\">address</th><th data-type=\"num\">age</th><th data-type=\"num\">bytes out</th>\
             <th data-type=\"num\">bytes in</th><th data-type=\"num\">idle</th><th data-type=\"text\">rule</th>\
             </tr></thead><tbody>",
        );
        for tunnel in &tunnels {
            let t = AdminTunnel::of(tunnel);
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"host\">{}</td><td>{}</td><td data-v=\"{}\">{}</td><td data-v=\"{}\">{}</td><td data-v=\"{}\">{}</td><td data-v=\"{}\">{}</td><td>{}</td></tr>",
                role_text(tunnel.role.as_deref()),
                escape(&t.client),
                escape(t.stats.rhost),
                escape(&t.stats.raddr),
                t.age_seconds,
                human_duration(Duration::from_secs_f64(t.age_seconds)),
                t.stats.bytes_out,
                human_bytes(t.stats.bytes_out),
                t.stats.bytes_in,
                human_bytes(t.stats.bytes_in),
                t.stats.seconds_since_last_activity,
                human_duration(Duration::from_secs_f64(t.stats.seconds_since_last_activity)),
                escape(&format!("{}{}", t.decision, t.rule.map(|r| format!(": {r}")).unwrap_or_default())),
            );
        }
        if tunnels.is_empty() {
            html.push_str("<tr class=\"empty\"><td colspan=\"9\">no open tunnels</td></tr>");
        }
        html.push_str("</tbody></table></div>");
        if total > tunnels.len() {
            let _ = write!(
                html,
                "<p class=\"muted\">showing the {} oldest of {total}; <code>/tunnels?limit=N</code> lists up to {}</p>",
                tunnels.len(),
                live::MAX_LIMIT
            );
        }
        html.push_str("</section>");
    }

    fn refusals_section(&self, html: &mut String, metrics: &Metrics) {
        let recent = self.refusals.as_ref().map(|r| r.recent(PAGE_REFUSALS)).unwrap_or_default();
        html.push_str("<section id=\"refusals\"><h2>Recent refusals</h2><ul class=\"counts\" id=\"refusal-counts\">");
        for (outcome, n) in metrics.outcome_counts() {
            if outcome != "tunnel" && n > 0 {
                let _ = write!(html, "<li><span>{}</span> <b>{n}</b></li>", escape(outcome));
            }
        }
        html.push_str(
            "</ul><div class=\"scroll\"><table class=\"sortable\" id=\"refusal-table\"><thead><tr>\
             <th data-type=\"text\">time</th><th data-type=\"text\">role</th><th data-type=\"text\">host</th>\
             <th data-type=\"text\">address</th><th data-type=\"num\">status</th><th data-type=\"text\">reason</th>\
             <th data-type=\"text\">rule</th></tr></thead><tbody>",
        );
        for record in &recent {
            let r = RefusalJson::of(record);
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"host\">{}</td><td>{}</td><td data-v=\"{}\">{}</td><td class=\"reason\" title=\"{}\">{}</td><td>{}</td></tr>",
                escape(&r.time),
                role_text(r.role),
                escape(r.host),
                escape(r.address.as_deref().unwrap_or("")),
                r.status,
                r.status,
                escape(r.kind),
                escape(r.reason),
                escape(r.rule.unwrap_or("")),
            );
        }
        if recent.is_empty() {
            html.push_str("<tr class=\"empty\"><td colspan=\"7\">no refusals since start</td></tr>");
        }
        let _ = write!(
            html,
            "</tbody></table></div><p class=\"muted\">the last {RECENT} are kept; <code>/refusals</code> has them as JSON</p></section>"
        );
    }
}

/// What the admin state hands the page.
#[derive(Debug)]
pub struct PageView<'a> {
    pub policy: Option<&'a PolicyState>,
    pub metrics: &'a Metrics,
    /// `None` when ready, else why not.
    pub ready: Option<&'static str>,
}

fn role_text(role: Option<&str>) -> String {
    match role {
        Some(role) => escape(role),
        None => "<span class=\"muted\">(none)</span>".to_owned(),
    }
}

fn policy_section(html: &mut String, policy: Option<&PolicyState>) {
    html.push_str("<section id=\"policy\"><h2>Policy</h2>");
    let Some(state) = policy else {
        html.push_str("<p class=\"bad\">no policy is loaded</p></section>");
        return;
    };
    let active = state.current();
    let table = &active.table;
    let status = state.status();
    let signature = table.signature.as_ref();
    let source = match state.source() {
        PolicySource::File => format!("file {}", state.path().display()),
        PolicySource::Url(url) => url.clone(),
    };
    html.push_str("<dl class=\"grid\">");
    let mut item = |name: &str, value: &str| {
        let _ = write!(html, "<div><dt>{}</dt><dd>{}</dd></div>", escape(name), escape(value));
    };
    item("revision", table.revision());
    item("serial", &signature.map_or("unsigned".to_owned(), |s| s.serial.to_string()));
    item("signer", &signature.map_or("unsigned".to_owned(), |s| s.key_id.to_string()));
    item("signature", if active.verified.is_some() { "verified" } else { "not checked" });
    item("format version", &table.header.format_version.to_string());
    item("language", table.policy.version.as_str());
    item("loaded at", &crate::timefmt::rfc3339(active.loaded_at));
    item("source", &source);
    item("compiled from", &format!("{} by {}", table.metadata.source_name, table.metadata.compiler));
    let reloads: Vec<String> = status.counts().iter().map(|(r, n)| format!("{r} {n}")).collect();
    item("reloads", &reloads.join(", "));
    match &status.last_attempt {
        Some((at, result, error)) => item(
            "last reload",
            &format!(
                "{} {result}{}",
                crate::timefmt::rfc3339(*at),
                error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        ),
        None => item("last reload", "none since start"),
    }
    if let Some(log) = state.fetch_log() {
        match log.last() {
            Some((at, result, error)) => item(
                "last fetch",
                &format!(
                    "{} {}{}",
                    crate::timefmt::rfc3339(at),
                    result.as_str(),
                    error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                ),
            ),
            None => item("last fetch", "none yet"),
        }
    }
    html.push_str("</dl>");
    let v2 = table.policy.version.as_str() != "v1";
    html.push_str(
        "<div class=\"scroll\"><table class=\"sortable\" id=\"role-table\"><thead><tr><th data-type=\"text\">role</th>\
         <th data-type=\"text\">project</th><th data-type=\"text\">action</th><th data-type=\"num\">patterns</th>",
    );
    if v2 {
        html.push_str("<th data-type=\"text\">ports</th><th data-type=\"num\">internal destinations</th>");
    }
    html.push_str("</tr></thead><tbody>");
    for rule in table.policy.services.iter().chain(table.policy.default.iter()) {
        let name = if rule.name.is_empty() { "<i>default</i>".to_owned() } else { escape(&rule.name) };
        let _ = write!(
            html,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td data-v=\"{2}\">{2}</td>",
            escape(&rule.project),
            escape(rule.action.as_str()),
            rule.allowed_domains.len()
        );
        if v2 {
            let ports = if rule.allowed_ports.is_empty() { "any".to_owned() } else { ports_text(&rule.allowed_ports) };
            let _ = write!(
                html,
                "<td>{}</td><td data-v=\"{1}\">{1}</td>",
                escape(&ports),
                rule.internal_destinations.len()
            );
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div></section>");
}

/// The document head: the stylesheet inline.
fn head(html: &mut String, title: &str) {
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"referrer\" content=\"no-referrer\"><title>{}</title><style>{STYLE}</style></head>",
        escape(title)
    );
}

/// The page answered with 401 when a token is required and missing: a
/// login form; the script fetches the console with the token and shows it.
pub fn login_page() -> String {
    let mut html = String::with_capacity(8 * 1024);
    head(&mut html, "proxyd console: sign in");
    let _ = writeln!(
        html,
        "<body><header><h1>proxyd</h1></header><main><section id=\"login-section\"><h2>Admin token required</h2>\
         <p>This console needs the admin bearer token (<code>--admin-token-file</code>). It is kept in this tab only.</p>\
         <form id=\"login\"><label>token <input id=\"token\" type=\"password\" autocomplete=\"off\" required></label> \
         <button type=\"submit\">open</button></form><p id=\"login-error\" class=\"bad\" role=\"alert\"></p>\
         <noscript><p class=\"bad\">Signing in needs JavaScript; without it, use <code>curl -H 'Authorization: Bearer …'</code>.</p></noscript>\
         </section></main><script>{SCRIPT}</script></body></html>"
    );
    html
}

/// The `Content-Security-Policy` for the console pages: only the inline
/// stylesheet and script (by hash), requests only to this origin, no
/// frames, no forms to elsewhere.
pub fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; img-src 'self'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        )
    })
}

/// Text made safe for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match UNITS.get(unit) {
        Some(&"B") | None => format!("{n} B"),
        Some(name) => format!("{value:.1} {name}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_controls() {
        assert_eq!(
            escape("<script>alert('x')</script>&\"\n"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\u{fffd}"
        );
        assert_eq!(escape("a.example:443"), "a.example:443");
    }

    #[test]
    fn the_policy_hashes_the_inline_script_and_style() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        // The page carries exactly the hashed texts.
        let page = login_page();
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.contains(&format!("<style>{STYLE}</style>")));
    }

    #[test]
    fn the_token_guards_all_but_the_probes() {
        let mut config = Config::with_policy("p.bin");
        config.admin_token = Some(AdminToken::new("t0k"));
        let console = Console::new(&config, None, None);
        for path in ["/healthz", "/readyz"] {
            assert_eq!(console.authorized(path, None), Access::Allowed, "{path}");
        }
        for path in ["/", "/tunnels", "/refusals", "/policy", "/metrics", "/nope"] {
            assert_eq!(console.authorized(path, None), Access::NeedsToken, "{path}");
            assert_eq!(console.authorized(path, Some(b"Bearer wrong")), Access::NeedsToken, "{path}");
            assert_eq!(console.authorized(path, Some(b"Bearer t0k")), Access::Allowed, "{path}");
        }
        config.admin_metrics_open = true;
        let console = Console::new(&config, None, None);
        assert_eq!(console.authorized("/metrics", None), Access::Allowed);
        assert_eq!(console.authorized("/policy", None), Access::NeedsToken);
        let open = Console::new(&Config::with_policy("p.bin"), None, None);
        assert_eq!(open.authorized("/tunnels", None), Access::Allowed);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_duration(Duration::from_secs(75)), "1m15s");
        assert_eq!(human_duration(Duration::from_millis(2500)), "2.5s");
    }
}
