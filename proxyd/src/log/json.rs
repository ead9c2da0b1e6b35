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
//!
//! The two lines every tunnel writes (decision and close) skip the event
//! machinery altogether: [`Object`] writes the same bytes field by field,
//! with the same value encoders the event formatter uses.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::timefmt;

/// The event formatter installed for `--log-format json`.
#[derive(Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        start(&mut writer, event.metadata().level().as_str())?;
        let mut fields = Fields { out: &mut writer, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("}\n")
    }
}

/// `{"timestamp":"…","level":"…"`: what every line starts with. The
/// timestamp is tracing-subscriber's (RFC 3339, UTC, microseconds).
fn start<W: fmt::Write + ?Sized>(out: &mut W, level: &str) -> fmt::Result {
    out.write_str("{\"timestamp\":\"")?;
    out.write_str(timefmt::Rfc3339Micros::new(std::time::SystemTime::now()).as_str())?;
    out.write_str("\",\"level\":\"")?;
    out.write_str(level)?;
    out.write_char('"')
}

/// `,"name":`, before each field's value.
fn key<W: fmt::Write + ?Sized>(out: &mut W, name: &str) -> fmt::Result {
    out.write_str(",\"")?;
    escape_into(out, name)?;
    out.write_str("\":")
}

/// A string value, quoted and escaped.
fn str_value<W: fmt::Write + ?Sized>(out: &mut W, value: &str) -> fmt::Result {
    out.write_char('"')?;
    escape_into(out, value)?;
    out.write_char('"')
}

/// A `Display` value as a string, escaped as it is formatted.
fn display_value<W: fmt::Write + ?Sized>(out: &mut W, value: &dyn fmt::Display) -> fmt::Result {
    out.write_char('"')?;
    write!(Escaped(out), "{value}")?;
    out.write_char('"')
}

/// An integer, as `Display` writes it.
fn integer_value<W: fmt::Write + ?Sized>(out: &mut W, value: impl itoa::Integer) -> fmt::Result {
    out.write_str(itoa::Buffer::new().format(value))
}

/// An IPv4 address (and port) as `Display` writes it, quoted, without
/// `core::fmt`: nearly every address a tunnel logs is one. IPv6 addresses
/// go through [`display_value`].
fn ipv4_value<W: fmt::Write + ?Sized>(out: &mut W, ip: Ipv4Addr, port: Option<u16>) -> fmt::Result {
    out.write_char('"')?;
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.write_char('.')?;
        }
        out.write_str(digits.format(octet))?;
    }
    if let Some(port) = port {
        out.write_char(':')?;
        out.write_str(digits.format(port))?;
    }
    out.write_char('"')
}

/// A float as `{:?}` prints it; JSON has no NaN or infinity, so those are
/// `null` (serde_json writes null for them too).
fn f64_value<W: fmt::Write + ?Sized>(out: &mut W, value: f64) -> fmt::Result {
    if value.is_finite() { write!(out, "{value:?}") } else { out.write_str("null") }
}

/// One JSON line built field by field, the same bytes [`JsonLines`] writes
/// for an event with the same message and fields (the two lines every
/// tunnel writes use it). Fields left `None` are left out, as an event's
/// absent values are; the first write error is kept and ends the line.
pub struct Object<'w, W: fmt::Write + ?Sized> {
    out: &'w mut W,
    result: fmt::Result,
}

impl<'w, W: fmt::Write + ?Sized> Object<'w, W> {
    /// An `INFO` line with this message.
    pub fn info(out: &'w mut W, message: &str) -> Self {
        let result = start(out, "INFO");
        let mut object = Object { out, result };
        object.field("message", |out| str_value(out, message));
        object
    }

    fn field(&mut self, name: &str, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = key(self.out, name).and_then(|()| value(self.out));
        }
    }

    pub fn str(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.field(name, |out| str_value(out, value));
        }
        self
    }

    /// An address, as `%ip` logs it.
    pub fn ip(&mut self, name: &str, value: Option<IpAddr>) -> &mut Self {
        if let Some(ip) = value {
            self.field(name, |out| match ip {
                IpAddr::V4(v4) => ipv4_value(out, v4, None),
                IpAddr::V6(v6) => display_value(out, &v6),
            });
        }
        self
    }

    /// An address and port, as `%addr` logs it.
    pub fn socket(&mut self, name: &str, value: Option<SocketAddr>) -> &mut Self {
        if let Some(addr) = value {
            self.field(name, |out| match addr {
                SocketAddr::V4(v4) => ipv4_value(out, *v4.ip(), Some(v4.port())),
                // Scope ids and flow info: as `Display` writes them.
                SocketAddr::V6(v6) => display_value(out, &v6),
            });
        }
        self
    }

    pub fn u64(&mut self, name: &str, value: Option<u64>) -> &mut Self {
        if let Some(value) = value {
            self.field(name, |out| integer_value(out, value));
        }
        self
    }

    pub fn bool(&mut self, name: &str, value: Option<bool>) -> &mut Self {
        if let Some(value) = value {
            self.field(name, |out| out.write_str(if value { "true" } else { "false" }));
        }
        self
    }

    pub fn f64(&mut self, name: &str, value: f64) -> &mut Self {
        self.field(name, |out| f64_value(out, value));
        self
    }

    /// Closes the object and the line.
    pub fn end(self) -> fmt::Result {
        self.result?;
        self.out.write_str("}\n")
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
            self.result = key(self.out, field.name()).and_then(|()| value(self.out));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| str_value(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| integer_value(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| integer_value(out, value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.field(field, |out| integer_value(out, value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.field(field, |out| integer_value(out, value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |out| f64_value(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |out| display_value(out, &value));
    }

    /// `%value` fields arrive here as `Display`, the rest as `Debug`: both become strings.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| display_value(out, &format_args!("{value:?}")));
    }
}

/// A `fmt::Write` that JSON-escapes what passes through it.
struct Escaped<'w, W: ?Sized>(&'w mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s)
    }
}

/// What JSON cannot hold raw inside a string.
const fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether any byte [`needs_escape`], eight at a time: a word has a byte
/// below 0x20 when `(w - 0x2020…) & !w & 0x8080…` is not zero, and a byte
/// equal to `c` when the same holds for `w ^ cccc…` against `0x0101…`
/// (exact for "any", which is all this asks).
fn any_needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGH;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        if below(word, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&byte| needs_escape(byte))
}

/// Writes `s` as the inside of a JSON string: `"`, `\` and control
/// characters escaped, everything else (UTF-8 included) as is.
fn escape_into<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    // Nearly every value needs no escape: a pass over eight bytes at a
    // time finds that out, and one write follows.
    if !any_needs_escape(s.as_bytes()) {
        return out.write_str(s);
    }
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
pub(super) mod tests {
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
    pub(in crate::log) fn text(emit: impl FnOnce()) -> String {
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
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
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

    /// The eight-at-a-time check against the byte-by-byte one, for every
    /// byte value at every position of strings of every length up to 24.
    #[test]
    fn escape_check_finds_every_byte_that_needs_one() {
        for len in 1..=24 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(any_needs_escape(&bytes), needs_escape(byte), "{byte:#x} at {at} of {len}");
                }
            }
        }
        assert!(!any_needs_escape(b""));
        assert!(!any_needs_escape("h\u{e9}llo \u{2603} !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~\u{7f}".as_bytes()));
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
