"""Where a model runs: the device, the processes of a DDP run, autocast, and the RNG state.

`toygpt train` and `toygpt generate` (and `toygpt attention`) both start here, so a `--device`
means the same to each; nothing here knows about training.

Distributed: under `torchrun` (RANK / WORLD_SIZE set) each process takes its local GPU (NCCL),
or the CPU (gloo).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from toygpt.errors import ToyGPTError


def resolve_device(name: str) -> str:
    """`auto` -> cuda when there is a GPU, else cpu; any other name is checked to exist here."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ToyGPTError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ToyGPTError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ToyGPTError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ToyGPTError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ToyGPTError(f"--device {name!r}: the trainer runs on cpu, cuda or mps")
    return name



def setup_distributed(device_name: str):
    """(rank, local_rank, world_size, device) under torchrun, or (0, 0, 1, device) without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return 0, 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, local_rank, world_size, device



def autocast_dtype(name: str, device_type: str) -> torch.dtype:
    """--dtype's torch dtype: `auto` is bf16 on CUDA (fp16 where bf16 is unsupported), else float32."""
    if name == "auto":
        if device_type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ToyGPTError(f"unknown --dtype {name!r}; use auto, float32, bfloat16 or float16") from None



def autocast_context(dtype: torch.dtype, device_type: str):
    """torch.autocast in `dtype`, or nothing for float32."""
    return torch.autocast(device_type=device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def rng_state() -> dict:
    # only torch's generators matter: batches come from (seed, step), not from a running RNG
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

