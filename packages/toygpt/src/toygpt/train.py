"""`toygpt train`: nanoGPT's training loop, as a TrainConfig dataclass and a function.

nanoGPT's train.py keeps its settings in module globals changed by `exec`; here a `TrainConfig`
dataclass is the one source of every setting, the CLI flags are built from its fields (type,
default and help from field metadata), and `train(cfg)` is a plain function tests can call.

The loop, per optimizer step: set the learning rate (linear warmup, then cosine decay to min_lr);
run `grad_accum` micro-batches forward and backward (under bf16 autocast on CUDA), syncing DDP
gradients on the last one only; clip the gradient norm; step AdamW. Every `eval_interval` steps:
mean train/val loss over `eval_iters` fixed batches, a text sample, a checkpoint, the loss curve.

Distributed: under `torchrun` (RANK / WORLD_SIZE set) the model is wrapped in DDP (NCCL on
GPUs, gloo on CPU). Each rank draws its own share of the step's global batch (data.py), so N ranks
with grad_accum g follow the same loss curve as one process with grad_accum N * g. Rank 0 logs
and saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from toygpt import checkpoint
from toygpt.data import batch_offsets, data_identity, get_batch, load_tokens, read_meta, sha256_of
from toygpt.errors import ToyGPTError
from toygpt.flags import add_flags, at_least, between, check_fields, greater_than, one_of
from toygpt.flags import flag as _f

# the range of every seed: numpy's SeedSequence takes no negatives, torch.manual_seed nothing past 2**64
SEED_RANGE = between(0, 2**64 - 1, text="in [0, 2**64)")


@dataclass
class TrainConfig:
    # what to train, on what, where
    preset: str = _f("mygpt-char", "model + hyper-parameter preset (its values are listed below)",
                     one_of("bigram", "mygpt-char", "shakespeare-char", "gpt2"), metavar="NAME")
    data: str = _f("", "data directory written by `toygpt prepare` (with --resume: the checkpoint's "
                   "if not given)", metavar="DIR")
    out: str = _f("runs/train", "run directory: checkpoint, metrics.jsonl, loss.png", metavar="DIR")
    resume: bool = _f(False, "continue from <out>/ckpt exactly where it stopped")
    overwrite: bool = _f(False, "start afresh even if <out>/ckpt exists")
    # model shape; None takes the preset's value
    n_layer: int | None = _f(None, "transformer blocks (None: the preset's)", at_least(1))
    n_head: int | None = _f(None, "attention heads (None: the preset's)", at_least(1))
    n_embd: int | None = _f(None, "channels (None: the preset's)", at_least(1))
    block_size: int | None = _f(None, "context length in tokens (None: the preset's)", at_least(1))
    dropout: float | None = _f(None, "dropout rate (None: the preset's)", between(0, 1, hi_open=True))
    bias: bool | None = _f(None, "biases in Linear and LayerNorm (None: the preset's)")
    # optimization
    batch_size: int = _f(16, "sequences per micro-batch, per process", at_least(1))
    grad_accum: int = _f(1, "micro-batches per optimizer step, per process", at_least(1))
    max_iters: int = _f(5000, "optimizer steps", at_least(1))
    learning_rate: float = _f(1e-3, "peak learning rate", greater_than(0))
    min_lr: float = _f(1e-4, "learning rate at the end of the cosine decay", at_least(0))
    warmup_iters: int = _f(0, "linear warmup steps", at_least(0))
    lr_decay_iters: int | None = _f(None, "steps of cosine decay (None: max_iters)", at_least(1))
    decay_lr: bool = _f(True, "warmup + cosine decay; off: constant learning_rate")
    weight_decay: float = _f(0.1, "AdamW weight decay (on >=2-D parameters only)", at_least(0))
    beta1: float = _f(0.9, "AdamW beta1", between(0, 1, hi_open=True))
    beta2: float = _f(0.95, "AdamW beta2", between(0, 1, hi_open=True))
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off)", at_least(0))
    # evaluation and logging
    eval_interval: int = _f(500, "evaluate, sample and save every N steps", at_least(1))
    eval_iters: int = _f(50, "batches per split in an evaluation", at_least(1))
    sample_tokens: int = _f(200, "tokens in the text sample at each evaluation (0: none)", at_least(0))
    progress: bool = _f(True, "show a tqdm progress bar")
    # system
    seed: int = _f(1337, "seed of the weights, dropout and the batches", SEED_RANGE)
    device: str = _f("auto", "auto, cpu, cuda, cuda:N or mps", metavar="DEVICE")
    dtype: str = _f("auto", "auto (bf16 on CUDA, fp16 where bf16 is unsupported), float32, bfloat16, float16",
                    one_of("auto", "float32", "bfloat16", "float16"), metavar="DTYPE")
    compile: bool = _f(False, "torch.compile the model")

    def __post_init__(self):
        check_fields(self)  # the flags' own checks, for configs built in Python too


# Each preset: TrainConfig values for the seed model's recipe (explicit flags override them).
PRESETS: dict[str, dict] = {
    # the NanoGPT seed's bigram model: its script trains 3000 steps at lr 1e-2, batch 32, context 8,
    # with torch's AdamW defaults (weight decay 0.01, betas 0.9 / 0.999) and no gradient clipping
    "bigram": dict(block_size=8, batch_size=32, max_iters=3000, learning_rate=1e-2, decay_lr=False,
                   weight_decay=0.01, beta2=0.999, grad_clip=0.0, eval_interval=300, eval_iters=200),
    # the MyGPT seed: context 64, 128 channels, 8 heads, 4 layers, batch 16, and torch's AdamW
    # defaults at lr 1e-3 (weight decay 0.01, betas 0.9 / 0.999), no gradient clipping
    "mygpt-char": dict(n_layer=4, n_head=8, n_embd=128, block_size=64, dropout=0.0, bias=True,
                       batch_size=16, max_iters=5000, learning_rate=1e-3, decay_lr=False,
                       weight_decay=0.01, beta2=0.999, grad_clip=0.0, eval_interval=500, eval_iters=50),
    # nanoGPT's config/train_shakespeare_char.py, the "baby GPT"
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False,
                             batch_size=64, max_iters=5000, lr_decay_iters=5000, learning_rate=1e-3,
                             min_lr=1e-4, warmup_iters=100, beta2=0.99, weight_decay=0.1,
                             eval_interval=250, eval_iters=200),
    # GPT-2 124M on GPT-2 BPE data, nanoGPT's train_gpt2.py recipe (per 8 GPUs: grad_accum 40 / 8)
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, bias=True,
                 batch_size=12, grad_accum=40, max_iters=600000, lr_decay_iters=600000,
                 learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000, beta2=0.95, weight_decay=0.1,
                 eval_interval=1000, eval_iters=200),
}

# dense bf16 tensor-core peak FLOP/s by GPU name, for MFU
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
              "A10G": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def make_config(preset: str = "mygpt-char", **overrides) -> TrainConfig:
    """TrainConfig defaults, then the preset's values, then `overrides`."""
    if preset not in PRESETS:
        raise ToyGPTError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ToyGPTError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    return TrainConfig(**{**PRESETS[preset], **overrides, "preset": preset})


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr (nanoGPT's schedule)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


class TokenBatches:
    """Batches of a `toygpt prepare` directory, for one rank of `world_size`."""

    def __init__(self, data_dir: str | Path, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
        from toygpt.tokenizers import load_tokenizer

        self.meta = read_meta(data_dir)
        self.splits = {s: load_tokens(data_dir, s) for s in ("train", "val")}
        tok_path = Path(data_dir) / "tokenizer.json"
        if not tok_path.is_file():
            raise ToyGPTError(f"{tok_path} not found: {data_dir} is not a `toygpt prepare` output")
        recorded = self.meta.get("tokenizer_sha256")  # absent in directories of older versions
        if recorded is not None and sha256_of(tok_path) != recorded:
            raise ToyGPTError(f"tokenizer {tok_path} is not the one {data_dir}/meta.json was written with "
                              "(its sha256 differs): the tokenizer does not match the data")
        self.tokenizer = load_tokenizer(tok_path)
        self.tokenizer_path = tok_path
        self.vocab_size = self.tokenizer.vocab_size
        if self.meta.get("vocab_size") != self.vocab_size:
            raise ToyGPTError(f"tokenizer {tok_path} has {self.vocab_size} ids but {data_dir}/meta.json "
                              f"says {self.meta.get('vocab_size')}: the tokenizer does not match the data")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size

    def check(self, block_size: int, batch_size: int) -> None:
        for split, tokens in self.splits.items():
            if len(tokens) <= block_size:
                raise ToyGPTError(f"block_size {block_size} is longer than the data: {split}.bin holds "
                                  f"{len(tokens)} tokens, a window needs {block_size + 1}")
            if len(tokens) - block_size < batch_size:
                raise ToyGPTError(f"a batch of {batch_size} windows cannot be drawn from {split}.bin: it "
                                  f"has {len(tokens) - block_size} distinct windows of {block_size + 1} tokens")

    def train_batch(self, step: int, micro_step: int, block_size: int, device):
        tokens = self.splits["train"]
        offsets = batch_offsets(len(tokens), block_size, self.cfg.batch_size, self.cfg.seed, step,
                                micro_step, self.rank, self.world_size, self.cfg.grad_accum)
        return get_batch(tokens, offsets, block_size, device)

    def eval_batch(self, split: str, k: int, block_size: int, device):
        tokens = self.splits[split]
        stream = {"train": 1, "val": 2}[split]  # fixed batches, apart from the training ones
        offsets = batch_offsets(len(tokens), block_size, self.cfg.batch_size, self.cfg.seed, k, 0,
                                self.rank, self.world_size, stream=stream)
        return get_batch(tokens, offsets, block_size, device)


def build_model(cfg: TrainConfig, vocab_size: int):
    if cfg.preset == "bigram":
        from toygpt.bigram import BigramConfig, BigramLanguageModel

        return BigramLanguageModel(BigramConfig(vocab_size=vocab_size, block_size=cfg.block_size))
    from toygpt.model import GPT, GPTConfig

    shape = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")}
    return GPT(GPTConfig(vocab_size=vocab_size, **{k: v for k, v in shape.items() if v is not None}))


def resolve_device(name: str) -> str:
    """`auto` -> cuda when there is a GPU, else cpu; any other name is checked to exist here."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ToyGPTError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ToyGPTError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ToyGPTError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ToyGPTError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ToyGPTError(f"--device {name!r}: the trainer runs on cpu, cuda or mps")
    return name


def _setup_distributed(cfg: TrainConfig):
    """(rank, local_rank, world_size, device) under torchrun, or (0, 0, 1, device) without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.device)
    if world_size == 1:
        return 0, 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, local_rank, world_size, device


def _autocast_dtype(cfg: TrainConfig, device_type: str) -> torch.dtype:
    if cfg.dtype == "auto":
        if device_type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    except KeyError:
        raise ToyGPTError(f"unknown --dtype {cfg.dtype!r}; use auto, float32, bfloat16 or float16") from None


def _rng_state() -> dict:
    # only torch's generators matter: batches come from (seed, step), not from a running RNG
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def flops_per_token(model, block_size: int) -> float:
    """Training FLOPs per token: 6 N for the matmuls of the weights, plus attention's
    12 L H Q T (forward and backward of QK^T and AV), as in the PaLM paper's appendix B."""
    n = model.num_params()
    c = getattr(model, "config", None)
    if not hasattr(c, "n_layer"):
        return 6.0 * n
    return 6.0 * n + 12.0 * c.n_layer * c.n_embd * block_size


def peak_flops(device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _read_records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a line torn by a crash mid-write is dropped, not an error."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def plot_losses(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    def y(value):  # null in metrics.jsonl (a non-finite number): a gap in the curve
        return math.nan if value is None else value

    steps = [r["step"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [y(r["loss"]) for r in records if "loss" in r], lw=0.8, alpha=0.6, label="train (step)")
    evals = [r for r in records if "val_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [y(r["train_loss"]) for r in evals], "o-", label="train (eval)")
        ax.plot([r["step"] for r in evals], [y(r["val_loss"]) for r in evals], "o-", label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _json_line(record: dict) -> str:
    """One metrics.jsonl line. A non-finite number (a diverged loss) is written as null: bare
    NaN / Infinity, which json.dumps writes by default, is not JSON and strict parsers reject it."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def _not_finite(ev: dict, model, optimizer) -> str | None:
    """What is not finite of an evaluation's losses, the weights and the optimizer state, or None."""
    for name, value in ev.items():
        if not math.isfinite(value):
            return f"{name.replace('_', ' ')} is {value}"
    if not _all_finite(model.parameters()):
        return "the weights hold nan or inf"
    if not _all_finite(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)):
        return "the optimizer state holds nan or inf"
    return None


def _all_finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors]
    return not flags or bool(torch.stack(flags).all())  # one device sync, not one per tensor


# this process's settings, not the run's: a resumed run takes them from the caller
_PROCESS_FIELDS = {"resume", "overwrite", "progress", "out", "device", "compile"}
# the model's own settings: the checkpoint's weights fix them
_MODEL_FIELDS = {"preset", "n_layer", "n_head", "n_embd", "block_size", "bias"}
# settings a continued run is expected to change: applied without a note
_CONTINUATION_FIELDS = {"max_iters", "eval_interval", "sample_tokens", "data"}


def resumed_config(cfg: TrainConfig, saved: dict, given: set[str] | None = None,
                   where: str = "the checkpoint") -> tuple[TrainConfig, list[str]]:
    """The TrainConfig a resumed run continues with, and notes on what changed.

    `saved` is the checkpoint's TrainConfig (as a dict). The run keeps it, except for this
    process's own settings (_PROCESS_FIELDS, always cfg's) and the fields the caller set: those
    in `given` (the command line's flags), or with given=None every field of cfg that is not
    None. A change is applied and noted; a change of the model's shape is refused. A checkpoint
    saved without lr_decay_iters decayed over its own max_iters, and keeps doing so: a longer
    max_iters must not bend the schedule of a run half way through it.
    """
    if given is None:
        given = {f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) is not None}
    values, notes = {}, []
    for f in dataclasses.fields(TrainConfig):
        name, new = f.name, getattr(cfg, f.name)
        if name in _PROCESS_FIELDS or name not in saved:  # (not in saved: a field newer than it)
            values[name] = new
            continue
        old = saved[name]
        if name not in given or new == old or (name == "data" and not new):
            values[name] = old
            continue
        if name in _MODEL_FIELDS:
            raise ToyGPTError(f"--{name.replace('_', '-')} {new} does not fit checkpoint {where}, whose model "
                              f"has {name} {old}: a resumed model keeps its shape (to change it, start a new "
                              "run with another --out or --overwrite)")
        values[name] = new
        if name not in _CONTINUATION_FIELDS:
            notes.append(f"{name} {old!r} -> {new!r}")
    saved_max_iters = saved.get("max_iters", values["max_iters"])
    if values["lr_decay_iters"] is None:
        values["lr_decay_iters"] = values["max_iters"] if "lr_decay_iters" in given else saved_max_iters
    resumed = TrainConfig(**values)
    if (resumed.decay_lr and resumed.max_iters > resumed.lr_decay_iters
            and resumed.max_iters != saved_max_iters):
        notes.append(f"the learning rate stays at min_lr {resumed.min_lr} after step {resumed.lr_decay_iters} "
                     "(lr_decay_iters; pass --lr-decay-iters to stretch the schedule)")
    return resumed, notes


def train(cfg: TrainConfig, batches=None, log=print, given: set[str] | None = None) -> dict:
    """Train as `cfg` says; returns {"model", "losses", "evals", "run_dir"}.

    `batches` defaults to TokenBatches(cfg.data); any object with the same methods (train_batch,
    eval_batch, check, tokenizer, vocab_size) works, e.g. the addition demo's.

    With cfg.resume the run continues with its checkpoint's own TrainConfig (`resumed_config`:
    `given` names the fields the caller set, as the CLI's flags; None means every field of cfg
    that is not None), on the same data (the checkpoint records its meta.json). A fresh run
    refuses a run directory that holds a checkpoint unless cfg.overwrite; then the old
    checkpoint is deleted first, before the curve, so a crash leaves one run's files, never a
    mix. A checkpoint is only ever written with finite weights and evaluation losses: a run
    that diverges stops with an error naming the last good one. metrics.jsonl holds one JSON
    object per line; a non-finite number in it is written as null.
    """
    from tqdm import tqdm

    for name in ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters"):
        if getattr(cfg, name) < 1:
            raise ToyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    rank, _, world_size, device = _setup_distributed(cfg)
    device_type = torch.device(device).type
    master = rank == 0
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "ckpt"
    state = None
    if cfg.resume:
        state = checkpoint.load_state(ckpt_dir)  # raises if absent or corrupt
        where = checkpoint.resolve(ckpt_dir)
        cfg, notes = resumed_config(cfg, state.get("config", {}), given, where=str(where))
        if notes and master:
            log(f"note: resuming {where} with settings changed from its run's: {'; '.join(notes)}")
    elif checkpoint.exists(ckpt_dir) and not cfg.overwrite:
        raise ToyGPTError(f"{ckpt_dir} already holds a checkpoint: pass --resume to continue it, "
                          f"--overwrite to start afresh, or another --out")
    elif cfg.lr_decay_iters is None:  # the config file records the schedule that runs
        cfg = dataclasses.replace(cfg, lr_decay_iters=cfg.max_iters)
    if batches is None:
        if not cfg.data:
            raise ToyGPTError("--data DIR is required (make one with `toygpt prepare`)")
        batches = TokenBatches(cfg.data, cfg, rank, world_size)
    meta = getattr(batches, "meta", None)  # TokenBatches' meta.json; the addition demo has none
    identity = data_identity(meta) if isinstance(meta, dict) else None

    if state is not None:
        tok_file = where / "tokenizer.json"
        tok = batches.tokenizer
        data_tok = {"type": tok.name, **tok.to_dict()} if tok is not None else None
        if tok_file.is_file() and data_tok is not None and json.loads(tok_file.read_text()) != data_tok:
            raise ToyGPTError(f"the tokenizer of checkpoint {tok_file} does not match the data's "
                              f"({getattr(batches, 'tokenizer_path', 'tokenizer')})")
        # the same tokenizer on other text (a `toygpt prepare --overwrite` since) is caught here
        recorded = state.get("data_identity")  # absent in checkpoints of older versions
        if recorded is not None and identity is not None and recorded != identity:
            differ = sorted(k for k in recorded.keys() | identity.keys() if recorded.get(k) != identity.get(k))
            raise ToyGPTError(f"the data in {cfg.data} is not the data checkpoint {where} was trained on "
                              f"(its meta.json differs in {', '.join(differ)}): pass that data with --data, "
                              "or start a new run")
        model = checkpoint.load_model(where)
        if not _all_finite(model.parameters()):  # saved by an older version, which did not check
            raise ToyGPTError(f"checkpoint {where} holds non-finite weights (nan or inf): it cannot be resumed")
        if cfg.dropout is not None and getattr(model.config, "dropout", cfg.dropout) != cfg.dropout:
            model.config.dropout = cfg.dropout  # a changed --dropout, applied (and noted above)
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = cfg.dropout
    else:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_model(cfg, batches.vocab_size)
    block_size = model.config.block_size
    if getattr(model.config, "vocab_size", batches.vocab_size) != batches.vocab_size:
        raise ToyGPTError(f"the checkpoint {ckpt_dir} has vocab_size {model.config.vocab_size} but the "
                          f"data's tokenizer has {batches.vocab_size}: they do not match")
    batches.check(block_size, cfg.batch_size)
    ptdtype = _autocast_dtype(cfg, device_type)
    model.to(device)

    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                           device_type)
    autocast = (torch.autocast(device_type=device_type, dtype=ptdtype)
                if ptdtype != torch.float32 else nullcontext())
    scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)
    start_step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step = state["step"]
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout masks differ between ranks

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[torch.device(device).index] if device_type == "cuda" else None)

    metrics_path = run_dir / "metrics.jsonl"
    records: list[dict] = []
    if master:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ToyGPTError(f"cannot create the run directory --out {run_dir} ({e.strerror or e})") from None
        if state is not None and metrics_path.is_file():  # keep the curve up to the checkpoint
            records = [r for r in _read_records(metrics_path) if r["step"] <= start_step]
        elif state is None:
            # A fresh run (--overwrite, or a directory whose run never saved): what an earlier run
            # left goes, its checkpoint first. A crash from here on leaves no checkpoint beside
            # any curve but its own: the old run whole, the old curve with no checkpoint (which
            # nothing resumes), or the new run.
            checkpoint.remove(ckpt_dir)
            (run_dir / "loss.png").unlink(missing_ok=True)
        # rewritten through a temporary file: a crash here must not lose the curve so far
        tmp = metrics_path.with_name(metrics_path.name + ".tmp")
        tmp.write_text("".join(_json_line(r) for r in records))
        os.replace(tmp, metrics_path)

    def log_record(record: dict) -> None:
        records.append(record)
        with open(metrics_path, "a") as f:
            f.write(_json_line(record))

    @torch.no_grad()
    def evaluate() -> dict:
        raw_model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(cfg.eval_iters, device=device)
            for k in range(cfg.eval_iters):
                x, y = batches.eval_batch(split, k, block_size, device)
                with autocast:
                    losses[k] = raw_model(x, y)[1]
            mean = losses.mean()
            if world_size > 1:
                dist.all_reduce(mean)
                mean /= world_size
            out[f"{split}_loss"] = mean.item()
        raw_model.train()
        return out

    def sample() -> str:
        tok = batches.tokenizer
        if tok is None or cfg.sample_tokens < 1:
            return ""
        start = tok.eot_id if tok.eot_id is not None else 0
        with torch.random.fork_rng(devices=[device] if device_type == "cuda" else []):
            raw_model.eval()  # sampling must not move the RNG the training run depends on
            idx = torch.full((1, 1), start, dtype=torch.long, device=device)
            out = raw_model.generate(idx, cfg.sample_tokens, temperature=1.0, top_k=None)
            raw_model.train()
        return tok.decode(out[0, 1:].tolist())

    def save(step: int) -> None:
        rng = [_rng_state()]
        if world_size > 1:  # every rank's RNG, so dropout resumes exactly on each
            rng = [None] * world_size
            dist.all_gather_object(rng, _rng_state())
        if master:
            checkpoint.save_checkpoint(ckpt_dir, raw_model, batches.tokenizer, {
                "step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng, "config": asdict(cfg), "world_size": world_size, "data_identity": identity})

    good_step = start_step if state is not None else None  # of the checkpoint on disk, all finite

    def stop(what: str, step: int) -> ToyGPTError:
        if good_step is None:
            return ToyGPTError(f"{what} at step {step}: stopping; no checkpoint was saved")
        return ToyGPTError(f"{what} at step {step}: stopping; the last good checkpoint is "
                           f"{checkpoint.resolve(ckpt_dir)} (step {good_step})")

    tokens_per_step = cfg.batch_size * block_size * cfg.grad_accum * world_size
    flops_tok, peak = flops_per_token(raw_model, block_size), peak_flops(device)
    bar = tqdm(range(start_step, cfg.max_iters), initial=start_step, total=cfg.max_iters,
               disable=not (master and cfg.progress), dynamic_ncols=True)
    losses: list[float] = []
    t_last = time.perf_counter()
    for step in bar:
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(cfg.grad_accum):
            x, y = batches.train_batch(step, micro_step, block_size, device)
            # DDP all-reduces gradients in backward; only the last micro-step needs it
            sync = world_size == 1 or micro_step == cfg.grad_accum - 1
            with (nullcontext() if sync else model.no_sync()), autocast:
                _, loss = model(x, y)
                loss = loss / cfg.grad_accum  # the step's gradient is the mean over micro-batches
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if world_size > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world_size
        step_loss = loss_sum.item()
        if not math.isfinite(step_loss):
            raise stop(f"loss is {step_loss}", step + 1)
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        t_now = time.perf_counter()
        dt, t_last = t_now - t_last, t_now
        losses.append(step_loss)
        done = step + 1
        if master:
            record = {"step": done, "loss": step_loss, "lr": lr, "tokens_per_s": tokens_per_step / dt}
            postfix = {"loss": f"{step_loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens_per_step / dt:,.0f}"}
            if peak:
                record["mfu"] = flops_tok * tokens_per_step / dt / (peak * world_size)
                postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
            bar.set_postfix(postfix, refresh=False)
            log_record(record)
        if done % cfg.eval_interval == 0 or done == cfg.max_iters:
            ev = evaluate()
            # an update can leave the weights non-finite while the loss before it was finite:
            # such weights are never saved over the last good checkpoint
            diverged = _not_finite(ev, raw_model, optimizer)
            if diverged:
                if master:
                    log_record({"step": done, **ev})  # the curve shows where it diverged
                raise stop(f"{diverged} (so this step is not saved)", done)
            save(done)
            good_step = done
            if master:
                log_record({"step": done, **ev})
                msg = f"step {done}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}"
                text = sample()
                (bar.write if cfg.progress else log)(msg + (f"\n{text}\n" if text else ""))
                plot_losses(records, run_dir / "loss.png")
            t_last = time.perf_counter()  # evaluation time is not step time
    bar.close()
    return {"model": raw_model, "losses": losses, "evals": [r for r in records if "val_loss" in r],
            "run_dir": run_dir}


def presets_help() -> str:
    """The presets' values, for the end of `toygpt train -h` (the flags' own defaults are
    TrainConfig's; a preset replaces some of them, and a flag given explicitly beats both)."""
    lines = ["presets (each sets these values; flags given on the command line override them):"]
    for name, values in PRESETS.items():
        lines.append(f"  {name}:")
        line = "   "
        for k, v in values.items():
            flag = "--" + k.replace("_", "-")
            item = (flag if v else f"--no-{flag[2:]}") if isinstance(v, bool) else f"{flag} {v}"
            if len(line) + 1 + len(item) > 80:  # wrap between flags, never inside one
                lines.append(line)
                line = "   "
            line += " " + item
        lines.append(line)
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: --n-layer, --learning-rate, --resume/--no-resume, ..."""
    add_flags(parser, TrainConfig)
    parser.epilog = presets_help()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = getattr(args, "_given", set())
    if args.resume and args.overwrite:
        # each would silently undo the other: --resume continues <out>/ckpt, --overwrite replaces it
        raise ToyGPTError("--resume and --overwrite contradict each other: --resume continues "
                          f"{Path(args.out) / 'ckpt'}, --overwrite starts afresh over it; pass one")
    return make_config(args.preset, **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                                       if f.name in given and f.name != "preset"})


def run(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    try:
        # with --resume, the flags given are the changes to the run's own settings
        result = train(cfg, given=getattr(args, "_given", set()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result["evals"]:
        last = result["evals"][-1]
        print(f"done: step {last['step']}, val loss {last['val_loss']:.4f}; "
              f"checkpoint {result['run_dir'] / 'ckpt'}, curve {result['run_dir'] / 'loss.png'}")
