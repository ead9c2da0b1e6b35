//! What operators see of a running proxy: `/tunnels` and Smokescreen's
//! stats socket list a live tunnel with its role and byte counts (and the
//! socket is gone after exit), `/refusals` keeps what was refused with the
//! exact reason, the console page shows both with every value escaped, and
//! the bearer token guards all of it but the probes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use egress_policy::policy::AddressSpec;
use proxyd::admin_auth::AdminToken;
use proxyd::config::ProxyAuth;
use proxyd::stats_socket::StatsSocketSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::harness::{ACL, Proxy, connect, echo_through, lo};
use testkit::daemon::Daemon;
use testkit::dns::{Answer, TestDns};
use testkit::scrape::{AdminReply, get, request};
use testkit::upstream::Upstream;

const TOKEN: &str = "c0nsole-test-token";

fn basic(password: &str) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("u:{password}"))
    )
}

/// A proxy with the admin listener, the proxy password (role `authed`) and
/// `upstream` allowed; `meta.test` resolves to the metadata address.
async fn start(dns: &TestDns, upstream: SocketAddr, configure: impl FnOnce(&mut proxyd::Config)) -> Proxy {
    dns.set("upstream.test", Answer::Records(vec![upstream.ip()]));
    dns.set("meta.test", Answer::Records(vec!["169.254.169.254".parse().unwrap()]));
    Proxy::start(ACL, dns.addr(), |c| {
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream));
        c.proxy_auth = Some(ProxyAuth { variable: "PW".into(), password: "pw".into(), role: "authed".into() });
        configure(c);
    })
    .await
}

async fn authorized(admin: SocketAddr, path: &str) -> AdminReply {
    request(admin, format!("GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes())
        .await
}

/// Waits until the in-process proxy is serving (it starts in the background).
async fn ready(admin: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(admin, "/readyz").await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the proxy gets ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn json(reply: &AdminReply) -> serde_json::Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

#[tokio::test]
async fn tunnels_list_a_live_tunnel_with_its_role_and_bytes_and_refusals_keep_the_reason() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 28, 1)).await;
    let proxy = start(&dns, upstream.addr, |_| {}).await;
    let admin = proxy.admin.unwrap();
    let target = format!("upstream.test:{}", upstream.addr.port());

    let mut tunnel = connect(proxy.addr, &target, &basic("pw")).await;
    assert_eq!(tunnel.status, 200);
    assert_eq!(echo_through(&mut tunnel.stream, b"hello console").await, b"hello console");
    let anonymous = connect(proxy.addr, &target, "").await;
    assert_eq!(anonymous.status, 200);

    let listed = json(&get(admin, "/tunnels").await);
    assert_eq!(listed["total"], 2, "{listed:#}");
    let mine = listed["tunnels"].as_array().unwrap().iter().find(|t| t["role"] == "authed").unwrap();
    assert_eq!(mine["rhost"], target);
    assert_eq!(mine["raddr"], upstream.addr.to_string());
    assert_eq!(mine["bytesOut"], 13, "{mine:#}");
    assert_eq!(mine["bytesIn"], 13, "{mine:#}");
    assert_eq!(mine["proxyType"], "connect");
    // `authed` is a report rule with no list: allowed, and reported.
    assert_eq!(mine["decision"], "allow (report)");
    assert_eq!(mine["rule"], "rule has allow and report policy");
    assert_eq!(mine["project"], "users");
    assert!(mine["secondsSinceLastActivity"].as_f64().unwrap() < 10.0);
    assert!(mine["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The filter and the cap.
    let authed = json(&get(admin, "/tunnels?role=authed").await);
    assert_eq!((authed["total"].as_u64(), authed["tunnels"].as_array().unwrap().len()), (Some(1), 1));
    let none = json(&get(admin, "/tunnels?role=").await);
    assert_eq!(none["tunnels"][0]["role"], "", "no role is the empty role, as Smokescreen writes it");
    let capped = json(&get(admin, "/tunnels?limit=1").await);
    assert_eq!((capped["total"].as_u64(), capped["tunnels"].as_array().unwrap().len()), (Some(2), 1));
    assert_eq!(get(admin, "/tunnels?limt=1").await.status, 400, "a typo is refused, not ignored");

    // A refusal by address (the name is allowed, its answer is metadata), and one by name.
    let refused = connect(proxy.addr, "meta.test:443", &basic("pw")).await;
    assert_eq!(refused.status, 403);
    // With credentials: anonymous, a refusal by name is the 407 challenge (the password's role may reach more).
    assert_eq!(connect(proxy.addr, "denied.example:443", &basic("pw")).await.status, 403);
    let refusals = json(&get(admin, "/refusals").await);
    let recent = refusals["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{refusals:#}");
    assert_eq!(recent[0]["host"], "denied.example:443", "newest first");
    assert_eq!(recent[0]["rule"], "host matched rule in global deny list");
    let meta = &recent[1];
    assert_eq!(meta["host"], "meta.test:443");
    assert_eq!(meta["role"], "authed");
    assert_eq!(meta["address"], "169.254.169.254:443");
    assert_eq!(meta["status"], 403);
    assert_eq!(meta["kind"], "denied");
    let reason = meta["reason"].as_str().unwrap();
    assert!(reason.starts_with("Egress proxying is denied to host 'meta.test'"), "{reason}");
    assert!(
        reason.contains("169.254.169.254") && meta["rule"].as_str().unwrap().contains("169.254.169.254"),
        "{meta:#}"
    );
    assert_eq!(refusals["counts_since_start"]["denied"], 2);

    // Closed tunnels leave the list.
    drop(tunnel);
    drop(anonymous);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while json(&get(admin, "/tunnels").await)["total"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "closed tunnels are removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn the_page_shows_policy_tunnels_and_refusals_with_every_value_escaped() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 28, 2)).await;
    let proxy = start(&dns, upstream.addr, |_| {}).await;
    let admin = proxy.admin.unwrap();
    let target = format!("upstream.test:{}", upstream.addr.port());
    let mut tunnel = connect(proxy.addr, &target, &basic("pw")).await;
    assert_eq!(echo_through(&mut tunnel.stream, b"x").await, b"x");
    // Markup in a refused target must come back as text.
    let hostile = connect(proxy.addr, "<script>alert(1)</script>:443", "").await;
    assert_eq!(hostile.status, 400);

    let page = get(admin, "/").await;
    assert_eq!(page.status, 200);
    let head = page.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    let csp = head.lines().find(|l| l.starts_with("content-security-policy:")).expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let revision = json(&get(admin, "/policy").await)["revision"].as_str().unwrap().to_owned();
    for expected in
        [revision.as_str(), "authed", "enf", &target, "Recent refusals", "&lt;script&gt;alert(1)&lt;/script&gt;:443"]
    {
        assert!(page.body.contains(expected), "the page lacks {expected:?}");
    }
    assert!(!page.body.contains("<script>alert(1)"), "markup from a client is never markup on the page");
    // No outside resources: nothing is loaded from anywhere.
    for outside in ["http://", "https://", "src=", "<link"] {
        assert!(!page.body.contains(outside), "the page loads {outside}");
    }
    // The role filter works without the script (a plain GET).
    let filtered = get(admin, "/?role=enf").await;
    assert!(!filtered.body.contains(&target) && filtered.body.contains("no open tunnels"));
    drop(tunnel);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn the_token_guards_everything_but_the_probes() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 28, 3)).await;
    let proxy = start(&dns, upstream.addr, |c| c.admin_token = Some(AdminToken::new(TOKEN))).await;
    let admin = proxy.admin.unwrap();
    for path in ["/", "/tunnels", "/refusals", "/policy", "/metrics", "/anything"] {
        let reply = get(admin, path).await;
        assert_eq!(reply.status, 401, "{path}");
        assert!(reply.head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{path}: {}", reply.head);
        let wrong =
            request(admin, format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\n\r\n").as_bytes())
                .await;
        assert_eq!(wrong.status, 401, "{path}");
    }
    assert!(get(admin, "/").await.body.contains("id=\"login\""), "the page asks for the token");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(admin, path).await.status, 200, "{path} stays open for probes");
    }
    for path in ["/", "/tunnels", "/refusals", "/policy", "/metrics"] {
        assert_eq!(authorized(admin, path).await.status, 200, "{path}");
    }
    proxy.stop().await.unwrap();

    let open_metrics = start(&dns, upstream.addr, |c| {
        c.admin_token = Some(AdminToken::new(TOKEN));
        c.admin_metrics_open = true;
    })
    .await;
    let admin = open_metrics.admin.unwrap();
    assert_eq!(get(admin, "/metrics").await.status, 200, "--admin-metrics-open");
    assert_eq!(get(admin, "/tunnels").await.status, 401);
    open_metrics.stop().await.unwrap();
}

/// One HTTP GET over the stats socket, as `curl --unix-socket` sends it: (head, body).
async fn stats(path: &Path, target: &str) -> (String, String) {
    let mut stream = UnixStream::connect(path).await.unwrap();
    stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await.unwrap().unwrap();
    let text = String::from_utf8(all).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn the_stats_socket_lists_tunnels_as_smokescreen_does_and_is_removed_on_exit() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 28, 4)).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = StatsSocketSettings { dir: dir.path().to_owned(), mode: 0o700 };
    let socket = settings.path(std::process::id());
    let proxy = start(&dns, upstream.addr, |c| c.stats_socket = Some(settings.clone())).await;
    ready(proxy.admin.unwrap()).await;
    let metadata = std::fs::symlink_metadata(&socket).expect("track-<pid>.sock exists");
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o700);

    let (head, empty) = stats(&socket, "/").await;
    assert!(head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("content-type: application/json"));
    assert_eq!(empty, "[\n]\n");

    let target = format!("upstream.test:{}", upstream.addr.port());
    let mut one = connect(proxy.addr, &target, &basic("pw")).await;
    assert_eq!(echo_through(&mut one.stream, b"0123456789").await, b"0123456789");
    let mut two = connect(proxy.addr, &target, "").await;
    assert_eq!(echo_through(&mut two.stream, b"abc").await, b"abc");
    let (_, body) = stats(&socket, "/").await;
    assert!(
        body.starts_with("[\n{") && body.ends_with("}]\n") && body.contains("},\n{"),
        "Smokescreen's layout: {body:?}"
    );
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 2);
    let authed = list.iter().find(|t| t["role"] == "authed").unwrap();
    let mut keys: Vec<&String> = authed.as_object().unwrap().keys().collect();
    keys.sort_unstable();
    let mut expected =
        ["role", "rhost", "raddr", "created", "bytesIn", "bytesOut", "secondsSinceLastActivity", "proxyType"];
    expected.sort_unstable();
    assert_eq!(keys, expected, "exactly Smokescreen's fields");
    assert_eq!(authed["rhost"], target);
    assert_eq!(authed["raddr"], upstream.addr.to_string());
    assert_eq!((authed["bytesIn"].as_u64(), authed["bytesOut"].as_u64()), (Some(10), Some(10)));
    assert!(authed["created"].as_str().unwrap().ends_with('Z'));
    assert!(authed["secondsSinceLastActivity"].is_f64());
    let (_, filtered) = stats(&socket, "/?role=authed").await;
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&filtered).unwrap().len(), 1);

    drop((one, two));
    proxy.stop().await.unwrap();
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // in-test servers keep running while this thread waits on the daemon
async fn the_binary_serves_the_stats_socket_and_removes_it_on_sigterm() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 28, 5)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let dir = tempfile::tempdir().unwrap();
    let table = crate::harness::compile(dir.path(), ACL);
    let sockets = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_proxyd")),
        &[
            "--policy",
            table.to_str().unwrap(),
            "--resolver-address",
            &dns.addr().to_string(),
            "--allow-address",
            &upstream.addr.to_string(),
            "--allow-missing-role",
            "--stats-socket-dir",
            sockets.path().to_str().unwrap(),
            "--stats-socket-file-mode",
            "660",
        ],
        &[],
    );
    let socket = sockets.path().join(format!("track-{}.sock", daemon.pid()));
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);
    }
    let mut tunnel = connect(daemon.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(echo_through(&mut tunnel.stream, b"live").await, b"live");
    let (_, body) = stats(&socket, "/").await;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["bytesOut"], 4);
    drop(tunnel);
    assert_eq!(daemon.terminate().code(), Some(0), "a clean exit (Smokescreen exits 1 here)");
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[test]
fn bad_stats_socket_and_token_settings_are_refused_before_listening() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let table = crate::harness::compile(dir.path(), ACL);
    let token = dir.path().join("token");
    std::fs::write(&token, "secret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |extra: &[&str], check: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_proxyd"));
        command.args(["--policy", table.to_str().unwrap(), "--listen-port", "0"]).args(extra);
        if check {
            command.arg("--check-config");
        }
        let output = command.output().unwrap();
        (output.status.code(), String::from_utf8(output.stderr).unwrap())
    };
    let missing = dir.path().join("missing");
    for check in [false, true] {
        let (code, stderr) = run(&["--stats-socket-dir", missing.to_str().unwrap()], check);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("--stats-socket-dir") && stderr.contains("missing"), "{stderr}");
        let (code, stderr) =
            run(&["--stats-socket-dir", dir.path().to_str().unwrap(), "--stats-socket-file-mode", "999"], check);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("not an octal file mode"), "{stderr}");
        let (code, stderr) = run(&["--admin-token-file", token.to_str().unwrap()], check);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("--admin-token-file") && stderr.contains("every user"), "{stderr}");
        let (code, stderr) = run(&["--admin-token-file", missing.to_str().unwrap()], check);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("cannot read"), "{stderr}");
    }
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxyd"))
        .args(["--policy", table.to_str().unwrap(), "--check-config", "--admin-listen", "127.0.0.1:0"])
        .args(["--admin-token-file", token.to_str().unwrap(), "--stats-socket-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("token required") && stdout.contains("track-<pid>.sock (mode 700"), "{stdout}");
    assert!(!stdout.contains("secret"), "the token is never printed");
}

/// deploy/prometheus/prometheus.yml: the scrape config that sends the token
/// is one Prometheus accepts (the token path moved into a temp dir).
#[test]
fn the_prometheus_scrape_config_with_the_token_is_valid() {
    let Ok(version) = std::process::Command::new("promtool").arg("--version").output() else {
        eprintln!("skipped: promtool not found (apt-get install prometheus)");
        return;
    };
    assert!(version.status.success());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let config = std::fs::read_to_string(repo.join("prometheus.yml")).unwrap();
    assert!(config.contains("type: Bearer") && config.contains("credentials_file:"), "{config}");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("proxyd-admin-token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = config.replace("/etc/prometheus/proxyd-admin-token", token.to_str().unwrap());
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(repo.join("alerts.yaml"), dir.path().join("alerts.yaml")).unwrap();
    let output = std::process::Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
