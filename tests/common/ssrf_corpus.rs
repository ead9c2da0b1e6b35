//! The SSRF corpus (`tests/fixtures/ssrf-corpus.tsv`, format in its header):
//! one parser for both test binaries, the library one (`egress-policy/tests/ssrf.rs`)
//! and the end-to-end one (`proxyd/tests/ssrf.rs`).

use std::net::IpAddr;

/// What a row expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    Allow,
    Deny(String),
    Reject,
}

/// One corpus row.
#[derive(Clone, Debug)]
pub struct Row {
    pub line: usize,
    /// What the client sends after `CONNECT`.
    pub authority: String,
    /// For `name=>IP` rows: what the test DNS server answers.
    pub resolves_to: Option<IpAddr>,
    pub expected: Expected,
}

/// Parses the corpus; every malformed line is an error naming its line.
pub fn parse_corpus(text: &str) -> Result<Vec<Row>, Vec<String>> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = raw.split('\t').collect();
        let [destination, expected, note] = fields.as_slice() else {
            errors.push(format!("line {line}: expected 3 tab-separated fields, found {}: {raw:?}", fields.len()));
            continue;
        };
        if destination.is_empty() || note.trim().is_empty() {
            errors.push(format!("line {line}: empty destination or note: {raw:?}"));
            continue;
        }
        let expected = match *expected {
            "allow" => Expected::Allow,
            "reject" => Expected::Reject,
            other => match other.strip_prefix("deny:") {
                Some(code)
                    if !code.is_empty()
                        && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
                {
                    Expected::Deny(code.to_owned())
                }
                _ => {
                    errors.push(format!("line {line}: expected must be allow, deny:<rule_code> or reject: {other:?}"));
                    continue;
                }
            },
        };
        let (authority, resolves_to) = match destination.split_once("=>") {
            Some((name, ip)) => match ip.parse::<IpAddr>() {
                Ok(ip) => (name.to_owned(), Some(ip)),
                Err(e) => {
                    errors.push(format!("line {line}: {ip:?} after => is not an IP address: {e}"));
                    continue;
                }
            },
            None => ((*destination).to_owned(), None),
        };
        rows.push(Row { line, authority, resolves_to, expected });
    }
    if errors.is_empty() { Ok(rows) } else { Err(errors) }
}

/// The rows of `tests/fixtures/ssrf-corpus.tsv`; panics listing every malformed line.
pub fn corpus() -> Vec<Row> {
    // Both test packages (`policyc/`, `proxyd/`) sit beside `tests/`.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ssrf-corpus.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_corpus(&text).unwrap_or_else(|errors| panic!("malformed ssrf-corpus.tsv:\n{}", errors.join("\n")))
}
