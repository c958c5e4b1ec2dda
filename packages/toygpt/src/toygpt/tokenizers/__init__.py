"""Tokenizers: text <-> integer ids, one interface for all (see base.py and docs/tokenization.md).

- CharTokenizer: one id per character of a training text (Tiny Shakespeare: 65 ids).
- GPT2Tokenizer: GPT-2's byte-level BPE via tiktoken, offline from encoder.json + vocab.bpe.
- BPETokenizer: byte-level BPE in plain Python, trained here or loaded from GPT-2's files.
"""

from toygpt.tokenizers.base import Tokenizer, load_tokenizer
from toygpt.tokenizers.bpe import BPETokenizer
from toygpt.tokenizers.char import CharTokenizer
from toygpt.tokenizers.gpt2 import GPT2Tokenizer

__all__ = ["Tokenizer", "CharTokenizer", "GPT2Tokenizer", "BPETokenizer", "load_tokenizer"]
