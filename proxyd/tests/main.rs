//! End-to-end tests of `proxyd`: the real daemon against in-test upstreams,
//! an in-test DNS server and a test PKI, all on loopback. One test binary
//! with a module per area, so the suite links once.
//!
//! Network safety: every proxy started here has an egress guard that
//! refuses, and fails the test on, any connection attempt outside loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a test failure

mod abuse;
mod address;
mod admin;
mod binary;
mod challenge;
mod check_config;
mod connect;
mod console;
mod console_browser;
mod deploy;
mod dns_server;
mod harness;
mod lifecycle;
mod limits;
mod log_stall;
mod manual;
mod metrics;
mod operator;
mod pki;
mod reload;
mod restarts;
mod signing;
mod ssrf;
mod statsd;
mod systemd;
mod tls;
mod upstreams;
