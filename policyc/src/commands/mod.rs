//! Each subcommand in its own module, plus what several of them share:
//! reading a bounded source file, loading a policy from YAML or a table, and
//! the exit-code contract.
//!
//! Exit codes: 0 success, 1 policy errors (or a refused table), 2 usage or
//! I/O errors. Messages go to stderr, data (JSON, explanations, inspect
//! output) to stdout.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use egress_policy::acl;
use egress_policy::decision::PolicyTable;
use egress_policy::destination;
use egress_policy::diagnostic::Diagnostic;
use egress_policy::host::CanonicalHost;
use egress_policy::policy::{ActionSet, Policy};
use egress_policy::table;
use egress_policy::yaml::MAX_SOURCE_BYTES;

use crate::cli::{Cli, Command};
use crate::policytest::{self, TestFile, TestRun};
use crate::report;

pub mod check;
pub mod compile;
pub mod completions;
pub mod coverage;
pub mod diff;
pub mod explain;
pub mod inspect;
pub mod keygen;
pub mod man;
pub mod sign;
pub mod suggest;
pub mod test;
pub mod verify;

/// A failure that ends the command, with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Policy errors: already reported.
    Policy,
    /// Usage or I/O error, with the message to print.
    Usage(String),
    /// A refused table or bad policy, with the message to print.
    Refused(String),
}

impl From<report::StdoutError> for Failure {
    fn from(error: report::StdoutError) -> Failure {
        Failure::Usage(error.to_string())
    }
}

/// Runs one parsed command line; the exit code follows the module doc.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Check { files, disabled, deny_warnings, format } => {
            check::run(&files, disabled.set(), deny_warnings, format)
        }
        Command::Test { policy, tests, disabled, format } => test::run(&policy, &tests, disabled.set(), format),
        Command::Compile { file, output, tests, disabled, sign, serial } => {
            compile::run(&file, &output, &tests, disabled.set(), sign.as_deref(), serial)
        }
        Command::Keygen { private, public, force } => keygen::run(&private, &public, force),
        Command::Sign { table, key, serial, output } => sign::run(&table, &key, serial, output.as_deref()),
        Command::Verify { table, public_keys } => verify::run(&table, &public_keys),
        Command::Explain { policy, role, destination, ip, disabled, format } => {
            explain::run(&policy, &role, &destination, ip, disabled.set(), format)
        }
        Command::Inspect { table, format } => inspect::run(&table, format),
        Command::Diff { old, new, exit_code, disabled, format } => {
            diff::run(&old, &new, exit_code, disabled.set(), format)
        }
        Command::Completions { shell } => completions::run(shell),
        Command::Man { dir } => man::run(&dir),
        Command::Suggest { policy, logs, output, roles, min_count, collapse, include_denied, format, strict } => {
            let options = crate::suggest::Options {
                min_count,
                collapse: collapse.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
                include_denied,
            };
            suggest::run(&policy, &logs, output.as_deref(), &roles, options, format, strict)
        }
        Command::Coverage { policy, logs, format, strict } => coverage::run(&policy, &logs, format, strict),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Policy) => ExitCode::from(1),
        Err(Failure::Refused(message)) => {
            eprintln!("policyc: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("policyc: {message}");
            ExitCode::from(2)
        }
    }
}

pub(crate) fn read_source(path: &Path) -> Result<Vec<u8>, Failure> {
    let file = fs::File::open(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() > MAX_SOURCE_BYTES {
        return Err(Failure::Usage(format!(
            "{} is larger than {} MiB",
            path.display(),
            MAX_SOURCE_BYTES / (1024 * 1024)
        )));
    }
    Ok(bytes)
}

/// A policy ready to decide with, from either YAML or a table.
pub(crate) struct Loaded {
    pub(crate) table: PolicyTable,
    pub(crate) revision: Option<String>,
    pub(crate) policy: Policy,
}

/// A YAML policy's errors, with its text for human rendering.
pub(crate) struct PolicyErrors {
    pub(crate) diagnostics: Vec<Diagnostic>,
    pub(crate) source: Vec<u8>,
}

/// Loads YAML or a compiled table. `Ok(Err(..))` is a YAML policy with errors,
/// returned (not printed) so each command reports them in its own format.
pub(crate) fn try_load_policy(path: &Path, disabled: ActionSet) -> Result<Result<Loaded, PolicyErrors>, Failure> {
    let bytes = read_source(path)?;
    if bytes.starts_with(&table::MAGIC) {
        let compiled = table::decode(&bytes).map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))?;
        compiled.check_disabled(disabled).map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))?;
        let revision = Some(compiled.revision().to_owned());
        return Ok(Ok(Loaded { table: compiled.table, revision, policy: compiled.policy }));
    }
    let checked = acl::check_bytes(&path.display().to_string(), &bytes, disabled);
    Ok(match checked.policy {
        Some(policy) => Ok(Loaded { table: PolicyTable::new(&policy), revision: None, policy }),
        None => Err(PolicyErrors {
            diagnostics: checked.diagnostics.into_iter().filter(Diagnostic::is_error).collect(),
            source: bytes,
        }),
    })
}

pub(crate) fn load_policy(path: &Path, disabled: ActionSet) -> Result<Loaded, Failure> {
    try_load_policy(path, disabled)?.map_err(|errors| {
        report::print_human(&errors.diagnostics, &errors.source);
        Failure::Policy
    })
}

pub(crate) fn parse_destination(input: &str) -> Result<(CanonicalHost, Option<u16>), Failure> {
    destination::parse(input).map(|d| (d.host, d.port)).map_err(|e| Failure::Usage(e.to_string()))
}

/// Prints a test run for people on stderr: each file's problems, its
/// failing cases, then the one-line verdict (`policyc test` and `compile`).
pub(crate) fn print_test_run(run: &TestRun, files: &[(TestFile, Vec<u8>)]) {
    for ((file, bytes), failures) in files.iter().zip(&run.failures) {
        report::print_human(&file.diagnostics, bytes);
        for failure in failures {
            eprint!("{failure}");
        }
    }
    eprintln!("{}", run.summary(files.len()));
}

pub(crate) fn read_test_files(paths: &[PathBuf]) -> Result<Vec<(TestFile, Vec<u8>)>, Failure> {
    paths
        .iter()
        .map(|path| {
            let bytes = read_source(path)?;
            Ok((policytest::parse_bytes(&path.display().to_string(), &bytes), bytes))
        })
        .collect()
}

/// Reads decision logs for `suggest` and `coverage`; an unreadable file or a
/// broken `.gz` is an I/O error (exit 2) naming the file.
pub(crate) fn read_logs(
    paths: &[PathBuf],
    roles: Option<&std::collections::HashSet<String>>,
) -> Result<crate::decision_log::Aggregate, Failure> {
    use crate::decision_log::{LogSource, read_all};
    if paths.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(Failure::Usage("`-` (standard input) can be given only once".into()));
    }
    let sources: Vec<LogSource> = paths.iter().map(|p| LogSource::from_arg(p)).collect();
    read_all(&sources, roles).map_err(|e| Failure::Usage(format!("cannot read decision log {e}")))
}

/// One stderr summary of what the logs held, with the first malformed lines.
pub(crate) fn print_line_counts(lines: &crate::decision_log::LineCounts) {
    eprintln!(
        "logs: {} line{} read, {} decision{}, {} other line{} skipped, {} malformed",
        lines.total,
        report::plural(usize::try_from(lines.total).unwrap_or(2)),
        lines.decisions,
        report::plural(usize::try_from(lines.decisions).unwrap_or(2)),
        lines.skipped,
        report::plural(usize::try_from(lines.skipped).unwrap_or(2)),
        lines.malformed
    );
    for example in &lines.malformed_examples {
        eprintln!("  malformed: {}", crate::diff::printable(example));
    }
    if lines.malformed > lines.malformed_examples.len() as u64 {
        eprintln!("  … and {} more malformed line(s)", lines.malformed - lines.malformed_examples.len() as u64);
    }
    for (count, what) in [
        (lines.without_role, "decision line(s) without a role (no rule to add to)"),
        (lines.undecided, "line(s) for requests refused before the policy was asked"),
        (lines.filtered_out, "decision line(s) of roles outside --role"),
    ] {
        if count > 0 {
            eprintln!("  {count} {what}");
        }
    }
}
