//! `idle100k`: proxyd holding 100,000 idle tunnels (bench mode only, and only
//! when named: `cargo bench -p proxyd --bench load -- idle100k`).
//!
//! It raises its own `RLIMIT_NOFILE` (`prlimit` on itself) and proxyd's
//! (`ulimit -n` in a `sh -c` wrapper that `exec`s it), opens the tunnels
//! from 16 loopback source addresses to 8 echo servers so no address pair
//! runs out of ephemeral ports, and reports:
//!
//! - proxyd's RSS per idle tunnel;
//! - tunnel setup rate and p99 with none held and with all of them held;
//! - while they are held, the time from rename + SIGHUP of a
//!   100,000-pattern table to the first decision by it, and the setup p99
//!   during those reloads against the p99 just before, without reloads.
//!
//! `LOAD_IDLE_TUNNELS=N` holds N instead. If the descriptor limits cannot
//! be raised that far, it holds as many as they allow and says so.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use egress_policy::acl;
use egress_policy::policy::ActionSet;
use egress_policy::table::{self, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    Daemon, ECHO_BYTES, Latencies, Launch, OP_TIMEOUT, Result, Route, SetupPhase, Targets, echo_once, fd_count,
    open_files_limit, open_tunnels, settled_rss, setup_phase,
};

const DEFAULT_TUNNELS: usize = 100_000;
/// Roles in the reloaded table; 20 patterns each (half exact, half wildcard).
const ROLES: usize = 5_000;
const PATTERNS_PER_ROLE: usize = 20;
/// Descriptors beyond two per tunnel (listeners, setup clients, the runtime).
const FD_MARGIN: u64 = 1_000;
/// Source addresses of the held tunnels: 127.0.5.1 to 127.0.5.16.
const SOURCES: u8 = 16;
const PHASE: Duration = Duration::from_secs(5);
/// A name the first table denies and the second allows (the address stage
/// then denies it: a documentation address), so the 403's text tells which
/// table decided.
const PROBE: &str = "192.0.2.1:443";

/// What the idle100k part measured.
#[derive(Debug)]
pub struct ScaleReport {
    wanted: usize,
    tunnels: usize,
    limit_note: Option<String>,
    open_time: Duration,
    before_kib: u64,
    idle_kib: u64,
    fds: (usize, usize),
    empty: SetupPhase,
    held: SetupPhase,
    held_quiet: SetupPhase,
    during_reloads: SetupPhase,
    reloads: Vec<Duration>,
    table_kib: usize,
    load_average: String,
}

impl ScaleReport {
    pub fn print(&self) {
        let kib = self.idle_kib.saturating_sub(self.before_kib) as f64 / self.tunnels.max(1) as f64;
        println!("idle100k: {} idle tunnels held (wanted {})", self.tunnels, self.wanted);
        if let Some(note) = &self.limit_note {
            println!("  {note}");
        }
        println!(
            "  opened in {:.1} s; proxyd RSS {} KiB -> {} KiB, fds {} -> {}: {kib:.2} KiB per idle tunnel \
             (goal <= 4 KiB) {}",
            self.open_time.as_secs_f64(),
            self.before_kib,
            self.idle_kib,
            self.fds.0,
            self.fds.1,
            if kib <= 4.0 { "OK" } else { "MISSED" }
        );
        println!("  setup with none held:       {}", self.empty.describe());
        println!("  setup with all held:        {}", self.held.describe());
        let mut reloads = self.reloads.clone();
        reloads.sort_unstable();
        let sorted = Latencies(reloads);
        println!(
            "  reload of a {}-pattern table ({} KiB), rename + SIGHUP -> first decision by it, while held: \
             p50 {} max {} over {}",
            ROLES * PATTERNS_PER_ROLE,
            self.table_kib,
            super::ms(sorted.quantile(0.5)),
            super::ms(sorted.quantile(1.0)),
            self.reloads.len()
        );
        println!("  setup while held, no reload: {}", self.held_quiet.describe());
        println!(
            "  setup while held, reloading: {} (rate x{:.2} of without)",
            self.during_reloads.describe(),
            self.during_reloads.rate() / self.held_quiet.rate()
        );
        let impact = self.during_reloads.latencies.quantile(0.99).as_secs_f64()
            - self.held_quiet.latencies.quantile(0.99).as_secs_f64();
        println!(
            "  reload impact on setup p99: {:+.2} ms (goal < 10 ms) {}",
            impact * 1e3,
            if impact < 0.010 { "OK" } else { "MISSED" }
        );
        println!("  load average after the idle100k part: {}", self.load_average);
    }
}

/// The 100,000-pattern table; the default rule allows the echo servers and,
/// in the `allow_probe` variant, the probe's name too.
fn table_bytes(allow_probe: bool, targets: &Targets) -> Result<Vec<u8>> {
    let mut yaml = String::from("version: v1\nservices:\n");
    for r in 0..ROLES {
        let _ = writeln!(yaml, "  - name: svc-{r:05}\n    project: p\n    action: enforce\n    allowed_domains:");
        for j in 0..PATTERNS_PER_ROLE {
            if j % 2 == 0 {
                let _ = writeln!(yaml, "      - api-{r:05}-{j}.example-{r:05}.com");
            } else {
                let _ = writeln!(yaml, "      - \"*.hooks-{r:05}-{j}.example.net\"");
            }
        }
    }
    let mut allowed: Vec<String> = targets.allowed().iter().map(|a| format!("\"{}\"", a.ip())).collect();
    allowed.dedup();
    if allow_probe {
        allowed.push("192.0.2.1".to_owned());
    }
    let _ =
        write!(yaml, "default:\n  project: bench\n  action: enforce\n  allowed_domains: [{}]\n", allowed.join(", "));
    let checked = acl::check_source("scale.yaml", &yaml, ActionSet::default());
    let policy = checked.policy.ok_or_else(|| format!("scale ACL does not compile: {:?}", checked.diagnostics))?;
    Ok(table::encode(&policy, &Metadata::for_source(Path::new("scale.yaml"), yaml.as_bytes(), ActionSet::default())))
}

/// Which table decided the probe: `true` if its name was allowed.
async fn probe(proxy: SocketAddr) -> Result<bool> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.write_all(format!("CONNECT {PROBE} HTTP/1.1\r\nHost: {PROBE}\r\n\r\n").as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(OP_TIMEOUT, stream.read_to_end(&mut answer)).await.map_err(|_| "probe timed out")??;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 403") {
        return Err(format!("probe answered {text}").into());
    }
    Ok(text.contains("denied by rule"))
}

/// Raises this process's descriptor limit (soft and hard) to `fds` with
/// `prlimit`; needs root (or CAP_SYS_RESOURCE) beyond the hard limit.
fn raise_own_fd_limit(fds: u64) -> Option<String> {
    let pid = std::process::id().to_string();
    let result = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={fds}:{fds}")]).output();
    match result {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(error) => Some(format!("prlimit: {error}")),
    }
}

pub async fn idle_100k(targets: &Targets) -> Result<ScaleReport> {
    let wanted = match std::env::var("LOAD_IDLE_TUNNELS") {
        Ok(n) => n.parse().map_err(|_| format!("LOAD_IDLE_TUNNELS={n:?} is not a number"))?,
        Err(_) => DEFAULT_TUNNELS,
    };
    // Two descriptors per tunnel here (client, echo side) and two in proxyd.
    let needed = 2 * wanted as u64 + FD_MARGIN;
    let refused = raise_own_fd_limit(needed);
    let limit = open_files_limit().unwrap_or(0);
    let (tunnels, limit_note) = if limit >= needed {
        (wanted, None)
    } else {
        let most = (limit.saturating_sub(FD_MARGIN) / 2) as usize;
        let why = refused.unwrap_or_default();
        (most, Some(format!("descriptor limit {limit} < {needed} ({why}): holding {most} instead of {wanted}")))
    };
    if tunnels == 0 {
        return Err(format!("idle100k: no room for tunnels under a descriptor limit of {limit}").into());
    }
    let fd_limit = 2 * tunnels as u64 + FD_MARGIN;

    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("scale.table");
    let tables = [table_bytes(false, targets)?, table_bytes(true, targets)?];
    let table_kib = tables[0].len() / 1024;
    table::write_atomically(&policy, &tables[0])?;
    let binary = std::env::var_os("PROXYD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_proxyd").into());
    let launch = Launch {
        fd_limit: Some(fd_limit),
        args: [
            "--max-concurrent-connect-tunnels",
            &(tunnels + 10_000).to_string(),
            "--idle-timeout",
            "0s",
            // Reloads only on SIGHUP, so each one is timed from its signal.
            "--policy-reload-debounce",
            "600s",
            "--policy-check-interval",
            "0s",
        ]
        .map(str::to_owned)
        .to_vec(),
    };
    let daemon = Daemon::start(Path::new(&binary), &policy, &targets.allowed(), false, &launch)?;
    let routes: Vec<Route> =
        targets.echo.iter().map(|echo| Route::Proxy { proxy: daemon.addr, target: *echo }).collect();
    let pid = daemon.pid();
    if probe(daemon.addr).await? {
        return Err("the first table allowed the probe".into());
    }

    // Warm up, then setup with nothing held.
    setup_phase(&routes, Duration::from_millis(500)).await?;
    let empty = setup_phase(&routes, PHASE).await?;
    let before_kib = settled_rss(pid, Duration::from_secs(10)).await?;
    let before_fds = fd_count(pid)?;

    let sources: Vec<IpAddr> = (1..=SOURCES).map(|n| IpAddr::from([127, 0, 5, n])).collect();
    let opening = Instant::now();
    let mut groups = open_tunnels(&routes, &sources, tunnels).await?;
    let open_time = opening.elapsed();
    let held: usize = groups.iter().map(Vec::len).sum();
    if held != tunnels {
        return Err(format!("opened {held} tunnels, wanted {tunnels}").into());
    }
    let idle_kib = settled_rss(pid, Duration::from_secs(30)).await?;
    let idle_fds = fd_count(pid)?;
    println!(
        "idle100k: {held} tunnels open in {:.1} s; RSS {before_kib} KiB -> {idle_kib} KiB, fds {before_fds} -> {idle_fds}",
        open_time.as_secs_f64()
    );

    let held_phase = setup_phase(&routes, PHASE).await?;
    println!("idle100k: setup while held: {}", held_phase.describe());

    // Reloads of the big table while they are held: quiet phase, then a phase with reloads back to back.
    let held_quiet = setup_phase(&routes, PHASE).await?;
    let proxy = daemon.addr;
    let pid_text = pid.to_string();
    let reloader = tokio::spawn(async move {
        let deadline = Instant::now() + PHASE;
        let mut times = Vec::new();
        let mut current = false;
        while Instant::now() < deadline {
            let next = !current;
            let started = Instant::now();
            table::write_atomically(&policy, &tables[usize::from(next)])?;
            let status = Command::new("kill").args(["-HUP", &pid_text]).status()?;
            if !status.success() {
                return Err("kill -HUP failed".into());
            }
            while probe(proxy).await? != next {
                if started.elapsed() > Duration::from_secs(30) {
                    return Err("reload never observed".into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            times.push(started.elapsed());
            current = next;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<_, super::Error>(times)
    });
    let during_reloads = setup_phase(&routes, PHASE).await?;
    let reloads = reloader.await??;

    // The held tunnels still work: one echo through every thousandth.
    let message = [9u8; ECHO_BYTES];
    let mut checked = 0usize;
    for stream in groups.iter_mut().flatten().step_by(1_000) {
        tokio::time::timeout(OP_TIMEOUT, echo_once(stream, &message)).await.map_err(|_| "echo timed out")??;
        checked += 1;
    }
    println!("idle100k: echo checked through {checked} of the held tunnels");
    drop(daemon);
    Ok(ScaleReport {
        wanted,
        tunnels,
        limit_note,
        open_time,
        before_kib,
        idle_kib,
        fds: (before_fds, idle_fds),
        empty,
        held: held_phase,
        held_quiet,
        during_reloads,
        reloads,
        table_kib,
        load_average: super::load_average(),
    })
}
