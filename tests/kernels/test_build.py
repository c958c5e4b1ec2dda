"""The build machinery and backend choice: nvcc compile check of every .cu file (sm_80 and
sm_90, wherever nvcc is found), a compile check of the torch bindings, backend_info's words,
TOYKERNELS_BACKEND, TOYKERNELS_CACHE, and what a failed build does. Then the build path itself
on a tiny C++ extension (the first error line of real cpp_extension output, "built" against
"loaded from cache", a build killed half-way), finding the CUDA toolkit behind a wrapper nvcc
and the headers it lacks, the setuptools floor of every pyproject, and tools/cuda_build_check.py
(`make cuda-build-check`): its ptxas parser on real output and its exit code."""

import os
import re
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
from toykernels import _build, _toolkit, backend

CSRC = _build.CSRC


# .cu files whose compile check lives beside their op's tests (not compiled twice: it costs
# tens of CPU seconds per file); every other .cu file is checked here.
CHECKED_ELSEWHERE = {"attention.cu": "attention/test_cuda.py"}


@pytest.mark.parametrize("name", sorted(p.name for p in CSRC.glob("*.cu") if p.name not in CHECKED_ELSEWHERE))
def test_every_cu_file_compiles_for_sm80_and_sm90(nvcc_compile, name):
    obj = nvcc_compile(name)
    assert obj.stat().st_size > 0


def test_files_checked_elsewhere_really_are():
    here = Path(__file__).resolve().parent
    for name, test_file in CHECKED_ELSEWHERE.items():
        assert name in (here / test_file).read_text(), f"{test_file} no longer compile-checks {name}"


def test_cu_files_include_no_torch_headers():
    """The kernels and every header they include stay torch-free; torch_checks.h, the bindings'
    shared checks, is the one header with torch in it, and no .cu file includes it."""
    kernel_side, pending = [], list(CSRC.glob("*.cu"))
    while pending:  # the .cu files and what they include, transitively
        source = pending.pop()
        if source not in kernel_side:
            kernel_side.append(source)
            pending += [CSRC / name for name in re.findall(r'#include "([^"]+)"', source.read_text())]
    assert len(kernel_side) > 2 and CSRC / "torch_checks.h" not in kernel_side
    headers = set(CSRC.glob("*.h")) | set(CSRC.glob("*.cuh"))
    assert headers - set(kernel_side) == {CSRC / "torch_checks.h"}, "a header no kernel includes"
    for source in kernel_side:
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


# ----------------------------------------------------------------------------------------------
# The generic build path (_build.build_and_load) on a tiny C++ extension: no torch headers and
# no CUDA, so a build takes well under a second; load_extension goes through the same function.

REPO = Path(__file__).resolve().parents[2]

# A Python extension module with nothing in it. Its init function takes the module's name from
# TORCH_EXTENSION_NAME, which cpp_extension passes (`<name>_v1` after an in-process rebuild).
TINY_MODULE = """\
#include <Python.h>
#define TK_STR2(x) #x
#define TK_STR(x) TK_STR2(x)
#define TK_INIT2(name) PyInit_##name
#define TK_INIT(name) TK_INIT2(name)
static PyModuleDef tiny_module = {PyModuleDef_HEAD_INIT, TK_STR(TORCH_EXTENSION_NAME), nullptr, -1, nullptr};
extern "C" PyObject* TK_INIT(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&tiny_module); }
"""


@pytest.fixture
def cpp_build_tools():
    """Skips the test without the C++ compiler and ninja that cpp_extension.load runs."""
    if shutil.which(os.environ.get("CXX", "c++")) is None or not cpp_extension.is_ninja_available():
        pytest.skip("cpp_extension.load needs a C++ compiler (c++ or $CXX) and ninja")


def test_first_error_line_on_real_cpp_extension_output(cpp_build_tools, tmp_path):
    # cpp_extension puts ninja's first output line, a whole compiler command, on the line of
    # "Error building extension"; the compiler's own message comes lines later. tmp_path holds
    # this test's name, so the echoed commands contain the word "error" too.
    bad = tmp_path / "bad.cpp"
    bad.write_text("#include <toykernels_missing_header.h>\n")
    with pytest.raises(RuntimeError) as raised:
        cpp_extension.load(name="toykernels_bad", sources=[str(bad)], build_directory=str(tmp_path), verbose=False)
    log = f"{type(raised.value).__name__}: {raised.value}"
    assert "Error building extension 'toykernels_bad': [1/" in log  # the shape this is about
    line = _build.first_error_line(log)
    assert line.startswith(f"{bad}:1:10: fatal error: toykernels_missing_header.h: No such file"), line

    # and through toykernels' build path: BuildError names that line and the log
    with pytest.raises(_build.BuildError) as raised:
        _build.build_and_load("toykernels_bad", [str(bad)], tmp_path / "again")
    assert raised.value.first_error == f"toykernels_bad: {line}"
    assert "Error building extension" in raised.value.log_path.read_text()


def test_first_error_line_skips_warnings_and_echoed_commands():
    log = (
        "RuntimeError: Error building extension 'x': [1/2] /cuda/bin/nvcc -Werror=foo -c /tmp/test_error0/a.cu\n"
        "FAILED: a.cuda.o\n/cuda/bin/nvcc -Werror=foo -c /tmp/test_error0/a.cu -o a.cuda.o\n"
        '/tmp/a.cu(3): warning #177-D: variable "error" was declared but never referenced: yes\n'
        '/tmp/a.cu(7): error: identifier "undefined_name" is undefined\n'
        "ninja: build stopped: subcommand failed.\n"
    )
    assert _build.first_error_line(log) == '/tmp/a.cu(7): error: identifier "undefined_name" is undefined'
    link = "FAILED: x.so\nc++ a.o -o x.so\n/usr/bin/ld: a.o: in function `f()':\na.cpp:(.text+0x5): undefined reference to `g()'\ncollect2: error: ld returned 1 exit status\n"
    assert _build.first_error_line(link) == "a.cpp:(.text+0x5): undefined reference to `g()'"


def test_built_or_loaded_from_cache_is_judged_from_the_library(cpp_build_tools, tmp_path):
    source = tmp_path / "tiny.cpp"
    source.write_text(TINY_MODULE)
    folder = tmp_path / "build"
    module, _, how = _build.build_and_load("toykernels_tiny", [str(source)], folder)
    assert how == "built" and Path(module.__file__).parent == folder
    assert _build.build_and_load("toykernels_tiny", [str(source)], folder)[2] == "loaded from cache"

    # New flags: ninja recompiles and relinks though no source changed; the library is newer
    # than every source, which is what the modification-time rule used to call "from cache".
    module, _, how = _build.build_and_load("toykernels_tiny", [str(source)], folder, extra_cflags=["-O1"])
    assert how == "built", "ninja relinked the library after a flag change"
    assert Path(module.__file__).stat().st_mtime > source.stat().st_mtime

    # A changed source with an old modification time (a checkout of an older commit, cp -p):
    # cpp_extension hashes contents, so it rebuilds.
    source.write_text(TINY_MODULE + "// changed\n")
    os.utime(source, (1_000_000_000, 1_000_000_000))
    assert _build.build_and_load("toykernels_tiny", [str(source)], folder, extra_cflags=["-O1"])[2] == "built"
    assert (folder / "build.log").read_text().startswith("built toykernels_tiny")


# A compiler that hangs while compiling (not when cpp_extension asks it for its version), after
# leaving a mark that it got there.
SLOW_CXX = """#!/bin/sh
case " $* " in *" -c "*) touch "$0.compiling"; sleep 300 ;; esac
exec c++ "$@"
"""
BUILD_TINY = (
    "import sys, pathlib\n"
    "from toykernels import _build\n"
    "print(_build.build_and_load('toykernels_tiny', [sys.argv[1]], pathlib.Path(sys.argv[2]))[2])\n"
)


def test_a_build_killed_half_way_does_not_block_the_next_one(cpp_build_tools, tmp_path):
    """SIGKILL a build while it compiles (as the OOM killer or a time limit does), then build
    again: with cpp_extension's lock file alone (torch <= 2.13) the second build waits forever."""
    import signal
    import time

    source = tmp_path / "tiny.cpp"
    source.write_text(TINY_MODULE)
    folder = tmp_path / "build"
    slow = tmp_path / "slow-c++"
    slow.write_text(SLOW_CXX)
    slow.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    first = subprocess.Popen([sys.executable, "-c", BUILD_TINY, str(source), str(folder)], env={**env, "CXX": str(slow)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{slow}.compiling").exists():
            assert first.poll() is None, first.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the first build never reached the compiler"
            time.sleep(0.05)
        assert (folder / "lock").exists(), "cpp_extension holds its lock while compiling"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole build: python, ninja, the compiler
        first.communicate()
    assert (folder / "lock").exists(), "the killed build left cpp_extension's lock behind"

    second = subprocess.run([sys.executable, "-c", BUILD_TINY, str(source), str(folder)], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.strip() == "built"
    assert f"by process {first.pid} was killed half-way; removed its leftover {folder / 'lock'}" in second.stderr
    assert not (folder / "lock").exists()


# ----------------------------------------------------------------------------------------------
# the CUDA toolkit behind a wrapper, and the headers it lacks


def _fake_toolkit(root: Path, headers=()) -> Path:
    """A toolkit folder whose nvcc answers -dryrun and --version the way nvcc 13.0 does."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime_api.h").write_text("")
    for header in headers:
        (root / "include" / header).write_text("")
    nvcc = root / "bin" / "nvcc"
    here = root / "bin"
    nvcc.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f'  [ "$arg" = -dryrun ] && {{ echo "#$ _HERE_={here}" >&2; echo "#$ TOP={here}/.." >&2; exit 0; }}\n'
        "done\n"
        'echo "Cuda compilation tools, release 13.0, V13.0.88"\n'
    )
    nvcc.chmod(0o755)
    return root


def test_find_toolkit_sees_through_a_wrapper_nvcc(tmp_path):
    real = _fake_toolkit(tmp_path / "cuda-13.0", headers=_toolkit.LIBRARY_HEADERS)
    wrappers = tmp_path / "local" / "bin"  # like /usr/local/bin/nvcc: `exec /usr/local/cuda-13.0/bin/nvcc "$@"`
    wrappers.mkdir(parents=True)
    (wrappers / "nvcc").write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    (wrappers / "nvcc").chmod(0o755)
    # cpp_extension's guess is the folder above the wrapper, as it is with nvcc on the PATH
    toolkit = _toolkit._find_toolkit(None, str(wrappers), str(wrappers.parent))
    assert toolkit.cuda_home == real.resolve() and toolkit.nvcc == real.resolve() / "bin" / "nvcc"
    assert toolkit.version == "13.0.88"
    assert f"asking {wrappers / 'nvcc'} where it runs from" in toolkit.found
    assert toolkit.extra_includes == () and toolkit.missing_headers == ()
    # a real toolkit named by CUDA_HOME is taken as it is
    assert _toolkit._find_toolkit(str(real), "", None).found == f"$CUDA_HOME={real}"
    with pytest.raises(_toolkit.ToolkitNotFound, match="CUDA_HOME is None and no nvcc is on the PATH"):
        _toolkit._find_toolkit(None, str(tmp_path / "empty"), None)


def test_find_toolkit_behind_a_wrapper_of_the_real_nvcc(nvcc_path, tmp_path):
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "nvcc").write_text(f'#!/bin/sh\nexec {nvcc_path} "$@"\n')
    (wrappers / "nvcc").chmod(0o755)
    toolkit = _toolkit._find_toolkit(None, str(wrappers), str(tmp_path))
    assert toolkit.nvcc.read_bytes()[:4] == b"\x7fELF", f"{toolkit.nvcc} is not the compiler itself"
    assert (toolkit.cuda_home / "include" / "cuda_runtime_api.h").is_file()
    assert re.fullmatch(r"\d+\.\d+\.\d+", toolkit.version), toolkit.version


@pytest.mark.parametrize("layout", ["cu13", "per-library"])
def test_headers_the_toolkit_lacks_come_from_torchs_nvidia_packages(tmp_path, layout):
    toolkit = _fake_toolkit(tmp_path / "cuda", headers=["cublas_v2.h"])  # has cuBLAS only
    site = tmp_path / "site-packages"
    if layout == "cu13":  # CUDA 13 wheels: one folder for all libraries
        folders = {h: site / "nvidia" / "cu13" / "include" for h in _toolkit.LIBRARY_HEADERS}
    else:  # CUDA 12 wheels: nvidia/cublas/include, nvidia/cusparse/include, ...
        folders = {"cublas_v2.h": site / "nvidia" / "cublas" / "include", "cublasLt.h": site / "nvidia" / "cublas" / "include",
                   "cusparse.h": site / "nvidia" / "cusparse" / "include"}  # fmt: skip
    for header, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / header).write_text("")
    extra, added, missing = _toolkit._library_includes(toolkit, site)
    if layout == "cu13":
        assert extra == (site / "nvidia" / "cu13" / "include",)
        assert added == ("cublasLt.h", "cusparse.h", "cusolverDn.h") and missing == ()
    else:
        assert extra == (site / "nvidia" / "cublas" / "include", site / "nvidia" / "cusparse" / "include")
        assert added == ("cublasLt.h", "cusparse.h") and missing == ("cusolverDn.h",)
    described = _toolkit.Toolkit(toolkit, toolkit / "bin" / "nvcc", "13.0.88", "test", extra, added, missing)
    assert described.include_flags()[:2] == ["-isystem", str(extra[0])]
    assert f"extra include folders: {extra[0]}" in described.describe()


def test_backend_info_names_the_toolkit():
    info = toykernels.backend_info("cpu")
    (line,) = [line for line in info.splitlines() if line.startswith("toolkit: ")]
    if torch.version.cuda is None:
        assert line.startswith("toolkit: none: CUDA toolkit not found") and "built without CUDA" in line


CUDA_VENV_PYTHON = REPO / ".venv-cuda" / "bin" / "python"


@pytest.mark.skipif(not CUDA_VENV_PYTHON.is_file(), reason=f"no CUDA venv at {CUDA_VENV_PYTHON} (make cuda-build-check makes it)")
def test_backend_info_in_the_cuda_venv_names_a_toolkit_with_every_header(nvcc_path):
    # the CUDA build of torch, with this machine's nvcc (maybe a wrapper) and torch's nvidia wheels
    env = {**os.environ, "PYTHONPATH": str(REPO / "packages" / "kernels" / "src")}
    result = subprocess.run([str(CUDA_VENV_PYTHON), "-c", "import toykernels; print(toykernels.backend_info('cuda'))"],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("toolkit: ")]
    match = re.match(r"toolkit: CUDA_HOME=(\S+), nvcc (\S+) \(CUDA ([\d.]+)\)", line)
    assert match, line
    home, nvcc = Path(match.group(1)), Path(match.group(2))
    assert nvcc.read_bytes()[:4] == b"\x7fELF" and (home / "include" / "cuda_runtime_api.h").is_file(), line
    extra = re.search(r"extra include folders: (.*?) \(for ", line)
    folders = [home / "include"] + ([Path(p) for p in extra.group(1).split(", ")] if extra else [])
    for header in _toolkit.LIBRARY_HEADERS:
        assert any((folder / header).is_file() for folder in folders), f"{header} in none of {folders}: {line}"


# ----------------------------------------------------------------------------------------------
# packaging


def test_setuptools_floor_admits_the_license_form():
    # `license = "MIT"` (an SPDX expression string, PEP 639) is understood by setuptools from
    # 77.0.0 on; older ones reject the string (setuptools 65, a Python 3.11 venv's own, fails
    # `pip install --no-build-isolation -e packages/kernels`).
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    pyprojects = [REPO / "pyproject.toml", *sorted((REPO / "packages").glob("*/pyproject.toml"))]
    assert len(pyprojects) == 4, pyprojects
    checked = 0
    for path in pyprojects:
        data = tomllib.loads(path.read_text())
        if "build-system" not in data:
            assert "project" not in data, f"{path} has a [project] but no [build-system]"
            continue
        (setuptools,) = [r for r in map(Requirement, data["build-system"]["requires"]) if r.name == "setuptools"]
        floor = 77 if isinstance(data["project"].get("license"), str) else 61  # 61: [project] tables
        too_old = [v for v in (f"{major}.{minor}" for major in range(40, floor) for minor in (0, 9))
                   if setuptools.specifier.contains(v)]  # fmt: skip
        assert not too_old, f"{path}: {setuptools} admits setuptools {too_old[-1]}, which cannot build it"
        assert setuptools.specifier.contains(f"{floor}.0.0"), f"{path}: {setuptools} excludes {floor}.0.0"
        checked += 1
    assert checked == 3


# ----------------------------------------------------------------------------------------------
# tools/cuda_build_check.py (make cuda-build-check): its parser, and its exit code


def _load_check_module():
    """tools/cuda_build_check.py as a module (a fresh copy: tests monkeypatch its functions)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cuda_build_check", REPO / "tools" / "cuda_build_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


# Real ptxas output (nvcc 13.0, attention.cu and layernorm.cu for sm_80), cut to two kernels.
PTXAS_OUTPUT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN10toykernels45_GLOBAL__N__72759638_12_attention_cu_304eff9a18attention_bwd_dkdvIfLi64EEEvPKT_NS_11AttnStridesES4_S5_S4_S5_S4_S5_PKfS7_PS2_S5_S8_S5_iiif' for 'sm_80'
ptxas info    : Function properties for _ZN10toykernels45_GLOBAL__N__72759638_12_attention_cu_304eff9a18attention_bwd_dkdvIfLi64EEEvPKT_NS_11AttnStridesES4_S5_S4_S5_S4_S5_PKfS7_PS2_S5_S8_S5_iiif
    24 bytes stack frame, 28 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 24 bytes cumulative stack size, 576 bytes cmem[0]
ptxas info    : Compile time = 45.315 ms
ptxas info    : Compiling entry function '_ZN10toykernels45_GLOBAL__N__72a38ccb_12_layernorm_cu_1ff350f521layer_norm_fwd_cachedI13__nv_bfloat16Li1ELi4EEEvNS0_7FwdArgsIT_EE' for 'sm_80'
ptxas info    : Function properties for _ZN10toykernels45_GLOBAL__N__72a38ccb_12_layernorm_cu_1ff350f521layer_norm_fwd_cachedI13__nv_bfloat16Li1ELi4EEEvNS0_7FwdArgsIT_EE
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 1024 bytes smem, 432 bytes cmem[0]
ptxas info    : Compile time = 24.137 ms
"""


def test_ptxas_parser_on_recorded_output():
    check = _load_check_module()
    dkdv, ln = check.parse_ptxas(PTXAS_OUTPUT)
    assert (dkdv.arch, dkdv.registers, dkdv.spill_stores, dkdv.spill_loads, dkdv.stack, dkdv.smem) == ("sm_80", 48, 28, 20, 24, 0)
    assert (ln.arch, ln.registers, ln.spill_stores, ln.spill_loads, ln.stack, ln.smem) == ("sm_80", 32, 0, 0, 0, 1024)
    if shutil.which("c++filt"):
        names = check.demangle([dkdv.kernel, ln.kernel])
        assert check.short_kernel_name(names[dkdv.kernel]) == "attention_bwd_dkdv<float, 64>"
        assert check.short_kernel_name(names[ln.kernel]) == "layer_norm_fwd_cached<bf16, 1, 4>"


SPILLING_KERNEL = """\
// 32 values live at once, compiled with a register cap: ptxas must spill. 256 floats of smem.
__global__ void toykernels_spill_probe(const float* x, float* y, int n) {
  __shared__ float tile[256];
  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = x[threadIdx.x * 32 + i];
  for (int j = 0; j < n; ++j) {
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = acc[i] * acc[(i + j) & 31] + x[j];
  }
  tile[threadIdx.x] = acc[0];
  __syncthreads();
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 32; ++i) s += acc[i] * tile[(threadIdx.x + i) & 255];
  y[threadIdx.x] = s;
}
"""


def test_ptxas_parser_on_live_nvcc_output(nvcc_path, tmp_path):
    check = _load_check_module()
    source = tmp_path / "spill.cu"
    source.write_text(SPILLING_KERNEL)
    result = subprocess.run([nvcc_path, "-arch=sm_80", "-maxrregcount=24", "-Xptxas", "-v", "-c", str(source),
                             "-o", str(tmp_path / "spill.o")], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (kernel,) = check.parse_ptxas(result.stdout + result.stderr)
    assert kernel.arch == "sm_80" and 0 < kernel.registers <= 24
    assert kernel.spill_stores > 0 and kernel.spill_loads > 0 and kernel.smem == 256 * 4
    if shutil.which("c++filt"):
        assert check.short_kernel_name(check.demangle([kernel.kernel])[kernel.kernel]) == "toykernels_spill_probe"


def test_the_check_exits_nonzero_naming_each_failure(monkeypatch, tmp_path, capsys):
    check = _load_check_module()
    monkeypatch.setenv("TOYKERNELS_CACHE", str(tmp_path))  # main() sets both; monkeypatch restores them
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    if torch.version.cuda is None:  # this torch cannot build: a real failure
        assert check.main(["--steps", "toolkit,build", "--cache", str(tmp_path)]) == 1
        out = capsys.readouterr().out
        assert "FAIL toolkit: CUDA toolkit not found" in out
        for op in ("attention", "layer_norm"):
            assert f"FAIL build: {op}: toykernels_{op}: CUDA toolkit not found" in out
    # a step that crashes is one failure line too, and the next step still runs
    monkeypatch.setattr(check, "step_ops", lambda c, args: 1 / 0)
    assert check.main(["--steps", "ops,fake", "--cache", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL ops: ZeroDivisionError: division by zero" in out and "== fake: ok" in out


def test_the_checks_fake_step_passes_and_can_fail(monkeypatch, tmp_path, capsys):
    # the fake registrations against the real ops on CPU (CUDA FakeTensors need no CUDA torch)
    check = _load_check_module()
    monkeypatch.setenv("TOYKERNELS_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    assert check.main(["--steps", "ops,fake", "--cache", str(tmp_path)]) == 0, capsys.readouterr().out
    # a fake that ignores the CUDA layout of a fused-QKV q must be caught
    from toykernels import attention

    monkeypatch.setattr(attention, "_empty_output", lambda like: torch.empty(like.shape, dtype=like.dtype, device=like.device))
    assert check.main(["--steps", "fake", "--cache", str(tmp_path)]) == 1
    assert "FAIL fake: attention_forward float32 fused QKV split (B, T, 3C): output 0" in capsys.readouterr().out
