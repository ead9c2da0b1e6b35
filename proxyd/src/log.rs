//! What `proxyd` tells operators, line by line: one
//! `CANONICAL-PROXY-DECISION` per request (written after the address stage,
//! so it carries the address decision) and one `CANONICAL-PROXY-CN-CLOSE`
//! per tunnel, with Smokescreen's field names and numbers as numbers.
//!
//! A client may tag its request with `X-Smokescreen-Trace-ID`; a valid one
//! ([`trace_id`]) is copied into both lines as `trace_id` and nowhere else
//! (never the role, the destination or a metric label).
//!
//! Secrets never reach this module: it is handed roles, hosts and reasons,
//! never credentials.
//!
//! Logging never waits for stderr, on any thread: lines go through `sink`
//! (a bounded buffer and one writer thread; lines that do not fit are
//! dropped and counted, a stall is measured and shown in [`sink_state`]).

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::LogFormat;
use crate::tunnel::TunnelStats;

mod json;
mod sink;

use sink::Batch;
use sink::LineKind;
pub use sink::{Reservation, SinkState};

/// Installs the global subscriber: JSON lines (or text for humans) on
/// stderr, written in batches by one writer thread (see `sink`): logging
/// never waits for stderr; a line that finds the buffer full is dropped and
/// counted ([`sink_state`]).
/// Call [`flush`] before the process exits.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_writer(BatchedStderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Json => builder.event_format(json::JsonLines).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already installed (tests start several proxies in one process): keep
    // it, and its lines, which then go through it as events.
    if result.is_ok() && format == LogFormat::Json {
        DIRECT_JSON.store(true, Ordering::Relaxed);
    }
}

/// Set by [`init`] once it has installed the JSON lines: from then on the
/// two lines every tunnel writes skip the event machinery (about 4% of
/// proxyd's CPU in the setup benchmark) and are written by
/// [`write_json_line`], byte for byte what the subscriber would write.
static DIRECT_JSON: AtomicBool = AtomicBool::new(false);

/// Builds one JSON line with `build` into this thread's line buffer and
/// hands it to the sink, as the subscriber's writer does with each event.
fn write_json_line(kind: LineKind, build: impl FnOnce(&mut String) -> std::fmt::Result) {
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    kind.emit(|| {
        LINE.with(|line| {
            let mut fresh = String::new();
            let mut held = line.try_borrow_mut();
            let buffer = match held.as_deref_mut() {
                Ok(buffer) => buffer,
                Err(_) => &mut fresh,
            };
            buffer.clear();
            if build(buffer).is_ok() {
                BATCH.append(buffer.as_bytes());
            }
            // A line far longer than usual does not keep its buffer.
            if buffer.capacity() > MAX_KEPT_LINE_BUFFER {
                *buffer = String::new();
            }
        });
    });
}

/// The largest line buffer a thread keeps between lines.
const MAX_KEPT_LINE_BUFFER: usize = 16 * 1024;

/// Waits until every line logged so far is written to stderr, for at most
/// two seconds: a stalled sink must not keep the process from exiting.
pub fn flush() {
    BATCH.flush();
}

static BATCH: Batch = Batch::new(write_stderr);

/// One `write(2)` to stderr. A closed stderr (EBADF) counts as written,
/// like `eprintln!`; a pipe whose reader is gone fails with EPIPE (Rust
/// programs ignore SIGPIPE, so it is an error, not a death).
fn write_stderr(bytes: &[u8]) -> std::io::Result<usize> {
    use std::io::Write as _;
    std::io::stderr().lock().write(bytes)
}

/// Sets how long the writer may go without completing a write, while it
/// has lines to write, before the sink counts as stalled (`--log-stall-timeout`).
pub fn set_stall_timeout(timeout: Duration) {
    BATCH.set_stall_timeout(timeout);
}

/// The log sink's state now: stalled or not (and for how long), lines
/// dropped since start, bytes waiting. Cheap: a few atomic loads.
pub fn sink_state() -> SinkState {
    BATCH.state()
}

/// Room for one decision line in the log buffer, if there is some now
/// (and the sink is not failing). See [`reserve_line`].
pub fn try_reserve_line() -> Option<Reservation> {
    BATCH.try_reserve()
}

/// Room for one decision line, waiting up to `within` for it without
/// blocking the thread; `None` when the log cannot take the line in time
/// (`--log-stall-policy refuse` then refuses the request).
pub async fn reserve_line(within: Duration) -> Option<Reservation> {
    match BATCH.try_reserve() {
        Some(reservation) => Some(reservation),
        // Boxed: the waiting state (a timer and a wake-up registration) is
        // allocated only by requests that wait, not carried by every request's future.
        None => Box::pin(BATCH.reserve(within)).await,
    }
}

/// The subscriber's writer: hands each formatted line (one `write_all` per
/// event) to [`BATCH`].
struct BatchedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = BatchedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        BatchedStderr
    }
}

impl std::io::Write for BatchedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BATCH.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A request id: unique in this process, unpredictable across processes,
/// shown as 16 hex digits. A number until it is written into a line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

impl RequestId {
    /// The 16 hex digits, written without `core::fmt` (every line has one).
    pub fn hex(self) -> HexId {
        let mut digits = [b'0'; 16];
        for (i, digit) in digits.iter_mut().enumerate() {
            let nibble = (self.0 >> (60 - 4 * i)) as u8 & 0xf;
            *digit = if nibble < 10 { b'0' + nibble } else { b'a' + nibble - 10 };
        }
        HexId(digits)
    }
}

/// A [`RequestId`] as text.
#[derive(Debug)]
pub struct HexId([u8; 16]);

impl HexId {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

/// The next request id.
pub fn request_id() -> RequestId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().build_hasher().finish());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    RequestId(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The fields of one decision line. Absent values are omitted.
#[derive(Debug, Default)]
pub struct DecisionLine {
    pub id: RequestId,
    pub role: Option<String>,
    pub project: Option<String>,
    pub requested_host: String,
    pub allow: Option<bool>,
    pub decision_reason: Option<std::borrow::Cow<'static, str>>,
    pub enforce_would_deny: Option<bool>,
    pub default_rule: Option<bool>,
    pub inbound_remote_addr: Option<SocketAddr>,
    pub dst_ip: Option<std::net::IpAddr>,
    pub dst_port: Option<u16>,
    pub dns_lookup_time_ms: Option<u64>,
    pub policy_revision: String,
    /// The serial of the active table's signature, when it has one.
    pub policy_serial: Option<u64>,
    /// The client's `X-Smokescreen-Trace-ID`, when valid.
    pub trace_id: Option<String>,
    /// Why the client's trace id was dropped.
    pub trace_id_error: Option<&'static str>,
    /// Short stable label of the refusal, when the request was refused.
    pub refusal: Option<&'static str>,
    /// Why a verified client certificate named no role (`--role-from`).
    pub missing_role_reason: Option<&'static str>,
    pub error: Option<String>,
    /// Policy v2: the reason of the internal destination that allowed the
    /// request (the exception's audit trail).
    pub internal_destination_reason: Option<String>,
}

impl DecisionLine {
    pub fn emit(&self) {
        if DIRECT_JSON.load(Ordering::Relaxed) {
            write_json_line(LineKind::Decision, |out| self.json(out));
        } else {
            LineKind::Decision.emit(|| self.log());
        }
    }

    /// The line [`log`](Self::log) writes through the JSON subscriber, written directly.
    fn json(&self, out: &mut String) -> std::fmt::Result {
        let mut line = json::Object::info(out, DECISION);
        line.str("id", Some(self.id.hex().as_str()))
            .str("proxy_type", Some("connect"))
            .str("role", self.role.as_deref())
            .str("project", self.project.as_deref())
            .str("requested_host", Some(&self.requested_host))
            .bool("allow", self.allow)
            .str("decision_reason", self.decision_reason.as_deref())
            .bool("enforce_would_deny", self.enforce_would_deny)
            .bool("default_rule", self.default_rule)
            .socket("inbound_remote_addr", self.inbound_remote_addr)
            .ip("dst_ip", self.dst_ip)
            .u64("dst_port", self.dst_port.map(u64::from))
            .u64("dns_lookup_time_ms", self.dns_lookup_time_ms)
            .str("policy_revision", Some(&self.policy_revision))
            .u64("policy_serial", self.policy_serial)
            .str("trace_id", self.trace_id.as_deref())
            .str("trace_id_error", self.trace_id_error)
            .str("refusal", self.refusal)
            .str("missing_role_reason", self.missing_role_reason)
            .str("error", self.error.as_deref())
            .str("internal_destination_reason", self.internal_destination_reason.as_deref());
        line.end()
    }

    fn log(&self) {
        tracing::info!(
            id = %self.id,
            proxy_type = "connect",
            role = self.role.as_deref(),
            project = self.project.as_deref(),
            requested_host = %self.requested_host,
            allow = self.allow,
            decision_reason = self.decision_reason.as_deref(),
            enforce_would_deny = self.enforce_would_deny,
            default_rule = self.default_rule,
            inbound_remote_addr = self.inbound_remote_addr.map(tracing::field::display),
            dst_ip = self.dst_ip.map(tracing::field::display),
            dst_port = self.dst_port,
            dns_lookup_time_ms = self.dns_lookup_time_ms,
            policy_revision = %self.policy_revision,
            policy_serial = self.policy_serial,
            trace_id = self.trace_id.as_deref(),
            trace_id_error = self.trace_id_error,
            refusal = self.refusal,
            missing_role_reason = self.missing_role_reason,
            error = self.error.as_deref(),
            internal_destination_reason = self.internal_destination_reason.as_deref(),
            "{}",
            DECISION
        );
    }
}

/// The request header a client may tag its request with.
pub const TRACE_ID_HEADER: &str = "x-smokescreen-trace-id";
/// Longest trace id kept.
pub const MAX_TRACE_ID: usize = 128;

/// The client's trace id: one header of 1 to [`MAX_TRACE_ID`] visible ASCII
/// characters (`!` to `~`). Anything else is dropped, and the reason says why.
/// `values` are the request's [`TRACE_ID_HEADER`] values.
pub fn trace_id<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Option<String>, &'static str> {
    let Some(bytes) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("more than one X-Smokescreen-Trace-ID header");
    }
    if bytes.is_empty() {
        return Err("empty X-Smokescreen-Trace-ID");
    }
    if bytes.len() > MAX_TRACE_ID {
        return Err("X-Smokescreen-Trace-ID longer than 128 bytes");
    }
    if !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err("X-Smokescreen-Trace-ID has characters other than visible ASCII");
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The decision line's message.
const DECISION: &str = "CANONICAL-PROXY-DECISION";
/// The close line's message.
const CLOSE: &str = "CANONICAL-PROXY-CN-CLOSE";

/// The close line of a tunnel.
pub fn close(id: RequestId, stats: &TunnelStats, duration: Duration, policy_revision: &str, trace_id: Option<&str>) {
    if DIRECT_JSON.load(Ordering::Relaxed) {
        write_json_line(LineKind::Close, |out| close_json(out, id, stats, duration, policy_revision, trace_id));
    } else {
        LineKind::Close.emit(|| close_line(id, stats, duration, policy_revision, trace_id));
    }
}

/// The line [`close_line`] writes through the JSON subscriber, written directly.
fn close_json(
    out: &mut String,
    id: RequestId,
    stats: &TunnelStats,
    duration: Duration,
    policy_revision: &str,
    trace_id: Option<&str>,
) -> std::fmt::Result {
    let mut line = json::Object::info(out, CLOSE);
    line.str("id", Some(id.hex().as_str()))
        .u64("bytes_in", Some(stats.bytes_in))
        .u64("bytes_out", Some(stats.bytes_out))
        .f64("duration", duration.as_secs_f64())
        .str("error", stats.error.as_deref())
        .str("policy_revision", Some(policy_revision))
        .str("trace_id", trace_id);
    line.end()
}

fn close_line(id: RequestId, stats: &TunnelStats, duration: Duration, policy_revision: &str, trace_id: Option<&str>) {
    tracing::info!(
        id = %id,
        bytes_in = stats.bytes_in,
        bytes_out = stats.bytes_out,
        duration = duration.as_secs_f64(),
        error = stats.error.as_deref(),
        policy_revision = %policy_revision,
        trace_id,
        "{}",
        CLOSE
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    /// `line` written directly, next to what the JSON subscriber writes for
    /// its event, both without the timestamp (which differs between the two).
    fn both_ways(direct: impl FnOnce(&mut String) -> std::fmt::Result, event: impl FnOnce()) -> (String, String) {
        let mut written = String::new();
        direct(&mut written).unwrap();
        let logged = json::tests::text(event);
        let strip = |line: &str| line.split_once("\",\"level\"").map(|(_, rest)| rest.to_owned()).unwrap();
        (strip(&written), strip(&logged))
    }

    /// Every field set (strings that need escaping among them), none set
    /// but the required ones, and refusals: the same bytes either way.
    #[test]
    fn decision_lines_written_directly_are_the_subscribers_bytes() {
        let full = DecisionLine {
            id: request_id(),
            role: Some("web\"hooks\\\n".into()),
            project: Some("proj é ☃".into()),
            requested_host: "example.com:443".into(),
            allow: Some(true),
            decision_reason: Some("rule \"allow\" matched".into()),
            enforce_would_deny: Some(false),
            default_rule: Some(true),
            inbound_remote_addr: Some("[2001:db8::1]:51234".parse().unwrap()),
            dst_ip: Some("93.184.216.34".parse().unwrap()),
            dst_port: Some(443),
            dns_lookup_time_ms: Some(12),
            policy_revision: "sha256:abc".into(),
            policy_serial: Some(7),
            trace_id: Some("6c4aa514e3da13ef".into()),
            trace_id_error: Some("empty X-Smokescreen-Trace-ID"),
            refusal: Some("denied"),
            missing_role_reason: Some("no role in the certificate"),
            error: Some("tab\there \u{1}".into()),
            internal_destination_reason: Some("metadata exception".into()),
        };
        let sparse = DecisionLine { requested_host: "h:1".into(), ..DecisionLine::default() };
        let refused = DecisionLine {
            requested_host: "169.254.169.254:80".into(),
            inbound_remote_addr: Some("127.0.0.1:9".parse().unwrap()),
            allow: Some(false),
            refusal: Some("private_address"),
            error: Some("destination address is private".into()),
            ..DecisionLine::default()
        };
        let v6 = DecisionLine {
            requested_host: "[2001:db8::5]:443".into(),
            inbound_remote_addr: Some(std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 0, 0, 2).into()),
            dst_ip: Some("2001:db8::5".parse().unwrap()),
            dst_port: Some(443),
            ..DecisionLine::default()
        };
        for line in [full, sparse, refused, v6] {
            let (direct, logged) = both_ways(|out| line.json(out), || line.log());
            assert_eq!(direct, logged);
            let parsed: serde_json::Value = serde_json::from_str(&format!("{{\"level\"{direct}")).unwrap();
            assert_eq!(parsed["message"], DECISION);
        }
    }

    #[test]
    fn close_lines_written_directly_are_the_subscribers_bytes() {
        let id = request_id();
        let cases = [
            (TunnelStats { bytes_in: 10, bytes_out: 2_000_000, error: None }, Duration::from_millis(1500), None),
            (
                TunnelStats { bytes_in: 0, bytes_out: 0, error: Some("reset \"by\" peer".into()) },
                Duration::from_nanos(1),
                Some("trace-1"),
            ),
            (TunnelStats::default(), Duration::from_secs(30), Some("t")),
        ];
        for (stats, duration, trace_id) in cases {
            let (direct, logged) = both_ways(
                |out| close_json(out, id, &stats, duration, "rev\\1", trace_id),
                || close_line(id, &stats, duration, "rev\\1", trace_id),
            );
            assert_eq!(direct, logged);
        }
    }

    #[test]
    fn ids_are_16_lowercase_hex_digits() {
        for n in [0, 1, 0xa, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(RequestId(n).to_string(), format!("{n:016x}"));
        }
    }

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id().to_string()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn trace_ids_are_bounded_visible_ascii() {
        let with = |values: &[&[u8]]| trace_id(values.iter().copied());
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&[b"6c4aa514e3da13ef"]), Ok(Some("6c4aa514e3da13ef".into())));
        assert_eq!(with(&[&[b'a'; 128]]), Ok(Some("a".repeat(128))));
        assert!(with(&[&[b'a'; 129]]).unwrap_err().contains("128"));
        assert!(with(&[b"has space"]).unwrap_err().contains("visible ASCII"));
        assert!(with(&["café".as_bytes()]).unwrap_err().contains("visible ASCII"));
        assert!(with(&[b"tab\there"]).unwrap_err().contains("visible ASCII"));
        assert!(with(&[b"a", b"b"]).unwrap_err().contains("more than one"));
        assert!(with(&[b""]).unwrap_err().contains("empty"));
    }
}
