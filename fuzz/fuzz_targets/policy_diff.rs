//! Two ACLs from one input (split at the first NUL byte): the diff never
//! panics, a policy diffed against itself changes nothing, and every example
//! the diff reports really decides differently under the two policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use egress_policy::decision::PolicyTable;
use egress_policy::policy::ActionSet;
use egress_policy::{acl, host};
use policyc::diff;

fuzz_target!(|data: &[u8]| {
    let (left, right) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    };
    let Some(old) = acl::check_bytes("old.yaml", left, ActionSet::default()).policy else { return };
    let Some(new) = acl::check_bytes("new.yaml", right, ActionSet::default()).policy else { return };
    assert!(diff::diff(&old, &old).is_empty(), "a policy differs from itself");
    let changes = diff::diff(&old, &new);
    let (old_table, new_table) = (PolicyTable::new(&old), PolicyTable::new(&new));
    for role in &changes.decisions {
        for change in &role.changes {
            let host = host::canonical(&change.host).unwrap_or_else(|e| panic!("example {:?}: {e}", change.host));
            let (before, after) =
                (old_table.decide(role.role.as_deref(), &host), new_table.decide(role.role.as_deref(), &host));
            assert!(
                before.verdict != after.verdict || before.reason != after.reason,
                "example {} for {:?} does not change",
                change.host,
                role.role
            );
        }
    }
    let _ = changes.render_human("old", "new");
    let _ = changes.render_markdown("old", "new");
    let _ = changes.render_json("old", "new");
});
