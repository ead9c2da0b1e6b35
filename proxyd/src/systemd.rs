//! systemd service notifications (the `sd_notify(3)` protocol) for
//! `Type=notify` and `Type=notify-reload` units: `READY=1` once the policy is
//! loaded and the listener accepts, `RELOADING=1` (with `MONOTONIC_USEC`, as
//! `Type=notify-reload` requires) and `READY=1` around SIGHUP reloads,
//! `STOPPING=1` when shutdown starts, `MAINPID=` when an upgrade in place
//! (SIGUSR1) hands over to a new process, and `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` when the unit sets `WatchdogSec=`.
//!
//! Without `NOTIFY_SOCKET` every function here does nothing. A notification
//! that cannot be sent is logged and otherwise ignored: systemd being
//! unreachable must never stop the proxy. This module never blocks on the
//! socket (datagrams to a full queue fail instead) and never reads anything
//! from it.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where systemd listens for notifications.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The socket address in `NOTIFY_SOCKET`: a path, or `@name` for a socket in
/// the abstract namespace (which has no file; the `@` stands for a NUL byte).
fn connect(target: &OsString) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let bytes = target.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.connect_addr(&address)?;
        }
        None if bytes.first() == Some(&b'/') => socket.connect(target)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract socket (@name)",
            ));
        }
    }
    Ok(socket)
}

/// Sends one datagram of `KEY=VALUE` lines; `Ok(false)` without `NOTIFY_SOCKET`.
fn send(message: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET).filter(|t| !t.is_empty()) else {
        return Ok(false);
    };
    let socket = connect(&target)?;
    let sent = socket.send(message.as_bytes())?;
    if sent != message.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "the notification was truncated"));
    }
    Ok(true)
}

fn notify(message: &str, what: &'static str) {
    match send(message) {
        Ok(true) => tracing::debug!(notification = what, "told systemd"),
        Ok(false) => {}
        Err(error) => tracing::warn!(notification = what, %error, "cannot notify systemd"),
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` against.
fn monotonic_usec() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let seconds = u128::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u128::try_from(now.tv_nsec).unwrap_or(0);
    seconds * 1_000_000 + nanos / 1_000
}

/// The policy is loaded and the listener accepts (also ends a reload).
pub fn ready() {
    notify("READY=1\nSTATUS=serving\n", "READY");
}

/// A reload requested by SIGHUP starts now; [`reload_done`] ends it.
pub fn reloading() {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the policy\n", monotonic_usec()), "RELOADING");
}

/// The reload [`reloading`] announced is over, whatever its outcome: a
/// refused policy leaves the previous one serving, so the service is ready.
pub fn reload_done() {
    ready();
}

/// Shutdown has begun: no new connections, open tunnels drain.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining\n", "STOPPING");
}

/// An upgrade in place handed the sockets to `pid`, which serves now:
/// systemd follows it as the service's main process (`Type=notify`). This
/// process then drains without `STOPPING=1`, which would stop the service.
pub fn main_pid(pid: u32) {
    notify(&format!("MAINPID={pid}\nSTATUS=serving (upgraded in place)\n"), "MAINPID");
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as
/// `sd_watchdog_enabled(3)` advises, when the watchdog is meant for this
/// process (`WATCHDOG_PID` unset or ours). `None`: no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os(NOTIFY_SOCKET)?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Sends `WATCHDOG=1` every `interval` until dropped (the task is aborted
/// when the server returns). It runs on the runtime's own timer, so a
/// runtime that stops making progress stops the pings and systemd restarts
/// the service, which is the point of the watchdog.
pub async fn keep_watchdog_fed(interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        notify("WATCHDOG=1\n", "WATCHDOG");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn paths_and_abstract_names_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        connect(&path.clone().into_os_string()).unwrap().send(b"READY=1\n").unwrap();
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("proxyd-test-{}", std::process::id());
        let abstract_address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&abstract_address).unwrap();
        connect(&OsString::from(format!("@{name}"))).unwrap().send(b"STOPPING=1\n").unwrap();
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1\n");

        assert!(connect(&OsString::from("relative/path")).is_err());
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let first = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() >= first + 1_000);
    }
}
