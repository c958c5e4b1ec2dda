"""What runs LayerNorm when the CUDA kernel does not: on a CPU, PyTorch's own kernels, where
they compute exactly toykernels' contract; anywhere else, the reference formulas.

`layernorm.layer_norm_forward` / `layer_norm_backward` call `forward_fallback` /
`backward_fallback` on (N, C) tensors when `backend.select` picks no extension. The contract
(see `layernorm`): statistics in fp32 (fp64 for fp64 input), parameter gradients summed in
fp32 and returned in the parameter's dtype. ATen's CPU LayerNorm meets it only with the
parameters in the dtypes worked out below; where it cannot (fp16/bf16 backward, an older torch
without the ops) the formulas of `reference` run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toykernels.reference import layer_norm_backward_ref, layer_norm_forward_ref

# PyTorch's own CPU LayerNorm (the kernels behind F.layer_norm), called without autograd. An older
# torch without them runs the reference formulas.
_HAS_ATEN_LAYER_NORM = hasattr(torch.ops.aten, "native_layer_norm") and hasattr(
    torch.ops.aten, "native_layer_norm_backward"
)
_ATEN_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _use_aten_forward(x: Tensor) -> bool:
    """True when ATen's CPU LayerNorm forward computes exactly our contract for x (see `_aten_params`)."""
    return _HAS_ATEN_LAYER_NORM and x.device.type == "cpu" and x.dtype in _ATEN_DTYPES


def _use_aten_backward(x: Tensor) -> bool:
    """True when ATen's CPU LayerNorm backward computes exactly our contract for x.

    NOTE: not for fp16/bf16 input. There ATen's dx is fine but its dweight/dbias are not
    reduced in fp32: over 1024 rows of bf16 they are off by ~3% (4096 rows: ~6%), with fp32
    parameters too, where the contract (and the CUDA kernel) sums in fp32. The formulas run.
    """
    return _use_aten_forward(x) and x.dtype in (torch.float32, torch.float64)


def _aten_params(x, weight, bias):
    """weight and bias as ATen's CPU LayerNorm forward needs them to return our statistics.

    ATen computes the statistics in float32 for fp16/bf16 input only on its mixed-precision path,
    which it takes when the parameters are float32; with fp16/bf16 parameters (or none) it
    rounds mean and rstd to the input's dtype. So for fp16/bf16 input the parameters go in as
    float32 (exact), and a missing weight becomes float32 ones (y = xhat * 1 is exact). Otherwise
    ATen wants one dtype for all: fp32 parameters of fp64 input go in as float64 (exact).
    """
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    param_dtype = torch.float32 if low_precision else x.dtype
    if weight is not None:
        weight = weight.to(param_dtype)
    elif low_precision:
        weight = torch.ones(x.shape[-1], dtype=param_dtype, device=x.device)
    if bias is not None:
        bias = bias.to(param_dtype)
    return weight, bias


def _forward_aten(x, weight, bias, eps):
    """The CPU forward on a (N, C) tensor: torch.ops.aten.native_layer_norm -> (y, mean, rstd)."""
    w, b = _aten_params(x, weight, bias)
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, b, float(eps))
    return y, mean.view(-1), rstd.view(-1)  # mean, rstd come as (N, 1)


def _backward_aten(dy, x, weight, mean, rstd, has_bias):
    """The CPU backward on fp32/fp64 (N, C) tensors: torch.ops.aten.native_layer_norm_backward.

    ATen wants the parameters and statistics in x's dtype (fp32 weight of fp64 input: an exact
    cast), and reads the bias only for dbias's shape and dtype, so a placeholder stands in for
    it (the raw backward is not given the bias).
    """
    w = weight.to(x.dtype) if weight is not None else None
    bias_like = x.new_empty(x.shape[-1]) if has_bias else None
    mask = [True, weight is not None, has_bias]  # which of dx, dweight, dbias to compute
    dx, dweight, dbias = torch.ops.aten.native_layer_norm_backward(
        dy, x, [x.shape[-1]], mean.to(x.dtype), rstd.to(x.dtype), w, bias_like, mask
    )
    param_dtype = weight.dtype if weight is not None else x.dtype
    dweight = dweight.to(param_dtype) if weight is not None else None
    dbias = dbias.to(param_dtype) if has_bias else None
    return dx, dweight, dbias


def forward_fallback(x, weight, bias, eps):
    """The forward off the CUDA kernel, on a (N, C) tensor: ATen's CPU kernel where it applies,
    else the reference formulas."""
    if _use_aten_forward(x):
        return _forward_aten(x, weight, bias, eps)
    return layer_norm_forward_ref(x, weight, bias, eps)


def backward_fallback(dy, x, weight, mean, rstd, has_bias):
    """The backward off the CUDA kernel, on (N, C) tensors: ATen's CPU kernel where it applies,
    else the reference formulas."""
    if _use_aten_backward(x):
        return _backward_aten(dy, x, weight, mean, rstd, has_bias)
    return layer_norm_backward_ref(dy, x, weight, mean, rstd, has_bias)
