"""micrograd's demo with toygrad: a 2-16-16-1 MLP learns to separate two moons.

    toygrad-demo [--out toygrad_demo.png]      (or: python -m toygrad.demo)

100 points, max-margin (hinge) loss plus an L2 penalty of 1e-4, 100 steps of plain SGD with a
learning rate decaying from 1.0 to 0.1, full batch. It reaches 100% training accuracy and writes
the decision boundary to a PNG. `train()` is importable: the notebook and the tests call it.
"""

import argparse
import random
import sys
import time
from dataclasses import dataclass, field

from toygrad.datasets import make_moons
from toygrad.engine import Value, add_n
from toygrad.losses import max_margin_loss
from toygrad.nn import MLP
from toygrad.optim import SGD

__all__ = ["DemoConfig", "loss_and_accuracy", "train", "main"]


@dataclass
class DemoConfig:
    n_samples: int = 100  # points in the moons dataset
    noise: float = 0.1  # std of the Gaussian noise on each coordinate
    data_seed: int = 1  # seed of the dataset (its own random.Random)
    model_seed: int = 1337  # random.seed(...) before building the MLP, as micrograd's demo
    steps: int = 100  # full-batch SGD steps
    alpha: float = 1e-4  # L2 penalty: loss += alpha * sum(p**2)
    out: str = "toygrad_demo.png"  # decision-boundary PNG ("" to skip)
    hidden: list = field(default_factory=lambda: [16, 16])


def loss_and_accuracy(model, X, y, alpha):
    """Forward over the whole batch: (hinge loss + alpha * ||params||^2, accuracy). y is +-1."""
    inputs = [[Value(x1), Value(x2)] for x1, x2 in X]
    scores = [model(x) for x in inputs]
    data_loss = max_margin_loss(scores, y)
    reg_loss = alpha * add_n([p * p for p in model.parameters()])
    accuracy = sum((yi > 0) == (s.data > 0) for yi, s in zip(y, scores)) / len(y)
    return data_loss + reg_loss, accuracy


def _progress(step, total, loss, acc, stream):
    # One line redrawn in place on a terminal; a line every 10 steps in a log or a notebook.
    width = 30
    done = width * step // total
    line = f"step {step:3d}/{total} [{'#' * done}{'.' * (width - done)}] loss {loss:.4f} acc {acc:.0%}"
    if stream.isatty():
        end = "\n" if step == total else ""
        stream.write("\r" + line + end)
    elif step % 10 == 0 or step == total:
        stream.write(line + "\n")
    stream.flush()


def train(config=None, quiet=False, stream=None):
    """Train on moons; return (model, X, y, history) with history a list of (loss, accuracy).

    Progress goes to `stream` (sys.stdout at call time by default) unless `quiet`.
    """
    config = config or DemoConfig()
    stream = None if quiet else (stream or sys.stdout)
    X, labels = make_moons(config.n_samples, noise=config.noise, seed=config.data_seed)
    y = [2 * label - 1 for label in labels]  # {0, 1} -> {-1, +1} for the max-margin loss
    random.seed(config.model_seed)
    model = MLP(2, [*config.hidden, 1])
    optimizer = SGD(model.parameters(), lr=1.0)
    history = []
    for k in range(config.steps):
        loss, acc = loss_and_accuracy(model, X, y, config.alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.lr = 1.0 - 0.9 * k / config.steps
        optimizer.step()
        history.append((loss.data, acc))
        if stream is not None:
            _progress(k + 1, config.steps, loss.data, acc, stream)
    return model, X, y, history


def main(argv=None):
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=defaults.out,
                        help="decision-boundary PNG to write (default: %(default)s); '' to skip")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="SGD steps (default: %(default)s)")
    parser.add_argument("--n-samples", type=int, default=defaults.n_samples, help="points (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=defaults.noise, help="data noise (default: %(default)s)")
    parser.add_argument("--data-seed", type=int, default=defaults.data_seed)
    parser.add_argument("--model-seed", type=int, default=defaults.model_seed)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    config = DemoConfig(n_samples=args.n_samples, noise=args.noise, data_seed=args.data_seed,
                        model_seed=args.model_seed, steps=args.steps, out=args.out)

    t0 = time.perf_counter()
    model, X, y, history = train(config)
    seconds = time.perf_counter() - t0
    loss, acc = history[-1]
    sizes = [2, *config.hidden, 1]
    print(f"trained an MLP {sizes} ({len(model.parameters())} parameters) in {seconds:.1f} s ({1000 * seconds / config.steps:.0f} ms/step): "
          f"final loss {loss:.4f}, training accuracy {acc:.0%}")
    if config.out:
        from pathlib import Path

        from toygrad.viz import plot_decision_boundary

        try:
            plot_decision_boundary(model, X, y, path=config.out,
                                   title=f"toygrad MLP on moons: accuracy {acc:.0%}")
        except ImportError as e:
            print(f"not writing {config.out}: {e}", file=sys.stderr)
            return 0
        print(f"wrote the decision boundary to {Path(config.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
