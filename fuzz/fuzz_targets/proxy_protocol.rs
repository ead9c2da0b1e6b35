//! Any bytes as the start of a PROXY protocol connection: parse never panics,
//! never claims more than it was given, asks only for more than it has (and at
//! most the header limit), and a complete header parses the same from exactly
//! its own bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyd::proxy_protocol::{self, MAX_HEADER_LEN, Parsed};

fuzz_target!(|data: &[u8]| {
    match proxy_protocol::parse(data) {
        Ok(Parsed::Complete { header, consumed }) => {
            assert!(consumed <= data.len(), "consumed {consumed} of {} bytes", data.len());
            let own = data.get(..consumed).unwrap_or_default();
            assert_eq!(proxy_protocol::parse(own).ok(), Some(Parsed::Complete { header, consumed }));
        }
        Ok(Parsed::Incomplete { need_at_least }) => {
            assert!(need_at_least > data.len(), "needs {need_at_least}, has {}", data.len());
            assert!(need_at_least <= MAX_HEADER_LEN, "needs {need_at_least}");
        }
        Err(_) => {}
    }
});
