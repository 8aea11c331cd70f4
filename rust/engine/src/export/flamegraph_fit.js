// spprof's additions to inferno's flame-graph script (which defines init, find_child,
// format_percent, frames and known_font_width before this runs).
//
// Labels: a frame is "function (path:line)"; when that does not fit, the path is shortened from
// its start (…/pkg/mod.py:3), then left out, then the qualifiers of the name (….<genexpr>). The
// function's own name is never cut: a frame too narrow for it has no label (its tooltip has
// everything). inferno cuts from the left, which turned
// "parse_records (<ipython-input-1-…>:3)" into "..put-1-…>:3)". These replace inferno's
// update_text_for_elements (called on init, zoom and resize) and update_text.
function label_candidates(e) {
    // The title is "<frame> (<weight>, <share>)".
    var name = find_child(e, "title").textContent.replace(/\s*\([^(]*\)$/, "");
    var candidates = [name];
    var m = /^(.*?) \((.*)\)$/.exec(name);
    if (m) {
        var parts = m[2].split("/");
        for (var i = 1; i < parts.length; i++) {
            candidates.push(m[1] + " (\u2026/" + parts.slice(i).join("/") + ")");
        }
        var names = m[1].split(".");
        for (var k = 0; k < names.length; k++) {
            candidates.push((k ? "\u2026." : "") + names.slice(k).join("."));
        }
    }
    return candidates;
}

function update_text(e) {
    var r = find_child(e, "rect");
    var t = find_child(e, "text");
    var width = frames.attributes.width.value;
    var w = parseFloat(r.attributes.width.value) * width / 100 - 3;
    t.attributes.x.value = format_percent(parseFloat(r.attributes.x.value) + (100 * 3 / width));
    t.textContent = "";
    if (w < 2 * known_font_width) {
        return;
    }
    var candidates = label_candidates(e);
    for (var i = 0; i < candidates.length; i++) {
        // A monospace font is measured by counting; another one by laying the text out.
        var fits = known_font_width > 0 ? candidates[i].length * known_font_width <= w
            : (t.textContent = candidates[i], t.getComputedTextLength() <= w);
        if (fits) {
            t.textContent = candidates[i];
            return;
        }
    }
    t.textContent = "";
}

function update_text_for_elements(elements) {
    for (var i = 0; i < elements.length; i++) {
        update_text(elements[i]);
    }
}

// inferno's fluid mode removes the picture's width. A file's root <svg> then fills the window, but
// an <svg> inline in a page (spprof's HTML page, the notebook's iframe) was 300 px wide.
(document.currentScript && document.currentScript.ownerSVGElement || document.querySelector("svg"))
    .style.cssText += ";display:block;width:100%";

// inferno sizes the frames from the picture's width when init() runs and on window resizes. A
// picture laid out later (an iframe still hidden, a notebook output drawn late) had width 0 then,
// and drew no frames: every change of its size is passed on as a resize.
if (typeof ResizeObserver === "function") {
    new ResizeObserver(function () {
        window.dispatchEvent(new Event("resize"));
    }).observe(document.documentElement);
}
