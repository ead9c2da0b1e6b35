//! The console in a real browser: Debian's headless Chromium loads the page
//! of the real `proxyd` binary with the token in the `#token=` fragment;
//! the rendered DOM must show the policy revision and a role, a live
//! tunnel's destination, and a refusal's address and reason. Without the
//! token the browser gets the sign-in page and none of it. Skips, saying
//! so, where Chromium is missing. `UPDATE_CONSOLE_SCREENSHOT=1` also
//! writes docs/console.png.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use testkit::daemon::Daemon;
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

use crate::harness::{ACL, compile, connect, echo_through, lo};

const TOKEN: &str = "browser-test-token-5f1c";

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or
/// `--screenshot=FILE`), in a fresh profile, and returns its stdout.
fn browse(browser: &Path, url: &str, mode: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1500",
            // Virtual time waits for the page's own fetches (the token's request).
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // in-test servers keep running while the browser runs
async fn chromium_renders_the_policy_a_live_tunnel_and_a_refusal() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: chromium not found (apt-get install chromium) — the console browser test did not run");
        return;
    };
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 28, 9)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    dns.set("api.upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    dns.set("meta.test", Answer::Records(vec!["169.254.169.254".parse().unwrap()]));
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
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
            "--proxy-password-env",
            "PW",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        &[("PW", "pw")],
    );
    let admin: SocketAddr = daemon.listening["admin"].as_str().unwrap().parse().unwrap();
    let revision = daemon.listening["policy_revision"].as_str().unwrap().to_owned();
    let credentials =
        format!("Proxy-Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode("someone:pw"));

    // Hold live tunnels; cause refusals (metadata by address, a name on the deny list).
    let port = upstream.addr.port();
    let mut held = connect(daemon.addr, &format!("upstream.test:{port}"), &credentials).await;
    assert_eq!(echo_through(&mut held.stream, &[7u8; 3000]).await, vec![7u8; 3000]);
    let mut other = connect(daemon.addr, &format!("api.upstream.test:{port}"), "").await;
    assert_eq!(echo_through(&mut other.stream, b"ping").await, b"ping");
    assert_eq!(connect(daemon.addr, "meta.test:443", &credentials).await.status, 403);
    // With credentials: anonymous, a refusal by name is the 407 challenge.
    assert_eq!(connect(daemon.addr, "denied.example:443", &credentials).await.status, 403);

    let url = format!("http://{admin}/");
    let (page_url, browser_path) = (format!("{url}#token={TOKEN}"), browser.clone());
    let dom = tokio::task::spawn_blocking(move || browse(&browser_path, &page_url, "--dump-dom")).await.unwrap();
    let text = |needle: &str| dom.contains(needle);
    assert!(text("Live tunnels") && text("Recent refusals"), "the console rendered: {dom}");
    assert!(text(&revision), "the policy revision {revision}");
    assert!(text("<td>enf</td>") && text("<td>authed</td>"), "the roles");
    assert!(text(&format!("upstream.test:{port}")), "the live tunnel's destination");
    assert!(text("169.254.169.254:443"), "the refusal's address");
    assert!(text("Egress proxying is denied to host 'meta.test'"), "the refusal's reason");
    assert!(!text("Admin token required"), "signed in from the fragment");

    // Without the token: the sign-in page, none of the data.
    let browser_path = browser.clone();
    let locked = tokio::task::spawn_blocking(move || browse(&browser_path, &url, "--dump-dom")).await.unwrap();
    assert!(locked.contains("Admin token required"), "{locked}");
    assert!(!locked.contains(&revision) && !locked.contains("169.254.169.254"), "nothing shown without the token");

    let shot = dir.path().join("console.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    let page_url = format!("http://{admin}/#token={TOKEN}");
    tokio::task::spawn_blocking(move || browse(&browser, &page_url, &shot_arg)).await.unwrap();
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    if std::env::var_os("UPDATE_CONSOLE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console.png");
        std::fs::write(&docs, &png).unwrap();
    }
    drop((held, other));
    assert_eq!(daemon.terminate().code(), Some(0));
}
