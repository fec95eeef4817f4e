//! The log's timestamps: RFC 3339 (`2026-11-30T15:00:00.123Z`, or with an offset) read
//! into milliseconds since the epoch, and written back in UTC for people. Years outside
//! 1970–9999 are not believed.

use std::time::{Duration, UNIX_EPOCH};

use ember::timestamp::{parse_rfc3339, rfc3339};

/// Milliseconds since 1970-01-01T00:00:00Z, or `None` if `text` is not an RFC 3339 time
/// (at or after 1970, before the year 10000).
pub fn parse(text: &str) -> Option<i64> {
    let since = parse_rfc3339(text)?.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// `2026-11-30 15:00:00` (UTC) for `ms` after the epoch.
pub fn utc(ms: i64) -> String {
    let text = rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    // rfc3339 writes `2026-11-30T15:00:00.000Z`.
    match (text.get(..10), text.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time}"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_time_reads_rfc3339_in_utc_and_with_offsets() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("2000-02-29T00:00:00.5Z"), Some(951_782_400_500));
        assert_eq!(parse("2026-11-30T12:00:00.123Z"), Some(1_796_040_000_123));
        assert_eq!(
            parse("2026-11-30T12:00:00.123456789Z"),
            Some(1_796_040_000_123)
        );
        assert_eq!(parse("2026-11-30T13:30:00+01:30"), Some(1_796_040_000_000));
        assert_eq!(parse("2026-11-30 12:00:00z"), Some(1_796_040_000_000));
    }

    #[test]
    fn report_time_refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2026-11-30",
            "2026-11-30T12:00:00",
            "2026-02-30T12:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T12:00:00.Z",
            "2026-11-30T12:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "2026-11-30T12:00:00Zjunk",
            "２026-11-30T12:00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn report_time_is_written_back_in_utc() {
        assert_eq!(utc(1_796_040_000_123), "2026-11-30 12:00:00");
    }
}
