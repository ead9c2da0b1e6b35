//! What `policyc` generates from its own clap definitions: man pages
//! (`policyc man DIR`, run by `make man`) that mention every subcommand and
//! every visible argument, completion scripts for every shell, and
//! `--version` with the git revision and the build date.

use clap::CommandFactory as _;

use crate::{policyc, repo_root};

/// The build script's date arithmetic, compiled here to test it.
#[allow(dead_code)]
mod version_support {
    include!("../../build-support/version.rs");
}

#[test]
fn every_page_documents_every_subcommand_and_argument() {
    let dir = tempfile::tempdir().unwrap();
    let run = policyc(&["man", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let command = policyc::commands::man::command();
    let top = std::fs::read_to_string(dir.path().join("policyc.1")).unwrap();
    let missing = testkit::manual::undocumented(&command, &top);
    assert!(missing.is_empty(), "policyc.1 does not mention: {missing:?}");
    let mut pages = 1;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("policyc-{}.1", sub.get_name());
        let page = std::fs::read_to_string(dir.path().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let missing = testkit::manual::undocumented(sub, &page);
        assert!(missing.is_empty(), "{name} does not mention: {missing:?}");
        assert!(page.contains(".TH policyc-") || page.contains(".TH \"policyc-"), "{name} has a title: {page}");
        pages += 1;
    }
    let written = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(written, pages, "one page per visible subcommand, plus policyc.1");
    assert!(pages >= 8, "check, test, compile, explain, inspect, diff, completions and policyc itself");
    assert!(!dir.path().join("policyc-man.1").exists(), "the hidden generator has no page");
}

#[test]
fn the_checker_sees_a_missing_flag() {
    // The page of one subcommand does not document another's flags.
    let command = policyc::cli::Cli::command();
    let check = command.find_subcommand("check").unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(policyc(&["man", dir.path().to_str().unwrap()]).code, 0);
    let inspect = std::fs::read_to_string(dir.path().join("policyc-inspect.1")).unwrap();
    let missing = testkit::manual::undocumented(&check, &inspect);
    assert!(missing.iter().any(|m| m.ends_with("--deny-warnings")), "{missing:?}");
}

#[test]
fn completion_scripts_for_every_shell() {
    testkit::manual::check_completions(env!("CARGO_BIN_EXE_policyc").as_ref(), &["completions"], "policyc");
    let run = policyc(&["completions", "tcsh"]);
    assert_eq!(run.code, 2, "an unknown shell is a usage error: {}", run.stderr);
}

#[test]
fn version_names_the_revision_and_build_date() {
    let run = policyc(&["--version"]);
    assert_eq!(run.code, 0);
    let line = run.stdout.trim();
    let rest =
        line.strip_prefix(&format!("policyc {} (git ", env!("CARGO_PKG_VERSION"))).unwrap_or_else(|| panic!("{line}"));
    let (revision, rest) = rest.split_once(", built ").unwrap_or_else(|| panic!("{line}"));
    let date = rest.strip_suffix(')').unwrap_or_else(|| panic!("{line}"));
    assert!(
        revision == "unknown" || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    assert!(
        date == "unknown" || (date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-'),
        "{line}"
    );
    // In a git checkout, the revision is the checkout's HEAD.
    let head =
        std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(repo_root()).output();
    if let Ok(head) = head
        && head.status.success()
    {
        assert_eq!(revision, String::from_utf8_lossy(&head.stdout).trim(), "{line}");
    }
}

#[test]
fn build_dates_are_civil_utc_dates() {
    use version_support::civil_date;
    assert_eq!(civil_date(0), "1970-01-01");
    assert_eq!(civil_date(951_782_400), "2000-02-29");
    assert_eq!(civil_date(1_709_164_800), "2024-02-29");
    assert_eq!(civil_date(1_735_689_599), "2024-12-31");
    assert_eq!(civil_date(4_102_444_800), "2100-01-01");
    assert_eq!(civil_date(-86_400), "1969-12-31");
}
