"""GPTConfig presets, GPT's parameters, initialization, loss, gradients and optimizer groups."""

import math

import pytest
import torch
import torch.nn.functional as F
from toygpt import GPT, GPTConfig
from toygpt.errors import ToyGPTError

# parameter counts of the released checkpoints (wte, wpe, blocks, ln_f; lm_head is tied)
RELEASED = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
            "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_shapes(name):
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(GPTConfig.preset(name))
    assert model.num_params(non_embedding=False) == RELEASED[name]


def test_char_presets():
    mygpt = GPTConfig.preset("mygpt-char", vocab_size=65)
    assert (mygpt.block_size, mygpt.n_embd, mygpt.n_head, mygpt.n_layer) == (64, 128, 8, 4)
    baby = GPTConfig.preset("shakespeare-char", vocab_size=65)
    assert (baby.n_layer, baby.n_head, baby.n_embd, baby.block_size, baby.dropout) == (6, 6, 384, 256, 0.2)
    assert GPTConfig.preset("gpt2", dropout=0.1).dropout == 0.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=50, n_head=3), "n_embd=50 is not divisible by n_head=3"),
    (dict(vocab_size=0), "vocab_size must be a positive int, got 0"),
    (dict(dropout=1.0), "dropout must be in"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ToyGPTError, match=message):
        GPTConfig(**kwargs)


def test_preset_errors():
    with pytest.raises(ToyGPTError, match="unknown GPTConfig preset 'gpt3'"):
        GPTConfig.preset("gpt3")
    with pytest.raises(ToyGPTError, match="unknown field.*n_embed"):
        GPTConfig.preset("gpt2", n_embed=5)


def test_initialization_statistics():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2000, block_size=64, n_layer=8, n_head=4, n_embd=256))
    sd = model.state_dict()
    assert sd["transformer.wte.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert sd["transformer.h.0.attn.c_attn.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * 8)
    for name in ("transformer.h.3.attn.c_proj.weight", "transformer.h.5.mlp.c_proj.weight"):
        assert sd[name].std().item() == pytest.approx(residual_std, rel=0.05)
    assert torch.all(sd["transformer.h.0.mlp.c_fc.bias"] == 0)
    assert torch.all(sd["transformer.ln_f.weight"] == 1)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_torch_initialization_and_mygpt_parameters():
    """init="torch" keeps each module's own initialization (nn.Linear: uniform in +-1/sqrt(fan_in);
    nn.Embedding: N(0, 1)), and the mygpt-char preset has MyGPT's parameters: 816,705 for 65
    characters (MyGPT/transformer.py's Transformer(65) counts the same)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=3000, block_size=64, n_layer=2, n_head=4, n_embd=256, **MYGPT_BLOCK))
    sd = model.state_dict()
    bound = 1 / math.sqrt(256)
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight", "lm_head.weight",
                 "lm_head.bias", "transformer.h.0.attn.c_proj.bias"):
        assert sd[name].abs().max().item() <= bound
        assert sd[name].std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # uniform's sd
    assert sd["transformer.h.0.mlp.c_proj.weight"].abs().max().item() <= 1 / math.sqrt(1024)
    assert sd["transformer.wte.weight"].std().item() == pytest.approx(1.0, rel=0.05)
    assert "transformer.h.0.attn.c_attn.bias" not in sd and "transformer.h.0.mlp.c_fc.bias" in sd
    assert model.lm_head.weight is not model.transformer.wte.weight
    mygpt = GPT(GPTConfig.preset("mygpt-char", vocab_size=65))
    assert sum(p.numel() for p in mygpt.parameters()) == 816_705
    assert {k: getattr(mygpt.config, k) for k in MYGPT_BLOCK} == MYGPT_BLOCK


def reference_forward(model, idx):
    """The same GPT written with torch's own ops in float64: nn.LayerNorm math, explicit
    masked softmax attention, and the unfused residual adds."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head

    def ln(x, name):
        return F.layer_norm(x, (C,), sd[name + ".weight"], sd.get(name + ".bias"), 1e-5)

    def linear(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        q, k, v = linear(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p + "attn.c_proj")
        h = linear(ln(x, p + "ln_2"), p + "mlp.c_fc")
        h = torch.clamp(h, min=0) if cfg.activation == "relu" else F.gelu(h, approximate="tanh")
        x = x + linear(h, p + "mlp.c_proj")
    head = sd["transformer.wte.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    logits = ln(x, "transformer.ln_f") @ head.T
    return logits + sd["lm_head.bias"] if cfg.lm_head_bias else logits


# dx-dtran/MyGPT's choices (the mygpt-char preset): relu, an untied head with a bias, no q/k/v bias
MYGPT_BLOCK = dict(activation="relu", tie_embeddings=False, qkv_bias=False, lm_head_bias=True, init="torch")


@pytest.mark.parametrize("options", [dict(bias=True), dict(bias=False), MYGPT_BLOCK], ids=["gpt2", "no-bias", "mygpt"])
def test_forward_and_loss_against_float64_reference(options):
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=89, block_size=29, n_layer=3, n_head=3, n_embd=36, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    idx = torch.randint(0, 89, (2, 29))
    targets = torch.randint(0, 89, (2, 29))
    targets[0, :5] = -1  # ignored positions
    logits, loss = model(idx, targets)
    ref = reference_forward(model, idx)
    torch.testing.assert_close(logits.double(), ref, atol=1e-5, rtol=0)
    ref_loss = F.cross_entropy(ref.view(-1, 89), targets.view(-1), ignore_index=-1)
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-5, rtol=0)
    _, no_loss = model(idx)
    assert no_loss is None


def test_gradients_against_float64_reference():
    """Loss and every gradient against an independent GPT-2: transformers' GPT2LMHeadModel (its own
    attention, LayerNorm and Conv1D layers, none of toykernels) in float64, from the same
    weights. The Conv1D weights are stored transposed, so their gradients are compared transposed."""
    transformers = pytest.importorskip("transformers")
    from toygpt.hf import CONV1D_WEIGHTS, config_to_hf, toygpt_to_hf

    torch.manual_seed(4)
    model = GPT(GPTConfig(vocab_size=41, block_size=13, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # random biases and LayerNorm weights, not the 0 / 1 init
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    idx = torch.randint(0, 41, (3, 13))
    targets = torch.randint(0, 41, (3, 13))
    _, loss = model(idx, targets)
    loss.backward()

    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_to_hf(model.config))).double().eval()
    missing, unexpected = ref.load_state_dict(toygpt_to_hf(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    # NOTE: not ref(idx, labels=...): transformers shifts labels by one inside, and toygpt's
    # targets are already the next tokens
    logits = ref(idx).logits
    ref_loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss, atol=0, rtol=1e-6)
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        want = ref_grads[name].grad
        if name.endswith(CONV1D_WEIGHTS):
            want = want.t()
        torch.testing.assert_close(p.grad.double(), want, atol=2e-5, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_forward_input_errors(tiny_gpt):
    model = tiny_gpt(vocab_size=11, block_size=8)
    with pytest.raises(ToyGPTError, match="longer than block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ToyGPTError, match="token id 11 is outside the vocabulary"):
        model(torch.tensor([[1, 11]]))
    with pytest.raises(ToyGPTError, match=r"\(B, T\) tensor"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ToyGPTError, match="targets has shape"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))


def test_configure_optimizers_decays_matrices_only(tiny_gpt):
    model = tiny_gpt()
    opt = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params(non_embedding=False)


def test_decay_all_decays_every_parameter_as_torchs_adamw_does(tiny_gpt):
    """decay_all (the mygpt-char recipe, MyGPT's `AdamW(model.parameters(), lr)`): one group with
    every parameter once, and three steps land where torch's AdamW on model.parameters() does."""
    model = tiny_gpt(**MYGPT_BLOCK)
    twin = tiny_gpt(**MYGPT_BLOCK)
    twin.load_state_dict(model.state_dict())
    opt = model.configure_optimizers(0.01, 1e-2, (0.9, 0.999), "cpu", decay_all=True)
    (group,) = opt.param_groups
    assert group["weight_decay"] == 0.01 and len(group["params"]) == len(list(model.parameters()))
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2)  # torch's defaults: betas 0.9 / 0.999, decay 0.01
    idx = torch.randint(0, 101, (2, 16))
    for m, o in ((model, opt), (twin, ref)):
        for _ in range(3):
            o.zero_grad()
            m(idx, idx)[1].backward()
            o.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_fused_adamw_on_cpu_matches_the_for_loop(tiny_gpt):
    """configure_optimizers fuses AdamW on CPU; three steps land where torch's for-loop AdamW does.
    (No biases: the key bias's gradient is rounding noise, which Adam scales up to +-lr.)"""
    model = tiny_gpt(bias=False)
    twin = tiny_gpt(bias=False)
    twin.load_state_dict(model.state_dict())
    fused = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu")
    assert all(g["fused"] for g in fused.param_groups)
    plain_params = list(twin.parameters())
    loop = torch.optim.AdamW([{"params": [p for p in plain_params if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in plain_params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.99), foreach=False)
    for _ in range(3):
        idx = torch.randint(0, model.config.vocab_size, (2, 8))
        for m, opt in ((model, fused), (twin, loop)):
            opt.zero_grad()
            m(idx, idx)[1].backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("ac_dtype", [torch.bfloat16, torch.float16])
def test_block_under_cuda_autocast_without_a_gpu(fake_cuda, ac_dtype):
    # What `toygpt train --dtype bfloat16` runs on a GPU, on fake CUDA tensors: autocast's
    # bf16/fp16 sublayer outputs meet the float32 residual stream in add_layer_norm, through
    # toykernels' custom ops (the CUDA path), not the CPU one.
    from toygpt.model import Block

    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64)
    block = Block(cfg)
    with fake_cuda, torch.no_grad():
        fake_cuda.module(block)
        x = torch.empty(2, 16, 64, device="cuda")
        with fake_cuda.autocast(ac_dtype):
            h = block.ln_1(x)
            a = block.attn(h)
            out = block(x)
    assert (h.dtype, a.dtype, out.dtype) == (torch.float32, ac_dtype, torch.float32)
    assert out.device.type == "cuda"


@pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="indexing fake CUDA tensors needs a CUDA build of torch (make cuda-build-check runs this)")
@pytest.mark.parametrize("ac_dtype", [torch.bfloat16, torch.float16])
def test_gpt_forward_under_cuda_autocast_without_a_gpu(fake_cuda, ac_dtype):
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg)
    with fake_cuda, torch.no_grad():
        fake_cuda.module(model)
        idx = torch.zeros(2, 16, dtype=torch.long, device="cuda")
        with fake_cuda.autocast(ac_dtype):
            logits, loss = model(idx, idx)
    assert logits.dtype == ac_dtype  # lm_head is a Linear: autocast's lower precision
    assert loss.dtype == torch.float32  # cross_entropy is on autocast's float32 list
    assert logits.device.type == "cuda"
