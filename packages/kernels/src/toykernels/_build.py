"""JIT build of one op's CUDA extension, generic over ops.

Each op is its own extension module (`toykernels_<name>`), so a build failure in one op never
disables another. The build is `torch.utils.cpp_extension.load` (ninja), which we wrap to:

- pick the architecture: `TORCH_CUDA_ARCH_LIST` when set, else the current device's compute
  capability (sm_90 on an H100/H200), so a build takes one arch's time, not all of them;
- key the build folder by extension name, arch list, torch and Python version, so builds for
  different GPUs or torch versions never share (and never clobber) one folder;
- turn any failure into a `BuildError` that names the compiler's first error line and a log
  file holding the full output.

Cache: `$TOYKERNELS_CACHE` if set, else torch's extensions folder (`$TORCH_EXTENSIONS_DIR`, by
default ~/.cache/torch_extensions). Rebuilds: cpp_extension hashes the sources and the build
flags, and ninja rebuilds the objects whose inputs changed (headers included: the compilers
write dependency files).

Two processes building at once: cpp_extension takes a file baton (`<build dir>/lock`, created
with O_EXCL). The process that creates it builds; the others wait until the file is gone, then
load the finished module. So the folder is never written by two compilers at once. If a build
is killed (Ctrl-C, OOM) the lock file can stay behind and later builds wait forever: delete it.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"


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


def arch_list(device: torch.device | None = None) -> str:
    """The arch list to build for: $TORCH_CUDA_ARCH_LIST, else the device's compute capability."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def arch_label(arches: str) -> str:
    """'9.0' -> 'sm_90'; '8.0;9.0+PTX' -> 'sm_80+sm_90+PTX' (for messages and folder names)."""
    parts = [p for p in re.split(r"[;\s]+", arches.strip()) if p]
    return "+".join("sm_" + p.replace(".", "") for p in parts)


def build_dir(name: str, arches: str) -> Path:
    """One folder per (extension, arch list, torch, Python), so builds never share a folder."""
    torch_tag = torch.__version__.replace("+", "_")
    py_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"toykernels_{name}" / f"{arch_label(arches)}-torch{torch_tag}-{py_tag}"


def first_error_line(log: str) -> str:
    """The line a person should read first: the compiler's first `error`, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\berror\b", line, re.IGNORECASE) and not line.startswith("FAILED:"):
            return line
    return lines[-1] if lines else "unknown error (empty log)"


def load_extension(name: str, sources: list[str], device: torch.device | None = None):
    """Build (or load from the cache) the extension `toykernels_<name>` from files in csrc/.

    Returns (module, seconds, how) where `how` is "built" or "loaded from cache".
    Raises BuildError with the compiler's first error line and the path of the full log.
    """
    from torch.utils import cpp_extension

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
    paths = [str(CSRC / s) for s in sources]
    if cpp_extension.CUDA_HOME is None:
        message = (
            "CUDA toolkit not found: torch.utils.cpp_extension.CUDA_HOME is None "
            f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}; "
            "set CUDA_HOME to the toolkit that has nvcc)"
        )
        log_path.write_text(message + "\n")
        raise BuildError(f"{module_name}: {message}", log_path)

    # A fresh .so newer than every source and header means ninja will have nothing to do.
    so = folder / f"{module_name}.so"
    headers = [str(p) for pattern in ("*.h", "*.cuh") for p in CSRC.glob(pattern)]
    newest_source = max(os.path.getmtime(p) for p in paths + headers)
    how = "loaded from cache" if so.exists() and so.stat().st_mtime >= newest_source else "built"

    previous = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arches  # cpp_extension reads the arch list from here
    start = time.perf_counter()
    try:
        module = cpp_extension.load(
            name=module_name,
            sources=paths,
            extra_cflags=["-O3"],  # the C++ standard: cpp_extension picks the one torch needs
            extra_cuda_cflags=["-O3", "-lineinfo"],
            extra_include_paths=[str(CSRC)],
            build_directory=str(folder),
            verbose=False,
        )
    except Exception as error:  # compiler errors arrive as RuntimeError, link errors as ImportError
        log = f"{type(error).__name__}: {error}\n"
        log_path.write_text(log)
        raise BuildError(f"{module_name}: {first_error_line(log)}", log_path) from error
    finally:
        if previous is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = previous
    seconds = time.perf_counter() - start
    log_path.write_text(f"{how} {module_name} for {arch_label(arches)} in {seconds:.1f} s\n")
    return module, seconds, how
