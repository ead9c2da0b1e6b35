//! Smokescreen's stats socket (`--stats-socket-dir DIR`,
//! `--stats-socket-file-mode MODE`): a unix socket `DIR/track-<pid>.sock`,
//! chmod to MODE (default `700`), answering HTTP on any path with the open
//! tunnels as Smokescreen writes them: `[\n`, one JSON object per tunnel
//! joined by `,\n`, then `]\n` (`curl --unix-socket DIR/track-PID.sock
//! http://localhost/`). `?role=NAME` filters and `?limit=N` caps (at most
//! [`crate::live::MAX_LIMIT`], [`crate::live::DEFAULT_LIMIT`] by default).
//!
//! The socket is removed when the proxy stops (and when this is dropped on
//! any other way out). Like the admin listener it only reads: bounded
//! heads, one request per connection, a connection deadline and a cap on
//! connections. It never touches proxy traffic.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

pub use crate::config::{DEFAULT_STATS_SOCKET_MODE as DEFAULT_MODE, StatsSocketSettings};
use crate::live::{LiveTunnels, SmokescreenStats, TunnelQuery};

/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 16;
/// The most one connection may last.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// The running stats socket; stopping or dropping it removes the file.
#[derive(Debug)]
pub struct StatsSocket {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl StatsSocket {
    /// Binds `DIR/track-<pid>.sock` (replacing a stale socket of that
    /// name), sets its mode and serves it. Must run inside a runtime.
    pub fn start(
        settings: &StatsSocketSettings,
        live: Arc<LiveTunnels>,
        header_timeout: Duration,
    ) -> Result<StatsSocket, String> {
        let path = settings.path(std::process::id());
        remove_stale(&path)?;
        let listener = UnixListener::bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        // From here on the guard removes the file, whatever happens next.
        let mut socket = StatsSocket { path, stop: None, task: None };
        set_mode(&socket.path, settings.mode)?;
        let (stop, stopped) = oneshot::channel();
        socket.stop = Some(stop);
        socket.task = Some(tokio::spawn(serve(listener, live, header_timeout, stopped)));
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket file.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        // Drop removes the file.
    }
}

impl Drop for StatsSocket {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the stats socket");
        }
    }
}

/// A socket file left by a process that had our pid is removed; any other
/// kind of file there is an error (never delete what is not ours).
fn remove_stale(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(metadata) => {
            use std::os::unix::fs::FileTypeExt as _;
            if metadata.file_type().is_socket() {
                std::fs::remove_file(path).map_err(|e| format!("cannot replace the stale {}: {e}", path.display()))
            } else {
                Err(format!("{} exists and is not a socket", path.display()))
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:03o} on {}: {e}", path.display()))
}

async fn serve(listener: UnixListener, live: Arc<LiveTunnels>, header_timeout: Duration, stop: oneshot::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "stats socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let live = Arc::clone(&live);
                async move { Ok::<_, Infallible>(respond(&live, &request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(8 * 1024)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

fn respond(live: &LiveTunnels, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match TunnelQuery::parse(request.uri().query()) {
        Ok(query) => (StatusCode::OK, smokescreen_body(live, &query)),
        Err(message) => (StatusCode::BAD_REQUEST, format!("{}\n", serde_json::Value::from(message))),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

/// Smokescreen's body: `[\n`, objects joined by `,\n`, `]\n`.
pub fn smokescreen_body(live: &LiveTunnels, query: &TunnelQuery) -> String {
    let (tunnels, _) = live.snapshot(query.role.as_deref(), query.limit);
    let objects: Vec<String> =
        tunnels.iter().filter_map(|t| serde_json::to_string(&SmokescreenStats::of(t)).ok()).collect();
    format!("[\n{}]\n", objects.join(",\n"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn modes_are_octal_up_to_777() {
        assert_eq!(StatsSocketSettings::parse_mode("700"), Ok(0o700));
        assert_eq!(StatsSocketSettings::parse_mode("0660"), Ok(0o660));
        assert_eq!(StatsSocketSettings::parse_mode("0o600"), Ok(0o600));
        for bad in ["999", "1000", "", "rw", "-1"] {
            assert!(StatsSocketSettings::parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn directories_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StatsSocketSettings { dir: dir.path().to_owned(), mode: DEFAULT_MODE };
        assert_eq!(settings.check(), Ok(()));
        assert_eq!(settings.check_writable(), Ok(()));
        let missing = StatsSocketSettings { dir: dir.path().join("nope"), mode: DEFAULT_MODE };
        assert!(missing.check().unwrap_err().contains("cannot use it"));
        let long = StatsSocketSettings { dir: dir.path().join("x".repeat(120)), mode: DEFAULT_MODE };
        std::fs::create_dir(&long.dir).unwrap();
        assert!(long.check().unwrap_err().contains("longer than"));
    }

    #[test]
    fn an_empty_list_is_smokescreens_shape() {
        let live = LiveTunnels::new(1);
        let query = TunnelQuery::parse(None).unwrap();
        assert_eq!(smokescreen_body(&live, &query), "[\n]\n");
    }
}
