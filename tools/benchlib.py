"""What every benchmark script in tools/ shares: the timer, the command-line checks and the
provenance of a CSV row.

- `Timer`: median milliseconds of a function, the L2 cache flushed before each CUDA run (a
  256 MiB memset, as llm.c's benchmark helper does) so that no run reads its inputs from the
  previous one's cache; plain wall time on a CPU.
- `usage_error`, `parse_shapes`, `parse_names`: one-line command-line errors with exit status 2.
- `run_meta`, `git_commit` and `cpu_model`: the columns that say where a row was measured (GPU or CPU, torch
  version, date, commit), so a figure in benchmarks/results/*.csv can be traced to its code;
  `append_csv` appends the rows (a header first when the file is new).

The scripts run as `python tools/bench_X.py`, which puts tools/ on sys.path: `import benchlib`.
"""

from __future__ import annotations

import csv
import datetime
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
L2_FLUSH_BYTES = 256 * 2**20  # larger than any GPU's L2 (H100: 50 MB)


class Timer:
    """Median milliseconds of fn(), the L2 flushed before each run (CUDA), or wall time (CPU).
    The first call is a warm-up (extension builds, torch.compile, the caching allocator)."""

    def __init__(self, device, reps):
        import torch

        self.device, self.reps = device, reps
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if device == "cuda" else None

    def __call__(self, fn):
        import torch

        fn()  # warm-up
        times = []
        for _ in range(self.reps):
            if self.device == "cuda":
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it ("Intel(R) Xeon(R) ...", "AMD EPYC ..."): CPU figures
    differ between vendors, so every CPU row names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(default: str = "unknown") -> str:
    """The short hash of HEAD, or `default` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return default
    return out or default


def run_meta(**device) -> dict:
    """The provenance columns of a CSV row: the device's own columns (gpu=..., cpu=...) first,
    then torch's version (when torch is installed), today's date and the commit."""
    meta = dict(device)
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    meta["date"] = datetime.date.today().isoformat()
    meta["commit"] = git_commit()
    return meta


def append_csv(path, rows: list[dict], note: str = "") -> None:
    """Append rows to the CSV at path, with a header of the first row's keys when the file is new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"{note}appended {len(rows)} rows to {path}")


def usage_error(prog: str, message: str):
    """A command-line error: one line, exit status 2."""
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(2)


def parse_shapes(prog: str, text: str, dims: str, example: str) -> list[tuple[int, ...]]:
    """'16x12x1024x64,4x12x4096x64' with dims 'BxHxTxD' -> [(16, 12, 1024, 64), (4, 12, 4096, 64)]."""
    n = len(dims.split("x"))
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != n or not all(p.isdigit() and int(p) > 0 for p in parts):
            usage_error(prog, f"--shapes: {item.strip()!r} is not {dims} with positive integers, e.g. {example}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def parse_names(prog: str, flag: str, text: str, known) -> list[str]:
    """'torch,toykernels' -> the names, each one of `known` (a --providers list)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        usage_error(prog, f"{flag}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names
