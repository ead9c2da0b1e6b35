//! Diagnostics: what `policyc check` and `policyc test` report, each with a
//! stable code, a `file:line:col`, a one-line message and, when a fix is
//! known, a `help:`.
//!
//! Codes never change meaning once published: CI systems and editors match
//! on them. Errors are `P0xx`, warnings `P1xx`. This module only describes
//! them; deciding what is wrong is `acl`'s job (and the policy test runner's
//! in `policyc`), and rendering them (text, GitHub, SARIF) is `policyc`'s.

use std::fmt;

use serde::Serialize;

/// How serious a diagnostic is; fixed by its [`Code`] (`P0xx` errors, `P1xx` warnings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is refused: `policyc check` fails and nothing is compiled.
    Error,
    /// The policy is accepted; `policyc check --deny-warnings` fails on it.
    Warning,
}

/// Every diagnostic `policyc` can produce. The code is the stable identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// The file is not valid YAML.
    YamlSyntax,
    /// A key that the ACL format does not have.
    UnknownKey,
    /// The same key twice in one mapping.
    DuplicateKey,
    /// A value of the wrong type (a string where a list belongs, ...).
    WrongType,
    /// A required key is absent or null.
    MissingKey,
    /// `version` is not `v1` or `v2`.
    UnsupportedVersion,
    /// A service `name` is empty.
    EmptyName,
    /// Two services with the same `name`.
    DuplicateService,
    /// `action` is not open, report or enforce.
    UnknownAction,
    /// A host pattern Smokescreen refuses (wildcard rules, bad host).
    InvalidPattern,
    /// A host pattern that is not written canonically.
    NonCanonicalPattern,
    /// A rule uses an action disabled with `--disable-acl-policy-action`.
    DisabledAction,
    /// A `mitm_domains` entry that is not in the rule's `allowed_domains`.
    MitmDomainNotAllowed,
    /// A policy test case's `destination` is not a valid host or host:port.
    InvalidDestination,
    /// A policy test case's `decision` is not allow, report or deny.
    UnknownDecision,
    /// A policy test case's `reason` is not a known reason code or text.
    UnknownReason,
    /// A policy test case whose actual decision or reason differs from the expected one.
    TestFailed,
    /// A v2 key in a `version: v1` file.
    RequiresV2,
    /// A port that is 0, above 65535 or not a number.
    InvalidPort,
    /// A port range whose start is above its end.
    ReversedPortRange,
    /// A CIDR that does not parse or is not written canonically.
    InvalidCidr,
    /// A CIDR with host bits set (10.0.0.1/8).
    CidrHostBits,
    /// An IPv4-mapped IPv6 range or address (write the IPv4 one).
    Ipv4MappedRange,
    /// An internal destination without a non-empty reason.
    MissingReason,
    /// An internal destination host with a wildcard.
    WildcardInternalHost,
    /// A middle wildcard whose right side is a public suffix.
    WildcardPublicSuffix,
    /// A network address that is not IP or IP:PORT.
    InvalidAddress,
    /// No `default` rule: unknown roles are denied.
    NoDefaultRule,
    /// The same entry twice in one list.
    DuplicateEntry,
    /// An entry already covered by a wildcard in the same list.
    ShadowedEntry,
    /// A host in both global lists (the deny list wins).
    InBothGlobalLists,
    /// `allowed_domains` on an `open` rule (matters only against the global deny list).
    AllowedDomainsOnOpenRule,
    /// A trailing dot in an entry (accepted, normalised away).
    TrailingDot,
    /// A Smokescreen key that a CONNECT-only proxy cannot honour.
    IgnoredKey,
    /// An exception CIDR overlapping addresses no exception opens.
    ExceptionOverlapsNeverOpenable,
    /// An exception CIDR wider than /16 (IPv4) or /48 (IPv6).
    ExceptionTooWide,
}

impl Code {
    /// Every code, in code order.
    pub const ALL: [Code; 36] = [
        Code::YamlSyntax,
        Code::UnknownKey,
        Code::DuplicateKey,
        Code::WrongType,
        Code::MissingKey,
        Code::UnsupportedVersion,
        Code::EmptyName,
        Code::DuplicateService,
        Code::UnknownAction,
        Code::InvalidPattern,
        Code::NonCanonicalPattern,
        Code::DisabledAction,
        Code::MitmDomainNotAllowed,
        Code::InvalidDestination,
        Code::UnknownDecision,
        Code::UnknownReason,
        Code::TestFailed,
        Code::RequiresV2,
        Code::InvalidPort,
        Code::ReversedPortRange,
        Code::InvalidCidr,
        Code::CidrHostBits,
        Code::Ipv4MappedRange,
        Code::MissingReason,
        Code::WildcardInternalHost,
        Code::WildcardPublicSuffix,
        Code::InvalidAddress,
        Code::NoDefaultRule,
        Code::DuplicateEntry,
        Code::ShadowedEntry,
        Code::InBothGlobalLists,
        Code::AllowedDomainsOnOpenRule,
        Code::TrailingDot,
        Code::IgnoredKey,
        Code::ExceptionOverlapsNeverOpenable,
        Code::ExceptionTooWide,
    ];

    /// The stable code, `P001` to `P027` (errors) and `P101` to `P109` (warnings).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "P001",
            Code::UnknownKey => "P002",
            Code::DuplicateKey => "P003",
            Code::WrongType => "P004",
            Code::MissingKey => "P005",
            Code::UnsupportedVersion => "P006",
            Code::EmptyName => "P007",
            Code::DuplicateService => "P008",
            Code::UnknownAction => "P009",
            Code::InvalidPattern => "P010",
            Code::NonCanonicalPattern => "P011",
            Code::DisabledAction => "P012",
            Code::MitmDomainNotAllowed => "P013",
            Code::InvalidDestination => "P014",
            Code::UnknownDecision => "P015",
            Code::UnknownReason => "P016",
            Code::TestFailed => "P017",
            Code::NoDefaultRule => "P101",
            Code::DuplicateEntry => "P102",
            Code::ShadowedEntry => "P103",
            Code::InBothGlobalLists => "P104",
            Code::AllowedDomainsOnOpenRule => "P105",
            Code::TrailingDot => "P106",
            Code::IgnoredKey => "P107",
            Code::RequiresV2 => "P018",
            Code::InvalidPort => "P019",
            Code::ReversedPortRange => "P020",
            Code::InvalidCidr => "P021",
            Code::CidrHostBits => "P022",
            Code::Ipv4MappedRange => "P023",
            Code::MissingReason => "P024",
            Code::WildcardInternalHost => "P025",
            Code::WildcardPublicSuffix => "P026",
            Code::InvalidAddress => "P027",
            Code::ExceptionOverlapsNeverOpenable => "P108",
            Code::ExceptionTooWide => "P109",
        }
    }

    /// A short PascalCase name (SARIF `reportingDescriptor.name`).
    pub fn name(self) -> &'static str {
        match self {
            Code::YamlSyntax => "YamlSyntax",
            Code::UnknownKey => "UnknownKey",
            Code::DuplicateKey => "DuplicateKey",
            Code::WrongType => "WrongType",
            Code::MissingKey => "MissingKey",
            Code::UnsupportedVersion => "UnsupportedVersion",
            Code::EmptyName => "EmptyName",
            Code::DuplicateService => "DuplicateService",
            Code::UnknownAction => "UnknownAction",
            Code::InvalidPattern => "InvalidPattern",
            Code::NonCanonicalPattern => "NonCanonicalPattern",
            Code::DisabledAction => "DisabledAction",
            Code::MitmDomainNotAllowed => "MitmDomainNotAllowed",
            Code::InvalidDestination => "InvalidDestination",
            Code::UnknownDecision => "UnknownDecision",
            Code::UnknownReason => "UnknownReason",
            Code::TestFailed => "PolicyTestFailed",
            Code::NoDefaultRule => "NoDefaultRule",
            Code::DuplicateEntry => "DuplicateEntry",
            Code::ShadowedEntry => "ShadowedEntry",
            Code::InBothGlobalLists => "InBothGlobalLists",
            Code::AllowedDomainsOnOpenRule => "AllowedDomainsOnOpenRule",
            Code::TrailingDot => "TrailingDot",
            Code::IgnoredKey => "IgnoredKey",
            Code::RequiresV2 => "RequiresV2",
            Code::InvalidPort => "InvalidPort",
            Code::ReversedPortRange => "ReversedPortRange",
            Code::InvalidCidr => "InvalidCidr",
            Code::CidrHostBits => "CidrHostBits",
            Code::Ipv4MappedRange => "Ipv4MappedRange",
            Code::MissingReason => "MissingReason",
            Code::WildcardInternalHost => "WildcardInternalHost",
            Code::WildcardPublicSuffix => "WildcardPublicSuffix",
            Code::InvalidAddress => "InvalidAddress",
            Code::ExceptionOverlapsNeverOpenable => "ExceptionOverlapsNeverOpenable",
            Code::ExceptionTooWide => "ExceptionTooWide",
        }
    }

    /// One sentence saying what the code means (SARIF `shortDescription`).
    pub fn summary(self) -> &'static str {
        match self {
            Code::YamlSyntax => "The file is not valid YAML or not UTF-8.",
            Code::UnknownKey => "A key that the format does not have (a typo silently drops what it configures).",
            Code::DuplicateKey => "The same key twice in one mapping.",
            Code::WrongType => "A value of the wrong type.",
            Code::MissingKey => "A required key is absent, null or empty.",
            Code::UnsupportedVersion => "The ACL version is not v1 or v2.",
            Code::EmptyName => "A service rule has an empty name.",
            Code::DuplicateService => "Two service rules have the same name.",
            Code::UnknownAction => "An action that is not open, report or enforce.",
            Code::InvalidPattern => "A host pattern that Smokescreen refuses.",
            Code::NonCanonicalPattern => "A host pattern that is not written canonically.",
            Code::DisabledAction => "A rule uses an action disabled with --disable-acl-policy-action.",
            Code::MitmDomainNotAllowed => "A mitm_domains entry missing from the rule's allowed_domains.",
            Code::InvalidDestination => "A policy test destination that is not a valid host or host:port.",
            Code::UnknownDecision => "A policy test decision that is not allow, report or deny.",
            Code::UnknownReason => "A policy test reason that is not a known reason code or text.",
            Code::TestFailed => "A policy test case decided differently from what it expects.",
            Code::NoDefaultRule => "No default rule: roles without a rule of their own are denied.",
            Code::DuplicateEntry => "The same entry twice in one list.",
            Code::ShadowedEntry => "An entry already matched by a wildcard in the same list.",
            Code::InBothGlobalLists => "A global_allow_list entry overridden by global_deny_list.",
            Code::AllowedDomainsOnOpenRule => {
                "allowed_domains on an open rule only matters against the global deny list."
            }
            Code::TrailingDot => "A trailing dot in an entry (accepted, normalised away).",
            Code::IgnoredKey => "A key that has no effect in a CONNECT-only proxy.",
            Code::RequiresV2 => "A key that only `version: v2` files have, used in a v1 file.",
            Code::InvalidPort => "A port or port range entry that is not 1 to 65535.",
            Code::ReversedPortRange => "A port range whose start is above its end (it contains no port).",
            Code::InvalidCidr => "A CIDR that does not parse or is not written canonically.",
            Code::CidrHostBits => "A CIDR with host bits set (write the network address).",
            Code::Ipv4MappedRange => "An IPv4-mapped IPv6 range or address where the IPv4 form belongs.",
            Code::MissingReason => "An internal destination without a non-empty reason (the audit trail).",
            Code::WildcardInternalHost => "An internal destination whose host is a wildcard instead of one exact name.",
            Code::WildcardPublicSuffix => {
                "A middle wildcard whose right-hand side is a public suffix (ICANN section of the PSL)."
            }
            Code::InvalidAddress => "A network section address that is not IP or IP:PORT.",
            Code::ExceptionOverlapsNeverOpenable => {
                "An exception CIDR that overlaps metadata, loopback, unspecified, multicast or broadcast addresses (they stay denied)."
            }
            Code::ExceptionTooWide => "An exception CIDR wider than a /16 (IPv4) or /48 (IPv6).",
        }
    }

    /// Error for `P0xx`, warning for `P1xx`.
    pub fn severity(self) -> Severity {
        if self.as_str().starts_with("P0") { Severity::Error } else { Severity::Warning }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A 1-based position in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The stable code (`P011`, ...).
    pub code: Code,
    /// Always `code.severity()`.
    pub severity: Severity,
    /// The file name as given to the checker.
    pub file: String,
    /// Line of the offending node, from 1.
    pub line: u64,
    /// Column of the offending node, from 1.
    pub column: u64,
    /// One line saying what is wrong.
    pub message: String,
    /// The fix to suggest, when one is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without help; the severity follows from `code`.
    pub fn new(code: Code, file: &str, at: Position, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: code.severity(),
            file: file.to_owned(),
            line: at.line,
            column: at.column,
            message: message.into(),
            help: None,
        }
    }

    /// Adds the `help:` line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this diagnostic refuses the policy.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Diagnostics in the order a reader wants them: by file, line, column.
///
/// ```rust
/// use egress_policy::diagnostic::{self, Code, Diagnostic, Position};
/// let at = |line, column| Position { line, column };
/// let mut found = vec![
///     Diagnostic::new(Code::TrailingDot, "b.yaml", at(1, 1), "trailing dot"),
///     Diagnostic::new(Code::UnknownKey, "a.yaml", at(7, 3), "unknown key"),
///     Diagnostic::new(Code::DuplicateEntry, "a.yaml", at(2, 5), "duplicate entry"),
/// ];
/// diagnostic::sort(&mut found);
/// let order: Vec<_> = found.iter().map(|d| (d.file.as_str(), d.line, d.code.as_str())).collect();
/// assert_eq!(order, [("a.yaml", 2, "P102"), ("a.yaml", 7, "P002"), ("b.yaml", 1, "P106")]);
/// assert!(found[1].is_error() && !found[0].is_error());
/// ```
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| {
        (&a.file, a.line, a.column, a.code.as_str()).cmp(&(&b.file, b.line, b.column, b.code.as_str()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_severity_follows_the_prefix() {
        let codes: HashSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), Code::ALL.len());
        assert_eq!(Code::UnknownKey.severity(), Severity::Error);
        assert_eq!(Code::TrailingDot.severity(), Severity::Warning);
    }

    #[test]
    fn every_code_has_a_name_and_summary() {
        let names: HashSet<&str> = Code::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Code::ALL.len());
        assert!(Code::ALL.iter().all(|c| c.summary().ends_with('.')));
        assert_eq!(Code::TestFailed.as_str(), "P017");
        assert_eq!(Code::TestFailed.severity(), Severity::Error);
    }
}
