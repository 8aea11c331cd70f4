"""The model's classes behave as the dataclasses the API documents, though spprof does not import
``dataclasses`` to make them (see spprof/_record.py)."""

import copy
import dataclasses
import inspect
import pickle
import subprocess
import sys
import textwrap
from datetime import datetime

import pytest

from spprof import _aggregate, _model
from spprof.memprof import _MemoryProfile

RECORDS = [_model.Frame, _model.Sample, _model.NativeFrame, _model.ProfilerStats, _model.Profile,
           _aggregate.AggregatedStack, _aggregate.AggregatedProfile]


def twin(cls):
    """The same class body, made by dataclasses itself."""
    spec = cls._record_spec
    namespace = {"__annotations__": {name: t for name, t, _ in spec["fields"]}, "__qualname__": cls.__qualname__}
    for name, _, f in spec["fields"]:
        if f is not None:
            namespace[name] = dataclasses.field(default=f.default, repr=f.repr, compare=f.compare)
        elif name in cls.__dict__:
            namespace[name] = cls.__dict__[name]
    return dataclasses.dataclass(frozen=spec["frozen"])(type(cls.__name__, (), namespace))


def example_args(cls):
    frame = _model.Frame("f", "x.py", 3)
    values = {"function_name": "f", "filename": "x.py", "lineno": 3, "timestamp_ns": 1, "thread_id": 2,
              "thread_name": "t", "frames": (frame,), "ip": 4096, "symbol": "s", "offset": 1, "resolved": True,
              "start_time": datetime(2026, 1, 1), "end_time": datetime(2026, 1, 2), "interval_ms": 1.0,
              "samples": [], "stacks": [], "dropped_count": 0, "python_version": "3.12", "platform": "linux"}
    required = [p.name for p in inspect.signature(cls).parameters.values() if p.default is p.empty]
    return [values.get(name, 7) for name in required]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_a_model_class_is_a_dataclass_to_the_dataclasses_module(cls):
    real = twin(cls)
    assert dataclasses.is_dataclass(cls)
    assert str(inspect.signature(cls)) == str(inspect.signature(real))
    assert [(f.name, f.default, f.repr, f.compare) for f in dataclasses.fields(cls)] == \
        [(f.name, f.default, f.repr, f.compare) for f in dataclasses.fields(real)]
    assert cls.__dataclass_params__.frozen == real.__dataclass_params__.frozen
    assert getattr(cls, "__match_args__", None) == getattr(real, "__match_args__", None)
    args = example_args(cls)
    ours, theirs = cls(*args), real(*args)
    assert repr(ours) == repr(theirs)
    assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)
    assert ours == cls(*args) and ours != theirs  # compared as dataclasses compare: same class only
    assert (cls.__hash__ is None) == (real.__hash__ is None)
    if cls.__hash__ is not None:
        assert hash(ours) == hash(theirs)
    first = dataclasses.fields(cls)[0].name
    changed = dataclasses.replace(ours, **{first: args[-1]})
    assert type(changed) is cls and getattr(changed, first) == args[-1]
    if sys.version_info >= (3, 13):
        assert copy.replace(ours, **{first: args[-1]}) == changed
    assert pickle.loads(pickle.dumps(ours)) == ours and copy.deepcopy(ours) == ours
    if real.__dataclass_params__.frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ours, first, args[-1])
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(ours, first)
    else:
        setattr(ours, first, args[-1])
        assert ours == changed


def test_fields_left_out_of_repr_and_comparison_stay_out():
    a = _model.Profile(*example_args(_model.Profile), _data="one")
    b = _model.Profile(*example_args(_model.Profile), _data="two")
    assert a == b and "_data" not in repr(a)


def test_a_subclass_shares_its_base_classes_fields():
    assert [f.name for f in dataclasses.fields(_MemoryProfile)] == [f.name for f in dataclasses.fields(_model.Profile)]
    profile = _MemoryProfile(*example_args(_model.Profile))
    assert dataclasses.replace(profile, mode="wall").mode == "wall"
    assert repr(profile).startswith("_MemoryProfile(start_time=")


def test_profiling_and_reading_a_profile_do_not_import_dataclasses():
    """What keeps import, start and stop cheap (benchmarks/startup_cost.py): ``dataclasses``
    imports ``inspect``, which alone costs more than all of spprof's start-up."""
    child = textwrap.dedent("""
        import sys, time
        import spprof
        spprof.start(interval_ms=1)
        while spprof.stats().collected_samples < 5:  # 50 ms of CPU once gave none under load
            end = time.thread_time() + 0.01
            while time.thread_time() < end:
                pass
        profile = spprof.stop()
        assert len(profile.samples) > 0, "no samples"
        repr(profile.samples[0]), profile.samples[0] == profile.samples[0], profile.top(5)
        print(sorted({"dataclasses", "inspect"} & set(sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
