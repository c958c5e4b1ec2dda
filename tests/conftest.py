"""Shared test fixtures: where the project's sibling data folder is."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
