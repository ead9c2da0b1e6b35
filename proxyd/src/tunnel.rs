//! Moving bytes both ways once a tunnel is open.
//!
//! Each direction passes on end-of-stream as a half-close (shutdown of the
//! other side's write half), so request/response protocols that close their
//! sending side keep working. A tunnel ends when both directions have
//! finished, when either side fails (a reset ends it promptly), when no byte
//! moved for the idle timeout, or when shutdown's grace period is over.
//!
//! An idle tunnel holds no copy buffer and no pipe: a direction waits for
//! readability first and only then borrows a buffer for the burst of reads
//! that follow. Between two plain TCP sockets, a direction whose reads fill
//! that buffer switches to splice(2) through a pipe it creates then, so bulk
//! bytes never cross into userspace; the pipe closes when the direction goes
//! quiet. What an idle tunnel does hold is kept small on purpose (see
//! [`run`]).
//!
//! This module never decides anything about where bytes may go.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::buffers::Buffer;

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

impl ClientStream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }
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
/// right after the CONNECT head; they go upstream first. `counters`, when
/// given, is kept current while it runs (bytes each way, last activity), so
/// readers of [`crate::live`] see the tunnel move; otherwise the tunnel
/// counts into its own (inside its boxed state, costing its task nothing).
///
/// While idle, a plain tunnel holds about 1.3 KiB here: its boxed state,
/// the two directions' futures (each parked on its socket), one timer and
/// the two halves' shared handles; no buffer and no pipe.
pub async fn run(
    client: ClientStream,
    pipelined: &[u8],
    upstream: TcpStream,
    idle_timeout: Option<Duration>,
    counters: Option<&TunnelCounters>,
    stop: impl Future<Output = ()>,
) -> TunnelStats {
    // Boxed once, sized to what it holds: inline, the caller's task would
    // reserve room for this state machine more than once (rustc lays out
    // futures moved between async fns side by side). `stop` is boxed for the
    // same reason, so it is not carried along by value.
    Box::pin(relay(client, pipelined, upstream, idle_timeout, counters, Box::pin(stop))).await
}

async fn relay<S: Future<Output = ()>>(
    client: ClientStream,
    pipelined: &[u8],
    mut upstream: TcpStream,
    idle_timeout: Option<Duration>,
    counters: Option<&TunnelCounters>,
    stop: Pin<Box<S>>,
) -> TunnelStats {
    let own;
    let last_activity = match counters {
        Some(shared) => shared,
        None => {
            own = TunnelCounters::new();
            &own
        }
    };
    let mut stats = TunnelStats::default();
    if !pipelined.is_empty() {
        if let Err(e) = upstream.write_all(pipelined).await {
            stats.error = Some(format!("writing pipelined bytes upstream: {e}"));
            return stats;
        }
        last_activity.out().fetch_add(pipelined.len() as u64, Ordering::Relaxed);
    }
    let (bytes_out, bytes_in) = (last_activity.out(), last_activity.back());
    // Each direction is boxed for the same reason (together, inline, they
    // made an idle tunnel's task about 10 KiB).
    let (out, back): (Direction<'_>, Direction<'_>) = match client {
        ClientStream::Plain(client) => {
            let (client_read, client_write) = client.into_split();
            let (upstream_read, upstream_write) = upstream.into_split();
            (
                Box::pin(pump_tcp_to_tcp(client_read, upstream_write, bytes_out, last_activity)),
                Box::pin(pump_tcp_to_tcp(upstream_read, client_write, bytes_in, last_activity)),
            )
        }
        ClientStream::Tls(client) => {
            let (client_read, client_write) = tokio::io::split(*client);
            let (upstream_read, upstream_write) = upstream.into_split();
            (
                Box::pin(pump_generic(client_read, upstream_write, bytes_out, last_activity)),
                Box::pin(pump_tcp(upstream_read, client_write, bytes_in, last_activity)),
            )
        }
    };
    let idle =
        idle_timeout.map(|limit| (limit, Box::pin(tokio::time::sleep_until(last_activity.last_activity() + limit))));
    let result = Supervisor { out: Some(out), back: Some(back), stop, idle, last_activity }.await;
    stats.bytes_out = bytes_out.load(Ordering::Relaxed);
    stats.bytes_in = bytes_in.load(Ordering::Relaxed);
    stats.error = result.err();
    stats
}

/// One direction of a tunnel, running until end of stream or failure.
type Direction<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// When a byte last moved: part of the tunnel's counters, which the relays
/// update once per burst with relaxed stores.
type Activity = TunnelCounters;

/// Byte counters and last activity of one tunnel, written by its relays
/// and read while it runs by [`crate::live`] (relaxed atomics: no lock).
#[derive(Debug)]
pub struct TunnelCounters {
    opened: Instant,
    /// Bytes from the client to the upstream.
    bytes_out: AtomicU64,
    /// Bytes from the upstream to the client.
    bytes_in: AtomicU64,
    /// When a byte last moved, as nanoseconds since `opened`.
    last_activity: AtomicU64,
}

impl Default for TunnelCounters {
    fn default() -> Self {
        TunnelCounters::new()
    }
}

impl TunnelCounters {
    pub fn new() -> Self {
        TunnelCounters {
            opened: Instant::now(),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
        }
    }

    /// When the counters were made (the tunnel's opening).
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// The client-to-upstream counter.
    pub fn out(&self) -> &AtomicU64 {
        &self.bytes_out
    }

    /// The upstream-to-client counter.
    pub fn back(&self) -> &AtomicU64 {
        &self.bytes_in
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// A byte moved now.
    pub fn touch(&self) {
        let nanos = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_activity.store(nanos, Ordering::Relaxed);
    }

    /// When a byte last moved (the opening when none has).
    pub fn last_activity(&self) -> Instant {
        self.opened + Duration::from_nanos(self.last_activity.load(Ordering::Relaxed))
    }

    /// Time since a byte last moved.
    pub fn idle(&self) -> Duration {
        self.last_activity().elapsed()
    }

    /// Time since the tunnel opened.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }
}

/// Drives both directions; ends on completion, failure, idleness or stop.
/// Written by hand, with every field a pointer or a few words (one timer,
/// re-armed in place), so an idle tunnel's own state stays small.
struct Supervisor<'a, S> {
    /// `None` once finished (its state is freed then).
    out: Option<Direction<'a>>,
    back: Option<Direction<'a>>,
    stop: Pin<Box<S>>,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    last_activity: &'a Activity,
}

impl<S: Future<Output = ()>> Future for Supervisor<'_, S> {
    type Output = Result<(), String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // A failing direction ends the tunnel at once; a finished one waits for the other.
        if let Some(out) = &mut this.out
            && let Poll::Ready(result) = out.as_mut().poll(cx)
        {
            result.map_err(|e| format!("client to upstream: {e}"))?;
            this.out = None;
        }
        if let Some(back) = &mut this.back
            && let Poll::Ready(result) = back.as_mut().poll(cx)
        {
            result.map_err(|e| format!("upstream to client: {e}"))?;
            this.back = None;
        }
        if this.out.is_none() && this.back.is_none() {
            return Poll::Ready(Ok(()));
        }
        if this.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err("closed at the end of the shutdown grace period".to_owned()));
        }
        if let Some((limit, timer)) = &mut this.idle {
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = this.last_activity.last_activity() + *limit;
                if Instant::now() >= deadline {
                    return Poll::Ready(Err(format!("idle for {limit:?}")));
                }
                timer.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    }
}

/// How a burst of non-blocking reads ended.
#[derive(Debug, PartialEq, Eq)]
enum Burst {
    /// The source has nothing more for now.
    Drained,
    /// The source sent end-of-stream.
    Eof,
    /// A read filled the whole buffer: bulk data is flowing (only when asked to stop there).
    Full,
}

/// TCP to TCP: bursts that fit the copy buffer are copied (no pipe to set
/// up for small request/response traffic); once a read fills the buffer the
/// direction splices through a pipe until it goes quiet (see [`splice`]).
async fn pump_tcp_to_tcp(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    counter: &AtomicU64,
    last_activity: &Activity,
) -> io::Result<()> {
    // After a pipe could not be had, copy for a while before asking again.
    let mut no_pipe_until: Option<Instant> = None;
    loop {
        wait_readable(&from).await?;
        let splice = splice::AVAILABLE && no_pipe_until.is_none_or(|until| Instant::now() >= until);
        let burst = copy_burst(&mut from, &mut to, counter, last_activity, splice).await?;
        let ended = match burst {
            Burst::Drained => false,
            Burst::Eof => true,
            // Boxed: its state (a timer among others) exists only while bulk data flows.
            Burst::Full => match splice::Pipe::new() {
                Ok(pipe) => Box::pin(pipe.relay_while_busy(&from, &to, counter, last_activity)).await?,
                Err(_) => {
                    // Out of descriptors, or pipes too small to help: keep copying.
                    no_pipe_until = Some(Instant::now() + splice::PIPE_LINGER);
                    false
                }
            },
        };
        if ended {
            // End of stream: pass the half-close on.
            to.shutdown().await?;
            return Ok(());
        }
    }
}

/// TCP to any writer (a TLS client): copies burst by burst.
async fn pump_tcp<W: AsyncWrite + Unpin>(
    mut from: OwnedReadHalf,
    mut to: W,
    counter: &AtomicU64,
    last_activity: &Activity,
) -> io::Result<()> {
    loop {
        wait_readable(&from).await?;
        if copy_burst(&mut from, &mut to, counter, last_activity, false).await? == Burst::Eof {
            to.shutdown().await?;
            return Ok(());
        }
    }
}

/// Waits until `from` may have data. Through the socket's single reader
/// slot rather than `readable()`'s waiter list: an idle direction then
/// holds only the waker in that slot (replacing the one the request head's
/// last read left there), not a waiter entry of its own.
async fn wait_readable(from: &OwnedReadHalf) -> io::Result<()> {
    std::future::poll_fn(|cx| from.as_ref().poll_read_ready(cx)).await
}

/// Copies for as long as reads succeed without blocking ([`read_now`]),
/// through a [`Buffer`] held only for the burst. With `stop_when_full`,
/// returns [`Burst::Full`] after writing a read that filled the buffer.
async fn copy_burst<W: AsyncWrite + Unpin>(
    from: &mut OwnedReadHalf,
    to: &mut W,
    counter: &AtomicU64,
    last_activity: &Activity,
    stop_when_full: bool,
) -> io::Result<Burst> {
    let mut buffer = Buffer::take();
    let burst = loop {
        buffer.clear();
        match read_now(from, &mut buffer) {
            Poll::Ready(Ok(0)) => break Burst::Eof,
            Poll::Ready(Ok(n)) => {
                last_activity.touch();
                to.write_all(&buffer).await?;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                last_activity.touch();
                if stop_when_full && n == buffer.capacity() {
                    break Burst::Full;
                }
            }
            Poll::Pending => break Burst::Drained,
            Poll::Ready(Err(e)) => return Err(e),
        }
    };
    // A TLS writer may keep the last record until flushed; for TCP this is free.
    to.flush().await?;
    Ok(burst)
}

/// One read of whatever `from` has now, appended to `buffer`, never waiting:
/// `Pending` means nothing is ready. Polled with a no-op waker, since the
/// caller's next wait for readability registers the real one. For a tokio
/// socket, a read that returns less than the buffer's room has emptied it,
/// so tokio marks it not ready and the next call is `Pending` without a
/// `recv` that would only say `EAGAIN` (end of stream is still seen: tokio
/// keeps the closed state).
fn read_now<R: AsyncRead + Unpin>(from: &mut R, buffer: &mut Vec<u8>) -> Poll<io::Result<usize>> {
    let read = std::pin::pin!(from.read_buf(buffer));
    read.poll(&mut Context::from_waker(std::task::Waker::noop()))
}

/// Any reader (a TLS client) to TCP. It waits for the first byte of a burst
/// with no buffer (one byte on the stack, inside a poll), then reads
/// whatever else is ready into a burst buffer.
async fn pump_generic<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    last_activity: &Activity,
) -> io::Result<()> {
    loop {
        let Some(first) = std::future::poll_fn(|cx| poll_first_byte(&mut from, cx)).await? else {
            to.shutdown().await?;
            return Ok(());
        };
        last_activity.touch();
        let mut buffer = Buffer::take();
        buffer.push(first);
        let mut eof = false;
        loop {
            // Whatever is ready now, without waiting.
            let more = read_now(&mut from, &mut buffer);
            match more {
                Poll::Ready(Ok(0)) => eof = true,
                Poll::Ready(Ok(_)) => {
                    last_activity.touch();
                    if buffer.len() < buffer.capacity() {
                        continue;
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
            if !buffer.is_empty() {
                to.write_all(&buffer).await?;
                counter.fetch_add(buffer.len() as u64, Ordering::Relaxed);
                last_activity.touch();
                buffer.clear();
            }
            if eof || more.is_pending() {
                break;
            }
        }
        to.flush().await?;
        if eof {
            to.shutdown().await?;
            return Ok(());
        }
    }
}

/// Resolves with the next byte, or `None` at end of stream.
fn poll_first_byte<R: AsyncRead + Unpin>(from: &mut R, cx: &mut Context<'_>) -> Poll<io::Result<Option<u8>>> {
    let mut byte = [0u8; 1];
    let mut read = ReadBuf::new(&mut byte);
    match Pin::new(from).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().first().copied())),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// splice(2) for busy TCP-to-TCP directions: socket to pipe to socket, so
/// bulk bytes stay in the kernel (no copies to and from userspace, no
/// buffer in the proxy). A direction creates its pipe when it turns busy
/// and closes it after [`splice::PIPE_LINGER`] of quiet, so idle tunnels
/// hold no pipe descriptors. The pipe is always emptied before the next
/// read, so EAGAIN from a read means the socket, never a full pipe.
///
/// Splicing into a socket whose peer is gone raises SIGPIPE like `send`
/// without `MSG_NOSIGNAL`; Rust programs ignore SIGPIPE, so it is EPIPE.
#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use rustix::pipe::{PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::Activity;

    pub(super) const AVAILABLE: bool = true;

    /// Capacity asked for each pipe: larger pipes move more per system call
    /// (64 KiB, the default, gave about 30% less throughput on loopback).
    /// Refused (beyond `fs.pipe-max-size`, or over the user's pipe page
    /// budget, `fs.pipe-user-pages-soft`), the pipe keeps what it has.
    const PIPE_CAPACITY: usize = 1024 * 1024;
    /// Past the user's pipe page budget the kernel hands out two-page pipes;
    /// splicing 8 KiB at a time is worse than copying, so such a pipe is
    /// refused and the direction copies.
    const MIN_PIPE_CAPACITY: usize = 64 * 1024;
    /// A busy direction keeps its pipe through pauses shorter than this.
    pub(super) const PIPE_LINGER: Duration = Duration::from_secs(1);

    const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

    #[derive(Debug)]
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        pub(super) fn new() -> io::Result<Pipe> {
            let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            let capacity = rustix::pipe::fcntl_setpipe_size(&write, PIPE_CAPACITY)
                .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
            if capacity < MIN_PIPE_CAPACITY {
                return Err(io::Error::other(format!("pipe of {capacity} bytes is too small to splice through")));
            }
            Ok(Pipe { read, write, capacity })
        }

        /// Relays until end of stream (`Ok(true)`) or until the source has
        /// been quiet for [`PIPE_LINGER`] (`Ok(false)`; the pipe closes).
        pub(super) async fn relay_while_busy(
            self,
            from: &OwnedReadHalf,
            to: &OwnedWriteHalf,
            counter: &AtomicU64,
            last_activity: &Activity,
        ) -> io::Result<bool> {
            let (source, sink): (&TcpStream, &TcpStream) = (from.as_ref(), to.as_ref());
            loop {
                // try_io spends no cooperative budget: yield now and then so a
                // busy tunnel cannot hold its worker thread.
                tokio::task::consume_budget().await;
                let filled = source.try_io(Interest::READABLE, || {
                    Ok(rustix::pipe::splice(source, None, &self.write, None, self.capacity, FLAGS)?)
                });
                let mut in_pipe = match filled {
                    Ok(0) => return Ok(true),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let ready = std::future::poll_fn(|cx| source.poll_read_ready(cx));
                        match tokio::time::timeout(PIPE_LINGER, ready).await {
                            Ok(ready) => ready?,
                            Err(_quiet) => return Ok(false),
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                last_activity.touch();
                while in_pipe > 0 {
                    let drained = sink.try_io(Interest::WRITABLE, || {
                        Ok(rustix::pipe::splice(&self.read, None, sink, None, in_pipe, FLAGS)?)
                    });
                    match drained {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            in_pipe = in_pipe.saturating_sub(n);
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            last_activity.touch();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::future::poll_fn(|cx| sink.poll_write_ready(cx)).await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// Elsewhere there is no splice(2): every burst is copied.
#[cfg(not(target_os = "linux"))]
mod splice {
    use std::io;
    use std::sync::atomic::AtomicU64;

    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::Activity;

    pub(super) const AVAILABLE: bool = false;
    pub(super) const PIPE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

    #[derive(Debug)]
    pub(super) struct Pipe;

    impl Pipe {
        pub(super) fn new() -> io::Result<Pipe> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(super) async fn relay_while_busy(
            self,
            _from: &OwnedReadHalf,
            _to: &OwnedWriteHalf,
            _counter: &AtomicU64,
            _last_activity: &Activity,
        ) -> io::Result<bool> {
            Ok(false)
        }
    }
}
