//! The validated policy: the middle layer between the YAML a human wrote
//! (`acl`) and the compiled artifact (`table`). Every value in here has
//! already been checked; logic uses only these types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::host::CanonicalHost;
use crate::pattern::HostPattern;

/// What a rule does with a host outside its `allowed_domains`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allow everything.
    Open,
    /// Allow everything, flag what is outside the list (`enforce_would_deny`).
    Report,
    /// Allow only the list.
    Enforce,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 3] = [Action::Open, Action::Report, Action::Enforce];

    /// The ACL spelling: `open`, `report` or `enforce`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Report => "report",
            Action::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `action` (or `--disable-acl-policy-action` value) that is not `open`,
/// `report` or `enforce`; carries the text given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}: expected open, report or enforce")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    /// Exact lower-case names, as Smokescreen: `Enforce` is not an action.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

/// A set of actions, used for `--disable-acl-policy-action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    /// Adds `action` to the set.
    pub fn insert(&mut self, action: Action) {
        self.0 |= Self::bit(action);
    }

    /// Whether `action` is in the set.
    pub fn contains(self, action: Action) -> bool {
        self.0 & Self::bit(action) != 0
    }

    /// Whether no action is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions in the set, in [`Action::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    fn bit(action: Action) -> u8 {
        1 << (action as u8)
    }
}

impl FromIterator<Action> for ActionSet {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        let mut set = ActionSet::default();
        for action in iter {
            set.insert(action);
        }
        set
    }
}

impl fmt::Display for ActionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Action::as_str).collect();
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(", ")) }
    }
}

/// One rule: a service's own, or the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The role. Non-empty and unique among services; empty for the default rule.
    pub name: String,
    /// The owning project (free text, carried into logs as Smokescreen does).
    pub project: String,
    /// What the rule does with a host outside its `allowed_domains`.
    pub action: Action,
    /// Hosts the rule allows; checked before the global lists (see
    /// [`crate::decision`] for the order).
    pub allowed_domains: Vec<HostPattern>,
    /// v2: the ports the role may reach through its lists; empty is any port.
    pub allowed_ports: Vec<PortRange>,
    /// v2: audited private exceptions (service rules only).
    pub internal_destinations: Vec<InternalDestination>,
}

impl Rule {
    /// A v1 rule: no port restriction, no exceptions.
    pub fn v1(
        name: impl Into<String>,
        project: impl Into<String>,
        action: Action,
        allowed_domains: Vec<HostPattern>,
    ) -> Self {
        Rule {
            name: name.into(),
            project: project.into(),
            action,
            allowed_domains,
            allowed_ports: Vec::new(),
            internal_destinations: Vec::new(),
        }
    }
}

/// A whole ACL, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The `services` rules, in file order; their names are unique.
    pub services: Vec<Rule>,
    /// The `default` rule, for roles without a rule of their own.
    pub default: Option<Rule>,
    /// `global_allow_list`: hosts allowed for every role, after its
    /// `allowed_domains` and the global deny list.
    pub global_allow_list: Vec<HostPattern>,
    /// `global_deny_list`: hosts denied for every role unless its own
    /// `allowed_domains` matched.
    pub global_deny_list: Vec<HostPattern>,
    /// Which edition the source was written in.
    pub version: PolicyVersion,
    /// v2: the policy's own address rules.
    pub network: NetworkRules,
}

impl Policy {
    /// Every rule (services, then the default) that uses one of `disabled`.
    pub fn rules_using(&self, disabled: ActionSet) -> impl Iterator<Item = &Rule> {
        self.services.iter().chain(self.default.iter()).filter(move |rule| disabled.contains(rule.action))
    }

    /// Total number of host patterns in every list.
    pub fn pattern_count(&self) -> usize {
        self.services.iter().chain(self.default.iter()).map(|r| r.allowed_domains.len()).sum::<usize>()
            + self.global_allow_list.len()
            + self.global_deny_list.len()
    }

    /// Rules (services and default) with an `allowed_ports` list.
    pub fn port_rule_count(&self) -> usize {
        self.services.iter().chain(self.default.iter()).filter(|r| !r.allowed_ports.is_empty()).count()
    }

    /// Total number of `internal_destinations` entries.
    pub fn internal_destination_count(&self) -> usize {
        self.services.iter().chain(self.default.iter()).map(|r| r.internal_destinations.len()).sum()
    }
}

/// Which edition of the language a file was written in. v2 is a superset
/// of v1; a v1 file never uses (and never pays for) v2 features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyVersion {
    /// `version: v1`: Smokescreen's language.
    #[default]
    V1,
    /// `version: v2`: v1 plus ports, internal destinations, middle wildcards
    /// and the `network` section.
    V2,
}

impl PolicyVersion {
    /// As written in the file: `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyVersion::V1 => "v1",
            PolicyVersion::V2 => "v2",
        }
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive port range; a single port is `start == end`. Never port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port of the range (at least 1).
    pub start: u16,
    /// Last port of the range, inclusive (at least `start`).
    pub end: u16,
}

impl PortRange {
    /// The range of exactly one port.
    pub fn single(port: u16) -> Self {
        PortRange { start: port, end: port }
    }

    /// Whether `port` is inside the range.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end { write!(f, "{}", self.start) } else { write!(f, "{}-{}", self.start, self.end) }
    }
}

/// Whether `port` is in `ports`; an empty list means every port.
pub fn port_allowed(ports: &[PortRange], port: u16) -> bool {
    ports.is_empty() || ports.iter().any(|r| r.contains(port))
}

/// Renders a port list as written in YAML (`443, 8000-8999`); `any` when empty.
pub fn ports_text(ports: &[PortRange]) -> String {
    if ports.is_empty() {
        return "any".to_owned();
    }
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// An audited exception (`internal_destinations`): for one role, one exact
/// host, on these ports, resolved addresses inside `cidrs` pass the address
/// stage although they are private. Never the never-openable set
/// ([`crate::address::never_openable`]), never what an operator flag denies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InternalDestination {
    /// The one exact host the exception is for.
    pub host: CanonicalHost,
    /// Canonical networks (no host bits, no IPv4-mapped IPv6 ranges).
    pub cidrs: Vec<IpNet>,
    /// Never empty.
    pub ports: Vec<PortRange>,
    /// Why the exception exists: the audit trail. Never empty.
    pub reason: String,
}

impl InternalDestination {
    /// Puts a rule's exceptions in the one order the compiled table stores
    /// them (CIDRs and ports sorted and deduplicated, the list sorted by
    /// host, CIDRs, ports, reason), so a policy read from YAML and the same
    /// policy decoded from its table decide identically, down to which
    /// exception's `reason` is reported when two overlap.
    pub fn canonical_order(list: &mut [InternalDestination]) {
        for d in list.iter_mut() {
            d.cidrs.sort_by_cached_key(ToString::to_string);
            d.cidrs.dedup();
            d.ports.sort();
            d.ports.dedup();
        }
        list.sort_by_cached_key(|d| {
            (
                d.host.to_string(),
                d.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                d.ports.clone(),
                d.reason.clone(),
            )
        });
    }

    /// Whether this exception is about `host` on `port`.
    pub fn covers(&self, host: &CanonicalHost, port: u16) -> bool {
        self.host == *host && self.ports.iter().any(|r| r.contains(port))
    }

    /// The exception's network that contains `ip` (IPv4-mapped IPv6 is
    /// matched as its IPv4 address).
    pub fn network_of(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = ip.to_canonical();
        self.cidrs.iter().copied().find(|net| net.contains(&ip))
    }
}

/// The policy's own address rules (the `network` section): same meaning as
/// proxyd's `--allow-range`/`--deny-range`/`--allow-address`/`--deny-address`,
/// merged under them (an operator deny is a floor the policy cannot open).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkRules {
    /// `allow_ranges`: networks opened (as `--allow-range`).
    pub allow_ranges: Vec<IpNet>,
    /// `deny_ranges`: networks closed (as `--deny-range`).
    pub deny_ranges: Vec<IpNet>,
    /// `allow_addresses`: `IP` or `IP:PORT` opened (as `--allow-address`).
    pub allow_addresses: Vec<AddressSpec>,
    /// `deny_addresses`: `IP` or `IP:PORT` closed (as `--deny-address`).
    pub deny_addresses: Vec<AddressSpec>,
}

impl NetworkRules {
    /// True when the section is absent or empty.
    pub fn is_empty(&self) -> bool {
        self.rule_count() == 0
    }

    /// The number of rules in all four lists.
    pub fn rule_count(&self) -> usize {
        self.allow_ranges.len() + self.deny_ranges.len() + self.allow_addresses.len() + self.deny_addresses.len()
    }
}

/// An address rule's value, as the policy's `network` section and
/// `--allow-address` / `--deny-address` spell it: an IP (every port) or an
/// IP and one port. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) means the IPv4
/// address, as it does for hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressSpec {
    /// An address on every port (`192.0.2.1`, `2001:db8::1`).
    Ip(IpAddr),
    /// An address on one port (`192.0.2.1:443`, `[2001:db8::1]:443`).
    Socket(SocketAddr),
}

impl AddressSpec {
    /// The address, with or without a port.
    pub fn ip(&self) -> IpAddr {
        match self {
            AddressSpec::Ip(ip) => *ip,
            AddressSpec::Socket(s) => s.ip(),
        }
    }

    /// The port, when the spec names one.
    pub fn port(&self) -> Option<u16> {
        match self {
            AddressSpec::Ip(_) => None,
            AddressSpec::Socket(s) => Some(s.port()),
        }
    }

    pub(crate) fn canonical(self) -> Self {
        match self {
            AddressSpec::Ip(ip) => AddressSpec::Ip(ip.to_canonical()),
            AddressSpec::Socket(s) => AddressSpec::Socket(SocketAddr::new(s.ip().to_canonical(), s.port())),
        }
    }

    pub(crate) fn matches(&self, ip: IpAddr, port: u16) -> bool {
        match self {
            AddressSpec::Ip(want) => *want == ip,
            AddressSpec::Socket(want) => want.ip() == ip && want.port() == port,
        }
    }
}

impl fmt::Display for AddressSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressSpec::Ip(ip) => write!(f, "{ip}"),
            AddressSpec::Socket(s) => write!(f, "{s}"),
        }
    }
}

/// Why an `IP` / `IP:PORT` value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressSpecError {
    /// The value is empty.
    #[error("address is empty: expected IP or IP:PORT ([IPv6]:PORT for IPv6)")]
    Empty,
    /// Neither `IP` nor `IP:PORT` (nor `[IPv6]:PORT`).
    #[error("invalid address {0:?}: expected IP or IP:PORT ([IPv6]:PORT for IPv6)")]
    Invalid(String),
    /// An IPv6 zone identifier (`%eth0`), which names no one address.
    #[error("invalid address {0:?}: zone identifiers (%...) are not allowed")]
    ZoneId(String),
    /// A bracketed IPv6 address without a port (`[2001:db8::1]`).
    #[error("invalid address {0:?}: brackets are only for [IPv6]:PORT; write the address without them")]
    BracketsWithoutPort(String),
    /// An IPv4 address in brackets (`[192.0.2.1]:80`).
    #[error("invalid address {0:?}: only IPv6 addresses go in brackets")]
    BracketNotIpv6(String),
    /// The port is empty, zero, above 65535, signed, has leading zeros or non-digits.
    #[error(
        "invalid port {port:?} in address {input:?}: must be a number from 1 to 65535 without sign or leading zeros (leave the port out to match every port)"
    )]
    InvalidPort {
        /// The whole value as given.
        input: String,
        /// The port part as given.
        port: String,
    },
}

impl FromStr for AddressSpec {
    type Err = AddressSpecError;

    /// Strict: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:443`.
    /// Note that `::1:80` is the IPv6 address `::1:80` (as in Smokescreen);
    /// write `[::1]:80` for a port.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || AddressSpecError::Invalid(input.to_owned());
        if input.is_empty() {
            return Err(AddressSpecError::Empty);
        }
        if input.contains('%') {
            return Err(AddressSpecError::ZoneId(input.to_owned()));
        }
        if let Ok(ip) = input.parse::<IpAddr>() {
            return Ok(AddressSpec::Ip(ip).canonical());
        }
        let (ip, port) = if let Some(rest) = input.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(invalid)?;
            if inside.parse::<Ipv4Addr>().is_ok() {
                return Err(AddressSpecError::BracketNotIpv6(input.to_owned()));
            }
            let ip = inside.parse::<Ipv6Addr>().map_err(|_| invalid())?;
            if after.is_empty() {
                return Err(AddressSpecError::BracketsWithoutPort(input.to_owned()));
            }
            (IpAddr::V6(ip), after.strip_prefix(':').ok_or_else(invalid)?)
        } else {
            let (host, port) = input.rsplit_once(':').ok_or_else(invalid)?;
            (IpAddr::V4(host.parse::<Ipv4Addr>().map_err(|_| invalid())?), port)
        };
        let port = parse_port(port)
            .ok_or_else(|| AddressSpecError::InvalidPort { input: input.to_owned(), port: port.to_owned() })?;
        Ok(AddressSpec::Socket(SocketAddr::new(ip, port)).canonical())
    }
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    fn spec(s: &str) -> AddressSpec {
        s.parse().unwrap()
    }

    #[test]
    fn address_specs_parse_strictly() {
        let good = [
            ("1.2.3.4", AddressSpec::Ip("1.2.3.4".parse().unwrap())),
            ("1.2.3.4:80", AddressSpec::Socket("1.2.3.4:80".parse().unwrap())),
            ("2001:db8::1", AddressSpec::Ip("2001:db8::1".parse().unwrap())),
            ("[2001:db8::1]:443", AddressSpec::Socket("[2001:db8::1]:443".parse().unwrap())),
            ("::1:80", AddressSpec::Ip("::1:80".parse().unwrap())), // an IPv6 address, as in Smokescreen
            ("::ffff:10.0.0.1", AddressSpec::Ip("10.0.0.1".parse().unwrap())),
            ("[::ffff:10.0.0.1]:8080", AddressSpec::Socket("10.0.0.1:8080".parse().unwrap())),
            ("1.2.3.4:65535", AddressSpec::Socket("1.2.3.4:65535".parse().unwrap())),
        ];
        for (input, want) in good {
            assert_eq!(input.parse::<AddressSpec>(), Ok(want), "{input}");
        }
        assert_eq!(spec("[2001:db8::1]:443").to_string(), "[2001:db8::1]:443");
        assert_eq!(spec("1.2.3.4").port(), None);
        assert_eq!(spec("1.2.3.4:80").port(), Some(80));

        use AddressSpecError as E;
        let bad = [
            ("", E::Empty),
            ("example.com", E::Invalid("example.com".into())),
            ("example.com:80", E::Invalid("example.com:80".into())),
            ("1.2.3", E::Invalid("1.2.3".into())),
            ("010.0.0.1", E::Invalid("010.0.0.1".into())),
            (" 1.2.3.4", E::Invalid(" 1.2.3.4".into())),
            ("1.2.3.4/32", E::Invalid("1.2.3.4/32".into())),
            ("[2001:db8::1]", E::BracketsWithoutPort("[2001:db8::1]".into())),
            ("[1.2.3.4]:80", E::BracketNotIpv6("[1.2.3.4]:80".into())),
            ("[2001:db8::1]443", E::Invalid("[2001:db8::1]443".into())),
            ("[2001:db8::1:443", E::Invalid("[2001:db8::1:443".into())),
            ("fe80::1%eth0", E::ZoneId("fe80::1%eth0".into())),
            ("[fe80::1%1]:80", E::ZoneId("[fe80::1%1]:80".into())),
        ];
        for (input, want) in bad {
            assert_eq!(input.parse::<AddressSpec>(), Err(want), "{input}");
        }
        for port in ["0", "65536", "99999", "-1", "+80", "080", "", "8o"] {
            let input = format!("1.2.3.4:{port}");
            assert_eq!(
                input.parse::<AddressSpec>(),
                Err(E::InvalidPort { input: input.clone(), port: port.into() }),
                "{input}"
            );
        }
        let message = "[::1]:0".parse::<AddressSpec>().unwrap_err().to_string();
        assert!(message.contains("\"[::1]:0\"") && message.contains("\"0\""), "{message}");
        let message = "nope".parse::<AddressSpec>().unwrap_err().to_string();
        assert_eq!(message, "invalid address \"nope\": expected IP or IP:PORT ([IPv6]:PORT for IPv6)");
    }
}
