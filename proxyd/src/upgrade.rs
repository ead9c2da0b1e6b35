//! Upgrade in place without a supervisor (SIGUSR1), as nginx's binary
//! upgrade and HAProxy's seamless reload: start the binary proxyd was
//! started from, with the same arguments and environment, hand it the
//! listening sockets (proxy and admin) and a readiness pipe, and wait for
//! it to report that it serves. Only then does the caller drain this
//! process (as for SIGUSR2). The kernel keeps one accept queue per socket,
//! shared by both processes, so no connection is refused during the switch.
//!
//! Which binary: the path in `argv[0]` made absolute when proxyd started
//! (not `/proc/self/exe`, which names the *old* file once a package manager
//! replaced it), or, for a bare name, the same `PATH` lookup the shell did.
//! So installing a new binary at the same path and sending SIGUSR1 runs the
//! new one.
//!
//! If the new process cannot be started, exits, or does not report ready
//! within `--upgrade-timeout`, it is killed and this one keeps serving: an
//! upgrade never leaves the port unserved. This module never closes or
//! stops accepting on the sockets it hands over; the caller drains.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use crate::listeners::{SYSTEMD_VARS, UPGRADE_FDS, UPGRADE_PARENT, UPGRADE_READY_FD, ready_line};

/// What to run for an upgrade: captured at start, before anything could
/// change the working directory.
#[derive(Debug, Clone)]
pub struct Program {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Program {
    /// `argv[0]` made absolute if it is a path (a bare name is looked up
    /// in `PATH` again at upgrade time, as the shell did), and the rest of
    /// the command line as given.
    pub fn of_this_process() -> Program {
        let mut argv = std::env::args_os();
        let first = argv.next();
        let program = match first {
            Some(first) if first.as_encoded_bytes().contains(&b'/') => {
                std::path::absolute(&first).unwrap_or_else(|_| PathBuf::from(first))
            }
            Some(first) if !first.is_empty() => PathBuf::from(first),
            // No argv[0]: the running binary is the best guess.
            _ => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("proxyd")),
        };
        Program { program, args: argv.collect() }
    }
}

/// Why an upgrade did not happen. This process keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot prepare the hand-over: {0}")]
    Prepare(std::io::Error),
    #[error("cannot start {program}: {error}")]
    Spawn { program: String, error: std::io::Error },
    #[error("the new process (pid {pid}) ended before it was ready ({status})")]
    Exited { pid: u32, status: String },
    #[error("the new process (pid {pid}) was not ready within {after:?}; it was killed")]
    Timeout { pid: u32, after: Duration },
    #[error("the new process (pid {pid}) reported {line:?} instead of ready; it was killed")]
    Garbled { pid: u32, line: String },
}

/// Starts `program` with the sockets and waits at most `timeout` for it to
/// serve. `Ok(pid)`: the new process serves the same sockets now.
pub async fn hand_over(
    program: &Program,
    proxy: &impl AsFd,
    admin: Option<&impl AsFd>,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    let (read, write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| UpgradeError::Prepare(e.into()))?;
    let mut child = KillOnDrop(Some(spawn(program, proxy, admin, &write)?));
    // Only the child may hold the write end now: its exit then ends our read.
    drop(write);
    let pid = child.0.as_ref().map_or(0, Child::id);
    tracing::info!(pid, program = %program.program.display(), "upgrade: new process started; waiting until it serves");
    let outcome = tokio::time::timeout(timeout, read_ready(read)).await;
    let failure = match outcome {
        Ok(Ok(line)) if line == ready_line(pid) => {
            // It serves: it lives on after this process.
            child.0 = None;
            return Ok(pid);
        }
        Ok(Ok(line)) if line.is_empty() => None,
        Ok(Ok(line)) => Some(UpgradeError::Garbled { pid, line }),
        Ok(Err(error)) => Some(UpgradeError::Prepare(error)),
        Err(_) => Some(UpgradeError::Timeout { pid, after: timeout }),
    };
    let status = match child.0.take() {
        Some(mut child) => tokio::task::spawn_blocking(move || end(&mut child)).await.unwrap_or_else(|e| e.to_string()),
        None => String::new(),
    };
    Err(failure.unwrap_or(UpgradeError::Exited { pid, status }))
}

/// The new process until it reports ready: if the attempt is abandoned
/// (SIGTERM during an upgrade drops it), the half-started process must not
/// live on serving the sockets.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            // Reaped off the runtime's thread: the kill makes this quick.
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Kills (if still running) and reaps the child; its exit status, as text.
fn end(child: &mut Child) -> String {
    let _ = child.kill();
    match child.wait() {
        Ok(status) => status.to_string(),
        Err(error) => format!("cannot wait for it: {error}"),
    }
}

fn spawn(
    program: &Program,
    proxy: &impl AsFd,
    admin: Option<&impl AsFd>,
    ready: &OwnedFd,
) -> Result<Child, UpgradeError> {
    // Copies without FD_CLOEXEC (dup never sets it) live only across the
    // spawn; the originals keep theirs, so nothing else ever inherits them.
    let prepare = |e: rustix::io::Errno| UpgradeError::Prepare(e.into());
    let proxy = rustix::io::dup(proxy).map_err(prepare)?;
    let admin = admin.map(rustix::io::dup).transpose().map_err(prepare)?;
    let ready = rustix::io::dup(ready).map_err(prepare)?;
    let fds = match &admin {
        Some(admin) => format!("{},{}", proxy.as_raw_fd(), admin.as_raw_fd()),
        None => proxy.as_raw_fd().to_string(),
    };
    let mut command = Command::new(&program.program);
    command
        .args(&program.args)
        .env(UPGRADE_PARENT, std::process::id().to_string())
        .env(UPGRADE_FDS, fds)
        .env(UPGRADE_READY_FD, ready.as_raw_fd().to_string())
        // The watchdog is the new main process's (systemd follows MAINPID).
        .env_remove("WATCHDOG_PID");
    for var in SYSTEMD_VARS {
        // As sd_listen_fds(3) unsets them: the sockets come through ours.
        command.env_remove(var);
    }
    command.spawn().map_err(|error| UpgradeError::Spawn { program: program.program.display().to_string(), error })
}

/// The first line on the pipe (at most 64 bytes); empty if the writer closed it first.
async fn read_ready(read: OwnedFd) -> std::io::Result<String> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        if pipe.read(&mut byte).await? == 0 {
            break;
        }
        line.extend_from_slice(&byte);
        if byte == [b'\n'] {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure
    use super::*;

    fn listener() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[tokio::test]
    async fn a_program_that_exits_is_reported_and_reaped() {
        let program = Program { program: "/bin/sh".into(), args: vec!["-c".into(), "exit 3".into()] };
        let error =
            hand_over(&program, &listener(), None::<&std::net::TcpListener>, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&error, UpgradeError::Exited { status, .. } if status.contains('3')), "{error}");
    }

    #[tokio::test]
    async fn a_program_that_never_reports_is_killed_at_the_timeout() {
        let program = Program { program: "/bin/sh".into(), args: vec!["-c".into(), "sleep 30".into()] };
        let started = std::time::Instant::now();
        let error = hand_over(&program, &listener(), None::<&std::net::TcpListener>, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(error, UpgradeError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_child_gets_the_sockets_and_reports_on_the_pipe() {
        // A shell stands in for the new proxyd: it checks the variables and
        // the descriptors, then writes the readiness line to the pipe.
        let script = r#"[ "$PROXYD_UPGRADE_PARENT" = "$PPID" ] || exit 10
            p=${PROXYD_UPGRADE_FDS%,*}; a=${PROXYD_UPGRADE_FDS#*,}
            [ -e /proc/self/fd/$p ] && [ -e /proc/self/fd/$a ] || exit 11
            [ -z "$LISTEN_FDS" ] || exit 12
            printf 'ready %d\n' $$ >&$PROXYD_UPGRADE_READY_FD"#;
        let program = Program { program: "/bin/bash".into(), args: vec!["-c".into(), script.into()] };
        let admin = listener();
        let pid = hand_over(&program, &listener(), Some(&admin), Duration::from_secs(5)).await.unwrap();
        assert!(pid > 0);
    }

    #[test]
    fn argv0_paths_are_made_absolute() {
        let program = Program::of_this_process();
        assert!(program.program.is_absolute(), "{}", program.program.display());
    }
}
