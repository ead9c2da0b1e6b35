//! Upstream servers for tunnels to reach: echo, TLS echo, reset, banner.
//!
//! Each listens on a loopback address the test chooses (on Linux every
//! 127.x.y.z works without setup, so tests can give each upstream its own
//! address and assert where a tunnel went) and a free port. They never
//! connect anywhere themselves. Each stops when dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What an upstream does with each accepted connection.
#[derive(Clone)]
enum Behaviour {
    Echo,
    TlsEcho(TlsAcceptor),
    ResetAfter(usize),
    Banner(&'static [u8]),
}

/// A running upstream server.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Echoes bytes as they arrive. On the client's EOF (half-close) it finishes echoing, then shuts
    /// down its own write side, so a test can see half-close travel both ways through a tunnel.
    pub async fn echo(ip: IpAddr) -> Self {
        Self::start(ip, Behaviour::Echo).await
    }

    /// The same over TLS (rustls with ring), with the caller's certificate chain and key in PEM.
    /// On the client's close_notify or EOF it finishes echoing, then sends close_notify and FIN.
    pub async fn tls_echo(ip: IpAddr, cert_pem: &str, key_pem: &str) -> Self {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("upstream: certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("upstream: key PEM");
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("upstream: TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("upstream: certificate and key");
        Self::start(ip, Behaviour::TlsEcho(TlsAcceptor::from(Arc::new(config)))).await
    }

    /// Reads `bytes` bytes (or until EOF), then resets the connection (RST, via SO_LINGER 0).
    pub async fn reset_after(ip: IpAddr, bytes: usize) -> Self {
        Self::start(ip, Behaviour::ResetAfter(bytes)).await
    }

    /// Writes `banner` as soon as a connection is accepted (server speaks first, like SMTP or SSH),
    /// then echoes like [`Upstream::echo`].
    pub async fn banner(ip: IpAddr, banner: &'static [u8]) -> Self {
        Self::start(ip, Behaviour::Banner(banner)).await
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn start(ip: IpAddr, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap_or_else(|err| panic!("upstream: bind {ip}: {err}"));
        let addr = listener.local_addr().expect("upstream: local address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, behaviour, accepted.clone()));
        Upstream { addr, accepted, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Drops the listener and, through the `JoinSet`, every connection still open.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, behaviour: Behaviour, accepted: Arc<AtomicUsize>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await; // do not spin on EMFILE
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        while connections.try_join_next().is_some() {}
        connections.spawn(handle(stream, behaviour.clone()));
    }
}

async fn handle(mut stream: TcpStream, behaviour: Behaviour) {
    match behaviour {
        Behaviour::Echo => echo(stream).await,
        Behaviour::Banner(banner) => {
            if stream.write_all(banner).await.is_ok() {
                echo(stream).await;
            }
        }
        Behaviour::TlsEcho(acceptor) => {
            if let Ok(tls) = acceptor.accept(stream).await {
                echo(tls).await;
            }
        }
        Behaviour::ResetAfter(bytes) => {
            let mut remaining = bytes;
            let mut buffer = [0_u8; 4096];
            while remaining > 0 {
                let want = remaining.min(buffer.len());
                match stream.read(buffer.get_mut(..want).unwrap_or_default()).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => remaining = remaining.saturating_sub(read),
                }
            }
            // Closing with a zero linger time sends RST instead of FIN.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    }
}

/// Copies until the peer's EOF, then shuts down the write side (FIN, or close_notify and FIN).
async fn echo<S: AsyncRead + AsyncWrite>(stream: S) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}
