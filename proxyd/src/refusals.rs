//! Recent refusals: the last [`RECENT`] requests proxyd answered with a
//! refusal (time, role, host, address, status, the exact reason and the
//! rule), for `/refusals` and the console. Counts by reason since start
//! are the metrics' outcome counters, not kept here.
//!
//! Cost, by design: only refused requests come here, never a tunnel. A
//! refusal is written into a fixed ring of the worker thread's own shard
//! (its lock is shared with no other worker, so a flood of refusals on
//! every worker does not contend), and the entry's strings are moved from
//! the decision line that was just written: nothing is allocated for it.
//! Hosts and reasons are clipped to [`MAX_TEXT`] bytes, so the rings'
//! memory is bounded whatever clients send.
//!
//! This module never decides anything and never formats HTML.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::log::RequestId;

/// Refusals kept, in all (each shard keeps this many; readers merge).
pub const RECENT: usize = 200;
/// Longest host, reason or rule kept, in bytes.
pub const MAX_TEXT: usize = 512;

/// One refused request.
#[derive(Debug, Clone)]
pub struct RefusalRecord {
    /// Order of arrival across shards.
    pub sequence: u64,
    pub at: SystemTime,
    pub id: RequestId,
    pub role: Option<String>,
    /// The CONNECT target as the client wrote it.
    pub host: String,
    pub client: Option<SocketAddr>,
    /// The upstream address refused or tried, when the address stage ran.
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub status: u16,
    /// Short stable label (`denied`, `dns`, `tunnel_cap`, ...).
    pub kind: &'static str,
    /// The exact text the client got.
    pub reason: String,
    /// The decision's reason: the rule that refused, when a rule did.
    pub rule: Option<Cow<'static, str>>,
}

/// A fixed ring; `next` is where the next record goes.
#[derive(Debug)]
struct Ring {
    records: Vec<Option<RefusalRecord>>,
    next: usize,
}

/// The recent refusals of every worker.
#[derive(Debug)]
pub struct RecentRefusals {
    shards: Box<[Mutex<Ring>]>,
    sequence: AtomicU64,
}

fn shard_index(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|mine| *mine) % count.max(1)
}

/// Cuts `text` to at most [`MAX_TEXT`] bytes at a character boundary, in place.
fn clip(text: &mut String) {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl RecentRefusals {
    /// Rings for `workers` data-plane threads (plus one for any other thread).
    pub fn new(workers: usize) -> Self {
        let count = workers.saturating_add(1).clamp(1, 1025);
        RecentRefusals {
            shards: (0..count).map(|_| Mutex::new(Ring { records: Vec::new(), next: 0 })).collect(),
            sequence: AtomicU64::new(0),
        }
    }

    /// Keeps `record` (its `sequence` is assigned here), replacing this
    /// shard's oldest when its ring is full.
    pub fn push(&self, mut record: RefusalRecord) {
        record.sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        clip(&mut record.host);
        clip(&mut record.reason);
        if let Some(Cow::Owned(rule)) = &mut record.rule {
            clip(rule);
        }
        let Some(lock) = self.shards.get(shard_index(self.shards.len())) else { return };
        let mut ring = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.records.capacity() == 0 {
            // Allocated once per shard, on its first refusal.
            ring.records.reserve_exact(RECENT);
        }
        let next = ring.next;
        if ring.records.len() < RECENT {
            ring.records.push(Some(record));
        } else if let Some(slot) = ring.records.get_mut(next) {
            // The old record's strings are freed here, outside no hot path.
            *slot = Some(record);
        }
        ring.next = (next + 1) % RECENT;
    }

    /// The most recent refusals, newest first, at most `limit` (and [`RECENT`]).
    pub fn recent(&self, limit: usize) -> Vec<RefusalRecord> {
        let mut all = Vec::new();
        for shard in &*self.shards {
            let ring = shard.lock().unwrap_or_else(PoisonError::into_inner);
            all.extend(ring.records.iter().flatten().cloned());
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.sequence));
        all.truncate(limit.min(RECENT));
        all
    }
}

/// The `/refusals` object for one record.
#[derive(Debug, serde::Serialize)]
pub struct RefusalJson<'a> {
    pub time: String,
    pub id: String,
    pub role: Option<&'a str>,
    pub host: &'a str,
    pub client: Option<String>,
    pub address: Option<String>,
    pub status: u16,
    pub kind: &'static str,
    pub reason: &'a str,
    pub rule: Option<&'a str>,
}

impl<'a> RefusalJson<'a> {
    pub fn of(record: &'a RefusalRecord) -> Self {
        let address = match (record.address, record.port) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port).to_string()),
            (Some(ip), None) => Some(ip.to_string()),
            _ => None,
        };
        RefusalJson {
            time: crate::timefmt::rfc3339_nano(record.at),
            id: record.id.to_string(),
            role: record.role.as_deref(),
            host: &record.host,
            client: record.client.map(|c| c.to_string()),
            address,
            status: record.status,
            kind: record.kind,
            reason: &record.reason,
            rule: record.rule.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    fn record(host: &str) -> RefusalRecord {
        RefusalRecord {
            sequence: 0,
            at: SystemTime::now(),
            id: crate::log::request_id(),
            role: Some("web".into()),
            host: host.to_owned(),
            client: None,
            address: Some("169.254.169.254".parse().unwrap()),
            port: Some(80),
            status: 403,
            kind: "denied",
            reason: format!("Egress proxying is denied to host '{host}'"),
            rule: Some("address denied by rule 'metadata'".into()),
        }
    }

    #[test]
    fn newest_first_and_bounded() {
        let recent = RecentRefusals::new(1);
        for i in 0..(RECENT + 50) {
            recent.push(record(&format!("h{i}.test:80")));
        }
        let all = recent.recent(usize::MAX);
        assert_eq!(all.len(), RECENT);
        assert_eq!(all[0].host, format!("h{}.test:80", RECENT + 49));
        assert_eq!(all[RECENT - 1].host, "h50.test:80");
        assert_eq!(recent.recent(3).len(), 3);
        let json = serde_json::to_value(RefusalJson::of(&all[0])).unwrap();
        assert_eq!(json["address"], "169.254.169.254:80");
        assert_eq!(json["status"], 403);
    }

    #[test]
    fn long_text_is_clipped_at_a_character_boundary() {
        let recent = RecentRefusals::new(1);
        recent.push(record(&"é".repeat(MAX_TEXT)));
        let kept = &recent.recent(1)[0];
        assert!(kept.host.len() <= MAX_TEXT && kept.host.chars().all(|c| c == 'é'));
        assert!(kept.reason.len() <= MAX_TEXT);
    }
}
