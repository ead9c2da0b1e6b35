//! `policyc check`: parse and lint ACL files, report every problem.

use std::path::PathBuf;

use egress_policy::acl::{self, Checked};
use egress_policy::diagnostic::Diagnostic;
use egress_policy::policy::ActionSet;
use serde::Serialize;

use super::{Failure, read_source};
use crate::cli::ReportFormat;
use crate::report::{plural, print_human, print_machine, to_json, write_stdout};

#[derive(Serialize)]
struct CheckReport<'a> {
    /// Version of this JSON shape.
    format_version: u32,
    files: Vec<FileSummary>,
    diagnostics: Vec<&'a Diagnostic>,
    errors: usize,
    warnings: usize,
}

#[derive(Serialize)]
struct FileSummary {
    file: String,
    errors: usize,
    warnings: usize,
}

pub fn run(files: &[PathBuf], disabled: ActionSet, deny_warnings: bool, format: ReportFormat) -> Result<(), Failure> {
    let mut results: Vec<(String, Vec<u8>, Checked)> = Vec::new();
    for path in files {
        let bytes = read_source(path)?;
        let name = path.display().to_string();
        let checked = acl::check_bytes(&name, &bytes, disabled);
        results.push((name, bytes, checked));
    }
    let errors: usize = results.iter().map(|(_, _, c)| c.error_count()).sum();
    let warnings: usize = results.iter().map(|(_, _, c)| c.warning_count()).sum();
    let failed = errors > 0 || (deny_warnings && warnings > 0);
    let verdict = if failed { "failed" } else { "ok" };
    let summary = format!(
        "{verdict}: {} file{} checked, {errors} error{}, {warnings} warning{}",
        results.len(),
        plural(results.len()),
        plural(errors),
        plural(warnings)
    );
    let all: Vec<&Diagnostic> = results.iter().flat_map(|(_, _, c)| c.diagnostics.iter()).collect();
    match format {
        ReportFormat::Human => {
            for (_, bytes, checked) in &results {
                print_human(&checked.diagnostics, bytes);
            }
            eprintln!("{summary}");
        }
        ReportFormat::Json => {
            let report = CheckReport {
                format_version: 1,
                files: results
                    .iter()
                    .map(|(file, _, c)| FileSummary {
                        file: file.clone(),
                        errors: c.error_count(),
                        warnings: c.warning_count(),
                    })
                    .collect(),
                diagnostics: all,
                errors,
                warnings,
            };
            write_stdout(&format!("{}\n", to_json(&report)))?;
        }
        ReportFormat::Github | ReportFormat::Sarif => {
            print_machine(format, all.into_iter().cloned().collect())?;
            eprintln!("{summary}");
        }
    }
    if failed {
        return Err(Failure::Policy);
    }
    Ok(())
}
