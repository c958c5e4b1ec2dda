"""The CUDA emulator's own tests (tools/cuda_emu, see its README.md), apart from any op: its
test kernels (tools/cuda_emu/selftest/selftest.cu) exercise each thing it models with an answer
that the harness (selftest_harness.cpp) computes on its own, on the host: __syncthreads and
static shared memory, __shfl_xor_sync and __shfl_sync, dynamic shared memory and its launch
limit, a launch with a bad configuration, mma.sync m16n8k16 against a scalar matmul, ldmatrix
against the PTX ISA's fragment formula, cp.async with its zero-fill, shared-window addresses.
Kernels with a bug must fail, each for its reason: a missing __syncthreads or cp.async wait, a
read past a buffer, an unmodelled PTX instruction, a shuffle half a warp reaches.

Also the anchoring of planted bugs (emulate.planted_copy), which the op tests rely on.
"""

import dataclasses
import re
from pathlib import Path

import emulate  # tools/cuda_emu, loaded from its file by conftest.py
import pytest

SELFTEST = Path(emulate.__file__).resolve().parent / "selftest"


@dataclasses.dataclass(frozen=True)
class Case(emulate.HarnessCase):
    """One test of selftest_harness.cpp (its run_one names them)."""

    test: str
    blocks: int = 8  # of the tests that launch a grid

    @property
    def name(self) -> str:
        return self.test

    def cost(self) -> int:
        return 1  # equal costs: the cases run in list order (run() sorts by cost, stably)


# What the emulator models: each case must pass.
MODELLED = [
    "barrier",  # __syncthreads between shared-memory writes and reads of other warps
    "shuffles",  # a __shfl_xor_sync butterfly sum, __shfl_sync rotation and broadcast
    "dynamic_shared",  # extern __shared__, sized by the launch
    "dynamic_shared_limit",  # 64 KB refused until cudaFuncSetAttribute; 228 KB refused
    "bad_launch",  # 2048 threads per block: cudaErrorInvalidConfiguration, nothing runs
    "mma",  # mma.sync m16n8k16 (f16), fragments by the PTX ISA's formulas, vs a scalar matmul
    "ldmatrix_mma",  # the same product, fragments by ldmatrix.x4 and ldmatrix.x2.trans
    "ldmatrix",  # ldmatrix.x4: each lane's registers, bit for bit
    "ldmatrix_trans",  # ldmatrix.x4.trans
    "cp_async",  # cp.async 16 bytes, commit, wait_group 0; src-size 8 zero-fills the rest
    "shared_windows",  # back-to-back __shared__ arrays keep their own shared-window addresses
]
# Bugs the emulator must catch: the pattern that the case's failure must match.
MUST_CATCH = {
    # no barrier: the first thread runs to its end before the others write (shared memory
    # starts as NaN)
    "missing_barrier": r"^out\[.*nan",
    # copies land at their wait in half of the blocks: without one, never
    "missing_cp_async_wait": r"^out\[.*nan",
    "read_past_the_end": r"^memory fault .* in read_past_the_end_kernel, block \(0,0,0\)",
    "unmodelled_ptx": r'^emulator error: inline PTX "membar\.cta;": instruction not modelled',
    "divergent_shuffle": r"^emulator error: divergent_shuffle_kernel .* 16 of 32 lanes wait in a shuffle",
}
CASES = [Case(test) for test in MODELLED + list(MUST_CATCH)]
FAULTING = "read_past_the_end"  # ends its process, before the launch counts are reported


@pytest.fixture(scope="module")
def selftest_result(cxx, tmp_path_factory):
    """Every case, built and run in list order on one harness process (the faulting one on a
    process of its own), the results merged."""
    folder = tmp_path_factory.mktemp("selftest")
    binary = emulate.build(SELFTEST / "selftest.cu", SELFTEST / "selftest_harness.cpp", folder, cxx)
    result = emulate.run(binary, [c for c in CASES if c.test != FAULTING], jobs=1, timeout=120)
    fault = emulate.run(binary, [Case(FAULTING)], jobs=1, timeout=120)
    result.cases += fault.cases
    result.failures.update(fault.failures)
    result.stderr += fault.stderr
    return result


def test_every_case_ran_and_every_kernel_was_launched(selftest_result):
    assert selftest_result.cases == len(CASES), selftest_result.report()
    assert len(selftest_result.launches) >= 15, selftest_result.launches
    # fill_kernel's only launch is refused (it does not count); the faulting case's process
    # reports no launches
    never = selftest_result.never_launched()
    assert never == ["fill_kernel", f"{FAULTING}_kernel"], selftest_result.launches


@pytest.mark.parametrize("test", MODELLED)
def test_modelled_behaviour_gives_the_known_answer(test, selftest_result):
    assert test not in selftest_result.failures, selftest_result.report()


@pytest.mark.parametrize("test", list(MUST_CATCH))
def test_bug_is_caught(test, selftest_result):
    problem = selftest_result.failures.get(test)
    assert problem is not None, f"{test}: not caught\n{selftest_result.report()}"
    assert re.search(MUST_CATCH[test], problem), problem


# ---- planted bugs' anchors (emulate.code_spans, emulate.planted_copy) ----
SOURCE = """\
__global__ void k(float* s, int n) {
  s[0] = 1.f;
  __syncthreads();  // the writes are done: __syncthreads(); here
  const char* text = "// not a comment";
  if (n > 0) s[1] = s[0]; /* if (n > 0) s[1] = s[0]; */
}
"""


def test_an_anchor_matches_code_whatever_the_comments_and_whitespace():
    anchor = "s[0] = 1.f; __syncthreads(); const char* text"
    assert len(emulate.code_spans(SOURCE, anchor)) == 1
    assert len(emulate.code_spans(SOURCE, "s [ 0 ]=1.f;")) == 1
    assert len(emulate.code_spans(SOURCE, '"// not a comment";')) == 1  # a string is code


def test_an_anchor_never_matches_inside_comments_or_words():
    assert emulate.code_spans(SOURCE, "if (n > 0) s[1] = s[0];") == [
        (SOURCE.index("if (n > 0)"), SOURCE.index("; /*") + 1)
    ]
    assert emulate.code_spans(SOURCE, "the writes are done") == []
    assert emulate.code_spans(SOURCE, "float*s") != [] and emulate.code_spans(SOURCE, "floats") == []


def test_planted_copy_replaces_the_one_match_and_refuses_any_other_count(tmp_path):
    source = tmp_path / "src" / "k.cu"
    source.parent.mkdir()
    source.write_text(SOURCE)
    (source.parent / "k.h").write_text("// a header the .cu file includes\n")
    copy = emulate.planted_copy(source, "s[0] = 1.f; __syncthreads();", "s[0] = 1.f;", tmp_path / "a")
    assert copy.read_text() == SOURCE.replace("1.f;\n  __syncthreads();", "1.f;")
    assert (copy.parent / "k.h").is_file()
    for k, anchor in enumerate(["__syncthreads(); __syncthreads();", "s[0]"]):  # none; two
        with pytest.raises(ValueError, match="not once"):
            emulate.planted_copy(source, anchor, "", tmp_path / f"b{k}")
