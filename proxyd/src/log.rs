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

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::LogFormat;
use crate::tunnel::TunnelStats;

mod json;

/// Installs the global subscriber: JSON lines (or text for humans) on
/// stderr, written in batches by one writer thread (see `BatchedStderr`).
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
    // Already installed (tests start several proxies in one process): keep it.
    let _ = result;
}

/// Waits until every line logged so far is written to stderr.
pub fn flush() {
    BATCH.flush();
}

/// Log lines wait here for the writer thread: the first line of a batch
/// waits up to [`Batch::LINGER`] for the lines of other requests in flight,
/// then everything pending goes out with one `write`. Written directly, each line cost a `write(2)` on the
/// request path plus contention for stderr's lock between the runtime's
/// workers: about a tenth of proxyd's CPU per tunnel in `perf` profiles of
/// the setup benchmark (2 lines per tunnel). Lines keep the order in which
/// they were logged. When the writer falls behind (stderr blocked), the
/// buffer is capped at [`Batch::MAX_BYTES`] and loggers wait, as they did
/// for a full pipe before: memory stays bounded and no line is dropped.
struct Batch {
    state: std::sync::Mutex<Pending>,
    /// Signalled when lines arrive in an empty buffer, when a batch has been
    /// written (room again; flushes done), and when a flush is requested.
    changed: std::sync::Condvar,
    writer: std::sync::Once,
    /// Where batches go: stderr, or a test's capture.
    write: fn(&[u8]),
    /// Set when the writer thread could not be started: every line is written directly.
    direct: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Batches taken by the writer (written once `written` catches up).
    taken: u64,
    written: u64,
    /// A flush is waiting: write without lingering.
    urgent: bool,
}

static BATCH: Batch = Batch::new(write_stderr);

impl Pending {
    const fn new() -> Pending {
        Pending { lines: Vec::new(), taken: 0, written: 0, urgent: false }
    }
}

impl Batch {
    const fn new(write: fn(&[u8])) -> Batch {
        Batch {
            state: std::sync::Mutex::new(Pending::new()),
            changed: std::sync::Condvar::new(),
            writer: std::sync::Once::new(),
            write,
            direct: std::sync::atomic::AtomicBool::new(false),
        }
    }

    const MAX_BYTES: usize = 1 << 20;
    /// A batch this large is written at once, without waiting out the linger,
    /// so loggers never wait for room while the writer lingers.
    const FULL: usize = Self::MAX_BYTES / 4;
    /// How late a line may reach stderr. Each batch costs the writer thread
    /// a sleep and two wake-ups and a logging worker a futex wake: with
    /// 1 ms, that was 2.5% of the setup benchmark's rate (16,936 against
    /// 17,359 tunnels/s with 10 ms, side by side). [`flush`] does not wait.
    const LINGER: Duration = Duration::from_millis(10);

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves only bytes behind: keep going.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn append(&'static self, line: &[u8]) {
        self.writer.call_once(|| {
            let spawned = std::thread::Builder::new().name("proxyd-log".into()).spawn(move || self.write_forever());
            if spawned.is_err() {
                // No thread: this and every later line is written directly.
                self.direct.store(true, Ordering::Relaxed);
            }
        });
        let mut pending = self.lock();
        if self.direct.load(Ordering::Relaxed) {
            drop(pending);
            (self.write)(line);
            return;
        }
        while pending.lines.len() >= Self::MAX_BYTES {
            pending = self.changed.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        let filled = before < Self::FULL && pending.lines.len() >= Self::FULL;
        drop(pending);
        if before == 0 || filled {
            self.changed.notify_all();
        }
    }

    fn write_forever(&self) {
        let mut pending = self.lock();
        loop {
            while pending.lines.is_empty() {
                pending = self.changed.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            // Let the lines of other requests in flight join this batch, unless a flush waits.
            let linger = |pending: &mut Pending| !pending.urgent && pending.lines.len() < Self::FULL;
            pending = match self.changed.wait_timeout_while(pending, Self::LINGER, linger) {
                Ok((pending, _)) => pending,
                Err(poisoned) => poisoned.into_inner().0,
            };
            let lines = std::mem::take(&mut pending.lines);
            pending.taken += 1;
            let batch = pending.taken;
            pending.urgent = false;
            drop(pending);
            self.changed.notify_all();
            (self.write)(&lines);
            pending = self.lock();
            pending.written = batch;
            // Keep the allocation for the next batch unless it grew unusually large.
            if pending.lines.is_empty() && lines.capacity() <= 64 * 1024 {
                let mut lines = lines;
                lines.clear();
                pending.lines = lines;
            }
            self.changed.notify_all();
        }
    }

    fn flush(&self) {
        let mut pending = self.lock();
        if !self.writer.is_completed() || self.direct.load(Ordering::Relaxed) {
            return;
        }
        // Everything appended so far is either pending (the next batch) or in a taken batch.
        let target = if pending.lines.is_empty() { pending.taken } else { pending.taken + 1 };
        pending.urgent = true;
        self.changed.notify_all();
        while pending.written < target {
            pending = self.changed.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

fn write_stderr(bytes: &[u8]) {
    use std::io::Write as _;
    // Nowhere to report a failure to write the log: like `eprintln!` minus the panic.
    let _ = std::io::stderr().lock().write_all(bytes);
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

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
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
            "CANONICAL-PROXY-DECISION"
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

/// The close line of a tunnel.
pub fn close(id: RequestId, stats: &TunnelStats, duration: Duration, policy_revision: &str, trace_id: Option<&str>) {
    tracing::info!(
        id = %id,
        bytes_in = stats.bytes_in,
        bytes_out = stats.bytes_out,
        duration = duration.as_secs_f64(),
        error = stats.error.as_deref(),
        policy_revision = %policy_revision,
        trace_id,
        "CANONICAL-PROXY-CN-CLOSE"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    static CAPTURED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
    static WRITES: AtomicU64 = AtomicU64::new(0);

    fn capture(bytes: &[u8]) {
        WRITES.fetch_add(1, Ordering::Relaxed);
        CAPTURED.lock().unwrap().extend_from_slice(bytes);
    }

    /// Lines from many threads all come out, whole, each thread's in order,
    /// in far fewer writes than lines; a flush returns with everything written.
    #[test]
    fn batches_keep_every_line_whole_and_in_order() {
        static TEST_BATCH: Batch = Batch::new(capture);
        const THREADS: usize = 4;
        const LINES: usize = 5_000;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    for n in 0..LINES {
                        TEST_BATCH.append(format!("{t} {n} {}\n", "x".repeat(n % 300)).as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        TEST_BATCH.flush();
        let captured = String::from_utf8(CAPTURED.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; THREADS];
        for line in captured.lines() {
            let mut fields = line.split(' ');
            let t: usize = fields.next().unwrap().parse().unwrap();
            let n: usize = fields.next().unwrap().parse().unwrap();
            assert_eq!(n, next[t], "thread {t}'s lines in order");
            assert_eq!(fields.next().unwrap().len(), n % 300, "line {t} {n} whole");
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS], "every line written before flush returned");
        let writes = WRITES.load(Ordering::Relaxed) as usize;
        assert!(writes < THREADS * LINES / 10, "{writes} writes for {} lines", THREADS * LINES);
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
