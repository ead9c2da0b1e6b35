//! The soak's stall phase (issue 24): a third daemon, under its own
//! steady load beside the others, whose log reader stops reading for
//! [`STALL`] and then resumes, as a blocked container log driver or a
//! restarting log shipper would.
//!
//! Same assertions as the rest of the soak: tunnels opened before the stall
//! carry checksummed rounds throughout it, intact and without slowing down;
//! every new request is answered within the stall timeout plus a margin,
//! with its documented status (200, or 503 with "decision log is
//! unavailable": the daemon runs with the default `--log-stall-policy
//! refuse`); `/readyz` is 503 and `proxyd_log_sink_stalled` 1 during the
//! stall, 200 again soon after the reader resumes; one recovery line; and
//! after the stall, the decision lines delivered plus
//! `proxyd_log_lines_dropped_total{line="decision"}` equal the decisions
//! made (the sum of `proxyd_requests_total`). Everything is on loopback.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Proxyd, XorShift, admin_get, exchange, metric, proxyd_command, read_head, scrape, terminate};

/// How long the log reader pauses.
pub(super) const STALL: Duration = Duration::from_secs(20);
/// Load before the stall, and after it.
const BEFORE: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(8);
/// The daemon's `--log-stall-timeout` (the default), and the margin a request may take beyond it.
const STALL_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Clients opening tunnels in a loop, and tunnels held open across the stall.
const CLIENTS: u64 = 6;
const HELD: u64 = 4;

/// What the phase measured: the rows and checks for the soak's table.
pub(super) struct StallReport {
    pub rows: Vec<(String, String)>,
    pub checks: Vec<(bool, String)>,
    pub problems: Vec<String>,
}

#[derive(Default)]
struct LogSeen {
    decisions: u64,
    recovered: Vec<String>,
    unexplained: Vec<String>,
    not_json: u64,
}

#[derive(Default)]
struct Seen {
    tunnels: AtomicU64,
    refused: AtomicU64,
    refused_outside_stall: AtomicU64,
    slowest_answer_ms: AtomicU64,
    held_rounds: AtomicU64,
    slowest_round_ms: AtomicU64,
    bytes_verified: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Seen {
    fn fail(&self, what: String) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(format!("stall phase: {what}"));
        }
    }
}

/// Reads the daemon's stderr line by line, except while `paused`.
fn read_log(
    stderr: std::process::ChildStderr,
    paused: &AtomicBool,
    log: &Mutex<LogSeen>,
    first: std::sync::mpsc::Sender<String>,
) {
    let mut reader = std::io::BufReader::with_capacity(4096, stderr);
    let mut first = Some(first);
    let mut line = Vec::new();
    loop {
        while paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if let Some(sender) = &first {
            let _ = sender.send(text.clone());
            if text.contains("\"proxyd listening\"") {
                first = None;
            }
        }
        let mut log = log.lock().unwrap();
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            log.not_json += 1;
            continue;
        };
        let level = v["level"].as_str().unwrap_or_default();
        match v["message"].as_str().unwrap_or_default() {
            "CANONICAL-PROXY-DECISION" => log.decisions += 1,
            "log sink recovered: writes are completing again" => log.recovered.push(text),
            _ if (level == "WARN" || level == "ERROR") && log.unexplained.len() < 20 => log.unexplained.push(text),
            _ => {}
        }
    }
}

/// A trace id of the longest kind (128 bytes): long lines fill the log sooner.
fn trace(n: u64) -> String {
    format!("stall-{n:010}-{}", "x".repeat(111))
}

fn max_ms(slot: &AtomicU64, took: Duration) {
    slot.fetch_max(took.as_millis() as u64, Ordering::Relaxed);
}

/// One client: CONNECT, checksummed rounds through a 200, check a 503's text, again.
async fn client(
    proxy: SocketAddr,
    target: String,
    id: u64,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let trace = trace(id * 1_000_000 + n);
        let started = Instant::now();
        let answered = async {
            let mut stream = TcpStream::connect(proxy).await.map_err(|e| format!("connect to proxy: {e}"))?;
            let head =
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Smokescreen-Trace-ID: {trace}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.map_err(|e| format!("send head: {e}"))?;
            let (status, headers) = read_head(&mut stream).await?;
            Ok::<_, String>((status, headers, stream))
        };
        let (status, headers, mut stream) = match tokio::time::timeout(ANSWER_WITHIN, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                seen.fail(format!("{trace}: {e}"));
                continue;
            }
            Err(_) => {
                seen.fail(format!("{trace}: no answer within {ANSWER_WITHIN:?}"));
                continue;
            }
        };
        max_ms(&seen.slowest_answer_ms, started.elapsed());
        match status {
            200 => match exchange(&mut stream, id * 7919 + n, 2, 2048).await {
                Ok(bytes) => {
                    seen.bytes_verified.fetch_add(bytes, Ordering::Relaxed);
                    seen.tunnels.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => seen.fail(format!("{trace}: tunnel: {e}")),
            },
            503 => {
                let error = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("x-smokescreen-error"));
                if !error.is_some_and(|(_, v)| v.contains("decision log is unavailable")) {
                    seen.fail(format!("{trace}: 503 without the log-unavailable reason: {headers:?}"));
                }
                seen.refused.fetch_add(1, Ordering::Relaxed);
                if !stalled.load(Ordering::SeqCst) {
                    seen.refused_outside_stall.fetch_add(1, Ordering::Relaxed);
                }
            }
            other => seen.fail(format!("{trace}: status {other}")),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A tunnel opened before the stall: checksummed rounds every 100 ms until `stop`.
async fn held_tunnel(proxy: SocketAddr, target: String, id: u64, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let trace = trace(9_000_000 + id);
    let opened = async {
        let mut stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Smokescreen-Trace-ID: {trace}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        let (status, _) = read_head(&mut stream).await?;
        if status == 200 { Ok(stream) } else { Err(format!("status {status}")) }
    };
    let mut stream = match opened.await {
        Ok(stream) => stream,
        Err(e) => return seen.fail(format!("held tunnel {id}: {e}")),
    };
    let mut rng = XorShift(id * 104_729 + 1);
    while !stop.load(Ordering::SeqCst) {
        let size = 1 + (rng.next() % 4096) as usize;
        let mut out = vec![0u8; size];
        rng.fill(&mut out);
        let started = Instant::now();
        let round = async {
            stream.write_all(&out).await?;
            let mut back = vec![0u8; size];
            stream.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        match tokio::time::timeout(ANSWER_WITHIN, round).await {
            Ok(Ok(back)) if back == out => {
                max_ms(&seen.slowest_round_ms, started.elapsed());
                seen.held_rounds.fetch_add(1, Ordering::Relaxed);
                seen.bytes_verified.fetch_add(size as u64, Ordering::Relaxed);
            }
            Ok(Ok(_)) => return seen.fail(format!("held tunnel {id}: {size} bytes came back altered")),
            other => return seen.fail(format!("held tunnel {id}: round failed: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(e) = exchange(&mut stream, id, 1, 1024).await {
        seen.fail(format!("held tunnel {id}: closing: {e}"));
    }
}

/// Runs the phase: about `BEFORE + STALL + AFTER` plus the drain.
pub(super) async fn run(binary: PathBuf, policy: &Path, dns: SocketAddr, echo: SocketAddr) -> StallReport {
    let mut child = proxyd_command(binary, false)
        .args(["--listen-ip", "127.0.0.1", "--listen-port", "0", "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(policy)
        .args(["--resolver-address", &dns.to_string(), "--allow-missing-role", "--workers", "2"])
        .args(["--allow-address", &echo.to_string()])
        .args(["--log-stall-timeout", &format!("{}ms", STALL_TIMEOUT.as_millis())])
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("PROXY_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the stall-phase proxyd");
    let stderr = child.stderr.take().unwrap();
    let daemon = Proxyd { child };
    let paused = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(LogSeen::default()));
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = {
        let (paused, log) = (Arc::clone(&paused), Arc::clone(&log));
        std::thread::spawn(move || read_log(stderr, &paused, &log, first_tx))
    };
    let listening = super::wait_listening(&first_rx);
    let proxy: SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = listening["admin"].as_str().unwrap().parse().unwrap();
    let target = format!("echo.soak.test:{}", echo.port());

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..HELD {
        tasks.spawn(held_tunnel(proxy, target.clone(), id, Arc::clone(&seen), Arc::clone(&stop)));
    }
    for id in 0..CLIENTS {
        let (seen, stop, stalled) = (Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&stalled));
        tasks.spawn(client(proxy, target.clone(), id + 1, seen, stop, stalled));
    }
    tokio::time::sleep(BEFORE).await;

    // The stall: the reader stops; /readyz and the gauge are probed throughout.
    stalled.store(true, Ordering::SeqCst);
    paused.store(true, Ordering::SeqCst);
    let stall_started = Instant::now();
    let (mut not_ready_seen, mut gauge_seen, mut buffer_peak) = (false, false, 0f64);
    let mut first_not_ready = None;
    while stall_started.elapsed() < STALL {
        if let Some((503, body)) = admin_get(admin, "/readyz").await
            && body.contains("log sink is stalled")
        {
            not_ready_seen = true;
            first_not_ready.get_or_insert(stall_started.elapsed());
        }
        if let Some(s) = scrape(admin).await {
            gauge_seen |= metric(&s, "proxyd_log_sink_stalled") == 1.0;
            buffer_peak = buffer_peak.max(metric(&s, "proxyd_log_buffer_bytes"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let healthz_during = admin_get(admin, "/healthz").await.map(|(status, _)| status);
    paused.store(false, Ordering::SeqCst);
    let resumed = Instant::now();
    let mut ready_again = None;
    while resumed.elapsed() < Duration::from_secs(10) {
        if let Some((200, _)) = admin_get(admin, "/readyz").await {
            ready_again = Some(resumed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Refusals still in flight when the reader resumed are the stall's.
    tokio::time::sleep(ANSWER_WITHIN).await;
    stalled.store(false, Ordering::SeqCst);
    tokio::time::sleep(AFTER.saturating_sub(ANSWER_WITHIN)).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            seen.fail(format!("a client task panicked: {e}"));
        }
    }

    // The accounting, once every line is written: the load is over, the buffer empty.
    let drained = Instant::now();
    let mut last = None;
    while drained.elapsed() < Duration::from_secs(15) {
        if let Some(s) = scrape(admin).await {
            let empty = metric(&s, "proxyd_log_buffer_bytes") == 0.0;
            last = Some(s);
            if empty {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.expect("the stall daemon's /metrics answers");
    let made: f64 = last
        .samples
        .iter()
        .filter(|(series, _)| series.starts_with("proxyd_requests_total{"))
        .map(|(_, v)| v.parse::<f64>().unwrap_or(f64::NAN))
        .sum();
    let dropped = metric(&last, "proxyd_log_lines_dropped_total{line=\"decision\"}");
    let dropped_closes = metric(&last, "proxyd_log_lines_dropped_total{line=\"close\"}");
    let refused_metric = metric(&last, "proxyd_requests_total{outcome=\"log_stalled\"}");
    let mut daemon = daemon;
    let exit = terminate(&mut daemon.child, Duration::from_secs(20));
    reader.join().unwrap();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let delivered = log.decisions as f64;

    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let failures = seen.failures.lock().unwrap().clone();
    let slowest_answer = Duration::from_millis(n(&seen.slowest_answer_ms));
    let slowest_round = Duration::from_millis(n(&seen.slowest_round_ms));
    let rows = vec![
        (
            "stall phase: log reader paused".to_owned(),
            format!("{STALL:?} under load ({CLIENTS} clients, {HELD} held tunnels), --log-stall-policy refuse"),
        ),
        (
            "stall phase: tunnels / refused 503 log_stalled".to_owned(),
            format!("{} / {} (metric {refused_metric})", n(&seen.tunnels), n(&seen.refused)),
        ),
        (
            "stall phase: decisions made / lines delivered / dropped".to_owned(),
            format!("{made} / {delivered} / {dropped} (close lines dropped {dropped_closes})"),
        ),
        ("stall phase: log buffer peak bytes".to_owned(), format!("{buffer_peak}")),
        (
            "stall phase: /readyz 503 after / 200 again after the reader resumed".to_owned(),
            format!("{first_not_ready:?} / {ready_again:?}"),
        ),
        ("stall phase: bytes verified".to_owned(), n(&seen.bytes_verified).to_string()),
    ];
    let checks = vec![
        (failures.is_empty(), format!("stall phase: client-side failures: {}", failures.len())),
        (
            slowest_answer < ANSWER_WITHIN,
            format!("stall phase: slowest answer {slowest_answer:?} (< {ANSWER_WITHIN:?}: stall timeout + margin)"),
        ),
        (
            n(&seen.held_rounds) > HELD * 100 && slowest_round < Duration::from_secs(1),
            format!(
                "stall phase: held tunnels {} checksummed rounds through the stall, slowest {slowest_round:?}",
                n(&seen.held_rounds)
            ),
        ),
        (
            n(&seen.refused_outside_stall) == 0,
            format!("stall phase: 503s outside the stall: {}", n(&seen.refused_outside_stall)),
        ),
        (
            not_ready_seen && gauge_seen && healthz_during == Some(200),
            format!(
                "stall phase: /readyz 503 {not_ready_seen}, proxyd_log_sink_stalled 1 {gauge_seen}, /healthz {healthz_during:?} during the stall"
            ),
        ),
        (
            ready_again.is_some_and(|t| t < Duration::from_secs(5)),
            format!("stall phase: /readyz 200 again {ready_again:?} after the reader resumed"),
        ),
        (
            delivered + dropped == made && made > 0.0,
            format!("stall phase: decision lines delivered {delivered} + dropped {dropped} == decisions made {made}"),
        ),
        (
            refused_metric == n(&seen.refused) as f64,
            format!("stall phase: log_stalled outcomes {refused_metric} == 503s seen {}", n(&seen.refused)),
        ),
        (
            log.recovered.len() == 1 && log.unexplained.is_empty() && log.not_json == 0,
            format!(
                "stall phase: recovery lines {}, other WARN/ERROR {}, non-JSON {}",
                log.recovered.len(),
                log.unexplained.len(),
                log.not_json
            ),
        ),
        (exit.is_some_and(|s| s.success()), format!("stall phase: SIGTERM exit {exit:?}")),
    ];
    let mut problems = failures;
    problems.extend(log.unexplained);
    problems.extend(log.recovered.into_iter().map(|l| format!("stall phase recovery line: {l}")));
    StallReport { rows, checks, problems }
}
