"""Attention's raw functions on a CPU against the reference formulas they replaced, both against float64.

On a CPU, `attention_forward` / `attention_backward` run ATen's CPU flash attention without
autograd (toygrad.Tensor calls them with its own). `toykernels.reference` keeps the explicit
formulas (`attention_forward_ref` / `attention_backward_ref`): the specification of the CUDA
kernels, and the fallback wherever ATen's kernels do not apply. Here both paths, on fresh random
inputs, must give the same contract (shapes, dtypes, fp32 logsumexp, contiguous outputs) and
values within a per-dtype tolerance of float64 autograd computed from the same (rounded) inputs;
and the feature checks must send an older torch to the formulas.
"""

import pytest
import torch
from kernel_checks import assert_near, stat_dtype  # tests/kernels/checks.py, loaded by conftest.py
from toykernels import attention
from toykernels.attention import attention_backward, attention_forward
from toykernels.reference import (
    attention_backward_ref,
    attention_forward_ref,
    causal_mask,
)

EPS = 1e-5
# error allowed against float64, relative to the largest reference value: a few units in the
# last place of the output dtype (statistics and accumulations are fp32 for fp16/bf16)
ATTN_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# lse is fp32 for every input dtype, but ATen's fp16/bf16 flash attention is off by up to ~1e-5
# of it (measured; its scores are not all kept in fp32), the formulas by ~1e-7
LSE_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 4e-5, torch.bfloat16: 4e-5}


# ----------------------------------------------------------------------------------------------
# attention

# (Tq, Tk, D): is_causal (Tq == Tk), one query (no mask), the additive bottom-right mask, odd and
# prime sizes
ATTN_SHAPES = [(1, 1, 8), (2, 2, 1), (17, 17, 32), (64, 64, 64), (128, 128, 128), (5, 23, 16), (1, 37, 59), (31, 97, 33)]
ATTN_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _attention64(q, k, v, dout, scale):
    """float64 autograd of naive attention with the bottom-right mask -> (out, lse, dq, dk, dv)."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    s = s.masked_fill(~causal_mask(q.shape[-2], k.shape[-2]), float("-inf"))
    out = torch.softmax(s, dim=-1) @ v
    return (out.detach(), torch.logsumexp(s, dim=-1).detach(), *torch.autograd.grad(out, (q, k, v), dout.double()))


@pytest.mark.parametrize("Tq,Tk,D", ATTN_SHAPES)
@pytest.mark.parametrize("dtype", ATTN_DTYPES)
def test_attention_cpu_path_and_formulas_agree_with_float64(dtype, Tq, Tk, D):
    B, H = 2, 3
    q, k, v = (torch.randn(B, H, T, D).to(dtype) for T in (Tq, Tk, Tk))
    dout = torch.randn(B, H, Tq, D).to(dtype)
    scale = 0.3  # not 1/sqrt(D): a scale forgotten in one gradient would show
    want = _attention64(q, k, v, dout, scale)

    out, lse = attention_forward(q, k, v, scale)  # ATen's CPU flash attention
    cpu_path = (out, lse, *attention_backward(dout, q, k, v, out, lse, scale))
    out_r, lse_r = attention_forward_ref(q, k, v, scale)
    formulas = (out_r, lse_r, *attention_backward_ref(dout, q, k, v, out_r, lse_r, scale))

    lse_dtype = stat_dtype(dtype)
    names = ("out", "lse", "dq", "dk", "dv")
    for name, got, ref, w64 in zip(names, cpu_path, formulas, want):
        expected = lse_dtype if name == "lse" else dtype
        tol = LSE_TOL[dtype] if name == "lse" else ATTN_TOL[dtype]
        for path, t in (("ATen", got), ("formulas", ref)):
            assert t.dtype == expected, f"{path} {name}: dtype {t.dtype}, expected {expected}"
            assert t.is_contiguous(), f"{path} {name}: strides {t.stride()} for shape {tuple(t.shape)}"
            assert_near(f"{path} {name}", t, w64, tol)
        assert_near(f"ATen vs formulas {name}", got, ref.double(), 2 * tol)


def _aten_flash(q, k, v, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)


def test_attention_cpu_path_is_atens_kernel_and_old_torch_gets_the_formulas(monkeypatch):
    q, k, v = (torch.randn(2, 2, 9, 16) for _ in range(3))
    out, lse = attention_forward(q, k, v, 0.25)
    out_aten, lse_aten = _aten_flash(q, k, v, 0.25)
    assert torch.equal(out, out_aten) and torch.equal(lse, lse_aten)
    dout = torch.randn_like(out)
    grads = attention_backward(dout, q, k, v, out, lse, 0.25)
    grads_aten = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, q, k, v, out_aten, lse_aten, 0.0, True, scale=0.25
    )
    assert all(torch.equal(g, r) for g, r in zip(grads, grads_aten))

    def assert_formulas(q, k, v):
        out, lse = attention_forward(q, k, v, 0.25)
        out_r, lse_r = attention_forward_ref(q, k, v, 0.25)
        assert torch.equal(out, out_r) and torch.equal(lse, lse_r)
        dout = torch.randn_like(out)
        grads = attention_backward(dout, q, k, v, out, lse, 0.25)
        assert all(torch.equal(g, r) for g, r in zip(grads, attention_backward_ref(dout, q, k, v, out_r, lse_r, 0.25)))

    q3 = q[:, :, -3:].contiguous()
    # a torch whose CPU flash attention takes no attn_mask: Tq < Tk runs the formulas, Tq == Tk not
    monkeypatch.setattr(attention, "_ATEN_FLASH_TAKES_MASK", False)
    assert_formulas(q3, k, v)
    assert torch.equal(attention_forward(q, k, v, 0.25)[0], out_aten)
    # a torch without the ops at all: the formulas everywhere
    monkeypatch.setattr(attention, "_HAS_ATEN_FLASH", False)
    assert_formulas(q, k, v)


def test_attention_cpu_path_takes_non_contiguous_inputs_and_empty_batches():
    # (B, T, H, D) projections viewed as (B, H, T, D), as a model's q, k, v usually are
    q, k, v = (torch.randn(2, 11, 3, 16).transpose(1, 2) for _ in range(3))
    dout = torch.randn(2, 11, 3, 16).transpose(1, 2)
    out, lse = attention_forward(q, k, v, 0.25)
    grads = attention_backward(dout, q, k, v, out, lse, 0.25)
    want = _attention64(q, k, v, dout, 0.25)
    for name, got, w64 in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), want):
        assert got.is_contiguous(), name
        assert_near(name, got, w64, ATTN_TOL[torch.float32])
    # no batch at all: the formulas, which handle it
    q0 = torch.randn(0, 2, 4, 8)
    out, lse = attention_forward(q0, q0, q0, 0.25)
    assert out.shape == (0, 2, 4, 8) and lse.shape == (0, 2, 4)
    assert [g.shape for g in attention_backward(out, q0, q0, q0, out, lse, 0.25)] == [q0.shape] * 3


@pytest.mark.parametrize("Tq,Tk,dtype", [(6, 6, torch.float32), (1, 5, torch.float32), (6, 6, torch.bfloat16)])
def test_attention_custom_ops_opcheck_on_every_cpu_path(Tq, Tk, dtype):
    # test_attention.py checks the masked path (Tq < Tk); these are is_causal and no mask
    q, k, v = (torch.randn(2, 2, T, 16).to(dtype).requires_grad_() for T in (Tq, Tk, Tk))
    torch.library.opcheck(torch.ops.toykernels.attention_forward, (q, k, v, 0.25))
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = attention_forward(q, k, v, 0.25)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.toykernels.attention_backward, (dout, q, k, v, out, lse, 0.25))



def test_inputs_outside_atens_contract_run_the_formulas():
    # mixed dtypes (the raw functions do not check them; the formulas cast, ATen would refuse)
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8, dtype=torch.float64), torch.randn(1, 2, 6, 8)
    out, lse = attention_forward(q, k, v, 0.25)
    out_r, lse_r = attention_forward_ref(q, k, v, 0.25)
    assert torch.equal(out, out_r) and torch.equal(lse, lse_r)
