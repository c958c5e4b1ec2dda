"""`toygpt prepare`: tokenize a text once into train.bin / val.bin for the trainer.

A corpus (several files, a directory, JSON Lines or Parquet, `--shard-tokens`, or a registered
corpus such as fineweb-edu-10B) goes to shards.py instead: GPT-2 tokens in shards, streamed,
in a pool of processes, resumable. The trainer reads both layouts alike (data.load_tokens).

Like nanoGPT's data/*/prepare.py scripts, folded into one command: the text's first
(1 - val_fraction) of tokens go to train.bin, the rest to val.bin (split where nanoGPT splits),
as uint16 when the vocabulary fits (2 bytes a token) and uint32 otherwise. meta.json records the
tokenizer, the token counts and the source's sha256; the tokenizer itself is saved as
tokenizer.json beside them (its sha256 in meta.json too, so a tokenizer swapped in later is
caught), and the trainer and every checkpoint know how to turn ids back into text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from toygpt.data import DATA_FILES, sha256_of
from toygpt.errors import ToyGPTError
from toygpt.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer


def make_tokenizer(spec: str, text: str) -> Tokenizer:
    """`char`, `gpt2` or `bpe:VOCAB` (train a byte-level BPE of VOCAB ids on the text)."""
    if spec == "char":
        return CharTokenizer.from_text(text)
    if spec == "gpt2":
        return GPT2Tokenizer()
    if spec.startswith("bpe:"):
        try:
            vocab_size = int(spec[4:])
        except ValueError:
            raise ToyGPTError(f"--tokenizer {spec!r}: the vocabulary size after 'bpe:' must be an integer") from None
        if vocab_size <= 256:
            raise ToyGPTError(f"--tokenizer {spec!r}: a byte-level BPE needs more than 256 ids")
        return BPETokenizer.train(text, vocab_size)
    raise ToyGPTError(f"unknown --tokenizer {spec!r}; use char, gpt2 or bpe:VOCAB (e.g. bpe:1024)")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)




def prepare(text_path: str | Path, tokenizer: str, out_dir: str | Path, val_fraction: float = 0.1,
            overwrite: bool = False) -> dict:
    """Tokenize `text_path` into `out_dir`; returns the meta dict written to meta.json.

    Refuses a directory that already holds prepared data unless `overwrite`: a run resumed on
    it would train on other tokens (checkpoints record the meta.json they were trained on, so
    such a resume is refused too).
    """
    text_path, out_dir = Path(text_path), Path(out_dir)
    if not 0.0 < val_fraction < 1.0:
        raise ToyGPTError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    present = [name for name in DATA_FILES if (out_dir / name).exists()]
    if present and not overwrite:
        raise ToyGPTError(f"{out_dir} already holds prepared data ({', '.join(present)}): pass --overwrite "
                          "to replace it, or another --out")
    if not text_path.is_file():
        raise ToyGPTError(f"input file {text_path} not found")
    try:
        text = text_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ToyGPTError(f"input file {text_path} is not UTF-8 text ({e})") from None
    tok = make_tokenizer(tokenizer, text)
    ids = np.array(tok.encode(text), dtype=np.int64)
    # the split point as nanoGPT's prepare.py computes it (Tiny Shakespeare: 1,003,854 / 111,540)
    n_val = len(ids) - int(len(ids) * (1.0 - val_fraction))
    if n_val < 2 or len(ids) - n_val < 2:
        raise ToyGPTError(f"input file {text_path} is too short: {len(ids)} tokens cannot be split "
                          f"into train and val with --val-fraction {val_fraction}")
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
    meta = {
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "train_tokens": int(len(train)),
        "val_tokens": int(len(val)),
        "source": str(text_path),
        "source_sha256": sha256_of(text_path),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # meta.json goes first and last: removed first, a directory with an old meta.json but new
        # token files can never be read; written last, a directory with meta.json is complete
        (out_dir / "meta.json").unlink(missing_ok=True)
        _write_atomic(out_dir / "train.bin", train.astype(dtype).tobytes())
        _write_atomic(out_dir / "val.bin", val.astype(dtype).tobytes())
        tok.save(out_dir / "tokenizer.json")
        # the trainer checks the tokenizer beside the data against this
        meta["tokenizer_sha256"] = sha256_of(out_dir / "tokenizer.json")
        _write_atomic(out_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    except OSError as e:
        raise ToyGPTError(f"cannot write to --out {out_dir} ({e.strerror or e})") from None
    return meta


def _tokenizer_spec(text: str) -> str:
    """--tokenizer's check at parse time, before any file is read: make_tokenizer's own errors
    (a bpe: spec is tried on an empty text, which costs nothing; char and gpt2 need no check)."""
    try:
        if text not in ("char", "gpt2"):
            make_tokenizer(text, "")
    except ToyGPTError as e:
        raise argparse.ArgumentTypeError(str(e).replace(f"--tokenizer {text!r}", repr(text))) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toygpt.flags import between, help_text, parse_float, parse_int, value_type

    fraction = between(0, 1, lo_open=True, hi_open=True)
    from toygpt.data import DATASETS
    from toygpt.shards import SHARD_TOKENS

    shard_tokens = between(2, 2**62)
    workers = between(0, 1024)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="FILE", nargs="+",
                        help="local UTF-8 text file(s); several files, a directory, .jsonl or .parquet "
                             "files make a sharded GPT-2 corpus")
    source.add_argument("--dataset", metavar="NAME",
                        help=f"a registered dataset to download ({', '.join(DATASETS)})")
    parser.add_argument("--tokenizer", type=_tokenizer_spec, default=None,
                        help="char, gpt2 or bpe:VOCAB (a byte-level BPE trained on the text, VOCAB > 256 "
                             "ids, fewer if the text runs out of repeated pairs); default char for one "
                             "text, gpt2 (the only choice) for a sharded corpus")
    parser.add_argument("--shard-tokens", type=value_type(parse_int, shard_tokens), default=None, metavar="N",
                        help=help_text(f"write shards of N tokens, the first for val (default for a corpus: "
                                       f"{SHARD_TOKENS:,})", shard_tokens))
    parser.add_argument("--workers", type=value_type(parse_int, workers), default=None, metavar="N",
                        help=help_text("tokenizing processes for a corpus (default: one per CPU; 0: no pool)",
                                       workers))
    parser.add_argument("--text-field", default="text", metavar="NAME",
                        help="the field (JSON Lines) or column (Parquet) that holds a document's text")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace the data --out already holds")
    parser.add_argument("--val-fraction", type=value_type(parse_float, fraction), default=0.1,
                        help=help_text("share of tokens for val.bin", fraction))


def is_corpus(inputs: list[Path], shard_tokens: int | None) -> bool:
    """Whether the inputs go to shards (shards.py) rather than to one train.bin / val.bin."""
    from toygpt.documents import TEXT_SUFFIXES

    return (shard_tokens is not None or len(inputs) > 1
            or any(p.is_dir() or p.suffix.lower() not in TEXT_SUFFIXES for p in inputs))


def run(args: argparse.Namespace) -> None:
    from toygpt.data import fetch_all

    inputs = [Path(p) for p in args.input] if args.input else fetch_all(args.dataset)
    if is_corpus(inputs, args.shard_tokens):
        from toygpt.shards import SHARD_TOKENS, prepare_shards

        if args.tokenizer not in (None, "gpt2"):
            raise ToyGPTError(f"--tokenizer {args.tokenizer}: a sharded corpus is tokenized with gpt2 "
                              "(char and bpe: need the whole text in memory); pass one text file for those")
        meta = prepare_shards(inputs, args.out, args.shard_tokens or SHARD_TOKENS, workers=args.workers,
                              text_field=args.text_field, overwrite=args.overwrite,
                              progress_bar=sys.stderr.isatty())
        print(f"wrote {args.out}: {len(meta['shards'])} shards, {meta['documents']:,} documents, "
              f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens (gpt2 tokenizer, uint16)")
        return
    args.tokenizer = args.tokenizer or "char"
    text_path = inputs[0]
    meta = prepare(text_path, args.tokenizer, args.out, args.val_fraction, overwrite=args.overwrite)
    print(f"wrote {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']} tokenizer, {meta['vocab_size']} ids, {meta['dtype']})")
    if args.tokenizer.startswith("bpe:") and meta["vocab_size"] < int(args.tokenizer[4:]):
        # BPE merges only pairs that occur at least twice; a short text runs out of them early
        print(f"note: --tokenizer {args.tokenizer} asked for {int(args.tokenizer[4:]):,} ids, but "
              f"{text_path} has repeated pairs for only {meta['vocab_size']:,}: the vocabulary is smaller",
              file=sys.stderr)
