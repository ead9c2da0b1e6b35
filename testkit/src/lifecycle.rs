//! Restarts under load, seen from the clients: a steady stream of short
//! tunnels from several client tasks plus long tunnels echoing every
//! 100 ms, while the real `proxyd` binary is replaced in one of three ways:
//!
//! * [`einhorn`]: this process plays Einhorn's master: it holds the
//!   listening sockets (`EINHORN_FD_0` proxy, `EINHORN_FD_1` admin),
//!   starts workers with `EINHORN_*`, reads their ack on
//!   the command socket, and retires the old worker with SIGUSR2 once the
//!   new one acked.
//! * [`sigusr1`]: proxyd binds, and SIGUSR1 upgrades it in place.
//! * [`socket_restart`]: this process plays a systemd socket unit: it
//!   holds both sockets (`proxy`, `admin`) across a stop (SIGTERM, wait for
//!   the exit) and a start, passing them as fds 3 and 4 with `LISTEN_*`.
//!
//! Each returns a [`Report`]: CONNECTs attempted, failed (refused, reset,
//! other), long tunnels broken, and the longest pause between two
//! successful CONNECTs. Used by `proxyd/tests/restarts.rs` (which asserts
//! the goals) and the load benchmark's `lifecycle` part (which prints them).
//!
//! What it may not do: connect anywhere but loopback, or leave a process
//! running (every child is killed when its handle drops).

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What to run and how hard.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The `proxyd` binary.
    pub binary: PathBuf,
    /// Arguments every start gets: the policy, `--allow-address` for the
    /// target, and so on (not the listen flags or `--shutdown-grace`,
    /// which each flow sets).
    pub args: Vec<String>,
    /// The `CONNECT` target, an echo server (`IP:PORT`, allowed by the policy).
    pub target: String,
    /// Short-tunnel client tasks, each looping connect, 200, echo, close.
    pub short_clients: usize,
    /// Long tunnels echoing 8 bytes every 100 ms throughout.
    pub long_tunnels: usize,
    /// Steady load before the replacement starts, and after it is done.
    pub before: Duration,
    pub after: Duration,
}

/// What the clients saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub flow: &'static str,
    pub attempted: u64,
    /// Every CONNECT that did not end in a 200 and a correct echo.
    pub failed: u64,
    /// Of `failed`: connection refused.
    pub refused: u64,
    /// Of `failed`: connection reset.
    pub reset: u64,
    /// The first few failures, as text.
    pub failures: Vec<String>,
    pub long_tunnels: usize,
    pub long_broken: usize,
    pub long_echoes: u64,
    /// The longest time with no CONNECT answered 200, while the load ran.
    pub longest_pause: Duration,
    /// The slowest successful CONNECT (connect to echo done).
    pub slowest_connect: Duration,
    /// From the start of the replacement to its end (ack/ready/listening).
    pub switch: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<15} CONNECTs {:>6} attempted, {} failed ({} refused, {} reset); long tunnels {}/{} broken ({} echoes); longest accept pause {:.1} ms; slowest CONNECT {:.1} ms; switch {:.1} ms",
            self.flow,
            self.attempted,
            self.failed,
            self.refused,
            self.reset,
            self.long_broken,
            self.long_tunnels,
            self.long_echoes,
            self.longest_pause.as_secs_f64() * 1e3,
            self.slowest_connect.as_secs_f64() * 1e3,
            self.switch.as_secs_f64() * 1e3,
        )
    }
}

/// A proxyd process (or the shell that becomes one) with its stderr lines.
#[derive(Debug)]
pub struct Process {
    child: Child,
    lines: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<String>>>,
}

impl Process {
    fn spawn(mut command: Command) -> Process {
        command.stderr(Stdio::piped()).stdout(Stdio::null()).env_remove("HTTP_PROXY").env_remove("HTTPS_PROXY");
        let mut child = command.spawn().expect("spawn proxyd");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines: Arc::new(std::sync::Mutex::new(rx)) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next JSON line matching `pred` (20 s at most), read off the runtime's threads.
    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool + Send + 'static) -> Value {
        let lines = Arc::clone(&self.lines);
        tokio::task::spawn_blocking(move || {
            let lines = lines.lock().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = lines.recv_timeout(left).expect("expected log line in time");
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && pred(&value)
                {
                    return value;
                }
            }
        })
        .await
        .unwrap()
    }

    pub fn signal(&self, signal: &str) {
        signal_pid(self.pid(), signal);
    }

    /// Waits (30 s at most) for the exit.
    pub async fn exit(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "proxyd (pid {}) did not exit in time", self.child.id());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` (its stderr lines become [`Process::wait_for`]'s).
pub fn spawn(command: Command) -> Process {
    Process::spawn(command)
}

/// Sends `signal` (a name `kill` accepts) to `pid`.
pub fn signal_pid(pid: u32, signal: &str) {
    let sent = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(sent.expect("run kill").success(), "kill -{signal} {pid} failed");
}

/// A copy of `socket` without `FD_CLOEXEC`, for one spawn: drop it right
/// after. Numbered 10 or above: a child's script maps its sockets to fds 3
/// and 4, so a copy must not be one of those, and in a test binary another
/// thread may just have freed them (a plain `dup` then returned 3 or 4).
fn inheritable(socket: &TcpListener) -> OwnedFd {
    let copy = rustix::io::fcntl_dupfd_cloexec(socket, 10).expect("dup");
    rustix::io::fcntl_setfd(&copy, rustix::io::FdFlags::empty()).expect("clear FD_CLOEXEC");
    copy
}

/// The running clients.
struct Load {
    stop: Arc<AtomicBool>,
    short: Vec<JoinHandle<ShortTally>>,
    long: Vec<JoinHandle<(bool, u64)>>,
    attempted: Arc<AtomicU64>,
}

#[derive(Default)]
struct ShortTally {
    failed: u64,
    refused: u64,
    reset: u64,
    failures: Vec<String>,
    successes: Vec<Instant>,
    slowest: Duration,
}

enum Failure {
    Refused,
    Reset,
    Other(String),
}

fn classify(error: std::io::Error) -> Failure {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Failure::Reset,
        _ => Failure::Other(error.to_string()),
    }
}

/// One short tunnel: CONNECT, 200, a 16-byte echo, close.
async fn short_tunnel(proxy: SocketAddr, target: &str) -> Result<(), Failure> {
    let mut stream = TcpStream::connect(proxy).await.map_err(classify)?;
    let mut stream = open(&mut stream, target).await.map(|()| stream)?;
    let payload = *b"0123456789abcdef";
    stream.write_all(&payload).await.map_err(classify)?;
    let mut back = [0u8; 16];
    stream.read_exact(&mut back).await.map_err(classify)?;
    if back != payload {
        return Err(Failure::Other("echo mismatch".into()));
    }
    Ok(())
}

/// Sends `CONNECT target` and reads the head; `Ok` on 200.
async fn open(stream: &mut TcpStream, target: &str) -> Result<(), Failure> {
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .map_err(classify)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.map_err(classify)? == 0 {
            return Err(Failure::Other(format!("closed after {:?}", String::from_utf8_lossy(&head))));
        }
        head.push(byte[0]);
        if head.len() > 4096 {
            return Err(Failure::Other("head too long".into()));
        }
    }
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(Failure::Other(String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned()))
    }
}

impl Load {
    async fn start(proxy: SocketAddr, setup: &Setup) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let attempted = Arc::new(AtomicU64::new(0));
        let mut long = Vec::new();
        for _ in 0..setup.long_tunnels {
            let mut stream = TcpStream::connect(proxy).await.expect("long tunnel: connect");
            if open(&mut stream, &setup.target).await.is_err() {
                panic!("long tunnel: CONNECT refused before any restart");
            }
            let stop = Arc::clone(&stop);
            long.push(tokio::spawn(async move {
                let mut echoes = 0u64;
                let mut ticker = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
                        stream.write_all(b"longlong").await?;
                        let mut back = [0u8; 8];
                        stream.read_exact(&mut back).await?;
                        Ok::<bool, std::io::Error>(&back == b"longlong")
                    })
                    .await;
                    match echoed {
                        Ok(Ok(true)) => echoes += 1,
                        _ => return (true, echoes),
                    }
                }
                (false, echoes)
            }));
        }
        let mut short = Vec::new();
        for _ in 0..setup.short_clients {
            let stop = Arc::clone(&stop);
            let attempted = Arc::clone(&attempted);
            let target = setup.target.clone();
            short.push(tokio::spawn(async move {
                let mut tally = ShortTally::default();
                while !stop.load(Ordering::Relaxed) {
                    attempted.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    let outcome = tokio::time::timeout(Duration::from_secs(30), short_tunnel(proxy, &target))
                        .await
                        .unwrap_or_else(|_| Err(Failure::Other("no answer within 30 s".into())));
                    let failure = match outcome {
                        Ok(()) => {
                            tally.successes.push(Instant::now());
                            tally.slowest = tally.slowest.max(started.elapsed());
                            continue;
                        }
                        Err(Failure::Refused) => {
                            tally.refused += 1;
                            "connection refused".to_owned()
                        }
                        Err(Failure::Reset) => {
                            tally.reset += 1;
                            "connection reset".to_owned()
                        }
                        Err(Failure::Other(text)) => text,
                    };
                    tally.failed += 1;
                    if tally.failures.len() < 5 {
                        tally.failures.push(failure);
                    }
                    // A refused port fails at once: do not spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tally
            }));
        }
        Load { stop, short, long, attempted }
    }

    async fn finish(self, flow: &'static str, switch: Duration) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = Report { flow, switch, long_tunnels: self.long.len(), ..Report::default() };
        let mut successes = Vec::new();
        for task in self.short {
            let tally = task.await.unwrap();
            report.failed += tally.failed;
            report.refused += tally.refused;
            report.reset += tally.reset;
            report.failures.extend(tally.failures);
            report.slowest_connect = report.slowest_connect.max(tally.slowest);
            successes.extend(tally.successes);
        }
        report.attempted = self.attempted.load(Ordering::Relaxed);
        successes.sort();
        report.longest_pause = successes.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        for task in self.long {
            let (broken, echoes) = task.await.unwrap();
            report.long_broken += usize::from(broken);
            report.long_echoes += echoes;
        }
        report
    }
}

/// Longer than any flow: a graceful stop keeps the long tunnels until the
/// clients close them, as the goal (0 broken) requires.
const LONG_GRACE: &str = "600s";

fn proxyd(setup: &Setup) -> Command {
    let mut command = Command::new(&setup.binary);
    command.args(&setup.args).args(["--shutdown-grace", LONG_GRACE]);
    command
}

/// Kills a process this module did not spawn itself (the upgraded proxyd)
/// if the flow fails before stopping it.
struct PidGuard(u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if std::path::Path::new(&format!("/proc/{}", self.0)).exists() {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
}

/// (a) Einhorn replaces a worker: new worker, its ack, SIGUSR2 to the old.
pub async fn einhorn(setup: &Setup) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("einhorn.sock");
    let commands = tokio::net::UnixListener::bind(&socket_path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let worker = |n: usize| {
        let fd = inheritable(&listener);
        let admin_fd = inheritable(&admin_listener);
        let mut command = proxyd(setup);
        command
            .env("EINHORN_MASTER_PID", std::process::id().to_string())
            .env("EINHORN_FD_COUNT", "2")
            .env("EINHORN_FD_0", fd.as_raw_fd().to_string())
            .env("EINHORN_FD_1", admin_fd.as_raw_fd().to_string())
            .env("EINHORN_SOCK_PATH", &socket_path)
            .env("EINHORN_CHILD_INDEX", n.to_string());
        Process::spawn(command)
    };
    let first = worker(0);
    expect_ack(&commands, first.pid()).await;
    let load = Load::start(proxy, setup).await;
    tokio::time::sleep(setup.before).await;
    let switch = Instant::now();
    let second = worker(1);
    expect_ack(&commands, second.pid()).await;
    first.signal("USR2");
    let switch = switch.elapsed();
    tokio::time::sleep(setup.after).await;
    let report = load.finish("einhorn", switch).await;
    // The retired worker left the shared admin socket to its successor at
    // once: readiness there is the new worker's.
    for _ in 0..5 {
        let ready = crate::scrape::get(admin, "/readyz").await;
        assert_eq!(ready.status, 200, "/readyz after the replacement: {}", ready.body);
    }
    // The long tunnels are closed now: the retired worker finishes its drain.
    assert!(first.exit().await.success(), "the retired worker exits 0");
    second.signal("TERM");
    assert!(second.exit().await.success());
    report
}

/// Reads one command line from Einhorn's socket: the worker's ack, byte for byte.
async fn expect_ack(commands: &tokio::net::UnixListener, pid: u32) {
    let read = async {
        let (mut stream, _) = commands.accept().await.unwrap();
        let mut line = Vec::new();
        stream.read_to_end(&mut line).await.unwrap();
        String::from_utf8(line).unwrap()
    };
    let line = tokio::time::timeout(Duration::from_secs(20), read).await.expect("the worker acks in time");
    assert_eq!(line, format!("command: worker:ack%0Apid: {pid}%0A\n"), "go-einhorn's ack bytes");
}

/// (b) SIGUSR1: proxyd upgrades itself in place.
pub async fn sigusr1(setup: &Setup) -> Report {
    let mut command = proxyd(setup);
    command.args(["--listen-ip", "127.0.0.1", "--listen-port", "0", "--admin-listen", "127.0.0.1:0"]);
    let old = Process::spawn(command);
    let listening = old.wait_for(|v| v["message"] == "proxyd listening").await;
    let proxy: SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = listening["admin"].as_str().unwrap().parse().unwrap();
    let load = Load::start(proxy, setup).await;
    tokio::time::sleep(setup.before).await;
    let switch = Instant::now();
    old.signal("USR1");
    let upgraded = old.wait_for(|v| v["message"] == "upgrade: the new process serves; this one drains").await;
    let switch = switch.elapsed();
    let new_pid = u32::try_from(upgraded["pid"].as_u64().unwrap()).unwrap();
    let _new = PidGuard(new_pid);
    tokio::time::sleep(setup.after).await;
    let report = load.finish("sigusr1", switch).await;
    // The admin socket went over too: the new process answers ready.
    let ready = crate::scrape::get(admin, "/readyz").await;
    assert_eq!(ready.status, 200, "/readyz after the upgrade: {}", ready.body);
    assert!(old.exit().await.success(), "the old process exits 0 after its drain");
    signal_pid(new_pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{new_pid}")).exists() {
        assert!(Instant::now() < deadline, "the new proxyd (pid {new_pid}) did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report
}

/// (c) systemd restarts a socket-activated service: stop (SIGTERM, wait
/// for the exit), start, with the sockets held throughout. `grace` is the
/// `--shutdown-grace` of the stopped process (`setup.args` must not set
/// one): the restart waits for it, and long tunnels end with it.
pub async fn socket_restart(setup: &Setup, grace: &str) -> Report {
    let proxy_socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = proxy_socket.local_addr().unwrap();
    let start = || {
        let (p, a) = (inheritable(&proxy_socket), inheritable(&admin_socket));
        let (p, a) = (p.as_raw_fd(), a.as_raw_fd());
        assert!(p > 4 && a > 4, "fds 3 and 4 are this process's own");
        // As systemd: the sockets as fds 3 and 4, LISTEN_PID the service's pid.
        let script = format!(
            "export LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=proxy:admin; exec \"$0\" \"$@\" 3<&{p} 4<&{a} {p}<&- {a}<&-"
        );
        let mut command = Command::new("bash");
        command.arg("-c").arg(script).arg(&setup.binary).args(&setup.args).args(["--shutdown-grace", grace]);
        Process::spawn(command)
    };
    let first = start();
    first.wait_for(|v| v["message"] == "proxyd listening").await;
    let load = Load::start(proxy, setup).await;
    tokio::time::sleep(setup.before).await;
    let switch = Instant::now();
    first.signal("TERM");
    assert!(first.exit().await.success(), "the stopped service exits 0");
    let second = start();
    second.wait_for(|v| v["message"] == "proxyd listening").await;
    let switch = switch.elapsed();
    tokio::time::sleep(setup.after).await;
    let report = load.finish("socket-restart", switch).await;
    second.signal("TERM");
    assert!(second.exit().await.success());
    report
}
