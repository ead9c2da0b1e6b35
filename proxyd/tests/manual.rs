//! What `proxyd` generates from its own clap definition ([`proxyd::Args`]):
//! the man page (`--generate-man DIR`, run by `make man`) mentions every
//! visible flag, completion scripts exist for every shell, and `--version`
//! names the git revision and build date.

use std::process::Command;

use clap::CommandFactory as _;
use proxyd::Args;

#[test]
fn the_man_page_documents_every_flag() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_proxyd")).arg("--generate-man").arg(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let page = std::fs::read_to_string(dir.path().join("proxyd.8")).unwrap();
    let mut command = Args::command();
    command.build();
    let missing = testkit::manual::undocumented(&command, &page);
    assert!(missing.is_empty(), "proxyd.8 does not mention: {missing:?}");
    let flags = command.get_arguments().filter(|a| !a.is_hide_set() && a.get_long().is_some()).count();
    assert!(flags >= 30, "the walk saw every flag ({flags})");
    let text = testkit::manual::plain(&page);
    assert!(text.contains("--check-config") && !text.contains("--generate-man"), "hidden flags stay hidden");
}

#[test]
fn completion_scripts_for_every_shell() {
    testkit::manual::check_completions(env!("CARGO_BIN_EXE_proxyd").as_ref(), &["--completions"], "proxyd");
}

#[test]
fn version_names_the_revision_and_build_date() {
    let output = Command::new(env!("CARGO_BIN_EXE_proxyd")).arg("--version").output().unwrap();
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap();
    let expected = format!("proxyd {}\n", proxyd::VERSION);
    assert_eq!(line, expected);
    assert!(proxyd::VERSION.contains(" (git ") && proxyd::VERSION.contains(", built "), "{line}");
}
