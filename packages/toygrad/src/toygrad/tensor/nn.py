"""Modules on toygrad Tensors, and a GPT built from them (nanoGPT's model, names and all).

A `Module` finds its parameters by walking its attributes (Tensors that require grad, child
Modules, lists of Modules), as micrograd's `Module.parameters()` does, but with names, so that
`state_dict()` keys are nanoGPT's / toygpt's (`transformer.h.0.attn.c_attn.weight`) and
`load_state_dict` takes a toygpt GPT's state dict without a rename table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from toygrad.tensor import functional as F
from toygrad.tensor.tensor import Tensor

__all__ = [
    "Module", "Linear", "Embedding", "LayerNorm", "CausalSelfAttention", "MLP", "Block",
    "GPTConfig", "GPT",
]


def _parameter(data: torch.Tensor) -> Tensor:
    return Tensor(data, requires_grad=True)


class Module:
    training = True

    def _children(self):
        """(name, Tensor | Module) pairs in attribute order; lists become name.0, name.1, ..."""
        for name, value in vars(self).items():
            if isinstance(value, (Tensor, Module)):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, (Tensor, Module)):
                        yield f"{name}.{i}", item

    def _named_tensors(self, prefix: str = ""):
        for name, value in self._children():
            if isinstance(value, Module):
                yield from value._named_tensors(f"{prefix}{name}.")
            elif value.requires_grad:
                yield f"{prefix}{name}", value

    def named_parameters(self):
        """(name, parameter) pairs; a tied parameter is listed once, under its first name."""
        seen = set()
        for name, p in self._named_tensors():
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for _, value in self._children():
            if isinstance(value, Module):
                yield from value.modules()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter's data under every name it has (tied weights appear under each)."""
        return {name: p.data for name, p in self._named_tensors()}

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Copy tensors in by name (e.g. from a toygpt / nanoGPT GPT's state_dict())."""
        own = dict(self._named_tensors())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in own.items():
            if name not in state_dict:
                continue
            src = state_dict[name]
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(p.shape)}, got {tuple(src.shape)}")
            p.data.copy_(src.detach())

    def to(self, device=None, dtype=None) -> Module:
        """Move every parameter in place (tied parameters stay tied: each is moved once)."""
        for p in self.parameters():
            p.data = p.data.to(device=device, dtype=dtype)
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        bound = 1.0 / math.sqrt(in_features)  # torch's default init: U(-1/sqrt(in), 1/sqrt(in))
        self.weight = _parameter(torch.empty(out_features, in_features, device=device, dtype=dtype).uniform_(-bound, bound))
        self.bias = _parameter(torch.empty(out_features, device=device, dtype=dtype).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        self.weight = _parameter(torch.randn(num_embeddings, embedding_dim, device=device, dtype=dtype))

    def forward(self, idx) -> Tensor:
        return F.embedding(idx, self.weight)


class LayerNorm(Module):
    def __init__(self, n: int, eps: float = 1e-5, bias: bool = True, device=None, dtype=None):
        self.eps = eps
        self.weight = _parameter(torch.ones(n, device=device, dtype=dtype))
        self.bias = _parameter(torch.zeros(n, device=device, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)


# ----------------------------------------------------------------------------------------------
# GPT (nanoGPT's model.py, on toygrad Tensors)


@dataclass
class GPTConfig:
    block_size: int = 64  # context length
    vocab_size: int = 65  # Tiny Shakespeare's characters
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2


class CausalSelfAttention(Module):
    def __init__(self, config: GPTConfig):
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        H = self.n_head
        qkv = self.c_attn(x).reshape(B, T, 3, H, C // H)  # (B, T, 3, nh, hs)
        # NOTE: slice before transposing: the three slices' gradients then land in one
        # contiguous (B, T, 3, nh, hs) buffer that reshapes back to (B, T, 3C) without a copy
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, nh, T, hs) each
        y = F.causal_attention(q, k, v)  # (B, nh, T, hs)
        # NOTE: no dropout on the attention matrix: the fused kernel never forms it
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return F.dropout(self.c_proj(y), self.dropout, self.training)


class MLP(Module):
    def __init__(self, config: GPTConfig):
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.c_proj(self.c_fc(x).gelu()), self.dropout, self.training)


class Block(Module):
    def __init__(self, config: GPTConfig):
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(Module):
    def __init__(self, config: GPTConfig):
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.wpe = Embedding(config.block_size, config.n_embd)
        self.h = [Block(config) for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)


class GPT(Module):
    def __init__(self, config: GPTConfig):
        self.config = config
        self.transformer = _Transformer(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf, 2017): one Tensor, two uses; its grads add up
        self.lm_head.weight = self.transformer.wte.weight
        # GPT-2's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                p.data.normal_(0.0, 0.02 / math.sqrt(2 * config.n_layer))
            elif name.endswith(".weight") and p.ndim == 2:
                p.data.normal_(0.0, 0.02)
            elif name.endswith(".bias") and ".ln_" not in name and "ln_f" not in name:
                p.data.zero_()

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) token ids -> (logits (B, T, vocab), mean cross-entropy or None).

        Targets equal to -1 are ignored, as in nanoGPT.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} > block_size {self.config.block_size}")
        tf = self.transformer
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = tf.wte(idx) + tf.wpe(pos)  # (B, T, C) + (T, C)
        x = F.dropout(x, self.config.dropout, self.training)
        for block in tf.h:
            x = block(x)
        logits = self.lm_head(tf.ln_f(x))  # (B, T, vocab)
        loss = None if targets is None else F.cross_entropy(logits, targets, ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95)):
        """AdamW with decay on matrices and embeddings (>= 2-D) only, as nanoGPT."""
        from toygrad.tensor.optim import AdamW

        params = self.parameters()
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return AdamW(groups, lr=learning_rate, betas=betas)
