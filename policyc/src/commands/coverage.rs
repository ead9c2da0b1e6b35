//! `policyc coverage`: which `allowed_domains` entries the decision logs use.

use std::path::{Path, PathBuf};

use egress_policy::policy::ActionSet;

use super::{Failure, load_policy, print_line_counts, read_logs};
use crate::cli::Format;
use crate::report::{write_json_stdout, write_stdout};

pub fn run(policy: &Path, logs: &[PathBuf], format: Format, strict: bool) -> Result<(), Failure> {
    let loaded = load_policy(policy, ActionSet::default())?;
    let aggregate = read_logs(logs, None)?;
    print_line_counts(&aggregate.lines);
    let report = crate::coverage::coverage(&loaded.policy, &loaded.table, &aggregate);
    match format {
        Format::Human => write_stdout(&report.render_human())?,
        Format::Json => write_json_stdout(&report)?,
    }
    if strict && aggregate.lines.malformed > 0 {
        return Err(Failure::Refused(format!("--strict: {} malformed log line(s)", aggregate.lines.malformed)));
    }
    Ok(())
}
