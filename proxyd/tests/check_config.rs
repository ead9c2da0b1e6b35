//! `proxyd --check-config` with the real binary: a valid configuration gives
//! exit 0 and a summary with the password redacted, without binding the
//! listen address; an invalid one gives exit 1 and every problem (config
//! file, flags, environment, policy table, TLS files, resolver), while a real
//! start with the same arguments still refuses with exactly the first one.

use std::process::{Command, Output};

use crate::harness::{ACL, compile};

fn proxyd(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proxyd"))
        .env_remove("PROXY_PASSWORD")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_valid_configuration_is_summarised_without_binding_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    // The listen port is taken: a check must not care (a running proxyd holds it).
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = occupied.local_addr().unwrap().port().to_string();
    let config = dir.path().join("proxyd.yaml");
    std::fs::write(&config, "connect_timeout: 7s\ndeny_ranges: [10.1.0.0/16]\nproxy_password_env: PW\n").unwrap();
    let output = proxyd(
        &[
            "--check-config",
            "--config-file",
            config.to_str().unwrap(),
            "--policy",
            table.to_str().unwrap(),
            "--listen-port",
            &port,
            "--resolver-address",
            "127.0.0.1:53",
            "--admin-listen",
            "127.0.0.1:9810",
            "--workers",
            "3",
            "--max-tunnels-per-client",
            "40",
        ],
        &[("PW", "correct-horse-battery")],
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.lines().count() <= 24, "one screen: {stdout}");
    for expected in [
        "configuration OK",
        &format!("127.0.0.1:{port} (not bound by --check-config)"),
        "127.0.0.1:9810 (not bound by --check-config)",
        "connect 7s",
        "deny ranges 10.1.0.0/16",
        "127.0.0.1:53 (configured, timeout 5s)",
        "from $PW (value redacted)",
        table.to_str().unwrap(),
        "4 role rules",
        "at most 10000, per client 40, requests per client per second off",
        "3 data-plane threads",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("correct-horse-battery"), "the password is never printed");
    // Nothing listens: the occupied port is still ours alone, and 9810 was never bound.
    drop(occupied);
}

#[test]
fn every_problem_is_listed_and_a_start_still_refuses_with_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxyd.yaml");
    std::fs::write(&config, "connect_timeout: 7\ndeny_ranges: [10.0.0.0/33]\ntime_connect: true\n").unwrap();
    let args = [
        "--config-file",
        config.to_str().unwrap(),
        "--policy",
        "/nonexistent/policy.bin",
        "--proxy-password-env",
        "PROXYD_TEST_UNSET_PASSWORD",
        "--tls-server-bundle-file",
        "/nonexistent/bundle.pem",
        "--resolver-address",
        "[fe80::1%2]:53",
        "--max-concurrent-connect-tunnels",
        "0",
    ];
    let mut check_args = vec!["--check-config"];
    check_args.extend(args);
    let output = proxyd(&check_args, &[]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "no summary for an invalid configuration");
    let problems: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("  - ")).collect();
    let expected = [
        "config file key `connect_timeout`: invalid duration \"7\"",
        "config file key `deny_ranges`: \"10.0.0.0/33\"",
        "--proxy-password-env PROXYD_TEST_UNSET_PASSWORD: the variable is unset or empty",
        "max concurrent connect tunnels: must be at least 1",
        "config file key `time_connect`",
        "policy /nonexistent/policy.bin:",
        "TLS: /nonexistent/bundle.pem: cannot read",
        "resolver: nameserver [fe80::1%2]:53: IPv6 zone ids are not supported",
    ];
    assert_eq!(problems.len(), expected.len(), "{stderr}");
    for (problem, expected) in problems.iter().zip(expected) {
        assert!(problem.starts_with(expected), "{problem:?} should start with {expected:?}\n{stderr}");
    }
    assert!(stderr.starts_with(&format!("proxyd: the configuration has {} problems:\n", expected.len())), "{stderr}");

    // A real start: one line, the first problem, exactly as before.
    let output = proxyd(&args, &[]);
    let start_stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(start_stderr, format!("proxyd: {}\n", problems[0]));
}

#[test]
fn a_bad_policy_alone_is_one_problem() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("acl.yaml");
    std::fs::write(&yaml, ACL).unwrap();
    let output =
        proxyd(&["--check-config", "--policy", yaml.to_str().unwrap(), "--resolver-address", "127.0.0.1:53"], &[]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.starts_with("proxyd: the configuration has 1 problem:\n  - policy "), "{stderr}");
    assert!(stderr.contains("policyc compile"), "{stderr}");
    let output = proxyd(&["--check-config"], &[]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("no policy: pass --policy FILE"), "{stderr}");
}

#[test]
fn a_bad_role_regex_fails_the_check_and_the_start_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let table = compile(dir.path(), ACL);
    let pki = testkit::pki::TestPki::new();
    let args = [
        "--policy",
        table.to_str().unwrap(),
        "--resolver-address",
        "127.0.0.1:53",
        "--tls-server-bundle-file",
        pki.server_bundle.to_str().unwrap(),
        "--tls-client-ca-file",
        pki.ca_pem.to_str().unwrap(),
        "--role-from",
        r"uri-san:^spiffe://example\.org/(ns/[^/]+/sa/(.+)$",
    ];
    let expected = "--role-from: \"uri-san:^spiffe://example\\\\.org/(ns/[^/]+/sa/(.+)$\": invalid regex at character 24: unclosed group";
    let output = proxyd(&[&["--check-config"], &args[..]].concat(), &[]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr, format!("proxyd: the configuration has 1 problem:\n  - {expected}\n"));
    let output = proxyd(&args, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(String::from_utf8(output.stderr).unwrap(), format!("proxyd: {expected}\n"));

    // The fixed rule passes, and the summary names it.
    let mut fixed = args;
    fixed[9] = r"uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$";
    let output = proxyd(&[&["--check-config"], &fixed[..]].concat(), &[]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(r"role from uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$"), "{stdout}");
}
