//! Any UTF-8 as a CONNECT authority: parse never panics, and what it accepts
//! prints as an authority that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use egress_policy::authority;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = authority::parse(input) else { return };
    let printed = parsed.to_string();
    assert_eq!(authority::parse(&printed), Ok(parsed), "{input:?} printed as {printed:?}");
});
