//! 1 + 16 + 2 bytes → family selector, address, port. Classification never
//! panics, and an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is allowed or
//! denied exactly like its IPv4 address, with the default rules and with
//! private ranges opened and a listener on port 4750.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use egress_policy::address::{AddressPolicy, AddressRules};

static POLICIES: LazyLock<[AddressPolicy; 2]> = LazyLock::new(|| {
    let other = AddressRules {
        unsafe_allow_private_ranges: true,
        self_addresses: vec!["0.0.0.0:4750".parse().unwrap(), "[::]:4750".parse().unwrap()],
        ..AddressRules::default()
    };
    [AddressPolicy::new(AddressRules::default()), AddressPolicy::new(other)]
});

fuzz_target!(|data: &[u8]| {
    let Some((&family, rest)) = data.split_first() else { return };
    let Some((addr, rest)) = rest.split_first_chunk::<16>() else { return };
    let Some((port, _)) = rest.split_first_chunk::<2>() else { return };
    let port = u16::from_be_bytes(*port);
    let ip = if family & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    };
    for policy in POLICIES.iter() {
        let verdict = policy.classify(SocketAddr::new(ip, port));
        let pair = match ip {
            IpAddr::V4(v4) => Some((v4, verdict, policy.classify(SocketAddr::new(v4.to_ipv6_mapped().into(), port)))),
            IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().map(|v4| (v4, policy.classify(SocketAddr::new(v4.into(), port)), verdict))
            }
        };
        if let Some((v4, as_v4, as_mapped)) = pair {
            assert_eq!(as_v4.allowed, as_mapped.allowed, "{v4}:{port}: as IPv4 {as_v4:?}, mapped {as_mapped:?}");
        }
    }
});
