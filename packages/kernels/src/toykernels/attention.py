"""Fused causal self-attention: raw forward/backward, the custom op, and `causal_attention`.

The CUDA kernels (csrc/attention.cu) follow FlashAttention-2 (Dao, 2023): the forward walks
over key tiles with an online softmax and saves the per-row logsumexp; the backward recomputes
the probabilities from q, k and that logsumexp instead of storing the T x T matrix.
The torch path below runs the same formulas on whole matrices, so it can be read as the
specification of what the kernels compute.

The causal mask is aligned to the bottom right (query i sees keys 0 .. i + Tk - Tq), which is
what a KV cache needs; see `toykernels.reference.causal_mask`.

Layers, in order: raw functions (no autograd; toygrad.Tensor calls these) -> custom op
`toykernels::attention_forward` with fake and autograd registrations -> `causal_attention`.
Off CUDA, `causal_attention` skips the custom op and calls scaled_dot_product_attention with
the bottom-right mask (see `backend.native_path`), with or without grad.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toykernels import backend
from toykernels.reference import causal_mask

OP_NAME = "attention"
SOURCES = ["attention.cu", "attention_bindings.cpp"]
SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_BATCH_HEADS = 65535  # the kernels put B * H on the grid's y dimension

backend.register_op(OP_NAME, SOURCES)


def _unsupported_reason(q: torch.Tensor) -> str | None:
    """Why the CUDA kernel cannot run these inputs, or None when it can."""
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} not supported (float16, bfloat16, float32 are)"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[-1]} not supported (32, 64, 128 are)"
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f"B * H = {q.shape[0] * q.shape[1]} > {MAX_BATCH_HEADS} not supported by the kernel"
    return None


def _select(*tensors: torch.Tensor):
    """The built CUDA extension to run, or None for the torch path."""
    return backend.select(OP_NAME, *tensors, unsupported=_unsupported_reason(tensors[0]))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 so that gradcheck can use the torch path; all else runs in fp32,
    # like the kernels' accumulators.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scores(q, k, scale):
    """Scaled, masked scores in the compute dtype: (B, H, Tq, Tk), -inf above the diagonal."""
    cdt = _compute_dtype(q.dtype)
    s = (q.to(cdt) @ k.to(cdt).transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    return s.masked_fill(~mask, float("-inf"))


# ----------------------------------------------------------------------------------------------
# 1. raw functions, no autograd


def attention_forward(q, k, v, scale):
    """out = softmax(mask(q k^T * scale)) v; returns (out, lse).

    q: (B, H, Tq, D), k and v: (B, H, Tk, D) with Tq <= Tk. lse (B, H, Tq) is the logsumexp of
    each row of scaled scores, in float32 (float64 for float64 inputs): the backward needs it.
    """
    ext = _select(q, k, v)
    if ext is not None:
        out, lse = ext.attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), float(scale))
        return out, lse
    s = _scores(q, k, scale)
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Tq); finite: every query sees key 0
    p = torch.exp(s - lse.unsqueeze(-1))  # (B, H, Tq, Tk)
    out = (p @ v.to(p.dtype)).to(q.dtype)  # (B, H, Tq, D)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out, lse.to(lse_dtype)


def attention_backward(dout, q, k, v, out, lse, scale):
    """Gradients (dq, dk, dv) of attention_forward, FlashAttention-2 style.

    P is recomputed from q, k and lse (never stored). With dP = dO v^T and
    delta_i = sum_d dO_id O_id (= sum_j P_ij dP_ij), the softmax backward is dS = P * (dP - delta).
    """
    ext = _select(q, k, v)
    if ext is not None:
        dq, dk, dv = ext.attention_backward(
            dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(),
            out.contiguous(), lse.contiguous(), float(scale),
        )
        return dq, dk, dv
    cdt = _compute_dtype(q.dtype)
    p = torch.exp(_scores(q, k, scale) - lse.to(cdt).unsqueeze(-1))  # (B, H, Tq, Tk)
    do, qc, kc, vc = dout.to(cdt), q.to(cdt), k.to(cdt), v.to(cdt)
    delta = (do * out.to(cdt)).sum(dim=-1, keepdim=True)  # (B, H, Tq, 1)
    dv = p.transpose(-2, -1) @ do  # (B, H, Tk, D)
    dp = do @ vc.transpose(-2, -1)  # (B, H, Tq, Tk)
    ds = p * (dp - delta)  # (B, H, Tq, Tk)
    dq = (ds @ kc) * scale  # (B, H, Tq, D)
    dk = (ds.transpose(-2, -1) @ qc) * scale  # (B, H, Tk, D)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ----------------------------------------------------------------------------------------------
# 2. the custom op: opaque to torch.compile, differentiable through register_autograd


@torch.library.custom_op("toykernels::attention_forward", mutates_args=())
def _attention_forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_forward(q, k, v, scale)


@_attention_forward_op.register_fake
def _(q, k, v, scale):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=lse_dtype)


@torch.library.custom_op("toykernels::attention_backward", mutates_args=())
def _attention_backward_op(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(dout, q, k, v, out, lse, scale)


@_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.scale = scale
    if any(ctx.needs_input_grad[:3]):
        ctx.save_for_backward(q, k, v, out, lse)


def _backward(ctx, dout, dlse):
    # NOTE: lse is an auxiliary output for the backward; its gradient (dlse) is not propagated.
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(dout.contiguous(), q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_attention_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# 3. the functional API


def _check_inputs(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"causal_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"causal_attention: {name} must have shape (B, H, T, D), got {tuple(t.shape)} "
                f"(rank {t.dim()})"
            )
        if not t.is_floating_point():
            raise TypeError(f"causal_attention: {name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"causal_attention: dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"causal_attention: devices differ: q {q.device}, k {k.device}, v {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"causal_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    B, H, Tq, D = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
        raise ValueError(
            f"causal_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in "
            "batch, heads and head dim (B, H, *, D)"
        )
    Tk = k.shape[2]
    if Tq == 0 or Tk == 0 or D == 0:
        raise ValueError(f"causal_attention: empty input, q {tuple(q.shape)}, k {tuple(k.shape)}")
    if Tq > Tk:
        raise ValueError(
            f"causal_attention: query length {Tq} > key length {Tk}; the bottom-right causal mask "
            "needs Tq <= Tk (queries are the last Tq positions of the sequence)"
        )


def causal_attention(q, k, v, scale=None):
    """Causal self-attention softmax(q k^T * scale + mask) v for (B, H, T, D) tensors.

    k and v may be longer than q (Tq <= Tk, e.g. decoding with a KV cache): the mask is aligned
    to the bottom right, so query i attends keys 0 .. i + (Tk - Tq). scale defaults to 1/sqrt(D).
    Runs the CUDA kernel when it can (see `toykernels.backend_info()`), else PyTorch.

    >>> import torch
    >>> q, k, v = torch.randn(1, 2, 3, 32), torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 32)
    >>> causal_attention(q, k, v).shape
    torch.Size([1, 2, 3, 32])
    """
    _check_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if backend.native_path(OP_NAME, q):
        # Off CUDA, with or without grad: PyTorch's own fused attention, differentiated by
        # autograd, is faster than the custom op's whole-matrix formulas.
        return _sdpa_bottom_right(q, k, v, scale)
    out, _ = _attention_forward_op(q, k, v, scale)
    return out


def _sdpa_bottom_right(q, k, v, scale):
    """scaled_dot_product_attention with the bottom-right causal mask.

    is_causal=True aligns its mask to the top left, which is the same thing only when Tq == Tk.
    A single query (a decoding step) is the last position and sees every key: no mask at all.
    Otherwise (prefill after a cache) an explicit boolean mask.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if Tq == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    mask = causal_mask(Tq, Tk, device=q.device)  # (Tq, Tk), True where attention is allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
