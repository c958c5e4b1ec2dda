"""Rewrite a CUDA source file into C++ that g++ compiles against the emulator (emu.h).

Only what C++ cannot express changes; the kernels and launchers are compiled as written:

- a launch ``kernel<...><<<grid, block[, shared[, stream]]>>>(args)`` becomes
  ``emu::launch<&kernel<...>>(emu::LaunchConfig(grid, block, ...), args)``;
- a declaration ``__shared__ T a[N], b[M];`` becomes ``static T a[N]; emu::shared_memory(&a,
  sizeof(a)); ...``: one copy per kernel (blocks run one at a time), filled with NaN bytes
  when each block first reaches it;
- ``#include "emu.h"`` and a ``#line`` directive go on top; every rewrite keeps the line
  count, so compiler messages name the lines of the .cu file.

Comments and string literals are never rewritten. Not handled (an error, not a silent
miscompile): ``extern __shared__`` (dynamic shared memory).

    python transform.py layernorm.cu layernorm_emu.cpp
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

IDENT = re.compile(r"[A-Za-z_]\w*")
# one declarator of a __shared__ declaration: name and array extents, e.g. "s_dw[8][33]"
DECLARATOR = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*)$")
# the first one, after the type: "float smem[32]" -> type "float", rest "smem[32]"
ALIGNMENT = re.compile(r"\b(?:__align__|alignas)\s*\([^)]*\)")
FIRST_DECLARATOR = re.compile(r"^(?P<type>.*?)(?P<rest>[A-Za-z_]\w*\s*(?:\[[^\]]*\]\s*)*)$", re.S)


class TransformError(ValueError):
    pass


def code_only(src: str) -> str:
    """src with the insides of comments and string/char literals blanked out (same length,
    newlines kept), so that searches for CUDA syntax see code only."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        two = src[i : i + 2]
        if two == "//":
            end = src.find("\n", i)
            end = n if end < 0 else end
        elif two == "/*":
            end = src.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif src[i] == '"' or (src[i] == "'" and not (i and src[i - 1].isalnum())):  # not 1'000
            end = i + 1
            while end < n and src[end] != src[i]:
                end += 2 if src[end] == "\\" else 1
            end += 1
        else:
            i += 1
            continue
        for k in range(i, min(end, n)):
            if out[k] != "\n":
                out[k] = " "
        i = end
    return "".join(out)


def matching(code: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket that closes code[start] (which is open_ch)."""
    depth = 0
    for k in range(start, len(code)):
        if code[k] == open_ch:
            depth += 1
        elif code[k] == close_ch:
            depth -= 1
            if depth == 0:
                return k + 1
    raise TransformError(f"unbalanced {open_ch}{close_ch} at offset {start}")


def line_of(code: str, index: int) -> int:
    return code.count("\n", 0, index) + 1


def kernel_start(code: str, launch: int) -> int:
    """Start of the kernel expression before the '<<<' at `launch`: a (qualified) name with
    optional template arguments, e.g. 'ns::kernel<T, VEC>'."""
    k = launch
    while code[k - 1].isspace():
        k -= 1
    if code[k - 1] == ">":  # template arguments: walk back to the matching '<'
        depth = 0
        while True:
            k -= 1
            depth += {">": 1, "<": -1}.get(code[k], 0)
            if depth == 0:
                break
        while code[k - 1].isspace():
            k -= 1
    while k > 0 and (code[k - 1] == "_" or code[k - 1].isalnum() or code[k - 1] == ":"):
        k -= 1
    if not IDENT.match(code, k):
        raise TransformError(f"line {line_of(code, launch)}: no kernel name before <<<")
    return k


def same_lines(replacement: str, original: str) -> str:
    """replacement, padded with newlines to span as many lines as original."""
    missing = original.count("\n") - replacement.count("\n")
    if missing < 0:
        raise TransformError(f"rewrite adds lines: {original!r}")
    return replacement + "\n" * missing


def rewrite_launches(src: str, code: str) -> list[tuple[int, int, str]]:
    edits = []
    pos = 0
    while (launch := code.find("<<<", pos)) >= 0:
        start = kernel_start(code, launch)
        config_end = code.find(">>>", launch)
        paren = config_end + 3
        while paren < len(code) and code[paren].isspace():
            paren += 1
        if config_end < 0 or paren >= len(code) or code[paren] != "(":
            raise TransformError(f"line {line_of(code, launch)}: expected <<<...>>>(...)")
        end = matching(code, paren, "(", ")")
        kernel = " ".join(src[start:launch].split())
        config = src[launch + 3 : config_end].strip()
        args = src[paren + 1 : end - 1]  # as written, line breaks included
        text = f"emu::launch<&{kernel}>(emu::LaunchConfig({config})"
        text += f", {args.lstrip(' ')})" if args.strip() else ")"
        edits.append((start, end, same_lines(text, src[start:end])))
        pos = end
    return edits


def split_top_level(text: str) -> list[str]:
    """text split at the commas that are not inside (), [] or <>."""
    parts, depth, last = [], 0, 0
    for k, ch in enumerate(text):
        depth += {"(": 1, "[": 1, "<": 1, ")": -1, "]": -1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[last:k])
            last = k + 1
    parts.append(text[last:])
    return parts


def rewrite_shared(src: str, code: str) -> list[tuple[int, int, str]]:
    edits = []
    for match in re.finditer(r"\b__shared__\b", code):
        line = line_of(code, match.start())
        start = match.start()
        before = code[code.rfind("\n", 0, start) + 1 : start]
        if re.search(r"\bextern\b", before):
            raise TransformError(f"line {line}: extern __shared__ (dynamic) is not modelled")
        if written_static := re.search(r"\bstatic\s+$", before):  # "static __shared__ ...": ours
            start -= len(written_static.group())
        end = code.find(";", match.end())
        if end < 0:
            raise TransformError(f"line {line}: no ';' after __shared__")
        declarators = split_top_level(code[match.end() : end])
        # the first piece holds the type too: "float smem[32]" -> type "float", "smem[32]"
        first = FIRST_DECLARATOR.match(declarators[0])
        if first is None or not first["type"].strip():
            raise TransformError(f"line {line}: cannot read the __shared__ declaration")
        declarators[0] = first["rest"]
        # alignment attributes must come first: "__align__(16) static float a[4];"
        alignment = ALIGNMENT.findall(first["type"])
        specifiers = " ".join([*alignment, "static", *ALIGNMENT.sub(" ", first["type"]).split()])
        statements = []
        for declarator in declarators:
            d = DECLARATOR.match(declarator)
            if d is None:
                raise TransformError(f"line {line}: cannot read __shared__ {declarator.strip()!r}")
            name, dims = d["name"], " ".join(d["dims"].split())
            statements.append(f"{specifiers} {name}{dims}; emu::shared_memory(&{name}, sizeof({name}));")
        text = same_lines(" ".join(statements), src[start : end + 1])
        edits.append((start, end + 1, text))
    return edits


def transform(src: str, source_name: str) -> str:
    """The C++ text for CUDA source `src`; source_name goes into the #line directive."""
    code = code_only(src)
    edits = sorted(rewrite_launches(src, code) + rewrite_shared(src, code))
    out, pos = [], 0
    for start, end, text in edits:
        if start < pos:
            raise TransformError(f"line {line_of(code, start)}: overlapping rewrites")
        out += [src[pos:start], text]
        pos = end
    out.append(src[pos:])
    header = f'#include "emu.h"\n#line 1 "{source_name}"\n'
    return header + "".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 2
    source, target = Path(argv[1]), Path(argv[2])
    try:
        text = transform(source.read_text(), str(source.resolve()))
    except TransformError as e:
        print(f"{source}: {e}", file=sys.stderr)
        return 1
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
