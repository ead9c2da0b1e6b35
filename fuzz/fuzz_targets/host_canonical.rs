//! Canonicalisation is idempotent, and a canonical host is ASCII, lower case,
//! without a trailing dot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use egress_policy::host;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Ok(h) = host::canonical(input) else { return };
    let text = h.as_str();
    assert!(text.is_ascii(), "{input:?} → {text:?} is not ASCII");
    assert!(!text.chars().any(|c| c.is_ascii_uppercase()), "{input:?} → {text:?} has upper case");
    assert!(!text.ends_with('.'), "{input:?} → {text:?} ends with a dot");
    assert_eq!(host::canonical(text), Ok(h.clone()), "{input:?} → {text:?} is not a fixpoint");
});
