//! The request head: what a client sends on the proxy port before its
//! tunnel, one HTTP/1.0 or HTTP/1.1 request line and its header fields, read
//! and parsed strictly (httparse) within the header deadline, at most
//! [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields.
//!
//! A connection carries one request: nothing here handles keep-alive,
//! request bodies or chunked coding, because a CONNECT request has no
//! content and every other method is refused. Bytes after the head are the
//! client's first tunnel bytes ([`RequestHead::pipelined`]).
//!
//! This module only reads and parses: `server` decides what the request
//! gets, `answer` writes it.

use std::future::Future;
use std::io;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::buffers::Buffer;
use crate::log;

/// Largest request head (request line plus header fields) we read; larger
/// is answered 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields in a head; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// The HTTP version of a request, which its answer repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// The request method: the one the proxy serves, or any other exactly as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Connect,
    Other(String),
}

impl Method {
    fn parse(method: &str) -> Method {
        if method == "CONNECT" { Method::Connect } else { Method::Other(method.to_owned()) }
    }
}

/// A parsed request head: only what the proxy uses, owned.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// The request target exactly as sent (for CONNECT, `host:port`).
    pub target: String,
    pub version: Version,
    /// The first `Proxy-Authorization` value.
    pub proxy_authorization: Option<Vec<u8>>,
    /// `X-Smokescreen-Trace-ID`, or why it was dropped ([`log::trace_id`]).
    pub trace_id: Result<Option<String>, &'static str>,
    /// A `Content-Length` other than 0, or any `Transfer-Encoding`: content
    /// a CONNECT request cannot have (RFC 9110 § 9.3.6), so bytes after the
    /// head would be ambiguous.
    pub declares_content: bool,
    /// Bytes the client sent after the head: the first tunnel bytes.
    pub pipelined: Vec<u8>,
}

impl RequestHead {
    /// Whether the answer carries no body (a `HEAD` request).
    pub fn head_only(&self) -> bool {
        matches!(&self.method, Method::Other(method) if method == "HEAD")
    }
}

/// Why no request head was read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("the client closed the connection before a complete request head")]
    Closed,
    #[error("no complete request head within the header timeout")]
    TimedOut,
    #[error("reading the request head: {0}")]
    Io(io::Error),
    /// Answered 400.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// Answered 431.
    #[error("request head larger than {MAX_HEAD_BYTES} bytes or with more than {MAX_HEADERS} header fields")]
    TooLarge,
}

/// Reads one request head from `client`, which must be complete by
/// `deadline`.
pub async fn read<R: AsyncRead + Unpin>(client: &mut R, deadline: Instant) -> Result<RequestHead, HeadError> {
    // Bytes of a head that is still incomplete, kept between reads.
    let mut partial = Vec::new();
    let reading = std::future::poll_fn(|cx| poll_head(client, &mut partial, cx));
    tokio::time::timeout_at(deadline, reading).await.unwrap_or(Err(HeadError::TimedOut))
}

/// Reads what `client` has into a [`Buffer`] borrowed for this poll only
/// (after `partial`, the bytes of earlier polls), and parses the whole
/// again (heads are small; most arrive in one read). While the client is
/// silent the buffer is back in the pool, so a connection that has sent
/// nothing holds no buffer, and one that sent part of a head holds only
/// that part.
fn poll_head<R: AsyncRead + Unpin>(
    client: &mut R,
    partial: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<Result<RequestHead, HeadError>> {
    let mut buffer = Buffer::take();
    buffer.extend_from_slice(partial);
    loop {
        // Less than MAX_HEAD_BYTES are buffered before a read, so the buffer never grows.
        let read = std::pin::pin!(client.read_buf(&mut *buffer));
        if ready!(read.poll(cx)).map_err(HeadError::Io)? == 0 {
            return Poll::Ready(Err(HeadError::Closed));
        }
        if let Some(head) = parse(&buffer)? {
            return Poll::Ready(Ok(head));
        }
        if buffer.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(HeadError::TooLarge));
        }
        partial.clear();
        partial.extend_from_slice(&buffer);
    }
}

/// Parses `bytes` as a request head followed by tunnel bytes; `None` while
/// the head is incomplete.
pub fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(error) => return Err(HeadError::Malformed(error.to_string())),
    };
    if length > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version) else {
        return Err(HeadError::Malformed("incomplete request line".to_owned()));
    };
    let version = if minor == 0 { Version::Http10 } else { Version::Http11 };
    let fields = request.headers.iter();
    let named = |name: &'static str| fields.clone().filter(move |f| f.name.eq_ignore_ascii_case(name));
    let declares_content =
        named("content-length").any(|f| f.value.trim_ascii() != b"0") || named("transfer-encoding").next().is_some();
    Ok(Some(RequestHead {
        method: Method::parse(method),
        target: target.to_owned(),
        version,
        proxy_authorization: named("proxy-authorization").next().map(|f| f.value.to_vec()),
        trace_id: log::trace_id(named(log::TRACE_ID_HEADER).map(|f| f.value)),
        declares_content,
        pipelined: bytes.get(length..).unwrap_or_default().to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    fn complete(bytes: &[u8]) -> RequestHead {
        parse(bytes).unwrap().expect("a complete head")
    }

    #[test]
    fn a_connect_head_and_what_follows_it() {
        let head = complete(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nproxy-authorization: Basic eDp5\r\n\
              Proxy-Authorization: second\r\nX-Smokescreen-Trace-ID: abc\r\n\r\n\x16\x03\x01",
        );
        assert_eq!(head.method, Method::Connect);
        assert_eq!(head.target, "example.com:443");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.proxy_authorization.as_deref(), Some(&b"Basic eDp5"[..]), "the first value counts");
        assert_eq!(head.trace_id, Ok(Some("abc".to_owned())));
        assert!(!head.declares_content);
        assert_eq!(head.pipelined, b"\x16\x03\x01");
        assert!(!head.head_only());
    }

    #[test]
    fn versions_methods_and_leading_empty_lines() {
        let head = complete(b"\r\nCONNECT 10.0.0.1:80 HTTP/1.0\r\n\r\n");
        assert_eq!((head.version, head.pipelined.len()), (Version::Http10, 0));
        let head = complete(b"connect a:1 HTTP/1.1\r\n\r\n");
        assert_eq!(head.method, Method::Other("connect".into()), "methods are case-sensitive");
        assert!(complete(b"HEAD / HTTP/1.1\r\n\r\n").head_only());
        assert_eq!(complete(b"GET http://x/ HTTP/1.1\n\n").target, "http://x/", "bare LF line ends are accepted");
    }

    #[test]
    fn a_utf8_target_is_kept_and_other_bytes_are_malformed() {
        assert_eq!(complete("CONNECT ｆｕｌｌ.test:80 HTTP/1.1\r\n\r\n".as_bytes()).target, "ｆｕｌｌ.test:80");
        assert!(matches!(parse(b"CONNECT \xff.test:80 HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse(b"CONNECT a\x01.test:80 HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn content_on_a_request_is_flagged() {
        let flagged =
            |fields: &str| complete(format!("CONNECT a:1 HTTP/1.1\r\n{fields}\r\n").as_bytes()).declares_content;
        assert!(!flagged(""));
        assert!(!flagged("Content-Length: 0\r\n"));
        assert!(flagged("Content-Length: 4\r\n"));
        assert!(flagged("content-length: 0\r\nContent-Length: 1\r\n"));
        assert!(flagged("Transfer-Encoding: chunked\r\n"));
    }

    #[test]
    fn trace_ids_are_checked_while_parsing() {
        let trace = |fields: &str| complete(format!("CONNECT a:1 HTTP/1.1\r\n{fields}\r\n").as_bytes()).trace_id;
        assert_eq!(trace(""), Ok(None));
        assert!(trace("X-Smokescreen-Trace-ID: a\r\nx-smokescreen-trace-id: b\r\n").is_err());
        assert!(trace("X-Smokescreen-Trace-ID: a b\r\n").is_err());
    }

    #[test]
    fn incomplete_malformed_and_oversized_heads() {
        assert!(parse(b"CONNECT a:1 HTTP/1.1\r\nHost: a").unwrap().is_none());
        assert!(parse(b"").unwrap().is_none());
        for bad in [
            &b"HELLO\r\n\r\n"[..],
            b"CONNECT a:1 HTTP/1.2\r\n\r\n",
            b"CONNECT a:1\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\nFoo : bar\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\nFoo: bar\r\n baz\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let head = format!("CONNECT a:1 HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(head.as_bytes()), Err(HeadError::TooLarge)));
        let long = format!("CONNECT a:1 HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(parse(long.as_bytes()), Err(HeadError::TooLarge)));
    }

    /// Over a real socket: a head in pieces, a head that never ends, a
    /// client that leaves, and one that sends too much.
    #[tokio::test]
    async fn reading_over_a_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let soon = || Instant::now() + Duration::from_millis(300);

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"CONNECT a:1 HT").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"TP/1.1\r\n\r\nhello").await.unwrap();
            client
        });
        let head = read(&mut server, soon()).await.unwrap();
        assert_eq!((head.target.as_str(), head.pipelined.as_slice()), ("a:1", &b"hello"[..]));
        drop(writer.await.unwrap());

        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let started = Instant::now();
        assert!(matches!(read(&mut server, soon()).await, Err(HeadError::TimedOut)));
        assert!(started.elapsed() >= Duration::from_millis(250));

        let leaving = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        drop(leaving);
        assert!(matches!(read(&mut server, soon()).await, Err(HeadError::Closed)));

        let mut flooding = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let flood = tokio::spawn(async move {
            let _ = flooding.write_all(b"CONNECT a:1 HTTP/1.1\r\nX: ").await;
            let _ = flooding.write_all(&vec![b'a'; 4 * MAX_HEAD_BYTES]).await;
            flooding
        });
        assert!(matches!(read(&mut server, soon()).await, Err(HeadError::TooLarge)));
        drop(server);
        let _ = flood.await;
    }
}
