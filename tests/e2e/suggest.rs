//! From report mode to enforce with the real binaries: a `report` role's
//! traffic through the real `proxyd`, its decision log (the daemon's own
//! stderr lines) fed to the real `policyc suggest`, and the suggested policy,
//! switched to enforce, served by the same proxy: exactly the hosts the role
//! reached are allowed.

use testkit::client::{connect, echo_through, lo};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

use crate::support::{AUTH, compile, policyc, proxy_for, write};

const REPORTING: &str = "\
# The reporting service is being moved to enforce.
version: v1
services:
  - name: reporter
    project: analytics   # team analytics
    action: report
    allowed_domains:
      - api.vendor.test
default:
  project: other
  action: enforce
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // the in-test servers run while this thread waits on the daemon
async fn a_report_log_from_proxyd_becomes_an_enforce_policy_that_allows_exactly_what_was_used() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 14, 1)).await;
    let port = upstream.addr.port();
    let used = ["api.vendor.test", "files.vendor.test", "eu.partner.test"];
    for name in used.iter().chain(&["unused.vendor.test"]) {
        dns.set(name, Answer::Records(vec![upstream.addr.ip()]));
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "acl.yaml", REPORTING);
    compile(dir.path(), "acl.yaml", "policy.bin");
    let table = dir.path().join("policy.bin");
    let allow = format!("{}/32", upstream.addr.ip());
    let mut daemon = proxy_for("reporter", &table, dns.addr(), &["--allow-range", &allow]);

    // Report mode: every host is reached; two of them are outside the list.
    let mut requests = 0;
    for name in used.iter().chain(&["eu.partner.test"]) {
        let mut reply = connect(daemon.addr, &format!("{name}:{port}"), AUTH).await;
        assert_eq!(reply.status, 200, "{name} in report mode");
        assert_eq!(echo_through(&mut reply.stream, b"ping").await, b"ping");
        requests += 1;
    }
    let log = daemon.collect_lines(requests, |v| v["message"] == "CANONICAL-PROXY-DECISION");
    assert!(log.iter().any(|l| l.contains("\"enforce_would_deny\":true")), "{log:?}");
    write(dir.path(), "decisions.log", &(log.join("\n") + "\n"));

    // CI: suggest, review the diff, check the result.
    let diff = policyc(dir.path(), &["suggest", "--format", "diff", "acl.yaml", "decisions.log"]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    let added: Vec<&str> = diff.stdout.lines().filter(|l| l.starts_with("+ ")).collect();
    assert_eq!(added.len(), 2, "{}", diff.stdout);
    assert!(diff.stdout.contains("+      - files.vendor.test # suggested: 1 hit"), "{}", diff.stdout);
    assert!(diff.stdout.contains("+      - eu.partner.test # suggested: 2 hits"), "{}", diff.stdout);
    let run = policyc(dir.path(), &["suggest", "acl.yaml", "decisions.log", "-o", "suggested.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("acl.yaml")).unwrap(), REPORTING, "input untouched");
    let check = policyc(dir.path(), &["check", "--deny-warnings", "suggested.yaml"]);
    assert_eq!(check.code, 0, "{}", check.stderr);

    // Enforce: the reviewed policy with the role switched, compiled over the served table.
    let suggested = std::fs::read_to_string(dir.path().join("suggested.yaml")).unwrap();
    let enforcing = suggested.replacen("    action: report\n", "    action: enforce\n", 1);
    assert_ne!(enforcing, suggested);
    write(dir.path(), "acl.yaml", &enforcing);
    let revision = compile(dir.path(), "acl.yaml", "policy.bin");
    let reloaded = daemon.wait_for(|v| v["message"] == "policy reloaded");
    assert_eq!(reloaded["new_revision"], revision.as_str(), "{reloaded}");
    for name in used {
        let mut reply = connect(daemon.addr, &format!("{name}:{port}"), AUTH).await;
        assert_eq!(reply.status, 200, "{name} is allowed under enforce");
        assert_eq!(echo_through(&mut reply.stream, b"ok").await, b"ok");
    }
    let denied = connect(daemon.addr, &format!("unused.vendor.test:{port}"), AUTH).await;
    assert_eq!(denied.status, 403, "a host the role never used stays denied");

    // Coverage over the same log: every entry used, nothing unused.
    let coverage = policyc(dir.path(), &["coverage", "--format", "json", "acl.yaml", "decisions.log"]);
    assert_eq!(coverage.code, 0, "{}", coverage.stderr);
    let report: serde_json::Value = serde_json::from_str(&coverage.stdout).unwrap();
    assert_eq!(report["roles"][0]["unused"], serde_json::json!([]), "{report}");
    assert_eq!(report["roles"][0]["entries"].as_array().unwrap().len(), 3, "{report}");
    assert!(daemon.terminate().success());
}
