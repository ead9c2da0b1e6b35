//! Test support shared by the daemon's tests (`proxyd/tests`) and the
//! cross-binary end-to-end tests (`tests/`): real servers on loopback (a DNS
//! server, upstreams), a test PKI generated at run time, a `/metrics` scraper,
//! the location of the workspace's built binaries, checks of generated
//! man pages and shell completion scripts against a clap definition, and
//! restarts of the real binary under load (`lifecycle`).
//!
//! What it may not do: send traffic anywhere but loopback, or depend on the
//! crates under test (so it can never hide their behaviour behind a mock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test support: a panic is a test failure

pub mod client;
pub mod daemon;
pub mod dns;
pub mod lifecycle;
pub mod manual;
pub mod pki;
pub mod scrape;
pub mod upstream;

use std::path::{Path, PathBuf};

/// The workspace root (`testkit/`'s parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ has a parent directory").to_path_buf()
}

/// A binary of the workspace (`proxyd`, `policyc`) as cargo built it for this
/// test run: next to the test executable's `deps/` directory. Tests of other
/// packages cannot use `CARGO_BIN_EXE_*`, so they look here; `cargo test
/// --workspace` builds every binary before any test runs.
///
/// `TESTKIT_<NAME>_BIN` (e.g. `TESTKIT_PROXYD_BIN`) names another build of it
/// instead: `make static-e2e` runs the end-to-end tests against the static
/// release binaries the image ships.
pub fn binary(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(format!("TESTKIT_{}_BIN", name.to_ascii_uppercase())) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "TESTKIT_{}_BIN={}: no such file", name.to_ascii_uppercase(), path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not built: run `cargo build -p {name}` (or `make test`, which builds every binary) first",
        path.display()
    );
    path
}
