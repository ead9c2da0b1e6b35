//! `policyc explain`: how a policy decides one role's request, and with `--ip`
//! the address stage's verdict.
//!
//! Policy v2: with a port (`HOST:PORT`) the decision applies `allowed_ports`
//! and `internal_destinations` exactly as `proxyd` does; the address verdict
//! applies the policy's `network` rules and the exception that allowed the
//! name (proxyd's own flags are not known here: the verdict is the one under
//! no operator flags, which a flag can only make stricter or, for a
//! special-purpose address, open).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use egress_policy::address::{AddressPolicy, AddressRule, AddressRules, PolicyNetwork};
use egress_policy::decision::{Decision, RuleRef};
use egress_policy::host::CanonicalHost;
use egress_policy::policy::{ActionSet, InternalDestination, PolicyVersion, ports_text};
use serde::Serialize;

use super::{Failure, load_policy, parse_destination};
use crate::cli::Format;
use crate::report::to_json;

#[derive(Serialize)]
struct Explanation<'a> {
    decision: &'static str,
    reason: &'static str,
    reason_code: &'static str,
    rule: Option<String>,
    project: &'a str,
    pattern: Option<String>,
    list: Option<&'static str>,
    default_rule: bool,
    enforce_would_deny: bool,
    role: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    policy_revision: Option<&'a str>,
    /// v2: the internal destination that allowed the name (with its reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    internal_destination: Option<InternalExplanation>,
    /// The address stage's verdict for `--ip`; the decision above is the name stage's alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<AddressExplanation>,
}

#[derive(Serialize)]
struct InternalExplanation {
    host: String,
    cidrs: Vec<String>,
    ports: String,
    reason: String,
}

impl InternalExplanation {
    fn new(d: &InternalDestination) -> Self {
        InternalExplanation {
            host: d.host.to_string(),
            cidrs: d.cidrs.iter().map(ToString::to_string).collect(),
            ports: ports_text(&d.ports),
            reason: d.reason.clone(),
        }
    }
}

#[derive(Serialize)]
struct AddressExplanation {
    ip: IpAddr,
    allowed: bool,
    rule: String,
    rule_code: &'static str,
    /// v2: the reason of the internal destination that let the address pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    internal_destination_reason: Option<String>,
}

impl AddressExplanation {
    fn new(ip: IpAddr, port: u16, network: &PolicyNetwork, exception: Option<&InternalDestination>) -> Self {
        let flags = AddressPolicy::new(AddressRules::default());
        let verdict = flags.classify_with(SocketAddr::new(ip, port), network, exception);
        let reason = match verdict.rule {
            AddressRule::InternalDestination { .. } => exception.map(|e| e.reason.clone()),
            _ => None,
        };
        let rule = match &reason {
            Some(reason) => format!("{} (reason: {reason})", verdict.rule),
            None => verdict.rule.to_string(),
        };
        AddressExplanation {
            ip,
            allowed: verdict.allowed,
            rule,
            rule_code: verdict.rule.code(),
            internal_destination_reason: reason,
        }
    }
}

impl<'a> Explanation<'a> {
    fn new(
        d: &Decision<'a>,
        role: Option<&'a str>,
        host: &'a CanonicalHost,
        port: Option<u16>,
        revision: Option<&'a str>,
    ) -> Self {
        Explanation {
            decision: d.verdict.as_str(),
            reason: d.reason.as_str(),
            reason_code: d.reason.code(),
            rule: match d.rule {
                RuleRef::None => None,
                other => Some(other.to_string()),
            },
            project: d.project,
            pattern: d.matched.map(|(_, m)| m.to_string()),
            list: d.matched.map(|(list, _)| list.as_str()),
            default_rule: d.default_rule(),
            enforce_would_deny: d.verdict.enforce_would_deny(),
            role,
            host: host.as_str(),
            port,
            policy_revision: revision,
            internal_destination: d.internal_destination.map(InternalExplanation::new),
            address: None,
        }
    }
}

pub fn run(
    policy: &Path,
    role: &str,
    destination: &str,
    ip: Option<IpAddr>,
    disabled: ActionSet,
    format: Format,
) -> Result<(), Failure> {
    let (host, port) = parse_destination(destination)?;
    let loaded = load_policy(policy, disabled)?;
    let role = (!role.is_empty()).then_some(role);
    let decision = match port {
        Some(port) => loaded.table.decide_at(role, &host, port),
        None => loaded.table.decide(role, &host),
    };
    let mut e = Explanation::new(&decision, role, &host, port, loaded.revision.as_deref());
    e.address = ip.map(|ip| {
        AddressExplanation::new(ip, port.unwrap_or(443), loaded.table.network(), decision.internal_destination)
    });
    let portless_v2 = port.is_none() && loaded.policy.version == PolicyVersion::V2;
    match format {
        Format::Json => println!("{}", to_json(&e)),
        Format::Human => {
            println!("decision:     {}", e.decision);
            println!("reason:       {}", e.reason);
            let rule = match (&e.rule, e.default_rule) {
                (Some(r), true) => match role {
                    Some(role) => format!("{r} (role {role:?} has no rule of its own)"),
                    None => format!("{r} (the client has no role)"),
                },
                (Some(r), false) => r.clone(),
                (None, _) => "none".into(),
            };
            println!("rule:         {rule}");
            println!("project:      {}", if e.project.is_empty() { "-" } else { e.project });
            match (&e.pattern, e.list, &e.internal_destination) {
                (Some(p), Some(list), _) => println!("pattern:      {p} (in {list})"),
                (_, _, Some(_)) => println!("pattern:      none (an internal destination decided)"),
                _ => println!("pattern:      none (the rule's action decided)"),
            }
            println!("host:         {}{}", e.host, port.map(|p| format!(" port {p}")).unwrap_or_default());
            if let Some(i) = &e.internal_destination {
                println!(
                    "exception:    {} ports {} cidrs [{}] (reason: {})",
                    i.host,
                    i.ports,
                    i.cidrs.join(", "),
                    i.reason
                );
            }
            if let Some(a) = &e.address {
                println!("address:      {} {} ({})", a.ip, if a.allowed { "allowed" } else { "denied" }, a.rule);
            }
            if let Some(rev) = e.policy_revision {
                println!("revision:     {rev}");
            }
            if e.decision == "report" {
                println!("note:         allowed, logged with enforce_would_deny=true");
            }
            if portless_v2 {
                println!(
                    "note:         no port given: allowed_ports and internal_destinations were not applied (use HOST:PORT)"
                );
            }
        }
    }
    Ok(())
}
