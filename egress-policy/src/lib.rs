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
