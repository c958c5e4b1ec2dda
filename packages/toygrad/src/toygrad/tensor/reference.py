"""The same GPT as `toygrad.tensor.nn.GPT`, written with torch.nn and differentiated by torch.autograd.

The yardstick for the toygrad engine: the tests check that both give the same loss and
gradients from the same weights, `toygrad-train-gpt --compare torch` trains both side by side,
and tools/bench_toygrad_tensor.py times one against the other. It uses torch's own fused ops
(F.layer_norm, F.scaled_dot_product_attention), so it is the model a PyTorch user would write.
With `kernels=True` its LayerNorm and attention are toykernels' raw forward/backward functions
(`layer_norm_forward` / `layer_norm_backward`, `attention_forward` / `attention_backward`)
wrapped in `torch.autograd.Function`s: exactly the code toygrad's `F.layer_norm` and
`F.causal_attention` run (fused kernels on CUDA, ATen's kernels on a CPU), so a timing
against it compares the autodiff engines alone. Parameter names are nanoGPT's, so
`state_dict()` moves weights between the models.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import functional as F
from toykernels import attention as tk_attention
from toykernels import layernorm as tk_layernorm


class _ToykernelsLayerNorm(torch.autograd.Function):
    """toykernels' raw LayerNorm forward and backward, as torch.autograd sees them."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = tk_layernorm.layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = tk_layernorm.layer_norm_backward(dy, x, weight, mean, rstd, ctx.has_bias)
        return dx, dw, db, None


class _ToykernelsAttention(torch.autograd.Function):
    """toykernels' raw causal attention forward and backward (contiguous q, k, v, as toygrad)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = tk_attention.attention_forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = tk_attention.attention_backward(dout.contiguous(), q, k, v, out, lse, ctx.scale)
        return dq, dk, dv, None


class LayerNorm(nn.Module):
    def __init__(self, n, bias, kernels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None
        self.kernels = kernels

    def forward(self, x):
        if self.kernels:
            return _ToykernelsLayerNorm.apply(x, self.weight, self.bias, 1e-5)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, kernels):
        super().__init__()
        self.kernels = kernels
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head = config.n_head
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.kernels:
            y = _ToykernelsAttention.apply(q, k, v, 1.0 / math.sqrt(q.shape[-1]))  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config, kernels):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias, kernels)
        self.attn = CausalSelfAttention(config, kernels)
        self.ln_2 = LayerNorm(config.n_embd, config.bias, kernels)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    def __init__(self, config, kernels: bool = False):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, kernels) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.bias, kernels),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith(".bias") and ".ln_" not in name and "ln_f" not in name:
                nn.init.zeros_(p)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss
