//! Host patterns (`api.example.com`, `*.example.com`, `203.0.113.7`).
//!
//! A pattern is either an exact canonical host or a leading wildcard that
//! matches every subdomain at any depth and never the apex; policy v2 adds a
//! middle wildcard (`access-analyzer.*.amazonaws.com`): one whole `*` label
//! that matches exactly one label, with a registrable domain (per the ICANN
//! section of the Public Suffix List) or below to its right. Patterns are
//! parsed strictly: only the canonical spelling is accepted, and the error
//! names the spelling to use. Matching many patterns at once is `index`'s
//! job. No I/O here.

use std::fmt;

use crate::host::{self, CanonicalHost, HostError};

/// One entry of an `allowed_domains` or global list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Matches exactly this host.
    Exact(CanonicalHost),
    /// `*.suffix`: matches any name ending in `.suffix`, never `suffix` itself.
    Wildcard(Box<str>),
    /// `left.*.right` (v2): `left`, then exactly one label, then `right`.
    Middle {
        /// The labels left of the `*`.
        left: Box<str>,
        /// The labels right of the `*` (a registrable domain or below).
        right: Box<str>,
    },
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => write!(f, "{host}"),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
            HostPattern::Middle { left, right } => write!(f, "{left}.*.{right}"),
        }
    }
}

/// A pattern that parsed, and whether it carried a trailing dot (accepted,
/// normalised away, worth a warning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPattern {
    /// The pattern, in canonical form.
    pub pattern: HostPattern,
    /// The entry ended in one trailing dot, which was removed (`policyc check` warns about it).
    pub had_trailing_dot: bool,
}

/// Why a pattern was refused. Messages follow Smokescreen's wording where it
/// has one, so people migrating recognise them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The entry is the empty string.
    #[error("host pattern is empty")]
    Empty,
    /// `*` or `*.`: a pattern for every host (use an `open` or `report` action instead).
    #[error("{0:?} would match every host")]
    MatchesEverything(String),
    /// A `*` glued to a label, as in `*example.com` or `**.example.com`.
    #[error("{0:?}: a wildcard must be a full leading label, as in \"*.example.com\"")]
    NotFullLabel(String),
    /// A `*` anywhere but the leading label, as in `api.*.example.com`.
    #[error("{0:?}: wildcards are only supported as a leading \"*.\"")]
    NotPrefix(String),
    /// A wildcard in front of an IP literal, as in `*.127.0.0.1`.
    #[error("{0:?}: a wildcard cannot precede an IP address")]
    WildcardIp(String),
    /// A valid host not written in its canonical spelling (case, Unicode, IP spelling).
    #[error("{pattern:?} is not canonical")]
    NotCanonical {
        /// The entry as written.
        pattern: String,
        /// The canonical spelling to write instead (what [`PatternError::help`] suggests).
        canonical: String,
    },
    /// The host part is not a valid host at all (the [`HostError`] says why).
    #[error("{pattern:?}: {error}")]
    InvalidHost {
        /// The entry as written.
        pattern: String,
        /// Why the host canonicaliser refused it.
        error: HostError,
    },
    /// v2: a `*` label in a place a middle wildcard may not be (it needs a
    /// label to its left and at least two to its right).
    #[error(
        "{0:?}: a middle wildcard must be one whole \"*\" label with a label to its left and at least two to its right"
    )]
    MiddlePosition(String),
    /// More than one `*` in one entry.
    #[error("{0:?}: only one wildcard per entry")]
    SeveralWildcards(String),
    /// v2: the part right of a middle `*` is a public suffix (`foo.*.com`), so
    /// the entry would match names of unrelated owners.
    #[error(
        "{pattern:?}: {right:?}, right of the middle \"*\", is a public suffix, so the entry would match names of unrelated owners"
    )]
    PublicSuffix {
        /// The entry as written.
        pattern: String,
        /// The public suffix right of the `*`.
        right: String,
    },
}

impl PatternError {
    /// The fix to suggest, when there is one.
    pub fn help(&self) -> Option<String> {
        match self {
            PatternError::Empty => Some("remove the empty entry".into()),
            PatternError::MatchesEverything(_) => Some("use an `open` or `report` action to allow every host".into()),
            PatternError::NotFullLabel(p) => {
                let rest = p.trim_start_matches('*').trim_start_matches('.');
                Some(format!("use \"*.{rest}\" for its subdomains, or \"{rest}\" for the name itself"))
            }
            PatternError::NotPrefix(_) => {
                Some("list each name, or use one leading wildcard such as \"*.example.com\"".into())
            }
            PatternError::MiddlePosition(_) => {
                Some("write it as \"api.*.example.com\" (one label) or \"*.example.com\" (any depth)".into())
            }
            PatternError::SeveralWildcards(_) => Some("list the names, or keep one wildcard".into()),
            PatternError::PublicSuffix { right, .. } => Some(format!(
                "put the wildcard under a domain someone owns, as in \"api.*.example.{right}\", or list the names"
            )),
            PatternError::WildcardIp(p) => Some(format!("use \"{}\"", p.trim_start_matches("*."))),
            PatternError::NotCanonical { canonical, .. } => Some(format!("use \"{canonical}\"")),
            PatternError::InvalidHost { error, pattern } => match error {
                HostError::HasPort { host, .. } => Some(format!(
                    "ACL entries match hosts on every port; use \"{}{host}\" (restrict ports with --deny-address IP:PORT)",
                    if pattern.starts_with("*.") { "*." } else { "" }
                )),
                HostError::NonCanonicalIpv4 { means } => Some(format!("use \"{means}\"")),
                HostError::DisallowedChar { ch: '/' } => {
                    Some("ACL entries are host names; address ranges belong in --deny-range/--allow-range".into())
                }
                HostError::DisallowedChar { ch: '[' | ']' } => Some("write IPv6 addresses without brackets".into()),
                HostError::DisallowedChar { ch: ' ' } => Some("remove the spaces".into()),
                HostError::EmptyLabel => Some("remove the extra dot".into()),
                _ => None,
            },
        }
    }
}

/// Parses an ACL entry, accepting only its canonical spelling (plus one
/// trailing dot, reported separately).
///
/// ```rust
/// use egress_policy::pattern::{self, HostPattern, PatternError};
/// let parsed = pattern::parse("*.example.com")?;
/// assert_eq!(parsed.pattern, HostPattern::Wildcard("example.com".into()));
/// assert_eq!(parsed.pattern.to_string(), "*.example.com");
/// // Only the canonical spelling is accepted; the help names it.
/// let error = pattern::parse("API.Example.com").unwrap_err();
/// assert_eq!(error.help().as_deref(), Some("use \"api.example.com\""));
/// assert!(matches!(pattern::parse("api.*.example.com"), Err(PatternError::NotPrefix(_))));
/// # Ok::<(), PatternError>(())
/// ```
///
/// Matching many patterns at once goes through [`crate::index`]: a wildcard
/// matches subdomains at any depth, never the apex.
///
/// ```rust
/// use egress_policy::{host, index::{HostKey, IndexBuilder}, pattern::{self, PatternMatch}};
/// let patterns = [pattern::parse("*.example.com")?.pattern, pattern::parse("example.org")?.pattern];
/// let mut builder = IndexBuilder::default();
/// let list = builder.add_list(&patterns);
/// let index = builder.build();
/// let find = |name: &str| -> Result<Option<String>, Box<dyn std::error::Error>> {
///     let host = host::canonical(name)?;
///     Ok(index.find(list, &HostKey::new(&host)).map(|m| m.to_string()))
/// };
/// assert_eq!(find("a.b.example.com")?, Some("*.example.com".to_owned()));
/// assert_eq!(find("example.com")?, None); // the apex is not a subdomain
/// assert_eq!(find("Example.ORG.")?, Some("example.org".to_owned()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse(raw: &str) -> Result<ParsedPattern, PatternError> {
    if raw.is_empty() {
        return Err(PatternError::Empty);
    }
    if raw == "*" || raw == "*." {
        return Err(PatternError::MatchesEverything(raw.to_owned()));
    }
    let (wildcard, domain) = match raw.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None if raw.starts_with('*') => return Err(PatternError::NotFullLabel(raw.to_owned())),
        None => (false, raw),
    };
    if domain.contains('*') {
        return Err(PatternError::NotPrefix(raw.to_owned()));
    }
    let canonical =
        host::canonicalize(domain).map_err(|error| PatternError::InvalidHost { pattern: raw.to_owned(), error })?;
    let prefix = if wildcard { "*." } else { "" };
    if canonical.rewritten {
        return Err(PatternError::NotCanonical {
            pattern: raw.to_owned(),
            canonical: format!("{prefix}{}", canonical.host),
        });
    }
    let pattern = match (wildcard, canonical.host.is_name()) {
        (false, _) => HostPattern::Exact(canonical.host),
        (true, true) => HostPattern::Wildcard(canonical.host.as_str().into()),
        (true, false) => return Err(PatternError::WildcardIp(raw.to_owned())),
    };
    Ok(ParsedPattern { pattern, had_trailing_dot: canonical.had_trailing_dot })
}

/// Parses an entry of a `version: v2` file: everything [`parse`] accepts,
/// plus one middle `*` label (`access-analyzer.*.amazonaws.com`).
pub fn parse_v2(raw: &str) -> Result<ParsedPattern, PatternError> {
    let stars = raw.matches('*').count();
    let leading = raw.starts_with("*.") && raw.len() > 2;
    if stars == 0 || (stars == 1 && leading) || raw == "*" || raw == "*." {
        return parse(raw);
    }
    if stars > 1 {
        return Err(PatternError::SeveralWildcards(raw.to_owned()));
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    let labels: Vec<&str> = trimmed.split('.').collect();
    let Some(at) = labels.iter().position(|l| l.contains('*')) else {
        return parse(raw);
    };
    // A whole label, with a label on each side; the right side is then
    // checked against the Public Suffix List (so it has two labels or more).
    if labels.get(at) != Some(&"*") || at == 0 || at + 2 > labels.len() {
        return Err(PatternError::MiddlePosition(raw.to_owned()));
    }
    // Canonicalise with a placeholder label where the `*` is, then put it back.
    const PLACEHOLDER: &str = "x";
    let mut with_placeholder = labels.clone();
    if let Some(slot) = with_placeholder.get_mut(at) {
        *slot = PLACEHOLDER;
    }
    let joined = with_placeholder.join(".") + if trimmed.len() < raw.len() { "." } else { "" };
    let canonical =
        host::canonicalize(&joined).map_err(|error| PatternError::InvalidHost { pattern: raw.to_owned(), error })?;
    if !canonical.host.is_name() {
        return Err(PatternError::MiddlePosition(raw.to_owned()));
    }
    let text = canonical.host.as_str();
    let canon_labels: Vec<&str> = text.split('.').collect();
    if canon_labels.len() != labels.len() || canon_labels.get(at) != Some(&PLACEHOLDER) {
        return Err(PatternError::MiddlePosition(raw.to_owned()));
    }
    let left = canon_labels.get(..at).unwrap_or_default().join(".");
    let right = canon_labels.get(at + 1..).unwrap_or_default().join(".");
    if canonical.rewritten {
        return Err(PatternError::NotCanonical { pattern: raw.to_owned(), canonical: format!("{left}.*.{right}") });
    }
    if is_public_suffix(&right) {
        return Err(PatternError::PublicSuffix { pattern: raw.to_owned(), right });
    }
    Ok(ParsedPattern {
        pattern: HostPattern::Middle { left: left.into(), right: right.into() },
        had_trailing_dot: canonical.had_trailing_dot,
    })
}

/// Whether `domain` is itself a public suffix in the ICANN section of the
/// Public Suffix List (`com`, `co.uk`, `*.ck` names), or has no registrable
/// part at all. A suffix from the private section (`github.io`) is
/// registrable under ICANN rules, so it is not one here.
pub fn is_public_suffix(domain: &str) -> bool {
    use psl::Psl as _;
    let Some(suffix) = psl::List.suffix(domain.as_bytes()) else {
        return true;
    };
    match suffix.typ() {
        Some(psl::Type::Private) => false,
        Some(psl::Type::Icann) | None => suffix.as_bytes().len() >= domain.len() || !domain.contains('.'),
    }
}

/// Which entry of a set matched a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternMatch<'a> {
    /// The exact entry equal to the host.
    Exact(&'a str),
    /// The suffix of the matching `*.suffix` entry.
    Wildcard(&'a str),
    /// The whole `left.*.right` entry.
    Middle(&'a str),
}

impl fmt::Display for PatternMatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternMatch::Exact(host) => f.write_str(host),
            PatternMatch::Wildcard(suffix) => write!(f, "*.{suffix}"),
            PatternMatch::Middle(pattern) => f.write_str(pattern),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    fn err(raw: &str) -> PatternError {
        parse(raw).expect_err(raw)
    }

    #[test]
    fn smokescreen_glob_rules() {
        for good in [
            "example.com",
            "*.example.com",
            "com",
            "*.com",
            "127.0.0.1",
            "::1",
            "foo_bar.example.com",
            "xn--e1aybc.example.com",
            "2001:db8::1",
        ] {
            let parsed = parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(parsed.pattern.to_string(), good);
            assert!(!parsed.had_trailing_dot);
        }
        assert!(parse("example.com.").unwrap().had_trailing_dot);
        assert_eq!(parse("*.example.com.").unwrap().pattern.to_string(), "*.example.com");
        assert_eq!(err(""), PatternError::Empty);
        assert!(matches!(err("*"), PatternError::MatchesEverything(_)));
        assert!(matches!(err("*."), PatternError::MatchesEverything(_)));
        assert!(matches!(err("*example.com"), PatternError::NotFullLabel(_)));
        assert!(matches!(err("**.example.com"), PatternError::NotFullLabel(_)));
        for middle in ["api.*.example.com", "ex*ample.com", "example.*", "*.*.example.com", "*.*"] {
            assert!(matches!(err(middle), PatternError::NotPrefix(_)), "{middle}");
        }
        assert!(matches!(err("*.127.0.0.1"), PatternError::WildcardIp(_)));
    }

    #[test]
    fn middle_wildcards_are_v2_only_and_psl_checked() {
        let ok = |raw: &str| parse_v2(raw).unwrap_or_else(|e| panic!("{raw}: {e}")).pattern;
        assert_eq!(
            ok("access-analyzer.*.amazonaws.com"),
            HostPattern::Middle { left: "access-analyzer".into(), right: "amazonaws.com".into() }
        );
        assert_eq!(ok("a.b.*.example.co.uk").to_string(), "a.b.*.example.co.uk");
        assert_eq!(ok("x.*.project.github.io").to_string(), "x.*.project.github.io");
        assert_eq!(ok("x.*.github.io").to_string(), "x.*.github.io", "private-section suffixes are registrable");
        assert!(parse_v2("api.*.example.com.").unwrap().had_trailing_dot);
        // v1 rules are unchanged in v2.
        assert_eq!(ok("*.example.com").to_string(), "*.example.com");
        assert_eq!(ok("example.com").to_string(), "example.com");
        assert!(matches!(parse("api.*.example.com"), Err(PatternError::NotPrefix(_))));
        let e = |raw: &str| parse_v2(raw).expect_err(raw);
        for public in ["foo.*.com", "x.*.co.uk", "a.*.xn--p1ai", "a.*.b.ck"] {
            assert!(
                matches!(e(public), PatternError::PublicSuffix { .. } | PatternError::MiddlePosition(_)),
                "{public}"
            );
        }
        assert!(matches!(e("foo.*.com"), PatternError::PublicSuffix { .. }));
        assert!(matches!(e("x.*.co.uk"), PatternError::PublicSuffix { .. }));
        for position in ["example.*", "a.*.com.", "x.*", "ex*ample.com", "a.b*.example.com", "*a.b.example.com"] {
            let err = e(position);
            assert!(
                matches!(
                    err,
                    PatternError::MiddlePosition(_) | PatternError::NotFullLabel(_) | PatternError::PublicSuffix { .. }
                ),
                "{position}: {err:?}"
            );
        }
        assert!(matches!(e("*.*.example.com"), PatternError::SeveralWildcards(_)));
        assert!(matches!(e("a.*.*.example.com"), PatternError::SeveralWildcards(_)));
        assert!(matches!(e("API.*.example.com"), PatternError::NotCanonical { .. }));
        assert_eq!(e("API.*.Example.com").help().unwrap(), "use \"api.*.example.com\"");
        assert!(matches!(e("a..*.example.com"), PatternError::InvalidHost { .. } | PatternError::MiddlePosition(_)));
        assert!(e("foo.*.com").help().is_some());
    }

    #[test]
    fn non_canonical_entries_name_their_canonical_spelling() {
        let cases = [
            ("EXAMPLE.COM", "use \"example.com\""),
            ("ExAmPlE.CoM.", "use \"example.com\""),
            ("éxämple.com", "use \"xn--xmple-gra7a.com\""),
            ("*.тест.example.com", "use \"*.xn--e1aybc.example.com\""),
            ("2001:DB8::1", "use \"2001:db8::1\""),
            ("::ffff:1.2.3.4", "use \"1.2.3.4\""),
            ("127.1", "use \"127.0.0.1\""),
            ("0x7f.0.0.1", "use \"127.0.0.1\""),
            ("example.com:443", "use \"example.com\""),
        ];
        for (raw, help) in cases {
            let help_text = err(raw).help().unwrap_or_default();
            assert!(help_text.contains(help), "{raw}: {help_text}");
        }
        for bad in [".example.com", "foo..example.com", "[::1]", "10.0.0.0/8", " example.com", "-foo.example.com"] {
            assert!(matches!(err(bad), PatternError::InvalidHost { .. }), "{bad}");
        }
    }
}
