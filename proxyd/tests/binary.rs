//! The real `proxyd` binary: start-up refusals (exit 1, one line, nothing
//! listening), the log lines operators read, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{ACL, compile, connect, echo_through, lo};
use testkit::daemon::Daemon;
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

fn proxyd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_proxyd"));
    command.env_remove("PROXY_PASSWORD").env_remove("HTTP_PROXY").env_remove("HTTPS_PROXY");
    command
}

/// Runs proxyd expecting it to refuse to start; returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = proxyd();
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run proxyd");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    stderr
}

#[test]
fn invalid_inputs_exit_1_with_one_line_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("acl.yaml");
    std::fs::write(&yaml, ACL).unwrap();
    let table = compile(dir.path(), ACL);
    let table = table.to_str().unwrap();

    let e = refused(&["--policy", yaml.to_str().unwrap()], &[]);
    assert!(e.contains("policyc compile"), "{e}");
    let e = refused(&[], &[]);
    assert!(e.contains("--policy"), "{e}");
    let e = refused(&["--policy", "/nonexistent/policy.bin"], &[]);
    assert!(e.contains("/nonexistent/policy.bin"), "{e}");
    let e = refused(&["--policy", table, "--proxy-password-env", "PROXY_PASSWORD"], &[]);
    assert!(e.contains("PROXY_PASSWORD"), "{e}");
    let e = refused(&["--policy", table, "--proxy-password-env", "PROXY_PASSWORD"], &[("PROXY_PASSWORD", "")]);
    assert!(e.contains("unset or empty"), "{e}");
    let e = refused(&["--policy", table, "--timeout", "10"], &[]);
    assert!(e.contains("10"), "{e}");
    let e = refused(&["--policy", table, "--deny-range", "10.0.0.0/33"], &[]);
    assert!(e.contains("10.0.0.0/33"), "{e}");
    let e = refused(&["--policy", table, "--frobnicate"], &[]);
    assert!(e.contains("frobnicate"), "{e}");
    let e = refused(&["--policy", table, "--tls-server-bundle-file", "/nonexistent/bundle.pem"], &[]);
    assert!(e.contains("/nonexistent/bundle.pem"), "{e}");
    let e = refused(&["--policy", table, "--disable-acl-policy-action", "report"], &[]);
    assert!(e.contains("report"), "{e}");
    let corrupt = dir.path().join("corrupt.bin");
    let mut bytes = std::fs::read(table).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&corrupt, bytes).unwrap();
    let e = refused(&["--policy", corrupt.to_str().unwrap()], &[]);
    assert!(e.contains("checksum"), "{e}");
    type Damage = fn(&mut Vec<u8>);
    let faults: [(&str, Damage, &str); 3] = [
        ("truncated", |b| b.truncate(b.len() / 2), "truncated"),
        ("oversized", |b| b[12..20].copy_from_slice(&u64::MAX.to_le_bytes()), "exceeds"),
        ("wrong version", |b| b[8] = 9, "unsupported table format version 9"),
    ];
    for (name, damage, expected) in faults {
        let mut bytes = std::fs::read(table).unwrap();
        damage(&mut bytes);
        let path = dir.path().join(format!("{name}.bin"));
        std::fs::write(&path, bytes).unwrap();
        let e = refused(&["--policy", path.to_str().unwrap()], &[]);
        assert!(e.contains(expected), "{name}: {e}");
    }
}

/// The real binary on 127.0.0.1:0 with `args` (testkit's daemon handle).
fn start(args: &[&str]) -> Daemon {
    Daemon::start(Path::new(env!("CARGO_BIN_EXE_proxyd")), args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // in-test servers keep running while this thread waits on the daemon
async fn decision_and_close_lines_carry_smokescreen_fields() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 6, 1)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let mut daemon = start(&[
        "--policy",
        table.to_str().unwrap(),
        "--resolver-address",
        &dns.addr().to_string(),
        "--allow-address",
        &upstream.addr.to_string(),
        "--allow-missing-role",
    ]);
    let mut reply = connect(daemon.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(echo_through(&mut reply.stream, b"12345").await, b"12345");
    drop(reply);

    let decision = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION");
    assert_eq!(decision["proxy_type"], "connect");
    assert_eq!(decision["requested_host"], format!("upstream.test:{}", upstream.addr.port()));
    assert_eq!(decision["allow"], true);
    assert_eq!(decision["project"], "other");
    assert_eq!(decision["decision_reason"], "host matched allowed domain in rule");
    assert_eq!(decision["enforce_would_deny"], false);
    assert_eq!(decision["default_rule"], true);
    assert_eq!(decision["dst_ip"], upstream.addr.ip().to_string());
    assert!(decision["dst_port"].is_u64(), "numbers are numbers: {decision}");
    assert!(decision["dns_lookup_time_ms"].is_u64(), "{decision}");
    assert_eq!(decision["policy_revision"].as_str().map(str::len), Some(12));
    assert!(decision["inbound_remote_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")));
    let close = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-CN-CLOSE");
    assert_eq!(close["id"], decision["id"]);
    assert_eq!(close["bytes_in"], 5);
    assert_eq!(close["bytes_out"], 5);
    assert!(close["duration"].is_f64(), "{close}");

    let denied = connect(daemon.addr, "denied.example:443", "").await;
    assert_eq!(denied.status, 403);
    let line = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION");
    assert_eq!(line["allow"], false);
    assert_eq!(line["decision_reason"], "host matched rule in global deny list");
    assert_eq!(line["enforce_would_deny"], true);

    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // in-test servers keep running while this thread waits on the daemon
async fn the_proxy_password_is_never_logged() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let secret = "correct-horse-battery-staple";
    let mut child = proxyd()
        .args(["--listen-ip", "127.0.0.1", "--listen-port", "0", "--policy", table.to_str().unwrap()])
        .args(["--resolver-address", &dns.addr().to_string(), "--proxy-password-env", "PROXYD_TEST_SECRET"])
        .args(["--log-format", "json"])
        .env("PROXYD_TEST_SECRET", secret)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr: SocketAddr = loop {
        let line = lines.recv_timeout(Duration::from_secs(10)).expect("listening line");
        seen.push(line.clone());
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "proxyd listening" {
            break v["listen"].as_str().unwrap().parse().unwrap();
        }
    };
    use base64::Engine as _;
    let good = base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}"));
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}x"));
    let reply = connect(addr, "denied.example:443", &format!("Proxy-Authorization: Basic {good}\r\n")).await;
    assert_eq!(reply.status, 403);
    let reply = connect(addr, "denied.example:443", &format!("Proxy-Authorization: Basic {bad}\r\n")).await;
    assert_eq!(reply.status, 407);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    let all = seen.join("\n");
    assert!(all.contains("CANONICAL-PROXY-DECISION"), "{all}");
    assert!(!all.contains(secret), "the password appeared in the logs");
    assert!(!all.contains(&good), "the credentials appeared in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // in-test servers keep running while this thread waits on the daemon
async fn sighup_reloads_and_every_attempt_is_logged() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let path = table.to_str().unwrap().to_owned();
    // File events would wait a minute and there is no periodic check: only SIGHUP can reload in time.
    let mut daemon = start(&[
        "--policy",
        &path,
        "--resolver-address",
        &dns.addr().to_string(),
        "--allow-missing-role",
        "--policy-reload-debounce",
        "60s",
        "--policy-check-interval",
        "0s",
    ]);
    assert_eq!(connect(daemon.addr, "denied.example:443", "").await.status, 403);

    // A bad candidate: refused, named, and the active revision is reported.
    egress_policy::table::write_atomically(&table, b"not a table at all").unwrap();
    let pid = daemon.pid().to_string();
    let hup = || Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup().success());
    let refused = daemon.wait_for(|v| v["message"] == "policy reload refused; the active policy keeps serving");
    assert_eq!(refused["trigger"], "SIGHUP");
    assert_eq!(refused["file"], path);
    assert!(refused["reason"].as_str().unwrap().contains("not a compiled policy table"), "{refused}");
    assert_eq!(connect(daemon.addr, "denied.example:443", "").await.status, 403, "still the old table");

    // A good one without `denied.example` in the deny list.
    let relaxed = ACL.replace("global_deny_list: [denied.example]", "global_deny_list: []");
    let new_dir = tempfile::tempdir().unwrap();
    let new_table = compile(new_dir.path(), &relaxed);
    egress_policy::table::write_atomically(&table, &std::fs::read(new_table).unwrap()).unwrap();
    let started = Instant::now();
    assert!(hup().success());
    let reloaded = daemon.wait_for(|v| v["message"] == "policy reloaded");
    assert_eq!(reloaded["trigger"], "SIGHUP");
    assert_ne!(reloaded["old_revision"], reloaded["new_revision"]);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The default rule allows *.test only; denied.example is now denied by the default rule, not the deny list.
    let reply = connect(daemon.addr, "denied.example:443", "").await;
    assert!(reply.body.contains("default rule policy used"), "{}", reply.body);
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // in-test servers keep running while this thread waits on the daemon
async fn trace_ids_reach_the_log_lines_and_nothing_else() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 10, 1)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let mut daemon = start(&[
        "--policy",
        table.to_str().unwrap(),
        "--resolver-address",
        &dns.addr().to_string(),
        "--allow-address",
        &upstream.addr.to_string(),
        "--allow-missing-role",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let target = format!("upstream.test:{}", upstream.addr.port());
    let mut reply = connect(daemon.addr, &target, "X-Smokescreen-Trace-ID: 6c4aa514e3da13ef\r\n").await;
    assert_eq!(reply.status, 200);
    assert_eq!(echo_through(&mut reply.stream, b"abc").await, b"abc");
    drop(reply);
    let decision = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION");
    assert_eq!(decision["trace_id"], "6c4aa514e3da13ef");
    assert!(decision.get("trace_id_error").is_none(), "{decision}");
    assert_eq!(decision["role"], Value::Null, "the trace id is never a role: {decision}");
    let close = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-CN-CLOSE");
    assert_eq!((&close["id"], &close["trace_id"]), (&decision["id"], &decision["trace_id"]));

    // Invalid ones are dropped, and the line says why.
    let too_long = "a".repeat(129);
    for (header, why) in [
        (format!("X-Smokescreen-Trace-ID: {too_long}\r\n"), "longer than 128 bytes"),
        ("X-Smokescreen-Trace-ID: two words\r\n".to_owned(), "visible ASCII"),
        ("X-Smokescreen-Trace-ID: a\r\nX-Smokescreen-Trace-ID: b\r\n".to_owned(), "more than one"),
    ] {
        assert_eq!(connect(daemon.addr, "denied.example:443", &header).await.status, 403);
        let line = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION");
        assert!(line.get("trace_id").is_none(), "{line}");
        assert!(line["trace_id_error"].as_str().unwrap().contains(why), "{line}");
    }
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // in-test servers keep running while this thread waits on the daemon
async fn readyz_is_503_from_sigterm_until_exit() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 10, 2)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let mut daemon = start(&[
        "--policy",
        table.to_str().unwrap(),
        "--resolver-address",
        &dns.addr().to_string(),
        "--allow-address",
        &upstream.addr.to_string(),
        "--allow-missing-role",
        "--admin-listen",
        "127.0.0.1:0",
        "--shutdown-grace",
        "10s",
    ]);
    let admin: SocketAddr = daemon.listening["admin"].as_str().expect("admin field").parse().unwrap();
    assert_ne!(admin.port(), daemon.addr.port());
    assert_eq!(testkit::scrape::get(admin, "/readyz").await.status, 200);
    let s = testkit::scrape::scrape(admin).await;
    assert_eq!(s.value("proxyd_requests_total{outcome=\"tunnel\"}"), "0");

    // An open tunnel keeps the drain going.
    let mut tunnel = connect(daemon.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(tunnel.status, 200);
    let pid = daemon.pid().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    daemon.wait_for(|v| v["message"] == "draining: no longer accepting");
    let draining = testkit::scrape::get(admin, "/readyz").await;
    assert_eq!(draining.status, 503);
    assert!(draining.body.contains("draining"), "{}", draining.body);
    assert_eq!(testkit::scrape::get(admin, "/healthz").await.status, 200);
    assert_eq!(testkit::scrape::scrape(admin).await.value("proxyd_ready"), "0");
    assert_eq!(echo_through(&mut tunnel.stream, b"bye").await, b"bye");
    drop(tunnel);
    daemon.wait_for(|v| v["message"] == "stopped");
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

#[test]
fn admin_and_statsd_settings_are_checked_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let table = table.to_str().unwrap();
    let e = refused(&["--policy", table, "--admin-listen", "127.0.0.1:4750"], &[]);
    assert!(e.contains("the proxy's own address"), "{e}");
    let e = refused(&["--policy", table, "--listen-port", "9999", "--admin-listen", "0.0.0.0:9999"], &[]);
    assert!(e.contains("the proxy's own address"), "{e}");
    let e = refused(&["--policy", table, "--statsd-address", "no-port"], &[]);
    assert!(e.contains("statsd address"), "{e}");
    // Something already listens on the admin port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let e = refused(&["--policy", table, "--listen-port", "0", "--admin-listen", &taken], &[]);
    assert!(e.contains("admin") && e.contains(&taken), "{e}");
}
