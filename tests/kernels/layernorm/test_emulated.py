"""The real layernorm.cu on the CPU: tools/cuda_emu (see its README.md) compiles the CUDA source
as it is now with g++, runs every CUDA thread as a fiber (warps, shuffles, __syncthreads,
shared memory, one warp running ahead to expose missing barriers), and checks the forward
and backward against float64 with NaN-poisoned outputs and guarded buffers. A reduced case
set runs here (every kernel instantiation, fp32/fp16/bf16); the full sweep is
`python tools/cuda_emu/emulate.py tests/kernels/layernorm/emulator_cases.py` (the harness and
the cases: emulator_harness.cpp and emulator_cases.py, beside this file). Planted bugs check
that the emulator can fail."""

import re

import emulate  # tools/cuda_emu, loaded from its file by conftest.py
import layernorm_emulator_cases as emu  # ./emulator_cases.py, loaded by conftest.py
import pytest
from toykernels import _build

CSRC = _build.CSRC
Case = emu.Case
DTYPES = ("f32", "f16", "bf16")

# Widths and the launch paths they take (VEC = 4 for fp32, 8 for fp16/bf16; "packs": 16-byte
# loads, "scalar": C % VEC != 0, one element at a time):
#   1, 7, 33       scalar, a warp per row (8 rows per block), 4 elements per thread
#   64             packs, a warp per row, 2 packs per thread
#   257            scalar, 4 warps per row forward, a block per row backward
#   768, 1000      packs, 1-2 warps per row forward (4 packs per thread), 2-4 backward;
#                  1000 = 250 or 125 packs: a ragged last round
#   2048, 2056,    packs, 2 to 8 warps (a block) per row; 2056: a ragged last round
#   4096
#   8192           a block per row, 8 packs per thread (fp32 forward and backward), 4 (16-bit)
#   8200           16-bit: forward 8 packs per thread, backward uncached; fp32 all uncached
#   1025, 4097     scalar and too wide for the scalar register cache: the uncached kernels
#   16392          packs, uncached everywhere
#   65536          the widest: uncached, dweight/dbias column-wise over 2048 column blocks
WIDTHS = (1, 7, 33, 64, 257, 768, 1000, 1025, 2048, 2056, 4096, 4097, 8192, 8200, 16392)

# (rows, variant) pairs run for every dtype and width; with the occupancy of 2 that run()
# sets, sms=1 leaves 2 resident blocks, so the backward's blocks loop over the rows
VARIANTS = (
    (1, dict()),
    (9, dict(fused=True, sms=2)),
    (33, dict(weight=False)),
    (7, dict(weight=False, bias=False, sms=3)),
    (3, dict(fused=True, bias=False, misalign=True, sms=2)),  # x, y, ... off 16 bytes: scalar
    (5, dict(wmisalign=True)),  # weight and bias off 16 bytes: scalar
)


def reduced_cases() -> list:
    cases = []
    for dtype in DTYPES:
        cases.append(Case(dtype, 0, 768, sms=2))  # no rows: zero gradients, nothing else
        for C in WIDTHS:
            for rows, variant in VARIANTS:
                cases.append(Case(dtype, rows if C < 16384 else min(rows, 9), C, **variant))
        cases += [Case(dtype, 1, 65536), Case(dtype, 2, 65536, fused=True, bias=False, sms=2)]
    # many rows over few SMs: several partial-sum rows, each summing many rows
    cases += [
        Case("f32", 200, 64, sms=1),
        Case("f16", 150, 768, fused=True, sms=3),
        Case("bf16", 50, 1025, sms=3),  # uncached: 3 row chunks of 17 for dweight/dbias
        Case("f32", 40, 4097, weight=False, sms=2),
    ]
    return cases


# The backward's grid is min(blocks needed, num_sms x blocks per SM), the latter asked of the
# occupancy query once per process: run() answers 2 unless told otherwise. At 8 (a full SM of
# 256-thread blocks) the grid reaches max_partials' cap, the workspace's size.
FULL_OCCUPANCY_CASES = [
    Case("f32", 200, 64, sms=1),  # 8 rows per block: 25 blocks wanted, 8 resident
    Case("f16", 150, 768, fused=True, sms=3),
    Case("bf16", 100, 4096, sms=2),
    Case("f32", 60, 8192, weight=False, sms=1),
]


def test_reduced_case_set_passes(reduced_result):
    assert reduced_result.passed(len(reduced_cases())), reduced_result.report()


def test_reduced_case_set_launches_every_kernel_instantiation(reduced_result):
    launches = reduced_result.launches
    assert len(launches) >= 30, launches  # every instantiation in the binary is listed
    never = reduced_result.never_launched()
    assert not never, f"no case in reduced_cases() reaches these kernels (add one): {never}"


def test_full_occupancy_cases_pass(emulator):
    result = emu.run(emulator, FULL_OCCUPANCY_CASES, jobs=2, occupancy=8, timeout=120)
    assert result.passed(len(FULL_OCCUPANCY_CASES)), result.report()


# Planted bugs: code in layernorm.cu (an anchor: its tokens, whatever the comments and the
# whitespace between them; it must occur exactly once), its replacement, cases that must catch
# it, and a pattern that the failure must match (it is caught for the reason it was planted).
PLANTED_BUGS = {
    # a race that the run-ahead scheduler exposes: a warp running ahead overwrites its sum in
    # shared memory for the next row_sum before the other warps have read the previous one
    "row_sum without its first __syncthreads": (
        "float* s = smem + threadIdx.y * 32; __syncthreads(); if (lane == 0) s[warp] = v;",
        "float* s = smem + threadIdx.y * 32; if (lane == 0) s[warp] = v;",
        [Case("f32", 9, 768, sms=2), Case("bf16", 2, 4096, fused=True)],
        r"^(mean|rstd|y|dx)\[",
    ),
    # thread row 0 reads the other rows' accumulators before they are written: shared memory
    # starts as NaN in every block
    "write_partials without the __syncthreads before its reads": (
        "= acc[k][j]; } __syncthreads(); } if (ty != 0) return;",
        "= acc[k][j]; } } if (ty != 0) return;",
        [Case("f16", 33, 64)],
        r"^d(weight|bias)\[.*nan",
    ),
    # the dbias partial sums land past the end of the workspace (into the guard page)
    "half the backward workspace": (
        "return 2 * static_cast<int64_t>(max_partials(rows, num_sms)) * C;",
        "return static_cast<int64_t>(max_partials(rows, num_sms)) * C;",
        [Case("f32", 9, 768, sms=2)],
        r"past its workspace|memory fault .* in layer_norm_bwd_cached",
    ),
    # the threads past the end of a ragged row write into the next row, past the buffer on
    # the last one
    "forward store without its bounds check": (
        "if (c < C) store_output<T, VEC>(a, base + c, c, v[k], mean, rstd);",
        "store_output<T, VEC>(a, base + c, c, v[k], mean, rstd);",
        [Case("f16", 9, 33)],
        r"forward wrote out of bounds|memory fault .* in layer_norm_fwd_cached",
    ),
}


@pytest.mark.parametrize("bug", list(PLANTED_BUGS))
def test_planted_bug_anchor_occurs_once(bug):
    """A refactor that removes or duplicates an anchor fails here, before anything is built."""
    spans = emulate.code_spans((CSRC / "layernorm.cu").read_text(), PLANTED_BUGS[bug][0])
    assert len(spans) == 1, f"layernorm.cu has changed: update the planted bug {bug!r}"


@pytest.mark.parametrize("bug", list(PLANTED_BUGS))
def test_planted_bug_is_caught(bug, emulator, cxx, tmp_path):
    anchor, new, cases, reason = PLANTED_BUGS[bug]
    source = emulate.planted_copy(CSRC / "layernorm.cu", anchor, new, tmp_path)
    binary = emu.build(source, tmp_path / "build", cxx, runtime_from=emulator.parent)
    result = emu.run(binary, cases, jobs=2, timeout=120)
    assert result.failures, f"{bug}: not caught by {[c.name for c in cases]}"
    assert any(re.search(reason, problem) for problem in result.failures.values()), result.summary()
