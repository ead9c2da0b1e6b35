//! Every way a request can fail, and the one function that turns a failure
//! into its HTTP answer (PROXY.md §5). Nothing else in `proxyd` chooses a
//! status code or writes an error body.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::resolver::ResolveError;

/// Why a CONNECT was not tunnelled.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "method {0} is not supported: this proxy only tunnels CONNECT (for http:// URLs use `curl --proxytunnel` or the client's CONNECT mode)"
    )]
    NotConnect(String),
    /// The name stage or the address stage said no.
    #[error("Egress proxying is denied to host '{host}': {reason}.")]
    Denied { host: String, reason: String },
    /// No role, and missing roles are not allowed.
    #[error("Egress proxying is denied to host '{host}': Client role cannot be determined.")]
    MissingRole { host: String },
    #[error("proxy authentication required")]
    AuthRequired,
    #[error("proxy credentials are wrong")]
    BadCredentials,
    #[error("maximum concurrent connect tunnels exceeded")]
    TunnelCap,
    /// The client's address already has `limit` tunnels open (`--max-tunnels-per-client`).
    #[error("maximum concurrent connect tunnels for this client address exceeded ({limit} open)")]
    ClientTunnelCap { limit: usize },
    /// The client's address sent more than `per_second` request heads in a
    /// second (`--max-requests-per-client-per-second`).
    #[error("request rate for this client address exceeded ({per_second} per second)")]
    ClientRequestRate { per_second: u32 },
    #[error("proxy is shutting down")]
    Draining,
    /// `--policy-url` has not produced a verified table yet (and no cache).
    #[error("no policy loaded")]
    NoPolicy,
    #[error("Failed to resolve remote hostname '{host}': {error}")]
    Dns { host: String, error: ResolveError },
    #[error("Failed to connect to remote host '{host}' ({addr}): {error}")]
    Connect { host: String, addr: std::net::SocketAddr, error: io::Error },
    #[error("Timed out connecting to remote host '{host}' ({addr}) after {after:?}")]
    ConnectTimeout { host: String, addr: std::net::SocketAddr, after: Duration },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::NotConnect(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Denied { .. } | Refusal::MissingRole { .. } => StatusCode::FORBIDDEN,
            Refusal::AuthRequired | Refusal::BadCredentials => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::TunnelCap | Refusal::ClientTunnelCap { .. } | Refusal::ClientRequestRate { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Refusal::Draining | Refusal::NoPolicy => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Dns { error: ResolveError::Timeout { .. }, .. } | Refusal::ConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Refusal::Dns { .. } | Refusal::Connect { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NotConnect(_) => "not_connect",
            Refusal::Denied { .. } => "denied",
            Refusal::MissingRole { .. } => "missing_role",
            Refusal::AuthRequired => "auth_required",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::TunnelCap => "tunnel_cap",
            Refusal::ClientTunnelCap { .. } => "client_tunnel_cap",
            Refusal::ClientRequestRate { .. } => "client_request_rate",
            Refusal::Draining => "draining",
            Refusal::NoPolicy => "no_policy",
            Refusal::Dns { error: ResolveError::Timeout { .. }, .. } => "dns_timeout",
            Refusal::Dns { .. } => "dns_error",
            Refusal::Connect { .. } => "connect_error",
            Refusal::ConnectTimeout { .. } => "connect_timeout",
        }
    }
}

/// The answer to a refused request: one line of plain text, the same text
/// in `X-Smokescreen-Error`, and the headers each status needs. The
/// operator's extra message is added to 403 denials only.
pub fn response(refusal: &Refusal, deny_message_extra: Option<&str>) -> Response<Full<Bytes>> {
    let status = refusal.status();
    let mut text = refusal.to_string();
    if status == StatusCode::FORBIDDEN
        && let Some(extra) = deny_message_extra
    {
        text.push(' ');
        text.push_str(extra);
    }
    // Header values cannot hold control characters; the body keeps them.
    let header_text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONNECTION, "close");
    if let Ok(value) = HeaderValue::from_str(&header_text) {
        builder = builder.header("X-Smokescreen-Error", value);
    }
    builder = match refusal {
        Refusal::NotConnect(_) => builder.header(header::ALLOW, "CONNECT"),
        Refusal::AuthRequired | Refusal::BadCredentials => {
            builder.header(header::PROXY_AUTHENTICATE, "Basic realm=\"proxyd\"")
        }
        Refusal::TunnelCap | Refusal::ClientTunnelCap { .. } | Refusal::ClientRequestRate { .. } => {
            builder.header(header::RETRY_AFTER, "1")
        }
        _ => builder,
    };
    text.push('\n');
    builder.body(Full::new(Bytes::from(text))).unwrap_or_else(|_| {
        // Only reachable if a static header above were invalid.
        let mut fallback = Response::new(Full::new(Bytes::from_static(b"internal error\n")));
        *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn statuses_follow_the_design_table() {
        let denied = Refusal::Denied { host: "x.com".into(), reason: "rule has enforce policy".into() };
        let r = response(&denied, Some("Contact #egress."));
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()["x-smokescreen-error"],
            "Egress proxying is denied to host 'x.com': rule has enforce policy. Contact #egress."
        );
        let r = response(&Refusal::TunnelCap, Some("extra"));
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(!r.headers()["x-smokescreen-error"].to_str().unwrap().contains("extra"), "extra only on 403");
        let r = response(&Refusal::ClientTunnelCap { limit: 3 }, None);
        assert_eq!((r.status().as_u16(), &r.headers()["retry-after"]), (429, &HeaderValue::from_static("1")));
        assert_eq!(
            r.headers()["x-smokescreen-error"],
            "maximum concurrent connect tunnels for this client address exceeded (3 open)"
        );
        let r = response(&Refusal::NotConnect("GET".into()), None);
        assert_eq!((r.status().as_u16(), &r.headers()["allow"]), (405, &HeaderValue::from_static("CONNECT")));
        let r = response(&Refusal::AuthRequired, None);
        assert_eq!(r.headers()["proxy-authenticate"], "Basic realm=\"proxyd\"");
        let timeout = Refusal::Dns {
            host: "slow.test".into(),
            error: ResolveError::Timeout { name: "slow.test".into(), after: Duration::from_secs(1) },
        };
        assert_eq!(timeout.status(), 504);
        assert_eq!(Refusal::Draining.status(), 503);
        assert_eq!(Refusal::NoPolicy.status(), 503);
        assert_eq!(Refusal::NoPolicy.to_string(), "no policy loaded");
    }

    #[test]
    fn every_refusal_kind_is_a_metrics_outcome() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let all = [
            Refusal::BadRequest(String::new()),
            Refusal::NotConnect("GET".into()),
            Refusal::Denied { host: String::new(), reason: String::new() },
            Refusal::MissingRole { host: String::new() },
            Refusal::AuthRequired,
            Refusal::BadCredentials,
            Refusal::TunnelCap,
            Refusal::ClientTunnelCap { limit: 1 },
            Refusal::ClientRequestRate { per_second: 1 },
            Refusal::Draining,
            Refusal::Dns {
                host: String::new(),
                error: ResolveError::Timeout { name: String::new(), after: Duration::ZERO },
            },
            Refusal::Dns { host: String::new(), error: ResolveError::NotFound { name: String::new() } },
            Refusal::Connect { host: String::new(), addr, error: io::Error::from(io::ErrorKind::ConnectionRefused) },
            Refusal::ConnectTimeout { host: String::new(), addr, after: Duration::ZERO },
            Refusal::NoPolicy,
        ];
        for refusal in &all {
            assert!(crate::metrics::OUTCOMES.contains(&refusal.kind()), "{} is not counted", refusal.kind());
        }
        let kinds: std::collections::HashSet<_> = all.iter().map(Refusal::kind).collect();
        // Every outcome but `tunnel` and `client_gone` is a refusal kind.
        assert_eq!(kinds.len(), crate::metrics::OUTCOMES.len() - 2);
    }
}
