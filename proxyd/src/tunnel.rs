//! Moving bytes both ways once a tunnel is open.
//!
//! Each direction passes on end-of-stream as a half-close (shutdown of the
//! other side's write half), so request/response protocols that close their
//! sending side keep working. A tunnel ends when both directions have
//! finished, when either side fails (a reset ends it promptly), when no byte
//! moved for the idle timeout, or when shutdown's grace period is over.
//!
//! An idle tunnel holds no copy buffer: a direction waits for readability
//! first and only then borrows a buffer for the burst of reads that follow.
//! This module never decides anything about where bytes may go.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Size of the buffer a direction borrows while data is flowing.
const BURST_BUFFER: usize = 64 * 1024;

/// What a finished tunnel reports for the close log line.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Bytes from the client to the upstream.
    pub bytes_out: u64,
    /// Bytes from the upstream to the client.
    pub bytes_in: u64,
    /// Why it ended, if not by both sides closing.
    pub error: Option<String>,
}

/// The client side of a tunnel: a plain or TLS connection.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientStream::Plain(s) => f.debug_tuple("Plain").field(&s.peer_addr().ok()).finish(),
            ClientStream::Tls(_) => f.write_str("Tls"),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Runs a tunnel to completion. `pipelined` holds bytes the client sent
/// right after the CONNECT head; they go upstream first.
pub async fn run(
    client: ClientStream,
    pipelined: &[u8],
    mut upstream: TcpStream,
    idle_timeout: Option<Duration>,
    stop: impl Future<Output = ()>,
) -> TunnelStats {
    let mut stats = TunnelStats::default();
    if !pipelined.is_empty() {
        if let Err(e) = upstream.write_all(pipelined).await {
            stats.error = Some(format!("writing pipelined bytes upstream: {e}"));
            return stats;
        }
        stats.bytes_out = pipelined.len() as u64;
    }
    let last_activity = Activity::new();
    let (bytes_out, bytes_in) = (AtomicU64::new(stats.bytes_out), AtomicU64::new(0));
    let result = match client {
        ClientStream::Plain(client) => {
            let (client_read, client_write) = client.into_split();
            let (upstream_read, upstream_write) = upstream.into_split();
            let out = pump_tcp(&client_read, upstream_write, &bytes_out, &last_activity);
            let back = pump_tcp(&upstream_read, client_write, &bytes_in, &last_activity);
            supervise(out, back, idle_timeout, &last_activity, stop).await
        }
        ClientStream::Tls(client) => {
            let (client_read, client_write) = tokio::io::split(*client);
            let (upstream_read, upstream_write) = upstream.into_split();
            let out = pump_generic(client_read, upstream_write, &bytes_out, &last_activity);
            let back = pump_tcp(&upstream_read, client_write, &bytes_in, &last_activity);
            supervise(out, back, idle_timeout, &last_activity, stop).await
        }
    };
    stats.bytes_out = bytes_out.load(Ordering::Relaxed);
    stats.bytes_in = bytes_in.load(Ordering::Relaxed);
    stats.error = result.err();
    stats
}

/// When a byte last moved, as nanoseconds since the tunnel opened (atomic so
/// the tunnel future stays `Send`).
struct Activity {
    opened: Instant,
    nanos: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { opened: Instant::now(), nanos: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// Drives both directions; ends on completion, failure, idleness or stop.
async fn supervise(
    out: impl Future<Output = io::Result<()>>,
    back: impl Future<Output = io::Result<()>>,
    idle_timeout: Option<Duration>,
    last_activity: &Activity,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let both = async {
        // A failing direction ends the tunnel at once; a finished one waits for the other.
        tokio::try_join!(async { out.await.map_err(|e| format!("client to upstream: {e}")) }, async {
            back.await.map_err(|e| format!("upstream to client: {e}"))
        },)
        .map(|_| ())
    };
    let idle = async {
        let Some(limit) = idle_timeout else { return std::future::pending::<String>().await };
        loop {
            let deadline = last_activity.last() + limit;
            if Instant::now() >= deadline {
                return format!("idle for {limit:?}");
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        result = both => result,
        reason = idle => Err(reason),
        () = stop => Err("closed at the end of the shutdown grace period".to_owned()),
    }
}

/// Copies from a TCP read half: waits for readability, then borrows a
/// buffer for as long as reads succeed without blocking.
async fn pump_tcp<W: AsyncWrite + Unpin>(
    from: &tokio::net::tcp::OwnedReadHalf,
    mut to: W,
    counter: &AtomicU64,
    last_activity: &Activity,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buffer = vec![0u8; BURST_BUFFER];
        loop {
            match from.try_read(&mut buffer) {
                Ok(0) => {
                    // End of stream: pass the half-close on.
                    to.shutdown().await?;
                    return Ok(());
                }
                Ok(n) => {
                    last_activity.touch();
                    to.write_all(buffer.get(..n).unwrap_or_default()).await?;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    last_activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies from any reader (a TLS stream, which buffers internally anyway).
async fn pump_generic<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    last_activity: &Activity,
) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        last_activity.touch();
        to.write_all(buffer.get(..n).unwrap_or_default()).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last_activity.touch();
    }
}
