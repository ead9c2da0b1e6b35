//! `policyc completions SHELL`: the shell completion script, generated from
//! the clap definitions in [`crate::cli`] so it always matches the real
//! command line. Writes to stdout only.

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Failure;
use crate::cli::Cli;

pub fn run(shell: Shell) -> Result<(), Failure> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "policyc", &mut std::io::stdout());
    Ok(())
}
