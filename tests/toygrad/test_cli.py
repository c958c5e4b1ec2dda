"""toygrad's two commands on bad input (one line, exit 2, nothing written), and the argument checks of
the building blocks they use: Neuron / Layer / MLP sizes, and x ** p at x = 0 against torch."""

import math
import re
from pathlib import Path

import pytest
import torch
from toygrad.demo import main as demo_main
from toygrad.demo import run_command
from toygrad.engine import Value
from toygrad.nn import MLP, Layer, Neuron
from toygrad.tensor.train_gpt import main as train_gpt_main

NOTEBOOK = Path(__file__).resolve().parents[2] / "packages" / "toygrad" / "examples" / "demo.ipynb"


@pytest.mark.parametrize("argv, name", [
    (["--n-samples", "0"], "argument --n-samples: must be at least 2, got 0"),
    (["--n-samples", "1"], "argument --n-samples: must be at least 2, got 1"),
    (["--noise", "-1"], "argument --noise: must be at least 0, got -1.0"),
    (["--out", "/proc/x.png"], "--out /proc/x.png: cannot write in /proc"),
    (["--out", "x.txt"], "--out x.txt: the file name must end in .png"),
])
def test_demo_rejects_bad_flags_before_training(one_line_error, argv, name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(demo_main(argv), "toygrad-demo: error: ", name)
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []


def test_demo_replaces_its_image_whole(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "boundary.png"
    out.write_bytes(b"an older image")
    assert demo_main(["--steps", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["boundary.png"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_gpt_without_a_gpu_says_so(one_line_error, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 50)
    one_line_error(train_gpt_main([str(text), "--device", "cuda"]),
                    "argument --device: cuda: CUDA is not available on this machine")


def test_train_gpt_checks_the_csv_path_before_training(one_line_error, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 50)
    one_line_error(train_gpt_main([str(text), "--csv", "/proc/x.csv"]), "--csv /proc/x.csv")
    assert capsys.readouterr().out == ""  # not a single step was run
    one_line_error(train_gpt_main([str(text), "--lr", "nan"]), "argument --lr: expected a finite number")


def test_an_unexpected_error_is_one_line_naming_a_log(capsys):
    def crash():
        raise RuntimeError("no check foresaw this")

    assert run_command("toygrad-demo", crash) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("toygrad-demo: internal error: RuntimeError: no check")
    assert "Traceback" in Path(re.search(r"the traceback is in (\S+)\)", err).group(1)).read_text()


@pytest.mark.parametrize("make, message", [
    (lambda: Neuron(-1), "Neuron: nin must be a positive int, got -1"),
    (lambda: Layer(2, 0), "Layer: nout must be a positive int, got 0"),
    (lambda: MLP(2, []), "MLP: nouts must list at least one layer size, got []"),
    (lambda: MLP(2, [3, 0]), "MLP: nouts[1] must be a positive int, got 0"),
])
def test_empty_layers_are_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("base", [0.0, -0.0])
@pytest.mark.parametrize("exponent", [0.5, 0, 0.0, 1, 2, 3.5])
def test_pow_at_zero_has_torchs_gradient(base, exponent):
    x = Value(base)
    (x ** exponent).backward()
    t = torch.tensor(base, dtype=torch.float64, requires_grad=True)
    (t ** exponent).backward()
    assert x.grad == t.grad.item() or (math.isnan(x.grad) and math.isnan(t.grad.item()))


def test_notebook_shows_the_decision_boundary_as_an_image(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    cell = next(c for c in nb.cells if "plot_decision_boundary(model" in c.source)
    shown = [o for o in cell.outputs if o.get("output_type") == "execute_result"]
    assert shown and "image/png" in shown[0]["data"], cell.outputs


def test_train_gpt_names_a_file_that_is_not_utf8(one_line_error, tmp_path, capsys):
    text = tmp_path / "latin1.txt"
    text.write_bytes("café au lait, crème brûlée\n".encode("latin-1") * 50)
    one_line_error(train_gpt_main([str(text)]), str(text))
