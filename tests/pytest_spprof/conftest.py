# The pytester plugin is enabled for the whole suite by `addopts = "-p pytester"` in pyproject.toml
# (pytest refuses `pytest_plugins` in a conftest below the rootdir).
#
# pytester's in-process runs remove the modules they imported when they end; extension modules
# such as pyarrow cannot be imported a second time. Importing them here keeps them loaded.
import pytest_spprof._plugin  # noqa: F401
import spprof  # noqa: F401
import spprof.flamegraph  # noqa: F401

try:
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.ipc  # noqa: F401
except ImportError:
    pass
try:
    import spprof.memprof  # noqa: F401
except ImportError:
    pass
