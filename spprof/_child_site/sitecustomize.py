"""Run at the start of each Python child of a profile that takes in subprocesses
(``spprof.start(subprocesses=True)``), from the folder the parent put first on PYTHONPATH.

It starts profiling this process (spprof/_subprocesses.py), then steps aside: it takes its folder
off ``sys.path`` and runs the ``sitecustomize`` it hid, if there is one.
"""

import os
import sys


def _profile_this_process() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        # This file's spprof, not whichever another entry of sys.path would give.
        import importlib.util

        package = os.path.dirname(here)
        spec = importlib.util.spec_from_file_location(
            "spprof", os.path.join(package, "__init__.py"), submodule_search_locations=[package])
        if "spprof" not in sys.modules:
            module = importlib.util.module_from_spec(spec)
            sys.modules["spprof"] = module
            spec.loader.exec_module(module)
        from spprof import _api, _subprocesses
    except Exception as exc:  # an interpreter spprof is not built for: its note tells the parent
        sys.modules.pop("spprof", None)
        directory = os.environ.get("SPPROF_SUBPROCESSES_DIR")
        if directory and os.path.isdir(directory):
            with open(os.path.join(directory, f"{os.getpid()}.error"), "w") as note:
                note.write(f"Python {sys.version.split()[0]} ({sys.executable}): {exc}")
        return
    _subprocesses.child_started(_api)


def _run_hidden_sitecustomize() -> None:
    ours = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  (the next one on sys.path: ours is off it)
    except ModuleNotFoundError as exc:
        if exc.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_profile_this_process()
_run_hidden_sitecustomize()
