//! RFC 3339 timestamps in UTC, written and read: the form every log line of ember-proxy
//! starts with (`2026-11-30T15:00:00.123Z`) and the compare log's `time`. No time-zone
//! database and no dependency: the calendar arithmetic is Howard Hinnant's
//! `days_from_civil` and `civil_from_days` (proleptic Gregorian, exact for every date).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as `2026-11-30T15:00:00.123Z`: UTC, milliseconds. Times before 1970 are
/// written as 1970-01-01T00:00:00.000Z.
pub fn rfc3339(time: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339(&mut out, time);
    out
}

/// [`rfc3339`], appended to `out`. Written digit by digit: a compare-log line is
/// rendered per request, and `format!` with seven padded fields cost more than the rest
/// of the line.
pub fn push_rfc3339(out: &mut String, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    push_padded(out, year as u64, 4);
    out.push('-');
    push_padded(out, u64::from(month), 2);
    out.push('-');
    push_padded(out, u64::from(day), 2);
    out.push('T');
    push_padded(out, day_secs / 3600, 2);
    out.push(':');
    push_padded(out, day_secs / 60 % 60, 2);
    out.push(':');
    push_padded(out, day_secs % 60, 2);
    out.push('.');
    push_padded(out, u64::from(since.subsec_millis()), 3);
    out.push('Z');
}

/// `value` in decimal, zero-padded to at least `width` digits (`{value:0width$}`).
fn push_padded(out: &mut String, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let (mut at, mut rest) = (digits.len(), value);
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let start = at.min(digits.len() - width.min(digits.len()));
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Reads an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, an optional fraction (up to
/// nanoseconds), then `Z` or an offset `±HH:MM`; `t`/`z` in lower case and a space for
/// the `T` are accepted (RFC 3339 section 5.6 allows both). `None` for anything else, a
/// date that does not exist, or a time before 1970. A leap second (`:60`) is read as
/// `:59`.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !shape {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        let digits = text.get(from..to)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let rest = &text[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(f) => {
            let digits = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
            (&f[..digits], &f[digits..])
        }
        None => ("", rest),
    };
    if fraction.len() > 9 || (rest.starts_with('.') && fraction.is_empty()) {
        return None;
    }
    let offset_secs: i64 = match zone.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()) =>
        {
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32)
    };
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    // A day past the month's end comes back as another date.
    if civil_from_days(days) != (i64::from(year), month, day) {
        return None;
    }
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second.min(59))
            - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days from 1970-01-01 to the proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400); // [0, 399]
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 }); // month from March
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_back() {
        let at = |secs: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms);
        for (time, text) in [
            (at(0, 0), "1970-01-01T00:00:00.000Z"),
            (at(951_782_400, 0), "2000-02-29T00:00:00.000Z"),
            (at(1_796_050_800, 123), "2026-11-30T15:00:00.123Z"),
            (at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(time), text);
            assert_eq!(parse_rfc3339(text), Some(time));
        }
    }

    #[test]
    fn offsets_fractions_and_bad_dates() {
        let z = parse_rfc3339("2026-11-30T15:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-30T16:30:00+01:30"), Some(z));
        assert_eq!(parse_rfc3339("2026-11-30 10:00:00-05:00"), Some(z));
        assert_eq!(
            parse_rfc3339("2026-11-30t15:00:00.5z"),
            Some(z + Duration::from_millis(500))
        );
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T15:00:00",
            "2026-11-30T15:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2026-11-30T15:00:00+1:00",
            "not a time at all....",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert!(
            parse_rfc3339("2024-02-29T00:00:00Z").is_some(),
            "a leap day"
        );
    }

    #[test]
    fn written_as_format_would_write_it() {
        for secs in (0..400_000_000_000u64).step_by(7_919_993_777) {
            let time =
                UNIX_EPOCH + Duration::from_millis(secs * 7 % 1000) + Duration::from_secs(secs);
            let since = time.duration_since(UNIX_EPOCH).unwrap();
            let (days, day_secs) = (since.as_secs() / 86_400, since.as_secs() % 86_400);
            let (year, month, day) = civil_from_days(days as i64);
            let formatted = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                day_secs / 3600,
                day_secs / 60 % 60,
                day_secs % 60,
                since.subsec_millis()
            );
            assert_eq!(rfc3339(time), formatted);
        }
        let mut out = String::from("at ");
        push_rfc3339(
            &mut out,
            UNIX_EPOCH + Duration::from_millis(1_796_050_800_123),
        );
        assert_eq!(out, "at 2026-11-30T15:00:00.123Z");
    }

    #[test]
    fn the_calendar_round_trips() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
