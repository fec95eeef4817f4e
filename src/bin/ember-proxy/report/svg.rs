//! The page's two charts as inline SVG, drawn from the tally alone (no script): latency
//! as one CDF curve per side on a log axis in milliseconds, and shadow errors per time
//! bar. Every name in them comes from the log and is escaped.

use std::fmt::Write;

use super::format::{count, html, millis, plural};
use super::latency::Histogram;
use super::time;
use super::timeline::{Bars, width_label};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 46.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

/// One curve of the latency chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub latency: &'a Histogram,
    pub color: &'static str,
}

/// Each side's latency as a CDF: x the latency (ms, log scale), y the share of
/// requests answered within it. `None` if no series has a sample.
pub fn latency_cdf(series: &[Series<'_>]) -> Option<String> {
    let ranges: Vec<_> = series.iter().filter_map(|s| s.latency.range()).collect();
    let low = ranges.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let high = ranges.iter().map(|r| r.1).fold(0.0, f64::max);
    if ranges.is_empty() {
        return None;
    }
    let ticks = log_ticks(low, high);
    let (from, to) = match (ticks.first(), ticks.last()) {
        (Some(from), Some(to)) => (from.log10(), to.log10()),
        _ => return None,
    };
    let x = |ms: f64| LEFT + (ms.max(10f64.powf(from)).log10() - from) / (to - from) * PLOT_W;
    let y = |share: f64| TOP + (1.0 - share) * PLOT_H;

    let mut svg = open(
        "latency-chart",
        "Latency of the primary and the shadows, as a CDF",
    );
    for share in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let at = y(share);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{at:.1}\" y2=\"{at:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}%</text>",
            LEFT + PLOT_W,
            LEFT - 6.0,
            at + 4.0,
            share * 100.0
        );
    }
    // Over many decades only the powers of ten are labelled.
    let many = ticks.len() > 10;
    for &ms in &ticks {
        if many && !is_power_of_ten(ms) {
            continue;
        }
        let at = x(ms);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{TOP}\" y2=\"{:.1}\"/>\
             <text x=\"{at:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + PLOT_H,
            TOP + PLOT_H + 16.0,
            tick_ms(ms)
        );
    }
    axis_titles(
        &mut svg,
        "latency, ms (log scale)",
        "requests answered within",
    );
    for (i, s) in series.iter().enumerate() {
        let cdf = s.latency.cdf();
        if cdf.is_empty() {
            continue;
        }
        let points: Vec<String> = cdf
            .iter()
            .map(|&(ms, share)| format!("{:.1},{:.1}", x(ms), y(share)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            s.color,
            points.join(" ")
        );
        let p50 = s.latency.percentile(0.5).map_or("-".into(), millis);
        let legend_y = TOP + 14.0 + i as f64 * 18.0;
        let _ = write!(
            svg,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{:.1}\">{} (p50 {p50} ms)</text>",
            LEFT + 10.0,
            LEFT + 30.0,
            s.color,
            LEFT + 36.0,
            legend_y + 4.0,
            html(s.name),
            ly = legend_y,
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

/// Shadow errors per bar of time; each bar's tooltip says its time and counts.
pub fn errors_over_time(bars: &Bars) -> String {
    let most = bars.slots.iter().map(|s| s.errors).max().unwrap_or(0);
    let scale = nice_ceiling(most.max(1));
    let n = bars.slots.len().max(1);
    let bar_w = PLOT_W / n as f64;
    let y = |errors: u64| TOP + (1.0 - errors as f64 / scale as f64) * PLOT_H;
    let label = width_label(bars.width_ms);
    let mut svg = open("errors-chart", &format!("Shadow errors per {label}"));
    for tick in [0, scale / 2, scale] {
        if tick == scale / 2 && !scale.is_multiple_of(2) {
            continue;
        }
        let at = y(tick);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{at:.1}\" y2=\"{at:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + PLOT_W,
            LEFT - 6.0,
            at + 4.0,
            count(tick)
        );
    }
    let day_ms = 86_400_000;
    let long = bars.slots.len() as i64 * bars.width_ms > day_ms;
    let labels = 6.min(n);
    for i in 0..labels {
        let bar = i * n / labels;
        let start = bars.start_ms + bar as i64 * bars.width_ms;
        let at = LEFT + bar as f64 * bar_w;
        let text = clock(start, long, bars.width_ms < 60_000);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{at:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{text}</text>",
            TOP + PLOT_H,
            TOP + PLOT_H + 5.0,
            TOP + PLOT_H + 17.0,
        );
    }
    axis_titles(
        &mut svg,
        "time (UTC)",
        &format!("shadow errors per {label}"),
    );
    for (i, slot) in bars.slots.iter().enumerate() {
        if slot.errors == 0 {
            continue;
        }
        let start = bars.start_ms + i as i64 * bars.width_ms;
        let top = y(slot.errors);
        let _ = write!(
            svg,
            "<rect class=\"error\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\">\
             <title>{} to {} UTC: {} in {}</title></rect>",
            LEFT + i as f64 * bar_w + bar_w * 0.1,
            (bar_w * 0.8).max(1.0),
            TOP + PLOT_H - top,
            time::utc(start),
            time::utc(start + bars.width_ms),
            plural(slot.errors, "shadow error", "shadow errors"),
            plural(slot.compared, "request", "requests")
        );
    }
    svg.push_str("</svg>");
    svg
}

fn open(id: &str, title: &str) -> String {
    format!(
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\"><title>{}</title>\
         <line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{bottom}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" x2=\"{right}\" y1=\"{bottom}\" y2=\"{bottom}\"/>",
        html(title),
        bottom = TOP + PLOT_H,
        right = LEFT + PLOT_W,
    )
}

fn axis_titles(svg: &mut String, x_title: &str, y_title: &str) {
    let _ = write!(
        svg,
        "<text class=\"title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text class=\"title\" x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 {x:.1} {y:.1})\">{}</text>",
        LEFT + PLOT_W / 2.0,
        HEIGHT - 8.0,
        html(x_title),
        html(y_title),
        x = 14.0,
        y = TOP + PLOT_H / 2.0,
    );
}

/// The values 1, 2 and 5 times a power of ten from the last at or below `low` to the
/// first at or above `high` (at least two): the latency axis's ends and ticks.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let low = low.max(0.001);
    let high = high.max(low);
    let mut ticks: Vec<f64> = Vec::new();
    // A decade early: log10 may round up.
    let mut decade = low.log10().floor() as i32 - 1;
    while ticks
        .last()
        .is_none_or(|&last| last < high || ticks.len() < 2)
        && decade < 20
    {
        for step in [1.0, 2.0, 5.0] {
            // Divided, not multiplied by a negative power: 1 / 1000 is exactly 0.001.
            let tick = if decade >= 0 {
                step * 10f64.powi(decade)
            } else {
                step / 10f64.powi(-decade)
            };
            if tick <= low {
                ticks.clear();
            }
            if ticks.last().is_some_and(|&last| last >= high) && ticks.len() >= 2 {
                break;
            }
            ticks.push(tick);
        }
        decade += 1;
    }
    ticks
}

fn is_power_of_ten(ms: f64) -> bool {
    let exponent = ms.log10().round();
    (10f64.powf(exponent) - ms).abs() <= ms * 1e-9
}

/// `0.01`, `0.5`, `20`, `1,000`.
fn tick_ms(ms: f64) -> String {
    if ms >= 1.0 {
        count(ms.round() as u64)
    } else {
        let text = format!("{ms:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `n`.
fn nice_ceiling(n: u64) -> u64 {
    let mut power = 1u64;
    loop {
        for step in [1, 2, 5] {
            let nice = step * power;
            if nice >= n {
                return nice;
            }
        }
        match power.checked_mul(10) {
            Some(next) => power = next,
            None => return n,
        }
    }
}

/// `15:00`, `15:00:30`, or `11-30 15:00` when the chart spans days.
fn clock(ms: i64, with_date: bool, with_seconds: bool) -> String {
    let utc = time::utc(ms); // 2026-11-30 15:00:30
    let date = utc.get(5..10).unwrap_or_default();
    let clock = if with_seconds {
        utc.get(11..19)
    } else {
        utc.get(11..16)
    }
    .unwrap_or_default();
    if with_date {
        format!("{date} {clock}")
    } else {
        clock.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::timeline::Timeline;

    #[test]
    fn report_svg_latency_chart_has_a_curve_per_side_and_escapes_names() {
        let (mut primary, mut shadow) = (Histogram::default(), Histogram::default());
        for i in 1..=100 {
            primary.record(f64::from(i) / 10.0);
            shadow.record(f64::from(i) / 5.0);
        }
        let svg = latency_cdf(&[
            Series {
                name: "primary",
                latency: &primary,
                color: "#2f6db5",
            },
            Series {
                name: "<b>duplex_0</b>",
                latency: &shadow,
                color: "#d9731a",
            },
        ])
        .expect("a chart");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("&lt;b&gt;duplex_0&lt;/b&gt;"));
        assert!(!svg.contains("<b>"));
        assert!(svg.contains(">latency, ms (log scale)<"));
        assert!(svg.contains(">0.1<") && svg.contains(">20<"), "{svg}");
        assert!(!svg.contains(">50<"), "the axis ends at 20 ms: {svg}");
        assert_eq!(latency_cdf(&[]), None);
    }

    #[test]
    fn report_svg_error_chart_draws_a_bar_per_bucket_with_errors() {
        let mut t = Timeline::default();
        for i in 0..1000 {
            t.add(1_796_050_800_000 + i * 1000, i % 100 == 55);
        }
        let svg = errors_over_time(&t.bars(60).expect("bars"));
        assert_eq!(svg.matches("<rect").count(), 10);
        assert!(svg.contains(">shadow errors per 30 s<"), "{svg}");
        assert!(svg.contains(">15:00:00<"), "{svg}");
        assert!(svg.contains("<title>2026-11-30 15:00:30 to 2026-11-30 15:01:00 UTC: 1 shadow error in 30 requests</title>"), "{svg}");
    }

    #[test]
    fn report_svg_latency_axis_ends_on_round_values_around_the_samples() {
        assert_eq!(log_ticks(1.0, 21.8), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
        assert_eq!(log_ticks(1.5, 9.0), [1.0, 2.0, 5.0, 10.0]);
        assert_eq!(log_ticks(3.0, 3.0), [2.0, 5.0]);
        assert_eq!(log_ticks(5.0, 5.0), [5.0, 10.0]);
        assert_eq!(log_ticks(0.0, 0.0), [0.001, 0.002]);
        let wide = log_ticks(0.01, 30_000.0);
        assert_eq!((wide.first(), wide.last()), (Some(&0.01), Some(&50_000.0)));
        assert!(is_power_of_ten(1000.0) && !is_power_of_ten(2000.0));
    }

    #[test]
    fn report_svg_scales_are_round() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(101), 200);
        assert_eq!(tick_ms(0.05), "0.05");
        assert_eq!(tick_ms(2000.0), "2,000");
    }
}
