//! Wall-clock times as text: RFC 3339 in UTC, to the second (what `/policy`
//! and the console show) and with nanoseconds as Go's `RFC3339Nano` writes
//! them (Smokescreen's stats `created`), and with microseconds (every JSON
//! log line's timestamp). Pure functions; no clock is read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-21T13:05:09Z` (UTC, seconds).
pub fn rfc3339(time: SystemTime) -> String {
    let Civil { year, month, day, hour, minute, second } = Civil::of(since_epoch(time));
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Time since 1970; a time before it (a host clock that is badly wrong)
/// counts as 1970-01-01.
fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// A UTC calendar date and time of day, to the second.
struct Civil {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl Civil {
    fn of(since_epoch: Duration) -> Civil {
        let secs = since_epoch.as_secs();
        let (days, rest) = (secs / 86_400, secs % 86_400);
        let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
        // Howard Hinnant's days-to-civil, for days since 1970-01-01 (non-negative here).
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Civil { year, month, day, hour, minute, second }
    }
}

/// `2026-11-21T13:05:09.352173Z`: UTC with microseconds (the fraction cut,
/// not rounded), as tracing-subscriber stamps its lines, written without
/// `core::fmt` since every log line starts with one. Years past 9999 are
/// written as 9999.
#[derive(Debug)]
pub struct Rfc3339Micros([u8; 27]);

impl Rfc3339Micros {
    pub fn new(time: SystemTime) -> Rfc3339Micros {
        let since = since_epoch(time);
        let Civil { year, month, day, hour, minute, second } = Civil::of(since);
        let micros = since.subsec_micros();
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let fields: [(std::ops::Range<usize>, u64); 7] = [
            (0..4, year.min(9999)),
            (5..7, month),
            (8..10, day),
            (11..13, hour),
            (14..16, minute),
            (17..19, second),
            (20..26, u64::from(micros)),
        ];
        for (range, mut value) in fields {
            for digit in text.get_mut(range).unwrap_or_default().iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Rfc3339Micros(text)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Go's `time.RFC3339Nano` in UTC (`2026-11-21T10:16:57.35217331Z`: trailing
/// zeros of the fraction dropped), as Smokescreen writes `created`.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let since = since_epoch(time);
    let seconds = rfc3339(UNIX_EPOCH + Duration::from_secs(since.as_secs()));
    let nanos = since.subsec_nanos();
    if nanos == 0 {
        return seconds;
    }
    let fraction = format!("{nanos:09}");
    let fraction = fraction.trim_end_matches('0');
    match seconds.strip_suffix('Z') {
        Some(stem) => format!("{stem}.{fraction}Z"),
        None => seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_795_267_509), "2026-11-21T13:25:09Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    /// Checked against what tracing-subscriber's `SystemTime` timer writes
    /// (`DateTime`'s `{:04}-{:02}-…T…{:02}.{:06}Z`, microseconds cut).
    #[test]
    fn log_timestamps_are_rfc3339_with_microseconds() {
        let at = |s: u64, n: u32| Rfc3339Micros::new(UNIX_EPOCH + Duration::new(s, n)).as_str().to_owned();
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_709_251_199, 999_999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(1_795_267_509, 352_173_310), "2026-11-21T13:25:09.352173Z");
        assert_eq!(at(4_102_444_800, 1_000), "2100-01-01T00:00:00.000001Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        assert_eq!(Rfc3339Micros::new(UNIX_EPOCH - Duration::from_secs(5)).as_str(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn created_is_rfc3339_nano() {
        let at = |s: u64, n: u32| rfc3339_nano(UNIX_EPOCH + Duration::new(s, n));
        assert_eq!(at(1_795_267_509, 0), "2026-11-21T13:25:09Z");
        assert_eq!(at(1_795_267_509, 352_173_310), "2026-11-21T13:25:09.35217331Z");
        assert_eq!(at(1_795_267_509, 5), "2026-11-21T13:25:09.000000005Z");
    }
}
