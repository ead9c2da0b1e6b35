//! End-to-end tests of `proxyd`: the real daemon against in-test upstreams,
//! an in-test DNS server and a test PKI, all on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a test failure

mod support;
