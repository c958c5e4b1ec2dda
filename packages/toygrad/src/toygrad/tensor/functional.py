"""Neural-network ops on `Tensor`s, each a single graph node with its own backward rule.

Composite ops (softmax, cross-entropy, linear, LayerNorm, attention) could be built from the
primitives in tensor.py, and the gradient would come out the same; written as one node each,
the backward is the short closed form (derived in docs/tensor-autograd.md) instead of a chain of
temporaries. `layer_norm` and `causal_attention` call toykernels' raw forward/backward
functions: the fused CUDA kernels on a GPU, ATen's LayerNorm and flash-attention kernels on a
CPU (toykernels.reference keeps the formulas).
"""

from __future__ import annotations

import math

import torch
from toykernels import attention as _attention
from toykernels import layernorm as _layernorm

from toygrad.tensor.tensor import Tensor

__all__ = [
    "relu", "tanh", "gelu", "softmax", "log_softmax", "cross_entropy", "dropout", "linear",
    "embedding", "layer_norm", "causal_attention",
]


def relu(x: Tensor) -> Tensor:
    return x.relu()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def gelu(x: Tensor) -> Tensor:
    return x.gelu()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    y = torch.softmax(x.data, dim=dim)
    out = Tensor._result(y, (x,), "softmax")

    def _backward(grad):
        # dx_i = y_i (g_i - sum_j g_j y_j): the Jacobian diag(y) - y y^T applied to g
        x._accum(y * (grad - (grad * y).sum(dim=dim, keepdim=True)))

    return Tensor._attach(out, _backward)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    y = torch.log_softmax(x.data, dim=dim)
    out = Tensor._result(y, (x,), "log_softmax")

    def _backward(grad):
        # y_i = x_i - logsumexp(x)  =>  dx_i = g_i - softmax(x)_i sum_j g_j
        x._accum(grad - torch.exp(y) * grad.sum(dim=dim, keepdim=True))

    return Tensor._attach(out, _backward)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy of logits (..., V) against integer targets (...), as F.cross_entropy.

    Targets equal to `ignore_index` contribute neither loss nor gradient (nanoGPT passes -1).
    """
    targets = targets.data if isinstance(targets, Tensor) else torch.as_tensor(targets, device=logits.device)
    V = logits.shape[-1]
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: logits {tuple(logits.shape)} need targets of shape "
            f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"cross_entropy: targets must be integer class indices, got {targets.dtype}")
    z = logits.data.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    valid = t != ignore_index
    if bool(((t < 0) | (t >= V))[valid].any()):
        bad = t[valid & ((t < 0) | (t >= V))][0].item()
        raise ValueError(f"cross_entropy: target {bad} out of range for {V} classes")
    n_valid = valid.sum()
    safe_t = torch.where(valid, t, 0)  # any index will do for ignored rows; they are masked
    logp = torch.log_softmax(z, dim=-1)  # (N, V)
    nll = -logp.gather(1, safe_t.unsqueeze(1)).squeeze(1)  # (N,)
    loss = (nll * valid).sum() / n_valid  # 0/0 = nan when every target is ignored, as torch
    out = Tensor._result(loss.to(logits.dtype), (logits,), "cross_entropy")

    def _backward(grad):
        # d(loss)/dz = (softmax(z) - onehot(t)) / n_valid on the counted rows, 0 on ignored ones
        dz = torch.exp(logp)
        dz[torch.arange(len(t), device=dz.device), safe_t] -= 1
        dz.mul_(grad / n_valid).masked_fill_(~valid.unsqueeze(1), 0.0)
        logits._accum(dz.reshape(logits.shape))

    return Tensor._attach(out, _backward)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    mask = (torch.rand_like(x.data) >= p).to(x.dtype) / (1.0 - p)
    out = Tensor._result(x.data * mask, (x,), "dropout")

    def _backward(grad):
        x._accum(grad * mask)

    return Tensor._attach(out, _backward)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b for x (..., in), W (out, in), b (out,), as torch.nn.functional.linear."""
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"linear: input {tuple(x.shape)} has {x.shape[-1]} features but weight "
            f"{tuple(weight.shape)} expects {weight.shape[-1]}"
        )
    xd, w = x.data, weight.data
    y = torch.nn.functional.linear(xd, w, None if bias is None else bias.data)
    children = (x, weight) if bias is None else (x, weight, bias)
    out = Tensor._result(y, children, "linear")

    def _backward(grad):
        g2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
        if x.requires_grad:
            x._accum(grad @ w)  # (..., in)
        if weight.requires_grad:
            weight._accum(g2.mT @ xd.reshape(-1, xd.shape[-1]))  # (out, in)
        if bias is not None and bias.requires_grad:
            bias._accum(g2.sum(dim=0))  # (out,)

    return Tensor._attach(out, _backward)


def embedding(idx, weight: Tensor) -> Tensor:
    """Rows of weight (num_embeddings, dim) picked by integer idx (...) -> (..., dim)."""
    idx = idx.data if isinstance(idx, Tensor) else torch.as_tensor(idx, device=weight.device)
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"embedding: indices must be integers, got {idx.dtype}")
    n = weight.shape[0]
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0].item()
        raise ValueError(f"embedding: index {bad} out of range for {n} embeddings")
    out = Tensor._result(weight.data[idx], (weight,), "embedding")

    def _backward(grad):
        # a row picked k times receives the sum of k gradients
        dw = torch.zeros_like(weight.data)
        dw.index_add_(0, idx.reshape(-1), grad.reshape(-1, weight.shape[1]))
        weight._accum(dw)

    return Tensor._attach(out, _backward)


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim through toykernels' fused forward and backward."""
    w = None if weight is None else weight.data
    b = None if bias is None else bias.data
    y, mean, rstd = _layernorm.layer_norm_forward(x.data, w, b, eps)
    children = tuple(t for t in (x, weight, bias) if t is not None)
    out = Tensor._result(y, children, "layer_norm")
    xd = x.data

    def _backward(grad):
        # the formulas: docs/tensor-autograd.md "LayerNorm"; kernel: csrc/layernorm.cu
        dx, dw, db = _layernorm.layer_norm_backward(grad, xd, w, mean, rstd, b is not None)
        x._accum(dx)
        if weight is not None:
            weight._accum(dw)
        if bias is not None:
            bias._accum(db)

    return Tensor._attach(out, _backward)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(mask(q k^T * scale)) v on (B, H, T, D), via toykernels' fused forward/backward.

    The T x T attention matrix is not saved: the backward recomputes it from q, k and the
    per-row logsumexp, as FlashAttention does.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"causal_attention: {name} must be (B, H, T, D), got {tuple(t.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1] or k.shape != v.shape:
        raise ValueError(
            f"causal_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
            "must agree in (B, H, *, D), and k and v must match"
        )
    if q.shape[2] > k.shape[2]:
        raise ValueError(
            f"causal_attention: query length {q.shape[2]} > key length {k.shape[2]} "
            f"(q {tuple(q.shape)}, k {tuple(k.shape)}); the bottom-right causal mask needs Tq <= Tk"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    # NOTE: q, k, v usually arrive as transposed slices of one (B, T, 3, nh, hs) buffer. On a
    # CPU the batched matmuls inside run ~15% faster on contiguous operands than on strided
    # ones, which outweighs the copy; the CUDA kernel takes the strides, so it gets them as they are.
    if q.data.is_cuda:
        qd, kd, vd = q.data, k.data, v.data
    else:
        qd, kd, vd = q.data.contiguous(), k.data.contiguous(), v.data.contiguous()
    o, lse = _attention.attention_forward(qd, kd, vd, scale)
    out = Tensor._result(o, (q, k, v), "causal_attention")

    def _backward(grad):
        # the gradient comes back through transpose(1, 2): strided, like q, k, v above
        dq, dk, dv = _attention.attention_backward(grad if grad.is_cuda else grad.contiguous(),
                                                   qd, kd, vd, o, lse, scale)
        q._accum(dq)
        k._accum(dk)
        v._accum(dv)

    return Tensor._attach(out, _backward)
