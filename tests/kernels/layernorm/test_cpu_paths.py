"""LayerNorm's raw functions on a CPU against the reference formulas they replaced, both against float64.

On a CPU, `layer_norm_forward` / `layer_norm_backward` run `aten.native_layer_norm` and its
backward without autograd (toygrad.Tensor calls them with its own). `toykernels.reference` keeps
the explicit formulas (`layer_norm_forward_ref` / `layer_norm_backward_ref`): the specification
of the CUDA kernels, and the fallback wherever ATen's kernels do not apply. Here both paths, on
fresh random inputs, must give the same contract (shapes, dtypes, fp32 statistics, contiguous
outputs) and values within a per-dtype tolerance of float64 autograd computed from the same
(rounded) inputs; and the feature checks must send an older torch to the formulas.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import assert_near, stat_dtype  # tests/kernels/checks.py, loaded by conftest.py
from toykernels import _layernorm_fallback, layernorm
from toykernels.layernorm import add_layer_norm_forward, layer_norm_backward, layer_norm_forward
from toykernels.reference import (
    layer_norm_backward_ref,
    layer_norm_forward_ref,
)

EPS = 1e-5
LOW_PRECISION = (torch.float16, torch.bfloat16)
# error allowed against float64, relative to the largest reference value: a few units in the
# last place of the output dtype (statistics and accumulations are fp32 for fp16/bf16)
LN_TOL = {torch.float64: 1e-12, torch.float32: 4e-6, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}
STAT_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}


# ----------------------------------------------------------------------------------------------
# LayerNorm

LN_SHAPES = [(1, 1), (3, 7), (2, 5, 129), (0, 16), (5, 1600), (2, 4097), (2048, 24)]  # last: many rows
AFFINE = {"weight+bias": (True, True), "weight": (True, False), "bias": (False, True), "none": (False, False)}
# (x dtype, parameter dtype): parameters in x's dtype, or fp32 master weights
LN_DTYPES = [
    (torch.float32, torch.float32), (torch.float64, torch.float64), (torch.float64, torch.float32),
    (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16), (torch.float16, torch.float32),
]  # fmt: skip


def _layer_norm_case(shape, x_dtype, param_dtype, has_weight, has_bias):
    C = shape[-1]
    x = (torch.randn(shape) * 3 + 1).to(x_dtype)
    weight = (1 + 0.5 * torch.randn(C)).to(param_dtype) if has_weight else None
    bias = torch.randn(C).to(param_dtype) if has_bias else None
    dy = torch.randn(shape).to(x_dtype)
    return x, weight, bias, dy


def _layer_norm64(x, weight, bias, dy):
    """float64 autograd of F.layer_norm on the same values -> (y, mean, rstd, dx, dweight, dbias)."""
    C = x.shape[-1]
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    y = F.layer_norm(leaves[0], (C,), leaves[1], leaves[2], EPS)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, wanted, dy.double()))
    dx = next(grads)
    dweight = next(grads) if weight is not None else None
    dbias = next(grads) if bias is not None else None
    x64 = x.double()
    mean = x64.mean(-1)
    rstd = torch.rsqrt((x64 - mean.unsqueeze(-1)).square().mean(-1) + EPS)  # biased variance
    return y.detach(), mean, rstd, dx, dweight, dbias


@pytest.mark.parametrize("affine", sorted(AFFINE))
@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("x_dtype,param_dtype", LN_DTYPES)
def test_layer_norm_cpu_path_and_formulas_agree_with_float64(x_dtype, param_dtype, shape, affine):
    has_weight, has_bias = AFFINE[affine]
    x, weight, bias, dy = _layer_norm_case(shape, x_dtype, param_dtype, has_weight, has_bias)
    C = shape[-1]
    want = _layer_norm64(x, weight, bias, dy)

    y, mean, rstd = layer_norm_forward(x, weight, bias, EPS)  # ATen's CPU kernels
    dx, dweight, dbias = layer_norm_backward(dy, x, weight, mean, rstd, has_bias)
    cpu_path = (y, mean, rstd, dx, dweight, dbias)
    x2, dy2 = x.reshape(-1, C), dy.reshape(-1, C)  # (N, C): the formulas' layout
    y_r, mean_r, rstd_r = layer_norm_forward_ref(x2, weight, bias, EPS)
    grads_r = layer_norm_backward_ref(dy2, x2, weight, mean_r, rstd_r, has_bias)
    formulas = (y_r.view(shape), mean_r.view(shape[:-1]), rstd_r.view(shape[:-1]), grads_r[0].view(shape), *grads_r[1:])

    stat = stat_dtype(x_dtype)
    grad_param_dtype = param_dtype if has_weight else x_dtype  # the contract: weight's dtype, else x's
    expected_dtypes = (x_dtype, stat, stat, x_dtype, grad_param_dtype, grad_param_dtype)
    # NOTE: rounding in x - mean is magnified by rstd (~316 for a row of width 1, where xhat is
    # exactly 0 and both paths return noise around it): allow that much on top of the tolerance.
    xhat_noise = 4 * torch.finfo(stat).eps * want[2].max().item() * x.double().abs().max().item() if x.numel() else 0.0
    dy_scale = dy.double().abs().max().item() * (weight.double().abs().max().item() if has_weight else 1.0) if x.numel() else 0.0
    n_rows = x2.shape[0]
    floors = (xhat_noise * 2, 0.0, 0.0, xhat_noise * dy_scale * 4, xhat_noise * dy_scale * n_rows, 0.0)
    names = ("y", "mean", "rstd", "dx", "dweight", "dbias")
    for name, got, ref, w64, dtype, floor in zip(names, cpu_path, formulas, want, expected_dtypes, floors):
        if w64 is None:
            assert got is None and ref is None, name
            continue
        # the outputs' own rounding counts too: fp32 dweight of fp64 input
        tol = STAT_TOL[x_dtype] if name in ("mean", "rstd") else max(LN_TOL[x_dtype], LN_TOL[dtype])
        for path, t in (("ATen", got), ("formulas", ref)):
            assert t.dtype == dtype, f"{path} {name}: dtype {t.dtype}, expected {dtype}"
            assert_near(f"{path} {name}", t, w64, tol, floor)
        assert_near(f"ATen vs formulas {name}", got, ref.double(), 2 * tol, 2 * floor)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("weight_dtype", ["x", "fp32", None])
def test_low_precision_statistics_are_fp32_not_rounded(dtype, weight_dtype):
    # ATen rounds mean and rstd to fp16/bf16 unless its parameters are fp32: the contract (and
    # the CUDA kernel) says fp32 statistics, exact to fp32 rounding
    x = (torch.randn(8, 96) * 2 + 3).to(dtype)
    weight = {"x": torch.randn(96).to(dtype), "fp32": torch.randn(96), None: None}[weight_dtype]
    y, mean, rstd = layer_norm_forward(x, weight, None, EPS)
    assert mean.dtype == rstd.dtype == torch.float32
    x64 = x.double()
    assert_near("mean", mean, x64.mean(-1), 1e-6)
    assert_near("rstd", rstd, torch.rsqrt(x64.var(-1, unbiased=False) + EPS), 1e-6)
    dy = torch.randn(8, 96).to(dtype)
    dx, dweight, dbias = layer_norm_backward(dy, x, weight, mean, rstd, has_bias=True)
    assert dx.dtype == dtype and dbias.dtype == (weight.dtype if weight is not None else dtype)
    assert (dweight is None) == (weight is None)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_parameter_gradients_are_summed_in_fp32(dtype):
    # ATen's own CPU backward sums dweight/dbias of fp16/bf16 input with errors of several percent
    # over thousands of rows; the contract (and the CUDA kernel) sums in fp32: the formulas run
    N, C = 4096, 48
    x, weight, bias, dy = _layer_norm_case((N, C), dtype, torch.float32, True, True)
    _, mean, rstd = layer_norm_forward(x, weight, bias, EPS)
    _, dweight, dbias = layer_norm_backward(dy, x, weight, mean, rstd, has_bias=True)
    want = _layer_norm64(x, weight, bias, dy)
    assert dweight.dtype == dbias.dtype == torch.float32
    assert_near("dweight", dweight, want[4], 1e-5)
    assert_near("dbias", dbias, want[5], 1e-5)


def test_layer_norm_cpu_path_is_atens_kernel_and_old_torch_gets_the_formulas(monkeypatch):
    x, weight, bias = torch.randn(6, 50), torch.randn(50), torch.randn(50)
    y, mean, rstd = layer_norm_forward(x, weight, bias, EPS)
    y_aten, mean_aten, rstd_aten = torch.ops.aten.native_layer_norm(x, [50], weight, bias, EPS)
    assert torch.equal(y, y_aten) and torch.equal(mean, mean_aten.view(-1)) and torch.equal(rstd, rstd_aten.view(-1))
    dy = torch.randn(6, 50)
    dx, dweight, dbias = layer_norm_backward(dy, x, weight, mean, rstd)
    dx_aten, dweight_aten, dbias_aten = torch.ops.aten.native_layer_norm_backward(
        dy, x, [50], mean_aten, rstd_aten, weight, bias, [True, True, True]
    )
    assert torch.equal(dx, dx_aten) and torch.equal(dweight, dweight_aten) and torch.equal(dbias, dbias_aten)

    # a torch without the ATen ops (the feature check fails) runs the reference formulas
    monkeypatch.setattr(_layernorm_fallback, "_HAS_ATEN_LAYER_NORM", False)
    y, mean, rstd = layer_norm_forward(x, weight, bias, EPS)
    y_r, mean_r, rstd_r = layer_norm_forward_ref(x, weight, bias, EPS)
    assert torch.equal(y, y_r) and torch.equal(mean, mean_r) and torch.equal(rstd, rstd_r)
    grads = layer_norm_backward(dy, x, weight, mean, rstd)
    for got, ref in zip(grads, layer_norm_backward_ref(dy, x, weight, mean_r, rstd_r, True)):
        assert torch.equal(got, ref)


def test_add_layer_norm_cpu_path():
    x, residual = torch.randn(2, 3, 40), torch.randn(2, 3, 40)
    weight, bias = torch.randn(40), torch.randn(40)
    s, y, mean, rstd = add_layer_norm_forward(x, residual, weight, bias, EPS)
    assert torch.equal(s, x + residual)
    y2, mean2, rstd2 = layer_norm_forward(x + residual, weight, bias, EPS)
    assert torch.equal(y, y2) and torch.equal(mean, mean2) and torch.equal(rstd, rstd2)
    assert mean.shape == (2, 3)


def test_layer_norm_custom_ops_opcheck_on_the_low_precision_cpu_path():
    # the parameter casts and the ones weight that put ATen on its fp32-statistics path
    x = torch.randn(3, 5, 24).to(torch.bfloat16).requires_grad_()
    weight = torch.randn(24).to(torch.bfloat16).requires_grad_()
    torch.library.opcheck(layernorm._layer_norm_forward_op, (x, weight, None, 1e-5))
    torch.library.opcheck(layernorm._layer_norm_forward_op, (x.detach().half(), None, None, 1e-5))
    _, mean, rstd = layer_norm_forward(x.detach(), None, None, 1e-5)
    dy = torch.randn(3, 5, 24).to(torch.bfloat16)
    torch.library.opcheck(layernorm._layer_norm_backward_op, (dy, x.detach(), None, mean, rstd, True))


def test_statistics_in_another_dtype_are_cast_not_refused():
    # statistics handed back in another dtype than the contract's are cast, not refused
    x, weight, dy = torch.randn(4, 24), torch.randn(24), torch.randn(4, 24)
    _, mean, rstd = layer_norm_forward(x, weight, None, EPS)
    dx, dweight, _ = layer_norm_backward(dy, x, weight, mean.double(), rstd.double(), has_bias=False)
    dx_r, dweight_r, _ = layer_norm_backward(dy, x, weight, mean, rstd, has_bias=False)
    assert torch.equal(dx, dx_r) and torch.equal(dweight, dweight_r)
