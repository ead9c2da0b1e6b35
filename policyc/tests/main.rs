//! Tests of `policyc`: the real binary on good and broken files, the editor
//! JSON Schemas, policy tests, the semantic diff, the machine-readable
//! output formats, `suggest`/`coverage` over decision logs, and the book
//! (README.md and docs/): its policies, policy tests and commands are checked
//! against the real binary.
//! One test binary with a module per area, so the suite links once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a test failure

mod address;
mod cli;
mod coverage;
mod diff;
mod docs;
mod formats;
mod manual;
mod policy_tests;
mod policy_v2;
mod schema;
mod signing;
mod suggest;

use std::path::{Path, PathBuf};

/// The workspace root: `CARGO_MANIFEST_DIR` is `policyc/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("policyc/ has a parent directory (the workspace root)")
        .to_path_buf()
}

/// One run of the real `policyc` binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `policyc` in the repository root, so paths in its output are relative.
pub fn policyc(args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_policyc"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("policyc runs");
    Run {
        code: out.status.code().expect("policyc exits normally, not by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// The text of `tests/fixtures/<path>`.
pub fn fixture(path: &str) -> String {
    let full = repo_root().join("tests/fixtures").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// Validates `instance` against `schema/<name>` (draft 2020-12), listing every error.
pub fn assert_matches_schema(name: &str, instance: &serde_json::Value) {
    let path = repo_root().join("schema").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{name} is not a valid JSON Schema: {e}"));
    let validator = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("at {:?}: {e}", e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "output does not match {name}:\n{}\n{instance}", errors.join("\n"));
}
