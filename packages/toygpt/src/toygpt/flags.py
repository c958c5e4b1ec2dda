"""Command-line flags declared once, and the one error handler of every toygpt command.

A flag is a dataclass field made with `flag(default, help, check=...)`: its type comes from the
field's annotation, its range from `check`, its help and default from the field itself. Then:

- `add_flags(parser, cls)` turns each field into an argparse flag whose value is parsed and
  checked as it is read, so a bad value stops the command before it touches a file;
- `check_fields(obj)` runs the same checks on a config built in Python (a `__post_init__`);
- `FlagParser` turns every argparse error into `UsageError`, one line instead of the usage text;
- `ErrorGuard` is the top-level handler: expected errors (ToyGPTError, a file that cannot be
  read or written) become one line on stderr and exit code 2; anything else is a bug: one line
  naming a log file that holds the traceback, and exit code 1.

The same pattern as llm.c's train_gpt2.py (argparse built from one list of settings), with the
ranges next to the defaults so that `-h`, the CLI and the Python API cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

from toygpt.errors import ToyGPTError

# exit codes: 2 for a bad input (argparse's own convention), 1 for a crash that is our bug
EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


class UsageError(ToyGPTError):
    """A bad command line, found by argparse; `prog` is the (sub)command that rejected it."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


@dataclasses.dataclass(frozen=True)
class Check:
    """A range a flag's value must be in: `ok(value)`, and `text` to say it ("at least 1")."""

    ok: Callable[[Any], bool]
    text: str

    def error(self, value) -> str | None:
        """None when `value` passes, else why not, e.g. "must be at least 1, got 0"."""
        return None if self.ok(value) else f"must be {self.text}, got {value!r}"


def at_least(lo) -> Check:
    return Check(lambda v: v >= lo, f"at least {lo}")


def greater_than(lo) -> Check:
    return Check(lambda v: v > lo, f"greater than {lo}")


def between(lo, hi, *, lo_open: bool = False, hi_open: bool = False, text: str | None = None) -> Check:
    """lo <= v <= hi, each end open or closed; `text` replaces the "in [lo, hi]" wording."""
    def ok(v):
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    interval = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Check(ok, text or interval)


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, "one of " + ", ".join(choices))


def flag(default, help: str, check: Check | None = None, **argparse_kw):
    """A dataclass field that is also a command-line flag (help, check and metavar in metadata)."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check, **argparse_kw})


# ---- parsing --------------------------------------------------------------------------------


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parse_float(text: str) -> float:
    # NOTE: float() accepts "nan" and "inf"; no setting here means either, and a NaN slips
    # through every range check (all comparisons with it are False), so they stop here
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


_PARSERS = {"int": parse_int, "float": parse_float, "str": str}


def value_type(parse: Callable[[str], Any], check: Check | None = None, optional: bool = False):
    """An argparse `type=`: parse the text ('none' -> None when optional), then check the value."""
    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        value = parse(text)
        why = check.error(value) if check is not None else None
        if why:
            raise argparse.ArgumentTypeError(why)
        return value
    return convert


def help_text(help: str, check: Check | None) -> str:
    return f"{help}; must be {check.text}" if check is not None else help


class _Store(argparse.Action):
    """argparse's store, remembering which flags were given (for settings that a preset fills)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace._given = getattr(namespace, "_given", set()) | {self.dest}


class _StoreBool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace._given = getattr(namespace, "_given", set()) | {self.dest}


def _kind(field: dataclasses.Field) -> tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool', optional) from an annotation such as 'int | None'."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    parts = [p.strip() for p in annotation.split("|")]
    return parts[0], "None" in parts[1:]


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of dataclass `cls`: --n-layer, --learning-rate, --resume/--no-resume, ...
    Flags that were given are listed in the namespace's `_given`."""
    for f in dataclasses.fields(cls):
        name = "--" + f.name.replace("_", "-")
        kind, optional = _kind(f)
        check = f.metadata.get("check")
        if kind == "bool":
            parser.add_argument(name, action=_StoreBool, default=f.default, help=f.metadata["help"])
            continue
        parser.add_argument(name, action=_Store, type=value_type(_PARSERS[kind], check, optional),
                            default=f.default, help=help_text(f.metadata["help"], check),
                            metavar=f.metadata.get("metavar", kind.upper()))


def check_fields(obj) -> None:
    """The flags' checks on a dataclass built in Python: ToyGPTError naming the first bad field."""
    for f in dataclasses.fields(obj):
        value, (kind, optional) = getattr(obj, f.name), _kind(f)
        if value is None and optional:
            continue
        expected = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(kind)
        if expected and (not isinstance(value, expected) or (kind != "bool" and isinstance(value, bool))):
            raise ToyGPTError(f"{type(obj).__name__}.{f.name} must be {kind}, got {value!r}")
        if kind == "float" and not math.isfinite(value):
            raise ToyGPTError(f"{type(obj).__name__}.{f.name} must be a finite number, got {value!r}")
        check = f.metadata.get("check")
        why = check.error(value) if check is not None else None
        if why:
            raise ToyGPTError(f"{type(obj).__name__}.{f.name} {why}")


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: UsageError instead of the usage text and exit.
    Subparsers made by add_subparsers are FlagParsers too (argparse uses the parent's class)."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


# ---- the top-level handler ------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def write_traceback_log(prog: str) -> str | None:
    """The current exception's traceback in a new file under the temp dir; its path, or None."""
    try:
        folder = os.path.join(tempfile.gettempdir(), "toygpt-logs")
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=prog.replace(" ", "-") + "-", suffix=".log", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(f"{prog} {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
        return path
    except OSError:
        return None


class ErrorGuard:
    """`with guard:` around a command's body; `guard.exit_code` afterwards.

    UsageError -> `prog: error: argument --x: ... (see prog -h)`, exit 2.
    ToyGPTError, OSError -> `prog: error: ...`, exit 2 (the message names the value or file).
    KeyboardInterrupt -> exit 130. Anything else -> one line naming a log with the traceback, exit 1.
    SystemExit (-h, --help) passes through.
    """

    def __init__(self, prog: str):
        self.prog = prog  # the command's name in messages; a subcommand may refine it
        self.exit_code = 0

    def __enter__(self) -> ErrorGuard:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, SystemExit):
            return False
        if isinstance(exc, KeyboardInterrupt):
            self.exit_code = EXIT_INTERRUPTED
            return True
        if isinstance(exc, UsageError):
            message = f"{exc.prog}: error: {exc} (see {exc.prog} -h)"
            self.exit_code = EXIT_BAD_INPUT
        elif isinstance(exc, ToyGPTError):
            message = f"{self.prog}: error: {exc}"
            self.exit_code = EXIT_BAD_INPUT
        elif isinstance(exc, OSError):
            # a file the code did not expect to be unreadable/unwritable: say which, no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            message = f"{self.prog}: error: {where}{exc.strerror or exc}"
            self.exit_code = EXIT_BAD_INPUT
        else:
            log = write_traceback_log(self.prog)
            where = f"the traceback is in {log}" if log else "no traceback log could be written"
            message = f"{self.prog}: internal error: {type(exc).__name__}: {exc} ({where})"
            self.exit_code = EXIT_INTERNAL_ERROR
        print(_one_line(message), file=sys.stderr)
        return True
