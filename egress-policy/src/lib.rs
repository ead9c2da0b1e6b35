//! `egress-policy`: the policy model that `policyc` and `proxyd` share.
//!
//! Reads Smokescreen-compatible ACL YAML strictly ([`acl`]), reports problems
//! as [`diagnostic`]s, compiles the validated [`policy`] into a verified binary
//! [`table`], and decides requests with the pure functions the proxy uses
//! ([`host`] canonicalisation, [`pattern`] matching, [`decision`], [`address`]
//! classification).
//!
//! What this crate may not do: network I/O, read a clock, print, or depend on
//! a CLI or async runtime. The only file I/O is [`table::read_file`] and
//! [`table::write_atomically`]; everything else is a function of its input.
//! [`signature`] signs and verifies tables with Ed25519 (ring); key
//! generation takes the caller's random source.
//!
//! # The whole flow
//!
//! ACL text is checked into a [`policy::Policy`] (or diagnostics with
//! `line:col` and a stable code), compiled into table bytes (what `policyc
//! compile` writes), verified and decoded again (what `proxyd` loads), and
//! asked about a role and a host:
//!
//! ```rust
//! use egress_policy::{acl, host, policy::ActionSet, table};
//! use egress_policy::decision::{Reason, Verdict};
//!
//! let source = "\
//! version: v1
//! services:
//!   - name: billing
//!     project: payments
//!     action: enforce
//!     allowed_domains:
//!       - api.example.com
//!       - '*.example.net'
//! ";
//! let checked = acl::check_source("acl.yaml", source, ActionSet::default());
//! assert_eq!((checked.error_count(), checked.warning_count()), (0, 1)); // P101: no default rule
//! let policy = checked.policy.expect("no errors");
//!
//! let metadata = table::Metadata::for_source("acl.yaml".as_ref(), source.as_bytes(), ActionSet::default());
//! let bytes = table::encode(&policy, &metadata);
//! let compiled = table::decode(&bytes)?;
//!
//! let decide = |role, name| -> Result<_, host::HostError> {
//!     let decision = compiled.table.decide(role, &host::canonical(name)?);
//!     Ok((decision.verdict, decision.reason))
//! };
//! assert_eq!(decide(Some("billing"), "API.Example.com.")?, (Verdict::Allow, Reason::AllowedDomain));
//! assert_eq!(decide(Some("billing"), "cdn.eu.example.net")?, (Verdict::Allow, Reason::AllowedDomain));
//! assert_eq!(decide(Some("billing"), "example.org")?, (Verdict::Deny, Reason::EnforcePolicy));
//! assert_eq!(decide(Some("unknown"), "api.example.com")?, (Verdict::Deny, Reason::NoRuleMatched));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod acl;
pub mod address;
pub mod authority;
pub mod decision;
pub mod destination;
pub mod diagnostic;
pub mod host;
pub mod index;
pub mod pattern;
pub mod policy;
pub mod signature;
pub mod special_purpose;
pub mod table;
pub mod yaml;
