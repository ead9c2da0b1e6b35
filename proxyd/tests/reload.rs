//! Live reload through the daemon: every way a file gets replaced flips a
//! decision within a second; every bad file is refused and the old decision
//! holds; open tunnels survive; and a reload storm under load drops nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use egress_policy::acl;
use egress_policy::policy::{ActionSet, AddressSpec};
use egress_policy::table::{self, Metadata};
use proxyd::Config;
use tokio::io::AsyncWriteExt;

use crate::harness::{Proxy, connect, echo_through, lo};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

/// Two policies that disagree about `a.example` and `b.example`; both allow
/// `tunnel.test`. Names the test DNS server does not know answer 502 when
/// allowed (NXDOMAIN) and 403 when denied, so no upstream is needed.
fn policy(allowed: &str, action: &str) -> Vec<u8> {
    let yaml = format!(
        "version: v1\nservices: []\ndefault:\n  project: p\n  action: {action}\n  allowed_domains: [{allowed}, tunnel.test]\n"
    );
    let checked = acl::check_source("reload.yaml", &yaml, ActionSet::default());
    let policy = checked.policy.unwrap_or_else(|| panic!("{:?}", checked.diagnostics));
    table::encode(&policy, &Metadata::for_source(Path::new("reload.yaml"), yaml.as_bytes(), ActionSet::default()))
}

fn a() -> Vec<u8> {
    policy("a.example", "enforce")
}

fn b() -> Vec<u8> {
    policy("b.example", "enforce")
}

struct Setup {
    dns: TestDns,
    dir: tempfile::TempDir,
    proxy: Proxy,
}

/// Starts a proxy on `<dir>/policy.bin` (or the path `place` returns after
/// putting table A there).
async fn start(place: impl FnOnce(&Path, &[u8]) -> PathBuf, configure: impl FnOnce(&mut Config)) -> Setup {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = place(dir.path(), &a());
    let mut config = Config::with_policy(path);
    config.resolver_addresses = vec![dns.addr()];
    config.allow_missing_role = true;
    config.reload.periodic = None;
    config.dns_timeout = Duration::from_secs(2);
    configure(&mut config);
    let attempts = Arc::default();
    let proxy = Proxy::start_with(config, tempfile::tempdir().unwrap(), attempts).await;
    let setup = Setup { dns, dir, proxy };
    assert_eq!(setup.status("a.example").await, 502, "table A is active at start");
    assert_eq!(setup.status("b.example").await, 403);
    setup
}

fn plain(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("policy.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

impl Setup {
    async fn status(&self, host: &str) -> u16 {
        connect(self.proxy.addr, &format!("{host}:443"), "").await.status
    }

    /// True when table B decides, within `within`.
    async fn flips_to_b(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.status("b.example").await == 502 && self.status("a.example").await == 403 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True when table A (`b_is_active` false) or B decides, within `within`.
    async fn flips_to(&self, b_is_active: bool, within: Duration) -> bool {
        if b_is_active {
            return self.flips_to_b(within).await;
        }
        let deadline = Instant::now() + within;
        loop {
            if self.status("a.example").await == 502 && self.status("b.example").await == 403 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Table A still decides after giving a reload time to happen.
    async fn still_a(&self) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(self.status("a.example").await, 502, "the active table keeps serving");
        assert_eq!(self.status("b.example").await, 403);
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("policy.bin")
    }
}

const WITHIN: Duration = Duration::from_secs(1);

#[tokio::test]
async fn an_in_place_write_is_picked_up() {
    let s = start(plain, |_| {}).await;
    std::fs::write(s.path(), b()).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn write_to_temp_then_rename_is_picked_up() {
    let s = start(plain, |_| {}).await;
    table::write_atomically(&s.path(), &b()).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn vim_style_remove_then_create_is_picked_up() {
    let s = start(plain, |_| {}).await;
    std::fs::remove_file(s.path()).unwrap();
    std::fs::write(s.path(), b()).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn deletion_keeps_the_table_and_recreation_is_picked_up() {
    let s = start(plain, |_| {}).await;
    std::fs::remove_file(s.path()).unwrap();
    s.still_a().await;
    std::fs::write(s.path(), b()).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn a_symlink_pointed_at_a_new_target_is_picked_up() {
    let s = start(
        |dir, bytes| {
            std::fs::create_dir(dir.join("v1")).unwrap();
            std::fs::write(dir.join("v1/policy.bin"), bytes).unwrap();
            std::os::unix::fs::symlink(dir.join("v1/policy.bin"), dir.join("policy.bin")).unwrap();
            dir.join("policy.bin")
        },
        |_| {},
    )
    .await;
    let dir = s.dir.path();
    std::fs::create_dir(dir.join("v2")).unwrap();
    std::fs::write(dir.join("v2/policy.bin"), b()).unwrap();
    std::os::unix::fs::symlink(dir.join("v2/policy.bin"), dir.join("policy.bin.new")).unwrap();
    std::fs::rename(dir.join("policy.bin.new"), dir.join("policy.bin")).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn a_kubernetes_configmap_update_is_picked_up() {
    // The kubelet's layout: policy.bin -> ..data/policy.bin, ..data -> ..<timestamp>/,
    // updated by writing a new timestamped directory and renaming a new ..data over the old.
    let s = start(
        |dir, bytes| {
            std::fs::create_dir(dir.join("..2026_11_21_10_00_00.1")).unwrap();
            std::fs::write(dir.join("..2026_11_21_10_00_00.1/policy.bin"), bytes).unwrap();
            std::os::unix::fs::symlink("..2026_11_21_10_00_00.1", dir.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/policy.bin", dir.join("policy.bin")).unwrap();
            dir.join("policy.bin")
        },
        |_| {},
    )
    .await;
    let dir = s.dir.path();
    std::fs::create_dir(dir.join("..2026_11_21_10_05_00.2")).unwrap();
    std::fs::write(dir.join("..2026_11_21_10_05_00.2/policy.bin"), b()).unwrap();
    std::os::unix::fs::symlink("..2026_11_21_10_05_00.2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_21_10_00_00.1")).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn a_file_written_nonstop_beside_the_policy_does_not_hold_back_reloads() {
    // A log file kept beside the policy: every write is a file event in the
    // watched directory. Before the fix each one restarted the quiet period,
    // so a replaced policy never landed while the log was being written.
    let s = start(plain, |_| {}).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (Arc::clone(&stop), s.dir.path().join("proxyd.log"));
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&log).unwrap();
            let mut writes = 0u64;
            // Bounded in time by the test and in count as a backstop.
            while !stop.load(Ordering::Relaxed) && writes < 50_000_000 {
                file.write_all(b"a log line\n").unwrap();
                file.flush().unwrap();
                writes += 1;
                if writes.is_multiple_of(1000) {
                    file.set_len(0).unwrap();
                }
            }
            writes
        })
    };
    let (one, two) = (a(), b());
    for replacement in 0..6 {
        let to_b = replacement % 2 == 0;
        let started = Instant::now();
        table::write_atomically(&s.path(), if to_b { &two } else { &one }).unwrap();
        let landed = s.flips_to(to_b, WITHIN).await;
        assert!(landed, "replacement {replacement} not applied within {WITHIN:?} (waited {:?})", started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 1000, "the sibling file was written continuously: {writes} writes");
}

#[tokio::test]
async fn a_policy_rewritten_without_pause_reloads_within_the_max_wait() {
    // Events about the policy itself, every millisecond or so: the quiet
    // period (100 ms) never runs out, so only the bound on the wait (5 quiet
    // periods) lets the reload happen while the writes go on. Each write is
    // a complete table (write and rename), so no read can catch half a file;
    // without fsync, so writes come faster than the quiet period even on a
    // loaded machine.
    let s = start(plain, |_| {}).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path, bytes) = (Arc::clone(&stop), s.path(), b());
        let staged = path.with_extension("staged");
        std::thread::spawn(move || {
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) && writes < 100_000 {
                std::fs::write(&staged, &bytes).unwrap();
                std::fs::rename(&staged, &path).unwrap();
                writes += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            writes
        })
    };
    let landed = s.flips_to_b(WITHIN).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(landed, "table B never applied while the policy was rewritten {writes} times");
    assert!(writes > 20, "the policy was rewritten continuously: {writes} writes");
}

#[tokio::test]
async fn the_periodic_check_covers_filesystems_without_events() {
    // A debounce far longer than the test: only the periodic check can reload in time.
    let s = start(plain, |c| {
        c.reload.debounce = Duration::from_secs(30);
        c.reload.periodic = Some(Duration::from_millis(200));
    })
    .await;
    table::write_atomically(&s.path(), &b()).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn bad_files_are_refused_and_the_old_table_keeps_serving() {
    let s = start(plain, |c| c.disabled_actions = [egress_policy::policy::Action::Open].into_iter().collect()).await;
    let good = b();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x10;
    let mut wrong_version = good.clone();
    wrong_version[8] = 7;
    let mut oversized = good.clone();
    oversized[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("declares an oversized body", oversized),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("header only", good[..table::HEADER_LEN].to_vec()),
        ("bit-flipped", flipped),
        ("wrong version", wrong_version),
        ("disabled action", policy("b.example", "open")),
        ("YAML", b"version: v1\nservices: []\n".to_vec()),
        ("garbage", vec![0xAB; 4096]),
    ];
    for (what, bytes) in cases {
        table::write_atomically(&s.path(), &bytes).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(s.status("a.example").await, 502, "{what}: table A must keep serving");
        assert_eq!(s.status("b.example").await, 403, "{what}");
    }
    // A good file afterwards is picked up.
    table::write_atomically(&s.path(), &good).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
}

#[tokio::test]
async fn an_open_tunnel_survives_a_reload_that_would_deny_it() {
    let upstream = Upstream::echo(lo(0, 8, 1)).await;
    let s = start(plain, |c| c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr))).await;
    s.dns.set("tunnel.test", Answer::Records(vec![upstream.addr.ip()]));
    let target = format!("tunnel.test:{}", upstream.addr.port());
    let mut open = connect(s.proxy.addr, &target, "").await;
    assert_eq!(open.status, 200);
    // A table that denies tunnel.test.
    let deny_all = {
        let yaml =
            "version: v1\nservices: []\ndefault:\n  project: p\n  action: enforce\n  allowed_domains: [b.example]\n";
        let policy = acl::check_source("x.yaml", yaml, ActionSet::default()).policy.unwrap();
        table::encode(&policy, &Metadata::for_source(Path::new("x.yaml"), yaml.as_bytes(), ActionSet::default()))
    };
    table::write_atomically(&s.path(), &deny_all).unwrap();
    assert!(s.flips_to_b(WITHIN).await);
    assert_eq!(connect(s.proxy.addr, &target, "").await.status, 403, "new requests use the new table");
    for i in 0..20u8 {
        assert_eq!(echo_through(&mut open.stream, &[i; 1000]).await, vec![i; 1000], "the old tunnel keeps flowing");
    }
    open.stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_storm_under_load_drops_no_tunnel() {
    let upstream = Upstream::echo(lo(0, 8, 2)).await;
    let s = start(plain, |c| c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr))).await;
    s.dns.set("tunnel.test", Answer::Records(vec![upstream.addr.ip()]));
    let target = format!("tunnel.test:{}", upstream.addr.port());
    let proxy_addr = s.proxy.addr;
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..32u8 {
        let target = target.clone();
        let ok = Arc::clone(&ok);
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while Instant::now() < deadline {
                let mut reply = connect(proxy_addr, &target, "").await;
                if reply.status != 200 {
                    failures.push(format!("status {}: {}", reply.status, reply.body));
                    continue;
                }
                if echo_through(&mut reply.stream, &[client; 64]).await != [client; 64] {
                    failures.push("echo mismatch".to_owned());
                }
                ok.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // 100 replacements alternating between two valid tables, with corrupt ones mixed in.
    let (one, two) = (a(), b());
    for i in 0..100 {
        let bytes = match i % 10 {
            3 => one[..one.len() - 5].to_vec(),
            7 => vec![0u8; 40],
            _ if i % 2 == 0 => two.clone(),
            _ => one.clone(),
        };
        table::write_atomically(&s.path(), &bytes).unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failed tunnels, first: {:?}", failures.len(), failures.first());
    assert!(ok.load(Ordering::Relaxed) > 100, "the load actually ran: {}", ok.load(Ordering::Relaxed));
}

#[tokio::test]
async fn reading_the_policy_is_no_reason_to_read_it_again() {
    // Each reload opens the file; an open is a file event too. Counted as a
    // change, every reload asked for the next one (the soak saw ~7 a second).
    let s = start(plain, |c| c.admin_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))).await;
    let (one, two) = (a(), b());
    for (i, bytes) in [&two, &one, &two].into_iter().enumerate() {
        let staged = s.path().with_extension("staged");
        std::fs::write(&staged, bytes).unwrap();
        std::fs::rename(&staged, s.path()).unwrap();
        assert!(s.flips_to(i % 2 == 0, WITHIN).await, "replacement {i}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let body = testkit::scrape::get(s.proxy.admin.unwrap(), "/policy").await.body;
    let policy: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(policy["reloads"]["swapped"], 3, "{body}");
    assert_eq!(policy["reloads"]["unchanged"], 0, "no reload without a change: {body}");
}
