//! Ed25519 signatures on compiled tables: the key files, key ids, signing,
//! verification against a set of trusted public keys, and the rule that
//! decides whether a signed table may replace the active one (rollback
//! protection). The signature block's byte layout is part of the table
//! format ([`crate::table::SignatureBlock`]); what it signs is defined here:
//!
//! ```text
//! "egress-policy table signature v1\0" || SHA-256(body) || serial (u64 LE) || key id
//! ```
//!
//! The signed message is domain-separated (the context string) so a key used
//! for tables can never be tricked into signing something that verifies as a
//! table, and it binds the serial and key id so neither can be swapped. The
//! body digest is the header's, which [`crate::table::decode`] has already
//! checked against the body. The table's revision (the body digest) does not
//! depend on the signature: re-signing keeps the revision.
//!
//! Key files are text: the private key is PEM `PRIVATE KEY` (PKCS#8, as
//! `openssl genpkey -algorithm ed25519` writes it), the public key PEM
//! `PUBLIC KEY` (SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it).
//!
//! This module never reads files, a clock or randomness: callers pass key text
//! in, and key generation takes the caller's random source.

use std::fmt;

use base64::Engine as _;
use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::table::{BLOCK_LEN, CompiledTable, KEY_ID_LEN, KeyId, SIGNATURE_LEN, SignatureBlock, TableError};

/// Domain separation: what a table signature is a signature of.
const CONTEXT: &[u8] = b"egress-policy table signature v1\0";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
const PUBLIC_LABEL: &str = "PUBLIC KEY";
const PRIVATE_LABEL: &str = "PRIVATE KEY";
/// Key files are a few hundred bytes; anything far larger is not a key.
const MAX_KEY_TEXT: usize = 16 * 1024;

/// The key id of a raw 32-byte public key: the first bytes of its SHA-256.
fn key_id_of(raw_public_key: &[u8]) -> KeyId {
    let digest = Sha256::digest(raw_public_key);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(digest.get(..KEY_ID_LEN).unwrap_or(&[0; KEY_ID_LEN]));
    KeyId(id)
}

/// The bytes an Ed25519 signature covers.
fn signed_message(body_sha256: &[u8; 32], serial: u64, key_id: KeyId) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTEXT.len() + 32 + 8 + KEY_ID_LEN);
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(body_sha256);
    message.extend_from_slice(&serial.to_le_bytes());
    message.extend_from_slice(&key_id.0);
    message
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a PEM block with the expected label.
    #[error("not a PEM `{expected}` file (expected a line `-----BEGIN {expected}-----`)")]
    NotPem {
        /// The PEM label expected (`PUBLIC KEY` or `PRIVATE KEY`).
        expected: &'static str,
    },
    /// The PEM body is not base64.
    #[error("the PEM body is not valid base64")]
    Base64,
    /// A well-formed PEM key of another algorithm, or a malformed Ed25519 key.
    #[error("not an Ed25519 {what} key: {reason}")]
    NotEd25519 {
        /// `public` or `private`.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The key file is implausibly large (never read whole).
    #[error("key text is larger than {MAX_KEY_TEXT} bytes")]
    TooLarge,
    /// The operating system's random source failed during `keygen`.
    #[error("cannot generate a key: the system random source failed")]
    Random,
}

/// An Ed25519 public key trusted to sign tables.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
    id: KeyId,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    fn from_raw(raw: [u8; 32]) -> Self {
        PublicKey { raw, id: key_id_of(&raw) }
    }

    /// Parses a PEM `PUBLIC KEY` (Ed25519 SubjectPublicKeyInfo).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let der = pem_decode(text, PUBLIC_LABEL)?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
            .ok_or_else(|| KeyError::NotEd25519 { what: "public", reason: "unexpected SubjectPublicKeyInfo".into() })?;
        Ok(PublicKey::from_raw(raw))
    }

    /// The PEM text of this key.
    pub fn to_text(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem_encode(PUBLIC_LABEL, &der)
    }

    /// The key id stored in every signature this key makes.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

/// An Ed25519 private key that signs tables.
pub struct PrivateKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(key id {})", self.public.id)
    }
}

impl PrivateKey {
    /// A new key pair: the private key's PEM text (PKCS#8 v2, holds the
    /// public key too) and the key. `random` is the caller's CSPRNG.
    pub fn generate(random: &dyn SecureRandom) -> Result<(String, PrivateKey), KeyError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(random).map_err(|_| KeyError::Random)?;
        let text = pem_encode(PRIVATE_LABEL, pkcs8.as_ref());
        let key = PrivateKey::from_text(&text)?;
        Ok((text, key))
    }

    /// Parses a PEM `PRIVATE KEY` (PKCS#8 v1 as OpenSSL writes it, or v2).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let der = pem_decode(text, PRIVATE_LABEL)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| KeyError::NotEd25519 { what: "private", reason: e.to_string() })?;
        let raw = <[u8; 32]>::try_from(pair.public_key().as_ref())
            .map_err(|_| KeyError::NotEd25519 { what: "private", reason: "public key length".into() })?;
        Ok(PrivateKey { pair, public: PublicKey::from_raw(raw) })
    }

    /// The matching public key (what `proxyd --policy-public-key` trusts).
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The block that signs a body with this digest at this serial.
    pub fn sign(&self, body_sha256: &[u8; 32], serial: u64) -> SignatureBlock {
        let key_id = self.public.id;
        let signature = self.pair.sign(&signed_message(body_sha256, serial, key_id));
        let mut bytes = [0u8; SIGNATURE_LEN];
        bytes.copy_from_slice(signature.as_ref().get(..SIGNATURE_LEN).unwrap_or(&[0; SIGNATURE_LEN]));
        SignatureBlock { serial, key_id, signature: bytes }
    }
}

/// Why signing an existing table failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Serial 0 was asked for; serials start at 1.
    #[error("the serial must be a positive integer")]
    ZeroSerial,
    /// The bytes are not a valid table (the [`TableError`] says why).
    #[error("not a valid table: {0}")]
    Table(#[from] TableError),
}

/// Signs a table (replacing any signature it already has): decodes and
/// checks it fully first, so only a valid table is ever signed.
pub fn sign_table(bytes: &[u8], key: &PrivateKey, serial: u64) -> Result<Vec<u8>, SignError> {
    if serial == 0 {
        return Err(SignError::ZeroSerial);
    }
    let table = crate::table::decode(bytes)?;
    let end = crate::table::HEADER_LEN as u64 + table.header.body_len;
    let unsigned = bytes.get(..usize::try_from(end).unwrap_or(usize::MAX)).unwrap_or(bytes);
    let mut out = Vec::with_capacity(unsigned.len() + BLOCK_LEN);
    out.extend_from_slice(unsigned);
    out.extend_from_slice(&key.sign(&table.header.body_sha256, serial).encode());
    Ok(out)
}

/// Why a table's signature was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature block follows the body.
    #[error("no signature: the table is unsigned")]
    Unsigned,
    /// Signed by a key that is not in the keyring (revoked, or never trusted).
    #[error("unknown key id {key_id}: signed by a key that is not trusted (trusted: {trusted})")]
    UnknownKey {
        /// The key id in the signature.
        key_id: KeyId,
        /// The trusted key ids, for the message.
        trusted: String,
    },
    /// The signature does not verify: the table was altered or forged.
    #[error("bad signature: the signature by key {key_id} does not verify (table altered or forged)")]
    BadSignature {
        /// The (trusted) key id the signature claims.
        key_id: KeyId,
    },
}

/// A signature that verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The verified serial.
    pub serial: u64,
    /// The trusted key that signed.
    pub key_id: KeyId,
}

/// The public keys trusted to sign tables (more than one during a rotation).
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: Vec<PublicKey>,
}

impl Keyring {
    /// A keyring trusting exactly `keys` (several during a rotation).
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Keyring { keys }
    }

    /// True when no key is trusted (signatures are not checked).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks that `table` carries a signature by one of these keys.
    pub fn verify(&self, table: &CompiledTable) -> Result<Verified, SignatureError> {
        let block = table.signature.as_ref().ok_or(SignatureError::Unsigned)?;
        let key = self.keys.iter().find(|k| k.id == block.key_id).ok_or_else(|| SignatureError::UnknownKey {
            key_id: block.key_id,
            trusted: self.keys.iter().map(|k| k.id.to_string()).collect::<Vec<_>>().join(", "),
        })?;
        let message = signed_message(&table.header.body_sha256, block.serial, block.key_id);
        UnparsedPublicKey::new(&ED25519, &key.raw)
            .verify(&message, &block.signature)
            .map_err(|_| SignatureError::BadSignature { key_id: block.key_id })?;
        Ok(Verified { serial: block.serial, key_id: block.key_id })
    }
}

/// Why a verified table may still not replace the active one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SuccessionError {
    /// The candidate's serial is lower than the active table's.
    #[error(
        "rollback: serial {candidate} is lower than the active serial {active} (--allow-policy-rollback permits it)"
    )]
    Rollback {
        /// The active table's serial.
        active: u64,
        /// The refused candidate's (lower) serial.
        candidate: u64,
    },
    /// The candidate reuses the active serial with different bytes.
    #[error("serial {serial} is already active with different content: a serial must never be reused")]
    SerialReused {
        /// The serial both tables carry.
        serial: u64,
    },
}

/// A signed table as the succession rule sees it: its serial and a digest
/// of the whole file (so a re-signature counts as different bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release<'a> {
    /// The table's verified serial.
    pub serial: u64,
    /// SHA-256 of the whole table file (equal serials must mean equal bytes).
    pub file_sha256: &'a [u8; 32],
}

/// May `candidate` replace `active`? Serials must grow; an equal serial is
/// fine only for the identical file. `allow_rollback` lifts both rules (an
/// operator reverting on purpose).
pub fn check_succession(
    active: Option<Release<'_>>,
    candidate: Release<'_>,
    allow_rollback: bool,
) -> Result<(), SuccessionError> {
    let Some(active) = active else { return Ok(()) };
    if allow_rollback || candidate.serial > active.serial {
        return Ok(());
    }
    if candidate.serial < active.serial {
        return Err(SuccessionError::Rollback { active: active.serial, candidate: candidate.serial });
    }
    if candidate.file_sha256 != active.file_sha256 {
        return Err(SuccessionError::SerialReused { serial: candidate.serial });
    }
    Ok(())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first `label` PEM block (text around it is ignored, as
/// OpenSSL does; a missing END line is an error).
fn pem_decode(text: &str, label: &'static str) -> Result<Vec<u8>, KeyError> {
    if text.len() > MAX_KEY_TEXT {
        return Err(KeyError::TooLarge);
    }
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut lines = text.lines().map(str::trim).skip_while(|l| *l != begin);
    if lines.next().is_none() {
        return Err(KeyError::NotPem { expected: label });
    }
    let mut body = String::new();
    for line in lines {
        if line == end {
            return base64::engine::general_purpose::STANDARD.decode(body.as_bytes()).map_err(|_| KeyError::Base64);
        }
        body.push_str(line);
    }
    Err(KeyError::NotPem { expected: label })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use crate::acl;
    use crate::policy::ActionSet;
    use crate::table::{self, HEADER_LEN, Metadata};
    use ring::rand::SystemRandom;
    use std::path::Path;

    const SRC: &str = "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains: [a.com]\n";

    fn unsigned() -> Vec<u8> {
        let policy = acl::check_source("p.yaml", SRC, ActionSet::default()).policy.unwrap();
        table::encode(&policy, &Metadata::for_source(Path::new("p.yaml"), SRC.as_bytes(), ActionSet::default()))
    }

    fn key() -> PrivateKey {
        PrivateKey::generate(&SystemRandom::new()).unwrap().1
    }

    #[test]
    fn sign_verify_round_trip_keeps_the_revision() {
        let key = key();
        let plain = unsigned();
        let signed = sign_table(&plain, &key, 42).unwrap();
        assert_eq!(signed.len(), plain.len() + BLOCK_LEN);
        let table = table::decode(&signed).unwrap();
        assert_eq!(table.revision(), table::decode(&plain).unwrap().revision());
        let keys = Keyring::new(vec![key.public_key().clone()]);
        assert_eq!(keys.verify(&table), Ok(Verified { serial: 42, key_id: key.public_key().id() }));
        // Re-signing replaces the block instead of appending a second one.
        let resigned = sign_table(&signed, &key, 43).unwrap();
        assert_eq!(resigned.len(), signed.len());
        assert_eq!(keys.verify(&table::decode(&resigned).unwrap()).unwrap().serial, 43);
        assert!(matches!(sign_table(&plain, &key, 0), Err(SignError::ZeroSerial)));
        assert_eq!(Keyring::default().verify(&table::decode(&plain).unwrap()), Err(SignatureError::Unsigned));
    }

    #[test]
    fn every_byte_flip_fails() {
        let key = key();
        let keys = Keyring::new(vec![key.public_key().clone()]);
        let signed = sign_table(&unsigned(), &key, 7).unwrap();
        for i in 0..signed.len() {
            let mut flipped = signed.clone();
            flipped[i] ^= 0x01;
            let accepted = table::decode(&flipped).ok().and_then(|t| keys.verify(&t).ok());
            assert!(accepted.is_none(), "a flip at byte {i} still verifies");
        }
        // A flip in the block itself is caught by verification, not decoding.
        let mut in_signature = signed.clone();
        let last = in_signature.len() - 1;
        in_signature[last] ^= 0x80;
        let decoded = table::decode(&in_signature).unwrap();
        assert!(matches!(keys.verify(&decoded), Err(SignatureError::BadSignature { .. })));
        let mut in_serial = signed.clone();
        in_serial[signed.len() - BLOCK_LEN + 8] ^= 0x02;
        assert!(matches!(keys.verify(&table::decode(&in_serial).unwrap()), Err(SignatureError::BadSignature { .. })));
    }

    #[test]
    fn wrong_key_is_an_unknown_key_id() {
        let (signer, other) = (key(), key());
        let signed = table::decode(&sign_table(&unsigned(), &signer, 1).unwrap()).unwrap();
        let err = Keyring::new(vec![other.public_key().clone()]).verify(&signed).unwrap_err();
        assert!(matches!(err, SignatureError::UnknownKey { key_id, .. } if key_id == signer.public_key().id()));
        assert!(err.to_string().contains(&other.public_key().id().to_string()), "{err}");
        // Rotation: either of two trusted keys verifies.
        let both = Keyring::new(vec![other.public_key().clone(), signer.public_key().clone()]);
        assert!(both.verify(&signed).is_ok());
    }

    #[test]
    fn a_forged_key_id_does_not_verify() {
        // An attacker relabels a signature with a trusted key's id.
        let (attacker, trusted) = (key(), key());
        let mut bytes = sign_table(&unsigned(), &attacker, 5).unwrap();
        let at = bytes.len() - BLOCK_LEN + 16;
        bytes[at..at + KEY_ID_LEN].copy_from_slice(&trusted.public_key().id().0);
        let table = table::decode(&bytes).unwrap();
        assert!(matches!(
            Keyring::new(vec![trusted.public_key().clone()]).verify(&table),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn block_decoding_errors_are_typed() {
        let key = key();
        let signed = sign_table(&unsigned(), &key, 9).unwrap();
        let body_end = signed.len() - BLOCK_LEN;
        for cut in [1, 7, 8, 30, BLOCK_LEN - 1] {
            let err = table::decode(&signed[..body_end + cut]).unwrap_err();
            assert!(matches!(err, TableError::Truncated { what: "signature block", .. }), "{cut}: {err}");
        }
        let mut extra = signed.clone();
        extra.extend_from_slice(b"xyz");
        assert!(matches!(table::decode(&extra), Err(TableError::TrailingBytes(3))));
        let mut unknown = signed[..body_end].to_vec();
        unknown.extend_from_slice(b"OTHERBLK and more");
        assert!(matches!(table::decode(&unknown), Err(TableError::UnknownBlock { .. })));
        let mut garbage = signed[..body_end].to_vec();
        garbage.extend_from_slice(b"zz");
        assert!(matches!(table::decode(&garbage), Err(TableError::TrailingBytes(2))));
        let mut zero_serial = signed.clone();
        zero_serial[body_end + 8..body_end + 16].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(table::decode(&zero_serial), Err(TableError::Invalid(_))));
        assert!(body_end > HEADER_LEN);
    }

    #[test]
    fn key_text_round_trips_and_is_strict() {
        let (text, key) = PrivateKey::generate(&SystemRandom::new()).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let again = PrivateKey::from_text(&text).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = key.public_key().to_text();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{public}");
        assert_eq!(PublicKey::from_text(&public).unwrap(), *key.public_key());
        assert_eq!(key.public_key().id().to_string().len(), 16);
        assert!(matches!(PublicKey::from_text(&text), Err(KeyError::NotPem { .. })));
        assert!(matches!(PrivateKey::from_text(&public), Err(KeyError::NotPem { .. })));
        assert!(matches!(PublicKey::from_text("-----BEGIN PUBLIC KEY-----\n!!\n"), Err(KeyError::NotPem { .. })));
        assert!(matches!(
            PublicKey::from_text("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n"),
            Err(KeyError::Base64)
        ));
        assert!(matches!(
            PublicKey::from_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(KeyError::NotEd25519 { .. })
        ));
        // OpenSSL's PKCS#8 v1 form (`openssl genpkey -algorithm ed25519`) is accepted.
        let openssl = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHcfCc7QbT8bH9KjjJLRJ3yIygIFBLzP+irQNHrZrLPP\n-----END PRIVATE KEY-----\n";
        let from_openssl = PrivateKey::from_text(openssl).unwrap();
        assert_eq!(
            from_openssl.public_key().to_text(),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAaBxPVAlZy8RWDl3FvztteatD+Gq1DyC6vd1tYpR/eQE=\n-----END PUBLIC KEY-----\n"
        );
    }

    #[test]
    fn rollback_rules() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let release = |serial, file_sha256| Release { serial, file_sha256 };
        assert_eq!(check_succession(None, release(1, &a), false), Ok(()));
        assert_eq!(check_succession(Some(release(5, &a)), release(6, &b), false), Ok(()));
        assert_eq!(check_succession(Some(release(5, &a)), release(5, &a), false), Ok(()));
        assert_eq!(
            check_succession(Some(release(5, &a)), release(4, &b), false),
            Err(SuccessionError::Rollback { active: 5, candidate: 4 })
        );
        assert_eq!(
            check_succession(Some(release(5, &a)), release(5, &b), false),
            Err(SuccessionError::SerialReused { serial: 5 })
        );
        assert_eq!(check_succession(Some(release(5, &a)), release(4, &b), true), Ok(()));
        assert_eq!(check_succession(Some(release(5, &a)), release(5, &b), true), Ok(()));
    }
}
