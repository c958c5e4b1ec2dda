"""toykernels: fused causal-attention and LayerNorm CUDA kernels with PyTorch fallbacks.

Importing this package compiles nothing: each op's CUDA extension is JIT-built on its first
CUDA use (see toykernels._build), and CPU tensors run the PyTorch fallback.
`backend_info()` says which implementation runs and why.
"""

from toykernels.attention import causal_attention
from toykernels.backend import backend_info
from toykernels.layernorm import LayerNorm, add_layer_norm, layer_norm
from toykernels.reference import add_layer_norm_ref, causal_attention_ref, layer_norm_ref

__version__ = "0.1.0"


__all__ = [
    "layer_norm",
    "add_layer_norm",
    "LayerNorm",
    "causal_attention",
    "backend_info",
    "layer_norm_ref",
    "add_layer_norm_ref",
    "causal_attention_ref",
]
