//! `policyc sign`: sign an existing compiled table (atomic write), and the
//! key and serial handling `compile --sign` shares.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use egress_policy::signature::{self, PrivateKey};
use egress_policy::table;

use super::{Failure, read_source};

pub fn run(path: &Path, key_path: &Path, serial: Option<u64>, output: Option<&Path>) -> Result<(), Failure> {
    let key = read_private_key(key_path)?;
    let serial = serial_or_now(serial)?;
    let bytes = table::read_bytes(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let signed = signature::sign_table(&bytes, &key, serial)
        .map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))?;
    let revision = table::decode(&signed)
        .map_err(|e| Failure::Refused(format!("internal error: the signed table does not verify: {e}")))?
        .revision()
        .to_owned();
    let output = output.unwrap_or(path);
    table::write_atomically(output, &signed)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", output.display())))?;
    eprintln!(
        "signed {} -> {} (revision {revision}, serial {serial}, key id {})",
        path.display(),
        output.display(),
        key.public_key().id()
    );
    Ok(())
}

/// Reads a PEM private key; warns when others may read it.
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKey, Failure> {
    let bytes = read_source(path)?;
    if let Ok(meta) = path.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "policyc: warning: {} is readable by other users (mode {:o}); use chmod 600",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    PrivateKey::from_text(&String::from_utf8_lossy(&bytes))
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

/// The given serial, or the current Unix time in seconds.
pub(crate) fn serial_or_now(serial: Option<u64>) -> Result<u64, Failure> {
    match serial {
        Some(0) => Err(Failure::Usage("the serial must be a positive integer".into())),
        Some(n) => Ok(n),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::Usage("the clock is before 1970: pass --serial".into())),
    }
}
