//! `proxyd`: the SSRF-safe CONNECT data plane (under construction).

pub mod proxy_protocol;
pub mod resolver;
pub mod tls;
