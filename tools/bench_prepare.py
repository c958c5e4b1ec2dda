"""Benchmark `toygpt prepare`'s tokenizing pool against tiktoken's own batch encoding.

    python tools/bench_prepare.py --processes 2                 # documents cut from Tiny Shakespeare
    python tools/bench_prepare.py --make-corpus /tmp/corpus --gb 2 --files 64

Providers, on the same documents and the same number of cores P:
- `tiktoken`: `encoding.encode_ordinary_batch(docs, num_threads=P)`, tiktoken's own batch rate
  (Rust, P threads, no Python per token);
- `toygpt`: shards.encoded_tasks with P worker processes, the path `toygpt prepare` runs
  (reading ahead, pickling tasks and token arrays between processes, uint16 conversion,
  <|endoftext|> after each document).
Both are checked to give the same tokens before they are timed. The figure of merit is tokens/s
per process (per thread for tiktoken); prepare's goal is at least 80% of tiktoken's.

--make-corpus writes a synthetic corpus for the larger-than-memory run: JSON Lines and text
files of documents made of Tiny Shakespeare's lines drawn at random (seeded), to measure peak
memory and throughput of a full `toygpt prepare` on it (the figures go in the README, not here).
Rows are appended to benchmarks/results/prepare.csv with the CPU, date and commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cpu_model, run_meta, usage_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CSV_PATH = REPO / "benchmarks" / "results" / "prepare.csv"


def make_documents(lines: list[str], n_chars: int, seed: int) -> list[str]:
    """Documents of 200 to 20,000 characters of random lines, n_chars in all."""
    rng = random.Random(seed)
    docs, total = [], 0
    while total < n_chars:
        target = rng.randint(200, 20_000)
        doc, size = [], 0
        while size < target:
            line = rng.choice(lines)
            doc.append(line)
            size += len(line)
        text = "".join(doc)
        docs.append(text)
        total += len(text)
    return docs


def make_corpus(out: Path, gb: float, files: int, lines: list[str], seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    per_file = int(gb * 1e9 / files)
    for i in range(files):
        docs = make_documents(lines, per_file, seed + i)
        if i % 8 == 7:  # some plain text files: one document each
            (out / f"part_{i:04d}.txt").write_text("".join(docs))
        else:
            with open(out / f"part_{i:04d}.jsonl", "w") as f:
                for d in docs:
                    f.write(json.dumps({"text": d}) + "\n")
        print(f"wrote {out / f'part_{i:04d}'} ({i + 1}/{files})", file=sys.stderr)


def bench_tiktoken(encoding, docs: list[str], processes: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = encoding.encode_ordinary_batch(docs, num_threads=processes)
    return time.perf_counter() - t0, sum(len(ids) for ids in out)


def bench_toygpt(docs: list[str], processes: int, vocab_dir) -> tuple[float, list]:
    from toygpt import shards

    pieces = ((0, i, d, True) for i, d in enumerate(docs))
    t0 = time.perf_counter()
    chunks = [tokens for _, tokens, _ in shards.encoded_tasks(pieces, processes, (vocab_dir, ["bench"], "text"))]
    return time.perf_counter() - t0, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="cores for each provider")
    parser.add_argument("--mb", type=float, default=40.0, help="megabytes of text to encode")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions; the best is kept")
    parser.add_argument("--make-corpus", type=Path, default=None, metavar="DIR")
    parser.add_argument("--gb", type=float, default=2.0, help="--make-corpus: size of the corpus")
    parser.add_argument("--files", type=int, default=64, help="--make-corpus: number of files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not SHAKESPEARE.is_file():
        usage_error("bench_prepare", f"Tiny Shakespeare not found at {SHAKESPEARE}")
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)
    if args.make_corpus is not None:
        return make_corpus(args.make_corpus, args.gb, args.files, lines, args.seed)
    if args.processes < 1:
        usage_error("bench_prepare", f"--processes must be at least 1, got {args.processes}")

    import numpy as np
    from toygpt.tokenizers import GPT2Tokenizer

    tok = GPT2Tokenizer()
    vocab_dir = str(tok.vocab_dir) if tok.vocab_dir else None
    docs = make_documents(lines, int(args.mb * 1e6), args.seed)
    # correctness first: the pool's stream is tiktoken's tokens with <|endoftext|> after each
    _, ours = bench_toygpt(docs, args.processes, vocab_dir)
    reference = [t for ids in tok.encoding.encode_ordinary_batch(docs) for t in [*ids, tok.eot_id]]
    if np.concatenate(ours).tolist() != reference:
        sys.exit("bench_prepare: toygpt's tokens differ from tiktoken's")
    results = {}
    for name in ("tiktoken", "toygpt"):
        best = float("inf")
        for _ in range(args.reps):
            seconds = (bench_tiktoken(tok.encoding, docs, args.processes)[0] if name == "tiktoken"
                       else bench_toygpt(docs, args.processes, vocab_dir)[0])
            best = min(best, seconds)
        results[name] = best
    n_tokens = len(reference) - len(docs)  # the text's tokens, without the end-of-text ids
    cpu = cpu_model()
    rows = []
    for name, seconds in results.items():
        rate = n_tokens / seconds
        row = {"provider": name, "processes": args.processes, "mb": args.mb, "tokens": n_tokens,
               "seconds": round(seconds, 3), "tokens_per_s": round(rate),
               "tokens_per_s_per_process": round(rate / args.processes),
               "vs_tiktoken": round(results["tiktoken"] / seconds, 3), **run_meta(cpu=cpu)}
        rows.append(row)
        print(f"{name:9s} {args.processes} processes: {rate / 1e6:6.2f} M tokens/s, "
              f"{rate / args.processes / 1e6:6.2f} M per process ({row['vs_tiktoken']:.0%} of tiktoken)")
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    new = not CSV_PATH.exists()
    with open(CSV_PATH, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
