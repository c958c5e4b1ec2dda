"""The bigram language model of Karpathy's "Let's build GPT" lecture (karpathy/ng-video-lecture, bigram.py).

Each token looks up, in a (vocab_size, vocab_size) table, the logits of the token that follows
it: no context beyond one token, no attention. It is the baseline every later model is measured
against (about 2.5 val loss on Tiny Shakespeare), and it trains with the same trainer as the GPT,
so it has the GPT's interface: forward(idx, targets) -> (logits, loss), configure_optimizers,
generate, save_pretrained / from_pretrained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from toygpt.model import adamw


@dataclass
class BigramConfig:
    vocab_size: int = 65
    block_size: int = 8  # only bounds the trainer's windows: the model sees one token at a time


class BigramLanguageModel(nn.Module):
    def __init__(self, config: BigramConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)
        self.tokenizer = None  # set by from_pretrained / the trainer; used by text generation

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, decay_all=False):
        # the table is a 2-D weight, so it decays, as the GPT's embeddings do (decay_all or not)
        return adamw(self.parameters(), learning_rate, betas, device_type, weight_decay=weight_decay)

    # A bigram model has no state to cache: generation.py runs forward_cached on the window
    # at each step (only the last token matters) and skips the KV cache.
    supports_kv_cache = False

    def forward_cached(self, idx, kv_caches, pos: int):
        """Logits of the token after idx's last one, (B, vocab_size) (the GPT's decode API)."""
        return self.token_embedding_table(idx[:, -1])

    def generate(self, idx=None, max_new_tokens=None, temperature=1.0, top_k=None, **kwargs):
        """The GPT's generation (toygpt.generation.generate): nanoGPT's tensor form
        `generate(idx, max_new_tokens, temperature, top_k)`, or text with `prompt=...`."""
        from toygpt import generation

        return generation.generate(self, idx, max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_k=top_k, **kwargs)

    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path / "model.safetensors")
        (path / "config.json").write_text(json.dumps({"model_type": "toygpt-bigram", **asdict(self.config)}))

    @classmethod
    def from_pretrained(cls, path) -> BigramLanguageModel:
        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        config.pop("model_type")
        model = cls(BigramConfig(**config))
        model.load_state_dict(load_file(path / "model.safetensors"))
        tokenizer_file = path / "tokenizer.json"
        if tokenizer_file.is_file():  # a training checkpoint: the data's tokenizer beside it
            from toygpt.tokenizers import load_tokenizer

            model.tokenizer = load_tokenizer(tokenizer_file)
        return model
