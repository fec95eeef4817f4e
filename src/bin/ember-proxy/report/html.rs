//! The report page: one self-contained HTML file (inline CSS and SVG, no external
//! asset, complete without script; a few lines of script only sort the tables). The
//! verdict in large type, the totals, per-shadow and per-route tables worst first, the
//! top differences with a side-by-side excerpt (the differing part marked), shadow errors
//! by reason and over time, latency as a CDF chart and a table, and last the noise.
//!
//! Everything from the log is untrusted: every string goes through [`html`] on its way
//! in; numbers are written by the report itself.

use std::fmt::Write;

use super::format::{count, html, millis, percent};
use super::latency::Histogram;
use super::record::Difference;
use super::summary::{by_kind, headline, worst_routes, worst_shadows};
use super::svg::{self, Series};
use super::tally::{DifferenceTally, Example, Tally, most_frequent};
use super::time;

/// Differences shown with examples; the next ones are listed in a table.
const TOP_DIFFERENCES: usize = 10;
/// Rows of the further-differences and noise tables.
const MORE_DIFFERENCES: usize = 40;
/// Rows of the routes table.
const ROUTE_ROWS: usize = 300;
/// Bars of the errors-over-time chart, at most.
const TIME_BARS: usize = 60;

const PRIMARY_COLOR: &str = "#2f6db5";
const SHADOW_COLORS: [&str; 5] = ["#d9731a", "#7a4fb5", "#1a9c8c", "#b5452f", "#6b8e23"];

/// The page for `t`, read from the log at `source`.
pub fn page(t: &Tally, source: &str) -> String {
    let head = headline(t);
    let mut body = String::new();
    let span = t.timeline.span().map_or(String::new(), |(first, last)| {
        format!(" · {} to {} UTC", time::utc(first), time::utc(last))
    });
    let _ = write!(
        body,
        "<h1>Shadow comparison</h1>\
         <p class=\"source\">{} · {} requests{span}</p>\
         <p class=\"verdict {}\" id=\"verdict\">{}</p>",
        html(source),
        count(t.compared),
        if head.safe { "safe" } else { "regressions" },
        html(&head.text),
    );
    totals(&mut body, t);
    shadows(&mut body, t);
    routes(&mut body, t);
    differences(&mut body, t);
    errors(&mut body, t);
    latency(&mut body, t);
    noise(&mut body, t);
    let _ = write!(
        body,
        "<footer>ember-proxy {} report of {}: {} lines read, {} skipped (not comparisons).\
         </footer>",
        env!("CARGO_PKG_VERSION"),
        html(source),
        count(t.lines),
        count(t.skipped),
    );
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}: shadow comparison</title><style>{STYLE}</style></head><body>{body}\
         <script>{SORT_SCRIPT}</script></body></html>\n",
        html(source)
    )
}

fn totals(body: &mut String, t: &Tally) {
    let regressions = t.regressions();
    let _ = write!(body, "<dl class=\"totals\">");
    for (id, name, value) in [
        ("compared", "requests compared", count(t.compared)),
        ("regressions", "regressions", count(regressions)),
        (
            "mismatch-rate",
            "mismatch rate",
            percent(regressions, t.compared),
        ),
        ("noise", "noise (not counted)", count(t.noise)),
        ("shadow-errors", "shadow errors", count(t.shadow_errors())),
        ("skipped", "lines skipped", count(t.skipped)),
    ] {
        let _ = write!(
            body,
            "<div><dt>{name}</dt><dd id=\"{id}\">{value}</dd></div>"
        );
    }
    body.push_str("</dl>");
    if regressions > 0 {
        let _ = write!(body, "<p class=\"kinds\">{}</p>", by_kind(&t.by_kind));
    }
}

fn shadows(body: &mut String, t: &Tally) {
    body.push_str(
        "<h2>Shadows</h2><div class=\"scroll\"><table id=\"shadows\" class=\"sortable\">\
         <thead><tr><th>shadow</th><th>requests</th><th>differ</th><th>rate</th>\
         <th>shadow errors</th><th>noise</th></tr></thead><tbody>",
    );
    for (name, s) in worst_shadows(t) {
        let _ = write!(
            body,
            "<tr><td>{}</td>{}{}{}{}{}</tr>",
            html(name),
            number(s.compared),
            number(s.regressions),
            rate(s.regressions, s.compared),
            number(s.errors),
            number(s.noise),
        );
    }
    body.push_str("</tbody></table></div>");
}

fn routes(body: &mut String, t: &Tally) {
    body.push_str(
        "<h2>Routes, worst first</h2><div class=\"scroll\"><table id=\"routes\" \
         class=\"sortable\"><thead><tr><th>route</th><th>requests</th><th>differ</th>\
         <th>rate</th><th>status</th><th>header</th><th>body</th><th>shadow error</th>\
         <th>noise</th></tr></thead><tbody>",
    );
    let routes = worst_routes(t);
    for (name, r) in routes.iter().take(ROUTE_ROWS) {
        let _ = write!(
            body,
            "<tr><td>{}</td>{}{}{}",
            html(name),
            number(r.compared),
            number(r.regressions()),
            rate(r.regressions(), r.compared),
        );
        for n in r.by_kind {
            body.push_str(&number(n));
        }
        let _ = write!(body, "{}</tr>", number(r.noise));
    }
    body.push_str("</tbody></table></div>");
    if routes.len() > ROUTE_ROWS {
        let _ = write!(
            body,
            "<p class=\"more\">{} more routes, all with fewer differences, not shown.</p>",
            count((routes.len() - ROUTE_ROWS) as u64)
        );
    }
}

fn differences(body: &mut String, t: &Tally) {
    body.push_str("<h2>Top differences</h2>");
    let rows = most_frequent(&t.differences);
    if rows.is_empty() {
        body.push_str("<p class=\"none\">None: every response the shadows gave matched.</p>");
        return;
    }
    body.push_str("<div id=\"differences\">");
    for (difference, d) in rows.iter().take(TOP_DIFFERENCES) {
        let _ = write!(
            body,
            "<section class=\"diff\"><h3><span class=\"n\">{}</span> {} \
             <span class=\"share\">{} of requests</span></h3>",
            count(d.count),
            html(&difference.label()),
            percent(d.count, t.compared)
        );
        examples(body, d);
        body.push_str("</section>");
    }
    body.push_str("</div>");
    if rows.len() > TOP_DIFFERENCES {
        difference_table(
            body,
            "more-differences",
            "More differences",
            &rows[TOP_DIFFERENCES..],
            t.compared,
        );
    }
}

fn noise(body: &mut String, t: &Tally) {
    let rows = most_frequent(&t.noise_differences);
    if !rows.is_empty() {
        difference_table(
            body,
            "noise-differences",
            "Noise (not counted as mismatches)",
            &rows,
            t.compared,
        );
    }
}

fn difference_table(
    body: &mut String,
    id: &str,
    title: &str,
    rows: &[(&Difference, &DifferenceTally)],
    compared: u64,
) {
    let _ = write!(
        body,
        "<h2>{title}</h2><div class=\"scroll\"><table id=\"{id}\"><thead><tr>\
         <th>difference</th><th>requests</th><th>share</th><th class=\"example\">for example</th></tr></thead>\
         <tbody>"
    );
    for (difference, d) in rows.iter().take(MORE_DIFFERENCES) {
        let example = d
            .examples
            .first()
            .map_or(String::new(), |e| html(&e.target));
        let _ = write!(
            body,
            "<tr><td>{}</td>{}<td>{}</td><td class=\"example\">{example}</td></tr>",
            html(&difference.label()),
            number(d.count),
            percent(d.count, compared)
        );
    }
    body.push_str("</tbody></table></div>");
    if rows.len() > MORE_DIFFERENCES {
        let _ = write!(
            body,
            "<p class=\"more\">{} more, less frequent, not shown.</p>",
            count((rows.len() - MORE_DIFFERENCES) as u64)
        );
    }
}

/// The first example in full, the others folded away.
fn examples(body: &mut String, d: &DifferenceTally) {
    for (i, e) in d.examples.iter().enumerate() {
        if i == 1 {
            body.push_str("<details><summary>another example</summary>");
        }
        example(body, e);
    }
    if d.examples.len() > 1 {
        body.push_str("</details>");
    }
}

fn example(body: &mut String, e: &Example) {
    let mut place = vec![html(&e.target), html(&e.shadow_name)];
    match (e.session, e.request) {
        (Some(s), Some(r)) => place.push(format!("session {s}, request {r}")),
        (Some(s), None) => place.push(format!("session {s}")),
        _ => {}
    }
    if let Some(at) = e.time_ms {
        place.push(format!("{} UTC", time::utc(at)));
    }
    let _ = write!(body, "<p class=\"where\">{}", place.join(" · "));
    if !e.evidence.note.is_empty() {
        let _ = write!(body, "<br>{}", html(&e.evidence.note));
    }
    let (primary, shadow) = marked(&e.evidence.primary, &e.evidence.shadow);
    let _ = write!(
        body,
        "</p><div class=\"sides\"><div><h4>primary</h4><pre class=\"primary\">{primary}</pre></div>\
         <div><h4>shadow</h4><pre class=\"shadow\">{shadow}</pre></div></div>"
    );
}

/// Both sides escaped, with the part between their common start and common end, widened
/// to whole words (`200` against `500`, not `2` against `5`), in `<mark>`.
fn marked(primary: &str, shadow: &str) -> (String, String) {
    if primary == shadow {
        return (html(primary), html(shadow));
    }
    let (mut start, mut end) = common_ends(primary, shadow);
    let in_word = |c: &char| c.is_alphanumeric() || *c == '_';
    // The common start and end are the same text on both sides: widen on one.
    start -= primary[..start]
        .chars()
        .rev()
        .take_while(in_word)
        .map(char::len_utf8)
        .sum::<usize>();
    end -= primary[primary.len() - end..]
        .chars()
        .take_while(in_word)
        .map(char::len_utf8)
        .sum::<usize>();
    let mark = |s: &str| {
        let middle = &s[start..s.len() - end];
        let middle = if middle.is_empty() {
            String::new()
        } else {
            format!("<mark>{}</mark>", html(middle))
        };
        format!("{}{middle}{}", html(&s[..start]), html(&s[s.len() - end..]))
    };
    (mark(primary), mark(shadow))
}

/// The byte lengths of the common start and the common end of `a` and `b`, at character
/// boundaries and not overlapping.
fn common_ends(a: &str, b: &str) -> (usize, usize) {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut start = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    while start > 0 && !is_boundary(a, start) {
        start -= 1;
    }
    let room = a.len().min(b.len()) - start;
    let mut end = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
        .min(room);
    while end > 0 && !(is_boundary(a, a.len() - end) && is_boundary(b, b.len() - end)) {
        end -= 1;
    }
    (start, end)
}

/// Whether `at` starts a character of the UTF-8 text `s` (or is its end).
fn is_boundary(s: &[u8], at: usize) -> bool {
    s.get(at).is_none_or(|b| (*b as i8) >= -0x40)
}

fn latency(body: &mut String, t: &Tally) {
    body.push_str("<h2>Latency</h2>");
    let shadows: Vec<_> = t.shadows.iter().collect();
    let mut series = vec![Series {
        name: "primary",
        latency: &t.primary_latency,
        color: PRIMARY_COLOR,
    }];
    for (i, (name, s)) in shadows.iter().enumerate() {
        series.push(Series {
            name,
            latency: &s.latency,
            color: SHADOW_COLORS[i % SHADOW_COLORS.len()],
        });
    }
    match svg::latency_cdf(&series) {
        Some(chart) => body.push_str(&chart),
        None => body.push_str("<p class=\"none\">No latencies in the log.</p>"),
    }
    body.push_str(
        "<div class=\"scroll\"><table id=\"latency\"><thead><tr><th>side</th>\
         <th>responses</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th>\
         </tr></thead><tbody>",
    );
    for s in &series {
        latency_row(body, s.name, s.latency);
    }
    body.push_str("</tbody></table></div>");
}

fn latency_row(body: &mut String, name: &str, h: &Histogram) {
    let at = |q: f64| h.percentile(q).map_or("-".into(), millis);
    let max = h.range().map_or("-".into(), |(_, max)| millis(max));
    let _ = write!(
        body,
        "<tr><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{max}</td></tr>",
        html(name),
        number(h.count()),
        at(0.5),
        at(0.9),
        at(0.99),
    );
}

fn errors(body: &mut String, t: &Tally) {
    body.push_str("<h2>Shadow errors</h2>");
    if t.shadow_errors() == 0 {
        body.push_str("<p class=\"none\">None: every shadow answered.</p>");
        return;
    }
    if let Some(bars) = t.timeline.bars(TIME_BARS) {
        body.push_str(&svg::errors_over_time(&bars));
    }
    let mut reasons: Vec<_> = t.error_reasons.iter().collect();
    reasons.sort_by(|(a_name, a), (b_name, b)| b.cmp(a).then(a_name.cmp(b_name)));
    body.push_str(
        "<div class=\"scroll\"><table id=\"errors\"><thead><tr><th>reason</th>\
         <th>requests</th><th>share</th></tr></thead><tbody>",
    );
    for (reason, n) in reasons {
        let _ = write!(
            body,
            "<tr><td>{}</td>{}<td>{}</td></tr>",
            html(reason),
            number(*n),
            percent(*n, t.compared)
        );
    }
    body.push_str("</tbody></table></div>");
}

/// A numeric cell the sort script orders by value.
fn number(n: u64) -> String {
    format!("<td data-v=\"{n}\">{}</td>", count(n))
}

/// A share cell with a bar.
fn rate(part: u64, whole: u64) -> String {
    let share = if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    };
    format!(
        "<td class=\"rate\" data-v=\"{share:.6}\">{}<span class=\"bar\"><span style=\"width:{:.1}%\"></span></span></td>",
        percent(part, whole),
        share * 100.0
    )
}

const STYLE: &str = "\
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem;color:#222}\
h1{font-size:1.3rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:1.6rem 0 .4rem}\
.source{color:#666;margin:0 0 .6rem;overflow-wrap:anywhere}\
.verdict{font-size:2rem;font-weight:700;line-height:1.2;padding:.6rem 1rem;border-radius:.5rem;\
margin:0 0 .8rem;overflow-wrap:anywhere}\
.safe{background:#dff3e4;color:#14532d}.regressions{background:#fde2e2;color:#8a1c1c}\
.totals{display:flex;flex-wrap:wrap;gap:.5rem;margin:0}\
.totals div{background:#f4f4f6;border-radius:.4rem;padding:.4rem .7rem;min-width:7rem}\
dt{font-size:.75rem;color:#666}dd{margin:0;font-size:1.15rem;font-variant-numeric:tabular-nums}\
.kinds,.more,.none{color:#555;margin:.5rem 0}\
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{text-align:right;padding:.3rem .5rem;border-bottom:1px solid #e4e4e8;white-space:nowrap}\
th:first-child,td:first-child{text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:9rem}\
th{font-size:.8rem;color:#555}.sortable th{cursor:pointer}\
th.example{text-align:left}td.example{text-align:left;color:#555;white-space:normal;overflow-wrap:anywhere}\
.bar{display:inline-block;width:4rem;height:.55rem;margin-left:.5rem;background:#eee;\
border-radius:.3rem;overflow:hidden;vertical-align:middle}.bar span{display:block;height:100%;\
background:#c0262d}\
.diff{border:1px solid #e4e4e8;border-radius:.4rem;padding:.6rem .8rem;margin:.6rem 0}\
.diff h3{font-size:1rem;margin:0 0 .2rem;overflow-wrap:anywhere}.diff .n{color:#c0262d}\
.share{font-weight:400;color:#666;font-size:.85rem;margin-left:.4rem}\
.where{color:#555;font-size:.85rem;margin:.2rem 0 .4rem;overflow-wrap:anywhere}\
.sides{display:grid;grid-template-columns:1fr 1fr;gap:.5rem}.sides div{min-width:0}\
h4{margin:0 0 .1rem;font-size:.75rem;color:#666;font-weight:600}\
pre{margin:0;padding:.4rem .5rem;background:#f6f6f8;border-radius:.3rem;white-space:pre-wrap;\
overflow-wrap:anywhere;max-height:14rem;overflow:auto;font:13px/1.35 ui-monospace,monospace}\
mark{background:#ffe08a;color:inherit;border-radius:2px}\
details{margin-top:.4rem}summary{cursor:pointer;color:#555;font-size:.85rem}\
svg.chart{display:block;width:100%;max-width:48rem;height:auto;margin:.4rem 0}\
svg text{font:12px system-ui,sans-serif;fill:#444}svg .title{fill:#666}\
svg .grid{stroke:#e8e8ec}svg .axis{stroke:#999}svg .error{fill:#c0262d}\
footer{color:#777;font-size:.8rem;margin-top:2rem}\
@media (max-width:40rem){.sides{grid-template-columns:1fr}.verdict{font-size:1.4rem}}";

/// Clicking a column heading of a `.sortable` table sorts its rows by that column
/// (numbers by value), again to reverse. The page is complete without it.
const SORT_SCRIPT: &str = "\
document.querySelectorAll('table.sortable th').forEach(function(th){\
th.addEventListener('click',function(){var i=th.cellIndex,body=th.closest('table').tBodies[0],\
down=th.dataset.dir!=='down';th.dataset.dir=down?'down':'up';\
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){\
var x=a.cells[i],y=b.cells[i],d=('v' in x.dataset&&'v' in y.dataset)?x.dataset.v-y.dataset.v:\
x.textContent.localeCompare(y.textContent);return down?-d:d});\
rows.forEach(function(r){body.appendChild(r)})})});";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_html_marks_only_the_differing_part_and_escapes_it() {
        let (p, s) = marked(r#"{"email":"<a@x>","n":1}"#, r#"{"email":"<B@x>","n":1}"#);
        assert_eq!(
            p,
            "{&quot;email&quot;:&quot;&lt;<mark>a</mark>@x&gt;&quot;,&quot;n&quot;:1}"
        );
        assert_eq!(
            s,
            "{&quot;email&quot;:&quot;&lt;<mark>B</mark>@x&gt;&quot;,&quot;n&quot;:1}"
        );
        assert_eq!(marked("same", "same"), ("same".into(), "same".into()));
        assert_eq!(
            marked("a b", "a bc"),
            ("a <mark>b</mark>".into(), "a <mark>bc</mark>".into())
        );
        assert_eq!(
            marked("a-X-a", "a--a"),
            ("a-<mark>X</mark>-a".into(), "a--a".into())
        );
    }

    #[test]
    fn report_html_marks_whole_words() {
        assert_eq!(
            marked("200", "500"),
            ("<mark>200</mark>".into(), "<mark>500</mark>".into())
        );
        assert_eq!(
            marked(r#"{"price":12.50}"#, r#"{"price":12.5}"#),
            (
                "{&quot;price&quot;:12.<mark>50</mark>}".into(),
                "{&quot;price&quot;:12.<mark>5</mark>}".into()
            )
        );
        assert_eq!(
            marked("x-foo: a1", "x-foo: b1"),
            (
                "x-foo: <mark>a1</mark>".into(),
                "x-foo: <mark>b1</mark>".into()
            )
        );
    }

    #[test]
    fn report_html_marks_whole_characters() {
        // é and è share their first UTF-8 byte.
        assert_eq!(
            marked("à café!", "à cafè!"),
            ("à <mark>café</mark>!".into(), "à <mark>cafè</mark>!".into())
        );
        assert_eq!(common_ends("café", "cafè"), (3, 0));
        assert_eq!(common_ends("€", "₤"), (0, 0));
    }

    #[test]
    fn report_html_escapes_everything_from_the_log() {
        let mut t = Tally::default();
        let evil = r#"<script>alert(1)</script>"#;
        t.add_line(
            format!(
                r#"{{"verdict":"header","method":"<img>","path":"/{evil}","shadow_name":"{evil}","diff":{{"header":"{evil}","primary":"{evil}","shadow":"x"}},"time":"2026-11-30T15:00:00Z"}}"#
            )
            .as_bytes(),
        );
        t.add_line(
            format!(r#"{{"verdict":"shadow_error","diff":{{"error":"{evil}"}},"time":"2026-11-30T15:00:01Z"}}"#)
                .as_bytes(),
        );
        t.add_line(format!(r#"{{"verdict":"noise","diff":{{"header":"{evil}"}}}}"#).as_bytes());
        let page = page(&t, evil);
        assert_eq!(page.matches("<script>").count(), 1, "only the sort script");
        assert!(!page.contains("<img>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn report_html_is_one_file_with_the_verdict_and_no_outside_assets() {
        let mut t = Tally::default();
        for i in 0..10 {
            let verdict = if i < 4 { "body" } else { "same" };
            t.add_line(
                format!(
                    r#"{{"verdict":"{verdict}","method":"GET","path":"/users/{i}","shadow_name":"duplex_0","primary":{{"ms":1.5}},"diff":{{"json_path":"$.user.email"}},"excerpt":{{"primary":"a","shadow":"b"}}}}"#
                )
                .as_bytes(),
            );
        }
        let page = page(&t, "compare.log");
        assert!(page.contains(
            "<p class=\"verdict regressions\" id=\"verdict\">REGRESSIONS: 40% of requests differ, worst route GET /users/{id} 40%</p>"
        ));
        assert!(page.contains("<meta name=\"viewport\""));
        assert!(page.contains("<dd id=\"mismatch-rate\">40%</dd>"));
        assert!(page.contains("body at $.user.email"));
        assert!(page.contains("<pre class=\"primary\"><mark>a</mark></pre>"));
        for outside in ["src=", "href=", "@import", "url("] {
            assert!(!page.contains(outside), "{outside}");
        }
    }
}
