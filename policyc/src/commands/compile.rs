//! `policyc compile`: check, run the policy tests, optionally sign, then write the table atomically.

use std::path::{Path, PathBuf};

use egress_policy::acl;
use egress_policy::decision::PolicyTable;
use egress_policy::policy::ActionSet;
use egress_policy::signature;
use egress_policy::table::{self, Metadata};

use super::{Failure, print_test_run, read_source, read_test_files, sign};
use crate::policytest;
use crate::report::{plural, print_human};

pub fn run(
    file: &Path,
    output: &Path,
    tests: &[PathBuf],
    disabled: ActionSet,
    sign_with: Option<&Path>,
    serial: Option<u64>,
) -> Result<(), Failure> {
    let bytes = read_source(file)?;
    // A bad key is a usage error before any work.
    let key = sign_with.map(sign::read_private_key).transpose()?;
    // Read every test file first: an unreadable one is a usage error, before any work.
    let test_files = read_test_files(tests)?;
    let checked = acl::check_bytes(&file.display().to_string(), &bytes, disabled);
    print_human(&checked.diagnostics, &bytes);
    let Some(policy) = checked.policy else {
        eprintln!("failed: {} error{}; no table written", checked.error_count(), plural(checked.error_count()));
        return Err(Failure::Policy);
    };
    if !test_files.is_empty() {
        let run = policytest::run_files(&PolicyTable::new(&policy), &test_files);
        print_test_run(&run, &test_files);
        if run.failed() {
            eprintln!("failed: policy tests did not pass; no table written");
            return Err(Failure::Policy);
        }
    }
    let mut encoded = table::encode(&policy, &Metadata::for_source(file, &bytes, disabled));
    let mut signed = String::new();
    if let Some(key) = &key {
        let serial = sign::serial_or_now(serial)?;
        encoded = signature::sign_table(&encoded, key, serial)
            .map_err(|e| Failure::Refused(format!("internal error: cannot sign the compiled table: {e}")))?;
        signed = format!(", signed: serial {serial}, key id {}", key.public_key().id());
    }
    // Verify what we are about to ship with the same reader proxyd uses.
    let loaded = table::decode(&encoded)
        .map_err(|e| Failure::Refused(format!("internal error: compiled table does not verify: {e}")))?;
    table::write_atomically(output, &encoded)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", output.display())))?;
    eprintln!(
        "compiled {} -> {} (revision {}, {} service{}, {} pattern{}, {} bytes{signed})",
        file.display(),
        output.display(),
        loaded.revision(),
        policy.services.len(),
        plural(policy.services.len()),
        policy.pattern_count(),
        plural(policy.pattern_count()),
        encoded.len()
    );
    Ok(())
}
