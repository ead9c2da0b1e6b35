//! `policyc coverage` through the real binary: entries with hits (wildcards
//! with their busiest hosts), unused entries, roles never seen, hosts that hit
//! the default rule, the JSON shape, and bad lines with --strict.

use serde_json::Value;

use crate::{assert_matches_schema, policyc};

const POLICY: &str = "\
version: v1
services:
  - name: billing
    project: payments
    action: enforce
    allowed_domains:
      - api.stripe.com
      - \"*.hooks.example.com\"
      - old.vendor.com
  - name: idle
    project: ops
    action: enforce
    allowed_domains: [idle.example.com]
default:
  project: other
  action: enforce
";

fn line(role: &str, host: &str, smokescreen: bool) -> String {
    let message = if smokescreen { "msg" } else { "message" };
    format!(
        "{{\"{message}\":\"CANONICAL-PROXY-DECISION\",\"role\":\"{role}\",\"requested_host\":\"{host}:443\",\"allow\":true,\"decision_reason\":\"host matched allowed domain in rule\",\"enforce_would_deny\":false}}\n"
    )
}

#[test]
fn entries_hits_unused_roles_never_seen_and_default_rule_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("acl.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut log = String::new();
    for _ in 0..12 {
        log.push_str(&line("billing", "api.stripe.com", false));
    }
    for (i, sub) in ["a", "b", "c", "d", "e", "f", "g"].iter().enumerate() {
        for _ in 0..=i {
            log.push_str(&line("billing", &format!("{sub}.hooks.example.com"), true));
        }
    }
    log.push_str(&line("stranger", "somewhere.test", true));
    log.push_str("not json at all\n");
    let log_path = dir.path().join("d.log");
    std::fs::write(&log_path, log).unwrap();
    let (policy, log_path) = (policy.to_str().unwrap(), log_path.to_str().unwrap());

    let run = policyc(&["coverage", "--format", "json", policy, log_path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_matches_schema("policyc-coverage.schema.json", &json);
    let billing = &json["roles"][0];
    assert_eq!(billing["role"], "billing");
    assert_eq!(billing["entries"][0], serde_json::json!({"pattern": "api.stripe.com", "hits": 12}));
    let hooks = &billing["entries"][1];
    assert_eq!(hooks["pattern"], "*.hooks.example.com");
    assert_eq!(hooks["hits"], 28);
    assert_eq!(hooks["distinct_hosts"], 7);
    let top: Vec<&str> = hooks["top_hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(
        top,
        [
            "g.hooks.example.com",
            "f.hooks.example.com",
            "e.hooks.example.com",
            "d.hooks.example.com",
            "c.hooks.example.com"
        ]
    );
    assert_eq!(billing["unused"], serde_json::json!(["old.vendor.com"]));
    assert_eq!(json["roles"][1]["unused"], serde_json::json!(["idle.example.com"]));
    assert_eq!(json["roles_never_seen"], serde_json::json!(["idle"]));
    assert_eq!(
        json["default_rule_hosts"],
        serde_json::json!([{"role": "stranger", "host": "somewhere.test", "hits": 1}])
    );
    assert_eq!(json["skipped_lines"], 1);
    assert_eq!(json["malformed_lines"], 0);

    let human = policyc(&["coverage", policy, log_path]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("  api.stripe.com: 12 hits\n"), "{}", human.stdout);
    assert!(
        human.stdout.contains("  *.hooks.example.com: 28 hits over 7 hosts: g.hooks.example.com (7)"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("  old.vendor.com: unused\n"));
    assert!(human.stdout.contains("roles never seen: idle\n"));
    assert!(human.stdout.contains("default rule: role stranger → somewhere.test: 1 hit\n"));
}

#[test]
fn a_compiled_table_works_and_strict_fails_on_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("acl.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let table = dir.path().join("acl.bin");
    let compile = policyc(&["compile", policy.to_str().unwrap(), "-o", table.to_str().unwrap()]);
    assert_eq!(compile.code, 0, "{}", compile.stderr);
    let log_path = dir.path().join("d.log");
    let log = format!("{}{{\"msg\":\"CANONICAL-PROXY-DECISION\"\n", line("billing", "api.stripe.com", false));
    std::fs::write(&log_path, log).unwrap();
    let run = policyc(&["coverage", "--format", "json", table.to_str().unwrap(), log_path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["roles"][0]["entries"][0]["hits"], 1);
    assert_eq!(json["malformed_lines"], 1);
    assert!(run.stderr.contains("d.log:2: invalid JSON"), "{}", run.stderr);
    let strict = policyc(&["coverage", "--strict", table.to_str().unwrap(), log_path.to_str().unwrap()]);
    assert_eq!(strict.code, 1, "{}", strict.stderr);
}
