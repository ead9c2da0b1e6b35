//! The client side of a proxy conversation, for tests: send `CONNECT`,
//! read the answer head exactly (nothing after it is consumed), echo bytes
//! through a tunnel. Loopback addresses for upstreams come from [`lo`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response head as the client received it, and the connection after it.
#[derive(Debug)]
pub struct Reply<S> {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Header lines, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty without a Content-Length).
    pub body: String,
    /// The connection, positioned right after the head and body.
    pub stream: S,
}

impl<S> Reply<S> {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `CONNECT target` (plus `extra` header lines) and reads the answer.
pub async fn connect(proxy: SocketAddr, target: &str, extra: &str) -> Reply<TcpStream> {
    let stream = TcpStream::connect(proxy).await.expect("connect to proxy");
    send(stream, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n")).await
}

/// Sends raw bytes and reads one response head (and its body, if it has a length).
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, raw: &str) -> Reply<S> {
    stream.write_all(raw.as_bytes()).await.expect("send request");
    read_reply(stream).await
}

/// Reads one response head (and body) from `stream`.
pub async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Reply<S> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the head is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(n > 0, "connection closed before a full response head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).expect("UTF-8 head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("status code");
    let reason = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("read body");
    Reply { status, reason, headers, body: String::from_utf8(body).expect("UTF-8 body"), stream }
}

/// Writes `data` through a tunnel and reads the same number of bytes back.
pub async fn echo_through<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.expect("write through tunnel");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read echo");
    back
}

/// Reads until end of stream (with a deadline); returns what arrived.
pub async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut all)).await {
        Ok(Ok(_)) => Ok(all),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no end of stream in time")),
    }
}

/// A loopback address distinct from 127.0.0.1 (Linux routes all of 127/8).
pub fn lo(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}
