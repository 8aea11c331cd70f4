"""Who finishes the run, by pytest-xdist role, as pytest-cov does it.

Without xdist one process does everything (:class:`Single`). Under xdist each worker finishes
its own tests (profile files, hottest functions, baseline entries) and leaves a part (JSON, and
its run file) in a folder the controller named (:class:`Worker`); the controller merges the
parts into the usual outputs once every worker is done (:class:`Controller`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union


class Single:
    """The one process of a run without xdist."""

    writes_outputs = True

    def __init__(self, output_dir: Callable[[], Path]) -> None:
        self._output_dir = output_dir

    def results_journal(self) -> Path:
        return self._output_dir() / "results.jsonl"

    def run_file(self) -> Path:
        return self._output_dir() / "run.arrow"


class Worker:
    """An xdist worker: its files go to the parts folder, named by its worker id."""

    writes_outputs = False

    def __init__(self, workerinput: Any, output_dir: Callable[[], Path]) -> None:
        given = workerinput.get("spprof_parts")  # absent when the controller runs without spprof
        self.parts = Path(given) if given else Path(tempfile.mkdtemp(prefix=".xdist-parts-", dir=output_dir()))
        self.name = workerinput["workerid"]

    def results_journal(self) -> Path:  # beside the part the worker writes at its end
        return self.parts / f"{self.name}.results.jsonl"

    def run_file(self) -> Path:  # a part, merged by the controller
        return self.parts / f"{self.name}.arrow"

    def part(self) -> Path:
        return self.parts / f"{self.name}.json"


class Controller(Single):
    """The xdist controller: it runs no test, names the parts folder and merges the parts."""

    def __init__(self, output_dir: Callable[[], Path]) -> None:
        super().__init__(output_dir)
        self._parts: Optional[Path] = None

    @property
    def parts(self) -> Path:  # made on first use, under the output folder
        if self._parts is None:
            self._parts = Path(tempfile.mkdtemp(prefix=".xdist-parts-", dir=self._output_dir()))
        return self._parts


Role = Union[Single, Worker, Controller]


def role_of(config: Any, output_dir: Callable[[], Path]) -> Role:
    workerinput = getattr(config, "workerinput", None)  # set by xdist on its workers only
    if workerinput is not None:
        return Worker(workerinput, output_dir)
    if config.pluginmanager.has_plugin("dsession"):
        return Controller(output_dir)
    return Single(output_dir)
