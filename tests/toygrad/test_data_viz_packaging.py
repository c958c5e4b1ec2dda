"""toygrad.datasets, toygrad.viz, and the promise that the core needs no dependency."""

import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from toygrad.datasets import make_circles, make_moons, make_spirals
from toygrad.engine import Value
from toygrad.nn import MLP

PACKAGE = Path(__file__).resolve().parents[2] / "packages" / "toygrad"


@pytest.mark.parametrize("make", [make_moons, make_circles, make_spirals])
def test_datasets_are_seeded_shaped_and_balanced(make):
    X, y = make(n_samples=101, noise=0.1, seed=4)
    assert len(X) == len(y) == 101 and all(len(p) == 2 for p in X)
    assert (X, y) == make(n_samples=101, noise=0.1, seed=4)
    assert X != make(n_samples=101, noise=0.1, seed=5)[0]
    counts = [y.count(c) for c in sorted(set(y))]
    assert max(counts) - min(counts) <= 1
    state = random.getstate()
    make(n_samples=10, seed=1)
    assert random.getstate() == state  # the global RNG (used for weights) is untouched


def test_dataset_geometry_without_noise():
    X, y = make_moons(n_samples=50, seed=0)
    for (x1, x2), label in zip(X, y):
        cx, cy = (0.0, 0.0) if label == 0 else (1.0, 0.5)
        assert math.isclose(math.hypot(x1 - cx, x2 - cy), 1.0, abs_tol=1e-12)
    X, y = make_circles(n_samples=40, factor=0.3, seed=0)
    for (x1, x2), label in zip(X, y):
        assert math.isclose(math.hypot(x1, x2), 1.0 if label == 0 else 0.3, abs_tol=1e-12)
    X, y = make_spirals(n_samples=30, n_classes=3, seed=0)
    assert sorted(set(y)) == [0, 1, 2] and max(math.hypot(*p) for p in X) <= 1 + 1e-12


def test_datasets_reject_bad_arguments():
    with pytest.raises(ValueError, match="n_samples must be an int >= 2, got 1"):
        make_moons(n_samples=1)
    with pytest.raises(ValueError, match="noise must be a number >= 0, got -0.1"):
        make_circles(noise=-0.1)
    with pytest.raises(ValueError, match="factor must be in \\(0, 1\\), got 1.5"):
        make_circles(factor=1.5)


def test_draw_dot_graph_source():
    pytest.importorskip("graphviz")
    from toygrad.viz import draw_dot

    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    out = (a * b + 1).relu()
    out.backward()
    source = draw_dot(out).source
    assert "a | data 2.0000 | grad 0.0000" in source  # relu is off: no gradient flows
    assert "data -5.0000" in source and "ReLU" in source and "rankdir=LR" in source
    # 6 value nodes (a, b, a*b, the constant 1, the sum, the relu) and 3 op nodes; edges: each op
    # node to its result (3) and each operand to its op node (2 + 2 + 1).
    assert source.count("shape=record") == 6
    assert sum(1 for line in source.splitlines() if "->" in line) == 3 + 5


def test_render_dot_without_the_dot_program_says_how_to_get_it(tmp_path, monkeypatch):
    pytest.importorskip("graphviz")
    from toygrad.viz import render_dot

    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on this PATH, whatever the machine has
    with pytest.raises(RuntimeError, match="graphviz program `dot`.*apt install graphviz"):
        render_dot(Value(1.0) * 2, tmp_path / "graph.svg")
    with pytest.raises(ValueError, match="svg or .png"):
        render_dot(Value(1.0), tmp_path / "graph.pdf")


def test_plot_decision_boundary_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from toygrad.viz import plot_decision_boundary

    random.seed(0)
    model = MLP(2, [4, 1])
    X, y = make_moons(n_samples=20, seed=0)
    path = tmp_path / "boundary.png"
    fig = plot_decision_boundary(model, X, y, path=path, steps=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 1


def test_core_has_no_dependencies():
    text = (PACKAGE / "pyproject.toml").read_text()
    # A regex, not tomllib: tomllib is not in Python 3.10, which toygrad supports.
    found = re.findall(r"^dependencies\s*=\s*(\[[^\]]*\])", text, flags=re.MULTILINE)
    assert found == ["[]"], f"packages/toygrad/pyproject.toml dependencies: {found}"
    code = (
        "import sys, toygrad, toygrad.engine, toygrad.nn, toygrad.losses, toygrad.optim, "
        "toygrad.datasets, toygrad.viz, toygrad.demo\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'matplotlib', 'graphviz', 'toykernels', "
        "'toygrad.tensor', 'tqdm') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing toygrad's core pulled in: {result.stdout}"
