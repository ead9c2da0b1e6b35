//! The one instrumentation facade. The request path calls one typed method
//! per event ([`Metrics::decision`], [`Metrics::dns_lookup`],
//! [`Metrics::connect_attempt`], ...); each method updates the counters the
//! Prometheus renderer ([`Metrics::render`], served at `/metrics`) reads and,
//! when statsd is configured, queues one event for [`crate::statsd`].
//! The event vocabulary lives in [`crate::events`]; what `/metrics` says
//! about the policy arrives as a [`PolicyReport`] from the caller, so this
//! module never imports the reload code that feeds it.
//!
//! Hot path: atomics only and no allocation per request (the per-role
//! counters are found through a lock-free snapshot of the active policy's
//! roles). The one lock is a short one per address-stage denial, keyed by
//! the classifier's bounded rule codes; nothing here runs per byte. Labels are bounded: a `role` label exists only for
//! roles with a rule in the active policy; other roles fold into
//! [`ROLE_OTHER`], clients without a role into [`ROLE_NONE`]. Hosts, client
//! addresses and trace ids never become labels. This module does no I/O.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use egress_policy::address::AddressRule;
use egress_policy::decision::{Decision, Reason, RuleRef, Verdict};
use egress_policy::table::CompiledTable;

use crate::events::Event;
pub use crate::events::{ConnectErrorKind, DnsResult, RoleTags, sanitise_tag};
use crate::statsd::StatsdSink;

/// The `role` label of clients without a role. Real roles never start with
/// `:` followed by anything but `:` (see [`role_label`]), so it cannot collide.
pub const ROLE_NONE: &str = ":none";
/// The `role` label of clients whose role has no rule in the active policy.
pub const ROLE_OTHER: &str = ":other";

/// What `/metrics` says about the policy, read by the caller from the
/// reload state (so this module never imports it).
#[derive(Clone, Copy, Debug, Default)]
pub struct PolicyReport<'a> {
    /// The active table's revision; `None` before a policy is loaded.
    pub revision: Option<&'a str>,
    /// When the active table was loaded (at start or by the last swap); `None` before a policy is loaded.
    pub loaded_at: Option<std::time::SystemTime>,
    /// Reload attempts by result (`swapped`, `unchanged`, `refused`), in rendering order.
    pub reloads: &'a [(&'static str, u64)],
}

/// What `/metrics` says about the log sink, read by the caller from
/// `log::sink_state` (so this module never imports `log`, which would close
/// the cycle `log` → `config` → `policy_fetch` → `metrics`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogSinkReport {
    pub stalled: bool,
    pub dropped_decisions: u64,
    pub dropped_closes: u64,
    pub dropped_other: u64,
    pub buffered_bytes: usize,
}

/// The `role` label of a role with its own rule: its name, with one more
/// leading `:` if it starts with `:` (so `:none` the role is `::none`).
pub fn role_label(name: &str) -> String {
    if name.starts_with(':') { format!(":{name}") } else { name.to_owned() }
}

/// Results of a `--policy-url` fetch.
pub const POLICY_FETCH_RESULTS: [&str; 3] = ["updated", "not_modified", "failed"];

/// How every request ended: `tunnel`, a refusal kind (`answer::Refusal::kind`), or `client_gone`.
/// New outcomes are appended, so existing series keep their order.
pub const OUTCOMES: [&str; 18] = [
    "tunnel",
    "bad_request",
    "not_connect",
    "denied",
    "missing_role",
    "proxy_auth_required",
    "proxy_auth_invalid",
    "tunnel_cap",
    "draining",
    "dns_timeout",
    "dns_error",
    "connect_error",
    "connect_timeout",
    "client_gone",
    "no_policy",
    "client_tunnel_cap",
    "client_request_rate",
    "log_stalled",
];

/// A histogram with fixed bucket bounds, in integer base units (microseconds
/// or bytes), rendered divided by `divisor` (1e6 for seconds, 1 for bytes).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    /// Non-cumulative counts per bucket; the last is above every bound.
    buckets: [AtomicU64; N],
    above: AtomicU64,
    sum: AtomicU64,
    count: AtomicU64,
    divisor: f64,
}

/// Latency buckets in microseconds: 1 ms to 10 s.
const LATENCY_US: [u64; 12] =
    [1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000];
/// Tunnel lifetimes in microseconds: 10 ms to 1 h.
const LIFETIME_US: [u64; 10] = [
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    1_800_000_000,
    3_600_000_000,
    21_600_000_000,
];
/// Tunnel bytes per direction: 1 KiB to 1 GiB, by 4.
const BYTES: [u64; 11] =
    [1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28, 1 << 30];

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: &'static [u64; N], divisor: f64) -> Self {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            above: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            divisor,
        }
    }

    pub fn observe(&self, value: u64) {
        match self.bounds.iter().position(|bound| value <= *bound).and_then(|i| self.buckets.get(i)) {
            Some(bucket) => bucket.fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// `_bucket` lines (cumulative, `le` in scaled units), `_sum` and `_count`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / self.divisor;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.above.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.divisor;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Decision counters of one `role` label. They outlive reloads that keep the role.
#[derive(Debug)]
struct RoleCounters {
    label: Box<str>,
    /// `[verdict][reason]`, flattened.
    decisions: [AtomicU64; Verdict::ALL.len() * Reason::ALL.len()],
}

impl RoleCounters {
    fn new(label: String) -> Arc<Self> {
        Arc::new(RoleCounters { label: label.into(), decisions: std::array::from_fn(|_| AtomicU64::new(0)) })
    }
}

/// A role as the active policy sees it: its counters and its statsd tags.
#[derive(Debug)]
struct RoleSlot {
    counters: Arc<RoleCounters>,
    tags: Arc<RoleTags>,
}

/// The active policy's roles.
#[derive(Debug)]
struct RoleMap {
    named: HashMap<Box<str>, RoleSlot>,
    none: RoleSlot,
    other: RoleSlot,
}

/// Everything `proxyd` counts.
#[derive(Debug)]
pub struct Metrics {
    roles: ArcSwap<RoleMap>,
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// Address-stage denials by rule code (bounded: the classifier's codes).
    address_denials: Mutex<Vec<(&'static str, u64)>>,
    dns_lookups: AtomicU64,
    dns_timeouts: AtomicU64,
    dns_errors: AtomicU64,
    dns_latency: Histogram<12>,
    connect_attempts: AtomicU64,
    connect_failures: [AtomicU64; 5],
    connect_latency: Histogram<12>,
    tunnels_active: AtomicI64,
    /// The tunnel cap, for `proxyd_tunnels_max`; 0 until the server sets it.
    tunnel_cap: AtomicU64,
    tunnel_duration: Histogram<10>,
    tunnel_bytes_in: Histogram<11>,
    tunnel_bytes_out: Histogram<11>,
    statsd: Option<StatsdSink>,
    statsd_dropped: AtomicU64,
    time_connect: bool,
    /// Serial of the active table's signature block; 0 when unsigned.
    policy_serial: AtomicU64,
    /// `--policy-url` fetches by result (updated, not_modified, failed).
    policy_fetches: [AtomicU64; 3],
}

impl Metrics {
    /// A facade with no policy yet; `statsd` receives events when given.
    pub fn new(statsd: Option<StatsdSink>, time_connect: bool) -> Self {
        let empty = |label: &str| RoleSlot {
            counters: RoleCounters::new(label.to_owned()),
            tags: Arc::new(RoleTags::new(label, "")),
        };
        Metrics {
            roles: ArcSwap::from_pointee(RoleMap {
                named: HashMap::new(),
                none: empty(ROLE_NONE),
                other: empty(ROLE_OTHER),
            }),
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            address_denials: Mutex::new(Vec::new()),
            dns_lookups: AtomicU64::new(0),
            dns_timeouts: AtomicU64::new(0),
            dns_errors: AtomicU64::new(0),
            dns_latency: Histogram::new(&LATENCY_US, 1e6),
            connect_attempts: AtomicU64::new(0),
            connect_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            connect_latency: Histogram::new(&LATENCY_US, 1e6),
            tunnels_active: AtomicI64::new(0),
            tunnel_cap: AtomicU64::new(0),
            tunnel_duration: Histogram::new(&LIFETIME_US, 1e6),
            tunnel_bytes_in: Histogram::new(&BYTES, 1.0),
            tunnel_bytes_out: Histogram::new(&BYTES, 1.0),
            statsd,
            statsd_dropped: AtomicU64::new(0),
            time_connect,
            policy_serial: AtomicU64::new(0),
            policy_fetches: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn send(&self, event: Event) {
        if let Some(sink) = &self.statsd
            && !sink.try_send(event)
        {
            self.statsd_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A policy became active: its roles get labels; roles it no longer has
    /// fold into [`ROLE_OTHER`]; counters of roles it keeps carry on.
    pub fn policy_activated(&self, table: &CompiledTable) {
        self.policy_serial.store(table.signature.as_ref().map_or(0, |s| s.serial), Ordering::Relaxed);
        let old = self.roles.load();
        let default_project = table.policy.default.as_ref().map_or("", |d| d.project.as_str());
        let tags = |counters: Arc<RoleCounters>, role: &str, project: &str| RoleSlot {
            counters,
            tags: Arc::new(RoleTags::new(role, project)),
        };
        let named = table
            .policy
            .services
            .iter()
            .map(|rule| {
                let counters = match old.named.get(rule.name.as_str()) {
                    Some(kept) => Arc::clone(&kept.counters),
                    None => RoleCounters::new(role_label(&rule.name)),
                };
                let label = counters.label.to_string();
                (Box::<str>::from(rule.name.as_str()), tags(counters, &label, &rule.project))
            })
            .collect();
        let none = tags(Arc::clone(&old.none.counters), ROLE_NONE, default_project);
        let other = tags(Arc::clone(&old.other.counters), ROLE_OTHER, default_project);
        self.roles.store(Arc::new(RoleMap { named, none, other }));
    }

    /// The name stage decided. Returns the role's tags for the tunnel's close.
    pub fn decision(&self, role: Option<&str>, decision: &Decision<'_>) -> Arc<RoleTags> {
        let roles = self.roles.load();
        let slot = match (decision.rule, role) {
            (RuleRef::Service(name), _) => roles.named.get(name).unwrap_or(&roles.other),
            (_, None) => &roles.none,
            (_, Some(_)) => &roles.other,
        };
        let cell = decision.verdict.index() * Reason::ALL.len() + decision.reason.index();
        if let Some(counter) = slot.counters.decisions.get(cell) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let tags = Arc::clone(&slot.tags);
        if self.statsd.is_some() {
            self.send(Event::Acl {
                verdict: decision.verdict,
                default_rule: decision.default_rule(),
                tags: Arc::clone(&tags),
            });
        }
        tags
    }

    /// How a request ended: `"tunnel"`, a refusal kind, or `"client_gone"`.
    /// One `--policy-url` fetch ended: `updated`, `not_modified` or `failed`.
    pub fn policy_fetch(&self, result: &str) {
        if let Some(i) = POLICY_FETCH_RESULTS.iter().position(|r| *r == result)
            && let Some(counter) = self.policy_fetches.get(i)
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn request(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome)
            && let Some(counter) = self.outcomes.get(i)
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if outcome == "tunnel_cap" {
            self.send(Event::TunnelCap);
        }
    }

    /// The address stage refused every address of a request.
    pub fn address_denied(&self, rule: &AddressRule) {
        let code = rule.code();
        if let Ok(mut denials) = self.address_denials.lock() {
            match denials.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => denials.push((code, 1)),
            }
        }
        self.send(Event::ResolverError);
    }

    /// One DNS lookup (A and AAAA) finished.
    pub fn dns_lookup(&self, elapsed: Duration, result: DnsResult) {
        self.dns_lookups.fetch_add(1, Ordering::Relaxed);
        self.dns_latency.observe_duration(elapsed);
        self.send(Event::ResolverAttempt);
        match result {
            DnsResult::Ok => self.send(Event::ResolverTime(elapsed)),
            DnsResult::Timeout => {
                self.dns_timeouts.fetch_add(1, Ordering::Relaxed);
                self.send(Event::ResolverError);
            }
            DnsResult::Error => {
                self.dns_errors.fetch_add(1, Ordering::Relaxed);
                self.send(Event::ResolverError);
            }
        }
    }

    /// One TCP connection attempt to a checked address finished.
    pub fn connect_attempt(&self, elapsed: Duration, failure: Option<ConnectErrorKind>) {
        self.connect_attempts.fetch_add(1, Ordering::Relaxed);
        self.connect_latency.observe_duration(elapsed);
        self.send(Event::ConnectAttempt { success: failure.is_none() });
        if let Some(kind) = failure {
            if let Some(counter) = self.connect_failures.get(kind.index()) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            self.send(Event::ConnectError(kind));
        }
        if self.time_connect {
            self.send(Event::ConnectTime(elapsed));
        }
    }

    /// Requests by outcome since start (`tunnel` and each refusal kind), for the console.
    pub fn outcome_counts(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES.iter().zip(&self.outcomes).map(|(name, n)| (*name, n.load(Ordering::Relaxed))).collect()
    }

    /// Tunnels open now, for the console.
    pub fn tunnels_active(&self) -> i64 {
        self.tunnels_active.load(Ordering::Relaxed)
    }

    /// The configured tunnel cap, exported so alerts can compare the active count with it.
    pub fn set_tunnel_cap(&self, cap: usize) {
        self.tunnel_cap.store(u64::try_from(cap).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A tunnel opened; the guard counts it as active until it is closed or dropped.
    pub fn tunnel_opened(self: &Arc<Self>) -> OpenTunnel {
        self.tunnels_active.fetch_add(1, Ordering::Relaxed);
        OpenTunnel { metrics: Arc::clone(self) }
    }

    /// The Prometheus text exposition (format 0.0.4). `ready` is what `/readyz` says;
    /// `policy` is what the caller read from the reload state (the one record of the
    /// reload counts), handed over as plain values so this module never depends on it.
    pub fn render(&self, policy: &PolicyReport<'_>, sink: &LogSinkReport, ready: bool) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        header(&mut out, "proxyd_build_info", "gauge", "Always 1; the version label is the proxyd version.");
        let _ = writeln!(out, "proxyd_build_info{{version=\"{}\"}} 1", escape_label(env!("CARGO_PKG_VERSION")));

        header(
            &mut out,
            "proxyd_policy_info",
            "gauge",
            "Always 1; the revision label is the active policy's revision.",
        );
        if let Some(revision) = policy.revision {
            let _ = writeln!(out, "proxyd_policy_info{{revision=\"{}\"}} 1", escape_label(revision));
        }

        header(
            &mut out,
            "proxyd_policy_loaded_timestamp_seconds",
            "gauge",
            "Unix time the active policy was loaded: at start, or by the last reload that swapped it.",
        );
        if let Some(loaded_at) = policy.loaded_at {
            let loaded = loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let _ = writeln!(out, "proxyd_policy_loaded_timestamp_seconds {loaded}");
        }

        header(
            &mut out,
            "proxyd_ready",
            "gauge",
            "1 when /readyz answers 200: a policy is loaded, accepting, not draining.",
        );
        let _ = writeln!(out, "proxyd_ready {}", u8::from(ready));

        header(
            &mut out,
            "proxyd_requests_total",
            "counter",
            "CONNECT requests by outcome: tunnel, a refusal kind, or client_gone.",
        );
        for (outcome, counter) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(out, "proxyd_requests_total{{outcome=\"{outcome}\"}} {}", load(counter));
        }

        header(
            &mut out,
            "proxyd_decisions_total",
            "counter",
            "Name-stage decisions by result, reason code and role (roles of the active policy; :other, :none).",
        );
        let roles = self.roles.load();
        let mut slots: Vec<&RoleSlot> = roles.named.values().collect();
        slots.sort_by(|a, b| a.counters.label.cmp(&b.counters.label));
        slots.push(&roles.other);
        slots.push(&roles.none);
        for slot in slots {
            let role = escape_label(&slot.counters.label);
            for (v, verdict) in Verdict::ALL.iter().enumerate() {
                for (r, reason) in Reason::ALL.iter().enumerate() {
                    let n = slot.counters.decisions.get(v * Reason::ALL.len() + r).map_or(0, load);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "proxyd_decisions_total{{result=\"{}\",reason=\"{}\",role=\"{role}\"}} {n}",
                            verdict.as_str(),
                            reason.code()
                        );
                    }
                }
            }
        }

        header(
            &mut out,
            "proxyd_address_denials_total",
            "counter",
            "Requests refused by the address stage, by rule code.",
        );
        let mut denials = self.address_denials.lock().map(|d| d.clone()).unwrap_or_default();
        denials.sort_unstable();
        for (rule, n) in denials {
            let _ = writeln!(out, "proxyd_address_denials_total{{rule=\"{}\"}} {n}", escape_label(rule));
        }

        header(&mut out, "proxyd_dns_lookups_total", "counter", "DNS lookups (A and AAAA for one name).");
        let _ = writeln!(out, "proxyd_dns_lookups_total {}", load(&self.dns_lookups));
        header(&mut out, "proxyd_dns_failures_total", "counter", "DNS lookups that failed, by kind.");
        let _ = writeln!(out, "proxyd_dns_failures_total{{kind=\"timeout\"}} {}", load(&self.dns_timeouts));
        let _ = writeln!(out, "proxyd_dns_failures_total{{kind=\"error\"}} {}", load(&self.dns_errors));
        header(&mut out, "proxyd_dns_lookup_duration_seconds", "histogram", "Time of each DNS lookup.");
        self.dns_latency.render(&mut out, "proxyd_dns_lookup_duration_seconds", "");

        header(&mut out, "proxyd_connect_attempts_total", "counter", "TCP connection attempts to checked addresses.");
        let _ = writeln!(out, "proxyd_connect_attempts_total {}", load(&self.connect_attempts));
        header(&mut out, "proxyd_connect_failures_total", "counter", "Failed connection attempts, by kind.");
        for (kind, counter) in ConnectErrorKind::ALL.iter().zip(&self.connect_failures) {
            let _ = writeln!(out, "proxyd_connect_failures_total{{kind=\"{}\"}} {}", kind.as_str(), load(counter));
        }
        header(&mut out, "proxyd_connect_duration_seconds", "histogram", "Time of each connection attempt.");
        self.connect_latency.render(&mut out, "proxyd_connect_duration_seconds", "");

        header(&mut out, "proxyd_tunnels_active", "gauge", "Tunnels open now.");
        let _ = writeln!(out, "proxyd_tunnels_active {}", self.tunnels_active.load(Ordering::Relaxed));
        let cap = load(&self.tunnel_cap);
        if cap > 0 {
            header(
                &mut out,
                "proxyd_tunnels_max",
                "gauge",
                "The tunnel cap (max_concurrent_connect_tunnels); beyond it clients get 429.",
            );
            let _ = writeln!(out, "proxyd_tunnels_max {cap}");
        }
        header(&mut out, "proxyd_tunnel_duration_seconds", "histogram", "Lifetime of each closed tunnel.");
        self.tunnel_duration.render(&mut out, "proxyd_tunnel_duration_seconds", "");
        header(
            &mut out,
            "proxyd_tunnel_bytes",
            "histogram",
            "Bytes per closed tunnel; direction out is client to upstream, in is upstream to client.",
        );
        self.tunnel_bytes_in.render(&mut out, "proxyd_tunnel_bytes", "direction=\"in\"");
        self.tunnel_bytes_out.render(&mut out, "proxyd_tunnel_bytes", "direction=\"out\"");
        header(
            &mut out,
            "proxyd_tunnel_cap_rejections_total",
            "counter",
            "Requests refused with 429: the tunnel cap was full.",
        );
        let tunnel_cap = OUTCOMES.iter().position(|o| *o == "tunnel_cap").and_then(|i| self.outcomes.get(i));
        let _ = writeln!(out, "proxyd_tunnel_cap_rejections_total {}", tunnel_cap.map_or(0, load));

        header(&mut out, "proxyd_policy_reloads_total", "counter", "Policy reload attempts by result.");
        for (result, count) in policy.reloads {
            let _ = writeln!(out, "proxyd_policy_reloads_total{{result=\"{result}\"}} {count}");
        }

        header(
            &mut out,
            "proxyd_policy_serial",
            "gauge",
            "Serial of the active table's signature (0 when the table is unsigned).",
        );
        let _ = writeln!(out, "proxyd_policy_serial {}", load(&self.policy_serial));
        header(&mut out, "proxyd_policy_fetch_total", "counter", "--policy-url fetches by result.");
        for (result, counter) in POLICY_FETCH_RESULTS.iter().zip(&self.policy_fetches) {
            let _ = writeln!(out, "proxyd_policy_fetch_total{{result=\"{result}\"}} {}", load(counter));
        }

        header(&mut out, "proxyd_statsd_dropped_total", "counter", "statsd events dropped because the queue was full.");
        let _ = writeln!(out, "proxyd_statsd_dropped_total {}", load(&self.statsd_dropped));
        header(
            &mut out,
            "proxyd_log_sink_stalled",
            "gauge",
            "1 while no log write has completed for longer than --log-stall-timeout with lines to write (or writes fail).",
        );
        let _ = writeln!(out, "proxyd_log_sink_stalled {}", u8::from(sink.stalled));
        header(
            &mut out,
            "proxyd_log_lines_dropped_total",
            "counter",
            "Log lines never written, by line (decision, close, other): the buffer was full (sink stalled or slow) or the write failed.",
        );
        let _ = writeln!(out, "proxyd_log_lines_dropped_total{{line=\"decision\"}} {}", sink.dropped_decisions);
        let _ = writeln!(out, "proxyd_log_lines_dropped_total{{line=\"close\"}} {}", sink.dropped_closes);
        let _ = writeln!(out, "proxyd_log_lines_dropped_total{{line=\"other\"}} {}", sink.dropped_other);
        header(&mut out, "proxyd_log_buffer_bytes", "gauge", "Bytes of log lines waiting to be written.");
        let _ = writeln!(out, "proxyd_log_buffer_bytes {}", sink.buffered_bytes);
        out
    }
}

/// Keeps a tunnel counted as active; [`OpenTunnel::closed`] records its numbers.
#[derive(Debug)]
pub struct OpenTunnel {
    metrics: Arc<Metrics>,
}

impl OpenTunnel {
    pub fn closed(self, tags: Arc<RoleTags>, duration: Duration, bytes_in: u64, bytes_out: u64) {
        let m = &self.metrics;
        m.tunnel_duration.observe_duration(duration);
        m.tunnel_bytes_in.observe(bytes_in);
        m.tunnel_bytes_out.observe(bytes_out);
        m.send(Event::Close { tags, duration, bytes_in, bytes_out });
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.metrics.tunnels_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value in the text format: `\`, `"` and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: `\` and newline escaped.
fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label("plain-role.x"), "plain-role.x");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn role_labels_cannot_collide_with_the_folded_values() {
        assert_eq!(role_label("svc"), "svc");
        assert_eq!(role_label(":none"), "::none");
        assert_eq!(role_label(":other"), "::other");
        assert_ne!(role_label(ROLE_NONE), ROLE_NONE);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        static BOUNDS: [u64; 3] = [10, 100, 1000];
        let h = Histogram::new(&BOUNDS, 1.0);
        for v in [0, 10, 11, 100, 999, 1000, 1001, 5000] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "h", "k=\"v\"");
        assert_eq!(
            out,
            "h_bucket{k=\"v\",le=\"10\"} 2\nh_bucket{k=\"v\",le=\"100\"} 4\nh_bucket{k=\"v\",le=\"1000\"} 6\n\
             h_bucket{k=\"v\",le=\"+Inf\"} 8\nh_sum{k=\"v\"} 8121\nh_count{k=\"v\"} 8\n"
        );
        let seconds = Histogram::new(&LATENCY_US, 1e6);
        seconds.observe_duration(Duration::from_millis(3));
        let mut out = String::new();
        seconds.render(&mut out, "s", "");
        assert!(
            out.starts_with("s_bucket{le=\"0.001\"} 0\ns_bucket{le=\"0.0025\"} 0\ns_bucket{le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(out.ends_with("s_sum 0.003\ns_count 1\n"), "{out}");
    }

    #[test]
    fn a_full_statsd_queue_drops_and_counts() {
        let (sink, mut queued) = StatsdSink::undrained(2);
        let metrics = Metrics::new(Some(sink), true);
        // Three events: the attempt and its connect time fit, the third is dropped.
        metrics.connect_attempt(Duration::from_millis(1), None);
        metrics.request("tunnel_cap");
        assert!(
            metrics
                .render(&PolicyReport::default(), &LogSinkReport::default(), true)
                .contains("\nproxyd_statsd_dropped_total 1\n")
        );
        assert!(matches!(queued.try_recv(), Ok(Event::ConnectAttempt { success: true })));
        assert!(matches!(queued.try_recv(), Ok(Event::ConnectTime(_))));
        assert!(queued.try_recv().is_err());
    }

    #[test]
    fn decisions_hand_back_the_policy_roles_sanitised_statsd_tags() {
        let yaml = "version: v1\nservices:\n  - name: \"a,b:c\"\n    project: \"p|q\"\n    action: open\n";
        let policy = egress_policy::acl::check_source("t.yaml", yaml, Default::default()).policy.unwrap();
        let bytes = egress_policy::table::encode(
            &policy,
            &egress_policy::table::Metadata::for_source(
                std::path::Path::new("t.yaml"),
                yaml.as_bytes(),
                Default::default(),
            ),
        );
        let table = egress_policy::table::decode(&bytes).unwrap();
        let metrics = Metrics::new(None, false);
        metrics.policy_activated(&table);
        let host = egress_policy::host::canonical("x.test").unwrap();
        let tags = metrics.decision(Some("a,b:c"), &table.table.decide(Some("a,b:c"), &host));
        assert_eq!((&*tags.statsd_role, &*tags.statsd_project), ("a_b_c", "p_q"));
        let tags = metrics.decision(None, &table.table.decide(None, &host));
        assert_eq!((&*tags.statsd_role, &*tags.statsd_project), ("_none", ""));
    }
}
