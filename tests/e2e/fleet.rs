//! The reference for running more than one proxyd (`make fleet-test`,
//! docs/operations.md "Running more than one"): three replicas of the real
//! binary behind HAProxy (the distribution's package, health-checking
//! `/readyz` on each admin port), their signed table fetched from a local
//! HTTP origin through `--policy-url`, and Prometheus (the distribution's
//! package) scraping all of them with the repository's alert rules loaded.
//!
//! It checks that a newly published table is active on every replica within
//! the poll interval + 1 s; that a tampered table is refused by all of them
//! while the last good one serves; that a rolling upgrade of every replica
//! under steady load through HAProxy fails no CONNECT; and that the alert
//! rules evaluate against the scraped series. It prints a table.
//!
//! Upgrade mode (`FLEET_UPGRADE`): `drain` (default) takes a replica out at
//! the balancer first (HAProxy's runtime API `set server ... state drain`, as
//! an endpoint removal or a preStop delay does on Kubernetes), then SIGTERM
//! (`/readyz` 503: the health check keeps it out), then a fresh process, back
//! in once its `/readyz` passes HAProxy's check. `sigusr1` is the switch for
//! the in-place upgrade of the lifecycle work once it is merged: SIGUSR1 to
//! the running replica instead of stop-and-start (see `upgrade_in_place`).
//!
//! Ignored in `make test`: it needs haproxy and prometheus (about 15 s;
//! `.ci/run` runs it every time). Everything listens on and connects to loopback; the replicas
//! resolve through the in-test DNS server only.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use testkit::client::{self, lo};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

use crate::container::{free_port, probe, wait_status};
use crate::support::{policyc, write};

const REPLICAS: usize = 3;
const POLL: Duration = Duration::from_secs(2);

const ACL_V1: &str = "\
version: v1
services: []
default:
  project: default
  action: enforce
  allowed_domains: [allowed.fleet.test]
global_deny_list: [blocked-v1.fleet.test]
";

const ACL_V2: &str = "\
version: v1
services: []
default:
  project: default
  action: enforce
  allowed_domains: [allowed.fleet.test]
global_deny_list: [blocked-v1.fleet.test, blocked-v2.fleet.test]
";

/// The signed-table origin: serves one body at `/policy.bin` with an ETag,
/// answering 304 to a matching If-None-Match, as an object store would.
struct Origin {
    addr: SocketAddr,
    body: Arc<Mutex<(Vec<u8>, u64)>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start(body: Vec<u8>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new((body, 1)));
        let requests = Arc::new(AtomicU64::new(0));
        let (shared, counted) = (Arc::clone(&body), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (shared, counted) = (Arc::clone(&shared), Arc::clone(&counted));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let (bytes, generation) = shared.lock().unwrap().clone();
                    let etag = format!("\"g{generation}\"");
                    let matches =
                        head.lines().any(|l| l.strip_prefix("if-none-match:").is_some_and(|v| v.trim() == etag));
                    let reply = if matches {
                        format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n").into_bytes()
                    } else {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                            bytes.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&bytes);
                        r
                    };
                    let _ = stream.write_all(&reply).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Origin { addr, body, requests, task }
    }

    /// Publishes new bytes (a new ETag).
    fn publish(&self, bytes: Vec<u8>) {
        let mut body = self.body.lock().unwrap();
        body.0 = bytes;
        body.1 += 1;
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child process (proxyd, haproxy, prometheus) killed on drop, its
/// output in a file for the failure message.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(program: &Path, args: &[String], log: PathBuf) -> Process {
        Self::spawn_with_env(program, args, &[], log)
    }

    fn spawn_with_env(program: &Path, args: &[String], env: &[(String, String)], log: PathBuf) -> Process {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env("MALLOC_ARENA_MAX", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(sent.unwrap().success(), "kill -{signal}");
    }

    /// Waits (at most `within`) for the exit; the exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "no exit within {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One replica: its fixed ports (HAProxy and Prometheus name them), its
/// command line, and the running process.
struct Replica {
    name: String,
    proxy: SocketAddr,
    admin: SocketAddr,
    args: Vec<String>,
    process: Option<Process>,
    dir: PathBuf,
    starts: usize,
}

impl Replica {
    fn start(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("{}.{}.log", self.name, self.starts));
        self.process = Some(Process::spawn(&testkit::binary("proxyd"), &self.args, log));
    }

    fn process(&mut self) -> &mut Process {
        self.process.as_mut().expect("the replica runs")
    }

    async fn policy(&self) -> Value {
        let reply = testkit::scrape::get(self.admin, "/policy").await;
        assert_eq!(reply.status, 200, "{}: /policy: {}", self.name, reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }
}

/// HAProxy's runtime API (its admin socket): one command, its answer.
fn haproxy_command(socket: &Path, command: &str) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// `show stat` rows of the backend's servers: name -> (status, current sessions, retries, redispatches).
fn haproxy_servers(socket: &Path) -> Vec<(String, String, u64, u64, u64)> {
    let csv = haproxy_command(socket, "show stat");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (px, sv, status, scur, wretr, wredis) =
        (col("pxname"), col("svname"), col("status"), col("scur"), col("wretr"), col("wredis"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > wredis && f[px] == "replicas" && f[sv].starts_with('r'))
        .map(|f| {
            let n = |i: usize| f[i].parse().unwrap_or(0);
            (f[sv].to_owned(), f[status].to_owned(), n(scur), n(wretr), n(wredis))
        })
        .collect()
}

fn server_status(socket: &Path, name: &str) -> String {
    haproxy_servers(socket).into_iter().find(|s| s.0 == name).map(|s| s.1).unwrap_or_default()
}

async fn wait_server(socket: &Path, name: &str, status: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = server_status(socket, name);
        if now.starts_with(status) {
            return;
        }
        assert!(Instant::now() < deadline, "HAProxy: {name} is {now}, not {status}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prometheus' HTTP API: `GET path` (HTTP/1.0, so the body is not chunked), parsed.
async fn prometheus_get(addr: SocketAddr, path: &str) -> Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await.unwrap().unwrap();
    let text = String::from_utf8(all).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("Prometheus {path}: {e}: {text}"))
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn promql(addr: SocketAddr, query: &str) -> Value {
    let answer = prometheus_get(addr, &format!("/api/v1/query?query={}", encode(query))).await;
    assert_eq!(answer["status"], "success", "PromQL {query}: {answer}");
    answer["data"]["result"].clone()
}

/// Steady CONNECT load through the balancer: `clients` loops, each one
/// tunnel at a time (CONNECT, 200, echo, close), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(balancer: SocketAddr, target: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok, failures, target) = (stop.clone(), ok.clone(), failures.clone(), target.clone());
                tokio::spawn(async move {
                    let payload = format!("client {i} through the fleet");
                    while !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(
                            Duration::from_secs(10),
                            one_tunnel(balancer, &target, payload.as_bytes()),
                        )
                        .await
                        {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e),
                            Err(_) => failures
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push("no answer within 10 s".into()),
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Load { stop, ok, failures, tasks }
    }

    fn counts(&self) -> (u64, usize) {
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len())
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)),
        )
    }
}

async fn one_tunnel(balancer: SocketAddr, target: &str, payload: &[u8]) -> Result<(), String> {
    let mut stream = TcpStream::connect(balancer).await.map_err(|e| format!("connect to HAProxy: {e}"))?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("send CONNECT: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) => return Err(format!("closed before an answer: {:?}", String::from_utf8_lossy(&head))),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("read answer: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {}", text.lines().next().unwrap_or_default()));
    }
    stream.write_all(payload).await.map_err(|e| format!("write through tunnel: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).await.map_err(|e| format!("read echo: {e}"))?;
    if back != payload {
        return Err("echo differs".into());
    }
    Ok(())
}

/// `policyc compile SOURCE --sign KEY --serial N`, returning the table's bytes and revision.
fn signed_table(dir: &Path, source: &str, serial: u64) -> (Vec<u8>, String) {
    let out = format!("table-{serial}.bin");
    let run = policyc(dir, &["compile", source, "-o", &out, "--sign", "ci.key", "--serial", &serial.to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let revision = run.stderr.split("(revision ").nth(1).and_then(|r| r.split(',').next()).unwrap().to_owned();
    (std::fs::read(dir.join(out)).unwrap(), revision)
}

/// Waits until every replica's /policy shows `revision`; each one's delay.
async fn wait_revision(replicas: &[Replica], revision: &str, within: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut landed: Vec<Option<Duration>> = vec![None; replicas.len()];
    while landed.iter().any(Option::is_none) {
        for (i, replica) in replicas.iter().enumerate() {
            if landed[i].is_none() && replica.policy().await["revision"] == revision {
                landed[i] = Some(start.elapsed());
            }
        }
        assert!(start.elapsed() < within, "revision {revision} not on every replica within {within:?}: {landed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    landed.into_iter().map(Option::unwrap).collect()
}

/// The lifecycle work's in-place upgrade (SIGUSR1), for `FLEET_UPGRADE=sigusr1`
/// once it is merged: the replica re-executes itself on the same listeners.
/// What "done" looks like (a new PID, a log line) is that work's contract;
/// until it lands here, this waits for /readyz to pass again after the signal.
async fn upgrade_in_place(replica: &mut Replica) {
    replica.process().signal("USR1");
    wait_status(replica.admin, "/readyz", 200, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs haproxy and prometheus and takes about 15 s: run by `make fleet-test`"]
async fn three_replicas_behind_haproxy_publish_refuse_tampering_and_upgrade_without_failures() {
    for tool in ["haproxy", "prometheus"] {
        assert!(
            Command::new(tool).arg("-v").output().is_ok() || Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed (apt-get install haproxy prometheus)"
        );
    }
    let mode = std::env::var("FLEET_UPGRADE").unwrap_or_else(|_| "drain".into());
    assert!(mode == "drain" || mode == "sigusr1", "FLEET_UPGRADE is drain or sigusr1, not {mode}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut report: Vec<(String, String)> = Vec::new();

    // Keys, and the first signed table on the origin.
    assert_eq!(policyc(d, &["keygen", "--private", "ci.key", "--public", "ci.pub"]).code, 0);
    write(d, "v1.yaml", ACL_V1);
    write(d, "v2.yaml", ACL_V2);
    let (table1, rev1) = signed_table(d, "v1.yaml", 100);
    let origin = Origin::start(table1).await;
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(28, 0, 1)).await;
    // The one name the tables allow, resolving to the echo upstream (allowed by --allow-address).
    dns.set("allowed.fleet.test", Answer::Records(vec![upstream.addr.ip()]));

    // Three replicas, fetching from the origin, trusting only ci.pub.
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| {
            let (proxy, admin) = (free_port(), free_port());
            let args: Vec<String> = [
                "--listen-ip",
                "127.0.0.1",
                "--listen-port",
                &proxy.to_string(),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
                "--policy-url",
                &format!("http://{}/policy.bin", origin.addr),
                "--policy-public-key",
                d.join("ci.pub").to_str().unwrap(),
                "--policy-poll-interval",
                &format!("{}s", POLL.as_secs()),
                "--policy-cache",
                d.join(format!("cache-r{i}.bin")).to_str().unwrap(),
                "--resolver-address",
                &dns.addr().to_string(),
                "--allow-address",
                &upstream.addr.ip().to_string(),
                // Clients carry no credentials: they all get the default rule.
                "--allow-missing-role",
                "--shutdown-grace",
                "10s",
                "--log-format",
                "json",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            Replica {
                name: format!("r{i}"),
                proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                args,
                process: None,
                dir: d.to_path_buf(),
                starts: 0,
            }
        })
        .collect();
    for replica in &mut replicas {
        replica.start();
    }
    for replica in &replicas {
        wait_status(replica.admin, "/readyz", 200, Duration::from_secs(30)).await;
        assert_eq!(replica.policy().await["revision"], rev1.as_str());
    }

    // HAProxy: TCP, least connections, /readyz on each admin port.
    let balancer = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let socket = d.join("haproxy.sock");
    // deploy/haproxy/proxyd.cfg as shipped, with this run's addresses in its environment.
    let config = testkit::repo_root().join("deploy/haproxy/proxyd.cfg");
    let mut env: Vec<(String, String)> = vec![
        ("HAPROXY_ADMIN_SOCKET".into(), socket.display().to_string()),
        ("PROXY_BIND".into(), balancer.to_string()),
    ];
    for (i, r) in replicas.iter().enumerate() {
        env.push((format!("R{i}_PROXY"), r.proxy.to_string()));
        env.push((format!("R{i}_ADMIN_PORT"), r.admin.port().to_string()));
    }
    let check = Command::new("haproxy").args(["-c", "-f"]).arg(&config).envs(env.clone()).output().unwrap();
    assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let _haproxy = Process::spawn_with_env(
        Path::new("haproxy"),
        &["-db".into(), "-f".into(), config.display().to_string()],
        &env,
        d.join("haproxy.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() || haproxy_servers(&socket).iter().filter(|s| s.1 == "UP").count() < REPLICAS {
        assert!(Instant::now() < deadline, "HAProxy did not see {REPLICAS} replicas UP:\n{}", _haproxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Prometheus scraping every admin port, with the repository's alert rules.
    let prometheus = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let rules = testkit::repo_root().join("deploy/prometheus/alerts.yaml");
    let targets: Vec<String> = replicas.iter().map(|r| format!("'{}'", r.admin)).collect();
    let prom_cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\n\
         scrape_configs:\n  - job_name: proxyd\n    static_configs:\n      - targets: [{}]\n",
        rules.display(),
        targets.join(", ")
    );
    write(d, "prometheus.yml", &prom_cfg);
    let _prometheus = Process::spawn(
        Path::new("prometheus"),
        &[
            format!("--config.file={}", d.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", d.join("tsdb").display()),
            format!("--web.listen-address={prometheus}"),
            "--log.level=warn".into(),
        ],
        d.join("prometheus.log"),
    );
    wait_status(prometheus, "/-/ready", 200, Duration::from_secs(60)).await;

    // Steady load through the balancer for the whole run.
    let target = format!("allowed.fleet.test:{}", upstream.addr.port());
    let load = Load::start(balancer, target.clone(), 4);

    // 1. Publish: every replica serves the new table within the poll interval + 1 s.
    let (table2, rev2) = signed_table(d, "v2.yaml", 200);
    origin.publish(table2.clone());
    let landed = wait_revision(&replicas, &rev2, POLL + Duration::from_secs(1)).await;
    let slowest = landed.iter().max().unwrap();
    report.push((
        "publish: new table active on all replicas".into(),
        format!("{landed:.2?} (limit {:?})", POLL + Duration::from_secs(1)),
    ));
    for replica in &replicas {
        let denied = client::connect(replica.proxy, "blocked-v2.fleet.test:443", "").await;
        assert_eq!(denied.status, 403, "{}: the new table's deny list applies", replica.name);
    }
    println!("fleet: published {rev2}; on every replica after at most {slowest:?}");

    // 2. Tamper: a higher serial with one byte of the body flipped. Every
    // replica refuses it; the last good table keeps serving.
    let (mut tampered, _) = signed_table(d, "v1.yaml", 300);
    let middle = tampered.len() / 3;
    tampered[middle] ^= 0x20;
    let fetches_before = origin.requests.load(Ordering::Relaxed);
    origin.publish(tampered);
    let deadline = Instant::now() + POLL * 3;
    let mut refused = vec![false; REPLICAS];
    while refused.iter().any(|r| !r) {
        for (i, replica) in replicas.iter().enumerate() {
            let policy = replica.policy().await;
            assert_eq!(policy["revision"], rev2.as_str(), "{}: the last good table serves", replica.name);
            let body = metrics_text(replica.admin).await;
            refused[i] = body
                .lines()
                .any(|l| l.starts_with("proxyd_policy_fetch_total{result=\"failed\"}") && !l.ends_with(" 0"));
        }
        assert!(Instant::now() < deadline, "not every replica refused the tampered table: {refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(origin.requests.load(Ordering::Relaxed) > fetches_before, "the replicas fetched the tampered table");
    for replica in &replicas {
        let denied = client::connect(replica.proxy, "blocked-v2.fleet.test:443", "").await;
        assert_eq!(denied.status, 403, "{}: still the last good table", replica.name);
        assert_eq!(probe(replica.admin, "/readyz").await, Some(200), "{}: still ready", replica.name);
    }
    // Prometheus sees the refusals (a few scrapes and an evaluation later).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A refused --policy-url fetch counts in proxyd_policy_fetch_total{result="failed"} (it never
    // becomes a reload), which ProxydPolicyFetchFailed reads: every replica's refusal is scraped, and
    // the rule fires for each (pending or firing: the rule has no `for`, so it fires at once).
    let failed_fetches =
        promql(prometheus, "max_over_time(proxyd_policy_fetch_total{result=\"failed\"}[1m]) > 0").await;
    assert_eq!(
        failed_fetches.as_array().unwrap().len(),
        REPLICAS,
        "every replica's refusal is scraped: {failed_fetches}"
    );
    let fetch_alerts = async || promql(prometheus, "ALERTS{alertname=\"ProxydPolicyFetchFailed\"}").await;
    let alert_deadline = Instant::now() + Duration::from_secs(10);
    let mut alerts = fetch_alerts().await;
    while alerts.as_array().unwrap().len() < REPLICAS && Instant::now() < alert_deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        alerts = fetch_alerts().await;
    }
    assert_eq!(alerts.as_array().unwrap().len(), REPLICAS, "ProxydPolicyFetchFailed fires for every replica: {alerts}");
    report.push((
        "after tamper: ProxydPolicyFetchFailed alerts".into(),
        format!("{}/{REPLICAS} replicas", alerts.as_array().unwrap().len()),
    ));
    report.push((
        "tamper: refused by all, last good serves".into(),
        format!("{REPLICAS}/{REPLICAS} refused; revision {rev2} serving"),
    ));
    // Back to a good table (a higher serial again) so upgraded replicas start from it.
    let (table3, rev3) = signed_table(d, "v2.yaml", 400);
    origin.publish(table3);
    let _ = rev3;

    // 3. Rolling upgrade under load: 0 failed CONNECTs.
    let (ok_before, failed_before) = load.counts();
    assert_eq!(failed_before, 0, "no failure before the upgrade: {:?}", first(&load.failures));
    let upgrade_start = Instant::now();
    for replica in &mut replicas {
        if mode == "sigusr1" {
            upgrade_in_place(replica).await;
            continue;
        }
        let name = replica.name.clone();
        haproxy_command(&socket, &format!("set server replicas/{name} state drain"));
        wait_server(&socket, &name, "DRAIN", Duration::from_secs(5)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while haproxy_servers(&socket).iter().any(|s| s.0 == name && s.2 > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replica.process().signal("TERM");
        let code = replica.process().wait_exit(Duration::from_secs(15));
        assert_eq!(code, Some(0), "{name} exits 0 after SIGTERM:\n{}", replica.process().log());
        wait_server(&socket, &name, "DOWN", Duration::from_secs(5)).await;
        replica.start();
        wait_status(replica.admin, "/readyz", 200, Duration::from_secs(30)).await;
        // Back in only through the health check: DRAIN (checked UP) first, then ready.
        wait_server(&socket, &name, "DRAIN", Duration::from_secs(10)).await;
        haproxy_command(&socket, &format!("set server replicas/{name} state ready"));
        wait_server(&socket, &name, "UP", Duration::from_secs(5)).await;
    }
    let upgrade_time = upgrade_start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok_after, _) = load.counts();
    let stats = haproxy_servers(&socket);
    let (retries, redispatches): (u64, u64) = stats.iter().fold((0, 0), |(a, b), s| (a + s.3, b + s.4));

    // 4. The alert rules against the scraped series.
    tokio::time::sleep(Duration::from_secs(3)).await; // a few scrapes and evaluations after the upgrade
    let up = promql(prometheus, "up{job=\"proxyd\"} == 1").await;
    assert_eq!(up.as_array().unwrap().len(), REPLICAS, "Prometheus scrapes every replica: {up}");
    let rules = prometheus_get(prometheus, "/api/v1/rules").await;
    let mut rule_rows = Vec::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_owned();
            assert_eq!(rule["health"], "ok", "rule {name}: {}", rule["lastError"]);
            assert!(rule["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")), "rule {name} evaluated");
            // Every proxyd series the rule reads is scraped.
            let query = rule["query"].as_str().unwrap();
            let metrics: std::collections::BTreeSet<&str> = query
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("proxyd_"))
                .collect();
            for metric in &metrics {
                let series = promql(prometheus, &format!("count({{__name__=\"{metric}\"}})")).await;
                assert!(!series.as_array().unwrap().is_empty(), "rule {name} reads {metric}, which no replica exports");
            }
            let alerts = rule["alerts"].as_array().cloned().unwrap_or_default();
            let on: Vec<String> = alerts
                .iter()
                .map(|a| {
                    format!(
                        "{} {}",
                        a["state"].as_str().unwrap_or("?"),
                        a["labels"]["instance"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            rule_rows.push(format!("{name}: ok, {} series, {} alerts {on:?}", metrics.len(), alerts.len()));
        }
    }
    assert!(!rule_rows.is_empty(), "the alert rules are loaded");

    let (ok_total, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed CONNECTs through the fleet, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok_after > ok_before, "the load kept running through the upgrade");

    report.push((
        format!("rolling upgrade ({mode}) under load"),
        format!("{} CONNECTs during it, 0 failed; {upgrade_time:.1?}; HAProxy retries {retries}, redispatches {redispatches}", ok_after - ok_before),
    ));
    report.push(("CONNECTs through HAProxy, whole run".into(), format!("{ok_total} ok, 0 failed")));
    report.push(("Prometheus targets up".into(), format!("{}/{REPLICAS}", up.as_array().unwrap().len())));
    for replica in &replicas {
        let policy = replica.policy().await;
        println!(
            "fleet: {} {} reloads {} last {}",
            replica.name, replica.admin, policy["reloads"], policy["last_reload"]
        );
    }
    for row in rule_rows {
        report.push(("alert rule".into(), row));
    }
    println!("\nfleet-test: {REPLICAS} replicas, HAProxy, --policy-url every {POLL:?}, Prometheus");
    println!("| check | result |\n|---|---|");
    for (check, result) in &report {
        println!("| {check} | {result} |");
    }
}

/// The first few failures (a failing run can have thousands).
fn first(failures: &Mutex<Vec<String>>) -> Vec<String> {
    failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().take(5).cloned().collect()
}

/// `/metrics` of one replica, as text.
async fn metrics_text(admin: SocketAddr) -> String {
    testkit::scrape::get(admin, "/metrics").await.body
}
