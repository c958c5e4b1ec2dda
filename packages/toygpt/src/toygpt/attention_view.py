"""Seeing a GPT work: `toygpt attention` and the next-token view of `toygpt generate --show-probs`.

Attention. The model's attention runs in `toykernels.causal_attention`, a fused kernel that never
materializes the (T, T) matrix of probabilities. To draw that matrix without a second model, one
forward runs with hooks on every block's `attn.c_attn` (its output is q, k, v side by side) and
`attn.c_proj` (its input is the attention output, heads side by side). The probabilities are
then recomputed from that forward's own q and k,

    P = softmax(q k^T / sqrt(head_size) + causal mask)     # (B, n_head, T, T)

and `P @ v` must give back the attention output the kernel produced (the tests check it), so the
picture is of the computation the model did, not of a re-implementation beside it. It works for
any toygpt GPT: a trained checkpoint, a transformers GPT-2 directory, or a hub name.

A long prompt stays readable: the picture shows the last `max_tokens` query rows and key columns
(48 by default), and one more column, "earlier", holds the probability given to the keys before
that window, so every row still sums to one. Token labels are written on the axes of the edge
panels of the grid, and on every row and column of the one-head view (`--layer L --head H`).

Next-token probabilities. `next_token_probs` runs the model's real decoding loop
(`generation.decode_tokens`, KV cache included) with a sampler that writes down, at each step,
the distribution it samples from and the top-k alternatives: the chosen token's probability is
the probability that token had when it was drawn.

Ideas from karpathy's "Let's build GPT" lecture (the attention matrix as a lower-triangular
weighting of the past) and from bertviz-style heatmaps of attention per layer and head.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NamedTuple

import torch

from toygpt.errors import ToyGPTError

DEFAULT_MAX_TOKENS = 48  # query rows / key columns drawn; more and the labels stop being legible


# ----------------------------------------------------------------------------------------------
# attention probabilities from one forward


class AttentionMaps(NamedTuple):
    """What one forward computed, per layer: lists with one tensor per block."""

    probs: list[torch.Tensor]  # (B, nh, T, T) float32, rows sum to 1, zero above the diagonal
    q: list[torch.Tensor]  # (B, nh, T, hs)
    k: list[torch.Tensor]  # (B, nh, T, hs)
    v: list[torch.Tensor]  # (B, nh, T, hs)
    outputs: list[torch.Tensor]  # (B, nh, T, hs): the attention output the model produced
    logits: torch.Tensor  # (B, T, vocab_size)


def _blocks(model):
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise ToyGPTError(f"the model ({type(model).__name__}) has no attention layers to show: "
                          "a bigram model looks at one token only")
    return blocks


def check_prompt_ids(model, ids) -> None:
    """The clear errors of the view: an empty prompt, or one longer than the model's context."""
    block_size = model.config.block_size
    if len(ids) == 0:
        raise ToyGPTError("the prompt is empty: attention needs at least one token")
    if len(ids) > block_size:
        raise ToyGPTError(f"the prompt is {len(ids)} tokens, longer than the model's context "
                          f"block_size={block_size}: one forward sees at most {block_size} tokens; "
                          f"shorten the prompt")


@torch.no_grad()
def attention_maps(model, idx: torch.Tensor) -> AttentionMaps:
    """Run idx (B, T) through `model` once (eval mode) and return every layer's attention."""
    blocks = _blocks(model)
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ToyGPTError(f"idx must be a (B, T) tensor of token ids, got {idx!r:.80}")
    check_prompt_ids(model, idx[0].tolist())
    qkv_out, attn_out, handles = {}, {}, []
    for i, block in enumerate(blocks):
        handles.append(block.attn.c_attn.register_forward_hook(
            lambda mod, inp, out, i=i: qkv_out.__setitem__(i, out)))
        handles.append(block.attn.c_proj.register_forward_pre_hook(
            lambda mod, inp, i=i: attn_out.__setitem__(i, inp[0])))
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(idx)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    B, T = idx.shape
    nh, C = model.config.n_head, model.config.n_embd
    hs = C // nh
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # key j <= query i
    maps = AttentionMaps([], [], [], [], [], logits)
    for i in range(len(blocks)):
        q, k, v = (t.float().view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
                   for t in qkv_out[i].split(C, dim=2))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (B, nh, T, T)
        y = attn_out[i].float().view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        for lst, t in zip(maps[:5], (probs, q, k, v, y)):
            lst.append(t)
    return maps


def token_labels(tok, ids: list[int]) -> list[str]:
    """One short, visible label per token: a space is '␣', a newline '\\n', and a token that
    is not whole UTF-8 by itself (part of a character) its bytes in hex."""
    labels = []
    for i in ids:
        raw = tok.decode_bytes([i])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "<" + raw.hex() + ">"
        labels.append(text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") or "∅")
    return labels


def crop(probs: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, int]:
    """probs (..., T, T) -> the last max_tokens rows, and their last max_tokens columns with, in
    front, one column holding the probability of the earlier keys (rows still sum to one).
    Returns (cropped, start): start is the first position shown (0 when nothing is cut)."""
    T = probs.shape[-1]
    if T <= max_tokens:
        return probs, 0
    start = T - max_tokens
    rows = probs[..., start:, :]  # (..., max_tokens, T)
    earlier = rows[..., :start].sum(dim=-1, keepdim=True)  # (..., max_tokens, 1)
    return torch.cat([earlier, rows[..., start:]], dim=-1), start


# ----------------------------------------------------------------------------------------------
# pictures


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ToyGPTError("drawing needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out) -> Path:
    """Write `fig` to `out` (PNG, its folder made), close it, and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_attention(maps: AttentionMaps, labels: list[str], out, layer: int | None = None,
                   head: int | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, title: str = "") -> Path:
    """Draw row 0 of `maps` to `out` (PNG): every layer x head, one layer's heads (layer), one
    head in every layer (head), or one head large (both). Returns the path written."""
    import numpy as np
    from matplotlib.colors import PowerNorm

    n_layer, n_head = len(maps.probs), maps.probs[0].shape[1]
    check_layer_head(layer, head, n_layer, n_head)
    layers = range(n_layer) if layer is None else [layer]
    heads = range(n_head) if head is None else [head]
    probs = torch.stack([maps.probs[l][0] for l in layers])[:, list(heads)]  # (rows, cols, T, T)
    probs, start = crop(probs, max_tokens)
    shown = labels[start:]
    xlabels = (["earlier"] if start else []) + shown
    Tq, Tk = probs.shape[-2], probs.shape[-1]
    # future keys are masked (probability exactly 0): grey, so they read as "not allowed", not "unused"
    future = np.triu(np.ones((Tq, Tk), dtype=bool), k=1 + (1 if start else 0))

    plt = _pyplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)  # sqrt scale: weights of 0.01 stay visible
    single = len(layers) == 1 and len(heads) == 1
    rows, cols = len(layers), len(heads)
    if single:  # every token labelled, at 9 points: about a sixth of an inch a row
        side = min(16.0, max(5.0, 0.18 * Tk + 2))
        fig, axes = plt.subplots(1, 1, figsize=(side + 1.2, side), squeeze=False)
        xticks, yticks, font = list(range(Tk)), list(range(Tq)), 9
    else:  # a grid: token labels on the edge panels, every token while 7-point labels fit
        panel = min(3.6, max(1.8, 0.11 * Tk))
        fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 2.0, panel * rows + 1.4),
                                 squeeze=False, sharex=True, sharey=True)
        every = max(1, math.ceil(Tk / 32))  # beyond 32 tokens, every 2nd (3rd, ...) is labelled
        xticks, yticks, font = list(range(0, Tk, every)), list(range(0, Tq, every)), 7
        if every > 1:
            xticks = list(range(Tk - 1, -1, -every))[::-1]  # always label the last token
            yticks = list(range(Tq - 1, -1, -every))[::-1]
    for r, l in enumerate(layers):
        for c, h in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(np.ma.masked_array(probs[r, c].cpu().numpy(), mask=future),
                              cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
            ax.set_title(f"layer {l}, head {h}", fontsize=11 if single else 8, pad=3)
            ax.set_xticks(xticks)
            ax.set_yticks(yticks)
            ax.tick_params(length=0, pad=1)
            if single or r == rows - 1:
                ax.set_xticklabels([xlabels[j] for j in xticks], rotation=90, fontsize=font, family="monospace")
            if single or c == 0:
                ax.set_yticklabels([shown[i] for i in yticks], fontsize=font, family="monospace")
            if single and Tk <= 16:  # few cells: write the numbers in them
                for qi in range(Tq):
                    for kj in range(Tk):
                        if not future[qi, kj]:
                            p = float(probs[r, c, qi, kj])
                            ax.text(kj, qi, f"{p:.2f}", ha="center", va="center", fontsize=7,
                                    color="black" if p > 0.5 else "white")
    key_label = "key (the token attended to)" + (": 'earlier' = all keys before the window" if start else "")
    query_label = "query (the token attending)"
    if single:
        axes[0][0].set_xlabel(key_label, fontsize=9)
        axes[0][0].set_ylabel(query_label, fontsize=9)
    else:
        fig.supxlabel(key_label + ("" if every == 1 else f"; one token in {every} labelled (--layer L "
                                   "--head H labels all)"), fontsize=9)
        fig.supylabel(query_label, fontsize=9)
    cut = f"; the last {Tq} of {Tq + start} tokens" if start else ""
    fig.suptitle((title + "\n" if title else "") + f"attention probabilities{cut}", fontsize=11)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03 if single else 0.02, pad=0.02)
    bar.set_label("attention probability (square-root colour scale, 0 to 1); grey: future, masked",
                  fontsize=8)
    bar.set_ticks([0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
    bar.ax.tick_params(labelsize=7)
    return _save(plt, fig, out)


def check_layer_head(layer, head, n_layer: int, n_head: int) -> None:
    if layer is not None and not 0 <= layer < n_layer:
        raise ToyGPTError(f"--layer {layer} is out of range: the model has {n_layer} layers (0 .. {n_layer - 1})")
    if head is not None and not 0 <= head < n_head:
        raise ToyGPTError(f"--head {head} is out of range: the model has {n_head} heads per layer "
                          f"(0 .. {n_head - 1})")


# ----------------------------------------------------------------------------------------------
# next-token probabilities during generation


class TokenChoice(NamedTuple):
    token: int  # the id generated
    prob: float  # its probability when it was drawn
    alternatives: list[tuple[int, float]]  # the top-k (id, probability), most likely first


def next_token_probs(model, prompt: str, max_new_tokens: int = 20, k: int = 5, *, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
                     seed: int | None = None, tokenizer=None):
    """Generate from `prompt`, yielding a TokenChoice per new token (stops at end-of-text).

    The probabilities are those of softmax(logits / temperature), the distribution the sampler
    draws from before top-k / top-p cut it (with greedy: temperature 1)."""
    from toygpt import generation

    generation._check_options(temperature, top_k, top_p, max_new_tokens)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ToyGPTError(f"--show-probs K: K must be an int >= 1, got {k!r}")
    tok = generation._tokenizer(model, tokenizer)
    ids = generation._encode_prompt(tok, prompt, model.config.vocab_size)
    block_size = model.config.block_size
    if len(ids) > block_size:
        ids = ids[-block_size:]  # as generate does: the last block_size tokens
    device = next(model.parameters()).device
    sampler = generation.Sampler(temperature, top_k, top_p, greedy, seed, device)
    if tok.vocab_size < model.config.vocab_size:
        sampler.vocab_limit = tok.vocab_size  # never the padding ids of a padded vocabulary
    seen = []

    def sample(logits):  # (1, V): write down the distribution, then draw as generate would
        limit = sampler.vocab_limit or logits.shape[-1]
        t = 1.0 if sampler.greedy else temperature
        seen.append(torch.softmax(logits[0, :limit].double() / t, dim=-1))  # (V,) float64
        return sampler(logits)

    idx = torch.tensor([ids], dtype=torch.long, device=device)
    for token in generation.decode_tokens(model, idx, max_new_tokens, sample):
        probs = seen[-1]
        top = torch.topk(probs, min(k, probs.numel()))
        t = int(token[0])
        yield TokenChoice(t, float(probs[t]), [(int(i), float(p)) for p, i in zip(top.values, top.indices)])
        if t == tok.eot_id:
            break


def format_choice(n: int, choice: TokenChoice, labels) -> str:
    alts = "  ".join(f"{labels(i):>6} {p:.3f}" for i, p in choice.alternatives)
    return f"{n:>4}  {labels(choice.token):>8}  {choice.prob:6.3f}   {alts}"


def plot_probs(choices: list[TokenChoice], label, out, prompt: str = "", max_steps: int = 48) -> Path:
    """Columns: the generated tokens in order (the first max_steps); rows: the top-k alternatives,
    most likely on top; colour: probability; the token chosen is framed in red."""
    import numpy as np
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    choices = choices[:max_steps]
    n, k = len(choices), len(choices[0].alternatives)
    grid = np.array([[p for _, p in c.alternatives] for c in choices]).T  # (k, n)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2.5), 0.5 * k + 2.4))
    image = ax.imshow(grid, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for s, c in enumerate(choices):
        for r, (i, p) in enumerate(c.alternatives):
            ax.text(s, r, label(i), ha="center", va="center", fontsize=8, family="monospace",
                    color="white" if p > 0.6 else "black")
            if i == c.token:
                ax.add_patch(Rectangle((s - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=1.8))
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"#{r + 1}" for r in range(k)], fontsize=8)
    ax.set_xticks(range(n))
    ax.set_xticklabels([f"{s + 1}\n{c.prob:.2f}" for s, c in enumerate(choices)], fontsize=7)
    ax.set_xlabel("generated token (step, and the probability of the token taken)", fontsize=9)
    ax.set_ylabel("the model's top alternatives", fontsize=9)
    shown = prompt if len(prompt) <= 60 else "…" + prompt[-59:]
    ax.set_title(f"next-token probabilities after {shown!r}" + (f" (first {n} steps)" if n == max_steps else "")
                 + "\nred frame: the token generated", fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    bar.set_label("probability (linear, 0 to 1)", fontsize=8)
    return _save(plt, fig, out)


def show_probs(model, args) -> list[TokenChoice]:
    """`toygpt generate --show-probs K [--out PNG]`: a line per generated token (its probability
    and the top K), the whole text at the end, and with --out the picture."""
    from toygpt import generation

    tok = generation._tokenizer(model, None)
    choices = []
    print(f"{'step':>4}  {'token':>8}  {'p':>6}   top {args.show_probs} alternatives")
    for n, choice in enumerate(next_token_probs(
            model, args.prompt, args.max_new_tokens, args.show_probs, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed), start=1):
        choices.append(choice)
        print(format_choice(n, choice, lambda i: repr(token_labels(tok, [i])[0])[1:-1]), flush=True)
    text = tok.decode([c.token for c in choices])
    print(f"\n{args.prompt}{text}")
    if args.out and choices:
        path = plot_probs(choices, lambda i: token_labels(tok, [i])[0], args.out, args.prompt)
        print(f"wrote {path}")
    return choices


def add_probs_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `toygpt generate` takes for the probability view."""
    parser.add_argument("--show-probs", type=int, nargs="?", const=5, default=None, metavar="K",
                        help="print each generated token's probability and the top K alternatives (K: 5)")
    parser.add_argument("--out", default=None, metavar="PNG",
                        help="with --show-probs: also draw them to this PNG")


# ----------------------------------------------------------------------------------------------
# `toygpt attention`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="toygpt checkpoint directory, transformers GPT-2 directory, or hub name")
    parser.add_argument("--prompt", required=True, help="the text whose attention to draw")
    parser.add_argument("--out", default="attention.png", metavar="PNG", help="where to draw it")
    parser.add_argument("--layer", type=int, default=None, help="only this layer (0-based)")
    parser.add_argument("--head", type=int, default=None, help="only this head (0-based); with --layer: one large")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help="draw the last N tokens of a longer prompt (earlier keys summed in one column)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, mps")


def run(args: argparse.Namespace) -> None:
    from toygpt import checkpoint, generation
    from toygpt.runtime import resolve_device

    if args.max_tokens < 1:
        raise ToyGPTError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    model = checkpoint.load_named(args.model, resolve_device(args.device))  # as generate loads it
    blocks = _blocks(model)
    check_layer_head(args.layer, args.head, len(blocks), model.config.n_head)
    tok = generation._tokenizer(model, None)
    ids = tok.encode(args.prompt)
    check_prompt_ids(model, ids)
    idx = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    maps = attention_maps(model, idx)
    path = plot_attention(maps, token_labels(tok, ids), args.out, args.layer, args.head, args.max_tokens,
                          title=f"{args.model}: {args.prompt!r:.80}")
    print(f"wrote {path}: {len(ids)} tokens, {len(blocks)} layers x {model.config.n_head} heads"
          + ("" if args.layer is None and args.head is None else
             f" (drawn: layer {'all' if args.layer is None else args.layer}, "
             f"head {'all' if args.head is None else args.head})"))
