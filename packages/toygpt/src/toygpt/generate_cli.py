"""`toygpt generate`: load a model and stream sampled text to stdout.

    toygpt generate --model gpt2 --prompt "Hello world how are" --max-new-tokens 50 --top-k 40
    toygpt generate --model out/shakespeare-char/ckpt --prompt "ROMEO:" --greedy

The sampling itself is `GPT.generate` (generation.py); this file only parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="hub name (gpt2 ... gpt2-xl), transformers directory, or toygpt checkpoint directory")
    parser.add_argument("--prompt", default="", help="text to continue ('' starts from end-of-text)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, mps")


def run(args) -> None:
    from toygpt.checkpoint import load_model
    from toygpt.model import GPT
    from toygpt.train import resolve_device

    device = resolve_device(args.device)
    if (Path(args.model) / "config.json").is_file():
        # a local directory: load_model reads its model_type (a toygpt GPT or bigram checkpoint,
        # or a transformers GPT-2 directory)
        model = load_model(args.model).to(device)
    else:
        model = GPT.from_pretrained(args.model).to(device)  # a hub name, or an error naming it
    pieces = model.generate(
        prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed, stop=args.stop,
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
