//! Where the listening sockets come from: bound from the flags, or inherited
//! from a process that holds them across restarts.
//!
//! * **Einhorn** (Smokescreen's contract): `EINHORN_MASTER_PID` is the
//!   parent's pid; `EINHORN_FD_COUNT` sockets are given as
//!   `EINHORN_FD_<n>`: n = 0 is the proxy port, n = 1 (optional) the admin
//!   endpoints. Once serving, [`Announce::ready`] sends Einhorn's
//!   `worker:ack` to `EINHORN_SOCK_PATH`.
//! * **systemd socket activation** (`sd_listen_fds(3)`): `LISTEN_PID` is our
//!   pid, `LISTEN_FDS` sockets start at fd 3, `LISTEN_FDNAMES` names them
//!   `proxy` and `admin`; a single socket with no name (or any name but
//!   `admin`) is the proxy port.
//! * **Upgrade in place** (SIGUSR1, see [`crate::upgrade`]): the previous
//!   proxyd is the parent and names the sockets and its readiness pipe in
//!   `PROXYD_UPGRADE_*` variables.
//! * Otherwise `--listen-ip`/`--listen-port` (and `--admin-listen`) are bound.
//!
//! With inherited sockets `--listen-ip`/`--listen-port` are ignored (one log
//! line says so); `--admin-listen` is bound only when no admin socket is
//! inherited. Every inherited descriptor is checked before use: not 0..=2,
//! open, a listening TCP (stream, IPv4/IPv6) socket; a malformed environment
//! is a start-up error naming the variable. Adopted sockets get
//! `FD_CLOEXEC`, so no other program proxyd might start inherits them.
//!
//! This module must never adopt a descriptor twice, one it did not validate,
//! or one the environment names for another process (the pid checks). It
//! holds the only `unsafe` code of proxyd: `adopt`, one call each to
//! `BorrowedFd::borrow_raw` and `OwnedFd::from_raw_fd`, for which there is no
//! safe alternative. It is called only from [`acquire`], which `main` runs
//! before anything else in the process opens a descriptor.

use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use rustix::net::{AddressFamily, SocketType, sockopt};

/// Our variables for an upgrade in place: the sockets (`proxy` fd, then the
/// optional `admin` fd, comma-separated) and the pipe the new process
/// reports readiness on, valid only when `PROXYD_UPGRADE_PARENT` is the
/// parent's pid.
pub const UPGRADE_FDS: &str = "PROXYD_UPGRADE_FDS";
pub const UPGRADE_READY_FD: &str = "PROXYD_UPGRADE_READY_FD";
pub const UPGRADE_PARENT: &str = "PROXYD_UPGRADE_PARENT";

/// The variables of systemd socket activation. They are not removed from
/// proxyd's own environment (`std::env::remove_var` is unsafe once threads
/// may read the environment); [`crate::upgrade`] removes them from a child's,
/// and `LISTEN_PID` names only this process anyway.
pub const SYSTEMD_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: RawFd = 3;

/// Who handed the sockets over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Bound from the flags by this process.
    Bound,
    /// An Einhorn master; SIGUSR2 retires this worker once a new one acked.
    Einhorn,
    /// A systemd socket unit (or `systemd-socket-activate`).
    Systemd,
    /// The previous proxyd, by SIGUSR1.
    Upgrade,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Bound => "flags",
            Source::Einhorn => "einhorn",
            Source::Systemd => "systemd",
            Source::Upgrade => "upgrade",
        })
    }
}

/// The sockets to serve and what to tell whoever gave them once serving.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: Option<TcpListener>,
    pub announce: Announce,
}

/// Whom to tell that this process serves, and how.
#[derive(Debug)]
pub struct Announce {
    source: Source,
    /// Einhorn: the master's command socket, for the ack.
    einhorn_socket: Option<PathBuf>,
    /// Upgrade: the write end of the previous process's readiness pipe.
    ready_pipe: Option<OwnedFd>,
}

impl Announce {
    fn to(source: Source) -> Announce {
        Announce { source, einhorn_socket: None, ready_pipe: None }
    }

    /// Who handed the sockets over.
    pub fn source(&self) -> Source {
        self.source
    }
}

/// Why the sockets could not be had. One line, printed before exiting 1.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("cannot listen on {addr} for the admin endpoints: {error}")]
    Admin { addr: SocketAddr, error: std::io::Error },
    #[error("{var}: {message}")]
    Environment { var: String, message: String },
}

fn env_error(var: impl Into<String>, message: impl Into<String>) -> ListenError {
    ListenError::Environment { var: var.into(), message: message.into() }
}

/// A variable's value: `Ok(None)` when unset, an error when not UTF-8.
fn var(name: &str) -> Result<Option<String>, ListenError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(env_error(name, "is not valid UTF-8")),
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ListenError> {
    value.trim().parse().map_err(|_| env_error(name, format!("{value:?} is not a number")))
}

/// The sockets to serve: inherited (upgrade, then systemd, then Einhorn,
/// each only when its pid check says the variables are meant for this
/// process) or bound from `listen` and `admin_listen`. Call once, before
/// anything else opens descriptors (see the module comment).
pub fn acquire(listen: SocketAddr, admin_listen: Option<SocketAddr>) -> Result<Listeners, ListenError> {
    let inherited = match inherited_upgrade()? {
        Some(found) => Some(found),
        None => match inherited_systemd()? {
            Some(found) => Some(found),
            None => inherited_einhorn()?,
        },
    };
    let Some(mut listeners) = inherited else {
        let proxy = TcpListener::bind(listen).map_err(|error| ListenError::Bind { addr: listen, error })?;
        let admin = bind_admin(admin_listen)?;
        return Ok(Listeners { proxy, admin, announce: Announce::to(Source::Bound) });
    };
    if listeners.admin.is_none() {
        listeners.admin = bind_admin(admin_listen)?;
    }
    Ok(listeners)
}

fn bind_admin(admin_listen: Option<SocketAddr>) -> Result<Option<TcpListener>, ListenError> {
    admin_listen.map(|addr| TcpListener::bind(addr).map_err(|error| ListenError::Admin { addr, error })).transpose()
}

fn parent_pid() -> Option<u32> {
    Some(std::os::unix::process::parent_id())
}

/// `PROXYD_UPGRADE_*`, when the parent is the proxyd that set them.
fn inherited_upgrade() -> Result<Option<Listeners>, ListenError> {
    let Some(parent) = var(UPGRADE_PARENT)? else { return Ok(None) };
    if parent_pid() != Some(number::<u32>(UPGRADE_PARENT, &parent)?) {
        // A process started by the new proxyd would see these too; not ours.
        return Ok(None);
    }
    let fds = var(UPGRADE_FDS)?.ok_or_else(|| env_error(UPGRADE_FDS, "is not set"))?;
    let numbers = fds.split(',').map(|n| number::<RawFd>(UPGRADE_FDS, n)).collect::<Result<Vec<_>, _>>()?;
    let ready = var(UPGRADE_READY_FD)?.ok_or_else(|| env_error(UPGRADE_READY_FD, "is not set"))?;
    let ready: RawFd = number(UPGRADE_READY_FD, &ready)?;
    let (proxy, admin) = match numbers.as_slice() {
        [proxy] => (*proxy, None),
        [proxy, admin] => (*proxy, Some(*admin)),
        _ => return Err(env_error(UPGRADE_FDS, format!("{fds:?}: expected PROXY_FD[,ADMIN_FD]"))),
    };
    distinct(UPGRADE_FDS, &[Some(proxy), admin, Some(ready)])?;
    let proxy = listening_socket(UPGRADE_FDS, proxy)?;
    let admin = admin.map(|fd| listening_socket(UPGRADE_FDS, fd)).transpose()?;
    let ready_pipe = adopt(ready).map_err(|e| env_error(UPGRADE_READY_FD, format!("fd {ready}: {e}")))?;
    set_cloexec(UPGRADE_READY_FD, &ready_pipe)?;
    let announce = Announce { ready_pipe: Some(ready_pipe), ..Announce::to(Source::Upgrade) };
    Ok(Some(Listeners { proxy, admin, announce }))
}

/// `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`, when `LISTEN_PID` is us.
fn inherited_systemd() -> Result<Option<Listeners>, ListenError> {
    let Some(pid) = var("LISTEN_PID")? else { return Ok(None) };
    if number::<u32>("LISTEN_PID", &pid)? != std::process::id() {
        // Meant for another process (sd_listen_fds ignores them too).
        return Ok(None);
    }
    let count = var("LISTEN_FDS")?.ok_or_else(|| env_error("LISTEN_FDS", "is not set but LISTEN_PID is"))?;
    let count: usize = number("LISTEN_FDS", &count)?;
    if count == 0 || count > 2 {
        return Err(env_error(
            "LISTEN_FDS",
            format!("{count} sockets: proxyd takes one (proxy) or two (proxy and admin)"),
        ));
    }
    let names: Vec<String> = match var("LISTEN_FDNAMES")? {
        Some(names) => names.split(':').map(str::to_owned).collect(),
        None => vec![String::new(); count],
    };
    if names.len() != count {
        return Err(env_error("LISTEN_FDNAMES", format!("{} names for LISTEN_FDS={count}", names.len())));
    }
    let mut proxy = None;
    let mut admin = None;
    for (index, name) in names.iter().enumerate() {
        let fd = SD_LISTEN_FDS_START + RawFd::try_from(index).unwrap_or(0);
        let slot = match name.as_str() {
            "proxy" => &mut proxy,
            "admin" => &mut admin,
            // An unnamed single socket (systemd names it after the unit) is the proxy port.
            _ if count == 1 => &mut proxy,
            other => {
                return Err(env_error(
                    "LISTEN_FDNAMES",
                    format!("{other:?}: name the sockets \"proxy\" and \"admin\""),
                ));
            }
        };
        if slot.replace(fd).is_some() {
            return Err(env_error("LISTEN_FDNAMES", format!("{name:?} is given twice")));
        }
    }
    let proxy = proxy.ok_or_else(|| env_error("LISTEN_FDNAMES", "no socket is named \"proxy\""))?;
    let proxy = listening_socket("LISTEN_FDS", proxy)?;
    let admin = admin.map(|fd| listening_socket("LISTEN_FDS", fd)).transpose()?;
    Ok(Some(Listeners { proxy, admin, announce: Announce::to(Source::Systemd) }))
}

/// `EINHORN_*`, when `EINHORN_MASTER_PID` is the parent (as go-einhorn's
/// `IsWorker`; a process started by a worker is not a worker).
fn inherited_einhorn() -> Result<Option<Listeners>, ListenError> {
    let Some(master) = var("EINHORN_MASTER_PID")? else { return Ok(None) };
    if parent_pid() != Some(number::<u32>("EINHORN_MASTER_PID", &master)?) {
        return Ok(None);
    }
    let count = var("EINHORN_FD_COUNT")?.ok_or_else(|| env_error("EINHORN_FD_COUNT", "is not set"))?;
    let count: usize = number("EINHORN_FD_COUNT", &count)?;
    if count == 0 || count > 2 {
        return Err(env_error(
            "EINHORN_FD_COUNT",
            format!("{count} sockets: proxyd takes one (EINHORN_FD_0, proxy) or two (EINHORN_FD_1, admin)"),
        ));
    }
    let fd = |n: usize| -> Result<RawFd, ListenError> {
        let name = format!("EINHORN_FD_{n}");
        let value =
            var(&name)?.ok_or_else(|| env_error(&name, format!("is not set but EINHORN_FD_COUNT is {count}")))?;
        number(&name, &value)
    };
    let proxy = fd(0)?;
    let admin = if count == 2 { Some(fd(1)?) } else { None };
    distinct("EINHORN_FD_1", &[Some(proxy), admin])?;
    let einhorn_socket = var("EINHORN_SOCK_PATH")?.filter(|p| !p.is_empty()).map(PathBuf::from);
    let proxy = listening_socket("EINHORN_FD_0", proxy)?;
    let admin = admin.map(|fd| listening_socket("EINHORN_FD_1", fd)).transpose()?;
    let announce = Announce { einhorn_socket, ..Announce::to(Source::Einhorn) };
    Ok(Some(Listeners { proxy, admin, announce }))
}

/// Two variables naming one descriptor would make two owners of it.
fn distinct(var: &str, fds: &[Option<RawFd>]) -> Result<(), ListenError> {
    let fds: Vec<RawFd> = fds.iter().flatten().copied().collect();
    for (index, fd) in fds.iter().enumerate() {
        if fds.iter().skip(index + 1).any(|other| other == fd) {
            return Err(env_error(var, format!("fd {fd} is given twice")));
        }
    }
    Ok(())
}

/// Adopts `fd` and checks it is a listening TCP socket.
fn listening_socket(var: &str, fd: RawFd) -> Result<TcpListener, ListenError> {
    let owned = adopt(fd).map_err(|e| env_error(var, format!("fd {fd}: {e}")))?;
    let problem = |what: String| env_error(var, format!("fd {fd}: {what}"));
    match sockopt::socket_type(&owned) {
        Ok(SocketType::STREAM) => {}
        Ok(other) => return Err(problem(format!("is not a stream socket ({other:?})"))),
        Err(rustix::io::Errno::NOTSOCK) => return Err(problem("is not a socket".into())),
        Err(error) => return Err(problem(format!("cannot read its type: {error}"))),
    }
    match sockopt::socket_domain(&owned) {
        Ok(AddressFamily::INET | AddressFamily::INET6) => {}
        Ok(other) => return Err(problem(format!("is not a TCP socket (address family {other:?})"))),
        Err(error) => return Err(problem(format!("cannot read its address family: {error}"))),
    }
    match sockopt::socket_acceptconn(&owned) {
        Ok(true) => {}
        Ok(false) => return Err(problem("is not listening".into())),
        Err(error) => return Err(problem(format!("cannot tell whether it listens: {error}"))),
    }
    set_cloexec(var, &owned)?;
    Ok(TcpListener::from(owned))
}

fn set_cloexec(var: &str, fd: &OwnedFd) -> Result<(), ListenError> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| env_error(var, format!("fd {}: cannot set FD_CLOEXEC: {e}", fd.as_raw_fd())))
}

/// Takes ownership of an inherited descriptor number.
///
/// This is the one place proxyd uses `unsafe`: a descriptor passed by
/// number through the environment can only become an owned handle this way.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> std::io::Result<OwnedFd> {
    if fd <= 2 {
        // stdin, stdout and stderr belong to the process's standard streams.
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "0, 1 and 2 are the standard streams"));
    }
    // SAFETY: fd > 2 and the borrow lives only for this F_GETFD call, which
    // touches no memory and fails with EBADF if the number is not open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed)?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and nothing else in
    // this process owns it: `acquire` runs before proxyd opens any
    // descriptor of its own, only for numbers the environment hands to this
    // process (pid checks), and `distinct` refused a number named twice.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The readiness line a process started by an upgrade writes to its pipe.
pub fn ready_line(pid: u32) -> String {
    format!("ready {pid}\n")
}

/// Einhorn's `worker:ack`, exactly as go-einhorn (what Smokescreen uses)
/// writes it: the YAML `command: worker:ack` / `pid: N` with `%` and
/// newlines percent-encoded, then a newline.
pub fn einhorn_ack_line(pid: u32) -> String {
    let yaml = format!("command: worker:ack\npid: {pid}\n");
    format!("{}\n", yaml.replace('%', "%25").replace('\n', "%0A"))
}

impl Announce {
    /// Tells whoever handed the sockets over that this process now serves
    /// them (policy loaded, workers accepting): Einhorn's ack, or the
    /// upgrade's readiness line. Failures are logged: the one waiting will
    /// then time out and keep the previous process serving.
    pub fn ready(&mut self) {
        if let Some(path) = self.einhorn_socket.take() {
            let sent = std::os::unix::net::UnixStream::connect(&path)
                .and_then(|mut socket| socket.write_all(einhorn_ack_line(std::process::id()).as_bytes()));
            match sent {
                Ok(()) => tracing::info!(socket = %path.display(), "acknowledged to the Einhorn master"),
                Err(error) => tracing::error!(socket = %path.display(), %error, "cannot ack to the Einhorn master"),
            }
        } else if self.source == Source::Einhorn {
            tracing::warn!("no EINHORN_SOCK_PATH: cannot ack to the Einhorn master");
        }
        if let Some(pipe) = self.ready_pipe.take() {
            let mut pipe = std::fs::File::from(pipe);
            match pipe.write_all(ready_line(std::process::id()).as_bytes()) {
                Ok(()) => tracing::info!("told the previous proxyd that this one serves"),
                Err(error) => tracing::error!(%error, "cannot tell the previous proxyd that this one serves"),
            }
        }
    }
}

impl Listeners {
    /// Logs where the sockets came from (after logging is set up).
    pub fn log_source(&self) {
        if self.announce.source != Source::Bound {
            tracing::info!(
                source = %self.announce.source,
                proxy_fd = self.proxy.as_fd().as_raw_fd(),
                admin_fd = self.admin.as_ref().map(|a| a.as_fd().as_raw_fd()),
                "listening sockets inherited; --listen-ip and --listen-port are ignored"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure
    use super::*;

    #[test]
    fn the_ack_line_is_go_einhorns() {
        // yaml.v2 of ClientAckRequest{Command, Pid}, then Replace % and \n.
        assert_eq!(einhorn_ack_line(4242), "command: worker:ack%0Apid: 4242%0A\n");
    }

    #[test]
    fn standard_streams_and_closed_numbers_are_not_adopted() {
        for fd in [0, 1, 2, -1] {
            assert!(adopt(fd).is_err(), "{fd}");
        }
        // A number far above anything open.
        assert!(adopt(1_000_000).is_err());
    }

    #[test]
    fn only_listening_tcp_sockets_are_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = OwnedFd::from(listener).into_raw_fd_for_test();
        let adopted = listening_socket("TEST", fd).unwrap();
        assert!(adopted.local_addr().is_ok());

        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = listening_socket("TEST", OwnedFd::from(connected).into_raw_fd_for_test()).unwrap_err();
        assert!(error.to_string().contains("not a stream socket"), "{error}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let error = listening_socket("TEST", OwnedFd::from(file).into_raw_fd_for_test()).unwrap_err();
        assert!(error.to_string().contains("is not a socket"), "{error}");

        let unbound = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        let error = listening_socket("TEST", unbound.into_raw_fd_for_test()).unwrap_err();
        assert!(error.to_string().contains("is not listening"), "{error}");

        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let error = listening_socket("TEST", OwnedFd::from(unix).into_raw_fd_for_test()).unwrap_err();
        assert!(error.to_string().contains("not a TCP socket"), "{error}");
    }

    #[test]
    fn a_number_given_twice_is_refused() {
        assert!(distinct("V", &[Some(5), None, Some(6)]).is_ok());
        assert!(distinct("V", &[Some(5), Some(5)]).unwrap_err().to_string().contains("fd 5 is given twice"));
    }

    trait IntoRawForTest {
        fn into_raw_fd_for_test(self) -> RawFd;
    }
    impl IntoRawForTest for OwnedFd {
        fn into_raw_fd_for_test(self) -> RawFd {
            std::os::fd::IntoRawFd::into_raw_fd(self)
        }
    }
}
