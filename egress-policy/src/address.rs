//! The address classifier: whether the proxy may connect to one resolved
//! address or IP literal, and which rule said so (PROXY.md §4). `proxyd`
//! calls it for every candidate address; `policyc explain --ip` shows it.
//!
//! Order of decision, per `(IP, port)`:
//! 1. the proxy's own listening sockets: always denied, whatever else says;
//! 2. operator rules (`--allow-range`, `--deny-range`, `--allow-address`,
//!    `--deny-address`): the most specific match wins (prefix length, then
//!    `IP:PORT` over `IP`), an operator deny beats an operator allow of equal
//!    specificity, and any operator rule beats the built-in set;
//! 3. IPv4-mapped, NAT64 `64:ff9b::/96` and 6to4 addresses: classified by the
//!    embedded IPv4 address (all steps, same port). An operator rule on the
//!    IPv6 address overrules that only if it is at least as long as the
//!    embedding prefix (so `allow ::/0` does not reopen `::ffff:127.0.0.1`)
//!    and outranks the IPv4 verdict: it outranks a built-in verdict, and an
//!    operator rule on the IPv4 address by the usual precedence, an IPv4 /n
//!    counting as /(prefix+n). The other IPv4 embeddings (IPv4-compatible,
//!    SIIT, local-use NAT64, Teredo) are denied outright, like any other
//!    built-in entry (an operator rule still beats them);
//! 4. `--unsafe-allow-private-ranges`: RFC 1918 and `fc00::/7` only;
//! 5. the special-purpose table ([`crate::special_purpose`]): the most
//!    specific entry decides, denied unless the registry says globally
//!    reachable;
//! 6. everything else is globally reachable: allowed.
//!
//! Policy v2 adds two layers on top, in [`AddressPolicy::classify_with`]:
//! the policy's own `network` rules and the request's internal destination
//! (an audited exception). Flags are a floor: what an operator rule denies
//! stays denied; a policy deny always applies; a policy allow or an
//! exception only opens an address the built-in set denied, and never one
//! of the never-openable set ([`never_openable`]: cloud metadata, loopback,
//! unspecified, multicast, broadcast).
//!
//! Pure: no I/O, no DNS, no clock. [`AddressPolicy::classify`] never
//! allocates and never panics. It must never allow an address of a denied
//! special-purpose block unless an operator rule covers it, and never allow
//! the proxy's own listening socket.

use std::cmp::Reverse;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::{AddressSpec, InternalDestination, NetworkRules};
use crate::special_purpose::{self, Embeds, SpecialPurpose};

/// The operator's address configuration, already parsed. `Default` is no
/// operator rules: the built-in set alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressRules {
    /// `--allow-range`: allowed even if special-purpose.
    pub allow_ranges: Vec<IpNet>,
    /// `--deny-range`: denied even if globally reachable.
    pub deny_ranges: Vec<IpNet>,
    /// `--allow-address IP` or `IP:PORT`.
    pub allow_addresses: Vec<AddressSpec>,
    /// `--deny-address IP` or `IP:PORT`.
    pub deny_addresses: Vec<AddressSpec>,
    /// `--unsafe-allow-private-ranges`: allows 10/8, 172.16/12, 192.168/16
    /// and fc00::/7, nothing else (not loopback, link-local or CGNAT).
    pub unsafe_allow_private_ranges: bool,
    /// The proxy's own listening sockets. An unspecified IP (`0.0.0.0`, `::`)
    /// stands for every loopback address on that port; add interface
    /// addresses here to protect them too.
    pub self_addresses: Vec<SocketAddr>,
}

/// One operator rule, carrying what the operator wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperatorRule {
    /// `--allow-address IP` or `IP:PORT`.
    AllowAddress(AddressSpec),
    /// `--deny-address IP` or `IP:PORT`.
    DenyAddress(AddressSpec),
    /// `--allow-range CIDR` (host bits dropped).
    AllowRange(IpNet),
    /// `--deny-range CIDR` (host bits dropped).
    DenyRange(IpNet),
}

impl OperatorRule {
    /// Whether the rule allows (an `--allow-*` rule) rather than denies.
    pub fn allows(&self) -> bool {
        matches!(self, OperatorRule::AllowAddress(_) | OperatorRule::AllowRange(_))
    }

    fn prefix_len(&self) -> u8 {
        match self {
            OperatorRule::AllowAddress(spec) | OperatorRule::DenyAddress(spec) => match spec.ip() {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            OperatorRule::AllowRange(net) | OperatorRule::DenyRange(net) => net.prefix_len(),
        }
    }

    /// Larger wins: prefix length, then a port, then deny over allow.
    /// `offset` moves an IPv4 rule into the IPv6 embedding that carries it.
    fn precedence(&self, offset: u8) -> (u16, bool, bool) {
        let port = match self {
            OperatorRule::AllowAddress(spec) | OperatorRule::DenyAddress(spec) => spec.port().is_some(),
            OperatorRule::AllowRange(_) | OperatorRule::DenyRange(_) => false,
        };
        (u16::from(self.prefix_len()) + u16::from(offset), port, !self.allows())
    }

    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        match self {
            OperatorRule::AllowAddress(spec) | OperatorRule::DenyAddress(spec) => spec.matches(ip, port),
            OperatorRule::AllowRange(net) | OperatorRule::DenyRange(net) => net.contains(&ip),
        }
    }

    /// A bounded label for metrics and JSON: `operator_{allow,deny}_{address,range}`.
    pub fn code(&self) -> &'static str {
        match self {
            OperatorRule::AllowAddress(_) => "operator_allow_address",
            OperatorRule::DenyAddress(_) => "operator_deny_address",
            OperatorRule::AllowRange(_) => "operator_allow_range",
            OperatorRule::DenyRange(_) => "operator_deny_range",
        }
    }
}

impl fmt::Display for OperatorRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorRule::AllowAddress(spec) => write!(f, "operator allow address {spec}"),
            OperatorRule::DenyAddress(spec) => write!(f, "operator deny address {spec}"),
            OperatorRule::AllowRange(net) => write!(f, "operator allow range {net}"),
            OperatorRule::DenyRange(net) => write!(f, "operator deny range {net}"),
        }
    }
}

/// Which rule decided about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressRule {
    /// The destination is the proxy's own listening socket.
    SelfConnection {
        /// The listening socket the destination is (or stands for).
        listener: SocketAddr,
    },
    /// An operator rule.
    Operator(OperatorRule),
    /// A private-use block allowed by `--unsafe-allow-private-ranges`.
    UnsafeAllowPrivate(&'static SpecialPurpose),
    /// The most specific special-purpose entry; allowed only if globally
    /// reachable.
    SpecialPurpose(&'static SpecialPurpose),
    /// IPv4-mapped, NAT64 or 6to4: the embedded IPv4 address decided.
    EmbeddedIpv4 {
        /// The special-purpose block that embeds the IPv4 address.
        embedding: &'static SpecialPurpose,
        /// The embedded IPv4 address.
        ipv4: Ipv4Addr,
        /// The verdict on the IPv4 address, which is the verdict on the IPv6 one.
        inner: Ipv4Verdict,
    },
    /// IPv4-compatible, SIIT, local-use NAT64 or Teredo: denied outright.
    DeniedEmbedding(&'static SpecialPurpose),
    /// In no special-purpose block: globally reachable.
    Global,
    /// A rule of the policy's `network` section (v2).
    Policy(OperatorRule),
    /// The request's internal destination opened this network (v2).
    InternalDestination {
        /// The exception's CIDR that contains the address.
        network: IpNet,
    },
    /// Never opened by a policy allow or an exception (metadata, loopback, ...).
    NeverOpenable {
        /// The never-openable block the address is in.
        block: IpNet,
        /// Its name, for logs and `explain`.
        name: &'static str,
    },
}

impl AddressRule {
    /// A bounded label for metrics and JSON: the special-purpose entry's code
    /// (`loopback`, `private`, `link_local`, `cgnat`, ...), `global`,
    /// `self_connection`, `unsafe_allow_private`, or `operator_{allow,deny}_{address,range}`.
    /// An embedded IPv4 address reports its own rule's code.
    pub fn code(&self) -> &'static str {
        match self {
            AddressRule::SelfConnection { .. } => "self_connection",
            AddressRule::Operator(rule) => rule.code(),
            AddressRule::UnsafeAllowPrivate(_) => "unsafe_allow_private",
            AddressRule::SpecialPurpose(entry) | AddressRule::DeniedEmbedding(entry) => entry.code,
            AddressRule::EmbeddedIpv4 { inner, .. } => inner.rule.code(),
            AddressRule::Global => "global",
            AddressRule::Policy(rule) => match rule {
                OperatorRule::AllowAddress(_) => "policy_allow_address",
                OperatorRule::DenyAddress(_) => "policy_deny_address",
                OperatorRule::AllowRange(_) => "policy_allow_range",
                OperatorRule::DenyRange(_) => "policy_deny_range",
            },
            AddressRule::InternalDestination { .. } => "internal_destination",
            AddressRule::NeverOpenable { .. } => "never_openable",
        }
    }
}

impl fmt::Display for AddressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressRule::SelfConnection { listener } => write!(f, "self connection (the proxy listens on {listener})"),
            AddressRule::Operator(rule) => write!(f, "{rule}"),
            AddressRule::UnsafeAllowPrivate(entry) => write!(f, "{entry} allowed by --unsafe-allow-private-ranges"),
            AddressRule::SpecialPurpose(entry) => write!(f, "{entry}"),
            AddressRule::EmbeddedIpv4 { embedding, ipv4, inner } => {
                write!(f, "{} {} of {ipv4}: {}", embedding.name, embedding.prefix(), inner.rule)
            }
            AddressRule::DeniedEmbedding(entry) => write!(f, "{entry}, an IPv4 embedding denied outright"),
            AddressRule::Global => f.write_str("globally reachable"),
            AddressRule::Policy(rule) => {
                let text = rule.to_string();
                write!(f, "policy network {}", text.strip_prefix("operator ").unwrap_or(&text))
            }
            AddressRule::InternalDestination { network } => write!(f, "internal destination {network}"),
            AddressRule::NeverOpenable { block, name } => {
                write!(f, "{name} {block}, which no policy rule or exception can open")
            }
        }
    }
}

/// The rule that decided about an embedded IPv4 address: an [`AddressRule`]
/// that cannot itself be an embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4Rule {
    /// The address is the proxy's own listening socket: denied.
    SelfConnection {
        /// The listening socket the destination is (or stands for).
        listener: SocketAddr,
    },
    /// An operator rule.
    Operator(OperatorRule),
    /// A private-use block allowed by `--unsafe-allow-private-ranges`.
    UnsafeAllowPrivate(&'static SpecialPurpose),
    /// The most specific special-purpose entry; allowed only if globally
    /// reachable.
    SpecialPurpose(&'static SpecialPurpose),
    /// In no special-purpose block: globally reachable.
    Global,
}

impl Ipv4Rule {
    /// The same bounded label as [`AddressRule::code`].
    pub fn code(&self) -> &'static str {
        AddressRule::from(*self).code()
    }
}

impl From<Ipv4Rule> for AddressRule {
    fn from(rule: Ipv4Rule) -> Self {
        match rule {
            Ipv4Rule::SelfConnection { listener } => AddressRule::SelfConnection { listener },
            Ipv4Rule::Operator(rule) => AddressRule::Operator(rule),
            Ipv4Rule::UnsafeAllowPrivate(entry) => AddressRule::UnsafeAllowPrivate(entry),
            Ipv4Rule::SpecialPurpose(entry) => AddressRule::SpecialPurpose(entry),
            Ipv4Rule::Global => AddressRule::Global,
        }
    }
}

impl fmt::Display for Ipv4Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        AddressRule::from(*self).fmt(f)
    }
}

/// The verdict on an IPv4 address (alone or embedded in IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Verdict {
    /// Whether the proxy may connect.
    pub allowed: bool,
    /// The rule that decided.
    pub rule: Ipv4Rule,
}

/// Whether the proxy may connect to an address, and the rule that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressVerdict {
    /// Whether the proxy may connect; `proxyd` refuses the CONNECT when no
    /// resolved address is allowed.
    pub allowed: bool,
    /// The rule that decided, shown by `policyc explain --ip` and logged by `proxyd`.
    pub rule: AddressRule,
}

impl From<Ipv4Verdict> for AddressVerdict {
    fn from(v: Ipv4Verdict) -> Self {
        AddressVerdict { allowed: v.allowed, rule: v.rule.into() }
    }
}

/// The blocks `--unsafe-allow-private-ranges` opens: RFC 1918 and fc00::/7.
const UNSAFE_PRIVATE: [IpNet; 4] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16)),
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7)),
];

/// [`AddressRules`] prepared for classifying: built once, then shared.
#[derive(Clone, Debug)]
pub struct AddressPolicy {
    /// Operator rules per family, highest precedence first, so the first
    /// match is the winner.
    v4_rules: Vec<OperatorRule>,
    v6_rules: Vec<OperatorRule>,
    unsafe_allow_private_ranges: bool,
    self_addresses: Vec<SocketAddr>,
}

impl AddressPolicy {
    /// Prepares the operator rules (host bits of ranges dropped, IPv4-mapped
    /// addresses read as IPv4, sorted by precedence) and builds the
    /// special-purpose index, so that [`AddressPolicy::classify`] never allocates.
    pub fn new(rules: AddressRules) -> Self {
        let AddressRules {
            allow_ranges,
            deny_ranges,
            allow_addresses,
            deny_addresses,
            unsafe_allow_private_ranges,
            self_addresses,
        } = rules;
        // Host bits are dropped (10.1.2.3/8 is 10.0.0.0/8), as Smokescreen does.
        let all = allow_ranges
            .into_iter()
            .map(|net| OperatorRule::AllowRange(net.trunc()))
            .chain(deny_ranges.into_iter().map(|net| OperatorRule::DenyRange(net.trunc())))
            .chain(allow_addresses.into_iter().map(|spec| OperatorRule::AllowAddress(spec.canonical())))
            .chain(deny_addresses.into_iter().map(|spec| OperatorRule::DenyAddress(spec.canonical())));
        let (mut v4_rules, mut v6_rules): (Vec<_>, Vec<_>) = all.partition(|rule| match rule {
            OperatorRule::AllowAddress(spec) | OperatorRule::DenyAddress(spec) => spec.ip().is_ipv4(),
            OperatorRule::AllowRange(net) | OperatorRule::DenyRange(net) => matches!(net, IpNet::V4(_)),
        });
        v4_rules.sort_by_key(|rule| Reverse(rule.precedence(0)));
        v6_rules.sort_by_key(|rule| Reverse(rule.precedence(0)));
        let self_addresses =
            self_addresses.into_iter().map(|s| SocketAddr::new(s.ip().to_canonical(), s.port())).collect();
        // Build the special-purpose index now, so that classify never allocates.
        special_purpose::prepare();
        AddressPolicy { v4_rules, v6_rules, unsafe_allow_private_ranges, self_addresses }
    }

    /// Classifies one destination.
    ///
    /// ```rust
    /// use std::net::SocketAddr;
    /// use egress_policy::address::{AddressPolicy, AddressRule, AddressRules, OperatorRule};
    /// let built_in = AddressPolicy::new(AddressRules::default());
    /// // Loopback and documentation blocks are special-purpose: denied, naming the entry.
    /// let loopback: SocketAddr = "127.0.0.1:443".parse()?;
    /// let verdict = built_in.classify(loopback);
    /// assert!(!verdict.allowed);
    /// assert_eq!(verdict.rule.code(), "loopback");
    /// assert_eq!(verdict.rule.to_string(), "loopback 127.0.0.0/8 (RFC 1122)");
    /// assert!(!built_in.classify("192.0.2.10:443".parse()?).allowed);
    /// // IPv4-mapped IPv6 is classified by the IPv4 address it carries.
    /// assert!(!built_in.classify("[::ffff:127.0.0.1]:443".parse()?).allowed);
    /// // An address in no special-purpose block is globally reachable: allowed.
    /// // (Classification only reads the address; nothing is sent anywhere.)
    /// let public = built_in.classify("1.1.1.1:443".parse()?);
    /// assert!(public.allowed);
    /// assert_eq!(public.rule, AddressRule::Global);
    /// // An operator `--allow-range` beats the built-in set.
    /// let operator = AddressPolicy::new(AddressRules {
    ///     allow_ranges: vec!["192.0.2.0/24".parse()?],
    ///     ..AddressRules::default()
    /// });
    /// let verdict = operator.classify("192.0.2.10:443".parse()?);
    /// assert!(verdict.allowed);
    /// assert!(matches!(verdict.rule, AddressRule::Operator(OperatorRule::AllowRange(_))));
    /// assert_eq!(verdict.rule.code(), "operator_allow_range");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn classify(&self, addr: SocketAddr) -> AddressVerdict {
        match addr.ip() {
            IpAddr::V4(ip) => self.classify_v4(ip, addr.port()).into(),
            IpAddr::V6(ip) => self.classify_v6(ip, addr.port()),
        }
    }

    fn classify_v4(&self, ip: Ipv4Addr, port: u16) -> Ipv4Verdict {
        let addr = IpAddr::V4(ip);
        if let Some(listener) = self.self_connection(addr, port) {
            return Ipv4Verdict { allowed: false, rule: Ipv4Rule::SelfConnection { listener } };
        }
        if let Some(rule) = first_match(&self.v4_rules, addr, port) {
            return Ipv4Verdict { allowed: rule.allows(), rule: Ipv4Rule::Operator(rule) };
        }
        match special_purpose::lookup(addr) {
            None => Ipv4Verdict { allowed: true, rule: Ipv4Rule::Global },
            Some(entry) if self.unsafe_allows(entry) => {
                Ipv4Verdict { allowed: true, rule: Ipv4Rule::UnsafeAllowPrivate(entry) }
            }
            // No IPv4 block embeds anything; were one to, `embeds` is ignored here
            // and the registry's reachability decides.
            Some(entry) => Ipv4Verdict { allowed: entry.globally_reachable, rule: Ipv4Rule::SpecialPurpose(entry) },
        }
    }

    fn classify_v6(&self, ip: Ipv6Addr, port: u16) -> AddressVerdict {
        let addr = IpAddr::V6(ip);
        if let Some(listener) = self.self_connection(addr, port) {
            return AddressVerdict { allowed: false, rule: AddressRule::SelfConnection { listener } };
        }
        let operator = first_match(&self.v6_rules, addr, port);
        let entry = special_purpose::lookup(addr);
        if let Some(embedding) = entry
            && let Embeds::Ipv4At { at_bit } = embedding.embeds
            && let Some(ipv4) = embedding.embeds.ipv4(ip)
        {
            let inner = self.classify_v4(ipv4, port);
            let embedded =
                AddressVerdict { allowed: inner.allowed, rule: AddressRule::EmbeddedIpv4 { embedding, ipv4, inner } };
            // Only a rule about the embedding's own space (at least as long as its
            // prefix) can overrule the embedded address.
            let Some(rule) = operator.filter(|rule| rule.prefix_len() >= at_bit) else {
                return embedded;
            };
            return match inner.rule {
                Ipv4Rule::SelfConnection { .. } => embedded,
                Ipv4Rule::Operator(inner_rule) if inner_rule.precedence(at_bit) > rule.precedence(0) => embedded,
                _ => AddressVerdict { allowed: rule.allows(), rule: AddressRule::Operator(rule) },
            };
        }
        if let Some(rule) = operator {
            return AddressVerdict { allowed: rule.allows(), rule: AddressRule::Operator(rule) };
        }
        match entry {
            None => AddressVerdict { allowed: true, rule: AddressRule::Global },
            Some(entry) if entry.embeds != Embeds::Nothing => {
                AddressVerdict { allowed: false, rule: AddressRule::DeniedEmbedding(entry) }
            }
            Some(entry) if self.unsafe_allows(entry) => {
                AddressVerdict { allowed: true, rule: AddressRule::UnsafeAllowPrivate(entry) }
            }
            Some(entry) => {
                AddressVerdict { allowed: entry.globally_reachable, rule: AddressRule::SpecialPurpose(entry) }
            }
        }
    }

    fn unsafe_allows(&self, entry: &SpecialPurpose) -> bool {
        self.unsafe_allow_private_ranges && UNSAFE_PRIVATE.contains(&entry.net)
    }

    /// The listening socket a connection to `(ip, port)` would reach.
    fn self_connection(&self, ip: IpAddr, port: u16) -> Option<SocketAddr> {
        self.self_addresses.iter().copied().find(|listener| {
            let listen = listener.ip();
            listener.port() == port
                && (ip == listen
                    // 0.0.0.0 and :: as a destination mean this host.
                    || ip.is_unspecified()
                    || (listen.is_unspecified() && ip.is_loopback()))
        })
    }
}

/// The never-openable set: no policy allow and no exception ever opens these
/// (an operator flag still can, as before v2).
pub const NEVER_OPENABLE: &[(&str, IpNet)] = &[
    ("cloud metadata", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 169, 254), 32))),
    ("cloud metadata", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 170, 2), 32))),
    ("cloud metadata", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 170, 23), 32))),
    ("cloud metadata", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(100, 100, 100, 200), 32))),
    ("cloud metadata", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 192), 32))),
    ("cloud metadata", IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), 128))),
    ("cloud metadata", IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23), 128))),
    ("loopback", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8))),
    ("loopback", IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128))),
    ("unspecified", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8))),
    ("unspecified", IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128))),
    ("multicast", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4))),
    ("multicast", IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8))),
    ("broadcast", IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::BROADCAST, 32))),
];

/// The never-openable block containing `ip` (or the IPv4 address it
/// embeds: mapped, NAT64, 6to4), if any.
pub fn never_openable(ip: IpAddr) -> Option<(&'static str, IpNet)> {
    let find = |ip: IpAddr| NEVER_OPENABLE.iter().copied().find(|(_, net)| net.contains(&ip));
    let ip = ip.to_canonical();
    if let Some(hit) = find(ip) {
        return Some(hit);
    }
    if let IpAddr::V6(v6) = ip
        && let Some(entry) = special_purpose::lookup(ip)
        && let Some(v4) = entry.embeds.ipv4(v6)
    {
        return find(IpAddr::V4(v4));
    }
    None
}

/// The first never-openable block that overlaps `net` (for `policyc check`).
pub fn never_openable_overlap(net: IpNet) -> Option<String> {
    NEVER_OPENABLE
        .iter()
        .find(|(_, block)| block.contains(&net.network()) || net.contains(&block.network()))
        .map(|(name, block)| format!("{name} {block}"))
}

/// The policy's `network` rules, prepared for classifying (most specific
/// first, deny before allow at equal specificity). Empty for v1 tables.
/// A table's `network` section prepared for lookup: the policy's own address
/// rules, kept apart from the operator's so the operator's stay a floor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyNetwork {
    v4_rules: Vec<OperatorRule>,
    v6_rules: Vec<OperatorRule>,
}

impl PolicyNetwork {
    /// Prepares the `network` section's rules (sorted, most specific first).
    pub fn new(rules: &NetworkRules) -> Self {
        let prepared = AddressPolicy::new(AddressRules {
            allow_ranges: rules.allow_ranges.clone(),
            deny_ranges: rules.deny_ranges.clone(),
            allow_addresses: rules.allow_addresses.clone(),
            deny_addresses: rules.deny_addresses.clone(),
            ..AddressRules::default()
        });
        PolicyNetwork { v4_rules: prepared.v4_rules, v6_rules: prepared.v6_rules }
    }

    /// True when the policy has no address rules of its own (every v1 table).
    pub fn is_empty(&self) -> bool {
        self.v4_rules.is_empty() && self.v6_rules.is_empty()
    }

    /// Every rule, most specific first (IPv4 then IPv6), as `/policy` shows them.
    pub fn rules(&self) -> impl Iterator<Item = &OperatorRule> {
        self.v4_rules.iter().chain(self.v6_rules.iter())
    }

    /// The most specific rule matching the address (IPv4-mapped IPv6 is
    /// matched as its IPv4 address).
    fn matching(&self, addr: SocketAddr) -> Option<OperatorRule> {
        let ip = addr.ip().to_canonical();
        let rules = if ip.is_ipv4() { &self.v4_rules } else { &self.v6_rules };
        first_match(rules, ip, addr.port())
    }
}

impl AddressPolicy {
    /// The operator rules, most specific first (for `/policy` and `explain`).
    pub fn operator_rules(&self) -> impl Iterator<Item = &OperatorRule> {
        self.v4_rules.iter().chain(self.v6_rules.iter())
    }

    /// Whether `--unsafe-allow-private-ranges` is on.
    pub fn unsafe_allow_private_ranges(&self) -> bool {
        self.unsafe_allow_private_ranges
    }

    /// The address stage with policy v2 layers: the operator's verdict
    /// ([`AddressPolicy::classify`]), then the policy's `network` rules, then
    /// the request's exception. With an empty `network` and no exception this
    /// is exactly `classify`.
    ///
    /// * an operator deny rule (or the self-connection rule) is final;
    /// * a policy deny applies even where the operator's verdict allowed;
    /// * an address the operator's verdict allowed stays allowed otherwise;
    /// * a policy allow or the exception (`exception`: the networks of the
    ///   internal destination that decided the name stage) only opens an
    ///   address the built-in set denied, never a never-openable one.
    pub fn classify_with(
        &self,
        addr: SocketAddr,
        network: &PolicyNetwork,
        exception: Option<&InternalDestination>,
    ) -> AddressVerdict {
        let flags = self.classify(addr);
        if network.is_empty() && exception.is_none() {
            return flags;
        }
        if matches!(flags.rule, AddressRule::SelfConnection { .. }) {
            return flags;
        }
        let policy = network.matching(addr);
        if let Some(rule) = policy.filter(|r| !r.allows()) {
            return AddressVerdict { allowed: false, rule: AddressRule::Policy(rule) };
        }
        if flags.allowed || decided_by_operator(&flags.rule) {
            return flags;
        }
        if let Some((name, block)) = never_openable(addr.ip()) {
            let opener = exception.and_then(|e| e.network_of(addr.ip())).is_some() || policy.is_some();
            return if opener {
                AddressVerdict { allowed: false, rule: AddressRule::NeverOpenable { block, name } }
            } else {
                flags
            };
        }
        if let Some(network) = exception.and_then(|e| e.network_of(addr.ip())) {
            return AddressVerdict { allowed: true, rule: AddressRule::InternalDestination { network } };
        }
        if let Some(rule) = policy {
            return AddressVerdict { allowed: true, rule: AddressRule::Policy(rule) };
        }
        flags
    }
}

/// Whether an operator rule (or the self-connection rule) made this verdict:
/// such a verdict is the floor the policy cannot change.
fn decided_by_operator(rule: &AddressRule) -> bool {
    match rule {
        AddressRule::SelfConnection { .. } | AddressRule::Operator(_) => true,
        AddressRule::EmbeddedIpv4 { inner, .. } => {
            matches!(inner.rule, Ipv4Rule::Operator(_) | Ipv4Rule::SelfConnection { .. })
        }
        _ => false,
    }
}

fn first_match(rules: &[OperatorRule], ip: IpAddr, port: u16) -> Option<OperatorRule> {
    rules.iter().find(|rule| rule.matches(ip, port)).copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use crate::special_purpose::SPECIAL_PURPOSE;
    use proptest::prelude::*;

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| SocketAddr::new(s.parse().unwrap(), 443))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn spec(s: &str) -> AddressSpec {
        s.parse().unwrap()
    }

    fn default_policy() -> AddressPolicy {
        AddressPolicy::new(AddressRules::default())
    }

    /// (allowed, code) for an address (`IP`, port 443, or `IP:PORT`).
    fn check(policy: &AddressPolicy, addr: &str) -> (bool, &'static str) {
        let v = policy.classify(sock(addr));
        (v.allowed, v.rule.code())
    }

    fn text(policy: &AddressPolicy, addr: &str) -> String {
        policy.classify(sock(addr)).rule.to_string()
    }

    fn most_specific(ip: IpAddr) -> Option<&'static SpecialPurpose> {
        SPECIAL_PURPOSE.iter().filter(|e| e.net.contains(&ip)).max_by_key(|e| e.net.prefix_len())
    }

    fn ip_from(v4: bool, x: u128) -> IpAddr {
        if v4 { IpAddr::V4(Ipv4Addr::from(u32::try_from(x).unwrap())) } else { IpAddr::V6(Ipv6Addr::from(x)) }
    }

    #[test]
    fn every_registry_entry_first_middle_and_last_address() {
        let policy = default_policy();
        for entry in SPECIAL_PURPOSE {
            let (start, end) = special_purpose::bounds(&entry.net);
            let mut decided_by_itself = false;
            for x in [start, start + (end - start) / 2, end] {
                let ip = ip_from(entry.net.network().is_ipv4(), x);
                let expected = most_specific(ip).unwrap();
                decided_by_itself |= expected == entry;
                let v = policy.classify(SocketAddr::new(ip, 443));
                match (expected.embeds, ip) {
                    (Embeds::Ipv4At { .. }, IpAddr::V6(v6)) => {
                        let ipv4 = expected.embeds.ipv4(v6).unwrap();
                        let inner = policy.classify_v4(ipv4, 443);
                        assert_eq!(
                            v,
                            AddressVerdict {
                                allowed: inner.allowed,
                                rule: AddressRule::EmbeddedIpv4 { embedding: expected, ipv4, inner }
                            },
                            "{ip}"
                        );
                    }
                    (Embeds::RefusedIpv4, _) => {
                        assert_eq!(
                            v,
                            AddressVerdict { allowed: false, rule: AddressRule::DeniedEmbedding(expected) },
                            "{ip}"
                        )
                    }
                    _ => assert_eq!(
                        v,
                        AddressVerdict {
                            allowed: expected.globally_reachable,
                            rule: AddressRule::SpecialPurpose(expected)
                        },
                        "{ip}"
                    ),
                }
            }
            assert!(decided_by_itself, "{} decides none of its first, middle and last addresses", entry.net);
        }
    }

    #[test]
    fn the_design_default_deny_set() {
        let p = default_policy();
        let denied = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this_network"),
            ("10.0.0.1", "private"),
            ("100.64.0.1", "cgnat"),
            ("100.127.255.254", "cgnat"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.255", "loopback"),
            ("169.254.169.254", "link_local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.1", "ipv4_service_continuity"),
            ("192.0.0.8", "dummy"),
            ("192.0.0.11", "ietf_protocol_assignments"),
            ("192.0.0.170", "nat64_discovery"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "deprecated_6to4_relay_anycast"),
            ("192.88.99.2", "6a44_relay_anycast"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::2", "ipv4_compatible"),
            ("64:ff9b:1::1", "nat64_local_use"),
            ("100::1", "discard_only"),
            ("100:0:0:1::1", "dummy"),
            ("2001::1", "teredo"),
            ("2001:1::4", "ietf_protocol_assignments"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "deprecated_orchid"),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "ietf_protocol_assignments"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("3fff:fff:ffff::1", "documentation"),
            ("5f00::1", "srv6_sid"),
            ("fc00::1", "private"),
            ("fd00:ec2::254", "private"),
            ("fe80::1", "link_local"),
            ("fec0::1", "site_local"),
            ("ff02::2", "multicast"),
            ("ff0e::1", "multicast"),
        ];
        for (ip, code) in denied {
            assert_eq!(check(&p, ip), (false, code), "{ip}");
        }
        let allowed = [
            ("1.1.1.1", "global"),
            ("8.8.8.8", "global"),
            ("100.63.255.255", "global"),
            ("100.128.0.0", "global"),
            ("172.32.0.1", "global"),
            ("192.0.0.9", "pcp_anycast"),
            ("192.0.0.10", "turn_anycast"),
            ("192.0.1.1", "global"),
            ("192.31.196.1", "as112"),
            ("192.52.193.1", "amt"),
            ("192.175.48.1", "as112"),
            ("198.20.0.1", "global"),
            ("223.255.255.255", "global"),
            ("2001:1::1", "pcp_anycast"),
            ("2001:1::2", "turn_anycast"),
            ("2001:1::3", "dns_sd_srp_anycast"),
            ("2001:3::1", "amt"),
            ("2001:4:112::1", "as112"),
            ("2001:20::1", "orchid_v2"),
            ("2001:30::1", "drone_remote_id"),
            ("2001:200::1", "global"),
            ("2001:4860:4860::8888", "global"),
            ("2606:4700:4700::1111", "global"),
            ("2620:4f:8000::1", "as112"),
            ("64:ff9c::1", "global"),
            ("100:0:0:2::1", "global"),
        ];
        for (ip, code) in allowed {
            assert_eq!(check(&p, ip), (true, code), "{ip}");
        }
    }

    #[test]
    fn display_strings_for_403_bodies() {
        let p = default_policy();
        assert_eq!(text(&p, "127.0.0.1"), "loopback 127.0.0.0/8 (RFC 1122)");
        assert_eq!(text(&p, "::1"), "loopback ::1/128 (RFC 4291)");
        assert_eq!(text(&p, "10.1.2.3"), "private-use 10.0.0.0/8 (RFC 1918)");
        assert_eq!(text(&p, "fd00::1"), "unique-local fc00::/7 (RFC 4193, RFC 8190)");
        assert_eq!(text(&p, "169.254.169.254"), "link-local 169.254.0.0/16 (RFC 3927)");
        assert_eq!(text(&p, "100.64.0.1"), "shared address space (CGNAT) 100.64.0.0/10 (RFC 6598)");
        assert_eq!(text(&p, "8.8.8.8"), "globally reachable");
        assert_eq!(
            text(&p, "::ffff:127.0.0.1"),
            "IPv4-mapped ::ffff:0:0/96 of 127.0.0.1: loopback 127.0.0.0/8 (RFC 1122)"
        );
        assert_eq!(
            text(&p, "64:ff9b::a9fe:a9fe"),
            "NAT64 well-known prefix 64:ff9b::/96 of 169.254.169.254: link-local 169.254.0.0/16 (RFC 3927)"
        );
        assert_eq!(text(&p, "2002:808:808::1"), "6to4 2002::/16 of 8.8.8.8: globally reachable");
        assert_eq!(text(&p, "2001::1"), "Teredo 2001::/32 (RFC 4380, RFC 8190), an IPv4 embedding denied outright");
        let rules = AddressRules {
            deny_ranges: vec![net("10.1.0.0/16")],
            allow_ranges: vec![net("10.0.0.0/8")],
            allow_addresses: vec![spec("10.1.2.3:443")],
            deny_addresses: vec![spec("8.8.8.8")],
            unsafe_allow_private_ranges: true,
            self_addresses: vec![sock("0.0.0.0:4750")],
        };
        let p = AddressPolicy::new(rules);
        assert_eq!(text(&p, "10.1.9.9"), "operator deny range 10.1.0.0/16");
        assert_eq!(text(&p, "10.2.0.1"), "operator allow range 10.0.0.0/8");
        assert_eq!(text(&p, "10.1.2.3:443"), "operator allow address 10.1.2.3:443");
        assert_eq!(text(&p, "8.8.8.8"), "operator deny address 8.8.8.8");
        assert_eq!(
            text(&p, "192.168.1.1"),
            "private-use 192.168.0.0/16 (RFC 1918) allowed by --unsafe-allow-private-ranges"
        );
        assert_eq!(text(&p, "127.0.0.1:4750"), "self connection (the proxy listens on 0.0.0.0:4750)");
        assert_eq!(check(&p, "127.0.0.1:4750"), (false, "self_connection"));
        assert_eq!(check(&p, "10.1.9.9"), (false, "operator_deny_range"));
        assert_eq!(check(&p, "192.168.1.1"), (true, "unsafe_allow_private"));
    }

    #[test]
    fn embedded_ipv4_forms() {
        let p = default_policy();
        let cases = [
            // IPv4-mapped, NAT64 well-known prefix, 6to4: the embedded address decides.
            ("::ffff:10.0.0.1", false, "private"),
            ("::ffff:8.8.8.8", true, "global"),
            ("::ffff:169.254.169.254", false, "link_local"),
            ("64:ff9b::a00:1", false, "private"),
            ("64:ff9b::7f00:1", false, "loopback"),
            ("64:ff9b::808:808", true, "global"),
            ("2002:a00:1::1", false, "private"),
            ("2002:7f00:1:ffff::1", false, "loopback"),
            ("2002:808:808::1", true, "global"),
            // IPv4-compatible, SIIT, local-use NAT64, Teredo: denied whatever they carry.
            ("::10.0.0.1", false, "ipv4_compatible"),
            ("::8.8.8.8", false, "ipv4_compatible"),
            ("::ffff:0:a00:1", false, "siit"),
            ("::ffff:0:808:808", false, "siit"),
            ("64:ff9b:1::a00:1", false, "nat64_local_use"),
            ("64:ff9b:1::808:808", false, "nat64_local_use"),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", false, "teredo"), // client 10.0.0.1
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", false, "teredo"), // client 8.8.8.8
        ];
        for (ip, allowed, code) in cases {
            assert_eq!(check(&p, ip), (allowed, code), "{ip}");
        }
        let v = p.classify(sock("[64:ff9b::808:808]:80"));
        let AddressRule::EmbeddedIpv4 { embedding, ipv4, inner } = v.rule else { panic!("{v:?}") };
        assert_eq!((embedding.code, ipv4, inner), ("nat64", Ipv4Addr::new(8, 8, 8, 8), p.classify_v4(ipv4, 80)));
        assert!(
            matches!(p.classify(sock("::8.8.8.8")).rule, AddressRule::DeniedEmbedding(e) if e.code == "ipv4_compatible")
        );
    }

    #[test]
    fn operator_rules_most_specific_wins() {
        let p = AddressPolicy::new(AddressRules {
            allow_ranges: vec![net("10.0.0.0/8"), net("10.1.2.0/24")],
            deny_ranges: vec![net("10.1.0.0/16")],
            deny_addresses: vec![spec("10.1.2.3")],
            allow_addresses: vec![spec("10.1.2.3:443")],
            ..AddressRules::default()
        });
        assert_eq!(check(&p, "10.1.2.3:443"), (true, "operator_allow_address")); // IP:PORT beats IP
        assert_eq!(check(&p, "10.1.2.3:80"), (false, "operator_deny_address")); // IP beats /24
        assert_eq!(check(&p, "10.1.2.4"), (true, "operator_allow_range")); // /24 beats /16
        assert_eq!(check(&p, "10.1.3.1"), (false, "operator_deny_range")); // /16 beats /8
        assert_eq!(check(&p, "10.2.0.1"), (true, "operator_allow_range")); // /8 beats built-in private
        assert_eq!(check(&p, "11.0.0.1"), (true, "global"));
    }

    #[test]
    fn operator_deny_beats_allow_at_equal_specificity() {
        let p = AddressPolicy::new(AddressRules {
            allow_ranges: vec![net("10.0.0.0/8"), net("1.2.3.0/24")],
            deny_ranges: vec![net("10.0.0.0/8"), net("1.2.3.4/32")],
            allow_addresses: vec![spec("1.2.3.4"), spec("1.2.3.5:80"), spec("2001:db8::1")],
            deny_addresses: vec![spec("1.2.3.5:80"), spec("[2001:db8::1]:443")],
            ..AddressRules::default()
        });
        assert_eq!(check(&p, "10.9.9.9"), (false, "operator_deny_range"));
        assert_eq!(check(&p, "1.2.3.4"), (false, "operator_deny_range")); // /32 range vs bare IP: equal
        assert_eq!(check(&p, "1.2.3.5:80"), (false, "operator_deny_address"));
        assert_eq!(check(&p, "1.2.3.5:81"), (true, "operator_allow_range"));
        assert_eq!(check(&p, "[2001:db8::1]:443"), (false, "operator_deny_address"));
        assert_eq!(check(&p, "[2001:db8::1]:80"), (true, "operator_allow_address"));
        // Order of the input lists does not matter.
        let q = AddressPolicy::new(AddressRules {
            deny_ranges: vec![net("10.0.0.0/8")],
            allow_ranges: vec![net("10.0.0.0/8")],
            ..AddressRules::default()
        });
        assert_eq!(check(&q, "10.9.9.9"), (false, "operator_deny_range"));
    }

    #[test]
    fn operator_rules_beat_the_built_in_set() {
        let p = AddressPolicy::new(AddressRules {
            allow_addresses: vec![spec("169.254.169.254"), spec("[fe80::1]:8080")],
            deny_ranges: vec![net("8.8.8.0/24"), net("2606:4700::/32")],
            deny_addresses: vec![spec("192.0.0.9")],
            ..AddressRules::default()
        });
        assert_eq!(check(&p, "169.254.169.254"), (true, "operator_allow_address"));
        assert_eq!(check(&p, "169.254.169.253"), (false, "link_local"));
        assert_eq!(check(&p, "[fe80::1]:8080"), (true, "operator_allow_address"));
        assert_eq!(check(&p, "[fe80::1]:8081"), (false, "link_local"));
        assert_eq!(check(&p, "8.8.8.8"), (false, "operator_deny_range"));
        assert_eq!(check(&p, "2606:4700:4700::1111"), (false, "operator_deny_range"));
        assert_eq!(check(&p, "192.0.0.9"), (false, "operator_deny_address")); // a globally reachable entry
    }

    #[test]
    fn self_connection_beats_everything() {
        let p = AddressPolicy::new(AddressRules {
            allow_ranges: vec![net("0.0.0.0/0"), net("::/0")],
            allow_addresses: vec![spec("127.0.0.1:4750"), spec("10.0.0.5:4751")],
            self_addresses: vec![sock("0.0.0.0:4750"), sock("10.0.0.5:4751")],
            ..AddressRules::default()
        });
        for addr in ["127.0.0.1:4750", "127.9.9.9:4750", "[::1]:4750", "0.0.0.0:4750", "[::]:4750", "10.0.0.5:4751"] {
            assert_eq!(check(&p, addr), (false, "self_connection"), "{addr}");
        }
        assert_eq!(check(&p, "[::ffff:127.0.0.1]:4750"), (false, "self_connection"));
        assert_eq!(check(&p, "[::ffff:10.0.0.5]:4751"), (false, "self_connection"));
        assert_eq!(check(&p, "[64:ff9b::7f00:1]:4750"), (false, "self_connection"));
        assert_eq!(check(&p, "127.0.0.1:4751"), (true, "operator_allow_range")); // other ports: only the rules
        assert_eq!(check(&p, "10.0.0.5:4750"), (true, "operator_allow_range")); // not loopback, not the listen IP
        assert_eq!(check(&p, "10.0.0.6:4751"), (true, "operator_allow_range"));
        // A specific listen IP covers only itself.
        let q = AddressPolicy::new(AddressRules {
            allow_ranges: vec![net("127.0.0.0/8")],
            self_addresses: vec![sock("127.0.0.1:4750")],
            ..AddressRules::default()
        });
        assert_eq!(check(&q, "127.0.0.1:4750"), (false, "self_connection"));
        assert_eq!(check(&q, "127.0.0.2:4750"), (true, "operator_allow_range"));
        // IPv6 unspecified listeners (dual stack) cover IPv4 loopback too.
        let r = AddressPolicy::new(AddressRules { self_addresses: vec![sock("[::]:4750")], ..AddressRules::default() });
        assert_eq!(check(&r, "127.0.0.1:4750"), (false, "self_connection"));
    }

    #[test]
    fn ipv6_operator_rules_and_embeddings() {
        let p = AddressPolicy::new(AddressRules {
            allow_ranges: vec![net("::/0"), net("64:ff9b::a00:0/120")],
            deny_ranges: vec![net("2002::/16")],
            ..AddressRules::default()
        });
        // A rule broader than the embedding prefix does not reach into it.
        assert_eq!(check(&p, "::ffff:127.0.0.1"), (false, "loopback"));
        assert_eq!(check(&p, "64:ff9b::a01:1"), (false, "private"));
        // One about the embedding's own space does, beating the built-in set.
        assert_eq!(check(&p, "64:ff9b::a00:1"), (true, "operator_allow_range"));
        assert_eq!(check(&p, "2002:808:808::1"), (false, "operator_deny_range"));
        // Outside embeddings ::/0 is an ordinary operator rule.
        assert_eq!(check(&p, "::1"), (true, "operator_allow_range"));
        assert_eq!(check(&p, "2001::1"), (true, "operator_allow_range"));

        // IPv4 and IPv6 rules compete by specificity inside the embedding
        // (an IPv4 /n counts as /96+n for mapped and NAT64, /16+n for 6to4).
        let q = AddressPolicy::new(AddressRules {
            allow_ranges: vec![net("10.0.0.0/8"), net("::ffff:10.1.0.0/112"), net("64:ff9b::/96")],
            deny_ranges: vec![net("::ffff:10.0.0.0/104"), net("20.0.0.0/8")],
            deny_addresses: vec![spec("8.8.8.8")],
            ..AddressRules::default()
        });
        assert_eq!(check(&q, "10.2.0.1"), (true, "operator_allow_range"));
        assert_eq!(check(&q, "::ffff:10.2.0.1"), (false, "operator_deny_range")); // /104 vs /8: tie, deny wins
        assert_eq!(check(&q, "::ffff:10.1.0.1"), (true, "operator_allow_range")); // /112 beats /104
        assert_eq!(check(&q, "64:ff9b::808:808"), (false, "operator_deny_address")); // /32 (=/128) beats /96
        assert_eq!(check(&q, "64:ff9b::1414:1414"), (false, "operator_deny_range")); // 20/8 (=/104) beats /96
        assert_eq!(check(&q, "64:ff9b::7f00:1"), (true, "operator_allow_range")); // the operator opened NAT64
        assert_eq!(check(&q, "::ffff:8.8.4.4"), (true, "global"));
    }

    #[test]
    fn unsafe_allow_private_ranges_opens_rfc1918_and_ula_only() {
        let p = AddressPolicy::new(AddressRules {
            unsafe_allow_private_ranges: true,
            deny_ranges: vec![net("10.1.0.0/16")],
            ..AddressRules::default()
        });
        for ip in ["10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fd00::1", "fc00::1", "::ffff:10.0.0.1"] {
            assert_eq!(check(&p, ip), (true, "unsafe_allow_private"), "{ip}");
        }
        assert_eq!(check(&p, "64:ff9b::c0a8:101"), (true, "unsafe_allow_private"));
        for (ip, code) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link_local"),
            ("100.64.0.1", "cgnat"),
            ("0.0.0.0", "unspecified"),
            ("198.18.0.1", "benchmarking"),
            ("fe80::1", "link_local"),
            ("fec0::1", "site_local"),
            ("::1", "loopback"),
            ("10.1.0.1", "operator_deny_range"),
        ] {
            assert_eq!(check(&p, ip), (false, code), "{ip}");
        }
        assert_eq!(check(&default_policy(), "10.0.0.1"), (false, "private"));
    }

    #[test]
    fn host_bits_of_ranges_are_dropped() {
        let p = AddressPolicy::new(AddressRules { allow_ranges: vec![net("10.1.2.3/8")], ..AddressRules::default() });
        assert_eq!(text(&p, "10.200.0.1"), "operator allow range 10.0.0.0/8");
    }

    fn any_socket() -> impl Strategy<Value = SocketAddr> {
        let v4 = any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x)));
        let v6 = any::<u128>().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x)));
        // Random IPv6 addresses almost never embed IPv4: build those on purpose.
        let embedded = (prop::sample::select(vec![0xffff_0000_0000u128, 0x64_ff9b << 96, 0x2002 << 112]), any::<u32>())
            .prop_map(|(prefix, x)| {
                let x = u128::from(x);
                let bits = if prefix == 0x2002 << 112 { prefix | (x << 80) } else { prefix | x };
                IpAddr::V6(Ipv6Addr::from(bits))
            });
        (prop_oneof![v4, v6, embedded], any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, len)| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap()),
            (any::<u128>(), 0u8..=128).prop_map(|(a, len)| IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), len).unwrap()),
        ]
    }

    fn any_spec() -> impl Strategy<Value = AddressSpec> {
        prop_oneof![any_socket().prop_map(|s| AddressSpec::Ip(s.ip())), any_socket().prop_map(AddressSpec::Socket)]
    }

    fn any_v4_rules() -> impl Strategy<Value = AddressRules> {
        let v4_net =
            (any::<u32>(), 0u8..=32).prop_map(|(a, len)| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap());
        let v4_spec = (any::<u32>(), prop::option::of(1u16..=u16::MAX)).prop_map(|(a, port)| {
            let ip = IpAddr::V4(Ipv4Addr::from(a));
            port.map_or(AddressSpec::Ip(ip), |p| AddressSpec::Socket(SocketAddr::new(ip, p)))
        });
        (
            prop::collection::vec(v4_net.clone(), 0..4),
            prop::collection::vec(v4_net, 0..4),
            prop::collection::vec(v4_spec.clone(), 0..3),
            prop::collection::vec(v4_spec, 0..3),
            any::<bool>(),
            prop::collection::vec((any::<u32>(), any::<u16>()), 0..2),
        )
            .prop_map(
                |(allow_ranges, deny_ranges, allow_addresses, deny_addresses, unsafe_allow_private_ranges, me)| {
                    AddressRules {
                        allow_ranges,
                        deny_ranges,
                        allow_addresses,
                        deny_addresses,
                        unsafe_allow_private_ranges,
                        self_addresses: me
                            .into_iter()
                            .map(|(a, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p))
                            .collect(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn classify_never_panics(
            addr in any_socket(),
            allow_ranges in prop::collection::vec(any_net(), 0..4),
            deny_ranges in prop::collection::vec(any_net(), 0..4),
            allow_addresses in prop::collection::vec(any_spec(), 0..3),
            deny_addresses in prop::collection::vec(any_spec(), 0..3),
            unsafe_allow_private_ranges in any::<bool>(),
            self_addresses in prop::collection::vec(any_socket(), 0..2),
        ) {
            let p = AddressPolicy::new(AddressRules {
                allow_ranges, deny_ranges, allow_addresses, deny_addresses, unsafe_allow_private_ranges, self_addresses,
            });
            let v = p.classify(addr);
            prop_assert!(!v.rule.code().is_empty());
            prop_assert!(!v.rule.to_string().is_empty());
            prop_assert_eq!(v, p.classify(addr), "deterministic");
        }

        #[test]
        fn mapped_address_classifies_like_its_ipv4(a in any::<u32>(), port in any::<u16>(), rules in any_v4_rules()) {
            let p = AddressPolicy::new(rules);
            let ip = Ipv4Addr::from(a);
            let plain = p.classify(SocketAddr::new(IpAddr::V4(ip), port));
            let mapped = p.classify(SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), port));
            prop_assert_eq!(mapped.allowed, plain.allowed);
            prop_assert_eq!(mapped.rule.code(), plain.rule.code());
            let AddressRule::EmbeddedIpv4 { ipv4, inner, .. } = mapped.rule else {
                return Err(TestCaseError::fail(format!("{mapped:?}")));
            };
            prop_assert_eq!(ipv4, ip);
            prop_assert_eq!(AddressVerdict::from(inner), plain);
        }
    }
}
