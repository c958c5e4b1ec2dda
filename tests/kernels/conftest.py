"""Shared helpers for the toykernels tests: the CUDA skip rule, the nvcc compile check and
the C++ compiler of the CUDA emulator (tools/cuda_emu).

With --import-mode=importlib these are fixtures (not an importable module).
Tests that need a GPU are marked `@pytest.mark.cuda`; here they are skipped, with the reason,
when torch has no usable CUDA device. The CUDA emulator's generic driver (tools/cuda_emu/
emulate.py), each op's cases for it (<op>/emulator_cases.py, beside the op's tests) and the
ops' shared checks (checks.py) are loaded by tests/conftest.py (SHARED_MODULES), so that the
tests import them by name without tools/ on sys.path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import toykernels

CSRC = Path(toykernels.__file__).resolve().parent / "csrc"
HERE = Path(__file__).resolve().parent


NO_CUDA_REASON = (
    "needs an NVIDIA GPU and a CUDA build of torch "
    f"(torch {torch.__version__}, torch.cuda.is_available() is False)"
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if "cuda" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


# What torch.utils.cpp_extension adds to every nvcc command line of a JIT build: the .cu files
# must compile with them (no implicit half/bfloat16 operators or conversions).
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]  # fmt: skip


@pytest.fixture(scope="session")
def torch_nvcc_flags() -> list[str]:
    """The nvcc flags a torch extension build uses (see TORCH_NVCC_FLAGS)."""
    return list(TORCH_NVCC_FLAGS)


def find_nvcc() -> str | None:
    """nvcc from $CUDA_HOME/bin, else the PATH."""
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


@pytest.fixture(scope="session")
def nvcc_path() -> str:
    """The nvcc executable; skips the test when there is none."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on the PATH or in $CUDA_HOME/bin")
    return nvcc


@pytest.fixture(scope="session")
def nvcc_compile(nvcc_path, tmp_path_factory):
    """compile(name) compiles csrc/<name> with nvcc for sm_80 and sm_90; fails with nvcc's output.

    One nvcc run builds both archs (--threads 2 compiles them side by side). Skips only
    when no nvcc is found at all.
    """
    nvcc = nvcc_path
    out_dir = tmp_path_factory.mktemp("nvcc")

    def compile(name: str) -> Path:
        source = CSRC / name
        obj = out_dir / (source.stem + ".o")
        cmd = [
            nvcc, "-std=c++17", "-O3", "--threads", "2", "-I", str(CSRC), *TORCH_NVCC_FLAGS,
            "-gencode", "arch=compute_80,code=sm_80",
            "-gencode", "arch=compute_90,code=sm_90",
            "-c", str(source), "-o", str(obj),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"nvcc failed on {source}:\n{result.stdout}\n{result.stderr}"
        return obj

    return compile


@pytest.fixture(scope="session")
def cxx() -> str:
    """The C++ compiler the CUDA emulator builds with ($CXX, else g++); skips the test without one."""
    import emulate  # tools/cuda_emu, loaded from its file (above)

    compiler = emulate.find_cxx()
    if compiler is None:
        pytest.skip("the CUDA emulator needs a C++ compiler: no g++ on the PATH (or set CXX)")
    return compiler


# The emulated tests (*/test_emulated.py) import their op's cases module as `emu`
# (layernorm_emulator_cases, attention_emulator_cases) and define reduced_cases(); these
# fixtures serve each such module.
@pytest.fixture(scope="module")
def emulator(request, cxx, tmp_path_factory) -> Path:
    """The module's emulator, built from the current .cu file (a build error fails the tests)."""
    source = CSRC / request.module.emu.DEFAULT_SOURCE.name  # layernorm.cu, attention.cu
    return request.module.emu.build(source, tmp_path_factory.mktemp(f"{source.stem}_emu"), cxx)


@pytest.fixture(scope="module")
def reduced_result(request, emulator):
    """The module's reduced case set run on its emulator, shared by its tests (2 processes:
    2 cores)."""
    return request.module.emu.run(emulator, request.module.reduced_cases(), jobs=2, timeout=300)


@pytest.fixture
def poison_allocator():
    """poison(*(shape, dtype)): make the next CUDA allocations of these sizes start out as NaN,
    so an output element a kernel never writes fails the test.

    The bindings allocate their outputs themselves (empty_like), so the outputs cannot be filled
    beforehand. Instead NaN-filled blocks of exactly the outputs' shapes *and dtypes* are freed
    into the caching allocator, which hands them straight back for the next allocations of the
    same size. NOTE: a block of another dtype is no poison: a float32 NaN (0x7FC00000) read as
    two bf16 or fp16 halves is a NaN and a 0.0. Then, so that the test does not rely on the
    allocator silently, the same sizes are allocated again, in the kernel's order, with
    torch.empty and checked to come back all NaN, then freed once more: the kernel's own
    allocations, next, find the allocator in the same state as the probes did."""

    def poison(*shapes_dtypes):
        torch.cuda.empty_cache()  # fewer free blocks of the same size that are not ours
        blocks = [torch.full(shape, float("nan"), device="cuda", dtype=dtype) for shape, dtype in shapes_dtypes]
        torch.cuda.synchronize()
        del blocks
        probes = [torch.empty(shape, device="cuda", dtype=dtype) for shape, dtype in shapes_dtypes]
        for probe, (shape, dtype) in zip(probes, shapes_dtypes):
            assert probe.numel() == 0 or bool(torch.isnan(probe).all()), (
                f"poisoning a {tuple(shape)} {dtype} output did not happen: the caching allocator "
                "handed out a block that is not NaN")
        del probes

    return poison
