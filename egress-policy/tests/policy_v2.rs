//! Policy language v2 through the public API: every new diagnostic at its
//! line, the decision with ports and internal destinations, the address
//! stage with exceptions and the policy's `network` rules, and the table
//! round trip. v1 files must decide exactly as before when relabelled v2.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use egress_policy::acl;
use egress_policy::address::{AddressPolicy, AddressRules};
use egress_policy::decision::{PolicyTable, Reason, Verdict};
use egress_policy::host;
use egress_policy::policy::{ActionSet, AddressSpec, PolicyVersion};
use egress_policy::table::{self, Metadata};
use proptest::prelude::*;

fn check(src: &str) -> acl::Checked {
    acl::check_source("p.yaml", src, ActionSet::default())
}

/// (code, line, column) of every diagnostic.
fn codes(src: &str) -> Vec<(String, u64, u64)> {
    check(src).diagnostics.into_iter().map(|d| (d.code.as_str().to_owned(), d.line, d.column)).collect()
}

fn has(src: &str, code: &str, line: u64) -> bool {
    let found = codes(src);
    let hit = found.iter().any(|(c, l, _)| c == code && *l == line);
    if !hit {
        eprintln!("{code} at line {line} not in {found:?}");
    }
    hit
}

const V2: &str = "\
version: v2
services:
  - name: ledger-sync
    project: payments
    action: enforce
    allowed_domains: [api.stripe.com, \"access-analyzer.*.amazonaws.com\"]
    allowed_ports: [443, \"8000-8099\"]
    internal_destinations:
      - host: ledger-replica.internal.example
        cidrs: [10.20.0.0/16]
        ports: [5432]
        reason: reads the ledger replica (JIRA-123)
  - name: reporter
    action: report
    allowed_domains: [api.stripe.com]
    allowed_ports: [443]
  - name: opener
    action: open
    allowed_ports: [443]
    allowed_domains: [api.stripe.com]
default:
  action: enforce
global_allow_list: [status.example.com]
global_deny_list: [bad.example.com]
network:
  deny_ranges: [203.0.113.0/24]
  allow_ranges: [100.64.0.0/16]
  deny_addresses: [\"198.51.100.7:25\"]
  allow_addresses: [192.0.2.10]
";

fn table_of(src: &str) -> PolicyTable {
    let checked = check(src);
    assert!(checked.diagnostics.iter().all(|d| !d.is_error()), "{:?}", checked.diagnostics);
    PolicyTable::new(&checked.policy.unwrap())
}

fn h(name: &str) -> host::CanonicalHost {
    host::canonical(name).unwrap()
}

#[test]
fn a_clean_v2_file_checks_without_diagnostics() {
    let checked = check(V2);
    // Only the (v1) warning about `allowed_domains` on the open rule.
    let found: Vec<_> = checked.diagnostics.iter().map(|d| (d.code.as_str(), d.line)).collect();
    assert_eq!(found, vec![("P105", 20)]);
    let policy = checked.policy.unwrap();
    assert_eq!(policy.version, PolicyVersion::V2);
    assert_eq!(policy.port_rule_count(), 3);
    assert_eq!(policy.internal_destination_count(), 1);
    assert_eq!(policy.network.rule_count(), 4);
    assert_eq!(policy.services[0].internal_destinations[0].reason, "reads the ledger replica (JIRA-123)");
}

#[test]
fn every_v2_error_is_reported_at_its_line() {
    let src = "\
version: v2
services:
  - name: a
    action: enforce
    allowed_ports: [0, 65536, \"9000-8000\", \"x\", 443]
    allowed_domains: [\"foo.*.com\", \"x.*.co.uk\"]
    internal_destinations:
      - host: \"*.internal.example\"
        cidrs: [10.0.0.1/8, \"::ffff:10.0.0.0/104\", nonsense]
        ports: [5432]
        reason: \"\"
      - host: db.internal.example
        cidrs: [10.1.0.0/16]
        ports: [5432]
      - host: db2.internal.example
        cidrs: []
        reason: r
default:
  action: enforce
network:
  deny_ranges: [10.0.0.1/8]
  allow_addresses: [\"1.2.3.4:0\", \"::ffff:10.0.0.1\"]
";
    let found = codes(src);
    for (code, line) in [
        ("P019", 5),
        ("P020", 5),
        ("P026", 6),
        ("P025", 8),
        ("P022", 9),
        ("P023", 9),
        ("P021", 9),
        ("P024", 11),
        ("P024", 12),
        ("P005", 15),
        ("P005", 16),
        ("P022", 21),
        ("P027", 22),
        ("P023", 22),
    ] {
        assert!(found.iter().any(|(c, l, _)| c == code && *l == line), "{code} at {line} missing from {found:?}");
    }
    // Three bad ports on line 5, each at its own column.
    assert_eq!(found.iter().filter(|(c, l, _)| c == "P019" && *l == 5).count(), 3, "{found:?}");
    assert!(check(src).policy.is_none(), "errors never yield a policy");
}

#[test]
fn diagnostics_have_fix_hints() {
    let src = "version: v2\nservices:\n  - name: a\n    action: enforce\n    allowed_ports: [\"90-80\"]\n    internal_destinations:\n      - host: db.example\n        cidrs: [10.0.0.1/8]\n        ports: [1]\n        reason: r\ndefault:\n  action: enforce\n";
    let checked = check(src);
    let help = |code: &str| {
        checked.diagnostics.iter().find(|d| d.code.as_str() == code).and_then(|d| d.help.clone()).unwrap_or_default()
    };
    assert_eq!(help("P020"), "write \"80-90\"");
    assert_eq!(help("P022"), "write \"10.0.0.0/8\"");
    let mapped = check(
        "version: v2\nservices: []\ndefault:\n  action: enforce\nnetwork:\n  allow_ranges: [\"::ffff:10.1.0.0/112\"]\n",
    );
    assert_eq!(mapped.diagnostics[0].help.as_deref(), Some("write \"10.1.0.0/16\""));
}

#[test]
fn v2_keys_in_a_v1_file_are_errors_that_say_so() {
    let src = "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_ports: [443]\ndefault:\n  action: enforce\nnetwork:\n  deny_ranges: []\n";
    let checked = check(src);
    let found: Vec<_> = checked.diagnostics.iter().map(|d| (d.code.as_str(), d.line)).collect();
    assert_eq!(found, vec![("P018", 5), ("P018", 8)]);
    assert!(checked.diagnostics[0].help.as_deref().unwrap().contains("version: v2"));
    // A middle wildcard keeps its v1 error in a v1 file.
    assert!(has(
        "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains: [\"a.*.example.com\"]\ndefault:\n  action: enforce\n",
        "P010",
        5
    ));
    assert!(has("version: v3\nservices: []\n", "P006", 1));
}

#[test]
fn wide_or_never_openable_exceptions_are_warnings() {
    let src = "\
version: v2
services:
  - name: a
    action: enforce
    internal_destinations:
      - host: db.example
        cidrs: [10.0.0.0/8, 169.254.0.0/16, 2001:db8::/32, 127.0.0.0/8, 10.9.0.0/16]
        ports: [5432]
        reason: r
default:
  action: enforce
";
    let checked = check(src);
    let found: Vec<_> = checked.diagnostics.iter().map(|d| (d.code.as_str(), d.column)).collect();
    assert_eq!(found.iter().filter(|(c, _)| *c == "P109").count(), 3, "{found:?}"); // /8, /32 (v6), 127/8
    assert_eq!(found.iter().filter(|(c, _)| *c == "P108").count(), 2, "{found:?}"); // 169.254/16, 127/8
    assert!(checked.policy.is_some(), "warnings do not block the policy");
    assert!(checked.diagnostics.iter().all(|d| !d.is_error()));
}

#[test]
fn exceptions_belong_to_services() {
    let src = "version: v2\nservices: []\ndefault:\n  action: enforce\n  internal_destinations: []\n";
    assert!(has(src, "P002", 5));
    let src = "version: v2\nservices:\n  - name: a\n    action: enforce\n    allowed_ports: []\ndefault:\n  action: enforce\n";
    assert!(has(src, "P005", 5), "an empty port list would deny every port");
}

#[test]
fn ports_decide_like_an_unlisted_host_under_the_action() {
    let t = table_of(V2);
    let stripe = h("api.stripe.com");
    let d = t.decide_at(Some("ledger-sync"), &stripe, 443);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::AllowedDomain));
    let d = t.decide_at(Some("ledger-sync"), &stripe, 8050);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::AllowedDomain));
    let d = t.decide_at(Some("ledger-sync"), &stripe, 22);
    assert_eq!((d.verdict, d.reason, d.reason.code()), (Verdict::Deny, Reason::PortNotAllowed, "port_not_allowed"));
    let d = t.decide_at(Some("reporter"), &stripe, 22);
    assert_eq!((d.verdict, d.reason), (Verdict::AllowAndReport, Reason::PortNotAllowed));
    let d = t.decide_at(Some("opener"), &stripe, 22);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::PortNotAllowed));
    // The global deny list still denies first, even under open.
    let d = t.decide_at(Some("opener"), &h("bad.example.com"), 22);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::GlobalDenyList));
    // The global allow list is subject to the role's ports too.
    let d = t.decide_at(Some("ledger-sync"), &h("status.example.com"), 25);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::PortNotAllowed));
    let d = t.decide_at(Some("ledger-sync"), &h("status.example.com"), 443);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::GlobalAllowList));
    // Middle wildcard: exactly one label.
    let d = t.decide_at(Some("ledger-sync"), &h("access-analyzer.eu-west-1.amazonaws.com"), 443);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::AllowedDomain));
    let d = t.decide_at(Some("ledger-sync"), &h("access-analyzer.amazonaws.com"), 443);
    assert_eq!(d.verdict, Verdict::Deny);
    // The port-agnostic decision ignores ports.
    assert_eq!(t.decide(Some("ledger-sync"), &stripe).reason, Reason::AllowedDomain);
    assert!(Reason::ALL.contains(&Reason::PortNotAllowed));
}

#[test]
fn internal_destinations_are_for_one_role_host_and_port() {
    let t = table_of(V2);
    let replica = h("ledger-replica.internal.example");
    let d = t.decide_at(Some("ledger-sync"), &replica, 5432);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::InternalDestination));
    assert_eq!(d.internal_destination.unwrap().reason, "reads the ledger replica (JIRA-123)");
    let d = t.decide_at(Some("ledger-sync"), &replica, 5433);
    assert_eq!((d.verdict, d.internal_destination), (Verdict::Deny, None));
    let d = t.decide_at(Some("reporter"), &replica, 5432);
    assert_eq!((d.verdict, d.internal_destination.is_none()), (Verdict::AllowAndReport, true));
    let d = t.decide_at(None, &replica, 5432);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::DefaultRulePolicy));
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn the_address_stage_opens_only_the_exception_networks() {
    let t = table_of(V2);
    let flags = AddressPolicy::new(AddressRules::default());
    let replica = h("ledger-replica.internal.example");
    let exception = t.decide_at(Some("ledger-sync"), &replica, 5432).internal_destination;
    let verdict = |addr: &str, exception| {
        let v = flags.classify_with(sock(addr), t.network(), exception);
        (v.allowed, v.rule.code())
    };
    assert_eq!(verdict("10.20.0.1:5432", exception), (true, "internal_destination"));
    assert_eq!(verdict("[::ffff:10.20.3.4]:5432", exception), (true, "internal_destination"));
    assert_eq!(verdict("10.21.0.1:5432", exception), (false, "private"), "another address of that host");
    assert_eq!(verdict("10.20.0.1:5432", None), (false, "private"), "without the exception");
    assert_eq!(verdict("[64:ff9b::a14:1]:5432", exception), (false, "private"), "NAT64 is not the CIDR");
}

#[test]
fn exceptions_never_open_the_never_openable_set_or_operator_denies() {
    let src = "\
version: v2
services:
  - name: a
    action: enforce
    internal_destinations:
      - host: db.example
        cidrs: [0.0.0.0/0, \"::/0\"]
        ports: [80]
        reason: a deliberately wide exception
default:
  action: enforce
";
    let t = table_of(src);
    let d = t.decide_at(Some("a"), &h("db.example"), 80);
    let exception = d.internal_destination;
    assert!(exception.is_some());
    let flags = AddressPolicy::new(AddressRules {
        deny_ranges: vec!["10.9.0.0/16".parse().unwrap()],
        self_addresses: vec![sock("127.0.0.1:4750")],
        ..AddressRules::default()
    });
    let verdict = |addr: &str| {
        let v = flags.classify_with(sock(addr), t.network(), exception);
        (v.allowed, v.rule.code())
    };
    for never in [
        "169.254.169.254:80",
        "[fd00:ec2::254]:80",
        "[::ffff:169.254.169.254]:80",
        "[64:ff9b::a9fe:a9fe]:80",
        "127.0.0.1:80",
        "[::1]:80",
        "0.0.0.0:80",
        "[::]:80",
        "224.0.0.1:80",
        "[ff02::1]:80",
        "255.255.255.255:80",
    ] {
        assert!(!verdict(never).0, "{never} must stay denied: {:?}", verdict(never));
    }
    assert_eq!(verdict("169.254.169.254:80"), (false, "never_openable"));
    assert_eq!(verdict("10.9.1.1:80"), (false, "operator_deny_range"), "flags are a floor");
    assert_eq!(verdict("10.8.1.1:80"), (true, "internal_destination"));
    assert_eq!(verdict("8.8.8.8:80"), (true, "global"));
}

#[test]
fn policy_network_rules_sit_under_the_flags() {
    let t = table_of(V2);
    let flags = AddressPolicy::new(AddressRules {
        deny_ranges: vec!["100.64.1.0/24".parse().unwrap()],
        allow_ranges: vec!["203.0.113.0/25".parse().unwrap()],
        ..AddressRules::default()
    });
    let verdict = |addr: &str| {
        let v = flags.classify_with(sock(addr), t.network(), None);
        (v.allowed, v.rule.code())
    };
    assert_eq!(verdict("100.64.0.1:443"), (true, "policy_allow_range"), "policy opens a built-in deny");
    assert_eq!(verdict("100.64.1.1:443"), (false, "operator_deny_range"), "never an operator deny");
    assert_eq!(verdict("203.0.113.1:443"), (false, "policy_deny_range"), "the policy can deny more");
    assert_eq!(verdict("198.51.100.7:25"), (false, "policy_deny_address"));
    assert_eq!(verdict("192.0.2.10:443"), (true, "policy_allow_address"));
    assert_eq!(verdict("8.8.8.8:443"), (true, "global"));
    // With no network rules and no exception, classify_with is classify.
    let v1 = table_of("version: v1\nservices: []\ndefault:\n  action: open\n");
    for addr in ["10.0.0.1:80", "8.8.8.8:443", "169.254.169.254:80"] {
        assert_eq!(flags.classify_with(sock(addr), v1.network(), None), flags.classify(sock(addr)));
    }
    let spec: AddressSpec = "198.51.100.7:25".parse().unwrap();
    assert_eq!(spec.port(), Some(25));
    let _ = IpAddr::from([0, 0, 0, 0]);
}

#[test]
fn v2_tables_round_trip() {
    let policy = check(V2).policy.unwrap();
    let meta = Metadata::for_source(Path::new("v2.yaml"), V2.as_bytes(), ActionSet::default());
    let bytes = table::encode(&policy, &meta);
    assert_eq!(bytes, table::encode(&policy, &meta), "deterministic");
    let loaded = table::decode(&bytes).unwrap();
    assert_eq!(loaded.header.format_version, 2);
    assert_eq!(loaded.policy.version, PolicyVersion::V2);
    assert_eq!(loaded.policy.network, policy.network);
    let original = PolicyTable::new(&policy);
    for (role, name, port) in [
        ("ledger-sync", "ledger-replica.internal.example", 5432),
        ("ledger-sync", "ledger-replica.internal.example", 5433),
        ("ledger-sync", "access-analyzer.x.amazonaws.com", 443),
        ("ledger-sync", "api.stripe.com", 22),
        ("reporter", "api.stripe.com", 22),
    ] {
        let a = original.decide_at(Some(role), &h(name), port);
        let b = loaded.table.decide_at(Some(role), &h(name), port);
        assert_eq!((a.verdict, a.reason), (b.verdict, b.reason), "{role} {name}:{port}");
        assert_eq!(a.internal_destination, b.internal_destination);
    }
}

/// Random v1 policies over a small alphabet, so hosts hit their entries.
fn v1_policy() -> impl Strategy<Value = String> {
    let entry = prop_oneof!["[ab]\\.(x|y)\\.com", "\\*\\.(x|y)\\.com", "(x|y)\\.com"];
    let action = prop_oneof![Just("open"), Just("report"), Just("enforce")];
    (
        prop::collection::vec((action.clone(), prop::collection::vec(entry.clone(), 0..4)), 0..3),
        action,
        prop::collection::vec(entry.clone(), 0..2),
        prop::collection::vec(entry, 0..2),
    )
        .prop_map(|(services, default, allow, deny)| {
            let list = |v: &[String]| {
                let mut v = v.to_vec();
                v.sort();
                v.dedup();
                format!("[{}]", v.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", "))
            };
            let mut out = String::from("version: v1\nservices:\n");
            for (i, (action, domains)) in services.iter().enumerate() {
                out += &format!("  - name: r{i}\n    action: {action}\n    allowed_domains: {}\n", list(domains));
            }
            if services.is_empty() {
                out = "version: v1\nservices: []\n".into();
            }
            out += &format!(
                "default:\n  action: {default}\nglobal_allow_list: {}\nglobal_deny_list: {}\n",
                list(&allow),
                list(&deny)
            );
            out
        })
}

proptest! {
    /// A v1 file and the same file labelled `version: v2` decide alike, at any port.
    #[test]
    fn v1_files_decide_the_same_as_v2(src in v1_policy(), name in "([ab]\\.)?(x|y|z)\\.com", port in 1u16..) {
        let v1 = check(&src);
        let v2 = check(&src.replacen("version: v1", "version: v2", 1));
        let codes = |c: &acl::Checked| c.diagnostics.iter().map(|d| (d.code, d.line, d.column)).collect::<Vec<_>>();
        prop_assert_eq!(codes(&v1), codes(&v2));
        let (Some(p1), Some(p2)) = (v1.policy, v2.policy) else { return Ok(()) };
        let (t1, t2) = (PolicyTable::new(&p1), PolicyTable::new(&p2));
        let host = h(&name);
        for role in [Some("r0"), Some("r1"), Some("zz"), None] {
            let a = t1.decide(role, &host);
            prop_assert_eq!(a, t2.decide(role, &host));
            prop_assert_eq!(a, t1.decide_at(role, &host, port));
            prop_assert_eq!(a, t2.decide_at(role, &host, port));
        }
    }

    /// Malformed v2 constructs are diagnostics, never a panic.
    #[test]
    fn malformed_v2_values_never_panic(
        port in "[-0-9a-z\" ]{0,8}",
        cidr in "[0-9a-f:./]{0,20}",
        host_text in "[a-z*.]{0,12}",
    ) {
        let src = format!(
            "version: v2\nservices:\n  - name: a\n    action: enforce\n    allowed_ports: [{port:?}]\n    allowed_domains: [{host_text:?}]\n    internal_destinations:\n      - host: {host_text:?}\n        cidrs: [{cidr:?}]\n        ports: [{port:?}]\n        reason: r\nnetwork:\n  allow_ranges: [{cidr:?}]\n  deny_addresses: [{cidr:?}]\n"
        );
        let checked = check(&src);
        prop_assert!(checked.policy.is_some() || checked.error_count() > 0);
    }
}

/// Found by the `acl_check` fuzz target: an exception's CIDRs written out of
/// the table's (sorted) order must not make the YAML and the table disagree
/// about the exception a decision reports.
#[test]
fn an_exception_decides_the_same_from_yaml_and_from_its_table_in_any_written_order() {
    let yaml = include_str!("../../fuzz/corpus/acl_check/v2-exception-order.yaml");
    let policy = check(yaml).policy.unwrap();
    let meta = Metadata::for_source(Path::new("v2.yaml"), yaml.as_bytes(), ActionSet::default());
    let loaded = table::decode(&table::encode(&policy, &meta)).unwrap();
    let direct = PolicyTable::new(&policy);
    for port in [443, 5432, 5433, 8080] {
        let host = h("db.example.org");
        assert_eq!(
            direct.decide_at(Some("svc"), &host, port),
            loaded.table.decide_at(Some("svc"), &host, port),
            "{port}"
        );
    }
}
