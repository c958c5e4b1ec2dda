"""Benchmark causal attention: toykernels vs naive PyTorch vs scaled_dot_product_attention.

Modes: forward, backward, forward+backward, in TFLOP/s from written-down FLOP counts:
    forward  = 4 * B * H * T^2 * D / 2   (two matmuls of 2*T*T*D FLOPs each, halved: causal)
    backward = 2.5 * forward             (five matmuls instead of two)
and peak memory of one forward+backward. Before anything is timed, every provider's output is
checked against naive attention in float64 on a slice (batch 0, two heads, the first and the last
128 queries; the last ones with the bottom-right mask over all keys). Timings are medians of CUDA-event intervals with the L2
cache flushed (a memset of a buffer larger than L2) before each repetition.
Rows are appended to benchmarks/results/attention.csv with GPU, torch version, date and commit.

    python tools/bench_attention.py                   # full sweep, bf16, on the GPU
    python tools/bench_attention.py --quick           # two small shapes
    python tools/bench_attention.py --device cpu --quick --no-csv   # a smoke test of this script
    python tools/bench_attention.py --shapes 16x12x1024x64,4x12x4096x64 \
        --providers toykernels,sdpa_flash,sdpa_cudnn   # against SDPA's flash and cuDNN backends
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import toykernels
from benchlib import RESULTS, Timer, append_csv, parse_names, parse_shapes, run_meta
from toykernels.reference import causal_attention_ref, causal_mask

PROG = "bench_attention"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwd+bwd")


def naive_attention(q, k, v):
    """matmul, mask, softmax, matmul: the (T, T) matrix is materialised."""
    att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Tq, Tk)
    att = att.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device), float("-inf"))
    return torch.softmax(att, dim=-1) @ v  # (B, H, Tq, D)


def sdpa_default(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # Tq == Tk here


def sdpa_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


PROVIDERS = {
    "toykernels": toykernels.causal_attention,
    "naive": naive_attention,
    "sdpa_default": sdpa_default,
    "sdpa_flash": sdpa_flash,
    "sdpa_cudnn": sdpa_cudnn,
}
DEFAULT_PROVIDERS = ("toykernels", "naive", "sdpa_default", "sdpa_flash")
SDPA_PROVIDERS = ("sdpa_default", "sdpa_flash", "sdpa_cudnn")


def flops(B, H, T, D, mode):
    forward = 4 * B * H * T * T * D / 2
    return {"fwd": forward, "bwd": 2.5 * forward, "fwd+bwd": 3.5 * forward}[mode]


CHECK_ROWS = 128  # queries at each end of the sequence checked against float64
TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 1e-4}  # max abs error


def reference_slices(q, k, v):
    """float64 outputs for batch 0, heads 0-1: the first CHECK_ROWS queries (over their keys)
    and the last CHECK_ROWS (over all keys, bottom-right mask). Small enough for any T."""
    r = min(CHECK_ROWS, q.shape[-2])
    q64, k64, v64 = (t[:1, :2].detach().double() for t in (q, k, v))
    first = causal_attention_ref(q64[:, :, :r], k64[:, :, :r], v64[:, :, :r])
    last = causal_attention_ref(q64[:, :, -r:], k64, v64)
    return first, last


def check_output(provider, out, refs, dtype):
    r = refs[0].shape[-2]
    for name, got, want in (("first rows", out[:1, :2, :r], refs[0]), ("last rows", out[:1, :2, -r:], refs[1])):
        err = (got.double() - want).abs().max().item()
        if not err <= TOLERANCE[dtype]:
            raise AssertionError(f"{provider}: {name}: max error {err:.3g} vs float64 > {TOLERANCE[dtype]}")


def bench_shape(provider, fn, B, H, T, D, dtype, device, timer):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    dout = torch.randn(B, H, T, D, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            check_output(provider, fn(q, k, v), reference_slices(q, k, v), dtype)  # before timing
        rows = {}
        with torch.no_grad():
            rows["fwd"] = timer(lambda: fn(q, k, v))
        graph_out = fn(q, k, v)  # one forward graph, its backward timed again and again
        rows["bwd"] = timer(lambda: torch.autograd.grad(graph_out, (q, k, v), dout, retain_graph=True))
        rows["fwd+bwd"] = timer(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dout))
        graph_out = None  # frees the saved tensors before the memory measurement
        peak = float("nan")
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            torch.autograd.grad(fn(q, k, v), (q, k, v), dout)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        return rows, peak
    except (RuntimeError, AssertionError) as error:  # OOM, no flash kernel for this dtype, ...
        print(f"  {provider:13s} B={B} H={H} T={T} D={D}: skipped: {str(error).splitlines()[0]}")
        if device == "cuda":
            torch.cuda.empty_cache()
        return None, None


def shapes(quick, device):
    if quick or device == "cpu":
        return [(2, 4, 256, 64), (1, 4, 512, 128)] if device == "cpu" else [(16, 12, 1024, 64), (4, 12, 4096, 64)]
    out = [(16, 12, 1024, 64)]  # GPT-2 small
    for D in (64, 128):
        for T in (512, 1024, 2048, 4096, 8192, 16384):
            out.append((16384 // T, 12 if D == 64 else 6, T, D))  # 16k tokens per batch
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--csv", type=Path, default=RESULTS / "attention.csv")
    parser.add_argument("--no-csv", action="store_true", help="print only, append nothing")
    parser.add_argument("--shapes", help="comma-separated BxHxTxD, e.g. 16x12x1024x64 (default: the sweep, or --quick's)")
    parser.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS),
                        help=f"comma-separated subset of {','.join(PROVIDERS)}")
    args = parser.parse_args(argv)
    shapes_given = parse_shapes(PROG, args.shapes, "BxHxTxD", "16x12x1024x64") if args.shapes else None
    providers = {name: PROVIDERS[name] for name in parse_names(PROG, "--providers", args.providers, PROVIDERS)}
    dtype = DTYPES[args.dtype]
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_attention: --device cuda but no CUDA device is visible")
    if args.device == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU bf16 matmuls measure nothing useful
    timer = Timer(args.device, args.reps if args.device == "cuda" else 3)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    meta = {**run_meta(gpu=gpu), "dtype": str(dtype).removeprefix("torch.")}
    print(f"# {gpu}, torch {torch.__version__}, {meta['dtype']}, commit {meta['commit']}")
    print(toykernels.backend_info(args.device))

    records, summary = [], []
    for B, H, T, D in shapes_given or shapes(args.quick, args.device):
        print(f"B={B} H={H} T={T} D={D}")
        results = {}
        for provider, fn in providers.items():
            rows, peak = bench_shape(provider, fn, B, H, T, D, dtype, args.device, timer)
            if rows is None:
                continue
            results[provider] = rows
            for mode in MODES:
                tflops = flops(B, H, T, D, mode) / (rows[mode] * 1e-3) / 1e12
                records.append({**meta, "B": B, "H": H, "T": T, "D": D, "provider": provider, "mode": mode,
                                "ms": f"{rows[mode]:.4f}", "tflops": f"{tflops:.2f}", "peak_mem_mib": f"{peak:.1f}"})
                print(f"  {provider:13s} {mode:8s} {rows[mode]:9.3f} ms {tflops:8.2f} TFLOP/s  peak {peak:9.1f} MiB")
        if "toykernels" in results:
            sdpa = [p for p in SDPA_PROVIDERS if p in results]
            for mode in MODES:
                line = f"  ratio {mode:8s}"
                if sdpa:
                    best = min(results[p][mode] for p in sdpa)
                    line += f" toykernels/fastest-sdpa {best / results['toykernels'][mode]:.2f}x"
                if "naive" in results:
                    line += f"  toykernels/naive {results['naive'][mode] / results['toykernels'][mode]:.2f}x"
                print(line)
                summary.append((B, H, T, D, line.strip()))

    if records and not args.no_csv:
        append_csv(args.csv, records)
    print("# summary (speed ratio > 1 means toykernels is faster)")
    for B, H, T, D, line in summary:
        print(f"B={B} H={H} T={T} D={D}: {line}")


if __name__ == "__main__":
    main()
