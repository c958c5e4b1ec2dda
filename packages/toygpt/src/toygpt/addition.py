"""Multi-digit addition as a character-level language task: the data behind `toygpt-demo`.

A problem is written as text, one character per token, with the sum's digits *reversed* and
zero-padded to a fixed width:

    123+456=9750      (123 + 456 = 579 -> padded "0579" -> reversed "9750")

Why reversed: a causal model emits the answer left to right. Written the usual way, the first
digit of 579 depends on carries coming from the digits to its right, which the model has not
produced yet, so it must do the whole addition "in its head" before emitting anything. Reversed,
the least significant digit comes first, exactly the order of schoolbook addition: each digit
needs only two operand digits and the carry from the digit just emitted. Small models learn it in
minutes instead of hours (Lee et al. 2023, "Teaching Arithmetic to Small Transformers", report
the same effect). Fixed widths keep every digit in the same position in every problem.

Held-out problems: a fixed random set of pairs is drawn first and never sampled for training,
so the reported accuracy is on problems the model has not seen.
"""

from __future__ import annotations

import numpy as np
import torch

from toygpt.errors import ToyGPTError

# The characters of the task, sorted as CharTokenizer.from_text sorts them, so that the ids here
# are the ids of CharTokenizer.from_text(VOCAB) saved with the demo's checkpoint.
VOCAB = "".join(sorted("0123456789+="))
STOI = {ch: i for i, ch in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    return [STOI[ch] for ch in text]


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def format_problem(a: int, b: int, digits: int) -> tuple[str, str]:
    """(prompt, answer) for a + b, e.g. (123, 456, 3) -> ("123+456=", "9750")."""
    return f"{a}+{b}=", f"{a + b:0{digits + 1}d}"[::-1]


def parse_answer(answer: str) -> int | None:
    """The integer a reversed answer stands for, None if it is not all digits."""
    return int(answer[::-1]) if answer.isdigit() else None


class AdditionTask:
    """Random problems with `digits`-digit operands (10**(digits-1) ... 10**digits - 1).

    `n_test` pairs are held out (drawn once from `seed`); training batches never contain them.
    Batches are functions of (seed, step, micro_step) only, so a run is reproducible and a
    resumed run sees the batches it would have seen.
    """

    def __init__(self, digits: int = 3, n_test: int = 1000, seed: int = 1337):
        if digits < 1:
            raise ToyGPTError(f"digits must be at least 1, got {digits}")
        self.digits = digits
        self.lo, self.hi = 10 ** (digits - 1), 10**digits  # operands in [lo, hi)
        n_pairs = (self.hi - self.lo) ** 2
        if not 0 < n_test < n_pairs // 2:
            raise ToyGPTError(f"n_test must be in 1 .. {n_pairs // 2 - 1} for {digits} digits, got {n_test}")
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        ids = rng.choice(n_pairs, size=n_test, replace=False)  # pair id = (a - lo) * span + (b - lo)
        self.test_ids = np.sort(ids)
        span = self.hi - self.lo
        self.test_pairs = np.stack([ids // span + self.lo, ids % span + self.lo], axis=1)  # (n_test, 2)
        self.prompt_len = 2 * digits + 2  # "123+456="
        self.seq_len = self.prompt_len + digits + 1  # plus the reversed, padded sum

    def encode_pairs(self, pairs: np.ndarray) -> np.ndarray:
        """(N, 2) operand pairs -> (N, seq_len) token ids of the full problems."""
        rows = [encode("".join(format_problem(int(a), int(b), self.digits))) for a, b in pairs]
        return np.array(rows, dtype=np.int64)

    def sample_pairs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n training pairs, none of them in the held-out set."""
        span = self.hi - self.lo
        ids = rng.integers(0, span * span, size=n)
        held = np.isin(ids, self.test_ids)
        while held.any():  # redraw the few that hit the held-out set
            ids[held] = rng.integers(0, span * span, size=int(held.sum()))
            held = np.isin(ids, self.test_ids)
        return np.stack([ids // span + self.lo, ids % span + self.lo], axis=1)

    def batch(self, batch_size: int, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, seq_len - 1); targets are -1 (ignored) except on the answer."""
        rng = np.random.default_rng([self.seed, 1, step, micro_step])
        seq = torch.from_numpy(self.encode_pairs(self.sample_pairs(batch_size, rng)))
        x, y = seq[:, :-1], seq[:, 1:].clone()
        # position i predicts token i + 1: the answer starts at token prompt_len, so targets at
        # positions < prompt_len - 1 are prompt characters, which are random and not the task
        y[:, : self.prompt_len - 1] = -1
        return x, y

    @torch.no_grad()
    def evaluate(self, model, pairs: np.ndarray | None = None, device="cpu", batch_size: int = 1000):
        """Greedy answers for `pairs` (default: the held-out set) -> (accuracy, list of (a, b, text))."""
        pairs = self.test_pairs if pairs is None else pairs
        was_training = model.training
        model.eval()
        results = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            idx = torch.from_numpy(self.encode_pairs(chunk)[:, : self.prompt_len]).to(device)
            for _ in range(self.digits + 1):
                logits, _ = model(idx)
                next_id = logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
                idx = torch.cat([idx, next_id], dim=1)
            answers = [decode(row) for row in idx[:, self.prompt_len :].tolist()]
            results += [(int(a), int(b), ans) for (a, b), ans in zip(chunk, answers)]
        model.train(was_training)
        correct = sum(parse_answer(ans) == a + b for a, b, ans in results)
        return correct / len(results), results
