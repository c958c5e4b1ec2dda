"""LayerNorm on every machine: the public API (PyTorch's native op off CUDA) and the custom ops
(the path CUDA tensors take; on a CPU the raw functions underneath run ATen's LayerNorm kernels
without autograd), each against reference.py's explicit formulas in float64 (values and all
gradients, fp64 and fp32), within twice the error of the same formulas run in the tested
dtype; input errors, the raw functions, opcheck and torch.compile. The explicit formulas of
reference.py are held against float64 and against ATen's kernels in test_cpu_paths.py."""

import pytest
import torch
import torch.nn.functional as F
import toykernels
from toykernels.layernorm import (
    _add_layer_norm_forward_op,
    _layer_norm_backward_op,
    _layer_norm_forward_op,
    add_layer_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)
from toykernels.reference import layer_norm_backward_ref, layer_norm_forward_ref

SHAPES = [(1, 1), (3, 7), (2, 5, 129), (4, 1023), (0, 16)]
TOL = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-4)}
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-5}
EPS = 1e-5

# The two ways into LayerNorm off CUDA: the public functions (F.layer_norm underneath) and the
# custom ops called directly (their registered backward, the path CUDA tensors take).
LAYER_NORM = {
    "api": lambda x, weight, bias: toykernels.layer_norm(x, weight, bias, eps=EPS),
    "custom_op": lambda x, weight, bias: torch.ops.toykernels.layer_norm_forward(x, weight, bias, EPS)[0],
}
ADD_LAYER_NORM = {
    "api": lambda x, residual, weight, bias: toykernels.add_layer_norm(x, residual, weight, bias, eps=EPS),
    "custom_op": lambda x, residual, weight, bias: tuple(
        torch.ops.toykernels.add_layer_norm_forward(x, residual, weight, bias, EPS)[:2]
    ),
}


def _params(C, dtype, affine):
    if not affine:
        return None, None
    weight = torch.randn(C, dtype=dtype).requires_grad_()
    bias = torch.randn(C, dtype=dtype).requires_grad_()
    return weight, bias


def _formulas(x, weight, bias, dy, dtype):
    """LayerNorm's value and gradients (dx, dweight, dbias) by reference.py's explicit formulas
    (no ATen LayerNorm, no autograd), computed in `dtype` from x, weight, bias and dy.

    NOTE: off CUDA the public API *is* ATen's LayerNorm, so neither the float64 reference nor
    the yardstick of the same precision may be ATen's op: then the API would be compared with
    itself and the test could not fail."""
    C = x.shape[-1]
    x2 = x.detach().reshape(-1, C).to(dtype)
    w = None if weight is None else weight.detach().to(dtype)
    b = None if bias is None else bias.detach().to(dtype)
    y, mean, rstd = layer_norm_forward_ref(x2, w, b, EPS)
    dyf = dy.detach().reshape(-1, C).to(dtype)
    dx, dw, db = layer_norm_backward_ref(dyf, x2, w, mean, rstd, b is not None)
    grads = [dx.reshape(x.shape)] + ([dw, db] if weight is not None else [])
    return y.reshape(x.shape), grads


def _cancellation_scales(x, weight, dy):
    """Floors' scales for (dx, dweight), the sizes of the terms that cancel in them.

    xhat = (x - mean) * rstd cancels in x - mean, so its rounding error is rstd * |x| units of
    the last place: for a row of width 1 xhat and dx are exactly 0, while ATen's fp32 results
    are noise of rstd ~ 316 times the input's last place. A floor relative to |dx| or |dweight|
    alone would fail on that noise; one relative to these terms does not.
    dx's terms: rstd * |dy * weight|; dweight's: the column sums of |dy| * rstd * |x|."""
    if x.numel() == 0:
        return 0.0, 0.0
    C = x.shape[-1]
    x64 = x.detach().double().reshape(-1, C)
    rstd = torch.rsqrt(x64.var(-1, unbiased=False, keepdim=True) + EPS)
    dy64 = dy.detach().double().reshape(-1, C)
    g = dy64 * (weight.detach().double() if weight is not None else 1.0)
    dx_scale = (rstd * g.abs()).max().item()
    dweight_scale = (dy64.abs() * rstd * x64.abs()).sum(0).max().item()
    return dx_scale, dweight_scale


def assert_close_to_reference(name, got, ref64, baseline, scale=None):
    """got within twice the yardstick's error in got's dtype (baseline), plus a small floor
    relative to `scale` (default: the reference's largest value; for dx and dweight,
    `_cancellation_scales`)."""
    assert got.shape == ref64.shape and got.dtype == baseline.dtype, name
    err = (got.double() - ref64).abs().max().item() if got.numel() else 0.0
    baseline_err = (baseline.double() - ref64).abs().max().item() if got.numel() else 0.0
    if scale is None:
        scale = ref64.abs().max().item() if got.numel() else 0.0
    limit = 2 * baseline_err + FLOOR[got.dtype] * max(1.0, scale)
    assert err <= limit, f"{name}: max error {err:.3g} > {limit:.3g} (torch's own error {baseline_err:.3g})"


@pytest.mark.parametrize("path", sorted(LAYER_NORM))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_nn_layernorm_in_float64(path, dtype, shape, affine):
    C = shape[-1]
    x = (torch.randn(shape, dtype=dtype) * 3 + 1).requires_grad_()
    weight, bias = _params(C, dtype, affine)
    y = LAYER_NORM[path](x, weight, bias)
    dy = torch.randn_like(y)
    inputs = [x] + ([weight, bias] if affine else [])
    grads = torch.autograd.grad(y, inputs, dy)

    y64, grads64 = _formulas(x, weight, bias, dy, torch.float64)
    y_t, grads_t = _formulas(x, weight, bias, dy, dtype)  # the formulas in dtype: the yardstick

    assert_close_to_reference("y", y, y64, y_t)
    dx_scale, dweight_scale = _cancellation_scales(x, weight, dy)
    scales = [dx_scale, dweight_scale, None]
    for name, got, want, baseline, scale in zip(("dx", "dweight", "dbias"), grads, grads64, grads_t, scales):
        assert_close_to_reference(name, got, want, baseline, scale)


def test_public_api_runs_torch_native_ops_on_cpu_and_custom_ops_do_not():
    # off CUDA the public functions hand autograd PyTorch's own LayerNorm; the custom ops stay
    x = torch.randn(2, 3, 8, requires_grad=True)
    weight, bias = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    assert type(toykernels.layer_norm(x, weight, bias).grad_fn).__name__ == "NativeLayerNormBackward0"
    s, y = toykernels.add_layer_norm(x, x, weight, bias)
    assert type(y.grad_fn).__name__ == "NativeLayerNormBackward0"
    assert type(s.grad_fn).__name__ == "AddBackward0"
    y_op = torch.ops.toykernels.layer_norm_forward(x, weight, bias, EPS)[0]
    assert "toykernels_layer_norm_forward" in type(y_op.grad_fn).__name__
    with torch.no_grad():
        assert toykernels.layer_norm(x, weight, bias).grad_fn is None


@pytest.mark.parametrize("path", sorted(LAYER_NORM))
def test_non_contiguous_input(path):
    base = torch.randn(4, 131, 3, dtype=torch.float64)
    x = base.transpose(1, 2).requires_grad_()  # (4, 3, 131), rows not contiguous
    weight, bias = _params(131, torch.float64, affine=True)
    y = LAYER_NORM[path](x, weight, bias)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    y64, grads64 = _formulas(x, weight, bias, dy, torch.float64)
    torch.testing.assert_close(y, y64, **TOL[torch.float64])
    for got, want in zip(grads, grads64):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("x_dtype, param_dtype", [
    (torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float64, torch.float32),
    (torch.bfloat16, torch.bfloat16),
])  # fmt: skip
@pytest.mark.parametrize("path", sorted(LAYER_NORM))
def test_mixed_parameter_dtypes(path, x_dtype, param_dtype):
    # fp32 master weights with low-precision activations (and with fp64 input): y in x's dtype,
    # each gradient in its own tensor's dtype
    C = 40
    x = torch.randn(6, C).to(x_dtype).requires_grad_()
    weight = (1 + 0.5 * torch.randn(C)).to(param_dtype).requires_grad_()
    bias = torch.randn(C).to(param_dtype).requires_grad_()
    y = LAYER_NORM[path](x, weight, bias)
    assert y.dtype == x_dtype
    dy = torch.randn(6, C).to(x_dtype)
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    assert [g.dtype for g in grads] == [x_dtype, param_dtype, param_dtype]
    leaves64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y64 = F.layer_norm(leaves64[0], (C,), leaves64[1], leaves64[2], EPS)
    grads64 = torch.autograd.grad(y64, leaves64, dy.double())
    tol = 1e-9 if x_dtype == torch.float64 and param_dtype == torch.float64 else 0.05
    for name, got, want in zip(("y", "dx", "dweight", "dbias"), (y, *grads), (y64, *grads64)):
        rel = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1)).item()
        assert rel < tol, f"{name}: relative error {rel:.3g}"


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


@pytest.mark.parametrize("path", sorted(ADD_LAYER_NORM))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("affine", [True, False])
def test_add_layer_norm_matches_nn_layernorm_in_float64(path, dtype, affine):
    C = 33
    x = torch.randn(3, 4, C, dtype=dtype, requires_grad=True)
    residual = torch.randn(3, 4, C, dtype=dtype, requires_grad=True)
    weight, bias = _params(C, dtype, affine)
    s, y = ADD_LAYER_NORM[path](x, residual, weight, bias)

    s_t = x + residual
    assert torch.equal(s, s_t), "s must be x + residual rounded once to x's dtype"

    # both outputs carry gradient: s is the next residual stream, y the next sublayer's input;
    # d/dx = d/dresidual = ds + LayerNorm's dx (of dy at s)
    ds, dy = torch.randn_like(s), torch.randn_like(y)
    inputs = [x, residual] + ([weight, bias] if affine else [])
    grads = torch.autograd.grad((s, y), inputs, (ds, dy))
    s64 = x.detach().double() + residual.detach().double()
    y64, (dx64, *dparams64) = _formulas(s64, weight, bias, dy, torch.float64)
    y_t, (dx_t, *dparams_t) = _formulas(s_t, weight, bias, dy, dtype)  # the formulas in dtype: the yardstick
    assert_close_to_reference("y", y, y64, y_t)
    grads64 = [ds.double() + dx64, ds.double() + dx64, *dparams64]
    grads_t = [ds + dx_t, ds + dx_t, *dparams_t]
    dx_scale, dweight_scale = _cancellation_scales(s_t, weight, dy)
    scales = [dx_scale, dx_scale, dweight_scale, None]
    for name, got, want, baseline, scale in zip(("dx", "dresidual", "dweight", "dbias"), grads, grads64, grads_t, scales):
        assert_close_to_reference(name, got, want, baseline, scale)


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
        (lambda: toykernels.add_layer_norm(torch.randn(2, 4), torch.ones(2, 4, dtype=torch.long), None, None), TypeError, "residual.dtype is torch.int64"),
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
    torch.library.opcheck(_layer_norm_forward_op, (x, weight, bias, 1e-5))
    torch.library.opcheck(_layer_norm_forward_op, (x, None, None, 1e-5))
    torch.library.opcheck(_add_layer_norm_forward_op, (x, residual, weight, bias, 1e-5))
    torch.library.opcheck(_add_layer_norm_forward_op, (x, residual, weight, None, 1e-5))
    _, mean, rstd = layer_norm_forward(x.detach(), weight.detach(), bias.detach(), 1e-5)
    dy = torch.randn(3, 5, 8)
    torch.library.opcheck(_layer_norm_backward_op, (dy, x.detach(), weight.detach(), mean, rstd, True))
    torch.library.opcheck(_layer_norm_backward_op, (dy, x.detach(), None, mean, rstd, False))


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


class _PreLNBlockCustomOps(torch.nn.Module):
    """The same block through the custom ops, the way CUDA tensors go."""

    def __init__(self, C):
        super().__init__()
        self.block = _PreLNBlock(C)

    def forward(self, x):
        b = self.block
        h = b.fc(torch.ops.toykernels.layer_norm_forward(x, b.ln_1.weight, b.ln_1.bias, b.ln_1.eps)[0])
        s, y, _, _ = torch.ops.toykernels.add_layer_norm_forward(x, h, b.ln_2.weight, b.ln_2.bias, b.ln_2.eps)
        return s + y


@pytest.mark.parametrize("block_type", [_PreLNBlock, _PreLNBlockCustomOps], ids=["api", "custom_op"])
def test_torch_compile_fullgraph_on_cpu(block_type):
    torch.manual_seed(0)
    block = block_type(16)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 3, 16, requires_grad=True)
    out = compiled(x)
    out_eager = block(x)
    torch.testing.assert_close(out, out_eager)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    (g_eager,) = torch.autograd.grad(out_eager.square().sum(), x)
    torch.testing.assert_close(g, g_eager)
    # and the eager block against float64 LayerNorms built from the same parameters
    b = block if isinstance(block, _PreLNBlock) else block.block
    x64 = x.detach().double().requires_grad_()
    h64 = torch.nn.functional.linear(
        F.layer_norm(x64, (16,), b.ln_1.weight.double(), b.ln_1.bias.double()), b.fc.weight.double(), b.fc.bias.double()
    )
    s64 = x64 + h64
    out64 = s64 + F.layer_norm(s64, (16,), b.ln_2.weight.double(), b.ln_2.bias.double())
    torch.testing.assert_close(out_eager.double(), out64, atol=1e-5, rtol=1e-5)
