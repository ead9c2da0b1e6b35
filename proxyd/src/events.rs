//! The telemetry vocabulary: the values the request path and the reload
//! code hand to the sinks ([`crate::metrics`]' Prometheus counters and
//! [`crate::statsd`]'s UDP export), and nothing else.
//!
//! Events flow one way: emitters (server, egress, tunnel, reload) call the
//! [`crate::metrics::Metrics`] facade, which updates its counters and queues
//! [`Event`]s for statsd. This module depends on no other module of the
//! crate, so neither sink ever needs the code that emits; it must never
//! import the reload, server or sink modules (a test in
//! `proxyd/tests/layout.rs` fails if it does), and it does no I/O.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use egress_policy::decision::Verdict;

/// Why a connection attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectErrorKind {
    Timeout,
    Refused,
    Reset,
    Unreachable,
    Other,
}

impl ConnectErrorKind {
    pub const ALL: [ConnectErrorKind; 5] = [
        ConnectErrorKind::Timeout,
        ConnectErrorKind::Refused,
        ConnectErrorKind::Reset,
        ConnectErrorKind::Unreachable,
        ConnectErrorKind::Other,
    ];

    pub fn of(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::TimedOut => ConnectErrorKind::Timeout,
            io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ConnectErrorKind::Reset,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => ConnectErrorKind::Unreachable,
            _ => ConnectErrorKind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectErrorKind::Timeout => "timeout",
            ConnectErrorKind::Refused => "refused",
            ConnectErrorKind::Reset => "reset",
            ConnectErrorKind::Unreachable => "unreachable",
            ConnectErrorKind::Other => "other",
        }
    }

    /// Position in [`ConnectErrorKind::ALL`], for per-kind counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A DNS lookup's result, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsResult {
    Ok,
    Timeout,
    Error,
}

/// A role's statsd tags as the active policy sees it. Handed to the request
/// path by [`crate::metrics::Metrics::decision`] so the tunnel's close is
/// tagged the same way as its decision.
#[derive(Debug)]
pub struct RoleTags {
    /// `role` and `project` statsd tag values, already sanitised.
    pub statsd_role: Box<str>,
    pub statsd_project: Box<str>,
}

impl RoleTags {
    /// Tags for `role` and `project`, sanitised once here so the sending task never has to.
    pub fn new(role: &str, project: &str) -> Self {
        RoleTags { statsd_role: sanitise_tag(role).into(), statsd_project: sanitise_tag(project).into() }
    }
}

/// A statsd tag value: Smokescreen replaces `| @ # : " } { \` and control
/// characters with `_`; we also replace `,` (which separates tags: a `,` in a
/// role would inject a tag) and cap the length.
pub fn sanitise_tag(value: &str) -> String {
    value
        .chars()
        .take(200)
        .map(|c| match c {
            '|' | '@' | '#' | ':' | '"' | '}' | '{' | '\\' | ',' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// One thing statsd hears about.
#[derive(Debug)]
pub enum Event {
    /// `acl.allow` / `acl.report` / `acl.deny` with `role`, `def_rule`, `project`.
    Acl { verdict: Verdict, default_rule: bool, tags: Arc<RoleTags> },
    /// `resolver.attempts_total`.
    ResolverAttempt,
    /// `resolver.errors_total`: a DNS failure or an address-stage denial (as Smokescreen counts).
    ResolverError,
    /// `resolver.lookup_time` (ms) of a successful lookup.
    ResolverTime(Duration),
    /// `cn.atpt.total` with `success`.
    ConnectAttempt { success: bool },
    /// `cn.atpt.connect.err` with `type`.
    ConnectError(ConnectErrorKind),
    /// `cn.atpt.connect.time` (ms), only with `time_connect: true`.
    ConnectTime(Duration),
    /// `cn.close`, `cn.duration` (s), `cn.bytes_in`, `cn.bytes_out` with `role`, `project`.
    Close { tags: Arc<RoleTags>, duration: Duration, bytes_in: u64, bytes_out: u64 },
    /// `tunnels.concurrency_limited`.
    TunnelCap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statsd_tags_are_sanitised_including_commas() {
        assert_eq!(sanitise_tag("a,b:c|d@e#f\"g{h}i\\j\nk"), "a_b_c_d_e_f_g_h_i_j_k");
        assert_eq!(sanitise_tag("role with [brackets]"), "role with [brackets]");
        assert_eq!(sanitise_tag(&"x".repeat(500)).len(), 200);
        let tags = RoleTags::new("a,b", "p|q");
        assert_eq!((&*tags.statsd_role, &*tags.statsd_project), ("a_b", "p_q"));
    }

    #[test]
    fn connect_error_kinds() {
        let kind = |k| ConnectErrorKind::of(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::ConnectionRefused), ConnectErrorKind::Refused);
        assert_eq!(kind(io::ErrorKind::ConnectionReset), ConnectErrorKind::Reset);
        assert_eq!(kind(io::ErrorKind::HostUnreachable), ConnectErrorKind::Unreachable);
        assert_eq!(kind(io::ErrorKind::TimedOut), ConnectErrorKind::Timeout);
        assert_eq!(kind(io::ErrorKind::PermissionDenied), ConnectErrorKind::Other);
        for (i, kind) in ConnectErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
