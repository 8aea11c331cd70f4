import pytest

import spprof

pytest.importorskip("IPython")


@pytest.fixture(autouse=True)
def no_profile_left_running():
    """A test that leaves profiling running fails, and does not spill into the next test."""
    yield
    if spprof.is_active():
        spprof.stop()
        pytest.fail("the test left profiling active")
