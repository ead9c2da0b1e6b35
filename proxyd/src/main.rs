//! The `proxyd` binary: parse flags, validate everything, bind (or adopt
//! inherited sockets, see `listeners`), serve until SIGTERM, SIGINT or
//! SIGUSR2 (graceful stops) or until a SIGUSR1 upgrade hands the sockets to
//! a new process (`upgrade`). Every invalid input exits 1 with one line on stderr
//! before anything listens. `--check-config`, `--completions` and
//! `--generate-man` do their one job and exit without listening.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use proxyd::listeners::{Listeners, Source};
use proxyd::upgrade::{self, Program};
use proxyd::{Args, Config, Stop};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One clear line, like every other start-up refusal.
            let text = error.to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            eprintln!("proxyd: {}", first.trim_start_matches("error: "));
            return ExitCode::from(1);
        }
    };
    if let Some(shell) = args.completions {
        proxyd::manual::write_completions(shell, &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Some(dir) = &args.generate_man {
        return match proxyd::manual::write_man_page(dir) {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("proxyd: cannot write the man page into {}: {error}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    if args.check_config {
        return ExitCode::from(proxyd::check_config::run(&args));
    }
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("proxyd: {error}");
            return ExitCode::from(1);
        }
    };
    // First, before anything else opens a descriptor: inherited sockets are
    // adopted by number (see listeners.rs).
    let listeners = match proxyd::listeners::acquire(config.listen, config.admin_listen) {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!("proxyd: {error}");
            return ExitCode::from(1);
        }
    };
    let program = Program::of_this_process();
    proxyd::log::init(config.log_format);
    listeners.log_source();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("proxyd: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let exit = runtime.block_on(async {
        let Listeners { proxy, admin, mut announce } = listeners;
        let source = announce.source();
        let adopted = proxy.try_clone().and_then(|copy| {
            let admin_copy = admin.as_ref().map(std::net::TcpListener::try_clone).transpose()?;
            Ok((copy, admin_copy, tokio_listener(proxy)?, admin.map(tokio_listener).transpose()?))
        });
        let (proxy_copy, admin_copy, proxy, admin) = match adopted {
            Ok(adopted) => adopted,
            Err(error) => {
                proxyd::log::flush();
                eprintln!("proxyd: cannot use the listening sockets: {error}");
                return ExitCode::from(1);
            }
        };
        let upgrades =
            Upgrades { program, proxy: proxy_copy, admin: admin_copy, timeout: config.upgrade_timeout, source };
        let shutdown = stop_signals(source, upgrades);
        match proxyd::serve_until(proxy, admin, config, shutdown, move || announce.ready()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // Log lines written so far come first, as they happened first.
                proxyd::log::flush();
                eprintln!("proxyd: {error}");
                ExitCode::from(1)
            }
        }
    });
    // Log lines are written by a thread of their own: all of them before exiting.
    proxyd::log::flush();
    exit
}

/// A listener for the control runtime (the workers take their own copies).
fn tokio_listener(listener: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// What SIGUSR1 needs: the binary, copies of the listening sockets to hand
/// over (closed with this value once shutdown begins, so a stop with no
/// successor still closes the port), and the bound on the wait.
struct Upgrades {
    program: Program,
    proxy: std::net::TcpListener,
    admin: Option<std::net::TcpListener>,
    timeout: Duration,
    source: Source,
}

/// Resolves when serving should end: SIGTERM or SIGINT, SIGUSR2 (graceful,
/// as Smokescreen's), or a SIGUSR1 upgrade whose new process serves. The
/// handlers are installed when this is called, before anything serves, so
/// a signal sent as soon as the proxy reports it is listening (or
/// READY=1) is handled instead of killing it.
fn stop_signals(source: Source, upgrades: Upgrades) -> impl Future<Output = Stop> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::user_defined1()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int), Ok(mut usr2), Ok(usr1)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                    _ = usr2.recv() => {
                        tracing::info!(signal = "SIGUSR2", "shutting down gracefully");
                        // Under Einhorn, SIGUSR2 retires a worker whose successor serves.
                        if source == Source::Einhorn {
                            return Stop::Successor;
                        }
                    }
                    _ = upgrade_on_sigusr1(usr1, upgrades) => return Stop::Successor,
                }
                Stop::Alone
            }
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<Stop>().await
            }
        }
    }
}

/// Upgrades in place on SIGUSR1; returns once a new process serves. A
/// failed attempt is logged and this process keeps serving; a SIGUSR1
/// while an attempt runs is ignored (logged).
async fn upgrade_on_sigusr1(mut usr1: tokio::signal::unix::Signal, upgrades: Upgrades) {
    loop {
        if usr1.recv().await.is_none() {
            return std::future::pending().await;
        }
        if upgrades.source == Source::Einhorn {
            tracing::warn!(signal = "SIGUSR1", "ignored under Einhorn: upgrade with Einhorn's own `upgrade` command");
            continue;
        }
        tracing::info!(signal = "SIGUSR1", "upgrading in place");
        let attempt = upgrade::hand_over(&upgrades.program, &upgrades.proxy, upgrades.admin.as_ref(), upgrades.timeout);
        tokio::pin!(attempt);
        let outcome = loop {
            tokio::select! {
                outcome = &mut attempt => break outcome,
                _ = usr1.recv() => tracing::warn!(signal = "SIGUSR1", "ignored: an upgrade is already in progress"),
            }
        };
        match outcome {
            Ok(pid) => {
                proxyd::systemd::main_pid(pid);
                tracing::info!(pid, "upgrade: the new process serves; this one drains");
                return;
            }
            Err(error) => tracing::error!(%error, "upgrade failed; this process keeps serving"),
        }
    }
}
