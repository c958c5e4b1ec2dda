"""Sampling and `toygpt generate` on bad numbers and bad paths: an id outside the vocabulary never
comes out, and a model that cannot be loaded is one line naming the path or file."""

import os

import pytest
import torch
from toygpt import GPT, GPTConfig, checkpoint
from toygpt.cli import main
from toygpt.errors import ToyGPTError
from toygpt.tokenizers import CharTokenizer


def small_gpt(vocab_size=50, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


@pytest.mark.parametrize("temperature", [1e-45, 1e-300, 5e-324])
def test_a_tiny_temperature_samples_the_most_likely_token(temperature):
    model = small_gpt()
    idx = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(idx, 6, temperature=temperature, seed=0)
    assert int(out.max()) < model.config.vocab_size
    torch.testing.assert_close(out, model.generate(idx, 6, greedy=True))


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9),
                                     dict(greedy=True)])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_logits_are_an_error_not_a_token(options, poison):
    model = small_gpt()
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(poison)
    with pytest.raises(ToyGPTError, match="the model's logits hold (nan|inf|-inf)"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 3, **options)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -1.0])
def test_a_temperature_that_is_not_a_finite_number_is_refused(temperature):
    with pytest.raises(ToyGPTError, match="temperature must be a number >= 0 .* finite"):
        small_gpt().generate(torch.zeros(1, 1, dtype=torch.long), 1, temperature=temperature)


def _error_of(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _training_checkpoint(path):
    """A checkpoint as the trainer writes it (trainer_state.pt with every file's sha256)."""
    tok = CharTokenizer.from_text("To be, or not to be: that is the question.\n")
    model = small_gpt(vocab_size=tok.vocab_size)
    checkpoint.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    model.tokenizer = tok
    return model


def test_a_path_that_does_not_exist_is_not_found_not_a_hub_lookup(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/typo", "./typo", str(tmp_path / "runs" / "typo" / "ckpt")):
        err = _error_of(["generate", "--model", name], capsys)
        assert f"{name}: no such directory" in err and "Hugging Face" not in err


def test_generate_finds_the_checkpoint_a_crash_mid_save_left_aside(tmp_path, capsys):
    run = tmp_path / "run"
    model = _training_checkpoint(run / "ckpt")
    os.replace(run / "ckpt", run / ".ckpt.old")  # what a crash between a save's two renames leaves
    expected = "".join(model.generate(prompt="To", max_new_tokens=5, greedy=True))
    for name in (run / "ckpt", run):  # the checkpoint, or its run directory, as --resume finds it
        assert main(["generate", "--model", str(name), "--prompt", "To", "--greedy", "--max-new-tokens", "5"]) == 0
        assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("damage", ["truncated", "random-bytes"])
@pytest.mark.parametrize("kind", ["training-checkpoint", "exported-model"])
def test_damaged_weights_are_one_line_naming_the_file(tmp_path, capsys, damage, kind):
    ckpt = tmp_path / "ckpt"
    model = _training_checkpoint(ckpt)
    if kind == "exported-model":  # model.save_pretrained's directory: no recorded sha256 to check
        (ckpt / checkpoint.STATE_FILE).unlink()
    weights = ckpt / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:7] if damage == "truncated" else os.urandom(len(raw)))
    err = _error_of(["generate", "--model", str(ckpt), "--prompt", "To"], capsys)
    assert str(weights) in err and "corrupt or truncated" in err
    del model
