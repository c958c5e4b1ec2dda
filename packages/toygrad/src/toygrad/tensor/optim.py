"""SGD and AdamW for toygrad Tensors: the update rules written out, as torch.optim computes them.

Parameters are given as a list of Tensors or, as in torch, a list of groups
`{"params": [...], "lr": ..., "weight_decay": ...}` whose keys override the defaults.
The updates run in place on `p.data` (plain torch tensors: no graph is built).
"""

from __future__ import annotations

import math

import torch

from toygrad.tensor.tensor import Tensor

__all__ = ["Optimizer", "SGD", "AdamW"]


class Optimizer:
    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            unknown = set(group) - set(defaults) - {"params"}
            if unknown:
                raise ValueError(f"unknown optimizer option(s) {sorted(unknown)}; known: {sorted(defaults)}")
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"optimizer params must be toygrad Tensors, got {type(p).__name__}")
            self.param_groups.append({**defaults, **group, "params": list(group["params"])})
        self.state: dict[int, dict] = {}  # per parameter, keyed by id

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class SGD(Optimizer):
    """p -= lr * (g + wd p), with momentum buffer b = momentum * b + g when momentum > 0."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr < 0:
            raise ValueError(f"SGD: invalid learning rate {lr}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p.data
                if momentum:
                    state = self.state.setdefault(id(p), {})
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(g)
                    g = state["momentum_buffer"]
                p.data.add_(g, alpha=-lr)


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), torch.optim.AdamW's formulas:

        p   <- p (1 - lr wd)
        m   <- b1 m + (1 - b1) g            v <- b2 v + (1 - b2) g^2
        p   <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        if lr < 0:
            raise ValueError(f"AdamW: invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def step(self) -> None:
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state.get(id(p))
                if state is None:
                    state = self.state[id(p)] = {
                        "step": 0, "exp_avg": torch.zeros_like(p.data), "exp_avg_sq": torch.zeros_like(p.data),
                    }
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.data.mul_(1 - lr * wd)
                m.lerp_(g, 1 - b1)  # b1 m + (1 - b1) g
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
                p.data.addcdiv_(m, denom, value=-lr / (1 - b1**t))
