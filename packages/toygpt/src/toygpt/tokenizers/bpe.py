"""Byte-level BPE in plain Python: train it on a text, or load GPT-2's own merges into it.

The algorithm is GPT-2's (openai/gpt-2 `src/encoder.py`; Karpathy's minbpe is the classroom
version), explained step by step in docs/tokenization.md:

- Text is first cut by a regex (GPT-2's by default) into chunks: words with their leading
  space, numbers, punctuation runs, whitespace. Merges never cross a chunk boundary, so " dog"
  and " dog." share the token for " dog".
- Each chunk is UTF-8 bytes; every byte is a token, so any text can be encoded (no unknowns).
- Training repeatedly finds the most frequent adjacent pair of tokens and merges it into a new
  token, until the vocabulary has the requested size. The order of merges is their rank.
- Encoding a chunk repeatedly merges the adjacent pair with the lowest rank, until no adjacent
  pair is a learned merge.

Ids: the 256 byte tokens, then one id per merge in rank order (so a merge's id is also its
rank), then the special tokens. For GPT-2's files the byte tokens keep GPT-2's ids (`!` = 0).

`to_tiktoken()` hands the same vocabulary to tiktoken's Rust BPE for fast encoding.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex
import tiktoken

from toygpt.errors import ToyGPTError
from toygpt.tokenizers.base import Tokenizer, register
from toygpt.tokenizers.gpt2_files import (
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    find_gpt2_files,
    read_gpt2_files,
)

Pair = tuple[int, int]
_CACHE_LIMIT = 200_000  # chunks remembered by encode before the cache starts afresh


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """`ids` with every occurrence of `pair` replaced by `new_id`, scanning left to right
    (so (a, a) in [a, a, a] gives [aa, a])."""
    out = []
    i, n = 0, len(ids)
    first, second = pair
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _special_splitter(special_tokens: Iterable[str]) -> regex.Pattern | None:
    specials = sorted(special_tokens, key=len, reverse=True)  # longest first: prefixes lose
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


@register
class BPETokenizer(Tokenizer):
    name = "bpe"

    def __init__(
        self,
        merges: Sequence[tuple[int, int, int]],
        special_tokens: dict[str, int] | None = None,
        byte_ids: Sequence[int] | None = None,
        pattern: str = GPT2_SPLIT_PATTERN,
    ):
        """merges: (left id, right id, new id) in rank order; byte_ids[b]: the id of byte b
        (default: b itself); special_tokens: string -> id. Ids must be 0..vocab_size-1, each once."""
        byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        special_tokens = dict(special_tokens or {})
        if len(byte_ids) != 256:
            raise ToyGPTError(f"byte_ids must give an id for each of the 256 bytes, got {len(byte_ids)}")
        self.vocab_size = 256 + len(merges) + len(special_tokens)

        # id -> bytes, filled in id order so that every merge refers to tokens defined before it
        vocab: list[bytes | None] = [None] * self.vocab_size
        for b, i in enumerate(byte_ids):
            self._check_new_id(i, vocab, f"byte {b}")
            vocab[i] = bytes([b])
        self.merges: dict[Pair, int] = {}  # (left id, right id) -> new id; dict order = rank
        previous = -1
        for rank, (left, right, new_id) in enumerate(merges):
            self._check_new_id(new_id, vocab, f"merge {rank}")
            if new_id <= previous:
                raise ToyGPTError(f"merge {rank} has id {new_id}, not above the previous merge's "
                                  f"{previous}: merge ids must increase with rank")
            if not (0 <= left < self.vocab_size and 0 <= right < self.vocab_size) \
                    or vocab[left] is None or vocab[right] is None:
                raise ToyGPTError(f"merge {rank} ({left}, {right}) uses an id not defined before it")
            vocab[new_id] = vocab[left] + vocab[right]
            self.merges[(left, right)] = new_id
            previous = new_id
        for s, i in special_tokens.items():
            if not isinstance(s, str) or not s:
                raise ToyGPTError(f"special tokens must be non-empty strings, got {s!r}")
            self._check_new_id(i, vocab, f"special token {s!r}")
            vocab[i] = s.encode("utf-8")

        self.vocab: list[bytes] = vocab  # id -> the bytes it stands for
        self.byte_ids = byte_ids
        self.special_tokens = special_tokens
        self.eot_id = special_tokens.get(ENDOFTEXT)
        self.pattern = pattern
        try:
            self._split = regex.compile(pattern)
        except regex.error as e:
            raise ToyGPTError(f"invalid pre-split pattern {pattern!r}: {e}") from e
        self._special_split = _special_splitter(special_tokens)
        self._cache: dict[str, list[int]] = {}  # chunk -> ids; text repeats words a lot

    def _check_new_id(self, i: int, vocab: list, what: str) -> None:
        if not isinstance(i, int) or not 0 <= i < self.vocab_size:
            raise ToyGPTError(f"{what} has id {i!r}, outside 0..{self.vocab_size - 1}")
        if vocab[i] is not None:
            raise ToyGPTError(f"{what} has id {i}, which is already taken by {vocab[i]!r}")

    # ---- encoding and decoding ----

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Ids of `text`. Special-token strings in it are ordinary text unless allowed_special."""
        if not allowed_special or self._special_split is None:
            return self.encode_ordinary(text)
        ids = []
        # re.split with a capture group: odd-numbered pieces are the special tokens themselves
        for k, piece in enumerate(self._special_split.split(text)):
            if k % 2:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in self._split.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                chunk_ids = cache[chunk] = self.encode_chunk(chunk.encode("utf-8"))
            ids.extend(chunk_ids)
        return ids

    def encode_chunk(self, chunk: bytes) -> list[int]:
        """BPE on one pre-split chunk: merge the lowest-rank adjacent pair until none is a merge."""
        ids = [self.byte_ids[b] for b in chunk]
        merges = self.merges
        no_merge = self.vocab_size  # above every merge id
        while len(ids) >= 2:
            # a merge's id is its rank, so the lowest id is the merge learned first
            pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, no_merge))
            new_id = merges.get(pair)
            if new_id is None:
                break
            ids = merge_pair(ids, pair, new_id)
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        vocab = self.vocab
        return b"".join(vocab[i] for i in self.check_ids(ids))

    # ---- training ----

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        pattern: str = GPT2_SPLIT_PATTERN,
        verbose: bool = False,
    ) -> BPETokenizer:
        """Learn merges from `text` until there are `vocab_size` ids (256 bytes + merges +
        special tokens), or fewer if the text runs out of pairs first.

        Counting every pair again after each merge would cost (merges x text length). Instead we
        count each distinct chunk once with its frequency, keep pair -> count and pair -> the
        chunks holding it, and after a merge update only the chunks that contained the merged
        pair. A heap with lazy invalidation finds the most frequent pair; ties go to the
        smallest (left id, right id), so training is deterministic.
        """
        special_tokens = list(special_tokens)
        if len(set(special_tokens)) != len(special_tokens):
            raise ToyGPTError(f"special tokens repeat: {special_tokens}")
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ToyGPTError(
                f"vocab_size={vocab_size!r} is too small: a byte-level BPE needs at least 256 byte "
                f"tokens + {len(special_tokens)} special tokens = {256 + len(special_tokens)}"
            )
        n_merges = vocab_size - 256 - len(special_tokens)
        t0 = time.perf_counter()
        split = regex.compile(pattern)

        # 1. distinct chunks and how often each occurs; special-token strings in the training
        # text are cut out, so no merge ever spans one
        special_split = _special_splitter(special_tokens)
        pieces = special_split.split(text)[::2] if special_split else [text]
        chunk_counts = Counter(chunk for piece in pieces for chunk in split.findall(piece))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each chunk as ids
        freqs = list(chunk_counts.values())

        # 2. pair -> total count, pair -> the chunks (by index) in which it occurs
        pair_counts: dict[Pair, int] = defaultdict(int)
        pair_words: dict[Pair, set[int]] = defaultdict(set)
        for w, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                pair_words[pair].add(w)
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        vocab = [bytes([b]) for b in range(256)]
        known = set(vocab)
        merges: list[tuple[int, int, int]] = []
        while len(merges) < n_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg_count:
                continue  # stale entry: the count changed since it was pushed
            new_bytes = vocab[pair[0]] + vocab[pair[1]]
            if new_bytes in known:
                # NOTE: two different pairs can spell the same bytes ((a, bc) after (ab, c)).
                # We keep one id per byte string, so that tiktoken (which ranks byte strings,
                # not pairs) can take this vocabulary; this pair is simply never merged.
                del pair_counts[pair]
                continue
            new_id = len(vocab)
            vocab.append(new_bytes)
            known.add(new_bytes)
            merges.append((pair[0], pair[1], new_id))

            # 3. redo only the chunks holding the pair: subtract their old pairs, add the new
            changed = set()
            for w in pair_words.pop(pair):
                word, freq = words[w], freqs[w]
                new_word = merge_pair(word, pair, new_id)
                old_pairs, new_pairs = list(zip(word, word[1:])), list(zip(new_word, new_word[1:]))
                for p in old_pairs:
                    pair_counts[p] -= freq
                for p in new_pairs:
                    pair_counts[p] += freq
                for p in set(old_pairs) - set(new_pairs) - {pair}:
                    pair_words[p].discard(w)
                for p in new_pairs:
                    pair_words[p].add(w)
                changed.update(old_pairs)
                changed.update(new_pairs)
                words[w] = new_word
            del pair_counts[pair]
            changed.discard(pair)
            for p in changed:
                count = pair_counts[p]
                if count > 0:
                    heapq.heappush(heap, (-count, p))
                else:
                    del pair_counts[p]
                    pair_words.pop(p, None)
            if verbose and len(merges) % 256 == 0:
                print(f"merge {len(merges)}/{n_merges}: {new_bytes!r} "
                      f"({-neg_count} occurrences, {time.perf_counter() - t0:.1f}s)")

        specials = {s: 256 + len(merges) + k for k, s in enumerate(special_tokens)}
        return cls(merges, specials, pattern=pattern)

    # ---- GPT-2's files and tiktoken ----

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path | None = None) -> BPETokenizer:
        """GPT-2's own vocabulary and merges (the files of openai/gpt-2) in this BPE code.
        `from_gpt2_files(directory)` takes both files from one directory."""
        if vocab_bpe is None:
            encoder_json, vocab_bpe = find_gpt2_files(encoder_json)
        ranks, merges = read_gpt2_files(Path(encoder_json).resolve(), Path(vocab_bpe).resolve())
        byte_ids = [ranks[bytes([b])] for b in range(256)]
        gpt2_merges = [(ranks[left], ranks[right], ranks[left + right]) for left, right in merges]
        return cls(gpt2_merges, {ENDOFTEXT: len(ranks)}, byte_ids=byte_ids, pattern=GPT2_SPLIT_PATTERN)

    def to_tiktoken(self) -> tiktoken.Encoding:
        """The same tokenizer as a tiktoken Encoding (Rust), for fast encoding of large texts.

        tiktoken ranks byte strings rather than pairs: at each step it merges the adjacent pair
        whose concatenation has the lowest id. That is our rule whenever the merged pair is the
        one that made the token, which holds for GPT-2 and for our training (the tests compare
        the two on Tiny Shakespeare and on awkward strings).
        """
        n_regular = self.vocab_size - len(self.special_tokens)
        mergeable_ranks = {self.vocab[i]: i for i in range(self.vocab_size) if i not in self._special_ids}
        if len(mergeable_ranks) != n_regular:
            raise ToyGPTError("this BPE vocabulary spells two ids with the same bytes; tiktoken cannot hold it")
        return tiktoken.Encoding(
            name=f"toygpt-bpe-{self.vocab_size}",
            pat_str=self.pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=self.vocab_size,
        )

    @property
    def _special_ids(self) -> set[int]:
        return set(self.special_tokens.values())

    # ---- saving and loading ----

    def to_dict(self) -> dict:
        merges = [[left, right, new_id] for (left, right), new_id in self.merges.items()]
        return {"pattern": self.pattern, "byte_ids": self.byte_ids, "merges": merges,
                "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> BPETokenizer:
        merges = [tuple(m) for m in d["merges"]]
        if any(len(m) != 3 for m in merges):
            raise ToyGPTError(f"tokenizer file {path}: each merge must be [left id, right id, new id]")
        try:
            return cls(merges, d["special_tokens"], byte_ids=d["byte_ids"], pattern=d["pattern"])
        except ToyGPTError as e:
            raise ToyGPTError(f"tokenizer file {path} is corrupt: {e}") from e
