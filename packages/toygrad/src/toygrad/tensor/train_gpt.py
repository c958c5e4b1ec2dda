"""toygrad-train-gpt: train a character-level GPT on a text file with toygrad's own backward pass.

The defaults are the sizes and recipe of toygpt's `mygpt-char` preset (context 64, 128
channels, 8 heads, 4 layers, no dropout; batch 16, AdamW lr 1e-3 constant, betas (0.9, 0.999),
weight decay 0.01, no gradient clipping) on GPT-2's block (tanh GELU, a head tied to the token
embedding, GPT-2's initialization, decay on matrices only), which toygrad's GPT is. The preset
itself is dx-dtran/MyGPT's block (ReLU, its own head with a bias, torch's initialization, decay
on every parameter); `toygpt train --preset mygpt-char --activation gelu --tie-embeddings
--qkv-bias --no-lm-head-bias --init gpt2 --no-decay-all` is this model:

    toygrad-train-gpt ../shared/data/tinyshakespeare/input.txt --steps 300

`train(cfg, path, reference=...)` trains a torch.autograd model side by side from the SAME
initial weights on the SAME batches with the same recipe (torch.optim.AdamW,
torch.nn.utils.clip_grad_norm_), and records both losses per step: the curves agree to float
round-off, far inside the batch-to-batch noise, which is the end-to-end check that every
backward rule is right. toygrad knows no torch model of its own: the caller brings it (the tests
bring toygpt's GPT; tools/compare_toygrad_training.py toygpt's or the plain PyTorch baseline).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from toygrad.demo import OneLineParser, number, run_command, writable_path, write_atomically
from toygrad.tensor import no_grad
from toygrad.tensor.nn import GPT, GPTConfig
from toygrad.tensor.optim import clip_grad_norm_


def _f(default, **bounds):
    """A field whose flag's value must be within `bounds` (toygrad.demo.number's at_least, above, below)."""
    return field(default=default, metadata=bounds)


@dataclass
class TrainConfig:
    """The flags; defaults are the sizes and recipe of toygpt's `mygpt-char` preset
    (toygpt/presets.py; a test holds them equal)."""

    # sizes are checked by train() (at least 1); _f gives the other flags' ranges, checked as parsed
    steps: int = 300  # optimizer steps
    batch_size: int = 16
    block_size: int = 64  # context length
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 128
    dropout: float = _f(0.0, at_least=0, below=1)
    lr: float = _f(1e-3, above=0)  # constant, as mygpt-char (decay_lr=False)
    weight_decay: float = _f(0.01, at_least=0)  # on >= 2-D parameters only
    beta2: float = _f(0.999, at_least=0, below=1)
    grad_clip: float = _f(0.0, at_least=0)  # clip the global gradient norm to this (0: off, as mygpt-char)
    eval_interval: int = _f(100, at_least=0)  # estimate train/val loss every this many steps (0: never)
    eval_iters: int = 20
    seed: int = 1337
    device: str = "cpu"
    dtype: str = "float32"  # or bfloat16 (the whole model, not autocast)


class CharData:
    """A text file as character ids (sorted unique characters, as nanoGPT's shakespeare_char),
    split 90/10 into train/val, with batches drawn from a seeded generator."""

    def __init__(self, path, seed: int):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training text not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        if len(text) < 2:
            raise ValueError(f"{path} is too short to train on ({len(text)} characters)")
        self.chars = sorted(set(text))
        stoi = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
        n = int(0.9 * len(ids))
        self.split = {"train": ids[:n], "val": ids[n:]}
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def batch(self, split: str, batch_size: int, block_size: int):
        data = self.split[split]
        if len(data) <= block_size:
            raise ValueError(f"{split} split has {len(data)} characters, need more than block_size {block_size}")
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=self.generator)
        x = torch.stack([data[i : i + block_size] for i in ix])  # (B, T)
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])  # (B, T): next characters
        return x, y


def train(cfg: TrainConfig, data_path, reference=None, reference_name: str = "reference", log=print) -> list[dict]:
    """Train and return one record per step: {"step", "loss", "ref_loss" (with a reference), "ms"}.

    reference: None, or a function GPTConfig -> torch.nn.Module, a torch.autograd GPT with
    nanoGPT's parameter names returning (logits, loss), trained beside toygrad's model."""
    for name in ("steps", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_iters"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype must be float32 or bfloat16, got {cfg.dtype!r}")
    torch.manual_seed(cfg.seed)
    data = CharData(data_path, cfg.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    mc = GPTConfig(block_size=cfg.block_size, vocab_size=data.vocab_size, n_layer=cfg.n_layer,
                   n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)
    model = GPT(mc).to(device=cfg.device, dtype=dtype)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, betas=(0.9, cfg.beta2))
    ref = ref_optimizer = None
    if reference is not None:
        ref = reference(mc).to(device=cfg.device, dtype=dtype)
        # the same initial weights; every parameter must be covered (buffers may differ)
        ref_names = {name for name, _ in ref.named_parameters(remove_duplicate=False)}
        own = model.state_dict()
        if ref_names - set(own):
            raise ValueError(f"{reference_name}: parameters {sorted(ref_names - set(own))} have no toygrad twin")
        ref.load_state_dict(own, strict=False)
        decay = [p for p in ref.parameters() if p.dim() >= 2]
        no_decay = [p for p in ref.parameters() if p.dim() < 2]
        ref_optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, cfg.beta2),
        )
    log(f"toygrad GPT: {model.num_params() / 1e6:.2f}M parameters, vocab {data.vocab_size}, "
        f"{cfg.steps} steps of {cfg.batch_size}x{cfg.block_size} tokens on {cfg.device} ({cfg.dtype})")

    history = []
    for step in range(1, cfg.steps + 1):
        x, y = data.batch("train", cfg.batch_size, cfg.block_size)
        x, y = x.to(cfg.device), y.to(cfg.device)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        if cfg.grad_clip > 0:
            clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        record = {"step": step, "loss": loss.item(), "ms": 1000 * (time.perf_counter() - t0)}
        if ref is not None:
            _, ref_loss = ref(x, y)
            ref_optimizer.zero_grad(set_to_none=True)
            ref_loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
            ref_optimizer.step()
            record["ref_loss"] = ref_loss.item()
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"loss became {record['loss']} at step {step}")
        history.append(record)
        if step == 1 or step % 10 == 0 or step == cfg.steps:
            extra = f"  {reference_name} {record['ref_loss']:.4f}" if ref is not None else ""
            log(f"step {step:5d}  loss {record['loss']:.4f}{extra}  {record['ms']:.0f} ms")
        if cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.steps):
            losses = estimate_loss(model, data, cfg)
            log(f"step {step:5d}  train {losses['train']:.4f}  val {losses['val']:.4f}")
    return history


def estimate_loss(model: GPT, data: CharData, cfg: TrainConfig) -> dict:
    model.eval()
    out = {}
    with no_grad():
        for split in ("train", "val"):
            losses = []
            for _ in range(cfg.eval_iters):
                x, y = data.batch(split, cfg.batch_size, cfg.block_size)
                losses.append(model(x.to(cfg.device), y.to(cfg.device))[1].item())
            out[split] = sum(losses) / len(losses)
    model.train()
    return out


def _device(text: str) -> str:
    """--device's check as parsed: a device torch knows, and one this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: there are only {torch.cuda.device_count()} CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: toygrad's tensors run on cpu or cuda")
    return text


def main(argv=None) -> int:
    # toygrad.demo holds toygrad's small command-line plumbing (one-line errors, exit codes)
    return run_command("toygrad-train-gpt", lambda: _main(argv))


def _main(argv) -> int:
    return run_args(build_parser().parse_args(argv))


def build_parser() -> OneLineParser:
    """One flag per TrainConfig field, the text file, and --csv."""
    parser = OneLineParser(prog="toygrad-train-gpt", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a UTF-8 text file, e.g. tinyshakespeare/input.txt")
    for f in fields(TrainConfig):
        kind = type(f.default)
        parse = _device if f.name == "device" else number(kind, **f.metadata) if kind in (int, float) else kind
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=parse, default=f.default)
    parser.add_argument("--csv", help="write step, loss (, ref_loss), ms to this CSV file")
    return parser


def run_args(args, reference=None, reference_name: str = "reference") -> int:
    """Train as the parsed flags say (beside `reference`, as in train()), write --csv, and with a
    reference print how far the two curves are apart."""
    if args.csv:  # checked before training, not after it
        writable_path("--csv", args.csv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    history = train(cfg, args.data, reference=reference, reference_name=reference_name)
    if args.csv:
        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)
        write_atomically(args.csv, write_csv)
    if reference is not None:
        diffs = [abs(r["loss"] - r["ref_loss"]) for r in history]
        last = history[-50:]
        print(f"max |loss - {reference_name} loss| over {len(diffs)} steps: {max(diffs):.2e} "
              f"(last 50 steps mean: toygrad {sum(r['loss'] for r in last) / len(last):.4f}, "
              f"{reference_name} {sum(r['ref_loss'] for r in last) / len(last):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
