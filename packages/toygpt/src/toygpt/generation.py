"""Sampling from a GPT: one decoding loop with a KV cache, two faces.

- nanoGPT's tensor form: `model.generate(idx, max_new_tokens, temperature=1.0, top_k=None)`
  returns the (B, T + new) tensor of ids.
- The streaming text form: `model.generate(prompt='Hello', ...)` yields decoded text as it
  is produced. Bytes go through an incremental UTF-8 decoder, so a character whose bytes are
  split across tokens comes out whole, once its last byte arrives.

The KV cache: one preallocated (k, v) pair of buffers per layer, shape (B, nh, L, hs), with L
the length the sequence will reach (at most block_size). The prompt runs once (prefill, through
`GPT.forward_cached`); then each step feeds only the new token (`toygpt.model.Decoder.step`), whose key and
value are written in place at the next position, and attention runs with Tq = 1 query over the
Tk cached keys. Only the last position's logits are computed.

Context longer than block_size: the prompt is cropped to its last block_size tokens, and once
the sequence outgrows block_size the context slides, exactly as nanoGPT's crop does: each new
token is conditioned on the last block_size tokens. Position embeddings are absolute, so sliding
cannot reuse the cache; past block_size every step rebuilds it from the window (a full forward
over block_size tokens). Greedy output is therefore identical with and without the cache.

Sampling options: greedy (or temperature=0), temperature, top_k, top_p (nucleus, Holtzman et al.
2019), stopping at the end-of-text token and at stop strings, a seed, and batches of prompts.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import torch

from toygpt.errors import ToyGPTError

GPT2_VOCAB_SIZES = (50257, 50304)  # GPT-2's vocabulary, and nanoGPT's padded one


def generate(model, idx=None, max_new_tokens=None, temperature=1.0, top_k=None, *,
             prompt=None, top_p=None, greedy=False, stop=None, stop_at_eot=None, seed=None,
             use_cache=True, tokenizer=None, sampling=True):
    """Tensor form when idx is given (returns ids), text form when prompt is given (yields str).

    prompt: a str (yields str pieces) or a list of str (yields, per step, a list with one piece
    per prompt; '' for rows with nothing new). max_new_tokens defaults to 256 in the text form.
    greedy or temperature == 0: always the most likely token. stop: str or list of str; the text
    form ends a row when one appears (the stop string itself is not yielded). stop_at_eot: stop a
    row at the tokenizer's end-of-text token (default: True for text, False for tensors, as
    nanoGPT). seed: reproducible sampling (a private torch.Generator; the global RNG otherwise).
    sampling=False is greedy too (sampling=True, the default, is accepted for callers that pass it).
    """
    _check_options(temperature, top_k, top_p, max_new_tokens)
    if (idx is None) == (prompt is None):
        raise ToyGPTError("generate: pass either idx (a (B, T) tensor of ids) or prompt (text), not both")
    if prompt is not None and not isinstance(prompt, (str, list, tuple)):
        # before anything iterates over it: list(123) would fail with a TypeError naming nothing
        raise ToyGPTError(f"prompt must be a str or a list of str, got {type(prompt).__name__} {prompt!r:.80}")
    sampler = Sampler(temperature, top_k, top_p, greedy or not sampling, seed, _device(model))
    if prompt is not None:
        return _generate_text(model, prompt, 256 if max_new_tokens is None else max_new_tokens, sampler,
                              stop, True if stop_at_eot is None else stop_at_eot, use_cache, tokenizer)
    if max_new_tokens is None:
        raise ToyGPTError("generate(idx, max_new_tokens): max_new_tokens is required in the tensor form")
    if stop is not None:
        raise ToyGPTError("generate: stop strings need the text form (prompt=...)")
    idx = _check_idx(model, idx)
    eot_id = None
    if stop_at_eot:
        eot_id = _tokenizer(model, tokenizer).eot_id
        if eot_id is None:
            raise ToyGPTError("stop_at_eot=True but the tokenizer has no end-of-text token")
    out = torch.empty(idx.shape[0], idx.shape[1] + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :idx.shape[1]] = idx
    n = idx.shape[1]
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for token in decode_tokens(model, idx, max_new_tokens, sampler, use_cache):
        if eot_id is not None:
            token = token.masked_fill(done, eot_id)  # finished rows are padded with end-of-text
            done |= token == eot_id
        out[:, n] = token
        n += 1
        if eot_id is not None and bool(done.all()):
            break
    return out[:, :n]


# ----------------------------------------------------------------------------------------------
# the decoding loop


class Sampler:
    """Turns last-position logits (B, V) into the next token ids (B,).

    vocab_limit: only ids below it can be drawn. The text form sets it to the tokenizer's
    vocab_size when the model's vocabulary is larger (nanoGPT pads GPT-2's 50,257 to 50,304),
    since ids the tokenizer cannot decode must not come out.
    """

    def __init__(self, temperature, top_k, top_p, greedy, seed, device, vocab_limit=None):
        self.greedy = greedy or temperature == 0
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.vocab_limit = vocab_limit
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(int(seed))

    def __call__(self, logits):
        if self.vocab_limit is not None:
            logits = logits[:, :self.vocab_limit]  # (B, vocab_limit)
        top = logits.amax(dim=-1, keepdim=True)  # (B, 1); NaN when the row holds a NaN
        # NOTE: NaN or +inf logits make every probability NaN, and the inverse-CDF draw then
        # returns V, an id outside the vocabulary; an all -inf row has nothing to draw either
        if not bool(torch.isfinite(top).all()):
            bad = top[~torch.isfinite(top)][0].item()  # nan, inf, or -inf for a row of -inf only
            raise ToyGPTError(f"the model's logits hold {bad}: no token can be sampled from them "
                              "(are its weights non-finite?)")
        if self.greedy:
            return logits.argmax(dim=-1)  # (B,)
        # the row's largest logit moved to 0 before the division: (logits - top) / temperature is
        # 0 for the most likely id and <= 0 for the rest, so a tiny temperature gives -inf (never
        # drawn), not the inf - inf = NaN that softmax(logits / 1e-45) would give; a temperature
        # that is 0 in float32 (below 1e-45) divides in float64, where 0 / 1e-300 is still 0
        dtype = torch.float32 if self.temperature >= torch.finfo(torch.float32).tiny else torch.float64
        logits = (logits.to(dtype) - top.to(dtype)) / self.temperature
        if self.top_k is not None and self.top_k < logits.size(-1):
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # (B, V)
        if self.top_p is not None and self.top_p < 1.0:
            # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)  # (B, V)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ahead
            sorted_probs = sorted_probs.masked_fill(mass_before >= self.top_p, 0.0)  # keeps the top one
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return self.draw(probs)

    def draw(self, probs):
        """One id per row of probs (B, V), id i with probability probs[:, i] / row total.

        Inverse-CDF sampling: u uniform in [0, total), and the id whose CDF interval holds u.
        NOTE: torch.multinomial does the same, but costs 1.5 ms for GPT-2's 50,257 ids on this
        project's CPU (tens of ms when its threads compete for cores); a float64 cumsum and a
        binary search cost 0.1 ms. float64 keeps the intervals of rare ids exact, and ids of
        probability 0 (cut by top_k / top_p) have empty intervals, so they are never drawn.
        """
        cdf = probs.double().cumsum(dim=-1)  # (B, V)
        total = cdf[:, -1:].contiguous()  # (B, 1)
        u = torch.rand(total.shape, dtype=torch.float64, device=cdf.device, generator=self.generator) * total
        token = torch.searchsorted(cdf, u, right=True)  # (B, 1): the first id whose cdf > u
        # u rounded up to total would be past the end: the last id of nonzero probability then
        last = torch.searchsorted(cdf, total)  # (B, 1)
        return torch.minimum(token, last).squeeze(-1)  # (B,)


def new_kv_cache(model, batch_size: int, length: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One preallocated (k, v) pair per layer, each (B, nh, length, hs), in the model's dtype.
    length (default block_size) is the most positions it will hold."""
    cfg = model.config
    p = next(model.parameters())  # the token embeddings: float even in an int8-quantized model
    length = cfg.block_size if length is None else min(length, cfg.block_size)
    shape = (batch_size, cfg.n_head, length, cfg.n_embd // cfg.n_head)
    return [(torch.empty(shape, dtype=p.dtype, device=p.device), torch.empty(shape, dtype=p.dtype, device=p.device))
            for _ in range(cfg.n_layer)]


def decode_tokens(model, idx, max_new_tokens: int, sample, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next-token tensors (B,) continuing idx (B, T). The caller may stop
    early. Every model call runs under inference_mode (and eval mode), never across a yield.

    With the cache: the prompt (its last block_size tokens) runs through `GPT.forward_cached`
    once, then each step is a `Decoder.step` (toygpt.model; `model.decoder(cache)` makes it) on
    the new token alone. Without it, or once the sequence is longer than block_size, each step
    runs the whole window through the model.
    """
    if max_new_tokens == 0:
        return
    block_size = model.config.block_size
    B, T = idx.shape
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            # every token so far: the window of the last block_size is a view into it
            tokens = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
            tokens[:, :T] = idx
            n = T  # tokens held
            # positions the cache must hold: the whole sequence, or block_size once it slides
            use_cache = use_cache and getattr(model, "supports_kv_cache", True)
            cache = new_kv_cache(model, B, T + max_new_tokens) if use_cache else None
            decoder = model.decoder(cache) if use_cache else None
            logits = model.forward_cached(tokens[:, max(0, n - block_size):n], cache, 0)  # (B, V), prefill
            token = sample(logits)  # (B,)
        for _ in range(max_new_tokens - 1):
            yield token
            with torch.inference_mode():
                tokens[:, n] = token
                n += 1
                if use_cache and n <= block_size:
                    logits = decoder.step(token, n - 1)  # only the new token
                else:  # no cache, or the context slides: run the whole window again
                    logits = model.forward_cached(tokens[:, max(0, n - block_size):n], cache, 0)
                token = sample(logits)
        yield token  # the last one: no forward for a token nobody will sample
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------
# the text form


def _generate_text(model, prompt, max_new_tokens, sampler, stop, stop_at_eot, use_cache, tokenizer):
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ToyGPTError(f"prompt must be a str or a non-empty list of str, got {prompt!r:.80}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise ToyGPTError(f"stop must be a non-empty str or a list of them, got {stop!r}")
    tok = _tokenizer(model, tokenizer)
    rows = [_encode_prompt(tok, p, model.config.vocab_size) for p in prompts]
    if tok.vocab_size < model.config.vocab_size:
        sampler.vocab_limit = tok.vocab_size  # e.g. a padded vocabulary: never sample the padding
    return _stream(model, tok, rows, max_new_tokens, sampler, stops, stop_at_eot, use_cache, single)


def _stream(model, tok, rows, max_new_tokens, sampler, stops, stop_at_eot, use_cache, single):
    """Generator behind the text form. Prompts of equal token length run as one batch; groups of
    different lengths run one after another (there is no padding mask), each yielding full rows."""
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(rows):
        groups.setdefault(len(ids), []).append(i)
    eot_id = tok.eot_id if stop_at_eot else None
    device = _device(model)
    for members in groups.values():
        idx = torch.tensor([rows[i] for i in members], dtype=torch.long, device=device)  # (b, T)
        streams = [TextStream(tok, stops) for _ in members]
        for token in decode_tokens(model, idx, max_new_tokens, sampler, use_cache):
            pieces = [""] * len(rows)
            for j, t in enumerate(token.tolist()):
                pieces[members[j]] = streams[j].push(t, eot_id)
            yield from _emit(pieces, single)
            if all(s.done for s in streams):
                break
        pieces = [""] * len(rows)
        for j, s in enumerate(streams):
            pieces[members[j]] = s.finish()
        yield from _emit(pieces, single)


def _emit(pieces, single):
    if single:
        if pieces[0]:
            yield pieces[0]
    elif any(pieces):
        yield pieces


class TextStream:
    """One row's tokens -> text pieces: incremental UTF-8, end-of-text, and stop strings (text
    that could be the start of a stop string is held back until it is known not to be)."""

    def __init__(self, tok, stops):
        self.tok = tok
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.done = False

    def push(self, token: int, eot_id) -> str:
        if self.done:
            return ""
        if token == eot_id:
            return self.finish()
        self.pending += self.decoder.decode(self.tok.decode_bytes([token]))
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            self.done = True
            out, self.pending = self.pending[:min(hits)], ""
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out

    def finish(self) -> str:
        if self.done:
            return ""
        self.done = True
        out = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        return out


# ----------------------------------------------------------------------------------------------
# checks


def _check_options(temperature, top_k, top_p, max_new_tokens):
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not 0 <= temperature < float("inf")):
        raise ToyGPTError(f"temperature must be a number >= 0 (0 means greedy) and finite, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ToyGPTError(f"top_k must be an int >= 1 (or None), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ToyGPTError(f"top_p must be in (0, 1] (or None), got {top_p!r}")
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0
    ):
        raise ToyGPTError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")


def _check_idx(model, idx):
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
        raise ToyGPTError(f"idx must be a (B, T) integer tensor of token ids, got {idx!r:.80}")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ToyGPTError(f"idx has shape {tuple(idx.shape)}: need at least one token per row")
    V = model.config.vocab_size
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= V:
        raise ToyGPTError(f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {V})")
    return idx.to(device=_device(model), dtype=torch.long)


def _encode_prompt(tok, prompt: str, vocab_size: int) -> list[int]:
    ids = tok.encode(prompt)
    if not ids:
        if tok.eot_id is None:
            raise ToyGPTError(
                f"empty prompt, and the {tok.name!r} tokenizer has no end-of-text token to start from"
            )
        ids = [tok.eot_id]  # GPT-2 starts unconditional samples from <|endoftext|>
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ToyGPTError(f"prompt token id {bad[0]} is outside the model's vocabulary [0, {vocab_size})")
    return ids


def _tokenizer(model, tokenizer):
    if tokenizer is not None:
        return tokenizer
    if getattr(model, "tokenizer", None) is None:
        if model.config.vocab_size not in GPT2_VOCAB_SIZES:
            raise ToyGPTError(
                f"the model has no tokenizer and its vocab_size {model.config.vocab_size} is not GPT-2's: "
                "pass tokenizer=..., or use the tensor form generate(idx, max_new_tokens)"
            )
        from toygpt.tokenizers import GPT2Tokenizer

        model.tokenizer = GPT2Tokenizer()
    return model.tokenizer


def _device(model):
    return next(model.parameters()).device
