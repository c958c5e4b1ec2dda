"""The addition demo's data and scoring: formats, held-out split, masks, and exact-match accuracy."""

import numpy as np
import pytest
import torch
from toygpt.addition import VOCAB, AdditionTask, decode, encode, format_problem, parse_answer
from toygpt.tokenizers import CharTokenizer


def test_problems_are_written_with_the_sum_reversed_and_padded():
    assert format_problem(123, 456, 3) == ("123+456=", "9750")
    assert format_problem(999, 999, 3) == ("999+999=", "8991")
    assert format_problem(1000, 2345, 4) == ("1000+2345=", "54330")
    assert parse_answer("9750") == 579 and parse_answer("97=0") is None
    # ids agree with the tokenizer saved in the demo's checkpoint
    assert CharTokenizer.from_text(VOCAB).encode("123+456=9750") == encode("123+456=9750")
    assert decode(encode("8+=0")) == "8+=0"


@pytest.mark.parametrize("digits", [3, 4])
def test_training_batches_never_hold_a_held_out_problem(digits):
    task = AdditionTask(digits=digits, n_test=500, seed=5)
    held = {(int(a), int(b)) for a, b in task.test_pairs}
    assert len(held) == 500
    lo, hi = 10 ** (digits - 1), 10**digits
    for step in range(20):
        x, y = task.batch(512, step)
        assert x.shape == y.shape == (512, task.seq_len - 1)
        text = [decode(row) + decode(row_y[-1:]) for row, row_y in zip(x.tolist(), y.tolist())]
        for t in text:
            a, rest = t.split("+")
            b, answer = rest.split("=")
            assert lo <= int(a) < hi and lo <= int(b) < hi and (int(a), int(b)) not in held
            assert parse_answer(answer) == int(a) + int(b)
        # only the answer's digits are scored: the prompt's targets are ignored (-1)
        assert (y[:, : task.prompt_len - 1] == -1).all() and (y[:, task.prompt_len - 1 :] >= 0).all()
    assert torch.equal(task.batch(8, 3)[0], task.batch(8, 3)[0])  # a function of the step
    assert not torch.equal(task.batch(8, 3)[0], task.batch(8, 4)[0])


class ColumnAdder(torch.nn.Module):
    """Computes the next answer digit by schoolbook addition from the ids: a reference for the
    scorer (a perfect model), optionally wrong on problems whose first operand is odd."""

    def __init__(self, task, wrong_on_odd=False):
        super().__init__()
        self.task, self.wrong_on_odd = task, wrong_on_odd

    def forward(self, idx, targets=None):
        logits = torch.zeros(idx.shape[0], idx.shape[1], len(VOCAB))
        d = self.task.digits
        for row, ids in enumerate(idx.tolist()):
            text = decode(ids)
            a, b = int(text[:d]), int(text[d + 1 : 2 * d + 1])
            done = len(text) - self.task.prompt_len
            answer = format_problem(a, b, d)[1]
            digit = answer[done] if done < len(answer) else "0"
            if self.wrong_on_odd and a % 2:
                digit = str((int(digit) + 1) % 10)
            logits[row, -1, VOCAB.index(digit)] = 1.0
        return logits, None


def test_evaluate_scores_exact_matches():
    task = AdditionTask(digits=3, n_test=200, seed=1)
    accuracy, results = task.evaluate(ColumnAdder(task), batch_size=64)
    assert accuracy == 1.0 and len(results) == 200
    assert all(parse_answer(ans) == a + b for a, b, ans in results)
    accuracy, _ = task.evaluate(ColumnAdder(task, wrong_on_odd=True), batch_size=64)
    assert accuracy == pytest.approx(np.mean(task.test_pairs[:, 0] % 2 == 0))


def test_the_demo_never_replaces_a_run_unasked(tmp_path, capsys):
    from toygpt import checkpoint, demo

    out = tmp_path / "run"
    small = ["--out", str(out), "--max-iters", "2", "--batch-size", "8", "--n-test", "8", "--no-progress"]
    assert demo.main(small) in (0, 1)  # 2 steps: far from the accuracy goal, but a run
    assert checkpoint.exists(out / "ckpt")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert demo.main(small) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and str(out) in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert demo.main(small + ["--overwrite"]) in (0, 1)
