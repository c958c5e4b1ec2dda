"""`toygpt-demo`: the project's main job, offline on a CPU in under 3 minutes.

It trains a small GPT, with the same trainer as every other model, on multi-digit addition
problems the program writes itself (addition.py: "123+456=9750", the sum reversed), one character
per token, then reports exact-match accuracy on held-out problems the model never saw, prints a
few completions, and leaves the loss curve (loss.png) and a checkpoint in the run directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from toygpt import checkpoint
from toygpt.addition import VOCAB, AdditionTask
from toygpt.config import SEED_RANGE, make_config
from toygpt.errors import ToyGPTError
from toygpt.flags import ErrorGuard, FlagParser, add_flags, at_least, between, flag
from toygpt.train import train

ACCURACY_GOAL = 0.95


class AdditionBatches:
    """The trainer's batch interface over an AdditionTask: val batches are the held-out problems."""

    def __init__(self, task: AdditionTask, batch_size: int):
        from toygpt.tokenizers import CharTokenizer

        self.task, self.batch_size = task, batch_size
        self.tokenizer = CharTokenizer.from_text(VOCAB)
        self.vocab_size = self.tokenizer.vocab_size
        held = torch.from_numpy(task.encode_pairs(task.test_pairs))  # (n_test, seq_len)
        self.val_x, self.val_y = held[:, :-1], held[:, 1:].clone()
        self.val_y[:, : task.prompt_len - 1] = -1  # score the answer only, as in training

    def check(self, block_size: int, batch_size: int) -> None:
        assert block_size >= self.task.seq_len - 1, "the context must hold a whole problem"

    def train_batch(self, step: int, micro_step: int, block_size: int, device):
        x, y = self.task.batch(self.batch_size, step, micro_step)
        return x.to(device), y.to(device)

    def eval_batch(self, split: str, k: int, block_size: int, device):
        if split == "train":  # fresh training-distribution problems, away from the training steps
            x, y = self.task.batch(self.batch_size, step=10**9 + k)
        else:
            rows = slice(k * self.batch_size, (k + 1) * self.batch_size)
            x, y = self.val_x[rows], self.val_y[rows]
        return x.to(device), y.to(device)


@dataclass
class DemoFlags:
    out: str = flag("runs/demo", "run directory", metavar="DIR")
    overwrite: bool = flag(False, "replace the run --out already holds (`make demo` passes it)")
    # NOTE: 9 is the most: a problem's id, (a - lo) * span + (b - lo), must fit numpy's int64
    digits: int = flag(3, "digits per operand", between(3, 9))
    max_iters: int = flag(1000, "optimizer steps", at_least(1))
    batch_size: int = flag(256, "problems per step", at_least(1))
    n_test: int = flag(1000, "held-out problems (fewer than half of all pairs of operands)", at_least(1))
    seed: int = flag(1337, "seed of the problems, the weights and the batches", SEED_RANGE)
    progress: bool = flag(True, "show a progress bar")


def main(argv: list[str] | None = None) -> int:
    guard = ErrorGuard("toygpt-demo")
    with guard:
        return _main(argv)
    return guard.exit_code


def _main(argv: list[str] | None) -> int:
    parser = FlagParser(prog="toygpt-demo", description=__doc__.splitlines()[0],
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(parser, DemoFlags)
    args = parser.parse_args(argv)
    span = 9 * 10 ** (args.digits - 1)  # operands of 3 digits: 100 .. 999
    if args.n_test >= span * span // 2:  # AdditionTask's own bound: most pairs stay for training
        parser.error(f"argument --n-test: must be less than {span * span // 2:,} with {args.digits}-digit "
                     f"operands, got {args.n_test}")
    ckpt = Path(args.out) / "ckpt"
    if checkpoint.exists(ckpt) and not args.overwrite:  # a run's checkpoint is never replaced unasked
        raise ToyGPTError(f"--out {args.out} already holds a run ({ckpt}); pass --overwrite to replace it, "
                          "or another --out")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.perf_counter()
    task = AdditionTask(digits=args.digits, n_test=args.n_test, seed=args.seed)
    batches = AdditionBatches(task, args.batch_size)
    # A 2-layer, 128-channel GPT-2 (0.4M parameters) is plenty: reversed addition is a local rule.
    cfg = make_config(
        "mygpt-char", activation="gelu", tie_embeddings=True, qkv_bias=True, lm_head_bias=False, init="gpt2",
        decay_all=False, n_layer=2, n_head=4, n_embd=128, block_size=task.seq_len - 1, dropout=0.0,
        batch_size=args.batch_size, max_iters=args.max_iters, learning_rate=3e-3, min_lr=3e-4,
        warmup_iters=50, decay_lr=True, weight_decay=0.1, beta2=0.98, grad_clip=1.0,
        eval_interval=max(1, args.max_iters // 5), eval_iters=max(1, args.n_test // args.batch_size),
        sample_tokens=0, out=args.out, overwrite=args.overwrite, seed=args.seed, device="cpu",
        progress=args.progress)
    print(f"toygpt-demo: learning {args.digits}-digit addition, character by character "
          f"({task.seq_len} characters a problem, e.g. {task.test_pairs[0][0]}+{task.test_pairs[0][1]}="
          f"{str(task.test_pairs[0].sum()).zfill(args.digits + 1)[::-1]} with the sum reversed)")
    result = train(cfg, batches=batches)
    model = result["model"]
    accuracy, completions = task.evaluate(model)
    elapsed = time.perf_counter() - t0

    print(f"\nheld-out problems ({len(completions)}, never in a training batch), a few completions:")
    for a, b, answer in completions[:8]:
        verdict = "ok" if answer[::-1].isdigit() and int(answer[::-1]) == a + b else "WRONG"
        print(f"  {a}+{b}={answer}  (reversed: {answer[::-1]}, true sum {a + b})  {verdict}")
    print(f"\nexact-match accuracy on held-out problems: {100 * accuracy:.1f}% "
          f"(goal {100 * ACCURACY_GOAL:.0f}%)")
    print(f"{model.num_params():,} parameters, {cfg.max_iters} steps, {elapsed:.0f} s; "
          f"loss curve {result['run_dir'] / 'loss.png'}, checkpoint {result['run_dir'] / 'ckpt'}")
    return 0 if accuracy >= ACCURACY_GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
