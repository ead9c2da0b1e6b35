//! `schema/acl.schema.json` (the editor schema for ACL files) agrees with the
//! policies we ship, and with `policyc check` on structurally broken files:
//!
//! * the schema is itself a valid draft 2020-12 schema;
//! * every `policies/*.yaml` validates against it;
//! * every `tests/fixtures/broken/*.yaml` is rejected by it, and by
//!   `policyc check` with exit code 1 and a `file:line:col` location.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::repo_root;

use serde_json::{Value, json};

const SCHEMA: &str = "schema/acl.schema.json";
const POLICIES: &str = "policies";
const BROKEN: &str = "tests/fixtures/broken";
const MIN_POLICIES: usize = 3;
const MIN_BROKEN: usize = 10;

fn load_schema() -> Value {
    let path = repo_root().join(SCHEMA);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn validator() -> jsonschema::Validator {
    let schema = load_schema();
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| {
        panic!("{SCHEMA} does not compile as a draft 2020-12 schema: {e} (at {:?})", e.instance_path().as_str())
    })
}

/// `*.yaml` files directly in `dir`, sorted so failures read the same on every run.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = repo_root().join(dir);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())).path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_else(|| panic!("{} has no file name", path.display())).to_string_lossy().into_owned()
}

fn parse_yaml(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML that maps to JSON: {e}", path.display()))
}

/// Every validation error, one per line, with the JSON pointer of the
/// offending value (`/services/0/action`; empty for the document itself).
fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator.iter_errors(instance).map(|error| format!("at {:?}: {error}", error.instance_path().as_str())).collect()
}

#[test]
fn schema_is_a_valid_draft_2020_12_schema() {
    let schema = load_schema();
    assert_eq!(
        schema["$schema"],
        json!("https://json-schema.org/draft/2020-12/schema"),
        "{SCHEMA} must declare draft 2020-12"
    );
    for key in ["$id", "title", "description"] {
        assert!(schema[key].is_string(), "{SCHEMA} needs a top-level {key:?} for editors");
    }
    if let Err(error) = jsonschema::meta::validate(&schema) {
        panic!("{SCHEMA} is not a valid JSON Schema: {error} (at {:?})", error.instance_path().as_str());
    }
    // Compiling also compiles every `pattern` and resolves every `$ref`.
    let _ = validator();
}

#[test]
fn every_shipped_policy_validates_against_the_schema() {
    let validator = validator();
    let policies = yaml_files(POLICIES);
    assert!(
        policies.len() >= MIN_POLICIES,
        "expected at least {MIN_POLICIES} files in {POLICIES}/, found {}: {policies:?}",
        policies.len()
    );
    let mut failures = Vec::new();
    for path in &policies {
        let errors = schema_errors(&validator, &parse_yaml(path));
        if errors.is_empty() {
            println!("ok (schema accepts): {}", path.display());
        } else {
            failures.push(format!("{}:\n  {}", path.display(), errors.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "policies rejected by {SCHEMA}:\n{}", failures.join("\n"));
}

/// What a broken fixture declares on its second line, so that it is rejected
/// for the reason it states and not by accident (an unquoted `127.1` is a
/// YAML number, which the schema also rejects, at the same place):
/// `# schema error at: "/services/0/action" (enum)` — the JSON pointer of the
/// offending value (`""` for the document) and the failing schema keyword.
fn expected_schema_error(path: &Path, text: &str) -> (String, String) {
    fn malformed(path: &Path) -> ! {
        panic!("{}: the second line must be `# schema error at: \"POINTER\" (KEYWORD)`", path.display())
    }
    let line = text.lines().nth(1).unwrap_or_else(|| malformed(path));
    let rest = line.strip_prefix("# schema error at: \"").unwrap_or_else(|| malformed(path));
    let (pointer, rest) = rest.split_once("\" (").unwrap_or_else(|| malformed(path));
    let keyword = rest.strip_suffix(')').unwrap_or_else(|| malformed(path));
    (pointer.to_owned(), keyword.to_owned())
}

#[test]
fn every_broken_fixture_is_rejected_by_the_schema() {
    let validator = validator();
    let fixtures = yaml_files(BROKEN);
    assert!(
        fixtures.len() >= MIN_BROKEN,
        "expected at least {MIN_BROKEN} files in {BROKEN}/, found {}",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for path in &fixtures {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(text.starts_with("# "), "{}: the first line must be a comment saying what is broken", path.display());
        let (pointer, keyword) = expected_schema_error(path, &text);
        let instance = parse_yaml(path);
        let errors: Vec<_> = validator.iter_errors(&instance).collect();
        let listing: Vec<String> = errors
            .iter()
            .map(|e| format!("at {:?} ({}): {e}", e.instance_path().as_str(), e.schema_path().as_str()))
            .collect();
        let expected_found = errors.iter().any(|e| {
            e.instance_path().as_str() == pointer && e.schema_path().as_str().ends_with(&format!("/{keyword}"))
        });
        if errors.is_empty() {
            failures.push(format!("{}: accepted by the schema", path.display()));
        } else if !expected_found {
            failures.push(format!(
                "{}: expected a `{keyword}` error at {pointer:?}, got:\n  {}",
                path.display(),
                listing.join("\n  ")
            ));
        } else {
            println!("ok (schema rejects): {}\n  {}", path.display(), listing.join("\n  "));
        }
    }
    assert!(failures.is_empty(), "broken fixtures vs {SCHEMA}:\n{}", failures.join("\n"));
}

#[test]
fn every_broken_fixture_is_rejected_by_policyc_check() {
    let fixtures = yaml_files(BROKEN);
    assert!(
        fixtures.len() >= MIN_BROKEN,
        "expected at least {MIN_BROKEN} files in {BROKEN}/, found {}",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for path in &fixtures {
        let output = Command::new(env!("CARGO_BIN_EXE_policyc"))
            .arg("check")
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run policyc check {}: {e}", path.display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let name = file_name(path);
        let mut problems = Vec::new();
        if output.status.code() != Some(1) {
            problems.push(format!("exit status {:?}, expected 1", output.status.code()));
        }
        if !stderr.contains("error[P") {
            problems.push("no `error[P...]` diagnostic on stderr".to_owned());
        }
        if !has_location(&stderr, &name) {
            problems.push(format!("no `{name}:LINE:COL` location on stderr"));
        }
        if problems.is_empty() {
            println!("ok (policyc check rejects): {}", path.display());
        } else {
            failures.push(format!(
                "policyc check {}: {}\n--- stderr ---\n{stderr}--- stdout ---\n{}",
                path.display(),
                problems.join("; "),
                String::from_utf8_lossy(&output.stdout)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whether `text` contains `name:` immediately followed by `DIGITS:DIGITS`.
fn has_location(text: &str, name: &str) -> bool {
    let needle = format!("{name}:");
    text.match_indices(&needle).any(|(at, _)| {
        let rest = &text[at + needle.len()..];
        let Some((_line, rest)) = split_digits(rest) else {
            return false;
        };
        rest.strip_prefix(':').is_some_and(|column| split_digits(column).is_some())
    })
}

/// Splits a non-empty run of ASCII digits off the front of `text`.
fn split_digits(text: &str) -> Option<(&str, &str)> {
    let end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

#[test]
fn location_check_is_not_vacuous() {
    assert!(has_location("error[P001]: x\n  --> /a/b/f.yaml:12:5\n", "f.yaml"));
    assert!(has_location("f.yaml:1:1", "f.yaml"));
    assert!(has_location("see f.yaml: no; at f.yaml:3:9", "f.yaml"));
    assert!(!has_location("  --> /a/b/f.yaml:12\n", "f.yaml"));
    assert!(!has_location("  --> /a/b/f.yaml:12:\n", "f.yaml"));
    assert!(!has_location("  --> /a/b/f.yaml::5\n", "f.yaml"));
    assert!(!has_location("  --> /a/b/g.yaml:12:5\n", "f.yaml"));
    assert!(!has_location("", "f.yaml"));
}

/// The host-pattern rule of the schema, entry by entry, in every place an
/// entry can appear.
#[test]
fn host_pattern_rules() {
    let validator = validator();
    let accepts = |entry: &str| {
        let documents = [
            json!({"version": "v1", "services": [], "global_deny_list": [entry]}),
            json!({"version": "v1", "services": [], "global_allow_list": [entry]}),
            json!({"version": "v1", "services": [{"name": "a", "action": "enforce", "allowed_domains": [entry]}]}),
            json!({"version": "v1", "services": [], "default": {"action": "report", "allowed_domains": [entry]}}),
        ];
        let verdicts: Vec<bool> = documents.iter().map(|doc| validator.is_valid(doc)).collect();
        assert!(
            verdicts.iter().all(|v| *v == verdicts[0]),
            "{entry:?}: the schema treats it differently in different lists: {verdicts:?}"
        );
        verdicts[0]
    };

    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    let good = [
        "example.com",
        "*.example.com",
        "com",
        "*.com",
        "a",
        "localhost",
        "foo_bar.example.com",
        "_dmarc.example.com",
        "a-b.c-d.example",
        "xn--e1aybc.example.com",
        "*.xn--e1aybc.example.com",
        "xn--bcher-kva.example",
        "r3---sn-abc.googlevideo.com",
        "1.example.com",
        "123abc",
        "0a.com",
        "0-1.com",
        "a.0xg",
        "a.00x1",
        "a.1-2",
        // One trailing dot: accepted (policyc warns and normalises it away).
        "example.com.",
        "*.example.com.",
        "127.0.0.1.",
        // Canonical IP literals.
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "203.0.113.7",
        "100.100.100.200",
        "::1",
        "::",
        "1::",
        "2001:db8::1",
        "fd00:ec2::254",
        "1:2:3:4:5:6:7:8",
        "1:2::7:8",
        "1:2:3:4:5:6::",
        "::2:3:4:5:6:7",
    ];
    let bad = [
        // Wildcards that are not one leading `*.`.
        "*",
        "*.",
        "*example.com",
        "**.example.com",
        "api.*.example.com",
        "example.*",
        "*.*",
        "*.*.example.com",
        "ex*ample.com",
        // Not canonical: case, Unicode, empty labels, hyphens at label edges.
        "EXAMPLE.COM",
        "Example.com",
        "тест.example.com",
        "bücher.example",
        "",
        ".example.com",
        "foo..example.com",
        "example.com..",
        "*..example.com",
        "-foo.example.com",
        "foo-.example.com",
        // Not a host: ports, brackets, ranges, paths, URLs, spaces.
        "example.com:443",
        "[::1]",
        "10.0.0.0/8",
        "example.com/path",
        "https://example.com",
        " example.com",
        "example.com ",
        "exa mple.com",
        "example.com\n",
        // Numeric last labels: ambiguous IPv4 spellings, or wildcards of an address.
        "127.1",
        "0x7f.0.0.1",
        "010.0.0.1",
        "1.2.3",
        "256.1.1.1",
        "2130706433",
        "a.123",
        "a.0x",
        "a.0xff",
        "*.127.0.0.1",
        "*.1",
        // IPv6 that is not canonical or not an address.
        "2001:DB8::1",
        "::ffff:1.2.3.4",
        "::1.2.3.4",
        "fe80::1%eth0",
        "0001::1",
        "1:2:3:4:5:6:7::",
        "1::2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8:9",
        "1:::2",
        "*.::1",
    ];

    let mut wrong = Vec::new();
    for entry in good {
        if !accepts(entry) {
            wrong.push(format!("should accept {entry:?}"));
        }
    }
    for entry in bad {
        if accepts(entry) {
            wrong.push(format!("should reject {entry:?}"));
        }
    }
    // Label and name lengths (RFC 1035).
    if !accepts(&format!("{label63}.example.com")) {
        wrong.push("should accept a 63-character label".to_owned());
    }
    if accepts(&format!("{label64}.example.com")) || accepts(&format!("example.{label64}")) {
        wrong.push("should reject a 64-character label".to_owned());
    }
    let too_long = [label63.as_str(); 5].join(".");
    if accepts(&too_long) {
        wrong.push(format!("should reject a {}-character name", too_long.len()));
    }
    assert!(wrong.is_empty(), "host pattern rule:\n{}", wrong.join("\n"));
}

#[test]
fn structural_rules() {
    let validator = validator();
    let valid = [
        json!({"version": "v1", "services": []}),
        json!({"version": "v1", "services": [], "default": null, "global_allow_list": null, "global_deny_list": null}),
        json!({"version": "v1", "services": [{"name": "a", "action": "open"}], "default": {"action": "enforce"}}),
        json!({"version": "v1", "services": [{"name": "a", "project": "", "action": "report", "allowed_domains": null}]}),
        json!({"version": "v1", "services": [{
            "name": "m", "action": "enforce", "allowed_domains": ["example-mitm.com"],
            "mitm_domains": [{"domain": "example-mitm.com", "add_headers": {"Accept-Language": "el"},
                              "detailed_http_logs": true, "detailed_http_logs_full_headers": ["User-Agent"]}],
            "allowed_external_proxies": ["proxy.example.com"]
        }]}),
    ];
    let invalid = [
        json!({}),
        json!([]),
        json!({"version": "v1"}),
        json!({"version": "v1", "services": null}),
        json!({"version": 1, "services": []}),
        json!({"version": "v1", "services": [], "extra": 1}),
        json!({"version": "v1", "services": [{"action": "open"}]}),
        json!({"version": "v1", "services": [{"name": null, "action": "open"}]}),
        json!({"version": "v1", "services": [{"name": "a"}]}),
        json!({"version": "v1", "services": [{"name": "a", "action": "Enforce"}]}),
        json!({"version": "v1", "services": [{"name": "a", "action": "open", "project": 7}]}),
        json!({"version": "v1", "services": [{"name": "a", "action": "open", "allowed_domains": "a.com"}]}),
        json!({"version": "v1", "services": [], "default": {"project": "x"}}),
        json!({"version": "v1", "services": [], "default": {"action": "open", "typo": 1}}),
        json!({"version": "v1", "services": [], "default": []}),
        json!({"version": "v1", "services": [], "global_deny_list": "a.com"}),
        json!({"version": "v1", "services": [{"name": "m", "action": "enforce", "mitm_domains": [{"add_headers": {}}]}]}),
        json!({"version": "v1", "services": [{"name": "m", "action": "enforce", "mitm_domains": [{"domain": "a.com", "x": 1}]}]}),
        json!({"version": "v1", "services": [{"name": "m", "action": "enforce", "mitm_domains": [{"domain": "a.com", "add_headers": {"A": 1}}]}]}),
        json!({"version": "v1", "services": [{"name": "m", "action": "enforce", "allowed_external_proxies": ["*"]}]}),
    ];
    let mut wrong = Vec::new();
    for doc in &valid {
        let errors = schema_errors(&validator, doc);
        if !errors.is_empty() {
            wrong.push(format!("should accept {doc}: {}", errors.join("; ")));
        }
    }
    for doc in &invalid {
        if validator.is_valid(doc) {
            wrong.push(format!("should reject {doc}"));
        }
    }
    assert!(wrong.is_empty(), "structural rules:\n{}", wrong.join("\n"));
}
