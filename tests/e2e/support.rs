//! Running the real `policyc` from a test, and writing policies to disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One run of the real `policyc` binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `policyc` with `args` in `dir`.
pub fn policyc(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(testkit::binary("policyc")).args(args).current_dir(dir).output().expect("policyc runs");
    Run {
        code: out.status.code().expect("policyc exits normally, not by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// `policyc compile SOURCE -o OUT`, asserting success; returns the revision it printed.
pub fn compile(dir: &Path, source: &str, out: &str) -> String {
    let run = policyc(dir, &["compile", source, "-o", out]);
    assert_eq!(run.code, 0, "policyc compile {source}: {}", run.stderr);
    let revision = run.stderr.split("(revision ").nth(1).and_then(|rest| rest.split(',').next());
    revision.unwrap_or_else(|| panic!("no revision in: {}", run.stderr)).to_owned()
}

/// The header a client of [`proxy_for`]'s proxy sends: the proxy password (`u:s3cret`).
pub const AUTH: &str = "Proxy-Authorization: Basic dTpzM2NyZXQ=\r\n";

/// The real proxyd serving `table`, resolving through the test DNS server at
/// `dns`, giving `role` to clients with the proxy password ([`AUTH`]), plus `extra` flags.
pub fn proxy_for(role: &str, table: &Path, dns: std::net::SocketAddr, extra: &[&str]) -> testkit::daemon::Daemon {
    let dns = dns.to_string();
    let mut args = vec![
        "--policy",
        table.to_str().expect("UTF-8 path"),
        "--resolver-address",
        &dns,
        "--proxy-password-env",
        "E2E_PROXY_SECRET",
        "--proxy-auth-role",
        role,
    ];
    args.extend_from_slice(extra);
    testkit::daemon::Daemon::start(&testkit::binary("proxyd"), &args, &[("E2E_PROXY_SECRET", "s3cret")])
}
