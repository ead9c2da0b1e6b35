//! Diagnostics for people: rustc-style, with the offending line and a caret.

use std::fmt::Write as _;

use egress_policy::diagnostic::{Diagnostic, Severity};

/// Renders one diagnostic; `source` (the file's text) adds the line and a caret.
pub fn diagnostic(d: &Diagnostic, source: Option<&str>) -> String {
    let mut out = String::new();
    let kind = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let _ = writeln!(out, "{kind}[{}]: {}", d.code, d.message);
    let _ = writeln!(out, "  --> {}:{}:{}", d.file, d.line, d.column);
    let line_text =
        source.and_then(|s| usize::try_from(d.line).ok().and_then(|n| n.checked_sub(1)).and_then(|n| s.lines().nth(n)));
    if let Some(text) = line_text {
        let number = d.line.to_string();
        let pad = " ".repeat(number.len());
        let caret_pad: String = text
            .chars()
            .take(usize::try_from(d.column.saturating_sub(1)).unwrap_or(0))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let _ = writeln!(out, "{pad} |");
        let _ = writeln!(out, "{number} | {text}");
        let _ = writeln!(out, "{pad} | {caret_pad}^");
    }
    if let Some(help) = &d.help {
        let _ = writeln!(out, "  help: {help}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_policy::diagnostic::{Code, Position};

    #[test]
    fn human_rendering_points_at_the_column() {
        let d = Diagnostic::new(Code::UnknownKey, "a.yaml", Position { line: 2, column: 3 }, "unknown key `x`")
            .with_help("did you mean `y`?");
        let text = diagnostic(&d, Some("version: v1\n  x: 1\n"));
        assert_eq!(
            text,
            "error[P002]: unknown key `x`\n  --> a.yaml:2:3\n  |\n2 |   x: 1\n  |   ^\n  help: did you mean `y`?\n"
        );
    }
}
