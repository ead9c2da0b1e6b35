//! Remote policy distribution (`--policy-url`): poll a URL for the signed
//! table, hand every new one to [`PolicyState::offer`] (the same checks and
//! swap as a file reload), keep the last verified table in `--policy-cache`,
//! and start from that cache when the URL cannot be fetched.
//!
//! Fetching is conditional (If-None-Match / If-Modified-Since from the last
//! 200 whose table was accepted), bounded in time ([`FETCH_TIMEOUT`]) and in size (a body
//! larger than the cap is refused while streaming, before it is all read; a
//! 304 has no body and is never read), and failures back off exponentially
//! with jitter, up to ten poll intervals. The signature is what makes a
//! fetched table trustworthy, so proxyd refuses `--policy-url` without a
//! public key; TLS (system roots, or `--policy-url-ca`) only keeps the
//! transport private.
//!
//! This module never decides whether a table is acceptable (that is
//! [`crate::policy_trust`]) and never touches proxy traffic.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use egress_policy::policy::ActionSet;
use egress_policy::table;

use crate::metrics::Metrics;
use crate::policy_trust::TrustSettings;
use crate::reload::{FetchLog, FetchResult, PolicyState, ReloadOutcome};

/// The largest table accepted from a URL (the largest valid table file is a
/// signature block larger; a body this size is refused anyway).
pub const MAX_FETCH_BYTES: u64 = 256 * 1024 * 1024;
/// The most one fetch may take, from connect to the last body byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures back off up to this many poll intervals.
const MAX_BACKOFF_INTERVALS: u32 = 10;

/// How the policy is fetched.
#[derive(Clone, Debug)]
pub struct RemoteSettings {
    pub url: Uri,
    pub poll_interval: Duration,
    /// Where the last verified table is kept.
    pub cache: Option<PathBuf>,
    /// PEM CA certificates for an https URL; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Size cap; [`MAX_FETCH_BYTES`] unless a test lowers it.
    pub max_bytes: u64,
}

impl RemoteSettings {
    /// Validates the URL: http or https, with a host, no credentials.
    pub fn parse_url(text: &str) -> Result<Uri, String> {
        let url: Uri = text.parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        match url.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(format!("{text:?}: only http:// and https:// URLs are supported")),
        }
        let authority = url.authority().ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?}: credentials in the URL are not supported"));
        }
        if authority.host().is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        Ok(url)
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the server answered {0}")]
    Status(StatusCode),
    #[error("the response is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One fetch's result.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    NotModified,
    Body(Vec<u8>),
}

/// An HTTP(S) client for one URL that remembers validators between polls.
pub struct Fetcher {
    settings: RemoteSettings,
    tls: Option<tokio_rustls::TlsConnector>,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    /// Validators of the last 200, kept only once its table is accepted: a
    /// refused table is fetched (and refused) again rather than hidden
    /// behind a 304.
    pending: (Option<HeaderValue>, Option<HeaderValue>),
    /// Bytes read from the connection by the last fetch (head and body).
    last_read: Arc<AtomicU64>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("url", &self.settings.url).field("tls", &self.tls.is_some()).finish()
    }
}

impl Fetcher {
    /// Prepares TLS for an https URL (reads `--policy-url-ca` or the system roots).
    pub fn new(settings: RemoteSettings) -> Result<Self, String> {
        let tls = match settings.url.scheme_str() {
            Some("https") => Some(tls_connector(settings.ca_file.as_deref())?),
            _ => None,
        };
        Ok(Fetcher {
            settings,
            tls,
            etag: None,
            last_modified: None,
            pending: (None, None),
            last_read: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// Bytes the last fetch read from the socket: a 304 costs its head only.
    pub fn bytes_read_last_fetch(&self) -> u64 {
        self.last_read.load(Ordering::Relaxed)
    }

    /// Fetches the URL once, conditionally, within [`FETCH_TIMEOUT`].
    pub async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(FETCH_TIMEOUT)),
        }
    }

    async fn fetch_unbounded(&mut self) -> Result<Fetched, FetchError> {
        let url = &self.settings.url;
        let host = url.host().unwrap_or_default();
        let https = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let target = format!("{host}:{port}");
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare_host.as_str(), port))).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(FetchError::Connect(format!("{target}: {e}"))),
            Err(_) => return Err(FetchError::Connect(format!("{target}: timed out after {CONNECT_TIMEOUT:?}"))),
        };
        let _ = tcp.set_nodelay(true);
        self.last_read.store(0, Ordering::Relaxed);
        let tcp = CountingIo { inner: tcp, read: Arc::clone(&self.last_read) };
        let request = self.request()?;
        let response = match &self.tls {
            None => exchange(tcp, request, self.settings.max_bytes).await?,
            Some(connector) => {
                let name = ServerName::try_from(bare_host).map_err(|e| FetchError::Tls(e.to_string()))?;
                let stream = connector.connect(name, tcp).await.map_err(|e| FetchError::Tls(e.to_string()))?;
                exchange(stream, request, self.settings.max_bytes).await?
            }
        };
        match response {
            Exchange::NotModified => Ok(Fetched::NotModified),
            Exchange::Body { bytes, etag, last_modified } => {
                self.pending = (etag, last_modified);
                Ok(Fetched::Body(bytes))
            }
        }
    }

    /// The last body was accepted (or is the active table): ask with its
    /// validators from now on.
    fn accepted(&mut self) {
        (self.etag, self.last_modified) = std::mem::take(&mut self.pending);
    }

    fn request(&self) -> Result<Request<Empty<Bytes>>, FetchError> {
        let url = &self.settings.url;
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
        let mut request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, concat!("proxyd/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/octet-stream");
        if let Some(etag) = &self.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &self.last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, modified);
        }
        request.body(Empty::new()).map_err(|e| FetchError::Http(e.to_string()))
    }
}

/// A connection that counts the bytes read from it.
struct CountingIo<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.fetch_add(buf.filled().len().saturating_sub(before) as u64, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Exchange {
    NotModified,
    Body { bytes: Vec<u8>, etag: Option<HeaderValue>, last_modified: Option<HeaderValue> },
}

/// One request on a fresh connection. A 304 returns before any body is
/// read; a 200 body is read frame by frame and refused as soon as it would
/// pass `max_bytes` (a larger Content-Length is refused before reading).
async fn exchange<S>(io: S, request: Request<Empty<Bytes>>, max_bytes: u64) -> Result<Exchange, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| FetchError::Http(e.to_string()))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => return Ok(Exchange::NotModified),
            StatusCode::OK => {}
            other => return Err(FetchError::Status(other)),
        }
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_bytes) {
            return Err(FetchError::TooLarge { limit: max_bytes });
        }
        let etag = response.headers().get(header::ETAG).cloned();
        let last_modified = response.headers().get(header::LAST_MODIFIED).cloned();
        // Pre-size only within the cap; a lying Content-Length cannot make us allocate more.
        let capacity = declared.unwrap_or(0).min(max_bytes).min(64 * 1024 * 1024);
        let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Http(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if bytes.len() as u64 + data.len() as u64 > max_bytes {
                    return Err(FetchError::TooLarge { limit: max_bytes });
                }
                bytes.extend_from_slice(data);
            }
        }
        Ok(Exchange::Body { bytes, etag, last_modified })
    }
    .await;
    // One request per connection: close it (also stops a body we refused).
    driver.abort();
    result
}

fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--policy-url-ca {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--policy-url-ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("--policy-url-ca {}: no certificates in the file", path.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("--policy-url-ca {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A malformed system certificate is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found for the https policy URL; pass --policy-url-ca".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The policy slot the server reads: empty until a table verifies.
pub type PolicySlot = Arc<OnceLock<Arc<PolicyState>>>;

/// Everything the poller needs to turn fetched bytes into the active policy.
#[derive(Debug)]
pub struct RemotePolicy {
    fetcher: Fetcher,
    log: Arc<FetchLog>,
    disabled: ActionSet,
    trust: TrustSettings,
    metrics: Arc<Metrics>,
    failures: u32,
}

impl RemotePolicy {
    pub fn new(fetcher: Fetcher, disabled: ActionSet, trust: TrustSettings, metrics: Arc<Metrics>) -> Self {
        RemotePolicy { fetcher, log: Arc::new(FetchLog::default()), disabled, trust, metrics, failures: 0 }
    }

    fn url(&self) -> String {
        self.fetcher.settings.url.to_string()
    }

    fn cache_path(&self) -> PathBuf {
        self.fetcher.settings.cache.clone().unwrap_or_default()
    }

    /// The initial policy: the cache if it verifies (the baseline a fetched
    /// table must not roll back from), then one fetch. `None` when neither
    /// gives a table: proxyd then serves 503 until a poll succeeds.
    pub async fn start(&mut self) -> Option<Arc<PolicyState>> {
        let mut state = None;
        if let Some(cache) = self.fetcher.settings.cache.clone() {
            state = self.load_cache(&cache).await;
        }
        let fetched = self.fetcher.fetch().await;
        match (state, fetched) {
            (Some(state), fetched) => {
                self.absorb(&state, fetched, "start").await;
                Some(state)
            }
            (None, Ok(Fetched::Body(bytes))) => self.first(bytes).await,
            (None, Ok(Fetched::NotModified)) => {
                // Impossible without validators; treat as a failure to be retried.
                self.failed("the server answered 304 to an unconditional request".into());
                None
            }
            (None, Err(error)) => {
                tracing::warn!(url = %self.url(), %error, "cannot fetch the policy and no verified cache; not ready");
                self.failed(error.to_string());
                None
            }
        }
    }

    async fn load_cache(&self, cache: &Path) -> Option<Arc<PolicyState>> {
        let (path, url, disabled, trust, log, metrics) = (
            cache.to_path_buf(),
            self.url(),
            self.disabled,
            self.trust.clone(),
            Arc::clone(&self.log),
            Arc::clone(&self.metrics),
        );
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = table::read_bytes(&path).map_err(|e| e.to_string())?;
            PolicyState::from_fetched(&bytes, &path, &url, disabled, trust, log, metrics).map_err(|e| e.to_string())
        })
        .await;
        match loaded {
            Ok(Ok(state)) => {
                tracing::info!(cache = %cache.display(), revision = %state.current().table.revision(), "policy loaded from the cache");
                Some(Arc::new(state))
            }
            Ok(Err(error)) => {
                tracing::warn!(cache = %cache.display(), %error, "policy cache not used");
                None
            }
            Err(_) => None,
        }
    }

    /// The first table when nothing is active yet.
    async fn first(&mut self, bytes: Vec<u8>) -> Option<Arc<PolicyState>> {
        let (cache, url, disabled, trust, log, metrics) = (
            self.cache_path(),
            self.url(),
            self.disabled,
            self.trust.clone(),
            Arc::clone(&self.log),
            Arc::clone(&self.metrics),
        );
        let keep = self.fetcher.settings.cache.is_some();
        let created = tokio::task::spawn_blocking(move || {
            let state = PolicyState::from_fetched(&bytes, &cache, &url, disabled, trust, log, metrics)
                .map_err(|e| format!("refused: {e}"))?;
            if keep {
                write_cache(&cache, &bytes);
            }
            Ok::<_, String>(state)
        })
        .await
        .unwrap_or_else(|_| Err("internal error: the verification task failed".into()));
        match created {
            Ok(state) => {
                tracing::info!(url = %self.url(), revision = %state.current().table.revision(), "policy fetched");
                self.fetcher.accepted();
                self.succeeded(FetchResult::Updated);
                Some(Arc::new(state))
            }
            Err(error) => {
                tracing::warn!(url = %self.url(), %error, "fetched policy refused; not ready");
                self.failed(error);
                None
            }
        }
    }

    /// Hands one fetch's result to the active state and records it.
    async fn absorb(&mut self, state: &Arc<PolicyState>, fetched: Result<Fetched, FetchError>, trigger: &'static str) {
        let bytes = match fetched {
            Ok(Fetched::NotModified) => return self.succeeded(FetchResult::NotModified),
            Ok(Fetched::Body(bytes)) => bytes,
            Err(error) => {
                tracing::warn!(url = %self.url(), %error, "policy fetch failed; the active policy keeps serving");
                return self.failed(error.to_string());
            }
        };
        let (state2, cache) = (Arc::clone(state), self.fetcher.settings.cache.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = state2.offer(&bytes, trigger);
            if let (ReloadOutcome::Swapped { .. }, Some(cache)) = (&outcome, &cache) {
                write_cache(cache, &bytes);
            }
            outcome
        })
        .await
        .unwrap_or_else(|_| ReloadOutcome::Refused("internal error: the verification task failed".into()));
        match outcome {
            ReloadOutcome::Swapped { .. } => {
                self.fetcher.accepted();
                self.succeeded(FetchResult::Updated);
            }
            ReloadOutcome::Unchanged => {
                self.fetcher.accepted();
                self.succeeded(FetchResult::NotModified);
            }
            ReloadOutcome::Refused(reason) => self.failed(format!("refused: {reason}")),
        }
    }

    fn succeeded(&mut self, result: FetchResult) {
        self.failures = 0;
        self.log.record(result, None);
        self.metrics.policy_fetch(result.as_str());
    }

    fn failed(&mut self, error: String) {
        self.failures = self.failures.saturating_add(1);
        self.log.record(FetchResult::Failed, Some(error));
        self.metrics.policy_fetch(FetchResult::Failed.as_str());
    }

    /// Until the next fetch: the poll interval, or after failures an
    /// exponential backoff with jitter, capped at ten intervals.
    fn next_delay(&self) -> Duration {
        backoff(self.fetcher.settings.poll_interval, self.failures, random_fraction())
    }

    /// Polls until `stop` resolves; SIGHUP (`sighup`) polls at once. While
    /// nothing is active, a table that verifies is installed into `slot` and
    /// handed to `loaded` (the server announces it to the admin endpoints).
    pub async fn poll(
        mut self,
        mut state: Option<Arc<PolicyState>>,
        slot: PolicySlot,
        loaded: impl Fn(Arc<PolicyState>),
        mut sighup: tokio::sync::mpsc::Receiver<()>,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.next_delay()) => {}
                Some(()) = sighup.recv() => {}
            }
            let fetched = tokio::select! {
                () = &mut stop => return,
                fetched = self.fetcher.fetch() => fetched,
            };
            match &state {
                Some(active) => self.absorb(active, fetched, "poll").await,
                None => {
                    let created = match fetched {
                        Ok(Fetched::Body(bytes)) => self.first(bytes).await,
                        Ok(Fetched::NotModified) => {
                            self.failed("the server answered 304 but no policy is loaded".into());
                            None
                        }
                        Err(error) => {
                            tracing::warn!(url = %self.url(), %error, "policy fetch failed; still no policy");
                            self.failed(error.to_string());
                            None
                        }
                    };
                    if let Some(created) = created {
                        let _ = slot.set(Arc::clone(&created));
                        loaded(Arc::clone(&created));
                        tracing::info!(revision = %created.current().table.revision(), "policy loaded: ready");
                        state = Some(created);
                    }
                }
            }
        }
    }
}

fn write_cache(path: &Path, bytes: &[u8]) {
    if let Err(error) = table::write_atomically(path, bytes) {
        tracing::warn!(cache = %path.display(), %error, "cannot write the policy cache");
    }
}

/// `interval` after a success; after `failures` failures, `interval × 2^(n-1)`
/// capped at ten intervals, scaled by a jitter fraction in [0.5, 1.0].
pub fn backoff(interval: Duration, failures: u32, jitter: f64) -> Duration {
    if failures == 0 {
        return interval;
    }
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16)).min(MAX_BACKOFF_INTERVALS);
    let ceiling = interval.saturating_mul(factor);
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A uniform fraction in [0, 1) from the system CSPRNG (0.5 if it fails).
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = Duration::from_secs(30);
        assert_eq!(backoff(s, 0, 0.3), s);
        assert_eq!(backoff(s, 1, 1.0), s);
        assert_eq!(backoff(s, 2, 1.0), s * 2);
        assert_eq!(backoff(s, 3, 1.0), s * 4);
        assert_eq!(backoff(s, 4, 1.0), s * 8);
        assert_eq!(backoff(s, 5, 1.0), s * 10);
        assert_eq!(backoff(s, 500, 1.0), s * 10);
        assert_eq!(backoff(s, 500, 0.0), s * 5);
        let r = random_fraction();
        assert!((0.0..1.0).contains(&r));
    }

    /// Serves `body` with ETag "v" (304 when the request carries it) on
    /// loopback, one connection per request.
    async fn etag_server(body: Vec<u8>) -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(body);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = Arc::clone(&body);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if head.contains("if-none-match: \"v\"") {
                        let _ = stream.write_all(b"HTTP/1.1 304 Not Modified\r\nETag: \"v\"\r\n\r\n").await;
                    } else {
                        let reply = format!("HTTP/1.1 200 OK\r\nETag: \"v\"\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.write_all(body.as_slice()).await;
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        addr
    }

    /// A 304 reads the response head and nothing else, whatever the table's
    /// size: the body buffer is allocated only after a 200.
    #[tokio::test]
    async fn a_304_costs_the_same_for_any_table_size() {
        let mut per_304 = Vec::new();
        for size in [1_000usize, 8 * 1024 * 1024] {
            let addr = etag_server(vec![7u8; size]).await;
            let settings = RemoteSettings {
                url: format!("http://{addr}/p.bin").parse().unwrap(),
                poll_interval: Duration::from_secs(1),
                cache: None,
                ca_file: None,
                max_bytes: MAX_FETCH_BYTES,
            };
            let mut fetcher = Fetcher::new(settings).unwrap();
            assert_eq!(fetcher.fetch().await.unwrap(), Fetched::Body(vec![7u8; size]));
            assert!(fetcher.bytes_read_last_fetch() >= size as u64);
            // Validators are used only once the table is accepted.
            fetcher.accepted();
            let started = std::time::Instant::now();
            assert_eq!(fetcher.fetch().await.unwrap(), Fetched::NotModified);
            let elapsed = started.elapsed();
            let read = fetcher.bytes_read_last_fetch();
            println!("table {size} bytes: a 304 poll read {read} bytes in {elapsed:?}");
            per_304.push(read);
        }
        assert!(per_304.iter().all(|r| *r < 256), "{per_304:?}");
        assert_eq!(per_304[0], per_304[1], "a 304 does not depend on the table size");
    }

    #[test]
    fn urls_are_checked() {
        assert!(RemoteSettings::parse_url("https://example.com/policy.bin").is_ok());
        assert!(RemoteSettings::parse_url("http://127.0.0.1:8080/p").is_ok());
        for bad in ["ftp://x/p", "/just/a/path", "https://user:pw@example.com/p", "example.com/p"] {
            assert!(RemoteSettings::parse_url(bad).is_err(), "{bad}");
        }
    }
}
