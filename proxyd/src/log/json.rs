//! The JSON line format: `{"timestamp":…,"level":…,"message":…,<fields>}`,
//! one object per event, fields in the order the event names them, absent
//! values left out, numbers and booleans as JSON numbers and booleans.
//!
//! tracing-subscriber's own JSON formatter writes the same lines, but through
//! serde_json into an `io::Write` adaptor that checks every fragment is
//! UTF-8, with a `String` per timestamp and per `Display` value: about a
//! tenth of proxyd's CPU per tunnel in profiles of the setup benchmark (two
//! lines per tunnel). This one escapes straight into the line buffer the
//! subscriber already reuses.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter installed for `--log-format json`.
#[derive(Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(event.metadata().level().as_str())?;
        writer.write_char('"')?;
        let mut fields = Fields { out: &mut writer, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("}\n")
    }
}

/// Writes each recorded field as `,"name":value`.
struct Fields<'w, 'a> {
    out: &'w mut Writer<'a>,
    /// The first write error; later fields are skipped.
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_str(",\"")?;
                escape_into(self.out, field.name())?;
                self.out.write_str("\":")?;
                value(self.out)
            })();
        }
    }

    fn string(&mut self, field: &Field, value: &dyn fmt::Display) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value}")?;
            out.write_char('"')
        });
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| {
            out.write_char('"')?;
            escape_into(out, value)?;
            out.write_char('"')
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes null for them too.
        self.field(field, |out| if value.is_finite() { write!(out, "{value:?}") } else { out.write_str("null") });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string(field, &value);
    }

    /// `%value` fields arrive here as `Display`, the rest as `Debug`: both become strings.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, &format_args!("{value:?}"));
    }
}

/// A `fmt::Write` that JSON-escapes what passes through it.
struct Escaped<'w, 'a>(&'w mut Writer<'a>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s)
    }
}

/// Writes `s` as the inside of a JSON string: `"`, `\` and control
/// characters escaped, everything else (UTF-8 included) as is.
fn escape_into(out: &mut Writer<'_>, s: &str) -> fmt::Result {
    let mut plain = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.write_str(s.get(plain..i).unwrap_or_default())?;
        if escape.is_empty() {
            write!(out, "\\u{byte:04x}")?;
        } else {
            out.write_str(escape)?;
        }
        plain = i + 1;
    }
    out.write_str(s.get(plain..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The text our formatter writes for the events `emit` logs.
    fn text(emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).event_format(JsonLines).finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "one line per event: {text:?}");
        text
    }

    /// Every kind of value, escaping and absent fields, parsed back with serde_json.
    #[test]
    fn lines_are_json_objects_with_typed_fields_in_order() {
        let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let absent: Option<&str> = None;
        let raw = text(|| {
            tracing::info!(
                id = %"a1",
                text = "quote \" backslash \\ newline \n tab \t bell \u{7} é ☃",
                yes = true,
                count = 42u64,
                negative = -7i64,
                seconds = 0.25f64,
                whole = 30.0f64,
                nan = f64::NAN,
                addr = %addr,
                debug = ?("x", 1),
                absent,
                "CANONICAL-PROXY-DECISION"
            );
        });
        let got: Vec<serde_json::Value> = raw.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(got.len(), 1);
        let line = &got[0];
        let keys = [
            "timestamp",
            "level",
            "message",
            "id",
            "text",
            "yes",
            "count",
            "negative",
            "seconds",
            "whole",
            "nan",
            "addr",
            "debug",
        ];
        assert_eq!(line.as_object().unwrap().len(), keys.len(), "no other fields (none for the absent one): {raw}");
        let positions: Vec<usize> = keys.iter().map(|k| raw.find(&format!("\"{k}\":")).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "fields in the event's order: {raw}");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "CANONICAL-PROXY-DECISION");
        assert_eq!(line["id"], "a1");
        assert_eq!(line["text"], "quote \" backslash \\ newline \n tab \t bell \u{7} é ☃");
        assert_eq!(line["yes"], true);
        assert_eq!(line["count"], 42);
        assert_eq!(line["negative"], -7);
        assert_eq!(line["seconds"], 0.25);
        assert_eq!(line["whole"], 30.0);
        assert!(line["nan"].is_null());
        assert_eq!(line["addr"], "127.0.0.1:8080");
        assert_eq!(line["debug"], "(\"x\", 1)");
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(timestamp.len() == 27 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T', "{timestamp}");
    }

    /// The same bytes as tracing-subscriber's JSON formatter, but for the
    /// timestamp (which differs between the two calls).
    #[test]
    fn lines_match_tracing_subscribers_json_format() {
        let emit = || {
            tracing::warn!(listen = %"127.0.0.1:4750", tls = false, grace_secs = 30.0f64, n = 3u64, "proxyd listening");
        };
        let ours = text(emit);
        let captured = Captured::default();
        let sink = captured.clone();
        let theirs = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(theirs, emit);
        let theirs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let strip = |line: &str| line.split_once("\",\"level\"").map(|(_, rest)| rest.to_owned()).unwrap();
        assert_eq!(strip(ours.trim_end()), strip(theirs.trim_end()));
    }
}
