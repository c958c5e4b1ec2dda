"""The build machinery and backend choice: nvcc compile check of every .cu file (sm_80 and
sm_90, wherever nvcc is found), backend_info's words, TOYKERNELS_BACKEND, and build errors."""

import subprocess
from pathlib import Path

import pytest
import torch
import toykernels
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
def test_build_without_cuda_toolkit_raises_build_error():
    with pytest.raises(_build.BuildError, match="CUDA_HOME is None"):
        _build.load_extension("layer_norm", ["layernorm.cu", "layernorm_bindings.cpp"])


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
