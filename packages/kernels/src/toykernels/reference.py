"""Pure-PyTorch definitions of every toykernels op.

These are the ground truth, written for clarity, not speed. (flash-attention ships
`layer_norm_ref` beside its kernels for the same reason.) Two kinds:

- the ops as a user sees them: `layer_norm_ref`, `add_layer_norm_ref`, `causal_attention_ref`,
  and `flash_attention_tiled`, the CUDA forward's tiled online-softmax algorithm;
- the raw forward/backward pairs with the kernels' exact contract (saved statistics, explicit
  gradient formulas, no autograd): `layer_norm_forward_ref` / `layer_norm_backward_ref` and
  `attention_forward_ref` / `attention_backward_ref`. They specify what the CUDA kernels
  compute, and they are the fallback wherever neither the CUDA kernels nor PyTorch's own CPU
  kernels apply (see `toykernels.layernorm` and `toykernels.attention`); the tests hold both
  against them and against float64.
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


def layer_norm_forward_ref(x, weight, bias, eps):
    """LayerNorm of a (N, C) tensor -> (y, mean, rstd): the raw forward's formulas, in PyTorch ops.

    mean and rstd (N,) are float32 (float64 for float64 input), as the CUDA kernel saves them:
        mean = sum(x) / C,  rstd = 1 / sqrt(sum((x - mean)^2) / C + eps),  y = xhat * weight + bias
    """
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(stat)
    mean = xf.mean(dim=-1)  # (N,)
    xc = xf - mean.unsqueeze(-1)  # (N, C)
    rstd = torch.rsqrt(xc.square().mean(dim=-1) + eps)  # (N,), biased variance as torch does
    y = xc * rstd.unsqueeze(-1)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype), mean, rstd


def layer_norm_backward_ref(dy, x, weight, mean, rstd, has_bias):
    """Gradients of LayerNorm on (N, C) tensors -> (dx, dweight, dbias): explicit formulas, not autograd.

    With xhat = (x - mean) * rstd and g = dy * weight:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum over rows of dy * xhat,   dbias = sum over rows of dy
    dweight is None without weight, dbias None unless has_bias; both in weight's dtype (x's
    without weight).
    """
    stat = mean.dtype
    xhat = (x.to(stat) - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)  # (N, C)
    dyf = dy.to(stat)
    g = dyf * weight.to(stat) if weight is not None else dyf
    c1 = (g * xhat).mean(dim=-1, keepdim=True)  # (N, 1)
    c2 = g.mean(dim=-1, keepdim=True)  # (N, 1)
    dx = (rstd.unsqueeze(-1) * (g - c2 - xhat * c1)).to(x.dtype)
    param_dtype = weight.dtype if weight is not None else x.dtype
    dweight = (dyf * xhat).sum(dim=0).to(param_dtype) if weight is not None else None
    dbias = dyf.sum(dim=0).to(param_dtype) if has_bias else None
    return dx, dweight, dbias


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


def _attention_compute_dtype(dtype):
    # float64 stays float64 (so gradcheck can run through the formulas); all else computes in
    # fp32, like the kernels' accumulators
    return torch.float64 if dtype == torch.float64 else torch.float32


def _masked_scores(q, k, scale):
    """Scaled, masked scores in the compute dtype: (B, H, Tq, Tk), -inf where the mask forbids."""
    cdt = _attention_compute_dtype(q.dtype)
    s = (q.to(cdt) @ k.to(cdt).transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    return s.masked_fill(~mask, float("-inf"))


def attention_forward_ref(q, k, v, scale):
    """out = softmax(mask(q k^T * scale)) v on whole matrices -> (out, lse), no autograd.

    q: (B, H, Tq, D), k and v: (B, H, Tk, D) with Tq <= Tk, the bottom-right causal mask.
    lse (B, H, Tq) is the natural-log logsumexp of each row of scaled, masked scores, in float32
    (float64 for float64 inputs): what the CUDA forward saves for the backward.
    """
    s = _masked_scores(q, k, scale)
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Tq); finite: every query sees key 0
    p = torch.exp(s - lse.unsqueeze(-1))  # (B, H, Tq, Tk)
    out = (p @ v.to(p.dtype)).to(q.dtype)  # (B, H, Tq, D)
    return out, lse.to(_attention_compute_dtype(q.dtype))


def attention_backward_ref(dout, q, k, v, out, lse, scale):
    """Gradients (dq, dk, dv) of `attention_forward_ref`, FlashAttention-2 style, no autograd.

    P is recomputed from q, k and lse (never stored). With dP = dO v^T and
    delta_i = sum_d dO_id O_id (= sum_j P_ij dP_ij), the softmax backward is dS = P * (dP - delta);
    then dq = dS k * scale and dk = dS^T q * scale.
    """
    cdt = _attention_compute_dtype(q.dtype)
    p = torch.exp(_masked_scores(q, k, scale) - lse.to(cdt).unsqueeze(-1))  # (B, H, Tq, Tk)
    do, qc, kc, vc = dout.to(cdt), q.to(cdt), k.to(cdt), v.to(cdt)
    delta = (do * out.to(cdt)).sum(dim=-1, keepdim=True)  # (B, H, Tq, 1)
    dv = p.transpose(-2, -1) @ do  # (B, H, Tk, D)
    dp = do @ vc.transpose(-2, -1)  # (B, H, Tq, Tk)
    ds = p * (dp - delta)  # (B, H, Tq, Tk)
    dq = (ds @ kc) * scale  # (B, H, Tq, D)
    dk = (ds.transpose(-2, -1) @ qc) * scale  # (B, H, Tk, D)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


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
