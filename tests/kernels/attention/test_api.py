"""Causal attention on every machine: the public API (scaled_dot_product_attention off CUDA),
the custom op with its explicit backward (the path CUDA tensors take; on a CPU the raw functions
underneath run ATen's CPU flash attention), the raw functions and the tiled reference.
The whole-matrix formulas of reference.py are held against float64 and against ATen's kernels in
test_cpu_paths.py.

Everything is compared against naive attention in float64 written out here, so a wrong mask
alignment or a wrong gradient formula in toykernels cannot hide behind a shared helper.
"""

import math

import pytest
import torch
import toykernels
from toykernels.attention import attention_backward, attention_forward, causal_attention
from toykernels.reference import flash_attention_tiled

# (Tq, Tk): square, prefill with a cache (Tq < Tk), one decoding step, T = 1, odd and prime sizes
SEQ_PAIRS = [(1, 1), (2, 2), (17, 17), (5, 23), (1, 37), (64, 64), (31, 97)]


def naive_attention64(q, k, v, scale):
    """softmax(q k^T * scale + bottom-right causal mask) v, in float64, mask built by hand."""
    q, k, v = q.double(), k.double(), v.double()
    Tq, Tk = q.shape[-2], k.shape[-2]
    s = (q @ k.transpose(-2, -1)) * scale
    allowed = torch.tensor([[j <= i + (Tk - Tq) for j in range(Tk)] for i in range(Tq)])
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


# The two ways into attention off CUDA: the public function (SDPA underneath, differentiated by
# autograd) and the custom op called directly (its explicit backward, the path CUDA tensors take).
ATTENTION = {
    "api": lambda q, k, v, scale: causal_attention(q, k, v, scale=scale),
    "custom_op": lambda q, k, v, scale: torch.ops.toykernels.attention_forward(q, k, v, scale)[0],
}


def make_qkv(B, H, Tq, Tk, D, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=dtype) for T in (Tq, Tk, Tk))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("Tq,Tk", SEQ_PAIRS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_forward_matches_naive(Tq, Tk, dtype, tol):
    q, k, v = make_qkv(2, 3, Tq, Tk, 32, dtype, seed=Tq * 1000 + Tk)
    scale = 1 / math.sqrt(32)
    ref_out, ref_lse = naive_attention64(q, k, v, scale)
    out, lse = attention_forward(q, k, v, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.shape == (2, 3, Tq)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), ref_lse, atol=tol, rtol=tol)
    # the functional API takes the SDPA path on CPU: it must use the same mask
    torch.testing.assert_close(causal_attention(q, k, v).double(), ref_out, atol=tol, rtol=tol)
    op_out, op_lse = torch.ops.toykernels.attention_forward(q, k, v, scale)
    torch.testing.assert_close(op_out.double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(op_lse.double(), ref_lse, atol=tol, rtol=tol)


@pytest.mark.parametrize("path", sorted(ATTENTION))
@pytest.mark.parametrize("Tq,Tk", SEQ_PAIRS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-5), (torch.float64, 1e-10)])
def test_every_gradient_matches_naive(path, Tq, Tk, dtype, tol):
    q, k, v = make_qkv(2, 3, Tq, Tk, 32, dtype, requires_grad=True, seed=Tq * 31 + Tk)
    scale = 0.3  # not 1/sqrt(D): a scale forgotten in one gradient would show
    out = ATTENTION[path](q, k, v, scale)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, _ = naive_attention64(q64, k64, v64, scale)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), dout.double())
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), r, atol=tol, rtol=tol, msg=f"{path} {name} differs")


def test_public_api_runs_sdpa_on_cpu_and_the_custom_op_does_not():
    for Tq, Tk in [(4, 4), (1, 9), (3, 9)]:  # is_causal, no mask, explicit bottom-right mask
        q, k, v = make_qkv(1, 2, Tq, Tk, 8, requires_grad=True)
        assert "ScaledDotProduct" in type(causal_attention(q, k, v).grad_fn).__name__
        op_out = torch.ops.toykernels.attention_forward(q, k, v, 0.3)[0]
        assert "toykernels_attention_forward" in type(op_out.grad_fn).__name__


@pytest.mark.parametrize("Tq,Tk", SEQ_PAIRS)
def test_backward_matches_autograd_of_naive(Tq, Tk):
    q, k, v = make_qkv(2, 2, Tq, Tk, 32, torch.float64, requires_grad=True, seed=Tq + 7 * Tk)
    scale = 0.3  # not 1/sqrt(D): a scale forgotten in one gradient would show
    ref_out, _ = naive_attention64(q, k, v, scale)
    dout = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dout)
    with torch.no_grad():
        out, lse = attention_forward(q, k, v, scale)
        grads = attention_backward(dout, q, k, v, out, lse, scale)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10, msg=f"{name} differs")


@pytest.mark.parametrize("Tq,Tk", SEQ_PAIRS)
@pytest.mark.parametrize("block", [(16, 16), (8, 5), (64, 1), 3])
def test_tiled_reference_matches_naive(Tq, Tk, block):
    q, k, v = make_qkv(1, 2, Tq, Tk, 16, torch.float64, seed=Tq + Tk)
    ref_out, ref_lse = naive_attention64(q, k, v, 0.25)
    out, lse = flash_attention_tiled(q, k, v, scale=0.25, block=block)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "shapes, block, match",
    [
        (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), 0, "block sizes must be >= 1, got 0"),
        (((2, 4, 8), (2, 4, 8), (2, 4, 8)), 4, r"must be \(B, H, T, D\).*q \(2, 4, 8\)"),
        (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 5, 8)), 4, r"v \(1, 2, 5, 8\)"),
        (((1, 2, 6, 8), (1, 2, 4, 8), (1, 2, 4, 8)), 4, r"1 <= Tq <= Tk"),
        (((1, 2, 4, 8), (1, 3, 4, 8), (1, 3, 4, 8)), 4, "must agree in B, H and D"),
    ],
)
def test_tiled_reference_rejects_bad_input(shapes, block, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        flash_attention_tiled(q, k, v, block=block)


def test_last_query_of_long_sequence():
    # decoding one token after 1023 cached ones must equal the last row of full attention
    q, k, v = make_qkv(1, 2, 1024, 1024, 64, torch.float32, seed=3)
    full = causal_attention(q, k, v)
    last = causal_attention(q[:, :, -1:], k, v)
    torch.testing.assert_close(last, full[:, :, -1:], atol=1e-5, rtol=1e-5)
    ref_out, _ = naive_attention64(q[:, :, -1:], k, v, 1 / 8)
    torch.testing.assert_close(last.double(), ref_out, atol=1e-5, rtol=1e-5)
    tiled, _ = flash_attention_tiled(q[:, :, -1:], k, v, block=128)
    torch.testing.assert_close(tiled.double(), ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", sorted(ATTENTION))
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (6, 6), (3, 8), (1, 5)])
def test_gradcheck(path, Tq, Tk):
    q, k, v = make_qkv(1, 2, Tq, Tk, 8, torch.float64, requires_grad=True, seed=11)
    fn = ATTENTION[path]
    assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v, 0.7), (q, k, v))


def test_autograd_grads_in_float32_match_float64():
    q, k, v = make_qkv(2, 3, 19, 19, 64, torch.float32, requires_grad=True, seed=5)
    out = causal_attention(q, k, v)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, _ = naive_attention64(q64, k64, v64, 1 / 8)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), dout.double())
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("path", sorted(ATTENTION))
def test_half_inputs_on_cpu(path):
    # both paths accumulate in fp32 and return the input dtype
    q, k, v = make_qkv(1, 2, 9, 12, 32, torch.bfloat16, requires_grad=True, seed=2)
    out = ATTENTION[path](q, k, v, 32**-0.5)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    ref_out, _ = naive_attention64(q, k, v, 32**-0.5)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-2, rtol=2e-2)


def test_opcheck():
    q, k, v = make_qkv(2, 2, 5, 7, 16, torch.float32, requires_grad=True, seed=1)
    torch.library.opcheck(torch.ops.toykernels.attention_forward, (q, k, v, 0.25))
    # the backward op is not itself differentiable (no double backward): give it plain tensors
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = attention_forward(q, k, v, 0.25)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.toykernels.attention_backward, (dout, q, k, v, out, lse, 0.25))


@pytest.mark.parametrize("Tq,Tk", [(6, 9), (8, 8)])  # the masked and the is_causal CPU path
@pytest.mark.parametrize("path", sorted(ATTENTION))
def test_torch_compile_fullgraph_forward_and_backward(path, Tq, Tk):
    q, k, v = make_qkv(1, 2, Tq, Tk, 16, torch.float32, requires_grad=True, seed=4)
    fn = ATTENTION[path]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, 0.25)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, _ = naive_attention64(q64, k64, v64, 0.25)
    ref_grads = torch.autograd.grad(ref_out.sum(), (q64, k64, v64))
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=5e-5, rtol=5e-5)


def test_exported_from_package():
    assert toykernels.causal_attention is causal_attention


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((2, 8, 16), (2, 8, 16), (2, 8, 16)), r"q must have shape \(B, H, T, D\), got \(2, 8, 16\)"),
        (((1, 2, 4, 8), (1, 3, 4, 8), (1, 3, 4, 8)), "must agree in batch, heads and head dim"),
        (((1, 2, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)), "must agree in batch, heads and head dim"),
        (((1, 2, 4, 8), (1, 2, 4, 16), (1, 2, 4, 16)), "must agree in batch, heads and head dim"),
        (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 5, 8)), r"k \(1, 2, 4, 8\) and v \(1, 2, 5, 8\)"),
        (((1, 2, 6, 8), (1, 2, 4, 8), (1, 2, 4, 8)), "query length 6 > key length 4"),
        (((1, 2, 0, 8), (1, 2, 4, 8), (1, 2, 4, 8)), "empty input"),
    ],
)
def test_bad_shapes_raise_clear_errors(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        causal_attention(q, k, v)


def test_bad_dtypes_and_devices_raise_clear_errors():
    q, k, v = make_qkv(1, 2, 4, 4, 8)
    with pytest.raises(TypeError, match=r"dtypes differ: q torch.float32, k torch.float64"):
        causal_attention(q, k.double(), v)
    with pytest.raises(TypeError, match="floating-point"):
        causal_attention(q, k, v.to(torch.int64))
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        causal_attention(q, k.tolist(), v)
    with pytest.raises(ValueError, match="devices differ: q cpu, k meta"):
        causal_attention(q, k.to("meta"), v)


def test_backend_info_names_attention_and_unsupported_reasons():
    from toykernels.attention import _unsupported_reason

    q, k, v = make_qkv(1, 1, 3, 3, 16)
    causal_attention(q.requires_grad_(), k, v)  # goes through backend.select
    assert "attention: torch fallback: tensor is on cpu" in toykernels.backend_info("cpu")
    assert _unsupported_reason(torch.empty(1, 1, 1, 80)) == "head dim 80 not supported (32, 64, 128 are)"
    assert "float64 not supported" in _unsupported_reason(torch.empty(1, 1, 1, 64, dtype=torch.float64))
    assert _unsupported_reason(torch.empty(1, 1, 1, 64, dtype=torch.bfloat16)) is None
    assert "B * H = 90000 > 65535" in _unsupported_reason(torch.empty(300, 300, 1, 64, device="meta"))
