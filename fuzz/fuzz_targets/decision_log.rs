//! Any bytes as a decision log: the reader never panics, counts every line
//! exactly once, keeps at most five examples, and folds exactly the lines it
//! counts as decisions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policyc::decision_log::{Aggregate, MALFORMED_EXAMPLES, read_stream};

fuzz_target!(|data: &[u8]| {
    let mut aggregate = Aggregate::default();
    read_stream(data, "fuzz.log", None, &mut aggregate).unwrap_or_else(|e| panic!("reading bytes from memory failed: {e}"));
    let l = &aggregate.lines;
    assert_eq!(l.total, l.decisions + l.skipped + l.malformed + l.without_role + l.undecided + l.filtered_out);
    assert!(l.malformed_examples.len() <= MALFORMED_EXAMPLES);
    let roles = aggregate.roles();
    let hits: u64 = roles.iter().flat_map(|r| aggregate.hosts_of(r)).map(|(_, seen)| seen.hits).sum();
    assert_eq!(hits, l.decisions);
});
