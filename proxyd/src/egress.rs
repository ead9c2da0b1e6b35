//! The address stage and the only way out: classify every candidate address,
//! keep the permitted ones, and connect to one of them.
//!
//! [`CheckedAddr`] can only be made by [`check`], and [`connect`] only takes
//! `CheckedAddr`s, so connecting to an address the classifier did not permit
//! does not compile. A hostname never reaches a connect call (that would
//! resolve again: DNS rebinding).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use egress_policy::address::{AddressPolicy, AddressRule, PolicyNetwork};
use egress_policy::policy::InternalDestination;
use tokio::net::TcpStream;

use crate::config::EgressGuard;
use crate::metrics::{ConnectErrorKind, Metrics};

/// An address the address stage permitted. No public constructor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedAddr(SocketAddr);

impl CheckedAddr {
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

/// The result of the address stage over every answer for a name.
#[derive(Debug)]
pub enum AddressStage {
    /// Permitted addresses, in answer order.
    Permitted(Vec<CheckedAddr>),
    /// Nothing permitted: the first address and the rule that denied it.
    Denied { ip: IpAddr, rule: AddressRule },
}

/// Classifies every address (with the request's port) and keeps the permitted
/// ones. `network` is the active table's `network` section and `exception`
/// the internal destination that allowed the name, if any (policy v2); the
/// operator's rules in `policy` are a floor neither can open.
pub fn check(
    policy: &AddressPolicy,
    network: &PolicyNetwork,
    exception: Option<&InternalDestination>,
    ips: &[IpAddr],
    port: u16,
) -> AddressStage {
    let mut permitted = Vec::with_capacity(ips.len());
    let mut first_denied = None;
    for ip in ips {
        let addr = SocketAddr::new(*ip, port);
        let verdict = policy.classify_with(addr, network, exception);
        if verdict.allowed {
            permitted.push(CheckedAddr(addr));
        } else if first_denied.is_none() {
            first_denied = Some((*ip, verdict.rule));
        }
    }
    match (permitted.is_empty(), first_denied) {
        (false, _) | (true, None) => AddressStage::Permitted(permitted),
        (true, Some((ip, rule))) => AddressStage::Denied { ip, rule },
    }
}

/// Why no connection could be made: the last attempt's failure.
#[derive(Debug)]
pub enum ConnectFailure {
    Io { addr: SocketAddr, error: io::Error },
    Timeout { addr: SocketAddr, after: Duration },
}

/// Connects to the first permitted address that answers, each attempt
/// bounded by `timeout`; on failure tries the next. Each attempt is
/// reported to `metrics`.
pub async fn connect(
    candidates: &[CheckedAddr],
    timeout: Duration,
    guard: Option<&EgressGuard>,
    metrics: &Metrics,
) -> Result<(TcpStream, CheckedAddr), ConnectFailure> {
    let mut last = None;
    for candidate in candidates {
        let addr = candidate.0;
        if let Some(guard) = guard
            && !guard(addr)
        {
            last = Some(ConnectFailure::Io {
                addr,
                error: io::Error::new(io::ErrorKind::PermissionDenied, "refused by the egress guard"),
            });
            continue;
        }
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                metrics.connect_attempt(started.elapsed(), None);
                let _ = stream.set_nodelay(true);
                return Ok((stream, *candidate));
            }
            Ok(Err(error)) => {
                metrics.connect_attempt(started.elapsed(), Some(ConnectErrorKind::of(&error)));
                last = Some(ConnectFailure::Io { addr, error });
            }
            Err(_) => {
                metrics.connect_attempt(started.elapsed(), Some(ConnectErrorKind::Timeout));
                last = Some(ConnectFailure::Timeout { addr, after: timeout });
            }
        }
    }
    Err(last.unwrap_or_else(|| ConnectFailure::Io {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        error: io::Error::new(io::ErrorKind::NotFound, "no address to connect to"),
    }))
}
