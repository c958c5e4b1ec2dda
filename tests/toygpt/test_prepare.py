"""toygpt prepare and the dataset registry: token files vs the tokenizer, sha256, cache, offline."""

import functools
import hashlib
import http.server
import json
import threading

import numpy as np
import pytest
from toygpt import data
from toygpt.errors import ToyGPTError
from toygpt.prepare import prepare
from toygpt.tokenizers import CharTokenizer, load_tokenizer
from toygpt.tokenizers.gpt2 import ENV_VAR

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(200))


def test_prepare_char_writes_the_tokens_of_the_text(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXT)
    meta = prepare(src, "char", tmp_path / "out", val_fraction=0.25)
    ids = CharTokenizer.from_text(TEXT).encode(TEXT)  # the reference tokenization
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert train.tolist() + val.tolist() == ids
    assert len(train) == int(len(ids) * 0.75)  # nanoGPT's split point
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["source_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(set(TEXT))
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == TEXT


def test_prepare_gpt2_writes_gpt2_ids(tmp_path, gpt2_vocab_dir, monkeypatch):
    from toygpt.tokenizers import GPT2Tokenizer

    monkeypatch.setenv(ENV_VAR, str(gpt2_vocab_dir))
    src = tmp_path / "in.txt"
    src.write_text(TEXT)
    meta = prepare(src, "gpt2", tmp_path / "out")
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 50257  # 50257 ids fit in 16 bits
    ids = np.concatenate([np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert ids.tolist() == GPT2Tokenizer(gpt2_vocab_dir).encode(TEXT)


@pytest.mark.parametrize("spec, match", [("words", "unknown --tokenizer"), ("bpe:x", "integer"),
                                         ("bpe:100", "more than 256")])
def test_prepare_rejects_bad_tokenizer_specs(tmp_path, spec, match):
    src = tmp_path / "in.txt"
    src.write_text(TEXT)
    with pytest.raises(ToyGPTError, match=match):
        prepare(src, spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_prepare_errors_name_the_file(tmp_path):
    with pytest.raises(ToyGPTError, match="nope.txt"):
        prepare(tmp_path / "nope.txt", "char", tmp_path / "out")
    (tmp_path / "short.txt").write_text("ab")
    with pytest.raises(ToyGPTError, match="short.txt is too short"):
        prepare(tmp_path / "short.txt", "char", tmp_path / "out")
    with pytest.raises(ToyGPTError, match="val-fraction"):
        prepare(tmp_path / "short.txt", "char", tmp_path / "out", val_fraction=1.5)


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


def test_fetch_downloads_checks_sha256_and_caches(http_server, tmp_path, monkeypatch):
    base, www = http_server
    monkeypatch.setenv("TOYGPT_CACHE", str(tmp_path / "cache"))
    (www / "t.txt").write_text(TEXT)
    good = {"t": data.RemoteText(f"{base}/t.txt", hashlib.sha256(TEXT.encode()).hexdigest(), "t.txt")}
    path = data.fetch("t", good, timeout=5)
    assert path.read_text() == TEXT and path.parent == tmp_path / "cache" / "datasets"
    (www / "t.txt").unlink()  # the cache answers now, without the server's file
    assert data.fetch("t", good, timeout=5) == path

    (www / "u.txt").write_text(TEXT + "tampered")
    bad = {"u": data.RemoteText(f"{base}/u.txt", good["t"].sha256, "u.txt")}
    with pytest.raises(ToyGPTError, match="sha256"):
        data.fetch("u", bad, timeout=5)
    assert list((tmp_path / "cache" / "datasets").iterdir()) == [path]  # no partial file left


def test_fetch_offline_fails_at_once_suggesting_input(tmp_path, monkeypatch):
    import socket
    import time

    monkeypatch.setenv("TOYGPT_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:  # a port nobody listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = {"x": data.RemoteText(f"http://127.0.0.1:{port}/x.txt", "0" * 64, "x.txt")}
    t0 = time.perf_counter()
    with pytest.raises(ToyGPTError, match="--input FILE"):
        data.fetch("x", reg, timeout=2)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ToyGPTError, match="unknown dataset 'nope'.*shakespeare"):
        data.fetch("nope")


def test_registry_sha256_matches_the_shared_copy(shakespeare_path):
    assert data.sha256_of(shakespeare_path) == data.DATASETS["shakespeare"].sha256


def test_cli_prepare_dataset_downloads_through_the_registry(shakespeare_path, tmp_path, monkeypatch, capsys):
    from toygpt import cli

    # the registry's entry, served from a file:// URL of the shared copy (no test downloads)
    monkeypatch.setenv("TOYGPT_CACHE", str(tmp_path / "cache"))
    entry = data.DATASETS["shakespeare"]
    monkeypatch.setitem(data.DATASETS, "shakespeare",
                        data.RemoteText(shakespeare_path.resolve().as_uri(), entry.sha256, entry.filename))
    assert cli.main(["prepare", "--dataset", "shakespeare", "--out", str(tmp_path / "out")]) == 0
    assert "1,003,854 train and 111,540 val tokens" in capsys.readouterr().out  # nanoGPT's counts
    text = shakespeare_path.read_text()
    ids = np.concatenate([np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert ids.tolist() == CharTokenizer.from_text(text).encode(text)
    assert (tmp_path / "cache" / "datasets" / entry.filename).read_text() == text


def test_cli_prepare_offline_is_one_line_suggesting_input(tmp_path, monkeypatch, capsys):
    import socket
    import time

    from toygpt import cli

    monkeypatch.setenv("TOYGPT_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:  # a port nobody listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = data.DATASETS["shakespeare"]
    monkeypatch.setitem(data.DATASETS, "shakespeare",
                        data.RemoteText(f"http://127.0.0.1:{port}/input.txt", entry.sha256, entry.filename))
    t0 = time.perf_counter()
    code = cli.main(["prepare", "--dataset", "shakespeare", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "dataset 'shakespeare'" in err and "--input FILE" in err
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "out").exists()


def test_cli_prepare_into_a_file_is_one_line(tmp_path, capsys):
    from toygpt import cli

    (tmp_path / "in.txt").write_text(TEXT)
    (tmp_path / "taken").write_text("a file, not a directory")
    code = cli.main(["prepare", "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "taken")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"cannot write to --out {tmp_path / 'taken'}" in err
    assert (tmp_path / "taken").read_text() == "a file, not a directory"


def test_meta_json_records_the_tokenizer_sha256(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXT)
    meta = prepare(src, "char", tmp_path / "out")
    assert meta["tokenizer_sha256"] == hashlib.sha256((tmp_path / "out" / "tokenizer.json").read_bytes()).hexdigest()


def test_prepare_writes_uint32_when_the_vocabulary_does_not_fit_uint16(tmp_path):
    # 70,000 distinct characters (no surrogates): a char vocabulary past 2**16 ids
    chars = [chr(c) for c in range(0x100, 0x100 + 72_048) if not 0xD800 <= c <= 0xDFFF][:70_000]
    rng = np.random.default_rng(0)
    text = "".join(chars) + "".join(rng.choice(chars, size=5_000))
    src = tmp_path / "wide.txt"
    src.write_text(text, encoding="utf-8")
    meta = prepare(src, "char", tmp_path / "out")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    tokens = np.concatenate([data.load_tokens(tmp_path / "out", s) for s in ("train", "val")])
    assert tokens.dtype == np.uint32 and tokens.max() >= 2**16
    assert tokens.tolist() == CharTokenizer.from_text(text).encode(text)
