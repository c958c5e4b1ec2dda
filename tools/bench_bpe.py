"""Benchmark toygpt's BPE: training time, and encode throughput against tiktoken.

    python tools/bench_bpe.py                      # Tiny Shakespeare from ../shared/data
    python tools/bench_bpe.py --text FILE --vocab-size 2048 --repeats 3 --csv out.csv

Providers, each checked for equal output before it is timed (medians of --repeats runs):
- train: `BPETokenizer.train` (incremental pair counts) on the whole text, and against the
  textbook trainer (recount all pairs after every merge) on a slice, same number of merges;
- encode: toygpt's pure-Python encode with an empty chunk cache (cold) and a filled one (warm),
  its `to_tiktoken()` export, and tiktoken's own `gpt2` via GPT2Tokenizer for scale.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import time
from collections import Counter
from pathlib import Path

import regex
from benchlib import cpu_model, git_commit
from toygpt.tokenizers import BPETokenizer, GPT2Tokenizer
from toygpt.tokenizers.bpe import merge_pair
from toygpt.tokenizers.gpt2_files import GPT2_SPLIT_PATTERN

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def textbook_train(text: str, n_merges: int) -> list[tuple[int, int, int]]:
    """Recount every pair of every chunk before each merge (same tie rule as toygpt)."""
    words = [list(chunk.encode()) for chunk in regex.findall(GPT2_SPLIT_PATTERN, text)]
    vocab = [bytes([b]) for b in range(256)]
    merges = []
    while len(merges) < n_merges:
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        if vocab[pair[0]] + vocab[pair[1]] in vocab:
            raise RuntimeError("byte-string collision: the textbook baseline does not handle it")
        new_id = len(vocab)
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        merges.append((*pair, new_id))
        words = [merge_pair(w, pair, new_id) for w in words]
    return merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="training / encoding text")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-chars", type=int, default=100_000,
                        help="slice of the text for the textbook-trainer comparison")
    parser.add_argument("--baseline-merges", type=int, default=100)
    parser.add_argument("--csv", type=Path, default=None, help="append the rows to this CSV")
    args = parser.parse_args()

    text = args.text.read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    rows = []

    def report(provider: str, seconds: float, baseline: float | None = None, note: str = "") -> None:
        ratio = f"{baseline / seconds:8.1f}x" if baseline else "         "
        print(f"{provider:<34} {seconds * 1e3:10.1f} ms  {ratio}  {note}")
        rows.append({"provider": provider, "ms": f"{seconds * 1e3:.1f}",
                     "speedup_vs_baseline": f"{baseline / seconds:.2f}" if baseline else "", "note": note})

    print(f"text: {args.text} ({mb:.2f} MB); medians of {args.repeats} runs")

    # ---- training: incremental vs textbook on a slice (same merges checked first) ----
    piece = text[: args.baseline_chars]
    n = args.baseline_merges
    fast = BPETokenizer.train(piece, 256 + n + 1)
    assert [(a, b, i) for (a, b), i in fast.merges.items()] == textbook_train(piece, n)
    t_textbook = median_seconds(lambda: textbook_train(piece, n), 1)
    report(f"train textbook {n} merges, slice", t_textbook)
    report(f"train toygpt {n} merges, slice",
           median_seconds(lambda: BPETokenizer.train(piece, 256 + n + 1), args.repeats), t_textbook)

    # ---- training on the whole text ----
    t_train = median_seconds(lambda: BPETokenizer.train(text, args.vocab_size), args.repeats)
    report(f"train toygpt vocab {args.vocab_size}, full text", t_train, note="goal < 60 s")
    tok = BPETokenizer.train(text, args.vocab_size)

    # ---- encode throughput (outputs compared first) ----
    exported = tok.to_tiktoken()
    ids = tok.encode(text)
    assert exported.encode_ordinary(text) == ids and tok.decode(ids) == text

    def cold():
        tok._cache.clear()
        tok.encode(text)

    t_cold = median_seconds(cold, args.repeats)
    tok.encode(text)
    t_warm = median_seconds(lambda: tok.encode(text), args.repeats)
    t_tiktoken = median_seconds(lambda: exported.encode_ordinary(text), args.repeats)
    report("encode toygpt, cold cache", t_cold, note=f"{mb / t_cold:.2f} MB/s")
    report("encode toygpt, warm cache", t_warm, t_cold, note=f"{mb / t_warm:.2f} MB/s")
    report("encode to_tiktoken()", t_tiktoken, t_cold, note=f"{mb / t_tiktoken:.2f} MB/s")
    try:
        gpt2 = GPT2Tokenizer()
        t_gpt2 = median_seconds(lambda: gpt2.encoding.encode_ordinary(text), args.repeats)
        report("encode tiktoken gpt2 (50257 ids)", t_gpt2, t_cold, note=f"{mb / t_gpt2:.2f} MB/s")
    except Exception as e:  # no GPT-2 files here: skip that row only
        print(f"(tiktoken gpt2 skipped: {e})")

    if args.csv:
        meta = {"date": datetime.date.today().isoformat(), "commit": git_commit(default=""),
                "cpu": cpu_model(), "text": args.text.name}
        new_file = not args.csv.exists()
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*meta, *rows[0]])
            if new_file:
                writer.writeheader()
            for row in rows:
                writer.writerow({**meta, **row})


if __name__ == "__main__":
    main()
