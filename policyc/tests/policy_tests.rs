//! `policyc test` and `policyc compile --test` with the real binary, the
//! shipped policies' own tests, and `schema/policy-tests.schema.json`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use egress_policy::acl;
use egress_policy::policy::ActionSet;
use policyc::policytest;

use crate::{policyc, repo_root};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

const POLICY: &str = "version: v1
services:
  - name: billing
    project: payments
    action: enforce
    allowed_domains: [api.stripe.com, \"*.hooks.example.com\"]
default:
  project: other
  action: enforce
global_deny_list: [\"*.bad.example\"]
";

const PASSING: &str = "tests:
  - role: billing
    destination: api.stripe.com:443
    decision: allow
    reason: allowed_domain
  - role: null
    destination: api.stripe.com:443
    decision: deny
    reason: default rule policy used
";

/// `policies/NAME.yaml` -> `policies/tests/NAME.yaml`, for every shipped policy.
fn shipped() -> Vec<(PathBuf, PathBuf)> {
    let mut pairs: Vec<(PathBuf, PathBuf)> = fs::read_dir(repo_root().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let tests = p.parent().unwrap().join("tests").join(p.file_name().unwrap());
            (p, tests)
        })
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn every_shipped_policy_has_tests_that_pass_and_cover_every_rule() {
    let pairs = shipped();
    assert!(pairs.len() >= 3, "{pairs:?}");
    for (policy_path, tests_path) in &pairs {
        assert!(tests_path.is_file(), "{} has no test file {}", policy_path.display(), tests_path.display());
        let run = policyc(&["test", s(policy_path), s(tests_path)]);
        assert_eq!(run.code, 0, "{}: {}", policy_path.display(), run.stderr);
        assert!(run.stderr.starts_with("ok: "), "{}", run.stderr);

        // Coverage: every service rule, the default rule (a role without a rule,
        // and no role at all), and every decision the policy can make.
        let policy =
            acl::check_source("p", &fs::read_to_string(policy_path).unwrap(), ActionSet::default()).policy.unwrap();
        let tests = policytest::parse_source("t", &fs::read_to_string(tests_path).unwrap());
        assert!(tests.diagnostics.is_empty(), "{:?}", tests.diagnostics);
        let roles: BTreeSet<Option<&str>> = tests.cases.iter().map(|c| c.role.as_deref()).collect();
        for service in &policy.services {
            assert!(
                roles.contains(&Some(service.name.as_str())),
                "{}: no case for role {}",
                tests_path.display(),
                service.name
            );
        }
        assert!(roles.contains(&None), "{}: no case for a client without a role", tests_path.display());
        let unknown =
            tests.cases.iter().any(|c| c.role.as_deref().is_some_and(|r| !policy.services.iter().any(|s| s.name == r)));
        assert!(unknown, "{}: no case for a role without a rule of its own", tests_path.display());
        let with_reason = tests.cases.iter().filter(|c| c.reason.is_some()).count();
        assert_eq!(with_reason, tests.cases.len(), "{}: shipped tests pin the reason too", tests_path.display());
        if !policy.global_deny_list.is_empty() {
            assert!(
                tests.cases.iter().any(|c| c.reason == Some(egress_policy::decision::Reason::GlobalDenyList)),
                "{}: the global deny list is not tested",
                tests_path.display()
            );
        }
    }
}

#[test]
fn shipped_test_files_match_the_schema_and_broken_ones_do_not() {
    let schema: Value =
        serde_json::from_str(&fs::read_to_string(repo_root().join("schema/policy-tests.schema.json")).unwrap())
            .unwrap();
    jsonschema::meta::validate(&schema).expect("a valid JSON Schema");
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    for (_, tests) in shipped() {
        let instance: Value = serde_saphyr::from_str(&fs::read_to_string(&tests).unwrap()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&instance).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", tests.display());
    }
    let broken = [
        "tests: []\n",
        "cases: [{role: a, destination: a.com, decision: allow}]\n",
        "tests: [{role: a, destination: a.com, decision: allow, expect: deny}]\n",
        "tests: [{role: a, destination: a.com, decision: Allow}]\n",
        "tests: [{role: a, destination: a.com, decision: allow, reason: because}]\n",
        "tests: [{role: a, destination: [a.com], decision: allow}]\n",
        "tests: [{role: \"\", destination: a.com, decision: allow}]\n",
        "tests: [{destination: a.com, decision: allow}]\n",
        "tests: [{role: a, destination: \"http://a.com/\", decision: allow}]\n",
    ];
    for text in broken {
        let instance: Value = serde_saphyr::from_str(text).unwrap();
        assert!(!validator.is_valid(&instance), "schema should reject {text:?}");
        // ... and policyc rejects each one too.
        let file = policytest::parse_source("t.yaml", text);
        assert!(file.error_count() > 0, "policyc should reject {text:?}");
    }
}

#[test]
fn failures_name_the_case_line_expected_actual_and_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", POLICY);
    let tests = write(
        dir.path(),
        "t.yaml",
        "tests:
  - role: billing
    destination: api.stripe.com:443
    decision: allow
  - name: deny list wins over the action
    role: billing
    destination: x.bad.example:443
    decision: deny
    reason: enforce_policy
  - role: null
    destination: a.hooks.example.com
    decision: allow
",
    );
    let run = policyc(&["test", s(&policy), s(&tests)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let t = s(&tests);
    assert!(
        run.stderr.contains(&format!(
            "FAIL {t}:5: deny list wins over the action
  role:        \"billing\"
  destination: x.bad.example:443
  expected:    deny (enforce_policy)
  actual:      deny (global_deny_list: host matched rule in global deny list)
  decided by:  rule `billing`, pattern `*.bad.example` in global_deny_list
"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "FAIL {t}:10: (no role) -> a.hooks.example.com
  role:        none (a client without a role)
  destination: a.hooks.example.com
  expected:    allow
  actual:      deny (default_rule_policy: default rule policy used)
  decided by:  the default rule, by its action
"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&format!("{t}:2")), "passing cases are quiet: {}", run.stderr);
    assert!(run.stderr.ends_with("failed: 1 of 3 cases passed in 1 test file, 2 failed\n"), "{}", run.stderr);
    assert!(run.stdout.is_empty());

    let ok = write(dir.path(), "ok.yaml", PASSING);
    let run = policyc(&["test", s(&policy), s(&ok), s(&ok)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "ok: 4 of 4 cases passed in 2 test files\n");
}

#[test]
fn malformed_test_files_are_reported_like_acl_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", POLICY);
    let cases = [
        (
            "unknown-key.yaml",
            "tests:\n  - role: billing\n    destination: a.com\n    decision: deny\n    reasn: enforce_policy\n",
            "error[P002]: unknown key `reasn` in a test case",
            "5:5",
        ),
        (
            "wrong-type.yaml",
            "tests:\n  - role: [billing]\n    destination: a.com\n    decision: deny\n",
            "error[P004]: `role` must be a role name, or null",
            "2:11",
        ),
        (
            "bad-decision.yaml",
            "tests:\n  - role: billing\n    destination: a.com\n    decision: block\n",
            "error[P015]: unknown decision \"block\"",
            "4:15",
        ),
        (
            "bad-reason.yaml",
            "tests:\n  - role: billing\n    destination: a.com\n    decision: deny\n    reason: nope\n",
            "error[P016]: unknown reason \"nope\"",
            "5:13",
        ),
        (
            "bad-destination.yaml",
            "tests:\n  - role: billing\n    destination: 0x7f.0.0.1:80\n    decision: deny\n",
            "error[P014]: invalid destination \"0x7f.0.0.1:80\"",
            "3:18",
        ),
        (
            "bad-port.yaml",
            "tests:\n  - role: billing\n    destination: a.com:99999\n    decision: deny\n",
            "error[P014]: invalid destination \"a.com:99999\"",
            "3:18",
        ),
        (
            "missing.yaml",
            "tests:\n  - role: billing\n    decision: deny\n",
            "error[P005]: test case has no `destination`",
            "2:5",
        ),
        ("syntax.yaml", "tests: [\n", "error[P001]", "1:8"),
    ];
    for (name, text, message, at) in cases {
        let tests = write(dir.path(), name, text);
        let run = policyc(&["test", s(&policy), s(&tests)]);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{name}: {}", run.stderr);
        assert!(run.stderr.contains(&format!("--> {}:{at}", s(&tests))), "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains("error in test files") || run.stderr.contains("errors in test files"),
            "{name}: {}",
            run.stderr
        );
    }
}

#[test]
fn usage_and_io_errors_exit_2_and_a_broken_policy_1() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", POLICY);
    let ok = write(dir.path(), "ok.yaml", PASSING);
    let run = policyc(&["test", s(&policy), "/nonexistent/t.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("cannot read /nonexistent/t.yaml"), "{}", run.stderr);
    assert_eq!(policyc(&["test", "/nonexistent/p.yaml", s(&ok)]).code, 2);
    assert_eq!(policyc(&["test", s(&policy)]).code, 2, "at least one test file");
    assert_eq!(policyc(&["test", s(&policy), s(&ok), "--format", "xml"]).code, 2);
    let broken = write(dir.path(), "broken.yaml", "version: v1\nservices:\n  - name: a\n    action: nope\n");
    let run = policyc(&["test", s(&broken), s(&ok)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("error[P009]") && run.stderr.contains("no test was run"), "{}", run.stderr);
    // Disabled actions apply to the policy under test, as in explain.
    let run = policyc(&["test", s(&policy), s(&ok), "--disable-acl-policy-action", "enforce"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("error[P012]"), "{}", run.stderr);
}

#[test]
fn compile_refuses_to_write_a_table_when_a_test_fails() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", POLICY);
    let ok = write(dir.path(), "ok.yaml", PASSING);
    let failing = write(
        dir.path(),
        "fail.yaml",
        "tests:\n  - role: billing\n    destination: evil.example:443\n    decision: allow\n",
    );
    let malformed =
        write(dir.path(), "bad.yaml", "tests:\n  - role: billing\n    destination: a.com\n    decision: maybe\n");
    let out = dir.path().join("p.bin");

    // No table yet: a failing test leaves none.
    let run = policyc(&["compile", s(&policy), "-o", s(&out), "--test", s(&ok), "--test", s(&failing)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("FAIL {}:2", s(&failing))), "{}", run.stderr);
    assert!(run.stderr.contains("no table written"), "{}", run.stderr);
    assert!(!out.exists());

    // Passing tests: the table is written.
    let run = policyc(&["compile", s(&policy), "-o", s(&out), "--test", s(&ok)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("ok: 2 of 2 cases passed in 1 test file"), "{}", run.stderr);
    let table = fs::read(&out).unwrap();

    // A failing or malformed test file leaves the existing table untouched and no temp files.
    let changed = write(dir.path(), "p.yaml", &POLICY.replace("api.stripe.com, ", ""));
    for tests in [&failing, &ok, &malformed] {
        let run = policyc(&["compile", s(&changed), "-o", s(&out), "--test", s(tests)]);
        assert_eq!(run.code, 1, "{}: {}", tests.display(), run.stderr);
        assert_eq!(fs::read(&out).unwrap(), table, "{}", tests.display());
    }
    let names: BTreeSet<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(
        names,
        ["bad.yaml", "fail.yaml", "ok.yaml", "p.bin", "p.yaml"].map(String::from).into(),
        "no temp files"
    );

    // An unreadable test file is a usage error, and nothing is written.
    let other = dir.path().join("other.bin");
    let run = policyc(&["compile", s(&policy), "-o", s(&other), "--test", "/nonexistent/t.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!other.exists());
}
