"""One profile across processes: ``spprof.start(subprocesses=True)``.

The parent (:class:`Children`) makes a folder and tells its children through the environment:
``SPPROF_SUBPROCESSES`` holds the sampling options and the folder, and PYTHONPATH starts with
``_child_site``, whose ``sitecustomize`` calls :func:`child_started` in every Python child that
inherits them (``subprocess``, multiprocessing's spawn and forkserver, and their children in
turn). Children that multiprocessing forks start in :func:`_forked`, which multiprocessing runs in
each of its children (``util.register_after_fork``, armed just before a fork by a process that
has loaded multiprocessing, so that a child that never uses it does not pay its 30 ms import).

Each child leaves its profile in the folder as it exits (``ProfileData.write_process``: written
whole or not at all), and the parent's ``stop()`` merges what is there (:meth:`Children.merge`).
A child leaves by one of three doors, and each has a writer:

- the interpreter's normal exit (scripts, ``subprocess``, spawned workers): ``atexit``;
- ``os._exit`` after multiprocessing's finalizers (forked and forkserver children, which never
  run ``atexit``): a ``multiprocessing.util.Finalize``;
- SIGTERM, which ``Pool.terminate()`` sends (and so ``with Pool() as pool:``): the
  extension's handler wakes :func:`_on_sigterm`'s thread, which writes, then the process dies of
  SIGTERM as it would have (only where SIGTERM had its default action). Not a Python handler: a
  worker blocked in a semaphore when the signal comes may never run one.

A child killed otherwise (SIGKILL, a crash) leaves nothing: only its own samples are lost. So
are the samples of a child that outlives the parent's ``stop()``.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings

from ._ext import native as _native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Optional

#: ``spprof._api``, which starts and stops this process's profile: handed in by the parent's
#: ``start()`` and by ``_child_site`` (it imports this module; this one does not import it back).
_api: Any = None

#: ``"<interval_ms> <mode> <memory_limit_mb> <folder>"``, read by every child.
ENV = "SPPROF_SUBPROCESSES"
#: The folder alone, for a child that cannot load spprof to say why (``_child_site``).
ENV_DIR = "SPPROF_SUBPROCESSES_DIR"
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child_site")


class Children:
    """The parent's side: the folder and the environment, from ``start()`` to ``stop()``."""

    def __init__(self, api: Any, interval_ms: float, mode: str, memory_limit_mb: float) -> None:
        import tempfile

        global _api
        _api = api
        self.folder = tempfile.mkdtemp(prefix=f"spprof-children-{os.getpid()}-")
        self._saved = {name: os.environ.get(name) for name in (ENV, ENV_DIR, "PYTHONPATH")}
        os.environ[ENV] = f"{interval_ms!r} {mode} {memory_limit_mb!r} {self.folder}"
        os.environ[ENV_DIR] = self.folder
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = SITE + (os.pathsep + path if path else "")
        self._pythonpath = os.environ["PYTHONPATH"]

    def _restore_environment(self) -> None:
        current = os.environ.get("PYTHONPATH")
        if current is not None and current != self._pythonpath:  # the program changed it since
            self._saved["PYTHONPATH"] = os.pathsep.join(p for p in current.split(os.pathsep) if p != SITE) or None
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def merge(self, own: Any, origin_ns: int) -> Any:
        """This process's profile ``own`` (a ``ProfileData`` whose clock started at
        CLOCK_MONOTONIC ``origin_ns``) with those the children left, as one ``ProfileData``.
        Ends the children's profiling: the environment is as before ``start()``."""
        import shutil

        self._restore_environment()
        parts = [(own, 0)]
        problems: List[str] = []
        try:
            names = sorted(os.listdir(self.folder))
            for name in names:
                path = os.path.join(self.folder, name)
                if name.endswith(".arrow"):
                    try:
                        data, child_origin = _native.ProfileData.read_process(path, own.interval_ns, own.wall)
                    except ValueError as exc:
                        problems.append(f"{name}: {exc}")
                        continue
                    parts.append((data, child_origin - origin_ns))
                elif name.endswith(".error"):
                    with open(path, encoding="utf-8", errors="replace") as note:
                        problems.append(f"pid {name[:-len('.error')]}: {note.read()}")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        if problems:
            warnings.warn(f"spprof: {len(problems)} child process(es) are not in the profile: "
                          + "; ".join(problems), RuntimeWarning, stacklevel=3)
        return _native.ProfileData.merge(parts, [(os.getpid(), process_name())])


def process_name() -> str:
    """What this process is: its multiprocessing name (``ForkPoolWorker-2``), else its command
    (``python worker.py``)."""
    # Half imported when a SIGTERM comes during the import: no current_process yet.
    current_process = getattr(sys.modules.get("multiprocessing"), "current_process", None)
    if current_process is not None:
        name = current_process().name
        if name != "MainProcess":
            return name
    argv = getattr(sys, "argv", None) or [""]
    if os.path.basename(argv[0]) == "__main__.py":  # python -m package
        return f"python -m {os.path.basename(os.path.dirname(argv[0]))}"
    if argv[0] and not os.path.exists(argv[0]) and argv[0].replace(".", "").isidentifier():
        return f"python -m {argv[0]}"  # python -m spprof -m module: runpy put the argv back
    return " ".join(["python", os.path.basename(argv[0]), *argv[1:2]]).strip()


# -- the children's side --------------------------------------------------------------------------

class _Child:
    """This process's profile, begun for the parent: where to leave it, and its clock's origin."""

    def __init__(self, folder: str, origin_ns: int) -> None:
        self.folder, self.origin_ns, self.left = folder, origin_ns, False
        # Held while leaving: SIGTERM's thread waits for an exit that is writing already.
        self.leaving = threading.Lock()


_child: Optional[_Child] = None


def _options() -> Optional[tuple]:
    try:
        interval, mode, limit, folder = os.environ[ENV].split(" ", 3)
        return float(interval), mode, float(limit), folder
    except (KeyError, ValueError):  # not set (or not by us): this process is not a child of a profile
        return None


def child_started(api: Any) -> None:
    """Profile this process for the parent (from ``_child_site``, before the program runs)."""
    global _api
    _api = api
    options = _options()
    if options is None:
        return
    command = " ".join(getattr(sys, "orig_argv", ()))  # Python 3.10+
    if "from multiprocessing.forkserver import main" in command:
        return  # the fork server only forks the workers, which start in _forked
    if "from multiprocessing.resource_tracker import main" in command:
        return  # a helper that outlives the parent's stop(): its profile would never be read
    _begin(*options)


def _begin(interval_ms: float, mode: str, memory_limit_mb: float, folder: str) -> None:
    global _child
    if _api.is_active():
        return
    try:
        _api.start(interval_ms, memory_limit_mb=memory_limit_mb, mode=mode)
    except (RuntimeError, ValueError) as exc:  # e.g. timers refused here: say so to the parent
        _note_problem(folder, str(exc))
        return
    _child = _Child(folder, _api.clock_origin_ns())
    _api.hand_over_on_start(leave_profile)  # the program's own start() comes first
    import atexit
    import signal

    atexit.register(leave_profile)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        wake = _native.sigterm_to_pipe()
        if wake is not None:
            threading.Thread(target=_on_sigterm, args=(wake,), name="spprof-sigterm", daemon=True).start()


def _write_at_multiprocessing_exit() -> None:
    # Last among multiprocessing's finalizers, which a forked child runs before os._exit.
    from multiprocessing import util

    util.Finalize(None, leave_profile, exitpriority=-100)


def _note_problem(folder: str, problem: str) -> None:
    if os.path.isdir(folder):
        with open(os.path.join(folder, f"{os.getpid()}.error"), "w", encoding="utf-8") as note:
            note.write(problem)


def leave_profile() -> None:
    """Stop this child's profile and leave it in the parent's folder (once)."""
    child = _child
    if child is None:
        return
    with child.leaving:
        try:
            if child.left or not _api.is_active():
                return
            child.left = True
            _write(child, _api.stop_samples())
        finally:
            _native.sigterm_default()  # nothing left to write: SIGTERM may end the process at once


def _write(child: _Child, data: Any) -> None:
    if not os.path.isdir(child.folder):
        return  # the parent has merged and gone: nobody would read it
    name = f"{os.getpid()}-{child.origin_ns}.arrow"
    try:
        data = _from_bootstrap(data)
        data.write_process(os.path.join(child.folder, name), os.getpid(), process_name(), child.origin_ns)
    except (OSError, ValueError) as exc:
        print(f"spprof: the profile of child process {os.getpid()} could not be written: {exc}",
              file=sys.stderr)


_PROCESS_PY = os.path.join("multiprocessing", "process.py")


def _from_bootstrap(data: Any) -> Any:
    """A multiprocessing child's stacks from ``BaseProcess._bootstrap`` on. Above it are the
    frames of spawn's or the fork server's plumbing, or of a forked child's parent (its ``Pool()``
    call, which the flame graph would show as where the worker's time went)."""
    ids = [i for i, (function, filename, _, _) in enumerate(_native.frames_of(data))
           if function.rsplit(".", 1)[-1] == "_bootstrap" and filename.endswith(_PROCESS_PY)]
    return _native.starting_at(data, ids) if ids else data


def _on_sigterm(wake: int) -> None:
    _api.unregister_thread()  # it only waits: not part of the program's profile
    try:
        os.read(wake, 1)
    except OSError:
        return
    try:
        leave_profile()
    finally:  # die as SIGTERM asked, whatever happened to the profile
        _native.die_of_sigterm()


class _Token:
    """What multiprocessing's after-fork registry holds on to (it keeps weak references)."""


_token: Optional[_Token] = None


def _arm_multiprocessing() -> None:
    """Before a fork: if multiprocessing is what may be forking, have it call :func:`_forked` in
    its children (once; the registry is copied into each child)."""
    global _token
    util = sys.modules.get("multiprocessing.util")
    if _token is None and util is not None and _options() is not None:
        _token = _Token()
        util.register_after_fork(_token, _forked)


os.register_at_fork(before=_arm_multiprocessing)


def _forked(_: Any) -> None:
    # In the child's bootstrap, after multiprocessing dropped the finalizers it inherited.
    global _child
    options = _options()
    if options is None:
        return
    _child = None  # the parent's, if it was a child too
    _begin(*options)
    if _child is not None:
        _write_at_multiprocessing_exit()
