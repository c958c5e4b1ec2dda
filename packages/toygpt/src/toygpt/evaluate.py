"""`toygpt eval`: HellaSwag accuracy and the loss on a prepared dataset, for any model toygpt loads.

    toygpt eval hellaswag --model gpt2                    # downloads HellaSwag's validation set
    toygpt eval hellaswag --model out/gpt2-124M --data hellaswag_val.jsonl --limit 1000
    toygpt eval loss --model out/gpt2-124M --data data/fineweb-edu --batches 100

HellaSwag is scored the way build-nanogpt's and llm.c's hellaswag.py score it ("completion
style"): the context and each of the four endings (with a leading space, as GPT-2's tokenizer
sees a word after a sentence) are tokenized apart and joined; each ending is scored by the
cross-entropy of its own tokens given everything before them. The ending of the least summed
loss is the prediction for `acc`; of the least mean loss per token, for `acc_norm` (which does
not favour short endings). For OpenAI's GPT-2 124M, build-nanogpt's hellaswag.py reports
acc 0.2859 and acc_norm 0.2955 over the 10,042 validation examples.

The model is resolved as `toygpt generate --model` resolves it (a toygpt checkpoint or run
directory, a transformers GPT-2 directory, or a hub name); text is tokenized with the model's
own tokenizer when it has one (toygpt checkpoints), else GPT-2's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from toygpt.errors import ToyGPTError
from toygpt.flags import at_least, flag, one_of

MODEL_HELP = "hub name (gpt2 ... gpt2-xl), transformers directory, or toygpt checkpoint or run directory"


@dataclass
class HellaSwagConfig:
    model: str = flag("gpt2", MODEL_HELP)
    data: str | None = flag(None, "a local copy of HellaSwag's hellaswag_val.jsonl (None: download it)",
                            metavar="FILE")
    limit: int | None = flag(None, "score only the first N examples (None: all)", at_least(1), metavar="N")
    out: str = flag("hellaswag.json", "where to write the scores, as JSON", metavar="FILE")
    device: str = flag("cpu", "auto, cpu, cuda, cuda:1, mps")


@dataclass
class LossConfig:
    model: str = flag("gpt2", MODEL_HELP)
    data: str = flag("", "a `toygpt prepare` directory (train.bin / val.bin or shards)", metavar="DIR")
    split: str = flag("val", "which split", one_of("train", "val"))
    batches: int | None = flag(None, "only the first N batches (None: the whole split)", at_least(1), metavar="N")
    batch_size: int = flag(8, "windows per batch", at_least(1))
    out: str | None = flag(None, "also write the result as JSON to FILE", metavar="FILE")
    device: str = flag("cpu", "auto, cpu, cuda, cuda:1, mps")
    quantize: str | None = flag(None, "score the model with int8 weights (toygpt.quantize; None: float)", one_of("int8"))


# ---- the model ------------------------------------------------------------------------------


def load_model(name: str, device: str):
    """(model in eval mode on `device`, its tokenizer) for `--model name`."""
    from toygpt import checkpoint

    model = checkpoint.load_named(name, device)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:  # a transformers directory or hub model: GPT-2's own tokenizer
        from toygpt.tokenizers import GPT2Tokenizer

        tokenizer = GPT2Tokenizer()
    return model.eval(), tokenizer


# ---- HellaSwag --------------------------------------------------------------------------------


def read_hellaswag(path: Path, limit: int | None = None) -> list[dict]:
    """The examples of a HellaSwag JSON Lines file, each checked for ctx, 4 endings and a label."""
    examples = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if limit is not None and len(examples) == limit:
                    break
                if not line.strip():
                    continue
                try:
                    example = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ToyGPTError(f"{path} line {number} is not JSON ({e})") from None
                ok = (isinstance(example, dict) and isinstance(example.get("ctx"), str)
                      and isinstance(example.get("endings"), list) and len(example["endings"]) == 4
                      and all(isinstance(e, str) for e in example["endings"])
                      and example.get("label") in (0, 1, 2, 3))
                if not ok:
                    raise ToyGPTError(f"{path} line {number} is not a HellaSwag example "
                                      "(ctx: text, endings: 4 texts, label: 0 to 3)")
                examples.append(example)
    except FileNotFoundError:
        raise ToyGPTError(f"--data {path} not found") from None
    except UnicodeDecodeError as e:
        raise ToyGPTError(f"--data {path} is not UTF-8 text ({e})") from None
    if not examples:
        raise ToyGPTError(f"--data {path} holds no examples")
    return examples


def render_example(example: dict, tokenizer, block_size: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """tokens (4, T) of context + ending per row, zero-padded; mask (4, T), 1 on the ending's
    tokens; and whether the context was cut (from the left) to fit block_size."""
    context = tokenizer.encode(example["ctx"])
    endings = [tokenizer.encode(" " + ending) for ending in example["endings"]]
    room = block_size - max(len(e) for e in endings)
    if room < 1:
        raise ToyGPTError(f"a HellaSwag ending of {block_size - room} tokens does not fit the model's "
                          f"block_size {block_size} after at least one context token")
    cropped = len(context) > room
    context = context[-room:]
    rows = [context + ending for ending in endings]
    T = max(len(row) for row in rows)
    tokens = torch.zeros(4, T, dtype=torch.long)
    mask = torch.zeros(4, T, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, len(context) : len(row)] = 1
    return tokens, mask, cropped


@torch.no_grad()
def ending_losses(model, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed, mean) cross-entropy of each row's ending tokens, each (4,)."""
    logits, _ = model(tokens)  # (4, T, vocab_size)
    # the token at t + 1 is predicted from position t: shift the targets and the mask
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(),
                             reduction="none").view(tokens.size(0), -1)  # (4, T - 1)
    shifted_mask = mask[:, 1:].to(losses.dtype)
    summed = (losses * shifted_mask).sum(dim=1)
    return summed, summed / shifted_mask.sum(dim=1)


def hellaswag(model, tokenizer, examples: list[dict], device="cpu", progress: bool = False) -> dict:
    """acc and acc_norm of `model` on `examples`, with each example's losses and predictions."""
    block_size = model.config.block_size
    rows, correct, correct_norm, cropped = [], 0, 0, 0
    iterator = examples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(examples, desc="hellaswag", unit="ex", dynamic_ncols=True)
    for example in iterator:
        tokens, mask, was_cropped = render_example(example, tokenizer, block_size)
        summed, mean = ending_losses(model, tokens.to(device), mask.to(device))
        pred, pred_norm = int(summed.argmin()), int(mean.argmin())
        label = example["label"]
        correct += pred == label
        correct_norm += pred_norm == label
        cropped += was_cropped
        rows.append({"ind": example.get("ind"), "label": label, "pred": pred, "pred_norm": pred_norm,
                     "sum_loss": summed.tolist(), "mean_loss": mean.tolist()})
    n = len(examples)
    return {"examples": n, "acc": correct / n, "acc_norm": correct_norm / n, "correct": correct,
            "correct_norm": correct_norm, "contexts_cropped": cropped, "per_example": rows}


def run_hellaswag(args: argparse.Namespace) -> None:
    from toygpt.data import HELLASWAG_VAL, fetch_file
    from toygpt.runtime import resolve_device

    device = resolve_device(args.device)
    path = Path(args.data) if args.data else fetch_file("hellaswag", HELLASWAG_VAL, instead="--data FILE")
    examples = read_hellaswag(path, args.limit)
    model, tokenizer = load_model(args.model, device)
    result = hellaswag(model, tokenizer, examples, device, progress=sys.stderr.isatty())
    result = {"model": args.model, "data": str(path), **result}
    _write_json(Path(args.out), result)
    print(f"hellaswag {args.model}: {result['examples']} examples, acc {result['acc']:.4f}, "
          f"acc_norm {result['acc_norm']:.4f} (wrote {args.out})")
    if result["contexts_cropped"]:
        print(f"note: {result['contexts_cropped']} contexts were cut from the left to fit block_size "
              f"{model.config.block_size}", file=sys.stderr)


# ---- loss on a prepared dataset ---------------------------------------------------------------


@torch.no_grad()
def dataset_loss(model, tokens, block_size: int, batch_size: int, batches: int | None = None,
                 device="cpu") -> dict:
    """Mean cross-entropy over consecutive, non-overlapping windows of `tokens` (each x of
    block_size tokens with y its shift by one): the whole split, or its first `batches` batches."""
    from toygpt.data import get_batch

    n_windows = (len(tokens) - 1) // block_size
    if n_windows < 1:
        raise ToyGPTError(f"the split holds {len(tokens)} tokens: no window of {block_size + 1}")
    if batches is not None:
        n_windows = min(n_windows, batches * batch_size)
    total, count = 0.0, 0
    for first in range(0, n_windows, batch_size):
        offsets = range(first * block_size, min(first + batch_size, n_windows) * block_size, block_size)
        x, y = get_batch(tokens, list(offsets), block_size, device)
        _, loss = model(x, y)
        total += float(loss) * y.numel()
        count += y.numel()
    return {"loss": total / count, "tokens": count, "windows": n_windows, "block_size": block_size}


def run_loss(args: argparse.Namespace) -> None:
    from toygpt.data import load_tokens, read_meta
    from toygpt.runtime import resolve_device

    if not args.data:
        raise ToyGPTError("--data DIR is required (a `toygpt prepare` directory)")
    device = resolve_device(args.device)
    meta = read_meta(args.data)
    tokens = load_tokens(args.data, args.split)
    model, tokenizer = load_model(args.model, device)
    if args.quantize:
        from toygpt.quantize import quantize

        model = quantize(model, args.quantize)
    if meta.get("tokenizer") != tokenizer.name or meta.get("vocab_size", 0) > model.config.vocab_size:
        raise ToyGPTError(f"{args.data} was tokenized with {meta.get('tokenizer')} ({meta.get('vocab_size')} ids) "
                          f"but {args.model} reads {tokenizer.name} ({model.config.vocab_size} ids)")
    result = dataset_loss(model, tokens, model.config.block_size, args.batch_size, args.batches, device)
    result = {"model": args.model, "data": str(args.data), "split": args.split,
              "quantize": args.quantize or None, **result}
    print(f"{args.split} loss {result['loss']:.4f} of {args.model} over {result['tokens']:,} tokens "
          f"({result['windows']:,} windows of {result['block_size']})")
    if not math.isfinite(result["loss"]):
        raise ToyGPTError(f"the loss is not finite ({result['loss']}): {args.model} holds bad weights")
    if args.out:
        _write_json(Path(args.out), result)


def _write_json(path: Path, obj: dict) -> None:
    try:
        path.write_text(json.dumps(obj, indent=1) + "\n")
    except OSError as e:
        raise ToyGPTError(f"cannot write --out {path} ({e.strerror or e})") from None


# ---- command line -----------------------------------------------------------------------------

TASKS = {"hellaswag": (HellaSwagConfig, run_hellaswag, "HellaSwag acc and acc_norm (completion style)"),
         "loss": (LossConfig, run_loss, "the loss on a `toygpt prepare` directory")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toygpt.flags import add_flags

    sub = parser.add_subparsers(dest="eval_task", required=True, metavar="{hellaswag,loss}")
    for name, (config, _, help_text) in TASKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_flags(p, config)


def run(args: argparse.Namespace) -> None:
    TASKS[args.eval_task][1](args)
