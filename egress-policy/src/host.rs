//! The one host canonicaliser, shared by the compiler (ACL entries) and the
//! decision function (CONNECT destinations).
//!
//! Canonical means: lower-case, at most one trailing dot removed, Unicode
//! labels converted to Punycode with UTS-46, IP literals in their one standard
//! spelling (IPv4-mapped IPv6 becomes IPv4), and every numeric form that some
//! resolver would read as an IPv4 address (`127.1`, `0x7f.0.0.1`, `2130706433`,
//! `010.0.0.1`) refused. Two Smokescreen CVEs were deny-list bypasses through
//! case and a trailing dot; one shared function closes that class.
//!
//! This module is pure: no I/O, no DNS, no clock. It must never accept a host
//! that two readers could interpret differently.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest input we look at. DNS names are at most 253 octets; Unicode input
/// can be longer before Punycode, but never this long.
const MAX_INPUT_LEN: usize = 1024;
/// RFC 1035 limits, applied to the ASCII form without the root dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A host in canonical form: either a DNS name or an IP address literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanonicalHost {
    text: Box<str>,
    ip: Option<IpAddr>,
}

impl CanonicalHost {
    /// The canonical spelling: what ACL entries must be written as and what
    /// the decision function matches on.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The address, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// Whether the host is a DNS name (not an IP literal).
    pub fn is_name(&self) -> bool {
        self.ip.is_none()
    }

    fn from_ip(ip: IpAddr) -> Self {
        // IPv4-mapped IPv6 names the IPv4 host: one spelling for one destination.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        CanonicalHost { text: ip_text(ip), ip: Some(ip) }
    }
}

/// An address's standard spelling in one allocation: formatted on the stack
/// first (`to_string` would grow a `String`, then shrink it into the box).
fn ip_text(ip: IpAddr) -> Box<str> {
    use std::fmt::Write as _;
    /// Room for any spelling: the longest, eight groups of `ffff`, is 39 bytes.
    struct Text {
        bytes: [u8; 48],
        len: usize,
    }
    impl fmt::Write for Text {
        fn write_str(&mut self, piece: &str) -> fmt::Result {
            let end = self.len + piece.len();
            self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(piece.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut text = Text { bytes: [0; 48], len: 0 };
    let written = write!(text, "{ip}").ok().and_then(|()| std::str::from_utf8(text.bytes.get(..text.len)?).ok());
    written.map_or_else(|| ip.to_string().into_boxed_str(), Box::from)
}

impl fmt::Display for CanonicalHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The result of canonicalising some text, with what had to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonicalized {
    /// The canonical host.
    pub host: CanonicalHost,
    /// The input ended with one trailing dot, which was removed.
    pub had_trailing_dot: bool,
    /// The input differs from the canonical spelling in more than the
    /// trailing dot (case, Unicode, IP spelling).
    pub rewritten: bool,
}

/// Why a host was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The input is empty, or nothing but a dot.
    #[error("host is empty")]
    Empty,
    /// The input is longer than 1024 bytes; refused before any parsing.
    #[error("host is longer than {MAX_INPUT_LEN} bytes")]
    InputTooLong,
    /// The ASCII (Punycode) name, without the root dot, is longer than 253 characters (RFC 1035).
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    /// One label of the ASCII name is longer than 63 characters (RFC 1035).
    #[error("label {label:?} is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong {
        /// The over-long label, as written.
        label: String,
    },
    /// Two dots in a row, a leading dot, or more than one trailing dot.
    #[error("empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    /// A character outside letters, digits, `-`, `_` and `.` (for example `/`, a space, `[`).
    #[error("character {ch:?} (U+{code:04X}) is not allowed in a host name", code = u32::from(*ch))]
    DisallowedChar {
        /// The first refused character, as the user typed it.
        ch: char,
    },
    /// The input looks like `host:port`; a host has no port.
    #[error("a port is not part of a host (\"{host}:{port}\")")]
    HasPort {
        /// The text before the colon.
        host: String,
        /// The digits after the colon.
        port: String,
    },
    /// An IPv6 literal with a zone (`fe80::1%eth0`): the zone is local to one machine.
    #[error("IPv6 zone identifiers (\"%...\") are not allowed")]
    ZoneId,
    /// Contains a colon but is not a valid IPv6 address.
    #[error("invalid IPv6 address")]
    InvalidIpv6,
    /// A numeric spelling that resolvers read as an IPv4 address (`127.1`, `0x7f.0.0.1`,
    /// `2130706433`, `010.0.0.1`): refused so that no two readers disagree on the host.
    #[error("non-canonical IPv4 address form; it means {means}")]
    NonCanonicalIpv4 {
        /// The address a WHATWG URL parser or `inet_aton` would read it as.
        means: Ipv4Addr,
    },
    /// The last label is numeric, but the name is neither a dotted quad nor any IPv4 spelling.
    #[error("numeric last label: neither a name nor a canonical IPv4 address")]
    NumericName,
    /// A label UTS-46/IDNA refuses, or one that starts or ends with a hyphen.
    #[error("invalid internationalised name (UTS-46/IDNA): {label}")]
    Idna {
        /// The label UTS-46 refused (best effort: the whole input when no single label is at fault).
        label: String,
    },
}

/// Canonicalises `input` (a host without port or brackets).
///
/// ```rust
/// use egress_policy::host;
/// let c = host::canonicalize("Example.COM.")?;
/// assert_eq!(c.host.as_str(), "example.com");
/// assert!(c.had_trailing_dot);
/// assert!(c.rewritten); // the case changed
/// # Ok::<(), host::HostError>(())
/// ```
pub fn canonicalize(input: &str) -> Result<Canonicalized, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if input.len() > MAX_INPUT_LEN {
        return Err(HostError::InputTooLong);
    }
    if input.contains(':') {
        return canonicalize_ipv6(input);
    }
    if let Ok(v4) = input.parse::<Ipv4Addr>() {
        return Ok(Canonicalized {
            host: CanonicalHost::from_ip(IpAddr::V4(v4)),
            had_trailing_dot: false,
            rewritten: false,
        });
    }

    let ascii = to_ascii(input)?;
    let (name, had_trailing_dot) = match ascii.strip_suffix('.') {
        Some(stripped) => (stripped, true),
        None => (ascii.as_str(), false),
    };
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    check_labels(name)?;

    let last_label = name.rsplit('.').next().unwrap_or(name);
    if is_numeric_label(last_label) {
        // `127.0.0.1.` or full-width digits map to a strict dotted quad: the
        // host is that address. Anything else numeric is an ambiguous IPv4 form.
        if let Ok(v4) = name.parse::<Ipv4Addr>() {
            return Ok(Canonicalized {
                host: CanonicalHost::from_ip(IpAddr::V4(v4)),
                had_trailing_dot,
                rewritten: name.len() + usize::from(had_trailing_dot) != input.len() || !input.starts_with(name),
            });
        }
        return Err(match whatwg_ipv4(name) {
            Some(means) => HostError::NonCanonicalIpv4 { means },
            None => HostError::NumericName,
        });
    }

    let rewritten = {
        let input_name = if had_trailing_dot { input.strip_suffix('.').unwrap_or(input) } else { input };
        input_name != name
    };
    Ok(Canonicalized { host: CanonicalHost { text: name.into(), ip: None }, had_trailing_dot, rewritten })
}

/// Canonicalises and keeps only the host. Convenience for callers that do
/// not report how the input was spelled.
///
/// ```rust
/// use std::net::Ipv4Addr;
/// use egress_policy::host::{self, HostError};
/// // Case and one trailing dot are normalised away.
/// assert_eq!(host::canonical("API.Example.COM.")?.as_str(), "api.example.com");
/// // Unicode names become Punycode (UTS-46).
/// assert_eq!(host::canonical("bücher.example")?.as_str(), "xn--bcher-kva.example");
/// // IP literals get their one standard spelling; IPv4-mapped IPv6 is IPv4.
/// assert_eq!(host::canonical("::FFFF:127.0.0.1")?.as_str(), "127.0.0.1");
/// // A spelling that some resolver reads as 127.0.0.1 is refused, naming what it means.
/// assert_eq!(
///     host::canonical("127.1"),
///     Err(HostError::NonCanonicalIpv4 { means: Ipv4Addr::LOCALHOST })
/// );
/// # Ok::<(), HostError>(())
/// ```
pub fn canonical(input: &str) -> Result<CanonicalHost, HostError> {
    canonicalize(input).map(|c| c.host)
}

fn canonicalize_ipv6(input: &str) -> Result<Canonicalized, HostError> {
    if input.contains('%') {
        return Err(HostError::ZoneId);
    }
    match input.parse::<Ipv6Addr>() {
        Ok(v6) => {
            let host = CanonicalHost::from_ip(IpAddr::V6(v6));
            let rewritten = host.as_str() != input;
            Ok(Canonicalized { host, had_trailing_dot: false, rewritten })
        }
        Err(_) => {
            // `name:port` is the common mistake; say so instead of "bad IPv6".
            if let Some((host, port)) = input.rsplit_once(':')
                && !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(HostError::HasPort { host: host.to_owned(), port: port.to_owned() });
            }
            if let Some(ch) = input.chars().find(|c| !(c.is_ascii_hexdigit() || *c == ':' || *c == '.')) {
                return Err(HostError::DisallowedChar { ch });
            }
            Err(HostError::InvalidIpv6)
        }
    }
}

/// UTS-46 processing (mapping, case folding, Punycode), then our own strict
/// character set. Hyphens may not start or end a label, but may sit in
/// positions 3-4: real CDN names (`r3---sn-abc.googlevideo.com`) use them.
fn to_ascii(input: &str) -> Result<String, HostError> {
    if input.is_ascii() {
        let lower = input.to_ascii_lowercase();
        if !lower.split('.').any(|label| label.starts_with("xn--")) {
            return check_ascii(lower, input);
        }
    }
    to_ascii_uts46(input)
}

/// The fast path for ASCII without Punycode labels, where UTS-46 would only
/// lower-case: apply the same checks without its full machinery. A property
/// test holds it equal to [`to_ascii_uts46`].
fn check_ascii(lower: String, input: &str) -> Result<String, HostError> {
    if let Some(ch) = input.chars().find(|c| !is_host_char(c.to_ascii_lowercase()) && *c != '.') {
        return Err(HostError::DisallowedChar { ch });
    }
    if let Some(label) = input.split('.').find(|l| l.starts_with('-') || l.ends_with('-')) {
        return Err(HostError::Idna { label: label.to_owned() });
    }
    Ok(lower)
}

fn to_ascii_uts46(input: &str) -> Result<String, HostError> {
    // Report the character the user typed, before any mapping.
    if let Some(ch) = input.chars().find(|c| c.is_ascii() && !is_host_char(c.to_ascii_lowercase()) && *c != '.') {
        return Err(HostError::DisallowedChar { ch });
    }
    let ascii = Uts46::new()
        .to_ascii(input.as_bytes(), AsciiDenyList::EMPTY, Hyphens::CheckFirstLast, DnsLength::Ignore)
        .map_err(|_| HostError::Idna { label: first_bad_label(input) })?;
    if let Some(ch) = ascii.chars().find(|c| !is_host_char(*c) && *c != '.') {
        return Err(HostError::DisallowedChar { ch });
    }
    Ok(ascii.into_owned())
}

/// Best effort: name the label that UTS-46 refused.
fn first_bad_label(input: &str) -> String {
    input
        .split('.')
        .find(|label| {
            Uts46::new()
                .to_ascii(label.as_bytes(), AsciiDenyList::EMPTY, Hyphens::CheckFirstLast, DnsLength::Ignore)
                .is_err()
        })
        .unwrap_or(input)
        .to_owned()
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

fn check_labels(name: &str) -> Result<(), HostError> {
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::NameTooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong { label: label.to_owned() });
        }
    }
    Ok(())
}

/// A label that the WHATWG URL parser (and libc's `inet_aton`) would read as
/// a number: all decimal digits, or `0x` followed by hex digits.
fn is_numeric_label(label: &str) -> bool {
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit())
}

/// What `inet_aton`/WHATWG would make of a numeric host (`127.1` →
/// 127.0.0.1), so the error can say what the spelling really means.
fn whatwg_ipv4(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        numbers.push(parse_ipv4_number(part)?);
    }
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|n| *n > 255) {
        return None;
    }
    let last_bits = 8 * (5 - numbers.len());
    if u64::from(*last) >= 1u64 << last_bits {
        return None;
    }
    let mut value = u64::from(*last);
    for (i, n) in init.iter().enumerate() {
        value += u64::from(*n) << (8 * (3 - i));
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_number(part: &str) -> Option<u32> {
    if part.is_empty() {
        return None;
    }
    if let Some(hex) = part.strip_prefix("0x") {
        if hex.is_empty() {
            return Some(0);
        }
        return u32::from_str_radix(hex, 16).ok();
    }
    if part.len() > 1 && part.starts_with('0') {
        return u32::from_str_radix(part.get(1..)?, 8).ok();
    }
    part.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use proptest::prelude::*;

    fn ok(input: &str) -> String {
        canonical(input).unwrap_or_else(|e| panic!("{input:?}: {e}")).to_string()
    }

    #[test]
    fn address_text_is_the_standard_spelling() {
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        for ip in ["0.0.0.0", "255.255.255.255", "::", "2001:db8::1", "::ffff:255.255.255.255", longest] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(&*ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn names_are_lower_cased_and_lose_one_trailing_dot() {
        assert_eq!(ok("EXAMPLE.com"), "example.com");
        assert_eq!(ok("example.com."), "example.com");
        assert_eq!(ok("ExAmPlE.CoM."), "example.com");
        assert_eq!(canonical("example.com.."), Err(HostError::EmptyLabel));
        assert_eq!(canonical(".example.com"), Err(HostError::EmptyLabel));
        assert_eq!(canonical("a..b"), Err(HostError::EmptyLabel));
        assert_eq!(canonical("."), Err(HostError::Empty));
        assert_eq!(canonical(""), Err(HostError::Empty));
    }

    #[test]
    fn unicode_becomes_punycode() {
        assert_eq!(ok("тест.example.com"), "xn--e1aybc.example.com");
        assert_eq!(ok("éxämple.com"), "xn--xmple-gra7a.com");
        assert_eq!(ok("ß.com"), "xn--zca.com");
        assert_eq!(ok("ＥＸＡＭＰＬＥ.com"), "example.com");
        assert_eq!(ok("example。com"), "example.com");
        assert_eq!(ok("🔐.example.com"), "xn--jv8h.example.com");
        assert_eq!(ok("xn--e1aybc.example.com"), "xn--e1aybc.example.com");
    }

    #[test]
    fn bad_labels_are_refused() {
        assert!(matches!(canonical("-foo.example.com"), Err(HostError::Idna { .. })));
        assert!(matches!(canonical("xn--zz.com"), Err(HostError::Idna { .. })));
        assert_eq!(ok("foo_bar.example.com"), "foo_bar.example.com");
        assert_eq!(ok("r3---sn-abc.googlevideo.com"), "r3---sn-abc.googlevideo.com");
        assert_eq!(canonical("exa mple.com"), Err(HostError::DisallowedChar { ch: ' ' }));
        assert_eq!(canonical("a*b.com"), Err(HostError::DisallowedChar { ch: '*' }));
        assert_eq!(canonical("10.0.0.0/8"), Err(HostError::DisallowedChar { ch: '/' }));
        assert_eq!(canonical("[::1]"), Err(HostError::DisallowedChar { ch: '[' }));
        assert_eq!(canonical("exa%6dple.com"), Err(HostError::DisallowedChar { ch: '%' }));
        assert!(matches!(canonical(&"a".repeat(64)), Err(HostError::LabelTooLong { .. })));
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(canonical(&long), Err(HostError::NameTooLong));
        assert_eq!(canonical(&"a".repeat(2000)), Err(HostError::InputTooLong));
    }

    #[test]
    fn ports_are_named_as_ports() {
        assert_eq!(
            canonical("example.com:443"),
            Err(HostError::HasPort { host: "example.com".into(), port: "443".into() })
        );
    }

    #[test]
    fn ip_literals_have_one_spelling() {
        assert_eq!(ok("127.0.0.1"), "127.0.0.1");
        assert_eq!(ok("2001:DB8::1"), "2001:db8::1");
        assert_eq!(ok("2001:db8:0:0:0:0:0:1"), "2001:db8::1");
        assert_eq!(ok("::ffff:127.0.0.1"), "127.0.0.1");
        assert_eq!(ok("::1"), "::1");
        assert_eq!(ok("127.0.0.1."), "127.0.0.1");
        assert_eq!(ok("１２７.０.０.１"), "127.0.0.1");
        assert!(canonical("127.0.0.1").unwrap().ip().is_some());
        assert_eq!(canonical("fe80::1%eth0"), Err(HostError::ZoneId));
        assert_eq!(canonical("1:2:3"), Err(HostError::InvalidIpv6));
    }

    #[test]
    fn ambiguous_numeric_forms_are_refused_with_their_meaning() {
        let loopback = Ipv4Addr::new(127, 0, 0, 1);
        for form in ["127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "0x7f000001", "127.0.1"] {
            assert_eq!(canonical(form), Err(HostError::NonCanonicalIpv4 { means: loopback }), "{form}");
        }
        assert_eq!(canonical("010.0.0.1"), Err(HostError::NonCanonicalIpv4 { means: Ipv4Addr::new(8, 0, 0, 1) }));
        assert_eq!(canonical("256.1.1.1"), Err(HostError::NumericName));
        assert_eq!(canonical("1.2.3.4.5"), Err(HostError::NumericName));
        // A numeric label that is not the last one is an ordinary name.
        assert_eq!(ok("1.2.3.example"), "1.2.3.example");
        assert_eq!(ok("0x7f.example"), "0x7f.example");
    }

    #[test]
    fn rewritten_and_trailing_dot_are_reported() {
        let c = canonicalize("example.com").unwrap();
        assert!(!c.rewritten && !c.had_trailing_dot);
        let c = canonicalize("example.com.").unwrap();
        assert!(!c.rewritten && c.had_trailing_dot);
        let c = canonicalize("Example.com").unwrap();
        assert!(c.rewritten && !c.had_trailing_dot);
        assert!(canonicalize("::FFFF:1.2.3.4").unwrap().rewritten);
        assert!(!canonicalize("127.0.0.1.").unwrap().rewritten);
        assert!(canonicalize("１２７.０.０.１").unwrap().rewritten);
    }

    fn label() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z][a-z0-9-]{0,10}[a-z0-9]", "[a-z]", "[а-я]{1,6}", "[a-zé-ü]{1,8}", "xn--[a-z]{2,4}",]
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..5).prop_map(|labels| labels.join("."))
    }

    proptest! {
        #[test]
        fn ascii_fast_path_agrees_with_uts46(input in "[a-zA-Z0-9._*%: -]{1,24}") {
            prop_assert_eq!(to_ascii(&input), to_ascii_uts46(&input));
        }

        #[test]
        fn canonicalisation_is_idempotent(input in any::<String>()) {
            if let Ok(host) = canonical(&input) {
                let again = canonical(host.as_str()).expect("canonical output must be accepted");
                prop_assert_eq!(&again, &host);
                let c = canonicalize(host.as_str()).unwrap();
                prop_assert!(!c.rewritten && !c.had_trailing_dot);
            }
        }

        #[test]
        fn canonical_output_is_ascii_lower_without_trailing_dot(input in name()) {
            if let Ok(host) = canonical(&input) {
                let s = host.as_str();
                prop_assert!(s.is_ascii());
                prop_assert!(!s.ends_with('.'));
                prop_assert_eq!(s.to_ascii_lowercase(), s);
            }
        }

        #[test]
        fn spelling_variants_canonicalise_alike(input in name()) {
            if let Ok(host) = canonical(&input) {
                // Upper case where it round-trips (not `ß` → `SS`, a different name).
                let upper = input.to_uppercase();
                if upper.to_lowercase() == input {
                    prop_assert_eq!(canonical(&upper).ok(), Some(host.clone()));
                    prop_assert_eq!(canonical(&format!("{upper}.")).ok(), Some(host.clone()));
                }
                prop_assert_eq!(canonical(&input.to_ascii_uppercase()).ok(), Some(host.clone()));
                prop_assert_eq!(canonical(&format!("{input}.")).ok(), Some(host.clone()));
            }
        }

        #[test]
        fn ipv4_literals_round_trip(a in any::<u32>()) {
            let ip = Ipv4Addr::from(a);
            prop_assert_eq!(canonical(&ip.to_string()).unwrap().ip(), Some(IpAddr::V4(ip)));
            let mapped = ip.to_ipv6_mapped().to_string();
            prop_assert_eq!(canonical(&mapped).unwrap().ip(), Some(IpAddr::V4(ip)));
        }
    }
}
