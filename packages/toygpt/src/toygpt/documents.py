"""How input files become documents: which files a corpus is, and their text piece by piece.

Inputs are what public corpora ship as: plain text (one document per file, as OpenWebText's
.txt files), JSON Lines with a text field, and Parquet with a text column (FineWeb; needs
pyarrow, the `parquet` extra). `iter_pieces` walks them in order as pieces: a chunk of a text
file, a JSON Lines line (parsed by the tokenizing worker, with `piece_text`), a Parquet row's
text. A text file of any size is read in pieces cut where GPT-2's pre-tokenizer splits anyway
(see `safe_split`), so its tokens are those of the whole file.

A `Position` (file, piece, tokens of that piece already written) is where a resumed prepare
starts again; `shards` writes the tokens and records the positions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toygpt.errors import ToyGPTError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """The input files: each given file, and a directory's files with a known suffix (sorted)."""
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known)
            if not found:
                raise ToyGPTError(f"input directory {path} holds no {', '.join(known)} files")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in known:
                raise ToyGPTError(f"input file {path}: unknown kind; name it {', '.join(known)}")
            files.append(path)
        else:
            raise ToyGPTError(f"input file {path} not found")
    return files


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "text" if suffix in TEXT_SUFFIXES else "jsonl" if suffix in JSONL_SUFFIXES else "parquet"


def safe_split(text: str, limit: int) -> int:
    """An index i <= limit (and > 0) where encoding text[:i] and text[i:] apart gives the tokens of
    encoding text whole, or 0 if there is none in text[limit // 2 : limit].

    NOTE: GPT-2's pre-tokenizer (the regex in tokenizers/gpt2_files.py) never puts a non-space
    character and a following space in one piece, nor a newline and a following non-space
    character; so a space or a non-space character that follows a non-space character, or that
    single newline, starts a new piece whatever comes before it. Runs of whitespace are not
    cut: `\\s+(?!\\S)` looks ahead, so their split depends on what follows.
    """
    lo = limit // 2
    for sep, offset in ((" ", 0), ("\n", 1)):
        i = text.rfind(sep, lo, limit)
        while i > 0:
            # the separator alone between two non-space characters; cut before a space, after a newline
            if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
                return i + offset
            i = text.rfind(sep, lo, i)
    return 0


def _text_pieces(path: Path, chunk_chars: int) -> Iterator[tuple[str, bool]]:
    """(piece, ends the document) of one text file, one document, read chunk_chars at a time."""
    buffer = ""
    with open(path, encoding="utf-8") as f:
        while True:
            try:
                more = f.read(chunk_chars)
            except UnicodeDecodeError as e:
                raise ToyGPTError(f"input file {path} is not UTF-8 text ({e})") from None
            buffer += more
            if not more:
                yield buffer, True
                return
            while len(buffer) > chunk_chars:
                cut = safe_split(buffer, chunk_chars)
                if cut == 0:
                    break  # no split point yet: read on (memory grows only for such text)
                yield buffer[:cut], False
                buffer = buffer[cut:]


def _jsonl_pieces(path: Path) -> Iterator[bytes]:
    """The raw lines of a JSON Lines file (the workers parse them); blank lines are b""."""
    with open(path, "rb") as f:
        for line in f:
            yield line.strip()


def _parquet_pieces(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ToyGPTError(f"input file {path}: reading Parquet needs pyarrow "
                          "(pip install pyarrow)") from None
    try:
        parquet = pq.ParquetFile(path)
        if text_field not in parquet.schema_arrow.names:
            raise ToyGPTError(f"input file {path} has no column {text_field!r} (columns: "
                              f"{', '.join(parquet.schema_arrow.names)}); pass --text-field")
        for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
            yield from batch.column(0).to_pylist()
    except OSError as e:
        raise ToyGPTError(f"input file {path} is not readable Parquet ({e})") from None


@dataclass(frozen=True)
class Position:
    """Where the token stream stands: piece `piece` of input file `file`, of whose tokens (its
    end-of-text included) the first `skip` are written already."""

    file: int
    piece: int
    skip: int = 0


def iter_pieces(files: list[Path], text_field: str, start: Position = Position(0, 0), *,
                chunk_chars: int) -> Iterator[tuple[int, int, str | bytes, bool]]:
    """(file index, piece index, piece, ends a document) from `start` on. A piece is a text
    chunk (str, about `chunk_chars` long), a JSON Lines line (bytes, parsed by the worker) or a
    Parquet row's text. Pieces before `start` are read but not yielded, which costs no tokenizing."""
    for file_index in range(start.file, len(files)):
        path = files[file_index]
        kind = _kind(path)
        if kind == "text":
            pieces = _text_pieces(path, chunk_chars)
        elif kind == "jsonl":
            pieces = ((line, True) for line in _jsonl_pieces(path))
        else:
            pieces = ((text, True) for text in _parquet_pieces(path, text_field))
        first = start.piece if file_index == start.file else 0
        for piece_index, (piece, ends_document) in enumerate(pieces):
            if piece_index >= first:
                yield file_index, piece_index, piece, ends_document


def piece_text(piece: str | bytes, file: str, piece_index: int, text_field: str) -> str | None:
    """A piece's text; None for a blank JSON Lines line (no document). `file` and `piece_index`
    name the line in errors."""
    if isinstance(piece, str):
        return piece
    if not piece:  # a blank line of a JSON Lines file: no document
        return None
    where = f"input file {file} line {piece_index + 1}"
    try:
        record = json.loads(piece)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToyGPTError(f"{where} is not JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ToyGPTError(f"{where} has no text field {text_field!r} (pass --text-field)")
    return record[text_field]
