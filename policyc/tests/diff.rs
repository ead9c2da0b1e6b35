//! `policyc diff`: hand-built before/after pairs (`tests/fixtures/diff/<case>/`)
//! with every expected change written out, the real binary in every format,
//! and properties: examples really differ, nothing is missed, diff(P, P) is empty.

use std::path::Path;

use egress_policy::acl;
use egress_policy::decision::{PolicyTable, Reason, Verdict};
use egress_policy::host;
use egress_policy::pattern::{self, HostPattern};
use egress_policy::policy::{Action, ActionSet, Policy, Rule};
use policyc::diff::{
    self, DecisionChange, DecisionSummary, ListDiff, PolicyDiff, RoleDecisions, RuleChange, RuleDiff, StandsFor,
    ValueChange,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{fixture, policyc};

fn load(case: &str, side: &str) -> Policy {
    let name = format!("diff/{case}/{side}.yaml");
    let checked = acl::check_source(&name, &fixture(&name), ActionSet::default());
    checked.policy.unwrap_or_else(|| panic!("{name} must be valid: {:?}", checked.diagnostics))
}

fn case(name: &str) -> PolicyDiff {
    diff::diff(&load(name, "old"), &load(name, "new"))
}

fn list(added: &[&str], removed: &[&str]) -> ListDiff {
    ListDiff {
        added: added.iter().map(|s| s.to_string()).collect(),
        removed: removed.iter().map(|s| s.to_string()).collect(),
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn action(old: Option<Action>, new: Option<Action>) -> Option<ValueChange<Action>> {
    Some(ValueChange { old, new })
}

fn project(old: Option<&str>, new: Option<&str>) -> Option<ValueChange<String>> {
    Some(ValueChange { old: old.map(str::to_owned), new: new.map(str::to_owned) })
}

/// A decision: verdict, reason, deciding rule, matched entry.
fn d(verdict: Verdict, reason: Reason, rule: Option<&str>, pattern: Option<&str>) -> DecisionSummary {
    DecisionSummary { verdict, reason, rule: rule.map(str::to_owned), pattern: pattern.map(str::to_owned) }
}

fn change(host: &str, stands_for: StandsFor, old: DecisionSummary, new: DecisionSummary) -> DecisionChange {
    DecisionChange { host: host.to_owned(), stands_for, old, new }
}

fn sub(pattern: &str) -> StandsFor {
    StandsFor::Subdomain { pattern: pattern.to_owned() }
}

fn role(role: Option<&str>, changes: Vec<DecisionChange>) -> RoleDecisions {
    RoleDecisions { role: role.map(str::to_owned), changes, omitted: 0 }
}

use Reason::*;
use Verdict::{Allow, Deny};

// ---------------------------------------------------------------------------
// Hand-built pairs. The base policy: billing (enforce) allows api.stripe.com
// and *.hooks.example.com; the default rule enforces; *.bad.example is denied.
// ---------------------------------------------------------------------------

#[test]
fn role_added() {
    let expected = PolicyDiff {
        changed_decisions: 2,
        roles_added: strings(&["search"]),
        services: vec![RuleDiff {
            role: Some("search".into()),
            change: RuleChange::Added,
            action: action(None, Some(Action::Enforce)),
            project: project(None, Some("discovery")),
            allowed_domains: list(&["api.search.example"], &[]),
            allowed_ports: None,
            internal_destinations: ListDiff::default(),
        }],
        decisions: vec![role(
            Some("search"),
            vec![
                change(
                    "api.search.example",
                    StandsFor::Entry,
                    d(Deny, DefaultRulePolicy, Some("default"), None),
                    d(Allow, AllowedDomain, Some("search"), Some("api.search.example")),
                ),
                // The verdict stays, but logs now name the role's own rule.
                change(
                    "unlisted.invalid",
                    StandsFor::Unlisted,
                    d(Deny, DefaultRulePolicy, Some("default"), None),
                    d(Deny, EnforcePolicy, Some("search"), None),
                ),
            ],
        )],
        ..PolicyDiff::default()
    };
    assert_eq!(case("role-added"), expected);
}

#[test]
fn role_removed() {
    let expected = PolicyDiff {
        changed_decisions: 2,
        roles_removed: strings(&["search"]),
        services: vec![RuleDiff {
            role: Some("search".into()),
            change: RuleChange::Removed,
            action: action(Some(Action::Enforce), None),
            project: project(Some("discovery"), None),
            allowed_domains: list(&[], &["api.search.example"]),
            allowed_ports: None,
            internal_destinations: ListDiff::default(),
        }],
        decisions: vec![role(
            Some("search"),
            vec![
                change(
                    "api.search.example",
                    StandsFor::Entry,
                    d(Allow, AllowedDomain, Some("search"), Some("api.search.example")),
                    d(Deny, DefaultRulePolicy, Some("default"), None),
                ),
                change(
                    "unlisted.invalid",
                    StandsFor::Unlisted,
                    d(Deny, EnforcePolicy, Some("search"), None),
                    d(Deny, DefaultRulePolicy, Some("default"), None),
                ),
            ],
        )],
        ..PolicyDiff::default()
    };
    assert_eq!(case("role-removed"), expected);
}

#[test]
fn action_open_to_enforce() {
    // mirror.pkg.example (global allow) and *.bad.example (global deny) decide
    // the same under both actions; only hosts left to the action change.
    let expected = PolicyDiff {
        changed_decisions: 2,
        services: vec![RuleDiff {
            role: Some("billing".into()),
            change: RuleChange::Changed,
            action: action(Some(Action::Open), Some(Action::Enforce)),
            project: None,
            allowed_domains: list(&["api.stripe.com"], &[]),
            allowed_ports: None,
            internal_destinations: ListDiff::default(),
        }],
        decisions: vec![role(
            Some("billing"),
            vec![
                change(
                    "unlisted.invalid",
                    StandsFor::Unlisted,
                    d(Allow, OpenPolicy, Some("billing"), None),
                    d(Deny, EnforcePolicy, Some("billing"), None),
                ),
                change(
                    "api.stripe.com",
                    StandsFor::Entry,
                    d(Allow, OpenPolicy, Some("billing"), None),
                    d(Allow, AllowedDomain, Some("billing"), Some("api.stripe.com")),
                ),
            ],
        )],
        ..PolicyDiff::default()
    };
    assert_eq!(case("action-open-to-enforce"), expected);
}

#[test]
fn pattern_added_allows_a_host() {
    let expected = PolicyDiff {
        changed_decisions: 1,
        services: vec![RuleDiff {
            role: Some("billing".into()),
            change: RuleChange::Changed,
            action: None,
            project: None,
            allowed_domains: list(&["api.new.com"], &[]),
            allowed_ports: None,
            internal_destinations: ListDiff::default(),
        }],
        decisions: vec![role(
            Some("billing"),
            vec![change(
                "api.new.com",
                StandsFor::Entry,
                d(Deny, EnforcePolicy, Some("billing"), None),
                d(Allow, AllowedDomain, Some("billing"), Some("api.new.com")),
            )],
        )],
        ..PolicyDiff::default()
    };
    assert_eq!(case("pattern-added"), expected);
}

#[test]
fn wildcard_narrowed() {
    // *.hooks.example.com → *.eu.hooks.example.com: the synthetic subdomain of
    // the old wildcard loses access; the new wildcard's subdomain keeps it.
    let expected = PolicyDiff {
        changed_decisions: 1,
        services: vec![RuleDiff {
            role: Some("billing".into()),
            change: RuleChange::Changed,
            action: None,
            project: None,
            allowed_domains: list(&["*.eu.hooks.example.com"], &["*.hooks.example.com"]),
            allowed_ports: None,
            internal_destinations: ListDiff::default(),
        }],
        decisions: vec![role(
            Some("billing"),
            vec![change(
                "example.hooks.example.com",
                sub("*.hooks.example.com"),
                d(Allow, AllowedDomain, Some("billing"), Some("*.hooks.example.com")),
                d(Deny, EnforcePolicy, Some("billing"), None),
            )],
        )],
        ..PolicyDiff::default()
    };
    assert_eq!(case("wildcard-narrowed"), expected);
}

#[test]
fn global_deny_added() {
    // The default rule is `open` here. billing's own entry api.stripe.com wins
    // over the deny list (allowed_domains come first), so billing only changes
    // the reason for tracker.example.net; role-less clients lose both hosts.
    let expected = PolicyDiff {
        changed_decisions: 3,
        global_deny_list: list(&["api.stripe.com", "tracker.example.net"], &[]),
        decisions: vec![
            role(
                Some("billing"),
                vec![change(
                    "tracker.example.net",
                    StandsFor::Entry,
                    d(Deny, EnforcePolicy, Some("billing"), None),
                    d(Deny, GlobalDenyList, Some("billing"), Some("tracker.example.net")),
                )],
            ),
            role(
                None,
                vec![
                    change(
                        "api.stripe.com",
                        StandsFor::Entry,
                        d(Allow, DefaultRulePolicy, Some("default"), None),
                        d(Deny, GlobalDenyList, Some("default"), Some("api.stripe.com")),
                    ),
                    change(
                        "tracker.example.net",
                        StandsFor::Entry,
                        d(Allow, DefaultRulePolicy, Some("default"), None),
                        d(Deny, GlobalDenyList, Some("default"), Some("tracker.example.net")),
                    ),
                ],
            ),
        ],
        ..PolicyDiff::default()
    };
    assert_eq!(case("global-deny-added"), expected);
}

#[test]
fn default_rule_removed() {
    // Without a default rule, clients without a role of their own get "no rule
    // matched" before any list is consulted, global deny list included.
    let expected = PolicyDiff {
        changed_decisions: 2,
        default_rule: Some(RuleDiff {
            role: None,
            change: RuleChange::Removed,
            action: action(Some(Action::Enforce), None),
            project: project(Some("other"), None),
            allowed_domains: list(&[], &[]),
            allowed_ports: None,
            internal_destinations: ListDiff::default(),
        }),
        decisions: vec![role(
            None,
            vec![
                change(
                    "example.bad.example",
                    sub("*.bad.example"),
                    d(Deny, GlobalDenyList, Some("default"), Some("*.bad.example")),
                    d(Deny, NoRuleMatched, None, None),
                ),
                change(
                    "unlisted.invalid",
                    StandsFor::Unlisted,
                    d(Deny, DefaultRulePolicy, Some("default"), None),
                    d(Deny, NoRuleMatched, None, None),
                ),
            ],
        )],
        ..PolicyDiff::default()
    };
    assert_eq!(case("default-removed"), expected);
}

#[test]
fn reordering_and_duplicates_change_nothing() {
    let d = case("noop-reorder");
    assert_eq!(d, PolicyDiff::default());
    assert!(d.is_empty() && !d.has_decision_changes());
}

#[test]
fn shadowed_entry_and_project_rename_change_no_decision() {
    // eu.hooks.example.com is already allowed by *.hooks.example.com: the rule
    // changed, no host is decided differently, so --exit-code passes.
    let expected = PolicyDiff {
        services: vec![RuleDiff {
            role: Some("billing".into()),
            change: RuleChange::Changed,
            action: None,
            project: project(Some("payments"), Some("payments-platform")),
            allowed_domains: list(&["eu.hooks.example.com"], &[]),
            allowed_ports: None,
            internal_destinations: ListDiff::default(),
        }],
        ..PolicyDiff::default()
    };
    let d = case("shadowed-entry");
    assert_eq!(d, expected);
    assert!(!d.is_empty() && !d.has_decision_changes());
}

#[test]
fn examples_are_capped_and_the_rest_counted() {
    let yaml = |n: usize| {
        let entries: String = (0..n).map(|i| format!("      - h{i:03}.example.com\n")).collect();
        format!(
            "version: v1\nservices:\n  - name: svc\n    project: p\n    action: enforce\n    allowed_domains:\n{entries}"
        )
    };
    let policy = |n| acl::check_source("p.yaml", &yaml(n), ActionSet::default()).policy.expect("valid");
    let d = diff::diff_with_limit(&policy(1), &policy(31), 5);
    assert_eq!(d.changed_decisions, 30);
    assert_eq!(d.decisions.len(), 1);
    let hosts: Vec<&str> = d.decisions[0].changes.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(
        hosts,
        ["h001.example.com", "h002.example.com", "h003.example.com", "h004.example.com", "h005.example.com"]
    );
    assert_eq!(d.decisions[0].omitted, 25);
}

// ---------------------------------------------------------------------------
// Properties over small random policies built from overlapping entries.
// ---------------------------------------------------------------------------

const ENTRIES: &[&str] = &[
    "x.com",
    "a.x.com",
    "b.a.x.com",
    "example.x.com",
    "*.x.com",
    "*.a.x.com",
    "y.org",
    "*.y.org",
    "*.com",
    "10.0.0.1",
    "2001:db8::1",
];

/// Hosts at every depth around the entries, including ones no entry names.
const PROBES: &[&str] = &[
    "x.com",
    "a.x.com",
    "b.a.x.com",
    "c.b.a.x.com",
    "z.a.x.com",
    "z.x.com",
    "example.x.com",
    "www.x.com",
    "deep.z.x.com",
    "y.org",
    "q.y.org",
    "org",
    "com",
    "q.com",
    "other.net",
    "10.0.0.1",
    "10.0.0.2",
    "2001:db8::1",
];

const ROLES: &[&str] = &["a", "b", "c"];

fn entries() -> impl Strategy<Value = Vec<HostPattern>> {
    prop::collection::vec(prop::sample::select(ENTRIES), 0..4)
        .prop_map(|v| v.into_iter().map(|e| pattern::parse(e).expect("valid entry").pattern).collect())
}

fn action_strategy() -> impl Strategy<Value = Action> {
    prop::sample::select(Action::ALL.to_vec())
}

fn rule_strategy(name: &'static str) -> impl Strategy<Value = Rule> {
    (action_strategy(), entries()).prop_map(move |(action, allowed_domains)| Rule {
        allowed_ports: vec![],
        internal_destinations: vec![],
        name: name.to_owned(),
        project: "p".to_owned(),
        action,
        allowed_domains,
    })
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        prop::option::of(rule_strategy("a")),
        prop::option::of(rule_strategy("b")),
        prop::option::of(rule_strategy("c")),
        prop::option::of(rule_strategy("")),
        entries(),
        entries(),
    )
        .prop_map(|(a, b, c, default, global_allow_list, global_deny_list)| Policy {
            version: Default::default(),
            network: Default::default(),
            services: [a, b, c].into_iter().flatten().collect(),
            default,
            global_allow_list,
            global_deny_list,
        })
}

fn all_entries<'p>(old: &'p Policy, new: &'p Policy) -> impl Iterator<Item = &'p HostPattern> {
    [old, new].into_iter().flat_map(|p| {
        p.services
            .iter()
            .chain(&p.default)
            .flat_map(|r| &r.allowed_domains)
            .chain(&p.global_allow_list)
            .chain(&p.global_deny_list)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_policy_against_itself_is_empty(p in policy_strategy()) {
        let d = diff::diff(&p, &p);
        prop_assert!(d.is_empty(), "{:?}", d);
    }

    #[test]
    fn examples_are_real_and_no_change_is_missed(old in policy_strategy(), new in policy_strategy()) {
        let d = diff::diff_with_limit(&old, &new, usize::MAX);
        let (o, n) = (PolicyTable::new(&old), PolicyTable::new(&new));
        let listed: usize = d.decisions.iter().map(|r| r.changes.len()).sum();
        prop_assert_eq!(listed, d.changed_decisions);
        for r in &d.decisions {
            prop_assert_eq!(r.omitted, 0);
            for c in &r.changes {
                let host = host::canonical(&c.host).expect("example hosts are canonical");
                let (before, after) = (o.decide(r.role.as_deref(), &host), n.decide(r.role.as_deref(), &host));
                prop_assert_eq!((before.verdict, before.reason), (c.old.verdict, c.old.reason));
                prop_assert_eq!((after.verdict, after.reason), (c.new.verdict, c.new.reason));
                prop_assert!(before.verdict != after.verdict || before.reason != after.reason);
                let is_entry = all_entries(&old, &new).any(|e| *e == HostPattern::Exact(host.clone()));
                match &c.stands_for {
                    StandsFor::Entry => prop_assert!(is_entry, "{} is no entry", c.host),
                    StandsFor::Subdomain { pattern } => {
                        let suffix = pattern.strip_prefix("*.").expect("a wildcard");
                        prop_assert!(!is_entry && c.host.ends_with(&format!(".{suffix}")), "{} under {}", c.host, pattern);
                    }
                    StandsFor::Unlisted => prop_assert!(!is_entry, "{} is an entry", c.host),
                }
            }
        }
        // Completeness: whenever a probe host's decision changes, for any role
        // (or none, or an unknown one), the diff lists a host for that role
        // that changes in exactly the same way.
        let roles = ROLES.iter().map(|r| Some(*r)).chain([None, Some("unknown")]);
        for role in roles {
            for probe in PROBES {
                let host = host::canonical(probe).expect("probe is canonical");
                let (before, after) = (o.decide(role, &host), n.decide(role, &host));
                if before.verdict != after.verdict || before.reason != after.reason {
                    let key = role.filter(|r| old.services.iter().chain(&new.services).any(|s| s.name == *r));
                    let same_change = d.decisions.iter().filter(|r| r.role.as_deref() == key).flat_map(|r| &r.changes).any(|c| {
                        (c.old.verdict, c.old.reason, c.new.verdict, c.new.reason)
                            == (before.verdict, before.reason, after.verdict, after.reason)
                    });
                    prop_assert!(same_change, "{:?} {} changes {:?} → {:?}; the diff shows no such change: {:?}", role, probe, before, after, d.decisions);
                }
            }
        }
        prop_assert_eq!(d.has_decision_changes(), d.changed_decisions > 0);
    }
}

// ---------------------------------------------------------------------------
// The real binary.
// ---------------------------------------------------------------------------

fn pair(case: &str) -> (String, String) {
    (format!("tests/fixtures/diff/{case}/old.yaml"), format!("tests/fixtures/diff/{case}/new.yaml"))
}

#[test]
fn cli_human() {
    let (old, new) = pair("wildcard-narrowed");
    let run = policyc(&["diff", &old, &new]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "diff {old} → {new}
role billing: changed
  + *.eu.hooks.example.com
  - *.hooks.example.com
decision changes: 1
  billing: example.hooks.example.com (any *.hooks.example.com) allow → deny (host matched allowed domain in rule → rule has enforce policy)
"
    );
    assert_eq!(run.stdout, expected);

    let (old, new) = pair("noop-reorder");
    let run = policyc(&["diff", "--exit-code", &old, &new]);
    assert_eq!((run.code, run.stdout), (0, format!("diff {old} → {new}\nno changes\n")));
}

#[test]
fn cli_json_has_the_documented_shape() {
    let (old, new) = pair("role-added");
    let run = policyc(&["diff", "--format", "json", &old, &new]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: Value = serde_json::from_str(&run.stdout).expect("JSON");
    let expected = json!({
        "format_version": 1,
        "old": old,
        "new": new,
        "decision_changes": true,
        "changed_decisions": 2,
        "roles_added": ["search"],
        "roles_removed": [],
        "services": [{
            "role": "search",
            "change": "added",
            "action": {"old": null, "new": "enforce"},
            "project": {"old": null, "new": "discovery"},
            "allowed_domains": {"added": ["api.search.example"], "removed": []}
        }],
        "default_rule": null,
        "global_allow_list": {"added": [], "removed": []},
        "global_deny_list": {"added": [], "removed": []},
        "decisions": [{
            "role": "search",
            "changes": [
                {
                    "host": "api.search.example",
                    "stands_for": {"kind": "entry"},
                    "old": {"decision": "deny", "reason": "default rule policy used", "reason_code": "default_rule_policy", "rule": "default", "pattern": null},
                    "new": {"decision": "allow", "reason": "host matched allowed domain in rule", "reason_code": "allowed_domain", "rule": "search", "pattern": "api.search.example"}
                },
                {
                    "host": "unlisted.invalid",
                    "stands_for": {"kind": "unlisted"},
                    "old": {"decision": "deny", "reason": "default rule policy used", "reason_code": "default_rule_policy", "rule": "default", "pattern": null},
                    "new": {"decision": "deny", "reason": "rule has enforce policy", "reason_code": "enforce_policy", "rule": "search", "pattern": null}
                }
            ],
            "omitted": 0
        }]
    });
    assert_eq!(value, expected);
}

#[test]
fn cli_markdown() {
    let (old, new) = pair("global-deny-added");
    let run = policyc(&["diff", "--format", "markdown", &old, &new]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "### Policy diff: `{old}` → `{new}`

**3 decision changes** in 2 roles.

| role | host | old | new | new reason |
|---|---|---|---|---|
| `billing` | `tracker.example.net` | deny | deny | host matched rule in global deny list |
| _(no role)_ | `api.stripe.com` | allow | **deny** | host matched rule in global deny list |
| _(no role)_ | `tracker.example.net` | allow | **deny** | host matched rule in global deny list |

#### Rule and list changes

- `global_deny_list`: 2 added, 0 removed

<details><summary>global_deny_list: 2 added, 0 removed</summary>

```diff
+ api.stripe.com
+ tracker.example.net
```

</details>
"
    );
    assert_eq!(run.stdout, expected);
}

#[test]
fn cli_exit_codes() {
    let (old, new) = pair("pattern-added");
    assert_eq!(policyc(&["diff", &old, &new]).code, 0, "without --exit-code a change is not a failure");
    let run = policyc(&["diff", "--exit-code", &old, &new]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains("billing: api.new.com deny → allow"), "{}", run.stdout);

    let (old, new) = pair("shadowed-entry");
    assert_eq!(policyc(&["diff", "--exit-code", &old, &new]).code, 0, "a rule change that decides nothing differently");

    // A disabled action in either policy makes it invalid: exit 1.
    let (old, new) = pair("action-open-to-enforce");
    let run = policyc(&["diff", "--disable-acl-policy-action", "open", &old, &new]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("open"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "version: v1\nservices:\n  - name: x\n    action: sometimes\n").expect("write");
    let run = policyc(&["diff", &old, broken.to_str().expect("UTF-8")]);
    assert_eq!(run.code, 1, "{}", run.stderr);

    assert_eq!(policyc(&["diff", &old, "/nonexistent/new.yaml"]).code, 2);
    assert_eq!(policyc(&["diff", "--format", "xml", &old, &new]).code, 2);
    assert_eq!(policyc(&["diff", &old]).code, 2);
}

#[test]
fn cli_yaml_and_compiled_tables_mix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old, new) = pair("wildcard-narrowed");
    let compile = |yaml: &str, name: &str| {
        let out = dir.path().join(name);
        let run = policyc(&["compile", yaml, "-o", out.to_str().expect("UTF-8")]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        out.to_str().expect("UTF-8").to_owned()
    };
    let (old_bin, new_bin) = (compile(&old, "old.bin"), compile(&new, "new.bin"));
    let body = |a: &str, b: &str| {
        let run = policyc(&["diff", "--format", "json", "--exit-code", a, b]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        let mut v: Value = serde_json::from_str(&run.stdout).expect("JSON");
        let labels = (v["old"].take(), v["new"].take());
        assert_eq!(labels, (Value::from(a), Value::from(b)));
        v
    };
    let yaml_yaml = body(&old, &new);
    assert_eq!(yaml_yaml["changed_decisions"], 1);
    for (a, b) in [(&old_bin, &new), (&old, &new_bin), (&old_bin, &new_bin)] {
        assert_eq!(body(a, b), yaml_yaml, "{a} vs {b}");
    }
    assert!(Path::new(&old_bin).exists());
    let run = policyc(&["diff", "--exit-code", &old_bin, &old]);
    assert_eq!((run.code, run.stdout.ends_with("no changes\n")), (0, true), "{}", run.stdout);
}

#[test]
fn hostile_role_names_cannot_break_the_output() {
    let name = "a|b`c\n<script>| x";
    let rule = |action| Rule {
        allowed_ports: vec![],
        internal_destinations: vec![],
        name: name.to_owned(),
        project: "p".to_owned(),
        action,
        allowed_domains: vec![pattern::parse("api.example.com").expect("valid").pattern],
    };
    let old = Policy { services: vec![rule(Action::Open)], ..Policy::default() };
    let mut new = Policy { services: vec![rule(Action::Enforce)], ..Policy::default() };
    new.services[0].allowed_domains.push(pattern::parse("*.cdn.example.com").expect("valid").pattern);
    let d = diff::diff(&old, &new);
    assert_eq!(d.changed_decisions, 2);

    let md = d.render_markdown("old.yaml", "new.yaml");
    let row = md.lines().find(|l| l.contains("unlisted.invalid")).expect("a table row");
    // Six unescaped pipes: five cells, nothing injected.
    let cells = row.replace("\\|", "").matches('|').count();
    assert_eq!(cells, 6, "{row}");
    let span = "``a\\|b`c\\n<script>\\| x``";
    assert!(row.contains(span), "{row}");
    // Raw HTML only inside code spans; in the <summary> it is escaped.
    assert_eq!(md.matches("<script>").count(), md.matches(span).count(), "{md}");
    assert!(
        md.contains("<summary>role \"a|b`c\\n&lt;script&gt;| x\": allowed_domains: 1 added, 0 removed</summary>"),
        "{md}"
    );

    let human = d.render_human("old.yaml", "new.yaml");
    assert!(human.contains("role \"a|b`c\\n<script>| x\": changed, action open → enforce"), "{human}");
    assert_eq!(human.lines().count(), 6, "one line per fact, no raw newline from the name: {human}");
}

#[test]
fn markdown_stays_within_a_comment() {
    let policy = |entries: usize| {
        let services = (0..30)
            .map(|r| Rule {
                allowed_ports: vec![],
                internal_destinations: vec![],
                name: format!("role-{r:02}"),
                project: "p".to_owned(),
                action: Action::Enforce,
                allowed_domains: (0..entries)
                    .map(|e| pattern::parse(&format!("h{e}.r{r}.example")).expect("valid").pattern)
                    .collect(),
            })
            .collect();
        Policy { services, ..Policy::default() }
    };
    let d = diff::diff(&policy(10), &policy(0));
    assert_eq!((d.changed_decisions, d.decisions.len(), d.services.len()), (300, 30, 30));
    let md = d.render_markdown("old.yaml", "new.yaml");
    let rows = md.lines().filter(|l| l.starts_with("| `role-")).count();
    assert_eq!(rows, 100, "{md}");
    assert!(md.contains("\n_Showing 100 of 300 decision changes._\n"), "{md}");
    assert_eq!(md.lines().filter(|l| l.starts_with("- role `role-")).count(), 25, "{md}");
    assert!(md.contains("\n- … 5 more changed rules\n"), "{md}");
    assert_eq!(md.matches("<details>").count(), 25, "{md}");
    assert!(md.len() < 65_536, "{} bytes", md.len());
}

#[test]
fn bidirectional_overrides_in_role_names_are_shown_escaped() {
    let rule = |action| Rule {
        allowed_ports: vec![],
        internal_destinations: vec![],
        name: "pay\u{202e}ments".to_owned(),
        project: "p".to_owned(),
        action,
        allowed_domains: vec![],
    };
    let old = Policy { services: vec![rule(Action::Open)], ..Policy::default() };
    let new = Policy { services: vec![rule(Action::Enforce)], ..Policy::default() };
    let d = diff::diff(&old, &new);
    for text in [d.render_human("a", "b"), d.render_markdown("a", "b")] {
        assert!(!text.contains('\u{202e}'), "{text}");
        assert!(text.contains("pay\\u{202e}ments"), "{text}");
    }
}
