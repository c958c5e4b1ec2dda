"""Training checkpoints: a toygpt checkpoint directory plus the trainer's state, saved atomically;
and what `--model NAME` means to generate, attention and eval (`load_named`, at the end).

Layout of `<run>/ckpt/`:
    config.json, model.safetensors   the model (model.save_pretrained: GPT.from_pretrained reads it)
    tokenizer.json                   the data's tokenizer
    trainer_state.pt                 optimizer, GradScaler, step, RNG states, TrainConfig, and the
                                     size + sha256 of every other file (so truncation is detected)
    train_config.json                the TrainConfig again, for people

The learning-rate schedule has no state of its own: it is a function of the step (train.get_lr),
and so are the batches (data.batch_offsets), so the step is all a resumed run needs of either.

Atomic save: everything is written into a temporary sibling directory, which is then renamed into
place (the old checkpoint is first renamed aside and only deleted afterwards). A crash at any point
leaves either the old or the new checkpoint whole; `resolve` finds the one that survived.
`remove` (a run started afresh with --overwrite) renames both aside before deleting them, the
crash-window copy first, so no crash brings an older checkpoint back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from toygpt.data import sha256_of
from toygpt.errors import ToyGPTError

STATE_FILE = "trainer_state.pt"


def save_checkpoint(path: str | Path, model, tokenizer, state: dict) -> Path:
    """Write model + tokenizer + `state` (a dict of tensors and plain values) to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old")
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a crash of an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save(tmp / "tokenizer.json")
    (tmp / "train_config.json").write_text(json.dumps(state.get("config", {}), indent=2) + "\n")
    state = dict(state, files={f.name: [f.stat().st_size, sha256_of(f)] for f in sorted(tmp.iterdir())})
    torch.save(state, tmp / STATE_FILE)
    for f in tmp.iterdir():  # on disk before the rename makes them the checkpoint
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # the renames themselves on disk
    shutil.rmtree(old, ignore_errors=True)
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows); the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve(path: str | Path) -> Path:
    """`path`, or the previous checkpoint a crash mid-save left renamed aside."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not (path / STATE_FILE).is_file() and (old / STATE_FILE).is_file():
        return old
    return path


def exists(path: str | Path) -> bool:
    """Whether `path` holds a checkpoint, or a crash mid-save left one renamed aside."""
    return (resolve(path) / STATE_FILE).is_file()


def remove(path: str | Path) -> None:
    """Delete checkpoint `path` and any copy a crash mid-save left aside.

    Each is renamed to a name `resolve` never looks at before it is deleted (a crash mid-delete
    must not leave half a checkpoint that loads), and the crash-window copy goes first: were
    `path` to go first, a crash between the two would make `resolve` bring the older one back.
    """
    path = Path(path)
    for victim in (path.with_name(f".{path.name}.old"), path):
        if victim.exists():
            trash = path.with_name(f".{path.name}.removed{os.getpid()}")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(victim, trash)
            _fsync_dir(path.parent)
            shutil.rmtree(trash, ignore_errors=True)
    for stale in path.parent.glob(f".{path.name}.removed*"):  # left by a crash in an earlier remove
        shutil.rmtree(stale, ignore_errors=True)


def _read_state(state_path: Path, mmap: bool = False) -> dict:
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, garbage bytes, ...: all mean the same to the user
        raise ToyGPTError(f"checkpoint file {state_path} is corrupt or truncated ({type(e).__name__})") from None


def load_state(path: str | Path) -> dict:
    """The trainer state of checkpoint `path`, after checking every file against it."""
    path = resolve(path)
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise ToyGPTError(f"no checkpoint at {path} ({STATE_FILE} not found)")
    state = _read_state(state_path)
    _check_files(path, state)
    return state


def verify(path: str | Path) -> Path:
    """Checkpoint directory `path` (resolved as `load_state` does), after checking its files
    against the sizes and sha256 recorded at save time; a directory without trainer_state.pt
    (a transformers or exported model) is returned as it is."""
    path = resolve(path)
    state_path = path / STATE_FILE
    if state_path.is_file():
        # memory-mapped: the optimizer's tensors are not read, only the file table
        _check_files(path, _read_state(state_path, mmap=True))
    return path


def _check_files(path: Path, state: dict) -> None:
    for name, (size, digest) in state.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise ToyGPTError(f"checkpoint file {f} is missing")
        if f.stat().st_size != size or sha256_of(f) != digest:
            raise ToyGPTError(f"checkpoint file {f} is corrupt or truncated (size or sha256 differs "
                              f"from the one recorded at save time)")


def load_model(path: str | Path):
    """The model of checkpoint `path`: a GPT, or the bigram model."""
    path = resolve(path)
    config_path = path / "config.json"
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise ToyGPTError(f"cannot read {config_path} ({e})") from None
    if model_type == "toygpt-bigram":
        from toygpt.bigram import BigramLanguageModel

        return BigramLanguageModel.from_pretrained(path)
    from toygpt.model import GPT

    return GPT.from_pretrained(path)


def local_model_dir(name: str) -> Path | None:
    """The local model directory `--model name` means, or None for a hub name.

    Checkpoints resolve as `toygpt train --resume` resolves them: a run directory means its
    ckpt/, and a checkpoint that a crash mid-save left renamed aside (.ckpt.old) is found, after
    its files are checked against the sizes and sha256 its trainer_state.pt recorded. A name that
    looks like a path (it starts with '.', '/' or '~', has two '/' or more, or its first part is a
    local directory) and is none of these is not found, not a hub name to look up.
    """
    path = Path(name).expanduser()
    for candidate in (path, path / "ckpt"):
        resolved = resolve(candidate)
        if (resolved / "config.json").is_file():
            return verify(resolved)
    if path.is_dir():
        raise ToyGPTError(f"{name} holds no model: no config.json in it or in {path / 'ckpt'} "
                          "(pass a toygpt checkpoint or run directory, or a transformers directory)")
    if path.exists():
        raise ToyGPTError(f"{name} is a file, not a model directory")
    parts = name.replace(os.sep, "/").split("/")
    if name.startswith((".", "/", "~")) or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir()):
        raise ToyGPTError(f"{name}: no such directory (not found; a path is not looked up on the hub)")
    return None


def load_named(name: str, device: str = "cpu"):
    """What `--model name` means, on `device`: a toygpt checkpoint or run directory, a transformers
    GPT-2 directory (load_model reads which from its model_type), or a hub name
    (GPT.from_pretrained, or an error naming it). generate, attention and eval all load this way."""
    from toygpt.model import GPT

    local = local_model_dir(name)
    model = load_model(local) if local is not None else GPT.from_pretrained(name)
    return model.to(device)
