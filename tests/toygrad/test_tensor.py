"""toygrad.tensor ops: values and gradients against torch.autograd in float64, and finite differences.

Every op runs on fresh random inputs (odd and broadcasting shapes) through toygrad and through
torch; the output is contracted with a random upstream gradient so that every element of every
input gradient is checked, not only their sum.
"""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("toykernels")

from toygrad.tensor import Tensor, no_grad  # noqa: E402
from toygrad.tensor import functional as F  # noqa: E402

TF = torch.nn.functional


def run_both(fn_toy, fn_torch, inputs, positive=False, seed=0):
    """Run fn on toygrad and torch copies of `inputs` (shapes or tensors); compare values and grads."""
    g = torch.Generator().manual_seed(seed)
    datas = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            datas.append(x)
            continue
        d = torch.randn(x, generator=g, dtype=torch.float64)
        datas.append(d.abs() + 0.5 if positive else d)
    toy = [Tensor(d, requires_grad=d.is_floating_point()) for d in datas]
    ref = [d.clone().requires_grad_(d.is_floating_point()) for d in datas]
    out = fn_toy(*toy)
    out_ref = fn_torch(*ref)
    torch.testing.assert_close(out.data, out_ref.detach(), rtol=1e-10, atol=1e-12)
    upstream = torch.randn(out_ref.shape, generator=g, dtype=torch.float64)
    (out * Tensor(upstream)).sum().backward()
    (out_ref * upstream).sum().backward()
    for t, r in zip(toy, ref):
        if r.is_floating_point():
            assert t.grad is not None and t.grad.shape == r.shape
            torch.testing.assert_close(t.grad, r.grad, rtol=1e-9, atol=1e-11)
    return toy


BINARY_SHAPES = [
    ((3, 5), (3, 5)),
    ((4, 1, 7), (3, 1)),  # both sides broadcast
    ((2, 3, 5), (5,)),  # a bias
    ((1,), (2, 3)),
    ((), (4, 3)),  # a 0-d tensor
]


@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
@pytest.mark.parametrize(
    "op",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a * b,
        lambda a, b: a / b,
        lambda a, b: a**b,
    ],
    ids=["add", "sub", "mul", "div", "pow"],
)
def test_binary_ops_with_broadcasting(op, shapes):
    run_both(op, op, shapes, positive=True)


@pytest.mark.parametrize(
    "op",
    [
        lambda a: a + 2.5, lambda a: 2.5 + a, lambda a: a - 1.5, lambda a: 1.5 - a, lambda a: a * 3.0,
        lambda a: 3.0 * a, lambda a: a / 4.0, lambda a: 4.0 / a, lambda a: a**3, lambda a: a**-0.5,
        lambda a: 2.0**a, lambda a: -a,
    ],
)
def test_scalar_ops(op):
    run_both(op, op, [(3, 7)], positive=True)


@pytest.mark.parametrize(
    "name, toy, ref",
    [
        ("exp", lambda a: a.exp(), torch.exp),
        ("log", lambda a: a.log(), torch.log),
        ("tanh", lambda a: a.tanh(), torch.tanh),
        ("relu", lambda a: a.relu(), torch.relu),
        ("gelu", lambda a: a.gelu(), lambda a: TF.gelu(a, approximate="tanh")),
    ],
)
def test_unary_ops(name, toy, ref):
    run_both(toy, ref, [(5, 11)], positive=(name == "log"))


@pytest.mark.parametrize(
    "sa, sb",
    [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((4,), (4, 5)), ((3, 4), (4,))],
    ids=str,
)
def test_matmul(sa, sb):
    run_both(lambda a, b: a @ b, lambda a, b: a @ b, [sa, sb])


@pytest.mark.parametrize("dim", [None, 0, 1, -1, (0, 2)], ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reductions(op, dim, keepdim):
    if dim is None and keepdim:
        def ref(a):
            return getattr(a, "amax" if op == "max" else op)(dim=tuple(range(a.dim())), keepdim=True)
    else:
        def ref(a):
            if op == "max":
                return a.amax() if dim is None else a.amax(dim=dim, keepdim=keepdim)
            return getattr(a, op)() if dim is None else getattr(a, op)(dim=dim, keepdim=keepdim)
    run_both(lambda a: getattr(a, op)(dim, keepdim), ref, [(3, 4, 5)])


def test_max_ties_share_the_gradient():
    x = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    run_both(lambda a: a.max(1), lambda a: a.amax(1), [x])


def test_shape_ops():
    run_both(lambda a: a.reshape(5, 6).transpose(0, 1), lambda a: a.reshape(5, 6).transpose(0, 1), [(2, 3, 5)])
    run_both(lambda a: a.permute(2, 0, 1).contiguous(), lambda a: a.permute(2, 0, 1).contiguous(), [(2, 3, 5)])
    run_both(lambda a: a.T @ a, lambda a: a.T @ a, [(4, 3)])
    run_both(lambda a: a.reshape(-1), lambda a: a.reshape(-1), [(2, 3)])


def test_indexing_basic_and_advanced():
    run_both(lambda a: a[1:, ::2], lambda a: a[1:, ::2], [(4, 6)])
    run_both(lambda a: a[..., 2] + a[:, None, 1], lambda a: a[..., 2] + a[:, None, 1], [(3, 5)])
    rows = torch.tensor([0, 2, 2, 1])  # row 2 twice: its gradient must add up
    cols = torch.tensor([1, 1, 1, 0])
    run_both(lambda a: a[rows, cols], lambda a: a[rows, cols], [(3, 4)])
    run_both(lambda a: a[rows], lambda a: a[rows], [(3, 4)])
    run_both(lambda a: a[:, rows], lambda a: a[:, rows], [(2, 3)])


def test_slices_of_one_tensor_accumulate():
    # three slices of one tensor (the q, k, v split) and a reuse of the whole tensor
    run_both(
        lambda a: a[:, :2] * a[:, 2:4] + a[:, 4:] + a[:, 1:3],
        lambda a: a[:, :2] * a[:, 2:4] + a[:, 4:] + a[:, 1:3],
        [(3, 6)],
    )
    # a shared gradient arrives first, then a slice adds into it: it must be copied, not mutated
    def f(a):
        b = a * 1.0
        return b + b[:, :1] * (b + 0.0)

    run_both(f, f, [(3, 6)])


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_log_softmax(dim):
    run_both(lambda a: F.softmax(a, dim), lambda a: torch.softmax(a, dim), [(4, 7, 3)])
    run_both(lambda a: F.log_softmax(a, dim), lambda a: torch.log_softmax(a, dim), [(4, 7, 3)])


@pytest.mark.parametrize("ignore", [False, True])
def test_cross_entropy(ignore):
    targets = torch.randint(0, 11, (3, 7))
    if ignore:
        targets[0, :4] = -1
        targets[2, 6] = -1
    run_both(
        lambda z: F.cross_entropy(z, targets, ignore_index=-1),
        lambda z: TF.cross_entropy(z.reshape(-1, 11), targets.reshape(-1), ignore_index=-1),
        [(3, 7, 11)],
    )


def test_linear_and_embedding():
    run_both(F.linear, TF.linear, [(2, 5, 7), (3, 7), (3,)])
    run_both(F.linear, TF.linear, [(4, 7), (3, 7)])
    idx = torch.tensor([[0, 3, 3], [4, 0, 1]])  # repeated rows: gradients add
    run_both(lambda w: F.embedding(idx, w), lambda w: TF.embedding(idx, w), [(5, 6)])


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 33)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(shape, affine):
    C = shape[-1]
    if affine:
        run_both(F.layer_norm, lambda x, w, b: TF.layer_norm(x, (C,), w, b), [shape, (C,), (C,)])
    else:
        run_both(F.layer_norm, lambda x: TF.layer_norm(x, (C,)), [shape])


@pytest.mark.parametrize("Tq, Tk, D", [(5, 5, 8), (3, 7, 16), (13, 13, 32)])
def test_causal_attention(Tq, Tk, D):
    def attention_ref(q, k, v):  # float64 all through (the toykernels reference softmaxes in fp32)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, Tq, Tk)
        mask = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)  # bottom-right aligned
        return torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1) @ v

    run_both(F.causal_attention, attention_ref, [(2, 3, Tq, D), (2, 3, Tk, D), (2, 3, Tk, D)])


def test_dropout_gradient_uses_the_same_mask():
    x = Tensor(torch.randn(200, 50, dtype=torch.float64), requires_grad=True)
    y = F.dropout(x, p=0.3)
    y.sum().backward()
    kept = y.data != 0
    assert 0.6 < kept.double().mean() < 0.8
    torch.testing.assert_close(x.grad, kept.double() / 0.7)
    assert F.dropout(x, 0.3, training=False) is x


def test_finite_differences():
    """Central differences in float64 on a composite expression touching most ops."""
    g = torch.Generator().manual_seed(3)
    a0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b0 = torch.randn(4, 5, generator=g, dtype=torch.float64)
    w0 = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    targets = torch.tensor([1, 4, 0])

    def f(a, b, w):
        h = (a @ b).tanh() * w + (a.exp().sum(1, keepdim=True) / w).log()
        h = F.layer_norm(h.gelu(), w, None) - h.max(1, keepdim=True) + h.relu().mean()
        return F.cross_entropy(F.softmax(h, -1) * 3.0 + h**2, targets)

    leaves = [Tensor(t, requires_grad=True) for t in (a0, b0, w0)]
    f(*leaves).backward()
    eps = 1e-6
    for i, leaf in enumerate(leaves):
        numeric = torch.zeros_like(leaf.data)
        for j in range(leaf.numel()):
            args = [t.clone() for t in (a0, b0, w0)]
            args[i].view(-1)[j] += eps
            plus = f(*[Tensor(t) for t in args]).item()
            args[i].view(-1)[j] -= 2 * eps
            minus = f(*[Tensor(t) for t in args]).item()
            numeric.view(-1)[j] = (plus - minus) / (2 * eps)
        torch.testing.assert_close(leaf.grad, numeric, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# engine behaviour


def test_torch_autograd_is_never_used():
    from toygrad.tensor import nn

    torch.manual_seed(0)
    model = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16))
    idx = torch.randint(0, 11, (2, 8))
    _, loss = model(idx, idx)
    seen, stack = set(), [loss]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        assert not node.data.requires_grad and node.data.grad_fn is None, node._op
        stack.extend(node._prev)
    assert len(seen) > 30
    loss.backward()
    for p in model.parameters():
        assert not p.grad.requires_grad and p.grad.grad_fn is None


def test_gradients_accumulate_and_zero_grad():
    x = Tensor(torch.randn(3, 4, dtype=torch.float64), requires_grad=True)
    (x * 2.0).sum().backward()
    (x * x).sum().backward()
    torch.testing.assert_close(x.grad, 2.0 + 2 * x.data)
    x.zero_grad()
    assert x.grad is None


def test_leaf_gradients_do_not_alias():
    a = Tensor(torch.randn(3), requires_grad=True)
    b = Tensor(torch.randn(3), requires_grad=True)
    (a + b).sum().backward()
    a.grad.zero_()  # an in-place change to one leaf's grad must not touch the other's
    torch.testing.assert_close(b.grad, torch.ones(3))


def test_backward_frees_the_graph():
    x = Tensor(torch.randn(4), requires_grad=True)
    h = x.exp()
    y = (h * h).sum()
    y.backward()
    assert h.grad is None and h._backward is None and h._prev == ()  # freed as it went
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()
    z = (x * x).sum()
    z.backward(retain_graph=True)
    z.backward()
    torch.testing.assert_close(x.grad, 2 * torch.exp(x.data) ** 2 + 4 * x.data)


def test_no_grad_and_detach():
    x = Tensor(torch.randn(3), requires_grad=True)
    with no_grad():
        y = x * 2.0 + 1.0
    assert not y.requires_grad and y._prev == ()
    d = x.detach()
    assert not d.requires_grad and d.data.data_ptr() == x.data.data_ptr()
    z = (x * d).sum()
    z.backward()
    torch.testing.assert_close(x.grad, d.data)
    assert d.grad is None


def test_gradient_keeps_its_tensors_dtype():
    a = Tensor(torch.randn(3), requires_grad=True)  # float32
    b = Tensor(torch.randn(3, dtype=torch.float64), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.float64


def test_deep_graph_has_no_recursion_limit():
    x = Tensor(torch.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2))


def test_torch_tensor_that_requires_grad_is_detached():
    t = torch.randn(3, requires_grad=True)
    x = Tensor(t, requires_grad=True)
    assert not x.data.requires_grad
    (x.exp()).sum().backward()
    assert t.grad is None


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda: Tensor(torch.ones(2, 3)) + Tensor(torch.ones(4, 3)), r"add: shapes \(2, 3\) and \(4, 3\)"),
        (lambda: Tensor(torch.ones(2, 3)) * Tensor(torch.ones(2)), r"mul: shapes \(2, 3\) and \(2,\)"),
        (lambda: Tensor(torch.ones(2, 3)) @ Tensor(torch.ones(4, 5)), r"matmul: shapes \(2, 3\) and \(4, 5\).*3 != 4"),
        (lambda: Tensor(torch.ones(2, 3)).reshape(4, 2), r"reshape: cannot reshape \(2, 3\)"),
        (lambda: F.linear(Tensor(torch.ones(2, 3)), Tensor(torch.ones(5, 4))), r"input \(2, 3\).*weight \(5, 4\)"),
        (lambda: F.cross_entropy(Tensor(torch.ones(2, 3)), torch.tensor([0, 1, 2])), r"targets of shape \(2,\)"),
        (lambda: F.cross_entropy(Tensor(torch.ones(2, 3)), torch.tensor([0, 3])), "target 3 out of range"),
        (lambda: F.embedding(torch.tensor([7]), Tensor(torch.ones(5, 2))), "index 7 out of range for 5"),
        (lambda: F.dropout(Tensor(torch.ones(2)), 1.5), "p must be in"),
    ],
)
def test_clear_errors(fn, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fn()


def test_backward_on_non_scalar_needs_a_gradient():
    x = Tensor(torch.randn(2, 2), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"single-element.*\(2, 2\)"):
        x.exp().backward()
    x.exp().backward(torch.ones(2, 2))
    torch.testing.assert_close(x.grad, torch.exp(x.data))


def test_gelu_matches_its_formula():
    x = Tensor(torch.linspace(-4, 4, 41, dtype=torch.float64))
    c = math.sqrt(2 / math.pi)
    expected = 0.5 * x.data * (1 + torch.tanh(c * (x.data + 0.044715 * x.data**3)))
    torch.testing.assert_close(x.gelu().data, expected)
