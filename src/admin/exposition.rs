//! The Prometheus text exposition format, version 0.0.4: the text of a `/metrics` page.
//!
//! [`Exposition`] owns one page while it is being written: a block per metric family, in
//! the order families were first written, each block one `# HELP` line, one `# TYPE`
//! line and then every sample of the family. Samples of a family may be written at any
//! time and in any order with other families: they are kept together, so HELP and TYPE
//! are never repeated and a family is never split (both of which Prometheus rejects).
//! It never talks to a socket; [`Exposition::finish`] hands the text over.
//!
//! What it checks, and what it panics on, is on [`Exposition`].

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::time::Duration;

use super::histogram::Histogram;

/// The `Content-Type` of a page in this format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A Prometheus text page being written. Families appear in the order they were first
/// written, each with all of its samples.
///
/// # What is checked, and how
/// - Metric and label *names* come from the program, so a bad one is a bug: it panics.
///   So do one family written as two types, a label name used twice in one sample, and
///   `le` among a histogram's labels.
/// - Label *values* and HELP text may come from anywhere (a backend's address, a
///   configuration file): they are escaped (`\\`, `\"`, `\n`), never refused.
/// - A sample whose family and labels were already written is dropped (the first one
///   stays): Prometheus refuses a whole page with a duplicate series.
///
/// ```
/// use std::time::Duration;
/// use ember::admin::{Exposition, Histogram};
///
/// let latency = Histogram::new(&[0.1]);
/// latency.observe(Duration::from_millis(20));
///
/// let mut page = Exposition::new();
/// page.counter("requests_total", "Requests answered.", 7u64)
///     .gauge_with("backend_up", "Whether a backend answers.", &[("backend", "10.0.0.1:80")], true)
///     .gauge_with("backend_up", "Whether a backend answers.", &[("backend", "10.0.0.2:80")], false)
///     .histogram("latency_seconds", "Time to answer.", &latency);
/// let expected = concat!(
///     "# HELP requests_total Requests answered.\n",
///     "# TYPE requests_total counter\n",
///     "requests_total 7\n",
///     "# HELP backend_up Whether a backend answers.\n",
///     "# TYPE backend_up gauge\n",
///     "backend_up{backend=\"10.0.0.1:80\"} 1\n",
///     "backend_up{backend=\"10.0.0.2:80\"} 0\n",
///     "# HELP latency_seconds Time to answer.\n",
///     "# TYPE latency_seconds histogram\n",
///     "latency_seconds_bucket{le=\"0.1\"} 1\n",
///     "latency_seconds_bucket{le=\"+Inf\"} 1\n",
///     "latency_seconds_sum 0.02\n",
///     "latency_seconds_count 1\n",
/// );
/// assert_eq!(page.finish(), expected);
/// ```
#[derive(Debug, Default)]
pub struct Exposition {
    /// Every family written so far, in first-written order.
    families: Vec<Family>,
    /// A family's index in `families`, by name.
    by_name: HashMap<String, usize>,
}

/// One metric family: its header, and its samples as text.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    /// Sample lines, each ending in `\n`.
    samples: String,
    /// The label sets already written (rendered), so a series is written once.
    series: HashSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Writes a counter without labels. `help` is used the first time the family is
    /// written.
    ///
    /// # Panics
    /// A bad name, or `name` already written as another type (see [`Exposition`]).
    pub fn counter(&mut self, name: &str, help: &str, value: impl Into<Value>) -> &mut Self {
        self.counter_with(name, help, &[], value)
    }

    /// Writes one labelled sample of a counter family.
    ///
    /// # Panics
    /// As [`counter`](Self::counter), and for a bad or repeated label name.
    pub fn counter_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) -> &mut Self {
        self.sample(Kind::Counter, name, help, labels, value.into())
    }

    /// Writes a gauge without labels.
    ///
    /// # Panics
    /// As [`counter`](Self::counter).
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<Value>) -> &mut Self {
        self.gauge_with(name, help, &[], value)
    }

    /// Writes one labelled sample of a gauge family.
    ///
    /// # Panics
    /// As [`counter_with`](Self::counter_with).
    pub fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) -> &mut Self {
        self.sample(Kind::Gauge, name, help, labels, value.into())
    }

    /// Writes a histogram without labels: `name_bucket{le="…"}` per bound and `+Inf`
    /// (cumulative), `name_sum` in seconds, `name_count`.
    ///
    /// # Panics
    /// As [`counter`](Self::counter).
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) -> &mut Self {
        self.histogram_with(name, help, &[], histogram)
    }

    /// Writes one labelled histogram of a family; `le` is added to `labels` for the
    /// bucket lines.
    ///
    /// # Panics
    /// As [`counter_with`](Self::counter_with), and if `labels` has an `le`.
    pub fn histogram_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Self {
        assert!(
            labels.iter().all(|&(label, _)| label != "le"),
            "`le` is the bucket label of histogram {name}; it cannot be given"
        );
        let family = self.family(Kind::Histogram, name, help);
        let series = render_labels(labels, None);
        if !family.series.insert(series.clone()) {
            return self;
        }
        let snapshot = histogram.snapshot();
        let out = &mut family.samples;
        let upper_bounds = snapshot.bounds.iter().map(|&b| Value::from(b));
        for (bound, count) in upper_bounds
            .chain([Value::from(f64::INFINITY)])
            .zip(&snapshot.cumulative)
        {
            let le = bound.to_string();
            let labels = render_labels(labels, Some(("le", &le)));
            let _ = writeln!(out, "{name}_bucket{labels} {count}");
        }
        let sum = Value::from(snapshot.sum_seconds);
        let count = snapshot.cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_sum{series} {sum}");
        let _ = writeln!(out, "{name}_count{series} {count}");
        self
    }

    /// The page's text, families in first-written order.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for family in &self.families {
            out.push_str("# HELP ");
            out.push_str(&family.name);
            if !family.help.is_empty() {
                out.push(' ');
                escape_help(&mut out, &family.help);
            }
            let _ = writeln!(out, "\n# TYPE {} {}", family.name, family.kind.as_str());
            out.push_str(&family.samples);
        }
        out
    }

    fn sample(
        &mut self,
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: Value,
    ) -> &mut Self {
        let family = self.family(kind, name, help);
        let series = render_labels(labels, None);
        if family.series.insert(series.clone()) {
            let _ = writeln!(family.samples, "{name}{series} {value}");
        }
        self
    }

    /// The family called `name`, created on first use.
    fn family(&mut self, kind: Kind, name: &str, help: &str) -> &mut Family {
        let index = match self.by_name.get(name) {
            Some(&index) => index,
            None => {
                assert!(is_metric_name(name), "invalid metric name {name:?}");
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: String::new(),
                    series: HashSet::new(),
                });
                self.by_name
                    .insert(name.to_owned(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let family = &mut self.families[index];
        assert!(
            family.kind == kind,
            "metric {name} written as a {} and as a {}",
            family.kind.as_str(),
            kind.as_str()
        );
        family
    }
}

/// A sample's value: integers are written exactly, floats in the shortest form that reads
/// back the same, with `+Inf`, `-Inf` and `NaN` as Prometheus spells them. Made from the
/// integer types, `f64`, `bool` (1 or 0) and `Duration` (seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Value(Number);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

macro_rules! value_from {
    ($variant:ident as $repr:ty: $($from:ty),*) => {$(
        impl From<$from> for Value {
            fn from(v: $from) -> Value {
                Value(Number::$variant(<$repr>::from(v)))
            }
        }
    )*};
}

value_from!(Unsigned as u64: u64, u32, u16, u8);
value_from!(Signed as i64: i64, i32, i16, i8);

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value(Number::Unsigned(v as u64))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value(Number::Float(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value(Number::Unsigned(u64::from(v)))
    }
}

impl From<Duration> for Value {
    fn from(v: Duration) -> Value {
        Value(Number::Float(v.as_secs_f64()))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Number::Unsigned(n) => write!(f, "{n}"),
            Number::Signed(n) => write!(f, "{n}"),
            Number::Float(x) if x.is_nan() => f.write_str("NaN"),
            Number::Float(x) if x == f64::INFINITY => f.write_str("+Inf"),
            Number::Float(x) if x == f64::NEG_INFINITY => f.write_str("-Inf"),
            // Rust prints the shortest decimal that reads back the same, never with an
            // exponent: Go's ParseFloat (Prometheus) reads it exactly.
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

/// `{a="x",b="y"}` (with `extra` last), or nothing when there are no labels.
fn render_labels(labels: &[(&str, &str)], extra: Option<(&str, &str)>) -> String {
    let mut out = String::new();
    for (i, &(name, value)) in labels.iter().chain(extra.as_ref()).enumerate() {
        assert!(is_label_name(name), "invalid label name {name:?}");
        assert!(
            labels[..i.min(labels.len())]
                .iter()
                .all(|&(n, _)| n != name),
            "label {name:?} given twice"
        );
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(&mut out, value);
        out.push('"');
    }
    if !out.is_empty() {
        out.push('}');
    }
    out
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved for Prometheus).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_and_a_gauge_each_get_help_type_and_one_sample() {
        let mut page = Exposition::new();
        page.counter("ember_accepted_total", "Clients accepted.", 42u64)
            .gauge("ember_active", "Clients connected now.", -3i64);
        assert_eq!(
            page.finish(),
            "# HELP ember_accepted_total Clients accepted.\n\
             # TYPE ember_accepted_total counter\n\
             ember_accepted_total 42\n\
             # HELP ember_active Clients connected now.\n\
             # TYPE ember_active gauge\n\
             ember_active -3\n"
        );
    }

    #[test]
    fn samples_of_a_family_stay_together_under_one_help_and_type() {
        let mut page = Exposition::new();
        page.gauge_with("up", "Up.", &[("backend", "a")], 1u8)
            .counter("other_total", "Other.", 1u8)
            .gauge_with(
                "up",
                "Ignored: the first help stays.",
                &[("backend", "b")],
                0u8,
            );
        assert_eq!(
            page.finish(),
            "# HELP up Up.\n\
             # TYPE up gauge\n\
             up{backend=\"a\"} 1\n\
             up{backend=\"b\"} 0\n\
             # HELP other_total Other.\n\
             # TYPE other_total counter\n\
             other_total 1\n"
        );
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut page = Exposition::new();
        page.gauge_with(
            "g",
            "h",
            &[
                ("path", "C:\\dir"),
                ("quote", "say \"hi\""),
                ("lines", "a\nb"),
            ],
            1u8,
        );
        assert_eq!(
            page.finish(),
            "# HELP g h\n# TYPE g gauge\n\
             g{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",lines=\"a\\nb\"} 1\n"
        );
    }

    #[test]
    fn help_escapes_backslash_and_newline_but_not_quotes() {
        let mut page = Exposition::new();
        page.counter("c_total", "a \\ b\n\"c\"", 0u8);
        assert_eq!(
            page.finish(),
            "# HELP c_total a \\\\ b\\n\"c\"\n# TYPE c_total counter\nc_total 0\n"
        );
    }

    #[test]
    fn empty_help_writes_no_trailing_space() {
        let mut page = Exposition::new();
        page.gauge("g", "", 0u8);
        assert_eq!(page.finish(), "# HELP g\n# TYPE g gauge\ng 0\n");
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        let cases: [(Value, &str); 10] = [
            (u64::MAX.into(), "18446744073709551615"),
            (i64::MIN.into(), "-9223372036854775808"),
            (0.25.into(), "0.25"),
            (1.0.into(), "1"),
            (1e-7.into(), "0.0000001"),
            (f64::INFINITY.into(), "+Inf"),
            (f64::NEG_INFINITY.into(), "-Inf"),
            (f64::NAN.into(), "NaN"),
            (true.into(), "1"),
            (Duration::from_millis(1500).into(), "1.5"),
        ];
        for (value, text) in cases {
            assert_eq!(value.to_string(), text);
        }
    }

    #[test]
    fn a_histogram_writes_cumulative_buckets_inf_sum_and_count() {
        let h = Histogram::new(&[0.005, 0.01, 0.025]);
        for ms in [3, 4, 20, 30] {
            h.observe(Duration::from_millis(ms));
        }
        let mut page = Exposition::new();
        page.histogram("req_seconds", "Request latency.", &h);
        assert_eq!(
            page.finish(),
            "# HELP req_seconds Request latency.\n\
             # TYPE req_seconds histogram\n\
             req_seconds_bucket{le=\"0.005\"} 2\n\
             req_seconds_bucket{le=\"0.01\"} 2\n\
             req_seconds_bucket{le=\"0.025\"} 3\n\
             req_seconds_bucket{le=\"+Inf\"} 4\n\
             req_seconds_sum 0.057\n\
             req_seconds_count 4\n"
        );
    }

    #[test]
    fn labelled_histograms_share_one_header_and_put_le_last() {
        let fast = Histogram::new(&[1.0]);
        fast.observe(Duration::from_millis(500));
        let slow = Histogram::new(&[1.0]);
        slow.observe(Duration::from_secs(2));
        let mut page = Exposition::new();
        page.histogram_with("rt", "RT.", &[("backend", "a")], &fast)
            .histogram_with("rt", "RT.", &[("backend", "b")], &slow);
        assert_eq!(
            page.finish(),
            "# HELP rt RT.\n# TYPE rt histogram\n\
             rt_bucket{backend=\"a\",le=\"1\"} 1\n\
             rt_bucket{backend=\"a\",le=\"+Inf\"} 1\n\
             rt_sum{backend=\"a\"} 0.5\n\
             rt_count{backend=\"a\"} 1\n\
             rt_bucket{backend=\"b\",le=\"1\"} 0\n\
             rt_bucket{backend=\"b\",le=\"+Inf\"} 1\n\
             rt_sum{backend=\"b\"} 2\n\
             rt_count{backend=\"b\"} 1\n"
        );
    }

    #[test]
    fn a_repeated_series_keeps_its_first_sample() {
        let mut page = Exposition::new();
        page.gauge_with("g", "h", &[("k", "v")], 1u8)
            .gauge_with("g", "h", &[("k", "v")], 2u8)
            .gauge("n", "h", 1u8)
            .gauge("n", "h", 2u8);
        assert_eq!(
            page.finish(),
            "# HELP g h\n# TYPE g gauge\ng{k=\"v\"} 1\n# HELP n h\n# TYPE n gauge\nn 1\n"
        );
    }

    #[test]
    fn an_empty_page_is_empty() {
        assert_eq!(Exposition::new().finish(), "");
    }

    #[test]
    #[should_panic(expected = "written as a counter and as a gauge")]
    fn one_name_cannot_be_two_types() {
        let mut page = Exposition::new();
        page.counter("x", "h", 1u8).gauge("x", "h", 1u8);
    }

    #[test]
    #[should_panic(expected = "invalid metric name")]
    fn a_metric_name_with_a_dash_is_refused() {
        Exposition::new().counter("bad-name", "h", 1u8);
    }

    #[test]
    #[should_panic(expected = "invalid label name")]
    fn a_reserved_label_name_is_refused() {
        Exposition::new().gauge_with("g", "h", &[("__name__", "x")], 1u8);
    }

    #[test]
    #[should_panic(expected = "given twice")]
    fn a_label_given_twice_is_refused() {
        Exposition::new().gauge_with("g", "h", &[("a", "x"), ("a", "y")], 1u8);
    }

    #[test]
    #[should_panic(expected = "bucket label")]
    fn a_histogram_cannot_be_given_le() {
        Exposition::new().histogram_with("h", "h", &[("le", "1")], &Histogram::new(&[]));
    }

    #[test]
    fn names_follow_the_data_model() {
        assert!(is_metric_name("a:b_c9") && is_metric_name("_x") && is_metric_name(":x"));
        assert!(!is_metric_name("") && !is_metric_name("9a") && !is_metric_name("a.b"));
        assert!(is_label_name("a_9") && is_label_name("_x"));
        assert!(!is_label_name("a:b") && !is_label_name("__x") && !is_label_name(""));
    }
}
