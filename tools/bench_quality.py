"""Training quality side by side: toygpt's presets against the code they are named after.

A preset that names a model (`mygpt-char`: dx-dtran/MyGPT's character model; nanoGPT's CPU
recipe on the `shakespeare-char` preset) should train as well as that model's own code does.
A loss quoted from another text is no yardstick (MyGPT's 1.516 was measured on calculus
lectures; nanoGPT's README "1.88" is one run's 20-batch estimate), so this benchmark runs the
reference's own code from a checkout you give it, on the same Tiny Shakespeare, over several
seeds, and compares the val losses of the two, each model evaluated on the SAME fixed val
batches afterwards:

- `--mygpt DIR` (a checkout of dx-dtran/MyGPT): MyGPT's Transformer, its vocabulary, split and
  get_batch from MyGPT/pretrain.py, and the loop of its `pretrain` (torch's AdamW on every
  parameter at lr 1e-3, batch 16, context 64) for --iters steps (default 1500), against
  `toygpt train --preset mygpt-char` stopped at the same step (the schedule is constant).
- `--lecture DIR` (a checkout of karpathy/ng-video-lecture): the lecture's bigram.py, run as
  it is (its 3000 steps of batch 32, context 8, AdamW at lr 1e-2, whatever --iters says) on
  input.txt, its seed replaced per run, against `toygpt train --preset bigram`.
- `--nanogpt DIR` (a checkout of karpathy/nanoGPT): nanoGPT's own train.py, run as its README's
  CPU command (config/train_shakespeare_char.py, 4 layers, 4 heads, 128 channels, context 64,
  batch 12, 2000 iterations, dropout 0), in a scratch folder holding toygpt's prepared Tiny
  Shakespeare as data/shakespeare_char; the seed, fixed at 1337 in train.py, is replaced per
  run; its checkpoint at iteration 2000 is evaluated. Against toygpt's trainer with that recipe.

Before anything trains, both sides' val tokens are checked to be the same ids. Reported per
seed and as means: val loss over --eval-batches batches; the goal is parity, the difference
of the means within twice its standard error (the seed-to-seed spread of the two). Also the
wall time per training step (noisy: it depends on what else runs). Rows go to
benchmarks/results/quality_parity.csv. Neither reference is a dependency: fetch it into a scratch
folder outside this repository, e.g. `git clone https://github.com/dx-dtran/MyGPT /tmp/MyGPT`.

    python tools/bench_quality.py --mygpt /tmp/MyGPT --seeds 1 2 3
    python tools/bench_quality.py --nanogpt /tmp/nanoGPT --seeds 1 2 3
    python tools/bench_quality.py --lecture /tmp/ng-video-lecture --seeds 1 2 3
    python tools/bench_quality.py --mygpt /tmp/MyGPT --seeds 1 --iters 20 --eval-batches 4 --no-csv  # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import math
import os
import pickle
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import append_csv, cpu_model, git_commit
from toygpt import cli
from toygpt.config import make_config
from toygpt.data import load_tokens
from toygpt.tokenizers import load_tokenizer
from toygpt.train import train

REPO = Path(__file__).resolve().parents[1]
CSV_PATH = REPO / "benchmarks" / "results" / "quality_parity.csv"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# nanoGPT's README CPU command: `python train.py config/train_shakespeare_char.py --device=cpu
# --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
# --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`; the rest is the
# config file's (lr 1e-3, min_lr 1e-4, warmup 100, beta2 0.99) and train.py's defaults (weight
# decay 0.1, beta1 0.9, grad_clip 1.0, bias False, eval_interval from the config: 250)
NANOGPT_CPU_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                     "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                     "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                   batch_size=12, grad_accum=1, max_iters=2000, lr_decay_iters=2000, learning_rate=1e-3,
                   min_lr=1e-4, warmup_iters=100, decay_lr=True, beta1=0.9, beta2=0.99, weight_decay=0.1,
                   grad_clip=1.0, eval_interval=250, eval_iters=20)
MYGPT_SHAPE = dict(context_length=64, d_embed=128, n_head=8, n_layer=4)  # MyGPT/pretrain.py's model
MYGPT_BATCH, MYGPT_LR = 16, 1e-3


def fixed_batches(val: torch.Tensor, n: int, batch: int, block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n batches of (x, y) windows of `val` at positions from a generator of its own (seed 0):
    every model of a comparison is evaluated on these same batches."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ix = torch.randint(len(val) - block, (batch,), generator=g)
        x = torch.stack([val[i:i + block] for i in ix])  # (batch, block)
        y = torch.stack([val[i + 1:i + 1 + block] for i in ix])  # (batch, block), shifted by one
        out.append((x, y))
    return out


@torch.no_grad()
def val_loss(model, batches) -> float:
    """The mean of model(x, y)'s loss over the batches (every model here returns (logits, loss))."""
    model.eval()
    return statistics.fmean(model(x, y)[1].item() for x, y in batches)


def prepare(text: Path, out: Path) -> tuple[Path, torch.Tensor]:
    """toygpt's character-level Tiny Shakespeare (`toygpt prepare --tokenizer char`) and its val ids."""
    if cli.main(["prepare", "--input", str(text), "--tokenizer", "char", "--out", str(out)]) != 0:
        raise SystemExit(f"bench_quality: toygpt prepare failed on {text}")
    return out, torch.from_numpy(load_tokens(out, "val").astype(np.int64))


def run_toygpt(preset: str, settings: dict, data: Path, out: Path, seed: int):
    cfg = make_config(preset, data=str(data), out=str(out), overwrite=True, seed=seed, sample_tokens=0,
                      progress=False, **settings)
    t0 = time.perf_counter()
    model = train(cfg, log=lambda *a, **k: None)["model"]
    return model, (time.perf_counter() - t0) / cfg.max_iters


# ----------------------------------------------------------------------------------------------
# dx-dtran/MyGPT


def mygpt_side(repo: Path, text: Path, toy_val: torch.Tensor):
    """MyGPT's own modules from `repo`, its val ids checked against toygpt's."""
    if not (repo / "MyGPT" / "transformer.py").is_file():
        raise SystemExit(f"bench_quality: {repo} is not a checkout of dx-dtran/MyGPT (no MyGPT/transformer.py)")
    sys.path.insert(0, str(repo))
    from MyGPT.pretrain import get_batch, get_train_val_data
    from MyGPT.transformer import Transformer
    from MyGPT.vocab import Tokenizer, create_vocabulary

    raw = text.read_text()
    vocab, vocab_size = create_vocabulary(raw)
    train_data, val_data = get_train_val_data(raw, Tokenizer(vocab), "cpu")
    if not torch.equal(val_data, toy_val):
        raise SystemExit("bench_quality: MyGPT's val split and toygpt's are not the same ids; not comparing")

    def run(seed: int, iters: int):
        torch.manual_seed(seed)
        model = Transformer(vocab_size, "cpu", **MYGPT_SHAPE)
        optimizer = torch.optim.AdamW(model.parameters(), lr=MYGPT_LR)  # pretrain's optimizer
        t0 = time.perf_counter()
        for _ in range(iters):  # pretrain's loop, without its periodic evaluation and sample
            x, y = get_batch(train_data, MYGPT_BATCH, MYGPT_SHAPE["context_length"])
            _, loss = model(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model, (time.perf_counter() - t0) / iters

    return run


# ----------------------------------------------------------------------------------------------
# karpathy/ng-video-lecture


def lecture_side(repo: Path, text: Path, work: Path, toy_val: torch.Tensor):
    """The lecture's bigram.py from `repo`, run in `work` (it reads input.txt from there)."""
    script = repo / "bigram.py"
    if not script.is_file():
        raise SystemExit(f"bench_quality: {repo} is not a checkout of karpathy/ng-video-lecture (no bigram.py)")
    shutil.copy(text, work / "input.txt")

    def run(seed: int, iters: int):  # iters: the script's own 3000
        manual_seed, cwd = torch.manual_seed, os.getcwd()
        torch.manual_seed = lambda s: manual_seed(s - 1337 + seed)  # bigram.py seeds 1337
        os.chdir(work)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its losses and its 500-character sample
                script_globals = runpy.run_path(str(script), run_name="__main__")
        finally:
            torch.manual_seed = manual_seed
            os.chdir(cwd)
        if not torch.equal(script_globals["val_data"], toy_val):
            raise SystemExit("bench_quality: the lecture's val split and toygpt's are not the same ids; not comparing")
        return script_globals["model"], (time.perf_counter() - t0) / script_globals["max_iters"]

    return run


# ----------------------------------------------------------------------------------------------
# karpathy/nanoGPT

NANOGPT_RUNNER = """
import runpy, sys, torch
repo, seed = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, repo)
_manual_seed = torch.manual_seed
torch.manual_seed = lambda s: _manual_seed(s - 1337 + seed)  # train.py seeds 1337 + the DDP rank
sys.argv = [repo + "/train.py", repo + "/config/train_shakespeare_char.py", *sys.argv[3:]]
runpy.run_path(repo + "/train.py", run_name="__main__")
"""


def nanogpt_side(repo: Path, data: Path, work: Path):
    """nanoGPT's train.py from `repo`, run in `work` on toygpt's prepared data."""
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):
        if not (repo / name).is_file():
            raise SystemExit(f"bench_quality: {repo} is not a checkout of karpathy/nanoGPT (no {name})")
    folder = work / "data" / "shakespeare_char"  # train.py reads data/<dataset>/ from its working folder
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(data / f"{split}.bin", folder / f"{split}.bin")  # uint16 ids, as nanoGPT's prepare.py
    tok = load_tokenizer(data / "tokenizer.json")
    itos = {i: tok.decode([i]) for i in range(tok.vocab_size)}
    with open(folder / "meta.pkl", "wb") as f:  # what nanoGPT's prepare.py writes beside them
        pickle.dump({"vocab_size": tok.vocab_size, "itos": itos, "stoi": {c: i for i, c in itos.items()}}, f)
    shutil.copy(repo / "configurator.py", work / "configurator.py")  # exec'd from the working folder
    sys.path.insert(0, str(repo))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    def run(seed: int, iters: int):
        out = work / f"out-{seed}"
        flags = [*NANOGPT_CPU_FLAGS, f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dtype=float32",
                 "--always_save_checkpoint=True", "--eval_interval=" + str(min(250, iters)), f"--out_dir={out}",
                 "--wandb_log=False"]
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", NANOGPT_RUNNER, str(repo), str(seed), *flags], cwd=work,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"bench_quality: nanoGPT's train.py failed:\n{done.stderr[-3000:]}")
        ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
        if ckpt["iter_num"] != iters:
            raise SystemExit(f"bench_quality: nanoGPT's last checkpoint is from iteration {ckpt['iter_num']}, not {iters}")
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        return model, wall / iters  # the process's start and its evaluations included

    return run


# ----------------------------------------------------------------------------------------------


def compare(name, reference, reference_run, toygpt_run, seeds, iters, batches, meta) -> list[dict]:
    rows, losses = [], {reference: [], "toygpt": []}
    for seed in seeds:
        for provider, run in ((reference, reference_run), ("toygpt", toygpt_run)):
            model, step_s = run(seed, iters)
            loss = val_loss(model, batches)
            losses[provider].append(loss)
            print(f"{name}, seed {seed}: {provider:8s} val loss {loss:.4f}, {1e3 * step_s:.1f} ms a step", flush=True)
            rows.append({**meta, "benchmark": name, "provider": provider, "seed": seed, "iters": iters,
                         "eval_batches": len(batches), "val_loss": round(loss, 4), "ms_per_step": round(1e3 * step_s, 1)})
    ref, toy = losses[reference], losses["toygpt"]
    line = f"{name}: {reference} mean {statistics.fmean(ref):.4f}, toygpt mean {statistics.fmean(toy):.4f}"
    if len(seeds) > 1:
        se = math.sqrt(statistics.variance(ref) / len(ref) + statistics.variance(toy) / len(toy))
        diff = statistics.fmean(toy) - statistics.fmean(ref)
        line += (f" (sd {statistics.stdev(ref):.4f} / {statistics.stdev(toy):.4f}); toygpt - {reference} = "
                 f"{diff:+.4f}, {diff / se:+.1f} standard errors (goal: within 2: "
                 f"{'met' if abs(diff) <= 2 * se else 'missed'})")
    print(line, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mygpt", type=Path, help="a checkout of dx-dtran/MyGPT")
    p.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT")
    p.add_argument("--lecture", type=Path, help="a checkout of karpathy/ng-video-lecture")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--iters", type=int, default=None, help="training steps (default: 1500 MyGPT, 2000 nanoGPT)")
    p.add_argument("--eval-batches", type=int, default=200)
    p.add_argument("--input", type=Path, default=SHAKESPEARE, help="Tiny Shakespeare")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    if not (args.mygpt or args.nanogpt or args.lecture):
        p.error("give --mygpt DIR, --nanogpt DIR and/or --lecture DIR (checkouts of the reference code)")
    if not args.input.is_file():
        p.error(f"--input {args.input}: no such file (Tiny Shakespeare, e.g. karpathy/char-rnn's input.txt)")
    torch.set_num_threads(args.threads)
    meta = {"date": datetime.date.today().isoformat(), "commit": git_commit(), "torch": torch.__version__,
            "threads": args.threads, "cpu": cpu_model()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        tmp = Path(tmp)
        data, val = prepare(args.input, tmp / "data")
        if args.mygpt:
            iters = args.iters or 1500
            rows += compare("mygpt-char", "MyGPT", mygpt_side(args.mygpt.resolve(), args.input, val),
                            lambda seed, n: run_toygpt("mygpt-char", dict(max_iters=n, eval_interval=n), data,
                                                       tmp / "runs" / f"mygpt-{seed}", seed),
                            args.seeds, iters, fixed_batches(val, args.eval_batches, MYGPT_BATCH, 64), meta)
        if args.lecture:
            (tmp / "lecture").mkdir()
            rows += compare("bigram", "lecture", lecture_side(args.lecture.resolve(), args.input, tmp / "lecture", val),
                            lambda seed, n: run_toygpt("bigram", dict(max_iters=n), data, tmp / "runs" / f"bigram-{seed}",
                                                       seed),
                            args.seeds, 3000, fixed_batches(val, args.eval_batches, 32, 8), meta)
        if args.nanogpt:
            iters = args.iters or 2000
            recipe = {**NANOGPT_CPU, "max_iters": iters, "lr_decay_iters": iters, "eval_interval": min(250, iters)}
            (tmp / "nanogpt").mkdir()
            rows += compare("nanogpt-cpu-recipe", "nanoGPT", nanogpt_side(args.nanogpt.resolve(), data, tmp / "nanogpt"),
                            lambda seed, n: run_toygpt("shakespeare-char", recipe, data,
                                                       tmp / "runs" / f"nanogpt-{seed}", seed),
                            args.seeds, iters, fixed_batches(val, args.eval_batches, 12, 64), meta)
    if not args.no_csv:
        append_csv(CSV_PATH, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
