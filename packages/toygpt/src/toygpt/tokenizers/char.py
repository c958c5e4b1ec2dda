"""A character-level tokenizer: one id per distinct character of a training text.

This is MyGPT's `create_vocabulary` and nanoGPT's `data/shakespeare_char/prepare.py`: the
vocabulary is the sorted set of characters in the text, so Tiny Shakespeare gives 65 ids
('\\n' = 0, ' ' = 1, ...). Small vocab, long sequences; no end-of-text token.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from toygpt.errors import ToyGPTError
from toygpt.tokenizers.base import Tokenizer, register


@register
class CharTokenizer(Tokenizer):
    name = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = list(chars)  # id -> character
        for c in self.chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ToyGPTError(f"CharTokenizer vocabulary entries must be single characters, got {c!r}")
        if len(set(self.chars)) != len(self.chars):
            raise ToyGPTError("CharTokenizer vocabulary has a repeated character")
        if not self.chars:  # a model with 0 ids cannot be built, and nothing can be encoded
            raise ToyGPTError("CharTokenizer vocabulary is empty: it needs at least one character")
        self.stoi = {c: i for i, c in enumerate(self.chars)}  # character -> id
        self.vocab_size = len(self.chars)
        self.eot_id = None

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The sorted unique characters of `text` (sorted so the ids do not depend on text order)."""
        if not text:
            raise ToyGPTError("cannot build a character vocabulary from an empty text")
        return cls(sorted(set(text)))

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        # allowed_special is accepted for a uniform interface: this vocabulary has no specials
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            # slow path only to name the culprit: the first character not in the vocabulary
            position, c = next((p, c) for p, c in enumerate(text) if c not in stoi)
            raise ToyGPTError(
                f"character {c!r} (U+{ord(c):04X}) at position {position} is not in this "
                f"CharTokenizer's vocabulary of {self.vocab_size} characters"
            ) from None

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in self.check_ids(ids))

    def to_dict(self) -> dict:
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> CharTokenizer:
        chars = d["chars"]
        if not isinstance(chars, str):
            raise ToyGPTError(f"tokenizer file {path}: \"chars\" must be a string")
        return cls(chars)
