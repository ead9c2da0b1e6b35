// benchmark harness: a panic is a failed run
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

//! `diff/100k-*`: `policyc::diff::diff` of the generated 100k-pattern policy
//! (the same one `egress-policy`'s decide bench uses) against itself, against
//! a copy with one role edited, with a global deny entry added, and with every
//! role's action flipped (the last two re-decide every role).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode};
use egress_policy::acl;
use egress_policy::pattern;
use egress_policy::policy::{Action, ActionSet};
use policyc::diff;

#[path = "../../egress-policy/benches/support/generated.rs"]
mod generated;
use generated::{LARGE, LARGE_ROLES, acl_yaml};

fn main() {
    let old = acl::check_source("bench.yaml", &acl_yaml(&LARGE), ActionSet::default())
        .policy
        .expect("the generated ACL compiles");
    let mut one_role = old.clone();
    one_role.services[42].action = Action::Open;
    one_role.services[42].allowed_domains.pop();
    let mut global_deny = old.clone();
    global_deny.global_deny_list.push(pattern::parse("*.new-tracker.example").unwrap().pattern);
    // Every role's action flipped: every role is re-decided with its entries and the global lists.
    let mut every_role = old.clone();
    for rule in &mut every_role.services {
        rule.action = if rule.action == Action::Report { Action::Enforce } else { Action::Report };
    }
    assert!(diff::diff(&old, &old).is_empty());
    assert_eq!(diff::diff(&old, &one_role).decisions.len(), 1);
    // Every role and the role-less case lose the new tracker's subdomains.
    assert_eq!(diff::diff(&old, &global_deny).decisions.len(), LARGE_ROLES + 1);
    assert_eq!(diff::diff(&old, &every_role).decisions.len(), LARGE_ROLES);

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("diff");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    let cases = [
        ("100k-same", &old),
        ("100k-one-role", &one_role),
        ("100k-global-deny", &global_deny),
        ("100k-every-role", &every_role),
    ];
    for (name, new) in cases {
        group.bench_function(name, |b| b.iter(|| diff::diff(black_box(&old), black_box(new)).changed_decisions));
    }
    group.finish();
    c.final_summary();
}
