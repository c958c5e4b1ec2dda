"""int8 decoding (toygpt.quantize): logits near float32's, greedy tokens, the KV cache path, the
float model left alone, the command line, and what is refused (other choices, saving)."""

import json

import pytest
import torch
import torch.nn.functional as F
from toygpt import GPT, GPTConfig
from toygpt.cli import main
from toygpt.errors import ToyGPTError
from toygpt.quantize import quantize
from toygpt.tokenizers import CharTokenizer

pytestmark = pytest.mark.skipif(
    not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines),
    reason="this torch has no x86 int8 kernels",
)


def gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=211, block_size=64, n_layer=2, n_head=4, n_embd=128)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def test_int8_logits_are_near_float32s_and_the_float_model_is_untouched():
    model = gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize(model, "int8")
    idx = torch.randint(0, 211, (3, 40))
    with torch.no_grad():
        want, _ = model(idx)
        got, _ = q(idx)
    # int8 weights with a scale per output row, activations quantized per call: the logits'
    # distributions stay close (KL measured here ~1e-4 nats; 100x that allowed)
    kl = F.kl_div(F.log_softmax(got, -1), F.log_softmax(want, -1), log_target=True, reduction="batchmean")
    assert 0 < kl.item() / idx.shape[1] < 1e-2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert type(q.lm_head).__module__.startswith("torch.ao.nn.quantized")


def test_int8_greedy_tokens_follow_float32_and_the_cache_agrees():
    model = gpt(seed=1)
    q = quantize(model)
    idx = torch.randint(0, 211, (2, 8))
    fp32 = model.generate(idx, 32, greedy=True)
    cached = q.generate(idx, 32, greedy=True)
    uncached = q.generate(idx, 32, greedy=True, use_cache=False)
    assert torch.equal(cached, uncached)  # the Decoder and the modules run the same int8 layers
    assert (cached[:, 8:] == fp32[:, 8:]).float().mean() >= 0.9


def test_what_is_refused():
    model = gpt()
    with pytest.raises(ToyGPTError, match="'int4' is not supported; choose one of int8"):
        quantize(model, "int4")
    q = quantize(model)
    with pytest.raises(ToyGPTError, match="already quantized"):
        quantize(q)
    with pytest.raises(ToyGPTError, match="save the float model"):
        q.save_pretrained("/nonexistent/never/written")
    with pytest.raises(ToyGPTError, match="float32 weights"):
        quantize(gpt().to(torch.bfloat16))


def test_cli_quantize(tmp_path, capsys):
    tok = CharTokenizer.from_text("To be, or not to be: that is the question.\n")
    model = gpt(vocab_size=tok.vocab_size)
    model.save_pretrained(tmp_path)
    tok.save(tmp_path / "tokenizer.json")
    argv = ["generate", "--model", str(tmp_path), "--prompt", "To be", "--max-new-tokens", "20", "--greedy"]
    assert main(argv + ["--quantize", "int8"]) == 0
    q = quantize(model)
    q.tokenizer = tok
    assert capsys.readouterr().out == "".join(q.generate(prompt="To be", max_new_tokens=20, greedy=True)) + "\n"
    assert main(argv + ["--quantize", "int4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quantize" in err and "int4" in err, err


def test_eval_loss_with_int8_weights(data_dir, tmp_path, capsys):
    from toygpt.config import make_config
    from toygpt.train import train

    train(make_config("mygpt-char", n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, max_iters=20,
                      eval_interval=20, eval_iters=1, sample_tokens=0, data=str(data_dir),
                      out=str(tmp_path / "run"), progress=False, device="cpu"), log=lambda *a: None)
    losses = {}
    for mode in (None, "int8"):
        out = tmp_path / f"{mode}.json"
        argv = ["eval", "loss", "--model", str(tmp_path / "run"), "--data", str(data_dir), "--out", str(out)]
        assert main(argv + (["--quantize", mode] if mode else [])) == 0
        result = json.loads(out.read_text())
        assert result["quantize"] == mode
        losses[mode] = result["loss"]
    assert losses[None] != losses["int8"]  # int8 weights did score
    assert losses["int8"] == pytest.approx(losses[None], rel=0.01)
