//! `proxyd`: the SSRF-safe CONNECT data plane.
//!
//! It loads a compiled policy table (never YAML), serves only `CONNECT`,
//! decides per client role with `egress-policy`'s pure decision function, resolves
//! names with its own DNS client, classifies every address, and connects only
//! to addresses it checked. Tests start it in-process with [`run`] on
//! `127.0.0.1:0`; the binary is a thin shell around the same function.
//!
//! Layout: [`config`] (flags and config file), [`workers`] (the data-plane
//! threads, one event loop per CPU), [`server`] (start-up, drain and the
//! request path), [`tls`] and [`proxy_protocol`] (what arrives before the
//! request), [`resolver`] (DNS), [`egress`] (address stage and connect),
//! [`request`] (the request head), [`tunnel`] (moving bytes), [`buffers`]
//! (per-thread reusable buffers), [`answer`] (every answer written), [`log`],
//! [`reload`] (the active table and live reload), [`metrics`] (the one
//! instrumentation facade) with [`statsd`] (its UDP export), [`events`] (the
//! telemetry vocabulary both sinks consume; it imports neither), and
//! [`admin`] (health, readiness, policy and metrics endpoints) with
//! [`admin_auth`] (its bearer token) and [`console`] (the HTML page at
//! `/`); [`live`] (open tunnels and their byte counters), [`refusals`]
//! (the recent refusals) and [`stats_socket`] (Smokescreen's
//! `track-<pid>.sock`) are what the console and `/tunnels` show.
//! [`policy_trust`] decides which tables may serve (signatures, rollback) and
//! [`policy_fetch`] polls `--policy-url`. Operators get [`check_config`]
//! (`--check-config`), [`systemd`] (readiness and watchdog notifications) and
//! [`manual`] (completions and man pages). [`listeners`] says where the
//! listening sockets come from (flags, Einhorn, systemd, an upgrade) and
//! [`upgrade`] hands them to a new binary on SIGUSR1.

pub mod admin;
pub mod admin_auth;
pub mod answer;
pub mod buffers;
pub mod check_config;
pub mod config;
pub mod console;
pub mod egress;
pub mod events;
pub mod limits;
pub mod listeners;
pub mod live;
pub mod log;
pub mod manual;
pub mod metrics;
pub mod policy_fetch;
pub mod policy_trust;
pub mod proxy_protocol;
pub mod refusals;
pub mod reload;
pub mod request;
pub mod resolver;
pub mod role;
pub mod server;
pub mod stats_socket;
pub mod statsd;
pub mod systemd;
pub mod timefmt;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod workers;

pub use config::{Args, Config};
pub use server::{StartError, Stop, run, serve, serve_until};

/// `--version`: the package version, the git revision and the build date
/// (from build.rs: the commit's date or SOURCE_DATE_EPOCH, never the wall clock).
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("BUILD_GIT_REVISION"), ", built ", env!("BUILD_DATE"), ")");
