//! The built-in address data: the IANA IPv4 and IPv6 Special-Purpose Address
//! Registries, plus the few blocks outside them that the address stage also
//! knows (multicast, deprecated site-local, the IPv4-compatible and SIIT
//! embeddings), as one table sorted by prefix, and the longest-prefix lookup
//! over it.
//!
//! Data and lookup only: what an entry means for a connection is decided in
//! [`crate::address`]. Pure: no I/O, no DNS, no clock; a lookup never
//! allocates.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Whether (and how) the addresses of an entry carry an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Embeds {
    /// No embedded IPv4 address.
    Nothing,
    /// The 32 bits from bit `at_bit` (counted from the most significant) are
    /// an IPv4 address, and the address stage classifies by it.
    Ipv4At {
        /// Where the IPv4 address starts, in bits from the most significant (96 for `::ffff:0:0/96`).
        at_bit: u8,
    },
    /// An IPv4 embedding the address stage never follows: denied outright.
    RefusedIpv4,
}

impl Embeds {
    /// The embedded IPv4 address, for an entry that is followed.
    pub fn ipv4(self, addr: Ipv6Addr) -> Option<Ipv4Addr> {
        match self {
            Embeds::Ipv4At { at_bit } if at_bit <= 96 => {
                // Truncating to u32 keeps exactly the 32 bits that start at `at_bit`.
                Some(Ipv4Addr::from((u128::from(addr) >> (96 - at_bit)) as u32))
            }
            _ => None,
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpecialPurpose {
    /// The address block.
    pub net: IpNet,
    /// The registry's name, lower-cased where it is not a proper name and
    /// shortened where the registry's is clumsy (`IPv4-IPv6 Translat.`).
    pub name: &'static str,
    /// The RFCs the registry cites.
    pub rfc: &'static str,
    /// The registry's "Globally Reachable" column. `N/A` and the empty cells
    /// of terminated entries are `false`.
    pub globally_reachable: bool,
    /// A short stable identifier, for metric labels and JSON. Several rows
    /// share one (`private`, `documentation`, `loopback`, ...).
    pub code: &'static str,
    /// Whether the block embeds IPv4 addresses.
    pub embeds: Embeds,
}

impl SpecialPurpose {
    /// The block as the registry writes it (`::ffff:0:0/96`, where Rust
    /// would print `::ffff:0.0.0.0/96`).
    pub fn prefix(&self) -> Prefix {
        Prefix(self.net)
    }

    /// Marks a row as embedding IPv4 addresses.
    const fn embeds(self, embeds: Embeds) -> Self {
        SpecialPurpose { embeds, ..self }
    }
}

/// "name prefix (RFC)", as in `loopback 127.0.0.0/8 (RFC 1122)`.
impl fmt::Display for SpecialPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.name, self.prefix(), self.rfc)
    }
}

/// A block in the registry's spelling; see [`SpecialPurpose::prefix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix(IpNet);

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let IpNet::V6(net) = self.0
            && let Some(v4) = net.network().to_ipv4_mapped()
        {
            let v4 = u32::from(v4);
            return write!(f, "::ffff:{:x}:{:x}/{}", v4 >> 16, v4 & 0xffff, net.prefix_len());
        }
        write!(f, "{}", self.0)
    }
}

const fn v4(
    a: [u8; 4],
    len: u8,
    globally_reachable: bool,
    code: &'static str,
    name: &'static str,
    rfc: &'static str,
) -> SpecialPurpose {
    let [a, b, c, d] = a;
    let net = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len));
    SpecialPurpose { net, name, rfc, globally_reachable, code, embeds: Embeds::Nothing }
}

const fn v6(
    s: [u16; 8],
    len: u8,
    globally_reachable: bool,
    code: &'static str,
    name: &'static str,
    rfc: &'static str,
) -> SpecialPurpose {
    let [a, b, c, d, e, f, g, h] = s;
    let net = IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len));
    SpecialPurpose { net, name, rfc, globally_reachable, code, embeds: Embeds::Nothing }
}

const MAPPED: Embeds = Embeds::Ipv4At { at_bit: 96 };
const NAT64: Embeds = Embeds::Ipv4At { at_bit: 96 };
const SIX_TO_FOUR: Embeds = Embeds::Ipv4At { at_bit: 16 };
const REFUSED: Embeds = Embeds::RefusedIpv4;

/// The special-purpose address table, sorted by prefix (network, then
/// length; IPv4 before IPv6).
///
/// Sources. Transcribed by hand, not fetched by a program: written from the
/// registries as the author knew them in 2025, then checked row by row
/// against a third-party copy of the registries' CSV exports whose pages
/// read "Last Updated 2025-10-09". Re-check against IANA before relying on
/// the dates.
/// * IANA IPv4 Special-Purpose Address Registry, last updated 2025-10-09:
///   all 25 records (192.0.0.170/32 and 192.0.0.171/32, one record there,
///   are two rows here). Newest entry 192.0.0.10/32, allocated 2017-02.
/// * IANA IPv6 Special-Purpose Address Registry, last updated 2025-10-09:
///   all 25 records. Newest entry 100:0:0:1::/64 (RFC 9780), allocated
///   2025-04.
/// * Not in those registries, marked `[+]`: IPv4 multicast 224.0.0.0/4
///   (RFC 5771), IPv6 multicast ff00::/8 and the deprecated IPv4-compatible
///   ::/96 (RFC 4291), deprecated site-local fec0::/10 (RFC 3879), SIIT
///   ::ffff:0:0:0/96 (RFC 2765).
///
/// When the registries change, update the rows here from
/// <https://www.iana.org/assignments/iana-ipv4-special-registry/iana-ipv4-special-registry-1.csv>
/// and `.../iana-ipv6-special-registry/iana-ipv6-special-registry-1.csv`;
/// the unit tests check order, nesting and the exceptions.
#[rustfmt::skip]
pub const SPECIAL_PURPOSE: &[SpecialPurpose] = &[
    //  prefix                                 len  global code                             name                                             RFC
    v4([0, 0, 0, 0],                            8, false, "this_network",                  "this network",                                  "RFC 791"),
    v4([0, 0, 0, 0],                           32, false, "unspecified",                   "this host on this network",                     "RFC 1122"),
    v4([10, 0, 0, 0],                           8, false, "private",                       "private-use",                                   "RFC 1918"),
    v4([100, 64, 0, 0],                        10, false, "cgnat",                         "shared address space (CGNAT)",                  "RFC 6598"),
    v4([127, 0, 0, 0],                          8, false, "loopback",                      "loopback",                                      "RFC 1122"),
    v4([169, 254, 0, 0],                       16, false, "link_local",                    "link-local",                                    "RFC 3927"),
    v4([172, 16, 0, 0],                        12, false, "private",                       "private-use",                                   "RFC 1918"),
    v4([192, 0, 0, 0],                         24, false, "ietf_protocol_assignments",     "IETF protocol assignments",                     "RFC 6890"),
    v4([192, 0, 0, 0],                         29, false, "ipv4_service_continuity",       "IPv4 service continuity prefix",                "RFC 7335"),
    v4([192, 0, 0, 8],                         32, false, "dummy",                         "IPv4 dummy address",                            "RFC 7600"),
    v4([192, 0, 0, 9],                         32, true,  "pcp_anycast",                   "Port Control Protocol anycast",                 "RFC 7723"),
    v4([192, 0, 0, 10],                        32, true,  "turn_anycast",                  "Traversal Using Relays around NAT anycast",     "RFC 8155"),
    v4([192, 0, 0, 170],                       32, false, "nat64_discovery",               "NAT64/DNS64 discovery",                         "RFC 8880, RFC 7050"),
    v4([192, 0, 0, 171],                       32, false, "nat64_discovery",               "NAT64/DNS64 discovery",                         "RFC 8880, RFC 7050"),
    v4([192, 0, 2, 0],                         24, false, "documentation",                 "documentation (TEST-NET-1)",                    "RFC 5737"),
    v4([192, 31, 196, 0],                      24, true,  "as112",                         "AS112-v4",                                      "RFC 7535"),
    v4([192, 52, 193, 0],                      24, true,  "amt",                           "AMT",                                           "RFC 7450"),
    // Terminated 2015-03; the registry's cells are empty.
    v4([192, 88, 99, 0],                       24, false, "deprecated_6to4_relay_anycast", "deprecated (6to4 relay anycast)",               "RFC 7526"),
    v4([192, 88, 99, 2],                       32, false, "6a44_relay_anycast",            "6a44-relay anycast address",                    "RFC 6751"),
    v4([192, 168, 0, 0],                       16, false, "private",                       "private-use",                                   "RFC 1918"),
    v4([192, 175, 48, 0],                      24, true,  "as112",                         "Direct Delegation AS112 Service",               "RFC 7534"),
    v4([198, 18, 0, 0],                        15, false, "benchmarking",                  "benchmarking",                                  "RFC 2544"),
    v4([198, 51, 100, 0],                      24, false, "documentation",                 "documentation (TEST-NET-2)",                    "RFC 5737"),
    v4([203, 0, 113, 0],                       24, false, "documentation",                 "documentation (TEST-NET-3)",                    "RFC 5737"),
    v4([224, 0, 0, 0],                          4, false, "multicast",                     "multicast",                                     "RFC 5771"), // [+]
    v4([240, 0, 0, 0],                          4, false, "reserved",                      "reserved",                                      "RFC 1112"),
    v4([255, 255, 255, 255],                   32, false, "broadcast",                     "limited broadcast",                             "RFC 919, RFC 8190"),

    v6([0, 0, 0, 0, 0, 0, 0, 0],               96, false, "ipv4_compatible",               "IPv4-compatible (deprecated)",                  "RFC 4291").embeds(REFUSED), // [+]
    v6([0, 0, 0, 0, 0, 0, 0, 0],              128, false, "unspecified",                   "unspecified",                                   "RFC 4291"),
    v6([0, 0, 0, 0, 0, 0, 0, 1],              128, false, "loopback",                      "loopback",                                      "RFC 4291"),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0],          96, false, "ipv4_mapped",                   "IPv4-mapped",                                   "RFC 4291").embeds(MAPPED),
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0],          96, false, "siit",                          "SIIT IPv4-translated",                          "RFC 2765").embeds(REFUSED), // [+]
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0],       96, true,  "nat64",                         "NAT64 well-known prefix",                       "RFC 6052").embeds(NAT64),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0],       48, false, "nat64_local_use",               "NAT64 local-use prefix",                        "RFC 8215").embeds(REFUSED),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0],           64, false, "discard_only",                  "discard-only",                                  "RFC 6666"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0],           64, false, "dummy",                         "dummy IPv6 prefix",                             "RFC 9780"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],          23, false, "ietf_protocol_assignments",     "IETF protocol assignments",                     "RFC 2928"),
    // Globally reachable: N/A in the registry.
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],          32, false, "teredo",                        "Teredo",                                        "RFC 4380, RFC 8190").embeds(REFUSED),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1],         128, true,  "pcp_anycast",                   "Port Control Protocol anycast",                 "RFC 7723"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2],         128, true,  "turn_anycast",                  "Traversal Using Relays around NAT anycast",     "RFC 8155"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3],         128, true,  "dns_sd_srp_anycast",            "DNS-SD Service Registration Protocol anycast",  "RFC 9665"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0],          48, false, "benchmarking",                  "benchmarking",                                  "RFC 5180"),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0],          32, true,  "amt",                           "AMT",                                           "RFC 7450"),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0],      48, true,  "as112",                         "AS112-v6",                                      "RFC 7535"),
    // Terminated 2014-03; the registry's cells are empty.
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0],       28, false, "deprecated_orchid",             "deprecated (previously ORCHID)",                "RFC 4843"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0],       28, true,  "orchid_v2",                     "ORCHIDv2",                                      "RFC 7343"),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0],       28, true,  "drone_remote_id",               "Drone Remote ID Protocol Entity Tags",          "RFC 9374"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],      32, false, "documentation",                 "documentation",                                 "RFC 3849"),
    // Globally reachable: N/A in the registry.
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0],          16, false, "6to4",                          "6to4",                                          "RFC 3056").embeds(SIX_TO_FOUR),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],  48, true,  "as112",                         "Direct Delegation AS112 Service",               "RFC 7534"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0],          20, false, "documentation",                 "documentation",                                 "RFC 9637"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0],          16, false, "srv6_sid",                      "segment routing (SRv6) SIDs",                   "RFC 9602"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0],           7, false, "private",                       "unique-local",                                  "RFC 4193, RFC 8190"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0],          10, false, "link_local",                    "link-local",                                    "RFC 4291"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0],          10, false, "site_local",                    "site-local (deprecated)",                       "RFC 3879"), // [+]
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0],           8, false, "multicast",                     "multicast",                                     "RFC 4291"), // [+]
];

/// Builds the lookup index if it is not built yet (it is built once, on
/// first use; afterwards lookups never allocate).
pub fn prepare() {
    LazyLock::force(&INDEX);
}

/// The most specific entry that contains `ip`, if any.
///
/// ```rust
/// use std::net::{IpAddr, Ipv4Addr};
/// use egress_policy::special_purpose;
/// let entry = special_purpose::lookup(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("loopback is special-purpose");
/// assert_eq!(entry.code, "loopback");
/// assert!(!entry.globally_reachable);
/// assert_eq!(entry.to_string(), "loopback 127.0.0.0/8 (RFC 1122)");
/// // The most specific entry wins: 192.0.0.9/32 inside 192.0.0.0/24 is globally reachable.
/// let anycast = special_purpose::lookup("192.0.0.9".parse()?).expect("listed");
/// assert!(anycast.globally_reachable);
/// assert_eq!(anycast.net.prefix_len(), 32);
/// assert_eq!(special_purpose::lookup("2001:db8::1".parse()?).map(|e| e.code), Some("documentation"));
/// // An address in no block has no entry: the address stage treats it as global.
/// assert_eq!(special_purpose::lookup("1.1.1.1".parse()?), None);
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
pub fn lookup(ip: IpAddr) -> Option<&'static SpecialPurpose> {
    let (spans, x) = match ip {
        IpAddr::V4(a) => (&INDEX.v4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (&INDEX.v6, u128::from(a)),
    };
    let after = spans.partition_point(|s| s.start <= x);
    let span = spans.get(after.checked_sub(1)?)?;
    (x <= span.end).then_some(span.entry)
}

/// A run of addresses whose most specific entry is the same.
#[derive(Debug)]
struct Span {
    start: u128,
    end: u128,
    entry: &'static SpecialPurpose,
}

/// The table flattened into sorted, disjoint spans, one list per family, so
/// a lookup is one binary search.
#[derive(Debug)]
struct Index {
    v4: Vec<Span>,
    v6: Vec<Span>,
}

static INDEX: LazyLock<Index> = LazyLock::new(|| Index {
    v4: flatten(SPECIAL_PURPOSE.iter().filter(|e| e.net.network().is_ipv4()), u128::from(u32::MAX)),
    v6: flatten(SPECIAL_PURPOSE.iter().filter(|e| e.net.network().is_ipv6()), u128::MAX),
});

/// First and last address of a block, as integers.
pub(crate) fn bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (u128::from(u32::from(n.network())), u128::from(u32::from(n.broadcast()))),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn flatten(entries: impl Iterator<Item = &'static SpecialPurpose>, max: u128) -> Vec<Span> {
    let entries: Vec<(u128, u128, &'static SpecialPurpose)> = entries
        .map(|e| {
            let (start, end) = bounds(&e.net);
            (start, end, e)
        })
        .collect();
    // Every place where the most specific entry can change.
    let mut points: Vec<u128> =
        entries.iter().flat_map(|&(start, end, _)| [Some(start), end.checked_add(1)]).flatten().collect();
    points.retain(|&p| p <= max);
    points.sort_unstable();
    points.dedup();
    let mut spans: Vec<Span> = Vec::new();
    for (i, &start) in points.iter().enumerate() {
        let end = points.get(i + 1).map_or(max, |next| next.saturating_sub(1));
        let most_specific = entries
            .iter()
            .filter(|&&(s, e, _)| s <= start && start <= e)
            .max_by_key(|(_, _, entry)| entry.net.prefix_len())
            .map(|&(_, _, entry)| entry);
        let Some(entry) = most_specific else { continue };
        match spans.last_mut() {
            Some(last) if std::ptr::eq(last.entry, entry) && last.end.checked_add(1) == Some(start) => last.end = end,
            _ => spans.push(Span { start, end, entry }),
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use proptest::prelude::*;

    /// The obvious longest-prefix match, to check the index against.
    fn linear(ip: IpAddr) -> Option<&'static SpecialPurpose> {
        SPECIAL_PURPOSE.iter().filter(|e| e.net.contains(&ip)).max_by_key(|e| e.net.prefix_len())
    }

    #[test]
    fn table_is_sorted_normalised_and_nested() {
        for pair in SPECIAL_PURPOSE.windows(2) {
            assert!(pair[0].net < pair[1].net, "{} must come before {}", pair[0].net, pair[1].net);
        }
        for e in SPECIAL_PURPOSE {
            assert_eq!(e.net, e.net.trunc(), "{} has host bits set", e.net);
            assert!(e.code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", e.code);
            assert!(e.rfc.starts_with("RFC "), "{}", e.rfc);
            // Blocks either nest or are disjoint, so "most specific" is well defined.
            for other in SPECIAL_PURPOSE {
                let overlap = e.net.contains(&other.net.network()) || other.net.contains(&e.net.network());
                assert!(
                    !overlap || e.net.contains(&other.net) || other.net.contains(&e.net),
                    "{} and {} overlap without nesting",
                    e.net,
                    other.net
                );
            }
            if let Embeds::Ipv4At { at_bit } = e.embeds {
                assert_eq!(e.net.prefix_len(), at_bit, "{}: the IPv4 address follows the prefix", e.net);
            }
        }
    }

    #[test]
    fn every_registry_record_is_here() {
        let v4 = SPECIAL_PURPOSE.iter().filter(|e| e.net.network().is_ipv4()).count();
        let v6 = SPECIAL_PURPOSE.len() - v4;
        assert_eq!((v4, v6), (25 + 1 + 1, 25 + 4), "registry records, split rows and [+] rows");
        let reachable: Vec<String> =
            SPECIAL_PURPOSE.iter().filter(|e| e.globally_reachable).map(|e| e.prefix().to_string()).collect();
        assert_eq!(
            reachable,
            [
                "192.0.0.9/32",
                "192.0.0.10/32",
                "192.31.196.0/24",
                "192.52.193.0/24",
                "192.175.48.0/24",
                "64:ff9b::/96",
                "2001:1::1/128",
                "2001:1::2/128",
                "2001:1::3/128",
                "2001:3::/32",
                "2001:4:112::/48",
                "2001:20::/28",
                "2001:30::/28",
                "2620:4f:8000::/48",
            ]
        );
    }

    #[test]
    fn index_agrees_with_linear_search_at_every_boundary() {
        for e in SPECIAL_PURPOSE {
            let (start, end) = bounds(&e.net);
            let probes = [start.wrapping_sub(1), start, start + (end - start) / 2, end, end.wrapping_add(1)];
            for x in probes {
                let ip = if e.net.network().is_ipv4() {
                    let Ok(x) = u32::try_from(x) else { continue };
                    IpAddr::V4(Ipv4Addr::from(x))
                } else {
                    IpAddr::V6(Ipv6Addr::from(x))
                };
                assert_eq!(lookup(ip), linear(ip), "{ip}");
            }
        }
    }

    #[test]
    fn embedded_ipv4_is_read_from_the_right_bits() {
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(MAPPED.ipv4(mapped), Some(Ipv4Addr::new(10, 1, 2, 3)));
        let nat64: Ipv6Addr = "64:ff9b::c000:201".parse().unwrap();
        assert_eq!(NAT64.ipv4(nat64), Some(Ipv4Addr::new(192, 0, 2, 1)));
        let six_to_four: Ipv6Addr = "2002:c000:201:ffff::1".parse().unwrap();
        assert_eq!(SIX_TO_FOUR.ipv4(six_to_four), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(REFUSED.ipv4(mapped), None);
        assert_eq!(Embeds::Nothing.ipv4(mapped), None);
    }

    proptest! {
        #[test]
        fn index_agrees_with_linear_search(v4 in any::<u32>(), v6 in any::<u128>(), prefix in 0usize..64) {
            let ip = IpAddr::V4(Ipv4Addr::from(v4));
            prop_assert_eq!(lookup(ip), linear(ip));
            let ip = IpAddr::V6(Ipv6Addr::from(v6));
            prop_assert_eq!(lookup(ip), linear(ip));
            // Random addresses rarely hit the small IPv6 blocks: also try one inside a table entry.
            let e = &SPECIAL_PURPOSE[prefix % SPECIAL_PURPOSE.len()];
            let (start, end) = bounds(&e.net);
            let inside = start + v6 % (end - start).saturating_add(1).max(1);
            let ip = if e.net.network().is_ipv4() {
                IpAddr::V4(Ipv4Addr::from(u32::try_from(inside).unwrap()))
            } else {
                IpAddr::V6(Ipv6Addr::from(inside))
            };
            prop_assert_eq!(lookup(ip), linear(ip));
        }
    }
}
