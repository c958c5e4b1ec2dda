"""Rewrite a CUDA source file into C++ that g++ compiles against the emulator (emu.h).

Only what C++ cannot express changes; the kernels and launchers are compiled as written:

- a launch ``kernel<...><<<grid, block[, shared[, stream]]>>>(args)`` becomes
  ``emu::launch<&kernel<...>>(emu::LaunchConfig(grid, block, ...), args)``;
- a declaration ``__shared__ T a[N], b[M];`` becomes ``static T a[N]; emu::shared_memory(&a,
  sizeof(a)); ...``: one copy per kernel (blocks run one at a time), filled with NaN bytes
  when each block first reaches it;
- ``extern __shared__ __align__(A) T name[];`` (dynamic shared memory) becomes
  ``T* const name = static_cast<T*>(emu::dynamic_shared_memory(A));``;
- inline PTX ``asm volatile("text" : "=r"(x), "+f"(y) : "r"(z), "l"(p), "n"(N))`` becomes
  ``emu::ptx("text", {emu::ptx_out("=r", x), emu::ptx_out("+f", y), emu::ptx_in("r", z), ...})``:
  the emulator reads the instruction from the text at run time (operands in the order of
  their %n numbers: outputs, then inputs; clobbers are dropped);
- ``#include "emu.h"`` and a ``#line`` directive go on top; every rewrite keeps the line
  count, so compiler messages name the lines of the .cu file.

Comments and string literals are never rewritten. Not handled (an error, not a silent
miscompile): named asm operands (``[name] "r"(x)``), ``asm goto``, an ``extern __shared__``
declaration that is not one unsized array.

    python transform.py kernels.cu kernels_emu.cpp
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


def rewrite_dynamic_shared(src: str, code: str, match: re.Match, line: int) -> tuple[int, int, str]:
    """``extern __shared__ __align__(A) T name[];`` -> a pointer to the launch's dynamic shared
    memory (see emu::dynamic_shared_memory)."""
    start = code.rfind("extern", 0, match.start())
    end = code.find(";", match.end())
    if end < 0:
        raise TransformError(f"line {line}: no ';' after extern __shared__")
    declaration = code[start : end + 1]
    decl = re.fullmatch(
        r"extern\s+(?P<a1>(?:__align__|alignas)\s*\(\s*(?P<n1>\d+)\s*\)\s*)?__shared__\s+"
        r"(?P<a2>(?:__align__|alignas)\s*\(\s*(?P<n2>\d+)\s*\)\s*)?(?P<type>[\w\s:<>,*]+?)\s*"
        r"(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;",
        declaration,
        re.S,
    )
    if decl is None:
        raise TransformError(f"line {line}: cannot read the extern __shared__ declaration")
    alignment = decl["n1"] or decl["n2"] or "16"
    type_ = " ".join(decl["type"].split())
    memory = f"emu::dynamic_shared_memory({alignment})"
    text = f"{type_}* const {decl['name']} = static_cast<{type_}*>({memory});"
    return start, end + 1, same_lines(text, src[start : end + 1])


def rewrite_shared(src: str, code: str) -> list[tuple[int, int, str]]:
    edits = []
    for match in re.finditer(r"\b__shared__\b", code):
        line = line_of(code, match.start())
        start = match.start()
        before = code[code.rfind("\n", 0, start) + 1 : start]
        if re.search(r"\bextern\b", before):
            edits.append(rewrite_dynamic_shared(src, code, match, line))
            continue
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


def split_outside_brackets(text: str, sep: str) -> list[tuple[int, str]]:
    """(offset, piece) of text split at the `sep` characters outside (), [] and {} (text is
    code_only: no string literal hides a bracket or separator)."""
    parts, depth, last = [], 0, 0
    for k, ch in enumerate(text):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append((last, text[last:k]))
            last = k + 1
    parts.append((last, text[last:]))
    return parts


# one asm operand: [name] "constraint"(expression)
ASM_OPERAND = re.compile(
    r'\s*(?P<name>\[\s*\w+\s*\]\s*)?(?P<constraint>"[^"]*")\s*\((?P<expr>.*)\)\s*', re.S
)


def rewrite_asm(src: str, code: str) -> list[tuple[int, int, str]]:
    """asm volatile("text" : outputs : inputs : clobbers) -> emu::ptx("text", {operands})."""
    edits = []
    for match in re.finditer(r"\b(?:asm|__asm__|__asm)\b", code):
        line = line_of(code, match.start())
        k = match.end()
        while True:  # qualifiers
            while k < len(code) and code[k].isspace():
                k += 1
            qualifier = IDENT.match(code, k)
            if qualifier is None:
                break
            if qualifier.group() == "goto":
                raise TransformError(f"line {line}: asm goto is not modelled")
            if qualifier.group() not in ("volatile", "__volatile__", "inline"):
                raise TransformError(f"line {line}: unexpected {qualifier.group()!r} after asm")
            k = qualifier.end()
        if k >= len(code) or code[k] != "(":
            raise TransformError(f"line {line}: expected asm(...)")
        end = matching(code, k, "(", ")")
        inner_start = k + 1
        sections = split_outside_brackets(code[inner_start : end - 1], ":")
        if len(sections) > 4:
            raise TransformError(f"line {line}: asm goto labels are not modelled")
        offset, _ = sections[0]
        template = src[inner_start + offset : inner_start + offset + len(sections[0][1])].strip()
        if not template.startswith('"'):
            raise TransformError(f"line {line}: the asm text must be a string literal")
        template = template.replace("\n", " ")  # between literals only: literals hold no newline
        operands = []
        for role, (offset, text) in zip(("out", "in"), sections[1:3]):
            if not text.strip():
                continue
            for piece_offset, piece in split_outside_brackets(text, ","):
                at = inner_start + offset + piece_offset
                written = src[at : at + len(piece)]
                operand = ASM_OPERAND.fullmatch(written)
                if operand is None or operand["name"]:
                    what = written.strip()
                    raise TransformError(f"line {line}: cannot read asm operand {what!r}")
                expr = " ".join(operand["expr"].split())
                operands.append(f"emu::ptx_{role}({operand['constraint']}, {expr})")
        text = f"emu::ptx({template}, {{{', '.join(operands)}}})"
        edits.append((match.start(), end, same_lines(text, src[match.start() : end])))
    return edits


def transform(src: str, source_name: str) -> str:
    """The C++ text for CUDA source `src`; source_name goes into the #line directive."""
    code = code_only(src)
    edits = sorted(rewrite_launches(src, code) + rewrite_shared(src, code) + rewrite_asm(src, code))
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
