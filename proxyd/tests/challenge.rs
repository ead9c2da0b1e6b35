//! The `407` challenge of the proxy password (issue 26): clients such as
//! Java's and .NET's send proxy credentials only after a `407` with
//! `Proxy-Authenticate`, so a request without credentials that the
//! anonymous role may not make is challenged, while what the default rule
//! allows is still served anonymously. Wrong credentials are never anonymous.

use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use egress_policy::policy::AddressSpec;

use crate::harness::{ACL, Proxy, connect, echo_through, lo};
use testkit::dns::{Answer, TestDns};
use testkit::upstream::Upstream;

const PASSWORD: &str = "proxyd-test-password-challenge";

fn credentials(password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("user:{password}"));
    format!("Proxy-Authorization: Basic {encoded}\r\n")
}

/// The seed deployment: a password whose role (`opn`) may go anywhere,
/// and anonymous clients on the default rule (`*.test`).
async fn seed_proxy(dns: &TestDns, upstream: &Upstream, realm: Option<&str>) -> Proxy {
    for name in ["api.allowed.test", "only-with-password.example"] {
        dns.set(name, Answer::Records(vec![upstream.addr.ip()]));
    }
    dns.set("metadata.test", Answer::Records(vec![IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))]));
    let realm = realm.map(std::sync::Arc::from);
    Proxy::start(ACL, dns.addr(), move |c| {
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
        c.proxy_auth = Some(proxyd::config::ProxyAuth {
            variable: "PROXYD_TEST_CHALLENGE".into(),
            password: PASSWORD.into(),
            role: "opn".into(),
        });
        c.allow_missing_role = true;
        if let Some(realm) = realm {
            c.proxy_auth_realm = realm;
        }
    })
    .await
}

#[tokio::test]
async fn a_name_only_the_password_may_reach_is_challenged_then_served() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 26, 1)).await;
    let proxy = seed_proxy(&dns, &upstream, None).await;
    let target = format!("only-with-password.example:{}", upstream.addr.port());

    let challenged = connect(proxy.addr, &target, "").await;
    assert_eq!(challenged.status, 407, "{}", challenged.body);
    assert_eq!(challenged.header("proxy-authenticate"), Some("Basic realm=\"proxyd\""));
    assert!(dns.queries().is_empty(), "a challenge costs no DNS query");

    // What a client does after the challenge: the same request with credentials.
    let mut served = connect(proxy.addr, &target, &credentials(PASSWORD)).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(echo_through(&mut served.stream, b"after the challenge").await, b"after the challenge");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn what_the_default_rule_allows_is_still_served_anonymously() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 26, 2)).await;
    let proxy = seed_proxy(&dns, &upstream, None).await;
    let mut anonymous = connect(proxy.addr, &format!("api.allowed.test:{}", upstream.addr.port()), "").await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    assert_eq!(echo_through(&mut anonymous.stream, b"anonymous").await, b"anonymous");
}

#[tokio::test]
async fn wrong_credentials_are_never_the_anonymous_role() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 26, 3)).await;
    let proxy = seed_proxy(&dns, &upstream, Some("egress at example.org")).await;
    let port = upstream.addr.port();
    // Even where the anonymous role could go, and however the header is wrong.
    for header in [
        credentials("wrong"),
        "Proxy-Authorization: Basic !!!\r\n".to_owned(),
        format!("Proxy-Authorization: Bearer {PASSWORD}\r\n"),
    ] {
        for host in ["api.allowed.test", "only-with-password.example"] {
            let reply = connect(proxy.addr, &format!("{host}:{port}"), &header).await;
            assert_eq!(reply.status, 407, "{host} {header:?}: {}", reply.body);
            assert_eq!(reply.header("proxy-authenticate"), Some("Basic realm=\"egress at example.org\""));
            assert!(reply.body.contains("proxy credentials are wrong"), "{}", reply.body);
        }
    }
    assert_eq!(upstream.accepted(), 0);
    assert!(dns.queries().is_empty());
}

#[tokio::test]
async fn an_address_refusal_is_not_a_challenge() {
    // The address stage judges the address, not the role: credentials would not help.
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 26, 4)).await;
    let proxy = seed_proxy(&dns, &upstream, None).await;
    let reply = connect(proxy.addr, "metadata.test:80", "").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("169.254.169.254"), "{}", reply.body);
    assert_eq!(reply.header("proxy-authenticate"), None);
    assert_eq!(proxy.attempt_count(), 0, "refused before any connect");
}

#[tokio::test]
async fn without_allow_missing_role_every_request_without_credentials_is_challenged() {
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 26, 5)).await;
    dns.set("api.allowed.test", Answer::Records(vec![upstream.addr.ip()]));
    let proxy = Proxy::start(ACL, dns.addr(), |c| {
        c.address_rules.allow_addresses.push(AddressSpec::Socket(upstream.addr));
        c.proxy_auth = Some(proxyd::config::ProxyAuth {
            variable: "PROXYD_TEST_CHALLENGE".into(),
            password: PASSWORD.into(),
            role: "opn".into(),
        });
        c.allow_missing_role = false;
    })
    .await;
    let reply = connect(proxy.addr, &format!("api.allowed.test:{}", upstream.addr.port()), "").await;
    assert_eq!(reply.status, 407, "{}", reply.body);
    assert_eq!(reply.header("proxy-authenticate"), Some("Basic realm=\"proxyd\""));
}
