"""From a bigram to GPT-2 in measured steps: the ladder of docs/gpt.md.

Eight character-level models on Tiny Shakespeare, each one idea more than the last, in the order
of karpathy's "Let's build GPT" lecture (its gpt.py grows the same way):

    1 bigram            a (vocab, vocab) table of next-character logits (toygpt.bigram)
    2 bag of words      + token and position embeddings, each position the mean of its past
    3 one head          the mean replaced by one head of self-attention (head size 32)
    4 multi-head        4 heads of size 8, side by side
    5 feed-forward      + a per-position MLP after the attention
    6 residual          3 blocks, each x + sa(x), x + ffwd(x), with projections and a 4x MLP
    7 layernorm         + LayerNorm before each sublayer and at the end (pre-norm, as GPT-2)
    8 shakespeare-char  toygpt's GPT at nanoGPT's "baby GPT" shape (6 x 6 heads x 384, context
                        256, dropout 0.2), the `shakespeare-char` preset

Steps 1-7 share the lecture's budget: batch 32, context 8, 5000 AdamW steps (lr 1e-2 for the
bigram and 1e-3 for the rest, as the lecture; torch's AdamW defaults otherwise), val loss as the
mean over 200 fixed batches. Step 8 runs the real trainer, `toygpt.train.train`, on the preset's
recipe cut to a CPU budget (--step8-iters, --step8-batch).

"The same trainer", exactly: `toygpt.train.train` builds its model from a preset
(`build_model(cfg, vocab_size)`) and has no way to take a model from outside, so steps 2-7 run
`train_ladder_model` below, a loop made of the trainer's own parts: its TrainConfig and presets,
its batches (`TokenBatches`, batch offsets a function of (seed, step)), its learning rate
(`get_lr`), its AdamW (`toygpt.model.adamw`, weight decay on matrices only, as
`GPT.configure_optimizers`), its gradient clipping rule and its evaluation (mean loss over
`eval_iters` fixed batches per split). What it leaves out is what a 40k-parameter model on a CPU
does not use: checkpoints, DDP, autocast, text samples. `--check-trainer` runs the bigram both
ways and requires the same losses, so the loop cannot drift from the trainer unnoticed.

Writes benchmarks/results/gpt_ladder.csv (one row per step, with the machine, torch version,
date and commit) and docs/gpt_ladder.png (the val loss curves of all steps).

    python tools/gpt_ladder.py                     # the whole ladder (about 15 minutes on 2 cores)
    python tools/gpt_ladder.py --steps 1 2 3       # some steps only (rows still go to the CSV)
    python tools/gpt_ladder.py --smoke             # 50 iterations a step, nothing written
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from benchlib import cpu_model, git_commit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CSV_PATH = REPO / "benchmarks" / "results" / "gpt_ladder.csv"
PNG_PATH = REPO / "docs" / "gpt_ladder.png"

# karpathy's "Let's build GPT" lecture, val loss as read off its runs (one run each, GPU);
# step 2 has no figure there: the lecture derives the average but never trains it alone
LECTURE_VAL_LOSS = {1: 2.49, 2: None, 3: 2.40, 4: 2.28, 5: 2.24, 6: 2.08, 7: 2.06, 8: 1.48}

STEP_NAMES = {1: "bigram", 2: "bag of words", 3: "one head", 4: "multi-head", 5: "feed-forward",
              6: "residual", 7: "layernorm", 8: "shakespeare-char"}


# ----------------------------------------------------------------------------------------------
# the models of steps 2-7 (step 1 is toygpt.bigram, step 8 toygpt.model.GPT)


@dataclass
class LadderConfig:
    vocab_size: int = 65
    block_size: int = 8  # context: the lecture's steps 1-7 use 8 characters
    n_embd: int = 32
    n_head: int = 4
    n_layer: int = 3
    step: int = 7  # which rung: 2 .. 7


class CausalAverage(nn.Module):
    """Step 2: position t becomes the mean of positions 0..t (weights = masked softmax of zeros)."""

    def __init__(self, block_size):
        super().__init__()
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        T = x.shape[1]
        wei = torch.zeros(T, T, device=x.device).masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        return F.softmax(wei, dim=-1) @ x  # (T, T) @ (B, T, C) -> (B, T, C)


class Head(nn.Module):
    """One head of causal self-attention: softmax(q k^T / sqrt(head_size), causal) v."""

    def __init__(self, n_embd, head_size, block_size):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        B, T, C = x.shape
        k, q, v = self.key(x), self.query(x), self.value(x)  # 3 x (B, T, hs)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T): scaled affinities
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # no looking ahead
        return F.softmax(wei, dim=-1) @ v  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """n_head heads side by side, concatenated; with proj, a Linear back into the residual stream."""

    def __init__(self, n_embd, n_head, block_size, proj):
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd, n_embd // n_head, block_size) for _ in range(n_head)])
        self.proj = nn.Linear(n_embd, n_embd) if proj else nn.Identity()

    def forward(self, x):
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))  # (B, T, C)


class FeedForward(nn.Module):
    """Per position: Linear, ReLU (the lecture's), and with proj a 4x wide layer and a way back."""

    def __init__(self, n_embd, proj):
        super().__init__()
        hidden = 4 * n_embd if proj else n_embd
        layers = [nn.Linear(n_embd, hidden), nn.ReLU()]
        if proj:
            layers.append(nn.Linear(hidden, n_embd))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    """Attention, then feed-forward, each added to the residual stream; with layer_norm, each
    reads a normalized copy of the stream (pre-norm, as GPT-2)."""

    def __init__(self, n_embd, n_head, block_size, layer_norm):
        super().__init__()
        self.sa = MultiHeadAttention(n_embd, n_head, block_size, proj=True)
        self.ffwd = FeedForward(n_embd, proj=True)
        self.ln1 = nn.LayerNorm(n_embd) if layer_norm else nn.Identity()
        self.ln2 = nn.LayerNorm(n_embd) if layer_norm else nn.Identity()

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class LadderLM(nn.Module):
    """Token + position embeddings, the step's body, a Linear to next-token logits."""

    def __init__(self, config: LadderConfig):
        super().__init__()
        if config.step not in range(2, 8):
            raise ValueError(f"LadderLM: step must be 2..7, got {config.step}")
        self.config = config
        C, T = config.n_embd, config.block_size
        self.token_embedding_table = nn.Embedding(config.vocab_size, C)
        self.position_embedding_table = nn.Embedding(T, C)
        body = {
            2: lambda: CausalAverage(T),
            3: lambda: Head(C, C, T),
            4: lambda: MultiHeadAttention(C, config.n_head, T, proj=False),
            5: lambda: nn.Sequential(MultiHeadAttention(C, config.n_head, T, proj=False),
                                     FeedForward(C, proj=False)),
            6: lambda: nn.Sequential(*[Block(C, config.n_head, T, layer_norm=False)
                                       for _ in range(config.n_layer)]),
            7: lambda: nn.Sequential(*[Block(C, config.n_head, T, layer_norm=True)
                                       for _ in range(config.n_layer)], nn.LayerNorm(C)),
        }[config.step]
        self.body = body()
        self.lm_head = nn.Linear(C, config.vocab_size)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table.weight[:T]  # (B, T, C)
        logits = self.lm_head(self.body(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # the GPT's rule: weight decay on matrices (Linear weights, embeddings), not on biases/gains
        from toygpt.model import adamw

        params = list(self.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return adamw(groups, learning_rate, betas, device_type)


# ----------------------------------------------------------------------------------------------
# training: the trainer's parts, for a model from outside its presets


def lecture_config(step: int, **overrides):
    """The TrainConfig of steps 1-7: the lecture's batch 32, context 8, 5000 steps, constant lr
    (1e-2 for the bigram, 1e-3 once attention is in), torch's AdamW defaults, no clipping,
    evaluation every 500 steps over 200 batches. The `bigram` preset holds all but the lr and
    the length (it is the lecture's bigram.py: 3000 steps)."""
    from toygpt.config import make_config

    lr = 1e-2 if step == 1 else 1e-3
    lecture = dict(learning_rate=lr, max_iters=5000, eval_interval=500, eval_iters=200, sample_tokens=0,
                   progress=False, device="cpu")
    return make_config("bigram", **{**lecture, **overrides})


@torch.no_grad()
def evaluate(model, batches, cfg, block_size, device="cpu") -> dict:
    """The trainer's evaluation: mean loss over cfg.eval_iters fixed batches of each split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = batches.eval_batch(split, k, block_size, device)
            losses[k] = model(x, y)[1]
        out[f"{split}_loss"] = losses.mean().item()
    model.train()
    return out


def train_ladder_model(model, cfg, batches, device="cpu") -> dict:
    """The loop of toygpt.train.train for one process in float32: same batches, learning rate,
    AdamW, clipping and evaluation. Returns {"losses", "evals", "seconds"} (seconds of training,
    evaluation excluded, as the trainer's step times exclude it)."""
    from toygpt.train import get_lr

    block_size = model.config.block_size
    batches.check(block_size, cfg.batch_size)
    model.to(device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                           torch.device(device).type)
    torch.manual_seed(cfg.seed)  # dropout masks, as the trainer seeds them for rank 0
    losses, evals, seconds = [], [], 0.0
    for step in range(cfg.max_iters):
        t0 = time.perf_counter()
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro_step in range(cfg.grad_accum):
            x, y = batches.train_batch(step, micro_step, block_size, device)
            _, loss = model(x, y)
            loss = loss / cfg.grad_accum
            loss.backward()
            loss_sum += loss.item()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0
        losses.append(loss_sum)
        done = step + 1
        if done % cfg.eval_interval == 0 or done == cfg.max_iters:
            evals.append({"step": done, "seconds": seconds, **evaluate(model, batches, cfg, block_size, device)})
    return {"losses": losses, "evals": evals, "seconds": seconds}


def build_step_model(step: int, vocab_size: int):
    """The untrained model of a step 1-7 (seeded as the trainer seeds: torch.manual_seed(cfg.seed))."""
    torch.manual_seed(lecture_config(step).seed)
    if step == 1:
        from toygpt.bigram import BigramConfig, BigramLanguageModel

        return BigramLanguageModel(BigramConfig(vocab_size=vocab_size, block_size=8))
    return LadderLM(LadderConfig(vocab_size=vocab_size, step=step))


def run_step(step: int, data_dir: Path, out_dir: Path, args) -> dict:
    from toygpt.batches import TokenBatches
    from toygpt.config import make_config
    from toygpt.train import train

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if step == 8:
        # the real trainer, the preset's recipe, with fewer and smaller steps (evaluation smaller too)
        iters = args.step8_iters
        cfg = make_config("shakespeare-char", data=str(data_dir), out=str(out_dir / "8-shakespeare-char"),
                          overwrite=True, max_iters=iters, lr_decay_iters=iters,
                          warmup_iters=max(1, iters // 10), batch_size=args.step8_batch, eval_interval=max(1, iters // 5),
                          eval_iters=args.step8_eval_iters, sample_tokens=0, progress=False,
                          device="cpu")
        result = train(cfg, log=lambda *a: None)
        model = result["model"]
        records = [json.loads(line) for line in (result["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "val_loss" in r]
        wall = time.perf_counter() - t0
        # the trainer's records carry no clock: seconds at each evaluation from the step rates
        t, per_step, seconds_at = 0.0, {}, {}
        for r in records:
            if "tokens_per_s" in r:
                t += cfg.batch_size * cfg.block_size / r["tokens_per_s"]
                per_step[r["step"]] = t
        for e in evals:
            seconds_at[e["step"]] = per_step.get(e["step"], 0.0)
        evals = [{**e, "seconds": seconds_at[e["step"]]} for e in evals]
        train_seconds = per_step.get(iters, wall)
    else:
        cfg = lecture_config(step, data=str(data_dir))
        if args.smoke:
            cfg.max_iters, cfg.eval_interval, cfg.eval_iters = 50, 25, 5
        batches = TokenBatches(data_dir, cfg)
        model = build_step_model(step, batches.vocab_size)
        # NOTE: one thread: at 32 x 8 tokens each op is tiny, and a second thread costs more in
        # handing work over than it saves (3x slower on a 2-core machine with other jobs on it)
        torch.set_num_threads(1)
        try:
            result = train_ladder_model(model, cfg, batches)
        finally:
            torch.set_num_threads(threads)
        threads = 1
        evals, train_seconds = result["evals"], result["seconds"]
        wall = time.perf_counter() - t0
    last = evals[-1]
    return {"step": step, "name": STEP_NAMES[step], "params": model.num_params(),
            "iters": cfg.max_iters, "batch_size": cfg.batch_size, "block_size": model.config.block_size,
            "train_loss": round(last["train_loss"], 4), "val_loss": round(last["val_loss"], 4),
            "lecture_val_loss": LECTURE_VAL_LOSS[step], "train_seconds": round(train_seconds, 1), "threads": threads,
            "wall_seconds": round(wall, 1), "curve": [(e["step"], e["seconds"], e["val_loss"]) for e in evals]}


def check_trainer(data_dir: Path, out_dir: Path, iters: int = 30) -> float:
    """Train the bigram for `iters` steps with toygpt.train.train and with train_ladder_model;
    the largest difference between their per-step losses (0.0 when the loop is the trainer's)."""
    from toygpt.batches import TokenBatches
    from toygpt.train import train

    cfg = lecture_config(1, data=str(data_dir), max_iters=iters, eval_interval=iters, eval_iters=5,
                         out=str(out_dir / "check-trainer"), overwrite=True)
    theirs = train(cfg, log=lambda *a: None)["losses"]
    ours = train_ladder_model(build_step_model(1, 65), cfg, TokenBatches(data_dir, cfg))["losses"]
    return max(abs(a - b) for a, b in zip(theirs, ours))


# ----------------------------------------------------------------------------------------------
# outputs


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    colors = plt.get_cmap("tab10")  # eight steps, eight distinct colours
    for row in rows:
        steps, seconds, val = zip(*row["curve"])
        label = f"{row['step']} {row['name']} ({row['val_loss']:.2f})"
        style = dict(color=colors(row["step"] - 1), lw=1.6, marker="o", ms=3,
                     ls="--" if row["step"] == 8 else "-")
        ax_step.plot(steps, val, label=label, **style)
        ax_time.plot(seconds, val, label=label, **style)
    for ax in (ax_step, ax_time):
        ax.axhline(1.48, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    ax_step.text(0.98, 1.50, "the lecture's step 8 (GPU, 5000 x 64 x 256): 1.48", color="grey", fontsize=8,
                 va="bottom", ha="right", transform=ax_step.get_yaxis_transform())
    ax_step.set_xlabel("optimizer step (steps 1-7: batch 32 x 8 characters; 8: see table)")
    ax_time.set_xlabel("seconds of training on this CPU (evaluation excluded)")
    ax_step.set_ylabel("val loss (cross-entropy, nats per character)")
    ax_time.set_xscale("log")
    ax_step.legend(title="step (final val loss)", fontsize=8, loc="upper right")
    fig.suptitle("The ladder on Tiny Shakespeare characters: val loss during training "
                 "(tools/gpt_ladder.py)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CSV_FIELDS = ["step", "name", "params", "iters", "batch_size", "block_size", "train_loss", "val_loss",
              "lecture_val_loss", "train_seconds", "wall_seconds", "cpu", "threads", "torch", "date", "commit"]


def machine() -> dict:
    cpu = cpu_model()
    commit = git_commit(default="")
    return {"cpu": cpu, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "commit": commit}


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row[k] for k in CSV_FIELDS if k in row}, **info,
                             "lecture_val_loss": "" if row["lecture_val_loss"] is None else row["lecture_val_loss"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_DATA, help="Tiny Shakespeare's input.txt")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gpt_ladder",
                        help="prepared data and step 8's checkpoint go here")
    parser.add_argument("--steps", type=int, nargs="+", default=list(range(1, 9)), choices=range(1, 9))
    parser.add_argument("--step8-iters", type=int, default=200, help="step 8: optimizer steps")
    parser.add_argument("--step8-batch", type=int, default=8, help="step 8: sequences of 256 per step")
    parser.add_argument("--step8-eval-iters", type=int, default=10, help="step 8: batches per evaluation")
    parser.add_argument("--check-trainer", action="store_true",
                        help="first check that the loop of steps 2-7 gives the trainer's losses")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick run of the script; the CSV and PNG go to --work instead")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        parser.error(f"--input {args.input} not found (Tiny Shakespeare's input.txt)")
    if args.smoke:
        args.step8_iters, args.step8_batch, args.step8_eval_iters = 6, 2, 2

    from toygpt.prepare import prepare

    data_dir = args.work / "data"
    prepare(args.input, "char", data_dir)
    if args.check_trainer:
        diff = check_trainer(data_dir, args.work)
        print(f"the ladder's loop against toygpt.train.train (bigram, 30 steps): "
              f"largest loss difference {diff:.2e}")
        if diff > 1e-6:
            print("error: the loop of steps 2-7 no longer matches the trainer", file=sys.stderr)
            return 1
    t_all = time.perf_counter()
    rows = []
    print(f"{'step':<20} {'params':>10} {'iters':>6} {'batch':>9} {'val loss':>9} {'lecture':>8} {'seconds':>8}")
    for step in args.steps:
        row = run_step(step, data_dir, args.work, args)
        rows.append(row)
        lecture = "" if row["lecture_val_loss"] is None else f"{row['lecture_val_loss']:.2f}"
        print(f"{step} {row['name']:<18} {row['params']:>10,} {row['iters']:>6} "
              f"{row['batch_size']:>4} x {row['block_size']:<3} {row['val_loss']:>9.4f} {lecture:>8} "
              f"{row['train_seconds']:>8.1f}", flush=True)
    print(f"total: {time.perf_counter() - t_all:.0f} s")
    csv_path, png_path = (args.work / CSV_PATH.name, args.work / PNG_PATH.name) if args.smoke else (CSV_PATH, PNG_PATH)
    write_csv(rows, csv_path)
    plot(rows, png_path)
    print(f"wrote {csv_path} and {png_path}")
    return 0 if all(math.isfinite(r["val_loss"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
