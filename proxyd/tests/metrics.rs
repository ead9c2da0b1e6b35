//! `/metrics` after real traffic: every request kind (allowed, denied by
//! name, denied by address through the test DNS server, connect refused,
//! tunnel cap) counted exactly once where it belongs, and role labels that
//! follow the active policy across a reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use egress_policy::policy::AddressSpec;
use proxyd::config::ProxyAuth;

use crate::harness::{ACL, Proxy, compile, connect, echo_through, lo};
use testkit::dns::{Answer, TestDns};
use testkit::scrape::{Scrape, get, scrape};
use testkit::upstream::Upstream;

const PASSWORD: &str = "metrics-test-password";

fn credentials() -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("client:{PASSWORD}"));
    format!("Proxy-Authorization: Basic {encoded}\r\n")
}

fn with_admin(role: &'static str) -> impl FnOnce(&mut proxyd::Config) {
    move |c| {
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.proxy_auth = Some(ProxyAuth { variable: "TEST".into(), password: PASSWORD.into(), role: role.into() });
    }
}

/// Scrapes until `done` holds (5 s at most): counters updated by tasks that
/// outlive the response, such as a tunnel's close.
async fn scrape_until(admin: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scraped = scrape(admin).await;
        if done(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_request_kind_is_counted_exactly() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 9, 1)).await;
    // A port nobody listens on: connections are refused.
    let closed = std::net::TcpListener::bind((lo(0, 9, 2), 0)).unwrap().local_addr().unwrap();
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    dns.set("closed.test", Answer::Records(vec![closed.ip()]));
    dns.set("private.test", Answer::Records(vec!["10.1.2.3".parse().unwrap()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        with_admin("enf")(c);
        c.max_tunnels = 1;
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
        c.address_rules.allow_addresses.push(AddressSpec::Socket(closed));
    })
    .await;
    let admin = proxy.admin.unwrap();

    // Role `enf`, allowed: the one tunnel the cap permits.
    let mut tunnel = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), &credentials()).await;
    assert_eq!(tunnel.status, 200);
    assert_eq!(echo_through(&mut tunnel.stream, b"12345").await, b"12345");
    let open = scrape(admin).await;
    assert_eq!(open.value("proxyd_tunnels_active"), "1");
    // No role, allowed, but the cap is full: 429 before any DNS query.
    assert_eq!(connect(proxy.addr, &format!("closed.test:{}", closed.port()), "").await.status, 429);
    // No role, denied by name (the global deny list): answered even with the cap full; with a
    // proxy password configured, that is the 407 challenge (the password's role might go there).
    assert_eq!(connect(proxy.addr, "denied.example:443", "").await.status, 407);
    drop(tunnel);
    scrape_until(admin, |s| s.get("proxyd_tunnels_active") == Some("0")).await;
    // No role, allowed name, private address: denied by the address stage.
    assert_eq!(connect(proxy.addr, "private.test:443", "").await.status, 403);
    // No role, allowed, nobody listening: 502.
    assert_eq!(connect(proxy.addr, &format!("closed.test:{}", closed.port()), "").await.status, 502);
    // Role `enf`, a name its rule does not allow.
    assert_eq!(connect(proxy.addr, "other.example:443", &credentials()).await.status, 403);

    let s = scrape_until(admin, |s| s.get("proxyd_tunnel_duration_seconds_count") == Some("1")).await;
    let expected = [
        ("proxyd_requests_total{outcome=\"tunnel\"}", "1"),
        ("proxyd_requests_total{outcome=\"tunnel_cap\"}", "1"),
        ("proxyd_requests_total{outcome=\"denied\"}", "2"),
        ("proxyd_requests_total{outcome=\"proxy_auth_required\"}", "1"),
        ("proxyd_requests_total{outcome=\"connect_error\"}", "1"),
        ("proxyd_requests_total{outcome=\"dns_error\"}", "0"),
        ("proxyd_requests_total{outcome=\"client_gone\"}", "0"),
        ("proxyd_decisions_total{result=\"allow\",reason=\"allowed_domain\",role=\"enf\"}", "1"),
        ("proxyd_decisions_total{result=\"deny\",reason=\"enforce_policy\",role=\"enf\"}", "1"),
        ("proxyd_decisions_total{result=\"allow\",reason=\"allowed_domain\",role=\":none\"}", "3"),
        ("proxyd_decisions_total{result=\"deny\",reason=\"global_deny_list\",role=\":none\"}", "1"),
        ("proxyd_address_denials_total{rule=\"private\"}", "1"),
        ("proxyd_dns_lookups_total", "3"),
        ("proxyd_dns_failures_total{kind=\"timeout\"}", "0"),
        ("proxyd_dns_failures_total{kind=\"error\"}", "0"),
        ("proxyd_dns_lookup_duration_seconds_count", "3"),
        ("proxyd_connect_attempts_total", "2"),
        ("proxyd_connect_failures_total{kind=\"refused\"}", "1"),
        ("proxyd_connect_failures_total{kind=\"timeout\"}", "0"),
        ("proxyd_connect_duration_seconds_count", "2"),
        ("proxyd_tunnels_active", "0"),
        ("proxyd_tunnel_duration_seconds_count", "1"),
        ("proxyd_tunnel_bytes_sum{direction=\"in\"}", "5"),
        ("proxyd_tunnel_bytes_sum{direction=\"out\"}", "5"),
        ("proxyd_tunnel_bytes_bucket{direction=\"in\",le=\"1024\"}", "1"),
        ("proxyd_tunnel_bytes_count{direction=\"out\"}", "1"),
        ("proxyd_tunnel_cap_rejections_total", "1"),
        ("proxyd_policy_reloads_total{result=\"swapped\"}", "0"),
        ("proxyd_policy_reloads_total{result=\"refused\"}", "0"),
        ("proxyd_statsd_dropped_total", "0"),
        ("proxyd_ready", "1"),
    ];
    for (series, value) in expected {
        assert_eq!(s.value(series), value, "{series} in:\n{}", s.text);
    }
    let decision_series = s.samples.keys().filter(|k| k.starts_with("proxyd_decisions_total")).count();
    assert_eq!(decision_series, 4, "only cells that happened:\n{}", s.text);
    assert_eq!(s.value(&format!("proxyd_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), "1");
    let policy: serde_json::Value = serde_json::from_str(&get(admin, "/policy").await.body).unwrap();
    let revision = policy["revision"].as_str().unwrap();
    assert_eq!(s.value(&format!("proxyd_policy_info{{revision=\"{revision}\"}}")), "1");
    for family in [
        "proxyd_requests_total counter",
        "proxyd_decisions_total counter",
        "proxyd_dns_lookup_duration_seconds histogram",
        "proxyd_tunnels_active gauge",
        "proxyd_policy_info gauge",
    ] {
        assert!(s.text.contains(&format!("# TYPE {family}\n")), "{family}");
    }
    for line in s.text.lines() {
        assert!(!line.contains("upstream.test") && !line.contains("127.0.0.1"), "no hosts or addresses: {line}");
    }
}

#[tokio::test]
async fn role_labels_follow_the_active_policy() {
    let dns = TestDns::start().await;
    let path: Arc<Mutex<PathBuf>> = Arc::default();
    let seen = Arc::clone(&path);
    let proxy = Proxy::start(ACL, dns.addr(), move |c| {
        with_admin("rep")(c);
        *seen.lock().unwrap() = c.policy.clone();
    })
    .await;
    let admin = proxy.admin.unwrap();
    let path = path.lock().unwrap().clone();

    assert_eq!(connect(proxy.addr, "denied.example:443", &credentials()).await.status, 403);
    let before = scrape(admin).await;
    assert_eq!(before.value("proxyd_decisions_total{result=\"deny\",reason=\"global_deny_list\",role=\"rep\"}"), "1");

    // The same policy without the `rep` rule: `rep` clients fold into :other.
    let without_rep = ACL.replace("  - name: rep\n    project: p-rep\n    action: report\n", "");
    assert_ne!(without_rep, ACL);
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(compile(dir.path(), &without_rep)).unwrap();
    egress_policy::table::write_atomically(&path, &bytes).unwrap();
    let reloaded = wait_for_reload(admin, "swapped").await;
    assert_eq!(reloaded["roles"], 3);

    assert_eq!(connect(proxy.addr, "denied.example:443", &credentials()).await.status, 403);
    let after = scrape(admin).await;
    assert!(
        !after.samples.keys().any(|k| k.contains("role=\"rep\"")),
        "a role the policy no longer has has no series:\n{}",
        after.text
    );
    assert_eq!(after.value("proxyd_decisions_total{result=\"deny\",reason=\"global_deny_list\",role=\":other\"}"), "1");
    assert_eq!(after.value("proxyd_policy_reloads_total{result=\"swapped\"}"), "1");
    let revision = reloaded["revision"].as_str().unwrap();
    assert_eq!(after.value(&format!("proxyd_policy_info{{revision=\"{revision}\"}}")), "1");
    assert_eq!(after.samples.keys().filter(|k| k.starts_with("proxyd_policy_info")).count(), 1);
}

/// Polls `/policy` until the last reload attempt has `result`; returns the document.
pub async fn wait_for_reload(admin: SocketAddr, result: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let policy: serde_json::Value = serde_json::from_str(&get(admin, "/policy").await.body).unwrap();
        if policy["last_reload"]["result"] == result {
            return policy;
        }
        assert!(Instant::now() < deadline, "no reload with result {result}: {policy:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_role_named_like_a_folded_value_keeps_its_own_label() {
    let dns = TestDns::start().await;
    let acl = ACL.replace("services:\n", "services:\n  - name: \":none\"\n    project: sneaky\n    action: enforce\n");
    let proxy = Proxy::start(&acl, dns.addr(), with_admin(":none")).await;
    let admin = proxy.admin.unwrap();
    // The real role `:none` (by password) and a client without a role (challenged, as a password is configured).
    assert_eq!(connect(proxy.addr, "denied.example:443", &credentials()).await.status, 403);
    assert_eq!(connect(proxy.addr, "denied.example:443", "").await.status, 407);
    let s = scrape(admin).await;
    assert_eq!(s.value("proxyd_decisions_total{result=\"deny\",reason=\"global_deny_list\",role=\"::none\"}"), "1");
    assert_eq!(s.value("proxyd_decisions_total{result=\"deny\",reason=\"global_deny_list\",role=\":none\"}"), "1");
}
