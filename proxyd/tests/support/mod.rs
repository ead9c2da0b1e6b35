//! Test support: real servers on loopback (DNS, upstreams) and a test PKI.

pub mod dns;
pub mod pki;
pub mod scrape;
pub mod upstream;
