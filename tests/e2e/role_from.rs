//! `--role-from` through the real `proxyd` binary with real mTLS
//! certificates: a SPIFFE ID's service account is the role in the decision
//! line and the metrics, and certificates the rule does not match
//! unambiguously are refused, with the reason in the decision line.

use serde_json::Value;
use testkit::client::{echo_through, lo, send};
use testkit::daemon::Daemon;
use testkit::dns::{Answer, TestDns};
use testkit::pki::{ClientCert, TestPki};
use testkit::upstream::Upstream;
use tokio::net::TcpStream;

use crate::support::{compile, write};

const ACL: &str = "\
version: v1
services:
  - name: billing
    project: payments
    action: enforce
    allowed_domains: [api.vendor.test]
default:
  project: other
  action: enforce
";

const SPIFFE: &str = r"uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$";

/// A client certificate whose URI SANs are `ids` (and a CN that is not the role).
fn spiffe(pki: &TestPki, ids: &[&str]) -> ClientCert {
    let uris: Vec<rcgen::SanType> = ids.iter().map(|id| rcgen::SanType::URI((*id).try_into().unwrap())).collect();
    pki.client_with(Some("billing-but-not-by-cn"), move |params| params.subject_alt_names = uris)
}

/// CONNECT over mTLS to `target` with `cert`; the status and the stream.
async fn connect_as(
    pki: &TestPki,
    proxy: std::net::SocketAddr,
    cert: &ClientCert,
    target: &str,
) -> testkit::client::Reply<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let tls = pki.client_connector(Some(cert)).connect(pki.server_name(), tcp).await.expect("mTLS handshake");
    send(tls, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")).await
}

fn decision(daemon: &mut Daemon) -> Value {
    daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // the in-test servers run while this thread waits on the daemon
async fn a_spiffe_id_is_the_role_in_logs_and_metrics_and_unmatched_certificates_are_refused() {
    let pki = TestPki::new();
    let dns = TestDns::start().await;
    let upstream = Upstream::echo(lo(0, 126, 20)).await;
    dns.set("api.vendor.test", Answer::Records(vec![upstream.addr.ip()]));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "acl.yaml", ACL);
    compile(dir.path(), "acl.yaml", "policy.bin");
    let table = dir.path().join("policy.bin");
    let dns_addr = dns.addr().to_string();
    let allow = upstream.addr.to_string();
    let mut daemon = Daemon::start(
        &testkit::binary("proxyd"),
        &[
            "--policy",
            table.to_str().unwrap(),
            "--resolver-address",
            &dns_addr,
            "--allow-address",
            &allow,
            "--tls-server-bundle-file",
            pki.server_bundle.to_str().unwrap(),
            "--tls-client-ca-file",
            pki.ca_pem.to_str().unwrap(),
            "--role-from",
            SPIFFE,
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let admin: std::net::SocketAddr = daemon.listening["admin"].as_str().unwrap().parse().unwrap();
    let target = format!("api.vendor.test:{}", upstream.addr.port());

    let billing = spiffe(&pki, &["spiffe://example.org/ns/prod/sa/billing"]);
    let mut reply = connect_as(&pki, daemon.addr, &billing, &target).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(echo_through(&mut reply.stream, b"as billing").await, b"as billing");
    drop(reply);
    let line = decision(&mut daemon);
    assert_eq!((line["role"].as_str(), line["allow"].as_bool()), (Some("billing"), Some(true)), "{line}");
    assert!(line["missing_role_reason"].is_null(), "{line}");

    for (ids, reason) in [
        (&["spiffe://evil.org/ns/prod/sa/billing"][..], "role_regex_no_match"),
        (&["spiffe://example.org/ns/a/sa/billing", "spiffe://example.org/ns/b/sa/search"][..], "role_values_disagree"),
        (&[][..], "role_field_absent"),
    ] {
        let cert = spiffe(&pki, ids);
        let reply = connect_as(&pki, daemon.addr, &cert, &target).await;
        assert_eq!(reply.status, 403, "{ids:?}: {}", reply.body);
        assert!(reply.body.contains("Client role cannot be determined"), "{}", reply.body);
        let line = decision(&mut daemon);
        assert_eq!(line["refusal"], "missing_role", "{ids:?}: {line}");
        assert_eq!(line["missing_role_reason"], reason, "{ids:?}: {line}");
        assert!(line["role"].is_null(), "never the CN: {line}");
    }
    assert_eq!(upstream.accepted(), 1);

    let scrape = testkit::scrape::scrape(admin).await;
    let billing_allowed = scrape.samples.iter().find(|(series, _)| {
        series.starts_with("proxyd_decisions_total{result=\"allow\"") && series.contains("role=\"billing\"")
    });
    assert_eq!(billing_allowed.map(|(_, v)| v.as_str()), Some("1"), "{}", scrape.text);
    assert_eq!(scrape.value("proxyd_requests_total{outcome=\"missing_role\"}"), "3");
    assert!(daemon.terminate().success());
}
