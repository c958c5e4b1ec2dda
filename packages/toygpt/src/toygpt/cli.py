"""`toygpt` command line: `toygpt {generate,prepare,train} ...`.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and
`run(args)`; this file only wires them up. Errors go through flags.ErrorGuard: a bad flag or
file is one line on stderr and exit code 2, a crash one line naming its traceback log, exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from toygpt.flags import ErrorGuard, FlagParser

# subcommand -> (module, one-line help)
COMMANDS = {
    "attention": ("toygpt.attention_view", "draw a prompt's attention probabilities, every layer and head"),
    "eval": ("toygpt.evaluate", "score a model: HellaSwag accuracy, or the loss on a prepared dataset"),
    "generate": ("toygpt.generate_cli", "sample text from a model, streaming to stdout"),
    "prepare": ("toygpt.prepare", "tokenize a text into train.bin / val.bin"),
    "train": ("toygpt.train", "train a model"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default after its help; the epilog (e.g. train's table of presets) as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="toygpt", description="GPT-2 in PyTorch on toykernels")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    guard = ErrorGuard("toygpt")
    with guard:
        args = build_parser().parse_args(argv)
        guard.prog = f"toygpt {args.command}"
        args._run(args)
    return guard.exit_code


if __name__ == "__main__":
    sys.exit(main())
