//! The real-client compatibility suite (issue 26): six client stacks (curl,
//! wget, Python requests, Go net/http, Node undici's ProxyAgent, Java 17
//! HttpClient), each the program in `tests/clients/`, against the real
//! `proxyd` in the seed deployment's shape (a proxy password whose role
//! reaches more than the anonymous default rule), with an HTTPS origin on
//! loopback whose certificate comes from a test CA the clients are given.
//! Names are resolved by proxyd through the in-test DNS server: the clients
//! only ever send `CONNECT name:port`.
//!
//! Six cases per stack, each checked on the client's side (what it printed)
//! and on proxyd's (its decision line): allowed anonymously; refused by name
//! (with the password); refused by address, for a metadata and a private
//! answer (refused at the address stage, before any connect); authenticated
//! (a name only the password's role may reach); and a wrong password (407,
//! never the anonymous role). A stack whose tool is missing is skipped with
//! one line on stderr, unless `PROXYD_CLIENTS_REQUIRED=1` (CI sets it after
//! installing them) makes that a failure.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use testkit::dns::{Answer, TestDns};
use testkit::pki::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::{compile, write};

/// The seed deployment's policy: the password's role `authed` reaches
/// `authed-only.example` too; nobody reaches `forbidden.example`.
const ACL: &str = "\
version: v1
services:
  - name: authed
    project: users
    action: enforce
    allowed_domains: [\"*.allowed.test\", authed-only.example]
default:
  project: anonymous
  action: enforce
  allowed_domains: [\"*.allowed.test\"]
";

const PASSWORD: &str = "client-suite-s3cret";
/// What the origin answers every request with.
const GREETING: &str = "hello from the origin";

/// One stack: how to run its client for one case.
struct Stack {
    name: &'static str,
    /// The command line up to (without) `PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]`.
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// Sends the credentials with the first CONNECT; otherwise only after a
    /// `407` challenge (Java), which the decision lines show.
    preemptive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credentials {
    None,
    Password,
    Wrong,
}

/// One row of the matrix.
struct Case {
    name: &'static str,
    host: &'static str,
    credentials: Credentials,
    expect: Expect,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The origin answered; the decision allowed the request for this role.
    Served { role: Option<&'static str> },
    /// 403 by the name stage, for this role.
    RefusedByName { role: &'static str },
    /// 403 by the address stage: the name resolved to this address.
    RefusedByAddress { ip: Ipv4Addr },
    /// 407, logged as `proxy_auth_invalid`, never served.
    WrongPassword,
}

const CASES: [Case; 6] = [
    Case {
        name: "allowed",
        host: "www.allowed.test",
        credentials: Credentials::None,
        expect: Expect::Served { role: None },
    },
    Case {
        name: "refused by name",
        host: "forbidden.example",
        credentials: Credentials::Password,
        expect: Expect::RefusedByName { role: "authed" },
    },
    Case {
        name: "refused by address (metadata)",
        host: "metadata.allowed.test",
        credentials: Credentials::None,
        expect: Expect::RefusedByAddress { ip: Ipv4Addr::new(169, 254, 169, 254) },
    },
    Case {
        name: "refused by address (private)",
        host: "private.allowed.test",
        credentials: Credentials::None,
        expect: Expect::RefusedByAddress { ip: Ipv4Addr::new(10, 20, 30, 40) },
    },
    Case {
        name: "authenticated",
        host: "authed-only.example",
        credentials: Credentials::Password,
        expect: Expect::Served { role: Some("authed") },
    },
    Case {
        name: "wrong password",
        host: "authed-only.example",
        credentials: Credentials::Wrong,
        expect: Expect::WrongPassword,
    },
];

/// An HTTPS origin on loopback: answers every request with `200` and [`GREETING`].
struct Origin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start(ip: IpAddr, cert_pem: &str, key_pem: &str) -> Origin {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(socket).await else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = format!("{GREETING}\n");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Origin { addr, requests, task }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs every case for `stack` against a fresh proxyd, DNS server and origin
/// (`origin_ip` distinct per stack, so parallel stacks never share one).
async fn run_matrix(stack: Stack, origin_ip: IpAddr) {
    let pki = TestPki::new();
    let names: Vec<&str> = CASES.iter().map(|c| c.host).collect();
    let cert = pki.server_for(&names);
    let origin = Origin::start(origin_ip, &cert.cert_pem, &cert.key_pem).await;
    let dns = TestDns::start().await;
    for case in &CASES {
        let ip = match case.expect {
            Expect::RefusedByAddress { ip } => IpAddr::V4(ip),
            _ => origin.addr.ip(),
        };
        dns.set(case.host, Answer::Records(vec![ip]));
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "acl.yaml", ACL);
    compile(dir.path(), "acl.yaml", "policy.bin");
    let table = dir.path().join("policy.bin");
    let dns_addr = dns.addr().to_string();
    let allow = origin.addr.to_string();
    let args = [
        "--policy",
        table.to_str().unwrap(),
        "--resolver-address",
        &dns_addr,
        "--proxy-password-env",
        "CLIENT_SUITE_PROXY_PASSWORD",
        "--allow-missing-role",
        "--allow-address",
        &allow,
    ];
    let mut daemon =
        testkit::daemon::Daemon::start(&testkit::binary("proxyd"), &args, &[("CLIENT_SUITE_PROXY_PASSWORD", PASSWORD)]);
    let proxy_url = format!("http://{}", daemon.addr);
    let ca = pki.ca_pem.to_str().unwrap().to_owned();

    for case in &CASES {
        let target = format!("https://{}:{}/", case.host, origin.addr.port());
        let mut command = Command::new(&stack.command[0]);
        command.args(&stack.command[1..]).args([&proxy_url, &target, &ca]);
        match case.credentials {
            Credentials::None => {}
            Credentials::Password => {
                command.args(["client", PASSWORD]);
            }
            Credentials::Wrong => {
                command.args(["client", "not-the-password"]);
            }
        }
        for variable in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "NO_PROXY"] {
            command.env_remove(variable);
        }
        command.envs(stack.env.iter().map(|(k, v)| (k, v)));
        let served_before = origin.requests.load(Ordering::SeqCst);
        let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
        let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let context = format!(
            "{} / {}: printed {printed:?}, stderr {:?}",
            stack.name,
            case.name,
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("clients: {} / {}: {printed}", stack.name, case.name);
        let served = origin.requests.load(Ordering::SeqCst) - served_before;
        let resolved_by_proxyd = dns.query_count(case.host);
        let authority = format!("{}:{}", case.host, origin.addr.port());
        let decision = |daemon: &mut testkit::daemon::Daemon| -> Value {
            daemon.wait_for(|v| v["message"] == "CANONICAL-PROXY-DECISION" && v["requested_host"] == authority)
        };
        // A stack that waits for the challenge is first refused with one.
        let challenged = !stack.preemptive && case.credentials != Credentials::None;
        if challenged {
            let first = decision(&mut daemon);
            assert_eq!(first["refusal"], "proxy_auth_required", "{context}: {first}");
        }
        let line = decision(&mut daemon);
        match case.expect {
            Expect::Served { role } => {
                assert!(output.status.success(), "{context}");
                assert_eq!(printed, format!("status=200 body={GREETING}"), "{context}");
                assert_eq!(served, 1, "{context}");
                assert_eq!(line["allow"], true, "{context}: {line}");
                assert_eq!(line["role"].as_str(), role, "{context}: {line}");
                assert!(resolved_by_proxyd > 0, "{context}: proxyd resolved the name, not the client");
            }
            Expect::RefusedByName { role } => {
                assert!(!output.status.success() && printed.starts_with("error="), "{context}");
                assert!(printed.contains("403") || printed.contains("Forbidden"), "{context}");
                assert_eq!(served, 0, "{context}");
                assert_eq!(
                    (line["allow"].as_bool(), line["refusal"].as_str()),
                    (Some(false), Some("denied")),
                    "{line}"
                );
                assert_eq!(line["role"], role, "{context}: {line}");
                assert!(line["dst_ip"].is_null() && line["dns_lookup_time_ms"].is_null(), "no DNS: {line}");
                assert_eq!(resolved_by_proxyd, 0, "{context}: a name refused by name is never resolved");
            }
            Expect::RefusedByAddress { ip } => {
                assert!(!output.status.success() && printed.starts_with("error="), "{context}");
                assert!(printed.contains("403") || printed.contains("Forbidden"), "{context}");
                assert_eq!(line["refusal"], "denied", "{context}: {line}");
                assert_eq!(line["dst_ip"], ip.to_string(), "{context}: {line}");
                let reason = line["decision_reason"].as_str().unwrap_or_default();
                assert!(reason.starts_with(&format!("address {ip} denied by rule")), "{context}: {line}");
            }
            Expect::WrongPassword => {
                assert!(!output.status.success() && printed.starts_with("error="), "{context}");
                // Java gives up after its retry limit without naming the status: the log line says it.
                let named = ["407", "Proxy Authentication Required", "too many authentication attempts"];
                assert!(named.iter().any(|n| printed.contains(n)), "{context}");
                assert_eq!(served, 0, "{context}");
                assert_eq!(line["refusal"], "proxy_auth_invalid", "{context}: {line}");
                assert!(line["role"].is_null(), "never the anonymous (or any) role: {line}");
            }
        }
    }
    drop(daemon);
}

/// Whether a missing tool fails the suite instead of skipping its stack.
fn required() -> bool {
    std::env::var("PROXYD_CLIENTS_REQUIRED").is_ok_and(|v| v == "1")
}

/// `None` (and one line on stderr) when `stack` cannot run here.
fn available(stack: &str, probe: &mut Command, what: &str) -> Option<()> {
    let ok = probe.output().is_ok_and(|out| out.status.success());
    if ok {
        return Some(());
    }
    assert!(!required(), "{stack}: {what} is missing and PROXYD_CLIENTS_REQUIRED=1");
    eprintln!("clients: SKIPPED {stack}: {what} not found (install it to run this stack; see docs/clients.md)");
    None
}

fn clients_dir() -> PathBuf {
    testkit::repo_root().join("tests/clients")
}

fn program(name: &str) -> String {
    clients_dir().join(name).to_str().unwrap().to_owned()
}

// Multi-threaded: the in-test DNS server and origin answer while a client runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl() {
    if available("curl", Command::new("curl").arg("--version"), "curl").is_none() {
        return;
    }
    let stack = Stack { name: "curl", command: vec![program("curl.sh")], env: vec![], preemptive: true };
    run_matrix(stack, IpAddr::V4(Ipv4Addr::new(127, 0, 126, 1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wget() {
    if available("wget", Command::new("wget").arg("--version"), "wget").is_none() {
        return;
    }
    let stack = Stack { name: "wget", command: vec![program("wget.sh")], env: vec![], preemptive: true };
    run_matrix(stack, IpAddr::V4(Ipv4Addr::new(127, 0, 126, 2))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests() {
    if available("python requests", Command::new("python3").args(["-c", "import requests"]), "python3 with requests")
        .is_none()
    {
        return;
    }
    let stack = Stack {
        name: "python requests",
        command: vec!["python3".into(), program("requests_client.py")],
        env: vec![],
        preemptive: true,
    };
    run_matrix(stack, IpAddr::V4(Ipv4Addr::new(127, 0, 126, 3))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http() {
    if available("go net/http", Command::new("go").arg("version"), "go").is_none() {
        return;
    }
    // Built once per run, outside any module, with the build cache in a temporary directory when HOME has none.
    let out = tempfile::tempdir().unwrap();
    let binary = out.path().join("client");
    let mut build = Command::new("go");
    build.args(["build", "-o"]).arg(&binary).arg(program("client.go")).env("GO111MODULE", "off");
    if std::env::var_os("GOCACHE").is_none() && std::env::var_os("HOME").is_none() {
        build.env("GOCACHE", out.path().join("cache"));
    }
    let built = tokio::task::spawn_blocking(move || build.output()).await.unwrap().unwrap();
    assert!(built.status.success(), "go build: {}", String::from_utf8_lossy(&built.stderr));
    let stack = Stack {
        name: "go net/http",
        command: vec![binary.to_str().unwrap().to_owned()],
        env: vec![],
        preemptive: true,
    };
    run_matrix(stack, IpAddr::V4(Ipv4Addr::new(127, 0, 126, 4))).await;
}

/// Where `make client-deps` installs undici (override: `PROXYD_CLIENTS_NODE_MODULES`).
fn node_modules() -> PathBuf {
    std::env::var_os("PROXYD_CLIENTS_NODE_MODULES")
        .map_or_else(|| testkit::repo_root().join("target/clients/node/node_modules"), PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_undici() {
    if available("node undici", Command::new("node").arg("--version"), "node").is_none() {
        return;
    }
    let modules = node_modules();
    if available(
        "node undici",
        Command::new("test").arg("-d").arg(modules.join("undici")),
        "undici (`make client-deps`)",
    )
    .is_none()
    {
        return;
    }
    let stack = Stack {
        name: "node undici",
        command: vec!["node".into(), program("undici_client.js")],
        env: vec![("NODE_PATH".into(), modules.to_str().unwrap().to_owned())],
        preemptive: true,
    };
    run_matrix(stack, IpAddr::V4(Ipv4Addr::new(127, 0, 126, 5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_http_client() {
    if available("java HttpClient", Command::new("javac").arg("-version"), "javac (a JDK 17 or later)").is_none() {
        return;
    }
    // Compiled once per run; each case is then one JVM.
    let out = tempfile::tempdir().unwrap();
    let mut javac = Command::new("javac");
    javac.arg("-d").arg(out.path()).arg(clients_dir().join("Client.java"));
    let compiled = tokio::task::spawn_blocking(move || javac.output()).await.unwrap().unwrap();
    assert!(compiled.status.success(), "javac: {}", String::from_utf8_lossy(&compiled.stderr));
    let stack = Stack {
        name: "java HttpClient",
        command: vec![
            "java".into(),
            // Basic over CONNECT is disabled by default in the JDK: clear the list.
            "-Djdk.http.auth.tunneling.disabledSchemes=".into(),
            "-cp".into(),
            out.path().to_str().unwrap().to_owned(),
            "Client".into(),
        ],
        env: vec![],
        preemptive: false,
    };
    run_matrix(stack, IpAddr::V4(Ipv4Addr::new(127, 0, 126, 6))).await;
}
