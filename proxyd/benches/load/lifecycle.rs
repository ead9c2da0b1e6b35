//! The `lifecycle` part of the load benchmark (only when named:
//! `cargo bench -p proxyd --bench load -- lifecycle`): the three ways of
//! replacing a running proxyd, each under a steady load of short tunnels
//! from 8 client tasks plus 20 long tunnels echoing every 100 ms, measured
//! from the clients' side by `testkit::lifecycle` (the same flows
//! `proxyd/tests/restarts.rs` asserts):
//!
//! - (a) `einhorn`: this process plays Einhorn's master (sockets, ack,
//!   SIGUSR2 to the old worker once the new one acked);
//! - (b) `sigusr1`: proxyd upgrades itself in place;
//! - (c) `socket-restart`: this process holds the sockets as a systemd
//!   socket unit does across a stop (SIGTERM, `--shutdown-grace 1s`) and a
//!   start.
//!
//! For each round and flow it prints CONNECTs attempted, failed (refused,
//! reset), long tunnels broken, the longest pause between two successful
//! CONNECTs and the slowest CONNECT; then the goals: (a) and (b) no failed
//! CONNECT and no broken long tunnel, (c) no refused connection. It only
//! talks to loopback (an echo server on 127.0.5.1, allowed by `IP:PORT`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use testkit::lifecycle::{self, Report, Setup};
use testkit::upstream::Upstream;

/// Runs the part; `true` when every goal held.
pub fn main(full: bool) -> bool {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(full))
}

async fn run(full: bool) -> bool {
    let upstream = Upstream::echo(IpAddr::V4(Ipv4Addr::new(127, 0, 5, 1))).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let policy = super::compile(dir.path()).expect("bench policy");
    let binary = std::env::var_os("PROXYD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_proxyd").into());
    let (rounds, before, after) = if full {
        (3, Duration::from_secs(3), Duration::from_secs(5))
    } else {
        (1, Duration::from_millis(500), Duration::from_millis(500))
    };
    let setup = Setup {
        binary: binary.into(),
        args: vec![
            "--policy".into(),
            policy.display().to_string(),
            "--allow-address".into(),
            upstream.addr.to_string(),
            "--allow-missing-role".into(),
            "--log-format".into(),
            "json".into(),
        ],
        target: upstream.addr.to_string(),
        short_clients: 8,
        long_tunnels: 20,
        before,
        after,
    };
    println!(
        "lifecycle ({} mode): {rounds} round(s); {} short-tunnel clients + {} long tunnels (8 bytes / 100 ms); {:?} of load before and {:?} after each replacement",
        if full { "bench" } else { "smoke" },
        setup.short_clients,
        setup.long_tunnels,
        before,
        after
    );
    let mut reports: Vec<Report> = Vec::new();
    for round in 1..=rounds {
        for report in [
            lifecycle::einhorn(&setup).await,
            lifecycle::sigusr1(&setup).await,
            lifecycle::socket_restart(&setup, "1s").await,
        ] {
            println!("round {round}: {report}");
            if !report.failures.is_empty() {
                println!("          first failures: {:?}", report.failures);
            }
            reports.push(report);
        }
    }
    println!("\nsummary (worst over rounds):");
    let mut ok = true;
    for flow in ["einhorn", "sigusr1", "socket-restart"] {
        let of_flow: Vec<&Report> = reports.iter().filter(|r| r.flow == flow).collect();
        let attempted: u64 = of_flow.iter().map(|r| r.attempted).sum();
        let failed: u64 = of_flow.iter().map(|r| r.failed).sum();
        let refused: u64 = of_flow.iter().map(|r| r.refused).sum();
        let reset: u64 = of_flow.iter().map(|r| r.reset).sum();
        let broken: usize = of_flow.iter().map(|r| r.long_broken).sum();
        let pause = of_flow.iter().map(|r| r.longest_pause).max().unwrap_or_default();
        let met = match flow {
            "socket-restart" => refused == 0,
            _ => failed == 0 && broken == 0,
        };
        ok &= met;
        let goal = if flow == "socket-restart" { "0 refused" } else { "0 failed, 0 broken" };
        println!(
            "  {flow:<15} {attempted:>6} CONNECTs, {failed} failed ({refused} refused, {reset} reset), {broken} long tunnels broken, longest pause {:.1} ms   goal {goal}: {}",
            pause.as_secs_f64() * 1e3,
            if met { "OK" } else { "MISSED" }
        );
    }
    ok
}
