//! Tests of `policyc`: the real binary on good and broken files, the editor
//! JSON Schemas, policy tests, the semantic diff, and the machine-readable
//! output formats.
//! One test binary with a module per area, so the suite links once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a test failure

mod address;
mod cli;
mod diff;
mod formats;
mod policy_tests;
mod schema;
mod signing;

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
