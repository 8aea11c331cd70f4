"""asyncio-aware profiles (``async_aware=True``): which task each tick of an event loop's thread
belongs to, and what every waiting task was awaiting at that tick.

A task that waits has no thread stack to sample: its coroutines are suspended objects. So the
coroutine of every task created while profiling (through ``loop.create_task``, which
``asyncio.run``, ``gather``, ``TaskGroup`` and ``ensure_future`` all use) is wrapped in a
``_Traced`` coroutine that the task drives instead. Around each step it notes:

- the **step** (resume and suspend times), when a sample was taken during it: the samples of
  the loop's thread in that interval are this task's;
- the **wait** (suspend and resume times, and the chain of coroutines awaited, read just
  before resuming, when it is still the chain it waited in), when a sample was taken during it.

The sampler's sample count decides "a sample was taken": a step or a wait without one costs
two clock reads and two counter reads, and nothing is kept. The intervals are applied to the
samples natively at ``stop()`` (``ProfileData.with_tasks``).
"""

from __future__ import annotations

import collections.abc
import sys
import threading
import time
import weakref
from typing import Any, Callable, List, Optional, Tuple

#: A coroutine frame as the sampler names it: (function, file, line).
FrameTuple = Tuple[str, str, int]

_QUALNAMES = sys.version_info >= (3, 11)  # the sampler names functions by co_qualname from 3.11
_clock = time.monotonic_ns  # the samples' clock (CLOCK_MONOTONIC)


def _frame_of(code: Any, line: Optional[int]) -> FrameTuple:
    return (code.co_qualname if _QUALNAMES else code.co_name, code.co_filename, line or code.co_firstlineno)


def _frame(coro: Any) -> Any:
    """A coroutine's frame (or a generator-based one's); None once finished, or for an
    awaitable written in C."""
    return getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)


def await_chain(coro: Any) -> List[FrameTuple]:
    """The frames of a suspended coroutine and of those it awaits, outermost first."""
    frames: List[FrameTuple] = []
    while coro is not None:
        frame = _frame(coro)
        if frame is None:
            break
        frames.append(_frame_of(frame.f_code, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def _running_task() -> Any:
    """The task running on this thread's event loop, or None (asyncio's own current_task()
    raises without a running loop, as when a test drives ``loop._run_once()`` by hand)."""
    import asyncio

    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class Tracker:
    """The steps and waits of traced tasks, in CLOCK_MONOTONIC ns, while ``active``."""

    def __init__(self, samples_taken: Callable[[], int]) -> None:
        self.samples_taken = samples_taken
        self.active = True
        #: (start, end, task name, loop thread's native id)
        self.steps: List[Tuple[int, int, str, int]] = []
        #: (start, end, task name, loop thread's native id, awaited frames outermost first)
        self.waits: List[Tuple[int, int, str, int, List[FrameTuple]]] = []
        self._lock = threading.Lock()  # loops in several threads append
        self._traced: weakref.WeakSet[_Traced] = weakref.WeakSet()
        self._restore: Optional[Callable[[], None]] = None

    def install(self) -> None:
        """Trace the tasks ``loop.create_task`` makes from now on (every loop of the standard
        library's kind; uvloop's create_task is compiled and is not seen)."""
        import asyncio.base_events

        cls = asyncio.base_events.BaseEventLoop
        original = cls.create_task
        tracker = self

        def create_task(loop: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:
            if not (tracker.active and type(coro) is not _Traced and asyncio.iscoroutine(coro)):
                return original(loop, coro, *args, **kwargs)
            traced = _Traced(coro, tracker)
            with tracker._lock:  # close() may be reading the set in another thread
                tracker._traced.add(traced)
            task = original(loop, traced, *args, **kwargs)
            traced._task = task  # an eager task has run its first step already, and knows it
            return task

        create_task.__wrapped__ = original  # type: ignore[attr-defined]
        cls.create_task = create_task  # type: ignore[method-assign]

        def restore() -> None:
            if cls.create_task is create_task:  # unless someone wrapped it in turn
                cls.create_task = original  # type: ignore[method-assign]

        self._restore = restore

    def apply(self, data: Any, origin_ns: int) -> Any:
        """``data`` (this process's ``ProfileData``, whose clock started at CLOCK_MONOTONIC
        ``origin_ns``) with the tasks' samples (see ``spprof_engine::tasks``)."""
        steps = [(s - origin_ns, e - origin_ns, task, tid) for s, e, task, tid in self.steps]
        waits = [(s - origin_ns, e - origin_ns, task, tid, chain) for s, e, task, tid, chain in self.waits]
        entry = _frame_of(_Traced._step.__code__, None)[:2]
        return data.with_tasks(steps, waits, entry)

    def close(self, end_waits: bool = True) -> None:
        """Stop noting, and put ``create_task`` back; the tasks still waiting end their waits
        now, unless ``end_waits`` is false (a forked child, where another thread may have held
        the lock at the fork)."""
        if end_waits:
            now, count = _clock(), self.samples_taken()
            with self._lock:
                waiting = list(self._traced)
            for traced in waiting:
                traced._waited_until(now, count)
        self.active = False
        if self._restore is not None:
            self._restore()


class _Traced(collections.abc.Coroutine):
    """A task's coroutine, wrapped so that its steps and waits are noted (see the module)."""

    __slots__ = ("_coro", "_tracker", "_task", "_thread", "_since", "_count", "__weakref__")

    def __init__(self, coro: Any, tracker: Tracker) -> None:
        self._coro = coro
        self._tracker = tracker
        self._task: Any = None
        self._thread = 0
        self._since = 0  # when it was suspended (0: running, finished, or never ran)
        self._count = 0  # the sample count then

    def _name(self) -> str:
        # The task comes from create_task (an eager task's first step, which runs inside it,
        # asks asyncio); names are read when noted, as set_name() may change them.
        task = self._task
        return task.get_name() if task is not None else "<task>"

    def _waited_until(self, now: int, count: int) -> None:
        """Note the wait that ends at ``now`` (the sample count then: ``count``), if a sample
        was taken during it."""
        if self._since and count != self._count:
            wait = (self._since, now, self._name(), self._thread, await_chain(self._coro))
            with self._tracker._lock:
                self._tracker.waits.append(wait)

    def _step(self, step: Callable[..., Any], *args: Any) -> Any:
        tracker = self._tracker
        if not tracker.active:
            return step(*args)
        start, count = _clock(), tracker.samples_taken()
        if not self._thread:
            self._thread = threading.get_native_id()
            if self._task is None:  # an eager task's first step, inside create_task
                self._task = _running_task()
        self._waited_until(start, count)
        self._since = 0  # running: a stop() inside this step closes no wait of it
        finished = False
        try:
            return step(*args)
        except BaseException:  # StopIteration included: the coroutine is done
            finished = True
            raise
        finally:
            end, after = _clock(), tracker.samples_taken()
            if after != count:
                with tracker._lock:
                    tracker.steps.append((start, end, self._name(), self._thread))
            # 0 while it runs and once it is done: no wait to note.
            self._since, self._count = (0 if finished else end), after

    def send(self, value: Any) -> Any:
        return self._step(self._coro.send, value)

    def throw(self, *exc: Any) -> Any:
        return self._step(self._coro.throw, *exc)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        # What asyncio's reprs and debuggers read of a task's coroutine (cr_frame, cr_await,
        # cr_code, __qualname__, ...): the wrapped one's.
        return getattr(self._coro, name)

    def __repr__(self) -> str:
        return repr(self._coro)
