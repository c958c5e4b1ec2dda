"""Datasets: a small download registry, and random batches from memory-mapped token files.

The on-disk format is nanoGPT's: `train.bin` / `val.bin` hold the token ids back to back as
uint16 (uint32 when the vocabulary does not fit), with `meta.json` beside them saying which
(see prepare.py). A corpus larger than memory is cut into shards instead (build-nanogpt's
layout, see shards.py): meta.json lists them, and `load_tokens` maps a split's shards as one
stream (`ShardedTokens`), so that everything below reads either format the same way. A batch is
B windows of block_size + 1 tokens of that stream (a window may span two shards); x is each
window without its last token, y without its first. The windows start at random offsets (as
nanoGPT draws them; windows may overlap and repeat), or, in `sequential` order, one after
another through the stream, each token read once per pass (as build-nanogpt reads its shards).

Reproducibility: the offsets of a batch are a function of (seed, step, micro-step) alone, not of
an RNG that runs along with training. A resumed run draws the batches the uninterrupted run would
have drawn, and a rank of a DDP run draws its share of exactly the global batch a single process
would draw (see `batch_offsets`).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toygpt import net
from toygpt.errors import ToyGPTError

# what a `toygpt prepare` directory holds: any of them there means data a run may be trained on
DATA_FILES = ("meta.json", "train.bin", "val.bin", "tokenizer.json")


@dataclass(frozen=True)
class RemoteText:
    url: str
    sha256: str | None  # None: the publisher gives no checksum to hold the download to
    filename: str


DATASETS: dict[str, RemoteText | tuple[RemoteText, ...]] = {
    "shakespeare": RemoteText(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
    ),
    # build-nanogpt's corpus: FineWeb-Edu's 10B-token sample, 14 Parquet files (~27 GB)
    "fineweb-edu-10B": tuple(
        RemoteText(url=f"https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu/resolve/main/"
                       f"sample/10BT/{i:03d}_00000.parquet",
                   sha256=None, filename=f"fineweb-edu-10B/{i:03d}_00000.parquet")
        for i in range(14)
    ),
}

# the HellaSwag validation set (10,042 examples), as build-nanogpt and llm.c download it
HELLASWAG_VAL = RemoteText(
    url="https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
    sha256=None, filename="hellaswag_val.jsonl",
)


def cache_dir() -> Path:
    """$TOYGPT_CACHE, else ~/.cache/toygpt."""
    return Path(os.environ.get("TOYGPT_CACHE", Path.home() / ".cache" / "toygpt"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reachable(url: str, timeout: float) -> bool:
    """Whether `url`'s host answers within `timeout` seconds, DNS included (file:// URLs: always)."""
    return net.reachable(url, timeout)


def fetch_all(name: str, registry: dict | None = None, timeout: float = 10.0) -> list[Path]:
    """The paths of every file of dataset `name` (one for a text, several for a corpus), each
    as `fetch` gets it: a failed download leaves the files before it in the cache."""
    registry = DATASETS if registry is None else registry
    entries = registry.get(name)
    if isinstance(entries, tuple):
        return [fetch_file(name, entry, timeout) for entry in entries]
    return [fetch(name, registry, timeout)]


def fetch(name: str, registry: dict | None = None, timeout: float = 10.0) -> Path:
    """Path of dataset `name`'s text: from the cache, else downloaded, checked and cached.

    Offline (the host does not answer within `timeout` seconds, DNS included) it fails at once
    with a ToyGPTError that suggests `--input FILE`.
    """
    registry = DATASETS if registry is None else registry
    if name not in registry:
        raise ToyGPTError(f"unknown dataset {name!r}; known: {', '.join(sorted(registry))} "
                          "(or pass --input FILE)")
    entry = registry[name]
    if isinstance(entry, tuple):
        raise ToyGPTError(f"dataset {name!r} is {len(entry)} files: use fetch_all")
    return fetch_file(name, entry, timeout)


def fetch_file(name: str, entry: RemoteText, timeout: float = 10.0,
               instead: str = "--input FILE (e.g. `toygpt prepare --input input.txt ...`)") -> Path:
    """One file of dataset `name`: from the cache, else downloaded, checked and cached; `instead`
    names the flag that takes a local copy."""
    path = cache_dir() / "datasets" / entry.filename
    if path.is_file() and (entry.sha256 is None or sha256_of(path) == entry.sha256):
        return path
    offline = f"offline? download {entry.url} elsewhere and pass it with {instead}"
    if not _reachable(entry.url, timeout):
        raise ToyGPTError(f"could not download dataset {name!r}: {urllib.parse.urlsplit(entry.url).hostname} "
                          f"cannot be reached; {offline}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToyGPTError(f"cannot create the dataset cache {path.parent} ({e}); set TOYGPT_CACHE "
                          "or pass --input FILE") from None
    tmp = path.with_name(path.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise ToyGPTError(f"could not download dataset {name!r} from {entry.url} ({e}); {offline}") from None
    digest = sha256_of(tmp) if entry.sha256 is not None else None
    if digest != entry.sha256:
        tmp.unlink(missing_ok=True)
        raise ToyGPTError(f"dataset {name!r} from {entry.url} has sha256 {digest}, "
                          f"expected {entry.sha256}; pass a trusted copy with --input FILE")
    os.replace(tmp, path)  # atomic: a half-written download never sits at `path`
    return path


def read_meta(data_dir: str | Path) -> dict:
    """meta.json of a prepared data directory, with a clear error when it is not one."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ToyGPTError(f"data directory {data_dir} does not exist (make one with `toygpt prepare`)")
    meta_path = data_dir / "meta.json"
    try:
        return json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ToyGPTError(f"{meta_path} not found: {data_dir} is not a `toygpt prepare` output") from None
    except json.JSONDecodeError as e:
        raise ToyGPTError(f"{meta_path} is not valid JSON ({e})") from None


def data_identity(meta: dict) -> dict:
    """What makes two prepared directories the same data, for a checkpoint to record: meta.json
    without the source's path (the same text, tokenizer and split give the same tokens wherever
    the text lies; the text's and the tokenizer's sha256 are in it). A sharded corpus's inputs
    are left out too: its shards' sha256s say which tokens it holds."""
    return {k: v for k, v in meta.items() if k not in ("source", "inputs")}


class ShardedTokens:
    """The shards of one split as one read-only token sequence: `len()` and slices `[a:b]`,
    which is all `batch_offsets` and `get_batch` ask of a token array. Each shard is memory
    mapped on first use, so a corpus of any size costs only the pages that batches touch."""

    def __init__(self, paths: list[Path], counts: list[int], dtype: np.dtype):
        self.paths, self.dtype = paths, dtype
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # shard i: starts[i]:starts[i+1]
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, i: int) -> np.memmap:
        if i not in self._maps:
            self._maps[i] = np.memmap(self.paths[i], dtype=self.dtype, mode="r")
        return self._maps[i]

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("ShardedTokens takes slices [start:stop] only")
        start, stop, _ = index.indices(len(self))
        if start >= stop:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        i = first
        while start < stop:
            begin, end = int(self.starts[i]), int(self.starts[i + 1])
            take = min(stop, end) - start
            parts.append(self._shard(i)[start - begin : start - begin + take])
            start += take
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        whole = self[0 : len(self)]
        return whole if dtype is None else whole.astype(dtype)


def _load_shards(data_dir: Path, meta: dict, split: str) -> ShardedTokens:
    """The shards meta.json lists for `split`, each file's size checked against its token count."""
    dtype = np.dtype(meta.get("dtype", "uint16"))
    paths, counts = [], []
    for shard in meta["shards"]:
        if shard.get("split") != split:
            continue
        path = data_dir / shard["file"]
        if not path.is_file():
            raise ToyGPTError(f"{path} not found: meta.json lists it as a {split} shard")
        size = path.stat().st_size
        if size != shard["tokens"] * dtype.itemsize:
            raise ToyGPTError(f"{path} holds {size // dtype.itemsize} tokens but meta.json says "
                              f"{shard['tokens']}: it is truncated or from another `toygpt prepare` run")
        paths.append(path)
        counts.append(shard["tokens"])
    if not paths or sum(counts) == 0:
        raise ToyGPTError(f"{data_dir / 'meta.json'} lists no {split} tokens")
    return ShardedTokens(paths, counts, dtype)


def load_tokens(data_dir: str | Path, split: str) -> np.memmap | ShardedTokens:
    """The token ids of `split` ("train" or "val") as a read-only memory map (or, for a sharded
    corpus, the maps of its shards as one sequence), after checking each file's size against
    meta.json's dtype and token count (a truncated file is an error)."""
    meta = read_meta(data_dir)
    if "shards" in meta:
        return _load_shards(Path(data_dir), meta, split)
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise ToyGPTError(f"{path} not found")
    try:
        dtype = np.dtype(meta["dtype"])
    except (KeyError, TypeError) as e:
        raise ToyGPTError(f"{Path(data_dir) / 'meta.json'} has no valid dtype ({e})") from None
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ToyGPTError(f"{path} is truncated: {size} bytes is not a whole number of {dtype.name} tokens")
    expected = meta.get(f"{split}_tokens")
    if expected is not None and size // dtype.itemsize != expected:
        raise ToyGPTError(f"{path} holds {size // dtype.itemsize} tokens but meta.json says {expected}: "
                          "it is truncated or from another `toygpt prepare` run")
    if size == 0:
        raise ToyGPTError(f"{path} holds no tokens")
    return np.memmap(path, dtype=dtype, mode="r")


BATCH_ORDERS = ("random", "sequential")


def batch_offsets(n_tokens: int, block_size: int, batch_size: int, seed: int, step: int,
                  micro_step: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1,
                  stream: int = 0, order: str = "random") -> np.ndarray:
    """Start offsets of one micro-batch for one rank.

    One step's global batch is world_size * grad_accum * batch_size windows. In `random` order
    they are drawn from an RNG seeded with (seed, stream, step), and rank r's micro-step m takes
    row r * grad_accum + m. In `sequential` order the stream is cut into consecutive windows
    (window k starts at k * block_size: its last token is the next one's first), and micro-step m
    of step s on rank r takes the batch_size windows of chunk (s * grad_accum + m) * world_size + r,
    wrapping around at the end of the stream: every rank reads its own windows, none twice in a
    pass (the seed does not enter). Either way one process with grad_accum = world_size * g reads
    the same windows in a step as world_size ranks with g.
    """
    n_windows = n_tokens - block_size  # a window is block_size + 1 tokens (x and the shifted y)
    if n_windows < 1:
        raise ToyGPTError(f"block_size {block_size} is too long for the data: "
                          f"{n_tokens} tokens hold no window of {block_size + 1}")
    if order == "sequential":
        n_consecutive = (n_tokens - 1) // block_size  # windows at 0, T, 2T, ... that fit
        chunk = (step * grad_accum + micro_step) * world_size + rank
        k = chunk * batch_size + np.arange(batch_size, dtype=np.int64)
        return (k % n_consecutive) * block_size
    if order != "random":
        raise ToyGPTError(f"batch order must be one of {', '.join(BATCH_ORDERS)}, got {order!r}")
    rng = np.random.default_rng([seed, stream, step])
    offsets = rng.integers(0, n_windows, size=(world_size * grad_accum, batch_size))
    return offsets[rank * grad_accum + micro_step]


def get_batch(tokens: np.ndarray, offsets: np.ndarray, block_size: int,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (B, block_size) int64 for windows at `offsets`; y is x shifted left by one."""
    windows = np.stack([tokens[i : i + block_size + 1] for i in offsets]).astype(np.int64)
    seq = torch.from_numpy(windows)  # (B, block_size + 1)
    x, y = seq[:, :-1], seq[:, 1:]
    if torch.device(device).type == "cuda":
        # pinned host memory lets the copy run asynchronously with the previous step's kernels
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)
