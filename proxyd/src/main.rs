//! The `proxyd` binary: parse flags, validate everything, bind, serve until
//! SIGTERM or SIGINT. Every invalid input exits 1 with one line on stderr
//! before anything listens. `--check-config`, `--completions` and
//! `--generate-man` do their one job and exit without listening.

use std::process::ExitCode;

use clap::Parser as _;
use proxyd::{Args, Config};

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
    proxyd::log::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("proxyd: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let exit = runtime.block_on(async {
        let shutdown = shutdown_signal();
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                proxyd::log::flush();
                eprintln!("proxyd: cannot listen on {}: {error}", config.listen);
                return ExitCode::from(1);
            }
        };
        match proxyd::run(listener, config, shutdown).await {
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

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed when
/// this is called, before anything listens, so a SIGTERM sent as soon as the
/// proxy reports it is listening (or READY=1) drains instead of killing it.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
