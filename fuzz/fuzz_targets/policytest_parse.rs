//! Any bytes as a policy test file: the reader never panics, reports every
//! problem with a position inside the input, and the cases it accepts run
//! against a fixed policy without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use egress_policy::decision::PolicyTable;
use egress_policy::policy::ActionSet;
use egress_policy::acl;
use policyc::policytest;

const ACL: &str = "version: v1
services:
  - {name: billing, project: p, action: enforce, allowed_domains: [api.stripe.com, \"*.example.com\"]}
  - {name: open, project: p, action: open}
default: {project: d, action: report}
global_deny_list: [evil.example.com]
";

fn table() -> &'static PolicyTable {
    static TABLE: OnceLock<PolicyTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let policy = acl::check_source("fuzz.yaml", ACL, ActionSet::default()).policy;
        PolicyTable::new(&policy.unwrap_or_else(|| panic!("the fixed ACL is valid")))
    })
}

fuzz_target!(|data: &[u8]| {
    let file = policytest::parse_bytes("fuzz.yaml", data);
    // Upper bound: every \n and every \r may end a line.
    let lines = data.iter().filter(|b| matches!(**b, b'\n' | b'\r')).count() as u64 + 1;
    for d in &file.diagnostics {
        assert!(d.line >= 1 && d.line <= lines, "diagnostic outside the input: {d:?}");
    }
    if file.error_count() == 0 {
        for outcome in policytest::run(table(), &file) {
            let _ = outcome.failure("fuzz.yaml");
        }
    }
});
