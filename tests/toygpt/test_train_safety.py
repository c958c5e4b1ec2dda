"""What the trainer must never lose or misreport: the last good checkpoint when a run diverges,
an overwritten run's directory after a crash, prepared data, and a resumed run's own settings."""

import dataclasses
import json
import os

import pytest
import torch
from toygpt import checkpoint, cli
from toygpt.errors import ToyGPTError
from toygpt.prepare import prepare
from toygpt.train import TrainConfig, get_lr, make_config, train


def tiny(data_dir, out, **kw):
    """A 1-layer, 16-channel GPT: seconds per run on a CPU."""
    settings = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0, batch_size=4,
                    max_iters=4, eval_interval=2, eval_iters=2, sample_tokens=0, data=str(data_dir),
                    out=str(out), progress=False, device="cpu")
    return make_config("mygpt-char", **{**settings, **kw})


def again(cfg, **kw):
    return TrainConfig(**{**cfg.__dict__, **kw})


def strict_records(path):
    """metrics.jsonl read by a strict JSON parser: bare NaN / Infinity are errors."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def snapshot(ckpt):
    return {f.name: f.read_bytes() for f in sorted(ckpt.iterdir())}


# ----------------------------------------------------------------------------------------------
# divergence: non-finite weights are never saved


def test_a_diverged_update_is_not_saved_over_the_last_good_checkpoint(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path / "run")
    train(cfg)
    ckpt = tmp_path / "run" / "ckpt"
    good = snapshot(ckpt)
    # step 5's loss is computed before its update, so it is finite; the update blows the
    # weights up, and the evaluation after it is not finite
    with pytest.raises(ToyGPTError) as info:
        train(again(cfg, resume=True, learning_rate=1e30, eval_interval=1, max_iters=6))
    message = str(info.value)
    assert "at step 5" in message and "not saved" in message
    assert f"the last good checkpoint is {ckpt} (step 4)" in message
    assert snapshot(ckpt) == good
    state = checkpoint.load_state(ckpt)
    assert state["step"] == 4
    assert all(torch.isfinite(p).all() for p in checkpoint.load_model(ckpt).parameters())
    # the curve shows the divergence, in strict JSON: the non-finite losses are null
    records = strict_records(tmp_path / "run" / "metrics.jsonl")
    last = records[-1]
    assert last["step"] == 5 and None in (last["train_loss"], last["val_loss"])


def test_a_divergence_before_the_first_save_says_there_is_no_checkpoint(data_dir, tmp_path):
    with pytest.raises(ToyGPTError, match="at step 1: stopping; no checkpoint was saved"):
        train(tiny(data_dir, tmp_path / "run", learning_rate=1e30, eval_interval=1))
    assert not checkpoint.exists(tmp_path / "run" / "ckpt")


def test_a_checkpoint_with_non_finite_weights_is_not_resumed(data_dir, tmp_path):
    """One written by a version that did not check: resuming would only reproduce the NaN."""
    cfg = tiny(data_dir, tmp_path / "run", max_iters=2)
    result = train(cfg)
    state = checkpoint.load_state(tmp_path / "run" / "ckpt")
    with torch.no_grad():
        result["model"].transformer.wte.weight[0, 0] = float("nan")
    checkpoint.save_checkpoint(tmp_path / "run" / "ckpt", result["model"], None, state)
    with pytest.raises(ToyGPTError, match="holds non-finite weights"):
        train(again(cfg, resume=True, max_iters=4))


# ----------------------------------------------------------------------------------------------
# --overwrite: the run directory is one run's, old or new, whatever the moment of a crash


def test_an_overwritten_run_never_keeps_the_old_checkpoint_beside_the_new_curve(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path / "run")
    train(cfg)

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed before the new run's first checkpoint

    monkeypatch.setattr(checkpoint, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        train(again(cfg, overwrite=True, seed=7))
    ckpt = tmp_path / "run" / "ckpt"
    assert not checkpoint.exists(ckpt)  # the old run's checkpoint went before its curve did
    steps = [r["step"] for r in strict_records(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2]  # the new run's, up to the crash
    assert not (tmp_path / "run" / "loss.png").exists()  # the old run's plot went too


def test_a_crash_while_removing_the_old_checkpoint_leaves_the_old_run_whole(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path / "run")
    train(cfg)
    run = tmp_path / "run"
    ckpt = run / "ckpt"
    # a crash after a save's last rename, before the copy it renamed aside was deleted, leaves
    # both: the step-4 checkpoint, and beside it the step-2 one
    train(again(cfg, max_iters=2, out=str(tmp_path / "older")))
    os.replace(tmp_path / "older" / "ckpt", run / ".ckpt.old")
    replace = os.replace
    calls = []

    def replace_once(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the second rename of checkpoint.remove: killed
            raise KeyboardInterrupt
        return replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        train(again(cfg, overwrite=True))
    monkeypatch.undo()
    # the crash-window copy went first: what survives is the step-4 checkpoint, with its curve
    # (removed the other way round, the step-2 copy would be found beside a curve up to step 4)
    assert checkpoint.resolve(ckpt) == ckpt and checkpoint.load_state(ckpt)["step"] == 4
    assert [r["step"] for r in strict_records(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_a_fresh_run_refuses_a_checkpoint_a_crash_left_aside(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path / "run")
    train(cfg)
    os.replace(tmp_path / "run" / "ckpt", tmp_path / "run" / ".ckpt.old")  # crash mid-save
    with pytest.raises(ToyGPTError, match="already holds a checkpoint"):
        train(cfg)
    assert checkpoint.load_state(tmp_path / "run" / "ckpt")["step"] == 4


def test_a_run_directory_with_a_checkpoint_is_refused_without_overwrite(data_dir, tmp_path):
    """What toygpt-demo relies on to leave an existing run alone unless asked."""
    cfg = tiny(data_dir, tmp_path / "run")
    train(cfg)
    before = snapshot(tmp_path / "run" / "ckpt")
    with pytest.raises(ToyGPTError, match="pass --resume to continue it, --overwrite to start afresh"):
        train(again(cfg, seed=3))
    assert snapshot(tmp_path / "run" / "ckpt") == before


# ----------------------------------------------------------------------------------------------
# prepared data: not replaced silently, and a checkpoint knows what it was trained on


def test_prepare_refuses_to_replace_data_without_overwrite(train_text, tmp_path, capsys):
    src = tmp_path / "text.txt"
    src.write_text(train_text)
    prepare(src, "char", tmp_path / "data")
    before = {f.name: f.read_bytes() for f in (tmp_path / "data").iterdir()}
    other = tmp_path / "other.txt"
    other.write_text(train_text[::-1])
    with pytest.raises(ToyGPTError, match=r"already holds prepared data \(meta.json"):
        prepare(other, "char", tmp_path / "data")
    code = cli.main(["prepare", "--input", str(other), "--out", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert {f.name: f.read_bytes() for f in (tmp_path / "data").iterdir()} == before
    assert cli.main(["prepare", "--input", str(other), "--out", str(tmp_path / "data"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "data" / "meta.json").read_text())["source"] == str(other)


def test_resume_on_other_data_with_the_same_tokenizer_is_refused(train_text, data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path / "run")
    train(cfg)
    # the same characters in another order: the tokenizer matches, the tokens do not
    other = tmp_path / "other.txt"
    other.write_text("".join(reversed(train_text.splitlines(keepends=True))))
    prepare(other, "char", data_dir, overwrite=True)
    with pytest.raises(ToyGPTError, match=r"is not the data checkpoint .* was trained on .*source_sha256"):
        train(again(cfg, resume=True, max_iters=6))
    # a copy of the same data elsewhere is the same data
    prepare(tmp_path / "text.txt", "char", tmp_path / "copy")
    prepare(tmp_path / "text.txt", "char", data_dir, overwrite=True)
    assert len(train(again(cfg, resume=True, max_iters=6, data=str(tmp_path / "copy")))["losses"]) == 2


# ----------------------------------------------------------------------------------------------
# --resume continues the run with its own settings


def test_plain_resume_takes_the_runs_own_settings_not_the_presets(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(data_dir), "--out", str(run), "--n-layer", "1", "--n-head", "2",
                     "--n-embd", "16", "--block-size", "8", "--batch-size", "4", "--eval-iters", "2",
                     "--max-iters", "2", "--eval-interval", "2", "--sample-tokens", "0", "--no-progress",
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", str(run), "--resume", "--max-iters", "4", "--no-progress",
                     "--device", "cpu"]) == 0
    assert "note:" not in capsys.readouterr().out  # nothing changed but the length
    saved = json.loads((run / "ckpt" / "train_config.json").read_text())
    assert (saved["n_layer"], saved["n_embd"], saved["batch_size"], saved["eval_iters"]) == (1, 16, 4, 2)
    assert saved["max_iters"] == 4 and checkpoint.load_state(run / "ckpt")["step"] == 4
    assert checkpoint.load_model(run / "ckpt").config.n_embd == 16


def test_a_setting_newer_than_the_checkpoint_resumes_as_runs_had_it_then():
    """A checkpoint's TrainConfig from before a field existed (decay_all, batch_order) continues
    with that field's default, what the run had, not with today's preset (mygpt-char now decays
    every parameter); a field the command line sets is taken."""
    from toygpt.config import make_config, resumed_config

    saved = {k: v for k, v in dataclasses.asdict(make_config("mygpt-char", data="d")).items()
             if k not in ("decay_all", "batch_order")}
    cfg = make_config("mygpt-char", resume=True, max_iters=9000)
    resumed, _ = resumed_config(cfg, saved, given={"resume", "max_iters"})
    assert (resumed.decay_all, resumed.batch_order, resumed.max_iters) == (False, "random", 9000)
    resumed, _ = resumed_config(cfg, saved, given={"resume", "decay_all"})
    assert resumed.decay_all is True


def test_resume_refuses_a_change_of_the_models_shape(data_dir, tmp_path, capsys):
    cfg = tiny(data_dir, tmp_path / "run", max_iters=2)
    train(cfg)
    code = cli.main(["train", "--out", cfg.out, "--resume", "--n-embd", "32", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--n-embd 32 does not fit checkpoint" in err and "n_embd 16" in err
    with pytest.raises(ToyGPTError, match="--n-layer 2 does not fit"):
        train(again(cfg, resume=True, n_layer=2))


def test_resume_with_more_steps_keeps_the_runs_learning_rate_schedule(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path / "run", decay_lr=True, warmup_iters=1, learning_rate=3e-3, min_lr=3e-4)
    assert cfg.lr_decay_iters is None  # the schedule decays over max_iters, 4
    train(cfg)
    notes = []
    train(again(cfg, resume=True, max_iters=8), log=notes.append)
    lrs = [r["lr"] for r in strict_records(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    run_schedule = again(cfg, lr_decay_iters=4)
    assert lrs == pytest.approx([get_lr(s, run_schedule) for s in range(8)])
    assert lrs[4:] == pytest.approx([3e-4] * 4)  # stays at min_lr, no jump back up
    assert any("stays at min_lr" in n for n in notes)
    # asked for, a longer schedule is applied, and noted
    notes.clear()
    train(again(cfg, resume=True, max_iters=10, lr_decay_iters=10), log=notes.append)
    assert any("lr_decay_iters 4 -> 10" in n for n in notes)
    assert checkpoint.load_state(tmp_path / "run" / "ckpt")["config"]["lr_decay_iters"] == 10
