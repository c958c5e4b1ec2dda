"""`toygpt generate`: streams the same text as model.generate; bad input is one line, exit 2."""

import torch
from toygpt import GPT, GPTConfig
from toygpt.cli import main
from toygpt.tokenizers import CharTokenizer


def make_checkpoint(path):
    tok = CharTokenizer.from_text("To be, or not to be: that is the question.\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("mygpt-char", vocab_size=tok.vocab_size, n_layer=1))
    model.save_pretrained(path)
    tok.save(path / "tokenizer.json")
    return model, tok


def test_cli_streams_what_generate_gives(tmp_path, capsys):
    model, tok = make_checkpoint(tmp_path)
    model.tokenizer = tok
    code = main(["generate", "--model", str(tmp_path), "--prompt", "To be", "--max-new-tokens", "30",
                 "--top-k", "5", "--top-p", "0.9", "--temperature", "0.8", "--seed", "3"])
    assert code == 0
    expected = "".join(model.generate(prompt="To be", max_new_tokens=30, top_k=5, top_p=0.9,
                                      temperature=0.8, seed=3))
    assert len(expected) == 30
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", "--model", str(tmp_path), "--prompt", "To", "--greedy",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == "".join(model.generate(prompt="To", max_new_tokens=5, greedy=True)) + "\n"


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    make_checkpoint(tmp_path)
    cases = [
        (["--temperature", "-1"], "temperature must be a number >= 0"),
        (["--top-k", "0"], "top_k must be an int >= 1"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--prompt", ""], "empty prompt"),
    ]
    for extra, message in cases:
        argv = ["generate", "--model", str(tmp_path), "--prompt", "To"] + extra
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("toygpt generate: error: ") and message in err, err
    assert main(["generate", "--model", str(tmp_path / "missing")]) == 2
    assert "missing: no such directory" in capsys.readouterr().err


def test_a_model_without_its_tokenizer_is_a_command_line_error(tmp_path, capsys):
    make_checkpoint(tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # a char model's vocabulary is not GPT-2's
    assert main(["generate", "--model", str(tmp_path), "--prompt", "To"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tokenizer.json" in err and "vocab_size" in err, err
    assert "tokenizer=" not in err  # the Python API's advice, not a command line's
