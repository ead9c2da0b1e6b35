//! The data-plane threads: one event loop per CPU, each accepting from the
//! same listening socket and keeping every connection it accepted until that
//! connection is over.
//!
//! Each worker is a single-threaded tokio runtime on a thread of its own. A
//! connection, its request and its tunnel never move between threads, so
//! nothing on the request path is handed across cores: no work stealing, no
//! wake-up of another worker, and memory is freed by the thread that
//! allocated it. The kernel spreads new connections: every worker waits on
//! its own copy of the listening socket and whichever is free takes the next
//! one. (The control work — admin endpoints, reloads, signals — stays on the
//! runtime that called [`Workers::start`].)
//!
//! Each worker also keeps one timer of its own running, a second ahead, so
//! that the deadlines every connection arms never wake its event loop
//! (`anchor_timers`); an idle worker wakes once a second for it.
//!
//! This module knows nothing about requests: it accepts, hands each
//! connection to the `serve` function it was given, and stops when told.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How many connections the kernel may queue for the workers (it caps this
/// at `net.core.somaxconn`, 4096 by default). A connection that finds the
/// queue full has its handshake dropped and its client waits for a
/// retransmission, 1 s or more: with tokio's default of 1,024, a stall of a
/// quarter second at 4,000 tunnels/s (another process holding both cores)
/// was enough, and the open-loop benchmark's p99 went from milliseconds to
/// seconds while `ListenOverflows` counted thousands. HAProxy queues
/// `maxconn` by default for the same reason.
const LISTEN_BACKLOG: i32 = 65_535;

/// How far ahead a worker's timer wheel always has a timer of its own (see
/// [`anchor_timers`]): shorter than every per-connection deadline (the
/// shortest default is the 5 s DNS timeout), long enough that its own
/// firing costs nothing measurable (one wake-up a second).
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// The running data-plane threads.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// `true`: stop accepting and close the listener copies.
    stop_accepting: watch::Sender<bool>,
    /// One message (or a dropped sender) per worker that has closed its copy.
    closed: mpsc::Receiver<()>,
    /// `true`: the drain is over; the workers drop what is left and exit.
    finish: watch::Sender<bool>,
}

impl Workers {
    /// Starts `count` workers (at least one) accepting from `listener`; each
    /// accepted connection runs as `serve(stream, peer)` on the worker that
    /// accepted it. Every accepted connection has `TCP_NODELAY` set: Linux
    /// copies it from the listening socket, which saves a `setsockopt` per
    /// connection. Fails only if the listener's options, a thread or a
    /// runtime cannot be set up.
    pub fn start<F, Fut>(listener: std::net::TcpListener, count: usize, serve: F) -> io::Result<Workers>
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true)?;
        rustix::net::sockopt::set_tcp_nodelay(&listener, true)?;
        // listen(2) again on a listening socket only resizes its queue.
        rustix::net::listen(&listener, LISTEN_BACKLOG)?;
        let serve = Arc::new(serve);
        let (stop_accepting, stop_rx) = watch::channel(false);
        let (finish, finish_rx) = watch::channel(false);
        let count = count.max(1);
        let (closed_tx, closed) = mpsc::channel(count);
        let mut workers = Workers { threads: Vec::with_capacity(count), stop_accepting, closed, finish };
        for index in 0..count {
            // A copy of the same listening socket: every worker's event loop watches it.
            let listener = listener.try_clone()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let serve = Arc::clone(&serve);
            let stop = stop_rx.clone();
            let finish = finish_rx.clone();
            let closed = closed_tx.clone();
            let thread = std::thread::Builder::new().name(format!("proxyd-worker-{index}")).spawn(move || {
                runtime.block_on(run(listener, serve, stop, closed, finish));
            })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Stops accepting: returns once every worker has closed its copy of the
    /// listening socket (so new connections are refused by the kernel) and
    /// dropped `serve`. Connections already accepted go on.
    pub async fn stop_accepting(&mut self) {
        let _ = self.stop_accepting.send(true);
        for _ in 0..self.threads.len() {
            if self.closed.recv().await.is_none() {
                break;
            }
        }
    }

    /// Ends the workers: whatever connections are left are dropped (closed),
    /// then the threads are joined.
    pub fn finish(mut self) {
        self.signal_end();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Workers {
    /// Tells every worker to stop accepting and to drop what is left.
    fn signal_end(&self) {
        let _ = self.stop_accepting.send(true);
        let _ = self.finish.send(true);
    }
}

impl Drop for Workers {
    /// When the serving future is dropped early, the threads still exit.
    fn drop(&mut self) {
        self.signal_end();
    }
}

/// One worker's life: accept until told to stop, close the listener, then
/// keep driving the connections it owns until the drain is over.
async fn run<F, Fut>(
    listener: std::net::TcpListener,
    serve: Arc<F>,
    mut stop: watch::Receiver<bool>,
    closed: mpsc::Sender<()>,
    mut finish: watch::Receiver<bool>,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Ends with the runtime, when this worker's thread does.
    tokio::spawn(anchor_timers());
    match TcpListener::from_std(listener) {
        Ok(listener) => accept(&listener, serve.as_ref(), &mut stop).await,
        Err(error) => tracing::error!(%error, "a worker cannot watch the listener; it serves nothing"),
    }
    // The listener copy is closed; `serve` (and what it holds) goes too, so the drain can see the end.
    drop(serve);
    drop(closed);
    let _ = finish.wait_for(|finished| *finished).await;
}

/// Keeps one timer at most [`TIMER_ANCHOR`] ahead in this worker's timer
/// wheel, for as long as the worker runs.
///
/// Every connection arms deadlines (header, DNS, connect: seconds away).
/// When tokio's timer wheel gets a deadline earlier than the wake-up it last
/// planned, or plans none at all, it unparks its own driver: an `eventfd`
/// write and one more pass through `epoll_wait`, even on the runtime's own
/// thread. A worker whose few connections have ended plans none, so at
/// light load that was almost one extra `write(2)` and loop turn per tunnel
/// (2,942 writes a second at 3,000 tunnels/s in a `perf` trace of the
/// open-loop benchmark, all from the header and connect timeouts). With this
/// timer always nearer than those deadlines, arming one never wakes anything.
async fn anchor_timers() {
    loop {
        tokio::time::sleep(TIMER_ANCHOR).await;
    }
}

async fn accept<F, Fut>(listener: &TcpListener, serve: &F, stop: &mut watch::Receiver<bool>)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    tokio::spawn(serve(stream, peer));
                }
                Err(error) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every worker serves connections, on its own thread, and a connection
    /// stays on the thread that accepted it.
    #[tokio::test]
    async fn connections_are_spread_over_the_workers_and_stay_on_theirs() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
        let record = Arc::clone(&seen);
        let mut workers = Workers::start(listener, 2, move |mut stream: TcpStream, _peer| {
            let record = Arc::clone(&record);
            async move {
                let before = std::thread::current().name().unwrap_or_default().to_owned();
                assert!(stream.nodelay().unwrap(), "TCP_NODELAY comes from the listener");
                let mut byte = [0u8; 1];
                if stream.read_exact(&mut byte).await.is_ok() {
                    // Still the accepting thread after waiting for the client.
                    assert_eq!(std::thread::current().name().unwrap_or_default(), before);
                    record.lock().unwrap().insert(before);
                    let _ = stream.write_all(&byte).await;
                }
            }
        })
        .unwrap();
        // Clients arrive in overlapping waves until both workers have served some.
        for _ in 0..200 {
            let mut clients = Vec::new();
            for _ in 0..8 {
                clients.push(tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await.unwrap();
                    stream.write_all(b"x").await.unwrap();
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await.unwrap();
                }));
            }
            for client in clients {
                client.await.unwrap();
            }
            if seen.lock().unwrap().len() == 2 {
                break;
            }
        }
        assert_eq!(*seen.lock().unwrap(), HashSet::from(["proxyd-worker-0".to_owned(), "proxyd-worker-1".to_owned()]));
        workers.stop_accepting().await;
        workers.finish();
    }

    /// After `stop_accepting` the port refuses; an accepted connection lives
    /// on until `finish`, which closes it.
    #[tokio::test]
    async fn stopping_closes_the_listener_and_finishing_ends_open_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, mut accepted) = mpsc::unbounded_channel::<()>();
        let mut workers = Workers::start(listener, 2, move |mut stream: TcpStream, _peer| {
            let accepted_tx = accepted_tx.clone();
            async move {
                let _ = accepted_tx.send(());
                // Holds the connection open until the runtime drops this task.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            }
        })
        .unwrap();
        let mut open = TcpStream::connect(addr).await.unwrap();
        accepted.recv().await.unwrap();
        workers.stop_accepting().await;
        let refused = TcpStream::connect(addr).await;
        assert!(refused.is_err(), "the listener is closed once stop_accepting returns");
        // The accepted connection is still open: nothing arrives yet.
        let mut byte = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(100), open.read(&mut byte)).await;
        assert!(waited.is_err(), "an accepted connection outlives the listener: {waited:?}");
        tokio::task::spawn_blocking(move || workers.finish()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut byte)).await.expect("closed by finish");
        assert!(matches!(read, Ok(0) | Err(_)), "finish closes what is left: {read:?}");
    }

    /// `write(2)` calls made by the calling thread so far (Linux task I/O accounting).
    fn writes_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines().find_map(|l| l.strip_prefix("syscw:")).unwrap().trim().parse().unwrap()
    }

    /// How many `write(2)`s arming `n` fresh 10-second deadlines costs a
    /// worker's runtime whose timer wheel is otherwise empty, with the
    /// anchor timer or without.
    fn writes_arming_deadlines(anchored: bool, n: u64) -> u64 {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            if anchored {
                tokio::spawn(anchor_timers());
            }
            // Each turn parks the driver (at no time cost), which plans its next wake-up.
            tokio::task::yield_now().await;
            let before = writes_by_this_thread();
            for _ in 0..n {
                let mut deadline = Box::pin(tokio::time::sleep(Duration::from_secs(10)));
                // Armed by its first poll, as a connection's header or connect timeout is.
                std::future::poll_fn(|cx| {
                    assert!(deadline.as_mut().poll(cx).is_pending());
                    std::task::Poll::Ready(())
                })
                .await;
                drop(deadline);
                tokio::task::yield_now().await;
            }
            writes_by_this_thread() - before
        })
    }

    /// The anchor is what stops per-connection deadlines from waking the
    /// worker's own driver: without it each one costs an `eventfd` write
    /// (the control run shows this tokio still does that, so the anchor is
    /// still needed), with it none does.
    #[test]
    fn arming_a_connection_deadline_does_not_wake_the_worker() {
        let n = 200;
        let unanchored = writes_arming_deadlines(false, n);
        assert!(
            unanchored >= n,
            "control: without the anchor each deadline wakes the driver ({unanchored} writes for {n})"
        );
        let anchored = writes_arming_deadlines(true, n);
        // The anchor's own re-arming writes once or twice a second: a slow machine may see a few.
        assert!(anchored <= 10, "with the anchor, arming {n} deadlines wrote {anchored} times");
        eprintln!("writes arming {n} deadlines: {unanchored} without the anchor, {anchored} with it");
    }
}
