//! `openloop`: latency at a given offered load, queueing included, and the
//! closed-loop setup rate under a second, independent load generator.
//!
//! **Open loop.** Requests are started on a fixed schedule (request `i` at
//! `start + i / rate`), whether or not earlier ones have finished, and each
//! one's latency counts from its *scheduled* start, as wrk2 does: a proxy
//! that falls behind is charged for the queue it builds (no coordinated
//! omission). The unit is the setup part's: connect, CONNECT (through a
//! proxy), a 64-byte echo checked byte for byte, close. The schedule is
//! shared by [`GENERATOR_THREADS`] threads (request `i` on thread `i` mod
//! their number), each with a current-thread runtime of its own that starts
//! each of its requests as a task when it is due, so concurrency is not
//! capped by a client count; only [`MAX_IN_FLIGHT`] requests may be open at
//! once (the descriptors), and a request due while that many are open is
//! not started and counted as `unstarted`. The generator is checked, not
//! trusted: each request's *start lag* (from its scheduled time to the
//! moment its task first runs) is recorded, and the table shows its p99 and
//! how many requests started more than 1 ms late, with the generator's CPU.
//!
//! **Coalescing.** The generator's threads, and the echo servers of this
//! part (a pool of their own, see [`EchoPool`]), do not wake for each socket
//! event: each sleeps until its next start or one tick (100 µs, see
//! [`coalesce`]), whichever comes first, then takes every event that came
//! meanwhile at once, as a network card coalesces interrupts. On these
//! 2-core VMs waking is what an unsaturated machine pays most for: woken
//! per event, generator and echo servers took 62% of the machine at 6,700
//! requests a second straight to the echo servers (185 µs a request, where
//! the closed loop spends about 70), and at 75% of the relay's maximum
//! they left the relay itself too little to keep up; coalesced, 41%. What
//! it costs: every latency includes up to a tick (plus timer slack) for
//! each step the generator or an echo server sees (connect, the echo, and
//! through a `CONNECT` proxy the `200` too: one step more than direct or
//! the relay, so a `CONNECT` proxy's added latency carries up to one tick
//! the relay's does not). `OPENLOOP_TICK_US` changes the tick. The
//! kernel's default timer slack (50 µs) stays: sleeping to the microsecond
//! (`PR_SET_TIMERSLACK` 1 µs) took 3 to 14 points more of the machine at
//! 25 to 75% of the relay's maximum, for 0.1 ms off direct's p50.
//!
//! The offered rates are 25%, 50% and 75% of the HAProxy relay's
//! closed-loop maximum measured at the start of this part (or of direct's
//! when HAProxy is not installed), or the absolute rates in
//! `OPENLOOP_RATES=1500,3000,4500`. Every rate is run against direct and
//! every peer (proxyd, the old build, the relay, Squid) in the same rounds,
//! rotating which goes first, each on a fresh process; the added latency is
//! each round's quantile minus direct's in the same round, and ratios are
//! medians of per-round ratios, like the rest of the tool. `behind` counts
//! the rounds that fell behind (requests left unstarted, or less than 99%
//! of the offered rate achieved): near the machine's edge one stall decides
//! whether a round tips over, and one such round moves a median of five.
//!
//! **Second load generator.** The closed-loop calibration runs under two
//! generators in alternating rounds: this tool's own tokio clients and
//! `load/go/loadgen.go`, a Go standard-library client built at run time
//! into `target/` (skipped when `go` is not installed). Both report rate,
//! the peer's CPU per tunnel and their own CPU per tunnel, so the summary
//! shows setup rate and CPU against the relay under each: the less
//! favourable one is what an outside measurement would see. `HAPROXY_NBTHREAD`
//! and `HAPROXY_SPLICE=0` change the relay (see `load/peers.rs`) and
//! `OPENLOOP_GO_CLIENTS` the Go generator's client count, to find which of
//! them moves the figures. `OPENLOOP_SECONDS` sets the phases' length and
//! `OPENLOOP_CLOSED=0` (with `OPENLOOP_RATES`) skips the closed loop, to
//! profile one peer at one rate.
//!
//! Smokescreen is measured when `SMOKESCREEN_BIN` names a binary; it is not
//! installed here, so it gets a `skipped:` line.
//!
//! Like the rest of the tool it only talks to 127.0.0.0/8, every request is
//! bounded by [`OP_TIMEOUT`], and it never panics on a peer's misbehaviour:
//! failures are counted as errors and reported.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{
    CLIENTS, CpuMeter, ECHO_BYTES, ECHO_TARGETS, Latencies, Noise, OP_TIMEOUT, PeerSpec, Result, Route, Running,
    Targets, echo_listener, echo_once, median, paired_ratio, peers, serve_echo, setup_phase,
};

/// Open requests allowed at once (each holds two descriptors here and two
/// in the proxy; `ulimit -n` is 20,000 in the bench environment).
const MAX_IN_FLIGHT: usize = 6_000;
/// A start later than this after its scheduled time counts as late.
const LATE: Duration = Duration::from_millis(1);
/// Fractions of the relay's closed-loop maximum, and the goals' names for them.
const FRACTIONS: [f64; 3] = [0.25, 0.50, 0.75];

/// How much to do.
#[derive(Debug, Clone)]
struct OpenPlan {
    full: bool,
    rounds: usize,
    /// One open-loop phase (and one closed-loop calibration phase).
    phase: Duration,
    /// Absolute rates from `OPENLOOP_RATES`, or `None`: fractions of the relay's maximum.
    rates: Option<Vec<f64>>,
}

/// One open-loop phase's outcome.
#[derive(Debug, Default)]
struct OpenPhase {
    offered: f64,
    scheduled: usize,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    unstarted: usize,
    /// From the first scheduled start to the last completion.
    elapsed: Duration,
    /// The schedule's length.
    length: Duration,
    /// Successful requests that ended before the schedule did, for the achieved rate.
    ok_in_window: usize,
    /// Requests still open when the schedule ended.
    open_at_end: usize,
    /// From each successful request's scheduled start to its end, sorted.
    latencies: Latencies,
    /// From each started request's scheduled start to its task's first poll, sorted.
    start_lag: Latencies,
    late: usize,
    peak_in_flight: usize,
    /// The peer's CPU per successful tunnel, µs (`None` for direct).
    cpu_us: Option<f64>,
    /// This process's (generator, echo servers) cores during the phase.
    generator_cores: Option<f64>,
    /// The machine's count of connections dropped because a listen queue
    /// was full (TcpExt ListenOverflows) during the phase: a SYN or ACK
    /// dropped there costs its client a retransmission, 1 s or more.
    listen_overflows: Option<u64>,
}

impl OpenPhase {
    /// Requests a second that ended successfully while the schedule ran (as
    /// wrk2 counts): a peer that keeps up ends nearly all it is offered
    /// (all but those open at the end), one that falls behind only what it
    /// can, while its queue grows; what it ends after the schedule is over
    /// does not count.
    fn achieved(&self) -> f64 {
        self.ok_in_window as f64 / self.length.as_secs_f64().max(1e-9)
    }

    /// The round fell behind its schedule: requests were left unstarted or
    /// less than 99% of the offered rate finished within the phase. Near a
    /// machine's edge one stall decides this, and one round that tips over
    /// moves a median of five: the summary counts such rounds per peer.
    fn fell_behind(&self) -> bool {
        self.unstarted > 0 || self.achieved() < 0.99 * self.offered
    }

    fn q(&self, q: f64) -> f64 {
        self.latencies.quantile(q).as_secs_f64() * 1e3
    }

    fn max_ms(&self) -> f64 {
        self.latencies.0.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "{:.0}/s of {:.0}/s, p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, errors {}, unstarted {}, \
             start lag p99 {:.2} ms, late {}, peak open {}, open at the end {}, listen overflows {}",
            self.achieved(),
            self.offered,
            self.q(0.5),
            self.q(0.99),
            self.q(0.999),
            self.max_ms(),
            self.errors,
            self.unstarted,
            self.start_lag.quantile(0.99).as_secs_f64() * 1e3,
            self.late,
            self.peak_in_flight,
            self.open_at_end,
            self.listen_overflows.map_or("?".to_owned(), |n| n.to_string())
        );
        if let Some(error) = &self.first_error {
            text.push_str(&format!(" (first error: {error})"));
        }
        text
    }
}

/// What one request came to.
struct Outcome {
    lag: Duration,
    latency: Duration,
    /// When it ended, from the schedule's start.
    done: Duration,
    result: std::result::Result<(), String>,
}

/// Generator threads: one per core, each with its share of the schedule.
const GENERATOR_THREADS: usize = 2;

/// How long the generator's threads and this part's echo servers sleep at
/// most before they look at their sockets again (`OPENLOOP_TICK_US`,
/// default 100 µs; the kernel's timer slack adds up to 50 µs). See
/// [`coalesce`].
fn tick() -> Duration {
    let micros = std::env::var("OPENLOOP_TICK_US").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(100);
    Duration::from_micros(micros.clamp(10, 10_000))
}

/// One look of a coalescing thread: run the tasks the last poll of this
/// thread's (current-thread) runtime woke, then sleep until `until` or one
/// `tick` from now, whichever is first, then poll the runtime's sockets and
/// timers without blocking (the runtime polls without blocking while a
/// yielded task waits, and the thread's only other task, this loop, is
/// asleep meanwhile). So the thread wakes at most once per tick however
/// many socket events come, rather than once per event, as a network card
/// coalesces interrupts: an event waits up to a tick before it is seen.
async fn coalesce(tick: Duration, until: Option<Instant>) {
    tokio::task::yield_now().await;
    let now = Instant::now();
    let wake = until.map_or(now + tick, |at| at.min(now + tick));
    if wake > now {
        std::thread::sleep(wake - now);
    }
    tokio::task::yield_now().await;
}

/// This part's echo servers, on [`GENERATOR_THREADS`] threads of their own
/// that coalesce (see [`coalesce`]) while an open-loop phase runs, rather
/// than on the tool's runtime, whose event-driven workers wake for every
/// accept, read and end of stream. Between phases they wait for events as
/// any runtime does, so they take nothing from the closed-loop calibration
/// (ticking, two threads would wake 13,000 times a second for nothing).
/// They serve the same echo as the other parts' (see [`super::serve_echo`]).
struct EchoPool {
    threads: Vec<(tokio::runtime::Handle, std::thread::JoinHandle<()>)>,
    mode: watch::Sender<Mode>,
}

/// What an [`EchoPool`]'s threads do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Wait for events (between phases).
    Idle,
    /// Look at their sockets once per tick (during a phase).
    Coalesce,
    Stop,
}

impl EchoPool {
    fn start(tick: Duration) -> Result<EchoPool> {
        let (mode, _) = watch::channel(Mode::Idle);
        let mut pool = EchoPool { threads: Vec::new(), mode };
        for t in 0..GENERATOR_THREADS {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let mut mode = pool.mode.subscribe();
            let thread = std::thread::Builder::new().name(format!("openloop-echo-{t}")).spawn(move || {
                runtime.block_on(async {
                    loop {
                        let now = *mode.borrow_and_update();
                        match now {
                            Mode::Stop => break,
                            Mode::Coalesce => coalesce(tick, None).await,
                            Mode::Idle => {
                                if mode.changed().await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            })?;
            pool.threads.push((handle, thread));
        }
        Ok(pool)
    }

    /// An echo server on `ip`, on thread `n` mod the pool's size.
    fn echo(&self, ip: IpAddr, n: usize) -> Result<SocketAddr> {
        let (handle, _) = &self.threads[n % self.threads.len()];
        let listener = {
            let _runtime = handle.enter();
            echo_listener(ip)?
        };
        let addr = listener.local_addr()?;
        handle.spawn(serve_echo(listener));
        Ok(addr)
    }

    /// Coalesces until the guard is dropped.
    fn coalescing(&self) -> Coalescing {
        self.mode.send_replace(Mode::Coalesce);
        Coalescing(self.mode.clone())
    }
}

/// While it lives, the pool coalesces (see [`EchoPool::coalescing`]).
struct Coalescing(watch::Sender<Mode>);

impl Drop for Coalescing {
    fn drop(&mut self) {
        self.0.send_replace(Mode::Idle);
    }
}

impl Drop for EchoPool {
    /// Stops the threads; their runtimes drop the servers and connections.
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Stop);
        for (_, thread) in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The schedule all generator threads share.
#[derive(Clone)]
struct Schedule {
    routes: Arc<[Route]>,
    start: Instant,
    interval_ns: f64,
    total: usize,
    tick: Duration,
    /// Requests open now, over all threads.
    open: Arc<AtomicUsize>,
}

impl Schedule {
    fn at(&self, i: usize) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.interval_ns) as u64)
    }
}

/// One generator thread's outcomes.
struct Share {
    outcomes: Vec<Outcome>,
    unstarted: usize,
    peak: usize,
}

/// Runs `rate` requests a second for `length` through `routes` (request `i`
/// through `routes[i % len]`, from source address 127.0.1.(i mod 64 + 1)),
/// then waits for every started request to end (each is bounded by
/// [`OP_TIMEOUT`]).
async fn open_phase(routes: &[Route], rate: f64, length: Duration) -> Result<OpenPhase> {
    if routes.is_empty() || !(rate.is_finite() && rate > 0.0) {
        return Err("open loop needs a route and a positive rate".into());
    }
    let total = (rate * length.as_secs_f64()).round().max(1.0) as usize;
    let schedule = Schedule {
        routes: routes.into(),
        // A little ahead, so the first start is on time.
        start: Instant::now() + Duration::from_millis(20),
        interval_ns: 1e9 / rate,
        total,
        tick: tick(),
        open: Arc::new(AtomicUsize::new(0)),
    };
    let threads = (0..GENERATOR_THREADS)
        .map(|t| {
            let schedule = schedule.clone();
            std::thread::Builder::new().name(format!("openloop-{t}")).spawn(move || generate(t, &schedule))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let shares = tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()).await?;
    let mut phase = OpenPhase { offered: rate, scheduled: total, length, ..OpenPhase::default() };
    phase.elapsed = schedule.start.elapsed();
    let window = Duration::ZERO..=length;
    let mut latencies = Vec::with_capacity(total);
    let mut lags = Vec::with_capacity(total);
    for share in shares {
        let share = share.map_err(|_| "a generator thread panicked")??;
        phase.unstarted += share.unstarted;
        phase.peak_in_flight = phase.peak_in_flight.max(share.peak);
        for outcome in share.outcomes {
            lags.push(outcome.lag);
            phase.late += usize::from(outcome.lag > LATE);
            phase.open_at_end += usize::from(outcome.done > length);
            match outcome.result {
                Ok(()) => {
                    latencies.push(outcome.latency);
                    phase.ok_in_window += usize::from(window.contains(&outcome.done));
                }
                Err(error) => {
                    phase.errors += 1;
                    phase.first_error.get_or_insert(error);
                }
            }
        }
    }
    phase.ok = latencies.len();
    latencies.sort_unstable();
    lags.sort_unstable();
    phase.latencies = Latencies(latencies);
    phase.start_lag = Latencies(lags);
    Ok(phase)
}

/// Generator thread `t`: requests `t`, `t + GENERATOR_THREADS`, ... on a
/// runtime of its own, so a request's steps never wake another thread.
/// Between looks it sleeps until the next start or one [`tick`], whichever
/// comes first, and then takes every event that came meanwhile in one
/// non-blocking poll: at high rates it wakes once per tick rather than once
/// per socket event (what that costs the latencies: see "Coalescing" in
/// this module's doc).
fn generate(t: usize, schedule: &Schedule) -> std::io::Result<Share> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let outcomes = Arc::new(Mutex::new(Vec::with_capacity(schedule.total / GENERATOR_THREADS + 1)));
        let (mut next, mut started, mut unstarted, mut peak) = (t, 0usize, 0usize, 0usize);
        loop {
            let now = Instant::now();
            while next < schedule.total && schedule.at(next) <= now {
                let i = next;
                next += GENERATOR_THREADS;
                let open = schedule.open.fetch_add(1, Ordering::AcqRel) + 1;
                if open > MAX_IN_FLIGHT {
                    schedule.open.fetch_sub(1, Ordering::AcqRel);
                    unstarted += 1;
                    continue;
                }
                peak = peak.max(open);
                started += 1;
                tokio::spawn(request(i, schedule.clone(), Arc::clone(&outcomes)));
            }
            // Every request this thread started has pushed its outcome (a poisoned lock: give up waiting).
            let finished = outcomes.lock().map_or(started, |o| o.len());
            if next >= schedule.total && finished == started {
                break;
            }
            coalesce(schedule.tick, (next < schedule.total).then(|| schedule.at(next))).await;
        }
        let outcomes = std::mem::take(&mut *outcomes.lock().map_err(|_| std::io::Error::other("poisoned"))?);
        Ok(Share { outcomes, unstarted, peak })
    })
}

/// Request `i`: connect (+ CONNECT), echo, close, timed from its scheduled start.
async fn request(i: usize, schedule: Schedule, outcomes: Arc<Mutex<Vec<Outcome>>>) {
    let at = schedule.at(i);
    let lag = at.elapsed();
    let route = schedule.routes[i % schedule.routes.len()];
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i % CLIENTS) as u8 + 1));
    let mut message = [0u8; ECHO_BYTES];
    message[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let one = async {
        let mut stream = route.open_from(Some(source)).await?;
        echo_once(&mut stream, &message).await
    };
    let result = match tokio::time::timeout(OP_TIMEOUT, one).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("{error}")),
        Err(_) => Err("timed out".to_owned()),
    };
    let latency = at.elapsed();
    let done = schedule.start.elapsed();
    schedule.open.fetch_sub(1, Ordering::AcqRel);
    if let Ok(mut outcomes) = outcomes.lock() {
        outcomes.push(Outcome { lag, latency, done, result });
    }
}

/// The machine's TcpExt ListenOverflows counter (any listener: other jobs' too).
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let index = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// One closed-loop calibration phase: rate, the peer's and the generator's CPU per tunnel (µs).
#[derive(Debug, Clone, Copy, Default)]
struct Closed {
    rate: f64,
    peer_cpu_us: Option<f64>,
    load_cpu_us: Option<f64>,
    p99_ms: f64,
}

/// The Go generator, built into `target/` (or why not).
fn build_go_loadgen() -> std::result::Result<PathBuf, String> {
    let go = peers::find_program("go").ok_or("go is not installed (`apt-get install golang-go`)")?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/load-… -> target/<profile>
    let dir = exe.parent().and_then(|d| d.parent()).ok_or("no target directory")?.to_path_buf();
    let binary = dir.join("loadgen-go");
    let source = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/load/go/loadgen.go"));
    let output = Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        // Offline, standard library only, caches inside target/.
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOPATH", dir.join("go-path"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("go build: {e}"))?;
    if !output.status.success() {
        return Err(format!("go build failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(binary)
}

/// Runs the Go generator closed loop over `routes` (all through one proxy, or all direct).
async fn go_phase(binary: &std::path::Path, routes: &[Route], length: Duration, pid: Option<u32>) -> Result<Closed> {
    let mut proxy = None;
    let mut targets = Vec::new();
    for route in routes {
        match *route {
            Route::Direct(target) | Route::Relay(target) => targets.push(target),
            Route::Proxy { proxy: p, target } => {
                proxy = Some(p);
                targets.push(target);
            }
        }
    }
    let clients = std::env::var("OPENLOOP_GO_CLIENTS").ok().and_then(|n| n.parse::<usize>().ok()).unwrap_or(CLIENTS);
    let mut command = Command::new(binary);
    command
        .arg("-targets")
        .arg(targets.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(","))
        .arg("-clients")
        .arg(clients.to_string())
        .arg("-duration")
        .arg(format!("{}ms", length.as_millis()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(proxy) = proxy {
        command.arg("-proxy").arg(proxy.to_string());
    }
    let cpu = CpuMeter::start(pid);
    // Every operation in it is bounded by a 10 s deadline, so it ends.
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let cpu = cpu.stop();
    if !output.status.success() {
        return Err(format!("go loadgen failed ({})", output.status).into());
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(line.trim())?;
    let ops = value["ops"].as_u64().ok_or("go loadgen: no ops")? as f64;
    let errors = value["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        return Err(format!("go loadgen: {errors} errors, first: {}", value["first_error"]).into());
    }
    let elapsed = value["elapsed_s"].as_f64().ok_or("go loadgen: no elapsed_s")?;
    let go_cpu = value["cpu_s"].as_f64().unwrap_or(f64::NAN);
    // The generator's CPU is the Go process's plus this one's (the echo servers), as for the Rust clients.
    let load = cpu.load_per(ops, 1e6).map(|echo| echo + go_cpu * 1e6 / ops.max(1.0));
    Ok(Closed {
        rate: ops / elapsed.max(1e-9),
        peer_cpu_us: cpu.peer_per(ops, 1e6),
        load_cpu_us: load,
        p99_ms: value["p99_us"].as_f64().unwrap_or(0.0) / 1e3,
    })
}

/// One column of this part: direct or a peer.
struct OpenColumn {
    name: &'static str,
    /// To the tool's echo servers, for the closed-loop calibration.
    closed_routes: Vec<Route>,
    /// To this part's coalescing echo servers, for the open loop.
    open_routes: Vec<Route>,
    pid: Option<u32>,
    /// Keeps the peer running.
    _running: Option<Running>,
    /// Closed-loop phases per generator (rust, go), one per round.
    closed: [Vec<Closed>; 2],
    /// Open-loop phases per rate, one per round.
    open: Vec<Vec<OpenPhase>>,
}

const GENERATORS: [&str; 2] = ["rust", "go"];

/// Runs this part and returns the summary lines.
pub async fn openloop(
    full: bool,
    rounds: usize,
    phase: Duration,
    specs: &[PeerSpec],
    targets: &Targets,
    direct_routes: &[Route],
    noise: &mut Noise,
) -> Result<Vec<String>> {
    // The open loop's echo servers (the same addresses, new ports) coalesce
    // (see `EchoPool`); the closed-loop calibration meets the tool's
    // event-driven ones, as the setup part does, so "the relay's maximum"
    // means the same here as there. Every peer may reach both sets.
    let pool = EchoPool::start(tick())?;
    let (mut open_echo, mut open_direct) = (Vec::new(), Vec::new());
    for n in 1..=ECHO_TARGETS {
        open_echo.push(pool.echo(IpAddr::V4(Ipv4Addr::new(127, 0, 2, n)), usize::from(n))?);
        open_direct.push(pool.echo(IpAddr::V4(Ipv4Addr::new(127, 0, 3, n)), usize::from(n))?);
    }
    let closed_targets = targets.echo.len();
    let targets = &Targets {
        echo: targets.echo.iter().copied().chain(open_echo).collect(),
        sink: targets.sink,
        policy: targets.policy.clone(),
    };
    let rates = match std::env::var("OPENLOOP_RATES") {
        Ok(list) => {
            let rates: Vec<f64> = list.split(',').filter_map(|r| r.trim().parse::<f64>().ok()).collect();
            if rates.is_empty() || rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
                return Err(format!("OPENLOOP_RATES={list:?}: want positive rates, e.g. 1500,3000").into());
            }
            Some(rates)
        }
        Err(_) => None,
    };
    // `OPENLOOP_SECONDS=30` lengthens every phase (e.g. to profile one peer meanwhile).
    let phase = match std::env::var("OPENLOOP_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()) {
        Some(seconds) if seconds > 0.0 && seconds.is_finite() => Duration::from_secs_f64(seconds),
        _ => phase,
    };
    // `OPENLOOP_CLOSED=0` skips the closed-loop rounds when the rates are given.
    let closed_rounds =
        if rates.is_some() && std::env::var("OPENLOOP_CLOSED").is_ok_and(|v| v == "0") { 0 } else { rounds };
    let plan = OpenPlan { full, rounds, phase, rates };
    let go = match build_go_loadgen() {
        Ok(binary) => Some(binary),
        Err(why) => {
            println!("skipped: openloop go load generator ({why})");
            None
        }
    };
    match std::env::var_os("SMOKESCREEN_BIN") {
        Some(_) => println!("skipped: smokescreen (SMOKESCREEN_BIN is set, but this tool does not drive it yet)"),
        None => println!("skipped: smokescreen (not installed; not measured here)"),
    }

    let mut columns = vec![OpenColumn {
        name: "direct",
        closed_routes: direct_routes.to_vec(),
        open_routes: open_direct.into_iter().map(Route::Direct).collect(),
        pid: None,
        _running: None,
        closed: [Vec::new(), Vec::new()],
        open: Vec::new(),
    }];
    for spec in specs {
        match spec.start(targets, false) {
            Ok(peer) => columns.push(OpenColumn {
                name: peer.name,
                closed_routes: peer.echo_routes[..closed_targets].to_vec(),
                open_routes: peer.echo_routes[closed_targets..].to_vec(),
                pid: Some(peer.pid),
                _running: Some(peer.running),
                closed: [Vec::new(), Vec::new()],
                open: Vec::new(),
            }),
            Err(error) if matches!(spec, PeerSpec::Proxyd { .. }) => return Err(error),
            Err(error) => println!("skipped: openloop {} (did not start: {error})", spec.name()),
        }
    }
    let relay = columns.iter().position(|c| c.name == "haproxy");

    // Closed-loop calibration, under both generators, direct and every peer, rotating.
    for round in 1..=closed_rounds {
        for k in 0..columns.len() {
            let count = columns.len();
            let column = &mut columns[(k + round - 1) % count];
            for (g, generator) in GENERATORS.iter().enumerate() {
                let closed = if g == 0 {
                    let cpu = CpuMeter::start(column.pid);
                    let phase = setup_phase(&column.closed_routes, plan.phase).await?;
                    let cpu = cpu.stop();
                    noise.record(&cpu);
                    Closed {
                        rate: phase.rate(),
                        peer_cpu_us: cpu.peer_per(phase.ops as f64, 1e6),
                        load_cpu_us: cpu.load_per(phase.ops as f64, 1e6),
                        p99_ms: phase.latencies.quantile(0.99).as_secs_f64() * 1e3,
                    }
                } else if let Some(binary) = &go {
                    go_phase(binary, &column.closed_routes, plan.phase, column.pid).await?
                } else {
                    continue;
                };
                println!(
                    "openloop closed round {round}: {:<10} {generator:<4} {:.0}/s, p99 {:.2} ms, \
                     peer {} µs/tun, load {} µs/tun",
                    column.name,
                    closed.rate,
                    closed.p99_ms,
                    closed.peer_cpu_us.map_or("-".to_owned(), |v| format!("{v:.0}")),
                    closed.load_cpu_us.map_or("-".to_owned(), |v| format!("{v:.0}")),
                );
                column.closed[g].push(closed);
            }
        }
    }
    let base = relay.unwrap_or(0);
    let base_max = columns[base].closed[0].iter().map(|c| c.rate).fold(0.0, f64::max);
    let (rates, labels): (Vec<f64>, Vec<String>) = match &plan.rates {
        Some(rates) => (rates.clone(), rates.iter().map(|r| format!("{r:.0}/s")).collect()),
        None => FRACTIONS
            .iter()
            .map(|f| {
                // The smoke test only checks the paths: a few hundred requests.
                let rate = if plan.full { base_max * f } else { (base_max * f).min(400.0) };
                (rate, format!("{rate:.0}/s ({:.0}% of {}'s {base_max:.0}/s)", f * 100.0, columns[base].name))
            })
            .unzip(),
    };

    // Open loop: each rate, each round, direct and every peer, rotating.
    for column in &mut columns {
        column.open = rates.iter().map(|_| Vec::new()).collect();
    }
    for round in 1..=plan.rounds {
        for (r, rate) in rates.iter().enumerate() {
            for k in 0..columns.len() {
                let count = columns.len();
                let column = &mut columns[(k + round - 1) % count];
                let cpu = CpuMeter::start(column.pid);
                let overflows = listen_overflows();
                let coalescing = pool.coalescing();
                let mut phase = open_phase(&column.open_routes, *rate, plan.phase).await?;
                drop(coalescing);
                phase.listen_overflows = overflows.zip(listen_overflows()).map(|(a, b)| b.saturating_sub(a));
                let cpu = cpu.stop();
                noise.record(&cpu);
                phase.cpu_us = cpu.peer_per(phase.ok as f64, 1e6);
                phase.generator_cores = cpu.load_seconds.map(|s| s / cpu.seconds);
                println!("openloop round {round}: {:<10} {} ({cpu})", column.name, phase.describe());
                if !plan.full && (phase.errors > 0 || phase.unstarted > 0 || phase.ok != phase.scheduled) {
                    return Err(format!("openloop smoke via {}: {}", column.name, phase.describe()).into());
                }
                column.open[r].push(phase);
            }
        }
    }
    Ok(summary(&plan, &columns, relay, &rates, &labels))
}

/// `k/n`: how many of a peer's `n` rounds at one rate fell behind.
fn behind(phases: &[OpenPhase]) -> String {
    format!("{}/{}", phases.iter().filter(|p| p.fell_behind()).count(), phases.len())
}

/// Medians over rounds of per-round figures.
fn med(phases: &[OpenPhase], f: impl Fn(&OpenPhase) -> f64) -> f64 {
    median(phases.iter().map(f))
}

/// Per-round `peer - direct` of a latency quantile, ms.
fn added(peer: &[OpenPhase], direct: &[OpenPhase], q: f64) -> Vec<f64> {
    peer.iter().zip(direct).map(|(p, d)| p.q(q) - d.q(q)).collect()
}

/// A relay's added latency below this (ms) counts as this much in ratios:
/// a ratio to a relay adding nothing measurable (or, by noise, less than
/// nothing) would be meaningless. 1 ms is the 25% goal's bound, so at 50%
/// a proxy adding no more than 1.5 ms passes when the relay adds nothing.
const ADDED_FLOOR_MS: f64 = 1.0;

/// What one rate leaves a proxy on this machine: the cores the generator
/// alone used at that rate (the direct phases: generator and echo servers,
/// no proxy) are taken from the machine's, and the rest, spread over the
/// offered tunnels, is about the most CPU a tunnel may cost a proxy that
/// keeps up. Each proxy's median CPU per tunnel is shown as a share of it.
/// It is a guide, not a hard bound: the generator's own cost varies from
/// round to round (in one run the relay, at 115% of it, kept up in 3 of 5 rounds), and
/// with a proxy in between it does a little more (a `CONNECT` proxy's
/// `200` is one more read). Near or over 100%, whether a stall is drained
/// is decided by the machine as much as by the proxy's code.
fn budget_line(columns: &[OpenColumn], r: usize, rate: Option<f64>) -> Option<String> {
    let rate = rate.filter(|r| *r > 0.0)?;
    let cores = std::thread::available_parallelism().ok()?.get() as f64;
    let generator = med(&columns.first()?.open[r], |p| p.generator_cores.unwrap_or(f64::NAN));
    if !generator.is_finite() {
        return None;
    }
    let budget_us = (cores - generator) / rate * 1e6;
    let shares: Vec<String> = columns
        .iter()
        .skip(1)
        .map(|column| {
            let used = med(&column.open[r], |p| p.cpu_us.unwrap_or(f64::NAN));
            format!("{} {used:.0} µs ({:.0}%)", column.name, used / budget_us * 100.0)
        })
        .collect();
    Some(format!(
        "  budget: ({cores:.0} cores - {generator:.2} for the generator alone) / {rate:.0}/s = {budget_us:.0} µs a tunnel; used: {}",
        shares.join(", ")
    ))
}

fn summary(
    plan: &OpenPlan,
    columns: &[OpenColumn],
    relay: Option<usize>,
    rates: &[f64],
    labels: &[String],
) -> Vec<String> {
    let mut lines = Vec::new();
    let shown = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "-".to_owned() };
    let verdict = |ok: bool| if ok { "OK" } else { "MISSED" };
    let relay_column = relay.and_then(|i| columns.get(i));
    let Some(direct) = columns.first() else { return lines };

    lines.push(format!(
        "closed loop ({CLIENTS} clients unless OPENLOOP_GO_CLIENTS; connect (+ CONNECT) + {ECHO_BYTES} B echo + close), \
         by load generator, medians of {} rounds:",
        plan.rounds
    ));
    lines.push(format!(
        "  {:<11} {:<4} {:>9} {:>9} {:>9} {:>11} {:>9} {:>12}",
        "", "gen", "tunnels/s", "x haproxy", "p99 ms", "CPU µs/tun", "x haproxy", "load µs/tun"
    ));
    for column in columns {
        for (g, generator) in GENERATORS.iter().enumerate() {
            let closed = &column.closed[g];
            if closed.is_empty() {
                continue;
            }
            let relay_closed = relay_column.map(|r| &r.closed[g]);
            let rate_x = relay_closed.map_or(f64::NAN, |r| {
                paired_ratio(closed.iter().map(|c| Some(c.rate)), r.iter().map(|c| Some(c.rate)))
            });
            let cpu_x = relay_closed.map_or(f64::NAN, |r| {
                paired_ratio(closed.iter().map(|c| c.peer_cpu_us), r.iter().map(|c| c.peer_cpu_us))
            });
            lines.push(format!(
                "  {:<11} {:<4} {:>9.0} {:>9} {:>9.2} {:>11} {:>9} {:>12.0}",
                column.name,
                generator,
                median(closed.iter().map(|c| c.rate)),
                shown(rate_x),
                median(closed.iter().map(|c| c.p99_ms)),
                shown(median(closed.iter().filter_map(|c| c.peer_cpu_us))),
                shown(cpu_x),
                median(closed.iter().filter_map(|c| c.load_cpu_us)),
            ));
        }
    }

    for (r, label) in labels.iter().enumerate() {
        lines.push(format!(
            "open loop at {label}, {} rounds of {:?}, latency from each request's scheduled start:",
            plan.rounds, plan.phase
        ));
        lines.push(format!(
            "  {:<11} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>9} {:>6} {:>9} {:>9} {:>10} {:>8} {:>8} {:>5} {:>6} {:>7}",
            "",
            "achieved",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9",
            "max ms",
            "errors",
            "unstarted",
            "behind",
            "+p99 ms",
            "x relay+",
            "CPU µs/tun",
            "x haproxy",
            "lag p99",
            "late",
            "gen cores",
            "lst ovf",
        ));
        let direct_phases = &direct.open[r];
        let relay_phases = relay_column.map(|c| &c.open[r]);
        for column in columns {
            let phases = &column.open[r];
            let added_p99 = added(phases, direct_phases, 0.99);
            let relay_added = relay_phases.map(|relay| added(relay, direct_phases, 0.99));
            let added_x = relay_added
                .as_ref()
                .map_or(f64::NAN, |relay| median(added_p99.iter().zip(relay).map(|(p, r)| p / r.max(ADDED_FLOOR_MS))));
            let cpu_x = relay_phases.map_or(f64::NAN, |relay| {
                paired_ratio(phases.iter().map(|p| p.cpu_us), relay.iter().map(|p| p.cpu_us))
            });
            let is_direct = std::ptr::eq(column, direct);
            lines.push(format!(
                "  {:<11} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>6} {:>9} {:>6} {:>9} {:>9} {:>10} {:>8} {:>8.2} {:>5} {:>6.2} {:>7}",
                column.name,
                med(phases, OpenPhase::achieved),
                med(phases, |p| p.q(0.5)),
                med(phases, |p| p.q(0.9)),
                med(phases, |p| p.q(0.99)),
                med(phases, |p| p.q(0.999)),
                med(phases, OpenPhase::max_ms),
                phases.iter().map(|p| p.errors).sum::<usize>(),
                phases.iter().map(|p| p.unstarted).sum::<usize>(),
                behind(phases),
                if is_direct { "-".to_owned() } else { shown(median(added_p99.iter().copied())) },
                if is_direct || relay.is_none() { "-".to_owned() } else { shown(added_x) },
                shown(med(phases, |p| p.cpu_us.unwrap_or(f64::NAN))),
                if is_direct { "-".to_owned() } else { shown(cpu_x) },
                med(phases, |p| p.start_lag.quantile(0.99).as_secs_f64() * 1e3),
                phases.iter().map(|p| p.late).sum::<usize>(),
                med(phases, |p| p.generator_cores.unwrap_or(f64::NAN)),
                phases.iter().filter_map(|p| p.listen_overflows).sum::<u64>(),
            ));
        }
        if let Some(budget) = budget_line(columns, r, rates.get(r).copied()) {
            lines.push(budget);
        }
    }

    // The goals, for proxyd (the first peer) against the relay in the same rounds.
    let (Some(proxyd), Some(relay_column)) = (columns.get(1), relay_column) else {
        lines.push("goal: openloop goals not judged (needs proxyd and the HAProxy relay)".to_owned());
        return lines;
    };
    for (g, generator) in GENERATORS.iter().enumerate() {
        let (mine, theirs) = (&proxyd.closed[g], &relay_column.closed[g]);
        if mine.is_empty() || theirs.is_empty() {
            continue;
        }
        let rate = paired_ratio(mine.iter().map(|c| Some(c.rate)), theirs.iter().map(|c| Some(c.rate)));
        let cpu = paired_ratio(mine.iter().map(|c| c.peer_cpu_us), theirs.iter().map(|c| c.peer_cpu_us));
        lines.push(format!(
            "goal: setup rate >= 0.8x the relay's under the {generator} generator: {rate:.2} {}",
            verdict(rate >= 0.8)
        ));
        lines.push(format!(
            "goal: CPU per tunnel <= 1.5x the relay's under the {generator} generator: {cpu:.2} {}",
            verdict(cpu <= 1.5)
        ));
    }
    if plan.rates.is_some() || rates.len() != FRACTIONS.len() {
        lines.push("goal: openloop rate goals not judged (absolute OPENLOOP_RATES)".to_owned());
        return lines;
    }
    let direct_open = &direct.open;
    let (p25, r25) = (&proxyd.open[0], &relay_column.open[0]);
    let added25 = median(added(p25, &direct_open[0], 0.99).into_iter());
    lines.push(format!(
        "goal: openloop 25%: added p99 <= 1 ms over direct: {added25:.2} ms {}",
        verdict(added25 <= 1.0)
    ));
    let cpu25 = paired_ratio(p25.iter().map(|p| p.cpu_us), r25.iter().map(|p| p.cpu_us));
    lines.push(format!("goal: openloop 25%: CPU per tunnel <= 1.5x the relay's: {cpu25:.2} {}", verdict(cpu25 <= 1.5)));
    let (p50, r50) = (&proxyd.open[1], &relay_column.open[1]);
    let mine50 = added(p50, &direct_open[1], 0.99);
    let relay50 = added(r50, &direct_open[1], 0.99);
    let x50 = median(mine50.iter().zip(&relay50).map(|(p, r)| p / r.max(ADDED_FLOOR_MS)));
    lines.push(format!(
        "goal: openloop 50%: added p99 <= 1.5x the relay's: {:.2} ms vs {:.2} ms, {x50:.2}x {} \
         (rounds that fell behind: proxyd {}, the relay {})",
        median(mine50.iter().copied()),
        median(relay50.iter().copied()),
        verdict(x50 <= 1.5),
        behind(p50),
        behind(r50),
    ));
    let keeps_up = |phases: &[OpenPhase]| {
        let kept = median(phases.iter().map(|p| p.achieved() / p.offered));
        let unstarted: usize = phases.iter().map(|p| p.unstarted).sum();
        let errors: usize = phases.iter().map(|p| p.errors).sum();
        let p99 = med(phases, |p| p.q(0.99));
        let ok = kept >= 0.99 && unstarted == 0 && errors == 0 && p99 <= 50.0;
        (ok, format!("{:.1}% achieved, {unstarted} unstarted, {errors} errors, p99 {p99:.2} ms", kept * 100.0))
    };
    let (ok, mine) = keeps_up(&proxyd.open[2]);
    // "As the relay does": whether the relay itself kept up in the same
    // rounds says whether the rate was within what the machine could do.
    let (relay_ok, relay) = keeps_up(&relay_column.open[2]);
    lines.push(format!(
        "goal: openloop 75%: keeps up (>= 99% achieved, nothing unstarted, no errors, p99 <= 50 ms): \
         {mine} {} (the relay: {relay}, {})",
        verdict(ok),
        if relay_ok { "kept up" } else { "did not keep up either" }
    ));
    lines
}
