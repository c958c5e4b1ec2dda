"""toygrad.tensor's GPT, nn and optim against torch: same weights -> same loss and gradients."""

import math
import statistics

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("toykernels")

from toygrad.tensor import Tensor, nn, optim  # noqa: E402
from toygrad.tensor.train_gpt import TrainConfig, main, train  # noqa: E402

# mygpt-char: toygpt's preset shape (context 64, 128 channels, 8 heads, 4 layers)
MYGPT_CHAR = dict(block_size=64, n_layer=4, n_head=8, n_embd=128)

SMALL = dict(block_size=16, vocab_size=23, n_layer=2, n_head=4, n_embd=32)


def torch_gpt(config):
    """The torch.autograd yardstick: toygpt's GPT (the project's one torch GPT, on toykernels'
    public ops) with toygrad's config, dropout off, holding the same parameter names."""
    toygpt_model = pytest.importorskip("toygpt.model")
    return toygpt_model.GPT(toygpt_model.GPTConfig(
        vocab_size=config.vocab_size, block_size=config.block_size, n_layer=config.n_layer,
        n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout, bias=config.bias))


def assert_same_loss_and_grads(model, ref, idx, targets, rtol, atol_scale):
    """Loss and every parameter's gradient of a toygrad GPT vs a torch.autograd GPT."""
    _, loss = model(idx, targets)
    loss.backward()
    _, ref_loss = ref(idx, targets)
    ref_loss.backward()
    torch.testing.assert_close(loss.data, ref_loss.detach(), rtol=rtol, atol=0)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        r = ref_params[name].grad
        atol = atol_scale * r.abs().max().item()  # relative to the tensor's scale
        torch.testing.assert_close(p.grad, r, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gpt_matches_torch_autograd(dtype, rtol):
    """Against toygpt's GPT under torch.autograd: the same LayerNorm and attention kernels, so
    what is compared is toygrad's backward rules with torch's."""
    torch.manual_seed(0)
    config = nn.GPTConfig(**SMALL)
    model = nn.GPT(config).to(dtype=dtype)
    ref = torch_gpt(config).to(dtype=dtype)
    ref.load_state_dict(model.state_dict())
    for p in model.parameters():  # random biases and LayerNorm weights, not the 0 / 1 init
        p.data.add_(torch.randn_like(p.data) * 0.1)
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(0, 23, (3, 13))  # T < block_size
    targets = torch.randint(0, 23, (3, 13))
    targets[1, :5] = -1  # ignored positions
    assert_same_loss_and_grads(model, ref, idx, targets, rtol, 1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("shape, T", [(SMALL, 16), (dict(MYGPT_CHAR, vocab_size=65), 64)], ids=["small", "mygpt-char"])
def test_gpt_matches_toygpt(shape, T):
    """fp32 on the CPU, toygpt's GPT (torch.autograd, toykernels' public ops) as the reference."""
    toygpt_model = pytest.importorskip("toygpt.model")
    torch.manual_seed(0)
    ref = toygpt_model.GPT(toygpt_model.GPTConfig(**shape, dropout=0.0, bias=True))
    model = nn.GPT(nn.GPTConfig(**shape))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    # the same parameters under the same names (nothing silently left out on either side)
    assert {n for n, _ in ref.named_parameters()} == {n for n, _ in model.named_parameters()}
    sd = {k: v for k, v in ref.state_dict().items() if k in model.state_dict()}
    model.load_state_dict(sd)
    idx = torch.randint(0, shape["vocab_size"], (3, T))
    targets = torch.randint(0, shape["vocab_size"], (3, T))
    assert_same_loss_and_grads(model, ref, idx, targets, 1e-5, 1e-5)


def test_gradient_accumulation_over_micro_batches_matches_torch():
    """Two backward() calls before a step add up, as torch's do (the grad_accum pattern)."""
    torch.manual_seed(1)
    config = nn.GPTConfig(**SMALL)
    model = nn.GPT(config).to(dtype=torch.float64)
    ref = torch_gpt(config).to(dtype=torch.float64)
    ref.load_state_dict(model.state_dict())
    for _ in range(2):
        idx, targets = torch.randint(0, 23, (2, 16)), torch.randint(0, 23, (2, 16))
        (model(idx, targets)[1] * 0.5).backward()
        (ref(idx, targets)[1] * 0.5).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-10, atol=1e-13, msg=name)


def test_state_dict_names_and_tying():
    model = nn.GPT(nn.GPTConfig(**SMALL))
    sd = model.state_dict()
    ref_sd = torch_gpt(nn.GPTConfig(**SMALL)).state_dict()
    assert sorted(sd) == sorted(ref_sd)
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and len(names) == len(set(names))
    with pytest.raises(KeyError, match="missing keys"):
        model.load_state_dict({"transformer.wte.weight": sd["transformer.wte.weight"]})
    bad = dict(sd, **{"transformer.wpe.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"transformer.wpe.weight has shape \(16, 32\), got \(3, 3\)"):
        model.load_state_dict(bad)


def _toy_and_torch_params(seed):
    g = torch.Generator().manual_seed(seed)
    datas = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
    toy = [Tensor(d.clone(), requires_grad=True) for d in datas]
    ref = [d.clone().requires_grad_() for d in datas]
    return toy, ref, g


@pytest.mark.parametrize(
    "make_toy, make_ref",
    [
        (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
        (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
        (lambda p: optim.AdamW(p, lr=0.01, betas=(0.9, 0.95), weight_decay=0.1),
         lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)),
    ],
    ids=["sgd", "sgd-momentum", "adamw"],
)
def test_optimizers_match_torch(make_toy, make_ref):
    toy, ref, g = _toy_and_torch_params(1)
    opt, ref_opt = make_toy(toy), make_ref(ref)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ref]
        for t, r, gr in zip(toy, ref, grads):
            t.grad, r.grad = gr.clone(), gr.clone()
        opt.step()
        ref_opt.step()
    for t, r in zip(toy, ref):
        torch.testing.assert_close(t.data, r.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_norm", [0.05, 1e3])  # clipping, and a norm already below the cap
def test_clip_grad_norm_matches_torch(max_norm):
    toy, ref, g = _toy_and_torch_params(2)
    for t, r in zip(toy, ref):
        grad = torch.randn(r.shape, generator=g, dtype=torch.float64)
        t.grad, r.grad = grad.clone(), grad.clone()
    norm = optim.clip_grad_norm_(toy, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.testing.assert_close(norm, ref_norm, rtol=1e-12, atol=0)
    for t, r in zip(toy, ref):
        torch.testing.assert_close(t.grad, r.grad, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="max_norm must be > 0, got 0"):
        optim.clip_grad_norm_(toy, 0)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])
    with pytest.raises(ValueError, match=r"unknown optimizer option\(s\) \['momentum'\]"):
        optim.AdamW([{"params": [Tensor(torch.ones(2), requires_grad=True)], "momentum": 0.9}])


def test_training_matches_torch_on_shakespeare(shakespeare_path):
    """A short run of the training script on a small model: the loss falls and follows the
    torch.autograd model trained from the same weights on the same batches."""
    cfg = TrainConfig(steps=12, batch_size=4, block_size=32, n_layer=2, n_head=4, n_embd=32,
                      lr=3e-3, eval_interval=0)
    history = train(cfg, shakespeare_path, reference=torch_gpt, log=lambda *_: None)
    assert history[0]["loss"] == pytest.approx(math.log(65), rel=0.05)  # ~uniform over 65 characters
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    for r in history:
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-4)


def test_mygpt_char_training_follows_toygpt(shakespeare_path):
    """toygrad-train-gpt's default model and recipe (mygpt-char) against toygpt's GPT trained
    from the same weights on the same Tiny Shakespeare batches with torch.autograd, torch's
    AdamW and clipping: 20 steps, the two loss curves agree step by step to 1e-5 relative, a
    thousand times closer than the batch-to-batch noise of the curve itself."""
    pytest.importorskip("toygpt.model")
    cfg = TrainConfig(steps=20, batch_size=8, eval_interval=0)
    assert {k: getattr(cfg, k) for k in MYGPT_CHAR} == MYGPT_CHAR
    history = train(cfg, shakespeare_path, reference=torch_gpt, log=lambda *_: None)
    losses = [r["loss"] for r in history]
    assert losses[0] == pytest.approx(math.log(65), rel=0.05)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.8  # it learns (4.2 -> ~3.0 nats)
    for r in history:
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5), r
    noise = statistics.stdev(b - a for a, b in zip(losses[-10:], losses[-9:]))  # step-to-step jitter
    assert max(abs(r["loss"] - r["ref_loss"]) for r in history) < 1e-3 * noise


def test_train_defaults_are_toygpts_mygpt_char_recipe():
    """The same recipe as `toygpt train --preset mygpt-char`, so the curves are comparable."""
    toygpt_train = pytest.importorskip("toygpt.train")
    ref = toygpt_train.make_config("mygpt-char")
    cfg = TrainConfig()
    assert {k: getattr(cfg, k) for k in MYGPT_CHAR} == {k: getattr(ref, k) for k in MYGPT_CHAR}
    assert (cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.beta2, cfg.grad_clip, cfg.dropout) == (
        ref.batch_size, ref.learning_rate, ref.weight_decay, ref.beta2, ref.grad_clip, ref.dropout)
    assert not ref.decay_lr and ref.beta1 == 0.9  # toygrad's lr is constant, beta1 0.9


def test_cli_reports_a_missing_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.txt"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "nope.txt" in err and len(err.strip().splitlines()) == 1


def test_cli_rejects_bad_flags(shakespeare_path, capsys):
    assert main([str(shakespeare_path), "--steps", "0"]) == 2
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
    assert main([str(shakespeare_path), "--dtype", "float16"]) == 2
    assert "--dtype must be float32 or bfloat16, got 'float16'" in capsys.readouterr().err


def test_cli_trains_and_writes_a_csv(shakespeare_path, tmp_path, capsys):
    out = tmp_path / "losses.csv"
    args = [str(shakespeare_path), "--steps", "3", "--batch-size", "2", "--n-layer", "1", "--n-embd", "32",
            "--n-head", "2", "--block-size", "16", "--eval-interval", "3", "--eval-iters", "1",
            "--csv", str(out)]
    assert main(args) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "step,loss,ms" and len(rows) == 4


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
def test_gpt_on_cuda_matches_torch(dtype, tol):
    """On a GPU, through toykernels' fused LayerNorm and attention kernels (head dim 32 is one
    the attention kernel supports), against toygpt's GPT on the same kernels under torch.autograd."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU and a CUDA build of torch")
    torch.manual_seed(0)
    config = nn.GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=128)
    model = nn.GPT(config).to(device="cuda", dtype=dtype)
    ref = torch_gpt(config).to(device="cuda", dtype=dtype)
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(0, 65, (4, 64), device="cuda")
    targets = torch.randint(0, 65, (4, 64), device="cuda")
    _, loss = model(idx, targets)
    loss.backward()
    _, ref_loss = ref(idx, targets)
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= tol * ref_loss.item()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        r = ref_params[name].grad.float()
        err = (p.grad.float() - r).abs().max().item() / r.abs().max().item()
        assert err <= tol * 10, f"{name}: max error {err:.2e} relative to the gradient's max"


def test_bfloat16_training_on_a_cpu_tracks_float32_and_torch(tmp_path):
    # `toygrad-train-gpt --dtype bfloat16` casts the whole model (weights, Adam's updates) to
    # bf16. Its loss is itself a bf16 number: between 2 and 4 one step of bf16 is 2^-6 = 0.016.
    # Tolerances: against torch.autograd training the same bf16 model, two such steps (the
    # forwards round differently by an ulp); against float32, 0.05 + 1% (measured here: at most
    # 0.016 over these 30 steps), and the run must differ from float32's (bf16 really ran).
    text = tmp_path / "text.txt"
    text.write_text("".join(f"{i} To be, or not to be, that is the question: {i * 31 % 17}\n" for i in range(200)))
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(steps=30, batch_size=8, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          eval_interval=0, dtype=dtype)
        runs[dtype] = train(cfg, text, reference=torch_gpt, log=lambda *a: None)
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    assert bf16[-1]["loss"] < bf16[0]["loss"] - 0.5  # it learned
    assert [r["loss"] for r in bf16] != [r["loss"] for r in fp32]
    for a, b in zip(bf16, fp32):
        assert abs(a["loss"] - a["ref_loss"]) <= 2 * 2**-6, a
        assert abs(a["loss"] - b["loss"]) <= 0.05 + 0.01 * b["loss"], (a, b)
