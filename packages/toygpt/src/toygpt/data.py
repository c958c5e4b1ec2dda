"""Datasets: a small download registry, and random batches from a memory-mapped token file.

The on-disk format is nanoGPT's: `train.bin` / `val.bin` hold the token ids back to back as
uint16 (uint32 when the vocabulary does not fit), with `meta.json` beside them saying which
(see prepare.py). A batch is B windows of block_size + 1 tokens at random offsets; x is each
window without its last token, y without its first.

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


@dataclass(frozen=True)
class RemoteText:
    url: str
    sha256: str
    filename: str


DATASETS = {
    "shakespeare": RemoteText(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
    ),
}


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


def fetch(name: str, registry: dict[str, RemoteText] | None = None, timeout: float = 10.0) -> Path:
    """Path of dataset `name`'s text: from the cache, else downloaded, checked and cached.

    Offline (the host does not answer within `timeout` seconds, DNS included) it fails at once
    with a ToyGPTError that suggests `--input FILE`.
    """
    registry = DATASETS if registry is None else registry
    if name not in registry:
        raise ToyGPTError(f"unknown dataset {name!r}; known: {', '.join(sorted(registry))} "
                          "(or pass --input FILE)")
    entry = registry[name]
    path = cache_dir() / "datasets" / entry.filename
    if path.is_file() and sha256_of(path) == entry.sha256:
        return path
    offline = (f"offline? download {entry.url} elsewhere and pass it with --input FILE "
               f"(e.g. `toygpt prepare --input input.txt ...`)")
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
    digest = sha256_of(tmp)
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
    the text lies; the text's and the tokenizer's sha256 are in it)."""
    return {k: v for k, v in meta.items() if k != "source"}


def load_tokens(data_dir: str | Path, split: str) -> np.memmap:
    """The token ids of `split` ("train" or "val") as a read-only memory map, after checking the
    file's size against meta.json's dtype and token count (a truncated file is an error)."""
    meta = read_meta(data_dir)
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


def batch_offsets(n_tokens: int, block_size: int, batch_size: int, seed: int, step: int,
                  micro_step: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1,
                  stream: int = 0) -> np.ndarray:
    """Start offsets of one micro-batch for one rank.

    One step's global batch is world_size * grad_accum * batch_size windows drawn from an RNG
    seeded with (seed, stream, step); rank r's micro-step m takes row r * grad_accum + m. So one
    process with grad_accum = world_size * g draws the same windows as world_size ranks with g.
    """
    n_windows = n_tokens - block_size  # a window is block_size + 1 tokens (x and the shifted y)
    if n_windows < 1:
        raise ToyGPTError(f"block_size {block_size} is too long for the data: "
                          f"{n_tokens} tokens hold no window of {block_size + 1}")
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
