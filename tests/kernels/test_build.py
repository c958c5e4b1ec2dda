"""The build machinery and backend choice: nvcc compile check of every .cu file (sm_80 and
sm_90, wherever nvcc is found), a compile check of the torch bindings, backend_info's words,
TOYKERNELS_BACKEND, TOYKERNELS_CACHE, and what a failed build does."""

import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
import torch
import toykernels
from torch.utils import cpp_extension
from toykernels import _build, backend

CSRC = _build.CSRC


# .cu files whose compile check lives beside their op's tests (not compiled twice: it costs
# tens of CPU seconds per file); every other .cu file is checked here.
CHECKED_ELSEWHERE = {"attention.cu": "test_attention_cuda.py"}


@pytest.mark.parametrize("name", sorted(p.name for p in CSRC.glob("*.cu") if p.name not in CHECKED_ELSEWHERE))
def test_every_cu_file_compiles_for_sm80_and_sm90(nvcc_compile, name):
    obj = nvcc_compile(name)
    assert obj.stat().st_size > 0


def test_files_checked_elsewhere_really_are():
    here = Path(__file__).resolve().parent
    for name, test_file in CHECKED_ELSEWHERE.items():
        assert name in (here / test_file).read_text(), f"{test_file} no longer compile-checks {name}"


def test_cu_files_include_no_torch_headers():
    for source in list(CSRC.glob("*.cu")) + list(CSRC.glob("*.h")) + list(CSRC.glob("*.cuh")):
        text = source.read_text()
        assert "torch/" not in text and "ATen/" not in text, f"{source.name} includes a torch header"


def test_first_error_line_picks_the_compiler_error(nvcc_path, tmp_path):
    # a real nvcc failure, so the parser is tested on what nvcc prints today
    bad = tmp_path / "bad.cu"
    bad.write_text("__global__ void k(float* x) { x[0] = undefined_name; }\n")
    result = subprocess.run([nvcc_path, "-c", str(bad), "-o", str(tmp_path / "bad.o")], capture_output=True, text=True)
    assert result.returncode != 0
    line = _build.first_error_line("FAILED: bad.o\n" + result.stdout + result.stderr)
    assert "error" in line and "undefined_name" in line


def test_import_and_cpu_calls_compile_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TOYKERNELS_CACHE", str(tmp_path / "cache"))
    toykernels.layer_norm(torch.randn(2, 8))
    toykernels.backend_info()
    assert not (tmp_path / "cache").exists()


def test_backend_info_reports_the_cpu_fallback(monkeypatch):
    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    toykernels.layer_norm(torch.randn(2, 8))
    assert "layer_norm: torch fallback: tensor is on cpu" in toykernels.backend_info("cpu")


def test_forced_backends(monkeypatch):
    x = torch.randn(2, 8)
    monkeypatch.setenv("TOYKERNELS_BACKEND", "torch")
    toykernels.layer_norm(x)
    assert "layer_norm: torch fallback: TOYKERNELS_BACKEND=torch" in toykernels.backend_info("cpu")
    monkeypatch.setenv("TOYKERNELS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="TOYKERNELS_BACKEND=cuda.*tensor is on cpu"):
        toykernels.layer_norm(x)
    monkeypatch.setenv("TOYKERNELS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="TOYKERNELS_BACKEND='gpu'"):
        toykernels.layer_norm(x)


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch has CUDA")
def test_backend_info_on_a_cpu_only_torch_says_why(monkeypatch):
    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    assert "layer_norm: torch fallback: this torch was built without CUDA" in toykernels.backend_info("cuda")


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch has CUDA")
def test_build_without_cuda_toolkit_raises_build_error(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    with pytest.raises(_build.BuildError, match="cannot tell which GPU architecture.*TORCH_CUDA_ARCH_LIST"):
        _build.load_extension("layer_norm", ["layernorm.cu", "layernorm_bindings.cpp"])
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    monkeypatch.setenv("TOYKERNELS_CACHE", str(tmp_path))
    with pytest.raises(_build.BuildError, match="CUDA_HOME is None") as raised:
        _build.load_extension("layer_norm", ["layernorm.cu", "layernorm_bindings.cpp"])
    assert raised.value.log_path == tmp_path / "toykernels_layer_norm" / _build.build_dir("layer_norm", "8.0;9.0").name / "build.log"
    assert "CUDA_HOME is None" in raised.value.log_path.read_text()


def test_build_dir_is_keyed_by_arch_and_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("TOYKERNELS_CACHE", str(tmp_path))
    a = _build.build_dir("layer_norm", "9.0")
    b = _build.build_dir("layer_norm", "8.0")
    assert a != b and a.parent == b.parent == tmp_path / "toykernels_layer_norm"
    assert "sm_90" in a.name and torch.__version__.split("+")[0] in a.name
    assert _build.arch_label("8.0;9.0+PTX") == "sm_80+sm_90+PTX"


def test_unknown_op_is_named(monkeypatch):
    with pytest.raises(KeyError, match="no_such_op"):
        backend._load("no_such_op", torch.device("cpu"))


@pytest.mark.cuda
def test_backend_info_reports_the_cuda_build(monkeypatch):
    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    toykernels.layer_norm(torch.randn(4, 64, device="cuda"))
    info = toykernels.backend_info("cuda")
    assert "layer_norm: cuda: " in info and ("built for sm_" in info or "loaded from cache for sm_" in info), info
    monkeypatch.setenv("TOYKERNELS_BACKEND", "torch")
    toykernels.layer_norm(torch.randn(4, 64, device="cuda"))
    assert "layer_norm: torch fallback: TOYKERNELS_BACKEND=torch" in toykernels.backend_info("cuda")


@pytest.mark.cuda
def test_unsupported_dtype_falls_back_on_cuda(monkeypatch):
    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    x = torch.randn(4, 64, device="cuda", dtype=torch.float64)
    torch.testing.assert_close(toykernels.layer_norm(x), torch.nn.functional.layer_norm(x, (64,)))
    assert "float64 is not supported by the CUDA kernel" in toykernels.backend_info("cuda")


def test_cache_root_honours_toykernels_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TOYKERNELS_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch"))
    assert _build.cache_root() == tmp_path / "mine"
    assert _build.build_dir("attention", "8.0").is_relative_to(tmp_path / "mine")
    monkeypatch.delenv("TOYKERNELS_CACHE")
    assert _build.cache_root() == tmp_path / "torch"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert _build.cache_root() == Path(cpp_extension.get_default_build_root())


@pytest.fixture
def fresh_backend(monkeypatch, tmp_path):
    """backend's per-process records emptied for one test (and restored after), builds going to
    a fresh TOYKERNELS_CACHE, for sm_90 (so no GPU is asked for its compute capability)."""
    for name, empty in (("_modules", {}), ("_built", {}), ("_failed", {}), ("_decisions", {}), ("_warned", set())):
        monkeypatch.setattr(backend, name, empty)
    monkeypatch.setenv("TOYKERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    return tmp_path / "cache"


@pytest.mark.skipif(cpp_extension.CUDA_HOME is not None, reason="a CUDA toolkit is found: the build would run")
def test_failed_build_warns_once_with_the_error_and_the_log_then_falls_back(fresh_backend):
    # A real failed build: this torch has no CUDA toolkit to build with (CUDA_HOME is None).
    device = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match=r"toykernels layer_norm: torch fallback: build failed: .*CUDA_HOME is None") as caught:
        assert backend.load_or_fall_back("layer_norm", device, "auto") is None
    log = _build.build_dir("layer_norm", "9.0") / "build.log"
    assert log.is_relative_to(fresh_backend) and "CUDA_HOME is None" in log.read_text()
    assert f"full log at {log}" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert backend.load_or_fall_back("layer_norm", device, "auto") is None
    info = toykernels.backend_info("cuda")
    assert "layer_norm: torch fallback: build failed: toykernels_layer_norm: CUDA toolkit not found" in info
    assert f"full log at {log}" in info
    # the other op is its own extension: its build is tried (and warned about) on its own
    with pytest.warns(RuntimeWarning, match="toykernels attention: torch fallback: build failed"):
        assert backend.load_or_fall_back("attention", device, "auto") is None


@pytest.mark.skipif(cpp_extension.CUDA_HOME is not None, reason="a CUDA toolkit is found: the build would run")
def test_forced_cuda_with_a_failed_build_raises_naming_the_log(fresh_backend):
    log = _build.build_dir("attention", "9.0") / "build.log"
    with pytest.raises(RuntimeError, match="attention: TOYKERNELS_BACKEND=cuda but the build failed: ") as raised:
        backend.load_or_fall_back("attention", torch.device("cuda"), "cuda")
    assert f"full log at {log}" in str(raised.value) and log.is_file()


def test_forced_cuda_with_cpu_tensors_still_raises_for_every_op(monkeypatch):
    # the CPU fast path must not swallow TOYKERNELS_BACKEND=cuda
    monkeypatch.setenv("TOYKERNELS_BACKEND", "cuda")
    x = torch.randn(2, 8)
    q = torch.randn(1, 1, 4, 32)
    calls = [
        lambda: toykernels.layer_norm(x),
        lambda: toykernels.add_layer_norm(x, x, None, None),
        lambda: toykernels.LayerNorm(8)(x),
        lambda: toykernels.causal_attention(q, q, q),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="TOYKERNELS_BACKEND=cuda but the CUDA kernel cannot run: tensor is on cpu"):
            call()


def _torch_cuda_headers():
    """torch's include folders, or None when this torch ships no ATen/cuda headers."""
    include = Path(torch.__file__).parent / "include"
    if not (include / "ATen" / "cuda" / "CUDAContext.h").is_file():
        return None
    return [include, include / "torch" / "csrc" / "api" / "include"]


def _cuda_include(nvcc: str) -> Path | None:
    for candidate in (Path(nvcc).resolve().parent.parent / "include", Path("/usr/local/cuda/include")):
        if (candidate / "cuda_runtime.h").is_file():
            return candidate
    return None


def test_bindings_compile_against_torch_headers(nvcc_path, tmp_path):
    """The two bindings (.cpp, torch headers) through the C++ compiler's front end.

    They are only built for real on a CUDA machine, so this is the check that catches a typo
    or a changed torch API without one. ATen/cuda/CUDAContext.h includes the headers of cuBLAS,
    cuSPARSE and cuSOLVER, which a bare CUDA toolkit may lack and the bindings never use: when
    missing they are stood in for by a few opaque handle typedefs.
    """
    cxx = shutil.which("g++") or shutil.which("c++")
    torch_include = _torch_cuda_headers()
    cuda_include = _cuda_include(nvcc_path)
    if cxx is None or torch_include is None or cuda_include is None:
        pytest.skip(f"needs a C++ compiler ({cxx}), torch's ATen/cuda headers and the CUDA runtime headers")
    stubs = {
        "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;",
        "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;",
        "cublasLt.h": "#include <cublas_v2.h>\ntypedef struct cublasLtContext* cublasLtHandle_t;",
        "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;",
        "cusolver_common.h": "typedef enum { CUSOLVER_STATUS_SUCCESS = 0 } cusolverStatus_t;",
        "c10/cuda/impl/cuda_cmake_macros.h": "",  # generated at torch's build time
    }
    for name, text in stubs.items():
        if not (cuda_include / name).is_file() and not (torch_include[0] / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text("#pragma once\n" + text + "\n")
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-w", "-DTORCH_EXTENSION_NAME=toykernels_check",
           "-I", str(CSRC), "-I", str(tmp_path), *(f"-I{p}" for p in torch_include), "-I", str(cuda_include),
           "-I", sysconfig.get_paths()["include"]]  # fmt: skip
    sources = sorted(CSRC.glob("*.cpp"))
    assert len(sources) >= 2, sources
    jobs = {  # side by side: torch/extension.h costs the front end ~15 CPU seconds per file
        source.name: subprocess.Popen([*cmd, str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for source in sources
    }
    for name, job in jobs.items():
        _, stderr = job.communicate()
        assert job.returncode == 0, f"{name}: {' '.join(cmd)}\n{stderr[-4000:]}"


@pytest.mark.cuda
def test_two_processes_build_into_one_fresh_cache_then_it_is_reused_then_rebuilt(tmp_path):
    # A copy of csrc/, so that a header can be changed: the subprocesses build from it.
    csrc = tmp_path / "csrc"
    shutil.copytree(CSRC, csrc)
    script = (
        "import sys, pathlib, torch, toykernels, toykernels._build\n"
        "toykernels._build.CSRC = pathlib.Path(sys.argv[1])\n"
        "x = torch.randn(64, 768, device='cuda')\n"
        "torch.testing.assert_close(toykernels.layer_norm(x), torch.nn.functional.layer_norm(x, (768,)))\n"
        "print(toykernels.backend_info('cuda'))\n"
    )
    env = {**os.environ, "TOYKERNELS_CACHE": str(tmp_path / "cache"), "TOYKERNELS_BACKEND": "cuda"}

    def start():
        return subprocess.Popen([sys.executable, "-c", script, str(csrc)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def finish(process):
        out, err = process.communicate(timeout=1200)
        assert process.returncode == 0, err[-4000:]
        assert "layer_norm: cuda: " in out, out
        return out

    # two at once: cpp_extension's file baton lets one compile while the other waits
    outputs = [finish(p) for p in (start(), start())]
    assert any("layer_norm: cuda: built for sm_" in out for out in outputs), outputs
    assert "layer_norm: cuda: loaded from cache for sm_" in finish(start())
    assert not list((tmp_path / "cache").rglob("lock")), "a build lock was left behind"
    (so,) = (tmp_path / "cache").rglob("toykernels_layer_norm.so")
    before = so.stat().st_mtime_ns
    header = csrc / "layernorm.h"
    header.write_text(header.read_text() + "\n// changed: the extension must be rebuilt\n")
    assert "layer_norm: cuda: built for sm_" in finish(start())
    assert so.stat().st_mtime_ns > before, "the header changed but the library was not relinked"
