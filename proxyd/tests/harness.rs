//! Starting a real proxy in-process on 127.0.0.1:0 and talking to it the
//! way clients do: raw bytes over TCP, so every answer is seen as sent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_policy::acl;
use egress_policy::policy::ActionSet;
use egress_policy::table::{self, Metadata};
use proxyd::{Config, StartError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use testkit::client::{Reply, connect, echo_through, lo, read_reply, read_to_end, send};
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
