"""Append-only journals: what a finished test leaves on disk at once.

The run's files (results.json, the baseline, run.arrow) are written when the session ends. So
that a run killed before then (SIGKILL, an out-of-memory kill, a CI timeout) loses at most the
test in flight, every finished test is first appended, as one JSON line, to a journal:

- ``<spprof dir>/results.jsonl`` (an xdist worker's in the run's parts folder): the test's record,
  as in results.json;
- ``<baseline>.<pid>.journal`` next to the baseline being saved: the test's baseline entry.

The end of the session compacts them into the real files (each written whole or not at all,
``write_whole``) and removes them. A journal left by a
run that was killed is compacted by the next step that reads it: baseline journals by the next
load of the baseline, a worker's results journal by the xdist controller.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, List, Optional, TextIO


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Optional[TextIO] = None

    def append(self, entry: Any) -> None:
        """Write one entry as a line and hand it to the kernel (it survives the process)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # kept open for the run
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """At the end of the run (the file stays, for whoever compacts it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Once compacted into the real file."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def write_whole(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file beside it, removed if the write fails (a full
    disk): a reader never sees half a file, and a failure leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read(path: Path) -> Iterator[Any]:
    """The entries of a journal, without a last line cut short by a kill."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                return


def baseline_journals(baseline: Path) -> List[Path]:
    """The journals of runs that saved entries for ``baseline``, oldest first."""
    found = baseline.parent.glob(baseline.name + ".*.journal") if baseline.parent.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def baseline_journal(baseline: Path) -> Journal:
    return Journal(baseline.with_name(f"{baseline.name}.{os.getpid()}.journal"))
