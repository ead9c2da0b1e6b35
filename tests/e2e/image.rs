//! The shipped image, run for real with podman + runc (`make image-test`,
//! after `make image`): on the host network, on loopback ports, with explicit
//! limits. It must serve (`/readyz` 200, a CONNECT to an allowed loopback
//! echo upstream echoes), refuse the metadata address with 403 before any
//! connect, run as UID 65532, and on SIGTERM drain an open tunnel and exit 0.
//! It also sends statsd to `localhost:PORT`, which the static binary resolves
//! with glibc's built-in `files` source (docs/operations.md, "Static binaries").
//!
//! Ignored in `make test`: it needs podman and the image `make image` built.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::client::{self, lo};
use testkit::scrape;
use testkit::upstream::Upstream;

use crate::container::{Container, image, probe, uid_of, wait_status};
use crate::support::AUTH;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and `make image`: run by `make image-test`"]
async fn image_serves_refuses_metadata_runs_as_nonroot_and_drains_on_sigterm() {
    // An echo upstream on a loopback address of its own: the only address the
    // container's proxyd may reach (--allow-address; loopback is refused otherwise).
    let upstream = Upstream::echo(lo(27, 0, 1)).await;
    let proxy_port = crate::container::free_port();
    let admin_port = crate::container::free_port();
    let proxy = SocketAddr::from(([127, 0, 0, 1], proxy_port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    // statsd by name: `localhost` goes through the static binary's getaddrinfo (glibc's
    // built-in `files` source, /etc/hosts as podman provides it), not proxyd's resolver.
    let statsd = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let statsd_port = statsd.local_addr().unwrap().port();
    let statsd_v6 = tokio::net::UdpSocket::bind(("::1", statsd_port)).await.ok(); // if /etc/hosts says ::1 first
    let statsd_address = format!("localhost:{statsd_port}");
    let (proxy_port, admin_listen, allowed) =
        (proxy_port.to_string(), admin.to_string(), upstream.addr.ip().to_string());
    // The image's own default command, moved to loopback ports.
    let args = [
        "--policy",
        "/etc/proxyd/policy/policy.bin",
        "--listen-ip",
        "127.0.0.1",
        "--listen-port",
        &proxy_port,
        "--admin-listen",
        &admin_listen,
        "--proxy-password-env",
        "PROXY_PASSWORD",
        "--allow-address",
        &allowed,
        "--shutdown-grace",
        "20s",
        "--statsd-address",
        &statsd_address,
    ];
    let name = format!("proxyd-image-test-{}", std::process::id());
    let container = Container::run(&name, &["--env", "PROXY_PASSWORD=s3cret"], &image(), &args);

    // Ready through the probe orchestrators use.
    let took = wait_status(admin, "/readyz", 200, Duration::from_secs(30)).await;
    println!("image-test: /readyz 200 after {took:?}");

    // Non-root: the process the host sees runs as 65532.
    let uid = uid_of(container.host_pid());
    assert_eq!(uid, 65532, "proxyd in the image runs as UID 65532");
    println!("image-test: UID {uid}");

    // An allowed loopback upstream echoes.
    let reply = client::connect(proxy, &upstream.addr.to_string(), AUTH).await;
    assert_eq!(reply.status, 200, "CONNECT to the allowed upstream: {} {}", reply.reason, container.logs());
    let mut tunnel = reply.stream;
    assert_eq!(client::echo_through(&mut tunnel, b"through the image").await, b"through the image");
    assert_eq!(upstream.accepted(), 1);
    println!("image-test: CONNECT {} -> 200, echoed", upstream.addr);
    let (mut on_v4, mut on_v6) = ([0u8; 1500], [0u8; 1500]);
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        let (from_v6, n) = match &statsd_v6 {
            Some(v6) => tokio::select! {
                r = statsd.recv(&mut on_v4) => (false, r),
                r = v6.recv(&mut on_v6) => (true, r),
            },
            None => (false, statsd.recv(&mut on_v4).await),
        };
        let bytes = if from_v6 { &on_v6 } else { &on_v4 };
        String::from_utf8_lossy(&bytes[..n.unwrap()]).into_owned()
    })
    .await
    .expect("a statsd datagram for the CONNECT, sent to localhost as resolved in the image");
    assert!(line.starts_with("smokescreen."), "a statsd line: {line}");
    println!("image-test: statsd to {statsd_address} (getaddrinfo in the static binary): {line:?}");

    // The metadata address: 403, and no connect was attempted.
    let attempts = |s: &scrape::Scrape| s.value("proxyd_connect_attempts_total").parse::<f64>().unwrap();
    let before = attempts(&scrape::scrape(admin).await);
    let refused = client::connect(proxy, "169.254.169.254:80", AUTH).await;
    assert_eq!(refused.status, 403, "CONNECT 169.254.169.254:80: {} {}", refused.reason, refused.body);
    let after = attempts(&scrape::scrape(admin).await);
    assert_eq!(after, before, "the refusal happened before any connect attempt");
    println!("image-test: CONNECT 169.254.169.254:80 -> 403 ({}), connect attempts unchanged", refused.reason);

    // SIGTERM: no longer ready, no new tunnels, the open tunnel keeps working,
    // and once it closes the process exits 0.
    crate::container::podman_ok(&["kill", "--signal", "TERM", &name]);
    wait_status(admin, "/readyz", 503, Duration::from_secs(10)).await;
    assert_eq!(client::echo_through(&mut tunnel, b"while draining").await, b"while draining");
    assert!(tokio::net::TcpStream::connect(proxy).await.is_err(), "the proxy listener is closed while draining");
    drop(tunnel);
    let code = container.wait_exit(Duration::from_secs(25));
    assert_eq!(code, 0, "proxyd exits 0 after draining:\n{}", container.logs());
    assert_eq!(probe(admin, "/readyz").await, None, "the admin listener is gone");
    println!("image-test: SIGTERM -> /readyz 503, open tunnel echoed while draining, exit 0");
}
