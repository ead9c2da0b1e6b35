//! Signed tables through the real binary: `keygen` (file modes, never
//! overwriting without --force), `compile --sign`, `sign`, `verify` (exit code
//! and reason for every failure) and what `inspect` shows.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::policyc;

const ACL: &str = "version: v1\nservices:\n  - name: billing\n    project: payments\n    action: enforce\n    allowed_domains: [api.stripe.com]\ndefault:\n  project: other\n  action: enforce\n";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Keys {
    private: PathBuf,
    public: PathBuf,
    id: String,
}

fn keygen(dir: &Path, name: &str) -> Keys {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = policyc(&["keygen", "--private", s(&private), "--public", s(&public)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.trim().strip_prefix("key id: ").expect("key id printed").to_owned();
    assert_eq!(id.len(), 16, "{id}");
    Keys { private, public, id }
}

fn compile_signed(dir: &Path, keys: &Keys, serial: &str) -> PathBuf {
    let acl = dir.join("acl.yaml");
    fs::write(&acl, ACL).unwrap();
    let table = dir.join(format!("signed-{serial}.bin"));
    let run = policyc(&["compile", s(&acl), "-o", s(&table), "--sign", s(&keys.private), "--serial", serial]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("serial {serial}, key id {}", keys.id)), "{}", run.stderr);
    table
}

#[test]
fn keygen_writes_text_keys_with_safe_modes_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "ci");
    let private = fs::read_to_string(&keys.private).unwrap();
    let public = fs::read_to_string(&keys.public).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n") && private.ends_with("-----END PRIVATE KEY-----\n"));
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n") && public.ends_with("-----END PUBLIC KEY-----\n"));
    assert_eq!(fs::metadata(&keys.private).unwrap().permissions().mode() & 0o777, 0o600);

    let again = policyc(&["keygen", "--private", s(&keys.private), "--public", s(&dir.path().join("other.pub"))]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("refusing to overwrite") && again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(fs::read_to_string(&keys.private).unwrap(), private, "the key is untouched");
    assert!(!dir.path().join("other.pub").exists(), "nothing written when refusing");

    let forced = policyc(&["keygen", "--private", s(&keys.private), "--public", s(&keys.public), "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_ne!(fs::read_to_string(&keys.private).unwrap(), private, "--force replaces the key");
    assert_eq!(fs::metadata(&keys.private).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temp files left behind");
}

#[test]
fn sign_verify_round_trip_and_every_flipped_byte_fails() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "ci");
    let table = compile_signed(dir.path(), &keys, "1700000000");
    let ok = policyc(&["verify", s(&table), "--public-key", s(&keys.public)]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains(&format!("verified: signed by key id {}, serial 1700000000", keys.id)), "{}", ok.stdout);

    let bytes = fs::read(&table).unwrap();
    let flipped = dir.path().join("flipped.bin");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        fs::write(&flipped, &b).unwrap();
        let run = policyc(&["verify", s(&flipped), "--public-key", s(&keys.public)]);
        assert_eq!(run.code, 1, "a flip at byte {i} of {} verified: {}", bytes.len(), run.stdout);
        assert!(
            ["corrupt table", "bad signature", "unknown key id"].iter().any(|r| run.stderr.contains(r)),
            "byte {i}: {}",
            run.stderr
        );
    }
}

#[test]
fn verify_names_each_reason() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "ci");
    let other = keygen(dir.path(), "other");
    let acl = dir.path().join("acl.yaml");
    fs::write(&acl, ACL).unwrap();
    let unsigned = dir.path().join("unsigned.bin");
    assert_eq!(policyc(&["compile", s(&acl), "-o", s(&unsigned)]).code, 0);

    let run = policyc(&["verify", s(&unsigned), "--public-key", s(&keys.public)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no signature"), "{}", run.stderr);

    let signed = compile_signed(dir.path(), &keys, "5");
    let run = policyc(&["verify", s(&signed), "--public-key", s(&other.public)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains(&format!("unknown key id {}", keys.id)), "{}", run.stderr);
    // Rotation: either key may be given; one that matches is enough.
    assert_eq!(
        policyc(&["verify", s(&signed), "--public-key", s(&other.public), "--public-key", s(&keys.public)]).code,
        0
    );

    let mut bytes = fs::read(&signed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = dir.path().join("bad.bin");
    fs::write(&bad, &bytes).unwrap();
    let run = policyc(&["verify", s(&bad), "--public-key", s(&keys.public)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("bad signature"), "{}", run.stderr);

    let truncated = dir.path().join("truncated.bin");
    fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let run = policyc(&["verify", s(&truncated), "--public-key", s(&keys.public)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("corrupt table") && run.stderr.contains("signature block"), "{}", run.stderr);

    let run = policyc(&["verify", s(&signed), "--public-key", s(&keys.private)]);
    assert_eq!(run.code, 2, "a private key is not a public key: {}", run.stderr);
    assert!(run.stderr.contains("PUBLIC KEY"), "{}", run.stderr);
}

#[test]
fn sign_an_existing_table_and_inspect_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "ci");
    let acl = dir.path().join("acl.yaml");
    fs::write(&acl, ACL).unwrap();
    let table = dir.path().join("t.bin");
    assert_eq!(policyc(&["compile", s(&acl), "-o", s(&table)]).code, 0);
    let before: Value = serde_json::from_str(&policyc(&["inspect", s(&table), "--format", "json"]).stdout).unwrap();
    assert_eq!(before["signed"], false);
    assert_eq!(before["serial"], Value::Null);
    assert_eq!(before["key_id"], Value::Null);
    let human = policyc(&["inspect", s(&table)]);
    assert!(human.stdout.contains("signature:        none (unsigned)"), "{}", human.stdout);

    let out = dir.path().join("t.signed.bin");
    let run = policyc(&["sign", s(&table), "--key", s(&keys.private), "--serial", "77", "-o", s(&out)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after: Value = serde_json::from_str(&policyc(&["inspect", s(&out), "--format", "json"]).stdout).unwrap();
    assert_eq!(after["signed"], true);
    assert_eq!(after["serial"], 77);
    assert_eq!(after["key_id"], keys.id.as_str());
    assert_eq!(after["revision"], before["revision"], "signing keeps the revision");
    let human = policyc(&["inspect", s(&out)]);
    assert!(human.stdout.contains(&format!("present: serial 77, key id {}", keys.id)), "{}", human.stdout);

    // In place, with the default serial (the Unix time now).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(policyc(&["sign", s(&table), "--key", s(&keys.private)]).code, 0);
    let v: Value = serde_json::from_str(&policyc(&["inspect", s(&table), "--format", "json"]).stdout).unwrap();
    let serial = v["serial"].as_u64().unwrap();
    assert!(serial >= now && serial < now + 60, "{serial} vs {now}");
}

#[test]
fn serial_must_be_positive_and_keys_must_be_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "ci");
    let acl = dir.path().join("acl.yaml");
    fs::write(&acl, ACL).unwrap();
    let table = dir.path().join("t.bin");
    for bad in ["0", "-1", "x"] {
        let run = policyc(&["compile", s(&acl), "-o", s(&table), "--sign", s(&keys.private), "--serial", bad]);
        assert_eq!(run.code, 2, "{bad}: {}", run.stderr);
        assert!(!table.exists());
    }
    let run = policyc(&["compile", s(&acl), "-o", s(&table), "--serial", "5"]);
    assert_eq!(run.code, 2, "--serial needs --sign: {}", run.stderr);
    let run = policyc(&["compile", s(&acl), "-o", s(&table), "--sign", s(&keys.public)]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("PRIVATE KEY"), "{}", run.stderr);
    assert!(!table.exists(), "nothing written with a bad key");
    let run = policyc(&["sign", s(&acl), "--key", s(&keys.private)]);
    assert_eq!(run.code, 1, "a YAML file is not signed: {}", run.stderr);
    assert_eq!(fs::read_to_string(&acl).unwrap(), ACL);
}
