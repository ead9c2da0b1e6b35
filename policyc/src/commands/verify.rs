//! `policyc verify`: does a table carry a valid signature by one of the given
//! public keys? Exit 0 and say by which key, else exit 1 with the reason
//! (no signature, unknown key id, bad signature, corrupt table). The checks
//! are the ones proxyd makes (`egress_policy::signature::Keyring::verify`).

use std::path::{Path, PathBuf};

use egress_policy::signature::{Keyring, PublicKey};
use egress_policy::table;

use super::{Failure, read_source};

pub fn run(path: &Path, public_keys: &[PathBuf]) -> Result<(), Failure> {
    let keys = public_keys
        .iter()
        .map(|p| {
            let text = read_source(p)?;
            PublicKey::from_text(&String::from_utf8_lossy(&text))
                .map_err(|e| Failure::Usage(format!("{}: {e}", p.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let compiled = table::read_file(path).map_err(|e| match e {
        table::TableError::Io(io) => Failure::Usage(format!("cannot read {}: {io}", path.display())),
        other => Failure::Refused(format!("{}: corrupt table: {other}", path.display())),
    })?;
    let verified =
        Keyring::new(keys).verify(&compiled).map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))?;
    println!(
        "{}: verified: signed by key id {}, serial {}, revision {}",
        path.display(),
        verified.key_id,
        verified.serial,
        compiled.revision()
    );
    Ok(())
}
