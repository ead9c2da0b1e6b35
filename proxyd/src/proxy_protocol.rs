//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), through
//! which a load balancer in front of `proxyd` reports the real client address.
//!
//! On a listener where it is enabled the header is required: a connection
//! that does not begin with one complete, valid header is refused.
//! (Smokescreen makes it optional, so any client can spoof its logged address:
//! its §9.14.) Parsing is strict, so that no two readers can see different
//! addresses in the same bytes.
//!
//! [`parse`] is pure: no I/O, no clock. [`read_header`] reads exactly the
//! header's bytes and never one more, so whatever follows (the CONNECT
//! request, a TLS ClientHello) stays in the stream for the next layer. Neither
//! may panic or allocate more than [`MAX_HEADER_LEN`] bytes, whatever arrives.
//!
//! Decisions:
//! * v1 `UNKNOWN`, v2 `LOCAL`, and v2 `PROXY` with `AF_UNSPEC` carry no client
//!   address: they are [`ProxyHeader::Local`] and the caller uses the peer
//!   address. The rest of such a header is skipped unread, as the
//!   specification says.
//! * v2 over UDP or with `AF_UNIX` addresses is refused: `proxyd` serves TCP.
//! * v2 TLVs are skipped, but their framing must be exact. A v2 header is at
//!   most [`MAX_HEADER_LEN`] bytes in all: the 536 bytes HAProxy suggests
//!   reading at once is not enough for a sender that adds an authority, a
//!   unique ID and TLS details, while 2 KiB per pending connection is cheap.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, CRLF included (the specification's limit).
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 header accepted, the 16-byte fixed part included.
pub const MAX_HEADER_LEN: usize = 2048;

const V1_PREFIX: &[u8] = b"PROXY ";
/// Shortest v1 header: `PROXY UNKNOWN\r\n`. Every v2 header is longer.
const V1_MIN_LEN: usize = 15;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
/// Address block sizes: two addresses and two ports.
const V2_INET_LEN: usize = 12;
const V2_INET6_LEN: usize = 36;
/// How many leading bytes an error message quotes.
const QUOTE_LEN: usize = 16;

/// What the header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The connection was relayed: `source` is the real client.
    Proxied { source: SocketAddr, destination: SocketAddr },
    /// No address given (v2 `LOCAL`, v1 `UNKNOWN`): use the real peer address.
    Local,
}

/// The result of looking at the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header; it is the first `consumed` bytes.
    Complete { header: ProxyHeader, consumed: usize },
    /// A valid beginning; the header is at least `need_at_least` bytes long
    /// (always more than were given, and at most [`MAX_HEADER_LEN`]), so that
    /// many bytes can be read without reading past it.
    Incomplete { need_at_least: usize },
}

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    #[error("no PROXY protocol header: the connection starts with \"{start}\"")]
    NotProxyProtocol { start: String },
    #[error("PROXY v1 header: no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("PROXY v1 header: byte {byte:#04x} at offset {offset} is not allowed (printable ASCII, then CRLF)")]
    V1BadByte { byte: u8, offset: usize },
    #[error("PROXY v1 header: unknown protocol {protocol:?} (expected TCP4, TCP6 or UNKNOWN)")]
    V1Protocol { protocol: String },
    #[error("PROXY v1 header: {line:?} is not `PROXY <proto> <src> <dst> <sport> <dport>` with single spaces")]
    V1Fields { line: String },
    #[error("PROXY v1 header: {field} address {value:?} is not an {family} address")]
    V1Address { field: &'static str, value: String, family: &'static str },
    #[error("PROXY v1 header: {field} port {value:?} is not a port (0-65535, decimal, no leading zeros)")]
    V1Port { field: &'static str, value: String },
    #[error("PROXY v2 header: version {0} (only 2 exists)")]
    V2Version(u8),
    #[error("PROXY v2 header: command {0:#x} (expected 0x0 LOCAL or 0x1 PROXY)")]
    V2Command(u8),
    #[error("PROXY v2 header: address family {0} is not supported (only AF_INET and AF_INET6)")]
    V2Family(&'static str),
    #[error("PROXY v2 header: transport {0} is not supported (only STREAM, i.e. TCP)")]
    V2Transport(&'static str),
    #[error("PROXY v2 header: length {declared} is shorter than the {needed}-byte address block")]
    V2ShortLength { declared: usize, needed: usize },
    #[error("PROXY v2 header: length {declared} makes the header longer than the {MAX_HEADER_LEN}-byte limit")]
    V2TooLong { declared: usize },
    #[error("PROXY v2 header: malformed TLV at offset {offset}: {reason}")]
    V2Tlv { offset: usize, reason: String },
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed after {received} bytes, before a complete PROXY protocol header")]
    UnexpectedEof { received: usize },
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Parses the header at the start of `bytes`, or says how much more is needed.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    match bytes.first() {
        None => Ok(Parsed::Incomplete { need_at_least: V1_MIN_LEN }),
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Err(not_proxy_protocol(bytes)),
    }
}

/// Reads one header from `stream`, consuming exactly its bytes, within `timeout`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    tokio::time::timeout(timeout, read_exactly_the_header(stream))
        .await
        .unwrap_or(Err(ProxyProtocolError::Timeout(timeout)))
}

async fn read_exactly_the_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut buf = vec![0u8; MAX_HEADER_LEN];
    let mut filled = 0;
    loop {
        match parse(buf.get(..filled).unwrap_or_default())? {
            Parsed::Complete { header, consumed } => {
                debug_assert_eq!(consumed, filled, "read past the header");
                return Ok(header);
            }
            Parsed::Incomplete { need_at_least } => {
                // Never more than `need_at_least`: the header is at least that long.
                let Some(space) = buf.get_mut(filled..need_at_least).filter(|space| !space.is_empty()) else {
                    return Err(
                        io::Error::other(format!("parser asked for {need_at_least} bytes with {filled}")).into()
                    );
                };
                let read = stream.read(space).await?;
                if read == 0 {
                    return Err(ProxyProtocolError::UnexpectedEof { received: filled });
                }
                filled += read;
            }
        }
    }
}

fn not_proxy_protocol(bytes: &[u8]) -> ProxyProtocolError {
    let start = bytes.get(..QUOTE_LEN).unwrap_or(bytes);
    ProxyProtocolError::NotProxyProtocol { start: start.escape_ascii().to_string() }
}

// --- v1 ----------------------------------------------------------------------------------------

fn parse_v1(bytes: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let window = bytes.get(..V1_MAX_LEN).unwrap_or(bytes);
    let prefix_len = window.len().min(V1_PREFIX.len());
    if window.get(..prefix_len) != V1_PREFIX.get(..prefix_len) {
        return Err(not_proxy_protocol(bytes));
    }
    for (offset, &byte) in window.iter().enumerate() {
        match byte {
            b'\r' => match window.get(offset + 1) {
                Some(b'\n') => {
                    let line = window.get(..offset).unwrap_or_default();
                    return parse_v1_line(line).map(|header| Parsed::Complete { header, consumed: offset + 2 });
                }
                Some(_) => return Err(ProxyProtocolError::V1BadByte { byte, offset }),
                None => {}
            },
            b' '..=b'~' => {}
            _ => return Err(ProxyProtocolError::V1BadByte { byte, offset }),
        }
    }
    if window.len() >= V1_MAX_LEN {
        return Err(ProxyProtocolError::V1TooLong);
    }
    // Still to come: at least the CRLF, or its LF.
    let missing = if window.last() == Some(&b'\r') { 1 } else { 2 };
    Ok(Parsed::Incomplete { need_at_least: (window.len() + missing).clamp(V1_MIN_LEN, V1_MAX_LEN) })
}

/// Parses a v1 line without its CRLF; it starts with `PROXY ` and every byte is printable ASCII.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    let text = String::from_utf8_lossy(line);
    let Some(rest) = text.strip_prefix("PROXY ") else {
        return Err(not_proxy_protocol(line));
    };
    // "UNKNOWN" may be followed by anything, which receivers ignore.
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(ProxyHeader::Local);
    }
    let mut fields = rest.split(' ');
    let protocol = fields.next().unwrap_or_default();
    let ipv6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyProtocolError::V1Protocol { protocol: protocol.to_owned() }),
    };
    let fields: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = fields.as_slice() else {
        return Err(ProxyProtocolError::V1Fields { line: text.into_owned() });
    };
    if fields.iter().any(|field| field.is_empty()) {
        return Err(ProxyProtocolError::V1Fields { line: text.into_owned() });
    }
    let source = SocketAddr::new(v1_address("source", source, ipv6)?, v1_port("source", source_port)?);
    let destination =
        SocketAddr::new(v1_address("destination", destination, ipv6)?, v1_port("destination", destination_port)?);
    Ok(ProxyHeader::Proxied { source, destination })
}

fn v1_address(field: &'static str, value: &str, ipv6: bool) -> Result<IpAddr, ProxyProtocolError> {
    // The standard library's parsers are strict: no leading zeros, no zone IDs, no shorthand IPv4.
    let parsed = match ipv6 {
        false => value.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
        true => value.parse::<Ipv6Addr>().map(IpAddr::V6).ok(),
    };
    parsed.ok_or_else(|| ProxyProtocolError::V1Address {
        field,
        value: value.to_owned(),
        family: if ipv6 { "IPv6" } else { "IPv4" },
    })
}

fn v1_port(field: &'static str, value: &str) -> Result<u16, ProxyProtocolError> {
    let canonical = !value.is_empty()
        && value.len() <= 5
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    canonical
        .then(|| value.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| ProxyProtocolError::V1Port { field, value: value.to_owned() })
}

// --- v2 ----------------------------------------------------------------------------------------

fn parse_v2(bytes: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let Some(fixed) = bytes.first_chunk::<V2_FIXED_LEN>() else {
        let seen = bytes.len().min(V2_SIGNATURE.len());
        if bytes.get(..seen) != V2_SIGNATURE.get(..seen) {
            return Err(not_proxy_protocol(bytes));
        }
        return Ok(Parsed::Incomplete { need_at_least: V2_FIXED_LEN });
    };
    if fixed.first_chunk::<12>() != Some(&V2_SIGNATURE) {
        return Err(not_proxy_protocol(bytes));
    }
    let [.., version_command, family_transport, length_high, length_low] = *fixed;
    if version_command >> 4 != 2 {
        return Err(ProxyProtocolError::V2Version(version_command >> 4));
    }
    let declared = usize::from(u16::from_be_bytes([length_high, length_low]));
    let total = V2_FIXED_LEN + declared;
    if total > MAX_HEADER_LEN {
        return Err(ProxyProtocolError::V2TooLong { declared });
    }
    // Everything that the fixed part can refuse is refused before waiting for the rest.
    let address_len = match version_command & 0x0f {
        0x0 => None, // LOCAL: the block is discarded, family included
        0x1 => v2_address_len(family_transport)?,
        command => return Err(ProxyProtocolError::V2Command(command)),
    };
    if let Some(needed) = address_len.filter(|needed| declared < *needed) {
        return Err(ProxyProtocolError::V2ShortLength { declared, needed });
    }
    let Some(block) = bytes.get(V2_FIXED_LEN..total) else {
        return Ok(Parsed::Incomplete { need_at_least: total });
    };
    let header = match address_len {
        None => ProxyHeader::Local,
        Some(address_len) => {
            let (addresses, tlvs) = block.split_at_checked(address_len).unwrap_or((block, &[]));
            check_tlvs(tlvs, V2_FIXED_LEN + address_len)?;
            v2_addresses(addresses)
        }
    };
    Ok(Parsed::Complete { header, consumed: total })
}

/// The address block length of a PROXY command, or `None` for `AF_UNSPEC`.
fn v2_address_len(family_transport: u8) -> Result<Option<usize>, ProxyProtocolError> {
    let len = match family_transport >> 4 {
        0x0 => return Ok(None),
        0x1 => V2_INET_LEN,
        0x2 => V2_INET6_LEN,
        0x3 => return Err(ProxyProtocolError::V2Family("AF_UNIX")),
        _ => return Err(ProxyProtocolError::V2Family("unknown")),
    };
    match family_transport & 0x0f {
        0x1 => Ok(Some(len)),
        0x0 => Err(ProxyProtocolError::V2Transport("UNSPEC")),
        0x2 => Err(ProxyProtocolError::V2Transport("DGRAM (UDP)")),
        _ => Err(ProxyProtocolError::V2Transport("unknown")),
    }
}

/// Reads an `AF_INET` (12-byte) or `AF_INET6` (36-byte) address block.
fn v2_addresses(block: &[u8]) -> ProxyHeader {
    let port = |at: usize| block.get(at..at + 2).and_then(|b| b.try_into().ok()).map_or(0, u16::from_be_bytes);
    let (source, destination, ports_at) = match block.len() {
        V2_INET_LEN => {
            let ip = |at: usize| block.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).unwrap_or_default();
            (IpAddr::from(ip(0)), IpAddr::from(ip(4)), 8)
        }
        _ => {
            let ip = |at: usize| block.get(at..at + 16).and_then(|b| <[u8; 16]>::try_from(b).ok()).unwrap_or_default();
            (IpAddr::from(ip(0)), IpAddr::from(ip(16)), 32)
        }
    };
    ProxyHeader::Proxied {
        source: SocketAddr::new(source, port(ports_at)),
        destination: SocketAddr::new(destination, port(ports_at + 2)),
    }
}

/// Checks that the TLVs exactly fill the rest of the header; `offset` is for messages.
fn check_tlvs(mut tlvs: &[u8], mut offset: usize) -> Result<(), ProxyProtocolError> {
    while !tlvs.is_empty() {
        let Some((&[kind, length_high, length_low], rest)) = tlvs.split_first_chunk::<3>() else {
            return Err(ProxyProtocolError::V2Tlv {
                offset,
                reason: format!("{} bytes left, a TLV header needs 3", tlvs.len()),
            });
        };
        let length = usize::from(u16::from_be_bytes([length_high, length_low]));
        let Some(after) = rest.get(length..) else {
            return Err(ProxyProtocolError::V2Tlv {
                offset,
                reason: format!("type {kind:#04x} declares {length} bytes, only {} left", rest.len()),
            });
        };
        offset += 3 + length;
        tlvs = after;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncWriteExt, ReadBuf};

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied { source: addr(source), destination: addr(destination) }
    }

    fn complete(bytes: &[u8]) -> ProxyHeader {
        match parse(bytes) {
            Ok(Parsed::Complete { header, consumed }) => {
                assert_eq!(consumed, bytes.len(), "{:?}", bytes.escape_ascii().to_string());
                header
            }
            other => panic!("{:?}: {other:?}", bytes.escape_ascii().to_string()),
        }
    }

    fn v2(command: u8, family_transport: u8, body: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family_transport);
        header.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        header.extend_from_slice(body);
        header
    }

    fn v2_inet(tlvs: &[u8]) -> Vec<u8> {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1, 0x15, 0xb3, 0x39, 0xa8];
        body.extend_from_slice(tlvs);
        v2(0x1, 0x11, &body)
    }

    fn v2_inet6() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0, 80, 0x01, 0xbb]);
        v2(0x1, 0x21, &body)
    }

    /// A TLV of `kind` with `value`.
    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// Every valid header of the tests with what it means.
    fn valid_headers() -> Vec<(Vec<u8>, ProxyHeader)> {
        let max_unknown = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 16));
        let aws_like = [tlv(0xEA, b"\x01vpce-08d2bf15fefb2ace1"), tlv(0x04, b""), tlv(0x05, &[7; 40])].concat();
        vec![
            (b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 14760\r\n".to_vec(), proxied("203.0.113.7:5555", "127.0.0.1:14760")),
            (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(), proxied("0.0.0.0:0", "255.255.255.255:65535")),
            (b"PROXY TCP6 2001:db8::7 ::1 443 80\r\n".to_vec(), proxied("[2001:db8::7]:443", "[::1]:80")),
            (b"PROXY TCP6 ::ffff:1.2.3.4 :: 1 2\r\n".to_vec(), proxied("[::ffff:1.2.3.4]:1", "[::]:2")),
            (
                b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                    .to_vec(),
                proxied("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::Local),
            (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(), ProxyHeader::Local),
            (max_unknown.into_bytes(), ProxyHeader::Local),
            (v2_inet(&[]), proxied("203.0.113.7:5555", "10.0.0.1:14760")),
            (v2_inet(&aws_like), proxied("203.0.113.7:5555", "10.0.0.1:14760")),
            (v2_inet6(), proxied("[2001:db8::7]:80", "[2001:db8::1]:443")),
            (v2(0x0, 0x00, &[]), ProxyHeader::Local),
            (v2(0x0, 0x11, &[1, 2, 3]), ProxyHeader::Local), // LOCAL: the block is discarded unread
            (v2(0x0, 0x31, &[0; 216]), ProxyHeader::Local),
            (v2(0x1, 0x00, &[]), ProxyHeader::Local),
            (v2(0x1, 0x00, &[9; 5]), ProxyHeader::Local),
            (
                v2(0x1, 0x11, &[[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2].as_slice(), &tlv(0x04, &[0; MAX_HEADER_LEN - 31])].concat()),
                proxied("1.2.3.4:1", "5.6.7.8:2"),
            ),
        ]
    }

    #[test]
    fn valid_headers_parse() {
        for (bytes, want) in valid_headers() {
            assert!(bytes.len() <= MAX_HEADER_LEN);
            assert_eq!(complete(&bytes), want, "{:?}", bytes.escape_ascii().to_string());
            // Whatever follows the header is not part of it.
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
            assert_eq!(parse(&longer).unwrap(), Parsed::Complete { header: want, consumed: bytes.len() });
        }
        assert_eq!(valid_headers()[7].0.len(), V1_MAX_LEN);
        assert_eq!(valid_headers().last().unwrap().0.len(), MAX_HEADER_LEN);
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete_and_never_overreads() {
        for (bytes, _) in valid_headers() {
            for len in 0..bytes.len() {
                match parse(&bytes[..len]) {
                    Ok(Parsed::Incomplete { need_at_least }) => {
                        assert!(
                            need_at_least > len && need_at_least <= bytes.len(),
                            "{len} of {}: {need_at_least}",
                            bytes.len()
                        );
                    }
                    other => panic!("{:?} cut at {len}: {other:?}", bytes.escape_ascii().to_string()),
                }
            }
        }
    }

    fn v1_error(line: &str) -> ProxyProtocolError {
        match parse(line.as_bytes()) {
            Err(e) => e,
            Ok(other) => panic!("{line:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn malformed_v1_headers_are_refused_with_the_reason() {
        use ProxyProtocolError as E;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", |e| matches!(e, E::NotProxyProtocol { .. })),
            ("PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", |e| matches!(e, E::NotProxyProtocol { .. })),
            ("PROXY\r\n", |e| matches!(e, E::NotProxyProtocol { .. })),
            ("PROXY \r\n", |e| matches!(e, E::V1Protocol { protocol } if protocol.is_empty())),
            ("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Protocol { protocol } if protocol == "TCP5")),
            ("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Protocol { .. })),
            ("PROXY UNKNOWNX\r\n", |e| matches!(e, E::V1Protocol { .. })),
            ("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Protocol { .. })),
            ("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Fields { .. })),
            ("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Fields { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", |e| matches!(e, E::V1Fields { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", |e| matches!(e, E::V1Fields { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", |e| matches!(e, E::V1Fields { .. })),
            ("PROXY TCP4\r\n", |e| matches!(e, E::V1Fields { .. })),
            ("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Address { field: "source", family: "IPv4", .. })),
            ("PROXY TCP6 ::1 5.6.7.8 1 2\r\n", |e| {
                matches!(e, E::V1Address { field: "destination", family: "IPv6", .. })
            }),
            ("PROXY TCP4 010.2.3.4 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Address { .. })),
            ("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Address { .. })),
            ("PROXY TCP4 0x7f.0.0.1 5.6.7.8 1 2\r\n", |e| matches!(e, E::V1Address { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", |e| matches!(e, E::V1Address { .. })),
            ("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", |e| matches!(e, E::V1Address { .. })),
            ("PROXY TCP6 [::1] ::1 1 2\r\n", |e| matches!(e, E::V1Address { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", |e| matches!(e, E::V1Port { field: "source", .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", |e| matches!(e, E::V1Port { field: "destination", .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", |e| matches!(e, E::V1Port { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", |e| matches!(e, E::V1Port { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1a 2\r\n", |e| matches!(e, E::V1Port { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n", |e| matches!(e, E::V1Port { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 99999999999999999999 2\r\n", |e| matches!(e, E::V1Port { .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", |e| matches!(e, E::V1BadByte { byte: b'\n', offset: 30 })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", |e| matches!(e, E::V1BadByte { byte: b'\r', offset: 30 })),
            ("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", |e| matches!(e, E::V1BadByte { byte: b'\t', .. })),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n", |e| matches!(e, E::V1BadByte { byte: 0, .. })),
            ("PROXY UNKNOWN caf\u{e9}\r\n", |e| matches!(e, E::V1BadByte { byte: 0xc3, .. })),
        ];
        for (line, check) in cases {
            let err = v1_error(line);
            assert!(check(&err), "{line:?}: {err:?}");
        }

        let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
        assert!(matches!(v1_error(&too_long), E::V1TooLong));
        assert!(matches!(v1_error(&too_long[..V1_MAX_LEN]), E::V1TooLong));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let text = |bytes: &[u8]| parse(bytes).unwrap_err().to_string();
        assert_eq!(
            text(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            "no PROXY protocol header: the connection starts with \"CONNECT example.\""
        );
        assert_eq!(
            text(b"\x16\x03\x01\x02\x00"),
            "no PROXY protocol header: the connection starts with \"\\x16\\x03\\x01\\x02\\x00\""
        );
        assert_eq!(
            text(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 099\r\n"),
            "PROXY v1 header: destination port \"099\" is not a port (0-65535, decimal, no leading zeros)"
        );
        assert_eq!(
            text(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
            "PROXY v1 header: source address \"1.2.3.4\" is not an IPv6 address"
        );
        assert_eq!(
            text(&v2(0x1, 0x12, &[0; 12])),
            "PROXY v2 header: transport DGRAM (UDP) is not supported (only STREAM, i.e. TCP)"
        );
        assert_eq!(
            text(&v2(0x1, 0x31, &[0; 216])),
            "PROXY v2 header: address family AF_UNIX is not supported (only AF_INET and AF_INET6)"
        );
    }

    #[test]
    fn malformed_v2_headers_are_refused_with_the_reason() {
        use ProxyProtocolError as E;
        let err = |bytes: &[u8]| parse(bytes).unwrap_err();

        let mut bad_signature = v2_inet(&[]);
        bad_signature[6] = b'X';
        assert!(matches!(err(&bad_signature), E::NotProxyProtocol { .. }));
        assert!(matches!(err(&bad_signature[..8]), E::NotProxyProtocol { .. }), "refused before 16 bytes");
        assert!(matches!(err(b"\r\n\r\n\0\r\nQUIT\r"), E::NotProxyProtocol { .. }));

        let mut version_1 = v2_inet(&[]);
        version_1[12] = 0x11;
        assert!(matches!(err(&version_1), E::V2Version(1)));
        assert!(matches!(err(&v2(0x2, 0x11, &[0; 12])), E::V2Command(2)));
        assert!(matches!(err(&v2(0xf, 0x11, &[0; 12])), E::V2Command(0xf)));
        assert!(matches!(err(&v2(0x1, 0x31, &[0; 216])), E::V2Family("AF_UNIX")));
        assert!(matches!(err(&v2(0x1, 0x41, &[0; 12])), E::V2Family("unknown")));
        assert!(matches!(err(&v2(0x1, 0x12, &[0; 12])), E::V2Transport("DGRAM (UDP)")));
        assert!(matches!(err(&v2(0x1, 0x22, &[0; 36])), E::V2Transport("DGRAM (UDP)")));
        assert!(matches!(err(&v2(0x1, 0x10, &[0; 12])), E::V2Transport("UNSPEC")));
        assert!(matches!(err(&v2(0x1, 0x13, &[0; 12])), E::V2Transport("unknown")));
        assert!(matches!(err(&v2(0x1, 0x11, &[0; 11])), E::V2ShortLength { declared: 11, needed: 12 }));
        assert!(matches!(err(&v2(0x1, 0x21, &[0; 12])), E::V2ShortLength { declared: 12, needed: 36 }));

        let mut huge = v2(0x1, 0x11, &[]);
        huge[14..16].copy_from_slice(&u16::try_from(MAX_HEADER_LEN - 15).unwrap().to_be_bytes());
        assert!(matches!(err(&huge), E::V2TooLong { .. }), "refused from the fixed part alone");
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(err(&huge), E::V2TooLong { declared: 65535 }));

        assert!(matches!(err(&v2_inet(&[0x04, 0x00])), E::V2Tlv { offset: 28, .. }));
        assert!(matches!(err(&v2_inet(&[0x04, 0x00, 0x02, 0xaa])), E::V2Tlv { offset: 28, .. }));
        let second_bad = [tlv(0x04, b""), vec![0x05, 0x00, 0x09]].concat();
        assert!(matches!(err(&v2_inet(&second_bad)), E::V2Tlv { offset: 31, .. }));
    }

    #[test]
    fn parse_never_panics_and_keeps_its_promises() {
        // A deterministic stand-in for a fuzzer: random bytes, valid headers with
        // random damage, and every truncation of each.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid: Vec<Vec<u8>> = valid_headers().into_iter().map(|(bytes, _)| bytes).collect();
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for round in 0..20_000 {
            let mut bytes = match round % 3 {
                0 => (0..next() % 300).map(|_| next() as u8).collect(),
                1 => {
                    let mut base = match next() % 2 {
                        0 => b"PROXY ".to_vec(),
                        _ => V2_SIGNATURE.to_vec(),
                    };
                    let alphabet = b"PROXY TCP46UNKNOW0123456789abcdef.:\r\n \x00\x11\x21\x20\x21";
                    base.extend((0..next() % 120).map(|_| alphabet[(next() as usize) % alphabet.len()]));
                    base
                }
                _ => valid[(next() as usize) % valid.len()].clone(),
            };
            for _ in 0..next() % 4 {
                if !bytes.is_empty() {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            inputs.push(bytes);
        }
        inputs.extend(valid);

        let mut completes = 0;
        for bytes in &inputs {
            for len in 0..=bytes.len() {
                let prefix = &bytes[..len];
                match parse(prefix) {
                    Ok(Parsed::Incomplete { need_at_least }) => {
                        assert!(need_at_least > len && need_at_least <= MAX_HEADER_LEN, "{prefix:?}: {need_at_least}");
                    }
                    Ok(Parsed::Complete { header, consumed }) => {
                        completes += 1;
                        assert!(consumed > 0 && consumed <= len, "{prefix:?}: {consumed}");
                        // The header does not depend on what follows it, and no shorter prefix was complete.
                        assert_eq!(parse(&prefix[..consumed]).unwrap(), Parsed::Complete { header, consumed });
                        for shorter in 0..consumed {
                            let result = parse(&prefix[..shorter]);
                            assert!(
                                matches!(result, Ok(Parsed::Incomplete { need_at_least }) if need_at_least <= consumed),
                                "{prefix:?} cut at {shorter}: {result:?}"
                            );
                        }
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        assert!(completes > 100, "the corpus exercises complete headers ({completes})");
    }

    /// Delivers its bytes one at a time, returning `Pending` before each.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            if let Some(&byte) = self.bytes.get(self.at) {
                buf.put_slice(&[byte]);
                self.at += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_header_accepts_a_byte_at_a_time() {
        for (bytes, want) in valid_headers() {
            let len = bytes.len();
            let mut stream = Trickle { bytes: [bytes, b"rest".to_vec()].concat(), at: 0, ready: false };
            assert_eq!(read_header(&mut stream, Duration::from_secs(5)).await.unwrap(), want);
            assert_eq!(stream.at, len, "read exactly the header");
        }
    }

    #[tokio::test]
    async fn read_header_leaves_what_follows_in_the_stream() {
        let payload = b"\x16\x03\x01\x00\x05hello CONNECT example.com:443 HTTP/1.1\r\n\r\n";
        for (bytes, want) in valid_headers() {
            // All at once from a slice...
            let all = [bytes.as_slice(), payload].concat();
            let mut stream = all.as_slice();
            assert_eq!(read_header(&mut stream, Duration::from_secs(5)).await.unwrap(), want);
            assert_eq!(stream, payload);

            // ...and through a socket-like pipe.
            let (mut client, mut server) = tokio::io::duplex(4096);
            client.write_all(&all).await.unwrap();
            drop(client);
            assert_eq!(read_header(&mut server, Duration::from_secs(5)).await.unwrap(), want);
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, payload);
        }
    }

    #[tokio::test]
    async fn read_header_refuses_bad_slow_and_short_connections() {
        let mut tls_hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 and more";
        let err = read_header(&mut tls_hello, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::NotProxyProtocol { .. }), "{err}");

        let mut empty: &[u8] = b"";
        let err = read_header(&mut empty, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::UnexpectedEof { received: 0 }), "{err}");

        let mut cut: &[u8] = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r";
        let err = read_header(&mut cut, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::UnexpectedEof { received: 31 }), "{err}");

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        let err = read_header(&mut server, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::Timeout(_)), "{err}");
        assert_eq!(err.to_string(), "no complete PROXY protocol header within 50ms");
        drop(client);
    }
}
