//! `policyc`: the control plane of the egress proxy.
//!
//! Reads Smokescreen-compatible ACL YAML strictly ([`acl`]), reports problems
//! as [`diagnostic`]s, compiles the validated [`policy`] into a verified binary
//! [`table`], and decides requests with the same pure functions the proxy
//! uses ([`host`] canonicalisation, [`pattern`] matching, [`decision`]).
//!
//! Nothing in this library performs network I/O or reads a clock; file I/O
//! stays in the `policyc` binary and in [`table::write_atomically`].

pub mod acl;
pub mod address;
pub mod authority;
pub mod decision;
pub mod destination;
pub mod diagnostic;
pub mod diff;
pub mod host;
pub mod index;
pub mod pattern;
pub mod policy;
pub mod policytest;
pub mod sarif;
pub mod special_purpose;
pub mod table;
pub mod yaml;
