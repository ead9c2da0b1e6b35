// benchmark harness: a panic is a failed run
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

//! Decision-path and table benchmarks.
//!
//! Every input is generated here (no fixture files):
//! - `decide/small`: 1 role × 10 patterns, small global lists;
//! - `decide/large`: 5,000 roles × 20 patterns (100,000) + ~100-entry global
//!   allow/deny lists + a default rule;
//! - `canonicalize_and_decide/large`: `host::canonical` of a raw, mixed-case,
//!   trailing-dot host, then decide (what the proxy pays per request);
//! - `compile/100k`: `acl::check_source` + `table::encode` of the 100k YAML;
//! - `load_and_verify/100k`: `table::decode` of the encoded table;
//! - `decide_v2/small`, `decide_v2/large`: the same policies as `version: v2`,
//!   every role with 3 port ranges and 2 internal destinations, decided with
//!   the port (`decide_at`, port 443) as the proxy does: the same-run pass
//!   prints v2 large against v1 large (target within 10%) and v2 large/small.
//!
//! Under `cargo bench` (criterion gets `--bench`), a final pass re-measures
//! with plain loops, interleaving small and large in several rounds, and
//! prints ratios and targets from this same run, since the machine is noisy.
//! Under `cargo test --benches` that pass is skipped, but the 100k fixture is
//! still built and every benchmark body runs once.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use egress_policy::acl;
use egress_policy::decision::{ListKind, PolicyTable, Reason};
use egress_policy::host::{self, CanonicalHost};
use egress_policy::pattern::PatternMatch;
use egress_policy::policy::{ActionSet, Policy};
use egress_policy::table::{self, Metadata};

#[path = "support/generated.rs"]
mod generated;
use generated::*;

fn compile(yaml: &str) -> (Policy, Vec<u8>) {
    let checked = acl::check_source("bench.yaml", yaml, ActionSet::default());
    let errors: Vec<String> =
        checked.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{d:?}")).take(3).collect();
    let policy = checked.policy.unwrap_or_else(|| panic!("generated ACL must compile; first errors: {errors:#?}"));
    let meta = Metadata::for_source(Path::new("bench.yaml"), yaml.as_bytes(), ActionSet::default());
    let bytes = table::encode(&policy, &meta);
    (policy, bytes)
}

// ---------------------------------------------------------------------------
// Queries: the same mix of hits and misses for both sizes
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Own rule, exact entry.
    Exact,
    /// Own rule, `*.suffix` entry, one label above the suffix.
    WildcardDepth2,
    /// Own rule, `*.suffix` entry, two labels above the suffix.
    WildcardDepth3,
    /// Own rule, nothing matches anywhere: falls through to the action.
    Miss,
    /// Another role's host: a miss for this role (same shape as a hit).
    OtherRolesHost,
    /// Global deny list (exact or wildcard).
    GlobalDeny,
    /// Global allow list (exact or wildcard).
    GlobalAllow,
    /// Unknown or absent role: default rule.
    DefaultRule,
}

/// Weights: mostly allowed traffic, a steady share of misses and list hits.
const MIX: &[(Kind, usize)] = &[
    (Kind::Exact, 25),
    (Kind::WildcardDepth2, 15),
    (Kind::WildcardDepth3, 10),
    (Kind::Miss, 15),
    (Kind::OtherRolesHost, 5),
    (Kind::GlobalDeny, 10),
    (Kind::GlobalAllow, 10),
    (Kind::DefaultRule, 10),
];

struct Query {
    kind: Kind,
    role: Option<String>,
    host: CanonicalHost,
    /// What a client might send: mixed case, trailing dot.
    raw: String,
}

fn pick_kind(rng: &mut Rng) -> Kind {
    let total: usize = MIX.iter().map(|(_, w)| w).sum();
    let mut r = rng.below(total);
    for (kind, w) in MIX {
        if r < *w {
            return *kind;
        }
        r -= w;
    }
    Kind::Miss
}

/// `api-0042-7.example-0042.com` → `aPi-0042-7.ExAmPlE-0042.cOm.`
fn raw_spelling(canonical: &str, rng: &mut Rng) -> String {
    let flip = rng.next();
    let mut out: String = canonical
        .chars()
        .enumerate()
        .map(|(n, c)| if (flip >> (n % 64)) & 1 == 1 { c.to_ascii_uppercase() } else { c })
        .collect();
    out.push('.');
    out
}

fn queries(shape: &Shape, seed: u64) -> Vec<Query> {
    let mut rng = Rng(seed);
    (0..QUERIES)
        .map(|n| {
            let kind = pick_kind(&mut rng);
            let role_ix = rng.below(shape.roles);
            let mut role = Some(role_name(role_ix));
            let text = match kind {
                Kind::Exact => exact_host(role_ix, rng.below(shape.exact_per_role)),
                Kind::WildcardDepth2 => {
                    format!("w{:05}.{}", n, wildcard_suffix(role_ix, rng.below(shape.wildcard_per_role)))
                }
                Kind::WildcardDepth3 => format!(
                    "x{:05}.eu-{}.{}",
                    n,
                    rng.below(10),
                    wildcard_suffix(role_ix, rng.below(shape.wildcard_per_role))
                ),
                Kind::Miss => format!("host-{:05}.unlisted-{:04}.org", n, rng.below(10_000)),
                Kind::OtherRolesHost => {
                    // A role number past the end: never anyone's entry, same shape.
                    exact_host(shape.roles + rng.below(1000), rng.below(10))
                }
                Kind::GlobalDeny => {
                    if rng.below(2) == 0 {
                        deny_exact(rng.below(shape.global_exact))
                    } else {
                        format!("p{:05}.{}", n, deny_wildcard(rng.below(shape.global_wildcard)))
                    }
                }
                Kind::GlobalAllow => {
                    if rng.below(2) == 0 {
                        allow_exact(rng.below(shape.global_exact))
                    } else {
                        format!("a{:05}.{}", n, allow_wildcard(rng.below(shape.global_wildcard)))
                    }
                }
                Kind::DefaultRule => {
                    role = match rng.below(3) {
                        0 => None,
                        _ => Some(format!("svc-{:04}x", rng.below(10_000))),
                    };
                    match rng.below(3) {
                        0 => "time.example.org".to_owned(),
                        1 => format!("s{:05}.status.example.org", n),
                        _ => format!("host-{:05}.unlisted-{:04}.org", n, rng.below(10_000)),
                    }
                }
            };
            let host = host::canonical(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let raw = raw_spelling(&text, &mut rng);
            Query { kind, role, host, raw }
        })
        .collect()
}

/// Checks that every query decides the way its kind says, so the mix really
/// exercises the paths it claims to.
fn check_queries(table: &PolicyTable, queries: &[Query]) {
    check_queries_with(queries, |q| table.decide(q.role.as_deref(), &q.host));
}

/// The same check for the v2 tables, decided at port 443.
fn check_queries_v2(table: &PolicyTable, queries: &[Query]) {
    check_queries_with(queries, |q| table.decide_at(q.role.as_deref(), &q.host, V2_PORT));
}

fn check_queries_with<'t>(queries: &[Query], decide: impl Fn(&Query) -> egress_policy::decision::Decision<'t>) {
    for q in queries {
        let d = decide(q);
        let ok = match q.kind {
            Kind::Exact => {
                matches!(d.matched, Some((ListKind::AllowedDomains, PatternMatch::Exact(_))))
            }
            Kind::WildcardDepth2 | Kind::WildcardDepth3 => {
                matches!(d.matched, Some((ListKind::AllowedDomains, PatternMatch::Wildcard(_))))
            }
            Kind::Miss | Kind::OtherRolesHost => d.matched.is_none() && !d.default_rule(),
            Kind::GlobalDeny => d.reason == Reason::GlobalDenyList,
            Kind::GlobalAllow => d.reason == Reason::GlobalAllowList,
            Kind::DefaultRule => d.default_rule(),
        };
        assert!(ok, "{:?} {:?} {}: decided {:?}", q.kind, q.role, q.host, d);
        let again = host::canonical(&q.raw).unwrap();
        assert_eq!(again, q.host, "raw spelling {:?}", q.raw);
    }
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The port the v2 queries connect to (inside every role's `allowed_ports`).
const V2_PORT: u16 = 443;

struct Fixtures {
    v2_small: PolicyTable,
    v2_large: PolicyTable,
    small: PolicyTable,
    small_queries: Vec<Query>,
    large: PolicyTable,
    large_queries: Vec<Query>,
    large_yaml: String,
    large_bytes: Vec<u8>,
}

impl Fixtures {
    fn build() -> Self {
        let started = Instant::now();
        let (small_policy, _) = compile(&acl_yaml(&SMALL));
        assert_eq!(small_policy.services.len(), 1);
        assert_eq!(small_policy.services[0].allowed_domains.len(), 10);
        let small = PolicyTable::new(&small_policy);
        let small_queries = queries(&SMALL, 0x5eed_0001);
        check_queries(&small, &small_queries);

        let large_yaml = acl_yaml(&LARGE);
        let (large_policy, large_bytes) = compile(&large_yaml);
        assert_eq!(large_policy.services.len(), LARGE_ROLES);
        let service_patterns: usize = large_policy.services.iter().map(|r| r.allowed_domains.len()).sum();
        assert_eq!(service_patterns, LARGE_ROLES * PATTERNS_PER_ROLE);
        // Decide with the table as the proxy loads it: decoded and verified.
        let loaded = table::decode(&large_bytes).expect("encoded table must decode");
        assert_eq!(loaded.policy.pattern_count(), large_policy.pattern_count());
        let large = loaded.table;
        let large_queries = queries(&LARGE, 0x5eed_0002);
        check_queries(&large, &large_queries);

        let (v2_small_policy, _) = compile(&acl_yaml_v2(&SMALL));
        let v2_small = PolicyTable::new(&v2_small_policy);
        check_queries_v2(&v2_small, &small_queries);
        let (v2_large_policy, v2_large_bytes) = compile(&acl_yaml_v2(&LARGE));
        assert_eq!(v2_large_policy.internal_destination_count(), LARGE_ROLES * V2_INTERNAL_PER_ROLE);
        assert_eq!(v2_large_policy.port_rule_count(), LARGE_ROLES);
        let v2_large = table::decode(&v2_large_bytes).expect("encoded v2 table must decode").table;
        check_queries_v2(&v2_large, &large_queries);
        // The exceptions really decide: one role's database on its port.
        let db = host::canonical(&internal_host(7, 1)).unwrap();
        let d = v2_large.decide_at(Some(&role_name(7)), &db, 5433);
        assert_eq!(d.reason, Reason::InternalDestination, "{d:?}");

        eprintln!(
            "fixtures: large ACL {:.1} MiB YAML, {} patterns, table {:.1} MiB; {} queries per set; built in {:.1?}",
            large_yaml.len() as f64 / (1024.0 * 1024.0),
            large_policy.pattern_count(),
            large_bytes.len() as f64 / (1024.0 * 1024.0),
            QUERIES,
            started.elapsed()
        );
        Fixtures { v2_small, v2_large, small, small_queries, large, large_queries, large_yaml, large_bytes }
    }
}

// ---------------------------------------------------------------------------
// Criterion groups
// ---------------------------------------------------------------------------

/// One decision, cycling through the query set.
#[inline(always)]
fn decide_next(table: &PolicyTable, queries: &[Query], i: &mut usize) {
    let q = &queries[*i & QUERY_MASK];
    *i = i.wrapping_add(1);
    black_box(table.decide(black_box(q.role.as_deref()), black_box(&q.host)));
}

/// One v2 decision at port 443, cycling through the query set.
#[inline(always)]
fn decide_v2_next(table: &PolicyTable, queries: &[Query], i: &mut usize) {
    let q = &queries[*i & QUERY_MASK];
    *i = i.wrapping_add(1);
    black_box(table.decide_at(black_box(q.role.as_deref()), black_box(&q.host), black_box(V2_PORT)));
}

#[inline(always)]
fn canonicalize_and_decide_next(table: &PolicyTable, queries: &[Query], i: &mut usize) {
    let q = &queries[*i & QUERY_MASK];
    *i = i.wrapping_add(1);
    let host = host::canonical(black_box(&q.raw)).unwrap();
    black_box(table.decide(black_box(q.role.as_deref()), &host));
}

fn bench_decide(c: &mut Criterion, fx: &Fixtures) {
    let mut group = c.benchmark_group("decide");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("small", |b| {
        let mut i = 0;
        b.iter(|| decide_next(&fx.small, &fx.small_queries, &mut i));
    });
    group.bench_function("large", |b| {
        let mut i = 0;
        b.iter(|| decide_next(&fx.large, &fx.large_queries, &mut i));
    });
    group.finish();

    let mut group = c.benchmark_group("decide_v2");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("small", |b| {
        let mut i = 0;
        b.iter(|| decide_v2_next(&fx.v2_small, &fx.small_queries, &mut i));
    });
    group.bench_function("large", |b| {
        let mut i = 0;
        b.iter(|| decide_v2_next(&fx.v2_large, &fx.large_queries, &mut i));
    });
    group.finish();

    let mut group = c.benchmark_group("canonicalize_and_decide");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("large", |b| {
        let mut i = 0;
        b.iter(|| canonicalize_and_decide_next(&fx.large, &fx.large_queries, &mut i));
    });
    group.finish();
}

fn bench_tables(c: &mut Criterion, fx: &Fixtures) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("100k", |b| b.iter(|| compile(black_box(&fx.large_yaml)).1.len()));
    group.finish();

    let mut group = c.benchmark_group("load_and_verify");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("100k", |b| {
        b.iter(|| table::decode(black_box(&fx.large_bytes)).expect("decodes"));
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// Same-run ratios
// ---------------------------------------------------------------------------

const RATIO_ROUNDS: usize = 9;
const CALLS_PER_ROUND: usize = 200_000;

fn per_call_ns(mut step: impl FnMut(&mut usize), calls: usize) -> f64 {
    let mut i = 0;
    let start = Instant::now();
    for _ in 0..calls {
        step(&mut i);
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

fn missed(ok: bool) -> &'static str {
    if ok { "" } else { " MISSED" }
}

fn print_ratios(fx: &Fixtures) {
    let small = |i: &mut usize| decide_next(&fx.small, &fx.small_queries, i);
    let large = |i: &mut usize| decide_next(&fx.large, &fx.large_queries, i);
    let canon = |i: &mut usize| canonicalize_and_decide_next(&fx.large, &fx.large_queries, i);
    let v2_small = |i: &mut usize| decide_v2_next(&fx.v2_small, &fx.small_queries, i);
    let v2_large = |i: &mut usize| decide_v2_next(&fx.v2_large, &fx.large_queries, i);

    // Warm caches and branch predictors once, then interleave the rounds so
    // that a noisy neighbour hits all three alike.
    per_call_ns(small, CALLS_PER_ROUND / 4);
    per_call_ns(large, CALLS_PER_ROUND / 4);
    per_call_ns(canon, CALLS_PER_ROUND / 4);
    per_call_ns(v2_small, CALLS_PER_ROUND / 4);
    per_call_ns(v2_large, CALLS_PER_ROUND / 4);
    let (mut s, mut l, mut c, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut v2s, mut v2l, mut v2r, mut v2_vs_v1) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RATIO_ROUNDS {
        let sn = per_call_ns(small, CALLS_PER_ROUND);
        let ln = per_call_ns(large, CALLS_PER_ROUND);
        c.push(per_call_ns(canon, CALLS_PER_ROUND));
        let v2sn = per_call_ns(v2_small, CALLS_PER_ROUND);
        let v2ln = per_call_ns(v2_large, CALLS_PER_ROUND);
        s.push(sn);
        l.push(ln);
        r.push(ln / sn);
        v2s.push(v2sn);
        v2l.push(v2ln);
        v2r.push(v2ln / v2sn);
        v2_vs_v1.push(v2ln / ln);
    }
    // Whole compile and load runs: a few each, median.
    let compile_s = median(
        (0..3)
            .map(|_| {
                let start = Instant::now();
                black_box(compile(black_box(&fx.large_yaml)).1.len());
                start.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let load_ms = median(
        (0..9)
            .map(|_| {
                let start = Instant::now();
                black_box(table::decode(black_box(&fx.large_bytes)).expect("decodes"));
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );

    let (small_ns, large_ns, canon_ns) = (median(s), median(l), median(c));
    // Median of the per-round ratios: each ratio compares measurements taken
    // back to back, which is what survives a noisy machine.
    let ratio = median(r);
    println!();
    println!("same-run re-measurement: {RATIO_ROUNDS} interleaved rounds × {CALLS_PER_ROUND} calls, medians");
    println!("ratio decide large/small = {ratio:.2} (target <= 1.5){}", missed(ratio <= 1.5));
    println!("decide small median = {small_ns:.0} ns/call");
    println!("decide large median = {large_ns:.0} ns/call (target <= 250){}", missed(large_ns <= 250.0));
    println!("canonicalize_and_decide large median = {canon_ns:.0} ns/call (no target)");
    let (v2_small_ns, v2_large_ns) = (median(v2s), median(v2l));
    let (v2_ratio, v2_vs_v1) = (median(v2r), median(v2_vs_v1));
    println!(
        "decide_v2 small median = {v2_small_ns:.0} ns/call (5,000-role v2 shape: 3 port ranges, 2 internal destinations per role)"
    );
    println!("decide_v2 large median = {v2_large_ns:.0} ns/call");
    println!("ratio decide_v2 large / decide large (v1) = {v2_vs_v1:.2} (target <= 1.10){}", missed(v2_vs_v1 <= 1.10));
    println!("ratio decide_v2 large/small = {v2_ratio:.2} (target <= 1.5){}", missed(v2_ratio <= 1.5));
    println!("compile 100k = {compile_s:.2} s (target <= 1 s){}", missed(compile_s <= 1.0));
    println!("load_and_verify 100k = {load_ms:.0} ms (target <= 100 ms){}", missed(load_ms <= 100.0));
}

/// Criterion runs benchmarks only when cargo passes `--bench` (and not
/// `--test`, `--list` or `--profile-time`); otherwise it is test mode, where
/// each body runs once and the same-run loops are skipped.
fn benchmark_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"))
}

fn main() {
    let fx = Fixtures::build();
    let mut c = Criterion::default().configure_from_args();
    bench_decide(&mut c, &fx);
    bench_tables(&mut c, &fx);
    c.final_summary();
    if benchmark_mode() {
        print_ratios(&fx);
    }
}
