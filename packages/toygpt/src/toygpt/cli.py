"""`toygpt` command line: `toygpt {generate,prepare,train} ...`.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and
`run(args)`; this file only wires them up and turns user errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from toygpt.errors import ToyGPTError

# subcommand -> (module, one-line help)
COMMANDS = {
    "generate": ("toygpt.generate_cli", "sample text from a model, streaming to stdout"),
    "prepare": ("toygpt.prepare", "tokenize a text into train.bin / val.bin"),
    "train": ("toygpt.train", "train a model"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default after its help; the epilog (e.g. train's table of presets) as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toygpt", description="GPT-2 in PyTorch on toykernels")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args._run(args)
    except ToyGPTError as e:
        print(f"toygpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
