//! Limits and time: the tunnel cap, the idle timeout, the header timeout,
//! draining and the shutdown grace period.

use std::time::{Duration, Instant};

use egress_policy::policy::AddressSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{ACL, Proxy, connect, echo_through, lo, read_to_end, send};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

#[tokio::test]
async fn the_tunnel_cap_answers_429_and_frees_on_close() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 5, 1)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.max_tunnels = 1;
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await;
    let target = format!("upstream.test:{}", upstream.addr.port());
    let mut first = connect(proxy.addr, &target, "").await;
    assert_eq!(first.status, 200);
    let second = connect(proxy.addr, &target, "").await;
    assert_eq!(second.status, 429);
    assert_eq!(second.header("retry-after"), Some("1"));
    // Still responsive while full.
    assert_eq!(echo_through(&mut first.stream, b"still here").await, b"still here");
    first.stream.shutdown().await.unwrap();
    let _ = read_to_end(&mut first.stream, Duration::from_secs(5)).await;
    drop(first);
    // The permit is released when the tunnel task ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let third = connect(proxy.addr, &target, "").await;
        if third.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the cap was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 5, 2)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.idle_timeout = Some(Duration::from_millis(300));
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await;
    let mut reply = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(reply.status, 200);
    // Activity keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(echo_through(&mut reply.stream, b"ping").await, b"ping");
    }
    // ...silence closes it.
    let started = Instant::now();
    let rest = read_to_end(&mut reply.stream, Duration::from_secs(5)).await;
    assert!(rest.map(|r| r.is_empty()).unwrap_or(true));
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_slow_client_is_closed_at_the_header_timeout() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |c| c.header_timeout = Duration::from_millis(400)).await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"CONNECT upstream.te").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await.expect("closed in time");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // Others are served meanwhile and after.
    let reply = connect(proxy.addr, "denied.example:443", "").await;
    assert_eq!(reply.status, 403);
}

#[tokio::test]
async fn shutdown_drains_open_tunnels_then_closes_them() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 5, 3)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let mut proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.shutdown_grace = Duration::from_millis(800);
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await;
    let mut open = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(open.status, 200);
    // A connection accepted before shutdown whose request arrives after it gets 503.
    let early = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = send(early, "CONNECT upstream.test:443 HTTP/1.1\r\nHost: upstream.test\r\n\r\n").await;
    assert_eq!(late.status, 503, "{}", late.body);
    assert!(TcpStream::connect(proxy.addr).await.is_err(), "no longer accepting");
    // The open tunnel keeps working during the grace period...
    assert_eq!(echo_through(&mut open.stream, b"draining").await, b"draining");
    // ...and is closed when it ends.
    let started = Instant::now();
    let _ = read_to_end(&mut open.stream, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    proxy.stop().await.expect("run returns Ok after draining");
}

#[tokio::test]
async fn shutdown_returns_at_once_when_nothing_is_open() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |c| c.shutdown_grace = Duration::from_secs(30)).await;
    let started = Instant::now();
    proxy.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}
