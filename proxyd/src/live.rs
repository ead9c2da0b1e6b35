//! Live tunnels: who holds which tunnel open right now, with byte counters
//! the relays update as bytes move. Read by `/tunnels`, the console and the
//! stats socket (`--stats-socket-dir`).
//!
//! Cost on the data plane, by design: a tunnel is registered once, after its
//! upstream connect, in the shard of the worker thread that serves it (one
//! uncontended lock on that worker's own shard; no lock is shared between
//! workers), and removed when it ends. The relays touch only the tunnel's
//! own relaxed atomics ([`TunnelCounters`]), once per burst: no lock and no
//! allocation per burst. The registration itself allocates one `Arc` and
//! moves in strings the request already owned (host, role, revision).
//! Readers take each shard's lock briefly to clone `Arc`s, then format
//! outside every lock.
//!
//! This module never decides anything and never touches a socket.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::log::RequestId;
pub use crate::tunnel::TunnelCounters;

/// Most tunnels one response lists unless the reader asks for fewer.
pub const DEFAULT_LIMIT: usize = 500;
/// Most tunnels one response may list, whatever the reader asks for.
pub const MAX_LIMIT: usize = 10_000;

/// One open tunnel as the operator sees it.
#[derive(Debug)]
pub struct LiveTunnel {
    /// The decision line's id.
    pub id: RequestId,
    /// `None`: no role (the default rule served it).
    pub role: Option<String>,
    /// What the client asked for: `host:port` (Smokescreen's `rhost`).
    pub requested: String,
    /// The client's address (the PROXY header's source when that is on).
    pub client: SocketAddr,
    /// The upstream address connected to (Smokescreen's `raddr`).
    pub upstream: SocketAddr,
    /// Wall-clock opening time (for `created`).
    pub created: SystemTime,
    /// The decision's reason: the rule that allowed the tunnel.
    pub rule: Option<Cow<'static, str>>,
    /// The policy's project for that rule.
    pub project: Option<String>,
    /// `true` when the policy would deny but the rule only reports.
    pub report_only: bool,
    /// The table revision that decided.
    pub revision: String,
    pub counters: TunnelCounters,
}

/// A tunnel in the registry, with where it is kept, so the guard that
/// removes it is one pointer in the tunnel's task.
#[derive(Debug)]
pub struct Listed {
    tunnel: LiveTunnel,
    registry: Arc<LiveTunnels>,
    shard: usize,
    slot: usize,
}

impl std::ops::Deref for Listed {
    type Target = LiveTunnel;

    fn deref(&self) -> &LiveTunnel {
        &self.tunnel
    }
}

/// One worker's tunnels: a slab, so registration and removal reuse slots.
#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Option<Arc<Listed>>>,
    free: Vec<usize>,
    len: usize,
}

/// Every open tunnel, sharded by worker thread.
#[derive(Debug)]
pub struct LiveTunnels {
    shards: Box<[Mutex<Shard>]>,
}

/// Which shard this thread registers into: assigned on the thread's first
/// tunnel, round robin, so each worker thread (they live as long as the
/// process) has a shard to itself when there are at least as many shards.
fn shard_index(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|mine| *mine) % count.max(1)
}

impl LiveTunnels {
    /// A registry for `workers` data-plane threads.
    pub fn new(workers: usize) -> Self {
        // One spare so a thread other than the workers (tests, benches) does not share a worker's shard.
        let count = workers.saturating_add(1).clamp(1, 1025);
        LiveTunnels { shards: (0..count).map(|_| Mutex::new(Shard::default())).collect() }
    }

    /// Lists `tunnel` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, tunnel: LiveTunnel) -> Registered {
        let shard = shard_index(self.shards.len());
        let Some(lock) = self.shards.get(shard) else {
            // Unreachable (the index is taken modulo the count); unlisted, never lost.
            return Registered(Arc::new(Listed { tunnel, registry: Arc::clone(self), shard, slot: usize::MAX }));
        };
        let mut entries = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match entries.free.pop() {
            Some(slot) => slot,
            None => {
                entries.slots.push(None);
                entries.slots.len() - 1
            }
        };
        let listed = Arc::new(Listed { tunnel, registry: Arc::clone(self), shard, slot });
        if let Some(entry) = entries.slots.get_mut(slot) {
            *entry = Some(Arc::clone(&listed));
            entries.len += 1;
        }
        Registered(listed)
    }

    /// How many tunnels are open.
    pub fn count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len).sum()
    }

    /// The open tunnels (of `role` when given; `Some("")` means "no role"),
    /// oldest first, at most `limit`; and how many matched in all.
    pub fn snapshot(&self, role: Option<&str>, limit: usize) -> (Vec<Arc<Listed>>, usize) {
        let matches = |t: &LiveTunnel| match role {
            None => true,
            Some("") => t.role.is_none(),
            Some(role) => t.role.as_deref() == Some(role),
        };
        let mut all = Vec::new();
        for shard in &*self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            all.extend(shard.slots.iter().flatten().filter(|t| matches(t)).cloned());
        }
        let total = all.len();
        all.sort_by_key(|t| t.counters.opened());
        all.truncate(limit.min(MAX_LIMIT));
        (all, total)
    }
}

/// A registered tunnel; dropping it removes the tunnel from the registry.
#[derive(Debug)]
pub struct Registered(Arc<Listed>);

impl Registered {
    pub fn tunnel(&self) -> &LiveTunnel {
        &self.0.tunnel
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let listed = &self.0;
        let Some(lock) = listed.registry.shards.get(listed.shard) else { return };
        let mut shard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = shard.slots.get_mut(listed.slot)
            && entry.take().is_some()
        {
            shard.len = shard.len.saturating_sub(1);
            shard.free.push(listed.slot);
        }
    }
}

/// What a reader asked for: `?role=NAME` (empty: tunnels without a role)
/// and `?limit=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelQuery {
    pub role: Option<String>,
    pub limit: usize,
}

impl TunnelQuery {
    /// Parses a query string; unknown parameters are refused so a typo
    /// does not silently show everything.
    pub fn parse(query: Option<&str>) -> Result<TunnelQuery, String> {
        let mut parsed = TunnelQuery { role: None, limit: DEFAULT_LIMIT };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| format!("invalid percent-encoding in {name}"))?;
            match name {
                "role" => parsed.role = Some(value),
                "limit" => {
                    parsed.limit = value
                        .parse::<usize>()
                        .map_err(|_| format!("limit must be a number from 0 to {MAX_LIMIT}"))?
                        .min(MAX_LIMIT);
                }
                _ => return Err(format!("unknown parameter {name:?}: use role and limit")),
            }
        }
        Ok(parsed)
    }
}

/// `%XX` and `+` decoding of a query value; `None` when malformed or not UTF-8.
pub fn percent_decode(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match first {
            b'%' => {
                let hex = tail.get(..2)?;
                let text = std::str::from_utf8(hex).ok()?;
                bytes.push(u8::from_str_radix(text, 16).ok()?);
                rest = tail.get(2..)?;
            }
            b'+' => {
                bytes.push(b' ');
                rest = tail;
            }
            other => {
                bytes.push(other);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Smokescreen's stats object for one tunnel, fields in its order.
/// `proxyType` is `connect` (Smokescreen means to say so, but always
/// writes `""`).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SmokescreenStats<'a> {
    pub role: &'a str,
    pub rhost: &'a str,
    pub raddr: String,
    pub created: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub seconds_since_last_activity: f64,
    pub proxy_type: &'static str,
}

impl<'a> SmokescreenStats<'a> {
    pub fn of(tunnel: &'a LiveTunnel) -> Self {
        SmokescreenStats {
            role: tunnel.role.as_deref().unwrap_or(""),
            rhost: &tunnel.requested,
            raddr: tunnel.upstream.to_string(),
            created: crate::timefmt::rfc3339_nano(tunnel.created),
            bytes_in: tunnel.counters.bytes_in(),
            bytes_out: tunnel.counters.bytes_out(),
            seconds_since_last_activity: tunnel.counters.idle().as_secs_f64(),
            proxy_type: "connect",
        }
    }
}

/// The `/tunnels` object: Smokescreen's fields, then what allowed the tunnel.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminTunnel<'a> {
    #[serde(flatten)]
    pub stats: SmokescreenStats<'a>,
    pub id: String,
    pub client: String,
    pub age_seconds: f64,
    /// `allow`, or `allow (report)` when a report rule let through what it would deny.
    pub decision: &'static str,
    pub rule: Option<&'a str>,
    pub project: Option<&'a str>,
    pub policy_revision: &'a str,
}

impl<'a> AdminTunnel<'a> {
    pub fn of(tunnel: &'a LiveTunnel) -> Self {
        AdminTunnel {
            stats: SmokescreenStats::of(tunnel),
            id: tunnel.id.to_string(),
            client: tunnel.client.to_string(),
            age_seconds: tunnel.counters.age().as_secs_f64(),
            decision: if tunnel.report_only { "allow (report)" } else { "allow" },
            rule: tunnel.rule.as_deref(),
            project: tunnel.project.as_deref(),
            policy_revision: &tunnel.revision,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    fn tunnel(role: Option<&str>, host: &str) -> LiveTunnel {
        LiveTunnel {
            id: crate::log::request_id(),
            role: role.map(str::to_owned),
            requested: host.to_owned(),
            client: "127.0.0.1:5000".parse().unwrap(),
            upstream: "127.0.0.2:443".parse().unwrap(),
            created: SystemTime::now(),
            rule: Some("rule has allow policy".into()),
            project: None,
            report_only: false,
            revision: "r1".into(),
            counters: TunnelCounters::new(),
        }
    }

    #[test]
    fn registered_tunnels_are_listed_until_dropped_and_slots_are_reused() {
        let live = Arc::new(LiveTunnels::new(2));
        let a = live.register(tunnel(Some("web"), "a.test:443"));
        let b = live.register(tunnel(None, "b.test:443"));
        assert_eq!(live.count(), 2);
        let (web, total) = live.snapshot(Some("web"), 10);
        assert_eq!((web.len(), total), (1, 1));
        assert_eq!(web[0].requested, "a.test:443");
        let (anonymous, _) = live.snapshot(Some(""), 10);
        assert_eq!(anonymous[0].requested, "b.test:443");
        let (capped, total) = live.snapshot(None, 1);
        assert_eq!((capped.len(), total), (1, 2));
        assert_eq!(capped[0].requested, "a.test:443", "oldest first");
        drop(a);
        assert_eq!(live.count(), 1);
        let _c = live.register(tunnel(Some("x"), "c.test:443"));
        let shard = live.shards[shard_index(live.shards.len())].lock().unwrap();
        assert_eq!(shard.slots.len(), 2, "the freed slot was reused");
        drop(shard);
        drop(b);
        assert_eq!(live.count(), 1);
    }

    #[test]
    fn counters_and_the_smokescreen_shape() {
        let t = tunnel(Some("web"), "a.test:443");
        t.counters.out().fetch_add(5, Ordering::Relaxed);
        t.counters.back().fetch_add(7, Ordering::Relaxed);
        t.counters.touch();
        let text = serde_json::to_string(&SmokescreenStats::of(&t)).unwrap();
        let order: Vec<usize> = [
            "\"role\"",
            "\"rhost\"",
            "\"raddr\"",
            "\"created\"",
            "\"bytesIn\"",
            "\"bytesOut\"",
            "\"secondsSinceLastActivity\"",
            "\"proxyType\"",
        ]
        .iter()
        .map(|key| text.find(key).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "Smokescreen's field order: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["bytesIn"], 7);
        assert_eq!(json["bytesOut"], 5);
        assert_eq!(json["raddr"], "127.0.0.2:443");
        assert!(json["secondsSinceLastActivity"].as_f64().unwrap() < 5.0);
    }

    #[test]
    fn queries() {
        let q = |s: &str| TunnelQuery::parse(Some(s));
        assert_eq!(TunnelQuery::parse(None).unwrap(), TunnelQuery { role: None, limit: DEFAULT_LIMIT });
        assert_eq!(q("role=web%2Dapp&limit=3").unwrap(), TunnelQuery { role: Some("web-app".into()), limit: 3 });
        assert_eq!(q("limit=99999999").unwrap().limit, MAX_LIMIT);
        assert_eq!(q("role=").unwrap().role.as_deref(), Some(""));
        assert!(q("limit=x").is_err());
        assert!(q("rol=web").is_err());
        assert!(q("role=%zz").is_err());
        assert!(q("role=%").is_err());
    }
}
