//! `policyc inspect`: verify a compiled table and summarise its header and contents.

use std::path::Path;

use egress_policy::table::{self, CompiledTable};
use serde::Serialize;

use super::Failure;
use crate::cli::Format;
use crate::report::to_json;

#[derive(Serialize)]
struct Inspection<'a> {
    file: String,
    format_version: u32,
    revision: &'a str,
    body_bytes: u64,
    body_sha256: String,
    source_name: &'a str,
    source_sha256: &'a str,
    compiler: &'a str,
    disabled_actions: Vec<&'static str>,
    services: usize,
    default_rule: Option<&'static str>,
    patterns: usize,
    global_allow_list: usize,
    global_deny_list: usize,
    /// Policy language version of the source (`v1`, `v2`).
    language_version: &'static str,
    /// v2: rules with `allowed_ports`.
    rules_with_ports: usize,
    /// v2: `internal_destinations` entries over every rule.
    internal_destinations: usize,
    /// v2: rules in the `network` section.
    network_rules: usize,
    /// Whether a signature block is present (not whether it verifies: see `policyc verify`).
    signed: bool,
    serial: Option<u64>,
    key_id: Option<String>,
}

pub fn run(path: &Path, format: Format) -> Result<(), Failure> {
    let compiled: CompiledTable = table::read_file(path).map_err(|e| match e {
        table::TableError::Io(io) => Failure::Usage(format!("cannot read {}: {io}", path.display())),
        other => Failure::Refused(format!("{}: {other}", path.display())),
    })?;
    let i = Inspection {
        file: path.display().to_string(),
        format_version: compiled.header.format_version,
        revision: compiled.revision(),
        body_bytes: compiled.header.body_len,
        body_sha256: hex::encode(compiled.header.body_sha256),
        source_name: &compiled.metadata.source_name,
        source_sha256: &compiled.metadata.source_sha256,
        compiler: &compiled.metadata.compiler,
        disabled_actions: compiled.metadata.disabled_actions.iter().map(|a| a.as_str()).collect(),
        services: compiled.policy.services.len(),
        default_rule: compiled.policy.default.as_ref().map(|d| d.action.as_str()),
        patterns: compiled.policy.pattern_count(),
        global_allow_list: compiled.policy.global_allow_list.len(),
        global_deny_list: compiled.policy.global_deny_list.len(),
        language_version: compiled.policy.version.as_str(),
        rules_with_ports: compiled.policy.port_rule_count(),
        internal_destinations: compiled.policy.internal_destination_count(),
        network_rules: compiled.policy.network.rule_count(),
        signed: compiled.signature.is_some(),
        serial: compiled.signature.as_ref().map(|s| s.serial),
        key_id: compiled.signature.as_ref().map(|s| s.key_id.to_string()),
    };
    match format {
        Format::Json => println!("{}", to_json(&i)),
        Format::Human => {
            println!("table:            {} (verified)", i.file);
            println!("format version:   {}", i.format_version);
            println!("revision:         {}", i.revision);
            println!("body:             {} bytes, sha256 {}", i.body_bytes, i.body_sha256);
            println!("source:           {} (sha256 {})", i.source_name, i.source_sha256);
            println!("compiler:         {}", i.compiler);
            let disabled =
                if i.disabled_actions.is_empty() { "none".to_owned() } else { i.disabled_actions.join(", ") };
            println!("disabled actions: {disabled}");
            println!("services:         {}", i.services);
            println!("default rule:     {}", i.default_rule.unwrap_or("none (unknown roles are denied)"));
            println!(
                "patterns:         {} ({} global allow, {} global deny)",
                i.patterns, i.global_allow_list, i.global_deny_list
            );
            println!("language:         {}", i.language_version);
            if i.language_version != "v1" {
                println!("ports:            {} rule(s) with allowed_ports", i.rules_with_ports);
                println!("exceptions:       {} internal destination(s)", i.internal_destinations);
                println!("network rules:    {}", i.network_rules);
            }
            match (i.serial, &i.key_id) {
                (Some(serial), Some(key_id)) => println!(
                    "signature:        present: serial {serial}, key id {key_id} (not checked here: use `policyc verify`)"
                ),
                _ => println!("signature:        none (unsigned)"),
            }
        }
    }
    Ok(())
}
