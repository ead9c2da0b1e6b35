//! `proxyd --check-config`: validate everything a start would validate, with
//! the same flags and `--config-file`, without serving. It runs the loaders a
//! start runs ([`Config::load_all`], [`server::load_policy`],
//! [`server::tls_acceptor`], [`Resolver::new`]), so whatever those learn to
//! check, this checks too. Then it prints a one-screen summary of the
//! effective configuration (exit 0) or every problem found (exit 1), each in
//! the words a refused start would use.
//!
//! It never binds the listen or admin address (a running proxyd may hold
//! them), never resolves the statsd name, never sends a packet, and never
//! prints the proxy password: only the name of the variable holding it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Args, Config, ConfigError};
use crate::metrics::Metrics;
use crate::reload::PolicyState;
use crate::resolver::Resolver;
use crate::server::{self, StartError};

/// What `--check-config` found.
#[derive(Debug)]
pub struct Report {
    /// Every problem, one line each, in the order a start would meet them.
    pub problems: Vec<String>,
    /// The effective configuration, when there is no problem.
    pub summary: Option<String>,
}

impl Report {
    /// 0 when the configuration would start, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.problems.is_empty())
    }
}

/// Checks the configuration `args` describe.
pub fn check(args: &Args) -> Report {
    let (config, config_problems) = Config::load_all(args);
    let policy_named = !config_problems.iter().any(|p| matches!(p, ConfigError::MissingPolicy));
    let mut problems: Vec<String> = config_problems.iter().map(ToString::to_string).collect();

    // The policy, exactly as a start loads it (a fresh metrics facade: nothing is served).
    // A `--policy-url` source is not fetched here: its cache, when it exists,
    // is checked as the table a start would fall back to.
    let remote_without_cache =
        config.policy_remote.as_ref().is_some_and(|remote| remote.cache.as_ref().is_none_or(|cache| !cache.exists()));
    let policy = if policy_named && !remote_without_cache {
        match server::load_policy(&config, Arc::new(Metrics::new(None, false))) {
            Ok(policy) => Some(policy),
            Err(error) => {
                problems.push(error.to_string());
                None
            }
        }
    } else {
        None
    };
    // The stats socket's directory must take a new file, as the socket will be one.
    if let Some(settings) = &config.stats_socket
        && let Err(message) = settings.check_writable()
    {
        problems.push(format!("--stats-socket-dir {}: {message}", settings.dir.display()));
    }
    // TLS files, client CAs and CRLs.
    if let Err(error) = server::tls_acceptor(&config) {
        problems.push(error.to_string());
    }
    // The resolver (its addresses, or /etc/resolv.conf), built inside a
    // runtime as at start; nothing is queried.
    let resolver = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => {
            let _context = runtime.enter();
            match Resolver::new(&config.resolver_addresses, config.dns_timeout) {
                Ok(resolver) => Some(resolver.servers().to_vec()),
                Err(error) => {
                    problems.push(StartError::from(error).to_string());
                    None
                }
            }
        }
        Err(error) => {
            problems.push(format!("cannot start the runtime: {error}"));
            None
        }
    };

    let summary = match (problems.is_empty(), policy, resolver) {
        (true, Some(policy), Some(servers)) => Some(summary(args, &config, &policy, &servers)),
        _ => None,
    };
    Report { problems, summary }
}

/// Runs the check and prints its report: the summary on stdout, problems on stderr.
pub fn run(args: &Args) -> u8 {
    let report = check(args);
    match &report.summary {
        Some(summary) if report.problems.is_empty() => print!("{summary}"),
        _ => {
            let count = report.problems.len();
            eprintln!("proxyd: the configuration has {count} problem{}:", if count == 1 { "" } else { "s" });
            for problem in &report.problems {
                eprintln!("  - {problem}");
            }
        }
    }
    report.exit_code()
}

fn seconds(duration: Duration) -> String {
    format!("{duration:?}")
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// The effective configuration, one line per setting, secrets redacted.
fn summary(args: &Args, config: &Config, policy: &PolicyState, resolvers: &[std::net::SocketAddr]) -> String {
    let active = policy.current();
    let table = &active.table;
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<19}{value}");
    };
    line("proxyd", format!("{} --check-config: configuration OK", crate::VERSION));
    line("config file", args.config_file.as_ref().map_or_else(|| "none".to_owned(), |p| p.display().to_string()));
    line("listen", format!("{} (not bound by --check-config)", config.listen));
    line(
        "admin endpoints",
        config.admin_listen.map_or_else(
            || "off".to_owned(),
            |a| {
                let token = match (&config.admin_token, config.admin_metrics_open) {
                    (None, _) => "no token: all open",
                    (Some(_), false) => "token required but for /healthz and /readyz",
                    (Some(_), true) => "token required but for /healthz, /readyz and /metrics",
                };
                format!("{a} (not bound by --check-config); {token}")
            },
        ),
    );
    line(
        "stats socket",
        config.stats_socket.as_ref().map_or_else(
            || "off".to_owned(),
            |s| {
                format!(
                    "{} (mode {:03o}; <pid> is the running proxy's)",
                    s.dir.join("track-<pid>.sock").display(),
                    s.mode
                )
            },
        ),
    );
    line(
        "policy",
        format!(
            "{} (revision {}, {} role rules, default rule: {}, compiled from {} by {})",
            config.policy.display(),
            table.revision(),
            table.policy.services.len(),
            table.policy.default.as_ref().map_or("none", |d| d.action.as_str()),
            table.metadata.source_name,
            table.metadata.compiler
        ),
    );
    line("disabled actions", config.disabled_actions.to_string());
    line(
        "reload",
        format!(
            "on file events (debounce {}), on SIGHUP, periodic check {}",
            seconds(config.reload.debounce),
            config.reload.periodic.map_or_else(|| "off".to_owned(), seconds)
        ),
    );
    let tls = match &config.tls {
        None => "off (plain TCP)".to_owned(),
        Some(tls) => {
            let identity = match &tls.server_bundle {
                crate::tls::ServerIdentity::Bundle(path) => format!("bundle {}", path.display()),
                crate::tls::ServerIdentity::CertAndKey { cert, key } => {
                    format!("cert {}, key {}", cert.display(), key.display())
                }
            };
            format!(
                "{identity}; client CAs: {}; CRLs: {}; role from {}",
                list(&tls.client_ca_files.iter().map(|p| p.display()).collect::<Vec<_>>()),
                list(&tls.crl_files.iter().map(|p| p.display()).collect::<Vec<_>>()),
                tls.role_from
            )
        }
    };
    line("tls", tls);
    line("proxy protocol", if config.proxy_protocol { "required".to_owned() } else { "off".to_owned() });
    line(
        "proxy password",
        config.proxy_auth.as_ref().map_or_else(
            || "off".to_owned(),
            |auth| {
                format!(
                    "from ${} (value redacted), role {:?}, challenge realm {:?}",
                    auth.variable, auth.role, &*config.proxy_auth_realm
                )
            },
        ),
    );
    line("missing role", if config.allow_missing_role { "allowed (default rule)" } else { "refused" }.to_owned());
    line(
        "resolver",
        format!(
            "{} ({}, timeout {})",
            list(resolvers),
            if config.resolver_addresses.is_empty() { "from /etc/resolv.conf" } else { "configured" },
            seconds(config.dns_timeout)
        ),
    );
    line("network", format!("{:?}", config.network).to_lowercase());
    let rules = &config.address_rules;
    line(
        "address rules",
        format!(
            "deny ranges {}, allow ranges {}, deny addresses {}, allow addresses {}, private ranges {}",
            list(&rules.deny_ranges),
            list(&rules.allow_ranges),
            list(&rules.deny_addresses),
            list(&rules.allow_addresses),
            if rules.unsafe_allow_private_ranges { "ALLOWED" } else { "denied" }
        ),
    );
    line(
        "timeouts",
        format!(
            "connect {}, header {}, idle {}, shutdown grace {}",
            seconds(config.connect_timeout),
            seconds(config.header_timeout),
            config.idle_timeout.map_or_else(|| "off".to_owned(), seconds),
            seconds(config.shutdown_grace)
        ),
    );
    let off = |limit: Option<String>| limit.unwrap_or_else(|| "off".to_owned());
    line(
        "tunnels",
        format!(
            "at most {}, per client {}, requests per client per second {}",
            config.max_tunnels,
            off(config.max_tunnels_per_client.map(|n| n.to_string())),
            off(config.max_requests_per_client_per_second.map(|n| n.to_string()))
        ),
    );
    line("workers", format!("{} data-plane threads", config.workers));
    line("log format", format!("{:?}", config.log_format).to_lowercase());
    line(
        "log stall",
        format!(
            "{}; stalled after {} without a completed log write",
            match config.log_stall_policy {
                crate::config::LogStallPolicy::Refuse => "refuse (503 when the decision line cannot be buffered)",
                crate::config::LogStallPolicy::Drop => "drop (serve; lines that do not fit are dropped and counted)",
            },
            seconds(config.log_stall_timeout)
        ),
    );
    line(
        "statsd",
        config.statsd_address.as_ref().map_or_else(
            || "off".to_owned(),
            |a| format!("{a} (resolved at start; connect time {})", if config.time_connect { "on" } else { "off" }),
        ),
    );
    line(
        "deny message extra",
        config.deny_message_extra.as_ref().map_or_else(|| "none".to_owned(), |m| format!("{m:?}")),
    );
    out
}
