"""Benchmark: one training step of a GPT-2 of mygpt-char's sizes, toygrad.tensor vs torch.autograd.

Providers (same weights, same batch, measured in the same run, interleaved step by step so
that load from other processes hits all alike):
  toygrad  toygrad.tensor.nn.GPT: toygrad's own backward rules, toykernels' raw LayerNorm and
           attention functions (fused CUDA kernels on a GPU, ATen's CPU kernels on a CPU),
           toygrad's AdamW
  torch    tools/plain_gpt.py's PlainGPT: the same model in torch.nn with torch's own fused ops
           (nn.LayerNorm, F.scaled_dot_product_attention), torch.autograd, torch.optim.AdamW
  toygpt   toygpt.model.GPT (when installed): toykernels' public ops (the LayerNorm and attention
           kernels toygrad runs, under torch.autograd), its AdamW. The ratio to it measures the
           autodiff engines on the same kernels. (An earlier `torch+tk` provider wrapped the raw
           kernels in autograd Functions of its own, a second copy of toykernels' registrations.)
Modes: fwd+bwd (forward, loss, backward) and full (fwd+bwd + optimizer step).
Before timing, the losses and all gradients are checked to agree.
Prints medians and the ratio of toygrad to each other provider, and appends rows to
benchmarks/results/toygrad_tensor.csv.

    python tools/bench_toygrad_tensor.py                 # GPU in bfloat16 if there is one, else CPU fp32
    python tools/bench_toygrad_tensor.py --device cpu --threads 1 --components

NOTE: on a CPU shared with other busy processes, torch's intra-op threads spin-wait for each
other and every op can slow down 10-100x at random; `--threads 1` gives steadier figures there.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch
from benchlib import append_csv, git_commit
from plain_gpt import PlainGPT
from toygrad.tensor.nn import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]


def build(args, dtype):
    """{provider: (model, optimizer)}, all with the same initial weights."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.block_size, vocab_size=65, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    toy = GPT(config).to(device=args.device, dtype=dtype)
    models = {"toygrad": (toy, toy.configure_optimizers(0.1, 1e-3, betas=(0.9, 0.99)))}
    ref = PlainGPT(config).to(device=args.device, dtype=dtype)
    ref.load_state_dict(toy.state_dict())
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    rest = [p for p in ref.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    models["torch"] = (ref, torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99)))
    try:  # toygpt's own GPT, also on toykernels, when it is installed
        from toygpt.model import GPT as ToyGPT
        from toygpt.model import GPTConfig as ToyGPTConfig
    except ImportError:
        return models
    tg = ToyGPT(ToyGPTConfig(**vars(config))).to(device=args.device, dtype=dtype)
    tg.load_state_dict({k: v for k, v in toy.state_dict().items()}, strict=False)
    models["toygpt"] = (tg, tg.configure_optimizers(0.1, 1e-3, (0.9, 0.99), args.device))
    return models


def check(toy, ref, x, y, dtype):
    """The two providers must compute the same thing before their speed means anything."""
    _, loss = toy(x, y)
    loss.backward()
    _, ref_loss = ref(x, y)
    ref_loss.backward()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert abs(loss.item() - ref_loss.item()) <= tol * abs(ref_loss.item()), (loss.item(), ref_loss.item())
    ref_params = dict(ref.named_parameters())
    worst = 0.0
    for name, p in toy.named_parameters():
        r = ref_params[name].grad.float()
        err = (p.grad.float() - r).abs().max().item() / max(r.abs().max().item(), 1e-12)
        worst = max(worst, err)
    assert worst <= (1e-3 if dtype == torch.float32 else 0.1), f"gradients differ: max rel err {worst:.2e}"
    toy.zero_grad()
    ref.zero_grad(set_to_none=True)
    return worst


def components(args, dtype, sync):
    """Where the toygrad / torch gap comes from: the LayerNorm and attention that toygrad runs
    (toykernels' raw forward + backward) against torch's own ops under torch.autograd, at the
    model's shapes, per call (medians). Printed only, not written to the CSV."""
    import toykernels.attention as tka
    import toykernels.layernorm as tkl

    B, T, C, H = args.batch_size, args.block_size, args.n_embd, args.n_head
    kw = dict(device=args.device, dtype=dtype)
    x, w, b, dy = (torch.randn(B, T, C, **kw), torch.ones(C, **kw), torch.zeros(C, **kw), torch.randn(B, T, C, **kw))
    q, k, v, do = (torch.randn(B, H, T, C // H, **kw) for _ in range(4))
    scale = (C // H) ** -0.5

    def tk_ln():
        _, mean, rstd = tkl.layer_norm_forward(x, w, b, 1e-5)
        tkl.layer_norm_backward(dy, x, w, mean, rstd, True)

    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))

    def torch_ln():
        torch.nn.functional.layer_norm(xr, (C,), wr, br, 1e-5).backward(dy)

    def tk_attn():
        out, lse = tka.attention_forward(q, k, v, scale)
        tka.attention_backward(do, q, k, v, out, lse, scale)

    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))

    def torch_attn():
        torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, is_causal=True).backward(do)

    print(f"{'component (fwd+bwd, one call)':32s} {'toykernels ms':>14s} {'torch ms':>9s} {'ratio':>6s}")
    for name, fa, fb in (("layer_norm", tk_ln, torch_ln), ("attention", tk_attn, torch_attn)):
        times = {fa: [], fb: []}
        for i in range(args.warmup + args.iters):
            for fn in (fa, fb):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                if i >= args.warmup:
                    times[fn].append(1000 * (time.perf_counter() - t0))
        ta, tb = statistics.median(times[fa]), statistics.median(times[fb])
        print(f"{name:32s} {ta:14.3f} {tb:9.3f} {ta / tb:6.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                        help="default: cuda when available (bfloat16), else cpu (float32)")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads on the CPU (default: torch's, one per core)")
    parser.add_argument("--components", action="store_true",
                        help="also time LayerNorm and attention alone: toykernels' raw fwd+bwd vs torch's ops")
    parser.add_argument("--csv", default=str(REPO / "benchmarks" / "results" / "toygrad_tensor.csv"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_toygrad_tensor: --device cuda but no CUDA device is visible")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]

    models = build(args, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 65, (args.batch_size, args.block_size), generator=g).to(args.device)
    y = torch.randint(0, 65, (args.batch_size, args.block_size), generator=g).to(args.device)
    toy = models["toygrad"][0]
    worst = max(check(toy, models[name][0], x, y, dtype) for name in models if name != "toygrad")

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def make_step(model, opt):
        def step(full):
            _, loss = model(x, y)
            opt.zero_grad()  # set_to_none, for toygrad and torch alike
            loss.backward()
            if full:
                opt.step()
        return step

    providers = {name: make_step(m, o) for name, (m, o) in models.items()}
    results = {}
    load = os.getloadavg()[0]
    for mode, full in (("fwd+bwd", False), ("full", True)):
        times = {name: [] for name in providers}
        for i in range(args.warmup + args.iters):
            for name, fn in providers.items():  # interleaved: noise hits all providers alike
                sync()
                t0 = time.perf_counter()
                fn(full)
                sync()
                if i >= args.warmup:
                    times[name].append(1000 * (time.perf_counter() - t0))
        for name in providers:
            results[(mode, name)] = statistics.median(times[name])
    load = max(load, os.getloadavg()[0])

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    shape = f"B{args.batch_size} T{args.block_size} C{args.n_embd} H{args.n_head} L{args.n_layer}"
    print(f"# toygrad.tensor training step: {device_name}, {dtype_name}, {shape}, torch {torch.__version__}, load {load:.2f}; "
          f"max grad rel err vs torch {worst:.1e}")
    others = [name for name in models if name != "toygrad"]
    print(f"{'mode':8s} {'toygrad ms':>11s} " + " ".join(f"{n + ' ms':>11s} {'ratio':>6s}" for n in others)
          + "   (ratio = toygrad / that provider)")
    rows = []
    commit = git_commit(default="")
    for mode in ("fwd+bwd", "full"):
        t = results[(mode, "toygrad")]
        print(f"{mode:8s} {t:11.2f} " + " ".join(
            f"{results[(mode, n)]:11.2f} {t / results[(mode, n)]:6.2f}" for n in others))
        for n in others:
            r = results[(mode, n)]
            rows.append({
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "commit": commit, "device": device_name, "torch": torch.__version__, "dtype": dtype_name,
                "shape": shape, "mode": mode, "baseline": n, "toygrad_ms": f"{t:.3f}",
                "baseline_ms": f"{r:.3f}", "ratio": f"{t / r:.3f}", "iters": args.iters, "load1": f"{load:.2f}",
            })
    if args.components:
        components(args, dtype, sync)
    append_csv(args.csv, rows)


if __name__ == "__main__":
    main()
