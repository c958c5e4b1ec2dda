"""toygrad.tensor ops: values and gradients against torch.autograd in float64, and finite differences.

Every op runs on random inputs (odd and broadcasting shapes) through toygrad and through torch;
the output is contracted with a random upstream gradient so that every element of every input
gradient is checked, not only their sum. The same contraction is then differentiated by central
finite differences (on a random subset of input elements), so each rule is checked against the
definition of the derivative as well as against torch. `test_fresh_random_shapes_*` draw new
shapes on every run from a seed they print (set TOYGRAD_TEST_SEED to replay one).
"""

import math
import os
import random
import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("toykernels")

from toygrad.tensor import Tensor, no_grad  # noqa: E402
from toygrad.tensor import functional as F  # noqa: E402

TF = torch.nn.functional


def finite_difference_check(fn_toy, datas, upstream, grads, seed=None, n_points=12, rng=None):
    """Central differences of sum(fn(*datas) * upstream) at up to `n_points` random elements of
    each floating-point input, against the engine's gradients `grads`. `seed` reseeds torch before
    each evaluation, for ops that draw random numbers (dropout): the same mask every time."""
    rng = rng or random.Random(0)
    eps = 1e-6

    def f(args):
        if seed is not None:
            torch.manual_seed(seed)
        with no_grad():
            return (fn_toy(*[Tensor(a) for a in args]).data * upstream).sum().item()

    for i, (d, grad) in enumerate(zip(datas, grads)):
        if not d.is_floating_point():
            continue
        points = rng.sample(range(d.numel()), min(n_points, d.numel()))
        for j in points:
            args = [a.clone() for a in datas]
            args[i].view(-1)[j] += eps
            plus = f(args)
            args[i].view(-1)[j] -= 2 * eps
            minus = f(args)
            numeric = (plus - minus) / (2 * eps)
            analytic = grad.reshape(-1)[j].item()
            assert abs(numeric - analytic) <= 1e-6 + 1e-5 * abs(analytic), (
                f"input {i} {tuple(d.shape)} element {j}: finite difference {numeric:.8g}, "
                f"backward {analytic:.8g}"
            )


def run_both(fn_toy, fn_torch, inputs, positive=False, seed=0, fd=True):
    """Run fn on toygrad and torch copies of `inputs` (shapes or tensors); compare values and
    grads with torch.autograd, then the grads with finite differences (unless fd=False)."""
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
    if fd:
        finite_difference_check(fn_toy, datas, upstream, [t.grad for t in toy], rng=random.Random(seed))
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
    [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((4,), (4, 5)), ((3, 4), (4,)),
     ((4,), (4,)), ((4,), (2, 4, 5)), ((2, 3, 4), (4,))],
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
    # at a tie max is not differentiable (no finite-difference check): torch's convention
    x = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    run_both(lambda a: a.max(1), lambda a: a.amax(1), [x], fd=False)


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
    mask = torch.tensor([[True, False, True, True], [False, False, True, False], [True, True, False, False]])
    run_both(lambda a: a[mask] * a[mask], lambda a: a[mask] * a[mask], [(3, 4)])  # a boolean mask
    run_both(lambda a: a[1, rows[:2]], lambda a: a[1, rows[:2]], [(3, 4)])  # mixed basic and advanced


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


# ----------------------------------------------------------------------------------------------
# fresh random shapes: new on every run (the seed is printed; TOYGRAD_TEST_SEED replays it)


@pytest.fixture
def fresh_rng():
    seed = int(os.environ.get("TOYGRAD_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"TOYGRAD_TEST_SEED={seed}")  # pytest shows it when the test fails
    return random.Random(seed)


def _random_shape(rng, ndim_max=4, sizes=(1, 2, 3, 5, 7)):
    return tuple(rng.choice(sizes) for _ in range(rng.randint(1, ndim_max)))


def _broadcast_pair(rng):
    """Two shapes that broadcast together: drop some leading axes of a common shape from each
    operand and set some of the remaining axes to 1."""
    full = _random_shape(rng, sizes=(2, 3, 5, 7))

    def operand():
        shape = list(full[rng.randint(0, len(full) - 1):])
        return tuple(1 if rng.random() < 0.3 else n for n in shape)

    a, b = operand(), operand()
    return (a, b) if rng.random() < 0.5 else (b, a)


@pytest.mark.parametrize("draw", range(4))
def test_fresh_random_shapes_binary(fresh_rng, draw):
    ops = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
           "div": lambda a, b: a / b, "pow": lambda a, b: a**b}
    for op in ops.values():
        shapes = _broadcast_pair(fresh_rng)
        run_both(op, op, list(shapes), positive=True, seed=fresh_rng.randrange(2**31))


@pytest.mark.parametrize("draw", range(4))
def test_fresh_random_shapes_matmul(fresh_rng, draw):
    n, k, m = (fresh_rng.choice((1, 2, 3, 5, 7, 11)) for _ in range(3))
    batch_a, batch_b = _broadcast_pair(fresh_rng)
    # keep at most 2 trailing batch axes of each (broadcasting aligns shapes on the right)
    batch_a, batch_b = (s[len(s) - min(len(s), fresh_rng.randint(0, 2)):] for s in (batch_a, batch_b))
    sa = batch_a + (n, k) if fresh_rng.random() < 0.85 else (k,)  # sometimes a 1-D vector
    sb = batch_b + (k, m) if fresh_rng.random() < 0.85 else (k,)
    run_both(lambda a, b: a @ b, lambda a, b: a @ b, [sa, sb], seed=fresh_rng.randrange(2**31))


@pytest.mark.parametrize("draw", range(4))
def test_fresh_random_shapes_reductions_and_shapes(fresh_rng, draw):
    shape = _random_shape(fresh_rng, sizes=(2, 3, 5, 7))
    nd = len(shape)
    dims = fresh_rng.sample(range(-nd, 0), fresh_rng.randint(1, nd))
    dim = fresh_rng.choice([None, dims[0], tuple(d % nd for d in dims)])
    keepdim = fresh_rng.random() < 0.5
    for op in ("sum", "mean", "max"):
        def ref(a, op=op):
            name = "amax" if op == "max" else op
            if dim is None:
                return getattr(a, name)(dim=tuple(range(nd)), keepdim=True) if keepdim else getattr(a, name)()
            return getattr(a, name)(dim=dim, keepdim=keepdim)

        run_both(lambda a, op=op: getattr(a, op)(dim, keepdim), ref, [shape], seed=fresh_rng.randrange(2**31))
    perm = list(range(nd))
    fresh_rng.shuffle(perm)
    d0, d1 = fresh_rng.randrange(nd), fresh_rng.randrange(nd)
    run_both(lambda a: a.permute(perm).reshape(-1, shape[perm[-1]]).exp(),
             lambda a: a.permute(perm).reshape(-1, shape[perm[-1]]).exp(), [shape])
    run_both(lambda a: a.transpose(d0, d1) * 2.0, lambda a: a.transpose(d0, d1) * 2.0, [shape])


@pytest.mark.parametrize("draw", range(4))
def test_fresh_random_shapes_nn_ops(fresh_rng, draw):
    seed = fresh_rng.randrange(2**31)
    shape = _random_shape(fresh_rng, ndim_max=3, sizes=(2, 3, 5, 7, 13))
    dim = fresh_rng.randrange(-len(shape), len(shape))
    run_both(lambda a: F.softmax(a, dim), lambda a: torch.softmax(a, dim), [shape], seed=seed)
    run_both(lambda a: F.log_softmax(a, dim), lambda a: torch.log_softmax(a, dim), [shape], seed=seed)
    # cross-entropy over V classes, with some targets ignored
    lead, V = _random_shape(fresh_rng, ndim_max=2), fresh_rng.choice((2, 5, 17))
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, lead, generator=g)
    targets[torch.rand(lead, generator=g) < 0.3] = -1
    targets.view(-1)[0] = 1  # at least one counted row
    run_both(lambda z: F.cross_entropy(z, targets, ignore_index=-1),
             lambda z: TF.cross_entropy(z.reshape(-1, V), targets.reshape(-1), ignore_index=-1),
             [lead + (V,)], seed=seed)
    # layer norm over a random width (primes included), with and without affine parameters
    C = fresh_rng.choice((1, 2, 7, 31, 64))
    x_shape = _random_shape(fresh_rng, ndim_max=2) + (C,)
    run_both(F.layer_norm, lambda x, w, b: TF.layer_norm(x, (C,), w, b), [x_shape, (C,), (C,)], seed=seed)
    run_both(F.layer_norm, lambda x: TF.layer_norm(x, (C,)), [x_shape], seed=seed)
    # linear, embedding and advanced indexing with repeated indices
    n_in, n_out = fresh_rng.choice((1, 3, 8)), fresh_rng.choice((1, 4, 9))
    run_both(F.linear, TF.linear, [_random_shape(fresh_rng, ndim_max=2) + (n_in,), (n_out, n_in), (n_out,)], seed=seed)
    idx = torch.randint(0, 5, _random_shape(fresh_rng, ndim_max=2), generator=g)
    run_both(lambda w: F.embedding(idx, w), lambda w: TF.embedding(idx, w), [(5, n_out)], seed=seed)
    run_both(lambda a: a[idx] * a[idx], lambda a: a[idx] * a[idx], [(5, n_in)], seed=seed)


@pytest.mark.parametrize("draw", range(3))
def test_fresh_random_shapes_attention(fresh_rng, draw):
    B, H = fresh_rng.randint(1, 3), fresh_rng.randint(1, 3)
    Tk = fresh_rng.randint(1, 17)
    Tq = fresh_rng.randint(1, Tk)
    D = fresh_rng.choice((1, 4, 7, 16))

    def attention_ref(q, k, v):
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, Tq, Tk)
        mask = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
        return torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1) @ v

    run_both(F.causal_attention, attention_ref, [(B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D)],
             seed=fresh_rng.randrange(2**31))


def test_dropout_gradient_uses_the_same_mask():
    x = Tensor(torch.randn(200, 50, dtype=torch.float64), requires_grad=True)
    y = F.dropout(x, p=0.3)
    y.sum().backward()
    kept = y.data != 0
    assert 0.6 < kept.double().mean() < 0.8
    torch.testing.assert_close(x.grad, kept.double() / 0.7)
    assert F.dropout(x, 0.3, training=False) is x


def test_dropout_finite_differences():
    """With the mask held fixed (torch reseeded before every evaluation) dropout is linear."""
    x = torch.randn(6, 9, dtype=torch.float64)
    upstream = torch.randn(6, 9, dtype=torch.float64)
    leaf = Tensor(x, requires_grad=True)
    torch.manual_seed(5)
    (F.dropout(leaf, 0.4) * Tensor(upstream)).sum().backward()
    finite_difference_check(lambda a: F.dropout(a, 0.4), [x], upstream, [leaf.grad], seed=5, n_points=54)


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
        saved = [c.cell_contents for c in (node._backward.__closure__ or ())] if node._backward else []
        for t in saved:  # the forward tensors each backward rule kept
            if isinstance(t, torch.Tensor):
                assert not t.requires_grad and t.grad_fn is None, node._op
        stack.extend(node._prev)
    assert len(seen) > 30
    loss.backward()
    for p in model.parameters():
        assert not p.grad.requires_grad and p.grad.grad_fn is None
    # with torch's autograd switched off altogether the gradients are the same, bit for bit
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autograd.set_grad_enabled(False):
        model(idx, idx)[1].backward()
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


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


def _probe(t: Tensor, record: list, refs: list) -> Tensor:
    """An identity op whose backward records which of `refs` (weakrefs) are still alive."""
    out = Tensor._result(t.data.clone(), (t,), "probe")

    def _backward(grad):
        record.append([r() is not None for r in refs])
        t._accum(grad)

    return Tensor._attach(out, _backward)


def test_backward_frees_buffers_as_it_goes():
    """A node's saved forward tensors are released once it has passed its gradient on, while
    backward is still running, and not before: those of nodes not yet reached are still alive."""
    x = Tensor(torch.randn(64, 64, dtype=torch.float64), requires_grad=True)
    h1 = x.exp()  # its backward needs its output: h1.data stays saved until exp's turn
    h2 = _probe(h1, record := [], refs := []).tanh()  # tanh saves its output h2.data
    y = (h2 * 3.0).sum()
    refs += [weakref.ref(h2.data), weakref.ref(h1.data)]
    del h1, h2  # only the graph holds them now
    y.backward()
    assert record == [[False, True]]  # at the probe: tanh's buffers gone, exp's still there
    assert [r() is None for r in refs] == [True, True]  # and after backward, all gone
    torch.testing.assert_close(x.grad, 3 * (1 - torch.tanh(torch.exp(x.data)) ** 2) * torch.exp(x.data))


def test_backward_frees_every_interior_buffer_of_a_gpt():
    """After loss.backward(), with the loss still held, no activation or saved tensor survives:
    every interior node's output and every torch tensor its closure saved is released (only the
    parameters, the inputs and the loss remain)."""
    from toygrad.tensor import nn

    torch.manual_seed(0)
    model = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16))
    idx, targets = torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))
    logits, loss = model(idx, targets)
    keep = {id(p.data) for p in model.parameters()} | {id(idx), id(targets), id(loss.data)}
    refs, seen, stack = [], set(), [loss]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        saved = [c.cell_contents for c in (node._backward.__closure__ or ())] if node._backward else []
        for t in [node.data] + [v for v in saved if isinstance(v, torch.Tensor)]:
            if id(t) not in keep:
                refs.append(weakref.ref(t))
        stack.extend(node._prev)
    assert len(refs) > 50
    del logits, node, saved, t, stack
    loss.backward()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of {len(refs)} interior tensors survived backward"
    assert all(p.grad is not None for p in model.parameters())


def test_gradient_accumulation_matches_torch():
    """Several backward() calls without zero_grad add up, as in torch (also through a tensor
    used twice and a broadcast)."""
    g = torch.Generator().manual_seed(7)
    a0, b0 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    a, b = Tensor(a0, requires_grad=True), Tensor(b0, requires_grad=True)
    ra, rb = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    losses = [
        lambda a, b: (a * b).tanh().sum(),
        lambda a, b: (a @ b).exp().mean() * a.sum(),
        lambda a, b: ((a + b) ** 2).max(),
    ]
    for fn in losses:
        fn(a, b).backward()
        fn(ra, rb).backward()
        torch.testing.assert_close(a.grad, ra.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b.grad, rb.grad, rtol=1e-12, atol=1e-12)


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
        (lambda: Tensor(torch.ones(3, 2)) - Tensor(torch.ones(4)), r"add: shapes \(3, 2\) and \(4,\)"),
        (lambda: Tensor(torch.ones(3, 2)) / Tensor(torch.ones(3, 3)), r"div: shapes \(3, 2\) and \(3, 3\)"),
        (lambda: Tensor(torch.ones(5)) ** Tensor(torch.ones(2)), r"pow: shapes \(5,\) and \(2,\)"),
        (lambda: Tensor(torch.ones(2, 3, 4)) @ Tensor(torch.ones(5, 4, 6)),
         r"batch dimensions of \(2, 3, 4\) and \(5, 4, 6\)"),
        (lambda: F.layer_norm(Tensor(torch.ones(2, 4)), Tensor(torch.ones(5))), r"weight has shape \(5,\).* 4"),
        (lambda: F.causal_attention(*(Tensor(torch.ones(1, 2, 3, s)) for s in (4, 4, 8))),
         r"k \(1, 2, 3, 4\), v \(1, 2, 3, 8\)"),
        (lambda: F.causal_attention(*(Tensor(torch.ones(1, 2, t, 4)) for t in (5, 3, 3))), "query length 5 > key length 3"),
        (lambda: Tensor(torch.ones(2, 3), requires_grad=True).exp().backward(torch.ones(3, 2)),
         r"gradient shape \(3, 2\) != tensor shape \(2, 3\)"),
        (lambda: Tensor(torch.ones(2, 3)).permute(0, 0), r"not a permutation .* \(2, 3\)"),
        (lambda: F.embedding(torch.tensor([0.5]), Tensor(torch.ones(5, 2))), "indices must be integers"),
        (lambda: F.cross_entropy(Tensor(torch.ones(2, 3)), torch.tensor([0.0, 1.0])), "integer class indices"),
        (lambda: Tensor(torch.tensor([1, 2]), requires_grad=True), "only floating-point"),
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
