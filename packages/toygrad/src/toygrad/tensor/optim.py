"""SGD and AdamW for toygrad Tensors: the update rules written out, as torch.optim computes them,
and `clip_grad_norm_` (torch.nn.utils'), which nanoGPT's and toygpt's training loops apply.

Parameters are given as a list of Tensors or, as in torch, a list of groups
`{"params": [...], "lr": ..., "weight_decay": ...}` whose keys override the defaults.
The updates run in place on `p.data` (plain torch tensors: no graph is built).
"""

from __future__ import annotations

import math

import torch

from toygrad.tensor.tensor import Tensor

__all__ = ["Optimizer", "SGD", "AdamW", "clip_grad_norm_"]


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


def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients in place so that their global L2 norm is at most `max_norm`.

    The global norm is the norm of all gradients concatenated, sqrt(sum_p ||g_p||^2); every
    gradient is multiplied by min(1, max_norm / (norm + 1e-6)), torch.nn.utils.clip_grad_norm_'s
    formula. Returns the norm before clipping (a 0-d tensor, as torch: no device sync).
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be > 0, got {max_norm}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    norms = torch.stack([torch.linalg.vector_norm(g).to(dtype) for g in grads])  # (n_params,)
    total = torch.linalg.vector_norm(norms)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:  # leaf gradients belong to their parameter (the engine copies them in)
        g.mul_(coef.to(g.dtype))
    return total
