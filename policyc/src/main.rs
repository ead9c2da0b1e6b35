//! The `policyc` binary: parse the command line, run the command, exit with
//! its code (see [`policyc::commands`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    policyc::commands::run(policyc::cli::Cli::parse())
}
