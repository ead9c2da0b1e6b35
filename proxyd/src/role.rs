//! Who the client is: the `--role-from FIELD[:REGEX]` rule and its
//! evaluation over a verified client certificate.
//!
//! Pure: no I/O, no clock. The rule is compiled once at start-up (a bad
//! field or regex is a start-up error naming the position);
//! [`RoleFrom::role_of`] runs per full handshake and per resumption and
//! allocates little (the role, the regex's capture slots). It must never
//! give a role the certificate does not name unambiguously: no field, no
//! match, values that disagree, or a role that is empty, not text or holds a
//! control or format character is a [`MissingRole`], never the role `""` nor
//! one picked among several.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::AttributeTypeAndValue;

/// Compiled regex programs larger than this are refused at start-up: a role
/// pattern is a few dozen characters, and a huge one (`a{1000}{1000}`) costs
/// memory and time on every handshake.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Longest `--role-from` regex accepted, in bytes.
pub const REGEX_MAX_LEN: usize = 1024;

/// The certificate field a role is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleField {
    /// Subject commonName (the default; Smokescreen's role).
    Cn,
    /// Subject organizationalUnitName.
    Ou,
    /// Subject organizationName.
    O,
    /// subjectAltName uniformResourceIdentifier (SPIFFE IDs).
    UriSan,
    /// subjectAltName dNSName.
    DnsSan,
    /// subjectAltName rfc822Name.
    EmailSan,
}

impl RoleField {
    /// Every field, by its `--role-from` name.
    pub const ALL: [(&'static str, RoleField); 6] = [
        ("cn", RoleField::Cn),
        ("ou", RoleField::Ou),
        ("o", RoleField::O),
        ("uri-san", RoleField::UriSan),
        ("dns-san", RoleField::DnsSan),
        ("email-san", RoleField::EmailSan),
    ];

    /// The `--role-from` name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, field)| *field == self).map_or("cn", |(name, _)| name)
    }
}

/// Where the role comes from: a field and an optional regex. The role is
/// the regex's first capture group, or the whole value when the regex has
/// no group (then the regex only selects values); without a regex, the
/// whole value.
#[derive(Clone, Debug)]
pub struct RoleFrom {
    field: RoleField,
    pattern: Option<Regex>,
}

impl Default for RoleFrom {
    /// The certificate CN, as Smokescreen does.
    fn default() -> Self {
        RoleFrom { field: RoleField::Cn, pattern: None }
    }
}

impl PartialEq for RoleFrom {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field
            && self.pattern.as_ref().map(Regex::as_str) == other.pattern.as_ref().map(Regex::as_str)
    }
}

impl Eq for RoleFrom {}

impl std::fmt::Display for RoleFrom {
    /// The `FIELD[:REGEX]` text it was parsed from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pattern {
            Some(pattern) => write!(f, "{}:{}", self.field.name(), pattern.as_str()),
            None => f.write_str(self.field.name()),
        }
    }
}

/// Why a `--role-from` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleFromError {
    #[error("unknown field {0:?}: expected one of cn, ou, o, uri-san, dns-san, email-san, then optionally :REGEX")]
    UnknownField(String),
    #[error("the regex after {field}: is empty; leave out the ':' to use the whole value")]
    EmptyRegex { field: &'static str },
    #[error("the regex is {len} bytes long; at most {REGEX_MAX_LEN} are accepted")]
    RegexTooLong { len: usize },
    /// `at` is the 1-based character position in the regex.
    #[error("invalid regex at character {at}: {message}")]
    BadRegex { at: usize, message: String },
    #[error("the regex compiles to more than {REGEX_SIZE_LIMIT} bytes; simplify it")]
    RegexTooLarge,
}

/// Why a verified certificate gives no role. The label goes in the decision line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingRole {
    /// The certificate has no value in the field.
    NoField,
    /// No value matches the regex.
    NoMatch,
    /// Two values give different roles.
    Ambiguous,
    /// The role would be empty (or an optional group did not take part).
    Empty,
    /// The role would hold a control or format character.
    NotPrintable,
    /// A value of the field is not decodable text, or the field does not parse.
    NotText,
}

impl MissingRole {
    /// A short stable label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MissingRole::NoField => "role_field_absent",
            MissingRole::NoMatch => "role_regex_no_match",
            MissingRole::Ambiguous => "role_values_disagree",
            MissingRole::Empty => "role_empty",
            MissingRole::NotPrintable => "role_not_printable",
            MissingRole::NotText => "role_field_not_text",
        }
    }
}

impl RoleFrom {
    /// Parses `FIELD[:REGEX]` and compiles the regex under [`REGEX_SIZE_LIMIT`].
    pub fn parse(spec: &str) -> Result<RoleFrom, RoleFromError> {
        let (name, pattern) = match spec.split_once(':') {
            Some((name, pattern)) => (name, Some(pattern)),
            None => (spec, None),
        };
        let field = RoleField::ALL
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name.trim()))
            .map(|(_, field)| *field)
            .ok_or_else(|| RoleFromError::UnknownField(name.to_owned()))?;
        let pattern = match pattern {
            None => None,
            Some("") => return Err(RoleFromError::EmptyRegex { field: field.name() }),
            Some(pattern) => Some(compile(pattern)?),
        };
        Ok(RoleFrom { field, pattern })
    }

    pub fn field(&self) -> RoleField {
        self.field
    }

    /// The role a verified certificate names under this rule.
    pub fn role_of(&self, cert: &X509Certificate<'_>) -> Result<String, MissingRole> {
        let mut found = Found { rule: self, role: None, any_value: false };
        let subject = cert.subject();
        match self.field {
            RoleField::Cn => found.attributes(subject.iter_common_name())?,
            RoleField::Ou => found.attributes(subject.iter_organizational_unit())?,
            RoleField::O => found.attributes(subject.iter_organization())?,
            RoleField::UriSan | RoleField::DnsSan | RoleField::EmailSan => {
                // A SAN extension that does not parse (or appears twice) is refused, not skipped.
                let san = cert.subject_alternative_name().map_err(|_| MissingRole::NotText)?;
                for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
                    let value = match (self.field, name) {
                        (RoleField::UriSan, GeneralName::URI(v))
                        | (RoleField::DnsSan, GeneralName::DNSName(v))
                        | (RoleField::EmailSan, GeneralName::RFC822Name(v)) => *v,
                        _ => continue,
                    };
                    found.value(value)?;
                }
            }
        }
        match found.role {
            Some(role) => Ok(role),
            None if found.any_value => Err(MissingRole::NoMatch),
            None => Err(MissingRole::NoField),
        }
    }

    /// The role `value` gives: `Ok(None)` when the regex does not match it.
    fn role_in<'v>(&self, value: &'v str) -> Result<Option<&'v str>, MissingRole> {
        let role = match &self.pattern {
            None => value,
            Some(pattern) if pattern.captures_len() > 1 => match pattern.captures(value) {
                None => return Ok(None),
                Some(captures) => captures.get(1).map_or("", |group| group.as_str()),
            },
            Some(pattern) if pattern.is_match(value) => value,
            Some(_) => return Ok(None),
        };
        if role.is_empty() {
            return Err(MissingRole::Empty);
        }
        if !printable(role) {
            return Err(MissingRole::NotPrintable);
        }
        Ok(Some(role))
    }
}

/// The roles seen so far over the values of one field.
struct Found<'r> {
    rule: &'r RoleFrom,
    role: Option<String>,
    any_value: bool,
}

impl Found<'_> {
    fn attributes<'a, 'c: 'a>(
        &mut self,
        attributes: impl Iterator<Item = &'a AttributeTypeAndValue<'c>>,
    ) -> Result<(), MissingRole> {
        for attribute in attributes {
            let text = attribute_text(attribute).ok_or(MissingRole::NotText)?;
            self.value(&text)?;
        }
        Ok(())
    }

    fn value(&mut self, value: &str) -> Result<(), MissingRole> {
        self.any_value = true;
        let Some(role) = self.rule.role_in(value)? else { return Ok(()) };
        match &self.role {
            Some(seen) if seen != role => Err(MissingRole::Ambiguous),
            Some(_) => Ok(()),
            None => {
                self.role = Some(role.to_owned());
                Ok(())
            }
        }
    }
}

/// No character of Unicode's "Other" category: control characters, and
/// format characters such as bidi overrides and zero-width joiners, which
/// would make a role read differently in a log than it compares.
fn printable(role: &str) -> bool {
    if role.is_ascii() {
        // ASCII's only "Other" characters are the controls.
        return !role.bytes().any(|b| b.is_ascii_control());
    }
    static OTHER: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\p{C}").ok());
    // The pattern is a constant that compiles; if it ever did not, refuse rather than guess.
    OTHER.as_ref().is_some_and(|other| !other.is_match(role))
}

fn compile(pattern: &str) -> Result<Regex, RoleFromError> {
    if pattern.len() > REGEX_MAX_LEN {
        return Err(RoleFromError::RegexTooLong { len: pattern.len() });
    }
    // regex's own message spans several lines (the pattern, a caret): take
    // the position and the reason from the parser and say it on one line.
    if let Err(error) = regex_syntax::Parser::new().parse(pattern) {
        let (offset, message) = match &error {
            regex_syntax::Error::Parse(e) => (e.span().start.offset, e.kind().to_string()),
            regex_syntax::Error::Translate(e) => (e.span().start.offset, e.kind().to_string()),
            other => (0, other.to_string()),
        };
        let at = pattern.get(..offset).map_or(1, |before| before.chars().count() + 1);
        return Err(RoleFromError::BadRegex { at, message });
    }
    RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_SIZE_LIMIT).build().map_err(|error| {
        match error {
            regex::Error::CompiledTooBig(_) => RoleFromError::RegexTooLarge,
            other => RoleFromError::BadRegex { at: 1, message: other.to_string().replace('\n', " ") },
        }
    })
}

/// The text of a subject attribute: UTF8String, PrintableString, IA5String,
/// NumericString, or BMPString as UTF-16; anything else is not text.
/// Borrowed except for BMPString, so the usual CN costs no allocation here.
pub fn attribute_text<'a>(attr: &'a AttributeTypeAndValue<'_>) -> Option<Cow<'a, str>> {
    let value = attr.attr_value();
    if value.tag() == Tag::BmpString {
        // UCS-2/UTF-16 big-endian; an odd length or an unpaired surrogate is not text.
        if value.data.len() % 2 != 0 {
            return None;
        }
        let units =
            value.data.chunks_exact(2).filter_map(|pair| <[u8; 2]>::try_from(pair).ok()).map(u16::from_be_bytes);
        return char::decode_utf16(units).collect::<Result<String, _>>().ok().map(Cow::Owned);
    }
    attr.as_str().ok().map(Cow::Borrowed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use rcgen::{CertificateParams, DnType, DnValue, KeyPair, SanType};

    use super::*;

    /// A self-signed certificate built by `edit` (the signature does not matter here).
    fn cert(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        edit(&mut params);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn role(rule: &str, der: &[u8]) -> Result<String, MissingRole> {
        let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
        RoleFrom::parse(rule).unwrap().role_of(&parsed)
    }

    fn uris(uris: &[&str]) -> Vec<u8> {
        cert(|p| {
            p.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
        })
    }

    const SPIFFE: &str = r"uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$";

    #[test]
    fn smokescreens_ou_example_takes_the_first_particle() {
        let ou = |value: &str| cert(|p| p.distinguished_name.push(DnType::OrganizationalUnitName, value));
        assert_eq!(role("ou:^([^.]+)", &ou("billing.payments.prod")), Ok("billing".into()));
        assert_eq!(role("ou:^([^.]+)", &ou("search")), Ok("search".into()));
        assert_eq!(role("ou:^([^.]+)", &ou(".leading-dot")), Err(MissingRole::NoMatch));
        assert_eq!(role("ou:^([^.]+)", &cert(|_| {})), Err(MissingRole::NoField));
        assert_eq!(role("ou", &ou("whole.value")), Ok("whole.value".into()));
        // Two OUs with the same first particle agree; different ones do not.
        let two = |a: &'static str, b: &'static str| {
            cert(move |p| {
                p.distinguished_name.push(DnType::OrganizationalUnitName, a);
                p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 11]), b);
            })
        };
        assert_eq!(role("ou:^([^.]+)", &two("billing.a", "billing.b")), Ok("billing".into()));
        assert_eq!(role("ou:^([^.]+)", &two("billing.a", "search.b")), Err(MissingRole::Ambiguous));
    }

    #[test]
    fn spiffe_ids_give_the_service_account() {
        assert_eq!(role(SPIFFE, &uris(&["spiffe://example.org/ns/prod/sa/billing"])), Ok("billing".into()));
        // Another trust domain, or no SAN at all, is no role.
        assert_eq!(role(SPIFFE, &uris(&["spiffe://evil.org/ns/prod/sa/billing"])), Err(MissingRole::NoMatch));
        assert_eq!(role(SPIFFE, &uris(&["spiffe://example.org/ns/prod/sa/"])), Err(MissingRole::NoMatch));
        assert_eq!(role(SPIFFE, &cert(|_| {})), Err(MissingRole::NoField));
        // A URI that does not match is ignored when another one decides...
        assert_eq!(
            role(SPIFFE, &uris(&["https://billing.example.org/", "spiffe://example.org/ns/prod/sa/billing"])),
            Ok("billing".into())
        );
        // ...but two that give different roles are refused.
        assert_eq!(
            role(SPIFFE, &uris(&["spiffe://example.org/ns/a/sa/billing", "spiffe://example.org/ns/b/sa/search"])),
            Err(MissingRole::Ambiguous)
        );
        // Other SAN kinds are not URIs.
        let dns = cert(|p| p.subject_alt_names = vec![SanType::DnsName("billing.example.org".try_into().unwrap())]);
        assert_eq!(role(SPIFFE, &dns), Err(MissingRole::NoField));
        assert_eq!(role(r"dns-san:^([a-z]+)\.example\.org$", &dns), Ok("billing".into()));
        let email = cert(|p| p.subject_alt_names = vec![SanType::Rfc822Name("ops@example.org".try_into().unwrap())]);
        assert_eq!(role("email-san:^([^@]+)@example\\.org$", &email), Ok("ops".into()));
    }

    #[test]
    fn empty_or_unprintable_roles_are_missing() {
        let o = |value: &'static str| cert(move |p| p.distinguished_name.push(DnType::OrganizationName, value));
        assert_eq!(role("o:^team-(.*)$", &o("team-")), Err(MissingRole::Empty));
        assert_eq!(role("o:^team-(x)?", &o("team-y")), Err(MissingRole::Empty), "the group did not take part");
        assert_eq!(role("o:^team-(.*)$", &o("team-a\u{7}b")), Err(MissingRole::NotPrintable));
        assert_eq!(role("o:^team-(.*)$", &o("team-\u{202e}gnillib")), Err(MissingRole::NotPrintable), "bidi override");
        assert_eq!(role("o:^team-(.*)$", &o("team-a\u{200d}b")), Err(MissingRole::NotPrintable), "zero-width joiner");
        assert_eq!(role("o:^team-(.*)$", &o("team-équipe 2")), Ok("équipe 2".into()));
        assert_eq!(role("o", &o("")), Err(MissingRole::Empty));
        assert_eq!(role("o:^team-", &o("team-ops")), Ok("team-ops".into()), "no group: the whole value");
        let teletex = cert(|p| {
            p.distinguished_name.push(DnType::OrganizationName, DnValue::TeletexString("x".try_into().unwrap()))
        });
        assert_eq!(role("o", &teletex), Err(MissingRole::NotText));
        let bmp =
            cert(|p| p.distinguished_name.push(DnType::CommonName, DnValue::BmpString("sérvice".try_into().unwrap())));
        assert_eq!(role("cn", &bmp), Ok("sérvice".into()));
    }

    #[test]
    fn rules_parse_or_say_where_they_are_wrong() {
        assert_eq!(RoleFrom::parse("cn").unwrap(), RoleFrom::default());
        assert_eq!(RoleFrom::parse(SPIFFE).unwrap().to_string(), SPIFFE);
        assert_eq!(RoleFrom::parse("URI-SAN").unwrap().field(), RoleField::UriSan);
        assert!(matches!(RoleFrom::parse("serial"), Err(RoleFromError::UnknownField(f)) if f == "serial"));
        assert_eq!(RoleFrom::parse("ou:"), Err(RoleFromError::EmptyRegex { field: "ou" }));
        let err = RoleFrom::parse("uri-san:^spiffe://(x").unwrap_err();
        assert!(matches!(&err, RoleFromError::BadRegex { at: 11, .. }), "{err}");
        assert!(err.to_string().starts_with("invalid regex at character 11: unclosed group"), "{err}");
        let err = RoleFrom::parse("cn:ab[z-a]").unwrap_err();
        assert!(matches!(&err, RoleFromError::BadRegex { at: 4, .. }), "{err}");
        assert_eq!(RoleFrom::parse(r"cn:(a{1000}){1000}").unwrap_err(), RoleFromError::RegexTooLarge);
        assert!(matches!(
            RoleFrom::parse(&format!("cn:{}", "a".repeat(2000))),
            Err(RoleFromError::RegexTooLong { .. })
        ));
    }
}
