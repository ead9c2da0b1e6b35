//! `proxyd`, the CONNECT-only data plane. Not built yet: see issue 3.
//! Until then this binary only says so, so that nobody mistakes it for a working proxy.

fn main() -> std::process::ExitCode {
    eprintln!("proxyd: not implemented yet; use `policyc` to check and compile policies");
    std::process::ExitCode::from(2)
}
