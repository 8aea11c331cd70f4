"""The interpreter's layout is verified before a profile starts: a table that is off by a field
(as after a patch release that moved one) gives a clear refusal naming the field, or, for a
field the profiler does not depend on, a correct profile; never a crash or a wrong stack."""

import json
import subprocess
import sys
import textwrap

import pytest

from spprof import _native

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import spprof
    from spprof import _native

    def burn_in_generator():
        t = time.thread_time()
        while time.thread_time() - t < 0.3:  # samples even on a loaded machine
            yield sum(range(1000))

    def target():
        for _ in burn_in_generator():
            pass

    delta = int(sys.argv[1])
    for field in _native._testing._OFFSET_FIELDS:
        print(json.dumps({"field": field}), flush=True)  # the last line names a crash's field
        _native._testing._shift_offset(field, delta)
        try:
            spprof.start(interval_ms=1)
        except RuntimeError as e:
            print(json.dumps({"field": field, "refused": str(e)}), flush=True)
            continue
        finally:
            _native._testing._shift_offset(None)
        target()
        profile = spprof.stop()
        stacks = [[f.function_name for f in s.frames] for s in profile.samples]
        print(json.dumps({"field": field, "stacks": stacks}), flush=True)
    """
)


@pytest.mark.parametrize("delta", [8, -8])
def test_a_shifted_table_is_refused_or_profiles_correctly(delta, tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(delta)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, f"crashed while shifting {lines[-1]['field'] if lines else '?'}: {proc.stderr}"
    outcomes = {line["field"]: line for line in lines if len(line) > 1}
    assert set(outcomes) == set(_native._testing._OFFSET_FIELDS)
    refused = 0
    for field, outcome in outcomes.items():
        if "refused" in outcome:
            refused += 1
            assert field in outcome["refused"], outcome["refused"]
            assert "python -VV" in outcome["refused"]
            continue
        # Accepted: every sample taken in the generator has the true stack above it.
        in_generator = [s for s in outcome["stacks"] if s and s[-1] == "burn_in_generator"]
        assert in_generator, f"{field}: no sample in the workload"
        for stack in in_generator:
            assert stack[-3:] == ["<module>", "target", "burn_in_generator"], (field, stack)
    assert refused >= 5  # the frame chain's own fields can never be accepted shifted


def test_the_real_table_passes_verification():
    # Shifting by zero changes nothing: start succeeds.
    _native._testing._shift_offset("frame_back", 0)
    try:
        assert _native._testing.walk_current_thread()
    finally:
        _native._testing._shift_offset(None)


def test_unknown_offset_field_is_a_value_error():
    with pytest.raises(ValueError, match="no offset field named .nope."):
        _native._testing._shift_offset("nope", 8)


def test_free_threaded_builds_are_refused_with_the_reason(monkeypatch):
    import sysconfig

    import spprof
    import spprof.memprof as memprof

    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 1 if name == "Py_GIL_DISABLED" else real(name))
    for start in (spprof.start, memprof.start):
        with pytest.raises(RuntimeError, match=r"free-threaded build .*use the default \(GIL\) build"):
            start()
    assert not spprof.is_active() and not memprof.is_running()
