//! Policy language v2 through the real `policyc`: new errors in every output
//! format (human, JSON, GitHub annotations, SARIF), `compile` and `inspect`,
//! `explain` with ports and `--ip`, `test` with ports and `ip`, and `diff`
//! of ports, exceptions and network rules with their reasons.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::policyc;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write fixture");
    path
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

const V2: &str = "\
version: v2
services:
  - name: ledger-sync
    project: payments
    action: enforce
    allowed_domains: [api.stripe.com, \"access-analyzer.*.amazonaws.com\"]
    allowed_ports: [443]
    internal_destinations:
      - host: ledger.internal.example
        cidrs: [10.20.0.0/24]
        ports: [5432]
        reason: reads the ledger replica (PAY-1)
default:
  project: other
  action: enforce
network:
  deny_ranges: [198.51.100.0/24]
";

const BROKEN: &str = "\
version: v2
services:
  - name: a
    action: enforce
    allowed_ports: [0]
    allowed_domains: [\"foo.*.com\"]
    internal_destinations:
      - host: db.example
        cidrs: [10.0.0.1/8]
        ports: [5432]
        reason: \"\"
default:
  action: enforce
";

#[test]
fn v2_errors_appear_in_every_format_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "broken.yaml", BROKEN);
    let file = s(&path);

    let human = policyc(&["check", file]);
    assert_eq!(human.code, 1, "{}", human.stderr);
    for (code, at) in [("P019", "5:21"), ("P026", "6:23"), ("P022", "9:17"), ("P024", "11:17")] {
        assert!(human.stderr.contains(&format!("error[{code}]")), "{code}: {}", human.stderr);
        assert!(human.stderr.contains(&format!("{file}:{at}")), "{code} at {at}: {}", human.stderr);
    }
    assert!(human.stderr.contains("help: write \"10.0.0.0/8\""), "{}", human.stderr);

    let json = policyc(&["check", "--format", "json", file]);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["errors"], 4, "{report}");

    let github = policyc(&["check", "--format", "github", file]);
    assert!(github.stdout.contains("::error file=") && github.stdout.contains("P026"), "{}", github.stdout);
    assert!(github.stdout.contains(",line=6,"), "{}", github.stdout);

    let sarif = policyc(&["check", "--format", "sarif", file]);
    let log: Value = serde_json::from_str(&sarif.stdout).unwrap();
    let rules: Vec<&str> =
        log["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap().iter().filter_map(|r| r["id"].as_str()).collect();
    for code in ["P018", "P019", "P020", "P021", "P022", "P023", "P024", "P025", "P026", "P027", "P108", "P109"] {
        assert!(rules.contains(&code), "SARIF rule {code} missing: {rules:?}");
    }
    let results = log["runs"][0]["results"].as_array().unwrap();
    assert!(
        results
            .iter()
            .any(|r| r["ruleId"] == "P024" && r["locations"][0]["physicalLocation"]["region"]["startLine"] == 11)
    );
}

#[test]
fn warnings_about_exceptions_fail_under_deny_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let wide = V2.replace("10.20.0.0/24", "10.0.0.0/8");
    let path = write(dir.path(), "wide.yaml", &wide);
    assert_eq!(policyc(&["check", s(&path)]).code, 0);
    let run = policyc(&["check", "--deny-warnings", s(&path)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("warning[P109]"), "{}", run.stderr);
}

#[test]
fn compile_inspect_and_explain_a_v2_policy() {
    let dir = tempfile::tempdir().unwrap();
    let acl = write(dir.path(), "v2.yaml", V2);
    let table = dir.path().join("v2.bin");
    assert_eq!(policyc(&["compile", s(&acl), "-o", s(&table)]).code, 0);
    let inspect: Value = serde_json::from_str(&policyc(&["inspect", "--format", "json", s(&table)]).stdout).unwrap();
    assert_eq!(inspect["format_version"], 2);
    assert_eq!(inspect["language_version"], "v2");
    assert_eq!((inspect["rules_with_ports"].as_u64(), inspect["internal_destinations"].as_u64()), (Some(1), Some(1)));
    assert_eq!(inspect["network_rules"], 1);

    // Both the YAML and the table explain the same, with the exception's reason.
    for policy in [s(&acl), s(&table)] {
        let run = policyc(&[
            "explain",
            "--format",
            "json",
            policy,
            "ledger-sync",
            "ledger.internal.example:5432",
            "--ip",
            "10.20.0.9",
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let e: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!((e["decision"].as_str(), e["reason_code"].as_str()), (Some("allow"), Some("internal_destination")));
        assert_eq!(e["internal_destination"]["reason"], "reads the ledger replica (PAY-1)");
        assert_eq!(e["address"]["allowed"], true, "{e}");
        assert_eq!(e["address"]["rule_code"], "internal_destination");
        assert_eq!(e["address"]["internal_destination_reason"], "reads the ledger replica (PAY-1)");
    }
    let explain = |dest: &str, ip: &str| -> Value {
        let run = policyc(&["explain", "--format", "json", s(&acl), "ledger-sync", dest, "--ip", ip]);
        serde_json::from_str(&run.stdout).unwrap()
    };
    let e = explain("ledger.internal.example:5432", "10.21.0.1");
    assert_eq!((e["decision"].as_str(), e["address"]["allowed"].as_bool()), (Some("allow"), Some(false)));
    let e = explain("api.stripe.com:8443", "8.8.8.8");
    assert_eq!((e["decision"].as_str(), e["reason_code"].as_str()), (Some("deny"), Some("port_not_allowed")));
    let e = explain("api.stripe.com:443", "198.51.100.1");
    assert_eq!(e["address"]["rule_code"], "policy_deny_range", "{e}");
    let human = policyc(&["explain", s(&acl), "ledger-sync", "ledger.internal.example:5432", "--ip", "10.20.0.9"]);
    assert!(human.stdout.contains("reason: reads the ledger replica (PAY-1)"), "{}", human.stdout);
}

#[test]
fn policy_tests_name_ports_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let acl = write(dir.path(), "v2.yaml", V2);
    let tests = write(
        dir.path(),
        "t.yaml",
        "tests:\n  - role: ledger-sync\n    destination: ledger.internal.example:5432\n    ip: 10.20.0.1\n    decision: allow\n  - role: ledger-sync\n    destination: ledger.internal.example:5432\n    ip: 10.99.0.1\n    decision: allow\n  - role: ledger-sync\n    destination: api.stripe.com:22\n    decision: deny\n    reason: port_not_allowed\n",
    );
    let run = policyc(&["test", "--format", "json", s(&acl), s(&tests)]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.iter().map(|c| c["passed"].as_bool().unwrap()).collect::<Vec<_>>(), [true, false, true]);
    assert_eq!(cases[1]["actual"]["decision"], "deny");
    assert_eq!(cases[1]["actual"]["address"]["rule_code"], "private");
    let bad = write(
        dir.path(),
        "bad.yaml",
        "tests:\n  - role: a\n    destination: a.com\n    ip: nope\n    decision: allow\n",
    );
    let run = policyc(&["test", s(&acl), s(&bad)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("error[P014]") && run.stderr.contains(":4:9"), "{}", run.stderr);
}

#[test]
fn diff_shows_ports_exceptions_and_network_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.yaml", V2);
    let changed = V2
        .replace("allowed_ports: [443]", "allowed_ports: [443, 8443]")
        .replace("reads the ledger replica (PAY-1)", "reads and writes the ledger (PAY-2)")
        .replace("198.51.100.0/24", "198.51.100.0/25");
    let new = write(dir.path(), "new.yaml", &changed);
    let run = policyc(&["diff", s(&old), s(&new)]);
    assert!(run.stdout.contains("allowed_ports 443 → 443, 8443"), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "+ ledger.internal.example ports 5432 cidrs [10.20.0.0/24] (reason: reads and writes the ledger (PAY-2))"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "- ledger.internal.example ports 5432 cidrs [10.20.0.0/24] (reason: reads the ledger replica (PAY-1))"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("network: changed") && run.stdout.contains("+ deny_range 198.51.100.0/25"),
        "{}",
        run.stdout
    );
    let json: Value = serde_json::from_str(&policyc(&["diff", "--format", "json", s(&old), s(&new)]).stdout).unwrap();
    assert_eq!(json["network"]["removed"][0], "deny_range 198.51.100.0/24", "{json}");
    assert_eq!(json["services"][0]["allowed_ports"]["new"], "443, 8443");
    // A port change is a decision change, shown at a port that changed.
    assert_eq!(json["decision_changes"], true, "{json}");
    let changes = json["decisions"][0]["changes"].as_array().unwrap();
    let at_8443 = changes.iter().find(|c| c["host"] == "api.stripe.com:8443").expect("api.stripe.com:8443 changes");
    assert_eq!(
        (at_8443["old"]["reason_code"].as_str(), at_8443["new"]["decision"].as_str()),
        (Some("port_not_allowed"), Some("allow"))
    );
    assert!(changes.iter().all(|c| c["host"] != "api.stripe.com:443"), "443 did not change: {changes:?}");
    let exit = policyc(&["diff", "--exit-code", s(&old), s(&new)]);
    assert_eq!(exit.code, 1, "{}", exit.stderr);
}
