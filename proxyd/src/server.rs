//! Start-up, the drain, and the life of one connection: PROXY header, TLS,
//! the request head (`request`), who is asking, the name stage, the
//! address stage, connect, then hand-over to the tunnel.
//!
//! The decision itself is `egress-policy`'s pure functions; failures become HTTP
//! answers only in `answer`; bytes move only in `tunnel`. This module wires
//! them together and owns concurrency: the tunnel cap, draining and the
//! shutdown grace period, and the admin listener's lifetime. Every event
//! worth counting goes to [`Metrics`] once, where it happens.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use egress_policy::address::AddressPolicy;
use egress_policy::authority::{self, Authority};
use egress_policy::table;

use crate::admin::{self, AdminState};
use crate::answer::{self, Answer, Refusal};
use crate::buffers::Buffer;
use crate::config::{Config, LogStallPolicy};
use crate::console::Console;
use crate::egress::{self, AddressStage, ConnectFailure};
use crate::limits::{ClientRequestRate, ClientSlot, ClientTunnels, RateVerdict};
use crate::live::{LiveTunnel, LiveTunnels, Registered, TunnelCounters};
use crate::log::{self, DecisionLine};
use crate::metrics::{DnsResult, Metrics, RoleTags};
use crate::policy_fetch::{Fetcher, PolicySlot, RemotePolicy};
use crate::policy_trust;
use crate::proxy_protocol::{self, ProxyHeader};
use crate::refusals::{RecentRefusals, RefusalRecord};
use crate::reload::{self, PolicyState};
use crate::request::{self, Method, RequestHead, Version};
use crate::resolver::{ResolveError, Resolver};
use crate::stats_socket::StatsSocket;
use crate::statsd::StatsdSink;
use crate::systemd;
use crate::tls::{self, ClientIdentity};
use crate::tunnel::{self, ClientStream, TunnelStats};
use crate::workers::Workers;

/// Why the proxy could not start. Printed as one line before anything listens.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy {path}: {error}")]
    Policy { path: String, error: table::TableError },
    /// The table decodes but its signature (or serial) is not acceptable.
    #[error("policy {path}: refused: {reason}")]
    PolicyNotTrusted { path: String, reason: String },
    #[error("--policy-url: {0}")]
    PolicyUrl(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("resolver: {0}")]
    Resolver(#[from] crate::resolver::ResolverInitError),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("cannot start the data-plane threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot listen on {addr} for the admin endpoints: {error}")]
    Admin { addr: SocketAddr, error: std::io::Error },
    #[error("statsd address {address}: {message}")]
    Statsd { address: String, message: String },
    #[error("stats socket: {0}")]
    StatsSocket(String),
}

/// Everything a request needs, shared by all connections.
struct Shared {
    config: Config,
    /// Empty only while `--policy-url` has produced no verified table.
    policy: PolicySlot,
    addresses: AddressPolicy,
    resolver: Resolver,
    tls: Option<tls::ServerTls>,
    tunnels: Arc<Semaphore>,
    /// `--max-tunnels-per-client`, when set.
    client_tunnels: Option<Arc<ClientTunnels>>,
    /// `--max-requests-per-client-per-second`, when set.
    client_request_rate: Option<ClientRequestRate>,
    draining: AtomicBool,
    stop_tunnels: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    /// Open tunnels, when something reads them (admin listener, stats socket).
    live: Option<Arc<LiveTunnels>>,
    /// Recent refusals, when the admin listener shows them.
    refusals: Option<Arc<RecentRefusals>>,
}

/// Binds the admin listener if `config` names one, then [`serve`]s.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let admin = match config.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|error| StartError::Admin { addr, error })?),
        None => None,
    };
    serve(listener, admin, config, shutdown).await
}

/// Loads the policy and everything else `config` names, then serves
/// `listener` (and the admin endpoints on `admin`) until `shutdown`
/// resolves; then stops accepting, lets open tunnels finish for up to the
/// grace period, closes the rest and returns. The admin endpoints answer
/// from before the policy is loaded until the drain is over.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let shutdown = async move {
        shutdown.await;
        Stop::Alone
    };
    serve_until(listener, admin, config, shutdown, || {}).await
}

/// How serving ends, as the shutdown future of [`serve_until`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No other process serves these sockets (SIGTERM, SIGINT, SIGUSR2
    /// outside Einhorn): tell systemd `STOPPING=1`; `/readyz` answers 503
    /// until the drain is over.
    Alone,
    /// Another process serves the same sockets now (an upgrade in place, an
    /// Einhorn successor): no `STOPPING=1` (systemd follows the new
    /// `MAINPID`), the admin socket is left to the successor at once, so
    /// a health check there never gets this process's 503, and requests on
    /// connections this process accepted before the stop are served, not
    /// answered 503.
    Successor,
}

/// [`serve`], with `ready` called once a policy is loaded and the workers
/// accept (Einhorn's ack, an upgrade's readiness; with `--policy-url`, not
/// before the first verified table), and a shutdown
/// future that says whether another process takes over the sockets.
pub async fn serve_until(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = Stop>,
    ready: impl FnOnce(),
) -> Result<(), StartError> {
    let local = listener.local_addr().map_err(StartError::Listener)?;
    log::set_stall_timeout(config.log_stall_timeout);
    let statsd = match &config.statsd_address {
        Some(address) => Some(start_statsd(address).await?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new(statsd, config.time_connect));
    metrics.set_tunnel_cap(config.max_tunnels);
    // Tracked only when something reads them: without a reader a tunnel costs nothing here.
    let live = (admin.is_some() || config.stats_socket.is_some()).then(|| Arc::new(LiveTunnels::new(config.workers)));
    let refusals = admin.is_some().then(|| Arc::new(RecentRefusals::new(config.workers)));
    let admin_state = Arc::new(AdminState::new(Arc::clone(&metrics)).with_console(Console::new(
        &config,
        live.clone(),
        refusals.clone(),
    )));
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let admin_task = admin.map(|admin| {
        tokio::spawn(admin::serve(admin, Arc::clone(&admin_state), config.header_timeout, async move {
            let _ = admin_stopped.await;
        }))
    });
    let (initial, remote) = match load_initial_policy(&config, &metrics).await {
        Ok(loaded) => loaded,
        Err(error) => {
            if let Some(task) = admin_task {
                task.abort();
            }
            return Err(error);
        }
    };
    let policy: PolicySlot = Arc::new(std::sync::OnceLock::new());
    if let Some(initial) = &initial {
        let _ = policy.set(Arc::clone(initial));
        admin_state.policy_loaded(Arc::clone(initial));
    }
    let tls = tls_acceptor(&config)?;
    let resolver = Resolver::new(&config.resolver_addresses, config.dns_timeout)?;
    let mut rules = config.address_rules.clone();
    rules.self_addresses.push(local);
    let addresses = AddressPolicy::new(rules);
    admin_state.operator_network(addresses.clone());
    let (stop_sender, stop_tunnels) = watch::channel(false);
    let shared = Arc::new(Shared {
        tunnels: Arc::new(Semaphore::new(config.max_tunnels)),
        client_tunnels: config.max_tunnels_per_client.map(ClientTunnels::new),
        client_request_rate: config.max_requests_per_client_per_second.map(ClientRequestRate::new),
        config,
        policy,
        addresses,
        resolver,
        tls,
        draining: AtomicBool::new(false),
        stop_tunnels,
        metrics,
        live,
        refusals,
    });
    let stats_socket = match (&shared.config.stats_socket, &shared.live) {
        (Some(settings), Some(live)) => {
            let socket = StatsSocket::start(settings, Arc::clone(live), shared.config.header_timeout)
                .map_err(StartError::StatsSocket)?;
            tracing::info!(path = %socket.path().display(), "stats socket listening");
            Some(socket)
        }
        _ => None,
    };
    // The listener is bound (the kernel queues connections) and the loop below accepts them.
    admin_state.accepting();
    tracing::info!(
        listen = %local,
        admin = admin_addr.map(|a| a.to_string()),
        statsd = shared.config.statsd_address.as_deref(),
        policy = %shared.config.policy_remote.as_ref().map_or_else(|| shared.config.policy.display().to_string(), |r| r.url.to_string()),
        policy_revision = shared.policy.get().map(|p| p.current().table.revision().to_owned()),
        policy_serial = shared.policy.get().and_then(|p| p.current().table.signature.as_ref().map(|s| s.serial)),
        tls = shared.tls.is_some(),
        proxy_protocol = shared.config.proxy_protocol,
        "proxyd listening"
    );

    // Reloads: file events, SIGHUP, and a periodic check, until shutdown.
    let (stop_watching, watching_stopped) = tokio::sync::oneshot::channel::<()>();
    let (sighup_tx, sighup_rx) = mpsc::channel::<()>(1);
    let stopped = async move {
        let _ = watching_stopped.await;
    };
    // A URL source is polled (SIGHUP polls at once); a file is watched. Never both.
    let watcher = match (remote, initial) {
        (Some(remote), initial) => {
            let admin_state = Arc::clone(&admin_state);
            let loaded = move |policy| admin_state.policy_loaded(policy);
            tokio::spawn(remote.poll(initial, Arc::clone(&shared.policy), loaded, sighup_rx, stopped))
        }
        (None, Some(initial)) => tokio::spawn(reload::watch(initial, shared.config.reload, sighup_rx, stopped)),
        (None, None) => tokio::spawn(stopped),
    };
    let sighup = tokio::spawn(forward_sighup(sighup_tx));
    // Policy loaded, listener accepting, SIGHUP handled: tell systemd.
    systemd::ready();
    let watchdog = systemd::watchdog_interval().map(|interval| tokio::spawn(systemd::keep_watchdog_fed(interval)));

    // Every connection task holds a clone; when all are gone, the drain is over.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let listener = listener.into_std().map_err(StartError::Listener)?;
    let serving = Arc::clone(&shared);
    let accepted_alive = alive.clone();
    let mut workers = Workers::start(listener, shared.config.workers, move |stream, peer| {
        serve_connection(Arc::clone(&serving), stream, peer, accepted_alive.clone())
    })
    .map_err(StartError::Workers)?;
    let stop = if shared.policy.get().is_some() {
        ready();
        shutdown.await
    } else {
        // `--policy-url` with no verified table yet: whoever waits for
        // `ready` (an upgrade, Einhorn) would retire a process that has a
        // policy for one that answers 503, so it is told only once a table
        // is loaded (or never, and it keeps the old process).
        tokio::pin!(shutdown);
        let mut ready = Some(ready);
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                stop = &mut shutdown => break stop,
                _ = check.tick(), if ready.is_some() => {
                    if shared.policy.get().is_some() && let Some(ready) = ready.take() {
                        ready();
                    }
                }
            }
        }
    };

    let mut stop_admin = Some(stop_admin);
    match stop {
        Stop::Alone => systemd::stopping(),
        Stop::Successor => {
            if let Some(stop_admin) = stop_admin.take() {
                let _ = stop_admin.send(());
            }
        }
    }
    // Requests on connections accepted before the stop get 503 (go
    // elsewhere), unless a successor serves the same port: then this
    // process serves them, since a 503 would only fail a client that the
    // hand-over was meant to spare. Set before the listener closes, so a
    // client that sees the port closed can no longer be served here.
    if stop == Stop::Alone {
        shared.draining.store(true, Ordering::SeqCst);
    }
    workers.stop_accepting().await;
    admin_state.draining();
    let _ = stop_watching.send(());
    sighup.abort();
    let _ = watcher.await;
    drop(alive);
    let grace = shared.config.shutdown_grace;
    tracing::info!(grace_secs = grace.as_secs_f64(), "draining: no longer accepting");
    if tokio::time::timeout(grace, all_done.recv()).await.is_err() {
        tracing::info!("grace period over: closing the remaining tunnels");
        let _ = stop_sender.send(true);
        // Give the closed tunnels a moment to write their close lines.
        let _ = tokio::time::timeout(Duration::from_secs(2), all_done.recv()).await;
    }
    // Joined off this runtime: a worker may still be dropping what is left.
    let _ = tokio::task::spawn_blocking(move || workers.finish()).await;
    if let Some(stop_admin) = stop_admin {
        let _ = stop_admin.send(());
    }
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    if let Some(socket) = stats_socket {
        socket.stop().await;
    }
    if let Some(task) = watchdog {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the policy table file `config` names, verified exactly as every
/// start does (checksum, disabled actions, signature and serial when keys
/// are configured); `--check-config` calls this too, so it checks what a
/// start checks.
pub fn load_policy(config: &Config, metrics: Arc<Metrics>) -> Result<PolicyState, StartError> {
    let path = config.policy.display().to_string();
    PolicyState::load_trusted(&config.policy, config.disabled_actions, config.policy_trust.clone(), metrics).map_err(
        |refused| match refused {
            policy_trust::Refused::Table(error) => StartError::Policy { path, error },
            other => StartError::PolicyNotTrusted { path, reason: other.to_string() },
        },
    )
}

/// The TLS acceptor for the client-facing listener (certificates, keys,
/// client CAs, CRLs), or `None` for plain TCP; shared with `--check-config`.
pub fn tls_acceptor(config: &Config) -> Result<Option<tls::ServerTls>, StartError> {
    Ok(match &config.tls {
        Some(settings) => Some(tls::ServerTls::new(settings)?),
        None => None,
    })
}

/// The initial policy and, for `--policy-url`, the poller that keeps it
/// current. A file must load and verify (else start-up fails, naming the
/// reason); a URL source may start with no policy (not ready, 503) when
/// neither the URL nor the cache gives a verified table.
async fn load_initial_policy(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<(Option<Arc<PolicyState>>, Option<RemotePolicy>), StartError> {
    if let Some(settings) = &config.policy_remote {
        let fetcher = Fetcher::new(settings.clone()).map_err(StartError::PolicyUrl)?;
        let trust = config.policy_trust.clone();
        let mut remote = RemotePolicy::new(fetcher, config.disabled_actions, trust, Arc::clone(metrics));
        let initial = remote.start().await;
        return Ok((initial, Some(remote)));
    }
    Ok((Some(Arc::new(load_policy(config, Arc::clone(metrics))?)), None))
}

/// Resolves the statsd `HOST:PORT` once and starts the sink.
async fn start_statsd(address: &str) -> Result<StatsdSink, StartError> {
    let error = |message: String| StartError::Statsd { address: address.to_owned(), message };
    let target = tokio::net::lookup_host(address)
        .await
        .map_err(|e| error(e.to_string()))?
        .next()
        .ok_or_else(|| error("the name has no addresses".into()))?;
    StatsdSink::start(target).await.map_err(|e| error(e.to_string()))
}

/// Turns SIGHUP into reload requests (a burst of signals is one request).
/// The handler is installed when this is called, not when the future first
/// runs, so a SIGHUP sent right after READY=1 is a reload request rather
/// than the default action (termination).
fn forward_sighup(requests: mpsc::Sender<()>) -> impl Future<Output = ()> {
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        let Ok(mut hangups) = hangups else {
            tracing::warn!("cannot install the SIGHUP handler; reloads rely on file events and the periodic check");
            return;
        };
        while hangups.recv().await.is_some() {
            let _ = requests.try_send(());
        }
    }
}

/// What is known about a connection before its request is read.
#[derive(Debug)]
struct ConnectionInfo {
    /// The client's address (from the PROXY header when one is required).
    client: SocketAddr,
    identity: Option<ClientIdentity>,
}

/// One connection, from accept to the end of its tunnel. `alive` is held
/// throughout: draining waits for every connection.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, alive: mpsc::Sender<()>) {
    let _alive = alive;
    // Boxed: everything before the tunnel (TLS handshake, head, DNS,
    // connect) is freed before it starts, so an idle tunnel's task keeps
    // only the tunnel's own state.
    let Some(tunnel) = Box::pin(open(&shared, stream, peer)).await else { return };
    run_tunnel(&shared, tunnel).await;
}

/// A client's request up to its answer: the PROXY header, TLS, the request
/// head, the decision and the upstream connect. Refusals are answered (and
/// logged) here; a request that may tunnel comes back unanswered.
async fn open(shared: &Shared, stream: TcpStream, peer: SocketAddr) -> Option<Tunnel> {
    let deadline = tokio::time::Instant::now() + shared.config.header_timeout;
    let mut stream = stream;
    let client = if shared.config.proxy_protocol {
        match proxy_protocol::read_header(&mut stream, shared.config.header_timeout).await {
            Ok(ProxyHeader::Proxied { source, .. }) => source,
            Ok(ProxyHeader::Local) => peer,
            Err(error) => {
                tracing::info!(%peer, %error, "connection refused: invalid or missing PROXY protocol header");
                return None;
            }
        }
    } else {
        peer
    };
    let (mut client_stream, identity) = match &shared.tls {
        None => (ClientStream::Plain(stream), None),
        Some(server_tls) => match tokio::time::timeout_at(deadline, server_tls.acceptor().accept(stream)).await {
            Ok(Ok(tls_stream)) => match server_tls.client_identity(tls_stream.get_ref().1) {
                Ok(identity) => (ClientStream::Tls(Box::new(tls_stream)), Some(identity)),
                Err(error) => {
                    tracing::info!(%client, %error, "TLS session resumption refused: the client certificate no longer verifies");
                    return None;
                }
            },
            Ok(Err(error)) => {
                tracing::info!(%client, %error, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::info!(%client, "TLS handshake timed out");
                return None;
            }
        },
    };
    let head = match request::read(&mut client_stream, deadline).await {
        Ok(head) => head,
        Err(error) => {
            if let Some(answer) = Answer::to_unread_head(&error) {
                send_answer(&mut client_stream, &answer.to_bytes(Version::Http11, false)).await;
            }
            tracing::debug!(%client, %error, "connection ended without a request");
            return None;
        }
    };
    let info = ConnectionInfo { client, identity };
    handle(shared, client_stream, head, &info).await
}

/// Writes a refusal's answer and closes the connection.
async fn send_answer(client: &mut ClientStream, bytes: &[u8]) {
    if client.write_all(bytes).await.is_ok() {
        let _ = client.shutdown().await;
    }
}

/// A request allowed to tunnel, not yet answered.
struct Tunnel {
    client: ClientStream,
    /// The request's version, which the `200` repeats.
    version: Version,
    /// Bytes the client sent after its head.
    pipelined: Vec<u8>,
    opened: Opened,
    /// The decision line's id, table and trace id, repeated on the close line.
    id: log::RequestId,
    /// Empty when `live` holds it.
    revision: String,
    trace_id: Option<String>,
    /// The tunnel's entry among the live tunnels; removed when this is dropped.
    live: Option<Registered>,
}

/// One request: decide and connect, or answer the refusal. The decision is
/// abandoned (and logged as `client_gone`) if the client closes its
/// connection meanwhile, so a client cannot leave DNS and connect work
/// running after it is gone.
async fn handle(
    shared: &Shared,
    mut client: ClientStream,
    mut head: RequestHead,
    info: &ConnectionInfo,
) -> Option<Tunnel> {
    // One table for the whole request, even if a reload swaps it meanwhile.
    let Some(policy) = shared.policy.get().map(|state| state.current()) else {
        let mut line = PendingLine::new(
            DecisionLine {
                id: log::request_id(),
                requested_host: head.target.clone(),
                inbound_remote_addr: Some(info.client),
                refusal: Some(Refusal::NoPolicy.kind()),
                error: Some(Refusal::NoPolicy.to_string()),
                allow: Some(false),
                ..DecisionLine::default()
            },
            &shared.metrics,
        );
        line.emit();
        if let Some(recent) = &shared.refusals {
            recent.push(refusal_record(&mut line.line, Refusal::NoPolicy.status().as_u16()));
        }
        let answer = answer::response(&Refusal::NoPolicy, None);
        send_answer(&mut client, &answer.to_bytes_for(&head)).await;
        return None;
    };
    let (trace_id, trace_id_error) = match std::mem::replace(&mut head.trace_id, Ok(None)) {
        Ok(trace_id) => (trace_id, None),
        Err(why) => (None, Some(why)),
    };
    // Written exactly once: below, or by the guard if the client goes away mid-request.
    let mut pending = PendingLine::new(
        DecisionLine {
            id: log::request_id(),
            requested_host: head.target.clone(),
            inbound_remote_addr: Some(info.client),
            policy_revision: policy.table.revision().to_owned(),
            policy_serial: policy.table.signature.as_ref().map(|s| s.serial),
            trace_id,
            trace_id_error,
            ..DecisionLine::default()
        },
        &shared.metrics,
    );
    let decided = tokio::select! {
        biased;
        decided = decide_and_connect(shared, &policy.table, &head, info, &mut pending.line) => decided,
        () = client_left(client.tcp()) => return None,
    };
    // Refuse mode: no answer whose decision line the log cannot take. Room
    // is reserved just before the line is written (so only requests about
    // to log hold any), waiting for it, without blocking this worker, at
    // most the stall timeout; else 503 (dropping the upstream connection).
    let decided = match shared.config.log_stall_policy {
        LogStallPolicy::Drop => decided,
        LogStallPolicy::Refuse => match log::reserve_line(shared.config.log_stall_timeout).await {
            Some(reservation) => {
                pending.reservation = Some(reservation);
                decided
            }
            None => Err(Refusal::LogStalled),
        },
    };
    match decided {
        Ok(opened) => {
            pending.emit();
            let id = pending.line.id;
            let mut revision = std::mem::take(&mut pending.line.policy_revision);
            let trace_id = pending.line.trace_id.take();
            let live = shared.live.as_ref().map(|live| {
                // The line is written: its strings move into the entry, nothing is copied.
                let line = &mut pending.line;
                live.register(LiveTunnel {
                    id,
                    role: line.role.take(),
                    requested: std::mem::take(&mut line.requested_host),
                    client: info.client,
                    upstream: match (line.dst_ip, line.dst_port) {
                        (Some(ip), Some(port)) => SocketAddr::new(ip, port),
                        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
                    },
                    created: SystemTime::now(),
                    rule: line.decision_reason.take(),
                    project: line.project.take(),
                    report_only: line.enforce_would_deny == Some(true),
                    revision: std::mem::take(&mut revision),
                    counters: TunnelCounters::new(),
                })
            });
            Some(Tunnel {
                client,
                version: head.version,
                pipelined: head.pipelined,
                opened,
                id,
                revision,
                trace_id,
                live,
            })
        }
        Err(refusal) => {
            pending.line.refusal = Some(refusal.kind());
            pending.line.error = Some(refusal.to_string());
            if pending.line.allow.is_none() {
                pending.line.allow = Some(false);
            }
            pending.emit();
            if let Some(recent) = &shared.refusals {
                recent.push(refusal_record(&mut pending.line, refusal.status().as_u16()));
            }
            let answer = answer::response(&refusal, shared.config.deny_message_extra.as_deref());
            send_answer(&mut client, &answer.to_bytes_for(&head)).await;
            None
        }
    }
}

/// A refused request's record for the recent refusals, its strings moved
/// out of the decision line just written.
fn refusal_record(line: &mut DecisionLine, status: u16) -> RefusalRecord {
    RefusalRecord {
        sequence: 0,
        at: SystemTime::now(),
        id: line.id,
        role: line.role.take(),
        host: std::mem::take(&mut line.requested_host),
        client: line.inbound_remote_addr,
        address: line.dst_ip,
        port: line.dst_port,
        status,
        kind: line.refusal.unwrap_or("refused"),
        reason: line.error.take().unwrap_or_default(),
        rule: line.decision_reason.take(),
    }
}

/// Resolves once the client has closed or reset its connection, seen by a
/// peek, so nothing it sent is consumed. A client that sent bytes (early
/// tunnel data) is still there: then this never resolves.
async fn client_left(client: &TcpStream) {
    let mut byte = [0u8; 1];
    if let Ok(1..) = client.peek(&mut byte).await {
        std::future::pending::<()>().await;
    }
}

/// Writes the `200` that opens the tunnel, from a buffer lent only while it is sent.
async fn send_established(client: &mut ClientStream, version: Version) -> std::io::Result<()> {
    let mut established = Buffer::take();
    answer::established(version, &mut established);
    client.write_all(&established).await?;
    client.flush().await
}

/// Answers `200`, then moves bytes until the tunnel ends, and writes its
/// close line.
async fn run_tunnel(shared: &Shared, tunnel: Tunnel) {
    let Tunnel { mut client, version, pipelined, opened, id, revision, trace_id, live } = tunnel;
    let counters = live.as_ref().map(|entry| &entry.tunnel().counters);
    let open = shared.metrics.tunnel_opened();
    let started = Instant::now();
    let stats = match send_established(&mut client, version).await {
        Ok(()) => {
            let mut stop = shared.stop_tunnels.clone();
            let stop = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            tunnel::run(client, &pipelined, opened.upstream, shared.config.idle_timeout, counters, stop).await
        }
        Err(error) => TunnelStats {
            error: Some(format!("client went away before the tunnel opened: {error}")),
            ..TunnelStats::default()
        },
    };
    let duration = started.elapsed();
    let revision = live.as_ref().map_or(revision.as_str(), |entry| entry.tunnel().revision.as_str());
    log::close(id, &stats, duration, revision, trace_id.as_deref());
    open.closed(opened.tags, duration, stats.bytes_in, stats.bytes_out);
    // Held until the tunnel is over.
    drop((opened.permit, opened.client_slot, live));
}

/// A decision line that is written even if the request future is dropped
/// (`handle` drops it when the client disconnects during DNS or connect): one
/// line per request, always.
/// Emitting it also counts the request's outcome.
struct PendingLine<'m> {
    line: DecisionLine,
    emitted: bool,
    metrics: &'m Metrics,
    /// Room in the log buffer held for this line (`--log-stall-policy refuse`).
    reservation: Option<log::Reservation>,
}

impl<'m> PendingLine<'m> {
    fn new(line: DecisionLine, metrics: &'m Metrics) -> Self {
        PendingLine { line, emitted: false, metrics, reservation: None }
    }

    fn emit(&mut self) {
        match self.reservation.take() {
            Some(reservation) => reservation.emit(|| self.line.emit()),
            None => self.line.emit(),
        }
        self.metrics.request(self.line.refusal.unwrap_or("tunnel"));
        self.emitted = true;
    }
}

impl Drop for PendingLine<'_> {
    fn drop(&mut self) {
        if !self.emitted {
            self.line.refusal = Some("client_gone");
            self.line.error = Some("the client went away before the request completed".to_owned());
            self.emit();
        }
    }
}

/// A tunnel ready to run: the upstream connection, the cap permit (and the
/// per-client slot) it holds, and the role's metric tags for its close.
struct Opened {
    upstream: TcpStream,
    permit: tokio::sync::OwnedSemaphorePermit,
    client_slot: Option<ClientSlot>,
    tags: Arc<RoleTags>,
}

async fn decide_and_connect(
    shared: &Shared,
    policy: &table::CompiledTable,
    request: &RequestHead,
    info: &ConnectionInfo,
    line: &mut DecisionLine,
) -> Result<Opened, Refusal> {
    if shared.draining.load(Ordering::SeqCst) {
        return Err(Refusal::Draining);
    }
    // Every request head counts, whatever it asks for: the limit is on what a client makes proxyd do.
    if let Some(rate) = &shared.client_request_rate
        && rate.check(info.client.ip()) == RateVerdict::Exceeded
    {
        return Err(Refusal::ClientRequestRate { per_second: rate.per_second() });
    }
    if let Method::Other(method) = &request.method {
        return Err(Refusal::NotConnect(method.clone()));
    }
    if request.declares_content {
        return Err(Refusal::BadRequest(
            "a CONNECT request has no content: Content-Length must be 0 and Transfer-Encoding absent".to_owned(),
        ));
    }
    let destination = parse_destination(&request.target)?;
    // For refusals only: an allowed request never copies its host.
    let host = || destination.host.as_str().to_owned();

    if let Some(ClientIdentity::CertificateWithoutRole(missing)) = &info.identity {
        line.missing_role_reason = Some(missing.as_str());
    }
    let Asker { role, challenge } = role(shared, request, info, destination.host.as_str())?;
    line.role = role.clone();

    // Name stage: a denied name is refused before any DNS query.
    let decision = policy.table.decide_at(role.as_deref(), &destination.host, destination.port);
    if let Some(exception) = decision.internal_destination {
        line.internal_destination_reason = Some(exception.reason.clone());
    }
    line.project = Some(decision.project.to_owned());
    line.allow = Some(decision.verdict.is_allowed());
    line.decision_reason = Some(decision.reason.as_str().into());
    line.enforce_would_deny = Some(decision.verdict.enforce_would_deny());
    line.default_rule = Some(decision.default_rule());
    let tags = shared.metrics.decision(role.as_deref(), &decision);
    if !decision.verdict.is_allowed() {
        if challenge {
            // The anonymous role may not go there; the password's role might: ask for it.
            return Err(Refusal::AuthRequired { realm: Arc::clone(&shared.config.proxy_auth_realm) });
        }
        return Err(Refusal::Denied { host: host(), reason: decision.reason.as_str().to_owned() });
    }

    // The cap bounds tunnels and the DNS and connect work that leads to them;
    // a denied name needs no slot and gets its 403 even when the cap is full.
    // The per-client cap first, so a client over it takes no global slot.
    let client_slot = match &shared.client_tunnels {
        Some(limits) => {
            Some(limits.try_acquire(info.client.ip()).ok_or(Refusal::ClientTunnelCap { limit: limits.limit() })?)
        }
        None => None,
    };
    let permit = Arc::clone(&shared.tunnels).try_acquire_owned().map_err(|_| Refusal::TunnelCap)?;

    // Address stage.
    let ips = match destination.host.ip() {
        Some(ip) => vec![ip],
        None => {
            let started = Instant::now();
            let resolved = shared.resolver.lookup(destination.host.as_str()).await;
            let elapsed = started.elapsed();
            line.dns_lookup_time_ms = Some(elapsed.as_millis() as u64);
            let result = match &resolved {
                Ok(_) => DnsResult::Ok,
                Err(ResolveError::Timeout { .. }) => DnsResult::Timeout,
                Err(_) => DnsResult::Error,
            };
            shared.metrics.dns_lookup(elapsed, result);
            let ips = resolved.map_err(|error| Refusal::Dns { host: host(), error })?;
            let usable: Vec<_> = ips.into_iter().filter(|ip| shared.config.network.permits(*ip)).collect();
            if usable.is_empty() {
                return Err(Refusal::Dns {
                    host: host(),
                    error: ResolveError::NotFound { name: destination.host.to_string() },
                });
            }
            usable
        }
    };
    let exception = decision.internal_destination;
    let candidates = match egress::check(&shared.addresses, policy.table.network(), exception, &ips, destination.port) {
        AddressStage::Permitted(candidates) => candidates,
        AddressStage::Denied { ip, rule } => {
            shared.metrics.address_denied(&rule);
            let reason = format!("address {ip} denied by rule '{rule}'");
            line.allow = Some(false);
            line.enforce_would_deny = Some(true);
            line.decision_reason = Some(reason.clone().into());
            line.dst_ip = Some(ip);
            line.dst_port = Some(destination.port);
            return Err(Refusal::Denied { host: host(), reason });
        }
    };

    let guard = shared.config.egress_guard.as_ref();
    match egress::connect(&candidates, shared.config.connect_timeout, guard, &shared.metrics).await {
        Ok((upstream, checked)) => {
            line.dst_ip = Some(checked.addr().ip());
            line.dst_port = Some(checked.addr().port());
            Ok(Opened { upstream, permit, client_slot, tags })
        }
        Err(ConnectFailure::Io { addr, error }) => {
            line.dst_ip = Some(addr.ip());
            line.dst_port = Some(addr.port());
            Err(Refusal::Connect { host: host(), addr, error })
        }
        Err(ConnectFailure::Timeout { addr, after }) => {
            line.dst_ip = Some(addr.ip());
            line.dst_port = Some(addr.port());
            Err(Refusal::ConnectTimeout { host: host(), addr, after })
        }
    }
}

/// The CONNECT target must be a bare authority (`host:port`); the `Host`
/// header is never used.
fn parse_destination(target: &str) -> Result<Authority, Refusal> {
    if target.starts_with('/') || target == "*" || target.contains("://") {
        return Err(Refusal::BadRequest(format!("CONNECT target {target} is not host:port")));
    }
    authority::parse(target).map_err(|e| Refusal::BadRequest(format!("invalid CONNECT target: {e}")))
}

/// Who is asking, and whether a refusal by the name stage should be a
/// `407` challenge instead of a `403`.
struct Asker {
    role: Option<String>,
    /// Anonymous for lack of proxy credentials while a password is configured.
    challenge: bool,
}

/// Who is asking: the role a verified client certificate names, else the
/// proxy password's role, else nobody. Role headers from clients are never
/// read. Wrong credentials are refused (`407`), never anonymous; no
/// credentials are anonymous only under `allow_missing_role`, and then a
/// name the anonymous role may not reach is challenged (`407`) rather than
/// refused, because Java's and .NET's clients send credentials only after a
/// challenge. The address stage never challenges: see docs/proxyd.md.
fn role(shared: &Shared, request: &RequestHead, info: &ConnectionInfo, host: &str) -> Result<Asker, Refusal> {
    if let Some(ClientIdentity::Role(role)) = &info.identity {
        return Ok(Asker { role: Some(role.clone()), challenge: false });
    }
    if let Some(auth) = &shared.config.proxy_auth {
        let realm = || Arc::clone(&shared.config.proxy_auth_realm);
        return match &request.proxy_authorization {
            None if shared.config.allow_missing_role => Ok(Asker { role: None, challenge: true }),
            None => Err(Refusal::AuthRequired { realm: realm() }),
            Some(value) => {
                if password_matches(value, &auth.password) {
                    Ok(Asker { role: Some(auth.role.clone()), challenge: false })
                } else {
                    Err(Refusal::BadCredentials { realm: realm() })
                }
            }
        };
    }
    if shared.config.allow_missing_role {
        Ok(Asker { role: None, challenge: false })
    } else {
        Err(Refusal::MissingRole { host: host.to_owned() })
    }
}

/// `Basic base64(user:password)` with the right password (any user name).
/// Compared in constant time over fixed-size digests, so neither the
/// content nor the length of the secret leaks through timing.
fn password_matches(header_value: &[u8], password: &str) -> bool {
    let Some(encoded) = header_value.strip_prefix(b"Basic ").or_else(|| header_value.strip_prefix(b"basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()) else {
        return false;
    };
    let given = match decoded.iter().position(|b| *b == b':') {
        Some(colon) => decoded.get(colon + 1..).unwrap_or_default(),
        None => return false,
    };
    let given = Sha256::digest(given);
    let expected = Sha256::digest(password.as_bytes());
    given.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        let header = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert!(password_matches(header("anyone:s3cret").as_bytes(), "s3cret"));
        assert!(password_matches(header(":s3cret").as_bytes(), "s3cret"));
        assert!(password_matches(header("a:b:s3cret").as_bytes(), "b:s3cret"), "password may contain ':'");
        assert!(!password_matches(header("anyone:wrong").as_bytes(), "s3cret"));
        assert!(!password_matches(header("s3cret").as_bytes(), "s3cret"));
        assert!(!password_matches(b"Bearer s3cret", "s3cret"));
        assert!(!password_matches(b"Basic !!!", "s3cret"));
    }
}
