"""JIT build of one op's CUDA extension, generic over ops.

Each op is its own extension module (`toykernels_<name>`), so a build failure in one op never
disables another. The build is `torch.utils.cpp_extension.load` (ninja), which we wrap to:

- pick the architecture and find the CUDA toolkit (`_toolkit`: `TORCH_CUDA_ARCH_LIST` or the
  device's compute capability; the real toolkit behind a wrapper nvcc, and the library headers
  it lacks from torch's nvidia-* wheels), and make that toolkit cpp_extension's for the build;
- key the build folder by extension name, arch list, torch and Python version, so builds for
  different GPUs or torch versions never share (and never clobber) one folder;
- turn any failure into a `BuildError` that names the compiler's first error line and a log
  file holding the full output;
- say whether the library was really built or loaded from the cache, from the library file
  itself (its inode, size and modification time before and after the load).

Cache: `$TOYKERNELS_CACHE` if set, else torch's extensions folder (`$TORCH_EXTENSIONS_DIR`, by
default ~/.cache/torch_extensions). Rebuilds: cpp_extension hashes the sources and the build
flags, and ninja rebuilds the objects whose inputs changed (headers included: the compilers
write dependency files).

Two processes building at once: each takes an exclusive `flock` on `<build dir>/toykernels.lock`
around the whole load, so the folder is never written by two compilers at once and the second
process loads what the first built. The kernel drops a flock when its holder dies, however it
dies (Ctrl-C, OOM killer, SIGKILL from a time limit). torch's own guard in the same folder,
`<build dir>/lock`, is a file whose mere existence blocks in some torch versions (FileBaton,
torch <= 2.13): a build killed half-way left it behind and every later build waited forever.
While we hold our flock no other toykernels build of that folder is running, so such a file
is stale by construction and is removed (with a warning naming the killed process, whose pid
the lock file still holds).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch

from toykernels._toolkit import (  # also reached as toykernels._build.find_toolkit etc.
    Toolkit,
    ToolkitNotFound,
    arch_label,
    arch_list,
    find_toolkit,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; cpp_extension's own lock is all there is
    fcntl = None

CSRC = Path(__file__).resolve().parent / "csrc"

# Compiler flags of every toykernels build (tools/cuda_build_check.py compiles with the same
# nvcc flags for its ptxas report, so the register counts it prints are the built kernels').
CXX_FLAGS = ["-O3"]  # the C++ standard: cpp_extension picks the one torch needs
NVCC_FLAGS = ["-O3", "-lineinfo"]

LOCK_NAME = "toykernels.lock"  # ours (flock); cpp_extension's is "lock"


class BuildError(RuntimeError):
    """The extension could not be built or loaded; `log_path` holds the full compiler output."""

    def __init__(self, message: str, log_path: Path | None):
        self.log_path = log_path
        where = f"; full log at {log_path}" if log_path is not None else ""
        super().__init__(message + where)
        self.first_error = message


def cache_root() -> Path:
    """Where builds go: $TOYKERNELS_CACHE, else torch's extensions folder."""
    root = os.environ.get("TOYKERNELS_CACHE")
    if root:
        return Path(root).expanduser()
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root).expanduser()
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def build_dir(name: str, arches: str) -> Path:
    """One folder per (extension, arch list, torch, Python), so builds never share a folder."""
    torch_tag = torch.__version__.replace("+", "_")
    py_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"toykernels_{name}" / f"{arch_label(arches)}-torch{torch_tag}-{py_tag}"


# ----------------------------------------------------------------------------------------------
# the compiler's first error


# A diagnostic a person should read: gcc/clang `file:1:10: fatal error: ...`, nvcc
# `file.cu(12): error: ...`, the linker's `undefined reference`/`cannot find -lfoo`, and the
# loader's `undefined symbol` (an ImportError after a successful link).
_DIAGNOSTIC = re.compile(
    r"\b(fatal error|error)\b[^:]{0,40}:|undefined reference to|undefined symbol|cannot find -l", re.IGNORECASE
)
# cpp_extension's header: "Error building extension 'name': " followed, on the same line, by
# the first line of ninja's output, which is a whole compiler command.
_CPP_EXTENSION_HEADER = re.compile(r"^(\w+: )?Error building extension '[^']*':?\s*")
_NINJA_PROGRESS = re.compile(r"^\[\d+/\d+\]\s")
_COMMAND = re.compile(r"\s-[co]\s")  # a compile (-c) or link (-o) command line


def _message_lines(log: str) -> list[str]:
    """The log's lines that are messages, not echoed commands.

    Ninja echoes each command (`[1/3] c++ -MMD ... -c /path/x.cpp`) and repeats a failed one
    after `FAILED: target`. Those lines hold paths and flags that may contain the word "error"
    (a folder named after a test, `-Werror`), so they are dropped before searching.
    """
    lines = []
    after_failed = False
    for raw in log.splitlines():
        line = _CPP_EXTENSION_HEADER.sub("", raw.strip())
        if not line:
            continue
        if after_failed:
            after_failed = False
            if _COMMAND.search(line):  # the failed command, echoed once more
                continue
        if line.startswith("FAILED:"):
            after_failed = True
            continue
        if _NINJA_PROGRESS.match(line):
            continue
        lines.append(line)
    return lines


def first_error_line(log: str) -> str:
    """The line a person should read first: the compiler's first diagnostic, else the first
    line that mentions an error, else the last line."""
    lines = _message_lines(log)
    for line in lines:
        match = _DIAGNOSTIC.search(line)
        if match and not re.search(r"\bwarning\b", line[: match.start()], re.IGNORECASE):
            return line
    for line in lines:
        if re.search(r"\berror\b", line, re.IGNORECASE) and not line.startswith("ninja: "):
            return line
    if lines:
        return lines[-1]
    stripped = [line.strip() for line in log.splitlines() if line.strip()]
    return stripped[-1] if stripped else "unknown error (empty log)"


# ----------------------------------------------------------------------------------------------
# the toolkit (found by _toolkit), made cpp_extension's for one build


@contextlib.contextmanager
def _cuda_home(toolkit: Toolkit):
    """cpp_extension's CUDA_HOME set to the toolkit's for the length of one build.

    NOTE: torch.utils.cpp_extension resolves CUDA_HOME once, when it is imported, into its
    module global `CUDA_HOME`, and every build reads that global (`_join_cuda_home`: the nvcc
    it runs, include/ and lib64/). Setting the environment variable after that import changes
    nothing, so where the toolkit found here differs (with a wrapper nvcc on the PATH its guess
    is the wrapper's folder, e.g. /usr/local), the global is set for the build and put back.
    The caller holds the build lock, and backend._load's lock keeps builds one at a time.
    """
    from torch.utils import cpp_extension

    if not hasattr(cpp_extension, "CUDA_HOME"):
        raise BuildError(
            f"torch {torch.__version__}: torch.utils.cpp_extension has no CUDA_HOME; "
            f"toykernels cannot tell it to use the toolkit in {toolkit.cuda_home}",
            None,
        )
    previous = cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = str(toolkit.cuda_home)
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = previous


# ----------------------------------------------------------------------------------------------
# the generic build: lock, load, judge


@contextlib.contextmanager
def build_lock(folder: Path, what: str):
    """An exclusive flock on <folder>/toykernels.lock, held for the body (see the module docstring).

    The lock file holds the holder's pid while it builds and is emptied when it is done, so a
    pid found there by the next holder means a build that was killed half-way. The file is
    never deleted: a process waiting on the old inode would lock a file nobody else sees.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for a live holder; a dead one holds nothing
        killed = os.pread(fd, 64, 0).decode(errors="replace").strip()
        baton = folder / "lock"
        if killed:
            left = f"; removed its leftover {baton}" if baton.exists() else ""
            warnings.warn(f"{what}: a build in {folder} by process {killed} was killed half-way{left}",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
        # no other toykernels build of this folder runs now, so cpp_extension's lock is stale
        baton.unlink(missing_ok=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            # torch's own lock file stays behind in torch versions that flock it; tidy it too
            baton.unlink(missing_ok=True)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _library_stats(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime in ns) of every library in the folder: a relinked library differs."""
    stats = {}
    for library in folder.glob("*.so"):
        st = library.stat()
        stats[library.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stats


def build_and_load(module_name: str, sources: list[str], folder: Path, *, extra_cflags=(),
                   extra_cuda_cflags=(), extra_include_paths=(), note: str = ""):  # fmt: skip
    """cpp_extension.load of `sources` into `folder` as `module_name`, under `build_lock`.

    Returns (module, seconds, how): how is "built" when the library file is new or changed
    (ninja compiled or relinked), "loaded from cache" when it is the same file as before.
    Raises BuildError with the first error line and `folder/build.log` holding the full output.
    `note` (e.g. the toolkit used) is added to build.log's line on success.
    """
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "build.log"
    with build_lock(folder, module_name):
        before = _library_stats(folder)
        start = time.perf_counter()
        try:
            module = cpp_extension.load(
                name=module_name,
                sources=list(sources),
                extra_cflags=list(extra_cflags),
                extra_cuda_cflags=list(extra_cuda_cflags),
                extra_include_paths=list(extra_include_paths),
                build_directory=str(folder),
                verbose=False,
            )
        except Exception as error:  # compiler errors arrive as RuntimeError, link errors as ImportError
            log = f"{type(error).__name__}: {error}\n"
            log_path.write_text(log + (f"({note})\n" if note else ""))
            raise BuildError(f"{module_name}: {first_error_line(log)}", log_path) from error
        seconds = time.perf_counter() - start
        # cpp_extension may have loaded `<name>_v1.so` (a rebuild within one process): judge
        # the file that was really loaded
        library = Path(module.__file__)
        st = library.stat()
        unchanged = before.get(library.name) == (st.st_ino, st.st_size, st.st_mtime_ns)
        how = "loaded from cache" if unchanged else "built"
        log_path.write_text(f"{how} {library.name} in {seconds:.1f} s{f' ({note})' if note else ''}\n")
    return module, seconds, how


def load_extension(name: str, sources: list[str], device: torch.device | None = None):
    """Build (or load from the cache) the extension `toykernels_<name>` from files in csrc/.

    Returns (module, seconds, how) where `how` is "built" or "loaded from cache".
    Raises BuildError with the compiler's first error line and the path of the full log.
    """
    module_name = f"toykernels_{name}"
    try:
        arches = arch_list(device)
    except (RuntimeError, AssertionError) as error:  # no CUDA device to ask
        raise BuildError(
            f"{module_name}: cannot tell which GPU architecture to build for ({error}); "
            "set TORCH_CUDA_ARCH_LIST, e.g. to 9.0",
            None,
        ) from error
    folder = build_dir(name, arches)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "build.log"
    try:
        toolkit = find_toolkit()
    except ToolkitNotFound as error:
        log_path.write_text(f"{error}\n")
        raise BuildError(f"{module_name}: {error}", log_path) from error

    previous = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arches  # cpp_extension reads the arch list from here
    try:
        with _cuda_home(toolkit):
            module, seconds, how = build_and_load(
                module_name,
                [str(CSRC / s) for s in sources],
                folder,
                extra_cflags=CXX_FLAGS + toolkit.include_flags(),
                extra_cuda_cflags=NVCC_FLAGS + toolkit.include_flags(),
                extra_include_paths=[str(CSRC)],
                note=f"for {arch_label(arches)}; toolkit: {toolkit.describe()}",
            )
    finally:
        if previous is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = previous
    return module, seconds, how
