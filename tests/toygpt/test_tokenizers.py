"""CharTokenizer, GPT2Tokenizer and the shared interface (save / load, bad input).

GPT-2 is checked against tiktoken's own loader of the same files (tiktoken.load), not against
toygpt's file reader, so a mistake in the byte mapping or the ids would show.
"""

import codecs
import json
import random

import pytest
from tokenizer_texts import TRICKY, random_texts
from toygpt.errors import ToyGPTError
from toygpt.tokenizers import CharTokenizer, GPT2Tokenizer, Tokenizer, load_tokenizer
from toygpt.tokenizers import gpt2 as gpt2_module


@pytest.fixture(scope="module")
def gpt2(gpt2_vocab_dir):
    return GPT2Tokenizer(vocab_dir=gpt2_vocab_dir)


# ---- CharTokenizer ----

def test_char_vocab_is_sorted_unique_characters(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65 and tok.eot_id is None and tok.name == "char"
    assert tok.chars[:2] == ["\n", " "]  # nanoGPT's shakespeare_char: '\n' = 0, ' ' = 1
    ids = tok.encode(text[:5000])
    alphabet = sorted(set(text))
    assert ids == [alphabet.index(c) for c in text[:5000]]
    assert tok.decode(ids) == text[:5000]


def test_char_unicode_round_trip_and_bytes():
    text = "héllo wörld 🤗 日本"
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_char_unknown_character_names_it_and_its_position():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ToyGPTError, match=r"'z' \(U\+007A\) at position 3"):
        tok.encode("abcz")
    with pytest.raises(ToyGPTError, match="empty"):
        CharTokenizer.from_text("")


@pytest.mark.parametrize("bad_id", [3, -1, 10**9])
def test_char_decode_rejects_ids_outside_vocab(bad_id):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ToyGPTError, match=f"token id {bad_id} "):
        tok.decode([0, 1, bad_id])


# ---- GPT2Tokenizer ----

def test_gpt2_ranks_equal_tiktoken_loader(gpt2, reference_gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256 and gpt2.name == "gpt2"
    assert gpt2.encoding._mergeable_ranks == reference_gpt2._mergeable_ranks
    assert gpt2.encoding._pat_str == reference_gpt2._pat_str


def test_gpt2_encode_equals_tiktoken(gpt2, reference_gpt2, shakespeare_path):
    texts = TRICKY + random_texts(200, seed=random.randrange(10**6))
    texts.append(shakespeare_path.read_text(encoding="utf-8"))
    for text in texts:
        ids = gpt2.encode(text)
        assert ids == reference_gpt2.encode_ordinary(text), text[:60]
        assert gpt2.decode(ids) == text


def test_gpt2_known_ids(gpt2):
    # fixed points from GPT-2 itself: "Hello world" = [15496, 995], "!" = 0
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("!") == [0]
    assert gpt2.encode("<|endoftext|>", allowed_special=True) == [50256]
    assert gpt2.encode("<|endoftext|>") != [50256]  # by default it is ordinary text


def test_gpt2_decode_bytes_streams_split_characters(gpt2):
    text = "🤗 日本 café"
    ids = gpt2.encode(text)
    pieces = [gpt2.decode_bytes([i]) for i in ids]
    assert any(p.decode("utf-8", errors="replace") != p.decode("utf-8", errors="ignore")
               for p in pieces)  # some token really does hold part of a character
    decoder = codecs.getincrementaldecoder("utf-8")()
    assert "".join(decoder.decode(p) for p in pieces) + decoder.decode(b"", final=True) == text


def test_gpt2_decode_rejects_bad_id(gpt2):
    with pytest.raises(ToyGPTError, match="token id 50257 "):
        gpt2.decode([1, 50257])


def test_gpt2_env_var(gpt2_vocab_dir, tmp_path, monkeypatch):
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (vocab / name).symlink_to(gpt2_vocab_dir / name)
    monkeypatch.setenv("TOYGPT_GPT2_VOCAB", str(vocab))
    tok = GPT2Tokenizer()
    assert tok.vocab_dir == vocab.resolve()
    assert tok.encode("Hello world") == [15496, 995]

    monkeypatch.setenv("TOYGPT_GPT2_VOCAB", str(tmp_path / "nowhere"))
    with pytest.raises(ToyGPTError, match="TOYGPT_GPT2_VOCAB is set.*nowhere"):
        GPT2Tokenizer()


def test_gpt2_missing_files_name_the_directory(tmp_path):
    with pytest.raises(ToyGPTError, match=f"{tmp_path}.*encoder.json and vocab.bpe"):
        GPT2Tokenizer(vocab_dir=tmp_path)
    (tmp_path / "encoder.json").write_text("{not json")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(ToyGPTError, match="encoder.json is not valid JSON"):
        GPT2Tokenizer(vocab_dir=tmp_path)


def test_gpt2_offline_without_files_is_one_clear_error(tmp_path, monkeypatch):
    # no local files anywhere, and an empty tiktoken cache: either this machine reaches
    # OpenAI's blob store (then tiktoken works) or the error must say what to do
    monkeypatch.delenv("TOYGPT_GPT2_VOCAB", raising=False)
    monkeypatch.setattr(gpt2_module, "default_vocab_dirs", lambda: [tmp_path])
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    try:
        tok = GPT2Tokenizer()
    except ToyGPTError as e:
        assert "TOYGPT_GPT2_VOCAB" in str(e) and "encoder.json" in str(e)
    else:
        assert tok.encode("Hello world") == [15496, 995]


# ---- the interface: save / load ----

def test_save_load_round_trip(gpt2, tmp_path):
    char = CharTokenizer.from_text("some text 🤗\n")
    for tok in (char, gpt2):
        path = tmp_path / f"{tok.name}.json"
        tok.save(path)
        assert json.loads(path.read_text(encoding="utf-8"))["type"] == tok.name
        back = load_tokenizer(path)
        assert type(back) is type(tok) and back.vocab_size == tok.vocab_size
        assert back.eot_id == tok.eot_id
        assert back.encode("some text 🤗\n") == tok.encode("some text 🤗\n")
        assert type(tok).load(path).vocab_size == tok.vocab_size
        assert isinstance(Tokenizer.load(path), type(tok))
    # a directory means its tokenizer.json (a toygpt checkpoint directory)
    char.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path).chars == char.chars
    with pytest.raises(ToyGPTError, match="holds a 'char' tokenizer, not 'gpt2'"):
        GPT2Tokenizer.load(tmp_path / "char.json")


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{\"type\": \"char\", \"chars\"", "not valid JSON"),
    ("[1, 2]", "no \"type\" field"),
    ("{\"type\": \"sentencepiece\"}", "unknown type 'sentencepiece'"),
    ("{\"type\": \"char\"}", "corrupt"),
    ("{\"type\": \"char\", \"chars\": \"aa\"}", "repeated character"),
])
def test_load_bad_file_names_it(tmp_path, content, message):
    path = tmp_path / "tok.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ToyGPTError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)
