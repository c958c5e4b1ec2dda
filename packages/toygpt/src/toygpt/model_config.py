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

ACTIVATIONS = ("gelu", "relu")
INITS = ("gpt2", "torch")


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    block_size: int = 1024  # longest context (number of position embeddings)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # on embeddings and residual branches; 0.0 to match released weights
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2 (False: a bit better, faster)
    # GPT-2's block and head by default; the other choices make models that are not GPT-2
    # (dx-dtran/MyGPT's character model: relu, untied head with a bias, no q/k/v bias, torch's init)
    activation: str = "gelu"  # the MLP's nonlinearity: "gelu" (GPT-2's tanh approximation) or "relu"
    tie_embeddings: bool = True  # lm_head's weight is wte's (Press & Wolf, 2017), as GPT-2
    qkv_bias: bool | None = None  # a bias on the q/k/v projection (None: as `bias`)
    lm_head_bias: bool = False  # a bias on the output projection (GPT-2 has none)
    init: str = "gpt2"  # "gpt2": N(0, 0.02), residual projections / sqrt(2 n_layer); "torch": each module's default

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
        for name, choices in (("activation", ACTIVATIONS), ("init", INITS)):
            if getattr(self, name) not in choices:
                raise ToyGPTError(f"GPTConfig: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        self.bias = bool(self.bias)
        self.tie_embeddings = bool(self.tie_embeddings)
        self.qkv_bias = self.bias if self.qkv_bias is None else bool(self.qkv_bias)
        self.lm_head_bias = bool(self.lm_head_bias)

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


