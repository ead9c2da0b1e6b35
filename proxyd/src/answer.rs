//! Every way a request can fail, the one function that turns a failure into
//! its HTTP answer (PROXY.md §5), and the bytes of every answer the proxy
//! writes on its port, the tunnel's `200` included. Nothing else in `proxyd`
//! chooses a status code or writes an answer.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::request::{HeadError, RequestHead, Version};
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
    /// No proxy credentials, and the request needs them (`realm` is the challenge's).
    #[error("proxy authentication required")]
    AuthRequired { realm: Arc<str> },
    /// Proxy credentials that are not the password: never the anonymous role.
    #[error("proxy credentials are wrong")]
    BadCredentials { realm: Arc<str> },
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
    /// `--log-stall-policy refuse`: the log sink is stalled and the
    /// decision line could not be buffered within `--log-stall-timeout`.
    #[error("the decision log is unavailable (log sink stalled): request not recorded, so not served")]
    LogStalled,
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
            Refusal::AuthRequired { .. } | Refusal::BadCredentials { .. } => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::TunnelCap | Refusal::ClientTunnelCap { .. } | Refusal::ClientRequestRate { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Refusal::Draining | Refusal::NoPolicy | Refusal::LogStalled => StatusCode::SERVICE_UNAVAILABLE,
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
            Refusal::AuthRequired { .. } => "proxy_auth_required",
            Refusal::BadCredentials { .. } => "proxy_auth_invalid",
            Refusal::TunnelCap => "tunnel_cap",
            Refusal::ClientTunnelCap { .. } => "client_tunnel_cap",
            Refusal::ClientRequestRate { .. } => "client_request_rate",
            Refusal::Draining => "draining",
            Refusal::NoPolicy => "no_policy",
            Refusal::LogStalled => "log_stalled",
            Refusal::Dns { error: ResolveError::Timeout { .. }, .. } => "dns_timeout",
            Refusal::Dns { .. } => "dns_error",
            Refusal::Connect { .. } => "connect_error",
            Refusal::ConnectTimeout { .. } => "connect_timeout",
        }
    }
}

/// An answer the proxy writes on its port instead of opening a tunnel: a
/// status, its header fields and a plain-text body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// In the order they are written; names in lower case, as hyper wrote them.
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// The answer to a refused request: one line of plain text, the same text
/// in `X-Smokescreen-Error`, and the headers each status needs. The
/// operator's extra message is added to 403 denials only.
pub fn response(refusal: &Refusal, deny_message_extra: Option<&str>) -> Answer {
    let status = refusal.status();
    let mut text = refusal.to_string();
    if status == StatusCode::FORBIDDEN
        && let Some(extra) = deny_message_extra
    {
        text.push(' ');
        text.push_str(extra);
    }
    let mut headers =
        vec![("content-type", "text/plain; charset=utf-8".to_owned()), ("connection", "close".to_owned())];
    // Header values cannot hold control characters (the body keeps them);
    // a text with other than ASCII goes in the body only.
    let header_text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if header_text.is_ascii() {
        headers.push(("x-smokescreen-error", header_text));
    }
    match refusal {
        Refusal::NotConnect(_) => headers.push(("allow", "CONNECT".to_owned())),
        // The challenge: Java and .NET clients send proxy credentials only after one.
        Refusal::AuthRequired { realm } | Refusal::BadCredentials { realm } => {
            headers.push(("proxy-authenticate", format!("Basic realm=\"{realm}\"")));
        }
        Refusal::TunnelCap
        | Refusal::ClientTunnelCap { .. }
        | Refusal::ClientRequestRate { .. }
        | Refusal::LogStalled => {
            headers.push(("retry-after", "1".to_owned()));
        }
        _ => {}
    }
    text.push('\n');
    Answer { status, headers, body: text }
}

impl Answer {
    /// The answer to a request head that could not be read (400, 431; no
    /// body), or `None` when there is nobody to answer (the client left or
    /// stayed silent).
    pub fn to_unread_head(error: &HeadError) -> Option<Answer> {
        let status = match error {
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Closed | HeadError::TimedOut | HeadError::Io(_) => return None,
        };
        Some(Answer { status, headers: vec![("connection", "close".to_owned())], body: String::new() })
    }

    /// The bytes answering `head` (its version; no body for `HEAD`).
    pub fn to_bytes_for(&self, head: &RequestHead) -> Vec<u8> {
        self.to_bytes(head.version, head.head_only())
    }

    /// The first value of header field `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn body(&self) -> &str {
        &self.body
    }

    /// The bytes on the wire for a request of `version`: status line, the
    /// fields, `content-length` and `date`, then the body unless `head_only`
    /// (the answer to a `HEAD` request).
    pub fn to_bytes(&self, version: Version, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        status_line(&mut out, version, self.status, self.status.canonical_reason().unwrap_or(""));
        for (name, value) in &self.headers {
            field(&mut out, name, value.as_bytes());
        }
        field(&mut out, "content-length", self.body.len().to_string().as_bytes());
        end_of_head(&mut out);
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer that opens a tunnel: `200 Connection established`, appended
/// to `out` (what follows is the tunnel).
pub fn established(version: Version, out: &mut Vec<u8>) {
    status_line(out, version, StatusCode::OK, "Connection established");
    if version == Version::Http11 {
        field(out, "connection", b"close");
    }
    end_of_head(out);
}

fn status_line(out: &mut Vec<u8>, version: Version, status: StatusCode, reason: &str) {
    out.extend_from_slice(match version {
        Version::Http10 => b"HTTP/1.0 ",
        Version::Http11 => b"HTTP/1.1 ",
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `date` field and the empty line that ends a head.
fn end_of_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the current time as an IMF-fixdate (`Sat, 05 Dec 2026 09:15:13
/// GMT`), formatted at most once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let written = CACHED.try_with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    if written.is_err() {
        out.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn statuses_follow_the_design_table() {
        let denied = Refusal::Denied { host: "x.com".into(), reason: "rule has enforce policy".into() };
        let r = response(&denied, Some("Contact #egress."));
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("x-smokescreen-error"),
            Some("Egress proxying is denied to host 'x.com': rule has enforce policy. Contact #egress.")
        );
        let r = response(&Refusal::TunnelCap, Some("extra"));
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(!r.header("x-smokescreen-error").unwrap().contains("extra"), "extra only on 403");
        let r = response(&Refusal::ClientTunnelCap { limit: 3 }, None);
        assert_eq!((r.status.as_u16(), r.header("retry-after")), (429, Some("1")));
        assert_eq!(
            r.header("x-smokescreen-error"),
            Some("maximum concurrent connect tunnels for this client address exceeded (3 open)")
        );
        let r = response(&Refusal::NotConnect("GET".into()), None);
        assert_eq!((r.status.as_u16(), r.header("allow")), (405, Some("CONNECT")));
        let r = response(&Refusal::AuthRequired { realm: "proxyd".into() }, Some("extra"));
        assert_eq!((r.status.as_u16(), r.header("proxy-authenticate")), (407, Some("Basic realm=\"proxyd\"")));
        assert_eq!(r.header("x-smokescreen-error"), Some("proxy authentication required"));
        let r = response(&Refusal::BadCredentials { realm: "egress at example.org".into() }, None);
        assert_eq!(
            (r.status.as_u16(), r.header("proxy-authenticate")),
            (407, Some("Basic realm=\"egress at example.org\""))
        );
        let timeout = Refusal::Dns {
            host: "slow.test".into(),
            error: ResolveError::Timeout { name: "slow.test".into(), after: Duration::from_secs(1) },
        };
        assert_eq!(timeout.status(), 504);
        assert_eq!(Refusal::Draining.status(), 503);
        assert_eq!(Refusal::NoPolicy.status(), 503);
        assert_eq!(Refusal::NoPolicy.to_string(), "no policy loaded");
        let r = response(&Refusal::LogStalled, None);
        assert_eq!((r.status.as_u16(), r.header("retry-after")), (503, Some("1")));
        assert!(r.header("x-smokescreen-error").unwrap().contains("decision log is unavailable"));
    }

    /// Header values never carry control characters or non-ASCII text; the body keeps the text.
    #[test]
    fn error_header_is_plain_ascii_or_absent() {
        let denied = Refusal::Denied { host: "x.com".into(), reason: "a".into() };
        let r = response(&denied, Some("line\r\nInjected: yes"));
        assert_eq!(
            r.header("x-smokescreen-error"),
            Some("Egress proxying is denied to host 'x.com': a. line  Injected: yes")
        );
        assert!(r.body().contains("line\r\nInjected"));
        let r = response(&denied, Some("Contactez l'équipe"));
        assert_eq!(r.header("x-smokescreen-error"), None);
        assert!(r.body().contains("équipe"));
    }

    /// The bytes are what hyper wrote before (lower-case names, this order,
    /// `content-length` then `date`), so clients see no change.
    #[test]
    fn wire_format() {
        let without_date = |bytes: Vec<u8>| {
            let text = String::from_utf8(bytes).unwrap();
            let at = text.find("date: ").expect("a date field");
            let date = &text[at + 6..at + 6 + 29];
            assert!(date.ends_with(" GMT") && date.as_bytes()[3] == b',', "{date}");
            format!("{}date: <now>{}", &text[..at], &text[at + 6 + 29..])
        };
        let mut ok = Vec::new();
        established(Version::Http11, &mut ok);
        assert_eq!(without_date(ok), "HTTP/1.1 200 Connection established\r\nconnection: close\r\ndate: <now>\r\n\r\n");
        let mut ok = Vec::new();
        established(Version::Http10, &mut ok);
        assert_eq!(without_date(ok), "HTTP/1.0 200 Connection established\r\ndate: <now>\r\n\r\n");
        assert_eq!(
            without_date(Answer::to_unread_head(&HeadError::TooLarge).unwrap().to_bytes(Version::Http11, false)),
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: <now>\r\n\r\n"
        );
        let refused = response(&Refusal::NotConnect("GET".into()), None);
        let text = refused.header("x-smokescreen-error").unwrap();
        let head = format!(
            "HTTP/1.0 405 Method Not Allowed\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n\
             x-smokescreen-error: {text}\r\nallow: CONNECT\r\ncontent-length: {}\r\ndate: <now>\r\n\r\n",
            text.len() + 1
        );
        assert_eq!(without_date(refused.to_bytes(Version::Http10, false)), format!("{head}{text}\n"));
        assert_eq!(without_date(refused.to_bytes(Version::Http10, true)), head, "HEAD: no body");
    }

    #[test]
    fn every_refusal_kind_is_a_metrics_outcome() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let all = [
            Refusal::BadRequest(String::new()),
            Refusal::NotConnect("GET".into()),
            Refusal::Denied { host: String::new(), reason: String::new() },
            Refusal::MissingRole { host: String::new() },
            Refusal::AuthRequired { realm: "r".into() },
            Refusal::BadCredentials { realm: "r".into() },
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
            Refusal::LogStalled,
        ];
        for refusal in &all {
            assert!(crate::metrics::OUTCOMES.contains(&refusal.kind()), "{} is not counted", refusal.kind());
        }
        let kinds: std::collections::HashSet<_> = all.iter().map(Refusal::kind).collect();
        // Every outcome but `tunnel` and `client_gone` is a refusal kind.
        assert_eq!(kinds.len(), crate::metrics::OUTCOMES.len() - 2);
    }
}
