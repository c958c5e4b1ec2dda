"""A scalar-valued autograd engine: every number is a `Value` node in a graph.

The shape is micrograd's (Karpathy, github.com/karpathy/micrograd): each op builds `out` with its
children and op name, defines a nested `_backward` that *accumulates* its local derivative times
the gradient arriving at `out` into the children (`self.grad += local * grad`), attaches it and
returns `out`. Derived ops (`-`, `/`, the reflected ops) are one-liners over the primitives, so there
is one place per gradient rule. Code written against micrograd's `Value` runs unchanged here, with
the same numbers.

What is different, and why:
- Speed comes from mechanics, not from hiding the rules (see tools/bench_toygrad.py for figures):
  * `_backward(grad)` receives `out.grad` as an argument instead of reading it from `out`.
    NOTE: this matters more than anything else below. In micrograd the closure refers to `out`
    and `out` refers to the closure: every node is a reference cycle, so each step's graph becomes
    garbage that only Python's cycle collector can free, and the collector keeps walking tens of
    thousands of live nodes while the next graph is built (measured: ~60% of a demo step). Without
    the cycle the old graph is freed by reference counting the moment the loss is dropped.
    Rules that need the output's value (exp, tanh, relu, ...) keep that float, not `out`.
  * n-ary nodes: `dot(w, x, b)` computes a neuron's `b + w0*x0 + w1*x1 + ...` as ONE node with
    2n+1 children instead of 2n binary nodes; `add_n` sums a list in one node; `logsumexp` likewise.
    A 16-input neuron then builds 1 node instead of 32, so the demo's graph shrinks ~15x and so do
    the topological sort and the number of closures created and called. The forward sum is taken
    in the same order as micrograd's `sum(w*x, b)`, so the values are bit-for-bit the same.
  * `__slots__` (no per-node `__dict__`), children as a tuple rather than a set, one shared no-op
    `_backward` for leaves, and leaves left out of the backward ordering (their `_backward` does
    nothing, and they are most of the graph's edges: every weight and input of every neuron).
- `backward()` sorts the graph with an explicit stack, not recursion: a chain of 100,000 ops works
  (micrograd's recursive `build_topo` stops at Python's ~1,000-frame recursion limit).
- Calling `backward()` twice accumulates into the leaves, as torch does: interior nodes' grads are
  reset at the start of each pass (micrograd keeps them, so a second pass counts some paths twice).
- Bad input raises a clear error instead of returning a silently wrong number: non-numeric data,
  `log` of a non-positive value, division by zero, a complex result from `**`.
"""

import math
import numbers

__all__ = ["Value", "dot", "add_n", "logsumexp"]


def _leaf_backward(grad):
    # A leaf (or a constant) has no children to pass its gradient on to.
    pass


class Value:
    """A scalar, the gradient of the final output with respect to it, and how it was computed."""

    __slots__ = ("data", "grad", "_backward", "_prev", "_op", "label")

    def __init__(self, data, _children=(), _op="", label=""):
        if type(data) is not float:
            # Fast path above: ops always pass floats. Anything else is checked once, here.
            if isinstance(data, Value):
                raise TypeError(
                    f"Value(...) takes a number, got a Value ({data!r}); use the Value itself"
                )
            if not isinstance(data, numbers.Real):
                raise TypeError(
                    f"Value(...) takes a real number (int or float), got {type(data).__name__}: {data!r}"
                )
            # ints stay ints, as in micrograd (so reprs match); numpy scalars become Python numbers.
            data = int(data) if isinstance(data, numbers.Integral) else float(data)
        self.data = data
        self.grad = 0  # an int 0 as in micrograd; it becomes a float at the first accumulation
        self._backward = _leaf_backward
        self._prev = _children  # tuple of the nodes this one was computed from
        self._op = _op  # the op that produced this node, for draw_dot and debugging
        self.label = label

    # ---- primitive ops: each one defines its local derivative, once ----

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward(grad):
            self.grad += grad
            other.grad += grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward(grad):
            self.grad += other.data * grad
            other.grad += self.data * grad

        out._backward = _backward
        return out

    def __pow__(self, other):
        if isinstance(other, Value):
            return self._pow_value(other)
        if not isinstance(other, numbers.Real):
            raise TypeError(f"exponent must be a number or a Value, got {type(other).__name__}")
        base = self.data
        if base == 0 and other < 0:
            raise ZeroDivisionError(f"0.0 ** {other}: zero cannot be raised to a negative power")
        if base < 0 and not float(other).is_integer():
            raise ValueError(f"{base} ** {other}: a negative base needs an integer exponent")
        out = Value(float(base**other), (self,), f"**{other}")
        if base == 0 and other < 1:
            # NOTE: Python raises for 0.0 ** negative; torch's rule is the limit: 0 for the
            # constant x**0, +inf for 0 < p < 1 (the slope of sqrt at 0)
            slope = 0.0 if other == 0 else math.copysign(math.inf, base)  # -0.0 gives -inf, as torch
        else:
            slope = other * base ** (other - 1)

        def _backward(grad):
            self.grad += slope * grad

        out._backward = _backward
        return out

    def _pow_value(self, other):
        # a ** b with b a Value: d/da = b * a**(b-1), d/db = log(a) * a**b, so a must be > 0
        # (at a == 0 with b > 0 the d/db term tends to 0, which is what we use).
        a, b = self.data, other.data
        if a < 0 or (a == 0 and b <= 0):
            raise ValueError(
                f"{a} ** Value({b}): a Value exponent needs a positive base "
                "(the gradient with respect to the exponent is log(base) * base**exponent)"
            )
        a_pow_b = a**b
        out = Value(a_pow_b, (self, other), "**")

        def _backward(grad):
            self.grad += b * a ** (b - 1) * grad if a != 0 else 0.0
            other.grad += (math.log(a) * a_pow_b if a != 0 else 0.0) * grad

        out._backward = _backward
        return out

    def exp(self):
        try:
            e = math.exp(self.data)
        except OverflowError:
            raise OverflowError(f"exp({self.data}) overflows a float (largest is exp(709.78))") from None
        out = Value(e, (self,), "exp")

        def _backward(grad):
            self.grad += e * grad

        out._backward = _backward
        return out

    def log(self):
        if self.data <= 0:
            raise ValueError(f"log({self.data}): log needs a positive value")
        out = Value(math.log(self.data), (self,), "log")

        def _backward(grad):
            self.grad += grad / self.data

        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward(grad):
            self.grad += (1.0 - t * t) * grad

        out._backward = _backward
        return out

    def sigmoid(self):
        x = self.data
        # NOTE: two forms so that exp never overflows: for x < 0, exp(-x) could be huge.
        if x >= 0:
            s = 1.0 / (1.0 + math.exp(-x))
        else:
            e = math.exp(x)
            s = e / (1.0 + e)
        out = Value(s, (self,), "sigmoid")

        def _backward(grad):
            self.grad += s * (1.0 - s) * grad

        out._backward = _backward
        return out

    def softplus(self):
        """log(1 + exp(x)), computed without overflow; its derivative is sigmoid(x)."""
        x = self.data
        # max(x, 0) + log1p(exp(-|x|)) equals log(1 + exp(x)) and never overflows.
        out = Value(max(x, 0.0) + math.log1p(math.exp(-abs(x))), (self,), "softplus")

        def _backward(grad):
            if x >= 0:
                s = 1.0 / (1.0 + math.exp(-x))
            else:
                e = math.exp(x)
                s = e / (1.0 + e)
            self.grad += s * grad

        out._backward = _backward
        return out

    def relu(self):
        out = Value(0 if self.data < 0 else self.data, (self,), "ReLU")  # NaN stays NaN
        positive = out.data > 0

        def _backward(grad):
            # NOTE: the derivative at exactly 0 is taken as 0, as micrograd and torch do.
            if positive:
                self.grad += grad

        out._backward = _backward
        return out

    # ---- derived ops: no gradient rule of their own ----

    def __neg__(self):  # -self
        return self * -1

    def __radd__(self, other):  # other + self
        return self + other

    def __sub__(self, other):  # self - other
        return self + (-other)

    def __rsub__(self, other):  # other - self
        return other + (-self)

    def __rmul__(self, other):  # other * self
        return self * other

    def __truediv__(self, other):  # self / other
        # NOTE: a * b**-1 (not a / b) keeps micrograd's exact rounding; the check gives a clear error.
        divisor = other.data if isinstance(other, Value) else other
        if divisor == 0:
            raise ZeroDivisionError(f"division by zero: {self.data} / {divisor}")
        return self * other**-1

    def __rtruediv__(self, other):  # other / self
        if self.data == 0:
            raise ZeroDivisionError(f"division by zero: {other} / {self.data}")
        return other * self**-1

    def __rpow__(self, other):  # number ** self
        return Value(other) ** self

    # ---- backpropagation ----

    def backward(self):
        """Fill `.grad` of every node below this one with d(self)/d(node).

        Leaves (nodes not computed from others: parameters, inputs) accumulate, as in torch:
        call `zero_grad()` (or set `p.grad = 0`) between steps. Interior nodes are reset here, so
        after the pass their `.grad` holds this pass's gradient.
        """
        # Only interior nodes need ordering: a leaf's _backward does nothing, and leaves are most
        # of the graph's edges (every weight and input of every neuron).
        topo = self._topological_order(include_leaves=False)
        for node in topo:
            if node._prev:  # the root may itself be a leaf: it accumulates, below
                node.grad = 0.0
        # d(self)/d(self) = 1. A leaf root accumulates like any leaf.
        self.grad = self.grad + 1.0 if not self._prev else 1.0
        for node in reversed(topo):
            node._backward(node.grad)

    def _topological_order(self, include_leaves=True):
        return topological_order(self, include_leaves)

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"


def topological_order(root, include_leaves=True):
    """The nodes below `root` (by `._prev`), each after all of its children: an iterative
    depth-first search. toygrad.tensor's Tensor.backward uses it too.

    An explicit stack instead of recursion, so graph depth is limited by memory, not by
    Python's recursion limit. Each stack entry is (node, children_done): a node is pushed
    once to expand its children and once more to be emitted after them. Nodes are told apart
    by id(): a Tensor's == is elementwise, so it cannot go in a set. include_leaves=False leaves
    out the nodes without children, except the root.
    """
    topo = []
    visited = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            topo.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for child in node._prev:
            if id(child) not in visited and (include_leaves or child._prev):
                stack.append((child, False))
    return topo


# ---- n-ary nodes: one node (and one closure) for what would otherwise be a chain of many ----


def _as_value(x):
    return x if isinstance(x, Value) else Value(x)


def dot(weights, inputs, bias=None):
    """bias + sum_i weights[i] * inputs[i] as a single node: a neuron's pre-activation.

    Summed in the same order as `sum((w*x for w, x in zip(weights, inputs)), bias)`, so the value is
    bit-for-bit what the chain of binary nodes gives; the gradient is d/dw_i = x_i, d/dx_i = w_i.
    """
    if len(weights) != len(inputs):
        raise ValueError(f"dot: {len(weights)} weights but {len(inputs)} inputs")
    # Inline isinstance (not a helper call per element): this runs for every neuron, every sample.
    weights = [w if isinstance(w, Value) else Value(w) for w in weights]
    inputs = [x if isinstance(x, Value) else Value(x) for x in inputs]
    bias = Value(0.0) if bias is None else _as_value(bias)
    data = bias.data
    for w, x in zip(weights, inputs):
        data += w.data * x.data
    out = Value(data, (*weights, *inputs, bias), "dot")

    def _backward(grad):
        for w, x in zip(weights, inputs):
            w.grad += x.data * grad
            x.grad += w.data * grad
        bias.grad += grad

    out._backward = _backward
    return out


def add_n(values):
    """values[0] + values[1] + ... as a single node (same order and rounding as builtin sum)."""
    values = [v if isinstance(v, Value) else Value(v) for v in values]
    data = 0.0
    for v in values:
        data += v.data
    out = Value(data, tuple(values), "sum")

    def _backward(grad):
        for v in values:
            v.grad += grad

    out._backward = _backward
    return out


def logsumexp(values):
    """log(sum_i exp(values[i])) as a single node, stable for any magnitude.

    Shifted by the max m so no exp overflows, and with log1p over the other terms so that a
    dominant entry still gives full relative precision: lse = m + log1p(sum_{i != argmax} e^(x_i - m)).
    The gradient is the softmax: d lse / d x_i = exp(x_i - lse).
    """
    values = [_as_value(v) for v in values]
    if not values:
        raise ValueError("logsumexp of an empty list is -inf; pass at least one value")
    xs = [v.data for v in values]
    i_max = max(range(len(xs)), key=xs.__getitem__)
    m = xs[i_max]
    rest = sum(math.exp(x - m) for i, x in enumerate(xs) if i != i_max)
    lse = m + math.log1p(rest)
    out = Value(lse, tuple(values), "logsumexp")

    def _backward(grad):
        for v in values:
            v.grad += math.exp(v.data - lse) * grad

    out._backward = _backward
    return out
