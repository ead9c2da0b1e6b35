//! The other programs the load benchmark measures proxyd against, each
//! started as a child in the foreground with a configuration written into a
//! temporary directory, and stopped when dropped:
//!
//! - **HAProxy** in `mode tcp` with `option splice-request` and
//!   `option splice-response`, one fixed listener per upstream: no CONNECT,
//!   no DNS, no policy, just accept, connect and splice. The ceiling for any
//!   CONNECT proxy on the machine.
//! - **Squid** as a CONNECT proxy: one worker, no cache, CONNECT allowed
//!   only to the benchmark's echo and sink addresses and ports.
//!
//! Neither is needed: when one is not installed (or does not start), the
//! benchmark prints one `skipped:` line and goes on without it. Every
//! listener is on a 127.0.x.y address and every upstream one of the
//! benchmark's own loopback servers.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Result;

/// A program found on `PATH` or in the sbin directories Debian installs daemons into.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free TCP port on `ip` (bound, then released for the child to bind).
fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(StdListener::bind((ip, 0))?.local_addr()?.port())
}

/// Waits until `addr` accepts connections, or the child exits, or `max` passes.
fn wait_listening(child: &mut Child, addr: SocketAddr, max: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + max;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("{what} exited before listening on {addr} ({status})").into());
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} did not listen on {addr} within {max:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process in its own temporary directory; SIGTERM then SIGKILL on drop.
pub struct External {
    child: Child,
    /// Holds the configuration (and Squid's logs) until the child is gone.
    _dir: tempfile::TempDir,
}

impl External {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        testkit::daemon::stop_child(&mut self.child, Duration::from_secs(3));
    }
}

/// HAProxy as a splicing TCP relay: `relays[i]` forwards to `upstreams[i]`.
pub struct HaProxy {
    pub process: External,
    pub relays: Vec<SocketAddr>,
}

/// The relay listeners: 127.0.4.1, 127.0.4.2, ... (one per upstream).
fn relay_ip(index: usize) -> Result<IpAddr> {
    let last = u8::try_from(index + 1).map_err(|_| "too many HAProxy relays")?;
    Ok(IpAddr::from([127, 0, 4, last]))
}

impl HaProxy {
    /// Starts `haproxy -f cfg -db` with one listener per upstream.
    pub fn start(binary: &Path, upstreams: &[SocketAddr], max_connections: usize) -> Result<HaProxy> {
        let dir = tempfile::tempdir()?;
        let mut relays = Vec::new();
        for index in 0..upstreams.len() {
            let ip = relay_ip(index)?;
            relays.push(SocketAddr::new(ip, free_port(ip)?));
        }
        // Threads as many as cores (HAProxy's default, stated so a reader
        // need not know it); no logging, as proxyd is measured with its logs.
        // `HAPROXY_NBTHREAD=1` and `HAPROXY_SPLICE=0` vary the relay, to see
        // which of its settings the comparison depends on.
        let threads = std::env::var("HAPROXY_NBTHREAD")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let splice = if std::env::var("HAPROXY_SPLICE").is_ok_and(|v| v == "0") {
            ""
        } else {
            "    option splice-request\n    option splice-response\n"
        };
        let mut config = format!(
            "global\n    maxconn {max_connections}\n    nbthread {threads}\n\n\
             defaults\n    mode tcp\n{splice}    \
             timeout connect 10s\n    timeout client 300s\n    timeout server 300s\n    maxconn {max_connections}\n",
        );
        for (index, (relay, upstream)) in relays.iter().zip(upstreams).enumerate() {
            let _ = write!(config, "\nlisten relay{index}\n    bind {relay}\n    server upstream{index} {upstream}\n");
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config)?;
        let log = dir.path().join("haproxy.log");
        let mut child = Command::new(binary)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        for relay in &relays {
            if let Err(error) = wait_listening(&mut child, *relay, Duration::from_secs(10), "haproxy") {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let alert = text.lines().rfind(|l| l.contains("ALERT")).unwrap_or("");
                return Err(format!("{error} {alert}").into());
            }
        }
        Ok(HaProxy { process: External { child, _dir: dir }, relays })
    }
}

/// Squid as a CONNECT proxy allowed to reach exactly `allowed`.
pub struct Squid {
    pub process: External,
    pub addr: SocketAddr,
}

impl Squid {
    /// Starts `squid -N -f cfg` (no daemon, one worker, no cache).
    pub fn start(binary: &Path, allowed: &[SocketAddr]) -> Result<Squid> {
        let dir = tempfile::tempdir()?;
        // Squid drops root for its own user: it must be able to write its log here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        }
        let ip = IpAddr::from([127, 0, 0, 5]);
        let addr = SocketAddr::new(ip, free_port(ip)?);
        let mut config = format!(
            "http_port {addr}\nworkers 1\ncache deny all\ncache_mem 0 MB\naccess_log none\n\
             cache_log {log}\npid_filename none\ncoredump_dir {dir}\nshutdown_lifetime 0 seconds\n\
             max_filedescriptors 16384\npinger_enable off\nclient_persistent_connections off\nserver_persistent_connections off\n\
             acl CONNECT method CONNECT\n",
            log = dir.path().join("cache.log").display(),
            dir = dir.path().display(),
        );
        for (index, target) in allowed.iter().enumerate() {
            let _ = write!(
                config,
                "acl target{index}_ip dst {ip}/32\nacl target{index}_port port {port}\n\
                 http_access allow CONNECT target{index}_ip target{index}_port\n",
                ip = target.ip(),
                port = target.port()
            );
        }
        config.push_str("http_access deny all\n");
        let path = dir.path().join("squid.conf");
        std::fs::write(&path, &config)?;
        let mut child = Command::new(binary)
            .arg("-N")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        if let Err(error) = wait_listening(&mut child, addr, Duration::from_secs(30), "squid") {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("cache.log")).unwrap_or_default();
            let fatal = log.lines().rfind(|l| l.contains("FATAL") || l.contains("ERROR")).unwrap_or("");
            return Err(format!("{error} {fatal}").into());
        }
        Ok(Squid { process: External { child, _dir: dir }, addr })
    }
}
