# The pytester plugin is enabled for the whole suite by `addopts = "-p pytester"` in pyproject.toml
# (pytest refuses `pytest_plugins` in a conftest below the rootdir).
#
# pytester's in-process runs remove the modules they imported when they end; extension modules
# such as pyarrow cannot be imported a second time. Importing them here keeps them loaded.
import pytest_spprof._plugin  # noqa: F401
import spprof  # noqa: F401
import spprof.flamegraph  # noqa: F401

for module in ("numpy", "pyarrow", "pyarrow.compute", "pyarrow.ipc", "pandas", "polars"):
    try:
        __import__(module)
    except ImportError:
        pass
try:
    import spprof.memprof  # noqa: F401
except ImportError:
    pass
