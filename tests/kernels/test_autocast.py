"""Mixed precision: the ops follow the dtype rules of the torch ops they replace.

- Without autocast, `add_layer_norm`'s residual add promotes as torch.add does (a bf16 sublayer
  output plus a float32 residual stream is float32), and `causal_attention` refuses q, k, v of
  different dtypes as scaled_dot_product_attention does.
- Under torch.autocast each op behaves as F.layer_norm (float32 list on CUDA, untouched on a
  CPU) and F.scaled_dot_product_attention (lower-precision list) do. The CUDA side is checked
  without a GPU: fake CUDA tensors (tests/conftest.py) go through the same dispatcher, autocast
  kernels, fake registrations and autograd as real ones, and every dtype is compared with what
  the torch op gives in the same mode. The values are checked on a CPU, where the custom ops'
  autocast kernel for attention runs for real.
"""

import pytest
import torch
import torch.nn.functional as F
import toykernels
from toykernels import layernorm
from toykernels.reference import causal_attention_ref

HALF = [torch.bfloat16, torch.float16]


def _leaf(*shape, dtype=torch.float32, device="cpu", seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_()


# ------------------------------------------------------------------------------------------
# without autocast


@pytest.mark.parametrize("x_dtype, r_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16),
                                              (torch.float16, torch.bfloat16), (torch.float32, torch.float64)])
def test_add_layer_norm_promotes_like_torch_add(x_dtype, r_dtype):
    C = 37
    x, r = _leaf(5, 3, C, dtype=x_dtype, seed=0), _leaf(5, 3, C, dtype=r_dtype)
    s_dtype = torch.promote_types(x_dtype, r_dtype)
    w, b = _leaf(C, dtype=torch.float32), _leaf(C, dtype=torch.float32)
    s, y = toykernels.add_layer_norm(x, r, w, b, 1e-5)
    # the reference, written the long way in float64 from the same (rounded) inputs
    x64, r64 = x.detach().double().requires_grad_(), r.detach().double().requires_grad_()
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    s64 = x64 + r64
    y64 = F.layer_norm(s64, (C,), w64, b64, 1e-5)
    assert s.dtype == (x + r).dtype == s_dtype
    assert y.dtype == F.layer_norm((x + r).detach(), (C,), w.to(s_dtype), b.to(s_dtype)).dtype
    # computed in s_dtype; a gradient is then rounded once more to its input's dtype
    TOL = {torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float32: 2e-5, torch.float64: 1e-10}
    tol = TOL[s_dtype]
    torch.testing.assert_close(s.double(), s64.to(s_dtype).double(), rtol=0, atol=0)  # one rounding
    torch.testing.assert_close(y.double(), y64, rtol=tol, atol=tol)
    dy, ds = torch.randn_like(y64), torch.randn_like(s64)
    torch.autograd.backward([s, y], [ds.to(s.dtype), dy.to(y.dtype)])
    torch.autograd.backward([s64, y64], [ds, dy])
    # each gradient comes back in its own input's dtype, with the float64 values
    for got, want in ((x.grad, x64.grad), (r.grad, r64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        assert got is not None
        grad_tol = max(tol, TOL[got.dtype])
        torch.testing.assert_close(got.double(), want, rtol=grad_tol, atol=grad_tol * 4)
    assert (x.grad.dtype, r.grad.dtype, w.grad.dtype) == (x_dtype, r_dtype, torch.float32)


def test_causal_attention_refuses_mixed_dtypes_like_sdpa():
    q = torch.randn(1, 2, 4, 32)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, q.bfloat16(), q)
    with pytest.raises(TypeError, match=r"dtypes differ: q torch.float32, k torch.bfloat16"):
        toykernels.causal_attention(q, q.bfloat16(), q)


# ------------------------------------------------------------------------------------------
# autocast on a CPU: values


@pytest.mark.parametrize("ac_dtype", HALF)
def test_cpu_autocast_matches_the_torch_ops(ac_dtype):
    torch.manual_seed(1)
    x, r = torch.randn(4, 9, 64), torch.randn(4, 9, 64, dtype=ac_dtype)
    w, b = torch.randn(64), torch.randn(64)
    q, k, v = torch.randn(3, 2, 9, 32), torch.randn(3, 2, 9, 32, dtype=ac_dtype), torch.randn(3, 2, 9, 32)
    with torch.autocast("cpu", dtype=ac_dtype):
        got_ln = toykernels.layer_norm(r, w, b)
        want_ln = F.layer_norm(r, (64,), w, b)
        got_s, got_y = toykernels.add_layer_norm(r, x, w, b)
        want_s = r + x
        want_y = F.layer_norm(want_s, (64,), w, b)
        got_att = toykernels.causal_attention(q, k, v)
        want_att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for got, want in ((got_ln, want_ln), (got_s, want_s), (got_y, want_y), (got_att, want_att)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("ac_dtype", HALF)
def test_attention_custom_op_under_cpu_autocast_casts_like_sdpa(ac_dtype):
    # the custom op itself (what runs on CUDA), called on CPU tensors: its autocast kernel casts
    # q, k, v to the autocast dtype, and the gradients come back in float32
    q, k, v = (_leaf(2, 3, 17, 64, seed=i) for i in range(3))
    with torch.autocast("cpu", dtype=ac_dtype):
        out, lse = torch.ops.toykernels.attention_forward(q, k, v, 0.125)
    assert out.dtype == ac_dtype and lse.dtype == torch.float32
    want = causal_attention_ref(*(t.detach().to(ac_dtype).double() for t in (q, k, v)), scale=0.125)
    tol = 2e-2 if ac_dtype == torch.float16 else 1e-1
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == torch.float32
    q64, k64, v64 = (t.detach().to(ac_dtype).double().requires_grad_() for t in (q, k, v))
    causal_attention_ref(q64, k64, v64, scale=0.125).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------
# autocast on CUDA, without a GPU: dtypes through the real dispatcher. (Fake CUDA tensors cannot
# require grad on a machine without CUDA; the autocast kernels' gradients are checked on a CPU
# below, by calling them directly.)


def _dtypes(*tensors):
    return tuple(t.dtype for t in tensors)


@pytest.mark.parametrize("ac_dtype", HALF)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_autocast_layer_norm_dtypes(fake_cuda, ac_dtype, x_dtype):
    with fake_cuda:
        x = torch.empty(4, 7, 64, device="cuda", dtype=x_dtype)
        w, b = torch.empty(64, device="cuda"), torch.empty(64, device="cuda", dtype=x_dtype)
        with fake_cuda.autocast(ac_dtype):
            got, want = toykernels.layer_norm(x, w, w), F.layer_norm(x, (64,), w, w)
            ops = torch.ops.toykernels.layer_norm_forward(x, w, b, 1e-5)
        assert got.dtype == want.dtype == torch.float32
        assert _dtypes(*ops) == (torch.float32, torch.float32, torch.float32)


@pytest.mark.parametrize("ac_dtype", HALF)
@pytest.mark.parametrize("x_dtype, r_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                              (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_cuda_autocast_add_layer_norm_dtypes(fake_cuda, ac_dtype, x_dtype, r_dtype):
    with fake_cuda:
        x = torch.empty(4, 7, 64, device="cuda", dtype=x_dtype)
        r = torch.empty(4, 7, 64, device="cuda", dtype=r_dtype)
        w, b = torch.empty(64, device="cuda"), torch.empty(64, device="cuda")
        with fake_cuda.autocast(ac_dtype):
            s, y = toykernels.add_layer_norm(x, r, w, b)
            want_s = x + r
            want_y = F.layer_norm(want_s, (64,), w, b)
            ops = torch.ops.toykernels.add_layer_norm_forward(x, r, w, b, 1e-5)  # mixed dtypes, directly
        assert _dtypes(s, y) == _dtypes(want_s, want_y) == _dtypes(*ops[:2])
        assert _dtypes(*ops[2:]) == (torch.float32, torch.float32)


@pytest.mark.parametrize("ac_dtype", HALF)
@pytest.mark.parametrize("dtypes", [(torch.float32,) * 3, (torch.bfloat16, torch.float32, torch.float16)])
def test_cuda_autocast_attention_dtypes(fake_cuda, ac_dtype, dtypes):
    with fake_cuda:
        q, k, v = (torch.empty(2, 3, 16, 64, device="cuda", dtype=d) for d in dtypes)
        with fake_cuda.autocast(ac_dtype):
            out = toykernels.causal_attention(q, k, v)
            want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert out.dtype == want.dtype == ac_dtype


def test_cuda_paths_without_autocast_keep_the_dtypes(fake_cuda):
    # the same calls with autocast off: bf16 in, bf16 out; the promoted add is float32
    with fake_cuda:
        x = torch.empty(4, 64, device="cuda", dtype=torch.bfloat16)
        r = torch.empty(4, 64, device="cuda")
        w = torch.empty(64, device="cuda")
        assert toykernels.layer_norm(x, w, w).dtype == torch.bfloat16
        assert _dtypes(*toykernels.add_layer_norm(x, r, w, w)) == (torch.float32, torch.float32)
        q = torch.empty(1, 2, 8, 32, device="cuda", dtype=torch.bfloat16)
        assert toykernels.causal_attention(q, q, q).dtype == torch.bfloat16


# the CUDA autocast kernels of the LayerNorm ops, run on a CPU for their values and gradients


@pytest.mark.parametrize("x_dtype", HALF)
def test_layer_norm_autocast_kernel_values_and_gradients(x_dtype):
    C = 96
    x, w, b = _leaf(6, C, dtype=x_dtype, seed=3), _leaf(C), _leaf(C)
    y, mean, rstd = layernorm._layer_norm_autocast(x, w, b, 1e-5)
    assert _dtypes(y, mean, rstd) == (torch.float32,) * 3
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = F.layer_norm(x64, (C,), w64, b64, 1e-5)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)  # float32 math on exact inputs
    dy = torch.randn_like(y64)
    y.backward(dy.float())
    y64.backward(dy)
    assert _dtypes(x.grad, w.grad, b.grad) == (x_dtype, torch.float32, torch.float32)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=2e-2, atol=2e-2)  # one rounding to x's dtype
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_dtype, r_dtype", [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_add_layer_norm_autocast_kernel_values_and_gradients(x_dtype, r_dtype):
    C = 96
    x, r, w, b = _leaf(6, C, dtype=x_dtype, seed=4), _leaf(6, C, dtype=r_dtype), _leaf(C), _leaf(C)
    s, y, mean, rstd = layernorm._add_layer_norm_autocast(x, r, w, b, 1e-5)
    s_dtype = torch.promote_types(x_dtype, r_dtype)
    assert _dtypes(s, y) == (s_dtype, torch.float32)
    x64, r64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, r, w, b))
    s64 = (x64 + r64).to(s_dtype).double()  # the add rounds to s's dtype, then float32 LayerNorm
    y64 = F.layer_norm(s64, (C,), w64, b64, 1e-5)
    torch.testing.assert_close(s.double(), s64, rtol=0, atol=0)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    ds, dy = torch.randn_like(s64), torch.randn_like(y64)
    torch.autograd.backward([s, y], [ds.to(s_dtype), dy.float()])
    torch.autograd.backward([s64, y64], [ds.to(s_dtype).double(), dy])
    assert _dtypes(x.grad, r.grad, w.grad) == (x_dtype, r_dtype, torch.float32)
    for got, want in ((x.grad, x64.grad), (r.grad, r64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)
