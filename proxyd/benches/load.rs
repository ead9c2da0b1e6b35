// benchmark harness: a panic is a failed run
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

//! The loopback load tool behind `make bench`: runs the real `proxyd` binary
//! as a child process and measures, in one run and each against a direct
//! baseline measured in the same run (the machines are noisy, so only ratios
//! mean anything):
//!
//! - **setup**: 64 concurrent clients, each looping CONNECT, `200`, a 64-byte
//!   echo, close; rate and p50/p99 latency, against the same loop straight to
//!   the echo server. Phases are interleaved (direct, proxy, direct, ...).
//! - **bulk**: one tunnel streaming ≥ 1 GiB one way to a sink that discards
//!   and counts, timed until the sink has everything; against the same
//!   stream sent directly. Interleaved too.
//! - **idle memory**: a fresh proxy's VmRSS before and after opening 5,000
//!   idle tunnels (and again after one echo through each), per tunnel.
//! - **mtls**: tunnel setup over mutual TLS with a 5,000-role ACL, full
//!   handshakes and resumed ones, ECDSA and RSA server keys, against the
//!   old build (see `load/mtls.rs`).
//! - **openloop**: latency from each request's scheduled start at fixed
//!   offered rates (25/50/75% of the relay's closed-loop maximum), and the
//!   closed-loop setup rate under a second, Go load generator (see
//!   `load/openloop.rs`).
//! - **idle100k** (only when named, only under `cargo bench`): 100,000 idle
//!   tunnels, setup rate and p99 while they are held, and a reload of a
//!   100,000-pattern table meanwhile (see `load/scale.rs`).
//!
//! Beside proxyd, every round also measures the **peers** found on the
//! machine, in the same alternating runs (direct first, then each peer,
//! rotating which goes first), each on its own fresh process:
//!
//! - `old proxyd`: the build named by `PROXYD_BASELINE_BIN=path`, so a
//!   change's gain shows old and new side by side;
//! - `haproxy`: a splicing `mode tcp` relay with one fixed listener per
//!   upstream (no CONNECT): the ceiling for any CONNECT proxy here;
//! - `squid`: a CONNECT proxy (one worker, no cache, CONNECT only to the
//!   echo servers and the sink).
//!
//! A peer that is not installed gets one `skipped:` line (see
//! `load/peers.rs`); `LOAD_PEERS=proxyd,haproxy` keeps only the named ones
//! (`old-proxyd` for the old build); `LOAD_ROUNDS=5` runs 5 setup rounds
//! instead of 3. Every figure is printed as a ratio to
//! direct and to the HAProxy relay (the median of each round's ratio, as
//! the peers of one round run seconds apart; figures are medians over
//! rounds), with each process's CPU per tunnel (and
//! per GiB) from its /proc/<pid>/stat utime + stime. Setup also reports the
//! load generator's own CPU per tunnel (`load µs/tun`: this process, the
//! clients and upstreams) and, from those figures, the `ceiling:` line: the
//! rate a CONNECT proxy costing no more than the relay could reach here, and
//! the proxyd CPU per tunnel that 0.8x the relay's rate would need.
//!
//! `cargo bench -p proxyd --bench load -- bulk` runs only the named parts
//! (`setup`, `bulk`, `idle`, `idle100k`, `mtls`, `openloop`); `PROXYD_BIN=path` measures another
//! build of `proxyd` as the main column.
//!
//! It ends with a summary block: each number, its target and `OK`/`MISSED`.
//! Under `cargo test` (no `--bench` argument) it runs a small smoke version
//! of every path that checks correctness (echo content, byte counts, close
//! log lines) but not performance.
//!
//! It never sends a byte outside 127.0.0.0/8: every server it starts listens
//! on a 127.0.x.y address, the proxy is allowed exactly those `IP:PORT`s, and
//! every CONNECT target is one of them as an IP literal (no DNS). Every loop
//! is bounded in time, every operation by a timeout. The idle part needs
//! about 10,000 descriptors in each process (`ulimit -n`).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use egress_policy::acl;
use egress_policy::policy::ActionSet;
use egress_policy::table::{self, Metadata};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[path = "load/lifecycle.rs"]
mod lifecycle;
#[path = "load/mtls.rs"]
mod mtls;
#[path = "load/openloop.rs"]
mod openloop;
#[path = "load/peers.rs"]
mod peers;
#[path = "load/scale.rs"]
mod scale;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// The CONNECT target's rule: everything is open; the address stage still
/// refuses every loopback address except the `--allow-address` entries.
const ACL: &str = "\
version: v1
services: []
default:
  project: bench
  action: open
";

/// Echo servers the proxy reaches (127.0.2.x) and ones direct clients reach
/// (127.0.3.x): several of each, and every setup client on its own source
/// address (127.0.1.x), so that tens of thousands of short connections a
/// second spread over many address pairs, as real traffic does. On one pair
/// every connect must hunt for a port not in TIME_WAIT, which halved the
/// direct baseline and stretched its p99 to ~90 ms.
const ECHO_TARGETS: u8 = 8;
const SINK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
const PROXY_IP: &str = "127.0.0.1";

const ECHO_BYTES: usize = 64;
const CLIENTS: usize = 64;
/// Sent through the echo server in both modes: a correctness check of both directions at once.
const BULK_ECHO_BYTES: u64 = 16 << 20;
/// Bulk writes and sink reads use this size on both paths.
const BULK_CHUNK: usize = 256 * 1024;
/// Every single operation (connect, echo, read) gives up after this.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of everything to do.
#[derive(Debug, Clone, Copy)]
struct Plan {
    full: bool,
    /// Interleaved rounds of setup phases (direct, then every peer).
    rounds: usize,
    /// Interleaved rounds of bulk transfers (short, so more of them).
    bulk_rounds: usize,
    setup_phase: Duration,
    bulk_bytes: u64,
    idle_tunnels: usize,
    settle_max: Duration,
    parts: Parts,
}

/// Which measurements to run (all but `idle100k` by default).
#[derive(Debug, Clone, Copy)]
struct Parts {
    setup: bool,
    bulk: bool,
    idle: bool,
    /// 100,000 idle tunnels (bench mode only, and only when named).
    idle100k: bool,
    /// Tunnel setup over mutual TLS (see `load/mtls.rs`).
    mtls: bool,
    /// Latency at fixed offered rates, and a second load generator (see `load/openloop.rs`).
    openloop: bool,
}

const ALL_PARTS: Parts = Parts { setup: true, bulk: true, idle: true, idle100k: false, mtls: true, openloop: true };
const PART_NAMES: [&str; 6] = ["setup", "bulk", "idle", "idle100k", "mtls", "openloop"];

impl Plan {
    fn full() -> Plan {
        Plan {
            full: true,
            rounds: 3,
            bulk_rounds: 5,
            setup_phase: Duration::from_secs(5),
            bulk_bytes: 2 << 30,
            idle_tunnels: 5_000,
            settle_max: Duration::from_secs(10),
            parts: ALL_PARTS,
        }
    }

    fn smoke() -> Plan {
        Plan {
            full: false,
            rounds: 1,
            bulk_rounds: 1,
            setup_phase: Duration::from_millis(250),
            bulk_bytes: 16 << 20,
            idle_tunnels: 100,
            settle_max: Duration::from_secs(1),
            parts: ALL_PARTS,
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // Restarts under load: only when named (load/lifecycle.rs).
    if std::env::args().any(|a| a == "lifecycle") {
        std::process::exit(if lifecycle::main(full) { 0 } else { 1 });
    }
    let mut plan = if full { Plan::full() } else { Plan::smoke() };
    // `cargo bench -p proxyd --bench load -- bulk` runs only the named parts.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = only.iter().find(|a| !PART_NAMES.contains(&a.as_str())) {
        eprintln!("load: unknown part {unknown:?} (parts: {})", PART_NAMES.join(", "));
        std::process::exit(2);
    }
    if !only.is_empty() {
        plan.parts = Parts {
            setup: only.iter().any(|a| a == "setup"),
            bulk: only.iter().any(|a| a == "bulk"),
            idle: only.iter().any(|a| a == "idle"),
            idle100k: only.iter().any(|a| a == "idle100k"),
            mtls: only.iter().any(|a| a == "mtls"),
            openloop: only.iter().any(|a| a == "openloop"),
        };
    }
    // `LOAD_ROUNDS=5` runs more setup rounds (and at least as many bulk rounds) to narrow the medians.
    if let Some(rounds) = std::env::var("LOAD_ROUNDS").ok().and_then(|n| n.parse::<usize>().ok()).filter(|n| *n > 0) {
        plan.rounds = rounds;
        plan.bulk_rounds = plan.bulk_rounds.max(rounds);
    }
    if plan.parts.idle100k && !plan.full {
        println!("skipped: idle100k (only under `cargo bench`, never as a smoke test)");
        plan.parts.idle100k = false;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(error) = runtime.block_on(run(plan)) {
        eprintln!("load: {error}");
        std::process::exit(1);
    }
}

/// The loopback servers every peer reaches, and the policy proxyd serves.
struct Targets {
    /// Echo servers reached through a peer (127.0.2.x).
    echo: Vec<SocketAddr>,
    sink: SocketAddr,
    policy: PathBuf,
}

impl Targets {
    /// What a CONNECT peer may reach: exactly these `IP:PORT`s.
    fn allowed(&self) -> Vec<SocketAddr> {
        self.echo.iter().copied().chain([self.sink]).collect()
    }
}

/// A program measured against direct, in the order of the summary's columns.
#[derive(Debug, Clone)]
enum PeerSpec {
    /// proxyd itself (`name` "proxyd"), or an earlier build of it ("old proxyd").
    Proxyd {
        name: &'static str,
        binary: PathBuf,
    },
    HaProxy(PathBuf),
    Squid(PathBuf),
}

impl PeerSpec {
    fn name(&self) -> &'static str {
        match self {
            PeerSpec::Proxyd { name, .. } => name,
            PeerSpec::HaProxy(_) => "haproxy",
            PeerSpec::Squid(_) => "squid",
        }
    }

    /// Starts a fresh instance. `keep_lines` keeps proxyd's log lines for the smoke checks.
    fn start(&self, targets: &Targets, keep_lines: bool) -> Result<Peer> {
        let connect_routes = |proxy: SocketAddr| {
            let echo_routes = targets.echo.iter().map(|echo| Route::Proxy { proxy, target: *echo }).collect();
            (echo_routes, Route::Proxy { proxy, target: targets.sink })
        };
        let (running, echo_routes, sink_route) = match self {
            PeerSpec::Proxyd { binary, .. } => {
                let daemon =
                    Daemon::start(binary, &targets.policy, &targets.allowed(), keep_lines, &Launch::default())?;
                let (echo_routes, sink_route) = connect_routes(daemon.addr);
                (Running::Proxyd(daemon), echo_routes, sink_route)
            }
            PeerSpec::HaProxy(binary) => {
                let upstreams: Vec<SocketAddr> = targets.allowed();
                // HAProxy asks for about 2 descriptors per connection plus 4,500
                // at this size: 7,000 fits a 20,000 `ulimit -n` and the idle part's 5,000.
                let relay = peers::HaProxy::start(binary, &upstreams, 7_000)?;
                let mut routes: Vec<Route> = relay.relays.iter().map(|r| Route::Relay(*r)).collect();
                let sink_route = routes.pop().ok_or("no sink relay")?;
                (Running::HaProxy(relay), routes, sink_route)
            }
            PeerSpec::Squid(binary) => {
                let squid = peers::Squid::start(binary, &targets.allowed())?;
                let (echo_routes, sink_route) = connect_routes(squid.addr);
                (Running::Squid(squid), echo_routes, sink_route)
            }
        };
        let pid = match &running {
            Running::Proxyd(daemon) => daemon.pid(),
            Running::HaProxy(relay) => relay.process.pid(),
            Running::Squid(squid) => squid.process.pid(),
        };
        Ok(Peer { name: self.name(), pid, echo_routes, sink_route, running })
    }
}

/// A running peer and how clients reach the echo servers and the sink through it.
struct Peer {
    name: &'static str,
    pid: u32,
    echo_routes: Vec<Route>,
    sink_route: Route,
    running: Running,
}

enum Running {
    Proxyd(Daemon),
    HaProxy(peers::HaProxy),
    Squid(peers::Squid),
}

impl Peer {
    /// proxyd's log lines, when this is proxyd and they are kept.
    fn daemon(&mut self) -> Option<&mut Daemon> {
        match &mut self.running {
            Running::Proxyd(daemon) => Some(daemon),
            Running::HaProxy(_) | Running::Squid(_) => None,
        }
    }
}

/// The peers this run measures: proxyd (`PROXYD_BIN` or this build), the
/// old proxyd (`PROXYD_BASELINE_BIN`), HAProxy and Squid when installed.
/// Each one missing gets one `skipped:` line.
fn peer_specs() -> Result<Vec<PeerSpec>> {
    let proxyd = std::env::var_os("PROXYD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_proxyd").into());
    let mut specs = vec![PeerSpec::Proxyd { name: "proxyd", binary: proxyd.into() }];
    match std::env::var_os("PROXYD_BASELINE_BIN") {
        Some(binary) if Path::new(&binary).is_file() => {
            specs.push(PeerSpec::Proxyd { name: "old proxyd", binary: binary.into() });
        }
        Some(binary) => return Err(format!("PROXYD_BASELINE_BIN {binary:?} is not a file").into()),
        None => println!("skipped: old proxyd (set PROXYD_BASELINE_BIN=path to measure an earlier build side by side)"),
    }
    match peers::find_program("haproxy") {
        Some(binary) => specs.push(PeerSpec::HaProxy(binary)),
        None => println!("skipped: haproxy (not installed; `apt-get install haproxy` adds the kernel relay ceiling)"),
    }
    match peers::find_program("squid") {
        Some(binary) => specs.push(PeerSpec::Squid(binary)),
        None => println!("skipped: squid (not installed; `apt-get install squid` adds it as a CONNECT peer)"),
    }
    // `LOAD_PEERS=proxyd,haproxy` measures only those (e.g. while profiling one of them).
    if let Ok(only) = std::env::var("LOAD_PEERS") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        specs.retain(|spec| {
            let keep = wanted.contains(&spec.name().replace(' ', "-").as_str());
            if !keep {
                println!("skipped: {} (not in LOAD_PEERS)", spec.name());
            }
            keep
        });
    }
    Ok(specs)
}

/// What the machine allows a CONNECT proxy when the cores are saturated:
/// the rate is then the cores over the CPU a tunnel costs everything on the
/// machine, the proxy *and* the load generator. A CONNECT client pays for a
/// round trip (write the request, wait for and read the `200`) that a fixed
/// relay's client does not, which shows as more load-generator CPU per
/// tunnel through proxyd than through the relay.
#[derive(Debug)]
struct ConnectCeiling {
    /// Load-generator µs per tunnel through the relay and through proxyd.
    load_relay: f64,
    load_proxyd: f64,
    /// The relay's own µs per tunnel.
    relay: f64,
}

impl ConnectCeiling {
    fn from(proxyd: &Column, relay: &Column) -> Option<ConnectCeiling> {
        let ceiling = ConnectCeiling {
            load_relay: median(relay.setup_load_cpu_us.iter().copied()),
            load_proxyd: median(proxyd.setup_load_cpu_us.iter().copied()),
            relay: median(relay.setup_cpu_us.iter().flatten().copied()),
        };
        [ceiling.load_relay, ceiling.load_proxyd, ceiling.relay]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
            .then_some(ceiling)
    }

    fn print(&self) {
        let (relay_total, connect) = (self.load_relay + self.relay, self.load_proxyd - self.load_relay);
        // A CONNECT proxy as cheap as the relay itself, with this run's CONNECT clients.
        let best = relay_total / (self.load_proxyd + self.relay);
        // The proxy CPU per tunnel at which the rate would be 0.8x the relay's.
        let needed = relay_total / 0.8 - self.load_proxyd;
        println!(
            "ceiling: the clients' CONNECT round trip costs the load generator {connect:.0} µs per tunnel more than through the relay \
             ({:.0} vs {:.0}); a CONNECT proxy costing no more CPU than the relay ({:.0} µs) would reach {best:.2}x the relay's rate; \
             0.8x needs proxyd at <= {needed:.0} µs per tunnel ({:.2}x the relay's CPU)",
            self.load_proxyd,
            self.load_relay,
            self.relay,
            needed / self.relay
        );
    }
}

/// Every figure of one column of the summary.
#[derive(Debug, Default)]
struct Column {
    setup: Vec<SetupPhase>,
    /// CPU of the peer's process per tunnel, µs, one value per round (`None`: not measured).
    setup_cpu_us: Vec<Option<f64>>,
    /// CPU of the load generator (this process: clients and upstreams) per tunnel, µs.
    setup_load_cpu_us: Vec<f64>,
    bulk_mibs: Vec<f64>,
    /// CPU of the peer's process per GiB moved, s, one value per round.
    bulk_cpu_s_per_gib: Vec<f64>,
    idle: Option<Memory>,
}

impl Column {
    fn setup_rate(&self) -> f64 {
        median(self.setup.iter().map(SetupPhase::rate))
    }

    fn setup_rates(&self) -> impl Iterator<Item = Option<f64>> + '_ {
        self.setup.iter().map(|phase| Some(phase.rate()))
    }

    fn setup_cpu(&self) -> f64 {
        median(self.setup_cpu_us.iter().flatten().copied())
    }
}

/// The median over rounds of each round's `value / base`. Both figures of a
/// round were measured seconds apart, so the machine's load drifting during
/// a run (other jobs come and go) cancels out; the ratio of two medians can
/// pair one peer's quiet rounds with another's busy ones. Rounds missing
/// either figure are skipped.
fn paired_ratio(values: impl Iterator<Item = Option<f64>>, bases: impl Iterator<Item = Option<f64>>) -> f64 {
    median(values.zip(bases).filter_map(|(value, base)| Some(value? / base?)).filter(|r| r.is_finite()))
}

/// Rounds' figures that are always measured, for [`paired_ratio`].
fn each(values: &[f64]) -> impl Iterator<Item = Option<f64>> + '_ {
    values.iter().map(|v| Some(*v))
}

async fn run(plan: Plan) -> Result<()> {
    let started = Instant::now();
    let mut echo_proxy = Vec::new();
    let mut echo_direct = Vec::new();
    for n in 1..=ECHO_TARGETS {
        echo_proxy.push(spawn_echo(IpAddr::V4(Ipv4Addr::new(127, 0, 2, n))).await?);
        echo_direct.push(spawn_echo(IpAddr::V4(Ipv4Addr::new(127, 0, 3, n))).await?);
    }
    let (sink, mut sink_reports) = spawn_sink(SINK, !plan.full).await?;
    let dir = tempfile::tempdir()?;
    let policy = compile(dir.path())?;
    let targets = Targets { echo: echo_proxy, sink, policy };

    println!(
        "proxyd load ({} mode): {} echo servers via each peer ({}, ...), {} direct, sink {sink}",
        if plan.full { "bench" } else { "smoke" },
        targets.echo.len(),
        targets.echo.first().ok_or("no echo server")?,
        echo_direct.len(),
    );

    let specs = if plan.parts.setup || plan.parts.bulk || plan.parts.idle || plan.parts.openloop {
        peer_specs()?
    } else {
        Vec::new()
    };
    let mut peers = Vec::new();
    for spec in &specs {
        match spec.start(&targets, !plan.full && peers.is_empty()) {
            Ok(peer) => peers.push(peer),
            Err(error) if matches!(spec, PeerSpec::Proxyd { .. }) => return Err(error),
            Err(error) => println!("skipped: {} (did not start: {error})", spec.name()),
        }
    }
    println!(
        "peers: {}",
        ["direct".to_owned()]
            .into_iter()
            .chain(peers.iter().map(|p| format!("{} (pid {})", p.name, p.pid)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut direct = Column::default();
    let mut columns: Vec<Column> = peers.iter().map(|_| Column::default()).collect();
    let mut noise = Noise::default();

    // Setup: each round runs direct, then every peer (rotating which goes first).
    let direct_routes: Vec<Route> = echo_direct.iter().map(|echo| Route::Direct(*echo)).collect();
    for round in (1..=plan.rounds).filter(|_| plan.parts.setup) {
        let cpu = CpuMeter::start(None);
        let phase = setup_phase(&direct_routes, plan.setup_phase).await?;
        let cpu = cpu.stop();
        noise.record(&cpu);
        println!("setup round {round}: {:<10} {} ({cpu})", "direct", phase.describe());
        direct.setup_load_cpu_us.extend(cpu.load_per(phase.ops as f64, 1e6));
        direct.setup.push(phase);
        for k in 0..peers.len() {
            let i = (k + round - 1) % peers.len();
            let (peer, column) = (&peers[i], &mut columns[i]);
            let cpu = CpuMeter::start(Some(peer.pid));
            let phase = setup_phase(&peer.echo_routes, plan.setup_phase).await?;
            let cpu = cpu.stop();
            noise.record(&cpu);
            let per_op = cpu.peer_per(phase.ops as f64, 1e6);
            println!(
                "setup round {round}: {:<10} {} ({cpu}, {} µs CPU per tunnel)",
                peer.name,
                phase.describe(),
                per_op.map_or("?".to_owned(), |v| format!("{v:.0}"))
            );
            column.setup_cpu_us.push(per_op);
            column.setup_load_cpu_us.extend(cpu.load_per(phase.ops as f64, 1e6));
            column.setup.push(phase);
        }
    }

    // Bulk: interleaved the same way.
    let chunk: Arc<[u8]> = (0..BULK_CHUNK).map(pattern_byte).collect();
    let gib = plan.bulk_bytes as f64 / f64::from(1u32 << 30);
    for round in (1..=plan.bulk_rounds).filter(|_| plan.parts.bulk) {
        let cpu = CpuMeter::start(None);
        let mibs = bulk(Route::Direct(sink), plan.bulk_bytes, &chunk, &mut sink_reports).await?;
        let cpu = cpu.stop();
        noise.record(&cpu);
        println!("bulk round {round}: {:<10} {mibs:.0} MiB/s ({cpu})", "direct");
        direct.bulk_mibs.push(mibs);
        for k in 0..peers.len() {
            let i = (k + round - 1) % peers.len();
            let (peer, column) = (&peers[i], &mut columns[i]);
            let cpu = CpuMeter::start(Some(peer.pid));
            let mibs = bulk(peer.sink_route, plan.bulk_bytes, &chunk, &mut sink_reports).await?;
            let cpu = cpu.stop();
            noise.record(&cpu);
            let per_gib = cpu.peer_per(gib, 1.0);
            println!(
                "bulk round {round}: {:<10} {mibs:.0} MiB/s ({cpu}, {} s CPU per GiB)",
                peer.name,
                per_gib.map_or("?".to_owned(), |v| format!("{v:.2}"))
            );
            column.bulk_mibs.push(mibs);
            column.bulk_cpu_s_per_gib.extend(per_gib);
        }
    }
    if plan.parts.bulk {
        for peer in &peers {
            // Both directions at once (so both splice), with the half-close passed on each way.
            let route = *peer.echo_routes.first().ok_or("no echo route")?;
            // Squid closes a CONNECT tunnel when the client half-closes: no end-of-stream check there.
            let half_close = !matches!(peer.running, Running::Squid(_));
            bulk_echo(route, BULK_ECHO_BYTES, &chunk, half_close).await?;
            println!(
                "bulk echo via {}: {} MiB each way through one tunnel, content{} checked",
                peer.name,
                BULK_ECHO_BYTES >> 20,
                if half_close { " and end of stream" } else { "" }
            );
        }
    }
    if !plan.full && plan.parts.setup && plan.parts.bulk {
        let proxy = peers.first_mut().and_then(Peer::daemon).ok_or("proxyd is not the first peer")?;
        // The proxy counted every byte: the setup tunnels' close lines come first, then the bulk ones.
        let echo_close = proxy.wait_for(|v| v["message"] == "CANONICAL-PROXY-CN-CLOSE")?;
        assert_eq!(echo_close["bytes_out"].as_u64(), Some(ECHO_BYTES as u64), "echo close line: {echo_close}");
        assert_eq!(echo_close["bytes_in"].as_u64(), Some(ECHO_BYTES as u64), "echo close line: {echo_close}");
        let close = proxy.wait_for(|v| {
            v["message"] == "CANONICAL-PROXY-CN-CLOSE" && v["bytes_out"].as_u64() == Some(plan.bulk_bytes)
        })?;
        assert_eq!(close["bytes_in"].as_u64(), Some(0), "bulk close line: {close}");
        assert!(close["error"].is_null() || close["error"] == "", "bulk close line: {close}");
        let close = proxy.wait_for(|v| {
            v["message"] == "CANONICAL-PROXY-CN-CLOSE" && v["bytes_out"].as_u64() == Some(BULK_ECHO_BYTES)
        })?;
        assert_eq!(close["bytes_in"].as_u64(), Some(BULK_ECHO_BYTES), "bulk echo close line: {close}");
    }
    drop(peers);

    // Idle memory, on fresh instances so earlier phases' freed heap cannot hide growth.
    if plan.parts.idle {
        for (spec, column) in specs.iter().zip(&mut columns) {
            column.idle = Some(idle_memory(&plan, spec, &targets).await?);
        }
    }

    let scale = if plan.parts.idle100k { Some(scale::idle_100k(&targets).await?) } else { None };
    let mtls = match plan.parts.mtls {
        true => Some(mtls::mtls(plan.full, plan.rounds, plan.setup_phase, &targets, &mut noise).await?),
        false => None,
    };
    let openloop = match plan.parts.openloop {
        true => Some(
            openloop::openloop(plan.full, plan.rounds, plan.setup_phase, &specs, &targets, &direct_routes, &mut noise)
                .await?,
        ),
        false => None,
    };

    // Summary.
    let names: Vec<&str> = specs.iter().map(PeerSpec::name).collect();
    println!();
    println!(
        "== proxyd load summary ({}; medians of {} setup and {} bulk interleaved rounds; \
         ratios are medians of each round's ratio) ==",
        plan_name(&plan),
        plan.rounds,
        plan.bulk_rounds
    );
    let relay = names.iter().position(|n| *n == "haproxy").and_then(|i| columns.get(i));
    let shown = |ratio: Option<f64>| match ratio {
        Some(ratio) if ratio.is_finite() => format!("{ratio:.2}"),
        _ => "-".to_owned(),
    };
    if plan.parts.setup {
        let direct_rate = direct.setup_rate();
        println!("setup ({CLIENTS} clients, connect (+ CONNECT for proxies) + {ECHO_BYTES} B echo + close):");
        println!(
            "  {:<11} {:>8} {:>8} {:>9} {:>9} {:>9} {:>12} {:>9} {:>13}",
            "", "tunnels/s", "x direct", "x haproxy", "p50 ms", "p99 ms", "CPU µs/tun", "x haproxy", "load µs/tun"
        );
        let lat = Latencies::merge(&direct.setup);
        println!(
            "  {:<11} {:>9.0} {:>8} {:>9} {:>9.2} {:>9.2} {:>12} {:>9} {:>13.0}",
            "direct",
            direct_rate,
            "1.00",
            shown(relay.map(|relay| paired_ratio(direct.setup_rates(), relay.setup_rates()))),
            lat.quantile(0.5).as_secs_f64() * 1e3,
            lat.quantile(0.99).as_secs_f64() * 1e3,
            "-",
            "-",
            median(direct.setup_load_cpu_us.iter().copied())
        );
        for (name, column) in names.iter().zip(&columns) {
            let rate = column.setup_rate();
            let cpu = column.setup_cpu();
            let lat = Latencies::merge(&column.setup);
            println!(
                "  {:<11} {:>9.0} {:>8} {:>9} {:>9.2} {:>9.2} {:>12.0} {:>9} {:>13.0}",
                name,
                rate,
                shown(Some(paired_ratio(column.setup_rates(), direct.setup_rates()))),
                shown(relay.map(|relay| paired_ratio(column.setup_rates(), relay.setup_rates()))),
                lat.quantile(0.5).as_secs_f64() * 1e3,
                lat.quantile(0.99).as_secs_f64() * 1e3,
                cpu,
                shown(relay.map(|relay| paired_ratio(
                    column.setup_cpu_us.iter().copied(),
                    relay.setup_cpu_us.iter().copied()
                ))),
                median(column.setup_load_cpu_us.iter().copied())
            );
        }
    }
    if plan.parts.bulk {
        let direct_mibs = median(direct.bulk_mibs.iter().copied());
        let relay_mibs = relay.map(|relay| relay.bulk_mibs.as_slice());
        println!("bulk ({} MiB one way, client to sink):", plan.bulk_bytes >> 20);
        println!("  {:<11} {:>8} {:>8} {:>9} {:>12}", "", "MiB/s", "x direct", "x haproxy", "CPU s/GiB");
        println!(
            "  {:<11} {:>8.0} {:>8} {:>9} {:>12}",
            "direct",
            direct_mibs,
            "1.00",
            shown(relay_mibs.map(|relay| paired_ratio(each(&direct.bulk_mibs), each(relay)))),
            "-"
        );
        for (name, column) in names.iter().zip(&columns) {
            let mibs = median(column.bulk_mibs.iter().copied());
            println!(
                "  {:<11} {:>8.0} {:>8} {:>9} {:>12.2}",
                name,
                mibs,
                shown(Some(paired_ratio(each(&column.bulk_mibs), each(&direct.bulk_mibs)))),
                shown(relay_mibs.map(|relay| paired_ratio(each(&column.bulk_mibs), each(relay)))),
                median(column.bulk_cpu_s_per_gib.iter().copied())
            );
        }
    }
    if plan.parts.idle {
        let relay_kib = relay.and_then(|c| c.idle.as_ref()).map(Memory::idle_kib_per_tunnel);
        println!("idle tunnels ({} open, RSS of the peer's process):", plan.idle_tunnels);
        println!(
            "  {:<11} {:>12} {:>9} {:>16} {:>10} {:>16}",
            "", "KiB/tunnel", "x haproxy", "after echo KiB", "fds/tunnel", "fds after echo"
        );
        for (name, column) in names.iter().zip(&columns) {
            let Some(memory) = &column.idle else { continue };
            println!(
                "  {:<11} {:>12.2} {:>9} {:>16.2} {:>10.2} {:>16.2}",
                name,
                memory.idle_kib_per_tunnel(),
                shown(relay_kib.map(|relay| memory.idle_kib_per_tunnel() / relay)),
                memory.used_kib_per_tunnel(),
                memory.fds_per_tunnel(memory.idle_fds),
                memory.fds_per_tunnel(memory.used_fds),
            );
        }
    }
    // The goals for proxyd, against the relay measured in this run.
    let verdict = |ok: bool| if ok { "OK" } else { "MISSED" };
    if let (Some(proxyd), Some(relay)) = (columns.first(), relay) {
        if plan.parts.setup {
            let rate = paired_ratio(proxyd.setup_rates(), relay.setup_rates());
            let cpu = paired_ratio(proxyd.setup_cpu_us.iter().copied(), relay.setup_cpu_us.iter().copied());
            println!("goal: setup rate >= 0.8x the relay's: {rate:.2} {}", verdict(rate >= 0.8));
            println!("goal: CPU per tunnel <= 1.5x the relay's: {cpu:.2} {}", verdict(cpu <= 1.5));
            if let Some(ceiling) = ConnectCeiling::from(proxyd, relay) {
                ceiling.print();
            }
        }
        if plan.parts.bulk {
            let bulk = paired_ratio(each(&proxyd.bulk_mibs), each(&relay.bulk_mibs));
            println!("goal: bulk >= 0.95x the relay's: {bulk:.2} {}", verdict(bulk >= 0.95));
        }
    }
    if let Some(memory) = columns.first().and_then(|c| c.idle.as_ref()) {
        let kib = memory.idle_kib_per_tunnel();
        println!("goal: idle tunnel <= 4 KiB RSS ({} open): {kib:.2} {}", memory.tunnels, verdict(kib <= 4.0));
    }
    if let Some(scale) = &scale {
        scale.print();
    }
    for line in mtls.iter().flatten() {
        println!("{line}");
    }
    for line in openloop.iter().flatten() {
        println!("{line}");
    }
    println!(
        "other load on the machine during the phases: up to {:.2} cores of {}; load average at the end: {} \
         (numbers are only comparable within a run)",
        noise.worst_cores,
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );
    println!(
        "command: {}{}cargo bench -p proxyd --bench load{}   (or: make bench); took {:.0?}",
        if std::env::var_os("PROXYD_BASELINE_BIN").is_some() { "PROXYD_BASELINE_BIN=... " } else { "" },
        std::env::var("LOAD_ROUNDS").map(|n| format!("LOAD_ROUNDS={n} ")).unwrap_or_default(),
        named_parts(),
        started.elapsed()
    );
    Ok(())
}

/// The parts named on the command line, as ` -- setup bulk`, or nothing when all ran.
fn named_parts() -> String {
    let named: Vec<String> = std::env::args().skip(1).filter(|a| PART_NAMES.contains(&a.as_str())).collect();
    if named.is_empty() { String::new() } else { format!(" -- {}", named.join(" ")) }
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn plan_name(plan: &Plan) -> &'static str {
    if plan.full { "cargo bench" } else { "smoke test, numbers not meaningful" }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn pattern_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// Compiles [`ACL`] in-process (as `policyc compile` would) into `dir`.
fn compile(dir: &Path) -> Result<PathBuf> {
    let checked = acl::check_source("bench.yaml", ACL, ActionSet::default());
    let policy = checked.policy.ok_or_else(|| format!("bench ACL does not compile: {:?}", checked.diagnostics))?;
    let bytes =
        table::encode(&policy, &Metadata::for_source(Path::new("bench.yaml"), ACL.as_bytes(), ActionSet::default()));
    let path = dir.join("bench.table");
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// How to start proxyd beyond the benchmark's usual flags.
#[derive(Debug, Default)]
struct Launch {
    /// Run it under `ulimit -n` of this many descriptors.
    fd_limit: Option<u64>,
    /// More flags.
    args: Vec<String>,
}

/// The real `proxyd` binary, started as a child, with its stderr drained.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    /// Log lines (parsed) when kept; otherwise only the listening line arrives here.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    fn start(
        binary: &Path,
        policy: &Path,
        allowed: &[SocketAddr],
        keep_lines: bool,
        launch: &Launch,
    ) -> Result<Daemon> {
        let mut command = match launch.fd_limit {
            // The shell raises the limit and `exec`s proxyd: same pid.
            Some(fds) => {
                let mut command = Command::new("sh");
                command.arg("-c").arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\"")).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .arg("--policy")
            .arg(policy)
            .args(["--listen-ip", PROXY_IP, "--listen-port", "0", "--allow-missing-role", "--log-format", "json"])
            .args(["--shutdown-grace", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for addr in allowed {
            command.arg("--allow-address").arg(addr.to_string());
        }
        command.args(&launch.args);
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (tx, lines) = std::sync::mpsc::channel();
        // Drained for the whole life of the child: a full pipe would stall the proxy.
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(64 * 1024, stderr);
            let mut line = Vec::new();
            let mut forward = true;
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if forward {
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    let listening = text.contains("proxyd listening");
                    if tx.send(text).is_err() {
                        forward = false;
                    }
                    if listening && !keep_lines {
                        forward = false;
                    }
                }
            }
        });
        let mut daemon = Daemon { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), lines };
        let listening = daemon.wait_for(|v| v["message"] == "proxyd listening")?;
        daemon.addr = listening["listen"].as_str().ok_or("listening line without `listen`")?.parse()?;
        Ok(daemon)
    }

    /// The next JSON log line matching `pred`, within 10 s.
    fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| "expected proxyd log line did not arrive")?;
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                return Err(format!("proxyd wrote a line that is not JSON: {line}").into());
            };
            if pred(&value) {
                return Ok(value);
            }
        }
    }

    /// Forgets the log lines received so far.
    fn skip_pending(&mut self) {
        while self.lines.try_recv().is_ok() {}
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    /// SIGTERM (as operators stop it), SIGKILL if it is still running 5 s later.
    fn drop(&mut self) {
        testkit::daemon::stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// Echo server: echoes until EOF, then closes (see [`echo_listener`] and
/// [`serve_echo`]), on this runtime.
async fn spawn_echo(ip: IpAddr) -> Result<SocketAddr> {
    let listener = echo_listener(ip)?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_echo(listener));
    Ok(addr)
}

/// An echo server's listening socket on `ip`, registered with the current
/// runtime. Its accept queue is as long as the kernel allows (tokio's
/// default is 1,024): when this process is starved of CPU for a moment, the
/// open-loop part's upstream connects must not be dropped here and blamed
/// on the proxy.
fn echo_listener(ip: IpAddr) -> Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    Ok(socket.listen(65_535)?)
}

/// Accepts forever; each connection is echoed until EOF, then closed.
async fn serve_echo(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// What the sink saw on one connection.
#[derive(Debug)]
struct SinkReport {
    bytes: u64,
    last_byte_at: Instant,
    /// Every byte matched [`pattern_byte`] (checked only when asked).
    pattern_ok: bool,
}

/// Bulk sink: reads and discards until EOF, then reports.
async fn spawn_sink(ip: IpAddr, check: bool) -> Result<(SocketAddr, mpsc::UnboundedReceiver<SinkReport>)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; BULK_CHUNK];
                let mut report = SinkReport { bytes: 0, last_byte_at: Instant::now(), pattern_ok: true };
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if check {
                                let start = report.bytes as usize;
                                report.pattern_ok &= buf[..n]
                                    .iter()
                                    .enumerate()
                                    .all(|(i, b)| *b == pattern_byte((start + i) % BULK_CHUNK));
                            }
                            report.bytes += n as u64;
                            report.last_byte_at = Instant::now();
                        }
                    }
                }
                let _ = tx.send(report);
            });
        }
    });
    Ok((addr, rx))
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Direct(SocketAddr),
    /// A fixed TCP relay's listener for one upstream (HAProxy): no CONNECT.
    Relay(SocketAddr),
    Proxy {
        proxy: SocketAddr,
        target: SocketAddr,
    },
}

impl Route {
    /// A connection to `target`, through a CONNECT tunnel when proxied.
    async fn open(self) -> Result<TcpStream> {
        self.open_from(None).await
    }

    /// The same from a chosen loopback source address: each setup client has
    /// its own, so tens of thousands of connections a second do not exhaust
    /// one address's ephemeral ports (TIME_WAIT) and stretch the tail.
    async fn open_from(self, source: Option<IpAddr>) -> Result<TcpStream> {
        let connect = |to: SocketAddr| async move {
            let stream = match source {
                None => TcpStream::connect(to).await?,
                Some(ip) => {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.set_reuseaddr(true)?;
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(to).await?
                }
            };
            stream.set_nodelay(true)?;
            Ok::<_, Error>(stream)
        };
        match self {
            Route::Direct(target) | Route::Relay(target) => connect(target).await,
            Route::Proxy { proxy, target } => {
                let mut stream = connect(proxy).await?;
                let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
                stream.write_all(request.as_bytes()).await?;
                let mut head = [0u8; 512];
                let mut len = 0;
                while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    if len == head.len() {
                        return Err("CONNECT response head too long".into());
                    }
                    let n = stream.read(&mut head[len..]).await?;
                    if n == 0 {
                        return Err("proxy closed before answering CONNECT".into());
                    }
                    len += n;
                }
                let head = &head[..len];
                if !head.starts_with(b"HTTP/1.1 200 ") {
                    return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(head)).into());
                }
                if !head.ends_with(b"\r\n\r\n") {
                    return Err("bytes after the CONNECT response before anything was sent".into());
                }
                Ok(stream)
            }
        }
    }
}

async fn echo_once(stream: &mut TcpStream, message: &[u8; ECHO_BYTES]) -> Result<()> {
    stream.write_all(message).await?;
    let mut back = [0u8; ECHO_BYTES];
    stream.read_exact(&mut back).await?;
    if &back != message {
        return Err("echo came back different".into());
    }
    Ok(())
}

/// One setup phase's samples.
#[derive(Debug)]
struct SetupPhase {
    ops: usize,
    elapsed: Duration,
    latencies: Latencies,
}

impl SetupPhase {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!(
            "{:.0}/s ({} ops), p50 {}, p99 {}",
            self.rate(),
            self.ops,
            ms(self.latencies.quantile(0.5)),
            ms(self.latencies.quantile(0.99))
        )
    }
}

#[derive(Debug, Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn merge(phases: &[SetupPhase]) -> Latencies {
        let mut all: Vec<Duration> = phases.iter().flat_map(|p| p.latencies.0.iter().copied()).collect();
        all.sort_unstable();
        Latencies(all)
    }

    /// Nearest-rank quantile of sorted samples.
    fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }
}

/// [`CLIENTS`] tasks loop connect (+ CONNECT), 64-byte echo, close, until the phase ends; client
/// `i` uses `routes[i % len]`.
async fn setup_phase(routes: &[Route], length: Duration) -> Result<SetupPhase> {
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, client as u8 + 1));
        let route = *routes.get(client % routes.len().max(1)).ok_or("no route")?;
        tasks.spawn(async move {
            let mut message = [0u8; ECHO_BYTES];
            let mut samples = Vec::with_capacity(64 * 1024);
            let mut op = 0u64;
            while Instant::now() < deadline {
                message[..8].copy_from_slice(&op.to_le_bytes());
                message[8] = client as u8;
                let began = Instant::now();
                let one = async {
                    let mut stream = route.open_from(Some(source)).await?;
                    echo_once(&mut stream, &message).await
                };
                match tokio::time::timeout(OP_TIMEOUT, one).await {
                    Ok(Ok(())) => samples.push(began.elapsed()),
                    Ok(Err(error)) => return Err(format!("setup op {op} via {route:?}: {error}")),
                    Err(_) => return Err(format!("setup op {op} via {route:?} timed out")),
                }
                op += 1;
            }
            Ok(samples)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined??);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Ok(SetupPhase { ops: all.len(), elapsed, latencies: Latencies(all) })
}

/// Streams `bytes` one way to the sink; MiB/s from the first write until the sink has the last byte.
async fn bulk(
    route: Route,
    bytes: u64,
    chunk: &Arc<[u8]>,
    reports: &mut mpsc::UnboundedReceiver<SinkReport>,
) -> Result<f64> {
    // Forget connections that carried nothing: a relay's start-up check connects through to the
    // sink, and its report may come in before or after this transfer's.
    while reports.try_recv().is_ok() {}
    let mut stream = route.open().await?;
    let began = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        tokio::time::timeout(OP_TIMEOUT, stream.write_all(&chunk[..n])).await.map_err(|_| "bulk write stalled")??;
        sent += n as u64;
    }
    stream.shutdown().await?;
    let transfer = async {
        loop {
            match reports.recv().await {
                Some(report) if report.bytes == 0 => continue,
                other => return other,
            }
        }
    };
    let report = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .map_err(|_| "sink did not report")?
        .ok_or("sink stopped")?;
    if report.bytes != bytes {
        return Err(format!("sink received {} bytes via {route:?}, {bytes} were sent", report.bytes).into());
    }
    if !report.pattern_ok {
        return Err(format!("sink received corrupted bytes via {route:?}").into());
    }
    let elapsed = report.last_byte_at.saturating_duration_since(began);
    Ok(bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64())
}

/// CPU use while a phase runs: how busy the whole machine was, and how
/// many cores the measured peer's process used (from /proc, in USER_HZ
/// ticks: utime + stime of /proc/<pid>/stat).
#[derive(Debug)]
struct CpuMeter {
    pid: Option<u32>,
    began: Instant,
    machine: Option<(u64, u64)>,
    proxy: Option<u64>,
    this: Option<u64>,
}

impl CpuMeter {
    /// /proc's tick rate (USER_HZ), fixed at 100 on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;

    fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            began: Instant::now(),
            machine: Self::machine(),
            proxy: pid.and_then(Self::process),
            this: Self::process(std::process::id()),
        }
    }

    /// (busy, total) ticks over all CPUs.
    fn machine() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some((total - idle, total))
    }

    /// User plus system ticks of a process.
    fn process(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    fn stop(&self) -> CpuUse {
        let seconds = self.began.elapsed().as_secs_f64();
        let machine = self.machine.zip(Self::machine());
        let machine_busy = match machine {
            Some(((busy0, total0), (busy1, total1))) if total1 > total0 => {
                Some((busy1 - busy0) as f64 / (total1 - total0) as f64)
            }
            _ => None,
        };
        let ticks = |before: Option<u64>, pid: Option<u32>| match (before, pid.and_then(Self::process)) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        let proxy = ticks(self.proxy, self.pid);
        let this = ticks(self.this, Some(std::process::id()));
        // Whatever else kept the machine busy: other jobs on a shared machine.
        let others_seconds = match (machine, proxy, this) {
            (Some(((busy0, _), (busy1, _))), Some(proxy), Some(this)) => {
                Some((busy1 - busy0).saturating_sub(proxy + this) as f64 / Self::TICKS_PER_SECOND)
            }
            _ => None,
        };
        let proxy_seconds = proxy.map(|t| t as f64 / Self::TICKS_PER_SECOND);
        let load_seconds = this.map(|t| t as f64 / Self::TICKS_PER_SECOND);
        CpuUse { seconds, machine_busy, proxy_seconds, load_seconds, others_seconds }
    }
}

/// The most CPU that other processes took during any phase.
#[derive(Debug, Default)]
struct Noise {
    worst_cores: f64,
}

impl Noise {
    fn record(&mut self, cpu: &CpuUse) {
        if let Some(others) = cpu.others_seconds {
            self.worst_cores = self.worst_cores.max(others / cpu.seconds);
        }
    }
}

/// What a [`CpuMeter`] saw.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    seconds: f64,
    machine_busy: Option<f64>,
    /// CPU time the proxy process used (user plus system).
    proxy_seconds: Option<f64>,
    /// CPU time of this process: the clients and upstreams generating the load.
    load_seconds: Option<f64>,
    /// CPU time used by neither the proxy nor this process (kernel threads, other jobs).
    others_seconds: Option<f64>,
}

impl CpuUse {
    /// The peer's CPU time per unit of work, scaled (e.g. µs per op).
    fn peer_per(&self, units: f64, scale: f64) -> Option<f64> {
        Self::per(self.proxy_seconds, units, scale)
    }

    /// The load generator's (clients and upstreams) CPU time per unit of work, scaled.
    fn load_per(&self, units: f64, scale: f64) -> Option<f64> {
        Self::per(self.load_seconds, units, scale)
    }

    fn per(seconds: Option<f64>, units: f64, scale: f64) -> Option<f64> {
        seconds.filter(|_| units > 0.0).map(|cpu| cpu * scale / units)
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.machine_busy {
            Some(busy) => write!(f, "machine busy {:.0}%", busy * 100.0)?,
            None => f.write_str("machine busy ?")?,
        }
        if let Some(cpu) = self.proxy_seconds.filter(|c| *c > 0.0) {
            write!(f, ", proxy {:.2} cores", cpu / self.seconds)?;
        }
        if let Some(cpu) = self.others_seconds {
            write!(f, ", others {:.2} cores", cpu / self.seconds)?;
        }
        Ok(())
    }
}

/// Streams `bytes` through the echo server while reading them back
/// concurrently, checks every byte, then (with `half_close`) half-closes
/// and expects the end of stream to come back once everything has. Without
/// it (Squid closes a CONNECT tunnel on the client's half-close), it stops
/// reading after `bytes` and closes.
async fn bulk_echo(route: Route, bytes: u64, chunk: &Arc<[u8]>, half_close: bool) -> Result<()> {
    let (mut read, mut write) = route.open().await?.into_split();
    let chunk = Arc::clone(chunk);
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(chunk.len() as u64) as usize;
            tokio::time::timeout(OP_TIMEOUT, write.write_all(&chunk[..n]))
                .await
                .map_err(|_| "echo write stalled")??;
            sent += n as u64;
        }
        if half_close {
            write.shutdown().await?;
        }
        Ok::<_, Error>(write)
    });
    let mut buffer = vec![0u8; BULK_CHUNK];
    let mut received = 0u64;
    while half_close || received < bytes {
        let want = if half_close { BULK_CHUNK } else { (bytes - received).min(BULK_CHUNK as u64) as usize };
        let n = tokio::time::timeout(OP_TIMEOUT, read.read(&mut buffer[..want]))
            .await
            .map_err(|_| "echo read stalled")??;
        if n == 0 {
            break;
        }
        let start = received as usize;
        if !buffer[..n].iter().enumerate().all(|(i, b)| *b == pattern_byte((start + i) % BULK_CHUNK)) {
            return Err(format!("bulk echo via {route:?}: corrupted bytes after {received}").into());
        }
        received += n as u64;
    }
    drop(writer.await??);
    if received != bytes {
        return Err(format!("bulk echo via {route:?}: {received} bytes came back, {bytes} were sent").into());
    }
    Ok(())
}

/// Resident memory and descriptors of the proxy around many idle tunnels.
#[derive(Debug)]
struct Memory {
    tunnels: usize,
    before_kib: u64,
    idle_kib: u64,
    used_kib: u64,
    before_fds: usize,
    idle_fds: usize,
    used_fds: usize,
}

impl Memory {
    fn idle_kib_per_tunnel(&self) -> f64 {
        self.idle_kib.saturating_sub(self.before_kib) as f64 / self.tunnels as f64
    }

    fn used_kib_per_tunnel(&self) -> f64 {
        self.used_kib.saturating_sub(self.before_kib) as f64 / self.tunnels as f64
    }

    fn fds_per_tunnel(&self, fds: usize) -> f64 {
        fds.saturating_sub(self.before_fds) as f64 / self.tunnels as f64
    }
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS in /proc/<pid>/status")?;
    Ok(line.split_whitespace().nth(1).ok_or("malformed VmRSS")?.parse()?)
}

fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Waits until the proxy's RSS stops moving (three equal-ish readings) or `max` passes.
async fn settled_rss(pid: u32, max: Duration) -> Result<u64> {
    let deadline = Instant::now() + max;
    let mut last = vm_rss_kib(pid)?;
    let mut steady = 0;
    while Instant::now() < deadline && steady < 3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = vm_rss_kib(pid)?;
        steady = if now.abs_diff(last) <= 16 { steady + 1 } else { 0 };
        last = now;
    }
    Ok(last)
}

/// The soft limit on open files, from /proc (no libc here).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn idle_memory(plan: &Plan, spec: &PeerSpec, targets: &Targets) -> Result<Memory> {
    // Each idle tunnel holds two descriptors here (client, echo side) and two in the proxy.
    let needed = 2 * plan.idle_tunnels as u64 + 1_000;
    if let Some(limit) = open_files_limit().filter(|limit| *limit < needed) {
        return Err(format!("{} idle tunnels need `ulimit -n` >= {needed} (it is {limit})", plan.idle_tunnels).into());
    }
    // The smoke test checks the close lines of proxyd itself (not of an old build).
    let check_lines = !plan.full && matches!(spec, PeerSpec::Proxyd { name: "proxyd", .. });
    let mut peer = spec.start(targets, check_lines)?;
    let route = *peer.echo_routes.first().ok_or("no echo route")?;
    // Warm up (lazy initialisation, worker threads, allocator arenas), then measure.
    let warm = setup_phase(&[route], Duration::from_millis(200)).await?;
    if warm.ops == 0 {
        return Err("no warm-up tunnel completed".into());
    }
    let pid = peer.pid;
    let before_kib = settled_rss(pid, plan.settle_max).await?;
    let before_fds = fd_count(pid)?;
    if let Some(daemon) = peer.daemon() {
        daemon.skip_pending();
    }

    let groups = open_tunnels(&[route], &[], plan.idle_tunnels).await?;
    let tunnels: usize = groups.iter().map(Vec::len).sum();
    if tunnels != plan.idle_tunnels {
        return Err(format!("opened {tunnels} tunnels, wanted {}", plan.idle_tunnels).into());
    }
    let idle_kib = settled_rss(pid, plan.settle_max).await?;
    let idle_fds = fd_count(pid)?;
    println!(
        "idle {}: {tunnels} tunnels, RSS {before_kib} KiB -> {idle_kib} KiB, fds {before_fds} -> {idle_fds}, \
         {:.2} KiB per tunnel",
        spec.name(),
        idle_kib.saturating_sub(before_kib) as f64 / tunnels as f64
    );

    // One echo through every tunnel, then idle again: nothing from the burst may stay behind.
    let mut tasks = tokio::task::JoinSet::new();
    for mut group in groups {
        tasks.spawn(async move {
            let message = [7u8; ECHO_BYTES];
            for stream in &mut group {
                tokio::time::timeout(OP_TIMEOUT, echo_once(stream, &message)).await.map_err(|_| "echo timed out")??;
            }
            Ok::<_, Error>(group)
        });
    }
    let mut groups = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        groups.push(joined??);
    }
    let used_kib = settled_rss(pid, plan.settle_max).await?;
    let used_fds = fd_count(pid)?;
    println!("idle {} after one echo each: RSS {used_kib} KiB, fds {used_fds}", spec.name());

    drop(groups);
    if let Some(proxy) = peer.daemon().filter(|_| check_lines) {
        // Every tunnel is counted: closing them gives one close line each with the echo's bytes.
        for _ in 0..tunnels {
            let close = proxy.wait_for(|v| v["message"] == "CANONICAL-PROXY-CN-CLOSE")?;
            assert_eq!(close["bytes_out"].as_u64(), Some(ECHO_BYTES as u64), "idle tunnel close line: {close}");
            assert_eq!(close["bytes_in"].as_u64(), Some(ECHO_BYTES as u64), "idle tunnel close line: {close}");
        }
    }
    Ok(Memory { tunnels, before_kib, idle_kib, used_kib, before_fds, idle_fds, used_fds })
}

/// Opens `total` tunnels, [`CLIENTS`] at a time: client `i` uses
/// `routes[i % len]` from `sources[i % len]` (or any source when empty).
/// Returns them grouped by client.
async fn open_tunnels(routes: &[Route], sources: &[IpAddr], total: usize) -> Result<Vec<Vec<TcpStream>>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let next = Arc::clone(&next);
        let route = *routes.get(client % routes.len().max(1)).ok_or("no route")?;
        let source = sources.get(client % sources.len().max(1)).copied();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let stream = tokio::time::timeout(OP_TIMEOUT, route.open_from(source))
                    .await
                    .map_err(|_| format!("opening tunnel {} via {route:?} timed out", mine.len()))??;
                mine.push(stream);
            }
            Ok::<_, Error>(mine)
        });
    }
    let mut groups = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        groups.push(joined??);
    }
    Ok(groups)
}
