//! The ACL checker: Smokescreen's v1 YAML format, read strictly, and its
//! superset `version: v2` (`allowed_ports`, `internal_destinations`, middle
//! wildcards, the `network` section).
//!
//! It turns a YAML node tree into a validated [`Policy`] and reports every
//! problem in one pass: everything Smokescreen rejects is an error, and the
//! mistakes Smokescreen accepts silently (typoed keys, duplicate keys, shadowed
//! entries, ...) are errors or warnings with a stable code. This is the only
//! place that reports user errors about ACL files; the types it produces are
//! valid by construction.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::address;
use crate::diagnostic::{Code, Diagnostic, Position};
use crate::host;
use crate::pattern::{self, HostPattern, PatternError};
use crate::policy::{
    Action, ActionSet, AddressSpec, InternalDestination, NetworkRules, Policy, PolicyVersion, PortRange, Rule,
};
use crate::yaml::{self, Node, Value};

const TOP_KEYS: &[&str] = &["version", "services", "default", "global_allow_list", "global_deny_list"];
const RULE_KEYS: &[&str] =
    &["name", "project", "action", "allowed_domains", "allowed_external_proxies", "mitm_domains"];
/// Keys that only a `version: v2` file has.
const V2_TOP_KEYS: &[&str] = &["version", "services", "default", "global_allow_list", "global_deny_list", "network"];
const V2_RULE_KEYS: &[&str] = &[
    "name",
    "project",
    "action",
    "allowed_domains",
    "allowed_ports",
    "internal_destinations",
    "allowed_external_proxies",
    "mitm_domains",
];
/// Keys that exist only in v2 (a v1 file using one gets a hint to upgrade).
const V2_ONLY_KEYS: &[&str] = &["allowed_ports", "internal_destinations", "network"];
const INTERNAL_KEYS: &[&str] = &["host", "cidrs", "ports", "reason"];
const NETWORK_KEYS: &[&str] = &["deny_ranges", "allow_ranges", "deny_addresses", "allow_addresses"];
/// Widest exception CIDR without a warning.
const WIDEST_V4_EXCEPTION: u8 = 16;
const WIDEST_V6_EXCEPTION: u8 = 48;
const MITM_KEYS: &[&str] = &["domain", "add_headers", "detailed_http_logs", "detailed_http_logs_full_headers"];

/// The result of checking one file: the policy if there were no errors, and
/// every diagnostic (errors and warnings) in file order.
#[derive(Debug)]
pub struct Checked {
    /// The validated policy; `None` when any diagnostic is an error.
    pub policy: Option<Policy>,
    /// Errors and warnings, sorted by file, line and column.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// Number of errors (`P0xx`).
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// Number of warnings (`P1xx`).
    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

/// Checks an ACL given as text. `file` is only used in diagnostics.
///
/// ```rust
/// use egress_policy::{acl, diagnostic::Code, policy::{Action, ActionSet}};
/// let ok = acl::check_source("acl.yaml", "\
/// version: v1
/// services:
///   - name: billing
///     project: payments
///     action: enforce
///     allowed_domains:
///       - api.example.com
/// default:
///   project: other
///   action: report
/// ", ActionSet::default());
/// assert_eq!(ok.error_count(), 0);
/// let policy = ok.policy.expect("no errors, so a policy");
/// assert_eq!(policy.services[0].name, "billing");
/// assert_eq!(policy.services[0].action, Action::Enforce);
/// assert_eq!(policy.default.map(|rule| rule.action), Some(Action::Report));
/// // A non-canonical entry is an error at its line and column, with the fix
/// // (and, as there is no `default` rule, warning P101 at 1:1).
/// let bad = acl::check_source("acl.yaml", "\
/// version: v1
/// services:
///   - name: billing
///     project: payments
///     action: enforce
///     allowed_domains:
///       - API.Example.com
/// ", ActionSet::default());
/// assert!(bad.policy.is_none());
/// assert_eq!(bad.error_count(), 1);
/// let error = bad.diagnostics.iter().find(|d| d.is_error()).expect("one error");
/// assert_eq!((error.code, error.code.as_str()), (Code::NonCanonicalPattern, "P011"));
/// assert_eq!((error.line, error.column), (7, 9));
/// assert_eq!(error.help.as_deref(), Some("use \"api.example.com\""));
/// ```
pub fn check_source(file: &str, source: &str, disabled: ActionSet) -> Checked {
    let mut checker = Checker { file, disabled, diagnostics: Vec::new(), version: PolicyVersion::V1 };
    let policy = match yaml::parse(source) {
        Ok(root) => checker.document(&root),
        Err(e) => {
            checker.report(Code::YamlSyntax, e.at, e.message, None);
            None
        }
    };
    let mut diagnostics = checker.diagnostics;
    crate::diagnostic::sort(&mut diagnostics);
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    Checked { policy: if has_errors { None } else { policy }, diagnostics }
}

/// Checks an ACL given as bytes (a file's content): non-UTF-8 is a P001.
pub fn check_bytes(file: &str, bytes: &[u8], disabled: ActionSet) -> Checked {
    match std::str::from_utf8(bytes) {
        Ok(source) => check_source(file, source, disabled),
        Err(e) => {
            let at = line_col_of_offset(bytes, e.valid_up_to());
            Checked {
                policy: None,
                diagnostics: vec![
                    Diagnostic::new(Code::YamlSyntax, file, at, "file is not valid UTF-8")
                        .with_help("save the file as UTF-8"),
                ],
            }
        }
    }
}

fn line_col_of_offset(bytes: &[u8], offset: usize) -> Position {
    let before = bytes.get(..offset).unwrap_or(bytes);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    Position { line: line as u64, column: column as u64 }
}

struct Checker<'a> {
    file: &'a str,
    disabled: ActionSet,
    diagnostics: Vec<Diagnostic>,
    /// The file's `version` (v1 until it says `v2`).
    version: PolicyVersion,
}

/// A pattern with where it was written.
struct Entry {
    pattern: HostPattern,
    at: Position,
}

impl Checker<'_> {
    fn report(&mut self, code: Code, at: Position, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::new(code, self.file, at, message);
        d.help = help;
        self.diagnostics.push(d);
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.report(
            Code::WrongType,
            node.at,
            format!("`{what}` must be {expected}, found {}", node.value.kind()),
            None,
        );
    }

    fn document(&mut self, root: &Node) -> Option<Policy> {
        let entries = match &root.value {
            Value::Map(entries) => entries,
            Value::Null => {
                self.report(
                    Code::MissingKey,
                    root.at,
                    "the file is empty: an ACL needs `version` and `services`",
                    Some("start with `version: v1` and `services: []`".into()),
                );
                return None;
            }
            _ => {
                self.wrong_type(root, "the document", "a mapping with `version` and `services`");
                return None;
            }
        };
        // The version decides which keys exist, so it is read first (the last
        // one if duplicated, as `keys` does).
        let version_node = entries.iter().rev().find(|(k, _)| k.value == Value::String("version".into()));
        if version_node.and_then(|(_, v)| v.scalar_text()).as_deref() == Some("v2") {
            self.version = PolicyVersion::V2;
        }
        let top_keys = if self.version == PolicyVersion::V2 { V2_TOP_KEYS } else { TOP_KEYS };
        let keys = self.keys(entries, top_keys, "the top level", |key| {
            (RULE_KEYS.contains(&key) || V2_RULE_KEYS.contains(&key))
                .then(|| format!("`{key}` belongs inside a rule under `services` or `default`"))
        });

        match keys.get("version") {
            None => {
                self.report(Code::MissingKey, root.at, "missing `version`", Some("add `version: v1` at the top".into()))
            }
            Some((_, node)) => {
                let text = node.scalar_text();
                if text.as_deref() != Some("v1") && text.as_deref() != Some("v2") {
                    let found = text.unwrap_or_else(|| node.value.kind().to_owned());
                    self.report(
                        Code::UnsupportedVersion,
                        node.at,
                        format!("expected version \"v1\" or \"v2\", found {found:?}"),
                        Some("write `version: v1` (Smokescreen's ACL format) or `version: v2` (v1 plus ports, internal destinations, middle wildcards and `network`)".into()),
                    );
                }
            }
        }

        let mut services = Vec::new();
        match keys.get("services") {
            None | Some((_, Node { value: Value::Null, .. })) => {
                let at = keys.get("services").map_or(root.at, |(k, _)| k.at);
                self.report(
                    Code::MissingKey,
                    at,
                    "top level list `services` is missing",
                    Some("add `services: []` if every role should use the default rule".into()),
                );
            }
            Some((_, node)) => match &node.value {
                Value::Seq(items) => {
                    let mut seen: HashMap<String, Position> = HashMap::new();
                    for item in items {
                        let rule = self.rule(item, false);
                        // Duplicates are found by name even when a rule has other errors.
                        if let Some((name, name_at)) = service_name(item) {
                            if let Some(first) = seen.get(&name) {
                                self.report(
                                    Code::DuplicateService,
                                    name_at,
                                    format!("service `{name}` is defined twice (first at line {})", first.line),
                                    Some("merge the two rules: role names must be unique".into()),
                                );
                                continue;
                            }
                            seen.insert(name, name_at);
                        }
                        services.extend(rule);
                    }
                }
                _ => self.wrong_type(node, "services", "a list of rules"),
            },
        }

        let default = match keys.get("default") {
            None => {
                self.report(
                    Code::NoDefaultRule,
                    root.at,
                    "no `default` rule: every role without its own rule is denied",
                    Some("add a `default:` rule (for example `action: enforce`) to make that explicit".into()),
                );
                None
            }
            Some((_, node)) => match &node.value {
                Value::Null => {
                    self.report(
                        Code::NoDefaultRule,
                        node.at,
                        "`default` is empty: every role without its own rule is denied",
                        Some("give the default rule an `action`, or remove the key".into()),
                    );
                    None
                }
                Value::Map(_) => self.rule(node, true),
                _ => {
                    self.wrong_type(node, "default", "a rule (a mapping with `action`)");
                    None
                }
            },
        };

        let global_allow = self.pattern_list(keys.get("global_allow_list").map(|(_, n)| *n), "global_allow_list");
        let global_deny = self.pattern_list(keys.get("global_deny_list").map(|(_, n)| *n), "global_deny_list");
        self.lint_global_lists(&global_allow, &global_deny);
        let network = match keys.get("network") {
            Some((_, node)) => self.network(node),
            None => NetworkRules::default(),
        };

        Some(Policy {
            services,
            default,
            global_allow_list: global_allow.into_iter().map(|e| e.pattern).collect(),
            global_deny_list: global_deny.into_iter().map(|e| e.pattern).collect(),
            version: self.version,
            network,
        })
    }

    /// Reads a mapping's keys, reporting unknown and duplicate ones. Later
    /// duplicates win, as in Smokescreen; the duplicate itself is an error.
    fn keys<'n>(
        &mut self,
        entries: &'n [(Node, Node)],
        known: &[&str],
        context: &str,
        misplaced: impl Fn(&str) -> Option<String>,
    ) -> HashMap<&'n str, (&'n Node, &'n Node)> {
        let mut keys: HashMap<&str, (&Node, &Node)> = HashMap::new();
        for (key, value) in entries {
            let Value::String(name) = &key.value else {
                let shown = key.scalar_text().unwrap_or_else(|| key.value.kind().to_owned());
                self.report(
                    Code::UnknownKey,
                    key.at,
                    format!("unknown key `{shown}` in {context}"),
                    Some(format!("expected one of: {}", known.join(", "))),
                );
                continue;
            };
            if !known.contains(&name.as_str()) {
                if self.version == PolicyVersion::V1
                    && let Some(v2_only) = V2_ONLY_KEYS.iter().find(|k| **k == name.as_str())
                {
                    self.report(
                        Code::RequiresV2,
                        key.at,
                        format!("`{v2_only}` needs `version: v2` (this file says `version: v1`)"),
                        Some("change the first line to `version: v2`: v2 accepts every v1 file unchanged".into()),
                    );
                    continue;
                }
                let help = misplaced(name)
                    .or_else(|| suggest(name, known).map(|s| format!("did you mean `{s}`?")))
                    .or_else(|| Some(format!("expected one of: {}", known.join(", "))));
                self.report(Code::UnknownKey, key.at, format!("unknown key `{name}` in {context}"), help);
                continue;
            }
            if let Some((first, _)) = keys.get(name.as_str()) {
                self.report(
                    Code::DuplicateKey,
                    key.at,
                    format!("duplicate key `{name}` (first at line {})", first.at.line),
                    Some("keep one of them: YAML readers disagree on which one wins".into()),
                );
            }
            keys.insert(name, (key, value));
        }
        keys
    }

    /// A rule (a service entry, or `default`), if it has no errors.
    fn rule(&mut self, node: &Node, is_default: bool) -> Option<Rule> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, "services[]", "a rule (a mapping with `name` and `action`)");
            return None;
        };
        let context = if is_default { "the default rule" } else { "a service rule" };
        let rule_keys = if self.version == PolicyVersion::V2 { V2_RULE_KEYS } else { RULE_KEYS };
        let keys = self.keys(entries, rule_keys, context, |key| {
            (TOP_KEYS.contains(&key) || key == "network")
                .then(|| format!("`{key}` is a top-level key; move it out of the rule"))
        });
        let mut ok = true;

        let name = match keys.get("name") {
            Some((key, value)) if is_default => {
                self.report(
                    Code::IgnoredKey,
                    key.at,
                    "`name` is ignored in the default rule",
                    Some("remove it: the default rule applies to every role without a rule of its own".into()),
                );
                let _ = value;
                String::new()
            }
            None if is_default => String::new(),
            None => {
                self.report(
                    Code::MissingKey,
                    node.at,
                    "service rule has no `name`",
                    Some(
                        "add `name: <role>`: the role is the client certificate's CN or the proxy-password role".into(),
                    ),
                );
                ok = false;
                String::new()
            }
            Some((_, value)) => match value.scalar_text() {
                Some(name) if name.trim().is_empty() => {
                    self.report(
                        Code::EmptyName,
                        value.at,
                        "service `name` is empty",
                        Some("give the rule a role name; clients without a role use the default rule".into()),
                    );
                    ok = false;
                    name
                }
                Some(name) => name,
                None if value.value == Value::Null => {
                    self.report(Code::EmptyName, value.at, "service `name` is empty", None);
                    ok = false;
                    String::new()
                }
                None => {
                    self.wrong_type(value, "name", "a string");
                    ok = false;
                    String::new()
                }
            },
        };

        let project = match keys.get("project") {
            None => String::new(),
            Some((_, value)) => match (&value.value, value.scalar_text()) {
                (Value::Null, _) => String::new(),
                (_, Some(text)) => text,
                (_, None) => {
                    self.wrong_type(value, "project", "a string");
                    String::new()
                }
            },
        };

        let action = match keys.get("action") {
            None => {
                self.report(
                    Code::MissingKey,
                    node.at,
                    format!("{} has no `action`", if is_default { "the default rule" } else { "service rule" }),
                    Some("add `action: enforce` (or `report`, `open`)".into()),
                );
                None
            }
            Some((_, value)) => {
                let text = value.scalar_text().unwrap_or_default();
                match text.parse::<Action>() {
                    Ok(action) => {
                        if self.disabled.contains(action) {
                            let who = if is_default { "the default rule".to_owned() } else { format!("rule `{name}`") };
                            self.report(
                                Code::DisabledAction,
                                value.at,
                                format!("{who} uses action `{action}`, which is disabled (--disable-acl-policy-action {action})"),
                                Some(format!("use an action other than {}", self.disabled)),
                            );
                        }
                        Some(action)
                    }
                    Err(_) => {
                        let help = Action::ALL
                            .iter()
                            .find(|a| a.as_str().eq_ignore_ascii_case(text.trim()))
                            .map(|a| format!("actions are lower-case: use `{a}`"))
                            .or_else(|| {
                                suggest(&text, &["open", "report", "enforce"]).map(|s| format!("did you mean `{s}`?"))
                            })
                            .unwrap_or_else(|| "use one of: open, report, enforce".to_owned());
                        self.report(Code::UnknownAction, value.at, format!("unknown action {text:?}"), Some(help));
                        None
                    }
                }
            }
        };

        let allowed_node = keys.get("allowed_domains").map(|(_, n)| *n);
        let allowed = self.pattern_list(allowed_node, "allowed_domains");
        if action == Some(Action::Open)
            && !allowed.is_empty()
            && let Some((key, _)) = keys.get("allowed_domains")
        {
            self.report(
                Code::AllowedDomainsOnOpenRule,
                key.at,
                "`allowed_domains` on an `open` rule only matters against the global deny list",
                Some("remove the list, or use `enforce`/`report` if it is meant to restrict".into()),
            );
        }

        for ignored in ["allowed_external_proxies", "mitm_domains"] {
            if let Some((key, _)) = keys.get(ignored) {
                self.report(
                    Code::IgnoredKey,
                    key.at,
                    format!("`{ignored}` has no effect: this proxy only tunnels CONNECT and never uses upstream proxies or MITM"),
                    Some("remove it once no Smokescreen instance reads this file".into()),
                );
            }
        }
        self.pattern_list(keys.get("allowed_external_proxies").map(|(_, n)| *n), "allowed_external_proxies");
        if let Some((_, node)) = keys.get("mitm_domains") {
            self.mitm_domains(node, allowed_node);
        }

        let allowed_ports = match keys.get("allowed_ports") {
            Some((_, node)) => match self.ports(node, "allowed_ports") {
                Some(ports) => ports,
                None => {
                    ok = false;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let internal_destinations = match keys.get("internal_destinations") {
            Some((key, _)) if is_default => {
                self.report(
                    Code::UnknownKey,
                    key.at,
                    "`internal_destinations` is not allowed in the default rule",
                    Some("an exception is for one named service: move it into that service's rule".into()),
                );
                ok = false;
                Vec::new()
            }
            Some((_, node)) => match self.internal_destinations(node) {
                Some(mut list) => {
                    InternalDestination::canonical_order(&mut list);
                    list
                }
                None => {
                    ok = false;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };

        let action = action?;
        ok.then(|| Rule {
            name,
            project,
            action,
            allowed_domains: allowed.into_iter().map(|e| e.pattern).collect(),
            allowed_ports,
            internal_destinations,
        })
    }

    fn mitm_domains(&mut self, node: &Node, allowed: Option<&Node>) {
        let allowed_texts: Vec<String> = match allowed.map(|n| &n.value) {
            Some(Value::Seq(items)) => items.iter().filter_map(Node::scalar_text).collect(),
            _ => Vec::new(),
        };
        let items = match &node.value {
            Value::Null => return,
            Value::Seq(items) => items,
            _ => return self.wrong_type(node, "mitm_domains", "a list"),
        };
        for item in items {
            let Value::Map(entries) = &item.value else {
                self.wrong_type(item, "mitm_domains[]", "a mapping with `domain`");
                continue;
            };
            let keys = self.keys(entries, MITM_KEYS, "a mitm_domains entry", |_| None);
            match keys.get("domain") {
                None => self.report(Code::MissingKey, item.at, "mitm_domains entry has no `domain`", None),
                Some((_, domain)) => {
                    let Some(text) = domain.scalar_text() else {
                        self.wrong_type(domain, "domain", "a host pattern");
                        continue;
                    };
                    if self.pattern(domain, &text, "mitm_domains").is_some() && !allowed_texts.contains(&text) {
                        self.report(
                            Code::MitmDomainNotAllowed,
                            domain.at,
                            format!("mitm domain {text:?} is not in the rule's `allowed_domains`"),
                            Some("Smokescreen requires the exact same entry in `allowed_domains`".into()),
                        );
                    }
                }
            }
        }
    }

    /// A list of ports and `"LO-HI"` ranges. `None` if any entry is bad;
    /// an empty or null list is an error too (it would deny every port).
    fn ports(&mut self, node: &Node, what: &str) -> Option<Vec<PortRange>> {
        let items = match &node.value {
            Value::Seq(items) if !items.is_empty() => items,
            Value::Seq(_) | Value::Null => {
                self.report(
                    Code::MissingKey,
                    node.at,
                    format!("`{what}` is empty: no port could be reached"),
                    Some("list the ports (`[443]`, `[\"8000-8999\"]`), or remove the key to allow every port".into()),
                );
                return None;
            }
            _ => {
                self.wrong_type(node, what, "a list of ports and \"LO-HI\" ranges");
                return None;
            }
        };
        let mut ports = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.port_entry(item, what) {
                Some(range) => ports.push(range),
                None => ok = false,
            }
        }
        ports.sort();
        ports.dedup();
        ok.then_some(ports)
    }

    fn port_entry(&mut self, item: &Node, what: &str) -> Option<PortRange> {
        let bad = |checker: &mut Self, text: &str| {
            checker.report(
                Code::InvalidPort,
                item.at,
                format!("invalid port {text:?} in `{what}`: ports are 1 to 65535"),
                Some("write a port (`443`) or an inclusive range (`\"8000-8999\"`)".into()),
            );
            None
        };
        let text = match &item.value {
            Value::Int(_) | Value::String(_) => item.scalar_text().unwrap_or_default(),
            _ => {
                self.wrong_type(item, &format!("{what}[]"), "a port number or a \"LO-HI\" range");
                return None;
            }
        };
        let (lo_text, hi_text) = match text.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (text.trim(), text.trim()),
        };
        let (Some(lo), Some(hi)) = (parse_port_number(lo_text), parse_port_number(hi_text)) else {
            return bad(self, &text);
        };
        if lo > hi {
            self.report(
                Code::ReversedPortRange,
                item.at,
                format!("port range {text:?} in `{what}` is reversed: it contains no port"),
                Some(format!("write \"{hi}-{lo}\"")),
            );
            return None;
        }
        Some(PortRange { start: lo, end: hi })
    }

    /// `internal_destinations`: a list of `{host, cidrs, ports, reason}`.
    fn internal_destinations(&mut self, node: &Node) -> Option<Vec<InternalDestination>> {
        let items = match &node.value {
            Value::Null => return Some(Vec::new()),
            Value::Seq(items) => items,
            _ => {
                self.wrong_type(node, "internal_destinations", "a list of {host, cidrs, ports, reason}");
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.internal_destination(item) {
                Some(d) => out.push(d),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn internal_destination(&mut self, item: &Node) -> Option<InternalDestination> {
        let Value::Map(entries) = &item.value else {
            self.wrong_type(item, "internal_destinations[]", "a mapping with host, cidrs, ports and reason");
            return None;
        };
        let keys = self.keys(entries, INTERNAL_KEYS, "an internal_destinations entry", |_| None);
        let mut ok = true;

        let host = match keys.get("host") {
            None => {
                self.report(
                    Code::MissingKey,
                    item.at,
                    "internal destination has no `host`",
                    Some("add `host: <exact name>`".into()),
                );
                None
            }
            Some((_, value)) => self.internal_host(value),
        };
        ok &= host.is_some();

        let cidrs = match keys.get("cidrs") {
            None => {
                self.report(
                    Code::MissingKey,
                    item.at,
                    "internal destination has no `cidrs`",
                    Some("add `cidrs: [10.20.0.0/16]`: the addresses this exception opens".into()),
                );
                None
            }
            Some((_, value)) => self.cidr_list(value, "cidrs", true),
        };
        ok &= cidrs.as_ref().is_some_and(|c| !c.is_empty());

        let ports = match keys.get("ports") {
            None => {
                self.report(
                    Code::MissingKey,
                    item.at,
                    "internal destination has no `ports`",
                    Some("add `ports: [5432]`: an exception is always for named ports".into()),
                );
                None
            }
            Some((_, value)) => self.ports(value, "ports"),
        };
        ok &= ports.is_some();

        let reason = match keys.get("reason").map(|(_, v)| (v, v.scalar_text())) {
            Some((_, Some(text))) if !text.trim().is_empty() => Some(text),
            found => {
                let at = found.map_or(item.at, |(v, _)| v.at);
                self.report(
                    Code::MissingReason,
                    at,
                    "internal destination has no `reason`: every exception needs one",
                    Some("say why this role may reach a private address (it appears in explain, diff, the decision log and /policy)".into()),
                );
                None
            }
        };
        ok &= reason.is_some();
        if !ok {
            return None;
        }
        Some(InternalDestination { host: host?, cidrs: cidrs?, ports: ports?, reason: reason? })
    }

    /// An exception's host: one exact canonical name or IP literal.
    fn internal_host(&mut self, value: &Node) -> Option<host::CanonicalHost> {
        let Some(text) = value.scalar_text() else {
            self.wrong_type(value, "host", "an exact host name");
            return None;
        };
        if text.contains('*') {
            self.report(
                Code::WildcardInternalHost,
                value.at,
                format!("internal destination host {text:?} has a wildcard: an exception names one exact host"),
                Some("list one entry per host".into()),
            );
            return None;
        }
        match self.pattern(value, &text, "internal_destinations") {
            Some(HostPattern::Exact(host)) => Some(host),
            Some(_) | None => None,
        }
    }

    /// A list of canonical CIDRs. Exceptions (`exception`) are also linted
    /// for what they overlap and how wide they are.
    fn cidr_list(&mut self, node: &Node, what: &str, exception: bool) -> Option<Vec<IpNet>> {
        let items = match &node.value {
            Value::Null => Vec::new(),
            Value::Seq(items) => items.iter().collect(),
            _ => {
                self.wrong_type(node, what, "a list of CIDRs such as 10.20.0.0/16");
                return None;
            }
        };
        if exception && items.is_empty() {
            self.report(
                Code::MissingKey,
                node.at,
                "`cidrs` is empty: the exception would open nothing",
                Some("list the networks, e.g. `[10.20.0.0/16]`".into()),
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.cidr(item, what) {
                Some(net) => {
                    if exception {
                        self.lint_exception_cidr(item, net);
                    }
                    out.push(net);
                }
                None => ok = false,
            }
        }
        out.sort();
        out.dedup();
        ok.then_some(out)
    }

    fn cidr(&mut self, item: &Node, what: &str) -> Option<IpNet> {
        let Some(text) = item.scalar_text().filter(|_| matches!(item.value, Value::String(_))) else {
            self.wrong_type(item, &format!("{what}[]"), "a CIDR string such as 10.20.0.0/16");
            return None;
        };
        let Ok(net) = text.parse::<IpNet>() else {
            self.report(
                Code::InvalidCidr,
                item.at,
                format!("invalid CIDR {text:?} in `{what}`"),
                Some("write an address and a prefix length, e.g. 10.20.0.0/16 or 2001:db8::/48".into()),
            );
            return None;
        };
        if let IpNet::V6(v6) = net
            && let Some(v4) = v6.network().to_ipv4_mapped()
        {
            let v4_len = v6.prefix_len().saturating_sub(96);
            let hint = if v6.prefix_len() >= 96 {
                format!("write \"{}/{v4_len}\"", v4)
            } else {
                "write the IPv4 range instead".to_owned()
            };
            self.report(
                Code::Ipv4MappedRange,
                item.at,
                format!("{text:?} in `{what}` is an IPv4-mapped IPv6 range"),
                Some(hint),
            );
            return None;
        }
        if net.trunc() != net {
            self.report(
                Code::CidrHostBits,
                item.at,
                format!("{text:?} in `{what}` has host bits set"),
                Some(format!("write \"{}\"", net.trunc())),
            );
            return None;
        }
        if text != net.to_string() {
            self.report(
                Code::InvalidCidr,
                item.at,
                format!("{text:?} in `{what}` is not written canonically"),
                Some(format!("write \"{net}\"")),
            );
            return None;
        }
        Some(net)
    }

    /// Warns about an exception CIDR that overlaps addresses no exception
    /// can open, or that is wider than a /16 (IPv4) or /48 (IPv6).
    fn lint_exception_cidr(&mut self, item: &Node, net: IpNet) {
        if let Some(blocked) = address::never_openable_overlap(net) {
            self.report(
                Code::ExceptionOverlapsNeverOpenable,
                item.at,
                format!("{net} overlaps {blocked}, which an exception never opens (it stays denied)"),
                Some("narrow the range to the private network the service really needs".into()),
            );
        }
        let (limit, family) = match net {
            IpNet::V4(_) => (WIDEST_V4_EXCEPTION, "IPv4"),
            IpNet::V6(_) => (WIDEST_V6_EXCEPTION, "IPv6"),
        };
        if net.prefix_len() < limit {
            self.report(
                Code::ExceptionTooWide,
                item.at,
                format!("exception {net} is wider than a /{limit} ({family})"),
                Some("an exception should name the few addresses of one service; narrow it".into()),
            );
        }
    }

    /// The top-level `network` section.
    fn network(&mut self, node: &Node) -> NetworkRules {
        let mut rules = NetworkRules::default();
        let entries = match &node.value {
            Value::Null => return rules,
            Value::Map(entries) => entries,
            _ => {
                self.wrong_type(
                    node,
                    "network",
                    "a mapping with deny_ranges, allow_ranges, deny_addresses, allow_addresses",
                );
                return rules;
            }
        };
        let keys = self.keys(entries, NETWORK_KEYS, "`network`", |_| None);
        if let Some((_, v)) = keys.get("allow_ranges") {
            rules.allow_ranges = self.cidr_list(v, "allow_ranges", false).unwrap_or_default();
        }
        if let Some((_, v)) = keys.get("deny_ranges") {
            rules.deny_ranges = self.cidr_list(v, "deny_ranges", false).unwrap_or_default();
        }
        if let Some((_, v)) = keys.get("allow_addresses") {
            rules.allow_addresses = self.address_list(v, "allow_addresses");
        }
        if let Some((_, v)) = keys.get("deny_addresses") {
            rules.deny_addresses = self.address_list(v, "deny_addresses");
        }
        rules
    }

    fn address_list(&mut self, node: &Node, what: &str) -> Vec<AddressSpec> {
        let items = match &node.value {
            Value::Null => return Vec::new(),
            Value::Seq(items) => items,
            _ => {
                self.wrong_type(node, what, "a list of IP or IP:PORT");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Some(text) = item.scalar_text().filter(|_| matches!(item.value, Value::String(_))) else {
                self.wrong_type(item, &format!("{what}[]"), "an IP or IP:PORT string");
                continue;
            };
            let mapped = text.trim_start_matches('[').to_ascii_lowercase().starts_with("::ffff:") && text.contains('.');
            match text.parse::<AddressSpec>() {
                Ok(_) if mapped => self.report(
                    Code::Ipv4MappedRange,
                    item.at,
                    format!("{text:?} in `{what}` is an IPv4-mapped IPv6 address"),
                    Some("write the IPv4 address".into()),
                ),
                Ok(spec) => out.push(spec),
                Err(error) => self.report(
                    Code::InvalidAddress,
                    item.at,
                    format!("in `{what}`: {error}"),
                    Some("write 10.0.0.1, 10.0.0.1:5432, 2001:db8::1 or [2001:db8::1]:443".into()),
                ),
            }
        }
        out.sort_by_key(|s| s.to_string());
        out.dedup();
        out
    }

    /// A list of host patterns; null or absent is empty.
    fn pattern_list(&mut self, node: Option<&Node>, what: &str) -> Vec<Entry> {
        let items = match node.map(|n| &n.value) {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Seq(items)) => items,
            Some(_) => {
                if let Some(node) = node {
                    self.wrong_type(node, what, "a list of host patterns");
                }
                return Vec::new();
            }
        };
        let mut entries: Vec<Entry> = Vec::new();
        let mut seen: HashMap<HostPattern, Position> = HashMap::new();
        for item in items {
            let Some(text) = item.scalar_text() else {
                self.wrong_type(item, &format!("{what}[]"), "a host pattern (a string)");
                continue;
            };
            let Some(pattern) = self.pattern(item, &text, what) else {
                continue;
            };
            if let Some(first) = seen.get(&pattern) {
                self.report(
                    Code::DuplicateEntry,
                    item.at,
                    format!("`{pattern}` is listed twice in `{what}` (first at line {})", first.line),
                    Some("remove the duplicate".into()),
                );
                continue;
            }
            seen.insert(pattern.clone(), item.at);
            entries.push(Entry { pattern, at: item.at });
        }
        self.lint_shadowed(&entries, what);
        entries
    }

    fn pattern(&mut self, node: &Node, text: &str, what: &str) -> Option<HostPattern> {
        let parsed = match self.version {
            PolicyVersion::V1 => pattern::parse(text),
            PolicyVersion::V2 => pattern::parse_v2(text),
        };
        match parsed {
            Ok(parsed) => {
                if parsed.had_trailing_dot {
                    self.report(
                        Code::TrailingDot,
                        node.at,
                        format!("trailing dot in {text:?} is ignored"),
                        Some(format!("write \"{}\"", parsed.pattern)),
                    );
                }
                Some(parsed.pattern)
            }
            Err(error) => {
                let code = match &error {
                    PatternError::NotCanonical { .. }
                    | PatternError::InvalidHost { error: host::HostError::NonCanonicalIpv4 { .. }, .. } => {
                        Code::NonCanonicalPattern
                    }
                    PatternError::PublicSuffix { .. } => Code::WildcardPublicSuffix,
                    _ => Code::InvalidPattern,
                };
                let help = error.help();
                self.report(code, node.at, format!("in `{what}`: {error}"), help);
                None
            }
        }
    }

    /// Entries that a wildcard in the same list already covers.
    fn lint_shadowed(&mut self, entries: &[Entry], what: &str) {
        let wildcards: HashMap<&str, Position> = entries
            .iter()
            .filter_map(|e| match &e.pattern {
                HostPattern::Wildcard(suffix) => Some((&**suffix, e.at)),
                HostPattern::Exact(_) | HostPattern::Middle { .. } => None,
            })
            .collect();
        if wildcards.is_empty() {
            return;
        }
        for entry in entries {
            let name = match &entry.pattern {
                HostPattern::Exact(host) if host.is_name() => host.as_str(),
                HostPattern::Wildcard(suffix) => suffix,
                HostPattern::Middle { right, .. } => right,
                HostPattern::Exact(_) => continue,
            };
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = rest.get(dot + 1..).unwrap_or("");
                if let Some(at) = wildcards.get(rest) {
                    self.report(
                        Code::ShadowedEntry,
                        entry.at,
                        format!("`{}` is already matched by `*.{rest}` (line {}) in `{what}`", entry.pattern, at.line),
                        Some("remove the narrower entry".into()),
                    );
                    break;
                }
            }
        }
    }

    /// Allow-list entries that the deny list overrides.
    fn lint_global_lists(&mut self, allow: &[Entry], deny: &[Entry]) {
        let denied: HashMap<&HostPattern, ()> = deny.iter().map(|e| (&e.pattern, ())).collect();
        let deny_wildcards: HashMap<&str, &HostPattern> = deny
            .iter()
            .filter_map(|e| match &e.pattern {
                HostPattern::Wildcard(suffix) => Some((&**suffix, &e.pattern)),
                HostPattern::Exact(_) | HostPattern::Middle { .. } => None,
            })
            .collect();
        for entry in allow {
            // Overridden by the same entry, or by a deny wildcard covering it.
            let mut hit = denied.get_key_value(&entry.pattern).map(|(p, _)| *p);
            let mut rest = match &entry.pattern {
                HostPattern::Exact(host) if host.is_name() => host.as_str(),
                HostPattern::Wildcard(suffix) => suffix,
                HostPattern::Middle { right, .. } => right,
                HostPattern::Exact(_) => "",
            };
            while hit.is_none()
                && let Some(dot) = rest.find('.')
            {
                rest = rest.get(dot + 1..).unwrap_or("");
                hit = deny_wildcards.get(rest).copied();
            }
            if let Some(deny_pattern) = hit {
                self.report(
                    Code::InBothGlobalLists,
                    entry.at,
                    format!(
                        "`{}` in `global_allow_list` is overridden by `{deny_pattern}` in `global_deny_list` (the deny list wins)",
                        entry.pattern
                    ),
                    Some("remove it from one of the lists".into()),
                );
            }
        }
    }
}

/// A port: 1 to 65535, decimal, no sign or leading zeros.
fn parse_port_number(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok()
}

/// A service's non-empty `name` and where it is written (the last one if
/// the key is duplicated, as in Smokescreen).
fn service_name(item: &Node) -> Option<(String, Position)> {
    let Value::Map(entries) = &item.value else {
        return None;
    };
    entries
        .iter()
        .rev()
        .find(|(k, _)| k.value == Value::String("name".into()))
        .and_then(|(_, v)| v.scalar_text().filter(|n| !n.trim().is_empty()).map(|n| (n, v.at)))
}

/// The known name closest to `word`, if it is close enough to be a typo.
pub fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let word = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) || (word.len() >= 4 && (k.starts_with(&word) || word.starts_with(k))))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent swaps).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    let idx = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        if let Some(cell) = d.get_mut(idx(i, 0)) {
            *cell = i;
        }
    }
    for j in 0..=b.len() {
        if let Some(cell) = d.get_mut(idx(0, j)) {
            *cell = j;
        }
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let (ai, bj) = (a.get(i - 1), b.get(j - 1));
            let cost = usize::from(ai != bj);
            let get = |i, j| d.get(idx(i, j)).copied().unwrap_or(usize::MAX / 2);
            let mut best = (get(i - 1, j) + 1).min(get(i, j - 1) + 1).min(get(i - 1, j - 1) + cost);
            if i > 1 && j > 1 && ai == b.get(j - 2) && a.get(i - 2) == bj {
                best = best.min(get(i - 2, j - 2) + 1);
            }
            if let Some(cell) = d.get_mut(idx(i, j)) {
                *cell = best;
            }
        }
    }
    d.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    fn codes(source: &str) -> Vec<(String, u64, u64)> {
        check_source("t.yaml", source, ActionSet::default())
            .diagnostics
            .into_iter()
            .map(|d| (d.code.as_str().to_owned(), d.line, d.column))
            .collect()
    }

    #[test]
    fn suggestions_catch_typos() {
        assert_eq!(suggest("global_deny_lists", TOP_KEYS), Some("global_deny_list"));
        assert_eq!(suggest("alowed_domains", RULE_KEYS), Some("allowed_domains"));
        assert_eq!(suggest("servcies", TOP_KEYS), Some("services"));
        assert_eq!(suggest("zzz", TOP_KEYS), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    #[test]
    fn clean_policy_has_no_diagnostics() {
        let src = "version: v1\nservices:\n  - name: a\n    project: p\n    action: enforce\n    allowed_domains: [a.com, \"*.b.com\"]\ndefault:\n  project: other\n  action: enforce\n";
        let checked = check_source("t.yaml", src, ActionSet::default());
        assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
        let policy = checked.policy.unwrap();
        assert_eq!(policy.services.len(), 1);
        assert_eq!(policy.services[0].allowed_domains.len(), 2);
    }

    #[test]
    fn every_problem_is_reported_in_one_run() {
        let src = "\
version: v1
services:
  - name: a
    action: Enforce
    alowed_domains: [a.com]
  - name: a
    action: enforce
    allowed_domains: [EXAMPLE.com, \"api.*.x.com\", a.com:443]
global_deny_lists: [x.com]
";
        assert_eq!(
            codes(src),
            vec![
                ("P101".to_owned(), 1, 1),
                ("P009".to_owned(), 4, 13),
                ("P002".to_owned(), 5, 5),
                ("P008".to_owned(), 6, 11),
                ("P011".to_owned(), 8, 23),
                ("P010".to_owned(), 8, 36),
                ("P010".to_owned(), 8, 51),
                ("P002".to_owned(), 9, 1),
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_each_reported() {
        let src = "version: v1\nservices: []\nversion: v1\ndefault:\n  action: open\n  action: enforce\n";
        let found = codes(src);
        assert!(found.contains(&("P003".to_owned(), 3, 1)), "{found:?}");
        assert!(found.contains(&("P003".to_owned(), 6, 3)), "{found:?}");
    }

    #[test]
    fn warnings_do_not_block_the_policy() {
        let src = "version: v1\nservices:\n  - name: a\n    action: open\n    allowed_domains: [a.com]\ndefault:\n  action: enforce\n  allowed_domains: [x.com, x.com, \"*.y.com\", a.y.com, z.com.]\nglobal_allow_list: [a.bad.com]\nglobal_deny_list: [\"*.bad.com\"]\n";
        let checked = check_source("t.yaml", src, ActionSet::default());
        let found: Vec<&str> = checked.diagnostics.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(found, vec!["P105", "P102", "P103", "P106", "P104"]);
        assert!(checked.policy.is_some());
    }

    #[test]
    fn disabled_actions_are_errors_including_default() {
        let src = "version: v1\nservices:\n  - name: a\n    action: open\ndefault:\n  action: open\n";
        let checked = check_source("t.yaml", src, [Action::Open].into_iter().collect());
        let found: Vec<_> = checked.diagnostics.iter().map(|d| (d.code.as_str(), d.line)).collect();
        assert_eq!(found, vec![("P012", 4), ("P012", 6)]);
        assert!(checked.policy.is_none());
    }

    #[test]
    fn smokescreen_load_errors_are_errors() {
        assert_eq!(codes("")[0].0, "P005");
        assert_eq!(codes("version: v1\n")[0].0, "P005");
        assert!(codes("version: v1\nservices:\n").contains(&("P005".to_owned(), 2, 1)));
        assert!(codes("version: 1\nservices: []\n").iter().any(|c| c.0 == "P006"));
        assert!(codes("version: v1\nservices:\n  - action: open\n").iter().any(|c| c.0 == "P005"));
        assert!(codes("version: v1\nservices:\n  - name: \"\"\n    action: open\n").iter().any(|c| c.0 == "P007"));
        assert!(
            codes("version: v1\nservices:\n  - name: a\n    action: open\n    allowed_domains: a.com\n")
                .iter()
                .any(|c| c.0 == "P004")
        );
        assert!(codes("version: v1\nservices: [\n").iter().any(|c| c.0 == "P001"));
    }

    #[test]
    fn mitm_keys_are_validated_then_ignored() {
        let src = "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains: [a.com]\n    mitm_domains:\n      - domain: b.com\ndefault:\n  action: enforce\n";
        let found: Vec<_> = codes(src).into_iter().map(|c| c.0).collect();
        assert_eq!(found, vec!["P107", "P013"]);
    }

    #[test]
    fn numbers_in_string_fields_keep_their_spelling() {
        let src = "version: v1\nservices:\n  - name: 0x10\n    project: 2024\n    action: enforce\ndefault:\n  action: enforce\n";
        let policy = check_source("t.yaml", src, ActionSet::default()).policy.unwrap();
        assert_eq!(policy.services[0].name, "0x10");
        assert_eq!(policy.services[0].project, "2024");
    }
}
