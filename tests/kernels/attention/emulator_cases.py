"""The attention emulator's cases: build the real attention.cu with its harness
(emulator_harness.cpp, beside this file) on the CUDA emulator (tools/cuda_emu) and run cases
on it. From the repository's root:

    python tools/cuda_emu/emulate.py tests/kernels/attention/emulator_cases.py   # the full sweep
    python tools/cuda_emu/emulate.py tests/kernels/attention/emulator_cases.py --jobs 8
    python tools/cuda_emu/emulate.py tests/kernels/attention/emulator_cases.py --source /path/to/attention.cu
    python tools/cuda_emu/emulate.py tests/kernels/attention/emulator_cases.py --case "dtype=f16 Tq=17 Tk=65 D=64 layout=cache"

Exit status 1 when a case fails. test_emulated.py imports this file (build, Case, run; loaded
by tests/conftest.py) and runs a reduced case set on every `make test`. See
tools/cuda_emu/README.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import emulate

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "packages/kernels/src/toykernels/csrc/attention.cu"
HARNESS = HERE / "emulator_harness.cpp"
# No type-based alias analysis in the kernel source: CUDA code reads and writes 16-bit tiles
# through uint32_t / uint4 pointers, which nvcc compiles as meant and g++ -O2 need not.
KERNEL_CXXFLAGS = ["-fno-strict-aliasing"]
DTYPES = ("f32", "f16", "bf16")
HEAD_DIMS = (32, 64, 128)
LAYOUTS = ("contig", "qkv", "cache", "padded")


def build(source: Path, out_dir: Path, cxx: str = "g++", runtime_from: Path | None = None) -> Path:
    """Transforms `source` (an attention.cu; its folder must hold attention.h), compiles it with
    the emulator and the harness, and links out_dir/attention_emu, which it returns.

    runtime_from: an earlier build's folder whose emulator and harness objects are linked
    instead of compiling them again (they do not depend on the .cu file).
    """
    return emulate.build(
        source, HARNESS, out_dir, cxx, kernel_flags=KERNEL_CXXFLAGS, runtime_from=runtime_from
    )


@dataclasses.dataclass(frozen=True)
class Case(emulate.HarnessCase):
    """One forward + backward call; see emulator_harness.cpp for what each field means."""

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

    def cost(self) -> int:
        """Rough emulation time (to share the cases out evenly): the score matrix times D, and
        a per-block share (the tensor-core kernels run 64-row tiles whatever the rows)."""
        if self.invalid:
            return 1
        tile = 64 if self.dtype != "f32" else 32
        rows_q = -(-self.Tq // tile) * tile
        rows_k = -(-self.Tk // tile) * tile
        return self.B * self.H * (rows_q * rows_k * self.D // 4 + rows_q * self.D * 32)


run = emulate.run  # run(binary, cases, jobs=2, timeout=None): runs them and merges the reports


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


def main(argv: list[str]) -> int:
    """The command line (run by tools/cuda_emu/emulate.py): the full sweep or --case."""
    parser = emulate.argument_parser(__doc__, DEFAULT_SOURCE, "dtype=f16 Tq=17 Tk=65 D=64")
    return emulate.main(parser.parse_args(argv), Case, full_sweep, build)
