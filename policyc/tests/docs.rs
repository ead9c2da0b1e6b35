//! The book is tested: every policy, policy test file and command in
//! `README.md` and `docs/*.md` is checked against the real `policyc`.
//!
//! * A ```` ```yaml ```` block whose first non-comment line starts with
//!   `version:` is a policy: `policyc check` must accept it (exit 0; warnings
//!   are allowed). A block that is wrong on purpose is marked by the line
//!   `<!-- policyc: expect-errors -->` right before it and must exit 1.
//! * A yaml block whose first key is `tests:` is a policy test file: it runs
//!   through `policyc test` against the last policy block before it on the
//!   same page (exit 0, or 1 when marked); with no policy before it, it must
//!   at least be read without any diagnostic but failing cases (P017).
//! * Any other yaml block (Kubernetes manifests, alert rules, ...) must parse.
//! * In ```` ```sh ```` blocks, a line that runs `policyc` must name a real
//!   subcommand and only flags (and flag values) its `-h` lists, and a line
//!   that runs `make` must name real Makefile targets. Nothing is executed:
//!   the commands may need files or a network the test does not have.
//! * Every relative link (and its `#anchor`, if any) and every repository
//!   path written as code resolves to a file, directory or heading that
//!   exists, so moved code cannot leave stale paths behind.
//!
//! These tests never write outside a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Run, policyc, repo_root};

/// The marker for a block that must fail `policyc check` / `policyc test`.
const EXPECT_ERRORS: &str = "<!-- policyc: expect-errors -->";

/// Paths the docs name that are build outputs or files each deployment
/// creates itself (its own signing key), not files in the repository.
const GENERATED_PATHS: &[&str] =
    &["deploy/kubernetes/policy.bin", "deploy/kubernetes/policy-signing.pub", "target/policy/default.bin"];

/// One fenced code block of a page.
#[derive(Debug)]
struct Block {
    /// The page, relative to the repository root.
    page: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// 1-based line of the closing fence.
    end: usize,
    /// The info string's first word (`yaml`, `sh`, ...).
    lang: String,
    /// The content, with the fence's indentation removed.
    text: String,
    /// The line before the fence is [`EXPECT_ERRORS`].
    expect_errors: bool,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.page, self.line)
    }

    /// The first line that is neither blank nor a YAML comment.
    fn first_content_line(&self) -> &str {
        self.text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("")
    }

    fn is_policy(&self) -> bool {
        self.lang == "yaml" && self.first_content_line().starts_with("version:")
    }

    fn is_policy_tests(&self) -> bool {
        self.lang == "yaml" && self.first_content_line().starts_with("tests:")
    }
}

/// README.md and every page under docs/, relative to the repository root, sorted.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = fs::read_dir(repo_root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    docs.sort();
    assert!(docs.len() >= 10, "the book has its pages: {docs:?}");
    pages.extend(docs);
    pages
}

fn read_page(page: &str) -> String {
    fs::read_to_string(repo_root().join(page)).unwrap_or_else(|e| panic!("cannot read {page}: {e}"))
}

/// The fenced code blocks of a page, in order. A fence is three or more
/// backticks at the start of a line (after indentation); it is closed by a
/// line of at least as many backticks, so a ```` block can hold ``` ones.
fn blocks(page: &str) -> Vec<Block> {
    let text = read_page(page);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        let ticks = trimmed.chars().take_while(|&c| c == '`').count();
        if ticks < 3 {
            i += 1;
            continue;
        }
        let lang = trimmed[ticks..].split_whitespace().next().unwrap_or("").to_string();
        let expect_errors =
            lines[..i].iter().rev().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim() == EXPECT_ERRORS);
        let mut body = Vec::new();
        let mut j = i + 1;
        loop {
            let Some(inner) = lines.get(j) else { panic!("{page}:{}: code block never closed", i + 1) };
            let inner_trimmed = inner.trim_start();
            let closing = inner_trimmed.chars().take_while(|&c| c == '`').count();
            if closing >= ticks && inner_trimmed[closing..].trim().is_empty() {
                break;
            }
            let strip = inner.len() - inner_trimmed.len();
            body.push(&inner[strip.min(indent)..]);
            j += 1;
        }
        let text = body.join("\n") + "\n";
        out.push(Block { page: page.to_string(), line: i + 1, end: j + 1, lang, text, expect_errors });
        i = j + 1;
    }
    out
}

fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|p| blocks(p)).collect()
}

fn write_block(dir: &Path, block: &Block, kind: &str) -> String {
    let name = format!("{}-{}-{kind}.yaml", block.page.replace(['/', '.'], "_"), block.line);
    let path = dir.join(name);
    fs::write(&path, &block.text).expect("write block");
    path.to_str().expect("UTF-8 temp path").to_string()
}

fn describe(run: &Run) -> String {
    format!("exit {}\nstdout:\n{}\nstderr:\n{}", run.code, run.stdout, run.stderr)
}

#[test]
fn policy_blocks_pass_policyc_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut failing_on_purpose = 0;
    for block in all_blocks().iter().filter(|b| b.is_policy()) {
        let file = write_block(dir.path(), block, "policy");
        let run = policyc(&["check", &file]);
        if block.expect_errors {
            assert_eq!(
                run.code,
                1,
                "{}: marked {EXPECT_ERRORS} but `policyc check` says\n{}",
                block.at(),
                describe(&run)
            );
            assert!(run.stderr.contains("error["), "{}: no error reported\n{}", block.at(), describe(&run));
            failing_on_purpose += 1;
        } else {
            assert_eq!(run.code, 0, "{}: `policyc check` refuses this policy\n{}", block.at(), describe(&run));
        }
        checked += 1;
    }
    println!("{checked} policy blocks checked, {failing_on_purpose} of them wrong on purpose");
    assert!(checked >= 6, "only {checked} policy blocks found: is the extractor broken?");
    assert!(failing_on_purpose >= 2, "the expect-errors marker is exercised: {failing_on_purpose}");
}

#[test]
fn policy_test_blocks_pass_against_their_policy() {
    let dir = tempfile::tempdir().unwrap();
    let empty_policy = dir.path().join("empty-policy.yaml");
    fs::write(&empty_policy, "version: v1\nservices: []\n").unwrap();
    let mut against_policy = 0;
    let mut parsed_only = 0;
    for page in pages() {
        let mut last_policy: Option<String> = None;
        for block in blocks(&page) {
            if block.is_policy() {
                if !block.expect_errors {
                    last_policy = Some(write_block(dir.path(), &block, "policy"));
                }
                continue;
            }
            if !block.is_policy_tests() {
                continue;
            }
            let tests = write_block(dir.path(), &block, "tests");
            match &last_policy {
                Some(policy) => {
                    let run = policyc(&["test", policy, &tests]);
                    let expected = if block.expect_errors { 1 } else { 0 };
                    assert_eq!(
                        run.code,
                        expected,
                        "{}: `policyc test` against the policy block before it\n{}",
                        block.at(),
                        describe(&run)
                    );
                    against_policy += 1;
                }
                None => {
                    // No policy on the page to run against: the file must still be read
                    // without a single problem of its own; only failing cases may remain.
                    let run = policyc(&["test", "--format", "json", empty_policy.to_str().unwrap(), &tests]);
                    let report: serde_json::Value = serde_json::from_str(&run.stdout)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e})\n{}", block.at(), describe(&run)));
                    let problems: Vec<&serde_json::Value> =
                        report["diagnostics"].as_array().unwrap().iter().filter(|d| d["code"] != "P017").collect();
                    assert!(problems.is_empty(), "{}: the test file itself is wrong: {problems:?}", block.at());
                    assert!(report["cases"].as_array().is_some_and(|c| !c.is_empty()), "{}: no cases", block.at());
                    parsed_only += 1;
                }
            }
        }
    }
    println!("{against_policy} policy test blocks run against their policy, {parsed_only} only read");
    assert!(against_policy >= 1, "at least one policy test block runs against a policy");
}

#[test]
fn other_yaml_blocks_parse() {
    let mut parsed = 0;
    for block in all_blocks().iter().filter(|b| b.lang == "yaml" && !b.is_policy() && !b.is_policy_tests()) {
        let parsed_value: Result<serde_json::Value, _> = serde_saphyr::from_str(&block.text);
        assert!(parsed_value.is_ok(), "{}: not valid YAML: {:?}\n{}", block.at(), parsed_value.err(), block.text);
        parsed += 1;
    }
    println!("{parsed} other yaml blocks parsed");
    assert!(parsed >= 2, "the Kubernetes and alert examples are found: {parsed}");
}

/// The words of one shell command line: `$ ` prompts, comments and
/// everything from a pipe, redirection or command separator on are dropped.
fn command_words(line: &str) -> Vec<&str> {
    let line = line.trim();
    let line = line.strip_prefix("$ ").unwrap_or(line);
    line.split_whitespace()
        .take_while(|w| !w.starts_with('#') && !matches!(*w, "|" | "||" | "&&" | ";" | "&" | ">" | ">>" | "2>" | "<"))
        .collect()
}

/// The command lines of every sh block, with where they are.
fn sh_commands() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in all_blocks().iter().filter(|b| matches!(b.lang.as_str(), "sh" | "bash" | "console" | "shell")) {
        for (n, line) in block.text.lines().enumerate() {
            out.push((format!("{}:{}", block.page, block.line + 1 + n), line.to_string()));
        }
    }
    out
}

/// One option of a subcommand, as its `-h` shows it.
#[derive(Debug)]
struct OptionHelp {
    /// Its spellings: `--long` and, if it has one, `-s`.
    names: Vec<String>,
    takes_value: bool,
    possible_values: Option<Vec<String>>,
}

/// The options a `policyc` subcommand accepts, read from the real binary's
/// `-h`; `None` if it is no subcommand.
fn subcommand_options(sub: &str) -> Option<Vec<OptionHelp>> {
    let run = policyc(&[sub, "-h"]);
    if run.code != 0 {
        return None;
    }
    let mut options: Vec<OptionHelp> = Vec::new();
    let lines = run.stdout.lines().skip_while(|l| !l.starts_with("Options:")).skip(1);
    for line in lines {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        // Option lines are indented by 2 (6 without a short form); their help, deeper.
        if trimmed.starts_with('-') && indent <= 6 {
            let names = trimmed.split([',', ' ']).filter(|w| w.starts_with('-')).map(str::to_string).collect();
            options.push(OptionHelp { names, takes_value: trimmed.contains('<'), possible_values: None });
        }
        if let (Some(option), Some(at)) = (options.last_mut(), trimmed.find("[possible values: ")) {
            let list = &trimmed[at + "[possible values: ".len()..];
            let list = &list[..list.find(']').expect("possible values end with ]")];
            option.possible_values = Some(list.split(", ").map(str::to_string).collect());
        }
    }
    Some(options)
}

#[test]
fn policyc_commands_use_real_subcommands_and_flags() {
    let mut known: BTreeMap<String, Option<Vec<OptionHelp>>> = BTreeMap::new();
    let mut checked = 0;
    for (at, line) in sh_commands() {
        let words = command_words(&line);
        if words.first() != Some(&"policyc") {
            continue;
        }
        let sub = *words.get(1).unwrap_or_else(|| panic!("{at}: `policyc` without a subcommand: {line}"));
        let options = known
            .entry(sub.to_string())
            .or_insert_with(|| subcommand_options(sub))
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: `policyc {sub}` is not a subcommand: {line}"));
        let mut rest = words[2..].iter();
        while let Some(word) = rest.next() {
            if !word.starts_with('-') || *word == "-" {
                continue;
            }
            let (flag, inline_value) = match word.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (*word, None),
            };
            let option = options.iter().find(|o| o.names.iter().any(|n| n == flag)).unwrap_or_else(|| {
                let all: Vec<&String> = options.iter().flat_map(|o| &o.names).collect();
                panic!("{at}: `policyc {sub}` has no option {flag} (its -h lists {all:?}): {line}")
            });
            if option.takes_value {
                let value = inline_value
                    .or_else(|| rest.next().copied())
                    .unwrap_or_else(|| panic!("{at}: {flag} needs a value: {line}"));
                if let Some(values) = &option.possible_values {
                    assert!(values.iter().any(|v| v == value), "{at}: {flag} {value} is not one of {values:?}: {line}");
                }
            }
        }
        checked += 1;
    }
    println!("{checked} policyc command lines checked");
    assert!(checked >= 10, "only {checked} policyc command lines found");
}

/// The targets the Makefile defines (`name:` at the start of a line).
fn make_targets() -> BTreeSet<String> {
    let makefile = read_page("Makefile");
    makefile
        .lines()
        .filter(|l| !l.starts_with(['\t', '#', ' ', '.']))
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, rest)| !rest.starts_with('=') && !name.contains(['=', '$', ' ']))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn make_commands_name_real_targets() {
    let targets = make_targets();
    assert!(targets.contains("test") && targets.contains("run"), "{targets:?}");
    let mut checked = 0;
    for (at, line) in sh_commands() {
        let words = command_words(&line);
        if words.first() != Some(&"make") {
            continue;
        }
        let named: Vec<&&str> = words[1..].iter().filter(|w| !w.contains('=') && !w.starts_with('-')).collect();
        assert!(!named.is_empty(), "{at}: `make` without a target: {line}");
        for target in named {
            assert!(targets.contains(*target), "{at}: the Makefile has no target `{target}`: {line}");
        }
        checked += 1;
    }
    println!("{checked} make command lines checked");
    assert!(checked >= 4, "only {checked} make command lines found");
}

#[test]
fn the_quick_start_is_make_run_and_make_test() {
    let readme = blocks("README.md");
    let text = read_page("README.md");
    let start = text.find("## Quick start").expect("the README has a quick start") + 1;
    let start_line = text[..start].lines().count();
    let block = readme.iter().find(|b| b.line > start_line && b.lang == "sh").expect("a sh block in the quick start");
    let commands: Vec<Vec<&str>> = block.text.lines().map(command_words).filter(|w| !w.is_empty()).collect();
    assert_eq!(commands, vec![vec!["make", "run"], vec!["make", "test"]], "{}", block.at());
}

/// Markdown links `[text](target)` in a line, outside code spans.
fn link_targets(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let tail = &rest[at + 2..];
        let Some(end) = tail.find(')') else { break };
        out.push(&tail[..end]);
        rest = &tail[end..];
    }
    out
}

/// Code spans in a line that look like repository paths (`proxyd/tests/deploy.rs`).
fn path_spans(line: &str) -> Vec<&str> {
    const TOP: &[&str] = &[
        "egress-policy/",
        "policyc/",
        "proxyd/",
        "testkit/",
        "tests/",
        "schema/",
        "deploy/",
        "policies/",
        "examples/",
        "fuzz/",
        "docs/",
        ".ci/",
    ];
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| TOP.iter().any(|t| s.starts_with(t)))
        .filter(|s| !s.contains([' ', '*', '{', '<', '$', '=']) && !s.chars().any(|c| c.is_ascii_uppercase()))
        .collect()
}

/// The lines of a page outside code blocks, with their 1-based numbers.
fn prose_lines(page: &str) -> Vec<(usize, String)> {
    let code: Vec<(usize, usize)> = blocks(page).iter().map(|b| (b.line, b.end)).collect();
    read_page(page)
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.to_string()))
        .filter(|(n, _)| !code.iter().any(|(start, end)| (start..=end).contains(&n)))
        .collect()
}

/// The anchors GitHub gives a page's headings: lower case, punctuation
/// dropped, spaces as hyphens; a repeated heading also gets `-1`, `-2`, ...
fn anchors(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(page) {
        let Some(title) = line.strip_prefix('#') else { continue };
        let title = title.trim_start_matches('#').trim();
        let slug: String = title
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while !out.insert(unique.clone()) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
    }
    out
}

#[test]
fn links_and_paths_resolve() {
    let root = repo_root();
    let mut checked = 0;
    for page in pages() {
        let dir = Path::new(&page).parent().unwrap_or(Path::new("")).to_path_buf();
        for (n, line) in prose_lines(&page) {
            let at = format!("{page}:{n}");
            for target in link_targets(&line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (target, None),
                };
                let joined = if file.is_empty() { PathBuf::from(&page) } else { normalise(&dir.join(file)) };
                let shown = joined.to_str().unwrap().to_string();
                assert!(root.join(&joined).exists(), "{at}: link to {target} ({shown}) goes nowhere");
                if let Some(anchor) = anchor {
                    assert!(shown.ends_with(".md"), "{at}: anchor on a non-page link {target}");
                    let known = anchors(&shown);
                    assert!(known.contains(anchor), "{at}: {shown} has no heading #{anchor} (it has {known:?})");
                }
                checked += 1;
            }
            for span in path_spans(&line) {
                let path = span.trim_end_matches(['.', ',', ':']);
                if GENERATED_PATHS.contains(&path) {
                    continue;
                }
                assert!(root.join(path).exists(), "{at}: `{span}` does not exist in the repository");
                checked += 1;
            }
        }
    }
    println!("{checked} links and paths resolved");
    assert!(checked >= 30, "only {checked} links and paths found");
}

/// `docs/../schema/x` → `schema/x`, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
