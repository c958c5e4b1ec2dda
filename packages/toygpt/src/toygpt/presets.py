"""Every named preset in one table: a model's shape and, for those `toygpt train` knows, the
recipe it is trained with.

`GPTConfig.preset(name)` takes the shape; `toygpt train --preset NAME` (toygpt.config.make_config)
takes TrainConfig's defaults, then the shape, then the recipe, then the flags given. A
character-level shape has vocab_size None, because GPT-2's 50257 would silently be wrong: the
data's tokenizer gives it (GPTConfig.preset raises until it is passed).

toygrad-train-gpt's defaults are `mygpt-char`'s (toygrad cannot import toygpt; a test holds
the two equal).
"""

from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
    shape: dict | None  # GPTConfig fields; None: not a GPT (the bigram model)
    recipe: dict | None  # TrainConfig fields over the shape; None: `toygpt train` does not offer it


PRESETS: dict[str, Preset] = {
    # Karpathy's "Let's build GPT" bigram model (karpathy/ng-video-lecture, bigram.py): 3000 steps
    # at lr 1e-2, batch 32, context 8, with torch's AdamW defaults (weight decay 0.01, betas
    # 0.9 / 0.999) and no gradient clipping
    "bigram": Preset(None, dict(block_size=8, batch_size=32, max_iters=3000, learning_rate=1e-2, decay_lr=False,
                                weight_decay=0.01, beta2=0.999, grad_clip=0.0, eval_interval=300, eval_iters=200)),
    # dx-dtran/MyGPT's character model (MyGPT/transformer.py, pretrain.py): context 64, 128
    # channels, 8 heads, 4 layers; a ReLU MLP, q/k/v without bias, an output projection of its own
    # with a bias, every module with torch's default initialization; batch 16 and torch's AdamW
    # defaults on every parameter at lr 1e-3 (weight decay 0.01, betas 0.9 / 0.999), constant, no
    # gradient clipping
    "mygpt-char": Preset(
        dict(n_layer=4, n_head=8, n_embd=128, block_size=64, dropout=0.0, vocab_size=None, bias=True,
             activation="relu", tie_embeddings=False, qkv_bias=False, lm_head_bias=True, init="torch"),
        dict(batch_size=16, max_iters=5000, learning_rate=1e-3, decay_lr=False, weight_decay=0.01,
             decay_all=True, beta2=0.999, grad_clip=0.0, eval_interval=500, eval_iters=50)),
    # nanoGPT's "baby GPT", config/train_shakespeare_char.py over train.py's defaults (biases
    # off in the recipe; the shape alone keeps GPTConfig's default, biases on). One difference:
    # nanoGPT also drops attention probabilities (its `attn_dropout`); toygpt's fused attention has
    # no dropout, so here dropout acts on the embeddings and the residual branches only
    "shakespeare-char": Preset(
        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, vocab_size=None),
        dict(bias=False, batch_size=64, max_iters=5000, lr_decay_iters=5000, learning_rate=1e-3,
             min_lr=1e-4, warmup_iters=100, beta2=0.99, weight_decay=0.1, eval_interval=250, eval_iters=200)),
    # the released GPT-2 shapes (Radford et al., 2019); GPT-2 124M is trained on GPT-2 BPE data
    # with nanoGPT's train_gpt2.py recipe (per 8 GPUs: grad_accum 40 / 8)
    "gpt2": Preset(  # 124M
        dict(n_layer=12, n_head=12, n_embd=768),
        dict(block_size=1024, dropout=0.0, bias=True, batch_size=12, grad_accum=40, max_iters=600000,
             lr_decay_iters=600000, learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000, beta2=0.95,
             weight_decay=0.1, eval_interval=1000, eval_iters=200)),
    # GPT-2 124M on FineWeb-Edu's 10B-token sample, karpathy/build-nanogpt's recipe: 2**19 =
    # 524,288 tokens a step (64 x 1024 x 8 on one process; with N processes divide --grad-accum
    # by N), 19,073 steps (one pass over the 10B tokens, read in order, each rank its own
    # windows), 715 warmup steps, a cosine from 6e-4 to 6e-5, AdamW betas 0.9 / 0.95 with weight
    # decay 0.1, gradient clipping at 1.0, val loss every 250 steps over 20 batches
    "gpt2-fineweb": Preset(
        dict(n_layer=12, n_head=12, n_embd=768),
        dict(block_size=1024, dropout=0.0, bias=True, batch_size=64, grad_accum=8, batch_order="sequential",
             max_iters=19073,
             lr_decay_iters=19073, learning_rate=6e-4, min_lr=6e-5, warmup_iters=715, beta2=0.95,
             weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20)),
    "gpt2-medium": Preset(dict(n_layer=24, n_head=16, n_embd=1024), None),  # 350M
    "gpt2-large": Preset(dict(n_layer=36, n_head=20, n_embd=1280), None),  # 774M
    "gpt2-xl": Preset(dict(n_layer=48, n_head=25, n_embd=1600), None),  # 1558M
}

MODEL_PRESETS = [name for name, p in PRESETS.items() if p.shape is not None]
TRAIN_PRESETS = [name for name, p in PRESETS.items() if p.recipe is not None]
