"""toygrad.engine.Value against torch float64 (values and gradients) and finite differences."""

import math
import random
import sys

import pytest
from toygrad.engine import Value, add_n, dot, logsumexp

torch = pytest.importorskip("torch")
F = torch.nn.functional


def assert_close(actual, expected, what):
    assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12), f"{what}: {actual} != {expected}"


def run_both(fn, inputs):
    """fn(values) on toygrad Values and on torch float64 leaves; compare output and every grad."""
    vs = [Value(x) for x in inputs]
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    out_v = fn(vs, "toygrad")
    out_t = fn(ts, "torch")
    out_v.backward()
    out_t.backward()
    assert_close(out_v.data, out_t.item(), "value")
    for i, (v, t) in enumerate(zip(vs, ts)):
        expected = 0.0 if t.grad is None else t.grad.item()
        assert_close(v.grad, expected, f"grad of input {i}")
    return vs


def _softplus(x, lib):
    return x.softplus() if lib == "toygrad" else F.softplus(x)


# (name, fn(xs, lib), how to draw the inputs)
UNARY_AND_BINARY = [
    ("add", lambda x, lib: x[0] + x[1], "any"),
    ("sub", lambda x, lib: x[0] - x[1], "any"),
    ("mul", lambda x, lib: x[0] * x[1], "any"),
    ("div", lambda x, lib: x[0] / x[1], "any"),
    ("neg", lambda x, lib: -x[0], "any"),
    ("radd", lambda x, lib: 2.5 + x[0], "any"),
    ("rsub", lambda x, lib: 2.5 - x[0], "any"),
    ("rmul", lambda x, lib: -1.5 * x[0], "any"),
    ("rdiv", lambda x, lib: 3.0 / x[0], "any"),
    ("pow_int", lambda x, lib: x[0] ** 3, "any"),
    ("pow_neg_int", lambda x, lib: x[0] ** -2, "any"),
    ("pow_float", lambda x, lib: x[0] ** 1.7, "positive"),
    ("pow_value", lambda x, lib: x[0] ** x[1], "positive"),
    ("rpow", lambda x, lib: 2.0 ** x[0], "any"),
    ("exp", lambda x, lib: x[0].exp(), "any"),
    ("log", lambda x, lib: x[0].log(), "positive"),
    ("tanh", lambda x, lib: x[0].tanh(), "any"),
    ("sigmoid", lambda x, lib: x[0].sigmoid(), "any"),
    ("relu", lambda x, lib: x[0].relu(), "any"),
    ("softplus", lambda x, lib: _softplus(x[0], lib), "any"),
]


def draw(kind, n, rng):
    if kind == "positive":
        return [rng.uniform(0.2, 3.0) for _ in range(n)]
    # Away from 0 so that relu's kink and division stay out of the way.
    return [rng.choice([-1, 1]) * rng.uniform(0.2, 3.0) for _ in range(n)]


@pytest.mark.parametrize("name,fn,kind", UNARY_AND_BINARY, ids=[c[0] for c in UNARY_AND_BINARY])
def test_op_matches_torch(name, fn, kind):
    rng = random.Random(name)
    for _ in range(5):
        run_both(fn, draw(kind, 2, rng))


def test_sigmoid_and_softplus_are_stable_at_large_magnitude():
    for x in (-800.0, -40.0, 40.0, 800.0):
        run_both(lambda v, lib: v[0].sigmoid(), [x])
        run_both(lambda v, lib: _softplus(v[0], lib), [x])


def micrograd_expression(x, lib):
    # The expression of micrograd's README (and its test_more_ops), with every op kind.
    a, b = x
    c = a + b
    d = a * b + b**3
    c = c + (c + 1)  # c += c + 1 in the README (+= on a Value rebinds, as written here)
    c = c + (1 + c + (-a))
    d = d + (d * 2 + (b + a).relu())
    d = d + (3 * d + (b - a).relu())
    e = c - d
    f = e**2
    g = f / 2.0
    g = g + 10.0 / f
    return g


def smooth_expression(x, lib):
    a, b, c = x
    h = (a * b).tanh() + (b / c).exp().log() * a.sigmoid() - (a - c) ** 2
    return h * h.sigmoid() + (c**a) / (1 + b * b)


@pytest.mark.parametrize("fn,n", [(micrograd_expression, 2), (smooth_expression, 3)])
def test_composite_expressions_match_torch(fn, n):
    rng = random.Random(n)
    for _ in range(5):
        run_both(fn, [rng.uniform(0.3, 2.0) for _ in range(n)])


def test_micrograd_readme_numbers():
    a, b = Value(-4.0), Value(2.0)
    g = micrograd_expression([a, b], "toygrad")
    g.backward()
    assert f"{g.data:.4f}" == "24.7041"
    assert f"{a.grad:.4f}" == "138.8338"
    assert f"{b.grad:.4f}" == "645.5773"


def test_nary_nodes_match_torch():
    rng = random.Random(7)
    for n in (1, 2, 17):
        xs = [rng.gauss(0, 2) for _ in range(2 * n + 1)]

        def f(v, lib, n=n):
            w, x, bias = v[:n], v[n : 2 * n], v[2 * n]
            if lib == "toygrad":
                return dot(w, x, bias) * add_n(x) + logsumexp(w)
            w, x = torch.stack(w), torch.stack(x)
            return ((w * x).sum() + bias) * x.sum() + torch.logsumexp(w, 0)

        run_both(f, xs)


def test_logsumexp_does_not_overflow():
    vs = [Value(1000.0), Value(999.0), Value(-1000.0)]
    out = logsumexp(vs)
    out.backward()
    expected = torch.logsumexp(torch.tensor([1000.0, 999.0, -1000.0], dtype=torch.float64), 0)
    assert_close(out.data, expected.item(), "logsumexp")
    assert_close(sum(v.grad for v in vs), 1.0, "softmax sums to 1")


def test_dot_is_bit_identical_to_a_chain_of_binary_nodes():
    rng = random.Random(3)
    w = [Value(rng.uniform(-1, 1)) for _ in range(16)]
    x = [Value(rng.uniform(-1, 1)) for _ in range(16)]
    chain = sum((wi * xi for wi, xi in zip(w, x)), Value(0.25))
    assert dot(w, x, Value(0.25)).data == chain.data


@pytest.mark.parametrize("fn,n", [(smooth_expression, 3), (micrograd_expression, 2)])
def test_gradients_match_finite_differences(fn, n):
    rng = random.Random(11)
    xs = [rng.uniform(0.3, 2.0) for _ in range(n)]
    vs = [Value(x) for x in xs]
    fn(vs, "toygrad").backward()
    h = 1e-6
    for i in range(n):
        up = xs.copy()
        down = xs.copy()
        up[i] += h
        down[i] -= h
        f_up = fn([Value(u) for u in up], "toygrad").data
        f_down = fn([Value(d) for d in down], "toygrad").data
        numeric = (f_up - f_down) / (2 * h)
        assert math.isclose(vs[i].grad, numeric, rel_tol=1e-5, abs_tol=1e-6), (i, vs[i].grad, numeric)


def test_deep_chain_backpropagates_without_recursion():
    depth = 100_000
    x = Value(0.5)
    y = x
    for _ in range(depth):
        y = y * 1.0000001  # one op per step: 100,000 nodes deep
    assert depth > sys.getrecursionlimit()
    y.backward()
    assert math.isclose(x.grad, 1.0000001**depth, rel_tol=1e-9)


def test_reused_nodes_get_all_their_paths():
    a = Value(3.0)
    b = a + a
    c = b + b
    c.backward()
    assert (a.grad, b.grad) == (4.0, 2.0)
    x = Value(-2.0)
    y = x * x * x  # x used three times: dy/dx = 3x^2
    y.backward()
    assert x.grad == 12.0


def test_backward_twice_accumulates_like_torch():
    a_v, b_v = Value(1.3), Value(-0.7)
    a_t = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b_t = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    out_v = ((a_v * b_v).tanh() + a_v) * b_v
    out_t = ((a_t * b_t).tanh() + a_t) * b_t
    for _ in range(2):
        out_v.backward()
        out_t.backward(retain_graph=True)
    assert_close(a_v.grad, a_t.grad.item(), "a.grad after two passes")
    assert_close(b_v.grad, b_t.grad.item(), "b.grad after two passes")
    leaf = Value(2.0)
    leaf.backward()
    leaf.backward()
    assert leaf.grad == 2.0


def test_repr_and_fields():
    v = Value(2.0) * 3
    assert repr(v) == "Value(data=6.0, grad=0)"  # micrograd's repr, exactly
    assert repr(Value(2)) == "Value(data=2, grad=0)"
    v.backward()
    assert v.grad == 1.0


@pytest.mark.parametrize("bad", ["a", None, [1.0], 1j])
def test_non_numeric_data_is_a_type_error(bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        Value(bad)


def test_log_of_non_positive_is_a_value_error():
    for x in (0.0, -1.5):
        with pytest.raises(ValueError, match=r"log\(" + str(x)):
            Value(x).log()


def test_division_by_zero_names_the_values():
    with pytest.raises(ZeroDivisionError, match=r"3\.0 / 0"):
        Value(3.0) / 0
    with pytest.raises(ZeroDivisionError, match=r"3\.0 / 0\.0"):
        Value(3.0) / Value(0.0)
    with pytest.raises(ZeroDivisionError, match=r"2 / 0\.0"):
        2 / Value(0.0)
    with pytest.raises(ZeroDivisionError):
        Value(0.0) ** -1


def test_pow_that_would_be_complex_is_a_value_error():
    with pytest.raises(ValueError, match="integer exponent"):
        Value(-8.0) ** 0.5
    with pytest.raises(ValueError, match="positive base"):
        Value(-2.0) ** Value(2.0)
    with pytest.raises(TypeError, match="str"):
        Value(2.0) ** "2"


def test_exp_overflow_is_reported():
    with pytest.raises(OverflowError, match="exp"):
        Value(1000.0).exp()
