//! statsd export: real traffic through the proxy, and the DogStatsD lines a
//! UDP socket on 127.0.0.1 receives, with Smokescreen's names and tags.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use egress_policy::policy::AddressSpec;
use tokio::net::UdpSocket;

use crate::harness::{ACL, Proxy, connect, echo_through, lo};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

/// Receives datagrams until every line of `wanted` (exact, or a prefix when
/// it ends with `*`) has been seen, or 5 s pass; returns everything received.
async fn receive_until(socket: &UdpSocket, wanted: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let seen = |lines: &[String], w: &str| match w.strip_suffix('*') {
        Some(prefix) => lines.iter().any(|l| l.starts_with(prefix)),
        None => lines.iter().any(|l| l == w),
    };
    while !wanted.iter().all(|w| seen(&lines, w)) && Instant::now() < deadline {
        let mut buf = [0u8; 2048];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            lines.push(String::from_utf8(buf[..n].to_vec()).expect("UTF-8 datagram"));
        }
    }
    for w in wanted {
        assert!(seen(&lines, w), "missing {w} in {lines:#?}");
    }
    lines
}

#[tokio::test]
async fn smokescreen_metric_names_reach_a_udp_listener() {
    let statsd = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 9, 21)).await;
    let closed = std::net::TcpListener::bind((lo(0, 9, 22), 0)).unwrap().local_addr().unwrap();
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    dns.set("closed.test", Answer::Records(vec![closed.ip()]));
    dns.set("private.test", Answer::Records(vec!["192.168.1.1".parse().unwrap()]));
    let target: SocketAddr = statsd.local_addr().unwrap();
    let proxy = Proxy::start(ACL, dns.addr(), move |c| {
        c.statsd_address = Some(target.to_string());
        c.time_connect = true;
        c.max_tunnels = 1;
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
        c.address_rules.allow_addresses.push(AddressSpec::Socket(closed));
    })
    .await;

    let mut tunnel = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(tunnel.status, 200);
    assert_eq!(echo_through(&mut tunnel.stream, b"1234567").await, b"1234567");
    assert_eq!(connect(proxy.addr, "upstream.test:1", "").await.status, 429);
    drop(tunnel);
    let lines = receive_until(&statsd, &["smokescreen.cn.close:1|c|#role:_none,project:other"]).await;
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("smokescreen.acl.allow:1|c|")).count(),
        2,
        "the capped request was decided too: {lines:#?}"
    );
    let mut all = lines;
    assert_eq!(connect(proxy.addr, "denied.example:443", "").await.status, 403);
    assert_eq!(connect(proxy.addr, "private.test:443", "").await.status, 403);
    assert_eq!(connect(proxy.addr, &format!("closed.test:{}", closed.port()), "").await.status, 502);
    all.extend(
        receive_until(
            &statsd,
            &[
                "smokescreen.acl.deny:1|c|#role:_none,def_rule:true,project:other",
                "smokescreen.cn.atpt.total:1|c|#success:false",
                "smokescreen.cn.atpt.connect.err:1|c|#type:refused",
            ],
        )
        .await,
    );
    let expected = [
        "smokescreen.acl.allow:1|c|#role:_none,def_rule:true,project:other",
        "smokescreen.resolver.attempts_total:1|c",
        "smokescreen.resolver.lookup_time:*",
        "smokescreen.cn.atpt.total:1|c|#success:true",
        "smokescreen.cn.atpt.connect.time:*",
        "smokescreen.tunnels.concurrency_limited:1|c",
        "smokescreen.cn.close:1|c|#role:_none,project:other",
        "smokescreen.cn.duration:*",
        "smokescreen.cn.bytes_in:7|h|#role:_none,project:other",
        "smokescreen.cn.bytes_out:7|h|#role:_none,project:other",
        "smokescreen.resolver.errors_total:1|c",
        "smokescreen.acl.deny:1|c|#role:_none,def_rule:true,project:other",
        "smokescreen.cn.atpt.connect.err:1|c|#type:refused",
    ];
    for line in expected {
        let found = match line.strip_suffix('*') {
            Some(prefix) => all.iter().any(|l| l.starts_with(prefix)),
            None => all.iter().any(|l| l == line),
        };
        assert!(found, "missing {line} in {all:#?}");
    }
    let count = |prefix: &str| all.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("smokescreen.resolver.attempts_total"), 3, "{all:#?}");
    assert_eq!(count("smokescreen.cn.atpt.total"), 2, "{all:#?}");
    for line in &all {
        assert!(line.starts_with("smokescreen."), "{line}");
        assert!(!line.contains("test:") && !line.contains("127.0."), "no hosts or addresses: {line}");
        let (_, kind_and_tags) = line.split_once('|').unwrap();
        assert!(["c", "ms", "h"].contains(&kind_and_tags.split('|').next().unwrap()), "{line}");
    }
}
