//! `--format human|json|github|sarif` on `check` and `test`, with the real
//! binary: the JSON output against `schema/policyc-report.schema.json`, the
//! GitHub workflow commands line by line, and the SARIF logs against golden
//! files (`tests/fixtures/golden/*.sarif`, compared exactly but for the
//! version) and against the OASIS SARIF 2.1.0 schema vendored in
//! `schema/vendor/`. `UPDATE_GOLDEN=1` rewrites the golden files.

use std::fs;

use serde_json::Value;

use crate::{policyc, repo_root};

const CHECK_INPUT: &str = "tests/fixtures/golden/check.yaml";
const TEST_INPUT: &str = "tests/fixtures/golden/failing-tests.yaml";
const EXAMPLE: &str = "policies/example.yaml";

fn json_file(path: &str) -> Value {
    let full = repo_root().join(path);
    let text = fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", full.display()))
}

fn report_validator() -> jsonschema::Validator {
    let schema = json_file("schema/policyc-report.schema.json");
    jsonschema::meta::validate(&schema).expect("the report schema is a valid JSON Schema");
    jsonschema::draft202012::new(&schema).expect("the report schema compiles")
}

fn sarif_validator() -> jsonschema::Validator {
    let schema = json_file("schema/vendor/sarif-schema-2.1.0.json");
    jsonschema::draft4::new(&schema).expect("the SARIF schema compiles as draft 4")
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("at {:?}: {e}", e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "{what} does not match its schema:\n{}", errors.join("\n"));
}

/// The SARIF log with the tool version replaced, so golden files survive releases.
fn normalised_sarif(stdout: &str) -> Value {
    let mut log: Value = serde_json::from_str(stdout).expect("SARIF output is JSON");
    let driver = &mut log["runs"][0]["tool"]["driver"];
    assert_eq!(driver["version"], env!("CARGO_PKG_VERSION"));
    driver["version"] = Value::from("VERSION");
    driver["semanticVersion"] = Value::from("VERSION");
    log
}

fn golden(name: &str, actual: &Value) {
    let path = repo_root().join("tests/fixtures/golden").join(name);
    let rendered = format!("{}\n", serde_json::to_string_pretty(actual).unwrap());
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, &rendered).unwrap();
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        expected == rendered,
        "{} differs from the output (UPDATE_GOLDEN=1 rewrites it):\n{rendered}",
        path.display()
    );
}

/// What every SARIF log of ours must say, beyond the schema.
fn assert_sarif_basics(log: &Value) {
    assert_eq!(log["version"], "2.1.0");
    let run = &log["runs"][0];
    let driver = &run["tool"]["driver"];
    assert_eq!(driver["name"], "policyc");
    assert!(driver["informationUri"].as_str().is_some_and(|u| u.contains(':')), "{driver}");
    let rules = driver["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for code in egress_policy::diagnostic::Code::ALL {
        assert!(ids.contains(&code.as_str()), "rule {code} missing");
    }
    for rule in rules {
        assert!(rule["name"].is_string() && rule["shortDescription"]["text"].is_string(), "{rule}");
        let level = rule["defaultConfiguration"]["level"].as_str().unwrap();
        let expected = if rule["id"].as_str().unwrap().starts_with("P0") { "error" } else { "warning" };
        assert_eq!(level, expected, "{rule}");
    }
    for result in run["results"].as_array().unwrap() {
        let index = usize::try_from(result["ruleIndex"].as_u64().unwrap()).unwrap();
        assert_eq!(rules[index]["id"], result["ruleId"], "ruleIndex points at the rule");
        let location = &result["locations"][0]["physicalLocation"];
        let uri = location["artifactLocation"]["uri"].as_str().unwrap();
        assert!(uri.starts_with("tests/fixtures/"), "relative to the working directory: {uri}");
        assert!(location["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(location["region"]["startColumn"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn vendored_sarif_schema_accepts_a_minimal_log_and_rejects_a_broken_one() {
    let validator = sarif_validator();
    let minimal = serde_json::json!({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}}]});
    assert_valid(&validator, &minimal, "the minimal SARIF log");
    for broken in [
        serde_json::json!({"version": "2.0.0", "runs": []}),
        serde_json::json!({"version": "2.1.0", "runs": [{"tool": {}}]}),
        serde_json::json!({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [{"message": {"text": "m"}, "level": "fatal"}]}]}),
        serde_json::json!({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [{"ruleId": "P001"}]}]}),
    ] {
        assert!(!validator.is_valid(&broken), "should reject {broken}");
    }
}

#[test]
fn check_sarif_matches_the_golden_file_and_the_sarif_schema() {
    let run = policyc(&["check", "--format", "sarif", CHECK_INPUT]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("failed: 1 file checked, 3 errors, 2 warnings"), "{}", run.stderr);
    let log = normalised_sarif(&run.stdout);
    assert_valid(&sarif_validator(), &serde_json::from_str(&run.stdout).unwrap(), "check --format sarif");
    assert_sarif_basics(&log);
    let results = log["runs"][0]["results"].as_array().unwrap();
    let found: Vec<(&str, &str, u64)> = results
        .iter()
        .map(|r| {
            let region = &r["locations"][0]["physicalLocation"]["region"];
            (r["ruleId"].as_str().unwrap(), r["level"].as_str().unwrap(), region["startLine"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("P101", "warning", 3),
            ("P009", "error", 7),
            ("P011", "error", 10),
            ("P103", "warning", 12),
            ("P002", "error", 13)
        ]
    );
    golden("check.sarif", &log);
}

#[test]
fn test_sarif_reports_failures_at_the_case_line() {
    let run = policyc(&["test", EXAMPLE, TEST_INPUT, "--format", "sarif"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("failed: 1 of 3 cases passed in 1 test file, 2 failed, 1 error in test files"),
        "{}",
        run.stderr
    );
    let log = normalised_sarif(&run.stdout);
    assert_valid(&sarif_validator(), &serde_json::from_str(&run.stdout).unwrap(), "test --format sarif");
    assert_sarif_basics(&log);
    let results = log["runs"][0]["results"].as_array().unwrap();
    let found: Vec<(&str, u64)> = results
        .iter()
        .map(|r| {
            let line = r["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64().unwrap();
            (r["ruleId"].as_str().unwrap(), line)
        })
        .collect();
    assert_eq!(found, vec![("P017", 8), ("P017", 13), ("P015", 18)]);
    golden("test.sarif", &log);
}

#[test]
fn check_github_annotations_escape_and_point_at_lines() {
    let run = policyc(&["check", "--format", "github", CHECK_INPUT]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "::warning file=tests/fixtures/golden/check.yaml,line=3,col=1,title=P101::no `default` rule: every role without its own rule is denied%0Ahelp: add a `default:` rule (for example `action: enforce`) to make that explicit",
            "::error file=tests/fixtures/golden/check.yaml,line=7,col=13,title=P009::unknown action \"Enforce\"%0Ahelp: actions are lower-case: use `enforce`",
            "::error file=tests/fixtures/golden/check.yaml,line=10,col=9,title=P011::in `allowed_domains`: \"API.example.com\" is not canonical%0Ahelp: use \"api.example.com\"",
            "::warning file=tests/fixtures/golden/check.yaml,line=12,col=9,title=P103::`a.hooks.example.com` is already matched by `*.hooks.example.com` (line 11) in `allowed_domains`%0Ahelp: remove the narrower entry",
            "::error file=tests/fixtures/golden/check.yaml,line=13,col=1,title=P002::unknown key `gobal_deny_list` in the top level%0Ahelp: did you mean `global_deny_list`?",
        ]
    );
    assert!(run.stderr.contains("failed: 1 file checked"), "the summary stays on stderr: {}", run.stderr);
    // A clean file prints no command at all.
    let clean = policyc(&["check", "--format", "github", EXAMPLE]);
    assert_eq!((clean.code, clean.stdout.as_str()), (0, ""), "{}", clean.stderr);
}

#[test]
fn github_file_properties_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a,b:c%d.yaml");
    fs::write(&path, "version: v1\nservices: []\ndefault: {action: nope}\n").unwrap();
    let run = policyc(&["check", "--format", "github", path.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("a%2Cb%3Ac%25d.yaml,line=3,col=19,title=P009::unknown action \"nope\""),
        "{}",
        run.stdout
    );
}

#[test]
fn test_github_annotations_name_the_case_line() {
    let run = policyc(&["test", EXAMPLE, TEST_INPUT, "--format", "github"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("::error file=tests/fixtures/golden/failing-tests.yaml,line=8,col=5,title=P017::billing may not reach pastebin, but not for this reason: "), "commas in data stay: {}", lines[0]);
    assert!(lines[0].contains("expected deny (enforce_policy), got deny (global_deny_list), decided by rule `billing-webhooks`, pattern `pastebin.com` in global_deny_list"), "{}", lines[0]);
    assert!(lines[1].starts_with("::error file=tests/fixtures/golden/failing-tests.yaml,line=13,col=5,title=P017::(no role) -> example.com:443: expected allow, got deny (default_rule_policy)"), "{}", lines[1]);
    assert!(lines[2].starts_with("::error file=tests/fixtures/golden/failing-tests.yaml,line=18,col=15,title=P015::unknown decision \"allowed\""), "{}", lines[2]);
}

#[test]
fn check_json_matches_the_report_schema() {
    let validator = report_validator();
    for (file, code) in [(CHECK_INPUT, 1), (EXAMPLE, 0)] {
        let run = policyc(&["check", "--format", "json", file]);
        assert_eq!(run.code, code, "{}", run.stderr);
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_valid(&validator, &report, "check --format json");
        assert!(report.get("cases").is_none(), "a check report is not a test report");
    }
    let report: Value = serde_json::from_str(&policyc(&["check", "--format", "json", CHECK_INPUT]).stdout).unwrap();
    assert_eq!((report["errors"].as_u64(), report["warnings"].as_u64()), (Some(3), Some(2)));
}

#[test]
fn test_json_matches_the_report_schema() {
    let validator = report_validator();
    let run = policyc(&["test", EXAMPLE, TEST_INPUT, "--format", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_valid(&validator, &report, "test --format json");
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64(), report["errors"].as_u64()),
        (Some(1), Some(2), Some(1))
    );
    assert_eq!(report["files"][0]["cases"], 3);
    let wrong_reason = &report["cases"][1];
    assert_eq!(wrong_reason["line"], 8);
    assert_eq!(wrong_reason["passed"], false);
    assert_eq!(wrong_reason["expected"], serde_json::json!({"decision": "deny", "reason_code": "enforce_policy"}));
    assert_eq!(wrong_reason["actual"]["reason_code"], "global_deny_list");
    assert_eq!(wrong_reason["actual"]["pattern"], "pastebin.com");
    assert_eq!(wrong_reason["actual"]["list"], "global_deny_list");
    assert_eq!(report["cases"][2]["role"], Value::Null);
    let codes: Vec<&str> =
        report["diagnostics"].as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["P017", "P017", "P015"]);

    // Every shipped policy's tests, against YAML and against its compiled table.
    let dir = tempfile::tempdir().unwrap();
    for name in ["default", "example", "fly"] {
        let policy = format!("policies/{name}.yaml");
        let tests = format!("policies/tests/{name}.yaml");
        let table = dir.path().join(format!("{name}.bin"));
        assert_eq!(policyc(&["compile", &policy, "-o", table.to_str().unwrap()]).code, 0);
        for target in [policy.as_str(), table.to_str().unwrap()] {
            let run = policyc(&["test", target, &tests, "--format", "json"]);
            assert_eq!(run.code, 0, "{target}: {}", run.stderr);
            let report: Value = serde_json::from_str(&run.stdout).unwrap();
            assert_valid(&validator, &report, "test --format json");
            assert_eq!(report["failed"], 0);
            assert_eq!(report["policy_revision"].is_string(), target.ends_with(".bin"), "{report}");
        }
    }
}

#[test]
fn a_broken_policy_is_reported_in_the_format_asked_for() {
    let validator = report_validator();
    let run = policyc(&["test", CHECK_INPUT, "policies/tests/example.yaml", "--format", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_valid(&validator, &report, "test --format json on a broken policy");
    assert_eq!(report["errors"], 3);
    assert_eq!(report["cases"], serde_json::json!([]));
    assert!(run.stderr.contains("no test was run"), "{}", run.stderr);
    let run = policyc(&["test", CHECK_INPUT, "policies/tests/example.yaml", "--format", "sarif"]);
    let log: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_valid(&sarif_validator(), &log, "test --format sarif on a broken policy");
    assert_eq!(log["runs"][0]["results"].as_array().unwrap().len(), 3);
    let run = policyc(&["test", CHECK_INPUT, "policies/tests/example.yaml", "--format", "github"]);
    assert_eq!(run.stdout.lines().filter(|l| l.starts_with("::error ")).count(), 3, "{}", run.stdout);
}

#[test]
fn sarif_uris_of_absolute_paths_outside_the_working_directory_are_file_uris() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a b.yaml");
    fs::write(&path, "version: v1\nservices: []\n").unwrap();
    let run = policyc(&["check", "--format", "sarif", path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let log: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_valid(&sarif_validator(), &log, "check --format sarif");
    let uri =
        log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str().unwrap();
    assert!(uri.starts_with("file:///") && uri.ends_with("/a%20b.yaml"), "{uri}");
}

#[test]
fn absolute_paths_inside_the_working_directory_are_written_relative() {
    let absolute = repo_root().join(CHECK_INPUT);
    let run = policyc(&["check", "--format", "github", absolute.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.lines().all(|l| l.contains(&format!("file={CHECK_INPUT},"))), "{}", run.stdout);
    let run = policyc(&["check", "--format", "sarif", absolute.to_str().unwrap()]);
    let log: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        CHECK_INPUT
    );
}

/// The CI recipe in `examples/ci/policy.yml` only uses subcommands and flags
/// the real binary has, and does every step docs/policyc.md (§ In CI) promises.
#[test]
fn the_ci_recipe_matches_the_cli() {
    let text = fs::read_to_string(repo_root().join("examples/ci/policy.yml")).unwrap();
    let workflow: Value = serde_saphyr::from_str(&text).unwrap();
    let steps = workflow["jobs"]["policy"]["steps"].as_array().unwrap();
    let scripts: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    let uses: Vec<&str> = steps.iter().filter_map(|s| s["uses"].as_str()).collect();
    for action in ["actions/checkout@", "actions/upload-artifact@", "github/codeql-action/upload-sarif@"] {
        assert!(uses.iter().any(|u| u.starts_with(action)), "{action} missing: {uses:?}");
    }
    let mut invocations = Vec::new();
    for script in &scripts {
        for line in script.lines() {
            let mut rest = line;
            while let Some(at) = rest.find("policyc ") {
                let tail = &rest[at + "policyc ".len()..];
                let words: Vec<&str> =
                    tail.split_whitespace().take_while(|w| !matches!(*w, "||" | ">" | ">>")).collect();
                invocations.push(words.iter().map(|w| w.to_string()).collect::<Vec<_>>());
                rest = tail;
            }
        }
    }
    let used: Vec<String> = invocations.iter().map(|w| w.join(" ")).collect();
    for expected in [
        "check --deny-warnings --format github",
        "test \"$policy\" \"$tests\" --format github",
        "--format markdown $gate",
        "--test \"policies/tests/$name.yaml\"",
        "check --format sarif",
        "--format sarif",
    ] {
        assert!(used.iter().any(|u| u.contains(expected)), "no `policyc ... {expected}` in the recipe: {used:#?}");
    }
    for words in &invocations {
        let subcommand = words[0].as_str();
        let help = policyc(&[subcommand, "--help"]);
        assert_eq!(help.code, 0, "`policyc {subcommand}` is not a subcommand");
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(help.stdout.contains(flag.as_str()), "`policyc {subcommand}` has no {flag}");
        }
        if let Some(format) = words.iter().position(|w| w == "--format").and_then(|i| words.get(i + 1)) {
            assert!(help.stdout.contains(format.as_str()), "`policyc {subcommand}` has no --format {format}");
        }
    }
}
