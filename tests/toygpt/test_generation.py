"""Generation: KV cache vs none vs transformers (greedy, token-identical), sampling options,
streaming text (UTF-8 split across tokens, stop strings, end-of-text), and bad input."""

import pytest
import torch
from toygpt import GPT
from toygpt.errors import ToyGPTError
from toygpt.generation import Sampler, TextStream, new_kv_cache
from toygpt.model import Decoder


def test_greedy_cache_matches_no_cache_and_transformers(make_hf_checkpoint):
    path, hf = make_hf_checkpoint(n_layer=2, n_head=3, n_embd=48, vocab_size=101, n_positions=37)
    model = GPT.from_pretrained(path)
    idx = torch.randint(0, 101, (3, 6))
    cached = model.generate(idx, 31, greedy=True)
    uncached = model.generate(idx, 31, greedy=True, use_cache=False)
    with torch.no_grad():
        ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=31,
                          min_new_tokens=31, do_sample=False, pad_token_id=0)
    assert cached.shape == (3, 37)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, ref)


MYGPT_BLOCK = dict(activation="relu", tie_embeddings=False, qkv_bias=False, lm_head_bias=True, init="torch")


@pytest.mark.parametrize("options", [dict(bias=True), dict(bias=False), MYGPT_BLOCK], ids=["gpt2", "no-bias", "mygpt"])
def test_decoder_step_matches_full_forward(tiny_gpt, options):
    """Decoder.step (the blocks' forward on plain copies of the modules) gives the logits
    forward() gives at each position, for GPT-2's block and for MyGPT's (ReLU, its own head)."""
    model = tiny_gpt(vocab_size=97, block_size=19, n_layer=3, n_head=3, n_embd=24, seed=5, **options)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))  # LayerNorms and biases away from 1 and 0
    idx = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V)
    with torch.inference_mode():
        cache = new_kv_cache(model, 2)
        prefill = model.forward_cached(idx[:, :4], cache, 0)
        torch.testing.assert_close(prefill, full[:, 3], atol=1e-5, rtol=0)
        decoder = Decoder(model, cache)
        for pos in range(4, 19):
            torch.testing.assert_close(decoder.step(idx[:, pos], pos), full[:, pos], atol=1e-5, rtol=0)


def test_context_slides_past_block_size(tiny_gpt):
    model = tiny_gpt(vocab_size=53, block_size=8)
    idx = torch.randint(0, 53, (2, 5))
    cached = model.generate(idx, 20, greedy=True)
    uncached = model.generate(idx, 20, greedy=True, use_cache=False)
    assert torch.equal(cached, uncached)
    # each new token is the argmax given the last block_size tokens (nanoGPT's crop)
    with torch.no_grad():
        for t in range(5, 25):
            logits, _ = model(cached[:, max(0, t - 8):t])
            assert torch.equal(logits[:, -1].argmax(-1), cached[:, t])


def test_long_prompt_is_cropped(tiny_gpt):
    model = tiny_gpt(vocab_size=53, block_size=8)
    idx = torch.randint(0, 53, (1, 13))
    out = model.generate(idx, 4, greedy=True)
    assert torch.equal(out[:, :13], idx)
    assert torch.equal(out[:, 13:], model.generate(idx[:, -8:], 4, greedy=True)[:, 8:])


def test_batch_rows_match_single_rows(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 101, (4, 7))
    batch = model.generate(idx, 12, greedy=True)
    for row in range(4):
        assert torch.equal(batch[row:row + 1], model.generate(idx[row:row + 1], 12, greedy=True))


def test_seed_top_k_top_p(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 101, (2, 3))
    a = model.generate(idx, 20, temperature=1.5, seed=7)
    assert torch.equal(a, model.generate(idx, 20, temperature=1.5, seed=7))
    assert not torch.equal(a, model.generate(idx, 20, temperature=1.5, seed=8))
    greedy = model.generate(idx, 20, greedy=True)
    assert torch.equal(model.generate(idx, 20, temperature=0), greedy)
    assert torch.equal(model.generate(idx, 20, sampling=False), greedy)
    assert torch.equal(model.generate(idx, 20, top_k=1, seed=1), greedy)
    assert torch.equal(model.generate(idx, 20, top_p=1e-6, seed=1), greedy)
    assert model.training is False
    model.train()
    model.generate(idx, 2)
    assert model.training is True  # generate runs in eval mode and restores the mode


def test_sampler_distribution_top_k_top_p():
    torch.manual_seed(0)
    logits = torch.randn(1, 10).expand(4000, 10)  # 4000 draws from one distribution
    probs = torch.softmax(logits[0].double(), -1)
    order = probs.argsort(descending=True)

    draws = Sampler(1.0, 3, None, False, seed=0, device="cpu")(logits)
    top3 = probs[order[:3]] / probs[order[:3]].sum()
    freq = torch.bincount(draws, minlength=10).double() / len(draws)
    assert set(draws.tolist()) <= set(order[:3].tolist())
    torch.testing.assert_close(freq[order[:3]], top3, atol=0.04, rtol=0)

    # nucleus: the smallest prefix of the sorted tokens whose mass reaches top_p
    top_p = float(probs[order[:4]].sum()) - 1e-3
    draws = Sampler(1.0, None, top_p, False, seed=0, device="cpu")(logits)
    assert set(draws.tolist()) == set(order[:4].tolist())

    draws = Sampler(0.5, None, None, False, seed=0, device="cpu")(logits)
    sharp = torch.softmax(logits[0].double() / 0.5, -1)
    freq = torch.bincount(draws, minlength=10).double() / len(draws)
    torch.testing.assert_close(freq, sharp, atol=0.04, rtol=0)


def test_sampler_draw_frequencies_and_zero_probabilities():
    """Inverse-CDF draws: frequencies match the probabilities; ids of probability 0 (here also
    the last ones, where rounding would land) never come out."""
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(1, 12, generator=g, dtype=torch.float64)
    probs[0, [0, 4, 10, 11]] = 0.0
    probs = (probs / probs.sum()).float()
    draws = Sampler(1.0, None, None, False, seed=2, device="cpu").draw(probs.expand(200_000, 12))
    freq = torch.bincount(draws, minlength=12).double() / len(draws)
    torch.testing.assert_close(freq, probs[0].double(), atol=4e-3, rtol=0)
    assert freq[[0, 4, 10, 11]].sum() == 0
    # a whole vocabulary with one dominant id and many tiny ones, rows not normalized
    probs = torch.full((2, 50257), 1e-12)
    probs[:, 7] = 3.0
    assert Sampler(1.0, None, None, False, seed=0, device="cpu").draw(probs).tolist() == [7, 7]


def test_text_stream_utf8_split_across_tokens(gpt2_vocab_dir):
    from toygpt.tokenizers import GPT2Tokenizer

    tok = GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)
    text = "héllo 世界 🙂 naïve – ok"
    ids = tok.encode(text)
    assert any(b"\xef\xbf\xbd" in tok.decode(i).encode() for i in ([t] for t in ids))  # split chars exist
    stream = TextStream(tok, [])
    pieces = [stream.push(t, tok.eot_id) for t in ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_text_stream_stop_strings():
    class Bytes:  # a byte-level tokenizer: token i is byte i (the real interface, nothing mocked out)
        def decode_bytes(self, ids):
            return bytes(ids)

    text = "one two STOP three"
    stream = TextStream(Bytes(), ["STOP", "xyz"])
    pieces = [stream.push(b, None) for b in text.encode()]
    assert "".join(pieces) + stream.finish() == "one two "
    assert stream.done


def test_text_form_matches_tensor_form(gpt2_vocab_dir, tiny_gpt):
    from toygpt.tokenizers import GPT2Tokenizer

    model = tiny_gpt(vocab_size=50257)
    model.tokenizer = tok = GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)
    prompt = "Hello world how are"
    text = "".join(model.generate(prompt=prompt, max_new_tokens=25, seed=3, stop_at_eot=False))
    idx = torch.tensor([tok.encode(prompt)])
    ids = model.generate(idx, 25, seed=3)[0, idx.shape[1]:].tolist()
    assert text == tok.decode(ids)
    # a stop string cuts the stream where it first appears
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = "".join(model.generate(prompt=prompt, max_new_tokens=25, seed=3, stop=stop, stop_at_eot=False))
    assert cut == text[:text.index(stop)]
    # a batch of prompts of different lengths: one piece per prompt per step
    prompts = [prompt, "A", "Hi there"]
    rows = ["", "", ""]
    for pieces in model.generate(prompt=prompts, max_new_tokens=6, greedy=True):
        rows = [r + p for r, p in zip(rows, pieces)]
    assert rows == ["".join(model.generate(prompt=p, max_new_tokens=6, greedy=True)) for p in prompts]


def test_end_of_text_stops_and_empty_prompt_starts_from_it(gpt2_vocab_dir, tiny_gpt):
    from toygpt.tokenizers import GPT2Tokenizer

    model = tiny_gpt(vocab_size=50257)
    model.tokenizer = GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)
    eot = 50256
    with torch.no_grad():  # make <|endoftext|> the greedy choice after any input
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[eot] * 10)
    assert list(model.generate(prompt="Hello", greedy=True)) == []
    idx = torch.tensor([[15496, 995]])
    assert model.generate(idx, 5, greedy=True, stop_at_eot=True).tolist() == [[15496, 995, eot]]
    assert model.generate(idx, 5, greedy=True).tolist() == [[15496, 995] + [eot] * 5]

    model = tiny_gpt(vocab_size=50257)
    model.tokenizer = GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)
    text = "".join(model.generate(prompt="", max_new_tokens=5, greedy=True, stop_at_eot=False))
    ids = model.generate(torch.tensor([[eot]]), 5, greedy=True)[0, 1:].tolist()
    assert text == model.tokenizer.decode(ids)


def test_bad_input(tiny_gpt):
    from toygpt.tokenizers import CharTokenizer

    model = tiny_gpt(vocab_size=11)
    idx = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ToyGPTError, match="temperature.*-1"):
        model.generate(idx, 3, temperature=-1)
    with pytest.raises(ToyGPTError, match="top_k.*0"):
        model.generate(idx, 3, top_k=0)
    for top_p in (0, 1.5):
        with pytest.raises(ToyGPTError, match=f"top_p.*{top_p}"):
            model.generate(idx, 3, top_p=top_p)
    with pytest.raises(ToyGPTError, match="token id 11 is outside the vocabulary"):
        model.generate(torch.tensor([[3, 11]]), 3)
    with pytest.raises(ToyGPTError, match="token id -1 is outside"):
        model(torch.tensor([[3, -1]]))
    with pytest.raises(ToyGPTError, match="has no tokenizer"):
        model.generate(prompt="hi")
    with pytest.raises(ToyGPTError, match="max_new_tokens must be an int >= 0, got -2"):
        model.generate(idx, -2)
    with pytest.raises(ToyGPTError, match="either idx .* or prompt"):
        model.generate(idx, 3, prompt="hi")
    with pytest.raises(ToyGPTError, match="stop strings need the text form"):
        model.generate(idx, 3, stop="x")
    assert torch.equal(model.generate(idx, 0), idx)
    model.tokenizer = CharTokenizer.from_text("abcdefghij")
    with pytest.raises(ToyGPTError, match="empty prompt.*'char' tokenizer has no end-of-text"):
        model.generate(prompt="")
    assert len("".join(model.generate(prompt="abc", max_new_tokens=7, seed=0))) == 7


def test_prompt_ids_outside_the_model_vocabulary(gpt2_vocab_dir, tiny_gpt):
    """A tokenizer bigger than the model (GPT-2's BPE on a 100-id model): the id is named."""
    from toygpt.tokenizers import GPT2Tokenizer

    model = tiny_gpt(vocab_size=100)
    with pytest.raises(ToyGPTError, match=r"prompt token id 15496 is outside the model's vocabulary \[0, 100\)"):
        list(model.generate(prompt="Hello", tokenizer=GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)))


def test_a_users_streaming_loop_streams_text(gpt2_vocab_dir, tiny_gpt, capsys):
    """The streaming loop a user writes (`for piece in model.generate(prompt=...)`), on a GPT-2-vocabulary
    model: str pieces, streamed."""
    import inspect
    import sys

    from toygpt.tokenizers import GPT2Tokenizer

    model = tiny_gpt(vocab_size=50257, block_size=64)
    model.tokenizer = GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)
    torch.manual_seed(11)
    stream = model.generate(prompt='Hello world how are', temperature=1.0, sampling=True)
    assert inspect.isgenerator(stream)
    pieces = []
    for t in stream:
        sys.stdout.write(t)
        pieces.append(t)
    assert all(isinstance(t, str) and t for t in pieces)
    assert capsys.readouterr().out == "".join(pieces)
    # the same draws through the tensor form: 256 new tokens by default (past block_size=64, so
    # the context slides), up to the end-of-text token, which the text form does not print
    torch.manual_seed(11)
    idx = torch.tensor([model.tokenizer.encode('Hello world how are')])
    ids = model.generate(idx, 256, temperature=1.0, stop_at_eot=True)[0, idx.shape[1]:].tolist()
    if ids[-1] == model.tokenizer.eot_id:
        ids = ids[:-1]
    assert "".join(pieces) == model.tokenizer.decode(ids)


def test_text_form_never_samples_ids_the_tokenizer_lacks(tiny_gpt):
    """A model vocabulary larger than the tokenizer's (nanoGPT pads 50,257 to 50,304): the extra
    ids are never drawn, even when the model prefers them."""
    from toygpt.tokenizers import CharTokenizer

    model = tiny_gpt(vocab_size=14)
    model.tokenizer = CharTokenizer.from_text("abcdefghij")  # ids 0..9
    with torch.no_grad():  # make id 12 the most likely after any input, id 3 the runner-up
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[12] * 50 + model.transformer.wte.weight[3] * 20)
    assert model.generate(torch.tensor([[1, 2]]), 4, greedy=True)[0, 2:].tolist() == [12] * 4  # tensor form: any id
    assert "".join(model.generate(prompt="ab", max_new_tokens=4, greedy=True)) == "dddd"
    text = "".join(model.generate(prompt="ab", max_new_tokens=50, temperature=3.0, seed=0))
    assert len(text) == 50 and set(text) <= set("abcdefghij")


def test_bf16_generation_matches_its_float64_twin(tiny_gpt):
    # The GPU's generation path on a CPU: a model cast to bf16 (its KV cache is bf16 too), and a
    # float32 model under bf16 autocast (its cache stays float32, the new q/k/v are bf16, so the
    # attention gets mixed dtypes that autocast casts). Both against the float64 forward of the
    # same bf16-rounded weights. Tolerance: logits here are at most ~0.4 in size; bf16's relative
    # rounding (2^-9) over 3 layers gave at most 0.0026 off; we allow 0.01.
    import copy

    model = tiny_gpt(vocab_size=97, block_size=19, n_layer=3, n_head=3, n_embd=48, seed=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16))  # weights exactly representable in bf16
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ref = copy.deepcopy(model).double()
    idx = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        full, _ = ref(idx)
    for name, net, autocast in (("bf16 model", bf16, False), ("fp32 model, bf16 autocast", model, True)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            cache = new_kv_cache(net, 2)
            assert cache[0][0].dtype == (torch.float32 if autocast else torch.bfloat16), name
            logits = [net.forward_cached(idx[:, :4], cache, 0)]
            decoder = Decoder(net, cache)
            logits += [decoder.step(idx[:, pos], pos) for pos in range(4, 19)]
            assert logits[0].dtype == torch.bfloat16, name
            for pos, got in zip(range(3, 19), logits):
                torch.testing.assert_close(got.double(), full[:, pos], atol=0.01, rtol=0, msg=f"{name} at {pos}")
            cached = net.generate(idx[:, :3], 12, greedy=True)
            uncached = net.generate(idx[:, :3], 12, greedy=True, use_cache=False)
        assert torch.equal(cached, uncached), name
