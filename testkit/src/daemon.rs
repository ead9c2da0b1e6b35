//! A real daemon process (the built `proxyd`) with its JSON log lines, for
//! tests that drive the binary from outside: start it, wait for a log line,
//! stop it with SIGTERM. The process is killed when the handle drops.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `proxyd` and the stream of its stderr lines.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The proxy's listening address, from its `proxyd listening` line.
    pub addr: SocketAddr,
    /// The whole `proxyd listening` line.
    pub listening: Value,
}

impl Daemon {
    /// Starts `binary` on `127.0.0.1:0` (JSON logs, no proxy variables from
    /// the environment but `env`) with `args`, and waits for it to listen.
    pub fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(binary)
            .env_remove("PROXY_PASSWORD")
            .envs(env.iter().copied())
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .args(["--listen-ip", "127.0.0.1", "--listen-port", "0"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn proxyd");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon { child, lines, addr: SocketAddr::from(([127, 0, 0, 1], 0)), listening: Value::Null };
        let listening = daemon.wait_for(|v| v["message"] == "proxyd listening");
        daemon.addr = listening["listen"].as_str().expect("listen field").parse().expect("socket address");
        daemon.listening = listening;
        daemon
    }

    /// The next JSON log line matching `pred` (10 s at most); other lines are skipped.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("expected log line in time");
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if pred(&value) {
                return value;
            }
        }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill` accepts, such as `HUP`) to the daemon.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(sent.expect("run kill").success(), "kill -{signal} failed");
    }

    /// Every stderr line, raw and in order, up to and including the
    /// `count`-th JSON line matching `pred` (10 s at most): what a log
    /// shipper would have collected, for tests that feed logs to other tools.
    pub fn collect_lines(&mut self, count: usize, pred: impl Fn(&Value) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = Vec::new();
        let mut matched = 0;
        while matched < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("expected log line in time");
            if serde_json::from_str::<Value>(&line).is_ok_and(|v| pred(&v)) {
                matched += 1;
            }
            lines.push(line);
        }
        lines
    }

    /// Sends SIGTERM and waits (10 s at most) for the exit status.
    pub fn terminate(self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Waits (10 s at most) for the process to exit, after a signal the test sent.
    pub fn wait_exit(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "proxyd did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops any child process as an operator would: SIGTERM, then SIGKILL if it
/// is still running after `grace`; never fails (for `Drop` impls of
/// benchmark peers, where the process may already be gone).
pub fn stop_child(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
