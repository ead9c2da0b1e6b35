//! Any bytes as an ACL: when the checker accepts it and the editor adds
//! entries to its services (and a new service), and a port to every service
//! that lists `allowed_ports`, the edited text passes the checker and allows
//! every added host (and host:port) for its role; or the editor refuses
//! the layout with an error. It never panics and never writes a policy that
//! fails `check`.
#![no_main]

use egress_policy::decision::{PolicyTable, Reason};
use egress_policy::policy::{Action, ActionSet, port_allowed};
use egress_policy::{acl, host};
use libfuzzer_sys::fuzz_target;
use policyc::policy_edit;
use policyc::suggest::{Plan, RoleSuggestion, SuggestedEntry, SuggestedPort};

fn entry(pattern: &str, host: &str) -> SuggestedEntry {
    SuggestedEntry { pattern: pattern.into(), hits: 2, first_seen: None, last_seen: None, hosts: vec![host.into()] }
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Some(policy) = acl::check_source("fuzz.yaml", source, ActionSet::default()).policy else { return };
    let mut roles: Vec<RoleSuggestion> = policy
        .services
        .iter()
        .take(4)
        .filter(|s| !s.name.chars().any(char::is_control))
        .map(|s| RoleSuggestion {
            role: s.name.clone(),
            service_exists: true,
            new_service_action: None,
            new_service_project: None,
            entries: vec![entry("fuzz-added.example", "fuzz-added.example"), entry("*.fuzz-wild.example", "a.fuzz-wild.example")],
            ports: if s.allowed_ports.is_empty() || port_allowed(&s.allowed_ports, 65001) {
                Vec::new()
            } else {
                vec![SuggestedPort { port: 65001, hits: 2, first_seen: None, last_seen: None, hosts: vec!["fuzz-added.example".into()] }]
            },
        })
        .collect();
    let new_role = "fuzz new\nrole: \"x\"";
    if !policy.services.iter().any(|s| s.name == new_role) {
        roles.push(RoleSuggestion {
            role: new_role.into(),
            service_exists: false,
            new_service_action: Some(Action::Enforce),
            new_service_project: Some("p: q".into()),
            entries: vec![entry("fuzz-new.example", "fuzz-new.example")],
            ports: Vec::new(),
        });
    }
    let plan = Plan { roles, ..Plan::default() };
    let Ok(edited) = policy_edit::apply(source, &plan) else { return };
    let checked = acl::check_source("edited.yaml", &edited.text, ActionSet::default());
    let Some(new_policy) = checked.policy else {
        panic!("edited policy fails check: {:?}\n{}", checked.diagnostics, edited.text);
    };
    let table = PolicyTable::new(&new_policy);
    for role in &plan.roles {
        for e in &role.entries {
            let h = host::canonical(&e.hosts[0]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(table.decide(Some(&role.role), &h).reason, Reason::AllowedDomain, "{} {}\n{}", role.role, h, edited.text);
        }
        for p in &role.ports {
            let h = host::canonical(&p.hosts[0]).unwrap_or_else(|e| panic!("{e}"));
            let reason = table.decide_at(Some(&role.role), &h, p.port).reason;
            assert_eq!(reason, Reason::AllowedDomain, "{} {}:{}\n{}", role.role, h, p.port, edited.text);
        }
    }
});
