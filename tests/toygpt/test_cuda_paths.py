"""The trainer's CUDA-only code paths, run on a CPU.

Each test runs the branch a GPU would take, with the one call that needs a GPU replaced by a
stand-in (a fake CUDA tensor, or a recorder in place of the device-only torch function), so a
GPU lease finds kernel bugs rather than these. docs/gpu.md lists every CUDA-only path and the
test that covers it.
"""

import numpy as np
import pytest
import torch
from toygpt import data, metrics, runtime
from toygpt.model import adamw


@pytest.mark.parametrize("bf16_supported, want", [(True, torch.bfloat16), (False, torch.float16)])
def test_dtype_auto_on_cuda_is_bf16_else_fp16(monkeypatch, bf16_supported, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert runtime.autocast_dtype("auto", "cuda") == want
    assert runtime.autocast_dtype("auto", "cpu") == torch.float32
    assert runtime.autocast_dtype("float16", "cuda") == torch.float16


def test_fused_adamw_steps_cuda_parameters(fake_cuda):
    with fake_cuda:
        p = torch.nn.Parameter(torch.empty(4, 8, device="cuda"))
        p.grad = torch.empty(4, 8, device="cuda")
        opt = adamw([p], 1e-3, (0.9, 0.95), "cuda", weight_decay=0.1)
        opt.step()  # the fused CUDA kernel's shape and device checks run on the fake tensors
    assert opt.defaults["fused"] is True
    state = opt.state[p]
    assert state["exp_avg"].device.type == "cuda" and state["exp_avg_sq"].shape == (4, 8)


def test_cuda_batches_are_pinned_and_copied_without_blocking(monkeypatch):
    tokens = np.arange(100, dtype=np.uint16)
    offsets = np.array([3, 50, 7])
    pinned, copies = [], []
    real_to = torch.Tensor.to

    def pin_memory(self):
        pinned.append(tuple(self.shape))
        return self.contiguous()

    def to(self, *args, **kwargs):
        if args and torch.device(args[0]).type == "cuda":
            copies.append(kwargs.get("non_blocking", False))
            return self.clone()
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    x, y = data.get_batch(tokens, offsets, 8, "cuda")
    monkeypatch.undo()
    cx, cy = data.get_batch(tokens, offsets, 8, "cpu")
    assert pinned == [(3, 8), (3, 8)] and copies == [True, True]
    assert torch.equal(x, cx) and torch.equal(y, cy) and x.dtype == torch.long
    assert torch.equal(cx[1], torch.arange(50, 58)) and torch.equal(cy[1], torch.arange(51, 59))


def test_ddp_on_cuda_uses_nccl_and_the_local_rank_device(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(runtime, "resolve_device", lambda name: "cuda")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("device", device))
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group",
                        lambda backend: calls.setdefault("backend", backend))
    assert runtime.setup_distributed("cuda") == (1, 1, 2, "cuda:1")
    assert calls == {"device": "cuda:1", "backend": "nccl"}


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA L40S", 362e12),
                                        ("Some Future GPU", None)])
def test_mfu_peak_by_gpu_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert metrics.peak_flops("cuda:0") == peak
    assert metrics.peak_flops("cpu") is None


def test_checkpoints_carry_the_cuda_generators_state(monkeypatch):
    # every CUDA device's RNG state is saved beside the CPU one and restored on resume (dropout
    # masks on a GPU come from it), and a checkpoint made on a GPU resumes on a CPU without it
    cuda_states = [torch.arange(4, dtype=torch.uint8), torch.arange(4, 8, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in cuda_states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    state = runtime.rng_state()
    assert [torch.equal(a, b) for a, b in zip(state["cuda"], cuda_states)] == [True, True]
    runtime.set_rng_state(state)
    assert len(restored) == 2 and torch.equal(restored[1], cuda_states[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runtime.set_rng_state(state)  # no GPU here: the CPU generator only, no error
    assert len(restored) == 2
