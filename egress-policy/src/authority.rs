//! Strict parsing of a CONNECT authority (`host:port` or `[v6]:port`), shared
//! by `policyc explain` and `proxyd` so both read a destination the same way.
//!
//! Refused: a missing or zero port, leading `+` or zeros, userinfo, paths,
//! unbracketed IPv6, zone identifiers, and every host the canonicaliser
//! refuses. Pure: no DNS, no I/O.

use std::fmt;

use crate::host::{self, CanonicalHost, HostError};

/// Longest authority we look at (a 253-octet name, brackets, a port, slack
/// for Unicode input).
pub const MAX_AUTHORITY_LEN: usize = 1024;

/// A destination: canonical host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    /// The canonical host (brackets removed from IPv6).
    pub host: CanonicalHost,
    /// The port, 1 to 65535.
    pub port: u16,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.ip() {
            Some(std::net::IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
/// Why a CONNECT authority was refused; `proxyd` answers such a request with an
/// error before any policy lookup, and `policyc explain` prints the message.
pub enum AuthorityError {
    /// No host (empty input, or `:443`).
    #[error("destination is empty")]
    Empty,
    /// Longer than [`MAX_AUTHORITY_LEN`] bytes; refused before parsing.
    #[error("destination is longer than {MAX_AUTHORITY_LEN} bytes")]
    TooLong,
    /// No `:port` after the host.
    #[error("missing port in {0:?}: CONNECT needs host:port")]
    MissingPort(String),
    /// The port is empty, zero, above 65535, signed, has leading zeros or non-digits.
    #[error("invalid port {0:?}: must be a number from 1 to 65535 without sign or leading zeros")]
    InvalidPort(String),
    /// Has a scheme, user info, path, query, fragment, backslash or whitespace.
    #[error("{0:?} is not a bare authority: no scheme, user info or path")]
    NotAnAuthority(String),
    /// An IPv6 address without brackets, so its port cannot be told apart.
    #[error("IPv6 addresses must be in brackets, as in [2001:db8::1]:443")]
    UnbracketedIpv6,
    /// Brackets around something other than an IPv6 address (or no closing bracket).
    #[error("bracketed host {0:?} is not an IPv6 address")]
    BracketNotIpv6(String),
    /// The host part is refused by the canonicaliser.
    #[error("invalid host {host:?}: {error}")]
    Host {
        /// The host part as written.
        host: String,
        /// Why the canonicaliser refused it.
        error: HostError,
    },
}

/// Parses `host:port` / `[v6]:port` strictly and canonicalises the host.
///
/// ```rust
/// use egress_policy::authority::{self, AuthorityError};
/// let a = authority::parse("Example.COM.:443")?;
/// assert_eq!((a.host.as_str(), a.port), ("example.com", 443));
/// assert_eq!(authority::parse("[::1]:8443")?.to_string(), "[::1]:8443");
/// assert!(matches!(authority::parse("127.0.0.1"), Err(AuthorityError::MissingPort(_))));
/// assert!(matches!(authority::parse("127.0.0.1:0080"), Err(AuthorityError::InvalidPort(_))));
/// assert_eq!(authority::parse("::1:80"), Err(AuthorityError::UnbracketedIpv6));
/// # Ok::<(), AuthorityError>(())
/// ```
pub fn parse(input: &str) -> Result<Authority, AuthorityError> {
    if input.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if input.len() > MAX_AUTHORITY_LEN {
        return Err(AuthorityError::TooLong);
    }
    if input.contains(['@', '/', '?', '#', '\\']) || input.contains(char::is_whitespace) {
        return Err(AuthorityError::NotAnAuthority(input.to_owned()));
    }
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| AuthorityError::BracketNotIpv6(input.to_owned()))?;
        let port = after.strip_prefix(':').ok_or_else(|| AuthorityError::MissingPort(input.to_owned()))?;
        if !inside.contains(':') {
            return Err(AuthorityError::BracketNotIpv6(inside.to_owned()));
        }
        (inside, port)
    } else {
        let (host, port) = input.rsplit_once(':').ok_or_else(|| AuthorityError::MissingPort(input.to_owned()))?;
        if host.contains(':') {
            return Err(AuthorityError::UnbracketedIpv6);
        }
        (host, port)
    };
    let port = parse_port(port)?;
    if host.is_empty() {
        return Err(AuthorityError::Empty);
    }
    let host = host::canonical(host).map_err(|error| AuthorityError::Host { host: host.to_owned(), error })?;
    Ok(Authority { host, port })
}

fn parse_port(text: &str) -> Result<u16, AuthorityError> {
    let invalid = || AuthorityError::InvalidPort(text.to_owned());
    if text.is_empty() || text.len() > 5 || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    text.parse::<u16>().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn good_authorities() {
        let a = parse("Example.COM.:443").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("example.com", 443));
        let a = parse("[2001:DB8::1]:8443").unwrap();
        assert_eq!(a.to_string(), "[2001:db8::1]:8443");
        let a = parse("[::ffff:127.0.0.1]:80").unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:80");
        assert_eq!(parse("тест.example:1").unwrap().host.as_str(), "xn--e1aybc.example");
        assert_eq!(parse("h:65535").unwrap().port, 65535);
    }

    #[test]
    fn bad_authorities() {
        use AuthorityError as E;
        assert_eq!(parse(""), Err(E::Empty));
        assert_eq!(parse(":443"), Err(E::Empty));
        assert!(matches!(parse("127.0.0.1"), Err(E::MissingPort(_))));
        for port in ["0", "65536", "99999", "+80", "0080", "", "8o"] {
            assert!(matches!(parse(&format!("h:{port}")), Err(E::InvalidPort(_))), "{port}");
        }
        assert!(matches!(parse("user@h:80"), Err(E::NotAnAuthority(_))));
        assert!(matches!(parse("h:80/path"), Err(E::NotAnAuthority(_))));
        assert!(matches!(parse("http://h:80"), Err(E::NotAnAuthority(_))));
        assert_eq!(parse("::1:80"), Err(E::UnbracketedIpv6));
        assert!(matches!(parse("[127.0.0.1]:80"), Err(E::BracketNotIpv6(_))));
        assert!(matches!(parse("[fe80::1%eth0]:80"), Err(E::Host { error: HostError::ZoneId, .. })));
        assert!(matches!(parse("127.1:80"), Err(E::Host { error: HostError::NonCanonicalIpv4 { .. }, .. })));
        assert!(matches!(parse("[::1]"), Err(E::MissingPort(_))));
        assert!(matches!(parse(&format!("{}:1", "a".repeat(2000))), Err(E::TooLong)));
    }
}
