//! `policyc suggest`: add what the decision logs show each role needs to its
//! rule, editing the policy's text, checking the result with the real
//! checker, and writing it only if it passes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use egress_policy::acl;
use egress_policy::decision::{PolicyTable, Reason};
use egress_policy::diagnostic::Diagnostic;
use egress_policy::host;
use egress_policy::pattern;
use egress_policy::policy::{Action, ActionSet, Policy, PortRange, Rule};
use egress_policy::table;
use serde::Serialize;

use super::{Failure, print_line_counts, read_logs, read_source};
use crate::cli::SuggestFormat;
use crate::decision_log::LineCounts;
use crate::policy_edit;
use crate::report::{print_human, to_json, write_json_stdout, write_stdout};
use crate::suggest::{self, Options, Plan, RoleSuggestion};

#[derive(Serialize)]
struct JsonReport<'a> {
    format_version: u32,
    policy: String,
    #[serde(flatten)]
    plan: &'a Plan,
    lines: &'a LineCounts,
}

pub fn run(
    policy_path: &Path,
    logs: &[PathBuf],
    output: Option<&Path>,
    roles: &[String],
    options: Options,
    format: SuggestFormat,
    strict: bool,
) -> Result<(), Failure> {
    let label = policy_path.display().to_string();
    let bytes = read_source(policy_path)?;
    if bytes.starts_with(&table::MAGIC) {
        return Err(Failure::Usage(format!(
            "{label} is a compiled table; suggest edits the YAML source it was compiled from"
        )));
    }
    let checked = acl::check_bytes(&label, &bytes, ActionSet::default());
    let Some(old_policy) = checked.policy else {
        print_human(&checked.diagnostics.into_iter().filter(Diagnostic::is_error).collect::<Vec<_>>(), &bytes);
        return Err(Failure::Policy);
    };
    let source = String::from_utf8(bytes).map_err(|_| Failure::Usage(format!("{label} is not UTF-8")))?;
    let old_table = PolicyTable::new(&old_policy);

    let wanted: HashSet<String> = roles.iter().cloned().collect();
    let aggregate = read_logs(logs, (!wanted.is_empty()).then_some(&wanted))?;
    print_line_counts(&aggregate.lines);
    if strict && aggregate.lines.malformed > 0 {
        return Err(Failure::Refused(format!(
            "--strict: {} malformed log line(s); nothing written",
            aggregate.lines.malformed
        )));
    }

    let plan = suggest::plan(&old_policy, &old_table, &aggregate, options);
    // Only the line counts are needed from here on: the pairs go before the
    // edited text and its re-check are built, so the two never add up.
    let lines = aggregate.lines.clone();
    drop(aggregate);
    report_left_out(&plan);
    let edited = policy_edit::apply(&source, &plan)
        .map_err(|e| Failure::Refused(format!("{label}: cannot add the suggestions: {e}; nothing written")))?;

    // The result must pass the same checker as `policyc check`, and allow
    // every host it was written for; otherwise nothing is written.
    let out_label = output.map_or_else(|| format!("{label} (suggested)"), |o| o.display().to_string());
    let new_checked = acl::check_source(&out_label, &edited.text, ActionSet::default());
    let Some(new_policy) = new_checked.policy else {
        print_human(
            &new_checked.diagnostics.into_iter().filter(Diagnostic::is_error).collect::<Vec<_>>(),
            edited.text.as_bytes(),
        );
        return Err(Failure::Refused("the edited policy does not pass check; nothing written".into()));
    };
    if let Err(why) = only_planned_changes(&old_policy, &new_policy, &plan) {
        return Err(Failure::Refused(format!(
            "the edited policy would change more than the suggested entries ({why}); nothing written"
        )));
    }
    let new_table = PolicyTable::new(&new_policy);
    // Each distinct name is canonicalised once, however many roles it is written for.
    let mut canonical: HashMap<&str, Option<host::CanonicalHost>> = HashMap::new();
    for role in &plan.roles {
        for entry in &role.entries {
            for name in entry.hosts() {
                let parsed = canonical.entry(name.as_str()).or_insert_with(|| host::canonical(name).ok());
                let allowed = parsed
                    .as_ref()
                    .is_some_and(|h| new_table.decide(Some(&role.role), h).reason == Reason::AllowedDomain);
                if !allowed {
                    return Err(Failure::Refused(format!(
                        "internal error: the edited policy does not allow {name} for role {}; nothing written",
                        crate::diff::printable(&role.role)
                    )));
                }
            }
        }
        for port in &role.ports {
            for name in &port.hosts {
                let allowed = host::canonical(name)
                    .map(|h| {
                        matches!(
                            new_table.decide_at(Some(&role.role), &h, port.port).reason,
                            Reason::AllowedDomain | Reason::GlobalAllowList | Reason::InternalDestination
                        )
                    })
                    .unwrap_or(false);
                if !allowed {
                    return Err(Failure::Refused(format!(
                        "internal error: the edited policy does not allow {name}:{} for role {}; nothing written",
                        port.port,
                        crate::diff::printable(&role.role)
                    )));
                }
            }
        }
    }

    let diff = crate::diff::diff(&old_policy, &new_policy);
    eprint!("{}", diff.render_human(&label, &out_label));
    let ports = match plan.port_count() {
        0 => String::new(),
        1 => " and 1 port".to_owned(),
        n => format!(" and {n} ports"),
    };
    eprintln!(
        "suggest: {} entr{}{ports} for {} role{}",
        plan.entry_count(),
        if plan.entry_count() == 1 { "y" } else { "ies" },
        plan.roles.len(),
        if plan.roles.len() == 1 { "" } else { "s" }
    );

    let content = match format {
        SuggestFormat::Yaml => edited.text,
        SuggestFormat::Diff => {
            if edited.edits.is_empty() {
                String::new()
            } else {
                policy_edit::unified_diff(&relative(&label), &source, &edited.edits)
            }
        }
        SuggestFormat::Json => {
            let report = JsonReport { format_version: 1, policy: label.clone(), plan: &plan, lines: &lines };
            if output.is_none() {
                // Straight into the pipe: the plan of a big fleet is not held twice.
                write_json_stdout(&report)?;
                return Ok(());
            }
            format!("{}\n", to_json(&report))
        }
    };
    match output {
        Some(path) => table::write_atomically(path, content.as_bytes())
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?,
        None => write_stdout(&content)?,
    }
    Ok(())
}

/// The path as a diff header shows it: relative, forward slashes.
fn relative(label: &str) -> String {
    let cwd = std::env::current_dir().ok();
    crate::report::relative_to(cwd.as_deref(), label).replace('\\', "/")
}

fn report_left_out(plan: &Plan) {
    let role = |r: &str| crate::diff::printable(r);
    for left in &plan.below_min_count {
        eprintln!("below --min-count: role {} → {} ({} hit(s))", role(&left.role), left.host, left.hits);
    }
    for left in &plan.globally_denied {
        eprintln!(
            "not suggested: role {} → {} is in the global deny list ({} hit(s))",
            role(&left.role),
            left.host,
            left.hits
        );
    }
    for refused in &plan.collapse_refused {
        let why = match refused.reason {
            "public_suffix" => "it would be above a registrable domain",
            _ => "it would override the global deny list",
        };
        eprintln!(
            "not collapsed: role {}: {} hosts not folded into {} because {why}",
            role(&refused.role),
            refused.hosts,
            refused.pattern
        );
    }
    for left in &plan.ports_below_min_count {
        eprintln!("below --min-count: role {} → port {} ({} hit(s))", role(&left.role), left.port, left.hits);
    }
    for not_kept in &plan.ports_not_kept {
        eprintln!(
            "ports not kept: role {} → {} was reached on more than {} distinct ports; {} line(s) past that were counted, their ports not suggested",
            role(&not_kept.role),
            not_kept.host,
            crate::decision_log::MAX_PORTS_PER_PAIR,
            not_kept.lines
        );
    }
    for unusable in &plan.unusable_roles {
        eprintln!("skipped role {}: control characters cannot name a service", role(unusable));
    }
}

/// The edited policy must be the old one plus exactly the planned entries
/// and services: nothing else may change (a shared YAML anchor, say, would
/// widen other services too).
fn only_planned_changes(old: &Policy, new: &Policy, plan: &Plan) -> Result<(), String> {
    if old.default != new.default || old.global_allow_list != new.global_allow_list {
        return Err("the default rule or the global allow list changed".into());
    }
    if old.global_deny_list != new.global_deny_list {
        return Err("the global deny list changed".into());
    }
    let planned: HashMap<&str, &RoleSuggestion> = plan.roles.iter().map(|r| (r.role.as_str(), r)).collect();
    let parse = |p: &str| pattern::parse(p).map(|p| p.pattern).map_err(|e| e.to_string());
    let mut expected: Vec<Rule> = Vec::with_capacity(new.services.len());
    for rule in &old.services {
        let mut rule = rule.clone();
        if let Some(role) = planned.get(rule.name.as_str()) {
            for entry in &role.entries {
                rule.allowed_domains.push(parse(&entry.pattern)?);
            }
            rule.allowed_ports.extend(role.ports.iter().map(|p| PortRange::single(p.port)));
        }
        expected.push(rule);
    }
    for role in plan.roles.iter().filter(|r| !r.service_exists) {
        expected.push(Rule {
            name: role.role.clone(),
            project: role.new_service_project.clone().unwrap_or_default(),
            action: role.new_service_action.unwrap_or(Action::Enforce),
            allowed_domains: role.entries.iter().map(|e| parse(&e.pattern)).collect::<Result<_, _>>()?,
            allowed_ports: Vec::new(),
            internal_destinations: Vec::new(),
        });
    }
    if expected.len() != new.services.len() {
        return Err(format!("{} services expected, {} written", expected.len(), new.services.len()));
    }
    let by_name: HashMap<&str, &Rule> = new.services.iter().map(|r| (r.name.as_str(), r)).collect();
    for rule in &expected {
        if by_name.get(rule.name.as_str()) != Some(&rule) {
            return Err(format!("service {} is not as planned", crate::diff::printable(&rule.name)));
        }
    }
    Ok(())
}
