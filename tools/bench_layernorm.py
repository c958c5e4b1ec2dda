"""Benchmark LayerNorm: toykernels vs F.layer_norm vs a torch.compile'd F.layer_norm.

Modes: forward, backward, forward+backward, in GB/s from written-down byte counts
(e = bytes per element, N x C input, parameters weight and bias of C elements):
    forward  = 2 * N * C * e + 2 * C * e      (read x, write y; read weight, bias)
    backward = 3 * N * C * e + 3 * C * e      (read x, dy, write dx; read weight, write dw, db)
    forward+backward = the sum
The statistics (8 bytes per row) are left out. The same run measures the device's copy
bandwidth (dst.copy_(src) of 1 GiB: 2 bytes moved per byte copied) and reports each
provider's share of it. Every provider's forward and gradients are checked against a float64
reference before anything is timed. Timings are medians of CUDA-event intervals with the L2
flushed (a 256 MiB memset) before each repetition.
Rows are appended to benchmarks/results/layernorm.csv with GPU, torch version, date and commit.

Goals (H100/H200, bf16, 32768x4096 and up): forward >= 85% of copy bandwidth and >= 1.3x
F.layer_norm; backward >= 50% of copy bandwidth and >= 1.3x torch.

    python tools/bench_layernorm.py                    # all shapes, bf16 and fp32, on the GPU
    python tools/bench_layernorm.py --dtype bf16 --quick
    python tools/bench_layernorm.py --device cpu --quick --no-csv   # a smoke test of this script
    python tools/bench_layernorm.py --device cpu --per-call         # the cost of one small call
    python tools/bench_layernorm.py --dtype bf16 --shapes 32768x4096 --providers toykernels,torch

`--per-call` times what a GPT-2 decode step does instead: 25 LayerNorm calls on a (1, 1, 768)
tensor, in microseconds per call, for the public API, the custom op called directly (its
fallback formulas are what every CPU call ran before the API called F.layer_norm off CUDA),
and F.layer_norm itself; printed only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import toykernels
from benchlib import RESULTS, Timer, append_csv, parse_names, parse_shapes, run_meta

PROG = "bench_layernorm"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwd+bwd")
SHAPES = [(8192, 768), (65536, 768), (16384, 1600), (32768, 4096), (16384, 8192)]
GOAL_SHAPES = {(32768, 4096), (16384, 8192)}
GOALS = {"fwd": (0.85, 1.3), "bwd": (0.50, 1.3)}  # (share of copy bandwidth, speed-up vs torch)
PROVIDERS = ("toykernels", "torch", "torch_compile")


def torch_layer_norm(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias)


def make_providers(names=PROVIDERS):
    """The providers named, in the order of PROVIDERS. torch.compile is set up only when named:
    importing dynamo alone takes seconds."""
    providers = {"toykernels": toykernels.layer_norm, "torch": torch_layer_norm}
    if "torch_compile" in names:
        # The backward is timed by replaying one graph's backward (retain_graph=True), which
        # compiled graphs refuse while they donate their saved buffers to the backward.
        import torch._dynamo.config
        import torch._functorch.config

        torch._functorch.config.donated_buffer = False
        # one compile per (shape, dtype, requires_grad): well over the default limit of 8, after
        # which dynamo would silently run the function eagerly
        torch._dynamo.config.cache_size_limit = 64
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 64
        # dynamic=False: one specialised kernel per shape, the best case for compile
        providers["torch_compile"] = torch.compile(torch_layer_norm, dynamic=False)
    return {name: fn for name, fn in providers.items() if name in names}


def bytes_moved(N, C, element_size, mode):
    forward = (2 * N * C + 2 * C) * element_size
    backward = (3 * N * C + 3 * C) * element_size
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[mode]


def copy_bandwidth(device, timer):
    """GB/s of a plain device copy (read + write), the roof for a memory-bound kernel."""
    n = 2**30 if device == "cuda" else 2**26
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3) / 1e9


def check(provider, fn, x, weight, bias, dy):
    """Forward and all gradients against float64 before timing; raises on a mismatch."""
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y_ref = torch_layer_norm(*ref_leaves)
    grads_ref = torch.autograd.grad(y_ref, ref_leaves, dy.double())
    tol = 1e-3 if x.dtype == torch.float32 else 6e-2
    for name, got, want in zip(("y", "dx", "dweight", "dbias"), (y, *grads), (y_ref, *grads_ref)):
        err = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1)).item()
        if not err <= tol:
            raise AssertionError(f"{provider}: {name} relative error {err:.3g} > {tol}")


def bench_shape(provider, fn, N, C, dtype, device, timer):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, C, device=device, generator=gen).to(dtype)
    weight = torch.randn(C, device=device, generator=gen).to(dtype).requires_grad_()
    bias = torch.randn(C, device=device, generator=gen).to(dtype).requires_grad_()
    dy = torch.randn(N, C, device=device, generator=gen).to(dtype)
    try:
        check(provider, fn, x, weight, bias, dy)
        x.requires_grad_()
        ms = {}
        with torch.no_grad():
            ms["fwd"] = timer(lambda: fn(x, weight, bias))
        y = fn(x, weight, bias)
        ms["bwd"] = timer(lambda: torch.autograd.grad(y, (x, weight, bias), dy, retain_graph=True))
        ms["fwd+bwd"] = timer(lambda: torch.autograd.grad(fn(x, weight, bias), (x, weight, bias), dy))
        return ms
    except (RuntimeError, AssertionError) as error:  # OOM, compile failure, a wrong result
        print(f"  {provider:13s} {N}x{C}: skipped: {str(error).splitlines()[0]}")
        return None


def per_call_latency(device, reps):
    """Microseconds per LayerNorm call on (1, 1, 768), 25 calls in a row (one GPT-2 decode step)."""
    C, calls = 768, 25
    x = torch.randn(1, 1, C, device=device)
    residual = torch.randn(1, 1, C, device=device)
    weight = torch.randn(C, device=device, requires_grad=True)
    bias = torch.randn(C, device=device, requires_grad=True)
    ops = torch.ops.toykernels
    variants = {
        "layer_norm": {
            "toykernels": lambda: toykernels.layer_norm(x, weight, bias),
            "custom_op": lambda: ops.layer_norm_forward(x, weight, bias, 1e-5)[0],
            "torch": lambda: F.layer_norm(x, (C,), weight, bias),
        },
        "add_layer_norm": {
            "toykernels": lambda: toykernels.add_layer_norm(x, residual, weight, bias),
            "custom_op": lambda: ops.add_layer_norm_forward(x, residual, weight, bias, 1e-5)[:2],
            "torch": lambda: F.layer_norm(x + residual, (C,), weight, bias),
        },
    }

    def median_us(fn):
        def step():
            for _ in range(calls):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()

        step()  # warm-up (and a first-call build)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) / calls * 1e6

    print(f"# per call, {calls} calls on (1, 1, {C}) fp32 on {device}: microseconds (median of {reps})")
    for grad in (False, True):
        for op, providers in variants.items():
            with torch.set_grad_enabled(grad):
                us = {name: median_us(fn) for name, fn in providers.items()}
            mode = "with grad" if grad else "no grad  "
            print(f"{op:15s} {mode} " + "  ".join(f"{name} {t:7.1f}" for name, t in us.items())
                  + f"   custom_op / toykernels {us['custom_op'] / us['toykernels']:5.1f}x"
                  + f"   toykernels / torch {us['toykernels'] / us['torch']:4.1f}x")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=[*sorted(DTYPES), "all"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--csv", type=Path, default=RESULTS / "layernorm.csv")
    parser.add_argument("--no-csv", action="store_true", help="print only, append nothing")
    parser.add_argument("--per-call", action="store_true", help="time 25 small calls instead (see above)")
    parser.add_argument("--shapes", help="comma-separated NxC, e.g. 32768x4096 (default: the sweep, or --quick's)")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma-separated subset of {','.join(PROVIDERS)}")
    args = parser.parse_args(argv)
    shapes_given = parse_shapes(PROG, args.shapes, "NxC", "32768x4096") if args.shapes else None
    providers_given = parse_names(PROG, "--providers", args.providers, PROVIDERS)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_layernorm: --device cuda but no CUDA device is visible")
    if args.per_call:
        per_call_latency(args.device, max(args.reps, 200))
        return
    dtypes = list(DTYPES.values()) if args.dtype == "all" else [DTYPES[args.dtype]]
    if args.device == "cpu":
        shapes, reps = [(256, 768), (64, 1600)], 3
    else:
        shapes, reps = ([(8192, 768), (32768, 4096)] if args.quick else SHAPES), args.reps
    shapes = shapes_given or shapes

    timer = Timer(args.device, reps)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    copy_gbps = copy_bandwidth(args.device, timer)
    meta = run_meta(gpu=gpu)
    print(f"# {gpu}, torch {torch.__version__}, commit {meta['commit']}, copy bandwidth {copy_gbps:.0f} GB/s")
    providers = make_providers(providers_given)

    records, summary = [], []
    for dtype in dtypes:
        dname = str(dtype).removeprefix("torch.")
        for N, C in shapes:
            print(f"{dname} {N}x{C}")
            results = {}
            for provider, fn in providers.items():
                ms = bench_shape(provider, fn, N, C, dtype, args.device, timer)
                if ms is None:
                    continue
                results[provider] = ms
                for mode in MODES:
                    gbps = bytes_moved(N, C, dtype.itemsize, mode) / (ms[mode] * 1e-3) / 1e9
                    share = gbps / copy_gbps
                    records.append({**meta, "dtype": dname, "rows": N, "C": C, "provider": provider,
                                    "mode": mode, "ms": f"{ms[mode]:.4f}", "gbps": f"{gbps:.1f}",
                                    "copy_gbps": f"{copy_gbps:.1f}", "share_of_copy": f"{share:.3f}"})  # fmt: skip
                    print(f"  {provider:13s} {mode:8s} {ms[mode]:9.4f} ms {gbps:8.1f} GB/s {share:6.1%} of copy")
            if "toykernels" not in results:
                continue
            for mode in MODES:
                mine = results["toykernels"][mode]
                gbps = bytes_moved(N, C, dtype.itemsize, mode) / (mine * 1e-3) / 1e9
                vs_torch = results["torch"][mode] / mine if "torch" in results else float("nan")
                vs_compile = results["torch_compile"][mode] / mine if "torch_compile" in results else float("nan")
                verdict = ""
                if dtype == torch.bfloat16 and (N, C) in GOAL_SHAPES and mode in GOALS:
                    share_goal, speedup_goal = GOALS[mode]
                    met = gbps / copy_gbps >= share_goal and vs_torch >= speedup_goal
                    verdict = "goal met" if met else f"goal missed (>= {share_goal:.0%}, >= {speedup_goal}x)"
                summary.append(f"{dname:9s} {N:>6}x{C:<5} {mode:8s} {gbps:8.1f} GB/s {gbps / copy_gbps:6.1%}"
                               f"  {vs_torch:5.2f}x torch  {vs_compile:5.2f}x compile  {verdict}")  # fmt: skip

    if records and not args.no_csv:
        append_csv(args.csv, records, note="\n")
    print("\n" + toykernels.backend_info(args.device))
    print(f"\n# toykernels LayerNorm on {gpu}: GB/s, share of copy bandwidth ({copy_gbps:.0f} GB/s), speed-ups")
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
