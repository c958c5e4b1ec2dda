"""Optimizers over a list of `Value` parameters: SGD (with momentum, weight decay) and Adam.

The update rules follow torch.optim's documented algorithms (the tests compare against them in
float64), so what a learner reads here is what torch does:
- SGD:  g = grad + weight_decay * p;  buf = momentum * buf + g (buf = g on the first step);
        p -= lr * buf  (plain `p -= lr * g` when momentum is 0).
- Adam: g = grad + weight_decay * p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
        p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)  (Kingma & Ba, 2015).
`lr` is a plain attribute: set `opt.lr = ...` between steps for a schedule.
"""

import math

from toygrad.engine import Value

__all__ = ["SGD", "Adam"]


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)  # a generator (model.parameters() of a subclass) is consumed once
        for p in self.params:
            if not isinstance(p, Value):
                raise TypeError(f"{type(self).__name__}: parameters must be Values, got {type(p).__name__}")
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        _check_non_negative(self, "lr", lr)
        self.lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad = 0.0


def _check_non_negative(opt, name, value):
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{type(opt).__name__}: {name} must be a number >= 0, got {value!r}")


class SGD(Optimizer):
    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        _check_non_negative(self, "momentum", momentum)
        _check_non_negative(self, "weight_decay", weight_decay)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity = [None] * len(self.params)  # the momentum buffer, one per parameter

    def step(self):
        for i, p in enumerate(self.params):
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                buf = self.velocity[i]
                g = g if buf is None else self.momentum * buf + g
                self.velocity[i] = g
            p.data -= self.lr * g


class Adam(Optimizer):
    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        beta1, beta2 = betas
        for name, beta in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"Adam: {name} must be in [0, 1), got {beta!r}")
        _check_non_negative(self, "eps", eps)
        _check_non_negative(self, "weight_decay", weight_decay)
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.m = [0.0] * len(self.params)  # running mean of the gradient (first moment)
        self.v = [0.0] * len(self.params)  # running mean of its square (second moment)
        self.t = 0  # steps taken, for the bias correction of m and v (both start at 0)

    def step(self):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bias_correction1 = 1 - b1**self.t
        bias_correction2 = 1 - b2**self.t
        for i, p in enumerate(self.params):
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_hat = self.m[i] / bias_correction1
            v_hat = self.v[i] / bias_correction2
            p.data -= self.lr * m_hat / (math.sqrt(v_hat) + self.eps)
