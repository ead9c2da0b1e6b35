//! The log sink: every line logged anywhere in `proxyd` (data-plane
//! workers, admin, reloads, signals) is handed to one bounded buffer, and
//! one writer thread writes it to stderr in batches.
//!
//! Responsible for: a hand-off that never makes a logger wait (a line that
//! does not fit is dropped and counted), keeping lines whole and in order,
//! bounded memory, noticing a stalled or failed sink (and saying so once it
//! recovers), and the room reservations with which a CONNECT in `refuse`
//! mode makes sure its decision line will be kept.
//!
//! Must never: block a caller of [`Batch::append`] (a worker thread parked
//! here stops every tunnel it serves), grow beyond its cap, drop a line
//! without counting it, or spin on a sink that fails (a closed pipe stays
//! closed: the writer retries once per [`Batch::RETRY`]).
//!
//! Memory: at most [`Batch::MAX_BYTES`] plus [`Batch::HEADROOM`] buffered,
//! plus the batch the writer is writing (as large again): 2 MiB + 128 KiB
//! of log lines in all, whatever the sink does.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// One attempt to write bytes to the sink: how many were written.
pub type WriteFn = fn(&[u8]) -> std::io::Result<usize>;

/// Log lines wait here for the writer thread: the first line of a batch
/// waits up to [`Batch::LINGER`] for the lines of other requests in flight,
/// then everything pending goes out in as few `write`s as the sink allows.
/// Written directly, each line cost a `write(2)` on the request path plus
/// contention for stderr's lock between the runtime's workers: about a
/// tenth of proxyd's CPU per tunnel in `perf` profiles of the setup
/// benchmark (2 lines per tunnel). Lines keep the order in which they were
/// logged. When the writer falls behind (stderr blocked or slow), the
/// buffer stops at [`Batch::MAX_BYTES`]: further lines are dropped and
/// counted, never waited for.
pub struct Batch {
    state: Mutex<Pending>,
    /// Signalled when lines arrive in an empty buffer, when a batch has been
    /// written (flushes done), and when a flush is requested.
    changed: Condvar,
    writer: Once,
    /// Where batches go: stderr, or a test's sink.
    write: WriteFn,
    /// Set when the writer thread could not be started: every line is written directly.
    direct: AtomicBool,
    /// Bytes in the buffer (a copy of `Pending::lines.len()` readable without the lock).
    buffered: AtomicUsize,
    /// Bytes of the batch being written that are not written yet.
    in_flight: AtomicUsize,
    /// Room promised to requests whose decision line is still to come.
    reserved: AtomicUsize,
    /// Lines that were never written (no room, or the sink failed), by [`LineKind`].
    dropped: [AtomicU64; LineKind::COUNT],
    /// `dropped` when a write last completed (the recovery line reports the difference).
    dropped_reported: AtomicU64,
    /// [`now`] when the writer started waiting on the sink without a write
    /// completing since (0: it is not writing).
    busy_since: AtomicU64,
    /// The last write failed (e.g. EPIPE): lines given now would be lost.
    failing: AtomicBool,
    /// Longer than this without a completed write while there is data: stalled.
    stall_timeout_ms: AtomicU64,
    /// Woken when room appears (a batch taken, the sink working again).
    room: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Lines in `lines`, by [`LineKind`].
    count: [u64; LineKind::COUNT],
    /// Batches taken by the writer (written once `written` catches up).
    taken: u64,
    written: u64,
    /// A flush is waiting: write without lingering.
    urgent: bool,
}

impl Pending {
    const fn new() -> Pending {
        Pending { lines: Vec::new(), count: [0; LineKind::COUNT], taken: 0, written: 0, urgent: false }
    }
}

/// What the sink is doing, for `/readyz`, `/metrics` and the console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkState {
    /// No write has completed for longer than the stall timeout while
    /// there was data to write (or the sink fails).
    pub stalled: bool,
    /// How long the writer has been waiting on the sink, when it is stalled.
    pub stalled_for: Option<Duration>,
    /// Lines never written since start: no room in the buffer, or the sink failed.
    pub dropped: u64,
    /// Of those, `CANONICAL-PROXY-DECISION` lines.
    pub dropped_decisions: u64,
    /// Of those, `CANONICAL-PROXY-CN-CLOSE` lines.
    pub dropped_closes: u64,
    /// Bytes waiting to be written (the buffer and the unwritten rest of the current batch).
    pub buffered_bytes: usize,
}

/// Nanoseconds since the first call, plus one (so 0 can mean "never").
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).saturating_add(1)
}

/// What a line is, for the drop counts: set by the code that logs it
/// (the sink cannot tell from the bytes, which carry client text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    Decision = 0,
    Close = 1,
    Other = 2,
}

impl LineKind {
    const COUNT: usize = 3;

    /// Runs `log` (which logs one line) with the line counted as `self`.
    pub fn emit(self, log: impl FnOnce()) {
        KIND.with(|k| k.set(self));
        log();
        KIND.with(|k| k.set(LineKind::Other));
    }

    /// The kind of a line being written that failed: by its message.
    fn of(line: &[u8]) -> LineKind {
        let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
        if has(b"CANONICAL-PROXY-DECISION") {
            LineKind::Decision
        } else if has(b"CANONICAL-PROXY-CN-CLOSE") {
            LineKind::Close
        } else {
            LineKind::Other
        }
    }
}

thread_local! {
    /// Set while this thread emits a line that holds a [`Reservation`].
    static RESERVED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The kind of the line this thread is emitting.
    static KIND: std::cell::Cell<LineKind> = const { std::cell::Cell::new(LineKind::Other) };
}

impl Batch {
    pub const fn new(write: WriteFn) -> Batch {
        Batch {
            state: Mutex::new(Pending::new()),
            changed: Condvar::new(),
            writer: Once::new(),
            write,
            direct: AtomicBool::new(false),
            buffered: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            dropped: [const { AtomicU64::new(0) }; LineKind::COUNT],
            dropped_reported: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            stall_timeout_ms: AtomicU64::new(Self::DEFAULT_STALL_TIMEOUT_MS),
            room: tokio::sync::Notify::const_new(),
        }
    }

    /// The buffer's cap for ordinary lines (close lines, events).
    pub const MAX_BYTES: usize = 1 << 20;
    /// Extra room only a line holding a [`Reservation`] may use: a decision
    /// line longer than its reservation still fits.
    pub const HEADROOM: usize = 64 * 1024;
    /// Room a reservation holds: more than a decision line needs unless its
    /// host, trace id or error are unusually long (the headroom covers those).
    pub const RESERVATION: usize = 2048;
    /// A batch this large is written at once, without waiting out the linger.
    const FULL: usize = Self::MAX_BYTES / 4;
    /// How late a line may reach stderr. Each batch costs the writer thread
    /// a sleep and two wake-ups and a logging worker a futex wake: with
    /// 1 ms, that was 2.5% of the setup benchmark's rate (16,936 against
    /// 17,359 tunnels/s with 10 ms, side by side). [`Batch::flush`] does not wait.
    const LINGER: Duration = Duration::from_millis(10);
    /// Largest single write while the sink keeps up.
    const CHUNK: usize = 64 * 1024;
    /// Largest single write once a write was slow: a pipe takes up to
    /// `PIPE_BUF` bytes at once, so with a slow reader each write completes
    /// as soon as that much room appears, and progress stays visible.
    const SLOW_CHUNK: usize = 4096;
    /// A write that took longer than this makes the next ones small.
    const SLOW_WRITE: Duration = Duration::from_millis(10);
    /// After a failed write, the writer waits this long before the next
    /// attempt (with the lines gathered meanwhile): a sink that stays
    /// closed costs four `write`s a second, not a spinning core.
    pub const RETRY: Duration = Duration::from_millis(250);
    /// How often a failed sink with nothing to write is tried again.
    const PROBE: Duration = Duration::from_secs(1);
    const DEFAULT_STALL_TIMEOUT_MS: u64 = 1000;
    /// How long [`Batch::flush`] waits for the writer at most.
    const FLUSH_LIMIT: Duration = Duration::from_secs(2);

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves only bytes behind: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the stall timeout (`--log-stall-timeout`).
    pub fn set_stall_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        self.stall_timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms.load(Ordering::Relaxed))
    }

    /// Hands `line` (one whole line) to the writer, or drops and counts it
    /// when the buffer is full. Never waits for the sink.
    pub fn append(&'static self, line: &[u8]) {
        self.writer.call_once(|| {
            let spawned = std::thread::Builder::new().name("proxyd-log".into()).spawn(move || self.write_forever());
            if spawned.is_err() {
                // No thread: this and every later line is written directly.
                self.direct.store(true, Ordering::Relaxed);
            }
        });
        if self.direct.load(Ordering::Relaxed) {
            if write_all(self.write, line).is_err() {
                self.drop_line(KIND.with(std::cell::Cell::get));
            }
            return;
        }
        let reserved_line = RESERVED.with(std::cell::Cell::get);
        let kind = KIND.with(std::cell::Cell::get);
        let mut pending = self.lock();
        let before = pending.lines.len();
        // Ordinary lines leave the reserved room alone; a reserved line may use the headroom.
        let limit = if reserved_line {
            Self::MAX_BYTES + Self::HEADROOM
        } else {
            Self::MAX_BYTES.saturating_sub(self.reserved.load(Ordering::Relaxed))
        };
        if before.saturating_add(line.len()) > limit {
            drop(pending);
            self.drop_line(kind);
            return;
        }
        pending.lines.extend_from_slice(line);
        if let Some(count) = pending.count.get_mut(kind as usize) {
            *count += 1;
        }
        let after = pending.lines.len();
        self.buffered.store(after, Ordering::Relaxed);
        drop(pending);
        if before == 0 || (before < Self::FULL && after >= Self::FULL) {
            self.changed.notify_all();
        }
    }

    fn drop_line(&self, kind: LineKind) {
        if let Some(dropped) = self.dropped.get(kind as usize) {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn dropped_of(&self, kind: LineKind) -> u64 {
        self.dropped.get(kind as usize).map_or(0, |d| d.load(Ordering::Relaxed))
    }

    fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// Room for one decision line, held until the reservation is dropped;
    /// `None` when the buffer has no such room or the sink fails (the
    /// line would be lost).
    pub fn try_reserve(&'static self) -> Option<Reservation> {
        if self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let before = self.reserved.fetch_add(Self::RESERVATION, Ordering::Relaxed);
        let used = self.buffered.load(Ordering::Relaxed).saturating_add(before).saturating_add(Self::RESERVATION);
        if used > Self::MAX_BYTES {
            self.reserved.fetch_sub(Self::RESERVATION, Ordering::Relaxed);
            return None;
        }
        Some(Reservation { batch: self })
    }

    /// [`Batch::try_reserve`], waiting (asynchronously: the caller's thread
    /// serves its other tasks meanwhile) up to `within` for room.
    pub async fn reserve(&'static self, within: Duration) -> Option<Reservation> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so room made between the check and the wait wakes it.
            notified.as_mut().enable();
            if let Some(reservation) = self.try_reserve() {
                return Some(reservation);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.try_reserve();
            }
        }
    }

    /// What the sink is doing now.
    pub fn state(&self) -> SinkState {
        let since = self.busy_since.load(Ordering::Relaxed);
        let waiting = (since != 0).then(|| Duration::from_nanos(now().saturating_sub(since)));
        let stalled_for = waiting.filter(|waited| *waited > self.stall_timeout());
        SinkState {
            stalled: stalled_for.is_some(),
            stalled_for,
            dropped: self.dropped_total(),
            dropped_decisions: self.dropped_of(LineKind::Decision),
            dropped_closes: self.dropped_of(LineKind::Close),
            buffered_bytes: self.buffered.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed),
        }
    }

    fn write_forever(&'static self) {
        let mut pending = self.lock();
        loop {
            while pending.lines.is_empty() {
                if !self.failing.load(Ordering::Relaxed) {
                    // Nothing to write and the sink works: not stalled.
                    self.busy_since.store(0, Ordering::Relaxed);
                    pending = self.changed.wait(pending).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                // The sink failed and nothing is left to write: stay stalled,
                // and probe it once a [`Batch::PROBE`] with a line saying so,
                // so a sink that comes back (a full disk freed) is noticed,
                // and /readyz recovers, without traffic.
                let timed_out = match self.changed.wait_timeout(pending, Self::PROBE) {
                    Ok((guard, result)) => {
                        pending = guard;
                        result.timed_out()
                    }
                    Err(poisoned) => {
                        let (guard, result) = poisoned.into_inner();
                        pending = guard;
                        result.timed_out()
                    }
                };
                if timed_out && pending.lines.is_empty() {
                    drop(pending);
                    let _headroom = Headroom::take();
                    tracing::warn!(
                        lines_dropped_total = self.dropped_total(),
                        "log sink failing: lines are dropped and counted until a write succeeds"
                    );
                    pending = self.lock();
                }
            }
            // Let the lines of other requests in flight join this batch, unless a flush waits.
            let linger = |pending: &mut Pending| !pending.urgent && pending.lines.len() < Self::FULL;
            pending = match self.changed.wait_timeout_while(pending, Self::LINGER, linger) {
                Ok((pending, _)) => pending,
                Err(poisoned) => poisoned.into_inner().0,
            };
            let lines = std::mem::take(&mut pending.lines);
            let count = std::mem::take(&mut pending.count);
            pending.taken += 1;
            let batch = pending.taken;
            pending.urgent = false;
            self.in_flight.store(lines.len(), Ordering::Relaxed);
            self.buffered.store(0, Ordering::Relaxed);
            drop(pending);
            self.room.notify_waiters();
            let failed = self.write_batch(&lines, count);
            pending = self.lock();
            pending.written = batch;
            // Keep the allocation for the next batch unless it grew unusually large.
            if pending.lines.is_empty() && lines.capacity() <= 64 * 1024 {
                let mut lines = lines;
                lines.clear();
                pending.lines = lines;
            }
            self.changed.notify_all();
            if failed {
                // A failed sink is not retried at once: the next attempt carries the lines gathered meanwhile.
                drop(pending);
                std::thread::sleep(Self::RETRY);
                pending = self.lock();
            }
        }
    }

    /// Writes one batch of `count` lines; true if the sink failed (the
    /// lines not written are counted as dropped).
    fn write_batch(&'static self, lines: &[u8], count: [u64; LineKind::COUNT]) -> bool {
        if self.busy_since.load(Ordering::Relaxed) == 0 {
            self.busy_since.store(now(), Ordering::Relaxed);
        }
        let mut rest = lines;
        let mut chunk = Self::CHUNK;
        while !rest.is_empty() {
            let piece = rest.get(..chunk.min(rest.len())).unwrap_or(rest);
            let started = Instant::now();
            match (self.write)(piece) {
                Ok(n) if n > 0 => {
                    rest = rest.get(n..).unwrap_or_default();
                    self.in_flight.store(rest.len(), Ordering::Relaxed);
                    chunk = if started.elapsed() > Self::SLOW_WRITE { Self::SLOW_CHUNK } else { Self::CHUNK };
                    self.progressed();
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                _ => {
                    if rest.len() == lines.len() {
                        for (dropped, lost) in self.dropped.iter().zip(count) {
                            dropped.fetch_add(lost, Ordering::Relaxed);
                        }
                    } else {
                        // A line cut by the failure is counted too: its newline is in `rest`.
                        for line in rest.split_inclusive(|b| *b == b'\n').filter(|l| l.ends_with(b"\n")) {
                            self.drop_line(LineKind::of(line));
                        }
                    }
                    self.in_flight.store(0, Ordering::Relaxed);
                    self.failing.store(true, Ordering::Relaxed);
                    return true;
                }
            }
        }
        self.busy_since.store(0, Ordering::Relaxed);
        false
    }

    /// A write completed: the sink is moving. If it had been stalled (or
    /// failing), say for how long and how many lines were lost meanwhile.
    fn progressed(&'static self) {
        let since = self.busy_since.swap(now(), Ordering::Relaxed);
        let waited = Duration::from_nanos(now().saturating_sub(since));
        let was_failing = self.failing.swap(false, Ordering::Relaxed);
        if was_failing {
            self.room.notify_waiters();
        }
        let dropped = self.dropped_total();
        let dropped_since = dropped.saturating_sub(self.dropped_reported.swap(dropped, Ordering::Relaxed));
        if since != 0 && (was_failing || waited > self.stall_timeout()) {
            // Into the buffer like any line (this thread never waits on
            // itself), allowed the headroom: after a stall the buffer is full.
            let _headroom = Headroom::take();
            tracing::warn!(
                stalled_secs = waited.as_secs_f64(),
                lines_dropped = dropped_since,
                lines_dropped_total = dropped,
                "log sink recovered: writes are completing again"
            );
        }
    }

    /// Waits (at most [`Batch::FLUSH_LIMIT`]: a stalled sink must not keep
    /// the process from exiting) until every line appended so far is written.
    pub fn flush(&self) {
        let give_up = Instant::now() + Self::FLUSH_LIMIT;
        let mut pending = self.lock();
        if !self.writer.is_completed() || self.direct.load(Ordering::Relaxed) {
            return;
        }
        // Everything appended so far is either pending (the next batch) or in a taken batch.
        let target = if pending.lines.is_empty() { pending.taken } else { pending.taken + 1 };
        pending.urgent = true;
        self.changed.notify_all();
        while pending.written < target {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() || self.failing.load(Ordering::Relaxed) {
                return;
            }
            pending = match self.changed.wait_timeout(pending, left) {
                Ok((pending, _)) => pending,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// Writes all of `bytes` with `write` (a direct write when there is no writer thread).
fn write_all(write: WriteFn, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Room for one decision line in the buffer. Emit the line with
/// [`Reservation::emit`]; dropped unused, the room is given back.
#[derive(Debug)]
pub struct Reservation {
    batch: &'static Batch,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("state", &self.state()).finish_non_exhaustive()
    }
}

impl Reservation {
    /// Runs `emit` (which logs one line) with this reservation: the line
    /// may use the reserved room and the headroom. The room is given back after.
    pub fn emit(self, emit: impl FnOnce()) {
        let _headroom = Headroom::take();
        emit();
    }
}

/// While held, lines this thread logs may use [`Batch::HEADROOM`].
struct Headroom;

impl Headroom {
    fn take() -> Headroom {
        RESERVED.with(|r| r.set(true));
        Headroom
    }
}

impl Drop for Headroom {
    fn drop(&mut self) {
        RESERVED.with(|r| r.set(false));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.batch.reserved.fetch_sub(Batch::RESERVATION, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    static WRITES: AtomicU64 = AtomicU64::new(0);

    fn capture(bytes: &[u8]) -> std::io::Result<usize> {
        WRITES.fetch_add(1, Ordering::Relaxed);
        CAPTURED.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
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
                        // A producer slower than the sink (as traffic is, on a box whose
                        // log is read): this test is about order and wholeness, not drops.
                        while TEST_BATCH.state().buffered_bytes > Batch::MAX_BYTES / 2 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
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
        assert_eq!(TEST_BATCH.state().dropped, 0, "a sink that keeps up loses nothing");
        assert_eq!(next, [LINES; THREADS], "every line written before flush returned");
        let writes = WRITES.load(Ordering::Relaxed) as usize;
        assert!(writes < THREADS * LINES / 10, "{writes} writes for {} lines", THREADS * LINES);
    }

    /// A sink that blocks until the test opens it, like a pipe nobody reads.
    static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
    static GATED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn gated(bytes: &[u8]) -> std::io::Result<usize> {
        let mut open = GATE.0.lock().unwrap();
        while !*open {
            open = GATE.1.wait(open).unwrap();
        }
        drop(open);
        GATED.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// With the sink blocked, appends return at once, memory stops at the
    /// cap, the rest is counted as dropped, reservations run out (and a
    /// waiting one gives up after its time), and the state says stalled.
    /// Once the sink moves, every line is either written or counted.
    #[test]
    fn a_blocked_sink_drops_and_counts_without_waiting() {
        static TEST_BATCH: Batch = Batch::new(gated);
        TEST_BATCH.set_stall_timeout(Duration::from_millis(100));
        let line = format!("{}\n", "y".repeat(199));
        let started = Instant::now();
        const LINES: u64 = 30_000; // 6 MB: three times what the sink may hold
        // Two rounds: whatever the writer took before blocking, the buffer is full after the second.
        for round in 0..2 {
            for _ in 0..LINES / 2 {
                TEST_BATCH.append(line.as_bytes());
            }
            if round == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(started.elapsed() < Duration::from_secs(2), "appends never wait: {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
        let state = TEST_BATCH.state();
        assert!(state.stalled, "{state:?}");
        assert!(state.stalled_for.unwrap() > Duration::from_millis(100), "{state:?}");
        assert!(state.dropped > LINES / 2, "{state:?}");
        assert!(state.buffered_bytes <= 2 * Batch::MAX_BYTES, "{state:?}");
        // The buffer is full: no room for a decision line, now or within 200 ms.
        assert!(TEST_BATCH.try_reserve().is_none(), "{state:?} {}", TEST_BATCH.reserved.load(Ordering::Relaxed));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let waited = Instant::now();
        assert!(runtime.block_on(TEST_BATCH.reserve(Duration::from_millis(200))).is_none());
        assert!(waited.elapsed() >= Duration::from_millis(200) && waited.elapsed() < Duration::from_secs(1));

        // The reader comes back: a reservation waiting meanwhile gets its room.
        let waiting = runtime.spawn(TEST_BATCH.reserve(Duration::from_secs(5)));
        *GATE.0.lock().unwrap() = true;
        GATE.1.notify_all();
        let reservation = runtime.block_on(waiting).unwrap().expect("room once the sink moves");
        reservation.emit(|| TEST_BATCH.append(b"reserved\n"));
        TEST_BATCH.flush();
        let state = TEST_BATCH.state();
        assert!(!state.stalled, "{state:?}");
        let written = GATED.lock().unwrap().iter().filter(|b| **b == b'\n').count() as u64;
        assert_eq!(written + state.dropped, LINES + 1, "every line written or counted: {state:?}");
        assert!(GATED.lock().unwrap().ends_with(b"reserved\n"));
        assert_eq!(TEST_BATCH.reserved.load(Ordering::Relaxed), 0, "reservations given back");
    }

    static FAILED_WRITES: AtomicU64 = AtomicU64::new(0);

    fn broken_pipe(_: &[u8]) -> std::io::Result<usize> {
        FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
        Err(std::io::ErrorKind::BrokenPipe.into())
    }

    /// A sink that fails (EPIPE) loses every line, counted, is retried a few
    /// times a second rather than in a loop, refuses reservations (a line
    /// given to it would be lost) and counts as stalled while lines come.
    #[test]
    fn a_failing_sink_counts_every_line_and_does_not_spin() {
        static TEST_BATCH: Batch = Batch::new(broken_pipe);
        TEST_BATCH.set_stall_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let mut lines = 0;
        while started.elapsed() < Duration::from_millis(1200) {
            TEST_BATCH.append(b"lost\n");
            lines += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(TEST_BATCH.try_reserve().is_none(), "no room promised on a failing sink");
        assert!(TEST_BATCH.state().stalled, "{:?}", TEST_BATCH.state());
        TEST_BATCH.flush();
        std::thread::sleep(Batch::RETRY * 2);
        let state = TEST_BATCH.state();
        assert_eq!(state.dropped, lines, "{state:?}");
        assert!(state.stalled, "a failed sink stays stalled with nothing left to write: {state:?}");
        let attempts = FAILED_WRITES.load(Ordering::Relaxed);
        assert!((2..=10).contains(&attempts), "{attempts} write attempts in 1.7 s");
    }

    /// Ordinary lines leave reserved room alone: with the buffer nearly
    /// full, a close line is dropped while a reserved decision line fits.
    #[test]
    fn reserved_room_is_kept_for_decision_lines() {
        static TEST_BATCH: Batch = Batch::new(gated_forever);
        fn gated_forever(_: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        TEST_BATCH.append(b"first\n");
        std::thread::sleep(Duration::from_millis(50)); // the writer takes it and blocks
        let filler = vec![b'z'; Batch::MAX_BYTES - 3 * Batch::RESERVATION];
        TEST_BATCH.append(&filler);
        let held = TEST_BATCH.try_reserve().expect("room for one");
        let dropped = TEST_BATCH.state().dropped;
        TEST_BATCH.append(&vec![b'c'; 3 * Batch::RESERVATION]);
        assert_eq!(TEST_BATCH.state().dropped, dropped + 1, "a close line may not take reserved room");
        held.emit(|| TEST_BATCH.append(&vec![b'd'; Batch::RESERVATION + 100]));
        assert_eq!(TEST_BATCH.state().dropped, dropped + 1, "the reserved line fits, even a little longer");
        assert_eq!(TEST_BATCH.reserved.load(Ordering::Relaxed), 0);
    }
}
