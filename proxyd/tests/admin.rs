//! The admin listener: `/healthz`, `/readyz` through a drain, `/policy`
//! through good and bad reloads, and what it refuses (other methods,
//! bodies, huge heads, slow heads, unknown paths).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_policy::policy::AddressSpec;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{ACL, Proxy, connect, echo_through, lo};
use crate::metrics::wait_for_reload;
use testkit::dns::{Answer, TestDns};
use testkit::scrape::{get, request};
use testkit::upstream::Upstream;

fn admin_on_loopback(c: &mut proxyd::Config) {
    c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

#[tokio::test]
async fn readyz_turns_503_while_draining_and_healthz_stays_200() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 9, 11)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let mut proxy = Proxy::start(ACL, dns.addr(), |c| {
        admin_on_loopback(c);
        c.shutdown_grace = Duration::from_secs(5);
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await;
    let admin = proxy.admin.unwrap();
    let ready = get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(get(admin, "/healthz").await.status, 200);

    // An open tunnel keeps the drain going (up to the grace period).
    let mut tunnel = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(tunnel.status, 200);
    proxy.begin_shutdown();
    let deadline = Instant::now() + Duration::from_secs(3);
    let draining = loop {
        let reply = get(admin, "/readyz").await;
        if reply.status != 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(draining.status, 503);
    assert!(draining.body.contains("draining"), "{}", draining.body);
    assert_eq!(get(admin, "/healthz").await.status, 200, "alive while draining");
    assert_eq!(echo_through(&mut tunnel.stream, b"still open").await, b"still open");
    drop(tunnel);
    proxy.stop().await.unwrap();
    assert!(TcpStream::connect(admin).await.is_err(), "the admin listener closes when the proxy stops");
}

#[tokio::test]
async fn policy_reports_the_table_and_every_reload_attempt() {
    let dns = TestDns::start().await;
    let path: Arc<Mutex<PathBuf>> = Arc::default();
    // `open` is disabled, so the test ACL's `opn` rule becomes `report`.
    let acl = ACL.replace("action: open", "action: report");
    let proxy = Proxy::start(&acl, dns.addr(), {
        let seen = Arc::clone(&path);
        move |c| {
            admin_on_loopback(c);
            c.disabled_actions.insert(egress_policy::policy::Action::Open);
            *seen.lock().unwrap() = c.policy.clone();
        }
    })
    .await;
    let admin = proxy.admin.unwrap();
    let path = path.lock().unwrap().clone();
    let reply = get(admin, "/policy").await;
    assert_eq!(reply.status, 200);
    assert!(reply.head.to_ascii_lowercase().contains("content-type: application/json"), "{}", reply.head);
    let policy: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let revision = policy["revision"].as_str().unwrap().to_owned();
    assert_eq!(revision.len(), 12);
    assert_eq!(policy["policy_file"], path.display().to_string());
    assert_eq!(policy["file_sha256"], hex::encode(Sha256::digest(std::fs::read(&path).unwrap())));
    assert_eq!(policy["source_file"], "test.yaml");
    assert_eq!(policy["source_sha256"], hex::encode(Sha256::digest(acl.as_bytes())));
    assert_eq!(policy["compiler"], format!("policyc {}", env!("CARGO_PKG_VERSION")));
    let loaded_at = policy["loaded_at"].as_str().unwrap();
    assert!(loaded_at.len() == 20 && loaded_at.ends_with('Z') && loaded_at.as_bytes()[10] == b'T', "{loaded_at}");
    assert_eq!(policy["roles"], 4);
    assert_eq!(policy["has_default_rule"], true);
    // enf: 2 allowed domains, default: 2, global deny list: 1.
    assert_eq!(policy["patterns"], 5);
    assert_eq!(policy["disabled_actions"], serde_json::json!(["open"]));
    assert_eq!(policy["last_reload"], serde_json::Value::Null);

    // A refused candidate: the error is reported and the table keeps serving.
    egress_policy::table::write_atomically(&path, b"not a table at all").unwrap();
    let refused = wait_for_reload(admin, "refused").await;
    assert_eq!(refused["revision"], revision.as_str());
    assert_eq!(refused["loaded_at"], loaded_at);
    let error = refused["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("not a compiled policy table"), "{error}");
    assert!(refused["last_reload"]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(refused["reloads"], serde_json::json!({"swapped": 0, "unchanged": 0, "refused": 1}));
    // One with the disabled action: refused, with the rule named.
    let dir = tempfile::tempdir().unwrap();
    let with_open = crate::harness::compile(dir.path(), ACL);
    egress_policy::table::write_atomically(&path, &std::fs::read(with_open).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let p: serde_json::Value = serde_json::from_str(&get(admin, "/policy").await.body).unwrap();
        if p["reloads"]["refused"] == 2 || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused["last_reload"]["error"].as_str().unwrap().contains("`opn`"), "{refused:#}");

    // A good one.
    let relaxed = acl.replace("global_deny_list: [denied.example]", "global_deny_list: []");
    let good = crate::harness::compile(dir.path(), &relaxed);
    egress_policy::table::write_atomically(&path, &std::fs::read(good).unwrap()).unwrap();
    let swapped = wait_for_reload(admin, "swapped").await;
    assert_ne!(swapped["revision"], revision.as_str());
    assert_eq!(swapped["last_reload"]["error"], serde_json::Value::Null);
    assert_eq!(swapped["patterns"], 4);
    assert_eq!(swapped["source_sha256"], hex::encode(Sha256::digest(relaxed.as_bytes())));
    let s = testkit::scrape::scrape(admin).await;
    assert_eq!(s.value("proxyd_policy_reloads_total{result=\"refused\"}"), "2");
    assert_eq!(s.value("proxyd_policy_reloads_total{result=\"swapped\"}"), "1");
}

#[tokio::test]
async fn admin_refuses_what_it_does_not_serve() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        admin_on_loopback(c);
        c.header_timeout = Duration::from_secs(1);
    })
    .await;
    let admin = proxy.admin.unwrap();

    let post = request(admin, b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(post.status, 405);
    assert!(post.head.to_ascii_lowercase().contains("allow: get, head"), "{}", post.head);
    let connect = request(admin, b"CONNECT upstream.test:443 HTTP/1.1\r\nHost: upstream.test:443\r\n\r\n").await;
    assert_eq!(connect.status, 405, "the admin port is not a proxy");
    let body = request(admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").await;
    assert_eq!(body.status, 413);
    let chunked =
        request(admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
    assert_eq!(chunked.status, 413);
    assert_eq!(get(admin, "/nope").await.status, 404);
    assert_eq!(get(admin, "/metrics/../policy").await.status, 404);
    let head = request(admin, b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    // A head larger than the admin listener reads.
    let huge = format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(32 * 1024));
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.expect("closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Slowloris: a head that never ends, one header a little at a time.
    for idle in [false, true] {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        let started = Instant::now();
        if !idle {
            stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        }
        let closed_after = loop {
            if !idle && stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break started.elapsed();
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => assert!(started.elapsed() < Duration::from_secs(5), "slow head still open (idle: {idle})"),
            }
        };
        assert!(closed_after < Duration::from_secs(3), "closed after {closed_after:?} (idle: {idle})");
    }
    assert_eq!(get(admin, "/healthz").await.status, 200, "still serving");
}
