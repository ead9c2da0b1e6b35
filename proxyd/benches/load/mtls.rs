//! `mtls`: the cost of setting up a tunnel over mutual TLS. proxyd listens
//! with `--tls-server-bundle-file`, `--tls-client-ca-file` and a CRL, and
//! serves an ACL of 5,000 roles; the clients' certificate CN is one of them,
//! the only role allowed to reach the echo servers. [`CLIENTS`] clients loop
//! TLS handshake, CONNECT, a 64-byte echo, close, in alternating rounds over:
//!
//! - `old proxyd` (`PROXYD_BASELINE_BIN`, when set) with clients that do not
//!   resume (it never offered resumption to mTLS clients);
//! - proxyd with clients that do not resume (resumption disabled in their
//!   rustls configuration: every connection is a full handshake);
//! - proxyd with clients that resume (each of the 64 clients with its own
//!   in-memory session cache, as separate client services would have; the
//!   table shows the share of handshakes that resumed);
//!
//! each with an ECDSA P-256 and an RSA 2048 server key (RSA only when
//! `openssl` can make the key: rcgen cannot generate RSA keys with ring).
//! Reported: setup rate, p99, and proxy CPU per tunnel (utime + stime),
//! with ratios to the old build in the same run.
//!
//! Like the rest of the tool it only ever talks to 127.0.0.0/8.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_policy::acl;
use egress_policy::policy::ActionSet;
use egress_policy::table::{self, Metadata};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{
    CLIENTS, CpuMeter, Daemon, ECHO_BYTES, Latencies, Launch, Noise, OP_TIMEOUT, Result, SetupPhase, Targets, median,
};

const ROLES: usize = 5_000;
/// The clients' role (their certificate's CN).
const CLIENT_ROLE: &str = "svc-02500";

/// The files proxyd is started with, and the clients' credentials.
struct Pki {
    ca_pem: String,
    ca_file: PathBuf,
    crl_file: PathBuf,
    /// (name, server bundle file) per server key type.
    bundles: Vec<(&'static str, PathBuf)>,
    client_cert: CertificateDer<'static>,
    client_key_pem: String,
}

fn pki(dir: &Path) -> Result<Pki> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "mtls bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |cn: &str, serial: u64, server: bool, key: &KeyPair| -> Result<String> {
        let names = if server { vec!["localhost".to_owned(), "127.0.0.1".to_owned()] } else { Vec::new() };
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        Ok(params.signed_by(key, &issuer)?.pem())
    };
    let client_key = KeyPair::generate()?;
    let client_pem = leaf(CLIENT_ROLE, 2, false, &client_key)?;
    // A realistic CRL: 100 revoked serials, none of them the client's.
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2020, 1, 1),
        next_update: date_time_ymd(2100, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: (1_000..1_100u64)
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: date_time_ymd(2021, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)?
    .pem()?;

    let mut bundles = Vec::new();
    let p256 = KeyPair::generate()?;
    let bundle = dir.join("server-p256.pem");
    std::fs::write(&bundle, format!("{}{}", leaf("localhost", 3, true, &p256)?, p256.serialize_pem()))?;
    bundles.push(("P-256", bundle));
    match rsa_key(dir) {
        Ok(rsa) => {
            let bundle = dir.join("server-rsa.pem");
            std::fs::write(&bundle, format!("{}{}", leaf("localhost", 4, true, &rsa)?, rsa.serialize_pem()))?;
            bundles.push(("RSA 2048", bundle));
        }
        Err(error) => println!("skipped: mtls with an RSA 2048 server key ({error})"),
    }
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem)?;
    let crl_file = dir.join("crl.pem");
    std::fs::write(&crl_file, crl)?;
    Ok(Pki {
        ca_pem,
        ca_file,
        crl_file,
        bundles,
        client_cert: CertificateDer::from_pem_slice(client_pem.as_bytes())?,
        client_key_pem: client_key.serialize_pem(),
    })
}

/// An RSA 2048 key from `openssl genpkey` (PKCS#8 PEM), which rcgen signs with.
fn rsa_key(dir: &Path) -> Result<KeyPair> {
    let path = dir.join("rsa.pem");
    let output = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&path)
        .output()
        .map_err(|e| format!("openssl not found: {e}"))?;
    if !output.status.success() {
        return Err(format!("openssl genpkey failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(KeyPair::from_pem(&std::fs::read_to_string(&path)?)?)
}

/// The 5,000-role table: each role may reach one name of its own, the
/// clients' role the echo servers; no default rule.
fn policy(dir: &Path, targets: &Targets) -> Result<PathBuf> {
    let mut yaml = String::from("version: v1\nservices:\n");
    for r in 0..ROLES {
        let _ = writeln!(yaml, "  - name: svc-{r:05}\n    project: p\n    action: enforce\n    allowed_domains:");
        let _ = writeln!(yaml, "      - api-{r:05}.example-{r:05}.com");
        if format!("svc-{r:05}") == CLIENT_ROLE {
            for echo in &targets.echo {
                let _ = writeln!(yaml, "      - \"{}\"", echo.ip());
            }
        }
    }
    let checked = acl::check_source("mtls.yaml", &yaml, ActionSet::default());
    let policy = checked.policy.ok_or_else(|| format!("mtls ACL does not compile: {:?}", checked.diagnostics))?;
    let path = dir.join("mtls.table");
    std::fs::write(
        &path,
        table::encode(&policy, &Metadata::for_source(Path::new("mtls.yaml"), yaml.as_bytes(), ActionSet::default())),
    )?;
    Ok(path)
}

fn client_config(pki: &Pki, resume: bool) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes())?)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![pki.client_cert.clone()],
            PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes())?,
        )?;
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// One tunnel: TLS handshake, CONNECT, echo, close.
async fn tunnel(
    connector: &TlsConnector,
    proxy: SocketAddr,
    source: IpAddr,
    target: SocketAddr,
    message: &[u8; ECHO_BYTES],
) -> Result<bool> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(proxy).await?;
    tcp.set_nodelay(true)?;
    let mut stream = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    stream.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await?;
    let mut head = [0u8; 512];
    let mut len = 0;
    while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let Some(free) = head.get_mut(len..).filter(|free| !free.is_empty()) else {
            return Err("CONNECT response head too long".into());
        };
        let n = stream.read(free).await?;
        if n == 0 {
            return Err("proxy closed before answering CONNECT".into());
        }
        len += n;
    }
    if !head.starts_with(b"HTTP/1.1 200 ") {
        return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head[..len])).into());
    }
    stream.write_all(message).await?;
    let mut back = [0u8; ECHO_BYTES];
    stream.read_exact(&mut back).await?;
    if &back != message {
        return Err("echo came back different".into());
    }
    let _ = stream.shutdown().await;
    Ok(resumed)
}

async fn phase(
    config: &Arc<ClientConfig>,
    resume: bool,
    proxy: SocketAddr,
    echo: &[SocketAddr],
    length: Duration,
) -> Result<(SetupPhase, usize)> {
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, client as u8 + 1));
        let target = *echo.get(client % echo.len().max(1)).ok_or("no echo server")?;
        // A resuming client keeps its own session cache, as each client service would: one
        // cache shared by 64 concurrent clients holds too few tickets and most would not resume.
        let connector = if !resume {
            TlsConnector::from(Arc::clone(config))
        } else {
            let mut own = ClientConfig::clone(config);
            own.resumption = Resumption::in_memory_sessions(32);
            TlsConnector::from(Arc::new(own))
        };
        tasks.spawn(async move {
            let mut message = [0u8; ECHO_BYTES];
            let mut samples = Vec::with_capacity(16 * 1024);
            let mut op = 0u64;
            let mut resumed = 0usize;
            while Instant::now() < deadline {
                message[..8].copy_from_slice(&op.to_le_bytes());
                message[8] = client as u8;
                let began = Instant::now();
                match tokio::time::timeout(OP_TIMEOUT, tunnel(&connector, proxy, source, target, &message)).await {
                    Ok(Ok(was_resumed)) => {
                        samples.push(began.elapsed());
                        resumed += usize::from(was_resumed);
                    }
                    Ok(Err(error)) => return Err(format!("mtls op {op} to {target}: {error}")),
                    Err(_) => return Err(format!("mtls op {op} to {target} timed out")),
                }
                op += 1;
            }
            Ok((samples, resumed))
        });
    }
    let mut all = Vec::new();
    let mut resumed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (samples, resumed_here) = joined??;
        all.extend(samples);
        resumed += resumed_here;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let ops = all.len();
    Ok((SetupPhase { ops, elapsed, latencies: Latencies(all) }, resumed))
}

/// One row of the table: a binary, a server key, a client kind.
struct Row {
    name: String,
    daemon: Daemon,
    config: Arc<ClientConfig>,
    /// Whether the clients resume (each with its own session cache).
    resume: bool,
    /// Handshakes that resumed, over all rounds.
    resumed: usize,
    phases: Vec<SetupPhase>,
    cpu_us: Vec<f64>,
}

/// Runs the part; returns summary lines.
pub async fn mtls(
    full: bool,
    rounds: usize,
    length: Duration,
    targets: &Targets,
    noise: &mut Noise,
) -> Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let pki = pki(dir.path())?;
    let table = policy(dir.path(), targets)?;
    let new = std::env::var_os("PROXYD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_proxyd").into());
    let old = std::env::var_os("PROXYD_BASELINE_BIN");
    if old.is_none() {
        println!("skipped: mtls old proxyd (set PROXYD_BASELINE_BIN to compare with an earlier build)");
    }
    let fresh = client_config(&pki, false)?;
    let resuming = client_config(&pki, true)?;
    let mut rows = Vec::new();
    for (key, bundle) in &pki.bundles {
        let launch = Launch {
            fd_limit: None,
            args: vec![
                "--tls-server-bundle-file".into(),
                bundle.display().to_string(),
                "--tls-client-ca-file".into(),
                pki.ca_file.display().to_string(),
                "--tls-crl-file".into(),
                pki.crl_file.display().to_string(),
            ],
        };
        let start = |binary: &std::ffi::OsStr| Daemon::start(Path::new(binary), &table, &targets.echo, false, &launch);
        if let Some(old) = &old {
            rows.push(Row {
                name: format!("old proxyd, {key}, no resumption"),
                daemon: start(old)?,
                config: Arc::clone(&fresh),
                resume: false,
                resumed: 0,
                phases: Vec::new(),
                cpu_us: Vec::new(),
            });
        }
        for (clients, config, resume) in [("no resumption", &fresh, false), ("resuming clients", &resuming, true)] {
            rows.push(Row {
                name: format!("proxyd, {key}, {clients}"),
                daemon: start(&new)?,
                config: Arc::clone(config),
                resume,
                resumed: 0,
                phases: Vec::new(),
                cpu_us: Vec::new(),
            });
        }
    }
    println!(
        "mtls: {} rows, {ROLES}-role ACL, role {CLIENT_ROLE}, {CLIENTS} clients, {rounds} rounds of {length:?}",
        rows.len()
    );
    for round in 1..=rounds {
        for k in 0..rows.len() {
            let i = (k + round - 1) % rows.len();
            let row = rows.get_mut(i).ok_or("row")?;
            let cpu = CpuMeter::start(Some(row.daemon.pid()));
            let (phase, resumed) = phase(&row.config, row.resume, row.daemon.addr, &targets.echo, length).await?;
            let cpu = cpu.stop();
            noise.record(&cpu);
            let per_op = cpu.peer_per(phase.ops as f64, 1e6);
            println!(
                "mtls round {round}: {:<38} {} ({cpu}, {} µs CPU per tunnel)",
                row.name,
                phase.describe(),
                per_op.map_or("?".to_owned(), |v| format!("{v:.0}"))
            );
            row.cpu_us.extend(per_op);
            row.resumed += resumed;
            row.phases.push(phase);
        }
    }
    let mut summary = vec![format!(
        "mtls setup ({}): rate/s, p99, proxy CPU µs per tunnel; medians of {rounds} rounds; ratios to the old build with the same key",
        if full { "bench" } else { "smoke" }
    )];
    for (key, _) in &pki.bundles {
        let of_key: Vec<&Row> = rows.iter().filter(|r| r.name.contains(&format!(", {key}, "))).collect();
        let base = of_key
            .iter()
            .find(|r| r.name.starts_with("old "))
            .map(|r| (median(r.phases.iter().map(SetupPhase::rate)), median(r.cpu_us.iter().copied())));
        for row in of_key {
            let rate = median(row.phases.iter().map(SetupPhase::rate));
            let cpu = median(row.cpu_us.iter().copied());
            let p99 = Latencies::merge(&row.phases).quantile(0.99);
            let ratios = match base {
                Some((base_rate, base_cpu)) => {
                    format!("  rate {:.2}× old, CPU {:.2}× old", rate / base_rate, cpu / base_cpu)
                }
                None => String::new(),
            };
            let ops: usize = row.phases.iter().map(|p| p.ops).sum();
            summary.push(format!(
                "  {:<38} {rate:>7.0}/s  p99 {:>8.2} ms  {cpu:>6.0} µs  resumed {:>5.1}%{ratios}",
                row.name,
                p99.as_secs_f64() * 1e3,
                100.0 * row.resumed as f64 / ops.max(1) as f64
            ));
        }
    }
    let rate_of =
        |name: &str| rows.iter().find(|r| r.name == name).map(|r| median(r.phases.iter().map(SetupPhase::rate)));
    if let (Some(old), Some(new)) =
        (rate_of("old proxyd, P-256, no resumption"), rate_of("proxyd, P-256, resuming clients"))
    {
        let ratio = new / old;
        summary.push(format!(
            "goal: mTLS setup >= 1.25x the old build (P-256, clients that resume): {ratio:.2}x {}",
            if ratio >= 1.25 { "OK" } else { "MISSED" }
        ));
    }
    Ok(summary)
}
