"""toygpt <-> transformers GPT-2: logits and loss equal within 1e-5 (fp32, CPU) both ways."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from toygpt import GPT, GPTConfig
from toygpt.errors import ToyGPTError

transformers = pytest.importorskip("transformers")

# (n_layer, n_head, n_embd, vocab_size, n_positions): odd widths, head counts, vocabularies
SHAPES = [
    (1, 1, 8, 17, 5),
    (2, 3, 48, 101, 37),
    (3, 4, 64, 257, 64),
    (2, 5, 40, 1009, 23),
    (1, 2, 32, 50257, 16),
]


def hf_logits_loss(hf, idx):
    """transformers' logits, and the next-token loss on them computed the way toygpt does."""
    with torch.no_grad():
        logits = hf(idx).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))
    return logits, loss


def toygpt_logits_loss(model, idx):
    with torch.no_grad():
        logits, _ = model(idx)
        _, loss = model(idx[:, :-1], idx[:, 1:])
    return logits, loss


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}H{}C{}V{}T{}".format(*s))
def test_hf_to_toygpt_and_back(make_hf_checkpoint, tmp_path, shape):
    n_layer, n_head, n_embd, vocab, n_pos = shape
    path, hf = make_hf_checkpoint(n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                  vocab_size=vocab, n_positions=n_pos, seed=sum(shape))
    model = GPT.from_pretrained(path).eval()
    assert model.config == GPTConfig(vocab_size=vocab, block_size=n_pos, n_layer=n_layer,
                                     n_head=n_head, n_embd=n_embd, dropout=0.1, bias=True)
    idx = torch.randint(0, vocab, (3, n_pos))
    ref_logits, ref_loss = hf_logits_loss(hf, idx)
    logits, loss = toygpt_logits_loss(model, idx)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)

    # and back: toygpt writes, transformers reads
    model.save_pretrained(tmp_path / "back")
    hf2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    back_logits, back_loss = hf_logits_loss(hf2, idx)
    torch.testing.assert_close(back_logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(back_loss, loss, atol=1e-5, rtol=0)


def test_toygpt_first_round_trip(tmp_path):
    """A toygpt model (no bias, random LayerNorms) -> transformers -> toygpt, same function."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=97, block_size=19, n_layer=2, n_head=3, n_embd=24, bias=False)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["toygpt"] == {"block_size": 19, "dropout": 0.0, "bias": False}
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 19))
    logits, _ = toygpt_logits_loss(model, idx)
    torch.testing.assert_close(hf_logits_loss(hf, idx)[0], logits, atol=1e-5, rtol=0)
    again = GPT.from_pretrained(tmp_path).eval()
    assert again.config == model.config
    torch.testing.assert_close(toygpt_logits_loss(again, idx)[0], logits, atol=0, rtol=0)


def test_parameter_names_are_gpt2s(make_hf_checkpoint):
    _, hf = make_hf_checkpoint()
    model = GPT.from_pretrained(_)
    hf_names = {k for k in hf.state_dict() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert set(model.state_dict()) == hf_names
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt2model_checkpoint_and_bin_files(tmp_path):
    """A GPT2Model (no 'transformer.' prefix) checkpoint, written as pytorch_model.bin."""
    from safetensors.torch import load_file

    torch.manual_seed(2)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=31, n_positions=9)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "st")
    state = load_file(tmp_path / "st" / "model.safetensors")
    bare = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    (tmp_path / "bin").mkdir()
    torch.save(bare, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    model = GPT.from_pretrained(tmp_path / "bin").eval()
    idx = torch.randint(0, 31, (2, 9))
    torch.testing.assert_close(toygpt_logits_loss(model, idx)[0], hf_logits_loss(hf, idx)[0], atol=1e-5, rtol=0)


def test_checkpoint_shapes_that_do_not_fit(make_hf_checkpoint):
    path, _ = make_hf_checkpoint()
    config = json.loads((path / "config.json").read_text())
    config["vocab_size"] = 102
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ToyGPTError, match=r"transformer\.wte\.weight.*\(101, 48\).*\(102, 48\)"):
        GPT.from_pretrained(path)
    config["vocab_size"], config["n_layer"] = 101, 3
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ToyGPTError, match=r"lacks parameter.*h\.2\."):
        GPT.from_pretrained(path)


def test_bad_paths_and_configs(tmp_path, make_hf_checkpoint):
    with pytest.raises(ToyGPTError, match="no config.json"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ToyGPTError, match="not a directory"):
        GPT.from_pretrained(tmp_path / "file.txt")
    path, _ = make_hf_checkpoint(activation_function="relu")
    with pytest.raises(ToyGPTError, match="activation_function 'relu'"):
        GPT.from_pretrained(path)


def test_tokenizer_json_becomes_model_tokenizer(tiny_gpt, tmp_path):
    from toygpt.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("hello world\n")
    model = tiny_gpt(vocab_size=tok.vocab_size)
    model.save_pretrained(tmp_path)
    tok.save(tmp_path / "tokenizer.json")
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.tokenizer.encode("hello") == tok.encode("hello")
    assert GPT.from_pretrained(tmp_path, dropout=0.3).config.dropout == 0.3


def test_hub_name_offline_and_not_cached_fails_fast(tmp_path, monkeypatch):
    """No network, empty cache: one ToyGPTError saying so and how to pass a directory, no hang."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(ToyGPTError, match="'gpt2' is not in the Hugging Face cache.*local directory"):
        GPT.from_pretrained("gpt2")
    assert time.perf_counter() - t0 < 30
