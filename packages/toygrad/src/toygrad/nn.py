"""Neural-network building blocks made of `Value`s: Module, Neuron, Layer, MLP, Linear.

Two APIs, one implementation:
- micrograd's (github.com/karpathy/micrograd, nn.py): `Neuron(nin, nonlin=True)`, `Layer(nin, nout)`,
  `MLP(nin, nouts)` with the last layer linear, `parameters()`, `zero_grad()`. Weights are drawn with
  `random.uniform(-1, 1)` in the same order and the bias starts at 0, so after the same
  `random.seed(...)` a model here starts with the same numbers as micrograd's and trains the same.
- torch's: a `Module` subclass defines `forward`, is called through `__call__`, and `parameters()`
  finds the parameters of every sub-module assigned as an attribute (lists of modules too).
  `Linear(in_features, out_features)` maps a list of Values to a list of Values.

A neuron's `w . x + b` is one n-ary `dot` node (see engine.py): this is where most of the speed-up
over a node-per-multiply engine comes from.
"""

import math
import random

from toygrad.engine import Value, dot

__all__ = ["Module", "Neuron", "Layer", "MLP", "Linear"]


class Module:
    """Base class: `parameters()` by discovery, `zero_grad()`, and `__call__` -> `forward`."""

    def __init__(self):
        pass

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward(self, ...)")

    def parameters(self):
        """Every Value reachable from this module's attributes, each once, in attribute order.

        Attributes that are Values, Modules, or lists/tuples/dicts of those are searched, the way
        torch registers sub-modules assigned as attributes. Any Value attribute counts as a
        parameter (there is no separate Parameter type in this scalar world).
        """
        params, seen = [], set()
        _collect(vars(self).values(), params, seen)
        return params

    def zero_grad(self):
        for p in self.parameters():
            p.grad = 0


def _collect(items, params, seen):
    for item in items:
        if isinstance(item, Value):
            if id(item) not in seen:  # a shared parameter is listed once, as torch does
                seen.add(id(item))
                params.append(item)
        elif isinstance(item, Module):
            # Through parameters(), so a subclass that overrides it (micrograd style) is honoured.
            _collect(item.parameters(), params, seen)
        elif isinstance(item, (list, tuple)):
            _collect(item, params, seen)
        elif isinstance(item, dict):
            _collect(item.values(), params, seen)


def _check_size(owner, name, n):
    # range(-1) and range(0) are empty: without this a layer of no neurons is built silently
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {n!r}")


def _check_inputs(module, x, expected):
    if len(x) != expected:
        raise ValueError(f"{module!r} expects {expected} inputs, got {len(x)}")


class Neuron(Module):
    def __init__(self, nin, nonlin=True):
        super().__init__()
        _check_size("Neuron", "nin", nin)
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0)
        self.nonlin = nonlin

    def forward(self, x):
        _check_inputs(self, x, len(self.w))
        act = dot(self.w, x, self.b)
        return act.relu() if self.nonlin else act

    def __repr__(self):
        return f"{'ReLU' if self.nonlin else 'Linear'}Neuron({len(self.w)})"


class Layer(Module):
    def __init__(self, nin, nout, **kwargs):
        super().__init__()
        _check_size("Layer", "nin", nin)
        _check_size("Layer", "nout", nout)
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]

    def forward(self, x):
        # Convert numbers once here rather than once per neuron.
        x = [xi if isinstance(xi, Value) else Value(xi) for xi in x]
        out = [n(x) for n in self.neurons]
        return out[0] if len(out) == 1 else out  # micrograd's convention: one output, no list

    def __repr__(self):
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    def __init__(self, nin, nouts):
        super().__init__()
        _check_size("MLP", "nin", nin)
        nouts = list(nouts)
        if not nouts:
            raise ValueError("MLP: nouts must list at least one layer size, got []")
        for i, n in enumerate(nouts):
            _check_size("MLP", f"nouts[{i}]", n)
        sz = [nin] + nouts
        # ReLU after every layer except the last, which is linear (its outputs are scores).
        self.layers = [Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1) for i in range(len(nouts))]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __repr__(self):
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"


class Linear(Module):
    """y = W x + b on lists of Values: `in_features` in, always a list of `out_features` out.

    Initialised as torch.nn.Linear is: weights and biases uniform in +-1/sqrt(in_features), which
    keeps the output's scale about that of the input whatever the layer width.
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        _check_size("Linear", "in_features", in_features)
        _check_size("Linear", "out_features", out_features)
        self.in_features = in_features
        self.out_features = out_features
        bound = 1.0 / math.sqrt(in_features)
        # weight[j][i] connects input i to output j, as torch's (out_features, in_features) layout.
        self.weight = [
            [Value(random.uniform(-bound, bound)) for _ in range(in_features)]
            for _ in range(out_features)
        ]
        self.bias = [Value(random.uniform(-bound, bound)) for _ in range(out_features)] if bias else None

    def forward(self, x):
        _check_inputs(self, x, self.in_features)
        x = [xi if isinstance(xi, Value) else Value(xi) for xi in x]
        if self.bias is None:
            return [dot(row, x) for row in self.weight]
        return [dot(row, x, b) for row, b in zip(self.weight, self.bias)]

    def __repr__(self):
        return (
            f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None})"
        )
