"""Shared test fixtures: where the project's sibling data folder is, and fake CUDA tensors; and
the helper modules test files share, loaded by name.

With --import-mode=importlib neither tests/ nor tools/ is on sys.path, so a test file cannot
import a helper file beside it: the files in SHARED_MODULES are loaded here from their paths,
once, as the modules the tests `import` (e.g. `from tokenizer_texts import TRICKY`).
"""

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TESTS = REPO / "tests"

# module name -> file; the CUDA emulator's driver first: the ops' cases modules `import emulate`
SHARED_MODULES = {
    "emulate": REPO / "tools" / "cuda_emu" / "emulate.py",  # the emulator's generic driver
    "layernorm_emulator_cases": TESTS / "kernels" / "layernorm" / "emulator_cases.py",
    "attention_emulator_cases": TESTS / "kernels" / "attention" / "emulator_cases.py",
    "kernel_checks": TESTS / "kernels" / "checks.py",  # the checks of both ops' CPU-path tests
    "tokenizer_texts": TESTS / "toygpt" / "tokenizer_texts.py",  # both tokenizer test files' inputs
}


def _load(name: str, path: Path) -> None:
    """The file `path` as the module `name`."""
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while a class is made
    spec.loader.exec_module(module)


for _name, _path in SHARED_MODULES.items():
    _load(_name, _path)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {path} (the repo's sibling shared/data folder)")
    return path


@pytest.fixture(scope="session")
def gpt2_vocab_dir() -> Path:
    path = SHARED_DATA / "gpt2"
    if not (path / "encoder.json").is_file() or not (path / "vocab.bpe").is_file():
        pytest.skip(f"GPT-2 encoder.json / vocab.bpe not found in {path} (the repo's sibling shared/data folder)")
    return path


class FakeCUDA:
    """CUDA without a GPU: inside `with fake_cuda:` tensors made with device="cuda" are fake
    (shapes, dtypes, strides and devices, no data), so the CUDA paths of the dispatcher (autocast,
    the custom ops' fake registrations, autograd) run on a CPU-only machine.

    `fake_cuda.autocast(dtype)` turns CUDA autocast on as torch.autocast("cuda", dtype) would on
    a GPU (torch.autocast itself refuses, and disables itself, where no GPU is visible).
    """

    def __enter__(self):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self._mode = FakeTensorMode()
        return self._mode.__enter__()

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    @staticmethod
    def module(module):
        """`module` with fake CUDA parameters and buffers in place of its own (their values are
        not needed), and requires_grad off: CPU-only torch cannot record autograd on fake CUDA
        tensors, nor index them with Python slices (a CUDA build of torch can)."""
        module.requires_grad_(False)
        overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(True)
        try:
            return module._apply(
                lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda"))
        finally:
            torch.__future__.set_overwrite_module_params_on_conversion(overwrite)

    @staticmethod
    @contextmanager
    def autocast(dtype):
        enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", dtype)
        try:
            yield
        finally:
            torch.set_autocast_enabled("cuda", enabled)
            torch.set_autocast_dtype("cuda", previous)
            torch.clear_autocast_cache()


@pytest.fixture
def fake_cuda() -> FakeCUDA:
    return FakeCUDA()


@pytest.fixture
def one_line_error(capsys):
    """one_line_error(exit_code, *names) -> stderr: checks that a command line failed as every
    toygpt and toygrad command must on bad input: exit code 2, exactly one line on stderr,
    no traceback, naming each of `names`."""

    def check(code, *names):
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        for name in names:
            assert name in err, err
        return err

    return check
