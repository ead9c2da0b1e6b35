//! The SSRF corpus (`tests/fixtures/ssrf-corpus.tsv`, format in its header)
//! run directly against the authority parser, the host canonicaliser and
//! the address classifier with the built-in rules. The same file is run end
//! to end through the daemon by `tests/proxyd/ssrf.rs`.

use std::net::{IpAddr, SocketAddr};

use policyc::address::{AddressPolicy, AddressRules};
use policyc::authority;

use crate::fixture;

/// What a row expects.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Allow,
    Deny(String),
    Reject,
}

/// One corpus row.
#[derive(Clone, Debug)]
struct Row {
    line: usize,
    /// What the client sends after `CONNECT`.
    authority: String,
    /// For `name=>IP` rows: what the test DNS server answers.
    resolves_to: Option<IpAddr>,
    expected: Expected,
}

/// Parses the corpus; every malformed line is an error naming its line.
fn parse_corpus(text: &str) -> Result<Vec<Row>, Vec<String>> {
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

fn corpus() -> Vec<Row> {
    parse_corpus(&fixture("ssrf-corpus.tsv"))
        .unwrap_or_else(|errors| panic!("malformed ssrf-corpus.tsv:\n{}", errors.join("\n")))
}

/// What the parser, canonicaliser and classifier say about a row.
fn actual(policy: &AddressPolicy, row: &Row) -> Result<Expected, String> {
    let parsed = match authority::parse(&row.authority) {
        Ok(parsed) => parsed,
        Err(_) => return Ok(Expected::Reject),
    };
    let ip = match (parsed.host.ip(), row.resolves_to) {
        (Some(ip), None) => ip,
        (None, Some(ip)) => ip,
        (Some(ip), Some(_)) => return Err(format!("`=>` row, but the host is the IP literal {ip}")),
        (None, None) => {
            return Err(format!("host {} is a name: write it as name=>IP or expect reject", parsed.host));
        }
    };
    let verdict = policy.classify(SocketAddr::new(ip, parsed.port));
    Ok(if verdict.allowed { Expected::Allow } else { Expected::Deny(verdict.rule.code().to_owned()) })
}

fn show(e: &Expected) -> String {
    match e {
        Expected::Allow => "allow".to_owned(),
        Expected::Deny(code) => format!("deny:{code}"),
        Expected::Reject => "reject".to_owned(),
    }
}

#[test]
fn corpus_is_well_formed_and_large_enough() {
    let rows = corpus();
    assert!(rows.len() >= 200, "the corpus has {} rows; at least 200 expected", rows.len());
    for kind in ["allow", "deny", "reject"] {
        assert!(rows.iter().any(|r| show(&r.expected).starts_with(kind)), "no {kind} row");
    }
    // The parser itself reports bad lines.
    let bad = parse_corpus("# ok\n1.1.1.1:443\tallow\n1.1.1.1:443\tdeny:\tx\nh:1=>nope\treject\tx\n").unwrap_err();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad[0].starts_with("line 2:") && bad[1].starts_with("line 3:") && bad[2].starts_with("line 4:"), "{bad:?}");
}

#[test]
fn every_corpus_row_gets_its_expected_verdict() {
    let policy = AddressPolicy::new(AddressRules::default());
    let rows = corpus();
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let destination = match row.resolves_to {
                Some(ip) => format!("{}=>{ip}", row.authority),
                None => row.authority.clone(),
            };
            match actual(&policy, row) {
                Ok(got) if got == row.expected => None,
                Ok(got) => Some(format!(
                    "line {}: {destination:?}: expected {}, got {}",
                    row.line,
                    show(&row.expected),
                    show(&got)
                )),
                Err(problem) => Some(format!("line {}: {destination:?}: {problem}", row.line)),
            }
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} corpus rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}
