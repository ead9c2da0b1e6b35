//! `policyc test`: run policy test files against a policy.

use std::path::{Path, PathBuf};

use egress_policy::diagnostic::Diagnostic;
use egress_policy::policy::ActionSet;
use serde::Serialize;

use super::{Failure, print_test_run, read_test_files, try_load_policy};
use crate::cli::ReportFormat;
use crate::policytest::{self, CaseReport};
use crate::report::{print_human, print_machine, to_json, write_stdout};

#[derive(Serialize)]
struct TestReport<'a> {
    /// Version of this JSON shape.
    format_version: u32,
    policy: String,
    policy_revision: Option<&'a str>,
    files: Vec<TestFileSummary>,
    cases: &'a [CaseReport],
    diagnostics: &'a [Diagnostic],
    passed: usize,
    failed: usize,
    errors: usize,
}

#[derive(Serialize)]
struct TestFileSummary {
    file: String,
    cases: usize,
    failed: usize,
    errors: usize,
}

pub fn run(policy: &Path, tests: &[PathBuf], disabled: ActionSet, format: ReportFormat) -> Result<(), Failure> {
    let files = read_test_files(tests)?;
    let loaded = match try_load_policy(policy, disabled)? {
        Ok(loaded) => loaded,
        Err(errors) => {
            // The policy itself is broken: report that, in the format asked for.
            match format {
                ReportFormat::Human => print_human(&errors.diagnostics, &errors.source),
                ReportFormat::Json => {
                    let report = TestReport {
                        format_version: 1,
                        policy: policy.display().to_string(),
                        policy_revision: None,
                        files: Vec::new(),
                        cases: &[],
                        diagnostics: &errors.diagnostics,
                        passed: 0,
                        failed: 0,
                        errors: errors.diagnostics.len(),
                    };
                    write_stdout(&format!("{}\n", to_json(&report)))?;
                }
                ReportFormat::Github | ReportFormat::Sarif => print_machine(format, errors.diagnostics)?,
            }
            eprintln!("failed: {} has errors; no test was run", policy.display());
            return Err(Failure::Policy);
        }
    };
    let run = policytest::run_files(&loaded.table, &files);
    match format {
        ReportFormat::Human => print_test_run(&run, &files),
        ReportFormat::Json => {
            let report = TestReport {
                format_version: 1,
                policy: policy.display().to_string(),
                policy_revision: loaded.revision.as_deref(),
                files: files
                    .iter()
                    .map(|(f, _)| TestFileSummary {
                        file: f.file.clone(),
                        cases: f.cases.len(),
                        failed: run.reports.iter().filter(|r| r.file == f.file && !r.passed).count(),
                        errors: f.error_count(),
                    })
                    .collect(),
                cases: &run.reports,
                diagnostics: &run.diagnostics,
                passed: run.cases() - run.failed_cases(),
                failed: run.failed_cases(),
                errors: run.file_errors(),
            };
            write_stdout(&format!("{}\n", to_json(&report)))?;
        }
        ReportFormat::Github | ReportFormat::Sarif => {
            print_machine(format, run.diagnostics.clone())?;
            eprintln!("{}", run.summary(files.len()));
        }
    }
    if run.failed() {
        return Err(Failure::Policy);
    }
    Ok(())
}
