//! Signed tables against the real binary: refusals at start (exit 1 naming
//! the reason), refusals on reload (the active table keeps serving),
//! rollback protection, key rotation, and `--policy-url` polling from an
//! HTTP server in this test on loopback (ETag/304, updates, a tampered table,
//! a huge response, the server down with and without a cache).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use egress_policy::policy::ActionSet;
use egress_policy::signature::{self, PrivateKey};
use egress_policy::{acl, table};
use http::{Request, Response, StatusCode, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use testkit::daemon::Daemon;
use tokio::runtime::Runtime;

use crate::harness::ACL;

fn proxyd_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_proxyd"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A key pair: the private key and its public key file in `dir`.
fn keypair(dir: &Path, name: &str) -> (PrivateKey, PathBuf) {
    let (_, key) = PrivateKey::generate(&ring::rand::SystemRandom::new()).unwrap();
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&public, key.public_key().to_text()).unwrap();
    (key, public)
}

/// An unsigned table; `variant` changes its content (and so its revision).
fn unsigned(variant: u32) -> Vec<u8> {
    let yaml = ACL.replace("denied.example", &format!("denied{variant}.example"));
    let policy = acl::check_source("t.yaml", &yaml, ActionSet::default()).policy.unwrap();
    table::encode(&policy, &table::Metadata::for_source(Path::new("t.yaml"), yaml.as_bytes(), ActionSet::default()))
}

fn signed(variant: u32, key: &PrivateKey, serial: u64) -> Vec<u8> {
    signature::sign_table(&unsigned(variant), key, serial).unwrap()
}

fn revision(bytes: &[u8]) -> String {
    table::decode(bytes).unwrap().revision().to_owned()
}

/// Replaces `path` by rename, as a deploy would.
fn publish(path: &Path, bytes: &[u8]) {
    table::write_atomically(path, bytes).unwrap();
}

/// Runs proxyd expecting exit 1; returns stderr.
fn refused_at_start(args: &[&str]) -> String {
    let output = std::process::Command::new(proxyd_binary())
        .args(["--listen-ip", "127.0.0.1", "--listen-port", "0"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    stderr
}

fn admin(daemon: &Daemon) -> SocketAddr {
    daemon.listening["admin"].as_str().expect("admin address").parse().unwrap()
}

fn policy_json(rt: &Runtime, admin: SocketAddr) -> Value {
    let reply = rt.block_on(testkit::scrape::get(admin, "/policy"));
    assert_eq!(reply.status, 200, "{reply:?}");
    serde_json::from_str(&reply.body).unwrap()
}

fn metric(rt: &Runtime, admin: SocketAddr, series: &str) -> String {
    rt.block_on(testkit::scrape::scrape(admin)).value(series).to_owned()
}

/// Waits for the next reload line (swapped or refused) and returns it.
fn next_reload(daemon: &mut Daemon) -> Value {
    daemon.wait_for(|v| {
        let m = v["message"].as_str().unwrap_or_default();
        m == "policy reloaded" || m.starts_with("policy reload refused")
    })
}

#[test]
fn unsigned_wrong_or_corrupt_tables_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "ci");
    let (other, _) = keypair(dir.path(), "other");
    let path = dir.path().join("policy.bin");
    let start = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        refused_at_start(&["--policy", s(&path), "--policy-public-key", s(&public)])
    };
    let e = start(&unsigned(1));
    assert!(e.contains("no signature"), "{e}");
    let e = start(&signed(1, &other, 5));
    assert!(e.contains(&format!("unknown key id {}", other.public_key().id())), "{e}");
    let mut forged = signed(1, &key, 5);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let e = start(&forged);
    assert!(e.contains("bad signature"), "{e}");
    let mut corrupt = signed(1, &key, 5);
    corrupt[table::HEADER_LEN + 3] ^= 1;
    let e = start(&corrupt);
    assert!(e.contains("checksum mismatch"), "{e}");
    let e = start(&signed(1, &key, 5)[..200]);
    assert!(e.contains("truncated"), "{e}");

    // Flags that need each other.
    let e = refused_at_start(&["--policy-url", "http://127.0.0.1:9/p.bin"]);
    assert!(e.contains("--policy-public-key"), "{e}");
    let e = refused_at_start(&[
        "--policy",
        s(&path),
        "--policy-url",
        "http://127.0.0.1:9/p",
        "--policy-public-key",
        s(&public),
    ]);
    assert!(e.contains("--policy"), "{e}");
    let e = refused_at_start(&["--policy", s(&path), "--policy-public-key", s(&path)]);
    assert!(e.contains("PUBLIC KEY"), "{e}");
    let e = refused_at_start(&["--policy", s(&path), "--allow-policy-rollback"]);
    assert!(e.contains("--policy-public-key"), "{e}");
    let e = refused_at_start(&["--policy", s(&path), "--policy-cache", s(&path)]);
    assert!(e.contains("--policy-url"), "{e}");
    let e = refused_at_start(&["--policy-url", "ftp://127.0.0.1/p", "--policy-public-key", s(&public)]);
    assert!(e.contains("http"), "{e}");
}

#[test]
fn reload_refusals_keep_the_active_table_and_serials_must_grow() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "ci");
    let path = dir.path().join("policy.bin");
    let first = signed(1, &key, 10);
    publish(&path, &first);
    let mut daemon = Daemon::start(
        proxyd_binary(),
        &[
            "--policy",
            s(&path),
            "--policy-public-key",
            s(&public),
            "--admin-listen",
            "127.0.0.1:0",
            "--allow-missing-role",
            // The watcher starts just after the listening line; the periodic
            // check catches a change made before it watches.
            "--policy-check-interval",
            "1s",
        ],
        &[],
    );
    assert_eq!(daemon.listening["policy_serial"], 10);
    let admin = admin(&daemon);
    let p = policy_json(&rt, admin);
    assert_eq!(p["serial"], 10);
    assert_eq!(p["signed_by"], key.public_key().id().to_string());
    assert_eq!(p["signature"], "verified");
    assert_eq!(p["source"], "file");
    assert!(p.get("last_fetch").is_none(), "no fetch for a file source: {p}");
    assert_eq!(metric(&rt, admin, "proxyd_policy_serial"), "10");

    // The decision log carries the serial beside the revision.
    let reply = rt.block_on(testkit::client::connect(daemon.addr, "denied1.example:443", ""));
    assert_eq!(reply.status, 403);
    let line = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION");
    assert_eq!(line["policy_serial"], 10);
    assert_eq!(line["policy_revision"], revision(&first));

    let refusals = [
        (unsigned(2), "no signature"),
        (signed(2, &key, 9), "rollback: serial 9 is lower than the active serial 10"),
        (signed(2, &key, 10), "serial 10 is already active with different content"),
        (
            {
                let mut b = signed(2, &key, 11);
                let at = b.len() - 5;
                b[at] ^= 0x10;
                b
            },
            "bad signature",
        ),
    ];
    for (n, (bytes, reason)) in refusals.iter().enumerate() {
        publish(&path, bytes);
        let line = next_reload(&mut daemon);
        assert_eq!(line["reason"].as_str().map(|r| r.contains(reason)), Some(true), "{reason}: {line}");
        let p = policy_json(&rt, admin);
        assert_eq!(p["revision"], revision(&first), "the active table keeps serving");
        assert_eq!(p["serial"], 10);
        assert_eq!(p["last_reload"]["result"], "refused");
        assert!(p["last_reload"]["error"].as_str().unwrap().contains(reason), "{p}");
        assert_eq!(metric(&rt, admin, "proxyd_policy_reloads_total{result=\"refused\"}"), (n + 1).to_string());
    }

    let next = signed(2, &key, 11);
    publish(&path, &next);
    let line = next_reload(&mut daemon);
    assert_eq!(line["message"], "policy reloaded", "{line}");
    let p = policy_json(&rt, admin);
    assert_eq!((p["serial"].clone(), p["revision"].clone()), (Value::from(11), Value::from(revision(&next))));
    assert_eq!(metric(&rt, admin, "proxyd_policy_serial"), "11");
    assert!(daemon.terminate().success());
}

#[test]
fn rollback_is_accepted_with_the_flag() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "ci");
    let path = dir.path().join("policy.bin");
    publish(&path, &signed(1, &key, 10));
    let args = [
        "--policy",
        s(&path),
        "--policy-public-key",
        s(&public),
        "--admin-listen",
        "127.0.0.1:0",
        "--allow-policy-rollback",
        "--policy-check-interval",
        "1s",
    ];
    let mut daemon = Daemon::start(proxyd_binary(), &args, &[]);
    let admin = admin(&daemon);
    publish(&path, &signed(2, &key, 3));
    assert_eq!(next_reload(&mut daemon)["message"], "policy reloaded");
    assert_eq!(policy_json(&rt, admin)["serial"], 3);
    publish(&path, &signed(3, &key, 3));
    assert_eq!(next_reload(&mut daemon)["message"], "policy reloaded", "equal serial allowed too with the flag");
    assert!(daemon.terminate().success());
}

#[test]
fn key_rotation_old_and_new_then_only_new() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (old, old_public) = keypair(dir.path(), "old");
    let (new, new_public) = keypair(dir.path(), "new");
    let path = dir.path().join("policy.bin");
    publish(&path, &signed(1, &old, 1));
    let both = [
        "--policy",
        s(&path),
        "--policy-public-key",
        s(&old_public),
        "--policy-public-key",
        s(&new_public),
        "--admin-listen",
        "127.0.0.1:0",
        "--policy-check-interval",
        "1s",
    ];
    let mut daemon = Daemon::start(proxyd_binary(), &both, &[]);
    let admin_addr = admin(&daemon);
    assert_eq!(policy_json(&rt, admin_addr)["signed_by"], old.public_key().id().to_string());
    publish(&path, &signed(2, &new, 2));
    assert_eq!(next_reload(&mut daemon)["message"], "policy reloaded");
    assert_eq!(policy_json(&rt, admin_addr)["signed_by"], new.public_key().id().to_string());
    assert!(daemon.terminate().success());

    // The old key is revoked by removing it.
    let only_new = [
        "--policy",
        s(&path),
        "--policy-public-key",
        s(&new_public),
        "--admin-listen",
        "127.0.0.1:0",
        "--policy-check-interval",
        "1s",
    ];
    let mut daemon = Daemon::start(proxyd_binary(), &only_new, &[]);
    publish(&path, &signed(3, &old, 3));
    let line = next_reload(&mut daemon);
    assert!(line["reason"].as_str().unwrap().contains("unknown key id"), "{line}");
    assert_eq!(policy_json(&rt, admin(&daemon))["serial"], 2);
    assert!(daemon.terminate().success());
    let e = refused_at_start(&["--policy", s(&path), "--policy-public-key", s(&new_public)]);
    assert!(e.contains("unknown key id"), "{e}");
}

/// What the test policy server serves.
#[derive(Clone, Debug)]
enum Serve {
    Table {
        bytes: Vec<u8>,
        etag: String,
    },
    /// Zeros, lazily produced; `declared` sends a Content-Length.
    Huge {
        len: u64,
        declared: bool,
    },
}

#[derive(Debug)]
struct ServerState {
    serve: Serve,
    /// If-None-Match of every request, in order.
    conditional: Vec<Option<String>>,
    not_modified: u64,
}

/// A body of `remaining` zero bytes made 64 KiB at a time, only when read.
struct Zeros {
    remaining: u64,
    declared: bool,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; n as usize])))))
    }
    fn size_hint(&self) -> SizeHint {
        if self.declared { SizeHint::with_exact(self.remaining) } else { SizeHint::default() }
    }
}

enum Reply {
    Full(http_body_util::Full<Bytes>),
    Zeros(Zeros),
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Reply::Full(b) => Pin::new(b).poll_frame(cx),
            Reply::Zeros(z) => Pin::new(z).poll_frame(cx),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Full(b) => b.size_hint(),
            Reply::Zeros(z) => z.size_hint(),
        }
    }
}

fn answer(state: &Mutex<ServerState>, request: &Request<Incoming>) -> Response<Reply> {
    let mut state = state.lock().unwrap();
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).map(|v| v.to_str().unwrap().to_owned());
    state.conditional.push(if_none_match.clone());
    match state.serve.clone() {
        Serve::Table { bytes, etag } => {
            if if_none_match.as_deref() == Some(etag.as_str()) {
                state.not_modified += 1;
                let mut response = Response::new(Reply::Full(Default::default()));
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                response.headers_mut().insert(header::ETAG, etag.parse().unwrap());
                return response;
            }
            let mut response = Response::new(Reply::Full(http_body_util::Full::new(Bytes::from(bytes))));
            response.headers_mut().insert(header::ETAG, etag.parse().unwrap());
            response
        }
        Serve::Huge { len, declared } => Response::new(Reply::Zeros(Zeros { remaining: len, declared })),
    }
}

/// A policy server on 127.0.0.1 (`port` 0 picks one); stop it by aborting the task.
fn serve_policy(rt: &Runtime, port: u16, state: Arc<Mutex<ServerState>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = answer(&state, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, task)
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn remote_policy_is_polled_verified_cached_and_survives_the_server() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "ci");
    let first = signed(1, &key, 100);
    let state = Arc::new(Mutex::new(ServerState {
        serve: Serve::Table { bytes: first.clone(), etag: "\"a\"".into() },
        conditional: Vec::new(),
        not_modified: 0,
    }));
    let (addr, server) = serve_policy(&rt, 0, Arc::clone(&state));
    let url = format!("http://{addr}/policy.bin");
    let cache = dir.path().join("cache.bin");
    let args = |cache: &Path| -> Vec<String> {
        [
            "--policy-url",
            &url,
            "--policy-public-key",
            s(&public),
            "--policy-cache",
            s(cache),
            "--policy-poll-interval",
            "200ms",
            "--admin-listen",
            "127.0.0.1:0",
            "--allow-missing-role",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let start = |cache: &Path| {
        let args = args(cache);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(proxyd_binary(), &args, &[])
    };

    // Serve: fetched at start, verified, cached.
    let mut daemon = start(&cache);
    let admin_addr = admin(&daemon);
    let p = policy_json(&rt, admin_addr);
    assert_eq!(p["source"], url.as_str());
    assert_eq!(p["serial"], 100);
    assert_eq!(p["signature"], "verified");
    assert_eq!(p["policy_file"], s(&cache));
    assert_eq!(std::fs::read(&cache).unwrap(), first, "the verified table is cached");

    // 304: the next polls are conditional and read no body.
    wait_until("a 304", || state.lock().unwrap().not_modified >= 2);
    assert_eq!(state.lock().unwrap().conditional[1].as_deref(), Some("\"a\""));
    let p = policy_json(&rt, admin_addr);
    assert_eq!(p["last_fetch"]["result"], "not_modified", "{p}");
    assert_eq!(p["last_fetch"]["error"], Value::Null);
    assert_eq!(metric(&rt, admin_addr, "proxyd_policy_fetch_total{result=\"updated\"}"), "1");

    // Update: swapped through the reload path, cache replaced.
    let second = signed(2, &key, 101);
    state.lock().unwrap().serve = Serve::Table { bytes: second.clone(), etag: "\"b\"".into() };
    assert_eq!(next_reload(&mut daemon)["message"], "policy reloaded");
    let p = policy_json(&rt, admin_addr);
    assert_eq!((p["serial"].clone(), p["revision"].clone()), (Value::from(101), Value::from(revision(&second))));
    // (The next poll may already have answered 304, so count rather than read `last_fetch`.)
    wait_until("the update counted", || {
        metric(&rt, admin_addr, "proxyd_policy_fetch_total{result=\"updated\"}") == "2"
    });
    assert_eq!(std::fs::read(&cache).unwrap(), second);
    assert_eq!(metric(&rt, admin_addr, "proxyd_policy_serial"), "101");

    // Tampered: refused, the old table keeps serving, the cache is untouched.
    let mut tampered = signed(3, &key, 102);
    tampered[table::HEADER_LEN + 10] ^= 1;
    state.lock().unwrap().serve = Serve::Table { bytes: tampered, etag: "\"c\"".into() };
    let line = next_reload(&mut daemon);
    assert!(line["reason"].as_str().unwrap().contains("checksum mismatch"), "{line}");
    // The fetch is recorded right after the reload line; a refused table is
    // fetched again (not hidden behind a 304), so `failed` stays.
    wait_until("the refusal recorded", || policy_json(&rt, admin_addr)["last_fetch"]["result"] == "failed");
    let requests = state.lock().unwrap().conditional.len();
    let line = next_reload(&mut daemon);
    assert!(line["reason"].as_str().unwrap().contains("checksum mismatch"), "refused again: {line}");
    assert_eq!(state.lock().unwrap().conditional.last().unwrap().as_deref(), Some("\"b\""));
    assert!(state.lock().unwrap().conditional.len() > requests);
    let p = policy_json(&rt, admin_addr);
    assert_eq!(p["serial"], 101);
    assert!(p["last_fetch"]["error"].as_str().unwrap().starts_with("refused: "), "{p}");
    assert_eq!(p["last_reload"]["result"], "refused");
    assert_eq!(std::fs::read(&cache).unwrap(), second);

    // A rollback served by the URL is refused like one from a file.
    state.lock().unwrap().serve = Serve::Table { bytes: signed(4, &key, 50), etag: "\"d\"".into() };
    let line = next_reload(&mut daemon);
    assert!(line["reason"].as_str().unwrap().contains("rollback"), "{line}");

    // Huge, with a Content-Length over 256 MiB: refused before reading the body.
    state.lock().unwrap().serve = Serve::Huge { len: 256 * 1024 * 1024 + 1, declared: true };
    let line = daemon.wait_for(|v| v["message"] == "policy fetch failed; the active policy keeps serving");
    assert!(line["error"].as_str().unwrap().contains("larger than the 268435456-byte limit"), "{line}");
    assert_eq!(policy_json(&rt, admin_addr)["serial"], 101);
    assert!(metric(&rt, admin_addr, "proxyd_policy_fetch_total{result=\"failed\"}").parse::<u64>().unwrap() >= 3);

    // Server down: failures are recorded; the active table keeps serving.
    server.abort();
    let _ = rt.block_on(server);
    let line = daemon.wait_for(|v| v["message"] == "policy fetch failed; the active policy keeps serving");
    assert!(line["error"].as_str().unwrap().contains("cannot connect"), "{line}");
    assert!(daemon.terminate().success());

    // Restart with the server down: the verified cache serves.
    let mut daemon = start(&cache);
    let admin_addr = admin(&daemon);
    let p = policy_json(&rt, admin_addr);
    assert_eq!(p["serial"], 101);
    assert_eq!(p["last_fetch"]["result"], "failed");
    assert_eq!(rt.block_on(testkit::scrape::get(admin_addr, "/readyz")).status, 200);
    // A poll after start (also: proxyd installs its SIGTERM handler just after
    // the `proxyd listening` line, so give it a moment before terminating).
    daemon.wait_for(|v| v["message"] == "policy fetch failed; the active policy keeps serving");
    assert!(daemon.terminate().success());

    // Neither URL nor cache: not ready, CONNECT gets 503 `no policy loaded`;
    // once the server is back, the first verified table makes it ready.
    let empty_cache = dir.path().join("none.bin");
    let mut daemon = start(&empty_cache);
    let admin_addr = admin(&daemon);
    let ready = rt.block_on(testkit::scrape::get(admin_addr, "/readyz"));
    assert_eq!(ready.status, 503, "{ready:?}");
    let reply = rt.block_on(testkit::client::connect(daemon.addr, "a.test:443", ""));
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body.trim(), "no policy loaded");
    let line = daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION");
    assert_eq!(line["refusal"], "no_policy");
    assert_eq!(metric(&rt, admin_addr, "proxyd_requests_total{outcome=\"no_policy\"}"), "1");
    state.lock().unwrap().serve = Serve::Table { bytes: second.clone(), etag: "\"b\"".into() };
    let (_, server) = serve_policy(&rt, addr.port(), Arc::clone(&state));
    daemon.wait_for(|v| v["message"] == "policy loaded: ready");
    assert_eq!(rt.block_on(testkit::scrape::get(admin_addr, "/readyz")).status, 200);
    assert_eq!(policy_json(&rt, admin_addr)["serial"], 101);
    assert_eq!(std::fs::read(&empty_cache).unwrap(), second);
    assert!(daemon.terminate().success());
    server.abort();
}

#[test]
fn a_streamed_response_over_the_cap_is_refused_while_reading() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "ci");
    let state = Arc::new(Mutex::new(ServerState {
        serve: Serve::Table { bytes: signed(1, &key, 1), etag: "\"a\"".into() },
        conditional: Vec::new(),
        not_modified: 0,
    }));
    let (addr, server) = serve_policy(&rt, 0, Arc::clone(&state));
    let url = format!("http://{addr}/p.bin");
    // The cap is lowered (a hidden flag) so the test streams 2 MiB, not 256.
    let mut daemon = Daemon::start(
        proxyd_binary(),
        &[
            "--policy-url",
            &url,
            "--policy-public-key",
            s(&public),
            "--policy-poll-interval",
            "200ms",
            "--policy-url-max-bytes",
            "1048576",
        ],
        &[],
    );
    // No Content-Length (chunked): only the running count can stop it.
    state.lock().unwrap().serve = Serve::Huge { len: 2 * 1024 * 1024, declared: false };
    let line = daemon.wait_for(|v| v["message"] == "policy fetch failed; the active policy keeps serving");
    assert!(line["error"].as_str().unwrap().contains("larger than the 1048576-byte limit"), "{line}");
    assert!(daemon.terminate().success());
    server.abort();
}
