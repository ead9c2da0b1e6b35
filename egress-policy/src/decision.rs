//! The decision function: which rule applies to a role, and what it says
//! about a host. Pure: no I/O, no DNS, no clock, no allocation per call.
//!
//! Precedence is Smokescreen's: the role's rule (else the default rule, else
//! deny "no rule matched"); then the rule's `allowed_domains` (allow); then
//! the global deny list; then the global allow list; then the rule's action.
//! Reason strings are Smokescreen's, so existing dashboards keep working.
//!
//! Policy v2, when the port is known ([`PolicyTable::decide_at`]): first the
//! rule's internal destinations (exact host and port: allowed, and the
//! decision carries the exception for the address stage); then a host
//! matched by `allowed_domains` or the global allow list on a port outside
//! the rule's `allowed_ports` is decided like an unlisted host under the
//! rule's action, with reason `port_not_allowed`. The global deny list still
//! denies first. A rule without ports and exceptions (every v1 rule) skips
//! both checks.
//! `policyc explain` and `proxyd` both call [`PolicyTable::decide`], so what
//! CI explains is exactly what the proxy does.

use std::fmt;

use serde::Serialize;

use crate::address::PolicyNetwork;
use crate::host::CanonicalHost;
use crate::index::{HostKey, Index, IndexBuilder, ListId};
use crate::pattern::PatternMatch;
use crate::policy::{Action, InternalDestination, Policy, PortRange, port_allowed};

/// The outcome of the name stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allowed (Smokescreen's `allow`).
    Allow,
    /// Allowed, but `enforce` would have denied it (`enforce_would_deny`).
    #[serde(rename = "report")]
    AllowAndReport,
    /// Denied: `proxyd` refuses the CONNECT with the [`Reason`].
    Deny,
}

impl Verdict {
    /// Every verdict, in declaration order: `ALL[v.index()] == v`.
    pub const ALL: [Verdict; 3] = [Verdict::Allow, Verdict::AllowAndReport, Verdict::Deny];

    /// Position in [`Verdict::ALL`], for dense per-verdict tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// `allow`, `report` or `deny`: the name in JSON, logs and policy tests.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::AllowAndReport => "report",
            Verdict::Deny => "deny",
        }
    }

    /// Whether the connection may proceed (allow or report).
    pub fn is_allowed(self) -> bool {
        !matches!(self, Verdict::Deny)
    }

    /// Smokescreen's `enforce_would_deny` log field.
    pub fn enforce_would_deny(self) -> bool {
        !matches!(self, Verdict::Allow)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The host matched the rule's `allowed_domains`: allowed.
    AllowedDomain,
    /// The host matched `global_deny_list`: denied, whatever the rule's action.
    GlobalDenyList,
    /// The host matched `global_allow_list`: allowed.
    GlobalAllowList,
    /// No list matched and the role's rule is `open`: allowed.
    OpenPolicy,
    /// No list matched and the role's rule is `report`: allowed and reported.
    ReportPolicy,
    /// No list matched and the role's rule is `enforce`: denied.
    EnforcePolicy,
    /// No list matched and the `default` rule applied (the role has no rule of
    /// its own): its action decides.
    DefaultRulePolicy,
    /// The role has no rule and there is no `default` rule: denied.
    NoRuleMatched,
    /// v2: the host is listed but the port is outside the rule's `allowed_ports`.
    PortNotAllowed,
    /// v2: the host and port are one of the rule's `internal_destinations`.
    InternalDestination,
}

impl Reason {
    /// Every reason, in declaration order: `ALL[r.index()] == r`.
    pub const ALL: [Reason; 10] = [
        Reason::AllowedDomain,
        Reason::GlobalDenyList,
        Reason::GlobalAllowList,
        Reason::OpenPolicy,
        Reason::ReportPolicy,
        Reason::EnforcePolicy,
        Reason::DefaultRulePolicy,
        Reason::NoRuleMatched,
        Reason::PortNotAllowed,
        Reason::InternalDestination,
    ];

    /// Position in [`Reason::ALL`], for dense per-reason tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Smokescreen's exact `decision_reason` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AllowedDomain => "host matched allowed domain in rule",
            Reason::GlobalDenyList => "host matched rule in global deny list",
            Reason::GlobalAllowList => "host matched rule in global allow list",
            Reason::OpenPolicy => "rule has open enforcement policy",
            Reason::ReportPolicy => "rule has allow and report policy",
            Reason::EnforcePolicy => "rule has enforce policy",
            Reason::DefaultRulePolicy => "default rule policy used",
            Reason::NoRuleMatched => "no rule matched",
            Reason::PortNotAllowed => "port not in rule's allowed ports",
            Reason::InternalDestination => "host matched internal destination in rule",
        }
    }

    /// A short stable identifier, for metric labels and JSON.
    pub fn code(self) -> &'static str {
        match self {
            Reason::AllowedDomain => "allowed_domain",
            Reason::GlobalDenyList => "global_deny_list",
            Reason::GlobalAllowList => "global_allow_list",
            Reason::OpenPolicy => "open_policy",
            Reason::ReportPolicy => "report_policy",
            Reason::EnforcePolicy => "enforce_policy",
            Reason::DefaultRulePolicy => "default_rule_policy",
            Reason::NoRuleMatched => "no_rule_matched",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::InternalDestination => "internal_destination",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The list a matching pattern came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// The deciding rule's `allowed_domains`.
    AllowedDomains,
    /// The policy's `global_deny_list`.
    GlobalDenyList,
    /// The policy's `global_allow_list`.
    GlobalAllowList,
}

impl ListKind {
    /// The ACL key of the list (`allowed_domains`, ...), as JSON output spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::AllowedDomains => "allowed_domains",
            ListKind::GlobalDenyList => "global_deny_list",
            ListKind::GlobalAllowList => "global_allow_list",
        }
    }
}

/// Which rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleRef<'t> {
    /// The service rule named after the role.
    Service(&'t str),
    /// The `default` rule.
    Default,
    /// No rule applied (unknown or missing role, no default rule).
    None,
}

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Service(name) => f.write_str(name),
            RuleRef::Default => f.write_str("default"),
            RuleRef::None => f.write_str("none"),
        }
    }
}

/// What the name stage decided, and everything needed to explain it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'t> {
    /// Allow, report or deny.
    pub verdict: Verdict,
    /// Why, in Smokescreen's terms.
    pub reason: Reason,
    /// The deciding rule's `project` (empty when no rule applied).
    pub project: &'t str,
    /// The rule that decided.
    pub rule: RuleRef<'t>,
    /// The pattern that matched, and the list it came from.
    pub matched: Option<(ListKind, PatternMatch<'t>)>,
    /// v2: the internal destination that allowed the name; the address
    /// stage lets addresses inside its networks pass (and only those).
    pub internal_destination: Option<&'t InternalDestination>,
}

impl Decision<'_> {
    /// No rule applies: unknown or missing role and no default rule.
    pub const NO_RULE: Decision<'static> = Decision {
        verdict: Verdict::Deny,
        reason: Reason::NoRuleMatched,
        project: "",
        rule: RuleRef::None,
        matched: None,
        internal_destination: None,
    };

    /// Whether the default rule was used (Smokescreen's `Default` flag).
    pub fn default_rule(&self) -> bool {
        matches!(self.rule, RuleRef::Default)
    }
}

/// A rule in lookup form. Rule `i`'s `allowed_domains` are list `i` of the
/// services index.
#[derive(Clone, Debug)]
struct IndexedRule {
    name: Box<str>,
    project: Box<str>,
    action: Action,
}

/// The v2 parts of rule `i` (`PolicyTable::extras[i]`): slices of the
/// table's shared port and exception arrays, so a decision touches one small
/// contiguous record instead of scattered allocations, and a filter of the
/// exception hosts' hashes so most hosts skip the exceptions without reading
/// them. v1 tables have no extras at all.
#[derive(Clone, Copy, Debug, Default)]
struct RuleExtras {
    ports_start: u32,
    /// 0: every port.
    ports_len: u32,
    internal_start: u32,
    internal_len: u32,
    /// One bit per exception host (by its hash).
    internal_filter: u64,
}

fn filter_bit(host_hash: u64) -> u64 {
    1u64 << (host_hash >> 58)
}

/// A policy organised for deciding, in three flat [`Index`]es: role names,
/// every rule's `allowed_domains`, and the global lists. The role index, the
/// per-list filters and the global lists are small enough to stay in cache,
/// so a large policy mostly costs a probe of the pattern index on a hit. A decision costs a few probes
/// per label of the host, whatever the number of roles or patterns.
#[derive(Clone, Debug)]
pub struct PolicyTable {
    /// Service rules in policy order, then the default rule if any.
    rules: Vec<IndexedRule>,
    default: Option<usize>,
    /// Role name → rule index. Small and hot: kept apart from the patterns.
    roles: Index,
    services: Index,
    globals: Index,
    global_deny: ListId,
    global_allow: ListId,
    /// The policy's `network` rules (empty for v1).
    network: PolicyNetwork,
    /// v2 only (empty for v1, and for a v2 policy without ports and
    /// exceptions): one record per rule, and the arrays they slice.
    extras: Vec<RuleExtras>,
    port_ranges: Vec<PortRange>,
    internal: Vec<InternalDestination>,
}

impl PolicyTable {
    /// Builds the lookup indexes for a validated policy (once per load; deciding
    /// afterwards never allocates).
    pub fn new(policy: &Policy) -> Self {
        let mut services = IndexBuilder::default();
        let mut rules = Vec::with_capacity(policy.services.len() + 1);
        let mut roles = IndexBuilder::default();
        let mut extras = Vec::new();
        let mut port_ranges = Vec::new();
        let mut internal: Vec<InternalDestination> = Vec::new();
        let has_extras = policy
            .services
            .iter()
            .chain(policy.default.iter())
            .any(|r| !r.allowed_ports.is_empty() || !r.internal_destinations.is_empty());
        for rule in policy.services.iter().chain(policy.default.iter()) {
            if has_extras {
                let mut x = RuleExtras {
                    ports_start: port_ranges.len() as u32,
                    ports_len: rule.allowed_ports.len() as u32,
                    internal_start: internal.len() as u32,
                    internal_len: rule.internal_destinations.len() as u32,
                    internal_filter: 0,
                };
                port_ranges.extend_from_slice(&rule.allowed_ports);
                for d in &rule.internal_destinations {
                    x.internal_filter |= filter_bit(HostKey::new(&d.host).whole_hash());
                    internal.push(d.clone());
                }
                extras.push(x);
            }
            let list = services.add_list(&rule.allowed_domains);
            debug_assert_eq!(list, ListId(rules.len() as u32), "rule i owns list i");
            if rules.len() < policy.services.len() {
                roles.add_name(&rule.name, list.0);
            }
            rules.push(IndexedRule {
                name: rule.name.as_str().into(),
                project: rule.project.as_str().into(),
                action: rule.action,
            });
        }
        let default = policy.default.as_ref().map(|_| policy.services.len());
        let mut globals = IndexBuilder::default();
        let global_deny = globals.add_list(&policy.global_deny_list);
        let global_allow = globals.add_list(&policy.global_allow_list);
        PolicyTable {
            rules,
            default,
            roles: roles.build(),
            services: services.build(),
            globals: globals.build(),
            global_deny,
            global_allow,
            network: PolicyNetwork::new(&policy.network),
            extras,
            port_ranges,
            internal,
        }
    }

    /// The policy's `network` rules, prepared for the address stage.
    pub fn network(&self) -> &PolicyNetwork {
        &self.network
    }

    /// Whether `role` has a rule of its own (not the default).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.name(role).is_some()
    }

    /// Role names with their own rules, in policy order.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        let services = self.default.unwrap_or(self.rules.len());
        self.rules.iter().take(services).map(|r| &*r.name)
    }

    /// The name stage. `role` is `None` for a client without a role, which
    /// gets the default rule when there is one.
    ///
    /// This is the port-agnostic decision (v1's): `allowed_ports` and
    /// `internal_destinations` are not consulted. The proxy always knows the
    /// port and calls [`PolicyTable::decide_at`].
    ///
    /// ```rust
    /// use egress_policy::{acl, host, policy::ActionSet};
    /// use egress_policy::decision::{PolicyTable, Reason, RuleRef, Verdict};
    /// let checked = acl::check_source("acl.yaml", "\
    /// version: v1
    /// services:
    ///   - name: billing
    ///     project: payments
    ///     action: enforce
    ///     allowed_domains:
    ///       - api.example.com
    /// default:
    ///   project: other
    ///   action: report
    /// global_deny_list:
    ///   - '*.example.org'
    /// ", ActionSet::default());
    /// let table = PolicyTable::new(checked.policy.as_ref().expect("valid policy"));
    /// let allowed = table.decide(Some("billing"), &host::canonical("API.example.com")?);
    /// assert_eq!((allowed.verdict, allowed.reason), (Verdict::Allow, Reason::AllowedDomain));
    /// assert_eq!(allowed.rule, RuleRef::Service("billing"));
    /// assert_eq!(allowed.project, "payments");
    /// let denied = table.decide(Some("billing"), &host::canonical("www.example.net")?);
    /// assert_eq!(denied.verdict, Verdict::Deny);
    /// assert_eq!(denied.reason.as_str(), "rule has enforce policy");
    /// // An unknown role falls back to the default rule (report), but the global
    /// // deny list still wins.
    /// let reported = table.decide(Some("unknown"), &host::canonical("www.example.net")?);
    /// assert_eq!((reported.verdict, reported.reason), (Verdict::AllowAndReport, Reason::DefaultRulePolicy));
    /// assert!(reported.default_rule());
    /// let blocked = table.decide(None, &host::canonical("a.example.org")?);
    /// assert_eq!((blocked.verdict, blocked.reason), (Verdict::Deny, Reason::GlobalDenyList));
    /// assert_eq!(blocked.matched.map(|(_, m)| m.to_string()).as_deref(), Some("*.example.org"));
    /// # Ok::<(), egress_policy::host::HostError>(())
    /// ```
    pub fn decide(&self, role: Option<&str>, host: &CanonicalHost) -> Decision<'_> {
        self.decide_inner(role, host, None)
    }

    /// The name stage for a CONNECT to `host:port`: as [`PolicyTable::decide`],
    /// plus the rule's internal destinations and `allowed_ports`. For a rule
    /// without either (every v1 rule) the result is `decide`'s.
    pub fn decide_at(&self, role: Option<&str>, host: &CanonicalHost, port: u16) -> Decision<'_> {
        self.decide_inner(role, host, Some(port))
    }

    fn decide_inner(&self, role: Option<&str>, host: &CanonicalHost, port: Option<u16>) -> Decision<'_> {
        let service = role.and_then(|r| self.roles.name(r)).map(|i| i as usize);
        let (index, rule_ref) = match (service, self.default) {
            (Some(i), _) => (i, None),
            (None, Some(i)) => (i, Some(RuleRef::Default)),
            (None, None) => return Decision::NO_RULE,
        };
        // Rule i owns list i (see `new`): the list's filter and the rule
        // record are fetched in parallel, not one after the other.
        let list = ListId(index as u32);
        let Some(rule) = self.rules.get(index) else { return Decision::NO_RULE };
        let rule_ref = rule_ref.unwrap_or(RuleRef::Service(&rule.name));
        let decided = |verdict, reason, matched| Decision {
            verdict,
            reason,
            project: &rule.project,
            rule: rule_ref,
            matched,
            internal_destination: None,
        };
        let by_action = match rule.action {
            Action::Open => Verdict::Allow,
            Action::Report => Verdict::AllowAndReport,
            Action::Enforce => Verdict::Deny,
        };

        let key = HostKey::new(host);
        // v2: only when the port is known and the table has extras (never v1).
        let extras = match port {
            Some(port) if !self.extras.is_empty() => self.extras.get(index).map(|x| (x, port)),
            _ => None,
        };
        if let Some((x, port)) = extras
            && x.internal_filter & filter_bit(key.whole_hash()) != 0
        {
            let start = x.internal_start as usize;
            let candidates = self.internal.get(start..start + x.internal_len as usize).unwrap_or_default();
            if let Some(exception) = candidates.iter().find(|d| d.covers(host, port)) {
                return Decision {
                    internal_destination: Some(exception),
                    ..decided(Verdict::Allow, Reason::InternalDestination, None)
                };
            }
        }
        // A listed host on a port the rule does not allow is an unlisted
        // host; read only when a list matched.
        let port_ok = || match extras {
            Some((x, port)) if x.ports_len > 0 => {
                let start = x.ports_start as usize;
                // Never "any port" by accident: a missing slice allows nothing.
                self.port_ranges.get(start..start + x.ports_len as usize).is_some_and(|r| port_allowed(r, port))
            }
            _ => true,
        };

        if let Some(m) = self.services.find(list, &key) {
            if !port_ok() {
                return decided(by_action, Reason::PortNotAllowed, Some((ListKind::AllowedDomains, m)));
            }
            return decided(Verdict::Allow, Reason::AllowedDomain, Some((ListKind::AllowedDomains, m)));
        }
        if let Some(m) = self.globals.find(self.global_deny, &key) {
            return decided(Verdict::Deny, Reason::GlobalDenyList, Some((ListKind::GlobalDenyList, m)));
        }
        if let Some(m) = self.globals.find(self.global_allow, &key) {
            if !port_ok() {
                return decided(by_action, Reason::PortNotAllowed, Some((ListKind::GlobalAllowList, m)));
            }
            return decided(Verdict::Allow, Reason::GlobalAllowList, Some((ListKind::GlobalAllowList, m)));
        }
        let (verdict, reason) = match rule.action {
            Action::Open => (by_action, Reason::OpenPolicy),
            Action::Report => (by_action, Reason::ReportPolicy),
            Action::Enforce => (by_action, Reason::EnforcePolicy),
        };
        let reason = if rule_ref == RuleRef::Default { Reason::DefaultRulePolicy } else { reason };
        decided(verdict, reason, None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use crate::acl;
    use crate::host;
    use crate::policy::ActionSet;
    use proptest::prelude::*;

    const POLICY: &str = "version: v1
services:
  - name: svc
    project: p
    action: enforce
    allowed_domains: [\"*.xn--e1aybc.example\", exact.example.com, \"*.deep.example.org\"]
default:
  project: d
  action: report
global_deny_list: [\"*.bad.example\", xn--bcher-kva.example]
global_allow_list: [good.example]
";

    fn table() -> PolicyTable {
        PolicyTable::new(&acl::check_source("p.yaml", POLICY, ActionSet::default()).policy.unwrap())
    }

    fn label() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z][a-z0-9]{0,6}", Just("тест".to_owned()), Just("bücher".to_owned())]
    }

    fn host_name() -> impl Strategy<Value = String> {
        let suffix = prop_oneof![
            Just("тест.example"),
            Just("exact.example.com"),
            Just("deep.example.org"),
            Just("bad.example"),
            Just("bücher.example"),
            Just("good.example"),
            Just("example.net"),
        ];
        (prop::collection::vec(label(), 0..3), suffix).prop_map(|(mut labels, suffix)| {
            labels.push(suffix.to_owned());
            labels.join(".")
        })
    }

    proptest! {
        #[test]
        fn spelling_variants_decide_the_same(name in host_name(), role in prop_oneof![Just(Some("svc")), Just(Some("other")), Just(None)]) {
            let t = table();
            let Ok(canonical) = host::canonical(&name) else { return Ok(()) };
            let expected = t.decide(role, &canonical);
            for variant in [name.to_uppercase(), format!("{name}."), format!("{}.", name.to_uppercase()), canonical.to_string()] {
                let host = host::canonical(&variant).unwrap();
                prop_assert_eq!(t.decide(role, &host), expected, "variant {}", variant);
            }
        }
    }

    #[test]
    fn decisions_name_the_rule_and_pattern() {
        let t = table();
        let d = t.decide(Some("svc"), &host::canonical("a.b.deep.example.org").unwrap());
        assert_eq!(d.rule, RuleRef::Service("svc"));
        assert_eq!(
            d.matched.map(|(l, m)| (l, m.to_string())),
            Some((ListKind::AllowedDomains, "*.deep.example.org".into()))
        );
        let d = t.decide(Some("svc"), &host::canonical("BÜCHER.example").unwrap());
        assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::GlobalDenyList));
        let d = t.decide(None, &host::canonical("x.example.net").unwrap());
        assert_eq!((d.verdict, d.reason, d.default_rule()), (Verdict::AllowAndReport, Reason::DefaultRulePolicy, true));
        assert!(d.verdict.enforce_would_deny() && d.verdict.is_allowed());
        assert!(t.has_role("svc") && !t.has_role("SVC"));
        assert_eq!(t.roles().collect::<Vec<_>>(), vec!["svc"]);
    }

    /// `ALL` lists every variant at its own index. The matches are
    /// exhaustive: a new variant stops this compiling until it is placed.
    #[test]
    fn all_lists_every_variant_at_its_index() {
        let position = |r: Reason| match r {
            Reason::AllowedDomain => 0,
            Reason::GlobalDenyList => 1,
            Reason::GlobalAllowList => 2,
            Reason::OpenPolicy => 3,
            Reason::ReportPolicy => 4,
            Reason::EnforcePolicy => 5,
            Reason::DefaultRulePolicy => 6,
            Reason::NoRuleMatched => 7,
            Reason::PortNotAllowed => 8,
            Reason::InternalDestination => 9,
        };
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!((position(r), r.index()), (i, i));
        }
        let position = |v: Verdict| match v {
            Verdict::Allow => 0,
            Verdict::AllowAndReport => 1,
            Verdict::Deny => 2,
        };
        for (i, v) in Verdict::ALL.into_iter().enumerate() {
            assert_eq!((position(v), v.index()), (i, i));
        }
    }
}
