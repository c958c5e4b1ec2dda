"""GPTConfig: the shape of a GPT, as nanoGPT's dataclass, with GPT-2's defaults.

Its own module so that both the model (model.py) and the transformers adapter (hf.py, which
model.py uses to load and save weights) can import it, and the imports run one way:
model -> hf -> model_config. `toygpt.model.GPTConfig` and `toygpt.GPTConfig` are this class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from toygpt.errors import ToyGPTError
from toygpt.presets import MODEL_PRESETS, PRESETS


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    block_size: int = 1024  # longest context (number of position embeddings)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # on embeddings and residual branches; 0.0 to match released weights
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2 (False: a bit better, faster)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ToyGPTError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ToyGPTError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ToyGPTError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        self.bias = bool(self.bias)

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """A named shape from toygpt.presets: gpt2 ... gpt2-xl (the released models), mygpt-char,
        shakespeare-char.

        The char presets need vocab_size from the data: pass it as an override.
        >>> GPTConfig.preset("shakespeare-char", vocab_size=65).n_layer
        6
        """
        if name not in MODEL_PRESETS:
            raise ToyGPTError(f"unknown GPTConfig preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ToyGPTError(f"GPTConfig.preset: unknown field(s) {sorted(unknown)}; fields are {sorted(fields)}")
        values = {**PRESETS[name].shape, **overrides}
        if values.get("vocab_size", 0) is None:
            raise ToyGPTError(f"GPTConfig.preset({name!r}) needs vocab_size: a character-level model's "
                              "vocabulary is its data's, e.g. vocab_size=65 for Tiny Shakespeare")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


