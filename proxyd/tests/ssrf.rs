//! The SSRF corpus (`tests/fixtures/ssrf-corpus.tsv`, format in its header)
//! end to end: every row sent as a CONNECT to one daemon whose ACL lets
//! every name through, so the answer is the address stage's (or the
//! parser's). `egress-policy/tests/ssrf.rs` runs the same rows against the library.
//!
//! Network safety: the daemon only ever connects through the harness's
//! egress guard, which refuses every non-loopback address. `allow` rows
//! therefore end in 502 "refused by the egress guard", and the guard's record
//! proves the proxy would have connected to exactly that address. No denied
//! or rejected row may reach the guard at all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use egress_policy::authority;
use egress_policy::special_purpose::SPECIAL_PURPOSE;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[path = "../../tests/common/ssrf_corpus.rs"]
mod ssrf_corpus;

use ssrf_corpus::{Expected, Row, corpus};

use crate::harness::{Proxy, connect};
use testkit::dns::{Answer, TestDns};

/// The name stage allows everything: only the address stage decides.
const OPEN_ACL: &str = "\
version: v1
services: []
default:
  project: ssrf
  action: open
";

/// How many CONNECTs are in flight at once.
const CONCURRENCY: usize = 8;

/// The address a permitted or denied row is about: the literal's canonical
/// address, or the DNS answer.
fn address_of(row: &Row) -> Option<SocketAddr> {
    let parsed = authority::parse(&row.authority).ok()?;
    let ip = parsed.host.ip().or(row.resolves_to)?;
    Some(SocketAddr::new(ip, parsed.port))
}

/// Both spellings a mapped address may be shown or dialled as.
fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// What went wrong with one row, if anything.
async fn check(proxy: SocketAddr, row: Row, attempts: Arc<std::sync::Mutex<Vec<SocketAddr>>>) -> Option<String> {
    let reply = connect(proxy, &row.authority, "").await;
    let (status, body) = (reply.status, reply.body.clone());
    let fail =
        |what: String| Some(format!("line {}: CONNECT {:?}: {what}; got {status}: {body}", row.line, row.authority));
    match &row.expected {
        Expected::Reject if status != 400 => fail("expected 400".into()),
        Expected::Reject => None,
        Expected::Deny(code) => {
            let Some(addr) = address_of(&row) else { return fail("a deny row must parse".into()) };
            let shown = [addr.ip().to_string(), addr.ip().to_canonical().to_string()];
            if status != 403 || !shown.iter().any(|ip| body.contains(&format!("address {ip} denied by rule"))) {
                return fail(format!("expected 403 naming address {} (rule {code})", addr.ip()));
            }
            // The body shows the rule as text, not its code: it must name an entry with that code
            // (for an embedding, the embedded address's entry or the refused embedding's).
            let named = SPECIAL_PURPOSE.iter().filter(|e| e.code == code).any(|e| body.contains(&e.to_string()));
            if !named {
                return fail(format!("expected the rule to be a special-purpose entry with code {code}"));
            }
            None
        }
        Expected::Allow => {
            let Some(addr) = address_of(&row) else { return fail("an allow row must parse".into()) };
            if status != 502 || !body.contains("egress guard") {
                return fail(format!("expected 502 from the egress guard for {addr}"));
            }
            let tried = attempts.lock().unwrap().iter().any(|a| same_address(*a, addr));
            if !tried {
                return fail(format!("{addr} is not among the egress guard's attempts"));
            }
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_corpus_row_gets_its_expected_answer_end_to_end() {
    let rows = corpus();
    assert!(rows.len() >= 200, "the corpus has {} rows", rows.len());

    let dns = TestDns::start().await;
    let mut registered: HashMap<String, IpAddr> = HashMap::new();
    for row in &rows {
        let (Some(ip), Ok(parsed)) = (row.resolves_to, authority::parse(&row.authority)) else { continue };
        let name = parsed.host.as_str().to_owned();
        if let Some(earlier) = registered.insert(name.clone(), ip) {
            assert_eq!(earlier, ip, "line {}: {name} is given two different answers in the corpus", row.line);
        }
        dns.set(&name, Answer::Records(vec![ip]));
    }

    let proxy = Proxy::start(OPEN_ACL, dns.addr(), |_| {}).await;
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for row in rows.iter().cloned() {
        let limit = Arc::clone(&limit);
        let attempts = Arc::clone(&proxy.attempts);
        let addr = proxy.addr;
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            check(addr, row, attempts).await
        });
    }
    let mut failures: Vec<String> = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Some(failure) = result.expect("row task did not panic") {
            failures.push(failure);
        }
    }

    // Only allow rows may have reached the egress guard, and nothing else did.
    let allowed: Vec<SocketAddr> =
        rows.iter().filter(|r| r.expected == Expected::Allow).filter_map(address_of).collect();
    // Taken, not copied: the egress guard refused every one of these (none was
    // dialled), and the harness's drop check would otherwise report them.
    let attempts = std::mem::take(&mut *proxy.attempts.lock().unwrap());
    for attempt in &attempts {
        if !allowed.iter().any(|a| same_address(*a, *attempt)) {
            failures.push(format!("the proxy tried {attempt}, which no allow row names"));
        }
    }
    failures.sort_by_key(|f| {
        f.strip_prefix("line ").and_then(|s| s.split(':').next()).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0)
    });
    assert!(
        failures.is_empty(),
        "{} of {} corpus rows failed end to end:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
