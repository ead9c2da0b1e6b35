//! Policy tests: YAML files of cases (a role, a destination, the decision and
//! optionally the reason expected), read as strictly as ACLs, and run against
//! a [`PolicyTable`] with the same [`PolicyTable::decide`] that `proxyd` uses.
//!
//! ```yaml
//! tests:
//!   - name: billing reaches Stripe      # optional, shown in failures
//!     role: billing-webhooks            # null: a client without a role
//!     destination: api.stripe.com:443   # HOST, HOST:PORT or [IPv6]:PORT
//!     decision: allow                   # allow | report | deny
//!     reason: allowed_domain            # optional: a reason code or Smokescreen's text
//!     ip: 10.20.0.1                     # optional: run the address stage for this address too
//! ```
//!
//! With a port in `destination`, a v2 policy's `allowed_ports` and
//! `internal_destinations` apply, as in `proxyd`. With `ip`, the expected
//! `decision` is the end result: a name the address stage refuses for that
//! address (under the policy's `network` rules and the exception that
//! allowed the name; no operator flags) is `deny`.
//!
//! Problems in a test file are [`Diagnostic`]s with `file:line:col`, like ACL
//! problems; a case that decides differently becomes a `P017` diagnostic at
//! the case's line, so every output format shows failures the same way.
//! This module reads no files and prints nothing.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

use std::net::{IpAddr, SocketAddr};

use egress_policy::acl;
use egress_policy::address::{AddressPolicy, AddressRules, AddressVerdict};
use egress_policy::decision::{Decision, PolicyTable, Reason, RuleRef, Verdict};
use egress_policy::destination::{self, Destination};
use egress_policy::diagnostic::{self, Code, Diagnostic, Position};
use egress_policy::yaml::{self, Node, Value};

const TOP_KEYS: &[&str] = &["tests"];
const CASE_KEYS: &[&str] = &["name", "role", "destination", "decision", "reason", "ip"];

/// One case, valid by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    pub name: Option<String>,
    /// `None`: a client without a role (it gets the default rule, if any).
    pub role: Option<String>,
    pub destination: Destination,
    pub decision: Verdict,
    pub reason: Option<Reason>,
    /// Also run the address stage for this address.
    pub ip: Option<IpAddr>,
    /// Where the case starts in its file.
    pub at: Position,
}

impl TestCase {
    /// How the case is named in output: its `name`, else `ROLE -> DESTINATION`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{} -> {}", self.role.as_deref().unwrap_or("(no role)"), self.destination),
        }
    }
}

/// A parsed test file: its valid cases and every problem found.
#[derive(Debug)]
pub struct TestFile {
    pub file: String,
    pub cases: Vec<TestCase>,
    pub diagnostics: Vec<Diagnostic>,
}

impl TestFile {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// Reads a test file given as bytes; non-UTF-8 is a P001.
pub fn parse_bytes(file: &str, bytes: &[u8]) -> TestFile {
    match std::str::from_utf8(bytes) {
        Ok(source) => parse_source(file, source),
        Err(e) => {
            let before = bytes.get(..e.valid_up_to()).unwrap_or(bytes);
            let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() as u64 + 1;
            TestFile {
                file: file.to_owned(),
                cases: Vec::new(),
                diagnostics: vec![
                    Diagnostic::new(Code::YamlSyntax, file, Position { line, column }, "file is not valid UTF-8")
                        .with_help("save the file as UTF-8"),
                ],
            }
        }
    }
}

/// Reads a test file given as text. `file` is only used in diagnostics.
pub fn parse_source(file: &str, source: &str) -> TestFile {
    let mut reader = Reader { file, diagnostics: Vec::new() };
    let cases = match yaml::parse(source) {
        Ok(root) => reader.document(&root),
        Err(e) => {
            reader.report(Code::YamlSyntax, e.at, e.message, None);
            Vec::new()
        }
    };
    let mut diagnostics = reader.diagnostics;
    diagnostic::sort(&mut diagnostics);
    TestFile { file: file.to_owned(), cases, diagnostics }
}

struct Reader<'a> {
    file: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn report(&mut self, code: Code, at: Position, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::new(code, self.file, at, message);
        d.help = help;
        self.diagnostics.push(d);
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        let message = format!("`{what}` must be {expected}, found {}", node.value.kind());
        self.report(Code::WrongType, node.at, message, None);
    }

    fn document(&mut self, root: &Node) -> Vec<TestCase> {
        let entries = match &root.value {
            Value::Map(entries) => entries,
            Value::Null => {
                let help = Some("start with `tests:` and a list of cases".to_owned());
                self.report(Code::MissingKey, root.at, "the file is empty: a test file needs `tests`", help);
                return Vec::new();
            }
            _ => {
                self.wrong_type(root, "the document", "a mapping with `tests`");
                return Vec::new();
            }
        };
        let keys = self.keys(entries, TOP_KEYS, "the top level");
        let Some((key, node)) = keys.get("tests") else {
            self.report(Code::MissingKey, root.at, "missing `tests`", Some("add `tests:` with a list of cases".into()));
            return Vec::new();
        };
        match &node.value {
            Value::Seq(items) if !items.is_empty() => items.iter().filter_map(|item| self.case(item)).collect(),
            Value::Seq(_) | Value::Null => {
                let help = Some("a test file that tests nothing would let any policy pass: add cases".to_owned());
                self.report(Code::MissingKey, key.at, "`tests` is empty", help);
                Vec::new()
            }
            _ => {
                self.wrong_type(node, "tests", "a list of cases");
                Vec::new()
            }
        }
    }

    /// A mapping's keys, reporting unknown and duplicate ones (the last wins).
    fn keys<'n>(
        &mut self,
        entries: &'n [(Node, Node)],
        known: &[&str],
        context: &str,
    ) -> HashMap<&'n str, (&'n Node, &'n Node)> {
        let mut keys: HashMap<&str, (&Node, &Node)> = HashMap::new();
        for (key, value) in entries {
            let name = match &key.value {
                Value::String(name) if known.contains(&name.as_str()) => name.as_str(),
                other => {
                    let shown = key.scalar_text().unwrap_or_else(|| other.kind().to_owned());
                    let help = key
                        .scalar_text()
                        .and_then(|text| acl::suggest(&text, known))
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| Some(format!("expected one of: {}", known.join(", "))));
                    self.report(Code::UnknownKey, key.at, format!("unknown key `{shown}` in {context}"), help);
                    continue;
                }
            };
            if let Some((first, _)) = keys.get(name) {
                let message = format!("duplicate key `{name}` (first at line {})", first.at.line);
                self.report(Code::DuplicateKey, key.at, message, Some("keep one of them".into()));
            }
            keys.insert(name, (key, value));
        }
        keys
    }

    fn case(&mut self, item: &Node) -> Option<TestCase> {
        let Value::Map(entries) = &item.value else {
            self.wrong_type(item, "tests[]", "a case (a mapping with `role`, `destination` and `decision`)");
            return None;
        };
        let keys = self.keys(entries, CASE_KEYS, "a test case");
        let mut ok = true;
        let required = |this: &mut Self, key: &str, help: &str| {
            let found = keys.get(key).map(|(_, v)| *v);
            if found.is_none() {
                this.report(Code::MissingKey, item.at, format!("test case has no `{key}`"), Some(help.to_owned()));
            }
            found
        };
        let role = required(self, "role", "add `role: NAME`, or `role: null` for a client without a role");
        let destination = required(self, "destination", "add `destination: HOST` or `HOST:PORT`");
        let decision = required(self, "decision", "add `decision: allow` (or `report`, `deny`)");

        let name = match keys.get("name").map(|(_, v)| *v) {
            None => None,
            Some(node) => match &node.value {
                Value::String(s) => Some(s.clone()),
                _ => {
                    self.wrong_type(node, "name", "a string");
                    ok = false;
                    None
                }
            },
        };
        let role = role.and_then(|node| match (&node.value, node.scalar_text()) {
            (Value::Null, _) => Some(None),
            (_, Some(text)) if text.is_empty() => {
                let message = "`role` is empty".to_owned();
                self.report(
                    Code::WrongType,
                    node.at,
                    message,
                    Some("write `role: null` for a client without a role".into()),
                );
                None
            }
            (_, Some(text)) => Some(Some(text)),
            (_, None) => {
                self.wrong_type(node, "role", "a role name, or null for a client without a role");
                None
            }
        });
        let destination = destination.and_then(|node| match &node.value {
            Value::String(text) => match destination::parse(text) {
                Ok(d) => Some(d),
                Err(e) => {
                    let help = Some("write HOST, HOST:PORT or [IPv6]:PORT, as in a CONNECT request".to_owned());
                    self.report(Code::InvalidDestination, node.at, e.to_string(), help);
                    None
                }
            },
            _ => {
                self.wrong_type(node, "destination", "a string (HOST or HOST:PORT)");
                None
            }
        });
        let decision = decision.and_then(|node| {
            let text = node.scalar_text();
            let found = Verdict::ALL.into_iter().find(|v| text.as_deref() == Some(v.as_str()));
            if found.is_none() {
                let shown = text.unwrap_or_else(|| node.value.kind().to_owned());
                let help = Some("use one of: allow, report, deny".to_owned());
                self.report(Code::UnknownDecision, node.at, format!("unknown decision {shown:?}"), help);
            }
            found
        });
        let reason = match keys.get("reason").map(|(_, v)| *v) {
            None => Some(None),
            Some(node) => {
                let text = node.scalar_text();
                let found =
                    Reason::ALL.into_iter().find(|r| text.as_deref().is_some_and(|t| t == r.code() || t == r.as_str()));
                if found.is_none() {
                    let shown = text.unwrap_or_else(|| node.value.kind().to_owned());
                    let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
                    let help = Some(format!("use a reason code ({}) or Smokescreen's reason text", codes.join(", ")));
                    self.report(Code::UnknownReason, node.at, format!("unknown reason {shown:?}"), help);
                }
                found.map(Some)
            }
        };
        let ip = match keys.get("ip").map(|(_, v)| *v) {
            None => Some(None),
            Some(node) => match node.scalar_text().and_then(|t| t.parse::<IpAddr>().ok()) {
                Some(ip) => Some(Some(ip)),
                None => {
                    let shown = node.scalar_text().unwrap_or_else(|| node.value.kind().to_owned());
                    let help = Some("write an IP address such as 10.20.0.1 or 2001:db8::1".to_owned());
                    self.report(Code::InvalidDestination, node.at, format!("invalid ip {shown:?}"), help);
                    None
                }
            },
        };
        let (Some(role), Some(destination), Some(decision), Some(reason), Some(ip), true) =
            (role, destination, decision, reason, ip, ok)
        else {
            return None;
        };
        Some(TestCase { name, role, destination, decision, reason, ip, at: item.at })
    }
}

/// What the policy decided for one case.
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'c, 't> {
    pub case: &'c TestCase,
    pub decision: Decision<'t>,
    /// The address stage's verdict, when the case names an `ip`.
    pub address: Option<AddressVerdict>,
}

impl Outcome<'_, '_> {
    /// The end result: the name stage's verdict, or deny when the address stage refuses.
    pub fn verdict(&self) -> Verdict {
        match self.address {
            Some(a) if !a.allowed && self.decision.verdict.is_allowed() => Verdict::Deny,
            _ => self.decision.verdict,
        }
    }

    /// The decision matches, and so does the reason when the case names one.
    pub fn passed(&self) -> bool {
        self.verdict() == self.case.decision && self.case.reason.is_none_or(|r| r == self.decision.reason)
    }

    /// What decided: the rule, and the pattern with its list or the rule's action.
    pub fn decided_by(&self) -> String {
        let rule = match self.decision.rule {
            RuleRef::Service(name) => format!("rule `{name}`"),
            RuleRef::Default => "the default rule".to_owned(),
            RuleRef::None => return "no rule (the role has none and there is no default rule)".to_owned(),
        };
        let name = match (self.decision.matched, self.decision.internal_destination) {
            (_, Some(d)) => format!("{rule}, internal destination {} (reason: {})", d.host, d.reason),
            (Some((list, pattern)), None) => format!("{rule}, pattern `{pattern}` in {}", list.as_str()),
            (None, None) => format!("{rule}, by its action"),
        };
        match (self.address, self.case.ip) {
            (Some(a), Some(ip)) => {
                format!("{name}; address {ip} {} by {}", if a.allowed { "allowed" } else { "denied" }, a.rule)
            }
            _ => name,
        }
    }

    /// The failure as a `P017` diagnostic at the case's line, or `None` if it passed.
    pub fn failure(&self, file: &str) -> Option<Diagnostic> {
        if self.passed() {
            return None;
        }
        let expected = match self.case.reason {
            Some(r) => format!("{} ({})", self.case.decision, r.code()),
            None => self.case.decision.to_string(),
        };
        let message = format!(
            "{}: expected {expected}, got {} ({}), decided by {}",
            self.case.label(),
            self.verdict(),
            self.decision.reason.code(),
            self.decided_by()
        );
        let role = self.case.role.as_deref().unwrap_or("");
        let help = format!("see `policyc explain POLICY {role:?} {}`", self.case.destination);
        Some(Diagnostic::new(Code::TestFailed, file, self.case.at, message).with_help(help))
    }

    /// What `policyc test` prints for a failure: `FAIL file:line`, then expected,
    /// actual and what decided.
    pub fn render_human(&self, file: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "FAIL {file}:{}: {}", self.case.at.line, self.case.label());
        let _ = writeln!(
            out,
            "  role:        {}",
            self.case.role.as_deref().map_or("none (a client without a role)".to_owned(), |r| format!("{r:?}"))
        );
        let _ = writeln!(out, "  destination: {}", self.case.destination);
        if let Some(ip) = self.case.ip {
            let _ = writeln!(out, "  ip:          {ip}");
        }
        let expected_reason = self.case.reason.map(|r| format!(" ({})", r.code())).unwrap_or_default();
        let _ = writeln!(out, "  expected:    {}{expected_reason}", self.case.decision);
        let _ = writeln!(
            out,
            "  actual:      {} ({}: {})",
            self.verdict(),
            self.decision.reason.code(),
            self.decision.reason
        );
        let _ = writeln!(out, "  decided by:  {}", self.decided_by());
        out
    }
}

/// Runs every case of `file` against `table`, in file order.
pub fn run<'c, 't>(table: &'t PolicyTable, file: &'c TestFile) -> Vec<Outcome<'c, 't>> {
    let flags = AddressPolicy::new(AddressRules::default());
    file.cases
        .iter()
        .map(|case| {
            let role = case.role.as_deref();
            let decision = match case.destination.port {
                Some(port) => table.decide_at(role, &case.destination.host, port),
                None => table.decide(role, &case.destination.host),
            };
            let address = case.ip.map(|ip| {
                let addr = SocketAddr::new(ip, case.destination.port.unwrap_or(443));
                flags.classify_with(addr, table.network(), decision.internal_destination)
            });
            Outcome { case, decision, address }
        })
        .collect()
}

/// One case's result as `policyc test --format json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub name: Option<String>,
    pub role: Option<String>,
    pub destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    pub passed: bool,
    pub expected: Expected,
    pub actual: Actual,
}

#[derive(Clone, Debug, Serialize)]
pub struct Expected {
    pub decision: &'static str,
    pub reason_code: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Actual {
    pub decision: &'static str,
    pub reason: &'static str,
    pub reason_code: &'static str,
    pub rule: Option<String>,
    pub pattern: Option<String>,
    pub list: Option<&'static str>,
    /// The address stage, when the case names an `ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<ActualAddress>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ActualAddress {
    pub allowed: bool,
    pub rule: String,
    pub rule_code: &'static str,
}

impl CaseReport {
    pub fn new(file: &str, outcome: &Outcome<'_, '_>) -> Self {
        let (case, d) = (outcome.case, &outcome.decision);
        CaseReport {
            file: file.to_owned(),
            line: case.at.line,
            column: case.at.column,
            name: case.name.clone(),
            role: case.role.clone(),
            destination: case.destination.to_string(),
            ip: case.ip,
            passed: outcome.passed(),
            expected: Expected { decision: case.decision.as_str(), reason_code: case.reason.map(Reason::code) },
            actual: Actual {
                decision: outcome.verdict().as_str(),
                reason: d.reason.as_str(),
                reason_code: d.reason.code(),
                rule: match d.rule {
                    RuleRef::None => None,
                    other => Some(other.to_string()),
                },
                pattern: d.matched.map(|(_, m)| m.to_string()),
                list: d.matched.map(|(list, _)| list.as_str()),
                address: outcome.address.map(|a| ActualAddress {
                    allowed: a.allowed,
                    rule: a.rule.to_string(),
                    rule_code: a.rule.code(),
                }),
            },
        }
    }
}

impl fmt::Display for TestCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Every test file's cases run against one table: what `policyc test` and
/// `policyc compile --test` report.
#[derive(Debug)]
pub struct TestRun {
    /// One per case, in file order.
    pub reports: Vec<CaseReport>,
    /// Problems in the test files, then one `P017` per failing case, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Human renderings of the failures, per file.
    pub failures: Vec<Vec<String>>,
}

impl TestRun {
    pub fn cases(&self) -> usize {
        self.reports.len()
    }

    pub fn failed_cases(&self) -> usize {
        self.reports.iter().filter(|r| !r.passed).count()
    }

    /// Errors in the test files themselves (not failing cases).
    pub fn file_errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error() && d.code != Code::TestFailed).count()
    }

    pub fn failed(&self) -> bool {
        self.failed_cases() > 0 || self.file_errors() > 0
    }

    /// The one-line verdict over `files` test files.
    pub fn summary(&self, files: usize) -> String {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let (cases, failed, errors) = (self.cases(), self.failed_cases(), self.file_errors());
        let verdict = if self.failed() { "failed" } else { "ok" };
        let mut line = format!(
            "{verdict}: {} of {cases} case{} passed in {files} test file{}",
            cases - failed,
            plural(cases),
            plural(files)
        );
        if failed > 0 {
            line.push_str(&format!(", {failed} failed"));
        }
        if errors > 0 {
            line.push_str(&format!(", {errors} error{} in test files", plural(errors)));
        }
        line
    }
}

/// Runs every case of every file (with its source bytes) against `table`.
pub fn run_files(table: &PolicyTable, files: &[(TestFile, Vec<u8>)]) -> TestRun {
    let mut run = TestRun { reports: Vec::new(), diagnostics: Vec::new(), failures: Vec::new() };
    for (file, _) in files {
        let outcomes = self::run(table, file);
        run.diagnostics.extend(file.diagnostics.iter().cloned());
        run.diagnostics.extend(outcomes.iter().filter_map(|o| o.failure(&file.file)));
        run.failures.push(outcomes.iter().filter(|o| !o.passed()).map(|o| o.render_human(&file.file)).collect());
        run.reports.extend(outcomes.iter().map(|o| CaseReport::new(&file.file, o)));
    }
    diagnostic::sort(&mut run.diagnostics);
    run
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use egress_policy::acl;
    use egress_policy::policy::ActionSet;

    const POLICY: &str = "version: v1
services:
  - name: billing
    project: payments
    action: enforce
    allowed_domains: [api.stripe.com, \"*.hooks.example.com\"]
default:
  project: other
  action: report
global_deny_list: [\"*.bad.example\"]
";

    fn table() -> PolicyTable {
        PolicyTable::new(&acl::check_source("p.yaml", POLICY, ActionSet::default()).policy.unwrap())
    }

    fn codes(source: &str) -> Vec<(&'static str, u64, u64)> {
        parse_source("t.yaml", source).diagnostics.iter().map(|d| (d.code.as_str(), d.line, d.column)).collect()
    }

    #[test]
    fn passing_and_failing_cases() {
        let file = parse_source(
            "t.yaml",
            "tests:
  - role: billing
    destination: API.stripe.com:443
    decision: allow
    reason: allowed_domain
  - name: no role gets the default rule
    role: null
    destination: example.net
    decision: report
    reason: default rule policy used
  - role: billing
    destination: x.bad.example
    decision: allow
  - role: billing
    destination: evil.example
    decision: deny
    reason: global_deny_list
",
        );
        assert!(file.diagnostics.is_empty(), "{:?}", file.diagnostics);
        assert_eq!(file.cases.len(), 4);
        assert_eq!(file.cases[1].role, None);
        let table = table();
        let outcomes = run(&table, &file);
        let passed: Vec<bool> = outcomes.iter().map(Outcome::passed).collect();
        assert_eq!(passed, vec![true, true, false, false]);

        let failure = outcomes[2].failure("t.yaml").unwrap();
        assert_eq!((failure.code, failure.line, failure.column), (Code::TestFailed, 11, 5));
        assert_eq!(
            failure.message,
            "billing -> x.bad.example: expected allow, got deny (global_deny_list), decided by rule `billing`, pattern `*.bad.example` in global_deny_list"
        );
        // Right decision, wrong reason: still a failure.
        let failure = outcomes[3].failure("t.yaml").unwrap();
        assert!(failure.message.contains("expected deny (global_deny_list), got deny (enforce_policy)"), "{failure:?}");
        assert_eq!(
            outcomes[3].render_human("t.yaml"),
            "FAIL t.yaml:14: billing -> evil.example
  role:        \"billing\"
  destination: evil.example
  expected:    deny (global_deny_list)
  actual:      deny (enforce_policy: rule has enforce policy)
  decided by:  rule `billing`, by its action
"
        );
        let report = CaseReport::new("t.yaml", &outcomes[0]);
        assert_eq!(
            (report.actual.pattern.as_deref(), report.actual.list),
            (Some("api.stripe.com"), Some("allowed_domains"))
        );
    }

    #[test]
    fn no_rule_is_named_as_such() {
        let policy = acl::check_source("p.yaml", "version: v1\nservices: []\n", ActionSet::default()).policy.unwrap();
        let table = PolicyTable::new(&policy);
        let file = parse_source("t.yaml", "tests:\n  - {role: x, destination: a.com, decision: allow}\n");
        let outcomes = run(&table, &file);
        assert!(
            outcomes[0].failure("t.yaml").unwrap().message.contains("got deny (no_rule_matched), decided by no rule")
        );
    }

    #[test]
    fn malformed_files_are_diagnostics_with_positions() {
        assert_eq!(
            codes("tests:\n  - role: a\n    destination: a.com\n    decision: allow\n    expect: deny\n"),
            vec![("P002", 5, 5)]
        );
        assert_eq!(
            codes("tests:\n  - role: a\n    destination: [a.com]\n    decision: allow\n"),
            vec![("P004", 3, 18)]
        );
        assert_eq!(codes("tests:\n  - role: a\n    destination: a.com\n    decision: Allow\n"), vec![("P015", 4, 15)]);
        assert_eq!(
            codes("tests:\n  - role: a\n    destination: a.com\n    decision: allow\n    reason: because\n"),
            vec![("P016", 5, 13)]
        );
        assert_eq!(
            codes("tests:\n  - role: a\n    destination: 127.1:80\n    decision: deny\n"),
            vec![("P014", 3, 18)]
        );
        assert_eq!(codes("tests:\n  - role: a\n    destination: a.com:0\n    decision: deny\n"), vec![("P014", 3, 18)]);
        assert_eq!(codes("tests:\n  - destination: a.com\n    decision: deny\n"), vec![("P005", 2, 5)]);
        assert_eq!(
            codes("tests:\n  - role: \"\"\n    destination: a.com\n    decision: deny\n"),
            vec![("P004", 2, 11)]
        );
        assert_eq!(
            codes("tests:\n  - role: a\n    role: b\n    destination: a.com\n    decision: deny\n"),
            vec![("P003", 3, 5)]
        );
        assert_eq!(codes("tests: []\n"), vec![("P005", 1, 1)]);
        assert_eq!(codes("tests: a\n"), vec![("P004", 1, 8)]);
        assert_eq!(codes(""), vec![("P005", 1, 1)]);
        assert_eq!(codes("cases: []\n"), vec![("P002", 1, 1), ("P005", 1, 1)]);
        assert_eq!(codes("tests: [\n")[0].0, "P001");
        assert_eq!(parse_bytes("t.yaml", b"tests:\n  - \xff\n").diagnostics[0].code, Code::YamlSyntax);
    }

    proptest::proptest! {
        /// A test file written from the decisions themselves passes, in any
        /// spelling of the destination; the same file expecting another
        /// decision fails every case, each at its own line.
        #[test]
        fn files_written_from_decisions_pass_and_their_negations_fail(
            cases in proptest::collection::vec((
                proptest::sample::select(vec![Some("billing"), Some("other"), None]),
                proptest::sample::select(vec!["API.Stripe.com", "x.Hooks.example.com.", "a.b.bad.example", "example.net", "203.0.113.9", "[2001:db8::1]:443"]),
                proptest::option::of(1u16..),
            ), 1..8)
        ) {
            let table = table();
            let mut same = String::from("tests:\n");
            let mut flipped = String::from("tests:\n");
            for (role, host, port) in &cases {
                let destination = match port {
                    Some(p) if !host.contains(':') => format!("{host}:{p}"),
                    _ => (*host).to_owned(),
                };
                let d = table.decide(*role, &destination::parse(&destination).unwrap().host);
                let role = role.map_or("null".to_owned(), |r| format!("{r:?}"));
                let other = if d.verdict == Verdict::Deny { "allow" } else { "deny" };
                let line = |decision: &str| format!(
                    "  - {{role: {role}, destination: {destination:?}, decision: {decision}, reason: {}}}\n",
                    d.reason.code()
                );
                same.push_str(&line(d.verdict.as_str()));
                flipped.push_str(&line(other));
            }
            let file = parse_source("t.yaml", &same);
            proptest::prop_assert!(file.diagnostics.is_empty(), "{:?}", file.diagnostics);
            proptest::prop_assert!(run(&table, &file).iter().all(Outcome::passed));
            let file = parse_source("t.yaml", &flipped);
            let failures: Vec<u64> = run(&table, &file).iter().filter_map(|o| o.failure("t.yaml")).map(|d| d.line).collect();
            proptest::prop_assert_eq!(failures, (2..2 + cases.len() as u64).collect::<Vec<_>>());
        }
    }

    #[test]
    fn valid_cases_survive_a_bad_neighbour() {
        let file = parse_source(
            "t.yaml",
            "tests:\n  - {role: a, destination: a.com, decision: deny}\n  - {role: a, destination: a.com, decision: nope}\n",
        );
        assert_eq!(file.cases.len(), 1);
        assert_eq!(file.error_count(), 1);
    }

    #[test]
    fn every_reason_code_and_text_is_accepted() {
        for r in Reason::ALL {
            for text in [r.code(), r.as_str()] {
                let source = format!("tests:\n  - {{role: a, destination: a.com, decision: deny, reason: {text:?}}}\n");
                assert_eq!(parse_source("t.yaml", &source).cases[0].reason, Some(r), "{text}");
            }
        }
    }

    #[test]
    fn a_misspelt_key_gets_a_suggestion() {
        let parsed = parse_source("t.yaml", "tests:\n  - {role: a, destnation: a.com, decision: deny}\n");
        let unknown = parsed.diagnostics.iter().find(|d| d.code == Code::UnknownKey).expect("P002");
        assert_eq!(unknown.help.as_deref(), Some("did you mean `destination`?"));
    }
}
