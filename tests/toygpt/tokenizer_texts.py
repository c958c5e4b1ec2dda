"""Texts that tokenizers get wrong, and GPT-2's pre-tokenizing pattern: what the tokenizer tests
share (loaded by tests/conftest.py as the module `tokenizer_texts`)."""

import random

# GPT-2's split of text into words before BPE (openai/gpt-2's encoder.py, as tiktoken's gpt2)
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TRICKY = [
    "",
    "Hello, world!",
    "don't DON'T I'm you're we've they'll he'd it's 'tis 's",
    "    four spaces then a word   \n\n\n   \t\t tabs",
    " " * 100 + "x" + "\n" * 50,
    "3.14159 1,000,000 2024-01-01 0x1F 12345678901234567890",
    "naïve café Ünïcödé ﬁ ligature",
    "你好，世界。日本語のテキスト한국어 텍스트",
    "emoji 🤗🎉 👩‍👩‍👧 🇫🇷 ✋🏽",
    "Ελληνικά русский עברית العربية हिन्दी",
    "\r\n windows line\r\nends\u00a0nbsp\u200bzero width",
    "<|endoftext|> is ordinary text here",
    "a" * 300,
]


def random_texts(n: int, seed: int) -> list[str]:
    """Fresh strings mixing ASCII, spaces, digits, punctuation, accents, CJK and emoji."""
    rng = random.Random(seed)
    alphabets = ["abcdefghij ", "  \n\t", "0123456789", "'.,;!?-", "éüñçø", "日本語中文", "🤗🎉👍🏽"]
    return ["".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(1, 80)))
            for _ in range(n)]
