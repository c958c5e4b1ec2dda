"""GPT-2 in PyTorch, on toykernels' LayerNorm and causal attention.

The nanoGPT pattern (Karpathy, 2022): a dataclass config, modules named exactly as in OpenAI's
GPT-2 checkpoint (`transformer.wte`, `h.N.attn.c_attn`, `ln_f`, ...) so the released weights load
without a rename table (hf.py only transposes the Conv1D weights), pre-LN blocks, tanh GELU,
GPT-2's initialization, and `lm_head` tied to `wte`. GPTConfig's other choices (ReLU, an untied
head with a bias, no q/k/v bias, torch's default initialization) make the same blocks into
other small GPTs, such as dx-dtran/MyGPT's character model (the `mygpt-char` preset).

Every LayerNorm and every attention call goes through toykernels, so the fused CUDA kernels run
on a GPU and PyTorch ops run on a CPU. Inside a block the second residual add is fused with ln_2
(`add_layer_norm`), which keeps the state_dict keys (`h.N.ln_2.weight`) unchanged.

Attention also takes a KV cache (generation.py owns it): the new keys/values are written into
preallocated buffers in place, and the queries (Tq new positions) attend to all Tk cached
positions with the causal mask aligned bottom-right (Tq <= Tk).

`forward(idx, targets)` always returns logits for every position (as transformers does; this is
what the equivalence tests compare). Generation runs the prompt through `forward_cached`, which
returns logits for the last position only, and then each new token through `Decoder` (below
GPT): the blocks' own forward methods, run on plain copies of the modules that skip the
nn.Module machinery.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import toykernels
from torch import nn

from toygpt import generation, hf
from toygpt.errors import ToyGPTError
from toygpt.model_config import GPTConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        # q, k, v for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # NOTE: no dropout on the attention probabilities: the fused kernel has none, so dropout
        # is applied to the residual branch only (nanoGPT applies it in both places).
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x, kv_cache=None, pos=0):
        """x: (B, T, C). kv_cache: None or (k_buf, v_buf), each (B, nh, T_max, hs), into which
        this call writes positions pos .. pos+T-1 and then attends to positions 0 .. pos+T-1."""
        y = attend(self.c_attn(x), self.n_head, kv_cache, pos)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


def attend(qkv, n_head: int, kv_cache=None, pos: int = 0):
    """Multi-head causal attention between c_attn and c_proj: qkv (B, T, 3C), the queries, keys
    and values of T new positions side by side -> (B, T, C), the heads side by side.

    With a KV cache the new keys and values are written at positions pos .. pos+T-1 and the
    queries attend to positions 0 .. pos+T-1 (the causal mask aligned bottom-right, Tq <= Tk).
    CausalSelfAttention runs it, and so does Decoder's one-position step (below)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = qkv.split(C, dim=2)  # 3 x (B, T, C)
    q = q.view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
    v = v.view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
    if kv_cache is not None:
        k_buf, v_buf = kv_cache
        k_buf.narrow(2, pos, T).copy_(k)
        v_buf.narrow(2, pos, T).copy_(v)
        k, v = k_buf.narrow(2, 0, pos + T), v_buf.narrow(2, 0, pos + T)  # (B, nh, pos+T, hs)
    y = toykernels.causal_attention(q, k, v)  # (B, nh, T, hs), Tq = T <= Tk
    return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side


def gelu(x):
    """GPT-2's GELU, the tanh approximation ("gelu_new" in transformers)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": gelu, "relu": F.relu}  # GPTConfig.activation


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x):
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = toykernels.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = toykernels.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, pos=0):
        a = self.attn(self.ln_1(x), kv_cache, pos)
        # the residual add fused with ln_2: x <- x + a, h = ln_2(x)
        x, h = toykernels.add_layer_norm(x, a, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
        return x + self.mlp(h)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ToyGPTError(f"GPT(config): expected a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=toykernels.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            # weight tying (Press & Wolf, 2017), as GPT-2: the output projection is the embedding
            self.lm_head.weight = self.transformer.wte.weight
        self.tokenizer = None  # set by from_pretrained / the trainer; used by text generation
        if config.init == "gpt2":  # else "torch": each module keeps the initialization it was made with
            self.apply(self._init_weights)
            # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), since each block adds two
            # of them to the residual stream and its variance would otherwise grow with depth
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (tied token embeddings
        count once, as lm_head), as nanoGPT reports it."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def _check_idx(self, idx, pos=0):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise ToyGPTError(f"idx must be a (B, T) tensor of token ids, got {_describe(idx)}")
        B, T = idx.shape
        if T == 0:
            raise ToyGPTError("idx is empty: need at least one token per row")
        if pos + T > self.config.block_size:
            raise ToyGPTError(
                f"sequence of length {pos + T} is longer than block_size={self.config.block_size}"
            )
        if idx.is_cuda or torch.compiler.is_compiling():
            # NOTE: the range check below would sync with the GPU on every step, and under
            # torch.compile its int() would break the graph on every forward
            return
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ToyGPTError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")

    def _trunk(self, idx, kv_caches=None, pos=0):
        """Embeddings and blocks, then ln_f: (B, T) ids -> (B, T, C) hidden states."""
        T = idx.shape[1]
        # positions pos .. pos+T-1 are consecutive: a slice of the table, no index tensor needed
        position_embeddings = self.transformer.wpe.weight[pos:pos + T]  # (T, C)
        x = self.transformer.drop(self.transformer.wte(idx) + position_embeddings)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_caches is None else kv_caches[i], pos)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None):
        """idx: (B, T) token ids -> (logits (B, T, vocab_size), loss or None).

        loss is the mean cross-entropy over positions, ignoring targets equal to -1.
        """
        self._check_idx(idx)
        logits = self.lm_head(self._trunk(idx))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ToyGPTError(f"targets has shape {tuple(targets.shape)}, idx has {tuple(idx.shape)}")
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def forward_cached(self, idx, kv_caches, pos: int):
        """Decode step: run idx (B, T) at positions pos .. pos+T-1 through the model, writing the
        keys/values into kv_caches (one (k_buf, v_buf) per layer), and return the logits of the
        last position only, (B, vocab_size). No input checks: generation.py makes the ids."""
        h = self._trunk(idx, kv_caches, pos)  # (B, T, C)
        return self.lm_head(h[:, -1, :])  # (B, vocab_size)

    def decoder(self, kv_caches) -> Decoder:
        """The one-position decoding step over kv_caches (generation.py's loop calls it)."""
        return Decoder(self, kv_caches)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, decay_all=False):
        """AdamW with weight decay on matrices (>= 2-D: Linear weights, embeddings) only, as
        nanoGPT; biases and LayerNorm parameters are not decayed, unless decay_all (torch's AdamW
        on model.parameters(), as dx-dtran/MyGPT). Fused on CUDA and CPU (`adamw`)."""
        params = [p for p in self.parameters() if p.requires_grad]  # tied weights appear once
        if decay_all:
            return adamw(params, learning_rate, betas, device_type, weight_decay=weight_decay)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return adamw(groups, learning_rate, betas, device_type)

    # --- weights: transformers' format, both ways (hf.py) ------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> GPT:
        """Load a hub name ('gpt2' ... 'gpt2-xl', or a GPT-2 repo id, via the Hugging Face cache),
        a local directory in transformers' format (safetensors or .bin), or a toygpt checkpoint
        directory (the same, plus an optional tokenizer.json that becomes model.tokenizer).
        kwargs override config fields that do not change shapes (e.g. dropout=0.1)."""
        return hf.from_pretrained(cls, name_or_path, **kwargs)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that transformers.GPT2LMHeadModel loads."""
        hf.save_pretrained(self, path)

    # --- generation (generation.py) -------------------------------------------------------

    def generate(self, idx=None, max_new_tokens=None, temperature=1.0, top_k=None, **kwargs):
        """Two forms, one implementation (see toygpt.generation.generate):

        - nanoGPT's tensor form: `generate(idx, max_new_tokens, temperature=1.0, top_k=None)`
          returns the (B, T + new) tensor of ids;
        - text streaming: `generate(prompt='Hello', ...)` yields decoded str pieces as they come.

        A prompt longer than block_size is cropped to its last block_size tokens, and once the
        sequence outgrows block_size the context slides: each new token sees the last
        block_size tokens (nanoGPT's crop), with or without the KV cache.
        """
        return generation.generate(
            self, idx, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, **kwargs
        )


class Plain:
    """A module's attributes as plain Python attributes, without the nn.Module machinery; the
    subclasses that `plain` makes run the module class's own `forward` when called."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def plain(module):
    """A copy of `module` for decoding: each submodule of a class in PLAIN_CLASSES becomes an
    instance of its Plain twin (the same attributes, the same `forward`); an nn.Linear becomes
    F.linear on its own weight and bias (the same tensor objects: weights changed in place are
    seen); dropout, the identity in eval mode, becomes nothing; any other layer that maps
    x -> y (an int8 dynamically quantized Linear, see toygpt.quantize) is kept as it is."""
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias  # not looked up through the module on every call
        return lambda x: F.linear(x, weight, bias)
    if isinstance(module, nn.Dropout):
        return _identity
    twin = PLAIN_CLASSES.get(type(module))
    if twin is None:
        return module
    attributes = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
    attributes.update(module._parameters)
    attributes.update({name: plain(child) for name, child in module._modules.items()})
    return twin(**attributes)


def _identity(x):
    return x


# the module classes of a GPT, each with its Plain twin (PlainBlock, ...): called, it runs the module's forward
PLAIN_CLASSES = {cls: type(f"Plain{cls.__name__}", (Plain,), {"__call__": cls.forward})
                 for cls in (toykernels.LayerNorm, CausalSelfAttention, MLP, Block)}


class Decoder:
    """The decoding step with a KV cache: one new token per row through the whole model.

    Each block runs `Block.forward` (and through it CausalSelfAttention's, MLP's and
    LayerNorm's forward): the math of a block is written once, in the modules. What the decoder
    leaves out is the machinery around them: it calls the forward methods on plain copies of the
    modules (`plain`), made when the Decoder is made (once per `generate` call), with the
    Linear layers as F.linear calls and no dropout. At batch 1 each call does little work (a
    GEMV, a LayerNorm of 768 numbers), and the nn.Module call (hooks, attribute lookups through
    `_modules`, dropout modules that do nothing in eval mode) costs about as much as the
    non-matmul math around it. What that buys (fp32, batch 1, one thread, an Intel Xeon, medians
    of 15 paired runs): 0.56 against 0.78 ms a token for a 4-layer, 128-channel model, 47.3
    against 49.1 ms for GPT-2 small; tools/bench_generate.py reports it for GPT-2 small (the
    row "steps through the modules"). The tests hold it to the module path (generation without
    the cache runs `GPT.forward_cached`) and to transformers, token for token.

    A later change of weights in place is seen; replacing a module is not.
    """

    def __init__(self, model, kv_cache):
        tr = model.transformer
        self.kv_cache = kv_cache
        self.wte, self.wpe = tr.wte.weight, tr.wpe.weight
        self.blocks = [plain(block) for block in tr.h]
        self.ln_f = plain(tr.ln_f)
        self.lm_head = plain(model.lm_head)  # tied to wte or not (an int8 copy once quantized)

    def step(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """token (B,) at position pos (pos < block_size; positions 0 .. pos-1 are in the cache)
        -> next-token logits (B, vocab_size). Writes this position's keys and values."""
        B = token.shape[0]
        x = F.embedding(token, self.wte) + self.wpe[pos]  # (B, C)
        x = x.unsqueeze(1)  # (B, 1, C): one position, which sees every cached key
        for block, kv_cache in zip(self.blocks, self.kv_cache):
            x = block(x, kv_cache, pos)  # Block.forward
        return self.lm_head(self.ln_f(x.view(B, -1)))  # (B, vocab_size)


def adamw(params, learning_rate, betas, device_type, weight_decay=0.0) -> torch.optim.AdamW:
    """torch's AdamW, fused where torch has the fused kernel: CUDA, and CPU since torch 2.4.

    The fused step updates each parameter in one vectorized pass; the default for-loop step on
    CPU runs about ten elementwise ops per parameter from Python. For nanoGPT's CPU recipe
    (26 parameters) that is 0.46 ms against 1.49 ms a step, about 3% of the whole training step
    (nanoGPT fuses on CUDA only). Same update, same state_dict format.
    """
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=learning_rate, betas=tuple(betas), weight_decay=weight_decay,
                             fused=fused)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"
