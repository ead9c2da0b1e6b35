//! The soak: the real `proxyd` binary under sustained mixed load on
//! loopback, with policy churn, hostile clients and failing upstreams and
//! resolvers all at once, then an accounting of everything it did.
//!
//! Run it with `make soak` (2 minutes) or `make soak DURATION=10m`; it is an
//! ignored test driven by `SOAK_DURATION`. What runs at the same time:
//! well-behaved echo and bulk clients with checksummed data at a steady
//! rate (each tunnel ends with a half-close both ways); requests for denied
//! names and for every deny and reject row of the SSRF corpus (names that
//! resolve to special-purpose addresses are refused before any connect);
//! slowloris clients, 1 MiB heads, clients that never speak, clients that
//! reset mid-tunnel; upstreams that reset, that never read, a blackhole
//! (a loopback listener whose accept queue is full: SYNs are dropped) and a
//! closed port; a resolver that never answers, one that answers SERVFAIL
//! and one that answers slowly; the policy replaced every 500 ms by one of
//! two tables that disagree about two names, and one corrupt table a
//! minute; and a stretch with the tunnel cap full on purpose.
//!
//! Every request carries a unique `X-Smokescreen-Trace-ID`, so each client
//! observation is joined with the daemon's decision line: the count of
//! lines equals the count of requests the daemon answered, each decision
//! matches the table whose revision the line names, and each client got
//! exactly the answer its line describes. Footprint samples (open fds and
//! VmRSS from /proc) are taken every 10 s at a quiet point (the load
//! pauses until no connection is in flight and no tunnel is open, so the
//! samples compare like with like) and must not trend upwards.
//!
//! Beside it, an edge daemon (`soak/edge.rs`) serves TLS behind PROXY
//! protocol with a request-rate limit: well-behaved PROXY v1/v2 + TLS
//! tunnels, a client over the rate, and PROXY/TLS garbage, with the same
//! log, footprint and exit checks. Both run with `MALLOC_ARENA_MAX=1`, as
//! deployed (docs/soak.md, "Memory trend"). A third daemon
//! (`soak/stall.rs`) runs the stall phase: its log reader pauses for 20 s
//! under load (issue 24).
//!
//! Network safety: everything listens on and connects to 127.x addresses;
//! corpus names resolve to special-purpose addresses that the daemon must
//! refuse before connecting (the connect-attempt counter proves it never
//! tried). Every loop is bounded in time and in count.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::support::{compile, write};
use egress_policy::authority;
use testkit::client::lo;
use testkit::dns::{Answer, TestDns};
use testkit::scrape::Scrape;
use testkit::upstream::Upstream;

#[path = "../common/ssrf_corpus.rs"]
mod ssrf_corpus;

mod edge;
mod stall;

/// Flags the daemon runs with; the timeouts are short so failures resolve fast.
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DNS_TIMEOUT: Duration = Duration::from_secs(1);
const TUNNEL_CAP: usize = 120;
/// How often the policy is replaced, and a corrupt table is written.
const CHURN_EVERY: Duration = Duration::from_millis(500);
const CORRUPT_EVERY: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Upper bound on any one client operation; a well-behaved tunnel slower than this has hung.
const OPERATION_LIMIT: Duration = Duration::from_secs(15);
/// How often the tunnels holding the cap full carry a few bytes (below the idle timeout).
const PING_EVERY: Duration = Duration::from_secs(5);

const TABLE_A: &str = "\
version: v1
services: []
default:
  project: soak
  action: enforce
  allowed_domains: [echo.soak.test, bulk.soak.test, slowdns.soak.test, reset.soak.test, sink.soak.test,
    blackhole.soak.test, closed.soak.test, silent.soak.test, servfail.soak.test, \"*.ssrf.test\", flip-a.soak.test]
";

/// Table B differs from A only in which flip name it allows.
fn table_b() -> String {
    TABLE_A.replace("flip-a.soak.test", "flip-b.soak.test")
}

/// Which table a revision is, for the two flip names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    A,
    B,
}

fn flip_allowed(which: Which, host: &str) -> Option<bool> {
    match host {
        "flip-a.soak.test" => Some(which == Which::A),
        "flip-b.soak.test" => Some(which == Which::B),
        _ => None,
    }
}

/// `2m`, `90s`, `1h`, `600` (seconds).
fn parse_duration(text: &str) -> Duration {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().unwrap_or_else(|_| panic!("SOAK_DURATION {text:?}: expected e.g. 90s, 2m, 1h"));
    match unit {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => panic!("SOAK_DURATION {text:?}: unknown unit {other:?}; use s, m or h"),
    }
}

/// Deterministic bytes for checksummed traffic.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// FNV-1a, enough to tell whether a byte stream arrived intact.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What a client saw of one request.
#[derive(Clone, Debug)]
struct Sent {
    host: String,
    status: u16,
    /// The answer came from proxyd's request path (the 200, or a refusal
    /// with its text body), not from the HTTP parser.
    from_proxy: bool,
}

/// What the daemon's log said about one request.
#[derive(Clone, Debug)]
struct Decision {
    revision: String,
    allow: Option<bool>,
    refusal: Option<String>,
}

/// Shared state of the run.
struct Soak {
    proxy: SocketAddr,
    admin: SocketAddr,
    ports: HashMap<&'static str, u16>,
    stop: AtomicBool,
    paused: AtomicBool,
    in_cap_window: AtomicBool,
    /// When the last cap window ended, in ms since `started`.
    cap_window_ended_ms: AtomicU64,
    started: Instant,
    /// Connections to the proxy open now (any client kind).
    in_flight: AtomicUsize,
    sequence: AtomicU64,
    sent: Mutex<HashMap<String, Sent>>,
    counts: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
    failure_count: AtomicU64,
    bytes_verified: AtomicU64,
}

/// Counts a connection as in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Soak {
    fn count(&self, what: &str) {
        *self.counts.lock().unwrap().entry(what.to_owned()).or_insert(0) += 1;
    }

    fn fail(&self, what: String) {
        self.failure_count.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 50 {
            failures.push(what);
        }
    }

    fn trace(&self, kind: &str) -> String {
        format!("soak-{kind}-{}", self.sequence.fetch_add(1, Ordering::Relaxed))
    }

    fn target(&self, host: &str, upstream: &str) -> String {
        format!("{host}:{}", self.ports.get(upstream).copied().unwrap_or(443))
    }

    /// Waits while the load is paused for a sample; false once the run is over.
    async fn go(&self) -> bool {
        while self.paused.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !self.stop.load(Ordering::SeqCst)
    }

    async fn open(&self) -> std::io::Result<(TcpStream, InFlight<'_>)> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(self.proxy))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect to proxy"))??;
        Ok((stream, guard))
    }

    /// Sends a CONNECT with a trace id and reads the answer; records what the client saw.
    async fn request(&self, host: &str, target: &str, trace: &str) -> Result<(u16, TcpStream, InFlight<'_>), String> {
        let (mut stream, guard) = self.open().await.map_err(|e| format!("connect to proxy: {e}"))?;
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Smokescreen-Trace-ID: {trace}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| format!("send head: {e}"))?;
        let (status, headers) = read_head(&mut stream).await?;
        // proxyd's own answers always name their content type; the HTTP parser's do not.
        let from_proxy = status == 200 || headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        self.sent.lock().unwrap().insert(trace.to_owned(), Sent { host: host.to_owned(), status, from_proxy });
        Ok((status, stream, guard))
    }
}

/// Reads a response head (and a body of at most 64 KiB); nothing after it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u16, Vec<(String, String)>), String> {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 64 * 1024 {
                return Err("response head over 64 KiB".to_owned());
            }
            match stream.read(&mut byte).await {
                Ok(0) => return Err(format!("closed after {} bytes of head", head.len())),
                Ok(_) => head.push(byte[0]),
                Err(e) => return Err(format!("reading head: {e}")),
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line: {text:?}"))?;
        let headers: Vec<(String, String)> =
            lines.filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))).collect();
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(64 * 1024);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.map_err(|e| format!("reading body: {e}"))?;
        Ok((status, headers))
    };
    tokio::time::timeout(OPERATION_LIMIT, read).await.map_err(|_| "no answer in time".to_owned())?
}

/// Echo rounds of 1..=`max_size` bytes through an open tunnel (plain or
/// TLS), then a half-close each way (for TLS, close_notify) and the end of
/// the stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    seed: u64,
    rounds: usize,
    max_size: u64,
) -> Result<u64, String> {
    let mut rng = XorShift(seed | 1);
    let mut total = 0u64;
    for round in 0..rounds {
        let size = 1 + (rng.next() % max_size) as usize;
        let mut out = vec![0u8; size];
        rng.fill(&mut out);
        stream.write_all(&out).await.map_err(|e| format!("round {round}: write: {e}"))?;
        let mut back = vec![0u8; size];
        stream.read_exact(&mut back).await.map_err(|e| format!("round {round}: read: {e}"))?;
        if back != out {
            return Err(format!("round {round}: {size} bytes came back altered"));
        }
        total += size as u64;
    }
    stream.shutdown().await.map_err(|e| format!("half-close: {e}"))?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.map_err(|e| format!("after half-close: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after half-close", rest.len()));
    }
    Ok(total)
}

/// 1 MiB checksummed each way concurrently, then a half-close.
async fn bulk(stream: TcpStream, seed: u64) -> Result<u64, String> {
    const SIZE: usize = 1 << 20;
    let (mut reader, mut writer) = stream.into_split();
    let send = async move {
        let mut rng = XorShift(seed | 1);
        let mut sum = Fnv::new();
        let mut chunk = vec![0u8; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            rng.fill(&mut chunk);
            sum.update(&chunk);
            writer.write_all(&chunk).await.map_err(|e| format!("bulk write: {e}"))?;
        }
        writer.shutdown().await.map_err(|e| format!("bulk half-close: {e}"))?;
        Ok::<_, String>(sum.0)
    };
    let receive = async move {
        let mut sum = Fnv::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        loop {
            let n = reader.read(&mut buf).await.map_err(|e| format!("bulk read after {got} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            got += n;
        }
        Ok::<_, String>((sum.0, got))
    };
    let (sent, (received, got)) = tokio::try_join!(send, receive)?;
    if got != SIZE || sent != received {
        return Err(format!("bulk: sent {SIZE} bytes, {got} came back, checksums equal: {}", sent == received));
    }
    Ok(2 * SIZE as u64)
}

/// Well-behaved clients: allowed names (two of them allowed by one table
/// only), echo rounds, half-close. A broken or hung tunnel is a failure.
async fn echo_client(soak: Arc<Soak>, id: u64, pace: Duration) {
    let hosts = ["echo.soak.test", "flip-a.soak.test", "flip-b.soak.test", "slowdns.soak.test"];
    let mut n = 0u64;
    while soak.go().await {
        let host = hosts[(n as usize + id as usize) % hosts.len()];
        n += 1;
        let trace = soak.trace("echo");
        let target = soak.target(host, "echo");
        let outcome = tokio::time::timeout(OPERATION_LIMIT, async {
            let (status, mut stream, _guard) = soak.request(host, &target, &trace).await?;
            match status {
                200 => exchange(&mut stream, id << 32 | n, 4, 16_384).await.map(|bytes| (200, bytes)),
                403 | 429 => Ok((status, 0)),
                other => Err(format!("answered {other}")),
            }
        })
        .await
        .unwrap_or_else(|_| Err("hung".to_owned()));
        match outcome {
            Ok((200, bytes)) => {
                soak.count("well-behaved echo: tunnel completed, bytes intact");
                soak.bytes_verified.fetch_add(bytes, Ordering::Relaxed);
            }
            Ok((403, _)) if host.starts_with("flip") => {
                soak.count("well-behaved echo: 403 (flip name denied by the table then)")
            }
            Ok((429, _)) => soak.count("well-behaved echo: 429 (tunnel cap)"),
            Ok((status, _)) => soak.fail(format!("{trace} {host}: unexpected {status}")),
            Err(e) => soak.fail(format!("{trace} {host}: {e}")),
        }
        tokio::time::sleep(pace).await;
    }
}

async fn bulk_client(soak: Arc<Soak>, id: u64, pace: Duration) {
    let mut n = 0u64;
    while soak.go().await {
        n += 1;
        let trace = soak.trace("bulk");
        let target = soak.target("bulk.soak.test", "echo");
        let outcome = tokio::time::timeout(Duration::from_secs(60), async {
            let (status, stream, _guard) = soak.request("bulk.soak.test", &target, &trace).await?;
            match status {
                200 => bulk(stream, (id << 40) ^ n).await.map(|bytes| (200, bytes)),
                429 => Ok((429, 0)),
                other => Err(format!("answered {other}")),
            }
        })
        .await
        .unwrap_or_else(|_| Err("hung".to_owned()));
        match outcome {
            Ok((200, bytes)) => {
                soak.count("well-behaved bulk: 1 MiB each way, checksums equal");
                soak.bytes_verified.fetch_add(bytes, Ordering::Relaxed);
            }
            Ok((_, _)) => soak.count("well-behaved bulk: 429 (tunnel cap)"),
            Err(e) => soak.fail(format!("{trace} bulk: {e}")),
        }
        tokio::time::sleep(pace).await;
    }
}

/// Requests that must be refused: names outside the tables, the corpus's
/// deny rows (403) and reject rows (400).
async fn denied_client(soak: Arc<Soak>, corpus: Arc<Vec<ssrf_corpus::Row>>, pace: Duration) {
    let mut n = 0usize;
    while soak.go().await {
        n += 1;
        let trace = soak.trace("denied");
        let (label, authority, expected, line) = if n.is_multiple_of(3) {
            let host = format!("denied-{}.other.test", n % 97);
            ("denied name", format!("{host}:443"), vec![403], 0)
        } else {
            let row = &corpus[n % corpus.len()];
            let expected = match row.expected {
                ssrf_corpus::Expected::Reject => vec![400],
                // A name the table allows needs a tunnel slot before its addresses are
                // checked, so at the cap it gets 429 (the line says which).
                ssrf_corpus::Expected::Deny(_) if row.resolves_to.is_some() => vec![403, 429],
                ssrf_corpus::Expected::Deny(_) => vec![403],
                ssrf_corpus::Expected::Allow => unreachable!("allow rows are filtered out"),
            };
            ("SSRF corpus", row.authority.clone(), expected, row.line)
        };
        match soak.request(&authority, &authority, &trace).await {
            Ok((status, _stream, _guard)) if expected.contains(&status) => {
                soak.count(&format!("{label}: {status} as expected"));
            }
            Ok((status, _, _)) => {
                soak.fail(format!("{trace} {label} (line {line}) {authority:?}: {status}, expected {expected:?}"));
            }
            // A head the parser refuses may be answered and closed before it is read whole.
            Err(e) if authority.contains(char::is_whitespace) => {
                soak.count(&format!("{label}: closed by the HTTP parser ({e})"));
            }
            Err(e) => soak.fail(format!("{trace} {label} {authority:?}: {e}")),
        }
        tokio::time::sleep(pace).await;
    }
}

/// Names whose resolver or upstream fails, each with the one answer allowed.
async fn failing_client(soak: Arc<Soak>, pace: Duration) {
    let cases = [
        ("closed.soak.test", "closed", 502, "upstream port closed"),
        ("blackhole.soak.test", "blackhole", 504, "upstream blackholes the SYN"),
        ("silent.soak.test", "echo", 504, "resolver never answers"),
        ("servfail.soak.test", "echo", 502, "resolver answers SERVFAIL"),
    ];
    let mut n = 0usize;
    while soak.go().await {
        let (host, upstream, expected, label) = cases[n % cases.len()];
        n += 1;
        let trace = soak.trace("failing");
        match soak.request(host, &soak.target(host, upstream), &trace).await {
            Ok((status, _, _)) if status == expected => soak.count(&format!("{label}: {status}")),
            Ok((429, _, _)) => soak.count(&format!("{label}: 429 (tunnel cap)")),
            Ok((status, _, _)) => soak.fail(format!("{trace} {label}: {status}, expected {expected}")),
            Err(e) => soak.fail(format!("{trace} {label}: {e}")),
        }
        tokio::time::sleep(pace).await;
    }
}

/// Tunnels to upstreams that reset or never read, and clients that reset mid-tunnel.
async fn rough_tunnel_client(soak: Arc<Soak>, pace: Duration) {
    let mut n = 0usize;
    while soak.go().await {
        n += 1;
        let trace = soak.trace("rough");
        let (host, upstream) = match n % 3 {
            0 => ("reset.soak.test", "reset"),
            1 => ("sink.soak.test", "sink"),
            _ => ("echo.soak.test", "echo"),
        };
        let result = tokio::time::timeout(OPERATION_LIMIT, async {
            let (status, mut stream, _guard) = soak.request(host, &soak.target(host, upstream), &trace).await?;
            if status != 200 {
                return Ok(format!("{host}: {status}"));
            }
            let payload = vec![0x5a; 64 * 1024];
            Ok(match upstream {
                "reset" => {
                    // The upstream resets after 100 bytes: the tunnel must end, promptly.
                    let _ = stream.write_all(&payload).await;
                    let mut sink = vec![0u8; 4096];
                    loop {
                        match stream.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    "upstream reset: tunnel ended".to_owned()
                }
                "sink" => {
                    // The upstream never reads: writes stall; the client gives up after 1 s.
                    let mut written = 0usize;
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while written < 8 << 20 {
                            if stream.write_all(&payload).await.is_err() {
                                break;
                            }
                            written += payload.len();
                        }
                    })
                    .await;
                    "upstream never reads: client gave up".to_owned()
                }
                _ => {
                    // The client vanishes mid-tunnel: RST with bytes in flight.
                    let _ = stream.write_all(&payload[..10_000]).await;
                    let mut some = [0u8; 100];
                    let _ = stream.read_exact(&mut some).await;
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    "client reset mid-tunnel".to_owned()
                }
            })
        })
        .await
        .unwrap_or_else(|_| Err("hung".to_owned()));
        match result {
            Ok(what) => soak.count(&what),
            Err(e) => soak.fail(format!("{trace} {host}: {e}")),
        }
        tokio::time::sleep(pace).await;
    }
}

/// Clients that never finish their head: slowloris, silence, 1 MiB heads.
/// The proxy must close each by the header timeout (or answer 431 at once).
async fn hostile_client(soak: Arc<Soak>, kind: usize, pace: Duration) {
    while soak.go().await {
        let started = Instant::now();
        let Ok((stream, _guard)) = soak.open().await else {
            soak.fail("hostile: cannot connect to the proxy".to_owned());
            continue;
        };
        let (mut reader, mut writer) = stream.into_split();
        let target = soak.target("echo.soak.test", "echo");
        let write = async move {
            match kind {
                0 => {
                    // Slowloris: one byte every 500 ms.
                    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
                    for byte in head.as_bytes().iter().cycle().take(100) {
                        if writer.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                1 => {
                    // Never speaks.
                    tokio::time::sleep(OPERATION_LIMIT).await;
                }
                _ => {
                    // A 1 MiB head.
                    let mut head = format!("CONNECT {target} HTTP/1.1\r\n").into_bytes();
                    let mut i = 0;
                    while head.len() < 1 << 20 {
                        head.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "f".repeat(1000)).as_bytes());
                        i += 1;
                    }
                    head.extend_from_slice(b"\r\n");
                    let _ = writer.write_all(&head).await;
                    tokio::time::sleep(OPERATION_LIMIT).await;
                }
            }
            drop(writer);
        };
        let read = async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
            all
        };
        let answer = tokio::select! {
            () = write => None,
            all = read => Some(all),
        };
        let took = started.elapsed();
        let label = ["slowloris", "never speaks", "1 MiB head"][kind.min(2)];
        let limit = if kind == 2 { Duration::from_secs(3) } else { HEADER_TIMEOUT + Duration::from_secs(2) };
        match answer {
            Some(all) if took <= limit => {
                let status = String::from_utf8_lossy(&all).split(' ').nth(1).map(str::to_owned);
                let how = status.map_or("closed".to_owned(), |s| format!("answered {s} and closed"));
                if kind == 2 && !(how == "closed" || how.contains("431")) {
                    soak.fail(format!("{label}: {how}"));
                } else {
                    soak.count(&format!("{label}: {how} by the proxy"));
                }
            }
            Some(_) => soak.fail(format!("{label}: closed only after {took:?}")),
            None => soak.fail(format!("{label}: not closed within {OPERATION_LIMIT:?}")),
        }
        tokio::time::sleep(pace).await;
    }
}

/// Replaces the policy every 500 ms (A, B, A, ...) and once a minute with a corrupt table.
async fn churn(soak: Arc<Soak>, path: PathBuf, a: Vec<u8>, b: Vec<u8>) -> (u64, u64) {
    let (mut valid, mut corrupt) = (0u64, 0u64);
    // The first corrupt table half a minute in, then one a minute.
    let mut last_corrupt = Instant::now() - CORRUPT_EVERY / 2;
    let mut next_is_b = true;
    while !soak.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(CHURN_EVERY).await;
        let bytes: &[u8] = if last_corrupt.elapsed() >= CORRUPT_EVERY {
            last_corrupt = Instant::now();
            corrupt += 1;
            &a[..a.len() / 2]
        } else {
            valid += 1;
            next_is_b = !next_is_b;
            if next_is_b { &a } else { &b }
        };
        let staged = path.with_extension("staged");
        std::fs::write(&staged, bytes).unwrap();
        std::fs::rename(&staged, &path).unwrap();
    }
    (valid, corrupt)
}

/// Fills the tunnel cap and holds it for `hold`, then checks every held tunnel still echoes.
async fn fill_the_cap(soak: &Soak, hold: Duration) -> (usize, usize) {
    soak.in_cap_window.store(true, Ordering::SeqCst);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..TUNNEL_CAP + 30 {
        let trace = soak.trace("cap");
        match soak.request("echo.soak.test", &soak.target("echo.soak.test", "echo"), &trace).await {
            Ok((200, stream, guard)) => held.push((stream, guard)),
            Ok((429, _, _)) => {
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            Ok((status, _, _)) => soak.fail(format!("{trace} cap filler: {status}")),
            Err(e) => soak.fail(format!("{trace} cap filler: {e}")),
        }
    }
    // Held, and used every 5 s (so the idle timeout does not close them): each
    // ping must come back through every reload of the hold.
    let deadline = Instant::now() + hold;
    let mut next_ping = Instant::now() + PING_EVERY;
    while Instant::now() < deadline && !soak.stop.load(Ordering::SeqCst) {
        if Instant::now() >= next_ping {
            next_ping = Instant::now() + PING_EVERY;
            for (i, (stream, _guard)) in held.iter_mut().enumerate() {
                let ping = format!("ping {i}");
                let mut back = vec![0u8; ping.len()];
                let echoed = tokio::time::timeout(OPERATION_LIMIT, async {
                    stream.write_all(ping.as_bytes()).await?;
                    stream.read_exact(&mut back).await
                })
                .await;
                match echoed {
                    Ok(Ok(_)) if back == ping.as_bytes() => {}
                    other => soak.fail(format!("cap filler tunnel {i} broke while held: {other:?}")),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = held.len();
    for (i, (mut stream, _guard)) in held.into_iter().enumerate() {
        match tokio::time::timeout(OPERATION_LIMIT, exchange(&mut stream, 0xCA9 + i as u64, 1, 16_384)).await {
            Ok(Ok(bytes)) => {
                soak.bytes_verified.fetch_add(bytes, Ordering::Relaxed);
                soak.count("cap filler: held tunnel intact after the hold");
            }
            Ok(Err(e)) => soak.fail(format!("cap filler tunnel {i} broke while held: {e}")),
            Err(_) => soak.fail(format!("cap filler tunnel {i} hung")),
        }
    }
    soak.in_cap_window.store(false, Ordering::SeqCst);
    soak.cap_window_ended_ms.store(soak.started.elapsed().as_millis() as u64, Ordering::SeqCst);
    (count, refused)
}

/// An upstream that accepts and never reads; each connection is dropped after 3 s.
async fn sink_upstream(listener: TcpListener) {
    let mut held = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while held.try_join_next().is_some() {}
        held.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(stream);
        });
    }
}

/// A plain HTTP GET to the admin listener; `None` if it did not answer in 5 s.
async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes()).await.ok()?;
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.ok()?;
        let text = String::from_utf8(all).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch).await.ok().flatten()
}

async fn scrape(admin: SocketAddr) -> Option<Scrape> {
    let (status, body) = admin_get(admin, "/metrics").await?;
    (status == 200).then(|| Scrape::parse(body))
}

fn metric(scrape: &Scrape, series: &str) -> f64 {
    scrape.get(series).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Open fds and VmRSS (KiB) of `pid`.
fn footprint(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// `RssAnon` of `pid` in KiB: the memory it allocated, without the pages of
/// its binary and libraries that `VmRSS` also counts (a debug binary is 13 MiB
/// of text, paged in as code paths first run).
fn anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One footprint sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    fds: usize,
    rss_kib: u64,
    anon_kib: u64,
    /// Taken at a quiet point (no connection in flight, no tunnel open).
    quiet: bool,
}

/// Pauses the load until nothing is in flight and the tunnel gauge is 0 (10 s at most), then samples.
async fn quiet_sample(soak: &Soak, pid: u32, started: Instant) -> Option<Sample> {
    soak.paused.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet = false;
    while Instant::now() < deadline {
        if soak.in_flight.load(Ordering::SeqCst) == 0
            && let Some(s) = scrape(soak.admin).await
            && metric(&s, "proxyd_tunnels_active") == 0.0
        {
            // Let the daemon finish closing its side of the last connections.
            tokio::time::sleep(Duration::from_millis(300)).await;
            quiet = soak.in_flight.load(Ordering::SeqCst) == 0;
            if quiet {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fds, rss_kib) = footprint(pid);
    let anon_kib = anon_kib(pid);
    soak.paused.store(false, Ordering::SeqCst);
    quiet.then_some(Sample { at: started.elapsed(), fds, rss_kib, anon_kib, quiet })
}

/// SIGTERM, as an operator stops the daemon, and its exit status if it exits within `within`.
fn terminate(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Least-squares slope of `values` over `times` (seconds), as % of the mean per hour.
fn slope_percent_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 3 {
        return 0.0;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if den == 0.0 || mean_v == 0.0 { 0.0 } else { num / den * 3600.0 / mean_v * 100.0 }
}

/// What the log reader gathered.
#[derive(Default)]
struct LogTally {
    decisions: HashMap<String, Decision>,
    decision_lines: u64,
    untraced_decisions: u64,
    duplicate_traces: Vec<String>,
    close_lines: u64,
    close_errors: BTreeMap<String, u64>,
    reload_refused_lines: u64,
    reloaded_lines: u64,
    unexplained: Vec<String>,
    not_json: Vec<String>,
    panics: u64,
}

/// Reads the daemon's stderr to the end, tallying as it goes (nothing is
/// kept per line but decisions). Lines up to `proxyd listening` also go to `first`.
fn read_log(
    stderr: std::process::ChildStderr,
    tally: Arc<Mutex<LogTally>>,
    mut first: Option<std::sync::mpsc::Sender<String>>,
) {
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(sender) = &first {
            let listening = line.contains("\"proxyd listening\"");
            let _ = sender.send(line.clone());
            if listening {
                first = None;
            }
        }
        let mut t = tally.lock().unwrap();
        if line.contains("panicked") {
            t.panics += 1;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            if t.not_json.len() < 20 {
                t.not_json.push(line);
            }
            continue;
        };
        let message = v["message"].as_str().unwrap_or_default();
        let level = v["level"].as_str().unwrap_or_default();
        match message {
            "CANONICAL-PROXY-DECISION" => {
                t.decision_lines += 1;
                let decision = Decision {
                    revision: v["policy_revision"].as_str().unwrap_or_default().to_owned(),
                    allow: v["allow"].as_bool(),
                    refusal: v["refusal"].as_str().map(str::to_owned),
                };
                match v["trace_id"].as_str() {
                    Some(trace) => {
                        if t.decisions.insert(trace.to_owned(), decision).is_some() && t.duplicate_traces.len() < 20 {
                            t.duplicate_traces.push(trace.to_owned());
                        }
                    }
                    None => t.untraced_decisions += 1,
                }
            }
            "CANONICAL-PROXY-CN-CLOSE" => {
                t.close_lines += 1;
                if let Some(error) = v["error"].as_str() {
                    // The kind of error, without addresses or counts.
                    let kind: String = error.split(':').next().unwrap_or(error).chars().take(60).collect();
                    *t.close_errors.entry(kind).or_insert(0) += 1;
                }
            }
            "policy reload refused; the active policy keeps serving" => t.reload_refused_lines += 1,
            "policy reloaded" => t.reloaded_lines += 1,
            _ if (level == "WARN" || level == "ERROR") && t.unexplained.len() < 20 => {
                t.unexplained.push(line.clone());
            }
            _ => {}
        }
    }
}

/// The daemon process.
struct Proxyd {
    child: Child,
}

impl Drop for Proxyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command that runs `proxyd`: the binary itself, or (`wrapped`: the main
/// daemon only), for investigating the daemon under the soak's load, the binary behind the command prefix in
/// `SOAK_PROXYD_WRAPPER` (whitespace-separated, e.g. `valgrind --tool=massif` or
/// `env MALLOC_ARENA_MAX=1`). The prefix must exec the daemon in its own process
/// (valgrind and env do), since the footprint is read from that pid.
///
/// The daemon runs with `MALLOC_ARENA_MAX` from [`malloc_arenas`], as deployed.
fn proxyd_command(binary: PathBuf, wrapped: bool) -> Command {
    let wrapper = if wrapped { std::env::var("SOAK_PROXYD_WRAPPER").unwrap_or_default() } else { String::new() };
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        None => Command::new(binary),
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(binary);
            command
        }
    };
    match malloc_arenas() {
        Some(arenas) => command.env("MALLOC_ARENA_MAX", arenas),
        None => command.env_remove("MALLOC_ARENA_MAX"),
    };
    command
}

/// glibc malloc arenas for the daemon: `1` as the deployment files set it
/// (docs/soak.md, "Memory trend": with glibc's default of one arena per
/// thread, freed pages stay in the worker threads' arenas and RSS creeps up
/// while the live heap stays flat). `SOAK_MALLOC_ARENA_MAX=default` runs
/// with glibc's default, to reproduce that; any other value is passed on.
fn malloc_arenas() -> Option<String> {
    match std::env::var("SOAK_MALLOC_ARENA_MAX") {
        Ok(value) if value == "default" => None,
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => Some("1".to_owned()),
    }
}

/// The `proxyd listening` line, read from the log as it arrives (slower under a wrapper).
fn wait_listening(tally_lines: &std::sync::mpsc::Receiver<String>) -> Value {
    let wrapped = std::env::var("SOAK_PROXYD_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let deadline = Instant::now() + Duration::from_secs(if wrapped { 180 } else { 20 });
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tally_lines.recv_timeout(left).expect("proxyd starts listening");
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "proxyd listening"
        {
            return v;
        }
    }
}

fn policy_reloads(policy_json: &str) -> (u64, u64, u64) {
    let v: Value = serde_json::from_str(policy_json).unwrap_or(Value::Null);
    let n = |k: &str| v["reloads"][k].as_u64().unwrap_or(0);
    (n("swapped"), n("refused"), n("unchanged"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak runs for minutes: `make soak` (SOAK_DURATION, default 2m)"]
async fn soak() {
    let duration = parse_duration(&std::env::var("SOAK_DURATION").unwrap_or_else(|_| "2m".to_owned()));
    assert!(duration >= Duration::from_secs(30), "SOAK_DURATION must be at least 30s");
    let warm_up = (duration / 8).min(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", TABLE_A);
    write(dir.path(), "b.yaml", &table_b());
    let rev_a = compile(dir.path(), "a.yaml", "a.bin");
    let rev_b = compile(dir.path(), "b.yaml", "b.bin");
    let (table_a, table_b) =
        (std::fs::read(dir.path().join("a.bin")).unwrap(), std::fs::read(dir.path().join("b.bin")).unwrap());
    let policy = dir.path().join("policy.bin");
    std::fs::write(&policy, &table_a).unwrap();
    // A file written without pause beside the policy: must not hold reloads back.
    let sibling = dir.path().join("soak.log");

    // Upstreams, each on its own loopback address.
    let echo = Upstream::echo(lo(0, 77, 1)).await;
    let reset = Upstream::reset_after(lo(0, 77, 2), 100).await;
    let sink_listener = TcpListener::bind((lo(0, 77, 3), 0)).await.unwrap();
    let sink_addr = sink_listener.local_addr().unwrap();
    let sink = tokio::spawn(sink_upstream(sink_listener));
    // Blackhole: backlog 1, never accepted, queue filled: further SYNs are dropped.
    let blackhole_socket = TcpSocket::new_v4().unwrap();
    blackhole_socket.bind(SocketAddr::new(lo(0, 77, 4), 0)).unwrap();
    let blackhole_addr = blackhole_socket.local_addr().unwrap();
    let blackhole = blackhole_socket.listen(1).unwrap();
    let mut queue_fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(blackhole_addr)).await {
            queue_fillers.push(s);
        }
    }
    let blackholed =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(blackhole_addr)).await.is_err();
    assert!(blackholed, "the blackhole listener still completes handshakes; the kernel did not drop the SYN");
    let closed_addr = {
        let l = std::net::TcpListener::bind((lo(0, 77, 5), 0)).unwrap();
        l.local_addr().unwrap()
    };

    // DNS: allowed names to loopback upstreams, failing resolvers, and corpus names.
    let dns = TestDns::start().await;
    for name in ["echo.soak.test", "bulk.soak.test", "flip-a.soak.test", "flip-b.soak.test"] {
        dns.set(name, Answer::Records(vec![echo.addr.ip()]));
    }
    dns.set(
        "slowdns.soak.test",
        Answer::Delay(Duration::from_millis(300), Box::new(Answer::Records(vec![echo.addr.ip()]))),
    );
    dns.set("reset.soak.test", Answer::Records(vec![reset.addr.ip()]));
    dns.set("sink.soak.test", Answer::Records(vec![sink_addr.ip()]));
    dns.set("blackhole.soak.test", Answer::Records(vec![blackhole_addr.ip()]));
    dns.set("closed.soak.test", Answer::Records(vec![closed_addr.ip()]));
    dns.set("silent.soak.test", Answer::Silent);
    dns.set("servfail.soak.test", Answer::ServFail);
    let corpus: Vec<ssrf_corpus::Row> =
        ssrf_corpus::corpus().into_iter().filter(|r| r.expected != ssrf_corpus::Expected::Allow).collect();
    for row in &corpus {
        // The daemon asks for the canonical name (`ｆｕｌｌ.ssrf.test` is looked up as
        // `full.ssrf.test`); a reject row's name never reaches DNS.
        if let (Some(ip), Ok(parsed)) = (row.resolves_to, authority::parse(&row.authority)) {
            dns.set(parsed.host.as_str(), Answer::Records(vec![ip]));
        }
    }
    let corpus = Arc::new(corpus);

    // The daemon.
    let allow: Vec<String> = [echo.addr, reset.addr, sink_addr, blackhole_addr, closed_addr]
        .iter()
        .flat_map(|a| ["--allow-address".to_owned(), a.to_string()])
        .collect();
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let mut child = proxyd_command(testkit::binary("proxyd"), true)
        .args(["--listen-ip", "127.0.0.1", "--listen-port", "0", "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .args(["--resolver-address", &dns.addr().to_string(), "--allow-missing-role"])
        .args(["--timeout", &secs(CONNECT_TIMEOUT), "--dns-timeout", &secs(DNS_TIMEOUT)])
        .args(["--header-timeout", &secs(HEADER_TIMEOUT), "--idle-timeout", "30s"])
        .args(["--max-concurrent-connect-tunnels", &TUNNEL_CAP.to_string()])
        .args(&allow)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("PROXY_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxyd");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let proxyd = Proxyd { child };
    // Every line is tallied; the first ones also go through a channel until the listening line.
    let tally = Arc::new(Mutex::new(LogTally::default()));
    let (first_tx, first_rx) = std::sync::mpsc::channel::<String>();
    let reader = {
        let tally = Arc::clone(&tally);
        std::thread::spawn(move || read_log(stderr, tally, Some(first_tx)))
    };
    let listening = wait_listening(&first_rx);
    let proxy: SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = listening["admin"].as_str().unwrap().parse().unwrap();
    let (cold_fds, cold_rss) = footprint(pid);

    // The edge daemon: TLS, PROXY protocol and the request-rate limit, a fixed table (A).
    let pki = testkit::pki::TestPki::new();
    let edge_policy = dir.path().join("edge.bin");
    std::fs::write(&edge_policy, &table_a).unwrap();
    let mut edge_child = proxyd_command(testkit::binary("proxyd"), false)
        .args(["--listen-ip", "127.0.0.1", "--listen-port", "0", "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&edge_policy)
        .args(["--resolver-address", &dns.addr().to_string(), "--allow-missing-role"])
        .args(["--timeout", &secs(CONNECT_TIMEOUT), "--dns-timeout", &secs(DNS_TIMEOUT)])
        .args(["--header-timeout", &secs(HEADER_TIMEOUT), "--idle-timeout", "30s"])
        .arg("--tls-server-bundle-file")
        .arg(&pki.server_bundle)
        .args(["--proxy-protocol", "--max-requests-per-client-per-second", &edge::EDGE_RATE.to_string()])
        .args(["--allow-address", &echo.addr.to_string()])
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("PROXY_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the edge proxyd");
    let edge_pid = edge_child.id();
    let edge_stderr = edge_child.stderr.take().unwrap();
    let edge_proxyd = Proxyd { child: edge_child };
    let edge_tally = Arc::new(Mutex::new(LogTally::default()));
    let (edge_first_tx, edge_first_rx) = std::sync::mpsc::channel::<String>();
    let edge_reader = {
        let tally = Arc::clone(&edge_tally);
        std::thread::spawn(move || read_log(edge_stderr, tally, Some(edge_first_tx)))
    };
    let edge_listening = wait_listening(&edge_first_rx);
    let edge_admin: SocketAddr = edge_listening["admin"].as_str().unwrap().parse().unwrap();
    let edge = Arc::new(edge::Edge {
        proxy: edge_listening["listen"].as_str().unwrap().parse().unwrap(),
        connector: pki.client_connector(None),
        server_name: pki.server_name(),
        target: format!("echo.soak.test:{}", echo.addr.port()),
        seen: edge::EdgeSeen::default(),
    });
    let (edge_cold_fds, edge_cold_rss) = footprint(edge_pid);

    // The stall phase: a third daemon whose log reader pauses under load (soak/stall.rs).
    let stall_phase = {
        let (policy, dns_addr, echo_addr) = (edge_policy.clone(), dns.addr(), echo.addr);
        tokio::spawn(async move { stall::run(testkit::binary("proxyd"), &policy, dns_addr, echo_addr).await })
    };

    let ports: HashMap<&'static str, u16> = [
        ("echo", echo.addr.port()),
        ("reset", reset.addr.port()),
        ("sink", sink_addr.port()),
        ("blackhole", blackhole_addr.port()),
        ("closed", closed_addr.port()),
    ]
    .into_iter()
    .collect();
    let soak = Arc::new(Soak {
        proxy,
        admin,
        ports,
        stop: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        in_cap_window: AtomicBool::new(false),
        cap_window_ended_ms: AtomicU64::new(0),
        started: Instant::now(),
        in_flight: AtomicUsize::new(0),
        sequence: AtomicU64::new(0),
        sent: Mutex::default(),
        counts: Mutex::default(),
        failures: Mutex::default(),
        failure_count: AtomicU64::new(0),
        bytes_verified: AtomicU64::new(0),
    });
    let started = soak.started;

    // The load, all at once.
    let mut load = JoinSet::new();
    for id in 0..6 {
        load.spawn(echo_client(Arc::clone(&soak), id, Duration::from_millis(100)));
    }
    for id in 0..2 {
        load.spawn(bulk_client(Arc::clone(&soak), id, Duration::from_millis(500)));
    }
    for _ in 0..2 {
        load.spawn(denied_client(Arc::clone(&soak), Arc::clone(&corpus), Duration::from_millis(50)));
    }
    load.spawn(failing_client(Arc::clone(&soak), Duration::from_millis(100)));
    load.spawn(rough_tunnel_client(Arc::clone(&soak), Duration::from_millis(200)));
    for id in 0..2 {
        load.spawn(edge::tunnel_client(Arc::clone(&soak), Arc::clone(&edge), id));
    }
    load.spawn(edge::rate_flooder(Arc::clone(&soak), Arc::clone(&edge)));
    load.spawn(edge::garbage_client(Arc::clone(&soak), Arc::clone(&edge)));
    for kind in [0, 0, 1, 2] {
        load.spawn(hostile_client(Arc::clone(&soak), kind, Duration::from_millis(200)));
    }
    let churner = tokio::spawn(churn(Arc::clone(&soak), policy.clone(), table_a.clone(), table_b.clone()));
    let scribbler = {
        let soak = Arc::clone(&soak);
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&sibling).unwrap();
            let mut writes = 0u64;
            while !soak.stop.load(Ordering::SeqCst) {
                let _ = writeln!(file, "soak log line {writes}");
                writes += 1;
                if writes.is_multiple_of(10_000) {
                    let _ = file.set_len(0);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            writes
        })
    };
    let readiness = {
        let soak = Arc::clone(&soak);
        tokio::spawn(async move {
            let (mut ok, mut not) = (0u64, Vec::new());
            while !soak.stop.load(Ordering::SeqCst) {
                // Not while a footprint sample is taken: the probe's connection is an fd too.
                if soak.paused.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                match admin_get(soak.admin, "/readyz").await {
                    Some((200, _)) => ok += 1,
                    other => not.push(format!("{:?}: {other:?}", started.elapsed())),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (ok, not)
        })
    };

    // Warm-up with the cap filled once, so the allocator has seen the peak; then the baseline.
    let _ = fill_the_cap(&soak, Duration::from_secs(2)).await;
    tokio::time::sleep(warm_up.saturating_sub(started.elapsed())).await;
    let baseline = quiet_sample(&soak, pid, started).await.expect("quiet point for the baseline");
    // Taken at the same quiet point (the edge clients pause with the others).
    let edge_baseline = footprint(edge_pid);
    let mut edge_peak = (edge_cold_fds.max(edge_baseline.0), edge_cold_rss.max(edge_baseline.1));
    let mut samples = vec![baseline];
    let mut peak = (cold_fds.max(baseline.fds), cold_rss.max(baseline.rss_kib));
    // The cap window: from 40% to 55% of the run.
    let cap_at = duration * 2 / 5;
    let cap_hold = (duration * 3 / 20).max(Duration::from_secs(10));
    let mut cap_result = None;
    let mut next_sample = Instant::now() + SAMPLE_EVERY;
    while started.elapsed() < duration {
        if cap_result.is_none() && started.elapsed() >= cap_at {
            let soak = Arc::clone(&soak);
            cap_result = Some(tokio::spawn(async move { fill_the_cap(&soak, cap_hold).await }));
        }
        let (fds, rss) = footprint(pid);
        peak = (peak.0.max(fds), peak.1.max(rss));
        let (edge_fds, edge_rss) = footprint(edge_pid);
        edge_peak = (edge_peak.0.max(edge_fds), edge_peak.1.max(edge_rss));
        if Instant::now() >= next_sample {
            next_sample = Instant::now() + SAMPLE_EVERY;
            if soak.in_cap_window.load(Ordering::SeqCst) {
                samples.push(Sample {
                    at: started.elapsed(),
                    fds,
                    rss_kib: rss,
                    anon_kib: anon_kib(pid),
                    quiet: false,
                });
            } else if let Some(sample) = quiet_sample(&soak, pid, started).await {
                samples.push(sample);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Stop the load; every task ends its current request and exits.
    soak.stop.store(true, Ordering::SeqCst);
    let load_deadline = Instant::now() + Duration::from_secs(60);
    while !load.is_empty() {
        match tokio::time::timeout(load_deadline.saturating_duration_since(Instant::now()), load.join_next()).await {
            Ok(Some(result)) => result.unwrap(),
            Ok(None) => break,
            Err(_) => panic!("load tasks did not finish within 60 s of the stop"),
        }
    }
    let (held, cap_refused) = match cap_result {
        Some(task) => task.await.unwrap(),
        None => (0, 0),
    };
    let (valid_writes, corrupt_writes) = churner.await.unwrap();
    let sibling_writes = scribbler.join().unwrap();
    let (ready_ok, not_ready) = readiness.await.unwrap();
    let stall_report = stall_phase.await.unwrap();
    // The table on disk is valid again (the last write may have been the corrupt one).
    std::fs::write(policy.with_extension("staged"), &table_a).unwrap();
    std::fs::rename(policy.with_extension("staged"), &policy).unwrap();

    soak.paused.store(false, Ordering::SeqCst);
    let after = {
        // Footprint after the load: quiet, with a few seconds for lingering closes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = scrape(admin).await;
            let gauge = s.as_ref().map_or(f64::NAN, |s| metric(s, "proxyd_tunnels_active"));
            let (fds, rss) = footprint(pid);
            if (gauge == 0.0 && fds <= baseline.fds) || Instant::now() > deadline {
                let sample = Sample { at: started.elapsed(), fds, rss_kib: rss, anon_kib: anon_kib(pid), quiet: true };
                break (sample, gauge, s);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (final_sample, final_gauge, final_scrape) = after;
    let edge_final = footprint(edge_pid);
    let edge_scrape = scrape(edge_admin).await;
    samples.push(final_sample);
    let policy_doc = admin_get(admin, "/policy").await.map(|(_, body)| body).unwrap_or_default();
    let (swapped, refused, unchanged) = policy_reloads(&policy_doc);
    let denied_name_queries = dns.queries().iter().filter(|(name, _)| name.ends_with(".other.test")).count();

    // Stop the daemon and read the rest of its log.
    let mut proxyd = proxyd;
    let exit = terminate(&mut proxyd.child, Duration::from_secs(40));
    reader.join().unwrap();
    let mut edge_proxyd = edge_proxyd;
    let edge_exit = terminate(&mut edge_proxyd.child, Duration::from_secs(40));
    edge_reader.join().unwrap();
    let edge_log = std::mem::take(&mut *edge_tally.lock().unwrap());
    let edge_sent = std::mem::take(&mut *edge.seen.sent.lock().unwrap());
    sink.abort();
    drop((blackhole, queue_fillers));
    let log = std::mem::take(&mut *tally.lock().unwrap());
    let sent_requests = std::mem::take(&mut *soak.sent.lock().unwrap());

    // Join what clients saw with what the daemon logged.
    let mut problems: Vec<String> = soak.failures.lock().unwrap().clone();
    let failure_count = soak.failure_count.load(Ordering::SeqCst);
    let answered_by_proxy = sent_requests.values().filter(|s| s.from_proxy).count() as u64;
    let answered_by_parser = sent_requests.len() as u64 - answered_by_proxy;
    let mut mismatched = Vec::new();
    let mut flip_checked = 0u64;
    for (trace, seen) in &sent_requests {
        let line = log.decisions.get(trace);
        match (seen.from_proxy, line) {
            (true, None) => mismatched.push(format!("{trace}: answered {} but no decision line", seen.status)),
            (false, Some(_)) => mismatched.push(format!("{trace}: HTTP parser answer {} yet a line", seen.status)),
            (false, None) => {}
            (true, Some(d)) => {
                let which = if d.revision == rev_a {
                    Which::A
                } else if d.revision == rev_b {
                    Which::B
                } else {
                    mismatched.push(format!("{trace}: revision {} is neither table", d.revision));
                    continue;
                };
                if let Some(allowed) = flip_allowed(which, &seen.host) {
                    flip_checked += 1;
                    if d.allow != Some(allowed) {
                        mismatched.push(format!("{trace}: {} under {which:?} decided allow={:?}", seen.host, d.allow));
                    }
                }
                let expected = match d.refusal.as_deref() {
                    None => 200,
                    Some("denied" | "missing_role") => 403,
                    Some("tunnel_cap" | "client_tunnel_cap") => 429,
                    Some("dns_timeout" | "connect_timeout") => 504,
                    Some("dns_error" | "connect_error") => 502,
                    Some("bad_request") => 400,
                    Some(other) => {
                        mismatched.push(format!("{trace}: refusal {other}"));
                        continue;
                    }
                };
                if seen.status != expected {
                    mismatched.push(format!("{trace}: client saw {}, line says {:?}", seen.status, d.refusal));
                }
            }
        }
    }
    let unknown_traces = log.decisions.keys().filter(|t| !sent_requests.contains_key(*t)).count();
    // The edge daemon: every answer has its line and agrees with it.
    let mut edge_mismatched = Vec::new();
    for (trace, status) in &edge_sent {
        let expected = match edge_log.decisions.get(trace).map(|d| d.refusal.as_deref()) {
            None => {
                edge_mismatched.push(format!("edge {trace}: answered {status} but no decision line"));
                continue;
            }
            Some(None) => 200,
            Some(Some("denied")) => 403,
            Some(Some("client_request_rate")) => 429,
            Some(Some(other)) => {
                edge_mismatched.push(format!("edge {trace}: refusal {other}"));
                continue;
            }
        };
        if *status != expected {
            edge_mismatched.push(format!("edge {trace}: client saw {status}, expected {expected}"));
        }
    }
    let edge_unknown = edge_log.decisions.keys().filter(|t| !edge_sent.contains_key(*t)).count();
    let edge_rate_lines =
        edge_log.decisions.values().filter(|d| d.refusal.as_deref() == Some("client_request_rate")).count();
    let edge_rate_metric =
        edge_scrape.as_ref().map_or(f64::NAN, |s| metric(s, "proxyd_requests_total{outcome=\"client_request_rate\"}"));
    let edge_gauge = edge_scrape.as_ref().map_or(f64::NAN, |s| metric(s, "proxyd_tunnels_active"));
    let connect_attempts = final_scrape.as_ref().map_or(f64::NAN, |s| metric(s, "proxyd_connect_attempts_total"));
    let expected_attempts = log
        .decisions
        .values()
        .filter(|d| matches!(d.refusal.as_deref(), None | Some("connect_error" | "connect_timeout")))
        .count() as f64;

    // fds: every quiet sample. Memory: the quiet samples after the cap window, the
    // steady state: holding the cap full raises the allocator's high-water mark once,
    // by design, and a fit across that step measures the step, not a trend.
    let quiet: Vec<&Sample> = samples.iter().filter(|s| s.quiet).collect();
    let cap_ended = Duration::from_millis(soak.cap_window_ended_ms.load(Ordering::SeqCst));
    let steady: Vec<&Sample> = match quiet.iter().filter(|s| s.at > cap_ended).count() {
        n if n >= 3 => quiet.iter().filter(|s| s.at > cap_ended).copied().collect(),
        _ => quiet.clone(),
    };
    let fit = |points: &[&Sample], value: fn(&Sample) -> f64| {
        slope_percent_per_hour(&points.iter().map(|s| (s.at.as_secs_f64(), value(s))).collect::<Vec<_>>())
    };
    let fd_slope = fit(&quiet, |s| s.fds as f64);
    let rss_slope = fit(&steady, |s| s.rss_kib as f64);
    let anon_slope = fit(&steady, |s| s.anon_kib as f64);
    let rss_slope_whole_run = fit(&quiet, |s| s.rss_kib as f64);
    let within = |after: f64, before: f64| after <= before * 1.10 && after >= before * 0.90;

    // The checks, each with what it measured.
    let mut checks: Vec<(bool, String)> = vec![
        (failure_count == 0, format!("client-side failures: {failure_count}")),
        (mismatched.is_empty(), format!("requests whose answer, line or table disagree: {}", mismatched.len())),
        (
            log.decision_lines == answered_by_proxy && log.untraced_decisions == 0 && unknown_traces == 0,
            format!(
                "decision lines {} == requests answered by proxyd {answered_by_proxy} (untraced {}, unknown {unknown_traces})",
                log.decision_lines, log.untraced_decisions
            ),
        ),
        (log.duplicate_traces.is_empty(), format!("requests with more than one line: {}", log.duplicate_traces.len())),
        (flip_checked > 0, format!("flip-name decisions checked against the table of their revision: {flip_checked}")),
        (
            log.panics == 0 && log.not_json.is_empty(),
            format!("panics {}, non-JSON lines {}", log.panics, log.not_json.len()),
        ),
        (log.unexplained.is_empty(), format!("WARN/ERROR lines without a known cause: {}", log.unexplained.len())),
        (
            refused >= corrupt_writes && log.reload_refused_lines == refused,
            format!(
                "reloads refused {refused} (log {}), corrupt tables written {corrupt_writes}",
                log.reload_refused_lines
            ),
        ),
        (
            swapped * 10 >= valid_writes * 8,
            format!("reloads applied {swapped} of {valid_writes} valid replacements (>= 80%), unchanged {unchanged}"),
        ),
        (not_ready.is_empty() && ready_ok > 0, format!("/readyz 200 {ready_ok} times, other {}", not_ready.len())),
        (final_gauge == 0.0, format!("tunnel gauge after the load: {final_gauge}")),
        (
            within(final_sample.fds as f64, baseline.fds as f64),
            format!("fds after the load {} vs baseline {} (within 10%)", final_sample.fds, baseline.fds),
        ),
        (
            within(final_sample.rss_kib as f64, baseline.rss_kib as f64),
            format!(
                "RSS after the load {} KiB vs baseline {} KiB (within 10%)",
                final_sample.rss_kib, baseline.rss_kib
            ),
        ),
        (
            fd_slope.abs() < 1.0 || quiet.iter().all(|s| s.fds == baseline.fds),
            format!("fd slope {fd_slope:+.3} %/h over {} quiet samples", quiet.len()),
        ),
        (
            rss_slope < 1.0,
            format!(
                "RSS slope {rss_slope:+.3} %/h over the {} quiet samples after the cap window (whole run {rss_slope_whole_run:+.3} %/h)",
                steady.len()
            ),
        ),
        (
            held > 0 && cap_refused > 0,
            format!("tunnel cap reached on purpose: {held} held, {cap_refused} refused with 429"),
        ),
        (
            connect_attempts == expected_attempts,
            format!(
                "connect attempts {connect_attempts} == tunnels + connect failures {expected_attempts} (denied: none)"
            ),
        ),
        (denied_name_queries == 0, format!("DNS queries for names denied by the table: {denied_name_queries}")),
        (exit.is_some_and(|s| s.success()), format!("exit after SIGTERM: {exit:?}")),
        (
            edge_mismatched.is_empty(),
            format!("edge: requests whose answer and line disagree: {}", edge_mismatched.len()),
        ),
        (
            edge_log.decision_lines == edge_sent.len() as u64
                && edge_log.untraced_decisions == 0
                && edge_unknown == 0
                && edge_log.duplicate_traces.is_empty(),
            format!(
                "edge: decision lines {} == requests {} (untraced {}, unknown {edge_unknown}, duplicated {})",
                edge_log.decision_lines,
                edge_sent.len(),
                edge_log.untraced_decisions,
                edge_log.duplicate_traces.len()
            ),
        ),
        (
            edge_log.panics == 0 && edge_log.not_json.is_empty() && edge_log.unexplained.is_empty(),
            format!(
                "edge: panics {}, non-JSON lines {}, WARN/ERROR lines {}",
                edge_log.panics,
                edge_log.not_json.len(),
                edge_log.unexplained.len()
            ),
        ),
        (
            edge_rate_lines > 0 && edge_rate_metric == edge_rate_lines as f64,
            format!("edge: request-rate 429s {edge_rate_lines} (lines), counted in /metrics {edge_rate_metric}"),
        ),
        (edge_gauge == 0.0, format!("edge: tunnel gauge after the load: {edge_gauge}")),
        (
            within(edge_final.0 as f64, edge_baseline.0 as f64) && within(edge_final.1 as f64, edge_baseline.1 as f64),
            format!(
                "edge: fds {} vs baseline {}, RSS {} KiB vs baseline {} KiB (within 10%)",
                edge_final.0, edge_baseline.0, edge_final.1, edge_baseline.1
            ),
        ),
        (edge_exit.is_some_and(|s| s.success()), format!("edge: exit after SIGTERM: {edge_exit:?}")),
    ];
    checks.extend(stall_report.checks.iter().cloned());
    if duration < Duration::from_secs(600) {
        // Under 10 minutes a 1 %/h RSS trend is a few KiB: below allocator noise. Reported, not asserted.
        if let Some(check) = checks.iter_mut().find(|(_, what)| what.starts_with("RSS slope")) {
            check.0 = true;
            check.1.push_str(" (asserted from 10m runs on)");
        }
    }

    let counts = soak.counts.lock().unwrap().clone();
    let mut table = String::new();
    let mut row = |k: &str, v: String| table.push_str(&format!("| {k} | {v} |\n"));
    row("duration", format!("{duration:?} (warm-up {warm_up:?}), proxyd pid {pid}"));
    row("MALLOC_ARENA_MAX", malloc_arenas().unwrap_or_else(|| "glibc default".to_owned()));
    row("requests sent (complete heads)", sent_requests.len().to_string());
    row("answered by proxyd / by the HTTP parser", format!("{answered_by_proxy} / {answered_by_parser}"));
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for s in sent_requests.values() {
        *by_status.entry(s.status).or_insert(0) += 1;
    }
    row("requests by status", by_status.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "));
    let mut by_refusal: BTreeMap<String, u64> = BTreeMap::new();
    for d in log.decisions.values() {
        *by_refusal.entry(d.refusal.clone().unwrap_or_else(|| "tunnel".to_owned())).or_insert(0) += 1;
    }
    row(
        "decision lines by outcome",
        by_refusal.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "),
    );
    for (what, n) in &counts {
        row(what, n.to_string());
    }
    row("bytes verified (checksummed or compared)", soak.bytes_verified.load(Ordering::Relaxed).to_string());
    row(
        "tunnel close lines / with an error",
        format!("{} / {}", log.close_lines, log.close_errors.values().sum::<u64>()),
    );
    row("close errors by kind", format!("{:?}", log.close_errors));
    row("policy replacements (valid / corrupt)", format!("{valid_writes} / {corrupt_writes}"));
    row("reloads applied / refused / unchanged", format!("{swapped} / {refused} / {unchanged}"));
    row("writes to a file beside the policy", sibling_writes.to_string());
    row(
        "fds: cold / baseline / peak / final",
        format!("{cold_fds} / {} / {} / {}", baseline.fds, peak.0, final_sample.fds),
    );
    row(
        "RSS KiB: cold / baseline / peak / final",
        format!("{cold_rss} / {} / {} / {}", baseline.rss_kib, peak.1, final_sample.rss_kib),
    );
    row("RssAnon KiB: baseline / final", format!("{} / {}", baseline.anon_kib, final_sample.anon_kib));
    row(
        "slopes (quiet samples)",
        format!(
            "fds {fd_slope:+.3} %/h ({} samples); after the cap window RSS {rss_slope:+.3} %/h, RssAnon {anon_slope:+.3} %/h ({} samples)",
            quiet.len(),
            steady.len()
        ),
    );
    row("edge daemon (TLS, PROXY protocol, rate limit)", format!("pid {edge_pid}, {} requests", edge_sent.len()));
    for (what, n) in edge.seen.counts.lock().unwrap().iter() {
        row(what, n.to_string());
    }
    row(
        "edge fds: cold / baseline / peak / final",
        format!("{edge_cold_fds} / {} / {} / {}", edge_baseline.0, edge_peak.0, edge_final.0),
    );
    row(
        "edge RSS KiB: cold / baseline / peak / final",
        format!("{edge_cold_rss} / {} / {} / {}", edge_baseline.1, edge_peak.1, edge_final.1),
    );
    for (what, value) in &stall_report.rows {
        row(what, value.clone());
    }
    for (ok, what) in &checks {
        row(if *ok { "PASS" } else { "FAIL" }, what.clone());
    }
    println!("\nsoak results\n\n| what | value |\n|---|---|\n{table}");
    println!(
        "samples (s, fds, RSS KiB, RssAnon KiB, quiet): {:?}",
        samples.iter().map(|s| (s.at.as_secs(), s.fds, s.rss_kib, s.anon_kib, s.quiet)).collect::<Vec<_>>()
    );
    if let Ok(path) = std::env::var("SOAK_REPORT") {
        std::fs::write(&path, format!("| what | value |\n|---|---|\n{table}")).unwrap();
    }

    problems.extend(mismatched.into_iter().take(20));
    problems.extend(edge.seen.failures.lock().unwrap().iter().cloned());
    problems.extend(edge_mismatched.into_iter().take(20));
    problems.extend(edge_log.unexplained.iter().chain(&edge_log.not_json).cloned());
    problems.extend(log.duplicate_traces.iter().map(|t| format!("duplicate line for {t}")));
    problems.extend(log.unexplained.iter().cloned());
    problems.extend(log.not_json.iter().cloned());
    problems.extend(not_ready.into_iter().take(10));
    problems.extend(stall_report.problems.iter().cloned());
    let failed: Vec<&String> = checks.iter().filter(|(ok, _)| !ok).map(|(_, what)| what).collect();
    assert!(failed.is_empty(), "soak checks failed: {failed:#?}\nfirst problems: {problems:#?}");
    drop((echo, reset, dns, dir, pki));
}

#[test]
fn durations_and_slopes() {
    assert_eq!(parse_duration("2m"), Duration::from_secs(120));
    assert_eq!(parse_duration("90s"), Duration::from_secs(90));
    assert_eq!(parse_duration("1h"), Duration::from_secs(3600));
    assert_eq!(parse_duration("45"), Duration::from_secs(45));
    // 100 -> 101 over one hour: +1 %/h of a mean of 100.5.
    let slope = slope_percent_per_hour(&[(0.0, 100.0), (1800.0, 100.5), (3600.0, 101.0)]);
    assert!((slope - 0.995).abs() < 0.01, "{slope}");
    assert_eq!(slope_percent_per_hour(&[(0.0, 5.0), (10.0, 5.0), (20.0, 5.0)]), 0.0);
    let mut sum = Fnv::new();
    sum.update(b"a");
    assert_eq!(sum.0, 0xaf63_dc4c_8601_ec8c, "FNV-1a test vector");
}
