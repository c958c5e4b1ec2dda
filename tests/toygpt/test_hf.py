"""toygpt <-> transformers GPT-2: logits and loss equal within 1e-5 (fp32, CPU) both ways."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
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
    """transformers' logits, and its own next-token loss (labels=idx: it shifts them itself)."""
    with torch.no_grad():
        out = hf(idx, labels=idx)
    return out.logits, out.loss


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
    assert config["toygpt"] == {"block_size": 19, "dropout": 0.0, "bias": False, "qkv_bias": False,
                                "lm_head_bias": False, "init": "gpt2"}
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 19))
    logits, _ = toygpt_logits_loss(model, idx)
    torch.testing.assert_close(hf_logits_loss(hf, idx)[0], logits, atol=1e-5, rtol=0)
    again = GPT.from_pretrained(tmp_path).eval()
    assert again.config == model.config
    torch.testing.assert_close(toygpt_logits_loss(again, idx)[0], logits, atol=0, rtol=0)


def test_relu_untied_checkpoint_from_transformers(make_hf_checkpoint, tmp_path):
    """A transformers GPT-2 with ReLU and an untied head (its own lm_head.weight) loads into the
    same function, and a toygpt model of that kind without q/k/v biases is written for
    transformers with zero q/k/v biases and its own head."""
    path, hf = make_hf_checkpoint(activation_function="relu", tie_word_embeddings=False)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    model = GPT.from_pretrained(path).eval()
    assert (model.config.activation, model.config.tie_embeddings) == ("relu", False)
    idx = torch.randint(0, 101, (2, 37))
    torch.testing.assert_close(toygpt_logits_loss(model, idx)[0], hf_logits_loss(hf, idx)[0], atol=1e-5, rtol=0)

    torch.manual_seed(2)
    mine = GPT(GPTConfig(vocab_size=53, block_size=17, n_layer=2, n_head=2, n_embd=16, activation="relu",
                         tie_embeddings=False, qkv_bias=False, init="torch")).eval()
    mine.save_pretrained(tmp_path / "mine")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "mine").eval()
    assert torch.all(back.transformer.h[0].attn.c_attn.bias == 0)
    idx = torch.randint(0, 53, (3, 17))
    torch.testing.assert_close(hf_logits_loss(back, idx)[0], toygpt_logits_loss(mine, idx)[0], atol=1e-5, rtol=0)
    assert GPT.from_pretrained(tmp_path / "mine").config == mine.config


def test_a_head_bias_is_kept_by_toygpt_and_refused_by_transformers(tmp_path):
    """transformers' GPT-2 head has no bias: a model with one (mygpt-char) is written with its own
    model_type, which toygpt reads back exactly and transformers refuses rather than drop the bias."""
    torch.manual_seed(5)
    model = GPT(GPTConfig.preset("mygpt-char", vocab_size=31, n_layer=1, block_size=16)).eval()
    with torch.no_grad():
        model.lm_head.bias.normal_()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "toygpt" and config["toygpt"]["lm_head_bias"] is True
    again = GPT.from_pretrained(tmp_path).eval()
    assert again.config == model.config
    idx = torch.randint(0, 31, (2, 16))
    assert torch.equal(again(idx)[0], model(idx)[0])
    with pytest.raises(ValueError, match="toygpt"):
        transformers.AutoConfig.from_pretrained(tmp_path)


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
    path, _ = make_hf_checkpoint(activation_function="gelu")  # erf GELU: not GPT-2's tanh GELU
    with pytest.raises(ToyGPTError, match="activation_function 'gelu'"):
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


def test_sharded_safetensors_checkpoint(tmp_path):
    """A checkpoint split into shards with model.safetensors.index.json loads whole."""
    torch.manual_seed(5)
    config = transformers.GPT2Config(n_layer=3, n_head=2, n_embd=32, vocab_size=211, n_positions=17)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model = GPT.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 211, (2, 17))
    torch.testing.assert_close(toygpt_logits_loss(model, idx)[0], hf_logits_loss(hf, idx)[0], atol=1e-5, rtol=0)


def put_in_hub_cache(hub_cache, repo_id, model_dir):
    """Lay a model directory out as the Hugging Face cache does after a download:
    hub/models--{org}--{name}/refs/main (the commit) and snapshots/{commit}/ (the files)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_name_through_the_cache(make_hf_checkpoint, tmp_path, monkeypatch):
    """A repo id found in the Hugging Face cache loads offline, without touching the network."""
    constants = pytest.importorskip("huggingface_hub.constants")
    path, hf = make_hf_checkpoint(n_layer=2, n_head=2, n_embd=16, vocab_size=53, n_positions=11)
    put_in_hub_cache(tmp_path / "hub", "toy-org/tiny-gpt2", path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = GPT.from_pretrained("toy-org/tiny-gpt2").eval()
    idx = torch.randint(0, 53, (2, 11))
    torch.testing.assert_close(toygpt_logits_loss(model, idx)[0], hf_logits_loss(hf, idx)[0], atol=1e-5, rtol=0)


def run_toygpt_cli(args, env_overrides, tmp_path):
    """`python -m toygpt ARGS` in a fresh process with an empty Hugging Face home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), **env_overrides)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "toygpt", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, time.perf_counter() - t0


def closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on: connecting is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE", "unreachable"])
def test_hub_name_not_cached_fresh_process(tmp_path, network):
    """The real thing, not monkeypatched: an empty HF_HOME, and either HF_HUB_OFFLINE=1 or a hub
    endpoint that refuses connections. One line on stderr, exit code 2, no hang."""
    env = {"HF_HUB_OFFLINE": "1"} if network == "HF_HUB_OFFLINE" else {
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    proc, seconds = run_toygpt_cli(["generate", "--model", "gpt2", "--prompt", "Hi"], env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    reason = "disabled (HF_HUB_OFFLINE)" if network == "HF_HUB_OFFLINE" else "unreachable"
    assert "'gpt2' is not in the Hugging Face cache" in proc.stderr and reason in proc.stderr
    assert "local directory" in proc.stderr
    assert seconds < 60  # importing torch dominates; the probe itself gives up after 3 s
