//! Any bytes as a compiled table: decode never panics. The same bytes are also
//! framed as a body under a valid header (magic, version, length, SHA-256), so
//! the postcard decoder and re-validation are reached; a table that decodes
//! re-encodes to a table that decodes to the same policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use egress_policy::table::{self, FORMAT_VERSION, HEADER_LEN, MAGIC};
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let _ = table::decode(data);

    // A seed that is a whole table contributes its body.
    let body = if data.starts_with(&MAGIC) { data.get(HEADER_LEN..).unwrap_or_default() } else { data };
    let mut framed = Vec::with_capacity(HEADER_LEN + body.len());
    framed.extend_from_slice(&MAGIC);
    framed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(&(body.len() as u64).to_le_bytes());
    framed.extend_from_slice(&Sha256::digest(body));
    framed.extend_from_slice(body);
    let Ok(decoded) = table::decode(&framed) else { return };
    let again = table::encode(&decoded.policy, &decoded.metadata);
    let redecoded = table::decode(&again).unwrap_or_else(|e| panic!("a re-encoded table does not decode: {e}"));
    assert_eq!(redecoded.metadata, decoded.metadata);
    assert_eq!(table::encode(&redecoded.policy, &redecoded.metadata), again, "encoding is not a fixpoint");
});
