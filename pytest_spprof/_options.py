"""The plugin's options, read once into a frozen :class:`Options`: a bad value or an output
that cannot be written is a ``pytest.UsageError`` before any test runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from spprof._api import MAX_INTERVAL_MS, check_interval_ms
from spprof._paths import check_writable

from ._budget import Budget, BudgetError, parse_percent, parse_time_ns

DEFAULT_TOLERANCE = "15%"
DEFAULT_NOISE_FLOOR = "2ms"


def usage(msg: str) -> pytest.UsageError:
    return pytest.UsageError(f"spprof: {msg}")


@dataclass(frozen=True)
class Options:
    #: "call" (the test's call only) or "all" (setup, call and teardown).
    phases: str
    #: Where profiles and summaries go.
    dir: Path
    #: Which tests get a profile file: "all", "failed" or "none"; and its format, "speedscope"
    #: or "pprof".
    save: str
    profile_format: str
    #: Tests listed in the summary.
    top: int
    #: Rounds of a test that looks over budget or regressed (the fastest counts).
    rounds: int
    interval_ms: float
    warn_only: bool
    markdown: Optional[Path]
    #: The ini budgets of every test (a marker overrides them).
    defaults: Budget
    tolerance_pct: float
    noise_floor_ns: int
    save_baseline: Optional[Path]
    compare_path: Optional[Path]
    #: Write the whole run as run.arrow.
    arrow: bool
    #: Processes running this run's tests: pytest-xdist's workers, else 1.
    workers: int

    @classmethod
    def parse(cls, config: pytest.Config) -> Options:
        def opt(name: str) -> Any:
            value = config.getoption(name)
            return config.getini(name) if value is None else value

        def path(value: Optional[str]) -> Optional[Path]:
            if value is None:
                return None
            p = Path(value)
            return p if p.is_absolute() else Path(config.invocation_params.dir) / p

        def integer(name: str, default: int, minimum: int = 0) -> int:
            value = opt(name)
            if value in (None, ""):
                return default
            try:
                n = int(value)
                if n < minimum:
                    raise ValueError
            except ValueError:
                raise usage(f"--{name.replace('_', '-')} must be an integer >= {minimum}, not {value!r}") from None
            return n

        phases = opt("spprof_phases") or "call"
        if phases not in ("call", "all"):
            raise usage(f"--spprof-phases must be 'call' or 'all', not {phases!r}")
        out = Path(opt("spprof_dir") or ".spprof")
        if not out.is_absolute():
            out = Path(config.rootpath) / out
        save = opt("spprof_save") or "failed"
        if save not in ("all", "failed", "none"):
            raise usage(f"--spprof-save must be all, failed or none, not {save!r}")
        profile_format = opt("spprof_profile_format") or "speedscope"
        if profile_format not in ("speedscope", "pprof"):
            raise usage(f"--spprof-profile-format must be speedscope or pprof, not {profile_format!r}")
        interval = (config.getoption("spprof_interval") or config.getini("spprof_interval")
                    or config.getini("spprof_interval_ms") or "1")
        try:
            interval_ms = check_interval_ms(float(interval))
        except ValueError:
            raise usage(f"--spprof-interval must be a number of milliseconds from 1 to {MAX_INTERVAL_MS}, "
                        f"not {interval!r}") from None
        try:
            defaults = Budget()
            for key, ini in (("cpu", "spprof_cpu_budget"), ("wall", "spprof_wall_budget"),
                             ("memory", "spprof_memory_budget"), ("peak_memory", "spprof_peak_memory_budget")):
                defaults.set(key, config.getini(ini) or None, f"ini option {ini}")
            tolerance_pct = parse_percent(opt("spprof_tolerance") or DEFAULT_TOLERANCE, "--spprof-tolerance",
                                          bare_is_percent=True)
            noise_floor_ns = parse_time_ns(opt("spprof_noise_floor") or DEFAULT_NOISE_FLOOR, "--spprof-noise-floor")
        except BudgetError as exc:
            raise usage(str(exc)) from None
        default_baseline = config.getini("spprof_baseline") or str(out / "baseline.json")
        save_baseline, compare = config.getoption("spprof_save_baseline"), config.getoption("spprof_compare")
        options = cls(
            phases=phases, dir=out, save=save, profile_format=profile_format, top=integer("spprof_top", 10),
            rounds=integer("spprof_rounds", 1, minimum=1), interval_ms=interval_ms,
            warn_only=bool(config.getoption("spprof_warn_only")) or config.getini("spprof_warn_only"),
            markdown=path(opt("spprof_markdown") or None), defaults=defaults, tolerance_pct=tolerance_pct,
            noise_floor_ns=noise_floor_ns,
            save_baseline=path(default_baseline if save_baseline == "" else save_baseline),
            compare_path=path(default_baseline if compare == "" else compare),
            arrow=not config.getoption("spprof_no_arrow") and bool(config.getini("spprof_arrow")),
            workers=_workers(config))
        # Outputs that could not be written fail now, not after the run.
        for target, option, directory in ((out, "--spprof-dir", True),
                                          (options.save_baseline, "--spprof-save-baseline", False),
                                          (options.markdown, "--spprof-markdown", False)):
            if target is not None:
                try:
                    check_writable(target, option, directory=directory, creates_folders=True)
                except ValueError as exc:
                    raise usage(str(exc)) from None
        return options

    def make_dir(self, sub: str = "") -> Path:
        """The output directory (or its folder ``sub``), created if needed. A directory this
        plugin creates gets a ``.gitignore`` that keeps its contents out of version control."""
        if not self.dir.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / ".gitignore").write_text("# written by pytest --spprof\n*\n", encoding="utf-8")
        folder = self.dir / sub
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _workers(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    if getattr(config.option, "dist", "no") == "no":
        return 1
    return len(getattr(config.option, "tx", None) or ()) or 1
