//! The address classifier through its public API: Smokescreen's
//! `TestClassifyAddr` / `TestUnsafeAllowPrivateRanges` tables (reference
//! §8.3) and the deliberate differences (§3.1, §9.8-9.9; PROXY.md §4 wins),
//! then `policyc explain --ip`.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};

use egress_policy::address::{AddressPolicy, AddressRules};
use egress_policy::policy::AddressSpec;
use serde_json::Value;

use crate::repo_root;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// Smokescreen's rule names, and what we call the same outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Smokescreen {
    AllowDefault,
    AllowUserConfigured,
    DenyPrivateRange,
    DenyUserConfigured,
    DenyCgnat,
    DenyNotGlobalUnicast,
    DenyIpv6Embedding,
    DenySelfConnection,
}

impl Smokescreen {
    fn allowed(self) -> bool {
        matches!(self, Smokescreen::AllowDefault | Smokescreen::AllowUserConfigured)
    }
}

/// `testConfig` + TestClassifyAddr's additions (§8.3). Smokescreen's
/// "LocalIPs x listen port" is our `self_addresses`.
fn test_classify_addr_policy() -> AddressPolicy {
    let nets = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>();
    AddressPolicy::new(AddressRules {
        allow_ranges: nets(&["8.8.9.0/24", "10.0.1.0/24", "172.16.1.0/24", "192.168.1.0/24", "127.0.1.0/24"]),
        deny_ranges: nets(&["1.1.1.1/32"]),
        allow_addresses: vec!["10.0.0.1:321".parse::<AddressSpec>().unwrap()],
        deny_addresses: vec!["8.8.8.8:321".parse::<AddressSpec>().unwrap()],
        unsafe_allow_private_ranges: false,
        self_addresses: vec![addr("127.0.0.1", 4750), addr("192.168.1.100", 4750), addr("::1", 4750)],
    })
}

#[test]
fn smokescreen_test_classify_addr() {
    use Smokescreen as S;
    let p = test_classify_addr_policy();
    // (ip, port, Smokescreen's answer, our rule code, why we differ if we do)
    let rows: &[(&str, u16, Smokescreen, &str, Option<&str>)] = &[
        ("8.8.8.8", 1, S::AllowDefault, "global", None),
        ("8.8.9.8", 1, S::AllowUserConfigured, "operator_allow_range", None),
        ("10.0.0.1", 1, S::DenyPrivateRange, "private", None),
        ("10.0.0.1", 321, S::AllowUserConfigured, "operator_allow_address", None),
        ("10.0.1.1", 1, S::AllowUserConfigured, "operator_allow_range", None),
        ("172.16.0.1", 1, S::DenyPrivateRange, "private", None),
        ("172.16.1.1", 1, S::AllowUserConfigured, "operator_allow_range", None),
        ("192.168.0.1", 1, S::DenyPrivateRange, "private", None),
        ("192.168.1.1", 1, S::AllowUserConfigured, "operator_allow_range", None),
        ("100.64.0.1", 1, S::DenyCgnat, "cgnat", None),
        ("100.64.0.100", 1, S::DenyCgnat, "cgnat", None),
        ("100.127.255.254", 1, S::DenyCgnat, "cgnat", None),
        ("100.63.255.254", 1, S::AllowDefault, "global", None),
        ("100.128.0.1", 1, S::AllowDefault, "global", None),
        ("8.8.8.8", 321, S::DenyUserConfigured, "operator_deny_address", None),
        ("1.1.1.1", 1, S::DenyUserConfigured, "operator_deny_range", None),
        ("127.0.0.1", 1, S::DenyNotGlobalUnicast, "loopback", None),
        ("127.255.255.255", 1, S::DenyNotGlobalUnicast, "loopback", None),
        ("::1", 1, S::DenyNotGlobalUnicast, "loopback", None),
        ("127.0.1.1", 1, S::AllowUserConfigured, "operator_allow_range", None),
        ("169.254.169.254", 1, S::DenyNotGlobalUnicast, "link_local", None),
        ("255.255.255.255", 1, S::DenyNotGlobalUnicast, "broadcast", None),
        ("ff02::2", 1, S::DenyNotGlobalUnicast, "multicast", None),
        // NAT64 and 6to4 carrying a non-global IPv4 address: denied by that
        // address's rule (we follow the embedding instead of refusing it).
        ("64:ff9b::ac1c:5", 1, S::DenyIpv6Embedding, "private", None),
        ("64:ff9b::c000:201", 1, S::DenyIpv6Embedding, "documentation", None),
        ("64:ff9b::a00:1", 1, S::DenyIpv6Embedding, "private", None),
        (
            "64:ff9b::808:808",
            1,
            S::DenyIpv6Embedding,
            "global",
            Some("PROXY.md §4: NAT64 is classified by the embedded IPv4 address, so DNS64 networks keep working"),
        ),
        ("64:ff9b::ffff:ffff", 1, S::DenyIpv6Embedding, "broadcast", None),
        ("2002:c000:201::1", 1, S::DenyIpv6Embedding, "documentation", None),
        ("2002:a00:1::1", 1, S::DenyIpv6Embedding, "private", None),
        (
            "2002:808:808::1",
            1,
            S::DenyIpv6Embedding,
            "global",
            Some("PROXY.md §4: 6to4 is classified by the embedded IPv4 address"),
        ),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", 1, S::DenyIpv6Embedding, "teredo", None),
        ("2001:0:1234:5678:9abc:def0:1234:5678", 1, S::DenyIpv6Embedding, "teredo", None),
        ("2001:4860:4860::8888", 1, S::AllowDefault, "global", None),
        ("2606:4700:4700::1111", 1, S::AllowDefault, "global", None),
        ("64:ff9c::1", 1, S::AllowDefault, "global", None),
        ("127.0.0.1", 4750, S::DenySelfConnection, "self_connection", None),
        ("192.168.1.100", 4750, S::DenySelfConnection, "self_connection", None), // beats the 192.168.1.0/24 allow
        ("::1", 4750, S::DenySelfConnection, "self_connection", None),
        ("127.0.0.1", 8080, S::DenyNotGlobalUnicast, "loopback", None),
        ("8.8.8.8", 4750, S::AllowDefault, "global", None),
    ];
    for &(ip, port, theirs, code, differs) in rows {
        let v = p.classify(addr(ip, port));
        assert_eq!(v.rule.code(), code, "{ip}:{port}: {}", v.rule);
        match differs {
            None => assert_eq!(v.allowed, theirs.allowed(), "{ip}:{port} must agree with Smokescreen ({theirs:?})"),
            Some(why) => assert_ne!(v.allowed, theirs.allowed(), "{ip}:{port} differs on purpose: {why}"),
        }
    }
}

#[test]
fn smokescreen_test_unsafe_allow_private_ranges() {
    let p = AddressPolicy::new(AddressRules {
        deny_ranges: vec!["192.168.0.0/24".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
        unsafe_allow_private_ranges: true,
        ..AddressRules::default()
    });
    let rows: &[(&str, u16, bool, &str)] = &[
        ("8.8.8.8", 1, true, "global"),
        ("10.0.0.1", 1, false, "operator_deny_range"),
        ("10.0.0.1", 321, false, "operator_deny_range"),
        ("10.0.1.1", 1, false, "operator_deny_range"),
        ("192.168.0.1", 1, false, "operator_deny_range"),
        // Smokescreen says "Allow: Default"; same verdict, we name the flag.
        ("172.16.0.1", 1, true, "unsafe_allow_private"),
        ("172.16.1.1", 1, true, "unsafe_allow_private"),
        ("192.168.1.1", 1, true, "unsafe_allow_private"),
        ("100.64.0.1", 1, false, "cgnat"),
        ("100.64.0.100", 1, false, "cgnat"),
        ("100.127.255.254", 1, false, "cgnat"),
        ("127.0.0.1", 1, false, "loopback"),
        ("127.255.255.255", 1, false, "loopback"),
        ("::1", 1, false, "loopback"),
        ("169.254.169.254", 1, false, "link_local"),
        ("255.255.255.255", 1, false, "broadcast"),
        ("ff02::2", 1, false, "multicast"),
    ];
    for &(ip, port, allowed, code) in rows {
        let v = p.classify(addr(ip, port));
        assert_eq!((v.allowed, v.rule.code()), (allowed, code), "{ip}:{port}: {}", v.rule);
    }
}

/// Where PROXY.md §4 deliberately departs from Smokescreen (reference §3.1
/// "notable default classifications" and §9.8-9.9).
#[test]
fn deliberate_differences_from_smokescreen() {
    let defaults = AddressPolicy::new(AddressRules::default());
    // §9.9: Smokescreen allows these by default; they are special-purpose
    // blocks that are not globally reachable, so we deny them.
    for (ip, code) in [
        ("0.1.2.3", "this_network"),
        ("240.0.0.1", "reserved"),
        ("192.0.0.1", "ipv4_service_continuity"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.88.99.1", "deprecated_6to4_relay_anycast"),
        ("::10.0.0.1", "ipv4_compatible"),
        ("::8.8.8.8", "ipv4_compatible"),
        ("64:ff9b:1::808:808", "nat64_local_use"),
        ("fec0::1", "site_local"),
        ("100::1", "discard_only"),
        ("2001:db8::1", "documentation"),
        ("2001:10::1", "deprecated_orchid"),
        ("2001:2::1", "benchmarking"),
        ("3fff::1", "documentation"),
        ("5f00::1", "srv6_sid"),
    ] {
        let v = defaults.classify(addr(ip, 443));
        assert_eq!((v.allowed, v.rule.code()), (false, code), "{ip}: {}", v.rule);
    }
    // Registry entries that are globally reachable stay allowed, like in Smokescreen.
    for ip in ["2001:20::1", "192.0.0.9", "2001:1::1"] {
        assert!(defaults.classify(addr(ip, 443)).allowed, "{ip}");
    }

    // §9.8: in Smokescreen any allow beats any deny (issue #236). Here the
    // most specific rule wins, and a deny wins a tie.
    let p = AddressPolicy::new(AddressRules {
        allow_ranges: vec!["10.0.0.0/8".parse().unwrap(), "0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        deny_ranges: vec!["10.1.0.0/16".parse().unwrap()],
        ..AddressRules::default()
    });
    let v = p.classify(addr("10.1.2.3", 443));
    assert_eq!((v.allowed, v.rule.to_string()), (false, "operator deny range 10.1.0.0/16".to_owned()));
    // Like Smokescreen, an operator allow of 0.0.0.0/0 does reopen IPv4
    // loopback and metadata (operator rules beat the built-in set)...
    assert!(p.classify(addr("169.254.169.254", 80)).allowed);
    // ...but, unlike Smokescreen, ::/0 does not reach into IPv4 embedded in
    // IPv6: only a rule at least as specific as the embedding prefix does.
    let q = AddressPolicy::new(AddressRules { allow_ranges: vec!["::/0".parse().unwrap()], ..AddressRules::default() });
    for ip in ["::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a00:1::1"] {
        assert!(!q.classify(addr(ip, 80)).allowed, "{ip}");
    }
    // Smokescreen reads `--deny-address 1.2.3.4:0` as "every port" and accepts
    // port 99999 (never matching); we refuse both and name the input.
    for bad in ["1.2.3.4:0", "1.2.3.4:99999"] {
        let e = bad.parse::<AddressSpec>().unwrap_err().to_string();
        assert!(e.contains(&format!("{bad:?}")), "{e}");
    }
}

fn explain(args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_policyc"))
        .arg("explain")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("policyc runs");
    (
        status.code().expect("policyc exits normally"),
        String::from_utf8(stdout).expect("UTF-8"),
        String::from_utf8(stderr).expect("UTF-8"),
    )
}

#[test]
fn explain_ip_json() {
    let (code, stdout, stderr) =
        explain(&["policies/fly.yaml", "authed", "metadata.example:80", "--ip", "169.254.169.254", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    // The name stage's decision is unchanged; the address verdict is extra.
    assert_eq!(v["decision"], "report", "{stdout}");
    assert_eq!(
        v["address"],
        serde_json::json!({
            "ip": "169.254.169.254",
            "allowed": false,
            "rule": "link-local 169.254.0.0/16 (RFC 3927)",
            "rule_code": "link_local",
        }),
        "{stdout}"
    );

    let (code, stdout, _) =
        explain(&["policies/fly.yaml", "authed", "[2001:db8::1]:8443", "--ip", "::ffff:8.8.8.8", "--format", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["address"]["allowed"], true, "{stdout}");
    assert_eq!(v["address"]["rule"], "IPv4-mapped ::ffff:0:0/96 of 8.8.8.8: globally reachable", "{stdout}");
    assert_eq!(v["address"]["rule_code"], "global", "{stdout}");

    // Without --ip there is no address object.
    let (code, stdout, _) = explain(&["policies/fly.yaml", "authed", "example.com", "--format", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(v.get("address").is_none(), "{stdout}");
}

#[test]
fn explain_ip_human_and_port() {
    let (code, stdout, stderr) = explain(&["policies/fly.yaml", "", "example.com", "--ip", "127.0.0.1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("decision:     deny\n"), "{stdout}");
    assert!(stdout.contains("\naddress:      127.0.0.1 denied (loopback 127.0.0.0/8 (RFC 1122))\n"), "{stdout}");

    let (code, stdout, _) = explain(&["policies/fly.yaml", "authed", "example.com:8443", "--ip", "2606:4700::1111"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\naddress:      2606:4700::1111 allowed (globally reachable)\n"), "{stdout}");

    let (code, _, stderr) = explain(&["policies/fly.yaml", "authed", "example.com", "--ip", "example.com"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--ip"), "{stderr}");
}
