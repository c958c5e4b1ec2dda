"""LayerNorm on every machine: the fallback against torch.nn.LayerNorm (values and all
gradients, fp64 and fp32), input errors, the raw functions, opcheck and torch.compile."""

import pytest
import torch
import torch.nn.functional as F
import toykernels
from toykernels.layernorm import (
    _add_layer_norm_op,
    _layer_norm_bwd_op,
    _layer_norm_op,
    add_layer_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)

SHAPES = [(1, 1), (3, 7), (2, 5, 129), (4, 1023)]
TOL = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-4)}


def _params(C, dtype, affine):
    if not affine:
        return None, None
    weight = torch.randn(C, dtype=dtype).requires_grad_()
    bias = torch.randn(C, dtype=dtype).requires_grad_()
    return weight, bias


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(dtype, shape, affine):
    C = shape[-1]
    x = (torch.randn(shape, dtype=dtype) * 3 + 1).requires_grad_()
    weight, bias = _params(C, dtype, affine)
    y = toykernels.layer_norm(x, weight, bias, eps=1e-5)
    y_ref = F.layer_norm(x, (C,), weight, bias, eps=1e-5)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])

    dy = torch.randn_like(y)
    inputs = [x] + ([weight, bias] if affine else [])
    grads = torch.autograd.grad(y, inputs, dy)
    grads_ref = torch.autograd.grad(y_ref, inputs, dy)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_module_is_a_drop_in_for_nn_layernorm(dtype):
    C = 48
    ref = torch.nn.LayerNorm(C, eps=1e-6, dtype=dtype)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    mine = toykernels.LayerNorm(C, eps=1e-6).to(dtype)
    assert set(mine.state_dict()) == set(ref.state_dict()) == {"weight", "bias"}
    mine.load_state_dict(ref.state_dict())

    x = torch.randn(2, 9, C, dtype=dtype)
    y, y_ref = mine(x), ref(x)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(mine.weight.grad, ref.weight.grad, **TOL[dtype])
    torch.testing.assert_close(mine.bias.grad, ref.bias.grad, **TOL[dtype])

    no_bias = toykernels.LayerNorm(C, bias=False)
    assert no_bias.bias is None and set(no_bias.state_dict()) == {"weight"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("affine", [True, False])
def test_add_layer_norm_matches_torch(dtype, affine):
    C = 33
    x = torch.randn(3, 4, C, dtype=dtype, requires_grad=True)
    residual = torch.randn(3, 4, C, dtype=dtype, requires_grad=True)
    weight, bias = _params(C, dtype, affine)
    s, y = toykernels.add_layer_norm(x, residual, weight, bias)
    s_ref = x + residual
    y_ref = F.layer_norm(s_ref, (C,), weight, bias)
    torch.testing.assert_close(s, s_ref, **TOL[dtype])
    torch.testing.assert_close(y, y_ref, **TOL[dtype])

    # both outputs carry gradient: s is the next residual stream, y the next sublayer's input
    ds, dy = torch.randn_like(s), torch.randn_like(y)
    inputs = [x, residual] + ([weight, bias] if affine else [])
    grads = torch.autograd.grad((s, y), inputs, (ds, dy))
    grads_ref = torch.autograd.grad((s_ref, y_ref), inputs, (ds, dy))
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, **TOL[dtype])


def test_raw_functions_return_statistics_and_explicit_gradients():
    x = torch.randn(2, 3, 17, dtype=torch.float64)
    weight, bias = torch.randn(17, dtype=torch.float64), torch.randn(17, dtype=torch.float64)
    y, mean, rstd = layer_norm_forward(x, weight, bias, 1e-5)
    assert mean.shape == rstd.shape == (2, 3) and mean.dtype == torch.float64
    torch.testing.assert_close(mean, x.mean(-1))
    torch.testing.assert_close(rstd, torch.rsqrt(x.var(-1, unbiased=False) + 1e-5))

    dy = torch.randn_like(y)
    dx, dweight, dbias = layer_norm_backward(dy, x, weight, mean, rstd)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, weight, bias))
    want = torch.autograd.grad(F.layer_norm(xr, (17,), wr, br), (xr, wr, br), dy)
    for got, ref in zip((dx, dweight, dbias), want):
        torch.testing.assert_close(got, ref, **TOL[torch.float64])
    assert layer_norm_backward(dy, x, None, mean, rstd, has_bias=False)[1:] == (None, None)

    s, y2, _, _ = add_layer_norm_forward(x, x, weight, bias, 1e-5)
    torch.testing.assert_close(s, 2 * x)
    torch.testing.assert_close(y2, F.layer_norm(2 * x, (17,), weight, bias))


def test_low_precision_fallback_keeps_fp32_statistics():
    x = torch.randn(8, 64).to(torch.bfloat16)
    weight = torch.randn(64)  # fp32 weights with bf16 activations: allowed
    y, mean, rstd = layer_norm_forward(x, weight, None, 1e-5)
    assert y.dtype == torch.bfloat16 and mean.dtype == rstd.dtype == torch.float32
    want = F.layer_norm(x.double(), (64,), weight.double())
    assert (y.double() - want).abs().max() < 0.05


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: toykernels.layer_norm(torch.tensor(1.0)), ValueError, "0-d"),
        (lambda: toykernels.layer_norm(torch.randn(2, 0)), ValueError, "last dimension"),
        (lambda: toykernels.layer_norm(torch.ones(2, 4, dtype=torch.long)), TypeError, "floating"),
        (lambda: toykernels.layer_norm(torch.randn(2, 4), torch.ones(5)), ValueError, r"weight has shape \(5,\).*4"),
        (lambda: toykernels.layer_norm(torch.randn(2, 4), None, torch.ones(2, 2)), ValueError, "bias has shape"),
        (lambda: toykernels.layer_norm(torch.randn(2, 4).double(), torch.ones(4).half()), TypeError, "weight.dtype"),
        (lambda: toykernels.layer_norm(torch.randn(2, 4), torch.ones(4, device="meta")), ValueError, "weight is on meta"),
        (lambda: toykernels.layer_norm(torch.randn(2, 4), eps=0.0), ValueError, "eps must be"),
        (lambda: toykernels.layer_norm(torch.randn(2, 4), eps=-1e-5), ValueError, "-1e-05"),
        (lambda: toykernels.add_layer_norm(torch.randn(2, 4), torch.randn(2, 5), None, None), ValueError, "residual has shape"),
        (lambda: toykernels.add_layer_norm(torch.randn(2, 4), torch.randn(2, 4).double(), None, None), TypeError, "residual.dtype"),
        (lambda: toykernels.LayerNorm(0), ValueError, "C must be a positive int"),
        (lambda: toykernels.LayerNorm(8, eps=0), ValueError, "eps must be"),
    ],
)  # fmt: skip
def test_bad_input_is_rejected_with_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_opcheck_passes_for_every_op():
    x = torch.randn(3, 5, 8, requires_grad=True)
    residual = torch.randn(3, 5, 8, requires_grad=True)
    weight, bias = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    torch.library.opcheck(_layer_norm_op, (x, weight, bias, 1e-5))
    torch.library.opcheck(_layer_norm_op, (x, None, None, 1e-5))
    torch.library.opcheck(_add_layer_norm_op, (x, residual, weight, bias, 1e-5))
    torch.library.opcheck(_add_layer_norm_op, (x, residual, weight, None, 1e-5))
    _, mean, rstd = layer_norm_forward(x.detach(), weight.detach(), bias.detach(), 1e-5)
    dy = torch.randn(3, 5, 8)
    torch.library.opcheck(_layer_norm_bwd_op, (dy, x.detach(), weight.detach(), mean, rstd, True))
    torch.library.opcheck(_layer_norm_bwd_op, (dy, x.detach(), None, mean, rstd, False))


class _PreLNBlock(torch.nn.Module):
    """The residual pattern the fused op is for: s = x + f(x); y = LN(s)."""

    def __init__(self, C):
        super().__init__()
        self.ln_1 = toykernels.LayerNorm(C)
        self.fc = torch.nn.Linear(C, C)
        self.ln_2 = toykernels.LayerNorm(C)

    def forward(self, x):
        h = self.fc(self.ln_1(x))
        s, y = toykernels.add_layer_norm(x, h, self.ln_2.weight, self.ln_2.bias)
        return s + y


def test_torch_compile_fullgraph_on_cpu():
    torch.manual_seed(0)
    block = _PreLNBlock(16)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 3, 16, requires_grad=True)
    out = compiled(x)
    out_eager = block(x)
    torch.testing.assert_close(out, out_eager)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    (g_eager,) = torch.autograd.grad(out_eager.square().sum(), x)
    torch.testing.assert_close(g, g_eager)
