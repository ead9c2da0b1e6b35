//! Tests of the in-test DNS server, through proxyd's own resolver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use proxyd::resolver::{ResolveError, Resolver, ResolverInitError, nameservers_from_resolv_conf};

use testkit::dns::{Answer, TestDns};

/// Scheduling slack allowed beyond a timeout (debug build, 2 cores, tests in parallel).
const SLACK: Duration = Duration::from_millis(400);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| ip(text)).collect()
}

async fn setup(timeout: Duration) -> (TestDns, Resolver) {
    let dns = TestDns::start().await;
    let resolver = Resolver::new(&[dns.addr()], timeout).unwrap();
    (dns, resolver)
}

fn sorted(mut queries: Vec<(String, RecordType)>) -> Vec<(String, RecordType)> {
    queries.sort_by_key(|(name, kind)| (name.clone(), u16::from(*kind)));
    queries
}

#[tokio::test]
async fn ipv4_only_in_answer_order() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("v4.test", Answer::Records(ips(&["192.0.2.7", "192.0.2.1", "198.51.100.3"])));
    assert_eq!(resolver.lookup("v4.test").await.unwrap(), ips(&["192.0.2.7", "192.0.2.1", "198.51.100.3"]));
}

#[tokio::test]
async fn ipv6_only() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("v6.test", Answer::Records(ips(&["2001:db8::2", "2001:db8::1"])));
    assert_eq!(resolver.lookup("v6.test").await.unwrap(), ips(&["2001:db8::2", "2001:db8::1"]));
}

#[tokio::test]
async fn both_families_ipv4_first_deduplicated() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set(
        "dual.test",
        Answer::Records(ips(&["2001:db8::1", "192.0.2.2", "::ffff:127.0.0.1", "192.0.2.1", "192.0.2.2"])),
    );
    assert_eq!(
        resolver.lookup("dual.test").await.unwrap(),
        ips(&["192.0.2.2", "192.0.2.1", "2001:db8::1", "::ffff:127.0.0.1"])
    );
    // One A and one AAAA query, nothing else.
    assert_eq!(
        sorted(dns.queries()),
        vec![("dual.test".to_owned(), RecordType::A), ("dual.test".to_owned(), RecordType::AAAA)]
    );
}

#[tokio::test]
async fn names_are_case_insensitive_and_trailing_dot_is_accepted() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("MiXeD.Test", Answer::Records(ips(&["192.0.2.9"])));
    assert_eq!(resolver.lookup("mixed.test.").await.unwrap(), ips(&["192.0.2.9"]));
    assert_eq!(dns.query_count("MIXED.test."), 2);
}

#[tokio::test]
async fn nxdomain_and_unknown_names_are_not_found() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("gone.test", Answer::NxDomain);
    for name in ["gone.test", "never-set.test"] {
        assert_eq!(resolver.lookup(name).await, Err(ResolveError::NotFound { name: name.to_owned() }));
    }
}

#[tokio::test]
async fn a_name_without_addresses_is_not_found() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("empty.test", Answer::Records(Vec::new()));
    assert_eq!(resolver.lookup("empty.test").await, Err(ResolveError::NotFound { name: "empty.test".into() }));
}

#[tokio::test]
async fn servfail_is_a_failure_naming_servfail() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("broken.test", Answer::ServFail);
    let err = resolver.lookup("broken.test").await.unwrap_err();
    let ResolveError::Failed { name, detail } = &err else { panic!("expected Failed, got {err:?}") };
    assert_eq!(name, "broken.test");
    assert!(detail.contains("SERVFAIL"), "{detail}");
    assert!(!err.to_string().contains("<nil>"), "{err}");
    // Reported, not retried: one A and one AAAA query.
    assert_eq!(dns.query_count("broken.test"), 2);
}

#[tokio::test]
async fn refused_is_a_failure_naming_refused() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("refused.test", Answer::Refused);
    let err = resolver.lookup("refused.test").await.unwrap_err();
    let ResolveError::Failed { detail, .. } = &err else { panic!("expected Failed, got {err:?}") };
    assert!(detail.contains("REFUSED"), "{detail}");
}

#[tokio::test]
async fn a_short_delay_is_waited_for() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("slowish.test", Answer::Delay(Duration::from_millis(100), Box::new(Answer::Records(ips(&["192.0.2.5"])))));
    assert_eq!(resolver.lookup("slowish.test").await.unwrap(), ips(&["192.0.2.5"]));
}

#[tokio::test]
async fn a_delay_longer_than_the_timeout_times_out_on_time() {
    let timeout = Duration::from_millis(500);
    let (dns, resolver) = setup(timeout).await;
    dns.set("slow.test", Answer::Delay(Duration::from_secs(3), Box::new(Answer::Records(ips(&["192.0.2.5"])))));
    let started = Instant::now();
    let result = resolver.lookup("slow.test").await;
    let elapsed = started.elapsed();
    assert_eq!(result, Err(ResolveError::Timeout { name: "slow.test".into(), after: timeout }));
    assert!(elapsed >= timeout - Duration::from_millis(20), "gave up early: {elapsed:?}");
    assert!(elapsed < timeout + SLACK, "took {elapsed:?}");
}

#[tokio::test]
async fn silence_times_out_on_time() {
    let timeout = Duration::from_millis(400);
    let (dns, resolver) = setup(timeout).await;
    dns.set("silent.test", Answer::Silent);
    let started = Instant::now();
    let result = resolver.lookup("silent.test").await;
    let elapsed = started.elapsed();
    assert_eq!(result, Err(ResolveError::Timeout { name: "silent.test".into(), after: timeout }));
    assert!(elapsed < timeout + SLACK, "took {elapsed:?}");
    assert!(dns.query_count("silent.test") >= 2, "{:?}", dns.queries());
}

#[tokio::test]
async fn a_slow_name_does_not_hold_up_another() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("slow.test", Answer::Delay(Duration::from_secs(2), Box::new(Answer::Records(ips(&["192.0.2.5"])))));
    dns.set("fast.test", Answer::Records(ips(&["192.0.2.6"])));
    let slow = resolver.lookup("slow.test");
    let fast = async {
        let started = Instant::now();
        let result = resolver.lookup("fast.test").await;
        (result, started.elapsed())
    };
    let (slow, (fast, fast_took)) = tokio::join!(slow, fast);
    assert_eq!(fast.unwrap(), ips(&["192.0.2.6"]));
    assert!(fast_took < Duration::from_secs(1), "fast lookup took {fast_took:?}");
    assert_eq!(slow.unwrap(), ips(&["192.0.2.5"]));
}

#[tokio::test]
async fn a_sequence_rebinds_between_lookups_and_its_last_answer_repeats() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set(
        "rebind.test",
        Answer::Sequence(vec![
            Answer::Records(ips(&["192.0.2.10", "2001:db8::10"])),
            Answer::Records(ips(&["127.0.0.1", "::1"])),
            Answer::ServFail,
            Answer::NxDomain,
        ]),
    );
    // No cache: every lookup asks again and sees the next answer.
    assert_eq!(resolver.lookup("rebind.test").await.unwrap(), ips(&["192.0.2.10", "2001:db8::10"]));
    assert_eq!(resolver.lookup("rebind.test").await.unwrap(), ips(&["127.0.0.1", "::1"]));
    assert!(matches!(resolver.lookup("rebind.test").await, Err(ResolveError::Failed { .. })));
    for _ in 0..2 {
        assert_eq!(resolver.lookup("rebind.test").await, Err(ResolveError::NotFound { name: "rebind.test".into() }));
    }
    assert_eq!(dns.query_count("rebind.test"), 10);
}

#[tokio::test]
async fn a_truncated_udp_answer_is_retried_over_tcp() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    // 200 A records (16 bytes each) exceed any UDP payload size the client offers.
    let many: Vec<IpAddr> = (0..200_u32).map(|i| IpAddr::V4(Ipv4Addr::from(0xC000_0200_u32 + i))).collect();
    dns.set("big.test", Answer::Records(many.clone()));
    assert_eq!(resolver.lookup("big.test").await.unwrap(), many);
    let a_queries = dns.queries().iter().filter(|(_, kind)| *kind == RecordType::A).count();
    assert!(a_queries >= 2, "expected a UDP then a TCP query: {:?}", dns.queries());
}

#[tokio::test]
async fn the_name_is_queried_as_given_never_with_search_domains() {
    // A resolv.conf that would turn `metadata` into `metadata.internal.` under libc rules.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(
        &path,
        "# generated\ndomain internal\nsearch internal corp.example\noptions ndots:5 attempts:5 timeout:30\n\
         nameserver 127.0.0.1\n; comment\nnameserver ::1\n",
    )
    .unwrap();
    // Only the nameservers are taken from it (resolv.conf has no ports: 53).
    assert_eq!(
        nameservers_from_resolv_conf(&path).unwrap(),
        vec!["127.0.0.1:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
    );

    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("metadata.internal", Answer::Records(ips(&["169.254.169.254"])));
    dns.set("metadata.corp.example", Answer::Records(ips(&["169.254.169.254"])));
    assert_eq!(resolver.lookup("metadata").await, Err(ResolveError::NotFound { name: "metadata".into() }));
    assert_eq!(
        sorted(dns.queries()),
        vec![("metadata".to_owned(), RecordType::A), ("metadata".to_owned(), RecordType::AAAA)]
    );
}

#[test]
fn resolv_conf_problems_name_the_file() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.conf");
    let err = nameservers_from_resolv_conf(&missing).unwrap_err();
    assert!(matches!(err, ResolverInitError::ResolvConfUnreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.conf"), "{err}");

    let empty = dir.path().join("empty.conf");
    std::fs::write(&empty, "# nothing here\nsearch example.com\n").unwrap();
    let err = nameservers_from_resolv_conf(&empty).unwrap_err();
    assert!(matches!(err, ResolverInitError::NoNameservers { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.conf"), "{err}");

    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "nameserver 127.0.0.1\nnameserver dns.example\n").unwrap();
    let err = nameservers_from_resolv_conf(&bad).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("bad.conf") && message.contains("line 2") && message.contains("dns.example"), "{message}");

    let zoned = dir.path().join("zoned.conf");
    std::fs::write(&zoned, "nameserver fe80::1%eth0\n").unwrap();
    let message = nameservers_from_resolv_conf(&zoned).unwrap_err().to_string();
    assert!(message.contains("zoned.conf") && message.contains("zone ids are not supported"), "{message}");

    let err = Resolver::new(&["127.0.0.1:53".parse().unwrap()], Duration::ZERO).unwrap_err();
    assert!(matches!(err, ResolverInitError::ZeroTimeout), "{err:?}");
}

#[tokio::test]
async fn ip_literal_looking_names_get_no_addresses_they_were_not_given() {
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    // Real IP literals are the caller's business: refused, and no query is sent.
    for literal in ["127.0.0.1", "169.254.169.254.", "::1", "::ffff:10.0.0.1"] {
        let err = resolver.lookup(literal).await.unwrap_err();
        assert!(matches!(err, ResolveError::Failed { .. }), "{literal}: {err:?}");
    }
    assert_eq!(dns.queries(), Vec::new());
    // Numeric spellings that some resolvers read as IPv4 are names here: asked to DNS, never parsed.
    for name in ["127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1"] {
        assert_eq!(resolver.lookup(name).await, Err(ResolveError::NotFound { name: name.to_owned() }));
        assert_eq!(dns.query_count(name), 2, "{name}");
    }
    // ... and get what DNS says, nothing else.
    dns.set("127.1", Answer::Records(ips(&["192.0.2.44"])));
    assert_eq!(resolver.lookup("127.1").await.unwrap(), ips(&["192.0.2.44"]));
}

#[tokio::test]
async fn localhost_is_answered_by_hickory_as_loopback_without_a_query() {
    // RFC 6761, done by hickory: pinned here so an upgrade that changes it is noticed.
    let (dns, resolver) = setup(Duration::from_secs(5)).await;
    dns.set("localhost", Answer::Records(ips(&["192.0.2.1"])));
    assert_eq!(resolver.lookup("localhost").await.unwrap(), ips(&["127.0.0.1", "::1"]));
    assert_eq!(dns.queries(), Vec::new());
}

#[tokio::test]
async fn the_server_stops_when_dropped() {
    let dns = TestDns::start().await;
    let addr = dns.addr();
    drop(dns);
    // The port becomes free once the aborted tasks have dropped their sockets.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if tokio::net::UdpSocket::bind(addr).await.is_ok() && tokio::net::TcpListener::bind(addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "{addr} still in use after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
