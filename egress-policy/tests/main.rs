//! Tests of the policy model through its public API: Smokescreen's decision
//! conformance cases and upstream fixtures, and the SSRF corpus against the
//! address classifier and the authority parser. One test binary with a module
//! per area, so the suite links once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a test failure

mod conformance;
mod policy_v2;
mod ssrf;

use std::path::{Path, PathBuf};

/// The workspace root: `CARGO_MANIFEST_DIR` is `egress-policy/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("egress-policy/ has a parent directory (the workspace root)")
        .to_path_buf()
}

/// The text of `tests/fixtures/<path>`.
pub fn fixture(path: &str) -> String {
    let full = repo_root().join("tests/fixtures").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}
