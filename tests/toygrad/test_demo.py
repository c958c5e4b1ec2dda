"""The demo: the console entry point, and the notebook executed end to end (it asserts 100%)."""

import subprocess
import sys
from pathlib import Path

import pytest
from toygrad.demo import main

NOTEBOOK = Path(__file__).resolve().parents[2] / "packages" / "toygrad" / "examples" / "demo.ipynb"


def test_demo_main_trains_and_writes_the_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "boundary.png"
    # A few steps are enough to test the command; the notebook below runs all 100 and checks 100%.
    assert main(["--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step   3/3" in printed and "training accuracy" in printed
    assert f"wrote the decision boundary to {out.resolve()}" in printed
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_demo_rejects_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "toygrad.demo", "--steps", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "argument --steps: must be at least 1, got 0" in result.stderr


def test_notebook_runs_and_reaches_full_accuracy(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Run in a temp dir: the notebook writes toygrad_demo.png into its working directory.
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell, the 100% assert included
    assert (tmp_path / "toygrad_demo.png").is_file()
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "step 100/100" in printed and "acc 100%" in printed
