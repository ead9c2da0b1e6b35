//! The SSRF corpus (`tests/fixtures/ssrf-corpus.tsv`, format in its header)
//! run directly against the authority parser, the host canonicaliser and
//! the address classifier with the built-in rules. The same file is run end
//! to end through the daemon by `proxyd/tests/ssrf.rs`.

use std::net::SocketAddr;

use egress_policy::address::{AddressPolicy, AddressRules};
use egress_policy::authority;

#[path = "../../tests/common/ssrf_corpus.rs"]
mod ssrf_corpus;

use ssrf_corpus::{Expected, Row, corpus, parse_corpus};

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
