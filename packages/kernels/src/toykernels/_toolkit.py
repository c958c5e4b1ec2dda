"""What a build compiles with: the CUDA toolkit, the headers it lacks, the GPU architecture.

- The architecture: `TORCH_CUDA_ARCH_LIST` when set, else the current device's compute
  capability (sm_90 on an H100/H200), so a build takes one arch's time, not all of them.
- The toolkit (`find_toolkit`): cpp_extension's own guess (`$CUDA_HOME`, else the folder above
  `which nvcc`) fails where `nvcc` on the PATH is a wrapper script, so the real nvcc is asked
  where it runs from; and a toolkit installed without its math libraries lacks the
  cuBLAS/cuSPARSE/cuSOLVER headers that ATen/cuda/CUDAContext.h includes: torch's own
  nvidia-* wheels carry those, and their include folders are added to the build.

Nothing here compiles anything; `_build` does, with what this module finds.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

# Headers ATen/cuda/CUDAContext.h (included by every binding) needs beyond the CUDA runtime's.
# A toolkit installed without its math libraries lacks them; torch's nvidia-* wheels carry them.
LIBRARY_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


class ToolkitNotFound(RuntimeError):
    """No usable CUDA toolkit; the message says where we looked."""


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


# ----------------------------------------------------------------------------------------------
# the CUDA toolkit


@dataclass(frozen=True)
class Toolkit:
    """The CUDA toolkit a build uses, and how it was found."""

    cuda_home: Path  # has bin/nvcc and include/cuda_runtime_api.h
    nvcc: Path  # cuda_home/bin/nvcc: the compiler itself, not a wrapper in front of it
    version: str  # from `nvcc --version`, e.g. "13.0.88"
    found: str  # how, in words
    extra_includes: tuple[Path, ...] = ()  # torch's nvidia-* include folders the build adds
    added_headers: tuple[str, ...] = ()  # the LIBRARY_HEADERS those folders provide
    missing_headers: tuple[str, ...] = ()  # LIBRARY_HEADERS found nowhere (the build will fail)

    def describe(self) -> str:
        """One line: CUDA_HOME, nvcc path and version, how found, extra include folders."""
        text = f"CUDA_HOME={self.cuda_home}, nvcc {self.nvcc} (CUDA {self.version}), found by {self.found}"
        if self.extra_includes:
            folders = ", ".join(str(p) for p in self.extra_includes)
            text += f"; extra include folders: {folders} (for {', '.join(self.added_headers)})"
        else:
            text += "; extra include folders: none"
        if self.missing_headers:
            text += f"; missing everywhere: {', '.join(self.missing_headers)}"
        return text

    def include_flags(self) -> list[str]:
        """`-isystem DIR` per extra folder, for the C++ and the nvcc command lines.

        NOTE: -isystem, not extra_include_paths (-I): -I folders are searched before the system
        ones, and nvidia/cu13/include also carries a CUDA runtime (cuda_runtime_api.h, ...) that
        would shadow the toolkit's. cpp_extension passes CUDA_HOME/include as -isystem ahead of
        our flags, so the toolkit's own headers win and these folders only fill the gaps. (The
        CUDA_INC_PATH variable cpp_extension reads does the same for a single folder.)
        """
        return [flag for folder in self.extra_includes for flag in ("-isystem", shlex.quote(str(folder)))]


def _is_toolkit(home: Path) -> bool:
    return (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime_api.h").is_file()


def _run(cmd: list[str]) -> str:
    """stdout and stderr of a short command, or '' when it cannot run."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout + result.stderr


def _nvcc_install_dir(nvcc: str) -> Path | None:
    """The toolkit that `nvcc` (perhaps a wrapper) really runs, as the real nvcc reports it.

    `nvcc -dryrun` prints the settings its driver derives from its own location (`#$ TOP=...`,
    the folder above the real binary's bin/, from which it finds cicc, ptxas and the headers)
    and compiles nothing. Asking the compiler works for any wrapper: a symlink, a shell script
    that `exec`s it (this project's machines), ccache, or a script that sets up an environment
    first; parsing an `exec` line would only handle one kind, resolving symlinks another.
    Falls back to resolving symlinks when the output names no folder.
    """
    output = _run([nvcc, "-dryrun", "-x", "cu", "-E", os.devnull])
    for key in ("TOP", "_HERE_"):
        match = re.search(rf"^#\$ {key}=(.+)$", output, re.MULTILINE)
        if match:
            folder = Path(match.group(1).strip()).resolve()
            return folder.parent if key == "_HERE_" else folder
    return Path(nvcc).resolve().parent.parent


def _nvcc_version(nvcc: Path) -> str:
    output = _run([str(nvcc), "--version"])
    match = re.search(r"release [\d.]+, V([\d.]+)", output) or re.search(r"release ([\d.]+)", output)
    return match.group(1) if match else f"unknown (`{nvcc} --version` printed {output.strip()[-200:]!r})"


def _library_includes(cuda_home: Path, site_packages: Path | None = None):
    """(folders to add, headers they provide, headers found nowhere) for LIBRARY_HEADERS the
    toolkit lacks, searched in the include folders of the nvidia-* wheels beside torch
    (site-packages/nvidia/cu13/include for CUDA 13, nvidia/cublas/include etc. for CUDA 12)."""
    if site_packages is None:
        site_packages = Path(torch.__file__).resolve().parent.parent
    candidates = sorted(site_packages.glob("nvidia/*/include"))
    folders: list[Path] = []
    added: list[str] = []
    missing: list[str] = []
    for header in LIBRARY_HEADERS:
        if (cuda_home / "include" / header).is_file():
            continue
        folder = next((c for c in candidates if (c / header).is_file()), None)
        if folder is None:
            missing.append(header)
            continue
        added.append(header)
        if folder not in folders:
            folders.append(folder)
    return tuple(folders), tuple(added), tuple(missing)


def find_toolkit() -> Toolkit:
    """The CUDA toolkit toykernels builds with; raises ToolkitNotFound saying what was tried.

    Order: $CUDA_HOME (or $CUDA_PATH), else cpp_extension's guess (the folder above `which
    nvcc`, else /usr/local/cuda), when that folder holds both bin/nvcc and the runtime headers.
    Otherwise the nvcc found there or on the PATH is a wrapper, and the toolkit is where the
    real nvcc lives (see `_nvcc_install_dir`). Cached per environment (a few ms of nvcc calls).
    """
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise ToolkitNotFound(
            "CUDA toolkit not found: torch.utils.cpp_extension.CUDA_HOME is None "
            f"(torch {torch.__version__}, torch.version.cuda=None: this torch was built without "
            "CUDA; install a CUDA build of torch and set CUDA_HOME to the toolkit that has nvcc)"
        )
    env_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return _find_toolkit(env_home, os.environ.get("PATH", ""), getattr(cpp_extension, "CUDA_HOME", None))


@functools.lru_cache(maxsize=8)
def _find_toolkit(env_home: str | None, path: str, torch_guess: str | None) -> Toolkit:
    start = env_home or torch_guess
    origin = "$CUDA_HOME" if env_home else "torch.utils.cpp_extension.CUDA_HOME"
    if start and _is_toolkit(Path(start)):
        home = Path(start).resolve()
        found = f"{origin}={start}"
    else:
        in_start = Path(start) / "bin" / "nvcc" if start else None
        nvcc_cmd = str(in_start) if in_start is not None and in_start.is_file() else shutil.which("nvcc", path=path)
        if nvcc_cmd is None:
            where = f"{origin}={start} has no bin/nvcc" if start else f"{origin} is None"
            raise ToolkitNotFound(
                f"CUDA toolkit not found: {where} and no nvcc is on the PATH "
                f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}; "
                "set CUDA_HOME to the toolkit that has nvcc)"
            )
        home = _nvcc_install_dir(nvcc_cmd)
        if home is None or not _is_toolkit(home):
            raise ToolkitNotFound(
                f"CUDA toolkit not found: {nvcc_cmd} runs from {home}, which has no "
                "bin/nvcc and include/cuda_runtime_api.h; set CUDA_HOME to the toolkit that has them"
            )
        found = f"asking {nvcc_cmd} where it runs from (`nvcc -dryrun`; {origin}={start} is no toolkit)"
    nvcc = home / "bin" / "nvcc"
    folders, added, missing = _library_includes(home)
    return Toolkit(home, nvcc, _nvcc_version(nvcc), found, folders, added, missing)


def toolkit_summary() -> str:
    """`find_toolkit().describe()`, or `none: <why>` (for backend_info; compiles nothing)."""
    try:
        return find_toolkit().describe()
    except ToolkitNotFound as error:
        return f"none: {error}"
