//! The address stage through the daemon: names pointed by the test DNS
//! server at private, link-local, metadata, CGNAT, reserved and embedded
//! IPv4 addresses are refused before any connection; operator rules and
//! their precedence; self-connection; DNS rebinding.
//!
//! None of these addresses is ever dialled: the egress guard (harness)
//! fails the test if the proxy attempts anything outside loopback.

use std::net::{IpAddr, SocketAddr};

use egress_policy::policy::AddressSpec;
use ipnet::IpNet;

use crate::harness::{ACL, Proxy, connect, echo_through, lo};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

#[tokio::test]
async fn special_purpose_answers_are_denied_naming_the_rule() {
    let dns = TestDns::start().await;
    let cases: &[(&str, &str)] = &[
        ("loopback.test", "127.0.0.5"),
        ("private10.test", "10.0.0.1"),
        ("private172.test", "172.16.5.4"),
        ("private192.test", "192.168.1.1"),
        ("metadata.test", "169.254.169.254"),
        ("cgnat.test", "100.64.0.1"),
        ("this-network.test", "0.1.2.3"),
        ("reserved.test", "240.0.0.1"),
        ("broadcast.test", "255.255.255.255"),
        ("multicast.test", "224.0.0.1"),
        ("documentation.test", "192.0.2.1"),
        ("benchmark.test", "198.18.0.1"),
        ("v6-loopback.test", "::1"),
        ("v6-unspecified.test", "::"),
        ("v6-ula.test", "fd00::1"),
        ("v6-link-local.test", "fe80::1"),
        ("v6-documentation.test", "2001:db8::1"),
        ("mapped.test", "::ffff:10.0.0.1"),
        ("compatible.test", "::10.0.0.1"),
        ("nat64.test", "64:ff9b::a00:1"),
        ("nat64-local.test", "64:ff9b:1::a00:1"),
        ("sixtofour.test", "2002:a00:1::1"),
        ("teredo.test", "2001::1"),
        ("siit.test", "::ffff:0:a00:1"),
    ];
    for (name, ip) in cases {
        dns.set(name, Answer::Records(vec![ip.parse::<IpAddr>().unwrap()]));
    }
    let proxy = Proxy::start(ACL, dns.addr(), |_| {}).await;
    for (name, ip) in cases {
        let reply = connect(proxy.addr, &format!("{name}:443"), "").await;
        assert_eq!(reply.status, 403, "{name} -> {ip}: {}", reply.body);
        let shown: IpAddr = ip.parse().unwrap();
        assert!(
            reply.body.contains(&format!("address {shown} denied by rule")) || reply.body.contains("denied by rule"),
            "{name}: {}",
            reply.body
        );
    }
    let loopback = connect(proxy.addr, "loopback.test:22", "").await;
    assert!(loopback.body.to_lowercase().contains("loopback"), "{}", loopback.body);
    assert_eq!(proxy.attempt_count(), 0, "nothing was dialled");
}

#[tokio::test]
async fn ip_literals_skip_dns_but_not_the_classifier() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |_| {}).await;
    for target in ["127.0.0.1:22", "[::1]:22", "[::ffff:127.0.0.1]:22", "169.254.169.254:80", "10.1.2.3:443"] {
        let reply = connect(proxy.addr, target, "").await;
        // The default rule allows only `*.test` and 127.0.1.1 by name; others are denied by the ACL or the address stage.
        assert_eq!(reply.status, 403, "{target}: {}", reply.body);
    }
    assert!(dns.queries().is_empty());
    assert_eq!(proxy.attempt_count(), 0);
}

#[tokio::test]
async fn operator_rules_most_specific_wins_deny_wins_ties() {
    let dns = TestDns::start().await;
    let a = Upstream::echo(lo(0, 2, 1)).await;
    let b = Upstream::echo(lo(0, 2, 2)).await;
    dns.set("a.test", Answer::Records(vec![a.addr.ip()]));
    dns.set("b.test", Answer::Records(vec![b.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        let r = &mut c.address_rules;
        // The /24 is allowed; b's exact IP:PORT is denied (more specific wins).
        r.allow_ranges.push("127.0.2.0/24".parse::<IpNet>().unwrap());
        r.deny_addresses.push(AddressSpec::Socket(b.addr));
        // At equal specificity, deny beats allow.
        r.allow_ranges.push("127.0.3.0/24".parse::<IpNet>().unwrap());
        r.deny_ranges.push("127.0.3.0/24".parse::<IpNet>().unwrap());
    })
    .await;
    let mut ok = connect(proxy.addr, &format!("a.test:{}", a.addr.port()), "").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(echo_through(&mut ok.stream, b"a").await, b"a");
    let denied = connect(proxy.addr, &format!("b.test:{}", b.addr.port()), "").await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(denied.body.contains("127.0.2.2"), "{}", denied.body);
    dns.set("tie.test", Answer::Records(vec![lo(0, 3, 1)]));
    let tie = connect(proxy.addr, "tie.test:80", "").await;
    assert_eq!(tie.status, 403, "{}", tie.body);
    assert_eq!(proxy.attempts.lock().unwrap().as_slice(), &[a.addr]);
}

#[tokio::test]
async fn the_proxy_never_connects_to_itself() {
    let dns = TestDns::start().await;
    // Even with all of 127/8 allowed by the operator.
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.address_rules.allow_ranges.push("127.0.0.0/8".parse::<IpNet>().unwrap());
    })
    .await;
    dns.set("self.test", Answer::Records(vec![proxy.addr.ip()]));
    let reply = connect(proxy.addr, &format!("self.test:{}", proxy.addr.port()), "").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.to_lowercase().contains("self"), "{}", reply.body);
    assert_eq!(proxy.attempt_count(), 0);
}

#[tokio::test]
async fn unsafe_allow_private_ranges_still_refuses_loopback_and_metadata() {
    let dns = TestDns::start().await;
    dns.set("private.test", Answer::Records(vec!["10.9.8.7".parse().unwrap()]));
    dns.set("metadata.test", Answer::Records(vec!["169.254.169.254".parse().unwrap()]));
    dns.set("loopback.test", Answer::Records(vec![lo(0, 0, 9)]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| c.address_rules.unsafe_allow_private_ranges = true).await;
    // 10.9.8.7 is permitted by the classifier; the egress guard (a test-only
    // stand-in for the network) refuses to dial it, so the answer is 502.
    let private = connect(proxy.addr, "private.test:443", "").await;
    assert_eq!(private.status, 502, "{}", private.body);
    assert!(private.body.contains("egress guard"), "{}", private.body);
    proxy.attempts.lock().unwrap().clear();
    for name in ["metadata.test", "loopback.test"] {
        let reply = connect(proxy.addr, &format!("{name}:443"), "").await;
        assert_eq!(reply.status, 403, "{name}: {}", reply.body);
    }
}

#[tokio::test]
async fn rebinding_answers_cannot_redirect_a_checked_connection() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 4, 1)).await;
    // First lookup: the allowed upstream; every later lookup: metadata.
    dns.set(
        "rebind.test",
        Answer::Sequence(vec![
            Answer::Records(vec![upstream.addr.ip()]),
            Answer::Records(vec!["169.254.169.254".parse().unwrap()]),
        ]),
    );
    let proxy =
        Proxy::start(ACL, dns.addr(), |c| c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr)))
            .await;
    let target = format!("rebind.test:{}", upstream.addr.port());
    let mut first = connect(proxy.addr, &target, "").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(echo_through(&mut first.stream, b"checked").await, b"checked");
    let second = connect(proxy.addr, &target, "").await;
    assert_eq!(second.status, 403, "{}", second.body);
    assert!(second.body.contains("169.254.169.254"), "{}", second.body);
    let attempts: Vec<SocketAddr> = proxy.attempts.lock().unwrap().clone();
    assert_eq!(attempts, vec![upstream.addr], "only the checked address was ever dialled");
}

#[tokio::test]
async fn a_mixed_answer_uses_only_the_permitted_addresses() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 4, 2)).await;
    dns.set(
        "mixed.test",
        Answer::Records(vec!["10.0.0.1".parse().unwrap(), "169.254.169.254".parse().unwrap(), upstream.addr.ip()]),
    );
    let proxy =
        Proxy::start(ACL, dns.addr(), |c| c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr)))
            .await;
    let mut reply = connect(proxy.addr, &format!("mixed.test:{}", upstream.addr.port()), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(echo_through(&mut reply.stream, b"x").await, b"x");
    assert_eq!(proxy.attempts.lock().unwrap().as_slice(), &[upstream.addr]);
}
