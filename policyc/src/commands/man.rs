//! `policyc man DIR` (hidden; `make man` runs it): man pages generated from
//! the clap definitions in [`crate::cli`]: `policyc.1`, and one page per
//! visible subcommand (`policyc-check.1`, ...). Dated with the build date,
//! so the pages are reproducible. Writes only into DIR.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use super::Failure;
use crate::cli::Cli;

pub fn run(dir: &Path) -> Result<(), Failure> {
    let written =
        write_pages(dir).map_err(|e| Failure::Usage(format!("cannot write man pages into {}: {e}", dir.display())))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes every page into `dir` (created if missing); returns their paths.
pub fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_tree(command(), dir, &mut written)?;
    Ok(written)
}

/// The command line the pages describe (built; without clap's `help`
/// subcommand, which `--help` on every page already covers).
pub fn command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

fn write_tree(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_tree(sub, dir, written)?;
    }
    let page = clap_mangen::Man::new(command).date(env!("BUILD_DATE")).manual("policyc manual");
    written.push(page.generate_to(dir)?);
    Ok(())
}
