"""The plain PyTorch GPT: the baseline every benchmark and comparison measures against.

nanoGPT's model.py as a PyTorch user writes it: nn.LayerNorm and
F.scaled_dot_product_attention(is_causal=True), differentiated by torch.autograd, no toykernels.
Its parameters have toygpt's (and GPT-2's) names, so one state_dict loads into toygpt's GPT,
toygrad.tensor's GPT and this one. No dropout: the comparisons run the models with dropout 0,
since no two engines draw the same masks.

Used by tools/bench_train.py (toygpt's training step against it), tools/bench_toygrad_tensor.py
(toygrad.tensor's step against it) and tools/compare_toygrad_training.py (a toygrad training
run beside it). The model itself (the math) is toygpt.model's; this file is the yardstick.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PlainBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.attn.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.mlp.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.n_head = c.n_head

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    """config: any object with vocab_size, block_size, n_layer, n_head, n_embd and bias (toygpt's
    GPTConfig, toygrad.tensor's)."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.config = c
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),
            wpe=nn.Embedding(c.block_size, c.n_embd),
            h=nn.ModuleList([PlainBlock(c) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd, bias=c.bias),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as GPT-2

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # the same groups as toygpt's: decay on matrices only; fused on CUDA (nanoGPT's choice)
        params = list(self.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")
