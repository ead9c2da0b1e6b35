//! A destination as a person writes it for `policyc explain` and in policy
//! tests: `HOST`, `HOST:PORT` or `[IPv6]:PORT`. The host goes through the one
//! canonicaliser and the port through the strict authority parser, so a
//! destination means here exactly what it means in a CONNECT to `proxyd`.
//!
//! Pure: no DNS, no I/O.

use std::fmt;

use crate::authority::{self, AuthorityError};
use crate::host::{self, CanonicalHost, HostError};

/// A canonical host and the port, when one was given. The name stage decides
/// on the host alone; the port is kept so output can repeat what was asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The canonical host.
    pub host: CanonicalHost,
    /// The port, when the destination was written as `HOST:PORT` or `[IPv6]:PORT`.
    pub port: Option<u16>,
}

/// Why a destination was refused, with the text that was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The destination has no port and its host is refused.
    #[error("invalid destination {input:?}: {error}")]
    Host {
        /// The destination as given.
        input: String,
        /// Why the host canonicaliser refused it.
        error: HostError,
    },
    /// The destination has a port (or brackets) and the strict authority parser refuses it.
    #[error("invalid destination {input:?}: {error}")]
    Authority {
        /// The destination as given.
        input: String,
        /// Why the strict `host:port` parser refused it.
        error: AuthorityError,
    },
}

/// Parses `HOST`, `HOST:PORT` or `[IPv6]:PORT`.
///
/// ```rust
/// use egress_policy::destination::{self, DestinationError};
/// let d = destination::parse("API.Example.com.")?;
/// assert_eq!((d.host.as_str(), d.port), ("api.example.com", None));
/// let d = destination::parse("api.example.com:443")?;
/// assert_eq!(d.port, Some(443));
/// assert_eq!(d.to_string(), "api.example.com:443");
/// assert_eq!(destination::parse("[::1]:443")?.to_string(), "[::1]:443");
/// assert!(matches!(destination::parse("127.1:80"), Err(DestinationError::Authority { .. })));
/// assert!(matches!(destination::parse("exa mple.com"), Err(DestinationError::Host { .. })));
/// # Ok::<(), DestinationError>(())
/// ```
pub fn parse(input: &str) -> Result<Destination, DestinationError> {
    let with_port = |input: &str| {
        authority::parse(input)
            .map(|a| Destination { host: a.host, port: Some(a.port) })
            .map_err(|error| DestinationError::Authority { input: input.to_owned(), error })
    };
    if input.starts_with('[') {
        return with_port(input);
    }
    match host::canonical(input) {
        Ok(host) => Ok(Destination { host, port: None }),
        Err(HostError::HasPort { .. }) => with_port(input),
        Err(error) => Err(DestinationError::Host { input: input.to_owned(), error }),
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.host.ip()) {
            (None, _) => write!(f, "{}", self.host),
            (Some(port), Some(std::net::IpAddr::V6(_))) => write!(f, "[{}]:{port}", self.host),
            (Some(port), _) => write!(f, "{}:{port}", self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn hosts_with_and_without_ports() {
        assert_eq!(parse("API.Stripe.com.").unwrap().to_string(), "api.stripe.com");
        assert_eq!(parse("api.stripe.com:443").unwrap().to_string(), "api.stripe.com:443");
        assert_eq!(parse("[2001:DB8::1]:443").unwrap().to_string(), "[2001:db8::1]:443");
        assert_eq!(parse("2001:db8::1").unwrap().port, None);
        for bad in ["127.1:80", "example.com:0", "exa mple.com", "[::1]", "", "a.com:443/x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
