// benchmark harness: a panic is a failed run
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

//! Reload latency and cost, against the real `proxyd` binary on loopback.
//!
//! * rename → first request decided by the new table, with the default
//!   debounce (file events) and with SIGHUP (file events held back by a
//!   long debounce), p50 and p99 over 100 reloads each;
//! * the same with two 100,000-pattern tables (what a reload costs);
//! * tunnel setup rate while the policy is replaced every 50 ms, as a ratio
//!   of the rate without reloads, measured in the same run.
//!
//! No DNS and no connection leaves loopback: the decision is read from the
//! 403 text (name-stage denial vs address-stage denial of a documentation
//! address), and the setup-rate upstream is an echo server on 127.0.0.2.
//! Under `cargo test` (no `--bench`) it runs a short smoke version.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egress_policy::acl;
use egress_policy::policy::ActionSet;
use egress_policy::table::{self, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Table `flag` decides `192.0.2.1` at the name stage: `true` allows it (so
/// the address stage denies it: documentation range), `false` denies it.
fn table_bytes(allow_probe: bool, extra_roles: usize, upstream: SocketAddr) -> Vec<u8> {
    let mut yaml = String::from("version: v1\nservices:\n");
    for r in 0..extra_roles {
        let _ = writeln!(yaml, "  - name: svc-{r:05}\n    project: p\n    action: enforce\n    allowed_domains:");
        for j in 0..20 {
            if j % 2 == 0 {
                let _ = writeln!(yaml, "      - api-{r:05}-{j}.example-{r:05}.com");
            } else {
                let _ = writeln!(yaml, "      - \"*.hooks-{r:05}-{j}.example.net\"");
            }
        }
    }
    if extra_roles == 0 {
        yaml.push_str("  []\n");
        yaml = yaml.replace("services:\n  []\n", "services: []\n");
    }
    let probe = if allow_probe { "192.0.2.1, " } else { "" };
    let _ = write!(
        yaml,
        "default:\n  project: bench\n  action: enforce\n  allowed_domains: [{probe}\"{}\"]\n",
        upstream.ip()
    );
    let checked = acl::check_source("bench.yaml", &yaml, ActionSet::default());
    let policy = checked.policy.unwrap_or_else(|| panic!("{:?}", checked.diagnostics.first()));
    table::encode(&policy, &Metadata::for_source(Path::new("bench.yaml"), yaml.as_bytes(), ActionSet::default()))
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(policy: &Path, upstream: SocketAddr, extra: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxyd"))
            .args(["--listen-ip", "127.0.0.1", "--listen-port", "0", "--allow-missing-role"])
            .args(["--policy", policy.to_str().unwrap(), "--allow-address", &upstream.to_string()])
            .args(["--max-concurrent-connect-tunnels", "100000"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn proxyd");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("proxyd exited before listening").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["message"] == "proxyd listening" {
                break v["listen"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Daemon { child, addr }
    }

    fn hup(&self) {
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which table decided the probe: `true` if the name stage allowed it.
async fn probe(proxy: SocketAddr) -> bool {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"CONNECT 192.0.2.1:443 HTTP/1.1\r\nHost: 192.0.2.1:443\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    text.contains("denied by rule")
}

fn replace(path: &Path, bytes: &[u8]) {
    table::write_atomically(path, bytes).unwrap();
}

/// Reloads `rounds` times; returns rename-to-first-new-decision latencies.
async fn reload_latencies(
    daemon: &Daemon,
    path: &Path,
    tables: &[Vec<u8>; 2],
    rounds: usize,
    sighup: bool,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(rounds);
    let mut current = probe(daemon.addr).await;
    for _ in 0..rounds {
        let next = !current;
        let bytes = if next { &tables[1] } else { &tables[0] };
        let started = Instant::now();
        replace(path, bytes);
        if sighup {
            daemon.hup();
        }
        loop {
            if probe(daemon.addr).await == next {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "reload never observed");
        }
        latencies.push(started.elapsed());
        current = next;
        // Let the directory go quiet so the next round measures one reload.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut xs: Vec<Duration>, target_p99: Option<Duration>) -> String {
    xs.sort();
    let (p50, p99) = (percentile(&xs, 0.5), percentile(&xs, 0.99));
    let verdict = match target_p99 {
        Some(t) if p99 <= t => format!(" (target p99 <= {} ms) OK", t.as_millis()),
        Some(t) => format!(" (target p99 <= {} ms) MISSED", t.as_millis()),
        None => String::new(),
    };
    format!("{name}: p50 {:.1} ms, p99 {:.1} ms over {}{verdict}", ms(p50), ms(p99), xs.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Tunnel setups per second with 16 concurrent clients for `time`.
async fn setup_rate(proxy: SocketAddr, upstream: SocketAddr, time: Duration) -> f64 {
    let deadline = Instant::now() + time;
    let target = upstream.to_string();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut s = TcpStream::connect(proxy).await.unwrap();
                s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
                let mut head = [0u8; 39];
                s.read_exact(&mut head).await.unwrap();
                assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
                s.write_all(&[7u8; 64]).await.unwrap();
                let mut back = [0u8; 64];
                s.read_exact(&mut back).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / time.as_secs_f64()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(bench));
}

async fn run(bench: bool) {
    let rounds = if bench { 100 } else { 3 };
    let big_roles = if bench { 5_000 } else { 50 };
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("policy.bin");
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(echo_server(listener));

    let small = [table_bytes(false, 0, upstream), table_bytes(true, 0, upstream)];
    let mut report = Vec::new();

    replace(&path, &small[0]);
    let daemon = Daemon::start(&path, upstream, &[]);
    report.push(summary(
        "rename -> first decision, default debounce (100 ms)",
        reload_latencies(&daemon, &path, &small, rounds, false).await,
        Some(Duration::from_millis(250)),
    ));
    drop(daemon);

    replace(&path, &small[0]);
    let daemon = Daemon::start(&path, upstream, &["--policy-reload-debounce", "600s", "--policy-check-interval", "0s"]);
    report.push(summary(
        "rename + SIGHUP -> first decision",
        reload_latencies(&daemon, &path, &small, rounds, true).await,
        Some(Duration::from_millis(50)),
    ));

    // Setup rate with and without a reload every 50 ms, interleaved.
    let phase = if bench { Duration::from_secs(3) } else { Duration::from_millis(300) };
    let mut quiet = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..if bench { 3 } else { 1 } {
        quiet.push(setup_rate(daemon.addr, upstream, phase).await);
        let stop = Instant::now() + phase;
        let reloader = {
            let path = path.clone();
            let tables = small.clone();
            let pid = daemon.child.id().to_string();
            tokio::spawn(async move {
                let mut i = 0usize;
                while Instant::now() < stop {
                    replace(&path, &tables[i % 2]);
                    let _ = Command::new("kill").args(["-HUP", &pid]).status();
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                i
            })
        };
        busy.push(setup_rate(daemon.addr, upstream, phase).await);
        let reloads = reloader.await.unwrap();
        assert!(reloads > 0);
    }
    drop(daemon);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (quiet, busy) = (median(quiet), median(busy));
    let ratio = busy / quiet;
    report.push(format!(
        "setup rate during reloads every 50 ms: {busy:.0}/s vs {quiet:.0}/s without, ratio {ratio:.2} (target: no measurable dip, >= 0.9) {}",
        if ratio >= 0.9 { "OK" } else { "MISSED" }
    ));

    // Reload cost with 100k-pattern tables (SIGHUP, so debounce does not count).
    let big = [table_bytes(false, big_roles, upstream), table_bytes(true, big_roles, upstream)];
    replace(&path, &big[0]);
    let daemon = Daemon::start(&path, upstream, &["--policy-reload-debounce", "600s", "--policy-check-interval", "0s"]);
    report.push(summary(
        &format!(
            "rename + SIGHUP -> first decision, {}-pattern table ({} KiB)",
            big_roles * 20 + 2,
            big[0].len() / 1024
        ),
        reload_latencies(&daemon, &path, &big, if bench { 20 } else { 2 }, true).await,
        None,
    ));
    drop(daemon);

    println!("\nreload benchmark (proxyd binary on loopback){}", if bench { "" } else { " — smoke run" });
    for line in report {
        println!("  {line}");
    }
}
