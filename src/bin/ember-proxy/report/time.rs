//! The log's timestamps: RFC 3339 (`2026-11-30T15:00:00.123Z`, or with an offset) read
//! into milliseconds since the epoch, and written back in UTC for people. Years outside
//! 1970–9999 are not believed.

use std::time::{Duration, UNIX_EPOCH};

use crate::logging::rfc3339;

/// Milliseconds since 1970-01-01T00:00:00Z, or `None` if `text` is not an RFC 3339 time.
pub fn parse(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| b.get(at) != Some(&c))
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let fraction = b[at..].iter().take_while(|d| d.is_ascii_digit()).count();
        if fraction == 0 {
            return None;
        }
        for i in 0..3 {
            millis = millis * 10 + if i < fraction { digits(at + i, 1)? } else { 0 };
        }
        at += fraction;
    }
    let offset_minutes = match &b[at..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset_minutes * 60;
    Some(seconds * 1000 + millis)
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

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12; // March is 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
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
