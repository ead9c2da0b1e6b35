//! A client for the admin endpoints: one raw HTTP/1.1 request per
//! connection (as the admin listener serves them), and a reader for the
//! Prometheus text format that keeps every sample line by its exact series.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An admin answer.
#[derive(Debug)]
pub struct AdminReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `raw` and reads until the server closes the connection.
pub async fn request(admin: SocketAddr, raw: &[u8]) -> AdminReply {
    let mut stream = TcpStream::connect(admin).await.expect("connect to admin");
    stream.write_all(raw).await.expect("send admin request");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("admin answers and closes in time")
        .expect("read admin answer");
    let text = String::from_utf8(all).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status: {head}"));
    AdminReply { status, head: head.to_owned(), body: body.to_owned() }
}

/// `GET path`.
pub async fn get(admin: SocketAddr, path: &str) -> AdminReply {
    request(admin, format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes()).await
}

/// One `/metrics` scrape: series (`name{labels}` exactly as written) to value.
#[derive(Debug)]
pub struct Scrape {
    pub text: String,
    pub samples: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) =
                line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line without a value: {line}"));
            assert!(samples.insert(series.to_owned(), value.to_owned()).is_none(), "series twice: {series}");
        }
        Scrape { text, samples }
    }

    /// The value of `series`; panics (showing the scrape) if absent.
    pub fn value(&self, series: &str) -> &str {
        self.samples.get(series).unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    /// The value of `series`, or `None` if absent.
    pub fn get(&self, series: &str) -> Option<&str> {
        self.samples.get(series).map(String::as_str)
    }
}

/// Scrapes `/metrics` and checks its content type.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{}", reply.head);
    Scrape::parse(reply.body)
}
