//! A real DNS server inside the test process: UDP and TCP on one port of
//! 127.0.0.1, answering A and AAAA queries from a table the test controls, and
//! recording every query it receives.
//!
//! It only ever listens on loopback and never forwards a query anywhere.
//! Unknown names get NXDOMAIN. Over UDP an answer larger than the client's
//! EDNS payload size (512 without EDNS) is sent truncated, so the client's
//! TCP fallback is exercised for real.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// What the server answers for a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A queries get the IPv4 addresses, AAAA queries the IPv6 ones, in list order, TTL 0. A family
    /// with no address gets NOERROR with no answers (NODATA); so does any other query type.
    Records(Vec<IpAddr>),
    NxDomain,
    ServFail,
    Refused,
    /// The inner answer, after a delay. Each query waits on its own; other queries are not held up.
    /// The client retransmits over UDP while it waits (every 333 ms or more): those are queries too.
    Delay(Duration, Box<Answer>),
    /// The n-th query for the name and type (counting from 0, A and AAAA counted separately, UDP and
    /// TCP together) gets the n-th answer; the last one repeats. A resolver asking for A and AAAA once
    /// per lookup therefore sees answer n at lookup n: DNS rebinding. An empty list is NXDOMAIN.
    Sequence(Vec<Answer>),
    /// Never answers.
    Silent,
}

/// What to send for one query.
enum Reply {
    Records(Vec<IpAddr>),
    Code(ResponseCode),
    Nothing,
}

#[derive(Debug, Default)]
struct Zone {
    answers: HashMap<String, Answer>,
    queries: Vec<(String, RecordType)>,
}

impl Zone {
    /// Records the query and decides the reply and its delay.
    fn answer(&mut self, name: &str, record_type: RecordType) -> (Duration, Reply) {
        let earlier = self.queries.iter().filter(|(seen, kind)| seen == name && *kind == record_type).count();
        self.queries.push((name.to_owned(), record_type));
        match self.answers.get(name) {
            Some(answer) => resolve(answer, earlier, Duration::ZERO),
            None => (Duration::ZERO, Reply::Code(ResponseCode::NXDomain)),
        }
    }
}

fn resolve(answer: &Answer, nth: usize, delay: Duration) -> (Duration, Reply) {
    match answer {
        Answer::Records(ips) => (delay, Reply::Records(ips.clone())),
        Answer::NxDomain => (delay, Reply::Code(ResponseCode::NXDomain)),
        Answer::ServFail => (delay, Reply::Code(ResponseCode::ServFail)),
        Answer::Refused => (delay, Reply::Code(ResponseCode::Refused)),
        Answer::Silent => (delay, Reply::Nothing),
        Answer::Delay(more, inner) => resolve(inner, nth, delay.saturating_add(*more)),
        Answer::Sequence(answers) => match answers.get(nth).or(answers.last()) {
            Some(current) => resolve(current, nth, delay),
            None => (delay, Reply::Code(ResponseCode::NXDomain)),
        },
    }
}

/// Names are compared in lower case, without the trailing dot.
fn zone_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

type SharedZone = Arc<Mutex<Zone>>;

fn lock(zone: &SharedZone) -> MutexGuard<'_, Zone> {
    // A test that panicked while holding the lock must not hide its own failure behind a poison error.
    zone.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-process DNS server. Stops (and frees its port) when dropped.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    zone: SharedZone,
    tasks: Vec<JoinHandle<()>>,
}

impl TestDns {
    /// Binds UDP and TCP on the same free port of 127.0.0.1 and starts answering.
    pub async fn start() -> Self {
        let zone = SharedZone::default();
        for _ in 0..16 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("test DNS: bind UDP on 127.0.0.1");
            let addr = udp.local_addr().expect("test DNS: UDP local address");
            // The port is free for UDP; TCP may have it taken. Then try another port.
            let Ok(tcp) = TcpListener::bind(addr).await else { continue };
            let tasks =
                vec![tokio::spawn(serve_udp(Arc::new(udp), zone.clone())), tokio::spawn(serve_tcp(tcp, zone.clone()))];
            return TestDns { addr, zone, tasks };
        }
        panic!("test DNS: no port of 127.0.0.1 was free for both UDP and TCP");
    }

    /// Where the server listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the answer for `name` (without trailing dot, case-insensitive), replacing any earlier one.
    /// Does not reset the query count that `Answer::Sequence` uses.
    pub fn set(&self, name: &str, answer: Answer) {
        lock(&self.zone).answers.insert(zone_key(name), answer);
    }

    /// Every query received, in order of arrival: the name in lower case without trailing dot, and the
    /// type. Retransmissions and TCP retries are separate entries.
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        lock(&self.zone).queries.clone()
    }

    /// How many queries (of any type) named `name` (case-insensitive, trailing dot optional).
    pub fn query_count(&self, name: &str) -> usize {
        let key = zone_key(name);
        lock(&self.zone).queries.iter().filter(|(seen, _)| *seen == key).count()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // Aborting a server task drops its sockets and the tasks it spawned (held in `JoinSet`s).
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A parsed query and the reply it gets after `delay`.
struct Pending {
    request: Message,
    query: Query,
    delay: Duration,
    reply: Reply,
}

fn receive(zone: &SharedZone, bytes: &[u8]) -> Option<Pending> {
    // Garbage gets no answer: the test server is not the thing under test.
    let request = Message::from_vec(bytes).ok()?;
    let query = request.queries.first()?.clone();
    let (delay, reply) = lock(zone).answer(&zone_key(&query.name().to_ascii()), query.query_type());
    Some(Pending { request, query, delay, reply })
}

/// Encodes the reply, or `None` for `Reply::Nothing`. `udp_limit`: truncate above this size.
fn encode(pending: &Pending, udp_limit: Option<usize>) -> Option<Vec<u8>> {
    let Pending { request, query, reply, .. } = pending;
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(query.clone());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        response.set_edns(edns);
    }
    match reply {
        Reply::Nothing => return None,
        Reply::Code(code) => response.metadata.response_code = *code,
        Reply::Records(ips) => {
            response.metadata.response_code = ResponseCode::NoError;
            let wanted = ips.iter().filter(|ip| match query.query_type() {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                _ => false,
            });
            for ip in wanted {
                response.add_answer(Record::from_rdata(query.name().clone(), 0, RData::from(*ip)));
            }
        }
    }
    let bytes = response.to_vec().ok()?;
    match udp_limit {
        Some(limit) if bytes.len() > limit => response.truncate().to_vec().ok(),
        _ => Some(bytes),
    }
}

fn udp_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(512, |edns| usize::from(edns.max_payload()).max(512))
}

async fn serve_udp(socket: Arc<UdpSocket>, zone: SharedZone) {
    let mut delayed = JoinSet::new();
    let mut buffer = vec![0_u8; 65_535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else { continue };
        while delayed.try_join_next().is_some() {}
        let Some(pending) = buffer.get(..len).and_then(|bytes| receive(&zone, bytes)) else { continue };
        let immediate = pending.delay.is_zero();
        let socket = socket.clone();
        let send = async move {
            tokio::time::sleep(pending.delay).await;
            if let Some(bytes) = encode(&pending, Some(udp_limit(&pending.request))) {
                let _ = socket.send_to(&bytes, peer).await;
            }
        };
        // Immediate answers go out in order of arrival; delayed ones must not hold up the rest.
        if immediate {
            send.await;
        } else {
            delayed.spawn(send);
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: SharedZone) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await; // e.g. out of file descriptors: do not spin
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_tcp_connection(stream, zone.clone()));
    }
}

/// DNS over TCP: each message has a two-byte length prefix; several queries may share a connection.
async fn serve_tcp_connection(stream: TcpStream, zone: SharedZone) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut replies = JoinSet::new();
    loop {
        let mut prefix = [0_u8; 2];
        if reader.read_exact(&mut prefix).await.is_err() {
            break;
        }
        let mut message = vec![0_u8; usize::from(u16::from_be_bytes(prefix))];
        if reader.read_exact(&mut message).await.is_err() {
            break;
        }
        while replies.try_join_next().is_some() {}
        let Some(pending) = receive(&zone, &message) else { continue };
        let writer = writer.clone();
        replies.spawn(async move {
            tokio::time::sleep(pending.delay).await;
            let Some(bytes) = encode(&pending, None) else { return };
            let Ok(len) = u16::try_from(bytes.len()) else { return };
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = writer.lock().await.write_all(&framed).await;
        });
    }
    // The client closed its side: finish the replies still owed, then close.
    while replies.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    use hickory_proto::rr::RecordType;
    use proxyd::resolver::{ResolveError, Resolver, ResolverInitError, nameservers_from_resolv_conf};

    use super::{Answer, TestDns};

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
        dns.set(
            "slowish.test",
            Answer::Delay(Duration::from_millis(100), Box::new(Answer::Records(ips(&["192.0.2.5"])))),
        );
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
            assert_eq!(
                resolver.lookup("rebind.test").await,
                Err(ResolveError::NotFound { name: "rebind.test".into() })
            );
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
        assert!(
            message.contains("bad.conf") && message.contains("line 2") && message.contains("dns.example"),
            "{message}"
        );

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
}
