//! The systemd integration from outside, with the real binary: proxyd is
//! started with `NOTIFY_SOCKET` pointing at a datagram socket this test owns,
//! and the notifications are asserted in order: `READY=1` once the listener
//! accepts, `WATCHDOG=1` at half of `WATCHDOG_USEC`, `RELOADING=1` (with a
//! plausible `MONOTONIC_USEC`) then `READY=1` around a SIGHUP reload, and
//! `STOPPING=1` on SIGTERM; after a SIGUSR1 upgrade, `MAINPID=` and no
//! `STOPPING=1` from the old process. The shipped unit passes `systemd-analyze verify`
//! when that tool exists, and its command lines and sample config pass
//! `proxyd --check-config`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{ACL, compile};
use testkit::daemon::Daemon;

fn monotonic_usec() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000
}

/// The socket systemd would own, and the notifications proxyd sent to it.
struct Notifications {
    socket: UnixDatagram,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Notifications { socket }
    }

    /// The next datagram (10 s at most).
    fn next(&self) -> String {
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).expect("a notification in time");
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    /// The next datagram that is not a watchdog ping.
    fn next_state(&self) -> String {
        loop {
            let message = self.next();
            if message != "WATCHDOG=1\n" {
                return message;
            }
        }
    }
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn ready_watchdog_reloading_and_stopping_reach_systemd_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let socket_path = dir.path().join("notify.sock");
    let notifications = Notifications::bind(&socket_path);
    let mut daemon = Daemon::start(
        env!("CARGO_BIN_EXE_proxyd").as_ref(),
        &["--policy", table.to_str().unwrap(), "--policy-check-interval", "0s"],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")],
    );

    // READY=1 comes first, and by then the listener accepts.
    let ready = notifications.next();
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    std::net::TcpStream::connect(daemon.addr).expect("the listener accepts once READY=1 is sent");

    // WATCHDOG=1 every 100 ms (half of WATCHDOG_USEC).
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(notifications.next(), "WATCHDOG=1\n");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150), "three pings at 100 ms intervals took {elapsed:?}");

    // SIGHUP: RELOADING=1 with the current CLOCK_MONOTONIC, then READY=1,
    // even though the file did not change (the watcher saw nothing).
    let before = monotonic_usec();
    daemon.signal("HUP");
    let reloading = notifications.next_state();
    let after = monotonic_usec();
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let stamp: u128 = field(&reloading, "MONOTONIC_USEC").expect("MONOTONIC_USEC with RELOADING=1").parse().unwrap();
    assert!(before <= stamp && stamp <= after, "MONOTONIC_USEC {stamp} outside [{before}, {after}]");
    let ready = notifications.next_state();
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert_eq!(notifications.next(), "WATCHDOG=1\n", "the watchdog keeps running after a reload");

    // A changed policy and another SIGHUP: the same pair, and the new policy lands
    // (by the file event or by the SIGHUP, whichever reads it first).
    let changed = ACL.replace("p-enf", "p-enf-2");
    std::fs::create_dir(dir.path().join("new")).unwrap();
    let new_table = compile(&dir.path().join("new"), &changed);
    std::fs::rename(&new_table, &table).unwrap();
    daemon.signal("HUP");
    assert_eq!(field(&notifications.next_state(), "RELOADING"), Some("1"));
    assert_eq!(field(&notifications.next_state(), "READY"), Some("1"));
    daemon.wait_for(|v| v["message"] == "policy reloaded");

    // SIGTERM: STOPPING=1, then the process exits cleanly.
    let pid = daemon.pid();
    let status = std::thread::scope(|scope| {
        let stopping = scope.spawn(|| notifications.next_state());
        let status = daemon.terminate();
        let stopping = stopping.join().unwrap();
        assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
        status
    });
    assert!(status.success(), "proxyd {pid} exited with {status}");
}

#[test]
fn no_watchdog_pings_for_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let socket_path = dir.path().join("notify.sock");
    let notifications = Notifications::bind(&socket_path);
    // WATCHDOG_PID names another process (PID 1): the watchdog is not ours to feed.
    let daemon = Daemon::start(
        env!("CARGO_BIN_EXE_proxyd").as_ref(),
        &["--policy", table.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
    assert_eq!(field(&notifications.next(), "READY"), Some("1"));
    notifications.socket.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let mut buffer = [0u8; 256];
    let extra = notifications.socket.recv(&mut buffer);
    assert!(
        extra.is_err(),
        "unexpected notification: {:?}",
        extra.map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned())
    );
    notifications.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let status = daemon.terminate();
    assert!(status.success());
    assert_eq!(field(&notifications.next(), "STOPPING"), Some("1"));
}

/// SIGUSR1 under `Type=notify`: once the new process serves, the old one
/// sends `MAINPID=<new pid>` and then drains without `STOPPING=1` (which
/// would stop the service); the new one feeds the watchdog (its
/// environment has no `WATCHDOG_PID` naming the old one) and is the one
/// that says `STOPPING=1` on SIGTERM.
#[test]
fn an_upgrade_moves_mainpid_and_the_old_process_never_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let socket_path = dir.path().join("notify.sock");
    let notifications = Notifications::bind(&socket_path);
    let mut daemon = Daemon::start(
        env!("CARGO_BIN_EXE_proxyd").as_ref(),
        &["--policy", table.to_str().unwrap(), "--policy-check-interval", "0s"],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")],
    );
    assert_eq!(field(&notifications.next_state(), "READY"), Some("1"));
    daemon.signal("USR1");
    let upgraded = daemon.wait_for(|v| v["message"] == "upgrade: the new process serves; this one drains");
    let new_pid = upgraded["pid"].as_u64().unwrap().to_string();
    // The new process's own READY=1 (which systemd ignores from a non-main
    // process under NotifyAccess=main), then the hand-over.
    assert_eq!(field(&notifications.next_state(), "READY"), Some("1"));
    let moved = notifications.next_state();
    assert_eq!(field(&moved, "MAINPID"), Some(new_pid.as_str()), "{moved:?}");
    assert!(daemon.wait_exit().success(), "the old process drains and exits 0");
    // Only watchdog pings now, from the new process: no STOPPING=1 from the old one.
    for _ in 0..3 {
        assert_eq!(notifications.next(), "WATCHDOG=1\n", "after the old process exited");
    }
    let stopped = Command::new("kill").args(["-TERM", &new_pid]).status().unwrap();
    assert!(stopped.success());
    assert_eq!(field(&notifications.next_state(), "STOPPING"), Some("1"));
}

fn repo_file(path: &str) -> std::path::PathBuf {
    testkit::repo_root().join(path)
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        println!("skipped: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // verify insists that ExecStart= binaries exist: point them at the one under test.
    let unit = std::fs::read_to_string(repo_file("deploy/systemd/proxyd.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/proxyd", env!("CARGO_BIN_EXE_proxyd"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxyd.service");
    std::fs::write(&path, unit).unwrap();
    // --man=no: the man page is not installed on a build machine.
    let output = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// `Key=value` lines of the unit (continuations are not used in it).
fn unit_settings() -> Vec<(String, String)> {
    std::fs::read_to_string(repo_file("deploy/systemd/proxyd.service"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn the_unit_is_hardened_and_its_command_lines_check_the_sample_config() {
    let settings = unit_settings();
    let get = |key: &str| settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Sockets", "proxyd.socket proxyd-admin.socket"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("SystemCallFilter", "@system-service"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert!(get(key).contains(&value), "{key}={value} missing: {:?}", get(key));
    }

    // Each proxyd command line, with the sample config and a real policy in
    // place of /etc/proxyd, passes --check-config.
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let config = repo_file("deploy/systemd/proxyd.yaml");
    for key in ["ExecStartPre", "ExecStart"] {
        let line = get(key);
        let words: Vec<&str> = line.first().unwrap().split_whitespace().collect();
        assert_eq!(words.first(), Some(&"/usr/local/bin/proxyd"), "{key}");
        let args: Vec<String> = words[1..]
            .iter()
            .map(|w| w.replace("/etc/proxyd/proxyd.yaml", config.to_str().unwrap()))
            .filter(|w| w != "--check-config")
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_proxyd"))
            .args(&args)
            .args(["--check-config", "--policy", table.to_str().unwrap()])
            .env("PROXY_PASSWORD", "a-password-for-the-test")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{key}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("from $PROXY_PASSWORD (value redacted)"), "{stdout}");
        assert!(!stdout.contains("a-password-for-the-test"), "the password is never printed: {stdout}");
    }
}
