"""The documentation stays true: README.md and docs/*.md.

- every relative link points at a file of the repository (and a ``#fragment`` at a heading of it);
- every ```python block runs as pasted, in a fresh interpreter whose working directory is empty,
  unless its first line is ``# not run: <why>`` (for the few that need something a fresh folder
  does not have);
- the ```ipython blocks of each page (``%%spprof`` cells) run in order in one IPython shell, as a
  notebook's cells would;
- the README's first command is the one CI and newcomers run.

Nothing here asserts on timings: the blocks only have to run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
#: docs/design.md is the design document: its links are checked, it has no code blocks to run.
RUN_PAGES = [page for page in PAGES if page.name != "design.md"]

#: The first line of a ```python block that is not run, followed by the reason.
NOT_RUN = "# not run:"
FIRST_COMMAND = "pip install . && python -m spprof -o profile.json examples/hotspots.py"
TIMEOUT_S = 120

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(page: Path, language: str) -> List[Tuple[int, str]]:
    """(line number, code) of the fenced blocks of ``language`` in ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2))
            for m in FENCE.finditer(text) if m.group(1) == language]


def without_fences(text: str) -> str:
    """The text with fenced blocks blanked (a ``# comment`` in them is not a heading)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code blanked, so that links inside them are not links."""
    return re.sub(r"`[^`\n]*`", "``", without_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    return {slug(h) for h in HEADING.findall(without_fences(page.read_text(encoding="utf-8")))}


def test_pages_found():
    names = {page.name for page in DOCS}
    assert {"cli.md", "library.md", "arrow.md", "pytest.md", "jupyter.md", "memory.md", "design.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:: not a file of ours
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file {dest}")
        elif ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target}: outside the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {rel(dest)}")
    assert not broken, f"{rel(page)} has broken links:\n" + "\n".join(broken)


def test_readme_first_command():
    bash = blocks(README, "bash")
    assert bash, "README.md has no ```bash block"
    lines = [line.strip() for line in bash[0][1].splitlines() if line.strip()]
    assert lines and lines[0] == FIRST_COMMAND


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_not_installed_from_pypi(page):
    """spprof is not on PyPI: installs are from the checkout (pip install . / '.[extra]')."""
    assert not re.search(r"pip install\s+spprof\b", page.read_text(encoding="utf-8"))


PYTHON_BLOCKS = [pytest.param(page, line, code, id=f"{rel(page)}:{line}")
                 for page in RUN_PAGES for line, code in blocks(page, "python")]
IPYTHON_PAGES = [page for page in RUN_PAGES if blocks(page, "ipython")]


def test_blocks_found():
    assert len(PYTHON_BLOCKS) >= 10
    assert README in IPYTHON_PAGES


def run(args: List[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(args, cwd=str(cwd), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} still ran after {TIMEOUT_S} s:\n{exc.stdout or ''}{exc.stderr or ''}")
    assert done.returncode == 0, f"{what} failed (exit status {done.returncode}):\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize(("page", "line", "code"), PYTHON_BLOCKS)
def test_python_block_runs(page, line, code, tmp_path):
    first = code.splitlines()[0] if code.strip() else ""
    if first.startswith(NOT_RUN):
        reason = first[len(NOT_RUN):].strip()
        assert reason, f"{rel(page)}:{line}: say why the block is not run"
        pytest.skip(f"{rel(page)}:{line}: {reason}")
    run([sys.executable, "-c", code], tmp_path, f"the python block at {rel(page)}:{line}")


#: Runs cells (a JSON list) in one IPython shell; the first failing cell ends it with status 1.
IPYTHON_RUNNER = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
for line, cell in json.loads(sys.argv[1]):
    result = shell.run_cell(cell)
    if not result.success:
        sys.exit(f"the cell at line {line} failed: {result.error_before_exec or result.error_in_exec!r}")
"""


@pytest.mark.parametrize("page", IPYTHON_PAGES, ids=rel)
def test_ipython_cells_run(page, tmp_path):
    pytest.importorskip("IPython")
    cells = blocks(page, "ipython")
    run([sys.executable, "-c", IPYTHON_RUNNER, json.dumps(cells)], tmp_path, f"the ipython cells of {rel(page)}")
