"""The environment, build and correctness checks of tools/gpu_check.sh, one short line per result.

    python tools/gpu_check_core.py env            # torch, CUDA, GPU, CUDA_HOME, nvcc, cusparse.h, MFU peak
    python tools/gpu_check_core.py build          # JIT-build every op, timed; fails unless each runs CUDA
    python tools/gpu_check_core.py core           # every kernel instantiation, forward and backward
    python tools/gpu_check_core.py core --tiny    # one tiny case per kernel (for compute-sanitizer)
    python tools/gpu_check_core.py core --device cpu --tiny   # the same checks through the fallback

`build` starts one process per op (each op is its own extension), so the two builds run side
by side, with TOYKERNELS_BACKEND=cuda: a failed build raises instead of falling back. It then
loads every op in-process and passes only when backend_info() says each one was built or loaded
from the cache; on a CPU it therefore always fails, which is the point: no green run on the
fallback. On failure it prints the compiler's first error from the op's build.log
(toykernels._build.first_error_line).

`core` runs the kernels directly (the raw forward and backward functions of toykernels.layernorm
and toykernels.attention, under TOYKERNELS_BACKEND=cuda on a GPU) with NaN-poisoned outputs and
compares every output and gradient with float64, by flash-attention's rule as the CUDA tests do
(tests/kernels/*/test_cuda.py): the error may be at most a small multiple of PyTorch's own error
in the same precision, plus a floor. One line per case with the max errors and PASS or FAIL,
then a `# core:` line with the counts. The cases are picked from the launchers' dispatch rules
(csrc/layernorm.cu: forward_dispatch, backward_dispatch; csrc/attention.cu: launch_forward,
launch_backward) so that every template instantiation runs at least once; `layer_norm_paths`
below mirrors those rules to name the kernels each case reaches, and the summary counts them.
It needs no pytest, so it starts fast and prints little.

Exit status: 0 when everything passed, 1 when anything failed, 2 for a command-line error.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

EPS = 1e-5
DNAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, not argparse's usage block
        print(f"gpu_check_core: {message}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------------------------
# env


def cuda_include_dirs() -> list[Path]:
    """The folders an extension build searches for CUDA headers, and the usual other places."""
    from torch.utils import cpp_extension

    dirs = []
    try:
        dirs += [Path(p) for p in cpp_extension.include_paths("cuda")]
    except (OSError, TypeError, RuntimeError):  # no CUDA_HOME, or an older signature
        pass
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME")
    if home:
        dirs += [Path(home) / "include", *sorted(Path(home).glob("targets/*/include"))]
    for site in map(Path, sys.path):  # CUDA's pip wheels: nvidia/<lib>/include, nvidia/cu13/include
        dirs += sorted(site.glob("nvidia/*/include"))
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def cmd_env(args) -> int:
    from torch.utils import cpp_extension

    print(f"python {platform.python_version()} ({sys.executable})")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    print(f"torch {torch.__version__}, torch.version.cuda {torch.version.cuda}, cuDNN {cudnn}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"GPU {p.name}: sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
    else:
        print("GPU: none visible (torch.cuda.is_available() is False)")
    home = cpp_extension.CUDA_HOME
    print(f"CUDA_HOME {os.environ.get('CUDA_HOME') or '(unset)'}; torch.utils.cpp_extension.CUDA_HOME {home}")
    nvcc = str(Path(home) / "bin" / "nvcc") if home and (Path(home) / "bin" / "nvcc").is_file() else shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
            release = next((line for line in out.splitlines() if "release" in line), out.strip()[-80:])
        except (OSError, subprocess.TimeoutExpired) as error:
            release = f"does not run: {error}"
        print(f"nvcc {nvcc}: {release.strip()}")
    else:
        print("nvcc: NOT FOUND (no CUDA_HOME/bin/nvcc, none on the PATH): the extensions cannot build")
    dirs = cuda_include_dirs()
    found = [d / "cusparse.h" for d in dirs if (d / "cusparse.h").is_file()]
    # torch's ATen/cuda/CUDAContext.h, which the bindings include, includes cusparse.h
    print(f"cusparse.h: {found[0]}" if found else
          f"cusparse.h: NOT FOUND in {', '.join(map(str, dirs)) or 'any CUDA include folder'}")
    print(f"compute-sanitizer: {shutil.which('compute-sanitizer') or find_sanitizer() or 'NOT FOUND'}")
    if torch.cuda.is_available():
        from toygpt.metrics import PEAK_FLOPS, peak_flops

        name = torch.cuda.get_device_name()
        peak = peak_flops("cuda")
        key = next((k for k in PEAK_FLOPS if k in name), None)
        print(f"MFU peak: {peak / 1e12:.0f} TFLOP/s bf16 dense (toygpt.metrics.PEAK_FLOPS[{key!r}])" if peak
              else f"MFU peak: none known for {name!r} (toygpt.metrics.PEAK_FLOPS): no MFU figures")
    import toykernels

    print(toykernels.backend_info())
    return 0


def find_sanitizer() -> str | None:
    """compute-sanitizer off the PATH, where tools/gpu_check.sh looks for it: beside the
    toolkit's nvcc (the PATH's nvcc may be a wrapper script elsewhere)."""
    from torch.utils import cpp_extension

    homes = [h for h in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda") if h]
    candidates = [Path(h) / "bin" / "compute-sanitizer" for h in homes]
    candidates += sorted(Path("/usr/local").glob("cuda-*/bin/compute-sanitizer"))
    return next((str(c) for c in candidates if c.is_file()), None)


# ----------------------------------------------------------------------------------------------
# build


# a line of backend_info() about an op (it may hold other lines, such as the toolkit's)
OP_LINE = re.compile(r"^(\w+): (cuda|torch fallback|error)\b")
# a line of backend_info() for an op whose extension is loaded and runs
RUNS_CUDA = re.compile(r"^(\w+): cuda: (built|loaded from cache) ")


def ops_registered(device: str) -> list[str]:
    """The ops toykernels registers, read off backend_info() (one 'op: ...' line each)."""
    import toykernels

    return [m.group(1) for m in map(OP_LINE.match, toykernels.backend_info(device).splitlines()) if m]


def exercise(op: str, device: str) -> None:
    """One small forward and backward of `op`: its first CUDA call builds the extension."""
    import toykernels

    if op == "layer_norm":
        x = torch.randn(8, 768, device=device, requires_grad=True)
        weight = torch.ones(768, device=device, requires_grad=True)
        toykernels.layer_norm(x, weight, torch.zeros(768, device=device)).sum().backward()
    elif op == "attention":
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        q = torch.randn(1, 2, 64, 64, device=device, dtype=dtype, requires_grad=True)
        toykernels.causal_attention(q, q, q).float().sum().backward()
    else:
        raise KeyError(f"gpu_check_core.py does not know how to call op {op!r}; add it to exercise()")
    if device == "cuda":
        torch.cuda.synchronize()


def op_info(op: str, device: str) -> str:
    import toykernels

    return next(line for line in toykernels.backend_info(device).splitlines() if line.startswith(op + ":"))


def print_build_failure(op: str, error: BaseException) -> None:
    print(f"{op}: FAILED: {str(error).splitlines()[0][:400] if str(error) else type(error).__name__}")
    cause = error
    while cause is not None and getattr(cause, "log_path", None) is None:
        cause = cause.__cause__
    log_path = getattr(cause, "log_path", None)
    if log_path is not None and Path(log_path).is_file():
        from toykernels._build import first_error_line

        print(f"{op}: first error: {first_error_line(Path(log_path).read_text(errors='replace'))[:400]}")
        print(f"{op}: full log: {log_path}")


def build_one(op: str, device: str) -> int:
    """The child process of `build`: the op's first call, which builds its extension."""
    os.environ["TOYKERNELS_BACKEND"] = "cuda"  # a failed build raises instead of falling back
    start = time.perf_counter()
    try:
        exercise(op, device)
    except Exception as error:  # the build's or the first call's error, reported as one line
        print_build_failure(op, error)
        return 1
    print(f"{op_info(op, device)}  (first call {time.perf_counter() - start:.1f} s)", flush=True)
    return 0


def cmd_build(args) -> int:
    if args.op:
        return build_one(args.op, args.device)
    ops = ops_registered(args.device)
    print(f"# building {', '.join(ops)} for {args.device}" + (", one process each" if args.device == "cuda" else ""),
          flush=True)
    start = time.perf_counter()
    failed = []
    if args.device == "cuda":
        children = {op: subprocess.Popen([sys.executable, __file__, "build", "--op", op], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
                    for op in ops}  # fmt: skip
        for op, child in children.items():
            out, _ = child.communicate()
            print(out.rstrip(), flush=True)
            if child.returncode != 0:
                failed.append(op)
    print(f"# builds ended after {time.perf_counter() - start:.1f} s", flush=True)
    # In this process too (from the cache on a GPU): what a user's process would run.
    for op in ops:
        if op in failed:
            continue
        try:
            exercise(op, args.device)
        except Exception as error:
            print_build_failure(op, error)
            failed.append(op)
    for op in ops:
        line = op_info(op, args.device)
        if op not in failed and not RUNS_CUDA.match(line):
            print(f"{op}: FAILED: would not run its CUDA kernel: {line}")
            failed.append(op)
    if failed:
        print(f"# build: FAILED: {', '.join(failed)} would not run CUDA kernels "
              f"(TOYKERNELS_BACKEND={os.environ.get('TOYKERNELS_BACKEND', 'auto')})")
        return 1
    print(f"# build: every op runs its CUDA kernel ({', '.join(ops)}) after {time.perf_counter() - start:.0f} s")
    return 0


# ----------------------------------------------------------------------------------------------
# core: the cases


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def layer_norm_paths(C: int, dtype: torch.dtype) -> tuple[str, str]:
    """The forward and backward row kernels a (rows, C) LayerNorm launches, e.g.
    ('fwd_cached<8,4>', 'bwd_cached<8,2>'), as <VEC, ITEMS>.

    NOTE: mirrors forward_dispatch and backward_dispatch in csrc/layernorm.cu (threads per row
    from 4 or 2 packs per thread, clamped to 32..256; packs per thread rounded up to a power of
    two; cached sizes 2, 4, 8 for 16-byte packs, 8 in the backward only where 8 * VEC <= 32,
    4 for the scalar path); keep the two in step.
    """
    vec = 16 // dtype.itemsize if C % (16 // dtype.itemsize) == 0 else 1  # 16-byte aligned rows
    n = C // vec

    def pick(per_thread, sizes):
        t = min(max(next_pow2(-(-n // per_thread)), 32), 256)
        items = next_pow2(-(-n // t))
        return next((s for s in sizes if items <= s), None)

    fwd = pick(4, (2, 4, 8) if vec > 1 else (4,))
    bwd = pick(2, ((2, 4, 8) if vec == 4 else (2, 4)) if vec > 1 else (4,))
    return (f"fwd_cached<{vec},{fwd}>" if fwd else f"fwd_uncached<{vec}>",
            f"bwd_cached<{vec},{bwd}>" if bwd else f"bwd_uncached<{vec}>+param_partials")


def layer_norm_instantiations() -> set[str]:
    """Every row-kernel instantiation in layernorm.cu, named as layer_norm_paths names them."""
    names = set()
    for dtype, dname in DNAME.items():
        vec = 16 // dtype.itemsize
        names |= {f"{dname} fwd_cached<{vec},{i}>" for i in (2, 4, 8)} | {f"{dname} fwd_cached<1,4>"}
        names |= {f"{dname} fwd_uncached<{vec}>", f"{dname} fwd_uncached<1>"}
        names |= {f"{dname} bwd_cached<{vec},{i}>" for i in ((2, 4, 8) if vec == 4 else (2, 4))}
        names |= {f"{dname} bwd_cached<1,4>", f"{dname} bwd_uncached<{vec}>+param_partials",
                  f"{dname} bwd_uncached<1>+param_partials"}  # fmt: skip
    return names


@dataclass(frozen=True)
class NormCase:
    dtype: torch.dtype
    rows: int
    C: int
    variant: str  # affine, fused (residual add), plain (no weight, no bias), fp32-params

    def name(self) -> str:
        fwd, bwd = layer_norm_paths(self.C, self.dtype)
        return f"layer_norm {DNAME[self.dtype]} {self.rows}x{self.C} {self.variant} [{fwd} {bwd}]"


@dataclass(frozen=True)
class AttnCase:
    dtype: torch.dtype
    D: int
    B: int
    H: int
    Tq: int
    Tk: int

    def name(self) -> str:
        kind = "fp32" if self.dtype == torch.float32 else "tensor-core"
        return (f"attention {DNAME[self.dtype]} D={self.D} B={self.B} H={self.H} Tq={self.Tq} Tk={self.Tk} "
                f"[{kind} fwd, bwd delta+dkdv+dq]")


# Widths and the row kernels they reach (VEC = 4 for fp32, 8 for fp16/bf16), by the rules above:
#   33     scalar, cached (4 per thread), forward and backward
#   64     16-byte packs, cached, 2 per thread
#   768    packs, forward 4 per thread, backward 2
#   1025   scalar, uncached (too wide for the scalar cache): bwd dx + the column-wise dweight/dbias
#   4096   packs: fp32 4 per thread both ways; 16-bit forward 4, backward 2
#   8192   packs: fp32 8 per thread both ways; 16-bit 4 both ways
#   8200   packs: 16-bit forward 8 per thread, backward uncached; fp32 uncached both ways
#   16392  packs, uncached everywhere
NORM_WIDTHS = (33, 64, 768, 1025, 4096, 8192, 8200, 16392)
NORM_VARIANTS = ("affine", "fused", "plain")


def core_cases(tiny: bool) -> list:
    if tiny:  # one tiny case per kernel, for compute-sanitizer (which runs kernels 10-100x slower)
        return [
            NormCase(torch.bfloat16, 5, 64, "fused"),  # cached forward and backward, packs
            NormCase(torch.float16, 3, 33, "affine"),  # cached, scalar
            NormCase(torch.float32, 3, 1025, "affine"),  # uncached, scalar, column-wise dweight/dbias
            NormCase(torch.bfloat16, 2, 8200, "plain"),  # forward 8 packs per thread, backward uncached
            AttnCase(torch.bfloat16, 64, 1, 2, 67, 67),  # tensor cores, a partial second tile
            AttnCase(torch.float16, 128, 1, 1, 17, 67),  # tensor cores, D=128, bottom-right mask
            AttnCase(torch.float32, 32, 1, 2, 17, 67),  # the fp32 kernels
        ]
    cases = []
    for dtype in DNAME:
        for i, C in enumerate(NORM_WIDTHS):
            cases.append(NormCase(dtype, 97, C, NORM_VARIANTS[i % 3]))
    cases += [
        NormCase(torch.bfloat16, 97, 1024, "fp32-params"),  # fp32 master weights, bf16 activations
        # more rows than resident blocks (132 SMs x 8 blocks x 8 rows): the backward's blocks loop
        NormCase(torch.float32, 20011, 64, "affine"),
        NormCase(torch.bfloat16, 20011, 768, "fused"),
    ]
    for dtype in DNAME:
        for D in (32, 64, 128):
            cases.append(AttnCase(dtype, D, 2, 3, 197, 197))
        cases.append(AttnCase(dtype, 64, 2, 3, 61, 197))  # query shorter than keys: bottom-right mask
    return cases


# ----------------------------------------------------------------------------------------------
# core: the checks


def poison(device: str, *shapes_dtypes) -> None:
    """Hand NaN-filled blocks back to the caching allocator: the kernel's outputs (same sizes,
    allocated next) start out as NaN, so an element the kernel never writes fails the check."""
    if device != "cuda":
        return
    blocks = [torch.full(shape, float("nan"), device=device, dtype=dtype) for shape, dtype in shapes_dtypes]
    torch.cuda.synchronize()
    del blocks


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        return math.inf
    if got.numel() == 0:
        return 0.0
    if not torch.isfinite(got).all():
        return math.nan
    return (got.double() - want).abs().max().item()


NORM_FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def check_layer_norm(case: NormCase, device: str, seed: int):
    """{output: (error, limit)} for one LayerNorm case against float64."""
    from toykernels.layernorm import add_layer_norm_forward, layer_norm_backward, layer_norm_forward

    rows, C, dtype = case.rows, case.C, case.dtype
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=gen)

    affine = case.variant != "plain"
    param_dtype = torch.float32 if case.variant == "fp32-params" else dtype
    x = (randn(rows, C) * 2 + 0.5).to(dtype)
    residual = randn(rows, C).to(dtype) if case.variant == "fused" else None
    weight = (1 + 0.5 * randn(C)).to(param_dtype) if affine else None
    bias = randn(C).to(param_dtype) if affine else None
    dy = randn(rows, C).to(dtype)

    poison(device, ((rows, C), dtype), ((rows, C), dtype), ((rows,), torch.float32), ((rows,), torch.float32))
    results = {}
    if residual is not None:
        s, y, mean, rstd = add_layer_norm_forward(x, residual, weight, bias, EPS)
        s_ref = x + residual  # rounded to dtype as the kernel's s is
        results["s"] = (0.0 if torch.equal(s, s_ref) else math.inf, 0.0)
    else:
        y, mean, rstd = layer_norm_forward(x, weight, bias, EPS)
        s_ref = x
    poison(device, ((rows, C), dtype), ((C,), torch.float32), ((C,), torch.float32))
    dx, dweight, dbias = layer_norm_backward(dy, s_ref, weight, mean, rstd, has_bias=affine)

    def run(inp, w, b):  # F.layer_norm through autograd: the float64 truth and torch in dtype
        leaves = [inp.detach().requires_grad_()] + ([w.detach().requires_grad_(), b.detach().requires_grad_()]
                                                     if affine else [])  # fmt: skip
        out = F.layer_norm(leaves[0], (C,), *(leaves[1:] if affine else (None, None)), eps=EPS)
        return [out, *torch.autograd.grad(out, leaves, dy.to(out.dtype))]

    want = run(s_ref.double(), weight.double() if affine else None, bias.double() if affine else None)
    # torch's own op in dtype (parameters cast to dtype: F.layer_norm wants one dtype on CUDA)
    base = run(s_ref, weight.to(dtype) if affine else None, bias.to(dtype) if affine else None)
    got = [y, dx] + ([dweight, dbias] if affine else [])
    for name, g, w, b in zip(("y", "dx", "dweight", "dbias"), got, want, base):
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        results[name] = (max_err(g, w), 2 * max_err(b, w) + NORM_FLOOR[dtype] * scale)
    mean64 = s_ref.double().mean(-1)
    rstd64 = torch.rsqrt(s_ref.double().var(-1, unbiased=False) + EPS)
    results["mean"] = (max_err(mean, mean64), 1e-5 * max(1.0, mean64.abs().max().item()) * 2)
    results["rstd"] = (max_err(rstd, rstd64), 1e-5 + 1e-4 * rstd64.abs().max().item())
    if not affine and (dweight is not None or dbias is not None):
        results["no-params"] = (math.inf, 0.0)  # gradients for parameters that do not exist
    return results


ATTN_CAP = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}
ATTN_FLOOR = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def check_attention(case: AttnCase, device: str, seed: int):
    """{output: (error, limit)} for one attention case against float64."""
    from toykernels.attention import attention_backward, attention_forward

    B, H, Tq, Tk, D, dtype = case.B, case.H, case.Tq, case.Tk, case.D, case.dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, device=device, generator=gen).to(dtype) for T in (Tq, Tk, Tk))
    dout = torch.randn(B, H, Tq, D, device=device, generator=gen).to(dtype)
    scale = 1 / math.sqrt(D)

    poison(device, (q.shape, dtype), ((B, H, Tq), torch.float32))  # out, lse
    out, lse = attention_forward(q, k, v, scale)
    poison(device, (q.shape, dtype), (k.shape, dtype), (v.shape, dtype), ((B, H, Tq), torch.float32))
    dq, dk, dv = attention_backward(dout, q, k, v, out, lse, scale)

    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)  # bottom right
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    scores = (q64 @ k64.transpose(-2, -1) * scale).masked_fill(~allowed, float("-inf"))  # (B, H, Tq, Tk)
    ref = torch.softmax(scores, dim=-1) @ v64  # (B, H, Tq, D)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    ref_lse = torch.logsumexp(scores.detach(), dim=-1)  # (B, H, Tq)
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    tout = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed, scale=scale)  # torch in dtype
    tgrads = torch.autograd.grad(tout, (qt, kt, vt), dout)

    cap, floor = ATTN_CAP[dtype], ATTN_FLOOR[dtype]
    results = {"out": (max_err(out, ref), min(2 * max_err(tout, ref) + floor, cap)),
               "lse": (max_err(lse, ref_lse), max(1e-3, 1e-4 * ref_lse.abs().max().item()))}
    for name, g, tg, r in zip(("dq", "dk", "dv"), (dq, dk, dv), tgrads, ref_grads):
        results[name] = (max_err(g, r), min(3 * max_err(tg, r) + floor, cap * max(1.0, r.abs().max().item())))
    return results


def cmd_core(args) -> int:
    import toykernels

    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            print("gpu_check_core: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 1
        os.environ["TOYKERNELS_BACKEND"] = "cuda"  # a fallback raises: it must never pass as the kernel
    cases = core_cases(args.tiny)
    print(f"# core on {device}{' (the PyTorch fallback, not the kernels)' if device != 'cuda' else ''}: "
          f"{len(cases)} cases, each output's max error against float64 / its limit", flush=True)
    start = time.perf_counter()
    passed, failed, worst, covered = 0, [], (0.0, ""), set()
    for i, case in enumerate(cases):
        try:
            if isinstance(case, NormCase):
                results = check_layer_norm(case, device, seed=1000 + i)
                covered |= {f"{DNAME[case.dtype]} {path}" for path in layer_norm_paths(case.C, case.dtype)}
            else:
                results = check_attention(case, device, seed=1000 + i)
            if device == "cuda":
                torch.cuda.synchronize()  # a kernel fault shows here, named by this case
        except Exception as error:  # a raise is a failed case, not the end of the run
            print(f"{case.name()}  ERROR {type(error).__name__}: {str(error).splitlines()[0][:300]}  FAIL", flush=True)
            failed.append(case.name())
            continue
        ok = all(err <= limit for err, limit in results.values())  # NaN compares False: fails
        figures = "  ".join(f"{name} {err:.1e}/{limit:.1e}" for name, (err, limit) in results.items())
        print(f"{case.name()}  {figures}  {'PASS' if ok else 'FAIL'}", flush=True)
        if ok:
            passed += 1
            for name, (err, limit) in results.items():
                if limit > 0 and err / limit > worst[0]:
                    worst = (err / limit, f"{name} of {case.name().split(' [')[0]}")
        else:
            failed.append(case.name())
    info = "; ".join(line for line in toykernels.backend_info(device).splitlines() if OP_LINE.match(line))
    summary = f"# core: {passed} PASS, {len(failed)} FAIL of {len(cases)} cases in {time.perf_counter() - start:.0f} s"
    missing = [] if args.tiny else sorted(layer_norm_instantiations() - covered)
    if not args.tiny:
        total = len(layer_norm_instantiations())
        summary += f"; LayerNorm row kernels covered {total - len(missing)}/{total}"
    if missing:  # a case list that no longer reaches every kernel is a failure of this check
        failed.append(f"LayerNorm row kernels not reached: {', '.join(missing)}")
    summary += f"; worst {worst[0]:.2f} of its limit ({worst[1]})" if worst[1] else ""
    print(summary)
    print(f"# backend: {info}")
    for name in failed:
        print(f"# FAIL {name}")
    return 0 if not failed else 1


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="what the build depends on")
    build = sub.add_parser("build", help="build every op's extension; fail unless each runs CUDA")
    build.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    build.add_argument("--op", help=argparse.SUPPRESS)  # the child process for one op
    core = sub.add_parser("core", help="every kernel instantiation, forward and backward, against float64")
    core.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    core.add_argument("--tiny", action="store_true", help="one tiny case per kernel (for compute-sanitizer)")
    args = parser.parse_args(argv)
    return {"env": cmd_env, "build": cmd_build, "core": cmd_core}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
