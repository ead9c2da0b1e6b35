//! Limits users set, through the daemon: `--max-tunnels-per-client`
//! (answered 429 with the reason, counted as `client_tunnel_cap`, keyed by
//! the real client address, the PROXY header's source when that is on),
//! `--max-requests-per-client-per-second` (429, counted as
//! `client_request_rate`, keyed the same way) and the request head size cap
//! (16 KiB, answered 431).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use egress_policy::policy::AddressSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{ACL, Proxy, connect, echo_through, lo};
use testkit::client::{Reply, send};
use testkit::dns::{Answer, TestDns};
use testkit::scrape::scrape;
use testkit::upstream::Upstream;

/// CONNECT through a PROXY v1 header claiming `source` as the client.
async fn connect_as(proxy: SocketAddr, source: &str, target: &str) -> Reply<TcpStream> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let raw =
        format!("PROXY TCP4 {source} 127.0.0.1 40000 4750\r\nCONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    send(stream, &raw).await
}

/// CONNECT from the loopback address `local` (the TCP peer the proxy sees).
async fn connect_from(proxy: SocketAddr, local: IpAddr, target: &str) -> Reply<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    send(stream, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")).await
}

async fn setup(configure: impl FnOnce(&mut proxyd::Config)) -> (TestDns, Upstream, Proxy, String) {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 41, 1)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let addr = upstream.addr;
    let proxy = Proxy::start(ACL, dns.addr(), move |c| {
        c.address_rules.allow_addresses.push(AddressSpec::Socket(addr));
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        configure(c);
    })
    .await;
    let target = format!("upstream.test:{}", upstream.addr.port());
    (dns, upstream, proxy, target)
}

#[tokio::test]
async fn the_per_client_cap_counts_the_address_from_the_proxy_header() {
    let (_dns, _upstream, proxy, target) = setup(|c| {
        c.proxy_protocol = true;
        c.max_tunnels_per_client = Some(3);
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let reply = connect_as(proxy.addr, "192.0.2.10", &target).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        open.push(reply);
    }
    let refused = connect_as(proxy.addr, "192.0.2.10", &target).await;
    assert_eq!(refused.status, 429);
    let reason = "maximum concurrent connect tunnels for this client address exceeded (3 open)";
    assert_eq!(refused.body, format!("{reason}\n"));
    assert_eq!(refused.header("x-smokescreen-error"), Some(reason));
    assert_eq!(refused.header("retry-after"), Some("1"));

    // Another client behind the same load balancer (same TCP peer) has its own cap.
    let mut other = connect_as(proxy.addr, "192.0.2.11", &target).await;
    assert_eq!(other.status, 200);
    assert_eq!(echo_through(&mut other.stream, b"other").await, b"other");
    // A denied name is answered 403 even at the cap: the cap is on tunnels.
    assert_eq!(connect_as(proxy.addr, "192.0.2.10", "denied.example:443").await.status, 403);
    // The open tunnels still carry bytes.
    for reply in &mut open {
        assert_eq!(echo_through(&mut reply.stream, b"held").await, b"held");
    }

    // Closing one frees one slot for that client.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut reply = connect_as(proxy.addr, "192.0.2.10", &target).await;
        if reply.status == 200 {
            assert_eq!(echo_through(&mut reply.stream, b"again").await, b"again");
            break;
        }
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let scraped = scrape(proxy.admin.unwrap()).await;
    let at_cap = scraped.value("proxyd_requests_total{outcome=\"client_tunnel_cap\"}").parse::<u64>().unwrap();
    assert!(at_cap >= 1, "the refusal is counted: {at_cap}");
    assert_eq!(
        scraped.value("proxyd_tunnel_cap_rejections_total"),
        "0",
        "the global cap's counter is not the per-client one"
    );
}

#[tokio::test]
async fn without_proxy_protocol_the_cap_is_per_peer_address_and_off_by_default() {
    let (_dns, _upstream, proxy, target) = setup(|c| c.max_tunnels_per_client = Some(2)).await;
    let (first, second) = (lo(0, 41, 10), lo(0, 41, 11));
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from(proxy.addr, first, &target).await);
    }
    assert!(held.iter().all(|r| r.status == 200));
    assert_eq!(connect_from(proxy.addr, first, &target).await.status, 429);
    let mut other = connect_from(proxy.addr, second, &target).await;
    assert_eq!(other.status, 200);
    assert_eq!(echo_through(&mut other.stream, b"x").await, b"x");
    drop(held);

    // Without the flag, one address may hold many more.
    let (_dns, _upstream, proxy, target) = setup(|_| {}).await;
    let mut many = Vec::new();
    for _ in 0..50 {
        let reply = connect(proxy.addr, &target, "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        many.push(reply);
    }
}

#[tokio::test]
async fn a_burst_over_the_request_rate_is_answered_429_per_client_address() {
    let (_dns, _upstream, proxy, target) = setup(|c| {
        c.proxy_protocol = true;
        c.max_requests_per_client_per_second = Some(2);
    })
    .await;
    // A burst of 10 heads from one client (denied names: no tunnel is held, only heads count).
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let reply = connect_as(proxy.addr, "192.0.2.20", "denied.example:443").await;
        if reply.status == 429 {
            let reason = "request rate for this client address exceeded (2 per second)";
            assert_eq!(reply.body, format!("{reason}\n"));
            assert_eq!(reply.header("x-smokescreen-error"), Some(reason));
            assert_eq!(reply.header("retry-after"), Some("1"));
        }
        statuses.push(reply.status);
    }
    let elapsed = started.elapsed();
    assert_eq!(&statuses[..2], &[403, 403], "the burst allowance (2) is answered as usual: {statuses:?}");
    // A token comes back every 500 ms: at most that many more were let through.
    let refilled = (elapsed.as_millis() / 500) as usize + 1;
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 8usize.saturating_sub(refilled).max(1), "{statuses:?} in {elapsed:?}");
    assert!(statuses.iter().all(|s| *s == 403 || *s == 429), "{statuses:?}");

    // Another client behind the same TCP peer has its own bucket, and tunnels as usual.
    let mut other = connect_as(proxy.addr, "192.0.2.21", &target).await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(echo_through(&mut other.stream, b"other").await, b"other");

    // A second later the first client's bucket is full again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = connect_as(proxy.addr, "192.0.2.20", &target).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(echo_through(&mut again.stream, b"again").await, b"again");

    let scraped = scrape(proxy.admin.unwrap()).await;
    let counted = scraped.value("proxyd_requests_total{outcome=\"client_request_rate\"}").parse::<usize>().unwrap();
    assert_eq!(counted, limited, "every 429 for the rate is counted under its own outcome");
    assert_eq!(scraped.value("proxyd_requests_total{outcome=\"tunnel_cap\"}"), "0");
}

/// Sends a CONNECT head padded with headers to `size` bytes and reads the
/// answer head (4 s at most).
async fn head_of(proxy: SocketAddr, target: &str, size: usize) -> (Option<u16>, String) {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    let mut i = 0;
    while head.len() + 2 < size {
        let room = size - head.len() - 2;
        let name = format!("X-Pad-{i}: ");
        let pad = room.saturating_sub(name.len() + 2).clamp(1, 1000);
        head.extend_from_slice(format!("{name}{}\r\n", "p".repeat(pad)).as_bytes());
        i += 1;
    }
    head.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let write = async {
        // The proxy may answer and close before it has all of it.
        let _ = writer.write_all(&head).await;
    };
    let read = async {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while !all.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        all
    };
    let ((), all) = tokio::join!(write, read);
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok());
    (status, text)
}

#[tokio::test]
async fn request_heads_over_16_kib_are_answered_431() {
    let (_dns, _upstream, proxy, target) = setup(|_| {}).await;
    let (status, text) = head_of(proxy.addr, &target, 15 * 1024).await;
    assert_eq!(status, Some(200), "a 15 KiB head is within the cap: {text:?}");
    for size in [17 * 1024, 64 * 1024, 1024 * 1024] {
        let (status, text) = head_of(proxy.addr, &target, size).await;
        assert_eq!(status, Some(431), "{size}-byte head: {text:.200}");
    }
}
