"""Fused LayerNorm (and residual-add + LayerNorm): the Python side, in four layers.

1. Raw forward/backward functions, no autograd: `layer_norm_forward`, `layer_norm_backward`,
   `add_layer_norm_forward`. They run the CUDA extension (csrc/layernorm.cu) when
   `backend.select` says so; otherwise the fallback (`_layernorm_fallback`): on a CPU,
   PyTorch's own LayerNorm kernels (`aten.native_layer_norm` and its backward, called without
   autograd), and anywhere else the same formulas written in PyTorch
   (`reference.layer_norm_forward_ref` / `_backward_ref`).
   toygrad.Tensor calls these directly.
2. torch custom ops (`toykernels::layer_norm_forward`, `::add_layer_norm_forward`, `::layer_norm_backward`)
   with fake (meta) and autograd registrations, so torch.compile(fullgraph=True) traces them.
3. The functional API, which validates its input: `layer_norm`, `add_layer_norm`. For tensors
   that are not on CUDA it calls F.layer_norm directly (see `backend.native_path`): PyTorch's
   native CPU kernel, differentiated by autograd, costs a few microseconds per call where the
   custom op with its Python formulas costs tens. The custom ops stay the CUDA path (and the
   path of forced `TOYKERNELS_BACKEND=cuda`), and toygrad.Tensor uses layer 1.
4. `LayerNorm`, a drop-in for torch.nn.LayerNorm over the last dimension.

The math, for one row x of width C (the statistics are fp32, or fp64 for fp64 input):
    mean = sum(x) / C,  rstd = 1 / sqrt(sum((x - mean)^2) / C + eps),  xhat = (x - mean) * rstd
    y = xhat * weight + bias
and the backward, with g = dy * weight:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dweight = sum over rows of dy * xhat,   dbias = sum over rows of dy
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toykernels import _autocast, backend
from toykernels._layernorm_fallback import backward_fallback, forward_fallback

backend.register_op("layer_norm", ["layernorm.cu", "layernorm_bindings.cpp"])

MAX_CUDA_WIDTH = 65536  # widest row the CUDA kernel takes; wider rows run the fallback
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# checks shared by every layer


def _check(x, weight, bias, eps, op="layer_norm"):
    """Reject bad input with an error that names the offending argument and value."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{op}: x is 0-d; it needs a last dimension to normalize over")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x.dtype is {x.dtype}; expected a floating-point dtype")
    C = x.shape[-1]
    if C == 0:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)}; its last dimension must be >= 1")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(p).__name__}")
        if tuple(p.shape) != (C,):
            raise ValueError(
                f"{op}: {name} has shape {tuple(p.shape)} but x's last dimension is {C}; "
                f"expected ({C},)"
            )
        if p.device != x.device:
            raise ValueError(f"{op}: {name} is on {p.device} but x is on {x.device}")
        if p.dtype not in (x.dtype, torch.float32):
            raise TypeError(
                f"{op}: {name}.dtype is {p.dtype}; expected x's dtype ({x.dtype}) or torch.float32"
            )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op}: eps must be a number > 0, got {eps!r}")


def _check_residual(x, residual, op="add_layer_norm", same_dtype=True):
    """residual must match x in shape and device, and in dtype where `same_dtype` (the raw
    functions and the custom ops; the functional API promotes as torch.add does)."""
    if not isinstance(residual, Tensor):
        raise TypeError(f"{op}: residual must be a torch.Tensor, got {type(residual).__name__}")
    if residual.shape != x.shape:
        raise ValueError(
            f"{op}: residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}"
        )
    if not residual.is_floating_point():
        raise TypeError(f"{op}: residual.dtype is {residual.dtype}; expected a floating-point dtype")
    if same_dtype and residual.dtype != x.dtype:
        raise TypeError(f"{op}: residual.dtype is {residual.dtype} but x.dtype is {x.dtype}")
    if residual.device != x.device:
        raise ValueError(f"{op}: residual is on {residual.device} but x is on {x.device}")


def _unsupported_reason(x: Tensor) -> str | None:
    """Why the CUDA kernel cannot take x (the fallback runs instead), or None."""
    if x.dtype not in _CUDA_DTYPES:
        return f"{x.dtype} is not supported by the CUDA kernel (float32, float16, bfloat16 are)"
    if x.shape[-1] > MAX_CUDA_WIDTH:
        return f"row width {x.shape[-1]} > {MAX_CUDA_WIDTH} is not supported by the CUDA kernel"
    return None


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics (mean, rstd) are fp32, except for fp64 input where fp32 would lose precision."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------
# layer 1: raw forward / backward, no autograd


def layer_norm_forward(x, weight, bias, eps):
    """LayerNorm over the last dim of x (..., C) -> (y, mean, rstd), no autograd.

    y has x's shape and dtype; mean and rstd have shape x.shape[:-1] and dtype float32
    (float64 for float64 input): they are what `layer_norm_backward` needs.
    Runs the CUDA kernel, or on a CPU PyTorch's own kernel, else the formulas of
    `reference.layer_norm_forward_ref`.
    """
    _check(x, weight, bias, eps)
    C = x.shape[-1]
    x2 = x.reshape(-1, C).contiguous()  # (N, C)
    ext = backend.select("layer_norm", x, unsupported=_unsupported_reason(x))
    if ext is None:
        y, mean, rstd = forward_fallback(x2, weight, bias, eps)
    else:
        y, mean, rstd = ext.layer_norm_forward(x2, weight, bias, float(eps))
    return y.view(x.shape), mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


def add_layer_norm_forward(x, residual, weight, bias, eps):
    """s = x + residual and y = LayerNorm(s) in one pass -> (s, y, mean, rstd), no autograd."""
    _check(x, weight, bias, eps, op="add_layer_norm")
    _check_residual(x, residual)
    C = x.shape[-1]
    x2 = x.reshape(-1, C).contiguous()  # (N, C)
    r2 = residual.reshape(-1, C).contiguous()  # (N, C)
    ext = backend.select("layer_norm", x, unsupported=_unsupported_reason(x))
    if ext is None:
        s = x2 + r2
        y, mean, rstd = forward_fallback(s, weight, bias, eps)
    else:
        s, y, mean, rstd = ext.add_layer_norm_forward(x2, r2, weight, bias, float(eps))
    stats_shape = x.shape[:-1]
    return s.view(x.shape), y.view(x.shape), mean.view(stats_shape), rstd.view(stats_shape)


def layer_norm_backward(dy, x, weight, mean, rstd, has_bias=True):
    """Gradients of LayerNorm -> (dx, dweight, dbias), no autograd.

    x is the forward's input (for add_layer_norm: s), mean/rstd the forward's statistics.
    dweight is None when weight is None; dbias is None when has_bias is False (the bias itself
    is not needed: dbias = sum of dy). dweight/dbias come in weight's dtype (x's without weight).
    """
    C = x.shape[-1]
    if dy.shape != x.shape:
        raise ValueError(f"layer_norm_backward: dy has shape {tuple(dy.shape)} but x has {tuple(x.shape)}")
    dy2 = dy.reshape(-1, C).contiguous()  # (N, C)
    x2 = x.reshape(-1, C).contiguous()  # (N, C)
    mean1 = mean.reshape(-1).contiguous()  # (N,)
    rstd1 = rstd.reshape(-1).contiguous()  # (N,)
    ext = backend.select("layer_norm", x, unsupported=_unsupported_reason(x))
    if ext is None:
        dx, dweight, dbias = backward_fallback(dy2.to(x.dtype), x2, weight, mean1, rstd1, has_bias)
    else:
        dx, dweight, dbias = ext.layer_norm_backward(dy2.to(x.dtype), x2, weight, mean1, rstd1, bool(has_bias))
        # the extension reduces the parameter gradients in fp32; hand them back in weight's dtype
        param_dtype = weight.dtype if weight is not None else x.dtype
        dweight = dweight.to(param_dtype) if weight is not None else None
        dbias = dbias.to(param_dtype) if has_bias else None
    return dx.view(x.shape), dweight, dbias


# ----------------------------------------------------------------------------------------------
# layer 2: custom ops, with fake (shape-only) and autograd registrations


@torch.library.custom_op("toykernels::layer_norm_forward", mutates_args=())
def _layer_norm_forward_op(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return layer_norm_forward(x, weight, bias, eps)


@_layer_norm_forward_op.register_fake
def _(x, weight, bias, eps):
    stat = _stat_dtype(x.dtype)
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=stat), x.new_empty(x.shape[:-1], dtype=stat)


@torch.library.custom_op("toykernels::add_layer_norm_forward", mutates_args=())
def _add_layer_norm_forward_op(
    x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return add_layer_norm_forward(x, residual, weight, bias, eps)


@_add_layer_norm_forward_op.register_fake
def _(x, residual, weight, bias, eps):
    stat = _stat_dtype(x.dtype)
    stats_shape = x.shape[:-1]
    return (
        x.new_empty(x.shape),
        x.new_empty(x.shape),
        x.new_empty(stats_shape, dtype=stat),
        x.new_empty(stats_shape, dtype=stat),
    )


@torch.library.custom_op("toykernels::layer_norm_backward", mutates_args=())
def _layer_norm_backward_op(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    dx, dweight, dbias = layer_norm_backward(dy, x, weight, mean, rstd, has_bias)
    # custom ops cannot return None: a 0-element tensor stands in for "no gradient"
    empty = x.new_empty(0)
    return dx, (dweight if dweight is not None else empty), (dbias if dbias is not None else empty.clone())


@_layer_norm_backward_op.register_fake
def _(dy, x, weight, mean, rstd, has_bias):
    C = x.shape[-1]
    param_dtype = weight.dtype if weight is not None else x.dtype
    dweight = x.new_empty(C if weight is not None else 0, dtype=param_dtype if weight is not None else x.dtype)
    dbias = x.new_empty(C if has_bias else 0, dtype=param_dtype if has_bias else x.dtype)
    return x.new_empty(x.shape), dweight, dbias


def _setup_layer_norm(ctx, inputs, output):
    x, weight, bias, eps = inputs
    y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    if any(ctx.needs_input_grad[:3]):  # save only when a gradient will be asked for
        ctx.save_for_backward(x, weight, mean, rstd)


def _backward_layer_norm(ctx, dy, dmean, drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = _layer_norm_backward_op(dy, x, weight, mean, rstd, ctx.has_bias)
    return (
        dx if ctx.needs_input_grad[0] else None,
        dweight if ctx.has_weight else None,
        dbias if ctx.has_bias else None,
        None,  # eps
    )


_layer_norm_forward_op.register_autograd(_backward_layer_norm, setup_context=_setup_layer_norm)


def _setup_add_layer_norm(ctx, inputs, output):
    x, residual, weight, bias, eps = inputs
    s, y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    if any(ctx.needs_input_grad[:4]):
        ctx.save_for_backward(s, weight, mean, rstd)


def _backward_add_layer_norm(ctx, ds, dy, dmean, drstd):
    s, weight, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = _layer_norm_backward_op(dy, s, weight, mean, rstd, ctx.has_bias)
    if ds is not None:
        dx = dx + ds  # s feeds both the LayerNorm and the next residual branch
    return (
        dx if ctx.needs_input_grad[0] else None,
        dx if ctx.needs_input_grad[1] else None,
        dweight if ctx.has_weight else None,
        dbias if ctx.has_bias else None,
        None,  # eps
    )


_add_layer_norm_forward_op.register_autograd(_backward_add_layer_norm, setup_context=_setup_add_layer_norm)


# Under CUDA autocast F.layer_norm is on the float32 list: it computes and returns float32 for
# float16/bfloat16 input. The custom ops do the same (see toykernels._autocast). On a CPU
# autocast leaves F.layer_norm alone, and the ops need no kernel there.
def _layer_norm_autocast(x, weight, bias, eps):
    return _layer_norm_forward_op(*_autocast.to_float32(x, weight, bias), eps)


def _add_layer_norm_autocast(x, residual, weight, bias, eps):
    """s = x + residual in the dtype torch.add gives; y = LayerNorm(s) in float32, as
    `s = x + residual; F.layer_norm(s, ...)` gives under autocast.

    The usual case is fused: a float32 residual stream plus a sublayer's bf16/fp16 output, so s
    is float32 and the sublayer's output is cast up (an explicit copy of it). Only where s itself
    is bf16/fp16 (a model cast to half precision, then autocast) do the add and a float32
    LayerNorm run one after the other.
    """
    weight, bias = _autocast.to_float32(weight, bias)
    s_dtype = torch.promote_types(x.dtype, residual.dtype)
    if s_dtype in _autocast.REDUCED:
        s = x + residual
        y, mean, rstd = _layer_norm_forward_op(s.float(), weight, bias, eps)
        return s, y, mean, rstd
    return _add_layer_norm_forward_op(x.to(s_dtype), residual.to(s_dtype), weight, bias, eps)


_autocast.register("layer_norm_forward", "cuda", _layer_norm_autocast)
_autocast.register("add_layer_norm_forward", "cuda", _add_layer_norm_autocast)


# ----------------------------------------------------------------------------------------------
# layer 3: the functional API


def _native_params(x, weight, bias):
    """weight and bias in the dtypes F.layer_norm accepts with x.

    Its CPU kernel takes fp16/bf16 input with fp32 parameters (the statistics are fp32 either
    way), but otherwise wants one dtype for all three; `_check` allows each parameter in x's
    dtype or fp32. The casts are differentiable: gradients come back in each parameter's dtype.
    """
    if (weight is None or weight.dtype == x.dtype) and (bias is None or bias.dtype == x.dtype):
        return weight, bias
    target = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return (
        weight.to(target) if weight is not None else None,
        bias.to(target) if bias is not None else None,
    )


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5):
    """LayerNorm over the last dimension, like F.layer_norm(x, (C,), weight, bias, eps)."""
    _check(x, weight, bias, eps)
    if backend.native_path("layer_norm", x):
        weight, bias = _native_params(x, weight, bias)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, float(eps))
    return _layer_norm_forward_op(x, weight, bias, float(eps))[0]


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5):
    """The pre-LN block's residual add fused with the next LayerNorm -> (s, y).

    s = x + residual (the new residual stream), y = layer_norm(s, weight, bias, eps).
    x and residual may differ in dtype: s gets the dtype torch.add gives them (a bf16 sublayer
    output plus a float32 residual stream is float32), and the other one is cast to it.
    """
    if isinstance(x, Tensor) and isinstance(residual, Tensor):
        _check_residual(x, residual, same_dtype=False)
        if x.is_floating_point() and x.dtype != residual.dtype:
            s_dtype = torch.promote_types(x.dtype, residual.dtype)
            x, residual = x.to(s_dtype), residual.to(s_dtype)  # differentiable casts
    _check(x, weight, bias, eps, op="add_layer_norm")
    _check_residual(x, residual)
    if backend.native_path("layer_norm", x):
        # off CUDA there is no pass over memory to save: the add and PyTorch's own LayerNorm
        s = x + residual
        weight, bias = _native_params(x, weight, bias)
        return s, F.layer_norm(s, (x.shape[-1],), weight, bias, float(eps))
    s, y, _, _ = _add_layer_norm_forward_op(x, residual, weight, bias, float(eps))
    return s, y


# ----------------------------------------------------------------------------------------------
# layer 4: the module


class LayerNorm(nn.Module):
    """Drop-in for torch.nn.LayerNorm(C, eps, bias=bias) over the last dimension (same state_dict keys)."""

    def __init__(self, C: int, eps: float = 1e-5, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if isinstance(C, bool) or not isinstance(C, int) or C < 1:
            raise ValueError(f"LayerNorm: C must be a positive int, got {C!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"LayerNorm: eps must be a number > 0, got {eps!r}")
        self.normalized_shape = (C,)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(C, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(C, device=device, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, bias={self.bias is not None}"
