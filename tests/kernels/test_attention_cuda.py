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


def poison_allocator(*shapes):
    # The binding allocates its outputs with empty_like. Free NaN-filled blocks of exactly those
    # sizes first: the caching allocator hands them straight back, so an output element the
    # kernel forgets to write shows up as NaN.
    blocks = [torch.full(shape, float("nan"), device="cuda") for shape in shapes]
    torch.cuda.synchronize()
    del blocks


def max_err(x, ref):
    return (x.double() - ref).abs().max().item()


def check_against_reference(B, H, Tq, Tk, D, dtype, seed):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype) for T in (Tq, Tk, Tk))
    dout = torch.randn(B, H, Tq, D, device="cuda", dtype=dtype)
    scale = 1 / math.sqrt(D)

    ext = backend.select("attention", q, k, v)
    assert ext is not None, backend.backend_info("cuda")
    poison_allocator(q.shape, (B, H, Tq))  # out (dtype-agnostic: same bytes or fewer), lse
    out, lse = attention_forward(q, k, v, scale)
    poison_allocator(q.shape, k.shape, v.shape, (B, H, Tq))  # dq, dk, dv, delta
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


DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SEQ_LENS = [1, 2, 17, 128, 255, 1024, 2049]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", SEQ_LENS)
@pytest.mark.parametrize("D", [32, 64, 128])
def test_kernel_square(dtype, T, D):
    # B and H vary with T so that every (B, H) pair appears without a 4-way cross product
    B, H = [(1, 1), (3, 12), (1, 12), (3, 1)][SEQ_LENS.index(T) % 4]
    if T >= 1024 and B * H > 12:
        B, H = 1, 12  # keeps the float64 reference under a few GB
    check_against_reference(B, H, T, T, D, dtype, seed=T * 131 + D)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (1, 17), (1, 1023), (5, 64), (17, 130), (63, 64), (100, 4097)])
@pytest.mark.parametrize("D", [64, 128])
def test_kernel_query_shorter_than_keys(dtype, Tq, Tk, D):
    check_against_reference(2, 3, Tq, Tk, D, dtype, seed=Tq * 7 + Tk)


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
