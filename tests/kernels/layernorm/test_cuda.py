"""The LayerNorm CUDA kernels against a float64 reference (skipped without a GPU).

Tolerance, flash-attention's rule: the kernel's error may be at most twice the error of
PyTorch's own op in the same precision, plus a small per-dtype floor (scaled by the size of
the values). Outputs are poisoned with NaN first, so an element the kernel never writes fails.
"""

import pytest
import torch
import torch.nn.functional as F
import toykernels
from toykernels.layernorm import (
    _add_layer_norm_forward_op,
    _layer_norm_forward_op,
    add_layer_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)

pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROWS = [1, 7, 1024, 65537]
WIDTHS = [1, 3, 127, 768, 1024, 1600, 4097, 8192, 16384]
MAX_NUMEL = 2**27  # the float64 reference of a bigger case needs more than ~8 GB
CASES = [(rows, C) for rows in ROWS for C in WIDTHS if rows * C <= MAX_NUMEL]
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
EPS = 1e-5


def assert_close_to_reference(name, got, ref64, baseline, dtype):
    assert not torch.isnan(got).any(), f"{name}: NaN in the output (an element was not written?)"
    err = (got.double() - ref64).abs().max().item()
    baseline_err = (baseline.double() - ref64).abs().max().item()
    scale = max(1.0, ref64.abs().max().item())
    limit = 2 * baseline_err + FLOOR[dtype] * scale
    assert err <= limit, f"{name}: max error {err:.3g} > {limit:.3g} (torch's own error {baseline_err:.3g})"


@pytest.mark.parametrize("fused", [False, True], ids=["layer_norm", "add_layer_norm"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("rows, C", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_float64_reference(dtype, rows, C, affine, fused, poison_allocator):
    gen = torch.Generator(device="cuda").manual_seed(rows * 100_003 + C * 7 + int(affine) * 2 + int(fused))

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    x = (randn(rows, C) * 2 + 0.5).to(dtype)
    residual = randn(rows, C).to(dtype) if fused else None
    weight = (1 + 0.5 * randn(C)).to(dtype) if affine else None
    bias = randn(C).to(dtype) if affine else None
    dy = randn(rows, C).to(dtype)

    poison_allocator(((rows, C), dtype), ((rows, C), dtype), ((rows,), torch.float32), ((rows,), torch.float32))
    if fused:
        s, y, mean, rstd = add_layer_norm_forward(x, residual, weight, bias, EPS)
        s_ref = x + residual  # the same rounding to dtype as the kernel's s
        assert torch.equal(s, s_ref), "add_layer_norm: s differs from x + residual"
    else:
        y, mean, rstd = layer_norm_forward(x, weight, bias, EPS)
        s_ref = x
    poison_allocator(((rows, C), dtype), ((C,), torch.float32), ((C,), torch.float32))
    dx, dweight, dbias = layer_norm_backward(dy, s_ref, weight, mean, rstd, has_bias=affine)

    # float64 reference and torch's own op in dtype, both through autograd
    def run(inp, w, b):
        leaves = [inp.detach().requires_grad_()] + ([w.detach().requires_grad_(), b.detach().requires_grad_()] if affine else [])
        out = F.layer_norm(leaves[0], (C,), *(leaves[1:] if affine else (None, None)), eps=EPS)
        return out, torch.autograd.grad(out, leaves, dy.to(out.dtype))

    y64, grads64 = run(s_ref.double(), weight.double() if affine else None, bias.double() if affine else None)
    y_t, grads_t = run(s_ref, weight, bias)

    assert_close_to_reference("y", y, y64, y_t, dtype)
    mean64 = s_ref.double().mean(-1)
    rstd64 = torch.rsqrt(s_ref.double().var(-1, unbiased=False) + EPS)
    torch.testing.assert_close(mean.double(), mean64, atol=1e-5 * max(1.0, mean64.abs().max().item()), rtol=1e-5)
    torch.testing.assert_close(rstd.double(), rstd64, atol=1e-5, rtol=1e-4)
    assert_close_to_reference("dx", dx, grads64[0], grads_t[0], dtype)
    if affine:
        assert dweight.dtype == dbias.dtype == dtype
        assert_close_to_reference("dweight", dweight, grads64[1], grads_t[1], dtype)
        assert_close_to_reference("dbias", dbias, grads64[2], grads_t[2], dtype)
    else:
        assert dweight is None and dbias is None


@pytest.mark.parametrize("rows, C", [(4096, 768), (1000, 1600), (257, 16384), (333, 127)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_is_bitwise_deterministic(dtype, rows, C):
    x = torch.randn(rows, C, device="cuda").to(dtype)
    weight, bias = torch.randn(C, device="cuda").to(dtype), torch.randn(C, device="cuda").to(dtype)
    dy = torch.randn(rows, C, device="cuda").to(dtype)
    _, mean, rstd = layer_norm_forward(x, weight, bias, EPS)
    first = layer_norm_backward(dy, x, weight, mean, rstd)
    second = layer_norm_backward(dy, x, weight, mean, rstd)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp32_weights_with_low_precision_input(dtype):
    x = torch.randn(64, 1024, device="cuda").to(dtype).requires_grad_()
    weight = torch.randn(1024, device="cuda", requires_grad=True)  # fp32 master weights
    bias = torch.randn(1024, device="cuda", requires_grad=True)
    y = toykernels.layer_norm(x, weight, bias)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.layer_norm(x64, (1024,), w64, b64)
    grads64 = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    assert y.dtype == dtype and grads[1].dtype == grads[2].dtype == torch.float32
    assert (y.double() - y64).abs().max() < 0.05
    for got, want, name in zip(grads, grads64, ("dx", "dweight", "dbias")):
        rel = (got.double() - want).abs().max() / want.abs().max()
        assert rel < 0.02, f"{name}: relative error {rel:.3g}"


def test_non_contiguous_and_batched_input():
    base = torch.randn(6, 256, 4, device="cuda", dtype=torch.bfloat16)
    x = base.transpose(1, 2)  # (6, 4, 256), not contiguous
    weight = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    y = toykernels.layer_norm(x, weight, None)
    want = F.layer_norm(x.double(), (256,), weight.double())
    assert y.shape == x.shape and (y.double() - want).abs().max() < 0.05


def test_module_autograd_and_zero_rows():
    ln = toykernels.LayerNorm(768).cuda()
    x = torch.randn(0, 768, device="cuda", requires_grad=True)
    y = ln(x)
    y.sum().backward()
    assert y.shape == (0, 768) and torch.equal(ln.weight.grad, torch.zeros_like(ln.weight))


def test_opcheck_and_compile_on_cuda():
    x = torch.randn(3, 5, 64, device="cuda", requires_grad=True)
    residual = torch.randn(3, 5, 64, device="cuda", requires_grad=True)
    weight = torch.randn(64, device="cuda", requires_grad=True)
    bias = torch.randn(64, device="cuda", requires_grad=True)
    torch.library.opcheck(_layer_norm_forward_op, (x, weight, bias, EPS))
    torch.library.opcheck(_add_layer_norm_forward_op, (x, residual, weight, bias, EPS))

    def block(x, residual):
        s, y = toykernels.add_layer_norm(x, residual, weight, bias)
        return toykernels.layer_norm(s + y, weight, bias)

    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x, residual)
    torch.testing.assert_close(out, block(x, residual))
    out.sum().backward()
    assert x.grad is not None and weight.grad is not None
