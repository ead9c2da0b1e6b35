//! The soak's second daemon, the edge one: TLS on the listener, PROXY
//! protocol required, and `--max-requests-per-client-per-second`, under a
//! lighter load that runs beside the main daemon's and pauses with it.
//!
//! Well-behaved clients send a PROXY v1 or v2 header naming their own
//! source address, then TLS, then a traced CONNECT, and echo checksummed
//! rounds through the tunnel. One client sends request heads faster than
//! the rate limit from one PROXY source (403 while within the rate, 429
//! `client_request_rate` beyond it). Garbage clients send bad PROXY headers
//! (v1 too long, v2 with a bad signature, v2 with a length too short for its
//! addresses), TLS garbage (random bytes, a truncated ClientHello) and plain
//! HTTP to the TLS port; each must be closed by the daemon without an HTTP
//! answer, within the header timeout. Everything is on loopback.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{HEADER_TIMEOUT, InFlight, OPERATION_LIMIT, Soak, XorShift, exchange, read_head};

/// Request heads per second per client address on the edge daemon.
pub(super) const EDGE_RATE: u32 = 5;

/// What the edge clients saw.
#[derive(Default)]
pub(super) struct EdgeSeen {
    /// Trace id to the status the client received.
    pub sent: Mutex<HashMap<String, u16>>,
    pub counts: Mutex<BTreeMap<String, u64>>,
    pub failures: Mutex<Vec<String>>,
}

impl EdgeSeen {
    fn count(&self, what: &str) {
        *self.counts.lock().unwrap().entry(what.to_owned()).or_insert(0) += 1;
    }

    fn fail(&self, soak: &Soak, what: String) {
        soak.failure_count.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 50 {
            failures.push(format!("edge: {what}"));
        }
    }
}

/// Where the edge daemon listens and what it tunnels to.
pub(super) struct Edge {
    pub proxy: SocketAddr,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    /// `echo.soak.test:PORT`.
    pub target: String,
    pub seen: EdgeSeen,
}

/// A PROXY v1 header naming `source` as the client.
fn proxy_v1(source: [u8; 4]) -> Vec<u8> {
    let [a, b, c, d] = source;
    format!("PROXY TCP4 {a}.{b}.{c}.{d} 127.0.0.1 40000 4750\r\n").into_bytes()
}

/// A PROXY v2 header (TCP over IPv4) naming `source` as the client.
fn proxy_v2(source: [u8; 4]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&40000u16.to_be_bytes());
    header.extend_from_slice(&4750u16.to_be_bytes());
    header
}

impl Edge {
    /// TCP, the PROXY header, TLS; counted in flight (the soak's quiet points wait for it).
    async fn open<'a>(
        &self,
        soak: &'a Soak,
        header: &[u8],
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, InFlight<'a>), String> {
        soak.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(&soak.in_flight);
        let mut tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(self.proxy))
            .await
            .map_err(|_| "connect to the edge proxy timed out".to_owned())?
            .map_err(|e| format!("connect to the edge proxy: {e}"))?;
        tcp.write_all(header).await.map_err(|e| format!("send PROXY header: {e}"))?;
        let tls = tokio::time::timeout(OPERATION_LIMIT, self.connector.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| "TLS handshake hung".to_owned())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok((tls, guard))
    }

    /// A traced CONNECT through PROXY + TLS; records the status the client saw.
    async fn request<'a>(
        &self,
        soak: &'a Soak,
        header: &[u8],
        target: &str,
        trace: &str,
    ) -> Result<(u16, tokio_rustls::client::TlsStream<TcpStream>, InFlight<'a>), String> {
        let (mut stream, guard) = self.open(soak, header).await?;
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Smokescreen-Trace-ID: {trace}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| format!("send head: {e}"))?;
        let (status, _) = read_head(&mut stream).await?;
        self.seen.sent.lock().unwrap().insert(trace.to_owned(), status);
        Ok((status, stream, guard))
    }
}

/// A well-behaved client behind a load balancer: PROXY v1 (`id` even) or v2
/// naming 198.51.100.(10 + id), TLS, CONNECT, echo rounds. Paced under the rate limit.
pub(super) async fn tunnel_client(soak: Arc<Soak>, edge: Arc<Edge>, id: u8) {
    let source = [198, 51, 100, 10 + id];
    let header = if id.is_multiple_of(2) { proxy_v1(source) } else { proxy_v2(source) };
    let label = if id.is_multiple_of(2) { "PROXY v1" } else { "PROXY v2" };
    let mut n = 0u64;
    while soak.go().await {
        n += 1;
        let trace = soak.trace("edge");
        let outcome = tokio::time::timeout(OPERATION_LIMIT, async {
            let (status, mut stream, _guard) = edge.request(&soak, &header, &edge.target, &trace).await?;
            if status != 200 {
                return Err(format!("answered {status}"));
            }
            exchange(&mut stream, u64::from(id) << 40 | n, 3, 8192).await
        })
        .await;
        match outcome {
            Ok(Ok(bytes)) => {
                soak.bytes_verified.fetch_add(bytes, Ordering::Relaxed);
                edge.seen.count(&format!("edge {label} + TLS tunnel: bytes intact"));
            }
            Ok(Err(e)) => edge.seen.fail(&soak, format!("{trace} {label} tunnel: {e}")),
            Err(_) => edge.seen.fail(&soak, format!("{trace} {label} tunnel hung")),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One client address sending request heads (for a denied name) four times
/// faster than the rate limit: 403 within the rate, 429 beyond it.
pub(super) async fn rate_flooder(soak: Arc<Soak>, edge: Arc<Edge>) {
    let header = proxy_v1([198, 51, 100, 99]);
    let pace = Duration::from_secs(1) / (EDGE_RATE * 4);
    while soak.go().await {
        let trace = soak.trace("edge-rate");
        let outcome =
            tokio::time::timeout(OPERATION_LIMIT, edge.request(&soak, &header, "denied.other.test:443", &trace)).await;
        match outcome {
            Ok(Ok((403, _, _))) => edge.seen.count("edge rate flooder: 403 within the rate"),
            Ok(Ok((429, _, _))) => edge.seen.count("edge rate flooder: 429 over the rate"),
            Ok(Ok((status, _, _))) => edge.seen.fail(&soak, format!("{trace} rate flooder: answered {status}")),
            Ok(Err(e)) => edge.seen.fail(&soak, format!("{trace} rate flooder: {e}")),
            Err(_) => edge.seen.fail(&soak, format!("{trace} rate flooder hung")),
        }
        tokio::time::sleep(pace).await;
    }
}

/// Garbage on the PROXY + TLS port, one kind after another; each connection
/// must be closed by the daemon without an HTTP answer within the header timeout.
pub(super) async fn garbage_client(soak: Arc<Soak>, edge: Arc<Edge>) {
    const KINDS: [&str; 6] = [
        "PROXY v1 header too long",
        "PROXY v2 bad signature",
        "PROXY v2 length too short for its addresses",
        "random bytes instead of TLS",
        "truncated TLS ClientHello",
        "plain HTTP to the TLS port",
    ];
    let mut rng = XorShift(0xED6E);
    let mut n = 0usize;
    while soak.go().await {
        let kind = n % KINDS.len();
        n += 1;
        let mut bytes = match kind {
            0 => format!("PROXY TCP4 {} 127.0.0.1 40000 4750\r\n", "1".repeat(200)).into_bytes(),
            1 => b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c".to_vec(),
            2 => {
                let mut v2 = proxy_v2([198, 51, 100, 50]);
                if let Some(length) = v2.get_mut(15) {
                    *length = 4;
                }
                v2.truncate(16 + 4);
                v2
            }
            _ => proxy_v1([198, 51, 100, 50]),
        };
        match kind {
            3 => {
                let mut junk = vec![0u8; 512];
                rng.fill(&mut junk);
                bytes.extend_from_slice(&junk);
            }
            // A TLS record header announcing a 512-byte handshake, then 20 bytes of it.
            4 => bytes.extend_from_slice(&[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                12, 13, 14,
            ]),
            5 => bytes.extend_from_slice(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", edge.target).as_bytes()),
            _ => {}
        }
        soak.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&soak.in_flight);
        let started = Instant::now();
        let closed = tokio::time::timeout(HEADER_TIMEOUT + Duration::from_secs(2), async {
            let mut stream = TcpStream::connect(edge.proxy).await.map_err(|e| format!("connect: {e}"))?;
            // The daemon may close before it has read everything: a failed write is fine.
            let _ = stream.write_all(&bytes).await;
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(buf.get(..n).unwrap_or_default()),
                }
            }
            Ok::<_, String>(answer)
        })
        .await;
        let label = KINDS.get(kind).copied().unwrap_or_default();
        match closed {
            Ok(Ok(answer)) if answer.starts_with(b"HTTP/") => {
                edge.seen.fail(&soak, format!("{label}: got an HTTP answer {:?}", String::from_utf8_lossy(&answer)));
            }
            // Plain HTTP to a TLS port may get a TLS alert record back; that is not an HTTP answer.
            Ok(Ok(_)) => edge.seen.count(&format!("edge garbage, {label}: closed by the proxy")),
            Ok(Err(e)) => edge.seen.fail(&soak, format!("{label}: {e}")),
            Err(_) => edge.seen.fail(&soak, format!("{label}: not closed after {:?}", started.elapsed())),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
