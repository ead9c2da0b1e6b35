//! The request path end to end: every row of PROXY.md §5, the ACL through
//! the real daemon, and what a tunnel does with bytes.

use std::net::SocketAddr;
use std::time::Duration;

use egress_policy::policy::AddressSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{ACL, Proxy, connect, echo_through, lo, read_to_end, send};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

/// Allows exactly one upstream's address.
fn allow(upstream: SocketAddr) -> impl FnOnce(&mut proxyd::Config) {
    move |c| c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream))
}

#[tokio::test]
async fn allowed_connect_tunnels_bytes_both_ways() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 1, 1)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), allow(upstream.addr)).await;

    let mut reply = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!((reply.status, reply.reason.as_str()), (200, "Connection established"));
    assert_eq!(echo_through(&mut reply.stream, b"hello through the tunnel").await, b"hello through the tunnel");
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_through(&mut reply.stream, &big).await, big);
    assert_eq!(proxy.attempts.lock().unwrap().as_slice(), &[upstream.addr]);
}

#[tokio::test]
async fn bytes_pipelined_after_the_connect_head_are_forwarded() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 1, 2)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), allow(upstream.addr)).await;

    let target = format!("upstream.test:{}", upstream.addr.port());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    // A TLS ClientHello would arrive exactly like this: in the same write as the head.
    let mut reply = send(stream, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nPIPELINED-BYTES")).await;
    assert_eq!(reply.status, 200);
    let mut back = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(5), reply.stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"PIPELINED-BYTES");
}

#[tokio::test]
async fn half_close_is_passed_on_in_both_directions() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 1, 3)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), allow(upstream.addr)).await;

    let mut reply = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(reply.status, 200);
    reply.stream.write_all(b"last words").await.unwrap();
    // Close our sending side only: the upstream must see EOF, finish echoing, and close its side.
    reply.stream.shutdown().await.unwrap();
    let rest = read_to_end(&mut reply.stream, Duration::from_secs(5)).await.unwrap();
    assert_eq!(rest, b"last words");
}

#[tokio::test]
async fn upstream_reset_ends_the_tunnel_promptly() {
    let dns = TestDns::start().await;
    let upstream = Upstream::reset_after(lo(0, 1, 4), 4).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), allow(upstream.addr)).await;

    let mut reply = connect(proxy.addr, &format!("upstream.test:{}", upstream.addr.port()), "").await;
    assert_eq!(reply.status, 200);
    reply.stream.write_all(b"boom").await.unwrap();
    // Either an orderly EOF or a reset, but promptly.
    let _ = read_to_end(&mut reply.stream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |_| {}).await;
    for target in ["127.1:80", "upstream.test", "upstream.test:0", "upstream.test:99999", "::1:80", "[::1]", "a..b:80"]
    {
        let reply = connect(proxy.addr, target, "").await;
        assert_eq!(reply.status, 400, "{target}: {}", reply.body);
    }
    assert!(dns.queries().is_empty(), "malformed requests make no DNS query");
    assert_eq!(proxy.attempt_count(), 0);
}

#[tokio::test]
async fn other_methods_get_405_with_allow_connect() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |_| {}).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let reply = send(stream, "GET http://upstream.test/ HTTP/1.1\r\nHost: upstream.test\r\n\r\n").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("CONNECT"));
    assert!(reply.body.contains("--proxytunnel"), "{}", reply.body);
    assert!(dns.queries().is_empty());
}

#[tokio::test]
async fn acl_denials_are_403_before_any_dns_query() {
    let dns = TestDns::start().await;
    dns.set("denied.example", Answer::Records(vec![lo(0, 1, 5)]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| c.deny_message_extra = Some("Ask #egress.".into())).await;
    let reply = connect(proxy.addr, "denied.example:443", "").await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.body,
        "Egress proxying is denied to host 'denied.example': host matched rule in global deny list. Ask #egress.\n"
    );
    assert_eq!(reply.header("x-smokescreen-error"), Some(reply.body.trim_end()));
    // Not a default-rule name: the enforce default denies it, also without DNS.
    let reply = connect(proxy.addr, "example.com:443", "").await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("default rule policy used"), "{}", reply.body);
    assert!(dns.queries().is_empty(), "a denied name is refused before any DNS query: {:?}", dns.queries());
}

#[tokio::test]
async fn dns_failures_are_502_and_timeouts_504_with_the_real_cause() {
    let dns = TestDns::start().await;
    dns.set("servfail.test", Answer::ServFail);
    dns.set("slow.test", Answer::Delay(Duration::from_secs(5), Box::new(Answer::Records(vec![lo(0, 1, 6)]))));
    let proxy = Proxy::start(ACL, dns.addr(), |c| c.dns_timeout = Duration::from_millis(500)).await;

    let reply = connect(proxy.addr, "nxdomain.test:443", "").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("nxdomain.test"), "{}", reply.body);
    assert!(!reply.body.contains("<nil>"));

    let reply = connect(proxy.addr, "servfail.test:443", "").await;
    assert_eq!(reply.status, 502, "{}", reply.body);

    let started = std::time::Instant::now();
    let reply = connect(proxy.addr, "slow.test:443", "").await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(3), "answered within the DNS timeout: {:?}", started.elapsed());
}

#[tokio::test]
async fn connection_refused_is_502_naming_the_address() {
    let dns = TestDns::start().await;
    // Nothing listens on this port of this address.
    let closed = {
        let l = std::net::TcpListener::bind((lo(0, 1, 7), 0)).unwrap();
        l.local_addr().unwrap()
    };
    dns.set("closed.test", Answer::Records(vec![closed.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), allow(closed)).await;
    let reply = connect(proxy.addr, &format!("closed.test:{}", closed.port()), "").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains(&closed.to_string()), "{}", reply.body);
    assert!(reply.body.to_lowercase().contains("refused"), "{}", reply.body);
}

#[tokio::test]
async fn fallback_tries_the_next_permitted_answer() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 1, 9)).await;
    let port = upstream.addr.port();
    // The first answer has nothing listening on the port; the second is the upstream.
    dns.set("multi.test", Answer::Records(vec![lo(0, 1, 8), upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.address_rules.allow_addresses.push(AddressSpec::Socket(SocketAddr::new(lo(0, 1, 8), port)));
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await;
    let mut reply = connect(proxy.addr, &format!("multi.test:{port}"), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(echo_through(&mut reply.stream, b"second answer").await, b"second answer");
    assert_eq!(proxy.attempts.lock().unwrap().as_slice(), &[SocketAddr::new(lo(0, 1, 8), port), upstream.addr]);
}

#[tokio::test]
async fn roles_decide_through_the_daemon() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 1, 10)).await;
    dns.set("api.allowed.test", Answer::Records(vec![upstream.addr.ip()]));
    dns.set("elsewhere.example", Answer::Records(vec![upstream.addr.ip()]));
    let password = "proxyd-test-password-roles";
    // SAFETY of the test: the variable name is unique to this test.
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        allow(upstream.addr)(c);
        c.proxy_auth = Some(proxyd::config::ProxyAuth {
            variable: "PROXYD_TEST_ROLES".into(),
            password: password.into(),
            role: "enf".into(),
        });
        c.allow_missing_role = false;
    })
    .await;
    let credentials = |pw: &str| {
        use base64::Engine as _;
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("u:{pw}"))
        )
    };
    let port = upstream.addr.port();
    let ok = connect(proxy.addr, &format!("api.allowed.test:{port}"), &credentials(password)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let denied = connect(proxy.addr, &format!("elsewhere.example:{port}"), &credentials(password)).await;
    assert_eq!(denied.status, 403);
    assert!(denied.body.contains("rule has enforce policy"), "{}", denied.body);
    let missing = connect(proxy.addr, &format!("api.allowed.test:{port}"), "").await;
    assert_eq!(missing.status, 407);
    assert_eq!(missing.header("proxy-authenticate"), Some("Basic realm=\"proxyd\""));
    let wrong = connect(proxy.addr, &format!("api.allowed.test:{port}"), &credentials("nope")).await;
    assert_eq!(wrong.status, 407);
    // A role header from the client is never trusted.
    let spoofed = connect(proxy.addr, &format!("api.allowed.test:{port}"), "X-Smokescreen-Role: opn\r\n").await;
    assert_eq!(spoofed.status, 407);
}

#[tokio::test]
async fn a_missing_role_is_refused_unless_allowed() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |c| c.allow_missing_role = false).await;
    let reply = connect(proxy.addr, "upstream.test:443", "X-Smokescreen-Role: opn\r\n").await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("Client role cannot be determined"), "{}", reply.body);
    assert!(dns.queries().is_empty());
}

#[tokio::test]
async fn a_connect_timeout_is_504() {
    // A listener whose accept queue is full and never drained: Linux drops
    // further SYNs, so a connect to it hangs until the proxy's timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(lo(0, 1, 11), 0)).unwrap();
    let listener = socket.listen(1).unwrap();
    let full = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full)).await {
            fillers.push(s);
        }
    }
    let dns = TestDns::start().await;
    dns.set("blackhole.test", Answer::Records(vec![full.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        allow(full)(c);
        c.connect_timeout = Duration::from_millis(300);
    })
    .await;
    let reply = connect(proxy.addr, &format!("blackhole.test:{}", full.port()), "").await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(reply.body.contains("Timed out connecting"), "{}", reply.body);
    drop(listener);
}
