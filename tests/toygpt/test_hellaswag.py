"""`toygpt eval`: HellaSwag and dataset loss of a random GPT-2-shaped model, against the same
weights run by transformers with tiktoken's tokens (an independent implementation of both)."""

import json

import numpy as np
import pytest
import torch
from toygpt import cli, data
from toygpt.tokenizers.gpt2 import ENV_VAR

CONTEXTS = ["A man is sitting on a roof. he", "A woman walks into the kitchen and", "The dog runs across",
            "Two kids are playing chess while their", "She opens the laptop, types a few words and then",
            "After the rain stopped, the children", "The chef slices the onions and"]
ENDINGS = ["is using wrap to wrap a pair of skis.", "starts pulling up roofing on a roof.",
           "puts the kettle on the stove.", "barks loudly at the mailman, who drops every letter.",
           "smiles.", "goes outside to play in the puddles near the old oak tree.", "reads it aloud."]


@pytest.fixture
def hellaswag_file(tmp_path):
    """Examples in HellaSwag's own JSON Lines format, with endings of different lengths (so that
    acc and acc_norm can differ)."""
    path = tmp_path / "hellaswag_val.jsonl"
    with open(path, "w") as f:
        for i, ctx in enumerate(CONTEXTS):
            endings = [ENDINGS[(i + k) % len(ENDINGS)] for k in range(4)]
            f.write(json.dumps({"ind": i, "ctx": ctx, "endings": endings, "label": i % 4,
                                "split": "val", "activity_label": "test"}) + "\n")
    return path


@pytest.fixture
def gpt2_files(gpt2_vocab_dir, monkeypatch):
    from toygpt.tokenizers import GPT2Tokenizer

    monkeypatch.setenv(ENV_VAR, str(gpt2_vocab_dir))
    return GPT2Tokenizer(gpt2_vocab_dir).encoding


@pytest.fixture
def gpt2_shaped(make_hf_checkpoint):
    """A random model with GPT-2's vocabulary, small otherwise, saved by transformers."""
    return make_hf_checkpoint(n_layer=2, n_head=2, n_embd=32, vocab_size=50257, n_positions=64, seed=1)


def reference_scores(hf_model, encoding, example):
    """Each ending's summed and mean loss, by transformers on one unpadded row per ending:
    the labels of the context are -100, so transformers' loss is the mean over the ending."""
    ctx = encoding.encode_ordinary(example["ctx"])
    sums, means = [], []
    for ending in example["endings"]:
        end = encoding.encode_ordinary(" " + ending)
        ids = torch.tensor([ctx + end])
        labels = torch.tensor([[-100] * len(ctx) + end])
        with torch.no_grad():
            mean = hf_model(input_ids=ids, labels=labels).loss.item()
        means.append(mean)
        sums.append(mean * len(end))
    return sums, means


def test_hellaswag_agrees_with_transformers_example_by_example(tmp_path, hellaswag_file, gpt2_files,
                                                               gpt2_shaped, capsys):
    model_dir, hf_model = gpt2_shaped
    out = tmp_path / "scores.json"
    assert cli.main(["eval", "hellaswag", "--model", str(model_dir), "--data", str(hellaswag_file),
                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    examples = [json.loads(line) for line in hellaswag_file.read_text().splitlines()]
    assert result["examples"] == len(examples) and result["contexts_cropped"] == 0
    correct = correct_norm = 0
    for example, row in zip(examples, result["per_example"]):
        sums, means = reference_scores(hf_model, gpt2_files, example)
        np.testing.assert_allclose(row["sum_loss"], sums, rtol=1e-4)
        np.testing.assert_allclose(row["mean_loss"], means, rtol=1e-4)
        assert row["pred"] == int(np.argmin(sums)) and row["pred_norm"] == int(np.argmin(means))
        correct += row["pred"] == example["label"]
        correct_norm += row["pred_norm"] == example["label"]
    assert (result["correct"], result["correct_norm"]) == (correct, correct_norm)
    assert result["acc"] == correct / len(examples) and result["acc_norm"] == correct_norm / len(examples)
    assert any(r["pred"] != r["pred_norm"] for r in result["per_example"])  # the two rules differ here
    printed = capsys.readouterr().out
    assert f"{len(examples)} examples, acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}" in printed


def test_hellaswag_limit_and_a_cropped_context(tmp_path, hellaswag_file, gpt2_files, gpt2_shaped):
    from toygpt.evaluate import hellaswag, load_model, read_hellaswag

    model, tokenizer = load_model(str(gpt2_shaped[0]), "cpu")
    examples = read_hellaswag(hellaswag_file, limit=2)
    assert [e["ind"] for e in examples] == [0, 1]
    long = dict(examples[0], ctx=" ".join(["word"] * 100))  # 100 tokens: more than block_size 64
    result = hellaswag(model, tokenizer, [long])
    assert result["contexts_cropped"] == 1


@pytest.mark.parametrize("content, match", [("not json\n", "line 1 is not JSON"),
                                            ('{"ctx": "a", "endings": ["b"], "label": 0}\n',
                                             "line 1 is not a HellaSwag example")])
def test_hellaswag_bad_files_are_one_line(tmp_path, gpt2_shaped, capsys, content, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert cli.main(["eval", "hellaswag", "--model", str(gpt2_shaped[0]), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert match in err and str(bad) in err and err.count("\n") == 1


def test_hellaswag_offline_says_to_pass_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_reachable", lambda url, timeout: False)
    assert cli.main(["eval", "hellaswag", "--model", str(tmp_path / "nomodel")]) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "--data FILE" in err and err.count("\n") == 1


def test_eval_loss_agrees_with_transformers(tmp_path, gpt2_files, gpt2_shaped, capsys):
    from toygpt.shards import prepare_shards

    model_dir, hf_model = gpt2_shaped
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"{c} {e}"}) + "\n" for c in CONTEXTS for e in ENDINGS))
    prepare_shards([docs], tmp_path / "data", shard_tokens=300, workers=0, progress_bar=False, log=None)
    out = tmp_path / "loss.json"
    assert cli.main(["eval", "loss", "--model", str(model_dir), "--data", str(tmp_path / "data"),
                     "--split", "train", "--batch-size", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # the reference: the train shards read as plain files, cut into windows of 64 + 1 tokens
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    stream = np.concatenate([np.fromfile(tmp_path / "data" / s["file"], dtype=np.uint16)
                             for s in meta["shards"] if s["split"] == "train"]).astype(np.int64)
    n = (len(stream) - 1) // 64
    x = torch.from_numpy(stream[: n * 64].reshape(n, 64))
    y = torch.from_numpy(stream[1 : n * 64 + 1].reshape(n, 64))
    with torch.no_grad():
        logits = hf_model(input_ids=x).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    assert result["windows"] == n and result["tokens"] == n * 64
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert f"train loss {result['loss']:.4f}" in capsys.readouterr().out
    # --batches: the first batches only
    assert cli.main(["eval", "loss", "--model", str(model_dir), "--data", str(tmp_path / "data"),
                     "--split", "train", "--batch-size", "2", "--batches", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["windows"] == 2


def test_hellaswag_during_training_is_logged_and_is_the_models_score(tmp_path, hellaswag_file, gpt2_files,
                                                                     shakespeare_path):
    # --hellaswag-every: scores at steps 2 and 4 (the last) beside the losses; the last one equals
    # what `toygpt eval hellaswag` gives the checkpoint saved at that step
    from toygpt.config import make_config
    from toygpt.evaluate import hellaswag, load_model, read_hellaswag
    from toygpt.prepare import prepare
    from toygpt.train import train

    (tmp_path / "text.txt").write_text(shakespeare_path.read_text()[:20_000])
    prepare(tmp_path / "text.txt", "gpt2", tmp_path / "data")
    cfg = make_config("mygpt-char", n_layer=1, n_head=2, n_embd=16, block_size=64, batch_size=2,
                      max_iters=4, eval_interval=4, eval_iters=1, sample_tokens=0, dropout=0.0,
                      data=str(tmp_path / "data"), out=str(tmp_path / "run"), progress=False, device="cpu",
                      hellaswag_every=2, hellaswag_data=str(hellaswag_file), hellaswag_limit=5)
    train(cfg, log=lambda *a: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [r for r in records if "hellaswag_acc" in r]
    assert [r["step"] for r in scores] == [2, 4] and all(r["hellaswag_examples"] == 5 for r in scores)
    model, tokenizer = load_model(str(tmp_path / "run"), "cpu")
    want = hellaswag(model, tokenizer, read_hellaswag(hellaswag_file, 5))
    assert (scores[-1]["hellaswag_acc"], scores[-1]["hellaswag_acc_norm"]) == (want["acc"], want["acc_norm"])
    # a character-level run cannot be scored: one clear error before any step
    prepare(tmp_path / "text.txt", "char", tmp_path / "chars")
    bad = make_config("mygpt-char", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2, max_iters=2,
                      data=str(tmp_path / "chars"), out=str(tmp_path / "run2"), progress=False, device="cpu",
                      hellaswag_every=1, hellaswag_data=str(hellaswag_file))
    with pytest.raises(Exception, match="--tokenizer gpt2"):
        train(bad, log=lambda *a: None)
