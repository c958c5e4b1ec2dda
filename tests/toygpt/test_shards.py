"""Sharded corpora (toygpt.shards) and their loader (data.load_tokens): tokens vs tiktoken's own
batch encoding, resume after a kill, the text split points, the trainer on shards, offline."""

import json
import random

import numpy as np
import pytest
from toygpt import data, shards
from toygpt.documents import safe_split
from toygpt.errors import ToyGPTError
from toygpt.shards import prepare_shards
from toygpt.tokenizers.gpt2 import ENV_VAR

# documents that stress the tokenizer: a literal special-token string (ordinary text to
# encode_ordinary), runs of whitespace, non-ASCII, an empty document
DOCS = ["Hello world, how are you?", "  leading spaces\n\n\nand blank lines\t\t", "<|endoftext|> is text here",
        "", "naïve café — 東京 🙂", "numbers 12345 678, it's 'quoted' isn't it"]


@pytest.fixture
def encoding(gpt2_vocab_dir, monkeypatch):
    from toygpt.tokenizers import GPT2Tokenizer

    monkeypatch.setenv(ENV_VAR, str(gpt2_vocab_dir))
    return GPT2Tokenizer(gpt2_vocab_dir).encoding


@pytest.fixture
def corpus(tmp_path, shakespeare_path):
    """Two text files (one long enough to be read in many pieces) and a JSON Lines file;
    returns (files, the documents in order)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    long_text = shakespeare_path.read_text()[:60_000]
    (folder / "a.txt").write_text(long_text)
    (folder / "b.txt").write_text("a short text file\n")
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)]
    lines.insert(2, "")  # a blank line is no document
    (folder / "c.jsonl").write_text("\n".join(lines) + "\n")
    return [folder / "a.txt", folder / "b.txt", folder / "c.jsonl"], [long_text, "a short text file\n", *DOCS]


def reference_tokens(encoding, documents):
    # the independent reference: tiktoken's own batch encoding, <|endoftext|> after each document
    eot = encoding.eot_token
    return [t for ids in encoding.encode_ordinary_batch(documents) for t in [*ids, eot]]


def read_shards(out_dir):
    meta = json.loads((out_dir / "meta.json").read_text())
    return meta, np.concatenate([np.fromfile(out_dir / s["file"], dtype=np.uint16) for s in meta["shards"]])


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_hold_tiktokens_encoding_of_the_documents(tmp_path, corpus, encoding, monkeypatch, workers):
    monkeypatch.setattr(shards, "TASK_CHARS", 5_000)  # the long text in ~12 pieces, several tasks
    files, documents = corpus
    meta = prepare_shards(files, tmp_path / "out", shard_tokens=4_000, workers=workers,
                          progress_bar=False, log=None)
    meta_on_disk, tokens = read_shards(tmp_path / "out")
    assert meta_on_disk == meta
    assert tokens.tolist() == reference_tokens(encoding, documents)
    assert meta["documents"] == len(documents)
    assert [s["split"] for s in meta["shards"]] == ["val"] + ["train"] * (len(meta["shards"]) - 1)
    assert all(s["tokens"] == 4_000 for s in meta["shards"][:-1])  # only the last one is short
    assert meta["val_tokens"] + meta["train_tokens"] == len(tokens)
    assert not (tmp_path / "out" / shards.PROGRESS_FILE).exists()


def test_a_directory_input_reads_its_files_in_name_order(tmp_path, corpus, encoding):
    files, documents = corpus
    meta = prepare_shards([files[0].parent], tmp_path / "out", shard_tokens=4_000, workers=0,
                          progress_bar=False, log=None)
    assert read_shards(tmp_path / "out")[1].tolist() == reference_tokens(encoding, documents)
    assert len(meta["inputs"]) == 3


def test_safe_split_keeps_the_tokens_of_the_whole_text(encoding):
    # random texts over the characters that decide GPT-2's pre-tokenizer splits: whitespace
    # runs, contractions, digits, punctuation, letters; a wrong split point changes the tokens
    rng = random.Random(0)
    alphabet = ["a", "bc", " ", " ", "\n", "\n\n", "\t", "'s", "'", "1", "23", ".", "!", "é", "  "]
    splits = 0
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 80)))
        cut = safe_split(text, rng.randint(2, len(text)))
        if cut:
            splits += 1
            assert encoding.encode_ordinary(text[:cut]) + encoding.encode_ordinary(text[cut:]) \
                == encoding.encode_ordinary(text), (text, cut)
    assert splits > 300  # the check above ran on many split points


def test_a_killed_prepare_resumes_to_the_same_shards(tmp_path, corpus, encoding, monkeypatch):
    monkeypatch.setattr(shards, "TASK_CHARS", 5_000)
    files, documents = corpus
    whole = prepare_shards(files, tmp_path / "whole", shard_tokens=3_000, workers=0, progress_bar=False, log=None)

    close = shards.ShardWriter._close
    closed = []

    def killed_after_three(self, next_position):
        if len(closed) == 3:
            raise KeyboardInterrupt  # as a kill would: mid-shard, after three complete shards
        closed.append(next_position)
        close(self, next_position)

    monkeypatch.setattr(shards.ShardWriter, "_close", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(files, tmp_path / "out", shard_tokens=3_000, workers=0, progress_bar=False, log=None)
    out = tmp_path / "out"
    assert not (out / "meta.json").exists()  # not finished data: the trainer refuses it
    assert sorted(p.name for p in out.glob("*.bin")) == ["train_000001.bin", "train_000002.bin", "val_000000.bin"]
    assert list(out.glob(".*.partial"))  # the shard being written is not under a shard's name
    with pytest.raises(ToyGPTError, match="meta.json not found"):
        data.load_tokens(out, "train")

    monkeypatch.setattr(shards.ShardWriter, "_close", close)
    logged = []
    resumed = prepare_shards(files, out, shard_tokens=3_000, workers=0, progress_bar=False, log=logged.append)
    assert "3 shards already written" in logged[0]
    assert resumed == {**whole, "inputs": resumed["inputs"]}  # same shards, counts and sha256s
    assert read_shards(out)[1].tolist() == reference_tokens(encoding, documents)
    assert not list(out.glob(".*.partial"))


def test_prepare_refuses_finished_data_and_other_inputs_mid_prepare(tmp_path, corpus, encoding):
    files, _ = corpus
    prepare_shards(files, tmp_path / "out", shard_tokens=4_000, workers=0, progress_bar=False, log=None)
    with pytest.raises(ToyGPTError, match="already holds prepared data"):
        prepare_shards(files, tmp_path / "out", shard_tokens=4_000, workers=0, progress_bar=False, log=None)
    (tmp_path / "out" / "meta.json").unlink()
    (tmp_path / "out" / shards.PROGRESS_FILE).write_text(json.dumps({"settings": {}, "shards": []}))
    with pytest.raises(ToyGPTError, match="unfinished prepare of other inputs"):
        prepare_shards(files[:1], tmp_path / "out", shard_tokens=4_000, workers=0, progress_bar=False, log=None)
    meta = prepare_shards(files, tmp_path / "out", shard_tokens=4_000, workers=0, overwrite=True,
                          progress_bar=False, log=None)
    assert meta["documents"] == 8


def test_errors_name_the_file_and_line(tmp_path, encoding):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(ToyGPTError, match=r"bad.jsonl line 2 has no text field 'text'"):
        prepare_shards([bad], tmp_path / "out", shard_tokens=2, workers=0, progress_bar=False, log=None)
    (tmp_path / "small.txt").write_text("a few words")
    with pytest.raises(ToyGPTError, match="fill only the val shard"):
        prepare_shards([tmp_path / "small.txt"], tmp_path / "o2", shard_tokens=100, workers=0,
                       progress_bar=False, log=None)
    with pytest.raises(ToyGPTError, match="nope.txt not found"):
        prepare_shards([tmp_path / "nope.txt"], tmp_path / "o3", workers=0, progress_bar=False, log=None)


def test_parquet_without_pyarrow_is_one_clear_error(tmp_path, encoding, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ToyGPTError, match=r"x.parquet: reading Parquet needs pyarrow \(pip install"):
        prepare_shards([tmp_path / "x.parquet"], tmp_path / "out", workers=0, progress_bar=False, log=None)


def test_parquet_text_column(tmp_path, encoding):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS, "id": list(range(len(DOCS)))}), tmp_path / "x.parquet",
                   row_group_size=2)
    prepare_shards([tmp_path / "x.parquet"], tmp_path / "out", shard_tokens=10, workers=0,
                   progress_bar=False, log=None)
    assert read_shards(tmp_path / "out")[1].tolist() == reference_tokens(encoding, DOCS)


def test_a_registered_corpus_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TOYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_reachable", lambda url, timeout: False)
    registry = {"corpus": tuple(data.RemoteText(f"https://example.invalid/{i}.parquet", None, f"c/{i}.parquet")
                                for i in range(3))}
    with pytest.raises(ToyGPTError, match=r"example.invalid cannot be reached; offline\?"):
        data.fetch_all("corpus", registry, timeout=1)


def test_loader_reads_shards_as_one_stream(tmp_path, corpus, encoding):
    files, documents = corpus
    prepare_shards(files, tmp_path / "out", shard_tokens=1_000, workers=0, progress_bar=False, log=None)
    stream = np.array(reference_tokens(encoding, documents))
    train = data.load_tokens(tmp_path / "out", "train")
    val = data.load_tokens(tmp_path / "out", "val")
    assert len(val) == 1_000 and len(train) == len(stream) - 1_000
    # windows at every shard boundary and at the ends, as get_batch cuts them
    offsets = np.array([0, 990, 999, 1_000, 2_995, len(train) - 9])
    x, y = data.get_batch(train, offsets, block_size=8)
    for row, i in enumerate(offsets):
        assert x[row].tolist() == stream[1_000 + i : 1_000 + i + 8].tolist()
        assert y[row].tolist() == stream[1_000 + i + 1 : 1_000 + i + 9].tolist()
    (tmp_path / "out" / "train_000002.bin").write_bytes(b"\0" * 10)  # truncated
    with pytest.raises(ToyGPTError, match="train_000002.bin holds 5 tokens but meta.json says 1000"):
        data.load_tokens(tmp_path / "out", "train")


def test_the_trainer_trains_and_resumes_on_shards(tmp_path, corpus, encoding):
    # the trainer reads shards through data.load_tokens, with no option of its own; a resumed
    # run draws the batches the uninterrupted run drew (they depend on step and rank alone)
    import torch
    from toygpt.config import make_config
    from toygpt.train import train

    files, _ = corpus
    prepare_shards(files, tmp_path / "data", shard_tokens=2_000, workers=0, progress_bar=False, log=None)
    settings = dict(n_layer=1, n_head=2, n_embd=8, block_size=16, batch_size=2, eval_interval=2,
                    eval_iters=1, sample_tokens=0, data=str(tmp_path / "data"), progress=False,
                    device="cpu", decay_lr=False, dropout=0.0)
    whole = train(make_config("mygpt-char", max_iters=4, out=str(tmp_path / "a"), **settings), log=lambda *a: None)
    train(make_config("mygpt-char", max_iters=2, out=str(tmp_path / "b"), **settings), log=lambda *a: None)
    resumed = train(make_config("mygpt-char", max_iters=4, out=str(tmp_path / "b"), resume=True, **settings),
                    log=lambda *a: None)
    for p, q in zip(whole["model"].parameters(), resumed["model"].parameters()):
        torch.testing.assert_close(p, q)


def test_prepare_cli_sends_several_files_to_shards(tmp_path, corpus, encoding, capsys):
    from toygpt import cli

    files, documents = corpus
    args = ["prepare", "--input", *map(str, files), "--out", str(tmp_path / "out"), "--shard-tokens", "3000",
            "--workers", "0"]
    assert cli.main(args) == 0
    assert read_shards(tmp_path / "out")[1].tolist() == reference_tokens(encoding, documents)
    assert f"{len(documents):,} documents" in capsys.readouterr().out
    assert cli.main([*args[:-4], "--out", str(tmp_path / "o2"), "--tokenizer", "char"]) == 2
    assert "a sharded corpus is tokenized with gpt2" in capsys.readouterr().err
