//! Semantic diff of two validated policies: what changed in the rules and
//! lists, and which role/host decisions change, shown with concrete hosts.
//!
//! Example hosts are never guessed: each candidate is decided by
//! [`PolicyTable::decide`] under both policies and reported only when the
//! verdict or the reason differs. Candidates are, per role, every exact entry
//! and one synthetic subdomain per `*.suffix` entry of the rules that apply to
//! the role in either policy, the global entries (only those whose
//! global-list outcome changes when the role's rule is unchanged), and one
//! host that no entry matches. That set is complete: a name's decision
//! depends only on which exact entries equal it and which wildcard suffixes
//! end it, and every such class has a candidate, so for every host whose
//! decision changes some candidate changes in exactly the same way. Roles
//! whose rule and the global lists are unchanged are not decided at all, so
//! the cost is two decisions per candidate of each changed role: at worst,
//! when every role changes, about (roles × global entries + all entries).
//!
//! Pure: no I/O, no clock. Output is deterministic: roles by name, the
//! role-less case last, hosts whose verdict changes before reason-only ones,
//! then by host.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use egress_policy::decision::{Decision, PolicyTable, Reason, RuleRef, Verdict};
use egress_policy::host::{self, CanonicalHost};
use egress_policy::pattern::HostPattern;
use egress_policy::policy::{Action, InternalDestination, Policy, Rule, ports_text};

/// Version of the JSON shape produced by [`PolicyDiff::render_json`].
pub const FORMAT_VERSION: u32 = 1;
/// Example hosts listed per role by [`diff`]; the rest are counted.
pub const DEFAULT_MAX_EXAMPLES: usize = 20;
/// Patterns listed per list in the human and markdown renderings (JSON lists all).
const MAX_LISTED_PATTERNS: usize = 50;
/// Markdown table rows and rules listed: a pull-request comment stays readable
/// and within the forge's size limit (GitHub: 65,536 characters).
const MAX_MARKDOWN_ROWS: usize = 100;
const MAX_MARKDOWN_RULES: usize = 25;

/// Everything that differs between two policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// Role/host decisions that change, over every role (listed or omitted).
    pub changed_decisions: usize,
    /// Services in NEW only, by name.
    pub roles_added: Vec<String>,
    /// Services in OLD only, by name.
    pub roles_removed: Vec<String>,
    /// Services added, removed or changed, by name.
    pub services: Vec<RuleDiff>,
    /// The `default` rule, when it was added, removed or changed.
    pub default_rule: Option<RuleDiff>,
    pub global_allow_list: ListDiff,
    pub global_deny_list: ListDiff,
    /// v2 `network` rules (`deny_range 10.0.0.0/8`, `allow_address 10.0.0.1:5432`, ...).
    #[serde(skip_serializing_if = "ListDiff::is_empty")]
    pub network: ListDiff,
    /// Roles with decision changes, by name; the role-less case last.
    pub decisions: Vec<RoleDecisions>,
}

/// How a rule changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleChange {
    Added,
    Removed,
    Changed,
}

/// One rule's changes. An added rule has every `old` empty, a removed one every `new`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleDiff {
    /// The service's name; absent for the default rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub change: RuleChange,
    /// Present when the action differs.
    pub action: Option<ValueChange<Action>>,
    /// Present when the project differs.
    pub project: Option<ValueChange<String>>,
    /// `allowed_domains` entries, as sets (order and duplicates do not count).
    pub allowed_domains: ListDiff,
    /// v2: present when `allowed_ports` differs (`any` when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ports: Option<ValueChange<String>>,
    /// v2: `internal_destinations`, one line each: `host ports [cidrs] (reason: ...)`.
    #[serde(skip_serializing_if = "ListDiff::is_empty")]
    pub internal_destinations: ListDiff,
}

/// A value before and after; `None` where the rule does not exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValueChange<T> {
    pub old: Option<T>,
    pub new: Option<T>,
}

/// Entries added to and removed from a pattern list, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl ListDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The decision changes of one role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleDecisions {
    /// `None`: clients without a role, and roles without a rule of their own in either policy.
    pub role: Option<String>,
    /// Verified examples, verdict changes first, then by host.
    pub changes: Vec<DecisionChange>,
    /// Further changed hosts found but not listed.
    pub omitted: usize,
}

/// A host whose decision differs between the two policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionChange {
    pub host: String,
    /// Which hosts decide the same way as this one.
    pub stands_for: StandsFor,
    pub old: DecisionSummary,
    pub new: DecisionSummary,
}

impl DecisionChange {
    /// Whether allow/report/deny differs (otherwise only the reason does).
    pub fn verdict_changed(&self) -> bool {
        self.old.verdict != self.new.verdict
    }
}

/// What an example host stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StandsFor {
    /// The host is an entry of one of the lists.
    Entry,
    /// A made-up subdomain of a `*.suffix` entry: it stands for every name
    /// under that entry that no entry names more precisely.
    Subdomain { pattern: String },
    /// A made-up name that no entry matches: it stands for every such host.
    Unlisted,
}

impl fmt::Display for StandsFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StandsFor::Entry => Ok(()),
            StandsFor::Subdomain { pattern } => write!(f, "any {pattern}"),
            StandsFor::Unlisted => f.write_str("any unlisted host"),
        }
    }
}

/// What one policy decided for a host, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionSummary {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The deciding rule: a role, `default`, or `None` when no rule applied.
    pub rule: Option<String>,
    /// The entry that matched, if any.
    pub pattern: Option<String>,
}

impl DecisionSummary {
    fn new(d: &Decision<'_>) -> Self {
        DecisionSummary {
            verdict: d.verdict,
            reason: d.reason,
            rule: match d.rule {
                RuleRef::None => None,
                other => Some(other.to_string()),
            },
            pattern: d.matched.map(|(_, m)| m.to_string()),
        }
    }
}

impl Serialize for DecisionSummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("DecisionSummary", 5)?;
        s.serialize_field("decision", &self.verdict)?;
        s.serialize_field("reason", self.reason.as_str())?;
        s.serialize_field("reason_code", self.reason.code())?;
        s.serialize_field("rule", &self.rule)?;
        s.serialize_field("pattern", &self.pattern)?;
        s.end()
    }
}

impl PolicyDiff {
    /// Whether any role/host decision (verdict or reason) changes. Edits that
    /// decide nothing differently (reordering, duplicates, an entry shadowed
    /// by a wildcard, a project rename) do not count.
    pub fn has_decision_changes(&self) -> bool {
        self.changed_decisions > 0
    }

    /// Whether the two policies are the same up to order and duplicates.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.default_rule.is_none()
            && self.global_allow_list.is_empty()
            && self.global_deny_list.is_empty()
            && self.network.is_empty()
            && self.decisions.is_empty()
    }
}

/// Diffs OLD against NEW with [`DEFAULT_MAX_EXAMPLES`] examples per role.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    diff_with_limit(old, new, DEFAULT_MAX_EXAMPLES)
}

/// Diffs OLD against NEW, listing at most `max_examples` changed hosts per role.
pub fn diff_with_limit(old: &Policy, new: &Policy, max_examples: usize) -> PolicyDiff {
    let old_rules = RuleSets::new(old);
    let new_rules = RuleSets::new(new);
    let mut out = PolicyDiff::default();

    let names: BTreeSet<&str> = old_rules.services.keys().chain(new_rules.services.keys()).copied().collect();
    for &name in &names {
        let (o, n) = (old_rules.services.get(name), new_rules.services.get(name));
        if let Some(d) = rule_diff(Some(name), o, n) {
            match d.change {
                RuleChange::Added => out.roles_added.push(name.to_owned()),
                RuleChange::Removed => out.roles_removed.push(name.to_owned()),
                RuleChange::Changed => {}
            }
            out.services.push(d);
        }
    }
    out.default_rule = rule_diff(None, old_rules.default.as_ref(), new_rules.default.as_ref());
    out.global_allow_list = list_diff(&old_rules.global_allow, &new_rules.global_allow);
    out.global_deny_list = list_diff(&old_rules.global_deny, &new_rules.global_deny);
    out.network = list_diff(&network_lines(old), &network_lines(new));

    let globals_changed = !out.global_allow_list.is_empty() || !out.global_deny_list.is_empty();
    let roles: Vec<Option<&str>> = names.iter().map(|n| Some(*n)).chain([None]).collect();
    let needs_deciding: Vec<Option<&str>> = roles
        .into_iter()
        .filter(|role| {
            let (o, n) = (old_rules.applying(*role), new_rules.applying(*role));
            match (o, n) {
                (None, None) => false, // "no rule matched" whatever the lists say
                (Some(o), Some(n)) if o.same_decisions(n) => globals_changed,
                _ => true,
            }
        })
        .collect();
    if needs_deciding.is_empty() {
        return out;
    }

    let candidates = Candidates::new(old, new);
    let (old_table, new_table) = (PolicyTable::new(old), PolicyTable::new(new));
    let global_changes = if globals_changed { candidates.global_outcome_changes(old, new) } else { Vec::new() };
    for role in needs_deciding {
        let rules = [old_rules.applying(role), new_rules.applying(role)];
        let mut hosts: Vec<&CanonicalHost> = Vec::new();
        for rule in rules.iter().flatten() {
            hosts.extend(rule.rule.allowed_domains.iter().filter_map(|p| candidates.for_pattern(p)));
        }
        // Under an unchanged rule only a global entry whose outcome changed can
        // decide differently; under a changed one, any global entry may.
        let rule_unchanged = matches!(rules, [Some(o), Some(n)] if o.same_decisions(n));
        let globals = if rule_unchanged { &global_changes } else { &candidates.globals };
        hosts.extend(globals);
        hosts.extend(&candidates.unmatched);
        hosts.sort_unstable();
        hosts.dedup();

        // v2: when the role's ports or internal destinations differ, decide at
        // every port where either rule's port sets change membership (plus
        // 443), and add the internal destinations' hosts: each port class and
        // each exception then has a candidate. Otherwise the port-agnostic
        // decision is exact and no port is named.
        let ports = ports_to_try(&rules);
        if !ports.is_empty() {
            for rule in rules.iter().flatten() {
                hosts.extend(rule.rule.internal_destinations.iter().map(|d| &d.host));
            }
            hosts.sort_unstable();
            hosts.dedup();
        }
        let at_ports: Vec<Option<u16>> =
            if ports.is_empty() { vec![None] } else { ports.iter().copied().map(Some).collect() };

        // Decide everything, but own strings only for the examples kept.
        let mut changed: Vec<(bool, &CanonicalHost, Option<u16>, Decision<'_>, Decision<'_>)> = hosts
            .into_iter()
            .flat_map(|host| at_ports.iter().map(move |port| (host, *port)))
            .filter_map(|(host, port)| {
                let (o, n) = match port {
                    Some(port) => (old_table.decide_at(role, host, port), new_table.decide_at(role, host, port)),
                    None => (old_table.decide(role, host), new_table.decide(role, host)),
                };
                (o.verdict != n.verdict || o.reason != n.reason).then_some((o.verdict == n.verdict, host, port, o, n))
            })
            .collect();
        if changed.is_empty() {
            continue;
        }
        out.changed_decisions += changed.len();
        // Stable sort: verdict changes first, hosts already in order within each group.
        changed.sort_by_key(|(same_verdict, ..)| *same_verdict);
        let omitted = changed.len().saturating_sub(max_examples);
        let changes = changed
            .into_iter()
            .take(max_examples)
            .map(|(_, host, port, o, n)| DecisionChange {
                host: match port {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_string(),
                },
                stands_for: candidates.stands_for(host),
                old: DecisionSummary::new(&o),
                new: DecisionSummary::new(&n),
            })
            .collect();
        out.decisions.push(RoleDecisions { role: role.map(str::to_owned), changes, omitted });
    }
    out
}

/// Ports at which a role's decisions can differ between its two rules, when
/// their `allowed_ports` or internal destinations differ: the edges of every
/// range (start, end, and the ports just outside) and 443. Empty when both
/// rules agree on both (then the port-agnostic decision is exact).
fn ports_to_try(rules: &[Option<&RuleSet<'_>>; 2]) -> Vec<u16> {
    let [old, new] = rules;
    let same = |a: &Option<&RuleSet<'_>>, b: &Option<&RuleSet<'_>>| match (a, b) {
        (Some(a), Some(b)) => a.rule.allowed_ports == b.rule.allowed_ports && a.internal == b.internal,
        (None, None) => true,
        (Some(r), None) | (None, Some(r)) => r.rule.allowed_ports.is_empty() && r.internal.is_empty(),
    };
    if same(old, new) {
        return Vec::new();
    }
    let mut ports: BTreeSet<u16> = BTreeSet::from([443]);
    for rule in rules.iter().flatten() {
        let ranges =
            rule.rule.allowed_ports.iter().chain(rule.rule.internal_destinations.iter().flat_map(|d| &d.ports));
        for range in ranges {
            ports.extend([range.start, range.end]);
            ports.extend(range.start.checked_sub(1).filter(|p| *p > 0));
            ports.extend(range.end.checked_add(1));
        }
    }
    ports.into_iter().collect()
}

/// A rule with its entries as a sorted set of their spellings.
#[derive(Debug)]
struct RuleSet<'p> {
    rule: &'p Rule,
    is_default: bool,
    entries: BTreeSet<String>,
    internal: BTreeSet<String>,
}

impl RuleSet<'_> {
    /// Whether every host gets the same verdict and reason under both rules
    /// (given the same global lists). The project does not decide anything.
    fn same_decisions(&self, other: &RuleSet<'_>) -> bool {
        self.is_default == other.is_default
            && self.rule.action == other.rule.action
            && self.entries == other.entries
            && self.rule.allowed_ports == other.rule.allowed_ports
            && self.internal == other.internal
    }
}

/// A policy's rules and lists as sets, for comparing.
#[derive(Debug)]
struct RuleSets<'p> {
    services: BTreeMap<&'p str, RuleSet<'p>>,
    default: Option<RuleSet<'p>>,
    global_allow: BTreeSet<String>,
    global_deny: BTreeSet<String>,
}

impl<'p> RuleSets<'p> {
    fn new(policy: &'p Policy) -> Self {
        let set = |rule: &'p Rule, is_default| RuleSet {
            rule,
            is_default,
            entries: entries(&rule.allowed_domains),
            internal: rule.internal_destinations.iter().map(internal_line).collect(),
        };
        RuleSets {
            services: policy.services.iter().map(|r| (r.name.as_str(), set(r, false))).collect(),
            default: policy.default.as_ref().map(|r| set(r, true)),
            global_allow: entries(&policy.global_allow_list),
            global_deny: entries(&policy.global_deny_list),
        }
    }

    /// The rule that decides for `role`: its own, else the default.
    fn applying(&self, role: Option<&str>) -> Option<&RuleSet<'p>> {
        role.and_then(|r| self.services.get(r)).or(self.default.as_ref())
    }
}

/// One internal destination as a diff line, with its reason (the audit trail).
fn internal_line(d: &InternalDestination) -> String {
    let cidrs: Vec<String> = d.cidrs.iter().map(ToString::to_string).collect();
    format!("{} ports {} cidrs [{}] (reason: {})", d.host, ports_text(&d.ports), cidrs.join(", "), d.reason)
}

/// The `network` section as one line per rule.
fn network_lines(policy: &Policy) -> BTreeSet<String> {
    let n = &policy.network;
    fn lines<T: fmt::Display>(kind: &str, list: &[T]) -> Vec<String> {
        list.iter().map(|item| format!("{kind} {item}")).collect()
    }
    lines("allow_range", &n.allow_ranges)
        .into_iter()
        .chain(lines("deny_range", &n.deny_ranges))
        .chain(lines("allow_address", &n.allow_addresses))
        .chain(lines("deny_address", &n.deny_addresses))
        .collect()
}

fn entries(list: &[HostPattern]) -> BTreeSet<String> {
    list.iter().map(ToString::to_string).collect()
}

fn list_diff(old: &BTreeSet<String>, new: &BTreeSet<String>) -> ListDiff {
    ListDiff { added: new.difference(old).cloned().collect(), removed: old.difference(new).cloned().collect() }
}

fn rule_diff(role: Option<&str>, old: Option<&RuleSet<'_>>, new: Option<&RuleSet<'_>>) -> Option<RuleDiff> {
    let change = match (old, new) {
        (None, None) => return None,
        (None, Some(_)) => RuleChange::Added,
        (Some(_), None) => RuleChange::Removed,
        (Some(_), Some(_)) => RuleChange::Changed,
    };
    let action = (old.map(|r| r.rule.action) != new.map(|r| r.rule.action))
        .then(|| ValueChange { old: old.map(|r| r.rule.action), new: new.map(|r| r.rule.action) });
    let project = (old.map(|r| &r.rule.project) != new.map(|r| &r.rule.project))
        .then(|| ValueChange { old: old.map(|r| r.rule.project.clone()), new: new.map(|r| r.rule.project.clone()) });
    let empty = BTreeSet::new();
    let allowed_domains = list_diff(old.map_or(&empty, |r| &r.entries), new.map_or(&empty, |r| &r.entries));
    let ports = |r: Option<&RuleSet<'_>>| r.map(|r| ports_text(&r.rule.allowed_ports));
    let allowed_ports = (old.is_some() && new.is_some() && ports(old) != ports(new))
        .then(|| ValueChange { old: ports(old), new: ports(new) });
    let internal_destinations = list_diff(old.map_or(&empty, |r| &r.internal), new.map_or(&empty, |r| &r.internal));
    if change == RuleChange::Changed
        && action.is_none()
        && project.is_none()
        && allowed_domains.is_empty()
        && allowed_ports.is_none()
        && internal_destinations.is_empty()
    {
        return None;
    }
    Some(RuleDiff {
        role: role.map(str::to_owned),
        change,
        action,
        project,
        allowed_domains,
        allowed_ports,
        internal_destinations,
    })
}

/// Candidate hosts, chosen so that each stands for a whole class of hosts
/// that every list of both policies treats alike.
#[derive(Debug)]
struct Candidates {
    /// `*.suffix` → a subdomain of suffix that is no exact entry anywhere
    /// (`None` when no subdomain fits in a DNS name).
    subdomains: HashMap<Box<str>, Option<CanonicalHost>>,
    /// The chosen subdomains → their suffix.
    suffix_of: HashMap<CanonicalHost, Box<str>>,
    /// A name that no entry of either policy matches.
    unmatched: Option<CanonicalHost>,
    /// Both policies' global entries, as candidates.
    globals: Vec<CanonicalHost>,
    /// `left.*.right` → `left.<label>.right`, a name it matches.
    middles: HashMap<String, CanonicalHost>,
}

/// RFC 1035's limit on a name, without the root dot.
const MAX_NAME_LEN: usize = 253;

/// Labels tried, in order, for a subdomain of `suffix`: only those that
/// keep the name within [`MAX_NAME_LEN`].
fn subdomain_labels(suffix: &str) -> impl Iterator<Item = String> {
    let max = MAX_NAME_LEN.saturating_sub(suffix.len() + 1);
    let named = ["example", "www", "a"].into_iter().filter(move |l| l.len() <= max).map(str::to_owned);
    named.chain((0u32..).map(|n| format!("x{n}")).take_while(move |l| l.len() <= max))
}

impl Candidates {
    fn new(old: &Policy, new: &Policy) -> Self {
        let lists = || {
            [old, new].into_iter().flat_map(|p| {
                p.services
                    .iter()
                    .chain(p.default.iter())
                    .map(|r| &r.allowed_domains)
                    .chain([&p.global_allow_list, &p.global_deny_list])
            })
        };
        let mut exact: HashSet<&str> = HashSet::new();
        let mut wildcard: HashSet<&str> = HashSet::new();
        for pattern in lists().flatten() {
            match pattern {
                HostPattern::Exact(h) => exact.insert(h.as_str()),
                HostPattern::Wildcard(s) => wildcard.insert(s),
                HostPattern::Middle { .. } => false,
            };
        }
        // Each suffix needs at most |exact| + 1 tries to find a free label;
        // a suffix too long for any label tries only the short ones.
        let mut subdomains: HashMap<Box<str>, Option<CanonicalHost>> = HashMap::with_capacity(wildcard.len());
        for &suffix in &wildcard {
            let found = subdomain_labels(suffix)
                .take(exact.len() + 4)
                .map(|label| format!("{label}.{suffix}"))
                .filter(|name| !exact.contains(name.as_str()))
                .find_map(|name| host::canonical(&name).ok());
            subdomains.insert(suffix.into(), found);
        }
        let suffix_of = subdomains.iter().filter_map(|(s, h)| Some((h.clone()?, s.clone()))).collect();
        let unmatched = unmatched_name(&exact, &wildcard);
        let middles = lists()
            .flatten()
            .filter_map(|p| match p {
                HostPattern::Middle { left, right } => {
                    let host = host::canonical(&format!("{left}.example.{right}")).ok()?;
                    Some((p.to_string(), host))
                }
                _ => None,
            })
            .collect();
        let mut candidates = Candidates { subdomains, suffix_of, unmatched, globals: Vec::new(), middles };
        let mut globals: Vec<CanonicalHost> = [old, new]
            .iter()
            .flat_map(|p| p.global_allow_list.iter().chain(&p.global_deny_list))
            .filter_map(|p| candidates.for_pattern(p).cloned())
            .collect();
        globals.sort_unstable();
        globals.dedup();
        candidates.globals = globals;
        candidates
    }

    /// Made-up hosts are never entries, so each host is of one kind.
    fn stands_for(&self, host: &CanonicalHost) -> StandsFor {
        match self.suffix_of.get(host) {
            Some(suffix) => StandsFor::Subdomain { pattern: format!("*.{suffix}") },
            None if self.unmatched.as_ref() == Some(host) => StandsFor::Unlisted,
            None => StandsFor::Entry,
        }
    }

    fn for_pattern<'a>(&'a self, pattern: &'a HostPattern) -> Option<&'a CanonicalHost> {
        match pattern {
            HostPattern::Exact(h) => Some(h),
            HostPattern::Wildcard(suffix) => self.subdomains.get(suffix).and_then(Option::as_ref),
            HostPattern::Middle { .. } => self.middles.get(&pattern.to_string()),
        }
    }

    /// Global candidates whose global-list outcome (deny, allow or neither)
    /// differs. A global host whose outcome is unchanged can change only
    /// through its role's rule, and a rule candidate shows that change too.
    fn global_outcome_changes(&self, old: &Policy, new: &Policy) -> Vec<CanonicalHost> {
        // The global lists alone, behind a default rule that matches nothing.
        let globals_only = |p: &Policy| {
            PolicyTable::new(&Policy {
                services: Vec::new(),
                default: Some(Rule::v1("", "", Action::Open, Vec::new())),
                global_allow_list: p.global_allow_list.clone(),
                global_deny_list: p.global_deny_list.clone(),
                ..Policy::default()
            })
        };
        let (o, n) = (globals_only(old), globals_only(new));
        let mut hosts: Vec<CanonicalHost> =
            self.globals.iter().filter(|h| o.decide(None, h).reason != n.decide(None, h).reason).cloned().collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }
}

/// A name matched by no entry: a top-level domain no wildcard covers, and a
/// label that makes it no exact entry. Both searches end within the number
/// of entries plus one.
fn unmatched_name(exact: &HashSet<&str>, wildcard: &HashSet<&str>) -> Option<CanonicalHost> {
    let tld = ["invalid", "example", "test"]
        .into_iter()
        .map(str::to_owned)
        .chain((0u32..).map(|n| format!("tld{n}")))
        .take(wildcard.len() + 4)
        .find(|t| !wildcard.contains(t.as_str()))?;
    ["unlisted".to_owned()]
        .into_iter()
        .chain((0u32..).map(|n| format!("unlisted{n}")))
        .take(exact.len() + 2)
        .map(|label| format!("{label}.{tld}"))
        .find(|name| !exact.contains(name.as_str()))
        .and_then(|name| host::canonical(&name).ok())
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct JsonReport<'a> {
    format_version: u32,
    old: &'a str,
    new: &'a str,
    decision_changes: bool,
    #[serde(flatten)]
    diff: &'a PolicyDiff,
}

fn role_label(role: Option<&str>) -> String {
    match role {
        Some(r) => printable(r),
        None => "(no role)".to_owned(),
    }
}

/// Role names are free text: quote any with control, bidirectional or other
/// invisible characters so a terminal or a comment shows them, never
/// interprets them.
pub(crate) fn printable(s: &str) -> String {
    if s.is_empty() || s.chars().any(needs_escape) { format!("{s:?}") } else { s.to_owned() }
}

/// Characters Rust's `{:?}` escapes as unprintable (quotes and backslashes are fine).
fn needs_escape(c: char) -> bool {
    c.escape_debug().next() == Some('\\') && !matches!(c, '"' | '\'' | '\\')
}

fn arrow<T: fmt::Display>(v: &ValueChange<T>) -> String {
    let show = |x: &Option<T>| x.as_ref().map_or_else(|| "-".to_owned(), |x| printable(&x.to_string()));
    format!("{} → {}", show(&v.old), show(&v.new))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl PolicyDiff {
    /// The JSON document (`format_version` [`FORMAT_VERSION`]); see docs/policyc.md for its shape.
    pub fn render_json(&self, old_label: &str, new_label: &str) -> String {
        let report = JsonReport {
            format_version: FORMAT_VERSION,
            old: old_label,
            new: new_label,
            decision_changes: self.has_decision_changes(),
            diff: self,
        };
        serde_json::to_string_pretty(&report)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise output: {e}\"}}"))
    }

    /// Plain text, one fact per line.
    pub fn render_human(&self, old_label: &str, new_label: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "diff {} → {}", printable(old_label), printable(new_label));
        if self.is_empty() {
            o.push_str("no changes\n");
            return o;
        }
        let rules = self.services.iter().map(|d| (Some(d.role.as_deref().unwrap_or_default()), d));
        for (role, d) in rules.chain(self.default_rule.iter().map(|d| (None, d))) {
            let name = match role {
                Some(r) => format!("role {}", printable(r)),
                None => "default rule".to_owned(),
            };
            let mut facts = vec![d.change_word().to_owned()];
            if let Some(a) = &d.action {
                facts.push(format!("action {}", arrow(a)));
            }
            if let Some(p) = &d.project {
                facts.push(format!("project {}", arrow(p)));
            }
            if let Some(p) = &d.allowed_ports {
                facts.push(format!("allowed_ports {}", arrow(p)));
            }
            let _ = writeln!(o, "{name}: {}", facts.join(", "));
            human_list(&mut o, &d.allowed_domains);
            if !d.internal_destinations.is_empty() {
                o.push_str("  internal_destinations:\n");
                human_list(&mut o, &d.internal_destinations);
            }
        }
        for (name, list) in [
            ("global_allow_list", &self.global_allow_list),
            ("global_deny_list", &self.global_deny_list),
            ("network", &self.network),
        ] {
            if !list.is_empty() {
                let _ = writeln!(o, "{name}: changed");
                human_list(&mut o, list);
            }
        }
        if self.decisions.is_empty() {
            o.push_str("no decision changes\n");
            return o;
        }
        let _ = writeln!(o, "decision changes: {}", self.changed_decisions);
        for role in &self.decisions {
            let label = role_label(role.role.as_deref());
            for c in &role.changes {
                let _ = writeln!(
                    o,
                    "  {label}: {}{} {} → {} ({} → {})",
                    c.host,
                    stands_for_note(&c.stands_for),
                    c.old.verdict,
                    c.new.verdict,
                    c.old.reason,
                    c.new.reason
                );
            }
            if role.omitted > 0 {
                let _ = writeln!(o, "  {label}: … {} more", role.omitted);
            }
        }
        o
    }

    /// Markdown for a pull-request comment: changed decisions in a table,
    /// rule and list changes below, long entry lists collapsed.
    pub fn render_markdown(&self, old_label: &str, new_label: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "### Policy diff: {} → {}\n", md_code(old_label), md_code(new_label));
        if self.is_empty() {
            o.push_str("No changes.\n");
            return o;
        }
        if self.decisions.is_empty() {
            o.push_str("**No decision changes.**\n");
        } else {
            let roles = self.decisions.len();
            let _ = writeln!(
                o,
                "**{} decision change{}** in {roles} role{}.\n",
                self.changed_decisions,
                plural(self.changed_decisions),
                plural(roles)
            );
            o.push_str("| role | host | old | new | new reason |\n|---|---|---|---|---|\n");
            let (mut rows, mut shown) = (0, 0);
            for role in &self.decisions {
                let label = match &role.role {
                    Some(r) => md_code(r),
                    None => "_(no role)_".to_owned(),
                };
                for c in role.changes.iter().take(MAX_MARKDOWN_ROWS.saturating_sub(rows)) {
                    rows += 1;
                    shown += 1;
                    let _ = writeln!(
                        o,
                        "| {label} | {}{} | {} | {} | {} |",
                        md_code(&c.host),
                        stands_for_note(&c.stands_for),
                        c.old.verdict,
                        if c.verdict_changed() { format!("**{}**", c.new.verdict) } else { c.new.verdict.to_string() },
                        c.new.reason
                    );
                }
                if role.omitted > 0 && rows < MAX_MARKDOWN_ROWS {
                    rows += 1;
                    let _ = writeln!(o, "| {label} | … {} more | | | |", role.omitted);
                }
            }
            if shown < self.changed_decisions {
                let _ = writeln!(o, "\n_Showing {shown} of {} decision changes._", self.changed_decisions);
            }
        }
        let rules: Vec<(String, &RuleDiff)> = self
            .services
            .iter()
            .map(|d| (format!("role {}", md_code(d.role.as_deref().unwrap_or_default())), d))
            .chain(self.default_rule.iter().map(|d| ("default rule".to_owned(), d)))
            .collect();
        let globals = [
            ("global_allow_list", &self.global_allow_list),
            ("global_deny_list", &self.global_deny_list),
            ("network", &self.network),
        ];
        if rules.is_empty() && globals.iter().all(|(_, l)| l.is_empty()) {
            return o;
        }
        o.push_str("\n#### Rule and list changes\n\n");
        let rules_not_shown = rules.len().saturating_sub(MAX_MARKDOWN_RULES);
        let rules = rules.get(..MAX_MARKDOWN_RULES).unwrap_or(&rules);
        for (name, d) in rules {
            let mut facts = vec![d.change_word().to_owned()];
            if let Some(a) = &d.action {
                facts.push(format!("action {}", md_arrow(a)));
            }
            if let Some(p) = &d.project {
                facts.push(format!("project {}", md_arrow(p)));
            }
            if let Some(p) = &d.allowed_ports {
                facts.push(format!("allowed_ports {}", md_arrow(p)));
            }
            let _ = writeln!(o, "- {name}: {}", facts.join(", "));
        }
        if rules_not_shown > 0 {
            let _ = writeln!(o, "- … {rules_not_shown} more changed rule{}", plural(rules_not_shown));
        }
        for (name, list) in globals {
            if !list.is_empty() {
                let _ = writeln!(o, "- `{name}`: {} added, {} removed", list.added.len(), list.removed.len());
            }
        }
        for (_, d) in rules {
            let name = match &d.role {
                Some(role) => format!("role {}: allowed_domains", printable(role)),
                None => "default rule: allowed_domains".to_owned(),
            };
            md_details(&mut o, &name, &d.allowed_domains);
            let name = match &d.role {
                Some(role) => format!("role {}: internal_destinations", printable(role)),
                None => "default rule: internal_destinations".to_owned(),
            };
            md_details(&mut o, &name, &d.internal_destinations);
        }
        for (name, list) in globals {
            md_details(&mut o, name, list);
        }
        o
    }
}

impl RuleDiff {
    fn change_word(&self) -> &'static str {
        match self.change {
            RuleChange::Added => "added",
            RuleChange::Removed => "removed",
            RuleChange::Changed => "changed",
        }
    }
}

/// ` (any *.x.com)` after a made-up host; nothing after an entry.
fn stands_for_note(s: &StandsFor) -> String {
    match s {
        StandsFor::Entry => String::new(),
        other => format!(" ({other})"),
    }
}

fn human_list(o: &mut String, list: &ListDiff) {
    for (sign, entries) in [('+', &list.added), ('-', &list.removed)] {
        for e in entries.iter().take(MAX_LISTED_PATTERNS) {
            let _ = writeln!(o, "  {sign} {e}");
        }
        if entries.len() > MAX_LISTED_PATTERNS {
            let _ = writeln!(o, "  {sign} … {} more", entries.len() - MAX_LISTED_PATTERNS);
        }
    }
}

fn md_arrow<T: fmt::Display>(v: &ValueChange<T>) -> String {
    let show = |x: &Option<T>| x.as_ref().map_or_else(|| "–".to_owned(), |x| md_code(&x.to_string()));
    format!("{} → {}", show(&v.old), show(&v.new))
}

/// A code span that nothing in `s` can break out of, usable in a table cell.
fn md_code(s: &str) -> String {
    let text: String = s
        .chars()
        .flat_map(|c| match c {
            '|' => vec!['\\', '|'],
            c if needs_escape(c) => c.escape_debug().collect(),
            c => vec![c],
        })
        .collect();
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') || text.is_empty() { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn md_details(o: &mut String, name: &str, list: &ListDiff) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n<details><summary>{}: {} added, {} removed</summary>\n\n```diff",
        html_escape(name),
        list.added.len(),
        list.removed.len()
    );
    for (sign, entries) in [('+', &list.added), ('-', &list.removed)] {
        for e in entries.iter().take(MAX_LISTED_PATTERNS) {
            let _ = writeln!(o, "{sign} {e}");
        }
        if entries.len() > MAX_LISTED_PATTERNS {
            let _ = writeln!(o, "{sign} … {} more", entries.len() - MAX_LISTED_PATTERNS);
        }
    }
    o.push_str("```\n\n</details>\n");
}
