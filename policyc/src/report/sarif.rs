//! Diagnostics as a SARIF 2.1.0 log, for GitHub code scanning and other
//! SARIF viewers: one run, `tool.driver` describing `policyc` and every code
//! it can report, and one result per diagnostic (failed policy tests
//! included, as `P017`) at its file, line and column.
//!
//! This module only builds the log. Which path to write as an artifact's URI
//! (relative to the working directory) is the caller's decision: it knows the
//! working directory, this module never looks.

use serde::Serialize;

use egress_policy::diagnostic::{Code, Diagnostic, Severity};

/// `$schema` of the log: the OASIS schema (errata 01), which validators and
/// GitHub recognise.
pub const SCHEMA_URI: &str =
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json";

/// Where the tool is documented: the workspace's `repository`, else a URN
/// naming the tool (SARIF requires an absolute URI).
pub fn information_uri() -> &'static str {
    match env!("CARGO_PKG_REPOSITORY") {
        "" => "urn:egress-proxy:policyc",
        repository => repository,
    }
}

#[derive(Debug, Serialize)]
pub struct Log {
    #[serde(rename = "$schema")]
    pub schema: &'static str,
    pub version: &'static str,
    pub runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub tool: Tool,
    pub results: Vec<SarifResult>,
    /// Columns count Unicode code points, as `policyc`'s positions do.
    pub column_kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Tool {
    pub driver: Driver,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Driver {
    pub name: &'static str,
    pub version: &'static str,
    pub semantic_version: &'static str,
    pub information_uri: &'static str,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    pub short_description: Text,
    pub default_configuration: Configuration,
}

#[derive(Debug, Serialize)]
pub struct Text {
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct Configuration {
    pub level: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SarifResult {
    pub rule_id: &'static str,
    pub rule_index: usize,
    pub level: &'static str,
    pub message: Text,
    pub locations: Vec<Location>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub physical_location: PhysicalLocation,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalLocation {
    pub artifact_location: ArtifactLocation,
    pub region: Region,
}

#[derive(Debug, Serialize)]
pub struct ArtifactLocation {
    pub uri: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    pub start_line: u64,
    pub start_column: u64,
}

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// The log for `diagnostics`; `path_of` gives the path to record for a
/// diagnostic's file (relative to the working directory where possible).
pub fn log(diagnostics: &[Diagnostic], path_of: impl Fn(&str) -> String) -> Log {
    let rules = Code::ALL
        .iter()
        .map(|code| Rule {
            id: code.as_str(),
            name: code.name(),
            short_description: Text { text: code.summary().to_owned() },
            default_configuration: Configuration { level: level(code.severity()) },
        })
        .collect();
    let results = diagnostics
        .iter()
        .map(|d| {
            let mut text = d.message.clone();
            if let Some(help) = &d.help {
                text.push_str("\nhelp: ");
                text.push_str(help);
            }
            SarifResult {
                rule_id: d.code.as_str(),
                rule_index: Code::ALL.iter().position(|c| *c == d.code).unwrap_or(0),
                level: level(d.severity),
                message: Text { text },
                locations: vec![Location {
                    physical_location: PhysicalLocation {
                        artifact_location: ArtifactLocation { uri: artifact_uri(&path_of(&d.file)) },
                        // SARIF lines and columns start at 1; ours do too, but never emit 0.
                        region: Region { start_line: d.line.max(1), start_column: d.column.max(1) },
                    },
                }],
            }
        })
        .collect();
    Log {
        schema: SCHEMA_URI,
        version: "2.1.0",
        runs: vec![Run {
            tool: Tool {
                driver: Driver {
                    name: "policyc",
                    version: env!("CARGO_PKG_VERSION"),
                    semantic_version: env!("CARGO_PKG_VERSION"),
                    information_uri: information_uri(),
                    rules,
                },
            },
            results,
            column_kind: "unicodeCodePoints",
        }],
    }
}

/// A path as a URI reference: a relative path stays relative (with `/`
/// separators), an absolute one becomes `file://`; bytes outside RFC 3986's
/// unreserved set and `/` are percent-encoded.
pub fn artifact_uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    if path.starts_with('/') {
        out.push_str("file://");
    }
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => out.push(char::from(byte)),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use egress_policy::diagnostic::Position;

    #[test]
    fn uris_are_relative_or_file_and_percent_encoded() {
        assert_eq!(artifact_uri("policies/example.yaml"), "policies/example.yaml");
        assert_eq!(artifact_uri("my policies/a#1.yaml"), "my%20policies/a%231.yaml");
        assert_eq!(artifact_uri("/tmp/x.yaml"), "file:///tmp/x.yaml");
        assert_eq!(artifact_uri("тест.yaml"), "%D1%82%D0%B5%D1%81%D1%82.yaml");
    }

    #[test]
    fn results_point_at_their_rule() {
        let d = Diagnostic::new(Code::TestFailed, "t.yaml", Position { line: 4, column: 5 }, "m").with_help("h");
        let log = log(&[d], str::to_owned);
        let run = &log.runs[0];
        assert_eq!(run.tool.driver.rules.len(), Code::ALL.len());
        let result = &run.results[0];
        assert_eq!(run.tool.driver.rules[result.rule_index].id, "P017");
        assert_eq!((result.level, result.message.text.as_str()), ("error", "m\nhelp: h"));
    }
}
