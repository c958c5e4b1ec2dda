"""`toygpt generate`: load a model and stream sampled text to stdout.

    toygpt generate --model gpt2 --prompt "Hello world how are" --max-new-tokens 50 --top-k 40
    toygpt generate --model out/shakespeare-char/ckpt --prompt "ROMEO:" --greedy

The sampling itself is `GPT.generate` (generation.py); this file only parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from toygpt.errors import ToyGPTError


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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def run(args) -> None:
    import torch

    from toygpt.model import GPT

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ToyGPTError(f"--device {args.device!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ToyGPTError(f"--device {args.device}: CUDA is not available")
    if '"toygpt-bigram"' in _read_config(Path(args.model)):
        from toygpt.checkpoint import load_model

        model = load_model(args.model).to(device)  # a `--preset bigram` training checkpoint
    else:
        model = GPT.from_pretrained(args.model).to(device)
    pieces = model.generate(
        prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed, stop=args.stop,
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _read_config(path: Path) -> str:
    """The text of path/config.json when path is a directory holding one, else ''."""
    try:
        return (path / "config.json").read_text()
    except OSError:
        return ""
