//! Who is asking, over TLS: the role from a verified client certificate,
//! fail-closed without one, revoked/expired/foreign certificates refused at
//! the handshake; and the PROXY protocol, required when enabled.

use std::time::Duration;

use egress_policy::policy::AddressSpec;
use proxyd::tls::{ServerIdentity, TlsSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{ACL, Proxy, echo_through, lo, send};
use testkit::dns::{Answer, TestDns};
use testkit::pki::{ClientCert, TestPki};
use testkit::upstream::Upstream;

fn tls(pki: &TestPki, allow_missing_role: bool) -> TlsSettings {
    TlsSettings {
        server_bundle: ServerIdentity::Bundle(pki.server_bundle.clone()),
        client_ca_files: vec![pki.ca_pem.clone(), pki.second_ca_pem.clone()],
        crl_files: vec![pki.crl.clone()],
        allow_missing_role,
    }
}

/// CONNECT over TLS with an optional client certificate; `None` if the
/// handshake (or the first read after it) fails.
async fn tls_connect(
    pki: &TestPki,
    proxy: std::net::SocketAddr,
    cert: Option<&ClientCert>,
    target: &str,
) -> Option<crate::harness::Reply<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(proxy).await.ok()?;
    let mut stream = pki.client_connector(cert).connect(pki.server_name(), tcp).await.ok()?;
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    // A refused client certificate surfaces as an alert on the first read (TLS 1.3).
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    let prefixed = Prefixed { first: Some(first[0]), inner: stream };
    let reply = crate::harness::read_reply(prefixed).await;
    Some(crate::harness::Reply {
        status: reply.status,
        reason: reply.reason,
        headers: reply.headers,
        body: reply.body,
        stream: reply.stream.inner,
    })
}

/// A stream with one byte already read put back in front.
struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(byte) = self.first.take() {
            buf.put_slice(&[byte]);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn the_certificate_cn_is_the_role() {
    let pki = TestPki::new();
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 7, 1)).await;
    dns.set("api.allowed.test", Answer::Records(vec![upstream.addr.ip()]));
    dns.set("other.example", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.tls = Some(tls(&pki, false));
        c.allow_missing_role = false;
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await;
    let port = upstream.addr.port();
    let enf = pki.client(Some("enf"));
    let mut ok =
        tls_connect(&pki, proxy.addr, Some(&enf), &format!("api.allowed.test:{port}")).await.expect("handshake");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(echo_through(&mut ok.stream, b"over tls").await, b"over tls");
    let denied = tls_connect(&pki, proxy.addr, Some(&enf), &format!("other.example:{port}")).await.expect("handshake");
    assert_eq!(denied.status, 403);
    assert!(denied.body.contains("rule has enforce policy"), "{}", denied.body);
    // A certificate from the second configured CA works too.
    let opn = pki.second_ca_client(Some("opn"));
    let open = tls_connect(&pki, proxy.addr, Some(&opn), &format!("other.example:{port}")).await.expect("handshake");
    assert_eq!(open.status, 200, "{}", open.body);
}

#[tokio::test]
async fn bad_certificates_are_refused_at_the_handshake() {
    let pki = TestPki::new();
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.tls = Some(tls(&pki, false));
        c.allow_missing_role = false;
    })
    .await;
    for (what, cert) in [
        ("no certificate", None),
        ("revoked", Some(pki.revoked_client())),
        ("expired", Some(pki.expired_client())),
        ("unknown CA", Some(pki.other_ca_client())),
    ] {
        let reply = tls_connect(&pki, proxy.addr, cert.as_ref(), "api.allowed.test:443").await;
        assert!(reply.is_none(), "{what}: expected the handshake to fail");
    }
    assert!(dns.queries().is_empty());
}

#[tokio::test]
async fn without_a_certificate_or_cn_the_default_rule_applies_when_allowed() {
    let pki = TestPki::new();
    let dns = TestDns::start().await;
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.tls = Some(tls(&pki, true));
        c.allow_missing_role = true;
    })
    .await;
    // `other.example` is not in the default rule: denied by it, not by a role.
    for cert in [None, Some(pki.client(None)), Some(pki.client(Some("")))] {
        let reply = tls_connect(&pki, proxy.addr, cert.as_ref(), "other.example:443").await.expect("handshake");
        assert_eq!(reply.status, 403);
        assert!(reply.body.contains("default rule policy used"), "{}", reply.body);
    }
}

#[tokio::test]
async fn the_proxy_protocol_header_is_required_when_enabled() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 7, 2)).await;
    dns.set("upstream.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.proxy_protocol = true;
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await;
    let target = format!("upstream.test:{}", upstream.addr.port());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut reply = send(
        stream,
        &format!("PROXY TCP4 203.0.113.7 127.0.0.1 5555 4750\r\nCONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(echo_through(&mut reply.stream, b"proxied").await, b"proxied");

    // Without the header the connection is refused, not served.
    let mut bare = TcpStream::connect(proxy.addr).await.unwrap();
    bare.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), bare.read_to_end(&mut answer)).await.expect("closed");
    assert!(!String::from_utf8_lossy(&answer).contains("200"), "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(upstream.accepted(), 1, "only the proxied client reached the upstream");
}
