"""toygrad.tensor: reverse-mode autodiff on arrays, with toygrad's own backward rules.

Needs the `toygrad[tensor]` extra (torch and toykernels): torch tensors hold the data and do the
arithmetic, torch.autograd is never used. See docs/tensor-autograd.md.

>>> from toygrad.tensor import Tensor
>>> x = Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
>>> (x * x).sum().backward()
>>> x.grad
tensor([[2., 4.],
        [6., 8.]])
"""

from toygrad.tensor import functional, nn, optim
from toygrad.tensor.tensor import Tensor, is_grad_enabled, no_grad, tensor

__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "functional", "nn", "optim"]
