//! The real `policyc` binary: exit codes, `file:line:col`, output formats,
//! atomic and deterministic compilation, explain and inspect.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{policyc, repo_root};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write fixture");
    path
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

const GOOD: &str = "version: v1\nservices:\n  - name: billing\n    project: payments\n    action: enforce\n    allowed_domains:\n      - api.stripe.com\n      - \"*.hooks.example.com\"\ndefault:\n  project: other\n  action: enforce\nglobal_deny_list: [\"*.bad.example\"]\n";

#[test]
fn shipped_policies_are_clean() {
    let mut files: Vec<String> = fs::read_dir(repo_root().join("policies"))
        .expect("policies/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(repo_root()).expect("inside repo").display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut args = vec!["check", "--deny-warnings"];
    args.extend(files.iter().map(String::as_str));
    let run = policyc(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("ok: {} files checked, 0 errors, 0 warnings", files.len())), "{}", run.stderr);
}

#[test]
fn errors_point_at_file_line_col_with_code_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "acl.yaml",
        "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains:\n      - Example.COM\ngobal_deny_list: []\ndefault:\n  action: enforce\n",
    );
    let run = policyc(&["check", s(&path)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let file = s(&path);
    assert!(
        run.stderr.contains(&format!(
            "error[P011]: in `allowed_domains`: \"Example.COM\" is not canonical\n  --> {file}:6:9\n"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("help: use \"example.com\""), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("error[P002]: unknown key `gobal_deny_list` in the top level\n  --> {file}:7:1\n")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("help: did you mean `global_deny_list`?"), "{}", run.stderr);
    assert!(run.stderr.contains("failed: 1 file checked, 2 errors, 0 warnings"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "diagnostics go to stderr");
}

#[test]
fn every_file_is_checked_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let bad1 = write(dir.path(), "one.yaml", "version: v2\nservices: []\ndefault: {action: enforce}\n");
    let good = write(dir.path(), "two.yaml", GOOD);
    let bad2 = write(
        dir.path(),
        "three.yaml",
        "version: v1\nservices:\n  - name: x\n    action: block\ndefault: {action: enforce}\n",
    );
    let run = policyc(&["check", s(&bad1), s(&good), s(&bad2)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains(&format!("{}:1:10", s(&bad1))), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{}:4:13", s(&bad2))), "{}", run.stderr);
    assert!(run.stderr.contains("failed: 3 files checked, 2 errors, 0 warnings"), "{}", run.stderr);
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "w.yaml",
        "version: v1\nservices: []\ndefault:\n  action: enforce\n  allowed_domains: [a.com, a.com.]\n",
    );
    let run = policyc(&["check", s(&path)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("warning[P102]"), "{}", run.stderr);
    assert!(run.stderr.contains("warning[P106]"), "{}", run.stderr);
    let run = policyc(&["check", "--deny-warnings", s(&path)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
}

#[test]
fn json_output_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "j.yaml", "version: v1\nservices:\n  - name: a\n    action: Open\n");
    let run = policyc(&["check", "--format", "json", s(&path)]);
    assert_eq!(run.code, 1);
    let report: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["errors"], 1);
    assert_eq!(report["warnings"], 1);
    assert_eq!(report["files"][0]["file"], s(&path));
    assert_eq!(report["files"][0]["errors"], 1);
    let diagnostics = report["diagnostics"].as_array().expect("array");
    let error = diagnostics.iter().find(|d| d["severity"] == "error").expect("an error");
    assert_eq!(error["code"], "P009");
    assert_eq!(error["line"], 4);
    assert_eq!(error["column"], 13);
    assert_eq!(error["message"], "unknown action \"Open\"");
    assert_eq!(error["help"], "actions are lower-case: use `open`");
    let warning = diagnostics.iter().find(|d| d["severity"] == "warning").expect("a warning");
    assert_eq!(warning["code"], "P101");
    for d in diagnostics {
        let keys: Vec<&str> = d.as_object().expect("object").keys().map(String::as_str).collect();
        for key in ["code", "severity", "file", "line", "column", "message"] {
            assert!(keys.contains(&key), "{key} missing in {d}");
        }
    }
}

#[test]
fn disabled_actions_are_policy_errors_and_bad_values_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "o.yaml", "version: v1\nservices: []\ndefault:\n  project: x\n  action: open\n");
    let run = policyc(&["check", "--disable-acl-policy-action", "open", s(&path)]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&"error[P012]: the default rule uses action `open`, which is disabled".to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("{}:5:11", s(&path))), "{}", run.stderr);
    let run = policyc(&["check", "--disable-acl-policy-action", "sillystring", s(&path)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let out = dir.path().join("o.bin");
    let run = policyc(&["compile", s(&path), "-o", s(&out), "--disable-acl-policy-action", "open"]);
    assert_eq!(run.code, 1);
    assert!(!out.exists());
}

#[test]
fn io_errors_exit_2() {
    let run = policyc(&["check", "/nonexistent/acl.yaml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot read /nonexistent/acl.yaml"), "{}", run.stderr);
    let dir = tempfile::tempdir().unwrap();
    let acl = write(dir.path(), "a.yaml", GOOD);
    let run = policyc(&["compile", s(&acl), "-o", "/nonexistent/dir/out.bin"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = policyc(&["frobnicate"]);
    assert_eq!(run.code, 2);
}

#[test]
fn compile_is_atomic_deterministic_and_refuses_broken_input() {
    let dir = tempfile::tempdir().unwrap();
    let acl = write(dir.path(), "a.yaml", GOOD);
    let out1 = dir.path().join("one.bin");
    let out2 = dir.path().join("two.bin");
    let run = policyc(&["compile", s(&acl), "-o", s(&out1)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("revision "), "{}", run.stderr);
    assert_eq!(policyc(&["compile", s(&acl), "--output", s(&out2)]).code, 0);
    let bytes = fs::read(&out1).unwrap();
    assert_eq!(bytes, fs::read(&out2).unwrap(), "same input, byte-identical table");
    assert_eq!(&bytes[..8], b"PLCYTBL\0");

    // A failed compile leaves the existing table untouched and no temp files.
    let broken = write(dir.path(), "broken.yaml", "version: v1\nservices:\n  - name: a\n    action: nope\n");
    let run = policyc(&["compile", s(&broken), "-o", s(&out1)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no table written"), "{}", run.stderr);
    assert_eq!(fs::read(&out1).unwrap(), bytes);
    let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 4, "no temp files: {leftovers:?}");
}

#[test]
fn explain_agrees_between_yaml_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let acl = write(dir.path(), "a.yaml", GOOD);
    let table = dir.path().join("a.bin");
    assert_eq!(policyc(&["compile", s(&acl), "-o", s(&table)]).code, 0);
    let cases = [
        (
            "billing",
            "x.hooks.example.com:443",
            "allow",
            "host matched allowed domain in rule",
            Some("*.hooks.example.com"),
        ),
        ("billing", "API.Stripe.com.", "allow", "host matched allowed domain in rule", Some("api.stripe.com")),
        ("billing", "evil.com:443", "deny", "rule has enforce policy", None),
        ("billing", "a.bad.example", "deny", "host matched rule in global deny list", Some("*.bad.example")),
        ("nobody", "api.stripe.com", "deny", "default rule policy used", None),
        ("", "[2001:db8::1]:443", "deny", "default rule policy used", None),
    ];
    for (role, dest, decision, reason, pattern) in cases {
        let mut outputs = Vec::new();
        for policy in [s(&acl), s(&table)] {
            let run = policyc(&["explain", policy, role, dest, "--format", "json"]);
            assert_eq!(run.code, 0, "{}", run.stderr);
            let v: Value = serde_json::from_str(&run.stdout).expect("JSON");
            assert_eq!(v["decision"], decision, "{role} {dest}");
            assert_eq!(v["reason"], reason, "{role} {dest}");
            assert_eq!(v["pattern"].as_str(), pattern, "{role} {dest}");
            assert_eq!(v["default_rule"], role != "billing", "{role} {dest}");
            assert!(v.get("rule").is_some());
            outputs.push(v);
        }
        assert!(outputs[0]["policy_revision"].is_null());
        assert_eq!(outputs[1]["policy_revision"].as_str().map(str::len), Some(12));
        outputs[1]["policy_revision"] = Value::Null;
        assert_eq!(outputs[0], outputs[1], "YAML and table explain {role} {dest} the same way");
    }
    let run = policyc(&["explain", s(&table), "billing", "evil.com:443"]);
    assert!(
        run.stdout.contains("decision:     deny\nreason:       rule has enforce policy\nrule:         billing\n"),
        "{}",
        run.stdout
    );
    for bad in ["127.1:80", "example.com:0", "exa mple.com", "[::1]"] {
        let run = policyc(&["explain", s(&table), "billing", bad]);
        assert_eq!(run.code, 2, "{bad}: {}", run.stderr);
        assert!(run.stderr.contains("invalid destination"), "{}", run.stderr);
    }
    let broken = write(dir.path(), "broken.yaml", "version: v1\nservices: {}\n");
    assert_eq!(policyc(&["explain", s(&broken), "x", "a.com"]).code, 1);
}

#[test]
fn inspect_verifies_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let acl = write(dir.path(), "a.yaml", GOOD);
    let table = dir.path().join("a.bin");
    assert_eq!(policyc(&["compile", s(&acl), "-o", s(&table), "--disable-acl-policy-action", "open"]).code, 0);
    let run = policyc(&["inspect", s(&table), "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["format_version"], 2);
    assert_eq!(v["services"], 1);
    assert_eq!(v["patterns"], 3);
    assert_eq!(v["source_name"], "a.yaml");
    assert_eq!(v["disabled_actions"], serde_json::json!(["open"]));
    assert_eq!(v["default_rule"], "enforce");
    let human = policyc(&["inspect", s(&table)]);
    assert!(
        human.stdout.contains(&format!("revision:         {}", v["revision"].as_str().unwrap())),
        "{}",
        human.stdout
    );

    let bytes = fs::read(&table).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() - 3].to_vec(), "truncated"),
        (
            "flipped",
            {
                let mut b = bytes.clone();
                let last = b.len() - 1;
                b[last] ^= 0x40;
                b
            },
            "checksum mismatch",
        ),
        (
            "version",
            {
                let mut b = bytes.clone();
                b[8] = 9;
                b
            },
            "unsupported table format version 9 (this build reads version 2)",
        ),
        (
            "magic",
            {
                let mut b = bytes.clone();
                b[0] = b'X';
                b
            },
            "not a compiled policy table",
        ),
        ("empty", Vec::new(), "truncated"),
    ];
    for (name, content, message) in cases {
        let path = dir.path().join(format!("{name}.bin"));
        fs::write(&path, content).unwrap();
        let run = policyc(&["inspect", s(&path)]);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{name}: {}", run.stderr);
    }
    let run = policyc(&["inspect", s(&acl)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("run `policyc compile"), "{}", run.stderr);
}
