//! The proxy's own DNS client: A and AAAA lookups for canonical names, sent to
//! the `--resolver-address` servers or to the nameservers listed in
//! `/etc/resolv.conf`.
//!
//! It must never consult libc, `/etc/hosts`, search domains or `ndots`: a
//! name is always queried exactly as given, as an absolute name, so that
//! `metadata` can never become `metadata.internal.` behind the policy's back.
//! It never treats an IP literal as a name: the caller classifies literals
//! itself, and this module refuses them without sending a query.
//!
//! Choices, and why:
//! * **No cache.** Each CONNECT resolves its destination once and connects only
//!   to addresses it has just checked, so rebinding is handled by the caller,
//!   not by caching. The configured resolver (a local stub, kube-dns, a node
//!   cache) already caches by TTL; a second cache here would only make answers
//!   stale in ways tests and operators cannot see.
//! * **One attempt, bounded by the DNS timeout.** hickory's per-query timeout
//!   is the whole DNS timeout; within it the UDP layer retransmits lost
//!   packets (every 333 ms or more, at most three sends) and falls back to TCP
//!   on a truncated answer. No whole-query retries: a SERVFAIL is reported
//!   once, not three times. `tokio::time::timeout_at` is the backstop, so a
//!   lookup never takes longer than the timeout, whatever hickory does.
//! * **Order.** IPv4 addresses first, then IPv6, each in the order of the
//!   answer, duplicates removed. Not RFC 6724 sorting (Smokescreen's, via Go):
//!   answer order is deterministic, so "denied by the rule that denied the
//!   first address" names the address an operator sees in `dig`.
//! * **Partial answers.** If one family answers and the other fails or times
//!   out, the addresses found are returned (as Go and glibc do): a server that
//!   drops AAAA queries must not make every name unreachable.
//! * hickory answers RFC 6761 names itself without a query: `localhost`
//!   resolves to loopback (which the address stage denies unless an operator
//!   allows it), `.invalid` and `.onion` names are not found.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// Where the system's nameservers are listed.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The DNS port, for nameservers from resolv.conf (which has no port syntax).
const DNS_PORT: u16 = 53;

/// Why the DNS client could not be set up. Reported once, at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ResolverInitError {
    #[error("cannot read {}: {error}", path.display())]
    ResolvConfUnreadable { path: PathBuf, error: io::Error },
    #[error("{} lists no nameservers; give --resolver-address", path.display())]
    NoNameservers { path: PathBuf },
    #[error("{} line {line}: {value:?} is not a nameserver IP address{hint}", path.display())]
    BadNameserver { path: PathBuf, line: usize, value: String, hint: &'static str },
    #[error("nameserver {server}: IPv6 zone ids are not supported")]
    ZoneId { server: SocketAddr },
    #[error("the DNS timeout must be more than zero")]
    ZeroTimeout,
    #[error("cannot set up the DNS client: {detail}")]
    Build { detail: String },
}

/// Why a lookup produced no addresses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// NXDOMAIN, or the name exists but has no A or AAAA records.
    #[error("{name}: no such host (the name does not exist or has no A/AAAA records)")]
    NotFound { name: String },
    /// SERVFAIL, REFUSED, a malformed answer, a network error: `detail` says which.
    #[error("{name}: DNS lookup failed: {detail}")]
    Failed { name: String, detail: String },
    /// No answer within the DNS timeout.
    #[error("{name}: DNS lookup timed out after {after:?}")]
    Timeout { name: String, after: Duration },
}

impl ResolveError {
    /// The name that was looked up.
    pub fn name(&self) -> &str {
        match self {
            ResolveError::NotFound { name }
            | ResolveError::Failed { name, .. }
            | ResolveError::Timeout { name, .. } => name,
        }
    }
}

/// The proxy's DNS client. Cheap to share behind an `Arc`; lookups may run concurrently.
#[derive(Debug)]
pub struct Resolver {
    inner: TokioResolver,
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl Resolver {
    /// `servers`: --resolver-address values (UDP, with TCP fallback on truncation); empty = the system's
    /// nameservers from /etc/resolv.conf (read once at start; an unreadable or empty resolv.conf is an error
    /// naming the file). Only the `nameserver` lines are used: search domains, `ndots`, `options` never apply.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, ResolverInitError> {
        if servers.is_empty() {
            let system = nameservers_from_resolv_conf(Path::new(SYSTEM_RESOLV_CONF))?;
            return Self::with_servers(system, timeout);
        }
        Self::with_servers(servers.to_vec(), timeout)
    }

    fn with_servers(servers: Vec<SocketAddr>, timeout: Duration) -> Result<Self, ResolverInitError> {
        if timeout.is_zero() {
            return Err(ResolverInitError::ZeroTimeout);
        }
        // hickory addresses servers by IP and port only: a link-local server's zone would be lost.
        if let Some(&server) = servers.iter().find(|server| matches!(server, SocketAddr::V6(v6) if v6.scope_id() != 0))
        {
            return Err(ResolverInitError::ZoneId { server });
        }
        let name_servers = servers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        // No domain, no search list: names are absolute.
        let config = ResolverConfig::from_name_servers(name_servers);

        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 0; // no whole-query retries (UDP retransmission happens below this layer)
        options.cache_size = 0; // disables the cache (see the module comment)
        options.use_hosts_file = ResolveHosts::Never;
        options.ndots = 0;
        options.edns0 = true; // larger UDP answers before falling back to TCP

        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|err| ResolverInitError::Build { detail: err.to_string() })?;
        Ok(Resolver { inner, servers, timeout })
    }

    /// The nameservers queried.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The overall bound of one lookup.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A and AAAA for a canonical name (never an IP literal: the caller handles those; one is refused
    /// without a query), bounded by the timeout overall. Never consults /etc/hosts or libc. Returns
    /// addresses in answer order, IPv4 first then IPv6, deduplicated; never an empty list.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let query_name = absolute_name(name)?;
        // Both families share one deadline, so whichever answered in time is still used.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (v4, v6) = tokio::join!(
            tokio::time::timeout_at(deadline, self.inner.lookup(query_name.clone(), RecordType::A)),
            tokio::time::timeout_at(deadline, self.inner.lookup(query_name, RecordType::AAAA)),
        );
        let v4 = Outcome::of(v4.ok(), Family::V4);
        let v6 = Outcome::of(v6.ok(), Family::V6);
        combine(name, self.timeout, v4, v6)
    }
}

/// Reads the `nameserver` lines of a resolv.conf, and nothing else: `search`, `domain` and `options`
/// are ignored on purpose. Addresses get port 53. An unreadable file, a file without nameservers and
/// a nameserver that is not an IP address are errors naming the file.
pub fn nameservers_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, ResolverInitError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ResolverInitError::ResolvConfUnreadable { path: path.to_path_buf(), error })?;
    let mut servers = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue; // comments (`#`, `;`), other keywords, blank lines
        }
        let bad = |value: &str, hint: &'static str| ResolverInitError::BadNameserver {
            path: path.to_path_buf(),
            line: index.saturating_add(1),
            value: value.to_owned(),
            hint,
        };
        let value = words.next().ok_or_else(|| bad("", ""))?;
        let ip: IpAddr = value.parse().map_err(|_| {
            // hickory addresses servers by IP and port only: a link-local server's zone would be lost.
            bad(value, if value.contains('%') { " (IPv6 zone ids are not supported)" } else { "" })
        })?;
        servers.push(SocketAddr::new(ip, DNS_PORT));
    }
    if servers.is_empty() {
        return Err(ResolverInitError::NoNameservers { path: path.to_path_buf() });
    }
    Ok(servers)
}

/// The absolute name to query: the labels exactly as given (no escapes interpreted), rooted.
fn absolute_name(name: &str) -> Result<Name, ResolveError> {
    let failed = |detail: String| ResolveError::Failed { name: name.to_owned(), detail };
    let relative = name.strip_suffix('.').unwrap_or(name);
    if relative.is_empty() {
        return Err(failed("empty name".to_owned()));
    }
    if relative.parse::<IpAddr>().is_ok() {
        return Err(failed("an IP address literal is not looked up in DNS".to_owned()));
    }
    Name::from_labels(relative.split('.').map(str::as_bytes))
        .map_err(|err| failed(format!("not a valid DNS name: {err}")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// What one query (A or AAAA) produced.
#[derive(Debug)]
enum Outcome {
    /// NOERROR; empty when the name has no records of this type (NODATA).
    Addresses(Vec<IpAddr>),
    NxDomain,
    Timeout,
    Failed(Failure),
}

/// The real cause of a failed query.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The server answered with this error code.
    Answered(ResponseCode),
    /// No usable answer: network error, malformed answer, ...
    Error(String),
}

impl Failure {
    /// `queries`: "A query", "AAAA query" or "A and AAAA queries".
    fn describe(&self, queries: &str) -> String {
        match self {
            Failure::Answered(code) => format!("the DNS server answered {} to the {queries}", rcode(*code)),
            Failure::Error(error) => format!("the {queries} failed: {error}"),
        }
    }
}

impl Outcome {
    /// `None`: the shared deadline passed first.
    fn of(result: Option<Result<Lookup, NetError>>, family: Family) -> Self {
        match result {
            None => Outcome::Timeout,
            Some(Ok(lookup)) => Outcome::Addresses(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match (&record.data, family) {
                        // Only the type asked for: a CNAME chain's names, or stray records, are not addresses.
                        (RData::A(a), Family::V4) => Some(IpAddr::V4(a.0)),
                        (RData::AAAA(aaaa), Family::V6) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    })
                    .collect(),
            ),
            Some(Err(err)) => Outcome::of_error(err),
        }
    }

    fn of_error(err: NetError) -> Self {
        match err {
            NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => match response_code {
                ResponseCode::NXDomain => Outcome::NxDomain,
                ResponseCode::NoError => Outcome::Addresses(Vec::new()),
                other => Outcome::Failed(Failure::Answered(other)),
            },
            NetError::Dns(DnsError::ResponseCode(code)) => Outcome::Failed(Failure::Answered(code)),
            NetError::Timeout => Outcome::Timeout,
            other => Outcome::Failed(Failure::Error(other.to_string())),
        }
    }
}

/// The mnemonic operators know from `dig`; the number and hickory's description for rarer codes.
fn rcode(code: ResponseCode) -> String {
    let mnemonic = match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::NotAuth => "NOTAUTH",
        other => return format!("rcode {} ({other})", u16::from(other)),
    };
    mnemonic.to_owned()
}

/// Addresses if either family has some; otherwise the most telling failure: NXDOMAIN (the name
/// does not exist, whatever else happened), then a failure's real cause, then a timeout, then
/// "no records" (both families answered NODATA).
fn combine(name: &str, after: Duration, v4: Outcome, v6: Outcome) -> Result<Vec<IpAddr>, ResolveError> {
    let mut addresses = Vec::new();
    let mut seen = HashSet::new();
    for outcome in [&v4, &v6] {
        if let Outcome::Addresses(found) = outcome {
            addresses.extend(found.iter().copied().filter(|ip| seen.insert(*ip)));
        }
    }
    if !addresses.is_empty() {
        for outcome in [&v4, &v6] {
            if let Outcome::Failed(failure) = outcome {
                tracing::debug!(name, ?failure, "DNS: one family failed; using the other family's addresses");
            } else if let Outcome::Timeout = outcome {
                tracing::debug!(name, "DNS: one family timed out; using the other family's addresses");
            }
        }
        return Ok(addresses);
    }

    let name = name.to_owned();
    if matches!(v4, Outcome::NxDomain) || matches!(v6, Outcome::NxDomain) {
        return Err(ResolveError::NotFound { name });
    }
    let detail = match (&v4, &v6) {
        (Outcome::Failed(a), Outcome::Failed(aaaa)) if a == aaaa => Some(a.describe("A and AAAA queries")),
        (Outcome::Failed(a), Outcome::Failed(aaaa)) => {
            Some(format!("{}; {}", a.describe("A query"), aaaa.describe("AAAA query")))
        }
        (Outcome::Failed(a), _) => Some(a.describe("A query")),
        (_, Outcome::Failed(aaaa)) => Some(aaaa.describe("AAAA query")),
        _ => None,
    };
    if let Some(detail) = detail {
        return Err(ResolveError::Failed { name, detail });
    }
    if matches!(v4, Outcome::Timeout) || matches!(v6, Outcome::Timeout) {
        return Err(ResolveError::Timeout { name, after });
    }
    Err(ResolveError::NotFound { name })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    fn v4(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_v4_then_v6_deduplicated() {
        let got = combine(
            "a.test",
            Duration::from_secs(1),
            Outcome::Addresses(vec![v4("192.0.2.2"), v4("192.0.2.1"), v4("192.0.2.2")]),
            Outcome::Addresses(vec![v4("2001:db8::1")]),
        )
        .unwrap();
        assert_eq!(got, vec![v4("192.0.2.2"), v4("192.0.2.1"), v4("2001:db8::1")]);
    }

    #[test]
    fn one_family_is_enough() {
        let got =
            combine("a.test", Duration::from_secs(1), Outcome::Timeout, Outcome::Addresses(vec![v4("2001:db8::1")]));
        assert_eq!(got, Ok(vec![v4("2001:db8::1")]));
    }

    #[test]
    fn failures_rank_nxdomain_then_cause_then_timeout_then_nodata() {
        let after = Duration::from_secs(1);
        let name = "a.test".to_owned();
        let servfail = || Outcome::Failed(Failure::Answered(ResponseCode::ServFail));
        let io = || Outcome::Failed(Failure::Error("io error: unreachable".into()));
        let failed = |detail: &str| Err(ResolveError::Failed { name: name.clone(), detail: detail.into() });
        let not_found = Err(ResolveError::NotFound { name: name.clone() });

        assert_eq!(combine(&name, after, Outcome::NxDomain, servfail()), not_found);
        assert_eq!(combine(&name, after, Outcome::Addresses(vec![]), Outcome::Addresses(vec![])), not_found);
        assert_eq!(
            combine(&name, after, Outcome::Timeout, servfail()),
            failed("the DNS server answered SERVFAIL to the AAAA query")
        );
        assert_eq!(
            combine(&name, after, servfail(), servfail()),
            failed("the DNS server answered SERVFAIL to the A and AAAA queries")
        );
        assert_eq!(
            combine(&name, after, io(), Outcome::Failed(Failure::Answered(ResponseCode::Refused))),
            failed("the A query failed: io error: unreachable; the DNS server answered REFUSED to the AAAA query")
        );
        assert_eq!(
            combine(&name, after, Outcome::Failed(Failure::Answered(ResponseCode::BADCOOKIE)), Outcome::Timeout),
            failed("the DNS server answered rcode 23 (Bad server cookie) to the A query")
        );
        assert_eq!(
            combine(&name, after, Outcome::Addresses(vec![]), Outcome::Timeout),
            Err(ResolveError::Timeout { name: name.clone(), after })
        );
    }

    #[test]
    fn names_are_absolute_and_literals_refused() {
        assert_eq!(absolute_name("metadata").unwrap().to_ascii(), "metadata.");
        assert_eq!(absolute_name("a.example.").unwrap().to_ascii(), "a.example.");
        for literal in ["127.0.0.1", "::1", "169.254.169.254.", "::ffff:10.0.0.1"] {
            assert!(matches!(absolute_name(literal), Err(ResolveError::Failed { .. })), "{literal}");
        }
        for bad in ["", ".", "a..b"] {
            assert!(matches!(absolute_name(bad), Err(ResolveError::Failed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn zoned_nameservers_are_refused_not_silently_unzoned() {
        let zoned: SocketAddr = "[fe80::1%2]:53".parse().unwrap();
        let err = Resolver::new(&[zoned], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ResolverInitError::ZoneId { server } if server == zoned), "{err:?}");
    }

    #[test]
    fn error_messages_carry_the_name_and_the_cause() {
        let err = ResolveError::Failed { name: "a.test".into(), detail: "the DNS server answered SERVFAIL".into() };
        assert_eq!(err.to_string(), "a.test: DNS lookup failed: the DNS server answered SERVFAIL");
        let err = ResolveError::Timeout { name: "a.test".into(), after: Duration::from_millis(1500) };
        assert_eq!(err.to_string(), "a.test: DNS lookup timed out after 1.5s");
        assert_eq!(err.name(), "a.test");
    }
}
