//! Start-up configuration: Smokescreen's flag names, its proxy config file
//! read strictly, and the flags `proxyd` adds. Three layers: [`Args`] (the
//! command line), [`FileConfig`] (the YAML file as written), and [`Config`]
//! (validated; the only one the rest of `proxyd` uses).
//!
//! Every problem is an error naming the input and what is wrong; nothing is
//! silently ignored or defaulted. This module reads files and the
//! environment but never opens a socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::IgnoredAny;

use egress_policy::address::AddressRules;
use egress_policy::policy::{Action, ActionSet, AddressSpec};

use crate::admin_auth::AdminToken;
use crate::policy_fetch::{MAX_FETCH_BYTES, RemoteSettings};
use crate::policy_trust::TrustSettings;
use crate::reload::ReloadSettings;
use crate::role::RoleFrom;
use crate::tls::{ServerIdentity, TlsSettings};

pub const DEFAULT_PORT: u16 = 4750;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_TUNNELS: usize = 10_000;
const DEFAULT_LOG_STALL_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_AUTH_ROLE: &str = "authed";
const DEFAULT_AUTH_REALM: &str = "proxyd";
/// Longest `--proxy-auth-realm` accepted.
const MAX_AUTH_REALM: usize = 128;
/// More data-plane threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// One data-plane thread per CPU proxyd may run on (affinity and cgroup
/// quota included), or 1 when that cannot be read.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS)
}

/// The signals proxyd handles, for `--help` and the man page.
pub const SIGNALS_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  graceful stop: stop accepting, /readyz 503, open tunnels get --shutdown-grace, exit 0
  SIGUSR2          graceful stop, as SIGTERM (Einhorn retires a worker with it, as Smokescreen)
  SIGHUP           reload the policy (a table that does not verify is refused; the active one keeps serving)
  SIGUSR1          upgrade in place: start the binary proxyd was started from with the same arguments, hand it
                   the listening sockets; once it serves, drain as SIGUSR2 (never before: see --upgrade-timeout)

Listening sockets are inherited instead of bound from --listen-ip/--listen-port under Einhorn
(EINHORN_FD_0 proxy, EINHORN_FD_1 admin), systemd socket activation (LISTEN_FDNAMES proxy, admin)
and an upgrade in place.";

/// The command line. Flag names are Smokescreen's where the meaning is the same.
#[derive(Debug, Default, Parser)]
#[command(
    name = "proxyd",
    version = crate::VERSION,
    about = "SSRF-safe HTTP CONNECT egress proxy serving a compiled policy table (see `policyc compile`)",
    after_help = SIGNALS_HELP
)]
pub struct Args {
    /// Smokescreen-style proxy config file (YAML, read strictly). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// The compiled policy table (`policyc compile ACL -o FILE`). A YAML ACL is refused.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, value_name = "IP")]
    pub listen_ip: Option<IpAddr>,
    /// Port to listen on [default: 4750].
    #[arg(long, value_name = "PORT")]
    pub listen_port: Option<u16>,
    /// Connect timeout per upstream address, e.g. `10s`, `500ms` [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// DNS timeout for one name (A and AAAA) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dns_timeout: Option<Duration>,
    /// Time allowed for the PROXY header, TLS handshake and CONNECT request head [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// A tunnel with no bytes either way for this long is closed; `0s` disables [default: 300s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT/SIGUSR2 (and after an upgrade), how long open tunnels may keep running [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// On SIGUSR1, how long the new process may take to serve before it is killed and this one keeps serving [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub upgrade_timeout: Option<Duration>,
    /// Deny this CIDR (repeatable). The most specific operator rule wins; deny wins ties.
    #[arg(long, value_name = "CIDR")]
    pub deny_range: Vec<IpNet>,
    /// Allow this CIDR even if it is special-purpose (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub allow_range: Vec<IpNet>,
    /// Deny this `IP` or `IP:PORT` (repeatable).
    #[arg(long, value_name = "IP[:PORT]")]
    pub deny_address: Vec<AddressSpec>,
    /// Allow this `IP` or `IP:PORT` (repeatable).
    #[arg(long, value_name = "IP[:PORT]")]
    pub allow_address: Vec<AddressSpec>,
    /// DNS server to use instead of the system's (`IP:PORT`, repeatable).
    #[arg(long, value_name = "IP:PORT")]
    pub resolver_address: Vec<SocketAddr>,
    /// PEM file with the server certificate chain and private key: serve TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_server_bundle_file: Option<PathBuf>,
    /// PEM CA for client certificates (repeatable): mTLS, role = certificate CN.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca_file: Vec<PathBuf>,
    /// Certificate revocation list for client certificates (repeatable).
    #[arg(long, value_name = "FILE")]
    pub tls_crl_file: Vec<PathBuf>,
    /// Text appended to the body of every 403 denial.
    #[arg(long, value_name = "MESSAGE")]
    pub additional_error_message_on_deny: Option<String>,
    /// Refuse a policy that uses this action (repeatable).
    #[arg(long, value_name = "ACTION", value_parser = parse_action)]
    pub disable_acl_policy_action: Vec<Action>,
    /// Require a PROXY protocol v1/v2 header on every connection.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Allow RFC 1918 and fc00::/7 destinations (never loopback, link-local or metadata).
    #[arg(long)]
    pub unsafe_allow_private_ranges: bool,
    /// Cap on concurrent tunnels; beyond it clients get 429 [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_concurrent_connect_tunnels: Option<usize>,
    /// Cap on concurrent tunnels per client IP address (the PROXY header's source when that is on); beyond it 429 [default: off].
    #[arg(long, value_name = "N")]
    pub max_tunnels_per_client: Option<usize>,
    /// Cap on request heads per second per client IP address (a burst of N, then N a second); beyond it 429 [default: off].
    #[arg(long, value_name = "N")]
    pub max_requests_per_client_per_second: Option<u32>,
    /// Data-plane threads, each accepting and serving its own connections [default: the CPUs proxyd may use].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Clients without a role (no certificate, no credentials) use the default rule.
    #[arg(long)]
    pub allow_missing_role: bool,
    /// Name of an environment variable holding the proxy password (Basic auth, any user name).
    #[arg(long, value_name = "VAR")]
    pub proxy_password_env: Option<String>,
    /// Role given to clients that present the proxy password [default: authed].
    #[arg(long, value_name = "ROLE")]
    pub proxy_auth_role: Option<String>,
    /// Realm of the `407` challenge (`Proxy-Authenticate: Basic realm="REALM"`) [default: proxyd].
    #[arg(long, value_name = "REALM")]
    pub proxy_auth_realm: Option<String>,
    /// Certificate field naming the role, and a regex whose first group is the role:
    /// cn, ou, o, uri-san, dns-san or email-san, e.g. `uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$` [default: cn].
    #[arg(long, value_name = "FIELD[:REGEX]")]
    pub role_from: Option<String>,
    /// Re-read the policy this often even without file events (NFS, some mounts); `0s` disables [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub policy_check_interval: Option<Duration>,
    /// Quiet time after the last change to the policy file before reloading; changes without pause wait at most 5 times this [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub policy_reload_debounce: Option<Duration>,
    /// Log format [default: json].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// While the log sink is stalled: refuse new CONNECTs whose decision line cannot be buffered (503), or serve them and drop the line (counted) [default: refuse].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub log_stall_policy: Option<LogStallPolicy>,
    /// The log sink is stalled after this long without a completed write; a CONNECT waits at most this long for room for its decision line [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub log_stall_timeout: Option<Duration>,
    /// Serve /healthz, /readyz, /policy and /metrics on this `IP:PORT` (never the proxy's port) [default: off].
    #[arg(long, value_name = "IP:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Send Smokescreen-named metrics as DogStatsD over UDP to this `HOST:PORT` [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    pub statsd_address: Option<String>,
    /// Validate everything a start would (flags, config file, policy table, TLS files, CRLs,
    /// resolver) without listening; print the effective configuration and exit 0, or list every
    /// problem and exit 1.
    #[arg(long)]
    pub check_config: bool,
    /// Print the completion script for SHELL to stdout and exit.
    #[arg(long, value_name = "SHELL")]
    pub completions: Option<clap_complete::Shell>,
    /// Write the man page proxyd.1 into DIR and exit (`make man`).
    #[arg(long, value_name = "DIR", hide = true)]
    pub generate_man: Option<PathBuf>,
    /// Require tables signed by this Ed25519 public key (PEM, from `policyc keygen`; repeatable for rotation).
    #[arg(long, value_name = "PUB")]
    pub policy_public_key: Vec<PathBuf>,
    /// Accept a signed table whose serial is not higher than the active one's.
    #[arg(long)]
    pub allow_policy_rollback: bool,
    /// Fetch the signed table from this http(s) URL instead of --policy (needs --policy-public-key).
    #[arg(long, value_name = "URL", conflicts_with = "policy")]
    pub policy_url: Option<String>,
    /// How often to poll --policy-url (conditional requests) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub policy_poll_interval: Option<Duration>,
    /// Keep the last verified table fetched from --policy-url here; start from it when the URL is down.
    #[arg(long, value_name = "FILE")]
    pub policy_cache: Option<PathBuf>,
    /// PEM CA certificate(s) for an https --policy-url [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub policy_url_ca: Option<PathBuf>,
    /// Size cap for --policy-url responses (tests lower it) [default: 256 MiB].
    #[arg(long, value_name = "BYTES", hide = true)]
    pub policy_url_max_bytes: Option<u64>,
    /// Serve Smokescreen's stats socket `DIR/track-<pid>.sock`: the open tunnels as JSON [default: off].
    #[arg(long, value_name = "DIR")]
    pub stats_socket_dir: Option<PathBuf>,
    /// Permissions of the stats socket, in octal [default: 700].
    #[arg(long, value_name = "MODE")]
    pub stats_socket_file_mode: Option<String>,
    /// File holding a bearer token: the admin listener then requires `Authorization: Bearer <token>`
    /// on everything but /healthz and /readyz [default: no token].
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// With --admin-token-file, leave /metrics open (for scrapers that cannot send the token).
    #[arg(long)]
    pub admin_metrics_open: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// What happens to a new CONNECT while the log sink is stalled and its
/// decision line cannot be buffered (`--log-stall-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStallPolicy {
    /// Answer 503: no tunnel without its audit line (fail closed).
    #[default]
    Refuse,
    /// Serve it; the line is dropped and counted.
    Drop,
}

/// Which address families resolution may use (Smokescreen's `network`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    Ip,
    Ip4,
    Ip6,
}

impl Network {
    pub fn permits(self, ip: IpAddr) -> bool {
        match self {
            Network::Ip => true,
            Network::Ip4 => ip.is_ipv4(),
            Network::Ip6 => ip.is_ipv6(),
        }
    }
}

/// Smokescreen's proxy config file, read strictly.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    ip: Option<IpAddr>,
    port: Option<u16>,
    deny_ranges: Option<Vec<String>>,
    allow_ranges: Option<Vec<String>>,
    deny_addresses: Option<Vec<String>>,
    allow_addresses: Option<Vec<String>>,
    resolver_addresses: Option<Vec<String>>,
    support_proxy_protocol: Option<bool>,
    deny_message_extra: Option<String>,
    allow_missing_role: Option<bool>,
    network: Option<Network>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
    exit_timeout: Option<String>,
    read_header_timeout: Option<String>,
    dns_timeout: Option<String>,
    tls: Option<FileTls>,
    unsafe_allow_private_ranges: Option<bool>,
    max_concurrent_connect_tunnels: Option<usize>,
    // Keys proxyd adds.
    max_tunnels_per_client: Option<usize>,
    max_requests_per_client_per_second: Option<u32>,
    workers: Option<usize>,
    policy: Option<PathBuf>,
    policy_check_interval: Option<String>,
    policy_reload_debounce: Option<String>,
    disable_acl_policy_actions: Option<Vec<String>>,
    proxy_password_env: Option<String>,
    proxy_auth_role: Option<String>,
    proxy_auth_realm: Option<String>,
    role_from: Option<String>,
    log_format: Option<LogFormat>,
    log_stall_policy: Option<LogStallPolicy>,
    log_stall_timeout: Option<String>,
    admin_listen: Option<SocketAddr>,
    statsd_address: Option<String>,
    time_connect: Option<bool>,
    policy_public_keys: Option<Vec<PathBuf>>,
    admin_token_file: Option<PathBuf>,
    admin_metrics_open: Option<bool>,
    stats_socket_dir: Option<PathBuf>,
    stats_socket_file_mode: Option<String>,
    // Smokescreen keys for features a CONNECT-only proxy does not have:
    // accepted by the parser only to refuse them with a reason.
    acl_file: Option<IgnoredAny>,
    mitm_ca_cert_file: Option<IgnoredAny>,
    mitm_ca_key_file: Option<IgnoredAny>,
    read_timeout: Option<IgnoredAny>,
    write_timeout: Option<IgnoredAny>,
    transport_max_idle_conns: Option<IgnoredAny>,
    transport_max_idle_conns_per_host: Option<IgnoredAny>,
    max_concurrent_requests: Option<IgnoredAny>,
    max_request_rate: Option<IgnoredAny>,
    max_request_burst: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_files: Option<Vec<PathBuf>>,
    crl_files: Option<Vec<PathBuf>>,
}

/// The proxy password role source.
#[derive(Clone)]
pub struct ProxyAuth {
    /// Name of the environment variable it came from (for messages; the value is never printed).
    pub variable: String,
    pub password: String,
    pub role: String,
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("variable", &self.variable)
            .field("password", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// Called before every upstream connection attempt with the address about to
/// be dialled; returning false refuses it. The end-to-end tests install one
/// that fails the test on any non-loopback address.
pub type EgressGuard = std::sync::Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Validated configuration.
#[derive(Clone)]
pub struct Config {
    /// Where to listen (the caller binds; tests use 127.0.0.1:0).
    pub listen: SocketAddr,
    /// The compiled policy table.
    pub policy: PathBuf,
    /// Actions a policy may not use.
    pub disabled_actions: ActionSet,
    pub connect_timeout: Duration,
    pub dns_timeout: Duration,
    /// Bound on the PROXY header, TLS handshake and CONNECT head together.
    pub header_timeout: Duration,
    /// `None`: tunnels never time out for inactivity.
    pub idle_timeout: Option<Duration>,
    pub shutdown_grace: Duration,
    /// SIGUSR1: how long the new process may take to report that it serves.
    pub upgrade_timeout: Duration,
    pub max_tunnels: usize,
    /// Cap on concurrent tunnels per client IP address; `None`: no per-client cap.
    pub max_tunnels_per_client: Option<usize>,
    /// Request heads per second per client IP address; `None`: no rate limit.
    pub max_requests_per_client_per_second: Option<u32>,
    /// Data-plane threads (at least 1): each runs its own event loop, accepts
    /// from the shared listener and keeps every connection it accepted.
    pub workers: usize,
    /// Operator address rules; the listener's own address is added at start.
    pub address_rules: AddressRules,
    pub network: Network,
    /// DNS servers; empty means the system's.
    pub resolver_addresses: Vec<SocketAddr>,
    pub tls: Option<TlsSettings>,
    pub proxy_protocol: bool,
    pub allow_missing_role: bool,
    pub proxy_auth: Option<ProxyAuth>,
    /// The realm of the proxy password's `407` challenge.
    pub proxy_auth_realm: std::sync::Arc<str>,
    /// Appended to 403 bodies.
    pub deny_message_extra: Option<String>,
    pub log_format: LogFormat,
    /// New CONNECTs while the log sink is stalled: refuse (503) or serve and drop the line.
    pub log_stall_policy: LogStallPolicy,
    /// No completed log write for this long (with lines to write): the sink is stalled;
    /// in `refuse` mode, the longest a CONNECT waits for room for its decision line.
    pub log_stall_timeout: Duration,
    /// How policy reloads are triggered.
    pub reload: ReloadSettings,
    pub egress_guard: Option<EgressGuard>,
    /// Where the admin endpoints listen; `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// statsd `HOST:PORT` (resolved once at start); `None`: no statsd.
    pub statsd_address: Option<String>,
    /// Send `cn.atpt.connect.time` to statsd.
    pub time_connect: bool,
    /// Signature requirements for every table (none by default).
    pub policy_trust: TrustSettings,
    /// Fetch the table from a URL instead of `policy` (then `policy` is the cache path, or empty).
    pub policy_remote: Option<RemoteSettings>,
    /// Smokescreen's stats socket (`--stats-socket-dir`); `None`: off.
    pub stats_socket: Option<StatsSocketSettings>,
    /// The admin listener's bearer token (`--admin-token-file`); `None`: no token.
    pub admin_token: Option<AdminToken>,
    /// With a token, `/metrics` stays open.
    pub admin_metrics_open: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("policy", &self.policy)
            .field("proxy_auth", &self.proxy_auth)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with every default, for `policy`: what tests start from.
    pub fn with_policy(policy: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            policy: policy.into(),
            disabled_actions: ActionSet::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            dns_timeout: DEFAULT_DNS_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            max_tunnels: DEFAULT_MAX_TUNNELS,
            max_tunnels_per_client: None,
            max_requests_per_client_per_second: None,
            workers: default_workers(),
            address_rules: AddressRules::default(),
            network: Network::Ip,
            resolver_addresses: Vec::new(),
            tls: None,
            proxy_protocol: false,
            allow_missing_role: false,
            proxy_auth: None,
            proxy_auth_realm: std::sync::Arc::from(DEFAULT_AUTH_REALM),
            deny_message_extra: None,
            log_format: LogFormat::Json,
            log_stall_policy: LogStallPolicy::Refuse,
            log_stall_timeout: DEFAULT_LOG_STALL_TIMEOUT,
            reload: ReloadSettings::default(),
            egress_guard: None,
            admin_listen: None,
            statsd_address: None,
            time_connect: false,
            policy_trust: TrustSettings::default(),
            policy_remote: None,
            stats_socket: None,
            admin_token: None,
            admin_metrics_open: false,
        }
    }

    /// Builds the configuration from flags, the optional config file, and
    /// the environment (for the proxy password). The error is the first
    /// problem [`Config::load_all`] finds: start-up refuses with one line.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let (config, problems) = Config::load_all(&args);
        match problems.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(config),
        }
    }

    /// Like [`Config::load`], but finds every problem (for `--check-config`),
    /// in the order `load` would meet them. The configuration is only valid
    /// when the list is empty; otherwise each refused value is replaced by
    /// its default so later checks (policy, TLS files, resolver) still run.
    pub fn load_all(args: &Args) -> (Config, Vec<ConfigError>) {
        let mut problems = Vec::new();
        let p = &mut problems;
        let file = match &args.config_file {
            Some(path) => keep(p, read_file_config(path)).unwrap_or_default(),
            None => FileConfig::default(),
        };
        let from_file = |key: &str| format!("config file key `{key}`");
        keep(p, file.refuse_unsupported());

        let (policy_trust, policy_remote) = keep(p, policy_distribution(args, &file)).unwrap_or_default();
        let policy = match &policy_remote {
            Some(remote) => remote.cache.clone().unwrap_or_default(),
            None => keep(p, args.policy.clone().or(file.policy.clone()).ok_or(ConfigError::MissingPolicy))
                .unwrap_or_default(),
        };

        let mut disabled: ActionSet = args.disable_acl_policy_action.iter().copied().collect();
        for name in file.disable_acl_policy_actions.iter().flatten() {
            let action = parse_action(name)
                .map_err(|message| ConfigError::Invalid { input: from_file("disable_acl_policy_actions"), message });
            if let Some(action) = keep(p, action) {
                disabled.insert(action);
            }
        }

        let listen_ip = args.listen_ip.or(file.ip).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let listen_port = args.listen_port.or(file.port).unwrap_or(DEFAULT_PORT);

        let mut duration =
            |flag: Option<Duration>, key: &str, value: &Option<String>, default: Duration| match (flag, value) {
                (Some(d), _) => d,
                (None, Some(text)) => keep(
                    p,
                    parse_duration(text).map_err(|message| ConfigError::Invalid { input: from_file(key), message }),
                )
                .unwrap_or(default),
                (None, None) => default,
            };
        let connect_timeout = duration(args.timeout, "connect_timeout", &file.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let dns_timeout = duration(args.dns_timeout, "dns_timeout", &file.dns_timeout, DEFAULT_DNS_TIMEOUT);
        let header_timeout =
            duration(args.header_timeout, "read_header_timeout", &file.read_header_timeout, DEFAULT_HEADER_TIMEOUT);
        let idle_timeout = duration(args.idle_timeout, "idle_timeout", &file.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        let shutdown_grace = duration(args.shutdown_grace, "exit_timeout", &file.exit_timeout, DEFAULT_SHUTDOWN_GRACE);
        let log_stall_timeout =
            duration(args.log_stall_timeout, "log_stall_timeout", &file.log_stall_timeout, DEFAULT_LOG_STALL_TIMEOUT);
        let defaults = ReloadSettings::default();
        let check_interval = duration(
            args.policy_check_interval,
            "policy_check_interval",
            &file.policy_check_interval,
            defaults.periodic.unwrap_or(Duration::ZERO),
        );
        let debounce = duration(
            args.policy_reload_debounce,
            "policy_reload_debounce",
            &file.policy_reload_debounce,
            defaults.debounce,
        );
        for (name, value) in [
            ("connect timeout", connect_timeout),
            ("DNS timeout", dns_timeout),
            ("header timeout", header_timeout),
            ("log stall timeout", log_stall_timeout),
        ] {
            if value.is_zero() {
                p.push(ConfigError::Invalid { input: name.into(), message: "must be greater than zero".into() });
            }
        }
        if args.upgrade_timeout.is_some_and(|t| t.is_zero()) {
            p.push(ConfigError::Invalid {
                input: "--upgrade-timeout".into(),
                message: "must be greater than zero".into(),
            });
        }

        let mut rules = AddressRules {
            deny_ranges: keep(p, parse_list(&file.deny_ranges, "deny_ranges")).unwrap_or_default(),
            allow_ranges: keep(p, parse_list(&file.allow_ranges, "allow_ranges")).unwrap_or_default(),
            deny_addresses: keep(p, parse_list(&file.deny_addresses, "deny_addresses")).unwrap_or_default(),
            allow_addresses: keep(p, parse_list(&file.allow_addresses, "allow_addresses")).unwrap_or_default(),
            unsafe_allow_private_ranges: args.unsafe_allow_private_ranges
                || file.unsafe_allow_private_ranges.unwrap_or(false),
            self_addresses: Vec::new(),
        };
        rules.deny_ranges.extend(args.deny_range.iter().copied());
        rules.allow_ranges.extend(args.allow_range.iter().copied());
        rules.deny_addresses.extend(args.deny_address.iter().copied());
        rules.allow_addresses.extend(args.allow_address.iter().copied());

        let mut resolver_addresses: Vec<SocketAddr> =
            keep(p, parse_list(&file.resolver_addresses, "resolver_addresses")).unwrap_or_default();
        resolver_addresses.extend(args.resolver_address.iter().copied());

        let role_from = keep(p, role_from(args, &file)).flatten();
        let tls = keep(p, tls_settings(args, &file, role_from)).flatten();

        let password_variable = args.proxy_password_env.clone().or(file.proxy_password_env.clone());
        let proxy_auth = match &password_variable {
            None => None,
            Some(variable) => {
                let password = match std::env::var(variable) {
                    Ok(password) if !password.is_empty() => Some(password),
                    _ => {
                        p.push(ConfigError::PasswordUnset(variable.clone()));
                        None
                    }
                };
                let role = args
                    .proxy_auth_role
                    .clone()
                    .or(file.proxy_auth_role.clone())
                    .unwrap_or_else(|| DEFAULT_AUTH_ROLE.to_owned());
                if role.is_empty() {
                    p.push(ConfigError::Invalid {
                        input: "--proxy-auth-role".into(),
                        message: "the role must not be empty".into(),
                    });
                }
                password.filter(|_| !role.is_empty()).map(|password| ProxyAuth {
                    variable: variable.clone(),
                    password,
                    role,
                })
            }
        };
        if password_variable.is_none() && args.proxy_auth_role.is_some() {
            p.push(ConfigError::Invalid {
                input: "--proxy-auth-role".into(),
                message: "has no effect without --proxy-password-env".into(),
            });
        }
        let realm = args.proxy_auth_realm.clone().or(file.proxy_auth_realm.clone());
        if password_variable.is_none() && realm.is_some() {
            p.push(ConfigError::Invalid {
                input: "--proxy-auth-realm".into(),
                message: "has no effect without --proxy-password-env".into(),
            });
        }
        let proxy_auth_realm: std::sync::Arc<str> = match realm {
            None => std::sync::Arc::from(DEFAULT_AUTH_REALM),
            Some(realm) => match check_realm(&realm) {
                Ok(()) => std::sync::Arc::from(realm),
                Err(message) => {
                    p.push(ConfigError::Invalid { input: "--proxy-auth-realm".into(), message });
                    std::sync::Arc::from(DEFAULT_AUTH_REALM)
                }
            },
        };

        let mut max_tunnels =
            args.max_concurrent_connect_tunnels.or(file.max_concurrent_connect_tunnels).unwrap_or(DEFAULT_MAX_TUNNELS);
        if max_tunnels == 0 {
            p.push(ConfigError::Invalid {
                input: "max concurrent connect tunnels".into(),
                message: "must be at least 1 (the cap is always on)".into(),
            });
            max_tunnels = DEFAULT_MAX_TUNNELS;
        }

        let mut max_tunnels_per_client = args.max_tunnels_per_client.or(file.max_tunnels_per_client);
        if max_tunnels_per_client == Some(0) {
            p.push(ConfigError::Invalid {
                input: "max tunnels per client".into(),
                message: "must be at least 1; leave it out to have no per-client cap".into(),
            });
            max_tunnels_per_client = None;
        }
        let mut max_requests_per_client_per_second =
            args.max_requests_per_client_per_second.or(file.max_requests_per_client_per_second);
        if max_requests_per_client_per_second == Some(0) {
            p.push(ConfigError::Invalid {
                input: "max requests per client per second".into(),
                message: "must be at least 1; leave it out to have no per-client rate limit".into(),
            });
            max_requests_per_client_per_second = None;
        }

        let mut workers = args.workers.or(file.workers).unwrap_or_else(default_workers);
        if workers == 0 || workers > MAX_WORKERS {
            p.push(ConfigError::Invalid {
                input: "workers".into(),
                message: format!("must be between 1 and {MAX_WORKERS}; leave it out for one per CPU"),
            });
            workers = 1;
        }

        let listen = SocketAddr::new(listen_ip, listen_port);
        let admin_listen = args.admin_listen.or(file.admin_listen);
        if let Some(admin) = admin_listen
            && admin.port() != 0
            && admin.port() == listen.port()
            && (admin.ip() == listen.ip() || admin.ip().is_unspecified() || listen.ip().is_unspecified())
        {
            p.push(ConfigError::Invalid {
                input: "--admin-listen".into(),
                message: format!(
                    "{admin} is the proxy's own address ({listen}); give the admin endpoints another port"
                ),
            });
        }
        let statsd_address = args.statsd_address.clone().or(file.statsd_address.clone());
        if let Some(address) = &statsd_address
            && let Err(message) = check_host_port(address)
        {
            p.push(ConfigError::Invalid { input: "statsd address".into(), message });
        }
        let time_connect = file.time_connect.unwrap_or(false);
        if time_connect && statsd_address.is_none() {
            p.push(ConfigError::Invalid {
                input: from_file("time_connect"),
                message: "only adds cn.atpt.connect.time to statsd: set statsd_address (Prometheus always has proxyd_connect_duration_seconds)".into(),
            });
        }

        let stats_socket = stats_socket_settings(args, &file).and_then(|settings| keep(p, settings));
        let token_file = args.admin_token_file.clone().or(file.admin_token_file.clone());
        let admin_token = token_file.as_ref().and_then(|path| {
            let token = AdminToken::read(path).map_err(|message| ConfigError::Invalid {
                input: format!("--admin-token-file {}", path.display()),
                message,
            });
            keep(p, token)
        });
        let admin_metrics_open = args.admin_metrics_open || file.admin_metrics_open.unwrap_or(false);
        if admin_metrics_open && token_file.is_none() {
            p.push(ConfigError::Invalid {
                input: "--admin-metrics-open".into(),
                message: "has no effect without --admin-token-file (without a token everything is open)".into(),
            });
        }

        let config = Config {
            listen,
            policy,
            disabled_actions: disabled,
            connect_timeout,
            dns_timeout,
            header_timeout,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            shutdown_grace,
            upgrade_timeout: args.upgrade_timeout.unwrap_or(DEFAULT_UPGRADE_TIMEOUT),
            max_tunnels,
            max_tunnels_per_client,
            max_requests_per_client_per_second,
            workers,
            address_rules: rules,
            network: file.network.unwrap_or_default(),
            resolver_addresses,
            tls,
            proxy_protocol: args.proxy_protocol || file.support_proxy_protocol.unwrap_or(false),
            allow_missing_role: args.allow_missing_role || file.allow_missing_role.unwrap_or(false),
            proxy_auth,
            proxy_auth_realm,
            deny_message_extra: args.additional_error_message_on_deny.clone().or(file.deny_message_extra.clone()),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log_stall_policy: args.log_stall_policy.or(file.log_stall_policy).unwrap_or_default(),
            log_stall_timeout,
            reload: ReloadSettings { debounce, periodic: (!check_interval.is_zero()).then_some(check_interval) },
            egress_guard: None,
            admin_listen,
            statsd_address,
            time_connect,
            policy_trust,
            policy_remote,
            stats_socket,
            admin_token,
            admin_metrics_open,
        };
        (config, problems)
    }
}

/// The value of `result`, or `None` with its error added to `problems`.
fn keep<T>(problems: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            problems.push(error);
            None
        }
    }
}

/// Smokescreen's default mode for the stats socket file.
pub const DEFAULT_STATS_SOCKET_MODE: u32 = 0o700;
/// Longest unix socket path the kernel takes (sun_path less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where the stats socket goes and its permissions (served by [`crate::stats_socket`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSocketSettings {
    pub dir: PathBuf,
    /// Permission bits (at most 0o777).
    pub mode: u32,
}

impl StatsSocketSettings {
    /// Smokescreen's mode text: octal digits, at most `777`.
    pub fn parse_mode(text: &str) -> Result<u32, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
            _ => Err(format!("{text:?} is not an octal file mode such as 700 or 660")),
        }
    }

    /// `DIR/track-<pid>.sock`.
    pub fn path(&self, pid: u32) -> PathBuf {
        self.dir.join(format!("track-{pid}.sock"))
    }

    /// The directory exists and the socket's path fits a unix socket address.
    pub fn check(&self) -> Result<(), String> {
        let metadata = std::fs::metadata(&self.dir).map_err(|e| format!("cannot use it: {e}"))?;
        if !metadata.is_dir() {
            return Err("not a directory".into());
        }
        let longest = self.path(u32::MAX);
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "the socket path {} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows; choose a shorter directory",
                longest.display()
            ));
        }
        Ok(())
    }

    /// Whether a file can be made in the directory (`--check-config`: a
    /// probe file is created and removed, as the socket will be).
    pub fn check_writable(&self) -> Result<(), String> {
        let probe = self.dir.join(format!(".proxyd-check-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| format!("cannot create files in it: {e}"))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }
}

/// `--stats-socket-dir` and `--stats-socket-file-mode` (or their keys):
/// `None` when no directory is named.
fn stats_socket_settings(args: &Args, file: &FileConfig) -> Option<Result<StatsSocketSettings, ConfigError>> {
    let mode_text = args.stats_socket_file_mode.clone().or(file.stats_socket_file_mode.clone());
    let Some(dir) = args.stats_socket_dir.clone().or(file.stats_socket_dir.clone()) else {
        return mode_text.map(|_| {
            Err(ConfigError::Invalid {
                input: "--stats-socket-file-mode".into(),
                message: "has no effect without --stats-socket-dir".into(),
            })
        });
    };
    let mode = match mode_text.as_deref().map(StatsSocketSettings::parse_mode) {
        None => DEFAULT_STATS_SOCKET_MODE,
        Some(Ok(mode)) => mode,
        Some(Err(message)) => {
            return Some(Err(ConfigError::Invalid { input: "--stats-socket-file-mode".into(), message }));
        }
    };
    let settings = StatsSocketSettings { dir, mode };
    Some(settings.check().map(|()| settings.clone()).map_err(|message| ConfigError::Invalid {
        input: format!("--stats-socket-dir {}", settings.dir.display()),
        message,
    }))
}

/// Signature and remote-fetch settings (`--policy-public-key`, `--policy-url`, ...).
fn policy_distribution(args: &Args, file: &FileConfig) -> Result<(TrustSettings, Option<RemoteSettings>), ConfigError> {
    let invalid = |input: &str, message: String| ConfigError::Invalid { input: input.into(), message };
    let mut key_files = file.policy_public_keys.clone().unwrap_or_default();
    key_files.extend(args.policy_public_key.iter().cloned());
    let trust = TrustSettings::from_files(&key_files, args.allow_policy_rollback)
        .map_err(|message| invalid("--policy-public-key", message))?;
    if args.allow_policy_rollback && !trust.checks_signatures() {
        return Err(invalid(
            "--allow-policy-rollback",
            "has no effect without --policy-public-key (serials are only checked on signed tables)".into(),
        ));
    }
    let Some(url) = &args.policy_url else {
        for (flag, given) in [
            ("--policy-poll-interval", args.policy_poll_interval.is_some()),
            ("--policy-cache", args.policy_cache.is_some()),
            ("--policy-url-ca", args.policy_url_ca.is_some()),
        ] {
            if given {
                return Err(invalid(flag, "has no effect without --policy-url".into()));
            }
        }
        return Ok((trust, None));
    };
    if args.policy.is_some() || file.policy.is_some() {
        return Err(invalid("--policy-url", "cannot be combined with --policy: choose one source".into()));
    }
    if !trust.checks_signatures() {
        return Err(invalid(
            "--policy-url",
            "needs --policy-public-key: a fetched table is trusted only if its signature verifies".into(),
        ));
    }
    let url = RemoteSettings::parse_url(url).map_err(|message| invalid("--policy-url", message))?;
    let poll_interval = args.policy_poll_interval.unwrap_or(Duration::from_secs(30));
    if poll_interval.is_zero() {
        return Err(invalid("--policy-poll-interval", "must be greater than zero".into()));
    }
    if url.scheme_str() == Some("http") && args.policy_url_ca.is_some() {
        return Err(invalid("--policy-url-ca", "only applies to an https:// --policy-url".into()));
    }
    let max_bytes = args.policy_url_max_bytes.unwrap_or(MAX_FETCH_BYTES).min(MAX_FETCH_BYTES);
    Ok((
        trust,
        Some(RemoteSettings {
            url,
            poll_interval,
            cache: args.policy_cache.clone(),
            ca_file: args.policy_url_ca.clone(),
            max_bytes,
        }),
    ))
}

/// `HOST:PORT` with a non-empty host and a port from 1 to 65535.
fn check_host_port(address: &str) -> Result<(), String> {
    let bad = |why: &str| format!("{address:?}: {why}; expected HOST:PORT, such as 127.0.0.1:8125");
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(bad("invalid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(bad("invalid port")),
    }
}

impl FileConfig {
    fn refuse_unsupported(&self) -> Result<(), ConfigError> {
        let refusals: [(&str, bool, &str); 10] = [
            (
                "acl_file",
                self.acl_file.is_some(),
                "proxyd reads compiled tables: run `policyc compile ACL -o policy.bin` and set `policy: policy.bin`",
            ),
            (
                "mitm_ca_cert_file",
                self.mitm_ca_cert_file.is_some(),
                "MITM is not supported: proxyd only tunnels CONNECT",
            ),
            ("mitm_ca_key_file", self.mitm_ca_key_file.is_some(), "MITM is not supported: proxyd only tunnels CONNECT"),
            ("read_timeout", self.read_timeout.is_some(), "proxyd has no HTTP forward path; use `idle_timeout`"),
            ("write_timeout", self.write_timeout.is_some(), "proxyd has no HTTP forward path; use `idle_timeout`"),
            (
                "transport_max_idle_conns",
                self.transport_max_idle_conns.is_some(),
                "proxyd has no HTTP forward path and keeps no upstream connection pool",
            ),
            (
                "transport_max_idle_conns_per_host",
                self.transport_max_idle_conns_per_host.is_some(),
                "proxyd has no HTTP forward path and keeps no upstream connection pool",
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests.is_some(),
                "there are no HTTP-path requests; use `max_concurrent_connect_tunnels`",
            ),
            ("max_request_rate", self.max_request_rate.is_some(), "request rate limiting is not supported"),
            ("max_request_burst", self.max_request_burst.is_some(), "request rate limiting is not supported"),
        ];
        match refusals.iter().find(|(_, present, _)| *present) {
            Some((key, _, why)) => Err(ConfigError::Unsupported { key: (*key).to_owned(), reason: (*why).to_owned() }),
            None => Ok(()),
        }
    }
}

/// The realm goes inside a quoted string of a header: visible ASCII and
/// spaces, no `"` or `\`, so no client has to unescape it.
fn check_realm(realm: &str) -> Result<(), String> {
    if realm.is_empty() || realm.len() > MAX_AUTH_REALM {
        return Err(format!("the realm must be 1 to {MAX_AUTH_REALM} characters"));
    }
    match realm.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ') || *c == '"' || *c == '\\') {
        Some(c) => Err(format!("{realm:?}: {c:?} is not allowed; use visible ASCII and spaces, without '\"' or '\\'")),
        None => Ok(()),
    }
}

/// `--role-from` (or `role_from`), compiled; `None` when neither is given.
fn role_from(args: &Args, file: &FileConfig) -> Result<Option<RoleFrom>, ConfigError> {
    let (input, spec) = match (&args.role_from, &file.role_from) {
        (Some(spec), _) => ("--role-from", spec),
        (None, Some(spec)) => ("config file key `role_from`", spec),
        (None, None) => return Ok(None),
    };
    RoleFrom::parse(spec)
        .map(Some)
        .map_err(|e| ConfigError::Invalid { input: input.into(), message: format!("{spec:?}: {e}") })
}

fn tls_settings(
    args: &Args,
    file: &FileConfig,
    role_from: Option<RoleFrom>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let identity = match (&args.tls_server_bundle_file, &file.tls) {
        (Some(bundle), _) => Some(ServerIdentity::Bundle(bundle.clone())),
        (None, Some(tls)) => {
            let cert = tls.cert_file.clone().ok_or_else(|| ConfigError::Invalid {
                input: "config file key `tls`".into(),
                message: "the `tls` section requires `cert_file`".into(),
            })?;
            Some(match &tls.key_file {
                Some(key) => ServerIdentity::CertAndKey { cert, key: key.clone() },
                // Smokescreen: key_file defaults to cert_file (a bundle).
                None => ServerIdentity::Bundle(cert),
            })
        }
        (None, None) => None,
    };
    let mut client_ca_files: Vec<PathBuf> =
        file.tls.as_ref().and_then(|t| t.client_ca_files.clone()).unwrap_or_default();
    client_ca_files.extend(args.tls_client_ca_file.iter().cloned());
    let mut crl_files: Vec<PathBuf> = file.tls.as_ref().and_then(|t| t.crl_files.clone()).unwrap_or_default();
    crl_files.extend(args.tls_crl_file.iter().cloned());
    if role_from.is_some() && client_ca_files.is_empty() {
        return Err(ConfigError::Invalid {
            input: "--role-from".into(),
            message: "reads the role from client certificates: add --tls-client-ca-file (and a TLS listener)".into(),
        });
    }
    match identity {
        Some(server_bundle) => Ok(Some(TlsSettings {
            server_bundle,
            client_ca_files,
            crl_files,
            allow_missing_role: args.allow_missing_role || file.allow_missing_role.unwrap_or(false),
            role_from: role_from.unwrap_or_default(),
        })),
        None if !client_ca_files.is_empty() || !crl_files.is_empty() => Err(ConfigError::Invalid {
            input: "--tls-client-ca-file/--tls-crl-file".into(),
            message: "client certificates need a TLS listener: add --tls-server-bundle-file".into(),
        }),
        None => Ok(None),
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid { input: path.display().to_string(), message: e.to_string() })?;
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---") {
        // Smokescreen crashes on an empty file (§9.33); we say what is wrong.
        return Err(ConfigError::Invalid {
            input: path.display().to_string(),
            message: "the config file is empty; write `{}` for an empty configuration".into(),
        });
    }
    serde_saphyr::from_str::<FileConfig>(&text)
        .map_err(|e| ConfigError::Invalid { input: path.display().to_string(), message: one_line(&e.to_string()) })
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with("-->"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_list<T: FromStr>(values: &Option<Vec<String>>, key: &str) -> Result<Vec<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    values
        .iter()
        .flatten()
        .map(|v| {
            v.parse::<T>().map_err(|e| ConfigError::Invalid {
                input: format!("config file key `{key}`"),
                message: format!("{v:?}: {e}"),
            })
        })
        .collect()
}

fn parse_action(s: &str) -> Result<Action, String> {
    s.parse::<Action>().map_err(|e| e.to_string())
}

/// Go-style durations, as Smokescreen takes them: `10s`, `1m30s`, `250ms`,
/// `1h`, `0s`. A bare number is refused: a unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: use a number with a unit, such as 10s, 500ms or 1m30s");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, after) = rest.split_at(digits);
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let part = Duration::try_from_secs_f64(value * scale).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = next;
    }
    Ok(total)
}

/// Why start-up was refused. Each is printed as one line, then proxyd exits 1.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no policy: pass --policy FILE (a table from `policyc compile ACL -o FILE`)")]
    MissingPolicy,
    #[error("{input}: {message}")]
    Invalid { input: String, message: String },
    #[error("config file key `{key}` is not supported: {reason}")]
    Unsupported { key: String, reason: String },
    #[error("--proxy-password-env {0}: the variable is unset or empty")]
    PasswordUnset(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["10", "", "s", "10x", "-1s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    fn load(args: &[&str], file: Option<&str>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["proxyd"];
        let path = dir.path().join("c.yaml");
        let path_str = path.to_str().unwrap().to_owned();
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
            argv.extend(["--config-file", &path_str]);
        }
        argv.extend(args);
        Config::load(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn flags_override_the_file() {
        let c = load(
            &["--policy", "p.bin", "--listen-port", "9000", "--timeout", "3s"],
            Some("port: 8000\nconnect_timeout: 7s\nidle_timeout: 0s\nallow_missing_role: true\ndeny_ranges: [10.1.0.0/16]\n"),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, None);
        assert!(c.allow_missing_role);
        assert_eq!(c.address_rules.deny_ranges.len(), 1);
    }

    #[test]
    fn log_stall_settings_from_flags_and_file_with_defaults() {
        let c = load(&["--policy", "p.bin"], None).unwrap();
        assert_eq!((c.log_stall_policy, c.log_stall_timeout), (LogStallPolicy::Refuse, Duration::from_secs(1)));
        let c = load(&["--policy", "p.bin"], Some("log_stall_policy: drop\nlog_stall_timeout: 250ms\n")).unwrap();
        assert_eq!((c.log_stall_policy, c.log_stall_timeout), (LogStallPolicy::Drop, Duration::from_millis(250)));
        let c = load(
            &["--policy", "p.bin", "--log-stall-policy", "refuse", "--log-stall-timeout", "3s"],
            Some("log_stall_policy: drop\nlog_stall_timeout: 250ms\n"),
        )
        .unwrap();
        assert_eq!((c.log_stall_policy, c.log_stall_timeout), (LogStallPolicy::Refuse, Duration::from_secs(3)));
        let err = load(&["--policy", "p.bin", "--log-stall-timeout", "0s"], None).unwrap_err();
        assert!(err.to_string().contains("log stall timeout: must be greater than zero"), "{err}");
        let err = load(&["--policy", "p.bin"], Some("log_stall_timeout: soon\n")).unwrap_err();
        assert!(err.to_string().contains("log_stall_timeout"), "{err}");
        assert!(load(&["--policy", "p.bin"], Some("log_stall_policy: maybe\n")).is_err());
    }

    #[test]
    fn workers_default_to_the_cpus_and_must_be_at_least_one() {
        assert_eq!(load(&["--policy", "p.bin"], None).unwrap().workers, default_workers());
        assert!(default_workers() >= 1);
        assert_eq!(load(&["--policy", "p.bin"], Some("workers: 3\n")).unwrap().workers, 3);
        let c = load(&["--policy", "p.bin", "--workers", "1"], Some("workers: 3\n")).unwrap();
        assert_eq!(c.workers, 1, "the flag overrides the file");
        for bad in ["0", "1025"] {
            let err = load(&["--policy", "p.bin", "--workers", bad], None).unwrap_err();
            assert!(err.to_string().contains("workers: must be between 1 and 1024"), "{err}");
        }
    }

    #[test]
    fn the_per_client_request_rate_is_off_unless_set() {
        assert_eq!(load(&["--policy", "p.bin"], None).unwrap().max_requests_per_client_per_second, None);
        let file = "max_requests_per_client_per_second: 20\n";
        assert_eq!(load(&["--policy", "p.bin"], Some(file)).unwrap().max_requests_per_client_per_second, Some(20));
        let c = load(&["--policy", "p.bin", "--max-requests-per-client-per-second", "3"], Some(file)).unwrap();
        assert_eq!(c.max_requests_per_client_per_second, Some(3), "the flag overrides the file");
        let err = load(&["--policy", "p.bin", "--max-requests-per-client-per-second", "0"], None).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn the_per_client_tunnel_cap_is_off_unless_set() {
        assert_eq!(load(&["--policy", "p.bin"], None).unwrap().max_tunnels_per_client, None);
        let c = load(&["--policy", "p.bin"], Some("max_tunnels_per_client: 50\n")).unwrap();
        assert_eq!(c.max_tunnels_per_client, Some(50));
        let c = load(&["--policy", "p.bin", "--max-tunnels-per-client", "7"], Some("max_tunnels_per_client: 50\n"));
        assert_eq!(c.unwrap().max_tunnels_per_client, Some(7), "the flag overrides the file");
        let err = load(&["--policy", "p.bin", "--max-tunnels-per-client", "0"], None).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn unknown_and_unsupported_keys_are_errors() {
        let err = load(&["--policy", "p.bin"], Some("allow_missing_roles: true\n")).unwrap_err();
        assert!(err.to_string().contains("allow_missing_roles"), "{err}");
        let err = load(&["--policy", "p.bin"], Some("acl_file: acl.yaml\n")).unwrap_err();
        assert!(err.to_string().contains("policyc compile"), "{err}");
        let err = load(&["--policy", "p.bin"], Some("mitm_ca_cert_file: x\n")).unwrap_err();
        assert!(err.to_string().contains("MITM"), "{err}");
        let err = load(&["--policy", "p.bin"], Some("# only a comment\n")).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = load(&["--policy", "p.bin"], Some("deny_ranges: [10.0.0.0/33]\n")).unwrap_err();
        assert!(err.to_string().contains("deny_ranges"), "{err}");
        let err = load(&["--policy", "p.bin"], Some("network: ip5\n")).unwrap_err();
        assert!(err.to_string().contains("ip5"), "{err}");
        assert!(load(&["--policy", "p.bin"], Some("{}\n")).is_ok());
    }

    #[test]
    fn policy_and_password_are_required_when_named() {
        assert!(matches!(load(&[], None), Err(ConfigError::MissingPolicy)));
        let err =
            load(&["--policy", "p.bin", "--proxy-password-env", "PROXYD_TEST_SURELY_UNSET_VAR"], None).unwrap_err();
        assert!(matches!(err, ConfigError::PasswordUnset(_)), "{err}");
        let err = load(&["--policy", "p.bin", "--proxy-auth-role", "x"], None).unwrap_err();
        assert!(err.to_string().contains("--proxy-password-env"), "{err}");
        let err = load(&["--policy", "p.bin", "--tls-client-ca-file", "ca.pem"], None).unwrap_err();
        assert!(err.to_string().contains("--tls-server-bundle-file"), "{err}");
        let err = load(&["--policy", "p.bin", "--max-concurrent-connect-tunnels", "0"], None).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn admin_and_statsd_settings() {
        let c = load(
            &["--policy", "p.bin", "--admin-listen", "127.0.0.1:9090"],
            Some("statsd_address: localhost:8125\ntime_connect: true\n"),
        )
        .unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.statsd_address.as_deref(), Some("localhost:8125"));
        assert!(c.time_connect);
        let c = load(&["--policy", "p.bin", "--statsd-address", "[::1]:8125"], Some("admin_listen: 0.0.0.0:9090\n"))
            .unwrap();
        assert_eq!(c.admin_listen, Some("0.0.0.0:9090".parse().unwrap()));
        assert!(!c.time_connect);
        for clash in [
            &["--admin-listen", "127.0.0.1:4750"][..],
            &["--admin-listen", "0.0.0.0:4750"],
            &["--listen-ip", "0.0.0.0", "--admin-listen", "127.0.0.1:4750"],
        ] {
            let mut args = vec!["--policy", "p.bin"];
            args.extend_from_slice(clash);
            let err = load(&args, None).unwrap_err();
            assert!(err.to_string().contains("the proxy's own address"), "{clash:?}: {err}");
        }
        assert!(load(&["--policy", "p.bin", "--admin-listen", "127.0.0.2:4750"], None).is_ok(), "another IP");
        assert!(load(&["--policy", "p.bin", "--listen-port", "0", "--admin-listen", "127.0.0.1:0"], None).is_ok());
        for bad in ["8125", "host:", ":8125", "host:0", "host:99999", "ho st:1"] {
            let err = load(&["--policy", "p.bin", "--statsd-address", bad], None).unwrap_err();
            assert!(err.to_string().contains("statsd address"), "{bad}: {err}");
        }
        let err = load(&["--policy", "p.bin"], Some("time_connect: true\n")).unwrap_err();
        assert!(err.to_string().contains("statsd_address"), "{err}");
        let err = load(&["--policy", "p.bin"], Some("statsd_address: \"\"\n")).unwrap_err();
        assert!(err.to_string().contains("statsd address"), "{err}");
    }

    #[test]
    fn the_stats_socket_and_the_admin_token_from_the_file_and_flags() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c =
            load(&["--policy", "p.bin"], Some(&format!("stats_socket_dir: {d}\nstats_socket_file_mode: \"660\"\n")))
                .unwrap();
        assert_eq!(c.stats_socket, Some(StatsSocketSettings { dir: dir.path().to_owned(), mode: 0o660 }));
        let c = load(&["--policy", "p.bin", "--stats-socket-dir", d], None).unwrap();
        assert_eq!(c.stats_socket.unwrap().mode, DEFAULT_STATS_SOCKET_MODE);
        let err = load(&["--policy", "p.bin", "--stats-socket-file-mode", "600"], None).unwrap_err();
        assert!(err.to_string().contains("no effect without --stats-socket-dir"), "{err}");

        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(
            &["--policy", "p.bin"],
            Some(&format!("admin_token_file: {}\nadmin_metrics_open: true\n", token.display())),
        )
        .unwrap();
        assert!(c.admin_token.unwrap().accepts(Some(b"Bearer t0ken")));
        assert!(c.admin_metrics_open);
        let err = load(&["--policy", "p.bin", "--admin-metrics-open"], None).unwrap_err();
        assert!(err.to_string().contains("no effect without --admin-token-file"), "{err}");
    }

    #[test]
    fn load_all_finds_every_problem_and_load_refuses_with_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "dns_timeout: 5\nallow_ranges: [nope]\nexit_timeout: 1x\n").unwrap();
        let argv = [
            "proxyd",
            "--config-file",
            path.to_str().unwrap(),
            "--proxy-auth-role",
            "r",
            "--statsd-address",
            "no-port",
            "--admin-listen",
            "127.0.0.1:4750",
        ];
        let (_, problems) = Config::load_all(&Args::try_parse_from(argv).unwrap());
        let inputs: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 7, "{inputs:#?}");
        assert!(matches!(problems[0], ConfigError::MissingPolicy), "{inputs:#?}");
        for (problem, expected) in inputs[1..].iter().zip([
            "config file key `dns_timeout`",
            "config file key `exit_timeout`",
            "config file key `allow_ranges`",
            "--proxy-auth-role: has no effect",
            "--admin-listen: 127.0.0.1:4750 is the proxy's own address",
            "statsd address: \"no-port\"",
        ]) {
            assert!(problem.starts_with(expected), "{problem:?} vs {expected:?}");
        }
        let first = Config::load(Args::try_parse_from(argv).unwrap()).unwrap_err();
        assert_eq!(first.to_string(), inputs[0]);
        // A file that cannot be read is one problem; the flags are still checked.
        let argv = ["proxyd", "--config-file", "/nonexistent/c.yaml", "--policy", "p.bin", "--proxy-auth-role", "r"];
        let (_, problems) = Config::load_all(&Args::try_parse_from(argv).unwrap());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].to_string().starts_with("/nonexistent/c.yaml: "), "{problems:?}");
    }

    #[test]
    fn role_from_is_compiled_at_start_and_needs_client_cas() {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, ca) = (dir.path().join("b.pem"), dir.path().join("ca.pem"));
        let (bundle, ca) = (bundle.to_str().unwrap(), ca.to_str().unwrap());
        let tls = ["--policy", "p.bin", "--tls-server-bundle-file", bundle, "--tls-client-ca-file", ca];
        let spiffe = r"uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$";
        let c = load(&[&tls[..], &["--role-from", spiffe]].concat(), None).unwrap();
        assert_eq!(c.tls.unwrap().role_from.to_string(), spiffe);
        let c = load(&tls, Some("role_from: 'ou:^([^.]+)'\n")).unwrap();
        assert_eq!(c.tls.unwrap().role_from, RoleFrom::parse("ou:^([^.]+)").unwrap());
        assert_eq!(load(&tls, None).unwrap().tls.unwrap().role_from, RoleFrom::default());
        let err = load(&[&tls[..], &["--role-from", "ou:^([^.]+"]].concat(), None).unwrap_err().to_string();
        assert_eq!(err, "--role-from: \"ou:^([^.]+\": invalid regex at character 2: unclosed group");
        let err = load(&tls, Some("role_from: serial\n")).unwrap_err().to_string();
        assert!(err.starts_with("config file key `role_from`: \"serial\": unknown field"), "{err}");
        let err = load(&["--policy", "p.bin", "--role-from", "cn"], None).unwrap_err().to_string();
        assert!(err.starts_with("--role-from: reads the role from client certificates"), "{err}");
    }

    #[test]
    fn the_challenge_realm_is_a_plain_quoted_string() {
        // PATH: a variable that is always set (tests cannot set one: unsafe code is forbidden).
        let with = |realm: &str| {
            load(&["--policy", "p.bin", "--proxy-password-env", "PATH", "--proxy-auth-realm", realm], None)
        };
        assert_eq!(&*with("egress at example.org").unwrap().proxy_auth_realm, "egress at example.org");
        for bad in ["", "a\"b", "a\\b", "tab\there", "é"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.starts_with("--proxy-auth-realm: "), "{bad:?}: {err}");
        }
        let err = load(&["--policy", "p.bin", "--proxy-auth-realm", "x"], None).unwrap_err().to_string();
        assert_eq!(err, "--proxy-auth-realm: has no effect without --proxy-password-env");
        assert_eq!(&*load(&["--policy", "p.bin"], None).unwrap().proxy_auth_realm, "proxyd");
        let file = "proxy_password_env: PATH\nproxy_auth_realm: from the file\n";
        assert_eq!(&*load(&["--policy", "p.bin"], Some(file)).unwrap().proxy_auth_realm, "from the file");
        let flag = load(&["--policy", "p.bin", "--proxy-auth-realm", "flag"], Some(file)).unwrap();
        assert_eq!(&*flag.proxy_auth_realm, "flag", "the flag overrides the file");
    }

    #[test]
    fn the_password_is_never_printed() {
        let auth = ProxyAuth { variable: "V".into(), password: "hunter2".into(), role: "authed".into() };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
