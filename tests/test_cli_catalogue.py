"""Every command line, walked through bad inputs: each must end in exit code 2 and exactly one line
on stderr that names the bad value or file, with no traceback, and leave every file as it was.

The commands run in-process (`main(argv)`, stderr captured) so the whole catalogue takes seconds;
a sample also runs as real processes through the installed console scripts, which proves that
nothing else (an import, an exit path) prints a traceback or changes the exit code.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from toygpt.cli import main as toygpt_main
from toygpt.demo import main as toygpt_demo_main
from toygpt.prepare import prepare
from toygpt.train import make_config, train
from toygrad.demo import main as toygrad_demo_main
from toygrad.tensor.train_gpt import main as toygrad_train_gpt_main

MAINS = {"toygpt": toygpt_main, "toygpt-demo": toygpt_demo_main, "toygrad-demo": toygrad_demo_main,
         "toygrad-train-gpt": toygrad_train_gpt_main}
MODULES = {"toygpt": "toygpt", "toygpt-demo": "toygpt.demo", "toygrad-demo": "toygrad.demo",
           "toygrad-train-gpt": "toygrad.tensor.train_gpt"}

TEXT = "".join(f"{i} To be, or not to be, that is the question: {i * 31 % 17}\n" for i in range(120))
# a device that cannot be used here, with or without a GPU
NO_SUCH_CUDA = f"cuda:{torch.cuda.device_count() + 7}"
TRAIN = ["train", "--data", "{data}", "--out", "{new}", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
         "--block-size", "8", "--batch-size", "4", "--max-iters", "1", "--no-progress", "--device", "cpu"]
GENERATE = ["generate", "--model", "{run}/ckpt", "--prompt", "To", "--max-new-tokens", "3"]
PREPARE = ["prepare", "--input", "{text}", "--out", "{new}"]
GPT_TXT = ["{text}", "--steps", "1", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8"]

# (command, argv, what the one line must name); {data}, {run}, {text}, {new}, ... are workspace paths
CASES = [
    # toygpt train: each flag's range and type, declared beside the flag
    ("toygpt", TRAIN + ["--learning-rate", "-1"], "--learning-rate"),
    ("toygpt", TRAIN + ["--learning-rate", "nan"], "'nan'"),
    ("toygpt", TRAIN + ["--learning-rate", "inf"], "'inf'"),
    ("toygpt", TRAIN + ["--learning-rate", "fast"], "'fast'"),
    ("toygpt", TRAIN + ["--min-lr", "-1"], "--min-lr"),
    ("toygpt", TRAIN + ["--beta1", "2"], "--beta1"),
    ("toygpt", TRAIN + ["--beta2", "-0.1"], "--beta2"),
    ("toygpt", TRAIN + ["--grad-clip", "-1"], "--grad-clip"),
    ("toygpt", TRAIN + ["--weight-decay", "-5"], "--weight-decay"),
    ("toygpt", TRAIN + ["--sample-tokens", "-1"], "--sample-tokens"),
    ("toygpt", TRAIN + ["--batch-size", "0"], "--batch-size"),
    ("toygpt", TRAIN + ["--grad-accum", "0"], "--grad-accum"),
    ("toygpt", TRAIN + ["--max-iters", "0"], "--max-iters"),
    ("toygpt", TRAIN + ["--eval-interval", "0"], "--eval-interval"),
    ("toygpt", TRAIN + ["--eval-iters", "-1"], "--eval-iters"),
    ("toygpt", TRAIN + ["--warmup-iters", "-1"], "--warmup-iters"),
    ("toygpt", TRAIN + ["--lr-decay-iters", "0"], "--lr-decay-iters"),
    ("toygpt", TRAIN + ["--dropout", "1"], "--dropout"),
    ("toygpt", TRAIN + ["--n-layer", "0"], "--n-layer"),
    ("toygpt", TRAIN + ["--n-head", "abc"], "'abc'"),
    ("toygpt", TRAIN + ["--block-size", "1.5"], "'1.5'"),
    ("toygpt", TRAIN + ["--seed", "-1"], "--seed"),
    ("toygpt", TRAIN + ["--dtype", "fp8"], "'fp8'"),
    ("toygpt", TRAIN + ["--preset", "gpt5"], "'gpt5'"),
    ("toygpt", TRAIN + ["--resume", "--overwrite"], "--resume and --overwrite"),
    ("toygpt", TRAIN + ["--max-iters"], "--max-iters"),
    ("toygpt", TRAIN + ["--no-such-flag"], "--no-such-flag"),
    # toygpt train: values that only the run can judge
    ("toygpt", TRAIN + ["--data", "{ws}/nowhere"], "nowhere"),
    ("toygpt", TRAIN + ["--data", "{run}"], "{run}"),
    ("toygpt", TRAIN + ["--device", "tpu:0"], "tpu:0"),
    ("toygpt", TRAIN + ["--device", NO_SUCH_CUDA], NO_SUCH_CUDA),
    ("toygpt", TRAIN + ["--out", "{text}/run"], "{text}/run"),
    ("toygpt", TRAIN + ["--out", "{run}"], "{run}/ckpt"),
    ("toygpt", TRAIN + ["--resume"], "{new}"),
    ("toygpt", TRAIN + ["--n-embd", "30", "--n-head", "4"], "n_embd=30"),
    ("toygpt", TRAIN + ["--block-size", "100000"], "block_size 100000"),
    # toygpt itself
    ("toygpt", [], "command"),
    ("toygpt", ["fly"], "'fly'"),
    # toygpt prepare
    ("toygpt", PREPARE[:2] + ["{ws}/missing.txt"] + PREPARE[3:], "missing.txt"),
    ("toygpt", PREPARE[:2] + ["{binary}"] + PREPARE[3:], "{binary}"),
    ("toygpt", PREPARE[:2] + ["{short}"] + PREPARE[3:], "{short}"),
    ("toygpt", PREPARE + ["--tokenizer", "bpe:10"], "'bpe:10'"),
    ("toygpt", PREPARE + ["--tokenizer", "bpe:x"], "'bpe:x'"),
    ("toygpt", PREPARE + ["--tokenizer", "word"], "'word'"),
    ("toygpt", PREPARE + ["--val-fraction", "0"], "--val-fraction"),
    ("toygpt", PREPARE + ["--val-fraction", "1.5"], "--val-fraction"),
    ("toygpt", PREPARE + ["--val-fraction", "nan"], "'nan'"),
    ("toygpt", PREPARE + ["--dataset", "shakespeare"], "--dataset"),
    ("toygpt", PREPARE[:3], "--out"),
    ("toygpt", ["prepare", "--dataset", "no-such-set", "--out", "{new}"], "no-such-set"),
    ("toygpt", ["prepare", "--input", "{other}", "--out", "{data}"], "{data}"),
    ("toygpt", PREPARE[:4] + ["{text}"], "{text}"),
    # toygpt generate
    ("toygpt", GENERATE + ["--max-new-tokens", "1000000000000"], "--max-new-tokens"),
    ("toygpt", GENERATE + ["--max-new-tokens", "-1"], "--max-new-tokens"),
    ("toygpt", GENERATE + ["--max-new-tokens", "many"], "'many'"),
    ("toygpt", GENERATE + ["--temperature", "-1"], "temperature"),
    ("toygpt", GENERATE + ["--temperature", "nan"], "'nan'"),
    ("toygpt", GENERATE + ["--top-k", "0"], "top_k"),
    ("toygpt", GENERATE + ["--top-p", "1.5"], "top_p"),
    ("toygpt", GENERATE + ["--prompt", "\u20ac"], "'\u20ac'"),
    ("toygpt", GENERATE + ["--device", "tpu"], "tpu"),
    ("toygpt", ["generate", "--model", "{ws}/nowhere"], "nowhere"),
    ("toygpt", ["generate", "--model", "{broken}"], "model.safetensors"),
    ("toygpt", ["generate"], "--model"),
    # toygpt-demo
    ("toygpt-demo", ["--out", "{new}", "--max-iters", "0"], "--max-iters"),
    ("toygpt-demo", ["--out", "{new}", "--n-test", "0"], "--n-test"),
    ("toygpt-demo", ["--out", "{new}", "--n-test", "10000000"], "10000000"),
    ("toygpt-demo", ["--out", "{new}", "--batch-size", "0"], "--batch-size"),
    ("toygpt-demo", ["--out", "{new}", "--digits", "30"], "--digits"),
    ("toygpt-demo", ["--out", "{new}", "--digits", "2"], "--digits"),
    ("toygpt-demo", ["--out", "{new}", "--seed", "x"], "'x'"),
    ("toygpt-demo", ["--out", "/proc/x", "--max-iters", "1", "--n-test", "8", "--batch-size", "8",
                     "--no-progress"], "/proc/x"),
    ("toygpt-demo", ["--out", "{text}/run", "--max-iters", "1", "--n-test", "8", "--batch-size", "8",
                     "--no-progress"], "{text}/run"),
    # toygrad-demo
    ("toygrad-demo", ["--out", "{new}.png", "--n-samples", "0"], "--n-samples"),
    ("toygrad-demo", ["--out", "{new}.png", "--n-samples", "1"], "--n-samples"),
    ("toygrad-demo", ["--out", "{new}.png", "--noise", "-1"], "--noise"),
    ("toygrad-demo", ["--out", "{new}.png", "--noise", "nan"], "'nan'"),
    ("toygrad-demo", ["--out", "{new}.png", "--steps", "0"], "--steps"),
    ("toygrad-demo", ["--out", "/proc/x.png"], "/proc/x.png"),
    ("toygrad-demo", ["--out", "{ws}/x.txt"], "x.txt"),
    ("toygrad-demo", ["--out", "{data}"], "{data}"),
    # toygrad-train-gpt
    ("toygrad-train-gpt", GPT_TXT + ["--device", NO_SUCH_CUDA], NO_SUCH_CUDA),
    ("toygrad-train-gpt", GPT_TXT + ["--device", "tpu"], "'tpu'"),
    ("toygrad-train-gpt", GPT_TXT + ["--csv", "/proc/x.csv"], "/proc/x.csv"),
    ("toygrad-train-gpt", ["{ws}/nope.txt", "--steps", "1"], "nope.txt"),
    ("toygrad-train-gpt", GPT_TXT + ["--lr", "nan"], "'nan'"),
    ("toygrad-train-gpt", GPT_TXT + ["--lr", "-1"], "--lr"),
    ("toygrad-train-gpt", GPT_TXT + ["--beta2", "1"], "--beta2"),
    ("toygrad-train-gpt", GPT_TXT + ["--steps", "0"], "--steps"),
    ("toygrad-train-gpt", GPT_TXT + ["--dtype", "float16"], "'float16'"),
    ("toygrad-train-gpt", GPT_TXT + ["--block-size", "x"], "'x'"),
    ("toygrad-train-gpt", [], "data"),
]



def _find(command: str, argv_part: str) -> int:
    return next(i for i, (c, argv, _) in enumerate(CASES) if c == command and argv_part in " ".join(argv))


# the sample that also runs as real processes (about 2 s each, most of it importing torch): each
# command, and each kind of failure (a flag's range, argparse's own errors, a file, inside the run)
IN_A_PROCESS = [_find("toygpt", "--learning-rate nan"), _find("toygpt", "--no-such-flag"),
                _find("toygpt", "--max-new-tokens 1000000000000"), _find("toygpt", "--model {broken}"),
                _find("toygpt-demo", "--digits 30"), _find("toygrad-demo", "--out /proc/x.png"),
                _find("toygrad-demo", "--n-samples 1"), _find("toygrad-train-gpt", NO_SUCH_CUDA)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding a prepared data directory and a run with a checkpoint, as a user's would."""
    ws = tmp_path_factory.mktemp("workspace")
    (ws / "text.txt").write_text(TEXT)
    (ws / "other.txt").write_text(TEXT.upper())
    (ws / "short.txt").write_text("ab")
    (ws / "binary.bin").write_bytes(bytes(range(256)) * 4)
    prepare(ws / "text.txt", "char", ws / "data")
    cfg = make_config("mygpt-char", n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4,
                      max_iters=1, eval_interval=1, eval_iters=1, sample_tokens=0, progress=False,
                      device="cpu", data=str(ws / "data"), out=str(ws / "run"))
    train(cfg, log=lambda *a: None)
    shutil.copytree(ws / "run" / "ckpt", ws / "broken")
    (ws / "broken" / "model.safetensors").write_bytes(os.urandom(3000))  # a damaged download
    return ws


def _paths(ws: Path) -> dict:
    return {"ws": ws, "data": ws / "data", "run": ws / "run", "text": ws / "text.txt",
            "other": ws / "other.txt", "short": ws / "short.txt", "binary": ws / "binary.bin",
            "broken": ws / "broken", "new": ws / "new"}


def _fill(items, ws):
    paths = _paths(ws)
    return [item.format(**{k: str(v) for k, v in paths.items()}) for item in items]


def _tree(folder: Path) -> dict:
    """Every file and folder under `folder`: path -> sha256 of the bytes (None for a folder)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def _check(code, err, names, before, after, case):
    assert code == 2, f"{case}: exit code {code}, stderr {err!r}"
    assert err.count("\n") == 1 and err.endswith("\n"), f"{case}: not one line: {err!r}"
    assert "Traceback" not in err, f"{case}: {err!r}"
    assert names in err, f"{case}: {err!r} does not name {names!r}"
    assert after == before, f"{case}: files changed: {set(after.items()) ^ set(before.items())}"


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c}-{' '.join(a)[-40:]}" for c, a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_no_file(case, workspace, capsys, monkeypatch):
    command, argv, names = CASES[case]
    monkeypatch.chdir(workspace)  # default outputs (runs/train, toygrad_demo.png) land here too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _tree(workspace)
    capsys.readouterr()
    try:
        code = MAINS[command](_fill(argv, workspace))
    except SystemExit as e:  # an exit that bypasses main's return value is a failure too
        code = e.code
    captured = capsys.readouterr()
    _check(code, captured.err, _fill([names], workspace)[0], before, _tree(workspace), CASES[case])


def _script(command: str) -> list[str]:
    script = Path(sys.executable).parent / command
    return [str(script)] if script.is_file() else [sys.executable, "-m", MODULES[command]]


def test_a_sample_in_real_processes(workspace):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    before = _tree(workspace)

    def run(case):
        command, argv, _ = CASES[case]
        return subprocess.run(_script(command) + _fill(argv, workspace), cwd=workspace, env=env,
                              capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:  # the machine running the tests may have 2 cores
        procs = list(pool.map(run, IN_A_PROCESS))
    for case, proc in zip(IN_A_PROCESS, procs):
        _check(proc.returncode, proc.stderr, _fill([CASES[case][2]], workspace)[0], before,
               _tree(workspace), CASES[case])
    assert {CASES[c][0] for c in IN_A_PROCESS} == set(MAINS)  # every command at least once


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 60
    assert {command for command, _, _ in CASES} == set(MAINS)
