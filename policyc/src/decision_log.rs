//! Streaming reader of decision logs: `proxyd`'s `CANONICAL-PROXY-DECISION`
//! JSON lines (tracing's `"message"` field) and Smokescreen's logrus JSON lines
//! (`"msg"`), from files, `-` (stdin) or `.gz` files, aggregated per
//! (role, canonical host), with the destination ports seen for each pair
//! (at most [`MAX_PORTS_PER_PAIR`]; later ports are counted, not kept).
//!
//! Memory follows the number of distinct (role, host) pairs, never the number
//! of lines: each line is parsed where it lies in the reader's buffer (or,
//! cut by the buffer's end, copied into one bounded buffer; a line longer
//! than [`MAX_LINE_BYTES`] is skipped without being held, and counted as
//! malformed), folded into its pair's counters and dropped. A pair costs
//! about 80 bytes: see [`Aggregate`].
//!
//! What this module must never do: trust a log line's verdict for anything but
//! classification (the caller re-decides every host against the policy), panic
//! or stop on a bad line (bad lines are counted, the first
//! [`MALFORMED_EXAMPLES`] kept with `file:line`), or read a whole file into
//! memory.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use egress_policy::authority::{self, AuthorityError};
use egress_policy::host::CanonicalHost;
use serde::Deserialize;

/// The message both proxies give their per-request decision line.
pub const DECISION_MESSAGE: &str = "CANONICAL-PROXY-DECISION";
/// Longest line read. Real decision lines are well under 4 KiB; a longer one
/// is hostile or corrupt and is skipped without being kept in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// How many malformed lines are reported with `file:line`.
pub const MALFORMED_EXAMPLES: usize = 5;

/// A point in time from a log line, as nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Parses RFC 3339 (`2026-11-21T10:16:57Z`, `...57.352171331Z`,
    /// `...57+02:00`). Anything else is `None`: a timestamp is informative,
    /// never a reason to drop a line.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        let digits = |range: std::ops::Range<usize>| -> Option<i64> {
            let part = b.get(range)?;
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            part.iter().try_fold(0i64, |acc, d| acc.checked_mul(10)?.checked_add(i64::from(d - b'0')))
        };
        let sep = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
        if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
            return None;
        }
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut i = 19;
        let mut nanos = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                if i - start < 9 {
                    nanos = nanos * 10 + i64::from(b.get(i).copied().unwrap_or(b'0') - b'0');
                }
                i += 1;
            }
            if i == start {
                return None;
            }
            for _ in (i - start)..9 {
                nanos *= 10;
            }
        }
        let offset_seconds = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
                let (h, m) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
                let offset = h * 3600 + m * 60;
                if *sign == b'+' { offset } else { -offset }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
        seconds.checked_mul(1_000_000_000)?.checked_add(nanos).map(Timestamp)
    }

    /// RFC 3339 in UTC with second precision, as comments and JSON show it.
    pub fn to_rfc3339(self) -> String {
        let seconds = self.0.div_euclid(1_000_000_000);
        let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// Most distinct destination ports kept per (role, host) pair. A pair
/// reached on more ports than this is a scan or a misconfiguration, not a
/// list to copy into a policy: later ports are counted, not kept, so memory
/// still follows distinct pairs.
pub const MAX_PORTS_PER_PAIR: usize = 64;

/// What the logs say about one destination port of a (role, host) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortObservation {
    pub port: u16,
    pub hits: u64,
    /// Lines flagged `enforce_would_deny` (report mode), as [`Observation::reported`].
    pub reported: u64,
    /// Lines denied by policy, as [`Observation::denied`].
    pub denied: u64,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
}

/// What the logs say about one (role, host) pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Every decision line for the pair.
    pub hits: u64,
    /// Lines the proxy allowed while flagging them (`enforce_would_deny`, report mode).
    pub reported: u64,
    /// Lines the proxy denied by policy.
    pub denied: u64,
    /// Lines refused after the name stage (proxyd's address stage): not a policy matter.
    pub address_denied: u64,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// The destination ports seen, at most [`MAX_PORTS_PER_PAIR`], sorted by port.
    pub ports: Vec<PortObservation>,
    /// Lines whose port was not kept because `ports` was full.
    pub ports_not_kept: u64,
}

fn widen(first: &mut Option<Timestamp>, last: &mut Option<Timestamp>, at: Option<Timestamp>) {
    if let Some(at) = at {
        *first = Some(first.map_or(at, |f| f.min(at)));
        *last = Some(last.map_or(at, |l| l.max(at)));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineKind {
    Allowed,
    Reported,
    Denied,
    AddressDenied,
}

impl LineKind {
    /// The line's share of (`reported`, `denied`).
    fn policy_counts(self) -> (u8, u8) {
        match self {
            LineKind::Reported => (1, 0),
            LineKind::Denied => (0, 1),
            LineKind::Allowed | LineKind::AddressDenied => (0, 0),
        }
    }
}

/// Line counts over every file read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineCounts {
    /// Every line read.
    pub total: u64,
    /// Decision lines folded into the aggregate.
    pub decisions: u64,
    /// Other lines (other messages, plain text, blank lines).
    pub skipped: u64,
    /// Bad decision lines: not JSON, a missing or mistyped field, an unparseable host, too long.
    pub malformed: u64,
    /// Decision lines without a role (a client without one): no rule to add to.
    pub without_role: u64,
    /// Decision lines for requests refused before any policy decision
    /// (not CONNECT, bad request, draining, client gone).
    pub undecided: u64,
    /// Decision lines for roles outside `--role`.
    pub filtered_out: u64,
    /// The first few malformed lines, as `file:line: why`.
    pub malformed_examples: Vec<String>,
}

/// A role's index in [`Aggregate::role_names`].
type RoleId = u32;
/// A host's index in [`Aggregate::hosts`].
type HostId = u32;

/// `first_seen` / `last_seen` not known yet. [`Timestamp::parse_rfc3339`]
/// never yields it: the earliest value it can produce is above it.
const NO_TIME: i64 = i64::MIN;

/// What the logs say about one (role, host) pair, packed (48 bytes): the
/// pair is two interned ids, counters are 32-bit (a pair's 2^32nd line
/// carries them into [`Aggregate::carried`]), times have no `Option` tag,
/// and the ports list is only the first port's number while the pair has
/// been reached on one port (nearly every pair). A second port moves the
/// list to [`Aggregate::more_ports`]. [`Aggregate::hosts_of`] unpacks it
/// into an [`Observation`].
#[derive(Clone, Copy, Debug)]
struct Pair {
    /// Every line counts here and at most one of the three others, so
    /// `hits` is the first to fill up.
    hits: u32,
    reported: u32,
    denied: u32,
    address_denied: u32,
    first_seen: i64,
    last_seen: i64,
    role: RoleId,
    host: HostId,
    /// The only port seen, while `multi_port` is false.
    port: u16,
    /// Seen on more than one port: the ports are in `more_ports`.
    multi_port: bool,
}

/// The ports of a pair reached on more than one port.
#[derive(Clone, Debug, Default)]
struct PortList {
    /// At most [`MAX_PORTS_PER_PAIR`], sorted by port.
    ports: Vec<PortObservation>,
    /// Lines whose port was not kept because `ports` was full.
    not_kept: u64,
}

impl PortList {
    fn record(&mut self, kind: LineKind, port: u16, at: Option<Timestamp>) {
        let slot = match self.ports.binary_search_by_key(&port, |p| p.port) {
            Ok(i) => self.ports.get_mut(i),
            Err(_) if self.ports.len() >= MAX_PORTS_PER_PAIR => None,
            Err(i) => {
                let empty =
                    PortObservation { port, hits: 0, reported: 0, denied: 0, first_seen: None, last_seen: None };
                self.ports.insert(i, empty);
                self.ports.get_mut(i)
            }
        };
        match slot {
            Some(seen) => {
                let (reported, denied) = kind.policy_counts();
                seen.hits += 1;
                seen.reported += u64::from(reported);
                seen.denied += u64::from(denied);
                widen(&mut seen.first_seen, &mut seen.last_seen, at);
            }
            None => self.not_kept += 1,
        }
    }
}

/// A pair's line counts at full width.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    hits: u64,
    reported: u64,
    denied: u64,
    address_denied: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.hits += other.hits;
        self.reported += other.reported;
        self.denied += other.denied;
        self.address_denied += other.address_denied;
    }
}

fn time_of(raw: i64) -> Option<Timestamp> {
    (raw != NO_TIME).then_some(Timestamp(raw))
}

impl Pair {
    fn new(role: RoleId, host: HostId, port: u16) -> Pair {
        Pair {
            hits: 0,
            reported: 0,
            denied: 0,
            address_denied: 0,
            first_seen: NO_TIME,
            last_seen: NO_TIME,
            role,
            host,
            port,
            multi_port: false,
        }
    }

    /// The pair's only port (while `multi_port` is false), with `counts`
    /// the pair's full counts.
    fn only_port(&self, counts: Counts) -> PortObservation {
        PortObservation {
            port: self.port,
            hits: counts.hits,
            reported: counts.reported,
            denied: counts.denied,
            first_seen: time_of(self.first_seen),
            last_seen: time_of(self.last_seen),
        }
    }

    /// The 32-bit counters, widened.
    fn counts(&self) -> Counts {
        Counts {
            hits: u64::from(self.hits),
            reported: u64::from(self.reported),
            denied: u64::from(self.denied),
            address_denied: u64::from(self.address_denied),
        }
    }

    /// The 32-bit counters, which are then zero.
    fn take_counts(&mut self) -> Counts {
        let counts = self.counts();
        (self.hits, self.reported, self.denied, self.address_denied) = (0, 0, 0, 0);
        counts
    }

    /// Counts one line for the pair itself (ports are the caller's, and so
    /// is carrying full counters: `hits` is below `u32::MAX` here).
    fn count(&mut self, kind: LineKind, at: Option<Timestamp>) {
        let (reported, denied) = kind.policy_counts();
        self.hits = self.hits.saturating_add(1);
        self.reported = self.reported.saturating_add(u32::from(reported));
        self.denied = self.denied.saturating_add(u32::from(denied));
        if kind == LineKind::AddressDenied {
            self.address_denied = self.address_denied.saturating_add(1);
        }
        if let Some(Timestamp(at)) = at {
            self.first_seen = if self.first_seen == NO_TIME { at } else { self.first_seen.min(at) };
            self.last_seen = if self.last_seen == NO_TIME { at } else { self.last_seen.max(at) };
        }
    }
}

/// Everything read from the logs, per (role, host) pair.
///
/// Memory follows distinct pairs at about 80 bytes each: roles and hosts
/// are interned (one copy of each string, pairs keyed by two `u32` ids),
/// each pair is one packed 48-byte record in a vector, and the pair index maps
/// the two ids to the pair's place in it. Per-role order (for
/// [`Aggregate::hosts_of`]) is built once, when first asked for.
#[derive(Debug, Default)]
pub struct Aggregate {
    /// Distinct canonical hosts; a `HostId` indexes this.
    hosts: Vec<CanonicalHost>,
    /// Raw `requested_host` text → its host id and port (`None`: the text
    /// has no port), so each spelling is parsed once.
    by_raw_host: HashMap<Box<str>, (HostId, Option<u16>)>,
    by_canonical: HashMap<CanonicalHost, HostId>,
    /// Distinct role names; a `RoleId` indexes this.
    role_names: Vec<Box<str>>,
    by_role: HashMap<Box<str>, RoleId>,
    pairs: Vec<Pair>,
    /// Indices in `pairs`, hashed by (role, host): 4 bytes a slot, the key
    /// is read from the pair itself.
    pair_index: hashbrown::HashTable<u32>,
    /// Keys the hashes of `pair_index` (random, so crafted logs cannot aim
    /// at one bucket).
    pair_hasher: RandomState,
    /// Ports of the pairs seen on more than one port, by index in `pairs`.
    more_ports: HashMap<u32, PortList>,
    /// Counts carried out of a pair's 32-bit counters, by index in `pairs`
    /// (a pair with 2^32 lines or more).
    carried: HashMap<u32, Counts>,
    /// Pairs grouped by role, sorted by host; built on first use.
    order: OnceCell<RoleOrder>,
    pub lines: LineCounts,
}

/// The pairs of each role, sorted by host name.
#[derive(Debug)]
struct RoleOrder {
    /// Indices in `pairs`, grouped by role id, each group sorted by host name.
    pairs: Vec<u32>,
    /// `pairs[starts[r]..starts[r + 1]]` are role `r`'s.
    starts: Vec<usize>,
}

impl Aggregate {
    /// Roles seen, sorted.
    pub fn roles(&self) -> Vec<&str> {
        let mut roles: Vec<&str> = self.role_names.iter().map(|r| &**r).collect();
        roles.sort_unstable();
        roles
    }

    /// A role's hosts with what was seen of them, sorted by host.
    pub fn hosts_of(&self, role: &str) -> Vec<(&CanonicalHost, Observation)> {
        let Some(&role) = self.by_role.get(role) else {
            return Vec::new();
        };
        let order = self.order.get_or_init(|| self.role_order());
        let range = order.starts.get(role as usize).copied().zip(order.starts.get(role as usize + 1).copied());
        let Some(members) = range.and_then(|(start, end)| order.pairs.get(start..end)) else {
            return Vec::new();
        };
        members
            .iter()
            .filter_map(|&index| {
                let pair = self.pairs.get(index as usize)?;
                Some((self.hosts.get(pair.host as usize)?, self.observation(index, pair)))
            })
            .collect()
    }

    /// The pair unpacked into its public form.
    fn observation(&self, index: u32, pair: &Pair) -> Observation {
        let counts = self.counts(index, pair);
        // The side maps are looked into only when they can hold the pair.
        let listed = if pair.multi_port { self.more_ports.get(&index) } else { None };
        let (ports, ports_not_kept) = match listed {
            Some(list) => (list.ports.clone(), list.not_kept),
            None => (vec![pair.only_port(counts)], 0),
        };
        Observation {
            hits: counts.hits,
            reported: counts.reported,
            denied: counts.denied,
            address_denied: counts.address_denied,
            first_seen: time_of(pair.first_seen),
            last_seen: time_of(pair.last_seen),
            ports,
            ports_not_kept,
        }
    }

    /// The pair's full counts: its 32-bit counters plus what they carried.
    fn counts(&self, index: u32, pair: &Pair) -> Counts {
        let mut counts = pair.counts();
        if !self.carried.is_empty()
            && let Some(carried) = self.carried.get(&index)
        {
            counts.add(*carried);
        }
        counts
    }

    /// Groups the pairs by role and sorts each group by host name, comparing
    /// host ranks (one sort of the distinct hosts) rather than strings.
    fn role_order(&self) -> RoleOrder {
        let mut by_name: Vec<u32> = (0..u32::try_from(self.hosts.len()).unwrap_or(u32::MAX)).collect();
        by_name.sort_unstable_by(|a, b| self.host_text(*a).cmp(self.host_text(*b)));
        let mut rank = vec![0u32; self.hosts.len()];
        for (position, host) in (0u32..).zip(&by_name) {
            if let Some(slot) = rank.get_mut(*host as usize) {
                *slot = position;
            }
        }
        // Sorting (role, host rank) keys packed in one integer beside the
        // pair's index reads each pair once, not at every comparison.
        let mut keyed: Vec<(u64, u32)> = (0u32..)
            .zip(&self.pairs)
            .map(|(index, p)| {
                let rank = rank.get(p.host as usize).copied().unwrap_or(u32::MAX);
                ((u64::from(p.role) << 32) | u64::from(rank), index)
            })
            .collect();
        keyed.sort_unstable();
        let mut starts = vec![0usize; self.role_names.len() + 1];
        for p in &self.pairs {
            if let Some(slot) = starts.get_mut(p.role as usize + 1) {
                *slot += 1;
            }
        }
        let pairs: Vec<u32> = keyed.into_iter().map(|(_, index)| index).collect();
        for r in 1..starts.len() {
            let before = starts.get(r - 1).copied().unwrap_or(0);
            if let Some(slot) = starts.get_mut(r) {
                *slot += before;
            }
        }
        RoleOrder { pairs, starts }
    }

    fn host_text(&self, id: HostId) -> &str {
        self.hosts.get(id as usize).map_or("", CanonicalHost::as_str)
    }

    /// Number of distinct (role, host) pairs.
    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    fn host_id(&mut self, raw: &str) -> Result<(HostId, Option<u16>), AuthorityError> {
        if let Some(known) = self.by_raw_host.get(raw) {
            return Ok(*known);
        }
        let (host, port) = parse_requested_host(raw)?;
        let id = match self.by_canonical.get(&host) {
            Some(id) => *id,
            None => {
                let id = u32::try_from(self.hosts.len()).map_err(|_| AuthorityError::TooLong)?;
                self.hosts.push(host.clone());
                self.by_canonical.insert(host, id);
                id
            }
        };
        self.by_raw_host.insert(raw.into(), (id, port));
        Ok((id, port))
    }

    /// The role's id, interning the name on first sight (`None`: more
    /// distinct roles than ids, which no real log reaches).
    fn role_id(&mut self, role: &str) -> Option<RoleId> {
        if let Some(id) = self.by_role.get(role) {
            return Some(*id);
        }
        let id = u32::try_from(self.role_names.len()).ok()?;
        self.role_names.push(role.into());
        self.by_role.insert(role.into(), id);
        Some(id)
    }

    /// Folds one decision line into its pair (`false`: more distinct pairs
    /// than `u32` indices, which no real log reaches).
    fn record(&mut self, role: RoleId, host: HostId, kind: LineKind, port: u16, at: Option<Timestamp>) -> bool {
        self.order.take();
        let hash = self.pair_hasher.hash_one((role, host));
        let pairs = &self.pairs;
        let found = self
            .pair_index
            .find(hash, |&index| pairs.get(index as usize).is_some_and(|p| p.role == role && p.host == host));
        let index = match found {
            Some(index) => *index,
            None => {
                let Ok(index) = u32::try_from(self.pairs.len()) else {
                    return false;
                };
                self.pairs.push(Pair::new(role, host, port));
                let (pairs, hasher) = (&self.pairs, &self.pair_hasher);
                self.pair_index.insert_unique(hash, index, |&index| {
                    pairs.get(index as usize).map_or(0, |p| hasher.hash_one((p.role, p.host)))
                });
                index
            }
        };
        let Some(pair) = self.pairs.get_mut(index as usize) else {
            return false;
        };
        if !pair.multi_port && pair.port != port {
            // A second port: the list so far is the one port's, which the
            // pair's own counters describe.
            let mut counts = pair.counts();
            if let Some(carried) = self.carried.get(&index) {
                counts.add(*carried);
            }
            let list = PortList { ports: vec![pair.only_port(counts)], not_kept: 0 };
            self.more_ports.insert(index, list);
            pair.multi_port = true;
        }
        if pair.hits == u32::MAX {
            self.carried.entry(index).or_default().add(pair.take_counts());
        }
        pair.count(kind, at);
        if pair.multi_port {
            self.more_ports.entry(index).or_default().record(kind, port, at);
        }
        true
    }

    fn malformed(&mut self, source: &str, line: u64, why: impl fmt::Display) {
        self.lines.malformed += 1;
        if self.lines.malformed_examples.len() < MALFORMED_EXAMPLES {
            self.lines.malformed_examples.push(format!("{source}:{line}: {why}"));
        }
    }
}

/// `requested_host` is `host:port` (`[v6]:port`); Smokescreen's HTTP-proxy
/// lines may carry a bare `Host` header, whose port is `None` here (the
/// line's `dst_port`, else 80).
fn parse_requested_host(raw: &str) -> Result<(CanonicalHost, Option<u16>), AuthorityError> {
    match authority::parse(raw) {
        Ok(a) => Ok((a.host, Some(a.port))),
        Err(AuthorityError::MissingPort(_)) => authority::parse(&format!("{raw}:80")).map(|a| (a.host, None)),
        Err(e) => Err(e),
    }
}

/// The port a bare `Host` is reached on when the line does not say.
const DEFAULT_HTTP_PORT: u16 = 80;

/// The fields read from a decision line; every other field is ignored.
/// Unknown fields are fine, duplicate or mistyped known fields are not.
#[derive(Deserialize)]
struct RawLine<'a> {
    /// logrus (Smokescreen).
    #[serde(borrow, default)]
    msg: Option<Cow<'a, str>>,
    /// tracing (proxyd).
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    requested_host: Option<Cow<'a, str>>,
    #[serde(default)]
    allow: Option<bool>,
    #[serde(default)]
    enforce_would_deny: Option<bool>,
    #[serde(borrow, default)]
    decision_reason: Option<Cow<'a, str>>,
    /// proxyd: the port connected to (absent on lines refused before DNS).
    #[serde(default)]
    dst_port: Option<u16>,
    /// logrus.
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    /// tracing.
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
}

/// Why reading the logs stopped: an I/O error or a broken `.gz`, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {error}")]
pub struct LogError {
    pub source_name: String,
    pub error: io::Error,
}

/// Where to read from: a path, or `-` for standard input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogSource {
    Stdin,
    File(PathBuf),
}

impl LogSource {
    pub fn from_arg(path: &Path) -> LogSource {
        if path.as_os_str() == "-" { LogSource::Stdin } else { LogSource::File(path.to_owned()) }
    }

    pub fn name(&self) -> String {
        match self {
            LogSource::Stdin => "<stdin>".to_owned(),
            LogSource::File(path) => path.display().to_string(),
        }
    }
}

/// Reads every source in order into one aggregate. `roles`, when given,
/// keeps only those roles (others are counted as `filtered_out`).
pub fn read_all(sources: &[LogSource], roles: Option<&HashSet<String>>) -> Result<Aggregate, LogError> {
    let mut aggregate = Aggregate::default();
    for source in sources {
        let name = source.name();
        let wrap = |error: io::Error| LogError { source_name: name.clone(), error };
        match source {
            LogSource::Stdin => read_stream(io::stdin().lock(), &name, roles, &mut aggregate).map_err(wrap)?,
            LogSource::File(path) => {
                let file = File::open(path).map_err(wrap)?;
                if path.extension().is_some_and(|e| e == "gz") {
                    // Multi-member: `cat a.gz b.gz` and rotated logs are one stream.
                    let decoder = flate2::read::MultiGzDecoder::new(BufReader::new(file));
                    read_stream(BufReader::with_capacity(64 * 1024, decoder), &name, roles, &mut aggregate)
                        .map_err(|e| wrap(gzip_error(e)))?;
                } else {
                    read_stream(BufReader::with_capacity(64 * 1024, file), &name, roles, &mut aggregate)
                        .map_err(wrap)?;
                }
            }
        }
    }
    Ok(aggregate)
}

fn gzip_error(error: io::Error) -> io::Error {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => {
            io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream is truncated (unexpected end of file)")
        }
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
            io::Error::new(error.kind(), format!("not a valid gzip stream: {error}"))
        }
        _ => error,
    }
}

/// Reads one stream line by line into `aggregate`.
pub fn read_stream(
    mut reader: impl BufRead,
    source: &str,
    roles: Option<&HashSet<String>>,
    aggregate: &mut Aggregate,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(1024);
    let mut number = 0u64;
    let marker = memchr::memmem::Finder::new(DECISION_MESSAGE);
    loop {
        // A whole line already in the reader's buffer is folded where it
        // lies, without copying it; a line cut by the buffer's end (or EOF
        // without a newline) goes through the bounded copy below.
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(end) = memchr::memchr(b'\n', available).filter(|end| *end <= MAX_LINE_BYTES) {
            number += 1;
            aggregate.lines.total += 1;
            fold_line(available.get(..end).unwrap_or_default(), &marker, source, number, roles, aggregate);
            reader.consume(end + 1);
            continue;
        }
        let status = read_bounded_line(&mut reader, &mut line, MAX_LINE_BYTES)?;
        let complete = match status {
            LineStatus::End => return Ok(()),
            LineStatus::Complete => true,
            LineStatus::TooLong => false,
        };
        number += 1;
        aggregate.lines.total += 1;
        if !complete {
            aggregate.malformed(source, number, format_args!("line longer than {MAX_LINE_BYTES} bytes"));
            continue;
        }
        fold_line(&line, &marker, source, number, roles, aggregate);
    }
}

enum LineStatus {
    End,
    Complete,
    /// The line was longer than the limit; it has been consumed, not kept.
    TooLong,
}

/// Reads up to and including the next `\n` into `buf` (without it), keeping
/// at most `max` bytes; the rest of an overlong line is consumed and dropped.
fn read_bounded_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<LineStatus> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => LineStatus::End,
                (true, true) => LineStatus::TooLong,
                (true, false) => LineStatus::Complete,
            });
        }
        read_any = true;
        let (chunk, used, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (available.get(..i).unwrap_or_default(), i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            return Ok(if too_long { LineStatus::TooLong } else { LineStatus::Complete });
        }
    }
}

/// Classifies one line and folds a decision into the aggregate.
fn fold_line(
    line: &[u8],
    marker: &memchr::memmem::Finder<'_>,
    source: &str,
    number: u64,
    roles: Option<&HashSet<String>>,
    aggregate: &mut Aggregate,
) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Most lines of a busy log are other messages: skip them without parsing.
    if marker.find(line).is_none() {
        aggregate.lines.skipped += 1;
        return;
    }
    let trimmed = line.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        aggregate.malformed(source, number, "mentions CANONICAL-PROXY-DECISION but is not a JSON object");
        return;
    }
    let parsed: RawLine<'_> = match serde_json::from_slice(trimmed) {
        Ok(parsed) => parsed,
        Err(e) => {
            aggregate.malformed(source, number, format_args!("invalid JSON: {e}"));
            return;
        }
    };
    let message = parsed.msg.as_deref().or(parsed.message.as_deref());
    if message != Some(DECISION_MESSAGE) {
        aggregate.lines.skipped += 1;
        return;
    }
    let Some(raw_host) = parsed.requested_host.as_deref() else {
        aggregate.malformed(source, number, "missing field `requested_host`");
        return;
    };
    let kind = match (parsed.allow, parsed.decision_reason.as_deref()) {
        // Refused before the policy was asked (bad request, draining, ...).
        (None | Some(false), None) => {
            aggregate.lines.undecided += 1;
            return;
        }
        (None, Some(_)) => {
            aggregate.malformed(source, number, "missing field `allow`");
            return;
        }
        (Some(false), Some(reason)) if reason.starts_with("address ") => LineKind::AddressDenied,
        (Some(false), Some(_)) => LineKind::Denied,
        (Some(true), Some(_)) if parsed.enforce_would_deny == Some(true) => LineKind::Reported,
        (Some(true), _) => LineKind::Allowed,
    };
    let role = match parsed.role.as_deref() {
        None | Some("") => {
            aggregate.lines.without_role += 1;
            return;
        }
        Some(role) => role,
    };
    if roles.is_some_and(|wanted| !wanted.contains(role)) {
        aggregate.lines.filtered_out += 1;
        return;
    }
    let (host, port) = match aggregate.host_id(raw_host) {
        Ok((id, port)) => (id, port.or(parsed.dst_port.filter(|p| *p != 0)).unwrap_or(DEFAULT_HTTP_PORT)),
        Err(e) => {
            aggregate.malformed(source, number, format_args!("unparseable requested_host: {e}"));
            return;
        }
    };
    let at = parsed.time.as_deref().or(parsed.timestamp.as_deref()).and_then(Timestamp::parse_rfc3339);
    let Some(role) = aggregate.role_id(role) else {
        aggregate.malformed(source, number, "more distinct roles than can be counted");
        return;
    };
    if !aggregate.record(role, host, kind, port, at) {
        aggregate.malformed(source, number, "more distinct (role, host) pairs than can be counted");
        return;
    }
    aggregate.lines.decisions += 1;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    fn read(text: &str) -> Aggregate {
        let mut aggregate = Aggregate::default();
        read_stream(text.as_bytes(), "t.log", None, &mut aggregate).unwrap();
        aggregate
    }

    #[test]
    fn timestamps_round_trip_and_order() {
        let t = Timestamp::parse_rfc3339("2026-11-21T10:16:57Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:16:57Z");
        let nano = Timestamp::parse_rfc3339("2026-11-21T10:16:57.352171331Z").unwrap();
        assert!(nano > t);
        assert_eq!(Timestamp::parse_rfc3339("2026-11-21T12:16:57+02:00"), Some(t));
        assert_eq!(Timestamp::parse_rfc3339("1970-01-01T00:00:00Z"), Some(Timestamp(0)));
        assert_eq!(Timestamp::parse_rfc3339("2000-02-29T00:00:00Z").unwrap().to_rfc3339(), "2000-02-29T00:00:00Z");
        for bad in ["", "2026-11-21", "2026-13-01T00:00:00Z", "2026-11-21T10:16:57", "2026-11-21T10:16:57.Z", "x"] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn both_formats_fold_and_other_lines_are_skipped() {
        let a = read(concat!(
            r#"{"timestamp":"2026-11-21T10:00:00.5Z","level":"INFO","message":"CANONICAL-PROXY-DECISION","role":"r","requested_host":"API.Example.com:443","allow":true,"decision_reason":"rule has allow and report policy","enforce_would_deny":true}"#,
            "\n",
            r#"{"time":"2026-11-21T11:00:00Z","level":"info","msg":"CANONICAL-PROXY-DECISION","role":"r","project":"p","requested_host":"api.example.com.:8443","allow":false,"decision_reason":"rule has enforce policy","enforce_would_deny":true}"#,
            "\n",
            r#"{"msg":"starting"}"#,
            "\nplain text\n\n",
            r#"{"msg":"CANONICAL-PROXY-CN-CLOSE","role":"r"}"#,
            "\n"
        ));
        assert_eq!((a.lines.total, a.lines.decisions, a.lines.skipped, a.lines.malformed), (6, 2, 4, 0));
        let hosts = a.hosts_of("r");
        assert_eq!(hosts.len(), 1);
        let (host, obs) = &hosts[0];
        assert_eq!(host.as_str(), "api.example.com");
        assert_eq!((obs.hits, obs.reported, obs.denied), (2, 1, 1));
        assert_eq!(obs.first_seen.unwrap().to_rfc3339(), "2026-11-21T10:00:00Z");
        assert_eq!(obs.last_seen.unwrap().to_rfc3339(), "2026-11-21T11:00:00Z");
    }

    #[test]
    fn bad_lines_are_counted_with_their_location() {
        let a = read(concat!(
            "{\"msg\":\"CANONICAL-PROXY-DECISION\",\n",
            "{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":\"r\",\"allow\":true,\"decision_reason\":\"x\"}\n",
            "{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":\"r\",\"requested_host\":\"a b:1\",\"allow\":true,\"decision_reason\":\"x\"}\n",
            "{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":\"r\",\"requested_host\":\"a:1\",\"allow\":\"yes\",\"decision_reason\":\"x\"}\n",
            "CANONICAL-PROXY-DECISION in text\n",
            "{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":\"r\",\"requested_host\":\"a.test:1\",\"decision_reason\":\"x\"}\n",
        ));
        assert_eq!(a.lines.malformed, 6);
        assert_eq!(a.lines.malformed_examples.len(), MALFORMED_EXAMPLES);
        assert!(a.lines.malformed_examples[0].starts_with("t.log:1: invalid JSON"));
        assert!(a.lines.malformed_examples[1].contains("t.log:2: missing field `requested_host`"));
        assert!(a.lines.malformed_examples[2].contains("t.log:3: unparseable requested_host"));
        assert!(a.lines.malformed_examples[4].contains("not a JSON object"));
    }

    #[test]
    fn an_overlong_line_is_skipped_without_being_kept() {
        let long = format!("{{\"msg\":\"CANONICAL-PROXY-DECISION\",\"pad\":\"{}\"}}\n", "x".repeat(MAX_LINE_BYTES));
        let ok = r#"{"msg":"CANONICAL-PROXY-DECISION","role":"r","requested_host":"a.test:1","allow":true,"decision_reason":"x"}"#;
        let a = read(&format!("{long}{ok}\n{long}"));
        assert_eq!((a.lines.total, a.lines.decisions, a.lines.malformed), (3, 1, 2));
        assert!(a.lines.malformed_examples[0].starts_with("t.log:1: line longer than"));
        assert!(a.lines.malformed_examples[1].starts_with("t.log:3: line longer than"));
    }

    #[test]
    fn hosts_are_read_as_the_proxy_reads_them() {
        for (raw, canonical) in [
            ("API.Example.com.:443", "api.example.com"),
            ("[::1]:443", "::1"),
            ("[::ffff:127.0.0.1]:8443", "127.0.0.1"),
            ("bücher.example:443", "xn--bcher-kva.example"),
            ("plain-http.example", "plain-http.example"),
        ] {
            assert_eq!(parse_requested_host(raw).unwrap().0.as_str(), canonical, "{raw}");
        }
        for bad in ["", "::1:443", "a b:443", "0x7f.0.0.1:443", "host:0", "host:99999", "user@host:443"] {
            assert!(parse_requested_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn undecided_roleless_and_address_lines_are_told_apart() {
        let a = read(concat!(
            r#"{"message":"CANONICAL-PROXY-DECISION","requested_host":"a.test:443","allow":false,"refusal":"bad_request"}"#,
            "\n",
            r#"{"message":"CANONICAL-PROXY-DECISION","requested_host":"a.test:443","allow":true,"decision_reason":"rule has allow and report policy","enforce_would_deny":true}"#,
            "\n",
            r#"{"message":"CANONICAL-PROXY-DECISION","role":"r","requested_host":"a.test:443","allow":false,"decision_reason":"address 10.0.0.1 denied by rule 'private'","enforce_would_deny":true}"#,
            "\n",
        ));
        assert_eq!((a.lines.undecided, a.lines.without_role, a.lines.decisions), (1, 1, 1));
        assert_eq!(a.hosts_of("r")[0].1.address_denied, 1);
    }

    #[test]
    fn ports_are_kept_per_pair_and_bounded() {
        let line = |host: &str, extra: &str| {
            format!(
                "{{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":\"r\",\"requested_host\":\"{host}\",\"allow\":true,\"decision_reason\":\"x\",\"enforce_would_deny\":true{extra}}}\n"
            )
        };
        let mut text = String::new();
        text.push_str(&line("a.test:8443", ""));
        text.push_str(&line("a.test:8443", ""));
        text.push_str(&line("a.test:443", ""));
        text.push_str(&line("a.test", ",\"dst_port\":8080"));
        text.push_str(&line("a.test", ""));
        for port in 1000..1000 + MAX_PORTS_PER_PAIR as u16 {
            text.push_str(&line(&format!("b.test:{port}"), ""));
        }
        text.push_str(&line("b.test:9", ""));
        text.push_str(&line("b.test:1000", ""));
        let a = read(&text);
        let hosts = a.hosts_of("r");
        let ports: Vec<(u16, u64, u64)> = hosts[0].1.ports.iter().map(|p| (p.port, p.hits, p.reported)).collect();
        assert_eq!(ports, vec![(80, 1, 1), (443, 1, 1), (8080, 1, 1), (8443, 2, 2)]);
        let b = &hosts[1].1;
        assert_eq!((b.ports.len(), b.ports_not_kept, b.hits), (MAX_PORTS_PER_PAIR, 1, MAX_PORTS_PER_PAIR as u64 + 2));
        assert_eq!(b.ports[0].hits, 2, "a kept port still counts once the set is full");
    }

    #[test]
    fn counters_carry_past_32_bits() {
        let line = |port: u16| {
            format!(
                "{{\"msg\":\"CANONICAL-PROXY-DECISION\",\"role\":\"r\",\"requested_host\":\"a.test:{port}\",\"allow\":false,\"decision_reason\":\"x\",\"enforce_would_deny\":true}}\n"
            )
        };
        let mut a = read(&line(443));
        // As if 2^32 - 1 lines had been read: the next one carries.
        let pair = &mut a.pairs[0];
        (pair.hits, pair.denied) = (u32::MAX, u32::MAX);
        read_stream(format!("{}{}", line(443), line(8443)).as_bytes(), "t.log", None, &mut a).unwrap();
        let (_, obs) = &a.hosts_of("r")[0];
        let full = u64::from(u32::MAX);
        assert_eq!((obs.hits, obs.denied, obs.reported), (full + 2, full + 2, 0));
        let ports: Vec<(u16, u64)> = obs.ports.iter().map(|p| (p.port, p.hits)).collect();
        assert_eq!(ports, vec![(443, full + 1), (8443, 1)]);
    }
}
