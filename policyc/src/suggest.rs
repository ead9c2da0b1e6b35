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

use std::collections::BTreeMap;

use egress_policy::decision::{PolicyTable, Reason};
use egress_policy::host::CanonicalHost;
use egress_policy::pattern::HostPattern;
use egress_policy::policy::{Action, Policy};
use serde::Serialize;

use crate::decision_log::{Aggregate, Observation, Timestamp};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SuggestedEntry {
    /// The canonical entry: a host or `*.parent`.
    pub pattern: String,
    /// Lines that needed it.
    pub hits: u64,
    #[serde(serialize_with = "serialize_time")]
    pub first_seen: Option<Timestamp>,
    #[serde(serialize_with = "serialize_time")]
    pub last_seen: Option<Timestamp>,
    /// The hosts it stands for (one for an exact entry).
    pub hosts: Vec<String>,
}

fn serialize_time<S: serde::Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339()),
        None => s.serialize_none(),
    }
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
}

impl Plan {
    pub fn entry_count(&self) -> usize {
        self.roles.iter().map(|r| r.entries.len()).sum()
    }
}

/// Computes the additions for every role in `aggregate`.
pub fn plan(policy: &Policy, table: &PolicyTable, aggregate: &Aggregate, options: Options) -> Plan {
    let mut plan = Plan::default();
    for role in aggregate.roles() {
        if role.chars().any(char::is_control) {
            plan.unusable_roles.push(role.to_owned());
            continue;
        }
        let mut needed: Vec<(&CanonicalHost, Observation)> = Vec::new();
        for (host, seen) in aggregate.hosts_of(role) {
            let count = seen.reported + if options.include_denied { seen.denied } else { 0 };
            if count == 0 {
                continue;
            }
            match table.decide(Some(role), host).reason {
                // The port-agnostic decision: an internal destination allows its host.
                Reason::AllowedDomain | Reason::GlobalAllowList | Reason::InternalDestination => continue,
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
            needed.push((host, Observation { hits: count, ..*seen }));
        }
        if needed.is_empty() {
            continue;
        }
        let entries = match options.collapse {
            Some(k) => collapse(role, needed, k, policy, &mut plan.collapse_refused),
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
        });
    }
    plan
}

fn exact_entry(host: &CanonicalHost, seen: &Observation) -> SuggestedEntry {
    SuggestedEntry {
        pattern: host.to_string(),
        hits: seen.hits,
        first_seen: seen.first_seen,
        last_seen: seen.last_seen,
        hosts: vec![host.to_string()],
    }
}

/// Groups hosts by their immediate parent; a group of `k` or more becomes
/// `*.parent` when the guards allow it.
fn collapse(
    role: &str,
    hosts: Vec<(&CanonicalHost, Observation)>,
    k: usize,
    policy: &Policy,
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
        let blocked = if !members.iter().all(|(h, _)| parent_within_registrable_domain(h.as_str())) {
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
