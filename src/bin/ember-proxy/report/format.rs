//! How the report writes numbers, shares, latencies and untrusted text: the same way in
//! the text summary and on the page. Pure functions; nothing here reads the log.

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `part` of `whole` as a percentage a person reads at a glance: `40%`, `3.3%`, `0.05%`.
/// Never rounds a non-zero share to `0%` nor a partial one to `100%`.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 || part == 0 {
        return "0%".into();
    }
    if part >= whole {
        return "100%".into();
    }
    let share = part as f64 * 100.0 / whole as f64;
    let text = if share >= 1.0 {
        let text = format!("{share:.1}");
        if text == "100.0" { "99.9".into() } else { text }
    } else {
        // Two significant digits: 0.05, 0.012.
        let decimals = (1 - share.log10().floor() as i64).clamp(1, 20) as usize;
        format!("{share:.decimals$}")
    };
    format!("{}%", trim_zeros(&text))
}

/// A latency in milliseconds to three significant digits: `0.123`, `5.92`, `59.2`, `1,234`.
pub fn millis(ms: f64) -> String {
    if !ms.is_finite() || ms <= 0.0 {
        return "0".into();
    }
    if ms >= 999.5 {
        return count(ms.round() as u64);
    }
    let decimals = if ms >= 99.95 {
        0
    } else if ms >= 9.995 {
        1
    } else if ms >= 0.9995 {
        2
    } else {
        3
    };
    format!("{ms:.decimals$}")
}

/// `1 shadow error`, `2 shadow errors`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// `s` made safe inside HTML text and double- or single-quoted attributes (and SVG).
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` made safe for a terminal: control characters (an escape sequence in a log line
/// could repaint the screen) shown as `\u{1b}`.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// At most `max_chars` characters of `s`, with `…` where it was cut.
pub fn bounded(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s.to_owned(),
        Some((cut, _)) => {
            let keep = s[..cut]
                .char_indices()
                .nth(max_chars.saturating_sub(1))
                .map_or(cut, |(i, _)| i);
            format!("{}…", &s[..keep])
        }
    }
}

/// `text` padded with spaces to `width` characters (for aligned summary columns).
pub fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(len)))
}

fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn percentages_never_round_to_nothing_or_everything() {
        assert_eq!(percent(0, 10), "0%");
        assert_eq!(percent(0, 0), "0%");
        assert_eq!(percent(4, 10), "40%");
        assert_eq!(percent(10, 300), "3.3%");
        assert_eq!(percent(21, 1000), "2.1%");
        assert_eq!(percent(5, 10_000), "0.05%");
        assert_eq!(percent(1, 1_000_000), "0.0001%");
        assert_eq!(percent(9999, 10_000), "99.9%");
        assert_eq!(percent(10, 10), "100%");
    }

    #[test]
    fn latencies_keep_three_significant_digits() {
        assert_eq!(millis(0.1234), "0.123");
        assert_eq!(millis(5.918), "5.92");
        assert_eq!(millis(59.18), "59.2");
        assert_eq!(millis(591.8), "592");
        assert_eq!(millis(1234.4), "1,234");
        assert_eq!(millis(f64::NAN), "0");
    }

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            html("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn control_characters_are_shown_not_sent_to_the_terminal() {
        assert_eq!(printable("GET /a"), "GET /a");
        assert_eq!(printable("x\u{1b}[2Jy"), "x\\u{1b}[2Jy");
    }

    #[test]
    fn bounded_cuts_at_a_character_and_says_so() {
        assert_eq!(bounded("héllo", 10), "héllo");
        assert_eq!(bounded("héllo", 5), "héllo");
        assert_eq!(bounded("héllo wörld", 5), "héll…");
        assert_eq!(bounded("ééé", 1), "…");
    }
}
