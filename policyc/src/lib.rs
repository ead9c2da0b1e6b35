//! `policyc`: the policy tool. A thin shell over [`egress_policy`]: the
//! command line ([`cli`]), one module per subcommand ([`commands`]), the
//! output formats ([`report`]), and the CI tooling engines that only this
//! tool needs ([`diff`], [`policytest`], [`suggest`] with [`policy_edit`],
//! [`coverage`], both over [`decision_log`]).
//!
//! The policy model itself (parsing, linting, deciding, the table format)
//! is never defined here: it lives in `egress-policy`, which `proxyd` shares.

pub mod cli;
pub mod commands;
pub mod coverage;
pub mod decision_log;
pub mod diff;
pub mod policy_edit;
pub mod policytest;
pub mod report;

/// `--version`: the package version, the git revision and the build date
/// (from build.rs: the commit's date or SOURCE_DATE_EPOCH, never the wall clock).
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("BUILD_GIT_REVISION"), ", built ", env!("BUILD_DATE"), ")");
pub mod suggest;
