//! The `policyc` command line: a thin shell over the library.
//!
//! Exit codes: 0 success, 1 policy errors (or a refused table), 2 usage or
//! I/O errors. Messages go to stderr, data (JSON, explanations, inspect
//! output) to stdout.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use policyc::acl::{self, Checked};
use policyc::address::{AddressPolicy, AddressRules};
use policyc::decision::{Decision, PolicyTable};
use policyc::destination;
use policyc::diagnostic::{self, Diagnostic};
use policyc::host::CanonicalHost;
use policyc::policy::{Action, ActionSet, Policy};
use policyc::policytest::{self, CaseReport, TestFile};
use policyc::sarif;
use policyc::table::{self, CompiledTable, Metadata};
use policyc::yaml::MAX_SOURCE_BYTES;

#[derive(Debug, Parser)]
#[command(
    name = "policyc",
    version,
    about = "Check, explain and compile egress ACLs (Smokescreen v1 format) into a verified decision table"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and lint ACL files; report every problem with file:line:col.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        disabled: Disabled,
        /// Treat warnings as errors (exit 1).
        #[arg(long)]
        deny_warnings: bool,
        #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
        format: ReportFormat,
    },
    /// Run policy test files against a policy; report every failing case.
    Test {
        /// An ACL (YAML) or a compiled table.
        policy: PathBuf,
        /// Policy test files (YAML, see schema/policy-tests.schema.json).
        #[arg(required = true)]
        tests: Vec<PathBuf>,
        #[command(flatten)]
        disabled: Disabled,
        #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
        format: ReportFormat,
    },
    /// Check an ACL, then write its compiled table atomically.
    Compile {
        file: PathBuf,
        /// Where to write the table (temp file + fsync + rename).
        #[arg(short, long)]
        output: PathBuf,
        /// A policy test file that must pass before the table is written (repeatable).
        #[arg(long = "test", value_name = "TESTFILE")]
        tests: Vec<PathBuf>,
        #[command(flatten)]
        disabled: Disabled,
    },
    /// Show how a policy decides a role's request for a host.
    Explain {
        /// An ACL (YAML) or a compiled table.
        policy: PathBuf,
        /// The client's role; "" for a client without a role (default rule).
        role: String,
        /// The destination: HOST or HOST:PORT ([v6]:PORT for IPv6).
        destination: String,
        /// Also classify this address, as if DNS had answered it, with the
        /// built-in address rules (no operator rules); port from HOST:PORT, else 443.
        #[arg(long, value_name = "ADDR")]
        ip: Option<IpAddr>,
        #[command(flatten)]
        disabled: Disabled,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Verify a compiled table and print its header and contents summary.
    Inspect {
        table: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show which role/host decisions change between two policies (YAML or tables).
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Exit 1 when any decision (verdict or reason) changes.
        #[arg(long)]
        exit_code: bool,
        #[command(flatten)]
        disabled: Disabled,
        #[arg(long, value_enum, default_value_t = DiffFormat::Human)]
        format: DiffFormat,
    },
}

/// How `diff` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DiffFormat {
    /// Plain text on stdout.
    Human,
    /// One JSON document on stdout (shape in the README).
    Json,
    /// Markdown for a pull-request comment.
    Markdown,
}

#[derive(Debug, Args)]
struct Disabled {
    /// Make any rule that uses ACTION an error (repeatable).
    #[arg(long = "disable-acl-policy-action", value_name = "ACTION", value_parser = parse_action)]
    actions: Vec<Action>,
}

impl Disabled {
    fn set(&self) -> ActionSet {
        self.actions.iter().copied().collect()
    }
}

fn parse_action(s: &str) -> Result<Action, String> {
    s.parse::<Action>().map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// How `check` and `test` report: for people, for scripts, for GitHub
/// Actions annotations, or for code scanning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    /// rustc-style messages on stderr.
    Human,
    /// One JSON document on stdout (shape in schema/policyc-report.schema.json).
    Json,
    /// GitHub Actions workflow commands (`::error file=...`) on stdout.
    Github,
    /// A SARIF 2.1.0 log on stdout.
    Sarif,
}

/// A failure that ends the command, with its exit code.
enum Failure {
    /// Policy errors: already reported.
    Policy,
    /// Usage or I/O error, with the message to print.
    Usage(String),
    /// A refused table or bad policy, with the message to print.
    Refused(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { files, disabled, deny_warnings, format } => {
            check(&files, disabled.set(), deny_warnings, format)
        }
        Command::Test { policy, tests, disabled, format } => test(&policy, &tests, disabled.set(), format),
        Command::Compile { file, output, tests, disabled } => compile(&file, &output, &tests, disabled.set()),
        Command::Explain { policy, role, destination, ip, disabled, format } => {
            explain(&policy, &role, &destination, ip, disabled.set(), format)
        }
        Command::Inspect { table, format } => inspect(&table, format),
        Command::Diff { old, new, exit_code, disabled, format } => diff(&old, &new, exit_code, disabled.set(), format),
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

fn read_source(path: &Path) -> Result<Vec<u8>, Failure> {
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

fn print_human(diagnostics: &[Diagnostic], source: &[u8]) {
    let text = std::str::from_utf8(source).ok();
    for d in diagnostics {
        eprint!("{}", d.render_human(text));
    }
}

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

fn check(files: &[PathBuf], disabled: ActionSet, deny_warnings: bool, format: ReportFormat) -> Result<(), Failure> {
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

/// Prints diagnostics as GitHub workflow commands or as a SARIF log, on stdout.
fn print_machine(format: ReportFormat, diagnostics: Vec<Diagnostic>) -> Result<(), Failure> {
    let cwd = std::env::current_dir().ok();
    let path_of = |file: &str| relative_to(cwd.as_deref(), file);
    let out = match format {
        ReportFormat::Sarif => format!("{}\n", to_json(&sarif::log(&diagnostics, path_of))),
        _ => diagnostics.iter().map(|d| d.render_github(&path_of(&d.file))).collect(),
    };
    write_stdout(&out)
}

/// Writes a report to stdout; a closed pipe is an error (exit 2), never a panic.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Usage(format!("cannot write to stdout: {e}")))
}

/// `file` relative to the working directory when it lies inside it; else as given.
fn relative_to(cwd: Option<&Path>, file: &str) -> String {
    let path = Path::new(file);
    let relative = cwd.filter(|_| path.is_absolute()).and_then(|cwd| path.strip_prefix(cwd).ok());
    let shown = relative.unwrap_or(path).display().to_string();
    shown.strip_prefix("./").map(str::to_owned).unwrap_or(shown)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise output: {e}\"}}"))
}

fn compile(file: &Path, output: &Path, tests: &[PathBuf], disabled: ActionSet) -> Result<(), Failure> {
    let bytes = read_source(file)?;
    // Read every test file first: an unreadable one is a usage error, before any work.
    let test_files = read_test_files(tests)?;
    let checked = acl::check_bytes(&file.display().to_string(), &bytes, disabled);
    print_human(&checked.diagnostics, &bytes);
    let Some(policy) = checked.policy else {
        eprintln!("failed: {} error{}; no table written", checked.error_count(), plural(checked.error_count()));
        return Err(Failure::Policy);
    };
    if !test_files.is_empty() {
        let summary = run_tests(&PolicyTable::new(&policy), &test_files);
        summary.print_human(&test_files);
        if summary.failed() {
            eprintln!("failed: policy tests did not pass; no table written");
            return Err(Failure::Policy);
        }
    }
    let encoded = table::encode(&policy, &Metadata::for_source(file, &bytes, disabled));
    // Verify what we are about to ship with the same reader proxyd uses.
    let loaded = table::decode(&encoded)
        .map_err(|e| Failure::Refused(format!("internal error: compiled table does not verify: {e}")))?;
    table::write_atomically(output, &encoded)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", output.display())))?;
    eprintln!(
        "compiled {} -> {} (revision {}, {} service{}, {} pattern{}, {} bytes)",
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

/// A policy ready to decide with, from either YAML or a table.
struct Loaded {
    table: PolicyTable,
    revision: Option<String>,
    policy: Policy,
}

/// A YAML policy's errors, with its text for human rendering.
struct PolicyErrors {
    diagnostics: Vec<Diagnostic>,
    source: Vec<u8>,
}

/// Loads YAML or a compiled table. `Ok(Err(..))` is a YAML policy with errors,
/// returned (not printed) so each command reports them in its own format.
fn try_load_policy(path: &Path, disabled: ActionSet) -> Result<Result<Loaded, PolicyErrors>, Failure> {
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

fn load_policy(path: &Path, disabled: ActionSet) -> Result<Loaded, Failure> {
    try_load_policy(path, disabled)?.map_err(|errors| {
        print_human(&errors.diagnostics, &errors.source);
        Failure::Policy
    })
}

fn parse_destination(input: &str) -> Result<(CanonicalHost, Option<u16>), Failure> {
    destination::parse(input).map(|d| (d.host, d.port)).map_err(|e| Failure::Usage(e.to_string()))
}

fn read_test_files(paths: &[PathBuf]) -> Result<Vec<(TestFile, Vec<u8>)>, Failure> {
    paths
        .iter()
        .map(|path| {
            let bytes = read_source(path)?;
            Ok((policytest::parse_bytes(&path.display().to_string(), &bytes), bytes))
        })
        .collect()
}

/// Every test file's cases run against one table.
struct TestRun {
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
    fn failed(&self) -> bool {
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

    fn print_human(&self, files: &[(TestFile, Vec<u8>)]) {
        for ((file, bytes), failures) in files.iter().zip(&self.failures) {
            print_human(&file.diagnostics, bytes);
            for failure in failures {
                eprint!("{failure}");
            }
        }
        eprintln!("{}", self.summary(files.len()));
    }
}

fn run_tests(table: &PolicyTable, files: &[(TestFile, Vec<u8>)]) -> TestRun {
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

fn test(policy: &Path, tests: &[PathBuf], disabled: ActionSet, format: ReportFormat) -> Result<(), Failure> {
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

#[derive(Serialize)]
struct Explanation<'a> {
    decision: &'static str,
    reason: &'static str,
    reason_code: &'static str,
    rule: Option<String>,
    project: &'a str,
    pattern: Option<String>,
    list: Option<&'static str>,
    default_rule: bool,
    enforce_would_deny: bool,
    role: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    policy_revision: Option<&'a str>,
    /// The address stage's verdict for `--ip`; the decision above is the name stage's alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<AddressExplanation>,
}

#[derive(Serialize)]
struct AddressExplanation {
    ip: IpAddr,
    allowed: bool,
    rule: String,
    rule_code: &'static str,
}

impl AddressExplanation {
    fn new(ip: IpAddr, port: u16) -> Self {
        let verdict = AddressPolicy::new(AddressRules::default()).classify(SocketAddr::new(ip, port));
        AddressExplanation {
            ip,
            allowed: verdict.allowed,
            rule: verdict.rule.to_string(),
            rule_code: verdict.rule.code(),
        }
    }
}

impl<'a> Explanation<'a> {
    fn new(
        d: &Decision<'a>,
        role: Option<&'a str>,
        host: &'a CanonicalHost,
        port: Option<u16>,
        revision: Option<&'a str>,
    ) -> Self {
        Explanation {
            decision: d.verdict.as_str(),
            reason: d.reason.as_str(),
            reason_code: d.reason.code(),
            rule: match d.rule {
                policyc::decision::RuleRef::None => None,
                other => Some(other.to_string()),
            },
            project: d.project,
            pattern: d.matched.map(|(_, m)| m.to_string()),
            list: d.matched.map(|(list, _)| list.as_str()),
            default_rule: d.default_rule(),
            enforce_would_deny: d.verdict.enforce_would_deny(),
            role,
            host: host.as_str(),
            port,
            policy_revision: revision,
            address: None,
        }
    }
}

fn explain(
    policy: &Path,
    role: &str,
    destination: &str,
    ip: Option<IpAddr>,
    disabled: ActionSet,
    format: Format,
) -> Result<(), Failure> {
    let (host, port) = parse_destination(destination)?;
    let loaded = load_policy(policy, disabled)?;
    let role = (!role.is_empty()).then_some(role);
    let decision = loaded.table.decide(role, &host);
    let mut e = Explanation::new(&decision, role, &host, port, loaded.revision.as_deref());
    e.address = ip.map(|ip| AddressExplanation::new(ip, port.unwrap_or(443)));
    match format {
        Format::Json => println!("{}", to_json(&e)),
        Format::Human => {
            println!("decision:     {}", e.decision);
            println!("reason:       {}", e.reason);
            let rule = match (&e.rule, e.default_rule) {
                (Some(r), true) => match role {
                    Some(role) => format!("{r} (role {role:?} has no rule of its own)"),
                    None => format!("{r} (the client has no role)"),
                },
                (Some(r), false) => r.clone(),
                (None, _) => "none".into(),
            };
            println!("rule:         {rule}");
            println!("project:      {}", if e.project.is_empty() { "-" } else { e.project });
            match (&e.pattern, e.list) {
                (Some(p), Some(list)) => println!("pattern:      {p} (in {list})"),
                _ => println!("pattern:      none (the rule's action decided)"),
            }
            println!("host:         {}{}", e.host, port.map(|p| format!(" port {p}")).unwrap_or_default());
            if let Some(a) = &e.address {
                println!("address:      {} {} ({})", a.ip, if a.allowed { "allowed" } else { "denied" }, a.rule);
            }
            if let Some(rev) = e.policy_revision {
                println!("revision:     {rev}");
            }
            if e.decision == "report" {
                println!("note:         allowed, logged with enforce_would_deny=true");
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Inspection<'a> {
    file: String,
    format_version: u32,
    revision: &'a str,
    body_bytes: u64,
    body_sha256: String,
    source_name: &'a str,
    source_sha256: &'a str,
    compiler: &'a str,
    disabled_actions: Vec<&'static str>,
    services: usize,
    default_rule: Option<&'static str>,
    patterns: usize,
    global_allow_list: usize,
    global_deny_list: usize,
}

fn inspect(path: &Path, format: Format) -> Result<(), Failure> {
    let compiled: CompiledTable = table::read_file(path).map_err(|e| match e {
        table::TableError::Io(io) => Failure::Usage(format!("cannot read {}: {io}", path.display())),
        other => Failure::Refused(format!("{}: {other}", path.display())),
    })?;
    let i = Inspection {
        file: path.display().to_string(),
        format_version: compiled.header.format_version,
        revision: compiled.revision(),
        body_bytes: compiled.header.body_len,
        body_sha256: hex::encode(compiled.header.body_sha256),
        source_name: &compiled.metadata.source_name,
        source_sha256: &compiled.metadata.source_sha256,
        compiler: &compiled.metadata.compiler,
        disabled_actions: compiled.metadata.disabled_actions.iter().map(|a| a.as_str()).collect(),
        services: compiled.policy.services.len(),
        default_rule: compiled.policy.default.as_ref().map(|d| d.action.as_str()),
        patterns: compiled.policy.pattern_count(),
        global_allow_list: compiled.policy.global_allow_list.len(),
        global_deny_list: compiled.policy.global_deny_list.len(),
    };
    match format {
        Format::Json => println!("{}", to_json(&i)),
        Format::Human => {
            println!("table:            {} (verified)", i.file);
            println!("format version:   {}", i.format_version);
            println!("revision:         {}", i.revision);
            println!("body:             {} bytes, sha256 {}", i.body_bytes, i.body_sha256);
            println!("source:           {} (sha256 {})", i.source_name, i.source_sha256);
            println!("compiler:         {}", i.compiler);
            let disabled =
                if i.disabled_actions.is_empty() { "none".to_owned() } else { i.disabled_actions.join(", ") };
            println!("disabled actions: {disabled}");
            println!("services:         {}", i.services);
            println!("default rule:     {}", i.default_rule.unwrap_or("none (unknown roles are denied)"));
            println!(
                "patterns:         {} ({} global allow, {} global deny)",
                i.patterns, i.global_allow_list, i.global_deny_list
            );
        }
    }
    Ok(())
}

fn diff(old: &Path, new: &Path, exit_code: bool, disabled: ActionSet, format: DiffFormat) -> Result<(), Failure> {
    let (before, after) = (load_policy(old, disabled)?, load_policy(new, disabled)?);
    let changes = policyc::diff::diff(&before.policy, &after.policy);
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
