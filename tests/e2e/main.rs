//! Cross-binary end-to-end tests: a policy goes through the real `policyc`
//! (check, test, compile) and the table it writes is served by the real
//! `proxyd`, with the in-test DNS server and upstreams on loopback. What CI
//! does with a policy, then what the data plane does with the artifact, and
//! back: the data plane's decision logs turned into a policy by `suggest`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a test failure

mod clients;
mod container;
mod fleet;
mod image;
mod kube_play;
mod layout;
mod pipeline;
mod policy_v2;
mod role_from;
mod signing;
mod soak;
mod suggest;
mod support;
