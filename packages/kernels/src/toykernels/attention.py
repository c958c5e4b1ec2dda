"""Fused causal self-attention: raw forward/backward, the custom op, and `causal_attention`.

The CUDA kernels (csrc/attention.cu) follow FlashAttention-2 (Dao, 2023): the forward walks
over key tiles with an online softmax and saves the per-row logsumexp; the backward recomputes
the probabilities from q, k and that logsumexp instead of storing the T x T matrix.
`reference.attention_forward_ref` / `attention_backward_ref` run the same formulas on whole
matrices, so they can be read as the specification of what the kernels compute. Off CUDA, the
raw functions run PyTorch's own CPU flash attention (the kernels behind scaled_dot_product_attention,
called without autograd) where it applies, and those formulas elsewhere.

The causal mask is aligned to the bottom right (query i sees keys 0 .. i + Tk - Tq), which is
what a KV cache needs; see `toykernels.reference.causal_mask`.

Layers, in order: raw functions (no autograd; toygrad.Tensor calls these) -> custom op
`toykernels::attention_forward` with fake and autograd registrations -> `causal_attention`.
Off CUDA, `causal_attention` skips the custom op and calls scaled_dot_product_attention with
the bottom-right mask (see `backend.native_path`), with or without grad.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from toykernels import _autocast, backend
from toykernels.reference import (
    attention_backward_ref,
    attention_forward_ref,
    causal_attention_ref,
    causal_mask,
)

OP_NAME = "attention"
SOURCES = ["attention.cu", "attention_bindings.cpp"]
SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_BATCH_HEADS = 65535  # the kernels put B * H on the grid's y dimension

backend.register_op(OP_NAME, SOURCES)


def _unsupported_reason(q: torch.Tensor) -> str | None:
    """Why the CUDA kernel cannot run these inputs, or None when it can."""
    if q.numel() == 0:  # the kernels put B * H on the grid, so B, H or Tq = 0 launches nothing
        return f"empty input {tuple(q.shape)}"
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


def _kernel_addressable(t: torch.Tensor) -> bool:
    """Whether the kernels can address this (B, H, T, D) layout in place: unit stride along D and
    16-byte aligned row starts (see attention_bindings.cpp, kernel_addressable; the data pointer,
    which a fake tensor lacks, is checked there)."""
    if t.shape[3] > 1 and t.stride(3) != 1:
        return False
    return all(t.shape[d] <= 1 or t.stride(d) * t.element_size() % 16 == 0 for d in range(3))


def _empty_output(like: torch.Tensor) -> torch.Tensor:
    """An output (out, dq, dk or dv) for input `like` with the strides the raw functions return.

    On CUDA the layout the binding allocates (empty_output there): torch.empty_like, which
    follows like's memory order (q transposed out of a fused QKV projection gives an output laid
    out (B, T, H, D)), or contiguous where the kernels could not write that layout; the torch
    fallback's result is copied into it. Elsewhere contiguous (the CPU paths). The fake
    registrations use it, so fake and real strides agree."""
    if like.device.type == "cuda":
        out = torch.empty_like(like)
        if _kernel_addressable(out):
            return out
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


def _as_output(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A torch-path result with the strides of _empty_output(like): contiguous off CUDA; on
    CUDA a copy only for an input the kernel could not run and whose layout is not contiguous."""
    if like.device.type != "cuda":
        return t.contiguous()
    want = _empty_output(like)
    if all(n <= 1 or a == b for n, a, b in zip(t.shape, t.stride(), want.stride())):
        return t
    return want.copy_(t)


# PyTorch's own CPU flash attention (what scaled_dot_product_attention runs on a CPU), called
# without autograd. It saves the same logsumexp as ours (natural log of the scaled, masked scores,
# (B, H, Tq), fp32 or fp64 for fp64), so its forward and backward pair with each other as ours do.
# Feature-checked: an older torch without them runs the reference formulas; one whose ops take no
# attn_mask runs them for Tq < Tk (its is_causal aligns the mask top-left, we need bottom-right).
_FLASH_CPU = "_scaled_dot_product_flash_attention_for_cpu"
_HAS_ATEN_FLASH = hasattr(torch.ops.aten, _FLASH_CPU) and hasattr(torch.ops.aten, _FLASH_CPU + "_backward")
_ATEN_FLASH_TAKES_MASK = _HAS_ATEN_FLASH and all(
    any(arg.name == "attn_mask" for arg in getattr(torch.ops.aten, name).default._schema.arguments)
    for name in (_FLASH_CPU, _FLASH_CPU + "_backward")
)
_ATEN_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _aten_mask(q, k, v):
    """(is_causal, attn_mask) that make ATen's CPU flash attention apply our bottom-right causal
    mask, or None when it cannot run these inputs (then the reference formulas do)."""
    if not (_HAS_ATEN_FLASH and q.device.type == "cpu" and q.dtype in _ATEN_DTYPES):
        return None
    if not q.dtype == k.dtype == v.dtype:  # the formulas compute in one dtype; ATen would refuse
        return None
    if q.numel() == 0 or k.numel() == 0:
        return None
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tq == Tk:
        return True, None  # top-left and bottom-right alignment coincide
    if Tq == 1:
        return False, None  # a single query is the last position and sees every key
    if Tq > Tk or not _ATEN_FLASH_TAKES_MASK:
        return None
    # an additive mask in q's dtype (the op wants that, not a boolean one): 0 allowed, -inf not
    allowed = causal_mask(Tq, Tk, device=q.device)  # (Tq, Tk)
    additive = torch.zeros(Tq, Tk, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    return False, additive


# ----------------------------------------------------------------------------------------------
# 1. raw functions, no autograd


def attention_forward(q, k, v, scale):
    """out = softmax(mask(q k^T * scale)) v; returns (out, lse).

    q: (B, H, Tq, D), k and v: (B, H, Tk, D) with Tq <= Tk. lse (B, H, Tq) is the logsumexp of
    each row of scaled scores, in float32 (float64 for float64 inputs): the backward needs it.
    Runs the CUDA kernel, or on a CPU PyTorch's own flash attention, else the formulas of
    `reference.attention_forward_ref`. q, k, v may be strided views (D stride 1 to avoid a copy);
    on CUDA out follows q's memory order (see `_empty_output`), on a CPU it is contiguous.
    """
    ext = _select(q, k, v)
    if ext is not None:
        # strided views (a transposed fused QKV projection, a narrowed KV cache) go in as they
        # are: the kernels take strides, and the binding copies only what they cannot address
        out, lse = ext.attention_forward(q, k, v, float(scale))
        return out, lse
    aten_mask = _aten_mask(q, k, v)
    if aten_mask is None or not math.isfinite(scale):  # ATen zeroes what a NaN scale makes NaN
        out, lse = attention_forward_ref(q, k, v, scale)
        return _as_output(out, q), lse
    is_causal, attn_mask = aten_mask
    out, lse = getattr(torch.ops.aten, _FLASH_CPU)(
        q.contiguous(), k.contiguous(), v.contiguous(), 0.0, is_causal, attn_mask=attn_mask, scale=float(scale)
    )
    # NOTE: ATen lays lse (B, H, Tq) out as (B, Tq, H), and with a mask out (B, H, Tq, D) as
    # (B, Tq, H, D); on a CPU ours are contiguous (no copy when they already are)
    out, lse = out.contiguous(), lse.contiguous()
    if _may_have_zeroed_rows(out):
        nan_rows = _zeroed_nan_rows(out, q, k)  # (B, H, Tq, 1)
        out = out.masked_fill(nan_rows, float("nan"))
        lse = lse.masked_fill(nan_rows.squeeze(-1), float("nan"))  # the backward then gives NaN too
    return out, lse


def attention_backward(dout, q, k, v, out, lse, scale):
    """Gradients (dq, dk, dv) of attention_forward, FlashAttention-2 style.

    P is recomputed from q, k and lse (never stored); the formulas are in
    `reference.attention_backward_ref`, which runs where neither the CUDA kernel nor PyTorch's
    CPU flash attention does. On CUDA dq, dk, dv follow the memory order of q, k, v.
    """
    ext = _select(q, k, v)
    if ext is not None:  # strided inputs as they are, as in attention_forward
        dq, dk, dv = ext.attention_backward(dout, q, k, v, out, lse, float(scale))
        return dq, dk, dv
    aten_mask = _aten_mask(q, k, v)
    if aten_mask is None:
        dq, dk, dv = attention_backward_ref(dout, q, k, v, out, lse, scale)
        return _as_output(dq, q), _as_output(dk, k), _as_output(dv, v)
    is_causal, attn_mask = aten_mask
    dq, dk, dv = getattr(torch.ops.aten, _FLASH_CPU + "_backward")(
        dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(),
        lse.contiguous(), 0.0, is_causal, attn_mask=attn_mask, scale=float(scale),
    )
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


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
    return _empty_output(q), q.new_empty(q.shape[:-1], dtype=lse_dtype)


@torch.library.custom_op("toykernels::attention_backward", mutates_args=())
def _attention_backward_op(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(dout, q, k, v, out, lse, scale)


@_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, scale):
    return _empty_output(q), _empty_output(k), _empty_output(v)


def _setup_attention(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.scale = scale
    if any(ctx.needs_input_grad[:3]):
        ctx.save_for_backward(q, k, v, out, lse)


def _backward_attention(ctx, dout, dlse):
    # NOTE: lse is an auxiliary output for the backward; its gradient (dlse) is not propagated.
    q, k, v, out, lse = ctx.saved_tensors
    # dout as autograd hands it over (often a transposed view): the CPU paths take any strides,
    # and the CUDA binding copies it only when the kernels cannot address it
    dq, dk, dv = _attention_backward_op(dout, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_attention_forward_op.register_autograd(_backward_attention, setup_context=_setup_attention)


# Under autocast F.scaled_dot_product_attention is on the lower-precision list, on CUDA and on
# a CPU alike: q, k and v are cast to the autocast dtype. The custom op does the same (see
# toykernels._autocast); q, k and v of different dtypes are then one dtype.
def _autocast_kernel(device_type):
    def attention_autocast(q, k, v, scale):
        q, k, v = _autocast.to_lower_precision(device_type, q, k, v)
        if not q.dtype == k.dtype == v.dtype:  # float64 is not cast: SDPA refuses the mix too
            raise TypeError(f"causal_attention: dtypes differ under autocast: q {q.dtype}, k {k.dtype}, v {v.dtype}")
        return _attention_forward_op(q, k, v, scale)

    return attention_autocast


for _device_type in ("cuda", "cpu"):
    _autocast.register("attention_forward", _device_type, _autocast_kernel(_device_type))


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
    # as scaled_dot_product_attention: one dtype, unless autocast casts them to one
    autocast = q.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(q.device.type)
    if not (q.dtype == k.dtype == v.dtype) and not autocast:
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
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        # float(scale) would raise for 'a' without naming the argument
        raise TypeError(f"causal_attention: scale must be a number or None, got {type(scale).__name__} {scale!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if backend.native_path(OP_NAME, q):
        # Off CUDA, with or without grad: PyTorch's own fused attention, differentiated by
        # autograd, is faster than the custom op's whole-matrix formulas.
        return _sdpa_bottom_right(q, k, v, scale)
    out, _ = _attention_forward_op(q, k, v, scale)
    return out


def _sdpa_bottom_right(q, k, v, scale):
    """scaled_dot_product_attention with the bottom-right causal mask, NaN where the reference
    formulas give NaN.

    is_causal=True aligns its mask to the top left, which is the same thing only when Tq == Tk.
    A single query (a decoding step) is the last position and sees every key: no mask at all.
    Otherwise (prefill after a cache) an explicit boolean mask.
    """
    if not math.isfinite(scale):  # every score is NaN or infinite: the formulas say what that gives
        return causal_attention_ref(q, k, v, scale)
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tq == Tk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    elif Tq == 1:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        mask = causal_mask(Tq, Tk, device=q.device)  # (Tq, Tk), True where attention is allowed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if torch.compiler.is_compiling() or _may_have_zeroed_rows(out):
        # traced: no branch on the data (fullgraph), and the compiler fuses the check
        out = out.masked_fill(_zeroed_nan_rows(out, q, k), float("nan"))
    return out


# NOTE: PyTorch's CPU attention (scaled_dot_product_attention and the ATen flash op behind it)
# returns a row of zeros, with a logsumexp of 0, where every score of the row is NaN, i.e. where
# q's row holds a NaN or every key the row sees does (or a NaN scale, checked in Python). The
# formulas give NaN there, and so must every path: a NaN in must not come out as a plausible 0.
# A partly NaN row already comes out NaN. Finding the all-NaN rows exactly would read all of k,
# as much as a decoding step's attention itself; instead, a row of zeros is the sign: a zero
# first element of some row is rare in real activations, so the common case costs one strided
# compare over B * H * Tq numbers. Such a row is NaN when q's row is not finite or key 0 (which
# every row sees) is not: were only some of its keys NaN, the row would have come out NaN.


def _may_have_zeroed_rows(out: torch.Tensor) -> bool:
    """Whether some output row might be one that PyTorch zeroed for a NaN row of scores."""
    return not bool(out[..., 0].all())  # one reduction, no temporary: 4 us at (1, 12, 1, 64)


def _zeroed_nan_rows(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, H, Tq, 1) True for rows of out that PyTorch zeroed where the formulas give NaN."""
    zero = (out == 0).all(dim=-1, keepdim=True)  # (B, H, Tq, 1)
    q_bad = ~torch.isfinite(q).all(dim=-1, keepdim=True)  # (B, H, Tq, 1)
    k0_bad = ~torch.isfinite(k[:, :, :1]).all(dim=-1, keepdim=True)  # (B, H, 1, 1)
    return zero & (q_bad | k0_bad)
