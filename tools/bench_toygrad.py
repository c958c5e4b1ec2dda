"""Benchmark: one full training step of toygrad's demo, against a plain closure-per-node engine.

    .venv/bin/python tools/bench_toygrad.py [--repeats 30] [--baseline-repeats 5] [--csv PATH]

The step is the demo's (toygrad/demo.py): forward of MLP(2, [16, 16, 1]) over 100 moons points,
max-margin loss + 1e-4 L2, zero_grad, backward, SGD update. Providers:
- toygrad:  toygrad.engine / toygrad.nn (n-ary dot nodes, __slots__, iterative topo sort).
- baseline: karpathy/micrograd itself (`pip install micrograd==0.1.0`; the Makefile installs it):
            one binary node per + and *, a set of children, a fresh closure per node, a
            recursive topological sort.
Both start from the same weights (random.seed(1337)) and their first losses are checked to agree
before anything is timed. Reported: median / min / max wall-clock ms per step over the repeats, and
CPU ms per step (process time: less disturbed when other processes share the cores), and the
ratio of the medians. Goal: toygrad <= 250 ms/step on a 2-core machine.
"""

import argparse
import csv
import datetime
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from benchlib import git_commit
from toygrad.datasets import make_moons
from toygrad.demo import loss_and_accuracy
from toygrad.nn import MLP

try:
    import micrograd.engine
    import micrograd.nn
except ImportError:
    sys.exit("bench_toygrad: the baseline is karpathy/micrograd: pip install micrograd==0.1.0")


def baseline_loss(model, X, y, alpha):
    scores = [model([micrograd.engine.Value(x1), micrograd.engine.Value(x2)]) for x1, x2 in X]
    losses = [(1 + -yi * s).relu() for yi, s in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    return data_loss + alpha * sum(p * p for p in model.parameters())


# ---- the step being timed ----


def make_step(provider, X, y, alpha=1e-4, lr=0.5):
    random.seed(1337)
    if provider == "toygrad":
        model = MLP(2, [16, 16, 1])
        params = model.parameters()

        def loss_fn():
            return loss_and_accuracy(model, X, y, alpha)[0]
    else:
        model = micrograd.nn.MLP(2, [16, 16, 1])
        params = model.parameters()

        def loss_fn():
            return baseline_loss(model, X, y, alpha)

    def step():
        loss = loss_fn()
        for p in params:
            p.grad = 0
        loss.backward()
        for p in params:
            p.data -= lr * p.grad
        return loss.data

    return step


def time_steps(step, repeats, warmup=1):
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(1000 * (time.perf_counter() - w0))
        cpu.append(1000 * (time.process_time() - c0))
    return wall, cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time toygrad's demo training step.")
    parser.add_argument("--repeats", type=int, default=30, help="timed toygrad steps (default 30)")
    parser.add_argument("--baseline-repeats", type=int, default=5,
                        help="timed baseline steps, 0 to skip the baseline (default 5)")
    parser.add_argument("--csv", type=Path, default=None, help="append the results to this CSV")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.baseline_repeats < 0:
        parser.error("--repeats must be >= 1 and --baseline-repeats >= 0")

    X, labels = make_moons(100, noise=0.1, seed=1)
    y = [2 * label - 1 for label in labels]
    providers = ["toygrad"] + (["baseline"] if args.baseline_repeats else [])

    # Correctness before timing: the same weights must give the same first loss.
    first_losses = {p: make_step(p, X, y)() for p in providers}
    if "baseline" in first_losses:
        a, b = first_losses["toygrad"], first_losses["baseline"]
        if abs(a - b) > 1e-9 * abs(b):
            sys.exit(f"providers disagree before timing: toygrad loss {a} vs baseline {b}")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load average {load:.2f} at start")
    results = {}
    for provider in providers:
        repeats = args.repeats if provider == "toygrad" else args.baseline_repeats
        wall, cpu = time_steps(make_step(provider, X, y), repeats)
        results[provider] = (statistics.median(wall), min(wall), max(wall), statistics.median(cpu), repeats)
        med, lo, hi, cpu_med, n = results[provider]
        print(f"{provider:>8}: median {med:7.1f} ms/step  (min {lo:.1f}, max {hi:.1f}, "
              f"cpu median {cpu_med:.1f}; {n} repeats)")
    if "baseline" in results:
        ratio = results["baseline"][0] / results["toygrad"][0]
        cpu_ratio = results["baseline"][3] / results["toygrad"][3]
        print(f"speed-up vs baseline: {ratio:.1f}x wall, {cpu_ratio:.1f}x cpu (ratio of medians)")
    goal = "met" if results["toygrad"][0] <= 250 else "NOT met"
    print(f"goal <= 250 ms/step: {goal}")

    if args.csv:
        new = not args.csv.exists()
        with args.csv.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["date", "commit", "python", "cpus", "load_avg", "provider", "repeats",
                                 "median_ms", "min_ms", "max_ms", "cpu_median_ms"])
            for provider, (med, lo, hi, cpu_med, n) in results.items():
                writer.writerow([datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                 git_commit(), platform.python_version(), os.cpu_count(), f"{load:.2f}",
                                 provider, n, f"{med:.2f}", f"{lo:.2f}", f"{hi:.2f}", f"{cpu_med:.2f}"])
        print(f"appended to {args.csv}")


if __name__ == "__main__":
    main()
