//! The `suggest` engine: from what each role was seen reaching in the
//! decision logs, the `allowed_domains` entries its rule lacks.
//!
//! Every host is re-decided against the policy being edited with the proxy's
//! own [`PolicyTable::decide`]; a log line's verdict only says which lines
//! count as a need (reported, or denied with `--include-denied`). The log may
//! come from an older policy (hosts since added must not be added twice), from
//! Smokescreen (whose ACL may differ), or from a file someone tampered with:
//! only the policy at hand says what is allowed.
//!
//! What this module must never do: suggest a host the global deny list
//! denies (an `allowed_domains` entry would override it), or collapse hosts
//! into a wildcard above a registrable domain (ICANN section of the Public
//! Suffix List) or over a global deny entry. It does no I/O; the text editing
//! is [`crate::policy_edit`]'s.
//!
//! Ports (policy v2): a role whose service already lists `allowed_ports` gets
//! the single ports it was seen needing, on hosts it is allowed or suggested,
//! re-decided with [`PolicyTable::decide_at`]. A role without the key may use
//! any port, so nothing is suggested for it; ranges are never invented.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use egress_policy::decision::{PolicyTable, Reason};
use egress_policy::host::CanonicalHost;
use egress_policy::pattern::HostPattern;
use egress_policy::policy::{Action, Policy, port_allowed};
use serde::Serialize;

use crate::decision_log::{Aggregate, Observation, PortObservation, Timestamp};

/// What to suggest.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Hosts seen fewer times are left out (and listed).
    pub min_count: u64,
    /// K or more hosts under one parent become `*.parent` (K ≥ 2).
    pub collapse: Option<usize>,
    /// Also count lines the proxy denied (enforce roles), not only reported ones.
    pub include_denied: bool,
}

/// One entry to add.
///
/// An exact entry stands for its pattern alone; the plan stores it with
/// `hosts` empty rather than a second copy of the name. On a large fleet's
/// logs without `--collapse` the plan is hundreds of thousands of exact
/// entries, and that copy (with its one-element vector) was 64 of the
/// 184 bytes of each. [`SuggestedEntry::hosts`] reads both forms alike, and
/// equality and JSON treat `hosts: []` and `hosts: [pattern]` of an exact
/// entry as the same, so a plan is compared and printed as before.
#[derive(Clone, Debug)]
pub struct SuggestedEntry {
    /// The canonical entry: a host or `*.parent`.
    pub pattern: String,
    /// Lines that needed it.
    pub hits: u64,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// The hosts it stands for; may be empty for an exact entry (see above):
    /// read it with [`SuggestedEntry::hosts`].
    pub hosts: Vec<String>,
}

impl SuggestedEntry {
    /// The hosts the entry stands for: `[pattern]` for an exact entry stored without them.
    pub fn hosts(&self) -> &[String] {
        if self.hosts.is_empty() && !self.pattern.starts_with("*.") {
            std::slice::from_ref(&self.pattern)
        } else {
            &self.hosts
        }
    }
}

impl PartialEq for SuggestedEntry {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
            && self.hits == other.hits
            && self.first_seen == other.first_seen
            && self.last_seen == other.last_seen
            && self.hosts() == other.hosts()
    }
}

impl Eq for SuggestedEntry {}

impl Serialize for SuggestedEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// The JSON shape, fields in their order, with the hosts spelled out.
        #[derive(Serialize)]
        struct Json<'a> {
            pattern: &'a str,
            hits: u64,
            #[serde(serialize_with = "serialize_time")]
            first_seen: Option<Timestamp>,
            #[serde(serialize_with = "serialize_time")]
            last_seen: Option<Timestamp>,
            hosts: &'a [String],
        }
        Json {
            pattern: &self.pattern,
            hits: self.hits,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            hosts: self.hosts(),
        }
        .serialize(s)
    }
}

fn serialize_time<S: serde::Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339()),
        None => s.serialize_none(),
    }
}

/// One port to add to a role's `allowed_ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SuggestedPort {
    pub port: u16,
    /// Lines that needed it, over every host below.
    pub hits: u64,
    #[serde(serialize_with = "serialize_time")]
    pub first_seen: Option<Timestamp>,
    #[serde(serialize_with = "serialize_time")]
    pub last_seen: Option<Timestamp>,
    /// The allowed or suggested hosts it was needed for, sorted.
    pub hosts: Vec<String>,
}

/// A port left out for being seen fewer than `--min-count` times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortLeftOut {
    pub role: String,
    pub port: u16,
    pub hits: u64,
}

/// A (role, host) pair seen on more distinct ports than the log reader keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortsNotKept {
    pub role: String,
    pub host: String,
    /// Lines whose port was counted but not kept (never suggested).
    pub lines: u64,
}

/// A role's additions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleSuggestion {
    pub role: String,
    /// The role has its own service in the policy; otherwise one is created.
    pub service_exists: bool,
    /// The action a created service gets (the default rule's, else enforce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_service_action: Option<Action>,
    /// The project a created service gets (the default rule's, else the role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_service_project: Option<String>,
    pub entries: Vec<SuggestedEntry>,
    /// Ports to add to the service's existing `allowed_ports` (policy v2).
    pub ports: Vec<SuggestedPort>,
}

/// A host left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub role: String,
    pub host: String,
    pub hits: u64,
}

/// A collapse that was not made, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CollapseRefused {
    pub role: String,
    /// The wildcard that was not written.
    pub pattern: String,
    pub hosts: usize,
    /// `public_suffix` or `global_deny_list`.
    pub reason: &'static str,
}

/// Everything `suggest` decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub roles: Vec<RoleSuggestion>,
    /// Below `--min-count`.
    pub below_min_count: Vec<LeftOut>,
    /// Denied by the global deny list: never suggested.
    pub globally_denied: Vec<LeftOut>,
    pub collapse_refused: Vec<CollapseRefused>,
    /// Role names that cannot be written as a service (control characters).
    pub unusable_roles: Vec<String>,
    /// Ports below `--min-count` (roles with `allowed_ports` only).
    pub ports_below_min_count: Vec<PortLeftOut>,
    /// Pairs seen on more distinct ports than are kept.
    pub ports_not_kept: Vec<PortsNotKept>,
}

impl Plan {
    pub fn entry_count(&self) -> usize {
        self.roles.iter().map(|r| r.entries.len()).sum()
    }

    pub fn port_count(&self) -> usize {
        self.roles.iter().map(|r| r.ports.len()).sum()
    }
}

/// Lines of one port that count as a need.
fn needed_lines(seen: &PortObservation, options: Options) -> u64 {
    seen.reported + if options.include_denied { seen.denied } else { 0 }
}

/// Computes the additions for every role in `aggregate`.
pub fn plan(policy: &Policy, table: &PolicyTable, aggregate: &Aggregate, options: Options) -> Plan {
    let mut plan = Plan::default();
    // The registrable-domain guard per host name, asked once per distinct
    // name rather than once per (role, host) pair.
    let mut registrable: HashMap<String, bool> = HashMap::new();
    for role in aggregate.roles() {
        if role.chars().any(char::is_control) {
            plan.unusable_roles.push(role.to_owned());
            continue;
        }
        // Only a service that already lists ports gets port suggestions.
        let listed_ports = policy
            .services
            .iter()
            .find(|rule| rule.name == role)
            .map(|rule| rule.allowed_ports.as_slice())
            .filter(|ports| !ports.is_empty());
        let hosts = aggregate.hosts_of(role);
        let mut needed: Vec<(&CanonicalHost, Observation)> = Vec::new();
        // Hosts the role may reach once the plan is applied, for port needs.
        let mut reachable: Vec<(&CanonicalHost, &Observation, bool)> = Vec::new();
        for (host, seen) in &hosts {
            let host: &CanonicalHost = host;
            if seen.ports_not_kept > 0 {
                plan.ports_not_kept.push(PortsNotKept {
                    role: role.to_owned(),
                    host: host.to_string(),
                    lines: seen.ports_not_kept,
                });
            }
            let count = seen.reported + if options.include_denied { seen.denied } else { 0 };
            if count == 0 {
                continue;
            }
            match table.decide(Some(role), host).reason {
                // The port-agnostic decision: an internal destination allows its host.
                Reason::AllowedDomain | Reason::GlobalAllowList | Reason::InternalDestination => {
                    reachable.push((host, seen, true));
                    continue;
                }
                Reason::GlobalDenyList => {
                    plan.globally_denied.push(LeftOut { role: role.to_owned(), host: host.to_string(), hits: count });
                    continue;
                }
                Reason::OpenPolicy
                | Reason::ReportPolicy
                | Reason::EnforcePolicy
                | Reason::DefaultRulePolicy
                | Reason::NoRuleMatched
                | Reason::PortNotAllowed => {}
            }
            if count < options.min_count {
                plan.below_min_count.push(LeftOut { role: role.to_owned(), host: host.to_string(), hits: count });
                continue;
            }
            reachable.push((host, seen, false));
            needed.push((
                host,
                Observation {
                    hits: count,
                    reported: seen.reported,
                    denied: seen.denied,
                    address_denied: seen.address_denied,
                    first_seen: seen.first_seen,
                    last_seen: seen.last_seen,
                    ports: Vec::new(),
                    ports_not_kept: seen.ports_not_kept,
                },
            ));
        }
        let ports = match listed_ports {
            Some(listed) => port_needs(role, listed, table, &reachable, options, &mut plan.ports_below_min_count),
            None => Vec::new(),
        };
        if needed.is_empty() && ports.is_empty() {
            continue;
        }
        let entries = match options.collapse {
            Some(k) => collapse(role, needed, k, policy, &mut registrable, &mut plan.collapse_refused),
            None => needed.into_iter().map(|(host, seen)| exact_entry(host, &seen)).collect(),
        };
        let service_exists = table.has_role(role);
        let default = policy.default.as_ref();
        plan.roles.push(RoleSuggestion {
            role: role.to_owned(),
            service_exists,
            new_service_action: (!service_exists).then(|| default.map_or(Action::Enforce, |d| d.action)),
            new_service_project: (!service_exists).then(|| {
                default.map(|d| d.project.clone()).filter(|p| !p.is_empty()).unwrap_or_else(|| role.to_owned())
            }),
            entries,
            ports,
        });
    }
    plan
}

/// The ports `role` needs that `listed` (its non-empty `allowed_ports`) does
/// not cover, over `reachable` hosts: (host, what was seen, allowed today).
/// A host allowed today is re-decided at each port (an internal destination
/// or a covered port is no need); a suggested host needs every uncovered port.
fn port_needs(
    role: &str,
    listed: &[egress_policy::policy::PortRange],
    table: &PolicyTable,
    reachable: &[(&CanonicalHost, &Observation, bool)],
    options: Options,
    below: &mut Vec<PortLeftOut>,
) -> Vec<SuggestedPort> {
    #[derive(Default)]
    struct Tally {
        hits: u64,
        first_seen: Option<Timestamp>,
        last_seen: Option<Timestamp>,
        hosts: BTreeSet<String>,
    }
    let mut by_port: BTreeMap<u16, Tally> = BTreeMap::new();
    for (host, seen, allowed_today) in reachable {
        for port_seen in &seen.ports {
            let lines = needed_lines(port_seen, options);
            if lines == 0 || port_allowed(listed, port_seen.port) {
                continue;
            }
            let reason = table.decide_at(Some(role), host, port_seen.port).reason;
            let needs = if *allowed_today {
                reason == Reason::PortNotAllowed
            } else {
                reason != Reason::InternalDestination && reason != Reason::GlobalDenyList
            };
            if !needs {
                continue;
            }
            let slot = by_port.entry(port_seen.port).or_default();
            slot.hits += lines;
            slot.first_seen = [slot.first_seen, port_seen.first_seen].into_iter().flatten().min();
            slot.last_seen = [slot.last_seen, port_seen.last_seen].into_iter().flatten().max();
            slot.hosts.insert(host.to_string());
        }
    }
    let mut ports = Vec::new();
    for (port, Tally { hits, first_seen, last_seen, hosts }) in by_port {
        if hits < options.min_count {
            below.push(PortLeftOut { role: role.to_owned(), port, hits });
            continue;
        }
        ports.push(SuggestedPort { port, hits, first_seen, last_seen, hosts: hosts.into_iter().collect() });
    }
    ports
}

fn exact_entry(host: &CanonicalHost, seen: &Observation) -> SuggestedEntry {
    // `hosts` empty: the entry stands for its pattern (see `SuggestedEntry`).
    SuggestedEntry {
        pattern: host.to_string(),
        hits: seen.hits,
        first_seen: seen.first_seen,
        last_seen: seen.last_seen,
        hosts: Vec::new(),
    }
}

/// Groups hosts by their immediate parent; a group of `k` or more becomes
/// `*.parent` when the guards allow it.
fn collapse(
    role: &str,
    hosts: Vec<(&CanonicalHost, Observation)>,
    k: usize,
    policy: &Policy,
    registrable: &mut HashMap<String, bool>,
    refused: &mut Vec<CollapseRefused>,
) -> Vec<SuggestedEntry> {
    let mut groups: BTreeMap<Option<&str>, Vec<(&CanonicalHost, Observation)>> = BTreeMap::new();
    for (host, seen) in hosts {
        let parent = if host.is_name() { host.as_str().split_once('.').map(|(_, p)| p) } else { None };
        groups.entry(parent).or_default().push((host, seen));
    }
    let mut entries = Vec::new();
    for (parent, members) in groups {
        let Some(parent) = parent.filter(|_| members.len() >= k) else {
            entries.extend(members.iter().map(|(h, s)| exact_entry(h, s)));
            continue;
        };
        let pattern = format!("*.{parent}");
        let mut within = |name: &str| match registrable.get(name) {
            Some(known) => *known,
            None => *registrable.entry(name.to_owned()).or_insert_with(|| parent_within_registrable_domain(name)),
        };
        let blocked = if !members.iter().all(|(h, _)| within(h.as_str())) {
            Some("public_suffix")
        } else if overlaps_global_deny(parent, &policy.global_deny_list) {
            Some("global_deny_list")
        } else {
            None
        };
        if let Some(reason) = blocked {
            refused.push(CollapseRefused { role: role.to_owned(), pattern, hosts: members.len(), reason });
            entries.extend(members.iter().map(|(h, s)| exact_entry(h, s)));
            continue;
        }
        let hits = members.iter().map(|(_, s)| s.hits).sum();
        let first_seen = members.iter().filter_map(|(_, s)| s.first_seen).min();
        let last_seen = members.iter().filter_map(|(_, s)| s.last_seen).max();
        let hosts = members.iter().map(|(h, _)| h.to_string()).collect();
        entries.push(SuggestedEntry { pattern, hits, first_seen, last_seen, hosts });
    }
    entries.sort_by(|a, b| a.pattern.trim_start_matches("*.").cmp(b.pattern.trim_start_matches("*.")));
    entries
}

/// Whether `*.parent-of-host` stays within the registrable domain of
/// `host`: the parent keeps at least one label more than the host's public
/// suffix in the ICANN section of the Public Suffix List. Asked per host, so
/// `kawasaki.jp` (registrable itself, but every child a public suffix under
/// `*.kawasaki.jp`) is refused too. Private-section suffixes such as
/// `github.io` count as registrable domains here: one organisation runs
/// them. A name under an unknown top-level domain follows the list's
/// implicit `*` rule.
pub fn parent_within_registrable_domain(host: &str) -> bool {
    let parent_labels = host.split('.').count().saturating_sub(1);
    icann_suffix_labels(host) < parent_labels
}

/// Number of labels of the longest ICANN public suffix of `name`. The `psl`
/// crate answers with the longest rule of either section; asking it about
/// each right-hand part of the name and keeping ICANN answers finds the ICANN
/// suffix under a private rule.
fn icann_suffix_labels(name: &str) -> usize {
    use psl::Psl as _;
    let reversed: Vec<&[u8]> = name.as_bytes().rsplit(|b| *b == b'.').collect();
    let mut best = 1; // the implicit `*` rule: the last label is a suffix
    for take in 1..=reversed.len() {
        let info = psl::List.find(reversed.iter().take(take).copied());
        if info.typ == Some(psl::Type::Icann) {
            let suffix = name.get(name.len().saturating_sub(info.len)..).unwrap_or_default();
            best = best.max(suffix.split('.').count());
        }
    }
    best
}

/// Whether `*.parent` would match a name some global deny entry denies
/// (an `allowed_domains` match is decided before the deny list, so it would
/// override that entry) or the parent is itself denied.
fn overlaps_global_deny(parent: &str, deny: &[HostPattern]) -> bool {
    let under = |name: &str| name == parent || name.strip_suffix(parent).is_some_and(|rest| rest.ends_with('.'));
    deny.iter().any(|pattern| match pattern {
        HostPattern::Exact(host) => under(host.as_str()),
        HostPattern::Wildcard(suffix) => {
            under(suffix) || parent.strip_suffix(&**suffix).is_some_and(|rest| rest.ends_with('.'))
        }
        // `left.*.right` denies names under `right`: refuse any parent related to `right`.
        HostPattern::Middle { right, .. } => {
            under(right) || parent.strip_suffix(&**right).is_some_and(|rest| rest.ends_with('.'))
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use egress_policy::pattern;

    #[test]
    fn registrable_domain_guard_uses_the_icann_section() {
        for ok in [
            "a.example.com",
            "a.api.example.com",
            "a.example.co.uk",
            "a.github.io",
            "a.foo.github.io",
            "a.corp.test",
            "a.city.kawasaki.jp",
        ] {
            assert!(parent_within_registrable_domain(ok), "{ok}");
        }
        for above in ["example.com", "a.co.uk", "co.uk", "a.test", "x.kawasaki.jp", "a.b.kawasaki.jp", "com"] {
            assert!(!parent_within_registrable_domain(above), "{above}");
        }
    }

    #[test]
    fn deny_overlap_covers_equal_below_and_above() {
        let deny: Vec<HostPattern> = ["evil.example.com", "*.bad.example.org", "*.corp.net"]
            .iter()
            .map(|p| pattern::parse(p).unwrap().pattern)
            .collect();
        assert!(overlaps_global_deny("example.com", &deny));
        assert!(overlaps_global_deny("evil.example.com", &deny));
        assert!(overlaps_global_deny("bad.example.org", &deny));
        assert!(overlaps_global_deny("x.bad.example.org", &deny));
        assert!(overlaps_global_deny("a.corp.net", &deny));
        assert!(!overlaps_global_deny("good.example.com", &deny));
        assert!(overlaps_global_deny("example.org", &deny), "*.example.org would override *.bad.example.org");
        assert!(!overlaps_global_deny("nexample.com", &deny));
    }
}
