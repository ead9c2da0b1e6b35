//! Output formats in one place: human text (rustc-style diagnostics on
//! stderr), JSON, GitHub workflow commands and SARIF on stdout, and the small
//! helpers every command uses to write them.

use std::io::Write;
use std::path::Path;

use egress_policy::diagnostic::Diagnostic;
use serde::Serialize;

use crate::cli::ReportFormat;

pub mod github;
pub mod human;
pub mod sarif;

pub(crate) fn print_human(diagnostics: &[Diagnostic], source: &[u8]) {
    let text = std::str::from_utf8(source).ok();
    for d in diagnostics {
        eprint!("{}", human::diagnostic(d, text));
    }
}

/// Standard output could not be written (a closed pipe, a full disk). The
/// commands turn it into their usage-or-I/O failure (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout: {0}")]
pub struct StdoutError(#[from] std::io::Error);

/// Prints diagnostics as GitHub workflow commands or as a SARIF log, on stdout.
pub(crate) fn print_machine(format: ReportFormat, diagnostics: Vec<Diagnostic>) -> Result<(), StdoutError> {
    let cwd = std::env::current_dir().ok();
    let path_of = |file: &str| relative_to(cwd.as_deref(), file);
    let out = match format {
        ReportFormat::Sarif => format!("{}\n", to_json(&sarif::log(&diagnostics, path_of))),
        _ => diagnostics.iter().map(|d| github::diagnostic(d, &path_of(&d.file))).collect(),
    };
    write_stdout(&out)
}

/// Writes a report to stdout; a closed pipe is an error (exit 2), never a panic.
pub(crate) fn write_stdout(text: &str) -> Result<(), StdoutError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush())?;
    Ok(())
}

/// Writes `value` to stdout as [`to_json`] spells it, followed by a newline,
/// serialising straight into the pipe: a large report (`suggest` over a big
/// fleet's logs) is never held in memory a second time as text.
pub(crate) fn write_json_stdout<T: Serialize>(value: &T) -> Result<(), StdoutError> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// `file` relative to the working directory when it lies inside it; else as given.
pub(crate) fn relative_to(cwd: Option<&Path>, file: &str) -> String {
    let path = Path::new(file);
    let relative = cwd.filter(|_| path.is_absolute()).and_then(|cwd| path.strip_prefix(cwd).ok());
    let shown = relative.unwrap_or(path).display().to_string();
    shown.strip_prefix("./").map(str::to_owned).unwrap_or(shown)
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise output: {e}\"}}"))
}
