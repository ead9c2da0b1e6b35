//! Decision conformance: Smokescreen's upstream decision cases (reference
//! §2.3 and §8.1) plus our own, run through both the in-memory policy and a
//! compiled-then-decoded table, which must agree on every case.

use std::path::Path;

use egress_policy::acl;
use egress_policy::decision::{PolicyTable, Verdict};
use egress_policy::host;
use egress_policy::policy::{Action, ActionSet};
use egress_policy::table::{self, Metadata};

use crate::{fixture, repo_root};

/// One expected decision.
struct Case {
    role: Option<&'static str>,
    host: &'static str,
    verdict: Verdict,
    reason: &'static str,
    project: &'static str,
    default_rule: bool,
}

const fn case(
    role: Option<&'static str>,
    host: &'static str,
    verdict: Verdict,
    reason: &'static str,
    project: &'static str,
    default_rule: bool,
) -> Case {
    Case { role, host, verdict, reason, project, default_rule }
}

use Verdict::{Allow, AllowAndReport as Report, Deny};

const ALLOWED: &str = "host matched allowed domain in rule";
const GLOBAL_DENY: &str = "host matched rule in global deny list";
const GLOBAL_ALLOW: &str = "host matched rule in global allow list";
const OPEN: &str = "rule has open enforcement policy";
const REPORT: &str = "rule has allow and report policy";
const ENFORCE: &str = "rule has enforce policy";
const DEFAULT: &str = "default rule policy used";
const NO_RULE: &str = "no rule matched";

/// Loads a policy both ways and checks every case against both.
fn run(source: &str, name: &str, cases: &[Case]) {
    let checked = acl::check_source(name, source, ActionSet::default());
    let policy = checked.policy.unwrap_or_else(|| panic!("{name} does not compile: {:#?}", checked.diagnostics));
    let direct = PolicyTable::new(&policy);
    let bytes = table::encode(&policy, &Metadata::for_source(Path::new(name), source.as_bytes(), ActionSet::default()));
    let compiled = table::decode(&bytes).unwrap_or_else(|e| panic!("{name}: table does not decode: {e}"));
    for (label, t) in [("yaml", &direct), ("table", &compiled.table)] {
        for c in cases {
            let host = host::canonical(c.host).unwrap_or_else(|e| panic!("{}: {e}", c.host));
            let d = t.decide(c.role, &host);
            let what = format!("{name} ({label}): role {:?} host {:?}", c.role, c.host);
            assert_eq!(d.verdict, c.verdict, "{what}: verdict");
            assert_eq!(d.reason.as_str(), c.reason, "{what}: reason");
            assert_eq!(d.project, c.project, "{what}: project");
            assert_eq!(d.default_rule(), c.default_rule, "{what}: default rule");
        }
    }
}

#[test]
#[rustfmt::skip] // a table reads best as one row per line
fn smokescreen_sample_config() {
    let src = fixture("smokescreen/sample_config.yaml");
    run(&src, "sample_config.yaml", &[
        case(Some("enforce-dummy-srv"), "example1.com", Allow, ALLOWED, "usersec", false),
        case(Some("enforce-dummy-srv"), "www.example1.com", Deny, ENFORCE, "usersec", false),
        case(Some("report-dummy-srv"), "example3.com", Allow, ALLOWED, "security", false),
        case(Some("report-dummy-srv"), "example1.com", Report, REPORT, "security", false),
        case(Some("open-dummy-srv"), "anythingisgoodreally.com", Allow, OPEN, "automation", false),
        case(Some("dummy-glob"), "shouldbreak.com", Deny, ENFORCE, "phony", false),
        case(Some("dummy-glob"), "example.com", Deny, ENFORCE, "phony", false),
        case(Some("dummy-glob"), "api.example.com", Allow, ALLOWED, "phony", false),
        case(Some("unknown-service"), "nope.example.com", Deny, DEFAULT, "other", true),
        case(Some("unknown-service"), "default.example.com", Allow, ALLOWED, "other", true),
    ]);
}

#[test]
#[rustfmt::skip] // a table reads best as one row per line
fn smokescreen_sample_config_with_global() {
    let src = fixture("smokescreen/sample_config_with_global.yaml");
    run(&src, "sample_config_with_global.yaml", &[
        case(Some("enforce-dummy-srv"), "goodexample1.com", Allow, GLOBAL_ALLOW, "usersec", false),
        case(Some("unknown-service"), "goodexample2.com", Allow, GLOBAL_ALLOW, "other", true),
        case(Some("enforce-dummy-srv"), "badexample1.com", Allow, ALLOWED, "usersec", false),
        case(Some("report-dummy-srv"), "badexample1.com", Deny, GLOBAL_DENY, "security", false),
        case(Some("unknown-service"), "badexample2.com", Deny, GLOBAL_DENY, "other", true),
        case(Some("open-dummy-srv"), "badexample2.com", Deny, GLOBAL_DENY, "automation", false),
        case(Some("open-dummy-srv"), "badexample2.com.", Deny, GLOBAL_DENY, "automation", false),
        case(Some("open-dummy-srv"), "bAdExAmPlE2.cOm", Deny, GLOBAL_DENY, "automation", false),
        case(Some("open-dummy-srv"), "conflictingexample.com", Deny, GLOBAL_DENY, "automation", false),
    ]);
}

#[test]
#[rustfmt::skip] // a table reads best as one row per line
fn smokescreen_no_default() {
    let src = fixture("smokescreen/no_default.yaml");
    run(&src, "no_default.yaml", &[
        case(Some("unk"), "example.com", Deny, NO_RULE, "", false),
        // The global allow list is not consulted without a rule.
        case(Some("unk"), "goodexample1.com", Deny, NO_RULE, "", false),
        case(None, "example1.com", Deny, NO_RULE, "", false),
        case(Some("dummy-srv"), "example1.com", Allow, ALLOWED, "usersec", false),
    ]);
}

/// Reference §2.3: `enf` enforce `[a.com, *.b.com, bad.com, t.com.]`, `rep`
/// report `[a.com]`, `opn` open, default report `[d.com]`, global allow
/// `[good.com, both.com, *.gw.com]`, global deny `[bad.com, both.com, *.bw.com]`.
/// Rows about `X-Upstream-Https-Proxy` and the unnamed service have no
/// equivalent here: we never use upstream proxies, and an empty `name` is an error.
const REFERENCE_ACL: &str = "\
version: v1
services:
  - name: enf
    project: p-enf
    action: enforce
    allowed_domains: [a.com, \"*.b.com\", bad.com, t.com.]
  - name: rep
    project: p-rep
    action: report
    allowed_domains: [a.com]
  - name: opn
    project: p-opn
    action: open
default:
  project: p-def
  action: report
  allowed_domains: [d.com]
global_allow_list: [good.com, both.com, \"*.gw.com\"]
global_deny_list: [bad.com, both.com, \"*.bw.com\"]
";

#[test]
#[rustfmt::skip] // a table reads best as one row per line
fn reference_decision_table() {
    run(REFERENCE_ACL, "reference.yaml", &[
        case(Some("enf"), "a.com", Allow, ALLOWED, "p-enf", false),
        case(Some("enf"), "A.COM.", Allow, ALLOWED, "p-enf", false),
        case(Some("enf"), "x.b.com", Allow, ALLOWED, "p-enf", false),
        case(Some("enf"), "b.com", Deny, ENFORCE, "p-enf", false),
        case(Some("enf"), "bad.com", Allow, ALLOWED, "p-enf", false),
        case(Some("enf"), "both.com", Deny, GLOBAL_DENY, "p-enf", false),
        case(Some("enf"), "good.com", Allow, GLOBAL_ALLOW, "p-enf", false),
        case(Some("enf"), "x.gw.com", Allow, GLOBAL_ALLOW, "p-enf", false),
        case(Some("enf"), "x.bw.com", Deny, GLOBAL_DENY, "p-enf", false),
        case(Some("enf"), "z.com", Deny, ENFORCE, "p-enf", false),
        case(Some("enf"), "127.0.0.1", Deny, ENFORCE, "p-enf", false),
        case(Some("enf"), "t.com", Allow, ALLOWED, "p-enf", false),
        case(Some("rep"), "a.com", Allow, ALLOWED, "p-rep", false),
        case(Some("rep"), "z.com", Report, REPORT, "p-rep", false),
        case(Some("rep"), "bad.com", Deny, GLOBAL_DENY, "p-rep", false),
        case(Some("rep"), "good.com", Allow, GLOBAL_ALLOW, "p-rep", false),
        case(Some("opn"), "z.com", Allow, OPEN, "p-opn", false),
        case(Some("opn"), "bad.com", Deny, GLOBAL_DENY, "p-opn", false),
        case(Some("opn"), "both.com", Deny, GLOBAL_DENY, "p-opn", false),
        case(Some("unknown"), "d.com", Allow, ALLOWED, "p-def", true),
        // Role names are case-sensitive.
        case(Some("ENF"), "a.com", Report, DEFAULT, "p-def", true),
        case(Some("unknown"), "z.com", Report, DEFAULT, "p-def", true),
        case(Some("unknown"), "bad.com", Deny, GLOBAL_DENY, "p-def", true),
        case(Some("unknown"), "good.com", Allow, GLOBAL_ALLOW, "p-def", true),
        // A client without a role gets the default rule.
        case(None, "z.com", Report, DEFAULT, "p-def", true),
    ]);
}

#[test]
fn default_rule_actions() {
    for (action, verdict) in [("open", Allow), ("report", Report), ("enforce", Deny)] {
        let src = format!("version: v1\nservices: []\ndefault:\n  project: d\n  action: {action}\n");
        run(&src, "default.yaml", &[case(Some("anyone"), "z.com", verdict, DEFAULT, "d", true)]);
    }
}

/// Our own cases: wildcard depth and apex, IDN, IP literals, trailing dots.
#[test]
#[rustfmt::skip] // a table reads best as one row per line
fn hosts_match_in_canonical_form() {
    let src = "\
version: v1
services:
  - name: svc
    project: p
    action: enforce
    allowed_domains:
      - \"*.example.com\"
      - xn--e1aybc.example.org
      - \"*.xn--bcher-kva.example\"
      - 203.0.113.7
      - 2001:db8::1
      - r3---sn-abc.googlevideo.com
default:
  project: d
  action: enforce
";
    run(src, "ours.yaml", &[
        case(Some("svc"), "a.example.com", Allow, ALLOWED, "p", false),
        case(Some("svc"), "a.b.c.d.example.com", Allow, ALLOWED, "p", false),
        case(Some("svc"), "EXAMPLE.com", Deny, ENFORCE, "p", false),
        case(Some("svc"), "aexample.com", Deny, ENFORCE, "p", false),
        case(Some("svc"), "A.Example.Com.", Allow, ALLOWED, "p", false),
        case(Some("svc"), "тест.example.org", Allow, ALLOWED, "p", false),
        case(Some("svc"), "ТЕСТ.example.org", Allow, ALLOWED, "p", false),
        case(Some("svc"), "xn--e1aybc.example.org", Allow, ALLOWED, "p", false),
        case(Some("svc"), "sub.bücher.example", Allow, ALLOWED, "p", false),
        case(Some("svc"), "bücher.example", Deny, ENFORCE, "p", false),
        case(Some("svc"), "203.0.113.7", Allow, ALLOWED, "p", false),
        case(Some("svc"), "::ffff:203.0.113.7", Allow, ALLOWED, "p", false),
        case(Some("svc"), "203.0.113.8", Deny, ENFORCE, "p", false),
        case(Some("svc"), "2001:DB8:0::1", Allow, ALLOWED, "p", false),
        case(Some("svc"), "r3---sn-abc.googlevideo.com", Allow, ALLOWED, "p", false),
    ]);
}

#[test]
fn ambiguous_hosts_never_reach_the_decision() {
    for bad in ["127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "a..example.com", "exa mple.com", "fe80::1%eth0", ""]
    {
        assert!(host::canonical(bad).is_err(), "{bad:?} must be refused before deciding");
    }
}

#[test]
fn disabled_actions_refuse_the_default_bypass_file() {
    let src = fixture("smokescreen/sample_default_bypass_config.yaml");
    let disabled: ActionSet = [Action::Open].into_iter().collect();
    let checked = acl::check_source("bypass.yaml", &src, disabled);
    assert!(checked.policy.is_none());
    assert!(checked.diagnostics.iter().any(|d| d.code.as_str() == "P012"));
}

#[test]
fn upstream_fixtures_compile_or_fail_as_smokescreen_does() {
    let expectations: &[(&str, &[&str])] = &[
        ("sample_config.yaml", &[]),
        ("sample_config_with_global.yaml", &["P104"]),
        ("no_default.yaml", &["P101"]),
        ("mitm_config.yaml", &["P107"]),
        ("unknown_action.yaml", &["P101", "P009"]),
        ("broken_config.yaml", &["P005", "P101", "P002"]),
        ("contains_invalid_glob.yaml", &["P010"]),
        ("contains_invalid_glob_default.yaml", &["P010"]),
        ("contains_middle_glob.yaml", &["P010"]),
        ("sample_default_bypass_config.yaml", &["P105"]),
        ("smokescreen_acl.yaml", &["P101", "P105", "P107", "P107", "P107"]),
        ("cmd_sample_config.yaml", &["P107"]),
    ];
    let dir = repo_root().join("tests/fixtures/smokescreen");
    let count = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count, expectations.len(), "every upstream fixture has an expectation");
    for (file, codes) in expectations {
        let src = fixture(&format!("smokescreen/{file}"));
        let checked = acl::check_source(file, &src, ActionSet::default());
        let found: Vec<&str> = checked.diagnostics.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(&found, codes, "{file}");
        let smokescreen_accepts = !codes.iter().any(|c| c.starts_with("P0"));
        assert_eq!(checked.policy.is_some(), smokescreen_accepts, "{file}");
    }
}
