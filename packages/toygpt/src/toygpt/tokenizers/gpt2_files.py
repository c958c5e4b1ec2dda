"""Reading GPT-2's original tokenizer files, `encoder.json` and `vocab.bpe`.

OpenAI released GPT-2's byte-level BPE as two files (openai/gpt-2, `src/encoder.py`):
- `vocab.bpe`: a `#version: 0.2` line, then 50,000 merges `left right`, one per line, in the
  order they were learned; a merge's line number is its rank (lower merges first).
- `encoder.json`: token -> id for the 256 single bytes, the 50,000 merge results (ids 256 ...
  50255, in merge order) and `<|endoftext|>` = 50256.

Both spell bytes as printable characters through `bytes_to_unicode` (so that a token never
contains a space or a control character that would break the whitespace-separated merges
file); we undo that mapping and work with raw bytes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from toygpt.errors import ToyGPTError

# GPT-2's pre-split regex (openai/gpt-2 encoder.py; tiktoken's r50k pattern is the same):
# English contractions, letters with an optional leading space, digits likewise, other
# symbols likewise, and whitespace, where `\s+(?!\S)` leaves the last space of a run to the
# following word, so " world" stays one chunk however many spaces precede it.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
GPT2_FILES = ("encoder.json", "vocab.bpe")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves,
    the other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) get characters from U+0100 upward."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    byte_to_char = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in byte_to_char:
            byte_to_char[b] = chr(256 + n)
            n += 1
    return byte_to_char


@lru_cache(maxsize=4)
def read_gpt2_files(encoder_json: Path, vocab_bpe: Path) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]]]:
    """(token bytes -> id for all 50,256 non-special tokens, merges as byte pairs in rank order).

    Checks that the two files agree (merge i produces the token with id 256 + i), because both
    toygpt's BPE and tiktoken rely on the ids being in merge order.
    """
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(token: str, where: Path) -> bytes:
        try:
            return bytes(char_to_byte[c] for c in token)
        except KeyError as e:
            raise ToyGPTError(f"{where}: token {token!r} has a character outside GPT-2's byte map") from e

    for path in (encoder_json, vocab_bpe):
        if not path.is_file():
            raise ToyGPTError(f"GPT-2 tokenizer file not found: {path}")
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToyGPTError(f"{encoder_json} is not valid JSON: {e}") from e
    if not isinstance(encoder, dict):
        raise ToyGPTError(f"{encoder_json} should map tokens to ids, got a {type(encoder).__name__}")
    encoder.pop(ENDOFTEXT, None)  # special, not a BPE token; toygpt adds it back with its id
    ranks = {to_bytes(token, encoder_json): i for token, i in encoder.items()}

    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    if not lines[0].startswith("#version"):
        raise ToyGPTError(f"{vocab_bpe} does not start with a '#version' line; is it GPT-2's vocab.bpe?")
    merges = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ToyGPTError(f"{vocab_bpe}, line {lineno}: expected 'left right', got {line!r}")
        merges.append((to_bytes(parts[0], vocab_bpe), to_bytes(parts[1], vocab_bpe)))

    for rank, (left, right) in enumerate(merges):
        if ranks.get(left + right) != 256 + rank:
            raise ToyGPTError(
                f"{vocab_bpe} and {encoder_json} disagree: merge {rank} ({left!r} + {right!r}) "
                f"should be token id {256 + rank} in {encoder_json.name}, it is {ranks.get(left + right)}"
            )
    if len(ranks) != 256 + len(merges) or sorted(ranks.values()) != list(range(len(ranks))):
        raise ToyGPTError(f"{encoder_json} should hold 256 byte tokens plus one token per merge "
                          f"of {vocab_bpe} with ids 0..{255 + len(merges)}")
    return ranks, merges


def find_gpt2_files(vocab_dir: str | Path) -> tuple[Path, Path]:
    """The (encoder.json, vocab.bpe) paths in `vocab_dir`, or a ToyGPTError naming what is missing."""
    vocab_dir = Path(vocab_dir).expanduser()
    missing = [name for name in GPT2_FILES if not (vocab_dir / name).is_file()]
    if missing:
        raise ToyGPTError(f"GPT-2 vocab directory {vocab_dir} lacks {' and '.join(missing)}")
    return (vocab_dir / "encoder.json").resolve(), (vocab_dir / "vocab.bpe").resolve()
