"""Corpora larger than memory: tokenize documents in a pool of processes, write uint16 shards.

The layout is build-nanogpt's fineweb.py: every document is followed by GPT-2's <|endoftext|>
(as GPT-2 was trained), the token stream is cut into shards of a fixed number of tokens (100M
by default; a document may run on into the next shard), and the first shard is the val split.
meta.json lists the shards with their token counts and sha256s; data.load_tokens reads the
shards of a split as one memory-mapped stream, so the trainer sees the same thing as a
train.bin / val.bin pair. Which files are read, and how (text, JSON Lines, Parquet): see
`documents`.

What keeps memory bounded: the main process reads a few MB of documents ahead of the workers
(`IN_FLIGHT_PER_WORKER` tasks of ~`TASK_CHARS` characters each) and writes each shard to disk as
its tokens arrive.

What makes a killed prepare resumable: a shard is written as `.NAME.partial` and renamed when
complete, then progress.json records it together with the input position where the next shard
starts (file, piece within the file, tokens of that piece already written). A rerun with the
same inputs skips to that position; meta.json is written last, so a directory without it is
never taken for finished data.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from toygpt.documents import Position, expand_inputs, iter_pieces, piece_text
from toygpt.errors import ToyGPTError

SHARD_TOKENS = 100_000_000  # build-nanogpt's shard size: 200 MB of uint16
TASK_CHARS = 1 << 20  # characters of documents per task sent to a worker (and per text piece)
IN_FLIGHT_PER_WORKER = 4  # tasks queued per worker: enough to keep it busy, bounded memory
PROGRESS_FILE = "progress.json"


# ---- workers: pieces -> tokens --------------------------------------------------------------

_worker: dict = {}


def _init_worker(vocab_dir: str | None, files: list[str], text_field: str) -> None:
    from toygpt.tokenizers import GPT2Tokenizer
    from toygpt.tokenizers.gpt2 import encoding_from_files, find_gpt2_files

    tok = GPT2Tokenizer(vocab_dir)
    encoding = tok.encoding
    if vocab_dir is not None:
        # NOTE: an Encoding of this process's own, not the cached one a forked worker inherits
        # or that other threads used: measured slower when shared (tools/bench_prepare.py)
        encoding = encoding_from_files.__wrapped__(*find_gpt2_files(vocab_dir))
    _worker.update(encoding=encoding, eot=tok.eot_id, files=files, text_field=text_field)


def encode_pieces(task: list[tuple[int, int, str | bytes, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """A worker's job: the tokens of a task's pieces back to back (uint16, <|endoftext|> after
    each document's last piece) and each piece's token count."""
    encoding, eot = _worker["encoding"], _worker["eot"]
    arrays, lengths = [], []
    for file_index, piece_index, piece, ends_document in task:
        text = piece_text(piece, _worker["files"][file_index], piece_index, _worker["text_field"])
        if text is None:
            ids = np.empty(0, dtype=np.uint32)
        else:
            try:
                # encode_ordinary's tokens straight into an array, without a list of Python ints
                # (special-token strings in the text are ordinary text, as encode_ordinary has it)
                ids = encoding.encode_to_numpy(text, disallowed_special=())
            except UnicodeEncodeError:  # lone surrogates: encode_ordinary's own repair
                ids = np.array(encoding.encode_ordinary(text), dtype=np.uint32)
            if ends_document:
                ids = np.append(ids, np.uint32(eot))
        arrays.append(ids.astype(np.uint16))
        lengths.append(len(ids))
    tokens = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.uint16)
    return tokens, np.array(lengths, dtype=np.int64)


def _batched(pieces: Iterator, max_chars: int) -> Iterator[list]:
    task, chars = [], 0
    for item in pieces:
        task.append(item)
        chars += len(item[2])
        if chars >= max_chars:
            yield task
            task, chars = [], 0
    if task:
        yield task


def encoded_tasks(pieces: Iterator, workers: int, initargs: tuple) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
    """(task, tokens, lengths) in input order, from a pool of `workers` processes (0: this one).

    Pool.imap would read the whole input ahead of the workers; here at most
    IN_FLIGHT_PER_WORKER tasks per worker are queued, which is what bounds memory.
    """
    tasks = _batched(pieces, TASK_CHARS)
    if workers == 0:
        _init_worker(*initargs)
        for task in tasks:
            yield (task, *encode_pieces(task))
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append((task, pool.apply_async(encode_pieces, (task,))))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                done, result = pending.popleft()
                yield (done, *result.get())
        while pending:
            done, result = pending.popleft()
            yield (done, *result.get())


# ---- the writer: tokens -> shards -----------------------------------------------------------


def shard_name(index: int) -> str:
    return f"{'val' if index == 0 else 'train'}_{index:06d}.bin"


class ShardWriter:
    """Appends tokens to the current shard; a full shard is renamed into place and recorded."""

    def __init__(self, out_dir: Path, shard_tokens: int, progress: dict):
        self.out_dir, self.shard_tokens, self.progress = out_dir, shard_tokens, progress
        self.index = len(progress["shards"])
        self.file = None

    def _open(self) -> None:
        self.partial = self.out_dir / f".{shard_name(self.index)}.partial"
        self.file = open(self.partial, "wb")
        self.filled, self.sha256 = 0, hashlib.sha256()

    def write(self, tokens: np.ndarray, at: Position) -> None:
        """Write `tokens`, the tokens of the piece at `at` from its `at.skip`-th token on."""
        done = 0
        while done < len(tokens):
            if self.file is None:
                self._open()
            take = min(len(tokens) - done, self.shard_tokens - self.filled)
            data = tokens[done : done + take].tobytes()
            self.file.write(data)
            self.sha256.update(data)
            self.filled += take
            done += take
            if self.filled == self.shard_tokens:
                self._close(Position(at.file, at.piece, at.skip + done))

    def _close(self, next_position: Position) -> None:
        """Finish the current shard; `next_position` is where the next one starts."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        name = shard_name(self.index)
        os.replace(self.partial, self.out_dir / name)
        self.progress["shards"].append({"file": name, "split": "val" if self.index == 0 else "train",
                                        "tokens": self.filled, "sha256": self.sha256.hexdigest()})
        self.progress["next"] = vars(next_position)
        _write_json(self.out_dir / PROGRESS_FILE, self.progress)
        self.index += 1

    def finish(self, end: Position) -> None:
        if self.file is not None and self.filled:
            self._close(end)
        elif self.file is not None:
            self.file.close()
            self.partial.unlink(missing_ok=True)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a kill leaves the old file or the new one


# ---- prepare --------------------------------------------------------------------------------


def _settings(files: list[Path], text_field: str, shard_tokens: int, tokenizer: str) -> dict:
    """What a resumed prepare must share with the one it continues."""
    return {"tokenizer": tokenizer, "shard_tokens": shard_tokens, "text_field": text_field,
            "task_chars": TASK_CHARS,  # the text files' piece boundaries depend on it
            "inputs": [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in files]}


def _load_progress(out_dir: Path, settings: dict) -> dict | None:
    """The progress of an earlier prepare of the same inputs into `out_dir`, its shards checked."""
    path = out_dir / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # never written half (it is replaced atomically), but start afresh if so
    if progress.get("settings") != settings:
        raise ToyGPTError(f"{out_dir} holds an unfinished prepare of other inputs or settings "
                          f"({PROGRESS_FILE}): pass --overwrite to start afresh, or another --out")
    for shard in progress["shards"]:
        shard_path = out_dir / shard["file"]
        if not shard_path.is_file() or shard_path.stat().st_size != 2 * shard["tokens"]:
            raise ToyGPTError(f"{shard_path} is missing or damaged; pass --overwrite to start afresh")
    return progress


def prepare_shards(inputs: list[str | Path], out_dir: str | Path, shard_tokens: int = SHARD_TOKENS,
                   workers: int | None = None, text_field: str = "text", overwrite: bool = False,
                   progress_bar: bool = True, vocab_dir: str | Path | None = None,
                   log=print) -> dict:
    """Tokenize `inputs` with GPT-2's tokenizer into shards in `out_dir`; returns meta.json's dict.

    Resumes an unfinished prepare of the same inputs into `out_dir`; refuses finished data
    unless `overwrite`. `workers` processes tokenize (None: one per CPU; 0: this process).
    """
    from toygpt.data import DATA_FILES, sha256_of
    from toygpt.tokenizers import GPT2Tokenizer

    out_dir = Path(out_dir)
    if shard_tokens < 2:
        raise ToyGPTError(f"--shard-tokens must be at least 2, got {shard_tokens}")
    files = expand_inputs(inputs)
    tok = GPT2Tokenizer(vocab_dir)  # fails here, clearly, when GPT-2's files cannot be had
    workers = (os.cpu_count() or 1) if workers is None else workers
    settings = _settings(files, text_field, shard_tokens, tok.name)
    old_shards = sorted(out_dir.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].bin")) if out_dir.is_dir() else []
    present = [name for name in DATA_FILES if (out_dir / name).exists()]
    # a tokenizer.json alone is an unfinished prepare's (it is written just before meta.json)
    finished = [name for name in present if name != "tokenizer.json"]
    if overwrite:
        # meta.json first: a directory is never finished data while its shards are replaced
        for path in [out_dir / n for n in present] + old_shards + [out_dir / PROGRESS_FILE]:
            path.unlink(missing_ok=True)
    elif finished:
        raise ToyGPTError(f"{out_dir} already holds prepared data ({', '.join(finished)}): pass "
                          "--overwrite to replace it, or another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToyGPTError(f"cannot write to --out {out_dir} ({e.strerror or e})") from None
    progress = None if overwrite else _load_progress(out_dir, settings)
    if progress is None:
        progress = {"settings": settings, "shards": [], "next": vars(Position(0, 0)), "documents": 0}
    elif log:
        log(f"resuming {out_dir}: {len(progress['shards'])} shards already written")
    for stale in out_dir.glob(".*.partial"):
        stale.unlink()
    start = Position(**progress["next"])
    writer = ShardWriter(out_dir, shard_tokens, progress)
    bar = None
    if progress_bar:
        from tqdm import tqdm

        bar = tqdm(unit="tok", unit_scale=True, desc="tokenizing", dynamic_ncols=True)
    pieces = iter_pieces(files, text_field, start, chunk_chars=TASK_CHARS)
    initargs = (str(tok.vocab_dir) if tok.vocab_dir else None, [str(f) for f in files], text_field)
    skip, end = start.skip, start
    t0, n_tokens = time.perf_counter(), 0
    for task, tokens, lengths in encoded_tasks(pieces, workers, initargs):
        offset = 0
        for (file_index, piece_index, _, ends_document), length in zip(task, lengths):
            piece_tokens = tokens[offset : offset + length]
            offset += length
            writer.write(piece_tokens[skip:], Position(file_index, piece_index, skip))
            n_tokens += len(piece_tokens) - skip
            skip = 0
            # counted once its end-of-text is written: progress.json, written as a shard fills,
            # then holds the documents wholly before the position it records
            progress["documents"] += int(ends_document and length > 0)
            end = Position(file_index, piece_index + 1)
        if bar is not None:
            bar.update(len(tokens))
            bar.set_postfix(docs=f"{progress['documents']:,}", refresh=False)
    writer.finish(end)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    shards = progress["shards"]
    if len(shards) < 2:
        total = sum(s["tokens"] for s in shards)
        raise ToyGPTError(f"the inputs hold {total:,} tokens: they fill only the val shard of "
                          f"--shard-tokens {shard_tokens:,} and leave none for training; pass a "
                          "smaller --shard-tokens")
    tok.save(out_dir / "tokenizer.json")
    meta = {
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "dtype": "uint16",
        "format": "shards",
        "shard_tokens": shard_tokens,
        "shards": shards,
        "train_tokens": sum(s["tokens"] for s in shards if s["split"] == "train"),
        "val_tokens": sum(s["tokens"] for s in shards if s["split"] == "val"),
        "documents": progress["documents"],
        "text_field": text_field,
        "source": str(files[0]) + (f" and {len(files) - 1} more" if len(files) > 1 else ""),
        "inputs": settings["inputs"],
        "tokenizer_sha256": sha256_of(out_dir / "tokenizer.json"),
    }
    _write_json(out_dir / "meta.json", meta)  # last: from here on the directory is finished data
    (out_dir / PROGRESS_FILE).unlink(missing_ok=True)
    if log:
        log(f"tokenized {n_tokens:,} tokens in {seconds:.1f} s ({n_tokens / max(seconds, 1e-9):,.0f} tokens/s, "
            f"{max(workers, 1)} process{'es' if workers > 1 else ''})")
    return meta
