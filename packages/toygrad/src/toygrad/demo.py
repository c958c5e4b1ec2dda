"""micrograd's demo with toygrad: a 2-16-16-1 MLP learns to separate two moons.

    toygrad-demo [--out toygrad_demo.png]      (or: python -m toygrad.demo)

100 points, max-margin (hinge) loss plus an L2 penalty of 1e-4, 100 steps of plain SGD with a
learning rate decaying from 1.0 to 0.1, full batch. It reaches 100% training accuracy and writes
the decision boundary to a PNG. `train()` is importable: the notebook and the tests call it.
"""

import argparse
import math
import os
import random
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

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


# ---- command-line plumbing of toygrad's two commands (toygrad-demo, toygrad-train-gpt) ----
# NOTE: toygpt.flags does the same for toygpt's commands, but toygrad's core depends on nothing
# (toygpt depends on it, never the reverse), so these few lines are toygrad's own copy.


class UsageError(ValueError):
    """A bad command line: `prog: error: argument --x: ... (see prog -h)`, exit code 2."""

    def __init__(self, prog, message):
        super().__init__(f"{message} (see {prog} -h)")
        self.prog = prog


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (UsageError) instead of the usage text."""

    def error(self, message):
        raise UsageError(self.prog, message)


def number(kind, at_least=None, above=None, below=None):
    """An argparse `type=`: an int or a finite float, at least / above / below the bounds given."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):  # nan passes every comparison below as False
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        for bound, ok, words in ((at_least, lambda b: value >= b, "at least"),
                                 (above, lambda b: value > b, "greater than"),
                                 (below, lambda b: value < b, "less than")):
            if bound is not None and not ok(bound):
                raise argparse.ArgumentTypeError(f"must be {words} {bound}, got {value}")
        return value
    return parse


def writable_path(option, path, suffixes=None):
    """Check before the work that `path` can be written (its folder exists and takes a new file);
    nothing is written to `path` itself, so a file already there is left as it is."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path}: the file name must end in {', '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent or ".", prefix=f".{path.name}."):
            pass
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {path.parent} ({e.strerror})") from None


def write_atomically(path, write):
    """`write(tmp_path)` then rename over `path`: a crash leaves the old file or the new one."""
    path = Path(path)
    # the same suffix, for writers that pick the format from it; created by `write` (not mkstemp),
    # so it gets the permissions any new file gets
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_command(prog, body):
    """Run `body()` -> exit code. A bad input (ValueError, OSError, ImportError) is one line on
    stderr and exit 2; anything else is a bug: one line naming a log with the traceback, exit 1."""
    try:
        return body()
    except UsageError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
    except (ValueError, OSError, ImportError) as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        fd, log = tempfile.mkstemp(prefix=f"{prog}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(traceback.format_exc())
        print(f"{prog}: internal error: {type(e).__name__}: {e} (the traceback is in {log})", file=sys.stderr)
        return 1
    return 2


IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")  # what matplotlib's Agg always writes


def main(argv=None):
    return run_command("toygrad-demo", lambda: _main(argv))


def _main(argv):
    defaults = DemoConfig()
    parser = OneLineParser(prog="toygrad-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=defaults.out,
                        help="decision-boundary image to write, .png, .svg or .pdf (default: %(default)s); "
                             "'' to skip")
    parser.add_argument("--steps", type=number(int, at_least=1), default=defaults.steps,
                        help="SGD steps, at least 1 (default: %(default)s)")
    parser.add_argument("--n-samples", type=number(int, at_least=2), default=defaults.n_samples,
                        help="points, at least 2: one per class (default: %(default)s)")
    parser.add_argument("--noise", type=number(float, at_least=0), default=defaults.noise,
                        help="std of the data noise, at least 0 (default: %(default)s)")
    parser.add_argument("--data-seed", type=number(int), default=defaults.data_seed)
    parser.add_argument("--model-seed", type=number(int), default=defaults.model_seed)
    args = parser.parse_args(argv)
    if args.out:  # checked before training, not after it
        writable_path("--out", args.out, IMAGE_SUFFIXES)
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
        from toygrad.viz import plot_decision_boundary

        title = f"toygrad MLP on moons: accuracy {acc:.0%}"
        try:
            write_atomically(config.out, lambda tmp: plot_decision_boundary(model, X, y, path=tmp, title=title))
        except ImportError as e:
            print(f"not writing {config.out}: {e}", file=sys.stderr)
            return 0
        print(f"wrote the decision boundary to {Path(config.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
