"""BPETokenizer: training against a naive trainer, GPT-2's merges against tiktoken and Hugging
Face, the tiktoken export, save / load and bad input."""

import json
import random
from collections import Counter

import pytest
import regex
from tokenizer_texts import GPT2_PAT, TRICKY, random_texts
from toygpt.errors import ToyGPTError
from toygpt.tokenizers import BPETokenizer, load_tokenizer


def naive_train(text: str, n_merges: int) -> list[tuple[int, int, int]]:
    """The textbook trainer: recount every pair of every chunk before each merge. Same rules as
    toygpt's: most frequent pair, ties to the smallest pair, a pair spelling bytes that are
    already a token is skipped."""
    words = [list(chunk.encode()) for chunk in regex.findall(GPT2_PAT, text)]
    vocab = [bytes([b]) for b in range(256)]
    merges = []
    skipped = set()
    while len(merges) < n_merges:
        counts = Counter(p for w in words for p in zip(w, w[1:]) if p not in skipped)
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        if vocab[pair[0]] + vocab[pair[1]] in vocab:
            skipped.add(pair)
            continue
        new_id = len(vocab)
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        merges.append((*pair, new_id))
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


@pytest.fixture(scope="module")
def shakespeare(shakespeare_path):
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gpt2_bpe(gpt2_vocab_dir):
    return BPETokenizer.from_gpt2_files(gpt2_vocab_dir / "encoder.json", gpt2_vocab_dir / "vocab.bpe")


@pytest.fixture(scope="module")
def trained(shakespeare):
    return BPETokenizer.train(shakespeare[:200_000], vocab_size=256 + 300 + 1)


# ---- GPT-2's merges in toygpt's BPE code ----

def test_gpt2_merges_encode_like_tiktoken(gpt2_bpe, reference_gpt2, shakespeare):
    assert gpt2_bpe.vocab_size == 50257 and gpt2_bpe.eot_id == 50256
    texts = TRICKY + random_texts(300, seed=random.randrange(10**6)) + [shakespeare]
    for text in texts:
        ids = gpt2_bpe.encode(text)  # the pure-Python path, on all of Tiny Shakespeare too
        assert ids == reference_gpt2.encode_ordinary(text), text[:60]
        assert gpt2_bpe.decode(ids) == text
    assert gpt2_bpe.encode("<|endoftext|>x", allowed_special=True) == [50256, 87]


def test_gpt2_merges_encode_like_hugging_face(gpt2_bpe, gpt2_vocab_dir, shakespeare):
    # transformers' GPT-2 tokenizer applies the merges pair by pair, as toygpt does (tiktoken
    # ranks byte strings instead), so this checks the pair rule itself
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2Tokenizer(vocab=str(gpt2_vocab_dir / "encoder.json"),
                                    merges=str(gpt2_vocab_dir / "vocab.bpe"))
    for text in TRICKY[1:-2] + [shakespeare[:20_000]]:
        assert gpt2_bpe.encode(text) == hf.encode(text), text[:60]


def test_gpt2_merges_export_to_the_same_tiktoken(gpt2_bpe, reference_gpt2):
    exported = gpt2_bpe.to_tiktoken()
    assert exported._mergeable_ranks == reference_gpt2._mergeable_ranks
    assert exported.encode(TRICKY[-2], allowed_special="all") == [50256, *exported.encode_ordinary(TRICKY[-2][13:])]


# ---- training ----

def test_training_equals_naive_trainer():
    rng = random.Random()
    words = ["the", " the", " cat", " sat", " on", " mat", "ing", " sing", "!", " 42", " é", " 日本"]
    text = "".join(rng.choice(words) for _ in range(3000))
    tok = BPETokenizer.train(text, vocab_size=256 + 60 + 1)
    expected = naive_train(text, 60)
    got = [(left, right, new_id) for (left, right), new_id in tok.merges.items()]
    assert got == expected
    assert tok.vocab_size == 256 + len(expected) + 1


def test_training_on_shakespeare_slice(trained, shakespeare):
    assert trained.vocab_size == 557 and trained.eot_id == 556
    assert len(trained.merges) == 300
    assert trained.vocab[256] in (b" t", b"e ", b"th", b"he")  # some English pair comes first
    again = BPETokenizer.train(shakespeare[:200_000], vocab_size=557)
    assert again.merges == trained.merges  # deterministic
    ids = trained.encode(shakespeare[:50_000])
    assert len(ids) < 0.6 * 50_000  # merges really compress
    assert trained.decode(ids) == shakespeare[:50_000]


def test_trained_round_trips_unseen_text(trained):
    for text in TRICKY + random_texts(100, seed=random.randrange(10**6)):
        assert trained.decode(trained.encode(text)) == text


def test_trained_tiktoken_export_encodes_the_same(trained, shakespeare):
    fast = trained.to_tiktoken()
    assert fast.n_vocab == trained.vocab_size and fast.eot_token == trained.eot_id
    assert fast.encode_ordinary(shakespeare) == trained.encode(shakespeare)
    for text in TRICKY + random_texts(200, seed=random.randrange(10**6)):
        assert fast.encode_ordinary(text) == trained.encode(text), text[:60]


def test_special_tokens_are_never_merged_into():
    text = "hello world<|endoftext|>" * 200
    tok = BPETokenizer.train(text, vocab_size=300, special_tokens=("<|endoftext|>", "<|pad|>"))
    eot, pad = 256 + len(tok.merges), 257 + len(tok.merges)  # the specials come after merges
    assert tok.special_tokens == {"<|endoftext|>": eot, "<|pad|>": pad} and tok.eot_id == eot
    assert not any(b"endoftext" in tok.vocab[i] for i in range(eot))
    assert tok.encode("hi<|pad|>", allowed_special=True)[-1] == pad
    assert pad not in tok.encode("hi<|pad|>")


def test_training_stops_when_pairs_run_out():
    tok = BPETokenizer.train("ab ab", vocab_size=1000)
    assert tok.vocab_size < 1000 and tok.encode("ab ab") == [tok.merges[(97, 98)], tok.encode(" ab")[0]]


@pytest.mark.parametrize("vocab_size", [0, 256, 256.5])
def test_training_rejects_too_small_vocab(vocab_size):
    with pytest.raises(ToyGPTError, match=f"vocab_size={vocab_size!r} is too small.*257"):
        BPETokenizer.train("some text", vocab_size=vocab_size)


# ---- save / load and bad input ----

def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "bpe.json"
    trained.save(path)
    back = load_tokenizer(path)
    assert isinstance(back, BPETokenizer)
    assert back.merges == trained.merges and back.special_tokens == trained.special_tokens
    text = "To be, or not to be: that is the question. 🤗"
    assert back.encode(text) == trained.encode(text)


def test_gpt2_merges_save_load(gpt2_bpe, gpt2_vocab_dir, tmp_path):
    gpt2_bpe.save(tmp_path / "gpt2bpe.json")
    back = BPETokenizer.load(tmp_path / "gpt2bpe.json")
    assert back.byte_ids == gpt2_bpe.byte_ids and back.encode("Hello world") == [15496, 995]
    assert BPETokenizer.from_gpt2_files(gpt2_vocab_dir).merges == gpt2_bpe.merges
    with pytest.raises(ToyGPTError, match="lacks encoder.json and vocab.bpe"):
        BPETokenizer.from_gpt2_files(tmp_path)
    with pytest.raises(ToyGPTError, match="cannot write tokenizer file .*nowhere"):
        gpt2_bpe.save(tmp_path / "nowhere" / "tok.json")


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d["merges"].append([1, 2]), "each merge must be"),
    (lambda d: d["merges"].__setitem__(0, [1, 9999, 256]), "uses an id not defined"),
    (lambda d: d.__setitem__("byte_ids", d["byte_ids"][:-1]), "256 bytes"),
    (lambda d: d.pop("merges"), "corrupt"),
])
def test_load_corrupt_file_names_it(trained, tmp_path, corrupt, message):
    path = tmp_path / "bpe.json"
    trained.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    corrupt(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ToyGPTError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_decode_rejects_bad_id(trained):
    with pytest.raises(ToyGPTError, match="token id 557 .*0..556"):
        trained.decode([5, 557])
