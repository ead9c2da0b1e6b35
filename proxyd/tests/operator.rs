//! The alert rules (`deploy/prometheus/alerts.yaml`) and the Grafana
//! dashboard (`deploy/grafana/proxyd.json`) against the proxyd they watch:
//! every `proxyd_*` metric they reference is one a real proxyd exports
//! (scraped from its /metrics), and every alert has a promtool unit test.
//! With `promtool` installed, the rules are checked and their unit tests run,
//! and every dashboard query is parsed as PromQL; without it those steps
//! print a "skipped:" line (CI does not depend on promtool).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{ACL, compile};
use testkit::daemon::Daemon;
use testkit::scrape::scrape;

fn repo_file(path: &str) -> PathBuf {
    testkit::repo_root().join(path)
}

fn alert_rules() -> Value {
    let text = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yaml")).unwrap();
    serde_saphyr::from_str(&text).expect("alerts.yaml is YAML")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/proxyd.json")).unwrap();
    serde_json::from_str(&text).expect("proxyd.json is JSON")
}

/// Every string under an `expr` key, anywhere in `value`.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => expressions(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| expressions(item, out)),
        _ => {}
    }
}

/// `proxyd_*` names in PromQL text.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("proxyd_") {
            let tail = &rest[start..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn alert_names(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn rules_and_dashboard_reference_metrics_and_every_alert_has_a_unit_test() {
    let rules = alert_rules();
    let alerts = alert_names(&rules);
    for wanted in [
        "ProxydPolicyReloadRefused",
        "ProxydPolicyFetchFailed",
        "ProxydPolicyStale",
        "ProxydNotReady",
        "ProxydDenialRateSpike",
        "ProxydDnsFailureRatio",
        "ProxydConnectErrorRatio",
        "ProxydTunnelsNearCap",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} missing from {alerts:?}");
    }
    let tests = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.test.yaml")).unwrap();
    let tests: Value = serde_saphyr::from_str(&tests).unwrap();
    let tested: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|case| !case["exp_alerts"].as_array().unwrap().is_empty())
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    for alert in &alerts {
        assert!(tested.contains(alert.as_str()), "{alert} has no promtool test where it fires");
    }

    let dash = dashboard();
    assert_eq!(dash["title"], "proxyd");
    let mut exprs = Vec::new();
    expressions(&dash, &mut exprs);
    let names = metric_names(&exprs);
    for family in [
        "proxyd_decisions_total",
        "proxyd_connect_duration_seconds_bucket",
        "proxyd_tunnels_active",
        "proxyd_tunnel_bytes_sum",
        "proxyd_dns_lookups_total",
        "proxyd_policy_reloads_total",
    ] {
        assert!(names.contains(family), "the dashboard shows {family}: {names:?}");
    }
}

#[tokio::test]
async fn every_referenced_metric_is_exported_by_a_running_proxyd() {
    let mut exprs = Vec::new();
    expressions(&alert_rules(), &mut exprs);
    expressions(&dashboard(), &mut exprs);
    let names = metric_names(&exprs);
    assert!(names.len() >= 15, "{names:?}");

    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let daemon = Daemon::start(
        env!("CARGO_BIN_EXE_proxyd").as_ref(),
        &["--policy", table.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--resolver-address", "127.0.0.1:9"],
        &[],
    );
    let admin = daemon.listening["admin"].as_str().expect("the listening line names the admin address");
    let scraped = scrape(admin.parse().unwrap()).await;
    let types: Vec<(&str, &str)> =
        scraped.text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    let exported = |family: &str| types.iter().find(|(name, _)| *name == family).map(|(_, kind)| *kind);
    for name in &names {
        let histogram_family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|family| exported(family) == Some("histogram"));
        match histogram_family {
            Some(_) => assert!(
                scraped.samples.keys().any(|series| series.starts_with(&format!("{name}{{"))
                    || series.starts_with(&format!("{name} "))
                    || series == name),
                "{name}: no such histogram series in:\n{}",
                scraped.text
            ),
            None => assert!(exported(name).is_some(), "{name} is not exported by proxyd:\n{}", scraped.text),
        }
    }
    // The two gauges the alerts added are real values, not just declared.
    let loaded: u64 = scraped.value("proxyd_policy_loaded_timestamp_seconds").parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(loaded <= now && now - loaded < 120, "loaded at {loaded}, now {now}");
    assert_eq!(scraped.value("proxyd_tunnels_max"), "10000");
    let status = daemon.terminate();
    assert!(status.success(), "proxyd exited with {status}");
}

fn promtool() -> Option<Command> {
    match Command::new("promtool").arg("--version").output() {
        Ok(output) if output.status.success() => Some(Command::new("promtool")),
        _ => {
            println!("skipped: promtool is not installed (apt-get install prometheus); rules not checked by promtool");
            None
        }
    }
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Some(mut check) = promtool() else { return };
    let dir = repo_file("deploy/prometheus");
    let output = check.args(["check", "rules", "alerts.yaml"]).current_dir(&dir).output().unwrap();
    assert!(
        output.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let output =
        Command::new("promtool").args(["test", "rules", "alerts.test.yaml"]).current_dir(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "promtool test rules:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("SUCCESS"), "{stdout}");
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let Some(mut check) = promtool() else { return };
    let mut exprs = Vec::new();
    expressions(&dashboard(), &mut exprs);
    // Grafana's variables replaced by what Grafana sends: each query becomes a
    // recording rule, which `promtool check rules` parses.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let output = check.args(["check", "rules"]).arg(&path).output().unwrap();
    assert!(
        output.status.success(),
        "a dashboard query is not valid PromQL:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("SUCCESS: {} rules found", exprs.len())));
}

/// Whether `tool` exists and `tool info` succeeds (a docker client without an engine fails).
fn builder_works(tool: &str) -> bool {
    Command::new(tool).arg("info").output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_image_is_built_by_make_image_or_skipped_with_a_reason() {
    let dockerfile = std::fs::read_to_string(repo_file("Dockerfile")).unwrap();
    assert!(
        !dockerfile.lines().any(|l| l.trim_start().to_ascii_uppercase().starts_with("HEALTHCHECK")),
        "no HEALTHCHECK by design: orchestrators probe /readyz"
    );
    for arg in ["ARG BUILD_GIT_REVISION", "ARG SOURCE_DATE_EPOCH"] {
        assert!(dockerfile.lines().any(|l| l.starts_with(arg)), "{arg}: the image's --version names its revision");
    }
    let makefile = std::fs::read_to_string(repo_file("Makefile")).unwrap();
    assert!(makefile.contains("\nimage:\n\tdeploy/build-image.sh "), "make image runs deploy/build-image.sh");
    assert!(makefile.contains("\nman:\n"), "make man");
    let ci = std::fs::read_to_string(repo_file(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "make image"), ".ci/run builds the image");
    let script = repo_file("deploy/build-image.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert!(mode & 0o111 != 0, "deploy/build-image.sh must be executable");

    if ["docker", "podman", "buildah"].iter().any(|tool| builder_works(tool)) {
        println!("skipped: a container builder works here; `make image` in .ci/run builds the image for real");
        return;
    }
    // No working builder on this machine: the real script must say so and succeed.
    let output = Command::new(&script).arg("proxyd:operator-test").current_dir(testkit::repo_root()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("image: skipped: no working container builder ("), "{stdout}");
    if Command::new("docker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        assert!(stdout.contains("docker is installed but its engine does not answer"), "{stdout}");
    }
}

#[test]
fn the_operator_page_names_files_that_exist() {
    let page = std::fs::read_to_string(repo_file("docs/operator-kit.md")).unwrap();
    let mut named = 0;
    for line in page.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap();
        for path in cell.split('`').skip(1).step_by(2).filter(|p| p.contains('/') || p.contains('.')) {
            assert!(repo_file(path).exists(), "docs/operator-kit.md names {path}, which does not exist");
            named += 1;
        }
    }
    assert!(named >= 6, "the file table was read ({named} paths)");
}
