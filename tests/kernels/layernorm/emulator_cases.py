"""The LayerNorm emulator's cases: build the real layernorm.cu with its harness
(emulator_harness.cpp, beside this file) on the CUDA emulator (tools/cuda_emu) and run cases
on it. From the repository's root:

    python tools/cuda_emu/emulate.py tests/kernels/layernorm/emulator_cases.py   # the full sweep
    python tools/cuda_emu/emulate.py tests/kernels/layernorm/emulator_cases.py --jobs 8 --occupancy 1 2 8
    python tools/cuda_emu/emulate.py tests/kernels/layernorm/emulator_cases.py --source /path/to/layernorm.cu
    python tools/cuda_emu/emulate.py tests/kernels/layernorm/emulator_cases.py --case "dtype=f16 rows=9 C=768 fused=1 sms=2"

Exit status 1 when a case fails. test_emulated.py imports this file (build, Case, run; loaded
by tests/conftest.py) and runs a reduced case set on every `make test`. See
tools/cuda_emu/README.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import emulate

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "packages/kernels/src/toykernels/csrc/layernorm.cu"
HARNESS = HERE / "emulator_harness.cpp"


def build(source: Path, out_dir: Path, cxx: str = "g++", runtime_from: Path | None = None) -> Path:
    """Transforms `source` (a layernorm.cu; its folder must hold layernorm.h), compiles it with
    the emulator and the harness, and links out_dir/layernorm_emu, which it returns.

    runtime_from: an earlier build's folder whose emulator and harness objects are linked
    instead of compiling them again (they do not depend on the .cu file).
    """
    return emulate.build(source, HARNESS, out_dir, cxx, runtime_from=runtime_from)


@dataclasses.dataclass(frozen=True)
class Case(emulate.HarnessCase):
    """One forward + backward call; see emulator_harness.cpp for what each field means."""

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

    def cost(self) -> int:
        """Rough emulation time, to share the cases out evenly: the row kernels plus the
        column-wise ones (dweight/dbias), which run C / 32 blocks whatever the rows."""
        return max(self.rows, 1) * self.C + 8 * self.C + 20_000


def run(
    binary: Path, cases: list[Case], jobs: int = 2, occupancy: int = 2, timeout: float | None = None
) -> emulate.Result:
    """Runs the cases on `jobs` harness processes side by side and merges what they report.
    occupancy: the blocks per SM that the occupancy query answers (the backward's grid)."""
    return emulate.run(binary, cases, jobs, timeout, flags=["--occupancy", str(occupancy)])


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


def main(argv: list[str]) -> int:
    """The command line (run by tools/cuda_emu/emulate.py): the full sweep or --case."""
    parser = emulate.argument_parser(__doc__, DEFAULT_SOURCE, "dtype=f16 rows=9 C=768")
    parser.add_argument("--occupancy", type=int, nargs="+", default=[2, 8],
        help="blocks per SM the occupancy query answers; the cases run once per value")  # fmt: skip
    args = parser.parse_args(argv)
    runs = [(f"occupancy {n}: ", ["--occupancy", str(n)]) for n in args.occupancy]
    return emulate.main(args, Case, full_sweep, build, runs)
