"""docs/tutorials/lecture.ipynb runs from top to bottom (quick sampling settings) and is stored
without outputs, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "lecture.ipynb"


def test_tutorial_is_stored_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_tutorial_runs(monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TWOLEVEL_TUTORIAL_QUICK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "REML criterion at convergence" in text     # summary(m1)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # forest, ridge, pair, rank, BLUP vs posterior
    assert "Chains: 2 x 200 draws" in text              # the kernel saw the quick settings
