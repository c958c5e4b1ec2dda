"""Pictures: the expression graph (`draw_dot`) and a model's decision boundary (PNG).

Both libraries are optional extras, imported inside the functions so that `import toygrad` stays
dependency-free: `pip install toygrad[graph]` for graphviz (plus the graphviz *program*, `dot`, to
render images), `pip install toygrad[plot]` for matplotlib. The chart uses matplotlib's
object-oriented API with the Agg canvas, not pyplot, so it works without a display and does not
change the backend of a notebook or script that imports it.
"""

from toygrad.engine import Value

__all__ = ["draw_dot", "render_dot", "plot_decision_boundary"]


def _import_graphviz():
    try:
        import graphviz
    except ImportError:
        raise ImportError(
            "draw_dot needs the graphviz Python package: pip install 'toygrad[graph]'"
        ) from None
    return graphviz


def draw_dot(root, rankdir="LR"):
    """A graphviz.Digraph of the expression below `root`: one box per Value (label, data, grad) and
    one ellipse per op, with edges in the direction of the forward computation.

    In Jupyter the returned graph displays itself (if the `dot` program is installed);
    `.source` is the DOT text; `render_dot(root, path)` writes an SVG or PNG file.
    """
    if not isinstance(root, Value):
        raise TypeError(f"draw_dot takes a Value, got {type(root).__name__}")
    if rankdir not in ("LR", "TB"):
        raise ValueError(f"rankdir must be 'LR' or 'TB', got {rankdir!r}")
    graphviz = _import_graphviz()
    dot = graphviz.Digraph(format="svg", graph_attr={"rankdir": rankdir})
    for node in root._topological_order():
        uid = str(id(node))
        name = f"{node.label} | " if node.label else ""
        dot.node(uid, label=f"{{ {name}data {node.data:.4f} | grad {node.grad:.4f} }}", shape="record")
        if node._op:
            # The op gets its own small node so the picture reads like the formula: inputs -> op -> out.
            dot.node(uid + node._op, label=node._op)
            dot.edge(uid + node._op, uid)
            for child in node._prev:
                dot.edge(str(id(child)), uid + node._op)
    return dot


def render_dot(root, path, rankdir="LR"):
    """Write the graph of `root` to `path` (format from the suffix: .svg or .png); return the path.

    Rendering needs the graphviz program (`dot`), which pip cannot install; without it this raises
    a RuntimeError that says how to get it.
    """
    from pathlib import Path

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("svg", "png"):
        raise ValueError(f"render_dot writes .svg or .png files, got {str(path)!r}")
    graphviz = _import_graphviz()
    dot = draw_dot(root, rankdir=rankdir)
    try:
        written = dot.render(outfile=path, format=fmt, cleanup=True)
    except graphviz.ExecutableNotFound:
        raise RuntimeError(
            "rendering needs the graphviz program `dot`, which is not on the PATH. Install it with "
            "your system's package manager (apt install graphviz, brew install graphviz, "
            "conda install graphviz). The graph's DOT text is draw_dot(root).source."
        ) from None
    return Path(written)


def plot_decision_boundary(model, X, y, path=None, steps=50, title=None):
    """Colour the plane by the model's predicted class and overlay the points; return the Figure.

    `model` maps [x1, x2] to one score (class = score > 0, as micrograd's demo) or to a list of
    class scores (class = argmax). Writes a PNG to `path` if given. `steps` is the grid resolution
    per axis: steps**2 forward passes.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "plot_decision_boundary needs matplotlib: pip install 'toygrad[plot]'"
        ) from None
    if len(X) != len(y) or not X:
        raise ValueError(f"X and y must be non-empty and the same length, got {len(X)} and {len(y)}")

    x1s = [p[0] for p in X]
    x2s = [p[1] for p in X]
    x1_min, x1_max = min(x1s) - 0.5, max(x1s) + 0.5
    x2_min, x2_max = min(x2s) - 0.5, max(x2s) + 0.5
    grid1 = [x1_min + (x1_max - x1_min) * i / (steps - 1) for i in range(steps)]
    grid2 = [x2_min + (x2_max - x2_min) * j / (steps - 1) for j in range(steps)]
    classes = [[_predict(model, [a, b]) for a in grid1] for b in grid2]  # (steps, steps), rows = x2

    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig then needs no pyplot and no display
    ax = fig.add_subplot()
    ax.contourf(grid1, grid2, classes, cmap="Spectral", alpha=0.8)
    ax.scatter(x1s, x2s, c=[int(label > 0) if label in (-1, 1) else label for label in y],
               s=30, cmap="Spectral", edgecolors="black")
    ax.set_xlim(x1_min, x1_max)
    ax.set_ylim(x2_min, x2_max)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    if title:
        ax.set_title(title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _predict(model, point):
    out = model(point)
    if isinstance(out, Value):
        return int(out.data > 0)
    scores = [v.data for v in out]
    if len(scores) == 1:
        return int(scores[0] > 0)
    return max(range(len(scores)), key=scores.__getitem__)
