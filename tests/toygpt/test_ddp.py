"""DDP through torchrun: 2 CPU processes (gloo) follow the loss curve of 1 process, same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest
from toygpt import checkpoint
from toygpt.prepare import prepare

TEXT = "".join(f"{i}: All the world's a stage, and all the men and women merely players. {i % 7}\n"
               for i in range(100))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir):
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    src = tmp_path / "text.txt"
    src.write_text(TEXT)
    prepare(src, "char", tmp_path / "data")
    common = ["train", "--preset", "mygpt-char", "--data", str(tmp_path / "data"), "--n-layer", "1",
              "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--dropout", "0", "--batch-size", "4",
              "--max-iters", "4", "--eval-interval", "4", "--eval-iters", "1", "--sample-tokens", "0",
              "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # one process: 4 micro-batches of 4 per step
    single = subprocess.run([sys.executable, "-m", "toygpt", *common, "--grad-accum", "4",
                             "--out", str(tmp_path / "single")], capture_output=True, text=True,
                            timeout=150, env=env)
    assert single.returncode == 0, single.stderr
    # two ranks: 2 micro-batches of 4 each, the first under no_sync, gradients averaged by DDP
    # on the second
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "toygpt", *common, "--grad-accum", "2", "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, timeout=150, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(one) == len(two) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-5, (one, two)
    assert one[-1] < one[0]  # it did train
    # rank 0 saved the checkpoint, and it holds every rank's RNG state
    state = checkpoint.load_state(tmp_path / "ddp" / "ckpt")
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
