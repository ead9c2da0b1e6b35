//! `policyc test`: run policy test files against a policy.

use std::path::{Path, PathBuf};

use egress_policy::decision::PolicyTable;
use egress_policy::diagnostic::{self, Diagnostic};
use egress_policy::policy::ActionSet;
use serde::Serialize;

use super::{Failure, read_test_files, try_load_policy};
use crate::cli::ReportFormat;
use crate::policytest::{self, CaseReport, TestFile};
use crate::report::{plural, print_human, print_machine, to_json, write_stdout};

/// Every test file's cases run against one table.
pub(crate) struct TestRun {
    reports: Vec<CaseReport>,
    /// Problems in the test files, then one `P017` per failing case, in file order.
    diagnostics: Vec<Diagnostic>,
    /// Human renderings of the failures, per file.
    failures: Vec<Vec<String>>,
}

impl TestRun {
    fn cases(&self) -> usize {
        self.reports.len()
    }
    fn failed_cases(&self) -> usize {
        self.reports.iter().filter(|r| !r.passed).count()
    }
    fn file_errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error() && d.code != diagnostic::Code::TestFailed).count()
    }
    pub(crate) fn failed(&self) -> bool {
        self.failed_cases() > 0 || self.file_errors() > 0
    }

    fn summary(&self, files: usize) -> String {
        let (cases, failed, errors) = (self.cases(), self.failed_cases(), self.file_errors());
        let verdict = if self.failed() { "failed" } else { "ok" };
        let mut line = format!(
            "{verdict}: {} of {cases} case{} passed in {files} test file{}",
            cases - failed,
            plural(cases),
            plural(files)
        );
        if failed > 0 {
            line.push_str(&format!(", {failed} failed"));
        }
        if errors > 0 {
            line.push_str(&format!(", {errors} error{} in test files", plural(errors)));
        }
        line
    }

    pub(crate) fn print_human(&self, files: &[(TestFile, Vec<u8>)]) {
        for ((file, bytes), failures) in files.iter().zip(&self.failures) {
            print_human(&file.diagnostics, bytes);
            for failure in failures {
                eprint!("{failure}");
            }
        }
        eprintln!("{}", self.summary(files.len()));
    }
}

pub(crate) fn run_tests(table: &PolicyTable, files: &[(TestFile, Vec<u8>)]) -> TestRun {
    let mut run = TestRun { reports: Vec::new(), diagnostics: Vec::new(), failures: Vec::new() };
    for (file, _) in files {
        let outcomes = policytest::run(table, file);
        run.diagnostics.extend(file.diagnostics.iter().cloned());
        run.diagnostics.extend(outcomes.iter().filter_map(|o| o.failure(&file.file)));
        run.failures.push(outcomes.iter().filter(|o| !o.passed()).map(|o| o.render_human(&file.file)).collect());
        run.reports.extend(outcomes.iter().map(|o| CaseReport::new(&file.file, o)));
    }
    diagnostic::sort(&mut run.diagnostics);
    run
}

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
    let run = run_tests(&loaded.table, &files);
    match format {
        ReportFormat::Human => run.print_human(&files),
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
