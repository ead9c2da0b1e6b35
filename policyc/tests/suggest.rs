//! `policyc suggest` through the real binary: proxyd and Smokescreen log
//! lines, the text editor's byte-for-byte preservation, the public-suffix and
//! global-deny guards, gzip, bad lines, and the flags.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::{assert_matches_schema, policyc};

const POLICY: &str = "\
# Egress policy for the payments team.
version: v1
services:
  # Billing talks to Stripe.
  - name: billing
    project: payments   # owner
    action: report
    allowed_domains:
      - api.stripe.com    # the API
      - \"*.hooks.example.com\"
  - name: search
    project: web
    action: report
    allowed_domains: [a.example.org, 'b.example.org']  # flow
  - name: cron
    project: ops
    action: enforce

default:
  project: other
  action: report
global_deny_list:
  - \"*.evil.example\"
  - blocked.example.net
";

/// A proxyd (tracing JSON) decision line.
fn proxyd_line(role: &str, host: &str, allow: bool, would_deny: bool, reason: &str, time: &str) -> String {
    serde_json::json!({
        "timestamp": time, "level": "INFO", "message": "CANONICAL-PROXY-DECISION", "id": "0123456789abcdef",
        "proxy_type": "connect", "role": role, "project": "p", "requested_host": host, "allow": allow,
        "decision_reason": reason, "enforce_would_deny": would_deny, "default_rule": false, "policy_revision": "abc"
    })
    .to_string()
}

/// A Smokescreen (logrus JSON) decision line.
fn smokescreen_line(role: &str, host: &str, allow: bool, would_deny: bool, reason: &str, time: &str) -> String {
    serde_json::json!({
        "allow": allow, "decision_reason": reason, "enforce_would_deny": would_deny, "id": "cmd0123456789abcdefg",
        "inbound_remote_addr": "127.0.0.1:5555", "level": "info", "msg": "CANONICAL-PROXY-DECISION",
        "project": "p", "proxy_type": "connect", "requested_host": host, "role": role,
        "start_time": time, "time": time, "trace_id": ""
    })
    .to_string()
}

fn report(role: &str, host: &str) -> String {
    proxyd_line(role, host, true, true, "rule has allow and report policy", "2026-11-21T10:00:00.25Z")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn lines(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn proxyd_and_smokescreen_lines_become_entries_and_every_other_line_stays_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let log = write(
        dir.path(),
        "decisions.log",
        &lines(&[
            report("billing", "files.stripe.com:443"),
            smokescreen_line(
                "billing",
                "FILES.stripe.com.:443",
                true,
                true,
                "rule has allow and report policy",
                "2026-11-22T08:30:00Z",
            ),
            // Already allowed by the policy at hand: never suggested.
            report("billing", "api.stripe.com:443"),
            report("billing", "x.hooks.example.com:443"),
            smokescreen_line(
                "search",
                "c.example.org:443",
                true,
                true,
                "rule has allow and report policy",
                "2026-11-21T09:00:00Z",
            ),
            report("newbie", "api.newbie.test:8443"),
            "{\"msg\":\"starting\",\"level\":\"info\"}".to_owned(),
            "plain text from something else".to_owned(),
        ]),
    );
    let run = policyc(&["suggest", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = run.stdout;

    // Every original line is still there, in order, byte for byte, except the flow list line.
    let flow_line = "    allowed_domains: [a.example.org, 'b.example.org']  # flow";
    let kept: Vec<&str> = POLICY.lines().filter(|l| *l != flow_line).collect();
    let mut out_lines = out.lines();
    for line in &kept {
        assert!(out_lines.any(|o| o == *line), "line {line:?} was changed or moved:\n{out}");
    }
    assert!(out.contains(
        "      - files.stripe.com # suggested: 2 hits, first seen 2026-11-21T10:00:00Z, last seen 2026-11-22T08:30:00Z\n"
    ));
    // The flow list became a block list; its items and comment kept as written.
    assert!(out.contains("    allowed_domains: # flow\n      - a.example.org\n      - 'b.example.org'\n      - 'c.example.org' # suggested: 1 hit"), "{out}");
    assert!(out.contains("  - name: newbie\n    project: other\n    action: report\n    allowed_domains:\n      - api.newbie.test # suggested: 1 hit"), "{out}");
    assert!(!out.contains("- api.stripe.com #"), "already allowed hosts are not suggested");
    assert!(!out.contains("x.hooks.example.com"));
    // The policyc diff summary goes to stderr.
    assert!(
        run.stderr.contains("role billing: changed") && run.stderr.contains("+ files.stripe.com"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("2 other lines skipped, 0 malformed"), "{}", run.stderr);

    // The output passes check and allows exactly what was added.
    let out_path = write(dir.path(), "out.yaml", &out);
    let check = policyc(&["check", "--deny-warnings", &out_path]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    for (role, host, expected) in [
        ("billing", "files.stripe.com:443", "allow"),
        ("search", "c.example.org:443", "allow"),
        ("newbie", "api.newbie.test:443", "allow"),
        ("newbie", "other.newbie.test:443", "report"),
    ] {
        let explain = policyc(&["explain", "--format", "json", &out_path, role, host]);
        let decision: Value = serde_json::from_str(&explain.stdout).unwrap();
        assert_eq!(decision["decision"], expected, "{role} {host}: {decision}");
    }
    // The input was not touched.
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), POLICY);
}

#[test]
fn crlf_files_keep_their_line_endings() {
    let dir = tempfile::tempdir().unwrap();
    let crlf = POLICY.replace('\n', "\r\n");
    let policy = write(dir.path(), "acl.yaml", &crlf);
    let log = write(dir.path(), "d.log", &lines(&[report("billing", "files.stripe.com:443")]));
    let run = policyc(&["suggest", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.replace("\r\n", "").contains('\n'), "every line ends in CRLF");
    assert_eq!(run.stdout.replace("\r\n", "\n").lines().count(), POLICY.lines().count() + 1);
}

#[test]
fn collapse_never_goes_above_a_registrable_domain_or_over_the_deny_list() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let mut log = Vec::new();
    for host in ["a.co.uk", "b.co.uk", "c.co.uk", "x.com", "y.com", "z.com"] {
        log.push(report("cron2", &format!("{host}:443")));
    }
    for sub in ["a", "b", "c"] {
        log.push(report("cron2", &format!("{sub}.cdn.vendor.test:443")));
        // `*.example.net` would override the deny entry blocked.example.net.
        log.push(report("cron2", &format!("{sub}.example.net:443")));
    }
    let log = write(dir.path(), "d.log", &lines(&log));
    let run = policyc(&["suggest", "--collapse", "3", "--format", "json", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_matches_schema("policyc-suggest.schema.json", &json);
    let patterns: Vec<&str> =
        json["roles"][0]["entries"].as_array().unwrap().iter().map(|e| e["pattern"].as_str().unwrap()).collect();
    assert!(patterns.contains(&"*.cdn.vendor.test"), "{patterns:?}");
    for host in ["a.co.uk", "b.co.uk", "c.co.uk", "x.com", "a.example.net"] {
        assert!(patterns.contains(&host), "{host} stays exact: {patterns:?}");
    }
    assert!(!patterns.iter().any(|p| *p == "*.co.uk" || *p == "*.com" || *p == "*.example.net"), "{patterns:?}");
    let refused: Vec<(&str, &str)> = json["collapse_refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["pattern"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert!(refused.contains(&("*.co.uk", "public_suffix")), "{refused:?}");
    assert!(refused.contains(&("*.com", "public_suffix")), "{refused:?}");
    assert!(refused.contains(&("*.example.net", "global_deny_list")), "{refused:?}");
    let wildcard = json["roles"][0]["entries"].as_array().unwrap().iter().find(|e| e["pattern"] == "*.cdn.vendor.test");
    assert_eq!(wildcard.unwrap()["hosts"].as_array().unwrap().len(), 3);
}

#[test]
fn globally_denied_hosts_are_never_suggested() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let log = write(
        dir.path(),
        "d.log",
        &lines(&[
            // A log from another policy claims these were only reported.
            report("billing", "x.evil.example:443"),
            report("billing", "blocked.example.net:443"),
        ]),
    );
    let run = policyc(&["suggest", "--format", "json", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["roles"], serde_json::json!([]));
    assert_eq!(json["globally_denied"].as_array().unwrap().len(), 2, "{json}");
    assert!(run.stderr.contains("x.evil.example is in the global deny list"), "{}", run.stderr);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn gzip_logs_are_read_and_a_truncated_one_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let text = lines(&(0..200).map(|i| report("billing", &format!("h{i}.files.test:443"))).collect::<Vec<_>>());
    let compressed = gzip(text.as_bytes());
    let good = dir.path().join("d.log.gz");
    std::fs::write(&good, &compressed).unwrap();
    let run = policyc(&["suggest", "--format", "json", &policy, good.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["roles"][0]["entries"].as_array().unwrap().len(), 200);
    assert_eq!(json["lines"]["decisions"], 200);

    let truncated = dir.path().join("cut.log.gz");
    std::fs::write(&truncated, &compressed[..compressed.len() / 2]).unwrap();
    let run = policyc(&["suggest", &policy, truncated.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("cut.log.gz") && run.stderr.contains("truncated"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn bad_lines_are_counted_reported_with_file_line_and_fail_only_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let mut log = vec![report("billing", "good.test:443")];
    log.push("{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":".to_owned()); // line 2: cut JSON
    log.push(
        "{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":\"billing\",\"allow\":true,\"decision_reason\":\"x\"}"
            .to_owned(),
    ); // 3: no host
    log.push(report("billing", "bad host:443")); // 4
    log.push(report("billing", "0x7f.0.0.1:443")); // 5: ambiguous IPv4
    for _ in 0..3 {
        log.push("CANONICAL-PROXY-DECISION but text".to_owned()); // 6-8
    }
    let log_path = write(dir.path(), "bad.log", &lines(&log));
    let run = policyc(&["suggest", "--format", "json", &policy, &log_path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("7 malformed"), "{}", run.stderr);
    for line in 2..=6 {
        assert!(run.stderr.contains(&format!("bad.log:{line}: ")), "line {line}: {}", run.stderr);
    }
    assert!(!run.stderr.contains("bad.log:7: "), "only the first five are shown");
    assert!(run.stderr.contains("and 2 more malformed"), "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_matches_schema("policyc-suggest.schema.json", &json);
    assert_eq!(json["lines"]["malformed"], 7);
    assert_eq!(json["roles"][0]["entries"][0]["pattern"], "good.test");

    let out = dir.path().join("out.yaml");
    let strict = policyc(&["suggest", "--strict", "-o", out.to_str().unwrap(), &policy, &log_path]);
    assert_eq!(strict.code, 1, "{}", strict.stderr);
    assert!(!out.exists(), "--strict writes nothing");
}

#[test]
fn an_overlong_line_is_capped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let huge = format!("{{\"msg\":\"CANONICAL-PROXY-DECISION\",\"pad\":\"{}\"}}", "A".repeat(8 * 1024 * 1024));
    let log = write(dir.path(), "huge.log", &lines(&[huge, report("billing", "after.test:443")]));
    let run = policyc(&["suggest", "--format", "json", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("huge.log:1: line longer than"), "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["roles"][0]["entries"][0]["pattern"], "after.test");
}

#[test]
fn min_count_role_filter_and_include_denied() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let denied =
        |host: &str| smokescreen_line("cron", host, false, true, "rule has enforce policy", "2026-11-21T10:00:00Z");
    let log = write(
        dir.path(),
        "d.log",
        &lines(&[
            report("billing", "often.test:443"),
            report("billing", "often.test:443"),
            report("billing", "once.test:443"),
            report("search", "often.test:443"),
            report("search", "often.test:443"),
            denied("needed.test:443"),
            denied("needed.test:443"),
        ]),
    );
    let run = policyc(&["suggest", "--format", "json", "--min-count", "2", "--role", "billing", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_matches_schema("policyc-suggest.schema.json", &json);
    assert_eq!(json["roles"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["roles"][0]["role"], "billing");
    assert_eq!(json["roles"][0]["entries"][0]["pattern"], "often.test");
    assert_eq!(json["roles"][0]["entries"][0]["hits"], 2);
    assert_eq!(json["below_min_count"], serde_json::json!([{"role": "billing", "host": "once.test", "hits": 1}]));
    assert!(run.stderr.contains("below --min-count: role billing → once.test"), "{}", run.stderr);
    assert_eq!(json["lines"]["filtered_out"], 4);

    // Denied lines of an enforce role count only with --include-denied.
    let without = policyc(&["suggest", "--format", "json", "--role", "cron", &policy, &log]);
    let json: Value = serde_json::from_str(&without.stdout).unwrap();
    assert_eq!(json["roles"], serde_json::json!([]));
    let with = policyc(&["suggest", "--format", "json", "--role", "cron", "--include-denied", &policy, &log]);
    let json: Value = serde_json::from_str(&with.stdout).unwrap();
    assert_eq!(json["roles"][0]["entries"][0]["pattern"], "needed.test", "{json}");
    assert_eq!(json["roles"][0]["service_exists"], true);
}

#[test]
fn output_is_written_atomically_the_input_untouched_and_a_diff_applies() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let log = write(dir.path(), "d.log", &lines(&[report("billing", "files.stripe.com:443")]));
    let out = dir.path().join("new.yaml");
    let run = policyc(&["suggest", "-o", out.to_str().unwrap(), &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), POLICY);
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("- files.stripe.com # suggested: 1 hit"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 3, "no temporary file left behind: {leftovers:?}");
    assert_eq!(policyc(&["check", out.to_str().unwrap()]).code, 0);

    let diff = policyc(&["suggest", "--format", "diff", &policy, &log]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    assert!(diff.stdout.starts_with("--- a/"), "{}", diff.stdout);
    assert!(diff.stdout.contains("@@ -8,6 +8,7 @@\n"), "{}", diff.stdout);
    assert!(diff.stdout.contains("\n+      - files.stripe.com # suggested: 1 hit"), "{}", diff.stdout);
    assert_eq!(diff.stdout.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count(), 1);
}

#[test]
fn stdin_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "acl.yaml", POLICY);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_policyc"))
        .args(["suggest", "--format", "json", &policy, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lines(&[report("billing", "stdin.test:443")]).as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["roles"][0]["entries"][0]["pattern"], "stdin.test");

    assert_eq!(policyc(&["suggest", &policy, "/nonexistent/log"]).code, 2);
    assert_eq!(policyc(&["suggest", "--collapse", "1", &policy, &policy]).code, 2);
    assert_eq!(policyc(&["suggest", "--min-count", "0", &policy, &policy]).code, 2);
    let broken = write(dir.path(), "broken.yaml", "version: v1\nservices:\n  - name: a\n    action: nope\n");
    assert_eq!(policyc(&["suggest", &broken, &policy]).code, 1);
}

/// Every accepted policy in the repository (shipped policies, fixtures in
/// Smokescreen's and our own layouts) takes additions to each service and a
/// new service, and the result still passes the checker and allows them.
#[test]
fn every_policy_in_the_repository_can_be_extended_and_still_checks() {
    use egress_policy::decision::{PolicyTable, Reason};
    use egress_policy::policy::port_allowed;
    use egress_policy::policy::{Action, ActionSet};
    use egress_policy::{acl, host};
    use policyc::suggest::{Plan, RoleSuggestion, SuggestedEntry, SuggestedPort};

    fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                yaml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let entry = |pattern: &str, host: &str| SuggestedEntry {
        pattern: pattern.into(),
        hits: 2,
        first_seen: None,
        last_seen: None,
        hosts: vec![host.into()],
    };
    let mut files = Vec::new();
    for dir in ["policies", "tests/fixtures", "deploy"] {
        yaml_files(&crate::repo_root().join(dir), &mut files);
    }
    let mut edited_count = 0;
    let mut ports_added = 0;
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        let Some(policy) = acl::check_source("p.yaml", &source, ActionSet::default()).policy else { continue };
        let mut roles: Vec<RoleSuggestion> = policy
            .services
            .iter()
            .map(|s| RoleSuggestion {
                role: s.name.clone(),
                service_exists: true,
                new_service_action: None,
                new_service_project: None,
                entries: vec![entry("added.example", "added.example"), entry("*.wild.example", "a.wild.example")],
                // A service that lists ports gets one more, in its list's own style.
                ports: if s.allowed_ports.is_empty() || port_allowed(&s.allowed_ports, 65001) {
                    Vec::new()
                } else {
                    vec![SuggestedPort {
                        port: 65001,
                        hits: 2,
                        first_seen: None,
                        last_seen: None,
                        hosts: vec!["added.example".into()],
                    }]
                },
            })
            .collect();
        roles.push(RoleSuggestion {
            role: "brand-new role: \"x\"".into(),
            service_exists: false,
            new_service_action: Some(Action::Enforce),
            new_service_project: Some("team".into()),
            entries: vec![entry("new.example", "new.example")],
            ports: Vec::new(),
        });
        let plan = Plan { roles, ..Plan::default() };
        let edited = policyc::policy_edit::apply(&source, &plan).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let checked = acl::check_source("edited.yaml", &edited.text, ActionSet::default());
        let new_policy =
            checked.policy.unwrap_or_else(|| panic!("{}: {:?}\n{}", file.display(), checked.diagnostics, edited.text));
        let table = PolicyTable::new(&new_policy);
        for role in &plan.roles {
            for e in &role.entries {
                let h = host::canonical(&e.hosts[0]).unwrap();
                assert_eq!(table.decide(Some(&role.role), &h).reason, Reason::AllowedDomain, "{}", file.display());
            }
            for p in &role.ports {
                let h = host::canonical(&p.hosts[0]).unwrap();
                let decided = table.decide_at(Some(&role.role), &h, p.port).reason;
                assert_eq!(decided, Reason::AllowedDomain, "{}: port {}", file.display(), p.port);
                ports_added += 1;
            }
        }
        // Lines outside the edits are the original lines, in order.
        let kept: Vec<&str> = source.lines().collect();
        let mut out = edited.text.lines();
        let mut removed: std::collections::HashSet<usize> = std::collections::HashSet::new();
        for edit in &edited.edits {
            removed.extend(edit.start..edit.start + edit.removed);
        }
        for (i, line) in kept.iter().enumerate().filter(|(i, _)| !removed.contains(i)) {
            assert!(out.any(|o| o == *line), "{}: line {} changed", file.display(), i + 1);
        }
        edited_count += 1;
    }
    assert!(edited_count >= 20, "only {edited_count} policies found");
    assert!(ports_added >= 1, "no shipped policy lists allowed_ports");
}

#[test]
fn a_shared_yaml_anchor_is_never_widened_for_other_services() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "acl.yaml",
        "version: v1\nservices:\n  - name: a\n    project: p\n    action: report\n    allowed_domains: &shared\n      - one.test\n  - name: b\n    project: p\n    action: report\n    allowed_domains: *shared\ndefault:\n  project: other\n  action: enforce\n",
    );
    for role in ["a", "b"] {
        let log = write(dir.path(), "d.log", &lines(&[report(role, "two.test:443")]));
        let out = dir.path().join("out.yaml");
        let run = policyc(&["suggest", "-o", out.to_str().unwrap(), &policy, &log]);
        assert_eq!(run.code, 1, "role {role}: {}", run.stderr);
        assert!(run.stderr.contains("anchor or alias") && run.stderr.contains("nothing written"), "{}", run.stderr);
        assert!(!out.exists());
    }
}

/// A v2 policy: `api` lists ports (block or flow list, per `ports_style`), `worker` does not.
fn v2_policy(ports_style: &str) -> String {
    format!(
        "\
# v2: ports per role.
version: v2
services:
  - name: api
    project: p
    action: report
    allowed_domains:
      - api.example.com   # the API
{ports_style}    # api ends here
  - name: worker
    project: p
    action: report
    allowed_domains:
      - jobs.example.com
default:
  project: other
  action: enforce
"
    )
}

fn v2_logs() -> String {
    let line = |role: &str, host: &str, reason: &str, would_deny: bool, time: &str| {
        proxyd_line(role, host, true, would_deny, reason, time)
    };
    let mut out = Vec::new();
    for role in ["api", "worker"] {
        let listed = if role == "api" { "api.example.com" } else { "jobs.example.com" };
        out.push(line(
            role,
            &format!("{listed}:443"),
            "host matched allowed domain in rule",
            false,
            "2026-11-21T10:00:00Z",
        ));
        // Allowed host, port outside the list: reported only where the role lists ports.
        let (reason, would_deny) = if role == "api" {
            ("port not in rule's allowed ports", true)
        } else {
            ("host matched allowed domain in rule", false)
        };
        out.push(line(role, &format!("{listed}:8443"), reason, would_deny, "2026-11-21T10:01:00Z"));
        out.push(line(role, &format!("{listed}:8443"), reason, would_deny, "2026-11-21T10:02:00Z"));
        // A new host on a new port: the host is suggested, and (api only) the port.
        out.push(line(role, "db.example.com:5432", "rule has allow and report policy", true, "2026-11-21T10:03:00Z"));
    }
    lines(&out)
}

#[test]
fn v2_ports_are_suggested_only_for_roles_that_list_ports_in_block_and_flow_lists() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "decisions.log", &v2_logs());
    let block = "    allowed_ports:\n      - 443   # https\n";
    let flow = "    allowed_ports: [443]  # https only\n";
    for (style, ports_style) in [("block", block), ("flow", flow)] {
        let source = v2_policy(ports_style);
        let policy = write(dir.path(), &format!("{style}.yaml"), &source);
        let out = dir.path().join(format!("{style}-out.yaml"));
        let out_path = out.to_str().unwrap();
        let run = policyc(&["suggest", "-o", out_path, &policy, &log]);
        assert_eq!(run.code, 0, "{style}: {}", run.stderr);
        assert!(run.stderr.contains("2 entries and 2 ports for 2 roles"), "{style}: {}", run.stderr);
        let edited = std::fs::read_to_string(&out).unwrap();

        let expected_ports = if style == "block" {
            "    allowed_ports:\n      - 443   # https\n      - 5432 # suggested: 1 hit, first seen 2026-11-21T10:03:00Z, last seen 2026-11-21T10:03:00Z\n      - 8443 # suggested: 2 hits, first seen 2026-11-21T10:01:00Z, last seen 2026-11-21T10:02:00Z\n".to_owned()
        } else {
            "    allowed_ports: [443, 5432, 8443]  # https only # suggested: 5432 (1 hit, first seen 2026-11-21T10:03:00Z, last seen 2026-11-21T10:03:00Z); 8443 (2 hits, first seen 2026-11-21T10:01:00Z, last seen 2026-11-21T10:02:00Z)\n".to_owned()
        };
        assert!(edited.contains(&expected_ports), "{style}:\n{edited}");
        // Every original line but a replaced flow line is still there, byte for byte, in order.
        let mut rest = edited.as_str();
        for line in source.split_inclusive('\n').filter(|l| style == "block" || *l != flow) {
            let at = rest.find(line).unwrap_or_else(|| panic!("{style}: {line:?} lost:\n{edited}"));
            rest = &rest[at + line.len()..];
        }
        // The worker (no allowed_ports: any port) gets its host and no ports key.
        let worker = &edited[edited.find("- name: worker").unwrap()..];
        assert!(!worker.contains("allowed_ports"), "{style}:\n{edited}");
        assert!(worker.contains("- db.example.com # suggested: 1 hit"), "{style}:\n{edited}");

        let check = policyc(&["check", "--deny-warnings", out_path]);
        assert_eq!(check.code, 0, "{style}: {}{}", check.stdout, check.stderr);
        for destination in ["api.example.com:8443", "db.example.com:5432", "api.example.com:5432"] {
            let explain = policyc(&["explain", out_path, "api", destination, "--format", "json"]);
            assert_eq!(explain.code, 0, "{style}: {}", explain.stderr);
            let decided: Value = serde_json::from_str(&explain.stdout).unwrap();
            assert_eq!(decided["reason_code"], "allowed_domain", "{style} {destination}: {decided}");
        }
        let before = policyc(&["explain", &policy, "api", "api.example.com:8443", "--format", "json"]);
        let before: Value = serde_json::from_str(&before.stdout).unwrap();
        assert_eq!(before["reason_code"], "port_not_allowed");

        // The same additions as data.
        let json = policyc(&["suggest", "--format", "json", &policy, &log]);
        assert_eq!(json.code, 0, "{}", json.stderr);
        let report: Value = serde_json::from_str(&json.stdout).unwrap();
        assert_matches_schema("policyc-suggest.schema.json", &report);
        let roles = report["roles"].as_array().unwrap();
        let api = roles.iter().find(|r| r["role"] == "api").unwrap();
        let ports: Vec<(u64, u64)> = api["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_u64().unwrap(), p["hits"].as_u64().unwrap()))
            .collect();
        assert_eq!(ports, vec![(5432, 1), (8443, 2)]);
        assert_eq!(api["ports"][0]["hosts"], serde_json::json!(["db.example.com"]));
        assert_eq!(api["ports"][1]["hosts"], serde_json::json!(["api.example.com"]));
        let worker = roles.iter().find(|r| r["role"] == "worker").unwrap();
        assert_eq!(worker["ports"], serde_json::json!([]));
    }
}

#[test]
fn v2_ports_below_min_count_are_left_out_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "decisions.log", &v2_logs());
    let policy = write(dir.path(), "acl.yaml", &v2_policy("    allowed_ports: [443]\n"));
    let run = policyc(&["suggest", "--min-count", "2", "--format", "json", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_matches_schema("policyc-suggest.schema.json", &report);
    // db.example.com (1 hit) is below the count, so is its port; 8443 on the listed host is kept.
    let api = report["roles"].as_array().unwrap().iter().find(|r| r["role"] == "api").unwrap().clone();
    assert_eq!(api["ports"].as_array().unwrap().len(), 1);
    assert_eq!(api["ports"][0]["port"], 8443);
    assert!(run.stderr.contains("below --min-count: role api → db.example.com (1 hit(s))"), "{}", run.stderr);
}

#[test]
fn v2_a_pair_reached_on_too_many_ports_is_bounded_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for port in 10_000..10_070u16 {
        out.push(proxyd_line(
            "api",
            &format!("api.example.com:{port}"),
            true,
            true,
            "port not in rule's allowed ports",
            "2026-11-21T10:00:00Z",
        ));
    }
    let log = write(dir.path(), "scan.log", &lines(&out));
    let policy = write(dir.path(), "acl.yaml", &v2_policy("    allowed_ports: [443]\n"));
    let run = policyc(&["suggest", "--format", "json", &policy, &log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_matches_schema("policyc-suggest.schema.json", &report);
    assert_eq!(report["roles"][0]["ports"].as_array().unwrap().len(), 64);
    assert_eq!(report["ports_not_kept"], serde_json::json!([{"role": "api", "host": "api.example.com", "lines": 6}]));
    assert!(run.stderr.contains("ports not kept: role api → api.example.com"), "{}", run.stderr);
}

/// A result larger than a policy file may be is refused before its text is
/// built, with the size, the limit and what to do; nothing is written. The
/// policy itself is just under the limit (a long comment), so one entry tips it.
#[test]
fn an_edited_policy_over_the_size_limit_is_refused_early_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let limit = egress_policy::yaml::MAX_SOURCE_BYTES;
    let mut big = String::with_capacity(limit);
    big.push_str(POLICY);
    let comment_line = format!("# {}\n", "x".repeat(1 << 16));
    while big.len() + comment_line.len() <= limit - 100 {
        big.push_str(&comment_line);
    }
    // 20 bytes short of the limit: the entry's line (about 100 bytes) tips it over.
    big.push_str(&format!("# {}\n", "x".repeat(limit - 20 - big.len() - 3)));
    assert_eq!(big.len(), limit - 20);
    let policy = write(dir.path(), "acl.yaml", &big);
    assert_eq!(policyc(&["check", &policy]).code, 0, "the policy itself is within the limit");
    let log = write(dir.path(), "d.log", &lines(&[report("billing", "files.stripe.com:443")]));
    let out = dir.path().join("new.yaml");
    let run = policyc(&["suggest", "-o", out.to_str().unwrap(), &policy, &log]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let expected_size = big.len() + "      - files.stripe.com # suggested: 1 hit, first seen 2026-11-21T10:00:00Z, last seen 2026-11-21T10:00:00Z\n".len();
    assert!(
        run.stderr.contains(&format!(
            "the edited policy would be {expected_size} bytes, over the {limit}-byte limit of a policy file; suggest fewer entries: fold hosts with --collapse K, pick roles with --role, or raise --min-count; nothing written"
        )),
        "{}",
        run.stderr
    );
    assert!(!out.exists(), "nothing written");
    assert!(run.stdout.is_empty());
    assert!(std::fs::read_to_string(&policy).unwrap() == big, "the input is untouched");
}
