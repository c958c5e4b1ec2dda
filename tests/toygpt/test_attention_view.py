"""toygpt.attention_view: attention probabilities from the model's own forward, the next-token
probability view, and `toygpt attention` / `toygpt generate --show-probs` on the command line.

The references are independent of the hooks the view uses: a float64 GPT written out here from
the state_dict (softmax as exp / sum over the allowed keys), transformers' own
`output_attentions`, and a plain forward without the KV cache for the next-token probabilities.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from toygpt import attention_view as av
from toygpt.cli import main
from toygpt.errors import ToyGPTError
from toygpt.tokenizers import CharTokenizer


def reference_attention(model, idx):
    """Every layer's attention probabilities, (B, nh, T, T) float64, from the weights alone."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    B, T = idx.shape
    nh, C = cfg.n_head, cfg.n_embd
    hs = C // nh

    def ln(x, name):
        return F.layer_norm(x, (C,), sd[f"{name}.weight"], sd.get(f"{name}.bias"), 1e-5)

    def linear(x, name):
        return x @ sd[f"{name}.weight"].T + (sd[f"{name}.bias"] if f"{name}.bias" in sd else 0)

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    allowed = torch.tensor([[j <= i for j in range(T)] for i in range(T)])  # written out, not tril
    out = []
    for layer in range(cfg.n_layer):
        p = f"transformer.h.{layer}"
        q, k, v = linear(ln(x, f"{p}.ln_1"), f"{p}.attn.c_attn").split(C, dim=2)
        q, k, v = (t.reshape(B, T, nh, hs).permute(0, 2, 1, 3) for t in (q, k, v))
        scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(hs)
        e = torch.where(allowed, torch.exp(scores - scores.amax(dim=-1, keepdim=True)), 0.0)
        probs = e / e.sum(dim=-1, keepdim=True)
        out.append(probs)
        y = torch.einsum("bhij,bhjd->bhid", probs, v).permute(0, 2, 1, 3).reshape(B, T, C)
        x = x + linear(y, f"{p}.attn.c_proj")
        h = F.gelu(linear(ln(x, f"{p}.ln_2"), f"{p}.mlp.c_fc"), approximate="tanh")
        x = x + linear(h, f"{p}.mlp.c_proj")
    return out


@pytest.mark.parametrize("n_head,n_embd,T,B", [(3, 48, 13, 1), (1, 16, 1, 1), (4, 32, 29, 2), (5, 35, 37, 1)])
def test_probabilities_match_a_float64_reference(tiny_gpt, n_head, n_embd, T, B):
    model = tiny_gpt(vocab_size=53, block_size=37, n_layer=3, n_head=n_head, n_embd=n_embd, seed=T)
    idx = torch.randint(0, 53, (B, T), generator=torch.Generator().manual_seed(1))
    maps = av.attention_maps(model, idx)
    ref = reference_attention(model, idx)
    assert len(maps.probs) == 3
    for got, want in zip(maps.probs, ref):
        assert got.shape == (B, n_head, T, T) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)


def test_rows_sum_to_one_future_is_zero_and_p_times_v_is_the_models_output(tiny_gpt):
    model = tiny_gpt(vocab_size=61, block_size=41, n_layer=2, n_head=3, n_embd=24)
    idx = torch.randint(0, 61, (2, 41), generator=torch.Generator().manual_seed(2))
    maps = av.attention_maps(model, idx)
    future = torch.ones(41, 41, dtype=torch.bool).triu(1)
    for probs, v, y in zip(maps.probs, maps.v, maps.outputs):
        torch.testing.assert_close(probs.double().sum(-1), torch.ones(2, 3, 41, dtype=torch.float64))
        assert (probs[..., future] == 0).all()  # exactly zero, not merely small
        # the probabilities times v give what toykernels.causal_attention gave inside the model
        torch.testing.assert_close(probs @ v, y, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps.logits, model(idx)[0])  # the same forward as the model's
    assert model.training is False


def test_matches_transformers_output_attentions(make_hf_checkpoint):
    from toygpt import GPT

    path, hf_model = make_hf_checkpoint(n_layer=2, n_head=3, n_embd=48, n_positions=37)
    hf_model.set_attn_implementation("eager")  # the eager path returns its probabilities
    idx = torch.randint(0, 101, (1, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = hf_model(idx, output_attentions=True).attentions
    maps = av.attention_maps(GPT.from_pretrained(path), idx)
    for got, want in zip(maps.probs, theirs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_crop_keeps_rows_summing_to_one_with_an_earlier_column():
    probs = torch.softmax(torch.randn(2, 3, 10, 10).masked_fill(torch.ones(10, 10).triu(1).bool(), -torch.inf), -1)
    cropped, start = av.crop(probs, 4)
    assert start == 6 and cropped.shape == (2, 3, 4, 5)
    torch.testing.assert_close(cropped.sum(-1), torch.ones(2, 3, 4))
    torch.testing.assert_close(cropped[..., 0], probs[..., 6:, :6].sum(-1))
    assert av.crop(probs, 10) == (probs, 0)


def test_token_labels_make_spaces_newlines_and_partial_bytes_visible(gpt2_vocab_dir):
    from toygpt.tokenizers import GPT2Tokenizer

    assert av.token_labels(CharTokenizer.from_text("a b\n"), [2, 0, 1]) == ["a", "\\n", "␣"]
    tok = GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)
    ids = tok.encode(" the 龘")  # GPT-2 splits this character over two tokens
    labels = av.token_labels(tok, ids)
    assert labels[0] == "␣the" and labels[-2:] == ["<e9be>", "<98>"]


def test_errors_name_the_bad_value(tiny_gpt):
    from toygpt.bigram import BigramConfig, BigramLanguageModel

    model = tiny_gpt(vocab_size=11, block_size=8)
    with pytest.raises(ToyGPTError, match="the prompt is 9 tokens, longer than the model's context block_size=8"):
        av.attention_maps(model, torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ToyGPTError, match="--layer 2 is out of range: the model has 2 layers"):
        av.check_layer_head(2, None, 2, 2)
    with pytest.raises(ToyGPTError, match="--head -1 is out of range: the model has 2 heads"):
        av.check_layer_head(None, -1, 2, 2)
    with pytest.raises(ToyGPTError, match="no attention layers"):
        av.attention_maps(BigramLanguageModel(BigramConfig(vocab_size=11)), torch.zeros(1, 3, dtype=torch.long))


def test_next_token_probs_are_the_generation_distribution(tiny_gpt):
    model = tiny_gpt(vocab_size=30, block_size=16)
    model.tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,\n")
    prompt = "to be or"
    choices = list(av.next_token_probs(model, prompt, max_new_tokens=12, k=4, temperature=0.8, seed=5))
    # the same tokens as generate with the same seed: the view is the real decoding loop
    idx = torch.tensor([model.tokenizer.encode(prompt)])
    generated = model.generate(idx, 12, temperature=0.8, seed=5)[0, idx.shape[1]:].tolist()
    assert [c.token for c in choices] == generated
    seq = idx[0].tolist()
    for c in choices:  # an independent forward, no cache, over the window so far, in float64
        with torch.no_grad():
            logits = model(torch.tensor([seq[-16:]]))[0][0, -1].double()
        p = torch.softmax(logits / 0.8, dim=-1)
        assert c.prob == pytest.approx(float(p[c.token]), abs=1e-6)
        top = torch.topk(p, 4)
        assert [i for i, _ in c.alternatives] == top.indices.tolist()
        assert [q for _, q in c.alternatives] == pytest.approx(top.values.tolist(), abs=1e-6)
        seq.append(c.token)
    greedy = list(av.next_token_probs(model, prompt, max_new_tokens=5, k=2, greedy=True))
    assert all(c.token == c.alternatives[0][0] and c.prob == c.alternatives[0][1] for c in greedy)


@pytest.fixture
def char_checkpoint(tmp_path):
    """A char-level GPT trained for a few steps by the real trainer: its checkpoint directory."""
    from toygpt.prepare import prepare
    from toygpt.train import make_config, train

    text = tmp_path / "verse.txt"
    text.write_text("To be, or not to be, that is the question:\n" * 40)
    prepare(text, "char", tmp_path / "data")
    cfg = make_config("mygpt-char", n_layer=2, n_head=3, n_embd=24, block_size=32, max_iters=3,
                      eval_interval=3, eval_iters=1, batch_size=4, sample_tokens=0, progress=False,
                      data=str(tmp_path / "data"), out=str(tmp_path / "run"), device="cpu")
    train(cfg, log=lambda *a: None)
    return tmp_path / "run" / "ckpt"


def test_cli_attention_and_probs_on_a_trained_checkpoint(char_checkpoint, tmp_path, capsys):
    grid, one, probs_png = tmp_path / "grid.png", tmp_path / "one.png", tmp_path / "probs.png"
    assert main(["attention", "--model", str(char_checkpoint), "--prompt", "To be, or not", "--out", str(grid)]) == 0
    assert "13 tokens, 2 layers x 3 heads" in capsys.readouterr().out
    assert main(["attention", "--model", str(char_checkpoint), "--prompt", "To be, or not to be, that is the",
                 "--layer", "1", "--head", "2", "--max-tokens", "10", "--out", str(one)]) == 0
    assert main(["generate", "--model", str(char_checkpoint), "--prompt", "To be", "--max-new-tokens", "6",
                 "--show-probs", "3", "--greedy", "--out", str(probs_png)]) == 0
    out = capsys.readouterr().out
    assert "top 3 alternatives" in out and f"wrote {probs_png}" in out
    assert len([line for line in out.splitlines() if line[:4].strip().isdigit()]) == 6
    for png in (grid, one, probs_png):
        assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,message", [
    (["--layer", "2"], "--layer 2 is out of range: the model has 2 layers (0 .. 1)"),
    (["--head", "3"], "--head 3 is out of range: the model has 3 heads per layer (0 .. 2)"),
    (["--prompt", "To be " * 6], "the prompt is 36 tokens, longer than the model's context block_size=32"),
    (["--prompt", ""], "the prompt is empty"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),
])
def test_cli_errors_are_one_line_and_exit_2(char_checkpoint, tmp_path, capsys, argv, message):
    base = ["attention", "--model", str(char_checkpoint), "--prompt", "To be", "--out", str(tmp_path / "a.png")]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "a.png").exists()


def test_cli_on_a_gpt2_shaped_directory(make_hf_checkpoint, gpt2_vocab_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOYGPT_GPT2_VOCAB", str(gpt2_vocab_dir))
    path, _ = make_hf_checkpoint(n_layer=2, n_head=2, n_embd=16, vocab_size=50257, n_positions=24)
    png = tmp_path / "gpt2.png"
    assert main(["attention", "--model", str(path), "--prompt", "Hello world, how are you today?",
                 "--out", str(png)]) == 0
    assert "8 tokens, 2 layers x 2 heads" in capsys.readouterr().out
    assert main(["generate", "--model", str(path), "--prompt", "Hello world", "--max-new-tokens", "3",
                 "--show-probs", "--seed", "0", "--out", str(tmp_path / "p.png")]) == 0
    assert "top 5 alternatives" in capsys.readouterr().out
    assert png.read_bytes()[:4] == (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
