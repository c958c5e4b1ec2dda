"""torch.autocast for toykernels' custom ops: each op follows the torch op it replaces.

Under `torch.autocast` PyTorch casts the inputs of each listed op before it runs (see
ATen's autocast_mode.cpp). A custom op is on no list, so without this module it would run on
whatever dtypes it is handed: a bf16 LayerNorm where F.layer_norm computes and returns float32,
and a mixed-dtype residual add that the kernels cannot take. Here each forward op gets an
autocast kernel that does what autocast does for its torch counterpart:

- "float32" (F.layer_norm on CUDA): float16/bfloat16 inputs are cast up to float32, so the op
  computes and returns float32. (On a CPU, autocast leaves F.layer_norm alone, and so do we.)
- "lower precision" (F.scaled_dot_product_attention on CUDA and CPU): float32, float16 and
  bfloat16 inputs are cast to the autocast dtype (`torch.get_autocast_dtype`). float64 is left
  alone, as autocast leaves it.

The autocast kernel casts, then calls the op again with autocast off for that device; the op's
autograd registration sits below autocast in the dispatcher, so the casts are differentiated
too and every gradient comes back in its input's dtype. The backward ops need nothing: autocast
falls through for ops it does not list.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

REDUCED = (torch.float16, torch.bfloat16)
LOWER_PRECISION_INPUTS = (torch.float32, torch.float16, torch.bfloat16)

_lib = torch.library.Library("toykernels", "FRAGMENT")  # noqa: TOR901 (kept for the process's life)

_DISPATCH_KEYS = {"cuda": "AutocastCUDA", "cpu": "AutocastCPU"}


def cast(tensors, dtype: torch.dtype, from_dtypes) -> list:
    """Each floating-point tensor whose dtype is in `from_dtypes` cast to `dtype`; the rest as is
    (None for an absent optional tensor)."""
    return [t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in from_dtypes else t for t in tensors]


def to_float32(*tensors) -> list:
    """The "float32" policy: float16/bfloat16 tensors cast up to float32."""
    return cast(tensors, torch.float32, REDUCED)


def to_lower_precision(device_type: str, *tensors) -> list:
    """The "lower precision" policy: float32/float16/bfloat16 tensors cast to the autocast dtype."""
    return cast(tensors, torch.get_autocast_dtype(device_type), LOWER_PRECISION_INPUTS)


def register(op_name: str, device_type: str, fn: Callable) -> None:
    """Run `fn(*args)` for `toykernels::<op_name>` under autocast on `device_type`.

    `fn` casts the arguments and calls the op again; autocast is off for the device while it
    runs, so that second call goes straight to the op's autograd and implementation.
    """

    def kernel(keyset, *args):
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args)

    _lib.impl(op_name, kernel, _DISPATCH_KEYS[device_type], with_keyset=True)
