//! Shell completions (`--completions SHELL`) and the man page
//! (`--generate-man DIR`, used by `make man`), both generated from the clap
//! definitions in [`crate::config::Args`], so they can never disagree with
//! the flags proxyd really accepts. This module writes only where it is told
//! to (stdout, or the directory given) and never starts the proxy.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::config::Args;

/// proxyd is a daemon: its page belongs in section 8 (system administration).
pub const MAN_SECTION: &str = "8";

/// The command line definition every generated artefact is made from.
pub fn command() -> clap::Command {
    Args::command()
}

/// Writes the completion script for `shell`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    let mut command = command();
    clap_complete::generate(shell, &mut command, "proxyd", out);
}

/// Writes `proxyd.8` into `dir` (created if missing) and returns its path.
/// The page's date is the build date, so the page is reproducible too.
pub fn write_man_page(dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::Man::new(command())
        .section(MAN_SECTION)
        .date(env!("BUILD_DATE"))
        .manual("proxyd manual")
        .generate_to(dir)
}
