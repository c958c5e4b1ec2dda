"""toygrad.losses and toygrad.optim against torch float64."""

import random

import pytest
from toygrad.engine import Value
from toygrad.losses import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    max_margin_loss,
    mse_loss,
)
from toygrad.optim import SGD, Adam

torch = pytest.importorskip("torch")
F = torch.nn.functional


def leaves(xs):
    return [Value(x) for x in xs], torch.tensor(xs, dtype=torch.float64, requires_grad=True)


def check(loss_v, loss_t, vs, ts):
    loss_v.backward()
    loss_t.backward()
    assert loss_v.data == pytest.approx(loss_t.item(), rel=1e-9, abs=1e-15)
    assert [v.grad for v in vs] == pytest.approx(ts.grad.tolist(), rel=1e-9, abs=1e-15)


def test_mse_matches_torch():
    rng = random.Random(1)
    preds, targets = [rng.gauss(0, 2) for _ in range(7)], [rng.gauss(0, 2) for _ in range(7)]
    vs, ts = leaves(preds)
    check(mse_loss(vs, targets), F.mse_loss(ts, torch.tensor(targets, dtype=torch.float64)), vs, ts)


def test_max_margin_matches_torch():
    rng = random.Random(2)
    scores = [rng.gauss(0, 2) for _ in range(9)]
    labels = [rng.choice([-1, 1]) for _ in range(9)]
    vs, ts = leaves(scores)
    expected = torch.relu(1 - torch.tensor(labels, dtype=torch.float64) * ts).mean()
    check(max_margin_loss(vs, labels), expected, vs, ts)


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_bce_with_logits_matches_torch(scale):
    rng = random.Random(3)
    logits = [scale * rng.gauss(0, 2) for _ in range(11)]
    targets = [rng.choice([0.0, 1.0, 0.3]) for _ in range(11)]
    vs, ts = leaves(logits)
    expected = F.binary_cross_entropy_with_logits(ts, torch.tensor(targets, dtype=torch.float64))
    check(binary_cross_entropy_with_logits(vs, targets), expected, vs, ts)


def test_bce_with_logits_is_stable_and_precise_at_large_logits():
    # Exact: loss = log1p(exp(-|z|)) for a confident right answer, |z| + that for a wrong one.
    import math

    for z, y, exact in ((40.0, 1, math.log1p(math.exp(-40.0))), (-40.0, 0, math.log1p(math.exp(-40.0))),
                        (800.0, 0, 800.0), (-800.0, 1, 800.0)):
        v = Value(z)
        loss = binary_cross_entropy_with_logits([v], [y])
        loss.backward()
        assert loss.data == pytest.approx(exact, rel=1e-12)
        assert v.grad == pytest.approx((1 / (1 + math.exp(-z)) if z > -700 else 0.0) - y, abs=1e-15)


def test_cross_entropy_matches_torch():
    rng = random.Random(4)
    batch, k = 5, 7
    logits = [[rng.gauss(0, 3) for _ in range(k)] for _ in range(batch)]
    targets = [rng.randrange(k) for _ in range(batch)]
    flat, ts = leaves([x for row in logits for x in row])
    rows = [flat[i * k : (i + 1) * k] for i in range(batch)]
    expected = F.cross_entropy(ts.view(batch, k), torch.tensor(targets))  # (batch, k) logits
    check(cross_entropy(rows, targets), expected, flat, ts)


def test_cross_entropy_is_stable_at_large_logits():
    v = [Value(1000.0), Value(-1000.0), Value(990.0)]
    loss = cross_entropy([v], [0])
    expected = F.cross_entropy(torch.tensor([[1000.0, -1000.0, 990.0]], dtype=torch.float64), torch.tensor([0]))
    assert loss.data == pytest.approx(expected.item(), rel=1e-9)


def test_losses_reject_bad_input():
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        mse_loss([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="labels must be -1 or \\+1, got 0"):
        max_margin_loss([Value(1.0)], [0])
    with pytest.raises(ValueError, match="targets must be in \\[0, 1\\], got 2"):
        binary_cross_entropy_with_logits([Value(1.0)], [2])
    with pytest.raises(ValueError, match="target 3 is not a class index in \\[0, 3\\)"):
        cross_entropy([[Value(1.0), Value(2.0), Value(3.0)]], [3])
    with pytest.raises(ValueError, match="empty batch"):
        mse_loss([], [])


def run_optimizer(ours_cls, torch_cls, kwargs, steps=6):
    """The same parameters and the same (fresh, random) gradient at each step, in both."""
    rng = random.Random(str(kwargs))
    init = [rng.gauss(0, 1) for _ in range(5)]
    params = [Value(x) for x in init]
    t = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    ours, theirs = ours_cls(params, **kwargs), torch_cls([t], **kwargs)
    for _ in range(steps):
        grads = [rng.gauss(0, 1) for _ in range(5)]
        ours.zero_grad()
        theirs.zero_grad()
        for p, g in zip(params, grads):
            p.grad = g
        t.grad = torch.tensor(grads, dtype=torch.float64)
        ours.step()
        theirs.step()
    assert [p.data for p in params] == pytest.approx(t.tolist(), rel=1e-9, abs=1e-12)
    assert [p.data for p in params] != pytest.approx(init)  # it moved


@pytest.mark.parametrize("kwargs", [
    {"lr": 0.1}, {"lr": 0.1, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.01},
])
def test_sgd_matches_torch(kwargs):
    run_optimizer(SGD, torch.optim.SGD, kwargs)


@pytest.mark.parametrize("kwargs", [{"lr": 0.01}, {"lr": 0.1, "betas": (0.8, 0.99), "weight_decay": 0.1}])
def test_adam_matches_torch(kwargs):
    run_optimizer(Adam, torch.optim.Adam, kwargs)


def test_optimizers_reject_bad_settings():
    p = [Value(1.0)]
    with pytest.raises(ValueError, match="lr must be a number >= 0, got -1"):
        SGD(p, lr=-1)
    with pytest.raises(ValueError, match="betas\\[1\\] must be in \\[0, 1\\), got 1.0"):
        Adam(p, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="parameters must be Values, got float"):
        SGD([1.0])
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
