//! The compiled table: the contract between `policyc` and `proxyd`.
//!
//! ```text
//! offset  size  field
//!      0     8  magic            b"PLCYTBL\0"
//!      8     4  format version   u32 little-endian (currently 2)
//!     12     8  body length      u64 little-endian
//!     20    32  SHA-256 of body
//!     52     …  body             postcard encoding of `Body`
//!  52+len    88  optional signature block:
//!                  0   8  magic    b"PLCYSIG\0"
//!                  8   8  serial   u64 little-endian, > 0
//!                 16   8  key id   first 8 bytes of SHA-256(raw public key)
//!                 24  64  Ed25519 signature (what it signs: [`crate::signature`])
//! ```
//!
//! Version 2 added the optional signature block after the body; nothing may
//! follow the body except exactly one such block. Its layout is part of the
//! format and lives here ([`SignatureBlock`]); keys, signing and verifying
//! are [`crate::signature`]'s, built on this module.
//!
//! A reader checks all four header fields before decoding a byte of the body,
//! bounds every length, re-validates every pattern and name (a table is input
//! from outside like any other), and only then builds the lookup form.
//! Encoding is deterministic: no timestamps, services sorted by name, entries
//! sorted, so the same policy gives byte-identical output.
//!
//! Format 2 (policy language v2) adds the source's language version, each
//! rule's `allowed_ports` and `internal_destinations`, and the `network`
//! section; a v1 policy encodes them as empty. Format 1 tables are refused
//! with a message naming both versions: recompile them.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use ipnet::IpNet;

use crate::decision::PolicyTable;
use crate::host;
use crate::pattern::{self, HostPattern};
use crate::policy::{
    Action, ActionSet, AddressSpec, InternalDestination, NetworkRules, Policy, PolicyVersion, PortRange, Rule,
};

/// The first 8 bytes of every table.
pub const MAGIC: [u8; 8] = *b"PLCYTBL\0";
/// The format version this build writes and the only one it reads (2: policy
/// language v2 in the body).
pub const FORMAT_VERSION: u32 = 2;
/// Bytes before the body: magic, version, body length, SHA-256.
pub const HEADER_LEN: usize = 52;
/// Upper bound on a body: 100,000 patterns take about 2 MiB.
pub const MAX_BODY_LEN: u64 = 256 * 1024 * 1024;
/// Largest valid table file: header, the largest body, a signature block.
pub const MAX_FILE_LEN: u64 = HEADER_LEN as u64 + MAX_BODY_LEN + BLOCK_LEN as u64;
/// Hex digits of the body digest used as the revision.
const REVISION_HEX_LEN: usize = 12;

/// First bytes of a signature block.
pub const BLOCK_MAGIC: [u8; 8] = *b"PLCYSIG\0";
/// Bytes in a key id.
pub const KEY_ID_LEN: usize = 8;
/// Bytes in an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes in a whole signature block.
pub const BLOCK_LEN: usize = BLOCK_MAGIC.len() + 8 + KEY_ID_LEN + SIGNATURE_LEN;

/// A short digest of a public key, stored in every signature it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The signature block of a table, as decoded (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureBlock {
    /// The release's serial: higher means newer (rollback protection).
    pub serial: u64,
    /// Which key signed (a short digest of its public key).
    pub key_id: KeyId,
    /// The Ed25519 signature over the domain-separated message.
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignatureBlock {
    /// The 88 bytes appended after the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOCK_LEN);
        out.extend_from_slice(&BLOCK_MAGIC);
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Reads what follows a table's body: nothing (unsigned), or exactly one
    /// block. Anything else is a typed error.
    pub fn decode_trailer(trailer: &[u8]) -> Result<Option<Self>, TableError> {
        if trailer.is_empty() {
            return Ok(None);
        }
        let have = trailer.len() as u64;
        match trailer.get(..BLOCK_MAGIC.len()) {
            Some(magic) if magic != BLOCK_MAGIC => {
                return Err(TableError::UnknownBlock { found: magic.to_vec() });
            }
            None if !BLOCK_MAGIC.starts_with(trailer) => return Err(TableError::TrailingBytes(have)),
            _ => {}
        }
        if trailer.len() < BLOCK_LEN {
            return Err(TableError::Truncated { what: "signature block", have, need: BLOCK_LEN as u64 });
        }
        if trailer.len() > BLOCK_LEN {
            return Err(TableError::TrailingBytes(have - BLOCK_LEN as u64));
        }
        let field = |range: std::ops::Range<usize>| trailer.get(range).unwrap_or_default();
        let serial = u64::from_le_bytes(field(8..16).try_into().map_err(|_| TableError::Corrupt("serial".into()))?);
        if serial == 0 {
            return Err(TableError::Invalid("the signature serial is 0; serials start at 1".into()));
        }
        let key_id = KeyId(field(16..24).try_into().map_err(|_| TableError::Corrupt("key id".into()))?);
        let signature = field(24..BLOCK_LEN).try_into().map_err(|_| TableError::Corrupt("signature".into()))?;
        Ok(Some(SignatureBlock { serial, key_id, signature }))
    }
}

/// Facts about how a table was made. No timestamps: compilation is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// File name (without directories) of the ACL source.
    pub source_name: String,
    /// SHA-256 of the ACL source bytes, hex.
    pub source_sha256: String,
    /// `policyc <version>` that compiled it.
    pub compiler: String,
    /// Actions that were disabled at compile time.
    pub disabled_actions: Vec<Action>,
}

impl Metadata {
    /// The metadata for compiling `source` (the ACL file's bytes, read from
    /// `source_path`) with this build of the compiler.
    pub fn for_source(source_path: &Path, source: &[u8], disabled: ActionSet) -> Self {
        Metadata {
            source_name: source_path
                .file_name()
                .map_or_else(|| source_path.display().to_string(), |n| n.to_string_lossy().into_owned()),
            source_sha256: hex::encode(Sha256::digest(source)),
            compiler: format!("policyc {}", env!("CARGO_PKG_VERSION")),
            disabled_actions: disabled.iter().collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    metadata: Metadata,
    services: Vec<RuleBody>,
    default: Option<RuleBody>,
    global_allow_list: Vec<String>,
    global_deny_list: Vec<String>,
    /// The language version of the source (decides how patterns re-parse).
    version: PolicyVersion,
    network: NetworkBody,
}

#[derive(Serialize, Deserialize)]
struct RuleBody {
    name: String,
    project: String,
    action: Action,
    allowed_domains: Vec<String>,
    allowed_ports: Vec<PortRange>,
    internal_destinations: Vec<InternalBody>,
}

#[derive(Serialize, Deserialize)]
struct InternalBody {
    host: String,
    cidrs: Vec<String>,
    ports: Vec<PortRange>,
    reason: String,
}

#[derive(Default, Serialize, Deserialize)]
struct NetworkBody {
    allow_ranges: Vec<String>,
    deny_ranges: Vec<String>,
    allow_addresses: Vec<String>,
    deny_addresses: Vec<String>,
}

/// Why a table was refused. Each variant names the problem precisely.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    /// An ACL YAML file given where a compiled table belongs; carries its path
    /// ([`read_file`]) or `<acl.yaml>` ([`decode`]).
    #[error("this is a YAML ACL, not a compiled table: run `policyc compile {0} -o policy.bin` and use the output")]
    LooksLikeYaml(String),
    /// The file ends before the header or the body it announces.
    #[error("truncated: {have} bytes, the {what} needs {need}")]
    Truncated {
        /// `header` or `body`.
        what: &'static str,
        /// Bytes in the file.
        have: u64,
        /// Bytes the part needs.
        need: u64,
    },
    /// The file does not start with [`MAGIC`]: not a table.
    #[error("not a compiled policy table (bad magic bytes {found:02x?})")]
    WrongMagic {
        /// The first (up to 8) bytes of the file.
        found: Vec<u8>,
    },
    /// A table written by a `policyc` with another format version.
    #[error(
        "unsupported table format version {found} (this build reads version {supported}); recompile with a matching policyc"
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// The body is larger than [`MAX_BODY_LEN`]; refused before it is read.
    #[error("body length {0} exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLarge(u64),
    /// Bytes after the body the header announces.
    #[error("{0} unexpected bytes after the body")]
    TrailingBytes(u64),
    /// Bytes after the body that are not a signature block (the only block
    /// that may follow).
    #[error("unknown block after the body (magic {found:02x?}; only a signature block may follow)")]
    UnknownBlock {
        /// The first bytes found where a block's magic should be.
        found: Vec<u8>,
    },
    /// The body's SHA-256 differs from the header's: the table was damaged
    /// or altered after compiling.
    #[error("checksum mismatch: the body is corrupt (header says {expected}, body hashes to {actual})")]
    ChecksumMismatch {
        /// The digest in the header, hex.
        expected: String,
        /// The digest of the body, hex.
        actual: String,
    },
    /// The checksum matches but the body does not decode (written by a buggy or hostile producer).
    #[error("body does not decode: {0}")]
    Corrupt(String),
    /// The body decodes but breaks a rule the compiler guarantees (an empty or
    /// duplicate service name, a non-canonical pattern, ...).
    #[error("invalid content: {0}")]
    Invalid(String),
    /// The table uses an action the operator disabled ([`CompiledTable::check_disabled`]).
    #[error("rule {rule} uses action `{action}`, which is disabled (--disable-acl-policy-action {action})")]
    DisabledAction {
        /// `default` or the service name in backticks.
        rule: String,
        /// The disabled action it uses.
        action: Action,
    },
}

/// The verified header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Always [`FORMAT_VERSION`] once verified.
    pub format_version: u32,
    /// Body length in bytes, at most [`MAX_BODY_LEN`].
    pub body_len: u64,
    /// SHA-256 of the body, checked against the body.
    pub body_sha256: [u8; 32],
}

/// A table that passed every check, ready to decide with.
#[derive(Debug)]
pub struct CompiledTable {
    /// The verified header.
    pub header: Header,
    /// How the table was made.
    pub metadata: Metadata,
    /// The policy, re-validated.
    pub policy: Policy,
    /// The policy in lookup form, ready for [`PolicyTable::decide`].
    pub table: PolicyTable,
    /// The signature block, if the table has one: decoded, not verified
    /// (see [`crate::signature::Keyring::verify`]).
    pub signature: Option<SignatureBlock>,
    revision: String,
}

impl CompiledTable {
    /// Short content hash of the body: what logs and metrics call the policy revision.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Refuses a table that uses an action the operator disabled.
    pub fn check_disabled(&self, disabled: ActionSet) -> Result<(), TableError> {
        match self.policy.rules_using(disabled).next() {
            Some(rule) => Err(TableError::DisabledAction {
                rule: if rule.name.is_empty() { "default".into() } else { format!("`{}`", rule.name) },
                action: rule.action,
            }),
            None => Ok(()),
        }
    }
}

/// Encodes a policy as a table. Deterministic.
pub fn encode(policy: &Policy, metadata: &Metadata) -> Vec<u8> {
    let mut services: Vec<RuleBody> = policy.services.iter().map(rule_body).collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let body = Body {
        metadata: metadata.clone(),
        services,
        default: policy.default.as_ref().map(rule_body),
        global_allow_list: sorted_patterns(&policy.global_allow_list),
        global_deny_list: sorted_patterns(&policy.global_deny_list),
        version: policy.version,
        network: NetworkBody {
            allow_ranges: sorted_strings(&policy.network.allow_ranges),
            deny_ranges: sorted_strings(&policy.network.deny_ranges),
            allow_addresses: sorted_strings(&policy.network.allow_addresses),
            deny_addresses: sorted_strings(&policy.network.deny_addresses),
        },
    };
    // Serialising owned strings, enums and vectors into a Vec cannot fail.
    let body = postcard::to_stdvec(&body).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    out
}

fn rule_body(rule: &Rule) -> RuleBody {
    RuleBody {
        name: rule.name.clone(),
        project: rule.project.clone(),
        action: rule.action,
        allowed_domains: sorted_patterns(&rule.allowed_domains),
        allowed_ports: sorted_ports(&rule.allowed_ports),
        internal_destinations: {
            let mut list: Vec<InternalBody> = rule
                .internal_destinations
                .iter()
                .map(|d| InternalBody {
                    host: d.host.to_string(),
                    cidrs: sorted_strings(&d.cidrs),
                    ports: sorted_ports(&d.ports),
                    reason: d.reason.clone(),
                })
                .collect();
            list.sort_by(|a, b| {
                (&a.host, &a.cidrs, &a.ports, &a.reason).cmp(&(&b.host, &b.cidrs, &b.ports, &b.reason))
            });
            list
        },
    }
}

fn sorted_patterns(patterns: &[HostPattern]) -> Vec<String> {
    sorted_strings(patterns)
}

fn sorted_strings<T: ToString>(items: &[T]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(ToString::to_string).collect();
    out.sort();
    out.dedup();
    out
}

fn sorted_ports(ports: &[PortRange]) -> Vec<PortRange> {
    let mut out = ports.to_vec();
    out.sort();
    out.dedup();
    out
}

/// Verifies and decodes a table.
///
/// ```rust
/// use egress_policy::{acl, host, policy::ActionSet, table::{self, Metadata, TableError}};
/// use egress_policy::decision::Verdict;
/// let source = "version: v1\nservices: []\ndefault:\n  project: other\n  action: enforce\n  allowed_domains:\n    - api.example.com\n";
/// let policy = acl::check_source("acl.yaml", source, ActionSet::default()).policy.expect("valid");
/// let metadata = Metadata {
///     source_name: "acl.yaml".into(),
///     source_sha256: String::new(),
///     compiler: "example".into(),
///     disabled_actions: Vec::new(),
/// };
/// let bytes = table::encode(&policy, &metadata);
/// assert_eq!(bytes[..8], table::MAGIC);
/// assert_eq!(table::encode(&policy, &metadata), bytes); // deterministic
/// let compiled = table::decode(&bytes)?;
/// assert_eq!(compiled.policy, policy);
/// assert_eq!(compiled.metadata, metadata);
/// assert_eq!(compiled.revision().len(), 12);
/// let decision = compiled.table.decide(None, &host::canonical("api.example.com")?);
/// assert_eq!(decision.verdict, Verdict::Allow);
/// // One flipped bit in the body: refused before anything is decoded.
/// let mut corrupted = bytes.clone();
/// let last = corrupted.len() - 1;
/// corrupted[last] ^= 1;
/// assert!(matches!(table::decode(&corrupted), Err(TableError::ChecksumMismatch { .. })));
/// // A cut-short file is refused too.
/// assert!(matches!(table::decode(&bytes[..40]), Err(TableError::Truncated { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode(bytes: &[u8]) -> Result<CompiledTable, TableError> {
    let header = read_header(bytes)?;
    // read_header checked that the body fits; what follows it is the trailer.
    let body_end = usize::try_from(header.body_len).map_or(bytes.len(), |len| HEADER_LEN.saturating_add(len));
    let body = bytes.get(HEADER_LEN..body_end).unwrap_or_default();
    let trailer = bytes.get(body_end..).unwrap_or_default();
    let actual: [u8; 32] = Sha256::digest(body).into();
    if actual != header.body_sha256 {
        return Err(TableError::ChecksumMismatch {
            expected: hex::encode(header.body_sha256),
            actual: hex::encode(actual),
        });
    }
    // postcard reads lengths as varints and never allocates past the input.
    let (decoded, rest): (Body, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| TableError::Corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TableError::Corrupt(format!("{} bytes left after the body", rest.len())));
    }
    let policy = validate(&decoded)?;
    let signature = SignatureBlock::decode_trailer(trailer)?;
    let revision = hex::encode(header.body_sha256).get(..REVISION_HEX_LEN).unwrap_or_default().to_owned();
    Ok(CompiledTable {
        table: PolicyTable::new(&policy),
        header,
        metadata: decoded.metadata,
        policy,
        signature,
        revision,
    })
}

fn read_header(bytes: &[u8]) -> Result<Header, TableError> {
    let have = bytes.len() as u64;
    let magic = bytes.get(..MAGIC.len());
    if magic != Some(&MAGIC[..]) {
        if looks_like_yaml(bytes) {
            return Err(TableError::LooksLikeYaml("<acl.yaml>".into()));
        }
        return match magic {
            None if MAGIC.starts_with(bytes) => {
                Err(TableError::Truncated { what: "header", have, need: HEADER_LEN as u64 })
            }
            _ => Err(TableError::WrongMagic { found: bytes.iter().take(MAGIC.len()).copied().collect() }),
        };
    }
    let field = |range: std::ops::Range<usize>| {
        bytes.get(range).ok_or(TableError::Truncated { what: "header", have, need: HEADER_LEN as u64 })
    };
    let version = u32::from_le_bytes(field(8..12)?.try_into().map_err(|_| TableError::Corrupt("header".into()))?);
    if version != FORMAT_VERSION {
        return Err(TableError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    let body_len = u64::from_le_bytes(field(12..20)?.try_into().map_err(|_| TableError::Corrupt("header".into()))?);
    let body_sha256: [u8; 32] = field(20..52)?.try_into().map_err(|_| TableError::Corrupt("header".into()))?;
    if body_len > MAX_BODY_LEN {
        return Err(TableError::TooLarge(body_len));
    }
    let need = HEADER_LEN as u64 + body_len;
    if have < need {
        return Err(TableError::Truncated { what: "body", have, need });
    }
    // Anything after the body is the trailer, checked by `decode`.
    Ok(Header { format_version: version, body_len, body_sha256 })
}

fn looks_like_yaml(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(bytes.get(..bytes.len().min(4096)).unwrap_or_default()).into_owned();
    head.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && *l != "---")
        .take(5)
        .any(|l| l.starts_with("version:") || l.starts_with("services:") || l.starts_with("default:"))
}

/// A table is input from outside: re-check what the compiler guaranteed.
fn validate(body: &Body) -> Result<Policy, TableError> {
    let mut seen = std::collections::HashSet::new();
    let mut services = Vec::with_capacity(body.services.len());
    for rule in &body.services {
        if rule.name.is_empty() {
            return Err(TableError::Invalid("a service rule has an empty name".into()));
        }
        if !seen.insert(rule.name.as_str()) {
            return Err(TableError::Invalid(format!("service {:?} appears twice", rule.name)));
        }
        services.push(validate_rule(rule, body.version)?);
    }
    let default = body.default.as_ref().map(|r| validate_rule(r, body.version)).transpose()?;
    if default.as_ref().is_some_and(|d| !d.name.is_empty()) {
        return Err(TableError::Invalid("the default rule has a name".into()));
    }
    if default.as_ref().is_some_and(|d| !d.internal_destinations.is_empty()) {
        return Err(TableError::Invalid("the default rule has internal destinations".into()));
    }
    let network = validate_network(&body.network)?;
    if body.version == PolicyVersion::V1 && !network.is_empty() {
        return Err(TableError::Invalid("a v1 policy has a network section".into()));
    }
    Ok(Policy {
        services,
        default,
        global_allow_list: validate_patterns(&body.global_allow_list, "global_allow_list", body.version)?,
        global_deny_list: validate_patterns(&body.global_deny_list, "global_deny_list", body.version)?,
        version: body.version,
        network,
    })
}

fn validate_rule(rule: &RuleBody, version: PolicyVersion) -> Result<Rule, TableError> {
    let invalid = |what: String| TableError::Invalid(format!("rule {:?}: {what}", rule.name));
    if version == PolicyVersion::V1 && (!rule.allowed_ports.is_empty() || !rule.internal_destinations.is_empty()) {
        return Err(invalid("a v1 rule has ports or internal destinations".into()));
    }
    validate_ports(&rule.allowed_ports).map_err(invalid)?;
    let mut internal_destinations = Vec::with_capacity(rule.internal_destinations.len());
    for d in &rule.internal_destinations {
        let host = match host::canonicalize(&d.host) {
            Ok(c) if !c.rewritten && !c.had_trailing_dot => c.host,
            _ => return Err(invalid(format!("internal destination host {:?} is not canonical", d.host))),
        };
        if d.cidrs.is_empty() || d.ports.is_empty() || d.reason.trim().is_empty() {
            return Err(invalid(format!("internal destination {:?} lacks cidrs, ports or reason", d.host)));
        }
        validate_ports(&d.ports).map_err(invalid)?;
        internal_destinations.push(InternalDestination {
            host,
            cidrs: validate_cidrs(&d.cidrs).map_err(invalid)?,
            ports: d.ports.clone(),
            reason: d.reason.clone(),
        });
    }
    Ok(Rule {
        name: rule.name.clone(),
        project: rule.project.clone(),
        action: rule.action,
        allowed_domains: validate_patterns(&rule.allowed_domains, &rule.name, version)?,
        allowed_ports: rule.allowed_ports.clone(),
        internal_destinations,
    })
}

fn validate_ports(ports: &[PortRange]) -> Result<(), String> {
    match ports.iter().find(|r| r.start == 0 || r.start > r.end) {
        Some(bad) => Err(format!("invalid port range {}-{}", bad.start, bad.end)),
        None => Ok(()),
    }
}

fn validate_cidrs(cidrs: &[String]) -> Result<Vec<IpNet>, String> {
    cidrs
        .iter()
        .map(|text| match text.parse::<IpNet>() {
            Ok(net)
                if net.trunc() == net
                    && net.to_string() == *text
                    && !matches!(net, IpNet::V6(v6) if v6.network().to_ipv4_mapped().is_some()) =>
            {
                Ok(net)
            }
            _ => Err(format!("CIDR {text:?} is not canonical")),
        })
        .collect()
}

fn validate_addresses(specs: &[String]) -> Result<Vec<AddressSpec>, String> {
    specs
        .iter()
        .map(|text| match text.parse::<AddressSpec>() {
            Ok(spec) if spec.to_string() == *text => Ok(spec),
            _ => Err(format!("address {text:?} is not canonical")),
        })
        .collect()
}

fn validate_network(body: &NetworkBody) -> Result<NetworkRules, TableError> {
    let invalid = |what: String| TableError::Invalid(format!("network: {what}"));
    Ok(NetworkRules {
        allow_ranges: validate_cidrs(&body.allow_ranges).map_err(invalid)?,
        deny_ranges: validate_cidrs(&body.deny_ranges).map_err(invalid)?,
        allow_addresses: validate_addresses(&body.allow_addresses).map_err(invalid)?,
        deny_addresses: validate_addresses(&body.deny_addresses).map_err(invalid)?,
    })
}

fn validate_patterns(patterns: &[String], list: &str, version: PolicyVersion) -> Result<Vec<HostPattern>, TableError> {
    let parse = match version {
        PolicyVersion::V1 => pattern::parse,
        PolicyVersion::V2 => pattern::parse_v2,
    };
    patterns
        .iter()
        .map(|text| match parse(text) {
            Ok(parsed) if !parsed.had_trailing_dot && parsed.pattern.to_string() == *text => Ok(parsed.pattern),
            Ok(_) => Err(TableError::Invalid(format!("pattern {text:?} in {list} is not canonical"))),
            Err(e) => Err(TableError::Invalid(format!("pattern in {list}: {e}"))),
        })
        .collect()
}

/// Reads and verifies a table file, refusing files over the size limit
/// before reading them whole.
pub fn read_file(path: &Path) -> Result<CompiledTable, TableError> {
    decode(&read_bytes(path)?).map_err(|e| match e {
        TableError::LooksLikeYaml(_) => TableError::LooksLikeYaml(path.display().to_string()),
        other => other,
    })
}

/// Reads a table file whole, but never more than a valid table can be: a
/// larger file is refused without being read into memory.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, TableError> {
    let limit = MAX_FILE_LEN;
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(TableError::TooLarge(bytes.len() as u64 - HEADER_LEN as u64));
    }
    Ok(bytes)
}

/// Writes `bytes` so that a reader sees the old file or the new one, never
/// half of one: temp file in the same directory, fsync, rename, fsync the dir.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use crate::acl;
    use crate::host;

    const SRC: &str = "version: v1\nservices:\n  - name: b\n    project: pb\n    action: enforce\n    allowed_domains: [z.com, \"*.a.com\"]\n  - name: a\n    action: report\ndefault:\n  project: other\n  action: enforce\nglobal_deny_list: [bad.com]\n";

    fn table_bytes() -> Vec<u8> {
        let policy = acl::check_source("p.yaml", SRC, ActionSet::default()).policy.unwrap();
        encode(&policy, &Metadata::for_source(Path::new("dir/p.yaml"), SRC.as_bytes(), ActionSet::default()))
    }

    #[test]
    fn round_trip_decides_the_same() {
        let bytes = table_bytes();
        let loaded = decode(&bytes).unwrap();
        assert_eq!(loaded.metadata.source_name, "p.yaml");
        assert_eq!(loaded.revision().len(), 12);
        let d = loaded.table.decide(Some("b"), &host::canonical("x.a.com").unwrap());
        assert_eq!(d.reason.as_str(), "host matched allowed domain in rule");
        assert_eq!(d.project, "pb");
        let d = loaded.table.decide(Some("a"), &host::canonical("bad.com").unwrap());
        assert_eq!(d.reason.as_str(), "host matched rule in global deny list");
    }

    #[test]
    fn encoding_is_deterministic_and_order_independent() {
        assert_eq!(table_bytes(), table_bytes());
        let reordered = "version: v1\nservices:\n  - name: a\n    action: report\n  - name: b\n    project: pb\n    action: enforce\n    allowed_domains: [\"*.a.com\", z.com]\ndefault:\n  project: other\n  action: enforce\nglobal_deny_list: [bad.com]\n";
        let policy = acl::check_source("p.yaml", reordered, ActionSet::default()).policy.unwrap();
        let meta = Metadata::for_source(Path::new("p.yaml"), SRC.as_bytes(), ActionSet::default());
        assert_eq!(encode(&policy, &meta), table_bytes());
    }

    #[test]
    fn every_corruption_is_a_typed_error() {
        let bytes = table_bytes();
        for len in [0, 4, 8, 30, HEADER_LEN, bytes.len() - 1] {
            let err = decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, TableError::Truncated { .. } | TableError::WrongMagic { .. }), "{len}: {err}");
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            assert!(decode(&flipped).is_err(), "bit flip at byte {i} was accepted");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[8] = 1;
        let err = decode(&wrong_version).unwrap_err();
        assert!(matches!(err, TableError::UnsupportedVersion { found: 1, supported: 2 }), "{err}");
        let message = err.to_string();
        assert!(message.contains("version 1") && message.contains("version 2"), "{message}");
        wrong_version[8] = 3;
        assert!(matches!(decode(&wrong_version), Err(TableError::UnsupportedVersion { found: 3, supported: 2 })));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode(&extra), Err(TableError::TrailingBytes(1))));
        let mut huge = bytes.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(TableError::TooLarge(_))));
        assert!(matches!(decode(SRC.as_bytes()), Err(TableError::LooksLikeYaml(_))));
        assert!(matches!(decode(b"GIF89a....."), Err(TableError::WrongMagic { .. })));
    }

    #[test]
    fn a_forged_body_is_revalidated() {
        let forged = Body {
            metadata: Metadata::for_source(Path::new("x"), b"", ActionSet::default()),
            services: vec![RuleBody {
                name: "a".into(),
                project: String::new(),
                action: Action::Enforce,
                allowed_domains: vec!["EXAMPLE.com".into()],
                allowed_ports: vec![],
                internal_destinations: vec![],
            }],
            default: None,
            global_allow_list: vec![],
            global_deny_list: vec![],
            version: PolicyVersion::V1,
            network: NetworkBody::default(),
        };
        let body = postcard::to_stdvec(&forged).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(&body));
        bytes.extend_from_slice(&body);
        assert!(matches!(decode(&bytes), Err(TableError::Invalid(_))));
    }

    #[test]
    fn disabled_actions_are_refused_at_load() {
        let loaded = decode(&table_bytes()).unwrap();
        assert!(loaded.check_disabled([Action::Open].into_iter().collect()).is_ok());
        let err = loaded.check_disabled([Action::Report].into_iter().collect()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rule `a` uses action `report`, which is disabled (--disable-acl-policy-action report)"
        );
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.bin");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }
}
