"""The example notebooks run headless (nbclient) on a kernel of this interpreter; their last cells
assert their results (the hot function is on top, the faster version got faster, ...)."""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("pyarrow")
pytest.importorskip("pandas")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "spprof-test-python"


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory):
    """A kernel spec for ``sys.executable`` in a temporary directory: the user's own kernels and
    settings are neither used nor touched."""
    from jupyter_client.kernelspec import KernelSpecManager

    root = tmp_path_factory.mktemp("kernels")
    spec_dir = root / KERNEL
    spec_dir.mkdir()
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (spprof tests)",
        "language": "python",
        # No repository path: the kernel must import the installed spprof, not the source tree.
        "env": {"IPYTHONDIR": str(root / "ipython"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    }))
    return KernelSpecManager(kernel_dirs=[str(root)])


def notebooks():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_exist():
    names = {p.name for p in notebooks()}
    assert {"quickstart.ipynb", "analysis.ipynb", "memory.ipynb"} <= names


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name} has outputs; strip them: jupyter nbconvert --clear-output --inplace {path}"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_notebook_runs(path, kernel_spec_manager, tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_spec_manager)
    client = nbclient.NotebookClient(nb, km=km, timeout=120, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a failing cell (or assertion) raises CellExecutionError
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    html = [o["data"]["text/html"] for o in outputs if "data" in o and "text/html" in o["data"]
            and "spprof-result" in o["data"]["text/html"]]
    assert html, "no inline flame graph was displayed"
    assert all("<iframe" in h and "srcdoc=" in h for h in html)
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
