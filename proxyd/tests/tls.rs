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
        role_from: Default::default(),
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

/// A proxy whose role comes from `role_from`, with `enf` allowed to
/// `api.allowed.test` (and `opn` anywhere); the default rule reaches `*.test`.
async fn role_from_proxy(
    pki: &TestPki,
    dns: &TestDns,
    upstream: &Upstream,
    role_from: &str,
    allow_missing_role: bool,
) -> Proxy {
    dns.set("api.allowed.test", Answer::Records(vec![upstream.addr.ip()]));
    dns.set("other.example", Answer::Records(vec![upstream.addr.ip()]));
    let role_from = proxyd::role::RoleFrom::parse(role_from).expect("rule compiles");
    Proxy::start(ACL, dns.addr(), |c| {
        c.tls = Some(TlsSettings { role_from, ..tls(pki, allow_missing_role) });
        c.allow_missing_role = allow_missing_role;
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
    })
    .await
}

/// The status of a CONNECT to `host` on `upstream`'s port with `cert`.
async fn status(pki: &TestPki, proxy: &Proxy, upstream: &Upstream, cert: &ClientCert, host: &str) -> (u16, String) {
    let target = format!("{host}:{}", upstream.addr.port());
    let mut reply = tls_connect(pki, proxy.addr, Some(cert), &target).await.expect("handshake");
    if reply.status == 200 {
        assert_eq!(echo_through(&mut reply.stream, b"role").await, b"role");
    }
    (reply.status, reply.body)
}

#[tokio::test]
async fn role_from_ou_takes_the_first_particle_as_smokescreens_readme_does() {
    use rcgen::DnType;
    let pki = TestPki::new();
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 7, 3)).await;
    let proxy = role_from_proxy(&pki, &dns, &upstream, "ou:^([^.]+)", false).await;
    let ou = |ou: &'static str| {
        pki.client_with(Some("ignored-cn"), move |p| p.distinguished_name.push(DnType::OrganizationalUnitName, ou))
    };

    // OU `enf.payments.prod` is the role `enf`: its rule allows api.allowed.test, not other.example.
    let enf = ou("enf.payments.prod");
    assert_eq!(status(&pki, &proxy, &upstream, &enf, "api.allowed.test").await.0, 200);
    let (code, body) = status(&pki, &proxy, &upstream, &enf, "other.example").await;
    assert_eq!((code, body.contains("rule has enforce policy")), (403, true), "{body}");
    // OU `opn.x` is the open role.
    assert_eq!(status(&pki, &proxy, &upstream, &ou("opn.x"), "other.example").await.0, 200);

    // Fail closed: no OU (the CN is not a fallback), no match, two OUs that disagree.
    let disagreeing = pki.client_with(Some("enf"), |p| {
        p.distinguished_name.push(DnType::OrganizationalUnitName, "enf.a");
        p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 11]), "opn.b");
    });
    for (what, cert) in [("no OU", pki.client(Some("enf"))), ("no match", ou(".enf")), ("disagreeing OUs", disagreeing)]
    {
        let (code, body) = status(&pki, &proxy, &upstream, &cert, "api.allowed.test").await;
        assert_eq!(code, 403, "{what}: {body}");
        assert!(body.contains("Client role cannot be determined"), "{what}: {body}");
    }
    assert_eq!(upstream.accepted(), 2, "only the two allowed tunnels reached the upstream");
}

#[tokio::test]
async fn role_from_a_spiffe_id_in_the_uri_san() {
    use rcgen::SanType;
    let pki = TestPki::new();
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 7, 4)).await;
    let rule = r"uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$";
    let proxy = role_from_proxy(&pki, &dns, &upstream, rule, true).await;
    let spiffe = |ids: &[&str]| {
        let names: Vec<SanType> = ids.iter().map(|id| SanType::URI((*id).try_into().unwrap())).collect();
        pki.client_with(None, move |p| p.subject_alt_names = names)
    };

    let enf = spiffe(&["spiffe://example.org/ns/prod/sa/enf"]);
    assert_eq!(status(&pki, &proxy, &upstream, &enf, "api.allowed.test").await.0, 200);
    assert_eq!(status(&pki, &proxy, &upstream, &enf, "other.example").await.0, 403);
    let opn = spiffe(&["https://opn.example.org/", "spiffe://example.org/ns/dev/sa/opn"]);
    assert_eq!(status(&pki, &proxy, &upstream, &opn, "other.example").await.0, 200, "the non-matching URI is skipped");

    // Another trust domain, two identities, or a CN only: a missing role, which
    // allow_missing_role sends to the default rule (it refuses other.example).
    for (what, cert) in [
        ("foreign trust domain", spiffe(&["spiffe://evil.org/ns/prod/sa/opn"])),
        ("two identities", spiffe(&["spiffe://example.org/ns/a/sa/opn", "spiffe://example.org/ns/b/sa/enf"])),
        ("CN only", pki.client(Some("opn"))),
    ] {
        let (code, body) = status(&pki, &proxy, &upstream, &cert, "other.example").await;
        assert_eq!(code, 403, "{what}: {body}");
        assert!(body.contains("default rule policy used"), "{what}: {body}");
    }
    assert_eq!(upstream.accepted(), 2);
}
