"""The one tokenizer interface, and saving / loading any tokenizer as one JSON file.

Every tokenizer turns text into a list of integer ids and back:

    encode(text) -> list[int]          decode(ids) -> str        decode_bytes(ids) -> bytes
    vocab_size: int                    eot_id: int | None        name: str
    save(path)                         load_tokenizer(path) / TheClass.load(path)

`decode_bytes` exists for streaming: a byte-level tokenizer can split one multi-byte UTF-8
character over two tokens, so a caller printing tokens as they come feeds these bytes to an
incremental decoder (`codecs.getincrementaldecoder("utf-8")`) instead of decoding each token alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from toygpt.errors import ToyGPTError

# "type" field of a saved tokenizer -> its class; filled by @register below
TOKENIZER_TYPES: dict[str, type[Tokenizer]] = {}


def register(cls: type[Tokenizer]) -> type[Tokenizer]:
    TOKENIZER_TYPES[cls.name] = cls
    return cls


class Tokenizer:
    """Base class: subclasses implement `encode`, `decode_bytes`, `to_dict` and `from_dict`."""

    name: str = "base"  # the "type" written by save()
    vocab_size: int
    eot_id: int | None = None  # end-of-text id, None when the tokenizer has none

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Ids of `text`; special-token strings in it (e.g. "<|endoftext|>") become their
        special ids only when allowed_special is True, otherwise they are ordinary text."""
        raise NotImplementedError

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        # errors="replace": ids cut in the middle of a character (a sample stopped early)
        # give U+FFFD rather than an exception, as tiktoken and Hugging Face do
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """The ids as a list of Python ints; a ToyGPTError naming the first one outside the vocab."""
        ids = [int(i) for i in ids]  # also accepts numpy / torch integers
        for position, i in enumerate(ids):
            if not 0 <= i < self.vocab_size:
                raise ToyGPTError(
                    f"token id {i} (at position {position}) is outside the {self.name} "
                    f"vocabulary of {self.vocab_size} ids (0..{self.vocab_size - 1})"
                )
        return ids

    # ---- saving and loading: one JSON file with a "type" field ----

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> Tokenizer:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        path = Path(path)
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"type": self.name, **self.to_dict()}, f, ensure_ascii=False)
        except OSError as e:
            raise ToyGPTError(f"cannot write tokenizer file {path}: {e.strerror}") from e

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        tokenizer = load_tokenizer(path)
        if cls is not Tokenizer and not isinstance(tokenizer, cls):
            raise ToyGPTError(f"{path} holds a {tokenizer.name!r} tokenizer, not {cls.name!r}")
        return tokenizer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read back any tokenizer written by `save` (a directory means its `tokenizer.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ToyGPTError(f"tokenizer file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToyGPTError(f"tokenizer file {path} is not valid JSON: {e}") from e
    if not isinstance(d, dict) or "type" not in d:
        raise ToyGPTError(f"tokenizer file {path} has no \"type\" field; was it written by save()?")
    kind = d.pop("type")
    if kind not in TOKENIZER_TYPES:
        raise ToyGPTError(
            f"tokenizer file {path} has unknown type {kind!r}; known: {sorted(TOKENIZER_TYPES)}"
        )
    try:
        return TOKENIZER_TYPES[kind].from_dict(d, path)
    except ToyGPTError as e:
        if str(path) in str(e):
            raise
        raise ToyGPTError(f"tokenizer file {path}: {e}") from e
    except (KeyError, TypeError, ValueError, IndexError) as e:
        # a hand-edited or truncated file: say which file, not just the Python error
        raise ToyGPTError(f"tokenizer file {path} is corrupt ({type(e).__name__}: {e})") from e
