//! statsd export with Smokescreen's metric names: DogStatsD lines over UDP,
//! each name prefixed with the `smokescreen.` namespace, tags as `|#k:v,...`.
//!
//! The request path never waits for it: [`crate::metrics`] hands each event
//! to a bounded queue with `try_send` (a full queue drops the event and the
//! facade counts the drop); one background task formats the lines and sends
//! them, one datagram per line, from a non-blocking UDP socket. Tag values
//! were sanitised once when the policy was activated
//! ([`crate::events::RoleTags::new`]). This module never decides anything,
//! and depends only on the event vocabulary in [`crate::events`], never on
//! the facade or the code that emits.

use std::net::SocketAddr;
use std::time::Duration;

use egress_policy::decision::Verdict;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::events::ConnectErrorKind;
pub use crate::events::Event;

/// Events waiting to be sent; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
const NAMESPACE: &str = "smokescreen.";

/// The sending end handed to the facade.
#[derive(Debug)]
pub struct StatsdSink {
    queue: mpsc::Sender<Event>,
}

impl StatsdSink {
    /// Binds a UDP socket towards `target` and starts the sending task (needs a Tokio runtime).
    pub async fn start(target: SocketAddr) -> std::io::Result<StatsdSink> {
        let local: SocketAddr =
            if target.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(target).await?;
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(send_all(socket, events));
        Ok(StatsdSink { queue })
    }

    /// Queues `event`; false if the queue is full (the event is dropped).
    pub fn try_send(&self, event: Event) -> bool {
        self.queue.try_send(event).is_ok()
    }
    /// A sink whose queue nobody drains, for tests of the drop count.
    #[cfg(test)]
    pub(crate) fn undrained(capacity: usize) -> (StatsdSink, mpsc::Receiver<Event>) {
        let (queue, events) = mpsc::channel(capacity);
        (StatsdSink { queue }, events)
    }
}

async fn send_all(socket: UdpSocket, mut events: mpsc::Receiver<Event>) {
    let mut lines = Vec::with_capacity(4);
    while let Some(event) = events.recv().await {
        format_event(&event, &mut lines);
        for line in lines.drain(..) {
            // Nobody listening (ICMP port unreachable) or a full socket buffer: statsd is best effort.
            if let Err(error) = socket.send(line.as_bytes()).await {
                tracing::debug!(%error, "statsd send failed");
            }
        }
    }
}

/// The DogStatsD lines of one event.
pub fn format_event(event: &Event, lines: &mut Vec<String>) {
    let mut push = |name: &str, value: String, kind: &str, tags: &str| {
        let tags = if tags.is_empty() { String::new() } else { format!("|#{tags}") };
        lines.push(format!("{NAMESPACE}{name}:{value}|{kind}{tags}"));
    };
    let ms = |d: &Duration| format!("{}", d.as_secs_f64() * 1000.0);
    match event {
        Event::Acl { verdict, default_rule, tags } => {
            let name = match verdict {
                Verdict::Allow => "acl.allow",
                Verdict::AllowAndReport => "acl.report",
                Verdict::Deny => "acl.deny",
            };
            let tags = format!("role:{},def_rule:{default_rule},project:{}", tags.statsd_role, tags.statsd_project);
            push(name, "1".into(), "c", &tags);
        }
        Event::ResolverAttempt => push("resolver.attempts_total", "1".into(), "c", ""),
        Event::ResolverError => push("resolver.errors_total", "1".into(), "c", ""),
        Event::ResolverTime(d) => push("resolver.lookup_time", ms(d), "ms", ""),
        Event::ConnectAttempt { success } => push("cn.atpt.total", "1".into(), "c", &format!("success:{success}")),
        Event::ConnectError(kind) => {
            // Smokescreen's `type` values; what it calls `unknown` is our `other`.
            let kind = match kind {
                ConnectErrorKind::Other => "unknown",
                kind => kind.as_str(),
            };
            push("cn.atpt.connect.err", "1".into(), "c", &format!("type:{kind}"));
        }
        Event::ConnectTime(d) => push("cn.atpt.connect.time", ms(d), "ms", ""),
        Event::Close { tags, duration, bytes_in, bytes_out } => {
            let tags = format!("role:{},project:{}", tags.statsd_role, tags.statsd_project);
            push("cn.close", "1".into(), "c", &tags);
            push("cn.duration", format!("{}", duration.as_secs_f64()), "h", &tags);
            push("cn.bytes_in", bytes_in.to_string(), "h", &tags);
            push("cn.bytes_out", bytes_out.to_string(), "h", &tags);
        }
        Event::TunnelCap => push("tunnels.concurrency_limited", "1".into(), "c", ""),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use crate::events::RoleTags;
    use std::sync::Arc;

    #[test]
    fn lines_use_smokescreen_names_and_sanitised_tags() {
        let tags = Arc::new(RoleTags::new("a,b:c", "p|q"));
        let mut lines = Vec::new();
        format_event(&Event::Acl { verdict: Verdict::Allow, default_rule: false, tags: Arc::clone(&tags) }, &mut lines);
        format_event(&Event::ConnectError(ConnectErrorKind::Other), &mut lines);
        format_event(&Event::ResolverTime(Duration::from_micros(1500)), &mut lines);
        format_event(
            &Event::Close { tags, duration: Duration::from_millis(250), bytes_in: 10, bytes_out: 20 },
            &mut lines,
        );
        assert_eq!(
            lines,
            [
                "smokescreen.acl.allow:1|c|#role:a_b_c,def_rule:false,project:p_q",
                "smokescreen.cn.atpt.connect.err:1|c|#type:unknown",
                "smokescreen.resolver.lookup_time:1.5|ms",
                "smokescreen.cn.close:1|c|#role:a_b_c,project:p_q",
                "smokescreen.cn.duration:0.25|h|#role:a_b_c,project:p_q",
                "smokescreen.cn.bytes_in:10|h|#role:a_b_c,project:p_q",
                "smokescreen.cn.bytes_out:20|h|#role:a_b_c,project:p_q",
            ]
        );
    }
}
