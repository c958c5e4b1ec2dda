"""The CUDA attention kernels: compile-checked with nvcc everywhere, run against float64 on a GPU.

Tests marked `cuda` are skipped with the reason by tests/kernels/conftest.py when there is no GPU.

Tolerance rule (flash-attention's): in fp16/bf16 the kernel's error against a float64 reference
may be at most 2x (forward) / 3x (gradients) the error of PyTorch's own attention computed in
the same low precision, plus a small floor, and never above an absolute cap.
"""

import math
import subprocess
from pathlib import Path

import pytest
import torch
import toykernels
from toykernels import backend
from toykernels.attention import attention_backward, attention_forward, causal_attention

CSRC = Path(toykernels.__file__).parent / "csrc"


def test_attention_cu_compiles_without_torch_for_sm80_and_sm90(nvcc_path, torch_nvcc_flags, tmp_path):
    # attention.cu includes no torch header, so nvcc alone must build it, with the flags of a
    # torch extension build. The C++ front end runs once (PTX for compute_80, the oldest target:
    # mma.sync, ldmatrix and cp.async need it); ptxas then assembles that PTX for sm_80 and
    # sm_90, as the driver would on an H100/H200. (Half the time of two full nvcc runs.)
    ptx = tmp_path / "attention.ptx"
    front = [nvcc_path, "-std=c++17", "-arch=compute_80", "-O3", *torch_nvcc_flags, "-I", str(CSRC),
             "--ptx", str(CSRC / "attention.cu"), "-o", str(ptx)]  # fmt: skip
    result = subprocess.run(front, capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr[-4000:]}"
    ptxas = str(Path(nvcc_path).with_name("ptxas"))
    jobs = {  # the two assemblies side by side (2 cores in CI)
        arch: subprocess.Popen(
            [ptxas, f"-arch={arch}", "-O3", str(ptx), "-o", str(tmp_path / f"{arch}.cubin")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for arch in ("sm_80", "sm_90")
    }
    for arch, job in jobs.items():
        _, stderr = job.communicate()
        assert job.returncode == 0, f"ptxas -arch={arch} failed:\n{stderr[-4000:]}"
        assert "error" not in stderr.lower(), stderr[-4000:]


def ref_attention(q, k, v, scale):
    """Naive attention in float64 with autograd; mask built with tril, independent of toykernels."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    s = (q @ k.transpose(-2, -1)) * scale
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def torch_lowprec_attention(q, k, v, scale):
    """PyTorch's own attention in the input's precision (the yardstick for the kernel's error)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def max_err(x, ref):
    return (x.double() - ref).abs().max().item()


def check_against_reference(B, H, Tq, Tk, D, dtype, seed, poison):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype) for T in (Tq, Tk, Tk))
    dout = torch.randn(B, H, Tq, D, device="cuda", dtype=dtype)
    check_tensors_against_reference(q, k, v, dout, poison)


def check_tensors_against_reference(q, k, v, dout, poison):
    """The kernel's forward and backward on these (possibly strided) tensors against float64;
    poison: conftest.py's poison_allocator."""
    (B, H, Tq, D), Tk, dtype = q.shape, k.shape[2], q.dtype
    scale = 1 / math.sqrt(D)

    ext = backend.select("attention", q, k, v)
    assert ext is not None, backend.backend_info("cuda")
    poison((q.shape, dtype), ((B, H, Tq), torch.float32))  # out, lse
    out, lse = attention_forward(q, k, v, scale)
    poison((q.shape, dtype), (k.shape, dtype), (v.shape, dtype), ((B, H, Tq), torch.float32))  # dq, dk, dv, delta
    dq, dk, dv = attention_backward(dout, q, k, v, out, lse, scale)

    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = ref_attention(q64, k64, v64, scale)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    ref_lse = torch.logsumexp(
        (q64 @ k64.transpose(-2, -1) * scale).masked_fill(
            ~torch.ones(Tq, Tk, dtype=torch.bool, device="cuda").tril(Tk - Tq), float("-inf")
        ),
        dim=-1,
    )

    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    tout = torch_lowprec_attention(qt, kt, vt, scale)
    tgrads = torch.autograd.grad(tout, (qt, kt, vt), dout)

    for name, t in (("out", out), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), f"{name} has NaN/inf"
    cap = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    floor = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}[dtype]
    err, terr = max_err(out, ref), max_err(tout, ref)
    assert err <= 2 * terr + floor and err <= cap, f"out: kernel err {err:.3g}, torch err {terr:.3g}"
    assert max_err(lse, ref_lse) <= max(1e-3, 1e-4 * ref_lse.abs().max().item()), "lse"
    for name, g, tg, r in zip(("dq", "dk", "dv"), (dq, dk, dv), tgrads, ref_grads):
        err, terr = max_err(g, r), max_err(tg, r)
        gcap = cap * max(1.0, r.abs().max().item())
        assert err <= 3 * terr + floor and err <= gcap, f"{name}: kernel err {err:.3g}, torch err {terr:.3g}"
    return out, lse, dq, dk, dv


DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SEQ_LENS = [1, 2, 17, 128, 255, 1024, 2049]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", SEQ_LENS)
@pytest.mark.parametrize("D", [32, 64, 128])
def test_kernel_square(dtype, T, D, poison_allocator):
    # B and H vary with T so that every (B, H) pair appears without a 4-way cross product
    B, H = [(1, 1), (3, 12), (1, 12), (3, 1)][SEQ_LENS.index(T) % 4]
    if T >= 1024 and B * H > 12:
        B, H = 1, 12  # keeps the float64 reference under a few GB
    check_against_reference(B, H, T, T, D, dtype, seed=T * 131 + D, poison=poison_allocator)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (1, 17), (1, 1023), (5, 64), (17, 130), (63, 64), (100, 4097)])
@pytest.mark.parametrize("D", [64, 128])
def test_kernel_query_shorter_than_keys(dtype, Tq, Tk, D, poison_allocator):
    check_against_reference(2, 3, Tq, Tk, D, dtype, seed=Tq * 7 + Tk, poison=poison_allocator)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_single_token_has_no_nan_anywhere(dtype):
    q, k, v = (torch.randn(2, 4, 1, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    out = causal_attention(q, k, v)
    out.backward(torch.randn_like(out))
    for t in (out, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    # one token attends only to itself: out == v, and dq = scale * P (dP - delta) k is zero up to
    # rounding (dP and delta are the same sum taken in different orders)
    torch.testing.assert_close(out, v.detach())
    assert q.grad.abs().max().item() <= 1e-3


@pytest.mark.cuda
def test_backend_info_reports_cuda_and_unsupported_head_dim():
    q = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.float16)
    causal_attention(q, q, q)
    assert backend.backend_info("cuda").count("attention: cuda") == 1
    q80 = torch.randn(1, 2, 16, 80, device="cuda", dtype=torch.float16)
    out = causal_attention(q80, q80, q80)
    torch.testing.assert_close(out, torch_lowprec_attention(q80, q80, q80, 80**-0.5), atol=2e-3, rtol=2e-3)
    assert "attention: torch fallback: head dim 80 not supported" in backend.backend_info("cuda")


@pytest.mark.cuda
def test_opcheck_and_compile_on_cuda():
    q, k, v = (torch.randn(2, 3, T, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for T in (7, 9, 9))
    torch.library.opcheck(torch.ops.toykernels.attention_forward, (q, k, v, 0.125))
    compiled = torch.compile(causal_attention, fullgraph=True)
    out = compiled(q, k, v)
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    ref = causal_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref.float().sum(), (q, k, v))
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.cuda
def test_deterministic_backward():
    q, k, v = (torch.randn(2, 4, 300, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    out, lse = attention_forward(q, k, v, 0.125)
    dout = torch.randn_like(out)
    first = attention_backward(dout, q, k, v, out, lse, 0.125)
    second = attention_backward(dout, q, k, v, out, lse, 0.125)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# strided inputs: the kernels take B, H and T strides, so views need no copy


def fused_qkv_views(B, T, H, D, dtype, style):
    """q, k, v as the models make them: transposed views of one fused QKV projection."""
    if style == "split":  # toygpt: (B, T, 3C).split(C, dim=2), .view(B, T, H, D).transpose(1, 2)
        qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=dtype)
        return tuple(t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
    qkv = torch.randn(B, T, 3, H, D, device="cuda", dtype=dtype)  # toygrad: qkv[:, :, i].transpose(1, 2)
    return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


def kv_cache_views(B, H, Tk, D, dtype, extra=37):
    """k, v = cache.narrow(2, 0, Tk) of preallocated (B, H, Tk + extra, D) caches whose unused tail
    is NaN: a kernel that reads past Tk, or steps rows by D instead of the stride, gets NaN."""
    views = []
    for _ in range(2):
        cache = torch.full((B, H, Tk + extra, D), float("nan"), device="cuda", dtype=dtype)
        cache[:, :, :Tk] = torch.randn(B, H, Tk, D, device="cuda", dtype=dtype)
        views.append(cache.narrow(2, 0, Tk))
    return tuple(views)


def transposed_randn(B, H, T, D, dtype):
    """A (B, H, T, D) view of a (B, T, H, D) buffer: what autograd hands back through transpose(1, 2)."""
    return torch.randn(B, T, H, D, device="cuda", dtype=dtype).transpose(1, 2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 17, 130, 1025])
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("style", ["split", "stacked"])
def test_kernel_fused_qkv_views(dtype, T, D, style, poison_allocator):
    torch.manual_seed(T * 131 + D)
    B, H = (2, 3) if T < 1024 else (1, 4)
    q, k, v = fused_qkv_views(B, T, H, D, dtype, style)
    assert not q.is_contiguous()
    check_tensors_against_reference(q, k, v, transposed_randn(B, H, T, D, dtype), poison_allocator)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (1, 17), (1, 1023), (5, 64), (17, 130), (63, 64), (100, 300)])
@pytest.mark.parametrize("D", [32, 64, 128])
def test_kernel_kv_cache_views(dtype, Tq, Tk, D, poison_allocator):
    torch.manual_seed(Tq * 7 + Tk + D)
    B, H = 2, 3
    k, v = kv_cache_views(B, H, Tk, D, dtype)
    q = transposed_randn(B, H, Tq, D, dtype)  # the new tokens' q, as the model makes it
    assert not k.is_contiguous()
    check_tensors_against_reference(q, k, v, transposed_randn(B, H, Tq, D, dtype), poison_allocator)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_give_the_same_bits_as_contiguous_copies(dtype):
    # the layout changes addresses only, never the arithmetic: forward and gradients through
    # autograd must be bitwise equal to those of contiguous copies
    B, T, H, D = 2, 150, 4, 64
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=dtype, requires_grad=True)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
    out = causal_attention(q, k, v)
    y = out.transpose(1, 2).reshape(B, T, H * D)
    g = torch.randn_like(y)
    (dqkv,) = torch.autograd.grad(y, qkv, g)

    qc, kc, vc = (t.detach().contiguous().requires_grad_() for t in (q, k, v))
    outc = causal_attention(qc, kc, vc)
    grads_c = torch.autograd.grad(outc, (qc, kc, vc), g.view(B, T, H, D).transpose(1, 2))
    assert torch.equal(out, outc)
    for i, gc in enumerate(grads_c):
        assert torch.equal(dqkv[:, :, i * H * D : (i + 1) * H * D].view(B, T, H, D).transpose(1, 2), gc)

    # a decode step against a narrowed KV cache, likewise
    k_cache, v_cache = kv_cache_views(B, H, 77, D, dtype)
    q1 = transposed_randn(B, H, 1, D, dtype)
    step = causal_attention(q1, k_cache, v_cache)
    assert torch.equal(step, causal_attention(q1.contiguous(), k_cache.contiguous(), v_cache.contiguous()))


@pytest.mark.cuda
def test_output_takes_the_layout_of_q():
    B, T, H, D = 2, 33, 4, 64
    x = torch.randn(B, T, H * D, device="cuda", dtype=torch.float16)
    q = x.view(B, T, H, D).transpose(1, 2)  # dense, laid out (B, T, H, D)
    k, v = (torch.randn_like(x).view(B, T, H, D).transpose(1, 2) for _ in range(2))
    out, lse = attention_forward(q, k, v, 0.125)
    assert out.stride() == q.stride()
    assert lse.is_contiguous()
    y = out.transpose(1, 2).reshape(B, T, H * D)  # back to (B, T, C): a view, no copy
    assert y.data_ptr() == out.data_ptr() and y.is_contiguous()
    dq, dk, dv = attention_backward(torch.randn_like(out), q, k, v, out, lse, 0.125)
    assert (dq.stride(), dk.stride(), dv.stride()) == (q.stride(), k.stride(), v.stride())
    # views of a fused QKV projection are not dense: empty_like (torch 2.13) still follows their
    # stride order, so the output is laid out (B, T, H, D) and the transpose back is free too
    qs, ks, vs = fused_qkv_views(B, T, H, D, torch.float16, "split")
    outs, _ = attention_forward(qs, ks, vs, 0.125)
    assert outs.stride() == torch.empty_like(qs).stride()
    assert outs.transpose(1, 2).is_contiguous()
    # fake (meta) registrations agree with the real outputs on these layouts, and autograd works
    decode = (transposed_randn(B, H, 1, D, torch.float16), *kv_cache_views(B, H, 40, D, torch.float16))
    for args in ((q, k, v), (qs, ks, vs), decode):
        args = tuple(t.detach().requires_grad_() for t in args)
        torch.library.opcheck(torch.ops.toykernels.attention_forward, (*args, 0.125))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_the_kernel_cannot_address_are_copied(dtype, poison_allocator):
    # D stride != 1, or a data pointer that is not 16-byte aligned: the binding copies them
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 70, 64
    q = torch.randn(B, H, D, T, device="cuda", dtype=dtype).transpose(2, 3)  # D stride T
    flat = torch.randn(B * H * T * D + 1, device="cuda", dtype=dtype)
    k = flat[1:].view(B, H, T, D)  # misaligned by one element
    v = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
    out, *_ = check_tensors_against_reference(q, k, v, torch.randn(B, H, T, D, device="cuda", dtype=dtype), poison_allocator)
    assert out.stride(-1) == 1  # not q's layout: the kernel could not write that
    torch.library.opcheck(torch.ops.toykernels.attention_forward, (q, k, v, 0.125))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(0, 2, 5, 64), (2, 0, 5, 64)])
def test_empty_batch_or_heads_falls_back_to_torch(shape):
    q = torch.randn(*shape, device="cuda", dtype=torch.float16, requires_grad=True)
    out = causal_attention(q, q, q)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape
    assert "attention: torch fallback: empty input" in backend.backend_info("cuda")
