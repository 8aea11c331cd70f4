//! Flame graphs, drawn by `inferno` from the collapsed stacks of a [`Store`]: an interactive SVG
//! (inferno's own script does search and zoom), a differential SVG of two stores, and a single
//! self-contained HTML page with the SVG and a table of the top functions.

use crate::analysis::{self, Group};
use crate::export::collapsed::{self, Value};
use crate::store::Store;
use inferno::differential;
use inferno::flamegraph::{
    self as fg,
    color::{BasicPalette, MultiPalette, Palette},
    TextTruncateDirection,
};
use std::borrow::Cow;
use std::io::{self, Write};

/// What the samples' weights count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// CPU or wall time.
    Nanoseconds,
    /// Allocated memory.
    Bytes,
}

impl Unit {
    /// "ns"/"nanoseconds" or "bytes"/"B".
    pub fn parse(s: &str) -> Option<Unit> {
        match s {
            "ns" | "nanoseconds" => Some(Unit::Nanoseconds),
            "bytes" | "B" => Some(Unit::Bytes),
            _ => None,
        }
    }

    /// A weight as a person reads it ("12.3 ms", "4.0 MiB").
    pub fn format(self, v: i64) -> String {
        let x = v as f64;
        match self {
            Unit::Nanoseconds if x.abs() >= 1e9 => format!("{:.2} s", x / 1e9),
            Unit::Nanoseconds if x.abs() >= 1e6 => format!("{:.1} ms", x / 1e6),
            Unit::Nanoseconds if x.abs() >= 1e3 => format!("{:.1} µs", x / 1e3),
            Unit::Nanoseconds => format!("{v} ns"),
            Unit::Bytes if x.abs() >= (1u64 << 30) as f64 => {
                format!("{:.2} GiB", x / 2f64.powi(30))
            }
            Unit::Bytes if x.abs() >= (1u64 << 20) as f64 => {
                format!("{:.1} MiB", x / 2f64.powi(20))
            }
            Unit::Bytes if x.abs() >= 1024.0 => format!("{:.1} KiB", x / 1024.0),
            Unit::Bytes => format!("{v} B"),
        }
    }
}

pub struct Options<'a> {
    /// Shown at the top of the graph (and as the HTML page's title).
    pub title: &'a str,
    /// What the weights count: tooltips, the table and the colours follow it.
    pub unit: Unit,
}

/// Rows of the top-functions table of the HTML page.
pub const HTML_TOP_FUNCTIONS: usize = 30;

/// inferno's options shared by every graph we draw.
fn inferno_options(opts: &Options, differential: bool) -> fg::Options<'static> {
    let mut o = fg::Options::default();
    o.title = opts.title.to_owned();
    // Colour by function name (hash), not at random: the same profile always draws the same.
    o.hash = true;
    // Where scripts do not run (an image viewer), labels keep their start, the function name.
    o.text_truncate_direction = TextTruncateDirection::Right;
    o.colors = match opts.unit {
        // Red: the program's code; yellow: the standard library; aqua: site-packages.
        Unit::Nanoseconds => Palette::Multi(MultiPalette::Python),
        Unit::Bytes => Palette::Basic(BasicPalette::Mem),
    };
    let (count_name, factor) = match opts.unit {
        // inferno divides a differential graph's unscaled deltas by the `factor`-scaled total: the
        // change percentages are only right with factor 1.
        Unit::Nanoseconds if differential => ("ns", 1.0),
        Unit::Nanoseconds => ("µs", 1e-3),
        Unit::Bytes => ("bytes", 1.0),
    };
    o.count_name = count_name.to_owned();
    o.factor = factor;
    o
}

/// `s` as XML or HTML text: the flame graphs, and the Python tables' notebook display.
pub fn xml_escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 16);
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
    out.into()
}

/// inferno refuses input without stacks (and draws an "ERROR" image): a small valid SVG instead.
fn write_empty_svg(title: &str, message: &str, out: &mut impl Write) -> io::Result<()> {
    write!(
        out,
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            r#"<svg version="1.1" width="1200" height="66" viewBox="0 0 1200 66" "#,
            r#"xmlns="http://www.w3.org/2000/svg">"#,
            r#"<text x="600" y="24" text-anchor="middle" font-family="monospace" font-size="17">{}</text>"#,
            r#"<text x="600" y="50" text-anchor="middle" font-family="monospace" font-size="12">{}</text>"#,
            "</svg>\n"
        ),
        xml_escape(title),
        xml_escape(message)
    )
}

/// The licence of the script and style inferno puts in every flame graph (see THIRD-PARTY.md).
pub const SCRIPT_NOTICE: &str = "The flame graph script and style in this file come from inferno \
(https://github.com/jonhoo/inferno), a port of Brendan Gregg's FlameGraph, under the Common \
Development and Distribution License 1.0 (CDDL-1.0).";

/// Our additions to inferno's script: labels that keep the function name, and frames sized again
/// whenever the picture's size changes (see the file's comments).
const FIT_SCRIPT: &str = include_str!("flamegraph_fit.js");

/// Write inferno's SVG with [`SCRIPT_NOTICE`] as a comment before its `<svg>` element, and
/// [`FIT_SCRIPT`] as the last element inside it (after inferno's script, whose `update_text` it
/// replaces).
fn finish_svg(
    draw: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut svg = Vec::new();
    draw(&mut svg)?;
    let at = svg.windows(5).position(|w| w == b"<svg ").unwrap_or(0);
    let end = svg
        .windows(6)
        .rposition(|w| w == b"</svg>")
        .unwrap_or(svg.len());
    out.write_all(&svg[..at])?;
    writeln!(out, "<!-- {SCRIPT_NOTICE} -->")?;
    out.write_all(&svg[at..end])?;
    writeln!(
        out,
        "<script type=\"text/ecmascript\"><![CDATA[\n{FIT_SCRIPT}]]></script>"
    )?;
    out.write_all(&svg[end..])
}

/// An interactive flame graph of `store`, frame widths = summed sample weights.
pub fn write_svg(store: &Store, opts: &Options, out: &mut impl Write) -> io::Result<()> {
    let folded = collapsed::write(store, Value::Weight);
    if folded.is_empty() {
        return write_empty_svg(opts.title, "No samples", out);
    }
    finish_svg(
        |svg| fg::from_lines(&mut inferno_options(opts, false), folded.lines(), svg),
        out,
    )
}

/// A differential flame graph: frames are as wide as in `current` and coloured by the change
/// from `baseline` (red: grew, blue: shrank). With `normalize`, the baseline's weights are first
/// scaled to the current total, so colours show changes in *share* rather than everything turning
/// red because the current run was longer. A stack absent from `current` has no width here.
/// Frames are `function (file)`: stacks match across versions of the code whose lines moved.
pub fn write_diff_svg(
    baseline: &Store,
    current: &Store,
    opts: &Options,
    normalize: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    // Frames without their line: a change that moved lines must not make every stack new.
    let before = collapsed::write_labelled(baseline, Value::Weight, collapsed::function_label);
    let after = collapsed::write_labelled(current, Value::Weight, collapsed::function_label);
    if after.is_empty() {
        return write_empty_svg(opts.title, "No samples in the current profile", out);
    }
    let mut both = Vec::with_capacity(before.len() + after.len());
    differential::from_readers(
        differential::Options {
            normalize,
            ..Default::default()
        },
        before.as_bytes(),
        after.as_bytes(),
        &mut both,
    )?;
    let mut o = inferno_options(opts, true);
    o.subtitle = Some(
        if normalize {
            "red: larger share than in the baseline, blue: smaller (baseline scaled to the same total)"
        } else {
            "red: more than in the baseline, blue: less"
        }
        .to_owned(),
    );
    finish_svg(|svg| fg::from_reader(&mut o, &both[..], svg), out)
}

const HTML_STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin-bottom: 0.2em; }
p.spprof-summary { color: #555; margin-top: 0; }
div.spprof-graph { border: 1px solid #ddd; }
table.spprof-top { border-collapse: collapse; font-size: 13px; margin-top: 0.5em; }
table.spprof-top th, table.spprof-top td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; }
table.spprof-top th { background: #f4f4f4; text-align: left; }
table.spprof-top td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.spprof-top td.code { font-family: monospace; }
";

fn pct(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// One HTML page with no external resource: the SVG flame graph inline (its script and style
/// included) and the [`HTML_TOP_FUNCTIONS`] functions with the most self weight (then total
/// weight), grouped by (function, file) as [`analysis::aggregate`] does; percentages are of the
/// profile's total weight.
pub fn write_html(store: &Store, opts: &Options, out: &mut impl Write) -> io::Result<()> {
    let mut svg = Vec::new();
    write_svg(store, opts, &mut svg)?;
    let svg = String::from_utf8(svg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // Inline SVG starts at its element: the XML declaration and DOCTYPE belong to files. Its
    // `onload` is not fired the same way by every browser when inline, so the page calls init().
    let start = svg.find("<!-- ").or_else(|| svg.find("<svg ")).unwrap_or(0);
    let svg = &svg[start..];
    let svg = svg.replacen(r#" onload="init(evt)""#, "", 1);

    let title = xml_escape(opts.title);
    let mut rows: Vec<_> = analysis::aggregate(store, Group::Function)
        .into_iter()
        .collect();
    // Self weight first; callers without self time by total weight rather than by name.
    rows.sort_by(|(ka, a), (kb, b)| {
        (b.self_weight, b.total_weight)
            .cmp(&(a.self_weight, a.total_weight))
            .then_with(|| ka.cmp(kb))
    });
    let total = analysis::total_weight(store);
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n\
         <h1>{title}</h1>\n<p class=\"spprof-summary\">{} samples, {} in total. \
         Click a frame to zoom, Ctrl-F to search.</p>\n<div class=\"spprof-graph\">\n",
        store.len(),
        opts.unit.format(total),
    )?;
    out.write_all(svg.as_bytes())?;
    write!(
        out,
        "\n</div>\n<h2>Top functions</h2>\n<table class=\"spprof-top\">\n<thead><tr>\
         <th>#</th><th>Function</th><th>File</th><th>Self</th><th>Self %</th>\
         <th>Total</th><th>Total %</th></tr></thead>\n<tbody>\n"
    )?;
    for (i, (key, t)) in rows.iter().take(HTML_TOP_FUNCTIONS).enumerate() {
        writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td class=\"code\">{}</td><td class=\"code\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{:.2}%</td>\
             <td class=\"n\">{}</td><td class=\"n\">{:.2}%</td></tr>",
            i + 1,
            xml_escape(&key.function),
            xml_escape(&key.filename),
            opts.unit.format(t.self_weight),
            pct(t.self_weight, total),
            opts.unit.format(t.total_weight),
            pct(t.total_weight, total),
        )?;
    }
    // init() is inferno's: it wires up search, zoom and the fluid width.
    out.write_all(
        b"</tbody>\n</table>\n\
          <script>if (typeof init === \"function\") init(null);</script>\n</body>\n</html>\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// main → hot (300 + 300), main → cold (100), main → hot → hot (50, recursive), one sample
    /// without a stack (20: not in the graphs, counted in the table's total).
    fn sample_store() -> Store {
        let mut s = Store::new(1 << 20);
        let t = s.add_thread(1, "main");
        let main = s.intern_frame("main", "app.py", 10, false).unwrap();
        let hot = s.intern_frame("hot", "app.py", 2, false).unwrap();
        let hot_inner = s.intern_frame("hot", "app.py", 3, false).unwrap();
        let cold = s.intern_frame("cold <&>", "lib.py", 7, false).unwrap();
        let mh = s.intern_stack([main, hot]).unwrap();
        let mc = s.intern_stack([main, cold]).unwrap();
        let mhh = s.intern_stack([main, hot, hot_inner]).unwrap();
        s.add_sample(0, 300, t, mh, true);
        s.add_sample(1, 300, t, mh, true);
        s.add_sample(2, 100, t, mc, true);
        s.add_sample(3, 50, t, mhh, true);
        s.add_sample(4, 20, t, crate::store::EMPTY_STACK, true);
        s
    }

    fn opts() -> Options<'static> {
        Options {
            title: "Test <graph>",
            unit: Unit::Nanoseconds,
        }
    }

    fn svg_of(store: &Store) -> String {
        let mut out = Vec::new();
        write_svg(store, &opts(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn svg_has_frames_weights_and_script() {
        let svg = svg_of(&sample_store());
        assert!(svg.starts_with("<?xml"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(SCRIPT_NOTICE) && SCRIPT_NOTICE.contains("CDDL-1.0"));
        assert!(svg.contains("Test &lt;graph&gt;"));
        assert!(svg.contains("hot (app.py:2)"));
        assert!(svg.contains("cold &lt;&amp;&gt; (lib.py:7)"));
        assert!(svg.contains(r#"total_samples="750""#));
        // Tooltips in microseconds (0.65 µs rounds to 1).
        assert!(svg.contains("µs"), "{svg}");
        assert!(
            svg.contains("function init(evt)"),
            "inferno's search/zoom script"
        );
        // Ours comes after inferno's, whose label function it replaces, inside the <svg>.
        let ours = svg.find(FIT_SCRIPT).expect("the label and resize script");
        assert!(svg.find("function init(evt)").unwrap() < ours);
        assert!(ours < svg.rfind("</svg>").unwrap());
        assert_eq!(svg, svg_of(&sample_store()), "colours are deterministic");
    }

    #[test]
    fn bytes_unit_labels_tooltips() {
        let mut out = Vec::new();
        let o = Options {
            title: "mem",
            unit: Unit::Bytes,
        };
        write_svg(&sample_store(), &o, &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("(650 bytes, "), "{svg}");
    }

    #[test]
    fn empty_store_gives_a_valid_svg() {
        let svg = svg_of(&Store::new(1 << 20));
        assert!(svg.contains("No samples"));
        assert!(svg.trim_end().ends_with("</svg>"));
        let mut out = Vec::new();
        write_html(&Store::new(1 << 20), &opts(), &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("No samples"));
    }

    #[test]
    fn html_is_self_contained_with_table() {
        let mut out = Vec::new();
        write_html(&sample_store(), &opts(), &mut out).unwrap();
        let html = String::from_utf8(out).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<?xml") && !html.contains("<!DOCTYPE svg"));
        assert!(!html.contains("onload="));
        for bad in ["src=\"http", "href=\"http", "url(http", "@import"] {
            assert!(!html.contains(bad), "{bad}");
        }
        let table = &html[html.find("<table").unwrap()..];
        let hot = table.find("<td class=\"code\">hot</td>").unwrap();
        let cold = table
            .find("<td class=\"code\">cold &lt;&amp;&gt;</td>")
            .unwrap();
        let main = table.find("<td class=\"code\">main</td>").unwrap();
        assert!(hot < cold && cold < main);
        // Of all 770 (the sample without a stack included): hot 650, main in total 750.
        assert!(table.contains("84.42%"), "{table}");
        assert!(table.contains("97.40%"), "{table}");
        assert!(html.contains("init(null)"));
    }

    /// The fill colour of the first frame whose tooltip starts with `label`.
    fn fill_of<'a>(svg: &'a str, label: &str) -> &'a str {
        let at = svg.find(&format!("<title>{label} (")).expect(label);
        let rest = &svg[at..];
        let fill = rest.find("fill=\"").unwrap() + 6;
        &rest[fill..fill + rest[fill..].find('"').unwrap()]
    }

    #[test]
    fn differential_colours_growth_red_and_shrink_blue() {
        let base = sample_store();
        // Current: hot doubled, cold the same; every line moved (an edit above them).
        let mut cur = Store::new(1 << 20);
        let t = cur.add_thread(1, "main");
        let main = cur.intern_frame("main", "app.py", 12, false).unwrap();
        let hot = cur.intern_frame("hot", "app.py", 4, false).unwrap();
        let cold = cur.intern_frame("cold <&>", "lib.py", 9, false).unwrap();
        let mh = cur.intern_stack([main, hot]).unwrap();
        let mc = cur.intern_stack([main, cold]).unwrap();
        cur.add_sample(0, 1200, t, mh, true);
        cur.add_sample(1, 100, t, mc, true);
        for normalize in [false, true] {
            let mut out = Vec::new();
            write_diff_svg(&base, &cur, &opts(), normalize, &mut out).unwrap();
            let svg = String::from_utf8(out).unwrap();
            assert!(svg.contains("function init(evt)"));
            // Red: rgb(255,c,c); blue: rgb(c,c,255).
            assert!(fill_of(&svg, "hot (app.py)").starts_with("rgb(255,"));
            let cold = fill_of(&svg, "cold &lt;&amp;&gt; (lib.py)");
            if normalize {
                // Its share fell from 100/750 to 100/1300.
                assert!(cold.ends_with(",255)"), "{cold}");
            } else {
                assert_eq!(cold, "rgb(250,250,250)", "unchanged");
            }
        }
        // Nothing in the current profile.
        let mut out = Vec::new();
        write_diff_svg(&base, &Store::new(1 << 20), &opts(), true, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("No samples"));
    }

    #[test]
    fn differential_input_ignores_lines() {
        let mut s = Store::new(1 << 20);
        let t = s.add_thread(1, "main");
        let f = |s: &mut Store, name, line| s.intern_frame(name, "a.py", line, false).unwrap();
        let (m1, m2, f2, f3) = (
            f(&mut s, "m", 1),
            f(&mut s, "m", 2),
            f(&mut s, "f", 2),
            f(&mut s, "f", 3),
        );
        for (stack, w) in [([m1, f2], 10), ([m1, f3], 5), ([m2, f2], 1)] {
            let id = s.intern_stack(stack).unwrap();
            s.add_sample(0, w, t, id, true);
        }
        let text = collapsed::write_labelled(&s, Value::Weight, collapsed::function_label);
        assert_eq!(text, "m (a.py);f (a.py) 16\n");
    }

    #[test]
    fn units_format_for_people() {
        assert_eq!(Unit::Nanoseconds.format(1_500_000_000), "1.50 s");
        assert_eq!(Unit::Nanoseconds.format(12_340_000), "12.3 ms");
        assert_eq!(Unit::Nanoseconds.format(999), "999 ns");
        assert_eq!(Unit::Bytes.format(3 << 20), "3.0 MiB");
        assert_eq!(Unit::Bytes.format(10), "10 B");
        assert_eq!(Unit::parse("bytes"), Some(Unit::Bytes));
        assert_eq!(Unit::parse("ns"), Some(Unit::Nanoseconds));
        assert_eq!(Unit::parse("s"), None);
    }
}
