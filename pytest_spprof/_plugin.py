"""The active part of the plugin, imported only when ``--spprof`` (or ``spprof = true``) is on:
pytest's hooks, which delegate to the options (_options), the measurement (_measure), the
verdicts (_judge), the text (_report) and the files of the run (_journal, _baseline, _run)."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

import pytest

from . import _baseline, _journal, _verdict, _xdist, budget_key, result_key, results_key
from ._budget import Budget, BudgetError, SpprofBudgetWarning, budget_of
from ._judge import Judge, memory_problems
from ._measure import REPEAT_MARK, STOPPED_PROFILER, Measurer, ProfiledTest
from ._options import Options, usage
from ._report import RunReport, failure_message, hottest, record_culprits, record_properties, safe_name

_call_outcome_key = pytest.StashKey[str]()
#: The file name ending of a test's profile, by --spprof-profile-format.
PROFILE_SUFFIXES = {"speedscope": ".speedscope.json", "pprof": ".pb.gz"}


class SpprofPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.options = opts = Options.parse(config)
        self.measure = Measurer(opts.interval_ms, str(config.rootpath))
        self.judge = Judge(opts, self.measure)
        self.results: Dict[str, ProfiledTest] = {}
        config.stash[results_key] = self.results
        self.report = RunReport(self.results, opts.phases, opts.top, opts.warn_only, opts.dir,
                                compare_path=opts.compare_path, workers=opts.workers,
                                baseline_workers=self.judge.baseline_workers,
                                single_recording=bool(self.judge.baseline) and self.judge.typical_spread is None,
                                save_baseline=opts.save_baseline)
        #: The tests' recordings in the baseline being saved, before this run adds its own.
        self._earlier: Dict[str, Tuple[float, ...]] = {}
        if opts.save_baseline is not None:  # fail now, not after the run, on a damaged file
            try:
                before = _baseline.environment(_baseline.load(opts.save_baseline, False)).get("tests", {})
            except _baseline.BaselineError as exc:
                raise usage(str(exc)) from None
            self._earlier = {test: rec for test, e in before.items() if (rec := _baseline.recordings(e))}
        #: Baseline entries of the passed tests, made as each test finishes.
        self.baseline_tests: Dict[str, Any] = {}
        self._results: Optional[_journal.Journal] = None
        self._baseline_file: Optional[_journal.Journal] = None
        self._sigterm_handler: Any = None

    # -- collection: budgets are read (and checked) here ------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: List[pytest.Item]) -> None:
        for item in items:
            try:
                budget = budget_of(item, self.options.defaults)
            except BudgetError as exc:
                raise usage(str(exc)) from None
            item.stash[budget_key] = budget
            if budget.watches_memory() and self.measure.memprof is None:
                self.measure.watch_memory()

    # -- measuring ---------------------------------------------------------------------------------

    @staticmethod
    def _budget(item: pytest.Item) -> Optional[Budget]:
        return item.stash.get(budget_key, None)

    def _begin(self, item: pytest.Item) -> None:
        budget = self._budget(item)
        self.measure.begin(item.nodeid, budget is not None and budget.watches_memory())

    def _end(self, item: pytest.Item) -> Optional[ProfiledTest]:
        result = self.measure.end(item.nodeid)
        if result is None:
            return None
        if memory_problems(self._budget(item), result):  # who allocated, before the next test resets it
            result._allocations = self.measure.allocations()
        entry = self.judge.baseline.get(item.nodeid)
        if entry is not None:
            result.baseline_cpu_ns = entry.cpu_ns
        self.results[item.nodeid] = result
        item.stash[result_key] = result
        return result

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        if self.options.phases == "all":
            self._begin(item)
        yield

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, None]:
        restore = self.measure.watch_subtest_reports(item)
        try:
            yield from self._called(item)
        finally:
            restore()

    def _called(self, item: pytest.Item) -> Generator[None, Any, None]:
        if self.options.phases != "call":
            yield
            return
        self._begin(item)
        outcome = yield
        result = self._end(item)
        if result is None:
            return
        # A unittest.TestCase keeps its failures and skips on the item (``_excinfo``) until its
        # report is made: the call raised nothing, but the test did not pass either.
        if outcome.excinfo is None and not getattr(item, "_excinfo", None):
            if self.options.save_baseline is not None:
                result.speed_ns = self.judge.speed_now(max_age_s=2.0)
                result.warm_ns, result.warm_speed_ns = self.measure.warm_rounds(item, result, _verdict.ROUNDS - 1)
            self.judge.confirm(item, result)
            if self.options.rounds > 1 and self.judge.over(self._budget(item), result):
                self.measure.more_rounds(item, result, self.options.rounds - 1)
        record_properties(item, result)

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item,
                                nextitem: Optional[pytest.Item]) -> Generator[None, None, None]:
        yield
        if self.options.phases == "all":
            result = self._end(item)
            if result is not None:
                record_properties(item, result)

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> Optional[Tuple[str, str, str]]:
        # Under pytest-xdist the controller, which repeats nothing, gets the workers' reports:
        # the mark travels with them (pytest serializes a report's extra attributes).
        return ("", "", "") if getattr(report, REPEAT_MARK, False) else None

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        began = self.measure.reporting_began()
        yield
        self.measure.reporting_ended(began)

    # -- verdicts ------------------------------------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        began = self.measure.reporting_began()
        try:
            yield from self._made_report(item, call)
        finally:
            self.measure.reporting_ended(began)

    def _made_report(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        outcome = yield
        if self.measure.repeating:
            if outcome.exception is None:  # a subtest's: not a new result (see Measurer.run_again)
                setattr(outcome.get_result(), REPEAT_MARK, True)
            return
        rep: pytest.TestReport = outcome.get_result()
        if call.when == "call":
            item.stash[_call_outcome_key] = rep.outcome if not hasattr(rep, "wasxfail") else "xfail"
        if call.when != ("call" if self.options.phases == "call" else "teardown"):
            return
        result = item.stash.get(result_key, None)
        if result is None:
            return
        own = item.stash.get(_call_outcome_key, "skipped")
        result.outcome = own if rep.outcome == "passed" else rep.outcome
        # The test's own failure (or skip) is its report; spprof adds nothing to it.
        if own == "passed" and rep.outcome == "passed":
            if STOPPED_PROFILER in result.problems:  # no figures to judge: fail this test only
                self.report.problems += 1
                rep.outcome, rep.longrepr, result.outcome = "failed", STOPPED_PROFILER, "failed"
            else:
                self._judge(item, result, rep)
        self._settle(result)
        item.ihook.pytest_spprof_result(item=item, result=result)

    def _judge(self, item: pytest.Item, result: ProfiledTest, rep: pytest.TestReport) -> None:
        budget = self._budget(item)
        problems = self.judge.problems(item, budget, result)
        if not problems:
            return
        self.report.problems += 1
        result.problems = problems
        if result.culprit is not None:
            item.user_properties.append(("spprof_culprit", result.culprit[0]))  # teardown report: JUnit
        message = failure_message(result, problems, self.judge.regressed(result) and len(problems) == 1,
                                  self.measure.profile_of(result),
                                  memory_only=problems == memory_problems(budget, result))
        if self.options.warn_only:
            try:
                item.warn(SpprofBudgetWarning(message))
            except Warning:
                # `-W error` / `filterwarnings = error` turned the warning into an exception: the
                # test still passes (warn-only), and the message goes to the terminal summary.
                self.report.unraised.append(message)
        else:
            rep.outcome = "failed"
            rep.longrepr = message
            result.outcome = "failed"

    def _settle(self, r: ProfiledTest) -> None:
        """Put what a finished test leaves on disk now (see _journal): its profile file when it
        is kept, its baseline entry, and its record. Taking its samples out of the running
        profiler (a checkpoint, ~4 ms) happens only for the first two."""
        save = self.options.save
        keep = save == "all" or (save == "failed" and r.outcome == "failed")
        entry = self.options.save_baseline is not None and r.outcome == "passed"
        if keep or entry:
            self.measure.sampler.checkpoint()
        if keep:
            fmt = self.options.profile_format
            path = self.options.make_dir("profiles") / (safe_name(r.nodeid) + PROFILE_SUFFIXES[fmt])
            if self._output(f"the profile of {r.nodeid}", lambda: self._save_profile(r, path)):
                r.files[fmt] = str(path)
        if entry:
            self.baseline_tests[r.nodeid] = self.judge.baseline_entry(r)
            self._output("the baseline journal", lambda: self._baseline_journal.append(
                _baseline.journal_entry(r.nodeid, self.baseline_tests[r.nodeid])))
        self._output("the results journal", lambda: self._results_journal.append(r.record()))

    def _save_profile(self, r: ProfiledTest, path: Path) -> None:
        profile = self.measure.profile_of(r)
        if self.options.profile_format == "pprof":  # for a profiling backend: say which test
            path.write_bytes(profile.to_pprof(labels={"test_id": r.nodeid}))
        else:
            profile.save(path)

    def _output(self, what: str, write: Callable[[], Any]) -> bool:
        """Run one writer; a failure (a full disk, a folder removed meanwhile) is reported at the
        end of the run and does not keep the other outputs from being written."""
        try:
            write()
            return True
        except OSError as exc:
            self.report.output_errors.append(f"could not write {what}: {exc}")
            return False

    # -- the end of the run (who does what: see _xdist) -------------------------------------------------

    @functools.cached_property
    def role(self) -> _xdist.Role:
        """Known once xdist has configured itself (its controller plugin is registered then)."""
        return _xdist.role_of(self.config, self.options.make_dir)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:  # xdist, controller: tell workers where parts go
        assert isinstance(self.role, _xdist.Controller)
        node.workerinput["spprof_parts"] = str(self.role.parts)

    @property
    def _results_journal(self) -> _journal.Journal:
        if self._results is None:
            self._results = _journal.Journal(self.role.results_journal())
        return self._results

    @property
    def _baseline_journal(self) -> _journal.Journal:
        if self._baseline_file is None:
            assert self.options.save_baseline is not None
            self._baseline_file = _journal.baseline_journal(self.options.save_baseline)
        return self._baseline_file

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._catch_sigterm()
        if isinstance(self.role, _xdist.Worker):
            return
        self._results_journal.remove()  # a killed earlier run's: this run's results replace it
        profiles = self.options.dir / "profiles"
        if profiles.is_dir():  # profiles of an earlier run would mislead
            for ending in (*PROFILE_SUFFIXES.values(), ".diff.svg"):
                for old in list(profiles.glob("*" + ending)):
                    old.unlink()

    def _catch_sigterm(self) -> None:
        """SIGTERM (a CI job's timeout, ``kill``) ends the run as Ctrl-C does: the test in flight
        is interrupted, and the finished tests' results are written. Only when SIGTERM has its
        default action, in the main thread: an application's own handler is left alone."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM: pytest --spprof writes the results of the finished tests")

        signal.signal(signal.SIGTERM, on_sigterm)
        self._sigterm_handler = on_sigterm

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.measure.finish()
        self.report.sampler_error = self.measure.sampler.error
        if isinstance(self.role, _xdist.Controller):
            self._merge_parts(self.role)
            return
        for r in self.results.values():  # what needs this process's samples
            profile = self.measure.profile_of(r)
            r.other_threads_cpu_ns = sum(s.weight_ns for s in profile.samples if s.thread_id != r.thread_id)
            r.hottest = hottest(profile)
        if isinstance(self.role, _xdist.Worker):
            worker = self.role
            if self._output("this worker's results", lambda: self._write_part(worker)):
                self._results_journal.remove()
        elif self.results:
            run = self._write_run() if self.options.arrow else None
            self._write_outputs(self.measure.sampler.dropped, self.baseline_tests, run)

    def _write_run(self) -> Optional[Path]:
        from ._run import write_run

        path = self.role.run_file()
        return path if self._output(str(path), lambda: write_run(path, self.measure.sampler.chunks,
                                                                  self.results.values(),
                                                                  self.measure.report_spans())) else None

    def _write_part(self, worker: _xdist.Worker) -> None:
        run = self._write_run() if self.options.arrow and self.results else None
        part = {"tests": [r.record() for r in self.results.values()], "dropped": self.measure.sampler.dropped,
                "baseline": self.baseline_tests, "run": str(run) if run else None}
        path = worker.part()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(part), encoding="utf-8")

    def _merge_parts(self, controller: _xdist.Controller) -> None:
        folder = controller.parts
        dropped, baseline_tests, runs = 0, {}, []
        records = []
        for path in sorted(folder.glob("*.json")):
            part = json.loads(path.read_text(encoding="utf-8"))
            records += part["tests"]
            dropped += part["dropped"]
            baseline_tests.update(part["baseline"])
            if part["run"]:
                runs.append(Path(part["run"]))
        # A worker that crashed or was killed wrote no part: its journal has its finished tests
        # (their baseline entries are in the baseline's journals, compacted when it is saved).
        for path in sorted(folder.glob("*.results.jsonl")):
            if not path.with_name(path.name.replace(".results.jsonl", ".json")).exists():
                records += _journal.read(path)
        for record in records:
            r = ProfiledTest.from_record(record)
            self.results[r.nodeid] = r
            self.report.problems += bool(r.problems)
        run = None
        if runs:
            from ._run import merge_runs

            path = self.options.dir / "run.arrow"
            run = path if self._output(str(path), lambda: merge_runs(path, runs)) else None
        if self.results:
            self._write_outputs(dropped, baseline_tests, run)
        shutil.rmtree(folder, ignore_errors=True)

    def _write_outputs(self, dropped: int, baseline_tests: Dict[str, Any], run: Optional[Path]) -> None:
        """The run's files, from the results of this process or of every xdist worker."""
        opts = self.options
        self.report.dropped, self.report.run_file = dropped, run
        summary = {"format": "spprof-pytest-results", "version": 1,
                   "python": _baseline.environment_key(), "phases": opts.phases, "dropped_samples": dropped,
                   "tests": {r.nodeid: r.record() for r in self.results.values()}}
        results = opts.dir / "results.json"
        if self._output(str(results), lambda: _journal.write_whole(results, json.dumps(summary, indent=1))):
            self._results_journal.remove()  # compacted into results.json
        if opts.save_baseline is not None:
            path = opts.save_baseline
            tests, shift = _baseline.with_earlier(self._earlier, baseline_tests)
            counts = sorted(len(e.get("earlier", ())) + 1 for e in tests.values())
            self.report.recording = counts[len(counts) // 2] if counts else 1
            self._output(str(path), lambda: _baseline.save(path, _baseline.load(path, False), tests,
                                                           self.judge.speed_now(max_age_s=2.0), shift,
                                                           opts.workers))
        if opts.compare_path is not None:
            self.report.new_tests = [r.nodeid for r in self.results.values() if r.baseline_cpu_ns is None]
            record_culprits(self.config, self.results)  # before junitxml writes its file
        markdown = opts.markdown
        if markdown is not None:
            self._output(str(markdown), lambda: _journal.write_whole(markdown, self.report.markdown()))

    def pytest_report_header(self, config: pytest.Config) -> Optional[str]:
        from . import HYPOTHESIS_SEED, seeded_hypothesis_key

        if config.stash.get(seeded_hypothesis_key, False):
            return (f"spprof: Hypothesis runs with --hypothesis-seed={HYPOTHESIS_SEED}, so that every round "
                    "and run tests the same examples (pass your own seed to change it)")
        return None

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.results:
            self.report.terminal(terminalreporter)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.measure.sampler.finish()  # an interrupted run must not leave the sampler running
        for journal in (self._results, self._baseline_file):
            # Saving the baseline compacted its journal by path; the file object is still open.
            if journal is not None:
                journal.close()
        if self._sigterm_handler is not None and signal.getsignal(signal.SIGTERM) is self._sigterm_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
