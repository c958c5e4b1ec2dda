"""What a training run is told: TrainConfig, the one source of `toygpt train`'s flags, the
presets it starts from, and the settings a resumed run continues with.

nanoGPT's train.py keeps its settings in module globals changed by `exec`; here a `TrainConfig`
dataclass holds every setting, the CLI flags are built from its fields (type, default and help
from field metadata, toygpt.flags), and a preset (toygpt.presets) fills in a model's shape and
recipe under the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from toygpt.data import BATCH_ORDERS
from toygpt.errors import ToyGPTError
from toygpt.flags import at_least, between, check_fields, flag, greater_than, one_of
from toygpt.model_config import ACTIVATIONS, INITS
from toygpt.presets import PRESETS, TRAIN_PRESETS

# the range of every seed: numpy's SeedSequence takes no negatives, torch.manual_seed nothing past 2**64
SEED_RANGE = between(0, 2**64 - 1, text="in [0, 2**64)")


@dataclass
class TrainConfig:
    # what to train, on what, where
    preset: str = flag("mygpt-char", "model + hyper-parameter preset (its values are listed below)",
                       one_of(*TRAIN_PRESETS), metavar="NAME")
    data: str = flag("", "data directory written by `toygpt prepare` (with --resume: the checkpoint's "
                     "if not given)", metavar="DIR")
    out: str = flag("runs/train", "run directory: checkpoint, metrics.jsonl, loss.png", metavar="DIR")
    resume: bool = flag(False, "continue from <out>/ckpt exactly where it stopped")
    overwrite: bool = flag(False, "start afresh even if <out>/ckpt exists")
    # model shape; None takes the preset's value
    n_layer: int | None = flag(None, "transformer blocks (None: the preset's)", at_least(1))
    n_head: int | None = flag(None, "attention heads (None: the preset's)", at_least(1))
    n_embd: int | None = flag(None, "channels (None: the preset's)", at_least(1))
    block_size: int | None = flag(None, "context length in tokens (None: the preset's)", at_least(1))
    dropout: float | None = flag(None, "dropout rate (None: the preset's)", between(0, 1, hi_open=True))
    bias: bool | None = flag(None, "biases in Linear and LayerNorm (None: the preset's)")
    activation: str | None = flag(None, "the MLP's nonlinearity, gelu (GPT-2's) or relu (None: the preset's)",
                                  one_of(*ACTIVATIONS), metavar="NAME")
    tie_embeddings: bool | None = flag(None, "the output projection is the token embedding (None: the preset's)")
    qkv_bias: bool | None = flag(None, "a bias on the q/k/v projection (None: the preset's, else as --bias)")
    lm_head_bias: bool | None = flag(None, "a bias on the output projection (None: the preset's)")
    init: str | None = flag(None, "initialization: gpt2 (N(0, 0.02), scaled residual projections) or torch "
                                  "(each module's default) (None: the preset's)", one_of(*INITS), metavar="NAME")
    # optimization
    batch_size: int = flag(16, "sequences per micro-batch, per process", at_least(1))
    batch_order: str = flag("random", "random (windows at random offsets, as nanoGPT) or sequential (the "
                            "stream in consecutive windows, each rank its own, as build-nanogpt)",
                            one_of(*BATCH_ORDERS), metavar="ORDER")
    grad_accum: int = flag(1, "micro-batches per optimizer step, per process", at_least(1))
    max_iters: int = flag(5000, "optimizer steps", at_least(1))
    learning_rate: float = flag(1e-3, "peak learning rate", greater_than(0))
    min_lr: float = flag(1e-4, "learning rate at the end of the cosine decay", at_least(0))
    warmup_iters: int = flag(0, "linear warmup steps", at_least(0))
    lr_decay_iters: int | None = flag(None, "steps of cosine decay (None: max_iters)", at_least(1))
    decay_lr: bool = flag(True, "warmup + cosine decay; off: constant learning_rate")
    weight_decay: float = flag(0.1, "AdamW weight decay (on >=2-D parameters only, unless --decay-all)", at_least(0))
    decay_all: bool = flag(False, "weight decay on every parameter, biases and LayerNorms too (torch's AdamW "
                                  "on model.parameters())")
    beta1: float = flag(0.9, "AdamW beta1", between(0, 1, hi_open=True))
    beta2: float = flag(0.95, "AdamW beta2", between(0, 1, hi_open=True))
    grad_clip: float = flag(1.0, "clip the gradient norm to this (0: off)", at_least(0))
    # evaluation and logging
    eval_interval: int = flag(500, "evaluate, sample and save every N steps", at_least(1))
    eval_iters: int = flag(50, "batches per split in an evaluation", at_least(1))
    sample_tokens: int = flag(200, "tokens in the text sample at each evaluation (0: none)", at_least(0))
    hellaswag_every: int = flag(0, "score HellaSwag every N steps and at the last (0: never; needs GPT-2 "
                                   "BPE data)", at_least(0))
    hellaswag_data: str = flag("", "a local hellaswag_val.jsonl for --hellaswag-every (empty: download it)",
                               metavar="FILE")
    hellaswag_limit: int = flag(0, "score the first N HellaSwag examples (0: all 10,042)", at_least(0))
    progress: bool = flag(True, "show a tqdm progress bar")
    # system
    seed: int = flag(1337, "seed of the weights, dropout and the batches", SEED_RANGE)
    device: str = flag("auto", "auto, cpu, cuda, cuda:N or mps", metavar="DEVICE")
    dtype: str = flag("auto", "auto (bf16 on CUDA, fp16 where bf16 is unsupported), float32, bfloat16, float16",
                      one_of("auto", "float32", "bfloat16", "float16"), metavar="DTYPE")
    compile: bool = flag(False, "torch.compile the model")

    def __post_init__(self):
        check_fields(self)  # the flags' own checks, for configs built in Python too


def preset_values(name: str) -> dict:
    """The TrainConfig values a preset sets: its model's shape (less the vocabulary, which is the
    data's), then its training recipe."""
    shape, recipe = PRESETS[name]
    return {**{k: v for k, v in (shape or {}).items() if k != "vocab_size"}, **recipe}


def make_config(preset: str = "mygpt-char", **overrides) -> TrainConfig:
    """TrainConfig defaults, then the preset's values (toygpt.presets), then `overrides`."""
    if preset not in TRAIN_PRESETS:
        raise ToyGPTError(f"unknown preset {preset!r}; known: {', '.join(TRAIN_PRESETS)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ToyGPTError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    return TrainConfig(**{**preset_values(preset), **overrides, "preset": preset})


def presets_help() -> str:
    """The presets' values, for the end of `toygpt train -h` (the flags' own defaults are
    TrainConfig's; a preset replaces some of them, and a flag given explicitly beats both)."""
    lines = ["presets (each sets these values; flags given on the command line override them):"]
    for name in TRAIN_PRESETS:
        values = preset_values(name)
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



def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = getattr(args, "_given", set())
    if args.resume and args.overwrite:
        # each would silently undo the other: --resume continues <out>/ckpt, --overwrite replaces it
        raise ToyGPTError("--resume and --overwrite contradict each other: --resume continues "
                          f"{Path(args.out) / 'ckpt'}, --overwrite starts afresh over it; pass one")
    return make_config(args.preset, **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                                       if f.name in given and f.name != "preset"})



# the GPTConfig fields a run's TrainConfig sets (vocab_size is the data's)
MODEL_SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "activation",
                      "tie_embeddings", "qkv_bias", "lm_head_bias", "init")
# this process's settings, not the run's: a resumed run takes them from the caller
_PROCESS_FIELDS = {"resume", "overwrite", "progress", "out", "device", "compile"}
# the model's own settings: the checkpoint's weights fix them (all of its shape but dropout)
_MODEL_FIELDS = {"preset", *MODEL_SHAPE_FIELDS} - {"dropout"}
# settings a continued run is expected to change: applied without a note
_CONTINUATION_FIELDS = {"max_iters", "eval_interval", "sample_tokens", "data", "hellaswag_every",
                        "hellaswag_data", "hellaswag_limit"}


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
        if name in _PROCESS_FIELDS:
            values[name] = new
            continue
        if name not in saved:  # a field newer than the checkpoint: what runs had before it, unless set
            values[name] = new if name in given else f.default
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

