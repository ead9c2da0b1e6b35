//! Which tables proxyd accepts: the one place that decides, for a start-up
//! load, a file reload and a fetched table alike, whether candidate bytes may
//! become the active policy.
//!
//! In order: the table must decode and verify (header, checksum, content),
//! use no disabled action, and — when public keys are configured — carry a
//! signature by one of them and not roll back: a lower serial than the active
//! table's is refused unless `--allow-policy-rollback`, and an equal serial
//! with different bytes is refused too. Without keys, signatures are neither
//! required nor checked (`/policy` says "not checked").
//!
//! This module reads the public key files named in the configuration and
//! nothing else: no sockets, no table files, no swapping.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use egress_policy::policy::ActionSet;
use egress_policy::signature::{self, Keyring, PublicKey, Release};
use egress_policy::table::{self, CompiledTable};
use sha2::{Digest, Sha256};

/// The table in service and where it came from.
#[derive(Debug)]
pub struct ActivePolicy {
    pub table: CompiledTable,
    /// SHA-256 of the file's bytes, to skip identical candidates cheaply.
    pub file_sha256: [u8; 32],
    pub loaded_at: SystemTime,
    /// The signature, when public keys are configured (then it is always
    /// present: an unsigned table is refused).
    pub verified: Option<signature::Verified>,
}

/// What signatures a table needs.
#[derive(Clone, Debug, Default)]
pub struct TrustSettings {
    /// Trusted signing keys; empty means signatures are not checked.
    pub keys: Keyring,
    /// The key files they came from, for messages.
    pub key_files: Vec<PathBuf>,
    /// Accept a lower (or equal, different) serial than the active table's.
    pub allow_rollback: bool,
}

impl TrustSettings {
    /// Reads each PEM public key file; any unreadable or invalid file is an error naming it.
    pub fn from_files(files: &[PathBuf], allow_rollback: bool) -> Result<Self, String> {
        let keys = files.iter().map(|path| read_public_key(path)).collect::<Result<Vec<_>, _>>()?;
        Ok(TrustSettings { keys: Keyring::new(keys), key_files: files.to_vec(), allow_rollback })
    }

    /// Signatures are required and verified.
    pub fn checks_signatures(&self) -> bool {
        !self.keys.is_empty()
    }
}

fn read_public_key(path: &Path) -> Result<PublicKey, String> {
    use std::io::Read as _;
    // A public key is a few hundred bytes; never read more than 16 KiB.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(16 * 1024).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    PublicKey::from_text(&String::from_utf8_lossy(&bytes)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Why a candidate was refused; the message is what logs, `/policy` and the
/// start-up error show.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Table(#[from] table::TableError),
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
    #[error(transparent)]
    Succession(#[from] signature::SuccessionError),
}

/// Decides whether `bytes` may replace `active` (or start serving when
/// `active` is `None`), and builds the policy that would serve.
pub fn admit(
    bytes: &[u8],
    disabled: ActionSet,
    trust: &TrustSettings,
    active: Option<&ActivePolicy>,
) -> Result<ActivePolicy, Refused> {
    if bytes.is_empty() {
        return Err(table::TableError::Truncated { what: "header", have: 0, need: table::HEADER_LEN as u64 }.into());
    }
    let table: CompiledTable = table::decode(bytes)?;
    table.check_disabled(disabled)?;
    let file_sha256: [u8; 32] = Sha256::digest(bytes).into();
    let verified = if trust.checks_signatures() {
        let verified = trust.keys.verify(&table)?;
        let active_release =
            active.and_then(|a| a.verified.map(|v| Release { serial: v.serial, file_sha256: &a.file_sha256 }));
        signature::check_succession(
            active_release,
            Release { serial: verified.serial, file_sha256: &file_sha256 },
            trust.allow_rollback,
        )?;
        Some(verified)
    } else {
        None
    };
    Ok(ActivePolicy { table, file_sha256, loaded_at: SystemTime::now(), verified })
}
