"""The emulator's generic driver: building an emulator binary from a .cu file and a harness,
running cases on it in parallel processes and reading what the harness reports, and the command
line. It knows no op: an op's cases module (beside the op's tests, e.g.
tests/kernels/layernorm/emulator_cases.py) passes its .cu file, its harness and its cases. See
README.md.

A cases module defines its Case (a HarnessCase), its case sets, a build() that calls build()
here with its harness, and main(argv), which the command line runs:

    python tools/cuda_emu/emulate.py tests/kernels/layernorm/emulator_cases.py [its flags]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ENGINE_UNITS = ("emu.cpp",)  # the engine's sources, always linked
PTX_UNIT = "ptx.cpp"  # linked when the .cu file has inline PTX

CXXFLAGS = ["-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas"]
if platform.machine() in ("x86_64", "AMD64"):
    CXXFLAGS.append("-fcf-protection=none")  # no shadow stack: the fibers switch stacks by longjmp
# The kernel source only: a GPU faults on a load or store misaligned for its type (a 16-byte
# pack at an 8-byte address); x86 mostly does not, so such an access traps here (SIGILL).
KERNEL_CXXFLAGS = ["-fsanitize=alignment", "-fsanitize-undefined-trap-on-error"]
FAULT_STATUS = 3  # the harness's exit status after a memory fault (emu::catch_memory_faults)


class BuildError(RuntimeError):
    pass


def find_cxx() -> str | None:
    """$CXX, else g++ on the PATH."""
    return shutil.which(os.environ.get("CXX") or "g++")


def build(
    source: Path,
    harness: Path,
    out_dir: Path,
    cxx: str = "g++",
    *,
    name: str | None = None,
    include_dirs: Sequence[Path] = (),
    kernel_flags: Sequence[str] = (),
    runtime_from: Path | None = None,
) -> Path:
    """Transforms `source` (a .cu file), compiles it with the engine (emu.cpp, and ptx.cpp when
    the source has inline PTX) and `harness` (a .cpp file with main()), and links
    out_dir/<name> (default: <source stem>_emu), which it returns.

    include_dirs: folders the source and the harness include from, after the shim, this folder
    and the source's own folder (which holds the headers a .cu file includes).
    kernel_flags: compiler flags for the kernel source, after KERNEL_CXXFLAGS.
    runtime_from: an earlier build's folder whose engine and harness objects are linked instead
    of compiling them again (they do not depend on the .cu file).
    """
    name = name or f"{source.stem}_emu"
    out_dir.mkdir(parents=True, exist_ok=True)
    transformed = out_dir / f"{name}.cpp"
    cmd = [sys.executable, str(HERE / "transform.py"), str(source), str(transformed)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"transform.py failed:\n{result.stderr}")

    runtime = [HERE / unit for unit in ENGINE_UNITS]
    if "emu::ptx(" in transformed.read_text():
        runtime.append(HERE / PTX_UNIT)
    runtime.append(harness.resolve())
    stems = [unit.stem for unit in [transformed, *runtime]]
    if len(set(stems)) != len(stems):
        raise BuildError(f"two units would build the same object: {stems}")
    units = {transformed: out_dir / f"{name}.o"}  # what to compile: unit -> object
    objects = [units[transformed]]
    for unit in runtime:
        earlier = runtime_from / f"{unit.stem}.o" if runtime_from else None
        if earlier is not None and earlier.is_file():
            objects.append(earlier)
        else:
            units[unit] = out_dir / f"{unit.stem}.o"
            objects.append(units[unit])
    folders = [HERE / "shim", HERE, source.resolve().parent, *map(Path, include_dirs)]
    includes = [word for folder in folders for word in ("-I", str(folder))]
    jobs = {}  # the units compile side by side
    for unit, target in units.items():
        flags = CXXFLAGS + (KERNEL_CXXFLAGS + list(kernel_flags) if unit == transformed else [])
        cmd = [cxx, *flags, *includes, "-c", str(unit), "-o", str(target)]
        jobs[unit] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for unit, job in jobs.items():
        output = job.communicate()[0]
        if job.returncode != 0:
            raise BuildError(f"{cxx} failed on {unit.name}:\n{output[-6000:]}")
    binary = out_dir / name
    cmd = [cxx, *map(str, objects), "-o", str(binary)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"link failed:\n{result.stderr[-6000:]}")
    return binary


# ---- planted bugs: a change to a copy of the source, anchored on its code ----
# C/C++ comments and string/char literals, in the order a scanner meets them: a "//" inside a
# string is no comment, a quote inside a comment no string.
_COMMENT_OR_LITERAL = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.S
)
# a token of code: a string or char literal, a word (identifier, number), one other character
_TOKEN = re.compile(r"\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'|\w+|\S")


def blank_comments(text: str) -> str:
    """`text` with every comment replaced by spaces (newlines kept): the same length, so a
    match in it is a match at the same place in `text`."""

    def blank(m: re.Match) -> str:
        s = m.group()
        return re.sub(r"[^\n]", " ", s) if s[0] == "/" else s

    return _COMMENT_OR_LITERAL.sub(blank, text)


def code_pattern(code: str) -> re.Pattern:
    """A pattern that matches the tokens of `code` (its comments dropped) with any whitespace
    between them, and none inside them: "a < b" matches "a<b" but "int x" never "intx"."""
    tokens = _TOKEN.findall(blank_comments(code))
    if not tokens:
        raise ValueError(f"no code in the anchor {code!r}")
    parts = [r"\b" + t + r"\b" if re.fullmatch(r"\w+", t) else re.escape(t) for t in tokens]
    return re.compile(r"\s*".join(parts))


def code_spans(text: str, code: str) -> list[tuple[int, int]]:
    """Where the tokens of `code` occur in `text`, comments and whitespace aside."""
    return [m.span() for m in code_pattern(code).finditer(blank_comments(text))]


def planted_copy(source: Path, anchor: str, new: str, folder: Path) -> Path:
    """Copies the folder of `source` (the .cu file and its headers) to folder/csrc, replaces the
    code that `anchor` names (its tokens, whatever the comments and whitespace: see
    code_spans) with `new` in the copy of `source`, and returns that copy. A ValueError when
    the anchor does not occur exactly once (the source has changed since the bug was written)."""
    text = source.read_text()
    spans = code_spans(text, anchor)
    if len(spans) != 1:
        raise ValueError(f"the anchor occurs {len(spans)} times in {source.name}, not once: {anchor!r}")
    (start, end), = spans
    shutil.copytree(source.parent, folder / "csrc")
    copy = folder / "csrc" / source.name
    copy.write_text(text[:start] + new + text[end:])
    return copy


class HarnessCase:
    """The base of a cases module's Case (a frozen dataclass with a `name` property, unique within a
    run, and a `cost()`: its rough emulation time, to share the cases out evenly)."""

    def line(self) -> str:
        """The harness's input line; the seed is the name's CRC, so a case always sees the same
        inputs and schedule, whatever runs before it."""
        fields = {
            k: int(v) if isinstance(v, bool) else v for k, v in dataclasses.asdict(self).items()
        }
        words = [f"name={self.name}", *(f"{k}={v}" for k, v in fields.items())]
        return " ".join([*words, f"seed={zlib.crc32(self.name.encode())}"])


def parse_case(case_type: type, words: str):
    """A case_type from "dtype=f16 C=768 fused=1 ..." (its fields; bools as 0 or 1)."""
    types = {f.name: f.type for f in dataclasses.fields(case_type)}  # names: "str", "int", "bool"
    fields = {}
    for word in words.split():
        key, _, value = word.partition("=")
        if key not in types:
            raise SystemExit(f"unknown case field {key!r}; fields: {', '.join(types)}")
        convert = {"str": str, "int": int, "bool": lambda v: v not in ("0", "false")}[types[key]]
        fields[key] = convert(value)
    return case_type(**fields)


@dataclasses.dataclass
class Result:
    cases: int = 0  # cases that ran
    failures: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> first problem
    emu_errors: int = 0
    launches: dict[str, int] = dataclasses.field(default_factory=dict)  # kernel -> launches
    stderr: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        counts = f"{len(self.failures)} failed, {self.emu_errors} emulator errors"
        lines = [f"{self.cases} cases, {counts}, {self.seconds:.1f} s"]
        lines += [f"FAIL {name}: {problem}" for name, problem in self.failures.items()]
        return "\n".join(lines)

    def report(self) -> str:
        """The summary and the end of the harnesses' stderr (a failed test's message)."""
        return self.summary() + "\n" + self.stderr[-3000:]

    def never_launched(self) -> list[str]:
        """The kernel instantiations in the binary that no case launched."""
        return sorted(kernel for kernel, count in self.launches.items() if count == 0)

    def passed(self, cases: int) -> bool:
        """All `cases` ran, none failed and the emulator reported no error."""
        return not self.failures and self.emu_errors == 0 and self.cases == cases


def _run_group(binary: Path, cases: list, flags: Sequence[str], timeout: float | None) -> Result:
    """Runs the cases on one harness process; after a crash, the rest on a fresh one."""
    result = Result()
    cmd = [str(binary), *flags, "--report-launches"]
    while cases:
        lines = "".join(c.line() + "\n" for c in cases)
        proc = subprocess.run(cmd, input=lines, capture_output=True, text=True, timeout=timeout)
        result.stderr += proc.stderr
        reported = set()
        done = False
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "ok":
                reported.add(rest.split(" ")[0])
            elif word == "FAIL":
                name, _, problem = rest.partition(": ")
                reported.add(name)
                result.failures[name] = problem
            elif word == "done":
                done = True
                fields = dict(kv.split("=") for kv in rest.split())
                result.emu_errors += int(fields["emu_errors"])
            elif word == "launched":
                count, _, kernel = rest.partition(" ")
                result.launches[kernel] = result.launches.get(kernel, 0) + int(count)
        result.cases += len(reported)
        if done:
            break
        # A crash. Exit status 3: the fault handler has printed the FAIL line of the case it
        # happened in (the last line); otherwise the case after the last line is to blame.
        # The cases after it go to a fresh process.
        last = max((k for k, c in enumerate(cases) if c.name in reported), default=-1)
        crashed = last if proc.returncode == FAULT_STATUS and last >= 0 else last + 1
        if crashed == last + 1:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            name = cases[crashed].name if crashed < len(cases) else "(after the last case)"
            result.failures[name] = f"the harness crashed (exit status {proc.returncode}): {tail}"
            result.cases += crashed < len(cases)
        cases = cases[crashed + 1 :]
    return result


def run(
    binary: Path,
    cases: list,
    jobs: int = 2,
    timeout: float | None = None,
    flags: Sequence[str] = (),
) -> Result:
    """Runs the cases on `jobs` harness processes side by side (the harness's command-line
    flags: `flags` and --report-launches) and merges what they report."""
    start = time.perf_counter()
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"cases with the same name: {sorted(duplicates)}")
    groups: list[list] = [[] for _ in range(max(1, min(jobs, len(cases))))]
    loads = [0] * len(groups)
    for case in sorted(cases, key=lambda c: c.cost(), reverse=True):  # biggest first, to the
        k = loads.index(min(loads))  # least loaded group
        groups[k].append(case)
        loads[k] += case.cost()
    with ThreadPoolExecutor(len(groups)) as pool:
        parts = list(pool.map(lambda g: _run_group(binary, g, flags, timeout), groups))
    merged = Result(seconds=time.perf_counter() - start)
    for part in parts:
        merged.cases += part.cases
        merged.emu_errors += part.emu_errors
        merged.stderr += part.stderr
        for kernel, count in part.launches.items():
            merged.launches[kernel] = merged.launches.get(kernel, 0) + count
    for name in names:  # in case order
        for part in parts:
            if name in part.failures:
                merged.failures[name] = part.failures[name]
    return merged


def argument_parser(doc: str, default_source: Path, case_example: str) -> argparse.ArgumentParser:
    """A cases module's command line: --source, --jobs, --case, --build-dir."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--source", type=Path, default=default_source, help=f"the {default_source.name} to emulate")
    add("--jobs", type=int, default=os.cpu_count() or 2, help="harness processes side by side")
    add("--case", action="append", help=f"only this case (repeatable): '{case_example}'")
    add("--build-dir", type=Path, help="build here (and keep it) instead of a temporary folder")
    return parser


def main(
    args: argparse.Namespace,
    case_type: type,
    full_sweep: Callable[[], list],
    build: Callable[[Path, Path, str], Path],
    runs: Sequence[tuple[str, Sequence[str]]] = (("", ()),),
) -> int:
    """A cases module's main: builds the emulator from args.source, runs args.case (else the full
    sweep) once per (label, harness flags) in `runs`, prints a summary of each, and returns the
    exit status (1 when a case failed, 2 without a compiler)."""
    cxx = find_cxx()
    if cxx is None:
        print("no C++ compiler: set CXX or install g++", file=sys.stderr)
        return 2
    cases = [parse_case(case_type, c) for c in args.case] if args.case else full_sweep()
    with tempfile.TemporaryDirectory(prefix="cuda_emu_") as tmp:
        out_dir = args.build_dir or Path(tmp)
        start = time.perf_counter()
        binary = build(args.source, out_dir, cxx)
        print(f"built {binary} from {args.source} in {time.perf_counter() - start:.1f} s")
        failed = False
        for label, flags in runs:
            result = run(binary, cases, jobs=args.jobs, flags=flags)
            print(f"{label}{result.summary()}")
            never = result.never_launched()
            if never and not args.case:
                print("kernels never launched:", ", ".join(never))
            failed |= not result.passed(len(cases))
    return 1 if failed else 0



def load_cases_module(path: Path) -> ModuleType:
    """An op's cases module, loaded from its file (it imports this module as `emulate`)."""
    path = Path(path).resolve()
    name = f"{path.parent.name}_{path.stem}"  # e.g. layernorm_emulator_cases
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while a class is made
    spec.loader.exec_module(module)
    return module


def cli(argv: Sequence[str]) -> int:
    """python emulate.py CASES_FILE [flags]: runs the cases module's main(flags)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nA cases file's flags: emulate.py CASES_FILE --help")
        return 0 if argv else 2
    return load_cases_module(Path(argv[0])).main(list(argv[1:]))


if __name__ == "__main__":
    # NOTE: a cases module imports this file as `emulate`: one module, not a second copy
    sys.modules.setdefault("emulate", sys.modules[__name__])
    sys.exit(cli(sys.argv[1:]))
