"""Flame graphs: SVG, self-contained HTML, the differential SVG, and their file formats."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest

import spprof
from spprof import flamegraph
from workloads import run_mix

SVG_NS = "{http://www.w3.org/2000/svg}"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# The two named functions are their own leaf frames (no call inside the loop), so self time
# lands on them.
def hot_function(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def cold_function(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def record(hot_share: float, cpu_seconds: float) -> spprof.Profile:
    with spprof.Profiler(interval_ms=1) as p:
        run_mix({"hot_function": hot_function, "cold_function": cold_function},
                {"hot_function": hot_share, "cold_function": 1 - hot_share}, cpu_seconds)
    return p.profile


@pytest.fixture(scope="module")
def profile():
    return record(0.8, 0.6)


def titles(svg_root):
    return [t.text or "" for t in svg_root.iter(f"{SVG_NS}title")]


def frame_fills(svg_text: str, function: str):
    """Fill colours of the frames of ``function`` (tooltip ``function (file:line) (...)``)."""
    root = ET.fromstring(svg_text)
    frames = next(e for e in root.iter(f"{SVG_NS}svg") if e.get("id") == "frames")
    return [g.find(f"{SVG_NS}rect").get("fill") for g in frames
            if g.findtext(f"{SVG_NS}title", "").startswith(f"{function} (")]


def test_svg_is_well_formed_and_names_the_functions(profile):
    svg = profile.to_flamegraph_svg(title="my <profile>")
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG_NS}svg"
    names = titles(root)
    assert any(t.startswith("hot_function (") for t in names), names
    assert any(t.startswith("cold_function (") for t in names), names
    # Interactive: inferno's script (search and zoom) is embedded, and the title escaped.
    script = "".join(s.text or "" for s in root.iter(f"{SVG_NS}script"))
    assert "function search(" in script and "function zoom(" in script
    assert any(t.text == "my <profile>" for t in root.iter(f"{SVG_NS}text"))
    # Tooltips carry the time: weights are nanoseconds, shown in microseconds.
    assert any(" µs, " in t for t in names)


def test_html_is_self_contained_with_the_graph_and_top_table(profile):
    html = profile.to_html()
    assert html.startswith("<!DOCTYPE html>")
    # No network reference: no external script, stylesheet, image or import.
    assert not re.search(r"<script[^>]*\ssrc\s*=", html, re.I)
    assert not re.search(r"<link\b", html, re.I)
    assert "@import" not in html
    assert not re.search(r"""url\(\s*['"]?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"""\b(src|href)\s*=\s*['"]?\s*(https?:)?//""", html, re.I)
    # The only attributes with an http(s) URL are the SVG's XML namespace names.
    for m in re.finditer(r"""([\w:.-]+)\s*=\s*['"]\s*https?://""", html):
        assert m.group(1).startswith("xmlns"), m.group(0)

    # The SVG is inline and well-formed, with its script; the page starts it.
    svg = html[html.index("<svg "):html.rindex("</svg>") + len("</svg>")]
    root = ET.fromstring(svg)
    assert any(t.startswith("hot_function (") for t in titles(root))
    assert "init(null)" in html

    # The top-functions table: hot_function has the most self time, then cold_function.
    table = html[html.index("<table"):html.index("</table>")]
    rows = re.findall(r"<tr><td class=\"n\">(\d+)</td><td class=\"code\">([^<]*)</td>"
                      r"<td class=\"code\">([^<]*)</td>.*?</tr>", table)
    assert rows[0][:2] == ("1", "hot_function"), rows[:3]
    assert rows[1][1] == "cold_function", rows[:3]
    assert rows[0][2].endswith("test_flamegraph.py")
    assert 2 <= len(rows) <= 30
    assert "Self %" in table and "Total %" in table


def test_html_escapes_the_title(profile):
    html = profile.to_html(title="<script>alert(1)</script>")
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("name, fmt, kind", [
    ("p.svg", None, "svg"), ("p.SVG", None, "svg"), ("p.html", None, "html"),
    ("p.htm", None, "html"), ("graph.out", "svg", "svg"), ("page.out", "html", "html"),
    ("p.svg", "html", "html"),
])
def test_save_by_extension_or_format(profile, tmp_path, name, fmt, kind):
    path = profile.save(tmp_path / name, format=fmt)
    text = path.read_text(encoding="utf-8")
    if kind == "svg":
        ET.fromstring(text)
        assert text.startswith("<?xml") and "hot_function (" in text
    else:
        assert text.startswith("<!DOCTYPE html>") and "<svg " in text and "hot_function" in text


def test_unknown_format_lists_the_supported_ones(profile, tmp_path):
    with pytest.raises(ValueError, match="speedscope, collapsed, svg, html"):
        profile.save(tmp_path / "p.svg", format="png")
    with pytest.raises(ValueError, match=r"\.svg \(svg\).*\.html \(html\), \.htm \(html\)"):
        profile.save(tmp_path / "p.png")
    assert not list(tmp_path.iterdir())


def test_empty_profile_still_gives_a_valid_graph_and_page(tmp_path):
    p = spprof.Profile(start_time=datetime.now(), end_time=datetime.now(), interval_ms=10,
                       samples=[], dropped_count=0, python_version="3.x", platform="test")
    ET.fromstring(p.save(tmp_path / "e.svg").read_text())
    assert "No samples" in p.save(tmp_path / "e.html").read_text()


def test_differential_graph_is_red_where_time_grew(tmp_path):
    # Recorded from one call site, so that the stacks above the workload are the same: hot_function
    # takes 30 % of the time, then 80 %.
    baseline, current = (record(hot_share, 0.5) for hot_share in (0.3, 0.8))
    out = tmp_path / "diff.svg"
    svg = flamegraph.diff_svg(baseline, current, out)
    assert out.read_text(encoding="utf-8") == svg
    root = ET.fromstring(svg)
    names = titles(root)
    assert any(t.startswith("hot_function (") for t in names)
    assert any(t.startswith("cold_function (") for t in names)
    # Differential tooltips carry the change ("...%; +12.34%)"), and colours are red/blue shades:
    # red rgb(255,c,c) for growth, blue rgb(c,c,255) for a smaller share.
    assert any(re.search(r"; [+-]\d+\.\d\d%\)$", t) for t in names), names[:5]
    assert any(f.startswith("rgb(255,") for f in frame_fills(svg, "hot_function"))
    assert any(f.endswith(",255)") for f in frame_fills(svg, "cold_function"))
    # The other way round, hot_function shrank.
    reverse = flamegraph.diff_svg(current, baseline)
    assert any(f.endswith(",255)") for f in frame_fills(reverse, "hot_function"))
    # Absolute weights: the subtitle says so, and it still renders both functions.
    absolute = flamegraph.diff_svg(baseline, current, normalize=False, title="abs")
    assert "red: more than in the baseline" in absolute
    assert frame_fills(absolute, "hot_function") and frame_fills(absolute, "cold_function")


def test_cli_writes_svg_and_html(tmp_path):
    for name, extra in [("out.svg", []), ("out.page", ["--format", "html"])]:
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "spprof", "-i", "1", "-o", str(out), *extra,
                            str(EXAMPLES / "hotspots.py"), "5"],
                           capture_output=True, text=True, cwd=Path(__file__).parent, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "open it in a browser" in r.stderr
        text = out.read_text(encoding="utf-8")
        assert "slow_sum" in text
        assert ("<!DOCTYPE html>" in text) == (name == "out.page")
