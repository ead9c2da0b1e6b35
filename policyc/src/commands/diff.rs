//! `policyc diff`: which role/host decisions change between two policies.

use std::path::Path;

use egress_policy::policy::ActionSet;

use super::{Failure, load_policy};
use crate::cli::DiffFormat;

pub fn run(old: &Path, new: &Path, exit_code: bool, disabled: ActionSet, format: DiffFormat) -> Result<(), Failure> {
    let (before, after) = (load_policy(old, disabled)?, load_policy(new, disabled)?);
    let changes = crate::diff::diff(&before.policy, &after.policy);
    let (old, new) = (old.display().to_string(), new.display().to_string());
    print!(
        "{}",
        match format {
            DiffFormat::Human => changes.render_human(&old, &new),
            DiffFormat::Json => changes.render_json(&old, &new) + "\n",
            DiffFormat::Markdown => changes.render_markdown(&old, &new),
        }
    );
    if exit_code && changes.has_decision_changes() {
        return Err(Failure::Policy);
    }
    Ok(())
}
