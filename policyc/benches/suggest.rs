//! `policyc suggest` and `coverage` on big decision logs, through the real
//! binary: 1,000,000 mixed proxyd/Smokescreen lines (10,000 distinct hosts
//! over 200 roles, plus other log lines) written to a temp file, timed
//! (wall) and measured (peak RSS via `/usr/bin/time -f %M` when present).
//! Then 10,000,000 lines through stdin, generated on the fly, to show that
//! memory follows distinct (role, host) pairs rather than lines.
//!
//! Targets (issue 14): ≤ 3 s and ≤ 200 MiB for 1M lines, for both commands.
//!
//! Under `cargo bench` (`--bench` given) the full run happens. Under `cargo
//! test --benches` only a 10,000-line log is run once through both commands
//! (and checked), so the test suite stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a benchmark: a panic is a failure

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLES: usize = 200;
const HOSTS: usize = 10_000;

fn benchmark_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"))
}

/// 200 report-mode services, each already allowing a few of its hosts.
fn policy_text() -> String {
    let mut p = String::from("version: v1\nservices:\n");
    for r in 0..ROLES {
        p.push_str(&format!(
            "  - name: role-{r}\n    project: p{r}\n    action: report\n    allowed_domains:\n      - h{r}.svc{r}.example.com\n      - \"*.static{r}.example.net\"\n"
        ));
    }
    p.push_str("default:\n  project: other\n  action: enforce\nglobal_deny_list:\n  - \"*.evil.example\"\n");
    p
}

/// Line `i` of the log: host `i * k mod HOSTS` owned by role `host % ROLES`,
/// alternating proxyd and Smokescreen formats, one line in ten something else.
fn line(i: usize, out: &mut impl Write) -> std::io::Result<()> {
    let host = i.wrapping_mul(7919) % HOSTS;
    let role = host % ROLES;
    let name = format!("h{host}.svc{role}.example.com");
    let second = 1_700_000_000 + i / 1000;
    match i % 10 {
        0 => writeln!(
            out,
            "{{\"time\":\"2026-11-21T10:00:00Z\",\"level\":\"info\",\"msg\":\"CANONICAL-PROXY-CN-CLOSE\",\"role\":\"role-{role}\",\"bytes_in\":10}}"
        ),
        n if n % 2 == 1 => writeln!(
            out,
            "{{\"timestamp\":\"2026-11-21T10:{:02}:{:02}.{:06}Z\",\"level\":\"INFO\",\"message\":\"CANONICAL-PROXY-DECISION\",\"id\":\"{i:016x}\",\"proxy_type\":\"connect\",\"role\":\"role-{role}\",\"project\":\"p{role}\",\"requested_host\":\"{name}:443\",\"allow\":true,\"decision_reason\":\"rule has allow and report policy\",\"enforce_would_deny\":true,\"default_rule\":false,\"inbound_remote_addr\":\"10.0.0.1:40000\",\"dst_ip\":\"203.0.113.7\",\"dst_port\":443,\"dns_lookup_time_ms\":1,\"policy_revision\":\"abcdef012345\"}}",
            (second / 60) % 60,
            second % 60,
            i % 1_000_000
        ),
        _ => writeln!(
            out,
            "{{\"allow\":true,\"decision_reason\":\"rule has allow and report policy\",\"dns_lookup_time_ms\":0,\"enforce_would_deny\":true,\"id\":\"cmd{i:017}\",\"inbound_remote_addr\":\"10.0.0.2:5555\",\"level\":\"info\",\"msg\":\"CANONICAL-PROXY-DECISION\",\"project\":\"p{role}\",\"proxy_type\":\"connect\",\"requested_host\":\"{name}:443\",\"role\":\"role-{role}\",\"start_time\":\"2026-11-21T10:00:00.123456789Z\",\"time\":\"2026-11-21T10:{:02}:{:02}Z\",\"trace_id\":\"\"}}",
            (second / 60) % 60,
            second % 60
        ),
    }
}

fn write_log(path: &Path, lines: usize) {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    for i in 0..lines {
        line(i, &mut out).unwrap();
    }
    out.flush().unwrap();
}

struct Measured {
    wall: Duration,
    peak_rss_kib: Option<u64>,
}

/// Runs the real binary (under `/usr/bin/time -f %M` when it exists), with
/// `stdin_lines` lines generated into its stdin when given.
fn run(args: &[&str], stdin_lines: Option<usize>) -> Measured {
    let binary = env!("CARGO_BIN_EXE_policyc");
    let time = Path::new("/usr/bin/time");
    let mut command = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-f", "%M", binary]);
        c
    } else {
        Command::new(binary)
    };
    command.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    command.stdin(if stdin_lines.is_some() { Stdio::piped() } else { Stdio::null() });
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    if let Some(lines) = stdin_lines {
        let stdin = child.stdin.take().unwrap();
        let mut out = BufWriter::with_capacity(1 << 20, stdin);
        for i in 0..lines {
            line(i, &mut out).unwrap();
        }
        out.flush().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "policyc {args:?} failed: {stderr}");
    let peak_rss_kib = if time.exists() { stderr.lines().last().and_then(|l| l.trim().parse().ok()) } else { None };
    Measured { wall, peak_rss_kib }
}

fn mib(m: &Measured) -> String {
    m.peak_rss_kib.map_or_else(|| "unavailable".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("acl.yaml");
    std::fs::write(&policy, policy_text()).unwrap();
    let policy = policy.to_str().unwrap();
    let out = dir.path().join("suggested.yaml");
    let out = out.to_str().unwrap();

    if !benchmark_mode() {
        let log = dir.path().join("small.log");
        write_log(&log, 10_000);
        let log = log.to_str().unwrap();
        run(&["suggest", "--collapse", "3", "-o", out, policy, log], None);
        let check = Command::new(env!("CARGO_BIN_EXE_policyc")).args(["check", out]).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        run(&["coverage", "--format", "json", policy, log], None);
        println!("suggest bench: test mode, 10,000 lines through suggest and coverage");
        return;
    }

    let log = dir.path().join("decisions.log");
    let started = Instant::now();
    write_log(&log, 1_000_000);
    let size = std::fs::metadata(&log).unwrap().len();
    println!("generated 1,000,000 lines ({:.0} MiB) in {:.2?}", size as f64 / 1048576.0, started.elapsed());
    let log = log.to_str().unwrap();

    let suggest = run(&["suggest", "-o", out, policy, log], None);
    let suggest_json = run(&["suggest", "--collapse", "3", "--format", "json", policy, log], None);
    let coverage = run(&["coverage", "--format", "json", policy, log], None);
    let target = |m: &Measured| {
        let time_ok = m.wall <= Duration::from_secs(3);
        let rss_ok = m.peak_rss_kib.is_none_or(|k| k <= 200 * 1024);
        if time_ok && rss_ok { "within target (≤ 3 s, ≤ 200 MiB)" } else { "MISSES target (≤ 3 s, ≤ 200 MiB)" }
    };
    println!(
        "1M lines  suggest (yaml -o):          {:>8.2?}  peak RSS {}  {}",
        suggest.wall,
        mib(&suggest),
        target(&suggest)
    );
    println!(
        "1M lines  suggest --collapse 3 (json): {:>8.2?}  peak RSS {}  {}",
        suggest_json.wall,
        mib(&suggest_json),
        target(&suggest_json)
    );
    println!(
        "1M lines  coverage (json):            {:>8.2?}  peak RSS {}  {}",
        coverage.wall,
        mib(&coverage),
        target(&coverage)
    );

    let big_suggest = run(&["suggest", "--format", "json", policy, "-"], Some(10_000_000));
    let big_coverage = run(&["coverage", "--format", "json", policy, "-"], Some(10_000_000));
    println!("10M lines suggest (stdin):            {:>8.2?}  peak RSS {}", big_suggest.wall, mib(&big_suggest));
    println!("10M lines coverage (stdin):           {:>8.2?}  peak RSS {}", big_coverage.wall, mib(&big_coverage));
    if let (Some(small), Some(big)) = (suggest_json.peak_rss_kib, big_suggest.peak_rss_kib) {
        println!("memory 10M / 1M (suggest): {:.2}x", big as f64 / small as f64);
    }
    if let (Some(small), Some(big)) = (coverage.peak_rss_kib, big_coverage.peak_rss_kib) {
        println!("memory 10M / 1M (coverage): {:.2}x", big as f64 / small as f64);
    }
}
