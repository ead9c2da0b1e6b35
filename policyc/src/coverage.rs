//! The `coverage` engine: which `allowed_domains` entries the logs show in
//! use, which are never used, which roles never appear, and which hosts fell
//! through to the default rule.
//!
//! A hit is attributed with the proxy's own decision ([`PolicyTable::decide`]
//! and the pattern it reports as matched), re-decided against the policy at
//! hand, so an entry is credited exactly when the proxy would use it for that
//! request today. No I/O, no printing: rendering is the command's.

use std::collections::HashMap;
use std::fmt::Write as _;

use egress_policy::decision::{ListKind, PolicyTable, Reason, RuleRef};
use egress_policy::policy::{Policy, Rule};
use serde::Serialize;

use crate::decision_log::{Aggregate, LineCounts};

/// Hosts shown under a wildcard entry.
pub const TOP_HOSTS: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostHits {
    pub host: String,
    pub hits: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryCoverage {
    pub pattern: String,
    pub hits: u64,
    /// For a wildcard: how many distinct hosts it matched, and the busiest few.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_hosts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_hosts: Option<Vec<HostHits>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleCoverage {
    pub role: String,
    /// Decision lines of this role.
    pub lines: u64,
    /// Entries that matched at least once, in policy order.
    pub entries: Vec<EntryCoverage>,
    /// Entries that never matched, in policy order.
    pub unused: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleHost {
    pub role: String,
    pub host: String,
    pub hits: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub roles: Vec<RoleCoverage>,
    /// The default rule's own `allowed_domains`, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_rule: Option<RoleCoverage>,
    /// Services no log line named.
    pub roles_never_seen: Vec<String>,
    /// Requests of roles without a service that the default rule decided.
    pub default_rule_hosts: Vec<RoleHost>,
    /// Requests of roles without a service when there is no default rule.
    pub no_rule_hosts: Vec<RoleHost>,
    pub skipped_lines: u64,
    pub malformed_lines: u64,
    pub lines: LineCounts,
}

#[derive(Default)]
struct Tally {
    hits: u64,
    hosts: Vec<(String, u64)>,
}

/// Attributes every (role, host) of the logs to the entry that decides it.
pub fn coverage(policy: &Policy, table: &PolicyTable, aggregate: &Aggregate) -> Report {
    // (rule index, pattern) → hits; rule index `services.len()` is the default.
    let mut tallies: HashMap<(usize, String), Tally> = HashMap::new();
    let mut lines_of: HashMap<&str, u64> = HashMap::new();
    let mut default_rule_hosts = Vec::new();
    let mut no_rule_hosts = Vec::new();
    let rule_index: HashMap<&str, usize> =
        policy.services.iter().enumerate().map(|(i, r)| (r.name.as_str(), i)).collect();
    for role in aggregate.roles() {
        for (host, seen) in aggregate.hosts_of(role) {
            *lines_of.entry(role).or_default() += seen.hits;
            let decision = table.decide(Some(role), host);
            let rule = match decision.rule {
                RuleRef::Service(name) => rule_index.get(name).copied(),
                RuleRef::Default => Some(policy.services.len()),
                RuleRef::None => None,
            };
            match decision.rule {
                RuleRef::Default => {
                    default_rule_hosts.push(RoleHost { role: role.to_owned(), host: host.to_string(), hits: seen.hits })
                }
                RuleRef::None => {
                    no_rule_hosts.push(RoleHost { role: role.to_owned(), host: host.to_string(), hits: seen.hits })
                }
                RuleRef::Service(_) => {}
            }
            if let (Reason::AllowedDomain, Some((ListKind::AllowedDomains, matched)), Some(rule)) =
                (decision.reason, decision.matched, rule)
            {
                let tally = tallies.entry((rule, matched.to_string())).or_default();
                tally.hits += seen.hits;
                tally.hosts.push((host.to_string(), seen.hits));
            }
        }
    }
    let mut rule_coverage = |index: usize, rule: &Rule, role: String| {
        let mut entries = Vec::new();
        let mut unused = Vec::new();
        for pattern in &rule.allowed_domains {
            let text = pattern.to_string();
            match tallies.remove(&(index, text.clone())) {
                Some(mut tally) => {
                    let wildcard = text.starts_with("*.");
                    tally.hosts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    entries.push(EntryCoverage {
                        pattern: text,
                        hits: tally.hits,
                        distinct_hosts: wildcard.then_some(tally.hosts.len()),
                        top_hosts: wildcard.then(|| {
                            tally
                                .hosts
                                .iter()
                                .take(TOP_HOSTS)
                                .map(|(h, n)| HostHits { host: h.clone(), hits: *n })
                                .collect()
                        }),
                    });
                }
                None => unused.push(text),
            }
        }
        let lines = lines_of.get(role.as_str()).copied().unwrap_or(0);
        RoleCoverage { role, lines, entries, unused }
    };
    let roles: Vec<RoleCoverage> =
        policy.services.iter().enumerate().map(|(i, rule)| rule_coverage(i, rule, rule.name.clone())).collect();
    let default_rule = policy
        .default
        .as_ref()
        .filter(|d| !d.allowed_domains.is_empty())
        .map(|d| rule_coverage(policy.services.len(), d, String::new()));
    let roles_never_seen = roles.iter().filter(|r| r.lines == 0).map(|r| r.role.clone()).collect();
    Report {
        format_version: 1,
        roles,
        default_rule,
        roles_never_seen,
        default_rule_hosts,
        no_rule_hosts,
        skipped_lines: aggregate.lines.skipped,
        malformed_lines: aggregate.lines.malformed,
        lines: aggregate.lines.clone(),
    }
}

fn hits(n: u64) -> String {
    if n == 1 { "1 hit".to_owned() } else { format!("{n} hits") }
}

impl Report {
    /// Plain text for people.
    pub fn render_human(&self) -> String {
        let mut o = String::new();
        let rules = self.roles.iter().map(|r| (format!("role {}", crate::diff::printable(&r.role)), r));
        for (title, role) in rules.chain(self.default_rule.iter().map(|r| ("default rule".to_owned(), r))) {
            let _ = writeln!(o, "{title}: {} line{}", role.lines, if role.lines == 1 { "" } else { "s" });
            for entry in &role.entries {
                let _ = write!(o, "  {}: {}", entry.pattern, hits(entry.hits));
                if let (Some(distinct), Some(top)) = (entry.distinct_hosts, &entry.top_hosts) {
                    let shown: Vec<String> = top.iter().map(|h| format!("{} ({})", h.host, h.hits)).collect();
                    let _ = write!(
                        o,
                        " over {distinct} host{}: {}",
                        if distinct == 1 { "" } else { "s" },
                        shown.join(", ")
                    );
                    if distinct > top.len() {
                        let _ = write!(o, ", …");
                    }
                }
                o.push('\n');
            }
            for pattern in &role.unused {
                let _ = writeln!(o, "  {pattern}: unused");
            }
        }
        if !self.roles_never_seen.is_empty() {
            let names: Vec<String> = self.roles_never_seen.iter().map(|r| crate::diff::printable(r)).collect();
            let _ = writeln!(o, "roles never seen: {}", names.join(", "));
        }
        for (title, list) in [("default rule", &self.default_rule_hosts), ("no rule", &self.no_rule_hosts)] {
            for h in list {
                let _ = writeln!(o, "{title}: role {} → {}: {}", crate::diff::printable(&h.role), h.host, hits(h.hits));
            }
        }
        o
    }
}
