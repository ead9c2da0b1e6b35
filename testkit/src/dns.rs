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
    /// Queries so far per name and type: what `Sequence` counts, kept so a
    /// long run (the soak) does not rescan every earlier query each time.
    counts: HashMap<(String, RecordType), usize>,
}

impl Zone {
    /// Records the query and decides the reply and its delay.
    fn answer(&mut self, name: &str, record_type: RecordType) -> (Duration, Reply) {
        let count = self.counts.entry((name.to_owned(), record_type)).or_insert(0);
        let earlier = *count;
        *count += 1;
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
