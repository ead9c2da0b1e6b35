//! Tests of the in-test upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

use std::io::ErrorKind;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use testkit::upstream::Upstream;

const PATIENCE: Duration = Duration::from_secs(5);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn echo_listens_on_the_chosen_loopback_address_and_echoes() {
    let upstream = Upstream::echo(ip("127.0.0.2")).await;
    assert_eq!(upstream.addr.ip(), ip("127.0.0.2"));
    assert_ne!(upstream.addr.port(), 0);
    assert_eq!(upstream.accepted(), 0);

    let mut client = TcpStream::connect(upstream.addr).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut reply = [0_u8; 5];
    timeout(PATIENCE, client.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(&reply, b"hello");
    assert_eq!(upstream.accepted(), 1);

    let _second = TcpStream::connect(upstream.addr).await.unwrap();
    timeout(PATIENCE, async {
        while upstream.accepted() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn echo_finishes_then_passes_the_half_close_back() {
    let upstream = Upstream::echo(ip("127.0.1.1")).await;
    let mut client = TcpStream::connect(upstream.addr).await.unwrap();
    let payload: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = client.split();
    let send = async {
        writer.write_all(&payload).await.unwrap();
        writer.shutdown().await.unwrap(); // half-close: we still read
    };
    let receive = async {
        let mut echoed = Vec::new();
        reader.read_to_end(&mut echoed).await.unwrap(); // ends only at the upstream's FIN
        echoed
    };
    let ((), echoed) = timeout(PATIENCE, async { tokio::join!(send, receive) }).await.unwrap();
    assert_eq!(echoed, payload);
}

#[tokio::test]
async fn reset_after_sends_rst_once_the_bytes_are_read() {
    let upstream = Upstream::reset_after(ip("127.0.0.3"), 4).await;
    let mut client = TcpStream::connect(upstream.addr).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut buffer = [0_u8; 16];
    let err = timeout(PATIENCE, client.read(&mut buffer)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn banner_comes_first_then_echo() {
    let upstream = Upstream::banner(ip("127.0.0.4"), b"220 upstream ready\r\n").await;
    let mut client = TcpStream::connect(upstream.addr).await.unwrap();
    let mut banner = [0_u8; 20];
    timeout(PATIENCE, client.read_exact(&mut banner)).await.unwrap().unwrap();
    assert_eq!(&banner, b"220 upstream ready\r\n");
    client.write_all(b"EHLO").await.unwrap();
    let mut reply = [0_u8; 4];
    timeout(PATIENCE, client.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(&reply, b"EHLO");
}

#[tokio::test]
async fn tls_echo_serves_the_given_certificate_and_echoes() {
    let certified = rcgen::generate_simple_self_signed(vec!["upstream.test".to_owned()]).unwrap();
    let upstream =
        Upstream::tls_echo(ip("127.0.0.5"), &certified.cert.pem(), &certified.signing_key.serialize_pem()).await;

    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(upstream.addr).await.unwrap();
    let name = ServerName::try_from("upstream.test").unwrap();
    let mut tls = timeout(PATIENCE, TlsConnector::from(Arc::new(config)).connect(name, tcp)).await.unwrap().unwrap();

    tls.write_all(b"over tls").await.unwrap();
    let mut reply = [0_u8; 8];
    timeout(PATIENCE, tls.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(&reply, b"over tls");

    tls.shutdown().await.unwrap(); // close_notify: the upstream answers with its own, then EOF
    let mut rest = Vec::new();
    timeout(PATIENCE, tls.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn an_upstream_stops_when_dropped() {
    let upstream = Upstream::echo(ip("127.0.0.6")).await;
    let addr = upstream.addr;
    let mut open = TcpStream::connect(addr).await.unwrap();
    drop(upstream);
    // The open connection is closed and new ones are refused.
    let mut buffer = [0_u8; 1];
    let read = timeout(PATIENCE, open.read(&mut buffer)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    timeout(PATIENCE, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}
