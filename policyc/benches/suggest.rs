//! `policyc suggest` and `coverage` on big decision logs, through the real
//! binary: 1,000,000 mixed proxyd/Smokescreen lines (10,000 distinct hosts
//! over 200 roles, plus other log lines) written to a temp file, timed
//! (wall, and CPU time and peak RSS via `/usr/bin/time` when present).
//! Then 10,000,000 lines through stdin, generated on the fly, to show that
//! memory follows distinct (role, host) pairs rather than lines.
//!
//! Targets (issue 14): ≤ 3 s and ≤ 200 MiB for 1M lines, for both commands.
//!
//! The high-cardinality case (issue 29): 1,000,000 decision lines whose role
//! (of 200) and host (of 10,000) are drawn at random with a fixed seed, so
//! about 787,000 distinct (role, host) pairs, as report-mode logs of a large
//! fleet look. Generated into `target/policyc-bench/`, then each command is
//! run three times and the medians shown, with peak RSS per distinct pair.
//! Targets: ≤ 3 s CPU and ≤ 200 MiB peak each (≤ 200 bytes per pair).
//! Plain `suggest` (no `--collapse`) is run on it too: its 787,591 exact
//! entries make a text over the 64 MiB limit on policy files, so it must be
//! refused (exit 1, nothing written) within the same targets.
//!
//! Under `cargo bench` (`--bench` given) the full run happens (`-- high-cardinality`:
//! that case only). Under `cargo test --benches` only a 10,000-line log and a
//! 10,000-line random one are run once through both commands (and checked),
//! so the test suite stays fast.

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

/// SplitMix64: a fixed, dependency-free sequence, so every run (and every
/// machine) reads the same high-cardinality log.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Line `i` of the high-cardinality log: every line a decision, role and
/// host drawn at random, alternating proxyd and Smokescreen formats. Returns
/// the (role, host) pair.
fn random_line(i: usize, rng: &mut SplitMix64, out: &mut impl Write) -> std::io::Result<(u32, u32)> {
    let role = (rng.next() % ROLES as u64) as usize;
    let host = (rng.next() % HOSTS as u64) as usize;
    let name = format!("h{host}.svc{}.example.com", host % ROLES);
    let second = 1_700_000_000 + i / 1000;
    if i % 2 == 1 {
        writeln!(
            out,
            "{{\"timestamp\":\"2026-11-21T10:{:02}:{:02}.{:06}Z\",\"level\":\"INFO\",\"message\":\"CANONICAL-PROXY-DECISION\",\"id\":\"{i:016x}\",\"proxy_type\":\"connect\",\"role\":\"role-{role}\",\"project\":\"p{role}\",\"requested_host\":\"{name}:443\",\"allow\":true,\"decision_reason\":\"rule has allow and report policy\",\"enforce_would_deny\":true,\"default_rule\":false,\"inbound_remote_addr\":\"10.0.0.1:40000\",\"dst_ip\":\"203.0.113.7\",\"dst_port\":443,\"dns_lookup_time_ms\":1,\"policy_revision\":\"abcdef012345\"}}",
            (second / 60) % 60,
            second % 60,
            i % 1_000_000
        )?;
    } else {
        writeln!(
            out,
            "{{\"allow\":true,\"decision_reason\":\"rule has allow and report policy\",\"dns_lookup_time_ms\":0,\"enforce_would_deny\":true,\"id\":\"cmd{i:017}\",\"inbound_remote_addr\":\"10.0.0.2:5555\",\"level\":\"info\",\"msg\":\"CANONICAL-PROXY-DECISION\",\"project\":\"p{role}\",\"proxy_type\":\"connect\",\"requested_host\":\"{name}:443\",\"role\":\"role-{role}\",\"start_time\":\"2026-11-21T10:00:00.123456789Z\",\"time\":\"2026-11-21T10:{:02}:{:02}Z\",\"trace_id\":\"\"}}",
            (second / 60) % 60,
            second % 60
        )?;
    }
    Ok((role as u32, host as u32))
}

/// Writes the high-cardinality log; returns its number of distinct pairs.
fn write_random_log(path: &Path, lines: usize) -> usize {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut rng = SplitMix64(0x5EED_0029);
    let mut pairs = std::collections::HashSet::new();
    for i in 0..lines {
        pairs.insert(random_line(i, &mut rng, &mut out).unwrap());
    }
    out.flush().unwrap();
    pairs.len()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The high-cardinality case: each command three times, medians of CPU and
/// wall time, the highest peak RSS (memory is not noisy), bytes per pair.
fn high_cardinality(policy: &str, out: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policyc-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("high-cardinality.log");
    let started = Instant::now();
    let pairs = write_random_log(&log, 1_000_000);
    let size = std::fs::metadata(&log).unwrap().len();
    println!(
        "high cardinality: generated 1,000,000 lines ({:.0} MiB, {ROLES} roles x {HOSTS} hosts at random, {pairs} distinct pairs) in {:.2?}",
        size as f64 / 1048576.0,
        started.elapsed()
    );
    let log = log.to_str().unwrap();
    let refused_out = dir.join("plain-suggest.yaml");
    let _ = std::fs::remove_file(&refused_out);
    let refused = refused_out.to_str().unwrap();
    println!("load average before the runs: {}", load());
    for (name, args, code) in [
        ("suggest --collapse 3 -o (yaml)", vec!["suggest", "--collapse", "3", "-o", out, policy, log], 0),
        ("suggest --collapse 3 (json)   ", vec!["suggest", "--collapse", "3", "--format", "json", policy, log], 0),
        ("coverage --format json        ", vec!["coverage", "--format", "json", policy, log], 0),
        // Too big for a policy file: refused before the text is built.
        ("suggest -o (refused, exit 1)  ", vec!["suggest", "-o", refused, policy, log], 1),
    ] {
        let runs: Vec<Measured> = (0..3).map(|_| run_expecting(&args, None, code)).collect();
        if code != 0 {
            assert!(!refused_out.exists(), "a refused suggest wrote {refused}");
        }
        let cpu = runs.iter().map(|m| m.cpu).collect::<Option<Vec<_>>>().map(median);
        let wall = median(runs.iter().map(|m| m.wall).collect());
        let peak = runs.iter().filter_map(|m| m.peak_rss_kib).max();
        let per_pair =
            peak.map_or_else(|| "unavailable".to_owned(), |k| format!("{:.0} B", k as f64 * 1024.0 / pairs as f64));
        let within = cpu.unwrap_or(wall) <= Duration::from_secs(3) && peak.is_none_or(|k| k <= 200 * 1024);
        println!(
            "1M lines, {pairs} pairs  {name}  cpu {:>8}  wall {:>8.2?}  peak RSS {:>10}  per pair {per_pair:>7}  {}",
            cpu.map_or_else(|| "unavailable".to_owned(), |c| format!("{c:.2?}")),
            wall,
            peak.map_or_else(|| "unavailable".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            if within { "within target (≤ 3 s, ≤ 200 MiB)" } else { "MISSES target (≤ 3 s, ≤ 200 MiB)" }
        );
    }
    println!("load average after the runs: {}", load());
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
    /// User + system CPU time of the child (single-threaded: its wall time on an idle machine).
    cpu: Option<Duration>,
    peak_rss_kib: Option<u64>,
}

/// Runs the real binary (under `/usr/bin/time -f %M` when it exists), with
/// `stdin_lines` lines generated into its stdin when given.
fn run(args: &[&str], stdin_lines: Option<usize>) -> Measured {
    run_expecting(args, stdin_lines, 0)
}

/// [`run`], expecting exit code `code`; a refusal (non-zero) must say that
/// the result is over the size limit of a policy file.
fn run_expecting(args: &[&str], stdin_lines: Option<usize>, code: i32) -> Measured {
    let binary = env!("CARGO_BIN_EXE_policyc");
    let time = Path::new("/usr/bin/time");
    let mut command = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-f", "%U %S %M", binary]);
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
    assert_eq!(output.status.code(), Some(code), "policyc {args:?}: {stderr}");
    if code != 0 {
        assert!(stderr.contains("-byte limit of a policy file"), "policyc {args:?}: {stderr}");
    }
    let last: Vec<&str> =
        if time.exists() { stderr.lines().last().unwrap_or_default().split_whitespace().collect() } else { Vec::new() };
    let seconds = |i: usize| last.get(i).and_then(|s| s.parse::<f64>().ok());
    let cpu = seconds(0).zip(seconds(1)).map(|(user, sys)| Duration::from_secs_f64(user + sys));
    let peak_rss_kib = last.get(2).and_then(|s| s.parse().ok());
    Measured { wall, cpu, peak_rss_kib }
}

fn cpu(m: &Measured) -> String {
    m.cpu.map_or_else(|| "unavailable".to_owned(), |c| format!("{c:.2?}"))
}

/// The load average, since wall times on a shared machine depend on it.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".to_owned(), |l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
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
        let random = dir.path().join("random.log");
        let pairs = write_random_log(&random, 10_000);
        assert!(pairs > 9_000, "{pairs} distinct pairs in 10,000 random lines");
        let random = random.to_str().unwrap();
        run(&["suggest", "--collapse", "3", "-o", out, policy, random], None);
        let check = Command::new(env!("CARGO_BIN_EXE_policyc")).args(["check", out]).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        run(&["coverage", "--format", "json", policy, random], None);
        println!("suggest bench: test mode, 10,000 lines (and 10,000 random ones) through suggest and coverage");
        return;
    }

    // `cargo bench -p policyc --bench suggest -- high-cardinality`: that case only.
    if std::env::args().any(|a| a == "high-cardinality") {
        high_cardinality(policy, out);
        return;
    }
    let log = dir.path().join("decisions.log");
    let started = Instant::now();
    write_log(&log, 1_000_000);
    let size = std::fs::metadata(&log).unwrap().len();
    println!("generated 1,000,000 lines ({:.0} MiB) in {:.2?}", size as f64 / 1048576.0, started.elapsed());
    let log = log.to_str().unwrap();

    let suggest = run(&["suggest", "-o", out, policy, log], None);
    let suggest_json = run(&["suggest", "--format", "json", policy, log], None);
    let collapse = run(&["suggest", "--collapse", "3", "--format", "json", policy, log], None);
    let coverage = run(&["coverage", "--format", "json", policy, log], None);
    // Targets are checked on CPU time: the process is single-threaded, so that
    // is its wall time on an idle machine; wall time here depends on the load.
    let target = |m: &Measured| {
        let time_ok = m.cpu.unwrap_or(m.wall) <= Duration::from_secs(3);
        let rss_ok = m.peak_rss_kib.is_none_or(|k| k <= 200 * 1024);
        if time_ok && rss_ok { "within target (≤ 3 s, ≤ 200 MiB)" } else { "MISSES target (≤ 3 s, ≤ 200 MiB)" }
    };
    println!("load average before the runs: {}", load());
    for (name, m) in [
        ("1M lines  suggest -o (yaml)          ", &suggest),
        ("1M lines  suggest --format json      ", &suggest_json),
        ("1M lines  suggest --collapse 3 (json)", &collapse),
        ("1M lines  coverage --format json     ", &coverage),
    ] {
        println!("{name}  cpu {:>8}  wall {:>8.2?}  peak RSS {:>10}  {}", cpu(m), m.wall, mib(m), target(m));
    }

    let big_suggest = run(&["suggest", "--format", "json", policy, "-"], Some(10_000_000));
    let big_coverage = run(&["coverage", "--format", "json", policy, "-"], Some(10_000_000));
    println!(
        "10M lines suggest --format json (stdin)  cpu {:>8}  peak RSS {:>10}",
        cpu(&big_suggest),
        mib(&big_suggest)
    );
    println!(
        "10M lines coverage --format json (stdin) cpu {:>8}  peak RSS {:>10}",
        cpu(&big_coverage),
        mib(&big_coverage)
    );
    if let (Some(small), Some(big)) = (suggest_json.peak_rss_kib, big_suggest.peak_rss_kib) {
        println!("peak RSS 10M / 1M, suggest:  {:.2}x", big as f64 / small as f64);
    }
    if let (Some(small), Some(big)) = (coverage.peak_rss_kib, big_coverage.peak_rss_kib) {
        println!("peak RSS 10M / 1M, coverage: {:.2}x", big as f64 / small as f64);
    }
    println!("load average after the runs: {}", load());

    high_cardinality(policy, out);
}
