"""Flame graphs as a person sees them: drawn by headless Chromium (Debian's ``chromium``), in the
notebook's sandboxed iframe, as a saved ``.svg`` and ``.html``, and as a differential graph.

Each page gets a small measuring script that runs after the graph's own scripts (inferno's init,
then spprof's label and resize code) and leaves what was drawn in an attribute of the top
document: the widths of the frames' rectangles, their labels and tooltips (and, after a click on
a frame, that inferno zoomed to it). Chromium's
``--dump-dom`` prints that document; ``--screenshot`` keeps a picture of it next to the test's
files. The profile's frames have known weights, so the expected widths are known.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

import spprof
import spprof.flamegraph

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")

PAGE_WIDTH = 1100
APP = "/srv/app/src/records/parsing.py"

# After the page's load handlers and inferno's setTimeout(0): every frame's rectangle, label and
# tooltip, and the width of the picture. In an iframe, posted to the page that holds it.
MEASURE = """
<script>
window.addEventListener("load", function () { setTimeout(function () {
  var svg = document.querySelector("svg");
  var out = {width: svg.getBoundingClientRect().width, frames: []};
  document.querySelectorAll("#frames > g").forEach(function (g) {
    out.frames.push({title: g.querySelector("title").textContent,
                     label: g.querySelector("text").textContent,
                     width: g.querySelector("rect").getBoundingClientRect().width});
  });
  var text = JSON.stringify(out);
  if (window.parent !== window) { window.parent.postMessage(text, "*"); }
  else { document.documentElement.setAttribute("data-drawn", text); }
}, 500); });
</script>
"""
# Clicks the frame whose tooltip starts with parse_records (inferno zooms to it), then measures.
ZOOM = MEASURE.replace("setTimeout(function () {", """setTimeout(function () {
  var target = Array.prototype.find.call(document.querySelectorAll("#frames > g"), function (g) {
    return g.querySelector("title").textContent.indexOf("parse_records") === 0; });
  target.querySelector("rect").dispatchEvent(new MouseEvent("click", {bubbles: true}));
""", 1).replace("}, 500); });", "}, 800); });")
RECEIVE = """
<script>
window.addEventListener("message", function (e) {
  document.documentElement.setAttribute("data-drawn", e.data);
});
</script>
"""


def profile(weights):
    """A profile whose stacks are main → (function, weight ms) under ``APP``."""
    now = datetime.now()
    samples = []
    for i, (function, ms) in enumerate(weights):
        frames = [spprof.Frame("main", APP, 3), spprof.Frame(function, APP, 40 + i)]
        samples.append(spprof.Sample(i, 1, "MainThread", frames, weight_ns=int(ms * 1e6)))
    return spprof.Profile(now, now, 1.0, samples, 0, "3.x", "linux")


WEIGHTS = [("parse_records", 600), ("helper_function_with_a_long_name", 300), ("tiny", 5), ("rest", 95)]


def add_script(svg_file: Path, script: str) -> None:
    """Put ``script`` at the end of an SVG file (as CDATA: it is XML)."""
    script = script.replace("<script>", "<script><![CDATA[").replace("</script>", "]]></script>")
    svg_file.write_text(svg_file.read_text().replace("</svg>", script + "</svg>"))


def draw(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` in headless Chromium; what the measuring script found."""
    shot = tmp_path / (page.name + ".png")
    # The sandboxed iframe in the page's own process: the virtual time the budget gives runs its
    # timers too (out of process, they never fired before the DOM was dumped).
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={PAGE_WIDTH + 100},900",
              "--virtual-time-budget=5000", "--disable-site-isolation-trials",
              "--disable-features=IsolateOrigins,site-per-process", f"--user-data-dir={tmp_path / 'chromium'}"]
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 1000, "Chromium took no screenshot"
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    m = re.search(r'data-drawn="([^"]*)"', dom)
    assert m, f"the graph's scripts did not finish: {dom[:2000]}"
    return json.loads(html.unescape(m.group(1)))


def check(drawn: dict, min_width: float) -> None:
    assert drawn["width"] >= min_width, f"the graph is {drawn['width']} px wide"
    frames = {f["title"].split(" (")[0]: f for f in drawn["frames"]}
    total = frames["main"]["width"]
    assert total >= min_width * 0.95
    for function, ms in WEIGHTS:  # widths in proportion to the weights
        assert abs(frames[function]["width"] / total - ms / 1000) < 0.01, (function, frames[function])
    parse = frames["parse_records"]
    # The tooltip: function, file:line, time and share.
    assert parse["title"] == f"parse_records ({APP}:40) (600,000 µs, 60.00%)", parse["title"]
    # Labels keep the function name whole; the path is what gets shortened, or left out.
    assert parse["label"].startswith("parse_records (") and parse["label"].endswith("parsing.py:40)")
    helper = frames["helper_function_with_a_long_name"]["label"]
    assert helper.startswith("helper_function_with_a_long_name"), helper
    assert frames["tiny"]["label"] in ("", "tiny")  # a frame too narrow for its name has no label
    for f in drawn["frames"]:
        name = f["title"].split(" (")[0]
        assert not f["label"] or f["label"].startswith(name) or f["label"].startswith("\u2026."), f


def test_notebook_display_fills_its_output_and_draws_every_frame(tmp_path):
    from spprof_jupyter._result import CellProfile

    output = CellProfile(profile(WEIGHTS))._repr_html_()
    # The measuring script goes into the iframe's document, after the graph.
    m = re.search(r'srcdoc="([^"]*)"', output)
    doc = html.unescape(m.group(1)).replace("</body>", MEASURE + "</body>")
    output = output[:m.start(1)] + html.escape(doc, quote=True) + output[m.end(1):]
    page = tmp_path / "notebook.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8">{RECEIVE}</head><body>'
                    f'<div class="output" style="width:{PAGE_WIDTH}px">{output}</div></body></html>')
    check(draw(page, tmp_path), min_width=PAGE_WIDTH * 0.95)


def test_saved_svg_and_html_fill_the_window(tmp_path):
    p = profile(WEIGHTS)
    svg = tmp_path / "graph.svg"
    p.save(svg)
    add_script(svg, MEASURE)
    check(draw(svg, tmp_path), min_width=PAGE_WIDTH * 0.95)
    page = tmp_path / "graph.html"
    p.save(page)
    page.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    check(draw(page, tmp_path), min_width=PAGE_WIDTH * 0.85)  # the page has margins


def test_a_click_zooms_to_the_frame(tmp_path):
    svg = tmp_path / "zoom.svg"
    profile(WEIGHTS).save(svg)
    add_script(svg, ZOOM)
    frames = {f["title"].split(" (")[0]: f for f in draw(svg, tmp_path)["frames"]}
    # parse_records now spans the picture, as its caller does; its sibling is gone from view.
    assert frames["parse_records"]["width"] >= 0.99 * frames["main"]["width"], frames["parse_records"]
    assert frames["helper_function_with_a_long_name"]["width"] < 1, frames["helper_function_with_a_long_name"]


def test_differential_graph_draws_the_current_profile(tmp_path):
    before = profile([("parse_records", 300), ("helper_function_with_a_long_name", 600), ("tiny", 5),
                      ("rest", 95)])
    svg = tmp_path / "diff.svg"
    spprof.flamegraph.diff_svg(before, profile(WEIGHTS), svg)
    add_script(svg, MEASURE)
    drawn = draw(svg, tmp_path)
    assert drawn["width"] >= PAGE_WIDTH * 0.95
    frames = {f["title"].split(" (")[0]: f for f in drawn["frames"]}
    assert abs(frames["parse_records"]["width"] / frames["main"]["width"] - 0.6) < 0.01
    assert frames["parse_records"]["label"].startswith("parse_records")
