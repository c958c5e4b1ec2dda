"""toygpt on a GPU: training under bf16/fp16 autocast with toykernels' CUDA ops, generation with
the KV cache, and torch.compile. Skipped without a GPU; tools/gpu_check.sh runs these (their CPU
twins are test_train.py, test_generation.py and test_cuda_paths.py)."""

import pytest
import torch
import toykernels
from toygpt import GPT, GPTConfig
from toygpt.train import make_config, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU and a CUDA build of torch"),
]





@pytest.fixture(autouse=True)
def cuda_kernels_only(monkeypatch):
    # a failed build must fail these tests, not pass them on the PyTorch fallback
    monkeypatch.setenv("TOYKERNELS_BACKEND", "cuda")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _run(data_dir, out, dtype, **kw):
    cfg = make_config("mygpt-char", n_layer=2, n_head=2, n_embd=64, block_size=32, dropout=0.0,
                      batch_size=8, max_iters=40, eval_interval=40, eval_iters=4, sample_tokens=0,
                      warmup_iters=0, decay_lr=False, learning_rate=3e-3, data=str(data_dir),
                      out=str(out), progress=False, device="cuda", dtype=dtype, **kw)
    return train(cfg)


def test_autocast_training_on_cuda_tracks_fp32(data_dir, tmp_path):
    # as the CPU test in test_train.py: the same run in float32 and under autocast, within
    # 0.02 + 1% a step (bf16's 8 significant bits), and not identical (autocast really ran)
    fp32 = _run(data_dir, tmp_path / "fp32", "float32")
    assert fp32["losses"][-1] < fp32["losses"][0] - 1.0
    for dtype in ("bfloat16", "float16"):
        low = _run(data_dir, tmp_path / dtype, dtype)
        assert low["losses"] != fp32["losses"]
        for step, (a, b) in enumerate(zip(low["losses"], fp32["losses"]), 1):
            assert abs(a - b) <= 0.02 + 0.01 * b, f"{dtype} step {step}: loss {a} vs float32 {b}"
    info = toykernels.backend_info("cuda")
    assert "layer_norm: cuda" in info and "attention: cuda" in info, info


def test_greedy_generation_on_cuda_matches_the_cpu(tiny_gpt):
    model = tiny_gpt(vocab_size=97, block_size=40, n_layer=2, n_head=2, n_embd=64, seed=3)
    idx = torch.randint(0, 97, (3, 5))
    want = model.generate(idx, 30, greedy=True)  # on the CPU, float32
    gpu = model.to("cuda")
    cached = gpu.generate(idx.cuda(), 30, greedy=True)
    uncached = gpu.generate(idx.cuda(), 30, greedy=True, use_cache=False)
    assert torch.equal(cached, uncached)
    # float32 on both; summation orders differ, so allow a rare near-tie to flip late tokens
    assert (cached.cpu()[:, :20] == want[:, :20]).float().mean() >= 0.95


def test_bf16_generation_on_cuda(tiny_gpt):
    model = tiny_gpt(vocab_size=97, block_size=40, n_layer=2, n_head=2, n_embd=64, seed=4)
    model = model.to("cuda", torch.bfloat16)
    idx = torch.randint(0, 97, (2, 5), device="cuda")
    cached = model.generate(idx, 20, greedy=True)
    uncached = model.generate(idx, 20, greedy=True, use_cache=False)
    assert cached.shape == (2, 25)
    assert (cached == uncached).float().mean() >= 0.9  # bf16: the cache's rounding may flip a near-tie


def test_torch_compile_training_step_on_cuda_matches_eager():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64)).cuda()
    idx = torch.randint(0, 64, (4, 32), device="cuda")
    compiled = torch.compile(model)  # as `toygpt train --compile`
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, eager_loss = model(idx, idx)
        _, compiled_loss = compiled(idx, idx)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=2e-2, atol=2e-2)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=5e-2, atol=5e-3)
