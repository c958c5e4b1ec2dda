"""Which implementation runs an op: the op's CUDA extension or the PyTorch fallback.

Every op module registers itself here (`register_op("layer_norm", [...sources])`) and asks
`select(op, *tensors)` before each call. The rules, shared by all ops:

- `TOYKERNELS_BACKEND=torch` always runs the fallback; `cuda` insists on the extension (and
  raises, naming the log file, when it cannot run); `auto` (the default) picks the extension
  for CUDA tensors and falls back otherwise.
- Fallback for CPU tensors, for a torch without CUDA, for an input the kernel does not handle
  (the op says why: `unsupported="float64 is not supported by the kernel"`), and when the build
  fails — then it warns once per op with the compiler's first error and keeps falling back.
- Tensors that are not on CUDA skip the custom ops altogether: `native_path(op, ...)` tells the
  public API to call PyTorch's own op (F.layer_norm, scaled_dot_product_attention) and let
  autograd differentiate it. The custom ops' Python layers cost tens of microseconds a call,
  an order of magnitude more than PyTorch's native op on a small tensor (a GPT-2 decode step
  makes 25 LayerNorm calls). (Underneath, the raw functions' CPU fallback is PyTorch's own CPU
  kernels too, and elsewhere the formulas of `toykernels.reference`.)

Each decision is recorded so that `backend_info()` can say, per op, what runs and why.
Nothing here compiles at import time; the first CUDA call of an op builds it.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

from toykernels._build import BuildError, build_dir, load_extension
from toykernels._toolkit import arch_label, arch_list, toolkit_summary

_MODES = ("auto", "torch", "cuda")

_sources: dict[str, list[str]] = {}  # op -> source files in csrc/
_modules: dict[tuple[str, str], object] = {}  # (op, arch) -> loaded extension module
_built: dict[tuple[str, str], str] = {}  # (op, arch) -> "built for sm_90 in 38.2 s, cached in ..."
_failed: dict[tuple[str, str], BuildError] = {}  # (op, arch) -> the build error, never retried
_decisions: dict[tuple[str, str], str] = {}  # (op, device type) -> last decision, in words
_warned: set[tuple[str, str]] = set()  # (op, arch) whose failed build has been warned about
_lock = threading.Lock()


def register_op(name: str, sources: list[str]) -> None:
    """Declare an op and the csrc/ files its extension is built from (no build happens here)."""
    _sources[name] = list(sources)


def mode() -> str:
    """The backend mode from TOYKERNELS_BACKEND: auto (default), torch or cuda."""
    value = os.environ.get("TOYKERNELS_BACKEND", "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise ValueError(f"TOYKERNELS_BACKEND={value!r}: expected one of {', '.join(_MODES)}")
    return value


def _fallback_reason(device: torch.device, unsupported: str | None) -> str | None:
    """Why this call cannot use the CUDA extension, or None when it can."""
    if device.type != "cuda":
        return f"tensor is on {device.type}"
    if torch.version.cuda is None:
        return "this torch was built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    if unsupported:
        return unsupported
    return None


def _load(op: str, device: torch.device):
    """The op's extension for this device's arch, building it on first use (once per process)."""
    if op not in _sources:
        raise KeyError(f"unknown toykernels op {op!r}; registered: {sorted(_sources)}")
    arches = arch_list(device)
    key = (op, arches)
    with _lock:  # one build per process; cpp_extension's file baton guards across processes
        if key in _modules:
            return _modules[key]
        if key in _failed:
            raise _failed[key]
        try:
            module, seconds, how = load_extension(op, _sources[op], device)
        except BuildError as error:
            _failed[key] = error
            raise
        _modules[key] = module
        _built[key] = f"{how} for {arch_label(arches)} in {seconds:.1f} s, cached in {build_dir(op, arches)}"
        return module


def native_path(op: str, x: torch.Tensor) -> bool:
    """True when `op` should run PyTorch's own op directly: x is not on CUDA and
    TOYKERNELS_BACKEND is not `cuda` (forced `cuda` goes on to `select`, which raises).

    Records the decision for `backend_info()` in the same words `select` would use.
    NOTE: plain Python on the tensor and os.environ, so torch.compile(fullgraph=True) traces it
    (dynamo replays the dict write after the graph). It runs on every CPU call, so it is kept
    to a microsecond or two: a GPT-2 decode step makes 25 LayerNorm calls.
    """
    if x.is_cuda:
        return False
    chosen = mode()
    if chosen == "cuda":
        return False
    device_type = x.device.type
    if chosen == "torch":
        _decisions[(op, device_type)] = "torch fallback: TOYKERNELS_BACKEND=torch"
    else:
        _decisions[(op, device_type)] = f"torch fallback: tensor is on {device_type}"
    return True


def select(op: str, *tensors: torch.Tensor | None, unsupported: str | None = None):
    """The built extension module to run `op` on these tensors, or None for the torch fallback."""
    device = next(t.device for t in tensors if t is not None)
    chosen = mode()
    if chosen == "torch":
        _decisions[(op, device.type)] = "torch fallback: TOYKERNELS_BACKEND=torch"
        return None
    reason = _fallback_reason(device, unsupported)
    if reason is not None:
        if chosen == "cuda":
            raise RuntimeError(f"{op}: TOYKERNELS_BACKEND=cuda but the CUDA kernel cannot run: {reason}")
        _decisions[(op, device.type)] = f"torch fallback: {reason}"
        return None
    module = load_or_fall_back(op, device, chosen)
    if module is not None:
        _decisions[(op, device.type)] = "cuda: " + _built[(op, arch_list(device))]
    return module


def load_or_fall_back(op: str, device: torch.device, chosen: str):
    """The op's extension, or None after a failed build: then warn once per op and GPU
    architecture with the compiler's first error and the log's path; forced `cuda` raises."""
    try:
        return _load(op, device)
    except BuildError as error:
        if chosen == "cuda":
            raise RuntimeError(f"{op}: TOYKERNELS_BACKEND=cuda but the build failed: {error}") from error
        decision = f"torch fallback: build failed: {error}"
        key = (op, arch_list(device))
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"toykernels {op}: {decision}", RuntimeWarning, stacklevel=4)
        _decisions[(op, device.type)] = decision
        return None


def _predict(op: str, device: torch.device) -> str:
    """What `select` would decide for a plain call on `device`, without building anything."""
    try:
        chosen = mode()
    except ValueError as error:
        return f"error: {error}"
    if chosen == "torch":
        return "torch fallback: TOYKERNELS_BACKEND=torch"
    reason = _fallback_reason(device, None)
    if reason is not None:
        prefix = "error (TOYKERNELS_BACKEND=cuda): " if chosen == "cuda" else "torch fallback: "
        return prefix + reason
    key = (op, arch_list(device))
    if key in _built:
        return "cuda: " + _built[key]
    if key in _failed:
        return f"torch fallback: build failed: {_failed[key]}"
    return f"cuda: not built yet: builds for {arch_label(key[1])} on first CUDA use"


def backend_info(device: torch.device | str | None = None) -> str:
    """Per op, which implementation runs on `device` (default: cuda if available, else cpu), and why;
    then a `toolkit:` line: the CUDA toolkit the builds use (CUDA_HOME, nvcc and its version,
    how it was found, the extra include folders), or `toolkit: none: <why>`.

    Reports the last decision made for that device type when there is one (it knows about
    unsupported inputs and failed builds), else what a call would do. Never compiles anything.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    lines = []
    for op in sorted(_sources):
        decided = _decisions.get((op, device.type))
        lines.append(f"{op}: {decided if decided is not None else _predict(op, device)}")
    lines.append(f"toolkit: {toolkit_summary()}")
    return "\n".join(lines)
