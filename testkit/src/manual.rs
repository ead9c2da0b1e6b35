//! Checks of what a binary generates from its clap definition: that a man
//! page mentions every visible subcommand and argument (walked from the
//! `clap::Command` itself, so a new flag can never go undocumented), and
//! that completion scripts are produced for every shell and, when `bash` is
//! installed, that the bash script loads and registers a completion.

use std::path::Path;
use std::process::Command;

/// A roff page as a reader sees it: escapes (`\-`, `\(aq`, ...) and font
/// changes (`\fB`, `\fR`, ...) removed.
pub fn plain(roff: &str) -> String {
    roff.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\(aq", "'")
        .replace("\\(lq", "\"")
        .replace("\\(rq", "\"")
        .replace("\\ ", " ")
        .replace("\\\\", "\\")
}

/// Every visible argument and direct subcommand of `command` that `page`
/// (a roff man page) does not mention: `--long`, `-s`, `<VALUE_NAME>` for
/// positionals, and subcommand names. Empty means fully documented.
pub fn undocumented(command: &clap::Command, page: &str) -> Vec<String> {
    let text = plain(page);
    let mut missing = Vec::new();
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let mut names = Vec::new();
        if let Some(long) = arg.get_long() {
            names.push(format!("--{long}"));
        }
        if let Some(short) = arg.get_short() {
            names.push(format!("-{short}"));
        }
        if arg.is_positional() {
            let value_name = arg
                .get_value_names()
                .and_then(|v| v.first().map(ToString::to_string))
                .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
            names.push(value_name);
        }
        for name in names {
            if !text.contains(&name) {
                missing.push(format!("{} {name}", command.get_name()));
            }
        }
    }
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if !text.contains(sub.get_name()) {
            missing.push(format!("{} subcommand {}", command.get_name(), sub.get_name()));
        }
    }
    missing
}

/// Runs `binary` with `args` followed by each shell's name and checks the
/// script: exit 0, non-empty, and naming `name`. With `bash` installed, the
/// bash script is sourced in a fresh non-interactive shell and must register
/// a completion for `name` without printing an error.
pub fn check_completions(binary: &Path, args: &[&str], name: &str) {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = Command::new(binary).args(args).arg(shell).output().expect("run the binary");
        let script = String::from_utf8(output.stdout).expect("UTF-8 script");
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(script.len() > 100 && script.contains(name), "{shell} script for {name}: {script:?}");
        if shell == "bash" {
            source_in_bash(&script, name);
        }
    }
}

fn source_in_bash(script: &str, name: &str) {
    if Command::new("bash").arg("--version").output().is_err() {
        println!("skipped: bash is not installed; the bash completion script was not sourced");
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(format!("{name}.bash"));
    std::fs::write(&path, script).expect("write the script");
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", "set -e; source \"$1\"; complete -p \"$2\"", "bash"])
        .arg(&path)
        .arg(name)
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.is_empty(), "sourcing the bash script: {stderr}");
    let registered = String::from_utf8_lossy(&output.stdout);
    assert!(registered.contains(name), "no completion registered for {name}: {registered}");
}
