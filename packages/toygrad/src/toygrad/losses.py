"""Loss functions on lists of `Value`s, each returning the mean over the batch as one Value.

- `mse_loss`: mean squared error, for regression.
- `max_margin_loss`: the hinge loss of SVMs, mean(relu(1 - y * score)) with y in {-1, +1}; written
  exactly as micrograd's demo writes it, so the numbers match.
- `binary_cross_entropy_with_logits`: for one score per sample and y in [0, 1]; takes the raw score
  (logit) and never computes sigmoid then log, which overflows or loses every digit for large |z|.
- `cross_entropy`: softmax cross-entropy for k classes, from the logits, via a stable logsumexp.

The stable forms are built from engine ops (softplus, logsumexp), so their gradients come from the
engine's rules; nothing here defines a gradient of its own.
"""

import numbers

from toygrad.engine import Value, add_n, logsumexp

__all__ = ["mse_loss", "max_margin_loss", "binary_cross_entropy_with_logits", "cross_entropy"]


def _check_batch(name, predictions, targets):
    predictions, targets = list(predictions), list(targets)
    if len(predictions) != len(targets):
        raise ValueError(
            f"{name}: {len(predictions)} predictions but {len(targets)} targets; they must match"
        )
    if not predictions:
        raise ValueError(f"{name}: empty batch (the mean of no losses is undefined)")
    return predictions, targets


def _mean(losses):
    # NOTE: sum * (1/n), not sum / n: micrograd's demo does this, and it keeps the numbers identical.
    return add_n(losses) * (1.0 / len(losses))


def mse_loss(predictions, targets):
    """mean((prediction - target)**2)."""
    predictions, targets = _check_batch("mse_loss", predictions, targets)
    return _mean([(p - t) ** 2 for p, t in zip(predictions, targets)])


def max_margin_loss(scores, labels):
    """mean(relu(1 - y * score)): zero once each sample is on its side with a margin of 1."""
    scores, labels = _check_batch("max_margin_loss", scores, labels)
    for y in labels:
        if y not in (-1, 1):
            raise ValueError(f"max_margin_loss: labels must be -1 or +1, got {y!r}")
    return _mean([(1 + -y * s).relu() for y, s in zip(labels, scores)])


def binary_cross_entropy_with_logits(logits, targets):
    """mean(-y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))) from the logits z.

    The loss is softplus(z) - y*z = softplus(-z) + (1 - y)*z. For y in {0, 1} one of the two forms
    adds two non-negative terms for a given sign of z, and the other subtracts two nearly equal
    ones; we pick the first, so the result keeps full precision even when it is tiny.
    """
    logits, targets = _check_batch("binary_cross_entropy_with_logits", logits, targets)
    losses = []
    for z, y in zip(logits, targets):
        if not isinstance(y, numbers.Real) or not 0 <= y <= 1:
            raise ValueError(f"binary_cross_entropy_with_logits: targets must be in [0, 1], got {y!r}")
        z = z if isinstance(z, Value) else Value(z)
        if z.data >= 0:
            losses.append((-z).softplus() + (1 - y) * z)
        else:
            losses.append(z.softplus() - y * z)
    return _mean(losses)


def cross_entropy(logits, targets):
    """mean(-log softmax(logits_i)[target_i]) for a batch of logit lists and class indices.

    -log softmax(z)[t] = logsumexp(z) - z[t]. Shifting every logit by z[t] first makes the target's
    entry exactly 0, so when the loss is tiny (the target dominates) it is not the difference of two
    large, nearly equal numbers.
    """
    logits, targets = _check_batch("cross_entropy", logits, targets)
    losses = []
    for row, t in zip(logits, targets):
        row = list(row)
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < len(row):
            raise ValueError(
                f"cross_entropy: target {t!r} is not a class index in [0, {len(row)})"
            )
        z_t = row[t]
        losses.append(logsumexp([z - z_t for z in row]))
    return _mean(losses)
