"""Shared toygpt test helpers: a small prepared character dataset, small random transformers
GPT-2 checkpoints, tiny toygpt models."""

import pytest
import torch


@pytest.fixture
def train_text() -> str:
    """A text of repeated lines with numbers: a character vocabulary small enough to learn fast."""
    return "".join(f"{i} To be, or not to be, that is the question: {i * 31 % 17}\n" for i in range(120))


@pytest.fixture
def data_dir(tmp_path, train_text):
    """`train_text` prepared with the character tokenizer (train.bin, val.bin, meta.json)."""
    from toygpt.prepare import prepare

    src = tmp_path / "text.txt"
    src.write_text(train_text)
    prepare(src, "char", tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def make_hf_checkpoint(tmp_path):
    """make_hf_checkpoint(n_layer=, n_head=, n_embd=, vocab_size=, n_positions=, seed=, **kw)
    -> (directory, GPT2LMHeadModel in eval mode): a random GPT-2 saved by transformers."""
    transformers = pytest.importorskip("transformers")
    counter = iter(range(1000))

    def make(n_layer=2, n_head=3, n_embd=48, vocab_size=101, n_positions=37, seed=0, safe=True, **kw):
        torch.manual_seed(seed)
        config = transformers.GPT2Config(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
            n_positions=n_positions, **kw,
        )
        model = transformers.GPT2LMHeadModel(config).eval()
        with torch.no_grad():  # biases and LayerNorm parameters start at 0 / 1: make them random
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
        path = tmp_path / f"hf{next(counter)}"
        model.save_pretrained(path, safe_serialization=safe)
        return path, model

    return make


@pytest.fixture
def tiny_gpt():
    """tiny_gpt(vocab_size=..., block_size=..., seed=...) -> a small random toygpt GPT, eval mode."""
    from toygpt import GPT, GPTConfig

    def make(vocab_size=101, block_size=32, n_layer=2, n_head=2, n_embd=32, seed=0, **kw):
        torch.manual_seed(seed)
        config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                           n_head=n_head, n_embd=n_embd, **kw)
        return GPT(config).eval()

    return make


@pytest.fixture(scope="session")
def reference_gpt2(gpt2_vocab_dir):
    """tiktoken's `gpt2` Encoding, built by tiktoken's own file loader from the shared files (not
    by toygpt's reader, so a mistake in the byte mapping or the ids would show)."""
    import os

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tokenizer_texts import GPT2_PAT

    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # no cache: read the local files directly
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            str(gpt2_vocab_dir / "vocab.bpe"), str(gpt2_vocab_dir / "encoder.json"))
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    return tiktoken.Encoding("gpt2-reference", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
