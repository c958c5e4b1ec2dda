"""packages/toygpt/examples/gpt.ipynb: committed with its pictures, and run end to end headless.

In CI no trained checkpoint is at hand (TOYGPT_NOTEBOOK_CKPT unset), so the notebook trains its
small model on Tiny Shakespeare; its own asserts check the attention against the model's output.
"""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "packages" / "toygpt" / "examples" / "gpt.ipynb"


def _images(nb) -> list[int]:
    """Indices of the code cells with a PNG among their outputs."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))]


def test_committed_notebook_holds_its_pictures():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the attention grid, the one-head view and the next-token probabilities
    assert len(_images(nb)) == 3
    assert all(cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code")


def test_notebook_runs_headless(shakespeare_path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("TOYGPT_NOTEBOOK_CKPT", raising=False)
    monkeypatch.setenv("TOYGPT_SHAKESPEARE", str(shakespeare_path))  # the kernel inherits it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # small model: a second thread only waits
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # run from scratch: no committed output may stand in for a new one
        if cell.cell_type == "code":
            cell.outputs = []
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell, its asserts included
    assert len(_images(nb)) == 3
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "trained a small model for 200 steps" in printed
    assert "goes to the previous character" in printed and "top 5 alternatives" in printed
    for png in ("attention_grid.png", "attention_one_head.png", "next_token_probs.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
