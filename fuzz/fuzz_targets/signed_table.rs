//! Signed tables: decoding any bytes (header, body and the trailer after it)
//! never panics, and verifying whatever decodes never panics. A known-good
//! table with the input appended as its trailer decodes only when the
//! trailer is empty or exactly one well-formed signature block; signing it
//! with a fixed test key at a serial taken from the input verifies, and any
//! single flipped byte (position from the input) never verifies.
#![no_main]

use std::sync::OnceLock;

use egress_policy::signature::{self, Keyring, PrivateKey};
use egress_policy::table::{self, BLOCK_LEN, BLOCK_MAGIC};
use libfuzzer_sys::fuzz_target;

/// A throwaway test key (also in egress-policy's unit tests); never used to sign anything real.
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHcfCc7QbT8bH9KjjJLRJ3yIygIFBLzP+irQNHrZrLPP\n-----END PRIVATE KEY-----\n";
const MINIMAL: &str = "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains: [a.com]\n";

fn fixtures() -> &'static (PrivateKey, Keyring, Vec<u8>) {
    static FIXTURES: OnceLock<(PrivateKey, Keyring, Vec<u8>)> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let key = PrivateKey::from_text(TEST_KEY).expect("test key parses");
        let keys = Keyring::new(vec![key.public_key().clone()]);
        let policy = egress_policy::acl::check_source("m.yaml", MINIMAL, Default::default())
            .policy
            .expect("minimal policy compiles");
        let meta = table::Metadata::for_source(std::path::Path::new("m.yaml"), MINIMAL.as_bytes(), Default::default());
        (key, keys, table::encode(&policy, &meta))
    })
}

fuzz_target!(|data: &[u8]| {
    let (key, keys, unsigned) = fixtures();
    if let Ok(decoded) = table::decode(data) {
        let _ = keys.verify(&decoded);
    }

    // The input as the trailer of a valid table.
    let mut framed = unsigned.clone();
    framed.extend_from_slice(data);
    let well_formed_block = data.len() == BLOCK_LEN
        && data.starts_with(&BLOCK_MAGIC)
        && data.get(8..16).is_some_and(|serial| serial.iter().any(|b| *b != 0));
    match table::decode(&framed) {
        Ok(decoded) => {
            assert!(data.is_empty() || well_formed_block, "a malformed trailer was accepted");
            let _ = keys.verify(&decoded);
        }
        Err(_) => assert!(!(data.is_empty() || well_formed_block), "a well-formed trailer was refused"),
    }

    // Sign, verify, flip one byte.
    let serial = data.get(..8).map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap_or([1; 8]))).max(1);
    let signed = signature::sign_table(unsigned, key, serial).expect("a valid table signs");
    let verified = keys.verify(&table::decode(&signed).expect("a signed table decodes")).expect("and verifies");
    assert_eq!(verified.serial, serial);
    if let Some(&at) = data.get(8) {
        let mut flipped = signed.clone();
        let index = usize::from(at) * 7 % flipped.len();
        if let Some(byte) = flipped.get_mut(index) {
            *byte ^= data.get(9).copied().unwrap_or(1).max(1);
        }
        let still = table::decode(&flipped).ok().and_then(|t| keys.verify(&t).ok());
        assert!(still.is_none(), "a flipped byte at {index} still verifies");
    }
});
