"""The real attention.cu on the CPU: tools/cuda_emu (see its README.md) compiles the CUDA source
as it is now with g++ and runs every CUDA thread as a fiber, with the inline PTX the kernels
use (mma.sync m16n8k16, ldmatrix, cp.async), nvcuda::wmma, dynamic shared memory and its
launch limits modelled; it checks out, lse, dq, dk and dv against float64 with NaN-poisoned
outputs, guarded buffers and strided views (fused QKV, a narrowed KV cache, padded rows). A
reduced case set runs here (every kernel instantiation: fp32/fp16/bf16 x head dims 32/64/128,
forward and backward); the full sweep is
`python tools/cuda_emu/emulate.py tests/kernels/attention/emulator_cases.py` (the harness and
the cases: emulator_harness.cpp and emulator_cases.py, beside this file). Planted bugs check
that the emulator can fail."""

import re
from concurrent.futures import ThreadPoolExecutor

import attention_emulator_cases as emu  # ./emulator_cases.py, loaded by conftest.py
import emulate  # tools/cuda_emu, loaded from its file by conftest.py
import pytest
from toykernels import _build

CSRC = _build.CSRC
Case = emu.Case


def reduced_cases() -> list:
    """For every dtype and head dim (each pair launches its own forward and backward kernel
    instantiations): lengths around the tiles (16-row warp tiles; 64-row tensor-core tiles,
    32-row fp32 backward tiles), every layout, B and H above 1 (the kernels split
    blockIdx.y = b * H + h)."""
    cases = []
    for dtype in emu.DTYPES:
        for D in emu.HEAD_DIMS:
            cases += [
                Case(dtype, 1, 1, D),  # one query, one key
                Case(dtype, 17, 17, D, "padded", B=2),  # one partial tile; rows of D + 8
                Case(dtype, 65, 65, D, "qkv", H=2),  # views of a fused QKV buffer; 2 query tiles
                Case(dtype, 1, 130, D, "cache", H=2),  # decode: one query, a narrowed KV cache
                Case(dtype, 64, 65, D),  # Tk - Tq = 1: the last query's last key opens a tile
                Case(dtype, 129, 130, D, "cache"),  # the same over 3 key tiles
                Case(dtype, 130, 130, D, "qkv", B=2, H=2),  # 3 key tiles: the prefetch pipeline
            ]
    return cases + emu.invalid_cases()


def test_reduced_case_set_passes(reduced_result):
    assert reduced_result.passed(len(reduced_cases())), reduced_result.report()


def test_reduced_case_set_launches_every_kernel_instantiation(reduced_result):
    launches = reduced_result.launches
    # 3 dtypes x 3 head dims x (forward, dK/dV, dQ) + the delta kernel per dtype
    assert len(launches) == 30, launches  # every instantiation in the binary is listed
    never = reduced_result.never_launched()
    assert not never, f"no case in reduced_cases() reaches these kernels (add one): {never}"


# Planted bugs: code in attention.cu (an anchor: its tokens, whatever the comments and the
# whitespace between them; it must occur exactly once), its replacement, cases that must catch
# it, and a pattern that the failure must match (it is caught for the reason it was planted).
TC_CASES = [
    Case("f16", 64, 65, 64),
    Case("bf16", 129, 130, 32, "cache", H=2),
    Case("f16", 130, 130, 64, "qkv", H=2),
]
PLANTED_BUGS = {
    # the copies of the tile being computed are never waited for: they have not landed (the
    # emulator lands a cp.async at its wait_group in half of the blocks), so shared memory is NaN
    "forward without its cp.async wait_group 1": (
        "cp_async_commit(); cp_async_wait<1>(); } else {",
        "cp_async_commit();\n    } else {",
        TC_CASES,
        r"^(lse|out)\[.*nan",
    ),
    # a thread's cp.async lands at its own wait; the rows other threads copied need the barrier
    "forward without the __syncthreads after the wait": (
        "cp_async_wait<0>(); } __syncthreads(); if (n == 0) {",
        "cp_async_wait<0>();\n    }\n    if (n == 0) {",
        TC_CASES,
        r"^(lse|out)\[",
    ),
    # a warp running ahead prefetches into the stage the others still read (cp.async lands at
    # issue in the other half of the blocks)
    "forward without the __syncthreads before the next prefetch": (
        "__syncthreads(); } l_0 += __shfl_xor_sync(0xffffffff, l_0, 1);",
        "}\n  l_0 += __shfl_xor_sync(0xffffffff, l_0, 1);",
        TC_CASES,
        r"^(lse|out)\[",
    ),
    # the causal tile skip drops the last key tile when it holds just the last query's last key
    "forward key tile count off by one": (
        "const int kv_end = min(Tk, m0 + kFwdBM + offset);",
        "const int kv_end = min(Tk, m0 + kFwdBM + offset - 1);",
        TC_CASES,
        r"^(lse|out)\[",
    ),
    # q's rows stepped with dout's stride: the same in a contiguous layout, not in fused QKV
    "dQ (tensor cores) reads q with dout's row stride": (
        "tc_load_rows<T, D>(s.q, q + row_offset(qs, bh, H, i0), qs.time, valid);",
        "tc_load_rows<T, D>(s.q, q + row_offset(qs, bh, H, i0), dos.time, valid);",
        TC_CASES,
        r"^dq\[",
    ),
    # lanes read scores that other lanes of the warp have not stored yet (WMMA stores land lane
    # by lane)
    "dQ (tensor cores) without its __syncwarp": (
        "tc_rows_times_rows_t<T, D>(&s.dp[warp][0][0], &s.dout[warp * 16], s.v); __syncwarp();",
        "tc_rows_times_rows_t<T, D>(&s.dp[warp][0][0], &s.dout[warp * 16], s.v);",
        TC_CASES,
        r"^dq\[",
    ),
    # fp32 forward: lanes read the scaled query row before the other lanes have written it
    "fp32 forward without its __syncwarp": (
        "__syncwarp(); const int last = row + (Tk - Tq);",
        "const int last = row + (Tk - Tq);",
        [Case("f32", 17, 17, 64, "qkv", H=2)],
        r"^(lse|out)\[.*nan",
    ),
    # fp32 dK/dV: the first query tile that sees a key tile is skipped when its last query is
    # the first one to see it
    "fp32 dK/dV first query tile off by one": (
        "const int first = max(0, n0 - offset); for (int i0 = (first / kBwdB) * kBwdB;",
        "const int first = max(0, n0 - offset + 1);\n  for (int i0 = (first / kBwdB) * kBwdB;",
        [Case("f32", 64, 65, 32)],
        r"^d[kv]\[",
    ),
    # not a kernel bug: an instruction the emulator does not model (m16n8k8) must be an error
    "an unmodelled PTX instruction": (
        '"mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "',
        '"mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "',
        [Case("f16", 17, 17, 32)],
        r"^emulator error: inline PTX .*m16n8k8",
    ),
    # 87 KB of dynamic shared memory (D = 128) without raising the 48 KB default: the launch
    # fails, as on a GPU
    "forward without cudaFuncSetAttribute": (
        "cudaError_t err = cudaFuncSetAttribute(attention_fwd_tc<T, D>, "
        "cudaFuncAttributeMaxDynamicSharedMemorySize, smem); if (err != cudaSuccess) return err;",
        "",
        [Case("bf16", 17, 17, 128)],
        r"forward returned error 1$",
    ),
}


@pytest.mark.parametrize("bug", list(PLANTED_BUGS))
def test_planted_bug_anchor_occurs_once(bug):
    """A refactor that removes or duplicates an anchor fails here, before anything is built."""
    spans = emulate.code_spans((CSRC / "attention.cu").read_text(), PLANTED_BUGS[bug][0])
    assert len(spans) == 1, f"attention.cu has changed: update the planted bug {bug!r}"


@pytest.fixture(scope="module")
def planted_results(emulator, cxx, tmp_path_factory):
    """Every planted bug's copy of the source, built and run, two at a time (2 cores)."""

    def build_and_run(bug):
        anchor, new, cases, _ = PLANTED_BUGS[bug]
        folder = tmp_path_factory.mktemp("planted")
        try:
            source = emulate.planted_copy(CSRC / "attention.cu", anchor, new, folder)
        except ValueError as e:  # the anchor is gone or not unique (see the test above)
            return str(e)
        binary = emu.build(source, folder / "build", cxx, runtime_from=emulator.parent)
        return emu.run(binary, cases, jobs=1, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(PLANTED_BUGS, pool.map(build_and_run, PLANTED_BUGS)))


@pytest.mark.parametrize("bug", list(PLANTED_BUGS))
def test_planted_bug_is_caught(bug, planted_results):
    result = planted_results[bug]
    assert not isinstance(result, str), result
    cases, reason = PLANTED_BUGS[bug][2:]
    assert result.failures, f"{bug}: not caught by {[c.name for c in cases]}"
    assert any(re.search(reason, problem) for problem in result.failures.values()), result.summary()
