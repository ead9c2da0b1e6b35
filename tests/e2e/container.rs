//! Running the shipped image with podman from a test: the runtime and flags
//! that work in a sandbox without systemd (runc, cgroupfs, a file event log),
//! explicit resource limits no higher than this process's hard limits, and
//! containers that are removed when their handle drops. Also small helpers
//! the image, kube-play and fleet tests share: free loopback ports and an
//! admin probe that tolerates a listener that is not up yet.
//!
//! What it must never do: pull an image (`--pull never`: the image under
//! test is the one `make image` built here), publish a port beyond loopback,
//! or raise a limit (the sandbox forbids it, and a test must not need it).

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// podman's global flags: runc (the distribution's runtime), cgroupfs and a
/// file event log (no systemd in the sandbox or in CI's machine).
pub const PODMAN_GLOBAL: [&str; 6] = ["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"];

/// The image under test: `E2E_IMAGE` (the make targets pass it), else `make image`'s tag.
pub fn image() -> String {
    std::env::var("E2E_IMAGE").unwrap_or_else(|_| "localhost/proxyd:dev".to_owned())
}

/// `podman GLOBAL args...`, whatever its exit status.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(PODMAN_GLOBAL).args(args).output().expect("podman runs (apt-get install podman runc)")
}

/// `podman GLOBAL args...`, which must succeed; its stdout, trimmed.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(out.status.success(), "podman {args:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The hard limit on `resource` ("Max open files", "Max processes") from
/// /proc/self/limits; `None` for "unlimited".
fn hard_limit(resource: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    let line = limits.lines().find(|l| l.starts_with(resource)).unwrap_or_else(|| panic!("no {resource} limit"));
    let hard = line[resource.len()..].split_whitespace().nth(1).expect("a hard limit column");
    hard.parse().ok()
}

/// `--ulimit` flags for a container: explicit soft = hard limits, `want`
/// where this process may grant them, else its own hard limit (a container
/// cannot get more than its parent has, and asking fails in the sandbox).
pub fn ulimits(nofile: u64, nproc: u64) -> [String; 4] {
    let cap = |resource, want: u64| hard_limit(resource).map_or(want, |hard| want.min(hard));
    let nofile = cap("Max open files", nofile);
    let nproc = cap("Max processes", nproc);
    [
        "--ulimit".to_owned(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".to_owned(),
        format!("nproc={nproc}:{nproc}"),
    ]
}

/// A free TCP port on 127.0.0.1 (bound, then released for the daemon to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local address").port()
}

/// A container started with `podman run -d`; removed (killed if running) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run -d --name NAME --network host --pull never <limits> <extra> IMAGE <args>`.
    pub fn run(name: &str, extra: &[&str], image: &str, args: &[&str]) -> Container {
        let _ = podman(&["rm", "--force", "--time", "0", name]);
        let limits = ulimits(65_536, 4_096);
        let mut all: Vec<&str> = vec!["run", "--detach", "--name", name, "--network", "host", "--pull", "never"];
        all.extend(limits.iter().map(String::as_str));
        all.extend_from_slice(extra);
        all.push(image);
        all.extend_from_slice(args);
        podman_ok(&all);
        Container { name: name.to_owned() }
    }

    /// The container's main process as the host sees it.
    pub fn host_pid(&self) -> u32 {
        podman_ok(&["inspect", "--format", "{{.State.Pid}}", &self.name]).parse().expect("a pid")
    }

    /// Everything the container wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Waits (at most `within`) for the container to exit; its exit code.
    pub fn wait_exit(&self, within: Duration) -> i64 {
        let deadline = Instant::now() + within;
        loop {
            let state = podman_ok(&["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", &self.name]);
            if let Some(code) = state.strip_prefix("exited ") {
                return code.parse().expect("an exit code");
            }
            assert!(Instant::now() < deadline, "{} still {state} after {within:?}:\n{}", self.name, self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// The real UID of process `pid` (from /proc/PID/status), as the host sees it.
pub fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("a Uid line");
    line.split_whitespace().nth(1).and_then(|u| u.parse().ok()).expect("a numeric UID")
}

/// The status of `GET path` on an admin listener, or `None` when nothing
/// answers (not listening yet, or gone): for polling a daemon that starts
/// or stops.
pub async fn probe(admin: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = Vec::new();
        stream.read_to_end(&mut head).await.ok()?;
        let text = String::from_utf8_lossy(&head);
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
}

/// Polls `GET path` until it answers `status` (at most `within`); how long it took.
pub async fn wait_status(admin: SocketAddr, path: &str, status: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = probe(admin, path).await;
        if got == Some(status) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "GET {path} on {admin}: {got:?}, not {status}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
