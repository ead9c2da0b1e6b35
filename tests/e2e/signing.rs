//! Signed artifacts across both binaries: keys from `policyc keygen`, a table
//! signed by `policyc compile --sign`, served by `proxyd --policy-public-key`;
//! a re-signed table with a higher serial lands live, an older one is refused.

use serde_json::Value;
use testkit::daemon::Daemon;

use crate::support::{policyc, write};

const ACL: &str = "\
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_signed_by_policyc_is_verified_by_proxyd_and_serials_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "acl.yaml", ACL);
    let keygen = policyc(dir.path(), &["keygen", "--private", "ci.key", "--public", "ci.pub"]);
    assert_eq!(keygen.code, 0, "{}", keygen.stderr);
    let key_id = keygen.stdout.trim().strip_prefix("key id: ").unwrap().to_owned();
    let compile =
        policyc(dir.path(), &["compile", "acl.yaml", "-o", "policy.bin", "--sign", "ci.key", "--serial", "5"]);
    assert_eq!(compile.code, 0, "{}", compile.stderr);
    assert_eq!(policyc(dir.path(), &["verify", "policy.bin", "--public-key", "ci.pub"]).code, 0);

    let table = dir.path().join("policy.bin");
    let public = dir.path().join("ci.pub");
    let mut daemon = Daemon::start(
        &testkit::binary("proxyd"),
        &[
            "--policy",
            table.to_str().unwrap(),
            "--policy-public-key",
            public.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
            // The watcher starts just after the listening line; the periodic
            // check catches a change made before it watches.
            "--policy-check-interval",
            "1s",
        ],
        &[],
    );
    let admin = daemon.listening["admin"].as_str().unwrap().parse().unwrap();
    let policy: Value = serde_json::from_str(&testkit::scrape::get(admin, "/policy").await.body).unwrap();
    assert_eq!(policy["signature"], "verified");
    assert_eq!(policy["signed_by"], key_id.as_str());
    assert_eq!(policy["serial"], 5);

    // `policyc sign` in place with a higher serial: reloaded live.
    assert_eq!(policyc(dir.path(), &["sign", "policy.bin", "--key", "ci.key", "--serial", "6"]).code, 0);
    daemon.wait_for(|v| v["message"] == "policy reloaded");
    let policy: Value = serde_json::from_str(&testkit::scrape::get(admin, "/policy").await.body).unwrap();
    assert_eq!(policy["serial"], 6);

    // Signing it back to serial 5 is a rollback: refused, 6 keeps serving.
    assert_eq!(policyc(dir.path(), &["sign", "policy.bin", "--key", "ci.key", "--serial", "5"]).code, 0);
    let line = daemon.wait_for(|v| v["message"].as_str().is_some_and(|m| m.starts_with("policy reload refused")));
    assert!(line["reason"].as_str().unwrap().contains("rollback"), "{line}");
    let policy: Value = serde_json::from_str(&testkit::scrape::get(admin, "/policy").await.body).unwrap();
    assert_eq!(policy["serial"], 6);
    assert!(daemon.terminate().success());
}
