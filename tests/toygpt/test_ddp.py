"""DDP through torchrun, gloo on CPUs: 2 processes follow the loss curve of 1 process with the same
global batch; so do two nodes the way torchrun starts them (one launcher per node, `--nnodes 2
--node_rank N`, a static rendezvous on localhost) on a sharded GPT-2 corpus, and they resume
bit-exactly."""

import json
import os
import socket
import subprocess
import sys

import pytest
from toygpt import checkpoint
from toygpt.prepare import prepare
from toygpt.shards import prepare_shards
from toygpt.tokenizers.gpt2 import ENV_VAR

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


@pytest.mark.slow
def test_two_nodes_match_one_process_and_resume_exactly(tmp_path, shakespeare_path, gpt2_vocab_dir, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1", ENV_VAR: str(gpt2_vocab_dir)}
    monkeypatch.setenv(ENV_VAR, str(gpt2_vocab_dir))  # for prepare_shards in this process
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = shakespeare_path.read_text()[:40_000]
    for i in range(3):  # several files: a sharded corpus, several shards
        (corpus / f"part{i}.txt").write_text(text[i * 13_000:(i + 1) * 13_000])
    prepare_shards(sorted(corpus.iterdir()), tmp_path / "data", shard_tokens=2_000, workers=0,
                   progress_bar=False, log=None)

    def args(out, max_iters, grad_accum, *extra):
        return ["-m", "toygpt", "train", "--preset", "mygpt-char", "--data", str(tmp_path / "data"),
                "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--dropout", "0",
                "--batch-size", "2", "--grad-accum", str(grad_accum), "--max-iters", str(max_iters),
                "--lr-decay-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--sample-tokens", "0",
                "--no-progress", "--device", "cpu", "--out", str(tmp_path / out), *extra]

    def two_nodes(out, max_iters, *extra):
        port = _free_port()
        # each launcher writes to a file, not a pipe: a pipe that nobody reads while the test waits
        # for the other node fills up and stops its writer, and then both nodes wait for ever
        logs = [tmp_path / f"{out}-{'-'.join(extra) or 'run'}-node{node}.log" for node in (0, 1)]
        launchers = [
            subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                              "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                              "--master_port", str(port), *args(out, max_iters, 1, *extra)],
                             stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
            for node, log in zip((0, 1), logs)
        ]
        try:
            for p in launchers:
                p.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail("two-node run still going after 240 s; the nodes' output:\n" + "\n".join(
                f"node {node}: {log.read_text()[-2000:]}" for node, log in enumerate(logs)))
        finally:
            for p in launchers:
                p.kill()  # nothing, for a launcher that has exited
                p.wait()
        for node, (p, log) in enumerate(zip(launchers, logs)):
            assert p.returncode == 0, f"node {node}: {log.read_text()[-3000:]}"

    single = subprocess.run([sys.executable, *args("single", 4, 2)], capture_output=True, text=True,
                            timeout=240, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    two_nodes("nodes", 4)
    one, two = _losses(tmp_path / "single"), _losses(tmp_path / "nodes")
    assert len(one) == len(two) == 4 and one[-1] < one[0]
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-5, (one, two)

    # the same two-node run stopped at step 2, then resumed: the steps after it are bit-exact
    two_nodes("split", 2)
    two_nodes("split", 4, "--resume")
    assert _losses(tmp_path / "split") == two
