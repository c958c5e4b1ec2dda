"""GPT-2's tokenizer (byte-level BPE, 50,257 ids, <|endoftext|> = 50256) through tiktoken.

tiktoken's `get_encoding("gpt2")` downloads GPT-2's `encoder.json` and `vocab.bpe` from OpenAI
on first use. To work offline we build the same `tiktoken.Encoding` from local copies of those
files, looked for in this order:

1. `GPT2Tokenizer(vocab_dir=...)`;
2. the directory named by the environment variable TOYGPT_GPT2_VOCAB;
3. `~/.cache/toygpt/gpt2/`;
4. in a source checkout, the `shared/data/gpt2/` folder beside the repository (the layout the
   test suite uses).

Only when none of these has the files do we ask tiktoken, which needs its cache or the network;
no network becomes one ToyGPTError saying where to put the files, after a few seconds at most.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import tiktoken

from toygpt import net
from toygpt.errors import ToyGPTError
from toygpt.tokenizers.base import Tokenizer, register
from toygpt.tokenizers.gpt2_files import (
    ENDOFTEXT,
    GPT2_FILES,
    GPT2_SPLIT_PATTERN,
    find_gpt2_files,
    read_gpt2_files,
)

ENV_VAR = "TOYGPT_GPT2_VOCAB"
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
_BLOB_HOST = "openaipublic.blob.core.windows.net"
_NETWORK_PROBE_SECONDS = 5.0


def default_vocab_dirs() -> list[Path]:
    """Where GPT2Tokenizer looks for encoder.json + vocab.bpe when no vocab_dir is given."""
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs.append(Path.home() / ".cache" / "toygpt" / "gpt2")
    # a source checkout: packages/toygpt/src/toygpt/tokenizers/gpt2.py -> repository root
    parents = Path(__file__).resolve().parents
    if len(parents) > 5 and (parents[5] / "packages" / "toygpt").is_dir():
        dirs.append(parents[5].parent / "shared" / "data" / "gpt2")
    return dirs


def find_vocab_dir() -> Path | None:
    env = os.environ.get(ENV_VAR)
    if env:
        # set explicitly: a wrong value is an error, not a silent fall-through to the network
        try:
            find_gpt2_files(env)
        except ToyGPTError as e:
            raise ToyGPTError(f"{ENV_VAR} is set, but the {e}") from None
        return Path(env).expanduser()
    for d in default_vocab_dirs():
        if all((d / name).is_file() for name in GPT2_FILES):
            return d
    return None


@lru_cache(maxsize=4)
def encoding_from_files(encoder_json: Path, vocab_bpe: Path) -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding, built from local files instead of downloaded ones."""
    ranks, _ = read_gpt2_files(encoder_json, vocab_bpe)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,  # token bytes -> id; the id is also the merge rank
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def _tiktoken_cache_has_gpt2() -> bool:
    """Whether tiktoken can build `gpt2` from its file cache, i.e. without the network."""
    import hashlib
    import tempfile

    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return False
    urls = [f"https://{_BLOB_HOST}/gpt-2/encodings/main/{name}" for name in GPT2_FILES]
    # tiktoken names a cached file after the sha1 of its URL (tiktoken/load.py)
    return all(os.path.exists(os.path.join(cache_dir, hashlib.sha1(u.encode()).hexdigest())) for u in urls)


def _network_reachable(timeout: float = _NETWORK_PROBE_SECONDS) -> bool:
    return net.reachable(f"https://{_BLOB_HOST}/", timeout)


def _offline_error(reason: str) -> ToyGPTError:
    return ToyGPTError(
        f"cannot load GPT-2's tokenizer: {reason}. Set {ENV_VAR} to a directory holding GPT-2's "
        f"{' and '.join(GPT2_FILES)} (from https://{_BLOB_HOST}/gpt-2/encodings/main/), "
        f"put them in ~/.cache/toygpt/gpt2/, or pass GPT2Tokenizer(vocab_dir=...)"
    )


def tiktoken_gpt2() -> tiktoken.Encoding:
    """tiktoken's own `gpt2` encoding (cache or network), failing fast and clearly offline."""
    if not _tiktoken_cache_has_gpt2() and not _network_reachable():
        raise _offline_error(f"no local files were found and {_BLOB_HOST} cannot be reached")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' ConnectionError, HTTPError, a hash mismatch, ...
        raise _offline_error(f"tiktoken could not fetch the files ({type(e).__name__}: {e})") from e


@register
class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE: `encode` is tiktoken's `encode_ordinary` (special-token strings in
    the text are ordinary text unless `allowed_special=True`)."""

    name = "gpt2"

    def __init__(self, vocab_dir: str | Path | None = None):
        if vocab_dir is None:
            vocab_dir = find_vocab_dir()
        if vocab_dir is not None:
            self.vocab_dir: Path | None = Path(vocab_dir).expanduser().resolve()
            self.encoding = encoding_from_files(*find_gpt2_files(self.vocab_dir))
        else:
            self.vocab_dir = None
            self.encoding = tiktoken_gpt2()
        self.vocab_size = self.encoding.n_vocab  # 50257
        self.eot_id = self.encoding.eot_token  # 50256

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        if allowed_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode_ordinary(text)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(self.check_ids(ids))

    def to_dict(self) -> dict:
        return {"vocab_dir": str(self.vocab_dir) if self.vocab_dir else None}

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> GPT2Tokenizer:
        # the recorded directory may not exist on another machine: then look again as usual
        vocab_dir = d.get("vocab_dir")
        if vocab_dir and all((Path(vocab_dir) / name).is_file() for name in GPT2_FILES):
            return cls(vocab_dir)
        return cls()
