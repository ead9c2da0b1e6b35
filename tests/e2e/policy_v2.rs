//! Policy v2 end to end: a v2 policy checked and compiled by the real
//! `policyc`, enforced by the real `proxyd`, for each of the five kinds of
//! rule: a role reaching an internal listener through its exception on its
//! port (200 and echo); the same role on another port (403); another role
//! (403); another address of that host outside the exception's CIDRs (403,
//! refused before connecting); cloud metadata inside a wide exception (403).
//!
//! Private addresses are never contacted outside the sandbox: the case that
//! really connects to 10.20.0.1 runs in a private network namespace
//! (`unshare -rn`: a user and network namespace with nothing but `lo`), in
//! which the test adds the address to `lo`. The refusal cases are refused
//! before any connect, so they also run in the normal namespace, where the
//! decision log shows that no address was tried.

use std::process::Command;

use serde_json::Value;
use testkit::client::{connect, echo_through};
use testkit::daemon::Daemon;
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

use crate::support::{compile, policyc, write};

/// Set (to anything) in the environment of the re-executed test binary inside the namespace.
const NETNS_ENV: &str = "E2E_POLICY_V2_IN_NETNS";
/// The exception's listener, on `lo` of the private namespace only.
const INTERNAL_IP: &str = "10.20.0.1";
/// Another address of the same host, outside the exception's CIDRs.
const OUTSIDE_IP: &str = "10.30.0.1";
const INNER_TEST: &str = "policy_v2::in_private_network_namespace_each_kind_of_v2_rule_holds";

/// The v2 policy under test; `PORT` is the internal listener's port.
fn policy(port: u16) -> String {
    format!(
        "\
version: v2
services:
  - name: ledger-sync
    project: payments
    action: enforce
    allowed_domains: [api.vendor.test]
    allowed_ports: [443]
    internal_destinations:
      - host: ledger.internal.test
        cidrs: [10.20.0.0/24]
        ports: [{port}]
        reason: reads the ledger replica (e2e)
  - name: metadata-reader
    project: infra
    action: enforce
    internal_destinations:
      - host: wide.internal.test
        cidrs: [169.254.0.0/16]
        ports: [{port}]
        reason: a deliberately wide exception
  - name: reporting
    project: bi
    action: enforce
    allowed_domains: [reports.vendor.test]
default:
  project: other
  action: enforce
"
    )
}

use crate::support::AUTH;

/// Compiles the policy with the real `policyc` (after `check`, which must
/// only warn about the exception overlapping metadata) and returns the table's path.
fn compiled(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    write(dir, "acl.yaml", &policy(port));
    let check = policyc(dir, &["check", "--format", "json", "acl.yaml"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let report: Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    let codes: Vec<&str> =
        report["diagnostics"].as_array().unwrap().iter().filter_map(|d| d["code"].as_str()).collect();
    assert_eq!(codes, ["P108"], "the exception overlapping cloud metadata is warned about");
    compile(dir, "acl.yaml", "policy.bin");
    dir.join("policy.bin")
}

/// A proxy for one role (the proxy password's role), with an admin listener.
fn proxy_for(role: &str, table: &std::path::Path, dns: &TestDns) -> Daemon {
    crate::support::proxy_for(role, table, dns.addr(), &["--admin-listen", "127.0.0.1:0"])
}

fn decision_line(daemon: &mut Daemon, host: &str) -> Value {
    let host = host.to_owned();
    daemon.wait_for(move |v| {
        v["message"] == "CANONICAL-PROXY-DECISION" && v["requested_host"].as_str().is_some_and(|h| h.starts_with(&host))
    })
}

/// The four refusals, which never connect anywhere: safe in any namespace.
/// `internal_port` is the exception's port.
async fn assert_refusals(
    ledger: &mut Daemon,
    reporting: &mut Daemon,
    metadata: &mut Daemon,
    dns: &TestDns,
    internal_port: u16,
) {
    // The same role on another port: denied at the name stage, before DNS.
    let queries_before = dns.query_count("ledger.internal.test");
    let other_port = internal_port.wrapping_add(1).max(1);
    let reply = connect(ledger.addr, &format!("ledger.internal.test:{other_port}"), AUTH).await;
    assert_eq!(reply.status, 403);
    let line = decision_line(ledger, "ledger.internal.test");
    assert_eq!(
        (line["allow"].as_bool(), line["decision_reason"].as_str()),
        (Some(false), Some("rule has enforce policy"))
    );
    assert!(line.get("internal_destination_reason").is_none(), "{line}");
    assert_eq!(dns.query_count("ledger.internal.test"), queries_before, "no DNS query for a denied name");
    // A listed host on a port outside allowed_ports: port_not_allowed.
    let reply = connect(ledger.addr, "api.vendor.test:8443", AUTH).await;
    assert_eq!(reply.status, 403);
    let line = decision_line(ledger, "api.vendor.test");
    assert_eq!(line["decision_reason"], "port not in rule's allowed ports", "{line}");

    // Another role: the exception is not theirs.
    let reply = connect(reporting.addr, &format!("ledger.internal.test:{internal_port}"), AUTH).await;
    assert_eq!(reply.status, 403);
    let line = decision_line(reporting, "ledger.internal.test");
    assert_eq!((line["role"].as_str(), line["allow"].as_bool()), (Some("reporting"), Some(false)), "{line}");
    assert!(line.get("dst_ip").is_none(), "refused before any address was tried: {line}");

    // Another address of that host, outside the CIDRs: refused at the address stage.
    dns.set("ledger.internal.test", Answer::Records(vec![OUTSIDE_IP.parse().unwrap()]));
    let reply = connect(ledger.addr, &format!("ledger.internal.test:{internal_port}"), AUTH).await;
    assert_eq!(reply.status, 403);
    let line = decision_line(ledger, "ledger.internal.test");
    assert_eq!(line["refusal"], "denied", "{line}");
    assert_eq!(line["dst_ip"], OUTSIDE_IP, "{line}");
    let reason = line["decision_reason"].as_str().unwrap();
    assert!(reason.contains(&format!("address {OUTSIDE_IP} denied")) && reason.contains("10.0.0.0/8"), "{reason}");

    // Cloud metadata inside a wide exception: never opened.
    dns.set("wide.internal.test", Answer::Records(vec!["169.254.169.254".parse().unwrap()]));
    let reply = connect(metadata.addr, &format!("wide.internal.test:{internal_port}"), AUTH).await;
    assert_eq!(reply.status, 403);
    let line = decision_line(metadata, "wide.internal.test");
    assert_eq!(line["refusal"], "denied", "{line}");
    let reason = line["decision_reason"].as_str().unwrap();
    assert!(reason.contains("169.254.169.254") && reason.contains("no policy rule or exception can open"), "{reason}");
}

/// The refusal cases in the normal network namespace: nothing is contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_refusals_happen_before_any_connect() {
    let dns = TestDns::start().await;
    dns.set("ledger.internal.test", Answer::Records(vec![INTERNAL_IP.parse().unwrap()]));
    let dir = tempfile::tempdir().unwrap();
    let internal_port = 5432;
    let table = compiled(dir.path(), internal_port);
    let mut ledger = proxy_for("ledger-sync", &table, &dns);
    let mut reporting = proxy_for("reporting", &table, &dns);
    let mut metadata = proxy_for("metadata-reader", &table, &dns);
    assert_refusals(&mut ledger, &mut reporting, &mut metadata, &dns, internal_port).await;

    // /policy shows the exception with its reason and the effective network rules.
    let admin: std::net::SocketAddr = ledger.listening["admin"].as_str().unwrap().parse().unwrap();
    let body = testkit::scrape::get(admin, "/policy").await.body;
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["language_version"], "v2", "{served}");
    let internal = served["internal_destinations"].as_array().unwrap();
    assert!(internal.iter().any(|d| d["reason"] == "reads the ledger replica (e2e)" && d["role"] == "ledger-sync"));
    assert!(served["network"]["operator_rules"].is_array(), "{served}");

    // A table this build cannot read (format version 1) is refused at reload;
    // the active table keeps serving.
    let mut old_format = std::fs::read(&table).unwrap();
    old_format[8..12].copy_from_slice(&1u32.to_le_bytes());
    let staged = dir.path().join("staged.bin");
    std::fs::write(&staged, &old_format).unwrap();
    std::fs::rename(&staged, &table).unwrap();
    let refused = ledger.wait_for(|v| v["message"] == "policy reload refused; the active policy keeps serving");
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("version 1") && reason.contains("version 2"), "{reason}");
    let reply = connect(ledger.addr, "api.vendor.test:8443", AUTH).await;
    assert_eq!(reply.status, 403, "the old table still decides");
    let line = decision_line(&mut ledger, "api.vendor.test");
    assert_eq!(line["decision_reason"], "port not in rule's allowed ports");

    for daemon in [ledger, reporting, metadata] {
        assert!(daemon.terminate().success());
    }
}

/// Runs the whole conformance test, including the one case that really
/// connects to a private address, inside a private network namespace.
#[test]
fn v2_rules_hold_end_to_end_in_a_private_network_namespace() {
    if std::env::var_os(NETNS_ENV).is_some() {
        return; // already inside: the inner test does the work
    }
    match Command::new("unshare").args(["-rn", "ip", "link", "set", "lo", "up"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "skipped: cannot create a private network namespace (unshare -rn): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(error) => {
            println!("skipped: `unshare` or `ip` is not available: {error}");
            return;
        }
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .arg("-rn")
        .arg(exe)
        .args(["--exact", INNER_TEST, "--ignored", "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "inner test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the inner test did not run:\n{stdout}\n{stderr}");
}

/// Only ever run by the test above, inside `unshare -rn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside a private network namespace, started by v2_rules_hold_end_to_end_in_a_private_network_namespace"]
async fn in_private_network_namespace_each_kind_of_v2_rule_holds() {
    in_private_namespace_each_kind_of_v2_rule_holds().await;
}

async fn in_private_namespace_each_kind_of_v2_rule_holds() {
    if std::env::var_os(NETNS_ENV).is_none() {
        println!("skipped: only runs inside the private network namespace its outer test creates");
        return;
    }
    // Safety: refuse to add addresses anywhere but an empty namespace.
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        links.lines().all(|l| l.split(':').nth(1).is_some_and(|name| name.trim() == "lo")),
        "not a private network namespace: {links}"
    );
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{INTERNAL_IP}/32"), "dev", "lo"],
        vec!["addr", "add", &format!("{OUTSIDE_IP}/32"), "dev", "lo"],
    ] {
        let status = Command::new("ip").args(&args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }

    let dns = TestDns::start().await;
    let internal = Upstream::echo(INTERNAL_IP.parse().unwrap()).await;
    let port = internal.addr.port();
    // A listener on the outside address and the exception's port: were the
    // address stage to let it through, the proxy would reach it.
    let outside = tokio::net::TcpListener::bind((OUTSIDE_IP.parse::<std::net::IpAddr>().unwrap(), port)).await.unwrap();
    dns.set("ledger.internal.test", Answer::Records(vec![INTERNAL_IP.parse().unwrap()]));
    let dir = tempfile::tempdir().unwrap();
    let table = compiled(dir.path(), port);
    let mut ledger = proxy_for("ledger-sync", &table, &dns);
    let mut reporting = proxy_for("reporting", &table, &dns);
    let mut metadata = proxy_for("metadata-reader", &table, &dns);

    // The exception: its role, its host, its port, an address in its CIDRs.
    let mut tunnel = connect(ledger.addr, &format!("ledger.internal.test:{port}"), AUTH).await;
    assert_eq!(tunnel.status, 200);
    assert_eq!(echo_through(&mut tunnel.stream, b"ledger?").await, b"ledger?");
    let line = decision_line(&mut ledger, "ledger.internal.test");
    assert_eq!(line["decision_reason"], "host matched internal destination in rule", "{line}");
    assert_eq!(line["internal_destination_reason"], "reads the ledger replica (e2e)", "{line}");
    assert_eq!(line["dst_ip"], INTERNAL_IP, "{line}");
    assert_eq!(internal.accepted(), 1);
    drop(tunnel);

    // The refusals; the address outside the CIDRs has a listener on the
    // exception's port, and it is never reached.
    assert_refusals(&mut ledger, &mut reporting, &mut metadata, &dns, port).await;
    let contacted = tokio::time::timeout(std::time::Duration::from_millis(200), outside.accept()).await;
    assert!(contacted.is_err(), "the address outside the CIDRs was contacted");
    assert_eq!(internal.accepted(), 1, "refusals never reach the internal listener");

    for daemon in [ledger, reporting, metadata] {
        assert!(daemon.terminate().success());
    }
}
