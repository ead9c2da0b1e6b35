//! The validated policy: the middle layer between the YAML a human wrote
//! (`acl`) and the compiled artifact (`table`). Every value in here has
//! already been checked; logic uses only these types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use std::net::IpAddr;

use ipnet::IpNet;

use crate::address::AddressSpec;
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
