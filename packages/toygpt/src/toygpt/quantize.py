"""int8 decoding on a CPU: a GPT whose Linear layers hold int8 weights.

A decoding step at batch 1 is 49 matrix-vector products that read every weight once (494 MB
for GPT-2 small in float32), so its speed is the memory's: int8 weights are a quarter of the
bytes. `quantize(model, "int8")` returns a copy whose Linear layers are PyTorch's dynamically
quantized ones (`torch.ao.nn.quantized.dynamic.Linear`, FBGEMM's int8 kernels on x86): each
weight row is stored as int8 with one float scale per output channel, and at each call the
activations are quantized per call and the product is accumulated in int32, then scaled back to
float. This is the scheme of CTranslate2's int8 mode. The output projection (tied to the token
embeddings in GPT-2) gets its own int8 copy; the embeddings themselves stay float for the lookup.
LayerNorm, attention and everything else run as before, in float32.

The quantized model is for inference: it generates (with the KV cache, through the same Decoder)
and computes logits and losses, but it cannot be trained and it is not saved (`save_pretrained`
refuses it): save the float model instead and quantize after loading.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from toygpt.errors import ToyGPTError

CHOICES = ("int8",)


def quantize(model, mode: str = "int8"):
    """A quantized copy of `model` (a toygpt GPT on the CPU, in float32) for decoding; `model` is
    left as it was."""
    if mode not in CHOICES:
        raise ToyGPTError(f"quantize: {mode!r} is not supported; choose one of {', '.join(CHOICES)}")
    if getattr(model, "quantized", None):
        raise ToyGPTError(f"quantize: the model is already quantized ({model.quantized})")
    if not hasattr(model, "transformer") or not hasattr(model, "lm_head"):
        raise ToyGPTError(f"quantize: expected a toygpt GPT, got {type(model).__name__}")
    weight = model.transformer.wte.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ToyGPTError(f"quantize {mode}: runs on a CPU from float32 weights; the model is "
                          f"{weight.dtype} on {weight.device} (move it with .to('cpu', torch.float32))")
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        raise ToyGPTError(f"quantize {mode}: this torch has no x86 int8 kernels (quantized engines: {engines})")
    q = copy.deepcopy(model).eval()
    if q.config.tie_embeddings:
        # the tied output projection gets its own copy, so that quantizing it leaves wte float
        untied = nn.Linear(q.config.n_embd, q.config.vocab_size, bias=False)
        untied.weight = nn.Parameter(q.transformer.wte.weight.detach().clone(), requires_grad=False)
        q.lm_head = untied
    with warnings.catch_warnings():
        # NOTE: torch points eager-mode quantization users to torchao; these modules are still
        # torch's own and exactly what a CPU decoder needs, without another dependency
        warnings.simplefilter("ignore")
        # one scale per output row of each weight (per-tensor scales lose the small rows)
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        torch.ao.quantization.quantize_dynamic(q, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    q.requires_grad_(False)
    q.quantized = mode
    return q
