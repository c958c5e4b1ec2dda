"""An array-level reverse-mode autodiff engine: `Tensor`, the scalar `Value` lifted to arrays.

torch tensors hold the data and do the arithmetic; torch.autograd is never used. A `Tensor`
wraps a torch tensor that never requires grad (the constructor detaches it), so torch records
nothing; every gradient rule is toygrad's own and sits next to its forward, micrograd-style:

    out = _result(forward data, children, op)
    def _backward(grad):          # grad = d(loss)/d(out), same shape as out
        a._accum(local rule applied to grad)
    return _attach(out, _backward)

Differences from the scalar engine, and why:
- `_backward` takes the output's gradient as an argument instead of reading `out.grad`: the
  closure then holds no reference to `out`, so no reference cycle out -> closure -> out keeps
  forward buffers alive when a graph is dropped without calling backward.
- Broadcasting: an input that was broadcast got its value copied along the broadcast axes, so
  its gradient is the sum over those axes (`_unbroadcast`); see docs/tensor-autograd.md.
- `backward()` frees as it goes: once a node has passed its gradient on, its gradient and its
  closure (and with it the saved forward tensors) are dropped, as torch frees its graph.
- Gradients accumulate into leaves across `backward()` calls, as in torch; `zero_grad` resets.
"""

from __future__ import annotations

import contextlib
import math

import torch

from toygrad.engine import topological_order

__all__ = ["Tensor", "no_grad", "is_grad_enabled", "tensor"]

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Inside this block ops build no graph: results have requires_grad=False."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def _unbroadcast(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum `grad` down to `shape`: the gradient of a broadcast is the sum over the copies."""
    if grad.shape == shape:
        return grad
    extra = grad.dim() - len(shape)  # leading axes that broadcasting added
    axes = list(range(extra))
    axes += [extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1]
    if axes:
        grad = grad.sum(dim=axes, keepdim=True)
    return grad.reshape(shape)  # drop the added leading axes


def _shape_error(op: str, a, b) -> ValueError:
    return ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together")


class Tensor:
    """An n-dimensional array, the gradient of the final output with respect to it, and how it
    was computed."""

    __slots__ = ("data", "grad", "requires_grad", "_backward", "_prev", "_op", "_owns_grad")

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        if isinstance(data, Tensor):
            raise TypeError("Tensor(...) takes a torch tensor, number or list, got a Tensor; use .detach()")
        if isinstance(data, torch.Tensor):
            # detach: the engine must never feed torch.autograd a tensor that requires grad
            data = data.detach()
            if dtype is not None or device is not None:
                data = data.to(dtype=dtype, device=device)
        else:
            data = torch.tensor(data, dtype=dtype or torch.get_default_dtype(), device=device)
        if requires_grad and not data.is_floating_point():
            raise TypeError(f"only floating-point tensors can require grad, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._backward = None  # leaves have none; set by _attach for op results
        self._prev = ()  # the tensors this one was computed from (only those needing grad)
        self._op = ""
        self._owns_grad = False  # True when self.grad may be updated in place

    # ------------------------------------------------------------------------------------------
    # plumbing

    @staticmethod
    def _result(data: torch.Tensor, children: tuple, op: str) -> Tensor:
        """Wrap an op's output; it needs grad when grad mode is on and any input needs grad."""
        out = Tensor.__new__(Tensor)
        out.data = data
        out.grad = None
        out._backward = None
        out._op = op
        out._owns_grad = False
        if _grad_enabled:
            prev = tuple(c for c in children if c.requires_grad)
            out.requires_grad = bool(prev)
            out._prev = prev
        else:
            out.requires_grad = False
            out._prev = ()
        return out

    @staticmethod
    def _attach(out: Tensor, backward) -> Tensor:
        if out.requires_grad:
            out._backward = backward
        return out

    def _accum(self, g: torch.Tensor) -> None:
        """self.grad += g, without ever writing into a tensor someone else may hold.

        The first gradient to arrive is kept as it is (often the very tensor another input also
        received, e.g. both sides of a `+`); the second is added out of place into a new buffer
        the node then owns; from the third on, the sum is accumulated in place there."""
        if not self.requires_grad:
            return
        if g.dtype != self.data.dtype:  # type promotion (fp32 op fp64) must not leak into grads
            g = g.to(self.data.dtype)
        if self.grad is None:
            if not self._prev:  # a leaf: its grad is user-visible, so give it its own copy
                self.grad, self._owns_grad = g.clone(), True
            else:
                self.grad, self._owns_grad = g, False
        elif self._owns_grad:
            self.grad.add_(g)  # our own buffer: add in place, no new allocation
        else:
            self.grad, self._owns_grad = self.grad + g, True

    def _accum_at(self, index, g: torch.Tensor) -> None:
        """self.grad[index] += g (for slices: no zero tensor per slice, one per input)."""
        if not self.requires_grad:
            return
        if self.grad is None:
            self.grad, self._owns_grad = torch.zeros_like(self.data), True
        elif not self._owns_grad:
            self.grad, self._owns_grad = self.grad.clone(), True
        # NOTE: not `self.grad[index] += g`: Python runs that as get, add in place, then set,
        # and the set copies the view onto itself, one more pass over the slice
        self.grad[index].add_(g)

    @staticmethod
    def _lift(x, like: Tensor) -> Tensor:
        return x if isinstance(x, Tensor) else Tensor(torch.as_tensor(x, dtype=like.dtype, device=like.device))

    # ------------------------------------------------------------------------------------------
    # properties

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def ndim(self) -> int:
        return self.data.dim()

    def dim(self) -> int:
        return self.data.dim()

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return self.data.numel()

    def item(self) -> float:
        return self.data.item()

    def numpy(self):
        return self.data.cpu().numpy()

    def detach(self) -> Tensor:
        """The same data as a new leaf outside the graph (shares memory, like torch)."""
        return Tensor(self.data)

    def to(self, *args, **kwargs) -> Tensor:
        """A copy on another device / dtype as a new leaf (keeps requires_grad)."""
        return Tensor(self.data.to(*args, **kwargs), requires_grad=self.requires_grad)

    def zero_grad(self) -> None:
        self.grad = None

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._op!r}" if self._op else ""
        return f"Tensor({self.data!r}{grad}{op})"

    def __len__(self) -> int:
        return len(self.data)

    # ------------------------------------------------------------------------------------------
    # elementwise binary ops (broadcasting)

    def __add__(self, other) -> Tensor:
        if not isinstance(other, Tensor):  # a Python number: a constant, nothing to send it
            out = Tensor._result(self.data + other, (self,), "+")

            def _backward(grad):
                self._accum(grad)

            return Tensor._attach(out, _backward)
        try:
            data = self.data + other.data
        except RuntimeError:
            raise _shape_error("add", self, other) from None
        out = Tensor._result(data, (self, other), "+")

        def _backward(grad):
            self._accum(_unbroadcast(grad, self.shape))
            other._accum(_unbroadcast(grad, other.shape))

        return Tensor._attach(out, _backward)

    def __mul__(self, other) -> Tensor:
        if not isinstance(other, Tensor):
            out = Tensor._result(self.data * other, (self,), "*")

            def _backward(grad):
                self._accum(grad * other)

            return Tensor._attach(out, _backward)
        a, b = self.data, other.data
        try:
            data = a * b
        except RuntimeError:
            raise _shape_error("mul", self, other) from None
        out = Tensor._result(data, (self, other), "*")

        def _backward(grad):
            if self.requires_grad:
                self._accum(_unbroadcast(grad * b, self.shape))
            if other.requires_grad:
                other._accum(_unbroadcast(grad * a, other.shape))

        return Tensor._attach(out, _backward)

    def __truediv__(self, other) -> Tensor:
        if not isinstance(other, Tensor):
            return self * (1.0 / other)
        a, b = self.data, other.data
        try:
            data = a / b
        except RuntimeError:
            raise _shape_error("div", self, other) from None
        out = Tensor._result(data, (self, other), "/")

        def _backward(grad):
            # d(a/b)/da = 1/b,  d(a/b)/db = -a/b^2
            if self.requires_grad:
                self._accum(_unbroadcast(grad / b, self.shape))
            if other.requires_grad:
                other._accum(_unbroadcast(-grad * a / (b * b), other.shape))

        return Tensor._attach(out, _backward)

    def __pow__(self, exponent) -> Tensor:
        x = self.data
        if not isinstance(exponent, Tensor):
            if not isinstance(exponent, (int, float)):
                raise TypeError(f"pow: exponent must be a number or a Tensor, got {type(exponent).__name__}")
            out = Tensor._result(x**exponent, (self,), f"**{exponent}")

            def _backward(grad):
                self._accum(grad * exponent * x ** (exponent - 1))

            return Tensor._attach(out, _backward)
        e = exponent.data
        try:
            y = x**e
        except RuntimeError:
            raise _shape_error("pow", self, exponent) from None
        out = Tensor._result(y, (self, exponent), "**")

        def _backward(grad):
            # d(x^e)/dx = e x^(e-1),  d(x^e)/de = x^e log x
            if self.requires_grad:
                self._accum(_unbroadcast(grad * e * x ** (e - 1), self.shape))
            if exponent.requires_grad:
                exponent._accum(_unbroadcast(grad * y * torch.log(x), exponent.shape))

        return Tensor._attach(out, _backward)

    # derived ops: one-liners over the primitives, as in micrograd
    def __neg__(self) -> Tensor:
        return self * -1.0

    def __sub__(self, other) -> Tensor:
        return self + (-other)

    def __radd__(self, other) -> Tensor:
        return self + other

    def __rsub__(self, other) -> Tensor:
        return (-self) + other

    def __rmul__(self, other) -> Tensor:
        return self * other

    def __rtruediv__(self, other) -> Tensor:
        return Tensor._lift(other, self) / self

    def __rpow__(self, base) -> Tensor:
        return Tensor._lift(base, self) ** self

    # ------------------------------------------------------------------------------------------
    # elementwise unary ops

    def exp(self) -> Tensor:
        y = torch.exp(self.data)
        out = Tensor._result(y, (self,), "exp")

        def _backward(grad):
            self._accum(grad * y)  # d(e^x)/dx = e^x

        return Tensor._attach(out, _backward)

    def log(self) -> Tensor:
        x = self.data
        out = Tensor._result(torch.log(x), (self,), "log")

        def _backward(grad):
            self._accum(grad / x)

        return Tensor._attach(out, _backward)

    def tanh(self) -> Tensor:
        y = torch.tanh(self.data)
        out = Tensor._result(y, (self,), "tanh")

        def _backward(grad):
            self._accum(grad * (1 - y * y))

        return Tensor._attach(out, _backward)

    def relu(self) -> Tensor:
        y = torch.relu(self.data)
        out = Tensor._result(y, (self,), "relu")

        def _backward(grad):
            # NOTE: the derivative at 0 is taken as 0, as torch does
            self._accum(grad * (y > 0))

        return Tensor._attach(out, _backward)

    def gelu(self) -> Tensor:
        """GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        x = self.data
        out = Tensor._result(torch.nn.functional.gelu(x, approximate="tanh"), (self,), "gelu")

        def _backward(grad):
            self._accum(_gelu_tanh_backward(x, grad))

        return Tensor._attach(out, _backward)

    # ------------------------------------------------------------------------------------------
    # matmul

    def __matmul__(self, other) -> Tensor:
        other = Tensor._lift(other, self)
        a, b = self.data, other.data
        if a.dim() == 0 or b.dim() == 0:
            raise ValueError(f"matmul: both operands need at least 1 dimension, got {tuple(a.shape)} @ {tuple(b.shape)}")
        k_a = a.shape[-1]
        k_b = b.shape[-2] if b.dim() > 1 else b.shape[0]
        if k_a != k_b:
            raise ValueError(
                f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} don't match: "
                f"inner dimensions {k_a} != {k_b}"
            )
        try:
            data = a @ b
        except RuntimeError:
            raise ValueError(
                f"matmul: batch dimensions of {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast"
            ) from None
        out = Tensor._result(data, (self, other), "@")

        def _backward(grad):
            # Y = A B  =>  dA = dY B^T,  dB = A^T dY  (docs/tensor-autograd.md, "matmul").
            # 1-D operands are a row (A) or a column (B) vector, as in torch.matmul.
            a2 = a.unsqueeze(0) if a.dim() == 1 else a
            b2 = b.unsqueeze(-1) if b.dim() == 1 else b
            # put back the axes the 1-D operands dropped: m (last) first, then n, so that a
            # dot product's 0-d gradient becomes (1, 1)
            g = grad.unsqueeze(-1) if b.dim() == 1 else grad
            g = g.unsqueeze(-2) if a.dim() == 1 else g
            if self.requires_grad:
                self._accum(_unbroadcast(g @ b2.mT, a2.shape).reshape(a.shape))
            if other.requires_grad:
                if b2.dim() == 2 and a2.dim() > 2:
                    # A weight shared across a batch: one (k, N) @ (N, m) product instead of a
                    # batched product followed by a sum over the batch.
                    db = a2.reshape(-1, a2.shape[-1]).mT @ g.reshape(-1, g.shape[-1])  # (k, m)
                else:
                    db = _unbroadcast(a2.mT @ g, b2.shape)
                other._accum(db.reshape(b.shape))

        return Tensor._attach(out, _backward)

    def __rmatmul__(self, other) -> Tensor:
        return Tensor._lift(other, self) @ self

    # ------------------------------------------------------------------------------------------
    # reductions

    def sum(self, dim=None, keepdim: bool = False) -> Tensor:
        shape = self.shape
        data = self.data.sum() if dim is None else self.data.sum(dim=dim, keepdim=keepdim)
        if dim is None and keepdim:
            data = data.reshape([1] * len(shape))
        out = Tensor._result(data, (self,), "sum")

        def _backward(grad):
            # every input element contributed once: copy the gradient back along the summed axes
            self._accum(_expand_back(grad, shape, dim, keepdim))

        return Tensor._attach(out, _backward)

    def mean(self, dim=None, keepdim: bool = False) -> Tensor:
        n = self.numel() if dim is None else math.prod(self.shape[d] for d in _dims(dim))
        return self.sum(dim, keepdim) * (1.0 / n)

    def max(self, dim=None, keepdim: bool = False) -> Tensor:
        """The maximum over `dim` (values only). Ties share the gradient equally, as torch.amax."""
        x, shape = self.data, self.shape
        data = x.amax() if dim is None else x.amax(dim=dim, keepdim=keepdim)
        if dim is None and keepdim:
            data = data.reshape([1] * len(shape))
        out = Tensor._result(data, (self,), "max")

        def _backward(grad):
            m = _expand_back(data, shape, dim, keepdim)
            mask = (x == m).to(x.dtype)
            count = mask.sum() if dim is None else mask.sum(dim=dim, keepdim=True)
            self._accum(mask / count * _expand_back(grad, shape, dim, keepdim))

        return Tensor._attach(out, _backward)

    # ------------------------------------------------------------------------------------------
    # shape ops: the gradient is reshaped / permuted back

    def reshape(self, *shape) -> Tensor:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        in_shape = self.shape
        try:
            data = self.data.reshape(shape)
        except RuntimeError:
            raise ValueError(f"reshape: cannot reshape {tuple(in_shape)} ({self.numel()} elements) to {shape}") from None
        out = Tensor._result(data, (self,), "reshape")

        def _backward(grad):
            self._accum(grad.reshape(in_shape))

        return Tensor._attach(out, _backward)

    view = reshape

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        out = Tensor._result(self.data.transpose(dim0, dim1), (self,), "transpose")

        def _backward(grad):
            self._accum(grad.transpose(dim0, dim1))

        return Tensor._attach(out, _backward)

    @property
    def T(self) -> Tensor:
        if self.ndim != 2:
            raise ValueError(f".T needs a 2-D tensor, got shape {tuple(self.shape)}; use transpose/permute")
        return self.transpose(0, 1)

    def permute(self, *dims) -> Tensor:
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        if sorted(d % self.ndim for d in dims) != list(range(self.ndim)):
            raise ValueError(f"permute: {dims} is not a permutation of the {self.ndim} dims of {tuple(self.shape)}")
        inverse = [0] * len(dims)
        for i, d in enumerate(dims):
            inverse[d % self.ndim] = i
        out = Tensor._result(self.data.permute(dims), (self,), "permute")

        def _backward(grad):
            self._accum(grad.permute(inverse))

        return Tensor._attach(out, _backward)

    def contiguous(self) -> Tensor:
        out = Tensor._result(self.data.contiguous(), (self,), "contiguous")

        def _backward(grad):
            self._accum(grad)

        return Tensor._attach(out, _backward)

    # ------------------------------------------------------------------------------------------
    # indexing

    def __getitem__(self, index) -> Tensor:
        index = _unwrap_index(index)
        data = self.data[index]
        out = Tensor._result(data, (self,), "getitem")
        if _is_basic_index(index):
            # slices and integers pick each element at most once: add into the picked places
            def _backward(grad):
                self._accum_at(index, grad)
        else:
            # advanced (tensor) indices may pick an element twice; those gradients must add up.
            # Index a tensor of flat positions the same way, then scatter-add along them.
            shape = self.shape

            def _backward(grad):
                position = torch.arange(self.numel(), device=grad.device).reshape(shape)[index]
                g = torch.zeros(self.numel(), dtype=grad.dtype, device=grad.device)
                g.index_add_(0, position.reshape(-1), grad.reshape(-1))
                self._accum(g.reshape(shape))

        return Tensor._attach(out, _backward)

    # ------------------------------------------------------------------------------------------
    # backward

    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Backpropagate from this tensor: accumulate d(self)/d(leaf) into every leaf's .grad.

        `gradient` defaults to 1 for a single-element tensor. Interior nodes pass their gradient
        on in reverse topological order and then drop it, with their closure and the forward
        tensors it saved, unless retain_graph=True.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input requires grad, or no_grad was on)")
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError(
                    f"backward: gradient can be implied only for a single-element tensor, got shape {tuple(self.shape)}"
                )
            gradient = torch.ones_like(self.data)
        else:
            gradient = gradient.data if isinstance(gradient, Tensor) else torch.as_tensor(gradient)
            if gradient.shape != self.shape:
                raise ValueError(f"backward: gradient shape {tuple(gradient.shape)} != tensor shape {tuple(self.shape)}")
            gradient = gradient.to(dtype=self.dtype, device=self.device)

        if self._op and not self._prev:
            raise RuntimeError(_FREED)

        topo = topological_order(self)  # iterative: a deep graph must not hit the recursion limit
        self._accum(gradient)
        while topo:  # reverse topological order; popping lets each finished node be freed
            node = topo.pop()
            if not node._prev:
                if node._op:  # an op result whose graph a previous backward() freed
                    raise RuntimeError(_FREED)
                continue  # a leaf: keeps its gradient
            grad = node.grad
            if grad is not None:
                node._backward(grad)
            if not retain_graph:
                node.grad = None
                node._backward = None
                node._prev = ()
            else:
                node.grad = None


_FREED = (
    "backward: the graph was already freed by an earlier backward(); "
    "pass retain_graph=True to the first call to backward twice"
)


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """Shorthand for Tensor(data, ...), as torch.tensor."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _dims(dim) -> tuple:
    return (dim,) if isinstance(dim, int) else tuple(dim)


def _expand_back(grad: torch.Tensor, shape, dim, keepdim: bool) -> torch.Tensor:
    """Broadcast the gradient of a reduction over `dim` back to the input's shape."""
    if dim is None:
        return grad.reshape([1] * len(shape)).expand(shape)
    if not keepdim:
        for d in sorted(d % len(shape) for d in _dims(dim)):
            grad = grad.unsqueeze(d)
    return grad.expand(shape)


_GELU_CHUNK = 1 << 16  # elements per CPU chunk: its slices and 2 work buffers (~1.3 MiB fp32) stay in cache


def _gelu_tanh_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad * d gelu_tanh(x)/dx, toygrad's own rule for `Tensor.gelu`.

    With c = sqrt(2/pi), a = 0.044715 and t = tanh(c x (1 + a x^2)), y = 0.5 x (1 + t), and

        dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)
              = 0.5 (1 + t) (1 + c x (1 + 3 a x^2) (1 - t))        (1 - t^2 = (1 - t)(1 + t))

    NOTE: ~12 elementwise passes, all into preallocated buffers. On a CPU the chain is
    memory-bound: over the whole (B*T, 4C) activation each pass streams it through DRAM, and a
    fresh temporary per operation (plus its page faults) made it 4x slower than torch's fused
    kernel. Walking it in chunks that stay in cache, reusing two work buffers, brings that to
    ~1.2x. On a GPU one chunk is the whole tensor. Half precisions compute in fp32.
    """
    c, a = math.sqrt(2.0 / math.pi), 0.044715
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xf, gf = x.reshape(-1).to(compute), grad.reshape(-1).to(compute)  # (N,)
    dx = torch.empty_like(xf)
    n = max(1, min(_GELU_CHUNK if x.device.type == "cpu" else xf.numel(), xf.numel()))
    x2_buf, t_buf = torch.empty(n, dtype=compute, device=x.device), torch.empty(n, dtype=compute, device=x.device)
    for start in range(0, xf.numel(), n):
        xs, gs, out = xf[start : start + n], gf[start : start + n], dx[start : start + n]
        x2, t = x2_buf[: len(xs)], t_buf[: len(xs)]
        torch.mul(xs, xs, out=x2)  # x^2
        torch.mul(x2, a * c, out=t).add_(c).mul_(xs).tanh_()  # t = tanh(c x + a c x^3)
        torch.mul(x2, 3 * a * c, out=out).add_(c).mul_(xs)  # c x (1 + 3 a x^2)
        out.mul_(torch.sub(1.0, t, out=x2)).add_(1.0)  # 1 + c x (1 + 3 a x^2) (1 - t)
        out.mul_(t.add_(1.0).mul_(gs)).mul_(0.5)  # times 0.5 (1 + t) grad
    return dx.reshape(x.shape).to(x.dtype)


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)
