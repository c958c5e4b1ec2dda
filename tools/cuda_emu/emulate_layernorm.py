"""Build the LayerNorm emulator (the real layernorm.cu, run on the CPU) and run cases on it.

    python tools/cuda_emu/emulate_layernorm.py                 # the full sweep
    python tools/cuda_emu/emulate_layernorm.py --jobs 8 --occupancy 1 2 8
    python tools/cuda_emu/emulate_layernorm.py --source /path/to/layernorm.cu
    python tools/cuda_emu/emulate_layernorm.py --case "dtype=f16 rows=9 C=768 fused=1 sms=2"

Exit status 1 when a case fails. tests/kernels/test_layernorm_emulated.py imports this file
(build, Case, run) and runs a reduced case set on every `make test`. See README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1] / "packages/kernels/src/toykernels/csrc/layernorm.cu"

CXXFLAGS = ["-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas"]
if platform.machine() in ("x86_64", "AMD64"):
    CXXFLAGS.append("-fcf-protection=none")  # no shadow stack: the fibers switch stacks by longjmp
# The kernel source only: a GPU faults on a load or store misaligned for its type (a 16-byte
# pack at an 8-byte address); x86 mostly does not, so such an access traps here (SIGILL).
KERNEL_CXXFLAGS = ["-fsanitize=alignment", "-fsanitize-undefined-trap-on-error"]
RUNTIME_SOURCES = ("emu.cpp", "layernorm_harness.cpp")  # independent of the kernel source
FAULT_STATUS = 3  # the harness's exit status after a memory fault (emu::catch_memory_faults)


class BuildError(RuntimeError):
    pass


def find_cxx() -> str | None:
    """$CXX, else g++ on the PATH."""
    return shutil.which(os.environ.get("CXX") or "g++")


def build(source: Path, out_dir: Path, cxx: str = "g++", runtime_from: Path | None = None) -> Path:
    """Transforms `source` (a layernorm.cu; its folder must hold layernorm.h), compiles it with
    the emulator and the harness, and links out_dir/layernorm_emu, which it returns.

    runtime_from: an earlier build's folder whose emu.o and layernorm_harness.o are linked
    instead of compiling them again (they do not depend on the .cu file).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    transformed = out_dir / "layernorm_emu.cpp"
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
    binary = out_dir / "layernorm_emu"
    cmd = [cxx, *map(str, objects), "-o", str(binary)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"link failed:\n{result.stderr[-6000:]}")
    return binary


@dataclasses.dataclass(frozen=True)
class Case:
    """One forward + backward call; see layernorm_harness.cpp for what each field means."""

    dtype: str  # f32, f16, bf16
    rows: int
    C: int
    fused: bool = False
    weight: bool = True
    bias: bool = True
    misalign: bool = False
    wmisalign: bool = False
    sms: int = 1

    @property
    def name(self) -> str:
        """e.g. f16-rows9-C768-fused-noweight-sms2"""
        flags = {"fused": self.fused, "noweight": not self.weight, "nobias": not self.bias,
                 "misaligned": self.misalign, "wmisaligned": self.wmisalign}  # fmt: skip
        words = [self.dtype, f"rows{self.rows}", f"C{self.C}"]
        words += [flag for flag, on in flags.items() if on]
        return "-".join([*words, f"sms{self.sms}"])

    def line(self) -> str:
        """The harness's input line; the seed is the name's CRC, so a case always sees the same
        inputs and schedule, whatever runs before it."""
        fields = {k: int(v) if isinstance(v, bool) else v for k, v in dataclasses.asdict(self).items()}
        words = [f"name={self.name}", *(f"{k}={v}" for k, v in fields.items())]
        return " ".join([*words, f"seed={zlib.crc32(self.name.encode())}"])

    def cost(self) -> int:
        """Rough emulation time, to share the cases out evenly: the row kernels plus the
        column-wise ones (dweight/dbias), which run C / 32 blocks whatever the rows."""
        return max(self.rows, 1) * self.C + 8 * self.C + 20_000


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


def _run_group(binary: Path, cases: list[Case], occupancy: int, timeout: float | None) -> Result:
    """Runs the cases on one harness process; after a crash, the rest on a fresh one."""
    result = Result()
    cmd = [str(binary), "--occupancy", str(occupancy), "--report-launches"]
    while cases:
        lines = "".join(c.line() + "\n" for c in cases)
        proc = subprocess.run(cmd, input=lines, capture_output=True, text=True, timeout=timeout)
        result.stderr += proc.stderr
        reported = set()
        done = False
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "ok":
                reported.add(rest)
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
        # The cases after it go to a fresh process.
        last = max((k for k, c in enumerate(cases) if c.name in reported), default=-1)
        crashed = last if proc.returncode == FAULT_STATUS and last >= 0 else last + 1
        if crashed == last + 1:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            name = cases[crashed].name if crashed < len(cases) else "(after the last case)"
            result.failures[name] = f"the harness crashed (exit status {proc.returncode}): {tail}"
            result.cases += crashed < len(cases)
        cases = cases[crashed + 1 :]
    return result


def run(
    binary: Path, cases: list[Case], jobs: int = 2, occupancy: int = 2, timeout: float | None = None
) -> Result:
    """Runs the cases on `jobs` harness processes side by side and merges what they report.
    occupancy: the blocks per SM that the occupancy query answers (the backward's grid)."""
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
        parts = list(pool.map(lambda g: _run_group(binary, g, occupancy, timeout), groups))
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


SWEEP_WIDTHS = [1, 2, 3, 7, 8, 16, 31, 32, 33, 64, 96, 127, 128, 255, 256, 257, 512, 768,
                1000, 1024, 1025, 1600, 2048, 2056, 4096, 4097, 8192, 8200, 16384, 16392,
                32768, 65536]  # fmt: skip


def full_sweep() -> list[Case]:
    """Every width above (each launch path, pack sizes, ragged tails) x rows {0, 1, 7, 9, 33}
    (up to 9 from 16384 on) x six variants x three dtypes, plus many rows over few SMs
    (the backward's blocks loop over rows): 2832 cases."""
    variants = [  # plain, fused, no weight, no bias, x misaligned, weight misaligned
        dict(fused=v % 2 == 1, weight=v != 2, bias=v != 3, misalign=v == 4, wmisalign=v == 5,
             sms=v % 3 + 1)  # fmt: skip
        for v in range(6)
    ]
    cases = []
    for C in SWEEP_WIDTHS:
        for rows in (0, 1, 7, 9, 33):
            if C >= 16384 and rows > 9:
                continue
            for variant in variants:
                cases += [Case(dtype, rows, C, **variant) for dtype in ("f32", "f16", "bf16")]
    for C in (1, 64, 768, 4097):
        for sms in (1, 2, 5):
            cases += [Case("f32", 200, C, sms=sms), Case("f16", 150, C, fused=True, sms=sms)]
    return cases


def parse_case(words: str) -> Case:
    """A Case from "dtype=f16 rows=9 C=768 fused=1 ..." (Case's fields; bools as 0 or 1)."""
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
    add("--source", type=Path, default=DEFAULT_SOURCE, help="the layernorm.cu to emulate")
    add("--jobs", type=int, default=os.cpu_count() or 2, help="harness processes side by side")
    add("--occupancy", type=int, nargs="+", default=[2, 8],
        help="blocks per SM the occupancy query answers; the cases run once per value")  # fmt: skip
    add("--case", action="append", help="only this case (repeatable): 'dtype=f16 rows=9 C=768'")
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
        failed = False
        for occupancy in args.occupancy:
            result = run(binary, cases, jobs=args.jobs, occupancy=occupancy)
            print(f"occupancy {occupancy}: {result.summary()}")
            never = sorted(k for k, n in result.launches.items() if n == 0)
            if never and not args.case:
                print("kernels never launched:", ", ".join(never))
            failed |= bool(result.failures or result.emu_errors or result.cases != len(cases))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
