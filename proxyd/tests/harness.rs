//! Starting a real proxy in-process on 127.0.0.1:0 and talking to it the
//! way clients do: raw bytes over TCP, so every answer is seen as sent.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_policy::acl;
use egress_policy::policy::ActionSet;
use egress_policy::table::{self, Metadata};
use proxyd::{Config, StartError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An ACL used by most tests. Roles: `enf` (enforce), `rep` (report), `opn`
/// (open); default: enforce, with the test names allowed.
pub const ACL: &str = "\
version: v1
services:
  - name: enf
    project: p-enf
    action: enforce
    allowed_domains: [\"*.allowed.test\", upstream.test]
  - name: rep
    project: p-rep
    action: report
  - name: opn
    project: p-opn
    action: open
  - name: authed
    project: users
    action: report
default:
  project: other
  action: enforce
  allowed_domains: [\"*.test\", \"127.0.1.1\"]
global_deny_list: [denied.example]
";

/// Compiles `yaml` into a table file inside `dir`.
pub fn compile(dir: &Path, yaml: &str) -> PathBuf {
    let checked = acl::check_source("test.yaml", yaml, ActionSet::default());
    let policy = checked.policy.unwrap_or_else(|| panic!("test ACL does not compile: {:#?}", checked.diagnostics));
    let bytes =
        table::encode(&policy, &Metadata::for_source(Path::new("test.yaml"), yaml.as_bytes(), ActionSet::default()));
    let path = dir.join("policy.bin");
    std::fs::write(&path, bytes).expect("write table");
    path
}

/// A proxy running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The admin listener, when the config asked for one (`admin_listen`).
    pub admin: Option<SocketAddr>,
    /// Every address the proxy tried to connect to.
    pub attempts: Arc<Mutex<Vec<SocketAddr>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts a proxy for `yaml`, resolving through `dns`, with `configure`
    /// applied last. The egress guard records every attempt and refuses any
    /// address outside 127.0.0.0/8 and ::1: tests never leave loopback.
    pub async fn start(yaml: &str, dns: SocketAddr, configure: impl FnOnce(&mut Config)) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = compile(dir.path(), yaml);
        let mut config = Config::with_policy(policy);
        config.resolver_addresses = vec![dns];
        config.allow_missing_role = true;
        config.dns_timeout = Duration::from_secs(2);
        config.connect_timeout = Duration::from_secs(2);
        config.shutdown_grace = Duration::from_secs(2);
        let attempts: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let recorded = Arc::clone(&attempts);
        config.egress_guard = Some(Arc::new(move |addr: SocketAddr| {
            recorded.lock().expect("attempts lock").push(addr);
            addr.ip().is_loopback()
        }));
        configure(&mut config);
        Proxy::start_with(config, dir, attempts).await
    }

    pub async fn start_with(config: Config, dir: tempfile::TempDir, attempts: Arc<Mutex<Vec<SocketAddr>>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let admin_listener = match config.admin_listen {
            Some(admin) => Some(TcpListener::bind(admin).await.expect("bind admin")),
            None => None,
        };
        let admin = admin_listener.as_ref().map(|l| l.local_addr().expect("admin local addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxyd::serve(listener, admin_listener, config, async move {
            let _ = rx.await;
        }));
        Proxy { addr, admin, attempts, shutdown: Some(tx), task: Some(task), _dir: dir }
    }

    /// Asks the proxy to stop (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the proxy and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), StartError> {
        self.begin_shutdown();
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(Duration::from_secs(15), task).await.expect("proxy stops in time");
        self.assert_loopback_only();
        result.expect("proxy task did not panic")
    }

    /// The network-safety guard: fails the test if the proxy ever tried a
    /// non-loopback address.
    pub fn assert_loopback_only(&self) {
        let attempts = self.attempts.lock().expect("attempts lock");
        let outside: Vec<_> = attempts.iter().filter(|a| !a.ip().is_loopback()).collect();
        assert!(outside.is_empty(), "the proxy tried to connect outside loopback: {outside:?}");
    }

    pub fn attempt_count(&self) -> usize {
        self.attempts.lock().expect("attempts lock").len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.assert_loopback_only();
        self.begin_shutdown();
    }
}

/// A response head as the client received it, and the connection after it.
pub struct Reply<S> {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub stream: S,
}

impl<S> Reply<S> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `CONNECT target` (plus `extra` header lines) and reads the answer.
pub async fn connect(proxy: SocketAddr, target: &str, extra: &str) -> Reply<TcpStream> {
    let stream = TcpStream::connect(proxy).await.expect("connect to proxy");
    send(stream, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n")).await
}

/// Sends raw bytes and reads one response head (and its body, if it has a length).
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, raw: &str) -> Reply<S> {
    stream.write_all(raw.as_bytes()).await.expect("send request");
    read_reply(stream).await
}

pub async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Reply<S> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the head is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(n > 0, "connection closed before a full response head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).expect("UTF-8 head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("status code");
    let reason = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("read body");
    Reply { status, reason, headers, body: String::from_utf8(body).expect("UTF-8 body"), stream }
}

/// Writes `data` through a tunnel and reads the same number of bytes back.
pub async fn echo_through<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.expect("write through tunnel");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read echo");
    back
}

/// Reads until end of stream (with a deadline); returns what arrived.
pub async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut all)).await {
        Ok(Ok(_)) => Ok(all),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no end of stream in time")),
    }
}

/// A loopback address distinct from 127.0.0.1 (Linux routes all of 127/8).
pub fn lo(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}
