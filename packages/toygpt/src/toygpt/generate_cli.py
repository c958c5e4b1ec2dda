"""`toygpt generate`: load a model and stream sampled text to stdout.

    toygpt generate --model gpt2 --prompt "Hello world how are" --max-new-tokens 50 --top-k 40
    toygpt generate --model out/shakespeare-char/ckpt --prompt "ROMEO:" --greedy

The sampling itself is `GPT.generate` (generation.py); this file only parses and prints.
"""

from __future__ import annotations

import sys

from toygpt import attention_view, checkpoint, quantize
from toygpt.errors import ToyGPTError
from toygpt.generation import GPT2_VOCAB_SIZES

# the most tokens one call may ask for: far beyond any use, and small enough that buffers of
# this length (the sampled ids, a row of the KV cache per step) never fail to allocate
MAX_NEW_TOKENS = 1_000_000


def add_arguments(parser) -> None:
    # The sampling options' ranges are GPT.generate's own checks (generation.py), named after its
    # parameters; here only what a command line adds: numbers that parse, and a bound on length.
    from toygpt.flags import between, help_text, parse_float, parse_int, value_type

    new_tokens = between(0, MAX_NEW_TOKENS)
    parser.add_argument("--model", required=True,
                        help="hub name (gpt2 ... gpt2-xl), transformers directory, or toygpt checkpoint directory")
    parser.add_argument("--prompt", default="", help="text to continue ('' starts from end-of-text)")
    parser.add_argument("--max-new-tokens", type=value_type(parse_int, new_tokens), default=256, metavar="N",
                        help=help_text("tokens to sample after the prompt", new_tokens))
    parser.add_argument("--temperature", type=parse_float, default=1.0,
                        help="divide the logits by this before sampling, >= 0; 0 means greedy")
    parser.add_argument("--top-k", type=value_type(parse_int, optional=True), default=None, metavar="K",
                        help="sample only from the K >= 1 most likely tokens (None: from all)")
    parser.add_argument("--top-p", type=value_type(parse_float, optional=True), default=None, metavar="P",
                        help="nucleus sampling: only from the most likely tokens whose probabilities "
                             "add up to P, in (0, 1] (None: from all)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=parse_int, default=None, help="for reproducible sampling")
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--quantize", choices=quantize.CHOICES, default=None,
                        help="decode with int8 weights on the CPU (toygpt.quantize; None: float)")
    attention_view.add_probs_arguments(parser)  # --show-probs [K], --out PNG


def run(args) -> None:
    from toygpt.runtime import resolve_device

    model = checkpoint.load_named(args.model, resolve_device(args.device))
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if getattr(model, "tokenizer", None) is None and vocab_size not in GPT2_VOCAB_SIZES:
        # the API's advice (pass tokenizer=...) means nothing on a command line
        raise ToyGPTError(f"--model {args.model}: it has no tokenizer.json and its vocab_size {vocab_size} "
                          "is not GPT-2's; put the tokenizer.json of the data it was trained on beside it")
    if args.quantize:
        model = quantize.quantize(model, args.quantize)
    if args.show_probs is not None:
        return attention_view.show_probs(model, args)
    pieces = model.generate(
        prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed, stop=args.stop,
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
