//! Any bytes as an ACL file: the checker never panics, and a policy it accepts
//! survives encode → decode and decides exactly as before.
#![no_main]

use std::path::Path;

use egress_policy::decision::PolicyTable;
use egress_policy::policy::ActionSet;
use egress_policy::{acl, host, table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(policy) = acl::check_bytes("fuzz.yaml", data, ActionSet::default()).policy else {
        return;
    };
    let metadata = table::Metadata::for_source(Path::new("fuzz.yaml"), data, ActionSet::default());
    let bytes = table::encode(&policy, &metadata);
    let decoded = table::decode(&bytes).unwrap_or_else(|e| panic!("an accepted policy's table does not decode: {e}"));
    let direct = PolicyTable::new(&policy);

    // A few fixed hosts, plus one host per pattern (wildcards instantiated).
    let rules = policy.services.iter().chain(policy.default.iter());
    let patterns =
        rules.flat_map(|r| r.allowed_domains.iter()).chain(&policy.global_allow_list).chain(&policy.global_deny_list);
    let from_patterns = patterns.take(16).map(|p| p.to_string().replace("*.", "fuzz."));
    // v2: internal destinations' hosts too.
    let internal =
        policy.services.iter().flat_map(|r| r.internal_destinations.iter()).take(8).map(|d| d.host.to_string());
    let from_patterns = from_patterns.chain(internal);
    let hosts: Vec<_> = ["example.com", "api.example.com", "127.0.0.1"]
        .into_iter()
        .map(String::from)
        .chain(from_patterns)
        .filter_map(|h| host::canonical(&h).ok())
        .collect();
    let roles: Vec<Option<&str>> = [None, Some("fuzz-no-such-role")]
        .into_iter()
        .chain(policy.services.iter().map(|r| Some(r.name.as_str())))
        .collect();
    for host in &hosts {
        for role in &roles {
            assert_eq!(direct.decide(*role, host), decoded.table.decide(*role, host), "role {role:?}, host {host}");
            for port in [443, 5432, 8080] {
                assert_eq!(
                    direct.decide_at(*role, host, port),
                    decoded.table.decide_at(*role, host, port),
                    "role {role:?}, host {host}:{port}"
                );
            }
        }
    }
});
