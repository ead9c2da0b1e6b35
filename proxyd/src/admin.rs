//! The admin listener (`--admin-listen`, off by default): `/healthz`,
//! `/readyz`, `/policy` and `/metrics` over plain HTTP/1, and the console
//! (`/`, `/tunnels`, `/refusals`: see [`crate::console`]), all but the
//! probes behind the bearer token when one is configured.
//!
//! It only reads: GET and HEAD, no request bodies, one request per
//! connection, headers within the header timeout and 8 KiB, at most
//! [`MAX_CONNECTIONS`] connections at once and each for at most
//! [`CONNECTION_DEADLINE`]. Everything else gets 404, 405 or 413 (or the
//! connection is closed). It never touches proxy traffic or the policy.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use egress_policy::address::{AddressPolicy, AddressRule};
use egress_policy::policy::ports_text;

use crate::console::{self, Access, Console, PageView};
use crate::metrics::{LogSinkReport, Metrics, PolicyReport};
use crate::reload::{PolicySource, PolicyState};
use crate::timefmt::rfc3339;

/// Admin connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest request head read.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// The most one admin connection may last, slow readers included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct AdminState {
    metrics: Arc<Metrics>,
    policy: OnceLock<Arc<PolicyState>>,
    phase: AtomicU8,
    /// The operator's address rules (flags), for `/policy`'s effective network rules.
    operator_network: OnceLock<AddressPolicy>,
    /// The console, `/tunnels`, `/refusals` and the token; `None`: only the machine endpoints, open.
    console: Option<Console>,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        AdminState {
            metrics,
            policy: OnceLock::new(),
            phase: AtomicU8::new(STARTING),
            operator_network: OnceLock::new(),
            console: None,
        }
    }

    /// Adds the console (and the token guard), before serving starts.
    pub fn with_console(mut self, console: Console) -> Self {
        self.console = Some(console);
        self
    }

    /// The operator's address rules are known (set once, at start).
    pub fn operator_network(&self, rules: AddressPolicy) {
        let _ = self.operator_network.set(rules);
    }

    /// The policy is loaded.
    pub fn policy_loaded(&self, policy: Arc<PolicyState>) {
        let _ = self.policy.set(policy);
    }

    /// The proxy listener is accepting.
    pub fn accepting(&self) {
        self.phase.store(READY, Ordering::SeqCst);
    }

    /// Shutdown began: no longer ready.
    pub fn draining(&self) {
        self.phase.store(DRAINING, Ordering::SeqCst);
    }

    /// `None` when ready, else why not.
    fn not_ready(&self) -> Option<&'static str> {
        match (self.policy.get(), self.phase.load(Ordering::SeqCst)) {
            (None, _) => Some("no policy is loaded"),
            (_, DRAINING) => Some("draining: shutting down"),
            (_, READY) if crate::log::sink_state().stalled => {
                Some("the log sink is stalled: no log write has completed within --log-stall-timeout")
            }
            (_, READY) => None,
            _ => Some("the proxy listener is not accepting yet"),
        }
    }
}

/// Serves admin requests on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection refused: too many at once");
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "admin connection ended with an error"),
                Err(_) => tracing::debug!(%peer, "admin connection closed: deadline"),
            }
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "request bodies are not accepted\n".into());
    }
    let path = request.uri().path();
    if let Some(console) = &state.console
        && console.authorized(path, request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()))
            == Access::NeedsToken
    {
        return unauthorized(path);
    }
    match path {
        "/" => match &state.console {
            Some(console) => {
                let view = PageView {
                    policy: state.policy.get().map(|p| &**p),
                    metrics: &state.metrics,
                    ready: state.not_ready(),
                };
                html(StatusCode::OK, console.page(&view, request.uri().query()))
            }
            None => text(StatusCode::NOT_FOUND, "not found: the console is not enabled\n".into()),
        },
        "/tunnels" | "/refusals" => {
            let Some(console) = &state.console else {
                return text(StatusCode::NOT_FOUND, "not found: the console is not enabled\n".into());
            };
            let query = request.uri().query();
            let body = if path == "/tunnels" {
                console.tunnels_json(query)
            } else {
                console.refusals_json(&state.metrics, query)
            };
            match body {
                Ok(body) => with_type(StatusCode::OK, body, "application/json"),
                Err(message) => text(StatusCode::BAD_REQUEST, format!("{message}\n")),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match state.not_ready() {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        "/policy" => match state.policy.get() {
            Some(policy) => {
                let mut json = policy_json(policy);
                add_network_json(&mut json, policy, state.operator_network.get());
                let mut body = serde_json::to_string_pretty(&json).unwrap_or_default();
                body.push('\n');
                with_type(StatusCode::OK, body, "application/json")
            }
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no policy is loaded\n".into()),
        },
        "/metrics" => {
            let policy = state.policy.get();
            let active = policy.map(|p| p.current());
            let reloads = policy.map(|p| p.status()).unwrap_or_default().counts();
            let report = PolicyReport {
                revision: active.as_ref().map(|a| a.table.revision()),
                loaded_at: active.as_ref().map(|a| a.loaded_at),
                reloads: &reloads,
            };
            let log = crate::log::sink_state();
            let sink = LogSinkReport {
                stalled: log.stalled,
                dropped_decisions: log.dropped_decisions,
                dropped_closes: log.dropped_closes,
                dropped_other: log.dropped.saturating_sub(log.dropped_decisions + log.dropped_closes),
                buffered_bytes: log.buffered_bytes,
            };
            let body = state.metrics.render(&report, &sink, state.not_ready().is_none());
            with_type(StatusCode::OK, body, "text/plain; version=0.0.4; charset=utf-8")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /tunnels, /refusals, /healthz, /readyz, /policy or /metrics\n".into(),
        ),
    }
}

/// 401 with `WWW-Authenticate: Bearer`; for `/`, the console's sign-in page.
fn unauthorized(path: &str) -> Response<Full<Bytes>> {
    let mut response = if path == "/" {
        html(StatusCode::UNAUTHORIZED, console::login_page())
    } else {
        text(StatusCode::UNAUTHORIZED, "unauthorized: send Authorization: Bearer <the admin token>\n".into())
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"proxyd admin\""));
    response
}

/// An HTML console page, with its strict Content-Security-Policy.
fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = with_type(status, body, "text/html; charset=utf-8");
    let headers = response.headers_mut();
    if let Ok(policy) = header::HeaderValue::from_str(console::content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    response
}

/// The `/policy` document.
pub fn policy_json(state: &PolicyState) -> serde_json::Value {
    let active = state.current();
    let table = &active.table;
    let status = state.status();
    let last_reload = status
        .last_attempt
        .as_ref()
        .map(|(at, result, error)| serde_json::json!({ "time": rfc3339(*at), "result": result, "error": error }));
    let mut document = serde_json::json!({
        "revision": table.revision(),
        "policy_file": state.path().display().to_string(),
        "file_sha256": hex::encode(active.file_sha256),
        "source_file": table.metadata.source_name,
        "source_sha256": table.metadata.source_sha256,
        "compiler": table.metadata.compiler,
        "loaded_at": rfc3339(active.loaded_at),
        "roles": table.policy.services.len(),
        "has_default_rule": table.policy.default.is_some(),
        "patterns": table.policy.pattern_count(),
        "disabled_actions": state.disabled().iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "compiled_with_disabled_actions": table.metadata.disabled_actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "reloads": status.counts().into_iter().map(|(result, n)| (result.to_owned(), n.into())).collect::<serde_json::Map<_, _>>(),
        "last_reload": last_reload,
    });
    if let Some(fields) = document.as_object_mut() {
        fields.extend(provenance_json(state, rfc3339));
    }
    document
}

/// Policy v2 in `/policy`: the language version, the effective network
/// rules (operator flags, then the active table's `network` section, each
/// most specific first) and every role's internal destinations with reasons.
fn add_network_json(json: &mut serde_json::Value, state: &PolicyState, operator: Option<&AddressPolicy>) {
    let active = state.current();
    let policy = &active.table.policy;
    let Some(map) = json.as_object_mut() else { return };
    let internal: Vec<serde_json::Value> = policy
        .services
        .iter()
        .flat_map(|rule| {
            rule.internal_destinations.iter().map(move |d| {
                serde_json::json!({
                    "role": rule.name,
                    "host": d.host.as_str(),
                    "cidrs": d.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ports": ports_text(&d.ports),
                    "reason": d.reason,
                })
            })
        })
        .collect();
    let operator_rules: Vec<String> =
        operator.map(|o| o.operator_rules().map(ToString::to_string).collect()).unwrap_or_default();
    let policy_rules: Vec<String> =
        active.table.table.network().rules().map(|r| AddressRule::Policy(*r).to_string()).collect();
    map.insert("language_version".into(), policy.version.as_str().into());
    map.insert(
        "network".into(),
        serde_json::json!({
            "operator_rules": operator_rules,
            "unsafe_allow_private_ranges": operator.is_some_and(AddressPolicy::unsafe_allow_private_ranges),
            "policy_rules": policy_rules,
            "precedence": "operator deny > policy deny > operator allow and the built-in set > policy allow and internal destinations (never metadata, loopback, unspecified, multicast or broadcast)",
        }),
    );
    map.insert("internal_destinations".into(), internal.into());
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// The `/policy` fields about where the active table came from and whether
/// its signature was checked: `serial`, `signed_by` (null when unsigned),
/// `signature` (`verified` or `not checked`), `source` (`file` or the URL)
/// and, for a URL, `last_fetch`.
pub fn provenance_json(
    state: &PolicyState,
    time: impl Fn(SystemTime) -> String,
) -> serde_json::Map<String, serde_json::Value> {
    let active = state.current();
    let block = active.table.signature.as_ref();
    let mut fields = serde_json::Map::new();
    fields.insert("serial".into(), block.map(|b| b.serial).into());
    fields.insert("signed_by".into(), block.map(|b| b.key_id.to_string()).into());
    let checked = if active.verified.is_some() { "verified" } else { "not checked" };
    fields.insert("signature".into(), checked.into());
    let source = match state.source() {
        PolicySource::File => "file".to_owned(),
        PolicySource::Url(url) => url.clone(),
    };
    fields.insert("source".into(), source.into());
    if let PolicySource::Url(_) = state.source() {
        let last = state.fetch_log().and_then(|log| log.last()).map(
            |(at, result, error)| serde_json::json!({ "time": time(at), "result": result.as_str(), "error": error }),
        );
        fields.insert("last_fetch".into(), last.into());
    }
    fields
}
