"""Training speed: toygpt's GPT and trainer against a plain PyTorch GPT (and GPU quality).

Three modes, one question each (the CPU quality of the presets against the code they are named
after, side by side, is tools/bench_quality.py's):

1. CPU step time (the default). nanoGPT's CPU recipe shape (4 layers, 4 heads, 128 channels,
   context 64, batch 12, dropout 0, no biases, vocab 65): one training step (forward, backward,
   AdamW step) of toygpt's GPT against `PlainGPT` (tools/plain_gpt.py), the same model written with nn.LayerNorm
   and F.scaled_dot_product_attention(is_causal=True), holding the same weights. The losses and
   gradients of the two are checked to agree before anything is timed. Rounds of --steps steps
   alternate between the two (in alternating order), so a load that comes and goes on a shared
   machine hits both alike; reported are the median step times and the median of the per-round
   ratios toygpt / plain (goal <= 1.0). Each model steps with its own configure_optimizers:
   toygpt's AdamW is fused on CPU too, the plain model's (nanoGPT's) only on CUDA; a third row,
   toygpt's model with the plain model's AdamW, shows the model's own share.

2. GPU speed (`--device cuda`): GPT-2 124M, batch 16 x 1024 tokens, bf16 autocast, fused AdamW:
   tokens/s and MFU (model FLOPs from train.flops_per_token, peak from train.PEAK_FLOPS; goal
   MFU >= 40%), for toygpt and the plain model, into benchmarks/results/train.csv. The step here
   is the model's alone; the trainer adds a loss .item() per step and the batch copies.

3. GPU quality (`--device cuda --quality`): the `shakespeare-char` preset (nanoGPT's baby GPT,
   5000 iterations): val loss (goal <= 1.47, nanoGPT's A100 figure) and wall time, into train.csv.

Every CSV row carries the device, torch version, date and git commit. CPU step times, which
depend on what else the machine runs, are printed only (or appended to --csv PATH).

    python tools/bench_train.py                          # CPU step time, toygpt vs plain
    python tools/bench_train.py --device cuda            # GPT-2 124M tokens/s and MFU
    python tools/bench_train.py --device cuda --quality  # shakespeare-char on a GPU
    python tools/bench_train.py --smoke                  # a quick test of this script
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from benchlib import git_commit
from plain_gpt import PlainGPT
from toygpt import GPT, GPTConfig
from toygpt.config import make_config
from toygpt.metrics import flops_per_token, peak_flops
from toygpt.train import train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

SHAKESPEARE_CHAR_VAL_GOAL = 1.47  # nanoGPT's README, on an A100
MFU_GOAL = 0.40
MODEL_ONLY = "toygpt, plain's AdamW"  # the CPU step-time row that isolates the model

FIELDS = ["date", "commit", "torch", "device", "threads", "benchmark", "provider", "shape", "steps",
          "step_ms", "tokens_per_s", "mfu", "ratio_vs_plain", "train_loss", "val_loss", "wall_s",
          "goal", "met"]


def make_pair(config: GPTConfig, device: str, seed: int):
    """toygpt's GPT and PlainGPT holding the same (GPT-2-initialized) weights."""
    torch.manual_seed(seed)
    toy = GPT(config).to(device)
    plain = PlainGPT(config).to(device)
    missing, unexpected = plain.load_state_dict(toy.state_dict(), strict=False)
    if missing or unexpected:  # lm_head.weight is tied: it is in both, so nothing may differ
        raise SystemExit(f"bench_train: state_dict keys differ: missing {missing}, unexpected {unexpected}")
    return {"toygpt": toy, "plain": plain}


# ----------------------------------------------------------------------------------------------
# helpers


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a CSV with the FIELDS columns (written with a header when new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != FIELDS:
            raise SystemExit(f"bench_train: {path} has columns {header}, expected {FIELDS}; "
                             "move it aside or pass another --csv")
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows([{k: row.get(k, "") for k in FIELDS} for row in rows])
    print(f"appended {len(rows)} row(s) to {path}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def random_batches(n: int, batch_size: int, block_size: int, vocab_size: int, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, vocab_size, (n, batch_size, block_size + 1), generator=g)  # (n, B, T + 1)
    return [(s[:, :-1].contiguous().to(device), s[:, 1:].contiguous().to(device)) for s in seq]


def check_agreement(models: dict, x, y, autocast, atol: float, grad_rtol: float) -> float:
    """Loss and every gradient of the two models agree on one batch; returns the loss difference."""
    grads, losses = {}, {}
    for name, model in models.items():
        model.zero_grad(set_to_none=True)
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad.float() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    diff = abs(losses["toygpt"] - losses["plain"])
    if diff > atol:
        raise SystemExit(f"bench_train: losses differ: toygpt {losses['toygpt']:.6f}, plain "
                         f"{losses['plain']:.6f}; not timing models that compute different things")
    for n, g in grads["toygpt"].items():
        ref = grads["plain"][n]
        rel = ((g - ref).norm() / ref.norm().clamp_min(1e-30)).item()  # relative error, in norm
        if rel > grad_rtol:
            raise SystemExit(f"bench_train: the gradients of {n} differ (relative error {rel:.2e} > "
                             f"{grad_rtol:g}); not timing models that compute different things")
    return diff


def make_step(model, optimizer, batches, autocast, grad_clip: float = 1.0):
    """One training step as the trainer takes it: forward, backward, clip, AdamW step, zero."""
    it = iter(range(10**9))

    def step():
        x, y = batches[next(it) % len(batches)]
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def interleaved_step_times(steps: dict, device: str, warmup: int, rounds: int, per_round: int):
    """{provider: [seconds per step, one per round]}: rounds alternate between the providers
    (and their order), each timing `per_round` steps after `warmup` untimed ones."""
    for step in steps.values():
        for _ in range(warmup):
            step()
        sync(device)
    times = {name: [] for name in steps}
    order = list(steps)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                loss = steps[name]()
            loss.item()  # waits for the last step, as the trainer's per-step .item() does
            sync(device)
            times[name].append((time.perf_counter() - t0) / per_round)
    return times


# ----------------------------------------------------------------------------------------------
# 1 and 3: step time


def bench_speed(args, meta: dict) -> list[dict]:
    device = args.device
    cuda = device.startswith("cuda")
    if cuda:  # GPT-2 124M, batch 16 x 1024, bf16
        config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                           dropout=0.0, bias=True)
        batch_size, benchmark = 16, "gpt2-124m-step"
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = lambda: torch.autocast("cuda", dtype=dtype)
        atol, grad_rtol = 2e-2, 5e-2  # bf16: the two models round differently
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:  # nanoGPT's CPU recipe shape
        config = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                           bias=False)
        batch_size, benchmark, dtype = 12, "nanogpt-cpu-step", torch.float32
        autocast = nullcontext
        atol, grad_rtol = 1e-5, 1e-4
    shape = (f"L{config.n_layer} H{config.n_head} C{config.n_embd} T{config.block_size} "
             f"B{batch_size} V{config.vocab_size} bias={config.bias} {str(dtype).removeprefix('torch.')}")
    print(f"# step time on {meta['device']} ({meta['threads']} threads), torch {meta['torch']}, "
          f"commit {meta['commit']}: {shape}")
    models = make_pair(config, device, args.seed)
    batches = random_batches(8, batch_size, config.block_size, config.vocab_size, device, args.seed)
    diff = check_agreement(models, *batches[0], autocast, atol, grad_rtol)
    print(f"  losses agree before timing: |toygpt - plain| = {diff:.2e} (tolerance {atol:g}), and "
          f"every gradient within {grad_rtol:g} relative error")
    steps = {}
    device_type = "cuda" if cuda else "cpu"
    for name, model in models.items():
        model.train()
        if args.compile:
            model = torch.compile(model)
        opt = models[name].configure_optimizers(0.1, 1e-3, (0.9, 0.99), device_type)
        steps[name] = make_step(model, opt, batches, autocast)
    if not cuda:
        # toygpt's model with the plain model's optimizer (nanoGPT's: fused on CUDA only): the
        # model's share of the difference, apart from toygpt's fused AdamW on CPU
        model = models["toygpt"]
        opt = PlainGPT.configure_optimizers(model, 0.1, 1e-3, (0.9, 0.99), device_type)
        steps[MODEL_ONLY] = make_step(torch.compile(model) if args.compile else model, opt, batches, autocast)
    per_round = args.steps or (10 if cuda else 5)
    times = interleaved_step_times(steps, device, args.warmup, args.rounds, per_round)
    tokens = batch_size * config.block_size
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = statistics.median(a / b for a, b in zip(times["toygpt"], times["plain"]))
    flops = flops_per_token(models["toygpt"], config.block_size)
    peak = peak_flops(device)  # None on a CPU, or for a GPU missing from train.PEAK_FLOPS
    rows = []
    for name in times:
        tok_s = tokens / med[name]
        mfu = flops * tok_s / peak if peak else None
        line = f"  {name:7s} {1e3 * med[name]:8.2f} ms/step  {tok_s:12,.0f} tokens/s"
        if mfu is not None:
            line += f"  MFU {100 * mfu:5.1f}%"
        print(line)
        rows.append({**meta, "benchmark": benchmark, "provider": name, "shape": shape,
                     "steps": args.rounds * per_round, "step_ms": f"{1e3 * med[name]:.3f}",
                     "tokens_per_s": f"{tok_s:.0f}", "mfu": "" if mfu is None else f"{mfu:.4f}",
                     "ratio_vs_plain": f"{statistics.median(a / b for a, b in zip(times[name], times['plain'])):.3f}"})
    if cuda:
        mfu = flops * tokens / med["toygpt"] / peak if peak else None
        verdict = ("no peak FLOP/s known for this GPU (train.PEAK_FLOPS)" if mfu is None else
                   f"MFU {100 * mfu:.1f}% (goal >= {100 * MFU_GOAL:.0f}%): "
                   + ("met" if mfu >= MFU_GOAL else "missed"))
        rows[0].update(goal=f"mfu >= {MFU_GOAL}", met="" if mfu is None else mfu >= MFU_GOAL)
        print(f"toygpt / plain step time {ratio:.3f} (median of {args.rounds} paired rounds); {verdict}")
    else:
        rows[0].update(goal="ratio <= 1.0", met=ratio <= 1.0)
        print(f"toygpt / plain step time: {ratio:.3f} (median of {args.rounds} paired rounds of "
              f"{per_round} steps; goal <= 1.0: {'met' if ratio <= 1.0 else 'missed'})")
        model_ratio = statistics.median(a / b for a, b in zip(times[MODEL_ONLY], times["plain"]))
        print(f"  of which the model: {MODEL_ONLY} / plain {model_ratio:.3f} (both with the for-loop "
              "AdamW; toygpt's own step uses torch's fused AdamW on CPU, nanoGPT's only on CUDA)")
    return rows


# ----------------------------------------------------------------------------------------------
# 3: quality on a GPU


def prepare_char(text_path: Path, out_dir: Path) -> Path:
    """`toygpt prepare --input FILE --tokenizer char --out DIR`, through the CLI."""
    from toygpt import cli

    code = cli.main(["prepare", "--input", str(text_path), "--tokenizer", "char", "--out", str(out_dir)])
    if code != 0:
        raise SystemExit(f"bench_train: toygpt prepare failed on {text_path} (exit {code})")
    return out_dir


def eval_loss(model, batches, split: str, n_batches: int, block_size: int, device: str, autocast) -> float:
    """Mean loss over n_batches fixed batches of `split` (the trainer's own evaluation batches)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = []
        for k in range(n_batches):
            x, y = batches.eval_batch(split, k, block_size, device)
            with autocast():
                losses.append(model(x, y)[1].item())
    model.train(was_training)
    return sum(losses) / len(losses)


def quality_row(meta: dict, benchmark: str, shape: str, result: dict, train_loss: float,
                val_loss: float, wall: float, goal: str, met: bool) -> dict:
    """One CSV row of a quality run."""
    return {**meta, "benchmark": benchmark, "provider": "toygpt train", "shape": shape,
            "steps": len(result["losses"]), "train_loss": f"{train_loss:.4f}",
            "val_loss": f"{val_loss:.4f}", "wall_s": f"{wall:.1f}", "goal": goal, "met": met}


def quality_run(name: str, data_dir: Path, out_dir: Path, preset: str, settings: dict, eval_batches: int,
                device: str):
    """Train with toygpt's trainer; returns (result, wall seconds, train loss, val loss), where
    the losses are evaluated afresh over `eval_batches` batches per split."""
    from toygpt.batches import TokenBatches

    cfg = make_config(preset, data=str(data_dir), out=str(out_dir / name), overwrite=True, device=device,
                      sample_tokens=0, progress=sys.stderr.isatty(), **settings)
    schedule = f"decayed to {cfg.min_lr:g}" if cfg.decay_lr else "constant"
    print(f"\n# {name}: preset {preset}, {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} channels, "
          f"context {cfg.block_size}, batch {cfg.batch_size}, {cfg.max_iters} iterations, lr "
          f"{cfg.learning_rate:g} {schedule}, dropout {cfg.dropout}, on {device}", flush=True)
    t0 = time.perf_counter()
    result = train(cfg)
    sync(device)
    wall = time.perf_counter() - t0
    batches = TokenBatches(data_dir, cfg)
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = lambda: torch.autocast("cuda", dtype=dtype)
    else:
        autocast = nullcontext
    block = result["model"].config.block_size
    train_loss = eval_loss(result["model"], batches, "train", eval_batches, block, device, autocast)
    val_loss = eval_loss(result["model"], batches, "val", eval_batches, block, device, autocast)
    return result, wall, train_loss, val_loss


def bench_quality(args, meta: dict) -> list[dict]:
    text = Path(args.input)
    if not text.is_file():
        raise SystemExit(f"bench_train: Tiny Shakespeare not found at {text}; pass --input FILE "
                         "(e.g. a copy of karpathy/char-rnn's data/tinyshakespeare/input.txt)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data_dir = prepare_char(text, Path(tmp) / "data")
        runs = Path(tmp) / "runs"
        result, wall, tr, va = quality_run("shakespeare-char", data_dir, runs, "shakespeare-char",
                                           {"compile": args.compile, "seed": args.seed,
                                            **(dict(max_iters=20, eval_interval=20) if args.smoke else {})},
                                           args.eval_batches, args.device)
        met = va <= SHAKESPEARE_CHAR_VAL_GOAL
        print(f"shakespeare-char: val loss {va:.4f} over {args.eval_batches} batches (goal <= "
              f"{SHAKESPEARE_CHAR_VAL_GOAL}: {'met' if met else 'missed'}), train loss {tr:.4f}, "
              f"{wall:.0f} s wall")
        rows.append(quality_row(meta, "shakespeare-char-quality", "preset shakespeare-char", result,
                                tr, va, wall, f"val <= {SHAKESPEARE_CHAR_VAL_GOAL}", met))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quality", action="store_true", help="with --device cuda: train shakespeare-char on "
                        "Tiny Shakespeare and report losses (CPU quality: tools/bench_quality.py)")
    parser.add_argument("--input", default=str(SHAKESPEARE), help="Tiny Shakespeare text for --quality")
    parser.add_argument("--eval-batches", type=int, default=200,
                        help="batches per split in the final loss estimates of --quality")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per provider")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: 5 CPU, 10 GPU)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per provider first")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both models (speed), or the trained model (GPU quality)")
    parser.add_argument("--seed", type=int, default=1337,
                        help="weights and batches of the timed models, and of the quality runs")
    parser.add_argument("--smoke", action="store_true",
                        help="a test of this script: 20 iterations per quality run, 2 rounds of 2 steps, no CSV")
    parser.add_argument("--csv", type=Path, default=None,
                        help="CSV to append to (default: benchmarks/results/train.csv on a GPU, "
                             "CPU step times: only with --csv)")
    parser.add_argument("--no-csv", action="store_true", help="print only, append nothing")
    args = parser.parse_args(argv)
    if args.quality and not args.device.startswith("cuda") and not args.smoke:
        raise SystemExit("bench_train: --quality is the GPU run (--device cuda); the presets' CPU quality against "
                         "the code they are named after is tools/bench_quality.py")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench_train: --device {args.device} but no CUDA device is visible")
    for name in ("rounds", "warmup", "eval_batches", "threads"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise SystemExit(f"bench_train: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.smoke:
        args.rounds, args.steps, args.warmup, args.no_csv = 2, 2, 1, True
        args.eval_batches = min(args.eval_batches, 4)
    torch.set_num_threads(args.threads)
    meta = {"date": datetime.date.today().isoformat(), "commit": git_commit(), "torch": torch.__version__,
            "device": device_name(args.device), "threads": args.threads}
    rows = bench_quality(args, meta) if args.quality else bench_speed(args, meta)
    csv_path = args.csv
    if csv_path is None and args.device.startswith("cuda"):
        csv_path = RESULTS / "train.csv"
    if csv_path is not None and not args.no_csv:
        append_rows(csv_path, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
