"""The trainer: schedule, flags, exact resume, NaN stop, checkpoints, and the CLI's bad-input errors."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from toygpt import checkpoint, cli
from toygpt.errors import ToyGPTError
from toygpt.prepare import prepare
from toygpt.train import TrainConfig, get_lr, make_config, train


def tiny(data_dir, out, **kw):
    """A 1-layer, 16-channel GPT: seconds per run on a CPU."""
    settings = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.1, batch_size=4,
                    max_iters=6, eval_interval=3, eval_iters=2, sample_tokens=5, warmup_iters=2,
                    decay_lr=True, learning_rate=3e-3, data=str(data_dir), out=str(out),
                    progress=False, device="cpu")
    return make_config("mygpt-char", **{**settings, **kw})


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, max_iters=200)
    lrs = [get_lr(s, cfg) for s in range(200)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # warmup rises
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))
    assert lrs[150] == 0.1
    assert get_lr(5, TrainConfig(decay_lr=False, learning_rate=0.3)) == 0.3


def test_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "-h"])
    out = capsys.readouterr().out
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in out
    assert "(default: 0.95)" in out  # beta2's dataclass default


def test_flags_override_the_preset_which_overrides_defaults():
    args = cli.build_parser().parse_args(["train", "--preset", "shakespeare-char", "--n-layer", "2",
                                          "--beta2", "0.95", "--no-decay-lr"])
    from toygpt.train import config_from_args

    cfg = config_from_args(args)
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.dropout) == (2, 384, 256, 0.2)
    assert cfg.beta2 == 0.95  # given explicitly, though equal to the dataclass default
    assert cfg.decay_lr is False and cfg.warmup_iters == 100
    with pytest.raises(ToyGPTError, match="unknown preset 'gpt5'"):
        make_config("gpt5")


def test_resume_continues_exactly(data_dir, tmp_path):
    # lr_decay_iters fixed: the first half's schedule is the 6-step run's, though it stops at 3
    full = train(tiny(data_dir, tmp_path / "full", max_iters=6, lr_decay_iters=6))
    half_cfg = tiny(data_dir, tmp_path / "split", max_iters=6, lr_decay_iters=6)
    first = train(TrainConfig(**{**half_cfg.__dict__, "max_iters": 3}))
    second = train(TrainConfig(**{**half_cfg.__dict__, "resume": True}))
    assert len(first["losses"]) == 3 and len(second["losses"]) == 3
    assert first["losses"] + second["losses"] == full["losses"]  # bit-identical on CPU
    for a, b in zip(full["model"].parameters(), second["model"].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "split" / "loss.png").stat().st_size > 1000


def test_checkpoint_loads_with_from_pretrained(data_dir, tmp_path):
    from toygpt import GPT

    result = train(tiny(data_dir, tmp_path / "run", max_iters=3, dropout=0.0))
    model = GPT.from_pretrained(tmp_path / "run" / "ckpt").eval()
    x = torch.randint(0, result["model"].config.vocab_size, (2, 8))
    result["model"].eval()
    torch.testing.assert_close(model(x)[0], result["model"](x)[0])
    assert model.tokenizer.decode(model.tokenizer.encode("To be")) == "To be"


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path / "run", max_iters=3, eval_interval=1)
    train(cfg)
    before = (tmp_path / "run" / "ckpt" / "model.safetensors").read_bytes()
    with pytest.raises(ToyGPTError, match=r"loss is nan at step 5.*last good checkpoint"):
        train(TrainConfig(**{**cfg.__dict__, "resume": True, "max_iters": 6}),
              batches=PoisonAt(cfg, data_dir, step=4))
    assert (tmp_path / "run" / "ckpt" / "model.safetensors").read_bytes() != before  # step 4 saved
    assert checkpoint.load_state(tmp_path / "run" / "ckpt")["step"] == 4


class PoisonAt:
    """The real batches, except that step `step` (0-based) has a NaN loss: its targets are all
    ignored, so the mean cross-entropy is 0/0."""

    def __init__(self, cfg, data_dir, step):
        from toygpt.train import TokenBatches

        self.inner, self.step = TokenBatches(data_dir, cfg), step
        self.tokenizer, self.vocab_size = self.inner.tokenizer, self.inner.vocab_size

    def check(self, *a):
        self.inner.check(*a)

    def eval_batch(self, *a):
        return self.inner.eval_batch(*a)

    def train_batch(self, step, micro_step, block_size, device):
        x, y = self.inner.train_batch(step, micro_step, block_size, device)
        return x, (torch.full_like(y, -1) if step == self.step else y)


def test_atomic_save_survives_a_crash_mid_save(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path / "run", max_iters=3)
    train(cfg)
    ckpt = tmp_path / "run" / "ckpt"
    before = {f.name: f.read_bytes() for f in ckpt.iterdir()}

    def crash(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint.torch, "save", crash)  # dies after the weights are written
    with pytest.raises(OSError, match="disk full"):
        train(TrainConfig(**{**cfg.__dict__, "resume": True, "max_iters": 6}))
    assert {f.name: f.read_bytes() for f in ckpt.iterdir()} == before
    monkeypatch.undo()
    # a crash between the two renames leaves the old checkpoint aside; it is still found
    ckpt.rename(tmp_path / "run" / ".ckpt.old")
    assert checkpoint.load_state(ckpt)["step"] == 3


@pytest.mark.parametrize("damage", ["truncate-weights", "flip-weights", "garbage-state"])
def test_corrupt_checkpoint_is_a_one_line_error(data_dir, tmp_path, capsys, damage):
    cfg = tiny(data_dir, tmp_path / "run", max_iters=3, sample_tokens=0)
    train(cfg)
    ckpt = tmp_path / "run" / "ckpt"
    if damage == "truncate-weights":
        target = ckpt / "model.safetensors"
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "flip-weights":
        target = ckpt / "model.safetensors"
        raw = bytearray(target.read_bytes())
        raw[-5] ^= 0xFF
        target.write_bytes(bytes(raw))
    else:
        target = ckpt / "trainer_state.pt"
        target.write_bytes(b"not a zip file at all")
    damaged = target.read_bytes()
    code = cli.main(_argv(cfg) + ["--resume", "--max-iters", "6"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "corrupt or truncated" in err and target.name in err
    assert target.read_bytes() == damaged  # nothing overwritten


def _argv(cfg):
    return ["train", "--preset", "mygpt-char", "--data", cfg.data, "--out", cfg.out, "--n-layer", "1",
            "--n-head", "2", "--n-embd", "16", "--block-size", str(cfg.block_size), "--batch-size",
            str(cfg.batch_size), "--eval-iters", "2", "--sample-tokens", "0", "--no-progress",
            "--device", "cpu"]


def test_cli_bad_input_errors(train_text, data_dir, tmp_path, capsys):
    cfg = tiny(data_dir, tmp_path / "run")

    def error_of(argv):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    missing = tmp_path / "missing"
    assert str(missing) in error_of(_argv(TrainConfig(**{**cfg.__dict__, "data": str(missing)})))
    n_val = json.loads((data_dir / "meta.json").read_text())["val_tokens"]
    err = error_of(_argv(TrainConfig(**{**cfg.__dict__, "block_size": n_val + 5})))
    assert f"block_size {n_val + 5} is longer than the data" in err
    err = error_of(_argv(TrainConfig(**{**cfg.__dict__, "block_size": n_val - 3, "batch_size": 50})))
    assert "a batch of 50 windows cannot be drawn from val.bin" in err
    assert not (tmp_path / "run").exists()  # nothing written by the failed runs

    # a checkpoint trained on one tokenizer, resumed on data with another
    assert cli.main(_argv(cfg) + ["--max-iters", "1", "--eval-interval", "1"]) == 0
    capsys.readouterr()
    other = tmp_path / "other.txt"
    other.write_text(train_text.upper())
    prepare(other, "char", tmp_path / "data2")
    before = (tmp_path / "run" / "ckpt" / "model.safetensors").read_bytes()
    err = error_of(_argv(TrainConfig(**{**cfg.__dict__, "data": str(tmp_path / "data2")})) + ["--resume"])
    assert "does not match" in err and "tokenizer.json" in err
    assert (tmp_path / "run" / "ckpt" / "model.safetensors").read_bytes() == before
    assert "already holds a checkpoint" in error_of(_argv(cfg))


def test_cli_exit_code_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toygpt", "train", "--data", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"toygpt train: error: data directory {tmp_path / 'nowhere'} does not exist "
        "(make one with `toygpt prepare`)"]


def test_batches_are_windows_of_the_token_file(data_dir):
    from toygpt.data import batch_offsets, get_batch, load_tokens

    tokens = load_tokens(data_dir, "train")
    offsets = batch_offsets(len(tokens), 8, 5, seed=3, step=7, micro_step=1, grad_accum=2)
    x, y = get_batch(tokens, offsets, 8)
    ref = np.asarray(tokens, dtype=np.int64)
    for row, i in enumerate(offsets):
        assert x[row].tolist() == ref[i : i + 8].tolist()
        assert y[row].tolist() == ref[i + 1 : i + 9].tolist()
    again = batch_offsets(len(tokens), 8, 5, seed=3, step=7, micro_step=1, grad_accum=2)
    assert (again == offsets).all()
    # two ranks with grad_accum 1 draw exactly one process's two micro-batches
    for r in range(2):
        assert (batch_offsets(len(tokens), 8, 5, 3, 7, 0, rank=r, world_size=2)
                == batch_offsets(len(tokens), 8, 5, 3, 7, r, grad_accum=2)).all()


def test_sequential_batches_read_the_stream_once_per_pass_each_rank_its_own():
    """batch_order="sequential" (build-nanogpt's reading): over one pass, 2 ranks x 3 micro-steps
    x 4 rows read every window of the stream exactly once, in order within a micro-batch, whatever
    the seed; one process with grad_accum 6 reads the same windows in each step; then it wraps."""
    from toygpt.data import batch_offsets

    n_tokens, T, B = 24 * 8 * 5 + 3, 8, 4  # 5 steps of 24 windows, and a short tail that never starts one
    per_step = []
    for step in range(5):
        windows = [batch_offsets(n_tokens, T, B, seed=step, step=step, micro_step=m, rank=r, world_size=2,
                                 grad_accum=3, order="sequential") for r in range(2) for m in range(3)]
        for w in windows:
            assert (np.diff(w) == T).all()  # consecutive windows: the last token of one is the next one's first
        single = [batch_offsets(n_tokens, T, B, 0, step, m, grad_accum=6, order="sequential") for m in range(6)]
        assert sorted(np.concatenate(windows).tolist()) == sorted(np.concatenate(single).tolist())
        per_step.append(np.concatenate(windows))
    seen = np.concatenate(per_step)
    assert sorted(seen.tolist()) == list(range(0, 120 * T, T))  # all 120 windows, none twice
    assert (batch_offsets(n_tokens, T, B, 0, 5, 0, grad_accum=6, order="sequential") == [0, 8, 16, 24]).all()
    with pytest.raises(ToyGPTError, match="batch order must be one of random, sequential, got 'shuffled'"):
        batch_offsets(n_tokens, T, B, 0, 0, 0, order="shuffled")


def test_help_lists_the_presets_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "-h"])
    out = capsys.readouterr().out
    presets = out[out.index("presets ("):]
    for name in ("bigram", "mygpt-char", "shakespeare-char", "gpt2"):
        assert f"  {name}:\n" in presets
    shakespeare = presets[presets.index("shakespeare-char:"):presets.index("gpt2:")]
    for flag in ("--n-embd 384", "--block-size 256", "--dropout 0.2", "--no-bias", "--warmup-iters 100"):
        assert flag in shakespeare


def test_generate_cli_samples_from_a_training_checkpoint(data_dir, tmp_path, capsys):
    result = train(tiny(data_dir, tmp_path / "run", max_iters=3, dropout=0.0, sample_tokens=0))
    model = result["model"].eval()
    model.tokenizer = checkpoint.load_model(tmp_path / "run" / "ckpt").tokenizer
    capsys.readouterr()  # the trainer's log
    argv = ["generate", "--model", str(tmp_path / "run" / "ckpt"), "--prompt", "To be",
            "--max-new-tokens", "20", "--top-k", "5", "--seed", "7"]
    assert cli.main(argv) == 0
    expected = "".join(model.generate(prompt="To be", max_new_tokens=20, top_k=5, seed=7))
    assert len(expected) == 20 and capsys.readouterr().out == expected + "\n"


def test_bigram_preset_trains_resumes_and_reloads(data_dir, tmp_path):
    from toygpt.bigram import BigramLanguageModel

    settings = dict(data=str(data_dir), batch_size=8, max_iters=40, eval_interval=20, eval_iters=4,
                    sample_tokens=10, progress=False, device="cpu")
    full = train(make_config("bigram", out=str(tmp_path / "full"), **settings))
    assert isinstance(full["model"], BigramLanguageModel)
    assert np.mean(full["losses"][-5:]) < np.mean(full["losses"][:5]) - 0.1  # it learns
    first = train(make_config("bigram", out=str(tmp_path / "split"), **{**settings, "max_iters": 20}))
    second = train(make_config("bigram", out=str(tmp_path / "split"), resume=True, **settings))
    assert first["losses"] + second["losses"] == full["losses"]
    reloaded = checkpoint.load_model(tmp_path / "split" / "ckpt")
    assert isinstance(reloaded, BigramLanguageModel)
    torch.testing.assert_close(reloaded.state_dict(), full["model"].state_dict(), rtol=0, atol=0)


def _error_of(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_tokenizer_swapped_beside_the_data_is_an_error(train_text, data_dir, tmp_path, capsys):
    # the same number of characters, but not the same characters: only the sha256 can tell
    other = tmp_path / "other.txt"
    other.write_text(train_text.replace("q", "Q"))
    prepare(other, "char", tmp_path / "data2")
    (data_dir / "tokenizer.json").write_bytes((tmp_path / "data2" / "tokenizer.json").read_bytes())
    cfg = tiny(data_dir, tmp_path / "run")
    err = _error_of(_argv(cfg), capsys)
    assert str(data_dir / "tokenizer.json") in err and "does not match the data" in err
    assert not (tmp_path / "run").exists()


def test_token_files_that_do_not_fit_meta_json_are_errors(data_dir, tmp_path, capsys):
    cfg = tiny(data_dir, tmp_path / "run")
    train_bin = data_dir / "train.bin"
    raw = train_bin.read_bytes()
    train_bin.write_bytes(raw[:-20])  # 10 whole uint16 tokens short
    n = len(raw) // 2
    err = _error_of(_argv(cfg), capsys)
    assert f"{train_bin} holds {n - 10} tokens but meta.json says {n}" in err
    train_bin.write_bytes(raw[:-1])  # half a token
    assert f"{train_bin} is truncated" in _error_of(_argv(cfg), capsys)
    assert not (tmp_path / "run").exists()


def test_bad_device_and_dtype_are_one_line_errors(data_dir, tmp_path, capsys):
    argv = _argv(tiny(data_dir, tmp_path / "run"))
    at = argv.index("--device") + 1
    err = _error_of(argv[:at] + ["tpu:0"] + argv[at + 1:], capsys)
    assert "--device 'tpu:0'" in err
    if not torch.cuda.is_available():
        err = _error_of(argv[:at] + ["cuda"] + argv[at + 1:], capsys)
        assert "--device cuda: CUDA is not available" in err
    assert "argument --dtype: must be one of auto, float32, bfloat16, float16, got 'fp8'" in _error_of(
        argv + ["--dtype", "fp8"], capsys)
    assert "argument --batch-size: must be at least 1, got 0" in _error_of(argv + ["--batch-size", "0"], capsys)
    assert not (tmp_path / "run").exists()


def test_an_unwritable_run_directory_is_a_one_line_error(data_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    err = _error_of(_argv(tiny(data_dir, tmp_path / "file" / "run")), capsys)
    assert f"cannot create the run directory --out {tmp_path / 'file' / 'run'}" in err


def test_resume_from_the_cli_takes_the_checkpoints_data_and_notes_changed_settings(data_dir, tmp_path, capsys):
    cfg = tiny(data_dir, tmp_path / "run")
    assert cli.main(_argv(cfg) + ["--max-iters", "2", "--eval-interval", "2"]) == 0
    capsys.readouterr()
    argv = _argv(cfg)
    at = argv.index("--data")
    del argv[at : at + 2]  # no --data: the checkpoint's
    assert cli.main(argv + ["--resume", "--max-iters", "4", "--eval-interval", "2", "--learning-rate", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "note: resuming" in out and "learning_rate 0.001 -> 0.01" in out  # the preset's, then the flag
    assert "max_iters" not in out.split("note:")[1].split("\n")[0]  # a per-run setting
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert checkpoint.load_state(tmp_path / "run" / "ckpt")["config"]["data"] == str(data_dir)


def test_generate_cli_samples_from_a_bigram_checkpoint(train_text, data_dir, tmp_path, capsys):
    """`toygpt generate --model <bigram run>/ckpt`: the bigram model shares the GPT's generation."""
    from toygpt.cli import main

    train(make_config("bigram", data=str(data_dir), out=str(tmp_path / "run"), max_iters=5,
                      eval_interval=5, eval_iters=1, progress=False, sample_tokens=0))
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "run" / "ckpt"), "--prompt", "To be",
                 "--max-new-tokens", "20", "--seed", "3"]) in (0, None)
    sampled = capsys.readouterr().out
    assert 0 < len(sampled.rstrip("\n")) <= 20 and set(sampled) <= set(train_text)
    assert main(["generate", "--model", str(tmp_path / "run" / "ckpt"), "--prompt", "To be",
                 "--max-new-tokens", "20", "--greedy"]) in (0, None)
    greedy = capsys.readouterr().out
    # greedy bigram decoding follows the table's argmax from the prompt's last character
    from toygpt.checkpoint import load_model

    model = load_model(tmp_path / "run" / "ckpt")
    ids = model.tokenizer.encode("To be")
    for _ in range(20):
        ids.append(int(model.token_embedding_table.weight[ids[-1]].argmax()))
    assert greedy.rstrip("\n") == model.tokenizer.decode(ids[len("To be"):])


def test_bf16_and_fp16_autocast_train_on_a_cpu_and_track_fp32(data_dir, tmp_path):
    # The same run (same initial weights and batches, no dropout) in float32 and under autocast.
    # Tolerance: bf16 keeps 8 significant bits (a relative rounding of 2^-9 ~ 0.2% per matmul
    # output), fp16 11; after the same 40 Adam steps the losses of a 2-layer model measured here
    # differ from fp32's by at most ~0.002 (bf16) and ~0.0005 (fp16). We allow 0.02 + 1%, ten
    # times that, and require the runs to differ at all (autocast really ran in lower precision).
    def run(dtype):
        cfg = tiny(data_dir, tmp_path / dtype, n_layer=2, n_embd=32, block_size=16, dropout=0.0,
                   batch_size=8, max_iters=40, eval_interval=40, eval_iters=4, sample_tokens=0,
                   warmup_iters=0, decay_lr=False, dtype=dtype)
        return train(cfg)

    fp32 = run("float32")
    assert fp32["losses"][-1] < fp32["losses"][0] - 1.0  # it learned something
    for dtype in ("bfloat16", "float16"):
        low = run(dtype)
        assert low["losses"] != fp32["losses"], f"{dtype}: identical to float32, autocast did not run"
        for step, (a, b) in enumerate(zip(low["losses"], fp32["losses"]), 1):
            assert abs(a - b) <= 0.02 + 0.01 * b, f"{dtype} step {step}: loss {a} vs float32 {b}"
        assert low["evals"][-1]["val_loss"] == pytest.approx(fp32["evals"][-1]["val_loss"], rel=0.02)
    # fp16 ran with the gradient scaler (as nanoGPT does): its state is saved, with 40 good steps
    state = torch.load(checkpoint.resolve(tmp_path / "float16" / "ckpt") / checkpoint.STATE_FILE,
                       weights_only=False)
    assert state["scaler"]["_growth_tracker"] == 40 and state["scaler"]["scale"] > 0
    bf16_state = torch.load(checkpoint.resolve(tmp_path / "bfloat16" / "ckpt") / checkpoint.STATE_FILE,
                            weights_only=False)
    assert bf16_state["scaler"] == {}  # no scaler for bf16: its range is float32's


def test_gpt2_fineweb_preset_is_build_nanogpts_recipe():
    # karpathy/build-nanogpt's train_gpt2.py: total_batch_size 2**19 tokens, max_steps 19073,
    # warmup_steps 715, max_lr 6e-4, min_lr = max_lr * 0.1, weight decay 0.1, betas (0.9, 0.95)
    cfg = make_config("gpt2-fineweb")
    assert cfg.batch_size * cfg.block_size * cfg.grad_accum == 2**19
    assert (cfg.max_iters, cfg.lr_decay_iters, cfg.warmup_iters) == (19073, 19073, 715)
    assert (cfg.learning_rate, cfg.min_lr, cfg.weight_decay, cfg.beta1, cfg.beta2, cfg.grad_clip) == (
        6e-4, pytest.approx(6e-4 * 0.1), 0.1, 0.9, 0.95, 1.0)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout) == (12, 12, 768, 0.0)
