"""Build the attention emulator (the real attention.cu, run on the CPU) and run cases on it.

    python tools/cuda_emu/emulate_attention.py                 # the full sweep
    python tools/cuda_emu/emulate_attention.py --jobs 8
    python tools/cuda_emu/emulate_attention.py --source /path/to/attention.cu
    python tools/cuda_emu/emulate_attention.py --case "dtype=f16 Tq=17 Tk=65 D=64 layout=cache"

Exit status 1 when a case fails. tests/kernels/test_attention_emulated.py imports this file
(build, Case, run) and runs a reduced case set on every `make test`. See README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1] / "packages/kernels/src/toykernels/csrc/attention.cu"

CXXFLAGS = ["-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas"]
if os.uname().machine in ("x86_64", "AMD64"):
    CXXFLAGS.append("-fcf-protection=none")  # no shadow stack: the fibers switch stacks by longjmp
# The kernel source only: a load or store misaligned for its type traps (SIGILL), as it faults
# on a GPU; and no type-based alias analysis: CUDA code reads and writes 16-bit tiles through
# uint32_t / uint4 pointers, which nvcc compiles as meant and g++ -O2 need not.
KERNEL_CXXFLAGS = [
    "-fsanitize=alignment",
    "-fsanitize-undefined-trap-on-error",
    "-fno-strict-aliasing",
]
RUNTIME_SOURCES = ("emu.cpp", "ptx.cpp", "attention_harness.cpp")  # independent of the .cu file
FAULT_STATUS = 3  # the harness's exit status after a memory fault (emu::catch_memory_faults)
DTYPES = ("f32", "f16", "bf16")
HEAD_DIMS = (32, 64, 128)
LAYOUTS = ("contig", "qkv", "cache", "padded")


class BuildError(RuntimeError):
    pass


def find_cxx() -> str | None:
    """$CXX, else g++ on the PATH."""
    return shutil.which(os.environ.get("CXX") or "g++")


def build(source: Path, out_dir: Path, cxx: str = "g++", runtime_from: Path | None = None) -> Path:
    """Transforms `source` (an attention.cu; its folder must hold attention.h), compiles it with
    the emulator and the harness, and links out_dir/attention_emu, which it returns.

    runtime_from: an earlier build's folder whose runtime objects (emu.o, ptx.o,
    attention_harness.o) are linked instead of compiling them again.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    transformed = out_dir / "attention_emu.cpp"
    cmd = [sys.executable, str(HERE / "transform.py"), str(source), str(transformed)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"transform.py failed:\n{result.stderr}")

    def obj(folder: Path, unit: str) -> Path:
        return folder / Path(unit).with_suffix(".o").name

    units = {transformed: obj(out_dir, transformed.name)}
    if runtime_from is None:
        units.update({HERE / name: obj(out_dir, name) for name in RUNTIME_SOURCES})
        objects = list(units.values())
    else:
        objects = [units[transformed], *(obj(runtime_from, name) for name in RUNTIME_SOURCES)]
    includes = ["-I", str(HERE / "shim"), "-I", str(HERE), "-I", str(source.resolve().parent)]
    jobs = {}  # the units compile side by side
    for unit, target in units.items():
        flags = CXXFLAGS + (KERNEL_CXXFLAGS if unit == transformed else [])
        cmd = [cxx, *flags, *includes, "-c", str(unit), "-o", str(target)]
        jobs[unit] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for unit, job in jobs.items():
        output = job.communicate()[0]
        if job.returncode != 0:
            raise BuildError(f"{cxx} failed on {unit.name}:\n{output[-6000:]}")
    binary = out_dir / "attention_emu"
    result = subprocess.run(
        [cxx, *map(str, objects), "-o", str(binary)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise BuildError(f"link failed:\n{result.stderr[-6000:]}")
    return binary


@dataclasses.dataclass(frozen=True)
class Case:
    """One forward + backward call; see attention_harness.cpp for what each field means."""

    dtype: str  # f32, f16, bf16
    Tq: int
    Tk: int
    D: int
    layout: str = "contig"  # contig, qkv, cache, padded
    B: int = 1
    H: int = 1
    invalid: bool = False  # the launchers must refuse it

    @property
    def name(self) -> str:
        """e.g. f16-D64-Tq17-Tk65-cache-B1H2"""
        words = [
            self.dtype,
            f"D{self.D}",
            f"Tq{self.Tq}",
            f"Tk{self.Tk}",
            self.layout,
            f"B{self.B}H{self.H}",
        ]
        return "-".join(words + (["invalid"] if self.invalid else []))

    def line(self) -> str:
        """The harness's input line; the seed is the name's CRC, so a case always sees the same
        inputs and schedule, whatever runs before it."""
        fields = {
            k: int(v) if isinstance(v, bool) else v for k, v in dataclasses.asdict(self).items()
        }
        words = [f"name={self.name}", *(f"{k}={v}" for k, v in fields.items())]
        return " ".join([*words, f"seed={zlib.crc32(self.name.encode())}"])

    def cost(self) -> int:
        """Rough emulation time (to share the cases out evenly): the score matrix times D, and
        a per-block share (the tensor-core kernels run 64-row tiles whatever the rows)."""
        if self.invalid:
            return 1
        tile = 64 if self.dtype != "f32" else 32
        rows_q = -(-self.Tq // tile) * tile
        rows_k = -(-self.Tk // tile) * tile
        return self.B * self.H * (rows_q * rows_k * self.D // 4 + rows_q * self.D * 32)


@dataclasses.dataclass
class Result:
    cases: int = 0  # cases that ran
    failures: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> first problem
    emu_errors: int = 0
    launches: dict[str, int] = dataclasses.field(default_factory=dict)  # kernel -> launches
    stderr: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        counts = f"{len(self.failures)} failed, {self.emu_errors} emulator errors"
        lines = [f"{self.cases} cases, {counts}, {self.seconds:.1f} s"]
        lines += [f"FAIL {name}: {problem}" for name, problem in self.failures.items()]
        return "\n".join(lines)


def _run_group(binary: Path, cases: list[Case], timeout: float | None) -> Result:
    """Runs the cases on one harness process; after a crash, the rest on a fresh one."""
    result = Result()
    cmd = [str(binary), "--report-launches"]
    while cases:
        lines = "".join(c.line() + "\n" for c in cases)
        proc = subprocess.run(cmd, input=lines, capture_output=True, text=True, timeout=timeout)
        result.stderr += proc.stderr
        reported = set()
        done = False
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "ok":
                reported.add(rest.split(" ")[0])
            elif word == "FAIL":
                name, _, problem = rest.partition(": ")
                reported.add(name)
                result.failures[name] = problem
            elif word == "done":
                done = True
                fields = dict(kv.split("=") for kv in rest.split())
                result.emu_errors += int(fields["emu_errors"])
            elif word == "launched":
                count, _, kernel = rest.partition(" ")
                result.launches[kernel] = result.launches.get(kernel, 0) + int(count)
        result.cases += len(reported)
        if done:
            break
        # A crash. Exit status 3: the fault handler has printed the FAIL line of the case it
        # happened in (the last line); otherwise the case after the last line is to blame.
        last = max((k for k, c in enumerate(cases) if c.name in reported), default=-1)
        crashed = last if proc.returncode == FAULT_STATUS and last >= 0 else last + 1
        if crashed == last + 1:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            name = cases[crashed].name if crashed < len(cases) else "(after the last case)"
            result.failures[name] = f"the harness crashed (exit status {proc.returncode}): {tail}"
            result.cases += crashed < len(cases)
        cases = cases[crashed + 1 :]
    return result


def run(binary: Path, cases: list[Case], jobs: int = 2, timeout: float | None = None) -> Result:
    """Runs the cases on `jobs` harness processes side by side and merges what they report."""
    start = time.perf_counter()
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"cases with the same name: {sorted(duplicates)}")
    groups: list[list[Case]] = [[] for _ in range(max(1, min(jobs, len(cases))))]
    loads = [0] * len(groups)
    for case in sorted(cases, key=Case.cost, reverse=True):  # biggest first, to the least loaded
        k = loads.index(min(loads))
        groups[k].append(case)
        loads[k] += case.cost()
    with ThreadPoolExecutor(len(groups)) as pool:
        parts = list(pool.map(lambda g: _run_group(binary, g, timeout), groups))
    merged = Result(seconds=time.perf_counter() - start)
    for part in parts:
        merged.cases += part.cases
        merged.emu_errors += part.emu_errors
        merged.stderr += part.stderr
        for kernel, count in part.launches.items():
            merged.launches[kernel] = merged.launches.get(kernel, 0) + count
    for name in names:  # in case order
        for part in parts:
            if name in part.failures:
                merged.failures[name] = part.failures[name]
    return merged


SWEEP_LENGTHS = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 130, 200, 257]


def full_sweep() -> list[Case]:
    """Every dtype x head dim x layout over query/key lengths around the tile sizes (16-row
    warp tiles, 32 and 64-row block tiles): Tq == Tk, Tq < Tk (a KV cache) and Tq = 1, two
    (batch, head) shapes, plus problems the launchers must refuse."""
    cases = []
    pairs = [(t, t) for t in SWEEP_LENGTHS]
    pairs += [(1, t) for t in SWEEP_LENGTHS if t > 1]
    pairs += [
        (tq, tk)
        for tq, tk in [(2, 3), (17, 65), (33, 64), (64, 130), (65, 129), (100, 257), (129, 200)]
    ]
    for dtype in DTYPES:
        for D in HEAD_DIMS:
            for n, (tq, tk) in enumerate(pairs):
                layouts = [layout for layout in LAYOUTS if tq == tk or layout != "qkv"]
                layout = layouts[n % len(layouts)]
                bh = (2, 3) if n % 3 == 0 else (1, 2)
                if tq * tk * D > 130 * 130 * 64:
                    bh = (1, 1)
                cases.append(Case(dtype, tq, tk, D, layout, *bh))
    cases += invalid_cases()
    return cases


def invalid_cases() -> list[Case]:
    """Problems the launchers must refuse: a head dim without a kernel, Tq > Tk, nothing."""
    return [
        Case("f16", 8, 8, 16, invalid=True),
        Case("f32", 8, 8, 48, invalid=True),
        Case("bf16", 8, 8, 256, invalid=True),
        Case("f32", 9, 8, 32, invalid=True),
        Case("f16", 0, 8, 64, invalid=True),
        Case("bf16", 4, 4, 64, B=0, invalid=True),
    ]


def parse_case(words: str) -> Case:
    """A Case from "dtype=f16 Tq=17 Tk=65 D=64 layout=cache ..." (Case's fields; bools as 0/1)."""
    types = {f.name: f.type for f in dataclasses.fields(Case)}  # names: "str", "int", "bool"
    fields = {}
    for word in words.split():
        key, _, value = word.partition("=")
        if key not in types:
            raise SystemExit(f"unknown case field {key!r}; fields: {', '.join(types)}")
        convert = {"str": str, "int": int, "bool": lambda v: v not in ("0", "false")}[types[key]]
        fields[key] = convert(value)
    return Case(**fields)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--source", type=Path, default=DEFAULT_SOURCE, help="the attention.cu to emulate")
    add("--jobs", type=int, default=os.cpu_count() or 2, help="harness processes side by side")
    add("--case", action="append", help="only this case (repeatable): 'dtype=f16 Tq=17 Tk=65 D=64'")
    add("--build-dir", type=Path, help="build here (and keep it) instead of a temporary folder")
    args = parser.parse_args()
    cxx = find_cxx()
    if cxx is None:
        print("no C++ compiler: set CXX or install g++", file=sys.stderr)
        return 2
    cases = [parse_case(c) for c in args.case] if args.case else full_sweep()
    with tempfile.TemporaryDirectory(prefix="cuda_emu_") as tmp:
        out_dir = args.build_dir or Path(tmp)
        start = time.perf_counter()
        binary = build(args.source, out_dir, cxx)
        print(f"built {binary} from {args.source} in {time.perf_counter() - start:.1f} s")
        result = run(binary, cases, jobs=args.jobs)
        print(result.summary())
        never = sorted(k for k, n in result.launches.items() if n == 0)
        if never and not args.case:
            print("kernels never launched:", ", ".join(never))
        failed = bool(result.failures or result.emu_errors or result.cases != len(cases))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
