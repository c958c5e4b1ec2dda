"""Pure-PyTorch definitions of every toykernels op.

These are the ground truth: the CPU fallback runs them, and the tests compare the CUDA
kernels against them (in float64). They are written for clarity, not speed.
(flash-attention ships `layer_norm_ref` beside its kernels for the same reason.)
"""

from __future__ import annotations

import math

import torch


def layer_norm_ref(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = xf.mean(dim=-1, keepdim=True)
    var = (xf - mean).pow(2).mean(dim=-1, keepdim=True)  # biased variance, as torch does
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def add_layer_norm_ref(x, residual, weight=None, bias=None, eps=1e-5):
    """The pre-LN block's residual add fused with the next LayerNorm: s = x + residual, y = LN(s)."""
    s = x + residual
    return s, layer_norm_ref(s, weight, bias, eps)


def causal_mask(Tq, Tk, device=None):
    """Boolean (Tq, Tk) mask, True where query i may attend key j.

    The mask is aligned to the bottom right: query i is the (Tk - Tq + i)-th position of the
    sequence, so it sees keys 0 .. i + (Tk - Tq). With Tq == Tk this is the usual lower triangle.
    NOTE: scaled_dot_product_attention(is_causal=True) aligns to the top left when Tq != Tk.
    """
    offset = Tk - Tq
    i = torch.arange(Tq, device=device).unsqueeze(1)  # (Tq, 1)
    j = torch.arange(Tk, device=device).unsqueeze(0)  # (1, Tk)
    return j <= i + offset


def causal_attention_ref(q, k, v, scale=None):
    """Naive causal attention: softmax(q @ k^T * scale + mask) @ v, for (B, H, T, D) tensors."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att.float(), dim=-1).to(q.dtype)
    return att @ v  # (B, H, Tq, D)


def flash_attention_tiled(q, k, v, scale=None, block=(64, 64)):
    """Causal attention computed the FlashAttention way, in plain PyTorch: returns (out, lse).

    The same algorithm as the CUDA forward kernel, written so it can be read and checked on a
    CPU. For each tile of `block[0]` queries, walk over tiles of `block[1]` keys and keep, per
    query row, a running max m, a running sum l of exp(s - m), and an unnormalised output acc:

        m_new = max(m, rowmax(s_tile))
        p     = exp(s_tile - m_new)
        l     = l * exp(m - m_new) + rowsum(p)
        acc   = acc * exp(m - m_new) + p @ v_tile

    At the end out = acc / l and lse = m + log(l). The (Tq, Tk) score matrix never exists; only
    one (block_q, block_k) tile at a time. Key tiles entirely above the bottom-right aligned
    diagonal are skipped, and only tiles that cross it are masked.
    """
    block_q, block_k = (block, block) if isinstance(block, int) else block
    if block_q < 1 or block_k < 1:
        raise ValueError(f"flash_attention_tiled: block sizes must be >= 1, got {block}")
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(
            "flash_attention_tiled: q, k, v must be (B, H, T, D) with k and v of one shape, got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, H, Tq, D = q.shape
    Tk = k.shape[-2]
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D) or not 1 <= Tq <= Tk:
        raise ValueError(
            f"flash_attention_tiled: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H "
            "and D, with 1 <= Tq <= Tk (the bottom-right causal mask)"
        )
    offset = Tk - Tq  # query i sees keys 0 .. i + offset
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty(B, H, Tq, D, dtype=cdt, device=q.device)
    lse = torch.empty(B, H, Tq, dtype=cdt, device=q.device)
    for q0 in range(0, Tq, block_q):
        q1 = min(q0 + block_q, Tq)
        qt = q[:, :, q0:q1].to(cdt)  # (B, H, bq, D)
        m = torch.full((B, H, q1 - q0), float("-inf"), dtype=cdt, device=q.device)
        l = torch.zeros(B, H, q1 - q0, dtype=cdt, device=q.device)
        acc = torch.zeros(B, H, q1 - q0, D, dtype=cdt, device=q.device)
        k_end = min(Tk, q1 - 1 + offset + 1)  # the last query of the tile sees keys < k_end
        for k0 in range(0, k_end, block_k):  # tiles starting at or after k_end are skipped
            k1 = min(k0 + block_k, Tk)
            s = (qt @ k[:, :, k0:k1].to(cdt).transpose(-2, -1)) * scale  # (B, H, bq, bk)
            if k1 - 1 > q0 + offset:  # the tile crosses the diagonal: mask it
                i = torch.arange(q0, q1, device=q.device).unsqueeze(1)  # (bq, 1)
                j = torch.arange(k0, k1, device=q.device).unsqueeze(0)  # (1, bk)
                s = s.masked_fill(j > i + offset, float("-inf"))
            # m stays finite after the first tile: key 0 is in it and every query sees key 0.
            m_new = torch.maximum(m, s.amax(dim=-1))
            p = torch.exp(s - m_new.unsqueeze(-1))  # (B, H, bq, bk)
            correction = torch.exp(m - m_new)  # exp(-inf) = 0 on the first tile
            l = l * correction + p.sum(dim=-1)
            acc = acc * correction.unsqueeze(-1) + p @ v[:, :, k0:k1].to(cdt)
            m = m_new
        out[:, :, q0:q1] = acc / l.unsqueeze(-1)
        lse[:, :, q0:q1] = m + torch.log(l)
    return out.to(q.dtype), lse
