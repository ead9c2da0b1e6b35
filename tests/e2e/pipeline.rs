//! The pipeline users run: `policyc check`, `test` and `compile` in CI, the
//! table served by `proxyd`, and a recompiled table picked up live.

use serde_json::Value;
use testkit::client::{connect, echo_through, lo};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

use crate::support::{AUTH, compile, policyc, proxy_for, write};

const V1: &str = "\
version: v1
services:
  - name: billing
    project: payments
    action: enforce
    allowed_domains: [api.vendor.test]
default:
  project: other
  action: enforce
";

const V1_TESTS: &str = "\
tests:
  - role: billing
    destination: api.vendor.test:443
    decision: allow
  - role: billing
    destination: other.vendor.test:443
    decision: deny
";

/// The same ACL with `other.vendor.test` added for billing.
const V2: &str = "\
version: v1
services:
  - name: billing
    project: payments
    action: enforce
    allowed_domains: [api.vendor.test, other.vendor.test]
default:
  project: other
  action: enforce
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // the in-test servers run while this thread waits on the daemon
async fn a_table_compiled_by_policyc_is_what_proxyd_enforces_and_a_recompile_lands_live() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 9, 1)).await;
    let port = upstream.addr.port();
    for name in ["api.vendor.test", "other.vendor.test"] {
        dns.set(name, Answer::Records(vec![upstream.addr.ip()]));
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "acl.yaml", V1);
    write(dir.path(), "acl.tests.yaml", V1_TESTS);

    // CI: lint with warnings denied, run the policy tests, compile.
    let check = policyc(dir.path(), &["check", "--deny-warnings", "--format", "json", "acl.yaml"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let report: Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!((report["errors"].as_u64(), report["warnings"].as_u64()), (Some(0), Some(0)), "{report}");
    let test = policyc(dir.path(), &["test", "acl.yaml", "acl.tests.yaml"]);
    assert_eq!(test.code, 0, "{}", test.stderr);
    let first = compile(dir.path(), "acl.yaml", "policy.bin");

    let table = dir.path().join("policy.bin");
    let allow = format!("{}/32", upstream.addr.ip());
    let mut daemon = proxy_for("billing", &table, dns.addr(), &["--allow-range", &allow]);
    assert_eq!(daemon.listening["policy_revision"], first.as_str(), "{}", daemon.listening);

    let mut allowed = connect(daemon.addr, &format!("api.vendor.test:{port}"), AUTH).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(echo_through(&mut allowed.stream, b"ping").await, b"ping");
    let denied = connect(daemon.addr, &format!("other.vendor.test:{port}"), AUTH).await;
    assert_eq!(denied.status, 403);
    let decision = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION" && v["allow"] == false);
    assert_eq!(decision["policy_revision"], first.as_str());

    // A new version, compiled over the served file: proxyd swaps it in live.
    write(dir.path(), "acl.yaml", V2);
    let second = compile(dir.path(), "acl.yaml", "policy.bin");
    assert_ne!(first, second);
    let reloaded: Value = daemon.wait_for(|v| v["message"] == "policy reloaded");
    assert_eq!(reloaded["new_revision"], second.as_str(), "{reloaded}");
    let now_allowed = connect(daemon.addr, &format!("other.vendor.test:{port}"), AUTH).await;
    assert_eq!(now_allowed.status, 200);
    // The tunnel opened before the reload is untouched.
    assert_eq!(echo_through(&mut allowed.stream, b"still here").await, b"still here");
    // With no tunnel left open, SIGTERM stops it at once and cleanly.
    drop((allowed, now_allowed));
    assert!(daemon.terminate().success());
}
