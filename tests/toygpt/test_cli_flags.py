"""toygpt's flags (declared with their ranges on the config dataclasses) and its one error handler,
and the argument checks of the library calls behind the commands."""

import math
import os
import re

import pytest
import torch
from toygpt import cli, demo
from toygpt.errors import ToyGPTError
from toygpt.flags import ErrorGuard
from toygpt.model import GPT, GPTConfig
from toygpt.tokenizers import CharTokenizer
from toygpt.train import TrainConfig


@pytest.mark.parametrize("argv, names", [
    (["--learning-rate", "-1"], ["argument --learning-rate: must be greater than 0, got -1.0"]),
    (["--learning-rate", "nan"], ["argument --learning-rate: expected a finite number, got 'nan'"]),
    (["--beta1", "2"], ["argument --beta1: must be in [0, 1), got 2.0"]),
    (["--grad-clip", "-1"], ["argument --grad-clip: must be at least 0, got -1.0"]),
    (["--weight-decay", "-5"], ["argument --weight-decay: must be at least 0, got -5.0"]),
    (["--sample-tokens", "-1"], ["argument --sample-tokens: must be at least 0, got -1"]),
    (["--resume", "--overwrite"], ["--resume and --overwrite contradict each other"]),
])
def test_train_flags_out_of_range_are_one_line_before_any_work(one_line_error, argv, names, tmp_path, capsys):
    code = cli.main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")] + argv)
    one_line_error(code, "toygpt train: error: ", *names)
    assert not (tmp_path / "run").exists()


def test_the_same_checks_guard_a_config_built_in_python():
    with pytest.raises(ToyGPTError, match=r"TrainConfig.learning_rate must be greater than 0, got -1"):
        TrainConfig(learning_rate=-1)
    with pytest.raises(ToyGPTError, match=r"TrainConfig.beta2 must be a finite number, got nan"):
        TrainConfig(beta2=math.nan)
    with pytest.raises(ToyGPTError, match=r"TrainConfig.batch_size must be int, got 2.5"):
        TrainConfig(batch_size=2.5)


def test_help_shows_each_range_next_to_its_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "-h"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate; must be greater than 0 (default: 0.001)" in help_text
    assert "AdamW beta1; must be in [0, 1) (default: 0.9)" in help_text


def test_argparse_errors_are_one_line_pointing_at_help(one_line_error, capsys):
    one_line_error(cli.main(["train", "--n-layer", "two"]),
                    "toygpt train: error: argument --n-layer: expected an integer, got 'two' (see toygpt train -h)")
    one_line_error(cli.main(["train", "--bogus"]), "unrecognized arguments: --bogus")
    one_line_error(cli.main([]), "toygpt: error: ", "command")


def test_an_unexpected_error_is_one_line_naming_a_log_with_the_traceback(capsys, monkeypatch):
    def crash(args):
        raise RuntimeError("something no check foresaw")

    monkeypatch.setattr("toygpt.train.run", crash)
    code = cli.main(["train"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("toygpt train: internal error: RuntimeError: something no check foresaw")
    log = re.search(r"the traceback is in (\S+)\)", err).group(1)
    assert "Traceback" in open(log).read() and "crash" in open(log).read()
    os.unlink(log)


def test_the_guard_passes_help_and_interrupts_through():
    with pytest.raises(SystemExit):
        with ErrorGuard("x"):
            raise SystemExit(0)
    guard = ErrorGuard("x")
    with guard:
        raise KeyboardInterrupt
    assert guard.exit_code == 130


def test_an_os_error_names_its_file(capsys):
    guard = ErrorGuard("toygpt prepare")
    with guard:
        open("/proc/no/such/file")
    assert guard.exit_code == 2
    assert capsys.readouterr().err == "toygpt prepare: error: /proc/no/such/file: No such file or directory\n"


def test_generate_bounds_max_new_tokens_and_documents_its_flags(one_line_error, capsys):
    one_line_error(cli.main(["generate", "--model", "gpt2", "--max-new-tokens", "1000000000000"]),
                    "argument --max-new-tokens: must be in [0, 1000000], got 1000000000000")
    with pytest.raises(SystemExit):
        cli.main(["generate", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-new-tokens N tokens to sample", "--top-k K sample only", "--top-p P nucleus"):
        assert flag in out, out
    assert "(default: 256)" in out and out.count("(default: None)") >= 2


def test_prepare_says_when_bpe_gives_fewer_ids_than_asked(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("to be or not to be\n" * 20)
    assert cli.main(["prepare", "--input", str(src), "--out", str(tmp_path / "d"), "--tokenizer", "bpe:1000000"]) == 0
    err = capsys.readouterr().err
    assert "note: --tokenizer bpe:1000000 asked for 1,000,000 ids" in err and str(src) in err


def test_prepare_checks_its_flags_before_reading_the_input(one_line_error, tmp_path, capsys):
    argv = ["prepare", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "d")]
    one_line_error(cli.main(argv + ["--tokenizer", "bpe:10"]), "argument --tokenizer: 'bpe:10'")
    one_line_error(cli.main(argv + ["--val-fraction", "1"]), "argument --val-fraction: must be in (0, 1)")


@pytest.mark.parametrize("argv, name", [
    (["--max-iters", "0"], "argument --max-iters: must be at least 1, got 0"),
    (["--n-test", "0"], "argument --n-test: must be at least 1, got 0"),
    (["--n-test", "10000000"], "argument --n-test: must be less than 405,000 with 3-digit operands"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--digits", "30"], "argument --digits: must be in [3, 9], got 30"),
    (["--out", "/proc/x", "--max-iters", "1", "--n-test", "8", "--batch-size", "8", "--no-progress"],
     "--out /proc/x"),
])
def test_demo_flags_are_checked(one_line_error, argv, name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(demo.main(argv), "toygpt-demo: error: ", name)
    assert not (tmp_path / "runs").exists()


# ---- the library calls behind the commands ----


def test_char_presets_need_the_datas_vocab_size():
    with pytest.raises(ToyGPTError, match=r"GPTConfig.preset\('mygpt-char'\) needs vocab_size"):
        GPTConfig.preset("mygpt-char")
    assert GPTConfig.preset("shakespeare-char", vocab_size=65).vocab_size == 65
    assert GPTConfig.preset("gpt2").vocab_size == 50257


def test_an_empty_char_vocabulary_is_an_error():
    with pytest.raises(ToyGPTError, match="CharTokenizer vocabulary is empty"):
        CharTokenizer("")


def test_generate_names_a_prompt_of_the_wrong_type():
    model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8))
    model.tokenizer = CharTokenizer("abcde")
    with pytest.raises(ToyGPTError, match="prompt must be a str or a list of str, got int 123"):
        model.generate(prompt=123, max_new_tokens=2)


def test_causal_attention_names_a_bad_scale():
    from toykernels import causal_attention

    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(TypeError, match="causal_attention: scale must be a number or None, got str 'a'"):
        causal_attention(q, q, q, scale="a")


def test_compiled_forward_has_no_graph_break():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)).eval()
    idx = torch.randint(0, 11, (2, 8))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    with pytest.raises(ToyGPTError, match="token id 11 is outside the vocabulary"):
        model(torch.full((1, 3), 11))  # eager calls keep the range check
