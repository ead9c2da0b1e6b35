//! Diagnostics as GitHub Actions workflow commands, which the runner turns
//! into annotations on the lines of a pull request.

use egress_policy::diagnostic::{Diagnostic, Severity};

/// `::error file=F,line=L,col=C,title=CODE::message` for one diagnostic.
/// `file` is the path as the runner should see it (relative to the workspace).
pub fn diagnostic(d: &Diagnostic, file: &str) -> String {
    let command = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut message = d.message.clone();
    if let Some(help) = &d.help {
        message.push_str("\nhelp: ");
        message.push_str(help);
    }
    format!(
        "::{command} file={},line={},col={},title={}::{}\n",
        escape_property(file),
        d.line,
        d.column,
        escape_property(d.code.as_str()),
        escape_data(&message)
    )
}

/// Escapes a workflow command's message (`%`, CR and LF), as the runner's
/// `CommandStringEscape` expects.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command property value: the message escapes plus `:`
/// and `,`, which would otherwise end the value.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_policy::diagnostic::{Code, Position};

    #[test]
    fn github_commands_escape_data_and_properties() {
        let d = Diagnostic::new(Code::InvalidPattern, "x", Position { line: 3, column: 7 }, "50% of\r\nit: a,b")
            .with_help("use \"a.com\"");
        assert_eq!(
            diagnostic(&d, "dir/a,b:c%.yaml"),
            "::error file=dir/a%2Cb%3Ac%25.yaml,line=3,col=7,title=P010::50%25 of%0D%0Ait: a,b%0Ahelp: use \"a.com\"\n"
        );
        let w = Diagnostic::new(Code::TrailingDot, "x", Position { line: 1, column: 1 }, "m");
        assert_eq!(diagnostic(&w, "a.yaml"), "::warning file=a.yaml,line=1,col=1,title=P106::m\n");
    }
}
