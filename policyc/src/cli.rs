//! The command line: every subcommand, flag and output format `policyc`
//! accepts, as clap definitions. Parsing only: each command's behaviour lives
//! in `commands/`, each output format in `report/`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use egress_policy::policy::{Action, ActionSet};

#[derive(Debug, Parser)]
#[command(
    name = "policyc",
    version = crate::VERSION,
    about = "Check, explain and compile egress ACLs (Smokescreen v1 format) into a verified decision table"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        /// Sign the table with this Ed25519 private key (PEM, from `policyc keygen`).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// The signature's serial (a positive integer that must grow with
        /// every release; default: the current Unix time in seconds).
        #[arg(long, value_name = "N", requires = "sign", value_parser = parse_serial)]
        serial: Option<u64>,
    },
    /// Show how a policy decides a role's request for a host.
    Explain {
        /// An ACL (YAML) or a compiled table.
        policy: PathBuf,
        /// The client's role; "" for a client without a role (default rule).
        role: String,
        /// The destination: HOST or HOST:PORT ([v6]:PORT for IPv6).
        // This text is clap's `--help`, printed verbatim: escaping the brackets for
        // rustdoc would print the backslashes, so rustdoc's link check is off here.
        #[allow(rustdoc::broken_intra_doc_links)]
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
    /// Generate an Ed25519 key pair for signing tables (PEM text files).
    Keygen {
        /// Where to write the private key (created mode 0600; keep it secret).
        #[arg(long = "private", value_name = "KEY")]
        private: PathBuf,
        /// Where to write the public key (give it to proxyd's --policy-public-key).
        #[arg(long = "public", value_name = "PUB")]
        public: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Sign an existing compiled table (replacing any signature it has).
    Sign {
        table: PathBuf,
        /// The Ed25519 private key (PEM).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The signature's serial (positive; default: the current Unix time in seconds).
        #[arg(long, value_name = "N", value_parser = parse_serial)]
        serial: Option<u64>,
        /// Where to write the signed table (atomically); default: in place.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check that a table is signed by one of the given public keys (exit 0), else exit 1 with the reason.
    Verify {
        table: PathBuf,
        /// A trusted public key (PEM; repeatable, e.g. old and new during a rotation).
        #[arg(long = "public-key", value_name = "PUB", required = true)]
        public_keys: Vec<PathBuf>,
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
    /// Print the shell completion script for SHELL to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (policyc.1 and one per subcommand) into DIR (`make man`).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Suggest `allowed_domains` entries from decision logs: what each role
    /// reached that its rule does not allow (report mode → enforce).
    Suggest {
        /// The ACL (YAML) to add to; it is only changed when -o names it.
        policy: PathBuf,
        /// Decision logs (proxyd or Smokescreen JSON lines); `-` is stdin, `.gz` is read transparently.
        #[arg(required = true, value_name = "LOG")]
        logs: Vec<PathBuf>,
        /// Write the result here atomically instead of to stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Only these roles (repeatable).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Leave out hosts seen fewer than N times (they are listed on stderr).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        min_count: u64,
        /// K or more hosts under one parent become `*.parent` (never above a
        /// registrable domain, never over the global deny list).
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(2..))]
        collapse: Option<u64>,
        /// Also count requests the proxy denied (enforce roles); off by
        /// default, since a denial may be an attack rather than a need.
        #[arg(long)]
        include_denied: bool,
        #[arg(long, value_enum, default_value_t = SuggestFormat::Yaml)]
        format: SuggestFormat,
        /// Exit 1 if any log line is malformed.
        #[arg(long)]
        strict: bool,
    },
    /// Show which `allowed_domains` entries the decision logs use, and which they never do.
    Coverage {
        /// An ACL (YAML) or a compiled table.
        policy: PathBuf,
        /// Decision logs (proxyd or Smokescreen JSON lines); `-` is stdin, `.gz` is read transparently.
        #[arg(required = true, value_name = "LOG")]
        logs: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Exit 1 if any log line is malformed.
        #[arg(long)]
        strict: bool,
    },
}

/// What `suggest` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SuggestFormat {
    /// The whole policy with the additions.
    Yaml,
    /// Only a unified diff against the input policy.
    Diff,
    /// The additions as one JSON document.
    Json,
}

/// How `diff` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    /// Plain text on stdout.
    Human,
    /// One JSON document on stdout (shape in docs/policyc.md).
    Json,
    /// Markdown for a pull-request comment.
    Markdown,
}

#[derive(Debug, Args)]
pub struct Disabled {
    /// Make any rule that uses ACTION an error (repeatable).
    #[arg(long = "disable-acl-policy-action", value_name = "ACTION", value_parser = parse_action)]
    pub actions: Vec<Action>,
}

impl Disabled {
    pub fn set(&self) -> ActionSet {
        self.actions.iter().copied().collect()
    }
}

fn parse_serial(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("the serial must be a positive integer (1 or more)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a positive integer")),
    }
}

fn parse_action(s: &str) -> Result<Action, String> {
    s.parse::<Action>().map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// How `check` and `test` report: for people, for scripts, for GitHub
/// Actions annotations, or for code scanning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// rustc-style messages on stderr.
    Human,
    /// One JSON document on stdout (shape in schema/policyc-report.schema.json).
    Json,
    /// GitHub Actions workflow commands (`::error file=...`) on stdout.
    Github,
    /// A SARIF 2.1.0 log on stdout.
    Sarif,
}
