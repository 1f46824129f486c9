import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS = ["concepts", "training", "steering"]


def images(nb):
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_end_to_end_on_a_fresh_run(name, tiny_run, monkeypatch):
    root, _, _ = tiny_run
    monkeypatch.setenv("COCOMIX_OUT", str(root / "out"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        cell.outputs = []
    nb = NotebookClient(nb, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    assert images(nb) >= 1  # its plots were drawn (a failing cell raises above)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_carry_their_outputs_so_that_they_render_on_github(name):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code) and images(nb) >= 2
