"""tools/gpu_check.sh's plumbing on a CPU, through its dry run, and tools/gpu_check_core.py's
checks through the PyTorch fallback.

The script runs on a GPU only when a device box is lent, for minutes, so its plumbing is tested
here: the steps in order with one summary line each, a step cut off by its budget recorded as
such, a failed build stopping the run with the compiler's error, and a run where the fallback
would be used exiting nonzero. GPU_CHECK_DRY_RUN=cpu runs the real command lines of the Python
steps on tiny CPU shapes; =stub replaces every step by a stand-in (see the script's header).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "gpu_check.sh"
STEPS = ["env", "build", "core", "memcheck", "racecheck", "bench_layernorm", "bench_attention", "train", "pytest"]
# "[3] core             exit 0       2s of   45s  ok"
STEP_LINE = re.compile(r"^\[(\d+)\] (\S+)\s+exit (\S+)\s+(\d+)s of\s+(-?\d+)s  (.*)$")
OUT_FILES = {"summary.txt", "build.log", "core.log", "bench.log", "tests.log", "layernorm.csv", "attention.csv",
             "train.csv"}  # fmt: skip

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def load_tool(name: str):
    """A module of tools/ (not a package), imported from its file. The benchmarks import their
    shared helpers as `benchlib` (tools/ is on sys.path when they run as scripts): that module
    is loaded from its file first, under its own name, not by putting tools/ on sys.path."""
    if name != "benchlib" and "benchlib" not in sys.modules:
        sys.modules["benchlib"] = load_tool("benchlib")
    qualified = "benchlib" if name == "benchlib" else f"tools_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def run_check(tmp_path: Path, *args: str, **env: str):
    """tools/gpu_check.sh OUTDIR ARGS with this Python -> (result, summary text, step rows)."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUDGET_", "GPU_CHECK_", "TOYKERNELS_")) and k != "PHASE_BUDGET"}  # fmt: skip
    environ.update(PYTHON=sys.executable, TOYKERNELS_CACHE=str(tmp_path / "cache"), **env)
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT), str(out), *args], env=environ, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    summary_path = out / "summary.txt"
    summary = summary_path.read_text() if summary_path.exists() else ""
    steps = [m.groups() for m in map(STEP_LINE.match, summary.splitlines()) if m]
    return result, summary, steps


def step_block(summary: str, name: str) -> str:
    """A step's line and the figures indented below it."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if (m := STEP_LINE.match(line)) and m.group(2) == name)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("      ")), len(lines))
    return "\n".join(lines[start:end])


def test_dry_run_runs_every_step_in_order_with_the_real_command_lines(tmp_path):
    result, summary, steps = run_check(tmp_path, GPU_CHECK_DRY_RUN="cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [s[1] for s in steps] == STEPS, summary
    assert [int(s[0]) for s in steps] == list(range(1, len(STEPS) + 1))
    assert all(s[2] == "0" and s[5] == "ok" for s in steps), summary
    assert summary.rstrip().splitlines()[-1].startswith("RESULT: PASS")
    # the Python steps really ran, with the flags the GPU run passes (on tiny CPU shapes)
    assert "cusparse.h: " in step_block(summary, "env")
    assert re.search(r"# core: 7 PASS, 0 FAIL of 7 cases", step_block(summary, "core"))
    assert re.search(r"bfloat16 +64x256 +fwd ", step_block(summary, "bench_layernorm"))
    attention = step_block(summary, "bench_attention")
    assert "toykernels    fwd " in attention and "sdpa_flash    fwd " in attention
    assert "sdpa_cudnn    B=1 H=2 T=64 D=32: skipped" in attention  # no cuDNN on a CPU: one line, no crash
    assert "tokens/s" in step_block(summary, "train")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files <= OUT_FILES and not any(name.endswith(".csv") for name in files), files


def test_a_step_over_its_budget_is_recorded_as_cut_off_and_the_next_steps_run(tmp_path):
    result, summary, steps = run_check(tmp_path, GPU_CHECK_DRY_RUN="stub", GPU_CHECK_DRY_STALL="core",
                                       BUDGET_CORE="1")  # fmt: skip
    assert result.returncode == 1, summary
    assert [s[1] for s in steps] == STEPS, summary
    core = dict((s[1], s) for s in steps)["core"]
    assert core[2] == "124" and core[4] == "1" and core[5].startswith("CUT OFF"), core
    assert int(core[3]) <= 3  # cut off at its 1 s budget, not after the 600 s sleep
    assert all(s[5] == "ok" for s in steps if s[1] != "core"), summary
    assert summary.rstrip().splitlines()[-1].startswith("RESULT: INCOMPLETE (cut off or skipped): core")


def test_a_failed_build_stops_the_run_with_the_compilers_first_error(tmp_path):
    result, summary, steps = run_check(tmp_path, GPU_CHECK_DRY_RUN="stub", GPU_CHECK_DRY_BUILD="fail")
    assert result.returncode == 1, summary
    assert [s[1] for s in steps] == ["env", "build"], summary  # nothing after the build ran
    assert steps[1][2] == "1" and steps[1][5] == "FAILED"
    assert re.search(r'first compiler error .*attention\.cu\(1\): error: identifier "dry_run_planted"', summary)
    assert "stopped after the build" in summary
    assert summary.rstrip().splitlines()[-1].startswith("RESULT: FAIL: build")
    assert "dry_run_planted" in (tmp_path / "out" / "build.log").read_text()  # the build log itself


def test_the_run_fails_where_the_fallback_would_be_used(tmp_path):
    # the real build check, on a CPU: every op would run the PyTorch fallback
    result, summary, steps = run_check(tmp_path, GPU_CHECK_DRY_RUN="stub", GPU_CHECK_DRY_BUILD="fallback")
    assert result.returncode == 1, summary
    assert [s[1] for s in steps] == ["env", "build"], summary
    assert steps[1][5] == "FAILED"
    assert "layer_norm: FAILED: would not run its CUDA kernel: layer_norm: torch fallback" in summary
    assert "attention: FAILED: would not run its CUDA kernel" in summary


@pytest.mark.parametrize("args, env, message", [
    ((), {}, "usage: "),
    (("OUT", "benchmark"), {}, "unknown phase 'benchmark'"),
    (("OUT",), {"GPU_CHECK_DRY_RUN": "yes"}, "GPU_CHECK_DRY_RUN='yes'"),
])  # fmt: skip
def test_a_usage_error_prints_one_line_and_exits_2(tmp_path, args, env, message):
    environ = {**os.environ, **env}
    result = subprocess.run(["bash", str(SCRIPT), *[str(tmp_path / a) if a == "OUT" else a for a in args]],
                            env=environ, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------
# tools/gpu_check_core.py, in-process


@pytest.fixture(scope="module")
def core():
    return load_tool("gpu_check_core")


@pytest.mark.parametrize("planted", ["layer_norm y off by 1e-2", "layer_norm dx unwritten", "attention dk scaled"])
def test_core_fails_a_wrong_kernel(core, capsys, monkeypatch, planted):
    import toykernels.attention as attention
    import toykernels.layernorm as layernorm

    monkeypatch.delenv("TOYKERNELS_BACKEND", raising=False)
    if planted == "layer_norm y off by 1e-2":
        forward = layernorm.layer_norm_forward
        monkeypatch.setattr(layernorm, "layer_norm_forward",
                            lambda *a: (lambda y, m, r: (y + 1e-2 * y.abs().max(), m, r))(*forward(*a)))  # fmt: skip
    elif planted == "layer_norm dx unwritten":
        backward = layernorm.layer_norm_backward
        monkeypatch.setattr(layernorm, "layer_norm_backward",
                            lambda *a, **k: (lambda dx, dw, db: (dx.index_fill(-1, torch.tensor([0]), float("nan")), dw, db))(
                                *backward(*a, **k)))  # fmt: skip
    else:
        backward = attention.attention_backward
        monkeypatch.setattr(attention, "attention_backward",
                            lambda *a: (lambda dq, dk, dv: (dq, dk * 1.02, dv))(*backward(*a)))  # fmt: skip
    assert core.main(["core", "--device", "cpu", "--tiny"]) == 1
    out = capsys.readouterr().out
    op = planted.split()[0]
    failed = [line for line in out.splitlines() if line.endswith("  FAIL")]
    assert failed and all(line.startswith(op) for line in failed), out
    assert re.search(r"# core: \d+ PASS, [1-9]\d* FAIL of 7 cases", out)


def test_core_cases_reach_every_layer_norm_kernel(core):
    reached = {f"{core.DNAME[c.dtype]} {path}" for c in core.core_cases(tiny=False) if isinstance(c, core.NormCase)
               for path in core.layer_norm_paths(c.C, c.dtype)}  # fmt: skip
    assert reached == core.layer_norm_instantiations()
    # spot checks of the mirrored dispatch against the table in tests/kernels/layernorm/test_emulated.py
    assert core.layer_norm_paths(8200, torch.bfloat16) == ("fwd_cached<8,8>", "bwd_uncached<8>+param_partials")
    assert core.layer_norm_paths(8192, torch.float32) == ("fwd_cached<4,8>", "bwd_cached<4,8>")
    assert core.layer_norm_paths(1025, torch.float16) == ("fwd_uncached<1>", "bwd_uncached<1>+param_partials")
    assert core.layer_norm_paths(64, torch.bfloat16) == ("fwd_cached<8,2>", "bwd_cached<8,2>")


def test_core_cases_cover_every_attention_dtype_and_head_dim(core):
    cases = [c for c in core.core_cases(tiny=False) if isinstance(c, core.AttnCase)]
    assert {(c.dtype, c.D) for c in cases} == {(d, D) for d in core.DNAME for D in (32, 64, 128)}
    assert any(c.Tq < c.Tk for c in cases)


def test_command_line_errors_print_one_line_and_exit_2(core, capsys):
    for main, argv in ((core.main, ["core", "--device", "tpu"]),
                       (load_tool("bench_layernorm").main, ["--shapes", "32768x"]),
                       (load_tool("bench_attention").main, ["--providers", "toykernels,sdpa_magic"])):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
