"""Toy 2-D classification datasets in pure Python: moons, circles, spirals.

Each returns (X, y): X a list of [x1, x2] float pairs, y a list of int class labels (0 or 1 for
moons and circles, 0..n_classes-1 for spirals), shuffled. The geometry of moons and circles follows
scikit-learn's make_moons / make_circles, so a learner can switch between them, but the random
numbers are not the same as scikit-learn's. `seed` makes the result reproducible without touching
the global `random` state (which seeds the models' weights); `noise` is the standard deviation of
Gaussian noise added to each coordinate.
"""

import math
import random

__all__ = ["make_moons", "make_circles", "make_spirals"]


def _check(n_samples, noise, min_samples=2):
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < min_samples:
        raise ValueError(f"n_samples must be an int >= {min_samples}, got {n_samples!r}")
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")


def _linspace(start, stop, n):
    if n == 1:
        return [start]
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


def _finish(points, labels, noise, rng):
    X = [[x1 + rng.gauss(0, noise), x2 + rng.gauss(0, noise)] if noise else [x1, x2] for x1, x2 in points]
    order = list(range(len(X)))
    rng.shuffle(order)
    return [X[i] for i in order], [labels[i] for i in order]


def make_moons(n_samples=100, noise=0.0, seed=None):
    """Two interleaving half circles: class 0 the upper one, class 1 the lower, shifted one."""
    _check(n_samples, noise)
    rng = random.Random(seed)
    n_out = n_samples // 2
    n_in = n_samples - n_out
    outer = [(math.cos(t), math.sin(t)) for t in _linspace(0, math.pi, n_out)]
    inner = [(1 - math.cos(t), 1 - math.sin(t) - 0.5) for t in _linspace(0, math.pi, n_in)]
    return _finish(outer + inner, [0] * n_out + [1] * n_in, noise, rng)


def make_circles(n_samples=100, noise=0.0, factor=0.5, seed=None):
    """A circle of radius 1 (class 0) around one of radius `factor` (class 1)."""
    _check(n_samples, noise)
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor!r}")
    rng = random.Random(seed)
    n_out = n_samples // 2
    n_in = n_samples - n_out
    # endpoint excluded: angle 2*pi is the same point as 0
    outer = [(math.cos(2 * math.pi * i / n_out), math.sin(2 * math.pi * i / n_out)) for i in range(n_out)]
    inner = [
        (factor * math.cos(2 * math.pi * i / n_in), factor * math.sin(2 * math.pi * i / n_in))
        for i in range(n_in)
    ]
    return _finish(outer + inner, [0] * n_out + [1] * n_in, noise, rng)


def make_spirals(n_samples=100, noise=0.0, n_classes=2, seed=None):
    """`n_classes` arms winding out from the origin, one class per arm (CS231n's spiral data).

    Arm k at step t in [0, 1]: radius t, angle 4t (one and a bit turns) + 2*pi*k/n_classes.
    """
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    _check(n_samples, noise, min_samples=n_classes)
    rng = random.Random(seed)
    points, labels = [], []
    for k in range(n_classes):
        n_k = n_samples // n_classes + (1 if k < n_samples % n_classes else 0)
        for t in _linspace(0, 1, n_k):
            angle = 4 * t + 2 * math.pi * k / n_classes
            points.append((t * math.cos(angle), t * math.sin(angle)))
            labels.append(k)
    return _finish(points, labels, noise, rng)
